// Plotting (examples/extras/plot/include/flowprior/plot/, target flowprior::plot): the PNG encoder
// against an independent decoder written here (chunk parsing, CRCs, inflate, all five filters),
// canvas primitives, colormaps, ticks, the Axes data -> pixel mapping, and a 2x2 Figure. Built only
// with flowprior::plot (stb); the decoder inflates with zlib, which the tests link for it.
#ifdef FLOWPRIOR_HAS_PLOT

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <flowprior/plot/figure.hpp>
#include <flowprior/toy2d/figures.hpp>
#include <future>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace fs = std::filesystem;
namespace plot = flowprior::plot;
using plot::Canvas;
using plot::Color;
using Bytes = std::vector<std::uint8_t>;

namespace {

using TempDir = fpt::TempDir;

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

/// A decoded 8-bit RGB PNG and which filter types its rows used.
struct Decoded {
  int width = 0, height = 0;
  Bytes rgb;
  std::vector<int> filters;
};

/// Minimal PNG reader for what write_png produces (8-bit truecolour, no interlace); written
/// from the PNG specification, independently of the encoder. Any violation fails the test.
Decoded decode_png(const Bytes& png) {
  static const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  REQUIRE(png.size() >= 8);
  REQUIRE(std::equal(sig, sig + 8, png.begin()));
  Decoded out;
  Bytes idat;
  bool seen_end = false;
  std::size_t at = 8;
  int chunk_index = 0;
  while (at < png.size()) {
    REQUIRE(at + 12 <= png.size());
    const std::uint32_t len = be32(&png[at]);
    const std::string type(png.begin() + static_cast<long>(at) + 4,
                           png.begin() + static_cast<long>(at) + 8);
    REQUIRE(at + 12 + len <= png.size());
    const std::uint8_t* data = &png[at + 8];
    const uLong crc = ::crc32(::crc32(0L, Z_NULL, 0), &png[at + 4], 4 + len);
    CAPTURE(type, chunk_index);
    REQUIRE(be32(&png[at + 8 + len]) == static_cast<std::uint32_t>(crc));
    if (chunk_index == 0) REQUIRE(type == "IHDR");
    if (type == "IHDR") {
      REQUIRE(len == 13);
      out.width = static_cast<int>(be32(data));
      out.height = static_cast<int>(be32(data + 4));
      REQUIRE(data[8] == 8);   // bit depth
      REQUIRE(data[9] == 2);   // RGB
      REQUIRE(data[10] == 0);  // deflate
      REQUIRE(data[11] == 0);  // adaptive filtering
      REQUIRE(data[12] == 0);  // not interlaced
    } else if (type == "IDAT") {
      idat.insert(idat.end(), data, data + len);
    } else if (type == "IEND") {
      REQUIRE(len == 0);
      seen_end = true;
      at += 12;
      break;
    }
    at += 12 + len;
    ++chunk_index;
  }
  REQUIRE(seen_end);
  REQUIRE(at == png.size());
  REQUIRE(out.width > 0);
  REQUIRE(out.height > 0);

  const std::size_t stride = static_cast<std::size_t>(out.width) * 3;
  Bytes raw((stride + 1) * static_cast<std::size_t>(out.height));
  uLongf raw_len = static_cast<uLongf>(raw.size());
  REQUIRE(::uncompress(raw.data(), &raw_len, idat.data(), static_cast<uLong>(idat.size())) == Z_OK);
  REQUIRE(raw_len == raw.size());

  out.rgb.assign(stride * static_cast<std::size_t>(out.height), 0);
  for (int y = 0; y < out.height; ++y) {
    const std::uint8_t* src = &raw[(stride + 1) * static_cast<std::size_t>(y)];
    std::uint8_t* row = &out.rgb[stride * static_cast<std::size_t>(y)];
    const std::uint8_t* up = y > 0 ? row - stride : nullptr;
    const int f = src[0];
    REQUIRE(f <= 4);
    out.filters.push_back(f);
    for (std::size_t i = 0; i < stride; ++i) {
      const int a = i >= 3 ? row[i - 3] : 0;
      const int b = up ? up[i] : 0;
      const int c = (up && i >= 3) ? up[i - 3] : 0;
      int pred = 0;
      if (f == 1) pred = a;
      if (f == 2) pred = b;
      if (f == 3) pred = (a + b) >> 1;
      if (f == 4) {
        const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
        pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
      }
      row[i] = static_cast<std::uint8_t>(src[1 + i] + pred);
    }
  }
  return out;
}

/// Pixels differing from the background, as a bounding box [x0, x1] x [y0, y1] (x0 > x1 if none).
struct Box {
  int x0, y0, x1, y1, count;
};
Box ink_box(const Canvas& cv, Color bg) {
  Box b{cv.width(), cv.height(), -1, -1, 0};
  for (int y = 0; y < cv.height(); ++y)
    for (int x = 0; x < cv.width(); ++x)
      if (cv.get(x, y) != bg) {
        b.x0 = std::min(b.x0, x);
        b.y0 = std::min(b.y0, y);
        b.x1 = std::max(b.x1, x);
        b.y1 = std::max(b.y1, y);
        ++b.count;
      }
  return b;
}

/// Runs f on its own thread and waits at most `seconds`: true when it returned in time (an
/// exception it threw is rethrown here). A call that hangs -- the regression the hostile-data
/// tests guard against -- is left running detached, owning its data through f's captures, so the
/// test fails instead of blocking the suite. f must not use Catch2 assertions.
template <class F>
bool finishes_within(double seconds, F f) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> result = done->get_future();
  std::thread([done, f]() mutable {
    try {
      f();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  }).detach();
  if (result.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready)
    return false;
  result.get();
  return true;
}

/// Generous: a render takes milliseconds (a second under sanitizers); a hang takes hours.
constexpr double kRenderSeconds = 60;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kMax = std::numeric_limits<double>::max();
constexpr double kDenorm = std::numeric_limits<double>::denorm_min();

/// Largest channel difference between two canvases of the same size.
int max_channel_diff(const Canvas& a, const Canvas& b) {
  int d = 0;
  const std::size_t n = static_cast<std::size_t>(a.width()) * a.height() * 3;
  for (std::size_t i = 0; i < n; ++i) d = std::max(d, std::abs(int{a.data()[i]} - b.data()[i]));
  return d;
}

}  // namespace

