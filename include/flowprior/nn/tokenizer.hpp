/// @file
/// TokenizerAE: a 1-D tokenizer autoencoder (TiTok-style): a ViT encoder over an image's patch
/// tokens with T learned latent tokens appended, whose T outputs, projected to d, are the latents
/// y (T x d per image); and a ViT decoder that reads the latents back, with one learned query
/// token per patch position, and predicts the pixels of every patch. Forward and backward with
/// hand-written gradients; the backward accepts an extra gradient on y (where an alignment loss's
/// dL/dy enters). Equations, shapes, parameter names and memory: docs/math/tokenizer.md.
///
/// With TokenizerConfig::posterior = Posterior::gaussian the encoder outputs a diagonal Gaussian
/// per latent token instead (a KL-regularised autoencoder, VAE / LDM style): 2 d rows, the mean
/// mu and the log-variance, and the decoder reads the sample z = mu + exp(logvar / 2) eps for
/// the caller's eps (tokenizer.md "Gaussian posterior").
///
/// Layout: B images are one (C H W, B) matrix, CHW order per column; the latents are (d, B T),
/// column b T + j for latent token j of image b. Token sequences are (width, B L) matrices with
/// L = Np + T: the Np patch tokens of an image first, then its T latent tokens (both halves).
/// The patch positions get the fixed 2-D sine-cosine table, or with
/// TokenizerConfig::learned_pos_embed the trained parameters encoder.pos_embed and
/// decoder.pos_embed. Parameters carry PyTorch state_dict names (encoder.*, decoder.*), so
/// io/state_dict.hpp loads and saves them. Gradients accumulate (+=) into d_params and d_x.
/// Thread safety: const methods only read the parameters; each thread needs its own Workspace.
#pragma once

#include <algorithm>
#include <array>
#include <cstdio>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/gradient_ready.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/patches.hpp>
#include <flowprior/nn/transformer.hpp>
#include <flowprior/nn/workspace.hpp>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace nn {

/// The encoder's output per latent token (TokenizerConfig::posterior).
enum class Posterior {
  deterministic,  ///< the latent y itself (d values): a plain autoencoder
  gaussian        ///< a diagonal Gaussian, mean and log-variance (2 d values): tokenizer.md (7)
};

/// "deterministic" or "gaussian".
inline const char* to_string(Posterior p) {
  return p == Posterior::gaussian ? "gaussian" : "deterministic";
}

/// Configuration of TokenizerAE. Defaults: a small model for 32 x 32 RGB images.
struct TokenizerConfig {
  Index image_size = 32;     ///< H = W (square images)
  Index channels = 3;        ///< C
  Index patch = 4;           ///< p: p x p patches, p divides image_size
  Index width = 256;         ///< transformer width of both halves (a multiple of 4 and of heads)
  Index depth = 4;           ///< encoder blocks
  Index dec_depth = -1;      ///< decoder blocks; -1: the same as depth
  Index heads = 4;           ///< attention heads (divides width)
  double mlp_ratio = 4.0;    ///< MLP hidden width = int(width mlp_ratio), as timm
  Index latent_tokens = 32;  ///< T latent tokens per image
  Index latent_dim = 16;     ///< d: the width of a latent token
  bool qk_norm = false;      ///< LayerNorm on q and k per head (timm qk_norm=True)
  double ln_eps = 1e-6;      ///< LayerNorm epsilon
  /// Positional embeddings of the patch positions: false, the fixed 2-D sine-cosine table (not
  /// a parameter); true, the parameters encoder.pos_embed and decoder.pos_embed (1, Np, width),
  /// trained, which init() sets to that table.
  bool learned_pos_embed = false;
  /// The latents' posterior: deterministic (the default, a plain autoencoder) or a diagonal
  /// Gaussian whose sample the decoder reads (docs/math/tokenizer.md "Gaussian posterior").
  Posterior posterior = Posterior::deterministic;

  /// Whether the encoder outputs a Gaussian posterior.
  bool gaussian() const { return posterior == Posterior::gaussian; }
  /// The number of decoder blocks (dec_depth, or depth when dec_depth is -1).
  Index decoder_depth() const { return dec_depth < 0 ? depth : dec_depth; }
  /// The MLP hidden width of every block.
  Index mlp_hidden() const { return static_cast<Index>(double(width) * mlp_ratio); }
  /// Patches per image, Np = (image_size / patch)^2.
  Index num_patches() const {
    const Index g = image_size / patch;
    return checked_mul("TokenizerConfig", "patches per image", g, g);
  }

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "TokenizerConfig";
    auto positive = [&](const char* name, Index v) {
      if (v < 1) raise_config(w, std::string(name) + " must be >= 1, got " + std::to_string(v));
    };
    positive("image_size", image_size);
    positive("channels", channels);
    positive("patch", patch);
    positive("width", width);
    positive("depth", depth);
    if (dec_depth != -1) positive("dec_depth", dec_depth);
    positive("heads", heads);
    positive("latent_tokens", latent_tokens);
    positive("latent_dim", latent_dim);
    if (image_size % patch != 0)
      raise_config(w, "patch must divide image_size, got patch " + std::to_string(patch) +
                          ", image_size " + std::to_string(image_size));
    if (width % heads != 0)
      raise_config(w, "heads must divide width, got heads " + std::to_string(heads) + ", width " +
                          std::to_string(width));
    if (width % 4 != 0)
      raise_config(w, "width must be a multiple of 4 (the 2-D sine-cosine table), got " +
                          std::to_string(width));
    if (!(mlp_ratio > 0.0) || !(double(width) * mlp_ratio < 1e18) || mlp_hidden() < 1)
      raise_config(w, "mlp_ratio must give an MLP hidden width >= 1, got mlp_ratio " +
                          std::to_string(mlp_ratio));
    if (!(ln_eps > 0.0)) raise_config(w, "ln_eps must be > 0");
    if (posterior != Posterior::deterministic && posterior != Posterior::gaussian)
      raise_config(w, "posterior must be Posterior::deterministic or Posterior::gaussian, got " +
                          std::to_string(static_cast<int>(posterior)));
    (void)num_patches();  // overflow
    checked_mul(w, "image size", checked_mul(w, "image size", channels, image_size), image_size);
  }

  /// Every field as (name, value) text, exact (17 significant digits for the doubles): the
  /// entries a checkpoint records and checks on load (train/checkpoint.hpp), since two models
  /// with different heads or epsilons can have the same parameter shapes. "posterior" is
  /// "deterministic" or "gaussian" (a checkpoint without the entry is deterministic).
  std::vector<std::pair<std::string, std::string>> entries() const {
    auto num = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      return std::string(buf);
    };
    return {{"image_size", std::to_string(image_size)},
            {"channels", std::to_string(channels)},
            {"patch", std::to_string(patch)},
            {"width", std::to_string(width)},
            {"depth", std::to_string(depth)},
            {"dec_depth", std::to_string(decoder_depth())},
            {"heads", std::to_string(heads)},
            {"mlp_ratio", num(mlp_ratio)},
            {"latent_tokens", std::to_string(latent_tokens)},
            {"latent_dim", std::to_string(latent_dim)},
            {"qk_norm", qk_norm ? "true" : "false"},
            {"ln_eps", num(ln_eps)},
            {"learned_pos_embed", learned_pos_embed ? "true" : "false"},
            {"posterior", to_string(posterior)}};
  }
};

