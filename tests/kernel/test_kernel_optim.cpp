// The flat-vector primitives of the optimizer (backend/kernel_optim.hpp) on the host executor
// against CpuBackend: Adam / AdamW updates, the sums of squares (with and without a divisor),
// max |x|, the first non-finite entry, the clipping scale and the moving average. Vectors are
// longer than one 1024-element chunk, with a last partial chunk, and are followed by NaN (the
// padding of a Mat column): a body that runs past the end fails the comparison. Then the
// optimizer on top of them, optim::Adam, clip_grad_norm, grad_norm and Ema, on both backends.
#include <algorithm>
#include <cmath>
#include <flowprior/core/random.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::ConstVectorView;
using flowprior::Index;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;

namespace {

constexpr Index kN = 2500;  // two whole chunks and a partial one

}  // namespace

TEMPLATE_TEST_CASE("kernel backend: Adam, clipping scale and EMA updates match the CPU",
                   "[kernel][optim]", float, double) {
  using S = TestType;
  flowprior::Rng rng(21);
  Contexts c;
  Mat<S> p0(kN, 1, 3), g(kN, 1, 3), m0(kN, 1, 3), v0(kN, 1, 3);
  p0.random(rng);
  g.random(rng, -3.0, 3.0);
  m0.random(rng, -0.5, 0.5);
  v0.random(rng, 0.01, 2.0);  // second moments are >= 0
  const Mat<S> g_before = g;

  // AdamW (decoupled decay) and L2 Adam at step t = 3, with the coefficients optim/ computes.
  for (const bool adamw : {true, false}) {
    CAPTURE(adamw);
    const double lr = 0.05, wd = 0.1, b1 = 0.9, b2 = 0.999, t = 3;
    flowprior::AdamStep a;
    a.beta1 = b1;
    a.beta2 = b2;
    a.l2 = adamw ? 0.0 : wd;
    a.shrink = adamw ? 1.0 - lr * wd : 1.0;
    a.step_size = lr / (1.0 - std::pow(b1, t));
    a.bc2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
    a.eps = 1e-8;
    Mat<S> pc = p0, mc = m0, vc = v0, pk = p0, mk = m0, vk = v0;
    Cpu::adam_update(c.cpu, pc.vec(), g.cvec(), mc.vec(), vc.vec(), a);
    Ker::adam_update(c.ker, pk.vec(), g.cvec(), mk.vec(), vk.vec(), a);
    require_close(mc, mk, "adam m");
    require_close(vc, vk, "adam v");
    require_close(pc, pk, "adam params");
    require_close(g_before, g, "adam leaves grads", 0.0, 0.0);
    // The update moved every parameter (a check that the step ran at all).
    Index moved = 0;
    for (Index i = 0; i < kN; ++i) moved += pk.at(i, 0) != p0.at(i, 0);
    REQUIRE(moved == kN);
    // The padding after the vector is untouched (still NaN).
    REQUIRE(std::isnan(pk.store[std::size_t(kN)]));
  }

  // Gradient clipping's scale, in place.
  Mat<S> sc = g, sk = g;
  Cpu::scale_vec(c.cpu, sc.vec(), 0.37);
  Ker::scale_vec(c.ker, sk.vec(), 0.37);
  require_close(sc, sk, "scale_vec", 0.0, 0.0);  // one product in double: the same bits

  // EMA of the weights.
  for (const double decay : {0.999, 0.5, 0.0}) {
    Mat<S> wc = m0, wk = m0;
    Cpu::ema_update(c.cpu, wc.vec(), p0.cvec(), decay);
    Ker::ema_update(c.ker, wk.vec(), p0.cvec(), decay);
    require_close(wc, wk, "ema_update");
    if (decay == 0.0) require_close(p0, wk, "ema_update decay 0 copies", 0.0, 0.0);
  }

  // Empty vectors: nothing to do, nothing read.
  Ker::adam_update(c.ker, flowprior::VectorView<S>(nullptr, 0), ConstVectorView<S>(nullptr, 0),
                   flowprior::VectorView<S>(nullptr, 0), flowprior::VectorView<S>(nullptr, 0),
                   flowprior::AdamStep{});
  Ker::scale_vec(c.ker, flowprior::VectorView<S>(nullptr, 0), 2.0);
  Ker::ema_update(c.ker, flowprior::VectorView<S>(nullptr, 0), ConstVectorView<S>(nullptr, 0), 0.9);
}

