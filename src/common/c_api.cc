// The C ABI (include/sparge/sparge_c.h) on top of the C++ API. Nothing throws across it: every
// entry converts its plain structs, calls the C++ function, and turns a failed Status (or an
// exception such as std::bad_alloc) into an int code plus a message in the caller's buffer.
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>

#include "sparge/sparge.h"
#include "sparge/sparge_c.h"

namespace {

using sparge::Status;

// Copies the message into err[0, err_len), always NUL-terminated, truncated when too long.
int report(const Status& s, char* err, size_t err_len) {
  if (err != nullptr && err_len > 0) {
    const std::string& msg = s.message();
    const size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
  }
  return static_cast<int>(s.code());
}

Status to_device(int device, const char* field, sparge::Device* out) {
  if (device != SPARGE_CPU && device != SPARGE_CUDA)
    return Status::invalid(std::string(field) + " must be SPARGE_CPU (0) or SPARGE_CUDA (1), got " +
                           std::to_string(device));
  *out = static_cast<sparge::Device>(device);
  return Status::ok();
}

Status to_tensor(const sparge_tensor* t, const char* name, sparge::TensorView* out) {
  if (t == nullptr) return Status::invalid(std::string(name) + " must not be NULL");
  sparge::TensorView v;
  v.data = t->data;
  v.dtype = static_cast<sparge::DType>(t->dtype);  // an unknown code is rejected by validation
  SPARGE_RETURN_IF_ERROR(to_device(t->device, (std::string(name) + ".device").c_str(), &v.device));
  v.device_index = t->device_index;
  v.batch = t->shape[0];
  v.heads = t->shape[1];
  v.tokens = t->shape[2];
  v.head_dim = t->shape[3];
  v.stride_batch = t->strides[0];
  v.stride_head = t->strides[1];
  v.stride_token = t->strides[2];
  v.stride_dim = t->strides[3];
  *out = v;
  return Status::ok();
}

Status check_flag(int value, const char* field) {
  if (value == 0 || value == 1) return Status::ok();
  return Status::invalid(std::string("sparge_options.") + field + " must be 0 or 1, got " +
                         std::to_string(value));
}

// Enum codes are copied as they are: validate_options rejects codes outside the list.
Status to_options(const sparge_options* c, sparge::SparseOptions* out) {
  if (c == nullptr) return Status::invalid("opts must not be NULL (use sparge_default_options())");
  if (c->struct_size != sizeof(sparge_options))
    return Status::invalid("sparge_options.struct_size must be " +
                           std::to_string(sizeof(sparge_options)) + " (this library's header), got " +
                           std::to_string(c->struct_size) +
                           "; start from sparge_default_options() and rebuild against this sparge");
  sparge::SparseOptions o;
#define SPARGE_FROM_C_FLOAT(name, dflt, doc) o.name = c->name;
#define SPARGE_FROM_C_BOOL(name, dflt, doc)             \
  SPARGE_RETURN_IF_ERROR(check_flag(c->name, #name)); \
  o.name = c->name != 0;
#define SPARGE_FROM_C_INT(name, dflt, doc) o.name = c->name;
#define SPARGE_FROM_C_ENUM(name, Type, dflt, doc) o.name = static_cast<sparge::Type>(c->name);
#define SPARGE_FROM_C_HEAD(name, dflt, doc) o.name = {c->name, c->name##_per_head};
  SPARGE_OPTIONS(SPARGE_FROM_C_FLOAT, SPARGE_FROM_C_BOOL, SPARGE_FROM_C_INT, SPARGE_FROM_C_ENUM,
                 SPARGE_FROM_C_HEAD)
#undef SPARGE_FROM_C_FLOAT
#undef SPARGE_FROM_C_BOOL
#undef SPARGE_FROM_C_INT
#undef SPARGE_FROM_C_ENUM
#undef SPARGE_FROM_C_HEAD
  *out = o;
  return Status::ok();
}

Status to_mask(const sparge_block_mask* c, sparge::BlockMask* out) {
  if (c == nullptr) return Status::invalid("mask must not be NULL");
  sparge::BlockMask m;
  m.counts = c->counts;
  m.indices = c->indices;
  m.row_offsets = c->row_offsets;
  SPARGE_RETURN_IF_ERROR(to_device(c->device, "mask.device", &m.device));
  m.device_index = c->device_index;
  m.batch = c->batch;
  m.heads = c->heads;
  m.seq_q = c->seq_q;
  m.seq_k = c->seq_k;
  m.block_q = c->block_q;
  m.block_k = c->block_k;
  *out = m;
  return Status::ok();
}

Status to_key_blocks(const sparge_key_blocks* c, sparge::KeyBlocks* out) {
  if (c == nullptr) return Status::invalid("key_blocks must not be NULL");
  sparge::KeyBlocks kb;
  kb.pooled = c->pooled;
  kb.sim = c->sim;
  kb.mean = c->mean;
  SPARGE_RETURN_IF_ERROR(to_device(c->device, "key_blocks.device", &kb.device));
  kb.device_index = c->device_index;
  kb.batch = c->batch;
  kb.heads_kv = c->heads_kv;
  kb.head_dim = c->head_dim;
  kb.max_blocks = c->max_blocks;
  kb.block_k = c->block_k;
  kb.tokens = c->tokens;
  *out = kb;
  return Status::ok();
}

// NULL is no mask. The dtype code is range-checked by validation (it names attn_mask.dtype).
Status to_attn_mask(const sparge_attn_mask* c, sparge::AttentionMask* out) {
  *out = sparge::AttentionMask{};
  if (c == nullptr) return Status::ok();
  sparge::AttentionMask m;
  m.data = c->data;
  m.dtype = static_cast<sparge::MaskDType>(c->dtype);
  SPARGE_RETURN_IF_ERROR(to_device(c->device, "attn_mask.device", &m.device));
  m.device_index = c->device_index;
  m.batch = c->shape[0], m.heads = c->shape[1], m.seq_q = c->shape[2], m.seq_k = c->shape[3];
  m.stride_batch = c->strides[0], m.stride_head = c->strides[1];
  m.stride_q = c->strides[2], m.stride_k = c->strides[3];
  m.key_lengths = c->key_lengths;
  *out = m;
  return Status::ok();
}

sparge::ExecContext to_context(void* workspace, size_t workspace_bytes, void* stream) {
  sparge::ExecContext ctx;
  ctx.stream = stream;
  ctx.workspace = workspace;
  ctx.workspace_bytes = workspace_bytes;
  return ctx;
}

// build_key_blocks or append_key_blocks on the C struct, whose `tokens` follows on success.
template <typename Update>
Status update_c_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                           Update update) {
  sparge::TensorView kv;
  sparge::KeyBlocks kb;
  SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
  SPARGE_RETURN_IF_ERROR(to_key_blocks(blocks, &kb));
  SPARGE_RETURN_IF_ERROR(update(kv, &kb, to_context(nullptr, 0, stream)));
  blocks->tokens = kb.tokens;
  return Status::ok();
}

// Runs `body` (returning Status) and reports its outcome; exceptions become kInternal.
template <typename Body>
int guarded(char* err, size_t err_len, Body&& body) {
  try {
    return report(body(), err, err_len);
  } catch (const std::exception& e) {
    return report(Status::internal(std::string("sparge: unexpected exception: ") + e.what()), err,
                  err_len);
  } catch (...) {
    return report(Status::internal("sparge: unexpected unknown exception"), err, err_len);
  }
}

// The two masked sizes (0 for arguments every call rejects): sparge::workspace_size with
// `caller_mask` as given.
size_t masked_workspace_size(const sparge_tensor* q, const sparge_tensor* k,
                             const sparge_attn_mask* attn_mask, const sparge_options* opts,
                             bool caller_mask) {
  try {
    sparge::TensorView qv, kv;
    sparge::SparseOptions o;
    sparge::AttentionMask am;
    if (!to_tensor(q, "q", &qv).is_ok() || !to_tensor(k, "k", &kv).is_ok() ||
        !to_options(opts, &o).is_ok() || !to_attn_mask(attn_mask, &am).is_ok())
      return 0;
    return sparge::workspace_size(sparge::problem_shape(qv, kv), am, o, qv.device, caller_mask);
  } catch (...) {
    return 0;
  }
}

}  // namespace

extern "C" {

sparge_options sparge_default_options(void) {
  const sparge::SparseOptions d;
  sparge_options c;
  std::memset(&c, 0, sizeof(c));
  c.struct_size = sizeof(sparge_options);
#define SPARGE_TO_C_FLOAT(name, dflt, doc) c.name = d.name;
#define SPARGE_TO_C_BOOL(name, dflt, doc) c.name = d.name ? 1 : 0;
#define SPARGE_TO_C_INT(name, dflt, doc) c.name = d.name;
#define SPARGE_TO_C_ENUM(name, Type, dflt, doc) c.name = static_cast<int>(d.name);
#define SPARGE_TO_C_HEAD(name, dflt, doc) \
  c.name = d.name.value;                  \
  c.name##_per_head = d.name.per_head;
  SPARGE_OPTIONS(SPARGE_TO_C_FLOAT, SPARGE_TO_C_BOOL, SPARGE_TO_C_INT, SPARGE_TO_C_ENUM,
                 SPARGE_TO_C_HEAD)
#undef SPARGE_TO_C_FLOAT
#undef SPARGE_TO_C_BOOL
#undef SPARGE_TO_C_INT
#undef SPARGE_TO_C_ENUM
#undef SPARGE_TO_C_HEAD
  return c;
}

size_t sparge_options_size(void) { return sizeof(sparge_options); }

void sparge_options_init(sparge_options* opts) {
  if (opts != nullptr) *opts = sparge_default_options();
}

int sparge_options_set(sparge_options* opts, const char* name, double value, char* err,
                       size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    if (opts == nullptr) return Status::invalid("opts must not be NULL");
    const std::string field = name ? name : "";
    // Integral kinds take whole numbers in int's range only, so 0.5 is not silently read as 0.
    // The range test comes first: converting NaN or a double beyond int to int is undefined.
    const auto whole = [&](int* dst) -> Status {
      constexpr double lo = std::numeric_limits<int>::min(), hi = std::numeric_limits<int>::max();
      if (!(value >= lo && value <= hi) || value != std::trunc(value))
        return Status::invalid("sparge_options." + field +
                               " must be a whole number in int's range, got " +
                               std::to_string(value));
      *dst = static_cast<int>(value);
      return Status::ok();
    };
#define SPARGE_SET_FLOAT(name, dflt, doc) \
  if (field == #name) return opts->name = static_cast<float>(value), Status::ok();
#define SPARGE_SET_INT(name, dflt, doc) \
  if (field == #name) return whole(&opts->name);
#define SPARGE_SET_ENUM(name, Type, dflt, doc) SPARGE_SET_INT(name, dflt, doc)
#define SPARGE_SET_HEAD(name, dflt, doc) SPARGE_SET_FLOAT(name, dflt, doc)
    SPARGE_OPTIONS(SPARGE_SET_FLOAT, SPARGE_SET_INT, SPARGE_SET_INT, SPARGE_SET_ENUM,
                   SPARGE_SET_HEAD)
#undef SPARGE_SET_FLOAT
#undef SPARGE_SET_INT
#undef SPARGE_SET_ENUM
#undef SPARGE_SET_HEAD
    return Status::invalid("name must be a field of sparge_options (sparge/option_list.h), got '" +
                           field + "'");
  });
}

int sparge_options_set_per_head(sparge_options* opts, const char* name, const float* values,
                                char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    if (opts == nullptr) return Status::invalid("opts must not be NULL");
    const std::string field = name ? name : "";
#define SPARGE_SET_PER_HEAD(name, dflt, doc) \
  if (field == #name) return opts->name##_per_head = values, Status::ok();
#define SPARGE_SKIP(...)
    SPARGE_OPTIONS(SPARGE_SKIP, SPARGE_SKIP, SPARGE_SKIP, SPARGE_SKIP, SPARGE_SET_PER_HEAD)
#define SPARGE_HEAD_NAME(name, dflt, doc) " " #name
    const char* per_head_names =
        SPARGE_OPTIONS(SPARGE_SKIP, SPARGE_SKIP, SPARGE_SKIP, SPARGE_SKIP, SPARGE_HEAD_NAME);
#undef SPARGE_HEAD_NAME
#undef SPARGE_SET_PER_HEAD
#undef SPARGE_SKIP
    return Status::invalid(std::string("name must be a per-head option of sparge_options (") +
                           (per_head_names + 1) + "), got '" + field + "'");
  });
}

size_t sparge_workspace_size(const sparge_tensor* q, const sparge_tensor* k,
                             const sparge_options* opts) {
  try {
    sparge::TensorView qv, kv;
    sparge::SparseOptions o;
    if (!to_tensor(q, "q", &qv).is_ok() || !to_tensor(k, "k", &kv).is_ok() ||
        !to_options(opts, &o).is_ok())
      return 0;
    return sparge::workspace_size(sparge::problem_shape(qv, kv), o, qv.device);
  } catch (...) {
    return 0;
  }
}

size_t sparge_workspace_size_masked(const sparge_tensor* q, const sparge_tensor* k,
                                    const sparge_attn_mask* attn_mask,
                                    const sparge_options* opts) {
  return masked_workspace_size(q, k, attn_mask, opts, /*caller_mask=*/false);
}

size_t sparge_workspace_size_caller_mask(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_options* opts) {
  return masked_workspace_size(q, k, attn_mask, opts, /*caller_mask=*/true);
}

int sparge_sparse_attention(const sparge_tensor* q, const sparge_tensor* k, const sparge_tensor* v,
                            const sparge_options* opts, const sparge_tensor* o, float* lse,
                            void* workspace, size_t workspace_bytes, void* stream,
                            const sparge_block_mask* mask_out, char* err, size_t err_len) {
  return sparge_sparse_attention_masked(q, k, v, nullptr, opts, o, lse, workspace,
                                        workspace_bytes, stream, mask_out, err, err_len);
}

int sparge_sparse_attention_masked(const sparge_tensor* q, const sparge_tensor* k,
                                   const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                   const sparge_options* opts, const sparge_tensor* o, float* lse,
                                   void* workspace, size_t workspace_bytes, void* stream,
                                   const sparge_block_mask* mask_out, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    sparge::AttentionMask am;
    SPARGE_RETURN_IF_ERROR(to_attn_mask(attn_mask, &am));
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    sparge::BlockMask mask;
    if (mask_out != nullptr) SPARGE_RETURN_IF_ERROR(to_mask(mask_out, &mask));
    sparge::AttentionExtras extras;
    extras.lse = lse;
    return sparge::sparse_attention(qv, kv, vv, am, so, ov, extras,
                                    to_context(workspace, workspace_bytes, stream),
                                    mask_out ? &mask : nullptr);
  });
}

