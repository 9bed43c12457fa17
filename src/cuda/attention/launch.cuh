// Host launcher of the sm80 attention kernel for one (dtype, head dim, causal) instance.
// Included only by the generated files in src/cuda/instances/.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

#include "cuda/attention/kernel_sm80.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits.cuh"
#include "cuda/common/check.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim, bool kCausal>
Status launch_attn(const AttnParams& params, cudaStream_t stream) {
  using Traits = AttnTraitsSm80<T, kHeadDim>;
  auto* kernel = attn_fwd_sm80<Traits, kCausal>;
  // Raising the dynamic smem limit is a per-function attribute: set it once per instance.
  static std::once_flag once;
  static cudaError_t attr_err = cudaSuccess;
  std::call_once(once, [&] {
    attr_err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    Traits::kSmemBytes);
  });
  SPARGE_CUDA_CHECK_NAMED(attr_err, "cudaFuncSetAttribute(attn_fwd_sm80)");
  const dim3 grid(params.num_q_blocks, params.heads_q, params.batch);
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(params);
  SPARGE_CUDA_CHECK_LAUNCH("attn_fwd_sm80 launch");
  return Status::ok();
}

}  // namespace sparge::cuda
