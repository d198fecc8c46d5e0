/// @file
/// Isotropic Gaussian mixtures and their exact flow-matching velocity fields: oracles that plug
/// in wherever a trained field does (losses, training, ODE likelihoods), so those can be tested
/// against closed-form answers. Equations: docs/math/gaussian_mixture.md.
///
///   p(x) = sum_k pi_k N(x; mu_k, s_k^2 I)
///
/// GaussianMixtureField is the exact marginal velocity E[u | x_t = z] in the Paper convention
/// (x_t = (1 - t) eps + t x, u = x - eps); wrap it as Prior(field, Convention::Paper) and use
/// .as(Convention::Code) for the code convention. All arithmetic is in double whatever S is.
#pragma once

#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <limits>
#include <string>
#include <vector>

namespace flowprior {
namespace analytic {

/// An isotropic Gaussian mixture in R^dim.
class GaussianMixture {
 public:
  GaussianMixture() = default;

  /// @param means   (dim, K) column-major, one column per component
  /// @param stds    (K) component standard deviations, > 0
  /// @param weights (K) positive mixture weights (normalised here)
  GaussianMixture(ConstMatrixView<double> means, std::vector<double> stds,
                  std::vector<double> weights)
      : dim_(means.rows), stds_(std::move(stds)), weights_(std::move(weights)) {
    const char* w = "GaussianMixture";
    const Index K = means.cols;
    if (dim_ <= 0 || K <= 0) raise_config(w, "needs dim >= 1 and at least one component");
    if (Index(stds_.size()) != K) detail::raise_size(w, "stds", Index(stds_.size()), K);
    if (Index(weights_.size()) != K) detail::raise_size(w, "weights", Index(weights_.size()), K);
    check_finite<double>(w, "means", means);
    checked_resize(w, "the means", means_, checked_mul(w, "dim x components", dim_, K));
    for (Index k = 0; k < K; ++k)
      for (Index i = 0; i < dim_; ++i) means_[std::size_t(k * dim_ + i)] = means(i, k);
    double total = 0;
    for (Index k = 0; k < K; ++k) {
      if (!(stds_[std::size_t(k)] > 0) || !std::isfinite(stds_[std::size_t(k)]))
        raise_config(w, "stds[" + std::to_string(k) + "] must be positive and finite");
      if (!(weights_[std::size_t(k)] > 0) || !std::isfinite(weights_[std::size_t(k)]))
        raise_config(w, "weights[" + std::to_string(k) + "] must be positive and finite");
      total += weights_[std::size_t(k)];
    }
    for (auto& x : weights_) x /= total;
  }

  /// N(mean, std^2 I) in R^dim (mean 0 when `mean` is empty).
  static GaussianMixture isotropic(Index dim, double std, std::vector<double> mean = {}) {
    if (mean.empty()) mean.assign(static_cast<std::size_t>(dim), 0.0);
    return GaussianMixture(ConstMatrixView<double>(mean.data(), Index(mean.size()), 1), {std},
                           {1.0});
  }

  Index dim() const { return dim_; }
  Index components() const { return Index(stds_.size()); }
  const double* mean(Index k) const { return means_.data() + k * dim_; }
  double stddev(Index k) const { return stds_[std::size_t(k)]; }
  double weight(Index k) const { return weights_[std::size_t(k)]; }

  /// log p(x) of one point.                                 gaussian_mixture.md (1)
  double log_density(const double* x) const {
    double mx = -std::numeric_limits<double>::infinity();
    std::vector<double> lw(static_cast<std::size_t>(components()));
    for (Index k = 0; k < components(); ++k) {
      const double s2 = stds_[std::size_t(k)] * stds_[std::size_t(k)];
      double r2 = 0;
      for (Index i = 0; i < dim_; ++i) {
        const double d = x[i] - mean(k)[i];
        r2 += d * d;
      }
      lw[std::size_t(k)] = std::log(weights_[std::size_t(k)]) -
                           0.5 * double(dim_) * std::log(2 * 3.14159265358979323846 * s2) -
                           0.5 * r2 / s2;
      mx = std::max(mx, lw[std::size_t(k)]);
    }
    double s = 0;
    for (double l : lw) s += std::exp(l - mx);
    return mx + std::log(s);
  }

