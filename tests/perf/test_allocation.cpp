// Hot paths are allocation-free once warmed up (docs/benchmarks.md "Allocations"): after a first
// step has sized every workspace, buffer and per-thread GEMM packing area, further steps of the
// same shapes perform no heap allocation on any thread. And the thread team changes nothing but
// rounding: one thread and two give the same losses and gradients.
#include <Eigen/Core>
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/nn/transformer.hpp>
#include <flowprior/train/classification.hpp>
#include <flowprior/train/latent_alignment.hpp>
#include <flowprior/train/mar.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "malloc_counter.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Prior;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace train = flowprior::train;

namespace {

// Big enough that every product takes the threaded path and needs packing buffers far above
// Eigen's 128 KB stack limit: 256 x 256 weights times 1024 draws.
nn::AdaLNMlpConfig config() {
  nn::AdaLNMlpConfig c;
  c.dim = 4;
  c.width = 256;
  c.depth = 2;
  c.time_freq_dim = 64;
  return c;
}

template <class S>
void randomize(nn::AdaLNMlp<S>& net, Rng& rng) {
  auto p = net.parameters();
  for (const auto& t : net.layout().tensors()) {
    const double b = t.shape.size() == 2 ? std::sqrt(3.0 / double(t.shape[1])) : 0.3;
    const double c = t.name.find("ln.weight") != std::string::npos ? 1.0 : 0.0;
    for (Index i = 0; i < t.size(); ++i)
      p[t.offset + i] = static_cast<S>(c + flowprior::uniform(rng, -b, b));
  }
}

template <class S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> normal_mat(Index r, Index c, Rng& rng) {
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(flowprior::normal01(rng));
  return m;
}

/// False (with a warning) in sanitizer builds, where malloc cannot be interposed.
bool can_count() {
  if (fpt::malloc_counting_available()) return true;
  WARN("heap counting is not available in sanitizer builds; checked by the ci preset");
  return false;
}

/// Allocations of one call of f.
template <class F>
long allocations_of(F& f) {
  fpt::start_counting_allocations();
  f();
  return fpt::stop_counting_allocations();
}

/// Allocations during `reps` calls of f once warmed up by two calls.
///
/// With BLIS the calls run on one thread. BLIS hands each concurrent caller one of its per-caller
/// small-block pools (control trees, thread info) in arrival order, and a pool grows by a block
/// the first time it serves a product that needs more than it has served; with a thread team,
/// which pool serves which product depends on scheduling, so no fixed warm-up settles every pool
/// (a CI run saw 5 quiet calls in a row and then 5 small blocks). With one caller at a time one
/// pool serves every product, and two calls warm it up, as they do Eigen's kernel and OpenBLAS.
/// The team's own paths (per-thread packing areas, the split of a product) are checked by the
/// other engines' runs of this test (docs/backends.md).
template <class F>
long allocations_after_warmup(F&& f, int reps = 3) {
  const bool blis = std::string(flowprior::detail::gemm_engine_name()) == "blis";
  const int threads = Eigen::nbThreads();
  if (blis) Eigen::setNbThreads(1);
  f();
  f();
  fpt::start_counting_allocations();
  for (int i = 0; i < reps; ++i) f();
  const long n = fpt::stop_counting_allocations();
  if (blis) Eigen::setNbThreads(threads);
  return n;
}

}  // namespace

TEMPLATE_TEST_CASE("a warmed-up alignment step allocates nothing", "[perf][alloc]", float, double) {
  if (!can_count()) return;
  using S = TestType;
  const Index group = GENERATE(1, 16);
  CAPTURE(group);
  nn::AdaLNMlp<S> net(config());
  Rng rng(11);
  randomize(net, rng);
  const Prior<nn::AdaLNMlp<S>> prior(net, Convention::Paper);
  train::AlignConfig cfg;
  cfg.time_group = group;
  cfg.sampler = loss::TimeSampler::stratified();
  const Index n = 256;
  auto y = normal_mat<S>(4, n, rng);
  train::LatentAligner<nn::AdaLNMlp<S>> aligner(prior, Convention::Paper, n, cfg);
  REQUIRE(allocations_after_warmup([&] { aligner.step(y, rng); }) == 0);
}

