// Training and sampling of the MAR generator (train/mar.hpp, docs/math/mar.md): the whole loss's
// parameter gradient (backbone + head) against central differences in double at random
// non-degenerate parameters with a fixed mask and fixed draws, the loss against its formula
// evaluated token by token, masked inputs not reaching the loss, the mask law and the sampling
// schedule, the sampler (every token filled, deterministic, S = 1 against a hand-run of one
// step), the refusal of a non-finite step, a tiny run that learns per-position statistics, and
// typed errors.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/mar.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace optim = flowprior::optim;
namespace train = flowprior::train;
namespace io = flowprior::io;
using Catch::Matchers::Contains;

namespace {

nn::MarConfig tiny() {
  nn::MarConfig c;
  c.tokens = 4;
  c.token_dim = 3;
  c.width = 8;
  c.depth = 1;
  c.heads = 2;
  c.mlp_ratio = 2.0;
  c.head_width = 8;
  c.head_depth = 1;
  c.time_freq_dim = 8;
  return c;
}

using Model = nn::MarGenerator<double>;

// Random non-degenerate parameters: LayerNorm gains in [0.6, 1.4], weights of variance ~ 1 /
// fan_in (the head's zero-initialised adaLN and final layers included), the rest in [-0.3, 0.3].
void randomise(Model& m, Rng& rng) {
  double* h = m.parameters().data;
  for (const auto& t : m.layout().tensors()) {
    double* q = h + t.offset;
    const std::string& n = t.name;
    const bool norm = n.find("norm") != std::string::npos || n.find("_ln") != std::string::npos;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    if (norm && weight) {
      fpt::fill_uniform(q, t.size(), rng, 0.6, 1.4);
    } else if (weight && t.shape.size() == 2) {
      const double b = std::sqrt(3.0 / double(t.shape[1]));
      fpt::fill_uniform(q, t.size(), rng, -b, b);
    } else {
      fpt::fill_uniform(q, t.size(), rng, -0.3, 0.3);
    }
  }
}

// Per-tensor gradient check. A tensor whose true gradient is zero (k_norm.bias with qk_norm:
// softmax ignores a constant added to a row of scores) has a numeric gradient of rounding noise
// only; there both must be below 1e-8 instead of close in relative terms.
void close_or_zero(const std::string& name, const double* a, const double* n, Index size) {
  double na = 0, nn = 0;
  for (Index i = 0; i < size; ++i) {
    na += a[i] * a[i];
    nn += n[i] * n[i];
  }
  if (std::sqrt(nn) < 1e-8) {
    INFO(name << ": numeric gradient ~ 0, analytic norm " << std::sqrt(na));
    CHECK(std::sqrt(na) < 1e-8);
    return;
  }
  fpt::require_close(name, a, n, size, 1e-6);
}

ConstVectorView<std::uint8_t> view(const std::vector<std::uint8_t>& m) {
  return {m.data(), Index(m.size())};
}

// Fixed draws for M masked tokens, K each: t in [0.02, 0.98], eps ~ U[-1.5, 1.5].
loss::FlowDraws<double> fixed_draws(Convention conv, Index M, Index d, Index K, Rng& rng) {
  const Vec t = fpt::random_vec(M * K, rng, 0.02, 0.98);
  const Mat eps = fpt::random_mat(d, M * K, rng, -1.5, 1.5);
  return loss::FlowDraws<double>(conv, M, d, K, t, eps);
}

}  // namespace

