// Image folders, decoding and the loader of flowprior::datasets (folder.hpp, decode.hpp,
// source.hpp, loader.hpp; docs/data.md): tiny folders of PNG and JPEG files written here with
// stb_image_write, broken files among them (a truncated PNG, a JPEG cut inside its scan data, a
// PNG "zip bomb", garbage bytes, an empty file, a directory named like an image, an unreadable
// file when not root), skipped and counted; the same batches with any number of threads; resume
// from a saved position.
#include <stb/stb_image_write.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <flowprior/datasets/decode.hpp>
#include <flowprior/datasets/folder.hpp>
#include <flowprior/datasets/loader.hpp>
#include <flowprior/datasets/source.hpp>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"
#include "image_bytes.hpp"

namespace {

namespace ds = flowprior::datasets;
namespace fs = std::filesystem;
using flowprior::config_error;
using flowprior::io_error;
using Bytes = std::vector<std::uint8_t>;

// An RGB test pattern of w x h that differs with `tag`.
std::vector<std::uint8_t> pattern(int w, int h, int tag) {
  std::vector<std::uint8_t> p(static_cast<std::size_t>(w * h * 3));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        p[static_cast<std::size_t>((y * w + x) * 3 + c)] =
            static_cast<std::uint8_t>((x * 7 + y * 3 + c * 50 + tag * 31) & 0xff);
  return p;
}

void write_png(const std::string& path, int w, int h, int tag) {
  const auto p = pattern(w, h, tag);
  REQUIRE(stbi_write_png(path.c_str(), w, h, 3, p.data(), w * 3) != 0);
}

void write_jpg(const std::string& path, int w, int h, int tag) {
  const auto p = pattern(w, h, tag);
  REQUIRE(stbi_write_jpg(path.c_str(), w, h, 3, p.data(), 90) != 0);
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// root/cat: 3 good images; root/dog: 2 good and 6 broken entries and a text file; root/eel: 2
// good (and an unreadable one when not root). Returns the number of broken entries.
int make_folder(const fpt::TempDir& root) {
  for (const char* c : {"cat", "dog", "eel"}) fs::create_directories(root / c);
  write_png(root / "cat/a.png", 40, 30, 1);
  write_jpg(root / "cat/b.jpg", 33, 47, 2);
  write_png(root / "cat/C.PNG", 64, 64, 3);
  write_png(root / "dog/d.png", 50, 20, 4);
  write_jpg(root / "dog/e.jpeg", 20, 50, 5);
  const Bytes png = read_bytes(root / "cat/a.png");
  write_bytes(root / "dog/trunc.png",
              Bytes(png.begin(), png.begin() + static_cast<long>(png.size() / 2)));
  // A JPEG cut inside its scan data (no end-of-image marker), and a PNG whose image data inflates
  // to 16 MiB where its IHDR implies 200 bytes.
  const Bytes jpg = read_bytes(root / "cat/b.jpg");
  write_bytes(root / "dog/trunc.jpg",
              Bytes(jpg.begin(), jpg.begin() + static_cast<long>(jpg.size() * 3 / 4)));
  imgbytes::Ihdr bomb;
  bomb.width = 8;
  bomb.height = 8;
  write_bytes(root / "dog/bomb.png",
              imgbytes::png_file(bomb, imgbytes::zlib_zeros(std::uint64_t{16} << 20)));
  Bytes garbage(300);
  for (std::size_t i = 0; i < garbage.size(); ++i)
    garbage[i] = static_cast<std::uint8_t>(i * 37 + 11);
  write_bytes(root / "dog/garbage.jpg", garbage);
  write_bytes(root / "dog/empty.png", Bytes{});
  fs::create_directories(root / "dog/dir.png");
  write_bytes(root / "dog/notes.txt", Bytes{'h', 'i'});
  write_png(root / "eel/f.png", 31, 29, 6);
  write_png(root / "eel/g.png", 8, 8, 7);
  int broken = 6;
  if (::geteuid() != 0) {
    write_png(root / "eel/noperm.png", 8, 8, 8);
    ::chmod((root / "eel/noperm.png").c_str(), 0);
    ++broken;
  }
  return broken;
}

std::shared_ptr<const ds::SampleSource> folder_source(const std::string& root,
                                                      ds::TransformMode mode) {
  ds::ImageTransform tf;
  tf.mode = mode;
  tf.size = 12;
  tf.resize = 14;
  return std::make_shared<ds::ImageFolderSource>(ds::ImageFolder::scan(root), tf);
}

std::vector<ds::Batch> take(ds::Loader& l, int n) {
  std::vector<ds::Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(l.next());
  return out;
}

void require_same(const std::vector<ds::Batch>& a, const std::vector<ds::Batch>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO("batch " << i);
    REQUIRE(a[i].position == b[i].position);
    REQUIRE(a[i].indices == b[i].indices);
    REQUIRE(a[i].labels == b[i].labels);
    REQUIRE(a[i].data == b[i].data);  // bit for bit
    REQUIRE(a[i].skipped.size() == b[i].skipped.size());
  }
}

}  // namespace

