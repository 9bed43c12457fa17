// Split-KV decode (issue 14 item 5): a few query rows (decode, speculative tokens: seq_q <=
// kDecodeMaxRows, one query block) against a long key cache. The tensor-core kernels give such
// a call one CTA per (batch, head) walking every kept key block in turn, which leaves most of the
// GPU idle; here the kept blocks of each mask row are split among `splits` CTAs, each keeping its
// own running max and sum, and a second kernel merges the partial outputs by their maxima
// (flash-decoding). The work per key is a few FMAs, so CUDA cores serve: a warp per key for
// Q·Kᵀ (the lanes hold the channels, a shuffle tree sums them), V staged in shared memory for
// P·V (a thread per channel).
// The rules are the tensor-core kernels' (softmax.cuh, epilogue.cuh): scores in log2 units, a
// NaN-propagating max, the λ rule per slab (all rows of the call form one slab) against the
// running max of the CTA's own blocks (so with λ < inf a split may compute a block the serial
// kernel skips: never the other way round for its first blocks), padding keys loaded as zeros,
// rows that see no key give zeros and LSE -inf.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention/params.h"
#include "cuda/attention/softmax.cuh"
#include "cuda/common/math.cuh"

namespace sparge::cuda {

constexpr int kDecodeThreads = 128;  // four warps
constexpr int kDecodeMaxRows = kDecodeThreads / 32;  // query rows: a warp owns one
constexpr int kDecodeMaxSplits = 16;
constexpr int kDecodeKeys = 64;      // keys per block (block_k)

// The partial results of the splits, fp32 in the workspace: for (batch·head, split, row):
// the running max (log2 units), the sum, and the unnormalized output [D].
struct DecodePartials {
  float* m;    // [B·Hq, splits, rows]
  float* l;    // [B·Hq, splits, rows]
  float* acc;  // [B·Hq, splits, rows, D]
  int splits;
};

// Splits for a call: enough CTAs for every SM several times over (kDecodeCtasWanted), at most
// kDecodeMaxSplits, so that the partials stay small. A host rule, so that the workspace size and
// the launch agree.
constexpr int kDecodeCtasWanted = 1024;
inline int decode_splits(int64_t batch_heads) {
  const int64_t s = (kDecodeCtasWanted + batch_heads - 1) / batch_heads;
  return int(s < 1 ? 1 : (s > kDecodeMaxSplits ? kDecodeMaxSplits : s));
}

#if defined(__CUDACC__)

// One output element of T.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// One CTA per (split, batch·head): grid (splits, B·Hq). Dynamic smem: the K and V tiles
// [64][kHeadDim] of T (every load of a block issued at once, 16 bytes a thread each, so that
// many are in flight), then the scores / probabilities [kDecodeMaxRows][64] and alpha
// [kDecodeMaxRows] in floats. Warp r owns query row r (its running max and sum).
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kDecodeThreads) decode_split(const AttnParams p,
                                                               const DecodePartials part) {
  constexpr int kPer = kHeadDim / 32;  // channels a lane holds in Q·Kᵀ: 2, 4 or 8
  constexpr int kOwned = kHeadDim > kDecodeThreads ? kHeadDim / kDecodeThreads : 1;
  constexpr int kVecs = kHeadDim * int(sizeof(T)) / 16;  // 16-byte vectors per key row
  extern __shared__ __align__(16) unsigned char decode_smem[];
  T* sK = reinterpret_cast<T*>(decode_smem);                           // [64][D]
  T* sV = sK + kDecodeKeys * kHeadDim;                                  // [64][D]
  float* sP = reinterpret_cast<float*>(sV + kDecodeKeys * kHeadDim);   // [rows][64]
  float* sAlpha = sP + kDecodeMaxRows * kDecodeKeys;                    // [rows]
  __shared__ int sSkip;

  const int split = blockIdx.x, bh = blockIdx.y;
  const int b = bh / p.heads_q, h = bh % p.heads_q, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows = p.seq_q;
  const bool my_row = warp < rows;  // warp r owns row r
  const int key_end = key_end_of(p, b);
  const float lambda = p.pv_lambda_per_head ? p.pv_lambda[h] : p.pv_lambda_uniform;

  // This split's entries of the mask row (the call's only query block): [first, last).
  const int64_t mask_row = int64_t(bh) * p.num_q_blocks;
  int64_t begin = mask_row * p.num_k_blocks, slots = p.num_k_blocks;
  if (p.mask_row_offsets != nullptr) {
    begin = __ldg(p.mask_row_offsets + mask_row);
    slots = __ldg(p.mask_row_offsets + mask_row + 1) - begin;
    if (slots > p.num_k_blocks) slots = p.num_k_blocks;
  }
  const int count_raw = p.mask_counts[mask_row];
  const int count = count_raw < 0 ? 0 : (count_raw > slots ? int(slots) : count_raw);
  const int first = int(int64_t(count) * split / part.splits);
  const int last = int(int64_t(count) * (split + 1) / part.splits);

  // The query rows, this lane's channels, in fp32 registers.
  const T* gQ = static_cast<const T*>(p.q) + int64_t(b) * p.q_stride[0] + int64_t(h) * p.q_stride[1];
  float q[kDecodeMaxRows][kPer];
#pragma unroll
  for (int r = 0; r < kDecodeMaxRows; ++r)
#pragma unroll
    for (int c = 0; c < kPer; ++c)
      q[r][c] = r < rows ? to_float(gQ[int64_t(r) * p.q_stride[2] + lane * kPer + c]) : 0.0f;

  const T* gK = static_cast<const T*>(p.k) + int64_t(b) * p.k_stride[0] + int64_t(hk) * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + int64_t(b) * p.v_stride[0] + int64_t(hk) * p.v_stride[1];
  float m_run = -INFINITY, l_run = 0.0f;  // this warp's row
  float acc[kDecodeMaxRows][kOwned];
#pragma unroll
  for (int r = 0; r < kDecodeMaxRows; ++r)
#pragma unroll
    for (int c = 0; c < kOwned; ++c) acc[r][c] = 0.0f;
  unsigned long long visited = 0, skipped = 0;

  for (int e = first; e < last; ++e) {
    const int blk = __ldg(p.mask_indices + begin + e);
    if (static_cast<unsigned>(blk) >= static_cast<unsigned>(p.num_k_blocks)) continue;
    const int key0 = blk * kDecodeKeys;
    // K and V tiles (keys past the row's end, padding included, load as zeros).
#pragma unroll 4
    for (int x = threadIdx.x; x < kDecodeKeys * kVecs; x += kDecodeThreads) {
      const int j = x / kVecs, c = (x % kVecs) * int(16 / sizeof(T));
      const int key = key0 + j;
      uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
      if (key < key_end) {
        kv = *reinterpret_cast<const uint4*>(gK + int64_t(key) * p.k_stride[2] + c);
        vv = *reinterpret_cast<const uint4*>(gV + int64_t(key) * p.v_stride[2] + c);
      }
      *reinterpret_cast<uint4*>(sK + j * kHeadDim + c) = kv;
      *reinterpret_cast<uint4*>(sV + j * kHeadDim + c) = vv;
    }
    if (threadIdx.x == 0) sSkip = 1;
    __syncthreads();
    // Scores: warp w takes keys w, w + 4, ...; the lanes sum their channels, a shuffle tree the
    // warp's. Masked keys (past the end, outside the band) score -inf.
#pragma unroll 1
    for (int j = warp; j < kDecodeKeys; j += kDecodeThreads / 32) {
      const int key = key0 + j;
      float kc[kPer];
#pragma unroll
      for (int c = 0; c < kPer; ++c) kc[c] = to_float(sK[j * kHeadDim + lane * kPer + c]);
#pragma unroll
      for (int r = 0; r < kDecodeMaxRows; ++r) {
        if (r >= rows) break;
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < kPer; ++c) s = fmaf(q[r][c], kc[c], s);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        const bool visible = key < key_end && key - r >= p.key_lo && key - r <= p.key_hi;
        if (lane == 0) sP[r * kDecodeKeys + j] = visible ? s : -INFINITY;
      }
    }
    __syncthreads();

    // Warp r: the block's max of row r (log2 units), and the λ rule: the block is skipped iff
    // every row has m_loc = -inf or m_loc - m_run <= -λ (a NaN fails both: it computes).
    float m_loc = -INFINITY;
    if (my_row) {
      float x = max_nan(sP[warp * kDecodeKeys + lane], sP[warp * kDecodeKeys + lane + 32]);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x = max_nan(x, __shfl_xor_sync(0xffffffffu, x, off));
      m_loc = x * p.scale_log2;
      const bool negligible = (m_loc == -INFINITY) | (m_loc - m_run <= -lambda);
      if (!negligible && lane == 0) sSkip = 0;
    }
    __syncthreads();
    ++visited;
    if (sSkip) {  // uniform over the CTA
      ++skipped;
      __syncthreads();  // every thread has read sSkip before thread 0 writes it again
      continue;
    }
    // Warp r: P = 2^(s·c − base) into sP, the rescale alpha, the running sum.
    if (my_row) {
      const float m_new = max_nan(m_run, m_loc);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2_approx(m_run - base);
      float sum = 0.0f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float* slot = sP + warp * kDecodeKeys + lane + 32 * half;
        const float prob = exp2_approx(fmaf(*slot, p.scale_log2, -base));
        *slot = prob;
        sum += prob;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      m_run = m_new;
      l_run = l_run * alpha + sum;
      if (lane == 0) sAlpha[warp] = alpha;
    }
    __syncthreads();
    // P·V: a thread per channel (two at head dim 256).
#pragma unroll
    for (int c = 0; c < kOwned; ++c) {
      const int d = threadIdx.x + c * kDecodeThreads;
      if (d >= kHeadDim) continue;
#pragma unroll
      for (int r = 0; r < kDecodeMaxRows; ++r) {
        if (r >= rows) break;
        float a = acc[r][c] * sAlpha[r];
#pragma unroll 8
        for (int j = 0; j < kDecodeKeys; ++j)
          a = fmaf(sP[r * kDecodeKeys + j], to_float(sV[j * kHeadDim + d]), a);
        acc[r][c] = a;
      }
    }
    __syncthreads();  // the tiles, sP and sSkip are written again next block
  }

  // This split's partials.
  const int64_t slot = (int64_t(bh) * part.splits + split) * rows;
  if (my_row && lane == 0) {
    part.m[slot + warp] = m_run;
    part.l[slot + warp] = l_run;
  }
