// Tensor-core pieces shared by the two error-target kernels (error_target_sample.cuh,
// error_target.cuh): the per-head-dim traits, shared-memory tiles of q rows and of k / v keys,
// the scores of one 16-row "unit" of sampled rows (mma.sync m16n8k16, fp32 accumulation: the
// 16-bit inputs multiply exactly), the row-wise mask and exponent, and P·V with P split into
// 16-bit parts.
//
// Why P is split: P is fp32 (values in [0, 1] relative to the row's maximum) but the mma takes
// the input type. One bf16 part keeps 8 significant bits (2⁻⁹ relative error per weight), which
// would move the estimate by ~1e-3 where the CPU's fp32 moves it by ~1e-6 (and a head's τ can
// flip on that). Three bf16 parts (hi, mid, lo: each the rounding of what the previous left)
// hold 24 bits, fp32's precision; fp16 keeps 11 bits a part, so two hold 22 bits, and scaling P
// by 2¹⁴ first keeps the small weights out of fp16's subnormals (the accumulators divide it out,
// exactly: a power of two). Each part costs one mma per V fragment; the V fragment is loaded once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/row_chunks.cuh"

namespace sparge::cuda {

constexpr int kEtThreads = 256;  // both kernels (rank_row in topcdf.cuh assumes 256 threads)
constexpr int kEtWarps = kEtThreads / 32;
constexpr int kUnitRows = 16;    // sampled rows of one unit: the m16 row tile of the mma

// The head dim an instance is compiled for: the smallest of 64, 128, 256 that holds head_dim
// (channels past head_dim are zero in every tile, so they add nothing to scores or outputs).
__host__ __device__ inline int error_target_instance_dim(int head_dim) {
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
}

template <typename T>
struct PvSplit;
template <>
struct PvSplit<__nv_bfloat16> {
  static constexpr int kParts = 3;
  static constexpr float kScale = 1.0f;
};
template <>
struct PvSplit<__half> {
  static constexpr int kParts = 2;
  static constexpr float kScale = 16384.0f;  // 2^14: P ≤ 2^14 < fp16's max, small P stay normal
};

template <typename T, int kHeadDim_>
struct EtTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  // Keys per step (a K and a V tile): 64, or 32 at head dim 256 so that the double-buffered
  // tiles stay within sm_80's shared memory beside the selection's sort buffer.
  static constexpr int kStepKeys = kHeadDim > 128 ? 32 : 64;
  static constexpr int kTileElems = kStepKeys * kHeadDim;
  static constexpr int kUnitElems = kUnitRows * kHeadDim;
  static constexpr int kParts = PvSplit<T>::kParts;
  static constexpr float kPScale = PvSplit<T>::kScale;
  // error_target_sample: channels of the exact output a warp accumulates per pass over the keys
  // (16 rows × 128 channels = 64 registers a thread; head dim 256 takes two passes).
  static constexpr int kExactChannels = kHeadDim > 128 ? 128 : kHeadDim;
  static constexpr int kChannelPasses = kHeadDim / kExactChannels;
  // error_target_rows: channels a warp owns in P·V (the eight warps split the head dim).
  static constexpr int kSliceChannels = kHeadDim / kEtWarps;
  static constexpr int kPRowKeys = 64;  // a P row in shared memory: 128 bytes, 8 swizzled chunks
  static_assert(kChunks >= 8, "the swizzle permutes 8 chunks per row");
  static_assert(kSliceChannels % 8 == 0, "a warp's P·V slice is whole 8-column mma tiles");
};

// Element offset of chunk c of row r in a row-major tile of kChunks chunks per row, the chunks
// XOR-swizzled by row: the 8 rows one ldmatrix reads fall in 8 different bank groups.
template <int kChunks>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kChunks * 8 + ((chunk ^ (row & 7)) * 8);
}

// Keys [key0, key0 + rows) of a (batch, kv head) slice of k or v into a swizzled tile; keys at
// or past seq_k and channels at or past head_dim are zero (a zero v row keeps 0·v finite).
// `vec`: rows_vectorizable, then cp.async (the caller commits), else 16-bit loads. CTA-wide.
template <typename Tr>
__device__ __forceinline__ void load_key_tile(typename Tr::Element* sTile,
                                              const typename Tr::Element* g, int64_t stride,
                                              int key0, int rows, int seq_k, int head_dim,
                                              bool vec) {
  for (int e = threadIdx.x; e < rows * Tr::kChunks; e += kEtThreads) {
    const int r = e / Tr::kChunks, c = e % Tr::kChunks;
    typename Tr::Element* dst = sTile + swizzled<Tr::kChunks>(r, c);
    const bool in = key0 + r < seq_k && c * kChunkElems < head_dim;
    const typename Tr::Element* row = g + int64_t(key0 + r) * stride;
    if (vec)
      cp_async_16(dst, in ? row + c * kChunkElems : g, in);
    else
      *reinterpret_cast<uint4*>(dst) = in ? load_chunk(row, c, head_dim, false) : make_uint4(0, 0, 0, 0);
  }
}

