// Mainloop of the warp-specialized sm_90a attention kernel (attn_fwd_sm90_ws):
//   load(): the producer thread walks the CTA's BlockMask row and TMA-loads Q once, then K and
//           V of every kept key tile into a kStages ring (full/empty mbarriers per stage).
//   mma():  a consumer warpgroup (64 query rows) walks the same BlockIter; per kept tile t it
//           issues S[t] = Q·K[t]ᵀ and O += P[t-1]·V[t-1] as two wgmma groups, then masks,
//           applies the λ rule and exponentiates S[t] while P[t-1]·V[t-1] still runs, then
//           rescales O and packs P[t]. The two consumers take turns issuing their GEMMs
//           (named barriers, ping-pong): one's softmax runs while the other's GEMMs do.
// The math (apply_mask, OnlineSoftmax, pack_probs, issue_qk/issue_pv) is the sm90 kernel's.
#pragma once

#include <cuda.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention/block_iter.cuh"
#include "cuda/attention/mainloop_sm80.cuh"
#include "cuda/attention/mainloop_sm90.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/traits_sm90_ws.cuh"
#include "cuda/common/mbarrier_sm90.cuh"
#include "cuda/common/named_barriers.cuh"
#include "cuda/common/tma_sm90.cuh"
#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

// The plain parameters and the tensor maps of Q, K and V (encoded by launch_sm90_ws.cuh).
struct AttnParamsSm90Ws {
  AttnParams attn;
  CUtensorMap tma_q, tma_k, tma_v;
};

// The CTA's work: one BlockMask row = query block qb of (batch b, query head h).
struct WorkTile {
  int qb, h, hk, b, q0;
  int64_t mask_row;
};

// The 16 rows of one consumer warp: this thread holds rows row_g and row_g + 8.
struct WarpRows {
  int row_g;
  bool row_exists[2];
  bool slab_exists;  // the warp's first row exists (its λ decisions are counted)
  __device__ WarpRows(const AttnParams& p, const WorkTile& w, int consumer, int warp, int lane) {
    const int slab0 = w.q0 + consumer * 64 + warp * 16;
    row_g = slab0 + lane / 4;
    row_exists[0] = row_g < p.seq_q;
    row_exists[1] = row_g + 8 < p.seq_q;
    slab_exists = slab0 < p.seq_q;
  }
};

// Whose turn it is to issue GEMMs. Consumer c waits on its barrier and, after issuing, arrives
// on the other's. Consumer 1 lets consumer 0 go first (one arrival up front) and skips its
// arrival after its last issue, so that each barrier sees as many arrivals as waits (both
// consumers walk the same tiles, hence issue equally often).
template <typename Traits>
struct MmaTurn {
  int consumer;
  __device__ void start() const {
    if (consumer == 1) named_barrier_arrive(mma_turn_barrier(0), Traits::kConsumerThreads);
  }
  __device__ void acquire() const {
    named_barrier_sync(mma_turn_barrier(consumer), Traits::kConsumerThreads);
  }
  __device__ void pass(bool last) const {
    if (!(last && consumer == 1))
      named_barrier_arrive(mma_turn_barrier(1 - consumer), Traits::kConsumerThreads);
  }
};

template <typename Traits, bool kCausal>
struct MainloopSm90Tma {
  using T = typename Traits::Element;
  using Storage = SharedStorageSm90Ws<Traits>;
  using Cursor = PipeCursor<Traits::kStages>;
  static constexpr int kNTiles = Traits::kBlockN / 8;
  static constexpr int kOTiles = Traits::kHeadDim / 8;
  using Softmax = OnlineSoftmax<kNTiles>;

  // One thread, before the role split (a __syncthreads must follow).
  static __device__ void init_barriers(Storage& smem) {
    mbarrier_init(&smem.q_full, 1);
#pragma unroll
    for (int s = 0; s < Traits::kStages; ++s) {
      mbarrier_init(&smem.k_full[s], 1);
      mbarrier_init(&smem.v_full[s], 1);
      mbarrier_init(&smem.k_empty[s], Traits::kConsumerWarps);
      mbarrier_init(&smem.v_empty[s], Traits::kConsumerWarps);
    }
    mbarrier_init_fence();
  }

  // ---- producer (one thread) ------------------------------------------------------------
  static __device__ void load(const AttnParamsSm90Ws& p, Storage& smem, const WorkTile& w) {
    BlockIter it(p.attn, w.mask_row);
    if (it.done()) return;  // nothing is consumed, so nothing may be loaded
    tma_prefetch_descriptor(&p.tma_k);
    tma_prefetch_descriptor(&p.tma_v);
    mbarrier_arrive_expect_tx(&smem.q_full, Traits::kQBytes);
#pragma unroll
    for (int cb = 0; cb < Traits::kColumnBlocks; ++cb)
      tma_load_4d(&p.tma_q, &smem.q_full, smem.q + cb * Traits::kBlockM * 64, cb * 64, w.q0, w.h, w.b);
    Cursor c;
    for (; !it.done(); it.next(), c.advance()) {
      const int key0 = it.block() * Traits::kBlockN;
      load_kv_tile(&p.tma_k, smem.k_empty[c.stage], smem.k_full[c.stage], smem.k[c.stage], c.phase, key0, w);
      load_kv_tile(&p.tma_v, smem.v_empty[c.stage], smem.v_full[c.stage], smem.v[c.stage], c.phase, key0, w);
    }
  }

