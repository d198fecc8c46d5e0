// Training checkpoints: bit-exact resumption, atomic saves, validation of what is loaded.
#include <cstdio>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <map>
#include <stdexcept>

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
    train::save_checkpoint(path, first.trainer, first.net, first.rng, {{"note", "half way"}});
  }
  Run<S> resumed;  // fresh process: different weights and generator until loaded
  train::load_checkpoint(path, resumed.trainer, resumed.net, resumed.rng);
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
  for (Index j = 0; j < 50; ++j)
    data.col(j) << flowprior::normal01(drng), flowprior::normal01(drng);
  const std::string path = fpt::temp_path("atomic.safetensors");
  Run<double> run;
  run.steps(data, 2);
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  run.steps(data, 2);
  // Fail half way through the second save (as a crash or a full disk would).
  REQUIRE_THROWS_AS(
      train::save_checkpoint(path, run.trainer, run.net, run.rng, {}, io::WriteFaults{2000}),
      flowprior::io_error);
  Run<double> back;
  REQUIRE_NOTHROW(train::load_checkpoint(path, back.trainer, back.net, back.rng));
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
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  // Another convention.
  nn::AdaLNMlp<double> net(cfg());
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> paper(net, Convention::Paper, tcfg());
  Rng rng(1);
  REQUIRE_THROWS_WITH(train::load_checkpoint(path, paper, net, rng), Catch::Contains("convention"));
  // Another schedule.
  auto other = tcfg();
  other.schedule.total_steps = 99;
  train::FlowMatchingTrainer<nn::AdaLNMlp<double>> t2(net, Convention::Code, other);
  REQUIRE_THROWS_WITH(train::load_checkpoint(path, t2, net, rng), Catch::Contains("schedule"));
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
  REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                    flowprior::io_error);
  REQUIRE(std::equal(before.begin(), before.end(), fresh.net.parameters().data));
  REQUIRE(fresh.trainer.steps() == 0);
  // A plain state dict is not a checkpoint.
  io::save_state_dict(run.net, path);
  REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      Catch::Contains("flowprior.format"));
  std::remove(path.c_str());
}

// ---------------------------------------------------------------------------------------------
// Reliability: validate everything before committing, integrity, strict metadata.
// ---------------------------------------------------------------------------------------------

namespace {

// The whole content of a safetensors file, to edit and write back (a well-formed file with one
// chosen defect, as a buggy writer or a hand edit would produce).
struct Contents {
  struct Tensor {
    std::string name;
    io::Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<double> values;
  };
  std::map<std::string, std::string> meta;
  std::vector<Tensor> tensors;
  Tensor& at(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
  }
};

Contents read_contents(const std::string& path) {
  const auto st = io::Safetensors::read(path);
  Contents c;
  c.meta = st.metadata();
  for (const auto& t : st.tensors())
    c.tensors.push_back({t.name, t.dtype, t.shape, st.get<double>(t.name, true)});
  return c;
}

void write_contents(const std::string& path, Contents c) {
  io::SafetensorsWriter w;
  // The checksum is recomputed for the edited content, so that the load reaches the defect.
  if (c.meta.erase("flowprior.checksum")) w.set_checksum(true);
  for (const auto& kv : c.meta) w.set_metadata(kv.first, kv.second);
  for (const auto& t : c.tensors) w.add(t.name, t.values.data(), t.shape, t.dtype);
  w.write(path);
}

// Everything load_checkpoint may modify, to check that a failed load changed nothing.
template <class S>
struct Snapshot {
  std::vector<S> params, ema, m, v;
  Index steps, updates;
  Rng rng;
  explicit Snapshot(const Run<S>& r)
      : params(r.net.parameters().data, r.net.parameters().data + r.net.num_params()),
        ema(r.trainer.ema().weights()),
        m(r.trainer.optimizer().m()),
        v(r.trainer.optimizer().v()),
        steps(r.trainer.steps()),
        updates(r.trainer.ema().updates()),
        rng(r.rng) {}
  bool operator==(const Snapshot& o) const {
    return params == o.params && ema == o.ema && m == o.m && v == o.v && steps == o.steps &&
           updates == o.updates && rng == o.rng;
  }
};

Eigen::MatrixXd some_data() {
  Rng drng(4);
  Eigen::MatrixXd data(2, 50);
  for (Index j = 0; j < 50; ++j)
    data.col(j) << flowprior::normal01(drng), flowprior::normal01(drng);
  return data;
}

}  // namespace

