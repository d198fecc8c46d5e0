// ReconstructionTrainer (train/reconstruction.hpp) and its checkpoints: the gradient of the
// step's loss against central differences, the update against an independent AdamW and EMA,
// refusal of bad data and of diverging steps, learning, and bit-exact resume.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <flowprior/nn/adaln_mlp.hpp>
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
using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
namespace nn = flowprior::nn;
namespace io = flowprior::io;
namespace optim = flowprior::optim;
namespace train = flowprior::train;
using Catch::Matchers::Contains;

namespace {

nn::TokenizerConfig tiny() {
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
  return c;
}

// Random non-degenerate parameters (the init zeroes biases and sets LayerNorm gains to 1).
template <class Model>
void randomise(Model& m, std::uint64_t seed) {
  using S = typename Model::Scalar;
  Rng rng(seed);
  m.init(rng);
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  fpt::fill_uniform(h.data(), m.num_params(), rng, -0.4, 0.4);
  for (const auto& t : m.layout().tensors())
    if (t.name.find("norm") != std::string::npos)
      for (Index i = 0; i < t.size(); ++i) h[std::size_t(t.offset + i)] += 1.0;
  std::vector<S> hs(h.begin(), h.end());
  std::copy(hs.begin(), hs.end(), m.parameters().data);
}

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

template <class S>
Mat<S> images(const nn::TokenizerAE<S>& m, Index B, std::uint64_t seed) {
  Rng rng(seed);
  Mat<S> x(m.image_dim(), B);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = S(2 * flowprior::uniform01(rng) - 1);
  return x;
}

// L_y = c/2 |y|^2, written as the trainer's latent loss.
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

// The loss the trainer minimises, evaluated by a plain forward.
double loss_at(const nn::TokenizerAE<double>& m, const Mat<double>& x, double c) {
  nn::TokenizerAE<double>::Workspace ws;
  Mat<double> y(m.config().latent_dim, x.cols() * m.config().latent_tokens), r(x.rows(), x.cols());
  m.forward(x, y, r, ws);
  return (r - x).squaredNorm() / double(x.size()) + 0.5 * c * y.squaredNorm();
}

train::ReconstructionConfig no_clip(double lr) {
  train::ReconstructionConfig c;
  c.clip_norm = std::numeric_limits<double>::infinity();
  c.schedule = optim::LrSchedule::constant(lr);
  return c;
}

}  // namespace

TEST_CASE("reconstruction: the step's gradient is the gradient of mse + latent loss",
          "[reconstruction]") {
  using Model = nn::TokenizerAE<double>;
  Model m(tiny());
  randomise(m, 7);
  const Mat<double> x = images(m, 3, 8);
  const double c = GENERATE(0.0, 0.7);
  const std::vector<double> p0(m.parameters().data, m.parameters().data + m.num_params());
  train::ReconstructionTrainer<Model> tr(m, no_clip(0.0));  // lr 0: the parameters stay put
  const auto st = c == 0.0 ? tr.step(x) : tr.step(x, half_norm<double>(c));
  REQUIRE(std::equal(p0.begin(), p0.end(), m.parameters().data));
  CHECK(st.loss == Approx(loss_at(m, x, c)).epsilon(1e-13));
  CHECK(st.latent_loss == Approx(st.loss - st.mse).margin(1e-15));
  CHECK((c == 0.0) == (st.latent_loss == 0.0));
  const std::vector<double> g(tr.gradient().data, tr.gradient().data + m.num_params());
  double gn = 0;
  for (double v : g) gn += v * v;
  CHECK(st.grad_norm == Approx(std::sqrt(gn)).epsilon(1e-13));
  // Central differences along random directions and along single coordinates.
  Rng rng(9);
  const double h = 1e-5;
  auto at = [&](const std::vector<double>& dir, double s) {
    for (Index i = 0; i < m.num_params(); ++i)
      m.parameters().data[i] = p0[std::size_t(i)] + s * dir[std::size_t(i)];
    return loss_at(m, x, c);
  };
  for (int k = 0; k < 6; ++k) {
    std::vector<double> dir(p0.size(), 0.0);
    if (k < 3) {
      fpt::fill_uniform(dir.data(), Index(dir.size()), rng, -1, 1);
    } else {
      dir[std::size_t(flowprior::uniform01(rng) * double(dir.size()))] = 1;
    }
    const double fd = (at(dir, h) - at(dir, -h)) / (2 * h);
    double an = 0;
    for (std::size_t i = 0; i < g.size(); ++i) an += g[i] * dir[i];
    INFO("direction " << k);
    CHECK(an == Approx(fd).epsilon(1e-7).margin(1e-10));
  }
}

