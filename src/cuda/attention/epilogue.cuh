// Epilogue of the attention kernel: o_r = acc_r / l_r (0 when l_r = 0: the row saw no key),
// lse_r = ln 2 · (m_r + log2 l_r) + lse_add_r (-inf when l_r = 0; lse_add: the quantized
// kernel's shift, mainloop_sm90_q8.cuh), and the per-head λ-skip counters.
// l_r = 0 exactly when the row saw no key (a row that saw one has a term 2^0 = 1); its zeros are
// selected, not acc·0, since acc may hold 0·NaN from a NaN v row of a key masked for this row.
// A NaN l_r (a NaN score) is not 0, so o_r and lse_r come out NaN.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/attention/params.h"
#include "cuda/common/math.cuh"

namespace sparge::cuda {

// The LSE of this thread's two rows (one thread of the quad writes it), rows past seq_q skipped.
__device__ __forceinline__ void store_lse(const AttnParams& p, int b, int h, int row_g, int lane,
                                          const float (&row_max)[2], const float (&l)[2],
                                          const float (&lse_add)[2]) {
  if (p.lse == nullptr || (lane & 3) != 0) return;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row_g + 8 * i;
    if (row >= p.seq_q) continue;
    const float lse = l[i] == 0.0f ? -INFINITY : kLn2 * (row_max[i] + log2f(l[i])) + lse_add[i];
    p.lse[(int64_t(b) * p.heads_q + h) * p.seq_q + row] = lse;
  }
}

// o_r of this thread's accumulator entries: acc · (1 / l_r), or 0 for a row without keys.
__device__ __forceinline__ float normalized(float acc, float l, float inv_l) {
  return l == 0.0f ? 0.0f : acc * inv_l;
}

// O and the LSE straight from the registers of the mma.sync / wgmma accumulator layout (each
// quad of threads writes 16 bytes of a row per 8-column tile).
template <typename Traits>
__device__ __forceinline__ void store_output(const AttnParams& p, int b, int h, int row_g,
                                             int lane, const float (&acc)[Traits::kHeadDim / 8][4],
                                             const float (&row_max)[2], const float (&l)[2],
                                             const float (&lse_add)[2] = {0.0f, 0.0f}) {
  using T = typename Traits::Element;
  auto* gO = static_cast<T*>(p.o) + int64_t(b) * p.o_stride[0] + int64_t(h) * p.o_stride[1];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row_g + 8 * i;
    if (row >= p.seq_q) continue;
    const float inv = 1.0f / l[i];
    T* dst = gO + int64_t(row) * p.o_stride[2] + (lane & 3) * 2;
#pragma unroll
    for (int d = 0; d < Traits::kHeadDim / 8; ++d)
      *reinterpret_cast<uint32_t*>(dst + d * 8) =
          pack2<T>(normalized(acc[d][2 * i], l[i], inv), normalized(acc[d][2 * i + 1], l[i], inv));
  }
  store_lse(p, b, h, row_g, lane, row_max, l, lse_add);
}

// One atomic pair per warp and CTA: (row group, tile) pairs visited and skipped.
__device__ __forceinline__ void add_pv_counters(const AttnParams& p, int h, int lane,
                                                unsigned visited, unsigned skipped) {
  if (p.pv_counters == nullptr || lane != 0 || visited == 0) return;
  atomicAdd(p.pv_counters + 2 * h, static_cast<unsigned long long>(visited));
  if (skipped) atomicAdd(p.pv_counters + 2 * h + 1, static_cast<unsigned long long>(skipped));
}

}  // namespace sparge::cuda
