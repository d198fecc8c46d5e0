// AdaLNMlp (the released flow head): structure, initialisation, gradients, JVP, divergence,
// float vs double, and input validation.
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
nn::AdaLNMlpConfig small_config(Index cond_dim = 0, Activation act = Activation::SiLU) {
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 8;
  c.depth = 2;
  c.cond_dim = cond_dim;
  c.time_freq_dim = 16;
  c.activation = act;
  return c;
}
}  // namespace

TEST_CASE("adaln: parameter counts of the released sizes", "[model]") {
  nn::AdaLNMlpConfig big;  // d 32, W 1024, depth 6
  REQUIRE(nn::AdaLNMlp<float>(big).num_params() == 34978848);
  nn::AdaLNMlpConfig toy;
  toy.dim = 2;
  toy.width = 512;
  toy.depth = 4;
  REQUIRE(nn::AdaLNMlp<float>(toy).num_params() == 6179330);
}

TEST_CASE("adaln: parameter names, shapes and packing order follow the PyTorch module", "[model]") {
  nn::AdaLNMlpConfig c = small_config(/*cond_dim=*/5);
  c.depth = 1;
  nn::AdaLNMlp<double> net(c);
  const std::vector<std::pair<std::string, std::vector<Index>>> expected = {
      {"time_embed.mlp.0.weight", {8, 16}},
      {"time_embed.mlp.0.bias", {8}},
      {"time_embed.mlp.2.weight", {8, 8}},
      {"time_embed.mlp.2.bias", {8}},
      {"cond_embed.weight", {8, 5}},
      {"cond_embed.bias", {8}},
      {"input_proj.weight", {8, 3}},
      {"input_proj.bias", {8}},
      {"res_blocks.0.in_ln.weight", {8}},
      {"res_blocks.0.in_ln.bias", {8}},
      {"res_blocks.0.mlp.0.weight", {8, 8}},
      {"res_blocks.0.mlp.0.bias", {8}},
      {"res_blocks.0.mlp.2.weight", {8, 8}},
      {"res_blocks.0.mlp.2.bias", {8}},
      {"res_blocks.0.adaLN_modulation.1.weight", {24, 8}},
      {"res_blocks.0.adaLN_modulation.1.bias", {24}},
      {"final_layer.linear.weight", {3, 8}},
      {"final_layer.linear.bias", {3}},
      {"final_layer.adaLN_modulation.1.weight", {16, 8}},
      {"final_layer.adaLN_modulation.1.bias", {16}},
  };
  const auto& ts = net.layout().tensors();
  REQUIRE(ts.size() == expected.size());
  Index offset = 0;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    CAPTURE(i);
    REQUIRE(ts[i].name == expected[i].first);
    REQUIRE(ts[i].shape == expected[i].second);
    REQUIRE(ts[i].offset == offset);
    offset += ts[i].size();
  }
  REQUIRE(offset == net.num_params());
  REQUIRE(net.layout().find("nope") == nullptr);
  REQUIRE_THROWS_AS(net.layout().at("nope"), flowprior::error);
}

