// Stage 1, estimate sampled_rows in one pass (SampledRowsPass::kTileSums) on sm_90a: the walk of
// sampled_row_weights (sampled_rows.cuh) with Q·Kᵀ on warpgroup MMAs instead of mma.sync.
//
// Why: the mma.sync kernel gives each warp a 16-row unit, so every warp reads the whole K tile
// from shared memory through ldmatrix for its 16 rows (8 warps: 8 reads of each tile), and its
// HMMA and ldmatrix instructions share the issue slots with the softmax. Here each warpgroup
// multiplies its 64 row slots (4 units) by the tile with m64n64k16 wgmma, both operands read
// by the tensor cores from SW128 tiles (wgmma_sm90.cuh), so a tile is read twice per CTA and
// the warps issue only the softmax. The accumulator's layout per warp is the mma.sync C layout
// of the warp's unit (warp w of the warpgroup: rows 16w..16w+15), so the masking, the online
// (max, sum) and the stores are the mma.sync kernel's.
//
// Same plan and outputs: 128 row slots per CTA (slots ≤ 4, so one group), the union of the
// units' allowed key blocks walked in steps of 64 keys through a ring of kSampleStages
// cp.async tiles, key splits over gridDim.z, per row and key block log2 Σ 2^t stored at the
// block's last step into PredictParams::sr_tile_lse for sampled_rows_combine. A warpgroup skips
// the steps none of its units sees (a wgmma is warpgroup-wide), so a unit may run steps its
// own rows do not see: they are masked (−∞) and store −∞, entries the combine does not read.
// Head dims 64 and 128 (64-key steps), block_k ≥ 64.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/common/wgmma_sm90.cuh"
#include "cuda/predict/sampled_rows.cuh"

namespace sparge::cuda {

// Dynamic shared memory: the K ring and the Q tile of 128 row slots, both SW128, and the slack
// that aligns them to a 1024-byte swizzle atom (96 KB + 1 KB at hd 128: two CTAs per SM).
template <typename Tr>
constexpr int sampled_rows_sm90_smem() {
  return kSw128AtomBytes +
         (kSampleStages * Tr::kTileElems + kSlotsPerCta * Tr::kHeadDim) * int(sizeof(typename Tr::Element));
}

// Grid (⌈nq / blocks_per_cta⌉, batch·heads_q, key splits), kEtThreads threads (two
// warpgroups), sampled_rows_sm90_smem bytes; then sampled_rows_combine. slots ≤ 4
// (sampled_rows_one_pass), so blocks_per_cta · slots = 128: the CTA's rows are one group.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kEtThreads, 2)
    sampled_rows_tile_sums_sm90(const PredictParams p, int slots, int blocks_per_cta) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tr = EtTraits<T, kHeadDim>;
  constexpr int kKeys = Tr::kStepKeys;
  constexpr int kN = kKeys / 8;  // 8-key tiles per step: the m64n64 accumulator's
  static_assert(kKeys == 64 && kHeadDim % 64 == 0, "64-key steps of whole 64-column blocks");
  constexpr int kKTileBytes = Tr::kTileElems * int(sizeof(T));
  constexpr int kQColumnBytes = kSlotsPerCta * kSw128RowBytes;  // one 64-column block of Q
  constexpr int kKColumnBytes = kKeys * kSw128RowBytes;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ int sRange[kEtWarps][2];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t pad = (kSw128AtomBytes - raw_addr % kSw128AtomBytes) % kSw128AtomBytes;
  T* sK = reinterpret_cast<T*>(smem_raw + pad);  // [kSampleStages] tiles of [kKeys × kHeadDim]
  T* sQ = sK + kSampleStages * Tr::kTileElems;   // [kSlotsPerCta × kHeadDim]
  const uint32_t sK_addr = raw_addr + pad, sQ_addr = sK_addr + kSampleStages * kKTileBytes;

