// Core pieces: views, checks, random numbers, parameter layout, FLOP counts, lane sums.
#include <cmath>
#include <flowprior/backend/parallel.hpp>
#include <flowprior/flowprior.hpp>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
namespace nn = flowprior::nn;

TEST_CASE("views: convert from Eigen matrices, blocks and vectors", "[core]") {
  Eigen::MatrixXd m(4, 5);
  m.setRandom();
  MatrixView<double> v = m;
  REQUIRE(v.rows == 4);
  REQUIRE(v.cols == 5);
  REQUIRE(v.ld == 4);
  REQUIRE(v(2, 3) == m(2, 3));
  auto blk = m.block(1, 2, 2, 3);
  ConstMatrixView<double> cb = blk;
  REQUIRE(cb.ld == 4);
  REQUIRE(cb(1, 2) == m(2, 4));
  REQUIRE(ConstMatrixView<double>(v).row_block(1, 2).col_block(2, 3)(1, 2) == m(2, 4));
  Eigen::VectorXd t(3);
  t << 1, 2, 3;
  ConstVectorView<double> tv = t;
  REQUIRE(tv.size == 3);
  REQUIRE(tv[2] == 3);
  Eigen::RowVectorXd r(3);
  r << 4, 5, 6;
  ConstVectorView<double> rv = r;  // a row vector is still a contiguous vector
  REQUIRE(rv[1] == 5);
  ConstMatrixView<double> rm = r;  // as a matrix: 1 x 3 with consecutive columns
  REQUIRE(rm.rows == 1);
  REQUIRE(rm.cols == 3);
  REQUIRE(rm(0, 2) == 6);
  REQUIRE_THROWS_AS(ConstVectorView<double>(m), flowprior::shape_error);
  Eigen::Map<Eigen::MatrixXd, 0, Eigen::Stride<Eigen::Dynamic, 2>> strided(
      m.data(), 2, 2, Eigen::Stride<Eigen::Dynamic, 2>(4, 2));
  REQUIRE_THROWS_AS(ConstMatrixView<double>(strided), flowprior::shape_error);
}

TEST_CASE("checks: shapes, finiteness and the unit interval", "[core][error]") {
  Eigen::MatrixXd m = Eigen::MatrixXd::Zero(2, 3);
  REQUIRE_NOTHROW(flowprior::check_shape("f", "m", ConstMatrixView<double>(m), 2, 3));
  REQUIRE_THROWS_WITH(flowprior::check_shape("f", "m", ConstMatrixView<double>(m), 3, 3),
                      Catch::Contains("[flowprior.shape] f: argument 'm' has shape (2, 3), "
                                      "expected (3, 3)"));
  m(1, 2) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(flowprior::check_finite<double>("f", "m", m), flowprior::numeric_error);
  REQUIRE_THROWS_WITH(flowprior::check_finite<double>("f", "m", m),
                      Catch::Contains("'m'") && Catch::Contains("(1, 2)"));
  Eigen::VectorXd t(3);
  t << 0, 1, 0.5;
  REQUIRE_NOTHROW(flowprior::check_unit_interval<double>("f", "t", t));
  t[1] = 1 + 1e-12;
  REQUIRE_THROWS_AS(flowprior::check_unit_interval<double>("f", "t", t), flowprior::value_error);
  // The hierarchy: every flowprior exception is a flowprior::error and a std::runtime_error.
  REQUIRE_THROWS_AS(flowprior::check_unit_interval<double>("f", "t", t), flowprior::error);
  REQUIRE_THROWS_AS(flowprior::check_finite<double>("f", "m", m), std::runtime_error);
}

