// Stage 1, error target (SparseOptions.target_error; docs/method.md, "The error target"), the
// same selection as src/cpu/predict.cc, after error_target_sample (error_target_sample.cuh) has
// written the weights, each sampled row's max m_r and its exact output o_r:
//  error_target_rows: one CTA per (query block, batch·query head), 8 warps. Ranks the row
//    (rank_row, as the selection will) and counts for each candidate τ_g how many ranks TopCdf
//    keeps. Each key block is then kept first by one candidate (keep[g] grows with g), so the
//    kept tiles of candidate g are a prefix of one walk: the forced tiles (gate and sink), then
//    the ranked ones. The CTA walks that order up to the densest candidate's prefix (the tiles
//    past it only enter o_r, which is known) with the rows' P·V running in fp32 on the tensor
//    cores, and at each candidate's prefix adds Σ_r ‖acc_r / kept_r − o_r‖₁ to its error.
//    Per step (kStepKeys keys, K/V double-buffered by cp.async): warp w scores keys 8w .. 8w+7
//    of the 16 rows and writes P (16-bit parts, error_target_tiles.cuh) and its row masses to
//    shared memory; then warp w accumulates P·V for channels [w, w + 1) · head_dim / 8.
//    Fixed summation orders throughout (runs are bit-reproducible).
//  choose_head: one thread per head sums the blocks in order and applies
//    detail::error_target_choice; select_blocks then reads the head's τ (head_tau).
// Smem: the sort buffer (16 bytes a key block), then, over it, the walk order and the tiles.
// Chosen only when target_error > 0 (head_dim ≤ 256).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/error_target.h"
#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/predict/error_target_tiles.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {

static_assert(kEtThreads == kSelectThreads, "rank_row and the block scans assume one CTA size");
constexpr int kEtCandidates = detail::kErrorTargetCandidates;

// Dynamic smem of error_target_rows: the ranking's buffers, or the walk order and the tiles
// laid over them once the ranking is done, whichever is larger.
template <typename Tr>
int error_target_rows_smem(int sort_len) {
  const int ranking = sort_len * int(sizeof(double) + 2 * sizeof(int));
  const int tiles = 4 * Tr::kTileElems + Tr::kUnitElems + Tr::kParts * kUnitRows * Tr::kPRowKeys;
  const int walk = sort_len * int(sizeof(int)) + tiles * int(sizeof(typename Tr::Element));
  return ranking > walk ? ranking : walk;
}

// Σ x over the CTA: the warps' butterflies (every lane ends with the same sum), then the warps
// in order. Uniform; sPart holds kEtWarps values.
__device__ __forceinline__ double cta_sum(double x, double* sPart) {
  x = warp_sum(x);
  if (threadIdx.x % 32 == 0) sPart[threadIdx.x / 32] = x;
  __syncthreads();
  double s = 0.0;
  for (int w = 0; w < kEtWarps; ++w) s += sPart[w];
  __syncthreads();  // sPart is free again
  return s;
}

// The walk of one ranked row: sWalk = the forced key blocks in [begin, end) ascending, then the
// ranked blocks that are not forced, in rank order; sStop[g] = how many walk entries candidate g
// keeps (the forced ones and its ranks < keep[g]). Returns sStop of the densest candidate.
__device__ int walk_order(int begin, int end, int eligible, const int* sIdx, const int* sForced,
                          const int* sKeepLen, int* sWalk, int* sRankPos, int* sStop,
                          int* sScratchI) {
  int walked = 0, chunk;
  for (int base = begin; base < end; base += kEtThreads) {
    const int j = base + threadIdx.x;
    const int flag = j < end ? sForced[j] : 0;
    const int pos = walked + block_exclusive_scan(flag, sScratchI, &chunk);
    if (flag) sWalk[pos] = j;
    walked += chunk;
  }
  for (int base = 0; base < eligible; base += kEtThreads) {
    const int t = base + threadIdx.x;
    const int flag = t < eligible ? !sForced[sIdx[t]] : 0;
    const int pos = walked + block_exclusive_scan(flag, sScratchI, &chunk);
    if (t < eligible) {
      sRankPos[t] = pos;  // walk entries before rank t
      if (flag) sWalk[pos] = sIdx[t];
    }
    walked += chunk;
  }
  __syncthreads();
  if (threadIdx.x < kEtCandidates) {
    const int keep = sKeepLen[threadIdx.x];
    sStop[threadIdx.x] = keep < eligible ? sRankPos[keep] : walked;
  }
  __syncthreads();
  return sStop[kEtCandidates - 1];
}