TEMPLATE_TEST_CASE("a warmed-up flow-matching training step allocates nothing", "[perf][alloc]",
                   float, double) {
  if (!can_count()) return;
  using S = TestType;
  const Index group = GENERATE(1, 16);
  CAPTURE(group);
  nn::AdaLNMlp<S> net(config());
  Rng rng(12);
  randomize(net, rng);
  train::TrainerConfig cfg;  // AdamW, clipping, EMA: the whole step
  cfg.batch = 256;
  cfg.time_group = group;
  cfg.sampler = loss::TimeSampler::stratified();
  cfg.adam.weight_decay = 0.01;
  const auto targets = normal_mat<S>(4, 1000, rng);
  train::FlowMatchingTrainer<nn::AdaLNMlp<S>> trainer(net, Convention::Code, cfg);
  REQUIRE(allocations_after_warmup([&] { trainer.step(targets, rng); }) == 0);
}

TEST_CASE("a warmed-up forward, VJP, JVP and divergence allocate nothing", "[perf][alloc]") {
  if (!can_count()) return;
  using Net = nn::AdaLNMlp<float>;
  Net net(config());
  Rng rng(13);
  randomize(net, rng);
  const Index B = 1024;
  const auto x = normal_mat<float>(4, B, rng), u = normal_mat<float>(4, B, rng);
  Eigen::VectorXf t(B), div(B);
  for (Index i = 0; i < B; ++i) t[i] = static_cast<float>(flowprior::uniform01(rng));
  Eigen::MatrixXf v(4, B), dx = Eigen::MatrixXf::Zero(4, B), dv(4, B);
  Net::Workspace ws;
  REQUIRE(allocations_after_warmup([&] {
            net.forward(x, t, v, ws);
            net.vjp_x(ws, u, dx);
            net.jvp_x(ws, u, dv);
            net.divergence(x, t, v, div, ws);
          }) == 0);
}

