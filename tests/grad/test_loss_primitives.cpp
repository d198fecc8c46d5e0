// The loss primitives of CpuBackend (docs/backends.md "Loss primitives"): path_mix,
// path_residuals, scaled_copy and path_grad against plain loops written from the equations
// (flow_matching.md (4)-(5), alignment.md (1)), in both conventions and with both signs, on
// strided views; path_grad also against central differences and for its accumulate rule.
#include <flowprior/flowprior.hpp>
#include <limits>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
using B = CpuBackend;

namespace {

// Times in [0, 1], one per column (N*K columns).
Vec unit_times(Index n, Rng& rng) { return fpt::random_vec(n, rng, 0.0, 1.0); }

}  // namespace

TEST_CASE("loss primitives: path mix and residuals equal the loops of the equations",
          "[op][loss]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const double sign = GENERATE(1.0, -1.0);
  CAPTURE(int(conv), sign);
  B::Context ctx;
  Rng rng(31);
  const Index d = 3, N = 4, K = 3, M = N * K;
  // The rows sit in a taller matrix, so that their leading dimension is not d.
  Mat x_store = fpt::random_mat(d + 2, N, rng);
  const auto x = x_store.topRows(d);
  const Mat eps = fpt::random_mat(d, M, rng);
  const Vec t = unit_times(M, rng);
  Mat xt(d, M);
  REQUIRE(B::path_mix(ctx, conv, flowprior::ConstVectorView<double>(t.data(), M), x, eps,
                      MatrixView<double>(xt), K) == 0);
  Mat v = fpt::random_mat(d, M, rng);
  Mat r = v;
  const double row_scale = 0.3;
  std::vector<double> rows(static_cast<std::size_t>(N));
  Vec per_row(N);
  const double total =
      B::path_residuals(ctx, conv, sign, flowprior::ConstVectorView<double>(t.data(), M), x, eps,
                        MatrixView<double>(r), K, row_scale, rows.data(),
                        flowprior::VectorView<double>(per_row.data(), N));
  double want_total = 0;
  for (Index b = 0; b < N; ++b) {
    double row = 0;
    for (Index k = 0; k < K; ++k) {
      const Index col = b * K + k;
      const auto pc = flowprior::path_coefficients(conv, t[col]);
      for (Index i = 0; i < d; ++i) {
        REQUIRE(xt(i, col) == pc.a * x(i, b) + pc.b * eps(i, col));
        const double ri = sign * v(i, col) - (pc.c * x(i, b) + pc.e * eps(i, col));
        REQUIRE(r(i, col) == ri);
        row += ri * ri;
      }
    }
    row *= row_scale;
    REQUIRE(rows[std::size_t(b)] == row);
    REQUIRE(per_row[b] == row);
    want_total += row;
  }
  REQUIRE(total == want_total);
  // Without loss_per_row_out only row_out is written.
  Mat r2 = v;
  REQUIRE(B::path_residuals(ctx, conv, sign, flowprior::ConstVectorView<double>(t.data(), M), x,
                            eps, MatrixView<double>(r2), K, row_scale, rows.data(),
                            flowprior::VectorView<double>()) == total);
  REQUIRE(r2 == r);
  // scaled_copy: B = alpha A.
  Mat dv(d, M);
  B::scaled_copy(ctx, -0.25, r, MatrixView<double>(dv));
  REQUIRE(dv == (-0.25 * r).eval());
}

TEST_CASE("loss primitives: path_mix counts the times outside [0, 1]", "[op][loss]") {
  B::Context ctx;
  Rng rng(32);
  const Index d = 2, N = 3, K = 2, M = N * K;
  const Mat x = fpt::random_mat(d, N, rng), eps = fpt::random_mat(d, M, rng);
  Vec t = unit_times(M, rng);
  Mat xt(d, M);
  t[1] = -0.1;
  t[3] = std::numeric_limits<double>::quiet_NaN();
  t[5] = 1.5;
  REQUIRE(B::path_mix(ctx, Convention::Paper, flowprior::ConstVectorView<double>(t.data(), M), x,
                      eps, MatrixView<double>(xt), K) == 3);
  t[0] = 0.0;
  t[1] = 1.0;
  t[3] = 0.5;
  t[5] = 0.25;
  REQUIRE(B::path_mix(ctx, Convention::Code, flowprior::ConstVectorView<double>(t.data(), M), x,
                      eps, MatrixView<double>(xt), K) == 0);
}

