// PLACEHOLDER (being written): replaced by the real implementation.
#include "sparge/sparge.h"

namespace sparge {
std::vector<int64_t> hilbert_order(int64_t, int64_t, int64_t) { return {}; }
std::vector<int64_t> inverse_order(const std::vector<int64_t>&) { return {}; }
}  // namespace sparge