TEST_CASE("a warmed-up tokenizer forward and backward allocate nothing", "[perf][alloc]") {
  if (!can_count()) return;
  // Big enough for the threaded paths: 16 images of 8 x 8 patches plus 16 latent tokens, width 128.
  nn::TokenizerConfig cfg;
  cfg.image_size = 32;
  cfg.channels = 3;
  cfg.patch = 4;
  cfg.width = 128;
  cfg.heads = 4;
  cfg.depth = 2;
  cfg.dec_depth = 1;
  cfg.latent_tokens = 16;
  cfg.latent_dim = 8;
  cfg.qk_norm = true;
  nn::TokenizerAE<float> ae(cfg);
  Rng rng(14);
  ae.init(rng);
  const Index B = 16, D = ae.image_dim(), d = cfg.latent_dim, BT = B * cfg.latent_tokens;
  const auto x = normal_mat<float>(D, B, rng), w = normal_mat<float>(D, B, rng),
             g = normal_mat<float>(d, BT, rng);
  Eigen::MatrixXf y(d, BT), recon(D, B), dx = Eigen::MatrixXf::Zero(D, B);
  Eigen::VectorXf dp = Eigen::VectorXf::Zero(ae.num_params());
  nn::TokenizerAE<float>::Workspace ws;
  REQUIRE(allocations_after_warmup([&] {
            ae.encode(x, y, ws);
            ae.decode(y, recon, ws);
            ae.forward(x, y, recon, ws);
            ae.backward(ws, w, g, dp, dx);
          }) == 0);
  // The reconstruction training step on the same model, with a latent loss, two batch sizes:
  // forward, loss, backward, clip, AdamW, EMA.
  train::ReconstructionConfig rc;
  rc.schedule = flowprior::optim::LrSchedule::cosine(1e-3, 2, 100);
  train::ReconstructionTrainer<nn::TokenizerAE<float>> tr(ae, rc);
  const train::ReconstructionTrainer<nn::TokenizerAE<float>>::LatentLoss latent =
      [](flowprior::ConstMatrixView<float>, flowprior::MatrixView<float> d_y,
         flowprior::CpuBackend::Context&) {
        d_y(0, 0) = 1e-3f;
        return 0.0;
      };
  const auto x8 = x.leftCols(8).eval();
  REQUIRE(allocations_after_warmup([&] {
            tr.step(x, latent);
            tr.step(x8);
          }) == 0);
  // With the alignment loss of a prior on the latent tokens as the latent loss (draws, the
  // prior's forward and input VJP on B T tokens).
  nn::AdaLNMlpConfig pc;
  pc.dim = cfg.latent_dim;
  pc.width = 32;
  pc.depth = 2;
  pc.time_freq_dim = 16;
  nn::AdaLNMlp<float> net(pc);
  net.init(rng);
  const Prior<nn::AdaLNMlp<float>> prior(net, Convention::Code);
  train::LatentAlignmentLoss<nn::AdaLNMlp<float>> align(prior, Convention::Paper, {}, rng);
  const train::ReconstructionTrainer<nn::TokenizerAE<float>>::LatentLoss aligned = std::ref(align);
  // Alternating batch sizes shrink and regrow the draws within their capacity: that must not
  // allocate either (it did: the size check built its message string).
  REQUIRE(allocations_after_warmup([&] {
            tr.step(x, aligned);
            tr.step(x8, aligned);
          }) == 0);
}

TEST_CASE("a warmed-up Gaussian-posterior tokenizer pass and step allocate nothing",
          "[perf][alloc][posterior]") {
  if (!can_count()) return;
  nn::TokenizerConfig cfg;
  cfg.image_size = 16;
  cfg.channels = 3;
  cfg.patch = 4;
  cfg.width = 64;
  cfg.heads = 4;
  cfg.depth = 1;
  cfg.latent_tokens = 8;
  cfg.latent_dim = 8;
  cfg.posterior = nn::Posterior::gaussian;
  nn::TokenizerAE<float> ae(cfg);
  Rng rng(15);
  ae.init(rng);
  const Index B = 8, D = ae.image_dim(), d = cfg.latent_dim, BT = B * cfg.latent_tokens;
  const auto x = normal_mat<float>(D, B, rng), w = normal_mat<float>(D, B, rng),
             g = normal_mat<float>(d, BT, rng), eps = normal_mat<float>(d, BT, rng);
  Eigen::MatrixXf y(d, BT), recon(D, B), dx = Eigen::MatrixXf::Zero(D, B);
  Eigen::VectorXf dp = Eigen::VectorXf::Zero(ae.num_params());
  nn::TokenizerAE<float>::Workspace ws;
  double kl = 0;
  REQUIRE(allocations_after_warmup([&] {
            ae.encode(x, y, ws);
            ae.forward(x, eps, y, recon, ws);
            kl += ae.kl_divergence(ws);
            ae.backward(ws, w, g, 0.1, dp, dx);
          }) == 0);
  train::ReconstructionConfig rc;
  rc.kl_beta = 0.01;
  train::ReconstructionTrainer<nn::TokenizerAE<float>> tr(ae, rc);
  const auto x4 = x.leftCols(4).eval();
  REQUIRE(allocations_after_warmup([&] {
            tr.step(x, rng);
            tr.step(x4, rng);
          }) == 0);
  REQUIRE(kl > 0);
}