#pragma unroll
  for (int c = 0; c < kOwned; ++c) {
    const int d = threadIdx.x + c * kDecodeThreads;
    if (d >= kHeadDim) continue;
#pragma unroll
    for (int r = 0; r < kDecodeMaxRows; ++r)
      if (r < rows) part.acc[(slot + r) * kHeadDim + d] = acc[r][c];
  }
  if (p.pv_counters != nullptr && threadIdx.x == 0 && visited > 0) {
    atomicAdd(p.pv_counters + 2 * h, visited);
    if (skipped) atomicAdd(p.pv_counters + 2 * h + 1, skipped);
  }
}

// One CTA per (batch·head, row): grid (B·Hq, rows), kHeadDim threads (at most 256). O = Σ_s
// acc_s·2^(m_s − M) / Σ_s l_s·2^(m_s − M) with M the largest m_s; zeros and LSE −inf for a
// row that saw no key (L = 0); a NaN anywhere stays NaN.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kHeadDim) decode_merge(const AttnParams p,
                                                         const DecodePartials part) {
  const int bh = blockIdx.x, r = blockIdx.y, d = threadIdx.x;
  const int b = bh / p.heads_q, h = bh % p.heads_q;
  const int rows = p.seq_q;
  const int64_t first = int64_t(bh) * part.splits * rows + r;  // split s at first + s·rows
  float M = -INFINITY;
  for (int s = 0; s < part.splits; ++s) M = max_nan(M, part.m[first + int64_t(s) * rows]);
  const float base = M == -INFINITY ? 0.0f : M;
  float L = 0.0f, o = 0.0f;
  for (int s = 0; s < part.splits; ++s) {
    const int64_t at = first + int64_t(s) * rows;
    const float l_s = part.l[at];
    if (l_s == 0.0f) continue;  // a split that saw no key of this row (its acc may be 0·NaN)
    const float w = exp2f(part.m[at] - base);
    L = fmaf(l_s, w, L);
    o = fmaf(part.acc[at * kHeadDim + d], w, o);
  }
  T* gO = static_cast<T*>(p.o) + int64_t(b) * p.o_stride[0] + int64_t(h) * p.o_stride[1] +
          int64_t(r) * p.o_stride[2];
  gO[d] = from_float<T>(L == 0.0f ? 0.0f : o / L);
  if (p.lse != nullptr && d == 0)
    p.lse[(int64_t(b) * p.heads_q + h) * rows + r] =
        L == 0.0f ? -INFINITY : kLn2 * (M + log2f(L));
}

#endif  // __CUDACC__

// Explicitly instantiated per (dtype, head dim) in src/cuda/instances/attn_decode.cu.
template <typename T, int kHeadDim>
Status launch_attn_decode(const AttnParams& params, const DecodePartials& part,
                          cudaStream_t stream);

}  // namespace sparge::cuda