namespace detail {
/// TokenizerAE's views into its workspace arenas.
template <class S, class Backend>
struct TokenizerCaches {
  using Block = TransformerBlock<S, Backend>;
  // forward caches
  MatrixView<S> patches;       ///< patchify(x) (C p p, B Np): the patch embedding's input
  MatrixView<S> tmp;           ///< forward temporaries (width, B max(Np, T))
  MatrixView<S> query;         ///< mask_token + pos (width, Np)
  MatrixView<S> h_enc, h_dec;  ///< the residual streams (width, B L)
  std::vector<typename Block::Cache> enc, dec;
  MatrixView<S> nhat_e, rstd_e, a_e;  ///< encoder final LayerNorm (width, B T)
  MatrixView<S> y;                    ///< the latents (d, B T): the decoder's input
  MatrixView<S> moments;  ///< Gaussian posterior: to_latent's output (2 d, B T), mu then raw logvar
  MatrixView<S> logvar;   ///< Gaussian posterior: the clamped log-variance (d, B T)
  MatrixView<S> eps;      ///< Gaussian posterior: the noise of the last forward (d, B T)
  MatrixView<S> nhat_d, rstd_d, a_d;  ///< decoder final LayerNorm (width, B Np)
  MatrixView<S> pix;                  ///< pixel head output (C p p, B Np)
  // backward scratch
  typename Block::Scratch bs;
  MatrixView<S> d_h;        ///< (width, B L), both halves
  MatrixView<S> d_tok;      ///< (C p p, B Np)
  MatrixView<S> d_a, d_n;   ///< (width, B max(Np, T))
  MatrixView<S> d_y;        ///< (d, B T)
  MatrixView<S> d_moments;  ///< Gaussian posterior: (2 d, B T)
  MatrixView<S> d_img;      ///< (C H W, B)
};
}  // namespace detail

template <class S, class Backend>
class TokenizerAE;

/// The workspace of a TokenizerAE: its forward caches and backward scratch (two arenas laid out
/// per batch size; a batch size already seen allocates nothing) and a backend context. Copying
/// gives an empty workspace with a context of its own; moving keeps the memory and the context
/// (as nn::FieldWorkspace).
template <class S, class Backend>
class TokenizerWorkspace {
 public:
  using Context = typename Backend::Context;

  TokenizerWorkspace() = default;
  TokenizerWorkspace(const TokenizerWorkspace&) {}
  TokenizerWorkspace& operator=(const TokenizerWorkspace&) {
    *this = TokenizerWorkspace();
    return *this;
  }
  TokenizerWorkspace(TokenizerWorkspace&&) = default;
  TokenizerWorkspace& operator=(TokenizerWorkspace&&) = default;

  /// Batch of the last forward (-1 before the first).
  Index batch() const { return batch_; }
  /// The context the model's primitives run on for this workspace.
  Context& context() { return ctx_.get(); }
  /// Runs on `ctx` from now on (not owned); nullptr returns to the workspace's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }
  /// From now on a backward on this workspace tells `ready` (not owned; nullptr: nobody) where
  /// the parameter gradient is final, block by block (gradient_ready.hpp).
  void set_gradient_ready(GradientReady* ready) { ready_ = ready; }
  GradientReady* gradient_ready() const { return ready_; }

 private:
  template <class, class>
  friend class TokenizerAE;
  GradientReady* ready_ = nullptr;
  enum class Pass { none, encode, decode, both };
  Arena<S, Backend> fwd_, bwd_;
  Index batch_ = -1, fwd_layout_ = -1, bwd_layout_ = -1;
  Pass pass_ = Pass::none;
  bool sampled_ = false;         // Gaussian posterior: the last forward had eps (else z = mu)
  std::array<Index, 13> key_{};  // the model sizes the layout is for
  const void* owner_ = nullptr;
  detail::TokenizerCaches<S, Backend> c;
  ContextSlot<Backend> ctx_;
};

/// The tokenizer autoencoder (docs/math/tokenizer.md).
template <class S, class Backend = CpuBackend>
class TokenizerAE {
 public:
  using Scalar = S;
  using BackendType = Backend;
  using Context = typename Backend::Context;
  using Config = TokenizerConfig;
  using Workspace = TokenizerWorkspace<S, Backend>;
  using Block = TransformerBlock<S, Backend>;