int sparge_build_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                            char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    return update_c_key_blocks(k, blocks, stream,
                               [](const sparge::TensorView& kv, sparge::KeyBlocks* kb,
                                  const sparge::ExecContext& ctx) {
                                 return sparge::build_key_blocks(kv, kb, ctx);
                               });
  });
}

int sparge_append_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                             char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    return update_c_key_blocks(k, blocks, stream,
                               [](const sparge::TensorView& kv, sparge::KeyBlocks* kb,
                                  const sparge::ExecContext& ctx) {
                                 return sparge::append_key_blocks(kv, kb, ctx);
                               });
  });
}

int sparge_pool_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                           char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    return update_c_key_blocks(k, blocks, stream,
                               [](const sparge::TensorView& kv, sparge::KeyBlocks* kb,
                                  const sparge::ExecContext& ctx) {
                                 return sparge::pool_key_blocks(kv, kb, ctx);
                               });
  });
}

int sparge_predict_block_mask_key_blocks(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_key_blocks* key_blocks,
                                         const sparge_options* opts,
                                         const sparge_block_mask* mask, void* workspace,
                                         size_t workspace_bytes, void* stream, char* err,
                                         size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv;
    sparge::SparseOptions so;
    sparge::BlockMask m;
    sparge::AttentionMask am;
    sparge::KeyBlocks kb;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_attn_mask(attn_mask, &am));
    SPARGE_RETURN_IF_ERROR(to_key_blocks(key_blocks, &kb));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    SPARGE_RETURN_IF_ERROR(to_mask(mask, &m));
    return sparge::predict_block_mask(qv, kv, am, kb, so, m,
                                      to_context(workspace, workspace_bytes, stream));
  });
}

