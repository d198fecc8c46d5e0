// User-defined velocity fields (docs/fields.md): a field written from scratch against the list
// of field_traits.hpp, and the same network on the field shell nn::FieldBase. Both satisfy the
// traits, their gradients, JVPs and divergences hold against finite differences in double at
// random parameters, and they run through Prior, the alignment loss, the trainer and the ODE
// likelihood.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "field_checks.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Prior;
using flowprior::Rng;
using flowprior::VectorView;
using fpt::Mat;
using fpt::Vec;
namespace nn = flowprior::nn;
namespace loss = flowprior::loss;
namespace ode = flowprior::ode;

namespace {

template <class S>
using EMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using CMap = Eigen::Map<const EMat<S>, 0, Eigen::OuterStride<>>;
template <class S>
using MMap = Eigen::Map<EMat<S>, 0, Eigen::OuterStride<>>;

template <class S>
CMap<S> cmap(ConstMatrixView<S> m) {
  return CMap<S>(m.data, m.rows, m.cols, Eigen::OuterStride<>(m.ld));
}
template <class S>
MMap<S> mmap(MatrixView<S> m) {
  return MMap<S>(m.data, m.rows, m.cols, Eigen::OuterStride<>(m.ld));
}

// The network both fields evaluate: v(x, t) = W2 tanh(W1 x + w t + b1) + b2, hidden width H,
// matrices column-major. Its parameter layout and its passes on Eigen maps.
template <class S>
struct TanhNet {
  Index d, H;
  nn::ParamLayout layout;
  Index W1, w, b1, W2, b2;
  TanhNet(Index d_, Index H_) : d(d_), H(H_) {
    W1 = layout.add("W1", {H, d});
    w = layout.add("w", {H});
    b1 = layout.add("b1", {H});
    W2 = layout.add("W2", {d, H});
    b2 = layout.add("b2", {d});
  }
  CMap<S> mat(const S* p, Index off, Index r, Index c) const {
    return CMap<S>(p + off, r, c, Eigen::OuterStride<>(r));
  }
  // h = tanh(W1 x + w t + b1), v = W2 h + b2.
  void forward(const S* p, ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> h,
               MatrixView<S> v) const {
    auto hm = mmap(h);
    hm.noalias() = mat(p, W1, H, d) * cmap(x);
    for (Index j = 0; j < x.cols; ++j)
      for (Index k = 0; k < H; ++k) hm(k, j) = std::tanh(hm(k, j) + p[w + k] * t[j] + p[b1 + k]);
    auto vm = mmap(v);
    vm.noalias() = mat(p, W2, d, H) * hm;
    vm.colwise() += mat(p, b2, d, 1).col(0);
  }
  // g = (W2^T d_v) * (1 - h^2); d_params += ...; d_x += W1^T g where d_x is non-empty.
  void backward(const S* p, ConstMatrixView<S> x, ConstVectorView<S> t, ConstMatrixView<S> h,
                ConstMatrixView<S> d_v, MatrixView<S> g, MatrixView<S> d_x, S* d_p) const {
    auto gm = mmap(g);
    const auto hm = cmap(h);
    gm.noalias() = mat(p, W2, d, H).transpose() * cmap(d_v);
    gm.array() *= (S(1) - hm.array().square());
    if (d_p) {
      MMap<S>(d_p + W2, d, H, Eigen::OuterStride<>(d)).noalias() += cmap(d_v) * hm.transpose();
      MMap<S>(d_p + b2, d, 1, Eigen::OuterStride<>(d)).col(0) += cmap(d_v).rowwise().sum();
      MMap<S>(d_p + W1, H, d, Eigen::OuterStride<>(H)).noalias() += gm * cmap(x).transpose();
      for (Index j = 0; j < x.cols; ++j)
        for (Index k = 0; k < H; ++k) {
          d_p[w + k] += gm(k, j) * t[j];
          d_p[b1 + k] += gm(k, j);
        }
    }
    if (!d_x.empty()) mmap(d_x).noalias() += mat(p, W1, H, d).transpose() * gm;
  }
  // dv = W2 ((1 - h_b^2) * (W1 dx)) for tangent column j of sample b = j / K.
  void jvp(const S* p, ConstMatrixView<S> h, ConstMatrixView<S> dx, MatrixView<S> dz,
           MatrixView<S> dv, Index K) const {
    auto zm = mmap(dz);
    zm.noalias() = mat(p, W1, H, d) * cmap(dx);
    for (Index j = 0; j < dx.cols; ++j)
      for (Index k = 0; k < H; ++k) zm(k, j) *= S(1) - h(k, j / K) * h(k, j / K);
    mmap(dv).noalias() = mat(p, W2, d, H) * zm;
  }
};

// 1. From scratch: exactly the members of field_traits.hpp, no shell.
template <class S>
class ScratchTanhField {
 public:
  using Scalar = S;
  struct Workspace {
    EMat<S> x, h, g, dz;
    Eigen::Matrix<S, Eigen::Dynamic, 1> t;
  };
  ScratchTanhField(Index d, Index H) : net_(d, H), p_(net_.layout.total()) {}
  Index dim() const { return net_.d; }
  Index num_params() const { return net_.layout.total(); }
  const nn::ParamLayout& layout() const { return net_.layout; }
  VectorView<S> parameters() { return {p_.data(), num_params()}; }

  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    ws.x = cmap(x);
    ws.t = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, 1>>(t.data, t.size);
    ws.h.resize(net_.H, x.cols);
    net_.forward(p_.data(), x, t, MatrixView<S>(ws.h), v_out);
  }
  void vjp_x(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x) const {
    ws.g.resize(net_.H, d_v.cols);
    net_.backward(p_.data(), ws.x, ws.t, ws.h, d_v, MatrixView<S>(ws.g), d_x,
                  static_cast<S*>(nullptr));
  }
  void backward(Workspace& ws, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                VectorView<S> d_params) const {
    ws.g.resize(net_.H, d_v.cols);
    net_.backward(p_.data(), ws.x, ws.t, ws.h, d_v, MatrixView<S>(ws.g), d_x, d_params.data);
  }
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K = 1) const {
    ws.dz.resize(net_.H, dx.cols);
    net_.jvp(p_.data(), ws.h, dx, MatrixView<S>(ws.dz), dv_out, K);
  }
  // tr(W2 diag(1 - h^2) W1) = sum_k (1 - h_k^2) (W1 W2)_kk per sample.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws) const {
    forward(x, t, v_out, ws);
    const EMat<S> m =
        net_.mat(p_.data(), net_.W1, net_.H, net_.d) * net_.mat(p_.data(), net_.W2, net_.d, net_.H);
    for (Index j = 0; j < x.cols; ++j) {
      S s = 0;
      for (Index k = 0; k < net_.H; ++k) s += (S(1) - ws.h(k, j) * ws.h(k, j)) * m(k, k);
      div_out[j] = s;
    }
  }

 private:
  TanhNet<S> net_;
  std::vector<S> p_;
};

