// Stage 1, second half: the compressed score map S̃ = scale · p_q · p_kᵀ (estimate pooled; the
// sampled_rows estimate is sampled_rows.cuh), then per query block the distribution P̃ over the
// eligible key blocks (allowed by causality and the window, and similar): the softmax of S̃, or the sampled masses
// normalized over them; the TopCdf / TopK selection ranked by P̃ descending with ties to the
// lower index, the forced non-similar rows and columns, the sink column, and the ascending
// BlockMask row (docs/method.md, Stage 1, steps 3-7).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/predict/params.h"

namespace sparge::cuda {

constexpr int kSelectThreads = 256;
constexpr int kScoreThreads = 256;
constexpr int kScoreColsPerThread = 2;  // key blocks per thread: each p_q read from smem feeds both
constexpr int kScoreDimStep = 8;        // channels of p_k a thread loads before its first FMA

// Scores of kScoreRowsPerCta query blocks against every key block: grid (⌈nq/kScoreRowsPerCta⌉,
// batch·heads_q) into `scores`, or (kChunk, the long-row selection's chunks) grid (groups, 1,
// column slices): the CTA takes row group group0 + blockIdx.x (groups of kScoreRowsPerCta query
// blocks of one batch·head, ⌈nq/kScoreRowsPerCta⌉ per batch·head) and the key blocks of slice
// blockIdx.z (interleaved by kScoreThreads · kScoreColsPerThread), and mask row r (= bh · nq + i)
// goes to lr_scores[(r − chunk_row0) · nk]. The p_k loads of kScoreDimStep channels are issued
// together, so the FMA chains do not wait on one load each; each accumulator still sums
// d = 0 .. D−1 in order (whichever CTA forms a score, its bits are the same). Two instances, as
// the chunks' indexing costs the whole map's kernel a spill at its 128 registers.
template <bool kChunk>
__global__ void __launch_bounds__(kScoreThreads) compressed_scores(const PredictParams p,
                                                                   int group0,
                                                                   int64_t chunk_row0) {
  __shared__ __align__(16) double sQ[kScoreRowsPerCta][256];
  const int groups_per_bh = (p.num_q_blocks + kScoreRowsPerCta - 1) / kScoreRowsPerCta;
  const int group = group0 + int(blockIdx.x);  // kChunk
  const int bh = kChunk ? group / groups_per_bh : int(blockIdx.y);
  const int b = bh / p.heads_q, h = bh % p.heads_q;
  const int bhk = b * p.heads_kv + h / p.group;
  const int D = p.head_dim, nk = p.num_k_blocks;
  const int i0 = (kChunk ? group % groups_per_bh : int(blockIdx.x)) * kScoreRowsPerCta;
  const int rows = min(kScoreRowsPerCta, p.num_q_blocks - i0);
  for (int e = threadIdx.x; e < kScoreRowsPerCta * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    sQ[r][d] = r < rows ? p.pooled_q[(int64_t(bh) * p.num_q_blocks + i0 + r) * D + d] : 0.0;
  }
  __syncthreads();
  const int pitch = p.kt_pitch;
  const double* gKt = p.pooled_kt + int64_t(bhk) * D * pitch;
  double* out = kChunk ? p.lr_scores - chunk_row0 * nk : p.scores;
  constexpr int kColsPerPass = kScoreThreads * kScoreColsPerThread;
  const int slice = kChunk ? int(blockIdx.z) : 0, slices = kChunk ? int(gridDim.z) : 1;
  for (int j0 = threadIdx.x + slice * kColsPerPass; j0 < nk; j0 += slices * kColsPerPass) {
    int j[kScoreColsPerThread];
    bool ok[kScoreColsPerThread];
    double acc[kScoreColsPerThread][kScoreRowsPerCta];
#pragma unroll
    for (int c = 0; c < kScoreColsPerThread; ++c) {
      j[c] = j0 + c * kScoreThreads;
      ok[c] = j[c] < nk;
#pragma unroll
      for (int r = 0; r < kScoreRowsPerCta; ++r) acc[c][r] = 0.0;
    }
    int d = 0;
    for (; d + kScoreDimStep <= D; d += kScoreDimStep) {
      double kv[kScoreColsPerThread][kScoreDimStep];
#pragma unroll
      for (int c = 0; c < kScoreColsPerThread; ++c)
#pragma unroll
        for (int i = 0; i < kScoreDimStep; ++i)
          kv[c][i] = ok[c] ? gKt[int64_t(d + i) * pitch + j[c]] : 0.0;
#pragma unroll
      for (int i = 0; i < kScoreDimStep; i += 2)
#pragma unroll
        for (int r = 0; r < kScoreRowsPerCta; ++r) {
          const double2 q = *reinterpret_cast<const double2*>(&sQ[r][d + i]);
#pragma unroll
          for (int c = 0; c < kScoreColsPerThread; ++c) {
            acc[c][r] += q.x * kv[c][i];
            acc[c][r] += q.y * kv[c][i + 1];
          }
        }
    }
    for (; d < D; ++d)  // head_dim % kScoreDimStep channels
#pragma unroll
      for (int c = 0; c < kScoreColsPerThread; ++c) {
        const double kv = ok[c] ? gKt[int64_t(d) * pitch + j[c]] : 0.0;
#pragma unroll
        for (int r = 0; r < kScoreRowsPerCta; ++r) acc[c][r] += sQ[r][d] * kv;
      }
#pragma unroll
    for (int c = 0; c < kScoreColsPerThread; ++c)
#pragma unroll
      for (int r = 0; r < kScoreRowsPerCta; ++r)
        if (ok[c] && r < rows)
          out[(int64_t(bh) * p.num_q_blocks + i0 + r) * nk + j[c]] = p.scale * acc[c][r];
  }
}

// Block-wide reduction / exclusive scan over kSelectThreads threads; `scratch` holds 32 values.
template <typename V, typename Op>
__device__ V block_reduce(V x, V* scratch, Op op) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int off = 16; off > 0; off >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, off));
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  V r = scratch[0];
  for (int w = 1; w < kSelectThreads / 32; ++w) r = op(r, scratch[w]);
  return r;
}

