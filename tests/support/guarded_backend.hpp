// GuardedBackend: a test backend whose memory the host cannot touch outside the backend.
//
// It runs every primitive of CpuBackend, but its Buffer is page-aligned memory of its own
// (mmap) that is mprotect-ed to PROT_NONE whenever no backend function is running. Code above
// backend/ that reads or writes the elements of a backend buffer, or of a view of one, instead
// of going through a primitive or a memory function, dies with SIGSEGV: the same code would read
// device memory from the host under a CUDA backend. The stack instantiated on it must give the
// CpuBackend's results bit for bit (tests/model/test_guarded_backend.cpp).
//
// Every primitive is forwarded by name: a primitive that the library starts to call and that
// is not listed here fails to compile, which is the reminder to list it (and to give the CUDA
// backend one).
//
// Linux only (mmap, mprotect); single-threaded callers (the guard is process-wide).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <flowprior/backend/cpu.hpp>
#include <map>
#include <mutex>
#include <new>
#include <utility>

namespace fpt {

/// The registry of guarded regions and the guard depth.
class Guard {
 public:
  static Guard& get() {
    static Guard g;
    return g;
  }
  void* allocate(std::size_t bytes) {
    const std::size_t len = round(bytes);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    std::lock_guard<std::mutex> lock(mu_);
    regions_[p] = len;
    if (depth_ == 0) mprotect(p, len, PROT_NONE);
    return p;
  }
  void release(void* p) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = regions_.find(p);
    munmap(p, it->second);
    regions_.erase(it);
  }
  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (depth_++ == 0) protect_all(PROT_READ | PROT_WRITE);
    ++entries_;
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--depth_ == 0) protect_all(PROT_NONE);
  }
  /// How many backend calls have run (a test can check that work went through the backend).
  long entries() const { return entries_; }
  std::size_t regions() const { return regions_.size(); }

 private:
  static std::size_t round(std::size_t bytes) {
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    return (std::max<std::size_t>(bytes, 1) + page - 1) / page * page;
  }
  void protect_all(int prot) {
    for (const auto& r : regions_) mprotect(r.first, r.second, prot);
  }
  std::mutex mu_;
  std::map<void*, std::size_t> regions_;
  int depth_ = 0;
  long entries_ = 0;
};

/// Open for the lifetime of a backend function.
struct Unlocked {
  Unlocked() { Guard::get().enter(); }
  ~Unlocked() { Guard::get().leave(); }
  Unlocked(const Unlocked&) = delete;
  Unlocked& operator=(const Unlocked&) = delete;
};

/// A buffer in guarded memory: size, data, resize (the memory functions of a device buffer), no
/// element access.
template <class T>
class GuardedBuffer {
 public:
  using value_type = T;
  GuardedBuffer() = default;
  GuardedBuffer(const GuardedBuffer& o) { *this = o; }
  GuardedBuffer(GuardedBuffer&& o) noexcept { swap(o); }
  GuardedBuffer& operator=(const GuardedBuffer& o) {
    if (this == &o) return *this;
    resize(o.size_);
    const Unlocked open;
    if (o.size_ > 0) std::memcpy(data_, o.data_, o.size_ * sizeof(T));
    return *this;
  }
  GuardedBuffer& operator=(GuardedBuffer&& o) noexcept {
    GuardedBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~GuardedBuffer() { Guard::get().release(data_); }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  /// Sets the size to n elements; growing past the capacity moves to a new region (new
  /// elements zero), keeping the first size() elements.
  void resize(std::size_t n) {
    if (n > cap_) {
      if (n > std::size_t(-1) / 2 / sizeof(T)) throw std::bad_alloc();
      T* fresh = static_cast<T*>(Guard::get().allocate(n * sizeof(T)));
      if (size_ > 0) {
        const Unlocked open;
        std::memcpy(fresh, data_, size_ * sizeof(T));
      }
      Guard::get().release(data_);
      data_ = fresh;
      cap_ = n;
    }
    size_ = n;
  }

 private:
  void swap(GuardedBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(cap_, o.cap_);
  }
  T* data_ = nullptr;
  std::size_t size_ = 0, cap_ = 0;
};

// Explicit template arguments (a primitive whose S is not deducible, called as name<S>(...))
// go to the pack T; the arguments are deduced into A.
#define FPT_GUARDED(name)                                                            \
  template <class... T, class... A>                                                  \
  static decltype(auto) name(Context& c, A&&... a) {                                 \
    const Unlocked open;                                                             \
    ++c.calls;                                                                       \
    return flowprior::CpuBackend::template name<T...>(c.cpu, std::forward<A>(a)...); \
  }

struct GuardedBackend {
  struct Context {
    flowprior::CpuBackend::Context cpu;
    long calls = 0;  ///< primitives run on this context
  };
  template <class T>
  using Buffer = GuardedBuffer<T>;

