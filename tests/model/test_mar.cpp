// The MAR generator's model (nn/mar.hpp, docs/math/mar.md): layout and names, the head bound to
// its slice of the one flat vector (copies and moves rebind it), the backbone's parameter and
// input gradients against central differences in double at random non-degenerate parameters,
// the accumulate rule, masked inputs never read, the initialisation, and typed errors.
#include <cmath>
#include <cstdint>
#include <flowprior/nn/mar.hpp>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
using Catch::Matchers::Contains;

namespace {

nn::MarConfig tiny(bool qk_norm = false) {
  nn::MarConfig c;
  c.tokens = 4;
  c.token_dim = 3;
  c.width = 8;
  c.depth = 1;
  c.heads = 2;
  c.mlp_ratio = 2.0;
  c.qk_norm = qk_norm;
  c.head_width = 8;
  c.head_depth = 1;
  c.time_freq_dim = 8;
  return c;
}

using Model = nn::MarGenerator<double>;

// Random non-degenerate parameters: LayerNorm gains in [0.6, 1.4], weights of variance ~ 1 /
// fan_in, everything else in [-0.3, 0.3].
std::vector<double> random_params(const Model& m, Rng& rng) {
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  for (const auto& t : m.layout().tensors()) {
    double* q = h.data() + t.offset;
    const std::string& n = t.name;
    const bool norm = n.find("norm") != std::string::npos || n.find("_ln") != std::string::npos;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    if (norm && weight) {
      fpt::fill_uniform(q, t.size(), rng, 0.6, 1.4);
    } else if (weight && t.shape.size() == 2) {
      const double b = std::sqrt(3.0 / double(t.shape[1]));
      fpt::fill_uniform(q, t.size(), rng, -b, b);
    } else {
      fpt::fill_uniform(q, t.size(), rng, -0.3, 0.3);
    }
  }
  return h;
}

void set_params(Model& m, const std::vector<double>& h) {
  std::copy(h.begin(), h.end(), m.parameters().data);
}

// Per-tensor gradient check. A tensor whose true gradient is zero (k_norm.bias with qk_norm:
// softmax ignores a constant added to a row of scores) has a numeric gradient of rounding noise
// only; there both must be below 1e-8 instead of close in relative terms.
void close_or_zero(const std::string& name, const double* a, const double* n, Index size) {
  double na = 0, nn = 0;
  for (Index i = 0; i < size; ++i) {
    na += a[i] * a[i];
    nn += n[i] * n[i];
  }
  if (std::sqrt(nn) < 1e-8) {
    INFO(name << ": numeric gradient ~ 0, analytic norm " << std::sqrt(na));
    CHECK(std::sqrt(na) < 1e-8);
    return;
  }
  fpt::require_close(name, a, n, size, 1e-6);
}

ConstVectorView<std::uint8_t> view(const std::vector<std::uint8_t>& m) {
  return {m.data(), Index(m.size())};
}

}  // namespace

TEST_CASE("mar: layout, names and shapes; the head runs on its slice", "[mar]") {
  Model m(tiny());
  const auto& L = m.layout();
  REQUIRE(L.tensors().front().name == "z_proj.weight");
  REQUIRE(L.at("z_proj.weight").shape == std::vector<Index>{8, 3});
  REQUIRE(L.at("z_proj.bias").shape == std::vector<Index>{8});
  REQUIRE(L.at("mask_token").shape == std::vector<Index>{1, 1, 8});
  REQUIRE(L.at("pos_embed").shape == std::vector<Index>{1, 4, 8});
  REQUIRE(L.at("blocks.0.attn.qkv.weight").shape == std::vector<Index>{24, 8});
  REQUIRE(L.at("blocks.0.mlp.fc1.weight").shape == std::vector<Index>{16, 8});
  REQUIRE(L.at("norm.weight").shape == std::vector<Index>{8});
  REQUIRE(L.find("blocks.1.norm1.weight") == nullptr);
  // The head: every AdaLNMlp tensor under diffloss.net.*, in its order, at the head's offset.
  const auto& H = m.head().layout();
  REQUIRE(m.head().config().cond_dim == 8);
  REQUIRE(m.head().dim() == 3);
  REQUIRE(m.head_offset() == L.at("norm.bias").offset + 8);
  REQUIRE(L.at("diffloss.net.cond_embed.weight").shape == std::vector<Index>{8, 8});
  for (const auto& t : H.tensors()) {
    const auto& mt = L.at("diffloss.net." + t.name);
    REQUIRE(mt.offset == m.head_offset() + t.offset);
    REQUIRE(mt.shape == t.shape);
  }
  REQUIRE(L.tensors().back().name == "diffloss.net." + H.tensors().back().name);
  REQUIRE(m.num_params() == m.head_offset() + m.head().num_params());
  REQUIRE(m.head().parameters().data == m.parameters().data + m.head_offset());
  // Copies and moves rebind the head to their own vector.
  Model c(m);
  REQUIRE(c.parameters().data != m.parameters().data);
  REQUIRE(c.head().parameters().data == c.parameters().data + c.head_offset());
  Model mv(std::move(c));
  REQUIRE(mv.head().parameters().data == mv.parameters().data + mv.head_offset());
  Model a(tiny(true));
  a = m;
  REQUIRE(a.layout().find("blocks.0.attn.q_norm.weight") == nullptr);
  REQUIRE(a.head().parameters().data == a.parameters().data + a.head_offset());
  // entries name every field.
  REQUIRE(tiny().entries().size() == 11);
  REQUIRE(tiny().entries()[0] == std::make_pair(std::string("tokens"), std::string("4")));
}