// 2. The same network on the field shell: only the layers are written here.
template <class S>
struct ShellTanhCaches {
  MatrixView<S> x, t, h, g, dz;
};

template <class S>
class ShellTanhField : public nn::FieldBase<ShellTanhField<S>, S, CpuBackend, ShellTanhCaches<S>> {
  using Base = nn::FieldBase<ShellTanhField<S>, S, CpuBackend, ShellTanhCaches<S>>;
  using Caches = ShellTanhCaches<S>;
  using Arena = nn::Arena<S, CpuBackend>;
  using Context = CpuBackend::Context;
  friend Base;

 public:
  ShellTanhField(Index d, Index H) : net_(d, H) {
    this->layout_ = net_.layout;
    this->allocate_parameters("ShellTanhField", "test", d, {{d, H, 0, 0, 0, 0, 0}});
  }

 private:
  static constexpr nn::FieldNames kNames{"ShellTanhField::forward", "ShellTanhField::vjp_x",
                                         "ShellTanhField::backward", "ShellTanhField::jvp_x",
                                         "ShellTanhField::divergence"};
  Index cond_dim() const { return 0; }
  bool group_times() const { return false; }
  void layout_forward(Arena& a, Caches& c, Index B, Index) const {
    c.x = a.take(net_.d, B);
    c.t = a.take(1, B);
    c.h = a.take(net_.H, B);
  }
  void layout_backward(Arena& a, Caches& c, Index B) const { c.g = a.take(net_.H, B); }
  void layout_jvp(Arena& a, Caches& c, Index cols) const { c.dz = a.take(net_.H, cols); }
  void forward_layers(Context& ctx, ConstMatrixView<S> x, ConstVectorView<S> t, const Index*,
                      MatrixView<S> v_out, ConstMatrixView<S>, Caches& c) const {
    CpuBackend::copy(ctx, x, c.x);
    CpuBackend::copy(ctx, ConstMatrixView<S>(t.data, 1, x.cols, 1), c.t);
    net_.forward(this->params_.data(), x, t, c.h, v_out);
  }
  void backward_layers(Context&, Caches& c, Index, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                       S* d_p, MatrixView<S>) const {
    net_.backward(this->params_.data(), c.x, ConstVectorView<S>(c.t.data, c.t.cols), c.h, d_v, c.g,
                  d_x, d_p);
  }
  void jvp_layers(Context&, Caches& c, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const {
    net_.jvp(this->params_.data(), c.h, dx, c.dz.col_block(0, dx.cols), dv_out, K);
  }

  TanhNet<S> net_;
};

struct NotAField {
  using Scalar = double;
  struct Workspace {};
  Index dim() const { return 1; }
};

// The traits: both user fields qualify, the shipped fields too, anything else does not.
static_assert(nn::is_trainable_field_v<ScratchTanhField<double>>, "scratch field");
static_assert(nn::is_trainable_field_v<ShellTanhField<float>>, "shell field");
static_assert(nn::is_trainable_field_v<nn::AdaLNMlp<float>>, "AdaLNMlp");
static_assert(nn::is_trainable_field_v<nn::MlpField<double>>, "MlpField");
static_assert(nn::is_velocity_field_v<flowprior::analytic::GaussianMixtureField<double>>, "GMM");
static_assert(!nn::is_trainable_field_v<flowprior::analytic::GaussianMixtureField<double>>,
              "GMM has no parameters() to train");
static_assert(!nn::is_velocity_field_v<NotAField>, "missing members");
static_assert(!nn::is_velocity_field_v<int>, "not a class");

template <class Field>
void check_everything(Field& f, Rng& rng) {
  fpt::randomize_field(f, rng, 1.5);
  auto in = fpt::make_inputs(3, 5, 0, rng);
  fpt::check_field_gradients(f, in, rng);
  fpt::check_accumulation(f, in, rng);
  fpt::check_jvp(f, in, rng, 3);
  fpt::check_divergence(f, in);
}

}  // namespace

