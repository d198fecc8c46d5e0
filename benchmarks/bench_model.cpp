/// @file
/// Throughput of the flow fields on the CPU backend, and the machine's GEMM rate to read them by.
///
///   BM_AdaLN_{Forward,ForwardVjp,ForwardBackward}  AdaLNMlp<float>, Args {dim,width,depth,batch}
///   BM_MlpField_{Forward,ForwardBackward}          MlpField<float>, Args {dim,width,depth,batch}
///   BM_Sgemm / BM_Dgemm                            Eigen C.noalias() = A * B, Args {m, n, k}
///   BM_Smoke                                       one tiny iteration of every pass (CTest runs)
///   BM_TransformerBlock, BM_Tokenizer{Step,Forward,Smoke}   benchmarks/bench_model/tokenizer.cpp
///
/// Counters: items_per_second = rows (samples) per second; FLOP = matrix-product FLOPs
/// (matmul_flops_per_row(), 2 m n k per product) per second, so a model figure divided by the
/// BM_Sgemm figure is the fraction of the machine's matrix rate it reaches. Element-wise work
/// (LayerNorm, SiLU, modulation) is not counted. Times are wall-clock (UseRealTime) because
/// Eigen's GEMM runs on OpenMP threads.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <array>
#include <flowprior/flowprior.hpp>
#include <map>
#include <memory>
#include <string>

#include "bench_flops.hpp"

namespace {

using flowprior::Index;
using flowprior::Rng;

// Eigen's thread count and SIMD sets, printed in the context block at startup.
[[maybe_unused]] const bool kContextAdded = [] {
  benchmark::AddCustomContext("eigen", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                           std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                           std::to_string(EIGEN_MINOR_VERSION) + ", nbThreads " +
                                           std::to_string(Eigen::nbThreads()) + ", SIMD " +
                                           Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("gemm_engine", flowprior::CpuBackend::gemm_engine());
#if defined(FLOWPRIOR_CBLAS_OPENBLAS)
  // OpenBLAS picks its kernel at load time; an unrecognised CPU gets a generic one ("Prescott").
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
#endif
  return true;
}();

enum class Pass { Forward, ForwardVjp, ForwardBackward };

template <class Net>
typename Net::Config make_config(Index dim, Index width, Index depth) {
  typename Net::Config cfg;
  cfg.dim = dim;
  cfg.width = width;
  cfg.depth = depth;
  return cfg;
}

/// One network per configuration, built once: init(), then every parameter overwritten with
/// U(-0.05, 0.05) so that no product is skipped or trivial (the released AdaLN init zeroes the
/// modulation and the final layer).
template <class Net>
const Net& cached_net(Index dim, Index width, Index depth) {
  static std::map<std::array<Index, 3>, std::unique_ptr<Net>> nets;
  auto& slot = nets[{dim, width, depth}];
  if (!slot) {
    slot = std::make_unique<Net>(make_config<Net>(dim, width, depth));
    Rng rng(0x5eed);
    slot->init(rng);
    auto p = slot->parameters();
    for (Index i = 0; i < p.size; ++i)
      p[i] = static_cast<float>(flowprior::uniform(rng, -0.05, 0.05));
  }
  return *slot;
}

Eigen::MatrixXf random_matrix(Index rows, Index cols, Rng& rng, double lo, double hi) {
  Eigen::MatrixXf m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<float>(flowprior::uniform(rng, lo, hi));
  return m;
}

double flops_per_row(const flowprior::nn::MatmulFlops& f, Pass pass) {
  switch (pass) {
    case Pass::Forward:
      return f.forward;
    case Pass::ForwardVjp:
      return f.forward + f.vjp_x;
    case Pass::ForwardBackward:
      return f.forward + f.backward;
  }
  return 0;
}

/// Args {dim, width, depth, batch}. Inputs, outputs, gradient buffers and the workspace are
/// allocated and warmed up (one untimed pass) before the loop; nothing allocates inside it.
template <class Net, Pass kPass>
void BM_Field(benchmark::State& state) {
  const Index dim = state.range(0), width = state.range(1), depth = state.range(2);
  const Index batch = state.range(3);
  const Net& net = cached_net<Net>(dim, width, depth);

  Rng rng(42);
  const Eigen::MatrixXf x = random_matrix(dim, batch, rng, -1.0, 1.0);
  const Eigen::VectorXf t = random_matrix(batch, 1, rng, 0.0, 1.0);
  const Eigen::MatrixXf d_v = random_matrix(dim, batch, rng, -1.0, 1.0);
  Eigen::MatrixXf v(dim, batch), d_x = Eigen::MatrixXf::Zero(dim, batch);
  Eigen::VectorXf d_params = Eigen::VectorXf::Zero(net.num_params());
  typename Net::Workspace ws;

  auto step = [&] {
    net.forward(x, t, v, ws);
    if constexpr (kPass == Pass::ForwardVjp) net.vjp_x(ws, d_v, d_x);
    if constexpr (kPass == Pass::ForwardBackward) net.backward(ws, d_v, d_x, d_params);
  };
  step();  // warm-up: lays out the workspace for this batch, touches every buffer

  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(v.data());
    benchmark::DoNotOptimize(d_x.data());
    benchmark::DoNotOptimize(d_params.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(batch * state.iterations());  // rows (samples) per second
  bench::set_flops(state, flops_per_row(net.matmul_flops_per_row(), kPass) * double(batch));
}

using AdaLN = flowprior::nn::AdaLNMlp<float>;
using Mlp = flowprior::nn::MlpField<float>;

void adaln_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"dim", "width", "depth", "batch"});
  for (const auto& c : {std::array<int64_t, 3>{32, 1024, 6}, std::array<int64_t, 3>{2, 512, 4}})
    for (int64_t batch : {256, 1024, 4096}) b->Args({c[0], c[1], c[2], batch});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void mlp_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"dim", "width", "depth", "batch"})->Args({2, 256, 3, 1000});
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

