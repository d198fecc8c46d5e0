/// @file
/// The batch loader (docs/data.md "Loader"): per-epoch shuffling from a seed, batches assembled
/// by worker threads (std::thread) with a bounded prefetch, and a position (epoch, batch) that a
/// checkpoint saves and restores.
///
/// Determinism: batch b of epoch e holds the samples order_e[b * B .. (b + 1) * B) (random.hpp
/// epoch_order), each drawn with SampleRng(seed, e, index). Nothing depends on which worker built
/// a batch or when, so batches are identical, bit for bit, with any number of threads (0 included:
/// the caller's thread builds them) and after set_position. Batches are returned in order.
///
/// Sharding (docs/data.md "Sharding"): with shard_count = P, the loader of shard r builds only
/// slots [lo_r, hi_r) of each global batch (shard_range), so the P loaders of a data-parallel run
/// together decode each sample once, and shard r's batch is the columns [lo_r, hi_r) of the
/// one-process batch, bit for bit.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/datasets/random.hpp>
#include <flowprior/datasets/source.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace flowprior {
namespace datasets {

/// Where a loader stands: the next batch it returns is batch `batch` of epoch `epoch`.
struct Position {
  std::int64_t epoch = 0, batch = 0;
  friend bool operator==(const Position& a, const Position& b) {
    return a.epoch == b.epoch && a.batch == b.batch;
  }
  friend bool operator!=(const Position& a, const Position& b) { return !(a == b); }
};

/// The position as two text entries, "<prefix>epoch" and "<prefix>batch" (decimal): what a
/// checkpoint stores beside the model (train::save_checkpoint's extra metadata, which the file
/// keeps as "user.<key>").
inline std::map<std::string, std::string> position_entries(Position p,
                                                           const std::string& prefix = "loader.") {
  return {{prefix + "epoch", std::to_string(p.epoch)}, {prefix + "batch", std::to_string(p.batch)}};
}

/// Reads a position written by position_entries back from `entries` (e.g. a checkpoint's
/// Safetensors::metadata() with prefix "user.loader."). @throws config_error naming the key
/// when an entry is missing or is not a decimal count (digits only, at most 18 of them).
inline Position position_from_entries(const std::map<std::string, std::string>& entries,
                                      const std::string& prefix = "user.loader.") {
  auto read = [&](const std::string& key) {
    const auto it = entries.find(key);
    if (it == entries.end())
      ::flowprior::detail::raise<config_error>("[flowprior.config] position_from_entries: no '" +
                                               key + "' entry");
    const std::string& v = it->second;
    std::int64_t n = 0;
    bool ok = !v.empty() && v.size() <= 18;
    for (const char c : v) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) n = n * 10 + (c - '0');
    }
    if (!ok)
      ::flowprior::detail::raise<config_error>("[flowprior.config] position_from_entries: '" + key +
                                               "' is not a count: '" + v + "'");
    return n;
  };
  Position p;
  p.epoch = read(prefix + "epoch");
  p.batch = read(prefix + "batch");
  return p;
}

/// A sample the loader skipped: its index in the source and why.
struct Skipped {
  std::size_t index = 0;
  std::string reason;
};

/// Slots [begin, end) of a batch: the part of a global batch that one shard (rank) gets.
struct ShardRange {
  std::int64_t begin = 0, end = 0;
  /// Number of slots, end - begin.
  std::int64_t size() const { return end - begin; }
};

/// The slots of a batch of n samples that shard `rank` of `count` gets (docs/data.md (7)): the
/// even split,
/// floor(n / count) slots each and one more for the first n mod count shards,
///   begin = rank * floor(n / count) + min(rank, n mod count),  end = begin of rank + 1.
/// The shards' ranges are consecutive and cover [0, n) (some are empty when n < count).
/// @throws config_error for count < 1, rank outside 0..count - 1 or n < 0.
inline ShardRange shard_range(std::int64_t n, int rank, int count) {
  if (count < 1 || rank < 0 || rank >= count || n < 0)
    ::flowprior::detail::raise<config_error>(
        "[flowprior.config] shard_range: shard " + std::to_string(rank) + " of " +
        std::to_string(count) + " of a batch of " + std::to_string(n) + " is not a shard");
  const std::int64_t q = n / count, extra = n % count;
  ShardRange r;
  r.begin = rank * q + std::min<std::int64_t>(rank, extra);
  r.end = r.begin + q + (rank < extra ? 1 : 0);
  return r;
}

