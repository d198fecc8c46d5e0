// The trainer's and the aligner's backend paths (docs/backends.md "Gather and state
// primitives"): the batch gathered by gather_cols from indices drawn on the host gives the same
// step as the host gather it replaced (the same bits as captured before the change), the
// finiteness checks run on find_nonfinite and name the bad element, copy_ema_to copies on
// the backend, and the optimizer state is read through views and host copies.
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/trainer.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"

using flowprior::ConstMatrixView;
using flowprior::Convention;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace optim = flowprior::optim;
namespace train = flowprior::train;

namespace {

nn::AdaLNMlpConfig small_net() {
  nn::AdaLNMlpConfig c;
  c.dim = 2;
  c.width = 16;
  c.depth = 1;
  c.time_freq_dim = 16;
  return c;
}

train::TrainerConfig small_trainer() {
  train::TrainerConfig tc;
  tc.batch = 16;
  tc.K = 2;
  tc.schedule = optim::LrSchedule::constant(1e-2, 2);
  tc.ema_decay = 0.9;
  return tc;
}

/// 37 fixed targets in two dimensions (exact binary fractions).
template <class S>
std::vector<S> fixed_targets(Index n) {
  std::vector<S> tg(std::size_t(2 * n));
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < 2; ++i)
      tg[std::size_t(i + 2 * j)] =
          S(double(j % 7) * 0.25 - 0.8 + double(i) * 0.125 * double(j % 3));
  return tg;
}

/// What the golden test compares: the losses of six steps, sums over the parameters, the EMA
/// and the moments, four entries of each, and the generator's next draw.
struct Trace {
  std::vector<double> loss, sums, at;
  double next = 0;
};

template <class S>
Trace run_six_steps() {
  nn::AdaLNMlp<S> net(small_net());
  Rng rng(11);
  net.init(rng);
  const Index N = 37;
  const std::vector<S> tg = fixed_targets<S>(N);
  train::FlowMatchingTrainer<nn::AdaLNMlp<S>> trainer(net, Convention::Code, small_trainer());
  Trace tr;
  for (int s = 0; s < 6; ++s)
    tr.loss.push_back(trainer.step(ConstMatrixView<S>(tg.data(), 2, N), rng).loss);
  const Index n = net.num_params();
  const auto p = net.parameters();
  const std::vector<S> e = trainer.ema().weights(), m = trainer.optimizer().m(),
                       v = trainer.optimizer().v();
  double sp = 0, se = 0, sm = 0, sv = 0;
  for (Index i = 0; i < n; ++i) {
    sp += double(p[i]);
    se += double(e[std::size_t(i)]);
    sm += double(m[std::size_t(i)]);
    sv += double(v[std::size_t(i)]);
  }
  tr.sums = {sp, se, sm, sv};
  for (const Index i : {Index(0), n / 3, n / 2, n - 1})
    for (const double x : {double(p[i]), double(e[std::size_t(i)]), double(m[std::size_t(i)]),
                           double(v[std::size_t(i)])})
      tr.at.push_back(x);
  tr.next = flowprior::uniform01(rng);
  return tr;
}

/// Bit for bit where the products are those of the capture (Eigen's kernel on x86-64 without
/// FMA contraction, as the tests are built); within `rel` elsewhere (another engine or ISA).
bool exact_products() {
#if defined(__x86_64__) && !defined(__FMA__)
  return std::string(CpuBackend::gemm_engine()) == "eigen";
#else
  return false;
#endif
}

void require_trace(const Trace& got, const Trace& want, double rel) {
  const bool exact = exact_products();
  auto same = [&](double a, double b) {
    CAPTURE(a, b);
    if (exact)
      REQUIRE(a == b);
    else
      REQUIRE(std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + 1e-30);
  };
  REQUIRE(got.loss.size() == want.loss.size());
  for (std::size_t i = 0; i < want.loss.size(); ++i) same(got.loss[i], want.loss[i]);
  for (std::size_t i = 0; i < want.sums.size(); ++i) same(got.sums[i], want.sums[i]);
  REQUIRE(got.at.size() == want.at.size());
  for (std::size_t i = 0; i < want.at.size(); ++i) same(got.at[i], want.at[i]);
  REQUIRE(got.next == want.next);  // the draws do not depend on the products
}

}  // namespace

