// Stage 1's pooling fused into the quantization pass (sparse_attention's quantized calls): the
// Q/K kernel already holds a tile's rows in registers, so the pooled rows and self-similarities
// of the tile's blocks come from them instead of a second read of q and k (pool_sim.cuh does
// the same for calls that do not quantize). Definitions as pool_sim.cuh's, in double: per block
// of n valid rows, p = Σ x / n and s = ‖Σ x̂‖² / n² (x̂ = x/‖x‖, a zero or NaN-norm row adds no
// direction), x = k − km (km in double, QuantizeParams::km_pool) for keys; rows past the end add
// nothing. The sums run in another order than pool_sim.cuh's, so the doubles may differ in the
// last bits: masks agree except at exact ties, as they do with the CPU reference.
#pragma once

#include <cstdint>

#include "cuda/common/math.cuh"
#include "cuda/quantize/codes.cuh"
#include "cuda/quantize/params.h"

namespace sparge::cuda {

constexpr int kPoolWarps = kQuantQkThreads / 32;

// The cross-warp sums of pool_tile_blocks (one set per CTA, whichever instance runs).
template <int D>
struct PoolTileShared {
  double sum[kPoolWarps][D];
  double unit[kPoolWarps][D];
  double unit_sq[kPoolWarps];
};

// raw[i] holds tile row (threadIdx.x + i·kQuantQkThreads) / (D/8), channels from
// (threadIdx.x % (D/8))·8 (quantize_qk.cuh's layout). Called by every thread of the CTA; kTail:
// some rows of the tile lie past the sequence's end.
template <typename T, bool kIsKey, int kChunks, int D, bool kTail>
__device__ __forceinline__ void pool_tile_blocks_impl(const QuantizeParams& p, const uint4 (&raw)[kChunks],
                                                      int bh, int row0, int seq, PoolTileShared<D>& sh) {
  constexpr int kLanes = D / 8, kWarps = kPoolWarps;
  constexpr int kBlockRows = kIsKey ? kPoolKRows : kPoolQRows;
  constexpr int kSteps = kBlockRows / qk_rows_per_step(D);  // a block's chunks per thread
  constexpr int kBlocks = kQuantTileRows / kBlockRows;
  static_assert(kQuantQkThreads % kLanes == 0, "a thread's chunks share their channels");
  static_assert(kSteps * qk_rows_per_step(D) == kBlockRows && kSteps * kBlocks == kChunks,
                "blocks hold whole load steps");
  static_assert(kSteps <= kLanes, "each of a row's lanes finishes at most one row's norm");
  auto& sSum = sh.sum;
  auto& sUnit = sh.unit;
  auto& sUnitSq = sh.unit_sq;
  const int nblocks = kIsKey ? p.num_k_blocks : p.num_q_blocks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = (threadIdx.x % kLanes) * 8;
  // km of this thread's eight channels, in registers: read from shared memory per element, the
  // 64-byte stride between lanes made every read an 8-way bank conflict (the fused K kernel took
  // 2.3x the time of pooling and quantizing K apart).
  double km[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) km[e] = kIsKey ? p.km_pool[int64_t(bh) * D + col + e] : 0.0;
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
    const int first = row0 + j * kBlockRows;
    if (first >= seq) break;  // the same for the whole CTA
    const int n = min(seq - first, kBlockRows);
    // x of element e of the block's s-th chunk, in double; rows past the end are zero. Formed
    // where used (twice) rather than held: eight doubles per chunk would not fit two CTAs per SM.
    const auto x = [&](int s, int e) {
      const int i = j * kSteps + s;
      const double xe = double(widen8_at<T>(raw[i], e)) - km[e];
      if (!kTail) return xe;
      return row0 + (int(threadIdx.x) + i * kQuantQkThreads) / kLanes < seq ? xe : 0.0;
    };
    // 1. ‖x‖² of each row, summed over the row's kLanes adjacent lanes.
    double sq[kSteps];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      sq[s] = 0.0;
#pragma unroll
      for (int e = 0; e < 8; ++e) sq[s] = fma(x(s, e), x(s, e), sq[s]);
    }
#pragma unroll
    for (int off = 1; off < kLanes; off <<= 1)
#pragma unroll
      for (int s = 0; s < kSteps; ++s) sq[s] += __shfl_xor_sync(0xffffffffu, sq[s], off);
    // 2. One 1/‖x‖ per lane (lane r of a row's lanes takes its r-th row), then shared: a double
    // square root and division are long sequences, not worth repeating on every lane.
    double mine = 0.0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
      if (lane % kLanes == s) mine = sq[s];
    const double inv_mine = mine > 0.0 ? 1.0 / sqrt(mine) : 0.0;  // a zero or NaN norm: no direction
    // 3. The sums of x and x̂ over the thread's rows.
    double sum[8], unit[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) sum[e] = unit[e] = 0.0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const double inv_norm = __shfl_sync(0xffffffffu, inv_mine, (lane & ~(kLanes - 1)) | s);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const double xe = x(s, e);
        sum[e] += xe;
        unit[e] = fma(xe, inv_norm, unit[e]);
      }
    }
    // 4. Fixed order: the warp's rows (xor tree over lanes of the same channels), the warps in order.
#pragma unroll
    for (int off = kLanes; off < 32; off <<= 1)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sum[e] += __shfl_xor_sync(0xffffffffu, sum[e], off);
        unit[e] += __shfl_xor_sync(0xffffffffu, unit[e], off);
      }
    if (lane < kLanes)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sSum[warp][col + e] = sum[e];
        sUnit[warp][col + e] = unit[e];
      }
    __syncthreads();
    const int blk = first / kBlockRows;
    double unit_sq = 0.0;
    for (int d = threadIdx.x; d < D; d += kQuantQkThreads) {
      double s = 0.0, u = 0.0;
      for (int w = 0; w < kWarps; ++w) {
        s += sSum[w][d];
        u += sUnit[w][d];
      }
      unit_sq = fma(u, u, unit_sq);
      const double pooled = s / double(n);
      if (kIsKey)
        p.pooled_kt[(int64_t(bh) * D + d) * nblocks + blk] = pooled;
      else
        p.pooled_q[(int64_t(bh) * nblocks + blk) * D + d] = pooled;
    }
    unit_sq = warp_sum(unit_sq);
    if (lane == 0) sUnitSq[warp] = unit_sq;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0.0;
      for (int w = 0; w < kWarps; ++w) total += sUnitSq[w];
      (kIsKey ? p.sim_k : p.sim_q)[int64_t(bh) * nblocks + blk] = total / (double(n) * double(n));
    }
    __syncthreads();  // sSum and sUnit serve the next block
  }
}

// The tile's blocks pooled; a tile whose rows are all valid (every tile but a sequence's last)
// takes the instance without per-element row tests.
template <typename T, bool kIsKey, int kChunks, int D>
__device__ __forceinline__ void pool_tile_blocks(const QuantizeParams& p, const uint4 (&raw)[kChunks],
                                                 int bh, int row0, int seq) {
  __shared__ PoolTileShared<D> sh;
  if (row0 + kQuantTileRows <= seq)
    pool_tile_blocks_impl<T, kIsKey, kChunks, D, false>(p, raw, bh, row0, seq, sh);
  else
    pool_tile_blocks_impl<T, kIsKey, kChunks, D, true>(p, raw, bh, row0, seq, sh);
}

}  // namespace sparge::cuda
