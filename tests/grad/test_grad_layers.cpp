// Finite-difference checks (double) of every layer's backward, w.r.t. inputs and parameters, at
// random non-degenerate parameters. Loss L = <u, layer(inputs)> with a random cotangent u.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Activation;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
using B = CpuBackend;

constexpr double kTol = 1e-6;

TEST_CASE("linear: backward matches finite differences, with and without bias", "[op][grad]") {
  B::Context ctx;
  const bool bias = GENERATE(true, false);
  CAPTURE(bias);
  Rng rng(11);
  nn::ParamLayout layout;
  auto lin = nn::Linear<double, B>::make(layout, "l", 5, 4, bias);
  Vec p = fpt::random_vec(layout.total(), rng);
  Mat x = fpt::random_mat(5, 3, rng), u = fpt::random_mat(4, 3, rng), y(4, 3);
  auto loss = [&] {
    lin.forward(ctx, p.data(), x, y);
    return fpt::dot(u, y);
  };
  Mat d_x = Mat::Zero(5, 3);
  Vec d_p = Vec::Zero(p.size());
  lin.backward_input(ctx, p.data(), u, d_x, true);
  lin.backward_params(ctx, x, u, d_p.data());
  fpt::require_close("d_x", d_x.data(), fpt::fd_gradient(loss, x.data(), x.size()), kTol);
  fpt::require_close("d_params", d_p.data(), fpt::fd_gradient(loss, p.data(), p.size()), kTol);
  // jvp: W dx equals the directional derivative.
  Mat dx = fpt::random_mat(5, 3, rng), dy(4, 3);
  lin.jvp(ctx, p.data(), dx, dy);
  Mat y0(4, 3), y1(4, 3);
  lin.forward(ctx, p.data(), x, y0);
  Mat x1 = x + dx;
  lin.forward(ctx, p.data(), x1, y1);
  REQUIRE((y1 - y0 - dy).norm() < 1e-12 * (1 + dy.norm()));
}

TEST_CASE("linear: backward accumulates; twice gives twice the gradients", "[op][grad]") {
  B::Context ctx;
  Rng rng(12);
  nn::ParamLayout layout;
  auto lin = nn::Linear<double, B>::make(layout, "l", 3, 2);
  Vec p = fpt::random_vec(layout.total(), rng);
  Mat x = fpt::random_mat(3, 4, rng), u = fpt::random_mat(2, 4, rng);
  Mat d_x1 = Mat::Zero(3, 4), d_x2 = Mat::Zero(3, 4);
  Vec d_p1 = Vec::Zero(p.size()), d_p2 = Vec::Zero(p.size());
  lin.backward_input(ctx, p.data(), u, d_x1, true);
  lin.backward_params(ctx, x, u, d_p1.data());
  for (int i = 0; i < 2; ++i) {
    lin.backward_input(ctx, p.data(), u, d_x2, true);
    lin.backward_params(ctx, x, u, d_p2.data());
  }
  REQUIRE((d_x2 - 2 * d_x1).norm() <= 1e-14 * d_x1.norm());
  REQUIRE((d_p2 - 2 * d_p1).norm() <= 1e-14 * d_p1.norm());
}

TEST_CASE("activations: backward matches finite differences", "[op][grad]") {
  B::Context ctx;
  const Activation act = GENERATE(Activation::SiLU, Activation::GELU);
  CAPTURE(flowprior::to_string(act));
  Rng rng(13);
  Mat z = fpt::random_mat(6, 3, rng, -4, 4), u = fpt::random_mat(6, 3, rng), a(6, 3);
  z(0, 0) = 0.0;  // the special point of both functions
  auto loss = [&] {
    B::activation_forward<double>(ctx, act, z, a);
    return fpt::dot(u, a);
  };
  Mat d_z(6, 3);
  B::activation_backward<double>(ctx, act, z, u, d_z);
  fpt::require_close("d_z", d_z.data(), fpt::fd_gradient(loss, z.data(), z.size()), kTol);
}

