// The sampled_rows estimate's Q·Kᵀ on warpgroup MMAs (sm_90a): WgmmaOperands, the operand policy
// of sampled_row_weights (sampled_rows.cuh) that the launcher takes where the attention runs its
// wgmma kernels (PredictParams::wgmma), at head dims 64 and 128 with block_k ≥ 64.
//
// Why: with mma.sync each warp owns a 16-row unit, so every warp reads the whole K tile from
// shared memory through ldmatrix for its 16 rows (8 warps: 8 reads of each tile), and its HMMA
// and ldmatrix instructions share the issue slots with the softmax (756 instructions per warp and
// 64-key step at hd 128 in SASS, bench/gpu/sass_path.py). Here each warpgroup multiplies its 64
// row slots (4 units) by the tile with m64n64k16 wgmma, both operands read by the tensor cores
// from SW128 tiles (wgmma_sm90.cuh), so a tile is read twice per CTA and the warps issue only
// the softmax (~440 instructions a step). The accumulator's layout per warp is the mma.sync C
// layout of the warp's unit (warp w of the warpgroup: rows 16w .. 16w + 15), so the masks, the
// online (max, sum), the masses and the stores are the same code. A warpgroup runs a step when
// any of its four units sees it (the wgmma is warpgroup-wide); a unit that does not is masked to
// −∞ there and writes entries nothing reads.
#pragma once

#include <cstdint>

#include "cuda/common/mbarrier_sm90.cuh"
#include "cuda/common/tma_sm90.cuh"
#include "cuda/common/wgmma_sm90.cuh"
#include "cuda/predict/sampled_rows.cuh"

