/// @file
/// Targets made from data, host-side (docs/math/evaluation.md):
/// - PatchPca: the top-d principal directions of the non-overlapping p x p patches of images,
///   and the whitened coefficients of every patch on them (a (d, N Np) target with unit variance
///   per dimension);                                                  evaluation.md (10)-(12)
/// - Standardizer: per-dimension mean and one global scale (or one scale per dimension) that
///   bring user features to unit mean square before data::RandomProjection.  evaluation.md (13)
/// Inputs are float or double views (one sample per column); every statistic is accumulated in
/// double. The state (means, directions, eigenvalues, scales) is read through accessors and
/// restored with set_state, so a caller can store it as named tensors with io/.
#pragma once

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace data {

namespace detail {
[[noreturn]] inline FLOWPRIOR_COLD void raise_value(const char* where, const std::string& what) {
  flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + where + ": " + what);
}
[[noreturn]] inline FLOWPRIOR_COLD void raise_state(const char* where, const std::string& what) {
  flowprior::detail::raise<error>(std::string("[flowprior.state] ") + where + ": " + what);
}

/// Flips the sign of each column of U so that its entry of largest magnitude (the first such
/// entry on a tie) is positive: the eigensolver's sign is arbitrary.      evaluation.md (11)
inline void fix_signs(Eigen::MatrixXd& U) {
  for (Index k = 0; k < U.cols(); ++k) {
    Index imax = 0;
    U.col(k).cwiseAbs().maxCoeff(&imax);
    if (U(imax, k) < 0) U.col(k) = -U.col(k);
  }
}
}  // namespace detail

/// Sizes of a PatchPca. Images are (C H W, N) columns in CHW order with H = W = image_size;
/// patches are the non-overlapping patch x patch squares (stride = patch), each a vector of
/// P = C p^2 values in the order of patchify (docs/math/patches.md (1)).
struct PatchPcaConfig {
  Index channels = 3;    ///< C
  Index image_size = 0;  ///< H = W, a multiple of patch
  Index patch = 0;       ///< p
  Index components = 0;  ///< d, 1 <= d <= C p^2

  Index patch_dim() const { return channels * patch * patch; }
  Index patches_per_image() const { return (image_size / patch) * (image_size / patch); }
  Index image_dim() const { return channels * image_size * image_size; }

  /// Throws config_error naming the field unless every size is positive, the patch divides the
  /// image, and 1 <= components <= C p^2 (sizes overflowing Index included).
  void validate() const {
    const char* w = "PatchPcaConfig";
    if (channels <= 0)
      raise_config(w, "channels must be positive, got " + std::to_string(channels));
    if (image_size <= 0)
      raise_config(w, "image_size must be positive, got " + std::to_string(image_size));
    if (patch <= 0) raise_config(w, "patch must be positive, got " + std::to_string(patch));
    if (image_size % patch != 0)
      raise_config(w, "patch (" + std::to_string(patch) + ") must divide image_size (" +
                          std::to_string(image_size) + ")");
    const Index P =
        checked_mul(w, "channels x patch^2", channels, checked_mul(w, "patch^2", patch, patch));
    checked_mul(w, "channels x image_size^2", channels,
                checked_mul(w, "image_size^2", image_size, image_size));
    if (components < 1 || components > P)
      raise_config(w, "components must lie in [1, C p^2 = " + std::to_string(P) + "], got " +
                          std::to_string(components));
  }
};

/// Principal components of image patches, and whitened patch coefficients as a target.
///
///   m = mean of the patches v,  Sigma = 1/(n-1) sum (v - m)(v - m)^T     evaluation.md (10)
///   Sigma u_k = lambda_k u_k,  lambda_1 >= ... >= lambda_d,  max-|.| entry of u_k positive (11)
///   coefficient_k(v) = u_k^T (v - m) / sqrt(lambda_k)                     evaluation.md (12)
///
/// over the n = N Np patches of the fitting images. The coefficients have mean 0 and identity
/// (unbiased) covariance on the fitting set. Not thread-safe while fitting; const methods may
/// run concurrently.
class PatchPca {
 public:
  /// Relative floor of a kept eigenvalue: lambda_d <= kEigenFloor * lambda_1 (or lambda_1 <= 0)
  /// is degenerate data (a direction of no variance cannot be whitened).
  static constexpr double kEigenFloor = 1e-12;

  /// Throws config_error (PatchPcaConfig::validate).
  explicit PatchPca(const PatchPcaConfig& cfg) : cfg_(cfg) { cfg_.validate(); }

  const PatchPcaConfig& config() const { return cfg_; }
  bool fitted() const { return fitted_; }

