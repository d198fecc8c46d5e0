// Training checkpoints: bit-exact resumption, atomic saves, validation of what is loaded.
#include <flowprior/flowprior.hpp>
#include <flowprior/io/checkpoint.hpp>

#include <cstdio>
#include <filesystem>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
namespace io = flowprior::io;
namespace nn = flowprior::nn;
namespace train = flowprior::train;

namespace {

nn::AdaLNMlpConfig cfg() {
  nn::AdaLNMlpConfig c;
  c.dim = 2;
  c.width = 16;
  c.depth = 2;
  c.time_freq_dim = 16;
  return c;
}

train::TrainerConfig tcfg() {
  train::TrainerConfig t;
  t.batch = 32;
  t.K = 2;
  t.schedule = flowprior::optim::LrSchedule::cosine(2e-3, 3, 12, 1e-4);
  t.ema_decay = 0.9;
  return t;
}

template <class S>
nn::AdaLNMlp<S> make_net() {
  nn::AdaLNMlp<S> net(cfg());
  Rng init(3);
  net.init(init);
  fpt::fill_uniform(net.parameters().data, net.num_params(), init, -0.3, 0.3);
  return net;
}

template <class S>
struct Run {
  nn::AdaLNMlp<S> net{make_net<S>()};
  Rng rng{11};
  train::FlowMatchingTrainer<nn::AdaLNMlp<S>> trainer{net, Convention::Code, tcfg()};
  void steps(const Eigen::Matrix<S, -1, -1>& data, int n) {
    for (int i = 0; i < n; ++i) trainer.step(data, rng);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("checkpoint: N steps == N/2 + save + load + N/2, bit for bit", "[io]", float,
                   double) {
  using S = TestType;
  Rng drng(1);
  Eigen::Matrix<S, -1, -1> data(2, 200);
  for (Index j = 0; j < data.cols(); ++j)
    data.col(j) << S(flowprior::normal01(drng)), S(0.3 * flowprior::normal01(drng) + 1);
  const int N = 10;
  Run<S> full;
  full.steps(data, N);

  const std::string path = fpt::temp_path("resume.safetensors");
  {
    Run<S> first;
    first.steps(data, N / 2);
    io::save_checkpoint(path, first.trainer, first.net, first.rng, {{"note", "half way"}});
  }
  Run<S> resumed;  // fresh process: different weights and generator until loaded
  io::load_checkpoint(path, resumed.trainer, resumed.net, resumed.rng);
  REQUIRE(resumed.trainer.steps() == N / 2);
  resumed.steps(data, N / 2);

  const auto n = std::size_t(full.net.num_params());
  REQUIRE(std::equal(full.net.parameters().data, full.net.parameters().data + n,
                     resumed.net.parameters().data));
  REQUIRE(full.trainer.ema().weights() == resumed.trainer.ema().weights());
  REQUIRE(full.trainer.optimizer().m() == resumed.trainer.optimizer().m());
  REQUIRE(full.trainer.optimizer().v() == resumed.trainer.optimizer().v());
  REQUIRE(full.trainer.steps() == resumed.trainer.steps());
  REQUIRE(full.rng() == resumed.rng());
  // The checkpoint is also a state dict: the EMA prior loads from it directly.
  const auto st = io::Safetensors::read(path);
  REQUIRE(st.metadata().at("user.note") == "half way");
  nn::AdaLNMlp<S> prior(cfg());
  REQUIRE(io::load_state_dict(prior, st) == "ema.");
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: a failed save keeps the previous checkpoint loadable", "[io]") {
  Rng drng(2);
  Eigen::MatrixXd data(2, 50);
  for (Index j = 0; j < 50; ++j) data.col(j) << flowprior::normal01(drng), flowprior::normal01(drng);
  const std::string path = fpt::temp_path("atomic.safetensors");
  Run<double> run;
  run.steps(data, 2);
  io::save_checkpoint(path, run.trainer, run.net, run.rng);
  run.steps(data, 2);
  // Fail half way through the second save (as a crash or a full disk would).
  REQUIRE_THROWS_AS(io::save_checkpoint(path, run.trainer, run.net, run.rng, {},
                                        io::WriteFaults{2000}),
                    flowprior::io_error);
  Run<double> back;
  REQUIRE_NOTHROW(io::load_checkpoint(path, back.trainer, back.net, back.rng));
  REQUIRE(back.trainer.steps() == 2);
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    REQUIRE(e.path().string().find(path + ".tmp") == std::string::npos);
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: mismatched trainers and damaged files are refused", "[io][error]") {
  Rng drng(3);
  Eigen::MatrixXd data(2, 50);
  data.setRandom();
  const std::string path = fpt::temp_path("bad.safetensors");
  Run<double> run;
  run.steps(data, 1);
  io::save_checkpoint(path, run.trainer, run.net, run.rng);
  // Another convention.
  nn::AdaLNMlp<double> net(cfg());
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> paper(net, Convention::Paper, tcfg());
  Rng rng(1);
  REQUIRE_THROWS_WITH(io::load_checkpoint(path, paper, net, rng), Catch::Contains("convention"));
  // Another schedule.
  auto other = tcfg();
  other.schedule.total_steps = 99;
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> t2(net, Convention::Code, other);
  REQUIRE_THROWS_WITH(io::load_checkpoint(path, t2, net, rng), Catch::Contains("schedule"));
  // A truncated file: nothing is modified.
  auto bytes = io::read_file(path);
  bytes.resize(bytes.size() / 2);
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  Run<double> fresh;
  const std::vector<double> before(fresh.net.parameters().data,
                                   fresh.net.parameters().data + fresh.net.num_params());
  REQUIRE_THROWS_AS(io::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                    flowprior::io_error);
  REQUIRE(std::equal(before.begin(), before.end(), fresh.net.parameters().data));
  REQUIRE(fresh.trainer.steps() == 0);
  // A plain state dict is not a checkpoint.
  io::save_state_dict(run.net, path);
  REQUIRE_THROWS_WITH(io::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      Catch::Contains("flowprior.format"));
  std::remove(path.c_str());
}