TEST_CASE("adaln: the released initialisation gives v == 0 and the documented statistics",
          "[model]") {
  nn::AdaLNMlpConfig c = small_config(4);
  c.width = 64;
  nn::AdaLNMlp<double> net(c);
  Rng rng(1);
  net.init(rng);
  auto in = fpt::make_inputs(c.dim, 7, c.cond_dim, rng);
  Mat v(c.dim, 7);
  nn::AdaLNMlp<double>::Workspace ws;
  net.forward(in.x, in.t, v, ws, in.cond);
  REQUIRE(v.cwiseAbs().maxCoeff() == 0.0);
  auto p = net.parameters();
  auto tensor = [&](const std::string& name) {
    const auto& t = net.layout().at(name);
    return Eigen::Map<const Vec>(p.data + t.offset, t.size());
  };
  // Time-MLP weights N(0, 0.02^2).
  const auto w0 = tensor("time_embed.mlp.0.weight");
  const double sd = std::sqrt(w0.squaredNorm() / double(w0.size()));
  REQUIRE(sd == Approx(0.02).epsilon(0.05));
  // Xavier-uniform: within sqrt(6 / (in + out)) and with the uniform's variance bound^2 / 3.
  const auto wm = tensor("res_blocks.1.mlp.0.weight");
  const double bound = std::sqrt(6.0 / 128.0);
  REQUIRE(wm.cwiseAbs().maxCoeff() <= bound);
  REQUIRE(std::sqrt(wm.squaredNorm() / double(wm.size())) ==
          Approx(bound / std::sqrt(3.0)).epsilon(0.05));
  REQUIRE(tensor("res_blocks.0.in_ln.weight").minCoeff() == 1.0);
  REQUIRE(tensor("res_blocks.0.mlp.0.bias").cwiseAbs().maxCoeff() == 0.0);
  REQUIRE(tensor("res_blocks.0.adaLN_modulation.1.weight").cwiseAbs().maxCoeff() == 0.0);
  REQUIRE(tensor("final_layer.linear.weight").cwiseAbs().maxCoeff() == 0.0);
  REQUIRE(tensor("cond_embed.weight").cwiseAbs().maxCoeff() > 0.0);
  // Same seed, same parameters.
  nn::AdaLNMlp<double> net2(c);
  Rng rng2(1);
  net2.init(rng2);
  REQUIRE(std::equal(p.data, p.data + p.size, net2.parameters().data));
}

TEST_CASE("adaln: gradients w.r.t. x, every parameter tensor and the conditioning",
          "[model][grad]") {
  const Activation act = GENERATE(Activation::SiLU, Activation::GELU);
  const Index cond = GENERATE(Index(0), Index(4));
  CAPTURE(flowprior::to_string(act), cond);
  Rng rng(21);
  nn::AdaLNMlp<double> net(small_config(cond, act));
  fpt::randomize_field(net, rng);
  fpt::check_field_gradients(net, fpt::make_inputs(3, 4, cond, rng), rng);
}

TEST_CASE("adaln: backward and vjp_x accumulate", "[model][grad]") {
  Rng rng(22);
  nn::AdaLNMlp<double> net(small_config());
  fpt::randomize_field(net, rng);
  fpt::check_accumulation(net, fpt::make_inputs(3, 5, 0, rng), rng);
}

TEST_CASE("adaln: JVP agrees with the VJP and with finite differences", "[model][grad]") {
  const Index K = GENERATE(Index(1), Index(3));
  CAPTURE(K);
  Rng rng(23);
  nn::AdaLNMlp<double> net(small_config(2));
  fpt::randomize_field(net, rng);
  fpt::check_jvp(net, fpt::make_inputs(3, 4, 2, rng), rng, K);
}

TEST_CASE("adaln: exact divergence equals the finite-difference trace", "[model][grad]") {
  Rng rng(24);
  nn::AdaLNMlp<double> net(small_config(2));
  fpt::randomize_field(net, rng);
  fpt::check_divergence(net, fpt::make_inputs(3, 6, 2, rng));
}

