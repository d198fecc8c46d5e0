/// @file
/// Part of bench_model (benchmarks/CMakeLists.txt adds benchmarks/bench_model/*.cpp to it), so
/// that one run reports these cases beside BM_Sgemm:
///
///   BM_TransformerBlock       one TransformerBlock<float> forward + backward (every parameter
///                             gradient and the input gradient), Args {width, heads, tokens, batch}
///   BM_TokenizerStep          one autoencoder training step of TokenizerAE<float>: forward, MSE
///                             loss gradient 2 (recon - x) / numel, backward, global grad-norm
///                             clip 1.0, AdamW (betas 0.9 / 0.95, weight decay 1e-4), EMA 0.999
///   BM_TokenizerForward       TokenizerAE<float>::forward alone (y and recon)
///   BM_TokenizerSmoke         one tiny iteration of the above (what CTest runs)
///
/// Tokenizer Args {image, channels, patch, width, depth, dec_depth, heads, latent_tokens,
/// latent_dim, batch}, mlp_ratio 4. Counters: items_per_second = sequences (block) or images
/// (tokenizer) per second; FLOP = matrix-product FLOPs per second, 2 m n k for every product
/// actually computed, attention's k^T q and v P included, forward and backward (docs/benchmarks.md
/// "Transformer and tokenizer"). Everything is allocated and warmed up before the timed loop.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/nn/transformer.hpp>
#include <string>

namespace {

using flowprior::ConstMatrixView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
namespace nn = flowprior::nn;
namespace optim = flowprior::optim;

void fill_uniform(float* p, Index n, Rng& rng, double lo, double hi) {
  for (Index i = 0; i < n; ++i) p[i] = static_cast<float>(flowprior::uniform(rng, lo, hi));
}

void set_flop_rate(benchmark::State& state, double flops_per_iter) {
  state.counters["FLOP"] =
      benchmark::Counter(flops_per_iter * double(state.iterations()), benchmark::Counter::kIsRate,
                         benchmark::Counter::kIs1000);
}

/// Matrix-product FLOPs of one pre-norm block on n = B T tokens of width C (hidden MLP width F,
/// T tokens per sequence): forward qkv 6 n C^2, scores and v P 2 n T C each, proj 2 n C^2,
/// fc1 + fc2 4 n C F; the backward computes every Linear's input and weight gradient (twice the
/// forward's products) and d_v, dP, d_q, d_k (2 n T C each).
nn::MatmulFlops block_flops(double C, double F, double T, double n) {
  const double linear = 8 * n * C * C + 4 * n * C * F;
  const double attention = 4 * n * T * C;
  nn::MatmulFlops f;
  f.forward = linear + attention;
  f.backward = 2 * linear + 2 * attention;
  return f;
}

/// Args {width, heads, tokens, batch}; MLP hidden 4 width, no qk-norm, GELU. Parameters
/// U(-0.05, 0.05) with LayerNorm gains 1 + U(-0.05, 0.05). One iteration: copy the input into
/// the residual stream, forward in place, copy d_out into d_h, zero the parameter gradients,
/// backward (d_h becomes dL/dh_in).
void BM_TransformerBlock(benchmark::State& state) {
  using Block = nn::TransformerBlock<float, CpuBackend>;
  const Index C = state.range(0), heads = state.range(1), T = state.range(2);
  const Index B = state.range(3), n = B * T, F = 4 * C;
  nn::ParamLayout layout;
  const Block blk = Block::make(layout, "blocks.0", C, heads, F, false);
  Rng rng(11);
  Eigen::VectorXf p(layout.total()), d_p(layout.total());
  fill_uniform(p.data(), p.size(), rng, -0.05, 0.05);
  for (Index i = 0; i < C; ++i) {
    p[blk.n1_w + i] += 1.0f;
    p[blk.n2_w + i] += 1.0f;
  }
  Eigen::MatrixXf x(C, n), d_out(C, n), h(C, n), d_h(C, n);
  fill_uniform(x.data(), x.size(), rng, -1.0, 1.0);
  fill_uniform(d_out.data(), d_out.size(), rng, -1.0, 1.0);
  nn::Arena<float, CpuBackend> fwd, bwd;
  Block::Cache cache;
  Block::Scratch scratch;
  for (int pass = 0; pass < 2; ++pass) {
    fwd.begin(pass == 0);
    cache = blk.carve(fwd, B, T);
    if (pass == 0) fwd.reserve_counted();
    bwd.begin(pass == 0);
    scratch = blk.carve_scratch(bwd, B, T);
    if (pass == 0) bwd.reserve_counted();
  }
  CpuBackend::Context ctx;
  auto step = [&] {
    h = x;
    blk.forward(ctx, p.data(), MatrixView<float>(h), cache);
    d_h = d_out;
    d_p.setZero();
    blk.backward(ctx, p.data(), cache, MatrixView<float>(d_h), d_p.data(), scratch);
  };
  step();  // warm-up: touches every buffer
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(d_h.data());
    benchmark::DoNotOptimize(d_p.data());
    benchmark::ClobberMemory();
  }
  if (!d_h.allFinite() || !d_p.allFinite()) state.SkipWithError("non-finite gradients");
  const nn::MatmulFlops f = block_flops(double(C), double(F), double(T), double(n));
  state.SetItemsProcessed(state.iterations() * B);  // sequences per second
  set_flop_rate(state, f.forward + f.backward);
  state.counters["GFLOP/iter"] = (f.forward + f.backward) / 1e9;
}
BENCHMARK(BM_TransformerBlock)
    ->ArgNames({"width", "heads", "tokens", "batch"})
    ->Args({256, 4, 80, 64})
    ->Args({128, 4, 65, 64})
    ->Args({384, 6, 197, 16})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

