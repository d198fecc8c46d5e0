// The draws of a slice of a wider batch (loss::DrawShard, docs/math/data_parallel.md (4)): rows
// [r B, (r + 1) B) of a batch of P B rows equal exactly those columns of the wide draw, for every
// time sampler, antithetic pairs and time groups, and the generator advances as for the wide
// batch. No MPI is needed: this is what makes P ranks at batch B take one process's draws.
#include <flowprior/loss/draws.hpp>
#include <vector>

#include "catch.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Rng;
namespace loss = flowprior::loss;

TEST_CASE("draws: a shard's draws are the wide draw's columns", "[draws][shard]") {
  const Index d = 3, B = 5, K = 4, P = 3;
  struct Case {
    loss::TimeSampler sampler;
    bool antithetic;
    Index group;
  };
  const std::vector<Case> cases = {{loss::TimeSampler::uniform(), false, 1},
                                   {loss::TimeSampler::stratified(), true, 1},
                                   {loss::TimeSampler::logit_normal(0.3, 1.2), false, 3},
                                   {loss::TimeSampler::grid(), true, 1}};
  for (const Case& c : cases) {
    loss::FlowDraws<double> wide;
    Rng rw(42);
    loss::draw(wide, Convention::Paper, P * B, d, K, c.sampler, rw, c.antithetic, c.group);
    for (Index r = 0; r < P; ++r) {
      loss::FlowDraws<double> part;
      Rng rp(42);
      loss::draw(part, Convention::Paper, B, d, K, c.sampler, rp, c.antithetic, c.group,
                 loss::DrawShard{r * B, P * B});
      CHECK(rp() == Rng(rw)());  // the generator advanced as for the wide batch
      REQUIRE(part.cols() == B * K);
      for (Index j = 0; j < B * K; ++j) {
        CHECK(part.times()[j] == wide.times()[r * B * K + j]);
        for (Index i = 0; i < d; ++i)
          CHECK(part.noise().col(j)[i] == wide.noise().col(r * B * K + j)[i]);
      }
    }
  }
}

TEST_CASE("draws: a shard outside the batch is a config_error", "[draws][shard]") {
  loss::FlowDraws<double> out;
  Rng rng(1);
  CHECK_THROWS_AS(loss::draw(out, Convention::Paper, 4, 2, 2, loss::TimeSampler::uniform(), rng,
                             false, 1, loss::DrawShard{5, 8}),
                  flowprior::config_error);
  CHECK_THROWS_AS(loss::draw(out, Convention::Paper, 4, 2, 2, loss::TimeSampler::uniform(), rng,
                             false, 1, loss::DrawShard{-1, 8}),
                  flowprior::config_error);
}
