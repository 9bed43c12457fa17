// Mainloop pieces of the sm80 block-sparse attention kernel: global->shared tile loads
// (cp.async, zero-filled past the sequence end), the two warp GEMMs on tensor cores
// (S = Q·Kᵀ and O += P·V with mma.sync m16n8k16, or S from INT8 codes with m16n8k32 s8; two
// 16-row slabs per warp), the element-wise tail/band (causal, window) mask and a dense
// attention mask's.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/attention/params.h"
#include "cuda/attention/traits.cuh"
#include "cuda/common/dense_mask.cuh"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"

namespace sparge::cuda {

// Rows [row0, row0 + kRows) of a (batch, head) slice into a swizzled smem tile; rows at or past
// `rows_valid` are zero-filled (their global address is never read). Each thread copies one
// chunk column every kRowsPerPass rows: kRowsPerPass is a multiple of 8, so the swizzle of its
// chunk is the same on every pass and the shared address is a constant offset; the global
// pointer advances by one increment, so no per-pass 64-bit addresses stay live in registers.
// E is the tile's element (Traits::Element, or int8_t for the codes of the kInt8Qk kernel).
template <typename Traits, int kRows, typename E = typename Traits::Element>
__device__ __forceinline__ void load_tile_async(E* sTile, const E* gBase, int64_t stride_token,
                                                int row0, int rows_valid) {
  constexpr int kChunk = 16 / int(sizeof(E));
  constexpr int kCpr = Traits::kHeadDim / kChunk;
  constexpr int kRowsPerPass = Traits::kThreads / kCpr;
  static_assert(Traits::kThreads % kCpr == 0 && kRowsPerPass % 8 == 0 && kRows % kRowsPerPass == 0,
                "tile chunks must split evenly over threads in whole swizzle periods");
  const int row = threadIdx.x / kCpr, chunk = threadIdx.x % kCpr;
  auto* dst = sTile + swizzle_offset<kCpr, kChunk>(row, chunk);
  const auto* src = gBase + int64_t(row0 + row) * stride_token + chunk * kChunk;
  const int64_t step = int64_t(kRowsPerPass) * stride_token;
#pragma unroll
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    const bool valid = row0 + row + pass * kRowsPerPass < rows_valid;
    cp_async_16(dst + pass * kRowsPerPass * kCpr * kChunk, valid ? src : gBase, valid);
    src += step;
  }
}

// Score tile of one warp: S[slab][n-tile][C fragment], raw dot products in fp32.
template <typename Traits>
using ScoreTile = float[Traits::kSlabs][Traits::kBlockN / 8][4];
// P of one warp packed to the input type, already in the A layout of the P·V mma.
template <typename Traits>
using ProbTile = uint32_t[Traits::kSlabs][Traits::kBlockN / 16][4];
// O accumulator of one warp.
template <typename Traits>
using AccTile = float[Traits::kSlabs][Traits::kHeadDim / 8][4];

// S = Q[warp rows] · K[tile]ᵀ. Each K fragment feeds the mma of both slabs. With kInt8Qk the
// tiles hold INT8 codes: the same ldmatrix addresses (in 16-byte chunks) feed m16n8k32 s8 steps
// into int32 sums, which `dequantize` turns into scores.
template <typename Traits, typename Acc>
__device__ __forceinline__ void gemm_qk(const typename Traits::QkElement* sQ,
                                        const typename Traits::QkElement* sK, int warp, int lane,
                                        Acc (&s)[Traits::kSlabs][Traits::kBlockN / 8][4]) {
  using T = typename Traits::Element;
  constexpr int kCpr = Traits::kQkChunksPerRow, kChunk = Traits::kQkChunk;
#pragma unroll
  for (int j = 0; j < Traits::kSlabs; ++j)
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n) s[j][n][0] = s[j][n][1] = s[j][n][2] = s[j][n][3] = 0;
  const int q_row = warp * Traits::kRowsPerWarp + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int k_row_in_pair = (lane & 7) + (lane >> 4) * 8;
