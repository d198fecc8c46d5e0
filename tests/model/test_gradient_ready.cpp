// The backward passes' reports (nn/gradient_ready.hpp, docs/distributed.md "Overlap"): AdaLNMlp
// (with and without conditioning, grouped times), MlpField, TokenizerAE (both posteriors,
// learned positions) and MlpClassifier report suffixes of the flat gradient in decreasing order, ending with 0,
// and a reported suffix is final: the values of d_params[lo, n) at the report are those at the
// end of the backward, bit for bit. A data-parallel trainer starts summing a suffix as soon as it
// is reported, so a value written after its report would be lost on every rank.
#include <cmath>
#include <flowprior/flowprior.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;
namespace nn = flowprior::nn;

namespace {

// Keeps, at every report, lo and a copy of the whole gradient.
class Recorder final : public nn::GradientReady {
 public:
  explicit Recorder(const std::vector<double>& g) : g_(g) {}
  void ready(Index lo) override {
    los.push_back(lo);
    snapshots.push_back(g_);
  }
  std::vector<Index> los;
  std::vector<std::vector<double>> snapshots;

 private:
  const std::vector<double>& g_;
};

// The reports are decreasing, end with 0, and every reported suffix held its final values.
void check_reports(const Recorder& r, const std::vector<double>& g, std::size_t min_reports) {
  REQUIRE(r.los.size() >= min_reports);
  CHECK(r.los.back() == 0);
  for (std::size_t k = 1; k < r.los.size(); ++k) CHECK(r.los[k] < r.los[k - 1]);
  for (std::size_t k = 0; k < r.los.size(); ++k) {
    const auto lo = static_cast<std::size_t>(r.los[k]);
    CAPTURE(k, lo);
    bool same = true;
    for (std::size_t i = lo; i < g.size(); ++i) same = same && r.snapshots[k][i] == g[i];
    CHECK(same);
    // ... and the part not yet reported was still being written (not everything was ready).
    if (k + 1 < r.los.size()) {
      bool changed = false;
      for (std::size_t i = 0; i < lo; ++i) changed = changed || r.snapshots[k][i] != g[i];
      CHECK(changed);
    }
  }
}

template <class Field>
void randomise(Field& f, Rng& rng) {
  f.init(rng);
  const auto p = f.parameters();
  for (Index i = 0; i < p.size; ++i) p.data[i] += 0.2 * flowprior::normal01(rng);
}

}  // namespace

TEST_CASE("gradient_ready: AdaLNMlp reports each layer's suffix once it is final", "[ready]") {
  const bool cond = GENERATE(false, true);
  const bool grouped = GENERATE(false, true);
  CAPTURE(cond, grouped);
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 8;
  c.depth = 3;
  c.time_freq_dim = 8;
  c.cond_dim = cond ? 2 : 0;
  nn::AdaLNMlp<double> net(c);
  Rng rng(4);
  randomise(net, rng);
  const Index B = 6;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(3, B), dv = Eigen::MatrixXd::Random(3, B), v(3, B),
                  dx = Eigen::MatrixXd::Zero(3, B), cd = Eigen::MatrixXd::Random(2, B);
  Eigen::VectorXd t(B);
  for (Index b = 0; b < B; ++b) t[b] = grouped ? (b < 3 ? 0.25 : 0.75) : 0.1 + 0.13 * double(b);
  std::vector<double> g(static_cast<std::size_t>(net.num_params()), 0.0);
  nn::AdaLNMlp<double>::Workspace ws;
  Recorder rec(g);
  ws.set_gradient_ready(&rec);
  const ConstMatrixView<double> xv(x.data(), 3, B);
  const flowprior::ConstVectorView<double> tv(t.data(), B);
  const ConstMatrixView<double> cv =
      cond ? ConstMatrixView<double>(cd.data(), 2, B) : ConstMatrixView<double>();
  net.forward(xv, tv, MatrixView<double>(v.data(), 3, B), ws, cv);
  net.backward(ws, ConstMatrixView<double>(dv.data(), 3, B), MatrixView<double>(dx.data(), 3, B),
               VectorView<double>(g.data(), Index(g.size())));
  check_reports(rec, g, std::size_t(c.depth) + 2);  // final layer, each block, the rest
  // A VJP (no parameter gradient) reports nothing.
  rec.los.clear();
  net.vjp_x(ws, ConstMatrixView<double>(dv.data(), 3, B), MatrixView<double>(dx.data(), 3, B));
  CHECK(rec.los.empty());
}

