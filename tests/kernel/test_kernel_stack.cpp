// The image models through the whole stack on the kernel backend: the classifier (logits, the
// softmax cross-entropy and its backward), the tokenizer (deterministic and Gaussian posterior,
// qk-norm on and off: encode, decode, the KL and the backward with d_y_extra and a KL weight),
// the MAR backbone (masked tokens) and the adaLN transformer block, each run on
// HostKernelBackend and on CpuBackend at the same random non-degenerate parameters (LayerNorm
// gains around 1, adaLN modulations far from 0) and compared output by output.
//
// Tolerances: those of a single primitive (kernel_parity.hpp), measured relative to the largest
// magnitude of each output (a gradient element that cancels to near zero carries the absolute
// rounding of its larger terms). Measured: the whole stack stays within them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/nn/transformer.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::kp::Cpu;
using fpt::kp::Ker;
namespace nn = flowprior::nn;

namespace {

template <class S>
constexpr double stack_tol() {
  return fpt::kp::tol<S>();
}

// A host array of n values (both backends here keep their memory on the host).
template <class S>
struct Host {
  Index rows = 0, cols = 0;
  std::vector<S> v;
  Host(Index r, Index c) : rows(r), cols(c), v(static_cast<std::size_t>(r * c), S(0)) {}
  Host& random(Rng& rng, double lo = -1.0, double hi = 1.0) {
    for (auto& x : v) x = static_cast<S>(flowprior::uniform(rng, lo, hi));
    return *this;
  }
  MatrixView<S> view() { return {v.data(), rows, cols}; }
  ConstMatrixView<S> cview() const { return {v.data(), rows, cols}; }
  VectorView<S> vec() { return {v.data(), rows * cols}; }
};

// |a - b| <= rtol (|a| + |b| + max |a|) element by element, naming the first that fails.
template <class S>
void require_near(const std::vector<S>& a, const std::vector<S>& b, const std::string& what) {
  REQUIRE(a.size() == b.size());
  double scale = 0;
  for (const S x : a) scale = std::max(scale, std::abs(double(x)));
  REQUIRE(scale > 0);  // a zero output compares nothing
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], y = b[i];
    const double bound = stack_tol<S>() * (std::abs(x) + std::abs(y) + scale);
    if (!(std::abs(x - y) <= bound)) {
      INFO(what << "[" << i << "]: cpu " << x << ", kernel " << y);
      REQUIRE(std::abs(x - y) <= bound);
    }
  }
}

// Random non-degenerate parameters by name: LayerNorm gains in [0.6, 1.4], matrices of variance
// ~ 1 / fan_in, everything else (biases, adaLN modulations, tokens, embeddings) in [-0.3, 0.3].
template <class S>
std::vector<S> random_params(const nn::ParamLayout& layout, Rng& rng) {
  std::vector<S> h(static_cast<std::size_t>(layout.total()));
  for (const auto& t : layout.tensors()) {
    S* q = h.data() + t.offset;
    const std::string& n = t.name;
    const bool norm = n.find("norm") != std::string::npos || n.find("_ln") != std::string::npos;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    double lo = -0.3, hi = 0.3;
    if (norm && weight) {
      lo = 0.6;
      hi = 1.4;
    } else if (weight && t.shape.size() >= 2) {
      Index fan_in = 1;
      for (std::size_t k = 1; k < t.shape.size(); ++k) fan_in *= t.shape[k];
      hi = std::sqrt(3.0 / double(fan_in));
      lo = -hi;
    }
    for (Index i = 0; i < t.size(); ++i) q[i] = static_cast<S>(flowprior::uniform(rng, lo, hi));
  }
  return h;
}

template <class S, class Model>
void set_params(Model& m, const std::vector<S>& p) {
  std::copy(p.begin(), p.end(), m.parameters().data);
}

// ---------------------------------------------------------------------------------------------