TEST_CASE("adaln: float agrees with double", "[model]") {
  Rng rng(25);
  auto c = small_config(2);
  c.width = 32;
  nn::AdaLNMlp<double> nd(c);
  nn::AdaLNMlp<float> nf(c);
  fpt::randomize_field(nd, rng);
  auto pd = nd.parameters();
  auto pf = nf.parameters();
  for (Index i = 0; i < pd.size; ++i) pf[i] = static_cast<float>(pd[i]);
  auto in = fpt::make_inputs(3, 9, 2, rng);
  const Index N = 9;
  Mat vd(3, N), u = fpt::random_mat(3, N, rng);
  nn::AdaLNMlp<double>::Workspace wd;
  nn::AdaLNMlp<float>::Workspace wf;
  nd.forward(in.x, in.t, vd, wd, in.cond);
  Eigen::MatrixXf xf = in.x.cast<float>(), cf = in.cond.cast<float>(), vf(3, N);
  Eigen::VectorXf tf = in.t.cast<float>();
  nf.forward(xf, tf, vf, wf, cf);
  REQUIRE((vf.cast<double>() - vd).norm() / vd.norm() < 1e-5);
  Mat dxd = Mat::Zero(3, N);
  Vec dpd = Vec::Zero(nd.num_params());
  nd.backward(wd, u, dxd, dpd);
  Eigen::MatrixXf uf = u.cast<float>(), dxf = Eigen::MatrixXf::Zero(3, N);
  Eigen::VectorXf dpf = Eigen::VectorXf::Zero(nf.num_params());
  nf.backward(wf, uf, dxf, dpf);
  REQUIRE((dxf.cast<double>() - dxd).norm() / dxd.norm() < 1e-4);
  REQUIRE((dpf.cast<double>() - dpd).norm() / dpd.norm() < 1e-4);
  Vec divd(N), divf_d(N);
  Eigen::VectorXf divf(N);
  nd.divergence(in.x, in.t, vd, divd, wd, in.cond);
  nf.divergence(xf, tf, vf, divf, wf, cf);
  REQUIRE((divf.cast<double>() - divd).norm() / divd.norm() < 1e-4);
}

TEST_CASE("adaln: bad configurations throw config_error naming the field", "[model][error]") {
  auto bad = [](auto mutate) {
    nn::AdaLNMlpConfig c = small_config();
    mutate(c);
    return c;
  };
  using E = flowprior::config_error;
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.width = 0; })), E);
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.dim = 0; })), E);
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.depth = -1; })), E);
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.time_freq_dim = 15; })), E);
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.ln_eps = 0; })), E);
  REQUIRE_THROWS_AS(nn::AdaLNMlp<double>(bad([](auto& c) { c.cond_dim = -2; })), E);
  REQUIRE_THROWS_WITH(nn::AdaLNMlp<double>(bad([](auto& c) { c.width = 0; })),
                      Catch::Contains("width"));
  REQUIRE_THROWS_WITH(nn::AdaLNMlp<double>(bad([](auto& c) { c.time_freq_dim = 15; })),
                      Catch::Contains("time_freq_dim") && Catch::Contains("even"));
  // depth 0 is a valid (degenerate) network: input_proj then the final layer.
  REQUIRE_NOTHROW(nn::AdaLNMlp<double>(bad([](auto& c) { c.depth = 0; })));
}

