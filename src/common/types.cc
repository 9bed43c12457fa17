// Out-of-line members of the public value types.
#include <algorithm>
#include <cstring>

#include <string>

#include "common/geometry.h"
#include "common/validate.h"
#include "sparge/status.h"
#include "sparge/types.h"

namespace sparge {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

std::size_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

const char* mask_dtype_name(MaskDType t) {
  switch (t) {
    case MaskDType::kBool: return "bool";
    case MaskDType::kFloat32: return "float32";
    case MaskDType::kFloat16: return "float16";
    case MaskDType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

std::size_t mask_dtype_size(MaskDType t) {
  switch (t) {
    case MaskDType::kBool: return 1;
    case MaskDType::kFloat32: return 4;
    default: return 2;
  }
}

TensorView TensorView::contiguous(void* data, DType dtype, Layout layout, int64_t batch,
                                  int64_t heads, int64_t tokens, int64_t head_dim, Device device,
                                  int device_index) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.device_index = device_index;
  t.batch = batch;
  t.heads = heads;
  t.tokens = tokens;
  t.head_dim = head_dim;
  t.stride_dim = 1;
  if (layout == Layout::kHND) {
    t.stride_token = head_dim;
    t.stride_head = tokens * head_dim;
  } else {
    t.stride_head = head_dim;
    t.stride_token = heads * head_dim;
  }
  t.stride_batch = heads * tokens * head_dim;
  t.capacity = batch * heads * tokens * head_dim;
  return t;
}

HostBlockMask::HostBlockMask(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k,
                             int block_q, int block_k) {
  // A constructor has no Status to return: bad geometry throws (it would divide by zero or
  // size the arrays from negative counts).
  if (block_q < 1 || block_k < 1 || batch < 0 || heads < 0 || seq_q < 0 || seq_k < 0)
    check(Status::invalid(
        "HostBlockMask needs block_q, block_k >= 1 and batch, heads, seq_q, seq_k >= 0, got "
        "block_q " + std::to_string(block_q) + ", block_k " + std::to_string(block_k) +
        ", batch " + std::to_string(batch) + ", heads " + std::to_string(heads) + ", seq_q " +
        std::to_string(seq_q) + ", seq_k " + std::to_string(seq_k)));
  mask.batch = batch;
  mask.heads = heads;
  mask.seq_q = seq_q;
  mask.seq_k = seq_k;
  mask.block_q = block_q;
  mask.block_k = block_k;
  mask.device = Device::kCPU;
  counts.assign(static_cast<size_t>(mask.rows()), 0);
  indices.assign(static_cast<size_t>(mask.rows() * mask.num_k_blocks()), 0);
  mask.counts = counts.data();
  mask.indices = indices.data();
}

HostKeyBlocks::HostKeyBlocks(int64_t batch, int64_t heads_kv, int64_t head_dim,
                             int64_t max_tokens, int block_k) {
  if (batch < 0 || heads_kv < 0 || head_dim < 0 || max_tokens < 0 || block_k < 1)
    check(Status::invalid(
        "HostKeyBlocks needs batch, heads_kv, head_dim, max_tokens >= 0 and block_k >= 1, got "
        "batch " + std::to_string(batch) + ", heads_kv " + std::to_string(heads_kv) +
        ", head_dim " + std::to_string(head_dim) + ", max_tokens " + std::to_string(max_tokens) +
        ", block_k " + std::to_string(block_k)));
  blocks.batch = batch;
  blocks.heads_kv = heads_kv;
  blocks.head_dim = head_dim;
  blocks.block_k = block_k;
  blocks.max_blocks = detail::ceil_div(max_tokens, block_k);
  const auto n = static_cast<size_t>(batch * heads_kv);
  pooled.assign(n * blocks.max_blocks * head_dim, 0.0);
  sim.assign(n * blocks.max_blocks, 0.0);
  mean.assign(n * head_dim, 0.0);
  blocks.pooled = pooled.data();
  blocks.sim = sim.data();
  blocks.mean = mean.data();
}

HostKeyBlocks& HostKeyBlocks::operator=(const HostKeyBlocks& other) {
  pooled = other.pooled;
  sim = other.sim;
  mean = other.mean;
  blocks = other.blocks;
  blocks.pooled = pooled.data();
  blocks.sim = sim.data();
  blocks.mean = mean.data();
  return *this;
}

HostBlockMask& HostBlockMask::operator=(const HostBlockMask& other) {
  counts = other.counts;
  indices = other.indices;
  row_offsets = other.row_offsets;
  mask = other.mask;
  mask.counts = counts.data();
  mask.indices = indices.data();
  mask.row_offsets = row_offsets.empty() ? nullptr : row_offsets.data();
  return *this;
}

namespace {

// The vectors' mask, whatever `m.mask` points to, after checking that the vectors hold what its
// geometry and form say (the arrays are public, so their sizes and contents may be anything: an
// out-of-range index would be written outside a caller's array) and the content check attention
// runs.
BlockMask checked_view(const HostBlockMask& m, const char* caller) {
  BlockMask own = m.mask;
  own.counts = const_cast<int32_t*>(m.counts.data());
  own.indices = const_cast<int32_t*>(m.indices.data());
  own.row_offsets =
      m.row_offsets.empty() ? nullptr : const_cast<int64_t*>(m.row_offsets.data());
  const int64_t rows = own.rows();
  const bool sizes_ok =
      static_cast<int64_t>(m.counts.size()) == rows &&
      (own.compact() ? static_cast<int64_t>(m.row_offsets.size()) == rows + 1 &&
                           (detail::validate_mask_offsets(own).is_ok() &&
                            static_cast<int64_t>(m.indices.size()) == m.row_offsets[rows])
                     : static_cast<int64_t>(m.indices.size()) == rows * own.num_k_blocks());
  if (!sizes_ok)
    check(Status::invalid(
        std::string(caller) + ": counts must hold " + std::to_string(rows) + " entries and " +
        (own.compact() ? "row_offsets " + std::to_string(rows + 1) +
                             " nondecreasing entries from 0, ending at indices' size"
                       : "indices " + std::to_string(rows * own.num_k_blocks())) +
        "; got counts " + std::to_string(m.counts.size()) + ", indices " +
        std::to_string(m.indices.size()) + ", row_offsets " +
        std::to_string(m.row_offsets.size())));
  check(detail::validate_mask_contents(own));
  return own;
}

}  // namespace

std::vector<uint8_t> HostBlockMask::to_dense() const {
  const BlockMask own = checked_view(*this, "HostBlockMask::to_dense");
  const int64_t nk = own.num_k_blocks();
  std::vector<uint8_t> dense(static_cast<size_t>(own.rows() * nk), 0);
  for (int64_t r = 0; r < own.rows(); ++r)
    for (int32_t t = 0; t < counts[r]; ++t) dense[r * nk + indices[own.row_begin(r) + t]] = 1;
  return dense;
}

HostBlockMask HostBlockMask::to_compact() const {
  const BlockMask own = checked_view(*this, "HostBlockMask::to_compact");
  HostBlockMask out;
  out.mask = own;
  out.counts = counts;
  out.row_offsets.assign(static_cast<size_t>(own.rows() + 1), 0);
  for (int64_t r = 0; r < own.rows(); ++r) out.row_offsets[r + 1] = out.row_offsets[r] + counts[r];
  out.indices.resize(static_cast<size_t>(out.row_offsets.back()));
  for (int64_t r = 0; r < own.rows(); ++r)
    std::copy_n(indices.begin() + own.row_begin(r), counts[r],
                out.indices.begin() + out.row_offsets[r]);
  out.mask.counts = out.counts.data();
  out.mask.indices = out.indices.data();
  out.mask.row_offsets = out.row_offsets.data();
  return out;
}

HostBlockMask HostBlockMask::to_padded() const {
  const BlockMask own = checked_view(*this, "HostBlockMask::to_padded");
  HostBlockMask out(own.batch, own.heads, own.seq_q, own.seq_k, own.block_q, own.block_k);
  const int64_t nk = own.num_k_blocks();
  out.counts = counts;
  for (int64_t r = 0; r < own.rows(); ++r)
    std::copy_n(indices.begin() + own.row_begin(r), counts[r], out.indices.begin() + r * nk);
  out.mask.device = own.device;
  out.mask.device_index = own.device_index;
  return out;
}

HostBlockMask HostBlockMask::from_csr(const std::vector<int64_t>& indptr,
                                      const std::vector<int32_t>& indices, int64_t batch,
                                      int64_t heads, int64_t seq_q, int64_t seq_k, int block_q,
                                      int block_k) {
  HostBlockMask m;
  m.mask = HostBlockMask(0, 0, seq_q, seq_k, block_q, block_k).mask;  // checks the geometry
  m.mask.batch = batch;
  m.mask.heads = heads;
  if (batch < 0 || heads < 0)
    check(Status::invalid("HostBlockMask::from_csr needs batch, heads >= 0, got batch " +
                          std::to_string(batch) + ", heads " + std::to_string(heads)));
  const int64_t rows = m.mask.rows();
  if (static_cast<int64_t>(indptr.size()) != rows + 1)
    check(Status::invalid("HostBlockMask::from_csr: indptr must hold batch * heads * "
                          "num_q_blocks + 1 = " + std::to_string(rows + 1) + " entries, got " +
                          std::to_string(indptr.size())));
  m.row_offsets = indptr;
  m.indices = indices;
  m.counts.assign(static_cast<size_t>(rows), 0);
  BlockMask offsets_only = m.mask;
  offsets_only.row_offsets = m.row_offsets.data();
  check(detail::validate_mask_offsets(offsets_only));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = indptr[r + 1] - indptr[r];
    if (n > m.mask.num_k_blocks())
      check(Status::invalid("HostBlockMask::from_csr: row " + std::to_string(r) + " lists " +
                            std::to_string(n) + " key blocks, more than the " +
                            std::to_string(m.mask.num_k_blocks()) + " there are"));
    m.counts[r] = static_cast<int32_t>(n);
  }
  m.mask.counts = m.counts.data();
  m.mask.indices = m.indices.data();
  m.mask.row_offsets = m.row_offsets.data();
  checked_view(m, "HostBlockMask::from_csr");  // indices' size and contents
  return m;
}

HostBlockMask HostBlockMask::from_dense(const std::vector<uint8_t>& dense, int64_t batch,
                                        int64_t heads, int64_t seq_q, int64_t seq_k, int block_q,
                                        int block_k) {
  HostBlockMask m(batch, heads, seq_q, seq_k, block_q, block_k);
  const int64_t nk = m.mask.num_k_blocks();
  if (static_cast<int64_t>(dense.size()) != m.mask.rows() * nk)
    check(Status::invalid("HostBlockMask::from_dense: dense must hold batch * heads * "
                          "num_q_blocks * num_k_blocks = " + std::to_string(m.mask.rows() * nk) +
                          " entries, got " + std::to_string(dense.size())));
  for (int64_t r = 0; r < m.mask.rows(); ++r) {
    int32_t c = 0;
    for (int64_t j = 0; j < nk; ++j)
      if (dense[r * nk + j]) m.indices[r * nk + c++] = static_cast<int32_t>(j);
    m.counts[r] = c;
  }
  return m;
}

}  // namespace sparge
