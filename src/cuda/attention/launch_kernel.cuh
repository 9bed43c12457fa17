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

// The launch with its grid and dynamic shared memory given (the persistent kernel's grid is one
// CTA per SM); the attribute is raised once per kernel.
template <auto kernel, typename Args>
Status launch_kernel_on(const char* name, dim3 grid, int threads, int smem_bytes, const Args& args,
                        cudaStream_t stream) {
  static std::once_flag once;
  static cudaError_t attr_err = cudaSuccess;
  std::call_once(once, [&] {
    attr_err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  });
  SPARGE_CUDA_CHECK_NAMED(attr_err, name);
  kernel<<<grid, threads, smem_bytes, stream>>>(args);
  SPARGE_CUDA_CHECK_LAUNCH(name);
  return Status::ok();
}

template <typename Traits, auto kernel, typename Args>
Status launch_attention_kernel(const char* name, const AttnParams& params, const Args& args,
                               cudaStream_t stream) {
  return launch_kernel_on<kernel>(name, dim3(params.num_q_blocks, params.heads_q, params.batch),
                                  Traits::kThreads, Traits::kSmemBytes, args, stream);
}

}  // namespace sparge::cuda
