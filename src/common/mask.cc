// Host-side helpers on host block masks: the dense (or causal) mask and sparsity statistics.
#include "common/geometry.h"
#include "sparge/sparge.h"

namespace sparge {

Status fill_dense_mask(const BlockMask& m, bool causal, CausalAlign align) {
  if (m.device != Device::kCPU) return Status::invalid("fill_dense_mask needs a host (cpu) mask");
  if (m.counts == nullptr || m.indices == nullptr)
    return Status::invalid("mask.counts and mask.indices must not be null");
  const int64_t nq = m.num_q_blocks(), nk = m.num_k_blocks();
  const int64_t offset =
      detail::causal_offset(align == CausalAlign::kBottomRight, m.seq_q, m.seq_k);
  for (int64_t bh = 0; bh < m.batch * m.heads; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      const int64_t row = bh * nq + qb;
      const int64_t n = detail::allowed_key_blocks(qb, m.block_q, m.block_k, causal, offset,
                                                   m.seq_q, m.seq_k);
      m.counts[row] = static_cast<int32_t>(n);
      for (int64_t j = 0; j < n; ++j) m.indices[row * nk + j] = static_cast<int32_t>(j);
    }
  return Status::ok();
}

AttentionStats mask_stats(const BlockMask& m, bool causal, CausalAlign align) {
  AttentionStats s;
  const int64_t nq = m.num_q_blocks(), nk = m.num_k_blocks();
  const int64_t offset =
      detail::causal_offset(align == CausalAlign::kBottomRight, m.seq_q, m.seq_k);
  for (int64_t bh = 0; bh < m.batch * m.heads; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      const int64_t row = bh * nq + qb;
      const int64_t allowed = detail::allowed_key_blocks(qb, m.block_q, m.block_k, causal, offset,
                                                         m.seq_q, m.seq_k);
      s.tiles_dense += allowed;
      for (int32_t t = 0; t < m.counts[row]; ++t)
        if (m.indices[row * nk + t] < allowed) ++s.tiles_computed;
    }
  return s;
}

}  // namespace sparge
