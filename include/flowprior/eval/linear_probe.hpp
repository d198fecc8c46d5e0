/// @file
/// A linear probe: multinomial logistic regression on frozen features, fitted full-batch and
/// deterministically with L-BFGS, reporting train and test accuracy. docs/math/evaluation.md
/// (6)-(9).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <deque>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace flowprior {
namespace eval {

namespace detail {
[[noreturn]] inline FLOWPRIOR_COLD void raise_probe_value(const char* where,
                                                          const std::string& what) {
  flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + where + ": " + what);
}

/// Checks labels (one per sample, in [0, classes)) and returns them as Index.
template <class L>
std::vector<Index> checked_labels(const char* where, const char* name, const std::vector<L>& y,
                                  Index n, Index classes) {
  static_assert(std::is_integral_v<L>, "labels are integers");
  if (Index(y.size()) != n) flowprior::detail::raise_size(where, name, Index(y.size()), n);
  std::vector<Index> out(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    const long long v = static_cast<long long>(y[i]);
    if (v < 0 || v >= static_cast<long long>(classes))
      raise_probe_value(where, std::string("argument '") + name + "' holds " + std::to_string(v) +
                                   " at index " + std::to_string(i) +
                                   ", outside [0, classes = " + std::to_string(classes) + ")");
    out[i] = Index(v);
  }
  return out;
}
}  // namespace detail

/// Options of the probe. L-BFGS stops when the gradient's largest entry is at most grad_tol, or
/// after max_iter iterations, or when a line search finds no decrease (converged = false then).
struct LinearProbeConfig {
  double l2 = 1e-4;        ///< lambda of (6): penalty on the weights (not the biases), >= 0
  Index max_iter = 500;    ///< L-BFGS iterations
  double grad_tol = 1e-6;  ///< stop when max |grad| <= grad_tol
  Index history = 10;      ///< L-BFGS memory (pairs kept)

  /// Throws config_error naming the field.
  void validate() const {
    const char* w = "LinearProbeConfig";
    if (!(l2 >= 0) || !std::isfinite(l2)) raise_config(w, "l2 must be finite and >= 0");
    if (max_iter < 1) raise_config(w, "max_iter must be positive");
    if (!(grad_tol > 0) || !std::isfinite(grad_tol))
      raise_config(w, "grad_tol must be finite and positive");
    if (history < 1) raise_config(w, "history must be positive");
  }
};

/// The objective of the probe on standardised features z (D, N) with labels y_n, parameters
/// theta = [W (C, D) column-major; b (C)]:
///   f = 1/N sum_n ( logsumexp(W z_n + b) - (W z_n + b)_{y_n} ) + lambda/2 |W|_F^2   (6)
///   d_W = 1/N (P - Y) z^T + lambda W,  d_b = 1/N sum_n (p_n - e_{y_n})            (7)
/// with p_n = softmax(W z_n + b), Y the one-hot labels. Holds a reference to z: z must outlive
/// it. Convex; strictly convex in W for lambda > 0.
class SoftmaxObjective {
 public:
  SoftmaxObjective(const Eigen::MatrixXd& z, std::vector<Index> labels, Index classes, double l2)
      : z_(z), y_(std::move(labels)), C_(classes), l2_(l2) {}

  Index num_params() const { return C_ * z_.rows() + C_; }

  /// f(theta) (6); grad (num_params) <- (7) when non-null (overwritten).
  double value(const Eigen::VectorXd& theta, Eigen::VectorXd* grad) const {
    const Index D = z_.rows(), N = z_.cols();
    const Eigen::Map<const Eigen::MatrixXd> W(theta.data(), C_, D);
    const Eigen::Map<const Eigen::VectorXd> b(theta.data() + C_ * D, C_);
    Eigen::MatrixXd P(C_, N);
    P.noalias() = W * z_;
    P.colwise() += b;
    double f = 0;
    for (Index n = 0; n < N; ++n) {
      auto col = P.col(n);
      const double m = col.maxCoeff();
      const double zy = col(y_[std::size_t(n)]) - m;
      col.array() = (col.array() - m).exp();
      const double s = col.sum();
      f += std::log(s) - zy;  // -log p_y = log sum exp(z - m) - (z_y - m)
      col /= s;
      col(y_[std::size_t(n)]) -= 1.0;  // P - Y
    }
    f = f / double(N) + 0.5 * l2_ * W.squaredNorm();
    if (grad) {
      grad->resize(num_params());
      Eigen::Map<Eigen::MatrixXd> gW(grad->data(), C_, D);
      gW.noalias() = P * z_.transpose();
      gW /= double(N);
      gW += l2_ * W;
      grad->tail(C_) = P.rowwise().sum() / double(N);
    }
    return f;
  }

 private:
  const Eigen::MatrixXd& z_;
  std::vector<Index> y_;
  Index C_;
  double l2_;
};

/// What linear_probe reports.
struct LinearProbeResult {
  double train_accuracy = 0;  ///< share of training samples classified correctly
  double test_accuracy = 0;   ///< share of test samples classified correctly
  double loss = 0;            ///< final objective (6) on the training set
  Index iterations = 0;       ///< L-BFGS iterations run
  bool converged = false;     ///< the gradient test of LinearProbeConfig was met
};

