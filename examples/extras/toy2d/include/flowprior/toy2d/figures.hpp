/// @file
/// The figures of the 2-D pipeline (needs the plot module: link flowprior::plot):
///
///   samples.png    target samples | samples of the trained prior (ODE)
///   landscape.png  alignment loss (trained) | alignment loss (exact field, mixtures) | NLL
///   latents.png    latents before | after alignment with the trained prior | with the exact
///                  field, over the target samples
///   curves.png     prior training loss | alignment loss over the steps | mean NLL over the steps
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/plot/figure.hpp>
#include <flowprior/toy2d/pipeline.hpp>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace flowprior {
namespace pipeline {

namespace detail {

inline void scatter_cols(plot::Axes& ax, const Eigen::MatrixXd& m, plot::Color c, double radius,
                         double alpha) {
  if (m.cols() == 0) return;
  const Eigen::VectorXd x = m.row(0).transpose(), y = m.row(1).transpose();
  ax.scatter(x.data(), y.data(), int(x.size()), c, radius, alpha);
}

/// True when [x0, x1] x [y0, y1] can be an Axes' limits (finite, non-empty).
inline bool usable_box(double x0, double x1, double y0, double y1) {
  return std::isfinite(x0) && std::isfinite(x1) && std::isfinite(y0) && std::isfinite(y1) &&
         x0 != x1 && y0 != y1;
}

/// The data range of the run, or autoscale when it is unusable (a diverged run).
inline void frame(plot::Axes& ax, const Toy2dResult& r, const std::string& title) {
  if (usable_box(r.x0, r.x1, r.y0, r.y1)) ax.set_limits(r.x0, r.x1, r.y0, r.y1);
  ax.set_equal_aspect().set_title(title);
}

inline std::vector<double> finite_or(const std::vector<double>& v) {
  std::vector<double> o;
  for (double x : v)
    if (std::isfinite(x)) o.push_back(x);
  return o;
}

/// Colour range [q_lo, q_hi] quantiles of the finite values (robust to far-out extremes);
/// always finite with lo < hi (constant values, even huge ones, get a widened range).
inline void percentile_range(const std::vector<double>& v, double& lo, double& hi,
                             double q_lo = 0.01, double q_hi = 0.99) {
  std::vector<double> s = finite_or(v);
  std::sort(s.begin(), s.end());
  auto at = [&](double q) { return s[std::size_t(q * double(s.size() - 1) + 0.5)]; };
  lo = s.empty() ? 0 : at(q_lo);
  hi = s.empty() ? 1 : at(q_hi);
  if (!(hi > lo)) hi = lo + 1;
  if (!(hi > lo)) {  // lo + 1 == lo beyond 2^53
    const double big = std::numeric_limits<double>::max();
    std::tie(lo, hi) = plot::detail::usable_range(lo, lo, -big, big);
  }
}

}  // namespace detail

/// Writes the four figures into out_dir; returns their paths.
inline std::vector<std::string> write_toy2d_figures(const Toy2dResult& r,
                                                    const std::string& out_dir) {
  std::vector<std::string> paths;
  const plot::Color target_c = plot::palette(7), prior_c = plot::palette(0),
                    exact_c = plot::palette(1), start_c = plot::palette(2);
  {  // samples.png
    plot::Figure fig(2, 1, 420, 420, "target " + r.target + " vs samples of the trained prior");
    auto& a = fig.panel(0, 0);
    detail::frame(a, r, "target samples");
    detail::scatter_cols(a, r.target_samples, target_c, 1.6, 0.5);
    auto& b = fig.panel(1, 0);
    detail::frame(b, r, "prior samples (ODE)");
    detail::scatter_cols(b, r.prior_samples, prior_c, 1.6, 0.5);
    paths.push_back(out_dir + "/samples.png");
    fig.save(paths.back());
  }
  {  // landscape.png: a shared colour range for both alignment-loss panels
    const bool ex = !r.grid_align_exact.empty();
    plot::Figure fig(ex ? 3 : 2, 1, 420, 420, "alignment-loss landscape vs NLL (" + r.target + ")");
    double lo, hi;
    std::vector<double> both = r.grid_align_trained;
    both.insert(both.end(), r.grid_align_exact.begin(), r.grid_align_exact.end());
    detail::percentile_range(both, lo, hi);
    int col = 0;
    auto panel = [&](const std::vector<double>& v, const std::string& title, double vmin,
                     double vmax, const std::string& label) {
      auto& ax = fig.panel(col++, 0);
      detail::frame(ax, r, title);
      const Index G = r.grid;
      if (G < 2 || G > 32768 || v.size() != std::size_t(G * G)) return;  // no grid to show
      const double hx = (r.x1 - r.x0) / (2.0 * double(G - 1)),
                   hy = (r.y1 - r.y0) / (2.0 * double(G - 1));
      if (!detail::usable_box(r.x0 - hx, r.x1 + hx, r.y0 - hy, r.y1 + hy)) return;
      ax.heatmap(v.data(), int(G), int(G), r.x0 - hx, r.x1 + hx, r.y0 - hy, r.y1 + hy,
                 plot::viridis, vmin, vmax);
      ax.colorbar(label);
    };
    char t[128];
    std::snprintf(t, sizeof t, "L_align, trained (r=%.3f)", r.pearson_trained);
    panel(r.grid_align_trained, t, lo, hi, "L_align");
    if (ex) {
      std::snprintf(t, sizeof t, "L_align, exact field (r=%.3f)", r.pearson_exact);
      panel(r.grid_align_exact, t, lo, hi, "L_align");
    }
    double nlo, nhi;
    // The NLL grows quadratically far from the data and would wash out the structure near it:
    // the colour range stops at the 85% quantile (brighter cells are clipped).
    detail::percentile_range(r.grid_nll, nlo, nhi, 0.0, 0.85);
    panel(r.grid_nll,
          std::string("NLL of the target (") + (r.exact_density ? "exact" : "KDE") + ")", nlo, nhi,
          "NLL");
    paths.push_back(out_dir + "/landscape.png");
    fig.save(paths.back());
  }
  {  // latents.png
    const bool ex = r.latents_exact.cols() > 0;
    plot::Figure fig(ex ? 3 : 2, 1, 420, 420, "free latents aligned by L_align alone");
    int col = 0;
    auto panel = [&](const Eigen::MatrixXd& y, const std::string& title, plot::Color c) {
      auto& ax = fig.panel(col++, 0);
      detail::frame(ax, r, title);
      detail::scatter_cols(ax, r.target_samples, target_c, 1.2, 0.25);
      detail::scatter_cols(ax, y, c, 1.8, 0.7);
      ax.legend({{"target", target_c, true}, {"latents", c, true}}, plot::Corner::top_right);
    };
    panel(r.latents_start, "latents at the start (N(0, I))", start_c);
    char t[128];
    std::snprintf(t, sizeof t, "after %g steps, trained prior",
                  r.track_step.empty() ? 0.0 : r.track_step.back());
    panel(r.latents_trained, t, prior_c);
    if (ex) panel(r.latents_exact, "exact field, same steps", exact_c);
    paths.push_back(out_dir + "/latents.png");
    fig.save(paths.back());
  }
  {  // curves.png
    plot::Figure fig(3, 1, 420, 400, "training and alignment curves");
    auto& a = fig.panel(0, 0);
    a.set_title("prior: flow-matching loss").set_xlabel("step").set_ylabel("loss");
    const std::size_t n_train = std::min(r.train_step.size(), r.train_loss.size());
    if (n_train > 0) a.line(r.train_step.data(), r.train_loss.data(), int(n_train), prior_c);
    auto curve = [&](plot::Axes& ax, const std::vector<double>& tr, const std::vector<double>& ex,
                     bool log_y) {
      const std::size_t n = std::min(r.track_step.size(), tr.size());
      std::vector<double> xs(r.track_step.begin(), r.track_step.begin() + long(n)),
          ys(tr.begin(), tr.begin() + long(n));
      std::vector<double> fx, fy;
      for (std::size_t i = 0; i < n; ++i)
        if (std::isfinite(ys[i]) && (!log_y || ys[i] > 0)) {
          fx.push_back(xs[i]);
          fy.push_back(ys[i]);
        }
      if (!fx.empty()) ax.line(fx.data(), fy.data(), int(fx.size()), prior_c);
      std::vector<plot::LegendEntry> leg = {{"trained prior", prior_c, false}};
      if (!ex.empty()) {
        fx.clear();
        fy.clear();
        for (std::size_t i = 0; i < std::min(r.track_step.size(), ex.size()); ++i)
          if (std::isfinite(ex[i]) && (!log_y || ex[i] > 0)) {
            fx.push_back(r.track_step[i]);
            fy.push_back(ex[i]);
          }
        if (!fx.empty()) ax.line(fx.data(), fy.data(), int(fx.size()), exact_c);
        leg.push_back({"exact field", exact_c, false});
      }
      if (log_y) ax.set_log_y();
      ax.legend(leg, plot::Corner::top_right);
    };
    auto& b = fig.panel(1, 0);
    b.set_title("latents: mean L_align").set_xlabel("step").set_ylabel("L_align");
    curve(b, r.track_loss_trained, r.track_loss_exact, false);
    auto& c = fig.panel(2, 0);
    c.set_title("latents: mean NLL (target)").set_xlabel("step").set_ylabel("NLL");
    std::vector<double> shift_t = r.track_nll_trained, shift_e = r.track_nll_exact;
    curve(c, shift_t, shift_e, false);
    paths.push_back(out_dir + "/curves.png");
    fig.save(paths.back());
  }
  return paths;
}

}  // namespace pipeline
}  // namespace flowprior