TEST_CASE("activations: values and overflow-safe tails", "[op]") {
  using flowprior::math::gelu;
  using flowprior::math::silu;
  using flowprior::math::silu_grad;
  REQUIRE(silu(0.0) == 0.0);
  REQUIRE(silu(1.0) == Approx(0.7310585786300049));
  REQUIRE(gelu(1.0) == Approx(0.8413447460685429));
  REQUIRE(gelu(-1.0) == Approx(-0.15865525393145707));
  // exp(800) overflows a double; the stable sigmoid must not.
  REQUIRE(silu(-800.0) == 0.0);
  REQUIRE(silu(800.0) == 800.0);
  REQUIRE(silu_grad(800.0) == 1.0);
  REQUIRE(std::isfinite(silu_grad(-800.0)));
  REQUIRE(silu(-100.0f) == Approx(0.0f).margin(1e-30));
}

TEST_CASE("activations: float GELU within a few ulp of the double one", "[op]") {
  // The float path is vectorised (Eigen's erf); it is checked here against the double path (the
  // C library's erf) on a dense grid, the tails and the awkward points, forward and JVP with K 2.
  B::Context ctx;
  std::vector<double> zs;
  for (int i = -4000; i <= 4000; ++i) zs.push_back(i * 0.002);  // [-8, 8]
  for (double z : {-1e30, -50.0, -9.5, 1e-30, -1e-30, 0.0, 9.5, 50.0, 1e30}) zs.push_back(z);
  const Index n = Index(zs.size());
  Eigen::MatrixXf zf(n, 1), af(n, 1), xf(n, 2), of(n, 2);
  for (Index i = 0; i < n; ++i) {
    zf(i, 0) = float(zs[std::size_t(i)]);
    xf(i, 0) = 1.0f;
    xf(i, 1) = -0.5f;
  }
  B::activation_forward<float>(ctx, flowprior::Activation::GELU, zf, af);
  B::activation_jvp<float>(ctx, flowprior::Activation::GELU, zf, xf, of, 2);
  // Bounds: the approximation's erf is within 3.75e-7 of erf, so |dPhi| <= 1.9e-7 and the
  // GELU error is below 2e-7 |z| plus float rounding; where Phi >= 0.16 (z >= -1) that is a
  // relative error of a few 1e-7. The derivative likewise, plus exp's rounding, relative where
  // it is at least 1/2.
  double abs_f = 0, abs_g = 0, rel_f = 0, rel_g = 0;
  for (Index i = 0; i < n; ++i) {
    const double z = double(zf(i, 0));  // the float input, exactly
    if (std::abs(z) > 1e6) continue;    // the tails, below
    const double f = flowprior::math::gelu(z), g = flowprior::math::gelu_grad(z);
    const double ef = std::abs(double(af(i, 0)) - f), eg = std::abs(double(of(i, 0)) - g);
    abs_f = std::max(abs_f, ef / std::max(1.0, std::abs(z)));
    abs_g = std::max(abs_g, eg / std::max(1.0, z * z));
    if (z >= -1 && std::abs(z) > 1e-3) rel_f = std::max(rel_f, ef / std::abs(f));
    if (z >= 0) rel_g = std::max(rel_g, eg / std::abs(g));  // GELU' >= 1/2 (it is 0 near -0.75)
    REQUIRE(of(i, 1) == Approx(-0.5f * of(i, 0)).margin(1e-37));  // exact but for denormals
  }
  INFO("GELU: abs " << abs_f << ", rel " << rel_f << "; GELU': abs " << abs_g << ", rel " << rel_g);
  CHECK(abs_f < 4e-7);
  CHECK(abs_g < 6e-7);
  CHECK(rel_f < 2e-6);
  CHECK(rel_g < 2e-6);
  // The tails are exact.
  CHECK(af(n - 1, 0) == 1e30f);
  CHECK(af(n - 9, 0) == -0.0f);
  CHECK(of(n - 1, 0) == 1.0f);
}

