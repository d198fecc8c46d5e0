// The tokenizer autoencoder (nn/tokenizer.hpp, docs/math/tokenizer.md): parameter and input
// gradients of both halves against central differences in double at random non-degenerate
// parameters, the extra gradient on y entering exactly, encode + decode equal to forward, images
// of a batch independent of each other, typed errors, the state dict round trip, the
// initialisation, the learned positional embeddings (layout, gradients, init, the same bits as
// the fixed table when they hold it), and the guarded backend (no host access to backend memory,
// same bits).
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"
#include "guarded_backend.hpp"

using flowprior::ConstMatrixView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::GuardedBackend;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace io = flowprior::io;
using Catch::Matchers::Contains;

namespace {

nn::TokenizerConfig tiny(bool qk_norm = false, bool learned_pos_embed = false) {
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 2;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 1;
  c.dec_depth = 1;
  c.latent_tokens = 2;
  c.latent_dim = 3;
  c.qk_norm = qk_norm;
  c.learned_pos_embed = learned_pos_embed;
  return c;
}

// Random non-degenerate parameters: LayerNorm gains around 1, weights of variance ~ 1 / fan_in,
// everything else (biases, tokens, embeddings) in [-0.3, 0.3].
template <class Model>
std::vector<double> random_params(const Model& m, Rng& rng) {
  std::vector<double> h(static_cast<std::size_t>(m.num_params()));
  for (const auto& t : m.layout().tensors()) {
    double* q = h.data() + t.offset;
    const std::string& n = t.name;
    const bool norm = n.find("norm") != std::string::npos;
    const bool weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
    if (norm && weight) {
      fpt::fill_uniform(q, t.size(), rng, 0.6, 1.4);
    } else if (weight) {
      const double b = std::sqrt(3.0 / double(t.size() / t.shape[0]));
      fpt::fill_uniform(q, t.size(), rng, -b, b);
    } else {
      fpt::fill_uniform(q, t.size(), rng, -0.3, 0.3);
    }
  }
  return h;
}

template <class Model>
void set_params(Model& m, const std::vector<double>& h) {
  using Backend = typename Model::BackendType;
  Backend::copy_from_host(h.data(), m.num_params(), m.parameters().data);
}

using Model = nn::TokenizerAE<double>;

// The model and a batch: images x (C H W, B) and the weights of L = <w1, recon> + <w2, y>.
struct Problem {
  Model m;
  Mat x, w1, w2;
  Index B;
  Problem(const nn::TokenizerConfig& cfg, Index batch, std::uint64_t seed) : m(cfg), B(batch) {
    Rng rng(seed);
    set_params(m, random_params(m, rng));
    const Index T = cfg.latent_tokens;
    x = fpt::random_mat(m.image_dim(), B, rng);
    w1 = fpt::random_mat(m.image_dim(), B, rng);
    w2 = fpt::random_mat(cfg.latent_dim, B * T, rng);
  }
  Index ydim() const { return m.config().latent_dim; }
  Index ycols() const { return B * m.config().latent_tokens; }
};

}  // namespace

