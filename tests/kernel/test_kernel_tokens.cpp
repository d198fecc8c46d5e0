// The token primitives of KernelBackend (backend/kernel_tokens.hpp), run on the host executor
// against CpuBackend: the column softmax and its backward, the softmax cross-entropy (sums,
// ties, NaN, the gradient in place and skipped), patchify / unpatchify, the per-token table and
// its gradient (accumulated), the sequence map and the Gaussian posterior (clamp edges, with and
// without noise, the KL over several chunks).
#include <cstdint>
#include <flowprior/core/random.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::Index;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;
using fpt::kp::tol;

TEMPLATE_TEST_CASE("kernel backend: column softmax and its backward match the CPU",
                   "[kernel][tokens]", float, double) {
  using S = TestType;
  flowprior::Rng rng(21);
  Contexts c;
  const Index rows = 9, cols = 7;
  Mat<S> A(rows, cols, 3);
  A.random(rng, -3.0, 3.0);
  for (Index i = 0; i < rows; ++i) A.at(i, 2) += S(400);  // a shifted column: exp must not overflow
  A.at(4, 5) = A.at(1, 5);                                // a tie for the maximum
  Mat<S> P_cpu = A, P_ker = A;
  Cpu::softmax_cols(c.cpu, P_cpu.view());
  Ker::softmax_cols(c.ker, P_ker.view());
  require_close(P_cpu, P_ker, "softmax_cols");
  for (Index j = 0; j < cols; ++j) {
    double s = 0;
    for (Index i = 0; i < rows; ++i) s += double(P_ker.at(i, j));
    REQUIRE(std::abs(s - 1.0) < 10 * tol<S>());  // a real distribution, not two equal wrongs
  }

  Mat<S> D(rows, cols, 2);
  D.random(rng);
  Mat<S> D_cpu = D, D_ker = D;
  Cpu::softmax_backward_cols(c.cpu, P_cpu.cview(), D_cpu.view());
  Ker::softmax_backward_cols(c.ker, P_cpu.cview(), D_ker.view());
  require_close(D_cpu, D_ker, "softmax_backward_cols");

  // Empty operands are no-ops.
  Mat<S> E(0, 4), F(5, 0);
  Ker::softmax_cols(c.ker, E.view());
  Ker::softmax_cols(c.ker, F.view());
  Ker::softmax_backward_cols(c.ker, F.cview(), F.view());
}

TEMPLATE_TEST_CASE("kernel backend: softmax cross-entropy matches the CPU", "[kernel][tokens]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(22);
  Contexts c;
  const Index C = 5, B = 8;
  Mat<S> Z(C, B, 2);
  Z.random(rng, -4.0, 4.0);
  std::vector<std::int32_t> y(B);
  for (Index b = 0; b < B; ++b) y[std::size_t(b)] = std::int32_t((b * 3) % C);
  // Ties: column 0 has its largest logit at 1 and 3, labelled 3 (not correct: the first counts);
  // column 1 the same, labelled 1 (correct); column 2 is labelled at its maximum.
  for (Index k = 0; k < C; ++k) Z.at(k, 0) = Z.at(k, 1) = S(-1);
  Z.at(1, 0) = Z.at(3, 0) = Z.at(1, 1) = Z.at(3, 1) = S(2);
  y[0] = 3;
  y[1] = 1;
  Z.at(Index(y[2]), 2) = S(9);
  const double scale = 1.0 / double(B);

  Mat<S> G0(C, B, 1);
  G0.random(rng);  // overwritten, not accumulated
  Mat<S> g_cpu = G0, g_ker = G0;
  const flowprior::XentSums s_cpu =
      Cpu::softmax_xent_cols(c.cpu, Z.cview(), y.data(), scale, g_cpu.view());
  const flowprior::XentSums s_ker =
      Ker::softmax_xent_cols(c.ker, Z.cview(), y.data(), scale, g_ker.view());
  require_close(s_cpu.loss, s_ker.loss, "xent loss", 1e-14);  // both in double, same order
  REQUIRE(s_ker.correct == s_cpu.correct);
  REQUIRE(s_ker.correct >= 2);  // columns 1 and 2 at least
  require_close(g_cpu, g_ker, "xent d_logits");

  // No gradient: the same sums, the output untouched.
  const flowprior::XentSums s_nog =
      Ker::softmax_xent_cols(c.ker, Z.cview(), y.data(), scale, flowprior::MatrixView<S>());
  REQUIRE(s_nog.loss == s_ker.loss);
  REQUIRE(s_nog.correct == s_ker.correct);

  // In place: the gradient over the logits.
  Mat<S> zi_cpu = Z, zi_ker = Z;
  const flowprior::XentSums a_cpu =
      Cpu::softmax_xent_cols(c.cpu, zi_cpu.cview(), y.data(), scale, zi_cpu.view());
  const flowprior::XentSums a_ker =
      Ker::softmax_xent_cols(c.ker, zi_ker.cview(), y.data(), scale, zi_ker.view());
  REQUIRE(a_ker.loss == s_ker.loss);
  REQUIRE(a_ker.correct == a_cpu.correct);
  require_close(zi_cpu, g_ker, "xent in place (cpu)");
  require_close(zi_ker, g_ker, "xent in place (kernel)", 0.0, 0.0);

  // A NaN logit makes the loss NaN on both; an empty batch sums to zero.
  Mat<S> Zn = Z;
  Zn.at(2, 4) = std::numeric_limits<S>::quiet_NaN();
  const double ln_cpu =
      Cpu::softmax_xent_cols(c.cpu, Zn.cview(), y.data(), scale, flowprior::MatrixView<S>()).loss;
  const double ln_ker =
      Ker::softmax_xent_cols(c.ker, Zn.cview(), y.data(), scale, flowprior::MatrixView<S>()).loss;
  REQUIRE(std::isnan(ln_cpu));
  REQUIRE(std::isnan(ln_ker));
  Mat<S> Z0(C, 0);
  const flowprior::XentSums e =
      Ker::softmax_xent_cols(c.ker, Z0.cview(), y.data(), scale, Z0.view());
  REQUIRE(e.loss == 0.0);
  REQUIRE(e.correct == 0);
}

