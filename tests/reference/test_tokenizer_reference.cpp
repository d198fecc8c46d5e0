// PyTorch reference values for the tokenizer autoencoder (nn/tokenizer.hpp): the fixture is
// written by tools/make_tokenizer_fixture.py with an independent PyTorch twin of TokenizerAE
// (tools/tokenizer_torch.py), at random non-degenerate parameters, and holds the outputs y and
// recon and the autograd gradients of L = <d_recon, recon> + <d_y_extra, y> for every parameter
// and for x. PyTorch's (B, C, H, W) and (B, T, d) tensors in C order are flowprior's (C H W, B)
// and (d, B T) matrices, so fixture tensors are used as they are.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
namespace io = flowprior::io;
namespace nn = flowprior::nn;

namespace {

std::string fixture_path() {
  return std::string(FLOWPRIOR_TEST_SOURCE_DIR) + "/reference/data/tokenizer_reference.safetensors";
}

const io::Safetensors& fixture() {
  static const io::Safetensors st = io::Safetensors::read(fixture_path());
  return st;
}

// The two cases of the fixture (tools/make_tokenizer_fixture.py, CASES).
struct Case {
  const char* tag;
  nn::TokenizerConfig cfg;
  Index batch;
};

Case plain() {
  Case c{"plain", {}, 2};
  c.cfg.image_size = 8;
  c.cfg.channels = 2;
  c.cfg.patch = 2;
  c.cfg.width = 16;
  c.cfg.depth = 2;
  c.cfg.dec_depth = 1;
  c.cfg.heads = 2;
  c.cfg.mlp_ratio = 2.0;
  c.cfg.latent_tokens = 3;
  c.cfg.latent_dim = 4;
  c.cfg.qk_norm = false;
  c.cfg.ln_eps = 1e-6;
  return c;
}

Case qknorm() {
  Case c{"qknorm", {}, 3};
  c.cfg.image_size = 6;
  c.cfg.channels = 1;
  c.cfg.patch = 3;
  c.cfg.width = 8;
  c.cfg.depth = 1;
  c.cfg.dec_depth = 2;
  c.cfg.heads = 2;
  c.cfg.mlp_ratio = 2.5;
  c.cfg.latent_tokens = 2;
  c.cfg.latent_dim = 3;
  c.cfg.qk_norm = true;
  c.cfg.ln_eps = 1e-5;
  return c;
}

std::string key(const Case& c, const std::string& name) { return std::string(c.tag) + "." + name; }

// Tolerances on fpt::rel_error (||a - b|| / (||a|| + ||b||)) per tensor. Double: the two sides
// differ only by the order of their sums. Float: the model runs in float on the float32 values
// the double reference started from.
template <class S>
double tol() {
  return sizeof(S) == 8 ? 1e-12 : 2e-5;
}

template <class S>
const char* type_name() {
  return sizeof(S) == 8 ? "double" : "float";
}

/// Relative error of got against the fixture tensor ref_name; CHECKs it against tol.
template <class S>
double compare(const std::string& what, const S* got, Index n, const std::string& ref_name,
               double tolerance) {
  const std::vector<double> ref = fixture().get<double>(ref_name);
  REQUIRE(Index(ref.size()) == n);
  const std::vector<double> g(got, got + n);
  const double rel = fpt::rel_error(g.data(), ref.data(), n);
  double worst = 0;
  for (Index i = 0; i < n; ++i) worst = std::max(worst, std::abs(g[i] - ref[i]));
  INFO(what << " (" << type_name<S>() << "): rel error " << rel << ", max abs error " << worst
            << ", tolerance " << tolerance);
  CHECK(rel < tolerance);
  return rel;
}

/// The bias of the k-norm adds one vector to every key of a head, which adds the same value to
/// every score of a query: the softmax does not see it, and its gradient is exactly zero. Both
/// sides compute it as a sum of rounding errors, which a relative error cannot compare.
bool zero_gradient(const std::string& name) {
  const std::string tail = "attn.k_norm.bias";
  return name.size() >= tail.size() &&
         name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
}

/// For a gradient that is zero in exact arithmetic: both ours and the reference are below
/// tolerance x `scale` (the norm of the whole reference gradient).
template <class S>
void check_zero(const std::string& what, const S* got, Index n, const std::string& ref_name,
                double scale, double tolerance) {
  const std::vector<double> ref = fixture().get<double>(ref_name);
  REQUIRE(Index(ref.size()) == n);
  double ng = 0, nr = 0;
  for (Index i = 0; i < n; ++i) {
    ng += double(got[i]) * double(got[i]);
    nr += ref[std::size_t(i)] * ref[std::size_t(i)];
  }
  INFO(what << " (" << type_name<S>() << "), zero in exact arithmetic: |ours| " << std::sqrt(ng)
            << ", |PyTorch| " << std::sqrt(nr) << ", |whole gradient| " << scale);
  CHECK(std::sqrt(ng) < tolerance * scale);
  CHECK(std::sqrt(nr) < tolerance * scale);
}

/// A model of the case with the fixture's parameters, loaded through io::load_state_dict.
template <class S>
nn::TokenizerAE<S> load(const Case& c) {
  nn::TokenizerAE<S> m(c.cfg);
  io::LoadOptions opt;
  opt.prefix = key(c, "param.");
  CHECK(io::load_state_dict(m, fixture(), opt) == opt.prefix);
  return m;
}

// The outputs and gradients of one forward + backward of the case's batch.
template <class S>
struct Run {
  std::vector<S> y, recon, d_params, d_x;
};

template <class S>
Run<S> run(const nn::TokenizerAE<S>& m, const Case& c, bool with_d_y_extra = true) {
  const Index B = c.batch, D = m.image_dim();
  const Index d = c.cfg.latent_dim, BT = B * c.cfg.latent_tokens;
  const std::vector<S> x = fixture().get<S>(key(c, "x"));
  const std::vector<S> d_recon = fixture().get<S>(key(c, "d_recon"));
  const std::vector<S> d_y = fixture().get<S>(key(c, "d_y_extra"));
  REQUIRE(Index(x.size()) == D * B);
  REQUIRE(Index(d_recon.size()) == D * B);
  REQUIRE(Index(d_y.size()) == d * BT);
  Run<S> r;
  r.y.assign(std::size_t(d * BT), S(0));
  r.recon.assign(std::size_t(D * B), S(0));
  r.d_params.assign(std::size_t(m.num_params()), S(0));
  r.d_x.assign(std::size_t(D * B), S(0));
  typename nn::TokenizerAE<S>::Workspace ws;
  m.forward({x.data(), D, B}, {r.y.data(), d, BT}, {r.recon.data(), D, B}, ws);
  m.backward(ws, {d_recon.data(), D, B},
             with_d_y_extra ? flowprior::ConstMatrixView<S>(d_y.data(), d, BT)
                            : flowprior::ConstMatrixView<S>(),
             {r.d_params.data(), m.num_params()}, {r.d_x.data(), D, B});
  return r;
}

// The fixture's tensors under `prefix`, in file (offset) order.
std::vector<const io::TensorEntry*> entries_under(const std::string& prefix) {
  std::vector<const io::TensorEntry*> out;
  for (const auto& e : fixture().tensors())
    if (e.name.rfind(prefix, 0) == 0) out.push_back(&e);
  std::sort(out.begin(), out.end(),
            [](const io::TensorEntry* a, const io::TensorEntry* b) { return a->begin < b->begin; });
  return out;
}

}  // namespace