TEST_CASE("mar: init gives unit LayerNorms, small tokens, and a zero head", "[mar]") {
  Model m(tiny());
  Rng rng(3);
  m.init(rng);
  const double* p = m.parameters().data;
  const auto& L = m.layout();
  for (Index i = 0; i < 8; ++i) {
    REQUIRE(p[L.at("norm.weight").offset + i] == 1.0);
    REQUIRE(p[L.at("norm.bias").offset + i] == 0.0);
    REQUIRE(std::abs(p[L.at("mask_token").offset + i]) < 0.2);
  }
  // The head's final layer starts at zero (v == 0), written through the bound slice.
  const auto& fin = L.at("diffloss.net.final_layer.linear.weight");
  for (Index i = 0; i < fin.size(); ++i) REQUIRE(p[fin.offset + i] == 0.0);
  const auto& te = L.at("diffloss.net.time_embed.mlp.0.weight");
  double ss = 0;
  for (Index i = 0; i < te.size(); ++i) ss += p[te.offset + i] * p[te.offset + i];
  REQUIRE(ss > 0);
  Model m2(tiny());
  Rng rng2(3);
  m2.init(rng2);
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(m2.parameters()[i] == p[i]);
}

TEST_CASE("mar: backbone gradients against central differences", "[mar][grad]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Model m(tiny(qk_norm));
  Rng rng(17);
  set_params(m, random_params(m, rng));
  const Index B = 2, T = 4, BT = B * T, P = m.num_params();
  Mat x = fpt::random_mat(3, BT, rng, -1.5, 1.5);
  const Mat u = fpt::random_mat(8, BT, rng);
  std::vector<std::uint8_t> mask = {1, 0, 0, 1, 1, 1, 0, 1};
  Model::Workspace ws;
  Mat c(8, BT);
  double* p = m.parameters().data;
  auto loss = [&] {
    m.forward(x, view(mask), c, ws);
    return fpt::dot(u, c);
  };
  loss();
  REQUIRE(ws.masked() == 5);
  Vec dp = Vec::Constant(P, 0.25);
  Mat dx = Mat::Constant(3, BT, 0.5);
  m.backward(ws, u, dp, dx);
  dp.array() -= 0.25;
  dx.array() -= 0.5;
  const std::vector<double> num = fpt::fd_gradient(loss, p, P);
  for (const auto& t : m.layout().tensors()) {
    if (t.offset >= m.head_offset()) break;
    close_or_zero(t.name, dp.data() + t.offset, num.data() + t.offset, t.size());
  }
  // The head's slice is untouched by the backbone's backward (its FD gradient is 0 too).
  for (Index i = m.head_offset(); i < P; ++i) REQUIRE(dp[i] == 0.0);
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, x.data(), x.size()), 1e-6);
  // Masked columns of x get no gradient; unmasked ones do.
  for (Index j = 0; j < BT; ++j)
    if (mask[std::size_t(j)]) REQUIRE(dx.col(j).norm() == 0.0);
  REQUIRE(dx.col(1).norm() > 0);
  // Accumulation: backward twice gives exactly twice.
  loss();
  Vec d1 = Vec::Zero(P), d2 = Vec::Zero(P);
  m.backward(ws, u, d1);
  m.backward(ws, u, d2);
  m.backward(ws, u, d2);
  REQUIRE((d2 - 2 * d1).norm() <= 1e-13 * d2.norm());
  // All masked: z_proj gets no gradient, mask_token all of it.
  std::vector<std::uint8_t> all(BT, 1);
  m.forward(x, view(all), c, ws);
  Vec d3 = Vec::Zero(P);
  m.backward(ws, u, d3);
  const auto& zw = m.layout().at("z_proj.weight");
  REQUIRE(d3.segment(zw.offset, zw.size() + 8).norm() == 0.0);
  REQUIRE(d3.segment(m.layout().at("mask_token").offset, 8).norm() > 0);
}