TEST_CASE("a warmed-up MAR training step allocates nothing", "[perf][alloc][mar]") {
  if (!can_count()) return;
  nn::MarConfig cfg;
  cfg.tokens = 16;
  cfg.token_dim = 4;
  cfg.width = 32;
  cfg.depth = 2;
  cfg.heads = 4;
  cfg.head_width = 32;
  cfg.head_depth = 2;
  cfg.time_freq_dim = 32;
  nn::MarGenerator<float> m(cfg);
  Rng rng(21);
  m.init(rng);
  train::MarTrainer<float> tr(m, Convention::Code, {});
  const Index B = 8, BT = B * cfg.tokens;
  const auto x = normal_mat<float>(cfg.token_dim, BT, rng);
  // The masked count varies from step to step; the largest mask (all tokens) sizes every buffer
  // and the head's workspace once, so that no later mask needs more.
  const std::vector<std::uint8_t> all(static_cast<std::size_t>(BT), 1);
  loss::FlowDraws<float> draws;
  loss::draw(draws, Convention::Code, BT, cfg.token_dim, tr.config().K,
             loss::TimeSampler::uniform(), rng);
  std::vector<float> g(static_cast<std::size_t>(m.num_params()), 0.0f);
  train::mar_loss(m, Convention::Code, x, flowprior::ConstVectorView<std::uint8_t>(all.data(), BT),
                  draws, tr.scratch(), flowprior::VectorView<float>(g.data(), m.num_params()));
  REQUIRE(allocations_after_warmup([&] { tr.step(x, rng); }, 5) == 0);
}

TEST_CASE("a warmed-up adaLN transformer block forward and backward allocate nothing",
          "[perf][alloc]") {
  if (!can_count()) return;
  // Big enough for the threaded paths: 8 sequences of 64 tokens, width 128, qk-norm.
  using Blk = nn::AdaLNTransformerBlock<float, flowprior::CpuBackend>;
  const Index C = 128, B = 8, L = 64, cond = 64;
  nn::ParamLayout layout;
  const Blk blk = Blk::make(layout, "blocks.0", C, 4, 4 * C, cond, true);
  Rng rng(19);
  Eigen::VectorXf p(layout.total()), dp = Eigen::VectorXf::Zero(layout.total());
  blk.init(p.data(), rng, false);  // a modulation that is not zero: every branch runs
  const auto x = normal_mat<float>(C, B * L, rng), c = normal_mat<float>(cond, B, rng),
             w = normal_mat<float>(C, B * L, rng);
  Eigen::MatrixXf h(C, B * L), dh(C, B * L), dc = Eigen::MatrixXf::Zero(cond, B);
  flowprior::CpuBackend::Context ctx;
  nn::SequenceMap<flowprior::CpuBackend> map;
  nn::Arena<float, flowprior::CpuBackend> fwd, bwd;
  Blk::Cache k;
  Blk::Scratch s;
  map.update(ctx, B, L);
  for (int pass = 0; pass < 2; ++pass) {
    fwd.begin(pass == 0);
    k = blk.carve(fwd, B, L, map);
    if (pass == 0) fwd.reserve_counted();
    bwd.begin(pass == 0);
    s = blk.carve_scratch(bwd, B, L);
    if (pass == 0) bwd.reserve_counted();
  }
  REQUIRE(allocations_after_warmup([&] {
            map.update(ctx, B, L);  // a map of a size already seen: rewritten in place
            h = x;
            dh = w;
            blk.forward(ctx, p.data(), c, h, k);
            blk.backward(ctx, p.data(), k, dh, dc, dp.data(), s);
          }) == 0);
  REQUIRE(dc.norm() > 0);
}

