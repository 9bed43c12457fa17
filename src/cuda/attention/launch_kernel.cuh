// The launch every attention kernel shares: grid (query blocks, heads, batch) of
// Traits::kThreads threads with Traits::kSmemBytes of dynamic shared memory, whose limit is a
// per-function attribute raised once per kernel (the kernel is a template argument so that
// every kernel has its own flag). `args` is what the kernel takes (AttnParams, or AttnParams with
// tensor maps for the TMA kernels); `params` gives the grid.
#pragma once

#include <cuda_runtime.h>

#include <mutex>

#include "cuda/attention/params.h"
#include "cuda/common/check.cuh"

namespace sparge::cuda {

template <typename Traits, auto kernel, typename Args>
Status launch_attention_kernel(const char* name, const AttnParams& params, const Args& args,
                               cudaStream_t stream) {
  static std::once_flag once;
  static cudaError_t attr_err = cudaSuccess;
  std::call_once(once, [&] {
    attr_err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    Traits::kSmemBytes);
  });
  SPARGE_CUDA_CHECK_NAMED(attr_err, name);
  const dim3 grid(params.num_q_blocks, params.heads_q, params.batch);
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(args);
  SPARGE_CUDA_CHECK_LAUNCH(name);
  return Status::ok();
}

}  // namespace sparge::cuda
