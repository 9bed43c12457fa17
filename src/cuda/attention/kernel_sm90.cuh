// Block-sparse attention forward on Hopper (sm_90a): warpgroup MMA (wgmma) for QKᵀ and P·V.
//   Same function as attn_fwd_sm80 (online softmax in log2 units, exact tail/causal masking, the
//   λ rule per 16-row group, empty rows -> 0), chosen by dispatch.cu on sm_90 devices.
// CTA = 128 query rows (one BlockMask row), two warpgroups of 64 rows; key tiles of 64.
// Schedule per kept tile t (one __syncthreads):
//   loads of K[t+1] and V[t] start  |  issue S[t] = Q·K[t]ᵀ, then O += P[t-1]·V[t-1]
//   wait for S[t]: mask, tile max, λ rule, exponentiate (P·V of t-1 still runs on the tensor
//   cores meanwhile)  |  wait for P·V: rescale O, pack P[t].
// λ skip: a warp whose 16 rows skip sets its P to 0 and leaves m and l alone, so its rows get
// exactly the sm80 result and the counters count the same groups; unlike the sm80 kernel this
// saves no tensor work (the warpgroup-wide P·V wgmma is issued for every tile).
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/attention/block_iter.cuh"
#include "cuda/attention/epilogue.cuh"
#include "cuda/attention/mainloop_sm80.cuh"
#include "cuda/attention/mainloop_sm90.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/traits_sm90.cuh"

