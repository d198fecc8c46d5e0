// Configure-time probe of a GEMM engine (cmake/FlowpriorBlas.cmake, flowprior_fastest_engine):
// times CpuBackend::gemm on a product of the flow head's shape with the engine this program was
// compiled for, on the OpenMP team, and prints the best rate of seven runs in GFLOP/s (for
// OpenBLAS, followed by the name of the kernel it runs).
#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <flowprior/backend/cpu.hpp>

int main() {
  using flowprior::Index;
  const Index m = 512, n = 2048, k = 512;
  const Eigen::MatrixXf A = Eigen::MatrixXf::Random(m, k), B = Eigen::MatrixXf::Random(k, n);
  Eigen::MatrixXf C(m, n);
  flowprior::CpuBackend::Context ctx;
  auto run = [&] {
    flowprior::CpuBackend::gemm<float>(ctx, false, false, 1.0f, A, B, 0.0f,
                                       flowprior::MatrixView<float>(C));
  };
  run();
  run();
  double best = 0;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) run();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 4;
    const double g = 2.0 * double(m) * double(n) * double(k) / s / 1e9;
    if (g > best) best = g;
  }
  std::printf("%.1f", C(0, 0) == C(0, 0) ? best : 0.0);  // (C read: the products happened)
#if defined(FLOWPRIOR_CBLAS_OPENBLAS)
  // The kernel OpenBLAS picked for this CPU (a DYNAMIC_ARCH build falls back to a generic one on
  // CPUs it does not know; CMake then prints how to choose another).
  const char* core = openblas_get_corename();
  std::printf(" %s", core != nullptr && core[0] != '\0' ? core : "unknown");
#endif
  std::printf("\n");
  return 0;
}
