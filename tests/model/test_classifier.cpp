// The MLP classifier and the softmax cross-entropy (nn/classifier.hpp, docs/math/classifier.md):
// parameter and input gradients against central differences in double at random parameters
// (both activations, one and two hidden layers), the accumulate rule, features() equal to the
// head's input, the cross-entropy against its definition and its gradient identity, stability
// with huge logits, layout and names, the initialisation, float against double, typed errors,
// the guarded backend (same bits, no host access), the state dict round trip.
#include <cmath>
#include <cstdint>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/nn/classifier.hpp>
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
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
using Catch::Matchers::Contains;

namespace {

nn::ClassifierConfig tiny(std::vector<Index> hidden = {5, 4},
                          flowprior::Activation act = flowprior::Activation::GELU) {
  nn::ClassifierConfig c;
  c.input_dim = 6;
  c.hidden = std::move(hidden);
  c.classes = 3;
  c.activation = act;
  return c;
}

// Random non-degenerate parameters: weights uniform with bound sqrt(3 / fan_in), biases in
// [-0.3, 0.3] (docs/testing.md "Where").
template <class Model>
void randomise(Model& m, Rng& rng) {
  using S = typename Model::Scalar;
  S* p = m.parameters().data;
  for (const auto& t : m.layout().tensors()) {
    std::vector<double> h(static_cast<std::size_t>(t.size()));
    const double b = t.shape.size() == 2 ? std::sqrt(3.0 / double(t.shape[1])) : 0.3;
    fpt::fill_uniform(h.data(), t.size(), rng, -b, b);
    for (Index i = 0; i < t.size(); ++i) p[t.offset + i] = static_cast<S>(h[std::size_t(i)]);
  }
}

// The cross-entropy of one column, straight from its definition (log of a sum of exps).
double xent_column(const Mat& z, Index b, int y) {
  double s = 0;
  for (Index k = 0; k < z.rows(); ++k) s += std::exp(z(k, b));
  return std::log(s) - z(y, b);
}

}  // namespace

TEST_CASE("classifier: layout, names and shapes", "[classifier]") {
  nn::MlpClassifier<double> m(tiny());
  const auto& L = m.layout();
  REQUIRE(L.tensors().size() == 6);
  REQUIRE(L.tensors()[0].name == "layers.0.weight");
  REQUIRE(L.at("layers.0.weight").shape == std::vector<Index>{5, 6});
  REQUIRE(L.at("layers.0.bias").shape == std::vector<Index>{5});
  REQUIRE(L.at("layers.1.weight").shape == std::vector<Index>{4, 5});
  REQUIRE(L.at("layers.1.weight").offset == 35);
  REQUIRE(L.at("head.weight").shape == std::vector<Index>{3, 4});
  REQUIRE(L.tensors().back().name == "head.bias");
  REQUIRE(m.num_params() == 5 * 6 + 5 + 4 * 5 + 4 + 3 * 4 + 3);
  REQUIRE(m.feature_dim() == 4);
  REQUIRE(m.classes() == 3);
  // The Fashion-MNIST default: 784 -> 256 -> 128 -> 10.
  nn::MlpClassifier<float> big(nn::ClassifierConfig{});
  REQUIRE(big.num_params() == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
  const auto e = nn::ClassifierConfig{}.entries();
  REQUIRE(e.size() == 4);
  REQUIRE(e[1] == std::make_pair(std::string("hidden"), std::string("256,128")));
  REQUIRE(e[3].second == "gelu");
}

TEST_CASE("classifier: parameter and input gradients against central differences",
          "[classifier][grad]") {
  const auto act = GENERATE(flowprior::Activation::GELU, flowprior::Activation::SiLU);
  const auto hidden = GENERATE(std::vector<Index>{5}, std::vector<Index>{5, 4});
  CAPTURE(flowprior::to_string(act), hidden.size());
  nn::MlpClassifier<double> m(tiny(hidden, act));
  Rng rng(7);
  randomise(m, rng);
  const Index B = 3, P = m.num_params();
  Mat x = fpt::random_mat(6, B, rng, -1.5, 1.5);
  const Mat u = fpt::random_mat(3, B, rng);
  Mat z(3, B);
  nn::MlpClassifier<double>::Workspace ws;
  auto loss = [&] {
    m.forward(x, z, ws);
    return fpt::dot(u, z);
  };
  loss();
  // Gradients accumulate onto non-zero buffers.
  Vec dp = Vec::Constant(P, 0.25);
  Mat dx = Mat::Constant(6, B, 0.5);
  m.backward(ws, u, dp, dx);
  dp.array() -= 0.25;
  dx.array() -= 0.5;
  double* p = m.parameters().data;
  const auto num_p = fpt::fd_gradient(loss, p, P);
  for (const auto& t : m.layout().tensors())
    fpt::require_close(t.name, dp.data() + t.offset, num_p.data() + t.offset, t.size(), 1e-6);
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, x.data(), x.size()), 1e-6);
  // Accumulate rule: twice into zeroed buffers is exactly twice once (no d_x: empty view).
  loss();
  Vec g1 = Vec::Zero(P), g2 = Vec::Zero(P);
  m.backward(ws, u, g1);
  m.backward(ws, u, g2);
  m.backward(ws, u, g2);
  REQUIRE((g2 - 2 * g1).norm() <= 1e-13 * g2.norm());
}

