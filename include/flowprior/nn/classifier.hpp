/// @file
/// MlpClassifier: an image classifier built from the library's layers, a stack of Linear +
/// activation layers and a Linear head to the logits,
///   a_0 = x,  a_{l+1} = act(W_l a_l + b_l) (l < L),  z = W_head a_L + b_head,
/// and the softmax cross-entropy that trains it (SoftmaxCrossEntropy). Its penultimate
/// activations a_L (features()) are the "semantic" features of the image pipeline (a target
/// distribution for the flow prior, the space of Frechet distances). Equations, initialisation
/// and names: docs/math/classifier.md.
///
/// Layout: B images are one (input_dim, B) matrix, one flattened image (C H W) per column; the
/// logits are (classes, B). Parameters carry PyTorch state_dict names (layers.<l>.weight /
/// .bias, head.weight / .bias), packed in that order in one flat vector. Gradients accumulate
/// (+=) into d_params and d_x. Thread safety: const methods only read the parameters; each
/// thread needs its own Workspace.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/backend/xent_args.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/gradient_ready.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace nn {

/// Configuration of MlpClassifier. Defaults: Fashion-MNIST (28 x 28 x 1, 10 classes) with two
/// hidden layers of 256 and 128 units.
struct ClassifierConfig {
  Index input_dim = 784;                   ///< rows of an input column (C H W)
  std::vector<Index> hidden = {256, 128};  ///< widths of the hidden layers (at least one)
  Index classes = 10;                      ///< logits per sample (>= 2)
  Activation activation = Activation::GELU;

  /// The width of features(): the last hidden width.
  Index feature_dim() const { return hidden.empty() ? 0 : hidden.back(); }

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "ClassifierConfig";
    if (input_dim < 1) raise_config(w, "input_dim must be >= 1, got " + std::to_string(input_dim));
    if (hidden.empty())
      raise_config(w, "hidden must name at least one layer (features() are its last activations)");
    for (std::size_t l = 0; l < hidden.size(); ++l)
      if (hidden[l] < 1)
        raise_config(
            w, "hidden[" + std::to_string(l) + "] must be >= 1, got " + std::to_string(hidden[l]));
    if (classes < 2) raise_config(w, "classes must be >= 2, got " + std::to_string(classes));
    if (activation != Activation::SiLU && activation != Activation::GELU)
      raise_config(w, "activation must be SiLU or GELU");
  }

  /// Every field as (name, value) text: the entries a checkpoint records and checks on load
  /// (train/checkpoint.hpp), as TokenizerConfig::entries. hidden is written "256,128".
  std::vector<std::pair<std::string, std::string>> entries() const {
    std::string h;
    for (std::size_t l = 0; l < hidden.size(); ++l) h += (l ? "," : "") + std::to_string(hidden[l]);
    return {{"input_dim", std::to_string(input_dim)},
            {"hidden", h},
            {"classes", std::to_string(classes)},
            {"activation", to_string(activation)}};
  }
};

/// Class labels of a batch, one per column, in host memory: a pointer and a count, or a
/// std::vector (converted implicitly; the vector must outlive the view).
struct LabelView {
  const std::int32_t* data = nullptr;
  Index size = 0;

  LabelView() = default;
  LabelView(const std::int32_t* d, Index n) : data(d), size(n) {}
  LabelView(const std::vector<std::int32_t>& v)  // NOLINT(google-explicit-constructor)
      : data(v.data()), size(static_cast<Index>(v.size())) {}
  const std::int32_t& operator[](Index i) const { return data[i]; }
  /// Labels [first, first + n).
  LabelView slice(Index first, Index n) const { return {data + first, n}; }
};

/// Throws value_error "[flowprior.value] <where>: argument '<name>' must lie in [0, classes),
/// got <v> at index <i>" for the first label outside [0, classes). Host memory.
inline void check_labels(const char* where, const char* name, LabelView labels, Index classes) {
  for (Index i = 0; i < labels.size; ++i) {
    const Index y = labels[i];
    if (y < 0 || y >= classes) {
      std::ostringstream os;
      os << "[flowprior.value] " << where << ": argument '" << name << "' must lie in [0, "
         << classes << "), got " << y << " at index " << i;
      flowprior::detail::raise<value_error>(os.str());
    }
  }
}