template <class S, class K>
void classifier_parity(flowprior::Activation act) {
  nn::ClassifierConfig cfg;
  cfg.input_dim = 12;
  cfg.hidden = {10, 7};
  cfg.classes = 4;
  cfg.activation = act;
  nn::MlpClassifier<S, Cpu> cpu(cfg);
  nn::MlpClassifier<S, K> ker(cfg);
  Rng rng(31);
  const std::vector<S> p = random_params<S>(cpu.layout(), rng);
  set_params(cpu, p);
  set_params(ker, p);
  const Index B = 5;
  Host<S> x(cfg.input_dim, B);
  x.random(rng, -2.0, 2.0);
  const std::vector<std::int32_t> y = {0, 3, 1, 2, 3};
  Host<S> zc(cfg.classes, B), zk(cfg.classes, B), gc(cfg.classes, B), gk(cfg.classes, B);
  typename nn::MlpClassifier<S, Cpu>::Workspace wc;
  typename nn::MlpClassifier<S, K>::Workspace wk;
  cpu.forward(x.cview(), zc.view(), wc);
  ker.forward(x.cview(), zk.view(), wk);
  require_near(zc.v, zk.v, "classifier logits");
  nn::SoftmaxCrossEntropy<S, Cpu> xc;
  nn::SoftmaxCrossEntropy<S, K> xk;
  const nn::CrossEntropyStats sc = xc(wc.context(), zc.cview(), y, gc.view());
  const nn::CrossEntropyStats sk = xk(wk.context(), zk.cview(), y, gk.view());
  fpt::kp::require_close(sc.loss, sk.loss, "cross-entropy", stack_tol<S>());
  REQUIRE(sk.correct == sc.correct);
  require_near(gc.v, gk.v, "d_logits");
  Host<S> dpc(cpu.num_params(), 1), dpk(cpu.num_params(), 1), dxc(cfg.input_dim, B),
      dxk(cfg.input_dim, B);
  cpu.backward(wc, gc.cview(), dpc.vec(), dxc.view());
  ker.backward(wk, gk.cview(), dpk.vec(), dxk.view());
  require_near(dpc.v, dpk.v, "classifier d_params");
  require_near(dxc.v, dxk.v, "classifier d_x");
}

template <class S, class K>
void tokenizer_parity(bool gaussian, bool qk_norm) {
  nn::TokenizerConfig cfg;
  cfg.image_size = 4;
  cfg.channels = 2;
  cfg.patch = 2;
  cfg.width = 8;
  cfg.depth = 1;
  cfg.dec_depth = 1;
  cfg.heads = 2;
  cfg.mlp_ratio = 2.0;
  cfg.latent_tokens = 3;
  cfg.latent_dim = 3;
  cfg.qk_norm = qk_norm;
  cfg.posterior = gaussian ? nn::Posterior::gaussian : nn::Posterior::deterministic;
  nn::TokenizerAE<S, Cpu> cpu(cfg);
  nn::TokenizerAE<S, K> ker(cfg);
  Rng rng(32);
  const std::vector<S> p = random_params<S>(cpu.layout(), rng);
  set_params(cpu, p);
  set_params(ker, p);
  const Index B = 2, D = cpu.image_dim(), d = cfg.latent_dim, n = B * cfg.latent_tokens;
  Host<S> x(D, B), eps(d, n), drec(D, B), dy(d, n);
  x.random(rng);
  eps.random(rng, -1.5, 1.5);
  drec.random(rng);
  dy.random(rng);
  typename nn::TokenizerAE<S, Cpu>::Workspace wc;
  typename nn::TokenizerAE<S, K>::Workspace wk;
  Host<S> yc(d, n), yk(d, n), rc(D, B), rk(D, B);
  // encode and decode on their own, then the training pass.
  cpu.encode(x.cview(), yc.view(), wc);
  ker.encode(x.cview(), yk.view(), wk);
  require_near(yc.v, yk.v, "tokenizer encode");
  cpu.decode(yc.cview(), rc.view(), wc);
  ker.decode(yc.cview(), rk.view(), wk);
  require_near(rc.v, rk.v, "tokenizer decode");
  double kl = 0;
  if (gaussian) {
    cpu.forward(x.cview(), eps.cview(), yc.view(), rc.view(), wc);
    ker.forward(x.cview(), eps.cview(), yk.view(), rk.view(), wk);
    const double klc = cpu.kl_divergence(wc), klk = ker.kl_divergence(wk);
    fpt::kp::require_close(klc, klk, "tokenizer KL", stack_tol<S>());
    kl = 0.05;
  } else {
    cpu.forward(x.cview(), yc.view(), rc.view(), wc);
    ker.forward(x.cview(), yk.view(), rk.view(), wk);
  }
  require_near(yc.v, yk.v, "tokenizer y");
  require_near(rc.v, rk.v, "tokenizer recon");
  Host<S> dpc(cpu.num_params(), 1), dpk(cpu.num_params(), 1), dxc(D, B), dxk(D, B);
  cpu.backward(wc, drec.cview(), dy.cview(), kl, dpc.vec(), dxc.view());
  ker.backward(wk, drec.cview(), dy.cview(), kl, dpk.vec(), dxk.view());
  require_near(dpc.v, dpk.v, "tokenizer d_params");
  require_near(dxc.v, dxk.v, "tokenizer d_x");
}

