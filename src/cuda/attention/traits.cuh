// Tile sizes and shared-memory layout of the sm80 (mma.sync) attention kernel, one place per
// (dtype, head dim): the launcher and the kernel read every number from here.
#pragma once

#include <cstdint>

namespace sparge::cuda {

template <typename T, int kHeadDim_>
struct AttnTraitsSm80 {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // query rows per CTA = SparseOptions::block_q
  static constexpr int kBlockN = 64;   // keys per tile = SparseOptions::block_k
  // 4 warps × 32 rows: each K/V fragment read from shared memory feeds the mma of two 16-row
  // slabs (FlashAttention-2's split); with 16 rows per warp the kernel was bound by ldmatrix.
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kSlabRows = 16;  // one m16 mma slab = one λ-skip group (pv_group_rows)
  static constexpr int kSlabs = kRowsPerWarp / kSlabRows;
  // Registers: d128 keeps 2 × 64 accumulator floats + 2 × 32 scores per thread: 2 CTAs (8 warps)
  // per SM at the 255-register cap (ptxas: 152 bytes of spill). d64 at 3 CTAs spilled 232 bytes.
  static constexpr int kMinBlocksPerSm = 2;
  static constexpr int kChunk = 8;  // elements per 16-byte cp.async / ldmatrix row segment
  static constexpr int kChunksPerRow = kHeadDim / kChunk;
  // Shared memory: Q tile, one K tile, one V tile (K of tile t+1 loads during P·V of tile t and
  // V of tile t during QKᵀ of tile t, as in FlashAttention-2).
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kSmemBytes = (kQElems + 2 * kKVElems) * int(sizeof(T));

  static_assert(kSlabs == 2, "the P·V paths are written for two 16-row slabs per warp");
  static_assert(kHeadDim % 64 == 0, "the XOR swizzle needs 8 chunks of 16 bytes per row");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA exceeds sm_90's 227 KiB");
};

// Row-major tile with 16-byte chunks XOR-swizzled by row (chunk c of row r lives at
// c ^ (r % 8)): the 8 rows an ldmatrix reads hit 8 different bank groups.
template <int kChunksPerRow>
__device__ __forceinline__ int swizzle_offset(int row, int chunk) {
  return row * kChunksPerRow * 8 + ((chunk ^ (row & 7)) * 8);
}

}  // namespace sparge::cuda