template <typename V>
__device__ V block_exclusive_scan(V x, V* scratch, V* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  V inc = x;
  for (int off = 1; off < 32; off <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, inc, off);
    if (lane >= off) inc += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  V before = V(0), all = V(0);
  for (int w = 0; w < kSelectThreads / 32; ++w) {
    if (w < warp) before += scratch[w];
    all += scratch[w];
  }
  *total = all;
  return before + inc - x;
}

// Bitonic sort of slots [0, len) (len a power of two, every thread of the CTA): P̃ descending,
// ties to the lower key block; slots of -1 (not eligible) sink to the end. The order is total
// (key blocks are distinct), so the sorted slots do not depend on how they are sorted.
__device__ __forceinline__ void sort_ranked(double* sProb, int* sIdx, int len) {
  for (int k = 2; k <= len; k <<= 1)
    for (int jj = k >> 1; jj > 0; jj >>= 1) {
      for (int a = threadIdx.x; a < len; a += kSelectThreads) {
        const int c = a ^ jj;
        if (c <= a) continue;
        const bool a_after_c = sProb[a] < sProb[c] || (sProb[a] == sProb[c] && sIdx[a] > sIdx[c]);
        const bool ascending_run = (a & k) == 0;
        if (ascending_run == a_after_c) {
          const double tp = sProb[a]; sProb[a] = sProb[c]; sProb[c] = tp;
          const int ti = sIdx[a]; sIdx[a] = sIdx[c]; sIdx[c] = ti;
        }
      }
      __syncthreads();
    }
}