/// One batch: columns are samples. data is (sample_size, size()) column-major: column j holds
/// sample indices[j] (C * H * W floats, channel-major CHW as PyTorch lays out a tensor), labels[j]
/// its label. Skipped samples are left out, so size() may be less than the batch size.
/// A sharded loader's batch holds its shard's slots [shard.begin, shard.end) of the global batch
/// (of global_size samples) and nothing else: its skipped samples are the ones among them.
struct Batch {
  Position position;             ///< which batch this is
  std::int64_t sample_size = 0;  ///< rows
  std::int64_t global_size = 0;  ///< samples of the global batch, before skipping, all shards
  ShardRange shard;              ///< this shard's slots of the global batch, before skipping
  std::vector<float> data;
  std::vector<int> labels;
  std::vector<std::size_t> indices;  ///< source indices of the columns
  std::vector<Skipped> skipped;      ///< samples of this batch that were skipped

  /// Number of samples (columns).
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
  /// The (sample_size, size()) view of the data.
  ConstMatrixView<float> view() const {
    return ConstMatrixView<float>(data.data(), sample_size, size());
  }
  /// The data as an Eigen matrix map.
  Eigen::Map<const Eigen::MatrixXf> matrix() const {
    return Eigen::Map<const Eigen::MatrixXf>(data.data(), sample_size, size());
  }
};

/// Options of a Loader.
struct LoaderConfig {
  std::int64_t batch_size = 64;   ///< samples per batch (the last may be smaller, see drop_last)
  int threads = 2;                ///< worker threads; 0 builds each batch in next()
  int prefetch = 4;               ///< batches built ahead, at most (>= 1)
  std::uint64_t seed = 0;         ///< the shuffle's and the crops' seed
  bool shuffle = true;            ///< false: every epoch in source order
  bool drop_last = false;         ///< drop a last batch smaller than batch_size
  std::size_t max_reported = 16;  ///< how many skipped samples skipped_reports() keeps
  /// This loader's shard (0..shard_count - 1): it builds only its slots of each batch.
  int shard_rank = 0;
  /// Loaders that split each global batch of batch_size between them (data-parallel ranks).
  int shard_count = 1;

  /// @throws config_error naming the field: batch_size < 1, threads outside 0..256, prefetch
  /// outside 1..1024, shard_count outside 1..batch_size (a shard would get no sample of a full
  /// batch), shard_rank outside 0..shard_count - 1.
  void validate() const {
    auto bad = [](const std::string& what) {
      ::flowprior::detail::raise<config_error>("[flowprior.config] LoaderConfig: " + what);
    };
    if (batch_size < 1) bad("batch_size must be positive, got " + std::to_string(batch_size));
    if (threads < 0 || threads > 256)
      bad("threads must be in 0..256, got " + std::to_string(threads));
    if (prefetch < 1 || prefetch > 1024)
      bad("prefetch must be in 1..1024, got " + std::to_string(prefetch));
    if (shard_count < 1 || shard_count > batch_size)
      bad("shard_count must be in 1..batch_size (" + std::to_string(batch_size) + "), got " +
          std::to_string(shard_count));
    if (shard_rank < 0 || shard_rank >= shard_count)
      bad("shard_rank must be in 0.." + std::to_string(shard_count - 1) + ", got " +
          std::to_string(shard_rank));
  }
};

