/// @file
/// MlpField: a plain MLP velocity field for small problems,
///   z = [x ; phi(t)],  a_0 = z,  a_{l+1} = act(W_l a_l + b_l) (l < depth),  v = W_out a_depth + b_out,
/// with phi(t) = t (TimeEncoding::Concat) or the sinusoidal features of time_embedding.md (1)
/// (TimeEncoding::Sinusoidal). Equations: docs/math/mlp.md. Same API as AdaLNMlp.
///
/// Parameter names: `layers.<l>.{weight,bias}` for l = 0..depth, the last one being the output.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>

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

  Index time_features() const {
    return time_encoding == TimeEncoding::Concat ? 1 : time_freq_dim;
  }
  void validate() const {
    const char* w = "MlpFieldConfig";
    if (dim <= 0) raise_config(w, "dim must be positive, got " + std::to_string(dim));
    if (width <= 0) raise_config(w, "width must be positive, got " + std::to_string(width));
    if (depth <= 0) raise_config(w, "depth must be >= 1, got " + std::to_string(depth));
    if (time_encoding == TimeEncoding::Sinusoidal && (time_freq_dim <= 0 || time_freq_dim % 2))
      raise_config(w, "time_freq_dim must be positive and even, got " +
                          std::to_string(time_freq_dim));
    if (!(max_period > 1.0)) raise_config(w, "max_period must be > 1");
  }
};

template <class S, class Backend = CpuBackend>
class MlpField {
 public:
  using Scalar = S;
  using Config = MlpFieldConfig;

  /// Copying a workspace gives an empty one (its views would otherwise point into the source's
  /// memory); moving keeps the memory and the caches.
  class Workspace {
   public:
    Workspace() = default;
    Workspace(const Workspace&) {}
    Workspace& operator=(const Workspace&) {
      *this = Workspace();
      return *this;
    }
    Workspace(Workspace&&) = default;
    Workspace& operator=(Workspace&&) = default;
    Index batch() const { return batch_; }

   private:
    friend class MlpField;
    Arena<S, Backend> fwd_, bwd_, jvp_;
    Index batch_ = -1, fwd_layout_ = -1, bwd_batch_ = -1, jvp_cols_ = -1;
    LayoutKey key_;  // the sizes of the field the caches were laid out for
    const void* owner_ = nullptr;
    MatrixView<S> z;                  // (dim + F, B) network input
    std::vector<MatrixView<S>> pre;   // (W, B) pre-activations
    std::vector<MatrixView<S>> post;  // (W, B) activations
    MatrixView<S> t1, t2;             // backward scratch
    MatrixView<S> j1, j2, tan_in, tan_out;  // jvp scratch
  };