TEST_CASE("tokenizer reference: the PyTorch twin's state dict is the layout, name by name",
          "[reference][tokenizer]") {
  const auto& st = fixture();
  REQUIRE(st.metadata().count("generator") == 1);
  REQUIRE(st.metadata().count("torch") == 1);
  for (const Case& c : {plain(), qknorm()}) {
    INFO("case " << c.tag);
    REQUIRE(st.metadata().at(key(c, "batch")) == std::to_string(c.batch));
    const nn::TokenizerAE<double> m(c.cfg);
    const auto& layout = m.layout().tensors();
    // state_dict order == layout order, same names and shapes; the gradients likewise.
    for (const char* group : {"param.", "grad."}) {
      const std::vector<const io::TensorEntry*> e = entries_under(key(c, group));
      REQUIRE(e.size() == layout.size());
      for (std::size_t i = 0; i < e.size(); ++i) {
        INFO(e[i]->name);
        CHECK(e[i]->name == key(c, group) + layout[i].name);
        CHECK(e[i]->dtype == io::Dtype::F64);
        CHECK(e[i]->shape ==
              std::vector<std::int64_t>(layout[i].shape.begin(), layout[i].shape.end()));
      }
    }
    // The images and latents in PyTorch's shapes.
    const std::int64_t B = c.batch, C = c.cfg.channels, H = c.cfg.image_size;
    const std::int64_t T = c.cfg.latent_tokens, d = c.cfg.latent_dim;
    for (const char* name : {"x", "recon", "d_recon", "d_x"})
      CHECK(st.at(key(c, name)).shape == std::vector<std::int64_t>{B, C, H, H});
    for (const char* name : {"y", "d_y_extra"})
      CHECK(st.at(key(c, name)).shape == std::vector<std::int64_t>{B, T, d});
  }
  // The qk-norm parameters exist only where qk_norm is on.
  CHECK(st.find("qknorm.param.encoder.blocks.0.attn.q_norm.weight") != nullptr);
  CHECK(st.find("plain.param.encoder.blocks.0.attn.q_norm.weight") == nullptr);
}