  /// Fits on images (C H W, N): the mean, the covariance (double) and its top-d eigenpairs.
  /// Throws shape_error for rows != C H W, value_error for fewer than d + 1 patches (N Np) or a
  /// kept eigenvalue below the floor (degenerate data), numeric_error for a non-finite pixel.
  /// On failure the previous fit is kept.                          evaluation.md (10)-(11)
  template <class S>
  void fit(ConstMatrixView<S> images) {
    const char* w = "PatchPca::fit";
    const Index P = cfg_.patch_dim(), Np = cfg_.patches_per_image(), d = cfg_.components;
    check_shape(w, "images", images, cfg_.image_dim(), images.cols);
    check_finite(w, "images", images);
    const Index n = checked_mul(w, "images x patches per image", images.cols, Np);
    if (n < d + 1)
      detail::raise_value(w, "needs at least components + 1 = " + std::to_string(d + 1) +
                                 " patches, got " + std::to_string(n) + " (" +
                                 std::to_string(images.cols) + " images of " + std::to_string(Np) +
                                 " patches)");
    // Pass 1: the mean. Pass 2: the centred co-moment, by blocks of patches (a rank-k update).
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(P);
    Eigen::VectorXd v(P);
    for (Index b = 0; b < images.cols; ++b)
      for (Index t = 0; t < Np; ++t) {
        gather(images.col(b), t, v.data());
        mean += v;
      }
    mean /= double(n);
    constexpr Index kBlock = 256;
    Eigen::MatrixXd block(P, kBlock);
    Eigen::MatrixXd M = Eigen::MatrixXd::Zero(P, P);
    Index filled = 0;
    for (Index b = 0; b < images.cols; ++b)
      for (Index t = 0; t < Np; ++t) {
        gather(images.col(b), t, block.col(filled).data());
        block.col(filled) -= mean;
        if (++filled == kBlock) {
          M.selfadjointView<Eigen::Lower>().rankUpdate(block);
          filled = 0;
        }
      }
    if (filled > 0) M.selfadjointView<Eigen::Lower>().rankUpdate(block.leftCols(filled));
    Eigen::MatrixXd cov = M.selfadjointView<Eigen::Lower>();
    cov /= double(n - 1);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(cov);
    if (es.info() != Eigen::Success) detail::raise_value(w, "the eigensolver did not converge");
    // Eigen sorts ascending: the top d are the last d, reversed.
    Eigen::VectorXd lambda = es.eigenvalues().tail(d).reverse();
    Eigen::MatrixXd U = es.eigenvectors().rightCols(d).rowwise().reverse();
    const double top = lambda(0);
    for (Index k = 0; k < d; ++k)
      if (!(top > 0) || !(lambda(k) > kEigenFloor * top))
        detail::raise_value(w, "component " + std::to_string(k) + " has eigenvalue " +
                                   std::to_string(lambda(k)) + " (largest " + std::to_string(top) +
                                   "): the data are degenerate in the kept directions; use "
                                   "fewer components");
    detail::fix_signs(U);
    mean_ = std::move(mean);
    components_ = std::move(U);
    eigenvalues_ = std::move(lambda);
    total_variance_ = cov.trace();
    build_whitener();
    fitted_ = true;
  }

  /// out (d, N Np) <- whitened coefficients of every patch of images (C H W, N); column
  /// n Np + j is patch j (patchify order) of image n.                 evaluation.md (12)
  /// Throws flowprior::error before a fit, shape_error, numeric_error for non-finite pixels.
  template <class S>
  void project(ConstMatrixView<S> images, MatrixView<S> out) const {
    const char* w = "PatchPca::project";
    require_fitted(w);
    const Index Np = cfg_.patches_per_image();
    check_shape(w, "images", images, cfg_.image_dim(), images.cols);
    check_shape(w, "out", out, cfg_.components, checked_mul(w, "N x Np", images.cols, Np));
    check_finite(w, "images", images);
    // Plain loops (no Eigen temporaries): GCC 12 at -O2 reports a false use-after-free in
    // Eigen's resize inside `c.noalias() = W * v` here.
    const Index P = cfg_.patch_dim(), d = cfg_.components;
    std::vector<double> v(static_cast<std::size_t>(P)), c(static_cast<std::size_t>(d));
    for (Index b = 0; b < images.cols; ++b)
      for (Index t = 0; t < Np; ++t) {
        gather(images.col(b), t, v.data());
        std::fill(c.begin(), c.end(), 0.0);
        for (Index j = 0; j < P; ++j) {
          const double vj = v[std::size_t(j)] - mean_(j);
          for (Index k = 0; k < d; ++k) c[std::size_t(k)] += whitener_(k, j) * vj;
        }
        S* o = out.col(b * Np + t);
        for (Index k = 0; k < d; ++k) o[k] = static_cast<S>(c[std::size_t(k)]);
      }
  }