nn::TokenizerConfig tokenizer_config(const benchmark::State& state) {
  nn::TokenizerConfig c;
  c.image_size = state.range(0);
  c.channels = state.range(1);
  c.patch = state.range(2);
  c.width = state.range(3);
  c.depth = state.range(4);
  c.dec_depth = state.range(5);
  c.heads = state.range(6);
  c.mlp_ratio = 4.0;
  c.latent_tokens = state.range(7);
  c.latent_dim = state.range(8);
  return c;
}

/// Matrix-product FLOPs of TokenizerAE per image (what forward and the training step's backward
/// compute; the backward of the training step skips only d_x = W_pe^T d_s, which it does not
/// ask for): the patch embedding and pixel head on Np tokens, to_latent and from_latent on T,
/// every block on L = Np + T.
nn::MatmulFlops tokenizer_flops(const nn::TokenizerConfig& c) {
  const double D = double(c.width), F = double(c.mlp_hidden()), Np = double(c.num_patches());
  const double T = double(c.latent_tokens), d = double(c.latent_dim), L = Np + T;
  const double cpp = double(c.channels * c.patch * c.patch);
  const nn::MatmulFlops blk = block_flops(D, F, L, L);
  const double blocks = double(c.depth + c.decoder_depth());
  nn::MatmulFlops f;
  const double patch_embed = 2 * Np * cpp * D, pixel_head = 2 * Np * D * cpp;
  const double latent = 2 * T * D * d * 2;  // to_latent and from_latent
  f.forward = patch_embed + latent + pixel_head + blocks * blk.forward;
  f.backward = patch_embed + 2 * latent + 2 * pixel_head + blocks * blk.backward;
  return f;
}

/// A TokenizerAE<float> at init(), its images and buffers. Pixels U(0, 1) (Fashion-MNIST's range).
struct TokenizerSetup {
  using Model = nn::TokenizerAE<float>;
  Model model;
  Index B;
  Eigen::MatrixXf x, y, recon, d_recon;
  Eigen::VectorXf grads;
  Model::Workspace ws;
  TokenizerSetup(const nn::TokenizerConfig& cfg, Index batch) : model(cfg), B(batch) {
    Rng rng(5);
    model.init(rng);
    x.resize(model.image_dim(), B);
    fill_uniform(x.data(), x.size(), rng, 0.0, 1.0);
    y.resize(cfg.latent_dim, B * cfg.latent_tokens);
    recon.resize(model.image_dim(), B);
    d_recon.resize(model.image_dim(), B);
    grads.setZero(model.num_params());
  }
};