/// What the cross-entropy of a batch gave.
struct CrossEntropyStats {
  double loss = 0;    ///< mean over the batch of -log softmax(z_b)[y_b]
  Index correct = 0;  ///< columns whose first largest logit is at the label
  Index count = 0;    ///< columns (B)
  /// correct / count (0 for an empty batch).
  double accuracy() const { return count > 0 ? double(correct) / double(count) : 0.0; }
};

/// The softmax cross-entropy of logits against labels, mean over the batch, with its gradient
/// (docs/math/classifier.md (5)-(7)):
///
///   L = (1/B) sum_b [lse(z_b) - z_b[y_b]],   dL/dz = (softmax(z) - onehot(y)) / B
///
/// evaluated per column in double with the log-sum-exp shifted by the column's maximum, so
/// logits of any finite size are safe (1e4 and more). Holds a backend buffer for the labels
/// (grown, never shrunk: a batch size seen before allocates nothing).
template <class S, class Backend = CpuBackend>
class SoftmaxCrossEntropy {
 public:
  using Context = typename Backend::Context;

  /// Loss and correct count of logits (classes, B >= 1; backend memory) against labels (B
  /// values; host memory); if d_logits_out is non-empty it is overwritten with dL/dz (classes,
  /// B; it may be the logits themselves). Checks, in this order: 'logits' has >= 2 rows and
  /// >= 1 column, 'labels' has B values, 'd_logits' is (classes, B) (shape_error); every label
  /// in [0, classes) (value_error); finite logits (numeric_error naming the element).
  CrossEntropyStats operator()(Context& ctx, ConstMatrixView<S> logits, LabelView labels,
                               MatrixView<S> d_logits_out = MatrixView<S>()) {
    const char* w = "softmax_cross_entropy";
    if (logits.rows < 2 || logits.cols < 1)
      flowprior::detail::raise_shape(w, "logits", logits.rows, logits.cols,
                                     logits.rows < 2 ? 2 : logits.rows,
                                     logits.cols < 1 ? 1 : logits.cols);
    const Index B = logits.cols;
    check_size(w, "labels", labels, B);
    if (!d_logits_out.empty()) check_shape(w, "d_logits", d_logits_out, logits.rows, B);
    check_labels(w, "labels", labels, logits.rows);
    check_finite_on<Backend, S>(ctx, w, "logits", logits);
    Backend::resize(labels_, B);
    Backend::copy_from_host(labels.data, B, labels_.data());
    const XentSums sums =
        Backend::softmax_xent_cols(ctx, logits, labels_.data(), 1.0 / double(B), d_logits_out);
    CrossEntropyStats st;
    st.loss = sums.loss / double(B);  // classifier.md (5)
    st.correct = sums.correct;
    st.count = B;
    return st;
  }

 private:
  typename Backend::template Buffer<std::int32_t> labels_;
};

/// SoftmaxCrossEntropy on host memory (the CPU backend, the default), for one-off use: allocates its label
/// buffer on every call. Same checks and results.
template <class S, class Backend = CpuBackend>
CrossEntropyStats softmax_cross_entropy(ConstMatrixView<S> logits, LabelView labels,
                                        MatrixView<S> d_logits_out = MatrixView<S>()) {
  SoftmaxCrossEntropy<S, Backend> xent;
  typename Backend::Context ctx;
  return xent(ctx, logits, labels, d_logits_out);
}

namespace detail {
/// MlpClassifier's views into its workspace arenas.
template <class S>
struct ClassifierCaches {
  MatrixView<S> x;                  ///< (input_dim, B): the input, copied (backward reads it)
  std::vector<MatrixView<S>> pre;   ///< (h_l, B): pre-activations W_l a_l + b_l
  std::vector<MatrixView<S>> post;  ///< (h_l, B): activations a_{l+1}
  MatrixView<S> t1, t2;             ///< backward scratch (max h_l, B)
};
}  // namespace detail

template <class S, class Backend>
class MlpClassifier;

/// The workspace of an MlpClassifier: its forward caches and backward scratch (two arenas laid
/// out per batch size; a batch size already seen allocates nothing) and a backend context.
/// Copying gives an empty workspace with a context of its own; moving keeps the memory and the
/// context (as TokenizerWorkspace).
template <class S, class Backend>
class ClassifierWorkspace {
 public:
  using Context = typename Backend::Context;