TEST_CASE("image folder: classes and files sorted by name, only image names listed", "[data]") {
  fpt::TempDir root("folder");
  make_folder(root);
  const ds::ImageFolder f = ds::ImageFolder::scan(root.dir.string());
  REQUIRE(f.classes() == std::vector<std::string>{"cat", "dog", "eel"});
  std::vector<std::string> names;
  for (std::size_t i = 0; i < f.size(); ++i) names.push_back(f.relative_path(i));
  std::vector<std::string> want = {
      "cat/C.PNG",     "cat/a.png",  "cat/b.jpg",     "dog/bomb.png",    "dog/d.png",
      "dog/dir.png",   "dog/e.jpeg", "dog/empty.png", "dog/garbage.jpg", "dog/trunc.jpg",
      "dog/trunc.png", "eel/f.png",  "eel/g.png"};
  if (::geteuid() != 0) want.insert(want.begin() + 12, "eel/noperm.png");
  REQUIRE(names == want);
  CHECK(f.label(0) == 0);
  CHECK(f.label(3) == 1);
  CHECK(f.label(f.size() - 1) == 2);
  CHECK(f.path(0) == root.dir.string() + "/cat/C.PNG");
  CHECK(ds::is_image_name("x.JPeG"));
  CHECK_FALSE(ds::is_image_name(".png"));
  CHECK_FALSE(ds::is_image_name("x.gif"));
}

