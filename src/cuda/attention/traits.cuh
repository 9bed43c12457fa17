// Tile sizes and shared-memory layout of the sm80 (mma.sync) attention kernel, one place per
// (dtype, head dim): the launcher and the kernel read every number from here.
#pragma once

#include <cstdint>
#include <type_traits>

namespace sparge::cuda {

// kInt8Qk_: Q and K are the quantization pass's INT8 codes (QuantMode::kInt8): Q·Kᵀ runs as
// mma.sync m16n8k32 s8 on the same ldmatrix fragments (a 16-byte row segment holds 16 codes
// instead of 8 elements), P·V stays in T.
template <typename T, int kHeadDim_, bool kInt8Qk_ = false>
struct AttnTraitsSm80 {
  using Element = T;  // V, P and O (and Q, K unless kInt8Qk)
  static constexpr bool kInt8Qk = kInt8Qk_;
  using QkElement = std::conditional_t<kInt8Qk, int8_t, T>;
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
  // The same for the Q and K tiles (16 codes per segment with kInt8Qk).
  static constexpr int kQkChunk = 16 / int(sizeof(QkElement));
  static constexpr int kQkChunksPerRow = kHeadDim / kQkChunk;
  static constexpr int kQkStep = kQkChunk * 2;  // head-dim columns per mma k step (16 or 32)
  // Shared memory: Q tile, one K tile, one V tile (K of tile t+1 loads during P·V of tile t and
  // V of tile t during QKᵀ of tile t, as in FlashAttention-2).
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kQBytes = kQElems * int(sizeof(QkElement));
  static constexpr int kKBytes = kKVElems * int(sizeof(QkElement));
  static constexpr int kSmemBytes = kQBytes + kKBytes + kKVElems * int(sizeof(T));

  static_assert(kSlabs == 2, "the P·V paths are written for two 16-row slabs per warp");
  static_assert(kHeadDim % 64 == 0, "the XOR swizzle needs at least 4 chunks of 16 bytes per row");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA exceeds sm_90's 227 KiB");
};

// Row-major tile with 16-byte chunks XOR-swizzled by row, so that the 8 rows an ldmatrix reads
// (8 consecutive rows from a multiple of 8) hit 8 different 16-byte bank groups: chunk c of row
// r lives at c ^ (r % 8) with 8 or more chunks per row; with 4 (64-byte rows: int8 Q/K at head
// dim 64) two rows share a 128-byte line, and c ^ ((r / 2) % 4) spreads each pair's chunks.
// Returns the offset in elements of kChunkElems per chunk.
template <int kChunksPerRow, int kChunkElems = 8>
__device__ __forceinline__ int swizzle_offset(int row, int chunk) {
  static_assert(kChunksPerRow == 4 || kChunksPerRow % 8 == 0, "rows of 4 or 8k chunks");
  if constexpr (kChunksPerRow >= 8)
    return row * kChunksPerRow * kChunkElems + ((chunk ^ (row & 7)) * kChunkElems);
  else
    return row * kChunksPerRow * kChunkElems + ((chunk ^ ((row >> 1) & 3)) * kChunkElems);
}

}  // namespace sparge::cuda
