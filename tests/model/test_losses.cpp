// The alignment and flow-matching losses: closed forms, gradients, conventions, reductions,
// K draws, and input validation.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "field_checks.hpp"
#include "fixtures.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Prior;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace analytic = flowprior::analytic;
using GmmField = analytic::GaussianMixtureField<double>;

namespace {

nn::AdaLNMlpConfig small_adaln(Index dim) {
  nn::AdaLNMlpConfig c;
  c.dim = dim;
  c.width = 8;
  c.depth = 2;
  c.time_freq_dim = 8;
  return c;
}

/// Draws with t -> 1 - t and the same eps: the same path points in the other convention.
loss::FlowDraws<double> mirrored(const loss::FlowDraws<double>& d) {
  loss::FlowDraws<double> m = d;
  m.convention = flowprior::flipped(d.convention);
  for (auto& t : m.t) t = 1.0 - t;
  return m;
}

}  // namespace

TEST_CASE("alignment: Gaussian target matches (pi/4)(d sigma + |y|^2/sigma) within 3 SE",
          "[loss]") {
  const double sigma = GENERATE(0.1, 0.5, 1.0, 2.0);
  const Index d = GENERATE(Index(1), Index(4));
  const double ynorm = GENERATE(0.0, 0.7, 2.5);
  CAPTURE(sigma, d, ynorm);
  GmmField field(analytic::GaussianMixture::isotropic(d, sigma));
  Prior<GmmField> prior(field, Convention::Paper);
  Rng rng(101);
  Vec dir = fpt::random_vec(d, rng);
  const Index N = 20000;
  Mat y = (dir.normalized() * ynorm).replicate(1, N);  // N copies of one latent, 1 draw each
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Paper, N, d, 1, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<GmmField> ws;
  loss::AlignmentOptions opt;
  opt.reduction = loss::Reduction::SumChannels;
  Vec per_row(N);
  const double mc = loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws, per_row);
  const double se = std::sqrt((per_row.array() - mc).square().sum() / double(N - 1) / double(N));
  const double exact = M_PI / 4 * (double(d) * sigma + ynorm * ynorm / sigma);
  INFO("Monte Carlo " << mc << " +- " << se << ", closed form " << exact);
  REQUIRE(std::abs(mc - exact) < 3 * se);
  // The code convention on the mirrored draws evaluates the same path points: same values.
  Vec per_row_code(N);
  const double code = loss::alignment_loss(prior.as(Convention::Code), Convention::Code, y,
                                           mirrored(draws), opt, ws, per_row_code);
  REQUIRE(code == Approx(mc).epsilon(1e-12));
  REQUIRE((per_row_code - per_row).cwiseAbs().maxCoeff() < 1e-9 * (1 + per_row.maxCoeff()));
}

