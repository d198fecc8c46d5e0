// Adam / AdamW, gradient clipping, learning-rate schedules and the weight EMA
// (include/flowprior/optim/optimizer.hpp) against values worked out by hand. Equation numbers
// refer to docs/math/optim.md. Intermediate values in the comments are rounded to 7 digits; the
// expected literals are exact to 17 digits.
#include <cmath>
#include <flowprior/optim/optimizer.hpp>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "catch.hpp"

namespace {

using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::VectorView;
namespace optim = flowprior::optim;
using Catch::Contains;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

/// Relative tolerance for a few steps of scalar arithmetic stored in S.
template <class S>
constexpr double tol() {
  return std::is_same_v<S, float> ? 1e-5 : 1e-13;
}

template <class S>
VectorView<S> view(std::vector<S>& v) {
  return {v.data(), static_cast<Index>(v.size())};
}
template <class S>
ConstVectorView<S> cview(const std::vector<S>& v) {
  return {v.data(), static_cast<Index>(v.size())};
}

template <class S>
std::vector<S> vec(std::initializer_list<double> xs) {
  std::vector<S> v;
  for (double x : xs) v.push_back(static_cast<S>(x));
  return v;
}

/// Requires a[i] ~ expected[i] (relative tol, or absolute tol near zero); reports the index.
template <class S>
void require_values(const char* name, const std::vector<S>& a,
                    std::initializer_list<double> expected, double rel) {
  REQUIRE(a.size() == expected.size());
  std::size_t i = 0;
  for (double e : expected) {
    INFO(name << "[" << i << "]");
    REQUIRE_THAT(static_cast<double>(a[i]), WithinRel(e, rel) || WithinAbs(e, rel));
    ++i;
  }
}

// The 3-step problem shared by the AdamW and L2 Adam cases:
//   p0 = (1, -2);  g1 = (0.5, -1),  g2 = (-0.25, 2),  g3 = (1, 0.5);
//   lr_t = 0.1, 0.05, 0.2 (a different rate each step, as from a schedule);
//   b1 = 0.5, b2 = 0.75, eps = 0.25 (large, so its placement matters), wd = 0.5.
// Bias corrections (2): bc1 = 1 - 0.5^t = 0.5, 0.75, 0.875;
//                       bc2 = 1 - 0.75^t = 0.25, 0.4375, 0.578125.
optim::AdamConfig hand_config(bool decoupled) {
  optim::AdamConfig c;
  c.beta1 = 0.5;
  c.beta2 = 0.75;
  c.eps = 0.25;
  c.weight_decay = 0.5;
  c.decoupled = decoupled;
  return c;
}
constexpr double kHandLr[3] = {0.1, 0.05, 0.2};

/// Step t = 1, 2 or 3 of the hand problem.
template <class S>
void hand_step(optim::Adam<S>& adam, std::vector<S>& p, int t) {
  const std::vector<std::vector<S>> g = {vec<S>({0.5, -1}), vec<S>({-0.25, 2}), vec<S>({1, 0.5})};
  const auto k = static_cast<std::size_t>(t - 1);
  adam.step(view(p), cview(g[k]), kHandLr[k]);
}

}  // namespace