TEMPLATE_TEST_CASE("a warmed-up alignment step in the reversed convention allocates nothing",
                   "[perf][alloc]", float, double) {
  // The prior was trained in the code convention and aligns in the paper one: the losses fold
  // the sign of the reversed view into their coefficients, no batch is copied (prior.hpp).
  if (!can_count()) return;
  using S = TestType;
  const Index group = GENERATE(1, 16);
  CAPTURE(group);
  nn::AdaLNMlp<S> net(config());
  Rng rng(15);
  randomize(net, rng);
  const Prior<nn::AdaLNMlp<S>> prior =
      Prior<nn::AdaLNMlp<S>>(net, Convention::Code).as(Convention::Paper);
  REQUIRE(prior.reversed());
  train::AlignConfig cfg;
  cfg.time_group = group;
  cfg.sampler = loss::TimeSampler::stratified();
  const Index n = 256;
  auto y = normal_mat<S>(4, n, rng);
  train::LatentAligner<nn::AdaLNMlp<S>> aligner(prior, Convention::Paper, n, cfg);
  REQUIRE(allocations_after_warmup([&] { aligner.step(y, rng); }) == 0);
}

TEST_CASE("warmed-up reversed-view calls and explicit draws allocate nothing", "[perf][alloc]") {
  if (!can_count()) return;
  using Net = nn::AdaLNMlp<float>;
  Net net(config());
  Rng rng(16);
  randomize(net, rng);
  const Prior<Net> rev = Prior<Net>(net, Convention::Paper).as(Convention::Code);
  const Index B = 1024, N = 256, K = 4;
  const auto x = normal_mat<float>(4, B, rng), u = normal_mat<float>(4, B, rng);
  Eigen::VectorXf t(B), div(B), d_p = Eigen::VectorXf::Zero(net.num_params());
  for (Index i = 0; i < B; ++i) t[i] = static_cast<float>(flowprior::uniform01(rng));
  Eigen::MatrixXf v(4, B), dx = Eigen::MatrixXf::Zero(4, B), dv(4, B);
  Prior<Net>::Workspace ws;
  REQUIRE(allocations_after_warmup([&] {
            rev.forward(x, t, v, ws);
            rev.vjp_x(ws, u, dx);
            rev.jvp_x(ws, u, dv);
            rev.backward(ws, u, dx, d_p);
            rev.divergence(x, t, v, div, ws);
          }) == 0);
  // Explicit draws: assign reuses the buffers; the losses with them, reversed.
  loss::FlowDraws<float> draws;
  loss::LossWorkspace<Net> lws;
  const auto y = normal_mat<float>(4, N, rng);
  Eigen::MatrixXf d_y = Eigen::MatrixXf::Zero(4, N);
  const loss::AlignmentOptions opt{loss::Reduction::Mean, 0.01, false};
  REQUIRE(allocations_after_warmup([&] {
            draws.assign(Convention::Code, N, 4, K, t, u);
            loss::alignment_loss(rev, Convention::Code, y, draws, opt, lws, {}, d_y);
            loss::flow_matching_loss(rev, Convention::Code, y, draws, loss::Reduction::Mean, lws,
                                     d_p);
          }) == 0);
}

TEST_CASE("a warmed-up classifier pass and training step allocate nothing", "[perf][alloc]") {
  if (!can_count()) return;
  // The Fashion-MNIST shapes at a batch of 64: 784 -> 256 -> 128 -> 10, threaded products.
  nn::MlpClassifier<float> m(nn::ClassifierConfig{});
  Rng rng(31);
  m.init(rng);
  const Index B = 64;
  const auto x = normal_mat<float>(784, B, rng), u = normal_mat<float>(10, B, rng);
  std::vector<std::int32_t> y(static_cast<std::size_t>(B));
  for (Index j = 0; j < B; ++j) y[std::size_t(j)] = static_cast<std::int32_t>(j % 10);
  Eigen::MatrixXf z(10, B), f(128, B), dx = Eigen::MatrixXf::Zero(784, B);
  Eigen::VectorXf dp = Eigen::VectorXf::Zero(m.num_params());
  nn::MlpClassifier<float>::Workspace ws;
  REQUIRE(allocations_after_warmup([&] {
            m.features(x, f, ws);
            m.forward(x, z, ws);
            m.backward(ws, u, dp, dx);
          }) == 0);
  // The training step (forward, cross-entropy, backward, clip, AdamW, EMA), two batch sizes.
  train::ClassifierTrainerConfig tc;
  tc.use_ema = true;
  train::ClassifierTrainer<nn::MlpClassifier<float>> tr(m, tc);
  const auto x32 = x.leftCols(32).eval();
  const std::vector<std::int32_t> y32(y.begin(), y.begin() + 32);
  REQUIRE(allocations_after_warmup([&] {
            tr.step(x, y);
            tr.step(x32, y32);
          }) == 0);
}

