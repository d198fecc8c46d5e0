// The adaLN-conditioned transformer block (DiT's block; nn/transformer.hpp, docs/math/transformer.md
// (3)-(14)): the forward against the equations written out per token, every parameter gradient
// and the gradients of h and c against central differences in double at random non-degenerate
// parameters (gates, shifts and scales far from 0), the accumulate rule, the identities (zero
// modulation Linear: the identity; gate 1, zero shift and scale: the unconditioned block with
// LayerNorm weights 1 and biases 0), float against double, the initialisation, typed errors, and
// the sequence_map primitive.
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/transformer.hpp>
#include <string>
#include <vector>

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
using Catch::Matchers::Contains;

namespace {

template <class S>
using Block = nn::AdaLNTransformerBlock<S, CpuBackend>;

struct Sizes {
  Index C = 8, H = 2, B = 2, L = 3, hidden = 12, cond = 5;
};

// A block and its random non-degenerate parameters: every weight and bias uniform in
// [-0.5, 0.5], qk-norm gains around 1; the modulation bias of the gates around 1 and of the
// scales around 0.3, so that no branch is switched off and every modulation matters.
struct Setup {
  nn::ParamLayout layout;
  Block<double> blk;
  Vec p;
  Setup(const Sizes& z, bool qk_norm, Rng& rng) {
    blk = Block<double>::make(layout, "blocks.0", z.C, z.H, z.hidden, z.cond, qk_norm);
    p = fpt::random_vec(layout.total(), rng, -0.5, 0.5);
    if (qk_norm)
      for (Index i = 0; i < blk.attn.head_dim; ++i) {
        p[blk.attn.qn_w + i] += 1.0;
        p[blk.attn.kn_w + i] += 1.0;
      }
    for (Index i = 0; i < z.C; ++i) {
      p[blk.ada.b + 1 * z.C + i] += 0.3;  // scale_msa
      p[blk.ada.b + 2 * z.C + i] += 1.0;  // gate_msa
      p[blk.ada.b + 4 * z.C + i] += 0.3;  // scale_mlp
      p[blk.ada.b + 5 * z.C + i] += 1.0;  // gate_mlp
    }
  }
};

// Arenas, the sequence map and a context for B sequences of L tokens (not copyable: the cache
// keeps the map's address).
template <class S, class Backend = CpuBackend>
struct Run {
  using B = nn::AdaLNTransformerBlock<S, Backend>;
  nn::Arena<S, Backend> fwd, bwd;
  nn::SequenceMap<Backend> map;
  typename B::Cache c;
  typename B::Scratch s;
  typename Backend::Context ctx;
  Run(const B& blk, Index batch, Index tokens) {
    map.update(ctx, batch, tokens);
    for (int pass = 0; pass < 2; ++pass) {
      fwd.begin(pass == 0);
      c = blk.carve(fwd, batch, tokens, map);
      if (pass == 0) fwd.reserve_counted();
      bwd.begin(pass == 0);
      s = blk.carve_scratch(bwd, batch, tokens);
      if (pass == 0) bwd.reserve_counted();
    }
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;
};

Vec layer_norm(const Vec& v, double eps) {
  const double mu = v.mean();
  const double var = (v.array() - mu).square().mean();
  return (v.array() - mu) / std::sqrt(var + eps);
}

double gelu(double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); }

}  // namespace

TEST_CASE("sequence_map: entry b L + j is b; SequenceMap grows only", "[dit][op]") {
  CpuBackend::Context ctx;
  std::vector<Index> m(13, -1);
  CpuBackend::sequence_map(ctx, 4, flowprior::VectorView<Index>(m.data(), 12));
  for (Index i = 0; i < 12; ++i) REQUIRE(m[std::size_t(i)] == i / 4);
  REQUIRE(m[12] == -1);  // nothing past the view
  nn::SequenceMap<CpuBackend> map;
  REQUIRE(map.data() == nullptr);
  const Index* a = map.update(ctx, 3, 5);
  REQUIRE(map.batch() == 3);
  REQUIRE(map.tokens() == 5);
  for (Index i = 0; i < 15; ++i) REQUIRE(a[i] == i / 5);
  const Index* b = map.update(ctx, 5, 3);  // as long: the same memory
  REQUIRE(b == a);
  for (Index i = 0; i < 15; ++i) REQUIRE(b[i] == i / 3);
  REQUIRE_THROWS_AS(map.update(ctx, 0, 3), flowprior::config_error);
  REQUIRE_THROWS_WITH(map.update(ctx, 2, 0), Contains("tokens"));
}

