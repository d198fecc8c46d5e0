// LatentAlignmentLoss (train/latent_alignment.hpp) inside ReconstructionTrainer: the step's
// gradient is that of MSE + lambda L_align with the step's draws (central differences), the value
// is alignment_loss's, the term pulls the latents towards the prior, and a run resumes bit for bit.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/latent_alignment.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <functional>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace train = flowprior::train;
using Catch::Matchers::Contains;

namespace {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using AE = nn::TokenizerAE<S>;
template <class S>
using Net = nn::AdaLNMlp<S>;

nn::TokenizerConfig ae_config() {
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 1;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 1;
  c.dec_depth = 1;
  c.latent_tokens = 3;
  c.latent_dim = 2;
  return c;
}

nn::AdaLNMlpConfig prior_config() {
  nn::AdaLNMlpConfig c;
  c.dim = 2;  // the latent dimension d
  c.width = 16;
  c.depth = 2;
  c.time_freq_dim = 16;
  return c;
}

// Random non-degenerate parameters of any model with layout() and parameters().
template <class Model>
void randomise(Model& m, std::uint64_t seed, double scale = 0.4) {
  using S = typename Model::Scalar;
  Rng rng(seed);
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  fpt::fill_uniform(h.data(), m.num_params(), rng, -scale, scale);
  for (const auto& t : m.layout().tensors())
    if (t.name.find("norm") != std::string::npos)
      for (Index i = 0; i < t.size(); ++i) h[std::size_t(t.offset + i)] += 1.0;
  for (Index i = 0; i < m.num_params(); ++i) m.parameters().data[i] = S(h[std::size_t(i)]);
}

template <class S>
Mat<S> images(Index D, Index B, std::uint64_t seed) {
  Rng rng(seed);
  Mat<S> x(D, B);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = S(2 * flowprior::uniform01(rng) - 1);
  return x;
}

}  // namespace

TEST_CASE("latent alignment: the step's gradient is that of MSE + lambda L_align, same draws",
          "[reconstruction][alignment]") {
  AE<double> ae(ae_config());
  randomise(ae, 1);
  Net<double> net(prior_config());
  randomise(net, 2, 0.3);
  const flowprior::Prior<Net<double>> prior(net, Convention::Code);
  const Convention conv = GENERATE(Convention::Code, Convention::Paper);
  const bool detach = GENERATE(false, true);
  CAPTURE(conv == Convention::Paper, detach);
  train::LatentAlignmentConfig ac;
  ac.weight = 0.7;  // large: the term weighs in the gradient
  ac.K = 3;
  ac.detach_pred_v = detach;
  const Mat<double> x = images<double>(ae.image_dim(), 2, 3);
  const Rng start(4);

  Rng rng = start;
  train::LatentAlignmentLoss<Net<double>> align(prior, conv, ac, rng);
  train::ReconstructionConfig rc;
  rc.clip_norm = std::numeric_limits<double>::infinity();
  rc.schedule = flowprior::optim::LrSchedule::constant(0.0);  // parameters stay put
  train::ReconstructionTrainer<AE<double>> tr(ae, rc);
  const auto st = tr.step(x, std::ref(align));
  const std::vector<double> g(tr.gradient().data, tr.gradient().data + ae.num_params());

  // The loss with the same draws (a fresh generator from the same state), by plain calls.
  auto total = [&](bool weighted_only) {
    AE<double>::Workspace ws;
    Mat<double> y(2, 2 * 3), r(ae.image_dim(), 2);
    ae.forward(x, y, r, ws);
    Rng again = start;
    loss::FlowDraws<double> draws;
    loss::draw(draws, conv, y.cols(), 2, ac.K, ac.sampler, again);
    loss::AlignmentOptions o;
    o.weight = ac.weight;
    o.detach_pred_v = detach;
    loss::LossWorkspace<Net<double>> lw;
    const double la = loss::alignment_loss(prior.as(conv), conv, y, draws, o, lw);
    return weighted_only ? la : (r - x).squaredNorm() / double(x.size()) + la;
  };
  CHECK(st.latent_loss == Approx(total(true)).epsilon(1e-13));
  CHECK(st.loss == Approx(total(false)).epsilon(1e-13));
  CHECK(align.last_unweighted() == Approx(st.latent_loss / 0.7).epsilon(1e-14));
  if (detach) return;  // the detached gradient is not the gradient of the loss
  const std::vector<double> p0(ae.parameters().data, ae.parameters().data + ae.num_params());
  Rng dirs(5);
  const double h = 1e-5;
  for (int k = 0; k < 4; ++k) {
    std::vector<double> dir(p0.size());
    fpt::fill_uniform(dir.data(), Index(dir.size()), dirs, -1, 1);
    auto at = [&](double s) {
      for (std::size_t i = 0; i < p0.size(); ++i) ae.parameters().data[i] = p0[i] + s * dir[i];
      return total(false);
    };
    const double fd = (at(h) - at(-h)) / (2 * h);
    double an = 0;
    for (std::size_t i = 0; i < g.size(); ++i) an += g[i] * dir[i];
    CHECK(an == Approx(fd).epsilon(1e-7).margin(1e-10));
  }
}

