// Counts heap allocations while switched on: malloc and friends are interposed in this test
// executable (glibc exports the real ones as __libc_*), so allocations by libstdc++ (operator
// new), Eigen (aligned_malloc) and libgomp are all seen. Not built under sanitizers, which
// interpose the same functions themselves.
#include "malloc_counter.hpp"

#include <atomic>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_count{0};
inline void note() {
  if (g_counting.load(std::memory_order_relaxed)) g_count.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

extern "C" {
void* malloc(std::size_t n) noexcept {
  note();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) noexcept {
  note();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) noexcept {
  note();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t align, std::size_t n) noexcept {
  note();
  return __libc_memalign(align, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) noexcept {
  note();
  return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
  note();
  void* p = __libc_memalign(align, n);
  if (!p && n) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}

namespace fpt {
bool malloc_counting_available() { return true; }
void start_counting_allocations() {
  g_count.store(0);
  g_counting.store(true);
}
long stop_counting_allocations() {
  g_counting.store(false);
  return g_count.load();
}
}  // namespace fpt
