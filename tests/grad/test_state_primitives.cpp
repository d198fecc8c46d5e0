// The gather primitive and the matrix scan of CpuBackend (docs/backends.md): gather_cols and
// find_nonfinite (as a position i + j rows) against plain loops, on views whose leading dimension
// exceeds their rows, empty operands, indices at both ends and repeated; and the pointer forms of
// copy_from_host / copy_to_host.
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
using B = CpuBackend;

namespace {

/// The first non-finite element of A in column-major order, as i + j * rows, or -1: the loop the
/// primitive must equal.
template <class S>
Index first_nonfinite_loop(ConstMatrixView<S> A) {
  for (Index j = 0; j < A.cols; ++j)
    for (Index i = 0; i < A.rows; ++i)
      if (!std::isfinite(A(i, j))) return i + j * A.rows;
  return -1;
}

/// find_nonfinite's position as i + j * rows, or -1.
template <class S>
Index first_nonfinite_cols(B::Context& ctx, ConstMatrixView<S> A) {
  const flowprior::NonFinite r = B::find_nonfinite(ctx, A);
  return r.found() ? r.i + r.j * A.rows : -1;
}

}  // namespace

TEMPLATE_TEST_CASE("gather_cols copies the indexed columns, on strided views", "[op][state]", float,
                   double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(41);
  const Index rows = 3, cols = 7;
  // A and B_out sit in taller storage, so that both leading dimensions exceed the rows.
  std::vector<S> a_store(std::size_t((rows + 2) * cols));
  for (auto& x : a_store) x = static_cast<S>(flowprior::normal01(rng));
  const ConstMatrixView<S> A(a_store.data(), rows, cols, rows + 2);
  // Both ends, repeats, out of order.
  const std::vector<Index> idx = {0, cols - 1, 3, 3, 0, cols - 1, 5, 1, 2};
  const Index n = Index(idx.size());
  const S sentinel = S(-777);
  std::vector<S> b_store(std::size_t((rows + 1) * n), sentinel);
  const MatrixView<S> Bout(b_store.data(), rows, n, rows + 1);
  B::Buffer<Index> idx_dev;
  B::copy_from_host(idx.data(), n, idx_dev);
  B::gather_cols(ctx, A, idx_dev.data(), Bout);
  for (Index j = 0; j < n; ++j) {
    for (Index i = 0; i < rows; ++i) REQUIRE(Bout(i, j) == A(i, idx[std::size_t(j)]));
    REQUIRE(b_store[std::size_t(rows + j * (rows + 1))] == sentinel);  // the gap is untouched
  }
  // No columns, or no rows: nothing is read or written.
  B::gather_cols(ctx, A, idx_dev.data(), MatrixView<S>(b_store.data(), rows, 0, rows + 1));
  std::vector<S> none(4, sentinel);
  B::gather_cols(ctx, ConstMatrixView<S>(a_store.data(), 0, cols, 0), idx_dev.data(),
                 MatrixView<S>(none.data(), 0, n, 0));
  REQUIRE(none == std::vector<S>(4, sentinel));
}

TEMPLATE_TEST_CASE("find_nonfinite finds the first NaN or Inf in column-major order", "[op][state]",
                   float, double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(42);
  const Index rows = 4, cols = 5, ld = 6;
  std::vector<S> store(std::size_t(ld * cols));
  for (auto& x : store) x = static_cast<S>(flowprior::normal01(rng));
  // Non-finite values in the gap between rows and ld are not part of the view.
  for (Index j = 0; j < cols; ++j) {
    store[std::size_t(rows + j * ld)] = std::numeric_limits<S>::quiet_NaN();
    store[std::size_t(rows + 1 + j * ld)] = std::numeric_limits<S>::infinity();
  }
  const MatrixView<S> A(store.data(), rows, cols, ld);
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(A)) == -1);
  // The largest finite values are finite.
  A(1, 1) = std::numeric_limits<S>::max();
  A(2, 2) = -std::numeric_limits<S>::max();
  A(3, 3) = std::numeric_limits<S>::denorm_min();
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(A)) == -1);
  // Every position, each kind of bad value, alone and with a later one.
  const S bad_values[] = {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(),
                          -std::numeric_limits<S>::infinity()};
  for (const S bad : bad_values)
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i) {
        CAPTURE(double(bad), i, j);
        const S keep = A(i, j);
        A(i, j) = bad;
        const Index k = first_nonfinite_cols(ctx, ConstMatrixView<S>(A));
        REQUIRE(k == i + j * rows);
        REQUIRE(k == first_nonfinite_loop(ConstMatrixView<S>(A)));
        const S keep_last = A(rows - 1, cols - 1);
        A(rows - 1, cols - 1) = std::numeric_limits<S>::quiet_NaN();  // a later one, or itself
        REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(A)) == i + j * rows);
        A(rows - 1, cols - 1) = keep_last;
        A(i, j) = keep;
      }
  // Empty views have no bad element.
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(store.data(), 0, cols, ld)) == -1);
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(store.data(), rows, 0, ld)) == -1);
  // A column vector; and a matrix big enough for the thread team's column split.
  const Index big_rows = 64, big_cols = 600;
  std::vector<S> big(std::size_t(big_rows * big_cols), S(1));
  const MatrixView<S> Big(big.data(), big_rows, big_cols);
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(Big)) == -1);
  Big(7, 555) = std::numeric_limits<S>::infinity();
  Big(63, 560) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(Big)) == 7 + 555 * big_rows);
  REQUIRE(first_nonfinite_cols(ctx, ConstMatrixView<S>(big.data() + 555 * big_rows + 7, 1, 1)) ==
          0);
}

TEST_CASE("copy_from_host and copy_to_host at pointers copy exactly the elements named",
          "[op][state]") {
  std::vector<double> dev(6, -1.0);
  const std::vector<double> host = {1, 2, 3};
  B::copy_from_host(host.data(), 3, dev.data() + 2);
  REQUIRE(dev == std::vector<double>({-1, -1, 1, 2, 3, -1}));
  std::vector<double> back(4, 9.0);
  B::copy_to_host(dev.data() + 1, 3, back.data());
  REQUIRE(back == std::vector<double>({-1, 1, 2, 9}));
  // A mutable view is accepted where the source is read; empty views copy nothing.
  B::copy_to_host(dev.data() + 4, 1, back.data() + 3);
  REQUIRE(back[3] == 3);
  B::copy_from_host(static_cast<const double*>(nullptr), 0, static_cast<double*>(nullptr));
  B::copy_to_host(static_cast<const double*>(nullptr), 0, static_cast<double*>(nullptr));
  REQUIRE(dev == std::vector<double>({-1, -1, 1, 2, 3, -1}));
}
