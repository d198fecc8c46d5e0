// Targets made from data (docs/math/evaluation.md (10)-(14)): data::PatchPca recovers planted
// principal directions, whitens its fitting set, gathers patches in patchify's order, fixes the
// signs; data::Standardizer brings features to unit mean square; typed errors.
#include <Eigen/QR>
#include <algorithm>
#include <flowprior/data/pca.hpp>
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::data::PatchPca;
using flowprior::data::PatchPcaConfig;
using flowprior::data::Standardizer;
using flowprior::data::StandardizerScale;
using fpt::Mat;
using fpt::Vec;

namespace {

Mat gaussian(Index rows, Index cols, Rng& rng) {
  Mat m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = flowprior::normal01(rng);
  return m;
}

Mat random_rotation(Index n, Rng& rng) {
  Eigen::HouseholderQR<Mat> qr(gaussian(n, n, rng));
  return qr.householderQ() * Mat::Identity(n, n);
}

/// Images (C H H, N) whose patches are the columns of `patches` (C p^2, N Np), placed by the
/// definition of patchify (docs/math/patches.md (1)), written independently of the library.
Mat images_from_patches(const Mat& patches, Index C, Index H, Index p) {
  const Index g = H / p, Np = g * g, N = patches.cols() / Np;
  Mat img(C * H * H, N);
  for (Index b = 0; b < N; ++b)
    for (Index t = 0; t < Np; ++t)
      for (Index c = 0; c < C; ++c)
        for (Index i = 0; i < p; ++i)
          for (Index j = 0; j < p; ++j)
            img(c * H * H + ((t / g) * p + i) * H + (t % g) * p + j, b) =
                patches(c * p * p + i * p + j, b * Np + t);
  return img;
}

Mat unbiased_cov(const Mat& x) {
  const Mat c = x.colwise() - x.rowwise().mean();
  return c * c.transpose() / double(x.cols() - 1);
}

}  // namespace

TEST_CASE("pca: recovers planted principal directions and eigenvalues", "[eval][pca]") {
  Rng rng(401);
  const Index C = 1, H = 4, p = 2, P = 4, N = 1500;  // 6000 patches of 4 values
  const Mat U = random_rotation(P, rng);
  const Vec sd = (Vec(P) << 3.0, 2.0, 1.0, 0.5).finished();
  const Vec offset = (Vec(P) << 1.0, -2.0, 0.5, 3.0).finished();
  Mat patches = U * sd.asDiagonal() * gaussian(P, N * 4, rng);
  patches.colwise() += offset;
  const Mat img = images_from_patches(patches, C, H, p);

  PatchPca pca(PatchPcaConfig{C, H, p, 2});
  pca.fit<double>(img);
  REQUIRE(pca.fitted());
  REQUIRE(pca.mean().isApprox(patches.rowwise().mean(), 1e-12));
  // The eigenvalues are those of the sample covariance exactly, and the planted ones within
  // sampling error (relative sd sqrt(2 / n) ~ 2%).
  Eigen::SelfAdjointEigenSolver<Mat> es(unbiased_cov(patches));
  REQUIRE(pca.eigenvalues()(0) == Approx(es.eigenvalues()(3)).epsilon(1e-10));
  REQUIRE(pca.eigenvalues()(1) == Approx(es.eigenvalues()(2)).epsilon(1e-10));
  REQUIRE(pca.eigenvalues()(0) == Approx(9.0).epsilon(0.08));
  REQUIRE(pca.eigenvalues()(1) == Approx(4.0).epsilon(0.08));
  for (Index k = 0; k < 2; ++k) REQUIRE(std::abs(pca.components().col(k).dot(U.col(k))) > 0.99);
  REQUIRE((pca.components().transpose() * pca.components()).isApprox(Mat::Identity(2, 2), 1e-12));
  const Vec ratio = pca.explained_variance_ratio();
  REQUIRE(ratio(0) == Approx(pca.eigenvalues()(0) / unbiased_cov(patches).trace()).epsilon(1e-10));
  REQUIRE(ratio.sum() < 1.0);
}

TEST_CASE("pca: whitened coefficients have zero mean and identity covariance on the fitting set",
          "[eval][pca]") {
  Rng rng(402);
  const Index C = 2, H = 4, p = 2, P = 8, N = 60;  // 240 patches
  const Mat A = gaussian(P, P, rng);
  const Mat img = images_from_patches(A * gaussian(P, N * 4, rng), C, H, p);
  PatchPca pca(PatchPcaConfig{C, H, p, 5});
  pca.fit<double>(img);
  const Mat z = pca.project<double>(img);
  REQUIRE(z.rows() == 5);
  REQUIRE(z.cols() == N * 4);
  REQUIRE(z.rowwise().mean().norm() < 1e-12);
  REQUIRE((unbiased_cov(z) - Mat::Identity(5, 5)).cwiseAbs().maxCoeff() < 1e-10);
  // Eigenvalues descending and positive.
  for (Index k = 1; k < 5; ++k) REQUIRE(pca.eigenvalues()(k) <= pca.eigenvalues()(k - 1));
  REQUIRE(pca.eigenvalues()(4) > 0);
}

