// 30: the image latent-alignment pipeline, the paper's Table 1 experiment end to end
// (docs/image_pipeline.md). On Fashion-MNIST (Debian's dataset-fashion-mnist) by default, or on
// an ImageNet-style folder (--imagenet DIR with DIR/train/<class>/ and DIR/val/<class>/):
//
//   1. a classifier on the pixels (its features: the semantic target and the space of the
//      Frechet distances); targets (gaussian, pca, classifier, features:FILE) and a flow prior
//      trained on each, with its held-out NLL;
//   2. autoencoders with one budget: plain (lambda 0), KL-regularised, and aligned with each
//      target's frozen prior at each lambda;
//   3. a MAR generator with a per-token flow head on each autoencoder's latents;
//   4. evaluation: PSNR, rFID-like and gFID-like Frechet distances, the latents' NLL under the
//      priors, a linear probe, and the Fig. 4 probes (alignment loss vs kNN distance).
//
// Writes into --out: one folder per stage (skipped when done with the same options, resumed
// from its checkpoint when interrupted), reconstructions.png, samples.png, curves.png,
// fig4_knn.png, table.md and metrics.json.
//
// Built with flowprior::mpi it also runs data-parallel: `mpirun -np P 30_image_pipeline ...`.
// Every training stage averages its gradient over the ranks, each rank training on its slice of
// the global batch (--*-batch stay the global batches; the loaders read only the rank's shard of
// the images); the evaluation runs on every rank; rank 0 alone prints and writes
// (docs/distributed.md "The image pipeline").
#include <CLI/CLI.hpp>
#include <flowprior/datasets/datasets.hpp>
#include <flowprior/plot/png.hpp>
#include <memory>

#include "example_cli.hpp"
#include "image_pipeline/generator.hpp"
#include "image_pipeline/report.hpp"
#if defined(FLOWPRIOR_EXAMPLE_MPI)
#include <flowprior/mpi/communicator.hpp>
#endif

