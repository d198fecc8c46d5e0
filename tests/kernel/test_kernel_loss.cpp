// The loss primitives of KernelBackend (backend/kernel_loss.hpp), run on the host executor
// against CpuBackend on copies of the same random operands (padded views, NaN in the padding):
// the path mix and its count of bad times (outside [0, 1], NaN, over more than one chunk), the
// residuals with their per-row sums and total, the scaled copy and the path gradient (with and
// without the prediction term, accumulated into a non-zero d_x), in both conventions.
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::Convention;
using flowprior::Index;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;

namespace {

template <class S>
Mat<S> rand_mat(flowprior::Rng& rng, Index rows, Index cols, Index pad, double lo = -2.0,
                double hi = 2.0) {
  Mat<S> m(rows, cols, pad);
  m.random(rng, lo, hi);
  return m;
}

template <class S>
Mat<S> nan_mat(Index rows, Index cols, Index pad) {
  Mat<S> m(rows, cols, pad);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m.at(i, j) = std::numeric_limits<S>::quiet_NaN();
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("kernel backend: loss primitives match the CPU", "[kernel][kernel_loss]", float,
                   double) {
  using S = TestType;
  flowprior::Rng rng(57);
  Contexts c;
  const Index d = 5, N = 4, K = 3, M = N * K;
  const Mat<S> x = rand_mat<S>(rng, d, N, 2), eps = rand_mat<S>(rng, d, M, 1);
  const Mat<S> dv = rand_mat<S>(rng, d, M, 3), dxt = rand_mat<S>(rng, d, M, 2);
  const Mat<S> t = rand_mat<S>(rng, 1, M, 0, 0.0, 1.0);

  for (const Convention conv : {Convention::Paper, Convention::Code}) {
    INFO(flowprior::to_string(conv));
    Mat<S> xt_cpu = nan_mat<S>(d, M, 1), xt_ker = nan_mat<S>(d, M, 2);
    REQUIRE(Cpu::path_mix(c.cpu, conv, t.cvec(), x.cview(), eps.cview(), xt_cpu.view(), K) == 0);
    REQUIRE(Ker::path_mix(c.ker, conv, t.cvec(), x.cview(), eps.cview(), xt_ker.view(), K) == 0);
    require_close(xt_cpu, xt_ker, "path_mix");

    for (const S sign : {S(1), S(-1)})
      for (int per_row = 0; per_row < 2; ++per_row) {
        INFO("sign " << sign << ", loss_per_row " << per_row);
        const Mat<S> v = rand_mat<S>(rng, d, M, 2);
        Mat<S> v_cpu = v, v_ker = v;
        std::vector<double> row_cpu(N, -1.0), row_ker(N, -2.0);
        Mat<S> lpr_cpu = nan_mat<S>(N, 1, 0), lpr_ker = nan_mat<S>(N, 1, 0);
        const flowprior::VectorView<S> none(nullptr, 0);
        const double tot_cpu =
            Cpu::path_residuals(c.cpu, conv, sign, t.cvec(), x.cview(), eps.cview(), v_cpu.view(),
                                K, 0.3, row_cpu.data(), per_row ? lpr_cpu.vec() : none);
        const double tot_ker =
            Ker::path_residuals(c.ker, conv, sign, t.cvec(), x.cview(), eps.cview(), v_ker.view(),
                                K, 0.3, row_ker.data(), per_row ? lpr_ker.vec() : none);
        require_close(v_cpu, v_ker, "residuals");
        for (Index b = 0; b < N; ++b)
          require_close(row_cpu[std::size_t(b)], row_ker[std::size_t(b)], "row_out",
                        fpt::kp::tol<S>());
        if (per_row) require_close(lpr_cpu, lpr_ker, "loss_per_row_out");
        require_close(tot_cpu, tot_ker, "path_residuals total", fpt::kp::tol<S>());
        REQUIRE(tot_ker > 0.0);
      }

    for (int through_v = 0; through_v < 2; ++through_v)
      for (const S sign : {S(1), S(-1)}) {
        INFO("through_v " << through_v << ", sign " << sign);
        const Mat<S> none(d, 0);
        Mat<S> dx_cpu = rand_mat<S>(rng, d, N, 1), dx_ker = dx_cpu;
        Cpu::path_grad(c.cpu, conv, sign, t.cvec(), dv.cview(),
                       through_v ? dxt.cview() : none.cview(), dx_cpu.view(), K);
        Ker::path_grad(c.ker, conv, sign, t.cvec(), dv.cview(),
                       through_v ? dxt.cview() : none.cview(), dx_ker.view(), K);
        require_close(dx_cpu, dx_ker, "path_grad");
      }
  }

  // Scaled copy, out of place (into NaN) and in place.
  Mat<S> s_cpu = nan_mat<S>(d, M, 2), s_ker = nan_mat<S>(d, M, 1);
  Cpu::scaled_copy(c.cpu, S(-0.75), dv.cview(), s_cpu.view());
  Ker::scaled_copy(c.ker, S(-0.75), dv.cview(), s_ker.view());
  require_close(s_cpu, s_ker, "scaled_copy");
  Mat<S> ip = dv;
  Ker::scaled_copy(c.ker, S(-0.75), ip.cview(), ip.view());
  require_close(s_cpu, ip, "scaled_copy in place");

  // Empty batch: the sums are 0, nothing is read.
  std::vector<double> row(1, 7.0);
  const Mat<S> e(d, 0);
  Mat<S> ev(d, 0);
  REQUIRE(Ker::path_residuals(c.ker, Convention::Paper, S(1), e.cvec(), e.cview(), e.cview(),
                              ev.view(), K, 1.0, row.data(), flowprior::VectorView<S>()) == 0.0);
  REQUIRE(row[0] == 7.0);
  REQUIRE(Ker::path_mix(c.ker, Convention::Code, e.cvec(), e.cview(), e.cview(), ev.view(), K) ==
          0);
}

TEMPLATE_TEST_CASE("kernel backend: path_mix counts bad times over several chunks",
                   "[kernel][kernel_loss]", float, double) {
  using S = TestType;
  flowprior::Rng rng(58);
  Contexts c;
  const Index d = 2, K = 2, N = 1100, M = N * K;  // 2200 columns: three chunks of 1024
  const Mat<S> x = rand_mat<S>(rng, d, N, 1), eps = rand_mat<S>(rng, d, M, 0);
  Mat<S> t = rand_mat<S>(rng, 1, M, 0, 0.0, 1.0);
  t.at(0, 3) = S(1.5);
  t.at(0, 1500) = std::numeric_limits<S>::quiet_NaN();
  t.at(0, 2199) = S(-1e-3);
  t.at(0, 2000) = S(1);  // the closed interval: not counted
  t.at(0, 2001) = S(0);
  for (const Convention conv : {Convention::Paper, Convention::Code}) {
    Mat<S> xt_cpu(d, M, 1), xt_ker(d, M, 2);
    const Index bad_cpu =
        Cpu::path_mix(c.cpu, conv, t.cvec(), x.cview(), eps.cview(), xt_cpu.view(), K);
    const Index bad_ker =
        Ker::path_mix(c.ker, conv, t.cvec(), x.cview(), eps.cview(), xt_ker.view(), K);
    REQUIRE(bad_cpu == 3);
    REQUIRE(bad_ker == 3);
    require_close(xt_cpu, xt_ker, "path_mix");
  }
}
