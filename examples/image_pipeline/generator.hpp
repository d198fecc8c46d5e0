// Stage 3 of the image pipeline: a MAR generator with a per-token flow head (nn/mar.hpp,
// train/mar.hpp) trained on one autoencoder's latents, scaled by 1/std as the paper does; its
// samples decoded to images and compared with the held-out images (gFID-like).
#pragma once

#include "stages.hpp"

namespace flowprior {
namespace image_pipeline {

struct GeneratorResult {
  Json results;
  MatF grid;  ///< the first --grid generated images
};

inline nn::MarConfig generator_config(const PipelineConfig& c) {
  nn::MarConfig m;
  m.tokens = c.latent_tokens;
  m.token_dim = c.latent_dim;
  m.width = c.gen_width;
  m.depth = c.gen_depth;
  m.heads = c.gen_heads;
  m.head_width = c.gen_head_width;
  m.head_depth = c.gen_head_depth;
  m.time_freq_dim = c.gen_head_width >= 512 ? 256 : 64;
  return m;
}

inline GeneratorResult generator_stage(const PipelineConfig& c, const Data& d,
                                       const Autoencoder& ae, const Classifier& cls,
                                       const eval::FeatureStats& eval_stats) {
  GeneratorResult g;
  const nn::MarConfig mc = generator_config(c);
  std::map<std::string, std::string> id = {
      {"autoencoder", ae.spec.name + "/" + fingerprint(ae.model->parameters())},
      {"model", std::to_string(mc.width) + "/" + std::to_string(mc.depth) + "/" +
                    std::to_string(mc.heads) + "/" + std::to_string(mc.head_width) + "x" +
                    std::to_string(mc.head_depth)},
      {"steps", std::to_string(c.gen_steps)},
      {"batch", std::to_string(c.gen_batch)},
      {"lr", exact_text(c.gen_lr)},
      {"latent_pool", std::to_string(c.latent_pool)},
      {"samples", std::to_string(c.gen_samples) + "/" + std::to_string(c.sample_iters) + "/" +
                      std::to_string(c.ode_steps)},
      {"seed", std::to_string(c.seed)}};
  Stage st(c.out, "gen-" + ae.spec.name, "gen", id, c.redoes("gen"), d.ranks);
  const std::string grid_file = st.path("samples.safetensors");
  if (st.done()) {
    const io::Safetensors s = io::Safetensors::read(grid_file);
    const auto& e = s.at("grid");
    g.grid.resize(d.image_dim(), Index(e.shape[0]));
    s.get<float>("grid", g.grid.data(), e.numel());
    g.results = st.results();
    std::printf("generator on %s: done before\n", ae.spec.name.c_str());
    return g;
  }
  if (!c.runs("gen"))
    raise_config("image pipeline", "--stages leaves out gen, but " + st.dir() +
                                       " holds no finished generator of these options");
  const auto t0 = std::chrono::steady_clock::now();
  // The training latents (posterior means), scaled to unit standard deviation.
  const Index pool_images = std::min<Index>(c.latent_pool, Index(d.train_plain->size()));
  MatF pool(c.latent_dim, pool_images * c.latent_tokens);
  for_chunks(*d.train_plain, pool_images, c.seed + 29, 1000, nullptr,
             [&](Index first, const MatF& imgs, const std::vector<int>&) {
               pool.middleCols(first * c.latent_tokens, imgs.cols() * c.latent_tokens) =
                   encode_all(*ae.model, imgs);
             });
  const double mean = pool.cast<double>().mean();
  const double sd = std::sqrt((pool.array().cast<double>() - mean).square().mean());
  const float scale = float(1.0 / std::max(sd, 1e-12));
  pool *= scale;
  const Index T = c.latent_tokens, dim = c.latent_dim, images = pool.cols() / T;

  nn::MarGenerator<float> net(mc);
  Rng rng(c.seed * 15485863 + 7);
  net.init(rng);
  train::MarTrainerConfig tc;
  tc.schedule = optim::LrSchedule::cosine(c.gen_lr, std::max<Index>(1, c.gen_steps / 10),
                                          c.gen_steps, c.gen_lr * 0.01);
  tc.ema_decay = std::clamp(1.0 - 10.0 / double(c.gen_steps), 0.0, 0.9999);
  train::MarTrainer<float> trainer(net, kConv, tc);
  d.ranks.attach(trainer);
  d.ranks.per_rank("--gen-batch", c.gen_batch);
  MatF batch(dim, c.gen_batch * T);  // every rank draws the global batch, trains on its slice
  std::vector<double> cs, cl;
  double running = 0;
  const std::string ckpt = st.path("checkpoint.safetensors");
  if (std::filesystem::exists(ckpt) && !st.redo()) {
    const io::Safetensors s = io::Safetensors::read(ckpt);
    st.check_meta(ckpt, s.metadata());
    train::load_checkpoint(s, trainer, rng);
    cs = curve_values(s.metadata().at("user.curve_step"));
    cl = curve_values(s.metadata().at("user.curve_loss"));
    running = cl.empty() ? 0.0 : cl.back();
    std::printf("generator on %s: resumed at step %td\n", ae.spec.name.c_str(), trainer.steps());
  }
  auto save = [&] {
    auto meta = st.identity_meta();
    meta["curve_step"] = curve_text(cs);
    meta["curve_loss"] = curve_text(cl);
    train::save_checkpoint(ckpt, trainer, rng, meta);
  };
  util::Progress bar("gen " + ae.spec.name, c.gen_steps - trainer.steps(), !c.quiet);
  const Index first = trainer.steps();
  for (Index s = first; s < c.gen_steps; ++s) {
    for (Index b = 0; b < c.gen_batch; ++b) {
      const Index k = std::min<Index>(Index(uniform(rng, 0.0, double(images))), images - 1);
      batch.middleCols(b * T, T) = pool.middleCols(k * T, T);
    }
    const auto stats = trainer.step(d.ranks.slice(ConstMatrixView<float>(batch)), rng);
    running = s == first && cl.empty() ? stats.loss : 0.98 * running + 0.02 * stats.loss;
    if ((s + 1) % std::max<Index>(1, c.gen_steps / 100) == 0) {
      cs.push_back(double(s + 1));
      cl.push_back(running);
    }
    char msg[48];
    std::snprintf(msg, sizeof msg, "loss %.4f", running);
    bar.update(s + 1 - first, msg);
    if ((s + 1) % std::max<Index>(1, c.gen_steps / 4) == 0) save();
    if (s + 1 == c.stop_at && s + 1 < c.gen_steps) {
      bar.finish("stopped");
      save();
      throw Stopped{st.name(), s + 1};
    }
  }
  bar.finish();
  save();
  const double train_s = seconds_since(t0);
  nn::MarGenerator<float> avg(mc);
  trainer.copy_ema_to(avg);
  d.ranks.on_lead("the generator's weights",
                  [&] { io::save_state_dict(avg, st.path("generator.safetensors")); });

  // Samples: generated latents, unscaled, decoded; their features against the held-out ones.
  const auto t1 = std::chrono::steady_clock::now();
  train::MarSampleOptions so;
  so.steps = c.sample_iters;
  so.ode_steps = c.ode_steps;
  MatF lat(dim, c.gen_samples * T);
  Rng srng(c.seed * 15485863 + 8);
  train::MarScratch<float> scratch;
  for (Index i = 0; i < c.gen_samples; i += 100) {
    const Index n = std::min<Index>(100, c.gen_samples - i);
    train::mar_sample(avg, kConv, n, so, srng,
                      MatrixView<float>(lat.data() + i * T * dim, dim, n * T), scratch);
  }
  lat /= scale;
  const MatF gen = decode_all(*ae.model, lat);
  const double gfid = feature_frechet(cls, d, gen, eval_stats);
  g.grid = gen.leftCols(std::min<Index>(c.grid, gen.cols()));
  d.ranks.on_lead("the sample grid", [&] {
    io::SafetensorsWriter w;
    w.add("grid", g.grid.data(), {std::int64_t(g.grid.cols()), std::int64_t(g.grid.rows())},
          io::Dtype::F32);
    w.set_checksum(true);
    w.write(grid_file);
  });
  g.results = {{"parameters", net.num_params()},
               {"steps", c.gen_steps},
               {"latent_scale", double(scale)},
               {"final_loss", running},
               {"train_seconds", train_s},
               {"sample_seconds", seconds_since(t1)},
               {"samples", c.gen_samples},
               {"gfid_like", gfid},
               {"curve_step", cs},
               {"curve_loss", cl}};
  st.finish(g.results);
  return g;
}

}  // namespace image_pipeline
}  // namespace flowprior