  ClassifierWorkspace() = default;
  ClassifierWorkspace(const ClassifierWorkspace&) {}
  ClassifierWorkspace& operator=(const ClassifierWorkspace&) {
    *this = ClassifierWorkspace();
    return *this;
  }
  ClassifierWorkspace(ClassifierWorkspace&&) = default;
  ClassifierWorkspace& operator=(ClassifierWorkspace&&) = default;

  /// Batch of the last forward or features call (-1 before the first).
  Index batch() const { return batch_; }
  /// The context the model's primitives run on for this workspace.
  Context& context() { return ctx_.get(); }
  /// Runs on `ctx` from now on (not owned); nullptr returns to the workspace's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }
  /// From now on a backward on this workspace tells `ready` (not owned; nullptr: nobody) where
  /// the parameter gradient is final, layer by layer (gradient_ready.hpp).
  void set_gradient_ready(GradientReady* ready) { ready_ = ready; }
  GradientReady* gradient_ready() const { return ready_; }

 private:
  template <class, class>
  friend class MlpClassifier;
  GradientReady* ready_ = nullptr;
  Arena<S, Backend> fwd_, bwd_;
  Index batch_ = -1, fwd_layout_ = -1, bwd_layout_ = -1;
  bool logits_ = false;     // the last pass was a forward (backward needs its caches)
  std::vector<Index> key_;  // the model sizes the layout is for
  const void* owner_ = nullptr;
  detail::ClassifierCaches<S> c;
  ContextSlot<Backend> ctx_;
};

/// The MLP classifier (docs/math/classifier.md).
template <class S, class Backend = CpuBackend>
class MlpClassifier {
 public:
  using Scalar = S;
  using BackendType = Backend;
  using Context = typename Backend::Context;
  using Config = ClassifierConfig;
  using Workspace = ClassifierWorkspace<S, Backend>;

  /// Builds the layout (layers.0 .. layers.<L-1>, then head) and allocates the parameters
  /// (uninitialised: call init or load a state dict). Throws config_error from cfg.validate(),
  /// or naming the sizes when the parameter count overflows or cannot fit in memory.
  explicit MlpClassifier(const Config& cfg) : cfg_(cfg) {
    cfg_.validate();
    const char* who = "MlpClassifier";
    std::string sizes = "input_dim " + std::to_string(cfg_.input_dim) + ", hidden";
    for (Index h : cfg_.hidden) sizes += " " + std::to_string(h);
    sizes += ", classes " + std::to_string(cfg_.classes);
    try {
      Index in = cfg_.input_dim;
      for (std::size_t l = 0; l < cfg_.hidden.size(); ++l) {
        check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
        layers_.push_back(
            Linear<S, Backend>::make(layout_, "layers." + std::to_string(l), in, cfg_.hidden[l]));
        in = cfg_.hidden[l];
      }
      head_ = Linear<S, Backend>::make(layout_, "head", in, cfg_.classes);
    } catch (const config_error& e) {
      raise_config(who, "the model (" + sizes + ") is too large: " + e.what());
    }
    check_allocation(who, "the parameters of " + sizes, layout_.total(), sizeof(S));
    Backend::resize(params_, layout_.total());
    key_.push_back(layout_.total());
    key_.push_back(cfg_.input_dim);
    key_.push_back(cfg_.classes);
    for (Index h : cfg_.hidden) {
      key_.push_back(h);
      max_hidden_ = h > max_hidden_ ? h : max_hidden_;
    }
  }

  const Config& config() const { return cfg_; }
  Index num_params() const { return layout_.total(); }
  /// Named tensors (PyTorch state_dict order).
  const ParamLayout& layout() const { return layout_; }
  /// The flat parameter vector (backend memory).
  VectorView<S> parameters() { return {params_.data(), layout_.total()}; }
  ConstVectorView<S> parameters() const { return {params_.data(), layout_.total()}; }
  /// Rows of an input column.
  Index input_dim() const { return cfg_.input_dim; }
  /// Rows of features(): the last hidden width.
  Index feature_dim() const { return cfg_.feature_dim(); }
  /// Rows of the logits.
  Index classes() const { return cfg_.classes; }

