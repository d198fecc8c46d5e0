// What every stage of the image pipeline shares: the data, the stage folders with their
// identities (skip when done, refuse outputs of other options), batched passes over image
// matrices, and the PNG image grids.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <flowprior/datasets/datasets.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/plot/png.hpp>
#include <flowprior/toy2d/pipeline.hpp>
#include <flowprior/toy2d/progress.hpp>
#include <flowprior/train/communicator.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "../example_ranks.hpp"
#include "config.hpp"

namespace flowprior {
namespace image_pipeline {

namespace ds = flowprior::datasets;
using Json = nlohmann::ordered_json;
using MatF = Eigen::MatrixXf;

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// The processes of the run
// ---------------------------------------------------------------------------------------------

/// The processes of the run (docs/distributed.md "The image pipeline"): one, or the ranks of
/// `mpirun -np P` (examples/example_ranks.hpp). The stages that read images through a loader read
/// only the rank's shard of each batch (shard); the in-memory batches (target samples, latent
/// pools) are drawn whole on every rank and sliced (slice). Everything else (target samples,
/// evaluation, sampling) runs on every rank with the same inputs and gives the same results
/// there; rank 0 alone prints and writes.
using Ranks = examples::Ranks;

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// The images of a run: a training source (augmented: flips, or random resized crops), the same
/// images without augmentation (features, latents), and a held-out evaluation matrix.
struct Data {
  std::string description;
  Index channels = 1, side = 28, classes = 10;
  std::shared_ptr<const ds::SampleSource> train, train_plain;
  MatF eval;                     ///< (C H W, eval_images), values in [-1, 1]
  std::vector<int> eval_labels;  ///< one per column of eval
  std::uint64_t skipped = 0;     ///< unreadable images skipped while gathering
  Ranks ranks;                   ///< the processes of the run (each loader reads its shard)
  Index image_dim() const { return channels * side * side; }
};

/// `count` images of `src` spread evenly over it (index floor(i size / count)), in order, passed
/// to f(first, images (C H W, n), labels) in chunks of at most `chunk` images, so that memory
/// stays bounded whatever `count`; an image that cannot be read is replaced by the next readable
/// one (and counted in *skipped).
template <class F>
void for_chunks(const ds::SampleSource& src, Index count, std::uint64_t seed, Index chunk,
                std::uint64_t* skipped, F&& f) {
  const std::size_t n = src.size();
  if (n == 0) io::fail("image source", "no images");
  count = std::min<Index>(count, Index(n));
  std::string why;
  MatF m;
  std::vector<int> labels;
  for (Index first = 0; first < count; first += chunk) {
    const Index b = std::min(chunk, count - first);
    m.resize(src.sample_size(), b);
    labels.assign(std::size_t(b), 0);
    for (Index k = 0; k < b; ++k) {
      const Index i = first + k;
      std::size_t at = std::size_t(double(i) * double(n) / double(count));
      std::size_t tries = 0;
      ds::SampleRng rng(seed, 0, at);
      while (!src.load(at, rng, m.col(k).data(), why)) {
        if (skipped) ++*skipped;
        if (++tries >= n) io::fail(src.describe(at), "no readable image in the source: " + why);
        at = (at + 1) % n;
      }
      labels[std::size_t(k)] = src.label(at);
    }
    f(first, static_cast<const MatF&>(m), static_cast<const std::vector<int>&>(labels));
  }
}

/// The images of for_chunks in one (C H W, count) matrix (count capped at the source's size).
inline MatF gather(const ds::SampleSource& src, Index count, std::vector<int>* labels,
                   std::uint64_t* skipped, std::uint64_t seed) {
  count = std::min<Index>(count, Index(src.size()));
  MatF all(src.sample_size(), std::max<Index>(count, 0));
  if (labels) labels->assign(std::size_t(std::max<Index>(count, 0)), 0);
  for_chunks(src, count, seed, 1000, skipped,
             [&](Index first, const MatF& m, const std::vector<int>& l) {
               all.middleCols(first, m.cols()) = m;
               if (labels) std::copy(l.begin(), l.end(), labels->begin() + first);
             });
  return all;
}

/// Loads the data of the run (Fashion-MNIST or an ImageNet-style folder).
inline Data load_data(const PipelineConfig& c) {
  Data d;
  if (c.use_imagenet()) {
    const std::string root = c.imagenet;
    ds::ImageFolder train = ds::ImageFolder::scan(root + "/train");
    ds::ImageFolder val = ds::ImageFolder::scan(root + "/val");
    if (train.classes() != val.classes())
      io::fail(root, "train/ and val/ must hold the same class folders");
    ds::ImageTransform tt;
    tt.mode = ds::TransformMode::Train;
    tt.size = int(c.image_size);
    tt.channels = 3;
    ds::ImageTransform te;
    te.mode = ds::TransformMode::Eval;
    te.size = int(c.image_size);
    te.resize = int(std::lround(double(c.image_size) * 256.0 / 224.0));
    te.channels = 3;
    d.channels = 3;
    d.side = c.image_size;
    d.classes = Index(train.classes().size());
    d.description = "ImageNet-style folder " + root + " (" + std::to_string(train.size()) +
                    " training, " + std::to_string(val.size()) + " held-out images, " +
                    std::to_string(d.classes) + " classes)";
    d.train = std::make_shared<ds::ImageFolderSource>(train, tt);
    d.train_plain = std::make_shared<ds::ImageFolderSource>(train, te);
    ds::ImageFolderSource val_src(val, te);
    d.eval = gather(val_src, c.eval_images, &d.eval_labels, &d.skipped, c.seed);
  } else {
    ds::ImageArray tr = ds::load_fashion_mnist(ds::Split::Train, c.data);
    ds::ImageArray te = ds::load_fashion_mnist(ds::Split::Test, c.data);
    if (tr.width != tr.height || tr.sample_size() != te.sample_size())
      io::fail(c.data, "expected square images of one size in both splits");
    d.channels = tr.channels;
    d.side = tr.height;
    d.classes = 1 + *std::max_element(tr.labels.begin(), tr.labels.end());
    d.description = "MNIST-family folder " + c.data + " (" + std::to_string(tr.count) +
                    " training, " + std::to_string(te.count) + " held-out images)";
    auto plain = std::make_shared<ds::ArraySource>(tr, false);
    d.train = std::make_shared<ds::ArraySource>(std::move(tr), true);
    d.train_plain = plain;
    ds::ArraySource test_src(std::move(te), false);
    d.eval = gather(test_src, c.eval_images, &d.eval_labels, &d.skipped, c.seed);
  }
  d.description += "; images " + std::to_string(d.channels) + " x " + std::to_string(d.side) +
                   " x " + std::to_string(d.side);
  if (d.side % c.patch != 0)
    raise_config("image pipeline", "--patch " + std::to_string(c.patch) +
                                       " must divide the image side " + std::to_string(d.side));
  return d;
}

// ---------------------------------------------------------------------------------------------
// Stage folders
// ---------------------------------------------------------------------------------------------

/// One stage's folder under --out: its identity (the options its output depends on) and, once
/// done, done.json = {"identity": ..., "results": ...}, written atomically (by rank 0) after
/// every other output of the stage. A folder whose done.json has another identity is refused (another
/// --out, or --redo <stage>).
class Stage {
 public:
  Stage(const std::string& out, std::string name, std::string kind,
        std::map<std::string, std::string> identity, bool redo, const Ranks& ranks)
      : dir_(out + "/" + name),
        name_(std::move(name)),
        kind_(std::move(kind)),
        identity_(std::move(identity)),
        redo_(redo),
        ranks_(ranks) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) io::fail(dir_, "cannot create the stage folder (" + ec.message() + ")");
  }