TEST_CASE("tokenizer: layout, names and shapes", "[tokenizer]") {
  Model m(tiny());
  REQUIRE(m.num_patches() == 4);
  REQUIRE(m.seq_len() == 6);
  REQUIRE(m.image_dim() == 32);
  const auto& L = m.layout();
  REQUIRE(L.tensors().front().name == "encoder.latent_tokens");
  REQUIRE(L.at("encoder.latent_tokens").shape == std::vector<Index>{2, 8});
  REQUIRE(L.at("encoder.latent_pos_embed").shape == std::vector<Index>{2, 8});
  REQUIRE(L.at("encoder.patch_embed.proj.weight").shape == std::vector<Index>{8, 2, 2, 2});
  REQUIRE(L.at("encoder.patch_embed.proj.bias").shape == std::vector<Index>{8});
  REQUIRE(L.at("encoder.blocks.0.attn.qkv.weight").shape == std::vector<Index>{24, 8});
  REQUIRE(L.at("encoder.blocks.0.mlp.fc1.weight").shape == std::vector<Index>{32, 8});
  REQUIRE(L.at("encoder.norm.weight").shape == std::vector<Index>{8});
  REQUIRE(L.at("encoder.to_latent.weight").shape == std::vector<Index>{3, 8});
  REQUIRE(L.at("decoder.mask_token").shape == std::vector<Index>{1, 8});
  REQUIRE(L.at("decoder.latent_pos_embed").shape == std::vector<Index>{2, 8});
  REQUIRE(L.at("decoder.from_latent.weight").shape == std::vector<Index>{8, 3});
  REQUIRE(L.at("decoder.blocks.0.norm2.bias").shape == std::vector<Index>{8});
  REQUIRE(L.at("decoder.norm.bias").shape == std::vector<Index>{8});
  REQUIRE(L.at("decoder.pixel_head.weight").shape == std::vector<Index>{8, 8});
  REQUIRE(L.tensors().back().name == "decoder.pixel_head.bias");
  REQUIRE(L.find("decoder.blocks.1.norm1.weight") == nullptr);
  // dec_depth -1 follows depth.
  nn::TokenizerConfig c = tiny();
  c.depth = 2;
  c.dec_depth = -1;
  Model m2(c);
  REQUIRE(m2.layout().find("decoder.blocks.1.norm1.weight") != nullptr);
  REQUIRE(m2.layout().find("decoder.blocks.2.norm1.weight") == nullptr);
}

TEST_CASE("tokenizer: parameter and input gradients against central differences",
          "[tokenizer][grad]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Problem pr(tiny(qk_norm), 2, 91);
  Model& m = pr.m;
  Model::Workspace ws;
  Mat y(pr.ydim(), pr.ycols()), recon(m.image_dim(), pr.B);
  const Index P = m.num_params();
  double* p = m.parameters().data;  // host memory on the CPU backend
  auto loss1 = [&] {
    m.forward(pr.x, y, recon, ws);
    return fpt::dot(pr.w1, recon);
  };
  auto loss2 = [&] {
    m.forward(pr.x, y, recon, ws);
    return fpt::dot(pr.w2, y);
  };
  auto loss = [&] {
    m.forward(pr.x, y, recon, ws);
    return fpt::dot(pr.w1, recon) + fpt::dot(pr.w2, y);
  };
  // The whole loss: d_recon = w1, d_y_extra = w2; gradients accumulate onto non-zero buffers.
  loss();
  Vec dp = Vec::Constant(P, 0.25);
  Mat dx = Mat::Constant(m.image_dim(), pr.B, 0.5);
  m.backward(ws, pr.w1, pr.w2, dp, dx);
  dp.array() -= 0.25;
  dx.array() -= 0.5;
  fpt::require_close("d_params", dp.data(), fpt::fd_gradient(loss, p, P), 1e-6);
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, pr.x.data(), pr.x.size()), 1e-6);
  // Without d_y_extra: the gradient of <w1, recon> alone; no d_x wanted.
  loss();
  Vec dp1 = Vec::Zero(P);
  m.backward(ws, pr.w1, ConstMatrixView<double>(), dp1, MatrixView<double>());
  fpt::require_close("d_params of <w1, recon>", dp1.data(), fpt::fd_gradient(loss1, p, P), 1e-6);
  // d_y_extra enters exactly: the difference is the gradient of <w2, y>, nothing of it reaches
  // the decoder's parameters, and the decoder's are bit for bit those of <w1, recon>.
  loss();
  Vec dp12 = Vec::Zero(P);  // from zero, for exact comparisons
  m.backward(ws, pr.w1, pr.w2, dp12, MatrixView<double>());
  const Vec d2 = dp12 - dp1;
  fpt::require_close("d_params of <w2, y>", d2.data(), fpt::fd_gradient(loss2, p, P), 1e-6);
  for (const auto& t : m.layout().tensors()) {
    if (t.name.rfind("decoder.", 0) != 0) continue;
    for (Index i = 0; i < t.size(); ++i) REQUIRE(dp12[t.offset + i] == dp1[t.offset + i]);
  }
  // The extra gradient alone with d_recon zero: exactly the encoder's gradient of <w2, y>.
  loss();
  Vec dp2 = Vec::Zero(P);
  Mat dx2 = Mat::Zero(m.image_dim(), pr.B);
  const Mat zero = Mat::Zero(m.image_dim(), pr.B);
  m.backward(ws, zero, pr.w2, dp2, dx2);
  fpt::require_close("d_params of <w2, y> alone", dp2.data(), d2.data(), P, 1e-12);
  fpt::require_close("d_x of <w2, y>", dx2.data(),
                     fpt::fd_gradient(loss2, pr.x.data(), pr.x.size()), 1e-6);
}

