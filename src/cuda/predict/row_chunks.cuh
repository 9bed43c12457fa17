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

// x[e] = value[e] − sub[e] (kSub) or value[e], rounded once as double(value) − sub: the 16-bit
// value widens exactly to float (a shift for bf16, one conversion for fp16) and from there to
// double with one F2F, which carries infinities, NaNs and subnormals exactly. (The former
// integer widening took ~6 integer ops, a DFMA and a non-finite check per element, and ptxas
// redid it for the pooling's second use rather than hold the doubles.)
template <typename T, bool kSub>
__device__ __forceinline__ void widen_chunk(uint4 raw, const double (&sub)[kChunkElems],
                                            double (&x)[kChunkElems]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int e = 0; e < kChunkElems; ++e) {
    const double v = double(chunk_element<T>(w[e / 2], e % 2));
    x[e] = kSub ? v - sub[e] : v;
  }
}

}  // namespace sparge::cuda