/// Batches of a SampleSource, epoch after epoch, without end.
///
/// Sharded (shard_count > 1): batch_size stays the global batch; next() returns this shard's
/// slots of it (shard_range of the global batch's size: the last batch, when short, is split as
/// evenly as possible, the first shards getting one more), each sample still drawn with its own
/// SampleRng(seed, e, index). Position, batches_per_epoch and set_position are global, the same
/// for every shard and for one unsharded loader, so a position saved by a sharded run resumes
/// with any shard count. A skipped sample is skipped by the shard that owns it, whose batch is
/// then shorter; skipped_count() and skipped_reports() are this shard's alone.
///
/// Memory: at most `prefetch` batches are built ahead (plus, right after set_position, the
/// batches that workers were building, which are then discarded), each of at most
/// ceil(batch_size / shard_count) x sample_size floats, plus one epoch order (4 bytes per sample,
/// two epochs at an epoch's end) and what each worker's source needs for one sample.
/// Skipped samples are counted when their batch is returned by next(), so the count and the
/// reports are deterministic too.
/// Not thread-safe itself: one thread calls next(), set_position() and the accessors.
class Loader {
 public:
  /// @throws config_error for an invalid config (LoaderConfig::validate), a null or empty
  ///         source, or a source of more than 2^32 - 1 samples.
  Loader(std::shared_ptr<const SampleSource> source, LoaderConfig cfg)
      : src_(std::move(source)), cfg_(cfg) {
    cfg_.validate();
    if (!src_) ::flowprior::detail::raise<config_error>("[flowprior.config] Loader: null source");
    if (src_->size() == 0)
      ::flowprior::detail::raise<config_error>(
          "[flowprior.config] Loader: the source holds no samples");
    if (src_->size() > 0xffffffffu)
      ::flowprior::detail::raise<config_error>(
          "[flowprior.config] Loader: the source holds more than 2^32 - 1 samples");
    const std::int64_t n = static_cast<std::int64_t>(src_->size());
    per_epoch_ = cfg_.drop_last ? n / cfg_.batch_size : (n + cfg_.batch_size - 1) / cfg_.batch_size;
    if (per_epoch_ == 0)
      ::flowprior::detail::raise<config_error>(
          "[flowprior.config] Loader: drop_last with batch_size " +
          std::to_string(cfg_.batch_size) + " leaves no batch of the " + std::to_string(n) +
          " samples");
  }

  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Stops and joins the workers.
  ~Loader() { stop_workers(); }

  /// Batches per epoch: ceil(N / batch_size), or floor with drop_last.
  std::int64_t batches_per_epoch() const { return per_epoch_; }

  /// The position of the batch the next call to next() returns.
  Position position() const { return to_position(next_out_); }

  /// Moves to `p` (a batch index equal to batches_per_epoch() means the next epoch's first).
  /// Batches built ahead are discarded; the following batches are those an uninterrupted run
  /// returns from `p`. The skipped count is not part of the position.
  /// @throws config_error for a negative epoch or a batch outside 0..batches_per_epoch().
  void set_position(Position p) {
    if (p.epoch < 0 || p.batch < 0 || p.batch > per_epoch_)
      ::flowprior::detail::raise<config_error>("[flowprior.config] Loader::set_position: (epoch " +
                                               std::to_string(p.epoch) + ", batch " +
                                               std::to_string(p.batch) + ") is not a position of " +
                                               std::to_string(per_epoch_) + " batches per epoch");
    if (p.epoch > (std::int64_t{1} << 40))
      ::flowprior::detail::raise<config_error>("[flowprior.config] Loader::set_position: epoch " +
                                               std::to_string(p.epoch) + " is beyond 2^40");
    std::lock_guard<std::mutex> lock(m_);
    ++generation_;
    ready_.clear();
    next_out_ = next_job_ = p.epoch * per_epoch_ + p.batch;
    cv_work_.notify_all();
  }

  /// The next batch, in order (this shard's slots of it when sharded). Builds it in the
  /// caller's thread when threads == 0; otherwise
  /// starts the workers on the first call and waits for the batch. An exception thrown while a
  /// batch was built (not a skipped sample: a bug, out of memory) is rethrown here, and again on
  /// every call, without advancing.
  Batch next() {
    Batch b;
    if (cfg_.threads == 0) {
      b = build(next_out_);
    } else {
      if (workers_.empty()) start_workers();
      std::unique_lock<std::mutex> lock(m_);
      cv_ready_.wait(lock, [&] { return ready_.count(next_out_) != 0; });
      auto it = ready_.find(next_out_);
      if (it->second.error) std::rethrow_exception(it->second.error);
      b = std::move(it->second.batch);
      ready_.erase(it);
      ++next_out_;  // under the lock: the workers read it
    }
    if (cfg_.threads == 0) {
      ++next_out_;
    } else {
      cv_work_.notify_all();
    }
    for (const Skipped& s : b.skipped) {
      ++skipped_count_;
      if (reports_.size() < cfg_.max_reported) reports_.push_back(s.reason);
    }
    return b;
  }

