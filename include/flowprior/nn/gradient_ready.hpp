/// @file
/// GradientReady: how a backward pass tells its caller which parameter gradients are final
/// before the pass ends (docs/distributed.md "Overlap"). A data-parallel trainer uses it to start
/// summing the last layers' gradients over the ranks while the first layers' are still being
/// computed.
#pragma once

#include <flowprior/core/types.hpp>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace nn {

/// Receives, during a backward pass with parameter gradients, the points where a suffix of the
/// flat gradient is final: ready(lo) means d_params[lo, num_params()) will not be written again
/// by this pass. The calls come in order of decreasing lo, and the last is ready(0). A field
/// reports after each layer whose parameters sit at the end of the part not yet reported (the
/// flat layout is in forward order, and the backward runs the layers in reverse); a field that
/// does not report gets ready(0) once, after its backward. Called on the thread of the backward.
class GradientReady {
 public:
  virtual void ready(Index lo) = 0;

 protected:
  ~GradientReady() = default;
};

/// Whether a workspace type W can report to a GradientReady (W::set_gradient_ready, as
/// FieldWorkspace has).
template <class W, class = void>
struct reports_gradient_ready : std::false_type {};
template <class W>
struct reports_gradient_ready<W, std::void_t<decltype(std::declval<W&>().set_gradient_ready(
                                     static_cast<GradientReady*>(nullptr)))>> : std::true_type {};

}  // namespace nn
}  // namespace flowprior