TEST_CASE("reconstruction: clip, AdamW and EMA as the optimizer parts do them",
          "[reconstruction]") {
  using Model = nn::TokenizerAE<double>;
  Model m(tiny()), twin(tiny());
  randomise(m, 3);
  randomise(twin, 3);
  const Mat<double> x = images(m, 2, 4);
  train::ReconstructionConfig cfg;
  cfg.clip_norm = 0.05;  // small: the clip acts
  cfg.schedule = optim::LrSchedule::cosine(3e-3, 2, 6, 1e-4);
  cfg.ema_decay = 0.8;
  train::ReconstructionTrainer<Model> tr(m, cfg);
  // The same recipe by hand on the twin, from the gradient of an lr-0 trainer.
  optim::Adam<double> adam(twin.num_params(), cfg.adam);
  optim::Ema<double> ema(twin.parameters(), cfg.ema_decay);
  for (int s = 0; s < 4; ++s) {
    train::ReconstructionTrainer<Model> probe(twin, no_clip(0.0));
    probe.step(x);
    std::vector<double> g(probe.gradient().data, probe.gradient().data + twin.num_params());
    const double norm = optim::clip_grad_norm(VectorView<double>(g.data(), Index(g.size())), 0.05);
    adam.step(twin.parameters(), ConstVectorView<double>(g.data(), Index(g.size())),
              cfg.schedule.at(s));
    ema.update(twin.parameters());
    const auto st = tr.step(x);
    CHECK(st.grad_norm == norm);
    CHECK(st.lr == cfg.schedule.at(s));
    CHECK(st.step == s + 1);
  }
  REQUIRE(std::equal(m.parameters().data, m.parameters().data + m.num_params(),
                     twin.parameters().data));
  REQUIRE(tr.ema().weights() == ema.weights());
  Model avg(tiny());
  tr.copy_ema_to(avg);
  REQUIRE(std::equal(avg.parameters().data, avg.parameters().data + avg.num_params(),
                     ema.weights().data()));
}

TEST_CASE("reconstruction: bad data and diverging steps change nothing", "[reconstruction]") {
  using Model = nn::TokenizerAE<double>;
  Model m(tiny());
  randomise(m, 5);
  train::ReconstructionTrainer<Model> tr(m, train::ReconstructionConfig{});
  Mat<double> x = images(m, 2, 6);
  tr.step(x);
  const std::vector<double> p(m.parameters().data, m.parameters().data + m.num_params());
  const auto ema = tr.ema().weights();
  const auto mom = tr.optimizer().m();
  auto unchanged = [&] {
    CHECK(std::equal(p.begin(), p.end(), m.parameters().data));
    CHECK(tr.ema().weights() == ema);
    CHECK(tr.optimizer().m() == mom);
    CHECK(tr.steps() == 1);
  };
  Mat<double> wrong(m.image_dim() + 1, 2);
  wrong.setZero();
  CHECK_THROWS_AS(tr.step(wrong), flowprior::shape_error);
  CHECK_THROWS_AS(tr.step(Mat<double>(m.image_dim(), 0)), flowprior::shape_error);
  x(3, 1) = std::nan("");
  CHECK_THROWS_WITH(tr.step(x), Contains("'x'") && Contains("non-finite"));
  unchanged();
  x(3, 1) = 0.5;
  auto nan_loss = [](ConstMatrixView<double>, MatrixView<double>, flowprior::CpuBackend::Context&) {
    return std::nan("");
  };
  CHECK_THROWS_WITH(tr.step(x, nan_loss),
                    Contains("diverged at step 2") && Contains("the step was not applied"));
  unchanged();
  auto inf_grad = [](ConstMatrixView<double>, MatrixView<double> d_y,
                     flowprior::CpuBackend::Context&) {
    d_y(0, 0) = std::numeric_limits<double>::infinity();
    return 0.0;
  };
  CHECK_THROWS_AS(tr.step(x, inf_grad), flowprior::numeric_error);
  unchanged();
  // Bad options are refused by name.
  train::ReconstructionConfig bad;
  bad.clip_norm = 0;
  CHECK_THROWS_WITH(train::ReconstructionTrainer<Model>(m, bad), Contains("clip_norm"));
  bad = {};
  bad.ema_decay = 1;
  CHECK_THROWS_WITH(train::ReconstructionTrainer<Model>(m, bad), Contains("ema_decay"));
  bad = {};
  bad.adam.beta2 = 1.5;
  CHECK_THROWS_WITH(train::ReconstructionTrainer<Model>(m, bad), Contains("beta2"));
}

TEST_CASE("reconstruction: training fits a small batch", "[reconstruction]") {
  using Model = nn::TokenizerAE<float>;
  nn::TokenizerConfig c = tiny();
  c.width = 16;
  c.latent_tokens = 4;
  c.latent_dim = 4;
  Model m(c);
  Rng rng(1);
  m.init(rng);
  const Mat<float> x = images(m, 4, 2);
  train::ReconstructionConfig cfg;
  cfg.schedule = optim::LrSchedule::cosine(3e-3, 10, 300);
  cfg.adam.weight_decay = 0;
  train::ReconstructionTrainer<Model> tr(m, cfg);
  const double first = tr.step(x).mse;
  double last = first;
  for (int s = 1; s < 300; ++s) last = tr.step(x).mse;
  INFO("mse " << first << " -> " << last);
  CHECK(last < 0.1 * first);
  CHECK(train::ReconstructionStats::psnr_of(last) > train::ReconstructionStats::psnr_of(first));
}