TEST_CASE("adaLN transformer block: the forward equals the equations, token by token", "[dit]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(81);
  const Sizes z;
  Setup st(z, qk_norm, rng);
  const Block<double>& blk = st.blk;
  const Index n = z.B * z.L;
  const Mat x = fpt::random_mat(z.C, n, rng), c = fpt::random_mat(z.cond, z.B, rng, -2, 2);
  Run<double> r(blk, z.B, z.L);
  Mat h = x;
  blk.forward(r.ctx, st.p.data(), c, h, r.c);
  // (3): the modulations of each sequence.
  const double* p = st.p.data();
  const Eigen::Map<const Mat> Wada(p + blk.ada.w, z.cond, 6 * z.C);  // W^T, column-major
  const Eigen::Map<const Vec> bada(p + blk.ada.b, 6 * z.C);
  const Mat s = c.array() / (1.0 + (-c.array()).exp());
  const Mat mod = (Wada.transpose() * s).colwise() + bada;
  auto chunk = [&](Index i, Index b) -> Vec { return mod.col(b).segment(i * z.C, z.C); };
  // (4)-(5): LN1, modulation, attention (the layer of attention.md, tested on its own), gate.
  Mat a1(z.C, n), h1(z.C, n);
  for (Index t = 0; t < n; ++t) {
    const Index b = t / z.L;
    a1.col(t) =
        layer_norm(x.col(t), 1e-6).array() * (1.0 + chunk(1, b).array()) + chunk(0, b).array();
  }
  nn::ParamLayout al;
  const auto attn = nn::MultiHeadAttention<double, CpuBackend>::make(al, "a", z.C, z.H, qk_norm);
  Vec pa(al.total());  // the block's attention parameters, in the same order
  for (Index i = 0; i < al.total(); ++i) pa[i] = p[blk.attn.qkv.w + i];
  nn::Arena<double, CpuBackend> arena;
  typename nn::MultiHeadAttention<double, CpuBackend>::Cache ac;
  for (int pass = 0; pass < 2; ++pass) {
    arena.begin(pass == 0);
    ac = attn.carve(arena, z.B, z.L);
    if (pass == 0) arena.reserve_counted();
  }
  Mat y1(z.C, n);
  attn.forward(r.ctx, pa.data(), a1, y1, ac);
  for (Index t = 0; t < n; ++t)
    h1.col(t) = x.col(t).array() + chunk(2, t / z.L).array() * y1.col(t).array();
  // (6)-(7): LN2, modulation, GELU MLP, gate.
  const Eigen::Map<const Mat> W1(p + blk.fc1.w, z.C, z.hidden), W2(p + blk.fc2.w, z.hidden, z.C);
  const Eigen::Map<const Vec> b1(p + blk.fc1.b, z.hidden), b2(p + blk.fc2.b, z.C);
  Mat ref(z.C, n);
  for (Index t = 0; t < n; ++t) {
    const Index b = t / z.L;
    const Vec a2 =
        layer_norm(h1.col(t), 1e-6).array() * (1.0 + chunk(4, b).array()) + chunk(3, b).array();
    const Vec zz = W1.transpose() * a2 + b1;
    const Vec g = zz.unaryExpr([](double v) { return gelu(v); });
    const Vec y2 = W2.transpose() * g + b2;
    ref.col(t) = h1.col(t).array() + chunk(5, b).array() * y2.array();
  }
  REQUIRE((h - ref).norm() < 1e-12 * ref.norm());
  // Each sequence reads its own conditioning only: a new c for sequence 1 leaves sequence 0.
  Mat c2 = c;
  c2.col(1).setConstant(0.9);
  Mat h2 = x;
  blk.forward(r.ctx, st.p.data(), c2, h2, r.c);
  REQUIRE(h2.leftCols(z.L) == h.leftCols(z.L));
  REQUIRE(h2.rightCols(z.L) != h.rightCols(z.L));
}