/// Multinomial logistic regression on features (D, N) with labels in [0, classes).
///
/// fit() standardises each feature dimension with the training mean and standard deviation
/// (evaluation.md (8); a constant dimension gets scale 1), then minimises (6) from theta = 0 with
/// L-BFGS (two-loop recursion, Armijo backtracking from the unit step; evaluation.md (9)). Why
/// L-BFGS: the objective is smooth and convex, a full-batch method is deterministic with no
/// learning rate to tune, each iteration costs two products of the (C, D) weights with the
/// features, and its memory is O(history (C D)) where Newton's Hessian would be (C D)^2.
class LinearProbe {
 public:
  /// Throws config_error for classes < 2 or an invalid config.
  explicit LinearProbe(Index classes, const LinearProbeConfig& cfg = {})
      : classes_(classes), cfg_(cfg) {
    if (classes < 2)
      raise_config("LinearProbe", "classes must be >= 2, got " + std::to_string(classes));
    cfg_.validate();
  }

  /// Fits on features (D, N) with N labels. Throws value_error for an empty set or a label
  /// outside [0, classes), shape_error for a label count other than N (or D = 0),
  /// numeric_error for non-finite features.
  template <class S, class L>
  void fit(ConstMatrixView<S> features, const std::vector<L>& labels) {
    const char* w = "LinearProbe::fit";
    if (features.cols < 1) detail::raise_probe_value(w, "the training set is empty");
    if (features.rows < 1) check_shape(w, "features", features, 1, features.cols);
    check_finite(w, "features", features);
    std::vector<Index> y = detail::checked_labels(w, "labels", labels, features.cols, classes_);
    const Index D = features.rows, N = features.cols;
    check_allocation(w, "the standardised features", checked_mul(w, "D x N", D, N), sizeof(double));
    // Standardisation with the training statistics.                    evaluation.md (8)
    Eigen::MatrixXd z(D, N);
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < D; ++i) z(i, n) = double(features(i, n));
    Eigen::VectorXd mean = z.rowwise().mean();
    z.colwise() -= mean;
    Eigen::VectorXd scale = (z.rowwise().squaredNorm() / double(N)).cwiseSqrt();
    for (Index i = 0; i < D; ++i)
      if (!(scale(i) > 0)) scale(i) = 1.0;
    z = scale.cwiseInverse().asDiagonal() * z;

