// Stand-in for malloc_counter.cpp under sanitizers: counting is unavailable.
#include "malloc_counter.hpp"

namespace fpt {
bool malloc_counting_available() { return false; }
void start_counting_allocations() {}
long stop_counting_allocations() { return 0; }
}  // namespace fpt
