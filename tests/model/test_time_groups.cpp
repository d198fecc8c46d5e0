// Time-grouped evaluation of the AdaLN flow head: samples that share t reuse one time embedding
// and one set of adaLN modulations. Same values and gradients as per-sample evaluation, and the
// gradients hold against finite differences in grouped mode too.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "field_checks.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Prior;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
using Net = nn::AdaLNMlp<double>;

namespace {

nn::AdaLNMlpConfig config(bool grouped) {
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 8;
  c.depth = 2;
  c.time_freq_dim = 8;
  c.group_times = grouped;
  return c;
}

// Two networks with the same parameters, one evaluating per time group, one per sample.
struct Pair {
  Net grouped{config(true)}, plain{config(false)};
  explicit Pair(Rng& rng) {
    fpt::randomize_field(grouped, rng);
    std::copy(grouped.parameters().data, grouped.parameters().data + grouped.num_params(),
              plain.parameters().data);
  }
};

Vec runs_of_t(Rng& rng) {  // 12 samples in runs of 4, 5 and 3
  Vec t(12);
  const double a = flowprior::uniform01(rng), b = flowprior::uniform01(rng),
               c = flowprior::uniform01(rng);
  t << a, a, a, a, b, b, b, b, b, c, c, c;
  return t;
}

double rel(const Mat& a, const Mat& b) { return (a - b).norm() / std::max(1e-300, b.norm()); }

}  // namespace

TEST_CASE("time groups: same forward, VJP, backward, JVP and divergence as per sample",
          "[model][groups]") {
  Rng rng(71);
  Pair nets(rng);
  const Index B = 12, d = 3;
  Mat x = fpt::random_mat(d, B, rng);
  Vec t = runs_of_t(rng);
  Net::Workspace wg, wp;
  Mat vg(d, B), vp(d, B);
  nets.grouped.forward(x, t, vg, wg);
  nets.plain.forward(x, t, vp, wp);
  REQUIRE(nets.grouped.time_groups(wg) == 3);
  REQUIRE(nets.plain.time_groups(wp) == B);
  REQUIRE(rel(vg, vp) < 1e-13);
  const Mat u = fpt::random_mat(d, B, rng);
  Mat dxg = Mat::Zero(d, B), dxp = Mat::Zero(d, B);
  Vec dpg = Vec::Zero(nets.grouped.num_params()), dpp = Vec::Zero(nets.plain.num_params());
  nets.grouped.backward(wg, u, dxg, dpg);
  nets.plain.backward(wp, u, dxp, dpp);
  REQUIRE(rel(dxg, dxp) < 1e-13);
  for (const auto& ten : nets.grouped.layout().tensors()) {
    CAPTURE(ten.name);
    const Mat a = dpg.segment(ten.offset, ten.size()), b = dpp.segment(ten.offset, ten.size());
    REQUIRE(rel(a, b) < 1e-12);
  }
  Mat ev = Mat::Zero(d, B);
  nets.grouped.vjp_x(wg, u, ev);
  REQUIRE(rel(ev, dxp) < 1e-13);
  const Mat w = fpt::random_mat(d, 2 * B, rng);
  Mat jg(d, 2 * B), jp(d, 2 * B);
  nets.grouped.jvp_x(wg, w, jg, 2);
  nets.plain.jvp_x(wp, w, jp, 2);
  REQUIRE(rel(jg, jp) < 1e-13);
  Vec divg(B), divp(B);
  nets.grouped.divergence(x, t, vg, divg, wg);
  nets.plain.divergence(x, t, vp, divp, wp);
  REQUIRE(rel(divg, divp) < 1e-12);
}

