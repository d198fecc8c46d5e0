// CpuBackend::gemm on whatever engine this executable was built with (test_perf: Eigen;
// test_perf_openblas / test_perf_blis: the BLAS, docs/backends.md "GEMM engines"): BLAS
// semantics against a plain triple loop in long double, every transpose, sub-matrix views
// (ld > rows), beta = 0 ignoring NaN in C, k = 0, and many repetitions on the thread team (a BLAS
// that is not safe to call from two threads at once gives wrong blocks here).
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <limits>
#include <string>

#include "catch.hpp"

using flowprior::CpuBackend;
using flowprior::Index;

namespace {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

/// C = alpha op(A) op(B) + beta C by definition, accumulated in long double; beta = 0 ignores C.
template <class S>
Mat<S> reference(bool ta, bool tb, S alpha, const Mat<S>& A, const Mat<S>& B, S beta,
                 const Mat<S>& C) {
  const Index m = C.rows(), n = C.cols(), k = ta ? A.rows() : A.cols();
  Mat<S> R(m, n);
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) {
      long double acc = 0;
      for (Index p = 0; p < k; ++p)
        acc += (long double)(ta ? A(p, i) : A(i, p)) * (long double)(tb ? B(j, p) : B(p, j));
      R(i, j) = static_cast<S>((long double)alpha * acc +
                               (beta == S(0) ? 0.0L : (long double)beta * (long double)C(i, j)));
    }
  return R;
}

template <class S>
void check_product(Index m, Index n, Index k, bool ta, bool tb, S alpha, S beta, int repeats) {
  CAPTURE(m, n, k, ta, tb, alpha, beta, CpuBackend::gemm_engine());
  const Mat<S> A = ta ? Mat<S>::Random(k, m) : Mat<S>::Random(m, k);
  const Mat<S> B = tb ? Mat<S>::Random(n, k) : Mat<S>::Random(k, n);
  // C lives inside a taller buffer: ld = m + 3 exercises the leading dimension.
  Mat<S> big = Mat<S>::Random(m + 3, n);
  if (beta == S(0)) big.topRows(m).setConstant(std::numeric_limits<S>::quiet_NaN());
  const Mat<S> c0 = big.topRows(m);
  const Mat<S> want = reference<S>(ta, tb, alpha, A, B, beta, c0);
  const Mat<S> below = big.bottomRows(3);
  const S tol = std::numeric_limits<S>::epsilon() * S(4) * S(k + 2);
  CpuBackend::Context ctx;
  for (int r = 0; r < repeats; ++r) {
    big.topRows(m) = c0;
    CpuBackend::gemm<S>(ctx, ta, tb, alpha, A, B, beta,
                        flowprior::MatrixView<S>(big.data(), m, n, big.rows()));
    const S scale = std::max<S>(S(1), want.cwiseAbs().maxCoeff());
    REQUIRE(big.topRows(m).allFinite());
    REQUIRE((big.topRows(m) - want).cwiseAbs().maxCoeff() <= tol * scale);
    REQUIRE(big.bottomRows(3) == below);  // nothing written past the view
  }
}

}  // namespace

TEMPLATE_TEST_CASE("gemm: BLAS semantics on this executable's engine", "[perf][gemm]", float,
                   double) {
  using S = TestType;
  INFO("engine " << CpuBackend::gemm_engine());
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_product<S>(7, 5, 3, ta, tb, S(1), S(0), 1);          // below the threading threshold
      check_product<S>(130, 97, 61, ta, tb, S(-0.5), S(1), 1);   // odd sizes, accumulate
      check_product<S>(64, 300, 200, ta, tb, S(2), S(0.25), 1);  // threaded, split by columns
      check_product<S>(300, 64, 200, ta, tb, S(1), S(0), 1);     // threaded, split by rows
    }
  check_product<S>(9, 11, 0, false, false, S(1), S(0.5), 1);  // k = 0: C = beta C
}

TEST_CASE("gemm: repeated threaded products on the team stay exact", "[perf][gemm]") {
  // 40 repetitions of products that every thread of the team shares.
  check_product<float>(256, 512, 256, false, false, 1.0f, 0.0f, 40);
  check_product<double>(512, 256, 128, true, false, 1.0, 1.0, 20);
}

TEST_CASE("gemm: the engine name is one of the documented ones", "[perf][gemm]") {
  const std::string e = CpuBackend::gemm_engine();
  REQUIRE((e == "eigen" || e == "openblas" || e == "blis"));
#if defined(FLOWPRIOR_CBLAS_OPENBLAS)
  REQUIRE(e == "openblas");
#elif defined(FLOWPRIOR_CBLAS_BLIS)
  REQUIRE(e == "blis");
#else
  REQUIRE(e == "eigen");
#endif
}
