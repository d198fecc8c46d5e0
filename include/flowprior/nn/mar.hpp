/// @file
/// MarGenerator: the latent generator of the image pipeline, after MAR (Li et al. 2024,
/// "Autoregressive Image Generation without Vector Quantization"): a bidirectional transformer
/// over the T latent tokens of an image, some of them masked, whose outputs c condition a small
/// per-token flow head (AdaLNMlp with cond_dim = width, MAR's "diffloss.net"). This header holds
/// the model (backbone forward and backward, the head bound to its slice of the one flat
/// parameter vector); the training loss, the step and the sampler are in train/mar.hpp.
/// Equations, shapes, names, memory and what differs from MAR: docs/math/mar.md.
///
/// Layout: tokens are (d, B T), column b T + j for token j of image b (as the tokenizer's
/// latents); the mask is B T bytes in host memory, 1 = masked, in the same order. Outputs c are
/// (width, B T). Gradients accumulate (+=) into d_params and d_x (docs/conventions.md).
/// Thread safety: const methods only read the parameters; each thread needs its own Workspace.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/nn/gradient_ready.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/transformer.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace nn {

/// Configuration of MarGenerator. Defaults: MAR-B's backbone width, heads and MLP ratio over
/// 256 tokens of 16 channels, one transformer of 12 blocks (docs/math/mar.md "What differs from
/// MAR"), and MAR's flow head (width 1024, depth 6; here a small head is usual on a CPU).
struct MarConfig {
  Index tokens = 256;         ///< T tokens per image
  Index token_dim = 16;       ///< d: the width of a token (the head's dim)
  Index width = 768;          ///< transformer width (a multiple of heads); the head's cond_dim
  Index depth = 12;           ///< transformer blocks
  Index heads = 12;           ///< attention heads (divides width)
  double mlp_ratio = 4.0;     ///< MLP hidden width = int(width mlp_ratio), as timm
  bool qk_norm = false;       ///< LayerNorm on q and k per head (timm qk_norm=True)
  double ln_eps = 1e-6;       ///< LayerNorm epsilon of the transformer and of the head
  Index head_width = 1024;    ///< the flow head's width
  Index head_depth = 6;       ///< the flow head's residual blocks (>= 0)
  Index time_freq_dim = 256;  ///< the flow head's sinusoidal time features (even)

  /// The MLP hidden width of every block.
  Index mlp_hidden() const { return static_cast<Index>(double(width) * mlp_ratio); }

  /// The configuration of the flow head: AdaLNMlp with dim = token_dim, cond_dim = width.
  AdaLNMlpConfig head_config() const {
    AdaLNMlpConfig h;
    h.dim = token_dim;
    h.width = head_width;
    h.depth = head_depth;
    h.cond_dim = width;
    h.time_freq_dim = time_freq_dim;
    h.ln_eps = ln_eps;
    return h;
  }

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "MarConfig";
    auto positive = [&](const char* name, Index v) {
      if (v < 1) raise_config(w, std::string(name) + " must be >= 1, got " + std::to_string(v));
    };
    positive("tokens", tokens);
    positive("token_dim", token_dim);
    positive("width", width);
    positive("depth", depth);
    positive("heads", heads);
    positive("head_width", head_width);
    if (head_depth < 0)
      raise_config(w, "head_depth must be >= 0, got " + std::to_string(head_depth));
    if (time_freq_dim < 2 || time_freq_dim % 2 != 0)
      raise_config(w,
                   "time_freq_dim must be positive and even, got " + std::to_string(time_freq_dim));
    if (width % heads != 0)
      raise_config(w, "heads must divide width, got heads " + std::to_string(heads) + ", width " +
                          std::to_string(width));
    if (!(mlp_ratio > 0.0) || !(double(width) * mlp_ratio < 1e18) || mlp_hidden() < 1)
      raise_config(w, "mlp_ratio must give an MLP hidden width >= 1, got mlp_ratio " +
                          short_number(mlp_ratio));
    if (!(ln_eps > 0.0) || !(ln_eps < 1.0))
      raise_config(w, "ln_eps must lie in (0, 1), got " + short_number(ln_eps));
    checked_mul(w, "tokens x width", tokens, width);
  }

  /// Every field as (name, value) text, exact (17 significant digits for the doubles), as
  /// TokenizerConfig::entries: what a checkpoint records and checks on load.
  std::vector<std::pair<std::string, std::string>> entries() const {
    auto num = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      return std::string(buf);
    };
    return {{"tokens", std::to_string(tokens)},
            {"token_dim", std::to_string(token_dim)},
            {"width", std::to_string(width)},
            {"depth", std::to_string(depth)},
            {"heads", std::to_string(heads)},
            {"mlp_ratio", num(mlp_ratio)},
            {"qk_norm", qk_norm ? "true" : "false"},
            {"ln_eps", num(ln_eps)},
            {"head_width", std::to_string(head_width)},
            {"head_depth", std::to_string(head_depth)},
            {"time_freq_dim", std::to_string(time_freq_dim)}};
  }
};

