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
  static constexpr int kWarps = 8;     // each warp owns 16 query rows = one λ-skip group
  static constexpr int kThreads = kWarps * 32;
  // 2 CTAs (16 warps) per SM: d128 then spills 104 bytes at the 128-register cap, but hides
  // latency better (bench/results/2026-11-22_NVIDIA-H200_occupancy2.jsonl vs ..._attention.jsonl).
  static constexpr int kMinBlocksPerSm = 2;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kChunk = 8;  // elements per 16-byte cp.async / ldmatrix row segment
  static constexpr int kChunksPerRow = kHeadDim / kChunk;
  // Shared memory: Q tile, one K tile, one V tile (K of tile t+1 loads during P·V of tile t and
  // V of tile t during QKᵀ of tile t, as in FlashAttention-2).
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kSmemBytes = (kQElems + 2 * kKVElems) * int(sizeof(T));

  static_assert(kRowsPerWarp == 16, "the λ skip is decided per warp over 16 rows (pv_group_rows)");
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
