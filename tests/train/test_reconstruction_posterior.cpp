// ReconstructionTrainer with a Gaussian posterior (a KL-regularised autoencoder;
// train/reconstruction.hpp, docs/math/tokenizer.md "Gaussian posterior"): the step's gradient is
// that of MSE + beta KL + a latent loss with the step's eps (central differences in double at
// random parameters), the eps the step draws, the KL's value, deterministic models untouched by
// the generator overload, typed errors, bit-exact resume, and checkpoints: the posterior and
// kl_beta are checked by name, files written before those entries load as deterministic.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace io = flowprior::io;
namespace optim = flowprior::optim;
namespace train = flowprior::train;
using Catch::Matchers::Contains;

namespace {

nn::TokenizerConfig tiny(nn::Posterior posterior) {
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 2;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 1;
  c.dec_depth = 1;
  c.latent_tokens = 2;
  c.latent_dim = 3;
  c.posterior = posterior;
  return c;
}
const nn::Posterior kGauss = nn::Posterior::gaussian;
const nn::Posterior kDet = nn::Posterior::deterministic;

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// Random non-degenerate parameters (the init zeroes biases and sets LayerNorm gains to 1).
template <class Model>
void randomise(Model& m, std::uint64_t seed) {
  Rng rng(seed);
  m.init(rng);
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  fpt::fill_uniform(h.data(), m.num_params(), rng, -0.4, 0.4);
  for (const auto& t : m.layout().tensors())
    if (t.name.find("norm") != std::string::npos)
      for (Index i = 0; i < t.size(); ++i) h[std::size_t(t.offset + i)] += 1.0;
  std::copy(h.begin(), h.end(), m.parameters().data);
}

template <class S>
Mat<S> images(const nn::TokenizerAE<S>& m, Index B, std::uint64_t seed) {
  Rng rng(seed);
  Mat<S> x(m.image_dim(), B);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = S(2 * flowprior::uniform01(rng) - 1);
  return x;
}

// L_y = c/2 |y|^2 as the trainer's latent loss.
template <class S>
typename train::ReconstructionTrainer<nn::TokenizerAE<S>>::LatentLoss half_norm(double c) {
  return [c](ConstMatrixView<S> y, MatrixView<S> d_y, flowprior::CpuBackend::Context&) {
    double sum = 0;
    for (Index j = 0; j < y.cols; ++j)
      for (Index i = 0; i < y.rows; ++i) {
        sum += double(y(i, j)) * double(y(i, j));
        d_y(i, j) += S(c * double(y(i, j)));
      }
    return 0.5 * c * sum;
  };
}

// The eps a step draws from a generator in state `rng` (one value keys the noise, stream 0).
Mat<double> drawn_eps(Rng rng, Index d, Index BT) {
  Mat<double> eps(d, BT);
  flowprior::CpuBackend::Context ctx;
  flowprior::CpuBackend::gaussian_noise(ctx, rng(), 0, MatrixView<double>(eps.data(), d, BT), 0);
  return eps;
}

train::ReconstructionConfig no_clip(double lr, double beta) {
  train::ReconstructionConfig c;
  c.clip_norm = std::numeric_limits<double>::infinity();
  c.schedule = optim::LrSchedule::constant(lr);
  c.kl_beta = beta;
  return c;
}

}  // namespace

