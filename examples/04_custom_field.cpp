// 04: a velocity field of your own (docs/fields.md). TimeLinearField below is a small user
// network,
//     v(x, t) = (A + t B) x + c,
// written on the field shell nn::FieldBase, which supplies the argument checks, the workspace,
// the batched exact divergence and the public API every flowprior routine calls. The example
// trains it by flow matching on a Gaussian target, aligns free latents to it, and computes
// ODE log-likelihoods with its exact divergence, all through the same templates that run the
// released AdaLN flow head.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <flowprior/flowprior.hpp>
#include <string>
#include <vector>

namespace {

using namespace flowprior;

// The field's views into its workspace arenas: what the forward caches for the backward and the
// JVP, and the scratch of each pass.
template <class S>
struct TimeLinearCaches {
  MatrixView<S> x, t, h;  // forward: x (d, B), t (1, B), h = B x (d, B)
  MatrixView<S> s;        // backward: d_v scaled by t (d, B)
  MatrixView<S> bdx;      // jvp: B dx (d, B K)
};

// v(x, t) = (A + t B) x + c with A, B (d, d) column-major and c (d). Parameter names: "A", "B",
// "c". Time convention: none of its own (it is evaluated at the t it is given).
template <class S>
class TimeLinearField
    : public nn::FieldBase<TimeLinearField<S>, S, CpuBackend, TimeLinearCaches<S>> {
  using Base = nn::FieldBase<TimeLinearField<S>, S, CpuBackend, TimeLinearCaches<S>>;
  using Caches = TimeLinearCaches<S>;
  using Arena = nn::Arena<S, CpuBackend>;
  using Context = CpuBackend::Context;
  friend Base;

 public:
  explicit TimeLinearField(Index dim) : d_(dim) {
    if (dim <= 0) raise_config("TimeLinearField", "dim must be positive");
    a_ = this->layout_.add("A", {dim, dim});
    b_ = this->layout_.add("B", {dim, dim});
    c_ = this->layout_.add("c", {dim});
    this->allocate_parameters("TimeLinearField", "dim " + std::to_string(dim), dim,
                              {{dim, 0, 0, 0, 0, 0, 0}});
  }

 private:
  static constexpr nn::FieldNames kNames{"TimeLinearField::forward", "TimeLinearField::vjp_x",
                                         "TimeLinearField::backward", "TimeLinearField::jvp_x",
                                         "TimeLinearField::divergence"};
  Index cond_dim() const { return 0; }        // no conditioning input
  bool group_times() const { return false; }  // nothing to share between equal times

  ConstMatrixView<S> A() const { return {this->params_.data() + a_, d_, d_}; }
  ConstMatrixView<S> B() const { return {this->params_.data() + b_, d_, d_}; }

  void layout_forward(Arena& a, Caches& c, Index n, Index) const {
    c.x = a.take(d_, n);
    c.t = a.take(1, n);
    c.h = a.take(d_, n);
  }
  void layout_backward(Arena& a, Caches& c, Index n) const { c.s = a.take(d_, n); }
  void layout_jvp(Arena& a, Caches& c, Index cols) const { c.bdx = a.take(d_, cols); }

  // t has one entry per sample (group_times() is false, so group is always null).
  void forward_layers(Context& ctx, ConstMatrixView<S> x, ConstVectorView<S> t, const Index*,
                      MatrixView<S> v_out, ConstMatrixView<S>, Caches& c) const {
    const Index n = x.cols;
    CpuBackend::copy(ctx, x, c.x);
    CpuBackend::copy(ctx, ConstMatrixView<S>(t.data, 1, n, 1), c.t);
    CpuBackend::gemm(ctx, false, false, S(1), B(), x, S(0), c.h);  // h = B x
    CpuBackend::gemm(ctx, false, false, S(1), A(), x, S(0), v_out);
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < d_; ++i) v_out(i, j) += t[j] * c.h(i, j);
    CpuBackend::add_cols(ctx, this->params_.data() + c_, v_out);
  }

  // dA += d_v x^T, dB += (t d_v) x^T, dc += sum_b d_v, d_x += A^T d_v + B^T (t d_v).
  void backward_layers(Context& ctx, Caches& c, Index, ConstMatrixView<S> d_v, MatrixView<S> d_x,
                       S* d_p, MatrixView<S>) const {
    const Index n = d_v.cols;
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < d_; ++i) c.s(i, j) = c.t(0, j) * d_v(i, j);
    if (d_p) {
      CpuBackend::gemm(ctx, false, true, S(1), d_v, c.x, S(1), MatrixView<S>(d_p + a_, d_, d_));
      CpuBackend::gemm(ctx, false, true, S(1), c.s, c.x, S(1), MatrixView<S>(d_p + b_, d_, d_));
      CpuBackend::sum_cols(ctx, d_v, d_p + c_);
    }
    if (!d_x.empty()) {
      CpuBackend::gemm(ctx, true, false, S(1), A(), d_v, S(1), d_x);
      CpuBackend::gemm(ctx, true, false, S(1), B(), c.s, S(1), d_x);
    }
  }

  // dv = (A + t_b B) dx for tangent column j of sample b = j / K.
  void jvp_layers(Context& ctx, Caches& c, ConstMatrixView<S> dx, MatrixView<S> dv_out,
                  Index K) const {
    MatrixView<S> bdx = c.bdx.col_block(0, dx.cols);
    CpuBackend::gemm(ctx, false, false, S(1), B(), dx, S(0), bdx);
    CpuBackend::gemm(ctx, false, false, S(1), A(), dx, S(0), dv_out);
    for (Index j = 0; j < dx.cols; ++j)
      for (Index i = 0; i < d_; ++i) dv_out(i, j) += c.t(0, j / K) * bdx(i, j);
  }

  Index d_, a_ = 0, b_ = 0, c_ = 0;
};

