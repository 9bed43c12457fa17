// PLACEHOLDER (being written): replaced by the real implementation.
#include "common/backend.h"

namespace sparge::cpu {
Status permute_tokens(const TensorView&, const TensorView&, const int64_t*, int64_t, int64_t, bool) { return Status::internal("src/cpu/permute.cc is not implemented yet"); }
}  // namespace sparge::cpu
