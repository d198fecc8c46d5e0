// Evaluation metrics (docs/math/evaluation.md): streaming feature statistics and the Frechet
// distance against closed forms, kNN distances against brute force, the linear probe (its
// gradient against central differences in double, separable data, a planted model recovered);
// typed errors throughout.
#include <Eigen/QR>
#include <algorithm>
#include <flowprior/eval/frechet.hpp>
#include <flowprior/eval/knn.hpp>
#include <flowprior/eval/linear_probe.hpp>
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace ev = flowprior::eval;

namespace {

Mat gaussian(Index rows, Index cols, Rng& rng) {
  Mat m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = flowprior::normal01(rng);
  return m;
}

Mat random_spd(Index n, Rng& rng) {
  const Mat A = gaussian(n, n, rng);
  return A * A.transpose() / double(n) + 0.1 * Mat::Identity(n, n);
}

Mat random_rotation(Index n, Rng& rng) {
  Eigen::HouseholderQR<Mat> qr(gaussian(n, n, rng));
  return qr.householderQ() * Mat::Identity(n, n);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Frechet distance

TEST_CASE("frechet: closed forms (diagonal, 2 x 2, identical) and rotation invariance",
          "[eval][frechet]") {
  Rng rng(501);
  const Index D = 6;
  const Vec mu1 = gaussian(D, 1, rng), mu2 = gaussian(D, 1, rng);
  SECTION("diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2") {
    Vec a(D), b(D);
    for (Index i = 0; i < D; ++i) {
      a(i) = 0.1 + flowprior::uniform01(rng) * 3;
      b(i) = 0.1 + flowprior::uniform01(rng) * 3;
    }
    const double expected =
        (mu1 - mu2).squaredNorm() + (a.cwiseSqrt() - b.cwiseSqrt()).squaredNorm();
    const double got = ev::frechet_distance(mu1, Mat(a.asDiagonal()), mu2, Mat(b.asDiagonal()));
    REQUIRE(got == Approx(expected).epsilon(1e-12));
  }
  SECTION("2 x 2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for non-commuting S1, S2") {
    const Mat S1 = random_spd(2, rng), S2 = random_spd(2, rng);
    REQUIRE((S1 * S2 - S2 * S1).norm() > 1e-3);
    const Vec m1 = mu1.head(2), m2 = mu2.head(2);
    const double tr_sqrt =
        std::sqrt((S1 * S2).trace() + 2 * std::sqrt(S1.determinant() * S2.determinant()));
    const double expected = (m1 - m2).squaredNorm() + S1.trace() + S2.trace() - 2 * tr_sqrt;
    REQUIRE(ev::frechet_distance(m1, S1, m2, S2) == Approx(expected).epsilon(1e-12));
  }
  SECTION("identical Gaussians: 0; rotating both sets changes nothing") {
    const Mat S1 = random_spd(D, rng), S2 = random_spd(D, rng);
    REQUIRE(ev::frechet_distance(mu1, S1, mu1, S1) < 1e-12 * S1.trace());
    const double d = ev::frechet_distance(mu1, S1, mu2, S2);
    REQUIRE(d > 0.1);
    const Mat Q = random_rotation(D, rng);
    const Vec shift = gaussian(D, 1, rng);
    const double dq = ev::frechet_distance(Vec(Q * mu1 + shift), Mat(Q * S1 * Q.transpose()),
                                           Vec(Q * mu2 + shift), Mat(Q * S2 * Q.transpose()));
    REQUIRE(dq == Approx(d).epsilon(1e-10));
    // Symmetric in its arguments.
    REQUIRE(ev::frechet_distance(mu2, S2, mu1, S1) == Approx(d).epsilon(1e-10));
  }
  SECTION("singular (rank-deficient) covariances are fine: 1-D, |mu1-mu2|^2 + (s1 - s2)^2") {
    Mat S1 = Mat::Zero(D, D), S2 = Mat::Zero(D, D);
    S1(2, 2) = 4.0;
    S2(2, 2) = 9.0;
    REQUIRE(ev::frechet_distance(mu1, S1, mu2, S2) ==
            Approx((mu1 - mu2).squaredNorm() + 1.0).epsilon(1e-12));
  }
}

TEST_CASE("frechet: streaming in batches equals one batch; merge; float input", "[eval][frechet]") {
  Rng rng(502);
  const Index D = 5, N = 300;
  const Mat A = gaussian(D, D, rng);
  Mat x = A * gaussian(D, N, rng);
  x.colwise() += Vec::Constant(D, 1e3);  // a large mean: the centred update keeps precision
  ev::FeatureStats one, many, left, right;
  one.add<double>(x);
  Index j = 0;
  for (Index step : {1, 7, 13, 0, 64, 100}) {
    many.add<double>(x.middleCols(j, step));
    j += step;
  }
  many.add<double>(x.rightCols(N - j));
  REQUIRE(many.count() == N);
  left.add<double>(x.leftCols(111));
  right.add<double>(x.rightCols(N - 111));
  left.merge(right);

  const Mat c = x.colwise() - x.rowwise().mean();
  const Mat cov = c * c.transpose() / double(N - 1);
  for (const ev::FeatureStats* s : {&one, &many, &left}) {
    REQUIRE(s->count() == N);
    REQUIRE((s->mean() - x.rowwise().mean()).cwiseAbs().maxCoeff() < 1e-10);
    REQUIRE((s->covariance() - cov).cwiseAbs().maxCoeff() < 1e-9 * cov.cwiseAbs().maxCoeff());
  }
  REQUIRE(ev::frechet_distance(one, many) < 1e-9);
  // Two samples of one Gaussian are closer than samples of two different ones.
  ev::FeatureStats other(D);
  Mat y = A * gaussian(D, N, rng);
  y.colwise() += Vec::Constant(D, 1e3);
  other.add<double>(y);
  ev::FeatureStats shifted(D);
  const Mat z = y.array() + 0.5;
  shifted.add<double>(z);
  const double near = ev::frechet_distance(one, other), far = ev::frechet_distance(one, shifted);
  REQUIRE(near < far);
  REQUIRE(far - near == Approx(D * 0.25).epsilon(0.35));  // the mean term adds ~ D 0.5^2
  // Float features accumulate in double.
  ev::FeatureStats f;
  const Eigen::MatrixXf xf = x.cast<float>();
  f.add<float>(xf);
  REQUIRE((f.mean() - one.mean()).cwiseAbs().maxCoeff() < 1e-3);
  one.reset();
  REQUIRE(one.count() == 0);
  REQUIRE(one.dim() == D);
}

TEST_CASE("frechet: mismatched dimensions, too few samples, bad values are typed errors",
          "[eval][frechet]") {
  Rng rng(503);
  ev::FeatureStats a(3), b(4), c;
  a.add<double>(gaussian(3, 5, rng));
  b.add<double>(gaussian(4, 5, rng));
  REQUIRE_THROWS_AS(a.add<double>(gaussian(4, 2, rng)), flowprior::shape_error);
  REQUIRE_THROWS_AS(ev::frechet_distance(a, b), flowprior::shape_error);
  REQUIRE_THROWS_AS(a.merge(b), flowprior::shape_error);
  c.add<double>(gaussian(3, 1, rng));
  REQUIRE(c.dim() == 3);
  REQUIRE_THROWS_AS(c.covariance(), flowprior::value_error);
  REQUIRE_THROWS_AS(ev::frechet_distance(a, c), flowprior::value_error);
  Mat bad = gaussian(3, 4, rng);
  bad(1, 1) = std::nan("");
  REQUIRE_THROWS_AS(a.add<double>(bad), flowprior::numeric_error);
  REQUIRE(a.count() == 5);  // unchanged
  REQUIRE_THROWS_AS(ev::FeatureStats(-1), flowprior::config_error);
  // Not positive semi-definite, and non-finite matrices.
  const Vec m = Vec::Zero(2);
  const Mat I = Mat::Identity(2, 2);
  Mat neg = I;
  neg(1, 1) = -1;
  REQUIRE_THROWS_AS(ev::frechet_distance(m, neg, m, I), flowprior::value_error);
  Mat inf = I;
  inf(0, 1) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(ev::frechet_distance(m, I, m, inf), flowprior::numeric_error);
  REQUIRE_THROWS_AS(ev::frechet_distance(m, I, Vec(Vec::Zero(3)), I), flowprior::shape_error);
}

// ------------------------------------------------------------------------------------------------
// kNN distances

namespace {
std::vector<double> knn_brute(const Mat& q, const Mat& r, Index k) {
  std::vector<double> out;
  for (Index i = 0; i < q.cols(); ++i) {
    std::vector<double> d;
    for (Index j = 0; j < r.cols(); ++j) d.push_back((q.col(i) - r.col(j)).norm());
    std::sort(d.begin(), d.end());
    double s = 0;
    for (Index j = 0; j < k; ++j) s += d[std::size_t(j)];
    out.push_back(s / double(k));
  }
  return out;
}
}  // namespace

TEST_CASE("knn: equals brute force for k = 1 and k > 1; tiles do not change a bit", "[eval][knn]") {
  Rng rng(504);
  const Mat q = gaussian(5, 37, rng), r = gaussian(5, 53, rng);
  for (Index k : {1, 4, 53}) {
    const std::vector<double> ref = knn_brute(q, r, k);
    const std::vector<double> got = ev::knn_distances<double>(q, r, k);
    REQUIRE(got.size() == ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) REQUIRE(got[i] == Approx(ref[i]).epsilon(1e-13));
    for (ev::KnnOptions opt : {ev::KnnOptions{1, 1}, ev::KnnOptions{5, 7}, ev::KnnOptions{37, 53}})
      REQUIRE(ev::knn_distances<double>(q, r, k, opt) == got);
    // A subset of the queries gets the same values.
    const std::vector<double> part = ev::knn_distances<double>(q.middleCols(10, 9), r, k);
    REQUIRE(std::equal(part.begin(), part.end(), got.begin() + 10));
  }
  // A query equal to a reference is at distance 0 from it; duplicates count once each.
  Mat r2(2, 3);
  r2 << 0, 0, 3, 0, 0, 4;
  const Mat q2 = Mat::Zero(2, 1);
  REQUIRE(ev::knn_distances<double>(q2, r2, 1)[0] == 0.0);
  REQUIRE(ev::knn_distances<double>(q2, r2, 2)[0] == 0.0);
  REQUIRE(ev::knn_distances<double>(q2, r2, 3)[0] == Approx(5.0 / 3.0));
  // Float input, distances in double.
  const Eigen::MatrixXf qf = q.cast<float>(), rf = r.cast<float>();
  const std::vector<double> gf = ev::knn_distances<float>(qf, rf, 3);
  const std::vector<double> gd = knn_brute(qf.cast<double>(), rf.cast<double>(), 3);
  for (std::size_t i = 0; i < gd.size(); ++i) REQUIRE(gf[i] == Approx(gd[i]).epsilon(1e-13));
}

TEST_CASE("knn: bad k, shapes and values are typed errors", "[eval][knn]") {
  Rng rng(505);
  const Mat q = gaussian(3, 4, rng), r = gaussian(3, 5, rng);
  REQUIRE_THROWS_AS(ev::knn_distances<double>(q, r, 6), flowprior::config_error);  // k > Nr
  REQUIRE_THROWS_AS(ev::knn_distances<double>(q, r, 0), flowprior::config_error);
  REQUIRE_THROWS_AS(ev::knn_distances<double>(q, r, 1, ev::KnnOptions{0, 4}),
                    flowprior::config_error);
  REQUIRE_THROWS_AS(ev::knn_distances<double>(q, gaussian(2, 5, rng), 1), flowprior::shape_error);
  Mat bad = r;
  bad(2, 3) = std::nan("");
  REQUIRE_THROWS_AS(ev::knn_distances<double>(q, bad, 1), flowprior::numeric_error);
  REQUIRE(ev::knn_distances<double>(gaussian(3, 0, rng), r, 2).empty());
}

// ------------------------------------------------------------------------------------------------
// Linear probe

TEST_CASE("probe: the objective's gradient matches central differences in double",
          "[eval][probe]") {
  Rng rng(506);
  const Index D = 4, N = 9, C = 3;
  const Mat z = gaussian(D, N, rng);
  std::vector<Index> y;
  for (Index n = 0; n < N; ++n) y.push_back(n % C);
  const ev::SoftmaxObjective obj(z, y, C, 0.3);
  REQUIRE(obj.num_params() == C * D + C);
  Vec theta = 0.7 * gaussian(obj.num_params(), 1, rng);
  Vec g;
  const double f = obj.value(theta, &g);
  // The value against a direct evaluation of (6).
  const Eigen::Map<const Mat> W(theta.data(), C, D);
  const Vec b = theta.tail(C);
  double direct = 0;
  for (Index n = 0; n < N; ++n) {
    const Vec logits = W * z.col(n) + b;
    direct += -std::log(std::exp(logits(y[std::size_t(n)])) / logits.array().exp().sum());
  }
  direct = direct / N + 0.15 * W.squaredNorm();
  REQUIRE(f == Approx(direct).epsilon(1e-12));
  const std::vector<double> fd =
      fpt::fd_gradient([&] { return obj.value(theta, nullptr); }, theta.data(), theta.size());
  fpt::require_close("d_theta", g.data(), fd.data(), theta.size(), 1e-8);
}

TEST_CASE("probe: separable classes are classified perfectly, train and test", "[eval][probe]") {
  Rng rng(507);
  const Index D = 6, C = 3;
  const Mat centres = 6.0 * gaussian(D, C, rng);
  auto make = [&](Index n, std::vector<int>& labels) {
    Mat x(D, n);
    labels.clear();
    for (Index i = 0; i < n; ++i) {
      const int c = int(i % C);
      x.col(i) = centres.col(c) + 0.3 * gaussian(D, 1, rng);
      labels.push_back(c);
    }
    return x;
  };
  std::vector<int> ytr, yte;
  const Mat xtr = make(240, ytr), xte = make(90, yte);
  const ev::LinearProbeResult r = ev::linear_probe<double>(xtr, ytr, xte, yte, C);
  REQUIRE(r.train_accuracy == 1.0);
  REQUIRE(r.test_accuracy == 1.0);
  REQUIRE(r.converged);
  REQUIRE(r.loss < 0.1);
  REQUIRE(r.iterations > 0);
  // Deterministic: a second fit gives the same bits; float features agree.
  const ev::LinearProbeResult again = ev::linear_probe<double>(xtr, ytr, xte, yte, C);
  REQUIRE(again.loss == r.loss);
  const Eigen::MatrixXf xtrf = xtr.cast<float>(), xtef = xte.cast<float>();
  const ev::LinearProbeResult rf = ev::linear_probe<float>(xtrf, ytr, xtef, yte, C);
  REQUIRE(rf.test_accuracy == 1.0);
  REQUIRE(rf.loss == Approx(r.loss).epsilon(1e-3));
}

TEST_CASE("probe: a planted logistic model is recovered", "[eval][probe]") {
  Rng rng(508);
  const Index D = 3, C = 3, N = 20000;
  Mat Wt(C, D);
  Wt << 1.5, -1.0, 0.5,  //
      -0.5, 1.0, 2.0,    //
      0.0, 0.0, 0.0;
  const Vec bt = (Vec(C) << 0.3, -0.2, 0.0).finished();
  const Vec sd = (Vec(D) << 1.0, 2.0, 0.5).finished();
  Mat x = sd.asDiagonal() * gaussian(D, N, rng);
  x.colwise() += (Vec(D) << 1.0, 0.0, -1.0).finished();
  std::vector<Index> y;
  for (Index n = 0; n < N; ++n) {
    const Vec p = (Wt * x.col(n) + bt).array().exp();
    double u = flowprior::uniform01(rng) * p.sum();
    Index c = 0;
    while (c < C - 1 && u >= p(c)) u -= p(c++);
    y.push_back(c);
  }
  ev::LinearProbeConfig cfg;
  cfg.l2 = 1e-8;
  ev::LinearProbe probe(C, cfg);
  probe.fit<double>(x, y);
  REQUIRE(probe.converged());
  // Back to raw features: W_raw = W / s, b_raw = b - W_raw mu; compare up to the common shift
  // of all classes (softmax is invariant to it) by subtracting class C-1's row.
  const Mat Wr = probe.weight() * probe.feature_scale().cwiseInverse().asDiagonal();
  const Vec br = probe.bias() - Wr * probe.feature_mean();
  for (Index c = 0; c < C - 1; ++c) {
    for (Index i = 0; i < D; ++i)
      REQUIRE(Wr(c, i) - Wr(C - 1, i) == Approx(Wt(c, i) - Wt(C - 1, i)).margin(0.2));
    REQUIRE(br(c) - br(C - 1) == Approx(bt(c) - bt(C - 1)).margin(0.2));
  }
  // The logits are those of the raw-coordinate model.
  const Mat L = probe.logits<double>(x.leftCols(5));
  REQUIRE((L - ((Wr * x.leftCols(5)).colwise() + br)).cwiseAbs().maxCoeff() < 1e-10);
}

TEST_CASE("probe: bad labels, empty sets, shapes and options are typed errors", "[eval][probe]") {
  Rng rng(509);
  const Mat x = gaussian(3, 6, rng), t = gaussian(3, 4, rng);
  const std::vector<int> y{0, 1, 2, 0, 1, 2}, yt{0, 1, 1, 2};
  REQUIRE_THROWS_AS(ev::LinearProbe(1), flowprior::config_error);
  ev::LinearProbeConfig cfg;
  cfg.l2 = -1;
  REQUIRE_THROWS_AS(ev::LinearProbe(3, cfg), flowprior::config_error);
  cfg = {};
  cfg.max_iter = 0;
  REQUIRE_THROWS_AS(ev::LinearProbe(3, cfg), flowprior::config_error);
  ev::LinearProbe probe(3);
  REQUIRE_THROWS_AS(probe.predict<double>(x), flowprior::error);  // not fitted
  REQUIRE_THROWS_AS(probe.fit<double>(x, std::vector<int>{0, 1, 3, 0, 1, 2}),
                    flowprior::value_error);
  REQUIRE_THROWS_AS(probe.fit<double>(x, std::vector<int>{0, 1, -1, 0, 1, 2}),
                    flowprior::value_error);
  REQUIRE_THROWS_AS(probe.fit<double>(x, std::vector<int>{0, 1}), flowprior::shape_error);
  REQUIRE_THROWS_AS(probe.fit<double>(gaussian(3, 0, rng), std::vector<int>{}),
                    flowprior::value_error);
  Mat bad = x;
  bad(0, 0) = std::nan("");
  REQUIRE_THROWS_AS(probe.fit<double>(bad, y), flowprior::numeric_error);
  REQUIRE_THROWS_AS(ev::linear_probe<double>(x, y, gaussian(2, 4, rng), yt, 3),
                    flowprior::shape_error);
  REQUIRE_THROWS_AS(ev::linear_probe<double>(x, y, gaussian(3, 0, rng), std::vector<int>{}, 3),
                    flowprior::value_error);
  REQUIRE_THROWS_AS(ev::linear_probe<double>(x, y, t, std::vector<int>{0, 1, 5, 2}, 3),
                    flowprior::value_error);
  probe.fit<double>(x, y);
  REQUIRE_THROWS_AS(probe.accuracy<double>(t, std::vector<int>{0, 1}), flowprior::shape_error);
  REQUIRE_THROWS_AS(probe.predict<double>(gaussian(4, 2, rng)), flowprior::shape_error);
}
