/// @file
/// Prior<Field>: a velocity field bound to the time convention it was trained in.
///
/// A trained network is only meaningful in the convention it was trained in. Prior records it,
/// and every loss, sampler and ODE routine takes the convention it expects and checks it
/// against prior.convention() (convention_error on mismatch). Converting is one call:
/// prior.as(Convention::Paper) is a view of the same network evaluated as
///     v'(x, t) = -v(x, 1 - t)                                   flow_matching.md (3)
/// (the path of one convention at t is the path of the other at 1 - t, with the opposite target
/// velocity). Its Jacobians are negated likewise, and its divergence too.
///
/// The field is held by reference (it must outlive the Prior) and is never modified: a Prior
/// is frozen as far as the alignment loss is concerned, and parameter gradients of a reversed
/// prior are those of the underlying field with the sign of d_v flipped.
#pragma once

#include <vector>

#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/field_traits.hpp>

namespace flowprior {

template <class Field>
class Prior {
  static_assert(nn::check_velocity_field<Field>(),
                "Prior<Field>: Field is not a velocity field (docs/fields.md)");

 public:
  using Scalar = typename Field::Scalar;
  using S = Scalar;

  /// Per-thread memory: the field's workspace plus reversal buffers.
  struct Workspace {
    typename Field::Workspace field;
    std::vector<S> t_rev;  ///< 1 - t for a reversed prior
    std::vector<S> neg;    ///< -d_v for a reversed prior
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

  /// v_out = v(x, t) in this prior's convention. Shapes as Field::forward.
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    if (!reversed()) return f_->forward(x, t, v_out, ws.field);
    f_->forward(x, reverse_time(t, ws), v_out, ws.field);
    negate(v_out);
  }

  /// d_x += J_x(v)^T d_v for the last forward on ws.
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    if (!reversed()) return f_->vjp_x(ws.field, d_v, d_x);
    f_->vjp_x(ws.field, negated(d_v, ws), d_x);
  }

  /// d_params += dL/dparams (and d_x += dL/dx where d_x is non-empty) for the last forward.
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    if (!reversed()) return f_->backward(ws.field, d_v, d_x, d_params);
    f_->backward(ws.field, negated(d_v, ws), d_x, d_params);
  }

  /// dv_out = J_x(v) dx for K tangents per sample of the last forward.
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    f_->jvp_x(ws.field, dx, dv_out, K);
    if (reversed()) negate(dv_out);
  }

  /// v and its exact divergence tr(dv/dx) per sample, in this prior's convention.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws) const {
    if (!reversed()) return f_->divergence(x, t, v_out, div_out, ws.field);
    f_->divergence(x, reverse_time(t, ws), v_out, div_out, ws.field);
    negate(v_out);
    for (Index i = 0; i < div_out.size; ++i) div_out[i] = -div_out[i];
  }

 private:
  static ConstVectorView<S> reverse_time(ConstVectorView<S> t, Workspace& ws) {
    ws.t_rev.resize(static_cast<std::size_t>(t.size));
    for (Index i = 0; i < t.size; ++i) ws.t_rev[static_cast<std::size_t>(i)] = S(1) - t[i];
    return {ws.t_rev.data(), t.size};
  }
  static ConstMatrixView<S> negated(ConstMatrixView<S> a, Workspace& ws) {
    ws.neg.resize(static_cast<std::size_t>(a.rows * a.cols));
    MatrixView<S> out(ws.neg.data(), a.rows, a.cols);
    for (Index j = 0; j < a.cols; ++j)
      for (Index i = 0; i < a.rows; ++i) out(i, j) = -a(i, j);
    return out;
  }
  static void negate(MatrixView<S> a) {
    for (Index j = 0; j < a.cols; ++j)
      for (Index i = 0; i < a.rows; ++i) a(i, j) = -a(i, j);
  }

  const Field* f_;
  Convention trained_;
  Convention conv_;
};

}  // namespace flowprior