TEST_CASE("custom field: gradients, JVP and divergence against finite differences",
          "[model][grad]") {
  Rng rng(404);
  SECTION("from scratch") {
    ScratchTanhField<double> f(3, 7);
    check_everything(f, rng);
  }
  SECTION("on the field shell") {
    ShellTanhField<double> f(3, 7);
    check_everything(f, rng);
  }
}

TEST_CASE("custom field: the shell checks the arguments of a user field", "[model][error]") {
  ShellTanhField<double> f(3, 4);
  ShellTanhField<double>::Workspace ws;
  Mat x = Mat::Zero(3, 4), v(3, 4), bad(2, 4), d_x = Mat::Zero(3, 4);
  Vec t = Vec::Constant(4, 0.5), t_bad = Vec::Constant(4, 1.5);
  REQUIRE_THROWS_AS(f.vjp_x(ws, v, d_x), flowprior::error);  // no forward yet
  REQUIRE_THROWS_AS(f.forward(bad, t, v, ws), flowprior::shape_error);
  REQUIRE_THROWS_AS(f.forward(x, t_bad, v, ws), flowprior::value_error);
  f.forward(x, t, v, ws);
  REQUIRE_THROWS_AS(f.vjp_x(ws, bad, d_x), flowprior::shape_error);
  Vec d_p(f.num_params() + 1);
  REQUIRE_THROWS_AS(f.backward(ws, v, d_x, d_p), flowprior::shape_error);
  REQUIRE_THROWS_AS(f.jvp_x(ws, x, v, 0), flowprior::config_error);
}