  /// The same, returned as a new (d, N Np) matrix.
  template <class S>
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> project(ConstMatrixView<S> images) const {
    const char* w = "PatchPca::project";
    require_fitted(w);
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> out(
        cfg_.components, checked_mul(w, "N x Np", images.cols, cfg_.patches_per_image()));
    project<S>(images, MatrixView<S>(out));
    return out;
  }

  /// The patch mean m (P).
  const Eigen::VectorXd& mean() const { return mean_; }
  /// The directions u_1 .. u_d as the columns of a (P, d) orthonormal matrix.
  const Eigen::MatrixXd& components() const { return components_; }
  /// lambda_1 >= ... >= lambda_d > 0 (d): the variance of the patches along each direction.
  const Eigen::VectorXd& eigenvalues() const { return eigenvalues_; }
  /// lambda_k / tr(Sigma) (d): the share of the total patch variance each direction explains.
  Eigen::VectorXd explained_variance_ratio() const { return eigenvalues_ / total_variance_; }
  /// tr(Sigma), the total patch variance.
  double total_variance() const { return total_variance_; }

  /// Restores a fit from its parts (e.g. read back as named tensors): mean (P), components
  /// (P, d), eigenvalues (d, positive, descending), total variance (>= their sum). Throws
  /// shape_error, numeric_error or value_error (nothing changes then). The directions are
  /// taken as given (not re-orthonormalised).
  void set_state(const Eigen::VectorXd& mean, const Eigen::MatrixXd& components,
                 const Eigen::VectorXd& eigenvalues, double total_variance) {
    const char* w = "PatchPca::set_state";
    const Index P = cfg_.patch_dim(), d = cfg_.components;
    check_shape(w, "mean", ConstMatrixView<double>(mean), P, 1);
    check_shape(w, "components", ConstMatrixView<double>(components), P, d);
    check_shape(w, "eigenvalues", ConstMatrixView<double>(eigenvalues), d, 1);
    check_finite(w, "mean", ConstMatrixView<double>(mean));
    check_finite(w, "components", ConstMatrixView<double>(components));
    check_finite(w, "eigenvalues", ConstMatrixView<double>(eigenvalues));
    for (Index k = 0; k < d; ++k)
      if (!(eigenvalues(k) > 0) || (k > 0 && eigenvalues(k) > eigenvalues(k - 1)))
        detail::raise_value(w, "eigenvalues must be positive and descending");
    if (!std::isfinite(total_variance) || total_variance < eigenvalues.sum() * (1 - 1e-12))
      detail::raise_value(w, "total_variance must be finite and at least the eigenvalues' sum");
    mean_ = mean;
    components_ = components;
    eigenvalues_ = eigenvalues;
    total_variance_ = total_variance;
    build_whitener();
    fitted_ = true;
  }

 private:
  /// v (P) <- patch t (patchify order) of one image column, in double.   patches.md (1)
  template <class S>
  void gather(const S* img, Index t, double* v) const {
    const Index p = cfg_.patch, H = cfg_.image_size, gw = H / p;
    const Index y0 = (t / gw) * p, x0 = (t % gw) * p;
    for (Index c = 0; c < cfg_.channels; ++c)
      for (Index i = 0; i < p; ++i) {
        const S* row = img + c * H * H + (y0 + i) * H + x0;
        double* o = v + (c * p + i) * p;
        for (Index j = 0; j < p; ++j) o[j] = double(row[j]);
      }
  }

  void require_fitted(const char* where) const {
    if (!fitted_) detail::raise_state(where, "call fit() or set_state() first");
  }

  /// (d, P): row k is u_k^T / sqrt(lambda_k).
  void build_whitener() {
    whitener_ = eigenvalues_.cwiseSqrt().cwiseInverse().asDiagonal() * components_.transpose();
  }

  PatchPcaConfig cfg_;
  bool fitted_ = false;
  Eigen::VectorXd mean_;
  Eigen::MatrixXd components_;
  Eigen::VectorXd eigenvalues_;
  Eigen::MatrixXd whitener_;
  double total_variance_ = 0;
};

/// How a Standardizer scales the centred features.
enum class StandardizerScale {
  Global,  ///< one scale s for all dimensions: the RMS of the centred features     (13)
  PerDim,  ///< one scale s_i per dimension: its standard deviation                  (14)
};

