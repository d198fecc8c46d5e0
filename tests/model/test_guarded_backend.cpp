// The stack on a backend whose memory the host cannot touch (tests/support/guarded_backend.hpp):
// every buffer is PROT_NONE outside the backend's functions, so any code above backend/ that
// reads or writes backend memory directly dies here. On it, the fields, the prior (both
// conventions), the draws and both losses must give CpuBackend's results bit for bit: swapping
// the backend changes no line above backend/ (docs/backends.md "Policy").
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/attention.hpp>
#include <flowprior/nn/transformer.hpp>

#include "catch.hpp"
#include "field_checks.hpp"
#include "guarded_backend.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Prior;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::GuardedBackend;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;

namespace {

// A matrix in guarded memory, filled from (and read back to) the host.
struct Dev {
  fpt::GuardedBuffer<double> buf;
  Index rows = 0, cols = 0;
  explicit Dev(const Mat& m) : rows(m.rows()), cols(m.cols()) {
    GuardedBackend::copy_from_host(m.data(), m.size(), buf);
  }
  Dev(Index r, Index c) : rows(r), cols(c) {
    const Mat zero = Mat::Zero(r, c);
    GuardedBackend::copy_from_host(zero.data(), zero.size(), buf);
  }
  MatrixView<double> view() { return {buf.data(), rows, cols}; }
  ConstMatrixView<double> cview() const { return {buf.data(), rows, cols}; }
  VectorView<double> vec() { return {buf.data(), rows * cols}; }
  ConstVectorView<double> cvec() const { return {buf.data(), rows * cols}; }
  Mat host() const {
    Mat m(rows, cols);
    GuardedBackend::copy_to_host(buf.data(), m.size(), m.data());
    return m;
  }
};

nn::AdaLNMlpConfig small_config() {
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 16;
  c.depth = 2;
  c.time_freq_dim = 8;
  return c;
}

// The CPU network with random parameters, and the same network on the guarded backend.
struct Pair {
  nn::AdaLNMlp<double> cpu;
  nn::AdaLNMlp<double, GuardedBackend> dev;
  explicit Pair(const nn::AdaLNMlpConfig& c) : cpu(c), dev(c) {
    Rng rng(5);
    fpt::randomize_field(cpu, rng);
    GuardedBackend::copy_from_host(cpu.parameters().data, cpu.num_params(), dev.parameters().data);
  }
};

}  // namespace

TEST_CASE("guarded backend: host access to its memory outside the backend is fatal",
          "[backend][guarded]") {
  // Without this, the test below would prove nothing: a child process reads a guarded buffer
  // from the host and must not survive it.
  fpt::GuardedBuffer<double> b;
  GuardedBackend::resize(b, 4);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGSEGV, SIG_DFL);    // die by the signal, without the test framework's report
    volatile double x = b.data()[1];  // a host read of backend memory
    (void)x;
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  // Killed by SIGSEGV; under AddressSanitizer, whose handler may keep the signal, a failed exit.
  const bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
  const bool failed = WIFEXITED(status) && WEXITSTATUS(status) != 0;
  REQUIRE((killed || failed));
  // Through the memory functions it is fine.
  const double in[4] = {1, 2, 3, 4};
  double out[4] = {};
  GuardedBackend::copy_from_host(in, 4, b.data());
  GuardedBackend::copy_to_host(b.data(), 4, out);
  REQUIRE(out[3] == 4);
}