TEST_CASE("pca: columns follow patchify's order, image-major; float input agrees", "[eval][pca]") {
  Rng rng(403);
  const Index C = 2, H = 6, p = 3, N = 7, Np = 4, d = 3;
  const Mat img = gaussian(C * H * H, N, rng);
  PatchPca pca(PatchPcaConfig{C, H, p, d});
  pca.fit<double>(img);
  CpuBackend::Context ctx;
  Mat tok(C * p * p, N * Np);
  CpuBackend::patchify(ctx, ConstMatrixView<double>(img), C, H, H, p, MatrixView<double>(tok));
  const Mat expected = pca.eigenvalues().cwiseSqrt().cwiseInverse().asDiagonal() *
                       pca.components().transpose() * (tok.colwise() - pca.mean());
  const Mat z = pca.project<double>(img);
  REQUIRE((z - expected).cwiseAbs().maxCoeff() < 1e-12);

  const Eigen::MatrixXf imgf = img.cast<float>();
  Eigen::MatrixXf zf(d, N * Np);
  pca.project<float>(imgf, zf);
  REQUIRE((zf.cast<double>() - z).cwiseAbs().maxCoeff() < 1e-4);
  PatchPca pcaf(PatchPcaConfig{C, H, p, d});
  pcaf.fit<float>(imgf);
  REQUIRE((pcaf.components() - pca.components()).cwiseAbs().maxCoeff() < 1e-4);
}

TEST_CASE("pca: the sign of each direction is fixed by its largest entry", "[eval][pca]") {
  Rng rng(404);
  const Index C = 1, H = 4, p = 2, N = 40;
  const Mat img = images_from_patches(gaussian(4, 4, rng) * gaussian(4, N * 4, rng), C, H, p);
  PatchPca a(PatchPcaConfig{C, H, p, 3}), b(PatchPcaConfig{C, H, p, 3});
  a.fit<double>(img);
  for (Index k = 0; k < 3; ++k) {
    Index imax = 0;
    a.components().col(k).cwiseAbs().maxCoeff(&imax);
    REQUIRE(a.components()(imax, k) > 0);
  }
  // The same directions for negated data (the eigensolver sees the same covariance but its
  // vectors' signs are arbitrary) and for the images in reverse order.
  const Mat neg = -img;
  b.fit<double>(neg);
  REQUIRE((b.components() - a.components()).cwiseAbs().maxCoeff() < 1e-10);
  const Mat rev = img.rowwise().reverse();
  b.fit<double>(rev);
  REQUIRE((b.components() - a.components()).cwiseAbs().maxCoeff() < 1e-10);
  // A restored state projects like the fitted one.
  PatchPca c(PatchPcaConfig{C, H, p, 3});
  c.set_state(a.mean(), a.components(), a.eigenvalues(), a.total_variance());
  REQUIRE(c.project<double>(img) == a.project<double>(img));
}

TEST_CASE("pca: bad configurations, shapes, data and states are typed errors", "[eval][pca]") {
  using flowprior::config_error;
  using flowprior::numeric_error;
  using flowprior::shape_error;
  using flowprior::value_error;
  REQUIRE_THROWS_AS(PatchPca(PatchPcaConfig{1, 5, 2, 1}), config_error);  // 2 does not divide 5
  REQUIRE_THROWS_AS(PatchPca(PatchPcaConfig{1, 4, 2, 5}), config_error);  // d > C p^2 = 4
  REQUIRE_THROWS_AS(PatchPca(PatchPcaConfig{1, 4, 2, 0}), config_error);
  REQUIRE_THROWS_AS(PatchPca(PatchPcaConfig{0, 4, 2, 1}), config_error);
  REQUIRE_THROWS_AS(PatchPca(PatchPcaConfig{1, 4, 0, 1}), config_error);

  Rng rng(405);
  PatchPca pca(PatchPcaConfig{1, 4, 2, 3});
  Mat img = gaussian(16, 10, rng);
  Mat out(3, 40);
  REQUIRE_THROWS_AS(pca.project<double>(img, out), flowprior::error);  // before fit
  REQUIRE_THROWS_AS(pca.fit<double>(gaussian(15, 10, rng)), shape_error);
  REQUIRE_THROWS_AS(pca.fit<double>(gaussian(16, 0, rng)), value_error);  // 0 patches
  PatchPca big(PatchPcaConfig{1, 4, 2, 4});
  REQUIRE_THROWS_AS(big.fit<double>(gaussian(16, 1, rng)), value_error);  // 4 patches, d + 1 = 5
  Mat bad = img;
  bad(3, 7) = std::nan("");
  REQUIRE_THROWS_AS(pca.fit<double>(bad), numeric_error);
  // Degenerate: every patch lies on a line, so the second direction has no variance.
  Mat line(4, 40);
  const Vec dir = (Vec(4) << 1, 2, -1, 0.5).finished();
  for (Index j = 0; j < 40; ++j) line.col(j) = flowprior::normal01(rng) * dir;
  const Mat degenerate = images_from_patches(line, 1, 4, 2);
  PatchPca two(PatchPcaConfig{1, 4, 2, 2});
  REQUIRE_THROWS_AS(two.fit<double>(degenerate), value_error);
  REQUIRE_FALSE(two.fitted());
  PatchPca first(PatchPcaConfig{1, 4, 2, 1});
  first.fit<double>(degenerate);
  REQUIRE(std::abs(first.components().col(0).dot(dir.normalized())) == Approx(1.0));

  pca.fit<double>(img);
  Mat wrong(3, 39);
  REQUIRE_THROWS_AS(pca.project<double>(img, wrong), shape_error);
  REQUIRE_THROWS_AS(pca.project<double>(bad, out), numeric_error);
  REQUIRE_THROWS_AS(pca.set_state(pca.mean(), pca.components(), -pca.eigenvalues(), 1.0),
                    value_error);
  REQUIRE_THROWS_AS(pca.set_state(Vec::Zero(3), pca.components(), pca.eigenvalues(), 10.0),
                    shape_error);
}