TEST_CASE("trainer: a seed gives the values captured before the backend gather", "[train]") {
  // Captured with the host gather (the double loop of step) this change replaced, same build
  // flags as the tests (no -march): the losses, then the sums of the parameters, EMA, m and v,
  // then (p, e, m, v) at the indices 0, n/3, n/2 and n-1 (n = 2562), then the next uniform01.
  // Recaptured (same gather) when the draws' noise moved to the counter-based generator
  // (loss/draws.hpp): the gather had been checked bit-identical against the former values first.
  // Double recaptured when LayerNorm's sums and the gradient norm's moved to the lane order of
  // parallel.hpp lane_sum: every value within 3e-15 relative of the former (float unchanged).
  SECTION("double") {
    Trace want;
    want.loss = {0x1.c21135b5ffbe2p-1, 0x1.822b8e1e3500ap+0, 0x1.b0fe3cb1164dap-1,
                 0x1.e0fcb858fd47fp+0, 0x1.2c6adbca8259ep+0, 0x1.18b13c35a00c7p+0};
    want.sums = {0x1.2929c20cd4e69p+3, 0x1.35cc8d3365cf7p+3, -0x1.4756183e367b9p-5,
                 0x1.0f43fe85ce65ap-2};
    want.at = {-0x1.59ffc0c78d772p-6,  -0x1.21daaedff8322p-11, 0x1.0c83a66a65357p-15,
               0x1.f71284f36b8dap-29,  0x1.6ce64e46bb872p-3,   0x1.5e55931a41742p-3,
               -0x1.588e0b5b2c8b6p-15, 0x1.17b372a7bf05ap-27,  -0x1.ad7aedbcaf344p-7,
               -0x1.cbc8e6ccada4cp-10, 0x1.375fb34960c7fp-19,  0x1.37588f9b7e382p-36,
               0x1.c39419889a49ap-6,   0x1.fa32f20e40786p-8,   -0x1.08274990cd082p-11,
               0x1.5e00afa33abcbp-20};
    want.next = 0x1.a743277af4f17p-1;
    require_trace(run_six_steps<double>(), want, 1e-6);
  }
  SECTION("float") {
    Trace want;
    want.loss = {0x1.c2113618496dfp-1, 0x1.822b8e6893992p+0, 0x1.b0fe3bb4a4ccap-1,
                 0x1.e0fcb7ae5f52ap+0, 0x1.2c6adbae53714p+0, 0x1.18b13c6c7c784p+0};
    want.sums = {0x1.2929beecb9p+3, 0x1.35cc8cd11c6p+3, -0x1.47562336d5p-5, 0x1.0f43fedc6ef38p-2};
    want.at = {-0x1.59ffcp-6,  -0x1.21daaep-11, 0x1.0c83aap-15,  0x1.f71294p-29,
               0x1.6ce64ep-3,  0x1.5e5592p-3,   -0x1.588e14p-15, 0x1.17b382p-27,
               -0x1.ad7aeep-7, -0x1.cbc8e6p-10, 0x1.375fbap-19,  0x1.37589ap-36,
               0x1.c3941cp-6,  0x1.fa32f6p-8,   -0x1.08274ap-11, 0x1.5e00a8p-20};
    want.next = 0x1.a743277af4f17p-1;
    require_trace(run_six_steps<float>(), want, 1e-2);
  }
}