TEST_CASE("tokenizer: encode then decode equals forward; images do not see each other",
          "[tokenizer]") {
  Problem pr(tiny(true), 3, 92);
  Model& m = pr.m;
  Model::Workspace ws, ws2;
  Mat y(pr.ydim(), pr.ycols()), recon(m.image_dim(), pr.B);
  m.forward(pr.x, y, recon, ws);
  Mat ye(pr.ydim(), pr.ycols()), rd(m.image_dim(), pr.B);
  m.encode(pr.x, ye, ws2);
  m.decode(ye, rd, ws2);
  REQUIRE(ye == y);
  REQUIRE(rd == recon);
  // Batch of one, then the same in a batch of three.
  Mat y1(pr.ydim(), m.config().latent_tokens), r1(m.image_dim(), 1);
  m.forward(pr.x.col(1), y1, r1, ws2);
  const Index T = m.config().latent_tokens;
  REQUIRE((y1 - y.middleCols(T, T)).norm() <= 1e-13 * y1.norm());
  REQUIRE((r1 - recon.col(1)).norm() <= 1e-13 * r1.norm());
  // Changing image 2 changes neither image 0's latents nor its reconstruction.
  Mat x2 = pr.x;
  x2.col(2).setConstant(0.7);
  Mat y2(pr.ydim(), pr.ycols()), rec2(m.image_dim(), pr.B);
  m.forward(x2, y2, rec2, ws);
  REQUIRE(y2.leftCols(2 * T) == y.leftCols(2 * T));
  REQUIRE(rec2.leftCols(2) == recon.leftCols(2));
  REQUIRE(rec2.col(2) != recon.col(2));
  // A workspace reused at another batch size lays itself out again.
  m.forward(pr.x, y2, rec2, ws);
  REQUIRE(y2 == y);
  REQUIRE(rec2 == recon);
}