TEST_CASE("guarded backend: the field's passes equal CpuBackend's bit for bit",
          "[backend][guarded]") {
  const bool grouped = GENERATE(false, true);
  CAPTURE(grouped);
  Pair p(small_config());
  Rng rng(6);
  const Index B = 6, d = 3, K = 2;
  const Mat x = fpt::random_mat(d, B, rng);
  Vec t = fpt::random_vec(B, rng, 0.0, 1.0);
  if (grouped) t << 0.25, 0.25, 0.25, 0.75, 0.75, 0.75;
  const Mat dv = fpt::random_mat(d, B, rng), dx = fpt::random_mat(d, B * K, rng);
  // CPU.
  nn::AdaLNMlp<double>::Workspace cws;
  Mat v(d, B), gx = Mat::Zero(d, B), jv(d, B * K), vd(d, B);
  Vec gp = Vec::Zero(p.cpu.num_params()), div(B);
  p.cpu.forward(x, t, v, cws);
  p.cpu.backward(cws, dv, gx, gp);
  p.cpu.jvp_x(cws, dx, jv, K);
  p.cpu.divergence(x, t, vd, div, cws);
  // Guarded.
  nn::AdaLNMlp<double, GuardedBackend>::Workspace gws;
  Dev X(x), T(t), DV(dv), DX(dx), V(d, B), GX(d, B), GP(p.cpu.num_params(), 1), JV(d, B * K),
      VD(d, B), DIV(B, 1);
  p.dev.forward(X.cview(), T.cvec(), V.view(), gws);
  REQUIRE(p.dev.time_groups(gws) == (grouped ? 2 : B));
  p.dev.backward(gws, DV.cview(), GX.view(), GP.vec());
  p.dev.jvp_x(gws, DX.cview(), JV.view(), K);
  p.dev.divergence(X.cview(), T.cvec(), VD.view(), DIV.vec(), gws);
  REQUIRE(V.host() == v);
  REQUIRE(GX.host() == gx);
  REQUIRE(GP.host() == Mat(gp));
  REQUIRE(JV.host() == jv);
  REQUIRE(VD.host() == vd);
  REQUIRE(DIV.host() == Mat(div));
  REQUIRE(gws.context().calls > 0);
  // A bad time is reported with its value, read on the error path only.
  Vec bad = t;
  bad[4] = 1.5;
  Dev TB(bad);
  REQUIRE_THROWS_WITH(p.dev.forward(X.cview(), TB.cvec(), V.view(), gws),
                      Catch::Contains("got 1.5 at index 4"));
}

TEST_CASE("guarded backend: draws, the reversed prior and both losses equal CpuBackend's",
          "[backend][guarded]") {
  const Convention trained = Convention::Code;
  const Convention conv = GENERATE(Convention::Code, Convention::Paper);  // Paper: reversed
  const bool antithetic = GENERATE(false, true);
  CAPTURE(int(conv), antithetic);
  Pair p(small_config());
  using CpuNet = nn::AdaLNMlp<double>;
  using DevNet = nn::AdaLNMlp<double, GuardedBackend>;
  const Prior<CpuNet> cprior = Prior<CpuNet>(p.cpu, trained).as(conv);
  const Prior<DevNet> dprior = Prior<DevNet>(p.dev, trained).as(conv);
  const Index N = 5, d = 3, K = 4;
  Rng r1(8), r2(8);
  Rng r3(9);
  const Mat y = fpt::random_mat(d, N, r3), dvh = fpt::random_mat(d, N, r3);
  loss::FlowDraws<double> cd;
  loss::FlowDraws<double, GuardedBackend> dd;
  loss::draw(cd, conv, N, d, K, loss::TimeSampler::stratified(), r1, antithetic, 2);
  loss::draw(dd, conv, N, d, K, loss::TimeSampler::stratified(), r2, antithetic, 2);
  REQUIRE(fpt::host_copy(dd.t.data(), N * K) == std::vector<double>(cd.t.begin(), cd.t.end()));
  REQUIRE(fpt::host_copy(dd.eps.data(), d * N * K) ==
          std::vector<double>(cd.eps.begin(), cd.eps.end()));
  const loss::AlignmentOptions opt{loss::Reduction::SumChannels, 0.7, false};
  // Alignment loss and its gradient in the rows.
  loss::LossWorkspace<CpuNet> cws;
  loss::LossWorkspace<DevNet> dws;
  Mat cg = Mat::Zero(d, N);
  Vec crow(N);
  const double cl = loss::alignment_loss(cprior, conv, y, cd, opt, cws, crow, cg);
  Dev Y(y), G(d, N), ROW(N, 1);
  const double dl =
      loss::alignment_loss(dprior, conv, Y.cview(), dd, opt, dws, ROW.vec(), G.view());
  REQUIRE(dl == cl);
  REQUIRE(G.host() == cg);
  REQUIRE(ROW.host() == Mat(crow));
  // Flow-matching loss and its parameter gradient.
  Vec cgp = Vec::Zero(p.cpu.num_params());
  const double cf = loss::flow_matching_loss(cprior, conv, y, cd, loss::Reduction::Mean, cws, cgp);
  Dev GP(p.cpu.num_params(), 1);
  const double df =
      loss::flow_matching_loss(dprior, conv, Y.cview(), dd, loss::Reduction::Mean, dws, GP.vec());
  REQUIRE(df == cf);
  REQUIRE(GP.host() == Mat(cgp));
  // The prior's own entry points (reversed: times and signs through the backend).
  typename Prior<CpuNet>::Workspace cpw;
  typename Prior<DevNet>::Workspace dpw;
  const Vec t = fpt::random_vec(N, r3, 0.0, 1.0);
  Mat v(d, N), gx = Mat::Zero(d, N), vd(d, N);
  Vec gp = Vec::Zero(p.cpu.num_params()), div(N);
  cprior.forward(y, t, v, cpw);
  cprior.vjp_x(cpw, dvh, gx);
  cprior.backward(cpw, dvh, Mat(), gp);
  cprior.divergence(y, t, vd, div, cpw);
  Dev T(t), DVH(dvh), V(d, N), GX(d, N), GPP(p.cpu.num_params(), 1), VD(d, N), DIV(N, 1);
  dprior.forward(Y.cview(), T.cvec(), V.view(), dpw);
  dprior.vjp_x(dpw, DVH.cview(), GX.view());
  dprior.backward(dpw, DVH.cview(), MatrixView<double>(), GPP.vec());
  dprior.divergence(Y.cview(), T.cvec(), VD.view(), DIV.vec(), dpw);
  REQUIRE(V.host() == v);
  REQUIRE(GX.host() == gx);
  REQUIRE(GPP.host() == Mat(gp));
  REQUIRE(VD.host() == vd);
  REQUIRE(DIV.host() == Mat(div));
  // A non-finite row is named with its value and position.
  Mat ybad = y;
  ybad(2, 3) = std::numeric_limits<double>::quiet_NaN();
  Dev YB(ybad);
  REQUIRE_THROWS_WITH(loss::alignment_loss(dprior, conv, YB.cview(), dd, opt, dws),
                      Catch::Contains("argument 'y' has a non-finite value nan at (2, 3)"));
}

