// Block-sparse attention forward, sm80+ (mma.sync; also the kernel used on sm_90a for now).
//   o = softmax(scale · q kᵀ + mask) v over the key tiles the BlockMask keeps, online softmax in
//   log2 units, P·V skipped per warp (16 rows) by the λ rule of docs/method.md.
// CTA = 128 query rows of one (batch, head), 8 warps × 16 rows; key tiles of 64.
// Shared memory: Q (128×D) + K (64×D) + V (64×D), swizzled; V of tile t loads during QKᵀ of t,
// K of tile t+1 during P·V of t (FlashAttention-2 schedule).
// Chosen for every supported (dtype, head dim, causal) by dispatch.cu.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/attention/block_iter.cuh"
#include "cuda/attention/epilogue.cuh"
#include "cuda/attention/mainloop_sm80.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/traits.cuh"

namespace sparge::cuda {

template <typename Traits, bool kCausal>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm) attn_fwd_sm80(const AttnParams p) {
  using T = typename Traits::Element;
  constexpr int kNTiles = Traits::kBlockN / 8;
  constexpr int kOTiles = Traits::kHeadDim / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Traits::kQElems;
  T* sV = sK + Traits::kKVElems;

  // Causal: heavy (late) query blocks first so that the tail of the grid is short.
  const int qb = kCausal ? p.num_q_blocks - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = qb * Traits::kBlockM;
  const int row_g = q0 + warp * 16 + lane / 4;
  const bool row_exists[2] = {row_g < p.seq_q, row_g + 8 < p.seq_q};
  const bool group_exists = q0 + warp * 16 < p.seq_q;
  const float lambda = p.pv_lambda_per_head ? p.pv_lambda[h] : p.pv_lambda_uniform;

  const T* gQ = static_cast<const T*>(p.q) + int64_t(b) * p.q_stride[0] + int64_t(h) * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + int64_t(b) * p.k_stride[0] + int64_t(hk) * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + int64_t(b) * p.v_stride[0] + int64_t(hk) * p.v_stride[1];

  BlockIter tiles(p, (int64_t(b) * p.heads_q + h) * p.num_q_blocks + qb);
  load_tile_async<Traits, Traits::kBlockM>(sQ, gQ, p.q_stride[2], q0, p.seq_q);
  if (!tiles.done())
    load_tile_async<Traits, Traits::kBlockN>(sK, gK, p.k_stride[2], tiles.block() * Traits::kBlockN, p.seq_k);
  cp_async_commit();

  OnlineSoftmax<kNTiles> softmax;
  softmax.init();
  float acc[kOTiles][4];
#pragma unroll
  for (int d = 0; d < kOTiles; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
  unsigned visited = 0, skipped = 0;

  while (!tiles.done()) {
    const int key0 = tiles.block() * Traits::kBlockN;
    cp_async_wait_all();
    __syncthreads();  // K[t] landed; every warp is done with V[t-1]
    load_tile_async<Traits, Traits::kBlockN>(sV, gV, p.v_stride[2], key0, p.seq_k);
    cp_async_commit();

    float s[kNTiles][4];  // S = Q·Kᵀ
    gemm_qk<Traits>(sQ, sK, warp, lane, s);
    const bool needs_mask = key0 + Traits::kBlockN > p.seq_k ||
                            (kCausal && key0 + Traits::kBlockN - 1 > q0 + p.causal_offset);
    scale_and_mask<Traits, kCausal>(s, p, row_g, key0, lane, needs_mask);
    float m_loc[2];
    OnlineSoftmax<kNTiles>::tile_max(s, m_loc);
    const bool skip = softmax.warp_skips(m_loc, row_exists, lambda);
    if (group_exists) {
      ++visited;
      skipped += skip;
    }
    if (!skip) softmax.update(s, m_loc, acc);  // P = 2^(t - m_new), acc and l rescaled

    cp_async_wait_all();
    __syncthreads();  // V[t] landed; every warp is done with K[t]
    tiles.next();
    if (!tiles.done())
      load_tile_async<Traits, Traits::kBlockN>(sK, gK, p.k_stride[2], tiles.block() * Traits::kBlockN, p.seq_k);
    cp_async_commit();
    if (!skip) gemm_pv<Traits>(s, sV, lane, acc);  // O += P·V
  }

  float l[2];
  softmax.finalize(l);
  store_output<Traits>(p, b, h, row_g, lane, acc, softmax.row_max, l);
  add_pv_counters(p, h, lane, visited, skipped);
}

}  // namespace sparge::cuda
