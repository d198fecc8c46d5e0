/// @file
/// Streaming feature statistics and the Frechet distance between two Gaussians fitted to them
/// (the FID formula, on any features). docs/math/evaluation.md (1)-(4).
#pragma once

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <string>

namespace flowprior {
namespace eval {

namespace detail {
[[noreturn]] inline FLOWPRIOR_COLD void raise_stats_value(const char* where,
                                                          const std::string& what) {
  flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + where + ": " + what);
}
}  // namespace detail

/// Running mean and co-moment of D-dimensional features, in double. add() takes batches of any
/// size; batches are merged with the pairwise update of Chan, Golub and LeVeque, so the result
/// does not depend (beyond rounding) on how the samples were cut into batches:
///   n = n_a + n_b,  delta = m_b - m_a,  m = m_a + delta n_b / n,
///   M = M_a + M_b + delta delta^T n_a n_b / n                          evaluation.md (1)
/// with M the co-moment sum (x - m)(x - m)^T; covariance = M / (n - 1) (unbiased).
class FeatureStats {
 public:
  /// dim 0: the dimension is taken from the first batch. Throws config_error for dim < 0.
  explicit FeatureStats(Index dim = 0) : dim_(dim) {
    if (dim < 0) raise_config("FeatureStats", "dim must be >= 0, got " + std::to_string(dim));
    if (dim > 0) reset_storage();
  }

  Index dim() const { return dim_; }
  /// Number of samples added.
  Index count() const { return n_; }

  /// Adds the columns of features (D, n) (n may be 0). Throws shape_error when D differs from
  /// the dimension, numeric_error for non-finite values (the statistics are unchanged then).
  template <class S>
  void add(ConstMatrixView<S> features) {
    const char* w = "FeatureStats::add";
    if (features.cols == 0 && (dim_ == 0 || features.rows == dim_)) return;
    if (dim_ != 0) check_shape(w, "features", features, dim_, features.cols);
    if (features.rows == 0) check_shape(w, "features", features, 1, features.cols);
    check_finite(w, "features", features);
    if (dim_ == 0) {
      dim_ = features.rows;
      reset_storage();
    }
    // The batch's own mean and co-moment (two passes, blocks of columns as a rank-k update).
    const Index nb = features.cols;
    Eigen::VectorXd mb = Eigen::VectorXd::Zero(dim_);
    for (Index j = 0; j < nb; ++j)
      for (Index i = 0; i < dim_; ++i) mb(i) += double(features(i, j));
    mb /= double(nb);
    Eigen::MatrixXd Mb = Eigen::MatrixXd::Zero(dim_, dim_);
    constexpr Index kBlock = 256;
    Eigen::MatrixXd block(dim_, std::min(kBlock, nb));
    for (Index j0 = 0; j0 < nb; j0 += kBlock) {
      const Index m = std::min(kBlock, nb - j0);
      for (Index j = 0; j < m; ++j)
        for (Index i = 0; i < dim_; ++i) block(i, j) = double(features(i, j0 + j)) - mb(i);
      Mb.selfadjointView<Eigen::Lower>().rankUpdate(block.leftCols(m));
    }
    merge_parts(nb, mb, Mb);
  }

  /// Merges another accumulator into this one (evaluation.md (1)). Throws shape_error when the
  /// dimensions differ (an empty accumulator of dimension 0 adopts the other's).
  void merge(const FeatureStats& other) {
    if (other.n_ == 0) return;
    if (dim_ == 0) {
      dim_ = other.dim_;
      reset_storage();
    }
    if (other.dim_ != dim_)
      flowprior::detail::raise_size("FeatureStats::merge", "other.dim()", other.dim_, dim_);
    Eigen::MatrixXd Mb = other.M_.selfadjointView<Eigen::Lower>();
    merge_parts(other.n_, other.mean_, Mb);
  }

  /// The mean (D). Zero before any sample.
  const Eigen::VectorXd& mean() const { return mean_; }

  /// The unbiased covariance M / (n - 1) (D, D), symmetric. Throws value_error for n < 2.
  Eigen::MatrixXd covariance() const {
    if (n_ < 2)
      detail::raise_stats_value("FeatureStats::covariance",
                                "needs at least 2 samples, got " + std::to_string(n_));
    Eigen::MatrixXd c = M_.selfadjointView<Eigen::Lower>();
    return c / double(n_ - 1);
  }

  /// Forgets every sample (keeps the dimension).
  void reset() {
    n_ = 0;
    reset_storage();
  }

 private:
  void reset_storage() {
    mean_ = Eigen::VectorXd::Zero(dim_);
    M_ = Eigen::MatrixXd::Zero(dim_, dim_);
  }

  /// Chan et al.'s update with a part of nb samples, mean mb, co-moment Mb (lower triangle
  /// used).                                                               evaluation.md (1)
  void merge_parts(Index nb, const Eigen::VectorXd& mb, const Eigen::MatrixXd& Mb) {
    const double na = double(n_), n = na + double(nb);
    const Eigen::VectorXd delta = mb - mean_;
    mean_ += delta * (double(nb) / n);
    M_.triangularView<Eigen::Lower>() += Mb;
    M_.selfadjointView<Eigen::Lower>().rankUpdate(delta, na * double(nb) / n);
    n_ += nb;
  }