TEST_CASE("mar: the loss's parameter gradient against central differences", "[mar][grad]") {
  const Convention conv = GENERATE(Convention::Code, Convention::Paper);
  CAPTURE(flowprior::to_string(conv));
  Model m(tiny());
  Rng rng(41);
  randomise(m, rng);
  const Index B = 2, T = 4, BT = B * T, d = 3, K = 2, P = m.num_params();
  Mat x = fpt::random_mat(d, BT, rng, -1.5, 1.5);
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0, 1, 0, 0};
  const Index M = 4;
  const loss::FlowDraws<double> draws = fixed_draws(conv, M, d, K, rng);
  train::MarScratch<double> ws;
  double* p = m.parameters().data;
  auto L = [&] { return train::mar_loss(m, conv, x, view(mask), draws, ws); };
  Vec dp = Vec::Constant(P, 0.25);  // accumulates onto what is there
  const double value = train::mar_loss(m, conv, x, view(mask), draws, ws, dp);
  REQUIRE(value == L());
  dp.array() -= 0.25;
  const std::vector<double> num = fpt::fd_gradient(L, p, P);
  for (const auto& t : m.layout().tensors())
    close_or_zero(t.name, dp.data() + t.offset, num.data() + t.offset, t.size());
  // Both halves get a gradient.
  REQUIRE(dp.head(m.head_offset()).norm() > 0);
  REQUIRE(dp.tail(P - m.head_offset()).norm() > 0);

  // The value against the formula token by token: c from the backbone, the head on one column.
  Mat c(8, BT);
  Model::Workspace mws;
  m.forward(x, view(mask), c, mws);
  Model::Head::Workspace hws;
  double sum = 0;
  Index mi = 0;
  for (Index j = 0; j < BT; ++j) {
    if (!mask[std::size_t(j)]) continue;
    for (Index k = 0; k < K; ++k) {
      const Index col = mi * K + k;
      const double t = draws.t[std::size_t(col)];
      const Eigen::Map<const Mat> eps(draws.eps.data(), d, M * K);
      const auto pc = flowprior::path_coefficients(conv, t);
      Mat xt = pc.a * x.col(j) + pc.b * eps.col(col);
      const Mat u = pc.c * x.col(j) + pc.e * eps.col(col);
      Mat v(d, 1);
      Vec tv = Vec::Constant(1, t);
      const Mat cj = c.col(j);
      m.head().forward(xt, tv, v, hws, cj);
      sum += (v - u).squaredNorm();
    }
    ++mi;
  }
  REQUIRE(value == Approx(sum / double(M * K * d)).epsilon(1e-12));
}

TEST_CASE("mar: masked tokens' inputs do not reach the loss", "[mar]") {
  Model m(tiny());
  Rng rng(42);
  randomise(m, rng);
  const Index BT = 8, d = 3;
  Mat x = fpt::random_mat(d, BT, rng);
  const std::vector<std::uint8_t> mask = {0, 1, 1, 0, 0, 0, 1, 0};
  const loss::FlowDraws<double> draws = fixed_draws(Convention::Code, 3, d, 4, rng);
  train::MarScratch<double> ws;
  const double l0 = train::mar_loss(m, Convention::Code, x, view(mask), draws, ws);
  // The head's targets are the masked tokens themselves, so the loss depends on x there only
  // through x_t and u: replace the backbone's view of them by garbage and nothing changes.
  Mat c0(8, BT), c1(8, BT);
  Model::Workspace mws;
  m.forward(x, view(mask), c0, mws);
  Mat x1 = x;
  x1.col(1).setConstant(std::nan(""));
  x1.col(6).setConstant(-1e6);
  m.forward(x1, view(mask), c1, mws);
  REQUIRE(c0 == c1);
  // Changing an unmasked token changes the masked tokens' conditioning, hence the loss; an
  // unmasked token is not a target.
  Mat x2 = x;
  x2.col(0).array() += 0.5;
  const double l2 = train::mar_loss(m, Convention::Code, x2, view(mask), draws, ws);
  REQUIRE(l2 != l0);
}