  const EstimateCta<T> cta(p, blocks_per_cta);
  const int bh = cta.bh, b = cta.b, h = cta.h, i0 = cta.i0, blocks = cta.blocks;
  const T *gQ = cta.gQ, *gK = cta.gK;
  const int warp = threadIdx.x / 32, wg = warp / 4, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int total_slots = blocks * slots;

  // This warp's unit: slots 16·warp .. + 15; each lane's rows g and g + 8 and the keys they see.
  const int unit_slot = warp * kUnitRows;
  int64_t qrow[2];
  UnitRowKeys rk;
  unit_lane_rows(p, h, i0, blocks, slots, unit_slot, cta.key_end, qrow, rk);
  // The CTA's q rows into the Q tile (zero rows for empty slots), then each unit's allowed key blocks.
  for (int e = threadIdx.x; e < kSlotsPerCta * Tr::kChunks; e += kEtThreads) {
    const int r = e / Tr::kChunks, c = e % Tr::kChunks;
    copy_q_chunk(sQ + sw128_offset<kSlotsPerCta>(r, c * kChunkElems), gQ, p.q_stride[2],
                 slot_row(p, h, i0, blocks, slots, r), c, p.head_dim, cta.vec_q);
  }
  if (lane == 0) {
    const int2 range = unit_key_blocks(p, h, i0, blocks, slots, unit_slot);
    sRange[warp][0] = range.x, sRange[warp][1] = range.y;
  }
  __syncthreads();
  // The key blocks the CTA walks (the union of the units', within the split) and those this
  // warpgroup computes (the union of its four units').
  int j_begin = INT32_MAX, j_end = 0, wg_begin = INT32_MAX, wg_end = 0;
  for (int w = 0; w < kEtWarps; ++w) {
    if (sRange[w][0] >= sRange[w][1]) continue;
    j_begin = min(j_begin, sRange[w][0]), j_end = max(j_end, sRange[w][1]);
    if (w / 4 == wg) wg_begin = min(wg_begin, sRange[w][0]), wg_end = max(wg_end, sRange[w][1]);
  }
  j_begin = max(j_begin, cta.split_begin), j_end = min(j_end, cta.split_end);
  if (j_begin >= j_end) {  // no unit sees a key of the split: let the q copies land, and leave
    cp_async_commit();
    cp_async_wait_all();
    return;
  }
  const int key_begin = j_begin * p.block_k, key_stop = min(j_end * p.block_k, p.seq_k);
  const int steps = (key_stop - key_begin + kKeys - 1) / kKeys;

  // Step st's keys into ring buffer st % kSampleStages (one commit group a step, empty past the
  // last): the SW128 layout the wgmma reads, zeros past seq_k and past head_dim. Each thread
  // copies one chunk column of every kLoadRows-th key: a multiple of 8 rows apart, so its
  // swizzled offset only moves by whole rows (addresses computed once, not per chunk).
  constexpr int kLoadRows = kEtThreads / Tr::kChunks;
  constexpr int kRowElems = kSw128RowBytes / int(sizeof(T));  // a row of a 64-column block
  static_assert(kKeys % kLoadRows == 0 && kLoadRows % 8 == 0, "whole swizzle periods per pass");
  const int load_row = threadIdx.x / Tr::kChunks, load_chunk_index = threadIdx.x % Tr::kChunks;
  T* const load_dst = sK + sw128_offset<kKeys>(load_row, load_chunk_index * kChunkElems);
  const bool chunk_in = load_chunk_index * kChunkElems < p.head_dim;
  const int64_t row_step = int64_t(kLoadRows) * p.k_stride[2];
  int load_key = key_begin + load_row;  // this thread's first key of the next tile to load
  const T* load_src = gK + int64_t(load_key) * p.k_stride[2] + load_chunk_index * kChunkElems;
  const auto load = [&](int st) {
    if (st < steps) {
      T* dst = load_dst + (st % kSampleStages) * Tr::kTileElems;
#pragma unroll
      for (int i = 0; i < kKeys / kLoadRows; ++i) {
        const bool in = chunk_in && load_key + i * kLoadRows < p.seq_k;
        const T* src = load_src + i * row_step;
        if (cta.vec_k)
          cp_async_16(dst + i * kLoadRows * kRowElems, in ? src : gK, in);
        else
          *reinterpret_cast<uint4*>(dst + i * kLoadRows * kRowElems) =
              in ? load_chunk(src - load_chunk_index * kChunkElems, load_chunk_index, p.head_dim, false)
                 : make_uint4(0, 0, 0, 0);
      }
      load_key += kKeys, load_src += kKeys / kLoadRows * row_step;
    }
    cp_async_commit();
  };