TEMPLATE_TEST_CASE("kernel backend: patches, per-token tables and the sequence map match the CPU",
                   "[kernel][tokens]", float, double) {
  using S = TestType;
  flowprior::Rng rng(23);
  Contexts c;
  const Index ch = 2, H = 4, W = 6, p = 2, B = 3, T = (H / p) * (W / p);
  Mat<S> img(ch * H * W, B, 3);
  img.random(rng);
  Mat<S> t_cpu(ch * p * p, B * T, 1), t_ker(ch * p * p, B * T, 2);
  Cpu::patchify(c.cpu, img.cview(), ch, H, W, p, t_cpu.view());
  Ker::patchify(c.ker, img.cview(), ch, H, W, p, t_ker.view());
  require_close(t_cpu, t_ker, "patchify", 0.0, 0.0);  // a permutation: exact
  // Pixel (c 1, y 3, x 4) of image 2 is token (1, 2) = 5, element 1 * 4 + 1 * 2 + 0.
  REQUIRE(t_ker.at(6, 2 * T + 5) == img.at(1 * H * W + 3 * W + 4, 2));

  Mat<S> tok(ch * p * p, B * T, 1);
  tok.random(rng);
  Mat<S> i_cpu(ch * H * W, B, 2), i_ker(ch * H * W, B, 1);
  Cpu::unpatchify(c.cpu, tok.cview(), ch, H, W, p, i_cpu.view());
  Ker::unpatchify(c.ker, tok.cview(), ch, H, W, p, i_ker.view());
  require_close(i_cpu, i_ker, "unpatchify", 0.0, 0.0);
  Mat<S> back(ch * H * W, B, 1);
  Ker::unpatchify(c.ker, t_ker.cview(), ch, H, W, p, back.view());
  require_close(img, back, "unpatchify(patchify)", 0.0, 0.0);

  // Per-token table: added to every sequence; its gradient accumulated over the sequences.
  const Index D = 5, L = 3, nb = 4;
  Mat<S> table(D, L, 2), X(D, nb * L, 1);
  table.random(rng);
  X.random(rng);
  Mat<S> x_cpu = X, x_ker = X;
  Cpu::add_per_token(c.cpu, table.cview(), x_cpu.view());
  Ker::add_per_token(c.ker, table.cview(), x_ker.view());
  require_close(x_cpu, x_ker, "add_per_token", 0.0, 0.0);
  Mat<S> dt0(D, L, 3);
  dt0.random(rng);  // accumulated into
  Mat<S> dt_cpu = dt0, dt_ker = dt0;
  Cpu::sum_per_token(c.cpu, X.cview(), dt_cpu.view());
  Ker::sum_per_token(c.ker, X.cview(), dt_ker.view());
  require_close(dt_cpu, dt_ker, "sum_per_token", 0.0, 0.0);  // the same order: the same bits
  REQUIRE(dt_ker.at(1, 2) != dt0.at(1, 2));

  // Sequence map, in Index and in int32.
  std::vector<Index> m_cpu(10, -7), m_ker(10, -7);
  Cpu::sequence_map(c.cpu, 3, flowprior::VectorView<Index>(m_cpu.data(), 10));
  Ker::sequence_map(c.ker, 3, flowprior::VectorView<Index>(m_ker.data(), 10));
  REQUIRE(m_ker == m_cpu);
  REQUIRE(m_ker[9] == 3);
  std::vector<std::int32_t> m32(7, -1);
  Ker::sequence_map(c.ker, 2, flowprior::VectorView<std::int32_t>(m32.data(), 7));
  REQUIRE(m32 == std::vector<std::int32_t>{0, 0, 1, 1, 2, 2, 3});
  Ker::sequence_map(c.ker, 2, flowprior::VectorView<std::int32_t>(nullptr, 0));
}