TEST_CASE("mar: mask ratios, masked counts and the sampling schedule", "[mar]") {
  train::MarMaskOptions opt;
  Rng rng(7);
  double mean = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double r = opt.draw(rng);
    REQUIRE(r >= 0.7);
    REQUIRE(r <= 1.0);
    mean += r / n;
  }
  // Truncated normal N(1, 0.25^2) on [0.7, 1]: E r = 1 - 0.25 (phi(-1.2) - phi(0)) / (Phi(0) -
  // Phi(-1.2)) = 0.8670; the standard error of the mean is about 0.0006.
  REQUIRE(mean == Approx(0.8670).margin(0.003));
  REQUIRE(train::mar_masked_count(16, 0.7) == 12);  // ceil(11.2)
  REQUIRE(train::mar_masked_count(16, 1.0) == 16);
  REQUIRE(train::mar_masked_count(4, 0.01) == 1);
  std::vector<std::uint8_t> mask;
  std::vector<Index> order;
  const Index M = train::draw_mar_mask(5, 16, opt, rng, mask, order);
  REQUIRE(mask.size() == 80u);
  Index total = 0;
  for (Index b = 0; b < 5; ++b) {
    Index cnt = 0;
    for (Index j = 0; j < 16; ++j) cnt += mask[std::size_t(b * 16 + j)];
    REQUIRE(cnt >= 12);
    REQUIRE(cnt <= 16);
    total += cnt;
  }
  REQUIRE(total == M);
  // The cosine schedule: n_s = floor(T cos(pi/2 (s+1)/S)), at least one revealed per step.
  REQUIRE(train::mar_schedule(16, 4) == std::vector<Index>{14, 11, 6, 0});
  REQUIRE(train::mar_schedule(4, 4) == std::vector<Index>{3, 2, 1, 0});
  REQUIRE(train::mar_schedule(4, 1) == std::vector<Index>{0});
  for (Index S = 1; S <= 32; ++S) {
    const std::vector<Index> s = train::mar_schedule(32, S);
    Index prev = 32;
    for (Index v : s) {
      REQUIRE(v < prev);
      prev = v;
    }
    REQUIRE(s.back() == 0);
  }
  REQUIRE_THROWS_AS(train::mar_schedule(4, 5), flowprior::config_error);
  REQUIRE_THROWS_AS(train::mar_schedule(4, 0), flowprior::config_error);
}

TEST_CASE("mar: sampling fills every token, is deterministic, S = 1 is one step", "[mar]") {
  Model m(tiny());
  Rng rng(43);
  randomise(m, rng);
  const Index B = 3, T = 4, BT = B * T, d = 3;
  train::MarSampleOptions opt;
  opt.steps = 2;
  opt.ode_steps = 5;
  Mat a(d, BT), b(d, BT), c(d, BT);
  Rng r1(100), r2(100), r3(101);
  train::mar_sample(m, Convention::Code, B, opt, r1, MatrixView<double>(a));
  train::MarScratch<double> ws;
  train::mar_sample(m, Convention::Code, B, opt, r2, MatrixView<double>(b), ws);
  train::mar_sample(m, Convention::Code, B, opt, r3, MatrixView<double>(c), ws);
  REQUIRE(a.allFinite());
  REQUIRE(a == b);
  REQUIRE(a != c);
  for (Index j = 0; j < BT; ++j) REQUIRE(a.col(j).norm() > 0);
  // The generator advanced identically.
  REQUIRE(r1() == r2());

  // S = 1 by hand: orders, all masked, one backbone run on zeros, one noise draw, one ODE
  // solve per token, in the order's column order.
  for (Convention conv : {Convention::Code, Convention::Paper}) {
    opt.steps = 1;
    opt.temperature = 0.7;
    opt.method = flowprior::ode::Method::Euler;
    Rng rs(200), rh(200);
    Mat got(d, BT);
    train::mar_sample(m, conv, B, opt, rs, MatrixView<double>(got), ws);
    std::vector<Index> ord(static_cast<std::size_t>(BT));
    for (Index i = 0; i < B; ++i) train::draw_mar_order(T, rh, ord.data() + i * T);
    Mat cc(8, BT), zero = Mat::Zero(d, BT);
    std::vector<std::uint8_t> all(BT, 1);
    Model::Workspace mws;
    m.forward(zero, view(all), cc, mws);
    Mat z(d, BT);
    flowprior::CpuBackend::Context ctx;
    flowprior::CpuBackend::gaussian_noise(ctx, rh(), 0, MatrixView<double>(z), 0);
    z *= 0.7;
    Mat cond(8, BT);
    for (Index p = 0; p < BT; ++p) cond.col(p) = cc.col((p / T) * T + ord[std::size_t(p)]);
    Model::Head::Workspace hws;
    const double t0 = flowprior::noise_time(conv), t1 = flowprior::data_time(conv);
    const double h = (t1 - t0) / 5.0;
    for (int s = 0; s < 5; ++s) {  // Euler by hand
      const double t = t0 + s * h, tn = s == 4 ? t1 : t + h;
      Vec tv = Vec::Constant(BT, t);
      Mat v(d, BT);
      m.head().forward(z, tv, v, hws, cond);
      z += (tn - t) * v;
    }
    Mat want(d, BT);
    for (Index p = 0; p < BT; ++p) want.col((p / T) * T + ord[std::size_t(p)]) = z.col(p);
    CAPTURE(flowprior::to_string(conv));
    REQUIRE((got - want).norm() <= 1e-12 * want.norm());
  }
}

