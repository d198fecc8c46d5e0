// The 2-D proof-of-concept pipeline in a tiny configuration (seconds): every target runs, the
// files exist, figures are PNGs, and every number of metrics.json is finite where it applies.
#include <flowprior/flowprior.hpp>
#include <flowprior/toy2d/pipeline.hpp>
#include <nlohmann/json.hpp>
#if defined(FLOWPRIOR_HAS_PLOT)  // figures need flowprior::plot (zlib)
#include <flowprior/toy2d/figures.hpp>
#endif

#include <filesystem>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "catch.hpp"

namespace pipeline = flowprior::pipeline;
namespace io = flowprior::io;

namespace {

pipeline::Toy2dConfig tiny(flowprior::data::Toy2D target) {
  pipeline::Toy2dConfig c;
  c.target = target;
  c.width = 16;
  c.depth = 1;
  c.prior_steps = 30;
  c.batch = 32;
  c.eval_points = 20;
  c.prior_samples = 20;
  c.kde_samples = 400;
  c.grid = 5;
  c.landscape_draws = 4;
  c.latents = 20;
  c.align_steps = 6;
  c.track_every = 2;
  c.progress = false;
  return c;
}

// Counts numbers in a parsed JSON document; nulls (NaN written as null) are counted apart. The
// document is read by nlohmann::json, a reader independent of the writer's code path.
void count(const nlohmann::json& v, int& finite, int& nulls, int& bad) {
  if (v.is_number()) {
    (std::isfinite(v.get<double>()) ? finite : bad)++;
  } else if (v.is_null()) {
    nulls++;
  } else if (v.is_array() || v.is_object()) {
    for (const auto& x : v) count(x, finite, nulls, bad);
  }
}

}  // namespace

TEST_CASE("toy2d pipeline: every target runs and writes its files", "[train][pipeline]") {
  const auto target = GENERATE(from_range(flowprior::data::all_toy2d()));
  CAPTURE(flowprior::data::to_string(target));
  const auto dir =
      std::filesystem::temp_directory_path() /
      ("flowprior_toy2d_" + std::to_string(::getpid()) + "_" + flowprior::data::to_string(target));
  std::filesystem::create_directories(dir);
  const auto cfg = tiny(target);
  const auto r = pipeline::run_toy2d(cfg, dir.string());
  pipeline::write_metrics((dir / "metrics.json").string(), pipeline::toy2d_metrics(cfg, r));
#if defined(FLOWPRIOR_HAS_PLOT)
  const auto figs = pipeline::write_toy2d_figures(r, dir.string());
  REQUIRE(figs.size() == 4);
  for (const auto& f : figs) {
    const auto bytes = io::read_file(f);
    REQUIRE(bytes.size() > 100);
    REQUIRE(bytes[1] == 'P');  // \x89PNG
  }
#endif
  REQUIRE(std::filesystem::exists(dir / "prior.safetensors"));
  REQUIRE(std::filesystem::exists(dir / "prior.ckpt.safetensors"));
  const auto text = io::read_file((dir / "metrics.json").string());
  const nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end());
  REQUIRE(doc.at("config").at("seed_string").get<std::string>() == std::to_string(cfg.seed));
  REQUIRE(doc.at("config").at("seed").get<std::uint64_t>() == cfg.seed);
  REQUIRE(doc.at("landscape").at("range").size() == 4);
  REQUIRE(doc.at("alignment").at("curve_step").size() == r.track_step.size());
  int finite = 0, nulls = 0, bad = 0;
  count(doc, finite, nulls, bad);
  REQUIRE(bad == 0);
  REQUIRE(finite > 50);
  // Only the exact-field quantities of non-mixture targets may be missing.
  if (r.exact_density) {
    REQUIRE(nulls == 0);
    REQUIRE(r.occupancy_trained.size() == (target == flowprior::data::Toy2D::Ring5 ? 5u : 16u));
  } else {
    REQUIRE(std::isnan(r.pearson_exact));
    REQUIRE(doc.at("landscape").at("pearson_exact_vs_nll").is_null());  // NaN as null
  }
  REQUIRE(std::isfinite(r.heldout_nll_ode));
  REQUIRE(std::isfinite(r.pearson_trained));
  REQUIRE(r.track_nll_trained.size() == 4);  // steps 0, 2, 4 and the final state
  std::filesystem::remove_all(dir);
}