int sparge_sparse_attention_key_blocks(const sparge_tensor* q, const sparge_tensor* k,
                                       const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                       const sparge_key_blocks* key_blocks,
                                       const sparge_options* opts, const sparge_tensor* o,
                                       float* lse, void* workspace, size_t workspace_bytes,
                                       void* stream, const sparge_block_mask* mask_out,
                                       char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    sparge::AttentionMask am;
    sparge::KeyBlocks kb;
    SPARGE_RETURN_IF_ERROR(to_attn_mask(attn_mask, &am));
    SPARGE_RETURN_IF_ERROR(to_key_blocks(key_blocks, &kb));
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    sparge::BlockMask mask;
    if (mask_out != nullptr) SPARGE_RETURN_IF_ERROR(to_mask(mask_out, &mask));
    sparge::AttentionExtras extras;
    extras.lse = lse;
    return sparge::sparse_attention(qv, kv, vv, am, kb, so, ov, extras,
                                    to_context(workspace, workspace_bytes, stream),
                                    mask_out ? &mask : nullptr);
  });
}

int sparge_sparse_attention_varlen(const sparge_tensor* q, const sparge_tensor* k,
                                   const sparge_tensor* v, const int32_t* cu_seqlens_q,
                                   const int32_t* cu_seqlens_k, int64_t num_seqs,
                                   const sparge_options* opts, const sparge_tensor* o,
                                   void* workspace, size_t workspace_bytes, void* stream,
                                   char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    return sparge::sparse_attention_varlen(qv, kv, vv, cu_seqlens_q, cu_seqlens_k, num_seqs, so, ov, {},
                                           to_context(workspace, workspace_bytes, stream));
  });
}