  /// Builds the layout, allocates the parameters (uninitialised: call init or load a state dict)
  /// and, unless cfg.learned_pos_embed, uploads the fixed 2-D sine-cosine table of the patch
  /// positions. Throws config_error from cfg.validate(), or naming the sizes when the model
  /// cannot fit in memory.
  explicit TokenizerAE(const Config& cfg) : cfg_(cfg) {
    cfg_.validate();
    const char* who = "TokenizerAE";
    const Index W = cfg_.width, T = cfg_.latent_tokens, d = cfg_.latent_dim;
    const Index C = cfg_.channels, p = cfg_.patch;
    const Index cpp = checked_mul(who, "patch size", checked_mul(who, "patch size", C, p), p);
    const Index hidden = cfg_.mlp_hidden();
    const S eps = static_cast<S>(cfg_.ln_eps);
    np_ = cfg_.num_patches();
    const std::string sizes = "image_size " + std::to_string(cfg_.image_size) + ", width " +
                              std::to_string(W) + ", depth " + std::to_string(cfg_.depth) +
                              ", dec_depth " + std::to_string(cfg_.decoder_depth()) +
                              ", latent_tokens " + std::to_string(T);
    try {
      // PyTorch state_dict order: a module's own parameters, then its submodules.
      lat_tok_ = layout_.add("encoder.latent_tokens", {T, W});
      lat_pos_e_ = layout_.add("encoder.latent_pos_embed", {T, W});
      if (cfg_.learned_pos_embed) pos_e_ = layout_.add("encoder.pos_embed", {1, np_, W});
      patch_embed_.in = cpp;
      patch_embed_.out = W;
      patch_embed_.w = layout_.add("encoder.patch_embed.proj.weight", {W, C, p, p});
      patch_embed_.b = layout_.add("encoder.patch_embed.proj.bias", {W});
      for (Index i = 0; i < cfg_.depth; ++i) {
        check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
        enc_.push_back(Block::make(layout_, "encoder.blocks." + std::to_string(i), W, cfg_.heads,
                                   hidden, cfg_.qk_norm, eps));
      }
      norm_e_w_ = layout_.add("encoder.norm.weight", {W});
      norm_e_b_ = layout_.add("encoder.norm.bias", {W});
      // The Gaussian posterior's moments: mu in rows [0, d), the log-variance in [d, 2 d).
      to_latent_ =
          Linear<S, Backend>::make(layout_, "encoder.to_latent", W, cfg_.gaussian() ? 2 * d : d);
      mask_ = layout_.add("decoder.mask_token", {1, W});
      lat_pos_d_ = layout_.add("decoder.latent_pos_embed", {T, W});
      if (cfg_.learned_pos_embed) pos_d_ = layout_.add("decoder.pos_embed", {1, np_, W});
      from_latent_ = Linear<S, Backend>::make(layout_, "decoder.from_latent", d, W);
      for (Index i = 0; i < cfg_.decoder_depth(); ++i) {
        check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
        dec_.push_back(Block::make(layout_, "decoder.blocks." + std::to_string(i), W, cfg_.heads,
                                   hidden, cfg_.qk_norm, eps));
      }
      norm_d_w_ = layout_.add("decoder.norm.weight", {W});
      norm_d_b_ = layout_.add("decoder.norm.bias", {W});
      pixel_head_ = Linear<S, Backend>::make(layout_, "decoder.pixel_head", W, cpp);
    } catch (const config_error& e) {
      raise_config(who, "the model (" + sizes + ") is too large: " + e.what());
    }
    check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    if (!cfg_.learned_pos_embed) {
      const std::vector<S> table = pos_table();
      Backend::copy_from_host(table.data(), Index(table.size()), pos_);
    }
    key_ = {{layout_.total(), cfg_.image_size, C, p, W, cfg_.depth, cfg_.decoder_depth(),
             cfg_.heads, hidden, T, d, Index(cfg_.qk_norm), Index(cfg_.posterior)}};
  }

