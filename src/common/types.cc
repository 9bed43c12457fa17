// Out-of-line members of the public value types.
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

HostBlockMask& HostBlockMask::operator=(const HostBlockMask& other) {
  counts = other.counts;
  indices = other.indices;
  mask = other.mask;
  mask.counts = counts.data();
  mask.indices = indices.data();
  return *this;
}

std::vector<uint8_t> HostBlockMask::to_dense() const {
  // The arrays are public, so their sizes and contents may be anything: an out-of-range index
  // would be written outside `dense`. The content check is the one attention runs.
  const int64_t nk = mask.num_k_blocks();
  if (static_cast<int64_t>(counts.size()) != mask.rows() ||
      static_cast<int64_t>(indices.size()) != mask.rows() * nk)
    check(Status::invalid("HostBlockMask::to_dense: counts and indices must hold " +
                          std::to_string(mask.rows()) + " and " +
                          std::to_string(mask.rows() * nk) + " entries, got " +
                          std::to_string(counts.size()) + " and " +
                          std::to_string(indices.size())));
  BlockMask own = mask;  // the vectors' contents, whatever `mask` points to
  own.counts = const_cast<int32_t*>(counts.data());
  own.indices = const_cast<int32_t*>(indices.data());
  check(detail::validate_mask_contents(own));
  std::vector<uint8_t> dense(static_cast<size_t>(mask.rows() * nk), 0);
  for (int64_t r = 0; r < mask.rows(); ++r)
    for (int32_t t = 0; t < counts[r]; ++t) dense[r * nk + indices[r * nk + t]] = 1;
  return dense;
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
