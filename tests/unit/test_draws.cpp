// Draws of (t, eps) and the random projection.
#include <algorithm>
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Rng;
namespace loss = flowprior::loss;

TEST_CASE("draws: the same seed gives the same draws; layout is row-major in draws", "[loss]") {
  loss::FlowDraws<double> a, b;
  Rng r1(5), r2(5);
  loss::draw(a, Convention::Code, 3, 2, 4, loss::TimeSampler::uniform(), r1);
  loss::draw(b, Convention::Code, 3, 2, 4, loss::TimeSampler::uniform(), r2);
  REQUIRE(a.t == b.t);
  REQUIRE(a.eps == b.eps);
  REQUIRE(a.cols() == 12);
  REQUIRE(a.convention == Convention::Code);
  REQUIRE(a.noise().rows == 2);
  REQUIRE(a.noise().cols == 12);
}

TEST_CASE("draws: samplers have the documented distributions", "[loss]") {
  Rng rng(6);
  loss::FlowDraws<double> d;
  SECTION("stratified: exactly one draw per stratum") {
    loss::draw(d, Convention::Paper, 50, 1, 4, loss::TimeSampler::stratified(), rng);
    std::vector<double> t(d.t.begin(), d.t.end());
    std::sort(t.begin(), t.end());
    for (std::size_t i = 0; i < t.size(); ++i) {
      REQUIRE(t[i] >= double(i) / 200.0);
      REQUIRE(t[i] < double(i + 1) / 200.0);
    }
  }
  SECTION("grid: midpoints per draw index") {
    loss::draw(d, Convention::Paper, 3, 1, 4, loss::TimeSampler::grid(), rng);
    for (Index b = 0; b < 3; ++b)
      for (Index k = 0; k < 4; ++k) REQUIRE(d.t[std::size_t(b * 4 + k)] == (k + 0.5) / 4);
  }
  SECTION("logit-normal: logit(t) has the requested mean and std") {
    loss::draw(d, Convention::Paper, 50000, 1, 1, loss::TimeSampler::logit_normal(0.5, 0.8), rng);
    double s = 0, s2 = 0;
    for (double t : d.t) {
      const double l = std::log(t / (1 - t));
      s += l;
      s2 += l * l;
    }
    const double n = double(d.t.size()), m = s / n;
    REQUIRE(m == Approx(0.5).margin(4 * 0.8 / std::sqrt(n)));
    REQUIRE(std::sqrt(s2 / n - m * m) == Approx(0.8).epsilon(0.02));
  }
  SECTION("uniform and antithetic: pairs negate eps, every draw has its own t") {
    loss::draw(d, Convention::Paper, 1000, 3, 2, loss::TimeSampler::uniform(), rng, true);
    double s = 0;
    int same_t = 0;
    for (Index b = 0; b < 1000; ++b) {
      same_t += d.t[std::size_t(2 * b)] == d.t[std::size_t(2 * b + 1)];
      for (Index i = 0; i < 3; ++i) REQUIRE(d.noise()(i, 2 * b) == -d.noise()(i, 2 * b + 1));
      s += d.t[std::size_t(2 * b)] + d.t[std::size_t(2 * b + 1)];
    }
    REQUIRE(same_t == 0);
    REQUIRE(s / 2000 == Approx(0.5).margin(4 * std::sqrt(1.0 / 12 / 2000)));
  }
  SECTION("grid with antithetic noise keeps every grid point") {
    loss::draw(d, Convention::Paper, 2, 1, 4, loss::TimeSampler::grid(), rng, true);
    for (Index k = 0; k < 4; ++k) REQUIRE(d.t[std::size_t(4 + k)] == (k + 0.5) / 4);
    REQUIRE(d.noise()(0, 5) == -d.noise()(0, 4));
  }
}

