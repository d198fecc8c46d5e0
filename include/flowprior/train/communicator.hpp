/// @file
/// The communicator policy of the trainers (docs/distributed.md): what a data-parallel run needs
/// from the processes it runs on. Communicator is the interface: rank(), size(), a sum over
/// the ranks of a host buffer (all-reduce), a broadcast, a barrier; every call is collective
/// (all ranks make it, in the same order). LocalCommunicator (one process, every call a no-op)
/// is what the trainers use unless given another (set_communicator). The MPI implementation is
/// the optional target flowprior::mpi (<flowprior/mpi/communicator.hpp>): nothing in the
/// library needs MPI to build or run.
///
/// Also here: the one all-reduce of a training step (step_parts::GradientExchange: the flat
/// gradient, the loss and a failure flag in one buffer), the broadcast of a trainer's state, and
/// agree_on, which turns a failure on one rank into an error on every rank instead of a hang.
#pragma once

#include <cstddef>
#include <exception>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/gradient_ready.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace flowprior {
namespace train {

/// The processes of a data-parallel run. Every member but rank() and size() is collective: all
/// ranks call it in the same order with the same n (and root). Buffers are host memory. An
/// implementation reports failures (a failed call, a rank that stopped answering) with
/// distributed_error naming the call (`what`) and its rank, and never waits without bound.
class Communicator {
 public:
  virtual ~Communicator() = default;

  /// This process's rank in [0, size()).
  virtual int rank() const = 0;
  /// The number of processes (>= 1).
  virtual int size() const = 0;

  /// data[i] <- the sum over the ranks of data[i], on every rank (n elements of host memory).
  virtual void allreduce_sum(double* data, Index n, const char* what) = 0;
  /// The float overload (the sum is taken in float).
  virtual void allreduce_sum(float* data, Index n, const char* what) = 0;
  /// data <- root's data, on every rank (n elements of host memory).
  virtual void broadcast(double* data, Index n, int root, const char* what) = 0;
  /// The float overload.
  virtual void broadcast(float* data, Index n, int root, const char* what) = 0;
  /// Returns once every rank has called it.
  virtual void barrier(const char* what) = 0;

  /// Starts data[i] <- the sum over the ranks of data[i] without waiting for it (docs/
  /// distributed.md "Overlap"): the buffer must be neither read nor written until finish_sums()
  /// returns. Collective and ordered like the other calls: every rank starts the same sums (the
  /// same n) in the same order, and a started sum is matched only with started sums. The default
  /// sums at once (allreduce_sum): an implementation without non-blocking collectives is correct,
  /// it only does not overlap.
  virtual void start_sum(double* data, Index n, const char* what) { allreduce_sum(data, n, what); }
  /// The float overload.
  virtual void start_sum(float* data, Index n, const char* what) { allreduce_sum(data, n, what); }
  /// Lets the started sums advance, without waiting (MPI moves a non-blocking collective on only
  /// inside its own calls). Not collective. Default: nothing.
  virtual void progress() {}
  /// Returns once every started sum has completed (bounded like every other call). Default:
  /// nothing (the default start_sum has completed already).
  virtual void finish_sums(const char* what) { (void)what; }

  /// data[i] <- the mean over the ranks of data[i]: allreduce_sum, then a product with 1 / size()
  /// (exact for a power of two ranks).
  template <class S>
  void allreduce_mean(S* data, Index n, const char* what) {
    allreduce_sum(data, n, what);
    if (size() == 1) return;
    const S inv = S(1) / S(size());
    for (Index i = 0; i < n; ++i) data[i] *= inv;
  }

  /// Collective: how many ranks passed failed = true.
  int count_failures(bool failed, const char* what) {
    double f = failed ? 1.0 : 0.0;
    allreduce_sum(&f, 1, what);
    return static_cast<int>(f + 0.5);
  }
};

/// How a trainer sums its gradient over the ranks (set_communicator; docs/distributed.md
/// "Overlap").
struct ExchangeOptions {
  /// Values per bucket of the gradient sum that runs during the backward pass: each bucket, cut
  /// from the end of the flat gradient, is started as soon as the layers it covers are done.
  /// 0: one sum after the backward. Every rank must pass the same value. The default, 2^20
  /// values (4 MiB in float), gives the paper's 35 M-parameter prior 34 buckets.
  Index bucket = Index(1) << 20;

