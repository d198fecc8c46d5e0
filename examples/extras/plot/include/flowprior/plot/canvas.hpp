/// @file
/// An RGB raster for figures: colours, a categorical palette, perceptual colormaps, and drawing
/// primitives (rectangles, anti-aliased lines and discs, alpha blending, a built-in bitmap font).
/// See docs/plotting.md. Coordinates are pixels, x to the right and y **down**, origin at the
/// top-left corner; the integer point (x, y) is the centre of pixel (x, y).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/plot/png.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace plot {

/// An 8-bit sRGB colour.
struct Color {
  std::uint8_t r, g, b;
};
inline constexpr bool operator==(Color a, Color b) {
  return a.r == b.r && a.g == b.g && a.b == b.b;
}
inline constexpr bool operator!=(Color a, Color b) { return !(a == b); }

/// Named colours. The saturated ones are the first entries of palette().
namespace colors {
inline constexpr Color white{255, 255, 255};
inline constexpr Color black{0, 0, 0};
inline constexpr Color dark_gray{64, 64, 64};
inline constexpr Color gray{128, 128, 128};
inline constexpr Color light_gray{220, 220, 220};
inline constexpr Color blue{31, 119, 180};
inline constexpr Color orange{255, 127, 14};
inline constexpr Color green{44, 160, 44};
inline constexpr Color red{214, 39, 40};
inline constexpr Color purple{148, 103, 189};
}  // namespace colors

/// Number of distinct colours of palette().
inline constexpr int kPaletteSize = 10;