// The ranking of mask row (i, bh) (both the selection and the error target's kernel call it):
// sProb = P̃ over the eligible columns (allowed and similar), −1 elsewhere, sorted descending with
// ties to the lower key block, sIdx the key block of each slot; sForced[j] (j < nk) = allowed
// and not similar (query or key block), the gate's tiles. Returns the number of eligible
// columns, 0 when nothing is selectable (none, or a zero total of sampled masses). Uniform over
// the CTA; ends with a barrier.
__device__ int rank_row(const PredictParams& p, int i, int bh, int sort_len, double* sProb,
                        int* sIdx, int* sForced, double* sScratchD, int* sScratchI) {
  const int b = bh / p.heads_q, h = bh % p.heads_q;
  const int bhk = b * p.heads_kv + h / p.group;
  const int nk = p.num_k_blocks;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  const detail::BlockRange range = visible_key_blocks(p, i, b);
  const int begin = int(range.begin), end = int(range.end);
  const float theta = p.sim_threshold[p.per_head ? h : 0];
  const bool q_similar = p.sim_q[row] > double(theta);  // NaN compares false: non-similar
  const double* gScores = p.scores + row * nk;

  // Eligible columns: visible (causal, window, key padding) and similar. Non-similar ones are
  // forced on.
  double local_max = -INFINITY;
  int local_eligible = 0;
  for (int j = threadIdx.x; j < sort_len; j += kSelectThreads) {
    const bool in_range = j >= begin && j < end && !tile_hidden(p, b, h, i, j);
    const bool k_similar = in_range && p.sim_k[int64_t(bhk) * p.kt_pitch + j] > double(theta);
    sIdx[j] = j;
    sProb[j] = k_similar ? gScores[j] : -INFINITY;
    if (k_similar) {
      local_max = fmax(local_max, sProb[j]);
      ++local_eligible;
    }
    if (j < nk) sForced[j] = in_range && (!k_similar || !q_similar);
  }
  const auto max_op = [](double a, double b) { return fmax(a, b); };
  const auto sum_op = [](double a, double b) { return a + b; };
  const double row_max = block_reduce(local_max, sScratchD, max_op);
  const int eligible = block_reduce(local_eligible, sScratchI, [](int a, int b) { return a + b; });

  // Eligible weights: exp(S̃ − max) (pooled) or the sampled rows' mass; P̃ = weight / Σ weights.
  // A zero total (sampled rows only: every eligible weight underflowed) selects nothing.
  double denom = 0.0;
  if (eligible > 0) {
    double local_sum = 0.0;
    for (int j = threadIdx.x; j < sort_len; j += kSelectThreads) {
      const double w = p.sampled_rows ? sProb[j] : exp(sProb[j] - row_max);
      const double e = sProb[j] == -INFINITY ? -1.0 : w;
      sProb[j] = e;
      if (e >= 0.0) local_sum += e;
    }
    denom = block_reduce(local_sum, sScratchD, sum_op);
  }
  if (eligible == 0 || denom == 0.0) {
    __syncthreads();
    return 0;
  }
  for (int j = threadIdx.x; j < sort_len; j += kSelectThreads)
    if (sProb[j] >= 0.0) sProb[j] /= denom;
  __syncthreads();
  sort_ranked(sProb, sIdx, sort_len);
  return eligible;
}

// The number of ranks TopK keeps: max(1, ⌊κ·allowed⌋).
__device__ __forceinline__ int64_t topk_keep_count(double select, int allowed) {
  return max(int64_t(1), int64_t(floor(double(select) * double(allowed))));
}

// One chunk of the keep rule: thread t holds rank `rank` (prob < 0: not eligible, or past the
// ranked slots) and its key block; `carry` is the mass of the ranks before the chunk and gains
// the chunk's. TopCdf keeps a rank iff the mass before it is < τ, TopK iff it is one of the first
// topk_keep; set_kept(idx) records a kept one. The same chunks of kSelectThreads ranks from rank
// 0 give the same sums, whichever kernel walks them. Uniform over the CTA.
template <typename SetKept>
__device__ __forceinline__ void keep_chunk(const PredictParams& p, double select,
                                           int64_t topk_keep, int64_t rank, double prob, int idx,
                                           double& carry, SetKept set_kept, double* sScratchD) {
  double chunk_total;
  const double before =
      carry + block_exclusive_scan(prob >= 0.0 ? prob : 0.0, sScratchD, &chunk_total);
  carry += chunk_total;
  if (prob >= 0.0) {
    const bool kept = p.topk ? rank < topk_keep : before < select;
    if (kept) set_kept(idx);
  }
}

// The keep rule over a ranked row (P̃ descending; prob_at(t) < 0: not eligible), slots
// [0, len) in chunks of kSelectThreads (keep_chunk): TopCdf keeps rank t iff the mass before it
// is < τ (the block reaching τ is kept; if the total stays below τ, all are kept), TopK the first
// max(1, ⌊κ·allowed⌋) ranks; keep[idx_at(t)] = 1 for each. Uniform over the CTA.
template <typename ProbAt, typename IdxAt>
__device__ __forceinline__ void keep_ranked(const PredictParams& p, double select, int allowed,
                                            int len, ProbAt prob_at, IdxAt idx_at, int* keep,
                                            double* sScratchD) {
  const int64_t topk_keep = topk_keep_count(select, allowed);
  double carry = 0.0;
  for (int base = 0; base < len; base += kSelectThreads) {
    const int t = base + threadIdx.x;
    const double prob = prob_at(t);
    keep_chunk(p, select, topk_keep, t, prob, prob >= 0.0 ? idx_at(t) : 0, carry,
               [&](int j) { keep[j] = 1; }, sScratchD);
  }
}

