// Block-sparse attention forward on Hopper (sm_90a), warp-specialized (FlashAttention-3 shape):
//   O = softmax(scale · Q·Kᵀ restricted to the kept key tiles) · V, the same function as
//   attn_fwd_sm80 / attn_fwd_sm90 (online softmax in log2 units, exact tail/causal masking,
//   the λ rule per 16-row warp and 64-key block, empty rows -> 0, LSE, pv_counters).
// Roles: WG0 = producer (setmaxnreg 24; one thread walks the BlockMask row, issues the TMA
//   loads of Q and of K/V into a kStages mbarrier ring, kBlocksPerTurn kept blocks per stage,
//   and tells the consumers each stage's blocks in a TurnSlot); WG1, WG2 = consumers of 64
//   query rows each (setmaxnreg 240), one turn = kBlocksPerTurn kept 64-key blocks (1 at d256,
//   2 at d128, 3 at d64), ping-ponging their GEMMs through named barriers
//   (mainloop_sm90_tma.cuh). A consumer whose four warps all skip a turn by the λ rule leaves
//   out that turn's P·V. The exact kernel's consumers stage O in their rows of the Q tile and
//   store it with the TMA (epilogue_sm90_tma.cuh); the quantized one's, whose 8-bit Q tile is
//   too small for it, store from registers.
// Shared memory (traits_sm90_ws.cuh): Q 128×D + kStages × (K + V) kTurnN×D, SW128 layout:
//   d256 2 stages, 194 KiB; d128 2 stages, 162 KiB; d64 4 stages, 210 KiB; one CTA (384
//   threads) per SM, one CTA per BlockMask row (this file; kernel_sm90_ws_persistent.cuh runs the
//   same roles and mainloop on a persistent grid, where dispatch.cu chooses it).
// The default kernel on sm_90 (dispatch.cu; SPARGE_CUDA_KERNEL=sm90 or sm80 picks another) and
//   the only one with head dim 256. The launcher falls back to attn_fwd_sm90 where the TMA
//   cannot address Q, K or V (launch_sm90_ws.cuh); at d256, which attn_fwd_sm90 lacks, it
//   returns Status::unsupported there.
#pragma once

#include <cstdint>

#include "cuda/attention/epilogue.cuh"
#include "cuda/attention/epilogue_sm90_tma.cuh"
#include "cuda/attention/mainloop_sm90_tma.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits_sm90_ws.cuh"
#include "cuda/common/warpgroup_sm90.cuh"
#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

template <typename Acc>
__device__ __forceinline__ void zero_accumulator(Acc& acc) {
  constexpr int kTiles = sizeof(Acc) / sizeof(acc[0]);
#pragma unroll
  for (int d = 0; d < kTiles; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
}

// A consumer warpgroup's row: the row state, the turns (`mma(rows, acc, softmax, visited,
// skipped)`: the mainloop over the row's kept blocks), then the row's end: the mainloop's
// finish() hook, O normalized and stored (through the row's Q tile, q_tile, where the mainloop
// stages it there), the LSE and the λ counters.
template <typename Traits, typename Mainloop, typename QTile, typename Mma>
__device__ __forceinline__ void consume_row(const typename Mainloop::Params& params, const WorkTile& w,
                                            int consumer, int warp, int lane, QTile* q_tile,
                                            Mma&& mma) {
  const AttnParams& p = params.attn;
  const WarpRows rows(p, w, consumer, warp, lane);
  typename Mainloop::Softmax softmax;
  softmax.init();
  float acc[Traits::kHeadDim / 8][4];
  zero_accumulator(acc);
  unsigned visited = 0, skipped = 0;
  mma(rows, acc, softmax, visited, skipped);
  float lse_add[2];
  Mainloop::finish(params, w, rows, lane, acc, lse_add);
  float l[2];
  softmax.finalize(l);
  if constexpr (Mainloop::kOutputThroughQTile) {
    store_output_tma<Traits>(&params.tma_o, q_tile, w.q0, w.h, w.b, p.seq_q, consumer, warp, lane,
                             acc, l);
    store_lse(p, w.b, w.h, rows.row_g, lane, softmax.exp_base(), l, lse_add);
  } else {
    store_output<Traits>(p, w.b, w.h, rows.row_g, lane, acc, softmax.exp_base(), l, lse_add);
  }
  // The mainloop counts every (warp, block) it tests; a warp whose rows are all past seq_q
  // does not exist for the counters (docs/method.md), and one test here replaces one per block.
  if (!rows.slab_exists) visited = skipped = 0;
  add_pv_counters(p, w.h, lane, visited, skipped);
}

// Mainloop: MainloopSm90Tma (exact) or MainloopSm90Q8 (quantized, mainloop_sm90_q8.cuh); it
// names the kernel's Params and Storage and provides load(), mma() and the finish() hook.
template <typename Traits, bool kBanded, typename Mainloop = MainloopSm90Tma<Traits, kBanded>>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    attn_fwd_sm90_ws(const __grid_constant__ typename Mainloop::Params params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Storage = typename Mainloop::Storage;
  static_assert(sizeof(Storage) + kSw128AtomBytes <= size_t(Traits::kSmemBytes),
                "the mainloop's shared storage outgrew Traits::kSmemBytes");
  const AttnParams& p = params.attn;

  // Setup: shared storage at the next 1024-byte boundary, barriers, the work tile.
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t pad = (kSw128AtomBytes - raw_addr % kSw128AtomBytes) % kSw128AtomBytes;
  Storage& smem = *reinterpret_cast<Storage*>(smem_raw + pad);
  if (threadIdx.x == 0) Mainloop::init_shared(smem);
  __syncthreads();  // the only CTA-wide barrier: after the role split the groups never meet

  // Banded: under causality late query blocks are the heavy ones; run them first so that the
  // tail of the grid is short (harmless for a window, whose rows are all alike).
  const WorkTile w = work_tile<Traits>(
      p, kBanded ? p.num_q_blocks - 1 - int(blockIdx.x) : int(blockIdx.x), blockIdx.y, blockIdx.z);
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;

  if (wg == 0) {
    // Producer: one thread issues every load; the other 127 only give their registers back.
    warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (warp == 0 && lane == 0) Mainloop::load(params, smem, w);
  } else {
    // Consumer: S = Q·Kᵀ, P = exp2(S·c - m), O += P·V over the kept tiles, then the epilogue.
    warpgroup_reg_alloc<Traits::kConsumerRegs>();
    // Broadcast from lane 0 (as CUTLASS's canonical_warp_group_idx does): ptxas then knows the
    // index is warp-uniform and keeps what derives from it (the Q descriptor of every Q·Kᵀ wgmma)
    // in uniform registers instead of moving it there (R2UR) before every wgmma.
    const int consumer = __shfl_sync(0xffffffffu, wg - 1, 0);
    consume_row<Traits, Mainloop>(
        params, w, consumer, warp, lane, smem.q,
        [&](const WarpRows& rows, auto& acc, auto& softmax, unsigned& visited, unsigned& skipped) {
          Mainloop::mma(params, smem, w, rows, consumer, lane, acc, softmax, visited, skipped);
        });
  }
#else
  __trap();  // dispatch.cu launches this kernel only where sm_90a code was compiled
#endif
}

}  // namespace sparge::cuda