namespace sparge::cuda {

template <typename Traits, bool kBanded>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    attn_fwd_sm90(const AttnParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::Element;
  constexpr int kNTiles = Traits::kBlockN / 8;
  constexpr int kOTiles = Traits::kHeadDim / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // SW128 atoms must start 1024-byte aligned (kSmemBytes reserves the slack).
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t pad = (kSw128AtomBytes - (raw_addr % kSw128AtomBytes)) % kSw128AtomBytes;
  unsigned char* base = smem_raw + pad;
  T* sQ = reinterpret_cast<T*>(base);
  const uint32_t sQ_addr = raw_addr + pad;
  const uint32_t sK_addr0 = sQ_addr + Traits::kQBytes;
  const uint32_t sV_addr0 = sK_addr0 + Traits::kStages * Traits::kKVBytes;
  auto sK = [&](int stage) { return reinterpret_cast<T*>(base + Traits::kQBytes + stage * Traits::kKVBytes); };
  auto sV = [&](int stage) {
    return reinterpret_cast<T*>(base + Traits::kQBytes + (Traits::kStages + stage) * Traits::kKVBytes);
  };

  // Banded: under causality late query blocks are the heavy ones; run them first so that the
  // tail of the grid is short (harmless for a window, whose rows are all alike).
  const int qb = kBanded ? p.num_q_blocks - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  // Keys past key_end (seq_k, or the batch entry's key length) are loaded as zeros and masked,
  // so that a padding key adds no p·v term even where its v row is not finite.
  const int key_end = key_end_of(p, b);
  const int hk = h / p.group;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int q0 = qb * Traits::kBlockM;
  const int slab0 = q0 + wg * 64 + warp * Traits::kSlabRows;  // this warp's 16 rows
  const int row_g = slab0 + lane / 4;                           // and g + 8
  const bool row_exists[2] = {row_g < p.seq_q, row_g + 8 < p.seq_q};
  const bool slab_exists = slab0 < p.seq_q;
  const float lambda = p.pv_lambda_per_head ? p.pv_lambda[h] : p.pv_lambda_uniform;
  const float scale_log2 = p.scale_log2;

  const T* gQ = static_cast<const T*>(p.q) + int64_t(b) * p.q_stride[0] + int64_t(h) * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + int64_t(b) * p.k_stride[0] + int64_t(hk) * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + int64_t(b) * p.v_stride[0] + int64_t(hk) * p.v_stride[1];

  OnlineSoftmax<kNTiles> softmax;
  softmax.init();
  float acc[kOTiles][4];
#pragma unroll
  for (int d = 0; d < kOTiles; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
  unsigned visited = 0, skipped = 0;

  // The Q load needs no mask entry: start it before the dependent reads of the mask row, so that
  // their latency and the Q load overlap (short rows of a sparse mask are latency-bound).
  load_tile_sw128<Traits, Traits::kBlockM>(sQ, gQ, p.q_stride[2], q0, p.seq_q);
  BlockIter next(p, (int64_t(b) * p.heads_q + h) * p.num_q_blocks + qb);
  if (next.done()) {
    cp_async_wait_all();  // no copy may land after the CTA has left
  } else {
    float s[kNTiles][4];                      // scores of the tile being processed
    uint32_t prob[Traits::kBlockN / 16][4];   // P of the previous tile, A operand of its P·V
    float alpha[2];
    int stage = 0;                            // K/V stage of the tile in `s`

    // Mask, tile max, λ rule and exponentiation of the tile in `s` (key0 = its first key);
    // sets alpha (1 when the warp skips: its rows keep m, l and O).
    bool warp_skips = false;
    auto scores_to_probs = [&](int key0) {
      const bool needs_mask = block_needs_mask<Traits, kBanded>(p, key_end, key0, q0);
      if (needs_mask) apply_mask<Traits, kBanded>(s, p, key_end, row_g, key0, lane);
      float m_loc[2];
      OnlineSoftmax<kNTiles>::tile_max(s, scale_log2, m_loc);
      warp_skips = softmax.slab_skips(m_loc, row_exists, lambda);
      if (slab_exists) {
        ++visited;
        skipped += warp_skips;
      }
      alpha[0] = alpha[1] = 1.0f;
      if (!warp_skips) softmax.exponentiate(s, m_loc, scale_log2, alpha);
    };
    // P of a skipping warp is 0. Zero its scores rather than P: a P defined on two paths makes
    // the compiler serialize the wgmma pipeline (C7513).
    auto pack = [&]() {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = warp_skips ? 0.0f : s[n][e];
      pack_probs<Traits>(s, prob);
    };

    // Prologue: group 1 = Q and K of the first tile, group 2 = K of the second and V of the
    // first, all in flight at once; the first scores need group 1 only.
    int key0 = next.block() * Traits::kBlockN;
    load_tile_sw128<Traits, Traits::kBlockN>(sK(0), gK, p.k_stride[2], key0, key_end);
    cp_async_commit();
    BlockIter after = next;
    after.next();
    if (!after.done())
      load_tile_sw128<Traits, Traits::kBlockN>(sK(1), gK, p.k_stride[2], after.block() * Traits::kBlockN, key_end);
    load_tile_sw128<Traits, Traits::kBlockN>(sV(0), gV, p.v_stride[2], key0, key_end);
    cp_async_commit();
    cp_async_wait_groups<1>();
    fence_proxy_async_smem();
    __syncthreads();
    fence_operands(s);
    wgmma_fence();
    issue_qk<Traits>(s, sQ_addr, sK_addr0, wg);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    scores_to_probs(key0);
    pack();
    next = after;

    while (!next.done()) {
      const int prev = stage;
      stage ^= 1;
      key0 = next.block() * Traits::kBlockN;
      cp_async_wait_all();
      fence_proxy_async_smem();
      __syncthreads();  // K[t], V[t-1] landed; every warpgroup is done with K[t-1] and V[t-2]
      after = next;
      after.next();
      if (!after.done())
        load_tile_sw128<Traits, Traits::kBlockN>(sK(stage ^ 1), gK, p.k_stride[2],
                                                 after.block() * Traits::kBlockN, key_end);
      load_tile_sw128<Traits, Traits::kBlockN>(sV(stage), gV, p.v_stride[2], key0, key_end);
      cp_async_commit();

      fence_operands(acc);
      fence_operands(prob);
      fence_operands(s);
      wgmma_fence();
      issue_qk<Traits>(s, sQ_addr, sK_addr0 + stage * Traits::kKVBytes, wg);
      wgmma_commit();
      // P·V is issued for every tile, even when all four warps skip it (P = 0): a wgmma or a
      // commit on a branch makes the compiler serialize every wgmma of the kernel.
      wgmma_fence();  // a stage of its own: in the QKᵀ stage the compiler serializes (C7513)
      issue_pv<Traits>(acc, prob, sV_addr0 + prev * Traits::kKVBytes);
      wgmma_commit();
      wgmma_wait<1>();  // S[t] ready; P·V of t-1 may still run
      fence_operands(s);
      scores_to_probs(key0);
      wgmma_wait<0>();  // P·V of t-1 done: O and P are free
      fence_operands(acc);
      OnlineSoftmax<kNTiles>::rescale(acc, alpha);
      pack();
      next = after;
    }

    cp_async_wait_all();
    fence_proxy_async_smem();
    __syncthreads();  // V of the last tile landed
    fence_operands(acc);
    fence_operands(prob);
    wgmma_fence();
    issue_pv<Traits>(acc, prob, sV_addr0 + stage * Traits::kKVBytes);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(acc);
  }

  float l[2];
  softmax.finalize(l);
  store_output<Traits>(p, b, h, row_g, lane, acc, softmax.row_max, l);
  add_pv_counters(p, h, lane, visited, skipped);
#else
  __trap();  // dispatch.cu launches this kernel only where sm_90a code was compiled
#endif
}

}  // namespace sparge::cuda
