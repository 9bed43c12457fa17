// Epilogue of attn_fwd_sm90_ws through shared memory and the TMA: a consumer warpgroup writes its
// 64 rows of O, normalized and in the output dtype, as an SW128 tile into its own rows of the Q
// tile (no wgmma reads them any more: the consumer's last Q·Kᵀ has completed, and the other
// consumer only reads its own rows), then one thread stores the tile with one TMA box per 64
// channels. The TMA leaves out the rows past seq_q. Against storing from registers (epilogue.cuh:
// every quad writes 16-byte pieces of 8 rows per instruction), the tile leaves the SM as whole
// 128-byte row segments, and the warps are done once their shared-memory writes are.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/attention/epilogue.cuh"
#include "cuda/common/math.cuh"
#include "cuda/common/named_barriers.cuh"
#include "cuda/common/tma_sm90.cuh"
#include "cuda/common/warpgroup_sm90.cuh"
#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

// q_tile: the kBlockM-row SW128 Q tile of the CTA (Traits::Element, column blocks of kBlockM
// rows); consumer c owns rows 64c..64c+63 of it, warp w rows 16w.. of those. map_o: O's tensor
// map with boxes of 64 channels × 64 rows (launch_sm90_ws.cuh).
template <typename Traits>
__device__ __forceinline__ void store_output_tma(const CUtensorMap* map_o,
                                                 typename Traits::Element* q_tile, int q0, int h,
                                                 int b, int seq_q, int consumer, int warp, int lane,
                                                 const float (&acc)[Traits::kHeadDim / 8][4],
                                                 const float (&l)[2]) {
  using T = typename Traits::Element;
  constexpr int kRows = 64;  // one consumer's rows = the store box's
  const int row0 = consumer * kRows;
  if (q0 + row0 >= seq_q) return;  // warpgroup-uniform: none of its rows exists
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + warp * 16 + lane / 4 + 8 * i;
    const float inv = 1.0f / l[i];
#pragma unroll
    for (int d = 0; d < Traits::kHeadDim / 8; ++d)
      *reinterpret_cast<uint32_t*>(q_tile + sw128_offset<Traits::kBlockM>(row, d * 8 + (lane & 3) * 2)) =
          pack2<T>(normalized(acc[d][2 * i], l[i], inv), normalized(acc[d][2 * i + 1], l[i], inv));
  }
  fence_proxy_async_smem();  // the TMA reads through the async proxy
  named_barrier_sync(output_staged_barrier(consumer), kWarpgroupThreads);
  if (warp == 0 && lane == 0) {
#pragma unroll
    for (int cb = 0; cb < Traits::kHeadDim / 64; ++cb)
      tma_store_4d(map_o, q_tile + cb * Traits::kBlockM * 64 + row0 * 64, cb * 64, q0 + row0, h, b);
    tma_store_commit_and_wait_read();  // the CTA's shared memory must outlive the reads
  }
}

}  // namespace sparge::cuda
