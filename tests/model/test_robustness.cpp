// Regression tests of the reliability defects in the numeric core (docs/errors.md "Workspaces",
// "Sizes", "Draws", "Options"): a workspace reused after its field changed, size products that
// overflow or cannot fit, draws edited out of step with their buffers, and options outside their
// domain. Each failed before its fix (heap overflow or silently wrong output, a negative
// parameter count, zero draws, an out-of-bounds read, a silent run).
#include <flowprior/flowprior.hpp>
#include <limits>

#include "catch.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace optim = flowprior::optim;

namespace {

nn::AdaLNMlpConfig adaln_config(Index width, Index depth) {
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = width;
  c.depth = depth;
  c.time_freq_dim = 16;
  return c;
}

/// A field at random, non-degenerate parameters (the released init zeroes the last layers).
template <class Field>
void randomise(Field& f, std::uint64_t seed) {
  Rng rng(seed);
  auto p = f.parameters();
  for (Index i = 0; i < p.size; ++i) p[i] = 0.3 * flowprior::normal01(rng);
}

template <class Field>
Eigen::MatrixXd forward_fresh(const Field& f, const Eigen::MatrixXd& x, const Eigen::VectorXd& t) {
  typename Field::Workspace ws;
  Eigen::MatrixXd v(x.rows(), x.cols());
  f.forward(x, t, v, ws);
  return v;
}

template <class Field>
Eigen::MatrixXd vjp_fresh(const Field& f, const Eigen::MatrixXd& x, const Eigen::VectorXd& t,
                          const Eigen::MatrixXd& dv) {
  typename Field::Workspace ws;
  Eigen::MatrixXd v(x.rows(), x.cols()), dx = Eigen::MatrixXd::Zero(x.rows(), x.cols());
  f.forward(x, t, v, ws);
  f.vjp_x(ws, dv, dx);
  return dx;
}

}  // namespace

TEST_CASE("workspace: reused after the field was replaced by a wider network at the same address",
          "[model][robustness]") {
  // Before the fix the workspace compared only the owner's address and the batch: the wider
  // network packed its products past the narrow layout (heap overflow, wrong v).
  const Index B = 7;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(3, B), dv = Eigen::MatrixXd::Random(3, B);
  Eigen::VectorXd t = (Eigen::VectorXd::Random(B).array() + 1.0) / 2.0;
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 1);
  nn::AdaLNMlp<double>::Workspace ws;
  Eigen::MatrixXd v(3, B), dx = Eigen::MatrixXd::Zero(3, B);
  net.forward(x, t, v, ws);

  SECTION("forward lays the workspace out again") {
    net = nn::AdaLNMlp<double>(adaln_config(64, 3));
    randomise(net, 2);
    net.forward(x, t, v, ws);
    REQUIRE((v - forward_fresh(net, x, t)).norm() <= 1e-12 * v.norm());
    net.vjp_x(ws, dv, dx);
    REQUIRE((dx - vjp_fresh(net, x, t, dv)).norm() <= 1e-12 * dx.norm());
  }
  SECTION("a backward without a new forward is refused, not read past the old layout") {
    net = nn::AdaLNMlp<double>(adaln_config(64, 3));
    randomise(net, 2);
    REQUIRE_THROWS_AS(net.vjp_x(ws, dv, dx), flowprior::error);
    Eigen::MatrixXd tan = Eigen::MatrixXd::Random(3, B), jv(3, B);
    REQUIRE_THROWS_AS(net.jvp_x(ws, tan, jv), flowprior::error);
  }
  SECTION("a narrower network works too") {
    net = nn::AdaLNMlp<double>(adaln_config(4, 2));
    randomise(net, 3);
    net.forward(x, t, v, ws);
    REQUIRE((v - forward_fresh(net, x, t)).norm() <= 1e-12 * v.norm());
  }
}

TEST_CASE("workspace: MlpField reused after the field was replaced", "[model][robustness]") {
  const Index B = 5;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(2, B), dv = Eigen::MatrixXd::Random(2, B);
  Eigen::VectorXd t = (Eigen::VectorXd::Random(B).array() + 1.0) / 2.0;
  nn::MlpFieldConfig c;
  c.dim = 2;
  c.width = 6;
  c.depth = 1;
  nn::MlpField<double> net(c);
  randomise(net, 4);
  nn::MlpField<double>::Workspace ws;
  Eigen::MatrixXd v(2, B), dx = Eigen::MatrixXd::Zero(2, B);
  net.forward(x, t, v, ws);
  c.width = 48;
  c.depth = 3;
  net = nn::MlpField<double>(c);
  randomise(net, 5);
  REQUIRE_THROWS_AS(net.vjp_x(ws, dv, dx), flowprior::error);
  net.forward(x, t, v, ws);
  REQUIRE((v - forward_fresh(net, x, t)).norm() <= 1e-12 * v.norm());
  net.vjp_x(ws, dv, dx);
  REQUIRE((dx - vjp_fresh(net, x, t, dv)).norm() <= 1e-12 * dx.norm());
}

