// The CUDA backend's entry points in a build without CUDA: each says how to get it. The build
// may have had nvcc on PATH (SPARGE_WITH_CUDA=OFF / =0), so the message names the switch.
#include "common/backend.h"

namespace sparge::cuda {
namespace {
Status not_built() {
  return Status::unsupported(
      "tensors are on cuda but this build of sparge has no CUDA backend (it was configured "
      "without it; rebuild with SPARGE_WITH_CUDA=ON for CMake, SPARGE_WITH_CUDA=1 for pip "
      "install)");
}
}  // namespace

int device_count() { return 0; }
std::string compiled_set() { return "none"; }
std::vector<int> compiled_head_dims() { return {}; }
std::size_t workspace_size(const ProblemShape&, const SparseOptions&) { return 0; }
std::size_t tile_class_workspace_size(const ProblemShape&, const SparseOptions&,
                                      const AttentionMask&) {
  return 0;
}
Status predict_block_mask(const detail::Problem&, const BlockMask&, const ExecContext&,
                          const Stage1Stats&) {
  return not_built();
}
Status attention(const detail::Problem&, const BlockMask&, const TensorView&,
                 const AttentionExtras&, const ExecContext&) {
  return not_built();
}
Status sparse_attention(const detail::Problem&, const BlockMask&, const TensorView&,
                        const AttentionExtras&, const ExecContext&) {
  return not_built();
}
Status copy_rows(void*, std::size_t, const void*, std::size_t, std::size_t, std::size_t,
                 const ExecContext&) {
  return not_built();
}
Status permute_tokens(const TensorView&, const TensorView&, const int64_t*, int64_t, int64_t,
                      bool, const ExecContext&) {
  return not_built();
}
Status update_key_blocks(const TensorView&, KeyBlocks*, int64_t, bool, const ExecContext&) {
  return not_built();
}
std::size_t key_blocks_workspace_size(int64_t, int64_t, int64_t, int64_t) { return 0; }
std::size_t quantize_workspace_size(const ProblemShape&) { return 0; }
Status quantize_inputs(const detail::Problem&, const QuantizedBuffers&,
                       const detail::QuantGranularity&, const ExecContext&) {
  return not_built();
}
}  // namespace sparge::cuda