TEST_CASE("guarded backend: attention equals CpuBackend's bit for bit", "[backend][guarded]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  const Index C = 8, H = 2, B = 2, T = 3;
  nn::ParamLayout layout, same;  // the same parameters: one layout each
  const auto ca =
      nn::MultiHeadAttention<double, flowprior::CpuBackend>::make(layout, "a", C, H, qk_norm);
  const auto ga = nn::MultiHeadAttention<double, GuardedBackend>::make(same, "a", C, H, qk_norm);
  Rng rng(12);
  const Mat p = fpt::random_mat(layout.total(), 1, rng), x = fpt::random_mat(C, B * T, rng),
            dy = fpt::random_mat(C, B * T, rng);
  nn::Arena<double, flowprior::CpuBackend> cf, cb;
  nn::Arena<double, GuardedBackend> gf, gb;
  typename nn::MultiHeadAttention<double, flowprior::CpuBackend>::Cache cc;
  typename nn::MultiHeadAttention<double, flowprior::CpuBackend>::Scratch cs;
  typename nn::MultiHeadAttention<double, GuardedBackend>::Cache gc;
  typename nn::MultiHeadAttention<double, GuardedBackend>::Scratch gs;
  for (int pass = 0; pass < 2; ++pass) {
    cf.begin(pass == 0);
    cb.begin(pass == 0);
    gf.begin(pass == 0);
    gb.begin(pass == 0);
    cc = ca.carve(cf, B, T);
    cs = ca.carve_scratch(cb, B, T);
    gc = ga.carve(gf, B, T);
    gs = ga.carve_scratch(gb, B, T);
    if (pass == 0) {
      cf.reserve_counted();
      cb.reserve_counted();
      gf.reserve_counted();
      gb.reserve_counted();
    }
  }
  flowprior::CpuBackend::Context cctx;
  GuardedBackend::Context gctx;
  Mat y(C, B * T), dx = Mat::Zero(C, B * T), dp = Mat::Zero(p.rows(), 1);
  ca.forward(cctx, p.data(), x, y, cc);
  ca.backward(cctx, p.data(), x, cc, dy, dx, dp.data(), cs);
  Dev P(p), X(x), DY(dy), Y(C, B * T), DX(C, B * T), DP(p.rows(), 1);
  ga.forward(gctx, P.buf.data(), X.cview(), Y.view(), gc);
  ga.backward(gctx, P.buf.data(), X.cview(), gc, DY.cview(), DX.view(), DP.buf.data(), gs);
  REQUIRE(Y.host() == y);
  REQUIRE(DX.host() == dx);
  REQUIRE(DP.host() == dp);
}