TEST_CASE("alignment: the mean reduction is the sum reduction over dim; weight scales", "[loss]") {
  GmmField field(fpt::three_modes());
  Prior<GmmField> prior(field, Convention::Paper);
  Rng rng(102);
  Mat y = fpt::random_mat(2, 7, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Paper, 7, 2, 4, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<GmmField> ws;
  loss::AlignmentOptions sum{loss::Reduction::SumChannels, 1.0, false};
  loss::AlignmentOptions mean{loss::Reduction::Mean, 0.01, false};
  const double ls = loss::alignment_loss(prior, Convention::Paper, y, draws, sum, ws);
  const double lm = loss::alignment_loss(prior, Convention::Paper, y, draws, mean, ws);
  REQUIRE(lm == Approx(0.01 * ls / 2).epsilon(1e-13));
}

namespace {

// Checks dL/dy of the alignment loss against finite differences (fixed draws).
template <class Field>
void check_alignment_gradient(const Prior<Field>& prior, Convention conv, Rng& rng,
                              const loss::AlignmentOptions& opt, Index N, Index K) {
  const Index d = prior.dim();
  Mat y = fpt::random_mat(d, N, rng, -1.5, 1.5);
  loss::FlowDraws<double> draws;
  loss::draw(draws, conv, N, d, K, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<Field> ws;
  Mat d_y = Mat::Zero(d, N);
  loss::alignment_loss(prior, conv, y, draws, opt, ws, {}, d_y);
  auto f = [&] { return loss::alignment_loss(prior, conv, y, draws, opt, ws); };
  fpt::require_close("d_y", d_y.data(), fpt::fd_gradient(f, y.data(), y.size()), 1e-6);
}

}  // namespace

TEST_CASE("alignment: dL/dy matches finite differences (AdaLN at random parameters)",
          "[loss][grad]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const auto red = GENERATE(loss::Reduction::Mean, loss::Reduction::SumChannels);
  CAPTURE(flowprior::to_string(conv), loss::to_string(red));
  Rng rng(103);
  nn::AdaLNMlp<double> net(small_adaln(3));
  fpt::randomize_field(net, rng);
  Prior<nn::AdaLNMlp<double>> prior(net, conv);
  check_alignment_gradient(prior, conv, rng, {red, 0.37, false}, 4, 3);
  // The same network seen in the other convention (time-reversed view).
  check_alignment_gradient(prior.as(flowprior::flipped(conv)), flowprior::flipped(conv), rng,
                           {red, 1.0, false}, 3, 2);
}

TEST_CASE("alignment: dL/dy matches finite differences (mixture field, both conventions)",
          "[loss][grad]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  Rng rng(104);
  GmmField field(fpt::three_modes());
  Prior<GmmField> prior = Prior<GmmField>(field, Convention::Paper).as(conv);
  check_alignment_gradient(prior, conv, rng, {loss::Reduction::SumChannels, 1.0, false}, 5, 4);
  check_alignment_gradient(prior, conv, rng, {loss::Reduction::Mean, 0.01, false}, 5, 1);
}

TEST_CASE("alignment: the detach variant keeps only the direct term", "[loss][grad]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  Rng rng(105);
  nn::AdaLNMlp<double> net(small_adaln(3));
  fpt::randomize_field(net, rng);
  Prior<nn::AdaLNMlp<double>> prior(net, conv);
  const Index N = 4, K = 2, d = 3;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, conv, N, d, K, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<nn::AdaLNMlp<double>> ws;
  const loss::AlignmentOptions full{loss::Reduction::Mean, 2.0, false};
  const loss::AlignmentOptions det{loss::Reduction::Mean, 2.0, true};
  Mat g_full = Mat::Zero(d, N), g_det = Mat::Zero(d, N);
  const double l_full = loss::alignment_loss(prior, conv, y, draws, full, ws, {}, g_full);
  const double l_det = loss::alignment_loss(prior, conv, y, draws, det, ws, {}, g_det);
  REQUIRE(l_full == l_det);  // detaching changes the gradient only
  // Direct term by hand: d/dy ||v0 - u(y)||^2 with v0 frozen = -2 c r.
  Mat direct = Mat::Zero(d, N), jterm = Mat::Zero(d, N);
  Mat xt(d, N * K), v(d, N * K), dv(d, N * K);
  for (Index col = 0; col < N * K; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    for (Index i = 0; i < d; ++i) xt(i, col) = pc.a * y(i, col / K) + pc.b * draws.noise()(i, col);
  }
  typename Prior<nn::AdaLNMlp<double>>::Workspace pws;
  prior.forward(xt, draws.times(), v, pws);
  const double scale = 2.0 * 2.0 / double(N * K * d);
  for (Index col = 0; col < N * K; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    for (Index i = 0; i < d; ++i) {
      const double r = v(i, col) - (pc.c * y(i, col / K) + pc.e * draws.noise()(i, col));
      direct(i, col / K) += -pc.c * scale * r;
      dv(i, col) = scale * r;
    }
  }
  REQUIRE((g_det - direct).norm() < 1e-13 * direct.norm());
  // And the full gradient is the direct term plus a(t) J^T dv.
  Mat jt = Mat::Zero(d, N * K);
  prior.vjp_x(pws, dv, jt);
  for (Index col = 0; col < N * K; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    jterm.col(col / K) += pc.a * jt.col(col);
  }
  REQUIRE((g_full - direct - jterm).norm() < 1e-12 * g_full.norm());
}

TEST_CASE("alignment: the K-draw loss is the mean of K single-draw losses", "[loss]") {
  Rng rng(106);
  GmmField field(fpt::three_modes());
  Prior<GmmField> prior(field, Convention::Paper);
  const Index N = 6, K = 4, d = 2;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Paper, N, d, K, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<GmmField> ws;
  const loss::AlignmentOptions opt{loss::Reduction::Mean, 1.0, false};
  Mat g = Mat::Zero(d, N), g_sum = Mat::Zero(d, N);
  const double lk = loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws, {}, g);
  double mean = 0;
  for (Index k = 0; k < K; ++k) {
    loss::FlowDraws<double> one;
    one.resize(Convention::Paper, N, d, 1);
    for (Index b = 0; b < N; ++b) {
      one.t[std::size_t(b)] = draws.t[std::size_t(b * K + k)];
      for (Index i = 0; i < d; ++i) one.noise()(i, b) = draws.noise()(i, b * K + k);
    }
    Mat gk = Mat::Zero(d, N);
    mean += loss::alignment_loss(prior, Convention::Paper, y, one, opt, ws, {}, gk) / double(K);
    g_sum += gk / double(K);
  }
  REQUIRE(lk == Approx(mean).epsilon(1e-13));
  REQUIRE((g - g_sum).norm() < 1e-13 * g.norm());
}

TEST_CASE("flow matching: parameter gradients match finite differences", "[loss][grad]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const auto red = GENERATE(loss::Reduction::Mean, loss::Reduction::SumChannels);
  CAPTURE(flowprior::to_string(conv), loss::to_string(red));
  Rng rng(108);
  nn::AdaLNMlp<double> net(small_adaln(2));
  fpt::randomize_field(net, rng);
  Prior<nn::AdaLNMlp<double>> prior(net, conv);
  const Index N = 3, K = 2;
  Mat x = fpt::random_mat(2, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, conv, N, 2, K, loss::TimeSampler::logit_normal(0.3, 1.2), rng);
  loss::LossWorkspace<nn::AdaLNMlp<double>> ws;
  Vec g = Vec::Zero(net.num_params());
  loss::flow_matching_loss(prior, conv, x, draws, red, ws, g);
  auto f = [&] { return loss::flow_matching_loss(prior, conv, x, draws, red, ws); };
  auto p = net.parameters();
  const auto fd = fpt::fd_gradient(f, p.data, p.size);
  for (const auto& t : net.layout().tensors())
    fpt::require_close(t.name, g.data() + t.offset, fd.data() + t.offset, t.size(), 1e-6);
  // A reversed view trains the same parameters with the sign of d_v flipped: gradient of the
  // code-convention loss on mirrored draws equals the paper one.
  Vec g2 = Vec::Zero(net.num_params());
  const Convention other = flowprior::flipped(conv);
  loss::flow_matching_loss(prior.as(other), other, x, mirrored(draws), red, ws, g2);
  REQUIRE((g2 - g).norm() < 1e-12 * g.norm());
}

TEST_CASE("losses: bad input throws typed errors", "[loss][error]") {
  Rng rng(109);
  GmmField field(fpt::three_modes());
  Prior<GmmField> prior(field, Convention::Paper);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Paper, 4, 2, 2, loss::TimeSampler::uniform(), rng);
  loss::LossWorkspace<GmmField> ws;
  const loss::AlignmentOptions opt;
  Mat y = fpt::random_mat(2, 4, rng);
  // Convention mismatches: prior, draws.
  REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws),
                    flowprior::convention_error);
  REQUIRE_THROWS_WITH(
      loss::alignment_loss(prior.as(Convention::Code), Convention::Code, y, draws, opt, ws),
      Catch::Contains("the draws") && Catch::Contains("paper"));
  // Latents of the wrong width; draws for another batch.
  Mat y3 = fpt::random_mat(3, 4, rng);
  REQUIRE_THROWS_WITH(loss::alignment_loss(prior, Convention::Paper, y3, draws, opt, ws),
                      Catch::Contains("'y'") && Catch::Contains("(3, 4)"));
  Mat y5 = fpt::random_mat(2, 5, rng);
  REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Paper, y5, draws, opt, ws),
                    flowprior::shape_error);
  // K = 0.
  REQUIRE_THROWS_AS(
      loss::draw(draws, Convention::Paper, 4, 2, 0, loss::TimeSampler::uniform(), rng),
      flowprior::config_error);
  loss::draw(draws, Convention::Paper, 4, 2, 2, loss::TimeSampler::uniform(), rng);
  // Non-finite latents name the tensor; a non-finite loss is reported too.
  y(1, 2) = std::nan("");
  REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws),
                    flowprior::numeric_error);
  REQUIRE_THROWS_WITH(loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws),
                      Catch::Contains("'y'") && Catch::Contains("(1, 2)"));
  y.setConstant(1e200);
  REQUIRE_THROWS_WITH(loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws),
                      Catch::Contains("loss is not finite"));
  y.setZero();
  Mat dy_bad(2, 3);
  REQUIRE_THROWS_WITH(loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws, {}, dy_bad),
                      Catch::Contains("'d_y'"));
  Vec per_row_bad(3);
  REQUIRE_THROWS_WITH(
      loss::alignment_loss(prior, Convention::Paper, y, draws, opt, ws, per_row_bad),
      Catch::Contains("'loss_per_row'"));
  loss::AlignmentOptions inf_weight;
  inf_weight.weight = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(loss::alignment_loss(prior, Convention::Paper, y, draws, inf_weight, ws),
                    flowprior::config_error);
  // Antithetic draws need an even K; a logit-normal needs std > 0.
  REQUIRE_THROWS_AS(
      loss::draw(draws, Convention::Paper, 4, 2, 3, loss::TimeSampler::uniform(), rng, true),
      flowprior::config_error);
  REQUIRE_THROWS_AS(
      loss::draw(draws, Convention::Paper, 4, 2, 2, loss::TimeSampler::logit_normal(0, 0), rng),
      flowprior::config_error);
}