  /// out[b] = log p(x[:, b]).
  template <class S>
  void log_density(ConstMatrixView<S> x, VectorView<S> out) const {
    const char* w = "GaussianMixture::log_density";
    check_shape(w, "x", x, dim_, x.cols);
    check_size(w, "out", out, x.cols);
    std::vector<double> col(static_cast<std::size_t>(dim_));
    for (Index b = 0; b < x.cols; ++b) {
      for (Index i = 0; i < dim_; ++i) col[std::size_t(i)] = static_cast<double>(x(i, b));
      out[b] = static_cast<S>(log_density(col.data()));
    }
  }

  /// Fills out (dim, n) with independent samples.
  template <class S>
  void sample(MatrixView<S> out, Rng& rng) const {
    check_shape("GaussianMixture::sample", "out", out, dim_, out.cols);
    for (Index b = 0; b < out.cols; ++b) {
      const Index k = pick_component(rng);
      for (Index i = 0; i < dim_; ++i)
        out(i, b) = static_cast<S>(mean(k)[i] + stds_[std::size_t(k)] * normal01(rng));
    }
  }

  /// A component index drawn with the mixture weights.
  Index pick_component(Rng& rng) const {
    const double u = uniform01(rng);
    double c = 0;
    for (Index k = 0; k + 1 < components(); ++k) {
      c += weights_[std::size_t(k)];
      if (u < c) return k;
    }
    return components() - 1;
  }

 private:
  Index dim_ = 0;
  std::vector<double> means_;  // (dim, K)
  std::vector<double> stds_, weights_;
};

/// Exact marginal velocity of a Gaussian mixture, Paper convention (x_t = (1-t) eps + t x):
///   a_k = (1-t)^2 + t^2 s_k^2,  w_k(z) ∝ pi_k N(z; t mu_k, a_k I),
///   v(z, t) = sum_k w_k [ mu_k + ((t s_k^2 - (1-t)) / a_k) (z - t mu_k) ]  gaussian_mixture.md (2)
/// and its Jacobian J = (sum_k w_k c_k) I + sum_k w_k m_k (g_k - gbar)^T    gaussian_mixture.md (3)
/// Same field API as the networks (forward, vjp_x, backward, jvp_x, divergence); it has no
/// parameters (num_params() == 0).
template <class S>
class GaussianMixtureField {
 public:
  using Scalar = S;
  /// The convention the formula is written in.
  static constexpr Convention convention = Convention::Paper;

  class Workspace {
   public:
    Index batch() const { return batch_; }

   private:
    friend class GaussianMixtureField;
    std::vector<double> jac;  // (dim*dim, B): J of each row, column-major per row
    std::vector<double> tmp;
    Index batch_ = -1;
    const void* owner_ = nullptr;
  };

  explicit GaussianMixtureField(GaussianMixture gmm) : gmm_(std::move(gmm)) {}

  const GaussianMixture& mixture() const { return gmm_; }
  Index dim() const { return gmm_.dim(); }
  Index num_params() const { return 0; }

