/// @file
/// MpiCommunicator: train::Communicator on MPI (docs/distributed.md), in the optional target
/// flowprior::mpi (links MPI::MPI_CXX, defines FLOWPRIOR_HAS_MPI=1). The only header of flowprior
/// that includes <mpi.h>; the library itself needs no MPI.
///
/// Bounded waits: every collective is started non-blocking (MPI_Iallreduce, MPI_Ibcast,
/// MPI_Ibarrier) and polled with MPI_Test until it completes or the deadline (timeout_s)
/// passes; then distributed_error "[flowprior.distributed] <call>: rank R: no answer from the
/// other ranks within T s during <what>". A blocking MPI_Allreduce would wait forever for a rank
/// that died. MPI errors are returned, not fatal (MPI_ERRORS_RETURN on a duplicate of the
/// communicator), and become distributed_error naming the call, the rank and MPI's message.
/// After a failed or timed-out call the communicator is broken: every later call throws at once
/// (a collective left pending cannot be matched again). The library never calls MPI_Abort;
/// abort_all() is there for a program's top-level catch.
///
/// start_sum / progress / finish_sums (overlap of a step's gradient sum with its backward pass)
/// are MPI_Iallreduce requests kept pending, tested on progress() and waited for, in order,
/// against the same deadline.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/train/communicator.hpp>
#include <string>
#include <thread>
#include <vector>

namespace flowprior {
namespace mpi {

/// Options of MpiCommunicator.
struct MpiOptions {
  /// Seconds a collective may wait for the other ranks before distributed_error (> 0, finite).
  /// Set it above the longest gap between two collectives of the slowest rank (a checkpoint
  /// write, an evaluation on rank 0).
  double timeout_s = 60.0;