TEST_CASE("guarded backend: the adaLN transformer block equals CpuBackend's bit for bit",
          "[backend][guarded][dit]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  using Cpu = flowprior::CpuBackend;
  const Index C = 8, H = 2, B = 3, T = 4, hidden = 16, cond = 5;
  nn::ParamLayout layout, same;
  const auto cb =
      nn::AdaLNTransformerBlock<double, Cpu>::make(layout, "b", C, H, hidden, cond, qk_norm);
  const auto gb = nn::AdaLNTransformerBlock<double, GuardedBackend>::make(same, "b", C, H, hidden,
                                                                          cond, qk_norm);
  Rng rng(17);
  const Mat p = fpt::random_mat(layout.total(), 1, rng), x = fpt::random_mat(C, B * T, rng),
            c = fpt::random_mat(cond, B, rng), dy = fpt::random_mat(C, B * T, rng);
  // The sequence maps: one in host memory, one written in guarded memory by the primitive.
  flowprior::CpuBackend::Context cctx;
  GuardedBackend::Context gctx;
  nn::SequenceMap<Cpu> cmap;
  nn::SequenceMap<GuardedBackend> gmap;
  cmap.update(cctx, B, T);
  gmap.update(gctx, B, T);
  nn::Arena<double, Cpu> cf, cs;
  nn::Arena<double, GuardedBackend> gf, gs;
  typename nn::AdaLNTransformerBlock<double, Cpu>::Cache ck;
  typename nn::AdaLNTransformerBlock<double, Cpu>::Scratch csc;
  typename nn::AdaLNTransformerBlock<double, GuardedBackend>::Cache gk;
  typename nn::AdaLNTransformerBlock<double, GuardedBackend>::Scratch gsc;
  for (int pass = 0; pass < 2; ++pass) {
    cf.begin(pass == 0);
    cs.begin(pass == 0);
    gf.begin(pass == 0);
    gs.begin(pass == 0);
    ck = cb.carve(cf, B, T, cmap);
    csc = cb.carve_scratch(cs, B, T);
    gk = gb.carve(gf, B, T, gmap);
    gsc = gb.carve_scratch(gs, B, T);
    if (pass == 0) {
      cf.reserve_counted();
      cs.reserve_counted();
      gf.reserve_counted();
      gs.reserve_counted();
    }
  }
  Mat h = x, dh = dy, dc = Mat::Zero(cond, B), dp = Mat::Zero(p.rows(), 1);
  cb.forward(cctx, p.data(), c, h, ck);
  cb.backward(cctx, p.data(), ck, dh, dc, dp.data(), csc);
  Dev P(p), X(x), Cd(c), DH(dy), DC(cond, B), DP(p.rows(), 1);
  gb.forward(gctx, P.buf.data(), Cd.cview(), X.view(), gk);
  gb.backward(gctx, P.buf.data(), gk, DH.view(), DC.view(), DP.buf.data(), gsc);
  REQUIRE(X.host() == h);
  REQUIRE(DH.host() == dh);
  REQUIRE(DC.host() == dc);
  REQUIRE(DP.host() == dp);
  REQUIRE(gctx.calls > 0);
}

TEST_CASE("guarded backend: trainer, aligner and EMA copy equal CpuBackend's bit for bit",
          "[backend][guarded]") {
  using CpuNet = nn::AdaLNMlp<double>;
  using DevNet = nn::AdaLNMlp<double, GuardedBackend>;
  Pair p(small_config());
  const Index d = 3, N = 11;
  Rng r0(13);
  const Mat targets = fpt::random_mat(d, N, r0);
  flowprior::train::TrainerConfig tc;
  tc.batch = 7;
  tc.K = 2;
  tc.time_group = 2;
  tc.antithetic = true;
  tc.schedule = flowprior::optim::LrSchedule::constant(1e-2, 2);
  tc.ema_decay = 0.9;
  flowprior::train::FlowMatchingTrainer<CpuNet> ct(p.cpu, Convention::Code, tc);
  flowprior::train::FlowMatchingTrainer<DevNet> dt(p.dev, Convention::Code, tc);
  Dev TG(targets);
  Rng r1(14), r2(14);
  for (int s = 0; s < 3; ++s) {
    const auto a = ct.step(targets, r1);
    const auto b = dt.step(TG.cview(), r2);
    REQUIRE(b.loss == a.loss);
    REQUIRE(b.grad_norm == a.grad_norm);
  }
  REQUIRE(
      fpt::host_copy(p.dev.parameters().data, p.dev.num_params()) ==
      std::vector<double>(p.cpu.parameters().data, p.cpu.parameters().data + p.cpu.num_params()));
  REQUIRE(dt.optimizer().m() == ct.optimizer().m());
  REQUIRE(dt.optimizer().v() == ct.optimizer().v());
  REQUIRE(dt.ema().weights() == ct.ema().weights());
  CpuNet ce(small_config());
  DevNet de(small_config());
  ct.copy_ema_to(ce);
  dt.copy_ema_to(de);
  REQUIRE(fpt::host_copy(de.parameters().data, de.num_params()) == ct.ema().weights());
  // The aligner on the (frozen) EMA prior, in the other convention (reversed view).
  const Prior<CpuNet> cprior = Prior<CpuNet>(ce, Convention::Code).as(Convention::Paper);
  const Prior<DevNet> dprior = Prior<DevNet>(de, Convention::Code).as(Convention::Paper);
  flowprior::train::AlignConfig ac;
  ac.time_group = 2;
  flowprior::train::LatentAligner<CpuNet> ca(cprior, Convention::Paper, N, ac);
  flowprior::train::LatentAligner<DevNet> da(dprior, Convention::Paper, N, ac);
  Mat y = targets;
  Dev Y(targets);
  for (int s = 0; s < 3; ++s) REQUIRE(da.step(Y.view(), r2) == ca.step(y, r1));
  REQUIRE(Y.host() == y);
  // Bad data is named with its value.
  Mat bad = targets;
  bad(1, 4) = std::numeric_limits<double>::infinity();
  Dev BAD(bad);
  REQUIRE_THROWS_WITH(dt.step_on(BAD.cview(), r2),
                      Catch::Contains("argument 'batch' has a non-finite value inf at (1, 4)"));
}

