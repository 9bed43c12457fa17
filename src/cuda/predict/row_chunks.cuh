// Rows of q or k read as 16-byte chunks of eight 16-bit values, and their exact widening to
// double. Stage 1's pooling kernels read each input once and must run at HBM bandwidth, so a
// lane issues several 16-byte loads before it needs the first one, and each element is widened
// once (F2F.F64 runs at a quarter of the FP64 rate on sm_80 and sm_90: one per element keeps
// that pipe under the bandwidth; two per element, with the sums' three FP64 ops, would not).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/widen16.cuh"

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

// x[e] = the chunk's element e as double, exactly: widened to float, then one F2F (which carries
// infinities, NaNs and subnormals exactly). Callers that subtract a mean do it in double, one
// rounding. (The former integer widening took ~6 integer ops, a DFMA and a non-finite check per
// element, and ptxas redid it for the pooling's second use rather than hold the doubles; done
// once per element it measured 8-16% slower than this: the pooling record's call 3.)
template <typename T>
__device__ __forceinline__ void widen_chunk(uint4 raw, double (&x)[kChunkElems]) {
#pragma unroll
  for (int e = 0; e < kChunkElems; ++e) x[e] = double(widen8_at<T>(raw, e));
}

}  // namespace sparge::cuda