  /// Skipped samples counted so far (in the batches next() returned): this shard's only when
  /// sharded (the run's count is the sum over the shards).
  std::uint64_t skipped_count() const { return skipped_count_; }
  /// The reasons of the first max_reported skipped samples of this shard (each names the file).
  const std::vector<std::string>& skipped_reports() const { return reports_; }
  /// The configuration.
  const LoaderConfig& config() const { return cfg_; }
  /// The source.
  const SampleSource& source() const { return *src_; }

 private:
  struct Result {
    Batch batch;
    std::exception_ptr error;
  };

  Position to_position(std::int64_t seq) const {
    return Position{seq / per_epoch_, seq % per_epoch_};
  }

  // The order of `epoch`, from a small cache (the current and the next epoch). Thread-safe.
  std::shared_ptr<const std::vector<std::uint32_t>> order(std::int64_t epoch) {
    std::lock_guard<std::mutex> lock(order_m_);
    for (const auto& e : orders_)
      if (e.first == epoch) return e.second;
    auto o = std::make_shared<const std::vector<std::uint32_t>>(
        epoch_order(src_->size(), cfg_.seed, static_cast<std::uint64_t>(epoch), cfg_.shuffle));
    if (orders_.size() >= 2) orders_.erase(orders_.begin());
    orders_.emplace_back(epoch, o);
    return o;
  }

  // Batch `seq` (epoch * per_epoch + batch), or this shard's slots of it: a pure function of
  // seq, the source and the config.
  Batch build(std::int64_t seq) {
    Batch b;
    b.position = to_position(seq);
    b.sample_size = src_->sample_size();
    const auto ord = order(b.position.epoch);
    const std::int64_t n = static_cast<std::int64_t>(ord->size());
    const std::int64_t start = b.position.batch * cfg_.batch_size;
    b.global_size = std::min(start + cfg_.batch_size, n) - start;
    b.shard = shard_range(b.global_size, cfg_.shard_rank, cfg_.shard_count);
    const std::int64_t first = start + b.shard.begin;
    const std::int64_t last = start + b.shard.end;
    const std::size_t rows = static_cast<std::size_t>(b.sample_size);
    b.data.resize(static_cast<std::size_t>(last - first) * rows);
    std::string why;
    for (std::int64_t k = first; k < last; ++k) {
      const std::size_t idx = (*ord)[static_cast<std::size_t>(k)];
      SampleRng rng(cfg_.seed, static_cast<std::uint64_t>(b.position.epoch), idx);
      why.clear();
      float* col = b.data.data() + b.labels.size() * rows;
      if (src_->load(idx, rng, col, why)) {
        b.labels.push_back(src_->label(idx));
        b.indices.push_back(idx);
      } else {
        b.skipped.push_back(Skipped{idx, why.empty() ? src_->describe(idx) + ": skipped" : why});
      }
    }
    b.data.resize(b.labels.size() * rows);
    return b;
  }

  void start_workers() {
    stop_ = false;
    for (int t = 0; t < cfg_.threads; ++t) workers_.emplace_back([this] { work(); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

  void work() {
    for (;;) {
      std::int64_t seq;
      std::uint64_t gen;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_work_.wait(lock, [&] { return stop_ || next_job_ - next_out_ < cfg_.prefetch; });
        if (stop_) return;
        seq = next_job_++;
        gen = generation_;
      }
      Result r;
      try {
        r.batch = build(seq);
      } catch (...) {
        r.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(m_);
        if (gen != generation_) continue;  // set_position moved on: discard
        ready_[seq] = std::move(r);
      }
      cv_ready_.notify_all();
    }
  }

  std::shared_ptr<const SampleSource> src_;
  LoaderConfig cfg_;
  std::int64_t per_epoch_ = 1;
  std::int64_t next_out_ = 0;  // the batch next() returns (epoch * per_epoch + batch)
  std::uint64_t skipped_count_ = 0;
  std::vector<std::string> reports_;

  std::mutex m_;  // guards the fields below
  std::condition_variable cv_work_, cv_ready_;
  std::int64_t next_job_ = 0;  // the next batch a worker builds
  std::uint64_t generation_ = 0;
  bool stop_ = false;
  std::map<std::int64_t, Result> ready_;
  std::vector<std::thread> workers_;

  std::mutex order_m_;
  std::vector<std::pair<std::int64_t, std::shared_ptr<const std::vector<std::uint32_t>>>> orders_;
};

}  // namespace datasets
}  // namespace flowprior
