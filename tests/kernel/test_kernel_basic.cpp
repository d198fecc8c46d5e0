// The simple primitives of KernelBackend (backend/kernel_basic.hpp) and its products, run on the
// host executor against CpuBackend: element-wise passes, column sums, traces, the gather, the
// Philox noise (same bits: both evaluate it in double), the time scans and GEMM with every
// transpose, beta in {0, 1, 0.5} (beta 0 over NaN), and the batched products.
#include <cstdint>
#include <flowprior/core/random.hpp>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::Index;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;

TEMPLATE_TEST_CASE("kernel backend: element-wise and column primitives match the CPU", "[kernel]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(11);
  Contexts c;
  const Index rows = 7, cols = 13;
  Mat<S> A(rows, cols, 3), B0(rows, cols, 2);
  A.random(rng);
  B0.random(rng);
  std::vector<S> b(rows);
  for (auto& x : b) x = static_cast<S>(flowprior::uniform(rng, -1, 1));

  auto both = [&](auto&& op, const char* what) {
    Mat<S> x = B0, y = B0;
    op(c.cpu, x, Cpu{});
    op(c.ker, y, Ker{});
    require_close(x, y, what);
  };
  both(
      [&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::broadcast_cols(ctx, b.data(), o.view()); },
      "broadcast_cols");
  both([&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::add_cols(ctx, b.data(), o.view()); },
       "add_cols");
  both([&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::fill(ctx, o.view(), S(0.25)); }, "fill");
  both([&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::scale(ctx, o.view(), S(-1.5)); },
       "scale");
  both([&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::copy(ctx, A.cview(), o.view()); },
       "copy");
  both(
      [&](auto& ctx, Mat<S>& o, auto be) { decltype(be)::axpy(ctx, S(0.75), A.cview(), o.view()); },
      "axpy");

  // Column sums accumulate into d_b.
  Mat<S> db_cpu(rows, 1), db_ker(rows, 1);
  db_cpu.random(rng);
  db_ker = db_cpu;
  Cpu::sum_cols(c.cpu, A.cview(), db_cpu.data());
  Ker::sum_cols(c.ker, A.cview(), db_ker.data());
  require_close(db_cpu, db_ker, "sum_cols");

  // Identity tiles and block traces.
  const Index d = 3, nb = 4;
  Mat<S> I_cpu(d, nb * d, 1), I_ker(d, nb * d, 1);
  Cpu::identity_tiles(c.cpu, I_cpu.view());
  Ker::identity_tiles(c.ker, I_ker.view());
  require_close(I_cpu, I_ker, "identity_tiles");
  Mat<S> J(d, nb * d, 2), tr_cpu(nb, 1), tr_ker(nb, 1);
  J.random(rng);
  Cpu::block_traces(c.cpu, J.cview(), tr_cpu.data());
  Ker::block_traces(c.ker, J.cview(), tr_ker.data());
  require_close(tr_cpu, tr_ker, "block_traces");

  // Gather.
  const std::vector<Index> idx = {3, 0, 12, 12, 5};
  Mat<S> g_cpu(rows, 5, 1), g_ker(rows, 5, 2);
  Cpu::gather_cols(c.cpu, A.cview(), idx.data(), g_cpu.view());
  Ker::gather_cols(c.ker, A.cview(), idx.data(), g_ker.view());
  require_close(g_cpu, g_ker, "gather_cols");
}