namespace detail {
/// MarGenerator's views into its workspace arenas.
template <class S, class Backend>
struct MarCaches {
  using Block = TransformerBlock<S, Backend>;
  // forward caches
  MatrixView<S> xsrc;  ///< [x | 0] (d, B T + 1): the gather source of x_in
  MatrixView<S> x_in;  ///< x with the masked columns zeroed (d, B T): z_proj's input
  MatrixView<S> zsrc;  ///< [z_proj(x_in) | mask_token] (width, B T + 1)
  MatrixView<S> h;     ///< the residual stream (width, B T)
  std::vector<typename Block::Cache> blocks;
  MatrixView<S> nhat, rstd;  ///< final LayerNorm (width, B T), (1, B T)
  // backward scratch
  typename Block::Scratch bs;
  MatrixView<S> d_h;  ///< (width, B T + 1): dL/dh, last column zero (the gather source of d_z)
  MatrixView<S> d_z;  ///< dL/dz_proj(x_in) (width, B T), zero at masked columns
  MatrixView<S> d_m;  ///< dL/dh of the masked columns, packed (width, masked)
};
}  // namespace detail

template <class S, class Backend>
class MarGenerator;

/// The workspace of a MarGenerator's backbone: its forward caches and backward scratch (two
/// arenas laid out per batch size; a batch size already seen allocates nothing), the column
/// indices of the last mask (backend memory) and a backend context. Copying gives an empty
/// workspace with a context of its own; moving keeps the memory and the context.
template <class S, class Backend>
class MarWorkspace {
 public:
  using Context = typename Backend::Context;

  MarWorkspace() = default;
  MarWorkspace(const MarWorkspace&) {}
  MarWorkspace& operator=(const MarWorkspace&) {
    *this = MarWorkspace();
    return *this;
  }
  MarWorkspace(MarWorkspace&&) = default;
  MarWorkspace& operator=(MarWorkspace&&) = default;

  /// Images of the last forward (-1 before the first).
  Index batch() const { return batch_; }
  /// Masked tokens of the last forward (all images).
  Index masked() const { return masked_; }
  /// The context the model's primitives run on for this workspace.
  Context& context() { return ctx_.get(); }
  /// Runs on `ctx` from now on (not owned); nullptr returns to the workspace's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }
  /// From now on a backward on this workspace tells `ready` (not owned; nullptr: nobody) where
  /// the backbone's gradient is final, block by block (gradient_ready.hpp).
  void set_gradient_ready(GradientReady* ready) { ready_ = ready; }
  GradientReady* gradient_ready() const { return ready_; }

 private:
  template <class, class>
  friend class MarGenerator;
  GradientReady* ready_ = nullptr;
  Arena<S, Backend> fwd_, bwd_;
  Index batch_ = -1, fwd_layout_ = -1, bwd_layout_ = -1, masked_ = 0;
  std::array<Index, 8> key_{};
  const void* owner_ = nullptr;
  detail::MarCaches<S, Backend> c;
  // sel_[j] = B T when column j is masked, else j (the gathers of x_in, h and d_z); list_ holds
  // the masked columns in order (d_m). Host staging kept: no allocation per call.
  typename Backend::template Buffer<Index> sel_, list_;
  std::vector<Index> sel_host_, list_host_;
  ContextSlot<Backend> ctx_;
};