TEST_CASE("toy2d pipeline: invalid options throw config_error", "[pipeline][error]") {
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  c.grid = 1;
  REQUIRE_THROWS_AS(pipeline::run_toy2d(c, "/tmp"), flowprior::config_error);
  c = tiny(flowprior::data::Toy2D::Ring5);
  c.prior_warmup = 30;
  REQUIRE_THROWS_AS(pipeline::run_toy2d(c, "/tmp"), flowprior::config_error);
  REQUIRE_THROWS_AS(flowprior::data::parse_toy2d("rings7"), flowprior::config_error);
  REQUIRE(pipeline::Toy2dConfig::paper().prior_steps == 100000);
  REQUIRE(pipeline::Toy2dConfig::paper().width == 512);
}

TEST_CASE("toy2d pipeline: float training with time groups matches the double path",
          "[train][pipeline]") {
  // The same tiny configuration in double with one t per draw, and in float with time groups:
  // the float run really trains in float (its checkpoint holds 4-byte tensors), and both priors
  // reach the same held-out NLL. (300 steps of a width-32 net are far from converged, so the
  // latents' NLL is not asserted: an under-trained prior misleads the alignment,
  // docs/proof_of_concept.md.)
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  c.width = 32;
  c.depth = 2;
  c.prior_steps = 300;
  c.eval_points = 200;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("flowprior_toy2d_float_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto d = pipeline::run_toy2d(c, dir.string());
  const auto bytes_double = std::filesystem::file_size(dir / "prior.ckpt.safetensors");
  c.single_precision = true;
  c.prior_time_group = 8;
  c.align_time_group = 4;
  const auto f = pipeline::run_toy2d(c, dir.string());
  const auto bytes_float = std::filesystem::file_size(dir / "prior.ckpt.safetensors");
  std::filesystem::remove_all(dir);
  REQUIRE(double(bytes_float) < 0.6 * double(bytes_double));
  REQUIRE(std::isfinite(f.heldout_nll_ode));
  REQUIRE(std::abs(f.heldout_nll_ode - d.heldout_nll_ode) < 0.2);
  REQUIRE(f.track_nll_trained.size() == d.track_nll_trained.size());
  REQUIRE(std::isfinite(f.pearson_trained));
  REQUIRE(pipeline::Toy2dConfig::paper().single_precision);
  c.prior_time_group = 0;
  REQUIRE_THROWS_AS(pipeline::run_toy2d(c, "/tmp"), flowprior::config_error);
}

TEST_CASE("toy2d pipeline: sizes that overflow or cannot fit are config_errors naming the option",
          "[pipeline][error]") {
  // Checked before anything is allocated: a product that overflows Index, or buffers that cannot
  // possibly fit in this machine's memory, is a config_error naming the option to make smaller
  // (never a wrapped size, an out-of-bounds write, or a bare std::bad_alloc).
  using flowprior::Index;
  struct Case {
    const char* option;
    std::function<void(pipeline::Toy2dConfig&)> set;
  };
  const Index huge = Index(1) << 40;
  const std::vector<Case> cases = {
      {"grid", [](pipeline::Toy2dConfig& c) { c.grid = Index(4294967296); }},  // G*G = 2^64
      {"grid", [](pipeline::Toy2dConfig& c) { c.grid = Index(3037000500); }},  // G*G just wraps
      {"grid", [](pipeline::Toy2dConfig& c) { c.grid = 1000000; }},  // 10^12 points: no memory
      {"landscape_draws", [](pipeline::Toy2dConfig& c) { c.landscape_draws = Index(1) << 50; }},
      {"latents", [=](pipeline::Toy2dConfig& c) { c.latents = huge; }},
      {"align_draws", [](pipeline::Toy2dConfig& c) { c.align_draws = Index(1) << 62; }},
      {"batch", [=](pipeline::Toy2dConfig& c) { c.batch = huge; }},
      {"prior_draws", [](pipeline::Toy2dConfig& c) { c.prior_draws = Index(1) << 62; }},
      {"width", [](pipeline::Toy2dConfig& c) { c.width = Index(1) << 32; }},
      {"width", [](pipeline::Toy2dConfig& c) { c.width = Index(1) << 20; }},  // 5 * 2^40 params
      {"depth", [](pipeline::Toy2dConfig& c) { c.depth = Index(1) << 40; }},
      {"eval_points", [=](pipeline::Toy2dConfig& c) { c.eval_points = huge; }},
      {"prior_samples", [=](pipeline::Toy2dConfig& c) { c.prior_samples = huge; }},
      {"kde_samples", [=](pipeline::Toy2dConfig& c) { c.kde_samples = huge; }},
      {"align_steps",
       [](pipeline::Toy2dConfig& c) {  // the tracked curves grow with the steps
         c.align_steps = Index(1) << 60;
         c.track_every = 1;
       }},
      {"prior_steps", [](pipeline::Toy2dConfig& c) { c.prior_steps = -5; }},
      {"checkpoint_every", [](pipeline::Toy2dConfig& c) { c.checkpoint_every = -1; }},
  };
  for (const auto& k : cases) {
    auto c = tiny(flowprior::data::Toy2D::Ring5);
    k.set(c);
    CAPTURE(k.option);
    REQUIRE_THROWS_AS(c.validate(), flowprior::config_error);
    REQUIRE_THROWS_WITH(c.validate(), Catch::Contains(k.option));
    REQUIRE_THROWS_AS(pipeline::run_toy2d(c, "/nonexistent/never/written"),
                      flowprior::config_error);
  }
  REQUIRE_NOTHROW(tiny(flowprior::data::Toy2D::Ring5).validate());
  REQUIRE_NOTHROW(pipeline::Toy2dConfig().validate());
  REQUIRE_NOTHROW(pipeline::Toy2dConfig::paper().validate());
}

TEST_CASE("toy2d pipeline: every numeric option is finite and in range and checked up front",
          "[pipeline][error]") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  struct Case {
    const char* option;
    std::function<void(pipeline::Toy2dConfig&)> set;
  };
  const std::vector<Case> cases = {
      {"prior_lr", [](pipeline::Toy2dConfig& c) { c.prior_lr = 1e30; }},
      {"prior_lr", [=](pipeline::Toy2dConfig& c) { c.prior_lr = nan; }},
      {"prior_lr", [](pipeline::Toy2dConfig& c) { c.prior_lr = -1e-3; }},
      {"align_lr", [=](pipeline::Toy2dConfig& c) { c.align_lr = inf; }},
      {"align_lr", [](pipeline::Toy2dConfig& c) { c.align_lr = 0; }},
      {"ema_decay", [](pipeline::Toy2dConfig& c) { c.ema_decay = 1.0; }},
      {"ema_decay", [=](pipeline::Toy2dConfig& c) { c.ema_decay = nan; }},
      {"ode_tol", [=](pipeline::Toy2dConfig& c) { c.ode_tol = inf; }},
      {"ode_tol", [](pipeline::Toy2dConfig& c) { c.ode_tol = 1e-300; }},  // never reachable
      {"ode_tol", [](pipeline::Toy2dConfig& c) { c.ode_tol = 2.0; }},
      {"kde_bandwidth", [=](pipeline::Toy2dConfig& c) { c.kde_bandwidth = inf; }},
      {"kde_bandwidth", [](pipeline::Toy2dConfig& c) { c.kde_bandwidth = -0.1; }},
      {"pad", [=](pipeline::Toy2dConfig& c) { c.pad = inf; }},
      {"pad", [](pipeline::Toy2dConfig& c) { c.pad = 1e300; }},
      {"pad", [](pipeline::Toy2dConfig& c) { c.pad = -0.1; }},
      {"divergence_factor", [](pipeline::Toy2dConfig& c) { c.divergence_factor = 1.0; }},
      {"divergence_factor", [=](pipeline::Toy2dConfig& c) { c.divergence_factor = nan; }},
      // Found only after the whole run before: a degenerate data range ruins the landscape.
      {"kde_samples", [](pipeline::Toy2dConfig& c) { c.kde_samples = 1; }},
      {"kde_samples", [](pipeline::Toy2dConfig& c) { c.kde_samples = 20; }},
  };
  for (const auto& k : cases) {
    auto c = tiny(flowprior::data::Toy2D::Ring5);
    k.set(c);
    CAPTURE(k.option);
    REQUIRE_THROWS_AS(c.validate(), flowprior::config_error);
    REQUIRE_THROWS_WITH(c.validate(), Catch::Contains(k.option));
  }
  // Messages print numbers in short form, never 309 digits.
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  c.pad = std::numeric_limits<double>::max();
  REQUIRE_THROWS_WITH(c.validate(), Catch::Contains("1.79769e+308"));
  c = tiny(flowprior::data::Toy2D::Ring5);
  c.divergence_factor = inf;  // disables the explosion rule only
  REQUIRE_NOTHROW(c.validate());
}

