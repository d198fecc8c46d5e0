/// @file
/// GemmBatch: the layout of a batch of equally shaped matrix products (Backend::gemm_batched).
/// Problem (o, i), o < outer and i < inner, reads A at A.data + o a_outer + i a_inner, B and C
/// likewise; every problem has the shapes and leading dimensions of the views passed. Two levels
/// cover the (batch, head) grid of attention without a permutation pass. No backend included:
/// host compilers and nvcc alike.
#pragma once

#include <flowprior/core/types.hpp>

namespace flowprior {

struct GemmBatch {
  Index outer = 1;    ///< problems along the first level
  Index inner = 1;    ///< problems along the second level
  Index a_outer = 0;  ///< element offset of A from one outer problem to the next
  Index a_inner = 0;  ///< element offset of A from one inner problem to the next
  Index b_outer = 0;
  Index b_inner = 0;
  Index c_outer = 0;
  Index c_inner = 0;
  Index count() const { return outer * inner; }
};

}  // namespace flowprior
