#include <Eigen/Core>
#include <flowprior/flowprior.hpp>
#include <iostream>
#include <string>
int main() {
  flowprior::nn::AdaLNMlpConfig cfg;
  cfg.dim = 2;
  cfg.width = 16;
  cfg.depth = 2;
  flowprior::nn::AdaLNMlp<double> net(cfg);
  std::mt19937_64 rng(1);
  net.init(rng);
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(2, 5);
  Eigen::VectorXd t = Eigen::VectorXd::Constant(5, 0.5);
  Eigen::MatrixXd v(2, 5);
  flowprior::nn::AdaLNMlp<double>::Workspace ws;
  net.forward(x, t, v, ws);
  std::cout << "flowprior " << FLOWPRIOR_VERSION_STRING << " ok, gemm engine "
            << flowprior::CpuBackend::gemm_engine() << ", |v|=" << v.norm() << "\n";
#ifdef CONSUMER_EXPECT_BLAS
  if (std::string(flowprior::CpuBackend::gemm_engine()) == "eigen") return 2;
#endif
  return v.allFinite() ? 0 : 1;
}
