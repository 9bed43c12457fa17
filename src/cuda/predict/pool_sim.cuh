// Stage 1, first half: the key mean km and, per block of BQ (q) or BK (smoothed k) rows, the
// pooled row p = Σ rows / n and the self-similarity s = ‖Σ x̂_r‖² / n² over the block's n valid
// rows (x̂ = x/‖x‖, a zero row stays zero). Everything is accumulated in double, as in the CPU
// reference, so that masks agree except at exact ties. One pass over q and two over k.
#pragma once

#include <cstdint>

#include "cuda/common/math.cuh"
#include "cuda/predict/params.h"

namespace sparge::cuda {

constexpr int kPoolThreads = 128;  // 4 warps, each owning every 4th row of the block
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256

// Partial key sums over chunks of kKeyMeanChunk tokens: grid (chunks, batch·heads_kv).
template <typename T>
__global__ void key_mean_partial(const PredictParams p) {
  const int bh = blockIdx.y, b = bh / p.heads_kv, hk = bh % p.heads_kv;
  const int chunks = gridDim.x;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const int t0 = blockIdx.x * kKeyMeanChunk;
  const int t1 = min(p.seq_k, t0 + kKeyMeanChunk);
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    double sum = 0.0;
    for (int t = t0; t < t1; ++t) sum += double(to_float(gK[int64_t(t) * p.k_stride[2] + d]));
    p.km_partial[(int64_t(bh) * chunks + blockIdx.x) * p.head_dim + d] = sum;
  }
}

// km = Σ partials / Nk in a fixed order (runs are bit-reproducible): grid (batch·heads_kv).
__global__ void key_mean_finalize(const PredictParams p, int chunks) {
  const int bh = blockIdx.x;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    double sum = 0.0;
    for (int c = 0; c < chunks; ++c) sum += p.km_partial[(int64_t(bh) * chunks + c) * p.head_dim + d];
    p.km[int64_t(bh) * p.head_dim + d] = sum / double(p.seq_k);
  }
}

// Pool one block: grid (blocks, batch·heads). kIsKey: subtract km and write the pooled row
// transposed ([D][nk]) for the score kernel.
template <typename T, bool kIsKey>
__global__ void __launch_bounds__(kPoolThreads) pool_blocks(const PredictParams p) {
  __shared__ double sSum[kPoolThreads / 32][256];
  __shared__ double sUnit[kPoolThreads / 32][256];
  __shared__ double sNorm[kPoolThreads / 32];
  const int heads = kIsKey ? p.heads_kv : p.heads_q;
  const int block_rows = kIsKey ? p.block_k : p.block_q;
  const int seq = kIsKey ? p.seq_k : p.seq_q;
  const int nblocks = kIsKey ? p.num_k_blocks : p.num_q_blocks;
  const int blk = blockIdx.x, bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int64_t* stride = kIsKey ? p.k_stride : p.q_stride;
  const T* gX = static_cast<const T*>(kIsKey ? p.k : p.q) + b * stride[0] + h * stride[1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blk * block_rows;
  const int n = min(seq - row0, block_rows);

  double mean[kMaxDimPerLane], sum[kMaxDimPerLane], unit[kMaxDimPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimPerLane; ++i) {
    const int d = lane + 32 * i;
    mean[i] = (kIsKey && d < p.head_dim) ? p.km[int64_t(bh) * p.head_dim + d] : 0.0;
    sum[i] = unit[i] = 0.0;
  }
  for (int r = warp; r < n; r += kPoolThreads / 32) {
    const T* row = gX + int64_t(row0 + r) * stride[2];
    double x[kMaxDimPerLane], sq = 0.0;
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      const int d = lane + 32 * i;
      x[i] = d < p.head_dim ? double(to_float(row[d])) - mean[i] : 0.0;
      sq += x[i] * x[i];
    }
    sq = warp_sum(sq);
    const double inv_norm = sq > 0.0 ? 1.0 / sqrt(sq) : 0.0;
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      sum[i] += x[i];
      unit[i] += x[i] * inv_norm;
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxDimPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < 256) {
      sSum[warp][d] = sum[i];
      sUnit[warp][d] = unit[i];
    }
  }
  __syncthreads();
  // Threads of warp 0 combine the warps' partials channel by channel, then ‖Σ x̂‖².
  if (warp == 0) {
    double unit_sq = 0.0;
    for (int d = lane; d < p.head_dim; d += 32) {
      double s = 0.0, u = 0.0;
      for (int w = 0; w < kPoolThreads / 32; ++w) {
        s += sSum[w][d];
        u += sUnit[w][d];
      }
      unit_sq += u * u;
      const double pooled = s / double(n);
      if (kIsKey)
        p.pooled_kt[(int64_t(bh) * p.head_dim + d) * nblocks + blk] = pooled;
      else
        p.pooled_q[(int64_t(bh) * nblocks + blk) * p.head_dim + d] = pooled;
    }
    unit_sq = warp_sum(unit_sq);
    if (lane == 0) sNorm[0] = unit_sq / (double(n) * double(n));
  }
  __syncthreads();
  if (threadIdx.x == 0) (kIsKey ? p.sim_k : p.sim_q)[int64_t(bh) * nblocks + blk] = sNorm[0];
}

}  // namespace sparge::cuda