// What Prior, the losses, the trainer, the aligner and the ODE routines require of a field.
static_assert(nn::is_trainable_field_v<TimeLinearField<double>>,
              "TimeLinearField provides every member a trained velocity field needs");

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A user-defined velocity field trained, aligned to and integrated by flowprior"};
  Index steps = 1500, latents = 200, align_steps = 1000, points = 200;
  app.add_option("--steps", steps, "flow-matching training steps (> 0)");
  app.add_option("--latents", latents, "latents to align (> 0)");
  app.add_option("--align-steps", align_steps, "alignment steps (> 0)");
  app.add_option("--points", points, "points whose log-likelihood is computed (> 0)");
  CLI11_PARSE(app, argc, argv);
  try {
    auto check = [](Index value, const char* name) {
      if (value <= 0 || value > 10000000)
        raise_config("04_custom_field",
                     std::string(name) + " must lie in [1, 1e7], got " + std::to_string(value));
    };
    check(steps, "--steps");
    check(latents, "--latents");
    check(align_steps, "--align-steps");
    check(points, "--points");
    // The target: N(mu, diag(sigma^2)) in 2-D, in the paper's convention (t = 1 is data).
    const Index d = 2;
    const std::vector<double> mu = {1.5, -0.5}, sigma = {0.5, 1.2};
    const Convention conv = Convention::Paper;
    Rng rng(404);
    auto sample_target = [&](MatrixView<double> out, Rng& r) {
      for (Index j = 0; j < out.cols; ++j)
        for (Index i = 0; i < d; ++i) out(i, j) = mu[i] + sigma[i] * normal01(r);
    };

    TimeLinearField<double> field(d);
    std::printf("TimeLinearField dim %td: %td parameters\n", d, field.num_params());

    // 1. Training by flow matching (FlowMatchingTrainer works with any trainable field).
    train::TrainerConfig tc;
    tc.batch = 128;
    tc.schedule = optim::LrSchedule::constant(2e-2);
    tc.ema_decay = 0.99;
    train::FlowMatchingTrainer<TimeLinearField<double>> trainer(field, conv, tc);
    double loss = 0;
    for (Index s = 0; s < steps; ++s) loss = trainer.step_with(sample_target, rng).loss;
    TimeLinearField<double> prior_field(d);
    trainer.copy_ema_to(prior_field);
    std::printf("flow matching: %td steps, last batch loss %.4f\n", steps, loss);

    // 2. Alignment of free latents under the frozen prior (the alignment loss's gradient goes
    // through the field's vjp_x).
    const Prior<TimeLinearField<double>> prior(prior_field, conv);
    Eigen::MatrixXd y = Eigen::MatrixXd::Zero(d, latents);
    for (Index j = 0; j < latents; ++j)
      for (Index i = 0; i < d; ++i) y(i, j) = 3.0 * normal01(rng);
    train::AlignConfig ac;
    train::LatentAligner<TimeLinearField<double>> aligner(prior, conv, latents, ac);
    double first = 0, last = 0;
    for (Index s = 0; s < align_steps; ++s) {
      last = aligner.step(y, rng);
      if (s == 0) first = last;
    }
    std::printf(
        "alignment: loss per latent %.4f -> %.4f; latent mean (%.3f, %.3f), target "
        "mean (%.3f, %.3f)\n",
        first, last, y.row(0).mean(), y.row(1).mean(), mu[0], mu[1]);

    // 3. ODE log-likelihood with the field's exact divergence, against the target's density.
    Eigen::MatrixXd x(d, points);
    sample_target(x, rng);
    Eigen::VectorXd logp(points);
    ode::OdeWorkspace<TimeLinearField<double>> ows;
    const auto st = ode::log_likelihood(prior, conv, x, logp, ode::LikelihoodOptions{}, ows);
    double exact = 0;
    for (Index j = 0; j < points; ++j)
      for (Index i = 0; i < d; ++i) {
        const double z = (x(i, j) - mu[i]) / sigma[i];
        exact += -0.5 * z * z - std::log(sigma[i]) - 0.5 * std::log(2 * std::acos(-1.0));
      }
    std::printf(
        "log-likelihood: mean %.4f nats under the prior, %.4f under the target "
        "(%td field evaluations)\n",
        logp.mean(), exact / double(points), st.nfe);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