TEST_CASE("posterior step: the gradient is that of mse + beta kl + latent loss",
          "[reconstruction][posterior]") {
  using Model = nn::TokenizerAE<double>;
  const double beta = GENERATE(0.0, 0.5);
  const double c = GENERATE(0.0, 0.7);
  CAPTURE(beta, c);
  Model m(tiny(kGauss));
  randomise(m, 7);
  const Mat<double> x = images(m, 2, 8);
  const Index d = 3, BT = 4, P = m.num_params();
  const std::vector<double> p0(m.parameters().data, m.parameters().data + P);
  train::ReconstructionTrainer<Model> tr(m, no_clip(0.0, beta));  // lr 0: parameters stay put
  REQUIRE(tr.gaussian());
  Rng rng(11);
  const Mat<double> eps = drawn_eps(rng, d, BT);
  const auto st = c == 0.0 ? tr.step(x, rng) : tr.step(x, rng, half_norm<double>(c));
  REQUIRE(rng != Rng(11));  // one value drawn
  REQUIRE(std::equal(p0.begin(), p0.end(), m.parameters().data));
  // The loss with the step's eps, by the model's passes.
  Model::Workspace ws;
  Mat<double> z(d, BT), r(x.rows(), x.cols());
  double kl = 0;
  auto loss = [&] {
    m.forward(x, eps, z, r, ws);
    kl = m.kl_divergence(ws) / double(d * BT);
    return (r - x).squaredNorm() / double(x.size()) + beta * kl + 0.5 * c * z.squaredNorm();
  };
  const double L = loss();
  // The trainer decoded the same z (hence drew this eps) and reports the same terms.
  const Mat<double> zt = Eigen::Map<const Mat<double>>(tr.latents().data, d, BT);
  REQUIRE(zt == z);
  CHECK(st.loss == Approx(L).epsilon(1e-13));
  CHECK(st.kl == Approx(kl).epsilon(1e-13));
  CHECK(st.kl > 0);
  CHECK(st.loss == Approx(st.mse + beta * st.kl + st.latent_loss).epsilon(1e-14));
  // KL directly: the mean over the d B T elements of (mu^2 + exp(lv) - 1 - lv) / 2.
  const auto mu = m.posterior_mean(ws);
  const auto lv = m.posterior_logvar(ws);
  double direct = 0;
  for (Index j = 0; j < BT; ++j)
    for (Index i = 0; i < d; ++i)
      direct += 0.5 * (mu(i, j) * mu(i, j) + std::exp(lv(i, j)) - 1 - lv(i, j));
  CHECK(st.kl == Approx(direct / double(d * BT)).epsilon(1e-14));
  // The gradient against central differences, every parameter.
  const std::vector<double> g(tr.gradient().data, tr.gradient().data + P);
  fpt::require_close("d_params", g.data(), fpt::fd_gradient(loss, m.parameters().data, P), 1e-6);
}

TEST_CASE("posterior step: a deterministic model ignores the generator, bit for bit",
          "[reconstruction][posterior]") {
  using Model = nn::TokenizerAE<double>;
  Model a(tiny(kDet)), b(tiny(kDet));
  randomise(a, 3);
  randomise(b, 3);
  train::ReconstructionConfig cfg;
  cfg.schedule = optim::LrSchedule::constant(1e-2);
  train::ReconstructionTrainer<Model> ta(a, cfg), tb(b, cfg);
  REQUIRE(!ta.gaussian());
  Rng rng(5);
  for (int s = 0; s < 3; ++s) {
    const Mat<double> x = images(a, 2, 40 + s);
    const auto sa = ta.step(x, half_norm<double>(0.1));
    const auto sb = tb.step(x, rng, half_norm<double>(0.1));
    REQUIRE(sa.loss == sb.loss);
    REQUIRE(sa.grad_norm == sb.grad_norm);
    REQUIRE(sb.kl == 0.0);
  }
  REQUIRE(rng == Rng(5));
  REQUIRE(
      std::equal(a.parameters().data, a.parameters().data + a.num_params(), b.parameters().data));
  REQUIRE(ta.ema().weights() == tb.ema().weights());
}

TEST_CASE("posterior step: typed errors", "[reconstruction][posterior][error]") {
  using Model = nn::TokenizerAE<double>;
  Model g(tiny(kGauss)), det(tiny(kDet));
  randomise(g, 1);
  randomise(det, 1);
  for (double beta : {-0.1, std::nan(""), HUGE_VAL}) {
    train::ReconstructionConfig c;
    c.kl_beta = beta;
    CHECK_THROWS_AS(c.validate(), flowprior::config_error);
    CHECK_THROWS_WITH(train::ReconstructionTrainer<Model>(g, c), Contains("kl_beta"));
  }
  train::ReconstructionConfig c;
  c.kl_beta = 0.1;
  CHECK_THROWS_AS(train::ReconstructionTrainer<Model>(det, c), flowprior::config_error);
  CHECK_THROWS_WITH(train::ReconstructionTrainer<Model>(det, c),
                    Contains("kl_beta") && Contains("deterministic"));
  train::ReconstructionTrainer<Model> tr(g, c);
  const Mat<double> x = images(g, 2, 1);
  const std::vector<double> p0(g.parameters().data, g.parameters().data + g.num_params());
  CHECK_THROWS_AS(tr.step(x), flowprior::config_error);
  CHECK_THROWS_WITH(tr.step(x), Contains("Gaussian posterior") && Contains("rng"));
  REQUIRE(tr.steps() == 0);
  REQUIRE(std::equal(p0.begin(), p0.end(), g.parameters().data));
  Rng rng(1);
  tr.step(x, rng);
  REQUIRE(tr.steps() == 1);
}

