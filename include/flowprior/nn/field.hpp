/// @file
/// FieldBase: the shell every network velocity field shares, written once. A field derives from
/// FieldBase<Field, S, Backend, Caches> (CRTP) and keeps only its own layers; the base provides
/// the public API of field_traits.hpp with
///
/// - the argument checks of every entry point (shapes, t in [0, 1], the conditioning, the
///   workspace's forward and layout; typed errors of core/check.hpp, docs/errors.md),
/// - the workspace: its three arenas (forward caches, backward scratch, JVP scratch), laid out
///   only when the batch, the time groups or the field's sizes (LayoutKey) change,
/// - the exact divergence: the dim unit tangents of every sample in one batched JVP, in chunks
///   of at most max_tangent_cols columns,
/// - time groups (adaln.md "Time groups"): runs of equal consecutive t, kept as a map in backend
///   buffers of the workspace (TimeGroupMap), written by a backend primitive.
///
/// What the field provides (private members, the base is a friend):
///
///   static constexpr FieldNames kNames;          the entry points' names for messages
///   Index cond_dim() const;                      conditioning rows (0: unconditioned)
///   bool group_times() const;                    whether runs of equal t share work
///   void layout_forward(Arena&, Caches&, Index B, Index R) const;   carve the forward caches
///   void layout_backward(Arena&, Caches&, Index B) const;           carve the backward scratch
///   void layout_jvp(Arena&, Caches&, Index cols) const;             carve the JVP scratch
///   void forward_layers(Context&, x, t, group, v_out, cond, Caches&) const;
///   void backward_layers(Context&, Caches&, Index R, d_v, d_x, S* d_params, d_cond) const;
///     (or with a last GradientReady* argument, null unless the caller asked: the field then
///     reports its final gradient suffixes as its layers finish, gradient_ready.hpp)
///   void jvp_layers(Context&, Caches&, dx, dv_out, Index K) const;
///
/// and, in its constructor, fills layout_ and calls allocate_parameters(). In forward_layers,
/// t holds one time per column of the t-dependent tensors: per sample when group is null, else
/// per time group, group[b] being the group of sample b. The Context& of the three passes is the
/// workspace's (FieldWorkspace::context()): the layers pass it to every backend primitive.
///
/// Time convention: none. A field evaluates v(x, t) at the t it is given; every public function
/// here takes t in [0, 1] of the convention the field was trained in (Prior<F> records it).
#pragma once

#include <algorithm>
#include <array>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/nn/field_traits.hpp>
#include <flowprior/nn/gradient_ready.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace nn {

/// The names of a field's entry points, as they appear in error messages ("MlpField::forward").
/// String literals, so that passing them costs nothing on the hot path.
struct FieldNames {
  const char* forward;
  const char* vjp_x;
  const char* backward;
  const char* jvp_x;
  const char* divergence;
};

/// Time groups of a batch: runs of equal consecutive t. Holds, in backend buffers, one time per
/// run and the map sample -> run, both written by the backend's time_runs primitive in one pass
/// over t. Neither buffer shrinks; a batch no larger than one seen before allocates nothing.
template <class S, class Backend>
class TimeGroupMap {
 public:
  /// Returns the number of runs R of t, or t.size when grouping would not halve the work
  /// (2 R > B); the map and times() then describe the runs. Time convention: none (t as given).
  Index update(typename Backend::Context& ctx, ConstVectorView<S> t) {
    const Index B = t.size;
    Backend::resize(times_, B);
    Backend::resize(map_, B);
    const Index R = Backend::time_runs(ctx, t, times_.data(), map_.data());
    return 2 * R > B ? B : R;  // too few repeats to pay for the indirection
  }
  /// Sample b belongs to run map()[b] (valid after an update that returned R < B).
  const Index* map() const { return map_.data(); }
  /// The time of each of the R runs.
  ConstVectorView<S> times(Index R) const { return {times_.data(), R}; }

 private:
  typename Backend::template Buffer<Index> map_;
  typename Backend::template Buffer<S> times_;
};

/// The workspace of a field built on FieldBase: per-thread memory for activations (forward
/// caches) and backward/JVP scratch, reused across calls (a batch size already seen allocates
/// nothing). Caches holds the field's own views into the arenas. Copying a workspace gives an
/// empty one (its views would otherwise point into the source's memory) with a context of its
/// own; moving keeps the memory, the caches and the context.
///
/// The backend context (docs/backends.md "Context"): every primitive the field runs on this
/// workspace runs on context(). The workspace owns one, default-constructed; set_context lends
/// it the caller's instead (on CUDA: to run on the caller's stream, or to share one stream and
/// cuBLAS handle among several workspaces). A workspace is used from one thread at a time, and
/// so is its context.
template <class S, class Backend, class Caches>
class FieldWorkspace {
 public:
  using Context = typename Backend::Context;

