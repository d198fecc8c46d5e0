/// @file
/// What a velocity field must provide (docs/fields.md "Writing your own velocity field").
///
/// Prior, the losses, the trainer, the aligner and the ODE routines are templates over a field
/// type F. They call the members below and nothing else; a type that has them, with these
/// signatures, is a velocity field (S = F::Scalar, every function const):
///
///   using Scalar;                                     float or double
///   class Workspace;                                  default-constructible, one per thread
///   Index dim() const;                                the data dimension d
///   Index num_params() const;                         the length of the parameter vector
///   void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
///                Workspace& ws) const;                v_out = v(x, t)
///   void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const;
///                                                     d_x += J_x(v)^T d_v
///   void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
///                 VectorView<S> d_params) const;      d_params += dL/dparams [, d_x += ...]
///   void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const;
///                                                     dv_out = J_x(v) dx, K tangents a sample
///   void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
///                   VectorView<S> div_out, Workspace& ws) const;   v and tr(J_x(v))
///
/// A field that the trainer updates is also trainable: `VectorView<S> parameters()` returns the
/// flat parameter vector, which the trainer's optimizer writes in place.
///
/// Time convention: a field has none. It evaluates v(x, t) at the t it is given, in whichever
/// convention it was trained; Prior<F> records that convention and converts (prior.hpp).
///
/// is_velocity_field<F> and is_trainable_field<F> are the traits; check_velocity_field<F>() and
/// check_trainable_field<F>() are for static_assert at entry points: each missing member stops
/// the build with a message naming it.
#pragma once

#include <flowprior/core/types.hpp>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace nn {
namespace field_detail {

template <class F>
using scalar_t = typename F::Scalar;
template <class F>
using workspace_t = typename F::Workspace;

template <class F, class = void>
struct has_scalar : std::false_type {};
template <class F>
struct has_scalar<F, std::void_t<scalar_t<F>>>
    : std::bool_constant<std::is_floating_point<scalar_t<F>>::value> {};

template <class F, class = void>
struct has_workspace : std::false_type {};
template <class F>
struct has_workspace<F, std::void_t<workspace_t<F>>>
    : std::is_default_constructible<workspace_t<F>> {};

// The member checks below are only instantiated when Scalar and Workspace exist.
template <class F, class = void>
struct has_dim : std::false_type {};
template <class F>
struct has_dim<F, std::void_t<decltype(std::declval<const F&>().dim())>>
    : std::is_convertible<decltype(std::declval<const F&>().dim()), Index> {};

template <class F, class = void>
struct has_num_params : std::false_type {};
template <class F>
struct has_num_params<F, std::void_t<decltype(std::declval<const F&>().num_params())>>
    : std::is_convertible<decltype(std::declval<const F&>().num_params()), Index> {};

template <class F, class = void>
struct has_forward : std::false_type {};
template <class F>
struct has_forward<
    F,
    std::void_t<decltype(std::declval<const F&>().forward(
        std::declval<ConstMatrixView<scalar_t<F>>>(), std::declval<ConstVectorView<scalar_t<F>>>(),
        std::declval<MatrixView<scalar_t<F>>>(), std::declval<workspace_t<F>&>()))>>
    : std::true_type {};

template <class F, class = void>
struct has_vjp_x : std::false_type {};
template <class F>
struct has_vjp_x<F,
                 std::void_t<decltype(std::declval<const F&>().vjp_x(
                     std::declval<workspace_t<F>&>(), std::declval<ConstMatrixView<scalar_t<F>>>(),
                     std::declval<MatrixView<scalar_t<F>>>()))>> : std::true_type {};

template <class F, class = void>
struct has_backward : std::false_type {};
template <class F>
struct has_backward<
    F, std::void_t<decltype(std::declval<const F&>().backward(
           std::declval<workspace_t<F>&>(), std::declval<ConstMatrixView<scalar_t<F>>>(),
           std::declval<MatrixView<scalar_t<F>>>(), std::declval<VectorView<scalar_t<F>>>()))>>
    : std::true_type {};

template <class F, class = void>
struct has_jvp_x : std::false_type {};
template <class F>
struct has_jvp_x<F,
                 std::void_t<decltype(std::declval<const F&>().jvp_x(
                     std::declval<workspace_t<F>&>(), std::declval<ConstMatrixView<scalar_t<F>>>(),
                     std::declval<MatrixView<scalar_t<F>>>(), Index{}))>> : std::true_type {};

template <class F, class = void>
struct has_divergence : std::false_type {};
template <class F>
struct has_divergence<
    F, std::void_t<decltype(std::declval<const F&>().divergence(
           std::declval<ConstMatrixView<scalar_t<F>>>(),
           std::declval<ConstVectorView<scalar_t<F>>>(), std::declval<MatrixView<scalar_t<F>>>(),
           std::declval<VectorView<scalar_t<F>>>(), std::declval<workspace_t<F>&>()))>>
    : std::true_type {};

template <class F, class = void>
struct has_parameters : std::false_type {};
template <class F>
struct has_parameters<F, std::void_t<decltype(std::declval<F&>().parameters())>>
    : std::is_convertible<decltype(std::declval<F&>().parameters()), VectorView<scalar_t<F>>> {};

template <class F, bool = has_scalar<F>::value&& has_workspace<F>::value>
struct members : std::false_type {};
template <class F>
struct members<F, true>
    : std::bool_constant<has_dim<F>::value && has_num_params<F>::value && has_forward<F>::value &&
                         has_vjp_x<F>::value && has_backward<F>::value && has_jvp_x<F>::value &&
                         has_divergence<F>::value> {};

}  // namespace field_detail