TEST_CASE("loss primitives: path_grad is the gradient of the path and the target w.r.t. x",
          "[op][grad][loss]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const double sign = GENERATE(1.0, -1.0);
  const bool detach = GENERATE(false, true);
  CAPTURE(int(conv), sign, detach);
  B::Context ctx;
  Rng rng(33);
  const Index d = 3, N = 2, K = 4, M = N * K;
  Mat x = fpt::random_mat(d, N, rng);
  const Mat eps = fpt::random_mat(d, M, rng), dv = fpt::random_mat(d, M, rng);
  const Mat dxt = fpt::random_mat(d, M, rng);
  const Vec t = unit_times(M, rng);
  const flowprior::ConstVectorView<double> tv(t.data(), M);
  // L(x) = sum_col <dxt, x_t(x)> - <dv, sign u(x)>: its gradient is path_grad's formula.
  auto loss = [&] {
    double l = 0;
    for (Index col = 0; col < M; ++col) {
      const auto pc = flowprior::path_coefficients(conv, t[col]);
      for (Index i = 0; i < d; ++i) {
        const double xi = x(i, col / K);
        if (!detach) l += dxt(i, col) * (pc.a * xi + pc.b * eps(i, col));
        l -= dv(i, col) * sign * (pc.c * xi + pc.e * eps(i, col));
      }
    }
    return l;
  };
  const flowprior::ConstMatrixView<double> dxt_view =
      detach ? flowprior::ConstMatrixView<double>() : flowprior::ConstMatrixView<double>(dxt);
  Mat g = Mat::Zero(d, N);
  B::path_grad(ctx, conv, sign, tv, dv, dxt_view, MatrixView<double>(g), K);
  fpt::require_close("d_x", g.data(), fpt::fd_gradient(loss, x.data(), x.size()), 1e-8);
  // It accumulates: a second call adds the same again.
  Mat g2 = g;
  B::path_grad(ctx, conv, sign, tv, dv, dxt_view, MatrixView<double>(g2), K);
  REQUIRE((g2 - 2 * g).norm() <= 1e-15 * g.norm());
}

TEST_CASE("scan primitives: reverse_times, first_outside_unit, time_runs", "[op][loss]") {
  B::Context ctx;
  Rng rng(41);
  SECTION("reverse_times: 1 - t, in place too") {
    const Vec t = unit_times(9, rng);
    Vec r(9);
    B::reverse_times(ctx, flowprior::ConstVectorView<double>(t), flowprior::VectorView<double>(r));
    for (Index i = 0; i < 9; ++i) REQUIRE(r[i] == 1.0 - t[i]);
    Vec same = t;
    B::reverse_times(ctx, flowprior::ConstVectorView<double>(same),
                     flowprior::VectorView<double>(same));
    REQUIRE(same == r);
  }
  SECTION("first_outside_unit: NaN and both ends") {
    Vec t(5);
    t << 0.0, 1.0, 0.5, 1.0, 0.0;
    REQUIRE(B::first_outside_unit(ctx, flowprior::ConstVectorView<double>(t)) == -1);
    t[3] = std::nextafter(1.0, 2.0);
    REQUIRE(B::first_outside_unit(ctx, flowprior::ConstVectorView<double>(t)) == 3);
    t[1] = std::numeric_limits<double>::quiet_NaN();
    REQUIRE(B::first_outside_unit(ctx, flowprior::ConstVectorView<double>(t)) == 1);
    t[0] = -0.0;  // -0 lies in [0, 1]
    t[1] = -1e-300;
    REQUIRE(B::first_outside_unit(ctx, flowprior::ConstVectorView<double>(t)) == 1);
  }
  SECTION("time_runs: runs of equal consecutive times, their times and the map") {
    Vec t(8);
    t << 0.3, 0.3, 0.3, 0.7, 0.7, 0.3, 0.1, 0.1;
    Vec times(8);
    std::vector<Index> map(8, -7);
    const Index R =
        B::time_runs(ctx, flowprior::ConstVectorView<double>(t), times.data(), map.data());
    REQUIRE(R == 4);
    REQUIRE(times.head(4) == (Vec(4) << 0.3, 0.7, 0.3, 0.1).finished());
    REQUIRE(map == std::vector<Index>{0, 0, 0, 1, 1, 2, 3, 3});
    REQUIRE(B::time_runs(ctx, flowprior::ConstVectorView<double>(t.data(), 0), times.data(),
                         map.data()) == 0);
  }
}

TEST_CASE("backend checks: the messages of the host checks, the value read on the error path",
          "[op][error]") {
  B::Context ctx;
  Mat x = Mat::Zero(2, 3);
  REQUIRE_NOTHROW(
      flowprior::check_finite_on<B>(ctx, "f", "x", flowprior::ConstMatrixView<double>(x)));
  x(1, 2) = -std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_MATCHES(
      flowprior::check_finite_on<B>(ctx, "f", "x", flowprior::ConstMatrixView<double>(x)),
      flowprior::numeric_error,
      Catch::Message("[flowprior.numeric] f: argument 'x' has a non-finite value -inf at (1, 2)"));
  Vec t(3);
  t << 0.5, 1.5, 0.25;
  REQUIRE_THROWS_MATCHES(
      flowprior::check_unit_interval_on<B>(ctx, "g", "t", flowprior::ConstVectorView<double>(t)),
      flowprior::value_error,
      Catch::Message("[flowprior.value] g: argument 't' must lie in [0, 1], got 1.5 at index 1"));
}
