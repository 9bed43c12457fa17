// The quantized mode's per-element rules on the device, each operation rounded once exactly as in
// src/cpu/quantize.cc (explicit _rn intrinsics, so no flag such as --use_fast_math or -ftz can
// change a byte), and the 16-byte row chunks the kernels read.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "common/quant_layout.h"
#include "cuda/common/math.cuh"

namespace sparge::cuda {

// s = amax/127 + 1e-7 (NaN stays NaN).
__device__ __forceinline__ float int8_scale(float amax) {
  return __fadd_rn(__fdiv_rn(amax, detail::kInt8Max), detail::kQuantScaleEpsilon);
}

// round(x/s) half away from zero, saturated to ±127; a NaN quotient (NaN or Inf input, NaN
// scale) gives 0: int8 has no NaN, the scale carries it.
__device__ __forceinline__ int8_t int8_code(float x, float s) {
  const float r = roundf(__fdiv_rn(x, s));
  if (isnan(r)) return 0;
  return static_cast<int8_t>(fminf(detail::kInt8Max, fmaxf(-detail::kInt8Max, r)));
}

// v/s_v in e4m3, round to nearest even, saturated to ±448; every NaN as detail::kE4m3Nan.
__device__ __forceinline__ uint8_t e4m3_code(float v, float s) {
  const float x = __fdiv_rn(v, s);
  if (isnan(x)) return detail::kE4m3Nan;
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

// Eight consecutive 16-bit elements (one 16-byte load, kept raw: half the registers of floats)
// widened to float.
template <typename T>
__device__ __forceinline__ void widen_chunk8(const uint4& raw, float (&x)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint16_t lo = static_cast<uint16_t>(w[i] & 0xffffu), hi = static_cast<uint16_t>(w[i] >> 16);
    if constexpr (std::is_same_v<T, __half>) {
      x[2 * i] = __half2float(__ushort_as_half(lo));
      x[2 * i + 1] = __half2float(__ushort_as_half(hi));
    } else {
      x[2 * i] = __bfloat162float(__ushort_as_bfloat16(lo));
      x[2 * i + 1] = __bfloat162float(__ushort_as_bfloat16(hi));
    }
  }
}

}  // namespace sparge::cuda