namespace sparge::cuda {

template <typename Tr>
struct WgmmaOperands {
  using T = typename Tr::Element;
  static_assert(Tr::kStepKeys == 64 && Tr::kHeadDim % 64 == 0 && Tr::kHeadDim <= 128,
                "64-key steps of whole 64-column blocks (head dims 64 and 128)");
  static constexpr bool kWarpgroupSteps = true;
  static constexpr int kKTileBytes = Tr::kTileElems * int(sizeof(T));
  static constexpr int kQColumnBytes = kSlotsPerCta * kSw128RowBytes;  // a 64-column block of Q
  static constexpr int kKColumnBytes = Tr::kStepKeys * kSw128RowBytes;
  // The ring and the 128 row slots, and the slack that aligns them to a 1024-byte swizzle atom
  // (96 KB + 1 KB at hd 128: two CTAs per SM), then the ring's mbarriers (TMA loads).
  static constexpr int kBarrierOffset =
      kSw128AtomBytes + (kSampleStages * Tr::kTileElems + kSlotsPerCta * Tr::kHeadDim) * int(sizeof(T));
  static constexpr int kSmemBytes = kBarrierOffset + kSampleStages * 8;
  static constexpr int kLoadRows = kEtThreads / Tr::kChunks;  // key rows a load pass covers
  static_assert(Tr::kStepKeys % kLoadRows == 0 && kLoadRows % 8 == 0, "whole swizzle periods per pass");
  T* sK;  // [kSampleStages] SW128 tiles of [kStepKeys × kHeadDim]
  T* sQ;  // an SW128 tile of [kSlotsPerCta × kHeadDim]
  uint32_t k_addr;       // sK's shared address
  uint32_t load_offset;  // bytes from a stage to this thread's first chunk of load_keys
  uint64_t dq;   // this warpgroup's 64 row slots of Q
  uint64_t dk0;  // stage 0 of the ring (a k16 step, a column block and a stage move the address)
  // K by TMA (k_map encodes the call's K; else cp.async by every thread): one thread issues a
  // stage's boxes, which complete on the stage's mbarrier; `phases` holds the parity each
  // stage's next wait takes (every thread waits for every stage in the same order).
  const CUtensorMap* k_map;
  bool k_by_tma;
  uint64_t* full;  // [kSampleStages]
  uint32_t phases = 0;
  __device__ WgmmaOperands(unsigned char* smem, const CUtensorMap* k_map_, bool k_by_tma_)
      : k_map(k_map_), k_by_tma(k_by_tma_) {
    const uint32_t raw = smem_addr(smem);
    const uint32_t pad = (kSw128AtomBytes - raw % kSw128AtomBytes) % kSw128AtomBytes;
    full = reinterpret_cast<uint64_t*>(smem + kBarrierOffset);
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (k_by_tma && threadIdx.x == 0) {  // the kernel's barriers before the first load order these
      for (int st = 0; st < kSampleStages; ++st) mbarrier_init(&full[st], 1);
      mbarrier_init_fence();
      tma_prefetch_descriptor(k_map);
    }
#endif
    sK = reinterpret_cast<T*>(smem + pad);
    sQ = sK + kSampleStages * Tr::kTileElems;
    k_addr = raw + pad;
    const int load_row = threadIdx.x / Tr::kChunks, load_column = threadIdx.x % Tr::kChunks * kChunkElems;
    load_offset = sw128_offset<Tr::kStepKeys>(load_row, load_column) * int(sizeof(T));
    const uint32_t q_addr = k_addr + kSampleStages * kKTileBytes;
    // The warpgroup index through a shuffle from lane 0: ptxas then knows it is warp-uniform and
    // keeps the descriptors in uniform registers (from threadIdx.x directly it moved both of
    // every wgmma's descriptors into uniform registers, R2UR, before each of the step's 8).
    const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0);
    dq = sw128_desc(q_addr + warpgroup * 64 * kSw128RowBytes, 16, kSw128AtomBytes);
    dk0 = sw128_desc(k_addr, 16, kSw128AtomBytes);
  }
  __device__ T* q_chunk(int r, int c) const { return sQ + sw128_offset<kSlotsPerCta>(r, c * kChunkElems); }
  // Keys [key0, key0 + 64) of the (batch, kv head) slice gK into ring stage `stage` (zeros past
  // seq_k and head_dim; cp.async, the caller commits: PredictParams::wgmma holds only for rows
  // of whole 16-byte chunks). CTA-wide: each thread copies one chunk column of
  // every kLoadRows-th key, a multiple of 8 rows apart, so its swizzled offset (load_offset, from
  // the constructor) moves by whole rows; 32-bit shared addresses.
  __device__ void load_keys(int stage, const T* gK, int64_t stride, int key0, int /*rows: 64*/,
                            int seq_k, int head_dim, bool /*vec: true*/, int b, int hk) {
    if (k_by_tma) {  // boxes of 64 channels × 64 keys: one SW128 column block each (zeros past
                     // seq_k and head_dim, counted in the bytes all the same)
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
      if (threadIdx.x == 0) {
        mbarrier_arrive_expect_tx(&full[stage], kKTileBytes);
#pragma unroll
        for (int cb = 0; cb < Tr::kHeadDim / 64; ++cb)
          tma_load_4d(k_map, &full[stage], sK + stage * Tr::kTileElems + cb * (kKColumnBytes / int(sizeof(T))),
                      cb * 64, key0, hk, b);
      }
#else
      __trap();  // launched only where sm_90a code runs (PredictParams::wgmma)
#endif
      return;
    }
    const int r = threadIdx.x / Tr::kChunks, c = threadIdx.x % Tr::kChunks;
    const bool chunk_in = c * kChunkElems < head_dim;
    const uint32_t dst = k_addr + stage * kKTileBytes + load_offset;
    const int64_t pass_stride = int64_t(kLoadRows) * stride;
    const T* src = gK + int64_t(key0 + r) * stride + c * kChunkElems;
    if (chunk_in && key0 + Tr::kStepKeys <= seq_k) {  // every step but the keys' last: no tests
#pragma unroll
      for (int i = 0; i < Tr::kStepKeys / kLoadRows; ++i, src += pass_stride)
        cp_async_16(dst + i * kLoadRows * kSw128RowBytes, src, true);
      return;
    }
#pragma unroll
    for (int i = 0; i < Tr::kStepKeys / kLoadRows; ++i, src += pass_stride) {
      const bool in = chunk_in && key0 + r + i * kLoadRows < seq_k;
      cp_async_16(dst + i * kLoadRows * kSw128RowBytes, in ? src : gK, in);
    }
  }
  // Stage `stage`'s keys have landed (the caller has waited for this thread's cp.async groups;
  // the CTA barrier follows). cp.async writes through the generic proxy: each writing thread
  // fences them for the tensor cores' reads; the TMA writes through the async proxy, so then
  // only the group's first step fences (the Q tile, copied by cp.async) and every thread waits
  // for the stage's transactions.
  __device__ void keys_landed(int stage, bool first_step) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (!k_by_tma || first_step) fence_proxy_async_smem();
    if (k_by_tma) {
      mbarrier_wait(&full[stage], (phases >> stage) & 1u);
      phases ^= 1u << stage;
    }
#endif
  }
  // This warp's unit's raw scores against stage `stage` (all 64 keys: kFullSteps); warpgroup-wide.
  template <int kN>
  __device__ void scores(int stage, int /*tiles*/, float (&s)[kN][4]) const {
    static_assert(kN == 8, "m64n64: 8 key tiles");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    // The stage through a shuffle as well (see the constructor): uniform descriptors, no R2UR.
    const uint64_t dk = sw128_desc_advance(dk0, __shfl_sync(0xffffffffu, stage, 0) * kKTileBytes);
    fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < Tr::kHeadDim / 16; ++ks)
      wgmma_m64n64k16_ss<T>(s, sw128_desc_advance(dq, (ks / 4) * kQColumnBytes + (ks % 4) * 32),
                            sw128_desc_advance(dk, (ks / 4) * kKColumnBytes + (ks % 4) * 32), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
#else
    __trap();  // launched only where sm_90a code runs (PredictParams::wgmma)
#endif
  }
};

}  // namespace sparge::cuda
