// Stage 1, error target (SparseOptions.target_error; docs/method.md, "The error target"), the
// same selection as src/cpu/predict.cc:
//  error_target_rows: one CTA per (query block, batch·query head), after sampled_row_mass. Ranks
//    the row (rank_row, as the selection will), counts for each candidate τ_g how many ranks
//    TopCdf keeps, then for the sampled rows (kEstimateRows per pass) computes the exact output
//    o_r = Σ_c a_r[c]·v_c and the output over the tiles each candidate keeps (forced ones, then
//    the ranked prefix), renormalized by their mass, and sums ‖o_g − o‖₁ per candidate and ‖o‖₁.
//    Threads own (row, channel) pairs of the accumulators; a key block's probabilities go
//    through shared memory (sP). Everything in double, fixed summation orders.
//  choose_head: one thread per head sums the blocks in order and applies
//    detail::error_target_choice; select_blocks then reads the head's τ (head_tau).
// Chosen only when target_error > 0 (head_dim <= 256: kEstimateRows·256 accumulators).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/error_target.h"
#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/sampled_rows.cuh"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {

static_assert(kEstimateThreads == kSelectThreads, "rank_row and block_reduce assume one CTA size");
constexpr int kAccPerThread = kEstimateRows * 256 / kEstimateThreads;  // (row, channel) pairs

// Adds key block j's share Σ_{c∈j} a_r[c]·v_c to the thread's accumulators and its mass to
// sMass[r] (thread r). a_r[c] = exp(scale·q_r·k_c − max_r) / sum_r over the keys row r sees.
template <typename T>
__device__ void add_key_block(const PredictParams& p, int j, const T* gK, const T* gV,
                              const double (*sQ)[256], const int64_t* sFirst,
                              const int64_t* sLast, const double* sRowMax, const double* sRowSum,
                              int rows, double (*sP)[256], double* sMass,
                              double (&acc)[kAccPerThread]) {
  const int64_t c0 = int64_t(j) * p.block_k;
  const int width = int(min(int64_t(p.block_k), int64_t(p.seq_k) - c0));
  __syncthreads();  // sP of the previous block has been read
  for (int e = threadIdx.x; e < rows * p.block_k; e += kEstimateThreads) {
    const int r = e / p.block_k, t = e % p.block_k;
    const int64_t c = c0 + t;
    double prob = 0.0;
    if (t < width && c >= sFirst[r] && c <= sLast[r]) {
      const T* k_row = gK + c * p.k_stride[2];
      double dot = 0.0;
      for (int d = 0; d < p.head_dim; ++d) dot += sQ[r][d] * double(to_float(k_row[d]));
      prob = exp(p.scale * dot - sRowMax[r]) / sRowSum[r];
    }
    sP[r][t] = prob;
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < kAccPerThread; ++a) {
    const int e = threadIdx.x + a * kEstimateThreads;
    if (e >= rows * p.head_dim) continue;
    const int r = e / p.head_dim, d = e % p.head_dim;
    double sum = 0.0;
    for (int t = 0; t < width; ++t) sum += sP[r][t] * double(to_float(gV[(c0 + t) * p.v_stride[2] + d]));
    acc[a] += sum;
  }
  if (threadIdx.x < rows) {
    double m = 0.0;
    for (int t = 0; t < width; ++t) m += sP[threadIdx.x][t];
    sMass[threadIdx.x] += m;
  }
}

// Σ over the pass's rows of ‖acc_r / kept_r − exact_r‖₁ (0 output where kept_r = 0), or of
// ‖exact_r‖₁ when `acc` is null. Uniform over the CTA.
__device__ double l1_over_rows(const PredictParams& p, int rows, const double (&exact)[kAccPerThread],
                               const double* acc, const double* sKept, double* sScratchD) {
  double local = 0.0;
#pragma unroll
  for (int a = 0; a < kAccPerThread; ++a) {
    const int e = threadIdx.x + a * kEstimateThreads;
    if (e >= rows * p.head_dim) continue;
    const int r = e / p.head_dim;
    const double approx = acc == nullptr ? 0.0 : (sKept[r] > 0.0 ? acc[a] / sKept[r] : 0.0);
    local += fabs(approx - exact[a]);
  }
  return block_reduce(local, sScratchD, [](double x, double y) { return x + y; });
}