TEST_CASE("philox4x32-10: the Random123 known answers", "[random]") {
  // Random123 (D. E. Shaw Research) tests/kat_vectors, "philox4x32 10" lines: counter words 0-3,
  // key words 0-1, expected output words 0-3.
  const auto a = flowprior::philox4x32_10(0, 0, 0, 0, 0, 0);
  REQUIRE(a.w[0] == 0x6627e8d5u);
  REQUIRE(a.w[1] == 0xe169c58du);
  REQUIRE(a.w[2] == 0xbc57ac4cu);
  REQUIRE(a.w[3] == 0x9b00dbd8u);
  const std::uint32_t f = 0xffffffffu;
  const auto b = flowprior::philox4x32_10(f, f, f, f, f, f);
  REQUIRE(b.w[0] == 0x408f276du);
  REQUIRE(b.w[1] == 0x41c83b0eu);
  REQUIRE(b.w[2] == 0xa20bc7c6u);
  REQUIRE(b.w[3] == 0x6d5451fdu);
  const auto c = flowprior::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u,
                                          0xa4093822u, 0x299f31d0u);
  REQUIRE(c.w[0] == 0xd16cfe09u);
  REQUIRE(c.w[1] == 0x94fdccebu);
  REQUIRE(c.w[2] == 0x5001e420u);
  REQUIRE(c.w[3] == 0x24126ea1u);
}

TEST_CASE("gaussian_noise: a function of (key, stream, position); N(0, 1) moments", "[random]") {
  using B = flowprior::CpuBackend;
  B::Context ctx;
  Eigen::MatrixXd a(3, 7), big(3, 40), other(3, 7), odd(5, 9);
  B::gaussian_noise(ctx, 42, 0, flowprior::MatrixView<double>(a), 0);
  B::gaussian_noise(ctx, 42, 0, flowprior::MatrixView<double>(big), 0);
  // Position e = i + j * rows only: a prefix of a larger tensor is the smaller tensor.
  REQUIRE(a == big.leftCols(7));
  // Element e is pair e / 2's first (even e) or second (odd e) value.
  for (Index e = 0; e < 21; ++e) {
    const auto z = flowprior::philox_normal_pair(42, 0, std::uint64_t(e / 2));
    REQUIRE(a.data()[e] == (e % 2 == 0 ? z.z0 : z.z1));
  }
  B::gaussian_noise(ctx, 43, 0, flowprior::MatrixView<double>(other), 0);
  REQUIRE((other - a).cwiseAbs().minCoeff() > 0);  // another key, other values
  B::gaussian_noise(ctx, 42, 1, flowprior::MatrixView<double>(other), 0);
  REQUIRE((other - a).cwiseAbs().minCoeff() > 0);  // another stream, other values
  // A view with ld > rows: the logical positions, whatever the storage.
  Eigen::MatrixXd store = Eigen::MatrixXd::Constant(5, 7, 9.0);
  B::gaussian_noise(ctx, 42, 0, flowprior::MatrixView<double>(store.data(), 3, 7, 5), 0);
  REQUIRE(store.topRows(3) == a);
  REQUIRE((store.bottomRows(2).array() == 9.0).all());
  // Antithetic with K = 4: columns 1 and 3 of every row's four are -columns 0 and 2.
  B::gaussian_noise(ctx, 7, 0, flowprior::MatrixView<double>(odd), 4);
  Eigen::MatrixXd plain(5, 9);
  B::gaussian_noise(ctx, 7, 0, flowprior::MatrixView<double>(plain), 0);
  for (Index j = 0; j < 9; ++j) {
    if ((j % 4) % 2 == 1)
      REQUIRE(odd.col(j) == -plain.col(j - 1));
    else
      REQUIRE(odd.col(j) == plain.col(j));
  }
  // Moments of 400k values in float: mean 0, variance 1, fourth moment 3, lag-1 correlation 0.
  std::vector<float> x(400000);
  B::gaussian_noise(ctx, 2024, 0, flowprior::MatrixView<float>(x.data(), 16, 25000), 0);
  double m1 = 0, m2 = 0, m4 = 0, lag = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    m1 += v;
    m2 += v * v;
    m4 += v * v * v * v;
    if (i > 0) lag += v * double(x[i - 1]);
  }
  const double n = double(x.size());
  REQUIRE(std::abs(m1 / n) < 5 / std::sqrt(n));
  REQUIRE(std::abs(m2 / n - 1) < 5 * std::sqrt(2 / n));
  REQUIRE(std::abs(m4 / n - 3) < 5 * std::sqrt(96 / n));
  REQUIRE(std::abs(lag / n) < 5 / std::sqrt(n));
}

