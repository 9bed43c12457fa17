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
#include "cuda/common/widen16.cuh"  // the 16-byte row chunks, widened

namespace sparge::cuda {

// s = amax/127 + 1e-7 (NaN stays NaN).
__device__ __forceinline__ float int8_scale(float amax) {
  return __fadd_rn(__fdiv_rn(amax, detail::kInt8Max), detail::kQuantScaleEpsilon);
}

// 1/s rounded once (IEEE): codes multiply by it, as the CPU emulation does, instead of dividing
// per element (a division is ~10 instructions; the pass was bound by them).
__device__ __forceinline__ float code_reciprocal(float s) { return __frcp_rn(s); }

// The byte of round(x · inv_s), half away from zero, saturated to ±127 (inv_s =
// code_reciprocal(s)); a NaN product (NaN or Inf input, NaN scale) gives 0: int8 has no NaN, the
// scale carries it. Full-rate arithmetic only (roundf and the float-to-int conversion run on the
// quarter-rate conversion pipe, which bound the pass): for a = min(|y|, 127), round half away is
// floor(a + 0.5), and both the + 0.5 and the floor (adding 2^23, which leaves the integer in the
// low mantissa bits) are exact when rounded toward zero; the sign goes on as two's complement.
// Equal to the CPU's std::round rule for every float y (checked exhaustively on the host).
__device__ __forceinline__ uint32_t int8_code_byte(float x, float inv_s) {
  const float y = __fmul_rn(x, inv_s);
  const float a = fminf(fabsf(y), detail::kInt8Max);  // NaN → 127, replaced below
  const float t = __fadd_rz(__fadd_rz(a, 0.5f), 8388608.0f);
  const int magnitude = __float_as_int(t) & 0xff;
  const int sign = __float_as_int(y) >> 31;  // 0 or -1
  const int code = isnan(y) ? 0 : (magnitude ^ sign) - sign;
  return static_cast<uint32_t>(code) & 0xffu;
}

// v · inv_s in e4m3 (inv_s = code_reciprocal(s_v)), round to nearest even, saturated to ±448;
// every NaN as detail::kE4m3Nan.
__device__ __forceinline__ uint8_t e4m3_code(float v, float inv_s) {
  const float x = __fmul_rn(v, inv_s);
  if (isnan(x)) return detail::kE4m3Nan;
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

}  // namespace sparge::cuda
