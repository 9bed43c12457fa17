// Mainloop pieces of the sm_90a block-sparse attention kernel: global->shared tile loads into
// SW128 tiles (cp.async, zero-filled past the sequence end) and the two warpgroup GEMMs
// (S = Q·Kᵀ with both operands in shared memory, O += P·V with P from registers).
#pragma once

#include <cstdint>

#include "cuda/attention/traits_sm90.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

// Rows [row0, row0 + kRows) of a (batch, head) slice into an SW128 tile; rows at or past
// `rows_valid` are zero-filled (their global address is never read). Consecutive threads copy
// consecutive 16-byte chunks of a row, so global reads are coalesced.
template <typename Traits, int kRows>
__device__ __forceinline__ void load_tile_sw128(typename Traits::Element* sTile,
                                                const typename Traits::Element* gBase,
                                                int64_t stride_token, int row0, int rows_valid) {
  constexpr int kCpr = Traits::kChunksPerRow;
  constexpr int kRowsPerPass = Traits::kThreads / kCpr;
  static_assert(Traits::kThreads % kCpr == 0 && kRows % kRowsPerPass == 0 && kRowsPerPass % 8 == 0,
                "tile chunks must split evenly over threads in whole swizzle periods");
  const int row = threadIdx.x / kCpr, chunk = threadIdx.x % kCpr;
  // kRowsPerPass is a multiple of 8, so the swizzled column is the same on every pass.
  auto* dst = sTile + sw128_offset<kRows>(row, chunk * Traits::kChunk);
  const auto* src = gBase + int64_t(row0 + row) * stride_token + chunk * Traits::kChunk;
  const int64_t step = int64_t(kRowsPerPass) * stride_token;
#pragma unroll
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    const bool valid = row0 + row + pass * kRowsPerPass < rows_valid;
    cp_async_16(dst + pass * kRowsPerPass * 64, valid ? src : gBase, valid);
    src += step;
  }
}

// S[64 rows of warpgroup wg × 64 keys] = Q·Kᵀ, issued (not waited). Both operands are K-major
// SW128 tiles: a k16 step advances the start address by 32 bytes inside the 128-byte row, and
// a new 64-column block every 4 steps.
template <typename Traits>
__device__ __forceinline__ void issue_qk(float (&s)[Traits::kBlockN / 8][4], uint32_t sQ_addr,
                                         uint32_t sK_addr, int wg) {
  constexpr int kQBlockBytes = Traits::kBlockM * kSw128RowBytes;  // one 64-column block of Q
  constexpr int kKBlockBytes = Traits::kBlockN * kSw128RowBytes;
#pragma unroll
  for (int ks = 0; ks < Traits::kHeadDim / 16; ++ks) {
    const uint32_t a = sQ_addr + (ks / 4) * kQBlockBytes + wg * 64 * kSw128RowBytes + (ks % 4) * 32;
    const uint32_t b = sK_addr + (ks / 4) * kKBlockBytes + (ks % 4) * 32;
    wgmma_m64n64k16_ss<typename Traits::Element>(s, sw128_desc(a, 16, kSw128AtomBytes),
                                                 sw128_desc(b, 16, kSw128AtomBytes), ks > 0);
  }
}

// O[64 rows × D] += P·V, issued (not waited). V is [key][channel] in an SW128 tile: MN-major
// for this product, 8 keys per 1024-byte atom (stride byte offset) and 64 channels per column
// block (leading byte offset between blocks).
template <typename Traits>
__device__ __forceinline__ void issue_pv(float (&acc)[Traits::kHeadDim / 8][4],
                                         const uint32_t (&p)[Traits::kBlockN / 16][4],
                                         uint32_t sV_addr) {
  constexpr int kVBlockBytes = Traits::kBlockN * kSw128RowBytes;
#pragma unroll
  for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
    const uint32_t b = sV_addr + kk * 16 * kSw128RowBytes;
    wgmma_m64nNk16_rs<typename Traits::Element, Traits::kHeadDim>(
        acc, p[kk], sw128_desc(b, kVBlockBytes, kSw128AtomBytes));
  }
}

}  // namespace sparge::cuda