TEMPLATE_TEST_CASE("kernel backend: sums of squares, max |x| and the first non-finite entry",
                   "[kernel][optim]", float, double) {
  using S = TestType;
  flowprior::Rng rng(22);
  Contexts c;
  Mat<S> x(kN, 1, 2);
  x.random(rng, -4.0, 4.0);

  // Sums of squares: the kernel adds 1024-element chunks, the CPU (one thread here) serially.
  for (const double divisor : {1.0, 3.5}) {
    CAPTURE(divisor);
    const double sc = Cpu::sum_squares(c.cpu, x.cvec(), divisor);
    const double sk = Ker::sum_squares(c.ker, x.cvec(), divisor);
    REQUIRE(sk > 0);
    require_close(sc, sk, "sum_squares", 1e-13);  // both in double: only the grouping differs
    // The kernel's own order: chunk partials, added in chunk order.
    double expect = 0;
    for (Index c0 = 0; c0 < kN; c0 += flowprior::kernel::kChunk) {
      double part = 0;
      for (Index i = c0; i < std::min(kN, c0 + flowprior::kernel::kChunk); ++i) {
        const double xi = divisor == 1.0 ? double(x.at(i, 0)) : double(x.at(i, 0)) / divisor;
        part += xi * xi;
      }
      expect += part;
    }
    REQUIRE(sk == expect);
  }
  REQUIRE(Ker::sum_squares(c.ker, ConstVectorView<S>(nullptr, 0)) == 0.0);
  REQUIRE(Ker::sum_squares(c.ker, ConstVectorView<S>(nullptr, 0), 2.0) == 0.0);

  // max |x|: the same value in any order.
  REQUIRE(Ker::max_abs(c.ker, x.cvec()) == Cpu::max_abs(c.cpu, x.cvec()));
  REQUIRE(Ker::max_abs(c.ker, ConstVectorView<S>(nullptr, 0)) == 0.0);
  Mat<S> y = x;
  y.at(1500, 0) = S(-9.5);  // the largest magnitude, negative, in the second chunk
  REQUIRE(Ker::max_abs(c.ker, y.cvec()) == 9.5);
  REQUIRE(Cpu::first_nonfinite(c.cpu, y.cvec()) == -1);
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == -1);
  y.at(7, 0) = std::numeric_limits<S>::max();  // finite: not flagged
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == -1);

  // NaN is skipped by max_abs, +-Inf returned as +Inf; the first non-finite entry across chunks.
  y.at(2100, 0) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(Ker::max_abs(c.ker, y.cvec()) == Cpu::max_abs(c.cpu, y.cvec()));
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == 2100);
  REQUIRE(std::isnan(Ker::sum_squares(c.ker, y.cvec())));
  y.at(1300, 0) = -std::numeric_limits<S>::infinity();
  REQUIRE(Ker::max_abs(c.ker, y.cvec()) == std::numeric_limits<double>::infinity());
  REQUIRE(Cpu::max_abs(c.cpu, y.cvec()) == std::numeric_limits<double>::infinity());
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == 1300);
  REQUIRE(Cpu::first_nonfinite(c.cpu, y.cvec()) == 1300);
  y.at(1024, 0) = std::numeric_limits<S>::infinity();  // the first element of a chunk
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == 1024);
  y.at(0, 0) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(Ker::first_nonfinite(c.ker, y.cvec()) == 0);
  REQUIRE(Ker::first_nonfinite(c.ker, ConstVectorView<S>(nullptr, 0)) == -1);

  // Only +Inf: sum_squares is +Inf on both.
  Mat<S> z = x;
  z.at(kN - 1, 0) = std::numeric_limits<S>::infinity();
  REQUIRE(Ker::sum_squares(c.ker, z.cvec()) == std::numeric_limits<double>::infinity());
  REQUIRE(Ker::first_nonfinite(c.ker, z.cvec()) == kN - 1);
}