namespace {

std::filesystem::path fresh_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("flowprior_toy2d_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("toy2d pipeline: an unwritable output folder is refused before training",
          "[pipeline][error]") {
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  flowprior::Index steps = 0;
  c.on_prior_step = [&](flowprior::Index) { ++steps; };
  // /proc exists but takes no new files, even for root; /dev/null/x has a file as its parent.
  for (const char* out : {"/proc", "/dev/null/x"}) {
    CAPTURE(out);
    REQUIRE_THROWS_AS(pipeline::run_toy2d(c, out), flowprior::io_error);
    REQUIRE_THROWS_WITH(pipeline::run_toy2d(c, out),
                        Catch::Contains("output folder") && Catch::Contains(out));
  }
  REQUIRE(steps == 0);
}

TEST_CASE(
    "toy2d pipeline: a diverging prior stops with numeric_error and keeps the last good "
    "checkpoint",
    "[pipeline][error]") {
  // lr 1e3 explodes at once (the checkpoint left is the one of step 0); lr 3 with the default
  // warmup trains for a while first (the checkpoint left is the last periodic one).
  const double lr = GENERATE(1e3, 3.0);
  CAPTURE(lr);
  const auto dir = fresh_dir("diverge");
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  c.prior_lr = lr;
  c.prior_steps = 200;
  c.checkpoint_every = 3;
  std::string message;
  try {
    pipeline::run_toy2d(c, dir.string());
  } catch (const flowprior::numeric_error& e) {
    message = e.what();
  }
  INFO(message);
  REQUIRE_THAT(message, Catch::Contains("prior training diverged at step"));
  // The checkpoint on disk loads and holds finite parameters of a step before the divergence.
  const auto ckpt = (dir / "prior.ckpt.safetensors").string();
  REQUIRE(std::filesystem::exists(ckpt));
  flowprior::nn::AdaLNMlp<double> net(pipeline::toy2d_net_config(c));
  flowprior::train::FlowMatchingTrainer<flowprior::nn::AdaLNMlp<double>> trainer(
      net, c.convention, pipeline::toy2d_trainer_config(c));
  flowprior::Rng rng;
  REQUIRE_NOTHROW(flowprior::train::load_checkpoint(ckpt, trainer, net, rng));
  REQUIRE(trainer.steps() < c.prior_steps);
  REQUIRE(trainer.steps() % c.checkpoint_every == 0);
  if (lr < 10) REQUIRE(trainer.steps() > 0);
  REQUIRE_THAT(message, Catch::Contains("keeps the last good state, step " +
                                        std::to_string(trainer.steps())));
  const std::vector<double> ema = trainer.ema().weights();  // a host copy
  for (flowprior::Index i = 0; i < net.num_params(); ++i) {
    REQUIRE(std::isfinite(net.parameters()[i]));
    REQUIRE(std::isfinite(ema[std::size_t(i)]));
  }
  REQUIRE_FALSE(std::filesystem::exists(dir / "prior.safetensors"));
  // Resuming from it with the same options diverges again, at the same step: the same state.
  auto again = c;
  again.resume = true;
  std::string message2;
  try {
    pipeline::run_toy2d(again, dir.string());
  } catch (const flowprior::numeric_error& e) {
    message2 = e.what();
  }
  REQUIRE(message2 == message);
  std::filesystem::remove_all(dir);
}

TEST_CASE("toy2d pipeline: files carry the run's identity and resume continues bit for bit",
          "[pipeline]") {
  const bool single = GENERATE(false, true);
  CAPTURE(single);
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  c.prior_steps = 40;
  c.checkpoint_every = 10;
  c.seed = 12345678901234567ull;
  c.single_precision = single;
  if (single) c.prior_time_group = 4;
  // An uninterrupted run.
  const auto a_dir = fresh_dir("resume_a");
  const auto a = pipeline::run_toy2d(c, a_dir.string());
  REQUIRE(a.resumed_from == -1);
  // The checkpoint and the prior name the run: its seed, its options and one identifier.
  const auto meta = io::Safetensors::read((a_dir / "prior.ckpt.safetensors").string()).metadata();
  REQUIRE(meta.at("user.seed") == "12345678901234567");
  REQUIRE(meta.at("user.prior_lr") == "0.002");
  REQUIRE(meta.at("user.run_id") == pipeline::toy2d_run_id(c));
  REQUIRE(io::Safetensors::read((a_dir / "prior.safetensors").string()).metadata().at("run_id") ==
          pipeline::toy2d_run_id(c));
  auto other = c;
  other.seed = 1;
  REQUIRE(pipeline::toy2d_run_id(other) != pipeline::toy2d_run_id(c));
  other = c;
  other.progress = !c.progress;  // does not change the results: same run
  other.checkpoint_every = 7;
  REQUIRE(pipeline::toy2d_run_id(other) == pipeline::toy2d_run_id(c));
  const auto text = pipeline::toy2d_metrics(c, a).dump(2);
  REQUIRE(text.find(pipeline::toy2d_run_id(c)) != std::string::npos);
  REQUIRE(text.find("\"seed_string\": \"12345678901234567\"") != std::string::npos);
  REQUIRE(text.find("\"seed\": 12345678901234567,") != std::string::npos);  // exact, too

  // The same run killed after 25 steps (the last periodic checkpoint is at step 20), resumed.
  const auto b_dir = fresh_dir("resume_b");
  auto killed = c;
  struct Killed {};
  killed.on_prior_step = [](flowprior::Index done) {
    if (done == 25) throw Killed{};
  };
  REQUIRE_THROWS_AS(pipeline::run_toy2d(killed, b_dir.string()), Killed);
  REQUIRE_FALSE(std::filesystem::exists(b_dir / "prior.safetensors"));
  auto resume = c;
  resume.resume = true;
  flowprior::Index first_step = -1;
  resume.on_prior_step = [&](flowprior::Index done) {
    if (first_step < 0) first_step = done;
  };
  const auto b = pipeline::run_toy2d(resume, b_dir.string());
  REQUIRE(b.resumed_from == 20);
  REQUIRE(first_step == 21);
  REQUIRE(b.train_step == a.train_step);
  REQUIRE(b.train_loss == a.train_loss);
  REQUIRE(b.heldout_nll_ode == a.heldout_nll_ode);
  REQUIRE(b.grid_align_trained == a.grid_align_trained);
  REQUIRE(b.latents_trained == a.latents_trained);
  REQUIRE(io::read_file((b_dir / "prior.safetensors").string()) ==
          io::read_file((a_dir / "prior.safetensors").string()));
  // Resuming a finished run trains nothing and gives the same results again.
  first_step = -1;
  const auto b2 = pipeline::run_toy2d(resume, b_dir.string());
  REQUIRE(b2.resumed_from == 40);
  REQUIRE(first_step == -1);
  REQUIRE(b2.latents_trained == a.latents_trained);

  // Options that differ from the checkpoint's are a config_error naming them.
  auto differ = resume;
  differ.prior_lr = 3e-3;
  REQUIRE_THROWS_AS(pipeline::run_toy2d(differ, b_dir.string()), flowprior::config_error);
  REQUIRE_THROWS_WITH(pipeline::run_toy2d(differ, b_dir.string()), Catch::Contains("prior_lr") &&
                                                                       Catch::Contains("0.002") &&
                                                                       Catch::Contains("0.003"));
  differ = resume;
  differ.seed = 7;
  REQUIRE_THROWS_WITH(pipeline::run_toy2d(differ, b_dir.string()), Catch::Contains("seed"));
  differ = resume;
  differ.grid = 6;
  REQUIRE_THROWS_WITH(pipeline::run_toy2d(differ, b_dir.string()), Catch::Contains("grid"));
  // Nothing to resume from.
  const auto empty = fresh_dir("resume_empty");
  REQUIRE_THROWS_AS(pipeline::run_toy2d(resume, empty.string()), flowprior::io_error);
  std::filesystem::remove_all(a_dir);
  std::filesystem::remove_all(b_dir);
  std::filesystem::remove_all(empty);
}

namespace {

// Reports `size` ranks but cannot communicate: enough for the checks made before any collective
// (Toy2dConfig::validate, the trainer configuration). A collective fails the test.
class SilentRanks final : public flowprior::train::Communicator {
 public:
  explicit SilentRanks(int size) : size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  void allreduce_sum(double*, flowprior::Index, const char* what) override { fail(what); }
  void allreduce_sum(float*, flowprior::Index, const char* what) override { fail(what); }
  void broadcast(double*, flowprior::Index, int, const char* what) override { fail(what); }
  void broadcast(float*, flowprior::Index, int, const char* what) override { fail(what); }
  void barrier(const char* what) override { fail(what); }

