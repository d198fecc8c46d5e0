// The whole stack on the GPU: the parity runs of tests/support/stack_runs.hpp (the fields, both
// losses, a training run, the latent aligner, sampling and likelihoods) on CudaBackend against
// the same kernel bodies run on the host (HostKernelBackend), both Eigen-free. Inputs,
// parameters and generators are made on the host identically for both; results come back through
// copy_to_host and are compared with fpt::stack::compare.
//
// Tolerances (relative to each element, or to its entry's largest magnitude: stack_runs.hpp):
// - double passes, losses, aligner, ODE: 1e-10. The kernel bodies are the same; cuBLAS sums the
//   products in another order and blocking, the device contracts a * b + c into FMAs and its
//   libm differs by an ulp or two, so single operations differ by ~1e-16 relative, amplified
//   through a few layers, 30 Adam steps on the latents and 8-step solves (Dopri5's accepted steps
//   must be the same: its step-size control sees differences far below its tolerance 1e-4).
// - double training, 200 steps: 1e-7 (see kTrainDouble).
// - float passes, losses, aligner, ODE: 2e-4 (see kPassFloat).
// - float training: the trajectories diverge chaotically over hundreds of steps (each step
//   amplifies the previous rounding differences), so only training_summary is compared: the
//   first five losses to 1e-3, the mean of the last twenty within 10 %.
#include <flowprior/backend/cuda.cuh>
#include <flowprior/backend/kernel_backend.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "stack_runs.hpp"

namespace st = fpt::stack;
using Gpu = flowprior::CudaBackend;
using Host = flowprior::HostKernelBackend;

namespace {

constexpr double kPassDouble = 1e-10;
constexpr double kPassFloat = 2e-4;
constexpr double kTrainDouble = 1e-7;
constexpr double kTrainEarlyFloat = 1e-3;
constexpr double kTrainTailFloat = 0.1;

template <class S>
constexpr double pass_tol() {
  return std::is_same<S, double>::value ? kPassDouble : kPassFloat;
}

void require_agree(const st::Results& host, const st::Results& gpu, double rtol) {
  REQUIRE(host.size() > 0);
  const std::vector<std::string> fails = st::compare(host, gpu, rtol);
  INFO(st::join(fails));
  REQUIRE(fails.empty());
}

}  // namespace

TEMPLATE_TEST_CASE("cuda stack: fields, losses, aligner and ODE agree with the host kernels",
                   "[cuda][stack]", float, double) {
  using S = TestType;
  SECTION("fields") {
    require_agree(st::run_fields<Host, S>(), st::run_fields<Gpu, S>(), pass_tol<S>());
  }
  SECTION("losses") {
    require_agree(st::run_losses<Host, S>(), st::run_losses<Gpu, S>(), pass_tol<S>());
  }
  SECTION("alignment") {
    require_agree(st::run_alignment<Host, S>(), st::run_alignment<Gpu, S>(), pass_tol<S>());
  }
  SECTION("sampling and likelihoods") {
    require_agree(st::run_ode<Host, S>(), st::run_ode<Gpu, S>(), pass_tol<S>());
  }
}

TEST_CASE("cuda stack: 200 training steps in double agree with the host kernels", "[cuda][stack]") {
  require_agree(st::run_training<Host, double>(200), st::run_training<Gpu, double>(200),
                kTrainDouble);
}

TEST_CASE("cuda stack: 200 training steps in float agree with the host kernels statistically",
          "[cuda][stack]") {
  // Chaotic divergence over hundreds of steps (file comment): the early losses closely, the
  // final loss level loosely; the trajectories themselves are not compared.
  const st::Results host = st::run_training<Host, float>(200),
                    gpu = st::run_training<Gpu, float>(200);
  const st::Results h = st::training_summary(host), g = st::training_summary(gpu);
  st::Results he, ge, ht, gt;
  he.put("loss.early", *h.find("loss.early"));
  ge.put("loss.early", *g.find("loss.early"));
  ht.put("loss.tail_mean", *h.find("loss.tail_mean"));
  gt.put("loss.tail_mean", *g.find("loss.tail_mean"));
  require_agree(he, ge, kTrainEarlyFloat);
  require_agree(ht, gt, kTrainTailFloat);
}