/// One autoencoder training step, as tools/bench_tokenizer_torch.py's PyTorch step: forward,
/// loss = mean (recon - x)^2 and its gradient 2 (recon - x) / numel, zeroed gradients, backward
/// (parameters only: no d_x, no extra gradient on y), clip_grad_norm 1.0, AdamW at lr 1e-4,
/// EMA 0.999.
void BM_TokenizerStep(benchmark::State& state) {
  TokenizerSetup s(tokenizer_config(state), state.range(9));
  auto& m = s.model;
  optim::AdamConfig acfg;
  acfg.lr = 1e-4;
  acfg.beta1 = 0.9;
  acfg.beta2 = 0.95;
  acfg.weight_decay = 1e-4;
  acfg.decoupled = true;
  optim::Adam<float> adam(m.num_params(), acfg);
  optim::Ema<float> ema(m.parameters(), 0.999);
  CpuBackend::Context ctx;
  const float scale = 2.0f / float(s.x.size());
  double loss = 0;
  auto step = [&] {
    m.forward(s.x, s.y, s.recon, s.ws);
    loss = double((s.recon - s.x).squaredNorm()) / double(s.x.size());
    s.d_recon = (s.recon - s.x) * scale;
    s.grads.setZero();
    m.backward(s.ws, s.d_recon, ConstMatrixView<float>(), VectorView<float>(s.grads),
               MatrixView<float>());
    optim::clip_grad_norm<float>(ctx, VectorView<float>(s.grads), 1.0);
    adam.step(m.parameters(), s.grads);
    ema.update(m.parameters());
  };
  step();  // warm-up: lays out both workspace arenas for this batch
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(loss);
    benchmark::ClobberMemory();
  }
  if (!std::isfinite(loss)) state.SkipWithError("non-finite loss");
  const nn::MatmulFlops f = tokenizer_flops(m.config());
  state.SetItemsProcessed(state.iterations() * s.B);  // images per second
  set_flop_rate(state, (f.forward + f.backward) * double(s.B));
  state.counters["loss"] = loss;
}

/// TokenizerAE::forward alone (it also saves what backward needs, as every forward does).
void BM_TokenizerForward(benchmark::State& state) {
  TokenizerSetup s(tokenizer_config(state), state.range(9));
  auto step = [&] { s.model.forward(s.x, s.y, s.recon, s.ws); };
  step();
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(s.recon.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * s.B);
  set_flop_rate(state, tokenizer_flops(s.model.config()).forward * double(s.B));
}

// Fashion-MNIST size (the default of the tokenizer experiments): 28 x 28 x 1, patch 4 (49
// patches), width 128, depth 2 + 2, 4 heads, 16 latent tokens of 8, batch 64; and the 80-token
// size of the block case (32 x 32 x 3, patch 4, width 256, T 16).
void tokenizer_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"img", "ch", "patch", "width", "depth", "dec", "heads", "T", "d", "batch"});
  b->Args({28, 1, 4, 128, 2, 2, 4, 16, 8, 64});
  b->Args({32, 3, 4, 256, 2, 2, 4, 16, 16, 64});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_TokenizerStep)->Apply(tokenizer_args);
BENCHMARK(BM_TokenizerForward)->Apply(tokenizer_args);

/// One iteration of a tiny training step (without the EMA): CTest's `--benchmark_filter=Smoke`.
void BM_TokenizerSmoke(benchmark::State& state) {
  nn::TokenizerConfig c;
  c.image_size = 8;
  c.channels = 1;
  c.patch = 4;
  c.width = 16;
  c.depth = 1;
  c.dec_depth = 1;
  c.heads = 2;
  c.latent_tokens = 2;
  c.latent_dim = 4;
  TokenizerSetup s(c, 3);
  optim::Adam<float> adam(s.model.num_params(), optim::AdamConfig{});
  for (auto _ : state) {
    s.model.forward(s.x, s.y, s.recon, s.ws);
    s.d_recon = (s.recon - s.x) * (2.0f / float(s.x.size()));
    s.grads.setZero();
    s.model.backward(s.ws, s.d_recon, ConstMatrixView<float>(), VectorView<float>(s.grads),
                     MatrixView<float>());
    optim::clip_grad_norm<float>(VectorView<float>(s.grads), 1.0);
    adam.step(s.model.parameters(), s.grads);
    benchmark::ClobberMemory();
  }
  if (!s.grads.allFinite() || !s.recon.allFinite()) state.SkipWithError("non-finite values");
}
BENCHMARK(BM_TokenizerSmoke)->Iterations(1);

}  // namespace