TEMPLATE_TEST_CASE("kernel backend: Philox noise and time scans give the CPU's bits", "[kernel]",
                   float, double) {
  using S = TestType;
  Contexts c;
  for (Index anti : {Index(0), Index(4)}) {
    Mat<S> n_cpu(5, 12, 1), n_ker(5, 12, 3);
    Cpu::gaussian_noise(c.cpu, 0x1234u, 7u, n_cpu.view(), anti);
    Ker::gaussian_noise(c.ker, 0x1234u, 7u, n_ker.view(), anti);
    require_close(n_cpu, n_ker, "gaussian_noise", 0.0, 0.0);  // the same bits
    // A slice from column 4 on is exactly those columns of the wider draw.
    Mat<S> slice(5, 8, 2);
    Ker::gaussian_noise(c.ker, 0x1234u, 7u, slice.view(), anti, Index(4));
    for (Index j = 0; j < 8; ++j)
      for (Index i = 0; i < 5; ++i) REQUIRE(slice.at(i, j) == n_ker.at(i, j + 4));
  }
  Mat<S> t(1, 9);
  const S tv[] = {0.1, 0.1, 0.5, 0.5, 0.5, 0.9, 0.1, 1.0, 1.0};
  for (Index i = 0; i < 9; ++i) t.at(0, i) = tv[i];
  Mat<S> r_cpu(1, 9), r_ker(1, 9);
  Cpu::reverse_times(c.cpu, t.cvec(), r_cpu.vec());
  Ker::reverse_times(c.ker, t.cvec(), r_ker.vec());
  require_close(r_cpu, r_ker, "reverse_times", 0.0, 0.0);

  std::vector<S> times_cpu(9), times_ker(9);
  std::vector<Index> map_cpu(9), map_ker(9);
  const Index runs_cpu = Cpu::time_runs(c.cpu, t.cvec(), times_cpu.data(), map_cpu.data());
  const Index runs_ker = Ker::time_runs(c.ker, t.cvec(), times_ker.data(), map_ker.data());
  REQUIRE(runs_cpu == 5);
  REQUIRE(runs_ker == runs_cpu);
  REQUIRE(map_ker == map_cpu);
  for (Index r = 0; r < runs_cpu; ++r)
    REQUIRE(times_ker[std::size_t(r)] == times_cpu[std::size_t(r)]);
  REQUIRE(Ker::time_runs(c.ker, flowprior::ConstVectorView<S>(nullptr, 0), times_ker.data(),
                         map_ker.data()) == 0);

  // First time outside [0, 1]: none, one in the second chunk, NaN.
  std::vector<S> many(3000, S(0.5));
  REQUIRE(Ker::first_outside_unit(c.ker, flowprior::ConstVectorView<S>(many.data(), 3000)) == -1);
  many[2500] = S(1.5);
  many[2900] = S(-0.5);
  REQUIRE(Ker::first_outside_unit(c.ker, flowprior::ConstVectorView<S>(many.data(), 3000)) == 2500);
  many[1024] = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(Ker::first_outside_unit(c.ker, flowprior::ConstVectorView<S>(many.data(), 3000)) == 1024);
  REQUIRE(Cpu::first_outside_unit(c.cpu, flowprior::ConstVectorView<S>(many.data(), 3000)) == 1024);
}

TEMPLATE_TEST_CASE("kernel backend: GEMM and batched GEMM match the CPU", "[kernel]", float,
                   double) {
  using S = TestType;
  flowprior::Rng rng(5);
  Contexts c;
  const Index m = 6, n = 5, k = 4;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (const double beta : {0.0, 1.0, 0.5}) {
        Mat<S> A(ta ? k : m, ta ? m : k, 2), B(tb ? n : k, tb ? k : n, 1);
        A.random(rng);
        B.random(rng);
        Mat<S> C_cpu(m, n, 3);
        if (beta == 0.0) {  // beta 0 ignores C, NaN included
          for (Index j = 0; j < n; ++j)
            for (Index i = 0; i < m; ++i) C_cpu.at(i, j) = std::numeric_limits<S>::quiet_NaN();
        } else {
          C_cpu.random(rng);
        }
        Mat<S> C_ker = C_cpu;
        Cpu::gemm(c.cpu, ta == 1, tb == 1, S(0.7), A.cview(), B.cview(), S(beta), C_cpu.view());
        Ker::gemm(c.ker, ta == 1, tb == 1, S(0.7), A.cview(), B.cview(), S(beta), C_ker.view());
        require_close(C_cpu, C_ker, "gemm");
      }

  // Batched: 2 x 3 problems of (4 x 3) = (4 x 5) (5 x 3), packed in wide matrices.
  const Index outer = 2, inner = 3, pm = 4, pk = 5, pn = 3;
  Mat<S> A(pm, pk * outer * inner), B(pk, pn * outer * inner);
  A.random(rng);
  B.random(rng);
  flowprior::GemmBatch batch;
  batch.outer = outer;
  batch.inner = inner;
  batch.a_inner = pm * pk;
  batch.a_outer = pm * pk * inner;
  batch.b_inner = pk * pn;
  batch.b_outer = pk * pn * inner;
  batch.c_inner = pm * pn;
  batch.c_outer = pm * pn * inner;
  Mat<S> C_cpu(pm, pn * outer * inner), C_ker(pm, pn * outer * inner);
  C_cpu.random(rng);
  C_ker = C_cpu;
  const flowprior::ConstMatrixView<S> a0(A.data(), pm, pk), b0(B.data(), pk, pn);
  Cpu::gemm_batched(c.cpu, false, false, S(1), a0, b0, S(0.5),
                    flowprior::MatrixView<S>(C_cpu.data(), pm, pn), batch);
  Ker::gemm_batched(c.ker, false, false, S(1), a0, b0, S(0.5),
                    flowprior::MatrixView<S>(C_ker.data(), pm, pn), batch);
  require_close(C_cpu, C_ker, "gemm_batched");
}