template <class S, class K>
void mar_parity(bool qk_norm) {
  nn::MarConfig cfg;
  cfg.tokens = 4;
  cfg.token_dim = 3;
  cfg.width = 8;
  cfg.depth = 2;
  cfg.heads = 2;
  cfg.mlp_ratio = 2.0;
  cfg.qk_norm = qk_norm;
  cfg.head_width = 8;
  cfg.head_depth = 1;
  cfg.time_freq_dim = 8;
  nn::MarGenerator<S, Cpu> cpu(cfg);
  nn::MarGenerator<S, K> ker(cfg);
  Rng rng(33);
  const std::vector<S> p = random_params<S>(cpu.layout(), rng);
  set_params(cpu, p);
  set_params(ker, p);
  const Index B = 2, n = B * cfg.tokens;
  Host<S> x(cfg.token_dim, n), dc(cfg.width, n);
  x.random(rng, -2.0, 2.0);
  dc.random(rng);
  const std::vector<std::uint8_t> mask = {0, 1, 0, 0, 1, 1, 0, 1};
  const ConstVectorView<std::uint8_t> m(mask.data(), n);
  typename nn::MarGenerator<S, Cpu>::Workspace wc;
  typename nn::MarGenerator<S, K>::Workspace wk;
  Host<S> cc(cfg.width, n), ck(cfg.width, n);
  cpu.forward(x.cview(), m, cc.view(), wc);
  ker.forward(x.cview(), m, ck.view(), wk);
  require_near(cc.v, ck.v, "MAR c");
  Host<S> dpc(cpu.num_params(), 1), dpk(cpu.num_params(), 1), dxc(cfg.token_dim, n),
      dxk(cfg.token_dim, n);
  dpc.random(rng);  // accumulated into
  dpk.v = dpc.v;
  cpu.backward(wc, dc.cview(), dpc.vec(), dxc.view());
  ker.backward(wk, dc.cview(), dpk.vec(), dxk.view());
  require_near(dpc.v, dpk.v, "MAR d_params");
  require_near(dxc.v, dxk.v, "MAR d_x");
}

// One adaLN transformer block (DiT) on a backend: arenas, the sequence map and the context.
template <class S, class Backend>
struct BlockRun {
  using Block = nn::AdaLNTransformerBlock<S, Backend>;
  nn::Arena<S, Backend> fwd, bwd;
  nn::SequenceMap<Backend> map;
  typename Block::Cache c;
  typename Block::Scratch s;
  typename Backend::Context ctx;
  BlockRun(const Block& blk, Index batch, Index tokens) {
    map.update(ctx, batch, tokens);
    for (int pass = 0; pass < 2; ++pass) {
      fwd.begin(pass == 0);
      c = blk.carve(fwd, batch, tokens, map);
      if (pass == 0) fwd.reserve_counted();
      bwd.begin(pass == 0);
      s = blk.carve_scratch(bwd, batch, tokens);
      if (pass == 0) bwd.reserve_counted();
    }
  }
  BlockRun(const BlockRun&) = delete;
  BlockRun& operator=(const BlockRun&) = delete;
};