void BM_AdaLN_Forward(benchmark::State& s) { BM_Field<AdaLN, Pass::Forward>(s); }
void BM_AdaLN_ForwardVjp(benchmark::State& s) { BM_Field<AdaLN, Pass::ForwardVjp>(s); }
void BM_AdaLN_ForwardBackward(benchmark::State& s) { BM_Field<AdaLN, Pass::ForwardBackward>(s); }
void BM_MlpField_Forward(benchmark::State& s) { BM_Field<Mlp, Pass::Forward>(s); }
void BM_MlpField_ForwardBackward(benchmark::State& s) { BM_Field<Mlp, Pass::ForwardBackward>(s); }

BENCHMARK(BM_AdaLN_Forward)->Apply(adaln_args);
BENCHMARK(BM_AdaLN_ForwardVjp)->Apply(adaln_args);
BENCHMARK(BM_AdaLN_ForwardBackward)->Apply(adaln_args);
BENCHMARK(BM_MlpField_Forward)->Apply(mlp_args);
BENCHMARK(BM_MlpField_ForwardBackward)->Apply(mlp_args);

/// Args {m, n, k}: C (m x n) = A (m x k) * B (k x n), the reference matrix rate.
template <class S>
void BM_Gemm(benchmark::State& state) {
  using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  const Index m = state.range(0), n = state.range(1), k = state.range(2);
  const M A = M::Random(m, k), B = M::Random(k, n);
  M C(m, n);
  C.noalias() = A * B;  // warm-up
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  bench::set_flops(state, 2.0 * double(m) * double(n) * double(k));
}

void BM_Sgemm(benchmark::State& s) { BM_Gemm<float>(s); }
void BM_Dgemm(benchmark::State& s) { BM_Gemm<double>(s); }

