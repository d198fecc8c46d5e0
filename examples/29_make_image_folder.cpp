// 29: writes a small ImageNet-style folder of synthetic images, root/train/<class>/*.png|jpg and
// root/val/<class>/*.png|jpg, to try the image pipeline's ImageNet path (30_image_pipeline
// --imagenet root) without ImageNet. Class k draws one kind of shape (disc, square, stripes,
// ring, cross, ...) at a random place, size and colour on a random background; sizes vary, so
// the resize and crop path runs. With --corrupt, one truncated file per split is added, which
// the loader skips and counts.
#include <stb/stb_image_write.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/plot/png.hpp>
#include <string>
#include <vector>

#include "example_cli.hpp"

namespace {

using namespace flowprior;

struct Options {
  std::string out = "image_folder";
  int classes = 4, train_per_class = 24, val_per_class = 8, min_side = 40, max_side = 72;
  std::uint64_t seed = 0;
  bool corrupt = false;
};

// Image of class k (w x h RGB), drawn with the generator's numbers.
std::vector<std::uint8_t> draw(int k, int w, int h, Rng& rng) {
  std::vector<std::uint8_t> rgb(std::size_t(w) * std::size_t(h) * 3);
  double bg[3], fg[3];
  for (double& c : bg) c = uniform(rng, 0.0, 0.5);
  for (double& c : fg) c = uniform(rng, 0.5, 1.0);
  const double cx = uniform(rng, 0.3, 0.7) * w, cy = uniform(rng, 0.3, 0.7) * h;
  const double r = uniform(rng, 0.15, 0.3) * std::min(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double dx = x - cx, dy = y - cy, dist = std::sqrt(dx * dx + dy * dy);
      bool in = false;
      switch (k % 6) {
        case 0:
          in = dist < r;
          break;  // disc
        case 1:
          in = std::abs(dx) < r && std::abs(dy) < r;
          break;  // square
        case 2:
          in = (int(std::floor(x / (r / 2))) % 2) == 0;
          break;  // stripes
        case 3:
          in = dist < r && dist > 0.6 * r;
          break;  // ring
        case 4:
          in = std::abs(dx) < r / 3 || std::abs(dy) < r / 3;
          break;  // cross
        default:
          in = std::abs(dx) + std::abs(dy) < r;
          break;  // diamond
      }
      const double noise = uniform(rng, -0.05, 0.05);
      for (int c = 0; c < 3; ++c) {
        const double v = (in ? fg[c] : bg[c]) + noise;
        rgb[(std::size_t(y) * std::size_t(w) + std::size_t(x)) * 3 + std::size_t(c)] =
            std::uint8_t(std::lround(std::clamp(v, 0.0, 1.0) * 255.0));
      }
    }
  return rgb;
}

void write_jpeg(const std::string& path, int w, int h, const std::uint8_t* rgb) {
  std::vector<std::uint8_t> bytes;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<std::uint8_t>*>(ctx);
    const auto* p = static_cast<const std::uint8_t*>(data);
    v->insert(v->end(), p, p + size);
  };
  if (!::stbi_write_jpg_to_func(sink, &bytes, w, h, 3, rgb, 90))
    io::fail(path, "JPEG encoding failed");
  io::atomic_write(path, [&](io::Writer& wr) { wr.write(bytes.data(), bytes.size()); });
}

int run(const Options& o) {
  if (o.classes < 1 || o.classes > 1000)
    raise_config("29_make_image_folder", "--classes must lie in [1, 1000]");
  if (o.train_per_class < 1 || o.val_per_class < 1)
    raise_config("29_make_image_folder", "--train-per-class and --val-per-class must be >= 1");
  if (o.min_side < 8 || o.max_side < o.min_side || o.max_side > 4096)
    raise_config("29_make_image_folder", "need 8 <= --min-side <= --max-side <= 4096");
  Rng rng(o.seed);
  std::size_t written = 0;
  for (const char* split : {"train", "val"}) {
    const int per = std::string(split) == "train" ? o.train_per_class : o.val_per_class;
    for (int k = 0; k < o.classes; ++k) {
      char cls[32];
      std::snprintf(cls, sizeof cls, "class_%03d", k);
      const std::string dir = o.out + "/" + split + "/" + cls;
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) io::fail(dir, "cannot create the folder (" + ec.message() + ")");
      for (int i = 0; i < per; ++i) {
        const int w = int(uniform(rng, o.min_side, o.max_side + 1.0));
        const int h = int(uniform(rng, o.min_side, o.max_side + 1.0));
        const auto rgb = draw(k, w, h, rng);
        char name[32];
        std::snprintf(name, sizeof name, "img_%05d.%s", i, i % 2 ? "jpg" : "png");
        const std::string path = dir + "/" + name;
        if (i % 2)
          write_jpeg(path, w, h, rgb.data());
        else
          plot::write_png(path, w, h, rgb.data());
        ++written;
      }
    }
    if (o.corrupt) {  // a PNG signature and nothing else: unreadable, skipped by the loader
      const std::string path = o.out + "/" + split + "/class_000/truncated.png";
      const unsigned char sig[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0};
      io::atomic_write(path, [&](io::Writer& wr) { wr.write(sig, sizeof sig); });
    }
  }
  std::printf("wrote %zu images of %d classes into %s/{train,val}%s\n", written, o.classes,
              o.out.c_str(), o.corrupt ? " (and one truncated file per split)" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"flowprior: write a small ImageNet-style folder of synthetic images"};
  Options o;
  app.add_option("--out", o.out, "root folder (train/ and val/ are created in it)");
  app.add_option("--classes", o.classes, "classes (shapes)");
  app.add_option("--train-per-class", o.train_per_class, "training images per class");
  app.add_option("--val-per-class", o.val_per_class, "held-out images per class");
  app.add_option("--min-side", o.min_side, "smallest image side");
  app.add_option("--max-side", o.max_side, "largest image side");
  app.add_option("--seed", o.seed, "seed")->check(example::kNonNegativeInteger);
  app.add_flag("--corrupt", o.corrupt, "add one truncated file per split");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