  const Config& config() const { return cfg_; }
  Index num_params() const { return layout_.total(); }
  /// Named tensors (PyTorch state_dict order).
  const ParamLayout& layout() const { return layout_; }
  /// The flat parameter vector (backend memory).
  VectorView<S> parameters() { return {params_.data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {params_.data(), layout_.total()}; }
  /// Rows of an image column, C H W.
  Index image_dim() const { return cfg_.channels * cfg_.image_size * cfg_.image_size; }
  /// Patches per image, Np.
  Index num_patches() const { return np_; }
  /// Tokens per sequence, L = Np + T (both halves).
  Index seq_len() const { return np_ + cfg_.latent_tokens; }

  /// timm-like initialisation, drawn on the host and uploaded: Xavier-uniform Linear weights
  /// (the patch embedding's as its (width, C p p) matrix, qkv as one (3 width, width) matrix),
  /// zero biases, LayerNorm weight 1 and bias 0, the learned tokens and latent position
  /// embeddings ~ N(0, 0.02^2); with learned_pos_embed, both pos_embed set to the 2-D sine-cosine
  /// table (no draw: the other tensors get the same numbers as without).
  void init(Rng& rng) {
    std::vector<S> h(static_cast<std::size_t>(num_params()), S(0));
    S* q = h.data();
    auto normal = [&](Index off, Index n) {
      for (Index i = 0; i < n; ++i) q[off + i] = static_cast<S>(0.02 * normal01(rng));
    };
    auto ln = [&](Index w, Index b, Index n) {
      for (Index i = 0; i < n; ++i) {
        q[w + i] = S(1);
        q[b + i] = S(0);
      }
    };
    const Index W = cfg_.width, T = cfg_.latent_tokens;
    normal(lat_tok_, T * W);
    normal(lat_pos_e_, T * W);
    if (cfg_.learned_pos_embed) {
      const std::vector<S> table = pos_table();
      std::copy(table.begin(), table.end(), q + pos_e_);
      std::copy(table.begin(), table.end(), q + pos_d_);
    }
    patch_embed_.init_xavier(q, rng);
    for (const Block& b : enc_) init_block(b, q, rng);
    ln(norm_e_w_, norm_e_b_, W);
    to_latent_.init_xavier(q, rng);
    normal(mask_, W);
    normal(lat_pos_d_, T * W);
    from_latent_.init_xavier(q, rng);
    for (const Block& b : dec_) init_block(b, q, rng);
    ln(norm_d_w_, norm_d_b_, W);
    pixel_head_.init_xavier(q, rng);
    Backend::copy_from_host(h.data(), num_params(), params_.data());
  }

  /// y_out (d, B T) = the latents of the images x (C H W, B).       tokenizer.md (1)
  /// With a Gaussian posterior, y_out = its mean mu (what downstream stages use as the latents);
  /// posterior_logvar(ws) then holds the log-variance and posterior_sample(ws) is mu (eps = 0).
  void encode(ConstMatrixView<S> x, MatrixView<S> y_out, Workspace& ws) const {
    const char* w = "TokenizerAE::encode";
    const Index B = check_images(w, "x", x);
    check_shape(w, "y", y_out, cfg_.latent_dim, B * cfg_.latent_tokens);
    begin(ws, B);
    run_encoder(ws.context(), x, ConstMatrixView<S>(), ws.c);
    Backend::copy(ws.context(), ConstMatrixView<S>(ws.c.y), y_out);
    ws.sampled_ = false;
    ws.pass_ = Workspace::Pass::encode;
  }

  /// recon_out (C H W, B) = the images decoded from the latents y (d, B T).    tokenizer.md (2)
  /// (With a Gaussian posterior y is whatever the caller decodes: a mean, a sample.)
  void decode(ConstMatrixView<S> y, MatrixView<S> recon_out, Workspace& ws) const {
    const char* w = "TokenizerAE::decode";
    const Index T = cfg_.latent_tokens;
    if (y.rows != cfg_.latent_dim || y.cols < T || y.cols % T != 0)
      flowprior::detail::raise<shape_error>(
          std::string("[flowprior.shape] ") + w + ": argument 'y' has shape " +
          flowprior::detail::shape_str(y.rows, y.cols) + ", expected (" +
          std::to_string(cfg_.latent_dim) + ", B x " + std::to_string(T) + ") for B >= 1 images");
    const Index B = y.cols / T;
    check_shape(w, "recon", recon_out, image_dim(), B);
    begin(ws, B);
    Backend::copy(ws.context(), y, ws.c.y);
    run_decoder(ws.context(), recon_out, ws.c);
    ws.pass_ = Workspace::Pass::decode;
  }

  /// Both halves: y_out = encode(x), recon_out = decode(y_out), caching what backward needs.
  /// With a Gaussian posterior this is the posterior mean's pass (eps = 0: the decoder reads
  /// z = mu, y_out = mu), for evaluation; training samples with the overload that takes eps.
  void forward(ConstMatrixView<S> x, MatrixView<S> y_out, MatrixView<S> recon_out,
               Workspace& ws) const {
    const char* w = "TokenizerAE::forward";
    const Index B = check_images(w, "x", x);
    check_shape(w, "y", y_out, cfg_.latent_dim, B * cfg_.latent_tokens);
    check_shape(w, "recon", recon_out, image_dim(), B);
    begin(ws, B);
    run_encoder(ws.context(), x, ConstMatrixView<S>(), ws.c);
    Backend::copy(ws.context(), ConstMatrixView<S>(ws.c.y), y_out);
    run_decoder(ws.context(), recon_out, ws.c);
    ws.sampled_ = false;
    ws.pass_ = Workspace::Pass::both;
  }

  /// Gaussian posterior only, the training pass: the moments (mu, logvar) of x, the sample
  /// z_out = mu + exp(logvar / 2) eps (d, B T) for the caller's standard normal eps (d, B T), and
  /// recon_out = decode(z_out), caching what backward needs (eps is copied).
  /// tokenizer.md (1), (7), (8), (2). Throws config_error on a deterministic model (it takes no
  /// eps), shape_error for wrong shapes.
  void forward(ConstMatrixView<S> x, ConstMatrixView<S> eps, MatrixView<S> z_out,
               MatrixView<S> recon_out, Workspace& ws) const {
    const char* w = "TokenizerAE::forward";
    if (!cfg_.gaussian())
      raise_config(w,
                   "argument 'eps' given to a model with a deterministic posterior "
                   "(TokenizerConfig::posterior = gaussian samples; use forward(x, y, recon, ws))");
    const Index B = check_images(w, "x", x);
    check_shape(w, "eps", eps, cfg_.latent_dim, B * cfg_.latent_tokens);
    check_shape(w, "z", z_out, cfg_.latent_dim, B * cfg_.latent_tokens);
    check_shape(w, "recon", recon_out, image_dim(), B);
    begin(ws, B);
    run_encoder(ws.context(), x, eps, ws.c);
    Backend::copy(ws.context(), ConstMatrixView<S>(ws.c.y), z_out);
    run_decoder(ws.context(), recon_out, ws.c);
    ws.sampled_ = true;
    ws.pass_ = Workspace::Pass::both;
  }

  /// Gaussian posterior only: the mean mu (d, B T; a view into ws, valid until its next pass),
  /// the clamped log-variance (d, B T) and the decoder's input z (d, B T; mu after encode or the
  /// eps-free forward) of the last encode or forward on ws. Throws config_error on a
  /// deterministic model, flowprior::error before an encode or forward.
  ConstMatrixView<S> posterior_mean(const Workspace& ws) const {
    const Caches& c = moments_of(ws, "TokenizerAE::posterior_mean");
    return ConstMatrixView<S>(c.moments).row_block(0, cfg_.latent_dim);
  }
  ConstMatrixView<S> posterior_logvar(const Workspace& ws) const {
    return moments_of(ws, "TokenizerAE::posterior_logvar").logvar;
  }
  ConstMatrixView<S> posterior_sample(const Workspace& ws) const {
    return moments_of(ws, "TokenizerAE::posterior_sample").y;
  }

  /// Gaussian posterior only: the sum over the elements (d, B T) of KL(q(z | x) || N(0, I)) =
  /// sum (mu^2 + exp(logvar) - 1 - logvar) / 2 of the last encode or forward on ws, in double
  /// (tokenizer.md (9); the trainer takes the mean). Errors as posterior_mean.
  double kl_divergence(Workspace& ws) const {
    const Caches& c = moments_of(ws, "TokenizerAE::kl_divergence");
    return Backend::gaussian_kl(ws.context(), ConstMatrixView<S>(c.moments),
                                ConstMatrixView<S>(c.logvar));
  }

  /// Gradients of a loss L(recon, y) of the last forward on ws, given d_recon = dL/drecon
  /// (C H W, B) and d_y_extra = the direct dL/dy (d, B T; empty: none): d_params (num_params())
  /// += dL/dparams of both halves and, where d_x is non-empty, d_x (C H W, B) += dL/dx.
  /// Order: the decoder back to dL/dy, plus d_y_extra, then the encoder.   tokenizer.md (3)
  /// With a Gaussian posterior y is the decoder's input z (d_y_extra is a gradient on z), and the
  /// gradient reaches mu and the log-variance through z = mu + exp(logvar / 2) eps
  /// (tokenizer.md (10)); no KL term (the overload with kl_weight adds it).
  void backward(Workspace& ws, ConstMatrixView<S> d_recon, ConstMatrixView<S> d_y_extra,
                VectorView<S> d_params, MatrixView<S> d_x) const {
    backward(ws, d_recon, d_y_extra, 0.0, d_params, d_x);
  }

  /// backward() of L + kl_weight KL_sum, KL_sum = kl_divergence(ws): the KL gradient enters at
  /// mu and the log-variance (tokenizer.md (10); zero where the log-variance is clamped). The
  /// trainer's mean-reduced beta KL is kl_weight = beta / (d B T). Throws value_error for a
  /// kl_weight that is negative or not finite, config_error for kl_weight != 0 on a
  /// deterministic model.
  void backward(Workspace& ws, ConstMatrixView<S> d_recon, ConstMatrixView<S> d_y_extra,
                double kl_weight, VectorView<S> d_params, MatrixView<S> d_x) const {
    const char* w = "TokenizerAE::backward";
    if (!(kl_weight >= 0.0 && kl_weight < std::numeric_limits<double>::infinity()))
      flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + w +
                                            ": argument 'kl_weight' must be finite and >= 0, "
                                            "got " +
                                            std::to_string(kl_weight));
    if (kl_weight != 0.0 && !cfg_.gaussian())
      raise_config(w, "argument 'kl_weight' must be 0 for a model with a deterministic posterior");
    if (ws.pass_ != Workspace::Pass::both)
      flowprior::detail::raise<error>(std::string("[flowprior.state] ") + w +
                                      ": call forward() with this workspace first");
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
    const Index B = ws.batch_;
    check_shape(w, "d_recon", d_recon, image_dim(), B);
    if (!d_y_extra.empty())
      check_shape(w, "d_y_extra", d_y_extra, cfg_.latent_dim, B * cfg_.latent_tokens);
    check_size(w, "d_params", d_params, num_params());
    if (!d_x.empty()) check_shape(w, "d_x", d_x, image_dim(), B);
    prepare_backward(ws);
    run_backward(ws.context(), ws.c, d_recon, d_y_extra, static_cast<S>(kl_weight), ws.sampled_,
                 d_params.data, d_x, ws.ready_);
  }

