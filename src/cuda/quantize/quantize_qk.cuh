// Quantization pass, INT8 Q and smoothed K: a CTA takes kQuantTileRows rows of one (b, head),
// each thread kChunks 16-byte chunks of 8 channels (D/8 consecutive threads per row, so every load
// and store is coalesced). Three steps: row max |x| (of x − km for K) by shuffles within the row's
// threads; group max and scale s = amax/127 + 1e-7 per `rows` rows (a power of two dividing the
// tile, so groups never straddle CTAs); codes round(x · rn(1/s)) written as 8-byte chunks. The values stay
// in registers between the steps (kChunks raw chunks of 4 registers per thread).
// Every chunk's load is issued before the first reduction (kChunks is a template argument, so the
// loads form one unrolled, branch-free batch): with one load in flight per thread at a time the
// kernel ran at ~1 TB/s on the H200 (400 us for Q at N 32K, H 32, hd 128).
#pragma once

#include <cstdint>

#include "cuda/quantize/codes.cuh"
#include "cuda/quantize/params.h"
#include "cuda/quantize/pool_tile.cuh"

namespace sparge::cuda {

// Chunks per thread at head dim D: a tile is kQuantTileRows·D/8 chunks over kQuantQkThreads threads.
constexpr int qk_chunks_per_thread(int head_dim) { return kQuantTileRows * head_dim / 8 / kQuantQkThreads; }
static_assert(qk_chunks_per_thread(kQuantMinHeadDim) >= 1,
              "every thread owns whole chunks at every head dim");

// grid (⌈seq / kQuantTileRows⌉, batch·heads); kIsKey: k − km, else q; kChunks =
// qk_chunks_per_thread(head_dim) (the launcher picks the instance); kPool: also Stage 1's
// pooling of the tile's blocks (pool_tile.cuh) from the same registers.
template <typename T, bool kIsKey, int kChunks, bool kPool>
__global__ void __launch_bounds__(kQuantQkThreads, kPool ? 2 : 1) quantize_int8_rows(const QuantizeParams p) {
  __shared__ float sKm[kQuantMaxHeadDim];
  __shared__ float sRowMax[kQuantTileRows];
  __shared__ float sInvScale[kQuantTileRows];
  const int heads = kIsKey ? p.heads_kv : p.heads_q;
  const int seq = kIsKey ? p.seq_k : p.seq_q;
  const int group_rows = kIsKey ? p.k_rows : p.q_rows;
  const int64_t* stride = kIsKey ? p.k_stride : p.q_stride;
  const int bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int row0 = blockIdx.x * kQuantTileRows;
  // The head dim follows from kChunks (the launcher picks the instance from p.head_dim), so the
  // row and column of a chunk are shifts, not divisions.
  constexpr int D = kChunks * kQuantQkThreads * 8 / kQuantTileRows, lanes_per_row = D / 8;
  static_assert(lanes_per_row <= 32, "a row's chunks stay within one warp");
  const T* gX = static_cast<const T*>(kIsKey ? p.k : p.q) + b * stride[0] + h * stride[1];

  // 1. Every chunk's load first (zeros past the end: neutral for the max).
  uint4 raw[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + i * kQuantQkThreads, row = c / lanes_per_row, col = (c % lanes_per_row) * 8;
    raw[i] = row0 + row < seq
                 ? *reinterpret_cast<const uint4*>(gX + int64_t(row0 + row) * stride[2] + col)
                 : make_uint4(0u, 0u, 0u, 0u);
  }
  if (kIsKey)
    for (int d = threadIdx.x; d < D; d += kQuantQkThreads) sKm[d] = p.km[int64_t(bh) * D + d];
  __syncthreads();

  // x (or x − km) of one chunk, the same operations in steps 2 and 4. Rows past the end stay out
  // of the max (0 − km would count).
  auto values = [&](const uint4& chunk, int col, float (&x)[8]) {
    widen_chunk8<T>(chunk, x);
    if (kIsKey) {
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = __fsub_rn(x[j], sKm[col + j]);
    }
  };

  // 2. Per-row max |x|: the kChunks reductions interleaved, one shuffle step at a time.
  float amax[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + i * kQuantQkThreads, row = c / lanes_per_row, col = (c % lanes_per_row) * 8;
    amax[i] = 0.0f;
    if (row0 + row < seq) {
      float x[8];
      values(raw[i], col, x);
#pragma unroll
      for (int j = 0; j < 8; ++j) amax[i] = max_nan(amax[i], fabsf(x[j]));
    }
  }
  for (int off = 1; off < lanes_per_row; off <<= 1) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) amax[i] = max_nan(amax[i], __shfl_xor_sync(0xffffffffu, amax[i], off));
  }
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + i * kQuantQkThreads;
    if (c % lanes_per_row == 0) sRowMax[c / lanes_per_row] = amax[i];
  }
  __syncthreads();

  // 3. One scale per group of rows (max is exact in any order, so the CPU's value).
  const int groups = kQuantTileRows / group_rows;
  for (int g = threadIdx.x; g < groups; g += kQuantQkThreads) {
    float gmax = 0.0f;
    for (int r = g * group_rows; r < (g + 1) * group_rows; ++r) gmax = max_nan(gmax, sRowMax[r]);
    const float s = int8_scale(gmax);
    sInvScale[g] = code_reciprocal(s);
    if (row0 + g * group_rows < seq)
      (kIsKey ? p.k_scale : p.q_scale)[int64_t(bh) * (kIsKey ? p.k_groups : p.q_groups) +
                                       row0 / group_rows + g] = s;
  }
  __syncthreads();

  // 4. Codes, 8 bytes per chunk.
  int8_t* gOut = (kIsKey ? p.k8 : p.q8) + (int64_t(bh) * seq + row0) * D;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = threadIdx.x + i * kQuantQkThreads, row = c / lanes_per_row, col = (c % lanes_per_row) * 8;
    if (row0 + row >= seq) continue;
    const float inv_s = sInvScale[row / group_rows];
    float x[8];
    values(raw[i], col, x);
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; ++j)
      w[j / 4] |= int8_code_byte(x[j], inv_s) << (8 * (j % 4));
    *reinterpret_cast<uint2*>(gOut + int64_t(row) * D + col) = make_uint2(w[0], w[1]);
  }

  // 5. Stage 1's pooling, while the rows are still in registers.
  if constexpr (kPool) pool_tile_blocks<T, kIsKey, kChunks, D>(p, raw, bh, row0, seq);
}

}  // namespace sparge::cuda