  FieldWorkspace() = default;
  FieldWorkspace(const FieldWorkspace&) {}
  FieldWorkspace& operator=(const FieldWorkspace&) {
    *this = FieldWorkspace();
    return *this;
  }
  FieldWorkspace(FieldWorkspace&&) = default;
  FieldWorkspace& operator=(FieldWorkspace&&) = default;
  /// Batch of the last forward (-1 before the first).
  Index batch() const { return batch_; }
  /// The context the field's primitives run on for this workspace.
  Context& context() { return ctx_.get(); }
  /// Runs on `ctx` from now on (not owned: the caller keeps it alive while the workspace is
  /// used); nullptr returns to the workspace's own context. The caches stay valid: a backward may
  /// run on another context than its forward once the caller has ordered the two (on CUDA: the
  /// same stream, or an event between the streams).
  void set_context(Context* ctx) { ctx_.lend(ctx); }

  /// From now on a backward with parameter gradients on this workspace tells `ready` (not
  /// owned; nullptr: nobody) where its gradient is final, layer by layer (gradient_ready.hpp).
  void set_gradient_ready(GradientReady* ready) { ready_ = ready; }
  GradientReady* gradient_ready() const { return ready_; }

 private:
  template <class, class, class, class>
  friend class FieldBase;
  GradientReady* ready_ = nullptr;
  Arena<S, Backend> fwd_, bwd_, jvp_;
  Index batch_ = -1, groups_ = -1, bwd_batch_ = -1, jvp_cols_ = -1;
  Index fwd_layout_ = -1, fwd_groups_ = -1;
  LayoutKey key_;  // the sizes of the field the caches were laid out for
  const void* owner_ = nullptr;
  TimeGroupMap<S, Backend> groups_map_;
  MatrixView<S> tan_in, tan_out;  // divergence: unit tangents and their images
  Caches c;
  ContextSlot<Backend> ctx_;
};

template <class Field, class S, class Backend, class Caches>
class FieldBase {
 public:
  using Scalar = S;
  using Workspace = FieldWorkspace<S, Backend, Caches>;
  /// The backend the field runs on (the losses run their primitives on it too).
  using BackendType = Backend;
  using Context = typename Backend::Context;
  /// Tangent columns of one divergence pass when the caller leaves the budget at 0.
  static constexpr Index kAutoTangentCols = 4096;