 private:
  using Caches = detail::TokenizerCaches<S, Backend>;
  using Pass = typename Workspace::Pass;

  // The caches of the last encode or forward on ws, for the posterior's accessors.
  const Caches& moments_of(const Workspace& ws, const char* w) const {
    if (!cfg_.gaussian())
      raise_config(w, "the model has a deterministic posterior (TokenizerConfig::posterior)");
    if (ws.pass_ != Pass::encode && ws.pass_ != Pass::both)
      flowprior::detail::raise<error>(std::string("[flowprior.state] ") + w +
                                      ": call encode() or forward() with this workspace first");
    check_forward_done(w, ws.batch_, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
    return ws.c;
  }

  Index check_images(const char* w, const char* name, ConstMatrixView<S> x) const {
    if (x.cols < 1 || x.rows != image_dim())
      flowprior::detail::raise_shape(w, name, x.rows, x.cols, image_dim(), x.cols < 1 ? 1 : x.cols);
    return x.cols;
  }

  static void init_block(const Block& b, S* q, Rng& rng) {
    b.attn.qkv.init_xavier(q, rng);
    b.attn.proj.init_xavier(q, rng);
    b.fc1.init_xavier(q, rng);
    b.fc2.init_xavier(q, rng);
    for (Index i = 0; i < b.width; ++i) {
      q[b.n1_w + i] = q[b.n2_w + i] = S(1);
      q[b.n1_b + i] = q[b.n2_b + i] = S(0);
    }
    if (b.attn.qk_norm)
      for (Index i = 0; i < b.attn.head_dim; ++i) {
        q[b.attn.qn_w + i] = q[b.attn.kn_w + i] = S(1);
        q[b.attn.qn_b + i] = q[b.attn.kn_b + i] = S(0);
      }
  }

  // Lays the forward caches out for a batch of B when B or the model changed; the workspace
  // holds no completed pass until the caller records the one it ran.
  void begin(Workspace& ws, Index B) const {
    ws.pass_ = Pass::none;
    if (ws.fwd_layout_ != B || ws.key_ != key_) {
      ws.key_ = {};
      const Index W = cfg_.width, T = cfg_.latent_tokens, L = seq_len();
      const Index BT = checked_mul("TokenizerAE", "batch x latent tokens", B, T);
      const Index BNp = checked_mul("TokenizerAE", "batch x patches", B, np_);
      const Index BL = checked_mul("TokenizerAE", "batch x tokens", B, L);
      Caches& c = ws.c;
      c.enc.resize(enc_.size());
      c.dec.resize(dec_.size());
      for (int pass = 0; pass < 2; ++pass) {
        Arena<S, Backend>& a = ws.fwd_;
        a.begin(pass == 0);
        c.patches = a.take(patch_embed_.in, BNp);
        c.tmp = a.take(W, BNp > BT ? BNp : BT);
        c.query = a.take(W, np_);
        c.h_enc = a.take(W, BL);
        for (std::size_t i = 0; i < enc_.size(); ++i) c.enc[i] = enc_[i].carve(a, B, L);
        c.nhat_e = a.take(W, BT);
        c.rstd_e = a.take(1, BT);
        c.a_e = a.take(W, BT);
        c.y = a.take(cfg_.latent_dim, BT);
        if (cfg_.gaussian()) {
          c.moments = a.take(2 * cfg_.latent_dim, BT);
          c.logvar = a.take(cfg_.latent_dim, BT);
          c.eps = a.take(cfg_.latent_dim, BT);
        }
        c.h_dec = a.take(W, BL);
        for (std::size_t i = 0; i < dec_.size(); ++i) c.dec[i] = dec_[i].carve(a, B, L);
        c.nhat_d = a.take(W, BNp);
        c.rstd_d = a.take(1, BNp);
        c.a_d = a.take(W, BNp);
        c.pix = a.take(pixel_head_.out, BNp);
        if (pass == 0) a.reserve_counted("TokenizerAE::forward", B);
      }
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
    const Index W = cfg_.width, T = cfg_.latent_tokens, L = seq_len();
    const Index BT = B * T, BNp = B * np_;
    Caches& c = ws.c;
    for (int pass = 0; pass < 2; ++pass) {
      Arena<S, Backend>& a = ws.bwd_;
      a.begin(pass == 0);
      c.bs = enc_.front().carve_scratch(a, B, L);  // every block has the same sizes
      c.d_h = a.take(W, B * L);
      c.d_tok = a.take(pixel_head_.out, BNp);
      c.d_a = a.take(W, BNp > BT ? BNp : BT);
      c.d_n = a.take(W, BNp > BT ? BNp : BT);
      c.d_y = a.take(cfg_.latent_dim, BT);
      if (cfg_.gaussian()) c.d_moments = a.take(2 * cfg_.latent_dim, BT);
      c.d_img = a.take(image_dim(), B);
      if (pass == 0) a.reserve_counted("TokenizerAE::backward", B);
    }
    ws.bwd_layout_ = B;
  }

  // Tokens [first, first + count) of every sequence of a token matrix h (width, B L), as one
  // (width count, B) matrix: the run of one sequence is contiguous, the next sequence's starts
  // width L elements later. The existing column primitives (copy, fill, broadcast_cols,
  // add_cols, sum_cols) act on such views, so no token-range primitive is needed.
  MatrixView<S> runs(MatrixView<S> h, Index first, Index count) const {
    const Index W = cfg_.width, L = seq_len();
    return MatrixView<S>(h.data + first * W, W * count, h.cols / L, W * L);
  }
  // A contiguous (width, B n) matrix m as (width n, B): the layout of runs(.., n).
  MatrixView<S> packed(MatrixView<S> m, Index B) const {
    return MatrixView<S>(m.data, m.rows * (m.cols / B), B, m.rows * (m.cols / B));
  }
  // The (width, Np) tables of the patch positions of the encoder and of the decoder: the fixed
  // sine-cosine table, or the parameters encoder.pos_embed / decoder.pos_embed ((1, Np, width)
  // row-major is the same memory as (width, Np) column-major).
  ConstMatrixView<S> pos_enc() const {
    if (cfg_.learned_pos_embed) return {params_.data() + pos_e_, cfg_.width, np_};
    return {pos_.data(), cfg_.width, np_};
  }
  ConstMatrixView<S> pos_dec() const {
    if (cfg_.learned_pos_embed) return {params_.data() + pos_d_, cfg_.width, np_};
    return {pos_.data(), cfg_.width, np_};
  }
  // MAE's 2-D sine-cosine table of the patch grid (patches.md (4)), on the host.
  std::vector<S> pos_table() const {
    const Index g = cfg_.image_size / cfg_.patch;
    return sincos_pos_embed_2d<S>(cfg_.width, g, g);
  }

  // Encoder: tokenizer.md (1); with a Gaussian posterior, its moments, the clamped log-variance
  // and the decoder's input z = mu + exp(logvar / 2) eps into c.y (eps empty: z = mu), (7)-(8).
  void run_encoder(Context& ctx, ConstMatrixView<S> x, ConstMatrixView<S> eps,
                   const Caches& c) const {
    const S* p = params_.data();
    const Index T = cfg_.latent_tokens, B = x.cols;
    const Index img = cfg_.image_size;
    Backend::patchify(ctx, x, cfg_.channels, img, img, cfg_.patch, c.patches);
    // Patch tokens: W_pe patch + b + pos, into the first Np tokens of every sequence.
    const MatrixView<S> e = c.tmp.col_block(0, B * np_);
    patch_embed_.forward(ctx, p, c.patches, e);
    Backend::add_per_token(ctx, pos_enc(), e);
    Backend::copy(ctx, ConstMatrixView<S>(packed(e, B)), runs(c.h_enc, 0, np_));
    // Latent tokens: latent_tokens + latent_pos_embed, the last T tokens of every sequence.
    const MatrixView<S> lat = runs(c.h_enc, np_, T);
    Backend::broadcast_cols(ctx, p + lat_tok_, lat);
    Backend::add_cols(ctx, p + lat_pos_e_, lat);
    for (std::size_t i = 0; i < enc_.size(); ++i) enc_[i].forward(ctx, p, c.h_enc, c.enc[i]);
    // The T latent outputs, then the final LayerNorm and to_latent (only they are read).
    const MatrixView<S> o = c.tmp.col_block(0, B * T);
    Backend::copy(ctx, ConstMatrixView<S>(lat), packed(o, B));
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(o), p + norm_e_w_, p + norm_e_b_,
                                   static_cast<S>(cfg_.ln_eps), ConstMatrixView<S>(),
                                   ConstMatrixView<S>(), c.nhat_e, c.rstd_e.data, c.a_e);
    if (!cfg_.gaussian()) {
      to_latent_.forward(ctx, p, c.a_e, c.y);
      return;
    }
    to_latent_.forward(ctx, p, c.a_e, c.moments);
    if (!eps.empty()) Backend::copy(ctx, eps, c.eps);
    Backend::gaussian_posterior_forward(
        ctx, ConstMatrixView<S>(c.moments),
        eps.empty() ? ConstMatrixView<S>() : ConstMatrixView<S>(c.eps), c.logvar, c.y);
  }

  // Decoder from the latents in c.y: tokenizer.md (2).
  void run_decoder(Context& ctx, MatrixView<S> recon_out, const Caches& c) const {
    const S* p = params_.data();
    const Index T = cfg_.latent_tokens, B = recon_out.cols;
    const Index img = cfg_.image_size;
    // Patch positions: mask_token + pos, the same for every image.
    Backend::broadcast_cols(ctx, p + mask_, c.query);
    Backend::axpy(ctx, S(1), pos_dec(), c.query);
    Backend::broadcast_cols(ctx, c.query.data, runs(c.h_dec, 0, np_));
    // Latent tokens: from_latent(y) + latent_pos_embed, the last T tokens of every sequence.
    const MatrixView<S> z = c.tmp.col_block(0, B * T);
    from_latent_.forward(ctx, p, c.y, z);
    Backend::add_per_token(ctx, ConstMatrixView<S>(p + lat_pos_d_, cfg_.width, T), z);
    Backend::copy(ctx, ConstMatrixView<S>(packed(z, B)), runs(c.h_dec, np_, T));
    for (std::size_t i = 0; i < dec_.size(); ++i) dec_[i].forward(ctx, p, c.h_dec, c.dec[i]);
    // The Np patch outputs: final LayerNorm, pixel head, unpatchify.
    const MatrixView<S> o = c.tmp.col_block(0, B * np_);
    Backend::copy(ctx, ConstMatrixView<S>(runs(c.h_dec, 0, np_)), packed(o, B));
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(o), p + norm_d_w_, p + norm_d_b_,
                                   static_cast<S>(cfg_.ln_eps), ConstMatrixView<S>(),
                                   ConstMatrixView<S>(), c.nhat_d, c.rstd_d.data, c.a_d);
    pixel_head_.forward(ctx, p, c.a_d, c.pix);
    Backend::unpatchify(ctx, ConstMatrixView<S>(c.pix), cfg_.channels, img, img, cfg_.patch,
                        recon_out);
  }