namespace {

using Net = nn::AdaLNMlp<double>;

/// Explicit draws holding the values of `d` (through Eigen, as a caller would pass them).
loss::FlowDraws<double> explicit_copy(const loss::FlowDraws<double>& d, Index time_group) {
  const Eigen::Map<const Vec> t(d.t.data(), d.cols());
  const Eigen::Map<const Mat> eps(d.eps.data(), d.dim, d.cols());
  return loss::FlowDraws<double>(d.convention, d.rows, d.dim, d.K, t, eps, time_group);
}

}  // namespace

TEST_CASE("explicit draws: the values of loss::draw give bit-identical losses and gradients",
          "[loss][draws]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const bool reversed = GENERATE(false, true);
  const Index group = GENERATE(1, 4);
  CAPTURE(flowprior::to_string(conv), reversed, group);
  Rng rng(120);
  Net net(small_adaln(3));
  fpt::randomize_field(net, rng);
  const Prior<Net> prior = Prior<Net>(net, reversed ? flowprior::flipped(conv) : conv).as(conv);
  const Index N = 5, K = 4, d = 3;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> drawn;
  loss::draw(drawn, conv, N, d, K, loss::TimeSampler::stratified(), rng, false, group);
  const loss::FlowDraws<double> mine = explicit_copy(drawn, group);
  loss::LossWorkspace<Net> ws;
  const loss::AlignmentOptions opt{loss::Reduction::Mean, 0.3, false};
  Vec per1(N), per2(N);
  Mat g1 = Mat::Zero(d, N), g2 = Mat::Zero(d, N);
  const double l1 = loss::alignment_loss(prior, conv, y, drawn, opt, ws, per1, g1);
  const double l2 = loss::alignment_loss(prior, conv, y, mine, opt, ws, per2, g2);
  REQUIRE(l1 == l2);
  REQUIRE(per1 == per2);
  REQUIRE(g1 == g2);
  Vec p1 = Vec::Zero(net.num_params()), p2 = Vec::Zero(net.num_params());
  const double f1 =
      loss::flow_matching_loss(prior, conv, y, drawn, loss::Reduction::SumChannels, ws, p1);
  const double f2 =
      loss::flow_matching_loss(prior, conv, y, mine, loss::Reduction::SumChannels, ws, p2);
  REQUIRE(f1 == f2);
  REQUIRE(p1 == p2);
}