TEMPLATE_TEST_CASE("adamw: three steps with decoupled weight decay match hand values", "[optim]",
                   float, double) {
  using S = TestType;
  std::vector<S> p = vec<S>({1, -2});
  optim::Adam<S> adam(2, hand_config(true));
  // t = 1, lr = 0.1, shrink (3) = 1 - 0.1 * 0.5 = 0.95:
  //  p[0]: m = 0.5*0.5 = 0.25, v = 0.25*0.25 = 0.0625; m/bc1 = 0.5, sqrt(v/bc2) = 0.5;
  //        update = 0.1 * 0.5 / (0.5 + 0.25) = 0.0666667; p = 0.95 - 0.0666667 = 0.8833333.
  //  p[1]: m = -0.5, v = 0.25; m/bc1 = -1, sqrt(v/bc2) = 1; update = 0.1 * -1 / 1.25 = -0.08;
  //        p = -1.9 + 0.08 = -1.82.
  hand_step(adam, p, 1);
  require_values("p after t=1", p, {0.88333333333333333, -1.82}, tol<S>());
  // t = 2, lr = 0.05, shrink 0.975:
  //  p[0]: m = 0.5*0.25 + 0.5*(-0.25) = 0, v = 0.75*0.0625 + 0.25*0.0625 = 0.0625;
  //        update = 0, only the decay acts: p = 0.8833333 * 0.975 = 0.86125.
  //  p[1]: m = 0.5*(-0.5) + 0.5*2 = 0.75, v = 0.75*0.25 + 0.25*4 = 1.1875; m/bc1 = 1,
  //        sqrt(v/bc2) = sqrt(1.1875/0.4375) = 1.6475089; update = 0.05 / 1.8975089 = 0.0263503;
  //        p = -1.82*0.975 - 0.0263503 = -1.7745 - 0.0263503 = -1.8008503.
  hand_step(adam, p, 2);
  require_values("p after t=2", p, {0.86125, -1.8008503369553422}, tol<S>());
  // t = 3, lr = 0.2, shrink 0.9:
  //  p[0]: m = 0.5*0 + 0.5*1 = 0.5, v = 0.75*0.0625 + 0.25*1 = 0.296875; m/bc1 = 0.5714286,
  //        sqrt(v/bc2) = sqrt(0.296875/0.578125) = 0.7165986;
  //        update = 0.2 * 0.5714286 / 0.9665986 = 0.1182349;
  //        p = 0.86125*0.9 - 0.1182349 = 0.775125 - 0.1182349 = 0.6568901.
  //  p[1]: m = 0.5*0.75 + 0.5*0.5 = 0.625, v = 0.75*1.1875 + 0.25*0.25 = 0.953125;
  //        m/bc1 = 0.7142857, sqrt(v/bc2) = 1.2839971; update = 0.2*0.7142857/1.5339971
  //        = 0.0931274; p = -1.8008503*0.9 - 0.0931274 = -1.6207653 - 0.0931274 = -1.7138927.
  hand_step(adam, p, 3);
  require_values("p after t=3", p, {0.65689007023049277, -1.7138926888210526}, tol<S>());
  require_values("m after t=3", adam.m(), {0.5, 0.625}, tol<S>());
  require_values("v after t=3", adam.v(), {0.296875, 0.953125}, tol<S>());
  REQUIRE(adam.steps() == 3);
}

TEMPLATE_TEST_CASE("adam: three steps with L2 weight decay match hand values", "[optim]", float,
                   double) {
  using S = TestType;
  std::vector<S> p = vec<S>({1, -2});
  optim::Adam<S> adam(2, hand_config(false));
  // Same problem; now (4) g' = g + 0.5 p feeds the moments and there is no shrink.
  // t = 1, lr = 0.1: g' = (0.5 + 0.5, -1 - 1) = (1, -2); m = (0.5, -1), v = (0.25, 1);
  //   m/bc1 = (1, -2), sqrt(v/bc2) = (1, 2); update = (0.1/1.25, -0.2/2.25) = (0.08, -0.0888889);
  //   p = (0.92, -1.9111111).
  hand_step(adam, p, 1);
  require_values("p after t=1", p, {0.92, -1.9111111111111111}, tol<S>());
  // t = 2, lr = 0.05: g' = (-0.25 + 0.46, 2 - 0.9555556) = (0.21, 1.0444444);
  //   m = (0.25 + 0.105, -0.5 + 0.5222222) = (0.355, 0.0222222);
  //   v = (0.75*0.25 + 0.25*0.0441, 0.75*1 + 0.25*1.0908642) = (0.198525, 1.0227160);
  //   m/bc1 = (0.4733333, 0.0296296), sqrt(v/bc2) = (0.6736256, 1.5289332);
  //   update = (0.05*0.4733333/0.9236256, 0.05*0.0296296/1.7789332) = (0.0256237, 0.0008328);
  //   p = (0.8943763, -1.9119439).
  hand_step(adam, p, 2);
  require_values("p after t=2", p, {0.89437634139338125, -1.9119439031990567}, tol<S>());
  // t = 3, lr = 0.2: g' = (1 + 0.4471882, 0.5 - 0.9559720) = (1.4471882, -0.4559720);
  //   m = (0.1775 + 0.7235941, 0.0111111 - 0.2279860) = (0.9010941, -0.2168749);
  //   v = (0.75*0.198525 + 0.25*2.0943536, 0.75*1.0227160 + 0.25*0.2079104)
  //     = (0.6724822, 0.8190146);
  //   m/bc1 = (1.0298218, -0.2478570), sqrt(v/bc2) = (1.0785232, 1.1902411);
  //   update = (0.2*1.0298218/1.3285232, 0.2*(-0.2478570)/1.4402411) = (0.1550326, -0.0344188);
  //   p = (0.8943763 - 0.1550326, -1.9119439 + 0.0344188) = (0.7393438, -1.8775251).
  hand_step(adam, p, 3);
  require_values("p after t=3", p, {0.73934377819999371, -1.8775250852639695}, tol<S>());
  require_values("m after t=3", adam.m(), {0.90109408534835, -0.21687486468865}, 1e-5);
}

