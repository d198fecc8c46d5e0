// Test-only checks shared by every velocity field (AdaLNMlp, MlpField, ...). A field type F
// provides forward / vjp_x / backward / jvp_x / divergence with the documented semantics; these
// helpers verify each against finite differences in double precision.
#pragma once

#include <flowprior/flowprior.hpp>
#include <functional>
#include <string>

#include "catch.hpp"
#include "gradcheck.hpp"

namespace fpt {

constexpr double kFieldTol = 1e-6;

/// Random non-degenerate parameters: uniform weights scaled by 1/sqrt(fan_in), LayerNorm gains
/// around 1, non-zero biases and modulations (the released zero initialisation hides bugs).
template <class Field>
void randomize_field(Field& net, flowprior::Rng& rng, double scale = 1.0) {
  auto p = net.parameters();
  for (const auto& t : net.layout().tensors()) {
    double* q = p.data + t.offset;
    if (t.name.find("ln.weight") != std::string::npos) {
      fill_uniform(q, t.size(), rng, 0.6, 1.4);
    } else if (t.shape.size() == 2) {
      const double b = scale * std::sqrt(3.0 / double(t.shape[1]));
      fill_uniform(q, t.size(), rng, -b, b);
    } else {
      fill_uniform(q, t.size(), rng, -0.3, 0.3);
    }
  }
}

/// A batch of inputs for a field of dimension d.
struct FieldInputs {
  Mat x;
  Vec t;
  Mat cond;  ///< empty unless conditioned
};

inline FieldInputs make_inputs(Index dim, Index batch, Index cond_dim, flowprior::Rng& rng) {
  FieldInputs in;
  in.x = random_mat(dim, batch, rng, -1.5, 1.5);
  in.t = random_vec(batch, rng, 0.02, 0.98);
  if (cond_dim > 0) in.cond = random_mat(cond_dim, batch, rng);
  return in;
}

/// forward with or without conditioning, depending on the field type.
template <class Field>
void field_forward(const Field& net, const FieldInputs& in, Mat& v, typename Field::Workspace& ws) {
  if constexpr (std::is_same_v<Field, flowprior::nn::AdaLNMlp<typename Field::Scalar>>) {
    net.forward(in.x, in.t, v, ws, in.cond);
  } else {
    net.forward(in.x, in.t, v, ws);
  }
}

/// Checks vjp_x and backward (d_x, every parameter tensor, d_cond) against finite differences of
/// L = <u, v(x, t)>.
template <class Field>
void check_field_gradients(Field& net, FieldInputs in, flowprior::Rng& rng) {
  const Index d = net.dim(), N = in.x.cols();
  typename Field::Workspace ws;
  Mat u = random_mat(d, N, rng), v(d, N);
  auto loss = [&] {
    field_forward(net, in, v, ws);
    return dot(u, v);
  };
  loss();
  Mat d_x_vjp = Mat::Zero(d, N);
  net.vjp_x(ws, u, d_x_vjp);
  Mat d_x = Mat::Zero(d, N);
  Vec d_p = Vec::Zero(net.num_params());
  Mat d_cond = Mat::Zero(in.cond.rows(), in.cond.cols());
  if constexpr (std::is_same_v<Field, flowprior::nn::AdaLNMlp<double>>) {
    net.backward(ws, u, d_x, d_p, d_cond);
  } else {
    net.backward(ws, u, d_x, d_p);
  }
  const auto fd_x = fd_gradient(loss, in.x.data(), in.x.size());
  require_close("d_x (vjp_x)", d_x_vjp.data(), fd_x, kFieldTol);
  require_close("d_x (backward)", d_x.data(), fd_x, kFieldTol);
  auto p = net.parameters();
  const auto fd_p = fd_gradient(loss, p.data, p.size);
  for (const auto& t : net.layout().tensors())
    require_close(t.name, d_p.data() + t.offset, fd_p.data() + t.offset, t.size(), kFieldTol);
  if (in.cond.size() > 0) {
    require_close("d_cond", d_cond.data(), fd_gradient(loss, in.cond.data(), in.cond.size()),
                  kFieldTol);
  }
}

/// Backward twice accumulates exactly twice; vjp_x likewise.
template <class Field>
void check_accumulation(Field& net, const FieldInputs& in, flowprior::Rng& rng) {
  const Index d = net.dim(), N = in.x.cols();
  typename Field::Workspace ws;
  Mat u = random_mat(d, N, rng), v(d, N);
  field_forward(net, in, v, ws);
  Mat d_x1 = Mat::Zero(d, N), d_x2 = Mat::Zero(d, N);
  Vec d_p1 = Vec::Zero(net.num_params()), d_p2 = Vec::Zero(net.num_params());
  net.backward(ws, u, d_x1, d_p1);
  net.backward(ws, u, d_x2, d_p2);
  net.backward(ws, u, d_x2, d_p2);
  REQUIRE((d_x2 - 2 * d_x1).norm() <= 1e-13 * d_x1.norm());
  REQUIRE((d_p2 - 2 * d_p1).norm() <= 1e-13 * d_p1.norm());
  Mat e1 = Mat::Zero(d, N), e2 = Mat::Zero(d, N);
  net.vjp_x(ws, u, e1);
  net.vjp_x(ws, u, e2);
  net.vjp_x(ws, u, e2);
  REQUIRE((e2 - 2 * e1).norm() <= 1e-13 * e1.norm());
  REQUIRE((e1 - d_x1).norm() <= 1e-13 * e1.norm());
}

/// JVP against the VJP (u . (J w) == (J^T u) . w) and against finite differences, K tangents.
template <class Field>
void check_jvp(Field& net, FieldInputs in, flowprior::Rng& rng, Index K) {
  const Index d = net.dim(), N = in.x.cols();
  typename Field::Workspace ws;
  Mat v(d, N);
  field_forward(net, in, v, ws);
  Mat w = random_mat(d, N * K, rng), jw(d, N * K);
  net.jvp_x(ws, w, jw, K);
  for (Index k = 0; k < K; ++k) {
    Mat wk(d, N), jwk(d, N);
    for (Index b = 0; b < N; ++b) {
      wk.col(b) = w.col(b * K + k);
      jwk.col(b) = jw.col(b * K + k);
    }
    // VJP with a random cotangent, per sample.
    Mat u = random_mat(d, N, rng), jtu = Mat::Zero(d, N);
    field_forward(net, in, v, ws);
    net.vjp_x(ws, u, jtu);
    for (Index b = 0; b < N; ++b) {
      const double lhs = u.col(b).dot(jwk.col(b));
      const double rhs = jtu.col(b).dot(wk.col(b));
      INFO("sample " << b << " tangent " << k);
      REQUIRE(lhs == Approx(rhs).epsilon(1e-10).margin(1e-12));
    }
    // Finite differences along w.
    const double h = 1e-6;
    FieldInputs ip = in, im = in;
    ip.x += h * wk;
    im.x -= h * wk;
    Mat vp(d, N), vm(d, N);
    field_forward(net, ip, vp, ws);
    field_forward(net, im, vm, ws);
    Mat fd = (vp - vm) / (2 * h);
    require_close("jvp tangent " + std::to_string(k), jwk.data(), fd.data(), fd.size(), kFieldTol);
  }
}

template <class F, class = void>
struct has_chunked_divergence : std::false_type {};
template <class F>
struct has_chunked_divergence<
    F, std::void_t<decltype(std::declval<const F&>().divergence(
           std::declval<Mat&>(), std::declval<Vec&>(), std::declval<Mat&>(), std::declval<Vec&>(),
           std::declval<typename F::Workspace&>(), Index{}))>> : std::true_type {};

/// Exact divergence against the finite-difference trace, with and without chunking.
template <class Field>
void check_divergence(Field& net, FieldInputs in) {
  const Index d = net.dim(), N = in.x.cols();
  typename Field::Workspace ws;
  Mat v(d, N), v2(d, N), v_ref(d, N);
  Vec div(N), div2(N);
  if constexpr (std::is_same_v<Field, flowprior::nn::AdaLNMlp<double>>) {
    net.divergence(in.x, in.t, v, div, ws, in.cond);
    net.divergence(in.x, in.t, v2, div2, ws, in.cond, /*max_tangent_cols=*/d);  // one row a chunk
  } else if constexpr (has_chunked_divergence<Field>::value) {
    net.divergence(in.x, in.t, v, div, ws);
    net.divergence(in.x, in.t, v2, div2, ws, /*max_tangent_cols=*/d);
  } else {
    net.divergence(in.x, in.t, v, div, ws);
    net.divergence(in.x, in.t, v2, div2, ws);
  }
  field_forward(net, in, v_ref, ws);
  REQUIRE((v - v_ref).norm() <= 1e-14 * v_ref.norm());
  REQUIRE((div - div2).norm() <= 1e-13 * div.norm());
  Vec fd = Vec::Zero(N);
  const double h = 1e-6;
  for (Index k = 0; k < d; ++k) {
    FieldInputs ip = in, im = in;
    ip.x.row(k).array() += h;
    im.x.row(k).array() -= h;
    Mat vp(d, N), vm(d, N);
    field_forward(net, ip, vp, ws);
    field_forward(net, im, vm, ws);
    fd += ((vp.row(k) - vm.row(k)) / (2 * h)).transpose();
  }
  require_close("divergence", div.data(), fd.data(), N, kFieldTol);
}

}  // namespace fpt