TEST_CASE("custom field: Prior, alignment loss, trainer and ODE likelihood", "[model]") {
  Rng rng(405);
  const Index d = 3, N = 4, K = 3;
  ScratchTanhField<double> scratch(d, 6);
  ShellTanhField<double> shell(d, 6);
  fpt::randomize_field(scratch, rng);
  std::copy(scratch.parameters().data, scratch.parameters().data + scratch.num_params(),
            shell.parameters().data);
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  // Trained in the code convention, used in `conv` (a time-reversed view for Paper).
  const auto p1 = Prior<ScratchTanhField<double>>(scratch, Convention::Code).as(conv);
  const auto p2 = Prior<ShellTanhField<double>>(shell, Convention::Code).as(conv);

  // Alignment loss and its gradient in y, against finite differences.
  Mat y = fpt::random_mat(d, N, rng);
  loss::FlowDraws<double> draws;
  loss::draw(draws, conv, N, d, K, loss::TimeSampler::uniform(), rng);
  const loss::AlignmentOptions opt{loss::Reduction::SumChannels, 0.5, false};
  loss::LossWorkspace<ScratchTanhField<double>> w1;
  loss::LossWorkspace<ShellTanhField<double>> w2;
  Mat g1 = Mat::Zero(d, N), g2 = Mat::Zero(d, N);
  const double l1 = loss::alignment_loss(p1, conv, y, draws, opt, w1, {}, g1);
  const double l2 = loss::alignment_loss(p2, conv, y, draws, opt, w2, {}, g2);
  REQUIRE(std::abs(l1 - l2) <= 1e-14 * std::abs(l1));
  REQUIRE((g1 - g2).norm() <= 1e-13 * g1.norm());
  auto f = [&] { return loss::alignment_loss(p1, conv, y, draws, opt, w1); };
  fpt::require_close("d_y", g1.data(), fpt::fd_gradient(f, y.data(), y.size()), 1e-6);

  // Exact ODE log-likelihoods: the two fields agree.
  Mat x = fpt::random_mat(d, N, rng);
  Vec lp1(N), lp2(N);
  ode::LikelihoodOptions lo;
  lo.solver.atol = lo.solver.rtol = 1e-9;
  ode::OdeWorkspace<ScratchTanhField<double>> o1;
  ode::OdeWorkspace<ShellTanhField<double>> o2;
  ode::log_likelihood(p1, conv, x, lp1, lo, o1);
  ode::log_likelihood(p2, conv, x, lp2, lo, o2);
  REQUIRE(lp1.allFinite());
  REQUIRE((lp1 - lp2).norm() <= 1e-9 * lp1.norm());

  // A few training steps of the shell field, in the code convention.
  flowprior::train::TrainerConfig tc;
  tc.batch = 16;
  tc.schedule = flowprior::optim::LrSchedule::constant(1e-2);
  flowprior::train::FlowMatchingTrainer<ShellTanhField<double>> trainer(shell, Convention::Code,
                                                                        tc);
  const Mat targets = fpt::random_mat(d, 32, rng);
  for (int s = 0; s < 5; ++s) REQUIRE(std::isfinite(trainer.step(targets, rng).loss));
  REQUIRE(trainer.steps() == 5);
}
