/// @file
/// The flow-matching loss (stage 1: train the prior) and the ODE-free alignment loss (stage 2:
/// regularise latents with the frozen prior). Both evaluate, for rows x_b (targets or latents)
/// and K draws (t, eps) per row, in a stated convention (core/convention.hpp):
///
///   x_t = a(t) x + b(t) eps,   u = c x + e eps,   r = v(x_t, t) - u          flow_matching.md (4)
///   loss_b = weight * (1/K) sum_k ||r_bk||^2 / n_c, loss = (1/N) sum_b loss_b flow_matching.md (5)
///
/// with n_c = dim for Reduction::Mean (the released code's mse_loss(reduction='mean')) and n_c = 1
/// for Reduction::SumChannels (the paper's L_align). The alignment gradient w.r.t. the rows,
/// through both the network input and the target velocity, with the prior frozen, is
///
///   dloss/dx_b = (2 weight / (N K n_c)) sum_k [ a(t) J_v^T r_bk - c r_bk ]     alignment.md (1)
///
/// (code convention: 2[(1-t) J^T r + r]; paper: 2[t J^T r - r]). detach_pred_v drops the J^T term.
/// No parameter gradient is computed or allocated by the alignment loss.
///
/// The per-element work and the reductions are primitives of the field's backend (path_mix,
/// path_residuals, scaled_copy, fill, path_grad: docs/backends.md "Loss primitives"), run on the
/// loss workspace's context; this header has no loop over the elements and includes no Eigen
/// (host code gets the default backend, CpuBackend, included at the end).
#pragma once

#include <cmath>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/nn/field_context.hpp>
#include <flowprior/prior.hpp>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace loss {

/// How squared residuals are reduced. Both average over rows (and over the K draws of a row).
enum class Reduction {
  Mean,        ///< mean over rows AND channels: the released code (mse_loss 'mean'), lambda 0.01
  SumChannels  ///< sum over channels, mean over rows: the paper's L_align
};

inline const char* to_string(Reduction r) { return r == Reduction::Mean ? "mean" : "sum"; }

/// Options of the alignment loss.
struct AlignmentOptions {
  Reduction reduction = Reduction::Mean;
  double weight = 1.0;         ///< lambda: multiplies the loss and its gradient
  bool detach_pred_v = false;  ///< drop the J^T r term (released `detach_pred_v`)
};

namespace detail {

/// The backend a field runs on (nn::field_backend, nn/field_context.hpp; the old name).
template <class Field>
using field_backend = nn::field_backend<Field>;

/// Whether a field workspace W carries a backend context (nn::has_context; the old name).
template <class W, class Context>
using has_context = nn::has_context<W, Context>;

}  // namespace detail

/// Memory reused across calls (one per thread): the prior's workspace and the loss's buffers, in
/// memory of the field's backend.
///
/// The context (docs/backends.md "Context"): one context runs the whole loss, the field's
/// passes and the loss primitives alike: the prior workspace's (Prior::Workspace::context(),
/// which is the field workspace's when the field's workspace has one). set_context lends the
/// caller's. The trainer and the aligner run their draws, optimizer, clipping and EMA on it too.
template <class Field>
struct LossWorkspace {
  using S = typename Field::Scalar;
  using Backend = nn::field_backend_t<Field>;
  using Context = typename Backend::Context;
  template <class T>
  using Buffer = typename Backend::template Buffer<T>;

  typename Prior<Field>::Workspace prior;
  Buffer<S> xt, v, dv, dxt;
  Buffer<double> rows;  ///< each row's loss in double, summed in row order

  /// The context the loss runs on.
  Context& context() { return prior.context(); }
  /// Runs the loss on `ctx` from now on (not owned: the caller keeps it alive); nullptr returns
  /// to the workspace's own.
  void set_context(Context* ctx) { prior.set_context(ctx); }
};

