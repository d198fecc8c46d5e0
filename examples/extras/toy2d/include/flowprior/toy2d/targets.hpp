/// @file
/// The 2-D targets of the paper's proof of concept (method.md section 7), as reusable library
/// code: two Gaussian mixtures with exact densities (Ring5, Grid16) and five sample-only shapes
/// (Moons, Rings, Spiral, SwissRoll, Checkerboard). Parameters, layouts and normalisation
/// constants: docs/toy_targets.md.
///
/// Every target is sampled in **normalised units**: a raw sample is divided by scale(), the
/// target's overall per-coordinate standard deviation,
///
///   scale^2 = (Var[x_raw] + Var[y_raw]) / 2          (each coordinate about its own mean)
///
/// computed once in make(), analytically or by deterministic quadrature over the curve
/// parameter (never by Monte Carlo), so the normalised samples have overall per-coordinate
/// std 1. For Ring5 this is sqrt(0.09 + 4.5) = 2.1424 (method.md section 7).
#pragma once

#include <array>
#include <cctype>
#include <cmath>
#include <flowprior/analytic/gaussian_mixture.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace data {

/// The 2-D targets (docs/toy_targets.md).
enum class Toy2D { Ring5, Grid16, Moons, Rings, Spiral, SwissRoll, Checkerboard };

/// All targets, in declaration order.
inline std::vector<Toy2D> all_toy2d() {
  return {Toy2D::Ring5,  Toy2D::Grid16,    Toy2D::Moons,       Toy2D::Rings,
          Toy2D::Spiral, Toy2D::SwissRoll, Toy2D::Checkerboard};
}

/// "ring5", "grid16", "moons", "rings", "spiral", "swissroll", "checkerboard".
inline std::string to_string(Toy2D kind) {
  switch (kind) {
    case Toy2D::Ring5:
      return "ring5";
    case Toy2D::Grid16:
      return "grid16";
    case Toy2D::Moons:
      return "moons";
    case Toy2D::Rings:
      return "rings";
    case Toy2D::Spiral:
      return "spiral";
    case Toy2D::SwissRoll:
      return "swissroll";
    case Toy2D::Checkerboard:
      return "checkerboard";
  }
  raise_config("data::to_string(Toy2D)", "unknown Toy2D value " + std::to_string(int(kind)));
}

/// Inverse of to_string (ASCII case-insensitive). Throws config_error listing the valid names.
inline Toy2D parse_toy2d(const std::string& name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string valid;
  for (Toy2D k : all_toy2d()) {
    if (lower == to_string(k)) return k;
    valid += (valid.empty() ? "" : ", ") + to_string(k);
  }
  raise_config("data::parse_toy2d", "unknown 2-D target '" + name + "' (valid: " + valid + ")");
}

namespace detail {

/// (Var x + Var y) / 2 of the noise-free curve point c(s), s in [0, 1] with (unnormalised)
/// density w(s), by composite Simpson quadrature over s (2048 intervals; the integrands have
/// at most 3 turns, so the error is far below 1e-12). The Simpson factor h / 3 cancels in the
/// ratios to the integrated weight m[0].
template <class Curve, class Weight>
double curve_pooled_variance(Curve&& c, Weight&& w) {
  const int n = 2048;
  double m[5] = {0, 0, 0, 0, 0};  // E[1], E[x], E[y], E[x^2], E[y^2]
  for (int i = 0; i <= n; ++i) {
    const double s = double(i) / n;
    const double q = (i == 0 || i == n) ? 1.0 : (i % 2 ? 4.0 : 2.0);
    const std::array<double, 2> p = c(s);
    const double f = q * w(s);
    m[0] += f;
    m[1] += f * p[0];
    m[2] += f * p[1];
    m[3] += f * p[0] * p[0];
    m[4] += f * p[1] * p[1];
  }
  const double mx = m[1] / m[0], my = m[2] / m[0];
  return 0.5 * ((m[3] / m[0] - mx * mx) + (m[4] / m[0] - my * my));
}

constexpr double kPi = 3.14159265358979323846;

}  // namespace detail

/// One 2-D target: its sampler in normalised units, its normalisation constant and, for the
/// mixtures, its exact density. Cheap to copy; const methods are safe to call concurrently
/// (each caller passes its own generator).
class ToyTarget {
 public:
  /// Raw-unit parameters shared by the constructions (docs/toy_targets.md).
  static constexpr double kNoise = 0.1;                  ///< isotropic Gaussian noise of the curves
  static constexpr double kMaxRadius = 4.0;              ///< Rings, Spiral, SwissRoll outer radius
  static constexpr double kTurns = 3.0;                  ///< Spiral and SwissRoll turns
  static constexpr double kSwissT0 = 1.5 * detail::kPi;  ///< SwissRoll start angle

