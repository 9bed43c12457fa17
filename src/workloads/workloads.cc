// PLACEHOLDER (being written): replaced by the real implementation.
#include "sparge/workloads.h"

namespace sparge::workloads {
Workload random_gaussian(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint64_t) { return {}; }
Workload video_grid(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint64_t) { return {}; }
Workload language_like(int64_t, int64_t, int64_t, int64_t, int64_t, uint64_t) { return {}; }
std::vector<uint16_t> to_half_bits(const std::vector<float>&, DType) { return {}; }
}  // namespace sparge::workloads