TEST_CASE("tokenizer: typed errors for bad configurations and shapes", "[tokenizer][errors]") {
  using flowprior::config_error;
  using flowprior::shape_error;
  auto bad = [](auto edit, const char* field) {
    nn::TokenizerConfig c = tiny();
    edit(c);
    INFO(field);
    REQUIRE_THROWS_AS(c.validate(), config_error);
    REQUIRE_THROWS_WITH(Model(c), Contains(field));
  };
  bad([](nn::TokenizerConfig& c) { c.image_size = 0; }, "image_size");
  bad([](nn::TokenizerConfig& c) { c.channels = 0; }, "channels");
  bad([](nn::TokenizerConfig& c) { c.patch = 3; }, "patch");
  bad([](nn::TokenizerConfig& c) { c.width = 0; }, "width");
  bad([](nn::TokenizerConfig& c) { c.width = 6; }, "width");  // heads 2 divide it, 4 does not
  bad([](nn::TokenizerConfig& c) { c.heads = 3; }, "heads");
  bad([](nn::TokenizerConfig& c) { c.depth = 0; }, "depth");
  bad([](nn::TokenizerConfig& c) { c.dec_depth = 0; }, "dec_depth");
  bad([](nn::TokenizerConfig& c) { c.latent_tokens = 0; }, "latent_tokens");
  bad([](nn::TokenizerConfig& c) { c.latent_dim = 0; }, "latent_dim");
  bad([](nn::TokenizerConfig& c) { c.mlp_ratio = 0.0; }, "mlp_ratio");
  bad([](nn::TokenizerConfig& c) { c.mlp_ratio = 1e30; }, "mlp_ratio");
  bad([](nn::TokenizerConfig& c) { c.mlp_ratio = std::nan(""); }, "mlp_ratio");
  nn::TokenizerConfig huge = tiny();
  huge.width = Index(1) << 40;  // valid, but not in memory
  REQUIRE_THROWS_WITH(Model(huge), Contains("too large"));
  bad([](nn::TokenizerConfig& c) { c.ln_eps = 0.0; }, "ln_eps");
  REQUIRE_NOTHROW(tiny().validate());

  Problem pr(tiny(), 2, 93);
  Model& m = pr.m;
  Model::Workspace ws;
  const Index D = m.image_dim(), d = pr.ydim(), BT = pr.ycols();
  Mat y(d, BT), recon(D, 2);
  Vec dp = Vec::Zero(m.num_params());
  Mat dx = Mat::Zero(D, 2);
  // backward before any forward
  REQUIRE_THROWS_AS(m.backward(ws, pr.w1, pr.w2, dp, dx), flowprior::error);
  Mat xb(D + 1, 2), yb(d, BT + 1), rb(D, 3);
  REQUIRE_THROWS_WITH(m.forward(xb, y, recon, ws), Contains("'x'"));
  REQUIRE_THROWS_AS(m.forward(Mat(D, 0), y, recon, ws), shape_error);
  REQUIRE_THROWS_WITH(m.forward(pr.x, yb, recon, ws), Contains("'y'"));
  REQUIRE_THROWS_WITH(m.forward(pr.x, y, rb, ws), Contains("'recon'"));
  REQUIRE_THROWS_WITH(m.encode(xb, y, ws), Contains("'x'"));
  REQUIRE_THROWS_WITH(m.encode(pr.x, yb, ws), Contains("'y'"));
  REQUIRE_THROWS_AS(m.decode(yb, recon, ws), shape_error);  // not a multiple of T
  REQUIRE_THROWS_WITH(m.decode(Mat(d + 1, BT), recon, ws), Contains("'y'"));
  REQUIRE_THROWS_WITH(m.decode(y, rb, ws), Contains("'recon'"));
  // backward after encode or decode only: no cached forward of both halves
  m.encode(pr.x, y, ws);
  REQUIRE_THROWS_AS(m.backward(ws, pr.w1, pr.w2, dp, dx), flowprior::error);
  m.decode(y, recon, ws);
  REQUIRE_THROWS_AS(m.backward(ws, pr.w1, pr.w2, dp, dx), flowprior::error);
  m.forward(pr.x, y, recon, ws);
  REQUIRE_THROWS_WITH(m.backward(ws, rb, pr.w2, dp, dx), Contains("'d_recon'"));
  REQUIRE_THROWS_WITH(m.backward(ws, pr.w1, yb, dp, dx), Contains("'d_y_extra'"));
  Vec dpb = Vec::Zero(m.num_params() + 1);
  REQUIRE_THROWS_WITH(m.backward(ws, pr.w1, pr.w2, dpb, dx), Contains("'d_params'"));
  REQUIRE_THROWS_WITH(m.backward(ws, pr.w1, pr.w2, dp, rb), Contains("'d_x'"));
  REQUIRE(dp == Vec::Zero(m.num_params()));  // nothing written by a rejected call
  REQUIRE_NOTHROW(m.backward(ws, pr.w1, pr.w2, dp, dx));
  // A workspace filled by another model of the same sizes is not this model's forward.
  Model other(tiny());
  REQUIRE_THROWS_AS(other.backward(ws, pr.w1, pr.w2, dp, dx), flowprior::error);
}

