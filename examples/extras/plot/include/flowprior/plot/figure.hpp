/// @file
/// A tiny chart layer over Canvas (docs/plotting.md): Axes (one panel: frame, 1-2-5 ticks,
/// labels, title, scatter / line / heatmap marks, colorbar, legend, optional log y) and Figure
/// (a grid of panels under a title, saved as PNG).
///
/// Axes is *retained*: scatter(), line(), heatmap() and text() copy their data and only record
/// the mark; render() draws everything in call order, so limits may be set (or left to
/// autoscale) before or after adding marks, and rendering twice gives the same picture.
/// Data coordinates have y **up**; pixel coordinates have y down (canvas.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <flowprior/core/error.hpp>
#include <flowprior/plot/canvas.hpp>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace flowprior {
namespace plot {

/// A pixel rectangle [x, x+w) x [y, y+h), y down.
struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

/// Data range shown by an Axes: x0 at the left edge, x1 at the right, y0 at the bottom, y1 at
/// the top (x0 > x1 or y0 > y1 flips an axis).
struct Limits {
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
};

/// One legend row: a colour swatch (a short line, or a disc when `marker`) and its label.
struct LegendEntry {
  std::string label;
  Color color;
  bool marker = false;
};

/// Where a legend box sits inside the plot area.
enum class Corner { top_left, top_right, bottom_left, bottom_right };

namespace detail {
[[noreturn]] inline FLOWPRIOR_COLD void plot_config_error(const std::string& what) {
  flowprior::detail::raise<config_error>("[flowprior.config] plot: " + what);
}
inline double nan() { return std::numeric_limits<double>::quiet_NaN(); }

/// Largest magnitude of an autoscaled or widened limit: the span of two such limits, and their
/// sum, stay finite.
inline constexpr double kMaxLimit = std::numeric_limits<double>::max() / 4;

/// Nearest int to the pixel coordinate v, clamped to +-2^24 (NaN gives -2^24): outside any
/// canvas, and far enough from INT_MAX that adding margins and text widths cannot overflow.
/// Every data-derived pixel position becomes an int through here.
inline int pixel(double v) {
  constexpr int kFar = 1 << 24;
  if (!(v > -kFar)) return -kFar;
  if (v > kFar) return kFar;
  return static_cast<int>(std::lround(v));
}

/// (v - a) / (b - a), the position of v in the range [a, b]; computed from halved values when
/// a difference would overflow (ranges or points near +-DBL_MAX), so it is finite for finite
/// input unless the quotient itself is out of range.
inline double fraction(double v, double a, double b) {
  const double n = v - a, d = b - a;
  if (std::isfinite(n) && std::isfinite(d)) return n / d;
  return (0.5 * v - 0.5 * a) / (0.5 * b - 0.5 * a);
}

/// a + t (b - a), the inverse of fraction(); finite for finite a, b and |t| <= 1.
inline double lerp(double a, double b, double t) {
  const double d = b - a;
  if (std::isfinite(d)) return a + t * d;
  const double h = t * (0.5 * b - 0.5 * a);
  return a + h + h;
}

/// [lo, hi] (lo <= hi, neither NaN) clamped to [bmin, bmax] and, when empty, widened to a
/// distinct range: by 0.5 each way, or by 2^-20 |lo| when 0.5 is lost to rounding, then moved
/// back inside the bounds. @pre bmax - bmin is finite and larger than that widening.
inline std::pair<double, double> usable_range(double lo, double hi, double bmin, double bmax) {
  lo = std::clamp(lo, bmin, bmax);
  hi = std::clamp(hi, bmin, bmax);
  if (lo < hi) return {lo, hi};
  double h = 0.5;
  if (lo - h == lo || lo + h == lo) h = std::abs(lo) * 0x1p-20;
  lo -= h;
  hi += h;
  if (lo < bmin) hi = std::min(bmax, hi + (bmin - lo)), lo = bmin;
  if (hi > bmax) lo = std::max(bmin, lo - (hi - bmax)), hi = bmax;
  return {lo, hi};
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Ticks
// ---------------------------------------------------------------------------------------------

/// The 1-2-5 step (1, 2 or 5 times a power of ten) nearest, in ratio, to span / target.
/// A span so small (denormal) that no power of ten below it is representable gives the span.
inline double nice_step(double span, int target = 5) {
  span = std::abs(span);
  if (!(span > 0) || !std::isfinite(span)) return 1.0;
  const double raw = span / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  if (!(raw > 0) || !(mag > 0)) return span;
  const double f = raw / mag;
  // Geometric midpoints between 1, 2, 5 and 10.
  const double m = f < 1.4142 ? 1 : f < 3.1623 ? 2 : f < 7.0711 ? 5 : 10;
  return m * mag;
}

/// Tick values k * nice_step(hi - lo, target) inside [min(lo, hi), max(lo, hi)], ascending.
/// E.g. [0, 1] -> 0, 0.2, ..., 1 (target 5) or 0, 0.5, 1 (target 3). Multiples are formed as
/// k * step (not by repeated addition), so 0 is exactly 0 and no rounding drift accumulates.
/// At most 1000 ticks, strictly increasing: far from 0 (a range [1e16, 1e16 + 4]) multiples
/// that round to the same double are kept once. Non-finite lo or hi give no ticks.
inline std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  if (lo > hi) std::swap(lo, hi);
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (!(hi > lo)) return {lo};
  // A span beyond the double range (lo, hi near -+DBL_MAX): half the span over half the ticks.
  const double span = hi - lo;
  const double step = std::isfinite(span) ? nice_step(span, target)
                                          : nice_step(0.5 * hi - 0.5 * lo, std::max(1, target / 2));
  const double k0 = std::ceil(lo / step - 1e-9), k1 = std::floor(hi / step + 1e-9);
  if (!std::isfinite(k0) || !std::isfinite(k1)) return {lo, hi};
  std::vector<double> ticks;
  if (!(k0 <= k1)) return ticks;
  const int n = static_cast<int>(std::min(k1 - k0, 999.0));
  for (int i = 0; i <= n; ++i) {
    const double v = (k0 + i) * step;
    if (ticks.empty() || v > ticks.back()) ticks.push_back(v);
  }
  return ticks;
}

/// Ticks for a log axis over [lo, hi] (both > 0): 1, 2, 5 x 10^k when the range spans at most
/// two decades, else powers of ten (every m-th decade so that at most max_ticks remain). Falls
/// back to nice_ticks() when fewer than two such values lie in the range.
inline std::vector<double> log_ticks(double lo, double hi, int max_ticks = 8) {
  if (lo > hi) std::swap(lo, hi);
  if (!(lo > 0) || !std::isfinite(hi)) return {};
  const double tol = 1e-9;
  const int e0 = static_cast<int>(std::floor(std::log10(lo))),
            e1 = static_cast<int>(std::ceil(std::log10(hi)));
  std::vector<double> ticks;
  auto keep = [&](double v) {
    if (v >= lo * (1 - tol) && v <= hi * (1 + tol)) ticks.push_back(v);
  };
  if (e1 - e0 <= 2) {
    for (int e = e0; e <= e1; ++e)
      for (double m : {1.0, 2.0, 5.0}) keep(m * std::pow(10.0, e));
  } else {
    const int every = std::max(1, (e1 - e0 + max_ticks - 1) / std::max(1, max_ticks));
    for (int e = e0; e <= e1; ++e)
      if (((e % every) + every) % every == 0) keep(std::pow(10.0, e));
  }
  if (ticks.size() < 2) return nice_ticks(lo, hi, 4);
  return ticks;
}

/// Label of a linear tick: just enough decimals for `step` (0.2 -> "0.4", 0.05 -> "0.15"),
/// switching to %g for very large or very small magnitudes.
inline std::string format_tick(double v, double step) {
  if (v == 0 || std::abs(v) < std::abs(step) * 1e-9) return "0";
  char buf[48];
  step = std::abs(step);
  if (!std::isfinite(v) || std::abs(v) >= 1e6 || step < 1e-4 || !(step > 0) ||
      !std::isfinite(step)) {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  } else {
    const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  }
  return buf;
}

/// Label of a log-axis tick: plain decimals from 1e-3 to 1e4 ("0.002", "500"), else "2e-05"
/// style (and %g for v <= 0 or non-finite, which a log axis never shows).
inline std::string format_log_tick(double v) {
  char buf[48];
  if (!(v > 0) || !std::isfinite(v)) {
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }
  const int e = static_cast<int>(std::floor(std::log10(v) + 1e-9));
  if (e >= -3 && e <= 4)
    std::snprintf(buf, sizeof buf, "%.*f", std::max(0, -e), v);
  else
    std::snprintf(buf, sizeof buf, "%.0e", v);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Transform
// ---------------------------------------------------------------------------------------------

/// Data <-> pixel mapping of one Axes. Data x0 falls on the left edge of the plot rectangle
/// (pixel coordinate plot.x - 0.5) and x1 on its right edge (plot.x + plot.w - 0.5); y0 on the
/// bottom edge and y1 on the top edge, so a heatmap cell grid tiles the pixels exactly.
/// Finite data and limits never overflow in between (detail::fraction): a point far outside
/// maps to a far (possibly infinite) pixel coordinate, never NaN; non-finite data gives a
/// non-finite pixel coordinate, which every mark skips.
class Transform {
 public:
  Transform(Rect plot, Limits limits, bool log_y) : plot_(plot), lim_(limits), log_y_(log_y) {
    ly0_ = log_y ? std::log10(limits.y0) : limits.y0;
    ly1_ = log_y ? std::log10(limits.y1) : limits.y1;
  }
  /// Pixel x of data x.
  double px(double x) const {
    return plot_.x - 0.5 + detail::fraction(x, lim_.x0, lim_.x1) * plot_.w;
  }
  /// Pixel y of data y (non-finite for y <= 0 on a log axis).
  double py(double y) const {
    const double v = log_y_ ? std::log10(y) : y;
    return plot_.y - 0.5 + plot_.h - detail::fraction(v, ly0_, ly1_) * plot_.h;
  }
  /// Data x at pixel x (inverse of px).
  double x_at(double px) const {
    return detail::lerp(lim_.x0, lim_.x1, (px - (plot_.x - 0.5)) / plot_.w);
  }
  /// Data y at pixel y (inverse of py).
  double y_at(double py) const {
    const double v = detail::lerp(ly0_, ly1_, (plot_.y - 0.5 + plot_.h - py) / plot_.h);
    return log_y_ ? std::pow(10.0, v) : v;
  }
  const Rect& plot() const { return plot_; }
  const Limits& limits() const { return lim_; }
  bool log_y() const { return log_y_; }

 private:
  Rect plot_;
  Limits lim_;
  bool log_y_;
  double ly0_, ly1_;
};

// ---------------------------------------------------------------------------------------------
// Axes
// ---------------------------------------------------------------------------------------------

/// One chart panel placed at a pixel rectangle (`outer`) of a Canvas. The rectangle holds the
/// margins with tick labels, axis labels, title and colorbar; the plot area inside it is
/// plot_rect(). Configure with the set_*() calls, add marks, then render(canvas) (Figure does
/// this for its panels). Unset limits are fitted to the marks (5 % padding, none when a
/// heatmap is present); with no marks they are [0, 1] x [0, 1].
class Axes {
 public:
  /// Smallest accepted outer size: the margins of a panel with a colorbar need this much.
  static constexpr int kMinWidth = 160;
  static constexpr int kMinHeight = 100;

  /// @pre outer.w >= kMinWidth and outer.h >= kMinHeight, else config_error.
  explicit Axes(Rect outer = {0, 0, 420, 400}) : outer_(outer) {
    if (outer.w < kMinWidth || outer.h < kMinHeight)
      detail::plot_config_error("Axes rectangle " + std::to_string(outer.w) + "x" +
                                std::to_string(outer.h) + " is smaller than " +
                                std::to_string(kMinWidth) + "x" + std::to_string(kMinHeight));
  }

  // --- configuration --------------------------------------------------------------------------

  /// Fixes the data range. @pre finite, x0 != x1, y0 != y1 (config_error); with log y, y0 and
  /// y1 must be > 0 (checked when the axes is laid out).
  Axes& set_limits(double x0, double x1, double y0, double y1) {
    return set_xlim(x0, x1).set_ylim(y0, y1);
  }
  Axes& set_xlim(double x0, double x1) {
    check_range("x limits", x0, x1);
    xlim_ = {x0, x1};
    has_xlim_ = true;
    return *this;
  }
  Axes& set_ylim(double y0, double y1) {
    check_range("y limits", y0, y1);
    ylim_ = {y0, y1};
    has_ylim_ = true;
    return *this;
  }
  /// One data unit spans as many pixels in x as in y: the shorter range is widened about its
  /// centre. Ignored on a log-y axes.
  Axes& set_equal_aspect(bool on = true) {
    equal_aspect_ = on;
    return *this;
  }
  /// Logarithmic y axis (base 10); marks with y <= 0 are skipped, lines break there.
  Axes& set_log_y(bool on = true) {
    log_y_ = on;
    return *this;
  }
  /// Light grid lines at the ticks.
  Axes& set_grid(bool on = true) {
    grid_ = on;
    return *this;
  }
  /// Hides frame, ticks and axis labels (e.g. a panel holding only text); the title stays.
  Axes& set_axis_visible(bool on) {
    axis_visible_ = on;
    return *this;
  }
  Axes& set_title(std::string s) {
    title_ = std::move(s);
    return *this;
  }
  Axes& set_xlabel(std::string s) {
    xlabel_ = std::move(s);
    return *this;
  }
  Axes& set_ylabel(std::string s) {
    ylabel_ = std::move(s);
    return *this;
  }

  // --- marks ----------------------------------------------------------------------------------

  /// Points (x[i], y[i]), i < n, as anti-aliased discs of `radius` pixels with opacity alpha.
  /// Non-finite points are skipped. @pre n >= 0, pointers non-null when n > 0 (config_error).
  Axes& scatter(const double* x, const double* y, int n, Color color, double radius = 2.0,
                double alpha = 0.6) {
    Mark m = xy_mark(Mark::Kind::scatter, x, y, n, "scatter");
    m.color = color;
    m.size = radius;
    m.alpha = alpha;
    marks_.push_back(std::move(m));
    return *this;
  }

  /// Polyline through (x[i], y[i]), i < n, `width` pixels wide; it breaks at non-finite
  /// points. @pre as scatter().
  Axes& line(const double* x, const double* y, int n, Color color, double width = 2.0) {
    Mark m = xy_mark(Mark::Kind::line, x, y, n, "line");
    m.color = color;
    m.size = width;
    marks_.push_back(std::move(m));
    return *this;
  }

  /// Image of an nx x ny grid over [x0, x1] x [y0, y1]: values[i + j*nx] fills cell (i, j),
  /// i along x, j along y **upwards** (j = 0 is the bottom row at y0). Colours are
  /// cmap((v - vmin) / (vmax - vmin)), clamped; a non-finite (NaN, +-inf) vmin or vmax is taken
  /// from the finite data, and vmin == vmax is widened. Non-finite values are left transparent.
  /// @pre nx, ny >= 1, values non-null, finite extents with x0 != x1 and y0 != y1.
  Axes& heatmap(const double* values, int nx, int ny, double x0, double x1, double y0, double y1,
                Colormap cmap = viridis, double vmin = detail::nan(), double vmax = detail::nan()) {
    if (nx < 1 || ny < 1)
      detail::plot_config_error("heatmap grid " + std::to_string(nx) + "x" + std::to_string(ny) +
                                " must be at least 1x1");
    if (values == nullptr) detail::plot_config_error("heatmap values pointer is null");
    if (cmap == nullptr) detail::plot_config_error("heatmap colormap is null");
    check_range("heatmap x extent", x0, x1);
    check_range("heatmap y extent", y0, y1);
    Mark m;
    m.kind = Mark::Kind::heatmap;
    m.a.assign(values, values + static_cast<std::size_t>(nx) * static_cast<std::size_t>(ny));
    m.nx = nx;
    m.ny = ny;
    m.extent = {x0, x1, y0, y1};
    m.cmap = cmap;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (double v : m.a)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (!(lo <= hi)) lo = 0, hi = 1;
    m.vmin = std::isfinite(vmin) ? vmin : lo;
    m.vmax = std::isfinite(vmax) ? vmax : hi;
    if (m.vmin == m.vmax) {
      const double big = std::numeric_limits<double>::max();
      std::tie(m.vmin, m.vmax) = detail::usable_range(m.vmin, m.vmax, -big, big);
    }
    last_heatmap_ = {m.cmap, m.vmin, m.vmax};
    has_heatmap_ = true;
    marks_.push_back(std::move(m));
    return *this;
  }

  /// A colour bar right of the plot area mapping [vmin, vmax] through cmap, with ticks and an
  /// optional (vertical) label. @pre finite vmin != vmax, cmap non-null.
  Axes& colorbar(Colormap cmap, double vmin, double vmax, std::string label = "") {
    if (cmap == nullptr) detail::plot_config_error("colorbar colormap is null");
    check_range("colorbar range", vmin, vmax);
    colorbar_ = {cmap, vmin, vmax};
    colorbar_label_ = std::move(label);
    has_colorbar_ = true;
    return *this;
  }
  /// Colour bar of the most recent heatmap (its colormap and value range).
  /// @throws config_error when no heatmap was added.
  Axes& colorbar(std::string label = "") {
    if (!has_heatmap_) detail::plot_config_error("colorbar() without a heatmap");
    return colorbar(last_heatmap_.cmap, last_heatmap_.vmin, last_heatmap_.vmax, std::move(label));
  }

  /// A legend box in a corner of the plot area, one row per entry.
  Axes& legend(std::vector<LegendEntry> entries, Corner corner = Corner::top_right) {
    legend_ = std::move(entries);
    legend_corner_ = corner;
    return *this;
  }

  /// Text with its top-left corner at data point (x, y), clipped to the panel rectangle (skipped
  /// when the point is not finite).
  Axes& text(double x, double y, std::string s, Color color = colors::black, int scale = 1) {
    Mark m;
    m.kind = Mark::Kind::text;
    m.a = {x};
    m.b = {y};
    m.text = std::move(s);
    m.color = color;
    m.size = scale;
    marks_.push_back(std::move(m));
    return *this;
  }

  // --- geometry -------------------------------------------------------------------------------

  /// The panel rectangle given at construction.
  const Rect& outer() const { return outer_; }
  /// The plot area: outer minus the margins the current configuration needs.
  Rect plot_rect() const {
    int left = 10, right = 14, top = 12, bottom = 10;
    if (axis_visible_) {
      left = 68;    // y label, tick labels up to 7 characters, ticks
      bottom = 40;  // ticks, tick labels, x label
      right = 20;   // half of the last x tick label
    }
    if (!title_.empty()) top = 32;
    if (has_colorbar_) right = 96;  // gap, bar, ticks, labels, label
    return {outer_.x + left, outer_.y + top, std::max(1, outer_.w - left - right),
            std::max(1, outer_.h - top - bottom)};
  }
  /// The data range shown: the set limits or the autoscaled ones, then widened for equal
  /// aspect. @throws config_error for log y with limits <= 0.
  Limits limits() const { return layout().limits(); }
  /// The data <-> pixel mapping for the current configuration and marks. It is computed from
  /// all marks (autoscale); keep one for repeated use.
  Transform layout() const {
    const Rect p = plot_rect();
    Limits lim = data_limits();
    if (log_y_ && !(lim.y0 > 0 && lim.y1 > 0))
      detail::plot_config_error("log y axis needs y limits > 0, got [" + std::to_string(lim.y0) +
                                ", " + std::to_string(lim.y1) + "]");
    if (equal_aspect_ && !log_y_) {
      // Half spans per pixel: finite even for limits near +-DBL_MAX.
      const double sx = std::abs(0.5 * lim.x1 - 0.5 * lim.x0) / p.w,
                   sy = std::abs(0.5 * lim.y1 - 0.5 * lim.y0) / p.h;
      if (sx > sy) widen(lim.y0, lim.y1, sx * p.h);
      if (sy > sx) widen(lim.x0, lim.x1, sy * p.w);
    }
    return Transform(p, lim, log_y_);
  }
  /// Pixel x of data x and pixel y of data y (see Transform).
  double to_px(double x) const { return layout().px(x); }
  double to_py(double y) const { return layout().py(y); }

  // --- rendering ------------------------------------------------------------------------------

  /// Draws the panel onto the canvas (pixels outside `outer` may be touched only by labels that
  /// do not fit). Leaves the canvas clip rectangle reset.
  void render(Canvas& cv) const {
    const Transform t = layout();
    const Rect p = t.plot();
    const Limits lim = t.limits();
    const std::vector<double> xt = nice_ticks(lim.x0, lim.x1, std::max(2, p.w / 80));
    const std::vector<double> yt =
        log_y_ ? log_ticks(lim.y0, lim.y1) : nice_ticks(lim.y0, lim.y1, std::max(2, p.h / 60));

    if (axis_visible_ && grid_) {
      const Color g{232, 232, 232};
      for (double v : xt) cv.fill_rect(detail::pixel(t.px(v)), p.y, 1, p.h, g);
      for (double v : yt) cv.fill_rect(p.x, detail::pixel(t.py(v)), p.w, 1, g);
    }

    for (const Mark& m : marks_) {
      if (m.kind == Mark::Kind::text)
        cv.set_clip(outer_.x, outer_.y, outer_.w, outer_.h);
      else
        cv.set_clip(p.x, p.y, p.w, p.h);
      draw_mark(cv, t, m);
    }
    cv.reset_clip();

    const Color ink = colors::dark_gray;
    if (axis_visible_) {
      cv.rect(p.x - 1, p.y - 1, p.w + 2, p.h + 2, ink);
      const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1.0;
      for (double v : xt) {
        const int x = detail::pixel(t.px(v));
        cv.fill_rect(x, p.y + p.h + 1, 1, 4, ink);
        const std::string s = format_tick(v, xstep);
        cv.text(x - Canvas::text_width(s) / 2, p.y + p.h + 8, s, ink);
      }
      const double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1.0;
      const bool log_labels = log_y_ && is_log_tick_set(yt);
      for (double v : yt) {
        const int y = detail::pixel(t.py(v));
        cv.fill_rect(p.x - 5, y, 4, 1, ink);
        const std::string s = log_labels ? format_log_tick(v) : format_tick(v, ystep);
        cv.text(p.x - 8 - Canvas::text_width(s), y - 3, s, ink);
      }
      if (!xlabel_.empty())
        cv.text(p.x + (p.w - Canvas::text_width(xlabel_)) / 2, p.y + p.h + 24, xlabel_,
                colors::black);
      if (!ylabel_.empty())
        cv.text_vertical(outer_.x + 6, p.y + (p.h - Canvas::text_width(ylabel_)) / 2, ylabel_,
                         colors::black);
    }
    if (!title_.empty())
      cv.text(p.x + (p.w - Canvas::text_width(title_, 2)) / 2, outer_.y + 8, title_, colors::black,
              2);
    if (has_colorbar_) draw_colorbar(cv, p);
    if (!legend_.empty()) draw_legend(cv, p);
  }

 private:
  struct HeatmapScale {
    Colormap cmap = viridis;
    double vmin = 0, vmax = 1;
  };
  struct Mark {
    enum class Kind { scatter, line, heatmap, text } kind = Kind::scatter;
    std::vector<double> a, b;  // x and y, or heatmap values (a)
    int nx = 0, ny = 0;
    Limits extent{};
    Color color{0, 0, 0};
    double size = 1, alpha = 1;
    Colormap cmap = nullptr;
    double vmin = 0, vmax = 1;
    std::string text;
  };

  static void check_range(const char* what, double a, double b) {
    if (!std::isfinite(a) || !std::isfinite(b) || a == b)
      detail::plot_config_error(std::string(what) + " must be finite and distinct, got [" +
                                std::to_string(a) + ", " + std::to_string(b) + "]");
  }
  static Mark xy_mark(Mark::Kind kind, const double* x, const double* y, int n, const char* who) {
    if (n < 0) detail::plot_config_error(std::string(who) + ": n = " + std::to_string(n) + " < 0");
    if (n > 0 && (x == nullptr || y == nullptr))
      detail::plot_config_error(std::string(who) + ": null data pointer");
    Mark m;
    m.kind = kind;
    m.a.assign(x, x + n);
    m.b.assign(y, y + n);
    return m;
  }
  /// Widens [lo, hi] about its centre to total length 2 * half, keeping its direction; the
  /// ends are clamped to +-kMaxLimit (so a huge ratio of the two spans cannot overflow).
  static void widen(double& lo, double& hi, double half) {
    const double c = 0.5 * lo + 0.5 * hi, h = half * (hi >= lo ? 1 : -1);
    lo = std::clamp(c - h, -detail::kMaxLimit, detail::kMaxLimit);
    hi = std::clamp(c + h, -detail::kMaxLimit, detail::kMaxLimit);
  }
  /// True when every tick is 1, 2 or 5 times a power of ten (log_ticks did not fall back).
  static bool is_log_tick_set(const std::vector<double>& ticks) {
    for (double v : ticks) {
      if (!(v > 0)) return false;
      const double m = v / std::pow(10.0, std::floor(std::log10(v) + 1e-9));
      if (std::abs(m - 1) > 1e-6 && std::abs(m - 2) > 1e-6 && std::abs(m - 5) > 1e-6) return false;
    }
    return true;
  }

  /// Set limits where given, else the marks' bounding box (padded unless a heatmap is present).
  /// Autoscaled limits are finite and distinct whatever the data: non-finite points are
  /// ignored, the range is clamped to +-kMaxLimit (10^-307..10^308 on a log axis), and an
  /// empty one (a single point, 1e300 +- 0.5) is widened.
  Limits data_limits() const {
    if (has_xlim_ && has_ylim_) return {xlim_.first, xlim_.second, ylim_.first, ylim_.second};
    const double inf = std::numeric_limits<double>::infinity();
    double bx0 = inf, bx1 = -inf, by0 = inf, by1 = -inf;  // y bounds in log10 on a log axis
    bool heat = false;
    auto add_y = [&](double y) {
      const double v = log_y_ ? (y > 0 ? std::log10(y) : detail::nan()) : y;
      if (std::isfinite(v)) by0 = std::min(by0, v), by1 = std::max(by1, v);
    };
    for (const Mark& m : marks_) {
      if (m.kind == Mark::Kind::scatter || m.kind == Mark::Kind::line) {
        for (std::size_t i = 0; i < m.a.size(); ++i) {
          if (!std::isfinite(m.a[i]) || !std::isfinite(m.b[i])) continue;
          if (log_y_ && !(m.b[i] > 0)) continue;
          bx0 = std::min(bx0, m.a[i]);
          bx1 = std::max(bx1, m.a[i]);
          add_y(m.b[i]);
        }
      } else if (m.kind == Mark::Kind::heatmap) {
        heat = true;
        bx0 = std::min({bx0, m.extent.x0, m.extent.x1});
        bx1 = std::max({bx1, m.extent.x0, m.extent.x1});
        add_y(m.extent.y0);
        add_y(m.extent.y1);
      }
    }
    auto fit = [heat](double lo, double hi, double empty_lo, double empty_hi, double bound) {
      if (!(lo <= hi)) return std::make_pair(empty_lo, empty_hi);
      const double span = hi - lo;
      const double pad = heat ? 0.0 : std::isfinite(span) ? 0.05 * span : 0.05 * hi - 0.05 * lo;
      if (hi > lo) lo -= pad, hi += pad;
      return detail::usable_range(lo, hi, -bound, bound);
    };
    Limits lim;
    const auto fx = has_xlim_ ? xlim_ : fit(bx0, bx1, 0.0, 1.0, detail::kMaxLimit);
    lim.x0 = fx.first;
    lim.x1 = fx.second;
    if (has_ylim_) {
      lim.y0 = ylim_.first;
      lim.y1 = ylim_.second;
    } else if (log_y_) {
      // In decades, kept where 10^y is a finite normal number.
      const auto fy = fit(by0, by1, 0.0, 1.0, 307.0);
      lim.y0 = std::pow(10.0, fy.first);
      lim.y1 = std::pow(10.0, fy.second);
    } else {
      const auto fy = fit(by0, by1, 0.0, 1.0, detail::kMaxLimit);
      lim.y0 = fy.first;
      lim.y1 = fy.second;
    }
    return lim;
  }

  /// A pixel coordinate of finite data that overflowed (a point beyond 1e300 pixels) is moved
  /// to +-1e300: still far outside, but a line towards it keeps its direction.
  static double far_pixel(double v) { return std::clamp(v, -1e300, 1e300); }

  void draw_mark(Canvas& cv, const Transform& t, const Mark& m) const {
    switch (m.kind) {
      case Mark::Kind::scatter:  // Canvas::disc skips non-finite and clips far centres
        for (std::size_t i = 0; i < m.a.size(); ++i)
          cv.disc(t.px(m.a[i]), t.py(m.b[i]), m.size, m.color, m.alpha);
        break;
      case Mark::Kind::line: {
        bool have_prev = false;
        double qx = 0, qy = 0;
        for (std::size_t i = 0; i < m.a.size(); ++i) {
          // Non-finite data (and y <= 0 on a log axis) breaks the line; Canvas::line clips.
          const bool ok =
              std::isfinite(m.a[i]) && std::isfinite(m.b[i]) && (!t.log_y() || m.b[i] > 0);
          const double x = far_pixel(t.px(m.a[i])), y = far_pixel(t.py(m.b[i]));
          if (ok && have_prev) cv.line(qx, qy, x, y, m.color, m.size);
          if (ok && m.a.size() == 1) cv.disc(x, y, m.size / 2, m.color);
          have_prev = ok;
          qx = x;
          qy = y;
        }
        break;
      }
      case Mark::Kind::heatmap:
        draw_heatmap(cv, t, m);
        break;
      case Mark::Kind::text: {
        const double x = t.px(m.a[0]), y = t.py(m.b[0]);
        if (std::isfinite(x) && std::isfinite(y))
          cv.text(detail::pixel(x), detail::pixel(y), m.text, m.color, static_cast<int>(m.size));
        break;
      }
    }
  }

  /// Samples the grid at every pixel centre of the plot area (so any axis direction or a log
  /// axis needs no special case); colours come from a 1024-entry table of the colormap.
  static void draw_heatmap(Canvas& cv, const Transform& t, const Mark& m) {
    constexpr int kLut = 1024;
    std::array<Color, kLut> lut;
    for (int k = 0; k < kLut; ++k) lut[k] = m.cmap(k / double(kLut - 1));
    const Rect& p = t.plot();
    const Limits& e = m.extent;
    for (int j = p.y; j < p.y + p.h; ++j) {
      const double v = detail::fraction(t.y_at(j), e.y0, e.y1);
      if (!(v >= 0 && v <= 1)) continue;
      const int cj = std::min(m.ny - 1, static_cast<int>(v * m.ny));
      for (int i = p.x; i < p.x + p.w; ++i) {
        const double u = detail::fraction(t.x_at(i), e.x0, e.x1);
        if (!(u >= 0 && u <= 1)) continue;
        const int ci = std::min(m.nx - 1, static_cast<int>(u * m.nx));
        const double val = m.a[static_cast<std::size_t>(ci) +
                               static_cast<std::size_t>(cj) * static_cast<std::size_t>(m.nx)];
        if (!std::isfinite(val)) continue;
        // Clamped before the conversion; NaN (only for absurd ranges) maps like 0.
        const double s = detail::fraction(val, m.vmin, m.vmax);
        const long k = s > 0 ? std::lround(std::min(s, 1.0) * (kLut - 1)) : 0;
        cv.set(i, j, lut[static_cast<std::size_t>(k)]);
      }
    }
  }

  void draw_colorbar(Canvas& cv, const Rect& p) const {
    const int bx = p.x + p.w + 14, bw = 14;
    const HeatmapScale& c = colorbar_;
    for (int j = 0; j < p.h; ++j) {
      const double s = 1.0 - (j + 0.5) / p.h;  // top = vmax
      cv.fill_rect(bx, p.y + j, bw, 1, c.cmap(s));
    }
    const Color ink = colors::dark_gray;
    cv.rect(bx - 1, p.y - 1, bw + 2, p.h + 2, ink);
    const std::vector<double> ticks = nice_ticks(c.vmin, c.vmax, std::max(2, p.h / 60));
    const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
    int widest = 0;
    for (double v : ticks) {
      const double s = detail::fraction(v, c.vmin, c.vmax);
      const int y = detail::pixel(p.y - 0.5 + (1.0 - s) * p.h);
      cv.fill_rect(bx + bw + 1, y, 4, 1, ink);
      const std::string label = format_tick(v, step);
      cv.text(bx + bw + 8, y - 3, label, ink);
      widest = std::max(widest, Canvas::text_width(label));
    }
    if (!colorbar_label_.empty())
      cv.text_vertical(bx + bw + 8 + widest + 6,
                       p.y + (p.h - Canvas::text_width(colorbar_label_)) / 2, colorbar_label_,
                       colors::black);
  }

  void draw_legend(Canvas& cv, const Rect& p) const {
    const int row_h = 14, swatch = 18, pad = 6;
    int text_w = 0;
    for (const LegendEntry& e : legend_) text_w = std::max(text_w, Canvas::text_width(e.label));
    const int w = pad + swatch + pad + text_w + pad;
    const int h = pad + static_cast<int>(legend_.size()) * row_h - (row_h - 8) + pad;
    const bool right =
        legend_corner_ == Corner::top_right || legend_corner_ == Corner::bottom_right;
    const bool top = legend_corner_ == Corner::top_left || legend_corner_ == Corner::top_right;
    const int x = right ? p.x + p.w - 8 - w : p.x + 8;
    const int y = top ? p.y + 8 : p.y + p.h - 8 - h;
    cv.fill_rect(x, y, w, h, colors::white, 0.85);
    cv.rect(x, y, w, h, Color{200, 200, 200});
    for (std::size_t k = 0; k < legend_.size(); ++k) {
      const LegendEntry& e = legend_[k];
      const int ry = y + pad + static_cast<int>(k) * row_h;
      const double cy = ry + 3;  // middle of the cap height
      if (e.marker)
        cv.disc(x + pad + swatch / 2.0, cy, 3.0, e.color);
      else
        cv.line(x + pad, cy, x + pad + swatch, cy, e.color, 2.0);
      cv.text(x + pad + swatch + pad, ry, e.label, colors::black);
    }
  }

  Rect outer_;
  std::pair<double, double> xlim_{0, 1}, ylim_{0, 1};
  bool has_xlim_ = false, has_ylim_ = false;
  bool equal_aspect_ = false, log_y_ = false, grid_ = false, axis_visible_ = true;
  std::string title_, xlabel_, ylabel_;
  std::vector<Mark> marks_;
  HeatmapScale last_heatmap_, colorbar_;
  bool has_heatmap_ = false, has_colorbar_ = false;
  std::string colorbar_label_;
  std::vector<LegendEntry> legend_;
  Corner legend_corner_ = Corner::top_right;
};

// ---------------------------------------------------------------------------------------------
// Figure
// ---------------------------------------------------------------------------------------------

/// A grid of cols x rows panels (each panel_w x panel_h pixels) under an optional title, on a
/// white canvas. Panel (c, r) is column c from the left, row r from the top.
class Figure {
 public:
  /// @pre cols, rows >= 1; panel_w >= Axes::kMinWidth, panel_h >= Axes::kMinHeight; the whole
  /// image within kMaxImageSide (config_error otherwise).
  Figure(int cols, int rows, int panel_w = 420, int panel_h = 400, std::string title = "")
      : cols_(cols), rows_(rows), title_(std::move(title)) {
    if (cols < 1 || rows < 1)
      detail::plot_config_error("Figure grid " + std::to_string(cols) + "x" + std::to_string(rows) +
                                " must be at least 1x1");
    if (panel_w < Axes::kMinWidth || panel_h < Axes::kMinHeight)
      detail::plot_config_error("Figure panel " + std::to_string(panel_w) + "x" +
                                std::to_string(panel_h) + " is smaller than " +
                                std::to_string(Axes::kMinWidth) + "x" +
                                std::to_string(Axes::kMinHeight));
    title_h_ = title_.empty() ? 0 : 40;
    const long long w = static_cast<long long>(cols) * panel_w;
    const long long h = static_cast<long long>(rows) * panel_h + title_h_;
    if (w > kMaxImageSide || h > kMaxImageSide)
      detail::plot_config_error("Figure of " + std::to_string(w) + "x" + std::to_string(h) +
                                " pixels exceeds " + std::to_string(kMaxImageSide));
    width_ = static_cast<int>(w);
    height_ = static_cast<int>(h);
    panels_.reserve(static_cast<std::size_t>(cols) * static_cast<std::size_t>(rows));
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        panels_.emplace_back(Rect{c * panel_w, title_h_ + r * panel_h, panel_w, panel_h});
  }

  int cols() const { return cols_; }
  int rows() const { return rows_; }
  int width() const { return width_; }
  int height() const { return height_; }

  /// Panel at column c, row r. @throws config_error when out of range.
  Axes& panel(int c, int r) {
    if (c < 0 || r < 0 || c >= cols_ || r >= rows_)
      detail::plot_config_error("Figure::panel(" + std::to_string(c) + ", " + std::to_string(r) +
                                ") outside a " + std::to_string(cols_) + "x" +
                                std::to_string(rows_) + " grid");
    return panels_[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols_) +
                   static_cast<std::size_t>(c)];
  }

  /// Draws title and panels onto a fresh canvas.
  Canvas render() const {
    Canvas cv(width_, height_, colors::white);
    if (!title_.empty())
      cv.text((width_ - Canvas::text_width(title_, 3)) / 2, 10, title_, colors::black, 3);
    for (const Axes& a : panels_) a.render(cv);
    return cv;
  }

  /// Renders and writes the figure as a PNG file (atomically). @throws io_error naming path.
  void save(const std::string& path) const { render().save_png(path); }

 private:
  int cols_, rows_;
  std::string title_;
  int title_h_ = 0, width_ = 0, height_ = 0;
  std::vector<Axes> panels_;
};

}  // namespace plot
}  // namespace flowprior