/// True when F provides everything Prior, the losses, the aligner and the ODE routines call
/// (the list at the top of this file).
template <class F>
struct is_velocity_field : field_detail::members<F> {};
template <class F>
inline constexpr bool is_velocity_field_v = is_velocity_field<F>::value;

/// True when F is a velocity field whose parameters() the trainer can update in place.
template <class F>
struct is_trainable_field
    : std::bool_constant<is_velocity_field<F>::value && field_detail::has_parameters<F>::value> {};
template <class F>
inline constexpr bool is_trainable_field_v = is_trainable_field<F>::value;

/// For static_assert at an entry point: fails the build with one message per missing member of
/// a velocity field, and returns is_velocity_field_v<F>.
template <class F>
constexpr bool check_velocity_field() {
  using namespace field_detail;
  static_assert(has_scalar<F>::value,
                "flowprior: a velocity field must define `using Scalar = float;` or double "
                "(docs/fields.md)");
  static_assert(has_workspace<F>::value,
                "flowprior: a velocity field must define a default-constructible type "
                "`Workspace` (its per-thread memory; docs/fields.md)");
  if constexpr (has_scalar<F>::value && has_workspace<F>::value) {
    static_assert(has_dim<F>::value,
                  "flowprior: a velocity field must provide `Index dim() const`");
    static_assert(has_num_params<F>::value,
                  "flowprior: a velocity field must provide `Index num_params() const`");
    static_assert(has_forward<F>::value,
                  "flowprior: a velocity field must provide `void forward(ConstMatrixView<S> x, "
                  "ConstVectorView<S> t, MatrixView<S> v_out, Workspace& ws) const`");
    static_assert(has_vjp_x<F>::value,
                  "flowprior: a velocity field must provide `void vjp_x(Workspace& ws, "
                  "ConstMatrixView<S> d_v, MatrixView<S> d_x) const` (d_x += J^T d_v)");
    static_assert(has_backward<F>::value,
                  "flowprior: a velocity field must provide `void backward(Workspace& ws, "
                  "ConstMatrixView<S> d_v, MatrixView<S> d_x, VectorView<S> d_params) const`");
    static_assert(has_jvp_x<F>::value,
                  "flowprior: a velocity field must provide `void jvp_x(Workspace& ws, "
                  "ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const`");
    static_assert(has_divergence<F>::value,
                  "flowprior: a velocity field must provide `void divergence(ConstMatrixView<S> "
                  "x, ConstVectorView<S> t, MatrixView<S> v_out, VectorView<S> div_out, "
                  "Workspace& ws) const`");
  }
  return is_velocity_field<F>::value;
}

/// As check_velocity_field, plus `VectorView<S> parameters()` (what the trainer updates).
template <class F>
constexpr bool check_trainable_field() {
  if constexpr (check_velocity_field<F>()) {
    static_assert(field_detail::has_parameters<F>::value,
                  "flowprior: a trained velocity field must provide `VectorView<S> parameters()` "
                  "(its flat parameter vector, updated in place by the optimizer)");
  }
  return is_trainable_field<F>::value;
}

}  // namespace nn
}  // namespace flowprior
