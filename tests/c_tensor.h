// The C ABI's views (sparge_tensor, sparge_block_mask) of TensorViews and BlockMasks, for the
// tests that call the C ABI (block masks on the host).
#pragma once

#include <cstdint>

#include "sparge/sparge_c.h"
#include "sparge/types.h"

namespace sparge::test {

inline sparge_tensor c_tensor(const TensorView& t) {
  sparge_tensor c{};
  c.data = t.data;
  c.dtype = static_cast<int>(t.dtype);
  c.device = static_cast<int>(t.device);  // sparge_device's codes are Device's
  c.device_index = t.device_index;
  const int64_t shape[4] = {t.batch, t.heads, t.tokens, t.head_dim};
  const int64_t strides[4] = {t.stride_batch, t.stride_head, t.stride_token, t.stride_dim};
  for (int i = 0; i < 4; ++i) {
    c.shape[i] = shape[i];
    c.strides[i] = strides[i];
  }
  return c;
}

inline sparge_block_mask c_block_mask(const BlockMask& m) {
  return sparge_block_mask{m.counts, m.indices, SPARGE_CPU, 0,         m.batch,
                           m.heads,  m.seq_q,   m.seq_k,    m.block_q, m.block_k,
                           m.row_offsets};
}

}  // namespace sparge::test