  /// Throws config_error for a negative bucket.
  void validate() const {
    if (bucket < 0)
      raise_config("ExchangeOptions",
                   "bucket must be >= 0 values (0: no overlap), got " + std::to_string(bucket));
  }
};

/// One process: rank 0 of 1. Sums, broadcasts and barriers leave the data as it is.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(double*, Index, const char*) override {}
  void allreduce_sum(float*, Index, const char*) override {}
  void broadcast(double*, Index, int root, const char* what) override { check_root(root, what); }
  void broadcast(float*, Index, int root, const char* what) override { check_root(root, what); }
  void barrier(const char*) override {}

 private:
  static void check_root(int root, const char* what) {
    if (root != 0)
      raise_config(what,
                   "the broadcast's root must be a rank in [0, 1), got " + std::to_string(root));
  }
};

/// Throws distributed_error "[flowprior.distributed] <what>: rank R: <message>".
[[noreturn]] inline FLOWPRIOR_COLD void raise_distributed(const char* what, int rank,
                                                          const std::string& message) {
  flowprior::detail::raise<distributed_error>(std::string("[flowprior.distributed] ") + what +
                                              ": rank " + std::to_string(rank) + ": " + message);
}

/// Runs f() on the ranks where `here` is true (all ranks: agree_on(comm, what, f)), then agrees
/// with the others (one collective call, on every rank): a rank where f threw rethrows its own
/// exception; the other ranks throw distributed_error "... N rank(s) failed during <what>". So a
/// failure on one rank is an error on every rank, not a hang. Nothing is communicated with one
/// process: f's exception propagates as it is.
template <class F>
void agree_on(Communicator& comm, const char* what, F&& f, bool here = true) {
  std::exception_ptr err;
  if (here) {
    try {
      f();
    } catch (...) {
      if (comm.size() == 1) throw;
      err = std::current_exception();
    }
  }
  if (comm.size() == 1) return;
  const int failed = comm.count_failures(err != nullptr, what);
  if (err) std::rethrow_exception(err);
  if (failed > 0)
    raise_distributed(what, comm.rank(),
                      std::to_string(failed) + " other rank(s) failed during " + what +
                          " (their own error says why)");
}

/// Whether Backend's buffers are host memory that a host library may read and write in place
/// (Backend::host_memory; false when the backend does not say so).
template <class Backend, class = void>
struct has_host_memory : std::false_type {};
template <class Backend>
struct has_host_memory<Backend, std::void_t<decltype(Backend::host_memory)>>
    : std::integral_constant<bool, bool(Backend::host_memory)> {};

namespace step_parts {

/// The all-reduce of a data-parallel training step (docs/distributed.md "What is averaged").
/// The buffer is the flat gradient (n values) followed by seven slots: the loss as two values
/// (hi = S(loss), lo = S(loss - hi): a float loss keeps about twice float's digits), a failure
/// flag, the number of rows of the rank's batch, and up to three statistics the caller wants
/// averaged too (the parts of a loss; in S). After the sum: the gradient and the loss are
/// divided by the number of ranks (every loss is a mean over rows, the shards are equal, so the
/// mean of the ranks' means is the mean over the global batch), and every rank knows how many
/// ranks failed and whether the shards were equal.
///
/// Overlap (docs/distributed.md "Overlap"): with buckets of b > 0 values (prepare), a host-memory
/// backend and P > 1 ranks, the gradient is summed in buckets, fixed from the end of the flat
/// vector ([n - b, n), [n - 2b, n - b), ..., down to 0), each started (Communicator::start_sum)
/// as soon as the backward pass reports it final (nn::GradientReady, which this class is: hand
/// it to the field workspace), and the seven slots in one small sum after the last bucket. The
/// buckets are the same on every rank whatever its backward did: a rank that failed, or whose
/// field reports nothing before the end, starts the rest of them in run(), in the same order.
/// The sums are elementwise, so the result is the one blocking sum's (for two ranks bit for
/// bit: a + b either way).
///
/// Memory: with a host-memory backend the gradient buffer is reduced in place (the trainer
/// allocates it with slots() extra values); otherwise through a host staging buffer, by
/// Backend::copy_to_host / copy_from_host, in one sum after the backward. Nothing is allocated
/// per step.
template <class S, class Backend>
class GradientExchange final : public nn::GradientReady {
 public:
  static constexpr Index slots() { return 7; }
  static constexpr int max_extra() { return 3; }

