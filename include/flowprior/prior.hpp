/// @file
/// Prior<Field>: a velocity field bound to the time convention it was trained in.
///
/// A trained network is only meaningful in the convention it was trained in. Prior records it,
/// and every loss, sampler and ODE routine takes the convention it expects and checks it
/// against prior.convention() (convention_error on mismatch). Converting is one call:
/// prior.as(Convention::Paper) is a view of the same network evaluated as
///     v'(x, t) = -v(x, 1 - t)                                   flow_matching.md (3)
/// (the path of one convention at t is the path of the other at 1 - t, with the opposite target
/// velocity). Its Jacobians are negated likewise, and its divergence too. A reversed view copies
/// no batch: signs are applied in place (or folded into d_x, vjp_x), and callers that form their
/// own d_v fold sign() into it with the *_field calls (the losses), flow_matching.md "What
/// Prior::as does". The reversal's own element work (the times 1 - t, the negations) runs on
/// the field's backend (reverse_times, scale, scaled_copy), on the workspace's context.
///
/// The field is held by reference (it must outlive the Prior) and is never modified: a Prior
/// is frozen as far as the alignment loss is concerned, and parameter gradients of a reversed
/// prior are those of the underlying field with the sign of d_v flipped.
#pragma once

#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/field_context.hpp>
#include <flowprior/nn/field_traits.hpp>

namespace flowprior {

template <class Field>
class Prior {
  static_assert(nn::check_velocity_field<Field>(),
                "Prior<Field>: Field is not a velocity field (docs/fields.md)");

 public:
  using Scalar = typename Field::Scalar;
  using S = Scalar;

  /// The backend of the field (nn::field_backend): the reversal's primitives run on it.
  using Backend = nn::field_backend_t<Field>;
  using Context = typename Backend::Context;

  /// Per-thread memory: the field's workspace plus reversal buffers in backend memory (sized on
  /// first use and reused: a warmed-up call allocates nothing), and the context the prior's
  /// primitives run on.
  struct Workspace {
    typename Field::Workspace field;
    typename Backend::template Buffer<S> t_rev;  ///< 1 - t for a reversed prior
    typename Backend::template Buffer<S> neg;    ///< -d_v for backward() of a reversed prior

    /// The context: the field workspace's when it has one (nn::FieldWorkspace), else this
    /// workspace's own. The losses, the trainer, the aligner and the ODE routines run on it.
    Context& context() { return ctx_.get(field); }
    /// Runs on `ctx` from now on (not owned: the caller keeps it alive); nullptr returns to the
    /// workspace's own. Lent to the field workspace when it has a context.
    void set_context(Context* ctx) { ctx_.lend(field, ctx); }

   private:
    nn::FieldContext<Field> ctx_;  // the field workspace's context, or a slot of its own
  };

  /// @param field       the velocity field (kept by reference)
  /// @param trained_in  the convention the field was trained in
  Prior(const Field& field, Convention trained_in)
      : f_(&field), trained_(trained_in), conv_(trained_in) {}

  /// The convention in which this Prior evaluates velocities.
  Convention convention() const { return conv_; }
  /// The convention the underlying field was trained in.
  Convention trained_convention() const { return trained_; }
  /// True when evaluations are time-reversed relative to the field.
  bool reversed() const { return conv_ != trained_; }
  /// The same field seen in convention c (a time-reversed view if c differs from training).
  Prior as(Convention c) const {
    Prior p = *this;
    p.conv_ = c;
    return p;
  }
  const Field& field() const { return *f_; }
  Index dim() const { return f_->dim(); }
  Index num_params() const { return f_->num_params(); }

  /// The sign that relates this prior's velocity to the field's output: v(x, t) = sign() *
  /// field(x, field_time(t)), with t in convention(); -1 for a reversed view, else +1.
  S sign() const { return reversed() ? S(-1) : S(1); }
  /// The field's time (trained_convention()) for a time t of convention(): 1 - t when reversed.
  S field_time(S t) const { return reversed() ? S(1) - t : t; }

  /// v_out = v(x, t) in this prior's convention (t in [0, 1] of convention()). Shapes as
  /// Field::forward. Reversed, the field's times 1 - t go through ws.t_rev (the field takes its
  /// times as a vector; t is one value per sample, not the batch) and v_out is negated in place.
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    forward_field(x, t, v_out, ws);
    if (reversed()) negate(v_out, ws);
  }