TEST_CASE("trainer: step equals step_on of the batch gathered on the host", "[train]") {
  // The draws of the indices are those of the former host loop, one uniform01 per row, so a
  // host gather from a copy of the generator feeds step_on the same batch: the same bits on any
  // GEMM engine. The targets sit in taller storage (leading dimension 5).
  const Index N = 23, ld = 5;
  std::vector<double> store(std::size_t(ld * N));
  Rng dr(3);
  for (auto& x : store) x = flowprior::normal01(dr);
  const ConstMatrixView<double> targets(store.data(), 2, N, ld);
  nn::AdaLNMlp<double> a(small_net()), b(small_net());
  Rng init_a(5), init_b(5);
  a.init(init_a);
  b.init(init_b);
  auto cfg = small_trainer();
  cfg.batch = 9;
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> ta(a, Convention::Paper, cfg),
      tb(b, Convention::Paper, cfg);
  Rng ra(17), rb(17);
  Eigen::MatrixXd batch(2, cfg.batch);
  for (int s = 0; s < 4; ++s) {
    for (Index j = 0; j < cfg.batch; ++j) {
      const Index src = std::min<Index>(N - 1, Index(flowprior::uniform01(rb) * double(N)));
      batch.col(j) << targets(0, src), targets(1, src);
    }
    const auto sa = ta.step(targets, ra);
    const auto sb = tb.step_on(batch, rb);
    REQUIRE(sa.loss == sb.loss);
    REQUIRE(sa.grad_norm == sb.grad_norm);
  }
  REQUIRE(ra == rb);
  REQUIRE(ta.ema().weights() == tb.ema().weights());
  REQUIRE(ta.optimizer().m() == tb.optimizer().m());
  for (Index i = 0; i < a.num_params(); ++i) REQUIRE(a.parameters()[i] == b.parameters()[i]);
}

TEST_CASE("trainer: a non-finite batch is refused, naming the element", "[train][error]") {
  nn::AdaLNMlp<double> net(small_net());
  Rng rng(5);
  net.init(rng);
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> trainer(net, Convention::Code, small_trainer());
  // A batch in taller storage (leading dimension 3): the bad element is at (1, 2).
  std::vector<double> store(3 * 6, 0.25);
  store[2] = std::numeric_limits<double>::quiet_NaN();  // outside the view: row 2 of column 0
  store[1 + 2 * 3] = std::numeric_limits<double>::infinity();
  const ConstMatrixView<double> batch(store.data(), 2, 6, 3);
  const Rng before = rng;
  const auto params = trainer.ema().weights();
  try {
    trainer.step_on(batch, rng);
    FAIL("no numeric_error");
  } catch (const flowprior::numeric_error& e) {
    REQUIRE(std::string(e.what()) ==
            "[flowprior.numeric] FlowMatchingTrainer::step: argument 'batch' has a non-finite "
            "value inf at (1, 2)");
  }
  REQUIRE(rng == before);  // refused before any draw
  REQUIRE(trainer.steps() == 0);
  REQUIRE(trainer.ema().weights() == params);
  // The same batch gathered by step from targets holding the bad value: the first gathered
  // column whose source is column 2 is named.
  std::vector<double> tg(2 * 3, 0.5);
  tg[0] = -std::numeric_limits<double>::infinity();
  try {
    trainer.step(ConstMatrixView<double>(tg.data(), 2, 3), rng);
    FAIL("no numeric_error");
  } catch (const flowprior::numeric_error& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("argument 'batch' has a non-finite value -inf at (0, "));
  }
}

TEST_CASE("aligner: non-finite latents are refused, naming the element", "[train][error]") {
  nn::AdaLNMlp<double> net(small_net());
  Rng rng(6);
  net.init(rng);
  const flowprior::Prior<nn::AdaLNMlp<double>> prior(net, Convention::Paper);
  train::LatentAligner<nn::AdaLNMlp<double>> aligner(prior, Convention::Paper, 4,
                                                     train::AlignConfig{});
  Eigen::MatrixXd y = Eigen::MatrixXd::Constant(2, 4, 0.1);
  y(0, 3) = std::numeric_limits<double>::quiet_NaN();
  try {
    aligner.step(MatrixView<double>(y), rng);
    FAIL("no numeric_error");
  } catch (const flowprior::numeric_error& e) {
    REQUIRE(std::string(e.what()) ==
            "[flowprior.numeric] LatentAligner::step: argument 'y' has a non-finite value nan "
            "at (0, 3)");
  }
  REQUIRE(aligner.steps() == 0);
  y(0, 3) = 0.2;
  REQUIRE(std::isfinite(aligner.step(MatrixView<double>(y), rng)));
}