// The alignment loss and dL/dy under a frozen prior (float), N latents x K = 4 draws, with one t
// per draw (group 1) or one t per run of `group` consecutive draws (time groups: the time MLP and
// every adaLN modulation evaluated once per run). FLOPs are the products actually performed.
void BM_AlignmentLoss(benchmark::State& state) {
  using Net = flowprior::nn::AdaLNMlp<float>;
  const Index dim = state.range(0), width = state.range(1), depth = state.range(2);
  const Index rows = state.range(3), group = state.range(4);
  const Index K = 4, N = rows / K;
  const Net& net = cached_net<Net>(dim, width, depth);
  const flowprior::Prior<Net> prior(net, flowprior::Convention::Code);
  Rng rng(7);
  Eigen::MatrixXf y = random_matrix(dim, N, rng, -1, 1), d_y(dim, N);
  flowprior::loss::FlowDraws<float> draws;
  flowprior::loss::draw(draws, flowprior::Convention::Code, N, dim, K,
                        flowprior::loss::TimeSampler::stratified(), rng, false, group);
  flowprior::loss::LossWorkspace<Net> ws;
  const flowprior::loss::AlignmentOptions opt{flowprior::loss::Reduction::Mean, 0.01, false};
  d_y.setZero();
  flowprior::loss::alignment_loss(prior, flowprior::Convention::Code, y, draws, opt, ws, {}, d_y);
  for (auto _ : state) {
    d_y.setZero();
    benchmark::DoNotOptimize(flowprior::loss::alignment_loss(prior, flowprior::Convention::Code, y,
                                                             draws, opt, ws, {}, d_y));
    benchmark::ClobberMemory();
  }
  const double t_path = bench::time_path_flops(net.config()).forward;  // per time value
  const double x_path =
      net.matmul_flops_per_row().forward - t_path + net.matmul_flops_per_row().vjp_x;
  const double groups = double(net.time_groups(ws.prior.field));
  const double flops = x_path * double(rows) + t_path * groups;
  state.SetItemsProcessed(state.iterations() * rows);
  state.counters["FLOP"] = benchmark::Counter(
      flops * double(state.iterations()), benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
  state.counters["groups"] = groups;
}
BENCHMARK(BM_AlignmentLoss)
    ->ArgNames({"dim", "width", "depth", "rows", "group"})
    ->Args({32, 1024, 6, 4096, 1})
    ->Args({32, 1024, 6, 4096, 64})
    ->Args({2, 512, 4, 1000, 1})
    ->Args({2, 512, 4, 1000, 40})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// One flow-matching training step (FlowMatchingTrainer::step: batch drawn from a target set,
// stratified t, K = 1, loss, every parameter gradient, clipping, AdamW with weight decay, EMA),
// float. Args {dim, width, depth, batch, group}: group > 1 shares t within runs of `group` rows.
// FLOPs: forward + full backward per row, the t-path once per group; AdamW and the EMA are
// memory-bound passes over the parameters and add no matrix FLOPs.
void BM_TrainStep(benchmark::State& state) {
  using Net = flowprior::nn::AdaLNMlp<float>;
  const Index dim = state.range(0), width = state.range(1), depth = state.range(2);
  const Index batch = state.range(3), group = state.range(4);
  Net net = cached_net<Net>(dim, width, depth);  // a copy: the trainer updates it
  Rng rng(9);
  const Eigen::MatrixXf targets = random_matrix(dim, 8192, rng, -2.0, 2.0);
  flowprior::train::TrainerConfig cfg;
  cfg.batch = batch;
  cfg.K = 1;
  cfg.time_group = group;
  cfg.sampler = flowprior::loss::TimeSampler::stratified();
  cfg.adam.weight_decay = 0.01;
  cfg.schedule = flowprior::optim::LrSchedule::constant(1e-5);
  flowprior::train::FlowMatchingTrainer<Net> trainer(net, flowprior::Convention::Code, cfg);
  trainer.step(targets, rng);  // warm-up: sizes every buffer
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.step(targets, rng).loss);
    benchmark::ClobberMemory();
  }
  const auto f = net.matmul_flops_per_row();
  const bench::TimePathFlops tp = bench::time_path_flops(net.config());
  const double groups = double((batch + group - 1) / group);
  const double flops = (f.forward + f.backward - tp.forward - tp.backward) * double(batch) +
                       (tp.forward + tp.backward) * groups;
  state.SetItemsProcessed(state.iterations() * batch);
  bench::set_flops(state, flops);
  state.counters["groups"] = groups;
}
BENCHMARK(BM_TrainStep)
    ->ArgNames({"dim", "width", "depth", "batch", "group"})
    ->Args({32, 1024, 6, 4096, 1})
    ->Args({32, 1024, 6, 4096, 64})
    ->Args({2, 512, 4, 256, 1})
    ->Args({2, 512, 4, 256, 32})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// The same products through the backend (CpuBackend::gemm on the binary's GEMM engine, named