TEST_CASE("plot png: round trip through an independent decoder is exact", "[plot][io]") {
  std::mt19937_64 rng{0x5eed};
  std::uniform_int_distribution<int> byte(0, 255);
  const int w = 37, h = 23;
  Bytes rgb(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      std::uint8_t* p = &rgb[(static_cast<std::size_t>(y) * w + x) * 3];
      if (y < 6) {  // flat rows: None/Up
        p[0] = 200, p[1] = 10, p[2] = 90;
      } else if (y < 14) {  // horizontal gradient: Sub
        p[0] = static_cast<std::uint8_t>(7 * x), p[1] = static_cast<std::uint8_t>(3 * x + y),
        p[2] = 255;
      } else {  // noise
        p[0] = static_cast<std::uint8_t>(byte(rng)), p[1] = static_cast<std::uint8_t>(byte(rng)),
        p[2] = static_cast<std::uint8_t>(byte(rng));
      }
    }
  const Decoded d = decode_png(plot::encode_png(w, h, rgb.data()));
  REQUIRE(d.width == w);
  REQUIRE(d.height == h);
  REQUIRE(d.rgb == rgb);
  // The heuristic picks more than one filter type on this mixed image.
  REQUIRE(std::set<int>(d.filters.begin(), d.filters.end()).size() >= 2);

  // 1x1 and a single column: edge cases of the Sub/Paeth neighbours.
  const Bytes one = {1, 2, 3};
  REQUIRE(decode_png(plot::encode_png(1, 1, one.data())).rgb == one);
  const Bytes column = {9, 8, 7, 6, 5, 4, 3, 2, 1};
  REQUIRE(decode_png(plot::encode_png(1, 3, column.data())).rgb == column);
}

TEST_CASE("plot png: write_png writes the file atomically and reports errors", "[plot][io]") {
  TempDir tmp;
  const Bytes rgb(4 * 3 * 3, 128);
  const std::string path = tmp / "a.png";
  plot::write_png(path, 4, 3, rgb.data());
  const Decoded d = decode_png(flowprior::io::read_file(path));
  REQUIRE(d.rgb == rgb);
  REQUIRE(tmp.count() == 1);  // no temporary file left behind

  REQUIRE_THROWS_AS(plot::write_png(path, 0, 3, rgb.data()), flowprior::config_error);
  REQUIRE_THROWS_AS(plot::write_png(path, 4, -1, rgb.data()), flowprior::config_error);
  REQUIRE_THROWS_AS(plot::write_png(path, plot::kMaxImageSide + 1, 1, rgb.data()),
                    flowprior::config_error);
  REQUIRE_THROWS_AS(plot::write_png(path, 4, 3, nullptr), flowprior::config_error);
  // Within the side limit but above the byte limit of the encoder (sizes checked before any
  // pixel is read, so the small buffer is never overrun).
  REQUIRE_THROWS_WITH(plot::write_png(path, plot::kMaxImageSide, plot::kMaxImageSide, rgb.data()),
                      Catch::Contains("more than the PNG encoder takes"));
  REQUIRE_THROWS_AS(plot::write_png(tmp / "missing/dir/a.png", 4, 3, rgb.data()),
                    flowprior::io_error);
  REQUIRE(decode_png(flowprior::io::read_file(path)).rgb == rgb);  // untouched by the failures
}

