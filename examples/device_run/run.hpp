// The stack of examples/05_device, written once for any backend: train an AdaLN flow prior on
// 2-D target samples by flow matching, score target samples by the ODE likelihood under it, and
// align free latents to it with the ODE-free loss. Eigen-free, so that the same template is
// instantiated by the host compiler (CpuBackend, HostKernelBackend: 05_device.cpp) and by nvcc
// (CudaBackend: device_run/cuda.cu). Data enter and leave the backend only through
// Backend::copy_from_host / copy_to_host; everything between runs on the backend.
#pragma once

#include <chrono>
#include <cstdint>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <functional>
#include <string>
#include <vector>

namespace example {

using flowprior::Index;

struct DeviceRunConfig {
  Index width = 256;         ///< the prior's width (AdaLN MLP)
  Index depth = 3;           ///< its residual blocks
  Index prior_steps = 3000;  ///< flow-matching steps
  Index batch = 256;         ///< target rows per step (all ranks together)
  double prior_lr = 1e-3;    ///< AdamW learning rate of the prior
  Index nll_points = 200;    ///< target samples scored by the ODE likelihood
  Index latents = 1000;      ///< free latents aligned to the prior (all ranks together)
  Index align_steps = 300;   ///< alignment steps (Adam, lr align_lr)
  Index align_draws = 4;     ///< (t, eps) draws per latent and step
  double align_lr = 1e-2;
  std::uint64_t seed = 0;
  flowprior::Convention convention = flowprior::Convention::Code;
  /// The ranks of a data-parallel run (docs/distributed.md; not owned), or null: one process.
  /// Each rank trains on batch / P rows per step and aligns latents / P latents; the results
  /// are those of one process within the tolerance of docs/math/data_parallel.md.
  flowprior::train::Communicator* comm = nullptr;
};

struct DeviceRunResult {
  std::string backend;               ///< Backend::name()
  std::vector<double> prior_loss;    ///< flow-matching loss per step
  std::vector<double> align_loss;    ///< alignment loss per step
  std::vector<double> prior_logp;    ///< log p of the first nll_points targets (nats)
  std::vector<float> latents_start;  ///< (2, latents), column-major
  std::vector<float> latents_end;    ///< the same after alignment
  double train_seconds = 0, nll_seconds = 0, align_seconds = 0;
};

/// Called after every step: the stage ("prior", "align"), the step (from 1), the steps of the
/// stage and the step's loss.
using DeviceProgress = std::function<void(const char*, Index, Index, double)>;

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// The whole run on `Backend`, in float. `targets` holds (2, n) target samples, column-major;
/// every draw comes from a generator seeded with cfg.seed, so the same seed gives the same run
/// (up to the backends' rounding) on every backend. With cfg.comm, every rank calls this with
/// the same arguments; each returns the whole result (the latents gathered from every rank).
template <class Backend>
DeviceRunResult run_on(const DeviceRunConfig& cfg, const std::vector<float>& targets,
                       const DeviceProgress& progress) {
  using namespace flowprior;
  using Net = nn::AdaLNMlp<float, Backend>;
  using Buf = typename Backend::template Buffer<float>;
  const Index d = 2, n = Index(targets.size()) / d;
  const int P = cfg.comm != nullptr ? cfg.comm->size() : 1;
  const int rank = cfg.comm != nullptr ? cfg.comm->rank() : 0;
  if (cfg.batch % P != 0 || cfg.latents % P != 0)
    raise_config("05_device", "--batch (" + std::to_string(cfg.batch) + ") and --latents (" +
                                  std::to_string(cfg.latents) + ") must be multiples of the " +
                                  std::to_string(P) + " ranks");
  const Index local_latents = cfg.latents / P;
  DeviceRunResult r;
  r.backend = Backend::name();

  nn::AdaLNMlpConfig nc;
  nc.dim = d;
  nc.width = cfg.width;
  nc.depth = cfg.depth;
  Net net(nc);
  Rng rng(cfg.seed);
  net.init(rng);
  Buf target_buf;
  Backend::copy_from_host(targets.data(), d * n, target_buf);
  const ConstMatrixView<float> target_view(target_buf.data(), d, n);

  // (a) the prior, by flow matching (AdamW, clipping, EMA): the trainer of every example.
  train::TrainerConfig tc;
  tc.batch = cfg.batch / P;  // per rank
  tc.adam.lr = cfg.prior_lr;
  tc.schedule = optim::LrSchedule::constant(cfg.prior_lr);
  tc.ema_decay = 0.999;
  train::FlowMatchingTrainer<Net> trainer(net, cfg.convention, tc);
  if (cfg.comm != nullptr) trainer.set_communicator(cfg.comm);  // broadcasts rank 0's state
  auto t0 = std::chrono::steady_clock::now();
  for (Index s = 0; s < cfg.prior_steps; ++s) {
    const double l = trainer.step(target_view, rng).loss;
    r.prior_loss.push_back(l);
    if (progress) progress("prior", s + 1, cfg.prior_steps, l);
  }
  Net prior_net(nc);
  trainer.copy_ema_to(prior_net);
  const Prior<Net> prior(prior_net, cfg.convention);
  r.train_seconds = seconds_since(t0);

  // (b) the exact ODE likelihood of target samples under the prior (Dopri5, exact divergence).
  t0 = std::chrono::steady_clock::now();
  const Index m = cfg.nll_points < n ? cfg.nll_points : n;
  if (m > 0) {
    ode::OdeWorkspace<Net> ows;
    Buf logp;
    Backend::resize(logp, m);
    ode::LikelihoodOptions lo;
    ode::log_likelihood(prior, cfg.convention, ConstMatrixView<float>(target_buf.data(), d, m),
                        VectorView<float>(logp.data(), m), lo, ows);
    std::vector<float> host(static_cast<std::size_t>(m));
    Backend::copy_to_host(logp.data(), m, host.data());
    r.prior_logp.assign(host.begin(), host.end());
  }
  r.nll_seconds = seconds_since(t0);

  // (c) free latents from N(0, I), aligned to the prior by the ODE-free loss. Every rank draws
  // all of them (the same generator) and moves its own slice.
  t0 = std::chrono::steady_clock::now();
  r.latents_start.resize(static_cast<std::size_t>(d * cfg.latents));
  for (auto& v : r.latents_start) v = static_cast<float>(normal01(rng));
  const std::size_t first = static_cast<std::size_t>(d * local_latents * rank);
  Buf y;
  Backend::copy_from_host(r.latents_start.data() + first, d * local_latents, y);
  train::AlignConfig ac;
  ac.K = cfg.align_draws;
  ac.adam.lr = cfg.align_lr;
  train::LatentAligner<Net> aligner(prior, cfg.convention, local_latents, ac);
  if (cfg.comm != nullptr) aligner.set_communicator(cfg.comm);
  for (Index s = 0; s < cfg.align_steps; ++s) {
    const double l = aligner.step(MatrixView<float>(y.data(), d, local_latents), rng);
    r.align_loss.push_back(l);
    if (progress) progress("align", s + 1, cfg.align_steps, l);
  }
  r.latents_end.assign(r.latents_start.size(), 0.0f);  // this rank's slice, zeros elsewhere
  Backend::copy_to_host(y.data(), d * local_latents, r.latents_end.data() + first);
  if (cfg.comm != nullptr)  // gathered: each element is nonzero on one rank only
    cfg.comm->allreduce_sum(r.latents_end.data(), d * cfg.latents, "05_device: the latents");
  r.align_seconds = seconds_since(t0);
  return r;
}

/// run_on<CudaBackend>, compiled by nvcc in device_run/cuda.cu (only in builds with
/// flowprior::cuda: FLOWPRIOR_EXAMPLE_CUDA is then defined).
DeviceRunResult run_on_cuda(const DeviceRunConfig& cfg, const std::vector<float>& targets,
                            const DeviceProgress& progress);

}  // namespace example