/// Categorical colour i (cycled modulo kPaletteSize; negative i counts from the end): the ten
/// "Tableau 10" hues, chosen to stay distinguishable from each other and on white.
inline Color palette(int i) {
  static constexpr Color kTable[kPaletteSize] = {
      {31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
      {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
  const int k = ((i % kPaletteSize) + kPaletteSize) % kPaletteSize;
  return kTable[k];
}

/// Linear interpolation between two colours, t in [0, 1] (clamped; NaN maps like 0).
inline Color mix(Color a, Color b, double t) {
  t = t > 0.0 ? std::min(t, 1.0) : 0.0;
  auto ch = [t](std::uint8_t u, std::uint8_t v) {
    return static_cast<std::uint8_t>(std::lround(u + (v - u) * t));
  };
  return {ch(a.r, b.r), ch(a.g, b.g), ch(a.b, b.b)};
}

/// Relative luminance in [0, 1] (sRGB decoded to linear light, Rec. 709 weights).
inline double luminance(Color c) {
  auto lin = [](std::uint8_t u) {
    const double s = u / 255.0;
    return s <= 0.04045 ? s / 12.92 : std::pow((s + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
}

/// A colormap sends t in [0, 1] to a colour. A plain function pointer: it is chosen once per
/// heatmap, never per pixel.
using Colormap = Color (*)(double t);

namespace detail {
/// Piecewise-linear colormap through n equally spaced anchors; t is clamped, NaN maps like 0.
inline Color interpolate_anchors(const Color* anchors, int n, double t) {
  if (!(t > 0.0)) return anchors[0];
  if (t >= 1.0) return anchors[n - 1];
  const double u = t * (n - 1);
  const int k = std::min(static_cast<int>(u), n - 2);
  return mix(anchors[k], anchors[k + 1], u - k);
}
}  // namespace detail

/// Viridis (van der Walt and Smith, matplotlib's default): perceptually uniform, luminance
/// increasing from dark purple (t = 0) to yellow (t = 1), readable in grey and by colour-blind
/// readers. Nine published anchors at t = 0, 1/8, ..., 1, linearly interpolated.
inline Color viridis(double t) {
  static constexpr Color kAnchors[9] = {{68, 1, 84},    {71, 45, 123},  {59, 82, 139},
                                        {44, 114, 142}, {33, 144, 140}, {39, 173, 129},
                                        {93, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  return detail::interpolate_anchors(kAnchors, 9, t);
}

/// Diverging blue - white - red (ColorBrewer RdBu, 11 classes, reversed so that low is blue):
/// for signed quantities centred on zero, e.g. a velocity component or an error. t = 0.5 is
/// the light neutral; luminance rises from either end towards it.
inline Color diverging(double t) {
  static constexpr Color kAnchors[11] = {{5, 48, 97},     {33, 102, 172},  {67, 147, 195},
                                         {146, 197, 222}, {209, 229, 240}, {247, 247, 247},
                                         {253, 219, 199}, {244, 165, 130}, {214, 96, 77},
                                         {178, 24, 43},   {103, 0, 31}};
  return detail::interpolate_anchors(kAnchors, 11, t);
}

/// Black (t = 0) to white (t = 1).
inline Color grayscale(double t) { return mix(colors::black, colors::white, t); }

namespace detail {
/// The built-in font: printable ASCII 32..126, one 5x8 bitmap per character (7 rows above the
/// baseline plus one descender row), drawn for this project. Each glyph is a 64-bit word whose
/// most significant byte is the top row; within a row bit 4 is the leftmost column.
// clang-format off
inline constexpr std::uint64_t kFont[95] = {
    0x0000000000000000ull, 0x0404040404000400ull, 0x0a0a0a0000000000ull,     //   ! "
    0x0a0a1f0a1f0a0a00ull, 0x040f140e051e0400ull, 0x1819020408130300ull,     // # $ %
    0x0c12140815120d00ull, 0x0404080000000000ull, 0x0204080808040200ull,     // & ' (
    0x0804020202040800ull, 0x0004150e15040000ull, 0x0004041f04040000ull,     // ) * +
    0x00000000000c0408ull, 0x0000001f00000000ull, 0x00000000000c0c00ull,     // , - .
    0x0001020408100000ull, 0x0e11131519110e00ull, 0x040c040404040e00ull,     // / 0 1
    0x0e11010204081f00ull, 0x1f02040201110e00ull, 0x02060a121f020200ull,     // 2 3 4
    0x1f101e0101110e00ull, 0x0608101e11110e00ull, 0x1f01020408080800ull,     // 5 6 7
    0x0e11110e11110e00ull, 0x0e11110f01020c00ull, 0x000c0c000c0c0000ull,     // 8 9 :
    0x000c0c000c0c0408ull, 0x0204081008040200ull, 0x00001f001f000000ull,     // ; < =
    0x0804020102040800ull, 0x0e11010204000400ull, 0x0e11010d15150e00ull,     // > ? @
    0x0e11111f11111100ull, 0x1e11111e11111e00ull, 0x0e11101010110e00ull,     // A B C
    0x1c12111111121c00ull, 0x1f10101e10101f00ull, 0x1f10101e10101000ull,     // D E F
    0x0e11101711110f00ull, 0x1111111f11111100ull, 0x0e04040404040e00ull,     // G H I
    0x0702020202120c00ull, 0x1112141814121100ull, 0x1010101010101f00ull,     // J K L
    0x111b151511111100ull, 0x1111191513111100ull, 0x0e11111111110e00ull,     // M N O
    0x1e11111e10101000ull, 0x0e11111115120d00ull, 0x1e11111e14121100ull,     // P Q R
    0x0f10100e01011e00ull, 0x1f04040404040400ull, 0x1111111111110e00ull,     // S T U
    0x11111111110a0400ull, 0x1111111515150a00ull, 0x11110a040a111100ull,     // V W X
    0x11110a0404040400ull, 0x1f01020408101f00ull, 0x0e08080808080e00ull,     // Y Z [
    0x0010080402010000ull, 0x0e02020202020e00ull, 0x040a110000000000ull,     // \ ] ^
    0x000000000000001full, 0x0804020000000000ull, 0x00000e010f110f00ull,     // _ ` a
    0x1010161911111e00ull, 0x00000e1010110e00ull, 0x01010d1311110f00ull,     // b c d
    0x00000e111f100e00ull, 0x0609081c08080800ull, 0x00000f11110f010eull,     // e f g
    0x1010161911111100ull, 0x04000c0404040e00ull, 0x020006020202120cull,     // h i j
    0x1010121418141200ull, 0x0c04040404040e00ull, 0x00001a1515111100ull,     // k l m
    0x0000161911111100ull, 0x00000e1111110e00ull, 0x00001e11111e1010ull,     // n o p
    0x00000f11110f0101ull, 0x0000161910101000ull, 0x00000f100e011e00ull,     // q r s
    0x08081c0808090600ull, 0x0000111111130d00ull, 0x00001111110a0400ull,     // t u v
    0x0000111115150a00ull, 0x0000110a040a1100ull, 0x00001111110f010eull,     // w x y
    0x00001f0204081f00ull, 0x0204040804040200ull, 0x0404040404040400ull,     // z { |
    0x0804040204040800ull, 0x0000081502000000ull,                            // } ~
};
// clang-format on

/// Glyph bits of character ch; characters outside 32..126 draw as '?'.
inline std::uint64_t glyph(char ch) {
  const int code = static_cast<unsigned char>(ch);
  return kFont[(code >= 32 && code <= 126) ? code - 32 : '?' - 32];
}
inline bool glyph_bit(std::uint64_t g, int col, int row) {
  return ((g >> (8 * (7 - row))) >> (4 - col)) & 1u;
}
}  // namespace detail

/// An RGB raster, rows top to bottom. Every drawing call is clipped to the canvas and to the
/// current clip rectangle; drawing outside is silently ignored (a marker half outside a panel
/// is drawn in part), so callers never need to pre-clip.
///
/// Any coordinates are safe (docs/plotting.md "Hostile data"): shapes are clipped in floating point
/// before a coordinate becomes an int, so far-away points (1e300, beyond int) are never
/// converted with undefined behaviour and no loop runs over pixels outside the clip rectangle;
/// shapes with a non-finite coordinate are skipped; integer rectangles and text positions are
/// added up in 64 bits, so values near INT_MAX cannot overflow.
class Canvas {
 public:
  /// Glyph cell of the built-in font at scale 1: 6 pixels advance, 8 rows (7 + descender).
  static constexpr int kGlyphAdvance = 6;
  static constexpr int kGlyphHeight = 8;
  /// Text scales are clamped to 1..kMaxTextScale: one font pixel then covers any canvas.
  static constexpr int kMaxTextScale = kMaxImageSide;

  /// @pre 1 <= width, height <= kMaxImageSide, else config_error.
  explicit Canvas(int width, int height, Color background = colors::white)
      : width_(width), height_(height) {
    detail::check_image(width, height, this, "Canvas");
    pixels_.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
    reset_clip();
    clear(background);
  }

  int width() const { return width_; }
  int height() const { return height_; }
  /// width*height*3 bytes: row-major, top row first, channels r, g, b (what write_png takes).
  const std::uint8_t* data() const { return pixels_.data(); }

  /// Colour of pixel (x, y). @throws value_error outside the canvas.
  Color get(int x, int y) const {
    if (x < 0 || y < 0 || x >= width_ || y >= height_)
      flowprior::detail::raise<value_error>("[flowprior.value] Canvas::get: pixel (" +
                                            std::to_string(x) + ", " + std::to_string(y) +
                                            ") is outside the canvas");
    const std::uint8_t* p = &pixels_[index(x, y)];
    return {p[0], p[1], p[2]};
  }

  /// Fills the whole canvas (ignoring the clip rectangle).
  void clear(Color c) {
    for (std::size_t i = 0; i < pixels_.size(); i += 3) {
      pixels_[i] = c.r;
      pixels_[i + 1] = c.g;
      pixels_[i + 2] = c.b;
    }
  }

  /// Restricts drawing to the rectangle [x, x+w) x [y, y+h) (intersected with the canvas).
  void set_clip(int x, int y, int w, int h) {
    clip_x0_ = static_cast<int>(std::clamp<long long>(x, 0, width_));
    clip_y0_ = static_cast<int>(std::clamp<long long>(y, 0, height_));
    clip_x1_ = static_cast<int>(std::clamp<long long>(x + std::max(0LL, w + 0LL), 0, width_));
    clip_y1_ = static_cast<int>(std::clamp<long long>(y + std::max(0LL, h + 0LL), 0, height_));
  }
  /// Drawing may touch the whole canvas again.
  void reset_clip() { set_clip(0, 0, width_, height_); }

  /// Sets pixel (x, y) to c.
  void set(int x, int y, Color c) {
    if (!inside(x, y)) return;
    std::uint8_t* p = &pixels_[index(x, y)];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }

  /// Blends c over pixel (x, y) with opacity alpha (clamped to [0, 1]): out = a c + (1 - a) old.
  void blend(int x, int y, Color c, double alpha) {
    if (!inside(x, y) || !(alpha > 0.0)) return;
    if (alpha >= 1.0) return set(x, y, c);
    std::uint8_t* p = &pixels_[index(x, y)];
    auto ch = [alpha](std::uint8_t old, std::uint8_t v) {
      return static_cast<std::uint8_t>(std::lround(old + (v - old) * alpha));
    };
    p[0] = ch(p[0], c.r);
    p[1] = ch(p[1], c.g);
    p[2] = ch(p[2], c.b);
  }

  /// Fills the pixels [x, x+w) x [y, y+h), optionally translucent.
  void fill_rect(int x, int y, int w, int h, Color c, double alpha = 1.0) {
    fill_box(x, y, x + static_cast<long long>(w), y + static_cast<long long>(h), c, alpha);
  }

  /// Outline of the rectangle [x, x+w) x [y, y+h), `thickness` pixels drawn inwards.
  void rect(int x, int y, int w, int h, Color c, int thickness = 1) {
    const long long t = std::max(1, std::min(thickness, std::min(w, h) / 2 + 1));
    const long long x1 = x + static_cast<long long>(w), y1 = y + static_cast<long long>(h);
    fill_box(x, y, x1, y + t, c, 1.0);
    fill_box(x, y1 - t, x1, y1, c, 1.0);
    fill_box(x, y + t, x + t, y1 - t, c, 1.0);
    fill_box(x1 - t, y + t, x1, y1 - t, c, 1.0);
  }

  /// Anti-aliased segment from (x0, y0) to (x1, y1) with round caps. A pixel is covered by
  /// clamp(width/2 + 1/2 - d, 0, 1), d the distance of its centre to the segment, so a width-1
  /// line through integer points is exactly one pixel wide and both endpoints are fully set.
  /// A segment with a non-finite end is skipped; one reaching far outside is first clipped (in
  /// floating point) to the clip rectangle grown by width/2 + 1, which changes no pixel.
  void line(double x0, double y0, double x1, double y1, Color c, double width = 1.0,
            double alpha = 1.0) {
    if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1))
      return;
    if (std::isnan(width)) return;
    const double r = std::max(width, 0.0) / 2.0;
    const double pad = r + 1.0;
    if (!clip_segment(x0, y0, x1, y1, pad)) return;
    const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for_each_in_box(std::min(x0, x1) - pad, std::min(y0, y1) - pad, std::max(x0, x1) + pad,
                    std::max(y0, y1) + pad, [&](int i, int j) {
                      double s = len2 > 0 ? ((i - x0) * dx + (j - y0) * dy) / len2 : 0.0;
                      s = std::clamp(s, 0.0, 1.0);
                      const double d = std::hypot(i - (x0 + s * dx), j - (y0 + s * dy));
                      const double cover = std::clamp(r + 0.5 - d, 0.0, 1.0);
                      if (cover > 0) blend(i, j, c, alpha * cover);
                    });
  }

  /// Anti-aliased filled disc (scatter markers): coverage clamp(radius + 1/2 - d, 0, 1).
  void disc(double cx, double cy, double radius, Color c, double alpha = 1.0) {
    if (!std::isfinite(cx) || !std::isfinite(cy) || !(radius > 0)) return;
    const double pad = radius + 1.0;
    for_each_in_box(cx - pad, cy - pad, cx + pad, cy + pad, [&](int i, int j) {
      const double cover = std::clamp(radius + 0.5 - std::hypot(i - cx, j - cy), 0.0, 1.0);
      if (cover > 0) blend(i, j, c, alpha * cover);
    });
  }

  /// Anti-aliased ring of the given radius and stroke width.
  void circle(double cx, double cy, double radius, Color c, double width = 1.0,
              double alpha = 1.0) {
    if (!std::isfinite(cx) || !std::isfinite(cy) || !(radius > 0)) return;
    const double r = std::max(width, 0.0) / 2.0, pad = radius + r + 1.0;
    for_each_in_box(cx - pad, cy - pad, cx + pad, cy + pad, [&](int i, int j) {
      const double d = std::abs(std::hypot(i - cx, j - cy) - radius);
      const double cover = std::clamp(r + 0.5 - d, 0.0, 1.0);
      if (cover > 0) blend(i, j, c, alpha * cover);
    });
  }

  /// Pixel width of s in the built-in font: 6*scale per character, minus the trailing gap
  /// (saturated at kMaxTextExtent for absurdly long strings, so callers' sums cannot overflow).
  static int text_width(const std::string& s, int scale = 1) {
    return static_cast<int>(std::min<long long>(text_extent(s, scale), kMaxTextExtent));
  }
  /// Pixel height of a line of text (cap height plus the descender row).
  static int text_height(int scale = 1) {
    return kGlyphHeight * static_cast<int>(clamp_scale(scale));
  }

  /// Draws s with its top-left corner at (x, y), each font pixel a scale x scale block. The text
  /// occupies [x, x + text_width) x [y, y + text_height). No line breaks; characters outside
  /// printable ASCII draw as '?'. Glyphs outside the clip rectangle are skipped.
  void text(int x, int y, const std::string& s, Color c, int scale = 1) {
    const long long sc = clamp_scale(scale), advance = kGlyphAdvance * sc;
    if (y >= clip_y1_ || y + kGlyphHeight * sc <= clip_y0_) return;
    for (std::size_t k = 0; k < s.size(); ++k) {
      const long long gx = x + static_cast<long long>(k) * advance;
      if (gx >= clip_x1_) break;
      if (gx + advance <= clip_x0_) continue;
      const std::uint64_t g = detail::glyph(s[k]);
      for (int row = 0; row < kGlyphHeight; ++row)
        for (int col = 0; col < 5; ++col)
          if (detail::glyph_bit(g, col, row)) {
            const long long px = gx + col * sc, py = y + row * sc;
            fill_box(px, py, px + sc, py + sc, c, 1.0);
          }
    }
  }

  /// Draws s rotated a quarter turn counter-clockwise (reading bottom to top, as a y-axis label).
  /// It occupies [x, x + text_height) x [y, y + text_width): (x, y) is that box's top-left.
  void text_vertical(int x, int y, const std::string& s, Color c, int scale = 1) {
    const long long sc = clamp_scale(scale), advance = kGlyphAdvance * sc;
    if (x >= clip_x1_ || x + kGlyphHeight * sc <= clip_x0_) return;
    const long long bottom = y + text_extent(s, scale) - 1;
    for (std::size_t k = 0; k < s.size(); ++k) {
      const long long gy = bottom - static_cast<long long>(k) * advance;
      if (gy < clip_y0_) break;
      if (gy - advance >= clip_y1_) continue;
      const std::uint64_t g = detail::glyph(s[k]);
      for (int row = 0; row < kGlyphHeight; ++row)
        for (int col = 0; col < 5; ++col)
          if (detail::glyph_bit(g, col, row)) {
            const long long px = x + row * sc, py = gy - (col + 1) * sc + 1;
            fill_box(px, py, px + sc, py + sc, c, 1.0);
          }
    }
  }

  /// Writes the canvas as a PNG file (atomically). @throws io_error naming path.
  void save_png(const std::string& path) const { write_png(path, width_, height_, data()); }

 private:
  std::size_t index(int x, int y) const {
    return (static_cast<std::size_t>(y) * static_cast<std::size_t>(width_) +
            static_cast<std::size_t>(x)) *
           3;
  }
  bool inside(int x, int y) const {
    return x >= clip_x0_ && x < clip_x1_ && y >= clip_y0_ && y < clip_y1_;
  }
  /// Largest text_width(): far beyond any canvas, far below INT_MAX.
  static constexpr long long kMaxTextExtent = 1LL << 30;
  static long long clamp_scale(int scale) { return std::clamp(scale, 1, kMaxTextScale); }
  /// Exact pixel width of s (64 bits: strings are far shorter than 2^33 characters).
  static long long text_extent(const std::string& s, int scale) {
    const long long sc = clamp_scale(scale);
    return s.empty() ? 0 : static_cast<long long>(s.size()) * kGlyphAdvance * sc - sc;
  }

  /// Fills the pixels [x0, x1) x [y0, y1), clipped; 64-bit bounds, so callers may add sizes to
  /// any int coordinates without overflow.
  void fill_box(long long x0, long long y0, long long x1, long long y1, Color c, double alpha) {
    const int i0 = static_cast<int>(std::clamp<long long>(x0, clip_x0_, clip_x1_));
    const int i1 = static_cast<int>(std::clamp<long long>(x1, clip_x0_, clip_x1_));
    const int j0 = static_cast<int>(std::clamp<long long>(y0, clip_y0_, clip_y1_));
    const int j1 = static_cast<int>(std::clamp<long long>(y1, clip_y0_, clip_y1_));
    for (int j = j0; j < j1; ++j)
      for (int i = i0; i < i1; ++i) blend(i, j, c, alpha);
  }

  /// Calls f(i, j) for every pixel centre in the box [xa, xb] x [ya, yb], clipped. The bounds
  /// are clamped to the clip rectangle in floating point before they become ints: far bounds
  /// (beyond int) are never converted, and a box with a NaN bound is empty.
  template <class F>
  void for_each_in_box(double xa, double ya, double xb, double yb, F&& f) {
    const double fx0 = std::floor(xa), fx1 = std::ceil(xb);
    const double fy0 = std::floor(ya), fy1 = std::ceil(yb);
    if (!(fx0 <= clip_x1_ - 1 && fx1 >= clip_x0_ && fy0 <= clip_y1_ - 1 && fy1 >= clip_y0_))
      return;  // disjoint from the clip rectangle, or NaN
    const int i0 = fx0 > clip_x0_ ? static_cast<int>(fx0) : clip_x0_;
    const int i1 = fx1 < clip_x1_ - 1 ? static_cast<int>(fx1) : clip_x1_ - 1;
    const int j0 = fy0 > clip_y0_ ? static_cast<int>(fy0) : clip_y0_;
    const int j1 = fy1 < clip_y1_ - 1 ? static_cast<int>(fy1) : clip_y1_ - 1;
    for (int j = j0; j <= j1; ++j)
      for (int i = i0; i <= i1; ++i) f(i, j);
  }

  /// Parameter interval [t0, t1] of the points p + t (q - p), t in [0, 1], inside the box
  /// [lo, hi] (Liang-Barsky). Differences are taken of halved values, so no finite input
  /// overflows. Empty (t0 > t1) when the segment misses the box. When t1 < 1, the point at t1
  /// lies on the box edge: coordinate `axis` equals `edge` there.
  static void clip_interval(const double p[2], const double q[2], const double lo[2],
                            const double hi[2], double& t0, double& t1, int& axis, double& edge) {
    t0 = 0.0;
    t1 = 1.0;
    axis = 0;
    edge = q[0];
    for (int k = 0; k < 2; ++k) {
      const double d = 0.5 * q[k] - 0.5 * p[k];
      const double to_lo = 0.5 * lo[k] - 0.5 * p[k], to_hi = 0.5 * hi[k] - 0.5 * p[k];
      if (d == 0) {
        if (to_lo > 0 || to_hi < 0) t0 = 2.0;  // parallel to the box and outside it
        continue;
      }
      const double ta = to_lo / d, tb = to_hi / d;  // d > 0: enters at lo, leaves at hi
      t0 = std::max(t0, d > 0 ? ta : tb);
      const double leave = d > 0 ? tb : ta;
      if (leave < t1) t1 = leave, axis = k, edge = d > 0 ? hi[k] : lo[k];
    }
  }

  /// Clips the segment (x0, y0)-(x1, y1) to the clip rectangle grown by `margin`, in floating
  /// point. Each clipped end is computed from the other end, and its coordinate on the edge is
  /// set exactly, so the visible part of a segment to a far-away point keeps its full precision
  /// (a segment between two far points is as precise as its ends allow). False when nothing is
  /// left.
  bool clip_segment(double& x0, double& y0, double& x1, double& y1, double margin) const {
    const double lo[2] = {clip_x0_ - margin, clip_y0_ - margin};
    const double hi[2] = {clip_x1_ - 1 + margin, clip_y1_ - 1 + margin};
    double a[2] = {x0, y0}, b[2] = {x1, y1};
    double t0, t1, u0, u1, edge_b, edge_a;
    int axis_b, axis_a;
    clip_interval(a, b, lo, hi, t0, t1, axis_b, edge_b);  // from a towards b
    clip_interval(b, a, lo, hi, u0, u1, axis_a, edge_a);  // from b towards a
    if (!(t0 <= t1) || !(u0 <= u1)) return false;
    // p + t (q - p) as p + t (q/2 - p/2) twice: finite for t in [0, 1].
    auto along = [](double p, double q, double t) {
      const double h = t * (0.5 * q - 0.5 * p);
      return p + h + h;
    };
    const double a0[2] = {a[0], a[1]};
    if (t1 < 1) {
      for (int k = 0; k < 2; ++k) b[k] = along(a0[k], b[k], t1);
      b[axis_b] = edge_b;
    }
    if (u1 < 1) {
      const double b0[2] = {x1, y1};
      for (int k = 0; k < 2; ++k) a[k] = along(b0[k], a[k], u1);
      a[axis_a] = edge_a;
    }
    x0 = a[0], y0 = a[1], x1 = b[0], y1 = b[1];
    return true;
  }

  int width_, height_;
  int clip_x0_ = 0, clip_y0_ = 0, clip_x1_ = 0, clip_y1_ = 0;
  std::vector<std::uint8_t> pixels_;
};

}  // namespace plot
}  // namespace flowprior