TEST_CASE("losses: draws that do not fit the batch or hold bad values are typed errors",
          "[loss][draws][error]") {
  const bool reversed = GENERATE(false, true);
  const Index group = GENERATE(1, 4);
  CAPTURE(reversed, group);
  const Convention conv = Convention::Code;
  Rng rng(121);
  Net net(small_adaln(2));
  fpt::randomize_field(net, rng);
  const Prior<Net> prior = Prior<Net>(net, reversed ? Convention::Paper : conv).as(conv);
  const Index N = 4, K = 4, d = 2;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> good;
  loss::draw(good, conv, N, d, K, loss::TimeSampler::stratified(), rng, false, group);
  loss::LossWorkspace<Net> ws;
  const loss::AlignmentOptions opt;
  Mat d_y = Mat::Zero(d, N);
  Vec d_p = Vec::Zero(net.num_params());
  auto align = [&](const loss::FlowDraws<double>& dr) {
    return loss::alignment_loss(prior, conv, y, dr, opt, ws, {}, d_y);
  };
  auto fm = [&](const loss::FlowDraws<double>& dr) {
    return loss::flow_matching_loss(prior, conv, y, dr, loss::Reduction::Mean, ws, d_p);
  };
  REQUIRE_NOTHROW(align(good));
  REQUIRE_NOTHROW(fm(good));
  const Mat d_y_before = d_y;
  const Vec d_p_before = d_p;
  Rng r2(122);
  loss::FlowDraws<double> other;
  // Draws for another number of rows, another dimension, another convention.
  loss::draw(other, conv, N + 1, d, K, loss::TimeSampler::uniform(), r2, false, group);
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  loss::draw(other, conv, N - 1, d, K, loss::TimeSampler::uniform(), r2, false, group);
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  loss::draw(other, conv, N, d + 1, K, loss::TimeSampler::uniform(), r2, false, group);
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  loss::draw(other, Convention::Paper, N, d, K, loss::TimeSampler::uniform(), r2, false, group);
  REQUIRE_THROWS_AS(align(other), flowprior::convention_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::convention_error);
  // Sizes edited out of step with the buffers: never read past their end.
  other = good;
  other.K = 2 * K;
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  other = good;
  other.t.pop_back();
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  other = good;
  other.eps.resize(other.eps.size() / 2);
  REQUIRE_THROWS_AS(align(other), flowprior::shape_error);
  REQUIRE_THROWS_AS(fm(other), flowprior::shape_error);
  // Values edited by hand: times outside [0, 1] and non-finite times are the loss's own errors
  // (named 'draws.t'), non-finite noise makes the loss non-finite.
  for (const double bad : {-0.25, 1.5}) {
    other = good;
    other.t[5] = bad;
    REQUIRE_THROWS_AS(align(other), flowprior::value_error);
    REQUIRE_THROWS_WITH(fm(other), Catch::Contains("flow_matching_loss") &&
                                       Catch::Contains("'draws.t'") && Catch::Contains("index 5"));
  }
  for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    other = good;
    other.t[6] = bad;
    REQUIRE_THROWS_AS(align(other), flowprior::numeric_error);
    REQUIRE_THROWS_WITH(align(other), Catch::Contains("alignment_loss") &&
                                          Catch::Contains("'draws.t'") &&
                                          Catch::Contains("(6, 0)"));
    REQUIRE_THROWS_AS(fm(other), flowprior::numeric_error);
    other = good;
    other.eps[7] = bad;
    REQUIRE_THROWS_AS(align(other), flowprior::numeric_error);
    REQUIRE_THROWS_AS(fm(other), flowprior::numeric_error);
  }
  // Nothing was accumulated by the refused calls.
  REQUIRE(d_y == d_y_before);
  REQUIRE(d_p == d_p_before);
}