/// in the context block: flowprior's threading of Eigen's kernel, OpenBLAS or BLIS), to set
/// beside BM_Sgemm. Args {m, n, k, trans_a, trans_b}: C (m x n) = op(A) (m x k) op(B) (k x n).
/// The shapes are the flow head's: a hidden layer, the adaLN modulation (3 W rows), the
/// input-gradient product W^T d (trans_a), the weight gradient d x^T (trans_b, k = rows), the
/// input and output projections at the paper's size (32 / 1024 / 6, 4096 rows), and the toy's.
void BM_BackendSgemm(benchmark::State& state) {
  const Index m = state.range(0), n = state.range(1), k = state.range(2);
  const bool ta = state.range(3) != 0, tb = state.range(4) != 0;
  const Eigen::MatrixXf A = ta ? Eigen::MatrixXf::Random(k, m) : Eigen::MatrixXf::Random(m, k);
  const Eigen::MatrixXf B = tb ? Eigen::MatrixXf::Random(n, k) : Eigen::MatrixXf::Random(k, n);
  Eigen::MatrixXf C(m, n);
  flowprior::CpuBackend::Context ctx;
  auto run = [&] {
    flowprior::CpuBackend::gemm<float>(ctx, ta, tb, 1.0f, A, B, 0.0f,
                                       flowprior::MatrixView<float>(C));
  };
  run();
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  bench::set_flops(state, 2.0 * double(m) * double(n) * double(k));
}
BENCHMARK(BM_BackendSgemm)
    ->ArgNames({"m", "n", "k", "ta", "tb"})
    ->Args({1024, 4096, 1024, 0, 0})
    ->Args({3072, 4096, 1024, 0, 0})
    ->Args({1024, 4096, 1024, 1, 0})
    ->Args({1024, 1024, 4096, 0, 1})
    ->Args({32, 4096, 1024, 0, 0})
    ->Args({1024, 4096, 32, 0, 0})
    ->Args({512, 1000, 512, 0, 0})
    ->Args({512, 512, 1000, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK(BM_Sgemm)
    ->ArgNames({"m", "n", "k"})
    ->Args({1024, 4096, 1024})
    ->Args({512, 1024, 512})
    ->Args({1024, 256, 1024})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Dgemm)
    ->ArgNames({"m", "n", "k"})
    ->Args({1024, 1024, 1024})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// One iteration of every pass on tiny fields: what CTest runs (`--benchmark_filter=Smoke`), so
/// that the benchmark bodies execute in CI in well under a second.
void BM_Smoke(benchmark::State& state) {
  const AdaLN& adaln = cached_net<AdaLN>(2, 32, 2);
  const Mlp& mlp = cached_net<Mlp>(2, 32, 2);
  const Index batch = 16;
  Rng rng(7);
  const Eigen::MatrixXf x = random_matrix(2, batch, rng, -1.0, 1.0);
  const Eigen::VectorXf t = random_matrix(batch, 1, rng, 0.0, 1.0);
  const Eigen::MatrixXf d_v = random_matrix(2, batch, rng, -1.0, 1.0);
  Eigen::MatrixXf v(2, batch), d_x = Eigen::MatrixXf::Zero(2, batch);
  Eigen::VectorXf dp_adaln = Eigen::VectorXf::Zero(adaln.num_params());
  Eigen::VectorXf dp_mlp = Eigen::VectorXf::Zero(mlp.num_params());
  AdaLN::Workspace ws_adaln;
  Mlp::Workspace ws_mlp;
  for (auto _ : state) {
    adaln.forward(x, t, v, ws_adaln);
    adaln.vjp_x(ws_adaln, d_v, d_x);
    adaln.backward(ws_adaln, d_v, d_x, dp_adaln);
    mlp.forward(x, t, v, ws_mlp);
    mlp.vjp_x(ws_mlp, d_v, d_x);
    mlp.backward(ws_mlp, d_v, d_x, dp_mlp);
    benchmark::DoNotOptimize(d_x.data());
    benchmark::ClobberMemory();
  }
  if (!d_x.allFinite() || !dp_adaln.allFinite() || !dp_mlp.allFinite())
    state.SkipWithError("non-finite gradients");
}
BENCHMARK(BM_Smoke)->Iterations(1);

}  // namespace