TEST_CASE("draws: the noise is keyed by one value of the generator, the times follow", "[loss]") {
  Rng rng(77), copy(77);
  loss::FlowDraws<double> d;
  loss::draw(d, Convention::Paper, 4, 3, 2, loss::TimeSampler::uniform(), rng);
  const std::uint64_t key = copy();
  Eigen::MatrixXd eps(3, 8);
  flowprior::CpuBackend::Context ctx;
  flowprior::CpuBackend::gaussian_noise(ctx, key, 0, flowprior::MatrixView<double>(eps), 0);
  for (Index col = 0; col < 8; ++col) {
    REQUIRE(d.t[std::size_t(col)] == flowprior::uniform01(copy));
    for (Index i = 0; i < 3; ++i) REQUIRE(d.noise()(i, col) == eps(i, col));
  }
  REQUIRE(rng() == copy());  // nothing else was consumed
}

TEST_CASE("projection: seeded N(0, 1/d2) entries, scale, validation", "[data]") {
  flowprior::data::RandomProjection<double> p(32, 768, 1234, 2.0), q(32, 768, 1234, 2.0);
  auto W = p.matrix();
  double s2 = 0;
  for (Index j = 0; j < W.cols; ++j)
    for (Index i = 0; i < W.rows; ++i) {
      REQUIRE(W(i, j) == q.matrix()(i, j));
      s2 += W(i, j) * W(i, j);
    }
  REQUIRE(s2 / double(32 * 768) == Approx(1.0 / 768).epsilon(0.03));
  Rng rng(3);
  Eigen::MatrixXd f = fpt::random_mat(768, 5, rng), out(32, 5);
  p.apply(f, out);
  Eigen::Map<const Eigen::MatrixXd> Wm(W.data, 32, 768);
  REQUIRE((out - 2.0 * Wm * f).norm() < 1e-10 * out.norm());
  Eigen::MatrixXd bad(700, 5), out_bad(31, 5);
  bad.setZero();
  REQUIRE_THROWS_AS(p.apply(bad, out), flowprior::shape_error);
  REQUIRE_THROWS_AS(p.apply(f, out_bad), flowprior::shape_error);
  f(3, 3) = std::nan("");
  REQUIRE_THROWS_AS(p.apply(f, out), flowprior::numeric_error);
  REQUIRE_THROWS_AS(flowprior::data::RandomProjection<double>(0, 3, 1), flowprior::config_error);
}

TEST_CASE("explicit draws: the constructor keeps the values loss::draw made", "[loss][draws]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  const Index group = GENERATE(1, 3);
  Rng rng(21);
  loss::FlowDraws<double> drawn;
  loss::draw(drawn, conv, 5, 3, 4, loss::TimeSampler::stratified(), rng, false, group);
  const Eigen::VectorXd t = Eigen::Map<const Eigen::VectorXd>(drawn.t.data(), 20);
  const Eigen::MatrixXd eps = Eigen::Map<const Eigen::MatrixXd>(drawn.eps.data(), 3, 20);
  const loss::FlowDraws<double> mine(conv, 5, 3, 4, t, eps, group);
  REQUIRE(mine.convention == conv);
  REQUIRE(mine.rows == 5);
  REQUIRE(mine.dim == 3);
  REQUIRE(mine.K == 4);
  REQUIRE(mine.t == drawn.t);
  REQUIRE(mine.eps == drawn.eps);
  REQUIRE_NOTHROW(mine.validate("test"));
}

