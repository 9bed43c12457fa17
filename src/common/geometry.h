// Block geometry and the visibility rules (causal, sliding window) shared by every backend (host
// and device code).
//
// Visibility is a band around the aligned diagonal: query row r may see key column c iff
//   lo <= c - r <= hi   (and 0 <= c < Nk),
// with offset = 0 (top-left) or Nk - Nq (bottom-right) by causal_align, and
//   hi = offset                      when causal,
//      = offset + window_right       when window_right >= 0 (and not causal),
//      = no bound                    otherwise;
//   lo = offset - window_left        when window_left >= 0, else no bound.
// (flash-attn's window_size = (left, right) with its causal flag; SDPA's is_causal is causal
// with top-left alignment.) A tile (query block i, key block j) is "allowed" iff at least one
// valid (r, c) pair inside it is visible; only allowed tiles count as dense work. Since each
// row's visible keys are an interval moving right with r, a query block's allowed key blocks are
// one contiguous range.
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

// The band of key - row differences a row sees. Unbounded sides hold a value no difference
// reaches (|c - r| < 2^62), so the tests below need no flags.
struct KeyBand {
  static constexpr int64_t kNoLimit = int64_t(1) << 62;
  int64_t lo = -kNoLimit;
  int64_t hi = kNoLimit;

  // Whether any pair is hidden inside the sequence bounds (the kernels' banded instances).
  SPARGE_HD bool limited() const { return lo > -kNoLimit || hi < kNoLimit; }
};

SPARGE_HD KeyBand key_band(bool causal, bool bottom_right, int64_t window_left,
                           int64_t window_right, int64_t seq_q, int64_t seq_k) {
  const int64_t offset = causal_offset(bottom_right, seq_q, seq_k);
  KeyBand band;
  if (window_left >= 0) band.lo = offset - window_left;
  if (causal)
    band.hi = offset;
  else if (window_right >= 0)
    band.hi = offset + window_right;
  return band;
}

// The band of rows numbered from `first_row` of the call's queries, as a view of those rows
// (row chunks) numbers them from 0: c - (r + first_row) in [lo, hi] is c - r in the shifted band.
SPARGE_HD KeyBand shift_rows(KeyBand band, int64_t first_row) {
  if (band.lo > -KeyBand::kNoLimit) band.lo += first_row;
  if (band.hi < KeyBand::kNoLimit) band.hi += first_row;
  return band;
}

// First and last key row r may see (first > last: the row sees nothing).
SPARGE_HD int64_t first_visible_key(int64_t row, const KeyBand& band) {
  const int64_t first = row + band.lo;
  return first > 0 ? first : 0;
}
SPARGE_HD int64_t last_visible_key(int64_t row, const KeyBand& band, int64_t seq_k) {
  const int64_t last = row + band.hi;
  return last < seq_k - 1 ? last : seq_k - 1;
}

// The keys batch entry b's rows may see, [0, key_end): seq_k, or the entry's length
// (AttentionMask::key_lengths) clamped to [0, seq_k] (device lengths are not checked on the host,
// which would need a copy; host ones are validated before they get here). The band keeps its
// alignment to seq_k: pass key_end as the sequence end to cut a row's keys or a block's range.
SPARGE_HD int64_t key_end(const int32_t* key_lengths, int64_t b, int64_t seq_k) {
  if (key_lengths == nullptr) return seq_k;
#if defined(__CUDA_ARCH__)
  const int64_t len = __ldg(key_lengths + b);
#else
  const int64_t len = key_lengths[b];
#endif
  return len < 0 ? 0 : (len > seq_k ? seq_k : len);
}

// The attention kernels' element mask, per row and per thread: the thread's score columns are
// keys c0 + j (j a compile-time offset in [0, block_k)), and row `row` sees key c0 + j iff
// first <= j <= last, the same pairs as "c0 + j < key_end and (unless banded is false)
// key_lo <= c0 + j - row <= key_hi" (the band of AttnParams, clamped to ints). Two bounds a row
// (in 64 bits, then clamped to [-1, block_k], where every bound past the block acts the same) make
// each score one or two compares with an immediate instead of the key's index and three compares.
struct VisibleColumns {
  int first, last;
  SPARGE_HD bool contains(int j) const { return j >= first && j <= last; }
};

SPARGE_HD int clamp_to_block(int64_t x, int block_k) {
  return x < -1 ? -1 : (x > block_k ? block_k : int(x));
}

SPARGE_HD VisibleColumns visible_columns(int row, int c0, int key_end, int key_lo, int key_hi,
                                         bool banded, int block_k) {
  int64_t last = int64_t(key_end) - 1 - c0, first = -1;
  if (banded) {
    const int64_t band_last = int64_t(row) + key_hi - c0;
    if (band_last < last) last = band_last;
    first = int64_t(row) + key_lo - c0;
  }
  return VisibleColumns{clamp_to_block(first, block_k), clamp_to_block(last, block_k)};
}

// The key blocks query block qb may touch: [begin, end), empty when begin == end. The block's
// first row sees the leftmost keys, its last valid row the rightmost, and every key between
// them is seen by some row (the band moves one key per row and is at least one key wide).
struct BlockRange {
  int64_t begin = 0, end = 0;
  SPARGE_HD int64_t size() const { return end - begin; }
  SPARGE_HD bool contains(int64_t j) const { return j >= begin && j < end; }
};

SPARGE_HD BlockRange allowed_key_blocks(int64_t qb, int block_q, int block_k, const KeyBand& band,
                                        int64_t seq_q, int64_t seq_k) {
  const int64_t first_row = qb * block_q;
  int64_t last_row = first_row + block_q - 1;
  if (last_row > seq_q - 1) last_row = seq_q - 1;
  const int64_t first_key = first_visible_key(first_row, band);
  const int64_t last_key = last_visible_key(last_row, band, seq_k);
  BlockRange range;
  if (last_row < first_row || last_key < 0 || first_key > last_key) return range;
  range.begin = first_key / block_k;
  range.end = last_key / block_k + 1;
  return range;
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
