// The image pipeline's resume: a loader (shuffled, flipped, threaded) feeding a
// ReconstructionTrainer, interrupted by a checkpoint that carries the loader's position, then
// continued by a fresh loader and trainer, ends bit for bit where the uninterrupted run ends.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <flowprior/datasets/loader.hpp>
#include <flowprior/datasets/source.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <memory>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace {

namespace ds = flowprior::datasets;
namespace nn = flowprior::nn;
namespace train = flowprior::train;
using flowprior::Index;
using flowprior::Rng;
using Model = nn::TokenizerAE<float>;

// 21 images of 8 x 8 x 1 with a pattern per image (so that the order matters).
std::shared_ptr<const ds::SampleSource> source() {
  ds::ImageArray a;
  a.count = 21;
  a.height = a.width = 8;
  for (std::int64_t i = 0; i < a.count; ++i) {
    for (int p = 0; p < 64; ++p) a.pixels.push_back(std::uint8_t((i * 37 + p * (i % 5 + 1)) % 256));
    a.labels.push_back(int(i % 3));
  }
  return std::make_shared<ds::ArraySource>(a, true);
}

nn::TokenizerConfig model_config() {
  nn::TokenizerConfig c;
  c.image_size = 8;
  c.channels = 1;
  c.patch = 4;
  c.width = 16;
  c.heads = 2;
  c.depth = 1;
  c.latent_tokens = 2;
  c.latent_dim = 4;
  return c;
}

train::ReconstructionConfig trainer_config() {
  train::ReconstructionConfig c;
  c.schedule = flowprior::optim::LrSchedule::cosine(2e-3, 3, 20, 1e-5);
  c.ema_decay = 0.9;
  return c;
}

ds::LoaderConfig loader_config(int threads) {
  ds::LoaderConfig c;
  c.batch_size = 4;  // 6 batches per epoch, the last of 1 image
  c.threads = threads;
  c.prefetch = 2;
  c.seed = 3;
  return c;
}

struct Run {
  Model model{model_config()};
  train::ReconstructionTrainer<Model> trainer{model, trainer_config()};
  ds::Loader loader;
  explicit Run(int threads) : loader(source(), loader_config(threads)) {
    Rng init(1);
    model.init(init);
  }
  void steps(int n) {
    for (int i = 0; i < n; ++i) {
      const ds::Batch b = loader.next();
      trainer.step(b.view());
    }
  }
};

}  // namespace

TEST_CASE("pipeline: loader + reconstruction trainer resume from a checkpoint, bit for bit",
          "[data][reconstruction]") {
  const int N = 16;  // across two epoch boundaries
  Run full(2);
  full.steps(N);

  const std::string path = fpt::temp_path("pipeline_resume.safetensors");
  {
    Run first(2);
    first.steps(7);
    train::save_checkpoint(path, first.trainer, Rng(4),
                           ds::position_entries(first.loader.position()));
  }
  Run resumed(0);    // another thread count
  resumed.steps(2);  // it was somewhere else before the load
  Rng rng(9);
  const auto st = flowprior::io::Safetensors::read(path);
  train::load_checkpoint(st, resumed.trainer, rng);
  resumed.loader.set_position(ds::position_from_entries(st.metadata()));
  REQUIRE(resumed.loader.position() == ds::Position{1, 1});
  resumed.steps(N - 7);

  const Model& a = full.model;
  const Model& b = resumed.model;
  REQUIRE(
      std::equal(a.parameters().data, a.parameters().data + a.num_params(), b.parameters().data));
  REQUIRE(full.trainer.ema().weights() == resumed.trainer.ema().weights());
  REQUIRE(full.trainer.steps() == resumed.trainer.steps());
  REQUIRE(full.loader.position() == resumed.loader.position());
  std::remove(path.c_str());
}

TEST_CASE("pipeline: loader positions as checkpoint entries", "[data]") {
  const ds::Position p{12, 345};
  const auto e = ds::position_entries(p);
  REQUIRE(e.at("loader.epoch") == "12");
  REQUIRE(ds::position_from_entries(e, "loader.") == p);
  std::map<std::string, std::string> user;
  for (const auto& kv : e) user["user." + kv.first] = kv.second;
  REQUIRE(ds::position_from_entries(user) == p);
  user["user.loader.batch"] = "-3";
  CHECK_THROWS_WITH(
      ds::position_from_entries(user),
      Catch::Matchers::Contains("user.loader.batch") && Catch::Matchers::Contains("-3"));
  user.erase("user.loader.epoch");
  CHECK_THROWS_WITH(ds::position_from_entries(user),
                    Catch::Matchers::Contains("no 'user.loader.epoch'"));
}