TEST_CASE("explicit draws: noise from a block of a larger matrix; no rows", "[loss][draws]") {
  Rng rng(22);
  const Eigen::MatrixXd big = fpt::random_mat(5, 7, rng);
  const Eigen::VectorXd t = Eigen::VectorXd::Constant(6, 0.25);
  const loss::FlowDraws<double> d(Convention::Code, 3, 2, 2, t, big.block(1, 1, 2, 6));
  for (Index col = 0; col < 6; ++col)
    for (Index i = 0; i < 2; ++i) REQUIRE(d.noise()(i, col) == big(1 + i, 1 + col));
  const loss::FlowDraws<double> none(Convention::Paper, 0, 2, 4, Eigen::VectorXd(0),
                                     Eigen::MatrixXd(2, 0));
  REQUIRE(none.cols() == 0);
  REQUIRE_NOTHROW(none.validate("test"));
}

TEST_CASE("explicit draws: every bad argument is a typed error naming it", "[loss][draws][error]") {
  using flowprior::config_error;
  using flowprior::numeric_error;
  using flowprior::shape_error;
  using flowprior::value_error;
  const Index N = 3, d = 2, K = 2;
  Rng rng(23);
  Eigen::VectorXd t(N * K);
  for (Index i = 0; i < t.size(); ++i) t[i] = flowprior::uniform01(rng);
  Eigen::MatrixXd eps = fpt::random_mat(d, N * K, rng);
  const Convention P = Convention::Paper;
  using D = loss::FlowDraws<double>;
  REQUIRE_NOTHROW(D(P, N, d, K, t, eps));
  // The convention must be one of the two.
  REQUIRE_THROWS_AS(D(static_cast<Convention>(7), N, d, K, t, eps), config_error);
  REQUIRE_THROWS_WITH(D(static_cast<Convention>(7), N, d, K, t, eps), Catch::Contains("'conv'"));
  // Sizes.
  REQUIRE_THROWS_WITH(D(P, -1, d, K, t, eps), Catch::Contains("'rows'"));
  REQUIRE_THROWS_AS(D(P, -1, d, K, t, eps), config_error);
  REQUIRE_THROWS_WITH(D(P, N, 0, K, t, eps), Catch::Contains("'dim'"));
  REQUIRE_THROWS_AS(D(P, N, 0, K, t, eps), config_error);
  REQUIRE_THROWS_WITH(D(P, N, d, 0, t, eps), Catch::Contains("'K'"));
  REQUIRE_THROWS_AS(D(P, N, d, 0, t, eps), config_error);
  REQUIRE_THROWS_WITH(D(P, N, d, K, t, eps, 0), Catch::Contains("'time_group'"));
  REQUIRE_THROWS_AS(D(P, N, d, K, t, eps, 0), config_error);
  const Index huge = std::numeric_limits<Index>::max() / 2;
  REQUIRE_THROWS_AS(D(P, huge, d, K, t, eps), config_error);  // rows x K overflows
  REQUIRE_THROWS_AS(D(P, 2, huge, K, t, eps), config_error);  // dim x rows x K overflows
  // Too few / too many times, noise of the wrong shape (the bug: too few were read past).
  REQUIRE_THROWS_WITH(D(P, N, d, K, t.head(N * K - 1), eps),
                      Catch::Contains("'t'") && Catch::Contains("size 5, expected 6"));
  REQUIRE_THROWS_AS(D(P, N, d, K, t.head(N * K - 1), eps), shape_error);
  Eigen::VectorXd t_long(N * K + 1);
  t_long.setConstant(0.5);
  REQUIRE_THROWS_AS(D(P, N, d, K, t_long, eps), shape_error);
  REQUIRE_THROWS_WITH(D(P, N, d, K, t, eps.leftCols(N * K - 1)),
                      Catch::Contains("'eps'") && Catch::Contains("(2, 5)"));
  REQUIRE_THROWS_AS(D(P, N, d, K, t, eps.leftCols(N * K - 1)), shape_error);
  REQUIRE_THROWS_AS(D(P, N, d, K, t, eps.topRows(1)), shape_error);
  REQUIRE_THROWS_AS(D(P, N, d + 1, K, t, eps), shape_error);
  REQUIRE_THROWS_AS(D(P, N + 1, d, K, t, eps), shape_error);
  // Non-finite values.
  for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity()}) {
    CAPTURE(bad);
    Eigen::VectorXd tb = t;
    tb[4] = bad;
    REQUIRE_THROWS_AS(D(P, N, d, K, tb, eps), numeric_error);
    REQUIRE_THROWS_WITH(D(P, N, d, K, tb, eps),
                        Catch::Contains("'t'") && Catch::Contains("(4, 0)"));
    Eigen::MatrixXd eb = eps;
    eb(1, 3) = bad;
    REQUIRE_THROWS_AS(D(P, N, d, K, t, eb), numeric_error);
    REQUIRE_THROWS_WITH(D(P, N, d, K, t, eb),
                        Catch::Contains("'eps'") && Catch::Contains("(1, 3)"));
  }
  // Times outside [0, 1] of the convention.
  for (const double bad : {-1e-12, 1.0 + 1e-12, 2.0}) {
    CAPTURE(bad);
    Eigen::VectorXd tb = t;
    tb[2] = bad;
    REQUIRE_THROWS_AS(D(P, N, d, K, tb, eps), value_error);
    REQUIRE_THROWS_WITH(D(Convention::Code, N, d, K, tb, eps),
                        Catch::Contains("'t'") && Catch::Contains("[0, 1]"));
  }
  Eigen::VectorXd ends(N * K);
  ends << 0, 1, 0, 1, 0, 1;
  REQUIRE_NOTHROW(D(P, N, d, K, ends, eps));
  // Time groups must share their t; the last group may be shorter.
  Eigen::VectorXd tg(N * K);
  tg << 0.1, 0.1, 0.1, 0.1, 0.7, 0.7;
  REQUIRE_NOTHROW(D(P, N, d, K, tg, eps, 4));
  REQUIRE_NOTHROW(D(P, N, d, K, tg, eps, 2));
  REQUIRE_NOTHROW(D(P, N, d, K, tg, eps, 1));
  REQUIRE_THROWS_AS(D(P, N, d, K, tg, eps, 3), value_error);
  REQUIRE_THROWS_WITH(D(P, N, d, K, tg, eps, 6),
                      Catch::Contains("'t'") && Catch::Contains("time group 0"));
}