/// The MAR generator (docs/math/mar.md): backbone and flow head on one flat parameter vector.
template <class S, class Backend = CpuBackend>
class MarGenerator {
 public:
  using Scalar = S;
  using BackendType = Backend;
  using Context = typename Backend::Context;
  using Config = MarConfig;
  using Workspace = MarWorkspace<S, Backend>;
  using Head = AdaLNMlp<S, Backend>;
  using Block = TransformerBlock<S, Backend>;

  /// Builds the layout (backbone, then the head under diffloss.net.*), allocates the
  /// parameters (uninitialised: call init or load a state dict) and binds the head to its
  /// slice. Throws config_error from cfg.validate(), or naming the sizes when the model cannot
  /// fit in memory.
  explicit MarGenerator(const Config& cfg) : cfg_((cfg.validate(), cfg)), head_(cfg.head_config()) {
    const char* who = "MarGenerator";
    const Index W = cfg_.width, T = cfg_.tokens, d = cfg_.token_dim;
    const std::string sizes = "tokens " + std::to_string(T) + ", width " + std::to_string(W) +
                              ", depth " + std::to_string(cfg_.depth) + ", head_width " +
                              std::to_string(cfg_.head_width) + ", head_depth " +
                              std::to_string(cfg_.head_depth);
    try {
      z_proj_ = Linear<S, Backend>::make(layout_, "z_proj", d, W);
      mask_ = layout_.add("mask_token", {1, 1, W});
      pos_ = layout_.add("pos_embed", {1, T, W});
      for (Index i = 0; i < cfg_.depth; ++i) {
        check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
        blocks_.push_back(Block::make(layout_, "blocks." + std::to_string(i), W, cfg_.heads,
                                      cfg_.mlp_hidden(), cfg_.qk_norm,
                                      static_cast<S>(cfg_.ln_eps)));
      }
      norm_w_ = layout_.add("norm.weight", {W});
      norm_b_ = layout_.add("norm.bias", {W});
      head_off_ = layout_.total();
      for (const TensorInfo& t : head_.layout().tensors())
        layout_.add("diffloss.net." + t.name, t.shape);
    } catch (const config_error& e) {
      raise_config(who, "the model (" + sizes + ") is too large: " + e.what());
    }
    check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    bind_head();
    key_ = {
        {layout_.total(), T, d, W, cfg_.depth, cfg_.heads, cfg_.mlp_hidden(), Index(cfg_.qk_norm)}};
  }
  /// Copies hold their own parameters (the copy's head is bound to the copy's slice).
  MarGenerator(const MarGenerator& o)
      : cfg_(o.cfg_),
        layout_(o.layout_),
        params_(o.params_),
        key_(o.key_),
        z_proj_(o.z_proj_),
        mask_(o.mask_),
        pos_(o.pos_),
        norm_w_(o.norm_w_),
        norm_b_(o.norm_b_),
        head_off_(o.head_off_),
        blocks_(o.blocks_),
        head_(o.head_) {
    bind_head();
  }
  MarGenerator(MarGenerator&& o)
      : cfg_(o.cfg_),
        layout_(std::move(o.layout_)),
        params_(std::move(o.params_)),
        key_(o.key_),
        z_proj_(o.z_proj_),
        mask_(o.mask_),
        pos_(o.pos_),
        norm_w_(o.norm_w_),
        norm_b_(o.norm_b_),
        head_off_(o.head_off_),
        blocks_(std::move(o.blocks_)),
        head_(std::move(o.head_)) {
    bind_head();
  }
  MarGenerator& operator=(const MarGenerator& o) {
    if (this != &o) *this = MarGenerator(o);
    return *this;
  }
  MarGenerator& operator=(MarGenerator&& o) {
    cfg_ = o.cfg_;
    layout_ = std::move(o.layout_);
    params_ = std::move(o.params_);
    key_ = o.key_;
    z_proj_ = o.z_proj_;
    mask_ = o.mask_;
    pos_ = o.pos_;
    norm_w_ = o.norm_w_;
    norm_b_ = o.norm_b_;
    head_off_ = o.head_off_;
    blocks_ = std::move(o.blocks_);
    head_ = std::move(o.head_);
    bind_head();
    return *this;
  }

