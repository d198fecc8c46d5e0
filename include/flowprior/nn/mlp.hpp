/// @file
/// MlpField: a plain MLP velocity field for small problems,
///   z = [x ; phi(t)], a_0 = z, a_{l+1} = act(W_l a_l + b_l) (l < depth), v = W_out a_depth + b_out
/// with phi(t) = t (TimeEncoding::Concat) or the sinusoidal features of time_embedding.md (1)
/// (TimeEncoding::Sinusoidal). Equations: docs/math/mlp.md. Same API as AdaLNMlp.
///
/// Parameter names: `layers.<l>.{weight,bias}` for l = 0..depth, the last one being the output.
#pragma once

#include <algorithm>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/field.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace nn {

/// How a plain MLP sees the time.
enum class TimeEncoding { Concat, Sinusoidal };

struct MlpFieldConfig {
  Index dim = 2;
  Index width = 128;
  Index depth = 3;  ///< hidden layers (>= 1)
  TimeEncoding time_encoding = TimeEncoding::Sinusoidal;
  Index time_freq_dim = 32;  ///< sinusoidal features (even); ignored for Concat
  double max_period = 10000.0;
  Activation activation = Activation::SiLU;

  Index time_features() const { return time_encoding == TimeEncoding::Concat ? 1 : time_freq_dim; }
  void validate() const {
    const char* w = "MlpFieldConfig";
    if (dim <= 0) raise_config(w, "dim must be positive, got " + std::to_string(dim));
    if (width <= 0) raise_config(w, "width must be positive, got " + std::to_string(width));
    if (depth <= 0) raise_config(w, "depth must be >= 1, got " + std::to_string(depth));
    if (time_encoding == TimeEncoding::Sinusoidal && (time_freq_dim <= 0 || time_freq_dim % 2))
      raise_config(w,
                   "time_freq_dim must be positive and even, got " + std::to_string(time_freq_dim));
    if (!(max_period > 1.0)) raise_config(w, "max_period must be > 1");
  }
};

namespace detail {
/// MlpField's views into its workspace arenas.
template <class S>
struct MlpFieldCaches {
  MatrixView<S> z;                  // (dim + F, B) network input
  std::vector<MatrixView<S>> pre;   // (W, B) pre-activations
  std::vector<MatrixView<S>> post;  // (W, B) activations
  MatrixView<S> t1, t2;             // backward scratch
  MatrixView<S> j1, j2;             // jvp scratch
};
}  // namespace detail

/// The plain MLP on the field shell (field.hpp), which provides forward, vjp_x, backward, jvp_x
/// and divergence with their checks. Time convention: none; t in [0, 1] as trained.
template <class S, class Backend = CpuBackend>
class MlpField : public FieldBase<MlpField<S, Backend>, S, Backend, detail::MlpFieldCaches<S>> {
  using Base = FieldBase<MlpField<S, Backend>, S, Backend, detail::MlpFieldCaches<S>>;
  using Caches = detail::MlpFieldCaches<S>;
  friend Base;

 public:
  using Scalar = S;
  using Config = MlpFieldConfig;
  using Workspace = typename Base::Workspace;
  /// The backend context (docs/backends.md "Context"); a workspace owns one or uses the
  /// caller's (Workspace::set_context).
  using Context = typename Base::Context;

  /// Builds the layout and allocates the parameters. Throws config_error from cfg.validate(),
  /// or naming the sizes when the parameter count overflows or cannot fit in memory
  /// (docs/errors.md "Sizes"), before the parameters are allocated.
  explicit MlpField(const Config& cfg) : cfg_(cfg) {
    cfg_.validate();
    const std::string sizes = "dim " + std::to_string(cfg_.dim) + ", width " +
                              std::to_string(cfg_.width) + ", depth " + std::to_string(cfg_.depth);
    ParamLayout& layout = this->layout_;
    try {
      Index in = checked_add("MlpField", "input size", cfg_.dim, cfg_.time_features());
      for (Index l = 0; l < cfg_.depth; ++l) {
        check_allocation("MlpField", "the parameters of " + sizes, layout.total(), sizeof(S));
        layers_.push_back(
            Linear<S, Backend>::make(layout, "layers." + std::to_string(l), in, cfg_.width));
        in = cfg_.width;
      }
      layers_.push_back(Linear<S, Backend>::make(layout, "layers." + std::to_string(cfg_.depth),
                                                 cfg_.width, cfg_.dim));
    } catch (const config_error& e) {
      raise_config("MlpField", "the network (" + sizes + ") is too large: " + e.what());
    }
    this->allocate_parameters("MlpField", sizes, cfg_.dim,
                              {{cfg_.dim, cfg_.width, cfg_.depth, cfg_.time_features(), 0, 0, 0}});
  }

  const Config& config() const { return cfg_; }

  /// Matrix-product FLOPs per sample of each pass (2 m n k per product).
  MatmulFlops matmul_flops_per_row() const {
    const double W = double(cfg_.width), d = double(cfg_.dim);
    const double F = double(cfg_.time_features()), L = double(cfg_.depth);
    MatmulFlops f;
    f.forward = 2 * ((d + F) * W + (L - 1) * W * W + W * d);
    f.vjp_x = 2 * (W * d + (L - 1) * W * W + d * W);
    f.jvp_x = f.vjp_x;
    f.backward = f.forward + f.vjp_x;
    return f;
  }