TEST_CASE("layer norm: backward matches finite differences, affine or not", "[op][grad]") {
  B::Context ctx;
  const bool affine = GENERATE(true, false);
  const double eps = GENERATE(1e-6, 1e-2);
  CAPTURE(affine, eps);
  Rng rng(14);
  const Index C = 7, N = 3;
  Mat h = fpt::random_mat(C, N, rng, -2, 2), u = fpt::random_mat(C, N, rng);
  Vec gamma = fpt::random_vec(C, rng, 0.5, 1.5), beta = fpt::random_vec(C, rng);
  Mat nhat(C, N), out(C, N);
  Vec rstd(N);
  const double* g = affine ? gamma.data() : nullptr;
  const double* b = affine ? beta.data() : nullptr;
  auto loss = [&] {
    B::norm_modulate_forward<double>(ctx, h, g, b, eps, {}, {}, nhat, rstd.data(), out);
    return fpt::dot(u, out);
  };
  loss();
  // Forward: zero mean, variance var/(var+eps) per column before the affine map.
  for (Index j = 0; j < N; ++j) REQUIRE(std::abs(nhat.col(j).mean()) < 1e-12);
  Mat d_h = Mat::Zero(C, N);
  Vec d_gamma = Vec::Zero(C), d_beta = Vec::Zero(C);
  B::norm_modulate_backward<double>(ctx, nhat, rstd.data(), g, b, {}, u, d_h, {}, {},
                                    affine ? d_gamma.data() : nullptr,
                                    affine ? d_beta.data() : nullptr);
  fpt::require_close("d_h", d_h.data(), fpt::fd_gradient(loss, h.data(), h.size()), kTol);
  if (affine) {
    fpt::require_close("d_gamma", d_gamma.data(), fpt::fd_gradient(loss, gamma.data(), C), kTol);
    fpt::require_close("d_beta", d_beta.data(), fpt::fd_gradient(loss, beta.data(), C), kTol);
  }
}

TEST_CASE("adaLN modulation: backward w.r.t. h, shift, scale and the affine parameters",
          "[op][grad]") {
  B::Context ctx;
  const bool affine = GENERATE(true, false);
  CAPTURE(affine);
  Rng rng(15);
  const Index C = 6, N = 4;
  Mat h = fpt::random_mat(C, N, rng, -2, 2), u = fpt::random_mat(C, N, rng);
  Mat shift = fpt::random_mat(C, N, rng), scale = fpt::random_mat(C, N, rng);
  Vec gamma = fpt::random_vec(C, rng, 0.5, 1.5), beta = fpt::random_vec(C, rng);
  const double* g = affine ? gamma.data() : nullptr;
  const double* b = affine ? beta.data() : nullptr;
  Mat nhat(C, N), m(C, N);
  Vec rstd(N);
  auto loss = [&] {
    B::norm_modulate_forward<double>(ctx, h, g, b, 1e-6, shift, scale, nhat, rstd.data(), m);
    return fpt::dot(u, m);
  };
  loss();
  // m = a * (1 + scale) + shift, a the (affine) layer norm.
  const Mat a =
      affine ? Mat((nhat.array().colwise() * gamma.array()).colwise() + beta.array()) : nhat;
  REQUIRE((m.array() - (a.array() * (1 + scale.array()) + shift.array())).abs().maxCoeff() < 1e-14);
  Mat d_h = Mat::Zero(C, N), d_shift(C, N), d_scale(C, N);
  Vec d_gamma = Vec::Zero(C), d_beta = Vec::Zero(C);
  B::norm_modulate_backward<double>(ctx, nhat, rstd.data(), g, b, scale, u, d_h, d_shift, d_scale,
                                    affine ? d_gamma.data() : nullptr,
                                    affine ? d_beta.data() : nullptr);
  fpt::require_close("d_h", d_h.data(), fpt::fd_gradient(loss, h.data(), h.size()), kTol);
  fpt::require_close("d_shift", d_shift.data(), fpt::fd_gradient(loss, shift.data(), shift.size()),
                     kTol);
  fpt::require_close("d_scale", d_scale.data(), fpt::fd_gradient(loss, scale.data(), scale.size()),
                     kTol);
  if (affine) {
    fpt::require_close("d_gamma", d_gamma.data(), fpt::fd_gradient(loss, gamma.data(), C), kTol);
    fpt::require_close("d_beta", d_beta.data(), fpt::fd_gradient(loss, beta.data(), C), kTol);
  }
  // K-broadcast JVP w.r.t. h (K = 2 tangents per sample) against finite differences.
  const Index K = 2;
  Mat dh = fpt::random_mat(C, N * K, rng), out(C, N * K);
  B::norm_modulate_jvp<double>(ctx, nhat, rstd.data(), g, scale, dh, out, K);
  for (Index col = 0; col < N * K; ++col) {
    const Index j = col / K;
    Mat hp = h, hm = h;
    const double step = 1e-6;
    hp.col(j) += step * dh.col(col);
    hm.col(j) -= step * dh.col(col);
    Mat mp(C, N), mm(C, N);
    B::norm_modulate_forward<double>(ctx, hp, g, b, 1e-6, shift, scale, nhat, rstd.data(), mp);
    B::norm_modulate_forward<double>(ctx, hm, g, b, 1e-6, shift, scale, nhat, rstd.data(), mm);
    Vec fd = (mp.col(j) - mm.col(j)) / (2 * step);
    Vec an = out.col(col);
    fpt::require_close("jvp column " + std::to_string(col), an.data(), fd.data(), C, kTol);
  }
}