// Grid (num_q_blocks, batch·heads_q), kEstimateThreads threads, dynamic smem sort_len · 16 bytes.
template <typename T>
__global__ void __launch_bounds__(kEstimateThreads) error_target_rows(const PredictParams p,
                                                                      int sort_len) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* sProb = reinterpret_cast<double*>(smem_raw);
  int* sIdx = reinterpret_cast<int*>(sProb + sort_len);
  int* sForced = sIdx + sort_len;
  __shared__ double sQ[kEstimateRows][256];
  __shared__ double sP[kEstimateRows][256];
  __shared__ int64_t sFirst[kEstimateRows], sLast[kEstimateRows];
  __shared__ double sWarpMax[kEstimateWarps][kEstimateRows];
  __shared__ double sWarpSum[kEstimateWarps][kEstimateRows];
  __shared__ double sRowMax[kEstimateRows], sRowSum[kEstimateRows], sKept[kEstimateRows];
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];
  __shared__ int sKeepLen[detail::kErrorTargetCandidates];

  const int i = blockIdx.x, bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q;
  const int hk = h / p.group;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  double* gErr = p.cand_err + row * detail::kErrorTargetCandidates;
  const detail::BlockRange range =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  const int begin = int(range.begin), end = int(range.end);
  const float theta = p.sim_threshold[p.per_head ? h : 0];
  const bool q_similar = p.sim_q[row] > double(theta);

  const int eligible =
      q_similar ? rank_row(p, i, bh, sort_len, sProb, sIdx, sForced, sScratchD, sScratchI) : 0;
  if (eligible == 0) {  // forced whole or nothing selectable: no error, not in the norm
    for (int g = threadIdx.x; g < detail::kErrorTargetCandidates; g += kEstimateThreads) gErr[g] = 0.0;
    if (threadIdx.x == 0) p.cand_norm[row] = 0.0;
    return;
  }
  if (p.attention_sink && begin == 0 && threadIdx.x == 0) sForced[0] = 1;  // kept anyway

  // Ranks TopCdf τ_g keeps: those whose mass before them is < τ_g (select_blocks' rule).
  int count[detail::kErrorTargetCandidates];
#pragma unroll
  for (int g = 0; g < detail::kErrorTargetCandidates; ++g) count[g] = 0;
  double carry = 0.0;
  for (int base = 0; base < sort_len; base += kSelectThreads) {
    const int t = base + threadIdx.x;
    const double prob = sProb[t];
    double chunk_total;
    const double before =
        carry + block_exclusive_scan(prob >= 0.0 ? prob : 0.0, sScratchD, &chunk_total);
    carry += chunk_total;
#pragma unroll
    for (int g = 0; g < detail::kErrorTargetCandidates; ++g)
      count[g] += prob >= 0.0 && before < detail::error_target_tau(g);
  }
  for (int g = 0; g < detail::kErrorTargetCandidates; ++g) {
    const int kept = block_reduce(count[g], sScratchI, [](int x, int y) { return x + y; });
    if (threadIdx.x == 0) sKeepLen[g] = kept;
  }
  __syncthreads();

  const T* gQ = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const int64_t first = int64_t(i) * p.block_q;
  const int64_t n = min(int64_t(p.block_q), int64_t(p.seq_q) - first);
  const int64_t count_rows = detail::sampled_row_count(p.sample_rows, n);
  double err_sum[detail::kErrorTargetCandidates];  // thread 0's running sums