TEMPLATE_TEST_CASE("tokenizer reference: forward matches the PyTorch twin",
                   "[reference][tokenizer]", double, float) {
  using S = TestType;
  for (const Case& c : {plain(), qknorm()}) {
    SECTION(c.tag) {
      const nn::TokenizerAE<S> m = load<S>(c);
      const Run<S> r = run(m, c);
      compare(key(c, "y"), r.y.data(), Index(r.y.size()), key(c, "y"), tol<S>());
      compare(key(c, "recon"), r.recon.data(), Index(r.recon.size()), key(c, "recon"), tol<S>());
    }
  }
}

TEMPLATE_TEST_CASE("tokenizer reference: every parameter gradient and dL/dx match autograd",
                   "[reference][tokenizer]", double, float) {
  using S = TestType;
  for (const Case& c : {plain(), qknorm()}) {
    SECTION(c.tag) {
      const nn::TokenizerAE<S> m = load<S>(c);
      const Run<S> r = run(m, c);
      // The scale of the whole gradient, for the tensors whose gradient is zero.
      double all = 0;
      for (const auto& t : m.layout().tensors())
        for (double v : fixture().get<double>(key(c, "grad." + t.name))) all += v * v;
      all = std::sqrt(all);
      double worst = 0;
      for (const auto& t : m.layout().tensors()) {
        const S* got = r.d_params.data() + t.offset;
        if (zero_gradient(t.name)) {
          check_zero(key(c, "grad." + t.name), got, t.size(), key(c, "grad." + t.name), all,
                     tol<S>());
          continue;
        }
        worst = std::max(worst, compare(key(c, "grad." + t.name), got, t.size(),
                                        key(c, "grad." + t.name), tol<S>()));
      }
      worst = std::max(worst, compare(key(c, "d_x"), r.d_x.data(), Index(r.d_x.size()),
                                      key(c, "d_x"), tol<S>()));
      INFO("worst relative error over the gradients: " << worst);
      SUCCEED();
    }
  }
}

// The comparisons can fail: the same model with a LayerNorm epsilon 10x off (a change of about
// 1e-6 relative in every normalisation), or without d_y_extra, is far outside the tolerances.
TEST_CASE("tokenizer reference: the tolerances see a wrong epsilon and a missing d_y_extra",
          "[reference][tokenizer]") {
  Case c = qknorm();
  const nn::TokenizerAE<double> good = load<double>(c);
  const std::vector<double> ref_y = fixture().get<double>(key(c, "y"));
  const std::vector<double> ref_dx = fixture().get<double>(key(c, "d_x"));

  c.cfg.ln_eps *= 10;
  nn::TokenizerAE<double> off(c.cfg);
  const auto src = good.parameters();
  std::copy(src.data, src.data + src.size, off.parameters().data);
  const Run<double> r = run(off, c);
  const double rel_y = fpt::rel_error(r.y.data(), ref_y.data(), Index(ref_y.size()));
  INFO("ln_eps 1e-4 instead of 1e-5: rel error of y " << rel_y);
  CHECK(rel_y > 1e3 * tol<double>());

  const Run<double> r2 = run(good, qknorm(), false);
  const double rel_dx = fpt::rel_error(r2.d_x.data(), ref_dx.data(), Index(ref_dx.size()));
  INFO("without d_y_extra: rel error of d_x " << rel_dx);
  CHECK(rel_dx > 1e3 * tol<double>());
}
