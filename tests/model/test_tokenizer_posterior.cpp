// The tokenizer's Gaussian posterior (nn/tokenizer.hpp, docs/math/tokenizer.md "Gaussian
// posterior"): the layout, the moments against a deterministic model that shares the encoder,
// the sample z = mu + exp(logvar / 2) eps exactly, the clamp of the log-variance (values and zero
// gradient), the KL sum against a direct computation, the backward with the reparameterisation
// and the KL term against central differences in double at random parameters with fixed eps,
// typed errors, and the guarded backend (same bits, no host access).
#include <cmath>
#include <flowprior/nn/tokenizer.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"
#include "guarded_backend.hpp"

using flowprior::ConstMatrixView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::GuardedBackend;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
using Catch::Matchers::Contains;

namespace {

nn::TokenizerConfig tiny_gaussian(Index latent_dim = 3) {
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 2;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 1;
  c.dec_depth = 1;
  c.latent_tokens = 2;
  c.latent_dim = latent_dim;
  c.posterior = nn::Posterior::gaussian;
  return c;
}

using Model = nn::TokenizerAE<double>;

// Random non-degenerate parameters: LayerNorm gains in [0.6, 1.4], weights of variance
// ~ 1 / fan_in, everything else in [-0.3, 0.3] (docs/testing.md).
std::vector<double> random_params(const Model& m, Rng& rng) {
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  for (const auto& t : m.layout().tensors()) {
    double* q = h.data() + t.offset;
    const std::string& n = t.name;
    const bool norm = n.find("norm") != std::string::npos;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    if (norm && weight) {
      fpt::fill_uniform(q, t.size(), rng, 0.6, 1.4);
    } else if (weight) {
      const double b = std::sqrt(3.0 / double(t.size() / t.shape[0]));
      fpt::fill_uniform(q, t.size(), rng, -b, b);
    } else {
      fpt::fill_uniform(q, t.size(), rng, -0.3, 0.3);
    }
  }
  return h;
}

// A Gaussian model at random parameters, a batch x, eps and the cotangents of
// L = <w1, recon> + <w2, z> + kl_weight KL_sum.
struct Problem {
  Model m;
  Mat x, eps, w1, w2;
  Index B, d, BT;
  Problem(Index batch, std::uint64_t seed) : m(tiny_gaussian()), B(batch), d(3), BT(batch * 2) {
    Rng rng(seed);
    const std::vector<double> h = random_params(m, rng);
    std::copy(h.begin(), h.end(), m.parameters().data);
    x = fpt::random_mat(m.image_dim(), B, rng);
    eps = fpt::random_mat(d, BT, rng, -2, 2);
    w1 = fpt::random_mat(m.image_dim(), B, rng);
    w2 = fpt::random_mat(d, BT, rng);
  }
  // The to_latent bias of log-variance row i (rows [d, 2 d) of the moments).
  double& logvar_bias(Index i) {
    return m.parameters().data[m.layout().at("encoder.to_latent.bias").offset + d + i];
  }
};

Mat to_mat(ConstMatrixView<double> v) {
  Mat m(v.rows, v.cols);
  for (Index j = 0; j < v.cols; ++j)
    for (Index i = 0; i < v.rows; ++i) m(i, j) = v(i, j);
  return m;
}

// The raw moments (2 d, B T) of x: a deterministic model with latent_dim 2 d has the same
// encoder tensors, first in the flat vector, so its latents are the Gaussian model's moments.
Mat raw_moments(const Model& g, const Mat& x) {
  nn::TokenizerConfig c = g.config();
  c.posterior = nn::Posterior::deterministic;
  c.latent_dim = 2 * g.config().latent_dim;
  Model det(c);
  const Index enc = det.layout().at("decoder.mask_token").offset;
  REQUIRE(enc == g.layout().at("decoder.mask_token").offset);
  std::copy(g.parameters().data, g.parameters().data + enc, det.parameters().data);
  Model::Workspace ws;
  Mat y(c.latent_dim, x.cols() * c.latent_tokens);
  det.encode(x, y, ws);
  return y;
}

}  // namespace