TEST_CASE("plot canvas: pixels, blending, clipping, bad sizes", "[plot]") {
  Canvas cv(10, 8, Color{10, 20, 30});
  REQUIRE(cv.width() == 10);
  REQUIRE(cv.height() == 8);
  REQUIRE(cv.get(9, 7) == Color{10, 20, 30});
  cv.set(2, 3, plot::colors::red);
  REQUIRE(cv.get(2, 3) == plot::colors::red);
  REQUIRE(cv.data()[(3 * 10 + 2) * 3] == plot::colors::red.r);
  cv.set(-1, 0, plot::colors::red);  // outside: ignored
  cv.set(10, 0, plot::colors::red);
  REQUIRE_THROWS_AS(cv.get(10, 0), flowprior::value_error);

  Canvas b(4, 4, plot::colors::black);
  b.blend(1, 1, plot::colors::white, 0.5);
  REQUIRE(b.get(1, 1) == Color{128, 128, 128});
  b.set_clip(0, 0, 2, 2);
  b.fill_rect(0, 0, 4, 4, plot::colors::white);
  REQUIRE(b.get(1, 0) == plot::colors::white);
  REQUIRE(b.get(2, 2) == plot::colors::black);
  b.reset_clip();
  b.fill_rect(3, 3, 5, 5, plot::colors::red);
  REQUIRE(b.get(3, 3) == plot::colors::red);

  REQUIRE_THROWS_AS(Canvas(0, 5), flowprior::config_error);
  REQUIRE_THROWS_AS(Canvas(5, -2), flowprior::config_error);
}

TEST_CASE("plot canvas: lines, discs and text land where asked", "[plot]") {
  const Color bg = plot::colors::white, ink = plot::colors::blue;
  {
    Canvas cv(40, 30, bg);
    cv.line(3, 4, 31, 22, ink, 1.0);
    REQUIRE(cv.get(3, 4) == ink);
    REQUIRE(cv.get(31, 22) == ink);
    const Box box = ink_box(cv, bg);
    REQUIRE(box.x0 >= 2);
    REQUIRE(box.x1 <= 32);
    REQUIRE(box.y0 >= 3);
    REQUIRE(box.y1 <= 23);
    Canvas h(20, 10, bg);
    h.line(2, 5, 17, 5, ink, 1.0);  // width 1 on integer points: exactly one row
    const Box hb = ink_box(h, bg);
    REQUIRE(hb.y0 == 5);
    REQUIRE(hb.y1 == 5);
    REQUIRE(hb.count == 16);
  }
  {
    Canvas cv(30, 30, bg);
    cv.disc(15, 12, 4.0, ink, 1.0);
    REQUIRE(cv.get(15, 12) == ink);
    REQUIRE(cv.get(15, 15) == ink);
    REQUIRE(cv.get(15, 18) == bg);
    const Box box = ink_box(cv, bg);
    REQUIRE(box.x0 >= 10);
    REQUIRE(box.x1 <= 20);
    Canvas t(30, 30, bg);
    t.disc(15, 12, 4.0, ink, 0.5);  // translucent: centre is a mix, not the colour
    REQUIRE(t.get(15, 12) != ink);
    REQUIRE(t.get(15, 12) != bg);
  }
  {
    const std::string s = "Loss 0.25 gy|";
    for (int scale : {1, 2}) {
      CAPTURE(scale);
      Canvas cv(200, 60, bg);
      cv.text(7, 11, s, ink, scale);
      const Box box = ink_box(cv, bg);
      REQUIRE(box.count > 0);
      REQUIRE(box.x0 >= 7);
      REQUIRE(box.y0 >= 11);
      REQUIRE(box.x1 < 7 + Canvas::text_width(s, scale));
      REQUIRE(box.y1 < 11 + Canvas::text_height(scale));
      REQUIRE(box.x1 >=
              7 + Canvas::text_width(s, scale) - 5 * scale);  // last glyph reaches the end

      Canvas v(60, 200, bg);
      v.text_vertical(9, 13, s, ink, scale);
      const Box vb = ink_box(v, bg);
      REQUIRE(vb.count == box.count);  // same pixels, rotated
      REQUIRE(vb.x0 >= 9);
      REQUIRE(vb.y0 >= 13);
      REQUIRE(vb.x1 < 9 + Canvas::text_height(scale));
      REQUIRE(vb.y1 < 13 + Canvas::text_width(s, scale));
    }
    REQUIRE(Canvas::text_width("") == 0);
    REQUIRE(Canvas::text_width("ab", 1) == 11);
  }
}