TEST_CASE("one thread and two give the same losses and gradients", "[perf][threads]") {
  using Net = nn::AdaLNMlp<double>;
  const Index group = GENERATE(1, 16);
  CAPTURE(group);
  Net net(config());
  Rng rng(14);
  randomize(net, rng);
  const Prior<Net> prior(net, Convention::Code);
  const Index N = 256, K = 4;
  const auto y = normal_mat<double>(4, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, Convention::Code, N, 4, K, loss::TimeSampler::stratified(), rng, false, group);
  struct Result {
    double align = 0, fm = 0;
    Eigen::MatrixXd d_y;
    Eigen::VectorXd d_p;
  };
  auto run = [&](int threads) {
    Eigen::setNbThreads(threads);
    Result r;
    loss::LossWorkspace<Net> ws;
    r.d_y = Eigen::MatrixXd::Zero(4, N);
    r.d_p = Eigen::VectorXd::Zero(net.num_params());
    const loss::AlignmentOptions opt{loss::Reduction::Mean, 1.0, false};
    r.align = loss::alignment_loss(prior, Convention::Code, y, draws, opt, ws, {}, r.d_y);
    r.fm = loss::flow_matching_loss(prior, Convention::Code, y, draws, loss::Reduction::Mean, ws,
                                    r.d_p);
    return r;
  };
  const Result one = run(1), two = run(2);
  Eigen::setNbThreads(0);  // back to the OpenMP default
  REQUIRE(one.align == Approx(two.align).epsilon(1e-13));
  REQUIRE(one.fm == Approx(two.fm).epsilon(1e-13));
  REQUIRE((one.d_y - two.d_y).norm() <= 1e-12 * one.d_y.norm());
  REQUIRE((one.d_p - two.d_p).norm() <= 1e-12 * one.d_p.norm());
  REQUIRE(one.d_p.norm() > 0);
}

TEST_CASE("a warmed-up sample and log-likelihood allocate nothing", "[perf][alloc]") {
  if (!can_count()) return;
  namespace ode = flowprior::ode;
  using Net = nn::AdaLNMlp<float>;
  Net net(config());
  Rng rng(17);
  randomize(net, rng);
  const Prior<Net> prior(net, Convention::Code);
  const Index B = 64;
  const auto x = normal_mat<float>(4, B, rng);
  Eigen::MatrixXf z(4, B), z_noise(4, B);
  Eigen::VectorXf logp(B);
  ode::OdeWorkspace<Net> ws;
  ode::SolverOptions dopri;
  dopri.atol = dopri.rtol = 1e-2;
  ode::LikelihoodOptions exact;
  exact.solver.method = ode::Method::RK4;
  exact.solver.steps = 2;
  ode::LikelihoodOptions hutch = exact;
  hutch.divergence = ode::Divergence::Hutchinson;
  hutch.probes = 2;
  Index nfe = 0;
  REQUIRE(allocations_after_warmup([&] {
            z = x;
            nfe = ode::sample(prior, Convention::Code, z, dopri, ws).nfe;
            ode::log_likelihood(prior, Convention::Code, x, logp, exact, ws, nullptr, z_noise);
            ode::log_likelihood(prior, Convention::Code, x, logp, hutch, ws, &rng);
          }) == 0);
  REQUIRE(nfe >= 7);  // Dopri5 took at least one step after its starting-step probe
}