// The sink, then the ascending compaction of the keep flags (kept_at(j)) of [begin, end) into
// mask row `row` (row = bh · nq + i), without the tiles a dense mask hides wholly; set_sink()
// keeps key block 0.
template <typename KeptAt, typename SetSink>
__device__ __forceinline__ void write_mask_row(const PredictParams& p, int64_t row, int begin,
                                               int end, KeptAt kept_at, SetSink set_sink,
                                               int* sScratchI) {
  __syncthreads();
  if (p.attention_sink && begin == 0 && end > 0 && threadIdx.x == 0) set_sink();
  __syncthreads();
  const int bh = int(row / p.num_q_blocks), i = int(row % p.num_q_blocks);
  const int b = bh / p.heads_q, h = bh % p.heads_q;
  const MaskRowOut out(p, row);
  int written = 0;
  for (int base = begin; base < end; base += kSelectThreads) {
    const int j = base + threadIdx.x;
    const int flag = j < end && !tile_hidden(p, b, h, i, j) ? int(kept_at(j)) : 0;
    int chunk_total;
    const int pos = written + block_exclusive_scan(flag, sScratchI, &chunk_total);
    if (flag) out.put(pos, j);
    written += chunk_total;
  }
  if (threadIdx.x == 0) out.finish(p, row, written);
}

// One CTA per mask row: grid (nq, batch·heads_q); dynamic smem = sort_len · 16 bytes.
__global__ void __launch_bounds__(kSelectThreads) select_blocks(const PredictParams p, int sort_len) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* sProb = reinterpret_cast<double*>(smem_raw);      // P̃, -1 for ineligible
  int* sIdx = reinterpret_cast<int*>(sProb + sort_len);      // key block of each sort slot
  int* sKeep = sIdx + sort_len;                               // final mask row as 0/1 flags
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];

  const int i = blockIdx.x, bh = blockIdx.y, h = bh % p.heads_q;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  // Kept tiles come from the visible ones; top-k's count is a fraction of the band's allowed
  // tiles, padding included (as the CPU's keep_length).
  const detail::BlockRange range = visible_key_blocks(p, i, bh / p.heads_q);
  const int begin = int(range.begin), end = int(range.end);
  const int allowed = int(
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k).size());
  // The error target's τ for this head (error_target.cuh), > 1: every allowed tile is kept.
  const double select =
      p.error_target ? p.head_tau[bh] : double(p.select_value[p.per_head ? h : 0]);

  const int eligible = rank_row(p, i, bh, sort_len, sProb, sIdx, sKeep, sScratchD, sScratchI);
  if (p.stat_forced != nullptr) {  // the gate's tiles, before the selection adds its own
    int local = 0;
    for (int j = begin + threadIdx.x; j < end; j += kSelectThreads) local += sKeep[j];
    const int forced = block_reduce(local, sScratchI, [](int a, int b) { return a + b; });
    if (threadIdx.x == 0 && forced > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(p.stat_forced + bh),
                static_cast<unsigned long long>(forced));
  }
  if (p.error_target && select > 1.0) {
    for (int j = begin + threadIdx.x; j < end; j += kSelectThreads) sKeep[j] = 1;
  } else if (eligible > 0) {
    keep_ranked(p, select, allowed, sort_len, [&](int t) { return sProb[t]; },
                [&](int t) { return sIdx[t]; }, sKeep, sScratchD);
  }
  write_mask_row(p, row, begin, end, [&](int j) { return sKeep[j]; }, [&] { sKeep[0] = 1; },
                 sScratchI);
}

// The mask when the selection keeps every visible tile (PredictParams::keep_every_tile): each
// row lists its visible key blocks. Grid (nq, batch·heads_q), kSelectThreads threads.
__global__ void __launch_bounds__(kSelectThreads) keep_visible_tiles(const PredictParams p) {
  const int i = blockIdx.x, bh = blockIdx.y;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  const detail::BlockRange range = visible_key_blocks(p, i, bh / p.heads_q);
  const MaskRowOut out(p, row);
  for (int j = int(range.begin) + threadIdx.x; j < int(range.end); j += kSelectThreads)
    out.put(j - range.begin, j);
  if (threadIdx.x == 0) out.finish(p, row, range.size());
}

}  // namespace sparge::cuda