// The sampled rows of one unit (tile `unit` of query block i: sampled rows 16·unit + r) into a
// swizzled [16, kHeadDim] tile, zero past `count` and past head_dim. `first_thread`/`threads`:
// the threads that share the copy (a warp, or the CTA).
template <typename Tr>
__device__ __forceinline__ void load_unit_rows(typename Tr::Element* sQ,
                                               const typename Tr::Element* gQ, int64_t stride,
                                               int head_dim, bool vec, int64_t first, int64_t n,
                                               int64_t count, int unit, int thread, int threads) {
  for (int e = thread; e < kUnitRows * Tr::kChunks; e += threads) {
    const int r = e / Tr::kChunks, c = e % Tr::kChunks;
    const int64_t s = int64_t(unit) * kUnitRows + r;
    typename Tr::Element* dst = sQ + swizzled<Tr::kChunks>(r, c);
    const bool in = s < count && c * kChunkElems < head_dim;
    const typename Tr::Element* row =
        in ? gQ + detail::sampled_row(first, n, count, s) * stride : gQ;
    if (vec)
      cp_async_16(dst, in ? row + c * kChunkElems : gQ, in);
    else
      *reinterpret_cast<uint4*>(dst) = in ? load_chunk(row, c, head_dim, false) : make_uint4(0, 0, 0, 0);
  }
}

// The keys a unit's rows g and g + 8 (lane = 4g + t) see: [first, last], none when first > last
// (rows past `count` included).
struct UnitRowKeys {
  int first[2], last[2];
};
__device__ __forceinline__ UnitRowKeys unit_row_keys(const PredictParams& p, int64_t first_row,
                                                     int64_t n, int64_t count, int unit) {
  UnitRowKeys k;
  const int g = (threadIdx.x % 32) / 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t s = int64_t(unit) * kUnitRows + g + 8 * h;
    k.first[h] = 1, k.last[h] = 0;
    if (s < count) {
      const int64_t r = detail::sampled_row(first_row, n, count, s);
      k.first[h] = int(detail::first_visible_key(r, p.band));
      k.last[h] = int(detail::last_visible_key(r, p.band, p.seq_k));
    }
  }
  return k;
}