TEMPLATE_TEST_CASE("the ODE primitives and a solve give the same bits on one thread and two",
                   "[perf][threads]", float, double) {
  // Big enough that every column pass takes the threaded path (over 16k elements).
  using S = TestType;
  using B = flowprior::CpuBackend;
  using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  namespace ode = flowprior::ode;
  Rng rng(18);
  const Index d = 64, N = 300, K = 2;
  const M z = normal_mat<S>(d + 1, N * K, rng), eps = normal_mat<S>(d, N * K, rng);
  std::vector<M> k;
  for (int i = 0; i < 6; ++i) k.push_back(normal_mat<S>(d + 1, N * K, rng));
  M bad = z;
  bad(7, 450) = std::numeric_limits<S>::quiet_NaN();
  bad(3, 451) = std::numeric_limits<S>::infinity();
  struct Result {
    M comb, dots;
    Eigen::Matrix<S, Eigen::Dynamic, 1> logp;
    double err = 0, start = 0;
    flowprior::NonFinite found;
    M sampled;
  };
  auto run = [&](int threads) {
    Eigen::setNbThreads(threads);
    B::Context ctx;
    Result r;
    r.comb.resize(d + 1, N * K);
    flowprior::StageTerms<S> terms;
    for (int i = 0; i < 6; ++i) terms.add(0.1 * i - 0.25, k[i]);
    B::lincomb(ctx, z, -0.3, terms, flowprior::MatrixView<S>(r.comb));
    r.err = B::error_sq_sum(ctx, z, r.comb, 0.3, terms, 1e-4, 1e-3);
    r.start = B::scaled_sq_sum<S>(ctx, z, k[0], k[1], 1e-4, 1e-3);
    r.found = B::find_nonfinite(ctx, flowprior::ConstMatrixView<S>(bad));
    r.dots = M::Zero(d + 1, N);
    const flowprior::MatrixView<S> dots(r.dots);
    B::probe_dots(ctx, eps, flowprior::ConstMatrixView<S>(k[2]).row_block(0, d), K,
                  dots.row_block(d, 1));
    r.logp.resize(N);
    B::normal_logpdf(ctx, flowprior::ConstMatrixView<S>(z).row_block(0, d).col_block(0, N),
                     dots.row_block(d, 1), flowprior::VectorView<S>(r.logp.data(), N));
    // A whole solve of the analytic mixture field (host loops in the field, primitives around).
    using Gmm = flowprior::analytic::GaussianMixtureField<S>;
    Eigen::MatrixXd means(2, 2);
    means << -1.0, 1.0, 0.5, -0.5;
    Gmm field(flowprior::analytic::GaussianMixture(means, {0.4, 0.6}, {0.5, 0.3}));
    const Prior<Gmm> prior(field, Convention::Paper);
    r.sampled = normal_mat<S>(2, 10000, rng);
    ode::OdeWorkspace<Gmm> ws;
    ode::SolverOptions opt;
    opt.atol = opt.rtol = 1e-4;
    ode::sample(prior, Convention::Paper, r.sampled, opt, ws);
    return r;
  };
  const Rng start = rng;
  const Result one = run(1);
  rng = start;
  const Result two = run(2);
  Eigen::setNbThreads(0);  // back to the OpenMP default
  REQUIRE(one.comb == two.comb);
  REQUIRE(one.err == two.err);
  REQUIRE(one.start == two.start);
  REQUIRE(one.found.i == 7);
  REQUIRE(one.found.j == 450);
  REQUIRE(two.found.i == 7);
  REQUIRE(two.found.j == 450);
  REQUIRE(one.dots == two.dots);
  REQUIRE(one.logp == two.logp);
  REQUIRE(one.sampled == two.sampled);
}
