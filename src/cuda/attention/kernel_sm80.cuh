// Block-sparse attention forward, sm80+ (mma.sync).
//   o = softmax(scale · q kᵀ + mask) v over the key tiles the BlockMask keeps, online softmax in
//   log2 units, P·V skipped per 16-row slab by the λ rule of docs/method.md.
// CTA = 128 query rows of one (batch, head), 4 warps × 32 rows (two m16 slabs per warp, so each
// K/V fragment read from shared memory feeds two mma); key tiles of 64.
// Shared memory: Q (128×D) + K (64×D) + V (64×D), swizzled; V of tile t loads during QKᵀ of t,
// K of tile t+1 during P·V of t (FlashAttention-2 schedule).
// Chosen by dispatch.cu on every device but sm_90 with sm_90a code (kernel_sm90.cuh runs there),
// and everywhere with SPARGE_CUDA_KERNEL=sm80. With Traits::kInt8Qk (QuantMode::kInt8, every
// device) Q and K are the quantization pass's INT8 codes and scales (AttnParamsSm80Q8): S comes
// from m16n8k32 s8 sums scaled per query row and per 16 keys, the rest is the exact kernel's, and
// the LSE gets back what smoothing K took from the scores. Its kDenseMask instances (banded) also
// take a dense attention mask (AttnParams::attn_mask: element values on the tiles whose classes
// say so); the others do not read it.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cuda/attention/block_iter.cuh"
#include "cuda/attention/epilogue.cuh"
#include "cuda/attention/mainloop_sm80.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/quant_lse.cuh"
#include "cuda/attention/quant_operands_sm80.cuh"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/traits.cuh"