TEST_CASE("tokenizer: init is timm's, the state dict round-trips", "[tokenizer][io]") {
  nn::TokenizerConfig cfg = tiny(true);
  cfg.width = 64;
  cfg.heads = 4;
  cfg.latent_tokens = 16;
  Model m(cfg);
  Rng rng(94);
  m.init(rng);
  const auto p = m.parameters();
  auto all = [&](const std::string& name, double v) {
    const auto& t = m.layout().at(name);
    for (Index i = 0; i < t.size(); ++i)
      if (p[t.offset + i] != v) return false;
    return true;
  };
  REQUIRE(all("encoder.norm.weight", 1.0));
  REQUIRE(all("decoder.blocks.0.attn.q_norm.weight", 1.0));
  REQUIRE(all("decoder.blocks.0.norm2.bias", 0.0));
  REQUIRE(all("encoder.to_latent.bias", 0.0));
  REQUIRE(all("encoder.patch_embed.proj.bias", 0.0));
  const auto& tok = m.layout().at("encoder.latent_tokens");  // 1024 draws of N(0, 0.02^2)
  double ss = 0;
  for (Index i = 0; i < tok.size(); ++i) ss += p[tok.offset + i] * p[tok.offset + i];
  REQUIRE(std::sqrt(ss / double(tok.size())) == Approx(0.02).epsilon(0.1));
  const auto& qkv = m.layout().at("encoder.blocks.0.attn.qkv.weight");  // Xavier (192, 64)
  const double bound = std::sqrt(6.0 / (64.0 + 192.0));
  double mx = 0;
  for (Index i = 0; i < qkv.size(); ++i) mx = std::max(mx, std::abs(p[qkv.offset + i]));
  REQUIRE(mx <= bound);
  REQUIRE(mx > 0.9 * bound);

  const fpt::TempDir tmp("tokenizer");
  const std::string path = (tmp.dir / "tokenizer.safetensors").string();
  io::save_state_dict(m, path);
  const auto st = io::Safetensors::read(path);
  const auto* e = st.find("encoder.patch_embed.proj.weight");
  REQUIRE(e != nullptr);
  REQUIRE(e->shape == std::vector<std::int64_t>{64, 2, 2, 2});
  Model back(cfg);
  Rng other(95);
  back.init(other);
  REQUIRE(io::load_state_dict(back, st) == "");
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(back.parameters()[i] == p[i]);
  // A different architecture is refused, by name.
  nn::TokenizerConfig c2 = cfg;
  c2.depth = 2;
  Model deeper(c2);
  REQUIRE_THROWS_AS(io::load_state_dict(deeper, st), flowprior::io_error);
}

TEST_CASE("tokenizer: learned positional embeddings: layout, names and order",
          "[tokenizer][pos_embed]") {
  const Model fixed(tiny()), m(tiny(false, true));
  const auto& L = m.layout();
  REQUIRE(fixed.layout().find("encoder.pos_embed") == nullptr);
  REQUIRE(fixed.layout().find("decoder.pos_embed") == nullptr);
  REQUIRE(L.at("encoder.pos_embed").shape == std::vector<Index>{1, 4, 8});
  REQUIRE(L.at("decoder.pos_embed").shape == std::vector<Index>{1, 4, 8});
  REQUIRE(m.num_params() == fixed.num_params() + 2 * 4 * 8);
  // Each right after its module's latent_pos_embed (the module's own parameters come first).
  const auto& t = L.tensors();
  for (std::size_t i = 0; i + 1 < t.size(); ++i) {
    if (t[i].name == "encoder.latent_pos_embed") REQUIRE(t[i + 1].name == "encoder.pos_embed");
    if (t[i].name == "decoder.latent_pos_embed") REQUIRE(t[i + 1].name == "decoder.pos_embed");
  }
  REQUIRE(L.at("encoder.patch_embed.proj.weight").offset ==
          L.at("encoder.pos_embed").offset + 4 * 8);
  REQUIRE(L.at("decoder.from_latent.weight").offset == L.at("decoder.pos_embed").offset + 4 * 8);
}