    const SoftmaxObjective obj(z, std::move(y), classes_, cfg_.l2);
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(obj.num_params());
    lbfgs(obj, theta);
    mean_ = std::move(mean);
    scale_ = std::move(scale);
    W_ = Eigen::Map<const Eigen::MatrixXd>(theta.data(), classes_, D);
    b_ = theta.tail(classes_);
  }

  /// The logits W (f - mu) / s + b (classes, N) of features (D, N).
  /// Throws flowprior::error before a fit, shape_error, numeric_error.
  template <class S>
  Eigen::MatrixXd logits(ConstMatrixView<S> features) const {
    const char* w = "LinearProbe::logits";
    if (W_.size() == 0)
      flowprior::detail::raise<error>(std::string("[flowprior.state] ") + w + ": call fit() first");
    check_shape(w, "features", features, W_.cols(), features.cols);
    check_finite(w, "features", features);
    Eigen::MatrixXd z(W_.cols(), features.cols);
    for (Index n = 0; n < features.cols; ++n)
      for (Index i = 0; i < W_.cols(); ++i)
        z(i, n) = (double(features(i, n)) - mean_(i)) / scale_(i);
    Eigen::MatrixXd out = W_ * z;
    out.colwise() += b_;
    return out;
  }

  /// The predicted class of each column (the largest logit; the lowest class on a tie).
  template <class S>
  std::vector<Index> predict(ConstMatrixView<S> features) const {
    const Eigen::MatrixXd Z = logits<S>(features);
    std::vector<Index> out(std::size_t(Z.cols()));
    for (Index n = 0; n < Z.cols(); ++n) {
      Index c = 0;
      Z.col(n).maxCoeff(&c);
      out[std::size_t(n)] = c;
    }
    return out;
  }

  /// The share of columns whose prediction equals the label. Throws as fit for the labels.
  template <class S, class L>
  double accuracy(ConstMatrixView<S> features, const std::vector<L>& labels) const {
    const char* w = "LinearProbe::accuracy";
    if (features.cols < 1) detail::raise_probe_value(w, "the set is empty");
    const std::vector<Index> y =
        detail::checked_labels(w, "labels", labels, features.cols, classes_);
    const std::vector<Index> p = predict<S>(features);
    Index hit = 0;
    for (std::size_t n = 0; n < p.size(); ++n) hit += p[n] == y[n];
    return double(hit) / double(p.size());
  }

  Index classes() const { return classes_; }
  const LinearProbeConfig& config() const { return cfg_; }
  /// Weights (classes, D) and biases (classes) on the standardised features.
  const Eigen::MatrixXd& weight() const { return W_; }
  const Eigen::VectorXd& bias() const { return b_; }
  /// The standardisation mu (D) and s (D) of the training features.
  const Eigen::VectorXd& feature_mean() const { return mean_; }
  const Eigen::VectorXd& feature_scale() const { return scale_; }
  /// The final objective (6), the iterations run, and whether the gradient test was met.
  double loss() const { return loss_; }
  Index iterations() const { return iterations_; }
  bool converged() const { return converged_; }

 private:
  /// Minimises obj from theta (updated in place).                        evaluation.md (9)
  void lbfgs(const SoftmaxObjective& obj, Eigen::VectorXd& theta) {
    Eigen::VectorXd g, g_new, theta_new, p;
    double f = obj.value(theta, &g);
    std::deque<Eigen::VectorXd> s_hist, y_hist;
    std::deque<double> rho_hist;
    std::vector<double> alpha_buf(std::size_t(cfg_.history));
    converged_ = false;
    Index it = 0;
    for (; it < cfg_.max_iter; ++it) {
      if (g.cwiseAbs().maxCoeff() <= cfg_.grad_tol) {
        converged_ = true;
        break;
      }
      // Two-loop recursion: p = -H g, H0 = (s^T y / y^T y) I.
      p = -g;
      const Index m = Index(s_hist.size());
      for (Index i = m - 1; i >= 0; --i) {
        alpha_buf[std::size_t(i)] = rho_hist[std::size_t(i)] * s_hist[std::size_t(i)].dot(p);
        p -= alpha_buf[std::size_t(i)] * y_hist[std::size_t(i)];
      }
      if (m > 0) p *= s_hist.back().dot(y_hist.back()) / y_hist.back().squaredNorm();
      for (Index i = 0; i < m; ++i) {
        const double beta = rho_hist[std::size_t(i)] * y_hist[std::size_t(i)].dot(p);
        p += (alpha_buf[std::size_t(i)] - beta) * s_hist[std::size_t(i)];
      }
      double slope = g.dot(p);
      if (!(slope < 0)) {  // not a descent direction: restart from steepest descent
        s_hist.clear();
        y_hist.clear();
        rho_hist.clear();
        p = -g;
        slope = g.dot(p);
      }
      // Armijo backtracking; the first step of steepest descent is scaled to length 1.
      double step = s_hist.empty() ? std::min(1.0, 1.0 / p.norm()) : 1.0;
      double f_new = f;
      bool accepted = false;
      for (int ls = 0; ls < 60; ++ls) {
        theta_new = theta + step * p;
        f_new = obj.value(theta_new, &g_new);
        if (f_new <= f + 1e-4 * step * slope) {
          accepted = true;
          break;
        }
        step *= 0.5;
      }
      if (!accepted) break;
      Eigen::VectorXd s = theta_new - theta, y = g_new - g;
      const double sy = s.dot(y);
      if (sy > 1e-12 * s.norm() * y.norm()) {
        if (Index(s_hist.size()) == cfg_.history) {
          s_hist.pop_front();
          y_hist.pop_front();
          rho_hist.pop_front();
        }
        s_hist.push_back(std::move(s));
        y_hist.push_back(std::move(y));
        rho_hist.push_back(1.0 / sy);
      }
      theta.swap(theta_new);
      g.swap(g_new);
      f = f_new;
    }
    if (!converged_ && g.cwiseAbs().maxCoeff() <= cfg_.grad_tol) converged_ = true;
    loss_ = f;
    iterations_ = it;
  }

  Index classes_;
  LinearProbeConfig cfg_;
  Eigen::MatrixXd W_;
  Eigen::VectorXd b_, mean_, scale_;
  double loss_ = 0;
  Index iterations_ = 0;
  bool converged_ = false;
};

/// Fits a LinearProbe on (train, train_labels) and reports its accuracy on both sets
/// (features (D, N_train) and (D, N_test), the same D). Throws config_error (classes, cfg),
/// value_error for an empty set or a label out of range, shape_error for mismatched sizes,
/// numeric_error for non-finite features.
template <class S, class L>
LinearProbeResult linear_probe(ConstMatrixView<S> train, const std::vector<L>& train_labels,
                               ConstMatrixView<S> test, const std::vector<L>& test_labels,
                               Index classes, const LinearProbeConfig& cfg = {}) {
  const char* w = "linear_probe";
  LinearProbe probe(classes, cfg);
  if (test.cols < 1) detail::raise_probe_value(w, "the test set is empty");
  check_shape(w, "test", test, train.rows, test.cols);
  check_finite(w, "test", test);
  detail::checked_labels(w, "test_labels", test_labels, test.cols, classes);
  probe.fit<S>(train, train_labels);
  LinearProbeResult r;
  r.train_accuracy = probe.accuracy<S>(train, train_labels);
  r.test_accuracy = probe.accuracy<S>(test, test_labels);
  r.loss = probe.loss();
  r.iterations = probe.iterations();
  r.converged = probe.converged();
  return r;
}

}  // namespace eval
}  // namespace flowprior
