// Multi-head self-attention (nn/attention.hpp, docs/math/attention.md): the forward against a
// loop written from the equations, per sequence and head, in double; the input and parameter
// gradients against central differences at random non-degenerate parameters, with and without
// qk-norm; the batched product and the column softmax primitives against their definitions.
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/attention.hpp>
#include <flowprior/nn/transformer.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
using Attn = nn::MultiHeadAttention<double, CpuBackend>;

namespace {

struct Setup {
  nn::ParamLayout layout;
  Attn attn;
  Vec p;
  Setup(Index C, Index H, bool qk_norm, Rng& rng) {
    attn = Attn::make(layout, "attn", C, H, qk_norm, 1e-6);
    p = fpt::random_vec(layout.total(), rng, -0.5, 0.5);
    if (qk_norm)  // LayerNorm gains around 1
      for (Index i = 0; i < attn.head_dim; ++i) {
        p[attn.qn_w + i] += 1.0;
        p[attn.kn_w + i] += 1.0;
      }
  }
};

// y = attention(x) straight from the equations (attention.md (1)-(3), (8)).
Mat reference(const Attn& a, const Vec& p, const Mat& x, Index B, Index T) {
  const Index C = a.width, H = a.heads, dh = a.head_dim;
  const Eigen::Map<const Mat> Wqkv(p.data() + a.qkv.w, C, 3 * C);  // W^T, column-major
  const Eigen::Map<const Vec> bqkv(p.data() + a.qkv.b, 3 * C);
  const Eigen::Map<const Mat> Wo(p.data() + a.proj.w, C, C);
  const Eigen::Map<const Vec> bo(p.data() + a.proj.b, C);
  const Mat qkv = (Wqkv.transpose() * x).colwise() + bqkv;
  Mat o(C, B * T);
  auto ln = [&](Vec v, Index w, Index b) {
    const double mu = v.mean();
    const double var = (v.array() - mu).square().mean();
    Vec n = (v.array() - mu) / std::sqrt(var + 1e-6);
    for (Index i = 0; i < dh; ++i) n[i] = n[i] * p[w + i] + p[b + i];
    return n;
  };
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      Mat q(dh, T), k(dh, T), v(dh, T);
      for (Index j = 0; j < T; ++j) {
        q.col(j) = qkv.col(b * T + j).segment(h * dh, dh);
        k.col(j) = qkv.col(b * T + j).segment(C + h * dh, dh);
        v.col(j) = qkv.col(b * T + j).segment(2 * C + h * dh, dh);
        if (a.qk_norm) {
          q.col(j) = ln(q.col(j), a.qn_w, a.qn_b);
          k.col(j) = ln(k.col(j), a.kn_w, a.kn_b);
        }
      }
      for (Index i = 0; i < T; ++i) {  // query i
        Vec s(T);
        for (Index j = 0; j < T; ++j) s[j] = k.col(j).dot(q.col(i)) / std::sqrt(double(dh));
        const Vec e = (s.array() - s.maxCoeff()).exp();
        const Vec w = e / e.sum();
        o.col(b * T + i).segment(h * dh, dh) = v * w;
      }
    }
  return (Wo.transpose() * o).colwise() + bo;
}

struct Run {
  nn::Arena<double, CpuBackend> fwd, bwd;
  Attn::Cache c;
  Attn::Scratch s;
  CpuBackend::Context ctx;
  Run(const Attn& a, Index B, Index T) {
    for (int pass = 0; pass < 2; ++pass) {
      fwd.begin(pass == 0);
      c = a.carve(fwd, B, T);
      if (pass == 0) fwd.reserve_counted();
      bwd.begin(pass == 0);
      s = a.carve_scratch(bwd, B, T);
      if (pass == 0) bwd.reserve_counted();
    }
  }
};

}  // namespace

TEST_CASE("attention: the forward equals the equations, per sequence and head", "[attention]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(71);
  const Index C = 12, H = 3, B = 2, T = 5;
  Setup st(C, H, qk_norm, rng);
  const Mat x = fpt::random_mat(C, B * T, rng);
  Run r(st.attn, B, T);
  Mat y(C, B * T);
  st.attn.forward(r.ctx, st.p.data(), x, y, r.c);
  const Mat ref = reference(st.attn, st.p, x, B, T);
  REQUIRE((y - ref).norm() < 1e-12 * ref.norm());
  // Tokens of one sequence never see another: changing sequence 1 leaves sequence 0's outputs.
  Mat x2 = x;
  x2.rightCols(T).setRandom();
  Mat y2(C, B * T);
  st.attn.forward(r.ctx, st.p.data(), x2, y2, r.c);
  REQUIRE(y2.leftCols(T) == y.leftCols(T));
}

TEST_CASE("attention: input and parameter gradients against central differences",
          "[attention][grad]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(72);
  const Index C = 8, H = 2, B = 2, T = 4;
  Setup st(C, H, qk_norm, rng);
  Mat x = fpt::random_mat(C, B * T, rng);
  const Mat w = fpt::random_mat(C, B * T, rng);  // L = <w, y>
  Run r(st.attn, B, T);
  Mat y(C, B * T);
  auto loss = [&] {
    st.attn.forward(r.ctx, st.p.data(), x, y, r.c);
    return fpt::dot(w, y);
  };
  loss();
  Mat dx = Mat::Constant(C, B * T, 0.5);  // accumulates: starts non-zero
  Vec dp = Vec::Constant(st.p.size(), 0.25);
  st.attn.backward(r.ctx, st.p.data(), x, r.c, w, dx, dp.data(), r.s);
  dx.array() -= 0.5;
  dp.array() -= 0.25;
  const auto gx = fpt::fd_gradient(loss, x.data(), x.size());
  fpt::require_close("d_x", dx.data(), gx, 1e-7);
  const auto gp = fpt::fd_gradient(loss, st.p.data(), st.p.size());
  fpt::require_close("d_params", dp.data(), gp, 1e-7);
  // Without d_p: the same input gradient, no parameter gradient touched.
  loss();
  Mat dx2 = Mat::Zero(C, B * T);
  st.attn.backward(r.ctx, st.p.data(), x, r.c, w, dx2, nullptr, r.s);
  REQUIRE((dx2 - dx).norm() <= 1e-14 * dx.norm());
}