  // Lane 4g + t (t < 2) stores row g + 8t: its entries' row in sr_tile_lse, or null.
  float* row_lse = nullptr;
  if (t4 < 2 && unit_slot + g + 8 * t4 < total_slots)
    row_lse = p.sr_tile_lse +
              ((int64_t(bh) * p.num_q_blocks + i0) * slots + unit_slot + g + 8 * t4) * int64_t(p.num_k_blocks);
  // Operand descriptors: this warpgroup's 64 row slots of Q, and stage 0 of the K ring; a k16
  // step, a column block and a stage move only their start addresses.
  const uint64_t dq = sw128_desc(sQ_addr + wg * 64 * kSw128RowBytes, 16, kSw128AtomBytes);
  const uint64_t dk0 = sw128_desc(sK_addr, 16, kSw128AtomBytes);
  const int steps_per_block = p.block_k / kKeys;
  int j = j_begin, block_step = 0;  // step st's key block, and which of its steps st is
  const auto next_step = [&] {
    if (++block_step == steps_per_block) block_step = 0, ++j;
  };
  float m[2] = {-INFINITY, -INFINITY}, z[2] = {0.0f, 0.0f};
  for (int st = 0; st < kSampleStages - 1; ++st) load(st);
  for (int st = 0; st < steps; ++st, next_step()) {
    cp_async_wait_groups<kSampleStages - 2>();  // this thread's copies of tile st (and of Q)
    fence_proxy_async_smem();                   // visible to the tensor cores after the barrier
    __syncthreads();  // every thread's copies; every warpgroup is done with tile st − 1's buffer
    load(st + kSampleStages - 1);
    if (j < wg_begin || j >= wg_end) continue;  // warpgroup-uniform
    const int key0 = key_begin + st * kKeys;
    float s[kN][4];
    const uint64_t dk = sw128_desc_advance(dk0, (st % kSampleStages) * kKTileBytes);
    fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks)
      wgmma_m64n64k16_ss<T>(s, sw128_desc_advance(dq, (ks / 4) * kQColumnBytes + (ks % 4) * 32),
                            sw128_desc_advance(dk, (ks / 4) * kKColumnBytes + (ks % 4) * 32), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    step_log2_scores<kN>(p, s, kN, cta.mul, key0, rk, qrow, b, h);
    online_max_sum<kN>(s, kN, m, z);
    // The key block's last step (its last 64 keys, or the keys' end) stores it.
    if (block_step + 1 < steps_per_block && key0 + kKeys < p.seq_k) continue;
    // Lane 4g + t stores row g + 8t (one logarithm a lane); log2_approx: z holds its max's 1.
    quad_sum(z);
    if (row_lse != nullptr) {
      const float mt = t4 == 0 ? m[0] : m[1], zt = t4 == 0 ? z[0] : z[1];
      row_lse[j] = zt == 0.0f ? -INFINITY : mt + log2_approx(zt);
    }
    m[0] = m[1] = -INFINITY, z[0] = z[1] = 0.0f;
  }
  cp_async_wait_all();  // only empty groups remain
#endif
}

}  // namespace sparge::cuda
