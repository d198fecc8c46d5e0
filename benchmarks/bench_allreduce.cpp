/// @file
/// bench_allreduce: the two parts of a data-parallel training step, measured on this machine
/// (docs/scaling.md): the gradient all-reduce (MPI_Allreduce, SUM, float and double, buffer
/// sizes from 1 K elements to the paper's prior, 34,978,848 parameters) and the compute of one
/// training step per rank (the paper-size flow prior's FlowMatchingTrainer::step, and the image
/// pipeline's default autoencoder under ReconstructionTrainer::step), then both in one loop:
/// sequential (compute, then all-reduce) and overlapped (MPI_Iallreduce started before the
/// compute, waited for after it). For the prior also the library's own data-parallel step
/// (FlowMatchingTrainer::set_communicator on an MpiCommunicator): one sum after the backward
/// (bucket 0), and the sum in buckets started during the backward (docs/distributed.md
/// "Overlap"; --bucket values per bucket).
///
///   mpirun -np 2 ./bench_allreduce [--sizes 1K,64K,prior] [--repeats 10] [--json out.json]
///
/// Not a Google Benchmark program: every rank runs the same loop and the timings of one repeat
/// are the maximum over the ranks (a collective finishes when its slowest rank does); the tables
/// report medians over repeats. Conventions of the bandwidths (the ones of nccl-tests):
///   algbw = bytes / t                       (bytes = elements x sizeof(type), one buffer)
///   busbw = algbw x 2 (N - 1) / N           (what each link of a ring carries per second)
/// Sizes take K = 2^10, M = 2^20 suffixes, or the names `prior` and `ae` (the parameter counts
/// of the two models measured). Rank 0 prints; --json writes the results atomically.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/mpi/communicator.hpp>
#include <flowprior/nn/tokenizer.hpp>
#include <flowprior/train/reconstruction.hpp>
#include <functional>
#include <string>
#include <vector>

namespace {

using flowprior::Index;
using flowprior::Rng;
namespace nn = flowprior::nn;
namespace train = flowprior::train;

/// MPI_Init / MPI_Finalize around main's body.
struct MpiSession {
  MpiSession(int& argc, char**& argv) { MPI_Init(&argc, &argv); }
  ~MpiSession() { MPI_Finalize(); }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};

/// Throws flowprior::error naming the MPI call when it did not return MPI_SUCCESS (the
/// communicator is set to MPI_ERRORS_RETURN, so failures come back as codes).
void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  flowprior::detail::raise<flowprior::error>(std::string("[flowprior.mpi] ") + call + ": " +
                                             std::string(text, static_cast<std::size_t>(len)));
}

int comm_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int comm_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

/// The per-repeat maximum over the ranks of `times` (every rank passes its own), then the median
/// over repeats (the lower middle value for an even count).
double median_of_max(std::vector<double> times) {
  std::vector<double> worst(times.size());
  mpi_check(MPI_Allreduce(times.data(), worst.data(), static_cast<int>(times.size()), MPI_DOUBLE,
                          MPI_MAX, MPI_COMM_WORLD),
            "MPI_Allreduce(times)");
  std::sort(worst.begin(), worst.end());
  return worst[(worst.size() - 1) / 2];
}

/// "1K" -> 1024, "35M" -> 35 2^20, "1000" -> 1000; `prior` and `ae` -> the given counts.
Index parse_size(const std::string& s, Index prior, Index ae) {
  if (s == "prior") return prior;
  if (s == "ae") return ae;
  std::size_t pos = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  Index mult = 1;
  if (pos > 0 && pos + 1 == s.size() && (s[pos] == 'K' || s[pos] == 'k')) mult = Index(1) << 10;
  if (pos > 0 && pos + 1 == s.size() && (s[pos] == 'M' || s[pos] == 'm')) mult = Index(1) << 20;
  const bool whole = pos == s.size() || (pos + 1 == s.size() && mult > 1);
  if (pos == 0 || !whole || v < 1 || v > (Index(1) << 31) / mult)
    flowprior::raise_config("bench_allreduce",
                            "--sizes: '" + s +
                                "' is not a count (digits with an optional K or M suffix, at "
                                "most 2^31 elements) nor 'prior' or 'ae'");
  return Index(v) * mult;
}

