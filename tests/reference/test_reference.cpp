// PyTorch reference values for AdaLNMlp and the alignment loss (fixture made by
// tools/make_fixtures.py with an independent PyTorch SimpleMLPAdaLN, tools/flowprior_torch.py),
// and the state-dict save/load round trip. PyTorch (batch, dim) tensors in C order are
// flowprior's (dim, batch) column-major matrices, so fixture tensors are used as they are.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/state_dict.hpp>
#include <string>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Prior;
namespace io = flowprior::io;
namespace loss = flowprior::loss;
namespace nn = flowprior::nn;

namespace {

constexpr Index kN = 5, kK = 2, kDim = 4, kWidth = 16, kCondDim = 3;

std::string fixture_path() {
  return std::string(FLOWPRIOR_TEST_SOURCE_DIR) + "/reference/data/adaln_reference.safetensors";
}

const io::Safetensors& fixture() {
  static const io::Safetensors st = io::Safetensors::read(fixture_path());
  return st;
}

nn::AdaLNMlpConfig config_a() {  // stored under "model."
  nn::AdaLNMlpConfig c;
  c.dim = kDim;
  c.width = kWidth;
  c.depth = 2;
  c.cond_dim = 0;
  c.time_freq_dim = 256;
  c.ln_eps = 1e-6;
  return c;
}

nn::AdaLNMlpConfig config_b() {  // stored under "ema.net."
  nn::AdaLNMlpConfig c = config_a();
  c.depth = 1;
  c.cond_dim = kCondDim;
  return c;
}

template <class S>
std::vector<double> to_double(const std::vector<S>& v) {
  return std::vector<double>(v.begin(), v.end());
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

/// Relative error (fpt::rel_error: ||a - b|| / (||a|| + ||b||)) of a against the reference.
template <class S>
double compare(const std::string& what, const std::vector<S>& got, const std::string& ref_name,
               double tol) {
  const std::vector<double> ref = fixture().get<double>(ref_name);
  REQUIRE(got.size() == ref.size());
  const std::vector<double> g = to_double(got);
  const double rel = fpt::rel_error(g.data(), ref.data(), Index(ref.size()));
  INFO(what << " (" << (sizeof(S) == 8 ? "double" : "float") << "): rel error " << rel
            << ", max abs error " << max_abs_diff(g, ref));
  CHECK(rel < tol);
  return rel;
}

template <class S>
double tol_of(double tight, double loose) {
  return sizeof(S) == 8 ? tight : loose;
}

std::string temp_path(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("flowprior_reference_" + tag + "_" + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

}  // namespace

TEST_CASE("reference: the fixture parses and its heads are found by the auto prefix",
          "[reference][io]") {
  const auto& st = fixture();
  REQUIRE(st.metadata().count("generator") == 1);
  REQUIRE(st.metadata().count("torch") == 1);
  REQUIRE(st.at("model.input_proj.weight").dtype == io::Dtype::F32);
  REQUIRE(st.at("model.input_proj.weight").shape == std::vector<std::int64_t>{kWidth, kDim});
  REQUIRE(st.at("v").dtype == io::Dtype::F64);
  REQUIRE(st.at("eps").shape == std::vector<std::int64_t>{kN * kK, kDim});

  nn::AdaLNMlp<double> a(config_a()), b(config_b());
  nn::AdaLNMlp<float> af(config_a()), bf(config_b());
  CHECK(io::load_state_dict(a, st) == "model.");
  CHECK(io::load_state_dict(b, st) == "ema.net.");
  CHECK(io::load_state_dict(af, st) == "model.");
  CHECK(io::load_state_dict(bf, st) == "ema.net.");
  // The loaded parameters are the stored float32 values, exactly.
  const auto w = st.get<float>("model.res_blocks.1.adaLN_modulation.1.weight");
  const auto& info = a.layout().at("res_blocks.1.adaLN_modulation.1.weight");
  for (std::size_t i = 0; i < w.size(); ++i) {
    REQUIRE(a.parameters()[info.offset + Index(i)] == double(w[i]));
    REQUIRE(af.parameters()[info.offset + Index(i)] == w[i]);
  }
  // A wrong architecture is rejected: depth 2 with a conditioning input exists nowhere.
  nn::AdaLNMlpConfig wrong = config_a();
  wrong.cond_dim = kCondDim;
  nn::AdaLNMlp<double> c(wrong);
  CHECK_THROWS_AS(io::load_state_dict(c, st), flowprior::io_error);
}

TEMPLATE_TEST_CASE("reference: AdaLNMlp forward matches PyTorch SimpleMLPAdaLN",
                   "[reference][adaln]", double, float) {
  using S = TestType;
  const auto& st = fixture();
  const double tol = tol_of<S>(1e-10, 2e-5);
  SECTION("unconditioned head (model.)") {
    nn::AdaLNMlp<S> net(config_a());
    io::load_state_dict(net, st);
    const auto x = st.get<S>("x"), t = st.get<S>("t");
    std::vector<S> v(std::size_t(kDim * kN));
    typename nn::AdaLNMlp<S>::Workspace ws;
    net.forward({x.data(), kDim, kN}, {t.data(), kN}, {v.data(), kDim, kN}, ws);
    compare("v", v, "v", tol);
  }
  SECTION("conditioned head (ema.net.)") {
    nn::AdaLNMlp<S> net(config_b());
    io::load_state_dict(net, st);
    const auto x = st.get<S>("cond.x"), t = st.get<S>("cond.t"), c = st.get<S>("cond.cond");
    std::vector<S> v(std::size_t(kDim * kN));
    typename nn::AdaLNMlp<S>::Workspace ws;
    net.forward({x.data(), kDim, kN}, {t.data(), kN}, {v.data(), kDim, kN}, ws,
                {c.data(), kCondDim, kN});
    compare("cond.v", v, "cond.v", tol);
  }
}

TEMPLATE_TEST_CASE("reference: alignment loss and dL/dy match PyTorch autograd",
                   "[reference][loss]", double, float) {
  using S = TestType;
  using Net = nn::AdaLNMlp<S>;
  const auto& st = fixture();
  Net net(config_a());
  io::load_state_dict(net, st);
  const auto y = st.get<S>("y");

  struct Case {
    const char* tag;
    Convention conv;
    loss::AlignmentOptions opt;
  };
  const Case cases[] = {
      {"align_code", Convention::Code, {loss::Reduction::Mean, 0.01, false}},
      {"align_code_detach", Convention::Code, {loss::Reduction::Mean, 0.01, true}},
      {"align_paper_sum", Convention::Paper, {loss::Reduction::SumChannels, 1.0, false}},
  };
  for (const Case& c : cases) {
    SECTION(c.tag) {
      // The paper case takes the same network as trained in the paper convention.
      const Prior<Net> prior(net, c.conv);
      const std::vector<S> t_draws = st.get<S>("t_draws");
      const std::vector<S> eps = st.get<S>("eps");  // (N*K, d) C order == (d, N*K), col b*K+k
      const loss::FlowDraws<S> draws(c.conv, kN, kDim, kK, {t_draws.data(), kN * kK},
                                     {eps.data(), kDim, kN * kK});
      loss::LossWorkspace<Net> ws;
      std::vector<S> d_y(std::size_t(kDim * kN), S(0));
      const double value = loss::alignment_loss(prior, c.conv, {y.data(), kDim, kN}, draws, c.opt,
                                                ws, {}, {d_y.data(), kDim, kN});
      const double ref = st.get<double>(std::string(c.tag) + ".loss").at(0);
      const double rel = std::abs(value - ref) / std::abs(ref);
      INFO(c.tag << " loss (" << (sizeof(S) == 8 ? "double" : "float") << "): " << value
                 << " vs PyTorch " << ref << ", rel error " << rel);
      CHECK(rel < tol_of<S>(1e-10, 1e-4));
      compare(std::string(c.tag) + " d_y", d_y, std::string(c.tag) + ".d_y",
              tol_of<S>(1e-10, 1e-4));
    }
  }
}

TEMPLATE_TEST_CASE("reference: save_state_dict round trip is bit-exact", "[reference][io]", double,
                   float) {
  using S = TestType;
  const auto& st = fixture();
  for (const bool conditioned : {false, true}) {
    nn::AdaLNMlp<S> net(conditioned ? config_b() : config_a());
    io::load_state_dict(net, st);
    const std::string path =
        temp_path(std::string(conditioned ? "b" : "a") + (sizeof(S) == 8 ? "64" : "32"));
    io::save_state_dict(net, path, io::dtype_of<S>(), {{"source", "test_reference"}});
    const io::Safetensors back = io::Safetensors::read(path);
    std::filesystem::remove(path);
    // The names are PyTorch's, without any prefix, in registration order.
    REQUIRE(back.tensors().size() == net.layout().tensors().size());
    for (std::size_t i = 0; i < back.tensors().size(); ++i) {
      REQUIRE(back.tensors()[i].name == net.layout().tensors()[i].name);
      REQUIRE(back.tensors()[i].dtype == io::dtype_of<S>());
    }
    REQUIRE(back.metadata().at("source") == "test_reference");
    nn::AdaLNMlp<S> fresh(conditioned ? config_b() : config_a());
    CHECK(io::load_state_dict(fresh, back) == "");
    const auto p = net.parameters(), q = fresh.parameters();
    REQUIRE(p.size == q.size);
    CHECK(std::memcmp(p.data, q.data, sizeof(S) * std::size_t(p.size)) == 0);
  }
}

// Writes flowprior-saved state dicts for the PyTorch side to check (docs/formats.md):
//   FLOWPRIOR_REFERENCE_SAVE=/tmp/fp ./test_reference "[save]"
//   python3 tools/make_fixtures.py --verify-saved /tmp/fp/adaln_a.safetensors
//       /tmp/fp/adaln_b.safetensors           (one command line)
TEST_CASE("reference: write state dicts for tools/load_in_torch.py", "[reference][io][save]") {
  const char* dir = std::getenv("FLOWPRIOR_REFERENCE_SAVE");
  if (dir == nullptr || *dir == '\0') {
    SUCCEED("FLOWPRIOR_REFERENCE_SAVE not set: nothing written");
    return;
  }
  std::filesystem::create_directories(dir);
  const auto& st = fixture();
  nn::AdaLNMlp<double> a(config_a()), b(config_b());
  io::load_state_dict(a, st);
  io::load_state_dict(b, st);
  io::save_state_dict(a, std::string(dir) + "/adaln_a.safetensors");
  io::save_state_dict(b, std::string(dir) + "/adaln_b.safetensors");
  SUCCEED("wrote adaln_a.safetensors and adaln_b.safetensors under " << dir);
}