TEST_CASE("workspace: the loss workspace survives a replaced prior network",
          "[model][robustness]") {
  const Index N = 6, K = 3;
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 6);
  flowprior::Prior<nn::AdaLNMlp<double>> prior(net, Convention::Code);
  Eigen::MatrixXd y = Eigen::MatrixXd::Random(3, N);
  loss::FlowDraws<double> draws;
  Rng rng(7);
  loss::draw(draws, Convention::Code, N, 3, K, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<nn::AdaLNMlp<double>> ws;
  const loss::AlignmentOptions opt;
  Eigen::MatrixXd d_y = Eigen::MatrixXd::Zero(3, N);
  loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws, {}, d_y);

  net = nn::AdaLNMlp<double>(adaln_config(96, 2));  // the prior holds the same address
  randomise(net, 8);
  d_y.setZero();
  const double l = loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws, {}, d_y);
  loss::LossWorkspace<nn::AdaLNMlp<double>> fresh;
  Eigen::MatrixXd d_y2 = Eigen::MatrixXd::Zero(3, N);
  const double l2 = loss::alignment_loss(prior, Convention::Code, y, draws, opt, fresh, {}, d_y2);
  REQUIRE(l == Approx(l2).epsilon(1e-13));
  REQUIRE((d_y - d_y2).norm() <= 1e-12 * d_y2.norm());
}

TEST_CASE("workspace: a copy starts empty instead of sharing the source's memory",
          "[model][robustness]") {
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 9);
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(3, 4), v(3, 4), dx = Eigen::MatrixXd::Zero(3, 4);
  Eigen::VectorXd t = Eigen::VectorXd::Constant(4, 0.25);
  nn::AdaLNMlp<double>::Workspace copy;
  {
    nn::AdaLNMlp<double>::Workspace ws;
    net.forward(x, t, v, ws);
    copy = ws;
  }  // ws and its memory are gone
  REQUIRE_THROWS_AS(net.vjp_x(copy, v, dx), flowprior::error);
  net.forward(x, t, v, copy);
  REQUIRE((v - forward_fresh(net, x, t)).norm() == 0.0);
}

TEST_CASE("sizes: parameter counts that overflow are config errors naming the sizes",
          "[model][robustness]") {
  nn::ParamLayout layout;
  layout.add("a", {3, 4});
  const Index huge = Index(1) << 40;
  REQUIRE_THROWS_AS(layout.add("w", {huge, huge}), flowprior::config_error);
  REQUIRE(layout.total() == 12);  // unchanged
  REQUIRE(layout.tensors().size() == 1);
  REQUIRE_THROWS_AS(layout.add("neg", {-2, 3}), flowprior::config_error);
  const Index big = std::numeric_limits<Index>::max() / 2;
  layout.add("b", {big});
  REQUIRE_THROWS_AS(layout.add("c", {big}), flowprior::config_error);

  auto c = adaln_config(1000000000, 6);  // width 1e9: 1e18 weights per block
  try {
    nn::AdaLNMlp<float> net(c);
    FAIL("a network of width 1e9 was built");
  } catch (const flowprior::config_error& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("width 1000000000"));
  }
  c = adaln_config(4096, Index(1) << 50);  // depth 2^50: fails before building 2^50 blocks
  REQUIRE_THROWS_AS(nn::AdaLNMlp<float>(c), flowprior::config_error);
  nn::MlpFieldConfig m;
  m.width = Index(1) << 33;
  REQUIRE_THROWS_AS(nn::MlpField<float>(m), flowprior::config_error);
}

TEST_CASE("sizes: a batch whose workspace cannot fit is a config error naming the batch",
          "[model][robustness]") {
  nn::MlpFieldConfig c;  // 1 M wide: 4 M parameters, but 2 M activations per sample
  c.dim = 1;
  c.width = Index(1) << 20;
  c.depth = 1;
  c.time_encoding = nn::TimeEncoding::Concat;
  nn::MlpField<float> net(c);
  const Index B = Index(1) << 22;  // the caches need 2^43 floats (32 TiB)
  Eigen::MatrixXf x = Eigen::MatrixXf::Zero(1, B), v(1, B);
  Eigen::VectorXf t = Eigen::VectorXf::Constant(B, 0.5f);
  nn::MlpField<float>::Workspace ws;
  try {
    net.forward(x, t, v, ws);
    FAIL("a 32 TiB workspace was allocated");
  } catch (const flowprior::config_error& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("batch of 4194304"));
  }
}

