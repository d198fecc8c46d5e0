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
#include <string>
#include <vector>

#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/adaln_blocks.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/time_embedding.hpp>
#include <flowprior/nn/workspace.hpp>

namespace flowprior {
namespace nn {

/// Configuration of AdaLNMlp. Defaults are the released ImageNet flow head.
struct AdaLNMlpConfig {
  Index dim = 32;              ///< latent dimension d (input and output)
  Index width = 1024;          ///< model channels W
  Index depth = 6;             ///< number of residual blocks
  Index cond_dim = 0;          ///< conditioning vector size; 0 = unconditioned
  Index time_freq_dim = 256;   ///< sinusoidal features (even)
  double max_period = 10000.0; ///< frequency scale of the time embedding
  double ln_eps = 1e-6;        ///< LayerNorm epsilon
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
      raise_config(w, "time_freq_dim must be positive and even, got " +
                          std::to_string(time_freq_dim));
    if (!(max_period > 1.0)) raise_config(w, "max_period must be > 1");
    if (!(ln_eps > 0.0)) raise_config(w, "ln_eps must be > 0");
  }
};

template <class S, class Backend = CpuBackend>
class AdaLNMlp {
 public:
  using Scalar = S;
  using Config = AdaLNMlpConfig;

  /// Per-thread memory for activations (forward caches) and backward/JVP scratch. Reused across
  /// calls: a call with a batch size it has already seen allocates nothing.
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
    friend class AdaLNMlp;
    Arena<S, Backend> fwd_, bwd_, jvp_;
    Index batch_ = -1, bwd_batch_ = -1, jvp_cols_ = -1;
    Index fwd_layout_ = -1, fwd_groups_ = -1, groups_ = -1;
    LayoutKey key_;            // the sizes of the field the caches were laid out for
    std::vector<Index> group;  // sample -> time group (when grouped)
    std::vector<S> t_group;    // one t per group
    const void* owner_ = nullptr;
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
    MatrixView<S> dh, tan_in, tan_out;
  };

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
    try {
      temb_ = TimeEmbedding<S, Backend>::make(layout_, "time_embed", cfg_.time_freq_dim,
                                              cfg_.width, static_cast<S>(cfg_.max_period));
      if (cfg_.cond_dim > 0)
        cond_ = Linear<S, Backend>::make(layout_, "cond_embed", cfg_.cond_dim, cfg_.width);
      input_ = Linear<S, Backend>::make(layout_, "input_proj", cfg_.dim, cfg_.width);
      for (Index i = 0; i < cfg_.depth; ++i) {
        // one check per block before its layout entries, so depth 1e18 fails fast too
        check_allocation("AdaLNMlp", "the parameters of " + sizes, layout_.total(), sizeof(S));
        blocks_.push_back(ResBlock<S, Backend>::make(layout_, "res_blocks." + std::to_string(i),
                                                     cfg_.width, eps, cfg_.activation));
      }
      final_ = FinalLayer<S, Backend>::make(layout_, "final_layer", cfg_.width, cfg_.dim, eps);
    } catch (const config_error& e) {
      raise_config("AdaLNMlp", "the network (" + sizes + ") is too large: " + e.what());
    }
    check_allocation("AdaLNMlp", "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    key_.sizes = {{layout_.total(), cfg_.dim, cfg_.width, cfg_.depth, cfg_.cond_dim,
                   cfg_.time_freq_dim, 0, 0}};
  }

  const Config& config() const { return cfg_; }
  Index dim() const { return cfg_.dim; }
  Index num_params() const { return layout_.total(); }
  /// Named tensors (PyTorch state_dict names, registration order).
  const ParamLayout& layout() const { return layout_; }
  /// The flat parameter vector (host memory on the CPU backend).
  VectorView<S> parameters() { return {params_.data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {params_.data(), layout_.total()}; }

  /// Number of time groups of the last forward on ws (== its batch when ungrouped).
  Index time_groups(const Workspace& ws) const { return ws.groups_; }

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
    std::vector<S> host(static_cast<std::size_t>(layout_.total()), S(0));
    S* p = host.data();
    // torch applies Xavier to every Linear first, then overwrites; we draw in module order.
    temb_.init(p, rng);
    if (cfg_.cond_dim > 0) cond_.init_xavier(p, rng);
    input_.init_xavier(p, rng);
    for (const auto& b : blocks_) b.init(p, rng);
    final_.init(p);
    Backend::copy_from_host(host.data(), layout_.total(), params_);
  }

  /// v_out (dim, B) = v(x, t [, cond]). Caches activations in ws for vjp_x / backward / jvp_x.
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B), cond (cond_dim, B) iff conditioned.
  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out, Workspace& ws,
               ConstMatrixView<S> cond = {}) const {
    const char* w = "AdaLNMlp::forward";
    check_shape(w, "x", x, cfg_.dim, x.cols);
    const Index B = x.cols;
    check_size(w, "t", t, B);
    check_shape(w, "v", v_out, cfg_.dim, B);
    check_unit_interval(w, "t", t);
    check_cond(w, cond, B);
    forward_impl(x, t, v_out, ws, cond);
  }

  /// d_x += J_x(v)^T d_v for the batch of the last forward on ws: the vector-Jacobian product
  /// w.r.t. the input only. No parameter gradient is computed (a frozen prior pays nothing for
  /// dW).                                                             adaln.md (12)
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    backward_checked("AdaLNMlp::vjp_x", ws, d_v, d_x, nullptr, {});
  }

  /// Full backward for the batch of the last forward on ws: accumulates dL/dparams into d_params
  /// (size num_params()), and, where given (non-empty), d_x += dL/dx and d_cond += dL/dcond.
  ///                                                                  adaln.md (13)
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x, VectorView<S> d_params,
                MatrixView<S> d_cond = {}) const {
    check_size("AdaLNMlp::backward", "d_params", d_params, num_params());
    backward_checked("AdaLNMlp::backward", ws, d_v, d_x, d_params.data, d_cond);
  }

  /// Forward-mode product: dv_out = J_x(v) dx for K tangents per sample of the last forward on
  /// ws. dx and dv_out are (dim, B*K); column b*K + k is tangent k of sample b.   adaln.md (14)
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    const char* w = "AdaLNMlp::jvp_x";
    require_forward(w, ws);
    check_tangents(w, K);
    const Index cols = checked_mul(w, "batch x K", ws.batch_, K);
    check_shape(w, "dx", dx, cfg_.dim, cols);
    check_shape(w, "dv", dv_out, cfg_.dim, cols);
    jvp_impl(ws, dx, dv_out, K);
  }

  /// Exact divergence tr(dv/dx) per sample, and v itself: forward mode with the dim unit tangents
  /// of every sample batched into one pass (rows are processed in chunks so that memory stays
  /// bounded). Cost about dim forward passes of the x-path.           adaln.md (15)
  /// @pre x (dim, B), t (B) in [0, 1], v_out (dim, B), div_out (B).
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws, ConstMatrixView<S> cond = {},
                  Index max_tangent_cols = 4096) const {
    const char* w = "AdaLNMlp::divergence";
    check_shape(w, "x", x, cfg_.dim, x.cols);
    const Index B = x.cols;
    check_size(w, "t", t, B);
    check_shape(w, "v", v_out, cfg_.dim, B);
    check_size(w, "div", div_out, B);
    check_unit_interval(w, "t", t);
    check_cond(w, cond, B);
    const Index d = cfg_.dim;
    const Index chunk = std::max<Index>(1, std::min<Index>(B, max_tangent_cols / d));
    for (Index r0 = 0; r0 < B; r0 += chunk) {
      const Index n = std::min(chunk, B - r0);
      forward_impl(x.col_block(r0, n), ConstVectorView<S>(t.data + r0, n),
                   v_out.col_block(r0, n), ws, cond.empty() ? cond : cond.col_block(r0, n));
      prepare_jvp(ws, n * d);
      Backend::identity_tiles(ws.tan_in);              // dim unit tangents per sample
      jvp_impl(ws, ws.tan_in, ws.tan_out, d);          // columns of J_x(v) for every sample
      Backend::block_traces(ConstMatrixView<S>(ws.tan_out), div_out.data + r0);
    }
  }

 private:
  void check_cond(const char* w, ConstMatrixView<S> cond, Index B) const {
    if (cfg_.cond_dim > 0) {
      check_shape(w, "cond", cond, cfg_.cond_dim, B);
    } else if (!cond.empty()) {
      check_shape(w, "cond", cond, 0, B);
    }
  }

  void require_forward(const char* w, const Workspace& ws) const {
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
  }

  /// Layout of the forward caches for B samples in R time groups (R == B: ungrouped).
  void prepare_forward(Workspace& ws, Index B, Index R) const {
    if (ws.fwd_layout_ == B && ws.fwd_groups_ == R && ws.key_ == key_) return;
    ws.key_ = LayoutKey();  // invalid until the layout below is complete
    for (int pass = 0; pass < 2; ++pass) {
      ws.fwd_.begin(pass == 0);
      ws.temb = temb_.carve(ws.fwd_, R);
      ws.x_in = ws.fwd_.take(cfg_.dim, B);
      ws.cond_in = ws.fwd_.take(cfg_.cond_dim, B);
      ws.c = ws.fwd_.take(cfg_.width, R);
      ws.sc = ws.fwd_.take(cfg_.width, R);
      ws.h = ws.fwd_.take(cfg_.width, B);
      ws.blocks.clear();
      for (const auto& b : blocks_) ws.blocks.push_back(b.carve(ws.fwd_, B, R));
      ws.fin = final_.carve(ws.fwd_, B, R);
      if (pass == 0) ws.fwd_.reserve_counted("AdaLNMlp::forward", B);
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
      ws.bs.t1 = ws.bwd_.take(cfg_.width, B);
      ws.bs.t2 = ws.bwd_.take(cfg_.width, B);
      ws.bs.d_mod = ws.bwd_.take(3 * cfg_.width, B);
      ws.d_h = ws.bwd_.take(cfg_.width, B);
      ws.d_sc = ws.bwd_.take(cfg_.width, B);
      if (pass == 0) ws.bwd_.reserve_counted("AdaLNMlp::backward", B);
    }
    ws.bwd_batch_ = B;
  }

  void prepare_jvp(Workspace& ws, Index cols) const {
    if (ws.jvp_cols_ == cols) return;
    for (int pass = 0; pass < 2; ++pass) {
      ws.jvp_.begin(pass == 0);
      ws.js.t1 = ws.jvp_.take(cfg_.width, cols);
      ws.js.t2 = ws.jvp_.take(cfg_.width, cols);
      ws.dh = ws.jvp_.take(cfg_.width, cols);
      ws.tan_in = ws.jvp_.take(cfg_.dim, cols);
      ws.tan_out = ws.jvp_.take(cfg_.dim, cols);
      if (pass == 0) ws.jvp_.reserve_counted("AdaLNMlp::jvp_x", cols);
    }
    ws.jvp_cols_ = cols;
  }

  void forward_impl(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                    Workspace& ws, ConstMatrixView<S> cond) const {
    const Index B = x.cols;
    // Time groups: runs of equal consecutive t share the t-dependent work.  adaln.md (17)
    Index R = B;
    if (cfg_.group_times && cfg_.cond_dim == 0 && B > 1) {
      R = 1;
      for (Index b = 1; b < B; ++b) R += t[b] != t[b - 1];
      if (2 * R > B) R = B;  // too few repeats to pay for the indirection
    }
    prepare_forward(ws, B, R);
    ws.owner_ = this;
    ws.batch_ = B;
    ws.groups_ = R;
    const Index* group = nullptr;
    ConstVectorView<S> t_eval = t;
    if (R < B) {
      ws.group.resize(static_cast<std::size_t>(B));
      ws.t_group.resize(static_cast<std::size_t>(R));
      Index r = 0;
      ws.t_group[0] = t[0];
      for (Index b = 0; b < B; ++b) {
        if (b > 0 && t[b] != t[b - 1]) ws.t_group[std::size_t(++r)] = t[b];
        ws.group[std::size_t(b)] = r;
      }
      group = ws.group.data();
      t_eval = ConstVectorView<S>(ws.t_group.data(), R);
    }
    for (auto& c : ws.blocks) c.group = group;
    ws.fin.group = group;
    const S* p = params_.data();
    Backend::copy(x, ws.x_in);  // backward needs x for d input_proj.weight
    temb_.forward(p, t_eval, ws.temb, ws.c);                          // adaln.md (16)
    if (cfg_.cond_dim > 0) {
      Backend::copy(cond, ws.cond_in);
      Backend::gemm(true, false, S(1), cond_.wt(p), cond, S(1), ws.c);
      Backend::add_cols(p + cond_.b, ws.c);
    }
    Backend::activation_forward(Activation::SiLU, ws.c, ws.sc);
    input_.forward(p, x, ws.h);
    for (std::size_t i = 0; i < blocks_.size(); ++i)
      blocks_[i].forward(p, ws.sc, ws.h, ws.blocks[i]);
    final_.forward(p, ws.sc, ws.h, ws.fin, v_out);
  }

  void backward_checked(const char* w, Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                        S* d_p, MatrixView<S> d_cond) const {
    require_forward(w, ws);
    const Index B = ws.batch_;
    check_shape(w, "d_v", d_v, cfg_.dim, B);
    if (d_p == nullptr || !d_x.empty()) check_shape(w, "d_x", d_x, cfg_.dim, B);
    if (!d_cond.empty()) {
      if (cfg_.cond_dim == 0)
        detail::raise<config_error>(std::string("[flowprior.config] ") + w +
                                    ": d_cond given but the field is unconditioned");
      check_shape(w, "d_cond", d_cond, cfg_.cond_dim, B);
    }
    prepare_backward(ws);
    backward_impl(ws, d_v, d_x, d_p, d_cond);
  }

  void backward_impl(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x, S* d_p,
                     MatrixView<S> d_cond) const {
    const S* p = params_.data();
    const bool params = d_p != nullptr;
    const MatrixView<S> d_sc = ws.d_sc.col_block(0, ws.groups_);  // one column per time group
    if (params) Backend::fill(d_sc, S(0));
    final_.backward(p, ws.sc, ws.fin, d_v, ws.d_h, d_sc, d_p, ws.bs);
    for (std::size_t i = blocks_.size(); i-- > 0;)
      blocks_[i].backward(p, ws.sc, ws.blocks[i], ws.d_h, d_sc, d_p, ws.bs);
    if (!d_x.empty()) input_.backward_input(p, ws.d_h, d_x, true);    // adaln.md (12)
    if (!params) return;
    input_.backward_params(ws.x_in, ws.d_h, d_p);
    // d_c = SiLU'(c) * d_s, then into the time MLP and the conditioning.  adaln.md (13)
    Backend::activation_backward(Activation::SiLU, ws.c, d_sc, d_sc);
    if (cfg_.cond_dim > 0) {  // (never grouped: the conditioning differs per sample)
      cond_.backward_params(ws.cond_in, d_sc, d_p);
      if (!d_cond.empty()) cond_.backward_input(p, d_sc, d_cond, true);
    }
    temb_.backward(p, ws.temb, d_sc, d_p, ws.bs.t1.col_block(0, ws.groups_));
  }

  void jvp_impl(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const {
    prepare_jvp(ws, dx.cols);
    const S* p = params_.data();
    input_.jvp(p, dx, ws.dh);
    for (std::size_t i = 0; i < blocks_.size(); ++i) blocks_[i].jvp(p, ws.blocks[i], ws.dh, K, ws.js);
    final_.jvp(p, ws.fin, ws.dh, dv_out, K, ws.js);
  }

  Config cfg_;
  ParamLayout layout_;
  typename Backend::template Buffer<S> params_;
  TimeEmbedding<S, Backend> temb_;
  Linear<S, Backend> cond_;
  Linear<S, Backend> input_;
  std::vector<ResBlock<S, Backend>> blocks_;
  FinalLayer<S, Backend> final_;
  LayoutKey key_;  // what a workspace laid out for this field must match
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