TEST_CASE("posterior: layout, entries and the deterministic default", "[tokenizer][posterior]") {
  nn::TokenizerConfig c = tiny_gaussian();
  Model g(c);
  REQUIRE(g.layout().at("encoder.to_latent.weight").shape == std::vector<Index>{6, 8});
  REQUIRE(g.layout().at("encoder.to_latent.bias").shape == std::vector<Index>{6});
  REQUIRE(g.layout().at("decoder.from_latent.weight").shape == std::vector<Index>{8, 3});
  REQUIRE(c.entries().back() == std::make_pair(std::string("posterior"), std::string("gaussian")));
  c.posterior = nn::Posterior::deterministic;
  REQUIRE(c.entries().back().second == "deterministic");
  REQUIRE(nn::TokenizerConfig().posterior == nn::Posterior::deterministic);
  Model det(c);
  REQUIRE(det.layout().at("encoder.to_latent.weight").shape == std::vector<Index>{3, 8});
  REQUIRE(det.num_params() == g.num_params() - 3 * 8 - 3);
}

TEST_CASE("posterior: encode is mu, z = mu + exp(logvar / 2) eps exactly, KL sum",
          "[tokenizer][posterior]") {
  Problem pr(2, 31);
  Model& m = pr.m;
  Model::Workspace ws;
  const Mat mom = raw_moments(m, pr.x);
  const Mat mu = mom.topRows(pr.d), raw = mom.bottomRows(pr.d);
  REQUIRE(raw.cwiseAbs().maxCoeff() < 20);  // inside the clamp: logvar == raw
  // encode: y = mu; the mean's pass samples nothing (z = mu).
  Mat y(pr.d, pr.BT), z(pr.d, pr.BT), recon(m.image_dim(), pr.B), r_mean(m.image_dim(), pr.B);
  m.encode(pr.x, y, ws);
  REQUIRE(y == mu);
  REQUIRE(to_mat(m.posterior_mean(ws)) == mu);
  REQUIRE(to_mat(m.posterior_logvar(ws)) == raw);
  REQUIRE(to_mat(m.posterior_sample(ws)) == mu);
  m.forward(pr.x, y, r_mean, ws);
  REQUIRE(y == mu);
  // The mean's reconstruction is decode(mu).
  Mat r_dec(m.image_dim(), pr.B);
  Model::Workspace ws2;
  m.decode(mu, r_dec, ws2);
  REQUIRE(r_dec == r_mean);
  // The training pass: z = mu + exp(logvar / 2) eps, element by element, and recon = decode(z).
  m.forward(pr.x, pr.eps, z, recon, ws);
  for (Index j = 0; j < pr.BT; ++j)
    for (Index i = 0; i < pr.d; ++i)
      REQUIRE(z(i, j) == mu(i, j) + std::exp(raw(i, j) * 0.5) * pr.eps(i, j));
  REQUIRE(to_mat(m.posterior_sample(ws)) == z);
  REQUIRE(to_mat(m.posterior_mean(ws)) == mu);
  m.decode(z, r_dec, ws2);
  REQUIRE(r_dec == recon);
  REQUIRE((recon - r_mean).norm() > 1e-3);  // the noise reaches the decoder
  // KL sum = sum (mu^2 + exp(logvar) - 1 - logvar) / 2.
  double kl = 0;
  for (Index j = 0; j < pr.BT; ++j)
    for (Index i = 0; i < pr.d; ++i)
      kl += 0.5 * (mu(i, j) * mu(i, j) + std::exp(raw(i, j)) - 1 - raw(i, j));
  CHECK(m.kl_divergence(ws) == Approx(kl).epsilon(1e-14));
  REQUIRE(kl > 0);
}