TEMPLATE_TEST_CASE("reconstruction: N steps == N/2 + save + load + N/2, bit for bit",
                   "[reconstruction][io]", float, double) {
  using S = TestType;
  using Model = nn::TokenizerAE<S>;
  train::ReconstructionConfig cfg;
  cfg.schedule = optim::LrSchedule::cosine(2e-3, 2, 8, 1e-4);
  cfg.clip_norm = 0.5;
  cfg.ema_decay = 0.9;
  // Batches that depend on the step (as a loader's would), two sizes.
  auto batch = [](const Model& m, int s) { return images(m, s % 2 ? 3 : 2, 100 + s); };
  const int N = 8;
  Model full_m(tiny());
  randomise(full_m, 1);
  train::ReconstructionTrainer<Model> full(full_m, cfg);
  for (int s = 0; s < N; ++s) full.step(batch(full_m, s), half_norm<S>(0.1));

  const std::string path = fpt::temp_path("recon_resume.safetensors");
  {
    Model m(tiny());
    randomise(m, 1);
    train::ReconstructionTrainer<Model> first(m, cfg);
    for (int s = 0; s < N / 2; ++s) first.step(batch(m, s), half_norm<S>(0.1));
    train::save_checkpoint(path, first, Rng(5), {{"loader.epoch", "0"}, {"loader.batch", "4"}});
  }
  Model m(tiny());
  randomise(m, 2);  // other weights until loaded
  train::ReconstructionTrainer<Model> resumed(m, cfg);
  Rng rng(77);
  train::load_checkpoint(path, resumed, rng);
  REQUIRE(rng == Rng(5));
  REQUIRE(resumed.steps() == N / 2);
  for (int s = N / 2; s < N; ++s) resumed.step(batch(m, s), half_norm<S>(0.1));
  REQUIRE(std::equal(full_m.parameters().data, full_m.parameters().data + m.num_params(),
                     m.parameters().data));
  REQUIRE(full.ema().weights() == resumed.ema().weights());
  REQUIRE(full.optimizer().v() == resumed.optimizer().v());
  const auto st = io::Safetensors::read(path);
  CHECK(st.metadata().at("user.loader.batch") == "4");
  CHECK(st.metadata().at("flowprior.format") == "reconstruction-checkpoint-1");
  CHECK(st.metadata().at("model.config.heads") == "2");
  // The EMA weights load as a state dict.
  Model avg(tiny());
  io::LoadOptions lo;
  lo.prefix = "ema.";
  io::load_state_dict(avg, st, lo);
  std::remove(path.c_str());
}

TEST_CASE("reconstruction: checkpoints of another model or trainer are refused by name",
          "[reconstruction][io][error]") {
  using Model = nn::TokenizerAE<double>;
  Model m(tiny());
  randomise(m, 1);
  train::ReconstructionConfig cfg;
  train::ReconstructionTrainer<Model> tr(m, cfg);
  tr.step(images(m, 2, 1));
  const std::string path = fpt::temp_path("recon_refuse.safetensors");
  train::save_checkpoint(path, tr, Rng(1));
  const std::vector<double> p(m.parameters().data, m.parameters().data + m.num_params());

  SECTION("a model configuration with the same shapes but other heads") {
    nn::TokenizerConfig c = tiny();
    c.heads = 4;
    Model other(c);
    train::ReconstructionTrainer<Model> t2(other, cfg);
    Rng rng(1);
    CHECK_THROWS_WITH(train::load_checkpoint(path, t2, rng),
                      Contains("model.config.heads") && Contains("'2'") && Contains("'4'"));
  }
  SECTION("another trainer configuration") {
    train::ReconstructionConfig c2 = cfg;
    c2.adam.weight_decay = 0.05;
    Model other(tiny());
    train::ReconstructionTrainer<Model> t2(other, c2);
    Rng rng(1);
    CHECK_THROWS_WITH(train::load_checkpoint(path, t2, rng), Contains("weight_decay"));
  }
  SECTION("a flow-matching checkpoint, and the other way round") {
    nn::AdaLNMlpConfig fc;
    fc.dim = 2;
    fc.width = 8;
    fc.depth = 1;
    fc.time_freq_dim = 8;
    nn::AdaLNMlp<double> net(fc);
    Rng init(1);
    net.init(init);
    train::TrainerConfig tc;
    tc.batch = 4;
    train::FlowMatchingTrainer<nn::AdaLNMlp<double>> ft(net, flowprior::Convention::Code, tc);
    const std::string fpath = fpt::temp_path("flow_for_recon.safetensors");
    train::save_checkpoint(fpath, ft, net, Rng(1));
    Rng rng(1);
    CHECK_THROWS_WITH(train::load_checkpoint(fpath, tr, rng),
                      Contains("FlowMatchingTrainer") && Contains("reconstruction-checkpoint-1"));
    CHECK_THROWS_WITH(train::load_checkpoint(path, ft, net, rng),
                      Contains("ReconstructionTrainer"));
    std::remove(fpath.c_str());
  }
  CHECK(std::equal(p.begin(), p.end(), m.parameters().data));
  std::remove(path.c_str());
}
