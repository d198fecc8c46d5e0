// Features from files (features.hpp, docs/data.md "Features"): .npy and safetensors files of
// one row per sample become (dim, N) float matrices with one column per sample; wrong shapes,
// names, extensions and non-finite values are typed errors.
#include <Eigen/Core>
#include <cmath>
#include <flowprior/datasets/features.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/safetensors.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace {

namespace ds = flowprior::datasets;
namespace io = flowprior::io;
using flowprior::config_error;
using flowprior::io_error;

}  // namespace

TEST_CASE("features: npy and safetensors rows become (dim, N) columns", "[data]") {
  fpt::TempDir dir("features");
  // Five samples of dimension 3, row-major as NumPy writes them: sample j = (j, 10 + j, 20 + j).
  std::vector<float> rows;
  for (int j = 0; j < 5; ++j)
    for (int d = 0; d < 3; ++d) rows.push_back(static_cast<float>(10 * d + j));
  io::write_npy<float>(dir / "f.npy", rows.data(), {5, 3});
  const Eigen::MatrixXf a = ds::read_features(dir / "f.npy");
  REQUIRE(a.rows() == 3);
  REQUIRE(a.cols() == 5);
  for (int j = 0; j < 5; ++j)
    for (int d = 0; d < 3; ++d) CHECK(a(d, j) == static_cast<float>(10 * d + j));

  std::vector<double> rows64(rows.begin(), rows.end());
  io::SafetensorsWriter w;
  w.add("emb", rows64.data(), {5, 3}, io::Dtype::F64);
  w.write(dir / "one.safetensors");
  CHECK(ds::read_features(dir / "one.safetensors") == a);
  CHECK(ds::read_features(dir / "one.safetensors", "emb") == a);

  // Several tensors: a name is needed; 3-D (batch, tokens, dim) gives batch x tokens samples.
  io::SafetensorsWriter w2;
  w2.add("emb", rows.data(), {5, 3}, io::Dtype::F32);
  w2.add("tok", rows.data(), {1, 5, 3}, io::Dtype::F16);
  w2.add("scalar", rows.data(), {}, io::Dtype::F32);
  w2.write(dir / "two.safetensors");
  CHECK_THROWS_WITH(ds::read_features(dir / "two.safetensors"),
                    Catch::Contains("exactly one tensor") && Catch::Contains("'tok'"));
  CHECK(ds::read_features(dir / "two.safetensors", "tok") == a);
  CHECK_THROWS_WITH(ds::read_features(dir / "two.safetensors", "scalar"),
                    Catch::Contains("found shape ()"));
  CHECK_THROWS_AS(ds::read_features(dir / "two.safetensors", "nope"), io_error);

  // Non-finite values are refused; unknown extensions and a name for a .npy are config errors.
  rows[4] = std::numeric_limits<float>::quiet_NaN();
  io::write_npy<float>(dir / "nan.npy", rows.data(), {5, 3});
  CHECK_THROWS_AS(ds::read_features(dir / "nan.npy"), io_error);
  CHECK_THROWS_AS(ds::read_features(dir / "f.csv"), config_error);
  CHECK_THROWS_AS(ds::read_features(dir / "f.npy", "emb"), config_error);
  CHECK_THROWS_AS(ds::read_features(dir / "missing.npy"), io_error);
}
