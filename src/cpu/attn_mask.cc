// Element values and tile classes of an attention mask on the CPU (cpu/attn_mask.h).
#include "cpu/attn_mask.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/fp_convert.h"

namespace sparge::cpu {

float MaskReader::value(int64_t b, int64_t h, int64_t r, int64_t c) const {
  if (m_.data == nullptr) return 0.0f;
  const int64_t off = m_.offset(b, h, r, c);
  switch (m_.dtype) {
    case MaskDType::kBool:
      return static_cast<const uint8_t*>(m_.data)[off] ? 0.0f
                                                        : -std::numeric_limits<float>::infinity();
    case MaskDType::kFloat16:
      return detail::half_bits_to_float(static_cast<const uint16_t*>(m_.data)[off]);
    case MaskDType::kBFloat16:
      return detail::bf16_bits_to_float(static_cast<const uint16_t*>(m_.data)[off]);
    default:
      return static_cast<const float*>(m_.data)[off];
  }
}

TileClass MaskReader::classify(int64_t b, int64_t h, int64_t r0, int64_t r1, int64_t c0,
                               int64_t c1, const detail::KeyBand& band) const {
  const int64_t end = std::min(c1, key_end(b));
  if (end <= c0) return TileClass::kSkipped;  // the whole tile is key padding
  bool visible = false, plain = true;
  // A mask with one query row (key padding, [B, Nk]) is the same on every row, so without a band
  // one row says it all; otherwise each row's visible keys are read.
  const int64_t rows_to_read = dense() && m_.seq_q == 1 && !band.limited() ? 1 : r1 - r0;
  for (int64_t r = r0; r < r0 + rows_to_read; ++r) {
    const int64_t first = std::max(c0, detail::first_visible_key(r, band));
    const int64_t last_band = std::min(c1 - 1, detail::last_visible_key(r, band, seq_k_));
    const int64_t last = std::min(last_band, end - 1);
    if (last_band > last) plain = false;  // the band shows the row padding keys: mask them
    for (int64_t c = first; c <= last; ++c) {
      const float x = value(b, h, r, c);
      if (x != -std::numeric_limits<float>::infinity()) visible = true;
      if (x != 0.0f) plain = false;  // hidden or biased (NaN too: it must reach the scores)
    }
    if (visible && !plain) return TileClass::kPartial;
  }
  if (!visible) return TileClass::kSkipped;
  return plain ? TileClass::kPlain : TileClass::kPartial;
}

TileClasses::TileClasses(const MaskReader& reader, int64_t batch, int64_t heads, int64_t seq_q,
                         int block_q, int block_k, const detail::KeyBand& band) {
  if (!reader.active()) return;
  const AttentionMask& m = reader.mask();
  // Key lengths differ per batch entry; a dense mask differs where its extent is not 1.
  batch_ = m.key_lengths != nullptr || (reader.dense() && m.batch > 1) ? batch : 1;
  heads_ = reader.dense() && m.heads > 1 ? heads : 1;
  nq_ = detail::ceil_div(seq_q, block_q);
  nk_ = detail::ceil_div(reader.seq_k(), block_k);
  // Tiles outside the band are never read (Stage 1 only asks about allowed ones): kSkipped.
  table_.assign(batch_ * heads_ * nq_ * nk_, TileClass::kSkipped);
#pragma omp parallel for schedule(dynamic)
  for (int64_t row = 0; row < batch_ * heads_ * nq_; ++row) {
    const int64_t i = row % nq_, b = row / nq_ / heads_, h = row / nq_ % heads_;
    const detail::BlockRange allowed =
        detail::allowed_key_blocks(i, block_q, block_k, band, seq_q, reader.seq_k());
    const int64_t r0 = i * block_q, r1 = std::min<int64_t>(seq_q, r0 + block_q);
    for (int64_t j = allowed.begin; j < allowed.end; ++j)
      table_[row * nk_ + j] = reader.classify(
          b, h, r0, r1, j * block_k, std::min<int64_t>(reader.seq_k(), (j + 1) * block_k), band);
  }
}

TileClass TileClasses::at(int64_t b, int64_t h, int64_t i, int64_t j) const {
  const int64_t bb = batch_ > 1 ? b : 0, hh = heads_ > 1 ? h : 0;
  return table_[((bb * heads_ + hh) * nq_ + i) * nk_ + j];
}

}  // namespace sparge::cpu
