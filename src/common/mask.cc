// Host-side helpers on host block masks: the dense (allowed) mask and sparsity statistics.
#include <algorithm>
#include <string>

#include "common/backend.h"
#include "common/geometry.h"
#include "common/validate.h"
#include "sparge/sparge.h"

namespace sparge {
namespace {

// Block sizes >= 1 and extents >= 0: what num_q_blocks()/num_k_blocks() divide by and count.
bool sane_geometry(const BlockMask& m) {
  return m.block_q >= 1 && m.block_k >= 1 && m.batch >= 0 && m.heads >= 0 && m.seq_q >= 0 &&
         m.seq_k >= 0;
}

SparseOptions visibility(bool causal, CausalAlign align) {
  SparseOptions o;
  o.causal = causal;
  o.causal_align = align;
  return o;
}

}  // namespace

Status fill_dense_mask(const BlockMask& m, const SparseOptions& opts) {
  if (m.device != Device::kCPU) return Status::invalid("fill_dense_mask needs a host (cpu) mask");
  if (m.counts == nullptr || m.indices == nullptr)
    return Status::invalid("mask.counts and mask.indices must not be null");
  if (!sane_geometry(m))
    return Status::invalid("mask geometry must have block_q, block_k >= 1 and batch, heads, "
                           "seq_q, seq_k >= 0");
  SPARGE_RETURN_IF_ERROR(detail::validate_mask_offsets(m));
  const int64_t nq = m.num_q_blocks();
  const detail::KeyBand band = detail::Problem::band_of(opts, m.seq_q, m.seq_k);
  for (int64_t bh = 0; bh < m.batch * m.heads; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      const int64_t row = bh * nq + qb;
      const detail::BlockRange allowed =
          detail::allowed_key_blocks(qb, m.block_q, m.block_k, band, m.seq_q, m.seq_k);
      if (allowed.size() > m.row_slots(row))
        return Status::invalid("mask.row_offsets give row " + std::to_string(row) + " " +
                               std::to_string(m.row_slots(row)) + " slots; the dense mask keeps " +
                               std::to_string(allowed.size()) + " key blocks there");
      m.counts[row] = static_cast<int32_t>(allowed.size());
      for (int64_t j = allowed.begin; j < allowed.end; ++j)
        m.indices[m.row_begin(row) + j - allowed.begin] = static_cast<int32_t>(j);
    }
  return Status::ok();
}

Status fill_dense_mask(const BlockMask& m, bool causal, CausalAlign align) {
  return fill_dense_mask(m, visibility(causal, align));
}

// A hand-written mask may hold any counts: a row contributes only its first min(count, slots)
// entries, and only indices inside its allowed range count as computed (validation rejects such
// a mask before attention; statistics must still not read outside the row). A mask without
// storage or geometry has no tiles.
AttentionStats mask_stats(const BlockMask& m, const SparseOptions& opts) {
  AttentionStats s;
  if (m.counts == nullptr || m.indices == nullptr || !sane_geometry(m) ||
      !detail::validate_mask_offsets(m).is_ok())
    return s;
  const int64_t nq = m.num_q_blocks();
  const detail::KeyBand band = detail::Problem::band_of(opts, m.seq_q, m.seq_k);
  for (int64_t bh = 0; bh < m.batch * m.heads; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      const int64_t row = bh * nq + qb;
      const detail::BlockRange allowed =
          detail::allowed_key_blocks(qb, m.block_q, m.block_k, band, m.seq_q, m.seq_k);
      s.tiles_dense += allowed.size();
      const int64_t count = std::min<int64_t>(m.counts[row], m.row_slots(row));
      for (int64_t t = 0; t < count; ++t)
        if (allowed.contains(m.indices[m.row_begin(row) + t])) ++s.tiles_computed;
    }
  return s;
}

AttentionStats mask_stats(const BlockMask& m, bool causal, CausalAlign align) {
  return mask_stats(m, visibility(causal, align));
}

}  // namespace sparge
