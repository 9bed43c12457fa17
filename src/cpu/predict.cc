// PLACEHOLDER (being written): replaced by the real implementation.
#include "common/backend.h"

namespace sparge::cpu {
Status predict_block_mask(const detail::Problem&, const BlockMask&) { return Status::internal("src/cpu/predict.cc is not implemented yet"); }
}  // namespace sparge::cpu