  /// v_out (dim, B) = v(x, t); caches the Jacobians for vjp_x / jvp_x.
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    const char* w = "GaussianMixtureField::forward";
    const Index d = dim();
    check_shape(w, "x", x, d, x.cols);
    check_size(w, "t", t, x.cols);
    check_shape(w, "v", v_out, d, x.cols);
    check_unit_interval(w, "t", t);
    const Index B = x.cols, K = gmm_.components();
    checked_resize(w, "the Jacobian cache", ws.jac,
                   checked_mul(w, "dim x dim x batch", checked_mul(w, "dim x dim", d, d), B));
    ws.tmp.resize(static_cast<std::size_t>(K * (2 * d + 3) + 2 * d));
    double* lw = ws.tmp.data();  // (K) log weights -> weights
    double* ck = lw + K;         // (K)
    double* ak = ck + K;         // (K)
    double* mk = ak + K;         // (d, K)
    double* gk = mk + d * K;     // (d, K)
    double* vbar = gk + d * K;   // (d)
    double* gbar = vbar + d;     // (d)
    for (Index b = 0; b < B; ++b) {
      const double tt = static_cast<double>(t[b]);
      double mx = -std::numeric_limits<double>::infinity();
      for (Index k = 0; k < K; ++k) {
        const double s2 = gmm_.stddev(k) * gmm_.stddev(k);
        const double a = (1 - tt) * (1 - tt) + tt * tt * s2;
        ak[k] = a;
        ck[k] = (tt * s2 - (1 - tt)) / a;
        double r2 = 0;
        for (Index i = 0; i < d; ++i) {
          const double diff = static_cast<double>(x(i, b)) - tt * gmm_.mean(k)[i];
          r2 += diff * diff;
          mk[k * d + i] = gmm_.mean(k)[i] + ck[k] * diff;
          gk[k * d + i] = -diff / a;
        }
        lw[k] = std::log(gmm_.weight(k)) - 0.5 * double(d) * std::log(a) - 0.5 * r2 / a;
        mx = std::max(mx, lw[k]);
      }
      double norm = 0;
      for (Index k = 0; k < K; ++k) norm += (lw[k] = std::exp(lw[k] - mx));
      double csum = 0;
      for (Index i = 0; i < d; ++i) vbar[i] = gbar[i] = 0;
      for (Index k = 0; k < K; ++k) {
        lw[k] /= norm;
        csum += lw[k] * ck[k];
        for (Index i = 0; i < d; ++i) {
          vbar[i] += lw[k] * mk[k * d + i];
          gbar[i] += lw[k] * gk[k * d + i];
        }
      }
      double* J = ws.jac.data() + b * d * d;  // J(i, j) = J[i + j d] = dv_i / dz_j
      for (Index j = 0; j < d; ++j)
        for (Index i = 0; i < d; ++i) {
          double s = (i == j) ? csum : 0.0;
          for (Index k = 0; k < K; ++k) s += lw[k] * mk[k * d + i] * (gk[k * d + j] - gbar[j]);
          J[i + j * d] = s;
        }
      for (Index i = 0; i < d; ++i) v_out(i, b) = static_cast<S>(vbar[i]);
    }
    ws.batch_ = B;
    ws.owner_ = this;
  }

  /// d_x += J^T d_v.
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    const char* w = "GaussianMixtureField::vjp_x";
    require_forward(w, ws);
    const Index d = dim();
    check_shape(w, "d_v", d_v, d, ws.batch_);
    check_shape(w, "d_x", d_x, d, ws.batch_);
    for (Index b = 0; b < ws.batch_; ++b) {
      const double* J = ws.jac.data() + b * d * d;
      for (Index j = 0; j < d; ++j) {
        double s = 0;
        for (Index i = 0; i < d; ++i) s += J[i + j * d] * static_cast<double>(d_v(i, b));
        d_x(j, b) += static_cast<S>(s);
      }
    }
  }

  /// No parameters: d_x += J^T d_v where d_x is non-empty; d_params must be empty.
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    check_size("GaussianMixtureField::backward", "d_params", d_params, 0);
    if (!d_x.empty()) vjp_x(ws, d_v, d_x);
  }

  /// dv_out = J dx for K tangents per sample (columns b*K + k).
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    const char* w = "GaussianMixtureField::jvp_x";
    require_forward(w, ws);
    check_tangents(w, K);
    const Index d = dim();
    check_shape(w, "dx", dx, d, ws.batch_ * K);
    check_shape(w, "dv", dv_out, d, ws.batch_ * K);
    for (Index col = 0; col < dx.cols; ++col) {
      const double* J = ws.jac.data() + (col / K) * d * d;
      for (Index i = 0; i < d; ++i) {
        double s = 0;
        for (Index j = 0; j < d; ++j) s += J[i + j * d] * static_cast<double>(dx(j, col));
        dv_out(i, col) = static_cast<S>(s);
      }
    }
  }

  /// v and tr(J) per sample.                                gaussian_mixture.md (4)
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws) const {
    check_size("GaussianMixtureField::divergence", "div", div_out, x.cols);
    forward(x, t, v_out, ws);
    const Index d = dim();
    for (Index b = 0; b < x.cols; ++b) {
      const double* J = ws.jac.data() + b * d * d;
      double tr = 0;
      for (Index i = 0; i < d; ++i) tr += J[i + i * d];
      div_out[b] = static_cast<S>(tr);
    }
  }

 private:
  void require_forward(const char* w, const Workspace& ws) const {
    check_forward_done(w, ws.batch_, ws.owner_, this);
  }

  GaussianMixture gmm_;
};

}  // namespace analytic
}  // namespace flowprior
