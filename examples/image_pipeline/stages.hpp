// The stages of the image latent-alignment pipeline (docs/image_pipeline.md): the classifier,
// the targets and their flow priors, the autoencoders, and the generators, each in its own
// folder under --out, skipped when done with the same options, resumed from its checkpoint
// when interrupted (autoencoders, priors), and evaluated on the held-out images.
#pragma once

#include <flowprior/data/pca.hpp>
#include <flowprior/data/projection.hpp>
#include <flowprior/eval/frechet.hpp>
#include <flowprior/eval/knn.hpp>
#include <flowprior/eval/linear_probe.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/classification.hpp>
#include <flowprior/train/latent_alignment.hpp>
#include <flowprior/train/mar.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <flowprior/train/trainer.hpp>
#include <functional>

#include "common.hpp"

namespace flowprior {
namespace image_pipeline {

using Classifier = nn::MlpClassifier<float>;
using PriorNet = nn::AdaLNMlp<float>;
using Tokenizer = nn::TokenizerAE<float>;
using Generator = nn::MarGenerator<float>;
/// Every flow here (priors, alignment, the generator's head) uses the released code's
/// convention: t = 0 data, t = 1 noise.
constexpr Convention kConv = Convention::Code;

/// A curve's values as exact text (checkpoint metadata) and back.
inline std::string curve_text(const std::vector<double>& v) {
  std::string s;
  for (double x : v) s += (s.empty() ? "" : ",") + exact_text(x);
  return s;
}
inline std::vector<double> curve_values(const std::string& s) {
  std::vector<double> v;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) v.push_back(std::strtod(item.c_str(), nullptr));
  return v;
}

/// A loader's batch: the requested one, or the number of training images when there are fewer
/// (a small folder), said on stderr.
inline Index loader_batch(const char* stage, Index batch, const ds::SampleSource& src, bool quiet) {
  const Index n = Index(src.size());
  if (batch <= n) return batch;
  if (!quiet)
    std::fprintf(stderr, "%s: batch %td lowered to the %td training images\n", stage, batch, n);
  return n;
}

/// `f` over `x` (rows, N) in batches of at most `batch` columns: f(first, view).
template <class F>
void batched(const MatF& x, Index batch, F&& f) {
  for (Index i = 0; i < x.cols(); i += batch) {
    const Index n = std::min(batch, Index(x.cols()) - i);
    f(i, ConstMatrixView<float>(x.data() + i * x.rows(), x.rows(), n));
  }
}

// ---------------------------------------------------------------------------------------------
// Stage: the classifier (features of the semantic target and of the Frechet distances)
// ---------------------------------------------------------------------------------------------

/// The classifier sees images area-averaged by an integer factor to at most 32 x 32 (an MLP on
/// the pixels of a 256 x 256 image would be mostly its first layer); 1 for smaller images.
inline Index classifier_pool(const Data& d) { return d.side > 32 ? d.side / 32 : 1; }

/// Images (C side side, N) area-averaged by classifier_pool (the remainder rows and columns of
/// a side that the factor does not divide are dropped).
inline MatF classifier_input(const Data& d, ConstMatrixView<float> x) {
  const Index f = classifier_pool(d);
  if (f == 1) return Eigen::Map<const MatF>(x.data, x.rows, x.cols);
  const Index s = d.side / f, C = d.channels;
  MatF out(C * s * s, x.cols);
  const float w = 1.0f / float(f * f);
  for (Index n = 0; n < x.cols; ++n)
    for (Index c = 0; c < C; ++c)
      for (Index i = 0; i < s; ++i)
        for (Index j = 0; j < s; ++j) {
          float acc = 0;
          for (Index a = 0; a < f; ++a)
            for (Index b = 0; b < f; ++b)
              acc += x(c * d.side * d.side + (i * f + a) * d.side + j * f + b, n);
          out(c * s * s + i * s + j, n) = acc * w;
        }
  return out;
}

inline nn::ClassifierConfig classifier_config(const PipelineConfig& c, const Data& d) {
  nn::ClassifierConfig cc;
  const Index s = d.side / classifier_pool(d);
  cc.input_dim = d.channels * s * s;
  cc.hidden = c.cls_hidden;
  cc.classes = d.classes;
  return cc;
}

/// Penultimate features (hidden.back(), N) of images x (C H W, N).
inline MatF classifier_features(const Classifier& net, const Data& d, const MatF& x) {
  MatF f(net.config().hidden.back(), x.cols());
  Classifier::Workspace ws;
  batched(x, 500, [&](Index i, ConstMatrixView<float> xb) {
    const MatF in = classifier_input(d, xb);
    net.features(ConstMatrixView<float>(in),
                 MatrixView<float>(f.data() + i * f.rows(), f.rows(), xb.cols), ws);
  });
  return f;
}

/// Trains (or loads) the classifier; its held-out accuracy is in the stage's results.
inline std::unique_ptr<Classifier> classifier_stage(const PipelineConfig& c, const Data& d,
                                                    Json& results) {
  const nn::ClassifierConfig cc = classifier_config(c, d);
  std::map<std::string, std::string> id = {{"data", d.description},
                                           {"hidden", join(c.cls_hidden)},
                                           {"steps", std::to_string(c.cls_steps)},
                                           {"batch", std::to_string(c.cls_batch)},
                                           {"lr", exact_text(c.cls_lr)},
                                           {"seed", std::to_string(c.seed)}};
  Stage st(c.out, "classifier", "classifier", id, c.redoes("classifier"), d.ranks);
  auto net = std::make_unique<Classifier>(cc);
  const std::string weights = st.path("classifier.safetensors");
  if (st.done()) {
    io::load_state_dict(*net, io::Safetensors::read(weights));
    results = st.results();
    std::printf("classifier: done before (held-out accuracy %.4f)\n",
                results.value("heldout_accuracy", 0.0));
    return net;
  }
  if (!c.runs("classifier"))
    raise_config("image pipeline", "--stages leaves out classifier, but " + st.dir() +
                                       " holds no finished classifier of these options");
  Rng rng(c.seed * 1000003 + 11);
  net->init(rng);
  train::ClassifierTrainerConfig tc;
  tc.schedule = optim::LrSchedule::cosine(c.cls_lr, std::max<Index>(1, c.cls_steps / 20),
                                          c.cls_steps, c.cls_lr * 0.01);
  train::ClassifierTrainer<Classifier> trainer(*net, tc);
  d.ranks.attach(trainer);
  ds::LoaderConfig lc;  // the global batch; each rank reads and trains on its shard of it
  lc.batch_size = loader_batch("classifier", c.cls_batch, *d.train, c.quiet);
  d.ranks.per_rank("--cls-batch", lc.batch_size);
  d.ranks.shard(lc);
  lc.threads = c.loader_threads;
  lc.seed = c.seed + 101;
  lc.drop_last = true;
  ds::Loader loader(d.train, lc);
  util::Progress bar("classifier", c.cls_steps, !c.quiet);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::int32_t> labels;
  double run_loss = 0, run_acc = 0;
  for (Index s = 0; s < c.cls_steps; ++s) {
    // This rank's shard, with its labels (shorter than its share when unreadable images of it
    // were skipped: then every rank keeps the shortest shard's count, Ranks::common_rows).
    const ds::Batch b = loader.next();
    const Index rows = d.ranks.common_rows(b.size());
    if (rows == 0) continue;  // every image of the batch was unreadable
    labels.assign(b.labels.begin(), b.labels.begin() + rows);
    const MatF in = classifier_input(d, b.view().col_block(0, rows));
    const auto stats = trainer.step(ConstMatrixView<float>(in),
                                    nn::LabelView(labels.data(), Index(labels.size())));
    run_loss = s == 0 ? stats.loss : 0.98 * run_loss + 0.02 * stats.loss;
    run_acc = s == 0 ? stats.accuracy : 0.98 * run_acc + 0.02 * stats.accuracy;
    char msg[64];
    std::snprintf(msg, sizeof msg, "loss %.4f acc %.3f", run_loss, run_acc);
    bar.update(s + 1, msg);
  }
  bar.finish();
  const double secs = seconds_since(t0);
  std::vector<std::int32_t> eval_labels(d.eval_labels.begin(), d.eval_labels.end());
  const MatF eval_in = classifier_input(d, ConstMatrixView<float>(d.eval));
  const auto ev = train::evaluate(*net, ConstMatrixView<float>(eval_in), eval_labels, 500);
  d.ranks.on_lead("the classifier's weights", [&] { io::save_state_dict(*net, weights); });
  results = {{"parameters", net->num_params()},
             {"steps", c.cls_steps},
             {"seconds", secs},
             {"train_accuracy_running", run_acc},
             {"heldout_accuracy", ev.accuracy},
             {"heldout_images", d.eval.cols()}};
  st.finish(results);
  std::printf("classifier: %td parameters, held-out accuracy %.4f (%td images), %.1f s\n",
              net->num_params(), ev.accuracy, Index(d.eval.cols()), secs);
  return net;
}

// ---------------------------------------------------------------------------------------------
// Stage: targets and their flow priors
// ---------------------------------------------------------------------------------------------

struct Target {
  std::string spec, slug;
  MatF train, held;  ///< target samples (d, .): the prior's training set and its held-out set
  std::unique_ptr<PriorNet> prior;  ///< the EMA weights
  Json results;
};

inline nn::AdaLNMlpConfig prior_config(const PipelineConfig& c) {
  nn::AdaLNMlpConfig pc;
  pc.dim = c.latent_dim;
  pc.width = c.prior_width;
  pc.depth = c.prior_depth;
  pc.time_freq_dim = c.prior_width >= 512 ? 256 : 64;
  return pc;
}

/// Samples (d, N) of a target distribution: N(0, I); whitened PCA coefficients of image
/// patches; the classifier's penultimate features, standardised and randomly projected to d;
/// a user's features, the same way.
inline MatF make_target_samples(const PipelineConfig& c, const Data& d, const std::string& spec,
                                const Classifier* cls, Json& info) {
  const Index dim = c.latent_dim, n = c.target_samples;
  Rng rng(c.seed * 7919 + 3);
  if (spec == "gaussian") {
    MatF x(dim, n);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(normal01(rng));
    info = {{"kind", "standard Gaussian"}};
    return x;
  }
  if (spec == "pca") {
    data::PatchPcaConfig pc;
    pc.channels = d.channels;
    pc.image_size = d.side;
    pc.patch = c.patch;
    pc.components = dim;
    data::PatchPca pca(pc);
    const MatF imgs = gather(*d.train_plain, c.pca_images, nullptr, nullptr, c.seed + 7);
    pca.fit(ConstMatrixView<float>(imgs));
    const MatF all = pca.project(ConstMatrixView<float>(imgs));
    // n patches drawn without replacement where there are enough
    MatF x(dim, std::min<Index>(n, all.cols()));
    std::vector<Index> order(static_cast<std::size_t>(all.cols()));
    for (Index i = 0; i < all.cols(); ++i) order[std::size_t(i)] = i;
    for (Index i = 0; i < x.cols(); ++i) {
      const Index j = i + Index(uniform(rng, 0.0, double(all.cols() - i)));
      std::swap(order[std::size_t(i)], order[std::size_t(std::min<Index>(j, all.cols() - 1))]);
      x.col(i) = all.col(order[std::size_t(i)]);
    }
    const auto ev = pca.explained_variance_ratio();
    info = {{"kind", "whitened PCA of image patches"},
            {"patch", c.patch},
            {"images", imgs.cols()},
            {"explained_variance", ev.sum()}};
    return x;
  }
  MatF feats;
  if (spec == "classifier") {
    const Index count = std::min<Index>(n, Index(d.train_plain->size()));
    feats.resize(cls->config().hidden.back(), count);
    for_chunks(*d.train_plain, count, c.seed + 13, 1000, nullptr,
               [&](Index first, const MatF& imgs, const std::vector<int>&) {
                 feats.middleCols(first, imgs.cols()) = classifier_features(*cls, d, imgs);
               });
    info = {{"kind", "classifier penultimate features"}, {"feature_dim", feats.rows()}};
  } else {  // features:FILE[:TENSOR]
    const auto src = features_source(spec);
    const MatF all = ds::read_features(src.first, src.second);
    if (all.cols() < 20) io::fail(src.first, "needs at least 20 feature vectors");
    // at most --target-samples of them, spread evenly over the file
    const Index m = std::min<Index>(n, all.cols());
    feats.resize(all.rows(), m);
    for (Index i = 0; i < m; ++i)
      feats.col(i) = all.col(Index(double(i) * double(all.cols()) / double(m)));
    info = {{"kind", "user features"},
            {"file", src.first},
            {"tensor", src.second},
            {"feature_dim", feats.rows()},
            {"file_samples", all.cols()}};
  }
  data::Standardizer sd;
  sd.fit(ConstMatrixView<float>(feats));
  MatF unit(feats.rows(), feats.cols());
  sd.apply(ConstMatrixView<float>(feats), MatrixView<float>(unit));
  if (unit.rows() == dim) return unit;
  // x = W f with W_ij ~ N(0, 1/d2): unit-scale features stay at unit scale (projection.md).
  data::RandomProjection<float> proj(dim, unit.rows(), c.seed * 31 + 5);
  MatF x(dim, unit.cols());
  proj.apply(ConstMatrixView<float>(unit), MatrixView<float>(x));
  info["projected_from"] = unit.rows();
  return x;
}

/// Mean NLL (nats per token) of the columns of x under a prior, by the likelihood ODE with the
/// exact divergence.
inline double mean_nll(const PriorNet& net, const MatF& x, Index points) {
  const Prior<PriorNet> prior(net, kConv);
  const Index n = std::min<Index>(points, x.cols());
  const MatF xs = x.leftCols(n);
  Eigen::VectorXf logp(n);
  ode::LikelihoodOptions lo;
  lo.solver.atol = lo.solver.rtol = 1e-5;
  ode::OdeWorkspace<PriorNet> ws;
  ode::log_likelihood(prior, kConv, ConstMatrixView<float>(xs), VectorView<float>(logp), lo, ws);
  return -double(logp.cast<double>().mean());
}

/// NLL of x under the Gaussian fitted to `fit` (mean and covariance): a reference the prior's
/// held-out NLL can be compared with.
inline double gaussian_fit_nll(const MatF& fit, const MatF& x) {
  const Eigen::MatrixXd f = fit.cast<double>();
  const Eigen::VectorXd mu = f.rowwise().mean();
  const Eigen::MatrixXd c = f.colwise() - mu;
  Eigen::MatrixXd cov = c * c.transpose() / double(std::max<Index>(1, f.cols() - 1));
  cov.diagonal().array() += 1e-6;
  const Eigen::LLT<Eigen::MatrixXd> llt(cov);
  const double logdet = 2 * llt.matrixL().toDenseMatrix().diagonal().array().log().sum();
  const Eigen::MatrixXd z = llt.matrixL().solve(x.cast<double>().colwise() - mu);
  const double d = double(x.rows());
  return 0.5 * (z.colwise().squaredNorm().mean() + logdet + d * std::log(2 * M_PI));
}

inline Target target_stage(const PipelineConfig& c, const Data& d, const std::string& spec,
                           const Classifier* cls) {
  Target t;
  t.spec = spec;
  t.slug = target_slug(spec);
  const nn::AdaLNMlpConfig pc = prior_config(c);
  std::map<std::string, std::string> id = {
      {"target", spec},
      {"data", d.description},
      {"latent_dim", std::to_string(c.latent_dim)},
      {"samples", std::to_string(c.target_samples)},
      {"prior", std::to_string(pc.width) + "x" + std::to_string(pc.depth) + "/" +
                    std::to_string(pc.time_freq_dim)},
      {"steps", std::to_string(c.prior_steps)},
      {"batch", std::to_string(c.prior_batch)},
      {"lr", exact_text(c.prior_lr)},
      {"seed", std::to_string(c.seed)}};
  if (spec == "pca") id["patch"] = std::to_string(c.patch);
  if (spec == "pca") id["pca_images"] = std::to_string(c.pca_images);
  if (spec == "classifier") id["classifier"] = fingerprint(cls->parameters());
  Stage st(c.out, "target-" + t.slug, "target", id, c.redoes("target"), d.ranks);
  t.prior = std::make_unique<PriorNet>(pc);
  const std::string samples_file = st.path("samples.safetensors");
  const std::string weights = st.path("prior.safetensors");
  if (st.done()) {
    const io::Safetensors s = io::Safetensors::read(samples_file);
    auto read = [&](const char* name, MatF& m) {
      const auto& e = s.at(name);
      if (e.shape.size() != 2 || e.shape[1] != std::int64_t(c.latent_dim))
        io::fail(samples_file, std::string("tensor ") + name + " has the wrong shape");
      m.resize(c.latent_dim, Index(e.shape[0]));
      s.get<float>(name, m.data(), e.numel());
    };
    read("train", t.train);
    read("heldout", t.held);
    io::load_state_dict(*t.prior, io::Safetensors::read(weights));
    t.results = st.results();
    std::printf("target %s: done before (held-out NLL %.3f nats per token)\n", spec.c_str(),
                t.results.value("prior_heldout_nll", 0.0));
    return t;
  }
  if (!c.runs("target"))
    raise_config("image pipeline", "--stages leaves out target, but " + st.dir() +
                                       " holds no finished target of these options");
  const auto t0 = std::chrono::steady_clock::now();
  Json info;
  const MatF all = make_target_samples(c, d, spec, cls, info);
  const Index held_n = std::max<Index>(1, all.cols() / 10);
  t.train = all.leftCols(all.cols() - held_n);
  t.held = all.rightCols(held_n);
  d.ranks.on_lead("the target samples", [&] {
    io::SafetensorsWriter w;
    // (N, d) row-major: one sample per row, as NumPy and PyTorch hold them.
    w.add("train", t.train.data(), {std::int64_t(t.train.cols()), std::int64_t(c.latent_dim)},
          io::Dtype::F32);
    w.add("heldout", t.held.data(), {std::int64_t(t.held.cols()), std::int64_t(c.latent_dim)},
          io::Dtype::F32);
    w.set_checksum(true);
    w.write(samples_file);
  });

  // The prior: flow matching on the training samples, resumable from its checkpoint.
  PriorNet net(pc);
  Rng rng(c.seed * 7919 + 17);
  net.init(rng);
  train::TrainerConfig tc;
  tc.batch = d.ranks.per_rank("--prior-batch", c.prior_batch);  // step_with: the global batch
  tc.K = 4;
  // warmup: a tenth of the steps, at most the released prior's 2.5k
  tc.schedule = optim::LrSchedule::cosine(
      c.prior_lr, std::clamp<Index>(c.prior_steps / 10, 1, 2500), c.prior_steps, c.prior_lr * 0.01);
  tc.ema_decay = std::clamp(1.0 - 10.0 / double(c.prior_steps), 0.0, 0.9999);
  train::FlowMatchingTrainer<PriorNet> trainer(net, kConv, tc);
  d.ranks.attach(trainer);
  const std::string ckpt = st.path("prior.ckpt.safetensors");
  std::vector<double> curve_step, curve_loss;
  if (std::filesystem::exists(ckpt) && !st.redo()) {
    const io::Safetensors s = io::Safetensors::read(ckpt);
    st.check_meta(ckpt, s.metadata());
    train::load_checkpoint(s, trainer, net, rng);
    curve_step = curve_values(s.metadata().at("user.curve_step"));
    curve_loss = curve_values(s.metadata().at("user.curve_loss"));
    std::printf("target %s: prior resumed at step %td\n", spec.c_str(), trainer.steps());
  }
  auto save = [&] {
    auto meta = st.identity_meta();
    meta["curve_step"] = curve_text(curve_step);
    meta["curve_loss"] = curve_text(curve_loss);
    train::save_checkpoint(ckpt, trainer, net, rng, meta);
  };
  util::Progress bar("prior " + t.slug, c.prior_steps, !c.quiet);
  double running = 0;
  const Index every = std::max<Index>(1, c.prior_steps / 100);
  const Index first = trainer.steps();
  for (Index s = first; s < c.prior_steps; ++s) {
    const auto stats = trainer.step_with(
        [&](MatrixView<float> b, Rng& g) {
          for (Index j = 0; j < b.cols; ++j) {
            const Index k =
                std::min<Index>(Index(uniform(g, 0.0, double(t.train.cols()))), t.train.cols() - 1);
            for (Index i = 0; i < b.rows; ++i) b(i, j) = t.train(i, k);
          }
        },
        rng);
    running = s == 0 ? stats.loss : 0.98 * running + 0.02 * stats.loss;
    if ((s + 1) % every == 0) {
      curve_step.push_back(double(s + 1));
      curve_loss.push_back(running);
    }
    char msg[48];
    std::snprintf(msg, sizeof msg, "loss %.4f", running);
    bar.update(s + 1, msg);
    if ((s + 1) % std::max<Index>(1, c.prior_steps / 4) == 0) save();
    if (s + 1 == c.stop_at && s + 1 < c.prior_steps) {
      bar.finish("stopped");
      save();
      throw Stopped{st.name(), s + 1};
    }
  }
  bar.finish();
  save();
  trainer.copy_ema_to(*t.prior);
  d.ranks.on_lead("the prior's weights", [&] { io::save_state_dict(*t.prior, weights); });
  const double nll = mean_nll(*t.prior, t.held, c.nll_points);
  const double ref =
      gaussian_fit_nll(t.train, t.held.leftCols(std::min<Index>(c.nll_points, t.held.cols())));
  t.results = {{"target", spec},
               {"samples", info},
               {"train_samples", t.train.cols()},
               {"heldout_samples", t.held.cols()},
               {"prior_parameters", net.num_params()},
               {"prior_steps", c.prior_steps},
               {"prior_final_loss", running},
               {"prior_heldout_nll", nll},
               {"gaussian_fit_heldout_nll", ref},
               {"nll_points", std::min<Index>(c.nll_points, t.held.cols())},
               {"seconds", seconds_since(t0)},
               {"curve_step", curve_step},
               {"curve_loss", curve_loss}};
  st.finish(t.results);
  std::printf(
      "target %s: prior %td parameters, held-out NLL %.3f nats per token (a fitted Gaussian: "
      "%.3f), %.1f s\n",
      spec.c_str(), net.num_params(), nll, ref, seconds_since(t0));
  return t;
}

// ---------------------------------------------------------------------------------------------
// Stage: autoencoders
// ---------------------------------------------------------------------------------------------

/// One autoencoder of the comparison: plain (lambda 0), KL-regularised, or aligned with a
/// target's prior at weight lambda.
struct AeSpec {
  enum class Kind { Plain, Kl, Align } kind = Kind::Plain;
  std::string name;
  double lambda = 0;
  int target = -1;  ///< index into the targets (Align)
};

/// The autoencoders a configuration asks for, in table order.
inline std::vector<AeSpec> autoencoder_specs(const PipelineConfig& c,
                                             const std::vector<Target>& targets) {
  std::vector<AeSpec> v;
  if (c.plain) v.push_back({AeSpec::Kind::Plain, "plain", 0.0, -1});
  if (c.kl) v.push_back({AeSpec::Kind::Kl, "kl", 0.0, -1});
  for (std::size_t t = 0; t < targets.size(); ++t)
    for (double l : c.lambdas)
      v.push_back(
          {AeSpec::Kind::Align, "align-" + targets[t].slug + "-" + exact_text(l), l, int(t)});
  return v;
}

inline nn::TokenizerConfig tokenizer_config(const PipelineConfig& c, const Data& d, bool kl) {
  nn::TokenizerConfig m;
  m.image_size = d.side;
  m.channels = d.channels;
  m.patch = c.patch;
  m.width = c.width;
  m.depth = c.depth;
  m.dec_depth = c.depth;
  m.heads = c.heads;
  m.latent_tokens = c.latent_tokens;
  m.latent_dim = c.latent_dim;
  m.posterior = kl ? nn::Posterior::gaussian : nn::Posterior::deterministic;
  return m;
}

/// Latents (d, N T) of images x (C H W, N): the posterior means for a KL model.
inline MatF encode_all(const Tokenizer& m, const MatF& x) {
  const Index T = m.config().latent_tokens, dim = m.config().latent_dim;
  MatF y(dim, x.cols() * T);
  Tokenizer::Workspace ws;
  batched(x, 250, [&](Index i, ConstMatrixView<float> xb) {
    m.encode(xb, MatrixView<float>(y.data() + i * T * dim, dim, xb.cols * T), ws);
  });
  return y;
}

/// Images (C H W, N) decoded from latents y (d, N T).
inline MatF decode_all(const Tokenizer& m, const MatF& y) {
  const Index T = m.config().latent_tokens, dim = m.config().latent_dim;
  const Index n = y.cols() / T;
  MatF x(m.image_dim(), n);
  Tokenizer::Workspace ws;
  for (Index i = 0; i < n; i += 250) {
    const Index b = std::min<Index>(250, n - i);
    m.decode(ConstMatrixView<float>(y.data() + i * T * dim, dim, b * T),
             MatrixView<float>(x.data() + i * x.rows(), x.rows(), b), ws);
  }
  return x;
}

/// The Fig. 4 probe: the alignment loss (unweighted, fixed draws) of latents under a prior, and
/// their mean distance to the k = 5 nearest target samples.
struct FigProbe {
  const Target* target = nullptr;
  MatF images;  ///< the probed images (a fixed held-out subset)
  MatF refs;    ///< target samples the distances are measured to