TEST_CASE("mar: a step with a non-finite loss is refused and changes nothing", "[mar]") {
  Model m(tiny());
  Rng rng(44);
  m.init(rng);
  train::MarTrainerConfig cfg;
  cfg.schedule = optim::LrSchedule::constant(1e-3);
  train::MarTrainer<double> tr(m, Convention::Code, cfg);
  Mat x = fpt::random_mat(3, 8, rng);
  const train::MarStats st = tr.step(x, rng);
  REQUIRE(st.step == 1);
  REQUIRE(std::isfinite(st.loss));
  REQUIRE(st.lr == 1e-3);
  Index cnt = 0;
  for (auto v : tr.last_mask()) cnt += v;
  REQUIRE(st.masked == cnt);
  REQUIRE(cnt >= 2 * 3);  // ceil(4 r) >= 3 per image for r >= 0.7
  // A NaN parameter of the head: the loss is NaN, the step is refused.
  const Index P = m.num_params();
  m.parameters()[P - 1] = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> before(m.parameters().data, m.parameters().data + P);
  const Vec ema_before = Eigen::Map<const Vec>(tr.ema().weights_view().data, P);
  REQUIRE_THROWS_AS(tr.step(x, rng), flowprior::numeric_error);
  REQUIRE_THROWS_WITH(tr.step(x, rng), Contains("diverged at step 2"));
  REQUIRE(std::memcmp(before.data(), m.parameters().data, sizeof(double) * P) == 0);
  REQUIRE(Eigen::Map<const Vec>(tr.ema().weights_view().data, P) == ema_before);
  REQUIRE(tr.steps() == 1);
  // Bad data is named as such, not as divergence.
  Mat xn = x;
  xn(0, 5) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(tr.step(xn, rng), Contains("'x'") && !Contains("diverged"));
}

TEST_CASE("mar: a tiny run learns per-position means and spreads", "[mar][learn]") {
  // Data: T = 4 tokens of d = 2; token j ~ N(mu_j, 0.3^2 I), mu_j = ((j - 1.5), -0.5 (j - 1.5)):
  // the head must read the position from c to get the mean right. 800 steps of 16 images with
  // a warmup + cosine rate (1e-2 -> 1e-3) take about a second at -O1.
  nn::MarConfig cfg;
  cfg.tokens = 4;
  cfg.token_dim = 2;
  cfg.width = 16;
  cfg.depth = 1;
  cfg.heads = 2;
  cfg.mlp_ratio = 2.0;
  cfg.head_width = 16;
  cfg.head_depth = 1;
  cfg.time_freq_dim = 16;
  Model m(cfg);
  Rng rng(45);
  m.init(rng);
  train::MarTrainerConfig tc;
  tc.adam.weight_decay = 0.0;
  const int steps = 800;
  tc.schedule = optim::LrSchedule::cosine(1e-2, 50, steps, 1e-3);
  tc.clip_norm = 1.0;
  tc.ema_decay = 0.0;
  train::MarTrainer<double> tr(m, Convention::Code, tc);
  const Index B = 16, T = 4, d = 2;
  auto mu = [](Index j, Index i) { return i == 0 ? double(j) - 1.5 : -0.5 * (double(j) - 1.5); };
  const double sigma = 0.3;
  Mat x(d, B * T);
  double first = 0, last = 0;
  for (int s = 0; s < steps; ++s) {
    for (Index col = 0; col < B * T; ++col)
      for (Index i = 0; i < d; ++i) x(i, col) = mu(col % T, i) + sigma * flowprior::normal01(rng);
    const double l = tr.step(x, rng).loss;
    if (s < 20) first += l / 20;
    if (s >= steps - 20) last += l / 20;
  }
  CAPTURE(first, last);
  REQUIRE(last < 0.8 * first);
  const Index N = 256;
  Mat out(d, N * T);
  train::MarSampleOptions so;
  so.steps = 4;
  so.ode_steps = 20;
  train::mar_sample(m, Convention::Code, N, so, rng, MatrixView<double>(out));
  // Per-position means within 0.15 of the data's: adjacent positions' means are 0.5 apart in
  // coordinate 0, a model that ignores the position would be off by up to 1.5, and the sampling
  // error of a mean of 256 draws of std 0.3 is 0.02 (this run: 0.11 at worst; other seeds
  // 0.03-0.15 after 800 steps). Standard deviations within [0.2, 0.45] around the data's 0.3 (a
  // model that ignores positions gives about 1.1 in coordinate 0; this run: 0.24-0.32).
  for (Index j = 0; j < T; ++j)
    for (Index i = 0; i < d; ++i) {
      double s1 = 0, s2 = 0;
      for (Index b = 0; b < N; ++b) {
        const double v = out(i, b * T + j);
        s1 += v;
        s2 += v * v;
      }
      const double mean = s1 / N, sd = std::sqrt(std::max(0.0, s2 / N - mean * mean));
      CAPTURE(j, i, mean, sd);
      CHECK(std::abs(mean - mu(j, i)) < 0.15);
      CHECK(sd > 0.2);
      CHECK(sd < 0.45);
    }
}

