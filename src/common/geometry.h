// Block geometry and causal rules shared by every backend (host and device code).
//
// Causal: query row r may see key column c iff c <= r + offset, with offset = 0 (top-left) or
// Nk - Nq (bottom-right). A tile (query block i, key block j) is "causally allowed" iff at
// least one valid (r, c) pair inside it is visible; only allowed tiles count as dense work.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPARGE_HD __host__ __device__ __forceinline__
#else
#define SPARGE_HD inline
#endif

namespace sparge::detail {

SPARGE_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

SPARGE_HD int64_t causal_offset(bool bottom_right, int64_t seq_q, int64_t seq_k) {
  return bottom_right ? seq_k - seq_q : 0;
}

// Last key index row r may see (may be < 0: the row sees nothing), or seq_k - 1 when not causal.
SPARGE_HD int64_t last_visible_key(int64_t row, bool causal, int64_t offset, int64_t seq_k) {
  if (!causal) return seq_k - 1;
  int64_t last = row + offset;
  return last < seq_k - 1 ? last : seq_k - 1;
}

// Number of key blocks query block qb may touch: blocks [0, n) are allowed, the rest are not.
// The block's last valid row sees the most keys.
SPARGE_HD int64_t allowed_key_blocks(int64_t qb, int block_q, int block_k, bool causal,
                                     int64_t offset, int64_t seq_q, int64_t seq_k) {
  int64_t last_row = (qb + 1) * block_q - 1;
  if (last_row > seq_q - 1) last_row = seq_q - 1;
  int64_t last_key = last_visible_key(last_row, causal, offset, seq_k);
  if (last_key < 0) return 0;
  return last_key / block_k + 1;
}

// Stage 1's sampled_rows estimate reads `count = min(sample_rows, n)` rows of a query block with
// `n` valid rows starting at row `first`: for s in [0, count), row first + round(s·(n−1)/(count−1))
// (halves round up), which spreads them evenly from the block's first to its last valid row;
// count = 1 reads the last row, the one that sees every causally allowed key block. The rows are
// distinct, and a tail block with n <= sample_rows reads all its rows.
SPARGE_HD int64_t sampled_row_count(int sample_rows, int64_t n) {
  return sample_rows < n ? sample_rows : n;
}
SPARGE_HD int64_t sampled_row(int64_t first, int64_t n, int64_t count, int64_t s) {
  if (count == 1) return first + n - 1;
  return first + (2 * s * (n - 1) + (count - 1)) / (2 * (count - 1));
}

}  // namespace sparge::detail