TEST_CASE("plot colormaps: anchors at the ends, monotone luminance, distinct palette", "[plot]") {
  REQUIRE(plot::viridis(0.0) == Color{68, 1, 84});
  REQUIRE(plot::viridis(1.0) == Color{253, 231, 37});
  REQUIRE(plot::viridis(-3.0) == plot::viridis(0.0));  // clamped
  REQUIRE(plot::viridis(7.0) == plot::viridis(1.0));
  REQUIRE(plot::diverging(0.5) == Color{247, 247, 247});
  double prev = -1;
  for (int k = 0; k <= 100; ++k) {
    const double l = plot::luminance(plot::viridis(k / 100.0));
    CAPTURE(k);
    REQUIRE(l >= prev);
    prev = l;
  }
  for (int k = 0; k < 50; ++k) {  // diverging: rises to the neutral centre from both ends
    CAPTURE(k);
    REQUIRE(plot::luminance(plot::diverging(k / 100.0)) <=
            plot::luminance(plot::diverging((k + 1) / 100.0)));
    REQUIRE(plot::luminance(plot::diverging(1.0 - k / 100.0)) <=
            plot::luminance(plot::diverging(1.0 - (k + 1) / 100.0)));
  }
  REQUIRE(plot::diverging(0.0).b > plot::diverging(0.0).r);  // low end is blue
  REQUIRE(plot::diverging(1.0).r > plot::diverging(1.0).b);  // high end is red
  for (int i = 0; i < plot::kPaletteSize; ++i)
    for (int j = i + 1; j < plot::kPaletteSize; ++j) REQUIRE(plot::palette(i) != plot::palette(j));
  REQUIRE(plot::palette(plot::kPaletteSize + 3) == plot::palette(3));
  REQUIRE(plot::palette(-1) == plot::palette(plot::kPaletteSize - 1));
}

TEST_CASE("plot ticks: 1-2-5 steps, exact zero, labels", "[plot]") {
  using V = std::vector<double>;
  const V t01 = plot::nice_ticks(0, 1, 5);
  REQUIRE(t01.size() == 6);
  for (std::size_t k = 0; k < t01.size(); ++k) REQUIRE(t01[k] == Approx(0.2 * double(k)));
  REQUIRE(plot::nice_ticks(0, 1, 3) == V{0, 0.5, 1});
  REQUIRE(plot::nice_ticks(1, 0, 3) == V{0, 0.5, 1});  // reversed range
  const V t = plot::nice_ticks(-3.7, 12.2, 5);
  REQUIRE(t.front() >= -3.7);
  REQUIRE(t.back() <= 12.2);
  REQUIRE(std::find(t.begin(), t.end(), 0.0) != t.end());
  for (double s : {plot::nice_step(0.37, 4), plot::nice_step(1234, 5), plot::nice_step(3e-6, 3)}) {
    const double m = s / std::pow(10.0, std::floor(std::log10(s) + 1e-9));
    CAPTURE(s, m);
    REQUIRE((m == Approx(1) || m == Approx(2) || m == Approx(5)));
  }
  REQUIRE(plot::format_tick(0.4, 0.2) == "0.4");
  REQUIRE(plot::format_tick(0.15, 0.05) == "0.15");
  REQUIRE(plot::format_tick(20, 5) == "20");
  REQUIRE(plot::format_tick(1e-17, 0.2) == "0");
  REQUIRE(plot::log_ticks(1e-3, 1) == V{1e-3, 1e-2, 1e-1, 1});
  REQUIRE(plot::log_ticks(1, 10) == V{1, 2, 5, 10});
  REQUIRE(plot::format_log_tick(1e-3) == "0.001");
  REQUIRE(plot::format_log_tick(500) == "500");
  REQUIRE(plot::format_log_tick(1e-6) == "1e-06");
}

TEST_CASE("plot axes: data corners map to the plot rectangle's edges, y up", "[plot]") {
  plot::Axes ax(plot::Rect{20, 30, 420, 400});
  ax.set_limits(-1, 3, 10, 20).set_title("t").set_xlabel("x").set_ylabel("y");
  const plot::Rect p = ax.plot_rect();
  REQUIRE(p.x > 20);
  REQUIRE(p.y > 30);
  REQUIRE(p.x + p.w <= 20 + 420);
  REQUIRE(p.y + p.h <= 30 + 400);
  REQUIRE(ax.to_px(-1) == Approx(p.x - 0.5));
  REQUIRE(ax.to_px(3) == Approx(p.x + p.w - 0.5));
  REQUIRE(ax.to_py(10) == Approx(p.y + p.h - 0.5));  // y0 at the bottom
  REQUIRE(ax.to_py(20) == Approx(p.y - 0.5));        // y1 at the top
  const plot::Transform tr = ax.layout();
  REQUIRE(tr.x_at(tr.px(1.25)) == Approx(1.25));
  REQUIRE(tr.y_at(tr.py(13.5)) == Approx(13.5));

  ax.set_log_y().set_ylim(1, 100);
  REQUIRE(ax.to_py(10) == Approx(p.y - 0.5 + p.h / 2.0));
  ax.set_ylim(-1, 100);
  REQUIRE_THROWS_AS(ax.layout(), flowprior::config_error);

  plot::Axes eq(plot::Rect{0, 0, 500, 300});
  eq.set_limits(0, 1, 0, 1).set_equal_aspect();
  const plot::Limits l = eq.limits();
  const plot::Rect q = eq.plot_rect();
  REQUIRE((l.x1 - l.x0) / q.w == Approx((l.y1 - l.y0) / q.h));
  REQUIRE(l.y0 == Approx(0));
  REQUIRE(l.y1 == Approx(1));
  REQUIRE(l.x0 + l.x1 == Approx(1));  // widened about the centre

  plot::Axes autos;  // autoscale: 5 % padding around the data
  const double xs[] = {0, 10}, ys[] = {-1, 1};
  autos.scatter(xs, ys, 2, plot::colors::red);
  REQUIRE(autos.limits().x0 == Approx(-0.5));
  REQUIRE(autos.limits().y1 == Approx(1.1));

  REQUIRE_THROWS_AS(plot::Axes(plot::Rect{0, 0, 50, 400}), flowprior::config_error);
  REQUIRE_THROWS_AS(ax.set_xlim(1, 1), flowprior::config_error);
  REQUIRE_THROWS_AS(ax.scatter(nullptr, nullptr, 3, plot::colors::red), flowprior::config_error);
  REQUIRE_THROWS_AS(ax.heatmap(xs, 0, 1, 0, 1, 0, 1), flowprior::config_error);
  REQUIRE_THROWS_AS(plot::Axes().colorbar("no heatmap"), flowprior::config_error);
}

