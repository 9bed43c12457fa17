// Tile sizes, roles, register split and shared-memory layout of the warp-specialized sm_90a
// attention kernel (attn_fwd_sm90_ws), one place per (dtype, head dim): the kernel, the mainloop
// and the launcher read every number from here.
#pragma once

#include <cstdint>

#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim_>
struct AttnTraitsSm90Ws {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // query rows per CTA = SparseOptions::block_q
  static constexpr int kBlockN = 64;   // keys per tile = SparseOptions::block_k
  // WG0 = producer (one elected thread issues every TMA load), WG1-2 = consumers of 64 rows each;
  // within a consumer, warp w owns rows 16w..16w+15 (one λ group, as in the other kernels).
  static constexpr int kConsumers = kBlockM / 64;
  static constexpr int kThreads = (1 + kConsumers) * 128;
  static constexpr int kConsumerThreads = kConsumers * 128;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kSlabRows = 16;
  static constexpr int kMinBlocksPerSm = 1;
  // setmaxnreg split (FA3's for two consumer warpgroups and TMA loads): 24·128 + 240·256 =
  // 64512 of the SM's 65536 registers. ptxas compiles the kernel at 65536/384 -> 168.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // K/V ring: a stage holds one key tile of K and one of V, with separate full/empty barriers
  // (K of a stage is released after QKᵀ, V after P·V). Four stages = 256 keys in flight: the
  // tiles are small (64 keys, fixed by the mask geometry) and smem is not the limit at 1 CTA/SM.
  static constexpr int kStages = 4;
  static constexpr int kQBytes = kBlockM * kHeadDim * int(sizeof(T));
  static constexpr int kKVBytes = kBlockN * kHeadDim * int(sizeof(T));
  static constexpr int kColumnBlocks = kHeadDim / 64;  // TMA boxes per tile (64 channels each)
  // Q + the ring + one atom for the barriers + one atom of slack: the dynamic smem base is only
  // 16-byte aligned and the kernel rounds it up. d128: 164 KiB, d64: 82 KiB.
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kKVBytes + 2 * kSw128AtomBytes;

  static_assert(sizeof(T) == 2, "the SW128 layout is written for 16-bit elements");
  static_assert(kHeadDim % 64 == 0, "SW128 column blocks are 64 elements wide");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA exceeds sm_90's 227 KiB");
  static_assert(kConsumers == 2, "the ping-pong schedule is written for two consumer warpgroups");
  static_assert(kProducerRegs * 128 + kConsumerRegs * kConsumerThreads <= 65536,
                "setmaxnreg split exceeds the register file");
};

// Everything the kernel keeps in shared memory. Tiles are SW128 (wgmma_sm90.cuh) and each starts
// 1024-byte aligned, which the TMA's 128B swizzle and the wgmma descriptors (base offset 0) need.
template <typename Traits>
struct SharedStorageSm90Ws {
  using T = typename Traits::Element;
  alignas(kSw128AtomBytes) T q[Traits::kBlockM * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T k[Traits::kStages][Traits::kBlockN * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T v[Traits::kStages][Traits::kBlockN * Traits::kHeadDim];
  uint64_t q_full;                   // Q landed (1 arrival + bytes)
  uint64_t k_full[Traits::kStages];  // K of the stage landed
  uint64_t v_full[Traits::kStages];
  uint64_t k_empty[Traits::kStages];  // every consumer warp is done with K of the stage
  uint64_t v_empty[Traits::kStages];
};
template <typename Traits>
constexpr bool kSharedStorageFits =
    sizeof(SharedStorageSm90Ws<Traits>) + kSw128AtomBytes <= size_t(Traits::kSmemBytes);

}  // namespace sparge::cuda
