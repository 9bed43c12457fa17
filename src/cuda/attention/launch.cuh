// Host launchers of the attention kernels (sm80 mma.sync, sm_90a wgmma) for one (dtype, head dim,
// banded) instance. Included only by the generated files in src/cuda/instances/.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

#include "cuda/attention/kernel_sm80.cuh"
#include "cuda/attention/kernel_sm90.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits.cuh"
#include "cuda/attention/traits_sm90.cuh"
#include "cuda/common/check.cuh"

namespace sparge::cuda {

// Grid (query blocks, heads, batch) of `Traits::kThreads` threads; the dynamic shared-memory limit
// is a per-function attribute, raised once per kernel (the kernel is a template argument so that
// every kernel has its own flag).
template <typename Traits, auto kernel>
Status launch_attention_kernel(const char* name, const AttnParams& params, cudaStream_t stream) {
  static std::once_flag once;
  static cudaError_t attr_err = cudaSuccess;
  std::call_once(once, [&] {
    attr_err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    Traits::kSmemBytes);
  });
  SPARGE_CUDA_CHECK_NAMED(attr_err, name);
  const dim3 grid(params.num_q_blocks, params.heads_q, params.batch);
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(params);
  SPARGE_CUDA_CHECK_LAUNCH(name);
  return Status::ok();
}

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn(const AttnParams& params, cudaStream_t stream) {
  using Traits = AttnTraitsSm80<T, kHeadDim>;
  return launch_attention_kernel<Traits, attn_fwd_sm80<Traits, kBanded>>("attn_fwd_sm80", params,
                                                                         stream);
}

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90(const AttnParams& params, cudaStream_t stream) {
  using Traits = AttnTraitsSm90<T, kHeadDim>;
  return launch_attention_kernel<Traits, attn_fwd_sm90<Traits, kBanded>>("attn_fwd_sm90", params,
                                                                         stream);
}

}  // namespace sparge::cuda