  const std::string& dir() const { return dir_; }
  /// --redo names this stage: start afresh (no skip, no resume from a checkpoint).
  bool redo() const { return redo_; }
  const std::string& name() const { return name_; }
  std::string path(const std::string& file) const { return dir_ + "/" + file; }
  const std::map<std::string, std::string>& identity() const { return identity_; }

  /// True when done.json exists with this identity (results() then holds them), false when
  /// there is none (or --redo). io_error when it was made with other options.
  bool done() {
    const std::string f = path("done.json");
    if (redo_ || !std::filesystem::exists(f)) return false;
    std::ifstream in(f);
    Json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      io::fail(f, std::string("unreadable (") + e.what() + "); remove it or use --redo " + kind_);
    }
    check_identity(f, j.value("identity", Json::object()));
    results_ = j.value("results", Json::object());
    return true;
  }

  /// Checks a stored identity (done.json or a checkpoint's metadata) against this one.
  void check_identity(const std::string& file, const Json& stored) const {
    for (const auto& kv : identity_) {
      const std::string have = stored.contains(kv.first) && stored[kv.first].is_string()
                                   ? stored[kv.first].get<std::string>()
                                   : std::string("(absent)");
      if (have != kv.second)
        io::fail(file, "was made with " + kv.first + " = " + have + ", this run has " + kv.second +
                           ": use another --out, or --redo " + kind_);
    }
  }

  Json identity_json() const {
    Json j = Json::object();
    for (const auto& kv : identity_) j[kv.first] = kv.second;
    return j;
  }

  /// Identity entries as checkpoint metadata (user.id.<key>).
  std::map<std::string, std::string> identity_meta() const {
    std::map<std::string, std::string> m;
    for (const auto& kv : identity_) m["id." + kv.first] = kv.second;
    return m;
  }
  /// Checks a checkpoint's metadata (user.id.*) against this identity.
  void check_meta(const std::string& file, const std::map<std::string, std::string>& meta) const {
    Json stored = Json::object();
    for (const auto& kv : identity_) {
      const auto it = meta.find("user.id." + kv.first);
      if (it != meta.end()) stored[kv.first] = it->second;
    }
    check_identity(file, stored);
  }

  /// Writes done.json (rank 0; the ranks agree on the outcome).
  void finish(const Json& results) {
    results_ = results;
    ranks_.on_lead("done.json", [&] {
      pipeline::write_metrics(path("done.json"),
                              Json{{"identity", identity_json()}, {"results", results}});
    });
  }
  const Json& results() const { return results_; }

 private:
  std::string dir_, name_, kind_;
  std::map<std::string, std::string> identity_;
  bool redo_;
  Ranks ranks_;
  Json results_ = Json::object();
};

