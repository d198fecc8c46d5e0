// Resampling and crop geometry of flowprior::datasets (transform.hpp, docs/data.md "Resizing"
// and "Crops"): the antialiased triangle filter against analytic expectations, torchvision's
// Resize / CenterCrop / RandomResizedCrop geometry, the flip and the [-1, 1] mapping, and the
// counter-based random streams.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <flowprior/datasets/random.hpp>
#include <flowprior/datasets/transform.hpp>
#include <set>
#include <vector>

#include "catch.hpp"

namespace {

namespace ds = flowprior::datasets;
using flowprior::config_error;

// Resamples a one-channel float image (rows of `w`) to out_w x out_h, whole.
std::vector<float> resize1(const std::vector<float>& src, int w, int h, int out_w, int out_h) {
  std::vector<float> out(static_cast<std::size_t>(out_w * out_h));
  ds::resample(src.data(), w, h, 1, ds::Region{0, 0, w, h}, out_w, out_h,
               ds::Region{0, 0, out_w, out_h}, false, 1.0f, 0.0f, out.data());
  return out;
}

}  // namespace

TEST_CASE("resize: a constant image stays constant at every scale", "[data]") {
  const int w = 37, h = 23;
  std::vector<float> src(static_cast<std::size_t>(w * h), 0.75f);
  for (int ow : {1, 5, 18, 37, 40, 111})
    for (int oh : {1, 7, 23, 50}) {
      const auto out = resize1(src, w, h, ow, oh);
      for (float v : out) REQUIRE(v == Approx(0.75f).epsilon(1e-6));
    }
}

TEST_CASE("resize: the taps are the stretched triangle, normalised", "[data]") {
  // Downscale by 2: output i is centred at 2i + 1; its taps 2i - 1 .. 2i + 2 have weights
  // triangle((j + 1/2 - c) / 2) = 1/4, 3/4, 3/4, 1/4, normalised: 1/8, 3/8, 3/8, 1/8.
  const ds::AxisTaps t = ds::axis_taps(0, 20, 10, 0, 10);
  for (int i = 1; i < 9; ++i) {
    REQUIRE(t.first[i] == 2 * i - 1);
    REQUIRE(t.count[i] == 4);
    const double* w = &t.weights[static_cast<std::size_t>(i * t.stride)];
    CHECK(w[0] == Approx(0.125));
    CHECK(w[1] == Approx(0.375));
    CHECK(w[2] == Approx(0.375));
    CHECK(w[3] == Approx(0.125));
  }
  // At the border the taps outside the interval are dropped and the rest renormalised.
  REQUIRE(t.first[0] == 0);
  REQUIRE(t.count[0] == 3);
  CHECK(t.weights[0] == Approx(3.0 / 7.0));
  CHECK(t.weights[2] == Approx(1.0 / 7.0));
  // Upscaling: plain linear interpolation between the two nearest centres.
  const ds::AxisTaps u = ds::axis_taps(0, 4, 8, 0, 8);
  // Output 3 is centred at 1.75 in input coordinates: between centres 1.5 and 2.5, at 1/4.
  REQUIRE(u.first[3] == 1);
  REQUIRE(u.count[3] == 2);
  CHECK(u.weights[static_cast<std::size_t>(3 * u.stride)] == Approx(0.75));
  CHECK(u.weights[static_cast<std::size_t>(3 * u.stride) + 1] == Approx(0.25));
  // Every output's weights sum to 1, for many scales.
  for (int len : {3, 17, 64, 255})
    for (int out : {1, 2, 9, 64, 300}) {
      const ds::AxisTaps a = ds::axis_taps(0, len, out, 0, out);
      for (int i = 0; i < out; ++i) {
        double s = 0.0;
        for (int j = 0; j < a.count[i]; ++j)
          s += a.weights[static_cast<std::size_t>(i * a.stride + j)];
        REQUIRE(s == Approx(1.0).epsilon(1e-12));
      }
    }
}