TEST_CASE("plot figure: a 2x2 figure saves a valid PNG, heatmap row 0 at the bottom", "[plot]") {
  plot::Figure fig(2, 2, 240, 200, "Figure");
  REQUIRE(fig.width() == 480);
  REQUIRE(fig.height() > 400);
  const double xs[] = {0, 1, 2, 3}, ys[] = {1, 0.5, 0.1, 0.01};
  fig.panel(0, 0).scatter(xs, ys, 4, plot::palette(0)).set_title("scatter");
  fig.panel(1, 0).line(xs, ys, 4, plot::palette(1)).set_log_y().set_grid();
  fig.panel(1, 0).legend({{"loss", plot::palette(1)}});
  const double values[] = {0, 0, 0, 1, 1, 1};  // 3 x 2 grid: row j = 1 (top) is 1
  plot::Axes& hm = fig.panel(0, 1);
  hm.heatmap(values, 3, 2, 0, 3, 0, 2).colorbar("v");
  fig.panel(1, 1).set_axis_visible(false).text(0.05, 0.9, "text only");
  REQUIRE_THROWS_AS(fig.panel(2, 0), flowprior::config_error);

  const Canvas cv = fig.render();
  const plot::Rect p = hm.plot_rect();
  REQUIRE(cv.get(p.x + p.w / 2, p.y + 2) == plot::viridis(1.0));        // top row: value 1
  REQUIRE(cv.get(p.x + p.w / 2, p.y + p.h - 3) == plot::viridis(0.0));  // bottom row: value 0

  TempDir tmp;
  fig.save(tmp / "fig.png");
  const Decoded d = decode_png(flowprior::io::read_file(tmp / "fig.png"));
  REQUIRE(d.width == fig.width());
  REQUIRE(d.height == fig.height());
  REQUIRE(std::equal(d.rgb.begin(), d.rgb.end(), cv.data()));  // save() == render()

  REQUIRE_THROWS_AS(plot::Figure(0, 1), flowprior::config_error);
  REQUIRE_THROWS_AS(plot::Figure(1, 1, 50, 50), flowprior::config_error);
  REQUIRE_THROWS_AS(plot::Figure(200, 1), flowprior::config_error);  // wider than kMaxImageSide
}