  /// Initialisation, drawn on the host and uploaded (classifier.md "Initialisation"): hidden
  /// weights Kaiming-uniform, U(-sqrt(6 / fan_in), sqrt(6 / fan_in)) (variance 2 / fan_in, as
  /// torch.nn.init.kaiming_uniform_ with the ReLU gain: GELU and SiLU are ReLU-like), the head
  /// Xavier-uniform, every bias zero. Consumes the generator layer by layer, in layout order.
  void init(Rng& rng) {
    std::vector<S> h(static_cast<std::size_t>(num_params()), S(0));
    for (const auto& l : layers_) {
      const double bound = std::sqrt(6.0 / static_cast<double>(l.in));
      for (Index i = 0; i < l.in * l.out; ++i)
        h[static_cast<std::size_t>(l.w + i)] = static_cast<S>(uniform(rng, -bound, bound));
      l.init_bias_zero(h.data());
    }
    head_.init_xavier(h.data(), rng);
    Backend::copy_from_host(h.data(), num_params(), params_);
  }

  /// logits_out (classes, B) = the network on x (input_dim, B >= 1; backend memory). Caches
  /// what backward needs in ws (x included: x may change afterwards). Throws shape_error naming
  /// 'x' or 'logits'.                                                    classifier.md (1)-(2)
  void forward(ConstMatrixView<S> x, MatrixView<S> logits_out, Workspace& ws) const {
    const char* w = "MlpClassifier::forward";
    const Index B = check_input(w, x);
    check_shape(w, "logits", logits_out, cfg_.classes, B);
    run_hidden(ws, x);
    head_.forward(ws.context(), params_.data(), ws.c.post.back(), logits_out);
    ws.logits_ = true;
  }

  /// f_out (feature_dim(), B) = a_L, the activations after the last hidden layer: the input of
  /// the head (the semantic features). Runs the hidden layers only; a backward afterwards needs
  /// a forward first. Throws shape_error naming 'x' or 'features'.     classifier.md (1), (3)
  void features(ConstMatrixView<S> x, MatrixView<S> f_out, Workspace& ws) const {
    const char* w = "MlpClassifier::features";
    const Index B = check_input(w, x);
    check_shape(w, "features", f_out, feature_dim(), B);
    run_hidden(ws, x);
    Backend::copy(ws.context(), ConstMatrixView<S>(ws.c.post.back()), f_out);
  }

  /// Gradients of a loss L(logits) of the last forward on ws, given d_logits = dL/dlogits
  /// (classes, B): d_params (num_params()) += dL/dparams and, where d_x is non-empty, d_x
  /// (input_dim, B) += dL/dx. Throws error ([flowprior.state]) without a forward of this model
  /// on ws (a features() call does not count) or after the model's sizes changed; shape_error
  /// naming 'd_params', 'd_logits' or 'd_x'.                              classifier.md (4)
  void backward(Workspace& ws, ConstMatrixView<S> d_logits, VectorView<S> d_params,
                MatrixView<S> d_x = MatrixView<S>()) const {
    const char* w = "MlpClassifier::backward";
    check_size(w, "d_params", d_params, num_params());
    check_forward_done(w, ws.logits_ ? ws.batch_ : -1, ws.owner_, this);
    check_layout_unchanged(w, ws.key_ == key_);
    const Index B = ws.batch_;
    check_shape(w, "d_logits", d_logits, cfg_.classes, B);
    if (!d_x.empty()) check_shape(w, "d_x", d_x, cfg_.input_dim, B);
    prepare_backward(ws);
    run_backward(ws, d_logits, d_params.data, d_x);
  }

 private:
  using Caches = detail::ClassifierCaches<S>;

  Index check_input(const char* w, ConstMatrixView<S> x) const {
    if (x.cols < 1 || x.rows != cfg_.input_dim)
      flowprior::detail::raise_shape(w, "x", x.rows, x.cols, cfg_.input_dim,
                                     x.cols < 1 ? 1 : x.cols);
    return x.cols;
  }

