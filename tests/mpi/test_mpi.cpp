// Data-parallel training on MPI (docs/distributed.md), run by CTest as `mpiexec -n 2 test_mpi`:
// two ranks at batch B take the steps of one process at batch 2B with the same draws (flow
// matching, the aligner, the autoencoder with a Gaussian posterior and the alignment term, the
// classifier, the MAR generator), the gradient sum overlapped with the backward equals the
// blocking one, the ranks stay bit-identical, a checkpoint written by rank 0 resumes on every rank bit for bit, a
// rank that throws makes the other throw at once, and (hidden tag, its own CTest run) a rank
// killed mid-run makes the other throw distributed_error within the deadline.
#define CATCH_CONFIG_RUNNER
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <flowprior/mpi/communicator.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/classification.hpp>
#include <flowprior/train/latent_alignment.hpp>
#include <flowprior/train/mar.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

using flowprior::ConstMatrixView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
namespace nn = flowprior::nn;
namespace train = flowprior::train;
namespace fmpi = flowprior::mpi;
using Net = nn::AdaLNMlp<double>;
using Catch::Matchers::Contains;

namespace {

fmpi::MpiOptions fast() {
  fmpi::MpiOptions o;
  o.timeout_s = 5.0;  // the tests' deadline: a hang fails within it
  return o;
}

nn::AdaLNMlpConfig small_net() {
  nn::AdaLNMlpConfig c;
  c.dim = 2;
  c.width = 8;
  c.depth = 2;
  c.time_freq_dim = 8;
  return c;
}

train::TrainerConfig trainer_config(Index batch) {
  train::TrainerConfig tc;
  tc.batch = batch;
  tc.K = 2;
  tc.antithetic = true;
  tc.sampler = flowprior::loss::TimeSampler::stratified();
  tc.schedule = flowprior::optim::LrSchedule::constant(1e-2);
  tc.clip_norm = 0.5;  // clipping acts on the averaged gradient
  tc.ema_decay = 0.9;
  return tc;
}

Eigen::MatrixXd targets(Index n) {
  Rng rng(3);
  Eigen::MatrixXd t(2, n);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = 2 * flowprior::uniform01(rng) - 1;
  return t;
}

std::vector<double> params_of(const VectorView<double>& p) {
  return std::vector<double>(p.data, p.data + p.size);
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
  return m;
}

// Whether every rank holds exactly rank 0's values.
bool same_on_all_ranks(train::Communicator& comm, const std::vector<double>& v) {
  std::vector<double> root = v;
  comm.broadcast(root.data(), Index(root.size()), 0, "test");
  double differ = root == v ? 0.0 : 1.0;
  comm.allreduce_sum(&differ, 1, "test");
  return differ == 0.0;
}

// Shared temporary folder of the two ranks (rank 0's pid names it).
std::filesystem::path shared_dir(train::Communicator& comm, const char* stem) {
  double pid = comm.rank() == 0 ? double(::getpid()) : 0.0;
  comm.broadcast(&pid, 1, 0, "test");
  const auto dir = std::filesystem::temp_directory_path() /
                   (std::string(stem) + std::to_string(static_cast<long>(pid)));
  if (comm.rank() == 0) std::filesystem::create_directories(dir);
  comm.barrier("test");
  return dir;
}

nn::MarConfig tiny_mar() {
  nn::MarConfig c;
  c.tokens = 4;
  c.token_dim = 3;
  c.width = 8;
  c.depth = 1;
  c.heads = 2;
  c.mlp_ratio = 2.0;
  c.head_width = 8;
  c.head_depth = 1;
  c.time_freq_dim = 8;
  return c;
}

// A MAR generator at random, non-degenerate parameters: its init (which zeroes the head's
// adaLN and final layers) plus noise on every parameter.
void init_mar(nn::MarGenerator<double>& m, std::uint64_t seed) {
  Rng r(seed);
  m.init(r);
  const auto p = m.parameters();
  for (Index i = 0; i < p.size; ++i) p.data[i] += 0.05 * flowprior::normal01(r);
}

train::MarTrainerConfig mar_trainer_config() {
  train::MarTrainerConfig tc;
  tc.K = 3;
  tc.sampler = flowprior::loss::TimeSampler::stratified();  // strata over the global draws
  tc.schedule = flowprior::optim::LrSchedule::constant(3e-3);
  tc.clip_norm = 0.5;
  tc.ema_decay = 0.9;
  return tc;
}

}  // namespace

