// Tile sizes and shared-memory layout of the sm_90a (wgmma) attention kernel, one place per
// (dtype, head dim): the launcher and the kernel read every number from here.
#pragma once

#include <cstdint>

#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim_>
struct AttnTraitsSm90 {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // query rows per CTA = SparseOptions::block_q
  static constexpr int kBlockN = 64;   // keys per tile = SparseOptions::block_k
  // Two warpgroups of 64 rows share every K/V tile of the CTA's BlockMask row; within a
  // warpgroup, warp w owns rows 16w..16w+15 (one λ group, as in the sm80 kernel).
  static constexpr int kWarpgroups = kBlockM / 64;
  static constexpr int kThreads = kWarpgroups * 128;
  static constexpr int kSlabRows = 16;
  // No register cap: d128 needs 155-159 registers (one CTA per SM); capping at 128 for two
  // spills 144 bytes and makes ptxas serialize the wgmma pipeline (C7512). d64 fits two anyway.
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr int kChunk = 8;  // elements per 16-byte cp.async
  static constexpr int kChunksPerRow = kHeadDim / kChunk;
  // Shared memory (SW128 tiles, see wgmma_sm90.cuh): Q, then two stages of K and two of V, so
  // that tile t+1's K and tile t's V load while tile t's QKᵀ and tile t-1's P·V run.
  static constexpr int kQBytes = kBlockM * kHeadDim * int(sizeof(T));
  static constexpr int kKVBytes = kBlockN * kHeadDim * int(sizeof(T));
  static constexpr int kStages = 2;
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kKVBytes + kSw128AtomBytes;  // + align

  static_assert(sizeof(T) == 2, "the SW128 layout is written for 16-bit elements");
  static_assert(kHeadDim % 64 == 0, "SW128 column blocks are 64 elements wide");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA exceeds sm_90's 227 KiB");
};

}  // namespace sparge::cuda