  std::pair<double, double> operator()(const Tokenizer& m, const PipelineConfig& c) const {
    const MatF y = encode_all(m, images);
    Rng draws(c.seed * 104729 + 1);  // the same draws at every probe
    train::LatentAlignmentConfig ac;
    ac.weight = 1.0;
    ac.K = 4;
    const Prior<PriorNet> prior(*target->prior, kConv);
    train::LatentAlignmentLoss<PriorNet> align(prior, kConv, ac, draws);
    MatF dy = MatF::Zero(y.rows(), y.cols());
    CpuBackend::Context ctx;
    const double loss = align(ConstMatrixView<float>(y), MatrixView<float>(dy), ctx);
    const auto dist = eval::knn_distances(ConstMatrixView<float>(y), ConstMatrixView<float>(refs),
                                          std::min<Index>(5, refs.cols()));
    double mean = 0;
    for (double v : dist) mean += v;
    return {loss, mean / double(std::max<std::size_t>(1, dist.size()))};
  }
};

struct Autoencoder {
  AeSpec spec;
  std::unique_ptr<Tokenizer> model;  ///< the EMA weights
  Json results;
  MatF grid_recon;  ///< reconstructions of the first --grid held-out images
};

inline std::map<std::string, std::string> ae_identity(const PipelineConfig& c, const Data& d,
                                                      const AeSpec& a,
                                                      const std::vector<Target>& targets) {
  std::map<std::string, std::string> id = {
      {"data", d.description},
      {"model", std::to_string(c.patch) + "/" + std::to_string(c.width) + "/" +
                    std::to_string(c.depth) + "/" + std::to_string(c.heads) + "/" +
                    std::to_string(c.latent_tokens) + "x" + std::to_string(c.latent_dim)},
      {"steps", std::to_string(c.ae_steps)},
      {"batch", std::to_string(c.ae_batch)},
      {"lr", exact_text(c.ae_lr) + "/" + std::to_string(c.ae_warmup) + "/" + exact_text(c.ae_ema)},
      {"seed", std::to_string(c.seed)},
      {"kind", a.name}};
  if (a.kind == AeSpec::Kind::Kl) id["kl_beta"] = exact_text(c.kl_beta);
  if (a.kind == AeSpec::Kind::Align) {
    id["lambda"] = exact_text(a.lambda);
    id["draws"] = std::to_string(c.align_draws);
    // the prior this autoencoder is aligned with: its stage's identity
    const Target& t = targets[std::size_t(a.target)];
    id["target"] = t.spec;
    id["prior"] = fingerprint(t.prior->parameters());
  }
  return id;
}

/// Trains (or resumes, or loads) one autoencoder; fills `curves` with the Fig. 4 probes.
inline Autoencoder autoencoder_stage(const PipelineConfig& c, const Data& d, const AeSpec& a,
                                     const std::vector<Target>& targets, const FigProbe* probe) {
  Autoencoder ae;
  ae.spec = a;
  const bool kl = a.kind == AeSpec::Kind::Kl;
  const nn::TokenizerConfig mc = tokenizer_config(c, d, kl);
  Stage st(c.out, "ae-" + a.name, "ae", ae_identity(c, d, a, targets), c.redoes("ae"), d.ranks);
  ae.model = std::make_unique<Tokenizer>(mc);
  const std::string weights = st.path("tokenizer.safetensors");
  if (st.done()) {
    io::load_state_dict(*ae.model, io::Safetensors::read(weights));
    ae.results = st.results();
    std::printf("autoencoder %s: done before\n", a.name.c_str());
    return ae;
  }
  if (!c.runs("ae"))
    raise_config("image pipeline", "--stages leaves out ae, but " + st.dir() +
                                       " holds no finished autoencoder of these options");
  Tokenizer model(mc);
  Rng init(c.seed * 6007 + 1);
  model.init(init);
  train::ReconstructionConfig rc;
  rc.schedule = optim::LrSchedule::cosine(c.ae_lr, c.ae_warmup, c.ae_steps, c.ae_lr * 0.01);
  rc.ema_decay = c.ae_ema;
  rc.kl_beta = kl ? c.kl_beta : 0.0;
  train::ReconstructionTrainer<Tokenizer> trainer(model, rc);
  d.ranks.attach(trainer);
  ds::LoaderConfig lc;  // the global batch; each rank reads and trains on its shard of it
  lc.batch_size = loader_batch("autoencoder", c.ae_batch, *d.train, c.quiet);
  d.ranks.per_rank("--ae-batch", lc.batch_size);
  d.ranks.shard(lc);
  lc.threads = c.loader_threads;
  lc.seed = c.seed + 1;
  lc.drop_last = true;
  ds::Loader loader(d.train, lc);
  Rng rng(c.seed * 6007 + 2);  // the alignment draws and the posterior's noise

  std::unique_ptr<Prior<PriorNet>> prior;
  std::unique_ptr<train::LatentAlignmentLoss<PriorNet>> align;
  train::ReconstructionTrainer<Tokenizer>::LatentLoss latent_loss;
  if (a.kind == AeSpec::Kind::Align) {
    prior = std::make_unique<Prior<PriorNet>>(*targets[std::size_t(a.target)].prior, kConv);
    train::LatentAlignmentConfig ac;
    ac.weight = a.lambda;
    ac.K = c.align_draws;
    align = std::make_unique<train::LatentAlignmentLoss<PriorNet>>(*prior, kConv, ac, rng);
    if (d.ranks.size() > 1) align->set_communicator(d.ranks.comm);  // the draws' slice
    latent_loss = [&](ConstMatrixView<float> y, MatrixView<float> dy, CpuBackend::Context& ctx) {
      return (*align)(y, dy, ctx);
    };
  }

  std::vector<double> cs, cmse, calign, cprobe_loss, cprobe_knn;
  const std::string ckpt = st.path("checkpoint.safetensors");
  if (std::filesystem::exists(ckpt) && !st.redo()) {
    const io::Safetensors s = io::Safetensors::read(ckpt);
    st.check_meta(ckpt, s.metadata());
    train::load_checkpoint(s, trainer, rng);
    loader.set_position(ds::position_from_entries(s.metadata()));
    const auto& m = s.metadata();
    cs = curve_values(m.at("user.curve_step"));
    cmse = curve_values(m.at("user.curve_mse"));
    calign = curve_values(m.at("user.curve_align"));
    cprobe_loss = curve_values(m.at("user.curve_probe_loss"));
    cprobe_knn = curve_values(m.at("user.curve_probe_knn"));
    std::printf("autoencoder %s: resumed at step %td\n", a.name.c_str(), trainer.steps());
  }
  auto save = [&] {
    auto meta = st.identity_meta();
    for (const auto& kv : ds::position_entries(loader.position())) meta[kv.first] = kv.second;
    meta["curve_step"] = curve_text(cs);
    meta["curve_mse"] = curve_text(cmse);
    meta["curve_align"] = curve_text(calign);
    meta["curve_probe_loss"] = curve_text(cprobe_loss);
    meta["curve_probe_knn"] = curve_text(cprobe_knn);
    train::save_checkpoint(ckpt, trainer, rng, meta);
  };
  util::Progress bar("ae " + a.name, c.ae_steps - trainer.steps(), !c.quiet);
  const auto t0 = std::chrono::steady_clock::now();
  const Index first = trainer.steps();
  double sum_mse = 0, sum_align = 0;
  Index sum_n = 0;
  while (trainer.steps() < c.ae_steps) {
    const ds::Batch b = loader.next();                 // this rank's shard of the global batch
    const Index rows = d.ranks.common_rows(b.size());  // equal shards (unreadable images)
    if (rows == 0) continue;
    const ConstMatrixView<float> mine = b.view().col_block(0, rows);
    const train::ReconstructionStats s =
        kl ? trainer.step(mine, rng) : trainer.step(mine, latent_loss);
    sum_mse += s.mse;
    // the unweighted alignment loss of the global batch (s.latent_loss is averaged over the
    // ranks; on one process it is the loss's own value, so the quotient is last_unweighted())
    sum_align += align ? s.latent_loss / a.lambda : 0.0;
    ++sum_n;
    if (s.step % c.log_every == 0 || s.step == c.ae_steps) {
      cs.push_back(double(s.step));
      cmse.push_back(sum_mse / double(sum_n));
      calign.push_back(sum_align / double(sum_n));
      if (probe != nullptr) {
        const auto pr = (*probe)(model, c);
        cprobe_loss.push_back(pr.first);
        cprobe_knn.push_back(pr.second);
      }
      char msg[96];
      std::snprintf(msg, sizeof msg, "mse %.5f%s", cmse.back(),
                    align ? (" align " + std::to_string(calign.back())).c_str() : "");
      bar.update(s.step - first, msg);
      sum_mse = sum_align = 0;
      sum_n = 0;
    }
    if (s.step % std::max<Index>(1, c.ae_steps / 4) == 0) save();
    if (s.step == c.stop_at && s.step < c.ae_steps) {
      bar.finish("stopped");
      save();
      throw Stopped{st.name(), s.step};
    }
  }
  bar.finish();
  save();
  const double secs = seconds_since(t0);
  const std::uint64_t skipped = d.ranks.total(loader.skipped_count(), "the skipped images");
  trainer.copy_ema_to(*ae.model);
  d.ranks.on_lead("the autoencoder's weights", [&] { io::save_state_dict(*ae.model, weights); });
  ae.results = {{"name", a.name},
                {"kind", a.kind == AeSpec::Kind::Plain ? "plain"
                         : kl                          ? "kl"
                                                       : "aligned"},
                {"lambda", a.lambda},
                {"kl_beta", kl ? c.kl_beta : 0.0},
                {"target", a.kind == AeSpec::Kind::Align ? targets[std::size_t(a.target)].spec
                                                         : std::string()},
                {"parameters", model.num_params()},
                {"steps", c.ae_steps},
                {"train_seconds", secs},
                {"images_per_s", double(c.ae_steps - first) * double(lc.batch_size) / secs},
                {"skipped_images", skipped},
                {"curve_step", cs},
                {"curve_mse", cmse},
                {"curve_align", calign},
                {"probe_target", probe ? probe->target->spec : std::string()},
                {"curve_probe_loss", cprobe_loss},
                {"curve_probe_knn", cprobe_knn}};
  st.finish(ae.results);  // the training record; evaluate() adds the measures
  return ae;
}

// ---------------------------------------------------------------------------------------------
// Evaluation of an autoencoder (EMA weights, held-out images)
// ---------------------------------------------------------------------------------------------

/// Frechet distance in the classifier's feature space between images a and reference stats.
inline double feature_frechet(const Classifier& cls, const Data& d, const MatF& images,
                              const eval::FeatureStats& ref) {
  const MatF f = classifier_features(cls, d, images);
  eval::FeatureStats s(f.rows());
  s.add(ConstMatrixView<float>(f));
  return eval::frechet_distance(s, ref);
}

inline Json evaluate_autoencoder(const PipelineConfig& c, const Data& d, Autoencoder& ae,
                                 const Classifier& cls, const eval::FeatureStats& eval_stats,
                                 const std::vector<Target>& targets) {
  const Tokenizer& m = *ae.model;
  const Index T = m.config().latent_tokens, dim = m.config().latent_dim;
  // Reconstructions: PSNR over all pixels, and the mean of per-image PSNRs.
  const MatF y = encode_all(m, d.eval);
  const MatF r = decode_all(m, y);
  const Eigen::ArrayXd per_image =
      (r - d.eval).cast<double>().colwise().squaredNorm().array() / double(d.eval.rows());
  const double mse = per_image.mean();
  double mean_psnr = 0;
  for (Index i = 0; i < per_image.size(); ++i)
    mean_psnr += train::ReconstructionStats::psnr_of(per_image(i));
  mean_psnr /= double(per_image.size());
  ae.grid_recon = r.leftCols(std::min<Index>(c.grid, r.cols()));
  const double rfid = feature_frechet(cls, d, r, eval_stats);
  // The latents: scale, NLL under each prior (exact divergence), linear probe.
  const double ystd =
      std::sqrt((y.array().cast<double>() - y.cast<double>().mean()).square().mean());
  Json nll = Json::object();
  for (const auto& t : targets) nll[t.spec] = mean_nll(*t.prior, y, c.nll_points);
  // the probe's training set: latents of --probe-images training images, flattened per image
  const Index np = std::min<Index>(c.probe_images, Index(d.train_plain->size()));
  MatF yp(dim * T, np);
  std::vector<int> probe_labels(std::size_t(np), 0);
  for_chunks(*d.train_plain, np, c.seed + 3, 1000, nullptr,
             [&](Index first, const MatF& imgs, const std::vector<int>& l) {
               const MatF lat = encode_all(m, imgs);
               yp.middleCols(first, imgs.cols()) =
                   Eigen::Map<const MatF>(lat.data(), dim * T, imgs.cols());
               std::copy(l.begin(), l.end(), probe_labels.begin() + first);
             });
  eval::LinearProbeConfig pc;
  const auto probe = eval::linear_probe(ConstMatrixView<float>(yp), probe_labels,
                                        ConstMatrixView<float>(y.data(), dim * T, d.eval.cols()),
                                        d.eval_labels, int(d.classes), pc);
  Json j = {{"heldout_images", d.eval.cols()},
            {"mse", mse},
            {"psnr_db", train::ReconstructionStats::psnr_of(mse)},
            {"mean_image_psnr_db", mean_psnr},
            {"rfid_like", rfid},
            {"rfid_samples", d.eval.cols()},
            {"latent_std", ystd},
            {"latent_nll", nll},
            {"nll_tokens", std::min<Index>(c.nll_points, y.cols())},
            {"probe_train_accuracy", probe.train_accuracy},
            {"probe_test_accuracy", probe.test_accuracy},
            {"probe_train_images", np}};
  return j;
}

}  // namespace image_pipeline
}  // namespace flowprior