TEMPLATE_TEST_CASE("adam: bias correction makes a constant gradient move by lr per step", "[optim]",
                   float, double) {
  using S = TestType;
  // With g constant and wd = 0, (1)-(2) give m_t / bc1 = g and v_t / bc2 = g^2 for every t, so
  // each step moves p by lr * g / (|g| + eps) (default betas 0.9, 0.999, eps 1e-8). A zero
  // gradient leaves its parameter untouched.
  optim::AdamConfig c;
  optim::Adam<S> adam(3, c);
  std::vector<S> p = vec<S>({1, 1, 1});
  const std::vector<S> g = vec<S>({0.3, -2, 0});
  const double lr = 1e-3;
  for (int t = 1; t <= 5; ++t) {
    adam.step(view(p), cview(g), lr);
    const double d0 = lr * 0.3 / (0.3 + 1e-8), d1 = lr * 2 / (2 + 1e-8);
    require_values("p", p, {1 - t * d0, 1 + t * d1, 1}, tol<S>());
  }
  // step(params, grads) uses config().lr (1e-4 by default).
  std::vector<S> q = vec<S>({0, 0, 0});
  optim::Adam<S> adam2(3, c);
  adam2.step(view(q), cview(g));
  require_values("q", q, {-1e-4 * 0.3 / (0.3 + 1e-8), 1e-4 * 2 / (2 + 1e-8), 0}, tol<S>());
}

TEMPLATE_TEST_CASE("adam: set_state resumes bit-identically; reset starts over", "[optim][io]",
                   float, double) {
  using S = TestType;
  std::vector<S> p = vec<S>({1, -2});
  optim::Adam<S> a(2, hand_config(true));
  hand_step(a, p, 1);
  hand_step(a, p, 2);
  // A fresh optimizer restored from a's state takes the same third step.
  optim::Adam<S> b(2, hand_config(true));
  b.set_state(a.steps(), cview(a.m()), cview(a.v()));
  REQUIRE(b.steps() == 2);
  std::vector<S> pa = p, pb = p;
  const std::vector<S> g3 = vec<S>({1, 0.5});
  a.step(view(pa), cview(g3), kHandLr[2]);
  b.step(view(pb), cview(g3), kHandLr[2]);
  REQUIRE(pa == pb);
  REQUIRE(a.m() == b.m());
  REQUIRE(a.v() == b.v());
  require_values("p after t=3", pa, {0.65689007023049277, -1.7138926888210526}, tol<S>());

  b.reset();
  REQUIRE(b.steps() == 0);
  require_values("m after reset", b.m(), {0, 0}, 0);
  require_values("v after reset", b.v(), {0, 0}, 0);

  // Bad states are rejected and leave the optimizer unchanged.
  const std::vector<S> three = vec<S>({0, 0, 0}), ok = vec<S>({0.5, 0.5});
  REQUIRE_THROWS_AS(a.set_state(1, cview(three), cview(ok)), flowprior::shape_error);
  REQUIRE_THROWS_AS(a.set_state(1, cview(ok), cview(three)), flowprior::shape_error);
  REQUIRE_THROWS_AS(a.set_state(-1, cview(ok), cview(ok)), flowprior::value_error);
  REQUIRE_THROWS_AS(a.set_state(1, cview(ok), cview(vec<S>({0.5, -0.5}))), flowprior::value_error);
  const std::vector<S> nan = {S(0), std::numeric_limits<S>::quiet_NaN()};
  REQUIRE_THROWS_AS(a.set_state(1, cview(nan), cview(ok)), flowprior::numeric_error);
  REQUIRE(a.steps() == 3);
  require_values("m unchanged", a.m(), {0.5, 0.625}, tol<S>());
}

