/// @file
/// Benchmarks of the CUDA backend (docs/cuda.md "Speed"): cuBLAS products in FP32, TF32 and BF16
/// (the GEMM rate every model figure is read against, measured in the same run), the alignment
/// loss with dL/dy under a frozen prior at the paper's size (dim 32, width 1024, depth 6) for
/// 65,536 scored draws, and one flow-matching training step at batch 4096, in float, each with
/// the products of the context in FP32 (the default), TF32 or BF16.
///
/// Counters: items_per_second = rows per second; FLOP = matrix-product FLOPs per second (the
/// products actually performed: the time path of the AdaLN head once per time group, as in
/// bench_model.cpp). Every iteration ends with a device synchronisation; times are wall times.
/// Listing the benchmarks (--benchmark_list_tests) needs no GPU; running one without a device
/// reports a SkipWithError.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <flowprior/backend/cuda.cuh>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/trainer.hpp>
#include <vector>

#include "bench_flops.hpp"

namespace {

using flowprior::CudaBackend;
using flowprior::GemmPrecision;
using flowprior::Index;
using flowprior::Rng;
using Net = flowprior::nn::AdaLNMlp<float, CudaBackend>;

constexpr GemmPrecision kPrecisions[] = {GemmPrecision::fp32, GemmPrecision::tf32,
                                         GemmPrecision::bf16};
const char* precision_name(GemmPrecision p) {
  return p == GemmPrecision::fp32 ? "fp32" : (p == GemmPrecision::tf32 ? "tf32" : "bf16");
}

bool need_device(benchmark::State& state) {
  if (flowprior::cuda_device_count() > 0) return true;
  state.SkipWithError("no CUDA device");
  return false;
}

void sync() { flowprior::cuda_detail::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

/// A device buffer of n values uniform in [lo, hi].
flowprior::DeviceBuffer<float> uniform_buffer(Index n, Rng& rng, double lo, double hi) {
  std::vector<float> h(static_cast<std::size_t>(n));
  for (auto& x : h) x = static_cast<float>(flowprior::uniform(rng, lo, hi));
  flowprior::DeviceBuffer<float> d;
  CudaBackend::copy_from_host(h.data(), n, d);
  return d;
}

/// The paper's head with small random parameters (the released zero-init would leave the last
/// layers' products trivially cheap to check, not to run: the cost is the same either way).
Net paper_net(Index dim, Index width, Index depth) {
  flowprior::nn::AdaLNMlpConfig c;
  c.dim = dim;
  c.width = width;
  c.depth = depth;
  Net net(c);
  Rng rng(0x5eed);
  std::vector<float> h(static_cast<std::size_t>(net.num_params()));
  for (auto& x : h) x = static_cast<float>(flowprior::uniform(rng, -0.05, 0.05));
  CudaBackend::copy_from_host(h.data(), net.num_params(), net.parameters().data);
  return net;
}

/// C (m x n) = A (m x k) B (k x n) through CudaBackend::gemm. Args {m, n, k, precision}.
void BM_CudaGemm(benchmark::State& state) {
  if (!need_device(state)) return;
  const Index m = state.range(0), n = state.range(1), k = state.range(2);
  const GemmPrecision p = kPrecisions[state.range(3)];
  Rng rng(1);
  const auto A = uniform_buffer(m * k, rng, -1, 1), B = uniform_buffer(k * n, rng, -1, 1);
  flowprior::DeviceBuffer<float> C;
  CudaBackend::resize(C, m * n);
  CudaBackend::Context ctx(p);
  auto run = [&] {
    CudaBackend::gemm(ctx, false, false, 1.0f, flowprior::ConstMatrixView<float>(A.data(), m, k),
                      flowprior::ConstMatrixView<float>(B.data(), k, n), 0.0f,
                      flowprior::MatrixView<float>(C.data(), m, n));
  };
  run();
  sync();
  for (auto _ : state) {
    run();
    sync();
  }
  bench::set_flops(state, 2.0 * double(m) * double(n) * double(k));
  state.SetLabel(precision_name(p));
}

/// Alignment loss + dL/dy under a frozen prior, N latents x K = 4 draws = `rows` scored draws,
/// stratified t, one t per draw (group 1) or per run of `group` draws. Args {dim, width, depth,
/// rows, group, precision}.
void BM_CudaAlignmentLoss(benchmark::State& state) {
  if (!need_device(state)) return;
  const Index dim = state.range(0), width = state.range(1), depth = state.range(2);
  const Index rows = state.range(3), group = state.range(4);
  const GemmPrecision p = kPrecisions[state.range(5)];
  const Index K = 4, N = rows / K;
  const Net net = paper_net(dim, width, depth);
  const flowprior::Prior<Net> prior(net, flowprior::Convention::Code);
  Rng rng(7);
  const auto y = uniform_buffer(dim * N, rng, -1, 1);
  flowprior::DeviceBuffer<float> d_y;
  CudaBackend::resize(d_y, dim * N);
  flowprior::loss::FlowDraws<float, CudaBackend> draws;
  flowprior::loss::draw(draws, flowprior::Convention::Code, N, dim, K,
                        flowprior::loss::TimeSampler::stratified(), rng, false, group);
  flowprior::loss::LossWorkspace<Net> ws;
  ws.context().set_gemm_precision(p);
  const flowprior::loss::AlignmentOptions opt{flowprior::loss::Reduction::Mean, 0.01, false};
  const flowprior::ConstMatrixView<float> yv(y.data(), dim, N);
  const flowprior::MatrixView<float> dy(d_y.data(), dim, N);
  auto run = [&] {
    CudaBackend::fill(ws.context(), dy, 0.0f);
    return flowprior::loss::alignment_loss(prior, flowprior::Convention::Code, yv, draws, opt, ws,
                                           {}, dy);
  };
  run();
  sync();
  const long allocations = flowprior::device_allocations().load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(run());
    sync();
  }
  if (flowprior::device_allocations().load() != allocations)
    state.SkipWithError("the warmed-up loss allocated device memory");
  const double t_path = bench::time_path_flops(net.config()).forward;
  const double x_path =
      net.matmul_flops_per_row().forward - t_path + net.matmul_flops_per_row().vjp_x;
  const double groups = double(net.time_groups(ws.prior.field));
  state.SetItemsProcessed(state.iterations() * rows);
  bench::set_flops(state, x_path * double(rows) + t_path * groups);
  state.SetLabel(precision_name(p));
}

/// One FlowMatchingTrainer step (batch gathered on the device from 8192 targets, stratified t,
/// K = 1, every parameter gradient, clipping, AdamW, EMA). Args {dim, width, depth, batch,
/// group, precision}.
void BM_CudaTrainStep(benchmark::State& state) {
  if (!need_device(state)) return;
  const Index dim = state.range(0), width = state.range(1), depth = state.range(2);
  const Index batch = state.range(3), group = state.range(4);
  const GemmPrecision p = kPrecisions[state.range(5)];
  Net net = paper_net(dim, width, depth);
  Rng rng(9);
  const Index n_targets = 8192;
  const auto targets = uniform_buffer(dim * n_targets, rng, -2, 2);
  flowprior::train::TrainerConfig cfg;
  cfg.batch = batch;
  cfg.K = 1;
  cfg.time_group = group;
  cfg.sampler = flowprior::loss::TimeSampler::stratified();
  cfg.adam.weight_decay = 0.01;
  cfg.schedule = flowprior::optim::LrSchedule::constant(1e-5);
  flowprior::train::FlowMatchingTrainer<Net> trainer(net, flowprior::Convention::Code, cfg);
  trainer.context().set_gemm_precision(p);
  const flowprior::ConstMatrixView<float> tv(targets.data(), dim, n_targets);
  trainer.step(tv, rng);  // warm-up: sizes every buffer
  sync();
  const long allocations = flowprior::device_allocations().load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.step(tv, rng).loss);
    sync();
  }
  if (flowprior::device_allocations().load() != allocations)
    state.SkipWithError("the warmed-up step allocated device memory");
  const auto f = net.matmul_flops_per_row();
  const bench::TimePathFlops tp = bench::time_path_flops(net.config());
  const double groups = double((batch + group - 1) / group);
  state.SetItemsProcessed(state.iterations() * batch);
  bench::set_flops(state, (f.forward + f.backward - tp.forward - tp.backward) * double(batch) +
                              (tp.forward + tp.backward) * groups);
  state.SetLabel(precision_name(p));
}

void gemm_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "prec"});
  for (int p = 0; p < 3; ++p) {
    b->Args({1024, 65536, 1024, p});  // a hidden layer over 65,536 rows
    b->Args({3072, 4096, 1024, p});   // the adaLN modulation of a batch of 4096
    b->Args({8192, 8192, 8192, p});   // the peak
  }
}
void model_args(benchmark::internal::Benchmark* b, Index rows) {
  b->ArgNames({"dim", "width", "depth", "rows", "group", "prec"});
  for (int p = 0; p < 3; ++p) {
    b->Args({32, 1024, 6, rows, 1, p});
    b->Args({32, 1024, 6, rows, 64, p});
  }
  b->Args({2, 64, 2, 64, 1, 0});  // small: the smoke size
}

}  // namespace

BENCHMARK(BM_CudaGemm)->Apply(gemm_args)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaAlignmentLoss)
    ->Apply([](benchmark::internal::Benchmark* b) { model_args(b, 65536); })
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaTrainStep)
    ->Apply([](benchmark::internal::Benchmark* b) { model_args(b, 4096); })
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
