// The layer primitives of KernelBackend (backend/kernel_layers.hpp), run on the host executor
// against CpuBackend on copies of the same random operands (padded views, NaN in the padding):
// activations (both kinds, K-broadcast, in place), time features (even and odd rows), the fused
// LayerNorm + modulation (with and without affine, modulation and time groups; accumulated
// outputs starting non-zero, written outputs starting NaN) and the gated residual.
#include <flowprior/core/activation.hpp>
#include <flowprior/core/random.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::Activation;
using flowprior::Index;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;

namespace {

/// A matrix whose elements (not only the padding) are NaN: for outputs that must be written.
template <class S>
Mat<S> nan_mat(Index rows, Index cols, Index pad) {
  Mat<S> m(rows, cols, pad);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m.at(i, j) = std::numeric_limits<S>::quiet_NaN();
  return m;
}

/// A random rows x cols matrix (padding pad).
template <class S>
Mat<S> rand_mat(flowprior::Rng& rng, Index rows, Index cols, Index pad, double lo = -2.0,
                double hi = 2.0) {
  Mat<S> m(rows, cols, pad);
  m.random(rng, lo, hi);
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("kernel backend: activations match the CPU", "[kernel][kernel_layers]", float,
                   double) {
  using S = TestType;
  flowprior::Rng rng(21);
  Contexts c;
  const Index C = 7, B = 5, K = 3;
  const Mat<S> z = rand_mat<S>(rng, C, B, 2, -6.0, 6.0);
  const Mat<S> da = rand_mat<S>(rng, C, B, 1);
  const Mat<S> dz = rand_mat<S>(rng, C, B * K, 3);
  for (const Activation act : {Activation::SiLU, Activation::GELU}) {
    INFO(flowprior::to_string(act));
    Mat<S> a_cpu = nan_mat<S>(C, B, 1), a_ker = nan_mat<S>(C, B, 2);
    Cpu::activation_forward(c.cpu, act, z.cview(), a_cpu.view());
    Ker::activation_forward(c.ker, act, z.cview(), a_ker.view());
    require_close(a_cpu, a_ker, "activation_forward");

    Mat<S> g_cpu = nan_mat<S>(C, B, 0), g_ker = nan_mat<S>(C, B, 3);
    Cpu::activation_backward(c.cpu, act, z.cview(), da.cview(), g_cpu.view());
    Ker::activation_backward(c.ker, act, z.cview(), da.cview(), g_ker.view());
    require_close(g_cpu, g_ker, "activation_backward");
    // In place: d_z_out aliases d_a.
    Mat<S> ip_cpu = da, ip_ker = da;
    Cpu::activation_backward(c.cpu, act, z.cview(), ip_cpu.cview(), ip_cpu.view());
    Ker::activation_backward(c.ker, act, z.cview(), ip_ker.cview(), ip_ker.view());
    require_close(ip_cpu, ip_ker, "activation_backward in place");
    require_close(g_cpu, ip_ker, "activation_backward in place = out of place");

    Mat<S> j_cpu = nan_mat<S>(C, B * K, 1), j_ker = nan_mat<S>(C, B * K, 2);
    Cpu::activation_jvp(c.cpu, act, z.cview(), dz.cview(), j_cpu.view(), K);
    Ker::activation_jvp(c.ker, act, z.cview(), dz.cview(), j_ker.view(), K);
    require_close(j_cpu, j_ker, "activation_jvp");
    Mat<S> jp = dz;
    Ker::activation_jvp(c.ker, act, z.cview(), jp.cview(), jp.view(), K);
    require_close(j_cpu, jp, "activation_jvp in place");
  }
  // Empty operands: nothing to do, nothing read.
  Mat<S> e(C, 0);
  Ker::activation_forward(c.ker, Activation::SiLU, e.cview(), e.view());
  Ker::activation_jvp(c.ker, Activation::GELU, e.cview(), e.cview(), e.view(), K);
}

TEMPLATE_TEST_CASE("kernel backend: time features match the CPU", "[kernel][kernel_layers]", float,
                   double) {
  using S = TestType;
  Contexts c;
  Mat<S> t(1, 6);
  const S tv[] = {0.0, 0.25, 0.5, 0.999, 1.0, 0.125};
  for (Index b = 0; b < 6; ++b) t.at(0, b) = tv[b] * S(1000);
  for (const Index rows : {Index(8), Index(9)}) {  // an odd last row stays as it was
    Mat<S> e_cpu(rows, 6, 1), e_ker(rows, 6, 2);
    Cpu::time_features(c.cpu, t.cvec(), S(10000), e_cpu.view());
    Ker::time_features(c.ker, t.cvec(), S(10000), e_ker.view());
    require_close(e_cpu, e_ker, "time_features");
    REQUIRE(e_ker.at(0, 0) == S(1));  // t = 0: cos 0 = 1, the features were written
  }
}

TEMPLATE_TEST_CASE("kernel backend: LayerNorm + modulation matches the CPU",
                   "[kernel][kernel_layers]", float, double) {
  using S = TestType;
  flowprior::Rng rng(33);
  Contexts c;
  const Index C = 6, B = 5, K = 2;
  const std::vector<Index> group_map = {0, 0, 1, 1, 2};  // three time groups
  const Mat<S> h = rand_mat<S>(rng, C, B, 2, -3.0, 3.0);
  const Mat<S> d_m = rand_mat<S>(rng, C, B, 1);
  const Mat<S> dh_tan = rand_mat<S>(rng, C, B * K, 3);
  const Mat<S> gamma = rand_mat<S>(rng, C, 1, 0, 0.5, 1.5), beta = rand_mat<S>(rng, C, 1, 0);
  const S eps = S(1e-5);

  for (int affine = 0; affine < 2; ++affine)
    for (int mod = 0; mod < 2; ++mod)
      for (int grouped = 0; grouped < 2; ++grouped) {
        if (grouped && !mod) continue;
        INFO("affine " << affine << ", modulation " << mod << ", grouped " << grouped);
        const Index G = grouped ? 3 : B;
        const Index* group = grouped ? group_map.data() : nullptr;
        const S* g = affine ? gamma.store.data() : nullptr;
        const S* bt = affine ? beta.store.data() : nullptr;
        Mat<S> shift(C, mod ? G : 0, 1), scale(C, mod ? G : 0, 2);
        shift.random(rng);
        scale.random(rng, -0.5, 0.5);

        // Forward: nhat, rstd and m written (they start NaN).
        Mat<S> n_cpu = nan_mat<S>(C, B, 1), n_ker = nan_mat<S>(C, B, 2);
        Mat<S> r_cpu = nan_mat<S>(B, 1, 0), r_ker = nan_mat<S>(B, 1, 0);
        Mat<S> m_cpu = nan_mat<S>(C, B, 3), m_ker = nan_mat<S>(C, B, 1);
        Cpu::norm_modulate_forward(c.cpu, h.cview(), g, bt, eps, shift.cview(), scale.cview(),
                                   n_cpu.view(), r_cpu.data(), m_cpu.view(), group);
        Ker::norm_modulate_forward(c.ker, h.cview(), g, bt, eps, shift.cview(), scale.cview(),
                                   n_ker.view(), r_ker.data(), m_ker.view(), group);
        require_close(n_cpu, n_ker, "nhat");
        require_close(r_cpu, r_ker, "rstd");
        require_close(m_cpu, m_ker, "m");

        // Backward, from the CPU's caches: d_h, d_gamma, d_beta accumulate (start random);
        // d_shift, d_scale are written per sample (start NaN) or accumulated per group.
        for (int want_mod = 0; want_mod < 2; ++want_mod)
          for (int want_affine = 0; want_affine < 2; ++want_affine) {
            if (want_mod && !mod) continue;
            if (want_affine && !affine) continue;
            INFO("d_shift/d_scale " << want_mod << ", d_gamma/d_beta " << want_affine);
            Mat<S> dh_cpu = rand_mat<S>(rng, C, B, 1), dh_ker = dh_cpu;
            const Index Gm = want_mod ? G : 0;
            Mat<S> dsh_cpu = grouped ? rand_mat<S>(rng, C, Gm, 2) : nan_mat<S>(C, Gm, 2);
            Mat<S> dsc_cpu = grouped ? rand_mat<S>(rng, C, Gm, 1) : nan_mat<S>(C, Gm, 1);
            Mat<S> dsh_ker = dsh_cpu, dsc_ker = dsc_cpu;
            Mat<S> dg_cpu = rand_mat<S>(rng, C, 1, 0), db_cpu = rand_mat<S>(rng, C, 1, 0);
            Mat<S> dg_ker = dg_cpu, db_ker = db_cpu;
            Cpu::norm_modulate_backward(c.cpu, n_cpu.cview(), r_cpu.data(), g, bt, scale.cview(),
                                        d_m.cview(), dh_cpu.view(), dsh_cpu.view(), dsc_cpu.view(),
                                        want_affine ? dg_cpu.data() : nullptr,
                                        want_affine ? db_cpu.data() : nullptr, group);
            Ker::norm_modulate_backward(c.ker, n_cpu.cview(), r_cpu.data(), g, bt, scale.cview(),
                                        d_m.cview(), dh_ker.view(), dsh_ker.view(), dsc_ker.view(),
                                        want_affine ? dg_ker.data() : nullptr,
                                        want_affine ? db_ker.data() : nullptr, group);
            require_close(dh_cpu, dh_ker, "d_h");
            require_close(dsh_cpu, dsh_ker, "d_shift");
            require_close(dsc_cpu, dsc_ker, "d_scale");
            require_close(dg_cpu, dg_ker, "d_gamma");
            require_close(db_cpu, db_ker, "d_beta");
          }

        // JVP with respect to h, K tangents per sample; in place (out aliases dh) too.
        Mat<S> j_cpu = nan_mat<S>(C, B * K, 1), j_ker = nan_mat<S>(C, B * K, 2);
        Cpu::norm_modulate_jvp(c.cpu, n_cpu.cview(), r_cpu.data(), g, scale.cview(), dh_tan.cview(),
                               j_cpu.view(), K, group);
        Ker::norm_modulate_jvp(c.ker, n_cpu.cview(), r_cpu.data(), g, scale.cview(), dh_tan.cview(),
                               j_ker.view(), K, group);
        require_close(j_cpu, j_ker, "norm_modulate_jvp");
        Mat<S> jp = dh_tan;
        Ker::norm_modulate_jvp(c.ker, n_cpu.cview(), r_cpu.data(), g, scale.cview(), jp.cview(),
                               jp.view(), K, group);
        require_close(j_cpu, jp, "norm_modulate_jvp in place");
      }

  // Empty batch: nothing written, nothing read.
  Mat<S> e(C, 0), none(C, 0);
  S* const no = nullptr;  // typed: S is deduced from every pointer argument
  Ker::norm_modulate_forward(c.ker, e.cview(), gamma.store.data(), beta.store.data(), eps,
                             none.cview(), none.cview(), e.view(), no, e.view());
  Ker::norm_modulate_backward(c.ker, e.cview(), no, no, no, none.cview(), e.cview(), e.view(),
                              none.view(), none.view(), no, no);
  Ker::norm_modulate_jvp(c.ker, e.cview(), no, no, none.cview(), e.cview(), e.view(), K);
}

TEMPLATE_TEST_CASE("kernel backend: gated residual matches the CPU", "[kernel][kernel_layers]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(45);
  Contexts c;
  const Index C = 5, B = 6, K = 3;
  const std::vector<Index> group_map = {0, 1, 1, 1, 2, 0};  // groups need not be runs here
  const Mat<S> z = rand_mat<S>(rng, C, B, 2), d_h = rand_mat<S>(rng, C, B, 1);
  const Mat<S> dz = rand_mat<S>(rng, C, B * K, 1);
  for (int grouped = 0; grouped < 2; ++grouped) {
    INFO("grouped " << grouped);
    const Index G = grouped ? 3 : B;
    const Index* group = grouped ? group_map.data() : nullptr;
    const Mat<S> gate = rand_mat<S>(rng, C, G, 3);

    Mat<S> h_cpu = rand_mat<S>(rng, C, B, 1), h_ker = h_cpu;
    Cpu::gated_residual_forward(c.cpu, gate.cview(), z.cview(), h_cpu.view(), group);
    Ker::gated_residual_forward(c.ker, gate.cview(), z.cview(), h_ker.view(), group);
    require_close(h_cpu, h_ker, "gated_residual_forward");

    for (int want_gate = 0; want_gate < 2; ++want_gate) {
      INFO("d_gate " << want_gate);
      const Index Gg = want_gate ? G : 0;
      Mat<S> dz_cpu = nan_mat<S>(C, B, 2), dz_ker = nan_mat<S>(C, B, 1);
      Mat<S> dg_cpu = grouped ? rand_mat<S>(rng, C, Gg, 1) : nan_mat<S>(C, Gg, 1);
      Mat<S> dg_ker = dg_cpu;
      Cpu::gated_residual_backward(c.cpu, gate.cview(), z.cview(), d_h.cview(), dz_cpu.view(),
                                   dg_cpu.view(), group);
      Ker::gated_residual_backward(c.ker, gate.cview(), z.cview(), d_h.cview(), dz_ker.view(),
                                   dg_ker.view(), group);
      require_close(dz_cpu, dz_ker, "d_z");
      require_close(dg_cpu, dg_ker, "d_gate");
    }

    Mat<S> t_cpu = rand_mat<S>(rng, C, B * K, 2), t_ker = t_cpu;
    Cpu::gated_residual_jvp(c.cpu, gate.cview(), dz.cview(), t_cpu.view(), K, group);
    Ker::gated_residual_jvp(c.ker, gate.cview(), dz.cview(), t_ker.view(), K, group);
    require_close(t_cpu, t_ker, "gated_residual_jvp");
  }
}