int sparge_predict_block_mask(const sparge_tensor* q, const sparge_tensor* k,
                              const sparge_options* opts, const sparge_block_mask* mask,
                              void* workspace, size_t workspace_bytes, void* stream, char* err,
                              size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv;
    sparge::SparseOptions so;
    sparge::BlockMask m;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    SPARGE_RETURN_IF_ERROR(to_mask(mask, &m));
    return sparge::predict_block_mask(qv, kv, so, m,
                                      to_context(workspace, workspace_bytes, stream));
  });
}

int sparge_predict_block_mask_masked(const sparge_tensor* q, const sparge_tensor* k,
                                     const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                     const sparge_options* opts, const sparge_block_mask* mask,
                                     void* workspace, size_t workspace_bytes, void* stream,
                                     char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv;
    sparge::SparseOptions so;
    sparge::BlockMask m;
    sparge::AttentionMask am;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_attn_mask(attn_mask, &am));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    SPARGE_RETURN_IF_ERROR(to_mask(mask, &m));
    return sparge::predict_block_mask(qv, kv, vv, am, so, m,
                                      to_context(workspace, workspace_bytes, stream));
  });
}

int sparge_block_sparse_attention(const sparge_tensor* q, const sparge_tensor* k,
                                  const sparge_tensor* v, const sparge_block_mask* mask,
                                  const sparge_options* opts, const sparge_tensor* o, float* lse,
                                  void* workspace, size_t workspace_bytes, void* stream, char* err,
                                  size_t err_len) {
  return sparge_block_sparse_attention_masked(q, k, v, nullptr, mask, opts, o, lse, workspace,
                                              workspace_bytes, stream, err, err_len);
}

int sparge_block_sparse_attention_masked(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_tensor* v,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_block_mask* mask,
                                         const sparge_options* opts, const sparge_tensor* o,
                                         float* lse, void* workspace, size_t workspace_bytes,
                                         void* stream, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    sparge::BlockMask m;
    sparge::AttentionMask am;
    SPARGE_RETURN_IF_ERROR(to_attn_mask(attn_mask, &am));
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_mask(mask, &m));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    sparge::AttentionExtras extras;
    extras.lse = lse;
    return sparge::block_sparse_attention(qv, kv, vv, am, m, so, ov, extras,
                                          to_context(workspace, workspace_bytes, stream));
  });
}

}  // extern "C"