TEMPLATE_TEST_CASE("adam: bad input throws and leaves parameters and state unchanged",
                   "[optim][error]", float, double) {
  using S = TestType;
  optim::Adam<S> adam(2, hand_config(false));
  std::vector<S> p = vec<S>({1, -2});
  hand_step(adam, p, 1);
  const std::vector<S> p1 = p, m1 = adam.m(), v1 = adam.v();

  std::vector<S> p3 = vec<S>({1, 2, 3});
  const std::vector<S> g2 = vec<S>({0.1, 0.2}), g1 = vec<S>({0.1});
  REQUIRE_THROWS_AS(adam.step(view(p3), cview(g2), 0.1), flowprior::shape_error);
  REQUIRE_THROWS_WITH(adam.step(view(p), cview(g1), 0.1),
                      Contains("'grads' has size 1, expected 2"));
  REQUIRE_THROWS_AS(adam.step(view(p), cview(g2), -0.1), flowprior::config_error);
  REQUIRE_THROWS_AS(adam.step(view(p), cview(g2), std::nan("")), flowprior::config_error);

  for (S bad : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(),
                -std::numeric_limits<S>::infinity()}) {
    const std::vector<S> g = {S(0.1), bad};
    REQUIRE_THROWS_AS(adam.step(view(p), cview(g), 0.1), flowprior::numeric_error);
    REQUIRE_THROWS_WITH(adam.step(view(p), cview(g), 0.1),
                        Contains("'grads'") && Contains("index 1"));
  }
  REQUIRE(p == p1);
  REQUIRE(adam.m() == m1);
  REQUIRE(adam.v() == v1);
  REQUIRE(adam.steps() == 1);
}

TEST_CASE("adam: config validation names the field", "[optim][error]") {
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  REQUIRE_NOTHROW(optim::AdamConfig{}.validate());
  auto with = [](auto edit) {
    optim::AdamConfig c;
    edit(c);
    return c;
  };
  REQUIRE_NOTHROW(with([](auto& c) { c.lr = 0; }).validate());
  REQUIRE_NOTHROW(with([](auto& c) { c.beta1 = 0; }).validate());
  const std::vector<std::pair<optim::AdamConfig, const char*>> bad = {
      {with([](auto& c) { c.lr = -1e-4; }), "lr"},
      {with([&](auto& c) { c.lr = inf; }), "lr"},
      {with([&](auto& c) { c.lr = nan; }), "lr"},
      {with([](auto& c) { c.beta1 = 1; }), "beta1"},
      {with([](auto& c) { c.beta1 = -0.1; }), "beta1"},
      {with([](auto& c) { c.beta2 = 1; }), "beta2"},
      {with([&](auto& c) { c.beta2 = nan; }), "beta2"},
      {with([](auto& c) { c.eps = 0; }), "eps"},
      {with([](auto& c) { c.eps = -1e-8; }), "eps"},
      {with([](auto& c) { c.weight_decay = -1e-4; }), "weight_decay"},
      {with([&](auto& c) { c.weight_decay = inf; }), "weight_decay"},
  };
  for (const auto& [c, field] : bad) {
    INFO(field);
    REQUIRE_THROWS_AS(c.validate(), flowprior::config_error);
    REQUIRE_THROWS_WITH(c.validate(), Contains("[flowprior.config]") && Contains(field));
    REQUIRE_THROWS_AS(optim::Adam<double>(2, c), flowprior::config_error);
  }
  REQUIRE_THROWS_AS(optim::Adam<double>(-1, optim::AdamConfig{}), flowprior::config_error);
  REQUIRE_NOTHROW(optim::Adam<double>(0, optim::AdamConfig{}));
}