  /// Builds the layout and allocates the parameters. Throws config_error from cfg.validate(),
  /// or naming the sizes when the parameter count overflows or cannot fit in memory
  /// (docs/errors.md "Sizes"), before the parameters are allocated.
  explicit MlpField(const Config& cfg) : cfg_(cfg) {
    cfg_.validate();
    const std::string sizes = "dim " + std::to_string(cfg_.dim) + ", width " +
                              std::to_string(cfg_.width) + ", depth " + std::to_string(cfg_.depth);
    try {
      Index in = checked_add("MlpField", "input size", cfg_.dim, cfg_.time_features());
      for (Index l = 0; l < cfg_.depth; ++l) {
        check_allocation("MlpField", "the parameters of " + sizes, layout_.total(), sizeof(S));
        layers_.push_back(Linear<S, Backend>::make(layout_, "layers." + std::to_string(l), in,
                                                   cfg_.width));
        in = cfg_.width;
      }
      layers_.push_back(Linear<S, Backend>::make(layout_, "layers." + std::to_string(cfg_.depth),
                                                 cfg_.width, cfg_.dim));
    } catch (const config_error& e) {
      raise_config("MlpField", "the network (" + sizes + ") is too large: " + e.what());
    }
    check_allocation("MlpField", "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    key_.sizes = {{layout_.total(), cfg_.dim, cfg_.width, cfg_.depth, cfg_.time_features(), 0, 0,
                   0}};
  }

  const Config& config() const { return cfg_; }
  Index dim() const { return cfg_.dim; }
  Index num_params() const { return layout_.total(); }
  const ParamLayout& layout() const { return layout_; }
  VectorView<S> parameters() { return {params_.data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {params_.data(), layout_.total()}; }

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
    std::vector<S> host(static_cast<std::size_t>(layout_.total()), S(0));
    for (const auto& l : layers_) l.init_xavier(host.data(), rng);
    Backend::copy_from_host(host.data(), layout_.total(), params_);
  }

  /// v_out (dim, B) = v(x, t). @pre x (dim, B), t (B) in [0, 1], v_out (dim, B).
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    const char* w = "MlpField::forward";
    check_shape(w, "x", x, cfg_.dim, x.cols);
    check_size(w, "t", t, x.cols);
    check_shape(w, "v", v_out, cfg_.dim, x.cols);
    check_unit_interval(w, "t", t);
    forward_impl(x, t, v_out, ws);
  }

  /// d_x += J_x(v)^T d_v (no parameter gradient).                    mlp.md (3)
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    backward_checked("MlpField::vjp_x", ws, d_v, d_x, nullptr);
  }

  /// d_params += dL/dparams; d_x += dL/dx where d_x is non-empty.     mlp.md (2)-(3)
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    check_size("MlpField::backward", "d_params", d_params, num_params());
    backward_checked("MlpField::backward", ws, d_v, d_x, d_params.data);
  }

  /// dv_out = J_x(v) dx for K tangents per sample (columns b*K + k).   mlp.md (4)
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    const char* w = "MlpField::jvp_x";
    require_forward(w, ws);
    check_tangents(w, K);
    const Index cols = checked_mul(w, "batch x K", ws.batch_, K);
    check_shape(w, "dx", dx, cfg_.dim, cols);
    check_shape(w, "dv", dv_out, cfg_.dim, cols);
    jvp_impl(ws, dx, dv_out, K);
  }

  /// Exact divergence tr(dv/dx) per sample and v, in one batched forward-mode pass per chunk.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws, Index max_tangent_cols = 4096) const {
    const char* w = "MlpField::divergence";
    check_shape(w, "x", x, cfg_.dim, x.cols);
    const Index B = x.cols;
    check_size(w, "t", t, B);
    check_shape(w, "v", v_out, cfg_.dim, B);
    check_size(w, "div", div_out, B);
    check_unit_interval(w, "t", t);
    const Index d = cfg_.dim;
    const Index chunk = std::max<Index>(1, std::min<Index>(B, max_tangent_cols / d));
    for (Index r0 = 0; r0 < B; r0 += chunk) {
      const Index n = std::min(chunk, B - r0);
      forward_impl(x.col_block(r0, n), ConstVectorView<S>(t.data + r0, n),
                   v_out.col_block(r0, n), ws);
      prepare_jvp(ws, n * d);
      Backend::identity_tiles(ws.tan_in);
      jvp_impl(ws, ws.tan_in, ws.tan_out, d);
      Backend::block_traces(ConstMatrixView<S>(ws.tan_out), div_out.data + r0);
    }
  }

 private:
  void require_forward(const char* w, const Workspace& ws) const {
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
  }

  void prepare_forward(Workspace& ws, Index B) const {
    if (ws.fwd_layout_ == B && ws.key_ == key_) return;
    ws.key_ = LayoutKey();  // invalid until the layout below is complete
    for (int pass = 0; pass < 2; ++pass) {
      ws.fwd_.begin(pass == 0);
      ws.z = ws.fwd_.take(cfg_.dim + cfg_.time_features(), B);
      ws.pre.clear();
      ws.post.clear();
      for (Index l = 0; l < cfg_.depth; ++l) {
        ws.pre.push_back(ws.fwd_.take(cfg_.width, B));
        ws.post.push_back(ws.fwd_.take(cfg_.width, B));
      }
      if (pass == 0) ws.fwd_.reserve_counted("MlpField::forward", B);
    }
    ws.key_ = key_;
    ws.fwd_layout_ = B;
    ws.bwd_batch_ = -1;
    ws.jvp_cols_ = -1;
  }

  void prepare_backward(Workspace& ws) const {
    const Index B = ws.batch_;
    if (ws.bwd_batch_ == B) return;
    for (int pass = 0; pass < 2; ++pass) {
      ws.bwd_.begin(pass == 0);
      ws.t1 = ws.bwd_.take(cfg_.width, B);
      ws.t2 = ws.bwd_.take(cfg_.width, B);
      if (pass == 0) ws.bwd_.reserve_counted("MlpField::backward", B);
    }
    ws.bwd_batch_ = B;
  }

  void prepare_jvp(Workspace& ws, Index cols) const {
    if (ws.jvp_cols_ == cols) return;
    for (int pass = 0; pass < 2; ++pass) {
      ws.jvp_.begin(pass == 0);
      ws.j1 = ws.jvp_.take(cfg_.width, cols);
      ws.j2 = ws.jvp_.take(cfg_.width, cols);
      ws.tan_in = ws.jvp_.take(cfg_.dim, cols);
      ws.tan_out = ws.jvp_.take(cfg_.dim, cols);
      if (pass == 0) ws.jvp_.reserve_counted("MlpField::jvp_x", cols);
    }
    ws.jvp_cols_ = cols;
  }

  void forward_impl(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                    Workspace& ws) const {
    const Index B = x.cols;
    prepare_forward(ws, B);
    ws.owner_ = this;
    ws.batch_ = B;
    const S* p = params_.data();
    Backend::copy(x, ws.z.row_block(0, cfg_.dim));                     // mlp.md (1)
    MatrixView<S> tf = ws.z.row_block(cfg_.dim, cfg_.time_features());
    if (cfg_.time_encoding == TimeEncoding::Concat)
      Backend::copy(ConstMatrixView<S>(t.data, 1, B, 1), tf);
    else
      Backend::time_features(t, static_cast<S>(cfg_.max_period), tf);
    ConstMatrixView<S> a = ws.z;
    for (Index l = 0; l < cfg_.depth; ++l) {
      layers_[l].forward(p, a, ws.pre[l]);
      Backend::activation_forward(cfg_.activation, ws.pre[l], ws.post[l]);
      a = ws.post[l];
    }
    layers_.back().forward(p, a, v_out);
  }

  void backward_checked(const char* w, Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                        S* d_p) const {
    require_forward(w, ws);
    const Index B = ws.batch_;
    check_shape(w, "d_v", d_v, cfg_.dim, B);
    if (d_p == nullptr || !d_x.empty()) check_shape(w, "d_x", d_x, cfg_.dim, B);
    prepare_backward(ws);
    const S* p = params_.data();
    const Index L = cfg_.depth;
    if (d_p) layers_[L].backward_params(ws.post[L - 1], d_v, d_p);  // mlp.md (2)
    layers_[L].backward_input(p, d_v, ws.t1, false);                 // t1 = d_a_L
    for (Index l = L; l-- > 0;) {
      Backend::activation_backward(cfg_.activation, ws.pre[l], ws.t1, ws.t1);  // d_pre_l
      ConstMatrixView<S> a_in = l > 0 ? ConstMatrixView<S>(ws.post[l - 1]) : ws.z;
      if (d_p) layers_[l].backward_params(a_in, ws.t1, d_p);
      if (l > 0) {
        layers_[l].backward_input(p, ws.t1, ws.t2, false);
        std::swap(ws.t1, ws.t2);
      } else if (!d_x.empty()) {
        // Only the x rows of the input receive a gradient (t is not differentiated): mlp.md (3)
        Backend::gemm(false, false, S(1), layers_[0].wt(p).row_block(0, cfg_.dim), ws.t1, S(1),
                      d_x);
      }
    }
  }

  void jvp_impl(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const {
    prepare_jvp(ws, dx.cols);
    const S* p = params_.data();
    MatrixView<S> cur = ws.j1.col_block(0, dx.cols);
    MatrixView<S> nxt = ws.j2.col_block(0, dx.cols);
    // The tangent of phi(t) is zero: only the x rows of layer 0 act.   mlp.md (4)
    Backend::gemm(true, false, S(1), layers_[0].wt(p).row_block(0, cfg_.dim), dx, S(0), cur);
    for (Index l = 0; l < cfg_.depth; ++l) {
      Backend::activation_jvp(cfg_.activation, ws.pre[l], cur, cur, K);
      if (l + 1 < cfg_.depth) {
        layers_[l + 1].jvp(p, cur, nxt);
        std::swap(cur, nxt);
      }
    }
    layers_.back().jvp(p, cur, dv_out);
  }

  Config cfg_;
  ParamLayout layout_;
  typename Backend::template Buffer<S> params_;
  std::vector<Linear<S, Backend>> layers_;
  LayoutKey key_;  // what a workspace laid out for this field must match
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