TEST_CASE("sizes: draws whose count overflows are refused, not made empty", "[model][robustness]") {
  // Before the fix rows * K wrapped around and draw() silently made no draws.
  loss::FlowDraws<float> d;
  Rng rng(1);
  const Index rows = Index(1) << 40, K = Index(1) << 30;
  REQUIRE_THROWS_AS(loss::draw(d, Convention::Code, rows, 2, K, loss::TimeSampler::uniform(), rng),
                    flowprior::config_error);
  REQUIRE_THROWS_AS(
      loss::draw(d, Convention::Code, Index(1) << 40, 2, 4, loss::TimeSampler::uniform(), rng),
      flowprior::config_error);  // fits in Index, not in memory
  // A huge time group is one group, not an overflow.
  loss::draw(d, Convention::Code, 5, 2, 3, loss::TimeSampler::stratified(), rng, false,
             std::numeric_limits<Index>::max());
  REQUIRE(d.cols() == 15);
  for (Index i = 1; i < 15; ++i) REQUIRE(d.t[std::size_t(i)] == d.t[0]);
}

TEST_CASE("draws: sizes edited out of step with the buffers are a shape error",
          "[model][robustness]") {
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 10);
  flowprior::Prior<nn::AdaLNMlp<double>> prior(net, Convention::Code);
  const Index N = 4;
  Eigen::MatrixXd y = Eigen::MatrixXd::Random(3, N);
  loss::FlowDraws<double> draws;
  Rng rng(11);
  loss::draw(draws, Convention::Code, N, 3, 2, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<nn::AdaLNMlp<double>> ws;
  const loss::AlignmentOptions opt;
  REQUIRE_NOTHROW(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws));

  SECTION("K raised without new buffers") {
    draws.K = 64;  // before the fix: reads 32x past t and eps
    REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws),
                      flowprior::shape_error);
  }
  SECTION("t shortened by hand") {
    draws.t.resize(3);
    REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws),
                      flowprior::shape_error);
  }
  SECTION("eps shortened by hand") {
    draws.eps.resize(draws.eps.size() - 1);
    REQUIRE_THROWS_AS(
        loss::flow_matching_loss(prior, Convention::Code, y, draws, loss::Reduction::Mean, ws),
        flowprior::shape_error);
  }
  SECTION("K zero") {
    draws.K = 0;
    REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws),
                      flowprior::shape_error);
  }
}

TEST_CASE("options: a negative alignment weight and absurd learning rates are refused",
          "[model][robustness]") {
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 12);
  flowprior::Prior<nn::AdaLNMlp<double>> prior(net, Convention::Code);
  Eigen::MatrixXd y = Eigen::MatrixXd::Random(3, 4);
  loss::FlowDraws<double> draws;
  Rng rng(13);
  loss::draw(draws, Convention::Code, 4, 3, 2, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<nn::AdaLNMlp<double>> ws;
  for (double w : {-0.01, -std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::quiet_NaN()}) {
    const loss::AlignmentOptions opt{loss::Reduction::Mean, w, false};
    REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws),
                      flowprior::config_error);
  }
  const loss::AlignmentOptions zero{loss::Reduction::Mean, 0.0, false};  // lambda = 0: a baseline
  REQUIRE(loss::alignment_loss(prior, Convention::Code, y, draws, zero, ws) == 0.0);

  optim::AdamConfig a;
  a.lr = 1e30;
  REQUIRE_THROWS_AS(a.validate(), flowprior::config_error);
  a.lr = optim::AdamConfig::max_lr;
  REQUIRE_NOTHROW(a.validate());
  optim::Adam<double> adam(3, {});
  std::vector<double> p(3, 1.0), g(3, 0.5);
  REQUIRE_THROWS_AS(adam.step({p.data(), 3}, {g.data(), 3}, 1e30), flowprior::config_error);
  REQUIRE(p == std::vector<double>(3, 1.0));
  REQUIRE(adam.steps() == 0);
}

TEST_CASE("options: a divergence budget below one sample's tangents is refused, not exceeded",
          "[model][robustness]") {
  nn::AdaLNMlp<double> net(adaln_config(8, 1));
  randomise(net, 14);
  const Index d = net.dim(), B = 5;
  const Eigen::MatrixXd x = Eigen::MatrixXd::Random(d, B);
  const Eigen::VectorXd t = Eigen::VectorXd::Constant(B, 0.3);
  Eigen::MatrixXd v(d, B), v_ref(d, B);
  Eigen::VectorXd div(B), div_ref(B);
  nn::AdaLNMlp<double>::Workspace ws;
  net.divergence(x, t, v_ref, div_ref, ws);
  for (const Index budget : {Index(-1), Index(1), d - 1}) {
    CAPTURE(budget);
    REQUIRE_THROWS_AS(net.divergence(x, t, v, div, ws, {}, budget), flowprior::config_error);
  }
  // One sample a pass (the smallest budget) and two gives the same divergence as one pass for
  // all (the default); an explicit 0 is the default.
  for (const Index budget : {d, 2 * d, Index(0)}) {
    CAPTURE(budget);
    net.divergence(x, t, v, div, ws, {}, budget);
    REQUIRE((div - div_ref).cwiseAbs().maxCoeff() <= 1e-12 * (1.0 + div_ref.cwiseAbs().maxCoeff()));
  }
}