TEST_CASE("adam: minimises a quadratic", "[optim]") {
  // f(p) = 0.5 |p - c|^2, grad = p - c: AdamW with a cosine schedule and clipping converges.
  const std::vector<double> c = {0.5, -1.5, 2.0};
  std::vector<double> p = {0, 0, 0}, g(3);
  optim::AdamConfig cfg;
  cfg.beta2 = 0.95;
  optim::Adam<double> adam(3, cfg);
  const auto sched = optim::LrSchedule::cosine(0.05, 50, 2000, 1e-4);
  for (Index s = 0; s < 2000; ++s) {
    for (std::size_t i = 0; i < 3; ++i) g[i] = p[i] - c[i];
    optim::clip_grad_norm(view(g), 1.0);
    adam.step(view(p), cview(g), sched.at(adam.steps()));
  }
  for (std::size_t i = 0; i < 3; ++i) REQUIRE_THAT(p[i], WithinAbs(c[i], 1e-3));
}

TEMPLATE_TEST_CASE("clip_grad_norm: returns the norm and rescales only above max_norm", "[optim]",
                   float, double) {
  using S = TestType;
  // |(1, 2, 2)| = sqrt(1 + 4 + 4) = 3.
  REQUIRE_THAT(optim::grad_norm(cview(vec<S>({1, 2, 2}))), WithinRel(3.0, tol<S>()));
  REQUIRE(optim::grad_norm(ConstVectorView<S>{}) == 0);

  // |(3, 4)| = 5 > 1: c = 1 / (5 + 1e-6), g = (3, 4) c = (0.59999988, 0.79999984).
  std::vector<S> g = vec<S>({3, 4});
  REQUIRE_THAT(optim::clip_grad_norm(view(g), 1.0), WithinRel(5.0, tol<S>()));
  require_values("clipped", g, {3 / (5 + 1e-6), 4 / (5 + 1e-6)}, tol<S>());
  REQUIRE_THAT(optim::grad_norm(cview(g)), WithinRel(5 / (5 + 1e-6), tol<S>()));

  // Below the threshold: 5 < 10, c = 10 / 5.000001 > 1, g unchanged.
  g = vec<S>({3, 4});
  REQUIRE_THAT(optim::clip_grad_norm(view(g), 10.0), WithinRel(5.0, tol<S>()));
  REQUIRE(g == vec<S>({3, 4}));
  // At the threshold PyTorch still scales, by 5 / (5 + 1e-6) (c < 1).
  g = vec<S>({3, 4});
  optim::clip_grad_norm(view(g), 5.0);
  require_values("at threshold", g, {3 * 5 / (5 + 1e-6), 4 * 5 / (5 + 1e-6)}, tol<S>());
  // An empty vector: norm 0, nothing to do.
  REQUIRE(optim::clip_grad_norm(VectorView<S>{}, 1.0) == 0);
}

TEMPLATE_TEST_CASE("clip_grad_norm: bad max_norm and non-finite gradients throw", "[optim][error]",
                   float, double) {
  using S = TestType;
  std::vector<S> g = vec<S>({3, 4});
  for (double m : {0.0, -1.0, std::nan("")})
    REQUIRE_THROWS_AS(optim::clip_grad_norm(view(g), m), flowprior::config_error);
  REQUIRE_THROWS_WITH(optim::clip_grad_norm(view(g), 0.0), Contains("max_norm"));
  // +Inf means "never clip".
  REQUIRE(optim::clip_grad_norm(view(g), std::numeric_limits<double>::infinity()) == 5);

  for (S bad : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity()}) {
    std::vector<S> h = {S(1), S(2), bad};
    REQUIRE_FALSE(std::isfinite(optim::grad_norm(cview(h))));
    REQUIRE_THROWS_AS(optim::clip_grad_norm(view(h), 1.0), flowprior::numeric_error);
    REQUIRE_THROWS_WITH(optim::clip_grad_norm(view(h), 1.0), Contains("index 2"));
    REQUIRE(h[0] == S(1));
    REQUIRE(h[1] == S(2));
  }
  REQUIRE(g == vec<S>({3, 4}));
}

