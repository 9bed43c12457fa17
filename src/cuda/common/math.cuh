// Numeric constants and small device helpers shared by the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sparge::cuda {

constexpr float kLog2e = 1.4426950408889634f;  // scores are kept in log2 units: exp(x) = 2^(x·log2 e)
constexpr float kLn2 = 0.6931471805599453f;     // lse = ln 2 · (m + log2 l)

// Storage type -> float for the two 16-bit input types.
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Two floats -> one 32-bit register holding the pair (low half = a), round to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

// max(a, b) that is NaN when either is: PTX max.NaN (sm_80+), one FMNMX like fmaxf, which would
// instead drop a NaN operand and so turn a row of NaN scores into a row that sees no key.
__device__ __forceinline__ float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return isnan(a) || isnan(b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
#endif
}

// Max of one row of a thread's mma C fragments (values 2r and 2r + 1 of each of its kN tiles,
// r = 0 for row g, 1 for row g + 8) as a tree: depth log2(2·kN), where a chain of 2·kN − 1
// dependent maxima left each one waiting on the one before. `max2` is the NaN rule (max_nan, or
// fmaxf, which drops a NaN operand); both are associative, so the order does not change the max.
template <int kN, typename Max2>
__device__ __forceinline__ float fragment_row_max(const float (&s)[kN][4], int r, Max2 max2) {
  static_assert((kN & (kN - 1)) == 0, "a tree of pairs wants a power of two");
  float t[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) t[n] = max2(s[n][2 * r], s[n][2 * r + 1]);
#pragma unroll
  for (int width = kN / 2; width >= 1; width /= 2)
#pragma unroll
    for (int n = 0; n < width; ++n) t[n] = max2(t[n], t[n + width]);
  return t[0];
}

// Max over the lanes `off` = 1, 2, .. width_mask apart (a quad for width_mask 2); NaN-propagating.
__device__ __forceinline__ float warp_max_xor(float x, int width_mask) {
  for (int off = 1; off <= width_mask; off <<= 1)
    x = max_nan(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// 2^x on the SFU (one MUFU.EX2; -inf -> +0). Denormal results flush to 0: far below bf16/fp16
// P in the attention kernels, and below an ulp of the sums Stage 1 adds them to (each sum holds
// its maximum's 2^0 = 1). exp2f is the same MUFU.EX2 plus three instructions that keep denormals.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// log2 x on the SFU (one MUFU.LG2, an approximation of about 22 correct bits; denormals flush):
// for sums that hold their maximum's 2^0 = 1, so never denormal.
__device__ __forceinline__ float log2_approx(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ double warp_sum(double x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

}  // namespace sparge::cuda