TEMPLATE_TEST_CASE("kernel backend: the Gaussian posterior and its KL match the CPU",
                   "[kernel][tokens]", float, double) {
  using S = TestType;
  flowprior::Rng rng(24);
  Contexts c;
  const Index d = 4, N = 6;
  Mat<S> mom(2 * d, N, 2);
  mom.random(rng, -3.0, 3.0);
  // The clamp's edges: below, at -30, at 20, above.
  mom.at(d + 0, 1) = S(-45);
  mom.at(d + 1, 1) = S(-30);
  mom.at(d + 2, 1) = S(20);
  mom.at(d + 3, 1) = S(31);
  Mat<S> eps(d, N, 1), dz(d, N, 3);
  eps.random(rng);
  dz.random(rng);
  const S w = S(0.3);
  for (const bool noise : {true, false}) {
    CAPTURE(noise);
    const flowprior::ConstMatrixView<S> e = noise ? eps.cview() : flowprior::ConstMatrixView<S>();
    Mat<S> lv_cpu(d, N, 1), lv_ker(d, N, 2), z_cpu(d, N, 3), z_ker(d, N, 1);
    Cpu::gaussian_posterior_forward(c.cpu, mom.cview(), e, lv_cpu.view(), z_cpu.view());
    Ker::gaussian_posterior_forward(c.ker, mom.cview(), e, lv_ker.view(), z_ker.view());
    require_close(lv_cpu, lv_ker, "posterior logvar", 0.0, 0.0);
    require_close(z_cpu, z_ker, "posterior z");
    REQUIRE(lv_ker.at(0, 1) == S(-30));
    REQUIRE(lv_ker.at(3, 1) == S(20));

    Mat<S> dm0(2 * d, N, 1);
    dm0.random(rng);  // written, not accumulated
    Mat<S> dm_cpu = dm0, dm_ker = dm0;
    Cpu::gaussian_posterior_backward(c.cpu, mom.cview(), lv_cpu.cview(), e, dz.cview(), w,
                                     dm_cpu.view());
    Ker::gaussian_posterior_backward(c.ker, mom.cview(), lv_cpu.cview(), e, dz.cview(), w,
                                     dm_ker.view());
    require_close(dm_cpu, dm_ker, "posterior d_moments");
    REQUIRE(dm_ker.at(d + 0, 1) == S(0));  // clamped: no gradient
    REQUIRE(dm_ker.at(d + 1, 1) != S(0));  // at the edge: passed through

    require_close(Cpu::gaussian_kl(c.cpu, mom.cview(), lv_cpu.cview()),
                  Ker::gaussian_kl(c.ker, mom.cview(), lv_cpu.cview()), "gaussian_kl", 1e-13);
  }

  // The KL over several chunks (1800 elements, kChunk 1024): partials differ from one running
  // sum by rounding only.
  const Index d2 = 9, N2 = 200;
  Mat<S> mom2(2 * d2, N2, 1), lv2(d2, N2, 2);
  mom2.random(rng, -2.0, 2.0);
  Mat<S> z2(d2, N2);
  Cpu::gaussian_posterior_forward(c.cpu, mom2.cview(), flowprior::ConstMatrixView<S>(), lv2.view(),
                                  z2.view());
  const double kl_cpu = Cpu::gaussian_kl(c.cpu, mom2.cview(), lv2.cview());
  const double kl_ker = Ker::gaussian_kl(c.ker, mom2.cview(), lv2.cview());
  REQUIRE(kl_cpu > 100.0);
  require_close(kl_cpu, kl_ker, "gaussian_kl (chunks)", 1e-13);
  // A NaN is found; an empty operand sums to zero.
  Mat<S> lvn = lv2;
  lvn.at(3, 150) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(std::isnan(Ker::gaussian_kl(c.ker, mom2.cview(), lvn.cview())));
  REQUIRE(Ker::gaussian_kl(c.ker, flowprior::ConstMatrixView<S>(),
                           flowprior::ConstMatrixView<S>(nullptr, d2, 0)) == 0.0);
}
