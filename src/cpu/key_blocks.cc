// Key blocks kept beside a KV cache (types.h: KeyBlocks) on the CPU: the mean and the pooled
// rows and similarities of k's blocks, with the pooling Stage 1 runs (block_pool.h), so a Stage 1
// that reads them computes the bits it would compute from k with the same mean.
#include <algorithm>

#include "common/backend.h"
#include "common/geometry.h"
#include "cpu/block_pool.h"

namespace sparge::cpu {

Status update_key_blocks(const TensorView& k, KeyBlocks* blocks, int64_t first_block,
                         bool new_mean) {
  const int64_t D = k.head_dim, heads = k.batch * k.heads;
  const int64_t end_block = detail::ceil_div(k.tokens, blocks->block_k);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < heads; ++bh) {
    const int64_t b = bh / k.heads, h = bh % k.heads;
    double* mean = blocks->mean + bh * D;
    if (new_mean) {
      const std::vector<double> m = key_mean(k, b, h);
      std::copy(m.begin(), m.end(), mean);
    }
    // Channel-major, as KeyBlocks stores them: [D, max_blocks] per (batch, kv head).
    pool_blocks(k, b, h, blocks->block_k, mean, first_block, end_block,
                blocks->pooled + bh * D * blocks->max_blocks, 1, blocks->max_blocks,
                blocks->sim + bh * blocks->max_blocks);
  }
  blocks->tokens = k.tokens;
  return Status::ok();
}

}  // namespace sparge::cpu