TEST_CASE("adaln: bad inputs throw typed errors naming the argument and both shapes",
          "[model][error]") {
  Rng rng(26);
  nn::AdaLNMlp<double> net(small_config(2));
  fpt::randomize_field(net, rng);
  nn::AdaLNMlp<double>::Workspace ws;
  Mat x(3, 4), v(3, 4), cond(2, 4);
  x.setRandom();
  cond.setRandom();
  Vec t = Vec::Constant(4, 0.5);
  using SE = flowprior::shape_error;
  // Gradient calls before any forward.
  Mat d(3, 4);
  d.setZero();
  REQUIRE_THROWS_AS(net.vjp_x(ws, v, d), flowprior::error);
  Mat x_bad(4, 4);
  x_bad.setZero();
  REQUIRE_THROWS_AS(net.forward(x_bad, t, v, ws, cond), SE);
  REQUIRE_THROWS_WITH(net.forward(x_bad, t, v, ws, cond), Catch::Contains("'x'") &&
                                                              Catch::Contains("(4, 4)") &&
                                                              Catch::Contains("(3, 4)"));
  Vec t_bad = Vec::Constant(3, 0.5);
  REQUIRE_THROWS_WITH(net.forward(x, t_bad, v, ws, cond), Catch::Contains("'t'") &&
                                                              Catch::Contains("size 3") &&
                                                              Catch::Contains("expected 4"));
  Mat v_bad(3, 5);
  REQUIRE_THROWS_AS(net.forward(x, t, v_bad, ws, cond), SE);
  REQUIRE_THROWS_WITH(net.forward(x, t, v, ws), Catch::Contains("'cond'"));  // missing cond
  Mat cond_bad(3, 4);
  cond_bad.setZero();
  REQUIRE_THROWS_AS(net.forward(x, t, v, ws, cond_bad), SE);
  Vec t_out = t;
  t_out[2] = 1.5;
  REQUIRE_THROWS_AS(net.forward(x, t_out, v, ws, cond), flowprior::value_error);
  t_out[2] = std::nan("");
  REQUIRE_THROWS_WITH(net.forward(x, t_out, v, ws, cond),
                      Catch::Contains("'t'") && Catch::Contains("[0, 1]"));
  // Unconditioned field given a conditioning tensor.
  nn::AdaLNMlp<double> plain(small_config());
  nn::AdaLNMlp<double>::Workspace ws2;
  REQUIRE_THROWS_AS(plain.forward(x, t, v, ws2, cond), SE);
  // Backward family.
  net.forward(x, t, v, ws, cond);
  Mat dv_bad(3, 3), dx(3, 4);
  dv_bad.setZero();
  dx.setZero();
  REQUIRE_THROWS_WITH(net.vjp_x(ws, dv_bad, dx), Catch::Contains("'d_v'"));
  Mat dx_bad(2, 4);
  REQUIRE_THROWS_WITH(net.vjp_x(ws, v, dx_bad), Catch::Contains("'d_x'"));
  Vec dp_bad(3);
  REQUIRE_THROWS_WITH(net.backward(ws, v, dx, dp_bad), Catch::Contains("'d_params'"));
  Mat dcond_bad(5, 4);
  Vec dp = Vec::Zero(net.num_params());
  REQUIRE_THROWS_WITH(net.backward(ws, v, dx, dp, dcond_bad), Catch::Contains("'d_cond'"));
  Mat w(3, 4), jw(3, 4);
  w.setZero();
  REQUIRE_THROWS_AS(net.jvp_x(ws, w, jw, 0), flowprior::config_error);
  REQUIRE_THROWS_WITH(net.jvp_x(ws, w, jw, 2), Catch::Contains("'dx'"));
  Vec div_bad(3);
  REQUIRE_THROWS_WITH(net.divergence(x, t, v, div_bad, ws, cond), Catch::Contains("'div'"));
  // A row-major matrix is rejected at compile time; a strided block at run time.
  Mat big(6, 4);
  big.setZero();
  Eigen::Map<Mat, 0, Eigen::Stride<Eigen::Dynamic, 2>> strided(
      big.data(), 3, 4, Eigen::Stride<Eigen::Dynamic, 2>(6, 2));
  REQUIRE_THROWS_AS(net.forward(strided, t, v, ws, cond), SE);
}

TEST_CASE("adaln: blocks of larger matrices are valid views", "[model]") {
  Rng rng(27);
  nn::AdaLNMlp<double> net(small_config());
  fpt::randomize_field(net, rng);
  Mat big = fpt::random_mat(5, 6, rng);
  Mat x = big.block(1, 2, 3, 4);
  Vec t = fpt::random_vec(4, rng, 0, 1);
  Mat v1(3, 4), vbig = Mat::Zero(7, 4);
  nn::AdaLNMlp<double>::Workspace ws;
  net.forward(x, t, v1, ws);
  auto xb = big.block(1, 2, 3, 4);
  auto vb = vbig.block(2, 0, 3, 4);
  net.forward(xb, t, vb, ws);
  REQUIRE((vbig.block(2, 0, 3, 4) - v1).norm() == 0.0);
  REQUIRE(vbig.row(0).norm() == 0.0);
}