TEST_CASE("trainer: copy_ema_to copies the average, and checks the size", "[train]") {
  nn::AdaLNMlp<double> net(small_net());
  Rng rng(7);
  net.init(rng);
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> trainer(net, Convention::Code, small_trainer());
  const std::vector<double> tg = fixed_targets<double>(10);
  for (int s = 0; s < 3; ++s) trainer.step(ConstMatrixView<double>(tg.data(), 2, 10), rng);
  nn::AdaLNMlp<double> prior(small_net());
  trainer.copy_ema_to(prior);
  const std::vector<double> ema = trainer.ema().weights();
  REQUIRE(Index(ema.size()) == prior.num_params());
  for (Index i = 0; i < prior.num_params(); ++i)
    REQUIRE(prior.parameters()[i] == ema[std::size_t(i)]);
  auto wider = small_net();
  wider.width = 8;
  nn::AdaLNMlp<double> other(wider);
  REQUIRE_THROWS_AS(trainer.copy_ema_to(other), flowprior::shape_error);
}

TEST_CASE("optimizer state: views, host copies and set_state agree", "[train][optim]") {
  using S = float;
  std::vector<S> p = {1, -2, 3}, g = {0.5f, 0.25f, -1};
  optim::Adam<S> adam(3, optim::AdamConfig{});
  optim::Ema<S> ema(flowprior::ConstVectorView<S>(p.data(), 3), 0.5);
  for (int s = 0; s < 2; ++s) {
    adam.step(flowprior::VectorView<S>(p.data(), 3), flowprior::ConstVectorView<S>(g.data(), 3));
    ema.update(flowprior::ConstVectorView<S>(p.data(), 3));
  }
  std::vector<S> m(3), v(3), w(3);
  adam.copy_m_to(m.data());
  adam.copy_v_to(v.data());
  ema.copy_weights_to(w.data());
  REQUIRE(m == adam.m());
  REQUIRE(v == adam.v());
  REQUIRE(w == ema.weights());
  REQUIRE(adam.m_view().size == 3);
  REQUIRE(adam.v_view().size == 3);
  REQUIRE(ema.weights_view().size == 3);
  for (Index i = 0; i < 3; ++i) {
    REQUIRE(adam.m_view()[i] == m[std::size_t(i)]);  // CpuBackend: the views are host memory
    REQUIRE(adam.v_view()[i] == v[std::size_t(i)]);
    REQUIRE(ema.weights_view()[i] == w[std::size_t(i)]);
  }
  REQUIRE(m[0] != 0);
  optim::Adam<S> restored(3, optim::AdamConfig{});
  restored.set_state(adam.steps(), flowprior::ConstVectorView<S>(m.data(), 3),
                     flowprior::ConstVectorView<S>(v.data(), 3));
  REQUIRE(restored.m() == m);
  REQUIRE(restored.v() == v);
  restored.reset();
  REQUIRE(restored.m() == std::vector<S>(3, 0));
  REQUIRE(restored.v() == std::vector<S>(3, 0));
  // A negative second moment is refused, naming the index (the host data is checked).
  v[2] = -1;
  REQUIRE_THROWS_WITH(restored.set_state(1, flowprior::ConstVectorView<S>(m.data(), 3),
                                         flowprior::ConstVectorView<S>(v.data(), 3)),
                      Catch::Contains("argument 'v' must be >= 0, got -1 at index 2"));
  REQUIRE(restored.steps() == 0);
  // A non-finite gradient is named with its value, read back from the backend.
  g[1] = std::numeric_limits<S>::infinity();
  REQUIRE_THROWS_WITH(
      adam.step(flowprior::VectorView<S>(p.data(), 3), flowprior::ConstVectorView<S>(g.data(), 3)),
      Catch::Contains("argument 'grads' has a non-finite value inf at index 1"));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm<S>(flowprior::VectorView<S>(g.data(), 3), 1.0),
                      Catch::Contains("argument 'g' has a non-finite value inf at index 1"));
}