TEMPLATE_TEST_CASE("posterior step: N steps == N/2 + save + load + N/2, bit for bit",
                   "[reconstruction][posterior][io]", float, double) {
  using S = TestType;
  using Model = nn::TokenizerAE<S>;
  train::ReconstructionConfig cfg;
  cfg.schedule = optim::LrSchedule::cosine(2e-3, 2, 8, 1e-4);
  cfg.ema_decay = 0.9;
  cfg.kl_beta = 0.05;
  auto batch = [](const Model& m, int s) { return images(m, s % 2 ? 3 : 2, 100 + s); };
  const int N = 6;
  Model full_m(tiny(kGauss));
  randomise(full_m, 1);
  train::ReconstructionTrainer<Model> full(full_m, cfg);
  Rng full_rng(9);
  for (int s = 0; s < N; ++s) full.step(batch(full_m, s), full_rng, half_norm<S>(0.1));

  const std::string path = fpt::temp_path("recon_posterior_resume.safetensors");
  {
    Model m(tiny(kGauss));
    randomise(m, 1);
    train::ReconstructionTrainer<Model> first(m, cfg);
    Rng rng(9);
    for (int s = 0; s < N / 2; ++s) first.step(batch(m, s), rng, half_norm<S>(0.1));
    train::save_checkpoint(path, first, rng);
  }
  Model m(tiny(kGauss));
  randomise(m, 2);
  train::ReconstructionTrainer<Model> resumed(m, cfg);
  Rng rng(77);
  train::load_checkpoint(path, resumed, rng);
  for (int s = N / 2; s < N; ++s) resumed.step(batch(m, s), rng, half_norm<S>(0.1));
  REQUIRE(rng == full_rng);
  REQUIRE(std::equal(full_m.parameters().data, full_m.parameters().data + m.num_params(),
                     m.parameters().data));
  REQUIRE(full.ema().weights() == resumed.ema().weights());
  const auto st = io::Safetensors::read(path);
  CHECK(st.metadata().at("model.config.posterior") == "gaussian");
  CHECK(st.metadata().at("trainer.kl_beta") == "0.050000000000000003");
  // Another beta is refused by name.
  train::ReconstructionConfig c2 = cfg;
  c2.kl_beta = 0.1;
  Model other(tiny(kGauss));
  train::ReconstructionTrainer<Model> t2(other, c2);
  CHECK_THROWS_WITH(train::load_checkpoint(path, t2, rng), Contains("trainer.kl_beta"));
  std::remove(path.c_str());
}

TEST_CASE("posterior checkpoints: the posterior is checked by name; old files are deterministic",
          "[reconstruction][posterior][io][error]") {
  using Model = nn::TokenizerAE<double>;
  Model det(tiny(kDet));
  randomise(det, 1);
  train::ReconstructionConfig cfg;
  train::ReconstructionTrainer<Model> tr(det, cfg);
  tr.step(images(det, 2, 1));
  const std::string path = fpt::temp_path("recon_posterior_det.safetensors");
  train::save_checkpoint(path, tr, Rng(1));
  const auto st = io::Safetensors::read(path);
  CHECK(st.metadata().at("model.config.posterior") == "deterministic");
  CHECK(st.metadata().at("trainer.kl_beta") == "0");

  Model g(tiny(kGauss));
  train::ReconstructionTrainer<Model> tg(g, cfg);
  Rng rng(3);
  CHECK_THROWS_AS(train::load_checkpoint(path, tg, rng), flowprior::io_error);
  CHECK_THROWS_WITH(train::load_checkpoint(path, tg, rng), Contains("model.config.posterior") &&
                                                               Contains("'deterministic'") &&
                                                               Contains("'gaussian'"));

  // A file as written before the two entries existed: the same file without them.
  const std::string old_path = fpt::temp_path("recon_posterior_old.safetensors");
  {
    io::SafetensorsWriter w;
    for (const auto& e : st.tensors()) {
      const std::vector<double> v = st.get<double>(e.name);
      w.add(e.name, v.data(), e.shape, e.dtype);
    }
    for (const auto& kv : st.metadata())
      if (kv.first != "trainer.kl_beta" && kv.first != "model.config.posterior" &&
          kv.first != io::checksum_key())
        w.set_metadata(kv.first, kv.second);
    w.set_checksum(true);
    w.write(old_path);
  }
  const auto old = io::Safetensors::read(old_path);
  REQUIRE(old.metadata().count("model.config.posterior") == 0);
  REQUIRE(old.metadata().count("trainer.kl_beta") == 0);
  Model back(tiny(kDet));
  train::ReconstructionTrainer<Model> tb(back, cfg);
  Rng r2(4);
  train::load_checkpoint(old_path, tb, r2);
  REQUIRE(r2 == Rng(1));
  REQUIRE(std::equal(det.parameters().data, det.parameters().data + det.num_params(),
                     back.parameters().data));
  CHECK_THROWS_WITH(train::load_checkpoint(old_path, tg, rng), Contains("model.config.posterior") &&
                                                                   Contains("absent") &&
                                                                   Contains("'gaussian'"));
  std::remove(path.c_str());
  std::remove(old_path.c_str());
}