TEST_CASE("resize: downscaling by 2 averages with weights 1:3:3:1 and keeps pair means", "[data]") {
  // A delta at column 10 of a row of 20: outputs 4 and 5 (taps 7..10 and 9..12) see it with
  // weights 1/8 and 3/8.
  std::vector<float> src(20, 0.0f);
  src[10] = 8.0f;
  const auto out = resize1(src, 20, 1, 10, 1);
  CHECK(out[4] == Approx(1.0f));
  CHECK(out[5] == Approx(3.0f));
  CHECK(out[6] == Approx(0.0f).margin(1e-7));
  // Pairs of equal values (a, a, b, b, ...): each interior output is (a + 3a + 3b + b)/8 for
  // pairs (a, b) centred on it; for a row made of pairs, output i averages its own pair with
  // weight 3/4 and its neighbours' with 1/8 each.
  std::vector<float> pairs(20);
  for (int j = 0; j < 20; ++j) pairs[static_cast<std::size_t>(j)] = static_cast<float>((j / 2) % 3);
  const auto p = resize1(pairs, 20, 1, 10, 1);
  for (int i = 1; i < 9; ++i) {
    const double own = (i % 3), left = ((i - 1) % 3), right = ((i + 1) % 3);
    CHECK(p[static_cast<std::size_t>(i)] == Approx(0.75 * own + 0.125 * left + 0.125 * right));
  }
}

TEST_CASE("resize: a linear ramp stays linear in the interior", "[data]") {
  // v(x, y) = 2 x + 3 y at pixel centres (x + 1/2, y + 1/2). Where no tap is cut by the border,
  // the taps are symmetric about the output centre when upscaling (two taps, linear
  // interpolation) and for integer downscale factors, so the output is v at the output centre
  // mapped back, exactly. For other factors the sampled triangle's mean is off the centre by a
  // fraction of a source pixel (PIL's filter has the same property): the output stays within
  // one source pixel's step of the ramp and increasing.
  const int w = 64, h = 48;
  std::vector<float> src(static_cast<std::size_t>(w * h));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      src[static_cast<std::size_t>(y * w + x)] =
          static_cast<float>(2.0 * (x + 0.5) + 3.0 * (y + 0.5));
  for (auto sz : {std::pair<int, int>{16, 12}, {32, 24}, {100, 70}, {21, 30}, {64, 16}}) {
    const int ow = sz.first, oh = sz.second;
    const auto out = resize1(src, w, h, ow, oh);
    const double sx = double(w) / ow, sy = double(h) / oh;
    const bool exact_x = sx <= 1.0 || sx == std::floor(sx);
    const bool exact_y = sy <= 1.0 || sy == std::floor(sy);
    const double tol = (exact_x ? 0.0 : 2.0) + (exact_y ? 0.0 : 3.0) + 1e-3;
    const int mx = static_cast<int>(std::ceil(2 * std::max(sx, 1.0) / sx)) + 1;
    const int my = static_cast<int>(std::ceil(2 * std::max(sy, 1.0) / sy)) + 1;
    for (int y = my; y < oh - my; ++y)
      for (int x = mx; x < ow - mx; ++x) {
        const double cx = (x + 0.5) * sx, cy = (y + 0.5) * sy;
        INFO(ow << "x" << oh << " at " << x << "," << y);
        REQUIRE(std::fabs(out[static_cast<std::size_t>(y * ow + x)] - (2.0 * cx + 3.0 * cy)) <=
                tol);
        if (x > mx)
          REQUIRE(out[static_cast<std::size_t>(y * ow + x)] >
                  out[static_cast<std::size_t>(y * ow + x - 1)]);
      }
  }
}

