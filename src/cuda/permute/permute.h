// Arguments of the CUDA token permutation (see permute.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparge/status.h"

namespace sparge::cuda {

struct PermuteParams {
  const void* in;
  void* out;
  int64_t in_stride[3], out_stride[3];  // (batch, head, token) in elements
  int64_t batch, heads, tokens, head_dim;
  int elem_bytes;  // 2 (fp16/bf16) or 4 (fp32)
  const int64_t* order;
  int64_t order_len, first;
  bool inverse;
};

Status launch_permute(const PermuteParams& params, cudaStream_t stream);

}  // namespace sparge::cuda