TEST_CASE("time groups: one workspace follows the runs of t from call to call", "[model][groups]") {
  // The map sample -> run is kept in the workspace and rebuilt only when the runs change: each
  // call must give what a fresh workspace gives (to rounding: the two workspaces' memory may be
  // aligned differently), whatever the previous call was. A stale map would be off by O(1).
  Rng rng(75);
  Net net(config(true));
  fpt::randomize_field(net, rng);
  const Index d = 3;
  Net::Workspace ws;
  auto check = [&](const Mat& x, const Vec& t, Index runs) {
    const Index B = x.cols();
    Net::Workspace fresh;
    Mat v(d, B), v_ref(d, B);
    net.forward(x, t, v, ws);
    net.forward(x, t, v_ref, fresh);
    REQUIRE(net.time_groups(ws) == runs);
    REQUIRE(rel(v, v_ref) < 1e-14);
    const Mat u = fpt::random_mat(d, B, rng);
    Mat dx = Mat::Zero(d, B), dx_ref = Mat::Zero(d, B);
    Vec dp = Vec::Zero(net.num_params()), dp_ref = Vec::Zero(net.num_params());
    net.backward(ws, u, dx, dp);
    net.backward(fresh, u, dx_ref, dp_ref);
    REQUIRE(rel(dx, dx_ref) < 1e-14);
    REQUIRE(rel(dp, dp_ref) < 1e-14);
  };
  const Mat x = fpt::random_mat(d, 12, rng);
  Vec t = runs_of_t(rng);  // runs of 4, 5 and 3
  check(x, t, 3);
  t = runs_of_t(rng);  // the same runs, other times: only the times change
  check(x, t, 3);
  Vec t2(12);  // three runs again, of 3, 5 and 4: the map must be rebuilt
  t2 << 0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.4, 0.4, 0.4, 0.4;
  check(x, t2, 3);
  const Vec distinct = fpt::random_vec(12, rng, 0.0, 1.0);  // ungrouped
  check(x, distinct, 12);
  check(x, t, 3);
  check(x.leftCols(8), t.head(8), 2);  // a smaller batch: runs of 4 and 4
  Vec t3(12);                          // two runs of 6: fewer runs than the map holds
  t3 << 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9;
  check(x, t3, 2);
}

TEST_CASE("time groups: gradients match finite differences in grouped mode",
          "[model][grad][groups]") {
  Rng rng(72);
  Net net(config(true));
  fpt::randomize_field(net, rng);
  fpt::FieldInputs in;
  in.x = fpt::random_mat(3, 12, rng);
  in.t = runs_of_t(rng);
  fpt::check_field_gradients(net, in, rng);
  fpt::check_jvp(net, in, rng, 2);
  fpt::check_divergence(net, in);
}

TEST_CASE("time groups: grouped draws give the same losses and gradients either way",
          "[loss][groups]") {
  Rng rng(73);
  Pair nets(rng);
  const Index N = 6, K = 4, d = 3;
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Code, N, d, K, loss::TimeSampler::stratified(), rng, false, 8);
  for (Index col = 1; col < N * K; ++col)  // runs of 8 columns share t
    REQUIRE((draws.t[std::size_t(col)] == draws.t[std::size_t(col - 1)]) == (col % 8 != 0));
  loss::LossWorkspace<Net> wg, wp;
  const loss::AlignmentOptions opt{loss::Reduction::Mean, 0.01, false};
  Mat gg = Mat::Zero(d, N), gp = Mat::Zero(d, N);
  const double lg = loss::alignment_loss(Prior<Net>(nets.grouped, Convention::Code),
                                         Convention::Code, y, draws, opt, wg, {}, gg);
  const double lp = loss::alignment_loss(Prior<Net>(nets.plain, Convention::Code), Convention::Code,
                                         y, draws, opt, wp, {}, gp);
  REQUIRE(lg == Approx(lp).epsilon(1e-13));
  REQUIRE(rel(gg, gp) < 1e-12);
  REQUIRE(nets.grouped.time_groups(wg.prior.field) == 3);
  Vec pg = Vec::Zero(nets.grouped.num_params()), pp = Vec::Zero(nets.plain.num_params());
  loss::flow_matching_loss(Prior<Net>(nets.grouped, Convention::Code), Convention::Code, y, draws,
                           loss::Reduction::Mean, wg, pg);
  loss::flow_matching_loss(Prior<Net>(nets.plain, Convention::Code), Convention::Code, y, draws,
                           loss::Reduction::Mean, wp, pp);
  REQUIRE(rel(pg, pp) < 1e-12);
  // Grouping needs a sampler with free times.
  REQUIRE_THROWS_AS(
      loss::draw(draws, Convention::Code, N, d, K, loss::TimeSampler::grid(), rng, false, 4),
      flowprior::config_error);
  REQUIRE_THROWS_AS(
      loss::draw(draws, Convention::Code, N, d, K, loss::TimeSampler::uniform(), rng, false, 0),
      flowprior::config_error);
}

TEST_CASE("time groups: stratified times cover the strata once per group", "[loss][groups]") {
  Rng rng(74);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Paper, 100, 2, 4, loss::TimeSampler::stratified(), rng, false, 8);
  std::vector<double> t;
  for (Index col = 0; col < 400; col += 8) t.push_back(draws.t[std::size_t(col)]);
  std::sort(t.begin(), t.end());
  for (std::size_t i = 0; i < t.size(); ++i) {
    REQUIRE(t[i] >= double(i) / 50.0);
    REQUIRE(t[i] < double(i + 1) / 50.0);
  }
}
