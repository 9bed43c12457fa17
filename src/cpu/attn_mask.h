// The attention mask (sparge::AttentionMask) on the CPU: element values and the per-tile
// classification that both stages use (docs/method.md, "Attention masks").
//
// A (query block, key block) tile is
//   skipped  when no pair in it is visible (band, key_lengths and dense mask together): Stage 1
//            never keeps it and Stage 2 never computes it;
//   plain    when every pair the band leaves visible is unmasked with additive value 0: computed
//            exactly as without a mask;
//   partial  otherwise: the element mask is applied to the tile's scores.
#pragma once

#include <cstdint>
#include <vector>

#include "common/geometry.h"
#include "sparge/types.h"

namespace sparge::cpu {

enum class TileClass : uint8_t { kSkipped = 0, kPlain = 1, kPartial = 2 };

// Reads a validated host AttentionMask (empty: every method says "no mask").
class MaskReader {
 public:
  MaskReader() = default;
  MaskReader(const AttentionMask& mask, int64_t seq_k) : m_(mask), seq_k_(seq_k) {}

  bool active() const { return !m_.empty(); }
  bool dense() const { return m_.data != nullptr; }
  const AttentionMask& mask() const { return m_; }
  int64_t seq_k() const { return seq_k_; }

  // Keys [0, key_end(b)) are real for batch entry b (key_lengths; all of them without it).
  int64_t key_end(int64_t b) const { return detail::key_end(m_.key_lengths, b, seq_k_); }

  // The dense mask's additive term of (b, h, r, c) in natural-log units: 0 (attend), -inf
  // (hidden) or the float mask's value. Key padding is not included (key_end says it).
  float value(int64_t b, int64_t h, int64_t r, int64_t c) const;

  // The class of the tile rows [r0, r1) x keys [c0, c1) of (b, query head h) under `band`.
  TileClass classify(int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                     const detail::KeyBand& band) const;

 private:
  AttentionMask m_;
  int64_t seq_k_ = 0;
};

// Every tile's class, computed once per call for Stage 1 (each (batch, head) the dense mask
// distinguishes, so a mask broadcast over heads is read once, not once per head).
class TileClasses {
 public:
  TileClasses() = default;
  TileClasses(const MaskReader& reader, int64_t batch, int64_t heads, int64_t seq_q, int block_q,
              int block_k, const detail::KeyBand& band);

  bool skipped(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return !table_.empty() && at(b, h, i, j) == TileClass::kSkipped;
  }
  TileClass at(int64_t b, int64_t h, int64_t i, int64_t j) const;

 private:
  std::vector<TileClass> table_;  // [batch', heads', nq, nk], primes: 1 where nothing differs
  int64_t batch_ = 0, heads_ = 0, nq_ = 0, nk_ = 0;
};

}  // namespace sparge::cpu