TEST_CASE("gated residual: backward w.r.t. h, gate and branch", "[op][grad]") {
  B::Context ctx;
  Rng rng(16);
  const Index C = 5, N = 3;
  Mat h = fpt::random_mat(C, N, rng), gate = fpt::random_mat(C, N, rng);
  Mat z = fpt::random_mat(C, N, rng), u = fpt::random_mat(C, N, rng);
  auto loss = [&] {
    Mat hh = h;
    B::gated_residual_forward<double>(ctx, gate, z, hh);
    return fpt::dot(u, hh);
  };
  Mat d_z(C, N), d_gate(C, N);
  B::gated_residual_backward<double>(ctx, gate, z, u, d_z, d_gate);
  // d_h is the identity (residual path): u itself.
  fpt::require_close("d_h", u.data(), fpt::fd_gradient(loss, h.data(), h.size()), kTol);
  fpt::require_close("d_gate", d_gate.data(), fpt::fd_gradient(loss, gate.data(), gate.size()),
                     kTol);
  fpt::require_close("d_z", d_z.data(), fpt::fd_gradient(loss, z.data(), z.size()), kTol);
}

TEST_CASE("time embedding: features and parameter gradients", "[op][grad]") {
  B::Context ctx;
  Rng rng(17);
  nn::ParamLayout layout;
  auto te = nn::TimeEmbedding<double, B>::make(layout, "time_embed", 8, 5, 10000.0);
  REQUIRE(layout.tensors().size() == 4);
  REQUIRE(layout.tensors()[0].name == "time_embed.mlp.0.weight");
  Vec p = fpt::random_vec(layout.total(), rng);
  Vec t(3);
  t << 0.0, 0.37, 1.0;
  nn::Arena<double, B> arena;
  arena.begin(true);
  te.carve(arena, 3);
  arena.reserve_counted();
  arena.begin(false);
  auto cache = te.carve(arena, 3);
  Mat c(5, 3), u = fpt::random_mat(5, 3, rng);
  te.forward(ctx, p.data(), t, cache, c);
  // e = [cos(t f), sin(t f)], f_i = 10000^(-i/4): the feature at t = 0 is [1 1 1 1 0 0 0 0].
  REQUIRE(cache.e(0, 0) == 1.0);
  REQUIRE(cache.e(4, 0) == 0.0);
  REQUIRE(cache.e(1, 1) == Approx(std::cos(0.37 * std::exp(-std::log(10000.0) / 4))));
  REQUIRE(cache.e(7, 2) == Approx(std::sin(std::exp(-std::log(10000.0) * 3 / 4))));
  auto loss = [&] {
    te.forward(ctx, p.data(), t, cache, c);
    return fpt::dot(u, c);
  };
  Vec d_p = Vec::Zero(p.size());
  Mat scratch(5, 3);
  loss();
  te.backward(ctx, p.data(), cache, u, d_p.data(), scratch);
  fpt::require_close("d_params", d_p.data(), fpt::fd_gradient(loss, p.data(), p.size()), kTol);
}

