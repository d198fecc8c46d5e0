// 20: train the 1-D tokenizer autoencoder (nn::TokenizerAE, docs/math/tokenizer.md) on
// Fashion-MNIST (Debian's dataset-fashion-mnist, or any MNIST-family folder given by --data), in
// float32 (--double: float64) on the CPU: a ViT encoder turns each 28 x 28 image into T latent
// tokens of d numbers, a ViT decoder reads them back into pixels. Training is
// ReconstructionTrainer's (MSE, AdamW, warmup + cosine, clipping, EMA); the loader shuffles per
// epoch and flips images at random.
//
// Writes into --out: reconstructions.png (held-out images above their reconstructions by the
// EMA weights), curves.png (training MSE and learning rate), metrics.json (held-out MSE and PSNR
// of the EMA and the raw weights, speed, the configuration), tokenizer.safetensors (the EMA
// weights, a PyTorch-named state dict) and checkpoint.safetensors (everything a --resume needs,
// the loader's position included). Every option is checked and the output folder probed before
// any work; a diverged step stops the run with a non-zero exit and keeps the last checkpoint.
//
// Built with flowprior::mpi it also runs data-parallel, unchanged: `mpirun -np P 20_tokenizer
// ...` (docs/distributed.md "The tokenizer"). --batch stays the global batch (P must divide
// it); every rank runs the loader for the global batch and trains on its slice, the gradients
// are averaged over the ranks, every rank evaluates the held-out images itself, and rank 0 alone
// prints and writes. A checkpoint resumes on any number of ranks.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <flowprior/datasets/datasets.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/plot/figure.hpp>
#include <flowprior/plot/png.hpp>
#include <flowprior/toy2d/pipeline.hpp>
#include <flowprior/toy2d/progress.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#if defined(FLOWPRIOR_EXAMPLE_MPI)
#include <flowprior/mpi/communicator.hpp>
#endif

#include "example_cli.hpp"
#include "example_ranks.hpp"

namespace {

using namespace flowprior;
namespace ds = flowprior::datasets;
template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

struct Options {
  std::string data = ds::fashion_mnist_dir(), out = "tokenizer_out";
  Index steps = 1000, batch = 64, warmup = 100, log_every = 25, checkpoint_every = 250;
  Index eval_images = 0, grid = 16, stop_at = 0;
  double lr = 2e-3, min_lr = 1e-5, weight_decay = 1e-4, clip = 1.0, ema_decay = 0.99;
  std::uint64_t seed = 0;
  int loader_threads = 1;
  bool no_flip = false, resume = false, quiet = false, double_precision = false;
  nn::TokenizerConfig model;

  Options() {
    model.image_size = 28;
    model.channels = 1;
    model.patch = 4;
    model.width = 128;
    model.depth = 2;
    model.dec_depth = 2;
    model.heads = 4;
    model.latent_tokens = 16;
    model.latent_dim = 8;
  }

  train::ReconstructionConfig trainer() const {
    train::ReconstructionConfig c;
    c.adam.weight_decay = weight_decay;
    c.schedule = optim::LrSchedule::cosine(lr, warmup, steps, min_lr);
    c.clip_norm = clip;
    c.ema_decay = ema_decay;
    return c;
  }