TEST_CASE("classifier: the gradient of the cross-entropy through the model", "[classifier][grad]") {
  nn::MlpClassifier<double> m(tiny());
  Rng rng(8);
  randomise(m, rng);
  const Index B = 4;
  Mat x = fpt::random_mat(6, B, rng, -1.5, 1.5);
  const std::vector<std::int32_t> y = {2, 0, 1, 2};
  Mat z(3, B), dz(3, B);
  nn::MlpClassifier<double>::Workspace ws;
  auto loss = [&] {
    m.forward(x, z, ws);
    return nn::softmax_cross_entropy<double>(z, y).loss;
  };
  m.forward(x, z, ws);
  nn::softmax_cross_entropy<double>(z, y, dz);
  Vec dp = Vec::Zero(m.num_params());
  Mat dx = Mat::Zero(6, B);
  m.backward(ws, dz, dp, dx);
  fpt::require_close("d_params", dp.data(),
                     fpt::fd_gradient(loss, m.parameters().data, m.num_params()), 1e-6);
  fpt::require_close("d_x", dx.data(), fpt::fd_gradient(loss, x.data(), x.size()), 1e-6);
}

TEST_CASE("classifier: features() are the activations the head reads", "[classifier]") {
  nn::MlpClassifier<double> m(tiny());
  Rng rng(9);
  randomise(m, rng);
  const Index B = 5;
  const Mat x = fpt::random_mat(6, B, rng);
  Mat f(4, B), z(3, B);
  nn::MlpClassifier<double>::Workspace ws, ws2;
  m.features(x, f, ws);
  m.forward(x, z, ws2);
  // head(f) == logits, computed here from the head's named tensors.
  const auto& hw = m.layout().at("head.weight");
  const auto& hb = m.layout().at("head.bias");
  const double* p = m.parameters().data;
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(
      p + hw.offset, 3, 4);
  Eigen::Map<const Vec> b(p + hb.offset, 3);
  const Mat ref = (W * f).colwise() + b;
  REQUIRE((ref - z).norm() <= 1e-13 * z.norm());
  // And the hidden stack by hand: a1 = gelu(W0 x + b0), a2 = gelu(W1 a1 + b1).
  Mat a = x;
  for (int l = 0; l < 2; ++l) {
    const auto& tw = m.layout().at("layers." + std::to_string(l) + ".weight");
    const auto& tb = m.layout().at("layers." + std::to_string(l) + ".bias");
    Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Wl(
        p + tw.offset, tw.shape[0], tw.shape[1]);
    Mat pre = (Wl * a).colwise() + Eigen::Map<const Vec>(p + tb.offset, tb.shape[0]);
    a = pre.unaryExpr([](double v) { return flowprior::math::gelu(v); });
  }
  REQUIRE((a - f).norm() <= 1e-13 * f.norm());
  // features() leaves no forward behind: backward refuses.
  Vec dp = Vec::Zero(m.num_params());
  REQUIRE_THROWS_WITH(m.backward(ws, z, dp), Contains("[flowprior.state]"));
}