  /// The data dimension d (x and v are (d, B)).
  Index dim() const { return dim_; }
  Index num_params() const { return layout_.total(); }
  /// Named tensors (registration order).
  const ParamLayout& layout() const { return layout_; }
  /// The flat parameter vector (host memory on the CPU backend): the field's own buffer, or the
  /// storage it was bound to (AdaLNMlp::use_parameters).
  VectorView<S> parameters() { return {param_data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {param_data(), layout_.total()}; }

  /// Number of time groups of the last forward on ws (== its batch when ungrouped).
  Index time_groups(const Workspace& ws) const { return ws.groups_; }

  /// v_out (dim, B) = v(x, t). Caches activations in ws for vjp_x / backward / jvp_x.
  /// Time convention: the field's own (t in [0, 1] as trained).
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B).
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    forward_checked(Field::kNames.forward, x, t, v_out, ws, {});
  }

  /// d_x += J_x(v)^T d_v for the batch of the last forward on ws (no parameter gradient).
  /// Time convention: that of the forward.
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    backward_checked(Field::kNames.vjp_x, ws, d_v, d_x, nullptr, {});
  }

  /// d_params += dL/dparams (size num_params()) and, where d_x is non-empty, d_x += dL/dx, for
  /// the batch of the last forward on ws. Time convention: that of the forward.
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    backward_params_checked(Field::kNames.backward, ws, d_v, d_x, d_params, {});
  }

  /// dv_out = J_x(v) dx for K tangents per sample of the last forward on ws; dx and dv_out are
  /// (dim, B*K), column b*K + k is tangent k of sample b. Time convention: that of the forward.
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    const char* w = Field::kNames.jvp_x;
    require_forward(w, ws);
    check_tangents(w, K);
    const Index cols = checked_mul(w, "batch x K", ws.batch_, K);
    check_shape(w, "dx", dx, dim_, cols);
    check_shape(w, "dv", dv_out, dim_, cols);
    run_jvp(ws, dx, dv_out, K);
  }

  /// Exact divergence tr(dv/dx) per sample, and v itself: forward mode with the dim unit
  /// tangents of every sample batched into one pass, in chunks of at most max_tangent_cols
  /// tangent columns so that memory stays bounded (0, the default: kAutoTangentCols, or one
  /// sample's dim columns when dim is larger). Time convention: the field's own.
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B), div_out (B), max_tangent_cols 0 or at
  /// least dim (else config_error).
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws, Index max_tangent_cols = 0) const {
    divergence_checked(Field::kNames.divergence, x, t, v_out, div_out, ws, {}, max_tangent_cols);
  }

 protected:
  FieldBase() = default;

  /// Allocates the parameters once layout_ is complete: throws config_error naming `sizes` when
  /// they cannot fit in memory (docs/errors.md "Sizes"). `extents` are the configured sizes the
  /// workspace layout depends on (LayoutKey).
  void allocate_parameters(const char* who, const std::string& sizes, Index dim,
                           const std::array<Index, 7>& extents) {
    check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    dim_ = dim;
    key_.sizes[0] = layout_.total();
    std::copy(extents.begin(), extents.end(), key_.sizes.begin() + 1);
  }

  /// forward with the conditioning `cond` (empty when unconditioned).
  void forward_checked(const char* w, ConstMatrixView<S> x, ConstVectorView<S> t,
                       MatrixView<S> v_out, Workspace& ws, ConstMatrixView<S> cond) const {
    check_shape(w, "x", x, dim_, x.cols);
    const Index B = x.cols;
    check_size(w, "t", t, B);
    check_shape(w, "v", v_out, dim_, B);
    check_unit_interval_on<Backend>(ws.context(), w, "t", t);
    check_cond(w, cond, B);
    run_forward(x, t, v_out, ws, cond);
  }

  /// backward with d_params checked, and d_cond (empty: not wanted).
  void backward_params_checked(const char* w, Workspace& ws, ConstMatrixView<S> d_v,
                               MatrixView<S> d_x, VectorView<S> d_params,
                               MatrixView<S> d_cond) const {
    check_size(w, "d_params", d_params, num_params());
    backward_checked(w, ws, d_v, d_x, d_params.data, d_cond);
  }

  /// divergence with the conditioning `cond` (empty when unconditioned).
  void divergence_checked(const char* w, ConstMatrixView<S> x, ConstVectorView<S> t,
                          MatrixView<S> v_out, VectorView<S> div_out, Workspace& ws,
                          ConstMatrixView<S> cond, Index max_tangent_cols) const {
    check_shape(w, "x", x, dim_, x.cols);
    const Index B = x.cols;
    check_size(w, "t", t, B);
    check_shape(w, "v", v_out, dim_, B);
    check_size(w, "div", div_out, B);
    check_unit_interval_on<Backend>(ws.context(), w, "t", t);
    check_cond(w, cond, B);
    const Index d = dim_;
    if (max_tangent_cols != 0 && max_tangent_cols < d)
      flowprior::detail::raise<config_error>(
          std::string("[flowprior.config] ") + w + ": max_tangent_cols = " +
          std::to_string(max_tangent_cols) + " is below dim = " + std::to_string(d) +
          " (one sample's dim tangents go through one pass; 0 chooses automatically)");
    const Index budget = max_tangent_cols != 0 ? max_tangent_cols : std::max(kAutoTangentCols, d);
    const Index chunk = std::max<Index>(1, std::min<Index>(B, budget / d));
    for (Index r0 = 0; r0 < B; r0 += chunk) {
      const Index n = std::min(chunk, B - r0);
      run_forward(x.col_block(r0, n), ConstVectorView<S>(t.data + r0, n), v_out.col_block(r0, n),
                  ws, cond.empty() ? cond : cond.col_block(r0, n));
      prepare_jvp(ws, n * d);
      Backend::identity_tiles(ws.context(), ws.tan_in);  // dim unit tangents per sample
      run_jvp(ws, ws.tan_in, ws.tan_out, d);             // columns of J_x(v) for every sample
      Backend::block_traces(ws.context(), ConstMatrixView<S>(ws.tan_out), div_out.data + r0);
    }
  }

  /// The parameters the layers read: the own buffer, or the caller's storage after
  /// bind_storage (a field that offers binding reads them through this, never params_).
  S* param_data() { return external_ != nullptr ? external_ : params_.data(); }
  const S* param_data() const { return external_ != nullptr ? external_ : params_.data(); }

  /// From now on the parameters are the num_params() values at `storage` (backend memory of the
  /// caller, which outlives every use); the own buffer is released. nullptr: not allowed.
  void bind_storage(S* storage) {
    external_ = storage;
    params_ = typename Backend::template Buffer<S>();
  }

  ParamLayout layout_;
  typename Backend::template Buffer<S> params_;

 private:
  const Field& field() const { return static_cast<const Field&>(*this); }

  void check_cond(const char* w, ConstMatrixView<S> cond, Index B) const {
    const Index c = field().cond_dim();
    if (c > 0) {
      check_shape(w, "cond", cond, c, B);
    } else if (!cond.empty()) {
      check_shape(w, "cond", cond, 0, B);
    }
  }

  void require_forward(const char* w, const Workspace& ws) const {
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
  }

  void backward_checked(const char* w, Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                        S* d_p, MatrixView<S> d_cond) const {
    require_forward(w, ws);
    const Index B = ws.batch_;
    check_shape(w, "d_v", d_v, dim_, B);
    if (d_p == nullptr || !d_x.empty()) check_shape(w, "d_x", d_x, dim_, B);
    if (!d_cond.empty()) {
      if (field().cond_dim() == 0)
        flowprior::detail::raise<config_error>(std::string("[flowprior.config] ") + w +
                                               ": d_cond given but the field is unconditioned");
      check_shape(w, "d_cond", d_cond, field().cond_dim(), B);
    }
    prepare_backward(ws);
    GradientReady* ready = d_p != nullptr ? ws.ready_ : nullptr;
    if constexpr (decltype(reports_ready<Field>(0))::value) {
      field().backward_layers(ws.context(), ws.c, ws.groups_, d_v, d_x, d_p, d_cond, ready);
    } else {
      field().backward_layers(ws.context(), ws.c, ws.groups_, d_v, d_x, d_p, d_cond);
      if (ready) ready->ready(0);
    }
  }

  /// Whether F's backward_layers takes a GradientReady* (then it reports layer by layer).
  template <class F>
  static auto reports_ready(int)
      -> decltype(std::declval<const F&>().backward_layers(
                      std::declval<Context&>(), std::declval<Caches&>(), Index{},
                      ConstMatrixView<S>(), MatrixView<S>(), static_cast<S*>(nullptr),
                      MatrixView<S>(), static_cast<GradientReady*>(nullptr)),
                  std::true_type{});
  template <class F>
  static std::false_type reports_ready(...);

  /// Layout of the forward caches for B samples in R time groups (R == B: ungrouped).
  void prepare_forward(Workspace& ws, Index B, Index R) const {
    if (ws.fwd_layout_ == B && ws.fwd_groups_ == R && ws.key_ == key_) return;
    ws.key_ = LayoutKey();  // invalid until the layout below is complete
    for (int pass = 0; pass < 2; ++pass) {
      ws.fwd_.begin(pass == 0);
      field().layout_forward(ws.fwd_, ws.c, B, R);
      if (pass == 0) ws.fwd_.reserve_counted(Field::kNames.forward, B);
    }
    ws.key_ = key_;
    ws.fwd_layout_ = B;
    ws.fwd_groups_ = R;
    ws.bwd_batch_ = -1;
    ws.jvp_cols_ = -1;
  }

  void prepare_backward(Workspace& ws) const {
    const Index B = ws.batch_;
    if (ws.bwd_batch_ == B) return;
    for (int pass = 0; pass < 2; ++pass) {
      ws.bwd_.begin(pass == 0);
      field().layout_backward(ws.bwd_, ws.c, B);
      if (pass == 0) ws.bwd_.reserve_counted(Field::kNames.backward, B);
    }
    ws.bwd_batch_ = B;
  }

  void prepare_jvp(Workspace& ws, Index cols) const {
    if (ws.jvp_cols_ == cols) return;
    for (int pass = 0; pass < 2; ++pass) {
      ws.jvp_.begin(pass == 0);
      field().layout_jvp(ws.jvp_, ws.c, cols);
      ws.tan_in = ws.jvp_.take(dim_, cols);
      ws.tan_out = ws.jvp_.take(dim_, cols);
      if (pass == 0) ws.jvp_.reserve_counted(Field::kNames.jvp_x, cols);
    }
    ws.jvp_cols_ = cols;
  }

  void run_forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out, Workspace& ws,
                   ConstMatrixView<S> cond) const {
    const Index B = x.cols;
    // Time groups: runs of equal consecutive t share the t-dependent work.  adaln.md (17)
    const Index R = field().group_times() && B > 1 ? ws.groups_map_.update(ws.context(), t) : B;
    prepare_forward(ws, B, R);
    ws.owner_ = this;
    ws.batch_ = B;
    ws.groups_ = R;
    const bool grouped = R < B;
    field().forward_layers(ws.context(), x, grouped ? ws.groups_map_.times(R) : t,
                           grouped ? ws.groups_map_.map() : nullptr, v_out, cond, ws.c);
  }

  void run_jvp(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const {
    prepare_jvp(ws, dx.cols);
    field().jvp_layers(ws.context(), ws.c, dx, dv_out, K);
  }

  Index dim_ = 0;
  LayoutKey key_;          // what a workspace laid out for this field must match
  S* external_ = nullptr;  // bound storage (bind_storage), or null: params_
};

}  // namespace nn
}  // namespace flowprior