  /// Throws config_error naming the field.
  void validate() const {
    if (!(timeout_s > 0 && std::isfinite(timeout_s)))
      raise_config("MpiOptions",
                   "timeout_s must be finite and > 0, got " + short_number(timeout_s));
  }
};

/// Whether MPI has been initialised and not finalised.
inline bool mpi_active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

/// Set when a communicator of this process breaks (a collective timed out or failed): MPI_Finalize
/// would then wait for ranks that may be dead, so Session skips it.
inline std::atomic<bool>& any_broken() {
  static std::atomic<bool> flag{false};
  return flag;
}

/// MPI_Init_thread / MPI_Finalize for a program's main (RAII; MPI_THREAD_FUNNELED: only the
/// main thread calls MPI). Does nothing when MPI is already initialised by someone else.
class Session {
 public:
  Session(int* argc, char*** argv) {
    int init = 0;
    MPI_Initialized(&init);
    if (init) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      flowprior::detail::raise<distributed_error>("[flowprior.distributed] MPI_Init_thread failed");
    owner_ = true;
  }
  /// Finalises MPI, unless a communicator broke: MPI_Finalize is collective in practice and
  /// would hang on a dead rank, so the process then ends without it (the run is failing anyway;
  /// mpirun reports the ranks that ended without finalising).
  ~Session() {
    if (owner_ && mpi_active() && !any_broken().load()) MPI_Finalize();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

 private:
  bool owner_ = false;
};

/// train::Communicator on an MPI communicator (MPI_COMM_WORLD by default), which it duplicates
/// so that its traffic never meets the program's. MPI must be initialised first (Session);
/// distributed_error otherwise. Collectives must be made from one thread.
class MpiCommunicator final : public train::Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm base = MPI_COMM_WORLD, MpiOptions opt = {}) : opt_(opt) {
    opt_.validate();
    if (!mpi_active())
      flowprior::detail::raise<distributed_error>(
          "[flowprior.distributed] MpiCommunicator: MPI is not initialised (create an "
          "mpi::Session, or call MPI_Init, first)");
    check(MPI_Comm_dup(base, &comm_), "MPI_Comm_dup", "the communicator");
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
          "the communicator");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank", "the communicator");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size", "the communicator");
    pending_.reserve(64);
  }
  ~MpiCommunicator() override {
    // A broken communicator may hold a pending collective: freeing it could block.
    if (!broken_ && comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const MpiOptions& options() const { return opt_; }
  /// The duplicated MPI communicator.
  MPI_Comm native() const { return comm_; }
  /// Whether a call failed or timed out (every later call throws).
  bool broken() const { return broken_; }

  void allreduce_sum(double* data, Index n, const char* what) override {
    allreduce(data, n, MPI_DOUBLE, what);
  }
  void allreduce_sum(float* data, Index n, const char* what) override {
    allreduce(data, n, MPI_FLOAT, what);
  }
  void broadcast(double* data, Index n, int root, const char* what) override {
    bcast(data, n, MPI_DOUBLE, root, what);
  }
  void broadcast(float* data, Index n, int root, const char* what) override {
    bcast(data, n, MPI_FLOAT, root, what);
  }
  void barrier(const char* what) override {
    usable("MPI_Ibarrier", what);
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier", what);
    wait(req, "MPI_Ibarrier", what);
  }

  /// MPI_Iallreduce, in place, left pending until finish_sums (at most INT_MAX values each).
  void start_sum(double* data, Index n, const char* what) override {
    start(data, n, MPI_DOUBLE, what);
  }
  void start_sum(float* data, Index n, const char* what) override {
    start(data, n, MPI_FLOAT, what);
  }
  /// MPI_Test on every pending sum (Open MPI progresses its non-blocking collectives only
  /// inside MPI calls). A failure breaks the communicator and throws distributed_error.
  void progress() override {
    for (MPI_Request& req : pending_) {
      if (req == MPI_REQUEST_NULL) continue;
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test", "a started sum");
    }
  }
  /// Waits for the pending sums in the order they were started, each against the deadline.
  void finish_sums(const char* what) override {
    for (MPI_Request& req : pending_) {
      if (req != MPI_REQUEST_NULL) wait(req, "MPI_Iallreduce", what);
    }
    pending_.clear();  // keeps the capacity: a warmed-up step allocates nothing
  }
  /// Sums started and not yet finished.
  std::size_t pending_sums() const { return pending_.size(); }

  /// MPI_Abort on MPI_COMM_WORLD with `code`: ends every rank of the job. For a program's
  /// top-level catch only (after it has printed its error); the library never calls it.
  [[noreturn]] static void abort_all(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();  // MPI_Abort does not return; if it did, stop anyway
  }

 private:
  void allreduce(void* data, Index n, MPI_Datatype type, const char* what) {
    usable("MPI_Iallreduce", what);
    const int count = to_count(n, what);
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count, type, MPI_SUM, comm_, &req), "MPI_Iallreduce",
          what);
    wait(req, "MPI_Iallreduce", what);
  }

  void start(void* data, Index n, MPI_Datatype type, const char* what) {
    usable("MPI_Iallreduce", what);
    const int count = to_count(n, what);
    pending_.push_back(MPI_REQUEST_NULL);
    check(MPI_Iallreduce(MPI_IN_PLACE, data, count, type, MPI_SUM, comm_, &pending_.back()),
          "MPI_Iallreduce", what);
  }

  void bcast(void* data, Index n, MPI_Datatype type, int root, const char* what) {
    usable("MPI_Ibcast", what);
    if (root < 0 || root >= size_)
      raise_config(what, "the broadcast's root must be a rank in [0, " + std::to_string(size_) +
                             "), got " + std::to_string(root));
    const int count = to_count(n, what);
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Ibcast(data, count, type, root, comm_, &req), "MPI_Ibcast", what);
    wait(req, "MPI_Ibcast", what);
  }

  int to_count(Index n, const char* what) const {
    if (n < 0 || n > Index(INT_MAX))
      raise_config(what, "a collective of " + std::to_string(n) +
                             " values (MPI counts are int: at most " + std::to_string(INT_MAX) +
                             ")");
    return static_cast<int>(n);
  }

  /// Polls req until it completes or the deadline passes. MPI_Test back to back, yielding the
  /// core between tests: Open MPI advances a non-blocking collective only inside MPI calls, so a
  /// pause between tests (this loop slept 100 us after the first millisecond once) stalls a
  /// large sum at every round of its algorithm (measured: the paper prior's 140 MB gradient took
  /// 800 ms instead of 115 ms). Open MPI's own blocking collectives poll the same way.
  void wait(MPI_Request& req, const char* call, const char* what) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                             std::chrono::duration<double>(opt_.timeout_s));
    for (unsigned k = 0;; ++k) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), call, what);
      if (done) return;
      if ((k & 63u) == 0 && clock::now() >= deadline) {
        broken_ = true;
        any_broken() = true;
        fail(call, what,
             "no answer from the other ranks within " + short_number(opt_.timeout_s) +
                 " s (a rank died, hangs, or failed outside a collective step)");
      }
      std::this_thread::yield();
    }
  }

  void usable(const char* call, const char* what) const {
    if (broken_) fail(call, what, "an earlier collective failed or timed out on this communicator");
  }

  void check(int rc, const char* call, const char* what) {
    if (rc == MPI_SUCCESS) return;
    broken_ = true;
    any_broken() = true;
    char text[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(rc, text, &len);
    fail(call, what, std::string(text, static_cast<std::size_t>(len > 0 ? len : 0)));
  }

  [[noreturn]] FLOWPRIOR_COLD void fail(const char* call, const char* what,
                                        const std::string& why) const {
    flowprior::detail::raise<distributed_error>(
        std::string("[flowprior.distributed] ") + call + " during " + what + ": rank " +
        std::to_string(rank_) + " of " + std::to_string(size_) + ": " + why);
  }

  MpiOptions opt_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool broken_ = false;
  std::vector<MPI_Request> pending_;  ///< started sums (start_sum), in start order
};

}  // namespace mpi
}  // namespace flowprior
