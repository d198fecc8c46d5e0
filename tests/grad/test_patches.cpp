// Patches and per-token tables (docs/math/patches.md): patchify against the definition (1),
// unpatchify as its inverse, add_per_token / sum_per_token as adjoints (3), and the 2-D
// sine-cosine table against (4).
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/patches.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using fpt::Mat;

TEST_CASE("patches: patchify is (1), unpatchify its inverse", "[patches][op]") {
  CpuBackend::Context ctx;
  Rng rng(81);
  const Index C = 3, H = 6, W = 4, p = 2, B = 2, T = (H / p) * (W / p);
  const Mat img = fpt::random_mat(C * H * W, B, rng);
  Mat tok(C * p * p, B * T);
  CpuBackend::patchify(ctx, ConstMatrixView<double>(img), C, H, W, p, MatrixView<double>(tok));
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < C; ++c)
        for (Index i = 0; i < p; ++i)
          for (Index j = 0; j < p; ++j) {
            const Index gy = t / (W / p), gx = t % (W / p);
            REQUIRE(tok(c * p * p + i * p + j, b * T + t) ==
                    img(c * H * W + (gy * p + i) * W + gx * p + j, b));
          }
  Mat back = Mat::Zero(C * H * W, B);
  CpuBackend::unpatchify(ctx, ConstMatrixView<double>(tok), C, H, W, p, MatrixView<double>(back));
  REQUIRE(back == img);
}

TEST_CASE("patches: sum_per_token is the adjoint of add_per_token", "[patches][op]") {
  CpuBackend::Context ctx;
  Rng rng(82);
  const Index D = 5, T = 4, B = 3;
  const Mat table = fpt::random_mat(D, T, rng), x = fpt::random_mat(D, B * T, rng),
            w = fpt::random_mat(D, B * T, rng);
  Mat y = x;
  CpuBackend::add_per_token(ctx, ConstMatrixView<double>(table), MatrixView<double>(y));
  for (Index b = 0; b < B; ++b)
    REQUIRE((y.middleCols(b * T, T) - x.middleCols(b * T, T) - table).norm() < 1e-15);
  Mat d = Mat::Constant(D, T, 0.5);
  CpuBackend::sum_per_token(ctx, ConstMatrixView<double>(w), MatrixView<double>(d));
  Mat expect = Mat::Constant(D, T, 0.5);
  for (Index b = 0; b < B; ++b) expect += w.middleCols(b * T, T);
  REQUIRE((d - expect).norm() < 1e-14);
}

TEST_CASE("patches: the 2-D sine-cosine table is (4)", "[patches]") {
  const Index D = 8, gh = 2, gw = 3, q = D / 4;
  const std::vector<double> t = flowprior::nn::sincos_pos_embed_2d<double>(D, gh, gw);
  REQUIRE(t.size() == std::size_t(D * gh * gw));
  for (Index tok = 0; tok < gh * gw; ++tok) {
    const double x = double(tok % gw), y = double(tok / gw);
    for (Index k = 0; k < q; ++k) {
      const double om = std::pow(10000.0, -double(k) / double(q));
      REQUIRE(t[std::size_t(tok * D + k)] == std::sin(x * om));
      REQUIRE(t[std::size_t(tok * D + q + k)] == std::cos(x * om));
      REQUIRE(t[std::size_t(tok * D + 2 * q + k)] == std::sin(y * om));
      REQUIRE(t[std::size_t(tok * D + 3 * q + k)] == std::cos(y * om));
    }
  }
  // Token (x 1, y 0): the first entries are sin(1), sin(1e-2) for D = 8 (q = 2, omega 1, 0.01).
  REQUIRE(t[std::size_t(1 * D + 0)] == Approx(std::sin(1.0)));
  REQUIRE(t[std::size_t(1 * D + 1)] == Approx(std::sin(0.01)));
  REQUIRE_THROWS_AS(flowprior::nn::sincos_pos_embed_2d<double>(6, 2, 2), flowprior::config_error);
  REQUIRE_THROWS_AS(flowprior::nn::sincos_pos_embed_2d<double>(8, 0, 2), flowprior::config_error);
}
