// ClassifierTrainer and evaluate (train/classification.hpp): the step's gradient is the
// cross-entropy's, the update is the optimizer parts' AdamW (and EMA), the trainer fits three
// Gaussian blobs in 20 dimensions to 100% training accuracy, a refused non-finite step changes
// nothing, bad labels and shapes are typed errors, evaluate() in batches equals one batch.
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/train/classification.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace optim = flowprior::optim;
namespace train = flowprior::train;
using Catch::Matchers::Contains;

namespace {

using Model = nn::MlpClassifier<double>;
using Trainer = train::ClassifierTrainer<Model>;

// Three Gaussian blobs in 20 dimensions (means at distance ~3 apart, unit noise), n per class,
// labels 0, 1, 2 in turn.
struct Blobs {
  Mat x;
  std::vector<std::int32_t> y;
  Blobs(Index n, std::uint64_t seed) {
    Rng rng(seed);
    const Index D = 20;
    Mat means = fpt::random_mat(D, 3, rng, -1, 1);
    x.resize(D, 3 * n);
    for (Index j = 0; j < 3 * n; ++j) {
      const auto c = static_cast<std::int32_t>(j % 3);
      y.push_back(c);
      for (Index i = 0; i < D; ++i) x(i, j) = means(i, c) + 0.5 * flowprior::normal01(rng);
    }
  }
};

nn::ClassifierConfig blob_config() {
  nn::ClassifierConfig c;
  c.input_dim = 20;
  c.hidden = {16};
  c.classes = 3;
  return c;
}

std::vector<double> params_of(const Model& m) {
  const auto p = m.parameters();
  return std::vector<double>(p.data, p.data + p.size);
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

}  // namespace

TEST_CASE("classification: the step's gradient and update are the cross-entropy's AdamW",
          "[classifier]") {
  const Blobs d(4, 21);
  Model m(blob_config()), ref(blob_config());
  Rng rng(22);
  m.init(rng);
  for (Index i = 0; i < m.num_params(); ++i) ref.parameters()[i] = m.parameters()[i];
  train::ClassifierTrainerConfig cfg;
  cfg.clip_norm = std::numeric_limits<double>::infinity();
  cfg.use_ema = true;
  cfg.ema_decay = 0.9;
  cfg.schedule = optim::LrSchedule::constant(1e-2);
  Trainer tr(m, cfg);
  const std::vector<double> p0 = params_of(m);
  const auto st = tr.step(d.x, d.y);
  // The gradient against central differences of the batch loss at the parameters before.
  Model probe(blob_config());
  for (Index i = 0; i < m.num_params(); ++i) probe.parameters()[i] = p0[std::size_t(i)];
  Model::Workspace ws;
  Mat z(3, d.x.cols());
  auto loss = [&] {
    probe.forward(d.x, z, ws);
    return nn::softmax_cross_entropy<double>(z, d.y).loss;
  };
  REQUIRE(st.loss == Approx(loss()).epsilon(1e-14));
  const auto num = fpt::fd_gradient(loss, probe.parameters().data, m.num_params());
  fpt::require_close("gradient", tr.gradient().data, num.data(), m.num_params(), 1e-6);
  REQUIRE(st.grad_norm ==
          Approx(Eigen::Map<const Vec>(num.data(), Index(num.size())).norm()).epsilon(1e-6));
  REQUIRE(st.lr == 1e-2);
  REQUIRE(st.step == 1);
  // The update: one independent AdamW step from the same gradient, then the EMA.
  optim::AdamConfig ac = cfg.adam;
  optim::Adam<double> adam(m.num_params(), ac);
  optim::Ema<double> ema(ref.parameters(), 0.9);
  adam.step(ref.parameters(), tr.gradient(), 1e-2);
  ema.update(ref.parameters());
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(m.parameters()[i] == ref.parameters()[i]);
  const auto ew = tr.ema().weights();
  const auto er = ema.weights();
  REQUIRE(ew == er);
  Model copy(blob_config());
  tr.copy_ema_to(copy);
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(copy.parameters()[i] == er[std::size_t(i)]);
}

TEST_CASE("classification: the trainer fits three blobs in 20 dimensions", "[classifier]") {
  const Blobs d(30, 23);  // 90 samples
  Model m(blob_config());
  Rng rng(24);
  m.init(rng);
  train::ClassifierTrainerConfig cfg;
  cfg.schedule = optim::LrSchedule::cosine(2e-2, 5, 60);
  Trainer tr(m, cfg);
  const auto before = train::evaluate(m, d.x, d.y, 32);
  train::ClassifierStats st;
  for (int s = 0; s < 60; ++s) st = tr.step(d.x, d.y);
  const auto after = train::evaluate(m, d.x, d.y, 32);
  CAPTURE(before.loss, before.accuracy, after.loss, after.accuracy, st.loss);
  REQUIRE(after.accuracy == 1.0);
  REQUIRE(after.loss < 0.1 * before.loss);
  REQUIRE(after.count == 90);
  // evaluate in batches (32, 32, 26) equals one batch of 90.
  const auto whole = train::evaluate(m, d.x, d.y, 1000);
  REQUIRE(whole.loss == Approx(after.loss).epsilon(1e-13));
  REQUIRE(whole.accuracy == after.accuracy);
}

TEST_CASE("classification: a refused non-finite step changes nothing", "[classifier]") {
  const Blobs d(3, 25);
  Model m(blob_config());
  Rng rng(26);
  m.init(rng);
  train::ClassifierTrainerConfig cfg;
  cfg.use_ema = true;
  Trainer tr(m, cfg);
  tr.step(d.x, d.y);  // one good step: the moments are non-zero
  // A NaN in the head's weights makes the logits NaN: the step is refused.
  const Index off = m.layout().at("head.weight").offset;
  m.parameters()[off] = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> p = params_of(m);
  const auto m1 = tr.optimizer().m();
  const auto m2 = tr.optimizer().v();
  const auto e = tr.ema().weights();
  REQUIRE_THROWS_AS(tr.step(d.x, d.y), flowprior::numeric_error);
  REQUIRE_THROWS_WITH(tr.step(d.x, d.y), Contains("diverged at step 2") && Contains("not applied"));
  REQUIRE(same_bits(params_of(m), p));
  REQUIRE(tr.steps() == 1);
  REQUIRE(tr.optimizer().m() == m1);
  REQUIRE(tr.optimizer().v() == m2);
  REQUIRE(tr.ema().weights() == e);
  // Repaired, the next step is step 2.
  m.parameters()[off] = 0.1;
  REQUIRE(tr.step(d.x, d.y).step == 2);
}

TEST_CASE("classification: bad data, labels and options are typed errors", "[classifier]") {
  const Blobs d(2, 27);
  Model m(blob_config());
  Rng rng(28);
  m.init(rng);
  Trainer tr(m, train::ClassifierTrainerConfig{});
  const std::vector<double> p = params_of(m);
  std::vector<std::int32_t> y = d.y;
  y[3] = 3;
  REQUIRE_THROWS_AS(tr.step(d.x, y), flowprior::value_error);
  REQUIRE_THROWS_WITH(tr.step(d.x, y), Contains("'labels'") && Contains("3 at index 3"));
  y.pop_back();
  REQUIRE_THROWS_AS(tr.step(d.x, y), flowprior::shape_error);
  REQUIRE_THROWS_WITH(tr.step(Mat(19, 6), d.y), Contains("'x'") && Contains("(19, 6)"));
  Mat xn = d.x;
  xn(2, 4) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(tr.step(xn, d.y), Contains("'x'") && Contains("(2, 4)"));
  REQUIRE(same_bits(params_of(m), p));
  REQUIRE(tr.steps() == 0);
  REQUIRE_THROWS_AS(tr.copy_ema_to(m), flowprior::config_error);
  // evaluate's checks
  REQUIRE_THROWS_AS(train::evaluate(m, d.x, d.y, 0), flowprior::config_error);
  REQUIRE_THROWS_AS(train::evaluate(m, d.x, y, 4), flowprior::shape_error);
  // options
  train::ClassifierTrainerConfig c;
  c.clip_norm = 0;
  REQUIRE_THROWS_WITH(Trainer(m, c), Contains("clip_norm"));
  c = {};
  c.ema_decay = 1.0;
  REQUIRE_THROWS_WITH(Trainer(m, c), Contains("ema_decay"));
}