namespace {

using namespace flowprior;
using namespace flowprior::image_pipeline;

int run(const PipelineConfig& c, const Ranks& ranks) {
  const auto t0 = std::chrono::steady_clock::now();
  c.validate();
  std::error_code ec;
  std::filesystem::create_directories(c.out, ec);
  if (ec) io::fail(c.out, "cannot create the output folder (" + ec.message() + ")");
  ranks.on_lead("the output folder", [&] { pipeline::detail::probe_output_folder(c.out); });

  Data loaded = load_data(c);  // every rank opens the data (its loaders read only its shard)
  loaded.ranks = ranks;
  const Data& d = loaded;
  std::printf("data: %s; %td held-out images evaluated\n", d.description.c_str(),
              Index(d.eval.cols()));
  Json cls_results;
  const std::unique_ptr<Classifier> cls = classifier_stage(c, d, cls_results);

  const int last = c.last_stage();
  if (last < 1) {
    std::printf("done: --stages ends with the classifier (%s/classifier)\n", c.out.c_str());
    return 0;
  }
  std::vector<Target> targets;
  for (const auto& spec : c.targets) targets.push_back(target_stage(c, d, spec, cls.get()));
  if (last < 2) {
    std::printf("done: --stages ends with the targets (%s/target-*)\n", c.out.c_str());
    return 0;
  }

  // Held-out features (the reference of both Frechet distances); the Fig. 4 probe's images
  // and target samples; the linear probe's training images.
  const MatF eval_feats = classifier_features(*cls, d, d.eval);
  eval::FeatureStats eval_stats(eval_feats.rows());
  eval_stats.add(ConstMatrixView<float>(eval_feats));
  FigProbe probe;
  if (!targets.empty()) {
    probe.target = &targets.front();
    const Index imgs =
        std::min<Index>((c.knn_latents + c.latent_tokens - 1) / c.latent_tokens, d.eval.cols());
    probe.images = d.eval.leftCols(imgs);
    probe.refs = targets.front().held.leftCols(std::min<Index>(2000, targets.front().held.cols()));
  }

  std::vector<Autoencoder> aes;
  for (const AeSpec& a : autoencoder_specs(c, targets)) {
    aes.push_back(autoencoder_stage(c, d, a, targets, targets.empty() ? nullptr : &probe));
    Autoencoder& ae = aes.back();
    const Json ev = evaluate_autoencoder(c, d, ae, *cls, eval_stats, targets);
    for (auto it = ev.begin(); it != ev.end(); ++it) ae.results[it.key()] = it.value();
    const std::uint64_t skipped = ae.results.value("skipped_images", std::uint64_t{0});
    std::printf(
        "autoencoder %s: PSNR %.2f dB, rFID-like %.3f, probe accuracy %.3f%s\n", a.name.c_str(),
        ae.results["psnr_db"].get<double>(), ae.results["rfid_like"].get<double>(),
        ae.results["probe_test_accuracy"].get<double>(),
        skipped ? (" (" + std::to_string(skipped) + " unreadable images skipped)").c_str() : "");
  }

  std::vector<MatF> sample_rows;
  for (Autoencoder& ae : aes) {
    if (last < 3) break;  // --stages ends with the autoencoders: no generators
    const GeneratorResult g = generator_stage(c, d, ae, *cls, eval_stats);
    for (auto it = g.results.begin(); it != g.results.end(); ++it)
      ae.results["gen_" + it.key()] = it.value();
    ae.results["gfid_like"] = g.results.value("gfid_like", 0.0);
    sample_rows.push_back(g.grid);
    std::printf("generator on %s: gFID-like %.3f (%td samples)\n", ae.spec.name.c_str(),
                ae.results["gfid_like"].get<double>(), c.gen_samples);
  }

  // Figures, table, metrics: rank 0 (the ranks hold the same results).
  std::vector<MatF> recon_rows = {d.eval.leftCols(std::min<Index>(c.grid, d.eval.cols()))};
  for (const auto& ae : aes) recon_rows.push_back(ae.grid_recon);
  const std::string table = results_table(aes, targets);
  ranks.on_lead("the figures and the table", [&] {
    write_image_rows(c.out + "/reconstructions.png", recon_rows, d.channels, d.side);
    if (!sample_rows.empty())
      write_image_rows(c.out + "/samples.png", sample_rows, d.channels, d.side);
    write_curves(c.out + "/curves.png", aes, targets);
    if (!targets.empty()) write_fig4(c.out + "/fig4_knn.png", aes);
    io::atomic_write(c.out + "/table.md", [&](io::Writer& w) { w.write(table); });
  });

  Json cfg = Json::object();
  cfg["preset"] = c.preset;
  cfg["seed"] = c.seed;
  cfg["targets"] = c.targets;
  cfg["lambdas"] = c.lambdas;
  cfg["kl_beta"] = c.kl_beta;
  cfg["autoencoder"] = {{"patch", c.patch},
                        {"width", c.width},
                        {"depth", c.depth},
                        {"heads", c.heads},
                        {"latent_tokens", c.latent_tokens},
                        {"latent_dim", c.latent_dim},
                        {"steps", c.ae_steps},
                        {"batch", c.ae_batch},
                        {"lr", c.ae_lr},
                        {"align_draws", c.align_draws}};
  cfg["prior"] = {{"width", c.prior_width},
                  {"depth", c.prior_depth},
                  {"steps", c.prior_steps},
                  {"batch", c.prior_batch}};
  cfg["generator"] = {{"width", c.gen_width},           {"depth", c.gen_depth},
                      {"head_width", c.gen_head_width}, {"head_depth", c.gen_head_depth},
                      {"steps", c.gen_steps},           {"batch", c.gen_batch},
                      {"samples", c.gen_samples},       {"sample_iters", c.sample_iters},
                      {"ode_steps", c.ode_steps}};
  Json tj = Json::array();
  for (const auto& t : targets) tj.push_back(t.results);
  Json aj = Json::array();
  for (const auto& ae : aes) aj.push_back(ae.results);
  const double wall = seconds_since(t0);
  const Json doc = {{"example", "30_image_pipeline"},
                    {"data", d.description},
                    {"skipped_images", d.skipped},
                    {"config", cfg},
                    {"classifier", cls_results},
                    {"targets", tj},
                    {"autoencoders", aj},
                    {"ranks", ranks.size()},
                    {"wall_seconds", wall}};
  ranks.on_lead("metrics.json", [&] { pipeline::write_metrics(c.out + "/metrics.json", doc); });
  std::printf("\n%s\n", table.c_str());
  std::printf(
      "finished in %.1f s; wrote %s/{reconstructions.png, %scurves.png, %stable.md, "
      "metrics.json}\n",
      wall, c.out.c_str(), sample_rows.empty() ? "" : "samples.png, ",
      targets.empty() ? "" : "fig4_knn.png, ");
  return 0;
}

/// The value of --preset in argv ("default" without one): the presets set the other options'
/// defaults, so it is read before they are declared.
std::string preset_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--preset" && i + 1 < argc) return argv[i + 1];
    if (a.rfind("--preset=", 0) == 0) return a.substr(9);
  }
  return "default";
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // stage lines reach a log file as they happen
  double mpi_timeout = 300;
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  std::unique_ptr<flowprior::mpi::Session> session;
  if (!flowprior::examples::start_mpi(&argc, &argv, session)) return 1;