TEST_CASE("cross-entropy: value, gradient identity and accuracy", "[classifier]") {
  Rng rng(10);
  const Index C = 4, B = 6;
  const Mat z = fpt::random_mat(C, B, rng, -3, 3);
  const std::vector<std::int32_t> y = {0, 3, 1, 1, 2, 3};
  Mat dz = Mat::Constant(C, B, 7.0);  // overwritten
  const auto st = nn::softmax_cross_entropy<double>(z, y, dz);
  double ref = 0;
  Index correct = 0;
  for (Index b = 0; b < B; ++b) {
    ref += xent_column(z, b, y[std::size_t(b)]);
    Index top;
    z.col(b).maxCoeff(&top);
    correct += top == y[std::size_t(b)];
    // (softmax - onehot) / B
    const Vec sm = z.col(b).array().exp() / z.col(b).array().exp().sum();
    Vec want = sm;
    want[y[std::size_t(b)]] -= 1;
    want /= double(B);
    REQUIRE((dz.col(b) - want).norm() <= 1e-15);
    REQUIRE(std::abs(dz.col(b).sum()) <= 1e-15);  // each column sums to zero
  }
  REQUIRE(st.loss == Approx(ref / double(B)).epsilon(1e-14));
  REQUIRE(st.correct == correct);
  REQUIRE(st.count == B);
  REQUIRE(st.accuracy() == double(correct) / double(B));
  // The gradient against central differences of the loss.
  Mat zz = z;
  auto loss = [&] { return nn::softmax_cross_entropy<double>(zz, y).loss; };
  fpt::require_close("d_logits", dz.data(), fpt::fd_gradient(loss, zz.data(), zz.size()), 1e-7);
  // In place: d_logits may be the logits.
  Mat inplace = z;
  nn::softmax_cross_entropy<double>(inplace, y, inplace);
  REQUIRE(inplace == dz);
}

TEMPLATE_TEST_CASE("cross-entropy: stable with huge logits", "[classifier]", float, double) {
  using S = TestType;
  using M = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  M z(3, 3);
  z << S(1e4), S(-1e4), S(2e4),  //
      S(0), S(1e4), S(2e4),      //
      S(-1e4), S(-1e4), S(2e4) - S(1);
  const std::vector<std::int32_t> y = {0, 0, 2};
  M dz(3, 3);
  const auto st = nn::softmax_cross_entropy<S>(z, y, dz);
  REQUIRE(std::isfinite(st.loss));
  REQUIRE(dz.allFinite());
  // Eigen's << fills rows: column 0 is (1e4, 0, -1e4), label at the top by 1e4: loss ~ e^-1e4;
  // column 1 is (-1e4, 1e4, -1e4), label 0: loss 2e4; column 2 is (2e4, 2e4, 2e4 - 1), label 2:
  // loss log(2 + e^-1) + 1. Mean over 3.
  const double c2 = std::log(2.0 + std::exp(-1.0)) + 1.0;
  REQUIRE(st.loss == Approx((0.0 + 2e4 + c2) / 3.0).epsilon(1e-6));
  REQUIRE(st.correct == 1);  // column 0 only (column 2's first largest logit is row 0)
  REQUIRE(dz(0, 0) == Approx(0.0).margin(1e-12));
  REQUIRE(dz(0, 1) == Approx(-1.0 / 3.0).epsilon(1e-6));
  REQUIRE(dz(1, 1) == Approx(1.0 / 3.0).epsilon(1e-6));
  REQUIRE(dz(2, 1) == Approx(0.0).margin(1e-12));
  REQUIRE(dz(2, 2) == Approx((std::exp(-1.0) / (2.0 + std::exp(-1.0)) - 1.0) / 3.0).epsilon(1e-6));
}

