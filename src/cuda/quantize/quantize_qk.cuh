// Quantization pass, INT8 Q and smoothed K: a CTA takes kQuantTileRows rows of one (b, head),
// each thread 16-byte chunks of 8 channels (D/8 consecutive threads per row, so every load and
// store is coalesced). Three steps: row max |x| (of x − km for K) by shuffles within the row's
// threads; group max and scale s = amax/127 + 1e-7 per `rows` rows (a power of two dividing the
// tile, so groups never straddle CTAs); codes round(x/s) written as 8-byte chunks. The values stay
// in registers between the steps (D/16 raw chunks of 4 registers per thread).
#pragma once

#include <cstdint>

#include "cuda/quantize/codes.cuh"
#include "cuda/quantize/params.h"

namespace sparge::cuda {

constexpr int kQkThreads = 256;
constexpr int kQkMaxChunks = kQuantTileRows * kQuantMaxHeadDim / 8 / kQkThreads;  // per thread
static_assert(kQuantTileRows * kQuantMinHeadDim / 8 % kQkThreads == 0,
              "every thread owns whole chunks at every head dim");

// grid (⌈seq / kQuantTileRows⌉, batch·heads); kIsKey: k − km, else q.
template <typename T, bool kIsKey>
__global__ void __launch_bounds__(kQkThreads) quantize_int8_rows(const QuantizeParams p) {
  __shared__ float sKm[kQuantMaxHeadDim];
  __shared__ float sRowMax[kQuantTileRows];
  __shared__ float sScale[kQuantTileRows];
  const int heads = kIsKey ? p.heads_kv : p.heads_q;
  const int seq = kIsKey ? p.seq_k : p.seq_q;
  const int group_rows = kIsKey ? p.k_rows : p.q_rows;
  const int64_t* stride = kIsKey ? p.k_stride : p.q_stride;
  const int bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int row0 = blockIdx.x * kQuantTileRows;
  const int D = p.head_dim, lanes_per_row = D / 8;  // a power of two <= 32 (checked on the host)
  const int chunks = kQuantTileRows * lanes_per_row / kQkThreads;
  const T* gX = static_cast<const T*>(kIsKey ? p.k : p.q) + b * stride[0] + h * stride[1];

  if (kIsKey)
    for (int d = threadIdx.x; d < D; d += kQkThreads) sKm[d] = p.km[int64_t(bh) * D + d];
  __syncthreads();

  // x (or x − km) of one chunk, the same operations in steps 1 and 3.
  auto values = [&](const uint4& raw, int col, float (&x)[8]) {
    widen_chunk8<T>(raw, x);
    if (kIsKey) {
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = __fsub_rn(x[j], sKm[col + j]);
    }
  };

  // 1. Load (zeros past the end: neutral for the max) and per-row max |x|.
  uint4 raw[kQkMaxChunks];
#pragma unroll
  for (int i = 0; i < kQkMaxChunks; ++i) {
    if (i >= chunks) break;
    const int c = threadIdx.x + i * kQkThreads, row = c / lanes_per_row, col = (c % lanes_per_row) * 8;
    float amax = 0.0f;
    raw[i] = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + row < seq) {
      raw[i] = *reinterpret_cast<const uint4*>(gX + int64_t(row0 + row) * stride[2] + col);
      float x[8];
      values(raw[i], col, x);
#pragma unroll
      for (int j = 0; j < 8; ++j) amax = max_nan(amax, fabsf(x[j]));
    }
    for (int off = 1; off < lanes_per_row; off <<= 1)
      amax = max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (c % lanes_per_row == 0) sRowMax[row] = amax;
  }
  __syncthreads();

  // 2. One scale per group of rows (max is exact in any order, so the CPU's value).
  const int groups = kQuantTileRows / group_rows;
  for (int g = threadIdx.x; g < groups; g += kQkThreads) {
    float amax = 0.0f;
    for (int r = g * group_rows; r < (g + 1) * group_rows; ++r) amax = max_nan(amax, sRowMax[r]);
    const float s = int8_scale(amax);
    sScale[g] = s;
    if (row0 + g * group_rows < seq)
      (kIsKey ? p.k_scale : p.q_scale)[int64_t(bh) * (kIsKey ? p.k_groups : p.q_groups) +
                                       row0 / group_rows + g] = s;
  }
  __syncthreads();

  // 3. Codes, 8 bytes per chunk.
  int8_t* gOut = (kIsKey ? p.k8 : p.q8) + (int64_t(bh) * seq + row0) * D;
#pragma unroll
  for (int i = 0; i < kQkMaxChunks; ++i) {
    if (i >= chunks) break;
    const int c = threadIdx.x + i * kQkThreads, row = c / lanes_per_row, col = (c % lanes_per_row) * 8;
    if (row0 + row >= seq) continue;
    const float s = sScale[row / group_rows];
    float x[8];
    values(raw[i], col, x);
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; ++j)
      w[j / 4] |= uint32_t(uint8_t(int8_code(x[j], s))) << (8 * (j % 4));
    *reinterpret_cast<uint2*>(gOut + int64_t(row) * D + col) = make_uint2(w[0], w[1]);
  }
}

}  // namespace sparge::cuda