 private:
  [[noreturn]] static void fail(const char* what) {
    throw std::logic_error(std::string("SilentRanks cannot communicate: ") + what);
  }
  int size_;
};

}  // namespace

TEST_CASE("toy2d pipeline: data-parallel options are totals split over the ranks",
          "[pipeline][distributed]") {
  auto c = tiny(flowprior::data::Toy2D::Ring5);  // batch 32, latents 20
  const std::string id = pipeline::toy2d_run_id(c);
  SilentRanks three(3), two(2);
  c.comm = &three;
  REQUIRE(c.ranks() == 3);
  REQUIRE_THROWS_AS(c.validate(), flowprior::config_error);
  REQUIRE_THROWS_WITH(c.validate(), Catch::Contains("batch (32) and latents (20) must be "
                                                    "multiples of the 3 ranks"));
  c.comm = &two;
  REQUIRE_NOTHROW(c.validate());
  REQUIRE(pipeline::toy2d_trainer_config(c).batch == 16);  // a rank's share
  REQUIRE(pipeline::toy2d_run_id(c) == id);                // the same run as on one process
  c.latents = 21;
  REQUIRE_THROWS_WITH(c.validate(), Catch::Contains("latents (21)"));
  c.comm = nullptr;
  REQUIRE(c.ranks() == 1);
  REQUIRE_NOTHROW(c.validate());
  REQUIRE(pipeline::toy2d_trainer_config(c).batch == 32);
}

TEST_CASE("toy2d pipeline: a one-rank communicator gives the results of none, bit for bit",
          "[pipeline][distributed]") {
  auto c = tiny(flowprior::data::Toy2D::Ring5);
  const auto a_dir = fresh_dir("comm_none"), b_dir = fresh_dir("comm_one");
  const auto a = pipeline::run_toy2d(c, a_dir.string());
  flowprior::train::LocalCommunicator one;
  c.comm = &one;
  const auto b = pipeline::run_toy2d(c, b_dir.string());
  REQUIRE(a.ranks == 1);
  REQUIRE(b.ranks == 1);
  REQUIRE(b.train_loss == a.train_loss);
  REQUIRE(b.heldout_nll_ode == a.heldout_nll_ode);
  REQUIRE(b.grid_align_trained == a.grid_align_trained);
  REQUIRE(b.latents_trained == a.latents_trained);
  REQUIRE(b.latents_exact == a.latents_exact);
  REQUIRE(b.track_nll_trained == a.track_nll_trained);
  REQUIRE(io::read_file((b_dir / "prior.safetensors").string()) ==
          io::read_file((a_dir / "prior.safetensors").string()));
  // No run writes user.ranks: the checkpoint is the same file on any number of ranks (the
  // trainer's entry is the global batch).
  const auto meta = io::Safetensors::read((b_dir / "prior.ckpt.safetensors").string()).metadata();
  REQUIRE(meta.count("user.ranks") == 0);
  REQUIRE(pipeline::toy2d_metrics(c, b)["config"]["ranks"] == 1);
  // Resuming it on one rank works.
  c.resume = true;
  REQUIRE(pipeline::run_toy2d(c, b_dir.string()).resumed_from == c.prior_steps);
  std::filesystem::remove_all(a_dir);
  std::filesystem::remove_all(b_dir);
}