// Hostile data (docs/plotting.md "Hostile data"): far, huge and non-finite coordinates are
// clipped in floating point before any conversion to int, so no loop runs over pixels outside
// the canvas.
TEST_CASE("plot canvas: far, huge and non-finite coordinates are clipped, never looped over",
          "[plot][robust]") {
  const Color bg = plot::colors::white, ink = plot::colors::blue;
  auto cv = std::make_shared<Canvas>(40, 30, bg);
  // Nothing of these shapes is on the canvas: pixel coordinates far beyond int, or non-finite.
  REQUIRE(finishes_within(kRenderSeconds, [cv, ink] {
    for (double far : {2e11, -2e11, 1e300, -1e300, kMax, -kMax, kInf, -kInf, kNaN}) {
      cv->disc(far, 10, 2.0, ink);
      cv->disc(10, far, 2.0, ink);
      cv->disc(far, far, 3.0, ink);
      cv->circle(far, 12, 4.0, ink);
      cv->circle(-far, -far, 4.0, ink, 2.0);
      cv->line(far, 5, far, 25, ink, 2.0);  // a vertical line far right (or left) of the canvas
      cv->line(far, far, far, -far, ink);
    }
    cv->line(5e11, -5e11, 5e11 + 1, 5e11, ink);  // passes far from the canvas
    cv->line(kMax, -kMax, -kMax, -kMax, ink);    // below it, with an overflowing length
    // Integer rectangles and text near the ends of int.
    const int big = std::numeric_limits<int>::max(), small = std::numeric_limits<int>::min();
    cv->fill_rect(big - 2, 0, 10, 10, ink);
    cv->fill_rect(small, small, big, big, ink);
    cv->rect(big - 5, big - 5, big, big, ink, big);
    cv->text(big - 3, 5, "far text", ink);
    cv->text(small, 5, "far text", ink);
    cv->text(5, big - 3, "far text", ink, big);
    cv->text_vertical(5, small + 3, "far text", ink, big / 2);
    cv->set_clip(big - 1, big - 1, big, big);
    cv->fill_rect(0, 0, 40, 30, ink);
    cv->reset_clip();
  }));
  REQUIRE(ink_box(*cv, bg).count == 0);

  // A segment from inside to far outside draws exactly its visible part: as a short one would.
  for (double far : {2e11, 1e300, kMax}) {
    CAPTURE(far);
    auto a = std::make_shared<Canvas>(40, 30, bg), b = std::make_shared<Canvas>(40, 30, bg);
    REQUIRE(finishes_within(kRenderSeconds, [a, b, far, ink] {
      a->line(5, 15, far, 15, ink, 3.0);
      a->line(20, 2, 20, -far, ink, 1.0);
      a->line(-far, -far, 10, 10, ink, 1.0);
      b->line(5, 15, 100, 15, ink, 3.0);
      b->line(20, 2, 20, -100, ink, 1.0);
      b->line(-100, -100, 10, 10, ink, 1.0);
    }));
    REQUIRE(a->get(39, 15) == ink);
    REQUIRE(a->get(20, 0) == ink);
    REQUIRE(a->get(0, 0) == ink);
    REQUIRE(max_channel_diff(*a, *b) <= 1);
  }
  // Crossing the whole canvas from far outside on both sides: every column of the row (and
  // every row of the column), however far the ends.
  for (double far : {1e12, 1e300, kMax}) {
    CAPTURE(far);
    auto h = std::make_shared<Canvas>(40, 30, bg), v = std::make_shared<Canvas>(40, 30, bg);
    REQUIRE(finishes_within(kRenderSeconds, [h, v, far, ink] {
      h->line(-far, 7, far, 7, ink, 1.0);
      v->line(9, far, 9, -far, ink, 1.0);
    }));
    const Box hb = ink_box(*h, bg), vb = ink_box(*v, bg);
    REQUIRE(hb.count == 40);
    REQUIRE(hb.y0 == 7);
    REQUIRE(hb.y1 == 7);
    REQUIRE(vb.count == 30);
    REQUIRE(vb.x0 == 9);
    REQUIRE(vb.x1 == 9);
  }

  // Huge markers and widths cover the canvas (within the clip rectangle), bounded by its size.
  auto w = std::make_shared<Canvas>(40, 30, bg);
  REQUIRE(finishes_within(kRenderSeconds, [w, ink] {
    w->set_clip(10, 10, 5, 5);
    w->disc(0, 0, 1e300, ink);
    w->circle(0, 0, 1e300, ink, kInf);
    w->line(0, 0, 1, 1, ink, 1e300);
    w->reset_clip();
  }));
  const Box wb = ink_box(*w, bg);
  REQUIRE(wb.count == 25);
  REQUIRE(wb.x0 == 10);
  REQUIRE(wb.y1 == 14);

  // Colour helpers map NaN like 0 rather than converting it.
  REQUIRE(plot::mix(plot::colors::black, plot::colors::white, kNaN) == plot::colors::black);
  REQUIRE(plot::grayscale(kNaN) == plot::colors::black);
  REQUIRE(plot::viridis(kNaN) == plot::viridis(0));
}