// S[n] += Q · K[keys 8·(n0 + n) ..]ᵀ for kN 8-key tiles, kN even (two tiles per ldmatrix.x4),
// of which only the first n_valid (even) are computed: raw dot products, fp32.
template <typename Tr, int kN>
__device__ __forceinline__ void unit_scores(const typename Tr::Element* sQ,
                                            const typename Tr::Element* sK, int n_valid,
                                            float (&s)[kN][4]) {
  static_assert(kN % 2 == 0, "key tiles come in pairs");
  const int lane = threadIdx.x % 32;
  const int q_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int k_row = (lane & 7) + (lane >> 4) * 8;
#pragma unroll
  for (int n = 0; n < kN; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < Tr::kHeadDim / 16; ++ks) {
    uint32_t a[4];
    ldmatrix_x4(a, sQ + swizzled<Tr::kChunks>(q_row, 2 * ks + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < kN / 2; ++np) {
      if (2 * np >= n_valid) break;
      uint32_t b[4];
      ldmatrix_x4(b, sK + swizzled<Tr::kChunks>(16 * np + k_row, 2 * ks + ((lane >> 3) & 1)));
      mma_16816<typename Tr::Element>(s[2 * np], a, b[0], b[1]);
      mma_16816<typename Tr::Element>(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// S = Q · K[keys 8·nt .. 8·nt + 7]ᵀ: one 8-key tile (error_target_rows gives one to each warp).
template <typename Tr>
__device__ __forceinline__ void unit_scores_one_tile(const typename Tr::Element* sQ,
                                                     const typename Tr::Element* sK, int nt,
                                                     float (&s)[4]) {
  const int lane = threadIdx.x % 32;
  const int q_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int k_row = 8 * nt + (lane & 7);
  s[0] = s[1] = s[2] = s[3] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < Tr::kHeadDim / 16; ++ks) {
    uint32_t a[4], b[2];
    ldmatrix_x4(a, sQ + swizzled<Tr::kChunks>(q_row, 2 * ks + (lane >> 4)));
    ldmatrix_x2(b, sK + swizzled<Tr::kChunks>(k_row, 2 * ks + ((lane >> 3) & 1)));
    mma_16816<typename Tr::Element>(s, a, b[0], b[1]);
  }
}

// Scores of one 8-key tile (C fragment, keys key0 + 2t, +1) to log2 units and masked: −∞ for
// the keys a row does not see. `mul` = scale · log2(e).
__device__ __forceinline__ void scale_and_mask(float (&s)[4], float mul, int key0,
                                               const UnitRowKeys& rk) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int key = key0 + 2 * t + (e & 1), h = e >> 1;
    s[e] = key >= rk.first[h] && key <= rk.last[h] ? s[e] * mul : -INFINITY;
  }
}

// The reference a row's probabilities are taken against: its maximum, or 0 when it sees no key
// (so that its −∞ scores give exactly 0, not NaN).
__device__ __forceinline__ float exp_base(float m) { return m == -INFINITY ? 0.0f : m; }

// One step of a unit's online max and sum of 2^t per row (pass 1 of the sampled rows and of the
// error target): t = mul · s, s the step's scores (masked) of this thread's rows g and g + 8 in
// its `tiles` 8-key tiles: log2 units with mul = 1, or raw q·k with mul = scale · log2 e, the
// scaling then folded into the exponentials' FFMA (a positive factor keeps the max: max(s)·mul
// is max(s·mul) exactly); m = the rows' running max in log2 units (the quad's, so that the
// partial sums z of the quad's threads share it and add up with quad_sum at the end). With
// mul = 1 the FFMA is s − base exactly, the subtraction it replaces.
// kShortChains (whole steps only, tiles == kN): the max as a tree and the sum as four partial
// sums per row, where one chain left each instruction waiting on the one before; it holds more
// registers, which the kernels near their limit (the error target, the mma.sync estimate) pay in
// spills, so they keep the chains. Both orders give the same max (fmaxf associates).
template <int kN, bool kShortChains = false>
__device__ __forceinline__ void online_max_sum(const float (&s)[kN][4], int tiles, float (&m)[2],
                                               float (&z)[2], float mul = 1.0f) {
  const bool short_chains = kShortChains && tiles == kN;
  float mx[2] = {-INFINITY, -INFINITY};
  if (short_chains) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
      mx[hh] = fragment_row_max(s, hh, [](float a, float b) { return fmaxf(a, b); });
  } else {
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n >= tiles) break;
      mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
    }
  }
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
    mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
    const float m_new = fmaxf(m[hh], mx[hh] * mul), base = exp_base(m_new);
    z[hh] *= exp2_approx(m[hh] - base);  // 0 while m is −∞
    m[hh] = m_new;
  }
  // exp2_approx: a sum that reaches its max's 1 ends the same as with exp2f's denormals.
  const float nb0 = -exp_base(m[0]), nb1 = -exp_base(m[1]);
  const auto pair_sum = [&](int n, int hh) {
    const float nb = hh == 0 ? nb0 : nb1;
    return exp2_approx(fmaf(s[n][2 * hh], mul, nb)) + exp2_approx(fmaf(s[n][2 * hh + 1], mul, nb));
  };
  if (short_chains) {
    constexpr int kSums = kN < 4 ? kN : 4;  // partial sums per row, added up in a fixed order
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float part[kSums];
#pragma unroll
      for (int n = 0; n < kN; ++n) part[n % kSums] = n < kSums ? pair_sum(n, hh) : part[n % kSums] + pair_sum(n, hh);
      float sum = part[0];
#pragma unroll
      for (int j = 1; j < kSums; ++j) sum += part[j];
      z[hh] += sum;
    }
  } else {
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n >= tiles) break;
      z[0] += pair_sum(n, 0);
      z[1] += pair_sum(n, 1);
    }
  }
}

// The quad's partial sums of rows g and g + 8 added up (every thread of the quad gets them).
__device__ __forceinline__ void quad_sum(float (&z)[2]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    z[hh] += __shfl_xor_sync(0xffffffffu, z[hh], 1);
    z[hh] += __shfl_xor_sync(0xffffffffu, z[hh], 2);
  }
}

// (a, b) as kParts 16-bit pairs whose sum is a, b to 8·kParts (bf16) / 11·kParts (fp16) bits:
// each part is the rounding of what the previous ones left (the residual is exact in fp32).
template <typename T>
__device__ __forceinline__ void split_pair(float a, float b,
                                           uint32_t (&out)[PvSplit<T>::kParts]) {
#pragma unroll
  for (int k = 0; k < PvSplit<T>::kParts; ++k) {
    out[k] = pack2<T>(a, b);
    const T* h = reinterpret_cast<const T*>(&out[k]);
    a -= to_float(h[0]);
    b -= to_float(h[1]);
  }
}

// The A fragments (per part) of the 16-key step kk of a warp's P held as C fragments of the 8-key
// tiles 2kk and 2kk + 1 (the C layout of two adjacent tiles is the A layout of one k step).
template <typename T, int kN>
__device__ __forceinline__ void p_fragments(const float (&pr)[kN][4], int kk,
                                            uint32_t (&a)[PvSplit<T>::kParts][4]) {
  uint32_t part[4][PvSplit<T>::kParts];
  split_pair<T>(pr[2 * kk][0], pr[2 * kk][1], part[0]);
  split_pair<T>(pr[2 * kk][2], pr[2 * kk][3], part[1]);
  split_pair<T>(pr[2 * kk + 1][0], pr[2 * kk + 1][1], part[2]);
  split_pair<T>(pr[2 * kk + 1][2], pr[2 * kk + 1][3], part[3]);
#pragma unroll
  for (int k = 0; k < PvSplit<T>::kParts; ++k)
#pragma unroll
    for (int f = 0; f < 4; ++f) a[k][f] = part[f][k];
}

}  // namespace sparge::cuda
