/// @file
/// Arguments of the backends' optimizer primitives that optim/ fills in without including a
/// backend (docs/backends.md "The primitives of CpuBackend", docs/math/optim.md).
#pragma once

namespace flowprior {

/// The coefficients of one Adam / AdamW update (docs/math/optim.md (1)-(4)), all in double:
///   g' = g + l2 p;  m <- beta1 m + (1 - beta1) g';  v <- beta2 v + (1 - beta2) g'^2;
///   p <- p shrink - step_size m / (sqrt(v) / bc2_sqrt + eps).
/// AdamW has l2 = 0 and shrink = 1 - lr wd; L2 Adam has l2 = wd and shrink = 1. step_size is
/// lr / (1 - beta1^t) and bc2_sqrt is sqrt(1 - beta2^t) at step t.
struct AdamStep {
  double beta1 = 0;
  double beta2 = 0;
  double l2 = 0;
  double shrink = 1;
  double step_size = 0;
  double bc2_sqrt = 1;
  double eps = 0;
};

}  // namespace flowprior