TEST_CASE("classifier: float against double", "[classifier]") {
  nn::MlpClassifier<double> md(tiny());
  nn::MlpClassifier<float> mf(tiny());
  Rng rng(11);
  randomise(md, rng);
  for (Index i = 0; i < md.num_params(); ++i)
    mf.parameters()[i] = static_cast<float>(md.parameters()[i]);
  const Index B = 4;
  const Mat x = fpt::random_mat(6, B, rng);
  const Eigen::MatrixXf xf = x.cast<float>();
  Mat z(3, B);
  Eigen::MatrixXf zf(3, B);
  nn::MlpClassifier<double>::Workspace wsd;
  nn::MlpClassifier<float>::Workspace wsf;
  md.forward(x, z, wsd);
  mf.forward(xf, zf, wsf);
  REQUIRE((zf.cast<double>() - z).norm() <= 1e-5 * z.norm());
  const Mat u = fpt::random_mat(3, B, rng);
  const Eigen::MatrixXf uf = u.cast<float>();
  Vec dp = Vec::Zero(md.num_params());
  Eigen::VectorXf dpf = Eigen::VectorXf::Zero(mf.num_params());
  Mat dx = Mat::Zero(6, B);
  Eigen::MatrixXf dxf = Eigen::MatrixXf::Zero(6, B);
  md.backward(wsd, u, dp, dx);
  mf.backward(wsf, uf, dpf, dxf);
  REQUIRE((dpf.cast<double>() - dp).norm() <= 1e-4 * dp.norm());
  REQUIRE((dxf.cast<double>() - dx).norm() <= 1e-4 * dx.norm());
}

TEST_CASE("classifier: initialisation", "[classifier]") {
  nn::ClassifierConfig c;
  c.input_dim = 300;
  c.hidden = {200};
  c.classes = 10;
  nn::MlpClassifier<double> m(c), m2(c);
  Rng rng(12), rng2(12);
  m.init(rng);
  m2.init(rng2);
  const double* p = m.parameters().data;
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(p[i] == m2.parameters()[i]);
  auto stats = [&](const std::string& name, double& max_abs, double& var) {
    const auto& t = m.layout().at(name);
    double s2 = 0;
    max_abs = 0;
    for (Index i = 0; i < t.size(); ++i) {
      s2 += p[t.offset + i] * p[t.offset + i];
      max_abs = std::max(max_abs, std::abs(p[t.offset + i]));
    }
    var = s2 / double(t.size());
  };
  double mx, var;
  stats("layers.0.weight", mx, var);  // Kaiming-uniform: bound sqrt(6/300), variance 2/300
  REQUIRE(mx <= std::sqrt(6.0 / 300.0));
  REQUIRE(var == Approx(2.0 / 300.0).epsilon(0.03));
  stats("head.weight", mx, var);  // Xavier-uniform: bound sqrt(6/210), variance 2/210
  REQUIRE(mx <= std::sqrt(6.0 / 210.0));
  REQUIRE(var == Approx(2.0 / 210.0).epsilon(0.1));
  for (const char* b : {"layers.0.bias", "head.bias"}) {
    const auto& t = m.layout().at(b);
    for (Index i = 0; i < t.size(); ++i) REQUIRE(p[t.offset + i] == 0.0);
  }
}