TEST_CASE("posterior: the log-variance is clamped to [-30, 20], with zero gradient there",
          "[tokenizer][posterior]") {
  Problem pr(2, 33);
  Model& m = pr.m;
  pr.logvar_bias(0) = 60;   // row 0 above 20 for every token
  pr.logvar_bias(1) = -60;  // row 1 below -30
  const Mat raw = raw_moments(m, pr.x).bottomRows(pr.d);
  REQUIRE(raw.row(0).minCoeff() > 25);
  REQUIRE(raw.row(1).maxCoeff() < -35);
  Model::Workspace ws;
  Mat z(pr.d, pr.BT), recon(m.image_dim(), pr.B);
  // Small noise so that exp(10) eps stays a sane decoder input.
  const Mat eps = 1e-3 * pr.eps;
  m.forward(pr.x, eps, z, recon, ws);
  const Mat lv = to_mat(m.posterior_logvar(ws));
  const Mat mu = to_mat(m.posterior_mean(ws));
  for (Index j = 0; j < pr.BT; ++j) {
    REQUIRE(lv(0, j) == 20.0);
    REQUIRE(lv(1, j) == -30.0);
    REQUIRE(lv(2, j) == raw(2, j));
    REQUIRE(z(0, j) == mu(0, j) + std::exp(10.0) * eps(0, j));
  }
  double kl = 0;
  for (Index j = 0; j < pr.BT; ++j)
    for (Index i = 0; i < pr.d; ++i)
      kl += 0.5 * (mu(i, j) * mu(i, j) + std::exp(lv(i, j)) - 1 - lv(i, j));
  CHECK(m.kl_divergence(ws) == Approx(kl).epsilon(1e-14));
  // The clamped rows pass no gradient: their to_latent weights and bias get exactly 0.
  Vec dp = Vec::Zero(m.num_params());
  m.backward(ws, pr.w1, pr.w2, 0.5, dp, MatrixView<double>());
  const auto& wt = m.layout().at("encoder.to_latent.weight");
  const auto& bt = m.layout().at("encoder.to_latent.bias");
  for (Index r : {Index(3), Index(4)}) {
    REQUIRE(dp[bt.offset + r] == 0.0);
    for (Index k = 0; k < 8; ++k) REQUIRE(dp[wt.offset + r * 8 + k] == 0.0);  // (out, in) row-major
  }
  REQUIRE(dp[bt.offset + 5] != 0.0);
  REQUIRE(dp[bt.offset + 0] != 0.0);
}

TEST_CASE("posterior: backward (reparameterisation + KL) against central differences",
          "[tokenizer][posterior][grad]") {
  // Sampled with the KL term (both terms of (10)); the mean's pass without it (no eps).
  const bool sampled = GENERATE(true, false);
  const double kl_weight = sampled ? 0.3 : 0.0;
  CAPTURE(kl_weight, sampled);
  Problem pr(2, 35);
  Model& m = pr.m;
  Model::Workspace ws;
  Mat z(pr.d, pr.BT), recon(m.image_dim(), pr.B);
  auto fwd = [&] {
    if (sampled)
      m.forward(pr.x, pr.eps, z, recon, ws);
    else
      m.forward(pr.x, z, recon, ws);
  };
  auto loss = [&] {
    fwd();
    return fpt::dot(pr.w1, recon) + fpt::dot(pr.w2, z) + kl_weight * m.kl_divergence(ws);
  };
  const Index P = m.num_params();
  loss();
  // Accumulates onto non-zero buffers.
  Vec dp = Vec::Constant(P, 0.25);
  Mat dx = Mat::Constant(m.image_dim(), pr.B, 0.5);
  m.backward(ws, pr.w1, pr.w2, kl_weight, dp, dx);
  dp.array() -= 0.25;
  dx.array() -= 0.5;
  fpt::require_close("d_params", dp.data(), fpt::fd_gradient(loss, m.parameters().data, P), 1e-6);
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, pr.x.data(), pr.x.size()), 1e-6);
  // kl_weight 0 is the backward without the KL argument, bit for bit; twice accumulates twice.
  loss();
  Vec a = Vec::Zero(P), b = Vec::Zero(P), twice = Vec::Zero(P);
  m.backward(ws, pr.w1, pr.w2, 0.0, a, MatrixView<double>());
  m.backward(ws, pr.w1, pr.w2, b, MatrixView<double>());
  REQUIRE(a == b);
  m.backward(ws, pr.w1, pr.w2, kl_weight, twice, MatrixView<double>());
  m.backward(ws, pr.w1, pr.w2, kl_weight, twice, MatrixView<double>());
  Vec once = Vec::Zero(P);
  m.backward(ws, pr.w1, pr.w2, kl_weight, once, MatrixView<double>());
  REQUIRE((twice - 2 * once).norm() <= 1e-13 * once.norm());
}

