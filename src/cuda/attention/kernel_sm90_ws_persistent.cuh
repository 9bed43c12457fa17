// The warp-specialized sm_90a attention kernel on a persistent grid: one CTA per SM (the grid is
// min(rows, SMs)), each walking BlockMask rows t = blockIdx.x, + gridDim.x, ... in the row grid's
// launch order (query block fastest, then head, then batch; banded: the last query block of a
// head first). Same roles, turns, math and epilogue as attn_fwd_sm90_ws (kernel_sm90_ws.cuh,
// MainloopSm90Tma); what differs is that nothing stops between rows:
//   - the producer's K/V ring and the consumers' cursors run on across rows, so the next row's
//     first turns load while the consumers finish the current one;
//   - Q lives in kPersistentQBuffers tiles (two at d64 and d128, one at d256): the producer loads
//     the next row's Q into the other tile once it has issued the current row's last turn, while
//     the consumers still compute the current row and then stage its O in the current tile; the
//     row index travels with Q (q_row, published by the arrive on q_full).
// Why: the row grid's CTA pays its prologue, first loads and epilogue with nothing overlapping
// them, about two turns' time per CTA (bench/results/2026-12-06_NVIDIA-H100_dense-row-length.md):
// 6% of a 32-turn row at N 4K, ~30% of a W 512 sliding-window row of 5 turns.
// The fixed order (no counter) is the row grid's order without its dynamic assignment: rows of
// unequal weight (long causal rows, sparse masks) may leave SMs idle at the end, and CTAs that
// drift apart share less K/V in L2 (measured: bench/results/2026-12-06_NVIDIA-H100_persistent-grid.md).
// Chosen by dispatch.cu (persistent_grid): by default where no row can keep more than 64 key
// blocks, or forced by SPARGE_CUDA_KERNEL=sm90ws-persistent; exact mode only.
#pragma once

#include <cstdint>

#include "cuda/attention/kernel_sm90_ws.cuh"

namespace sparge::cuda {

// Row t of the persistent schedule, t < num_q_blocks · heads_q · batch.
template <typename Traits, bool kBanded>
__device__ __forceinline__ WorkTile persistent_work_tile(const AttnParams& p, int t) {
  const int qi = t % p.num_q_blocks, head_row = t / p.num_q_blocks;
  return work_tile<Traits>(p, kBanded ? p.num_q_blocks - 1 - qi : qi, head_row % p.heads_q,
                           head_row / p.heads_q);
}

template <typename Cursor>
__device__ __forceinline__ void warp_uniform(Cursor& c) {
  c.stage = __shfl_sync(0xffffffffu, c.stage, 0);
  c.phase = __shfl_sync(0xffffffffu, c.phase, 0);
}

template <typename Traits, bool kBanded>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    attn_fwd_sm90_ws_persistent(const __grid_constant__ AttnParamsSm90Ws params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Mainloop = MainloopSm90Tma<Traits, kBanded>;
  using Storage = SharedStorageSm90WsPersistent<Traits>;
  using Cursor = typename Mainloop::Cursor;
  using QCursor = PipeCursor<Storage::kQBuffers>;
  static_assert(sizeof(Storage) + kSw128AtomBytes <= size_t(Traits::kPersistentSmemBytes),
                "the persistent storage outgrew Traits::kPersistentSmemBytes");
  const AttnParams& p = params.attn;
  // rows_total + gridDim.x < 2^31: the launcher checks
  const int rows_total = p.num_q_blocks * p.heads_q * p.batch;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t pad = (kSw128AtomBytes - raw_addr % kSw128AtomBytes) % kSw128AtomBytes;
  Storage& smem = *reinterpret_cast<Storage*>(smem_raw + pad);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < Storage::kQBuffers; ++i) {
      mbarrier_init(&smem.q_full[i], 1);
      mbarrier_init(&smem.q_empty[i], Traits::kConsumerWarps);
    }
    Mainloop::init_ring_barriers(smem);
  }
  __syncthreads();

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  if (wg == 0) {
    warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (warp == 0 && lane == 0) {
      tma_prefetch_descriptor(&params.tma_q);
      tma_prefetch_descriptor(&params.tma_k);
      tma_prefetch_descriptor(&params.tma_v);
      Cursor c;
      QCursor qc;
      for (int t = blockIdx.x;; t += gridDim.x) {
        // The Q tile is free once every consumer warp is done with the row before last there
        // (its O read by the TMA store).
        mbarrier_wait_sleep(&smem.q_empty[qc.stage], qc.phase ^ 1u);
        const bool more = t < rows_total;
        smem.q_row[qc.stage] = more ? t : -1;
        if (!more) {
          mbarrier_arrive(&smem.q_full[qc.stage]);  // the consumers' signal to stop
          break;
        }
        Mainloop::template load_row<true>(params, smem, persistent_work_tile<Traits, kBanded>(p, t),
                                          c, smem.q[qc.stage], &smem.q_full[qc.stage]);
        qc.advance();
      }
    }
  } else {
    warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int consumer = __shfl_sync(0xffffffffu, wg - 1, 0);  // warp-uniform (kernel_sm90_ws.cuh)
    Cursor kc, vc;
    QCursor qc;
    const MmaTurn<Traits> turn{consumer};
    turn.start();  // across rows (MmaTurn)
    for (;;) {
      // The cursors are warp-uniform, but carried around this loop through the waits' retry
      // loops ptxas no longer knows it: broadcast from lane 0 (as `consumer`), so that the ring's
      // barrier and stage addresses stay in uniform registers in the turn loop.
      warp_uniform(kc);
      warp_uniform(vc);
      warp_uniform(qc);
      Storage& smem = *reinterpret_cast<Storage*>(smem_raw + __shfl_sync(0xffffffffu, pad, 0));
      mbarrier_wait(&smem.q_full[qc.stage], qc.phase);
      // Lane 0 reads the row and, after the row, arrives on q_empty for its warp: that arrive
      // orders the read before the producer's next write (see KeptTurn::read).
      const int t = __shfl_sync(0xffffffffu, lane == 0 ? smem.q_row[qc.stage] : 0, 0);
      if (t < 0) {
        turn.finish();
        break;
      }
      const WorkTile w = persistent_work_tile<Traits, kBanded>(p, t);
      consume_row<Traits, Mainloop>(
          params, w, consumer, warp, lane, smem.q[qc.stage],
          [&](const WarpRows& rows, auto& acc, auto& softmax, unsigned& visited, unsigned& skipped) {
            Mainloop::template mma_row<true>(params, smem, w, rows, consumer, lane, acc, softmax,
                                             visited, skipped, kc, vc, smem.q[qc.stage]);
          });
      // Warp 0's lane 0 has waited for the TMA store's reads of the staged O (store_output_tma).
      Mainloop::release(smem.q_empty[qc.stage], lane);
      qc.advance();
    }
  }
#else
  __trap();  // dispatch.cu launches this kernel only where sm_90a code was compiled
#endif
}

}  // namespace sparge::cuda