TEST_CASE("classifier: bad configurations, shapes, labels and states are typed errors",
          "[classifier]") {
  using flowprior::config_error;
  using flowprior::shape_error;
  using flowprior::value_error;
  auto bad = [](auto edit) {
    nn::ClassifierConfig c = tiny();
    edit(c);
    return c;
  };
  REQUIRE_THROWS_AS(nn::MlpClassifier<double>(bad([](auto& c) { c.input_dim = 0; })), config_error);
  REQUIRE_THROWS_WITH(nn::MlpClassifier<double>(bad([](auto& c) { c.hidden = {}; })),
                      Contains("hidden"));
  REQUIRE_THROWS_WITH(nn::MlpClassifier<double>(bad([](auto& c) {
                        c.hidden = {4, 0};
                      })),
                      Contains("hidden[1]"));
  REQUIRE_THROWS_WITH(nn::MlpClassifier<double>(bad([](auto& c) { c.classes = 1; })),
                      Contains("classes"));
  REQUIRE_THROWS_AS(nn::MlpClassifier<double>(bad([](auto& c) { c.input_dim = Index(1) << 62; })),
                    config_error);

  nn::MlpClassifier<double> m(tiny());
  Rng rng(13);
  randomise(m, rng);
  nn::MlpClassifier<double>::Workspace ws;
  Mat x = fpt::random_mat(6, 2, rng), z(3, 2), f(4, 2);
  Vec dp = Vec::Zero(m.num_params());
  // backward before any forward
  REQUIRE_THROWS_WITH(m.backward(ws, z, dp), Contains("[flowprior.state]"));
  REQUIRE_THROWS_WITH(m.forward(Mat(5, 2), z, ws), Contains("'x'") && Contains("(5, 2)"));
  REQUIRE_THROWS_AS(m.forward(Mat(6, 0), Mat(3, 0), ws), shape_error);
  REQUIRE_THROWS_WITH(m.forward(x, Mat(3, 3), ws), Contains("'logits'") && Contains("(3, 3)"));
  REQUIRE_THROWS_WITH(m.features(x, Mat(5, 2), ws), Contains("'features'"));
  m.forward(x, z, ws);
  REQUIRE_THROWS_WITH(m.backward(ws, z, Vec(m.num_params() + 1)), Contains("'d_params'"));
  REQUIRE_THROWS_WITH(m.backward(ws, Mat(3, 3), dp), Contains("'d_logits'"));
  REQUIRE_THROWS_WITH(m.backward(ws, z, dp, Mat(6, 3)), Contains("'d_x'"));

  // The cross-entropy's checks.
  const std::vector<std::int32_t> y = {0, 2};
  REQUIRE_THROWS_WITH(nn::softmax_cross_entropy<double>(z, std::vector<std::int32_t>{0}),
                      Contains("'labels'") && Contains("size 1"));
  REQUIRE_THROWS_AS(nn::softmax_cross_entropy<double>(z, std::vector<std::int32_t>{0, 3}),
                    value_error);
  REQUIRE_THROWS_WITH(nn::softmax_cross_entropy<double>(z, std::vector<std::int32_t>{-1, 0}),
                      Contains("[0, 3)") && Contains("-1 at index 0"));
  REQUIRE_THROWS_WITH(nn::softmax_cross_entropy<double>(z, y, Mat(3, 3)), Contains("'d_logits'"));
  REQUIRE_THROWS_WITH(nn::softmax_cross_entropy<double>(Mat(1, 2), y), Contains("'logits'"));
  Mat zn = z;
  zn(1, 1) = std::nan("");
  REQUIRE_THROWS_AS(nn::softmax_cross_entropy<double>(zn, y), flowprior::numeric_error);
  REQUIRE_THROWS_WITH(nn::softmax_cross_entropy<double>(zn, y), Contains("(1, 1)"));
}

TEST_CASE("classifier: blocks of larger matrices as inputs and outputs", "[classifier]") {
  nn::MlpClassifier<double> m(tiny());
  Rng rng(14);
  randomise(m, rng);
  const Mat x = fpt::random_mat(6, 3, rng);
  Mat big = Mat::Constant(9, 3, 42.0);
  big.topRows(6) = x;
  Mat zbig = Mat::Constant(5, 3, -1.0), z(3, 3);
  nn::MlpClassifier<double>::Workspace ws;
  m.forward(x, z, ws);
  m.forward(big.topRows(6), zbig.middleRows(1, 3), ws);
  REQUIRE(zbig.middleRows(1, 3) == z);
  REQUIRE((zbig.row(0).array() == -1.0).all());
  REQUIRE((zbig.row(4).array() == -1.0).all());
}