TEST_CASE("guarded backend: sampling and likelihoods equal CpuBackend's bit for bit",
          "[backend][guarded]") {
  using CpuNet = nn::AdaLNMlp<double>;
  using DevNet = nn::AdaLNMlp<double, GuardedBackend>;
  namespace ode = flowprior::ode;
  const auto method = GENERATE(ode::Method::RK4, ode::Method::Dopri5);
  const auto div = GENERATE(ode::Divergence::Exact, ode::Divergence::Hutchinson);
  CAPTURE(int(method), int(div));
  Pair p(small_config());
  const Prior<CpuNet> cprior = Prior<CpuNet>(p.cpu, Convention::Code).as(Convention::Paper);
  const Prior<DevNet> dprior = Prior<DevNet>(p.dev, Convention::Code).as(Convention::Paper);
  const Index d = 3, B = 4;
  Rng r0(15);
  const Mat z0 = fpt::random_mat(d, B, r0);
  ode::SolverOptions so;
  so.method = method;
  so.steps = 8;
  so.atol = so.rtol = 1e-4;
  ode::OdeWorkspace<CpuNet> cws;
  ode::OdeWorkspace<DevNet> dws;
  Mat z = z0;
  Dev Z(z0);
  const auto cs = ode::sample(cprior, Convention::Paper, MatrixView<double>(z), so, cws);
  const auto ds = ode::sample(dprior, Convention::Paper, Z.view(), so, dws);
  REQUIRE(ds.nfe == cs.nfe);
  REQUIRE(Z.host() == z);
  ode::LikelihoodOptions lo;
  lo.solver = so;
  lo.divergence = div;
  lo.probes = 2;
  Vec lp(B);
  Mat zn(d, B);
  Dev LP(B, 1), ZN(d, B);
  Rng r1(16), r2(16);
  ode::log_likelihood(cprior, Convention::Paper, z0, lp, lo, cws, &r1, zn);
  ode::log_likelihood(dprior, Convention::Paper, Dev(z0).cview(), LP.vec(), lo, dws, &r2,
                      ZN.view());
  REQUIRE(LP.host() == Mat(lp));
  REQUIRE(ZN.host() == zn);
}

TEST_CASE("guarded backend: state dicts save and load through host copies", "[backend][guarded]") {
  Pair p(small_config());
  const std::string path = "guarded_state_dict.safetensors";
  flowprior::io::save_state_dict(p.dev, path);
  nn::AdaLNMlp<double> cpu(small_config());
  nn::AdaLNMlp<double, GuardedBackend> dev(small_config());
  flowprior::io::load_state_dict(cpu, flowprior::io::Safetensors::read(path));
  flowprior::io::load_state_dict(dev, flowprior::io::Safetensors::read(path));
  std::remove(path.c_str());
  const std::vector<double> want(p.cpu.parameters().data,
                                 p.cpu.parameters().data + p.cpu.num_params());
  REQUIRE(std::vector<double>(cpu.parameters().data, cpu.parameters().data + cpu.num_params()) ==
          want);
  REQUIRE(fpt::host_copy(dev.parameters().data, dev.num_params()) == want);
}
