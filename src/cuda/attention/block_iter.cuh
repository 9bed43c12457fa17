// The key tiles one query block visits: its BlockMask row (count + ascending key-block indices),
// where the mask's form puts it (padded: row · nk; compact: row_offsets[row], BlockMask's
// row_begin). Every thread of the CTA walks the same iterator, so loads and math agree on the
// sequence. Out-of-range entries (a corrupt device mask) are skipped, and a count is cut to the
// row's slots, rather than read out of bounds.
#pragma once

#include <cstdint>

#include "cuda/attention/params.h"

namespace sparge::cuda {

class BlockIter {
 public:
  __device__ BlockIter(const AttnParams& p, int64_t mask_row) : nk_(p.num_k_blocks) {
    int64_t begin = mask_row * p.num_k_blocks, slots = p.num_k_blocks;
    if (p.mask_row_offsets != nullptr) {
      begin = __ldg(p.mask_row_offsets + mask_row);
      slots = __ldg(p.mask_row_offsets + mask_row + 1) - begin;
      if (slots > nk_) slots = nk_;  // a row lists each key block at most once
    }
    next_ = p.mask_indices + begin;
    const int count = p.mask_counts[mask_row];
    left_ = count < 0 ? 0 : (count > slots ? int(slots) : count);
    advance_to_valid();
  }
  __device__ bool done() const { return left_ <= 0; }
  __device__ int block() const { return current_; }
  __device__ void next() {
    ++next_;
    --left_;
    advance_to_valid();
  }

 private:
  // A cursor and the entries left rather than a position and a count: the consumer's loop then
  // advances a pointer instead of recomputing base + 4·pos (sign extension, shifts) per entry,
  // and one unsigned compare tests 0 <= b < nk (nk > 0).
  __device__ void advance_to_valid() {
    for (; left_ > 0; ++next_, --left_) {
      current_ = __ldg(next_);
      if (static_cast<unsigned>(current_) < static_cast<unsigned>(nk_)) return;
    }
  }
  const int32_t* next_;  // the entry block() returns while !done()
  int left_, nk_, current_ = 0;
};

// The same sequence grouped into turns of up to kBlocks consecutive entries (the warp-specialized
// kernel's consumer turn: kBlocks·64 keys, one TMA box per block, so the blocks of a turn need not
// be adjacent). Only the row's last turn can be short; its missing entries are -1.
template <int kBlocks>
class BlockTurnIter {
 public:
  __device__ BlockTurnIter(const AttnParams& p, int64_t mask_row) : it_(p, mask_row) { fill(); }
  __device__ bool done() const { return count_ == 0; }
  __device__ int count() const { return count_; }  // kept blocks in this turn, 1..kBlocks
  // Entry i of the turn, -1 for i >= count(). Call with a compile-time i (unrolled loops) so
  // that the array stays in registers.
  __device__ int block(int i) const { return block_[i]; }
  __device__ bool last() const { return it_.done(); }  // no entry follows this turn
  __device__ void next() { fill(); }

 private:
  __device__ void fill() {
    count_ = 0;
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      block_[i] = it_.done() ? -1 : it_.block();
      if (!it_.done()) {
        ++count_;
        it_.next();
      }
    }
  }
  BlockIter it_;
  int block_[kBlocks];
  int count_;
};

}  // namespace sparge::cuda
