// Header independence of include order: headers that declare a namespace flowprior::nn::detail
// (nn/tokenizer.hpp, nn/mlp.hpp) come first here, so a later header that names
// flowprior::detail unqualified from inside namespace nn would fail to compile (it did:
// nn/field.hpp). The header gate compiles each header alone; this checks one order of all.
#include <flowprior/nn/tokenizer.hpp>
// clang-format off
#include <flowprior/nn/mlp.hpp>
#include <flowprior/flowprior.hpp>
#include <flowprior/train/reconstruction.hpp>
// clang-format on

#include "catch.hpp"

TEST_CASE("include order: the tokenizer before the rest compiles and links", "[core]") {
  flowprior::nn::TokenizerConfig c;
  CHECK_NOTHROW(c.validate());
  CHECK(flowprior::train::ReconstructionConfig{}.clip_norm == 1.0);
}
