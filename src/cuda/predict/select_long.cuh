// Stage 1's selection for long mask rows (uses_long_rows: more than kMaxSortedKeyBlocks key
// blocks, which one CTA cannot sort in shared memory, e.g. 16384 at 1M keys and block_k 64, and
// with the pooled estimate more than kSharedSortMaxKeyBlocks, where it is the faster). Rows are
// taken in chunks of lr_chunk_rows, so the scratch grows with one chunk's rows times the key
// blocks, not with the whole map. Per chunk, two launches:
//   compressed_scores  S̃ of the chunk's rows into lr_scores (topcdf.cuh, the same arithmetic as
//                      the whole map's);
//   select_long_rows   one CTA per row: P̃ in place (rank_row's eligibility and softmax), then
//                      the ranks in bands of at most lr_band, best first, each found by a radix
//                      select on P̃'s bits (no sort of the whole row) and sorted in shared memory;
//                      the keep rule walks the sorted ranks in the same chunks of kSelectThreads
//                      as the shared-memory path (keep_chunk), carrying partial chunks from band
//                      to band, and stops at a chunk boundary once no later rank can be kept;
//                      then the gate's tiles, the sink and the ascending mask row.
// Why the masks equal the shared-memory path's bit for bit: the sorted order is unique (P̃
// descending, ties to the lower key block), a band is every rank between two values (ties of
// one value taken in key-block order), so the ranks reach keep_chunk in the same order and the
// same chunks, and a TopCdf rank after a chunk boundary whose mass before is >= τ is never kept
// (the carry only grows). SPARGE_CUDA_LONG_ROWS=all sends short rows here too and
// SPARGE_CUDA_LONG_ROW_BAND=n narrows the bands, which is how the GPU test compares the two.
// Pooled estimate only.
//
// Replaces (2026-12-05) a CUB segmented stable sort of every row, which took ~1 s of Stage 1
// at 1M tokens and 8 heads on an H100 (bench/results/2026-12-05_NVIDIA-H100_long-rows_check.md).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/predict/params.h"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {

static_assert(kLongRowBand > 2 * kSelectThreads && (kLongRowBand & (kLongRowBand - 1)) == 0,
              "a band holds a partial chunk and adds at least one rank; bitonic sort length");
constexpr int kRadixBits = 8;
constexpr int kRadixBuckets = 1 << kRadixBits;
static_assert(kRadixBuckets == kSelectThreads, "one histogram bucket per thread");

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

// P̃ ≥ 0 ordered as its bits (non-negative doubles order as unsigned integers).
__device__ __forceinline__ uint64_t rank_key(double prob) {
  return static_cast<uint64_t>(__double_as_longlong(prob));
}

// What the next band takes, decided by thread 0 from the radix histograms.
struct BandPlan {
  uint64_t lo;  // a range band: every rank with lo <= key < hi (at most the band's capacity)
  bool tie;     // else the ranks of key == lo in key-block order (more than fit in one band)
};

// plan_band's state between its levels, in shared memory.
struct RadixLevel {
  uint64_t region_lo, region_hi;  // the bucket being refined: region_lo <= key < region_hi
  int64_t above;                  // ranks above it (keys in [region_hi, hi))
  BandPlan plan;
  bool descend;
};