TEST_CASE("mar: bad shapes and options are typed errors", "[mar]") {
  using flowprior::config_error;
  using flowprior::shape_error;
  Model m(tiny());
  Rng rng(46);
  m.init(rng);
  // Trainer options.
  auto bad_cfg = [&](auto edit, const char* what) {
    train::MarTrainerConfig c;
    edit(c);
    REQUIRE_THROWS_AS(train::MarTrainer<double>(m, Convention::Code, c), config_error);
    REQUIRE_THROWS_WITH(train::MarTrainer<double>(m, Convention::Code, c), Contains(what));
  };
  bad_cfg([](train::MarTrainerConfig& c) { c.K = 0; }, "K");
  bad_cfg([](train::MarTrainerConfig& c) { c.mask.mask_ratio_min = 0; }, "mask_ratio_min");
  bad_cfg([](train::MarTrainerConfig& c) { c.mask.std = 0; }, "std");
  bad_cfg([](train::MarTrainerConfig& c) { c.mask.mean = std::nan(""); }, "mean");
  bad_cfg([](train::MarTrainerConfig& c) { c.mask.mean = 10; }, "mass");
  bad_cfg([](train::MarTrainerConfig& c) { c.clip_norm = 0; }, "clip_norm");
  bad_cfg([](train::MarTrainerConfig& c) { c.ema_decay = 1; }, "ema_decay");
  bad_cfg([](train::MarTrainerConfig& c) { c.sampler = loss::TimeSampler::grid(); }, "grid");
  REQUIRE_THROWS_AS(train::MarTrainer<double>(m, static_cast<Convention>(7), {}), config_error);
  train::MarTrainer<double> tr(m, Convention::Code, {});
  REQUIRE_THROWS_WITH(tr.step(Mat(3, 6), rng), Contains("'x'") && Contains("(3, 6)"));
  REQUIRE_THROWS_AS(tr.step(Mat(2, 8), rng), shape_error);

  // mar_loss.
  Mat x = fpt::random_mat(3, 8, rng);
  const std::vector<std::uint8_t> mask = {1, 0, 0, 0, 0, 1, 0, 0};
  train::MarScratch<double> ws;
  const auto draws = fixed_draws(Convention::Code, 2, 3, 2, rng);
  REQUIRE_NOTHROW(train::mar_loss(m, Convention::Code, x, view(mask), draws, ws));
  REQUIRE_THROWS_AS(train::mar_loss(m, Convention::Paper, x, view(mask), draws, ws),
                    flowprior::convention_error);
  REQUIRE_THROWS_WITH(train::mar_loss(m, Convention::Code, Mat(3, 5), view(mask), draws, ws),
                      Contains("'x'"));
  REQUIRE_THROWS_WITH(
      train::mar_loss(m, Convention::Code, x, view(std::vector<std::uint8_t>(4, 1)), draws, ws),
      Contains("'mask'"));
  REQUIRE_THROWS_AS(
      train::mar_loss(m, Convention::Code, x, view(std::vector<std::uint8_t>(8, 0)), draws, ws),
      flowprior::value_error);
  const auto draws3 = fixed_draws(Convention::Code, 3, 3, 2, rng);
  REQUIRE_THROWS_WITH(train::mar_loss(m, Convention::Code, x, view(mask), draws3, ws),
                      Contains("'draws'") && Contains("3 rows") && Contains("expected 2"));
  const auto draws_d = fixed_draws(Convention::Code, 2, 2, 2, rng);
  REQUIRE_THROWS_WITH(train::mar_loss(m, Convention::Code, x, view(mask), draws_d, ws),
                      Contains("dim 2"));
  Vec dp(5);
  REQUIRE_THROWS_WITH(train::mar_loss(m, Convention::Code, x, view(mask), draws, ws, dp),
                      Contains("'d_params'"));

  // Sampling options and shapes.
  auto bad_sample = [&](auto edit, const char* what) {
    train::MarSampleOptions o;
    o.steps = 2;
    edit(o);
    Mat out(3, 8);
    REQUIRE_THROWS_AS(train::mar_sample(m, Convention::Code, 2, o, rng, MatrixView<double>(out)),
                      config_error);
    REQUIRE_THROWS_WITH(train::mar_sample(m, Convention::Code, 2, o, rng, MatrixView<double>(out)),
                        Contains(what));
  };
  bad_sample([](train::MarSampleOptions& o) { o.steps = 0; }, "steps");
  bad_sample([](train::MarSampleOptions& o) { o.steps = 5; }, "tokens = 4");
  bad_sample([](train::MarSampleOptions& o) { o.method = flowprior::ode::Method::Dopri5; },
             "fixed-step");
  bad_sample([](train::MarSampleOptions& o) { o.ode_steps = 0; }, "ode_steps");
  bad_sample([](train::MarSampleOptions& o) { o.temperature = -1; }, "temperature");
  bad_sample([](train::MarSampleOptions& o) { o.temperature = std::nan(""); }, "temperature");
  train::MarSampleOptions o;
  o.steps = 2;
  Mat out(3, 6);
  REQUIRE_THROWS_WITH(train::mar_sample(m, Convention::Code, 2, o, rng, MatrixView<double>(out)),
                      Contains("'out'"));
  REQUIRE_THROWS_AS(train::mar_sample(m, Convention::Code, 0, o, rng, MatrixView<double>(out)),
                    config_error);
}