TEST_CASE("posterior: typed errors", "[tokenizer][posterior][errors]") {
  Problem pr(2, 37);
  Model& m = pr.m;
  Model::Workspace ws;
  Mat z(pr.d, pr.BT), recon(m.image_dim(), pr.B);
  Vec dp = Vec::Zero(m.num_params());
  CHECK_THROWS_AS(m.posterior_mean(ws), flowprior::error);
  CHECK_THROWS_WITH(m.kl_divergence(ws), Contains("encode() or forward()"));
  const Mat bad_eps = Mat::Zero(pr.d, pr.BT + 1);
  CHECK_THROWS_AS(m.forward(pr.x, bad_eps, z, recon, ws), flowprior::shape_error);
  CHECK_THROWS_WITH(m.forward(pr.x, bad_eps, z, recon, ws), Contains("'eps'"));
  m.forward(pr.x, pr.eps, z, recon, ws);
  for (double w : {-1.0, std::nan(""), HUGE_VAL}) {
    CHECK_THROWS_AS(m.backward(ws, pr.w1, pr.w2, w, dp, MatrixView<double>()),
                    flowprior::value_error);
    CHECK_THROWS_WITH(m.backward(ws, pr.w1, pr.w2, w, dp, MatrixView<double>()),
                      Contains("kl_weight"));
  }
  // A deterministic model takes no eps, has no moments and no KL weight.
  nn::TokenizerConfig c = tiny_gaussian();
  c.posterior = nn::Posterior::deterministic;
  Model det(c);
  Rng rng(1);
  det.init(rng);
  Model::Workspace dws;
  CHECK_THROWS_AS(det.forward(pr.x, pr.eps, z, recon, dws), flowprior::config_error);
  CHECK_THROWS_WITH(det.forward(pr.x, pr.eps, z, recon, dws), Contains("'eps'"));
  det.forward(pr.x, z, recon, dws);
  CHECK_THROWS_AS(det.posterior_logvar(dws), flowprior::config_error);
  Vec ddp = Vec::Zero(det.num_params());
  CHECK_THROWS_AS(det.backward(dws, pr.w1, pr.w2, 0.5, ddp, MatrixView<double>()),
                  flowprior::config_error);
  det.backward(dws, pr.w1, pr.w2, 0.0, ddp, MatrixView<double>());
  // An out-of-range enum value.
  c.posterior = static_cast<nn::Posterior>(7);
  CHECK_THROWS_AS(Model(c), flowprior::config_error);
  CHECK_THROWS_WITH(Model(c), Contains("posterior"));
}

TEST_CASE("posterior: on the guarded backend, the same bits and no host access",
          "[tokenizer][posterior][backend][guarded]") {
  Problem pr(2, 39);
  Model& m = pr.m;
  using G = nn::TokenizerAE<double, GuardedBackend>;
  G g(tiny_gaussian());
  const Index P = m.num_params(), D = m.image_dim();
  GuardedBackend::copy_from_host(m.parameters().data, P, g.parameters().data);
  Model::Workspace ws;
  Mat z(pr.d, pr.BT), recon(D, pr.B), dx = Mat::Zero(D, pr.B);
  Vec dp = Vec::Zero(P);
  m.forward(pr.x, pr.eps, z, recon, ws);
  const double kl = m.kl_divergence(ws);
  m.backward(ws, pr.w1, pr.w2, 0.3, dp, dx);
  // Guarded memory.
  auto up = [](const Mat& h, fpt::GuardedBuffer<double>& buf) {
    GuardedBackend::copy_from_host(h.data(), h.size(), buf);
    return MatrixView<double>(buf.data(), h.rows(), h.cols());
  };
  auto down = [](const fpt::GuardedBuffer<double>& buf, Index r, Index c) {
    Mat h(r, c);
    GuardedBackend::copy_to_host(buf.data(), h.size(), h.data());
    return h;
  };
  fpt::GuardedBuffer<double> bx, beps, bw1, bw2, bz, br, bdx, bdp;
  const MatrixView<double> gx = up(pr.x, bx), geps = up(pr.eps, beps), gw1 = up(pr.w1, bw1),
                           gw2 = up(pr.w2, bw2), gz = up(Mat::Zero(pr.d, pr.BT), bz),
                           gr = up(Mat::Zero(D, pr.B), br), gdx = up(Mat::Zero(D, pr.B), bdx),
                           gdp = up(Mat::Zero(P, 1), bdp);
  G::Workspace gws;
  g.forward(gx, geps, gz, gr, gws);
  REQUIRE(g.kl_divergence(gws) == kl);
  g.backward(gws, gw1, gw2, 0.3, VectorView<double>(gdp.data, P), gdx);
  REQUIRE(down(bz, pr.d, pr.BT) == z);
  REQUIRE(down(br, D, pr.B) == recon);
  REQUIRE(down(bdx, D, pr.B) == dx);
  REQUIRE(down(bdp, P, 1) == Mat(dp));
}
