// Header independence of include order: headers that declare a namespace flowprior::nn::detail
// (nn/tokenizer.hpp, nn/mlp.hpp) come first here, so a later header that names
// flowprior::detail unqualified from inside namespace nn would fail to compile (it did:
// nn/field.hpp). The header gate compiles each header alone; this checks one order of all, and
// that the library's eval/ and the 2-D pipeline's statistics (both in namespace flowprior::eval)
// define nothing twice (they did: detail::raise_value).
#include <flowprior/nn/tokenizer.hpp>
// clang-format off
#include <flowprior/nn/mlp.hpp>
#include <flowprior/flowprior.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <flowprior/toy2d/stats.hpp>
#include <flowprior/eval/frechet.hpp>
#include <flowprior/eval/knn.hpp>
#include <flowprior/eval/linear_probe.hpp>
#include <flowprior/data/pca.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/train/classification.hpp>
#include <flowprior/train/mar.hpp>
// clang-format on

#include "catch.hpp"

TEST_CASE("include order: the tokenizer before the rest compiles and links", "[core]") {
  flowprior::nn::TokenizerConfig c;
  CHECK_NOTHROW(c.validate());
  CHECK(flowprior::train::ReconstructionConfig{}.clip_norm == 1.0);
}
