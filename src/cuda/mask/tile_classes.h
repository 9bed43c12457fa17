// The tile classes of a dense attention mask on CUDA (common/dense_mask.cuh says what they mean):
// one launch before Stage 1 and Stage 2, read by both.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/dense_mask.cuh"
#include "sparge/status.h"

namespace sparge::cuda {

struct TileClassParams {
  DenseMaskView mask;           // the mask's data and strides (its tile_class unused here)
  uint8_t* out;                 // [class_batch, class_heads, num_q_blocks, num_k_blocks]
  const int32_t* key_lengths;   // AttentionMask::key_lengths (null: none)
  detail::KeyBand band;         // causal, window
  int seq_q, seq_k, block_q, block_k, num_q_blocks, num_k_blocks;
  int class_batch, class_heads;
};

// Bytes of the class table: one per tile of each (batch entry, query head) the mask or the key
// lengths tell apart (an axis the mask broadcasts over and no key length splits is kept once).
inline std::size_t tile_class_bytes(int64_t class_batch, int64_t class_heads, int64_t seq_q,
                                    int64_t seq_k, int block_q, int block_k) {
  return std::size_t(class_batch * class_heads) * std::size_t(detail::ceil_div(seq_q, block_q)) *
         std::size_t(detail::ceil_div(seq_k, block_k));
}

// Writes every tile's class (tiles outside the band: skipped, their mask never read). One CTA
// per tile; grid (nk, nq, class_batch · class_heads) on `stream`.
Status launch_tile_classes(const TileClassParams& p, cudaStream_t stream);

}  // namespace sparge::cuda
