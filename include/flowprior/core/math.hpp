/// @file
/// Scalar formulas shared by every backend (the CPU loops and the CUDA kernels call the same
/// functions). Equations: docs/math/activations.md, docs/math/time_embedding.md,
/// docs/math/tokenizer.md "Gaussian posterior".
#pragma once

#include <cmath>
#include <flowprior/config.hpp>

namespace flowprior {
namespace math {

/// Logistic sigmoid, written so that exp never overflows: activations.md (1).
template <class S>
FLOWPRIOR_HD inline S sigmoid(S z) {
  using std::exp;
  if (z >= S(0)) return S(1) / (S(1) + exp(-z));
  const S e = exp(z);
  return e / (S(1) + e);
}

/// SiLU(z) = z * sigmoid(z): activations.md (2).
template <class S>
FLOWPRIOR_HD inline S silu(S z) {
  return z * sigmoid(z);
}

/// SiLU'(z) = s (1 + z (1 - s)), s = sigmoid(z): activations.md (3).
template <class S>
FLOWPRIOR_HD inline S silu_grad(S z) {
  const S s = sigmoid(z);
  return s * (S(1) + z * (S(1) - s));
}

/// SiLU''(z) = s (1 - s) (2 + z (1 - 2 s)): activations.md (4) (used by second-order tests).
template <class S>
FLOWPRIOR_HD inline S silu_grad2(S z) {
  const S s = sigmoid(z);
  return s * (S(1) - s) * (S(2) + z * (S(1) - S(2) * s));
}

/// Exact GELU(z) = z Phi(z) (PyTorch nn.GELU() default, erf form): activations.md (5).
template <class S>
FLOWPRIOR_HD inline S gelu(S z) {
  using std::erf;
  return S(0.5) * z * (S(1) + erf(z * S(0.70710678118654752440)));
}

/// GELU'(z) = Phi(z) + z phi(z): activations.md (6).
template <class S>
FLOWPRIOR_HD inline S gelu_grad(S z) {
  using std::erf;
  using std::exp;
  const S cdf = S(0.5) * (S(1) + erf(z * S(0.70710678118654752440)));
  const S pdf = S(0.39894228040143267794) * exp(S(-0.5) * z * z);
  return cdf + z * pdf;
}

/// The clamp of a Gaussian posterior's log-variance, [-30, 20] (LDM's
/// DiagonalGaussianDistribution): tokenizer.md (7).
inline constexpr double kLogvarMin = -30.0;
inline constexpr double kLogvarMax = 20.0;

/// clamp(raw, -30, 20); NaN stays NaN (as torch.clamp): tokenizer.md (7).
template <class S>
FLOWPRIOR_HD inline S clamp_logvar(S raw) {
  return raw < S(kLogvarMin) ? S(kLogvarMin) : (raw > S(kLogvarMax) ? S(kLogvarMax) : raw);
}

/// Whether the clamp of tokenizer.md (7) passes raw through, hence its gradient (1 on the closed
/// interval, as torch.clamp's backward; 0 outside).
template <class S>
FLOWPRIOR_HD inline bool logvar_in_range(S raw) {
  return raw >= S(kLogvarMin) && raw <= S(kLogvarMax);
}

/// The reparameterised sample z = mu + exp(logvar / 2) eps: tokenizer.md (8).
template <class S>
FLOWPRIOR_HD inline S posterior_sample(S mu, S logvar, S eps) {
  using std::exp;
  const S sd = exp(logvar * S(0.5));
  return mu + sd * eps;
}

/// One element's KL(N(mu, exp(logvar)) || N(0, 1)) = (mu^2 + exp(logvar) - 1 - logvar) / 2, in
/// double: tokenizer.md (9).
FLOWPRIOR_HD inline double gaussian_kl(double mu, double logvar) {
  using std::exp;
  return 0.5 * (mu * mu + exp(logvar) - 1.0 - logvar);
}

}  // namespace math
}  // namespace flowprior
