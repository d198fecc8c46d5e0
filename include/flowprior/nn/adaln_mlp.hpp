/// @file
/// AdaLNMlp: the released flow head (SimpleMLPAdaLN of MAR / the paper's code), as a velocity
/// field v(x, t [, cond]). Architecture (docs/math/adaln.md, method.md section 4):
///
///   c  = TimeEmbed(t) [+ cond_embed(cond)]          s = SiLU(c)
///   h  = input_proj(x)
///   h  = ResBlock_i(h, s)        i = 0 .. depth-1
///   v  = FinalLayer(h, s)
///
/// Time convention: the network itself is convention-free; it evaluates whatever it was trained
/// on. t must lie in [0, 1] (the sinusoidal embedding is used with raw t, as released).
///
/// Layout: x, v are (dim, B) column-major, one column per sample; t is (B); cond is (cond_dim, B).
/// Parameters live in one flat vector whose tensors carry the PyTorch state_dict names.
/// Gradients accumulate (+=) into every output (docs/conventions.md "gradient semantics").
/// Thread safety: const methods only read the parameters; each thread needs its own Workspace.
#pragma once

#include <algorithm>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/adaln_blocks.hpp>
#include <flowprior/nn/field.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/time_embedding.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace nn {

/// Configuration of AdaLNMlp. Defaults are the released ImageNet flow head.
struct AdaLNMlpConfig {
  Index dim = 32;                            ///< latent dimension d (input and output)
  Index width = 1024;                        ///< model channels W
  Index depth = 6;                           ///< number of residual blocks
  Index cond_dim = 0;                        ///< conditioning vector size; 0 = unconditioned
  Index time_freq_dim = 256;                 ///< sinusoidal features (even)
  double max_period = 10000.0;               ///< frequency scale of the time embedding
  double ln_eps = 1e-6;                      ///< LayerNorm epsilon
  Activation activation = Activation::SiLU;  ///< activation inside the residual MLPs
  /// Time groups (adaln.md "Time groups"): when consecutive samples share t, evaluate the time
  /// embedding and every adaLN modulation once per run of equal t instead of once per sample.
  /// Same results (to rounding), fewer FLOPs; used automatically when the runs at least halve
  /// the work and the field is unconditioned.
  bool group_times = true;

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "AdaLNMlpConfig";
    if (dim <= 0) raise_config(w, "dim must be positive, got " + std::to_string(dim));
    if (width <= 0) raise_config(w, "width must be positive, got " + std::to_string(width));
    if (depth < 0) raise_config(w, "depth must be >= 0, got " + std::to_string(depth));
    if (cond_dim < 0) raise_config(w, "cond_dim must be >= 0, got " + std::to_string(cond_dim));
    if (time_freq_dim <= 0 || time_freq_dim % 2 != 0)
      raise_config(w,
                   "time_freq_dim must be positive and even, got " + std::to_string(time_freq_dim));
    if (!(max_period > 1.0)) raise_config(w, "max_period must be > 1");
    if (!(ln_eps > 0.0)) raise_config(w, "ln_eps must be > 0");
  }
};

namespace detail {
/// AdaLNMlp's views into its workspace arenas.
template <class S, class Backend>
struct AdaLNMlpCaches {
  // forward caches
  typename TimeEmbedding<S, Backend>::Cache temb;
  MatrixView<S> x_in, cond_in, c, sc, h;
  std::vector<typename ResBlock<S, Backend>::Cache> blocks;
  typename FinalLayer<S, Backend>::Cache fin;
  // backward scratch
  BlockScratch<S> bs;
  MatrixView<S> d_h, d_sc;
  // jvp scratch
  JvpScratch<S> js;
  MatrixView<S> dh;
};
}  // namespace detail

