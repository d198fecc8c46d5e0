/// @file
/// XentSums: what Backend::softmax_xent_cols returns to the host (the summed loss of a batch
/// and how many of its columns the logits classify correctly). No backend included: host
/// compilers and nvcc alike.
#pragma once

#include <flowprior/core/types.hpp>

namespace flowprior {

/// Sums over the columns of a batch of logits: sum_b (lse_b - z_{y_b, b}) in double, and the
/// number of columns whose first largest logit is at the label (docs/math/classifier.md (5)-(7)).
struct XentSums {
  double loss = 0;    ///< sum of the per-column cross-entropies (not yet divided by B)
  Index correct = 0;  ///< columns with argmax z == y
};

}  // namespace flowprior
