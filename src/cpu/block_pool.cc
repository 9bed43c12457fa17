// Stage 1's pooling and self-similarity (block_pool.h).
#include "cpu/block_pool.h"

#include <algorithm>
#include <cmath>

#include "cpu/tensor_io.h"

namespace sparge::cpu {

std::vector<double> key_mean(const TensorView& k, int64_t b, int64_t h) {
  std::vector<double> mean(k.head_dim, 0.0);
  for (int64_t n = 0; n < k.tokens; ++n)
    for (int64_t d = 0; d < k.head_dim; ++d) mean[d] += load_element(k, k.offset(b, h, n, d));
  for (double& m : mean) m /= static_cast<double>(k.tokens);
  return mean;
}

void pool_blocks(const TensorView& t, int64_t b, int64_t h, int block, const double* shift,
                 int64_t first_block, int64_t end_block, double* pooled_out,
                 int64_t block_stride, int64_t dim_stride, double* sim) {
  const int64_t D = t.head_dim;
  std::vector<double> row(D), unit_sum(D), pooled(D);
  for (int64_t blk = first_block; blk < end_block; ++blk) {
    const int64_t first = blk * block, n = std::min<int64_t>(block, t.tokens - first);
    std::fill(pooled.begin(), pooled.end(), 0.0);
    std::fill(unit_sum.begin(), unit_sum.end(), 0.0);
    for (int64_t r = first; r < first + n; ++r) {
      double norm2 = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        row[d] = load_element(t, t.offset(b, h, r, d)) - (shift ? shift[d] : 0.0);
        norm2 += row[d] * row[d];
        pooled[d] += row[d];
      }
      if (norm2 == 0.0) continue;  // a zero row normalizes to zero; NaN rows propagate
      const double inv = 1.0 / std::sqrt(norm2);
      for (int64_t d = 0; d < D; ++d) unit_sum[d] += row[d] * inv;
    }
    double sum2 = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      pooled_out[blk * block_stride + d * dim_stride] = pooled[d] / static_cast<double>(n);
      sum2 += unit_sum[d] * unit_sum[d];
    }
    sim[blk] = sum2 / (static_cast<double>(n) * static_cast<double>(n));
  }
}

}  // namespace sparge::cpu