TEST_CASE("reversed view: the losses fold the sign and agree with the negated field",
          "[loss][convention]") {
  // The losses evaluate a reversed prior without negating v or copying d_v (prior.hpp,
  // forward_field): compare with the loss written out through the public Prior calls, which
  // negate explicitly.
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const bool detach = GENERATE(false, true);
  CAPTURE(flowprior::to_string(conv), detach);
  Rng rng(123);
  Net net(small_adaln(3));
  fpt::randomize_field(net, rng);
  const Prior<Net> prior = Prior<Net>(net, flowprior::flipped(conv)).as(conv);
  REQUIRE(prior.reversed());
  REQUIRE(prior.sign() == -1.0);
  const Index N = 4, K = 3, d = 3, M = N * K;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, conv, N, d, K, loss::TimeSampler::uniform(), rng);
  const double weight = 0.7;
  Mat xt(d, M), v(d, M), dv(d, M), jt = Mat::Zero(d, M), g_ref = Mat::Zero(d, N);
  for (Index col = 0; col < M; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    for (Index i = 0; i < d; ++i) xt(i, col) = pc.a * y(i, col / K) + pc.b * draws.noise()(i, col);
  }
  Prior<Net>::Workspace pws;
  prior.forward(xt, draws.times(), v, pws);  // negates in place
  double l_ref = 0;
  const double scale = 2.0 * weight / double(N * K * d);
  for (Index col = 0; col < M; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    for (Index i = 0; i < d; ++i) {
      const double r = v(i, col) - (pc.c * y(i, col / K) + pc.e * draws.noise()(i, col));
      l_ref += r * r;
      dv(i, col) = scale * r;
    }
  }
  l_ref *= weight / (double(K) * double(d) * double(N));
  if (!detach) prior.vjp_x(pws, dv, jt);  // folds the sign into the accumulation
  for (Index col = 0; col < M; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    g_ref.col(col / K) += -pc.c * dv.col(col) + pc.a * jt.col(col);
  }
  loss::LossWorkspace<Net> ws;
  Mat g = Mat::Zero(d, N);
  const double l = loss::alignment_loss(prior, conv, y, draws,
                                        {loss::Reduction::Mean, weight, detach}, ws, {}, g);
  REQUIRE(std::abs(l - l_ref) <= 1e-15 * l_ref);
  REQUIRE((g - g_ref).cwiseAbs().maxCoeff() <= 1e-15 * g_ref.cwiseAbs().maxCoeff());
  // Flow matching: the reversed backward (copy of -d_v) against the folded one in the loss.
  Vec p_ref = Vec::Zero(net.num_params()), p = Vec::Zero(net.num_params());
  prior.forward(xt, draws.times(), v, pws);
  const double fscale = 2.0 / double(N * K * d);
  for (Index col = 0; col < M; ++col) {
    const auto pc = flowprior::path_coefficients(conv, draws.t[std::size_t(col)]);
    for (Index i = 0; i < d; ++i)
      dv(i, col) = fscale * (v(i, col) - (pc.c * y(i, col / K) + pc.e * draws.noise()(i, col)));
  }
  prior.backward(pws, dv, Mat(), p_ref);
  loss::flow_matching_loss(prior, conv, y, draws, loss::Reduction::Mean, ws, p);
  REQUIRE((p - p_ref).cwiseAbs().maxCoeff() <= 1e-15 * p_ref.cwiseAbs().maxCoeff());
}

