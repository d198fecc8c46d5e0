// The outputs of the image pipeline: the figures (image grids, training curves, the Fig. 4
// scatter), the Table-1-style markdown table, and metrics.json.
#pragma once

#include <flowprior/plot/figure.hpp>

#include "stages.hpp"

namespace flowprior {
namespace image_pipeline {

inline std::vector<double> json_doubles(const Json& j, const char* key) {
  std::vector<double> v;
  if (j.contains(key) && j[key].is_array())
    for (const auto& x : j[key]) v.push_back(x.get<double>());
  return v;
}

/// curves.png: reconstruction MSE and the probe's alignment loss per autoencoder, and each
/// prior's flow-matching loss.
inline void write_curves(const std::string& path, const std::vector<Autoencoder>& aes,
                         const std::vector<Target>& targets) {
  plot::Figure fig(3, 1, 420, 360, "training curves");
  auto& a = fig.panel(0, 0);
  a.set_title("autoencoders: training MSE").set_xlabel("step").set_ylabel("MSE");
  a.set_log_y().set_grid();
  auto& b = fig.panel(1, 0);
  b.set_title("alignment loss of held-out latents").set_xlabel("step").set_ylabel("L_align");
  b.set_grid();
  std::vector<plot::LegendEntry> legend;
  for (std::size_t i = 0; i < aes.size(); ++i) {
    const plot::Color col = plot::palette(int(i));
    const Json& r = aes[i].results;
    const auto s = json_doubles(r, "curve_step"), m = json_doubles(r, "curve_mse"),
               pl = json_doubles(r, "curve_probe_loss");
    if (!s.empty() && s.size() == m.size()) a.line(s.data(), m.data(), int(s.size()), col);
    if (!s.empty() && s.size() == pl.size()) b.line(s.data(), pl.data(), int(s.size()), col);
    legend.push_back({aes[i].spec.name, col, false});
  }
  if (!legend.empty()) a.legend(legend);
  auto& c = fig.panel(2, 0);
  c.set_title("priors: flow-matching loss").set_xlabel("step").set_ylabel("loss").set_grid();
  std::vector<plot::LegendEntry> tl;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const plot::Color col = plot::palette(int(i));
    const auto s = json_doubles(targets[i].results, "curve_step"),
               l = json_doubles(targets[i].results, "curve_loss");
    if (!s.empty() && s.size() == l.size()) c.line(s.data(), l.data(), int(s.size()), col);
    tl.push_back({targets[i].spec, col, false});
  }
  if (!tl.empty()) c.legend(tl);
  fig.save(path);
}

/// fig4_knn.png: the alignment loss of held-out latents against their mean distance to the 5
/// nearest target samples, at every probe of every autoencoder's training (the paper's Fig. 4).
inline void write_fig4(const std::string& path, const std::vector<Autoencoder>& aes) {
  plot::Figure fig(1, 1, 640, 480, "Fig. 4: L_align vs kNN distance");
  auto& a = fig.panel(0, 0);
  std::string target;
  std::vector<plot::LegendEntry> legend;
  for (std::size_t i = 0; i < aes.size(); ++i) {
    const auto l = json_doubles(aes[i].results, "curve_probe_loss"),
               k = json_doubles(aes[i].results, "curve_probe_knn");
    if (l.empty() || l.size() != k.size()) continue;
    target = aes[i].results.value("probe_target", std::string());
    a.scatter(k.data(), l.data(), int(k.size()), plot::palette(int(i)), 3.0, 0.8);
    legend.push_back({aes[i].spec.name, plot::palette(int(i)), true});
  }
  a.set_title("probes during training (target " + target + ")");
  a.set_xlabel("mean distance to the 5 nearest target samples").set_ylabel("alignment loss");
  a.set_grid();
  if (!legend.empty()) a.legend(legend, plot::Corner::bottom_right);
  fig.save(path);
}

inline std::string fmt(double v, int digits) {
  if (!std::isfinite(v)) return "-";
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

/// The Table-1-style table, one row per autoencoder.
inline std::string results_table(const std::vector<Autoencoder>& aes,
                                 const std::vector<Target>& targets) {
  std::string s = "| autoencoder | PSNR (dB) | rFID-like | gFID-like | linear probe | latent std";
  for (const auto& t : targets) s += " | latent NLL (" + t.spec + ")";
  s += " |\n|---|---|---|---|---|---";
  for (std::size_t i = 0; i < targets.size(); ++i) s += "|---";
  s += "|\n";
  for (const auto& ae : aes) {
    const Json& r = ae.results;
    auto num = [&](const char* key) {
      return r.contains(key) && r[key].is_number() ? r[key].get<double>()
                                                   : std::numeric_limits<double>::quiet_NaN();
    };
    s += "| " + ae.spec.name + " | " + fmt(num("psnr_db"), 2) + " | " + fmt(num("rfid_like"), 3) +
         " | " + fmt(num("gfid_like"), 3) + " | " + fmt(num("probe_test_accuracy"), 3) + " | " +
         fmt(num("latent_std"), 3);
    for (const auto& t : targets) {
      const double v = r.contains("latent_nll") && r["latent_nll"].contains(t.spec)
                           ? r["latent_nll"][t.spec].get<double>()
                           : std::numeric_limits<double>::quiet_NaN();
      s += " | " + fmt(v, 2);
    }
    s += " |\n";
  }
  return s;
}

}  // namespace image_pipeline
}  // namespace flowprior
