// Heap-allocation counting for tests/perf (malloc_counter.cpp; absent under sanitizers, where
// malloc_counting_available() is false).
#pragma once

namespace fpt {
bool malloc_counting_available();
void start_counting_allocations();
long stop_counting_allocations();  ///< allocations on any thread since start
}  // namespace fpt
