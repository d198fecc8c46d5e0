// The processes of an example's run (docs/distributed.md "Examples"): one, or the ranks of
// `mpirun -np P`. 10_toy2d, 20_tokenizer and 30_image_pipeline share it. Every rank runs the
// same program with the same options; a training step trains on the rank's shard of the global
// batch and the trainer averages the gradient over the ranks; rank 0 alone prints and writes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <flowprior/core/check.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/train/communicator.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#if defined(FLOWPRIOR_EXAMPLE_MPI)
#include <flowprior/mpi/communicator.hpp>
#endif

namespace flowprior {
namespace examples {

struct Ranks {
  train::Communicator* comm = nullptr;  ///< not owned; nullptr: one process
  const char* program = "example";      ///< names the program in its config errors

  int rank() const { return comm ? comm->rank() : 0; }
  int size() const { return comm ? comm->size() : 1; }
  bool lead() const { return rank() == 0; }

  /// Runs the steps of `trainer` on the ranks (collective: rank 0's state is broadcast); one
  /// process: nothing (the trainer keeps its own communicator).
  template <class Trainer>
  void attach(Trainer& trainer) const {
    if (size() > 1) trainer.set_communicator(comm);
  }

  /// The batch of each rank for a global batch of `global` (option `opt`): config_error unless
  /// the ranks divide it.
  Index per_rank(const char* opt, Index global) const {
    if (global % size() != 0)
      raise_config(program, std::string(opt) + " " + std::to_string(global) +
                                " (the global batch) must be a multiple of the " +
                                std::to_string(size()) + " ranks");
    return global / size();
  }

  /// Makes a data loader (datasets::LoaderConfig) of global batch lc.batch_size read this rank's
  /// shard of each batch (docs/data.md "Sharding").
  template <class LoaderConfig>
  void shard(LoaderConfig& lc) const {
    lc.shard_rank = rank();
    lc.shard_count = size();
  }

  /// The sum over the ranks of a per-rank count (collective); one process: n.
  std::uint64_t total(std::uint64_t n, const char* what) const {
    if (size() == 1) return n;
    double v = double(n);  // exact below 2^53
    comm->allreduce_sum(&v, 1, what);
    return std::uint64_t(v);
  }

  /// The smallest of the ranks' row counts n (collective: every rank calls it at the same
  /// point); one process: n. A sharded loader gives a rank fewer rows when images of its shard
  /// were unreadable, and the trainers need equal shards (their draws and their average assume
  /// them), so every rank trains on that many rows of its shard: the few rows the others have
  /// more are dropped for this step.
  Index common_rows(Index n) const {
    if (size() == 1) return n;
    std::vector<double> all(static_cast<std::size_t>(size()), 0.0);
    all[static_cast<std::size_t>(rank())] = double(n);
    comm->allreduce_sum(all.data(), Index(all.size()), "the ranks' row counts");
    return Index(*std::min_element(all.begin(), all.end()));
  }

  /// This rank's columns of a global batch x: [r n, (r + 1) n) for n = x.cols / size().
  /// config_error when the ranks do not divide the batch: they would train on unequal shards.
  template <class S>
  ConstMatrixView<S> slice(ConstMatrixView<S> x) const {
    if (x.cols % size() != 0)
      raise_config(program, "a batch of " + std::to_string(x.cols) +
                                " images cannot be split over " + std::to_string(size()) +
                                " ranks (were unreadable images skipped?)");
    const Index n = x.cols / size();
    return ConstMatrixView<S>(x.data + x.rows * n * rank(), x.rows, n);
  }

  /// f() on rank 0 alone (a write), or on every rank (`everywhere`: a read of the shared
  /// folder); then the ranks agree, so a failure on one rank is an error on every rank
  /// (distributed_error on the others) instead of a hang. One process: f().
  template <class F>
  void agree(const char* what, F&& f, bool everywhere = false) const {
    if (size() == 1) {
      f();
      return;
    }
    train::agree_on(*comm, what, std::forward<F>(f), everywhere || lead());
  }
  /// agree(what, f): f on rank 0 alone.
  template <class F>
  void on_lead(const char* what, F&& f) const {
    agree(what, std::forward<F>(f));
  }
};

#if defined(FLOWPRIOR_EXAMPLE_MPI)
/// MPI's start for an example's main: one process without mpirun (MPI's singleton start), or
/// every rank of `mpirun -np P`. Returns false after printing the error when MPI cannot start.
inline bool start_mpi(int* argc, char*** argv, std::unique_ptr<mpi::Session>& session) {
  try {
    session = std::make_unique<mpi::Session>(argc, argv);
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return false;
  }
}

/// This process's rank in MPI_COMM_WORLD (after start_mpi), before any communicator exists.
inline int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
#endif

}  // namespace examples
}  // namespace flowprior