TEST_CASE("image folder: missing, empty or imageless folders are io_errors", "[data]") {
  fpt::TempDir root("folderbad");
  auto msg = [](const std::string& p) {
    try {
      (void)ds::ImageFolder::scan(p);
    } catch (const io_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(msg(root / "missing"), Catch::Contains("missing") && Catch::Contains("cannot open"));
  CHECK_THAT(msg(root.dir.string()), Catch::Contains("found none"));
  write_bytes(root / "file", Bytes{1});
  CHECK_THAT(msg(root / "file"), Catch::Contains("found a file"));
  fs::create_directories(root / "a");
  fs::create_directories(root / "b");
  write_png(root / "a/x.png", 4, 4, 0);
  write_bytes(root / "b/readme.txt", Bytes{1});
  CHECK_THAT(msg(root.dir.string()), Catch::Contains("found none in 1 of them ('b')"));
}

TEST_CASE("decode: PNG and JPEG decode; broken files are io_errors naming the file", "[data]") {
  fpt::TempDir root("decode");
  make_folder(root);
  const ds::Image8 a = ds::read_image(root / "cat/a.png");
  CHECK(a.width == 40);
  CHECK(a.height == 30);
  CHECK(a.channels == 3);
  CHECK(a.pixels == pattern(40, 30, 1));  // PNG is lossless
  const ds::Image8 g = ds::read_image(root / "cat/a.png", 1);
  CHECK(g.channels == 1);
  CHECK(g.pixels.size() == 40u * 30u);
  const ds::Image8 b = ds::read_image(root / "cat/b.jpg");
  CHECK(b.width == 33);
  CHECK(b.height == 47);
  for (const char* bad : {"dog/trunc.png", "dog/garbage.jpg", "dog/empty.png", "dog/dir.png",
                          "dog/trunc.jpg", "dog/bomb.png"}) {
    INFO(bad);
    try {
      (void)ds::read_image(root / bad);
      FAIL("no error");
    } catch (const io_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains(bad));
    }
  }
  CHECK_THROWS_WITH(ds::read_image(root / "dog/trunc.jpg"),
                    Catch::Contains("truncated: no end-of-image marker"));
  CHECK_THROWS_WITH(ds::read_image(root / "dog/bomb.png"),
                    Catch::Contains("inflates to more than the 200 bytes its IHDR implies"));
  // Above the pixel limit: refused from the header, before decoding.
  ds::DecodeLimits small;
  small.max_pixels = 100;
  CHECK_THROWS_WITH(ds::read_image(root / "cat/a.png", 3, small),
                    Catch::Contains("beyond the limit"));
  // A JPEG cut in its headers.
  const Bytes jpg = read_bytes(root / "cat/b.jpg");
  CHECK_THROWS_AS(ds::decode_image(jpg.data(), 40, "cut.jpg"), io_error);
  CHECK_THROWS_AS(ds::decode_image(jpg.data(), jpg.size(), "x.jpg", 2), config_error);
  // The fuzz findings in stb_image 2.27, refused before stb sees them: a JPEG Huffman table of
  // 257 codes (stb writes past its table) and a PNG chunk claiming 2 GiB (stb allocates it).
  const std::string corpus = std::string(FLOWPRIOR_TEST_SOURCE_DIR) + "/fuzz/corpus/image/";
  CHECK_THROWS_WITH(ds::read_image(corpus + "crash-jpeg-dht-257-codes"),
                    Catch::Contains("Huffman table declares"));
  CHECK_THROWS_WITH(ds::read_image(corpus + "png-idat-length-2gib"),
                    Catch::Contains("PNG chunk declares"));
  // The third: a scan that uses an AC table no DHT defined (stb decodes with uninitialised heap
  // memory and aborts on an assertion of libstb).
  CHECK_THROWS_WITH(ds::read_image(corpus + "jpeg-scan-undefined-huffman-table"),
                    Catch::Contains("AC Huffman table 0, which no DHT segment before it defines"));
}

TEST_CASE("loader: broken images are skipped and counted, never a crash", "[data]") {
  fpt::TempDir root("skip");
  const int broken = make_folder(root);
  auto src = folder_source(root.dir.string(), ds::TransformMode::Eval);
  ds::LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.threads = 2;
  cfg.seed = 11;
  cfg.max_reported = 3;
  ds::Loader loader(src, cfg);
  const std::int64_t n = static_cast<std::int64_t>(src->size());
  REQUIRE(loader.batches_per_epoch() == (n + 3) / 4);
  std::multiset<std::size_t> seen;
  std::int64_t columns = 0;
  for (std::int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    const ds::Batch batch = loader.next();
    REQUIRE(batch.position == ds::Position{0, b});
    REQUIRE(batch.sample_size == 3 * 12 * 12);
    REQUIRE(batch.data.size() == static_cast<std::size_t>(batch.size() * batch.sample_size));
    REQUIRE(batch.view().rows == 432);
    REQUIRE(batch.matrix().cols() == batch.size());
    for (float v : batch.data) {
      REQUIRE(v >= -1.0f);
      REQUIRE(v <= 1.0f);
    }
    columns += batch.size();
    seen.insert(batch.indices.begin(), batch.indices.end());
    for (const auto& s : batch.skipped) seen.insert(s.index);
  }
  CHECK(columns == n - broken);
  CHECK(seen.size() == static_cast<std::size_t>(n));  // every sample once per epoch
  CHECK(std::set<std::size_t>(seen.begin(), seen.end()).size() == static_cast<std::size_t>(n));
  CHECK(loader.skipped_count() == static_cast<std::uint64_t>(broken));
  REQUIRE(loader.skipped_reports().size() == 3);
  for (const auto& r : loader.skipped_reports())
    CHECK_THAT(r, Catch::Contains(root.dir.string()) && Catch::Contains("[flowprior.io]"));
  CHECK(loader.position() == ds::Position{1, 0});
}

TEST_CASE("loader: the same batches with any number of threads, and shuffled per epoch", "[data]") {
  fpt::TempDir root("threads");
  make_folder(root);
  auto src = folder_source(root.dir.string(), ds::TransformMode::Train);
  std::vector<std::vector<ds::Batch>> runs;
  for (int threads : {0, 1, 3}) {
    for (int prefetch : {1, 5}) {
      ds::LoaderConfig cfg;
      cfg.batch_size = 3;
      cfg.threads = threads;
      cfg.prefetch = prefetch;
      cfg.seed = 42;
      ds::Loader loader(src, cfg);
      runs.push_back(take(loader, 3 * static_cast<int>(loader.batches_per_epoch())));
    }
  }
  for (std::size_t r = 1; r < runs.size(); ++r) require_same(runs[0], runs[r]);
  // Epochs differ in order (and, in training mode, in crops); another seed gives other batches.
  const std::int64_t per = (static_cast<std::int64_t>(src->size()) + 2) / 3;
  std::vector<std::size_t> e0, e1;
  for (std::int64_t b = 0; b < per; ++b) {
    for (const auto& s : runs[0][static_cast<std::size_t>(b)].skipped) e0.push_back(s.index);
    e0.insert(e0.end(), runs[0][static_cast<std::size_t>(b)].indices.begin(),
              runs[0][static_cast<std::size_t>(b)].indices.end());
    const auto& b1 = runs[0][static_cast<std::size_t>(per + b)];
    for (const auto& s : b1.skipped) e1.push_back(s.index);
    e1.insert(e1.end(), b1.indices.begin(), b1.indices.end());
  }
  CHECK(e0 != e1);
  ds::LoaderConfig other;
  other.batch_size = 3;
  other.seed = 43;
  ds::Loader l2(src, other);
  CHECK(l2.next().data != runs[0][0].data);
}

TEST_CASE("loader: a restored position gives the same following batches", "[data]") {
  fpt::TempDir root("resume");
  make_folder(root);
  auto src = folder_source(root.dir.string(), ds::TransformMode::Train);
  ds::LoaderConfig cfg;
  cfg.batch_size = 2;
  cfg.threads = 2;
  cfg.prefetch = 3;
  cfg.seed = 5;
  cfg.drop_last = true;
  ds::Loader a(src, cfg);
  const std::int64_t per = a.batches_per_epoch();
  REQUIRE(per == static_cast<std::int64_t>(src->size()) / 2);
  (void)take(a, static_cast<int>(per) + 1);  // into the second epoch
  const ds::Position saved = a.position();
  REQUIRE(saved == ds::Position{1, 1});
  const auto rest = take(a, static_cast<int>(per) + 2);  // across the next epoch boundary
  // A fresh loader (another thread count) moved to the saved position.
  cfg.threads = 3;
  ds::Loader b(src, cfg);
  (void)b.next();  // workers running, batches prefetched: all discarded by set_position
  b.set_position(saved);
  REQUIRE(b.position() == saved);
  require_same(rest, take(b, static_cast<int>(per) + 2));
  // Going back on the same loader, and the end-of-epoch form of a position.
  a.set_position(saved);
  require_same(rest, take(a, static_cast<int>(per) + 2));
  b.set_position(ds::Position{0, per});
  CHECK(b.position() == ds::Position{1, 0});
  CHECK_THROWS_AS(b.set_position(ds::Position{0, per + 1}), config_error);
  CHECK_THROWS_AS(b.set_position(ds::Position{-1, 0}), config_error);
}

TEST_CASE("loader: invalid settings are config errors", "[data]") {
  ds::ImageArray arr;
  arr.count = 3;
  arr.height = 2;
  arr.width = 2;
  arr.pixels.assign(12, 7);
  arr.labels = {0, 1, 2};
  auto src = std::make_shared<ds::ArraySource>(arr, true);
  ds::LoaderConfig cfg;
  cfg.batch_size = 0;
  CHECK_THROWS_AS(ds::Loader(src, cfg), config_error);
  cfg = ds::LoaderConfig{};
  cfg.prefetch = 0;
  CHECK_THROWS_AS(ds::Loader(src, cfg), config_error);
  cfg = ds::LoaderConfig{};
  cfg.threads = -1;
  CHECK_THROWS_AS(ds::Loader(src, cfg), config_error);
  cfg = ds::LoaderConfig{};
  cfg.batch_size = 4;
  cfg.drop_last = true;
  CHECK_THROWS_AS(ds::Loader(src, cfg), config_error);
  CHECK_THROWS_AS(ds::Loader(nullptr, ds::LoaderConfig{}), config_error);
  arr.labels.pop_back();
  CHECK_THROWS_AS(ds::ArraySource(arr), flowprior::shape_error);
  // An array source: 3 images, batches of 2, the last one short.
  cfg = ds::LoaderConfig{};
  cfg.batch_size = 2;
  ds::Loader l(src, cfg);
  CHECK(l.batches_per_epoch() == 2);
  CHECK(l.next().size() == 2);
  CHECK(l.next().size() == 1);
}

// ---------------------------------------------------------------------------------------------
// Sharding (docs/data.md "Sharding"): the loader of shard r of P builds only its slots of each
// global batch.
// ---------------------------------------------------------------------------------------------

namespace {

// The shards' batches of one step, side by side, must make the one-process batch `whole`: the
// indices, labels, skipped samples and pixels (bit for bit) in shard order, each shard holding
// its shard_range of the global batch.
void require_shards_make(const ds::Batch& whole, const std::vector<ds::Batch>& shards) {
  const int P = static_cast<int>(shards.size());
  const std::int64_t global = whole.size() + static_cast<std::int64_t>(whole.skipped.size());
  ds::Batch cat;
  std::vector<std::size_t> skipped_whole, skipped_cat;
  for (const auto& s : whole.skipped) skipped_whole.push_back(s.index);
  for (int r = 0; r < P; ++r) {
    const ds::Batch& b = shards[static_cast<std::size_t>(r)];
    INFO("shard " << r << " of " << P);
    REQUIRE(b.position == whole.position);
    REQUIRE(b.sample_size == whole.sample_size);
    REQUIRE(b.global_size == global);
    const ds::ShardRange want = ds::shard_range(global, r, P);
    REQUIRE(b.shard.begin == want.begin);
    REQUIRE(b.shard.end == want.end);
    REQUIRE(b.size() + static_cast<std::int64_t>(b.skipped.size()) == want.size());
    REQUIRE(b.data.size() == static_cast<std::size_t>(b.size() * b.sample_size));
    cat.indices.insert(cat.indices.end(), b.indices.begin(), b.indices.end());
    cat.labels.insert(cat.labels.end(), b.labels.begin(), b.labels.end());
    cat.data.insert(cat.data.end(), b.data.begin(), b.data.end());
    for (const auto& s : b.skipped) skipped_cat.push_back(s.index);
  }
  REQUIRE(cat.indices == whole.indices);
  REQUIRE(cat.labels == whole.labels);
  REQUIRE(cat.data == whole.data);  // bit for bit
  REQUIRE(skipped_cat == skipped_whole);
}

// Runs `steps` batches of one unsharded loader (threads 0) and of P shards (each with `threads`
// workers), checks them step by step, then moves every loader to `resume` and checks `steps`
// more. Returns the shards' skipped counts summed, and the reference's.
std::pair<std::uint64_t, std::uint64_t> check_shards(std::shared_ptr<const ds::SampleSource> src,
                                                     ds::LoaderConfig cfg, int P, int threads,
                                                     int steps, ds::Position resume) {
  cfg.threads = 0;
  ds::Loader whole(src, cfg);
  std::vector<std::unique_ptr<ds::Loader>> shards;
  for (int r = 0; r < P; ++r) {
    ds::LoaderConfig sc = cfg;
    sc.threads = threads;
    sc.shard_rank = r;
    sc.shard_count = P;
    shards.push_back(std::make_unique<ds::Loader>(src, sc));
    REQUIRE(shards.back()->batches_per_epoch() == whole.batches_per_epoch());
  }
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      whole.set_position(resume);
      for (auto& l : shards) l->set_position(resume);
    }
    for (int s = 0; s < steps; ++s) {
      INFO("pass " << pass << ", step " << s);
      std::vector<ds::Batch> got;
      for (auto& l : shards) got.push_back(l->next());
      require_shards_make(whole.next(), got);
      for (auto& l : shards) REQUIRE(l->position() == whole.position());
    }
  }
  std::uint64_t sum = 0;
  for (auto& l : shards) sum += l->skipped_count();
  return {sum, whole.skipped_count()};
}

}  // namespace