TEST_CASE("mar: masked inputs are never read; images do not see each other", "[mar]") {
  Model m(tiny());
  Rng rng(5);
  set_params(m, random_params(m, rng));
  const Index BT = 8;
  Mat x = fpt::random_mat(3, BT, rng);
  std::vector<std::uint8_t> mask = {0, 1, 0, 0, 1, 1, 0, 0};
  Model::Workspace ws;
  Mat c1(8, BT), c2(8, BT), c3(8, BT);
  m.forward(x, view(mask), c1, ws);
  Mat x2 = x;
  x2.col(1).setConstant(std::nan(""));
  x2.col(4).setConstant(1e3);
  m.forward(x2, view(mask), c2, ws);
  REQUIRE(c1 == c2);
  // Changing image 1 leaves image 0's outputs alone.
  Mat x3 = x;
  x3.col(6).array() += 1.0;
  m.forward(x3, view(mask), c3, ws);
  REQUIRE(c3.leftCols(4) == c1.leftCols(4));
  REQUIRE(c3.rightCols(4) != c1.rightCols(4));
}

TEST_CASE("mar: bad configurations and inputs are typed errors", "[mar]") {
  using flowprior::config_error;
  using flowprior::shape_error;
  auto bad = [](auto edit, const char* field) {
    nn::MarConfig c = tiny();
    edit(c);
    REQUIRE_THROWS_AS(Model(c), config_error);
    REQUIRE_THROWS_WITH(Model(c), Contains(field));
  };
  bad([](nn::MarConfig& c) { c.tokens = 0; }, "tokens");
  bad([](nn::MarConfig& c) { c.token_dim = 0; }, "token_dim");
  bad([](nn::MarConfig& c) { c.heads = 3; }, "heads");
  bad([](nn::MarConfig& c) { c.depth = 0; }, "depth");
  bad([](nn::MarConfig& c) { c.head_depth = -1; }, "head_depth");
  bad([](nn::MarConfig& c) { c.head_width = 0; }, "head_width");
  bad([](nn::MarConfig& c) { c.time_freq_dim = 7; }, "time_freq_dim");
  bad([](nn::MarConfig& c) { c.mlp_ratio = 0.0; }, "mlp_ratio");
  bad([](nn::MarConfig& c) { c.ln_eps = 0.0; }, "ln_eps");
  bad([](nn::MarConfig& c) { c.tokens = Index(1) << 62; }, "tokens x width");

  Model m(tiny());
  Rng rng(1);
  m.init(rng);
  Model::Workspace ws;
  std::vector<std::uint8_t> mask(8, 0);
  Mat x(3, 8), c(8, 8);
  x.setZero();
  REQUIRE_THROWS_AS(m.forward(Mat(2, 8), view(mask), c, ws), shape_error);
  REQUIRE_THROWS_WITH(m.forward(Mat(3, 6), view(mask), c, ws),
                      Contains("'x'") && Contains("(3, 6)") && Contains("B x 4"));
  REQUIRE_THROWS_WITH(m.forward(x, view(std::vector<std::uint8_t>(7, 0)), c, ws),
                      Contains("'mask'") && Contains("7") && Contains("8"));
  REQUIRE_THROWS_WITH(m.forward(x, view(mask), Mat(8, 4), ws), Contains("'c'"));
  Vec dp = Vec::Zero(m.num_params());
  REQUIRE_THROWS_AS(m.backward(ws, c, dp), flowprior::error);  // no forward yet
  m.forward(x, view(mask), c, ws);
  REQUIRE_THROWS_WITH(m.backward(ws, Mat(8, 4), dp), Contains("'d_c'"));
  REQUIRE_THROWS_WITH(m.backward(ws, c, Vec(3)), Contains("'d_params'"));
  Mat dx(3, 4);
  REQUIRE_THROWS_WITH(m.backward(ws, c, dp, dx), Contains("'d_x'"));
  // The head keeps AdaLNMlp's checks; binding checks the storage's size.
  nn::AdaLNMlp<double> h(tiny().head_config());
  Vec small(3);
  REQUIRE_THROWS_AS(h.use_parameters(small), shape_error);
}

TEST_CASE("mar: float agrees with double", "[mar]") {
  Model md(tiny(true));
  nn::MarGenerator<float> mf(tiny(true));
  Rng rng(9);
  set_params(md, random_params(md, rng));
  for (Index i = 0; i < md.num_params(); ++i) mf.parameters()[i] = float(md.parameters()[i]);
  const Index BT = 8;
  const Mat x = fpt::random_mat(3, BT, rng);
  const Mat u = fpt::random_mat(8, BT, rng);
  const Eigen::MatrixXf xf = x.cast<float>(), uf = u.cast<float>();
  std::vector<std::uint8_t> mask = {0, 1, 1, 0, 1, 0, 0, 1};
  Model::Workspace wd;
  nn::MarGenerator<float>::Workspace wf;
  Mat cd(8, BT);
  Eigen::MatrixXf cf(8, BT);
  md.forward(x, view(mask), cd, wd);
  mf.forward(xf, view(mask), cf, wf);
  REQUIRE((cf.cast<double>() - cd).norm() <= 1e-5 * cd.norm());
  Vec gd = Vec::Zero(md.num_params());
  Eigen::VectorXf gf = Eigen::VectorXf::Zero(mf.num_params());
  md.backward(wd, u, gd);
  mf.backward(wf, uf, gf);
  REQUIRE((gf.cast<double>() - gd).norm() <= 1e-4 * gd.norm());
}