  /// Xavier-uniform weights and zero biases for every layer (the output layer included).
  void init(Rng& rng) {
    std::vector<S> host(static_cast<std::size_t>(this->num_params()), S(0));
    for (const auto& l : layers_) l.init_xavier(host.data(), rng);
    Backend::copy_from_host(host.data(), this->num_params(), this->params_);
  }

 private:
  static constexpr FieldNames kNames{"MlpField::forward", "MlpField::vjp_x", "MlpField::backward",
                                     "MlpField::jvp_x", "MlpField::divergence"};
  Index cond_dim() const { return 0; }
  bool group_times() const { return false; }

  void layout_forward(Arena<S, Backend>& a, Caches& c, Index B, Index) const {
    c.z = a.take(cfg_.dim + cfg_.time_features(), B);
    c.pre.clear();
    c.post.clear();
    for (Index l = 0; l < cfg_.depth; ++l) {
      c.pre.push_back(a.take(cfg_.width, B));
      c.post.push_back(a.take(cfg_.width, B));
    }
  }

  void layout_backward(Arena<S, Backend>& a, Caches& c, Index B) const {
    c.t1 = a.take(cfg_.width, B);
    c.t2 = a.take(cfg_.width, B);
  }

  void layout_jvp(Arena<S, Backend>& a, Caches& c, Index cols) const {
    c.j1 = a.take(cfg_.width, cols);
    c.j2 = a.take(cfg_.width, cols);
  }

  void forward_layers(Context& ctx, ConstMatrixView<S> x, ConstVectorView<S> t, const Index*,
                      MatrixView<S> v_out, ConstMatrixView<S>, Caches& c) const {
    const Index B = x.cols;
    const S* p = this->params_.data();
    Backend::copy(ctx, x, c.z.row_block(0, cfg_.dim));  // mlp.md (1)
    MatrixView<S> tf = c.z.row_block(cfg_.dim, cfg_.time_features());
    if (cfg_.time_encoding == TimeEncoding::Concat)
      Backend::copy(ctx, ConstMatrixView<S>(t.data, 1, B, 1), tf);
    else
      Backend::time_features(ctx, t, static_cast<S>(cfg_.max_period), tf);
    ConstMatrixView<S> a = c.z;
    for (Index l = 0; l < cfg_.depth; ++l) {
      layers_[l].forward(ctx, p, a, c.pre[l]);
      Backend::activation_forward(ctx, cfg_.activation, c.pre[l], c.post[l]);
      a = c.post[l];
    }
    layers_.back().forward(ctx, p, a, v_out);
  }

  /// The layers sit in the flat layout in order, so layer l's gradient is final once its
  /// backward_params is done: `ready` hears so after each.
  void backward_layers(Context& ctx, Caches& c, Index, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                       S* d_p, MatrixView<S>, GradientReady* ready) const {
    const S* p = this->params_.data();
    const Index L = cfg_.depth;
    if (d_p) layers_[L].backward_params(ctx, c.post[L - 1], d_v, d_p);  // mlp.md (2)
    if (ready) ready->ready(layers_[L].w);
    layers_[L].backward_input(ctx, p, d_v, c.t1, false);  // t1 = d_a_L
    for (Index l = L; l-- > 0;) {
      Backend::activation_backward(ctx, cfg_.activation, c.pre[l], c.t1, c.t1);  // d_pre_l
      ConstMatrixView<S> a_in = l > 0 ? ConstMatrixView<S>(c.post[l - 1]) : c.z;
      if (d_p) layers_[l].backward_params(ctx, a_in, c.t1, d_p);
      if (ready) ready->ready(l > 0 ? layers_[l].w : 0);
      if (l > 0) {
        layers_[l].backward_input(ctx, p, c.t1, c.t2, false);
        std::swap(c.t1, c.t2);
      } else if (!d_x.empty()) {
        // Only the x rows of the input receive a gradient (t is not differentiated): mlp.md (3)
        Backend::gemm(ctx, false, false, S(1), layers_[0].wt(p).row_block(0, cfg_.dim), c.t1, S(1),
                      d_x);
      }
    }
  }

  void jvp_layers(Context& ctx, Caches& c, ConstMatrixView<S> dx, MatrixView<S> dv_out,
                  Index K) const {
    const S* p = this->params_.data();
    MatrixView<S> cur = c.j1.col_block(0, dx.cols);
    MatrixView<S> nxt = c.j2.col_block(0, dx.cols);
    // The tangent of phi(t) is zero: only the x rows of layer 0 act.   mlp.md (4)
    Backend::gemm(ctx, true, false, S(1), layers_[0].wt(p).row_block(0, cfg_.dim), dx, S(0), cur);
    for (Index l = 0; l < cfg_.depth; ++l) {
      Backend::activation_jvp(ctx, cfg_.activation, c.pre[l], cur, cur, K);
      if (l + 1 < cfg_.depth) {
        layers_[l + 1].jvp(ctx, p, cur, nxt);
        std::swap(cur, nxt);
      }
    }
    layers_.back().jvp(ctx, p, cur, dv_out);
  }

  Config cfg_;
  std::vector<Linear<S, Backend>> layers_;
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