TEST_CASE("random: portable streams and the right moments", "[core]") {
  Rng rng(42);
  // Frozen values: the transforms are ours, so every standard library gives these numbers.
  REQUIRE(flowprior::uniform01(rng) == 0.75515553295453897);
  REQUIRE(flowprior::normal01(rng) == Approx(0.012755354198443499).epsilon(1e-15));
  const int n = 200000;
  double s = 0, s2 = 0, umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const double z = flowprior::normal01(rng);
    s += z;
    s2 += z * z;
    const double u = flowprior::uniform01(rng);
    umin = std::min(umin, u);
    umax = std::max(umax, u);
  }
  REQUIRE(std::abs(s / n) < 4.0 / std::sqrt(double(n)));
  REQUIRE(std::abs(s2 / n - 1.0) < 4.0 * std::sqrt(2.0 / n));
  REQUIRE(umin >= 0.0);
  REQUIRE(umax < 1.0);
}

TEST_CASE("flops: forward counts 2 multiply-adds per weight entry", "[core]") {
  nn::AdaLNMlpConfig c;
  c.dim = 5;
  c.width = 16;
  c.depth = 3;
  c.cond_dim = 7;
  nn::AdaLNMlp<float> net(c);
  double weights = 0;
  for (const auto& t : net.layout().tensors())
    if (t.shape.size() == 2) weights += double(t.size());
  const auto f = net.matmul_flops_per_row();
  REQUIRE(f.forward == 2 * weights);
  REQUIRE(f.vjp_x < f.forward);
  REQUIRE(f.backward > f.forward);
  nn::MlpField<float> mlp(nn::MlpFieldConfig{});
  double mw = 0;
  for (const auto& t : mlp.layout().tensors())
    if (t.shape.size() == 2) mw += double(t.size());
  REQUIRE(mlp.matmul_flops_per_row().forward == 2 * mw);
}

TEST_CASE("lane sums: the documented lane order, to the bit, for every length", "[core]") {
  namespace d = flowprior::detail;
  Rng rng(7);
  // Terms of many magnitudes and both signs, so that another order of the additions would give
  // other bits (checked below: the serial sum differs for most lengths).
  std::vector<double> x(1100), y(1100);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = (flowprior::uniform01(rng) - 0.5) * std::pow(10.0, double(i % 13) - 6.0);
    y[i] = flowprior::uniform01(rng) * std::pow(2.0, double(i % 7));
  }
  int serial_differs = 0;
  for (const Index n : {0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 1023, 1024, 1025, 1099}) {
    // Reference: lane l adds the terms with i % 8 == l in increasing i; then lane l += lane l + w
    // for w = 4, 2, 1.
    double lanes_x[d::kSumLanes] = {}, lanes_y[d::kSumLanes] = {};
    for (Index i = 0; i < n; ++i) {
      lanes_x[i % d::kSumLanes] += x[std::size_t(i)];
      lanes_y[i % d::kSumLanes] += x[std::size_t(i)] * y[std::size_t(i)];
    }
    for (int w = d::kSumLanes / 2; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) {
        lanes_x[l] += lanes_x[l + w];
        lanes_y[l] += lanes_y[l + w];
      }
    const double one = d::lane_sum(n, [&](Index i) { return x[std::size_t(i)]; });
    const d::LanePair two = d::lane_sums(n, [&](Index i) {
      return d::LanePair{x[std::size_t(i)], x[std::size_t(i)] * y[std::size_t(i)]};
    });
    REQUIRE(one == lanes_x[0]);
    REQUIRE(two.a == lanes_x[0]);
    REQUIRE(two.b == lanes_y[0]);
    long double exact = 0;
    double serial = 0, magnitude = 0;
    for (Index i = 0; i < n; ++i) {
      exact += static_cast<long double>(x[std::size_t(i)]);
      serial += x[std::size_t(i)];
      magnitude += std::abs(x[std::size_t(i)]);
    }
    // Any order of n double additions is within (n - 1) u sum |x_i| of the exact sum.
    REQUIRE(std::abs(double(exact) - one) <= double(n) * 1.2e-16 * magnitude);
    serial_differs += serial != one ? 1 : 0;
  }
  REQUIRE(serial_differs > 3);
}