TEST_CASE("resize: a crop is resized on its own and the window, flip and map are applied",
          "[data]") {
  // Interleaved 3-channel 8-bit source whose channel c at (x, y) is 10 c + x.
  const int w = 8, h = 6;
  std::vector<std::uint8_t> src(static_cast<std::size_t>(w * h * 3));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        src[static_cast<std::size_t>((y * w + x) * 3 + c)] = static_cast<std::uint8_t>(10 * c + x);
  // Identity size on a 4 x 3 box at (2, 1): a plain copy, channel-major.
  std::vector<float> out(3 * 4 * 3);
  ds::resample(src.data(), w, h, 3, ds::Region{2, 1, 4, 3}, 4, 3, ds::Region{0, 0, 4, 3}, false,
               1.0f, 0.0f, out.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 4; ++x)
        REQUIRE(out[static_cast<std::size_t>((c * 3 + y) * 4 + x)] == 10 * c + 2 + x);
  // Flipped and mapped to [-1, 1].
  ds::resample(src.data(), w, h, 3, ds::Region{2, 1, 4, 3}, 4, 3, ds::Region{0, 0, 4, 3}, true,
               1.0f / 127.5f, -1.0f, out.data());
  for (int x = 0; x < 4; ++x)
    REQUIRE(out[static_cast<std::size_t>(x)] == Approx((2 + 3 - x) / 127.5 - 1.0));
  // A window of a virtual image is the same as that part of the whole.
  std::vector<float> whole(3 * 12 * 9), part(3 * 5 * 4);
  ds::resample(src.data(), w, h, 3, ds::Region{0, 0, w, h}, 12, 9, ds::Region{0, 0, 12, 9}, false,
               1.0f, 0.0f, whole.data());
  ds::resample(src.data(), w, h, 3, ds::Region{0, 0, w, h}, 12, 9, ds::Region{3, 2, 5, 4}, false,
               1.0f, 0.0f, part.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 5; ++x)
        REQUIRE(part[static_cast<std::size_t>((c * 4 + y) * 5 + x)] ==
                whole[static_cast<std::size_t>((c * 9 + y + 2) * 12 + x + 3)]);
  // Boxes and windows outside are config errors.
  CHECK_THROWS_AS(ds::resample(src.data(), w, h, 3, ds::Region{5, 0, 4, 3}, 4, 3,
                               ds::Region{0, 0, 4, 3}, false, 1.0f, 0.0f, out.data()),
                  config_error);
  CHECK_THROWS_AS(ds::resample(src.data(), w, h, 3, ds::Region{0, 0, 4, 3}, 4, 3,
                               ds::Region{1, 0, 4, 3}, false, 1.0f, 0.0f, out.data()),
                  config_error);
}

TEST_CASE("crops: shorter-side resize and centre crop follow torchvision", "[data]") {
  // Resize(256) of 500 x 375: short side 256, long int(256 * 500 / 375) = 341.
  auto r = ds::shorter_side_size(500, 375, 256);
  CHECK(r.width == 341);
  CHECK(r.height == 256);
  r = ds::shorter_side_size(375, 500, 256);
  CHECK(r.width == 256);
  CHECK(r.height == 341);
  r = ds::shorter_side_size(300, 300, 224);
  CHECK((r.width == 224 && r.height == 224));
  // CenterCrop: round((341 - 224) / 2) = round(58.5) = 58 (Python rounds halves to even);
  // round((343 - 224) / 2) = round(59.5) = 60.
  auto c = ds::center_crop(341, 256, 224, 224);
  CHECK(c.x == 58);
  CHECK(c.y == 16);
  c = ds::center_crop(343, 224, 224, 224);
  CHECK(c.x == 60);
  CHECK(c.y == 0);
  CHECK_THROWS_AS(ds::center_crop(100, 100, 101, 50), config_error);
}

TEST_CASE("crops: random resized crops lie inside, keep the scale and ratio, and fall back",
          "[data]") {
  ds::CropParams p;
  for (std::uint64_t i = 0; i < 2000; ++i) {
    ds::SampleRng rng(7, 0, i);
    const int W = 100 + static_cast<int>(i % 300), H = 80 + static_cast<int>(i % 170);
    const ds::Region b = ds::random_resized_crop(W, H, rng, p);
    REQUIRE(b.width >= 1);
    REQUIRE(b.height >= 1);
    REQUIRE(b.x >= 0);
    REQUIRE(b.y >= 0);
    REQUIRE(b.x + b.width <= W);
    REQUIRE(b.y + b.height <= H);
    const double area = double(b.width) * b.height / (double(W) * H);
    // Rounding w and h moves the area and ratio a little off their ranges.
    REQUIRE(area <= 1.0);
    REQUIRE(area >= 0.08 * 0.8);
    const double ratio = double(b.width) / b.height;
    REQUIRE(ratio >= 0.75 * 0.9);
    REQUIRE(ratio <= 4.0 / 3.0 * 1.1);
  }
  // No attempt can succeed (scales above 1 never fit): the centre fallback. A wide image is
  // clamped to ratio 4/3 at full height; a tall one to 3/4 at full width; a square one whole.
  ds::CropParams never = p;
  never.scale_min = never.scale_max = 4.0;
  ds::SampleRng rng(1, 2, 3);
  ds::Region b = ds::random_resized_crop(400, 100, rng, never);
  CHECK(b.height == 100);
  CHECK(b.width == 133);
  CHECK(b.x == (400 - 133) / 2);
  b = ds::random_resized_crop(100, 400, rng, never);
  CHECK(b.width == 100);
  CHECK(b.height == 133);
  CHECK(b.y == (400 - 133) / 2);
  b = ds::random_resized_crop(120, 100, rng, never);
  CHECK((b.x == 0 && b.y == 0 && b.width == 120 && b.height == 100));
  // Zero attempts go straight to the fallback.
  ds::CropParams zero = p;
  zero.attempts = 0;
  b = ds::random_resized_crop(120, 100, rng, zero);
  CHECK((b.width == 120 && b.height == 100));
}