/// The flow head on the field shell (field.hpp), which provides the checks, the workspace, the
/// divergence and the time groups; vjp_x and jvp_x are the shell's, forward, backward and
/// divergence add the conditioning.
template <class S, class Backend = CpuBackend>
class AdaLNMlp
    : public FieldBase<AdaLNMlp<S, Backend>, S, Backend, detail::AdaLNMlpCaches<S, Backend>> {
  using Base = FieldBase<AdaLNMlp<S, Backend>, S, Backend, detail::AdaLNMlpCaches<S, Backend>>;
  using Caches = detail::AdaLNMlpCaches<S, Backend>;
  friend Base;

 public:
  using Scalar = S;
  using Config = AdaLNMlpConfig;
  /// Per-thread memory for activations (forward caches) and backward/JVP scratch. Reused across
  /// calls: a call with a batch size it has already seen allocates nothing. Copying a workspace
  /// gives an empty one; moving keeps the memory and the caches (field.hpp FieldWorkspace).
  using Workspace = typename Base::Workspace;
  /// The backend context (docs/backends.md "Context"); a workspace owns one or uses the
  /// caller's (Workspace::set_context).
  using Context = typename Base::Context;

  /// Builds the layout and allocates the parameters. Throws config_error from cfg.validate(),
  /// or naming the sizes when the parameter count overflows or cannot fit in memory
  /// (docs/errors.md "Sizes"), before the parameters are allocated.
  explicit AdaLNMlp(const Config& cfg) : cfg_(cfg) {
    cfg_.validate();
    const S eps = static_cast<S>(cfg_.ln_eps);
    const std::string sizes = "dim " + std::to_string(cfg_.dim) + ", width " +
                              std::to_string(cfg_.width) + ", depth " + std::to_string(cfg_.depth) +
                              ", cond_dim " + std::to_string(cfg_.cond_dim) + ", time_freq_dim " +
                              std::to_string(cfg_.time_freq_dim);
    ParamLayout& layout = this->layout_;
    try {
      temb_ = TimeEmbedding<S, Backend>::make(layout, "time_embed", cfg_.time_freq_dim, cfg_.width,
                                              static_cast<S>(cfg_.max_period));
      if (cfg_.cond_dim > 0)
        cond_ = Linear<S, Backend>::make(layout, "cond_embed", cfg_.cond_dim, cfg_.width);
      input_ = Linear<S, Backend>::make(layout, "input_proj", cfg_.dim, cfg_.width);
      for (Index i = 0; i < cfg_.depth; ++i) {
        // one check per block before its layout entries, so depth 1e18 fails fast too
        check_allocation("AdaLNMlp", "the parameters of " + sizes, layout.total(), sizeof(S));
        blocks_.push_back(ResBlock<S, Backend>::make(layout, "res_blocks." + std::to_string(i),
                                                     cfg_.width, eps, cfg_.activation));
      }
      final_ = FinalLayer<S, Backend>::make(layout, "final_layer", cfg_.width, cfg_.dim, eps);
    } catch (const config_error& e) {
      raise_config("AdaLNMlp", "the network (" + sizes + ") is too large: " + e.what());
    }
    this->allocate_parameters(
        "AdaLNMlp", sizes, cfg_.dim,
        {{cfg_.dim, cfg_.width, cfg_.depth, cfg_.cond_dim, cfg_.time_freq_dim, 0, 0}});
  }

  const Config& config() const { return cfg_; }

  /// Matrix-product FLOPs per sample of each pass (2 m n k per product), ungrouped.
  MatmulFlops matmul_flops_per_row() const {
    const double W = double(cfg_.width), d = double(cfg_.dim), F = double(cfg_.time_freq_dim);
    const double c = double(cfg_.cond_dim), L = double(cfg_.depth);
    MatmulFlops f;
    // time MLP, cond, input, blocks (adaLN 3W^2 + MLP 2W^2), final (adaLN 2W^2 + W d)
    f.forward = 2 * (F * W + W * W + c * W + d * W + L * 5 * W * W + 2 * W * W + W * d);
    // x path only: final linear, block MLPs, input projection
    f.vjp_x = 2 * (W * d + L * 2 * W * W + d * W);
    f.jvp_x = f.vjp_x;
    // every weight gradient (= forward) + input gradients incl. the conditioning path
    f.backward = f.forward + 2 * (W * d + L * 5 * W * W + 2 * W * W + d * W + W * W);
    return f;
  }

  /// The released initialisation (docs/math/adaln.md "initialisation"): Xavier-uniform Linear
  /// weights and zero biases; time-MLP weights N(0, 0.02^2); cond_embed Xavier; every adaLN
  /// modulation and the final linear zero. Hence v == 0 at initialisation.
  void init(Rng& rng) {
    std::vector<S> host(static_cast<std::size_t>(this->num_params()), S(0));
    S* p = host.data();
    // torch applies Xavier to every Linear first, then overwrites; we draw in module order.
    temb_.init(p, rng);
    if (cfg_.cond_dim > 0) cond_.init_xavier(p, rng);
    input_.init_xavier(p, rng);
    for (const auto& b : blocks_) b.init(p, rng);
    final_.init(p);
    Backend::copy_from_host(host.data(), this->num_params(), this->param_data());
  }

  /// Runs on parameters held elsewhere: from now on parameters(), init() and every pass use the
  /// num_params() values of `storage` (backend memory that the caller owns and keeps alive, e.g.
  /// the slice diffloss.net.* of nn::MarGenerator's flat vector), and the field's own buffer is
  /// released. The values are not changed. A copy of the field shares the storage (rebind the
  /// copy). Throws shape_error unless storage has num_params() values.
  void use_parameters(VectorView<S> storage) {
    check_size("AdaLNMlp::use_parameters", "storage", storage, this->num_params());
    this->bind_storage(storage.data);
  }

  /// v_out (dim, B) = v(x, t [, cond]). Caches activations in ws for vjp_x / backward / jvp_x.
  /// Time convention: the field's own (t in [0, 1] as trained).
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B), cond (cond_dim, B) iff conditioned.
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out, Workspace& ws,
               ConstMatrixView<S> cond = {}) const {
    this->forward_checked(kNames.forward, x, t, v_out, ws, cond);
  }

  /// Full backward for the batch of the last forward on ws: accumulates dL/dparams into d_params
  /// (size num_params()), and, where given (non-empty), d_x += dL/dx and d_cond += dL/dcond.
  /// Time convention: that of the forward.                            adaln.md (13)
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x, VectorView<S> d_params,
                MatrixView<S> d_cond = {}) const {
    this->backward_params_checked(kNames.backward, ws, d_v, d_x, d_params, d_cond);
  }

  /// Exact divergence tr(dv/dx) per sample, and v itself (field.hpp, in chunks of at most
  /// max_tangent_cols tangent columns). Cost about dim forward passes of the x-path.
  /// Time convention: the field's own.                                 adaln.md (15)
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B), div_out (B), max_tangent_cols 0
  /// (automatic: 4096, or dim if larger) or at least dim.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws, ConstMatrixView<S> cond = {},
                  Index max_tangent_cols = 0) const {
    this->divergence_checked(kNames.divergence, x, t, v_out, div_out, ws, cond, max_tangent_cols);
  }

 private:
  static constexpr FieldNames kNames{"AdaLNMlp::forward", "AdaLNMlp::vjp_x", "AdaLNMlp::backward",
                                     "AdaLNMlp::jvp_x", "AdaLNMlp::divergence"};
  Index cond_dim() const { return cfg_.cond_dim; }
  // Time groups (adaln.md "Time groups"): only unconditioned, the conditioning differs per sample.
  bool group_times() const { return cfg_.group_times && cfg_.cond_dim == 0; }

  /// Layout of the forward caches for B samples in R time groups (R == B: ungrouped).
  void layout_forward(Arena<S, Backend>& a, Caches& c, Index B, Index R) const {
    c.temb = temb_.carve(a, R);
    c.x_in = a.take(cfg_.dim, B);
    c.cond_in = a.take(cfg_.cond_dim, B);
    c.c = a.take(cfg_.width, R);
    c.sc = a.take(cfg_.width, R);
    c.h = a.take(cfg_.width, B);
    c.blocks.clear();
    for (const auto& b : blocks_) c.blocks.push_back(b.carve(a, B, R));
    c.fin = final_.carve(a, B, R);
  }

  void layout_backward(Arena<S, Backend>& a, Caches& c, Index B) const {
    c.bs.t1 = a.take(cfg_.width, B);
    c.bs.t2 = a.take(cfg_.width, B);
    c.bs.d_mod = a.take(3 * cfg_.width, B);
    c.d_h = a.take(cfg_.width, B);
    c.d_sc = a.take(cfg_.width, B);
  }

  void layout_jvp(Arena<S, Backend>& a, Caches& c, Index cols) const {
    c.js.t1 = a.take(cfg_.width, cols);
    c.js.t2 = a.take(cfg_.width, cols);
    c.dh = a.take(cfg_.width, cols);
  }

  /// t has one entry per time group (group[b] the group of sample b), or per sample when group
  /// is null.                                                         adaln.md (16)-(17)
  void forward_layers(Context& ctx, ConstMatrixView<S> x, ConstVectorView<S> t, const Index* group,
                      MatrixView<S> v_out, ConstMatrixView<S> cond, Caches& c) const {
    for (auto& b : c.blocks) b.group = group;
    c.fin.group = group;
    const S* p = this->param_data();
    Backend::copy(ctx, x, c.x_in);          // backward needs x for d input_proj.weight
    temb_.forward(ctx, p, t, c.temb, c.c);  // adaln.md (16)
    if (cfg_.cond_dim > 0) {
      Backend::copy(ctx, cond, c.cond_in);
      Backend::gemm(ctx, true, false, S(1), cond_.wt(p), cond, S(1), c.c);
      Backend::add_cols(ctx, p + cond_.b, c.c);
    }
    Backend::activation_forward(ctx, Activation::SiLU, c.c, c.sc);
    input_.forward(ctx, p, x, c.h);
    for (std::size_t i = 0; i < blocks_.size(); ++i)
      blocks_[i].forward(ctx, p, c.sc, c.h, c.blocks[i]);
    final_.forward(ctx, p, c.sc, c.h, c.fin, v_out);
  }

  /// R: the time groups of the forward (one column of d_sc each).    adaln.md (12)-(13)
  /// The flat layout is time_embed, cond_embed, input_proj, res_blocks.*, final_layer: the final
  /// layer's and each block's gradients are final once their backward is done (their share of
  /// the time path goes into d_sc), and `ready` hears so.
  void backward_layers(Context& ctx, Caches& c, Index R, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                       S* d_p, MatrixView<S> d_cond, GradientReady* ready) const {
    const S* p = this->param_data();
    const bool params = d_p != nullptr;
    const MatrixView<S> d_sc = c.d_sc.col_block(0, R);  // one column per time group
    if (params) Backend::fill(ctx, d_sc, S(0));
    final_.backward(ctx, p, c.sc, c.fin, d_v, c.d_h, d_sc, d_p, c.bs);
    if (ready) ready->ready(final_.linear.w);
    for (std::size_t i = blocks_.size(); i-- > 0;) {
      blocks_[i].backward(ctx, p, c.sc, c.blocks[i], c.d_h, d_sc, d_p, c.bs);
      if (ready) ready->ready(blocks_[i].ln_w);
    }
    if (!d_x.empty()) input_.backward_input(ctx, p, c.d_h, d_x, true);  // adaln.md (12)
    if (!params) return;
    input_.backward_params(ctx, c.x_in, c.d_h, d_p);
    // d_c = SiLU'(c) * d_s, then into the time MLP and the conditioning.  adaln.md (13)
    Backend::activation_backward(ctx, Activation::SiLU, c.c, d_sc, d_sc);
    if (cfg_.cond_dim > 0) {  // (never grouped: the conditioning differs per sample)
      cond_.backward_params(ctx, c.cond_in, d_sc, d_p);
      if (!d_cond.empty()) cond_.backward_input(ctx, p, d_sc, d_cond, true);
    }
    temb_.backward(ctx, p, c.temb, d_sc, d_p, c.bs.t1.col_block(0, R));
    if (ready) ready->ready(0);
  }

  void jvp_layers(Context& ctx, Caches& c, ConstMatrixView<S> dx, MatrixView<S> dv_out,
                  Index K) const {
    const S* p = this->param_data();
    input_.jvp(ctx, p, dx, c.dh);  // adaln.md (14)
    for (std::size_t i = 0; i < blocks_.size(); ++i)
      blocks_[i].jvp(ctx, p, c.blocks[i], c.dh, K, c.js);
    final_.jvp(ctx, p, c.fin, c.dh, dv_out, K, c.js);
  }

  Config cfg_;
  TimeEmbedding<S, Backend> temb_;
  Linear<S, Backend> cond_;
  Linear<S, Backend> input_;
  std::vector<ResBlock<S, Backend>> blocks_;
  FinalLayer<S, Backend> final_;
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
