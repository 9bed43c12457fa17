// Error handling for the CUDA backend: every runtime call becomes a Status (no exceptions in
// launch code), and every <<<>>> launch is followed by a launch-error check.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "sparge/status.h"

namespace sparge::cuda {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::ok();
  return Status::cuda(std::string(what) + " failed: " + cudaGetErrorName(err) + " (" +
                      cudaGetErrorString(err) + ")");
}

}  // namespace sparge::cuda

// Evaluate a CUDA runtime call; on failure return a Status naming the call.
#define SPARGE_CUDA_CHECK(call)                                                   \
  do {                                                                            \
    cudaError_t _sparge_err = (call);                                             \
    if (_sparge_err != cudaSuccess) return ::sparge::cuda::cuda_status(_sparge_err, #call); \
  } while (0)

// After a kernel launch: report a bad configuration (grid, smem) without synchronising.
#define SPARGE_CUDA_CHECK_LAUNCH(kernel_name) \
  SPARGE_CUDA_CHECK_NAMED(cudaGetLastError(), kernel_name)

#define SPARGE_CUDA_CHECK_NAMED(call, name)                                        \
  do {                                                                             \
    cudaError_t _sparge_err = (call);                                              \
    if (_sparge_err != cudaSuccess) return ::sparge::cuda::cuda_status(_sparge_err, name); \
  } while (0)