TEST_CASE("loader: shard_range splits a batch evenly, the first shards one more", "[data][shard]") {
  auto ranges = [](std::int64_t n, int P) {
    std::vector<std::pair<std::int64_t, std::int64_t>> v;
    for (int r = 0; r < P; ++r) {
      const ds::ShardRange s = ds::shard_range(n, r, P);
      v.emplace_back(s.begin, s.end);
    }
    return v;
  };
  using V = std::vector<std::pair<std::int64_t, std::int64_t>>;
  CHECK(ranges(10, 3) == V{{0, 4}, {4, 7}, {7, 10}});
  CHECK(ranges(12, 3) == V{{0, 4}, {4, 8}, {8, 12}});
  CHECK(ranges(8, 2) == V{{0, 4}, {4, 8}});
  CHECK(ranges(1, 3) == V{{0, 1}, {1, 1}, {1, 1}});
  CHECK(ranges(0, 2) == V{{0, 0}, {0, 0}});
  CHECK(ranges(7, 1) == V{{0, 7}});
  CHECK(ds::shard_range(10, 1, 3).size() == 3);
  CHECK_THROWS_AS(ds::shard_range(4, 2, 2), config_error);
  CHECK_THROWS_AS(ds::shard_range(4, -1, 2), config_error);
  CHECK_THROWS_AS(ds::shard_range(4, 0, 0), config_error);
  CHECK_THROWS_WITH(ds::shard_range(-1, 0, 1), Catch::Contains("[flowprior.config] shard_range"));
}