TEST_CASE("explicit draws: a failed assign leaves the draws as they were; memory is reused",
          "[loss][draws][error]") {
  Rng rng(24);
  loss::FlowDraws<double> d;
  loss::draw(d, Convention::Code, 4, 2, 3, loss::TimeSampler::uniform(), rng);
  const loss::FlowDraws<double> before = d;
  Eigen::VectorXd t = Eigen::VectorXd::Constant(12, 0.5);
  Eigen::MatrixXd eps = fpt::random_mat(2, 12, rng);
  t[11] = 1.5;
  REQUIRE_THROWS_AS(d.assign(Convention::Paper, 4, 2, 3, t, eps), flowprior::value_error);
  REQUIRE_THROWS_AS(d.assign(Convention::Paper, 6, 2, 2, t, eps, 0), flowprior::config_error);
  REQUIRE_THROWS_AS(d.assign(Convention::Paper, 5, 2, 3, t, eps), flowprior::shape_error);
  REQUIRE(d.convention == Convention::Code);
  REQUIRE(d.rows == 4);
  REQUIRE(d.K == 3);
  REQUIRE(d.t == before.t);
  REQUIRE(d.eps == before.eps);
  t[11] = 0.5;
  const double* t_mem = d.t.data();
  const double* eps_mem = d.eps.data();
  d.assign(Convention::Paper, 6, 2, 2, t, eps);  // same totals: no reallocation
  REQUIRE(d.t.data() == t_mem);
  REQUIRE(d.eps.data() == eps_mem);
  REQUIRE(d.convention == Convention::Paper);
  REQUIRE(d.rows == 6);
  REQUIRE(d.K == 2);
  REQUIRE(d.noise()(1, 11) == eps(1, 11));
}
