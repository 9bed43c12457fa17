// Mainloop pieces of the sm80 block-sparse attention kernel: global->shared tile loads
// (cp.async, zero-filled past the sequence end), the two warp GEMMs on tensor cores
// (S = Q·Kᵀ and O += P·V with mma.sync m16n8k16) and the element-wise tail/causal mask.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/attention/params.h"
#include "cuda/attention/traits.cuh"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"

namespace sparge::cuda {

// Rows [row0, row0 + kRows) of a (batch, head) slice into a swizzled smem tile; rows at or past
// `rows_valid` are zero-filled (their global address is never read).
template <typename Traits, int kRows>
__device__ __forceinline__ void load_tile_async(typename Traits::Element* sTile,
                                                const typename Traits::Element* gBase,
                                                int64_t stride_token, int row0, int rows_valid) {
  constexpr int kChunks = kRows * Traits::kChunksPerRow;
  static_assert(kChunks % Traits::kThreads == 0, "tile chunks must split evenly over threads");
#pragma unroll
  for (int it = 0; it < kChunks / Traits::kThreads; ++it) {
    const int id = threadIdx.x + it * Traits::kThreads;
    const int row = id / Traits::kChunksPerRow, chunk = id % Traits::kChunksPerRow;
    const bool valid = row0 + row < rows_valid;
    const auto* src = valid ? gBase + int64_t(row0 + row) * stride_token + chunk * Traits::kChunk
                            : gBase;
    cp_async_16(sTile + swizzle_offset<Traits::kChunksPerRow>(row, chunk), src, valid);
  }
}

// S[16 x kBlockN] = Q[warp rows] · K[tile]ᵀ for this warp (raw dot products, fp32).
template <typename Traits>
__device__ __forceinline__ void gemm_qk(const typename Traits::Element* sQ,
                                        const typename Traits::Element* sK, int warp, int lane,
                                        float (&s)[Traits::kBlockN / 8][4]) {
  using T = typename Traits::Element;
  constexpr int kCpr = Traits::kChunksPerRow;
#pragma unroll
  for (int n = 0; n < Traits::kBlockN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
  const int q_row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int k_row_in_pair = (lane & 7) + (lane >> 4) * 8;
#pragma unroll
  for (int ks = 0; ks < Traits::kHeadDim / 16; ++ks) {
    uint32_t a[4];
    ldmatrix_x4(a, sQ + swizzle_offset<kCpr>(q_row, ks * 2 + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < Traits::kBlockN / 16; ++np) {
      uint32_t b[4];  // b[0..1]: key tile 2np, b[2..3]: key tile 2np+1
      ldmatrix_x4(b, sK + swizzle_offset<kCpr>(np * 16 + k_row_in_pair, ks * 2 + ((lane >> 3) & 1)));
      mma_16816<T>(s[2 * np], a, b[0], b[1]);
      mma_16816<T>(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// O[16 x D] += P[16 x kBlockN] · V[tile]; P comes straight from the score registers (the C
// layout of two adjacent 8-column tiles is the A layout of one 16-deep k step).
template <typename Traits>
__device__ __forceinline__ void gemm_pv(const float (&p)[Traits::kBlockN / 8][4],
                                        const typename Traits::Element* sV, int lane,
                                        float (&acc)[Traits::kHeadDim / 8][4]) {
  using T = typename Traits::Element;
  constexpr int kCpr = Traits::kChunksPerRow;
  const int v_row_in_step = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
    uint32_t a[4];
    a[0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
    a[1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
    a[2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < Traits::kHeadDim / 16; ++dp) {
      uint32_t b[4];  // b[0..1]: channels 16dp..+7, b[2..3]: 16dp+8..+15
      ldmatrix_x4_trans(b, sV + swizzle_offset<kCpr>(kk * 16 + v_row_in_step, dp * 2 + (lane >> 4)));
      mma_16816<T>(acc[2 * dp], a, b[0], b[1]);
      mma_16816<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Scale to log2 units and set masked pairs to -inf: keys past seq_k, and (causal) key c > r + off.
// `needs_mask` is uniform per tile; interior tiles only scale.
template <typename Traits, bool kCausal>
__device__ __forceinline__ void scale_and_mask(float (&s)[Traits::kBlockN / 8][4],
                                               const AttnParams& p, int row_g, int key0,
                                               int lane, bool needs_mask) {
#pragma unroll
  for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] *= p.scale_log2;
  if (!needs_mask) return;
#pragma unroll
  for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + n * 8 + (lane & 3) * 2 + (e & 1);
      const int row = row_g + (e >> 1) * 8;
      bool masked = key >= p.seq_k;
      if (kCausal) masked = masked || key > row + p.causal_offset;
      if (masked) s[n][e] = -INFINITY;
    }
}

}  // namespace sparge::cuda