TEST_CASE("attention primitives: gemm_batched over a two-level grid, softmax columns",
          "[attention][op]") {
  CpuBackend::Context ctx;
  Rng rng(73);
  // 2 x 3 problems of (4 x 5) = op(A) (4 x 6) op(B) (6 x 5), A transposed, from strided storage.
  const Index m = 4, n = 5, k = 6, O = 2, I = 3;
  const Mat A = fpt::random_mat(k + 1, 100, rng), Bm = fpt::random_mat(6 + 2, 100, rng);
  Mat C = fpt::random_mat(m, 200, rng);
  const Mat C0 = C;
  flowprior::GemmBatch g;
  g.outer = O;
  g.inner = I;
  g.a_outer = 40 * A.rows();
  g.a_inner = 10 * A.rows();
  g.b_outer = 30 * Bm.rows();
  g.b_inner = 7 * Bm.rows();
  g.c_outer = 50 * m;
  g.c_inner = 12 * m;
  CpuBackend::gemm_batched(ctx, true, false, 0.5, ConstMatrixView<double>(A.data(), k, m, A.rows()),
                           ConstMatrixView<double>(Bm.data(), k, n, Bm.rows()), 2.0,
                           MatrixView<double>(C.data(), m, n, m), g);
  Mat expect = C0;
  for (Index o = 0; o < O; ++o)
    for (Index i = 0; i < I; ++i) {
      const Mat a = A.block(0, 40 * o + 10 * i, k, m), b = Bm.block(0, 30 * o + 7 * i, k, n);
      expect.block(0, 50 * o + 12 * i, m, n) =
          0.5 * a.transpose() * b + 2.0 * C0.block(0, 50 * o + 12 * i, m, n);
    }
  REQUIRE((C - expect).norm() < 1e-13 * expect.norm());
  // Softmax per column, and its backward as the Jacobian-vector product of the definition.
  Mat s = fpt::random_mat(7, 3, rng, -30, 30);
  const Mat s0 = s;
  CpuBackend::softmax_cols(ctx, MatrixView<double>(s));
  for (Index j = 0; j < 3; ++j) {
    const Vec e = s0.col(j).array().exp();
    REQUIRE((s.col(j) - e / e.sum()).norm() < 1e-14);
  }
  Mat d = fpt::random_mat(7, 3, rng);
  const Mat d0 = d;
  CpuBackend::softmax_backward_cols(ctx, ConstMatrixView<double>(s), MatrixView<double>(d));
  for (Index j = 0; j < 3; ++j) {
    const Mat J = Mat(s.col(j).asDiagonal()) - s.col(j) * s.col(j).transpose();
    REQUIRE((d.col(j) - J * d0.col(j)).norm() < 1e-14);
  }
}

TEST_CASE(
    "transformer block: gradients against central differences; zero branches are the identity",
    "[attention][grad]") {
  using Block = nn::TransformerBlock<double, CpuBackend>;
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(74);
  const Index C = 8, H = 2, B = 2, T = 3, hidden = 12;
  nn::ParamLayout layout;
  const Block blk = Block::make(layout, "blocks.0", C, H, hidden, qk_norm);
  Vec p = fpt::random_vec(layout.total(), rng, -0.5, 0.5);
  for (const auto& t : layout.tensors())  // LayerNorm gains around 1
    if (t.name.find("norm") != std::string::npos && t.name.find("weight") != std::string::npos)
      for (Index i = 0; i < t.size(); ++i) p[t.offset + i] += 1.0;
  nn::Arena<double, CpuBackend> fwd, bwd;
  Block::Cache c;
  Block::Scratch s;
  for (int pass = 0; pass < 2; ++pass) {
    fwd.begin(pass == 0);
    c = blk.carve(fwd, B, T);
    if (pass == 0) fwd.reserve_counted();
    bwd.begin(pass == 0);
    s = blk.carve_scratch(bwd, B, T);
    if (pass == 0) bwd.reserve_counted();
  }
  CpuBackend::Context ctx;
  Mat x = fpt::random_mat(C, B * T, rng);
  const Mat w = fpt::random_mat(C, B * T, rng);
  Mat h(C, B * T);
  auto loss = [&] {
    h = x;
    blk.forward(ctx, p.data(), h, c);
    return fpt::dot(w, h);
  };
  loss();
  Mat dh = w;
  Vec dp = Vec::Constant(p.size(), 0.25);
  blk.backward(ctx, p.data(), c, dh, dp.data(), s);
  dp.array() -= 0.25;
  const auto gx = fpt::fd_gradient(loss, x.data(), x.size());
  fpt::require_close("d_h", dh.data(), gx, 1e-7);
  const auto gp = fpt::fd_gradient(loss, p.data(), p.size());
  fpt::require_close("d_params", dp.data(), gp, 1e-7);
  // With the attention's output projection and fc2 zero, both branches add nothing.
  Vec z = p;
  for (const auto& t : layout.tensors())
    if (t.name.find("attn.proj") != std::string::npos || t.name.find("fc2") != std::string::npos)
      for (Index i = 0; i < t.size(); ++i) z[t.offset + i] = 0;
  h = x;
  blk.forward(ctx, z.data(), h, c);
  REQUIRE(h == x);
}
