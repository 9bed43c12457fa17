// Stage 1, estimate sampled_rows: per query block, the exact softmax rows of a few evenly spaced
// query rows (detail::sampled_row), summed per key block and averaged over the rows, written
// where the pooled mode writes its compressed scores (PredictParams::scores); select_blocks then
// takes them as the eligible columns' weights (docs/method.md, Stage 1, step 4).
//
// One CTA per (query block, batch·query head). The sampled rows are taken kEstimateRows at a time
// from shared memory. Pass 1: each thread walks keys with an online (max, sum) per row, merged
// over the CTA in a fixed order. Pass 2: one warp per key block recomputes its scores and sums
// exp(score − max) / sum over the keys each row sees; lane 0 accumulates the block's entry, so
// every entry has one writer and a fixed summation order (runs are bit-reproducible). Scores
// are recomputed rather than stored: a row has seq_k of them, more than shared memory holds.
// Everything is in double, as in the CPU reference (src/cpu/predict.cc). A dense attention mask
// (PredictParams::attn_mask.data) joins the scores: a pair it hides is not seen, a value is added
// (natural-log units), so the rows are those Stage 2 computes.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/predict/params.h"

namespace sparge::cuda {

constexpr int kEstimateThreads = 256;
constexpr int kEstimateWarps = kEstimateThreads / 32;
// Sampled rows per pass: the default sample_rows (8 spilled registers on sm_80 and sm_90a).
constexpr int kEstimateRows = 4;

// Online-softmax state (running max m, sum z of exp(x − m)) of two disjoint sets of scores.
__device__ __forceinline__ void merge_max_sum(double* m, double* z, double m2, double z2) {
  const double mx = fmax(*m, m2);
  if (mx == -INFINITY) return;  // both empty
  *z = (*m == -INFINITY ? 0.0 : *z * exp(*m - mx)) + (m2 == -INFINITY ? 0.0 : z2 * exp(m2 - mx));
  *m = mx;
}

// scale · q_r · k_c for the pass's rows r < rows, in double (q rows in shared memory).
template <typename T>
__device__ __forceinline__ void row_scores(const T* k_row, const double (*sQ)[256], int rows,
                                           int head_dim, double scale,
                                           double (&out)[kEstimateRows]) {
#pragma unroll
  for (int r = 0; r < kEstimateRows; ++r) out[r] = 0.0;
  for (int d = 0; d < head_dim; ++d) {
    const double kv = double(to_float(k_row[d]));
#pragma unroll
    for (int r = 0; r < kEstimateRows; ++r)
      if (r < rows) out[r] += sQ[r][d] * kv;
  }
#pragma unroll
  for (int r = 0; r < kEstimateRows; ++r) out[r] *= scale;
}

// A dense attention mask on the scores of key c for the pass's rows (their indices in sRow):
// hidden pairs become -inf, the others get the mask's value. Nothing without a dense mask.
__device__ __forceinline__ void mask_row_scores(const PredictParams& p, int b, int h, int64_t c,
                                                const int64_t* sRow, int rows,
                                                double (&x)[kEstimateRows]) {
  if (p.attn_mask.data == nullptr) return;
#pragma unroll
  for (int r = 0; r < kEstimateRows; ++r)
    if (r < rows) {
      const float v = dense_mask_value(p.attn_mask, b, h, int(sRow[r]), int(c));
      x[r] = v == -INFINITY ? -INFINITY : x[r] + double(v);
    }
}

// Loads the pass's sampled rows s0 .. s0 + rows − 1 of query block `first` (n valid rows, count
// sampled) into sQ (double), their indices into sRow and the keys each sees into sFirst / sLast.
// Ends with a barrier.
template <typename T>
__device__ void load_sampled_rows(const PredictParams& p, const T* gQ, int64_t first, int64_t n,
                                  int64_t count, int64_t s0, int rows, double (*sQ)[256],
                                  int64_t* sRow, int64_t* sFirst, int64_t* sLast) {
  __syncthreads();  // the previous pass has finished reading sQ, sFirst, sLast
  for (int e = threadIdx.x; e < rows * p.head_dim; e += kEstimateThreads) {
    const int r = e / p.head_dim, d = e % p.head_dim;
    const int64_t qr = detail::sampled_row(first, n, count, s0 + r);
    sQ[r][d] = double(to_float(gQ[qr * p.q_stride[2] + d]));
  }
  if (threadIdx.x < rows) {
    const int64_t qr = detail::sampled_row(first, n, count, s0 + threadIdx.x);
    sRow[threadIdx.x] = qr;
    sFirst[threadIdx.x] = detail::first_visible_key(qr, p.band);
    // Keys past the batch entry's key length are padding: no row sees them.
    const int b = int(blockIdx.y) / p.heads_q;
    sLast[threadIdx.x] = detail::last_visible_key(qr, p.band, key_end_of(p, b));
  }
  __syncthreads();
}

// The softmax's max and sum of every row of the pass over the keys it sees, into sRowMax /
// sRowSum: each thread walks keys with an online (max, sum) per row, merged over the CTA in a
// fixed order. Rows ascend and the band moves right with them: the first row sees the leftmost
// keys, the last one the rightmost. Ends with a barrier.
template <typename T>
__device__ void sampled_row_max_sum(const PredictParams& p, const T* gK, const double (*sQ)[256],
                                    const int64_t* sRow, const int64_t* sFirst,
                                    const int64_t* sLast, int rows,
                                    double (*sWarpMax)[kEstimateRows],
                                    double (*sWarpSum)[kEstimateRows], double* sRowMax,
                                    double* sRowSum) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first_any = sFirst[0], last_any = sLast[rows - 1];
  double m[kEstimateRows], z[kEstimateRows], x[kEstimateRows];
#pragma unroll
  for (int r = 0; r < kEstimateRows; ++r) m[r] = -INFINITY, z[r] = 0.0;
  const int b = int(blockIdx.y) / p.heads_q, h = int(blockIdx.y) % p.heads_q;
  for (int64_t c = first_any + threadIdx.x; c <= last_any; c += kEstimateThreads) {
    row_scores(gK + c * p.k_stride[2], sQ, rows, p.head_dim, p.scale, x);
    mask_row_scores(p, b, h, c, sRow, rows, x);
#pragma unroll
    for (int r = 0; r < kEstimateRows; ++r)
      if (r < rows && c >= sFirst[r] && c <= sLast[r] && x[r] != -INFINITY)
        merge_max_sum(&m[r], &z[r], x[r], 1.0);
  }
#pragma unroll
  for (int r = 0; r < kEstimateRows; ++r) {
    for (int off = 16; off > 0; off >>= 1) {
      const double m2 = __shfl_xor_sync(0xffffffffu, m[r], off);
      const double z2 = __shfl_xor_sync(0xffffffffu, z[r], off);
      merge_max_sum(&m[r], &z[r], m2, z2);
    }
    if (lane == 0) sWarpMax[warp][r] = m[r], sWarpSum[warp][r] = z[r];
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    double mr = -INFINITY, zr = 0.0;
    for (int w = 0; w < kEstimateWarps; ++w)
      merge_max_sum(&mr, &zr, sWarpMax[w][threadIdx.x], sWarpSum[w][threadIdx.x]);
    sRowMax[threadIdx.x] = mr;
    sRowSum[threadIdx.x] = zr;
  }
  __syncthreads();
}