TEST_CASE("plot axes: a scatter point at 1e9 with limits -1..1 is clipped, not looped over",
          "[plot][robust]") {
  auto fig = std::make_shared<plot::Figure>(2, 1, 240, 200, "far points");
  const double xs[] = {0.5, 1e9, -1e9, 0.5, 1e300, -kMax, kNaN, kInf, -kInf, 0.25, kDenorm};
  const double ys[] = {0.5, 0.5, 1e9, 1e300, 0.0, 0.0, 0.0, 0.5, kNaN, -0.5, kDenorm};
  const int n = 11;
  plot::Axes& sc = fig->panel(0, 0);
  sc.set_limits(-1, 1, -1, 1).scatter(xs, ys, n, plot::colors::red, 3.0, 1.0);
  sc.text(1e9, 0, "far away").text(kNaN, kInf, "nowhere");
  plot::Axes& ln = fig->panel(1, 0);
  ln.set_limits(-1, 1, -1, 1).line(xs, ys, n, plot::colors::red, 2.0).set_grid();
  auto out = std::make_shared<std::unique_ptr<Canvas>>();
  REQUIRE(finishes_within(kRenderSeconds,
                          [fig, out] { *out = std::make_unique<Canvas>(fig->render()); }));
  const std::unique_ptr<Canvas>& cv = *out;
  // The near point is drawn, at its place.
  REQUIRE(cv->get(static_cast<int>(std::lround(sc.to_px(0.5))),
                  static_cast<int>(std::lround(sc.to_py(0.5)))) == plot::colors::red);
  // The line from (0.5, 0.5) towards (1e9, 0.5) is drawn up to the right edge of the panel...
  const plot::Rect p = ln.plot_rect();
  for (int x = static_cast<int>(std::lround(ln.to_px(0.5))); x < p.x + p.w; ++x) {
    CAPTURE(x);
    REQUIRE(cv->get(x, static_cast<int>(std::lround(ln.to_py(0.5)))) == plot::colors::red);
  }
  // ... and the segment from (1e300, 0) to (-DBL_MAX, 0) crosses the whole panel at y = 0...
  const int y0 = static_cast<int>(std::lround(ln.to_py(0)));
  for (int x = p.x; x < p.x + p.w; ++x) {
    CAPTURE(x);
    REQUIRE(cv->get(x, y0) == plot::colors::red);
  }
  // ... and nothing of either panel spills out of its plot area (no pixel right of it is red).
  for (int y = 0; y < cv->height(); ++y) {
    CAPTURE(y);
    REQUIRE(cv->get(p.x + p.w + 1, y) != plot::colors::red);
  }
  TempDir tmp;
  fig->save(tmp / "far.png");
  const Decoded d = decode_png(flowprior::io::read_file(tmp / "far.png"));
  REQUIRE(d.width == fig->width());
  REQUIRE(std::equal(d.rgb.begin(), d.rgb.end(), cv->data()));
}

TEST_CASE("plot axes: autoscale of hostile data gives finite distinct limits and renders",
          "[plot][robust]") {
  using V = std::vector<double>;
  const std::vector<std::pair<V, V>> cases = {
      {{}, {}},
      {{kNaN, kInf, -kInf}, {kInf, kNaN, 1}},
      {{3}, {-2}},
      {{1e300}, {1e300}},
      {{-kMax}, {kMax}},
      {{kMax, -kMax}, {-kMax, kMax}},
      {{1e300, -1e300, 0}, {0, 1e300, -1e300}},
      {{1e16, 1e16 + 2, 1e16 + 4}, {-1e16, -1e16, -1e16 - 2}},
      {{0, kDenorm}, {kDenorm, 2 * kDenorm}},
      {{kDenorm}, {-kDenorm}},
      {{1, 1, 1}, {5, 5, 5}},
  };
  for (std::size_t k = 0; k < cases.size(); ++k) {
    for (int mode = 0; mode < 3; ++mode) {  // plain, equal aspect, log y
      CAPTURE(k, mode);
      const V& x = cases[k].first;
      const V& y = cases[k].second;
      auto fig = std::make_shared<plot::Figure>(1, 1, 240, 200);
      plot::Axes& ax = fig->panel(0, 0);
      ax.scatter(x.data(), y.data(), int(x.size()), plot::colors::red)
          .line(x.data(), y.data(), int(x.size()), plot::colors::blue)
          .set_grid()
          .set_title("hostile")
          .set_equal_aspect(mode == 1)
          .set_log_y(mode == 2);
      const plot::Limits l = ax.limits();
      CAPTURE(l.x0, l.x1, l.y0, l.y1);
      REQUIRE(std::isfinite(l.x0));
      REQUIRE(std::isfinite(l.x1));
      REQUIRE(std::isfinite(l.y0));
      REQUIRE(std::isfinite(l.y1));
      REQUIRE(l.x0 < l.x1);
      REQUIRE(l.y0 < l.y1);
      // The data corners map to distinct finite pixels.
      REQUIRE(std::isfinite(ax.to_px(l.x0)));
      REQUIRE(ax.to_px(l.x0) < ax.to_px(l.x1));
      REQUIRE(ax.to_py(l.y0) > ax.to_py(l.y1));
      REQUIRE(finishes_within(kRenderSeconds, [fig] { (void)fig->render(); }));
    }
  }
  // Explicit limits at the ends of the double range still map monotonically.
  plot::Axes wide;
  wide.set_limits(-kMax, kMax, -kMax, kMax);
  REQUIRE(wide.to_px(-kMax) < wide.to_px(0));
  REQUIRE(wide.to_px(0) < wide.to_px(kMax));
  REQUIRE(wide.to_py(0) == Approx(wide.plot_rect().y - 0.5 + wide.plot_rect().h / 2.0));
}