TEST_CASE("grad_norm: finite norms whose squares overflow are rescaled", "[optim]") {
  // (1e200, 1e200): the squares overflow double, the norm sqrt(2) 1e200 does not.
  const std::vector<double> g = {1e200, -1e200};
  REQUIRE_THAT(optim::grad_norm(cview(g)), WithinRel(std::sqrt(2.0) * 1e200, 1e-14));
}

TEST_CASE("lr schedule: warmup, cosine midpoint, end and past the end", "[optim]") {
  // base 1, warmup W = 4, total T = 14, min 0.1.
  const auto s = optim::LrSchedule::cosine(1.0, 4, 14, 0.1);
  // (6): lr(s) = (s + 1) / 4 for s = 0..3.
  REQUIRE_THAT(s.at(0), WithinRel(0.25, 1e-15));
  REQUIRE_THAT(s.at(1), WithinRel(0.5, 1e-15));
  REQUIRE_THAT(s.at(2), WithinRel(0.75, 1e-15));
  REQUIRE_THAT(s.at(3), WithinRel(1.0, 1e-15));
  // (7) with q = (s - 4) / 10: s = 4, q = 0: 0.1 + 0.9 * 0.5 * (1 + 1) = 1.
  REQUIRE_THAT(s.at(4), WithinRel(1.0, 1e-15));
  // s = 6, q = 0.2: cos(0.2 pi) = 0.80901699; 0.1 + 0.45 * 1.80901699 = 0.91405765.
  REQUIRE_THAT(s.at(6), WithinRel(0.1 + 0.45 * (1 + 0.80901699437494742), 1e-14));
  // s = 9, q = 0.5 (midpoint): cos(pi / 2) = 0, lr = 0.1 + 0.45 = 0.55 = (base + min) / 2.
  REQUIRE_THAT(s.at(9), WithinRel(0.55, 1e-14));
  // s = 14 = T, q = 1: cos(pi) = -1, lr = min = 0.1; and it stays there (q clamped to 1).
  REQUIRE_THAT(s.at(14), WithinRel(0.1, 1e-14));
  REQUIRE_THAT(s.at(15), WithinRel(0.1, 1e-14));
  REQUIRE_THAT(s.at(1000000), WithinRel(0.1, 1e-14));
  // Monotone non-increasing after warmup.
  for (Index k = 4; k < 20; ++k) REQUIRE(s.at(k + 1) <= s.at(k));

  // The released recipe: 1e-4, 2500 warmup steps. The first step already moves (1e-4 / 2500).
  const auto r = optim::LrSchedule::cosine(1e-4, 2500, 1000000);
  REQUIRE_THAT(r.at(0), WithinRel(4e-8, 1e-14));
  REQUIRE_THAT(r.at(2499), WithinRel(1e-4, 1e-14));
  REQUIRE(r.at(1000000) == 0);

  // No warmup: cosine starts at base.
  REQUIRE_THAT(optim::LrSchedule::cosine(2.0, 0, 4).at(0), WithinRel(2.0, 1e-15));
  REQUIRE_THAT(optim::LrSchedule::cosine(2.0, 0, 4).at(2), WithinRel(1.0, 1e-14));
}

TEST_CASE("lr schedule: constant, with and without warmup", "[optim]") {
  const auto c = optim::LrSchedule::constant(3e-4);
  REQUIRE(c.at(0) == 3e-4);
  REQUIRE(c.at(123456789) == 3e-4);
  // Warmup of 2: 0.5, 1, then 1 forever.
  const auto w = optim::LrSchedule::constant(1.0, 2);
  REQUIRE(w.at(0) == 0.5);
  REQUIRE(w.at(1) == 1.0);
  REQUIRE(w.at(2) == 1.0);
  REQUIRE(optim::LrSchedule{}.at(7) == 1e-4);  // the defaults: constant 1e-4
}