// The next band among the ranks with key < hi: a radix select, kRadixBits from the top. At each
// level a histogram of the digit among the keys of the current bucket; the buckets are taken
// from the top while they fit `cap` and fewer than `need` ranks are taken; a bucket that does
// not fit is refined at the next level, and at the last level (one value) the band stops above
// it, or, with nothing above, is that value's ranks (a tie band). Every thread gets the plan.
__device__ BandPlan plan_band(const double* prob, int nk, uint64_t hi, int cap, int64_t need,
                              unsigned* sCount, RadixLevel* sLevel) {
  if (threadIdx.x == 0) *sLevel = RadixLevel{0, hi, 0, BandPlan{0, false}, false};
  for (int shift = 64 - kRadixBits;; shift -= kRadixBits) {
    sCount[threadIdx.x] = 0;
    __syncthreads();
    const uint64_t region_lo = sLevel->region_lo, region_hi = sLevel->region_hi;
    const int lane = threadIdx.x % 32;
    for (int base = 0; base < nk; base += kSelectThreads) {
      const int j = base + threadIdx.x;
      const double pr = j < nk ? prob[j] : -1.0;
      const uint64_t key = rank_key(pr);
      const bool in = pr >= 0.0 && key >= region_lo && key < region_hi;
      const unsigned digit = in ? unsigned(key >> shift) & (kRadixBuckets - 1) : kRadixBuckets;
      const unsigned same = __match_any_sync(0xffffffffu, digit);  // one atomic per digit a warp
      if (in && lane == __ffs(same) - 1) atomicAdd(&sCount[digit], unsigned(__popc(same)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      RadixLevel& L = *sLevel;
      int64_t acc = L.above;
      L.descend = false;
      bool decided = false;
      for (int d = kRadixBuckets - 1; d >= 0 && !decided && !L.descend; --d) {
        const int64_t c = sCount[d];
        if (c == 0) continue;
        const uint64_t bucket_lo = region_lo + (uint64_t(d) << shift);
        if (acc + c <= cap) {
          acc += c;
          if (acc >= need) L.plan = BandPlan{bucket_lo, false}, decided = true;
        } else if (shift == 0) {  // one value: stop above it, or take its ranks in order
          L.plan = acc > 0 ? BandPlan{bucket_lo + 1, false} : BandPlan{bucket_lo, true};
          decided = true;
        } else {
          const uint64_t bucket_end = bucket_lo + (uint64_t(1) << shift);  // 0: wrapped
          L.above = acc;
          L.region_lo = bucket_lo;
          if (bucket_end != 0 && bucket_end < region_hi) L.region_hi = bucket_end;
          L.descend = true;
        }
      }
      if (!decided && !L.descend) L.plan = BandPlan{region_lo, false};  // all of it fits
    }
    __syncthreads();
    const bool descend = sLevel->descend;
    const BandPlan plan = sLevel->plan;
    __syncthreads();  // sCount and sLevel are rewritten at the next level or by the next band
    if (!descend) return plan;
  }
}

// Dynamic shared memory of select_long_rows: its keep flags, a bit per key block.
inline std::size_t long_row_keep_bytes(int num_k_blocks) {
  return sizeof(unsigned) * std::size_t((num_k_blocks + 31) / 32);
}

// The selection of one long row (grid: the chunk's rows; lr_scores holds their S̃).
__global__ void __launch_bounds__(kSelectThreads) select_long_rows(const PredictParams p,
                                                                   int64_t row0) {
  __shared__ double sProb[kLongRowBand];
  __shared__ int sIdx[kLongRowBand];
  __shared__ unsigned sCount[kRadixBuckets];
  __shared__ RadixLevel sLevel;
  __shared__ double sScratchD[32];
  __shared__ int sScratchI[32];
  __shared__ int sGot, sLast;
  extern __shared__ unsigned sKeep[];  // keep flags, a bit per key block (long_row_keep_bytes)
  const LongRow r(p, row0);
  const int64_t row = r.row;
  const int bh = r.bh, bhk = r.bhk, begin = r.begin, end = r.end;
  const int nk = p.num_k_blocks;
  double* prob = p.lr_scores + int64_t(blockIdx.x) * nk;
  const bool q_similar = p.sim_q[row] > double(r.theta);  // NaN compares false: non-similar
  const int lane = threadIdx.x % 32;

  // P̃ in place: the eligible columns (visible and similar) get softmax(S̃) over them, as
  // rank_row forms it (the same per-thread order of the sums), the others -1. The gate's tiles:
  // visible and not similar (query or key block); a warp's 32 columns make one word of flags.
  double local_max = -INFINITY;
  int local_eligible = 0, local_forced = 0;
  for (int base = 0; base < nk; base += kSelectThreads) {
    const int j = base + threadIdx.x;
    const bool in_range = j >= begin && j < end && !tile_hidden(p, r.b, r.h, r.i, j);
    const bool k_similar = in_range && p.sim_k[int64_t(bhk) * p.kt_pitch + j] > double(r.theta);
    if (j < nk) prob[j] = k_similar ? prob[j] : -INFINITY;
    if (k_similar) {
      local_max = fmax(local_max, prob[j]);
      ++local_eligible;
    }
    const bool forced = in_range && (!k_similar || !q_similar);
    const unsigned word = __ballot_sync(0xffffffffu, forced);
    if (lane == 0 && j < nk) sKeep[j / 32] = word;
    local_forced += forced;
  }
  const auto int_sum = [](int a, int c) { return a + c; };
  const double row_max =
      block_reduce(local_max, sScratchD, [](double a, double c) { return fmax(a, c); });
  const int eligible = block_reduce(local_eligible, sScratchI, int_sum);
  if (p.stat_forced != nullptr) {
    const int forced = block_reduce(local_forced, sScratchI, int_sum);
    if (threadIdx.x == 0 && forced > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(p.stat_forced + bh),
                static_cast<unsigned long long>(forced));
  }
  double denom = 0.0;
  if (eligible > 0) {
    double local_sum = 0.0;
    for (int j = threadIdx.x; j < nk; j += kSelectThreads) {
      const double e = prob[j] == -INFINITY ? -1.0 : exp(prob[j] - row_max);
      prob[j] = e;
      if (e >= 0.0) local_sum += e;
    }
    denom = block_reduce(local_sum, sScratchD, [](double a, double c) { return a + c; });
  }
  int local_ranked = 0;  // the ranks the bands walk: P̃ >= 0 (a NaN score is never ranked)
  if (eligible > 0 && denom != 0.0)
    for (int j = threadIdx.x; j < nk; j += kSelectThreads) {
      if (prob[j] >= 0.0) prob[j] /= denom;
      local_ranked += prob[j] >= 0.0;
    }
  const int64_t ranked = block_reduce(local_ranked, sScratchI, int_sum);  // 0: none selectable

  const int allowed = int(
      detail::allowed_key_blocks(r.i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k).size());
  const double select = double(p.select_value[p.per_head ? r.h : 0]);
  const int64_t topk_keep = topk_keep_count(select, allowed);
  const int band = p.lr_band;
  uint64_t hi = ~uint64_t(0);  // ranks not yet taken: key < hi, and the tie's if one is open
  bool tie = false;            // a value's ranks are being taken in key-block order
  uint64_t tie_key = 0;
  int tie_from = 0;
  int pending = 0;              // sorted ranks at the front of sProb not yet walked (< a chunk)
  int64_t taken = 0, done = 0;  // ranks gathered; ranks walked (whole chunks until the end)
  double carry = 0.0;
  while (taken < ranked) {
    const int cap = band - pending;
    int got = 0;
    if (!tie) {
      // TopK needs the ranks up to the end of the chunk of its last kept rank; TopCdf cannot
      // tell from counts and takes full bands.
      const int64_t need =
          p.topk ? (topk_keep - done + kSelectThreads - 1) / kSelectThreads * kSelectThreads -
                       pending
                 : int64_t(cap);
      const BandPlan plan = plan_band(prob, nk, hi, cap, need < 1 ? 1 : need, sCount, &sLevel);
      if (plan.tie) {
        tie = true, tie_key = plan.lo, tie_from = 0;
      } else {  // the ranks with plan.lo <= key < hi, unordered, then sorted after the pending
        if (threadIdx.x == 0) sGot = 0;
        __syncthreads();
        for (int base = 0; base < nk; base += kSelectThreads) {
          const int j = base + threadIdx.x;
          const double pr = j < nk ? prob[j] : -1.0;
          const bool in = pr >= 0.0 && rank_key(pr) >= plan.lo && rank_key(pr) < hi;
          const unsigned ballot = __ballot_sync(0xffffffffu, in);
          int at = 0;
          if (lane == 0 && ballot != 0) at = atomicAdd(&sGot, __popc(ballot));
          at = __shfl_sync(0xffffffffu, at, 0) + __popc(ballot & ((1u << lane) - 1u));
          if (in) sProb[pending + at] = pr, sIdx[pending + at] = j;
        }
        __syncthreads();
        got = sGot;
        int len = 32;
        while (len < pending + got) len <<= 1;
        for (int t = pending + got + int(threadIdx.x); t < len; t += kSelectThreads)
          sProb[t] = -1.0, sIdx[t] = nk + t;  // after every rank (distinct key blocks)
        __syncthreads();
        sort_ranked(sProb, sIdx, len);  // the pending ranks are larger: they stay in front
        hi = plan.lo;
      }
    }
    if (tie) {  // the value's ranks from key block tie_from on, in key-block order, up to cap
      for (int base = tie_from; base < nk && got < cap; base += kSelectThreads) {
        const int j = base + threadIdx.x;
        const bool in = j < nk && prob[j] >= 0.0 && rank_key(prob[j]) == tie_key;
        int chunk;
        const int at = got + block_exclusive_scan(int(in), sScratchI, &chunk);
        if (in && at < cap) {
          sProb[pending + at] = prob[j], sIdx[pending + at] = j;
          if (at == cap - 1) sLast = j;
        }
        got = min(cap, got + chunk);
      }
      __syncthreads();
      if (got == cap) {
        tie_from = sLast + 1;
      } else {  // the value is exhausted: the keys below it are next
        tie = false;
        hi = tie_key;
      }
    }
    taken += got;
    const int total = pending + got;
    // Walk the sorted ranks in whole chunks (and the last, partial one at the end). A chunk
    // boundary past TopK's count, or with the mass before it >= τ, ends the row.
    const bool last = taken == ranked;
    int base = 0;
    bool stop = false;
    while (!stop && (base + kSelectThreads <= total || (last && base < total))) {
      const int t = base + threadIdx.x;
      const double pr = t < total ? sProb[t] : -1.0;
      keep_chunk(p, select, topk_keep, done + threadIdx.x, pr, pr >= 0.0 ? sIdx[t] : 0, carry,
                 [&](int j) { atomicOr(&sKeep[j / 32], 1u << (j % 32)); }, sScratchD);
      base += kSelectThreads;
      done += kSelectThreads;
      stop = p.topk ? done >= topk_keep : carry >= select;
    }
    if (stop || last) break;
    // The partial chunk moves to the front: the next band's ranks follow it.
    const int left = total - base;
    double pr = 0.0;
    int idx = 0;
    if (int(threadIdx.x) < left) pr = sProb[base + threadIdx.x], idx = sIdx[base + threadIdx.x];
    __syncthreads();
    if (int(threadIdx.x) < left) sProb[threadIdx.x] = pr, sIdx[threadIdx.x] = idx;
    __syncthreads();
    pending = left;
  }
  write_mask_row(p, row, begin, end, [&](int j) { return (sKeep[j / 32] >> (j % 32)) & 1u; },
                 [&] { atomicOr(&sKeep[0], 1u); }, sScratchI);
}

}  // namespace sparge::cuda
