// Stage 1's selection for mask rows longer than one CTA sorts in shared memory (uses_long_rows:
// more than kMaxSortedKeyBlocks key blocks, e.g. 16384 at 1M keys and block_k 64). Rows are
// taken in chunks of lr_chunk_rows, so the scratch grows with one chunk's rows times the key
// blocks, not with the whole map:
//   long_row_probs   P̃ of each row into the workspace: S̃ from the pooled blocks (the
//                    compressed_scores arithmetic), the eligibility and softmax of rank_row;
//   a segmented stable sort (CUB), P̃ descending, equal values keeping ascending key blocks:
//                    the order of rank_row's bitonic sort;
//   long_row_select  select_blocks' keep rule on the sorted row (the same chunked scans), the
//                    forced tiles, the sink, the ascending compaction into the mask row.
// Every value is formed as in the shared-memory path (the same reductions over the same
// threads, the same scans), so the two give the same mask bit for bit; SPARGE_CUDA_LONG_ROWS=1
// sends short rows here too, which is how the GPU test compares them. Pooled estimate only.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/predict/params.h"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {

// Mask row row0 + blockIdx.x (over batch·heads_q·nq) of a chunk: its batch·head and query block,
// head, KV head, visible key blocks and the gate's threshold.
struct LongRow {
  int64_t row;
  int bh, i, b, h, bhk, begin, end;
  float theta;
  __device__ LongRow(const PredictParams& p, int64_t row0) : row(row0 + blockIdx.x) {
    bh = int(row / p.num_q_blocks), i = int(row % p.num_q_blocks);
    b = bh / p.heads_q, h = bh % p.heads_q;
    bhk = b * p.heads_kv + h / p.group;
    const detail::BlockRange range = visible_key_blocks(p, i, b);
    begin = int(range.begin), end = int(range.end);
    theta = p.sim_threshold[p.per_head ? h : 0];
  }
};

// One CTA (kSelectThreads) per row of the chunk.
__global__ void __launch_bounds__(kSelectThreads) long_row_probs(const PredictParams p,
                                                                 int64_t row0) {
  __shared__ __align__(16) double sQ[256];
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];
  const LongRow r(p, row0);
  const int64_t row = r.row;
  const int bhk = r.bhk, begin = r.begin, end = r.end;
  const float theta = r.theta;
  const int nk = p.num_k_blocks, D = p.head_dim;
  double* prob = p.lr_prob_in + int64_t(blockIdx.x) * nk;
  int* idx = p.lr_idx_in + int64_t(blockIdx.x) * nk;
  for (int d = threadIdx.x; d < D; d += kSelectThreads) sQ[d] = p.pooled_q[row * D + d];
  __syncthreads();

  // S̃ of the eligible columns (visible and similar), as compressed_scores forms it: the
  // channels summed in order, then the scale. Others: -inf.
  const double* gKt = p.pooled_kt + int64_t(bhk) * D * nk;
  double local_max = -INFINITY;
  int local_eligible = 0;
  for (int j = threadIdx.x; j < nk; j += kSelectThreads) {
    const bool k_similar = j >= begin && j < end && !tile_hidden(p, r.b, r.h, r.i, j) &&
                           p.sim_k[int64_t(bhk) * nk + j] > double(theta);
    double s = -INFINITY;
    if (k_similar) {
      double acc = 0.0;
      for (int d = 0; d < D; ++d) acc += sQ[d] * gKt[int64_t(d) * nk + j];
      s = p.scale * acc;
      local_max = fmax(local_max, s);
      ++local_eligible;
    }
    prob[j] = s;
    idx[j] = j;
  }
  const auto max_op = [](double a, double c) { return fmax(a, c); };
  const auto sum_op = [](double a, double c) { return a + c; };
  const double row_max = block_reduce(local_max, sScratchD, max_op);
  const int eligible = block_reduce(local_eligible, sScratchI, [](int a, int c) { return a + c; });

  // P̃ = exp(S̃ − max) / Σ over the eligible columns, -1 elsewhere (rank_row's values).
  double denom = 0.0;
  if (eligible > 0) {
    double local_sum = 0.0;
    for (int j = threadIdx.x; j < nk; j += kSelectThreads) {
      const double e = prob[j] == -INFINITY ? -1.0 : exp(prob[j] - row_max);
      prob[j] = e;
      if (e >= 0.0) local_sum += e;
    }
    denom = block_reduce(local_sum, sScratchD, sum_op);
  }
  const bool selectable = eligible > 0 && denom != 0.0;
  for (int j = threadIdx.x; j < nk; j += kSelectThreads)
    prob[j] = !selectable ? -1.0 : prob[j] >= 0.0 ? prob[j] / denom : prob[j];
  if (threadIdx.x == 0) p.lr_state[blockIdx.x] = selectable ? eligible : 0;
}

// One CTA per row of the chunk, after the sort: the keep rule, the gate's tiles, the sink, the
// ascending mask row (select_blocks' second half, reading the sorted row from the workspace).
__global__ void __launch_bounds__(kSelectThreads) long_row_select(const PredictParams p,
                                                                  int64_t row0) {
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];
  const LongRow r(p, row0);
  const int64_t row = r.row;
  const int bh = r.bh, bhk = r.bhk, begin = r.begin, end = r.end;
  const float theta = r.theta;
  const int nk = p.num_k_blocks;
  const int allowed = int(
      detail::allowed_key_blocks(r.i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k).size());
  const double select = double(p.select_value[p.per_head ? r.h : 0]);
  const bool q_similar = p.sim_q[row] > double(theta);  // NaN compares false: non-similar
  const double* prob = p.lr_prob_out + int64_t(blockIdx.x) * nk;
  const int* idx = p.lr_idx_out + int64_t(blockIdx.x) * nk;
  int* keep = p.lr_keep + int64_t(blockIdx.x) * nk;

  // The gate's tiles: visible and not similar (query or key block).
  int local_forced = 0;
  for (int j = threadIdx.x; j < nk; j += kSelectThreads) {
    const bool in_range = j >= begin && j < end && !tile_hidden(p, r.b, r.h, r.i, j);
    const bool k_similar = in_range && p.sim_k[int64_t(bhk) * nk + j] > double(theta);
    keep[j] = in_range && (!k_similar || !q_similar);
    local_forced += keep[j];
  }
  if (p.stat_forced != nullptr) {
    const int forced = block_reduce(local_forced, sScratchI, [](int a, int c) { return a + c; });
    if (threadIdx.x == 0 && forced > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(p.stat_forced + bh),
                static_cast<unsigned long long>(forced));
  }
  __syncthreads();  // keep[] is written by other threads below
  if (p.lr_state[blockIdx.x] > 0)
    keep_ranked(p, select, allowed, nk, [&](int t) { return t < nk ? prob[t] : -1.0; },
                [&](int t) { return idx[t]; }, keep, sScratchD);
  write_mask_row(p, row, begin, end, keep, sScratchI);
}

// Segment offsets r · nk for r = 0 .. rows (the sort's begin and end iterators).
__global__ void long_row_offsets(const PredictParams p) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r <= p.lr_chunk_rows;
       r += gridDim.x * blockDim.x)
    p.lr_offsets[r] = int64_t(r) * p.num_k_blocks;
}

}  // namespace sparge::cuda