TEST_CASE("plot axes: heatmaps with NaN, inf and infinite colour limits stay in the colour table",
          "[plot][robust]") {
  std::set<std::array<std::uint8_t, 3>> table;
  for (int k = 0; k < 1024; ++k) {
    const Color c = plot::viridis(k / 1023.0);
    table.insert({c.r, c.g, c.b});
  }
  const double v[] = {kNaN, kInf, -kInf, 1e300, -1e300, kMax, -kMax, 0, kDenorm};
  const double lims[][2] = {{kNaN, kNaN},  {-kInf, kInf},  {kInf, kInf},  {-kMax, kMax},
                            {kMax, -kMax}, {1e300, 1e300}, {kNaN, -kInf}, {0, kDenorm}};
  for (const auto& lim : lims) {
    CAPTURE(lim[0], lim[1]);
    auto fig = std::make_shared<plot::Figure>(1, 1, 240, 200);
    plot::Axes& ax = fig->panel(0, 0);
    ax.heatmap(v, 3, 3, 0, 3, 0, 3, plot::viridis, lim[0], lim[1]);
    REQUIRE_NOTHROW(ax.colorbar("v"));
    auto out = std::make_shared<std::unique_ptr<Canvas>>();
    REQUIRE(finishes_within(kRenderSeconds,
                            [fig, out] { *out = std::make_unique<Canvas>(fig->render()); }));
    const std::unique_ptr<Canvas>& cv = *out;
    const plot::Rect p = ax.plot_rect();
    for (int y = p.y; y < p.y + p.h; y += 3)
      for (int x = p.x; x < p.x + p.w; x += 3) {
        const Color c = cv->get(x, y);
        CAPTURE(x, y);
        REQUIRE((c == plot::colors::white || table.count({c.r, c.g, c.b}) == 1));
      }
  }
  // Constant data, however large, still gets a colour bar.
  const double same[] = {1e300, 1e300, 1e300, 1e300};
  plot::Axes ax;
  REQUIRE_NOTHROW(ax.heatmap(same, 2, 2, 0, 1, 0, 1).colorbar());
}

TEST_CASE("plot ticks: degenerate, denormal and non-finite ranges give few finite ticks",
          "[plot][robust]") {
  const double ranges[][2] = {{1e16, 1e16 + 4}, {0, kDenorm}, {-kMax, kMax}, {kMax, kMax},
                              {1e300, -1e300},  {kNaN, 1},    {0, kInf},     {-1e-310, 1e-310}};
  for (const auto& r : ranges) {
    CAPTURE(r[0], r[1]);
    const std::vector<double> t = plot::nice_ticks(r[0], r[1], 5);
    REQUIRE(t.size() <= 20);
    for (std::size_t k = 0; k < t.size(); ++k) {
      REQUIRE(std::isfinite(t[k]));
      if (k > 0) REQUIRE(t[k] > t[k - 1]);
    }
  }
  const std::vector<double> lt = plot::log_ticks(kDenorm, kMax);
  REQUIRE(!lt.empty());
  REQUIRE(lt.size() <= 20);
  REQUIRE(plot::format_tick(kNaN, 0.5) == "nan");
  REQUIRE(plot::format_tick(kNaN, kInf) == "nan");  // no decimals computed from log10(inf)
  REQUIRE(plot::format_tick(-kInf, 0.5) == "-inf");
  for (double v : {0.0, -1.0, kNaN, kInf, kDenorm}) {
    CAPTURE(v);
    REQUIRE(!plot::format_log_tick(v).empty());
  }
}

TEST_CASE("plot toy2d figures: a diverged run's data still gives four valid PNGs",
          "[plot][robust]") {
  namespace pipeline = flowprior::pipeline;
  auto r = std::make_shared<pipeline::Toy2dResult>();
  r->target = "two_moons";
  r->x0 = -2, r->x1 = 2, r->y0 = -1.5, r->y1 = 1.5;
  r->grid = 4;
  r->grid_align_trained.assign(16, 1e300);  // constant and huge: a degenerate colour range
  r->grid_align_trained[3] = kNaN;
  r->grid_nll.assign(16, kInf);
  r->grid_nll[5] = -kMax;
  r->target_samples = Eigen::MatrixXd::Random(2, 50);
  r->prior_samples = Eigen::MatrixXd::Constant(2, 50, 1e9);
  r->prior_samples(0, 0) = kNaN;
  r->latents_start = Eigen::MatrixXd::Random(2, 30);
  r->latents_trained = Eigen::MatrixXd::Constant(2, 30, -1e300);
  r->latents_trained(1, 2) = kInf;
  r->train_step = {0, 1, 2, 3};
  r->train_loss = {1, 1e300, kInf, kNaN};
  r->track_step = {0, 10, 20};
  r->track_loss_trained = {1, 1e9, kMax};
  r->track_nll_trained = {-kMax, kNaN, 1e300};
  TempDir tmp;
  const std::string dir = tmp.dir.string();
  auto paths = std::make_shared<std::vector<std::string>>();
  REQUIRE(finishes_within(kRenderSeconds,
                          [r, dir, paths] { *paths = pipeline::write_toy2d_figures(*r, dir); }));
  REQUIRE(paths->size() == 4);
  for (const std::string& path : *paths) {
    CAPTURE(path);
    const Decoded d = decode_png(flowprior::io::read_file(path));
    REQUIRE(d.width > 0);
  }
}

#endif  // FLOWPRIOR_HAS_PLOT