#pragma unroll
  for (int g = 0; g < detail::kErrorTargetCandidates; ++g) err_sum[g] = 0.0;
  double norm = 0.0;

  for (int64_t s0 = 0; s0 < count_rows; s0 += kEstimateRows) {
    const int rows = int(min(int64_t(kEstimateRows), count_rows - s0));
    load_sampled_rows(p, gQ, first, n, count_rows, s0, rows, sQ, sFirst, sLast);
    // Rows that see no key add nothing (their output is 0 either way).
    sampled_row_max_sum(p, gK, sQ, sFirst, sLast, rows, sWarpMax, sWarpSum, sRowMax, sRowSum);
    if (threadIdx.x < kEstimateRows) sKept[threadIdx.x] = 0.0;

    // The exact output: every allowed key block (they hold every key the rows see).
    double exact[kAccPerThread], acc[kAccPerThread];
#pragma unroll
    for (int a = 0; a < kAccPerThread; ++a) exact[a] = acc[a] = 0.0;
    for (int j = begin; j < end; ++j)
      add_key_block(p, j, gK, gV, sQ, sFirst, sLast, sRowMax, sRowSum, rows, sP, sKept, exact);
    __syncthreads();
    norm += l1_over_rows(p, rows, exact, nullptr, sKept, sScratchD);
    if (threadIdx.x < kEstimateRows) sKept[threadIdx.x] = 0.0;

    // The kept tiles: forced ones first, then the ranked prefix; candidate g is measured when
    // the prefix holds sKeepLen[g] ranks.
    for (int j = begin; j < end; ++j)
      if (sForced[j])
        add_key_block(p, j, gK, gV, sQ, sFirst, sLast, sRowMax, sRowSum, rows, sP, sKept, acc);
    int g = 0;
    for (int t = 0; t <= eligible; ++t) {
      for (; g < detail::kErrorTargetCandidates && sKeepLen[g] == t; ++g) {
        __syncthreads();  // sKept complete
        err_sum[g] += l1_over_rows(p, rows, exact, acc, sKept, sScratchD);
      }
      if (t == eligible) break;
      const int j = sIdx[t];
      if (!sForced[j])
        add_key_block(p, j, gK, gV, sQ, sFirst, sLast, sRowMax, sRowSum, rows, sP, sKept, acc);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int g = 0; g < detail::kErrorTargetCandidates; ++g) gErr[g] = err_sum[g];
    p.cand_norm[row] = norm;
  }
}

// One thread per (batch, query head): the head's τ (error target) and the Stage1Stats
// select_value / error_estimate. Grid ⌈batch·heads_q / 128⌉, 128 threads.
__global__ void choose_head(const PredictParams p) {
  const int bh = blockIdx.x * blockDim.x + threadIdx.x;
  if (bh >= p.batch * p.heads_q) return;
  const int h = bh % p.heads_q;
  if (!p.error_target) {
    if (p.stat_select_value) p.stat_select_value[bh] = p.select_value[p.per_head ? h : 0];
    if (p.stat_error) p.stat_error[bh] = NAN;
    return;
  }
  double err[detail::kErrorTargetCandidates], norm = 0.0;
  for (int g = 0; g < detail::kErrorTargetCandidates; ++g) err[g] = 0.0;
  for (int i = 0; i < p.num_q_blocks; ++i) {  // fixed order: runs are bit-reproducible
    const int64_t row = int64_t(bh) * p.num_q_blocks + i;
    for (int g = 0; g < detail::kErrorTargetCandidates; ++g)
      err[g] += p.cand_err[row * detail::kErrorTargetCandidates + g];
    norm += p.cand_norm[row];
  }
  const int choice = detail::error_target_choice(err, norm, p.target_error);
  const bool keep_all = choice == detail::kErrorTargetCandidates;
  p.head_tau[bh] = keep_all ? 2.0 : detail::error_target_tau(choice);
  if (p.stat_select_value)
    p.stat_select_value[bh] = keep_all ? 1.0f : float(detail::error_target_tau(choice));
  if (p.stat_error)
    p.stat_error[bh] = keep_all ? 0.0f : float(norm > 0.0 ? err[choice] / norm : 0.0);
}

}  // namespace sparge::cuda