// Grid (num_q_blocks, batch·heads_q), kEtThreads threads, error_target_rows_smem(sort_len). Two
// CTAs per SM (128 registers) hide one's barriers behind the other's loads; at head dim 256 a
// warp's slice (32 channels of acc and of o_r) needs more registers than that without spilling.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kEtThreads, kHeadDim > 128 ? 1 : 2)
    error_target_rows(const PredictParams p, int sort_len) {
  using Tr = EtTraits<T, kHeadDim>;
  constexpr int kSliceN = Tr::kSliceChannels / 8;  // 8-channel tiles a warp owns
  extern __shared__ __align__(128) unsigned char smem_raw[];
  double* sProb = reinterpret_cast<double*>(smem_raw);  // ranking
  int* sIdx = reinterpret_cast<int*>(sProb + sort_len);
  int* sForced = sIdx + sort_len;
  int* sWalk = reinterpret_cast<int*>(smem_raw);        // walk, over sProb
  int* sRankPos = sWalk + sort_len;
  T* sK = reinterpret_cast<T*>(smem_raw + sort_len * sizeof(int));  // [2][kTileElems]
  T* sV = sK + 2 * Tr::kTileElems;                                   // [2][kTileElems]
  T* sQ = sV + 2 * Tr::kTileElems;                                   // [kUnitElems]
  T* sP = sQ + Tr::kUnitElems;                                       // [kParts][16][64]
  __shared__ float sMass[kEtWarps][kUnitRows];  // a step's row masses, per warp's 8 keys
  __shared__ double sPart[kEtWarps];
  __shared__ double sErr[kEtCandidates];
  __shared__ int sStop[kEtCandidates];
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];
  __shared__ int sKeepLen[kEtCandidates];

  const int i = blockIdx.x, bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q;
  const int hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t row = int64_t(bh) * p.num_q_blocks + i;
  double* gErr = p.cand_err + row * kEtCandidates;
  const detail::BlockRange range =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  const int begin = int(range.begin), end = int(range.end);
  const float theta = p.sim_threshold[p.per_head ? h : 0];
  const bool q_similar = p.sim_q[row] > double(theta);

  const int eligible =
      q_similar ? rank_row(p, i, bh, sort_len, sProb, sIdx, sForced, sScratchD, sScratchI) : 0;
  if (eligible == 0) {  // forced whole or nothing selectable: no error, not in the norm
    for (int c = threadIdx.x; c < kEtCandidates; c += kEtThreads) gErr[c] = 0.0;
    if (threadIdx.x == 0) p.cand_norm[row] = 0.0;
    return;
  }
  if (p.attention_sink && begin == 0 && threadIdx.x == 0) sForced[0] = 1;  // kept anyway

  // Ranks TopCdf τ_g keeps: those whose mass before them is < τ_g (select_blocks' rule).
  int count[kEtCandidates];
