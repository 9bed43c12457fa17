// Stage 1's selection with one warp per mask row, for rows of at most kWarpSelectMaxBlocks key
// blocks (N <= 32K at block_k 64): the same rule as select_blocks (topcdf.cuh: eligible = visible
// and similar, P̃ the softmax of S̃ or the normalized sampled masses, ranked descending with ties
// to the lower key block; TopCdf keeps a rank while the mass before it is < τ, TopK the first
// max(1, ⌊κ·allowed⌋) ranks; forced non-similar tiles, the sink, the error target's τ), computed
// in registers: each lane holds kPerLane of the row's P̃ and the bitonic network runs on them
// (in-register exchanges while partners share a lane, shuffles across lanes), with no block
// barrier. select_blocks spent 437 us at N 32K, H 32 (8192 rows of 512) on its shared-memory
// network, 45 barrier-separated steps of 256 threads per row, bound by instruction issue.
// P̃ that is not a number (NaN scores) ranks with the ineligible, after every eligible block.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/predict/params.h"

namespace sparge::cuda {

constexpr int kWarpSelectMaxBlocks = 512;  // 16 P̃ per lane
constexpr int kWarpSelectRows = 4;         // mask rows (warps) per CTA

// Whether slot (pa, ia) ranks before slot (pb, ib): larger P̃ first, ties to the lower key block.
__device__ __forceinline__ bool ranks_before(double pa, int ia, double pb, int ib) {
  return pa > pb || (pa == pb && ia < ib);
}

// Sorts the warp's 32·kPerLane slots into rank order, slot s = lane·kPerLane + r. The merge
// steps k run as a loop and only the exchanges inside a lane (partners r and r ^ jj, jj <
// kPerLane) are unrolled: the fully unrolled network (~45 steps × 16 slots) overflowed the
// instruction cache (ncu: "no instruction" was the first stall reason at 16 slots per lane).
template <int kPerLane>
__device__ __forceinline__ void warp_rank_sort(double (&prob)[kPerLane], int (&idx)[kPerLane]) {
  constexpr int kSlots = 32 * kPerLane;
  const int lane = threadIdx.x % 32;
#pragma unroll 1
  for (int k = 2; k <= kSlots; k <<= 1) {
    // Partners in lane ^ (jj / kPerLane), same register.
#pragma unroll 1
    for (int jj = k >> 1; jj >= kPerLane; jj >>= 1) {
      const int lane_bit = jj / kPerLane;
      const bool lower = (lane & lane_bit) == 0;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        const double other_p = __shfl_xor_sync(0xffffffffu, prob[r], lane_bit);
        const int other_i = __shfl_xor_sync(0xffffffffu, idx[r], lane_bit);
        const bool in_order_run = ((lane * kPerLane + r) & k) == 0;  // best first, else last
        const bool mine_first = ranks_before(prob[r], idx[r], other_p, other_i);
        if (mine_first != (lower == in_order_run)) {
          prob[r] = other_p;
          idx[r] = other_i;
        }
      }
    }
    // Partners r and r ^ jj of this lane, jj < min(k, kPerLane).
#pragma unroll
    for (int jj = kPerLane >> 1; jj > 0; jj >>= 1) {
      if (jj >= k) continue;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        if (r & jj) continue;
        const int rr = r | jj;
        const bool in_order_run = ((lane * kPerLane + r) & k) == 0;
        const bool swap = in_order_run ? ranks_before(prob[rr], idx[rr], prob[r], idx[r])
                                       : ranks_before(prob[r], idx[r], prob[rr], idx[rr]);
        if (swap) {
          const double tp = prob[r];
          prob[r] = prob[rr];
          prob[rr] = tp;
          const int ti = idx[r];
          idx[r] = idx[rr];
          idx[rr] = ti;
        }
      }
    }
  }
}

