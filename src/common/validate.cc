#include "common/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/geometry.h"

namespace sparge::detail {
namespace {

template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

std::string shape_str(const TensorView& t) {
  return cat("[", t.batch, ", ", t.heads, ", ", t.tokens, ", ", t.head_dim, "]");
}

const char* device_name(Device d) { return d == Device::kCUDA ? "cuda" : "cpu"; }

bool valid_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

// Checks one per-head threshold (scalar or each head's value) against [lo, hi] with the given
// open/closed ends. NaN always fails.
Status check_param(const HeadParam& p, int64_t heads, const char* field, double lo,
                   bool lo_open, double hi, bool hi_open, const char* range) {
  const int64_t n = p.per_head ? heads : 1;
  for (int64_t h = 0; h < n; ++h) {
    const double x = p.per_head ? p.per_head[h] : p.value;
    const bool ok = !std::isnan(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
    if (!ok) {
      std::string name = p.per_head ? cat("SparseOptions.", field, "[", h, "]")
                                    : cat("SparseOptions.", field);
      return Status::invalid(cat(name, " must be in ", range, ", got ", x));
    }
  }
  return Status::ok();
}

bool valid_block(int b) { return b == 16 || b == 32 || b == 64 || b == 128 || b == 256; }

Status check_tensor(const TensorView& t, const char* name) {
  if (!valid_dtype(t.dtype))
    return Status::invalid(cat(name, ".dtype must be float32, float16 or bfloat16, got code ",
                               static_cast<int>(t.dtype)));
  if (t.device != Device::kCPU && t.device != Device::kCUDA)
    return Status::invalid(cat(name, ".device must be cpu or cuda, got code ",
                               static_cast<int>(t.device)));
  const std::pair<const char*, int64_t> dims[] = {
      {"batch", t.batch}, {"heads", t.heads}, {"tokens", t.tokens}, {"head_dim", t.head_dim}};
  for (const auto& [dim, extent] : dims)
    if (extent < 1) return Status::invalid(cat(name, ".", dim, " must be >= 1, got ", extent));
  if (t.data == nullptr) return Status::invalid(cat(name, ".data must not be null"));
  if (t.stride_dim != 1)
    return Status::invalid(cat(name, ".stride_dim must be 1 (head_dim contiguous), got ",
                               t.stride_dim));
  const std::pair<const char*, int64_t> strides[] = {{"stride_batch", t.stride_batch},
                                                     {"stride_head", t.stride_head},
                                                     {"stride_token", t.stride_token}};
  for (const auto& [s, v] : strides)
    if (v < 0) return Status::invalid(cat(name, ".", s, " must be >= 0, got ", v));
  // Each stride in bytes must fit int64 even on an axis of extent 1, which never steps: the
  // backends form a row's byte step as stride * element size before they look at the extent.
  int64_t stride_bytes = 0;
  for (const auto& [s, v] : strides)
    if (__builtin_mul_overflow(v, int64_t(dtype_size(t.dtype)), &stride_bytes))
      return Status::invalid(cat(name, ".", s, " = ", v, " elements is past 2^63 bytes"));
  // The last element's offset, in elements and in bytes, must fit int64: the backends index
  // with int64, and a view reaching past it describes no buffer (its offsets would wrap).
  const int64_t ext[4] = {t.batch, t.heads, t.tokens, t.head_dim};
  const int64_t str[4] = {t.stride_batch, t.stride_head, t.stride_token, t.stride_dim};
  int64_t last = 0, reach = 0, bytes = 0;
  bool overflow = false;
  for (int i = 0; i < 4; ++i)
    overflow = overflow || __builtin_mul_overflow(ext[i] - 1, str[i], &reach) ||
               __builtin_add_overflow(last, reach, &last);
  if (overflow || __builtin_mul_overflow(last + 1, int64_t(dtype_size(t.dtype)), &bytes))
    return Status::invalid(cat(name, " shape ", shape_str(t), " with strides (", t.stride_batch,
                               ", ", t.stride_head, ", ", t.stride_token, ", ", t.stride_dim,
                               ") reaches past 2^63 bytes"));
  if (t.capacity >= 0) {
    if (last >= t.capacity)
      return Status::invalid(cat(name, " strides (", t.stride_batch, ", ", t.stride_head, ", ",
                                 t.stride_token, ", ", t.stride_dim, ") reach element ", last,
                                 " but the buffer holds ", t.capacity, " elements"));
  }
  if (t.device == Device::kCUDA) {
    // 16-byte vector loads (cp.async) need aligned rows.
    const int64_t elems16 = 16 / static_cast<int64_t>(dtype_size(t.dtype));
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
      return Status::invalid(cat(name, ".data must be 16-byte aligned on cuda"));
    for (const auto& [s, v] : strides)
      if (v % elems16 != 0)
        return Status::invalid(cat(name, ".", s, " must be a multiple of ", elems16,
                                   " elements (16 bytes) on cuda, got ", v));
  }
  return Status::ok();
}

// No two logical elements of an output may share an address.
bool strides_alias(const TensorView& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, extent) of non-trivial axes
  const int64_t ext[4] = {t.batch, t.heads, t.tokens, t.head_dim};
  const int64_t str[4] = {t.stride_batch, t.stride_head, t.stride_token, t.stride_dim};
  for (int i = 0; i < 4; ++i)
    if (ext[i] > 1) dims.emplace_back(str[i], ext[i]);
  std::sort(dims.begin(), dims.end());
  int64_t span = 1;  // elements covered by the axes so far
  for (const auto& [stride, extent] : dims) {
    if (stride < span) return true;
    // check_tensor bounded the byte offset, so stride * extent fits int64 for any dtype of 2
    // bytes or more; saturate anyway rather than rely on that at a distance.
    if (__builtin_mul_overflow(stride, extent, &span)) span = INT64_MAX;
  }
  return false;
}

}  // namespace

// The name users know the selection's value by (Python keyword, CLI flag), for messages.
static const char* select_value_alias(SelectMode m) {
  return m == SelectMode::kTopK ? "topk" : "cdf_threshold";
}

Status validate_options(const SparseOptions& o, int64_t heads_q) {
  if (!std::isfinite(o.scale) || o.scale < 0)
    return Status::invalid(cat("SparseOptions.scale must be finite and > 0 (0 = 1/sqrt(head_dim)), got ",
                               o.scale));
  if (enum_name(o.causal_align) == nullptr)
    return Status::invalid(cat("SparseOptions.causal_align must be kTopLeft or kBottomRight, got code ",
                               static_cast<int>(o.causal_align)));
  if (enum_name(o.select) == nullptr)
    return Status::invalid(cat("SparseOptions.select must be kTopCdf or kTopK, got code ",
                               static_cast<int>(o.select)));
  if (enum_name(o.estimate) == nullptr)
    return Status::invalid(cat("SparseOptions.estimate must be kPooled, kSampledRows or kAuto, ",
                               "got code ", static_cast<int>(o.estimate)));
  if (enum_name(o.quant) == nullptr)
    return Status::invalid(cat("SparseOptions.quant must be kNone, kInt8Fp8 or kInt8, got code ",
                               static_cast<int>(o.quant)));
  SPARGE_RETURN_IF_ERROR(
      check_param(o.sim_threshold, heads_q, "sim_threshold", -1, false, 1, false, "[-1, 1]"));
  const std::string select_value = cat("select_value (", select_value_alias(o.select), ")");
  SPARGE_RETURN_IF_ERROR(
      check_param(o.select_value, heads_q, select_value.c_str(), 0, true, 1, false, "(0, 1]"));
  SPARGE_RETURN_IF_ERROR(check_param(o.pv_threshold, heads_q, "pv_threshold", 0, false,
                                     INFINITY, false, "[0, inf]"));
  if (!valid_block(o.block_q))
    return Status::invalid(cat("SparseOptions.block_q must be one of 16, 32, 64, 128, 256, got ",
                               o.block_q));
  if (!valid_block(o.block_k))
    return Status::invalid(cat("SparseOptions.block_k must be one of 16, 32, 64, 128, 256, got ",
                               o.block_k));
  // Checked in every mode, so that a bad value fails where it is set, not when the mode changes.
  if (o.sample_rows < 1 || o.sample_rows > o.block_q)
    return Status::invalid(cat("SparseOptions.sample_rows must be in [1, block_q = ", o.block_q,
                               "], got ", o.sample_rows));
  if (o.pv_group_rows < 1 || o.pv_group_rows > o.block_q)
    return Status::invalid(cat("SparseOptions.pv_group_rows must be in [1, block_q = ", o.block_q,
                               "], got ", o.pv_group_rows));
  if (!(o.target_error >= 0.0f && o.target_error < 1.0f))  // NaN fails too
    return Status::invalid(cat("SparseOptions.target_error must be 0 (off) or in (0, 1) (a "
                               "relative L1 error), got ", o.target_error));
  if (o.target_error > 0.0f && o.select != SelectMode::kTopCdf)
    return Status::invalid("SparseOptions.target_error chooses a TopCdf mass per head: it "
                           "cannot be combined with select kTopK (topk); drop one of them");
  if (o.window_left < -1)
    return Status::invalid(cat("SparseOptions.window_left must be >= 0 (keys left of the "
                               "diagonal a row sees) or -1 (no limit), got ", o.window_left));
  if (o.window_right < -1)
    return Status::invalid(cat("SparseOptions.window_right must be >= 0 (keys right of the "
                               "diagonal a row sees) or -1 (no limit), got ", o.window_right));
  return Status::ok();
}

Status validate_qkv(const TensorView& q, const TensorView& k, const TensorView& v) {
  SPARGE_RETURN_IF_ERROR(check_tensor(q, "q"));
  SPARGE_RETURN_IF_ERROR(check_tensor(k, "k"));
  SPARGE_RETURN_IF_ERROR(check_tensor(v, "v"));
  if (k.dtype != q.dtype || v.dtype != q.dtype)
    return Status::invalid(cat("k.dtype and v.dtype must equal q.dtype (", dtype_name(q.dtype),
                               "), got ", dtype_name(k.dtype), " and ", dtype_name(v.dtype)));
  if (k.device != q.device || v.device != q.device || k.device_index != q.device_index ||
      v.device_index != q.device_index)
    return Status::invalid(cat("k and v must be on q's device (", device_name(q.device), ":",
                               q.device_index, ")"));
  if (k.batch != q.batch)
    return Status::invalid(cat("k.batch must equal q.batch (", q.batch, "), got ", k.batch));
  if (v.batch != k.batch || v.heads != k.heads || v.tokens != k.tokens)
    return Status::invalid(cat("v shape must equal k shape ", shape_str(k), ", got ", shape_str(v)));
  if (q.heads % k.heads != 0)
    return Status::invalid(cat("q.heads (", q.heads, ") must be a multiple of k.heads (", k.heads,
                               ") for GQA/MQA"));
  if (k.head_dim != q.head_dim || v.head_dim != q.head_dim)
    return Status::invalid(cat("k.head_dim and v.head_dim must equal q.head_dim (", q.head_dim,
                               "), got ", k.head_dim, " and ", v.head_dim));
  if (q.head_dim > 256)
    return Status::unsupported(cat("q.head_dim must be <= 256, got ", q.head_dim));
  return Status::ok();
}

Status validate_output(const TensorView& o, const TensorView& q, const char* name) {
  SPARGE_RETURN_IF_ERROR(check_tensor(o, name));
  if (o.dtype != q.dtype)
    return Status::invalid(cat(name, ".dtype must equal q.dtype (", dtype_name(q.dtype), "), got ",
                               dtype_name(o.dtype)));
  if (o.device != q.device || o.device_index != q.device_index)
    return Status::invalid(cat(name, " must be on q's device (", device_name(q.device), ":",
                               q.device_index, ")"));
  if (o.batch != q.batch || o.heads != q.heads || o.tokens != q.tokens || o.head_dim != q.head_dim)
    return Status::invalid(cat(name, " shape must equal q shape ", shape_str(q), ", got ",
                               shape_str(o)));
  if (strides_alias(o))
    return Status::invalid(cat(name, " strides (", o.stride_batch, ", ", o.stride_head, ", ",
                               o.stride_token, ", ", o.stride_dim,
                               ") make distinct elements share memory"));
  return Status::ok();
}

Status validate_mask(const BlockMask& m, const TensorView& q, const TensorView& k,
                     const SparseOptions& opts) {
  SPARGE_RETURN_IF_ERROR(validate_mask_geometry(m, q, k, opts));
  if (m.device == Device::kCPU) return validate_mask_contents(m);
  return Status::ok();
}

Status validate_mask_geometry(const BlockMask& m, const TensorView& q, const TensorView& k,
                              const SparseOptions& opts) {
  if (m.counts == nullptr || m.indices == nullptr)
    return Status::invalid("mask.counts and mask.indices must not be null");
  if (m.device != q.device || m.device_index != q.device_index)
    return Status::invalid(cat("mask must be on q's device (", device_name(q.device), ":",
                               q.device_index, "), got ", device_name(m.device), ":",
                               m.device_index));
  if (m.block_q != opts.block_q || m.block_k != opts.block_k)
    return Status::invalid(cat("mask block geometry (block_q ", m.block_q, ", block_k ", m.block_k,
                               ") must equal SparseOptions (block_q ", opts.block_q, ", block_k ",
                               opts.block_k, ")"));
  if (m.batch != q.batch || m.heads != q.heads || m.seq_q != q.tokens || m.seq_k != k.tokens) {
    const int64_t nq = ceil_div(q.tokens, opts.block_q), nk = ceil_div(k.tokens, opts.block_k);
    // The mask's own block counts, for the message, without num_q_blocks()'s seq + block - 1,
    // which overflows on a hostile seq near INT64_MAX (blocks are valid sizes by now).
    const auto blocks = [](int64_t len, int b) { return len / b + (len % b > 0 ? 1 : 0); };
    return Status::invalid(cat("mask shape [", m.batch, ", ", m.heads, ", ",
                               blocks(m.seq_q, m.block_q), ", ", blocks(m.seq_k, m.block_k),
                               "] (seq_q ", m.seq_q, ", seq_k ", m.seq_k,
                               ") must equal [", q.batch, ", ", q.heads, ", ", nq, ", ", nk,
                               "] (seq_q ", q.tokens, ", seq_k ", k.tokens, ") for blocks ",
                               opts.block_q, "x", opts.block_k));
  }
  // A compact mask's rows are where its offsets say: a host mask's are checked here, since even
  // an output mask is written through them (a device mask's are the caller's promise).
  if (m.compact() && m.device == Device::kCPU) return validate_mask_offsets(m);
  return Status::ok();
}

Status validate_mask_offsets(const BlockMask& m) {
  if (!m.compact()) return Status::ok();
  if (m.row_offsets[0] != 0)
    return Status::invalid(cat("mask.row_offsets[0] must be 0, got ", m.row_offsets[0]));
  for (int64_t r = 0; r < m.rows(); ++r)
    if (m.row_offsets[r + 1] < m.row_offsets[r])
      return Status::invalid(cat("mask.row_offsets must be nondecreasing, got ",
                                 m.row_offsets[r + 1], " after ", m.row_offsets[r], " at row ",
                                 r + 1));
  return Status::ok();
}

Status validate_mask_contents(const BlockMask& m) {
  SPARGE_RETURN_IF_ERROR(validate_mask_offsets(m));
  const int64_t nk = m.num_k_blocks();
  for (int64_t r = 0; r < m.rows(); ++r) {
    const int32_t c = m.counts[r];
    if (c < 0 || c > nk)
      return Status::invalid(cat("mask.counts[", r, "] must be in [0, ", nk, "], got ", c));
    if (c > m.row_slots(r))
      return Status::invalid(cat("mask.counts[", r, "] (", c, ") must not exceed the ",
                                 m.row_slots(r), " slots mask.row_offsets give row ", r));
    const int32_t* idx = m.indices + m.row_begin(r);
    for (int32_t t = 0; t < c; ++t) {
      if (idx[t] < 0 || idx[t] >= nk || (t > 0 && idx[t] <= idx[t - 1]))
        return Status::invalid(cat("mask.indices of row ", r,
                                   " must be strictly ascending key-block indices in [0, ", nk,
                                   "), got ", idx[t], " at position ", t));
    }
  }
  return Status::ok();
}

Status validate_key_blocks(const KeyBlocks& kb, const TensorView& k) {
  SPARGE_RETURN_IF_ERROR(check_tensor(k, "k"));
  if (kb.pooled == nullptr || kb.sim == nullptr || kb.mean == nullptr)
    return Status::invalid("key_blocks.pooled, .sim and .mean must not be null");
  if (kb.device != k.device || kb.device_index != k.device_index)
    return Status::invalid(cat("key_blocks must be on k's device (", device_name(k.device), ":",
                               k.device_index, "), got ", device_name(kb.device), ":",
                               kb.device_index));
  if (kb.batch != k.batch || kb.heads_kv != k.heads || kb.head_dim != k.head_dim)
    return Status::invalid(cat("key_blocks (batch ", kb.batch, ", heads_kv ", kb.heads_kv,
                               ", head_dim ", kb.head_dim, ") must match k (batch ", k.batch,
                               ", heads ", k.heads, ", head_dim ", k.head_dim, ")"));
  if (kb.block_k < 1 || kb.max_blocks < 0)
    return Status::invalid(cat("key_blocks.block_k must be >= 1 and max_blocks >= 0, got ",
                               kb.block_k, " and ", kb.max_blocks));
  int64_t extent = 0;  // pooled's elements: the arrays are indexed up to it
  if (__builtin_mul_overflow(kb.batch * kb.heads_kv, kb.max_blocks, &extent) ||
      __builtin_mul_overflow(extent, kb.head_dim, &extent))
    return Status::invalid(cat("key_blocks of ", kb.batch, " x ", kb.heads_kv, " x ",
                               kb.max_blocks, " blocks x ", kb.head_dim,
                               " channels overflow int64: max_blocks is not a real capacity"));
  // Compared in blocks: max_blocks * block_k may overflow for a hostile max_blocks (and
  // ceil_div's k.tokens + block_k - 1 for hostile extents).
  if (k.tokens / kb.block_k + (k.tokens % kb.block_k != 0) > kb.max_blocks)
    return Status::invalid(cat("key_blocks hold up to ", kb.max_blocks, " blocks of block_k ",
                               kb.block_k, " keys, k has ", k.tokens,
                               ": allocate them for the cache's capacity"));
  if (kb.tokens < 0 || kb.tokens > k.tokens)
    return Status::invalid(cat("key_blocks.tokens (", kb.tokens, ") must be in [0, k.tokens = ",
                               k.tokens, "]: the blocks cover a prefix of the cache's keys"));
  return Status::ok();
}

Status validate_attn_mask(const AttentionMask& m, const TensorView& q, const TensorView& k) {
  if (m.empty()) return Status::ok();
  if (m.device != q.device || m.device_index != q.device_index)
    return Status::invalid(cat("attn_mask must be on q's device (", device_name(q.device), ":",
                               q.device_index, "), got ", device_name(m.device), ":",
                               m.device_index));
  if (m.data != nullptr) {
    if (mask_dtype_name(m.dtype) == std::string("unknown"))
      return Status::invalid(cat("attn_mask.dtype must be bool, float32, float16 or bfloat16, "
                                 "got code ", static_cast<int>(m.dtype)));
    const std::tuple<const char*, int64_t, const char*, int64_t> dims[] = {
        {"batch", m.batch, "q.batch", q.batch},
        {"heads", m.heads, "q.heads", q.heads},
        {"seq_q", m.seq_q, "q.tokens", q.tokens}};
    for (const auto& [dim, extent, of, want] : dims)
      if (extent != 1 && extent != want)
        return Status::invalid(cat("attn_mask.", dim, " must be 1 (broadcast) or ", of, " (", want,
                                   "), got ", extent, ": the mask broadcasts to [B, Hq, Nq, Nk]"));
    if (m.seq_k != k.tokens)
      return Status::invalid(cat("attn_mask.seq_k must equal k.tokens (", k.tokens, "), got ",
                                 m.seq_k));
    // Strides of broadcast axes are not read; the others must step forward and stay in range.
    const int64_t ext[4] = {m.batch, m.heads, m.seq_q, m.seq_k};
    const int64_t str[4] = {m.stride_batch, m.stride_head, m.stride_q, m.stride_k};
    const char* names[4] = {"stride_batch", "stride_head", "stride_q", "stride_k"};
    int64_t last = 0, reach = 0, bytes = 0;
    bool overflow = false;
    for (int i = 0; i < 4; ++i) {
      if (ext[i] == 1) continue;
      if (str[i] < 0)
        return Status::invalid(cat("attn_mask.", names[i], " must be >= 0, got ", str[i]));
      overflow = overflow || __builtin_mul_overflow(ext[i] - 1, str[i], &reach) ||
                 __builtin_add_overflow(last, reach, &last);
    }
    if (overflow ||
        __builtin_mul_overflow(last + 1, int64_t(mask_dtype_size(m.dtype)), &bytes))
      return Status::invalid("attn_mask strides reach past 2^63 bytes");
    if (m.capacity >= 0 && last >= m.capacity)
      return Status::invalid(cat("attn_mask strides (", m.stride_batch, ", ", m.stride_head, ", ",
                                 m.stride_q, ", ", m.stride_k, ") reach element ", last,
                                 " but the buffer holds ", m.capacity, " elements"));
  }
  // Host key lengths are checked here; device ones would need a copy: the CUDA kernels clamp
  // them to [0, k.tokens] (cuda/attention/params.h, cuda/predict/params.h).
  if (m.key_lengths != nullptr && m.device == Device::kCPU)
    for (int64_t b = 0; b < q.batch; ++b)
      if (m.key_lengths[b] < 0 || m.key_lengths[b] > k.tokens)
        return Status::invalid(cat("attn_mask.key_lengths[", b, "] must be in [0, k.tokens = ",
                                   k.tokens, "], got ", m.key_lengths[b]));
  return Status::ok();
}

namespace {

// cu[0] = 0, nondecreasing, cu[num_seqs] = total.
Status validate_cu_seqlens(const int32_t* cu, int64_t num_seqs, int64_t total, const char* name) {
  if (cu == nullptr) return Status::invalid(cat(name, " must not be NULL"));
  if (cu[0] != 0) return Status::invalid(cat(name, "[0] must be 0, got ", cu[0]));
  for (int64_t i = 1; i <= num_seqs; ++i)
    if (cu[i] < cu[i - 1])
      return Status::invalid(cat(name, " must be nondecreasing: ", name, "[", i, "] = ", cu[i], " < ", name,
                                 "[", i - 1, "] = ", cu[i - 1]));
  if (cu[num_seqs] != total)
    return Status::invalid(cat(name, "[", num_seqs, "] must equal the packed length ", total, ", got ",
                               cu[num_seqs]));
  return Status::ok();
}

}  // namespace

Status validate_varlen(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const int32_t* cu_seqlens_q,
                       const int32_t* cu_seqlens_k, int64_t num_seqs, const AttentionExtras& extras) {
  if (num_seqs < 1) return Status::invalid(cat("num_seqs must be >= 1, got ", num_seqs));
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}, std::pair{&o, "o"}})
    if (t->batch != 1)
      return Status::invalid(cat(name, ".batch must be 1 for sparse_attention_varlen (the sequences are ",
                                 "packed along tokens), got ", t->batch));
  SPARGE_RETURN_IF_ERROR(validate_cu_seqlens(cu_seqlens_q, num_seqs, q.tokens, "cu_seqlens_q"));
  SPARGE_RETURN_IF_ERROR(validate_cu_seqlens(cu_seqlens_k, num_seqs, k.tokens, "cu_seqlens_k"));
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t nq = cu_seqlens_q[i + 1] - cu_seqlens_q[i], nk = cu_seqlens_k[i + 1] - cu_seqlens_k[i];
    if (nq > 0 && nk == 0)
      return Status::invalid(cat("cu_seqlens_k: sequence ", i, " has ", nq, " queries and no key"));
  }
  if (extras.lse != nullptr)
    return Status::unsupported("extras.lse is not taken by sparse_attention_varlen yet (its [B, H, N] "
                               "layout has no per-sequence form); pass NULL");
  return Status::ok();
}

}  // namespace sparge::detail
