// Grain sizes for at::parallel_for, from the work of one loop item.
//
// A parallel region costs microseconds even on an idle machine, and can cost milliseconds on a
// loaded one (benchmarks/RESULTS.md, "Measurements behind code choices"), so a loop runs inline
// unless it holds at least at::internal::GRAIN_SIZE (32768) elements' worth of work.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace stpriv {

// Loop items per chunk when one item touches `work_per_item` elements.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

}  // namespace stpriv