#pragma unroll
  for (int c = 0; c < kEtCandidates; ++c) count[c] = 0;
  double carry = 0.0;
  for (int base = 0; base < sort_len; base += kSelectThreads) {
    const int t = base + threadIdx.x;
    const double prob = sProb[t];
    double chunk_total;
    const double before =
        carry + block_exclusive_scan(prob >= 0.0 ? prob : 0.0, sScratchD, &chunk_total);
    carry += chunk_total;
#pragma unroll
    for (int c = 0; c < kEtCandidates; ++c)
      count[c] += prob >= 0.0 && before < detail::error_target_tau(c);
  }
  for (int c = 0; c < kEtCandidates; ++c) {
    const int kept = block_reduce(count[c], sScratchI, [](int x, int y) { return x + y; });
    if (threadIdx.x == 0) sKeepLen[c] = kept;
  }
  __syncthreads();
  const int walk_end =
      walk_order(begin, end, eligible, sIdx, sForced, sKeepLen, sWalk, sRankPos, sStop, sScratchI);
  if (threadIdx.x < kEtCandidates) sErr[threadIdx.x] = 0.0;

  const T* gQ = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool vec_q = rows_vectorizable(gQ, p.q_stride[2], p.head_dim);
  const bool vec_k = rows_vectorizable(gK, p.k_stride[2], p.head_dim);
  const bool vec_v = rows_vectorizable(gV, p.v_stride[2], p.head_dim);
  const float mul = float(p.scale) * kLog2e;
  const int W = min(p.block_k, Tr::kStepKeys);  // keys per step; divides block_k
  const int64_t first = int64_t(i) * p.block_q;
  const int64_t n = min(int64_t(p.block_q), int64_t(p.seq_q) - first);
  const int64_t count_rows = detail::sampled_row_count(p.sample_rows, n);
  const int units = int((count_rows + kUnitRows - 1) / kUnitRows);
  double norm = 0.0;  // uniform

  for (int unit = 0; unit < units; ++unit) {
    __syncthreads();  // the previous unit is done with sQ and the tiles (the first: sRankPos)
    load_unit_rows<Tr>(sQ, gQ, p.q_stride[2], p.head_dim, vec_q, first, n, count_rows, unit,
                       threadIdx.x, kEtThreads);  // committed with the first tile
    const UnitRowKeys rk = unit_row_keys(p, first, n, count_rows, unit);
    const int64_t row0 = row * p.et_rows + int64_t(unit) * kUnitRows;
    float base[2], exact[kSliceN][4];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const bool valid = int64_t(unit) * kUnitRows + g + 8 * hh < count_rows;
      base[hh] = valid ? exp_base(p.et_row_max[row0 + g + 8 * hh]) : 0.0f;
#pragma unroll
      for (int nt = 0; nt < kSliceN; ++nt) {
        const int ch = warp * Tr::kSliceChannels + 8 * nt + 2 * t4;
        float2 e = make_float2(0.0f, 0.0f);
        if (valid && ch < p.et_channels)
          e = *reinterpret_cast<const float2*>(p.et_exact + (row0 + g + 8 * hh) * p.et_channels + ch);
        exact[nt][2 * hh] = e.x, exact[nt][2 * hh + 1] = e.y;
      }
    }
    double local_norm = 0.0;
#pragma unroll
    for (int nt = 0; nt < kSliceN; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) local_norm += fabs(double(exact[nt][e]));
    norm += cta_sum(local_norm, sPart);

    float acc[kSliceN][4];
