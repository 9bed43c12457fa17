// PLACEHOLDER (being written): replaced by the real implementation.
#include "common/backend.h"

namespace sparge::cpu {
Status attention_reference(const detail::Problem&, const BlockMask&, const TensorView&, const AttentionExtras&) { return Status::internal("src/cpu/reference.cc is not implemented yet"); }
}  // namespace sparge::cpu
