// 16-bit floats (bf16, fp16) kept as raw bits, e.g. a 16-byte load of eight of them, widened to
// float exactly: Stage 1's pooling (predict/row_chunks.cuh) and the quantization pass
// (quantize/codes.cuh) read their rows this way.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace sparge::cuda {

// Half `high` (0: bits 0-15, 1: bits 16-31) of a 32-bit word as float: bf16 is a float's top
// half (one shift or mask), fp16 one conversion.
template <typename T>
__device__ __forceinline__ float widen16(uint32_t word, int high) {
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(__ushort_as_half(uint16_t(high ? word >> 16 : word)));
  else
    return __uint_as_float(high ? word & 0xFFFF0000u : word << 16);
}

// Element e (0..7) of a 16-byte chunk (e a compile-time index after unrolling).
template <typename T>
__device__ __forceinline__ float widen8_at(const uint4& raw, int e) {
  const uint32_t w = e < 2 ? raw.x : e < 4 ? raw.y : e < 6 ? raw.z : raw.w;
  return widen16<T>(w, e % 2);
}

// The chunk's eight elements (kept raw until here: half the registers of floats).
template <typename T>
__device__ __forceinline__ void widen_chunk8(const uint4& raw, float (&x)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) x[e] = widen8_at<T>(raw, e);
}

}  // namespace sparge::cuda