TEST_CASE(
    "adaLN transformer block: gradients of every parameter, h and c against central "
    "differences",
    "[dit][grad]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(82);
  const Sizes z;
  Setup st(z, qk_norm, rng);
  const Block<double>& blk = st.blk;
  const Index n = z.B * z.L;
  Mat x = fpt::random_mat(z.C, n, rng), c = fpt::random_mat(z.cond, z.B, rng, -2, 2);
  const Mat w = fpt::random_mat(z.C, n, rng);  // L = <w, h_out>
  Run<double> r(blk, z.B, z.L);
  Mat h(z.C, n);
  auto loss = [&] {
    h = x;
    blk.forward(r.ctx, st.p.data(), c, h, r.c);
    return fpt::dot(w, h);
  };
  loss();
  // Parameter and conditioning gradients accumulate: both start non-zero.
  Mat dh = w, dc = Mat::Constant(z.cond, z.B, 0.5);
  Vec dp = Vec::Constant(st.p.size(), 0.25);
  blk.backward(r.ctx, st.p.data(), r.c, dh, dc, dp.data(), r.s);
  dp.array() -= 0.25;
  dc.array() -= 0.5;
  fpt::require_close("d_h", dh.data(), fpt::fd_gradient(loss, x.data(), x.size()), 1e-7);
  fpt::require_close("d_c", dc.data(), fpt::fd_gradient(loss, c.data(), c.size()), 1e-7);
  const auto gp = fpt::fd_gradient(loss, st.p.data(), st.p.size());
  fpt::require_close("d_params", dp.data(), gp, 1e-7);
  for (const auto& t : st.layout.tensors()) {  // tensor by tensor, so a failure names it
    const Eigen::Map<const Vec> a(dp.data() + t.offset, t.size()),
        g(gp.data() + t.offset, t.size());
    if (g.norm() < 1e-6) {  // k_norm.bias: the scores do not change when every key of a head
      CAPTURE(t.name);      // moves by the same vector, so its gradient is zero
      CHECK(a.norm() < 1e-12);
    } else {
      fpt::require_close(t.name, a.data(), g.data(), t.size(), 1e-7);
    }
  }
  REQUIRE(st.layout.at("blocks.0.adaLN_modulation.1.weight").shape ==
          std::vector<Index>{6 * z.C, z.cond});
  // Without parameter gradients: the same d_h and d_c, bit for bit; with neither, the same d_h.
  loss();
  Mat dh2 = w, dc2 = Mat::Constant(z.cond, z.B, 0.5);
  blk.backward(r.ctx, st.p.data(), r.c, dh2, dc2, nullptr, r.s);
  dc2.array() -= 0.5;
  REQUIRE(dh2 == dh);
  REQUIRE(dc2 == dc);
  Mat dh3 = w;
  blk.backward(r.ctx, st.p.data(), r.c, dh3, MatrixView<double>(), nullptr, r.s);
  REQUIRE(dh3 == dh);
  // Parameter gradients without d_c: the same, bit for bit.
  Vec dp2 = Vec::Constant(st.p.size(), 0.25);
  Mat dh4 = w;
  blk.backward(r.ctx, st.p.data(), r.c, dh4, MatrixView<double>(), dp2.data(), r.s);
  dp2.array() -= 0.25;
  REQUIRE(dp2 == dp);
}