  // tokenizer.md (3): the decoder, then the encoder; with a Gaussian posterior, dL/dz (and the
  // KL term of weight kl_weight) back to the moments between the two, (10). The layout is the
  // encoder's then the decoder's parameters, each half in forward order (its input tokens
  // first, its head last), so each part's gradient is final once its backward is done: `ready`
  // (if any) hears so after the decoder's head, each block and its input, then the encoder's.
  void run_backward(Context& ctx, const Caches& c, ConstMatrixView<S> d_recon,
                    ConstMatrixView<S> d_y_extra, S kl_weight, bool sampled, S* dp,
                    MatrixView<S> d_x, GradientReady* ready) const {
    auto report = [ready](Index lo) {
      if (ready) ready->ready(lo);
    };
    const S* p = params_.data();
    const Index T = cfg_.latent_tokens, B = d_recon.cols, img = cfg_.image_size;
    const Index BT = B * T, BNp = B * np_;
    const MatrixView<S> d_h = c.d_h;
    // Decoder head: unpatchify's adjoint is patchify; pixel head; final LayerNorm.
    const MatrixView<S> d_pix = c.d_tok;
    Backend::patchify(ctx, d_recon, cfg_.channels, img, img, cfg_.patch, d_pix);
    const MatrixView<S> d_ad = c.d_a.col_block(0, BNp), d_od = c.d_n.col_block(0, BNp);
    pixel_head_.backward_params(ctx, c.a_d, d_pix, dp);
    pixel_head_.backward_input(ctx, p, d_pix, d_ad, false);
    Backend::fill(ctx, d_od, S(0));
    Backend::norm_modulate_backward(ctx, ConstMatrixView<S>(c.nhat_d), c.rstd_d.data, p + norm_d_w_,
                                    p + norm_d_b_, ConstMatrixView<S>(), ConstMatrixView<S>(d_ad),
                                    d_od, MatrixView<S>(), MatrixView<S>(), dp + norm_d_w_,
                                    dp + norm_d_b_);
    report(norm_d_w_);
    Backend::copy(ctx, ConstMatrixView<S>(packed(d_od, B)), runs(d_h, 0, np_));
    Backend::fill(ctx, runs(d_h, np_, T), S(0));
    for (std::size_t i = dec_.size(); i-- > 0;) {
      dec_[i].backward(ctx, p, c.dec[i], d_h, dp, c.bs);
      report(dec_[i].n1_w);
    }
    // mask_token: the sum over every patch position of every image; decoder.pos_embed (when
    // learned): the sum over the images, position by position.
    Backend::copy(ctx, ConstMatrixView<S>(runs(d_h, 0, np_)), packed(d_od, B));
    Backend::sum_cols(ctx, ConstMatrixView<S>(d_od), dp + mask_);
    if (cfg_.learned_pos_embed)
      Backend::sum_per_token(ctx, ConstMatrixView<S>(d_od),
                             MatrixView<S>(dp + pos_d_, cfg_.width, np_));
    // Latent tokens: latent_pos_embed, from_latent, into d_y.
    const MatrixView<S> d_z = c.d_n.col_block(0, BT);
    Backend::copy(ctx, ConstMatrixView<S>(runs(d_h, np_, T)), packed(d_z, B));
    Backend::sum_per_token(ctx, ConstMatrixView<S>(d_z),
                           MatrixView<S>(dp + lat_pos_d_, cfg_.width, T));
    from_latent_.backward_params(ctx, c.y, d_z, dp);
    from_latent_.backward_input(ctx, p, d_z, c.d_y, false);
    report(mask_);  // the decoder is done
    if (!d_y_extra.empty()) Backend::axpy(ctx, S(1), d_y_extra, c.d_y);
    // Gaussian posterior: dL/dz (+ the KL term) to the moments mu and logvar.
    MatrixView<S> d_lat = c.d_y;
    if (cfg_.gaussian()) {
      Backend::gaussian_posterior_backward(
          ctx, ConstMatrixView<S>(c.moments), ConstMatrixView<S>(c.logvar),
          sampled ? ConstMatrixView<S>(c.eps) : ConstMatrixView<S>(), ConstMatrixView<S>(c.d_y),
          kl_weight, c.d_moments);
      d_lat = c.d_moments;
    }
    // Encoder head: to_latent, final LayerNorm, into the latent tokens of d_h.
    const MatrixView<S> d_ae = c.d_a.col_block(0, BT), d_oe = c.d_n.col_block(0, BT);
    to_latent_.backward_params(ctx, c.a_e, d_lat, dp);
    to_latent_.backward_input(ctx, p, d_lat, d_ae, false);
    Backend::fill(ctx, d_oe, S(0));
    Backend::norm_modulate_backward(ctx, ConstMatrixView<S>(c.nhat_e), c.rstd_e.data, p + norm_e_w_,
                                    p + norm_e_b_, ConstMatrixView<S>(), ConstMatrixView<S>(d_ae),
                                    d_oe, MatrixView<S>(), MatrixView<S>(), dp + norm_e_w_,
                                    dp + norm_e_b_);
    report(norm_e_w_);
    Backend::fill(ctx, runs(d_h, 0, np_), S(0));
    Backend::copy(ctx, ConstMatrixView<S>(packed(d_oe, B)), runs(d_h, np_, T));
    for (std::size_t i = enc_.size(); i-- > 0;) {
      enc_[i].backward(ctx, p, c.enc[i], d_h, dp, c.bs);
      report(enc_[i].n1_w);
    }
    // latent_tokens and encoder.latent_pos_embed: both get the sum over the images.
    Backend::sum_cols(ctx, ConstMatrixView<S>(runs(d_h, np_, T)), dp + lat_tok_);
    Backend::sum_cols(ctx, ConstMatrixView<S>(runs(d_h, np_, T)), dp + lat_pos_e_);
    // encoder.pos_embed (when learned): the sum over the images of the patch tokens' gradient;
    // the patch embedding, and through patchify's adjoint into d_x.
    const MatrixView<S> d_e = c.d_n.col_block(0, BNp);
    Backend::copy(ctx, ConstMatrixView<S>(runs(d_h, 0, np_)), packed(d_e, B));
    if (cfg_.learned_pos_embed)
      Backend::sum_per_token(ctx, ConstMatrixView<S>(d_e),
                             MatrixView<S>(dp + pos_e_, cfg_.width, np_));
    patch_embed_.backward_params(ctx, c.patches, d_e, dp);
    report(0);
    if (d_x.empty()) return;
    patch_embed_.backward_input(ctx, p, d_e, c.d_tok, false);
    Backend::unpatchify(ctx, ConstMatrixView<S>(c.d_tok), cfg_.channels, img, img, cfg_.patch,
                        c.d_img);
    Backend::axpy(ctx, S(1), ConstMatrixView<S>(c.d_img), d_x);
  }

  Config cfg_;
  Index np_ = 0;
  ParamLayout layout_;
  typename Backend::template Buffer<S> params_, pos_;
  std::array<Index, 13> key_{};
  Index lat_tok_ = -1, lat_pos_e_ = -1, norm_e_w_ = -1, norm_e_b_ = -1;
  Index mask_ = -1, lat_pos_d_ = -1, norm_d_w_ = -1, norm_d_b_ = -1;
  Index pos_e_ = -1, pos_d_ = -1;  // encoder.pos_embed, decoder.pos_embed (learned_pos_embed)
  Linear<S, Backend> patch_embed_, to_latent_, from_latent_, pixel_head_;
  std::vector<Block> enc_, dec_;
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
