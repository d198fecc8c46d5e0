/// @file
/// FLOP counting shared by the benchmarks (bench_model.cpp on the CPU, bench_cuda.cu on the GPU):
/// the FLOP rate counter and the matrix-product FLOPs of the AdaLN head's time path, which the
/// time-grouped benchmarks count once per time group (docs/benchmarks.md "FLOPs"). Eigen-free,
/// so that nvcc compiles it too.
#pragma once

#include <benchmark/benchmark.h>

#include <flowprior/nn/adaln_mlp.hpp>

namespace bench {

/// "FLOP" is a rate printed with an SI prefix, e.g. FLOP=134.2G/s (JSON: FLOP/s as a number).
inline void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["FLOP"] =
      benchmark::Counter(flops_per_iter * double(state.iterations()), benchmark::Counter::kIsRate,
                         benchmark::Counter::kIs1000);
}

/// Matrix-product FLOPs of the t-dependent part of the AdaLN head per time value: the time MLP
/// and every adaLN modulation (forward), and their weight and input gradients (backward).
struct TimePathFlops {
  double forward = 0, backward = 0;
};
inline TimePathFlops time_path_flops(const flowprior::nn::AdaLNMlpConfig& c) {
  const double W = double(c.width), F = double(c.time_freq_dim), L = double(c.depth);
  TimePathFlops f;
  f.forward = 2 * (F * W + W * W + L * 3 * W * W + 2 * W * W);
  f.backward = f.forward + 2 * (L * 3 * W * W + 2 * W * W + W * W);
  return f;
}

}  // namespace bench
