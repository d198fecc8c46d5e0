// MlpField (plain MLP velocity field): gradients, JVP, divergence and validation, for both time
// encodings and both activations.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "field_checks.hpp"

using flowprior::Activation;
using flowprior::Index;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;

namespace {
nn::MlpFieldConfig config(nn::TimeEncoding enc, Activation act) {
  nn::MlpFieldConfig c;
  c.dim = 3;
  c.width = 9;
  c.depth = 2;
  c.time_encoding = enc;
  c.time_freq_dim = 6;
  c.activation = act;
  return c;
}
}  // namespace

TEST_CASE("mlp: layout and parameter count", "[model]") {
  nn::MlpField<double> net(config(nn::TimeEncoding::Concat, Activation::SiLU));
  const auto& ts = net.layout().tensors();
  REQUIRE(ts.size() == 6);
  REQUIRE(ts[0].name == "layers.0.weight");
  REQUIRE(ts[0].shape == std::vector<Index>{9, 4});  // dim + 1 time input
  REQUIRE(ts[5].name == "layers.2.bias");
  REQUIRE(net.num_params() == (4 * 9 + 9) + (9 * 9 + 9) + (9 * 3 + 3));
}

TEST_CASE("mlp: gradients, accumulation, JVP and divergence", "[model][grad]") {
  const auto enc = GENERATE(nn::TimeEncoding::Concat, nn::TimeEncoding::Sinusoidal);
  const auto act = GENERATE(Activation::SiLU, Activation::GELU);
  CAPTURE(int(enc), flowprior::to_string(act));
  Rng rng(31);
  nn::MlpField<double> net(config(enc, act));
  fpt::randomize_field(net, rng, 2.0);
  auto in = fpt::make_inputs(3, 5, 0, rng);
  fpt::check_field_gradients(net, in, rng);
  fpt::check_accumulation(net, in, rng);
  fpt::check_jvp(net, in, rng, 2);
  fpt::check_divergence(net, in);
}

TEST_CASE("mlp: depth 1 works and float agrees with double", "[model]") {
  Rng rng(32);
  auto c = config(nn::TimeEncoding::Sinusoidal, Activation::SiLU);
  c.depth = 1;
  nn::MlpField<double> nd(c);
  nn::MlpField<float> nf(c);
  nd.init(rng);
  for (Index i = 0; i < nd.num_params(); ++i)
    nf.parameters()[i] = static_cast<float>(nd.parameters()[i]);
  auto in = fpt::make_inputs(3, 6, 0, rng);
  fpt::check_field_gradients(nd, in, rng);
  Mat vd(3, 6);
  Eigen::MatrixXf vf(3, 6);
  nn::MlpField<double>::Workspace wd;
  nn::MlpField<float>::Workspace wf;
  nd.forward(in.x, in.t, vd, wd);
  Eigen::MatrixXf xf = in.x.cast<float>();
  Eigen::VectorXf tf = in.t.cast<float>();
  nf.forward(xf, tf, vf, wf);
  REQUIRE((vf.cast<double>() - vd).norm() / vd.norm() < 1e-5);
}

TEST_CASE("mlp: bad configuration and inputs throw typed errors", "[model][error]") {
  using E = flowprior::config_error;
  auto c = config(nn::TimeEncoding::Sinusoidal, Activation::SiLU);
  c.width = 0;
  REQUIRE_THROWS_AS(nn::MlpField<double>(c), E);
  c = config(nn::TimeEncoding::Sinusoidal, Activation::SiLU);
  c.time_freq_dim = 5;
  REQUIRE_THROWS_WITH(nn::MlpField<double>(c), Catch::Contains("time_freq_dim"));
  c.time_encoding = nn::TimeEncoding::Concat;  // odd size is irrelevant without sinusoids
  REQUIRE_NOTHROW(nn::MlpField<double>(c));
  c = config(nn::TimeEncoding::Concat, Activation::SiLU);
  c.depth = 0;
  REQUIRE_THROWS_AS(nn::MlpField<double>(c), E);
  nn::MlpField<double> net(config(nn::TimeEncoding::Concat, Activation::SiLU));
  nn::MlpField<double>::Workspace ws;
  Mat x = Mat::Zero(2, 4), v(3, 4);
  Vec t = Vec::Constant(4, 0.5);
  REQUIRE_THROWS_WITH(net.forward(x, t, v, ws), Catch::Contains("'x'") &&
                                                    Catch::Contains("(2, 4)") &&
                                                    Catch::Contains("(3, 4)"));
  Mat x3 = Mat::Zero(3, 4);
  t[0] = -0.1;
  REQUIRE_THROWS_AS(net.forward(x3, t, v, ws), flowprior::value_error);
}