TEST_CASE("loader: each shard returns its columns of the one-process batch, bit for bit",
          "[data][shard]") {
  // 11 images with random flips, batches of 4: 4, 4, 3 (the short one split 2 + 1, 1 + 1 + 1).
  ds::ImageArray arr;
  arr.count = 11;
  arr.height = 3;
  arr.width = 4;
  for (std::int64_t i = 0; i < arr.count * 12; ++i)
    arr.pixels.push_back(static_cast<std::uint8_t>((i * 53 + 7) % 256));
  for (int i = 0; i < 11; ++i) arr.labels.push_back(i % 4);
  auto src = std::make_shared<ds::ArraySource>(arr, true);
  ds::LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.seed = 9;
  cfg.prefetch = 2;
  for (int P : {1, 2, 3}) {
    for (int threads : {0, 2}) {
      INFO(P << " shards, " << threads << " threads");
      // Three epochs, then again from (epoch 1, batch 2), across the next epoch boundary.
      (void)check_shards(src, cfg, P, threads, 9, ds::Position{1, 2});
      // The columns themselves: shard r's batch is columns [lo_r, hi_r) of the whole batch.
      ds::LoaderConfig one = cfg;
      one.threads = 0;
      ds::Loader whole(src, one);
      ds::LoaderConfig sc = cfg;
      sc.threads = threads;
      sc.shard_rank = P - 1;
      sc.shard_count = P;
      ds::Loader last(src, sc);
      for (int s = 0; s < 6; ++s) {
        const ds::Batch w = whole.next(), b = last.next();
        REQUIRE(b.size() == b.shard.size());  // nothing skipped here
        REQUIRE(w.matrix().middleCols(b.shard.begin, b.shard.size()) == b.matrix());
      }
    }
  }
}

