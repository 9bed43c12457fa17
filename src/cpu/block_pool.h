// Stage 1's pooling on the CPU, in double: per block of rows, the mean of the (shifted) rows and
// the block's self-similarity s = ‖Σ x̂‖² / n² (x̂ the unit rows: the mean pairwise cosine,
// docs/method.md "Stage 1"), O(N·D), no Gram matrix. Shared by Stage 1 (predict.cc) and the key
// blocks kept beside a KV cache (key_blocks.cc), so both compute the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "sparge/types.h"

namespace sparge::cpu {

// Per-channel mean of k over all its tokens of (b, h): the smoothing shift of Stage 1.
std::vector<double> key_mean(const TensorView& k, int64_t b, int64_t h);

// Blocks [first_block, end_block) of `block` rows of (b, h) of t (t.tokens rows in all; a tail
// block is pooled over its valid rows only). `shift` (D values, per channel) is subtracted from
// every row first when non-null. Writes pooled[blk * block_stride + d * dim_stride] (row-major
// [blocks, D] is (D, 1); KeyBlocks' channel-major [D, max_blocks] is (1, max_blocks)) and
// sim[blk] for each such block; the values do not depend on the strides.
void pool_blocks(const TensorView& t, int64_t b, int64_t h, int block, const double* shift,
                 int64_t first_block, int64_t end_block, double* pooled, int64_t block_stride,
                 int64_t dim_stride, double* sim);

}  // namespace sparge::cpu