  /// Builds the target and its normalisation constant (O(1) work, deterministic).
  static ToyTarget make(Toy2D kind) {
    ToyTarget t;
    t.kind_ = kind;
    const double n2 = kNoise * kNoise;
    const double pi = detail::kPi;
    switch (kind) {
      case Toy2D::Ring5: {
        // Per-coordinate E[x^2] = s^2 + R^2 mean_k cos^2(2 pi k / 5) = 0.09 + 9 / 2; mean 0.
        t.scale_ = std::sqrt(0.09 + 4.5);
        std::vector<double> means(10);
        for (int k = 0; k < 5; ++k) {
          const double a = 2 * pi * k / 5;
          means[std::size_t(2 * k)] = 3.0 * std::cos(a) / t.scale_;
          means[std::size_t(2 * k + 1)] = 3.0 * std::sin(a) / t.scale_;
        }
        t.mixture_ = analytic::GaussianMixture(ConstMatrixView<double>(means.data(), 2, 5),
                                               std::vector<double>(5, 0.3 / t.scale_),
                                               std::vector<double>(5, 1.0));
        t.has_mixture_ = true;
        break;
      }
      case Toy2D::Grid16: {
        // Per coordinate: s^2 + mean{1.5^2, 0.5^2, 0.5^2, 1.5^2} = 0.01 + 1.25; mean 0.
        t.scale_ = std::sqrt(0.01 + 1.25);
        std::vector<double> means(32);
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) {
            means[std::size_t(2 * (4 * i + j))] = (i - 1.5) / t.scale_;
            means[std::size_t(2 * (4 * i + j) + 1)] = (j - 1.5) / t.scale_;
          }
        t.mixture_ = analytic::GaussianMixture(ConstMatrixView<double>(means.data(), 2, 16),
                                               std::vector<double>(16, 0.1 / t.scale_),
                                               std::vector<double>(16, 1.0));
        t.has_mixture_ = true;
        break;
      }
      case Toy2D::Moons:
        // Centred moons: upper (2cos a - 1, 2 sin a - 1/2), lower = -upper, a ~ U[0, pi].
        // Var x = 4/2 + 1 = 3, Var y = 4/2 - 2 (2/pi) + 1/4; plus the noise in each coordinate.
        t.scale_ = std::sqrt(0.5 * ((3.0 + n2) + (2.25 - 4.0 / pi + n2)));
        break;
      case Toy2D::Rings:
        // Equal mass per ring, radii R/3, 2R/3, R: per coordinate E[r^2] / 2 + noise^2.
        t.scale_ = std::sqrt(kMaxRadius * kMaxRadius * (1.0 + 4.0 + 9.0) / 27.0 / 2.0 + n2);
        break;
      case Toy2D::Spiral:
        t.scale_ = std::sqrt(
            n2 + detail::curve_pooled_variance([](double s) { return spiral_point(s); },
                                               [](double s) { return 2 * s; }));  // s = sqrt(u)
        break;
      case Toy2D::SwissRoll:
        t.scale_ =
            std::sqrt(n2 + detail::curve_pooled_variance([](double u) { return swiss_point(u); },
                                                         [](double) { return 1.0; }));
        break;
      case Toy2D::Checkerboard:
        // Both marginals are uniform on [-2, 2]: variance 16 / 12.
        t.scale_ = std::sqrt(16.0 / 12.0);
        break;
      default:
        raise_config("ToyTarget::make", "unknown Toy2D value " + std::to_string(int(kind)));
    }
    return t;
  }

  /// Shorthand for make(parse_toy2d(name)).
  static ToyTarget make(const std::string& name) { return make(parse_toy2d(name)); }

  Toy2D kind() const { return kind_; }
  std::string name() const { return to_string(kind_); }
  /// The normalisation: raw samples are divided by this overall per-coordinate std.
  double scale() const { return scale_; }

  /// Fills out (2, n) with independent samples in normalised units, column by column. Uses only
  /// `rng` (a fixed seed gives the same samples on every machine; core/random.hpp).
  /// Draws per column: mixtures 1 uniform + 2 normals; Moons 2 uniforms + 2 normals; Rings 2
  /// uniforms + 2 normals; Spiral, SwissRoll 1 uniform + 2 normals; Checkerboard 3 uniforms.
  template <class S>
  void sample(MatrixView<S> out, Rng& rng) const {
    check_shape("ToyTarget::sample", "out", out, 2, out.cols);
    double p[2];
    for (Index b = 0; b < out.cols; ++b) {
      sample_one(p, rng);
      out(0, b) = static_cast<S>(p[0]);
      out(1, b) = static_cast<S>(p[1]);
    }
  }

  /// True for Ring5 and Grid16 (Gaussian mixtures); the others need a KDE (eval::Kde2D).
  bool has_exact_density() const { return has_mixture_; }

  /// The mixture in normalised units for Ring5 and Grid16; nullptr otherwise.
  const analytic::GaussianMixture* mixture() const { return has_mixture_ ? &mixture_ : nullptr; }

  /// Exact log density at x (2 values, normalised units) of a mixture target. Throws value_error
  /// for the others (estimate them with eval::Kde2D on samples).
  double log_density(const double* x) const {
    if (!has_mixture_)
      flowprior::detail::raise<value_error>(
          "[flowprior.value] ToyTarget::log_density: target '" + name() +
          "' has no closed-form density; use eval::Kde2D on samples");
    return mixture_.log_density(x);
  }

  /// The mixture means in normalised units (Ring5: 5, Grid16: 16); empty for the others.
  std::vector<std::array<double, 2>> modes() const {
    std::vector<std::array<double, 2>> m;
    if (!has_mixture_) return m;
    for (Index k = 0; k < mixture_.components(); ++k)
      m.push_back({mixture_.mean(k)[0], mixture_.mean(k)[1]});
    return m;
  }

  /// Spiral curve at parameter s in [0, 1]: theta = 2 pi turns s, r = R s (raw units).
  static std::array<double, 2> spiral_point(double s) {
    const double th = 2 * detail::kPi * kTurns * s, r = kMaxRadius * s;
    return {r * std::cos(th), r * std::sin(th)};
  }

  /// Swiss roll at parameter u in [0, 1]: t = t0 + 2 pi turns u, r = R t / t_max (raw units).
  static std::array<double, 2> swiss_point(double u) {
    const double t1 = kSwissT0 + 2 * detail::kPi * kTurns;
    const double t = kSwissT0 + (t1 - kSwissT0) * u, r = kMaxRadius * t / t1;
    return {r * std::cos(t), r * std::sin(t)};
  }

 private:
  ToyTarget() = default;

  /// One sample in normalised units into p[0..1].
  void sample_one(double* p, Rng& rng) const {
    const double pi = detail::kPi;
    double x = 0, y = 0;  // raw units (except the mixtures, sampled normalised directly)
    switch (kind_) {
      case Toy2D::Ring5:
      case Toy2D::Grid16: {
        const Index k = mixture_.pick_component(rng);
        const double s = mixture_.stddev(k);
        p[0] = mixture_.mean(k)[0] + s * normal01(rng);
        p[1] = mixture_.mean(k)[1] + s * normal01(rng);
        return;
      }
      case Toy2D::Moons: {
        const bool upper = uniform01(rng) < 0.5;
        const double a = pi * uniform01(rng);
        const double sgn = upper ? 1.0 : -1.0;
        x = sgn * (2 * std::cos(a) - 1.0);
        y = sgn * (2 * std::sin(a) - 0.5);
        break;
      }
      case Toy2D::Rings: {
        const double ring = std::floor(3 * uniform01(rng));  // 0, 1, 2
        const double r = kMaxRadius * (ring + 1) / 3, a = 2 * pi * uniform01(rng);
        x = r * std::cos(a);
        y = r * std::sin(a);
        break;
      }
      case Toy2D::Spiral: {
        const auto c = spiral_point(std::sqrt(uniform01(rng)));
        x = c[0];
        y = c[1];
        break;
      }
      case Toy2D::SwissRoll: {
        const auto c = swiss_point(uniform01(rng));
        x = c[0];
        y = c[1];
        break;
      }
      case Toy2D::Checkerboard: {
        // Cell (i, j) of [-2, 2]^2 (i, j in -2..1) is filled iff i + j is even.
        x = uniform(rng, -2.0, 2.0);
        const int i = static_cast<int>(std::floor(x));
        const int pick = uniform01(rng) < 0.5 ? 0 : 1;
        const int j = ((i % 2 + 2) % 2 == 0 ? -2 : -1) + 2 * pick;
        y = j + uniform01(rng);
        p[0] = x / scale_;
        p[1] = y / scale_;
        return;
      }
    }
    p[0] = (x + kNoise * normal01(rng)) / scale_;
    p[1] = (y + kNoise * normal01(rng)) / scale_;
  }

  Toy2D kind_ = Toy2D::Ring5;
  double scale_ = 1.0;
  bool has_mixture_ = false;
  analytic::GaussianMixture mixture_;
};

}  // namespace data
}  // namespace flowprior