namespace {

// Random non-degenerate parameters for a block: uniform weights, LayerNorm gain around 1.
void randomize(Vec& p, const nn::ParamLayout& layout, Rng& rng) {
  fpt::fill_uniform(p.data(), p.size(), rng, -0.6, 0.6);
  for (const auto& t : layout.tensors())
    if (t.name.find("in_ln.weight") != std::string::npos)
      fpt::fill_uniform(p.data() + t.offset, t.size(), rng, 0.6, 1.4);
}

template <class Block>
auto carve(const Block& blk, nn::Arena<double, B>& arena, Index n) {
  arena.begin(true);
  blk.carve(arena, n, n);
  arena.reserve_counted();
  arena.begin(false);
  return blk.carve(arena, n, n);
}

// Reports d_params per named tensor.
void check_params(const nn::ParamLayout& layout, const Vec& d_p, const std::vector<double>& fd) {
  for (const auto& t : layout.tensors())
    fpt::require_close(t.name, d_p.data() + t.offset, fd.data() + t.offset, t.size(), kTol);
}

}  // namespace

TEST_CASE("residual block: backward w.r.t. h, conditioning and every parameter", "[op][grad]") {
  B::Context ctx;
  const Activation act = GENERATE(Activation::SiLU, Activation::GELU);
  CAPTURE(flowprior::to_string(act));
  Rng rng(18);
  const Index W = 6, N = 3;
  nn::ParamLayout layout;
  auto blk = nn::ResBlock<double, B>::make(layout, "res_blocks.0", W, 1e-6, act);
  Vec p(layout.total());
  randomize(p, layout, rng);
  nn::Arena<double, B> arena, scratch_arena;
  auto cache = carve(blk, arena, N);
  Mat h0 = fpt::random_mat(W, N, rng, -2, 2), sc = fpt::random_mat(W, N, rng);
  Mat u = fpt::random_mat(W, N, rng), h(W, N);
  auto loss = [&] {
    h = h0;
    blk.forward(ctx, p.data(), sc, h, cache);
    return fpt::dot(u, h);
  };
  loss();
  Mat t1(W, N), t2(W, N), d_mod(3 * W, N);
  nn::BlockScratch<double> s{t1, t2, d_mod};
  Mat d_h = u, d_sc = Mat::Zero(W, N);
  Vec d_p = Vec::Zero(p.size());
  blk.backward(ctx, p.data(), sc, cache, d_h, d_sc, d_p.data(), s);
  fpt::require_close("d_h", d_h.data(), fpt::fd_gradient(loss, h0.data(), h0.size()), kTol);
  fpt::require_close("d_sc", d_sc.data(), fpt::fd_gradient(loss, sc.data(), sc.size()), kTol);
  check_params(layout, d_p, fpt::fd_gradient(loss, p.data(), p.size()));
  // Input-only backward gives the same d_h.
  loss();
  Mat d_h2 = u;
  blk.backward(ctx, p.data(), sc, cache, d_h2, Mat(), nullptr, s);
  REQUIRE((d_h2 - d_h).norm() < 1e-13 * d_h.norm());
}

TEST_CASE("final layer: backward w.r.t. h, conditioning and every parameter", "[op][grad]") {
  B::Context ctx;
  Rng rng(19);
  const Index W = 6, D = 3, N = 3;
  nn::ParamLayout layout;
  auto fin = nn::FinalLayer<double, B>::make(layout, "final_layer", W, D, 1e-6);
  Vec p(layout.total());
  randomize(p, layout, rng);
  nn::Arena<double, B> arena;
  auto cache = carve(fin, arena, N);
  Mat h = fpt::random_mat(W, N, rng, -2, 2), sc = fpt::random_mat(W, N, rng);
  Mat u = fpt::random_mat(D, N, rng), v(D, N);
  auto loss = [&] {
    fin.forward(ctx, p.data(), sc, h, cache, v);
    return fpt::dot(u, v);
  };
  loss();
  Mat t1(W, N), t2(W, N), d_mod(3 * W, N);
  nn::BlockScratch<double> s{t1, t2, d_mod};
  Mat d_h(W, N), d_sc = Mat::Zero(W, N);
  Vec d_p = Vec::Zero(p.size());
  fin.backward(ctx, p.data(), sc, cache, u, d_h, d_sc, d_p.data(), s);
  fpt::require_close("d_h", d_h.data(), fpt::fd_gradient(loss, h.data(), h.size()), kTol);
  fpt::require_close("d_sc", d_sc.data(), fpt::fd_gradient(loss, sc.data(), sc.size()), kTol);
  check_params(layout, d_p, fpt::fd_gradient(loss, p.data(), p.size()));
}