template <class S, class K>
void adaln_block_parity(bool qk_norm) {
  const Index C = 8, H = 2, hidden = 12, cond = 5, B = 2, L = 3, n = B * L;
  nn::ParamLayout layout;
  const auto bc =
      nn::AdaLNTransformerBlock<S, Cpu>::make(layout, "blocks.0", C, H, hidden, cond, qk_norm);
  nn::ParamLayout layout_k;
  const auto bk =
      nn::AdaLNTransformerBlock<S, K>::make(layout_k, "blocks.0", C, H, hidden, cond, qk_norm);
  Rng rng(34);
  std::vector<S> p(static_cast<std::size_t>(layout.total()));
  for (auto& v : p) v = static_cast<S>(flowprior::uniform(rng, -0.5, 0.5));
  for (Index i = 0; i < C; ++i) {  // gates around 1, scales around 0.3: every branch matters
    p[std::size_t(bc.ada.b + 1 * C + i)] += S(0.3);
    p[std::size_t(bc.ada.b + 2 * C + i)] += S(1);
    p[std::size_t(bc.ada.b + 4 * C + i)] += S(0.3);
    p[std::size_t(bc.ada.b + 5 * C + i)] += S(1);
  }
  Host<S> x(C, n), c(cond, B), dh(C, n);
  x.random(rng, -2.0, 2.0);
  c.random(rng, -2.0, 2.0);
  dh.random(rng);
  BlockRun<S, Cpu> rc(bc, B, L);
  BlockRun<S, K> rk(bk, B, L);
  Host<S> hc = x, hk = x;
  bc.forward(rc.ctx, p.data(), c.cview(), hc.view(), rc.c);
  bk.forward(rk.ctx, p.data(), c.cview(), hk.view(), rk.c);
  require_near(hc.v, hk.v, "adaLN block h");
  Host<S> dhc = dh, dhk = dh, dcc(cond, B), dck(cond, B), dpc(layout.total(), 1),
          dpk(layout.total(), 1);
  bc.backward(rc.ctx, p.data(), rc.c, dhc.view(), dcc.view(), dpc.v.data(), rc.s);
  bk.backward(rk.ctx, p.data(), rk.c, dhk.view(), dck.view(), dpk.v.data(), rk.s);
  require_near(dhc.v, dhk.v, "adaLN block d_h");
  require_near(dcc.v, dck.v, "adaLN block d_c");
  require_near(dpc.v, dpk.v, "adaLN block d_params");
}

}  // namespace

TEMPLATE_TEST_CASE("kernel backend stack: the classifier matches the CPU", "[kernel][stack]", float,
                   double) {
  using S = TestType;
  for (const auto act : {flowprior::Activation::GELU, flowprior::Activation::SiLU}) {
    CAPTURE(int(act));
    classifier_parity<S, Ker>(act);
  }
}

TEMPLATE_TEST_CASE("kernel backend stack: the tokenizer matches the CPU", "[kernel][stack]", float,
                   double) {
  using S = TestType;
  for (const bool gaussian : {false, true})
    for (const bool qk : {false, true}) {
      CAPTURE(gaussian, qk);
      tokenizer_parity<S, Ker>(gaussian, qk);
    }
}

TEMPLATE_TEST_CASE("kernel backend stack: the MAR backbone and the adaLN block match the CPU",
                   "[kernel][stack]", float, double) {
  using S = TestType;
  for (const bool qk : {false, true}) {
    CAPTURE(qk);
    mar_parity<S, Ker>(qk);
    adaln_block_parity<S, Ker>(qk);
  }
}
