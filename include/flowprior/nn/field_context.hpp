/// @file
/// The backend a velocity field runs on, and where the code that drives a field (the losses, the
/// ODE routines) finds the backend context it runs its own primitives on (docs/backends.md
/// "Context"): one context serves the field's passes and the caller's primitives alike.
///
/// Includes no backend: CpuBackend is only forward-declared (backend/fwd.hpp), so this header
/// compiles with the host compiler and with nvcc.
#pragma once

#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace nn {

/// The backend a field runs on: Field::BackendType when the field names one (the fields on the
/// shell nn::FieldBase do), else CpuBackend (a field written from scratch runs on the host).
template <class Field>
using field_backend = backend_of<Field>;
template <class Field>
using field_backend_t = typename field_backend<Field>::type;

/// Whether a field workspace W carries a backend context (nn::FieldWorkspace does: context(),
/// set_context).
template <class W, class Context, class = void>
struct has_context : std::false_type {};
template <class W, class Context>
struct has_context<W, Context, std::void_t<decltype(std::declval<W&>().context())>>
    : std::is_same<decltype(std::declval<W&>().context()), Context&> {};

/// The context of a workspace that drives a field (a loss workspace, an ODE workspace): the field
/// workspace's own context when the field's workspace has one, so that the field's passes and the
/// driver's primitives run on one context; else a ContextSlot of the driver (a field written from
/// scratch, whose workspace has none). Copying and moving follow ContextSlot.
template <class Field>
class FieldContext {
 public:
  using Backend = field_backend_t<Field>;
  using Context = typename Backend::Context;
  using FieldWorkspace = typename Field::Workspace;
  /// Whether the field's workspace holds the context (else this object does).
  static constexpr bool in_field = has_context<FieldWorkspace, Context>::value;

  /// The context in use; `fws` is the field workspace the driver runs the field on.
  Context& get(FieldWorkspace& fws) {
    if constexpr (in_field)
      return fws.context();
    else
      return (void)fws, own_.get();
  }
  /// Runs on `ctx` from now on (not owned: the caller keeps it alive); nullptr returns to the
  /// workspace's own.
  void lend(FieldWorkspace& fws, Context* ctx) {
    if constexpr (in_field)
      fws.set_context(ctx);
    else
      (void)fws, own_.lend(ctx);
  }

 private:
  struct None {};
  std::conditional_t<in_field, None, ContextSlot<Backend>> own_;
};

}  // namespace nn
}  // namespace flowprior