  const Config& config() const { return cfg_; }
  Index num_params() const { return layout_.total(); }
  /// Named tensors in registration order: z_proj, mask_token, pos_embed, blocks.*, norm,
  /// diffloss.net.* (docs/math/mar.md "Parameters").
  const ParamLayout& layout() const { return layout_; }
  /// The flat parameter vector (backend memory), the head's slice included.
  VectorView<S> parameters() { return {params_.data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {params_.data(), layout_.total()}; }
  /// The flow head v(x_t, t, c) (AdaLNMlp, dim = token_dim, cond_dim = width), running on the
  /// slice [head_offset(), num_params()) of parameters(). Its own gradient calls take d_params
  /// of head().num_params() values: pass that slice of the model's gradient.
  const Head& head() const { return head_; }
  /// Offset of diffloss.net.* in the flat vector (the head's slice).
  Index head_offset() const { return head_off_; }

  /// MAR's initialisation, drawn on the host and uploaded: Xavier-uniform Linear weights (qkv as
  /// one (3 width, width) matrix) and zero biases, LayerNorm weight 1 and bias 0, mask_token and
  /// pos_embed ~ N(0, 0.02^2); then the head's released initialisation (AdaLNMlp::init, whose
  /// adaLN and final layers are zero: v == 0 at initialisation).
  void init(Rng& rng) {
    std::vector<S> h(static_cast<std::size_t>(head_off_), S(0));
    S* q = h.data();
    const Index W = cfg_.width, T = cfg_.tokens;
    z_proj_.init_xavier(q, rng);
    for (Index i = 0; i < W; ++i) q[mask_ + i] = static_cast<S>(0.02 * normal01(rng));
    for (Index i = 0; i < T * W; ++i) q[pos_ + i] = static_cast<S>(0.02 * normal01(rng));
    for (const Block& b : blocks_) {
      b.attn.qkv.init_xavier(q, rng);
      b.attn.proj.init_xavier(q, rng);
      b.fc1.init_xavier(q, rng);
      b.fc2.init_xavier(q, rng);
      for (Index i = 0; i < W; ++i) {
        q[b.n1_w + i] = q[b.n2_w + i] = S(1);
        q[b.n1_b + i] = q[b.n2_b + i] = S(0);
      }
      if (b.attn.qk_norm)
        for (Index i = 0; i < b.attn.head_dim; ++i) {
          q[b.attn.qn_w + i] = q[b.attn.kn_w + i] = S(1);
          q[b.attn.qn_b + i] = q[b.attn.kn_b + i] = S(0);
        }
    }
    for (Index i = 0; i < W; ++i) {
      q[norm_w_ + i] = S(1);
      q[norm_b_ + i] = S(0);
    }
    Backend::copy_from_host(h.data(), head_off_, params_.data());
    head_.init(rng);
  }

  /// The backbone (docs/math/mar.md (1)-(3)): c_out (width, B T) = LN(Blocks(h)) with
  ///   h[:, bT + j] = (mask[bT + j] ? mask_token : z_proj(x[:, bT + j])) + pos_embed[j].
  /// x (d, B T) backend memory; mask B T bytes of host memory (nonzero = masked). The values of
  /// x at masked columns are never read into a result (NaN there is harmless). Caches what
  /// backward needs in ws. Throws shape_error for a wrong x, mask or c_out.
  void forward(ConstMatrixView<S> x, ConstVectorView<std::uint8_t> mask, MatrixView<S> c_out,
               Workspace& ws) const {
    const char* w = "MarGenerator::forward";
    const Index T = cfg_.tokens;
    if (x.rows != cfg_.token_dim || x.cols < T || x.cols % T != 0)
      flowprior::detail::raise<shape_error>(
          std::string("[flowprior.shape] ") + w + ": argument 'x' has shape " +
          flowprior::detail::shape_str(x.rows, x.cols) + ", expected (" +
          std::to_string(cfg_.token_dim) + ", B x " + std::to_string(T) + ") for B >= 1 images");
    const Index B = x.cols / T, BT = x.cols;
    check_size(w, "mask", mask, BT);
    check_shape(w, "c", c_out, cfg_.width, BT);
    begin(ws, B);
    set_mask(ws, mask);
    run_forward(ws.context(), x, c_out, ws);
  }

  /// Gradients of a loss L(c) of the last forward on ws, given d_c = dL/dc (width, B T):
  /// d_params (num_params()) += dL/dparams of the backbone (the head's slice is not touched) and,
  /// where d_x is non-empty, d_x (d, B T) += dL/dx (zero at masked columns). mask_token gets the
  /// sum over the masked positions, z_proj only the unmasked ones.     docs/math/mar.md (4)-(6)
  void backward(Workspace& ws, ConstMatrixView<S> d_c, VectorView<S> d_params,
                MatrixView<S> d_x = {}) const {
    const char* w = "MarGenerator::backward";
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
    const Index BT = ws.batch_ * cfg_.tokens;
    check_shape(w, "d_c", d_c, cfg_.width, BT);
    check_size(w, "d_params", d_params, num_params());
    if (!d_x.empty()) check_shape(w, "d_x", d_x, cfg_.token_dim, BT);
    prepare_backward(ws);
    run_backward(ws.context(), ws, d_c, d_params.data, d_x);
  }

 private:
  using Caches = detail::MarCaches<S, Backend>;

  void bind_head() {
    head_.use_parameters(VectorView<S>(params_.data() + head_off_, layout_.total() - head_off_));
  }

  void begin(Workspace& ws, Index B) const {
    if (ws.fwd_layout_ != B || ws.key_ != key_) {
      ws.key_ = {};
      ws.batch_ = -1;
      const Index W = cfg_.width, d = cfg_.token_dim;
      const Index BT = checked_mul("MarGenerator", "batch x tokens", B, cfg_.tokens);
      const Index BT1 = checked_add("MarGenerator", "batch x tokens", BT, Index(1));
      Caches& c = ws.c;
      c.blocks.resize(blocks_.size());
      for (int pass = 0; pass < 2; ++pass) {
        Arena<S, Backend>& a = ws.fwd_;
        a.begin(pass == 0);
        c.xsrc = a.take(d, BT1);
        c.x_in = a.take(d, BT);
        c.zsrc = a.take(W, BT1);
        c.h = a.take(W, BT);
        for (std::size_t i = 0; i < blocks_.size(); ++i)
          c.blocks[i] = blocks_[i].carve(a, B, cfg_.tokens);
        c.nhat = a.take(W, BT);
        c.rstd = a.take(1, BT);
        if (pass == 0) a.reserve_counted("MarGenerator::forward", B);
      }
      Backend::resize(ws.sel_, BT);
      Backend::resize(ws.list_, BT);
      ws.sel_host_.resize(static_cast<std::size_t>(BT));
      ws.list_host_.resize(static_cast<std::size_t>(BT));
      ws.fwd_layout_ = B;
      ws.bwd_layout_ = -1;
      ws.key_ = key_;
    }
    ws.owner_ = this;
    ws.batch_ = B;
  }

  void prepare_backward(Workspace& ws) const {
    const Index B = ws.batch_;
    if (ws.bwd_layout_ == B) return;
    const Index W = cfg_.width, BT = B * cfg_.tokens;
    Caches& c = ws.c;
    for (int pass = 0; pass < 2; ++pass) {
      Arena<S, Backend>& a = ws.bwd_;
      a.begin(pass == 0);
      c.bs = blocks_.front().carve_scratch(a, B, cfg_.tokens);
      c.d_h = a.take(W, BT + 1);
      c.d_z = a.take(W, BT);
      c.d_m = a.take(W, BT);
      if (pass == 0) a.reserve_counted("MarGenerator::backward", B);
    }
    ws.bwd_layout_ = B;
  }

  // The gather indices of the mask, uploaded to backend memory.     docs/math/mar.md (1)
  void set_mask(Workspace& ws, ConstVectorView<std::uint8_t> mask) const {
    const Index BT = mask.size;
    Index m = 0;
    for (Index j = 0; j < BT; ++j) {
      const bool masked = mask[j] != 0;
      ws.sel_host_[std::size_t(j)] = masked ? BT : j;
      if (masked) ws.list_host_[std::size_t(m++)] = j;
    }
    Backend::copy_from_host(ws.sel_host_.data(), BT, ws.sel_.data());
    if (m > 0) Backend::copy_from_host(ws.list_host_.data(), m, ws.list_.data());
    ws.masked_ = m;
  }

  // docs/math/mar.md (1)-(3).
  void run_forward(Context& ctx, ConstMatrixView<S> x, MatrixView<S> c_out, Workspace& ws) const {
    const S* p = params_.data();
    const Caches& c = ws.c;
    const Index BT = x.cols;
    // x_in: x with the masked columns replaced by zeros (gathered from [x | 0]).
    Backend::copy(ctx, x, c.xsrc.col_block(0, BT));
    Backend::fill(ctx, c.xsrc.col_block(BT, 1), S(0));
    Backend::gather_cols(ctx, ConstMatrixView<S>(c.xsrc), ws.sel_.data(), c.x_in);
    // h: z_proj(x_in) or mask_token, gathered from [z | mask_token], plus pos_embed[j].
    z_proj_.forward(ctx, p, c.x_in, c.zsrc.col_block(0, BT));
    Backend::broadcast_cols(ctx, p + mask_, c.zsrc.col_block(BT, 1));
    Backend::gather_cols(ctx, ConstMatrixView<S>(c.zsrc), ws.sel_.data(), c.h);
    Backend::add_per_token(ctx, ConstMatrixView<S>(p + pos_, cfg_.width, cfg_.tokens), c.h);
    for (std::size_t i = 0; i < blocks_.size(); ++i) blocks_[i].forward(ctx, p, c.h, c.blocks[i]);
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(c.h), p + norm_w_, p + norm_b_,
                                   static_cast<S>(cfg_.ln_eps), ConstMatrixView<S>(),
                                   ConstMatrixView<S>(), c.nhat, c.rstd.data, c_out);
  }