TEST_CASE("latent alignment: the term pulls the latents towards the prior",
          "[reconstruction][alignment]") {
  // Two runs from the same weights on the same batches, lambda 0 and lambda 1: the aligned run
  // ends with a lower alignment loss of its latents (measured with the same draws).
  Net<float> net(prior_config());
  randomise(net, 2, 0.3);
  const flowprior::Prior<Net<float>> prior(net, Convention::Code);
  auto run = [&](double lambda) {
    AE<float> ae(ae_config());
    Rng init(1);
    ae.init(init);
    train::ReconstructionConfig rc;
    rc.schedule = flowprior::optim::LrSchedule::constant(3e-3);
    train::ReconstructionTrainer<AE<float>> tr(ae, rc);
    train::LatentAlignmentConfig ac;
    ac.weight = lambda;
    Rng rng(6);
    train::LatentAlignmentLoss<Net<float>> align(prior, Convention::Code, ac, rng);
    const Mat<float> x = images<float>(ae.image_dim(), 16, 7);
    for (int s = 0; s < 150; ++s) tr.step(x, std::ref(align));
    // Evaluate L_align of the final latents with fixed draws.
    AE<float>::Workspace ws;
    Mat<float> y(2, 16 * 3), r(ae.image_dim(), 16);
    ae.forward(x, y, r, ws);
    Rng eval(8);
    loss::FlowDraws<float> draws;
    loss::draw(draws, Convention::Code, y.cols(), 2, 64, loss::TimeSampler::uniform(), eval);
    loss::LossWorkspace<Net<float>> lw;
    return loss::alignment_loss(prior, Convention::Code, y, draws, loss::AlignmentOptions{}, lw);
  };
  const double free = run(0.0), aligned = run(1.0);
  INFO("L_align: lambda 0 " << free << ", lambda 1 " << aligned);
  CHECK(aligned < 0.8 * free);
}

TEST_CASE("latent alignment: a run with the term resumes bit for bit", "[reconstruction][io]") {
  Net<float> net(prior_config());
  randomise(net, 2, 0.3);
  const flowprior::Prior<Net<float>> prior(net, Convention::Code);
  train::LatentAlignmentConfig ac;
  ac.weight = 0.1;
  ac.time_group = 2;
  ac.sampler = loss::TimeSampler::stratified();
  train::ReconstructionConfig rc;
  rc.schedule = flowprior::optim::LrSchedule::cosine(2e-3, 2, 10);
  struct Run {
    AE<float> ae{ae_config()};
    train::ReconstructionTrainer<AE<float>> tr;
    Rng rng{9};
    train::LatentAlignmentLoss<Net<float>> align;
    Run(const flowprior::Prior<Net<float>>& p, const train::ReconstructionConfig& c,
        const train::LatentAlignmentConfig& a)
        : tr(ae, c), align(p, Convention::Paper, a, rng) {}
    void steps(int from, int to) {
      for (int s = from; s < to; ++s)
        tr.step(images<float>(ae.image_dim(), 4, 50 + s), std::ref(align));
    }
  };
  auto fresh = [&] {
    auto r = std::make_unique<Run>(prior, rc, ac);
    Rng init(1);
    r->ae.init(init);
    return r;
  };
  auto full = fresh();
  full->steps(0, 10);
  const std::string path = fpt::temp_path("align_resume.safetensors");
  {
    auto first = fresh();
    first->steps(0, 5);
    train::save_checkpoint(path, first->tr, first->rng);
  }
  auto resumed = fresh();
  resumed->steps(0, 2);  // elsewhere before the load
  train::load_checkpoint(path, resumed->tr, resumed->rng);
  resumed->steps(5, 10);
  REQUIRE(std::equal(full->ae.parameters().data, full->ae.parameters().data + full->ae.num_params(),
                     resumed->ae.parameters().data));
  REQUIRE(full->rng() == resumed->rng());
  std::remove(path.c_str());
}

TEST_CASE("latent alignment: typed errors, and lambda 0 draws nothing", "[alignment][errors]") {
  Net<double> net(prior_config());
  randomise(net, 2);
  const flowprior::Prior<Net<double>> prior(net, Convention::Code);
  Rng rng(1);
  train::LatentAlignmentConfig bad;
  bad.weight = -1;
  CHECK_THROWS_WITH(train::LatentAlignmentLoss<Net<double>>(prior, Convention::Code, bad, rng),
                    Contains("weight"));
  bad = {};
  bad.K = 0;
  CHECK_THROWS_WITH(train::LatentAlignmentLoss<Net<double>>(prior, Convention::Code, bad, rng),
                    Contains("K must be positive"));
  // A prior of another dimension than the latents.
  nn::TokenizerConfig c = ae_config();
  c.latent_dim = 3;
  AE<double> ae(c);
  randomise(ae, 3);
  train::ReconstructionTrainer<AE<double>> tr(ae, train::ReconstructionConfig{});
  train::LatentAlignmentLoss<Net<double>> align(prior, Convention::Code, {}, rng);
  const std::vector<double> p(ae.parameters().data, ae.parameters().data + ae.num_params());
  CHECK_THROWS_AS(tr.step(images<double>(ae.image_dim(), 2, 1), std::ref(align)),
                  flowprior::shape_error);
  CHECK(std::equal(p.begin(), p.end(), ae.parameters().data));
  CHECK(tr.steps() == 0);
  // Weight 0: no term and the generator untouched.
  train::LatentAlignmentConfig zero;
  zero.weight = 0;
  const Rng before = rng;
  train::LatentAlignmentLoss<Net<double>> none(prior, Convention::Code, zero, rng);
  AE<double> ae2(ae_config());
  randomise(ae2, 3);
  train::ReconstructionTrainer<AE<double>> tr2(ae2, train::ReconstructionConfig{});
  CHECK(tr2.step(images<double>(ae2.image_dim(), 2, 1), std::ref(none)).latent_loss == 0);
  CHECK(rng == before);
}