// Tolerance: the two runs differ only in the order of the sums over the batch (each rank sums
// B rows, then the two means are added, against one sum of 2B rows) and in the GEMM blocking of
// batches of different widths: double rounding, about 1e-16 relative per step, which Adam's
// normalisation can raise to ~1e-13 over a few steps. 1e-10 leaves room; a wrong slice of the
// draws or a wrong average gives differences of order 1e-3.
TEST_CASE("mpi: two ranks at batch B take the steps of one process at batch 2B", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  REQUIRE(comm.size() == 2);
  const Eigen::MatrixXd data = targets(40);
  const ConstMatrixView<double> tv(data.data(), 2, data.cols());
  const Index B = 6, steps = 5;

  Net net(small_net());
  Rng init(comm.rank() == 0 ? 7 : 99);  // rank 1 starts elsewhere: set_communicator broadcasts
  net.init(init);
  train::FlowMatchingTrainer<Net> dist(net, Convention::Paper, trainer_config(B));
  dist.set_communicator(&comm);
  Rng rng(11);
  std::vector<double> losses;
  for (Index s = 0; s < steps; ++s) losses.push_back(dist.step(tv, rng).loss);

  Net ref(small_net());
  Rng init_ref(7);
  ref.init(init_ref);
  train::FlowMatchingTrainer<Net> one(ref, Convention::Paper, trainer_config(2 * B));
  Rng rng_ref(11);
  for (Index s = 0; s < steps; ++s) {
    const double l = one.step(tv, rng_ref).loss;
    CHECK(std::abs(l - losses[std::size_t(s)]) <= 1e-12 * std::max(1.0, std::abs(l)));
  }
  CHECK(rng() == rng_ref());  // the generators advanced alike
  const auto p = params_of(net.parameters()), q = params_of(ref.parameters());
  CHECK(max_rel_diff(p, q) < 1e-10);
  CHECK(max_rel_diff(dist.ema().weights(), one.ema().weights()) < 1e-10);
  // The ranks hold the same parameters bit for bit (they take the same averaged update).
  CHECK(same_on_all_ranks(comm, p));
}

