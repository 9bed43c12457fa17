// PLACEHOLDER (being written): replaced by the real implementation.
#include "common/backend.h"

namespace sparge::cpu {
Status attention_fast(const detail::Problem&, const BlockMask&, const TensorView&, const AttentionExtras&, int) { return Status::internal("src/cpu/attention_fast.cc is not implemented yet"); }
}  // namespace sparge::cpu