#pragma unroll
  for (int ks = 0; ks < Traits::kHeadDim / Traits::kQkStep; ++ks) {
    uint32_t a[Traits::kSlabs][4];
#pragma unroll
    for (int j = 0; j < Traits::kSlabs; ++j)
      ldmatrix_x4(a[j], sQ + swizzle_offset<kCpr, kChunk>(q_row + j * Traits::kSlabRows,
                                                          ks * 2 + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < Traits::kBlockN / 16; ++np) {
      uint32_t b[4];  // b[0..1]: key tile 2np, b[2..3]: key tile 2np+1
      ldmatrix_x4(b, sK + swizzle_offset<kCpr, kChunk>(np * 16 + k_row_in_pair,
                                                       ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
      for (int j = 0; j < Traits::kSlabs; ++j) {
        if constexpr (Traits::kInt8Qk) {
          mma_16832_s8(s[j][2 * np], a[j], b[0], b[1]);
          mma_16832_s8(s[j][2 * np + 1], a[j], b[2], b[3]);
        } else {
          mma_16816<T>(s[j][2 * np], a[j], b[0], b[1]);
          mma_16816<T>(s[j][2 * np + 1], a[j], b[2], b[3]);
        }
      }
    }
  }
}

// Scores in log2 units from the int32 sums of the kInt8Qk kernel: t = Σ q8·k8 · (s_q · scale ·
// log2 e) · s_k (the CPU emulation's order), with q_factor[j][i] the first factor of this
// thread's row i of slab j and k_factor[n / 2] the scale of the tile's 16 keys that n-tile n
// lies in (an 8-column tile never straddles two).
template <typename Traits>
__device__ __forceinline__ void dequantize(const int32_t (&si)[Traits::kSlabs][Traits::kBlockN / 8][4],
                                           const float (&q_factor)[Traits::kSlabs][2],
                                           const float (&k_factor)[Traits::kBlockN / 16],
                                           ScoreTile<Traits>& s) {
#pragma unroll
  for (int j = 0; j < Traits::kSlabs; ++j)
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[j][n][e] = __fmul_rn(__fmul_rn(float(si[j][n][e]), q_factor[j][e >> 1]), k_factor[n / 2]);
}

// P of one slab from its score registers: the C layout of two adjacent 8-column tiles is the A
// layout of one 16-deep k step.
template <typename Traits>
__device__ __forceinline__ void pack_probs(const float (&s)[Traits::kBlockN / 8][4],
                                           uint32_t (&p)[Traits::kBlockN / 16][4]) {
  using T = typename Traits::Element;
#pragma unroll
  for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
    p[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    p[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    p[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    p[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// O[slab] += P[slab] · V[tile] for the slabs set in kSlabMask (bit j = slab j); each V fragment
// feeds every selected slab. The mask is a template argument so that no branch sits in the loop.
template <typename Traits, int kSlabMask>
__device__ __forceinline__ void gemm_pv(const ProbTile<Traits>& p,
                                        const typename Traits::Element* sV, int lane,
                                        AccTile<Traits>& acc) {
  using T = typename Traits::Element;
  constexpr int kCpr = Traits::kChunksPerRow;
  const int v_row_in_step = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
#pragma unroll
    for (int dp = 0; dp < Traits::kHeadDim / 16; ++dp) {
      uint32_t b[4];  // b[0..1]: channels 16dp..+7, b[2..3]: 16dp+8..+15
      ldmatrix_x4_trans(b, sV + swizzle_offset<kCpr>(kk * 16 + v_row_in_step, dp * 2 + (lane >> 4)));
#pragma unroll
      for (int j = 0; j < Traits::kSlabs; ++j) {
        if (!(kSlabMask & (1 << j))) continue;
        mma_16816<T>(acc[j][2 * dp], p[j][kk], b[0], b[1]);
        mma_16816<T>(acc[j][2 * dp + 1], p[j][kk], b[2], b[3]);
      }
    }
  }
}

// Whether the block of keys [key0, key0 + kBlockN) needs element masking for the CTA's rows
// [q0, q0 + kBlockM): keys at or past key_end (seq_k, or the batch entry's key length:
// key_end_of), or (banded) a pair outside key_lo <= key - row <= key_hi.
template <typename Traits, bool kBanded>
__device__ __forceinline__ bool block_needs_mask(const AttnParams& p, int key_end, int key0, int q0) {
  return key0 + Traits::kBlockN > key_end ||
         (kBanded && (key0 + Traits::kBlockN - 1 - q0 > p.key_hi ||
                      key0 - (q0 + Traits::kBlockM - 1) < p.key_lo));
}

// Set masked pairs of one slab to -inf: keys at or past key_end, and (banded) keys outside the
// row's band. Called only on tiles for which block_needs_mask holds.
// Each row's visible columns are two bounds (detail::visible_columns), so a score costs two
// compares with immediates and a select.
template <typename Traits, bool kBanded>
__device__ __forceinline__ void apply_mask(float (&s)[Traits::kBlockN / 8][4], const AttnParams& p,
                                           int key_end, int row_g, int key0, int lane) {
  const int c0 = key0 + (lane & 3) * 2;  // this thread's first column: keys c0 + 8n + {0, 1}
  const detail::VisibleColumns visible[2] = {
      detail::visible_columns(row_g, c0, key_end, p.key_lo, p.key_hi, kBanded, Traits::kBlockN),
      detail::visible_columns(row_g + 8, c0, key_end, p.key_lo, p.key_hi, kBanded, Traits::kBlockN)};
#pragma unroll
  for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (!visible[e >> 1].contains(n * 8 + (e & 1))) s[n][e] = -INFINITY;
}

// A dense attention mask on one slab of a kept tile whose class is not plain (banded instances,
// after apply_mask): skipped, every score -inf; partial, a pair the mask hides -inf and the
// others plus its value in the scores' units (mask_factor: log2 e over the factor the softmax
// applies), held at mask_floor or above so that a finite mask value keeps the score finite (a
// row of finfo.min values attends uniformly, as in SDPA and the CPU backends). Pairs already
// -inf (band, key padding) and rows past seq_q are not read.
template <typename Traits>
__device__ __forceinline__ void apply_dense_mask(float (&s)[Traits::kBlockN / 8][4],
                                                 const AttnParams& p, uint8_t cls, int b, int h,
                                                 int row_g, int key0, int lane, float mask_factor,
                                                 float mask_floor) {
  if (cls == kTileSkipped) {
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n)
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = -INFINITY;
    return;
  }
  const DenseMaskView& m = p.attn_mask;
  const int64_t row_off[2] = {dense_mask_row(m, b, h, row_g), dense_mask_row(m, b, h, row_g + 8)};
  const bool row_in[2] = {row_g < p.seq_q, row_g + 8 < p.seq_q};
  with_mask_type(m, [&](auto element) {
    using E = decltype(element);
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (!row_in[e >> 1] || s[n][e] == -INFINITY) continue;
        const int key = key0 + n * 8 + (lane & 3) * 2 + (e & 1);
        const float v = dense_mask_at<E>(m.data, row_off[e >> 1] + int64_t(key) * m.stride_k);
        float add = v * mask_factor;
        if (add < mask_floor) add = mask_floor;  // NaN compares false: it reaches the score
        s[n][e] = v == -INFINITY ? -INFINITY : s[n][e] + add;
      }
  });
}

}  // namespace sparge::cuda