  /// Sizes the staging buffer for n gradient values (a host-memory backend needs none), and sets
  /// the overlap's bucket size in values (0: one sum after the backward; same on every rank).
  void prepare(Index n, Index bucket = 0) {
    if (bucket < 0)
      raise_config("GradientExchange",
                   "the bucket size must be >= 0 values, got " + std::to_string(bucket));
    n_ = n;
    bucket_ = has_host_memory<Backend>::value ? bucket : 0;
    sent_ = n;
    armed_ = nullptr;
    if (!has_host_memory<Backend>::value)
      checked_resize("GradientExchange", "the host staging of the gradient", stage_,
                     checked_add("GradientExchange", "gradient + slots", n, slots()));
  }

  /// Values per bucket of the overlap (0: none).
  Index bucket() const { return bucket_; }

  /// Arms the overlap for the coming backward on `comm` into buf[0, n) (host memory): from now
  /// until run(), ready() starts the buckets the backward finishes. A no-op without overlap.
  void begin(Communicator& comm, S* buf) {
    if (overlapping(comm)) {
      armed_ = &comm;
      buf_ = buf;
    }
  }

  /// nn::GradientReady: buf[lo, n) is final; starts every bucket that lies in it (and lets the
  /// started ones advance).
  void ready(Index lo) override {
    if (armed_ == nullptr) return;
    start_down_to(*armed_, buf_, lo, "GradientExchange (overlapped gradient)");
    armed_->progress();
  }

  /// Averages the gradient buf[0, n) (backend memory; buf holds n + slots() values) and `loss`
  /// over the ranks of comm; `failed` says whether this rank's part of the step failed, `rows`
  /// its batch's row count, extra[0, n_extra) statistics averaged like the loss (n_extra <=
  /// max_extra()). Returns the number of failed ranks (every rank gets the same).
  /// Throws distributed_error (naming `what`) when the ranks' row counts differ.
  int run(Communicator& comm, typename Backend::Context& ctx, S* buf, double& loss, bool failed,
          Index rows, const char* what, double* extra = nullptr, int n_extra = 0) {
    FLOWPRIOR_ASSERT(n_extra >= 0 && n_extra <= max_extra(), "too many statistics");
    armed_ = nullptr;
    const bool overlap = overlapping(comm);
    S* h = nullptr;
    if (has_host_memory<Backend>::value) {
      h = buf;
    } else {
      h = stage_.data();
      if (!failed) Backend::copy_to_host(buf, n_, h);
    }
    const S hi = failed ? S(0) : S(loss);
    h[n_] = hi;
    h[n_ + 1] = failed ? S(0) : S(loss - double(hi));
    h[n_ + 2] = failed ? S(1) : S(0);
    h[n_ + 3] = S(rows);
    for (int k = 0; k < max_extra(); ++k)
      h[n_ + 4 + k] = k < n_extra && !failed ? S(extra[k]) : S(0);
    if (overlap) {
      start_down_to(comm, h, 0, what);  // the buckets the backward did not report
      sent_ = n_;
      comm.start_sum(h + n_, slots(), what);
      comm.finish_sums(what);
    } else {
      comm.allreduce_sum(h, n_ + slots(), what);
    }
    const int P = comm.size();
    const int n_failed = static_cast<int>(double(h[n_ + 2]) + 0.5);
    if (n_failed > 0) return n_failed;
    if (double(h[n_ + 3]) != double(rows) * P)
      raise_distributed(what, comm.rank(),
                        "the ranks' batches differ in size (this rank has " + std::to_string(rows) +
                            " rows, the ranks together " + short_number(double(h[n_ + 3])) +
                            "): every rank needs a batch of the same size");
    loss = (double(h[n_]) + double(h[n_ + 1])) / P;
    for (int k = 0; k < n_extra; ++k) extra[k] = double(h[n_ + 4 + k]) / P;
    if (!has_host_memory<Backend>::value) Backend::copy_from_host(h, n_, buf);
    Backend::scale_vec(ctx, VectorView<S>(buf, n_), 1.0 / P);
    return 0;
  }