TEST_CASE("tokenizer: learned positional embeddings: gradients against central differences",
          "[tokenizer][pos_embed][grad]") {
  Problem pr(tiny(false, true), 2, 97);
  Model& m = pr.m;
  Model::Workspace ws;
  Mat y(pr.ydim(), pr.ycols()), recon(m.image_dim(), pr.B);
  const Index P = m.num_params();
  double* p = m.parameters().data;  // host memory on the CPU backend
  auto loss = [&] {
    m.forward(pr.x, y, recon, ws);
    return fpt::dot(pr.w1, recon) + fpt::dot(pr.w2, y);
  };
  loss();
  Vec dp = Vec::Constant(P, 0.25);  // accumulates
  Mat dx = Mat::Zero(m.image_dim(), pr.B);
  m.backward(ws, pr.w1, pr.w2, dp, dx);
  dp.array() -= 0.25;
  const auto gp = fpt::fd_gradient(loss, p, P);
  fpt::require_close("d_params", dp.data(), gp, 1e-6);
  for (const char* name : {"encoder.pos_embed", "decoder.pos_embed"}) {
    const auto& t = m.layout().at(name);
    CAPTURE(name);
    fpt::require_close(name, dp.data() + t.offset, gp.data() + t.offset, t.size(), 1e-6);
    REQUIRE(dp.segment(t.offset, t.size()).norm() > 1e-3);  // trained: a real gradient
  }
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, pr.x.data(), pr.x.size()), 1e-6);
}

TEST_CASE(
    "tokenizer: learned positional embeddings start at the fixed table and then compute "
    "what it computes",
    "[tokenizer][pos_embed]") {
  const bool qk_norm = GENERATE(false, true);
  CAPTURE(qk_norm);
  Model fixed(tiny(qk_norm)), m(tiny(qk_norm, true));
  // init: both tables are MAE's sine-cosine table; every other tensor as without (no draw).
  Rng r1(98), r2(98);
  fixed.init(r1);
  m.init(r2);
  const std::vector<double> table = nn::sincos_pos_embed_2d<double>(8, 2, 2);
  for (const char* name : {"encoder.pos_embed", "decoder.pos_embed"}) {
    const auto& t = m.layout().at(name);
    for (Index i = 0; i < t.size(); ++i) REQUIRE(m.parameters()[t.offset + i] == table[i]);
  }
  auto same_shared = [&](const Vec& a, const Vec& b) {
    for (const auto& t : fixed.layout().tensors()) {
      const auto& u = m.layout().at(t.name);
      CAPTURE(t.name);
      REQUIRE(a.segment(t.offset, t.size()) == b.segment(u.offset, u.size()));
    }
  };
  same_shared(Vec(Eigen::Map<const Vec>(fixed.parameters().data, fixed.num_params())),
              Vec(Eigen::Map<const Vec>(m.parameters().data, m.num_params())));
  // At random parameters with the table in pos_embed: the same bits forward and backward.
  Rng rng(99);
  const std::vector<double> h = random_params(fixed, rng);
  set_params(fixed, h);
  for (const auto& t : fixed.layout().tensors()) {
    const auto& u = m.layout().at(t.name);
    std::copy(h.begin() + t.offset, h.begin() + t.offset + t.size(),
              m.parameters().data + u.offset);
  }
  const Index B = 2, D = fixed.image_dim(), d = 3, BT = B * 2;
  const Mat x = fpt::random_mat(D, B, rng), w1 = fpt::random_mat(D, B, rng),
            w2 = fpt::random_mat(d, BT, rng);
  Model::Workspace wf, wm;
  Mat yf(d, BT), rf(D, B), ym(d, BT), rm(D, B), dxf = Mat::Zero(D, B), dxm = Mat::Zero(D, B);
  Vec dpf = Vec::Zero(fixed.num_params()), dpm = Vec::Zero(m.num_params());
  fixed.forward(x, yf, rf, wf);
  m.forward(x, ym, rm, wm);
  REQUIRE(ym == yf);
  REQUIRE(rm == rf);
  fixed.backward(wf, w1, w2, dpf, dxf);
  m.backward(wm, w1, w2, dpm, dxm);
  REQUIRE(dxm == dxf);
  same_shared(dpf, dpm);
  // A changed table changes the output: the parameter is read, not the fixed table.
  m.parameters()[m.layout().at("decoder.pos_embed").offset] += 0.5;
  m.forward(x, ym, rm, wm);
  REQUIRE(ym == yf);  // the decoder's table: the latents do not see it
  REQUIRE(rm != rf);
  m.parameters()[m.layout().at("encoder.pos_embed").offset + 3] += 0.5;
  m.forward(x, ym, rm, wm);
  REQUIRE(ym != yf);
  // The state dict carries both tables by name.
  const fpt::TempDir tmp("tokenizer_pos");
  const std::string path = (tmp.dir / "t.safetensors").string();
  io::save_state_dict(m, path);
  const auto st = io::Safetensors::read(path);
  REQUIRE(st.find("encoder.pos_embed")->shape == std::vector<std::int64_t>{1, 4, 8});
  Model back(tiny(qk_norm, true));
  REQUIRE(io::load_state_dict(back, st) == "");
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(back.parameters()[i] == m.parameters()[i]);
  REQUIRE_THROWS_AS(io::load_state_dict(fixed, st), flowprior::io_error);  // strict: extra names
}