__device__ __forceinline__ double warp_max_double(double x) {
  for (int off = 16; off > 0; off >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ int warp_sum_int(int x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Grid (⌈nq / kWarpSelectRows⌉, batch·heads_q), kWarpSelectRows warps; kPerLane = the row's
// slots (nk rounded up to a power of two, at least 32) / 32.
template <int kPerLane>
__global__ void __launch_bounds__(kWarpSelectRows * 32) select_blocks_warp(const PredictParams p) {
  __shared__ uint8_t sKeep[kWarpSelectRows][32 * kPerLane];  // the row's kept flags, by key block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarpSelectRows + warp;
  if (i >= p.num_q_blocks) return;  // a whole warp; nothing below waits on other warps
  const int bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q;
  const int bhk = b * p.heads_kv + h / p.group;
  const int nk = p.num_k_blocks;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  uint8_t* keep = sKeep[warp];
  // As select_blocks: kept tiles come from the visible ones; top-k's count is a fraction of the
  // band's allowed tiles, padding included.
  const detail::BlockRange range = visible_key_blocks(p, i, b);
  const int begin = int(range.begin), end = int(range.end);
  const int allowed = int(detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k).size());
  const double select = p.error_target ? p.head_tau[bh] : double(p.select_value[p.per_head ? h : 0]);
  const float theta = p.sim_threshold[p.per_head ? h : 0];
  const bool q_similar = p.sim_q[row] > double(theta);  // NaN compares false: non-similar
  const double* gScores = p.scores + row * nk;

  // 1. Eligible columns (visible and similar) with their scores; the gate forces the rest of
  // the visible ones. Column j = r·32 + lane (coalesced loads); the sort reorders anyway.
  double prob[kPerLane];
  int idx[kPerLane];
  double local_max = -INFINITY;
  int local_eligible = 0, local_forced = 0;
  const double* sim_k = p.sim_k + int64_t(bhk) * p.kt_pitch;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int j = r * 32 + lane;
    const bool in_range = j >= begin && j < end && !tile_hidden(p, b, h, i, j);
    const bool k_similar = in_range && sim_k[j] > double(theta);
    prob[r] = k_similar ? gScores[j] : -INFINITY;
    idx[r] = j;
    if (k_similar) {
      local_max = fmax(local_max, prob[r]);
      ++local_eligible;
    }
    const bool forced = in_range && (!k_similar || !q_similar);
    keep[j] = forced;
    local_forced += forced;
  }
  const double row_max = warp_max_double(local_max);
  const int eligible = warp_sum_int(local_eligible);
  if (p.stat_forced != nullptr) {  // the gate's tiles, before the selection adds its own
    const int forced = warp_sum_int(local_forced);
    if (lane == 0 && forced > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(p.stat_forced + bh), static_cast<unsigned long long>(forced));
  }
  __syncwarp();

  if (p.error_target && select > 1.0) {
    for (int j = begin + lane; j < end; j += 32) keep[j] = 1;
  } else if (eligible > 0) {
    // 2. Weights exp(S̃ − max) (pooled) or the sampled masses; P̃ = weight / Σ weights; −1 for
    // the ineligible (and for a weight that is not a number, so that it ranks last).
    double local_sum = 0.0;
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const double w = p.sampled_rows ? prob[r] : exp(prob[r] - row_max);
      prob[r] = prob[r] == -INFINITY ? -1.0 : w;
      if (prob[r] >= 0.0) local_sum += prob[r];
    }
    const double denom = warp_sum(local_sum);
    if (denom != 0.0) {  // a zero total (sampled rows whose masses all underflowed) selects nothing
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) prob[r] = prob[r] >= 0.0 ? prob[r] / denom : -1.0;
      warp_rank_sort<kPerLane>(prob, idx);
      // 3. Rank t = lane·kPerLane + r. TopK: the first max(1, ⌊κ·allowed⌋). TopCdf: the mass
      // before t, from this lane's slots in order and the lanes before it, is < τ.
      const int64_t topk_keep = max(int64_t(1), int64_t(floor(select * double(allowed))));
      double lane_total = 0.0;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) lane_total += prob[r] >= 0.0 ? prob[r] : 0.0;
      double inclusive = lane_total;
      for (int off = 1; off < 32; off <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, inclusive, off);
        if (lane >= off) inclusive += y;
      }
      double before = inclusive - lane_total;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        const int t = lane * kPerLane + r;
        if (prob[r] >= 0.0 && (p.topk ? t < topk_keep : before < select)) keep[idx[r]] = 1;
        before += prob[r] >= 0.0 ? prob[r] : 0.0;
      }
    }
  }
  __syncwarp();
  if (p.attention_sink && begin == 0 && end > 0 && lane == 0) keep[0] = 1;
  __syncwarp();

  // 4. Ascending compaction of the kept flags into the mask row.
  const MaskRowOut out(p, row);
  int written = 0;
  for (int base = begin; base < end; base += 32) {
    const int j = base + lane;
    const bool flag = j < end && keep[j] && !tile_hidden(p, b, h, i, j);  // the sink, keep-all
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (flag) out.put(written + __popc(ballot & ((1u << lane) - 1u)), j);
    written += __popc(ballot);
  }
  if (lane == 0) out.finish(p, row, written);
}

}  // namespace sparge::cuda
