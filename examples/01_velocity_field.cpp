// 01: the released flow head as a velocity field. Builds the toy-size AdaLN MLP, evaluates
// v(x, t) on a batch, its input VJP (what the alignment loss needs), and its exact divergence
// (what the ODE likelihood needs), and prints the cost of each pass.
#include <flowprior/flowprior.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  try {
    using namespace flowprior;
    // The paper's 2-D toy prior: dim 2, width 512, depth 4 (6,179,330 parameters).
    nn::AdaLNMlpConfig cfg;
    cfg.dim = 2;
    cfg.width = 512;
    cfg.depth = 4;
    nn::AdaLNMlp<float> net(cfg);
    Rng rng(2026);
    net.init(rng);  // released init: v == 0 until trained
    std::printf("AdaLNMlp dim %td width %td depth %td: %td parameters\n", cfg.dim, cfg.width,
                cfg.depth, net.num_params());
    // Perturb the zero-initialised layers so that the printout is not all zeros.
    auto p = net.parameters();
    for (Index i = 0; i < p.size; ++i) p[i] += static_cast<float>(0.01 * normal01(rng));

    const Index batch = argc > 1 ? std::atoi(argv[1]) : 1000;  // rows; a small value for smoke runs
    if (batch <= 0) throw config_error("batch must be positive");
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