namespace detail {

/// A (rows, cols) view of `buf`, grown first if needed (a grown buffer is checked against the
/// machine's memory: config_error).
template <class Backend, class T>
MatrixView<T> sized(typename Backend::template Buffer<T>& buf, Index rows, Index cols) {
  const char* where = "loss workspace";
  const Index n = checked_mul(where, "dim x rows x K", rows, cols);
  if (Index(buf.size()) < n) {
    check_allocation(where, "a buffer of the loss", n, sizeof(T));
    try {
      Backend::resize(buf, n);
    } catch (const std::bad_alloc&) {
      flowprior::detail::raise_size_config(where, "a buffer of the loss: cannot allocate " +
                                                      std::to_string(n) + " elements (" +
                                                      gib_string(double(n) * sizeof(T)) + ")");
    }
  }
  return {buf.data(), rows, cols};
}

/// Shared core of both losses (draws and times in convention `conv`): checks the draws against
/// the batch (FlowDraws::validate, rows, dim, every t in [0, 1] while x_t is built), builds
/// x_t, evaluates v, forms r = v - u in ws.v, fills the per-row loss and returns the total
/// (weight and reduction applied). A reversed prior is not negated: the field's output is
/// v_field = prior.sign() v and r = sign v_field - u (exact, sign is +-1); the gradients below
/// fold the sign into their coefficients likewise (prior.hpp, forward_field). The per-element
/// work and the reductions are the backend's loss primitives (path_mix, path_residuals), run on
/// ws.context().
template <class Field>
double residuals(const char* where, const char* xname, const Prior<Field>& prior, Convention conv,
                 ConstMatrixView<typename Field::Scalar> x,
                 const FlowDraws<typename Field::Scalar, nn::field_backend_t<Field>>& draws,
                 Reduction reduction, double weight,
                 VectorView<typename Field::Scalar> loss_per_row, LossWorkspace<Field>& ws) {
  using S = typename Field::Scalar;
  using Backend = typename LossWorkspace<Field>::Backend;
  const Index d = prior.dim(), N = x.cols, K = draws.K;
  check_convention(where, "the prior", prior.convention(), conv);
  check_convention(where, "the draws", draws.convention, conv);
  check_shape(where, xname, x, d, N);
  draws.validate(where);
  if (draws.rows != N || draws.dim != d)
    flowprior::detail::raise<shape_error>(
        std::string("[flowprior.shape] ") + where + ": draws are for " +
        std::to_string(draws.rows) + " rows of dim " + std::to_string(draws.dim) +
        ", the rows are (" + std::to_string(d) + ", " + std::to_string(N) + ")");
  if (loss_per_row.data != nullptr || loss_per_row.size != 0)
    check_size(where, "loss_per_row", loss_per_row, N);
  if (!(std::isfinite(weight) && weight >= 0))
    raise_config(where, "weight (lambda) must be finite and >= 0, got " + std::to_string(weight));
  auto& ctx = ws.context();
  check_finite_on<Backend>(ctx, where, xname, x);
  const Index M = N * K;
  MatrixView<S> xt = sized<Backend, S>(ws.xt, d, M), v = sized<Backend, S>(ws.v, d, M);
  double* rows = sized<Backend, double>(ws.rows, N, 1).data;
  // x_t = a x + b eps (flow_matching.md (4)); the times are checked in the same pass.
  if (Backend::path_mix(ctx, conv, draws.times(), x, draws.noise(), xt, K) != 0) {
    check_finite_on<Backend>(ctx, where, "draws.t", ConstMatrixView<S>(draws.t.data(), M, 1));
    check_unit_interval_on<Backend>(ctx, where, "draws.t", draws.times());
  }
  prior.forward_field(xt, draws.times(), v, ws.prior);  // v = sign * (v in convention conv)
  // r = sign v - (c x + e eps) in place, and each row's mean squared residual.
  const double nc = reduction == Reduction::Mean ? double(d) : 1.0;
  double total = Backend::path_residuals(ctx, conv, prior.sign(), draws.times(), x, draws.noise(),
                                         v, K, weight / (double(K) * nc), rows, loss_per_row);
  total /= double(std::max<Index>(N, 1));
  if (!std::isfinite(total))
    flowprior::detail::raise<numeric_error>(std::string("[flowprior.numeric] ") + where +
                                            ": the loss is not finite (" + std::to_string(total) +
                                            ")");
  return total;
}

}  // namespace detail