/// Brings features to unit scale: out = (f - mu) / s, with mu the per-dimension mean of the
/// fitting set and s (evaluation.md (13)-(14))
///   Global: s = sqrt( 1/(N D) sum_n sum_i (f_in - mu_i)^2 )   (unit mean square overall)
///   PerDim: s_i = sqrt( 1/N sum_n (f_in - mu_i)^2 )            (unit mean square per dim)
/// (population moments, so that the fitting set's output has mean square exactly 1). Global
/// keeps the relative scale of the dimensions, as a fixed random projection expects.
class Standardizer {
 public:
  explicit Standardizer(StandardizerScale mode = StandardizerScale::Global) : mode_(mode) {
    if (mode != StandardizerScale::Global && mode != StandardizerScale::PerDim)
      raise_config("Standardizer", "unknown StandardizerScale");
  }

  StandardizerScale mode() const { return mode_; }
  bool fitted() const { return mean_.size() > 0; }
  Index dim() const { return Index(mean_.size()); }

  /// Fits on features (D, N), N >= 2, accumulated in double. Throws shape_error for an empty
  /// matrix, value_error for N < 2 or a zero scale (constant features, or a constant dimension
  /// in PerDim mode), numeric_error for non-finite values. The previous fit is kept on failure.
  template <class S>
  void fit(ConstMatrixView<S> features) {
    const char* w = "Standardizer::fit";
    if (features.rows < 1) check_shape(w, "features", features, 1, features.cols);
    if (features.cols < 2)
      detail::raise_value(w, "needs at least 2 samples, got " + std::to_string(features.cols));
    check_finite(w, "features", features);
    const Index D = features.rows, N = features.cols;
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(D), sq = Eigen::VectorXd::Zero(D);
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < D; ++i) mean(i) += double(features(i, n));
    mean /= double(N);
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < D; ++i) {
        const double c = double(features(i, n)) - mean(i);
        sq(i) += c * c;
      }
    Eigen::VectorXd scale(D);
    if (mode_ == StandardizerScale::Global) {
      scale.setConstant(std::sqrt(sq.sum() / (double(N) * double(D))));
    } else {
      scale = (sq / double(N)).cwiseSqrt();
    }
    for (Index i = 0; i < D; ++i)
      if (!(scale(i) > 0))
        detail::raise_value(w,
                            mode_ == StandardizerScale::Global
                                ? std::string("the features are constant (zero scale)")
                                : "dimension " + std::to_string(i) +
                                      " is constant (zero scale); use StandardizerScale::Global");
    mean_ = std::move(mean);
    scale_ = std::move(scale);
  }

  /// out (D, N) <- (in - mu) / s, computed in double. in and out may be the same matrix.
  /// Throws flowprior::error before a fit, shape_error, numeric_error for non-finite input.
  template <class S>
  void apply(ConstMatrixView<S> in, MatrixView<S> out) const {
    const char* w = "Standardizer::apply";
    if (!fitted()) detail::raise_state(w, "call fit() or set_state() first");
    check_shape(w, "in", in, dim(), in.cols);
    check_shape(w, "out", out, dim(), in.cols);
    check_finite(w, "in", in);
    for (Index n = 0; n < in.cols; ++n)
      for (Index i = 0; i < dim(); ++i)
        out(i, n) = static_cast<S>((double(in(i, n)) - mean_(i)) / scale_(i));
  }

  /// mu (D).
  const Eigen::VectorXd& mean() const { return mean_; }
  /// s (D): all entries equal in Global mode.
  const Eigen::VectorXd& scale() const { return scale_; }

  /// Restores a fit: mean and scale of the same size D >= 1, finite, scale > 0 (and all equal
  /// in Global mode). Throws shape_error, numeric_error or value_error (nothing changes then).
  void set_state(const Eigen::VectorXd& mean, const Eigen::VectorXd& scale) {
    const char* w = "Standardizer::set_state";
    if (mean.size() < 1) check_shape(w, "mean", ConstMatrixView<double>(mean), 1, 1);
    check_shape(w, "scale", ConstMatrixView<double>(scale), mean.size(), 1);
    check_finite(w, "mean", ConstMatrixView<double>(mean));
    check_finite(w, "scale", ConstMatrixView<double>(scale));
    for (Index i = 0; i < scale.size(); ++i) {
      if (!(scale(i) > 0)) detail::raise_value(w, "every scale must be positive");
      if (mode_ == StandardizerScale::Global && scale(i) != scale(0))
        detail::raise_value(w, "a Global standardizer has one scale for all dimensions");
    }
    mean_ = mean;
    scale_ = scale;
  }

 private:
  StandardizerScale mode_;
  Eigen::VectorXd mean_, scale_;
};

}  // namespace data
}  // namespace flowprior
