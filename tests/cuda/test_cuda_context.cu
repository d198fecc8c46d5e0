// The CUDA executor itself (include/flowprior/backend/cuda.cuh): device buffers (growth keeps the
// content, copies are deep), contexts (created lazily, movable), typed errors naming the failed
// call, and the float GEMM precisions against a double reference with their error bounds
// (docs/cuda.md "Precision of float products").
#include <cmath>
#include <cstdint>
#include <flowprior/backend/cuda.cuh>
#include <flowprior/core/random.hpp>
#include <string>
#include <vector>

#include "catch.hpp"

using flowprior::ConstMatrixView;
using flowprior::CudaBackend;
using flowprior::DeviceBuffer;
using flowprior::GemmPrecision;
using flowprior::Index;
using flowprior::MatrixView;

namespace {

template <class T>
std::vector<T> download(const DeviceBuffer<T>& b) {
  std::vector<T> h(b.size());
  CudaBackend::copy_to_host(b, h.data());
  return h;
}

std::vector<float> uniform_floats(std::size_t n, flowprior::Rng& rng) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(flowprior::uniform(rng, -1.0, 1.0));
  return v;
}

}  // namespace

TEST_CASE("cuda: device buffers grow keeping their content, and copy deeply", "[cuda]") {
  const std::vector<double> in = {1, 2, 3, 4, 5};
  DeviceBuffer<double> a;
  CudaBackend::copy_from_host(in.data(), 5, a);
  REQUIRE(a.size() == 5);
  const long before = flowprior::device_allocations().load();
  a.resize(3);  // shrinking the size keeps the allocation
  REQUIRE(a.capacity() == 5);
  a.resize(5);
  REQUIRE(flowprior::device_allocations().load() == before);
  a.resize(1000);  // growth: a new allocation holding the old elements
  REQUIRE(flowprior::device_allocations().load() == before + 1);
  std::vector<double> head(5);
  CudaBackend::copy_to_host(a.data(), 5, head.data());
  REQUIRE(head == in);
  DeviceBuffer<double> b = a;  // deep copy
  const double nine = 9;
  CudaBackend::copy_from_host(&nine, 1, a.data());
  CudaBackend::copy_to_host(b.data(), 5, head.data());
  REQUIRE(head == in);
  DeviceBuffer<double> c = std::move(b);
  REQUIRE(b.data() == nullptr);
  REQUIRE(c.size() == 1000);
}

TEST_CASE("cuda: contexts are created on first use and move", "[cuda]") {
  CudaBackend::Context a;
  REQUIRE(a.gemm_precision() == GemmPrecision::fp32);
  cudaStream_t s = a.stream();
  REQUIRE(s != nullptr);
  CudaBackend::Context b(std::move(a));
  REQUIRE(b.stream() == s);
  b.synchronize();
}

TEST_CASE("cuda: a failed call is a device_error naming it", "[cuda]") {
  CudaBackend::Context ctx;
  DeviceBuffer<float> buf;
  CudaBackend::resize(buf, 16);
  // A product with a leading dimension smaller than its rows: cuBLAS refuses it.
  const ConstMatrixView<float> A(buf.data(), 4, 4, 2);
  try {
    CudaBackend::gemm(ctx, false, false, 1.0f, A, A, 0.0f, MatrixView<float>(buf.data(), 4, 4));
    FAIL("no device_error");
  } catch (const flowprior::device_error& e) {
    const std::string what = e.what();
    REQUIRE(what.find("[flowprior.device] cublasSgemm") == 0);
    REQUIRE(what.find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
  }
  // An allocation no device can serve.
  DeviceBuffer<double> huge;
  REQUIRE_THROWS_AS(huge.resize(std::size_t(1) << 50), flowprior::device_error);
  REQUIRE(huge.size() == 0);
}

TEST_CASE("cuda: float products in FP32, TF32 and BF16 within their error bounds", "[cuda]") {
  flowprior::Rng rng(3);
  const Index m = 64, n = 48, k = 256;
  const std::vector<float> a = uniform_floats(std::size_t(m * k), rng),
                           b = uniform_floats(std::size_t(k * n), rng);
  // Reference in double, and sum |a||b| for the bounds.
  std::vector<double> ref(std::size_t(m * n)), mag(std::size_t(m * n));
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) {
      double s = 0, g = 0;
      for (Index p = 0; p < k; ++p) {
        const double x = a[std::size_t(i + p * m)], y = b[std::size_t(p + j * k)];
        s += x * y;
        g += std::abs(x * y);
      }
      ref[std::size_t(i + j * m)] = s;
      mag[std::size_t(i + j * m)] = g;
    }
  DeviceBuffer<float> A, B, C;
  CudaBackend::copy_from_host(a.data(), m * k, A);
  CudaBackend::copy_from_host(b.data(), k * n, B);
  CudaBackend::resize(C, m * n);
  // Unit roundoff of the inputs' format, plus FP32 accumulation over k terms.
  const struct {
    GemmPrecision p;
    double u_in;
  } cases[] = {{GemmPrecision::fp32, 0.0},
               {GemmPrecision::tf32, std::ldexp(1.0, -11)},
               {GemmPrecision::bf16, std::ldexp(1.0, -8)}};
  for (const auto& c : cases) {
    CudaBackend::Context ctx(c.p);
    CudaBackend::gemm(ctx, false, false, 1.0f, ConstMatrixView<float>(A.data(), m, k),
                      ConstMatrixView<float>(B.data(), k, n), 0.0f,
                      MatrixView<float>(C.data(), m, n));
    const std::vector<float> got = download(C);
    const double bound_per_mag = 2.0 * c.u_in + double(k) * std::ldexp(1.0, -24);
    double worst = 0;
    for (std::size_t e = 0; e < got.size(); ++e) {
      const double err = std::abs(double(got[e]) - ref[e]);
      REQUIRE(err <= bound_per_mag * mag[e] + 1e-30);
      worst = std::max(worst, err / mag[e]);
    }
    INFO("precision " << int(c.p) << ": worst |error| / sum|a b| = " << worst);
    SUCCEED();
  }
}