#endif
  CLI::App app{"flowprior: the image latent-alignment pipeline (the paper's Table 1 experiment)"};
  PipelineConfig c;
  try {
    c = PipelineConfig::preset_named(preset_of(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  c.data = ds::fashion_mnist_dir();
  std::string preset = c.preset;
  app.add_option("--preset", preset, "default (Fashion-MNIST, 2 cores), smoke (seconds) or paper")
      ->capture_default_str();
  app.add_option("--data", c.data, "folder of the MNIST-family .gz files")->capture_default_str();
  app.add_option("--imagenet", c.imagenet,
                 "ImageNet-style root with train/<class>/ and val/<class>/ (instead of --data)");
  app.add_option("--image-size", c.image_size, "ImageNet-style: side after resize and crop")
      ->capture_default_str();
  app.add_option("--out", c.out, "output folder (created)")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of everything")
      ->check(example::kNonNegativeInteger)
      ->capture_default_str();
  app.add_option(
         "--targets", c.targets,
         "targets: gaussian, pca, classifier, features:FILE (.npy, or .safetensors[:TENSOR]; one "
         "row per sample)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--lambdas", c.lambdas, "alignment weights (e.g. 0.001,0.005,0.01,0.05)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--kl-beta", c.kl_beta, "KL weight of the KL baseline (mean per element)")
      ->capture_default_str();
  bool no_plain = false, no_kl = false;
  app.add_flag("--no-plain", no_plain, "leave out the plain autoencoder");
  app.add_flag("--no-kl", no_kl, "leave out the KL-regularised autoencoder");
  app.add_option("--stages", c.stages, "stages to run: classifier,target,ae,gen")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--redo", c.redo, "stages recomputed even when done: classifier,target,ae,gen,all")
      ->delimiter(',');
  app.add_option("--eval-images", c.eval_images, "held-out images evaluated")
      ->capture_default_str();
  app.add_option("--probe-images", c.probe_images, "training images of the linear probe")
      ->capture_default_str();
  app.add_option("--latent-pool", c.latent_pool, "training images encoded for the generator")
      ->capture_default_str();
  app.add_option("--loader-threads", c.loader_threads, "loader worker threads (0: inline)")
      ->capture_default_str();
  app.add_option("--cls-hidden", c.cls_hidden, "classifier hidden widths")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--cls-steps", c.cls_steps, "classifier steps")->capture_default_str();
  app.add_option("--cls-batch", c.cls_batch, "classifier batch")->capture_default_str();
  app.add_option("--cls-lr", c.cls_lr, "classifier peak learning rate")->capture_default_str();
  app.add_option("--target-samples", c.target_samples, "samples per target (10% held out)")
      ->capture_default_str();
  app.add_option("--pca-images", c.pca_images, "images whose patches fit the PCA target")
      ->capture_default_str();
  app.add_option("--prior-width", c.prior_width, "prior (AdaLN MLP) width")->capture_default_str();
  app.add_option("--prior-depth", c.prior_depth, "prior blocks")->capture_default_str();
  app.add_option("--prior-steps", c.prior_steps, "prior training steps")->capture_default_str();
  app.add_option("--prior-batch", c.prior_batch, "prior batch")->capture_default_str();
  app.add_option("--prior-lr", c.prior_lr, "prior peak learning rate")->capture_default_str();
  app.add_option("--nll-points", c.nll_points, "points scored by the likelihood ODE")
      ->capture_default_str();
  app.add_option("--patch", c.patch, "autoencoder patch side")->capture_default_str();
  app.add_option("--width", c.width, "autoencoder width")->capture_default_str();
  app.add_option("--depth", c.depth, "encoder and decoder blocks")->capture_default_str();
  app.add_option("--heads", c.heads, "attention heads")->capture_default_str();
  app.add_option("--latent-tokens", c.latent_tokens, "latent tokens T per image")
      ->capture_default_str();
  app.add_option("--latent-dim", c.latent_dim, "numbers d per latent token")->capture_default_str();
  app.add_option("--ae-steps", c.ae_steps, "autoencoder steps (every autoencoder)")
      ->capture_default_str();
  app.add_option("--ae-batch", c.ae_batch, "autoencoder batch")->capture_default_str();
  app.add_option("--ae-warmup", c.ae_warmup, "autoencoder warmup steps")->capture_default_str();
  app.add_option("--ae-lr", c.ae_lr, "autoencoder peak learning rate")->capture_default_str();
  app.add_option("--ae-ema", c.ae_ema, "autoencoder EMA decay")->capture_default_str();
  app.add_option("--align-draws", c.align_draws, "K: (t, eps) draws per latent token")
      ->capture_default_str();
  app.add_option("--log-every", c.log_every, "steps between logged points and Fig. 4 probes")
      ->capture_default_str();
  app.add_option("--knn-latents", c.knn_latents, "latent tokens per Fig. 4 probe")
      ->capture_default_str();
  app.add_option("--gen-width", c.gen_width, "generator transformer width")->capture_default_str();
  app.add_option("--gen-depth", c.gen_depth, "generator blocks")->capture_default_str();
  app.add_option("--gen-heads", c.gen_heads, "generator attention heads")->capture_default_str();
  app.add_option("--gen-head-width", c.gen_head_width, "flow head width")->capture_default_str();
  app.add_option("--gen-head-depth", c.gen_head_depth, "flow head blocks")->capture_default_str();
  app.add_option("--gen-steps", c.gen_steps, "generator steps (every generator)")
      ->capture_default_str();
  app.add_option("--gen-batch", c.gen_batch, "generator batch (images)")->capture_default_str();
  app.add_option("--gen-lr", c.gen_lr, "generator peak learning rate")->capture_default_str();
  app.add_option("--gen-samples", c.gen_samples, "images generated for the gFID-like distance")
      ->capture_default_str();
  app.add_option("--sample-iters", c.sample_iters, "masked autoregressive steps")
      ->capture_default_str();
  app.add_option("--ode-steps", c.ode_steps, "Heun steps per sampled token")->capture_default_str();
  app.add_option("--grid", c.grid, "images per row of the PNG grids")->capture_default_str();
  app.add_option("--stop-at", c.stop_at,
                 "stop a training stage when it reaches this step, keeping its checkpoint (0: "
                 "never); the same command continues");
  app.add_flag("--quiet", c.quiet, "no progress bars");
  app.add_option("--mpi-timeout", mpi_timeout,
                 "under mpirun: seconds a rank waits for the others at a collective")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  c.plain = !no_plain;
  c.kl = !no_kl;
  Ranks ranks;
  ranks.program = "image pipeline";
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  std::unique_ptr<flowprior::mpi::MpiCommunicator> world;
  try {
    flowprior::mpi::MpiOptions mo;
    mo.timeout_s = mpi_timeout;
    world = std::make_unique<flowprior::mpi::MpiCommunicator>(MPI_COMM_WORLD, mo);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (world->size() > 1) ranks.comm = world.get();
#endif
  (void)mpi_timeout;
  const bool many = ranks.size() > 1;
  if (!ranks.lead()) {  // rank 0 alone prints (errors still reach stderr from every rank)
    c.quiet = true;
    if (std::freopen("/dev/null", "w", stdout) == nullptr) std::fclose(stdout);
  }
  try {
    return run(c, ranks);
  } catch (const Stopped& s) {
    std::printf("stopped %s at step %td (--stop-at): run the command again to continue\n",
                s.stage.c_str(), s.step);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    // The other ranks may be waiting in a collective: end the job now (docs/distributed.md).
    if (many) flowprior::mpi::MpiCommunicator::abort_all(1);
#endif
    (void)many;
    return 1;
  }
}