  Index dim_ = 0;
  Index n_ = 0;
  Eigen::VectorXd mean_;
  Eigen::MatrixXd M_;  ///< co-moment, lower triangle
};

/// Relative tolerance of the symmetric square roots: eigenvalues in [-kPsdTolerance * scale, 0),
/// scale the largest eigenvalue's magnitude, are rounding of a semidefinite matrix and set to 0.
/// A symmetric eigensolver is backward stable to about D * 2^-52 * ||A||; 1e-9 leaves room for
/// D up to about 10^6. A more negative eigenvalue is a value_error (not a covariance).
inline constexpr double kPsdTolerance = 1e-9;

namespace detail {
/// Eigenvalues of the symmetric A with the tolerance above applied (clamped at 0).
inline Eigen::VectorXd psd_eigenvalues(const char* where, const char* name,
                                       const Eigen::MatrixXd& A, Eigen::MatrixXd* vectors) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(
      A, vectors ? Eigen::ComputeEigenvectors : Eigen::EigenvaluesOnly);
  if (es.info() != Eigen::Success)
    raise_stats_value(where, std::string(name) + ": no eigen-decomposition");
  Eigen::VectorXd l = es.eigenvalues();
  const double scale = l.cwiseAbs().maxCoeff();
  for (Index i = 0; i < l.size(); ++i) {
    if (l(i) < -kPsdTolerance * scale)
      raise_stats_value(where, std::string(name) + " is not positive semi-definite (eigenvalue " +
                                   std::to_string(l(i)) + ", largest magnitude " +
                                   std::to_string(scale) + ")");
    l(i) = std::max(l(i), 0.0);
  }
  if (vectors) *vectors = es.eigenvectors();
  return l;
}
}  // namespace detail

/// The Frechet distance between N(mu1, S1) and N(mu2, S2):
///   d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}   evaluation.md (2)
/// Both square roots are taken through symmetric eigen-decompositions (evaluation.md (3)), never
/// a general matrix square root: real by construction. Returns max(d^2, 0) (the squared distance,
/// as FID reports it; rounding can make identical inputs a few ulps negative). Throws
/// shape_error for mismatched sizes, numeric_error for non-finite entries, value_error for a
/// matrix that is not symmetric positive semi-definite within kPsdTolerance. The matrices are
/// symmetrised ((S + S^T) / 2) first.
inline double frechet_distance(const Eigen::VectorXd& mu1, const Eigen::MatrixXd& S1,
                               const Eigen::VectorXd& mu2, const Eigen::MatrixXd& S2) {
  const char* w = "frechet_distance";
  const Index D = mu1.size();
  check_shape(w, "S1", ConstMatrixView<double>(S1), D, D);
  check_shape(w, "mu2", ConstMatrixView<double>(mu2), D, 1);
  check_shape(w, "S2", ConstMatrixView<double>(S2), D, D);
  check_finite(w, "mu1", ConstMatrixView<double>(mu1));
  check_finite(w, "S1", ConstMatrixView<double>(S1));
  check_finite(w, "mu2", ConstMatrixView<double>(mu2));
  check_finite(w, "S2", ConstMatrixView<double>(S2));
  if (D == 0) return 0.0;
  const Eigen::MatrixXd A = 0.5 * (S1 + S1.transpose());
  const Eigen::MatrixXd B = 0.5 * (S2 + S2.transpose());
  // S1^{1/2} = V diag(sqrt l) V^T;  C = S1^{1/2} S2 S1^{1/2} is symmetric PSD.   (3)
  Eigen::MatrixXd V;
  const Eigen::VectorXd l = detail::psd_eigenvalues(w, "S1", A, &V);
  const Eigen::MatrixXd R = V * l.cwiseSqrt().asDiagonal() * V.transpose();
  Eigen::MatrixXd C = R * B * R;
  C = 0.5 * (C + C.transpose()).eval();
  const Eigen::VectorXd c = detail::psd_eigenvalues(w, "S1^{1/2} S2 S1^{1/2}", C, nullptr);
  const double d2 = (mu1 - mu2).squaredNorm() + A.trace() + B.trace() - 2.0 * c.cwiseSqrt().sum();
  return std::max(d2, 0.0);
}

/// The Frechet distance between the Gaussians of two accumulators (their means and unbiased
/// covariances), evaluation.md (2). Throws shape_error when the dimensions differ, value_error
/// when either holds fewer than 2 samples.
inline double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  const char* w = "frechet_distance";
  if (a.dim() != b.dim()) flowprior::detail::raise_size(w, "b.dim()", b.dim(), a.dim());
  if (a.count() < 2 || b.count() < 2)
    detail::raise_stats_value(w, "each set needs at least 2 samples, got " +
                                     std::to_string(a.count()) + " and " +
                                     std::to_string(b.count()));
  return frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance());
}

}  // namespace eval
}  // namespace flowprior