  // Lays the forward caches out for a batch of B when B or the model changed.
  void begin(Workspace& ws, Index B) const {
    ws.logits_ = false;
    if (ws.fwd_layout_ != B || ws.key_ != key_) {
      ws.key_.clear();
      const Index L = Index(layers_.size());
      Caches& c = ws.c;
      c.pre.resize(static_cast<std::size_t>(L));
      c.post.resize(static_cast<std::size_t>(L));
      for (int pass = 0; pass < 2; ++pass) {
        Arena<S, Backend>& a = ws.fwd_;
        a.begin(pass == 0);
        c.x = a.take(cfg_.input_dim, B);
        for (std::size_t l = 0; l < layers_.size(); ++l) {
          c.pre[l] = a.take(layers_[l].out, B);
          c.post[l] = a.take(layers_[l].out, B);
        }
        if (pass == 0) a.reserve_counted("MlpClassifier::forward", B);
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
    for (int pass = 0; pass < 2; ++pass) {
      Arena<S, Backend>& a = ws.bwd_;
      a.begin(pass == 0);
      ws.c.t1 = a.take(max_hidden_, B);
      ws.c.t2 = a.take(max_hidden_, B);
      if (pass == 0) a.reserve_counted("MlpClassifier::backward", B);
    }
    ws.bwd_layout_ = B;
  }

  // a_0 = x (copied), a_{l+1} = act(W_l a_l + b_l).                         classifier.md (1)
  void run_hidden(Workspace& ws, ConstMatrixView<S> x) const {
    begin(ws, x.cols);
    Context& ctx = ws.context();
    const S* p = params_.data();
    Caches& c = ws.c;
    Backend::copy(ctx, x, c.x);
    ConstMatrixView<S> a = c.x;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      layers_[l].forward(ctx, p, a, c.pre[l]);
      Backend::activation_forward(ctx, cfg_.activation, ConstMatrixView<S>(c.pre[l]), c.post[l]);
      a = c.post[l];
    }
  }

  // A (rows, B) matrix at the start of a scratch buffer of (max_hidden, B).
  static MatrixView<S> scratch(MatrixView<S> t, Index rows, Index B) { return {t.data, rows, B}; }

  // classifier.md (4): the head, then the hidden layers in reverse. The layout is the layers in
  // order, then the head, so each layer's gradient is final after its backward_params: the
  // workspace's GradientReady (if any) hears so.
  void run_backward(Workspace& ws, ConstMatrixView<S> d_z, S* dp, MatrixView<S> d_x) const {
    Context& ctx = ws.context();
    const S* p = params_.data();
    Caches& c = ws.c;
    const Index B = ws.batch_;
    const Index L = Index(layers_.size());
    GradientReady* ready = ws.ready_;
    head_.backward_params(ctx, c.post[L - 1], d_z, dp);
    if (ready) ready->ready(head_.w);
    // The gradient of the current activations lives in t[k]; the layer below writes t[1 - k].
    const MatrixView<S> t[2] = {c.t1, c.t2};
    int k = 0;
    MatrixView<S> cur = scratch(t[k], head_.in, B);  // d a_L
    head_.backward_input(ctx, p, d_z, cur, false);
    for (Index l = L; l-- > 0;) {
      const auto& layer = layers_[static_cast<std::size_t>(l)];
      // d pre_l = act'(pre_l) * d a_{l+1}, in place.
      Backend::activation_backward(ctx, cfg_.activation, ConstMatrixView<S>(c.pre[l]),
                                   ConstMatrixView<S>(cur), cur);
      const ConstMatrixView<S> a_in = l > 0 ? ConstMatrixView<S>(c.post[l - 1]) : c.x;
      layer.backward_params(ctx, a_in, cur, dp);
      if (ready) ready->ready(l > 0 ? layer.w : 0);
      if (l > 0) {
        k = 1 - k;
        const MatrixView<S> d_a = scratch(t[k], layer.in, B);
        layer.backward_input(ctx, p, cur, d_a, false);
        cur = d_a;
      } else if (!d_x.empty()) {
        layer.backward_input(ctx, p, cur, d_x, true);  // accumulates into the caller's d_x
      }
    }
  }

  Config cfg_;
  ParamLayout layout_;
  typename Backend::template Buffer<S> params_;
  std::vector<Index> key_;
  Index max_hidden_ = 0;
  std::vector<Linear<S, Backend>> layers_;
  Linear<S, Backend> head_;
};

}  // namespace nn
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