  static constexpr const char* name() { return "guarded-cpu"; }
  /// Not host-accessible: its memory is reached only through the primitives and the host copies
  /// (as a device backend's), so the communicator's staging path is tested on it.
  static constexpr bool host_memory = false;
  static const char* gemm_engine() { return flowprior::CpuBackend::gemm_engine(); }

  template <class S>
  static void resize(Buffer<S>& b, flowprior::Index n) {
    if (flowprior::Index(b.size()) < n) b.resize(static_cast<std::size_t>(n));
  }
  template <class S>
  static void copy_from_host(const S* src, flowprior::Index n, Buffer<S>& dst) {
    dst.resize(std::size_t(n));
    copy_from_host(src, n, dst.data());
  }
  template <class S>
  static void copy_to_host(const Buffer<S>& src, S* dst) {
    copy_to_host(src.data(), flowprior::Index(src.size()), dst);
  }
  template <class S>
  static void copy_from_host(const S* src, flowprior::Index n, S* dst) {
    const Unlocked open;
    if (n > 0) std::memcpy(dst, src, std::size_t(n) * sizeof(S));
  }
  template <class S>
  static void copy_to_host(const S* src, flowprior::Index n, S* dst) {
    const Unlocked open;
    if (n > 0) std::memcpy(dst, src, std::size_t(n) * sizeof(S));
  }

  FPT_GUARDED(gemm)
  FPT_GUARDED(broadcast_cols)
  FPT_GUARDED(add_cols)
  FPT_GUARDED(sum_cols)
  FPT_GUARDED(fill)
  FPT_GUARDED(scale)
  FPT_GUARDED(copy)
  FPT_GUARDED(axpy)
  FPT_GUARDED(identity_tiles)
  FPT_GUARDED(block_traces)
  FPT_GUARDED(path_mix)
  FPT_GUARDED(path_residuals)
  FPT_GUARDED(scaled_copy)
  FPT_GUARDED(path_grad)
  FPT_GUARDED(gaussian_noise)
  FPT_GUARDED(reverse_times)
  FPT_GUARDED(first_outside_unit)
  FPT_GUARDED(time_runs)
  FPT_GUARDED(gather_cols)
  FPT_GUARDED(gemm_batched)
  FPT_GUARDED(softmax_cols)
  FPT_GUARDED(softmax_backward_cols)
  FPT_GUARDED(softmax_xent_cols)
  FPT_GUARDED(patchify)
  FPT_GUARDED(unpatchify)
  FPT_GUARDED(add_per_token)
  FPT_GUARDED(sum_per_token)
  FPT_GUARDED(sequence_map)
  FPT_GUARDED(gaussian_posterior_forward)
  FPT_GUARDED(gaussian_kl)
  FPT_GUARDED(gaussian_posterior_backward)
  FPT_GUARDED(lincomb)
  FPT_GUARDED(error_sq_sum)
  FPT_GUARDED(scaled_sq_sum)
  FPT_GUARDED(find_nonfinite)
  FPT_GUARDED(probe_dots)
  FPT_GUARDED(normal_logpdf)
  FPT_GUARDED(activation_forward)
  FPT_GUARDED(activation_backward)
  FPT_GUARDED(activation_jvp)
  FPT_GUARDED(time_features)
  FPT_GUARDED(norm_modulate_forward)
  FPT_GUARDED(norm_modulate_backward)
  FPT_GUARDED(norm_modulate_jvp)
  FPT_GUARDED(gated_residual_forward)
  FPT_GUARDED(gated_residual_backward)
  FPT_GUARDED(gated_residual_jvp)
  FPT_GUARDED(adam_update)
  FPT_GUARDED(sum_squares)
  FPT_GUARDED(max_abs)
  FPT_GUARDED(first_nonfinite)
  FPT_GUARDED(scale_vec)
  FPT_GUARDED(ema_update)
};

#undef FPT_GUARDED

/// A host copy of n elements of guarded memory.
template <class S>
std::vector<S> host_copy(const S* p, flowprior::Index n) {
  std::vector<S> out(static_cast<std::size_t>(n));
  GuardedBackend::copy_to_host(p, n, out.data());
  return out;
}

}  // namespace fpt