#pragma unroll
    for (int nt = 0; nt < kSliceN; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    double kept[2] = {0.0, 0.0};      // the walked blocks' mass, rows g and g + 8
    float block_mass[2] = {0.0f, 0.0f};
    int next = 0;  // the first candidate not measured yet
    // Candidates whose prefix is `walked` entries: Σ_r ‖acc_r / kept_r − o_r‖₁ (0 output where
    // nothing is kept, as Stage 2; a NaN mass fails the candidate through o_r).
    const auto measure = [&](int walked) {
      if (next >= kEtCandidates || sStop[next] != walked) return;
      double inv[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh)
        inv[hh] = kept[hh] > 0.0 ? 1.0 / (kept[hh] * double(Tr::kPScale)) : 0.0;
      double local = 0.0;
#pragma unroll
      for (int nt = 0; nt < kSliceN; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          local += fabs(double(acc[nt][e]) * inv[e >> 1] - double(exact[nt][e]));
      const double l1 = cta_sum(local, sPart);
      for (; next < kEtCandidates && sStop[next] == walked; ++next)
        if (threadIdx.x == 0) sErr[next] += l1;
    };
    measure(0);

    // Steps: walk entry `pos`, its sub-step `sub` of W keys; tiles double-buffered.
    int load_pos = 0, load_sub = 0;
    const auto load_next = [&](int buf) {
      if (load_pos >= walk_end) return;
      const int j = sWalk[load_pos], key0 = j * p.block_k + load_sub * W;
      load_key_tile<Tr>(sK + buf * Tr::kTileElems, gK, p.k_stride[2], key0, W, p.seq_k, p.head_dim, vec_k);
      load_key_tile<Tr>(sV + buf * Tr::kTileElems, gV, p.v_stride[2], key0, W, p.seq_k, p.head_dim, vec_v);
      if (key0 + W < min((j + 1) * p.block_k, p.seq_k)) ++load_sub;
      else ++load_pos, load_sub = 0;
    };
    load_next(0);
    cp_async_commit();
    const int q_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    for (int pos = 0, sub = 0, buf = 0; pos < walk_end; buf ^= 1) {
      const int j = sWalk[pos], key0 = j * p.block_k + sub * W;
      cp_async_wait_all();
      __syncthreads();  // tile in; the previous step's P, masses and tiles are read
      load_next(buf ^ 1);
      cp_async_commit();
      const T* sKt = sK + buf * Tr::kTileElems;
      const T* sVt = sV + buf * Tr::kTileElems;
      if (warp < W / 8) {  // P of keys 8·warp .. +7: scores, 2^(t − m), masses, 16-bit parts
        float s[4];
        unit_scores_one_tile<Tr>(sQ, sKt, warp, s);
        scale_and_mask(s, mul, key0 + 8 * warp, rk);
        float ms[2] = {0.0f, 0.0f};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[e] = exp2f(s[e] - base[e >> 1]);
          ms[e >> 1] += s[e];
          s[e] *= Tr::kPScale;
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          ms[hh] += __shfl_xor_sync(0xffffffffu, ms[hh], 1);
          ms[hh] += __shfl_xor_sync(0xffffffffu, ms[hh], 2);
          if (t4 == 0) sMass[warp][g + 8 * hh] = ms[hh];
        }
        uint32_t part[2][Tr::kParts];
        split_pair<T>(s[0], s[1], part[0]);
        split_pair<T>(s[2], s[3], part[1]);
#pragma unroll
        for (int k = 0; k < Tr::kParts; ++k)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            T* dst = sP + k * kUnitRows * Tr::kPRowKeys + swizzled<8>(g + 8 * hh, warp) + 2 * t4;
            *reinterpret_cast<uint32_t*>(dst) = part[hh][k];
          }
      }
      __syncthreads();  // P and the masses are in
      // acc += P · V over this warp's channels; each V fragment feeds every part.
#pragma unroll
      for (int kk = 0; kk < Tr::kStepKeys / 16; ++kk) {
        if (16 * kk >= W) break;
        uint32_t a[Tr::kParts][4];
#pragma unroll
        for (int k = 0; k < Tr::kParts; ++k)
          ldmatrix_x4(a[k], sP + k * kUnitRows * Tr::kPRowKeys + swizzled<8>(q_row, 2 * kk + (lane >> 4)));
        const int chunk0 = warp * Tr::kSliceChannels / 8;
        if constexpr (kSliceN == 1) {
          uint32_t bv[2];
          ldmatrix_x2_trans(bv, sVt + swizzled<Tr::kChunks>(16 * kk + q_row, chunk0));
#pragma unroll
          for (int k = 0; k < Tr::kParts; ++k) mma_16816<T>(acc[0], a[k], bv[0], bv[1]);
        } else {
#pragma unroll
          for (int dp = 0; dp < kSliceN / 2; ++dp) {
            uint32_t bv[4];
            ldmatrix_x4_trans(bv, sVt + swizzled<Tr::kChunks>(16 * kk + q_row, chunk0 + 2 * dp + (lane >> 4)));
#pragma unroll
            for (int k = 0; k < Tr::kParts; ++k) {
              mma_16816<T>(acc[2 * dp], a[k], bv[0], bv[1]);
              mma_16816<T>(acc[2 * dp + 1], a[k], bv[2], bv[3]);
            }
          }
        }
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float ms = 0.0f;
        for (int w = 0; w < W / 8; ++w) ms += sMass[w][g + 8 * hh];
        block_mass[hh] += ms;
      }
      if (key0 + W < min((j + 1) * p.block_k, p.seq_k)) {
        ++sub;  // the key block goes on
        continue;
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) kept[hh] += double(block_mass[hh]), block_mass[hh] = 0.0f;
      ++pos, sub = 0;
      measure(pos);
    }
    cp_async_wait_all();  // the last group is empty; nothing stays in flight
  }
  __syncthreads();  // sErr is complete
  if (threadIdx.x < kEtCandidates) gErr[threadIdx.x] = sErr[threadIdx.x];
  if (threadIdx.x == 0) p.cand_norm[row] = norm;
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