TEST_CASE(
    "adaLN transformer block: zero modulation is the identity; gate 1 and no shift or "
    "scale is the unconditioned block",
    "[dit][grad]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(83);
  const Sizes z;
  Setup st(z, qk_norm, rng);
  const Block<double>& blk = st.blk;
  const Index n = z.B * z.L;
  const Mat x = fpt::random_mat(z.C, n, rng), c = fpt::random_mat(z.cond, z.B, rng, -2, 2);
  const Mat w = fpt::random_mat(z.C, n, rng);
  Run<double> r(blk, z.B, z.L);
  // The modulation Linear zero: every gate is 0, the block the identity, d_h passes through.
  Vec p0 = st.p;
  p0.segment(blk.ada.w, 6 * z.C * z.cond).setZero();
  p0.segment(blk.ada.b, 6 * z.C).setZero();
  Mat h = x, dh = w;
  blk.forward(r.ctx, p0.data(), c, h, r.c);
  REQUIRE(h == x);
  blk.backward(r.ctx, p0.data(), r.c, dh, MatrixView<double>(), nullptr, r.s);
  REQUIRE(dh == w);

  // W_ada = 0, b_ada = [0; 0; 1; 0; 0; 1]: against TransformerBlock with the same attention and
  // MLP and LayerNorms of weight 1 and bias 0.
  Vec p1 = p0;
  p1.segment(blk.ada.b + 2 * z.C, z.C).setOnes();
  p1.segment(blk.ada.b + 5 * z.C, z.C).setOnes();
  using TB = nn::TransformerBlock<double, CpuBackend>;
  nn::ParamLayout tl;
  const TB tb = TB::make(tl, "blocks.0", z.C, z.H, z.hidden, qk_norm);
  Vec pt(tl.total());
  for (const auto& t : tl.tensors()) {
    const auto* d = st.layout.find(t.name);
    if (d != nullptr) {
      pt.segment(t.offset, t.size()) = p1.segment(d->offset, t.size());
    } else {  // norm1.*, norm2.*: the only tensors the conditioned block lacks
      REQUIRE(t.name.find(".norm") != std::string::npos);
      pt.segment(t.offset, t.size())
          .setConstant(t.name.find("weight") != std::string::npos ? 1.0 : 0.0);
    }
  }
  nn::Arena<double, CpuBackend> tf, tbw;
  TB::Cache tc;
  TB::Scratch ts;
  for (int pass = 0; pass < 2; ++pass) {
    tf.begin(pass == 0);
    tc = tb.carve(tf, z.B, z.L);
    if (pass == 0) tf.reserve_counted();
    tbw.begin(pass == 0);
    ts = tb.carve_scratch(tbw, z.B, z.L);
    if (pass == 0) tbw.reserve_counted();
  }
  Mat hc = x, ht = x;
  blk.forward(r.ctx, p1.data(), c, hc, r.c);
  tb.forward(r.ctx, pt.data(), ht, tc);
  REQUIRE((hc - ht).norm() <= 1e-14 * ht.norm());
  REQUIRE((hc - x).norm() > 0.1 * x.norm());  // the branches do contribute
  Mat dhc = w, dht = w, dc = Mat::Zero(z.cond, z.B);
  Vec dpc = Vec::Zero(p1.size()), dpt = Vec::Zero(pt.size());
  blk.backward(r.ctx, p1.data(), r.c, dhc, dc, dpc.data(), r.s);
  tb.backward(r.ctx, pt.data(), tc, dht, dpt.data(), ts);
  REQUIRE((dhc - dht).norm() <= 1e-13 * dht.norm());
  for (const auto& t : tl.tensors()) {
    CAPTURE(t.name);
    const auto* d = st.layout.find(t.name);
    const Vec want = dpt.segment(t.offset, t.size());
    Vec got;
    if (d != nullptr) {
      got = dpc.segment(d->offset, t.size());
    } else {
      // The sum over all tokens of d_shift (d_scale) is the gradient of a LayerNorm bias (weight):
      // b_ada's shift and scale chunks against norm{1,2}.bias and .weight.
      const Index norm = t.name.find("norm1") != std::string::npos ? 0 : 3;
      const Index part = t.name.find("weight") != std::string::npos ? 1 : 0;
      got = dpc.segment(blk.ada.b + (norm + part) * z.C, z.C);
    }
    REQUIRE((got - want).norm() <= 1e-13 * (want.norm() + 1e-300));
  }
}