  // Waits until the consumers released the stage's previous use, then loads keys
  // [key0, key0 + kBlockN) of kv head w.hk into it.
  static __device__ void load_kv_tile(const CUtensorMap* map, uint64_t& empty, uint64_t& full, T* dst,
                                      uint32_t phase, int key0, const WorkTile& w) {
    mbarrier_wait(&empty, phase ^ 1u);
    mbarrier_arrive_expect_tx(&full, Traits::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < Traits::kColumnBlocks; ++cb)
      tma_load_4d(map, &full, dst + cb * Traits::kBlockN * 64, cb * 64, key0, w.hk, w.b);
  }

  // ---- consumer (one warpgroup) ---------------------------------------------------------
  // One arrival per warp: each warp has waited for its own wgmma groups, so once all of them
  // arrived no tensor-core read of the stage is left.
  static __device__ void release(uint64_t& empty, int lane) {
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty);
  }

  // Mask, tile max, λ rule and exponentiation of the scores in s (key0 = the tile's first key).
  // Returns whether the warp skips the tile; alpha = 1 then (its rows keep m, l and O).
  static __device__ bool scores_to_probs(float (&s)[kNTiles][4], float (&alpha)[2], int key0,
                                         const AttnParams& p, const WorkTile& w, const WarpRows& rows,
                                         int lane, float lambda, Softmax& softmax, unsigned& visited,
                                         unsigned& skipped) {
    const bool needs_mask = key0 + Traits::kBlockN > p.seq_k ||
                            (kCausal && key0 + Traits::kBlockN - 1 > w.q0 + p.causal_offset);
    if (needs_mask) apply_mask<Traits, kCausal>(s, p, rows.row_g, key0, lane);
    float m_loc[2];
    Softmax::tile_max(s, p.scale_log2, m_loc);
    const bool warp_skips = softmax.slab_skips(m_loc, rows.row_exists, lambda);
    if (rows.slab_exists) {
      ++visited;
      skipped += warp_skips;
    }
    alpha[0] = alpha[1] = 1.0f;
    if (!warp_skips) softmax.exponentiate(s, m_loc, p.scale_log2, alpha);
    return warp_skips;
  }

  // P of a skipping warp is 0. Zero its scores rather than P: a P defined on two paths makes
  // the compiler serialize the wgmma pipeline (C7513; see kernel_sm90.cuh).
  static __device__ void pack(float (&s)[kNTiles][4], uint32_t (&prob)[Traits::kBlockN / 16][4],
                              bool warp_skips) {
#pragma unroll
    for (int n = 0; n < kNTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = warp_skips ? 0.0f : s[n][e];
    pack_probs<Traits>(s, prob);
  }

  static __device__ void mma(const AttnParamsSm90Ws& params, Storage& smem, const WorkTile& w,
                             const WarpRows& rows, int consumer, int lane, float (&acc)[kOTiles][4],
                             Softmax& softmax, unsigned& visited, unsigned& skipped) {
    const AttnParams& p = params.attn;
    BlockIter it(p, w.mask_row);
    if (it.done()) return;
    const float lambda = p.pv_lambda_per_head ? p.pv_lambda[w.h] : p.pv_lambda_uniform;
    const uint32_t sQ = smem_addr(smem.q), sK0 = smem_addr(smem.k[0]), sV0 = smem_addr(smem.v[0]);
    const MmaTurn<Traits> turn{consumer};
    turn.start();
    float s[kNTiles][4];                     // scores of the tile being processed
    uint32_t prob[Traits::kBlockN / 16][4];  // P of the previous tile, A operand of its P·V
    float alpha[2];
    Cursor kc, vc;

    // First tile: S[0] alone.
    int key0 = it.block() * Traits::kBlockN;
    mbarrier_wait(&smem.q_full, 0);
    mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
    turn.acquire();
    fence_operands(s);
    wgmma_fence();
    issue_qk<Traits>(s, sQ, sK0, consumer);
    wgmma_commit();
    turn.pass(false);
    wgmma_wait<0>();
    fence_operands(s);
    release(smem.k_empty[kc.stage], lane);
    kc.advance();
    bool skips = scores_to_probs(s, alpha, key0, p, w, rows, lane, lambda, softmax, visited, skipped);
    pack(s, prob, skips);
    it.next();

    for (; !it.done(); it.next()) {
      key0 = it.block() * Traits::kBlockN;
      mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
      mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
      turn.acquire();
      fence_operands(acc);
      fence_operands(prob);
      fence_operands(s);
      wgmma_fence();
      issue_qk<Traits>(s, sQ, sK0 + kc.stage * Traits::kKVBytes, consumer);
      wgmma_commit();
      // P·V is issued for every tile, even when all four warps skip it (P = 0): a wgmma or a
      // commit on a branch makes the compiler serialize every wgmma of the kernel.
      wgmma_fence();
      issue_pv<Traits>(acc, prob, sV0 + vc.stage * Traits::kKVBytes);
      wgmma_commit();
      turn.pass(false);
      wgmma_wait<1>();  // S[t] ready; P·V of t-1 may still run
      fence_operands(s);
      release(smem.k_empty[kc.stage], lane);
      kc.advance();
      skips = scores_to_probs(s, alpha, key0, p, w, rows, lane, lambda, softmax, visited, skipped);
      wgmma_wait<0>();  // P·V of t-1 done: O and P are free, and so is V[t-1]
      fence_operands(acc);
      release(smem.v_empty[vc.stage], lane);
      vc.advance();
      Softmax::rescale(acc, alpha);
      pack(s, prob, skips);
    }

    // Last tile: its P·V alone.
    mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
    turn.acquire();
    fence_operands(acc);
    fence_operands(prob);
    wgmma_fence();
    issue_pv<Traits>(acc, prob, sV0 + vc.stage * Traits::kKVBytes);
    wgmma_commit();
    turn.pass(true);
    wgmma_wait<0>();
    fence_operands(acc);
    release(smem.v_empty[vc.stage], lane);
  }
};

}  // namespace sparge::cuda