/// A fingerprint of trained weights (FNV-1a over their bytes, hex): a later stage records the
/// fingerprint of the model it builds on, so that retraining an earlier stage with other results
/// is noticed instead of mixing outputs.
inline std::string fingerprint(ConstVectorView<float> v) {
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(v.data);
  for (std::size_t i = 0; i < std::size_t(v.size) * sizeof(float); ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

/// Identity text of an integer list.
inline std::string join(const std::vector<Index>& v) {
  std::string s;
  for (Index x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Image grids
// ---------------------------------------------------------------------------------------------

inline std::uint8_t to_byte(float v) {
  const double u = std::round((double(v) + 1.0) * 127.5);
  return static_cast<std::uint8_t>(std::clamp(std::isfinite(u) ? u : 0.0, 0.0, 255.0));
}

/// Rows of images (each a (C side side) column in [-1, 1]), one row per matrix, `zoom` pixels
/// per image pixel, on a light grey background.
inline void write_image_rows(const std::string& path, const std::vector<MatF>& rows, Index channels,
                             Index side) {
  int n = 0;
  for (const auto& r : rows) n = std::max(n, int(r.cols()));
  const int zoom = side <= 32 ? 3 : side <= 64 ? 2 : 1, gap = 4, cell = int(side) * zoom;
  const int W = gap + std::max(n, 1) * (cell + gap), H = gap + int(rows.size()) * (cell + gap);
  std::vector<std::uint8_t> rgb(std::size_t(W) * std::size_t(H) * 3, 220);
  for (std::size_t row = 0; row < rows.size(); ++row)
    for (int k = 0; k < int(rows[row].cols()); ++k)
      for (int py = 0; py < cell; ++py)
        for (int px = 0; px < cell; ++px) {
          const Index pix = Index(py / zoom) * side + Index(px / zoom);
          const std::size_t at = (std::size_t(gap + int(row) * (cell + gap) + py) * std::size_t(W) +
                                  std::size_t(gap + k * (cell + gap) + px)) *
                                 3;
          for (int ch = 0; ch < 3; ++ch) {
            const Index c = channels == 3 ? ch : 0;
            rgb[at + std::size_t(ch)] = to_byte(rows[row](c * side * side + pix, k));
          }
        }
  plot::write_png(path, W, H, rgb.data());
}

}  // namespace image_pipeline
}  // namespace flowprior