struct AllreduceResult {
  const char* type = "";
  Index elements = 0;
  double bytes = 0, median_s = 0, algbw = 0, busbw = 0;
};

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}

/// Median time of MPI_Allreduce(SUM) of n elements of T (out of place), after `warmup` untimed
/// calls; checks the sums (every rank sends rank + 1, so each element is N (N + 1) / 2).
template <class T>
AllreduceResult time_allreduce(Index n, int repeats, int warmup) {
  const int ranks = comm_size();
  std::vector<T> send(static_cast<std::size_t>(n), T(comm_rank() + 1));
  std::vector<T> recv(static_cast<std::size_t>(n), T(0));
  std::vector<double> times;
  for (int i = 0; i < warmup + repeats; ++i) {
    mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    const double t0 = MPI_Wtime();
    mpi_check(MPI_Allreduce(send.data(), recv.data(), static_cast<int>(n), mpi_type<T>(), MPI_SUM,
                            MPI_COMM_WORLD),
              "MPI_Allreduce");
    const double t = MPI_Wtime() - t0;
    if (i >= warmup) times.push_back(t);
  }
  const T expect = T(ranks) * T(ranks + 1) / T(2);
  for (std::size_t i : {std::size_t(0), recv.size() / 2, recv.size() - 1})
    if (recv[i] != expect)
      flowprior::detail::raise<flowprior::numeric_error>(
          "[flowprior.mpi] MPI_Allreduce returned a wrong sum at element " + std::to_string(i));
  AllreduceResult r;
  r.type = sizeof(T) == 4 ? "float" : "double";
  r.elements = n;
  r.bytes = double(n) * double(sizeof(T));
  r.median_s = median_of_max(times);
  r.algbw = r.bytes / r.median_s;
  r.busbw = r.algbw * 2.0 * double(ranks - 1) / double(ranks);
  return r;
}

/// One model's training step: its compute alone, and with the all-reduce of a buffer of its
/// parameter count (float), sequential and overlapped.
struct StepResult {
  std::string name;
  Index params = 0, batch = 0, rows = 0;  ///< rows: network evaluations per step and rank
  double flops = 0;                       ///< matrix-product FLOPs per step and rank (0: unknown)
  double compute_s = 0, allreduce_s = 0, sequential_s = 0, overlapped_s = 0;
  /// The library's data-parallel step (the prior only; 0: not measured): one sum after the
  /// backward, and buckets started during it.
  double dp_blocking_s = 0, dp_bucketed_s = 0;
};

/// The median over `repeats` of body's time (the maximum over the ranks), after one untimed
/// call (which sizes every buffer); a barrier before each.
double timed_median(const std::function<void()>& body, int repeats) {
  body();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    const double t0 = MPI_Wtime();
    body();
    times.push_back(MPI_Wtime() - t0);
  }
  return median_of_max(times);
}