TEST_CASE("standardizer: unit mean square overall (global) or per dimension", "[eval][pca]") {
  Rng rng(406);
  const Index D = 5, N = 200;
  Mat f = gaussian(D, N, rng);
  for (Index i = 0; i < D; ++i)
    f.row(i) = f.row(i) * double(i + 1) + Eigen::RowVectorXd::Constant(N, 3.0 * i);

  Standardizer g;
  g.fit<double>(f);
  Mat out(D, N);
  g.apply<double>(f, out);
  REQUIRE(out.rowwise().mean().norm() < 1e-12);
  REQUIRE(out.squaredNorm() / double(D * N) == Approx(1.0).epsilon(1e-12));
  // One scale: the dimensions keep their relative spread.
  const Vec sd_in = (f.colwise() - f.rowwise().mean()).rowwise().norm();
  const Vec sd_out = out.rowwise().norm();
  for (Index i = 0; i < D; ++i) REQUIRE(sd_out(i) / sd_out(0) == Approx(sd_in(i) / sd_in(0)));
  REQUIRE(g.scale()(0) == g.scale()(D - 1));

  Standardizer per(StandardizerScale::PerDim);
  per.fit<double>(f);
  Mat inplace = f;
  per.apply<double>(inplace, inplace);  // in place
  for (Index i = 0; i < D; ++i) REQUIRE(inplace.row(i).squaredNorm() / N == Approx(1.0));

  const Eigen::MatrixXf ff = f.cast<float>();
  Eigen::MatrixXf of(D, N);
  g.apply<float>(ff, of);
  REQUIRE((of.cast<double>() - out).cwiseAbs().maxCoeff() < 1e-5);

  // Brought to unit scale, the features feed the random projection at about unit scale.
  flowprior::data::RandomProjection<double> proj(3, D, 7);
  Mat x(3, N);
  proj.apply(out, x);
  REQUIRE(x.squaredNorm() / double(3 * N) == Approx(1.0).epsilon(0.5));
}

TEST_CASE("standardizer: too few samples, constant data, bad shapes are typed errors",
          "[eval][pca]") {
  Rng rng(407);
  Standardizer g, per(StandardizerScale::PerDim);
  Mat out(3, 4);
  REQUIRE_THROWS_AS(g.apply<double>(gaussian(3, 4, rng), out), flowprior::error);  // not fitted
  REQUIRE_THROWS_AS(g.fit<double>(gaussian(3, 1, rng)), flowprior::value_error);
  REQUIRE_THROWS_AS(g.fit<double>(Mat(Mat::Constant(3, 5, 2.0))), flowprior::value_error);
  Mat f = gaussian(3, 6, rng);
  f.row(1).setConstant(4.0);
  REQUIRE_THROWS_AS(per.fit<double>(f), flowprior::value_error);  // constant dimension
  g.fit<double>(f);                                               // fine globally
  f(0, 2) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(g.fit<double>(f), flowprior::numeric_error);
  REQUIRE_THROWS_AS(g.apply<double>(gaussian(4, 4, rng), out), flowprior::shape_error);
  Mat small(3, 3);
  REQUIRE_THROWS_AS(g.apply<double>(gaussian(3, 4, rng), small), flowprior::shape_error);
  REQUIRE_THROWS_AS(g.set_state(Vec::Zero(3), (Vec(3) << 1, 2, 1).finished()),
                    flowprior::value_error);  // Global: one scale
  REQUIRE_THROWS_AS(per.set_state(Vec::Zero(3), (Vec(3) << 1, 0, 1).finished()),
                    flowprior::value_error);
}