TEST_CASE("mar: a checkpoint resumes bit for bit and other kinds are refused", "[mar][io]") {
  train::MarTrainerConfig cfg;
  cfg.schedule = optim::LrSchedule::cosine(3e-3, 2, 8, 1e-4);
  cfg.ema_decay = 0.9;
  auto batch = [](int s) {
    Rng r(1000 + std::uint64_t(s));
    return fpt::random_mat(3, s % 2 ? 12 : 8, r);  // two batch sizes
  };
  const int N = 6;
  Model full_m(tiny());
  Rng init(3);
  full_m.init(init);
  train::MarTrainer<double> full(full_m, Convention::Code, cfg);
  Rng rf(9);
  for (int s = 0; s < N; ++s) full.step(batch(s), rf);

  const std::string path = fpt::temp_path("mar_resume.safetensors");
  {
    Model m(tiny());
    Rng i2(3);
    m.init(i2);
    train::MarTrainer<double> first(m, Convention::Code, cfg);
    Rng r(9);
    for (int s = 0; s < N / 2; ++s) first.step(batch(s), r);
    train::save_checkpoint(path, first, r, {{"note", "half"}});
  }
  Model m(tiny());
  Rng i3(4);
  m.init(i3);  // other weights until loaded
  train::MarTrainer<double> resumed(m, Convention::Code, cfg);
  Rng rng(77);
  train::load_checkpoint(path, resumed, rng);
  REQUIRE(resumed.steps() == N / 2);
  for (int s = N / 2; s < N; ++s) resumed.step(batch(s), rng);
  REQUIRE(std::equal(full_m.parameters().data, full_m.parameters().data + m.num_params(),
                     m.parameters().data));
  REQUIRE(full.ema().weights() == resumed.ema().weights());
  const auto st = io::Safetensors::read(path);
  CHECK(st.metadata().at("flowprior.format") == "mar-checkpoint-1");
  CHECK(st.metadata().at("model.config.head_width") == "8");
  CHECK(st.metadata().at("user.note") == "half");
  CHECK(st.metadata().at("convention") == "code");
  CHECK(st.find("ema.diffloss.net.final_layer.linear.weight") != nullptr);
  // Another convention, model or trainer option is refused by name, nothing changes.
  const std::vector<double> before(m.parameters().data, m.parameters().data + m.num_params());
  {
    train::MarTrainer<double> t2(m, Convention::Paper, cfg);
    CHECK_THROWS_WITH(train::load_checkpoint(path, t2, rng), Contains("convention"));
  }
  {
    train::MarTrainerConfig c2 = cfg;
    c2.mask.mask_ratio_min = 0.5;
    train::MarTrainer<double> t2(m, Convention::Code, c2);
    CHECK_THROWS_WITH(train::load_checkpoint(path, t2, rng), Contains("mask_ratio_min"));
  }
  {
    nn::MarConfig c = tiny();
    c.head_depth = 2;
    Model other(c);
    train::MarTrainer<double> t2(other, Convention::Code, cfg);
    CHECK_THROWS_AS(train::load_checkpoint(path, t2, rng), flowprior::io_error);
  }
  REQUIRE(std::equal(before.begin(), before.end(), m.parameters().data));
  // A reconstruction checkpoint is refused by kind.
  {
    nn::TokenizerConfig tcfg;
    tcfg.image_size = 4;
    tcfg.channels = 1;
    tcfg.patch = 2;
    tcfg.width = 8;
    tcfg.heads = 2;
    tcfg.depth = 1;
    tcfg.latent_tokens = 2;
    tcfg.latent_dim = 2;
    nn::TokenizerAE<double> ae(tcfg);
    Rng ir(1);
    ae.init(ir);
    train::ReconstructionTrainer<nn::TokenizerAE<double>> rt(ae, {});
    const std::string p2 = fpt::temp_path("mar_other.safetensors");
    train::save_checkpoint(p2, rt, Rng(1));
    CHECK_THROWS_WITH(train::load_checkpoint(p2, resumed, rng),
                      Contains("ReconstructionTrainer") && Contains("expects 'mar-checkpoint-1'"));
    std::remove(p2.c_str());
  }
  std::remove(path.c_str());
}