TEST_CASE("reversed view: every call equals the field at 1 - t with the sign flipped",
          "[loss][convention][grad]") {
  const Convention trained = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(trained));
  Rng rng(124);
  Net net(small_adaln(3));
  fpt::randomize_field(net, rng);
  const Prior<Net> plain(net, trained);
  const Prior<Net> rev = plain.as(flowprior::flipped(trained));
  const Index B = 6, d = 3;
  auto in = fpt::make_inputs(d, B, 0, rng);
  const Vec t_field = Vec::Ones(B) - in.t;
  Prior<Net>::Workspace ws, wf;
  Mat v(d, B), vf(d, B);
  rev.forward(in.x, in.t, v, ws);
  plain.forward(in.x, t_field, vf, wf);
  REQUIRE(v == -vf);
  rev.forward_field(in.x, in.t, v, ws);
  REQUIRE(v == vf);
  REQUIRE(rev.field_time(0.25) == 0.75);
  REQUIRE(plain.field_time(0.25) == 0.25);
  // vjp_x accumulates -J^T u into a non-zero d_x, exactly as the field with -u does.
  const Mat u = fpt::random_mat(d, B, rng), start = fpt::random_mat(d, B, rng), neg_u = -u;
  Mat dx = start, dxf = start;
  rev.vjp_x(ws, u, dx);
  plain.vjp_x(wf, neg_u, dxf);
  REQUIRE(dx == dxf);
  // backward: parameters and inputs, accumulated.
  Vec dp = Vec::Ones(net.num_params()), dpf = Vec::Ones(net.num_params());
  dx = start;
  dxf = start;
  rev.backward(ws, u, dx, dp);
  plain.backward(wf, neg_u, dxf, dpf);
  REQUIRE(dx == dxf);
  REQUIRE(dp == dpf);
  // jvp_x and divergence.
  const Mat w = fpt::random_mat(d, 2 * B, rng);
  Mat jw(d, 2 * B), jwf(d, 2 * B);
  rev.jvp_x(ws, w, jw, 2);
  plain.jvp_x(wf, w, jwf, 2);
  REQUIRE(jw == -jwf);
  Vec div(B), divf(B);
  rev.divergence(in.x, in.t, v, div, ws);
  plain.divergence(in.x, t_field, vf, divf, wf);
  REQUIRE(v == -vf);
  REQUIRE(div == -divf);
  // Finite differences of L = <u, v'(x, t)> for the reversed vjp_x and backward.
  auto L = [&] {
    Prior<Net>::Workspace w2;
    Mat vv(d, B);
    rev.forward(in.x, in.t, vv, w2);
    return fpt::dot(u, vv);
  };
  rev.forward(in.x, in.t, v, ws);
  Mat gx = Mat::Zero(d, B), gx2 = Mat::Zero(d, B);
  Vec gp = Vec::Zero(net.num_params());
  rev.vjp_x(ws, u, gx);
  rev.backward(ws, u, gx2, gp);
  const auto fd_x = fpt::fd_gradient(L, in.x.data(), in.x.size());
  fpt::require_close("d_x (reversed vjp_x)", gx.data(), fd_x, 1e-6);
  fpt::require_close("d_x (reversed backward)", gx2.data(), fd_x, 1e-6);
  auto p = net.parameters();
  const auto fd_p = fpt::fd_gradient(L, p.data, p.size);
  for (const auto& t : net.layout().tensors())
    fpt::require_close(t.name, gp.data() + t.offset, fd_p.data() + t.offset, t.size(), 1e-6);
  // A refused VJP (no forward on this workspace) leaves the caller's d_x as it was.
  Prior<Net>::Workspace fresh;
  dx = start;
  REQUIRE_THROWS_AS(rev.vjp_x(fresh, u, dx), flowprior::error);
  REQUIRE(dx == start);
}