TEST_CASE("gradient_ready: MlpField reports each layer's suffix once it is final", "[ready]") {
  nn::MlpFieldConfig c;
  c.dim = 2;
  c.width = 8;
  c.depth = 3;
  nn::MlpField<double> net(c);
  Rng rng(5);
  randomise(net, rng);
  const Index B = 5;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(2, B), dv = Eigen::MatrixXd::Random(2, B), v(2, B);
  Eigen::VectorXd t = (Eigen::VectorXd::Random(B).array() * 0.4 + 0.5).matrix();
  std::vector<double> g(static_cast<std::size_t>(net.num_params()), 0.0);
  nn::MlpField<double>::Workspace ws;
  Recorder rec(g);
  ws.set_gradient_ready(&rec);
  net.forward(ConstMatrixView<double>(x.data(), 2, B), ConstVectorView<double>(t.data(), B),
              MatrixView<double>(v.data(), 2, B), ws);
  net.backward(ws, ConstMatrixView<double>(dv.data(), 2, B), MatrixView<double>(),
               VectorView<double>(g.data(), Index(g.size())));
  check_reports(rec, g, std::size_t(c.depth) + 1);
}

TEST_CASE("gradient_ready: TokenizerAE reports each half and block once it is final", "[ready]") {
  const bool gaussian = GENERATE(false, true);
  const bool learned = GENERATE(false, true);
  CAPTURE(gaussian, learned);
  nn::TokenizerConfig c;
  c.image_size = 4;
  c.channels = 2;
  c.patch = 2;
  c.width = 8;
  c.heads = 2;
  c.depth = 2;
  c.dec_depth = 2;
  c.latent_tokens = 2;
  c.latent_dim = 3;
  c.learned_pos_embed = learned;
  if (gaussian) c.posterior = nn::Posterior::gaussian;
  nn::TokenizerAE<double> m(c);
  Rng rng(6);
  randomise(m, rng);
  const Index B = 3, D = m.image_dim(), Ty = c.latent_tokens * B;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(D, B), recon(D, B), y(c.latent_dim, Ty),
                  d_recon = Eigen::MatrixXd::Random(D, B),
                  d_y = Eigen::MatrixXd::Random(c.latent_dim, Ty),
                  eps = Eigen::MatrixXd::Random(c.latent_dim, Ty);
  std::vector<double> g(static_cast<std::size_t>(m.num_params()), 0.0);
  nn::TokenizerAE<double>::Workspace ws;
  Recorder rec(g);
  ws.set_gradient_ready(&rec);
  const ConstMatrixView<double> xv(x.data(), D, B);
  const MatrixView<double> yv(y.data(), c.latent_dim, Ty), rv(recon.data(), D, B);
  if (gaussian) {
    m.forward(xv, ConstMatrixView<double>(eps.data(), c.latent_dim, Ty), yv, rv, ws);
    m.backward(ws, ConstMatrixView<double>(d_recon.data(), D, B),
               ConstMatrixView<double>(d_y.data(), c.latent_dim, Ty), 0.3,
               VectorView<double>(g.data(), Index(g.size())), MatrixView<double>());
  } else {
    m.forward(xv, yv, rv, ws);
    m.backward(ws, ConstMatrixView<double>(d_recon.data(), D, B),
               ConstMatrixView<double>(d_y.data(), c.latent_dim, Ty),
               VectorView<double>(g.data(), Index(g.size())), MatrixView<double>());
  }
  // The decoder's head, its 2 blocks, its input; the encoder's head, its 2 blocks, the rest.
  check_reports(rec, g, 8);
}

TEST_CASE("gradient_ready: MlpClassifier reports the head and each layer once final", "[ready]") {
  nn::ClassifierConfig c;
  c.input_dim = 5;
  c.hidden = {7, 6, 4};
  c.classes = 3;
  nn::MlpClassifier<double> m(c);
  Rng rng(8);
  randomise(m, rng);
  const Index B = 4;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(5, B), logits(3, B),
                  dz = Eigen::MatrixXd::Random(3, B);
  std::vector<double> g(static_cast<std::size_t>(m.num_params()), 0.0);
  nn::MlpClassifier<double>::Workspace ws;
  Recorder rec(g);
  ws.set_gradient_ready(&rec);
  m.forward(ConstMatrixView<double>(x.data(), 5, B), MatrixView<double>(logits.data(), 3, B), ws);
  m.backward(ws, ConstMatrixView<double>(dz.data(), 3, B),
             VectorView<double>(g.data(), Index(g.size())));
  check_reports(rec, g, c.hidden.size() + 1);
}