namespace {
// A matrix in guarded memory.
struct Dev {
  fpt::GuardedBuffer<double> buf;
  Index rows, cols;
  explicit Dev(const Mat& m) : rows(m.rows()), cols(m.cols()) {
    GuardedBackend::copy_from_host(m.data(), m.size(), buf);
  }
  MatrixView<double> view() { return {buf.data(), rows, cols}; }
  Mat host() const {
    Mat m(rows, cols);
    GuardedBackend::copy_to_host(buf.data(), m.size(), m.data());
    return m;
  }
};
}  // namespace

TEST_CASE("tokenizer: on the guarded backend, the same bits and no host access",
          "[tokenizer][backend][guarded]") {
  const bool qk_norm = GENERATE(false, true);
  const bool learned = GENERATE(false, true);
  CAPTURE(qk_norm, learned);
  Problem pr(tiny(qk_norm, learned), 2, 96);
  Model& m = pr.m;
  nn::TokenizerAE<double, GuardedBackend> g(tiny(qk_norm, learned));
  GuardedBackend::copy_from_host(m.parameters().data, m.num_params(), g.parameters().data);
  const Index D = m.image_dim(), d = pr.ydim(), BT = pr.ycols(), P = m.num_params();
  // CPU.
  Model::Workspace ws;
  Mat y(d, BT), recon(D, 2), ye(d, BT), rd(D, 2), dx = Mat::Zero(D, 2);
  Vec dp = Vec::Zero(P);
  m.encode(pr.x, ye, ws);
  m.decode(ye, rd, ws);
  m.forward(pr.x, y, recon, ws);
  m.backward(ws, pr.w1, pr.w2, dp, dx);
  // Guarded.
  nn::TokenizerAE<double, GuardedBackend>::Workspace gws;
  Dev gx(pr.x), gw1(pr.w1), gw2(pr.w2), gy(Mat::Zero(d, BT)), gr(Mat::Zero(D, 2)),
      gye(Mat::Zero(d, BT)), grd(Mat::Zero(D, 2)), gdx(Mat::Zero(D, 2)), gdp(Vec::Zero(P));
  const long before = fpt::Guard::get().entries();
  g.encode(gx.view(), gye.view(), gws);
  g.decode(gye.view(), grd.view(), gws);
  g.forward(gx.view(), gy.view(), gr.view(), gws);
  g.backward(gws, gw1.view(), gw2.view(), VectorView<double>(gdp.buf.data(), P), gdx.view());
  REQUIRE(fpt::Guard::get().entries() > before);
  REQUIRE(gye.host() == ye);
  REQUIRE(grd.host() == rd);
  REQUIRE(gy.host() == y);
  REQUIRE(gr.host() == recon);
  REQUIRE(gdx.host() == dx);
  REQUIRE(gdp.host() == Mat(dp));
  // init runs on the host and uploads.
  Rng r1(7), r2(7);
  m.init(r1);
  g.init(r2);
  const std::vector<double> gp = fpt::host_copy(g.parameters().data, P);
  for (Index i = 0; i < P; ++i) REQUIRE(gp[std::size_t(i)] == m.parameters()[i]);
}
