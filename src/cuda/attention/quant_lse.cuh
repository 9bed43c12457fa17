// The LSE's smoothing shift, which every kernel reading smoothed K codes adds back
// (kernel_sm80.cuh with INT8 Q·Kᵀ, mainloop_sm90_q8.cuh).
#pragma once

#include <cstdint>

#include "cuda/attention/params.h"
#include "cuda/common/math.cuh"

namespace sparge::cuda {

// Smoothing K (k − km) took scale · q_r · km from every score of row r (natural-log units);
// softmax does not see it, the LSE does (docs/method.md "Quantized mode"). This thread's two rows
// (row_g, row_g + 8) of the mma accumulator layout: the quad's four threads take D/4 channels of
// the exact q row each, then add across the quad. 0 when no LSE is asked for (uniform per CTA).
template <typename T, int kHeadDim>
__device__ __forceinline__ void smoothing_lse_shift(const AttnParams& p, const float* km, int b,
                                                    int h, int row_g, const bool (&row_exists)[2],
                                                    int lane, float (&shift)[2]) {
  shift[0] = shift[1] = 0.0f;
  if (p.lse == nullptr) return;
  constexpr int kPart = kHeadDim / 4;  // channels per thread of the quad
  const T* q = static_cast<const T*>(p.q) + int64_t(b) * p.q_stride[0] + int64_t(h) * p.q_stride[1];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float dot = 0.0f;
    if (row_exists[r]) {
      const T* row = q + int64_t(row_g + 8 * r) * p.q_stride[2] + (lane & 3) * kPart;
#pragma unroll
      for (int c = 0; c < kPart; ++c) dot = fmaf(to_float(row[c]), km[(lane & 3) * kPart + c], dot);
    }
    dot += __shfl_xor_sync(0xffffffffu, dot, 1);
    dot += __shfl_xor_sync(0xffffffffu, dot, 2);
    shift[r] = dot * (p.scale_log2 * kLn2);
  }
}

}  // namespace sparge::cuda