namespace sparge::cuda {

template <typename Traits, bool kBanded, typename Params, bool kDenseMask = false>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm) attn_fwd_sm80(const Params p) {
  using T = typename Traits::Element;
  using QkT = typename Traits::QkElement;
  constexpr int kNTiles = Traits::kBlockN / 8;
  constexpr int kSlabs = Traits::kSlabs;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  QkT* sQ = reinterpret_cast<QkT*>(smem_raw);
  QkT* sK = reinterpret_cast<QkT*>(smem_raw + Traits::kQBytes);
  T* sV = reinterpret_cast<T*>(smem_raw + Traits::kQBytes + Traits::kKBytes);

  // Banded: under causality late query blocks are the heavy ones; run them first so that the
  // tail of the grid is short (harmless for a window, whose rows are all alike).
  const int qb = kBanded ? p.num_q_blocks - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  // Keys past key_end (seq_k, or the batch entry's key length) are loaded as zeros and masked,
  // so that a padding key adds no p·v term even where its v row is not finite.
  const int key_end = key_end_of(p, b);
  const int hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = qb * Traits::kBlockM;
  const int slab0 = q0 + warp * Traits::kRowsPerWarp;  // first row of the warp's slab 0
  int row_g[kSlabs];        // this thread's row g of each slab (row g + 8 is its second row)
  bool row_exists[kSlabs][2];
  bool slab_exists[kSlabs];  // a slab whose rows all lie past seq_q is no λ group at all
#pragma unroll
  for (int j = 0; j < kSlabs; ++j) {
    row_g[j] = slab0 + j * Traits::kSlabRows + lane / 4;
    row_exists[j][0] = row_g[j] < p.seq_q;
    row_exists[j][1] = row_g[j] + 8 < p.seq_q;
    slab_exists[j] = slab0 + j * Traits::kSlabRows < p.seq_q;
  }
  const float lambda = p.pv_lambda_per_head ? p.pv_lambda[h] : p.pv_lambda_uniform;
  // kInt8Qk: the scores arrive in log2 units (dequantize folds scale · log2 e into q_factor).
  const float scale_log2 = Traits::kInt8Qk ? 1.0f : p.scale_log2;
  // A dense attention mask (kDenseMask instances, which are banded): its values join the scores
  // in their units.
  static_assert(!kDenseMask || kBanded, "the dense-mask instances are banded");
  const bool dense_mask = kDenseMask && p.attn_mask.data != nullptr;
  const float mask_factor = kLog2e / scale_log2;
  const float mask_floor = -FLT_MAX / fmaxf(1.0f, scale_log2);

  const QkOperands<Traits> qk(p, b, h, hk);
  const QkT* gQ = qk.q;
  const QkT* gK = qk.k;
  const T* gV = static_cast<const T*>(p.v) + int64_t(b) * p.v_stride[0] + int64_t(hk) * p.v_stride[1];
  float q_factor[kSlabs][2];  // kInt8Qk: s_q(row) · scale · log2 e of this thread's rows
  if constexpr (Traits::kInt8Qk) {
#pragma unroll
    for (int j = 0; j < kSlabs; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        q_factor[j][i] = row_exists[j][i]
                             ? __fmul_rn(__ldg(qk.q_scale + row_g[j] + 8 * i), p.scale_log2)
                             : 0.0f;
  }

  BlockIter tiles(p, (int64_t(b) * p.heads_q + h) * p.num_q_blocks + qb);
  load_tile_async<Traits, Traits::kBlockM>(sQ, gQ, qk.q_token_stride(), q0, p.seq_q);
  if (!tiles.done())
    load_tile_async<Traits, Traits::kBlockN>(sK, gK, qk.k_token_stride(), tiles.block() * Traits::kBlockN, key_end);
  cp_async_commit();

  OnlineSoftmax<kNTiles> softmax[kSlabs];
  AccTile<Traits> acc;
#pragma unroll
  for (int j = 0; j < kSlabs; ++j) {
    softmax[j].init();
#pragma unroll
    for (int d = 0; d < Traits::kHeadDim / 8; ++d) acc[j][d][0] = acc[j][d][1] = acc[j][d][2] = acc[j][d][3] = 0.0f;
  }
  unsigned visited = 0, skipped = 0;  // (slab, tile) pairs of this warp

  while (!tiles.done()) {
    const int key0 = tiles.block() * Traits::kBlockN;
    cp_async_wait_all();
    __syncthreads();  // K[t] landed; every warp is done with V[t-1]
    load_tile_async<Traits, Traits::kBlockN>(sV, gV, p.v_stride[2], key0, key_end);
    cp_async_commit();

    ScoreTile<Traits> s;  // S = Q·Kᵀ, raw (kInt8Qk: in log2 units)
    if constexpr (Traits::kInt8Qk) {
      int32_t si[kSlabs][kNTiles][4];
      gemm_qk<Traits>(sQ, sK, warp, lane, si);
      float k_factor[Traits::kBlockN / 16];
      qk.key_scales(key0, k_factor);
      dequantize<Traits>(si, q_factor, k_factor, s);
    } else {
      gemm_qk<Traits>(sQ, sK, warp, lane, s);
    }
    const uint8_t cls = dense_mask ? tile_class_of(p.attn_mask, b, h, qb, tiles.block(),
                                                   p.num_q_blocks, p.num_k_blocks)
                                   : kTilePlain;
    const bool needs_mask = block_needs_mask<Traits, kBanded>(p, key_end, key0, q0) || cls != kTilePlain;
    ProbTile<Traits> prob;
    int run_mask = 0;  // bit j: slab j computes P·V for this tile (warp-uniform)
#pragma unroll
    for (int j = 0; j < kSlabs; ++j) {
      if (needs_mask) apply_mask<Traits, kBanded>(s[j], p, key_end, row_g[j], key0, lane);
      if (cls != kTilePlain)
        apply_dense_mask<Traits>(s[j], p, cls, b, h, row_g[j], key0, lane, mask_factor, mask_floor);
      float m_loc[2];
      OnlineSoftmax<kNTiles>::tile_max(s[j], scale_log2, m_loc);
      const bool skip = softmax[j].slab_skips(m_loc, row_exists[j], lambda);
      if (slab_exists[j]) {
        ++visited;
        skipped += skip;
      }
      if (!skip) {
        softmax[j].update(s[j], m_loc, scale_log2, acc[j]);  // P = 2^(s·c - m_new), acc, l rescaled
        pack_probs<Traits>(s[j], prob[j]);
        run_mask |= 1 << j;
      }
    }

    cp_async_wait_all();
    __syncthreads();  // V[t] landed; every warp is done with K[t]
    tiles.next();
    if (!tiles.done())
      load_tile_async<Traits, Traits::kBlockN>(sK, gK, qk.k_token_stride(), tiles.block() * Traits::kBlockN, key_end);
    cp_async_commit();
    // O += P·V for the slabs that did not skip.
    if (run_mask == 3)
      gemm_pv<Traits, 3>(prob, sV, lane, acc);
    else if (run_mask == 1)
      gemm_pv<Traits, 1>(prob, sV, lane, acc);
    else if (run_mask == 2)
      gemm_pv<Traits, 2>(prob, sV, lane, acc);
  }

#pragma unroll
  for (int j = 0; j < kSlabs; ++j) {
    float l[2];
    softmax[j].finalize(l);
    float lse_add[2] = {0.0f, 0.0f};
    if constexpr (Traits::kInt8Qk) {
      const float* km = p.km + (int64_t(b) * p.heads_kv + hk) * Traits::kHeadDim;
      smoothing_lse_shift<T, Traits::kHeadDim>(p, km, b, h, row_g[j], row_exists[j], lane, lse_add);
    }
    store_output<Traits>(p, b, h, row_g[j], lane, acc[j], softmax[j].row_max, l, lse_add);
  }
  add_pv_counters(p, h, lane, visited, skipped);
}

}  // namespace sparge::cuda