// Grid (num_q_blocks, batch·heads_q), kEstimateThreads threads. Runs after pool_blocks (it reads
// sim_q: a non-similar query block's row is forced on whole, so only zeros are written there).
template <typename T>
__global__ void __launch_bounds__(kEstimateThreads) sampled_row_mass(const PredictParams p) {
  __shared__ double sQ[kEstimateRows][256];
  __shared__ int64_t sFirst[kEstimateRows], sLast[kEstimateRows];  // keys each row sees (first >
                                                                     // last: none)
  __shared__ int64_t sRow[kEstimateRows];  // the pass's sampled rows
  __shared__ double sWarpMax[kEstimateWarps][kEstimateRows];
  __shared__ double sWarpSum[kEstimateWarps][kEstimateRows];
  __shared__ double sRowMax[kEstimateRows], sRowSum[kEstimateRows];

  const int i = blockIdx.x, bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q;
  const int hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  double* gMass = p.scores + row * p.num_k_blocks;
  const detail::BlockRange range =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  const int begin = int(range.begin), end = int(range.end);
  const float theta = p.sim_threshold[p.per_head ? h : 0];
  if (!(p.sim_q[row] > double(theta))) {  // non-similar (or NaN): nothing is selected
    for (int j = begin + threadIdx.x; j < end; j += kEstimateThreads) gMass[j] = 0.0;
    return;
  }

  const T* gQ = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const int64_t first = int64_t(i) * p.block_q;
  const int64_t n = min(int64_t(p.block_q), int64_t(p.seq_q) - first);
  const int64_t count = detail::sampled_row_count(p.sample_rows, n);

  for (int64_t s0 = 0; s0 < count; s0 += kEstimateRows) {
    const int rows = int(min(int64_t(kEstimateRows), count - s0));
    const bool last_pass = s0 + rows == count;
    load_sampled_rows(p, gQ, first, n, count, s0, rows, sQ, sRow, sFirst, sLast);
    const int64_t first_any = sFirst[0], last_any = sLast[rows - 1];
    // Pass 1: the softmax's max and sum of every row, over the keys it sees.
    sampled_row_max_sum(p, gK, sQ, sRow, sFirst, sLast, rows, sWarpMax, sWarpSum, sRowMax,
                        sRowSum);
    double x[kEstimateRows];

    // Pass 2: each row's probability mass per key block, summed over the pass's rows.
    for (int j = begin + warp; j < end; j += kEstimateWarps) {
      const int64_t c0 = max(int64_t(j) * p.block_k, first_any);
      // The block's end, not c0's: a window can start the band inside block j.
      const int64_t c1 = min(min(int64_t(j + 1) * p.block_k, int64_t(p.seq_k)), last_any + 1);
      double part = 0.0;
      for (int64_t c = c0 + lane; c < c1; c += 32) {
        row_scores(gK + c * p.k_stride[2], sQ, rows, p.head_dim, p.scale, x);
        mask_row_scores(p, b, h, c, sRow, rows, x);
#pragma unroll
        for (int r = 0; r < kEstimateRows; ++r)
          if (r < rows && c >= sFirst[r] && c <= sLast[r] && x[r] != -INFINITY)
            part += exp(x[r] - sRowMax[r]) / sRowSum[r];
      }
      part = warp_sum(part);
      if (lane == 0) {
        const double total = (s0 == 0 ? 0.0 : gMass[j]) + part;
        gMass[j] = last_pass ? total / double(count) : total;
      }
    }
  }
}

}  // namespace sparge::cuda
