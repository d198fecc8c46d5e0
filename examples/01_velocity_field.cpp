// 01: the released flow head as a velocity field. Builds the toy-size AdaLN MLP, evaluates
// v(x, t) on a batch, its input VJP (what the alignment loss needs), and its exact divergence
// (what the ODE likelihood needs), and prints the cost of each pass.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <flowprior/flowprior.hpp>
#include <limits>
#include <string>

int main(int argc, char** argv) {
  using namespace flowprior;
  CLI::App app{"The released flow head as a velocity field: forward, input VJP and divergence"};
  Index batch = 1000;  // rows; a small value for smoke runs
  app.add_option("batch", batch, "rows of the batch (a positive integer, default 1000)");
  CLI11_PARSE(app, argc, argv);
  try {
    // The paper's 2-D toy prior: dim 2, width 512, depth 4 (6,179,330 parameters).
    nn::AdaLNMlpConfig cfg;
    cfg.dim = 2;
    cfg.width = 512;
    cfg.depth = 4;
    // Checked before any work: a positive batch whose activations (at least one width-512
    // vector per block and row, float) can fit in memory.
    if (batch <= 0)
      raise_config("01_velocity_field",
                   "batch must be a positive integer, got " + std::to_string(batch));
    const double bytes = double(batch) * double(cfg.width) * double(cfg.depth + 1) * 4.0;
    if (!(bytes <= double(flowprior::physical_memory_bytes())))
      raise_config("01_velocity_field", "batch = " + std::to_string(batch) +
                                            " rows need more than this machine's memory");
    nn::AdaLNMlp<float> net(cfg);
    Rng rng(2026);
    net.init(rng);  // released init: v == 0 until trained
    std::printf("AdaLNMlp dim %td width %td depth %td: %td parameters\n", cfg.dim, cfg.width,
                cfg.depth, net.num_params());
    // Perturb the zero-initialised layers so that the printout is not all zeros.
    auto p = net.parameters();
    for (Index i = 0; i < p.size; ++i) p[i] += static_cast<float>(0.01 * normal01(rng));

    Eigen::MatrixXf x(cfg.dim, batch), v(cfg.dim, batch), d_x(cfg.dim, batch);
    Eigen::VectorXf t(batch), div(batch);
    for (Index b = 0; b < batch; ++b) {
      x(0, b) = static_cast<float>(normal01(rng));
      x(1, b) = static_cast<float>(normal01(rng));
      t[b] = static_cast<float>(uniform01(rng));
    }
    nn::AdaLNMlp<float>::Workspace ws;  // reused: no allocation after the first call
    auto time = [](auto&& f) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    net.forward(x, t, v, ws);  // warm-up
    const double tf = time([&] { net.forward(x, t, v, ws); });
    d_x.setZero();
    const double tv = time([&] { net.vjp_x(ws, v, d_x); });  // d_x += J^T v
    const double td = time([&] { net.divergence(x, t, v, div, ws); });
    const auto flops = net.matmul_flops_per_row();
    std::printf("forward    %8.2f ms  %6.1f GFLOP/s\n", 1e3 * tf,
                flops.forward * batch / tf * 1e-9);
    std::printf("vjp_x      %8.2f ms  %6.1f GFLOP/s\n", 1e3 * tv, flops.vjp_x * batch / tv * 1e-9);
    std::printf("divergence %8.2f ms  (forward + %td tangents per row)\n", 1e3 * td, cfg.dim);
    std::printf("v[:,0] = (%.5f, %.5f)  div[0] = %.5f  |J^T v|[:,0] = (%.5f, %.5f)\n", v(0, 0),
                v(1, 0), div[0], d_x(0, 0), d_x(1, 0));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