std::function<void()> allreduce_of(std::vector<float>& send, std::vector<float>& recv, int n) {
  return [&send, &recv, n] {
    mpi_check(MPI_Allreduce(send.data(), recv.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  };
}

void time_step(StepResult& r, const std::function<void()>& step, int repeats) {
  std::vector<float> send(static_cast<std::size_t>(r.params), 1.0f);
  std::vector<float> recv(send.size());
  const int n = static_cast<int>(r.params);
  const std::function<void()> allreduce = allreduce_of(send, recv, n);
  r.compute_s = timed_median(step, repeats);
  r.allreduce_s = timed_median(allreduce, repeats);
  r.sequential_s = timed_median(
      [&] {
        step();
        allreduce();
      },
      repeats);
  // A stand-in for bucketed overlap (the all-reduce of the previous gradients, or of the buckets
  // finished so far, runs while the backward goes on): how much of the communication hides
  // behind the compute. Without an MPI progress thread the library advances the collective only
  // inside MPI calls, so this measures what a plain MPI_Iallreduce gives.
  r.overlapped_s = timed_median(
      [&] {
        MPI_Request req = MPI_REQUEST_NULL;
        mpi_check(
            MPI_Iallreduce(send.data(), recv.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req),
            "MPI_Iallreduce");
        step();
        mpi_check(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait");
      },
      repeats);
}

struct Options {
  std::vector<std::string> sizes = {"1K", "4K", "16K", "64K", "256K", "1M", "4M", "16M", "prior"};
  int repeats = 10, warmup = 2, compute_repeats = 5, threads = 1;
  Index prior_dim = 32, prior_width = 1024, prior_depth = 6, prior_batch = 256, prior_k = 4;
  Index ae_batch = 64, ae_width = 96, ae_depth = 2;
  Index bucket = train::ExchangeOptions().bucket;
  bool compute = true;
  std::string json;
};

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string to_json(const Options& o, const std::vector<AllreduceResult>& ar,
                    const std::vector<StepResult>& steps) {
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  std::string mpi(lib, static_cast<std::size_t>(len));
  mpi = mpi.substr(0, mpi.find_first_of("\n,"));
  std::string s = "{\n  \"ranks\": " + std::to_string(comm_size()) +
                  ",\n  \"threads_per_rank\": " + std::to_string(o.threads) + ",\n  \"mpi\": \"" +
                  mpi + "\",\n  \"repeats\": " + std::to_string(o.repeats) +
                  ",\n  \"allreduce\": [";
  for (std::size_t i = 0; i < ar.size(); ++i)
    s += std::string(i ? "," : "") + "\n    {\"type\": \"" + ar[i].type +
         "\", \"elements\": " + std::to_string(ar[i].elements) +
         ", \"bytes\": " + number(ar[i].bytes) + ", \"median_s\": " + number(ar[i].median_s) +
         ", \"algbw_Bps\": " + number(ar[i].algbw) + ", \"busbw_Bps\": " + number(ar[i].busbw) +
         "}";
  s += "\n  ],\n  \"steps\": [";
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const StepResult& r = steps[i];
    s += std::string(i ? "," : "") + "\n    {\"name\": \"" + r.name +
         "\", \"params\": " + std::to_string(r.params) +
         ", \"batch_per_rank\": " + std::to_string(r.batch) +
         ", \"rows_per_rank\": " + std::to_string(r.rows) + ", \"flops\": " + number(r.flops) +
         ", \"compute_s\": " + number(r.compute_s) + ", \"allreduce_s\": " + number(r.allreduce_s) +
         ", \"sequential_s\": " + number(r.sequential_s) +
         ", \"overlapped_s\": " + number(r.overlapped_s) +
         ", \"dp_blocking_s\": " + number(r.dp_blocking_s) +
         ", \"dp_bucketed_s\": " + number(r.dp_bucketed_s) + "}";
  }
  return s + "\n  ]\n}\n";
}

/// The image pipeline's default autoencoder (examples/image_pipeline/config.hpp: 28 x 28 x 1
/// images, patch 4, width 96, depth 2 + 2, 4 heads, 16 latent tokens of 8 channels), with the
/// width and depth given.
nn::TokenizerConfig pipeline_autoencoder(Index width, Index depth) {
  nn::TokenizerConfig c;
  c.image_size = 28;
  c.channels = 1;
  c.patch = 4;
  c.width = width;
  c.depth = depth;
  c.dec_depth = depth;
  c.heads = 4;
  c.latent_tokens = 16;
  c.latent_dim = 8;
  return c;
}

void fill_uniform(flowprior::VectorView<float> p, Rng& rng, double lo, double hi) {
  for (Index i = 0; i < p.size; ++i) p[i] = static_cast<float>(flowprior::uniform(rng, lo, hi));
}

int run(const Options& o) {
  const bool root = comm_rank() == 0;
  const int ranks = comm_size();
  Eigen::setNbThreads(o.threads);

  // The two models, built on every rank (each rank is one data-parallel replica).
  nn::AdaLNMlpConfig pc;
  pc.dim = o.prior_dim;
  pc.width = o.prior_width;
  pc.depth = o.prior_depth;
  nn::AdaLNMlp<float> prior(pc);
  Rng rng(0x5ca1e + static_cast<std::uint64_t>(comm_rank()));
  prior.init(rng);
  fill_uniform(prior.parameters(), rng, -0.05, 0.05);  // no zero-initialised (trivial) products
  nn::TokenizerAE<float> ae(pipeline_autoencoder(o.ae_width, o.ae_depth));
  ae.init(rng);

  std::vector<Index> sizes;
  for (const std::string& s : o.sizes)
    sizes.push_back(parse_size(s, prior.num_params(), ae.num_params()));
  if (root)
    std::printf(
        "bench_allreduce: %d ranks, %d thread(s) per rank; prior %lld/%lld/%lld: %lld "
        "parameters; autoencoder: %lld parameters\n",
        ranks, o.threads, (long long)pc.dim, (long long)pc.width, (long long)pc.depth,
        (long long)prior.num_params(), (long long)ae.num_params());

  std::vector<AllreduceResult> ar;
  for (Index n : sizes) {
    ar.push_back(time_allreduce<float>(n, o.repeats, o.warmup));
    ar.push_back(time_allreduce<double>(n, o.repeats, o.warmup));
  }
  if (root) {
    std::printf("\nMPI_Allreduce SUM, median of %d (max over ranks)\n", o.repeats);
    std::printf("%-7s %12s %14s %12s %12s %12s\n", "type", "elements", "bytes", "time [us]",
                "algbw GB/s", "busbw GB/s");
    for (const AllreduceResult& r : ar)
      std::printf("%-7s %12lld %14.0f %12.1f %12.3f %12.3f\n", r.type, (long long)r.elements,
                  r.bytes, r.median_s * 1e6, r.algbw * 1e-9, r.busbw * 1e-9);
  }

  std::vector<StepResult> steps;
  if (o.compute) {
    const Eigen::MatrixXf targets = Eigen::MatrixXf::Random(o.prior_dim, 4096) * 2.0f;
    train::TrainerConfig tc;
    tc.batch = o.prior_batch;
    tc.K = o.prior_k;
    train::FlowMatchingTrainer<nn::AdaLNMlp<float>> ft(prior, flowprior::Convention::Code, tc);
    StepResult p;
    p.name = "prior";
    p.params = prior.num_params();
    p.batch = o.prior_batch;
    p.rows = o.prior_batch * o.prior_k;
    const nn::MatmulFlops f = prior.matmul_flops_per_row();
    p.flops = (f.forward + f.backward) * double(p.rows);
    time_step(
        p, [&] { ft.step(targets, rng); }, o.compute_repeats);
    if (ranks > 1) {  // the library's data-parallel step, without and with buckets
      flowprior::mpi::MpiOptions mo;
      mo.timeout_s = 600;
      flowprior::mpi::MpiCommunicator comm(MPI_COMM_WORLD, mo);
      for (const Index bucket : {Index(0), o.bucket}) {
        train::FlowMatchingTrainer<nn::AdaLNMlp<float>> dp(prior, flowprior::Convention::Code, tc);
        train::ExchangeOptions eo;
        eo.bucket = bucket;
        dp.set_communicator(&comm, eo);
        (bucket == 0 ? p.dp_blocking_s : p.dp_bucketed_s) =
            timed_median([&] { dp.step(targets, rng); }, o.compute_repeats);
      }
    }
    steps.push_back(p);

    const nn::TokenizerConfig ac = ae.config();
    const Eigen::MatrixXf images =
        Eigen::MatrixXf::Random(ac.channels * ac.image_size * ac.image_size, o.ae_batch);
    train::ReconstructionTrainer<nn::TokenizerAE<float>> rt(ae, train::ReconstructionConfig{});
    StepResult a;
    a.name = "autoencoder";
    a.params = ae.num_params();
    a.batch = o.ae_batch;
    a.rows = o.ae_batch;
    time_step(
        a, [&] { rt.step(images); }, o.compute_repeats);
    steps.push_back(a);

    if (root) {
      std::printf("\nTraining step per rank (float), median of %d (max over ranks)\n",
                  o.compute_repeats);
      std::printf("%-12s %10s %6s %6s %12s %13s %14s %14s\n", "model", "params", "batch", "rows",
                  "compute ms", "allreduce ms", "sequential ms", "overlapped ms");
      for (const StepResult& r : steps)
        std::printf("%-12s %10lld %6lld %6lld %12.2f %13.2f %14.2f %14.2f\n", r.name.c_str(),
                    (long long)r.params, (long long)r.batch, (long long)r.rows, r.compute_s * 1e3,
                    r.allreduce_s * 1e3, r.sequential_s * 1e3, r.overlapped_s * 1e3);
      if (ranks > 1)
        std::printf(
            "\nThe library's data-parallel step of the prior (FlowMatchingTrainer on an "
            "MpiCommunicator), median of %d:\n  one sum after the backward %.2f ms; buckets of "
            "%lld values started during the backward %.2f ms\n",
            o.compute_repeats, steps.front().dp_blocking_s * 1e3, (long long)o.bucket,
            steps.front().dp_bucketed_s * 1e3);
    }
  }
  if (root && !o.json.empty()) {
    const std::string text = to_json(o, ar, steps);
    flowprior::io::atomic_write(o.json, [&](flowprior::io::Writer& w) { w.write(text); });
    std::printf("\nwrote %s\n", o.json.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(argc, argv);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  Options o;
  CLI::App app{"MPI_Allreduce and training-step times of data-parallel training (docs/scaling.md)"};
  app.add_option("--sizes", o.sizes, "buffer sizes in elements: N, NK, NM, prior, ae")
      ->delimiter(',');
  app.add_option("--repeats", o.repeats, "timed all-reduces per size and type")
      ->check(CLI::Range(1, 100000));
  app.add_option("--warmup", o.warmup, "untimed all-reduces before them")
      ->check(CLI::Range(0, 1000));
  app.add_option("--compute-repeats", o.compute_repeats, "timed training steps per variant")
      ->check(CLI::Range(1, 10000));
  app.add_option("--threads", o.threads, "Eigen threads per rank")->check(CLI::Range(1, 1024));
  app.add_option("--prior-dim", o.prior_dim, "flow prior: latent dimension")
      ->check(CLI::Range(Index(1), Index(1) << 20));
  app.add_option("--prior-width", o.prior_width, "flow prior: width")
      ->check(CLI::Range(Index(1), Index(1) << 20));
  app.add_option("--prior-depth", o.prior_depth, "flow prior: residual blocks")
      ->check(CLI::Range(Index(1), Index(1000)));
  app.add_option("--prior-batch", o.prior_batch, "flow prior: target rows per step and rank")
      ->check(CLI::Range(Index(1), Index(1) << 24));
  app.add_option("--prior-k", o.prior_k, "flow prior: (t, eps) draws per row")
      ->check(CLI::Range(Index(1), Index(1024)));
  app.add_option("--ae-batch", o.ae_batch, "autoencoder: images per step and rank")
      ->check(CLI::Range(Index(1), Index(1) << 20));
  app.add_option("--ae-width", o.ae_width, "autoencoder: width (a multiple of 4)")
      ->check(CLI::Range(Index(4), Index(1) << 16));
  app.add_option("--ae-depth", o.ae_depth, "autoencoder: encoder (and decoder) blocks")
      ->check(CLI::Range(Index(1), Index(1000)));
  app.add_option("--bucket", o.bucket,
                 "values per bucket of the prior's overlapped data-parallel step (> 0)")
      ->check(CLI::Range(Index(1), Index(1) << 30));
  app.add_flag("!--no-compute", o.compute, "only the all-reduce sizes");
  app.add_option("--json", o.json, "write the results to this JSON file (rank 0, atomically)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return comm_rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  try {
    return run(o);
  } catch (const flowprior::config_error& e) {
    // Every rank reads the same options and fails alike, before any collective: no abort.
    if (comm_rank() == 0) std::fprintf(stderr, "bench_allreduce: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce (rank %d): %s\n", comm_rank(), e.what());
    // The other ranks may wait in a collective this rank will never enter: stop them all.
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