  /// d_x += J_x(v)^T d_v for the last forward on ws (d_v, d_x in convention()). Reversed, the
  /// sign is folded into the accumulation, d_x + J'^T d_v = -((-d_x) + J^T d_v): d_x is
  /// negated in place before and after the field's VJP, so d_v is neither copied nor modified
  /// (exact: negation commutes with rounding). d_x must not alias d_v.
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    if (!reversed()) return f_->vjp_x(ws.field, d_v, d_x);
    negate(d_x, ws);
    try {
      f_->vjp_x(ws.field, d_v, d_x);
    } catch (...) {
      negate(d_x, ws);  // the field throws before accumulating: d_x is the caller's again
      throw;
    }
    negate(d_x, ws);
  }

  /// d_params += dL/dparams (and d_x += dL/dx where d_x is non-empty) for the last forward, d_v
  /// = dL/dv in convention(). Reversed, d_v is negated into ws.neg (a reused buffer): the sign
  /// cannot be folded into the accumulations as in vjp_x, because d_params holds the caller's
  /// running sum over all parameters (negating it twice would cost two passes over every
  /// parameter, far more than one over d_v). Callers that form d_v themselves avoid the copy
  /// with backward_field (the losses do).
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    if (!reversed()) return f_->backward(ws.field, d_v, d_x, d_params);
    f_->backward(ws.field, negated(d_v, ws), d_x, d_params);
  }

  /// dv_out = J_x(v) dx for K tangents per sample of the last forward (convention()); reversed,
  /// dv_out is negated in place.
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    f_->jvp_x(ws.field, dx, dv_out, K);
    if (reversed()) negate(dv_out, ws);
  }

  /// v and its exact divergence tr(dv/dx) per sample, in this prior's convention (t in [0, 1]
  /// of convention()); reversed, the field's times go through ws.t_rev and v_out and div_out
  /// are negated in place.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws) const {
    if (!reversed()) return f_->divergence(x, t, v_out, div_out, ws.field);
    f_->divergence(x, reverse_time(t, ws), v_out, div_out, ws.field);
    negate(v_out, ws);
    negate(MatrixView<S>(div_out.data, div_out.size, 1), ws);
  }

  /// For callers that fold sign() into their own coefficients (the losses): v_field = sign() *
  /// v(x, t), the field's output in trained_convention() at field_time(t), with t given in
  /// convention(). No negation pass; reversed, the times go through ws.t_rev as in forward.
  /// vjp_x_field and backward_field then take d_v_field = sign() * (dL/dv in convention()).
  void forward_field(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_field,
                     Workspace& ws) const {
    if (!reversed()) return f_->forward(x, t, v_field, ws.field);
    f_->forward(x, reverse_time(t, ws), v_field, ws.field);
  }

  /// d_x += J_field^T d_v_field for the last forward on ws, where d_v_field = sign() * d_v with
  /// d_v in convention() (so that the result is d_x += J_x(v)^T d_v). No copy.
  void vjp_x_field(Workspace& ws, ConstMatrixView<S> d_v_field, MatrixView<S> d_x) const {
    f_->vjp_x(ws.field, d_v_field, d_x);
  }

  /// backward() with d_v_field = sign() * d_v, d_v in convention(): the field's own backward,
  /// no copy.
  void backward_field(Workspace& ws, ConstMatrixView<S> d_v_field, MatrixView<S> d_x,
                      VectorView<S> d_params) const {
    f_->backward(ws.field, d_v_field, d_x, d_params);
  }

 private:
  static ConstVectorView<S> reverse_time(ConstVectorView<S> t, Workspace& ws) {
    Backend::resize(ws.t_rev, t.size);
    const VectorView<S> out(ws.t_rev.data(), t.size);
    Backend::reverse_times(ws.context(), t, out);
    return out;
  }
  static ConstMatrixView<S> negated(ConstMatrixView<S> a, Workspace& ws) {
    Backend::resize(ws.neg, a.rows * a.cols);
    const MatrixView<S> out(ws.neg.data(), a.rows, a.cols);
    Backend::scaled_copy(ws.context(), S(-1), a, out);
    return out;
  }
  static void negate(MatrixView<S> a, Workspace& ws) { Backend::scale(ws.context(), a, S(-1)); }

  const Field* f_;
  Convention trained_;
  Convention conv_;
};

}  // namespace flowprior
