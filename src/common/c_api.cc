// The C ABI (include/sparge/sparge_c.h) on top of the C++ API. Nothing throws across it: every
// entry converts its plain structs, calls the C++ function, and turns a failed Status (or an
// exception such as std::bad_alloc) into an int code plus a message in the caller's buffer.
#include <cstring>
#include <exception>
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

Status to_options(const sparge_options* c, sparge::SparseOptions* out) {
  if (c == nullptr) return Status::invalid("opts must not be NULL (use sparge_default_options())");
  SPARGE_RETURN_IF_ERROR(check_flag(c->causal, "causal"));
  SPARGE_RETURN_IF_ERROR(check_flag(c->causal_bottom_right, "causal_bottom_right"));
  SPARGE_RETURN_IF_ERROR(check_flag(c->select_topk, "select_topk"));
  SPARGE_RETURN_IF_ERROR(check_flag(c->attention_sink, "attention_sink"));
  SPARGE_RETURN_IF_ERROR(check_flag(c->quant, "quant"));
  sparge::SparseOptions o;
  o.scale = c->scale;
  o.causal = c->causal != 0;
  o.causal_align =
      c->causal_bottom_right ? sparge::CausalAlign::kBottomRight : sparge::CausalAlign::kTopLeft;
  o.sim_threshold = {c->sim_threshold, c->per_head_sim};
  o.select = c->select_topk ? sparge::SelectMode::kTopK : sparge::SelectMode::kTopCdf;
  o.cdf_threshold = {c->cdf_threshold, c->per_head_cdf};
  o.topk = {c->topk, c->per_head_topk};
  o.attention_sink = c->attention_sink != 0;
  o.pv_threshold = {c->pv_threshold, c->per_head_pv};
  o.pv_group_rows = c->pv_group_rows;
  o.block_q = c->block_q;
  o.block_k = c->block_k;
  o.quant = c->quant ? sparge::QuantMode::kInt8Fp8 : sparge::QuantMode::kNone;
  *out = o;
  return Status::ok();
}

Status to_mask(const sparge_block_mask* c, sparge::BlockMask* out) {
  if (c == nullptr) return Status::invalid("mask must not be NULL");
  sparge::BlockMask m;
  m.counts = c->counts;
  m.indices = c->indices;
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

sparge::ExecContext to_context(void* workspace, size_t workspace_bytes, void* stream) {
  sparge::ExecContext ctx;
  ctx.stream = stream;
  ctx.workspace = workspace;
  ctx.workspace_bytes = workspace_bytes;
  return ctx;
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

}  // namespace

extern "C" {

sparge_options sparge_default_options(void) {
  const sparge::SparseOptions d;
  sparge_options c;
  std::memset(&c, 0, sizeof(c));
  c.scale = d.scale;
  c.causal = d.causal ? 1 : 0;
  c.causal_bottom_right = d.causal_align == sparge::CausalAlign::kBottomRight ? 1 : 0;
  c.sim_threshold = d.sim_threshold.value;
  c.select_topk = d.select == sparge::SelectMode::kTopK ? 1 : 0;
  c.cdf_threshold = d.cdf_threshold.value;
  c.topk = d.topk.value;
  c.attention_sink = d.attention_sink ? 1 : 0;
  c.pv_threshold = d.pv_threshold.value;
  c.pv_group_rows = d.pv_group_rows;
  c.block_q = d.block_q;
  c.block_k = d.block_k;
  c.quant = d.quant == sparge::QuantMode::kInt8Fp8 ? 1 : 0;
  return c;
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

int sparge_sparse_attention(const sparge_tensor* q, const sparge_tensor* k, const sparge_tensor* v,
                            const sparge_options* opts, const sparge_tensor* o, float* lse,
                            void* workspace, size_t workspace_bytes, void* stream,
                            const sparge_block_mask* mask_out, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    sparge::BlockMask mask;
    if (mask_out != nullptr) SPARGE_RETURN_IF_ERROR(to_mask(mask_out, &mask));
    sparge::AttentionExtras extras;
    extras.lse = lse;
    return sparge::sparse_attention(qv, kv, vv, so, ov, extras,
                                    to_context(workspace, workspace_bytes, stream),
                                    mask_out ? &mask : nullptr);
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

int sparge_block_sparse_attention(const sparge_tensor* q, const sparge_tensor* k,
                                  const sparge_tensor* v, const sparge_block_mask* mask,
                                  const sparge_options* opts, const sparge_tensor* o, float* lse,
                                  void* workspace, size_t workspace_bytes, void* stream, char* err,
                                  size_t err_len) {
  return guarded(err, err_len, [&]() -> Status {
    sparge::TensorView qv, kv, vv, ov;
    sparge::SparseOptions so;
    sparge::BlockMask m;
    SPARGE_RETURN_IF_ERROR(to_tensor(q, "q", &qv));
    SPARGE_RETURN_IF_ERROR(to_tensor(k, "k", &kv));
    SPARGE_RETURN_IF_ERROR(to_tensor(v, "v", &vv));
    SPARGE_RETURN_IF_ERROR(to_tensor(o, "o", &ov));
    SPARGE_RETURN_IF_ERROR(to_mask(mask, &m));
    SPARGE_RETURN_IF_ERROR(to_options(opts, &so));
    sparge::AttentionExtras extras;
    extras.lse = lse;
    return sparge::block_sparse_attention(qv, kv, vv, m, so, ov, extras,
                                          to_context(workspace, workspace_bytes, stream));
  });
}

}  // extern "C"
