// Rows of q or k read as 16-byte chunks of eight 16-bit values, and their exact widening to
// double. Stage 1's pooling kernels read each input once and must run at HBM bandwidth, so a
// lane issues several 16-byte loads before it needs the first one, and each element is widened
// once (F2F.F64 runs at a quarter of the FP64 rate on sm_80 and sm_90: one per element keeps
// that pipe under the bandwidth; two per element, with the sums' three FP64 ops, would not).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace sparge::cuda {

constexpr int kChunkElems = 8;  // 16 bytes of a 16-bit type
constexpr int kMaxChunks = 32;  // head_dim <= 256

// Lanes that share one row: one chunk each, a power of two >= 8 (the reduce-scatter in
// pool_sim.cuh needs 8), so 32 / lanes rows per warp instruction. head_dim <= 256.
__host__ __device__ inline int lanes_per_row(int head_dim) {
  const int chunks = (head_dim + kChunkElems - 1) / kChunkElems;
  int lanes = 8;
  while (lanes < chunks) lanes <<= 1;
  return lanes;
}

// Whether every row of a tensor view can be read with 16-byte loads: whole chunks per row and
// 16-byte aligned rows. The host checks make this true on cuda for head_dim % 8 == 0; the
// scalar path keeps other views correct.
template <typename T>
__device__ __forceinline__ bool rows_vectorizable(const T* base, int64_t token_stride, int head_dim) {
  return head_dim % kChunkElems == 0 && token_stride % kChunkElems == 0 &&
         reinterpret_cast<uintptr_t>(base) % 16 == 0;
}

// Chunk c (channels 8c .. 8c+7) of a row; channels at or past head_dim read as +0.
template <typename T>
__device__ __forceinline__ uint4 load_chunk(const T* row, int c, int head_dim, bool vec) {
  if (vec) return __ldg(reinterpret_cast<const uint4*>(row) + c);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int d = c * kChunkElems + 2 * j;
    const uint32_t lo = d < head_dim ? bits[d] : 0u;
    const uint32_t hi = d + 1 < head_dim ? bits[d + 1] : 0u;
    w[j] = lo | (hi << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Element `high` (0: bits 0-15, 1: bits 16-31) of a 32-bit word of a chunk as float, exactly
// (bf16 is the top half of a float: one shift or mask).
template <typename T>
__device__ __forceinline__ float chunk_element(uint32_t word, int high) {
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(__ushort_as_half(uint16_t(high ? word >> 16 : word)));
  else
    return __uint_as_float(high ? word & 0xFFFF0000u : word << 16);
}

// A 16-bit float's bits, shifted right (arithmetic) by kShift from the top of a 32-bit word and
// masked with kMask, are a double's high word whose value is the input divided by kScale for
// every finite input, zeros and subnormals included (an input subnormal lands as a double
// subnormal with the same mantissa bits). kInfAbs: the smallest |bits| of an infinity or NaN.
template <typename T>
struct WidenBits;
template <>
struct WidenBits<__nv_bfloat16> {
  static constexpr int kShift = 3;  // 8 exponent bits: 11 - 8
  static constexpr uint32_t kMask = 0x8FFFE000u;
  static constexpr double kScale = 0x1p896;  // 2^(1023 - 127)
  static constexpr uint32_t kInfAbs = 0x7F80u;
};
template <>
struct WidenBits<__half> {
  static constexpr int kShift = 6;  // 5 exponent bits: 11 - 5
  static constexpr uint32_t kMask = 0x81FFFC00u;
  static constexpr double kScale = 0x1p1008;  // 2^(1023 - 15)
  static constexpr uint32_t kInfAbs = 0x7C00u;
};

// x[e] = value[e] − sub[e] (kSub) or value[e], rounded once as double(value) − sub would be:
// the bits become a double's high word (value / kScale, exact) and one FMA by kScale rounds
// only the difference. That is one FP64-pipe operation per element, where F2F.F64 takes four
// (it runs at a quarter of the FP64 rate), and the pooling's three FP64 operations per element
// already load that pipe. Infinities and NaNs, which the bit trick would turn into finite
// values, take the exact conversion, per chunk.
template <typename T, bool kSub>
__device__ __forceinline__ void widen_chunk(uint4 raw, const double (&sub)[kChunkElems],
                                            double (&x)[kChunkElems]) {
  using W = WidenBits<T>;
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
  // |bits| + (0x8000 − kInfAbs) sets bit 15 of a half exactly for an infinity or NaN; the two
  // halves cannot carry into each other (|bits| <= 0x7FFF).
  constexpr uint32_t kToSign = (0x8000u - W::kInfAbs) * 0x00010001u;
  uint32_t special = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) special |= (w[j] & 0x7FFF7FFFu) + kToSign;
  if ((special & 0x80008000u) == 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t lo = uint32_t(int32_t(w[j] << 16) >> W::kShift) & W::kMask;
      const uint32_t hi = uint32_t(int32_t(w[j]) >> W::kShift) & W::kMask;
      x[2 * j] = kSub ? fma(__hiloint2double(int(lo), 0), W::kScale, -sub[2 * j])
                      : __hiloint2double(int(lo), 0) * W::kScale;
      x[2 * j + 1] = kSub ? fma(__hiloint2double(int(hi), 0), W::kScale, -sub[2 * j + 1])
                          : __hiloint2double(int(hi), 0) * W::kScale;
    }
  } else {
#pragma unroll
    for (int e = 0; e < kChunkElems; ++e) {
      const double v = double(chunk_element<T>(w[e / 2], e % 2));
      x[e] = kSub ? v - sub[e] : v;
    }
  }
}

}  // namespace sparge::cuda