TEST_CASE("lr schedule: bad configurations name the field", "[optim][error]") {
  using K = optim::LrSchedule::Kind;
  REQUIRE_NOTHROW(optim::LrSchedule{}.validate());
  REQUIRE_THROWS_WITH(optim::LrSchedule::constant(-1e-4), Contains("base_lr"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::constant(std::nan("")), Contains("base_lr"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::constant(1e-4, -1), Contains("warmup_steps"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::cosine(1e-4, 10, 10), Contains("total_steps"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::cosine(1e-4, 10, 5), Contains("total_steps"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::cosine(1e-4, 0, 10, 2e-4), Contains("min_lr"));
  REQUIRE_THROWS_WITH(optim::LrSchedule::cosine(1e-4, 0, 10, -1e-6), Contains("min_lr"));
  REQUIRE_THROWS_AS(optim::LrSchedule::cosine(1e-4, 0, 10, -1e-6), flowprior::config_error);
  optim::LrSchedule s;
  s.kind = K::Cosine;  // total_steps left at 0
  REQUIRE_THROWS_AS(s.validate(), flowprior::config_error);
  REQUIRE_THROWS_AS(optim::LrSchedule{}.at(-1), flowprior::value_error);
}

TEMPLATE_TEST_CASE("ema: three updates match hand values", "[optim]", float, double) {
  using S = TestType;
  // (8) with decay 0.9 from e0 = (0, 10):
  //   p1 = (1, 0): e = (0.9*0 + 0.1*1, 0.9*10) = (0.1, 9)
  //   p2 = (2, 0): e = (0.09 + 0.2, 8.1) = (0.29, 8.1)
  //   p3 = (3, 0): e = (0.261 + 0.3, 7.29) = (0.561, 7.29)
  optim::Ema<S> ema(cview(vec<S>({0, 10})), 0.9);
  REQUIRE(ema.decay() == 0.9);
  REQUIRE(ema.updates() == 0);
  require_values("e0", ema.weights(), {0, 10}, 0);
  for (double k : {1.0, 2.0, 3.0}) ema.update(cview(vec<S>({k, 0})));
  REQUIRE(ema.updates() == 3);
  require_values("e3", ema.weights(), {0.561, 7.29}, tol<S>());

  // decay 0: the average is the latest parameters.
  optim::Ema<S> copy(cview(vec<S>({0, 10})), 0.0);
  copy.update(cview(vec<S>({4, 5})));
  require_values("decay 0", copy.weights(), {4, 5}, 0);

  // set_state restores a checkpointed average.
  optim::Ema<S> restored(cview(vec<S>({0, 0})), 0.9);
  restored.set_state(ema.updates(), cview(ema.weights()));
  restored.update(cview(vec<S>({4, 0})));
  ema.update(cview(vec<S>({4, 0})));
  REQUIRE(restored.weights() == ema.weights());
  REQUIRE(restored.updates() == 4);
}

TEMPLATE_TEST_CASE("ema: bad decay and sizes throw", "[optim][error]", float, double) {
  using S = TestType;
  const std::vector<S> p = vec<S>({1, 2});
  for (double d : {1.0, -0.1, 1.5, std::nan("")}) {
    REQUIRE_THROWS_AS(optim::Ema<S>(cview(p), d), flowprior::config_error);
    REQUIRE_THROWS_WITH(optim::Ema<S>(cview(p), d), Contains("decay"));
  }
  optim::Ema<S> ema(cview(p), 0.5);
  REQUIRE_THROWS_AS(ema.update(cview(vec<S>({1, 2, 3}))), flowprior::shape_error);
  REQUIRE_THROWS_AS(ema.set_state(0, cview(vec<S>({1}))), flowprior::shape_error);
  REQUIRE_THROWS_AS(ema.set_state(-1, cview(p)), flowprior::value_error);
  REQUIRE(ema.updates() == 0);
  REQUIRE(ema.weights() == p);
}