TEST_CASE("loader: shards of a folder with broken images skip and count their own",
          "[data][shard]") {
  fpt::TempDir root("shards");
  const int broken = make_folder(root);
  auto src = folder_source(root.dir.string(), ds::TransformMode::Train);
  ds::LoaderConfig cfg;
  cfg.batch_size = 4;  // 13 or 14 entries: the last batch of 1 or 2 leaves a shard of 3 empty
  cfg.seed = 21;
  const int steps = 3 * static_cast<int>((src->size() + 3) / 4);  // three epochs
  for (int P : {1, 2, 3}) {
    for (int threads : {0, 2}) {
      INFO(P << " shards, " << threads << " threads");
      const auto counts = check_shards(src, cfg, P, threads, steps, ds::Position{2, 1});
      CHECK(counts.first == counts.second);  // each broken file counted by one shard
      CHECK(counts.second >= 3u * static_cast<std::uint64_t>(broken));
    }
  }
  // A position saved by a sharded loader resumes an unsharded one (and another shard count).
  ds::LoaderConfig two = cfg;
  two.shard_count = 2;
  two.shard_rank = 1;
  ds::Loader a(src, two);
  (void)take(a, 5);
  ds::Loader whole(src, cfg);
  whole.set_position(a.position());
  ds::LoaderConfig three = cfg;
  three.shard_count = 3;
  std::vector<ds::Batch> parts;
  for (int r = 0; r < 3; ++r) {
    three.shard_rank = r;
    ds::Loader l(src, three);
    l.set_position(a.position());
    parts.push_back(l.next());
  }
  require_shards_make(whole.next(), parts);
}

TEST_CASE("loader: invalid shards are config errors naming the field", "[data][shard]") {
  ds::ImageArray arr;
  arr.count = 5;
  arr.height = arr.width = 2;
  arr.pixels.assign(20, 3);
  arr.labels.assign(5, 0);
  auto src = std::make_shared<ds::ArraySource>(arr);
  auto error_of = [&](int rank, int count, std::int64_t batch) {
    ds::LoaderConfig cfg;
    cfg.batch_size = batch;
    cfg.shard_rank = rank;
    cfg.shard_count = count;
    try {
      ds::Loader l(src, cfg);
    } catch (const config_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(error_of(0, 0, 4), Catch::Contains("shard_count must be in 1..batch_size (4), got 0"));
  CHECK_THAT(error_of(0, 5, 4), Catch::Contains("shard_count must be in 1..batch_size (4), got 5"));
  CHECK_THAT(error_of(-1, 2, 4), Catch::Contains("shard_rank must be in 0..1, got -1"));
  CHECK_THAT(error_of(2, 2, 4), Catch::Contains("shard_rank must be in 0..1, got 2"));
  CHECK(error_of(3, 4, 4).empty());
}