TEST_CASE("adaLN transformer block: float agrees with double", "[dit]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Rng rng(84);
  Sizes z;
  z.C = 16;
  z.H = 4;
  z.B = 3;
  z.L = 5;
  z.hidden = 32;
  z.cond = 8;
  Setup st(z, qk_norm, rng);
  nn::ParamLayout fl;
  const Block<float> bf = Block<float>::make(fl, "blocks.0", z.C, z.H, z.hidden, z.cond, qk_norm);
  REQUIRE(fl.total() == st.layout.total());
  const Index n = z.B * z.L, P = st.layout.total();
  const Mat x = fpt::random_mat(z.C, n, rng), c = fpt::random_mat(z.cond, z.B, rng, -2, 2);
  const Mat w = fpt::random_mat(z.C, n, rng);
  Run<double> rd(st.blk, z.B, z.L);
  Run<float> rf(bf, z.B, z.L);
  Mat hd = x, dhd = w, dcd = Mat::Zero(z.cond, z.B);
  Vec dpd = Vec::Zero(P);
  st.blk.forward(rd.ctx, st.p.data(), c, hd, rd.c);
  st.blk.backward(rd.ctx, st.p.data(), rd.c, dhd, dcd, dpd.data(), rd.s);
  const Eigen::VectorXf pf = st.p.cast<float>();
  Eigen::MatrixXf hf = x.cast<float>(), dhf = w.cast<float>(), cf = c.cast<float>();
  Eigen::MatrixXf dcf = Eigen::MatrixXf::Zero(z.cond, z.B);
  Eigen::VectorXf dpf = Eigen::VectorXf::Zero(P);
  bf.forward(rf.ctx, pf.data(), cf, hf, rf.c);
  bf.backward(rf.ctx, pf.data(), rf.c, dhf, dcf, dpf.data(), rf.s);
  auto rel = [](const Mat& a, const Mat& b) { return (a - b).norm() / b.norm(); };
  CHECK(rel(hf.cast<double>(), hd) < 1e-5);
  CHECK(rel(dhf.cast<double>(), dhd) < 1e-4);
  CHECK(rel(dcf.cast<double>(), dcd) < 1e-4);
  CHECK(rel(dpf.cast<double>(), dpd) < 1e-4);
}

TEST_CASE("adaLN transformer block: DiT's initialisation", "[dit]") {
  Rng rng(85);
  nn::ParamLayout layout;
  const Index C = 32, cond = 16;
  const Block<double> blk = Block<double>::make(layout, "b", C, 4, 4 * C, cond, true);
  Vec p = Vec::Constant(layout.total(), 7.0);
  blk.init(p.data(), rng);
  auto all = [&](const std::string& name, double v) {
    const auto& t = layout.at(name);
    return (p.segment(t.offset, t.size()).array() == v).all();
  };
  REQUIRE(all("b.adaLN_modulation.1.weight", 0.0));
  REQUIRE(all("b.adaLN_modulation.1.bias", 0.0));
  REQUIRE(all("b.attn.q_norm.weight", 1.0));
  REQUIRE(all("b.attn.k_norm.bias", 0.0));
  REQUIRE(all("b.mlp.fc1.bias", 0.0));
  const auto& qkv = layout.at("b.attn.qkv.weight");  // Xavier over (3C, C)
  const double bound = std::sqrt(6.0 / (C + 3.0 * C));
  const double mx = p.segment(qkv.offset, qkv.size()).cwiseAbs().maxCoeff();
  REQUIRE(mx <= bound);
  REQUIRE(mx > 0.9 * bound);
  // adaLN-Zero: the block is the identity at initialisation.
  const Index B = 2, L = 4;
  Run<double> r(blk, B, L);
  const Mat x = fpt::random_mat(C, B * L, rng), c = fpt::random_mat(cond, B, rng);
  Mat h = x;
  blk.forward(r.ctx, p.data(), c, h, r.c);
  REQUIRE(h == x);
  // Without zeroing: a Xavier modulation weight, a zero bias, and a block that is not the identity.
  blk.init(p.data(), rng, false);
  const auto& ada = layout.at("b.adaLN_modulation.1.weight");
  const double ma = p.segment(ada.offset, ada.size()).cwiseAbs().maxCoeff();
  REQUIRE(ma <= std::sqrt(6.0 / (cond + 6.0 * C)));
  REQUIRE(ma > 0);
  REQUIRE(all("b.adaLN_modulation.1.bias", 0.0));
  h = x;
  blk.forward(r.ctx, p.data(), c, h, r.c);
  REQUIRE(h != x);
}