namespace {

// Passes every call on to an MpiCommunicator and counts the started sums, the progress calls,
// and the sums already started at each step's first progress call (which comes from the
// backward's first report: the buckets of the last layers).
class Counting final : public train::Communicator {
 public:
  explicit Counting(fmpi::MpiCommunicator& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  void allreduce_sum(double* d, Index n, const char* w) override {
    ++blocking;
    c_.allreduce_sum(d, n, w);
  }
  void allreduce_sum(float* d, Index n, const char* w) override { c_.allreduce_sum(d, n, w); }
  void broadcast(double* d, Index n, int r, const char* w) override { c_.broadcast(d, n, r, w); }
  void broadcast(float* d, Index n, int r, const char* w) override { c_.broadcast(d, n, r, w); }
  void barrier(const char* w) override { c_.barrier(w); }
  void start_sum(double* d, Index n, const char* w) override {
    ++started;
    c_.start_sum(d, n, w);
  }
  void start_sum(float* d, Index n, const char* w) override { c_.start_sum(d, n, w); }
  void progress() override {
    if (progress_calls_this_step++ == 0) started_at_first_report.push_back(started);
    c_.progress();
  }
  void finish_sums(const char* w) override {
    progress_calls_this_step = 0;
    c_.finish_sums(w);
  }
  int started = 0, blocking = 0, progress_calls_this_step = 0;
  std::vector<int> started_at_first_report;

 private:
  fmpi::MpiCommunicator& c_;
};

}  // namespace

// The buckets: the flat gradient of small_net() cut from its end into pieces of 7 values, each
// started as soon as the backward reports its layers done. The sums are elementwise, and with
// two ranks each element is a + b whatever the cut, so the steps are those of the one blocking
// sum bit for bit.
TEST_CASE("mpi: the gradient sum overlapped with the backward gives the blocking sum's steps",
          "[mpi]") {
  fmpi::MpiCommunicator mpi(MPI_COMM_WORLD, fast());
  Counting comm(mpi);
  const Eigen::MatrixXd data = targets(40);
  const ConstMatrixView<double> tv(data.data(), 2, data.cols());
  const Index steps = 4;
  auto run = [&](Index bucket, std::vector<double>& losses) {
    Net net(small_net());
    Rng init(7);
    net.init(init);
    Rng noise(comm.rank() + 5);  // random, non-degenerate parameters (init zeroes the last layers)
    for (Index i = 0; i < net.num_params(); ++i)
      net.parameters().data[i] += 0.1 * flowprior::normal01(noise);
    train::FlowMatchingTrainer<Net> tr(net, Convention::Paper, trainer_config(6));
    train::ExchangeOptions opt;
    opt.bucket = bucket;
    tr.set_communicator(&comm, opt);
    Rng rng(11);
    for (Index s = 0; s < steps; ++s) losses.push_back(tr.step(tv, rng).loss);
    return params_of(net.parameters());
  };
  std::vector<double> l_block, l_overlap;
  const auto p_block = run(0, l_block);
  CHECK(comm.started == 0);  // bucket 0: one blocking sum per step
  const Index n = Net(small_net()).num_params();
  const auto p_overlap = run(7, l_overlap);
  CHECK(p_overlap == p_block);
  CHECK(l_overlap == l_block);
  CHECK(same_on_all_ranks(comm, p_overlap));
  // Every step started ceil(n / 7) buckets and the slots' sum, and the first report of each
  // step (after the final layer's backward) found buckets already started: the overlap.
  CHECK(comm.started == int(steps * ((n + 6) / 7 + 1)));
  REQUIRE(comm.started_at_first_report.size() == std::size_t(steps));
  for (std::size_t s = 0; s < std::size_t(steps); ++s) {
    const int before = int(s) * int((n + 6) / 7 + 1);
    CHECK(comm.started_at_first_report[s] - before > 0);
    CHECK(comm.started_at_first_report[s] - before < (n + 6) / 7);
  }
}

TEST_CASE("mpi: step_with samples the global batch and keeps the rank's slice", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  const Index B = 4;
  auto sampler = [](MatrixView<double> b, Rng& r) {
    for (Index j = 0; j < b.cols; ++j)
      for (Index i = 0; i < b.rows; ++i) b.col(j)[i] = 2 * flowprior::uniform01(r) - 1;
  };
  Net a(small_net()), b(small_net());
  Rng ia(5), ib(5);
  a.init(ia);
  b.init(ib);
  train::TrainerConfig cfg = trainer_config(B);
  cfg.time_group = 3;  // groups that straddle the ranks' slices
  cfg.antithetic = false;
  cfg.sampler = flowprior::loss::TimeSampler::uniform();
  train::FlowMatchingTrainer<Net> dist(a, Convention::Code, cfg);
  dist.set_communicator(&comm);
  cfg.batch = 2 * B;
  train::FlowMatchingTrainer<Net> one(b, Convention::Code, cfg);
  Rng r1(21), r2(21);
  for (int s = 0; s < 4; ++s) {
    const double l1 = dist.step_with(sampler, r1).loss, l2 = one.step_with(sampler, r2).loss;
    CHECK(std::abs(l1 - l2) <= 1e-12 * std::max(1.0, std::abs(l2)));
  }
  CHECK(max_rel_diff(params_of(a.parameters()), params_of(b.parameters())) < 1e-10);
}

TEST_CASE("mpi: the aligner moves each rank's shard as one process moves all latents", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  Net net(small_net());
  Rng init(7);
  net.init(init);
  const flowprior::Prior<Net> prior(net, Convention::Paper);
  const Index n = 5;
  Rng yr(13);
  Eigen::MatrixXd all(2, 2 * n);
  for (Index i = 0; i < all.size(); ++i) all.data()[i] = flowprior::normal01(yr);
  Eigen::MatrixXd mine = all.middleCols(n * comm.rank(), n);
  train::AlignConfig cfg;
  cfg.K = 3;
  train::LatentAligner<Net> dist(prior, Convention::Paper, n, cfg);
  dist.set_communicator(&comm);
  train::LatentAligner<Net> one(prior, Convention::Paper, 2 * n, cfg);
  Rng r1(4), r2(4);
  for (int s = 0; s < 4; ++s) {
    const double l1 = dist.step(MatrixView<double>(mine.data(), 2, n), r1);
    const double l2 = one.step(MatrixView<double>(all.data(), 2, 2 * n), r2);
    CHECK(std::abs(l1 - l2) <= 1e-12 * std::max(1.0, std::abs(l2)));
  }
  // Per-latent gradients and elementwise Adam: the shard is bit-identical.
  const Eigen::MatrixXd expect = all.middleCols(n * comm.rank(), n);
  CHECK((mine - expect).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("mpi: the autoencoder with a Gaussian posterior and the alignment term", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  using Model = nn::TokenizerAE<double>;
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 2;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 1;
  c.dec_depth = 1;
  c.latent_tokens = 2;
  c.latent_dim = 2;
  c.posterior = nn::Posterior::gaussian;
  Net net(small_net());
  Rng pi(7);
  net.init(pi);
  const flowprior::Prior<Net> prior(net, Convention::Paper);
  train::LatentAlignmentConfig ac;
  ac.weight = 0.1;
  ac.K = 2;

  Model m1(c), m2(c), m3(c);
  Rng i1(comm.rank() == 0 ? 5 : 6), i2(5), i3(5);
  m1.init(i1);
  m2.init(i2);
  m3.init(i3);
  train::ReconstructionConfig rc;
  rc.kl_beta = 0.05;
  rc.schedule = flowprior::optim::LrSchedule::constant(3e-3);
  train::ReconstructionTrainer<Model> dist(m1, rc), one(m2, rc), bucketed(m3, rc);
  train::ExchangeOptions blocking, small;
  blocking.bucket = 0;
  small.bucket = 5;  // the tokenizer's backward reports after each block and half
  dist.set_communicator(&comm, blocking);
  bucketed.set_communicator(&comm, small);
  Rng a1(8), a2(8), a3(8), r1(9), r2(9), r3(9);
  train::LatentAlignmentLoss<Net> al1(prior, Convention::Paper, ac, a1),
      al2(prior, Convention::Paper, ac, a2), al3(prior, Convention::Paper, ac, a3);
  al1.set_communicator(&comm);
  al3.set_communicator(&comm);
  const Index B = 3;
  Rng xr(1);
  Eigen::MatrixXd x(m1.image_dim(), 2 * B);
  for (int s = 0; s < 3; ++s) {
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = 2 * flowprior::uniform01(xr) - 1;
    const auto s1 =
        dist.step(ConstMatrixView<double>(x.data() + x.rows() * B * comm.rank(), x.rows(), B), r1,
                  std::ref(al1));
    const auto s2 = one.step(ConstMatrixView<double>(x.data(), x.rows(), 2 * B), r2, std::ref(al2));
    const auto s3 =
        bucketed.step(ConstMatrixView<double>(x.data() + x.rows() * B * comm.rank(), x.rows(), B),
                      r3, std::ref(al3));
    CHECK(s3.loss == s1.loss);
    CHECK(std::abs(s1.loss - s2.loss) <= 1e-12 * std::max(1.0, std::abs(s2.loss)));
    CHECK(std::abs(s1.mse - s2.mse) <= 1e-12);
    CHECK(std::abs(s1.kl - s2.kl) <= 1e-12);
  }
  CHECK(max_rel_diff(params_of(m1.parameters()), params_of(m2.parameters())) < 1e-10);
  CHECK(same_on_all_ranks(comm, params_of(m1.parameters())));
  // The sum in buckets of 5 values started during the backward: the blocking sum's bits.
  CHECK(params_of(m3.parameters()) == params_of(m1.parameters()));
}

TEST_CASE("mpi: the classifier on two ranks at batch B takes the steps of one at 2B", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  using Cls = nn::MlpClassifier<double>;
  nn::ClassifierConfig cc;
  cc.input_dim = 6;
  cc.hidden = {8, 5};
  cc.classes = 3;
  train::ClassifierTrainerConfig tc;
  tc.schedule = flowprior::optim::LrSchedule::constant(1e-2);
  tc.clip_norm = 0.3;  // clipping acts on the averaged gradient
  tc.use_ema = true;
  tc.ema_decay = 0.9;
  Cls m1(cc), m2(cc), m4(cc);
  Rng i1(comm.rank() == 0 ? 5 : 77), i2(5), i4(5);  // rank 1 starts elsewhere: broadcast
  m1.init(i1);
  m2.init(i2);
  m4.init(i4);
  train::ClassifierTrainer<Cls> dist(m1, tc), one(m2, tc), bucketed(m4, tc);
  train::ExchangeOptions blocking, small;
  blocking.bucket = 0;
  small.bucket = 6;  // the classifier's backward reports after the head and each layer
  dist.set_communicator(&comm, blocking);
  bucketed.set_communicator(&comm, small);
  const Index B = 5;
  Rng xr(2);
  Eigen::MatrixXd x(cc.input_dim, 2 * B);
  std::vector<std::int32_t> labels(std::size_t(2 * B));
  for (int s = 0; s < 5; ++s) {
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = flowprior::normal01(xr);
    for (auto& l : labels) l = std::int32_t(flowprior::uniform01(xr) * 3) % 3;
    const auto s1 =
        dist.step(ConstMatrixView<double>(x.data() + x.rows() * B * comm.rank(), x.rows(), B),
                  nn::LabelView(labels.data() + B * comm.rank(), B));
    const auto s2 = one.step(ConstMatrixView<double>(x.data(), x.rows(), 2 * B), labels);
    const auto s4 =
        bucketed.step(ConstMatrixView<double>(x.data() + x.rows() * B * comm.rank(), x.rows(), B),
                      nn::LabelView(labels.data() + B * comm.rank(), B));
    CHECK(s4.loss == s1.loss);
    CHECK(s4.grad_norm == s1.grad_norm);
    CHECK(std::abs(s1.loss - s2.loss) <= 1e-12 * std::max(1.0, std::abs(s2.loss)));
    CHECK(std::abs(s1.accuracy - s2.accuracy) <= 1e-15);
    CHECK(std::abs(s1.grad_norm - s2.grad_norm) <= 1e-12 * std::max(1.0, s2.grad_norm));
    CHECK(s1.step == s2.step);
  }
  const auto p = params_of(m1.parameters());
  CHECK(max_rel_diff(p, params_of(m2.parameters())) < 1e-10);
  CHECK(max_rel_diff(dist.ema().weights(), one.ema().weights()) < 1e-10);
  CHECK(same_on_all_ranks(comm, p));
  CHECK(params_of(m4.parameters()) == p);  // buckets during the backward: the same bits
  // A wrong slice (every rank passing the first half) would differ: the check can fail.
  Cls m3(cc);
  Rng i3(5);
  m3.init(i3);
  CHECK(max_rel_diff(params_of(m3.parameters()), params_of(m2.parameters())) > 1e-4);
}

TEST_CASE("mpi: MAR on two ranks at batch B takes the steps of one process at 2B", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  using Gen = nn::MarGenerator<double>;
  const nn::MarConfig mc = tiny_mar();
  Gen m1(mc), m2(mc), m4(mc);
  init_mar(m1, comm.rank() == 0 ? 3 : 30);  // rank 1 starts elsewhere: broadcast
  init_mar(m2, 3);
  init_mar(m4, 3);
  train::MarTrainer<double> dist(m1, Convention::Code, mar_trainer_config());
  train::MarTrainer<double> one(m2, Convention::Code, mar_trainer_config());
  train::MarTrainer<double> bucketed(m4, Convention::Code, mar_trainer_config());
  train::ExchangeOptions blocking, small;
  blocking.bucket = 0;
  small.bucket = 9;  // the head's and the backbone's layers report during the backward
  dist.set_communicator(&comm, blocking);
  bucketed.set_communicator(&comm, small);
  const Index B = 3, T = mc.tokens, d = mc.token_dim;
  Rng xr(4), r1(6), r2(6), r4(6);
  Eigen::MatrixXd x(d, 2 * B * T);
  bool masks_differ = false;  // the ranks' masked counts differ at some step: the weighting acts
  for (int s = 0; s < 5; ++s) {
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = flowprior::normal01(xr);
    const auto s1 =
        dist.step(ConstMatrixView<double>(x.data() + d * B * T * comm.rank(), d, B * T), r1);
    const auto s2 = one.step(ConstMatrixView<double>(x.data(), d, 2 * B * T), r2);
    const auto s4 =
        bucketed.step(ConstMatrixView<double>(x.data() + d * B * T * comm.rank(), d, B * T), r4);
    CHECK(s4.loss == s1.loss);
    CHECK(s4.grad_norm == s1.grad_norm);
    CHECK(std::abs(s1.loss - s2.loss) <= 1e-12 * std::max(1.0, std::abs(s2.loss)));
    CHECK(std::abs(s1.grad_norm - s2.grad_norm) <= 1e-12 * std::max(1.0, s2.grad_norm));
    CHECK(s1.masked == s2.masked);
    // The rank's mask is its images' part of the global batch's.
    const auto& m = one.last_mask();
    CHECK(std::vector<std::uint8_t>(m.begin() + B * T * comm.rank(),
                                    m.begin() + B * T * (comm.rank() + 1)) == dist.last_mask());
    Index first = 0;
    for (Index j = 0; j < B * T; ++j) first += m[std::size_t(j)];
    if (2 * first != s2.masked) masks_differ = true;
  }
  CHECK(masks_differ);
  CHECK(r1() == r2());  // the generators advanced alike
  const auto p = params_of(m1.parameters());
  CHECK(max_rel_diff(p, params_of(m2.parameters())) < 1e-10);
  CHECK(max_rel_diff(dist.ema().weights(), one.ema().weights()) < 1e-10);
  CHECK(same_on_all_ranks(comm, p));
  CHECK(params_of(m4.parameters()) == p);  // buckets during the backward: the same bits

  // The MAR checkpoint is collective: rank 0 writes, every rank resumes bit for bit.
  const auto dir = shared_dir(comm, "flowprior_mpi_mar_");
  const std::string path = (dir / "mar.ckpt.safetensors").string();
  train::save_checkpoint(path, dist, r1);
  CHECK(std::filesystem::exists(path));
  Gen m3(mc);
  init_mar(m3, 99);
  train::MarTrainer<double> resumed(m3, Convention::Code, mar_trainer_config());
  resumed.set_communicator(&comm);
  Rng r3(0);
  train::load_checkpoint(path, resumed, r3);
  for (int s = 0; s < 2; ++s) {
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = flowprior::normal01(xr);
    const ConstMatrixView<double> mine(x.data() + d * B * T * comm.rank(), d, B * T);
    dist.step(mine, r1);
    resumed.step(mine, r3);
  }
  CHECK(params_of(m1.parameters()) == params_of(m3.parameters()));
  CHECK(dist.ema().weights() == resumed.ema().weights());
  CHECK(resumed.steps() == 7);
  comm.barrier("test");
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("mpi: a classifier or MAR rank that throws makes the other throw at once", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  {
    using Cls = nn::MlpClassifier<double>;
    nn::ClassifierConfig cc;
    cc.input_dim = 4;
    cc.hidden = {6};
    cc.classes = 3;
    Cls m(cc);
    Rng i(5);
    m.init(i);
    train::ClassifierTrainer<Cls> tr(m, train::ClassifierTrainerConfig{});
    tr.set_communicator(&comm);
    const Eigen::MatrixXd x = Eigen::MatrixXd::Constant(4, 3, 0.5);
    std::vector<std::int32_t> labels = {0, 1, 2};
    tr.step(ConstMatrixView<double>(x.data(), 4, 3), labels);
    const auto before = params_of(m.parameters());
    if (comm.rank() == 1) labels[1] = 7;  // out of range on rank 1 only
    const auto t0 = std::chrono::steady_clock::now();
    if (comm.rank() == 1)
      CHECK_THROWS_AS(tr.step(ConstMatrixView<double>(x.data(), 4, 3), labels),
                      flowprior::value_error);
    else
      CHECK_THROWS_WITH(tr.step(ConstMatrixView<double>(x.data(), 4, 3), labels),
                        Contains("[flowprior.distributed]") &&
                            Contains("ClassifierTrainer::step") &&
                            Contains("1 other rank(s) failed"));
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    CHECK(params_of(m.parameters()) == before);
    CHECK(tr.steps() == 1);
  }
  {
    using Gen = nn::MarGenerator<double>;
    const nn::MarConfig mc = tiny_mar();
    Gen m(mc);
    init_mar(m, 3);
    train::MarTrainer<double> tr(m, Convention::Code, mar_trainer_config());
    tr.set_communicator(&comm);
    Eigen::MatrixXd x = Eigen::MatrixXd::Constant(mc.token_dim, 2 * mc.tokens, 0.25);
    Rng rng(1);
    tr.step(ConstMatrixView<double>(x.data(), x.rows(), x.cols()), rng);
    const auto before = params_of(m.parameters());
    if (comm.rank() == 1) x(2, 5) = std::nan("");
    const auto t0 = std::chrono::steady_clock::now();
    if (comm.rank() == 1)
      CHECK_THROWS_AS(tr.step(ConstMatrixView<double>(x.data(), x.rows(), x.cols()), rng),
                      flowprior::numeric_error);
    else
      CHECK_THROWS_WITH(tr.step(ConstMatrixView<double>(x.data(), x.rows(), x.cols()), rng),
                        Contains("[flowprior.distributed]") && Contains("MarTrainer::step") &&
                            Contains("1 other rank(s) failed"));
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    CHECK(params_of(m.parameters()) == before);
    CHECK(tr.steps() == 1);
  }
}

TEST_CASE("mpi: a checkpoint written by rank 0 resumes on every rank bit for bit", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  // One folder for both ranks: rank 0's pid names it.
  double pid = comm.rank() == 0 ? double(::getpid()) : 0.0;
  comm.broadcast(&pid, 1, 0, "test");
  const auto dir = std::filesystem::temp_directory_path() /
                   ("flowprior_mpi_test_" + std::to_string(static_cast<long>(pid)));
  if (comm.rank() == 0) std::filesystem::create_directories(dir);
  comm.barrier("test");
  const std::string path = (dir / "run.ckpt.safetensors").string();
  const Eigen::MatrixXd data = targets(30);
  const ConstMatrixView<double> tv(data.data(), 2, data.cols());

  Net a(small_net());
  Rng ia(7);
  a.init(ia);
  train::FlowMatchingTrainer<Net> ta(a, Convention::Paper, trainer_config(4));
  ta.set_communicator(&comm);
  Rng ra(12);
  for (int s = 0; s < 3; ++s) ta.step(tv, ra);
  train::save_checkpoint(path, ta, a, ra);
  CHECK(std::filesystem::exists(path));  // complete on every rank when the call returns
  for (int s = 0; s < 3; ++s) ta.step(tv, ra);

  Net b(small_net());
  Rng ib(1234);  // overwritten by the checkpoint
  b.init(ib);
  train::FlowMatchingTrainer<Net> tb(b, Convention::Paper, trainer_config(4));
  tb.set_communicator(&comm);
  Rng rb(0);
  train::load_checkpoint(path, tb, b, rb);
  for (int s = 0; s < 3; ++s) tb.step(tv, rb);
  CHECK(params_of(a.parameters()) == params_of(b.parameters()));
  CHECK(ta.ema().weights() == tb.ema().weights());
  CHECK(tb.steps() == 6);

  // The file records the global batch (2 x 4): one process at batch 8 resumes it, at 4 refuses.
  if (comm.rank() == 0) {
    Net c(small_net());
    train::FlowMatchingTrainer<Net> alone(c, Convention::Paper, trainer_config(8));
    Rng rc(0);
    CHECK_NOTHROW(train::load_checkpoint(path, alone, c, rc));
    CHECK(alone.steps() == 3);
    train::FlowMatchingTrainer<Net> wrong(c, Convention::Paper, trainer_config(4));
    CHECK_THROWS_WITH(train::load_checkpoint(path, wrong, c, rc), Contains("trainer.batch"));
  }

  // A file rank 1 cannot read is an error on both ranks, not a hang.
  const std::string missing = comm.rank() == 0 ? path : path + ".missing";
  CHECK_THROWS_AS(train::load_checkpoint(missing, tb, b, rb), flowprior::error);
  comm.barrier("test");
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("mpi: a rank that throws makes the other throw distributed_error at once", "[mpi]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  // Without buckets, with buckets of 7 values (rank 0 starts most of them during its backward,
  // rank 1 fails before its backward and starts them all after: the same sums in the same
  // order), and with the default (one bucket).
  const Index bucket = GENERATE(Index(0), Index(7), train::ExchangeOptions().bucket);
  CAPTURE(bucket);
  train::ExchangeOptions opt;
  opt.bucket = bucket;
  Net net(small_net());
  Rng init(7);
  net.init(init);
  train::FlowMatchingTrainer<Net> tr(net, Convention::Paper, trainer_config(4));
  tr.set_communicator(&comm, opt);
  Eigen::MatrixXd batch = targets(4);
  Rng rng(3);
  tr.step_on(ConstMatrixView<double>(batch.data(), 2, 4), rng);
  const auto before = params_of(net.parameters());
  if (comm.rank() == 1) batch(1, 2) = std::nan("");
  const auto t0 = std::chrono::steady_clock::now();
  if (comm.rank() == 1) {
    CHECK_THROWS_AS(tr.step_on(ConstMatrixView<double>(batch.data(), 2, 4), rng),
                    flowprior::numeric_error);
  } else {
    CHECK_THROWS_WITH(tr.step_on(ConstMatrixView<double>(batch.data(), 2, 4), rng),
                      Contains("[flowprior.distributed]") && Contains("1 other rank(s) failed"));
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));  // not the deadline
  CHECK(params_of(net.parameters()) == before);                            // applied on no rank
  CHECK(tr.steps() == 1);
  // Different batch sizes on the ranks are refused on both.
  const Index cols = comm.rank() == 0 ? 4 : 3;
  batch(1, 2) = 0.5;
  CHECK_THROWS_WITH(tr.step_on(ConstMatrixView<double>(batch.data(), 2, cols), rng),
                    Contains("batches differ in size"));
  // A non-finite parameter on rank 1 (the final layer's bias): its loss is not finite, which it
  // finds after its backward has started the buckets; both ranks finish the same sums, rank 1
  // refuses the step and rank 0 hears of it.
  const auto kept = params_of(net.parameters());
  if (comm.rank() == 1) net.parameters().data[net.num_params() - 1] = std::nan("");
  CHECK_THROWS_WITH(
      tr.step_on(ConstMatrixView<double>(batch.data(), 2, 4), rng),
      Contains(comm.rank() == 1 ? "diverged at step 2" : "1 other rank(s) failed at step 2"));
  CHECK(tr.steps() == 1);
  if (comm.rank() == 0) CHECK(params_of(net.parameters()) == kept);
}

// Run by its own CTest case (tests/CMakeLists.txt): rank 1 kills itself mid-run; rank 0 must
// report distributed_error within the deadline and say so on stdout (mpiexec then reports the
// dead rank and fails the job, so the test matches rank 0's line, not the exit status).
TEST_CASE("mpi: a rank killed mid-run makes the other stop with distributed_error",
          "[.mpi_killed]") {
  fmpi::MpiCommunicator comm(MPI_COMM_WORLD, fast());
  Net net(small_net());
  Rng init(7);
  net.init(init);
  train::FlowMatchingTrainer<Net> tr(net, Convention::Paper, trainer_config(4));
  tr.set_communicator(&comm);
  const Eigen::MatrixXd data = targets(30);
  const ConstMatrixView<double> tv(data.data(), 2, data.cols());
  Rng rng(3);
  for (int s = 0; s < 3; ++s) tr.step(tv, rng);
  if (comm.rank() == 1) std::raise(SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int s = 0; s < 1000; ++s) tr.step(tv, rng);
    std::printf("RANK0: no error\n");
  } catch (const flowprior::distributed_error& e) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("RANK0 distributed_error after %.1f s: %s\n", secs, e.what());
    std::fflush(stdout);
    CHECK(secs < 10.0);
  }
}

int main(int argc, char** argv) {
  fmpi::Session session(&argc, &argv);
  return Catch::Session().run(argc, argv);
}
