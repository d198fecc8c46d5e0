// The optional component flowprior::toy2d, consumed on its own: samples of a 2-D target.
#include <cmath>
#include <flowprior/toy2d/targets.hpp>
#include <iostream>
#include <vector>

int main() {
  const auto target = flowprior::data::ToyTarget::make(flowprior::data::Toy2D::Ring5);
  flowprior::Rng rng(7);
  std::vector<double> xy(2 * 8);
  target.sample(flowprior::MatrixView<double>(xy.data(), 2, 8), rng);
  for (double v : xy)
    if (!std::isfinite(v)) return 1;
  std::cout << "toy2d component OK\n";
  return 0;
}