TEST_CASE("transform: eval maps a constant image to its value in [-1, 1], train flips", "[data]") {
  ds::Image8 img;
  img.width = 50;
  img.height = 30;
  img.channels = 3;
  img.pixels.resize(50 * 30 * 3);
  for (std::size_t i = 0; i < img.pixels.size(); ++i)
    img.pixels[i] = static_cast<std::uint8_t>(i % 3 == 0 ? 0 : i % 3 == 1 ? 255 : 51);
  ds::ImageTransform tf;
  tf.size = 16;
  tf.resize = 20;
  std::vector<float> out(static_cast<std::size_t>(tf.sample_size()));
  ds::SampleRng rng(1, 0, 0);
  ds::transform_image(img, tf, rng, out.data());
  for (int k = 0; k < 256; ++k) {
    REQUIRE(out[static_cast<std::size_t>(k)] == Approx(-1.0f));
    REQUIRE(out[static_cast<std::size_t>(256 + k)] == Approx(1.0f));
    REQUIRE(out[static_cast<std::size_t>(512 + k)] == Approx(51 / 127.5 - 1.0));
  }
  // Train: a horizontal gradient; over many samples both orientations occur.
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 50; ++x)
      for (int c = 0; c < 3; ++c)
        img.pixels[static_cast<std::size_t>((y * 50 + x) * 3 + c)] =
            static_cast<std::uint8_t>(5 * x);
  tf.mode = ds::TransformMode::Train;
  int increasing = 0, decreasing = 0;
  for (std::uint64_t i = 0; i < 64; ++i) {
    ds::SampleRng r(3, 1, i);
    ds::transform_image(img, tf, r, out.data());
    if (out[15] > out[0]) ++increasing;
    if (out[15] < out[0]) ++decreasing;
  }
  CHECK(increasing > 10);
  CHECK(decreasing > 10);
  CHECK(increasing + decreasing == 64);
  // Wrong channels and invalid settings are config errors.
  tf.channels = 1;
  CHECK_THROWS_AS(ds::transform_image(img, tf, rng, out.data()), config_error);
  ds::ImageTransform bad;
  bad.resize = 100;
  CHECK_THROWS_AS(bad.validate(), config_error);
  bad = ds::ImageTransform{};
  bad.crop.scale_min = 0.0;
  CHECK_THROWS_AS(bad.validate(), config_error);
  bad = ds::ImageTransform{};
  bad.channels = 2;
  CHECK_THROWS_AS(bad.validate(), config_error);
}

TEST_CASE("random streams: pure functions of (seed, epoch, index), unbiased bounded draws",
          "[data]") {
  ds::SampleRng a(5, 1, 9), b(5, 1, 9), c(5, 2, 9), d(6, 1, 9), e(5, 1, 10);
  const std::uint64_t first = a.next_u64();
  CHECK(first == b.next_u64());
  CHECK(first != c.next_u64());
  CHECK(first != d.next_u64());
  CHECK(first != e.next_u64());
  // below(n) stays in range and reaches every value.
  ds::SampleRng r(1, 0, 0);
  std::vector<int> hits(7, 0);
  for (int k = 0; k < 7000; ++k) {
    const std::uint64_t v = r.below(7);
    REQUIRE(v < 7);
    ++hits[v];
  }
  for (int h : hits) CHECK(h > 800);
  // The epoch order is a permutation, the same for the same (seed, epoch), another for another.
  const auto o1 = ds::epoch_order(1000, 3, 0, true), o2 = ds::epoch_order(1000, 3, 0, true),
             o3 = ds::epoch_order(1000, 3, 1, true), id = ds::epoch_order(1000, 3, 1, false);
  CHECK(o1 == o2);
  CHECK(o1 != o3);
  CHECK(std::set<std::uint32_t>(o1.begin(), o1.end()).size() == 1000);
  for (std::uint32_t i = 0; i < 1000; ++i) REQUIRE(id[i] == i);
}