/// The alignment loss of latents y (dim, N) under a frozen prior, and (optionally) its gradient.
///
/// @param prior         the frozen prior; its convention must equal `conv`
/// @param conv          the convention this call works in (checked against prior and draws)
/// @param y             latents (dim, N), one per column (tokens of (batch, tokens, dim) latents
///                      are simply N = batch * tokens columns: alignment is per token)
/// @param draws         K draws per row in convention `conv` (loss::draw, or explicit draws:
///                      FlowDraws(conv, N, dim, K, t, eps)); checked against the batch: their
///                      convention (convention_error), sizes (shape_error: FlowDraws::validate,
///                      then N rows of dim), times in [0, 1] (value_error naming 'draws.t')
/// @param loss_per_row  optional (N): each row's loss (weight and reduction applied)
/// @param d_y           optional (dim, N): accumulates (+=) dloss/dy, alignment.md (1)
/// @return the loss: mean over rows of loss_per_row
template <class Field>
double alignment_loss(const Prior<Field>& prior, Convention conv,
                      ConstMatrixView<typename Field::Scalar> y,
                      const FlowDraws<typename Field::Scalar, nn::field_backend_t<Field>>& draws,
                      const AlignmentOptions& opt, LossWorkspace<Field>& ws,
                      VectorView<typename Field::Scalar> loss_per_row = {},
                      MatrixView<typename Field::Scalar> d_y = {}) {
  using S = typename Field::Scalar;
  const char* w = "alignment_loss";
  const double total =
      detail::residuals(w, "y", prior, conv, y, draws, opt.reduction, opt.weight, loss_per_row, ws);
  if (d_y.empty()) return total;
  const Index d = prior.dim(), N = y.cols, K = draws.K, M = N * K;
  check_shape(w, "d_y", d_y, d, N);
  const double nc = opt.reduction == Reduction::Mean ? double(d) : 1.0;
  const S scale = static_cast<S>(2.0 * opt.weight / (double(N) * double(K) * nc));
  // The prior's sign is folded into the coefficients: dv_field = sign scale r is what the
  // field's VJP takes (prior.hpp, vjp_x_field), and c dv = (sign c) dv_field (sign, c = +-1).
  const S sgn = prior.sign(), scale_f = sgn * scale;
  using Backend = typename LossWorkspace<Field>::Backend;
  auto& ctx = ws.context();
  MatrixView<S> r = detail::sized<Backend, S>(ws.v, d, M);  // residuals from detail::residuals
  MatrixView<S> dv = detail::sized<Backend, S>(ws.dv, d, M);
  MatrixView<S> dxt = detail::sized<Backend, S>(ws.dxt, d, M);
  Backend::scaled_copy(ctx, scale_f, r, dv);
  if (!opt.detach_pred_v) {  // dxt = J^T dv (input VJP, no parameter gradients)
    Backend::fill(ctx, dxt, S(0));
    prior.vjp_x_field(ws.prior, dv, dxt);
  }
  // d_y += a dxt - c dv (alignment.md (1)); detached, the a dxt term is dropped.
  Backend::path_grad(ctx, conv, sgn, draws.times(), dv,
                     opt.detach_pred_v ? ConstMatrixView<S>() : ConstMatrixView<S>(dxt), d_y, K);
  return total;
}

/// The flow-matching loss of target samples x (dim, N) under a trainable field, with parameter
/// gradients accumulated (+=) into d_params (size num_params(); pass an empty view to skip).
/// d_v = (2 / (N K n_c)) r, then the field's backward.                  flow_matching.md (6)
/// The prior, the draws and x are in convention `conv`; the draws are checked against the
/// batch as by alignment_loss.
template <class Field>
double flow_matching_loss(
    const Prior<Field>& prior, Convention conv, ConstMatrixView<typename Field::Scalar> x,
    const FlowDraws<typename Field::Scalar, nn::field_backend_t<Field>>& draws, Reduction reduction,
    LossWorkspace<Field>& ws, VectorView<typename Field::Scalar> d_params = {},
    VectorView<typename Field::Scalar> loss_per_row = {}) {
  using S = typename Field::Scalar;
  const char* w = "flow_matching_loss";
  const double total =
      detail::residuals(w, "x", prior, conv, x, draws, reduction, 1.0, loss_per_row, ws);
  if (d_params.size == 0 && d_params.data == nullptr) return total;
  check_size(w, "d_params", d_params, prior.num_params());
  const Index d = prior.dim(), N = x.cols, K = draws.K, M = N * K;
  const double nc = reduction == Reduction::Mean ? double(d) : 1.0;
  const S scale = static_cast<S>(2.0 / (double(N) * double(K) * nc));
  const S scale_f = prior.sign() * scale;  // the prior's sign folded in: no copy of dv
  using Backend = typename LossWorkspace<Field>::Backend;
  MatrixView<S> r = detail::sized<Backend, S>(ws.v, d, M);
  MatrixView<S> dv = detail::sized<Backend, S>(ws.dv, d, M);
  Backend::scaled_copy(ws.context(), scale_f, r, dv);
  prior.backward_field(ws.prior, dv, MatrixView<S>(), d_params);
  return total;
}

}  // namespace loss
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