  // Every check that does not need the data, before any work (config_error naming the option);
  // `ranks`: the processes of the run, which must divide the global batch.
  void validate(int ranks) const {
    auto positive = [](const char* name, Index v) {
      if (v < 1) raise_config("20_tokenizer", std::string(name) + " must be >= 1");
    };
    positive("--steps", steps);
    positive("--batch", batch);
    positive("--log-every", log_every);
    positive("--grid", grid);
    if (warmup < 0 || warmup >= steps)
      raise_config("20_tokenizer", "--warmup must lie in [0, --steps)");
    if (checkpoint_every < 0) raise_config("20_tokenizer", "--checkpoint-every must be >= 0");
    if (eval_images < 0) raise_config("20_tokenizer", "--eval-images must be >= 0 (0: all)");
    if (stop_at < 0 || stop_at > steps)
      raise_config("20_tokenizer", "--stop-at must lie in [0, --steps] (0: run to the end)");
    if (batch > 65536) raise_config("20_tokenizer", "--batch must be <= 65536");
    if (batch % ranks != 0)
      raise_config("20_tokenizer", "--batch " + std::to_string(batch) +
                                       " (the global batch) must be a multiple of the " +
                                       std::to_string(ranks) + " ranks");
    if (grid > 64) raise_config("20_tokenizer", "--grid must be <= 64");
    model.validate();
    trainer().validate();
  }
};

// The processes of the run (docs/distributed.md "The tokenizer", examples/example_ranks.hpp).
// Every rank holds the data; its loader builds only its shard of each global batch, which it
// trains on. Everything else runs on every rank with the same inputs; rank 0 alone prints and
// writes.
using Ranks = examples::Ranks;

// The loader's images (float) as the model's scalar S: x itself for float, a copy in `buf` for
// double.
template <class S>
ConstMatrixView<S> as_scalar(ConstMatrixView<float> x, Mat<S>& buf) {
  if constexpr (std::is_same_v<S, float>) {
    return x;
  } else {
    buf = Eigen::Map<const Eigen::MatrixXf>(x.data, x.rows, x.cols).template cast<S>();
    return ConstMatrixView<S>(buf.data(), buf.rows(), buf.cols());
  }
}

struct Eval {
  Index images = 0;
  double mse = 0;              // over every pixel of every image
  double mean_image_psnr = 0;  // the mean over images of each image's PSNR
  double seconds = 0;
  double psnr() const { return train::ReconstructionStats::psnr_of(mse); }
};

// Held-out reconstruction error of `model` on `src` (first `count` images, in order).
template <class Model>
Eval evaluate(const Model& model, const std::shared_ptr<const ds::SampleSource>& src, Index count,
              Index batch, int threads, Eigen::MatrixXf* first_recon) {
  using S = typename Model::Scalar;
  const auto t0 = std::chrono::steady_clock::now();
  ds::LoaderConfig lc;
  lc.batch_size = batch;
  lc.threads = threads;
  lc.shuffle = false;
  ds::Loader loader(src, lc);
  typename Model::Workspace ws;
  Mat<S> y, recon, buf;
  Eval e;
  double sq = 0, psnr_sum = 0;
  while (e.images < count) {
    const ds::Batch b = loader.next();
    const Index n = std::min<Index>(b.size(), count - e.images);
    const ConstMatrixView<float> x(b.data.data(), b.sample_size, n);
    y.resize(model.config().latent_dim, n * model.config().latent_tokens);
    recon.resize(model.image_dim(), n);
    model.forward(as_scalar<S>(x, buf), y, recon, ws);
    for (Index j = 0; j < n; ++j) {
      double s = 0;
      for (Index i = 0; i < x.rows; ++i) {
        const double d = double(recon(i, j)) - double(x(i, j));
        s += d * d;
      }
      sq += s;
      psnr_sum += train::ReconstructionStats::psnr_of(s / double(x.rows));
    }
    if (first_recon != nullptr && e.images == 0)
      *first_recon = recon.leftCols(std::min<Index>(n, first_recon->cols())).template cast<float>();
    e.images += n;
  }
  e.mse = sq / (double(e.images) * double(model.image_dim()));
  e.mean_image_psnr = psnr_sum / double(e.images);
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return e;
}

std::uint8_t to_byte(float v) {
  const double u = std::round((double(v) + 1.0) * 127.5);
  return static_cast<std::uint8_t>(std::clamp(u, 0.0, 255.0));
}

// Two rows of `n` images (C = 1 or 3, side s), originals above reconstructions, each pixel drawn
// as a `zoom` x `zoom` block, on a light grey background.
void write_grid(const std::string& path, const Eigen::MatrixXf& orig, const Eigen::MatrixXf& rec,
                Index channels, Index side) {
  const int zoom = 3, gap = 4, n = int(orig.cols()), cell = int(side) * zoom;
  const int W = gap + n * (cell + gap), H = gap + 2 * (cell + gap);
  std::vector<std::uint8_t> rgb(std::size_t(W) * std::size_t(H) * 3, 220);
  auto draw = [&](const Eigen::MatrixXf& m, int row) {
    for (int k = 0; k < n; ++k)
      for (int py = 0; py < cell; ++py)
        for (int px = 0; px < cell; ++px) {
          const Index pix = Index(py / zoom) * side + Index(px / zoom);
          const std::size_t at = (std::size_t(gap + row * (cell + gap) + py) * std::size_t(W) +
                                  std::size_t(gap + k * (cell + gap) + px)) *
                                 3;
          for (int c = 0; c < 3; ++c) {
            const Index ch = channels == 3 ? c : 0;
            rgb[at + std::size_t(c)] = to_byte(m(ch * side * side + pix, k));
          }
        }
  };
  draw(orig, 0);
  draw(rec, 1);
  plot::write_png(path, W, H, rgb.data());
}

void write_curves(const std::string& path, const std::vector<double>& step,
                  const std::vector<double>& mse, const std::vector<double>& lr) {
  plot::Figure fig(2, 1, 460, 380, "tokenizer training on Fashion-MNIST");
  auto& a = fig.panel(0, 0);
  a.set_title("training MSE (per logged step)").set_xlabel("step").set_ylabel("MSE");
  a.set_log_y().set_grid();
  if (!step.empty()) a.line(step.data(), mse.data(), int(step.size()), plot::colors::blue);
  auto& b = fig.panel(1, 0);
  b.set_title("learning rate").set_xlabel("step").set_ylabel("lr").set_grid();
  if (!step.empty()) b.line(step.data(), lr.data(), int(step.size()), plot::colors::orange);
  fig.save(path);
}

nlohmann::ordered_json eval_json(const Eval& e) {
  return {{"images", e.images},
          {"mse", e.mse},
          {"psnr_db", e.psnr()},
          {"mean_image_psnr_db", e.mean_image_psnr},
          {"images_per_s", double(e.images) / e.seconds}};
}

template <class S>
int run(const Options& o, const Ranks& ranks) {
  using Model = nn::TokenizerAE<S>;
  using Trainer = train::ReconstructionTrainer<Model>;
  o.validate(ranks.size());
  ranks.agree("20_tokenizer: the output folder", [&] {
    std::error_code ec;
    std::filesystem::create_directories(o.out, ec);
    if (ec) io::fail(o.out, "cannot create the output folder (" + ec.message() + ")");
    pipeline::detail::probe_output_folder(o.out);
  });
  const std::string ckpt = o.out + "/checkpoint.safetensors";
  ranks.agree(
      "20_tokenizer: finding the checkpoint",
      [&] {
        if (o.resume && !std::filesystem::exists(ckpt))
          io::fail(ckpt, "--resume: no checkpoint in the output folder");
      },
      true);

  // Data: the training split through a shuffling, flipping loader; the test split held out.
  ds::ImageArray train_arr = ds::load_fashion_mnist(ds::Split::Train, o.data);
  ds::ImageArray test_arr = ds::load_fashion_mnist(ds::Split::Test, o.data);
  nn::TokenizerConfig mc = o.model;
  mc.image_size = train_arr.height;
  mc.channels = train_arr.channels;
  if (train_arr.width != train_arr.height || mc.image_size % mc.patch != 0)
    raise_config("20_tokenizer", "--patch " + std::to_string(mc.patch) +
                                     " must divide the image side " +
                                     std::to_string(train_arr.height) + " (square images)");
  const Index n_test = Index(test_arr.count);
  const Index eval_n = o.eval_images == 0 ? n_test : std::min(o.eval_images, n_test);
  auto train_src = std::make_shared<ds::ArraySource>(std::move(train_arr), !o.no_flip);
  auto test_src = std::make_shared<ds::ArraySource>(std::move(test_arr), false);

  Model model(mc);
  Rng init(o.seed);
  model.init(init);
  Trainer trainer(model, o.trainer());
  ranks.attach(trainer);
  ds::LoaderConfig lc;  // the global batch; each rank builds and trains on its shard of it
  lc.batch_size = o.batch;
  lc.threads = o.loader_threads;
  lc.seed = o.seed;
  lc.drop_last = true;  // equal batches: one workspace layout
  ranks.shard(lc);
  ds::Loader loader(train_src, lc);
  Rng rng(o.seed);  // not drawn from: kept in the checkpoint for runs that add randomness
  if (o.resume) {
    // Every rank reads the file (a shared folder) and checks the global batch, then the ranks
    // agree; the checkpoint is the same whatever the number of ranks that wrote it.
    std::unique_ptr<io::Safetensors> st;
    ds::Position at;
    ranks.agree(
        "20_tokenizer: reading the checkpoint",
        [&] {
          st = std::make_unique<io::Safetensors>(io::Safetensors::read(ckpt));
          at = ds::position_from_entries(st->metadata());
          const auto saved = st->metadata().find("user.batch");  // absent: an older file
          if (saved != st->metadata().end() && saved->second != std::to_string(o.batch))
            raise_config("20_tokenizer", "--resume: the checkpoint " + ckpt +
                                             " was written with --batch " + saved->second +
                                             " (the global batch), this run has " +
                                             std::to_string(o.batch));
        },
        true);
    train::load_checkpoint(*st, trainer, rng);  // collective: the ranks agree on the outcome
    loader.set_position(at);
    std::printf("resumed from %s at step %td (epoch %lld, batch %lld)\n", ckpt.c_str(),
                trainer.steps(), static_cast<long long>(loader.position().epoch),
                static_cast<long long>(loader.position().batch));
  }
  auto save = [&] {  // collective: rank 0 writes, the ranks agree
    auto meta = ds::position_entries(loader.position());
    meta["batch"] = std::to_string(o.batch);  // the global batch, on any number of ranks
    train::save_checkpoint(ckpt, trainer, rng, meta);
  };
  std::printf(
      "tokenizer: %td parameters, %td x %td latents per %td x %td image, %zu training "
      "images, batch %td, %td steps\n",
      model.num_params(), mc.latent_tokens, mc.latent_dim, mc.image_size, mc.image_size,
      train_src->size(), o.batch, o.steps);
  if (ranks.size() > 1)
    std::printf("data-parallel on %d ranks: %td images per rank and step\n", ranks.size(),
                o.batch / ranks.size());

  // Training.
  std::vector<double> log_step, log_mse, log_lr;
  const Index first = trainer.steps();
  const Index last = o.stop_at > 0 ? std::max(first, o.stop_at) : o.steps;
  util::Progress bar("train", last - first, !o.quiet);
  const auto t0 = std::chrono::steady_clock::now();
  Mat<S> xbuf;  // the batch's slice as S (double only)
  double recent = 0;
  Index recent_n = 0;
  while (trainer.steps() < last) {
    const ds::Batch b = loader.next();               // this rank's shard of the global batch
    const Index rows = ranks.common_rows(b.size());  // equal shards (unreadable images)
    if (rows == 0) continue;
    train::ReconstructionStats st;
    try {
      st = trainer.step(as_scalar<S>(b.view().col_block(0, rows),
                                     xbuf));  // the losses are the global batch's
    } catch (const numeric_error&) {
      bar.finish("diverged");
      std::fprintf(stderr, "the last good state is in %s\n", ckpt.c_str());
      throw;
    }
    recent += st.mse;
    ++recent_n;
    if (st.step % o.log_every == 0 || st.step == last) {
      log_step.push_back(double(st.step));
      log_mse.push_back(recent / double(recent_n));
      log_lr.push_back(st.lr);
      char status[96];
      std::snprintf(status, sizeof status, "mse %.5f psnr %.2f dB", log_mse.back(),
                    train::ReconstructionStats::psnr_of(log_mse.back()));
      bar.update(st.step - first, status);
      recent = 0;
      recent_n = 0;
    }
    if (o.checkpoint_every > 0 && st.step % o.checkpoint_every == 0) save();
  }
  const double train_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bar.finish();
  save();
  const double images_per_s = double(last - first) * double(o.batch) / std::max(train_s, 1e-9);
  if (last < o.steps) {
    std::printf("stopped at step %td of %td (--stop-at): continue with --resume\n", last, o.steps);
    return 0;
  }

  // The EMA weights: saved, evaluated beside the raw weights, and drawn. Every rank evaluates (the
  // ranks hold the same weights and compute the same numbers; none waits at a collective while
  // another evaluates); rank 0 writes.
  Model avg(mc);
  trainer.copy_ema_to(avg);
  ranks.agree("20_tokenizer: writing the weights",
              [&] { io::save_state_dict(avg, o.out + "/tokenizer.safetensors"); });
  const Index g = std::min<Index>(o.grid, eval_n);
  Eigen::MatrixXf recon_grid(model.image_dim(), g);
  const Index eval_batch = 250;
  const Eval ema_eval = evaluate(avg, test_src, eval_n, eval_batch, o.loader_threads, &recon_grid);
  const Eval raw_eval = evaluate(model, test_src, eval_n, eval_batch, o.loader_threads, nullptr);
  ranks.agree("20_tokenizer: writing the figures", [&] {
    ds::LoaderConfig one;
    one.batch_size = g;
    one.threads = 0;
    one.shuffle = false;
    ds::Loader l(test_src, one);
    const Eigen::MatrixXf orig = l.next().matrix();
    write_grid(o.out + "/reconstructions.png", orig, recon_grid, mc.channels, mc.image_size);
    write_curves(o.out + "/curves.png", log_step, log_mse, log_lr);
  });

  const std::uint64_t skipped = ranks.total(loader.skipped_count(), "the skipped images");
  nlohmann::ordered_json cfg;
  for (const auto& kv : mc.entries()) cfg[kv.first] = kv.second;
  nlohmann::ordered_json doc = {{"example", "20_tokenizer"},
                                {"data", o.data},
                                {"model", cfg},
                                {"parameters", model.num_params()},
                                {"ranks", ranks.size()},
                                {"training",
                                 {{"steps", o.steps},
                                  {"steps_this_run", last - first},
                                  {"resumed_from", o.resume ? first : Index(-1)},
                                  {"batch", o.batch},
                                  {"lr", o.lr},
                                  {"warmup", o.warmup},
                                  {"min_lr", o.min_lr},
                                  {"weight_decay", o.weight_decay},
                                  {"clip", o.clip},
                                  {"ema_decay", o.ema_decay},
                                  {"flip", !o.no_flip},
                                  {"precision", o.double_precision ? "float64" : "float32"},
                                  {"seed", o.seed},
                                  {"seconds", train_s},
                                  {"images_per_s", images_per_s},
                                  {"final_mse", log_mse.empty() ? 0.0 : log_mse.back()},
                                  {"skipped_images", skipped}}},
                                {"heldout_ema", eval_json(ema_eval)},
                                {"heldout_raw", eval_json(raw_eval)}};
  ranks.agree("20_tokenizer: writing metrics.json",
              [&] { pipeline::write_metrics(o.out + "/metrics.json", doc); });

  std::printf("trained %td steps in %.1f s (%.0f images/s)\n", last - first, train_s, images_per_s);
  std::printf(
      "held-out (%td test images): EMA weights MSE %.5f, PSNR %.2f dB (mean per image "
      "%.2f dB); raw weights PSNR %.2f dB\n",
      ema_eval.images, ema_eval.mse, ema_eval.psnr(), ema_eval.mean_image_psnr, raw_eval.psnr());
  std::printf(
      "wrote %s/{reconstructions.png, curves.png, metrics.json, tokenizer.safetensors, "
      "checkpoint.safetensors}\n",
      o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  std::unique_ptr<mpi::Session> session;
  if (!examples::start_mpi(&argc, &argv, session)) return 1;
  const bool lead = examples::world_rank() == 0;
#else
  const bool lead = true;
#endif
  CLI::App app{"flowprior: train the 1-D tokenizer autoencoder on Fashion-MNIST"};
  Options o;
  app.add_option("--data", o.data, "folder of the MNIST-family .gz files");
  app.add_option("--out", o.out, "output folder (created)");
  app.add_option("--steps", o.steps, "training steps (batches)");
  app.add_option(
      "--batch", o.batch,
      "images per batch (the global batch: under mpirun the ranks' slices add up to it)");
  app.add_option("--lr", o.lr, "peak learning rate (AdamW)");
  app.add_option("--warmup", o.warmup, "linear warmup steps, then cosine decay to --min-lr");
  app.add_option("--min-lr", o.min_lr, "final learning rate");
  app.add_option("--weight-decay", o.weight_decay, "AdamW's decoupled weight decay");
  app.add_option("--clip", o.clip, "global gradient-norm clip (inf: none)");
  app.add_option("--ema-decay", o.ema_decay, "EMA decay of the weights, in [0, 1)");
  app.add_option("--patch", o.model.patch, "patch side (divides 28: 2, 4, 7, 14)");
  app.add_option("--width", o.model.width, "transformer width");
  app.add_option("--depth", o.model.depth, "encoder blocks");
  app.add_option("--dec-depth", o.model.dec_depth, "decoder blocks");
  app.add_option("--heads", o.model.heads, "attention heads");
  app.add_option("--latent-tokens", o.model.latent_tokens, "latent tokens T per image");
  app.add_option("--latent-dim", o.model.latent_dim, "numbers d per latent token");
  app.add_flag("--qk-norm", o.model.qk_norm, "LayerNorm on queries and keys");
  app.add_flag("--learned-pos", o.model.learned_pos_embed,
               "learned positional embeddings of the patches (from the 2-D sine-cosine table)");
  app.add_option("--eval-images", o.eval_images, "held-out images evaluated (0: all)");
  app.add_option("--grid", o.grid, "images in reconstructions.png");
  app.add_option("--log-every", o.log_every, "steps between logged (averaged) losses");
  app.add_option("--checkpoint-every", o.checkpoint_every,
                 "save the checkpoint every N steps (0: only at the end)");
  app.add_option("--loader-threads", o.loader_threads, "loader worker threads (0: inline)");
  app.add_option("--seed", o.seed, "seed of the weights, the shuffle and the flips")
      ->check(example::kNonNegativeInteger);
  app.add_option("--stop-at", o.stop_at,
                 "stop after this step, keeping the checkpoint (continue with --resume)");
  app.add_flag("--no-flip", o.no_flip, "no random horizontal flips");
  app.add_flag("--double", o.double_precision,
               "train and evaluate in float64 (slower; a run on P ranks then matches one process "
               "to about 1e-15 relative, float32 to about 1e-7)");
  app.add_flag("--resume", o.resume,
               "continue from the checkpoint in --out (same options; any number of ranks)");
  app.add_flag("--quiet", o.quiet, "no progress bar");
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  // Every rank evaluates the held-out images itself, so the ranks meet at every collective
  // within their difference in speed; the deadline only ends a run whose rank hangs (a rank that
  // throws ends the job with abort_all below).
  mpi::MpiOptions mpi_options;
  mpi_options.timeout_s = 300;
  app.add_option("--mpi-timeout", mpi_options.timeout_s,
                 "seconds a rank waits for the others at a collective under mpirun (> 0)");
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return lead ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
  }
  // Before any work, on every rank alike (no collective yet): the communicator and the options.
  // Rank 0 prints the error; every rank exits 1.
  Ranks ranks;
  ranks.program = "20_tokenizer";
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  std::unique_ptr<mpi::MpiCommunicator> world;
#endif
  try {
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    world = std::make_unique<mpi::MpiCommunicator>(MPI_COMM_WORLD, mpi_options);
    if (world->size() > 1) ranks.comm = world.get();
#endif
    o.validate(ranks.size());
  } catch (const std::exception& e) {
    if (lead) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const bool many = ranks.size() > 1;
  if (!ranks.lead()) {  // rank 0 alone prints (errors still reach stderr from every rank)
    o.quiet = true;
    if (std::freopen("/dev/null", "w", stdout) == nullptr) std::fclose(stdout);
  }
  try {
    return o.double_precision ? run<double>(o, ranks) : run<float>(o, ranks);
  } catch (const std::exception& e) {
    if (many)
      std::fprintf(stderr, "error (rank %d): %s\n", ranks.rank(), e.what());
    else
      std::fprintf(stderr, "error: %s\n", e.what());
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    // The other ranks may be waiting in a collective: end the job now (docs/distributed.md).
    if (many) mpi::MpiCommunicator::abort_all(1);
#endif
    return 1;
  }
}