TEST_CASE("context: one context runs the loss, the trainer's and the aligner's steps",
          "[loss][context]") {
  using Context = flowprior::CpuBackend::Context;
  // A field on the shell: the loss runs on its field workspace's context, and a lent context
  // reaches the field workspace.
  loss::LossWorkspace<Net> ws;
  REQUIRE(&ws.context() == &ws.prior.field.context());
  Context mine;
  ws.set_context(&mine);
  REQUIRE(&ws.context() == &mine);
  REQUIRE(&ws.prior.field.context() == &mine);
  ws.set_context(nullptr);
  REQUIRE(&ws.context() == &ws.prior.field.context());
  REQUIRE(&ws.context() != &mine);
  // A field whose workspace has no context: the loss workspace's own, and a lent one.
  loss::LossWorkspace<GmmField> gws;
  Context& own = gws.context();
  gws.set_context(&mine);
  REQUIRE(&gws.context() == &mine);
  gws.set_context(nullptr);
  REQUIRE(&gws.context() == &own);
  // The trainer lends its context to Adam and the EMA for a step only: afterwards they are on
  // their own again, and the loss keeps the caller's.
  Rng rng(125);
  Net net(small_adaln(2));
  fpt::randomize_field(net, rng);
  flowprior::train::TrainerConfig tc;
  tc.batch = 4;
  tc.K = 2;
  flowprior::train::FlowMatchingTrainer<Net> trainer(net, Convention::Code, tc);
  trainer.set_context(&mine);
  REQUIRE(&trainer.context() == &mine);
  const Mat targets = fpt::random_mat(2, 8, rng);
  trainer.step(targets, rng);
  REQUIRE(trainer.steps() == 1);
  REQUIRE(&trainer.optimizer().context() != &mine);
  REQUIRE(&trainer.ema().context() != &mine);
  REQUIRE(&trainer.context() == &mine);
  // The aligner likewise.
  const Prior<Net> prior(net, Convention::Code);
  flowprior::train::LatentAligner<Net> aligner(prior, Convention::Code, 3,
                                               flowprior::train::AlignConfig{});
  aligner.set_context(&mine);
  Mat y = fpt::random_mat(2, 3, rng);
  aligner.step(y, rng);
  REQUIRE(aligner.steps() == 1);
  REQUIRE(&aligner.context() == &mine);
}