TEST_CASE("classifier: on the guarded backend, the same bits and no host access",
          "[classifier][backend][guarded]") {
  using G = fpt::GuardedBackend;
  using GModel = nn::MlpClassifier<double, G>;
  nn::MlpClassifier<double> m(tiny());
  GModel g(tiny());
  Rng rng(15);
  randomise(m, rng);
  const Index P = m.num_params(), B = 3;
  G::copy_from_host(m.parameters().data, P, g.parameters().data);
  const Mat x = fpt::random_mat(6, B, rng);
  const std::vector<std::int32_t> y = {1, 0, 2};
  // CPU.
  nn::MlpClassifier<double>::Workspace ws;
  Mat z(3, B), f(4, B), dz(3, B), dx = Mat::Zero(6, B);
  Vec dp = Vec::Zero(P);
  m.features(x, f, ws);
  m.forward(x, z, ws);
  const auto ce = nn::softmax_cross_entropy<double>(z, y, dz);
  m.backward(ws, dz, dp, dx);
  // Guarded: every tensor in guarded memory, read back only through copy_to_host.
  auto up = [](const Mat& h, fpt::GuardedBuffer<double>& buf) {
    G::copy_from_host(h.data(), h.size(), buf);
    return MatrixView<double>(buf.data(), h.rows(), h.cols());
  };
  auto down = [](const fpt::GuardedBuffer<double>& buf, Index r, Index c) {
    Mat h(r, c);
    G::copy_to_host(buf.data(), h.size(), h.data());
    return h;
  };
  fpt::GuardedBuffer<double> bx, bz, bf, bdz, bdx, bdp;
  const MatrixView<double> gx = up(x, bx), gz = up(Mat::Zero(3, B), bz),
                           gf = up(Mat::Zero(4, B), bf), gdz = up(Mat::Zero(3, B), bdz),
                           gdx = up(Mat::Zero(6, B), bdx), gdp = up(Mat::Zero(P, 1), bdp);
  GModel::Workspace gws;
  nn::SoftmaxCrossEntropy<double, G> xent;
  const long before = fpt::Guard::get().entries();
  g.features(gx, gf, gws);
  g.forward(gx, gz, gws);
  const auto gce = xent(gws.context(), gz, y, gdz);
  g.backward(gws, gdz, VectorView<double>(gdp.data, P), gdx);
  REQUIRE(fpt::Guard::get().entries() > before);
  REQUIRE(down(bf, 4, B) == f);
  REQUIRE(down(bz, 3, B) == z);
  REQUIRE(gce.loss == ce.loss);
  REQUIRE(gce.correct == ce.correct);
  REQUIRE(down(bdz, 3, B) == dz);
  REQUIRE(down(bdx, 6, B) == dx);
  REQUIRE(down(bdp, P, 1) == Mat(dp));
  // init runs on the host and uploads.
  Rng r1(16), r2(16);
  m.init(r1);
  g.init(r2);
  const std::vector<double> gp = fpt::host_copy(g.parameters().data, P);
  for (Index i = 0; i < P; ++i) REQUIRE(gp[std::size_t(i)] == m.parameters()[i]);
}

TEST_CASE("classifier: state dict round trip by PyTorch names", "[classifier][io]") {
  nn::MlpClassifier<float> m(tiny());
  Rng rng(17);
  m.init(rng);
  randomise(m, rng);  // non-zero biases too
  const fpt::TempDir tmp("classifier");
  const std::string path = (tmp.dir / "classifier.safetensors").string();
  flowprior::io::save_state_dict(m, path);
  const auto st = flowprior::io::Safetensors::read(path);
  const auto* e = st.find("head.weight");
  REQUIRE(e != nullptr);
  REQUIRE(e->shape == std::vector<std::int64_t>{3, 4});
  nn::MlpClassifier<float> back(tiny());
  REQUIRE(flowprior::io::load_state_dict(back, st) == "");
  for (Index i = 0; i < m.num_params(); ++i) REQUIRE(back.parameters()[i] == m.parameters()[i]);
  // Another architecture is refused.
  nn::MlpClassifier<float> wider(tiny({6, 4}));
  REQUIRE_THROWS_AS(flowprior::io::load_state_dict(wider, st), flowprior::io_error);
}