 private:
  bool overlapping(const Communicator& comm) const { return bucket_ > 0 && comm.size() > 1; }

  /// Starts the buckets [max(0, sent - b), sent) that lie in [lo, n), from the end down.
  void start_down_to(Communicator& comm, S* h, Index lo, const char* what) {
    while (sent_ > 0) {
      const Index b0 = sent_ > bucket_ ? sent_ - bucket_ : 0;
      if (b0 < lo) break;
      comm.start_sum(h + b0, sent_ - b0, what);
      sent_ = b0;
    }
  }

  Index n_ = 0;
  Index bucket_ = 0;  ///< values per bucket; 0: no overlap
  Index sent_ = 0;    ///< buf[sent_, n) has been started this step
  Communicator* armed_ = nullptr;
  S* buf_ = nullptr;
  std::vector<S> stage_;
};

/// For the backward passes run while it lives, on a workspace ws of a type that reports
/// (nn::reports_gradient_ready): arms `exchange` for the step and hands it to ws, so that the
/// backward starts the buckets (P > 1 ranks and buckets; otherwise nothing). On exit (the loss
/// returned or threw) ws reports to nobody again.
template <class Workspace, class S, class Backend>
class OverlapScope {
 public:
  OverlapScope(Workspace& ws, GradientExchange<S, Backend>& exchange, Communicator& comm, S* buf)
      : ws_(ws) {
    if constexpr (nn::reports_gradient_ready<Workspace>::value) {
      if (comm.size() > 1 && exchange.bucket() > 0) {
        exchange.begin(comm, buf);
        ws.set_gradient_ready(&exchange);
      }
    }
  }
  ~OverlapScope() {
    if constexpr (nn::reports_gradient_ready<Workspace>::value) ws_.set_gradient_ready(nullptr);
  }
  OverlapScope(const OverlapScope&) = delete;
  OverlapScope& operator=(const OverlapScope&) = delete;

 private:
  Workspace& ws_;
};

/// Makes every rank's training state rank 0's (collective): the parameters `params` (backend
/// memory), Adam's step count and moments, the EMA's update count and weights. Through host
/// copies; it allocates (called once, when a communicator is set).
template <class S, class Backend>
void broadcast_state(Communicator& comm, VectorView<S> params, optim::Adam<S, Backend>* adam,
                     optim::Ema<S, Backend>* ema, const char* what) {
  if (comm.size() == 1) return;
  const Index n = params.size;
  std::vector<S> host(static_cast<std::size_t>(n));
  Backend::copy_to_host(params.data, n, host.data());
  comm.broadcast(host.data(), n, 0, what);
  Backend::copy_from_host(host.data(), n, params.data);
  if (adam) {
    std::vector<S> m = adam->m(), v = adam->v();
    double steps = double(adam->steps());
    comm.broadcast(m.data(), Index(m.size()), 0, what);
    comm.broadcast(v.data(), Index(v.size()), 0, what);
    comm.broadcast(&steps, 1, 0, what);
    adam->set_state(Index(steps), ConstVectorView<S>(m.data(), Index(m.size())),
                    ConstVectorView<S>(v.data(), Index(v.size())));
  }
  if (ema) {
    std::vector<S> w = ema->weights();
    double updates = double(ema->updates());
    comm.broadcast(w.data(), Index(w.size()), 0, what);
    comm.broadcast(&updates, 1, 0, what);
    ema->set_state(Index(updates), ConstVectorView<S>(w.data(), Index(w.size())));
  }
}

}  // namespace step_parts
}  // namespace train
}  // namespace flowprior