TEMPLATE_TEST_CASE("kernel backend: optim::Adam, clip_grad_norm and Ema on it match the CPU",
                   "[kernel][optim]", float, double) {
  using S = TestType;
  namespace optim = flowprior::optim;
  flowprior::Rng rng(23);
  const Index n = 1500;
  Mat<S> p0(n, 1, 1);
  p0.random(rng);
  optim::AdamConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.05;
  for (const bool decoupled : {true, false}) {
    CAPTURE(decoupled);
    cfg.decoupled = decoupled;
    optim::Adam<S, Cpu> ac(n, cfg);
    optim::Adam<S, Ker> ak(n, cfg);
    optim::Ema<S, Cpu> ec(p0.cvec(), 0.9);
    optim::Ema<S, Ker> ek(p0.cvec(), 0.9);
    Mat<S> pc = p0, pk = p0;
    for (int step = 0; step < 4; ++step) {
      Mat<S> g(n, 1, 1);
      g.random(rng, -5.0, 5.0);
      Mat<S> gk = g;
      const double nc = optim::clip_grad_norm<S, Cpu>(ac.context(), g.vec(), 10.0);
      const double nk = optim::clip_grad_norm<S, Ker>(ak.context(), gk.vec(), 10.0);
      require_close(nc, nk, "clip_grad_norm's norm", 1e-13);
      REQUIRE(nk > 10.0);  // the clipping scaled
      require_close(g, gk, "clipped gradient");
      ac.step(pc.vec(), g.cvec(), cfg.lr);
      ak.step(pk.vec(), gk.cvec(), cfg.lr);
      require_close(pc, pk, "Adam params");
      ec.update(pc.cvec());
      ek.update(pk.cvec());
    }
    const std::vector<S> mc = ac.m(), mk = ak.m(), wc = ec.weights(), wk = ek.weights();
    for (Index i = 0; i < n; ++i) {
      const auto u = std::size_t(i);
      REQUIRE(std::abs(double(mc[u]) - double(mk[u])) <=
              fpt::kp::tol<S>() * (std::abs(double(mc[u])) + 1.0));
      REQUIRE(std::abs(double(wc[u]) - double(wk[u])) <=
              fpt::kp::tol<S>() * (std::abs(double(wc[u])) + 1.0));
    }
    // A non-finite gradient is refused by both with the same message, the state unchanged.
    Mat<S> bad(n, 1, 1);
    bad.at(1200, 0) = std::numeric_limits<S>::quiet_NaN();
    std::string what_c, what_k;
    try {
      ac.step(pc.vec(), bad.cvec(), cfg.lr);
    } catch (const flowprior::numeric_error& e) {
      what_c = e.what();
    }
    try {
      ak.step(pk.vec(), bad.cvec(), cfg.lr);
    } catch (const flowprior::numeric_error& e) {
      what_k = e.what();
    }
    REQUIRE(what_k.find("1200") != std::string::npos);
    REQUIRE(what_k == what_c);
    REQUIRE(ak.steps() == 4);
  }
  // The norm of a gradient whose squares overflow in double is found by rescaling with max |g|
  // (max_abs and the divisor of sum_squares).
  if (std::is_same<S, double>::value) {
    Mat<S> g(n, 1, 1);
    g.random(rng, -1.0, 1.0);
    for (Index i = 0; i < n; ++i) g.at(i, 0) *= S(1e200);
    Contexts c;
    REQUIRE(std::isinf(Ker::sum_squares(c.ker, g.cvec())));
    const double nc = optim::grad_norm<S, Cpu>(c.cpu, g.cvec());
    const double nk = optim::grad_norm<S, Ker>(c.ker, g.cvec());
    REQUIRE(std::isfinite(nk));
    require_close(nc, nk, "grad_norm with overflowing squares", 1e-13);
  }
}