// The gradient's reports for the overlapped data-parallel sum (nn/gradient_ready.hpp): the
// head's, shifted to its slice at the end of the layout, then the backbone's, decreasing to 0,
// each reported suffix already final; and grad_weight scales the gradient, not the loss.
TEST_CASE("mar: the gradient's reports are final when made; grad_weight scales it", "[mar]") {
  struct Recorder final : nn::GradientReady {
    const Vec* g = nullptr;
    std::vector<Index> los;
    std::vector<Vec> snapshots;
    void ready(Index lo) override {
      los.push_back(lo);
      snapshots.push_back(*g);
    }
  };
  Model m(tiny());
  Rng rng(43);
  randomise(m, rng);
  const Index B = 2, T = 4, BT = B * T, d = 3, K = 2, P = m.num_params();
  Mat x = fpt::random_mat(d, BT, rng, -1.5, 1.5);
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0, 1, 0, 0};
  const loss::FlowDraws<double> draws = fixed_draws(Convention::Code, 4, d, K, rng);
  train::MarScratch<double> ws;
  Vec g = Vec::Zero(P);
  Recorder rec;
  rec.g = &g;
  ws.set_gradient_ready(&rec);
  const double value = train::mar_loss(m, Convention::Code, x, view(mask), draws, ws, g);
  REQUIRE(rec.los.size() >= std::size_t(tiny().head_depth + tiny().depth + 3));
  CHECK(rec.los.front() > m.head_offset());  // the head's final layer, in its slice
  CHECK(rec.los.back() == 0);
  bool head_done = false;
  for (std::size_t k = 0; k < rec.los.size(); ++k) {
    CAPTURE(k, rec.los[k]);
    if (k > 0) CHECK(rec.los[k] < rec.los[k - 1]);
    head_done = head_done || rec.los[k] == m.head_offset();
    const Index lo = rec.los[k];
    CHECK(rec.snapshots[k].tail(P - lo) == g.tail(P - lo));
  }
  CHECK(head_done);  // the head's ready(0), shifted
  // grad_weight: the same loss, the gradient scaled.
  ws.set_gradient_ready(nullptr);
  Vec g2 = Vec::Zero(P);
  const double value2 = train::mar_loss(m, Convention::Code, x, view(mask), draws, ws, g2, 0.375);
  CHECK(value2 == value);
  CHECK((g2 - 0.375 * g).cwiseAbs().maxCoeff() <= 1e-15 * g.cwiseAbs().maxCoeff());
}