TEST_CASE("checkpoint: an invalid optimizer state is refused before anything changes",
          "[io][error]") {
  const std::string path = fpt::temp_path("neg_v.safetensors");
  Run<double> run;
  run.steps(some_data(), 3);
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  Contents c = read_contents(path);
  c.at("optim.v").values[3] = -1.0;  // a second moment is never negative
  write_contents(path, c);

  Run<double> fresh;
  const Snapshot<double> before(fresh);
  REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                    flowprior::io_error);
  REQUIRE_THROWS_WITH(
      train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
      Catch::Contains(path) && Catch::Contains("optim.v") && Catch::Contains("element 3"));
  REQUIRE(Snapshot<double>(fresh) == before);
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: a flipped payload bit or edited metadata is detected by the checksum",
          "[io][error]") {
  const std::string path = fpt::temp_path("flip.safetensors");
  Run<double> run;
  run.steps(some_data(), 2);
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  const auto good = io::read_file(path);
  const auto st = io::Safetensors::read(path);
  auto write_bytes = [&](const std::vector<std::uint8_t>& b) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
    std::fclose(f);
  };
  Run<double> fresh;
  const Snapshot<double> before(fresh);

  // One bit of a parameter: the top exponent bit turns 0.2 into ~ 1.8e307, finite.
  {
    const auto& e = st.at("model.input_proj.weight");
    auto b = good;
    b[std::size_t(st.data_start() + e.begin + 7)] ^= 0x40;
    write_bytes(b);
    REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      flowprior::io_error);
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                        Catch::Contains(path) && Catch::Contains("checksum"));
    REQUIRE(Snapshot<double>(fresh) == before);
  }
  // One digit of the generator state in the header (same length: the file stays well formed).
  {
    const std::string text(good.begin(), good.end());
    const std::size_t at = text.find("\"rng\":\"");
    REQUIRE(at != std::string::npos);
    auto b = good;
    std::size_t d = at + 7;
    b[d] = b[d] == '1' ? '2' : '1';
    write_bytes(b);
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                        Catch::Contains("checksum"));
    REQUIRE(Snapshot<double>(fresh) == before);
  }
  // The intact file still loads.
  write_bytes(good);
  REQUIRE_NOTHROW(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng));
  REQUIRE(fresh.trainer.steps() == 2);
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: doubles beyond the float range are refused, not loaded as inf",
          "[io][error]") {
  const std::string path = fpt::temp_path("f64_overflow.safetensors");
  Run<double> run;
  run.steps(some_data(), 1);
  run.net.parameters()[0] = 1e300;  // a double checkpoint read into a float trainer
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  Run<float> fresh;
  const Snapshot<float> before(fresh);
  REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                    flowprior::io_error);
  REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      Catch::Contains("model.") && Catch::Contains("overflows float32"));
  REQUIRE(Snapshot<float>(fresh) == before);
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: metadata and the trainer configuration are checked strictly",
          "[io][error]") {
  const std::string path = fpt::temp_path("strict.safetensors");
  Run<double> run;
  run.steps(some_data(), 2);
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  const Contents good = read_contents(path);

  Run<double> fresh;
  const Snapshot<double> before(fresh);
  auto refused = [&](const std::string& key, const std::string& value, const std::string& needle) {
    CAPTURE(key, value);
    Contents c = good;
    c.meta[key] = value;
    write_contents(path, c);
    REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      flowprior::io_error);
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                        Catch::Contains(needle));
    REQUIRE(Snapshot<double>(fresh) == before);
  };
  refused("steps", " 2", "steps");
  refused("steps", "+2", "steps");
  refused("steps", "2 ", "steps");
  refused("steps", "02", "steps");
  refused("steps", "99999999999999999999999", "steps");
  refused("ema.updates", "\t2", "ema.updates");
  refused("rng", good.meta.at("rng") + " 17", "rng");
  refused("rng", good.meta.at("rng") + " ", "rng");
  refused("rng", " " + good.meta.at("rng"), "rng");

  // The file itself is intact again: now the trainer differs.
  write_contents(path, good);
  auto mismatch = [&](train::TrainerConfig tc, const std::string& needle) {
    CAPTURE(needle);
    nn::AdaLNMlp<double> net(make_net<double>());
    train::FlowMatchingTrainer<nn::AdaLNMlp<double>> t(net, Convention::Code, tc);
    Rng rng(1);
    const std::vector<double> p(net.parameters().data, net.parameters().data + net.num_params());
    REQUIRE_THROWS_AS(train::load_checkpoint(path, t, net, rng), flowprior::io_error);
    REQUIRE_THROWS_WITH(train::load_checkpoint(path, t, net, rng), Catch::Contains(needle));
    REQUIRE(t.steps() == 0);
    REQUIRE(std::equal(p.begin(), p.end(), net.parameters().data));
  };
  auto tc = tcfg();
  tc.ema_decay = 0.99;
  mismatch(tc, "ema.decay");
  tc = tcfg();
  tc.batch = 64;
  mismatch(tc, "trainer.batch");
  tc = tcfg();
  tc.K = 4;
  mismatch(tc, "trainer.K");
  tc = tcfg();
  tc.clip_norm = 2.0;
  mismatch(tc, "trainer.clip_norm");
  tc = tcfg();
  tc.adam.beta2 = 0.999;
  mismatch(tc, "trainer.adam.beta2");
  tc = tcfg();
  tc.reduction = flowprior::loss::Reduction::SumChannels;
  mismatch(tc, "trainer.reduction");
  tc = tcfg();
  tc.time_group = 2;
  mismatch(tc, "trainer.time_group");
  tc = tcfg();
  tc.sampler = flowprior::loss::TimeSampler::logit_normal(0.0, 1.0);
  mismatch(tc, "trainer.sampler");
  // The same configuration loads.
  REQUIRE_NOTHROW(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng));
  REQUIRE(fresh.trainer.steps() == 2);
  std::remove(path.c_str());
}

TEST_CASE("checkpoint: a checkpoint without a checksum (format checkpoint-1) is refused",
          "[io][error]") {
  const std::string path = fpt::temp_path("v1.safetensors");
  Run<double> run;
  run.steps(some_data(), 1);
  train::save_checkpoint(path, run.trainer, run.net, run.rng);
  Contents c = read_contents(path);
  c.meta.erase("flowprior.checksum");
  c.meta["flowprior.format"] = "checkpoint-1";
  write_contents(path, c);
  Run<double> fresh;
  const Snapshot<double> before(fresh);
  REQUIRE_THROWS_AS(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                    flowprior::io_error);
  REQUIRE_THROWS_WITH(train::load_checkpoint(path, fresh.trainer, fresh.net, fresh.rng),
                      Catch::Contains("checkpoint-1") && Catch::Contains("checksum"));
  REQUIRE(Snapshot<double>(fresh) == before);
  // Its weights are still a state dict.
  nn::AdaLNMlp<double> prior(cfg());
  REQUIRE(io::load_state_dict(prior, io::Safetensors::read(path)) == "ema.");
  std::remove(path.c_str());
}