  // docs/math/mar.md (4)-(6). The backbone's layout is z_proj, mask_token, pos_embed, the
  // blocks, the final norm (the head's slice follows), so each part's gradient is final once its
  // backward is done: the workspace's GradientReady (if any) hears so, ending with 0.
  void run_backward(Context& ctx, Workspace& ws, ConstMatrixView<S> d_c, S* dp,
                    MatrixView<S> d_x) const {
    GradientReady* ready = ws.ready_;
    const S* p = params_.data();
    const Caches& c = ws.c;
    const Index BT = d_c.cols;
    const MatrixView<S> d_h = c.d_h.col_block(0, BT);
    Backend::fill(ctx, c.d_h, S(0));
    Backend::norm_modulate_backward(ctx, ConstMatrixView<S>(c.nhat), c.rstd.data, p + norm_w_,
                                    p + norm_b_, ConstMatrixView<S>(), d_c, d_h, MatrixView<S>(),
                                    MatrixView<S>(), dp + norm_w_, dp + norm_b_);
    if (ready) ready->ready(norm_w_);
    for (std::size_t i = blocks_.size(); i-- > 0;) {
      blocks_[i].backward(ctx, p, c.blocks[i], d_h, dp, c.bs);
      if (ready) ready->ready(blocks_[i].n1_w);
    }
    // pos_embed: the sum over the images, position by position.
    Backend::sum_per_token(ctx, ConstMatrixView<S>(d_h),
                           MatrixView<S>(dp + pos_, cfg_.width, cfg_.tokens));
    // mask_token: the sum over the masked columns.
    const Index m = ws.masked_;
    if (m > 0) {
      const MatrixView<S> d_m = c.d_m.col_block(0, m);
      Backend::gather_cols(ctx, ConstMatrixView<S>(d_h), ws.list_.data(), d_m);
      Backend::sum_cols(ctx, ConstMatrixView<S>(d_m), dp + mask_);
    }
    // z_proj: d_z = d_h at the unmasked columns, 0 at the masked ones (the zero column of d_h).
    Backend::gather_cols(ctx, ConstMatrixView<S>(c.d_h), ws.sel_.data(), c.d_z);
    z_proj_.backward_params(ctx, c.x_in, c.d_z, dp);
    if (ready) ready->ready(0);
    if (!d_x.empty()) z_proj_.backward_input(ctx, p, c.d_z, d_x, true);
  }

  Config cfg_;
  ParamLayout layout_;
  typename Backend::template Buffer<S> params_;
  std::array<Index, 8> key_{};
  Linear<S, Backend> z_proj_;
  Index mask_ = -1, pos_ = -1, norm_w_ = -1, norm_b_ = -1, head_off_ = 0;
  std::vector<Block> blocks_;
  Head head_;
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