TEST_CASE("adaLN transformer block: typed errors", "[dit][errors]") {
  using flowprior::config_error;
  using flowprior::shape_error;
  nn::ParamLayout layout;
  REQUIRE_THROWS_WITH(Block<double>::make(layout, "b", 8, 2, 0, 4, false), Contains("mlp_hidden"));
  REQUIRE_THROWS_WITH(Block<double>::make(layout, "b", 8, 2, 16, 0, false), Contains("cond_dim"));
  REQUIRE_THROWS_AS(Block<double>::make(layout, "b", 8, 3, 16, 4, false), config_error);
  REQUIRE_THROWS_WITH(Block<double>::make(layout, "b", 8, 2, 16, 4, false, 0.0),
                      Contains("ln_eps"));
  Rng rng(86);
  const Sizes z;
  Setup st(z, false, rng);
  const Block<double>& blk = st.blk;
  const Index n = z.B * z.L;
  Run<double> r(blk, z.B, z.L);
  const double* p = st.p.data();
  Mat h = fpt::random_mat(z.C, n, rng), c = fpt::random_mat(z.cond, z.B, rng);
  Mat hb(z.C, n + 1), cb(z.cond + 1, z.B), dc = Mat::Zero(z.cond, z.B);
  REQUIRE_THROWS_WITH(blk.forward(r.ctx, p, c, hb, r.c), Contains("'h'"));
  REQUIRE_THROWS_WITH(blk.forward(r.ctx, p, cb, h, r.c), Contains("'c'"));
  REQUIRE_THROWS_AS(blk.forward(r.ctx, p, Mat(z.cond, z.B + 1), h, r.c), shape_error);
  blk.forward(r.ctx, p, c, h, r.c);
  Mat dh = h;
  REQUIRE_THROWS_WITH(blk.backward(r.ctx, p, r.c, hb, dc, nullptr, r.s), Contains("'d_h'"));
  REQUIRE_THROWS_WITH(blk.backward(r.ctx, p, r.c, dh, cb, nullptr, r.s), Contains("'d_c'"));
  REQUIRE(dc == Mat::Zero(z.cond, z.B));
  // A cache whose SequenceMap does not hold its sizes (never updated, other tokens, a smaller
  // batch), and a scratch of other sizes.
  nn::SequenceMap<CpuBackend> fresh;
  typename Block<double>::Cache k = r.c;
  k.map = &fresh;
  REQUIRE_THROWS_WITH(blk.forward(r.ctx, p, c, h, k), Contains("SequenceMap"));
  fresh.update(r.ctx, z.B, z.L + 1);
  REQUIRE_THROWS_AS(blk.forward(r.ctx, p, c, h, k), config_error);
  fresh.update(r.ctx, z.B - 1, z.L);
  REQUIRE_THROWS_AS(blk.backward(r.ctx, p, k, dh, dc, nullptr, r.s), config_error);
  fresh.update(r.ctx, z.B + 1, z.L);  // a longer map of the same tokens serves
  REQUIRE_NOTHROW(blk.forward(r.ctx, p, c, h, k));
  k.map = nullptr;
  REQUIRE_THROWS_AS(blk.forward(r.ctx, p, c, h, k), config_error);
  Run<double> other(blk, z.B, z.L + 1);
  REQUIRE_THROWS_WITH(blk.backward(r.ctx, p, r.c, dh, dc, nullptr, other.s), Contains("scratch"));
}
