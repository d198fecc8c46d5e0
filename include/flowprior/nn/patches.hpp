/// @file
/// Fixed 2-D sine-cosine positional embeddings of a patch grid (MAE's get_2d_sincos_pos_embed,
/// which MAR and the 1-D tokenizers use), as a host table to upload once. The patch and token
/// primitives (patchify, unpatchify, add_per_token, sum_per_token) are the backend's.
/// docs/math/patches.md.
#pragma once

#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace nn {

/// The (dim, grid_h grid_w) table, column-major, column t = y grid_w + x for the patch in grid
/// row y and column x: with q = dim / 4 and omega_k = 10000^(-k / q), k < q,
///   rows [0, q): sin(x omega_k),  [q, 2q): cos(x omega_k),
///   rows [2q, 3q): sin(y omega_k), [3q, 4q): cos(y omega_k)                    patches.md (4)
/// (MAE's layout: the first half embeds the column coordinate). Evaluated in double, rounded to
/// S. Throws config_error unless dim is a positive multiple of 4 and the grid is not empty.
template <class S>
std::vector<S> sincos_pos_embed_2d(Index dim, Index grid_h, Index grid_w) {
  const char* w = "sincos_pos_embed_2d";
  if (dim <= 0 || dim % 4 != 0)
    raise_config(w, "dim must be a positive multiple of 4, got " + std::to_string(dim));
  if (grid_h <= 0 || grid_w <= 0)
    raise_config(w, "the grid must not be empty, got " + std::to_string(grid_h) + " x " +
                        std::to_string(grid_w));
  const Index T = checked_mul(w, "grid_h x grid_w", grid_h, grid_w);
  std::vector<S> table;
  checked_resize(w, "the table", table, checked_mul(w, "dim x tokens", dim, T));
  const Index q = dim / 4;
  for (Index t = 0; t < T; ++t) {
    const double x = double(t % grid_w), y = double(t / grid_w);
    S* col = table.data() + t * dim;
    for (Index k = 0; k < q; ++k) {
      const double omega = std::pow(10000.0, -double(k) / double(q));
      col[k] = static_cast<S>(std::sin(x * omega));
      col[q + k] = static_cast<S>(std::cos(x * omega));
      col[2 * q + k] = static_cast<S>(std::sin(y * omega));
      col[3 * q + k] = static_cast<S>(std::cos(y * omega));
    }
  }
  return table;
}

}  // namespace nn
}  // namespace flowprior
