// The PyTorch binding of Sparge: at::Tensor <-> sparge::TensorView, the current stream and device
// guard, a call into the C++ API, and sparge::Status -> Python exceptions. Shapes, layouts,
// padding and defaults are decided in python/sparge/ops.py; fake (meta) kernels live in _fake.py.
//
// Options travel packed so every op shares one schema tail (indices below mirror ops.py):
//   scalars  = [scale, sim_threshold, keep_threshold (cdf or topk), pv_threshold]
//   flags    = [causal, bottom_right, use_topk, attention_sink, block_q, block_k, quantized,
//               backend (0 auto, 1 reference, 2 cpu-fast, 3 cuda), with_extras]
//   per_head = [sim, keep, pv] thresholds, each None or a float32 cpu tensor of length heads_q
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "sparge/sparge.h"
#include "workloads_binding.h"

namespace {

enum Scalar { kScale, kSim, kKeep, kPv, kNumScalars };
enum Flag {
  kCausal, kBottomRight, kUseTopk, kSink, kBlockQ, kBlockK, kQuantized, kBackend, kWithExtras,
  kNumFlags
};

// Test hook: fill outputs with NaN (and masks with -1) before each run, so a backend that leaves
// an element unwritten fails the tests instead of passing on leftover memory.
std::atomic<bool> g_poison_outputs{false};

[[noreturn]] void raise(const sparge::Status& s) {
  const std::string& msg = s.message();
  switch (s.code()) {
    case sparge::StatusCode::kInvalidArgument:
      if (msg.find(".dtype") != std::string::npos) TORCH_CHECK_TYPE(false, msg);
      TORCH_CHECK_VALUE(false, msg);
    case sparge::StatusCode::kUnsupported:
      TORCH_CHECK_NOT_IMPLEMENTED(false, msg);
    default:
      TORCH_CHECK(false, "sparge: ", msg);
  }
}

void throw_if_error(const sparge::Status& s) {
  if (!s.is_ok()) raise(s);
}

sparge::TensorView to_view(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be 4-D [batch, heads, tokens, head_dim], got ",
                    t.dim(), "-D");
  sparge::TensorView v;
  switch (t.scalar_type()) {
    case at::kFloat: v.dtype = sparge::DType::kFloat32; break;
    case at::kHalf: v.dtype = sparge::DType::kFloat16; break;
    case at::kBFloat16: v.dtype = sparge::DType::kBFloat16; break;
    default:
      TORCH_CHECK_TYPE(false, name, ".dtype must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
  TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), name, " must be on cpu or cuda, got ", t.device());
  v.device = t.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
  v.device_index = t.is_cuda() ? t.device().index() : 0;
  v.data = t.data_ptr();
  v.batch = t.size(0), v.heads = t.size(1), v.tokens = t.size(2), v.head_dim = t.size(3);
  v.stride_batch = t.stride(0), v.stride_head = t.stride(1), v.stride_token = t.stride(2);
  v.stride_dim = t.stride(3);
  // Elements reachable from data_ptr, so validation can reject strides that leave the storage.
  v.capacity = static_cast<int64_t>(t.storage().nbytes() / t.element_size()) - t.storage_offset();
  return v;
}

sparge::HeadParam head_param(double value, const std::optional<at::Tensor>& per_head,
                             int64_t heads_q, const char* name) {
  sparge::HeadParam p;
  p.value = static_cast<float>(value);
  if (per_head.has_value()) {
    const at::Tensor& t = *per_head;
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " per-head tensor must be float32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.is_cpu() && t.is_contiguous() && t.dim() == 1 && t.numel() == heads_q,
                      name, " per-head tensor must be a contiguous cpu 1-D tensor of length ",
                      heads_q, " (query heads), got shape ", t.sizes(), " on ", t.device());
    p.per_head = t.data_ptr<float>();
  }
  return p;
}

sparge::SparseOptions to_options(at::ArrayRef<double> scalars, at::IntArrayRef flags,
                                 const std::vector<std::optional<at::Tensor>>& per_head,
                                 int64_t heads_q) {
  TORCH_CHECK_VALUE(scalars.size() == kNumScalars && flags.size() == kNumFlags &&
                        per_head.size() == 3,
                    "sparge op options must be ", int(kNumScalars), " scalars, ", int(kNumFlags),
                    " flags and 3 per-head entries, got ", scalars.size(), ", ", flags.size(),
                    " and ", per_head.size());
  sparge::SparseOptions o;
  o.scale = static_cast<float>(scalars[kScale]);
  o.causal = flags[kCausal] != 0;
  o.causal_align = flags[kBottomRight] ? sparge::CausalAlign::kBottomRight
                                       : sparge::CausalAlign::kTopLeft;
  o.sim_threshold = head_param(scalars[kSim], per_head[0], heads_q, "sim_threshold");
  const bool topk = flags[kUseTopk] != 0;
  o.select = topk ? sparge::SelectMode::kTopK : sparge::SelectMode::kTopCdf;
  sparge::HeadParam keep =
      head_param(scalars[kKeep], per_head[1], heads_q, topk ? "topk" : "cdf_threshold");
  (topk ? o.topk : o.cdf_threshold) = keep;
  o.attention_sink = flags[kSink] != 0;
  o.pv_threshold = head_param(scalars[kPv], per_head[2], heads_q, "pv_threshold");
  o.block_q = static_cast<int>(flags[kBlockQ]);
  o.block_k = static_cast<int>(flags[kBlockK]);
  o.quant = flags[kQuantized] ? sparge::QuantMode::kInt8Fp8 : sparge::QuantMode::kNone;
  return o;
}

// Guards the tensors' device and carries its current stream (and, on cuda, a workspace).
struct Launch {
  c10::OptionalDeviceGuard guard;
  sparge::ExecContext ctx;
  at::Tensor workspace;

  Launch(const at::Tensor& q, const sparge::TensorView& qv, const sparge::TensorView& kv,
         const sparge::SparseOptions& opts, int64_t backend) {
    TORCH_CHECK_VALUE(backend >= 0 && backend <= 3, "backend code must be in [0, 3], got ",
                      backend);
    ctx.backend = static_cast<sparge::Backend>(backend);
    if (!q.is_cuda()) return;
    guard.reset_device(q.device());
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    ctx.stream = impl.getStream(q.device()).native_handle();
    const sparge::ProblemShape shape = sparge::problem_shape(qv, kv);
    const std::size_t bytes = sparge::workspace_size(shape, opts, sparge::Device::kCUDA);
    workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))},
                          q.options().dtype(at::kByte));
    ctx.workspace = workspace.data_ptr();
    ctx.workspace_bytes = bytes;
  }
};

sparge::BlockMask mask_view(const at::Tensor& counts, const at::Tensor& indices,
                            const at::Tensor& q, const at::Tensor& k,
                            const sparge::SparseOptions& o) {
  for (const auto* t : {&counts, &indices}) {
    const char* name = t == &counts ? "block_mask.counts" : "block_mask.indices";
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, name, " must be int32, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->is_contiguous(), name, " must be contiguous");
    TORCH_CHECK_VALUE(t->device() == q.device(), name, " must be on q's device (", q.device(),
                      "), got ", t->device());
  }
  sparge::BlockMask m;
  m.counts = counts.data_ptr<int32_t>();
  m.indices = indices.data_ptr<int32_t>();
  m.device = q.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
  m.device_index = q.is_cuda() ? q.device().index() : 0;
  m.batch = q.size(0), m.heads = q.size(1), m.seq_q = q.size(2), m.seq_k = k.size(2);
  m.block_q = o.block_q, m.block_k = o.block_k;
  TORCH_CHECK_VALUE(counts.numel() == m.rows() && indices.numel() == m.rows() * m.num_k_blocks(),
                    "block_mask must hold ", m.rows(), " counts and ", m.rows() * m.num_k_blocks(),
                    " indices for q ", q.sizes(), ", k ", k.sizes(), " and blocks ", o.block_q,
                    "x", o.block_k, ", got ", counts.numel(), " and ", indices.numel());
  return m;
}

std::vector<at::Tensor> empty_mask(const at::Tensor& q, const at::Tensor& k,
                                   const sparge::SparseOptions& o) {
  const int64_t nq = (q.size(2) + o.block_q - 1) / o.block_q;
  const int64_t nk = (k.size(2) + o.block_k - 1) / o.block_k;
  auto opts = q.options().dtype(at::kInt);
  at::Tensor counts = at::empty({q.size(0), q.size(1), nq}, opts);
  at::Tensor indices = at::empty({q.size(0), q.size(1), nq, nk}, opts);
  if (g_poison_outputs) counts.fill_(-1), indices.fill_(-1);
  return {counts, indices};
}

// Output like q (same strides when q is dense, e.g. an NHD view), lse and P·V counters.
std::vector<at::Tensor> empty_outputs(const at::Tensor& q, bool with_extras,
                                      sparge::AttentionExtras* extras) {
  at::Tensor out = at::empty_like(q);
  const int64_t lse_rows = with_extras ? q.size(0) * q.size(1) * q.size(2) : 0;
  at::Tensor lse = at::empty({lse_rows}, q.options().dtype(at::kFloat));
  at::Tensor counters = at::zeros({with_extras ? q.size(1) : 0, 2}, q.options().dtype(at::kLong));
  if (g_poison_outputs) out.fill_(NAN), lse.fill_(NAN);
  if (with_extras) {
    extras->lse = lse.data_ptr<float>();
    extras->pv_counters = reinterpret_cast<unsigned long long*>(counters.data_ptr<int64_t>());
  }
  return {out, lse.view({with_extras ? q.size(0) : 0, q.size(1), q.size(2)}), counters};
}

std::tuple<at::Tensor, at::Tensor> predict_block_mask(
    const at::Tensor& q, const at::Tensor& k, at::ArrayRef<double> scalars, at::IntArrayRef flags,
    const std::vector<std::optional<at::Tensor>>& per_head) {
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k");
  const sparge::SparseOptions opts = to_options(scalars, flags, per_head, q.size(1));
  Launch launch(q, qv, kv, opts, flags[kBackend]);
  std::vector<at::Tensor> mask = empty_mask(q, k, opts);
  throw_if_error(sparge::predict_block_mask(qv, kv, opts,
                                            mask_view(mask[0], mask[1], q, k, opts),
                                            launch.ctx));
  return {mask[0], mask[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& counts,
    const at::Tensor& indices, at::ArrayRef<double> scalars, at::IntArrayRef flags,
    const std::vector<std::optional<at::Tensor>>& per_head) {
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
  const sparge::SparseOptions opts = to_options(scalars, flags, per_head, q.size(1));
  Launch launch(q, qv, kv, opts, flags[kBackend]);
  const sparge::BlockMask m = mask_view(counts, indices, q, k, opts);
  sparge::AttentionExtras extras;
  std::vector<at::Tensor> outs = empty_outputs(q, flags[kWithExtras] != 0, &extras);
  throw_if_error(sparge::block_sparse_attention(qv, kv, vv, m, opts, to_view(outs[0], "out"),
                                                extras, launch.ctx));
  return {outs[0], outs[1], outs[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::ArrayRef<double> scalars,
    at::IntArrayRef flags, const std::vector<std::optional<at::Tensor>>& per_head) {
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
  const sparge::SparseOptions opts = to_options(scalars, flags, per_head, q.size(1));
  Launch launch(q, qv, kv, opts, flags[kBackend]);
  sparge::AttentionExtras extras;
  std::vector<at::Tensor> outs = empty_outputs(q, flags[kWithExtras] != 0, &extras);
  std::vector<at::Tensor> mask = empty_mask(q, k, opts);
  const sparge::BlockMask m = mask_view(mask[0], mask[1], q, k, opts);
  throw_if_error(sparge::sparse_attention(qv, kv, vv, opts, to_view(outs[0], "out"), extras,
                                          launch.ctx, &m));
  return {outs[0], outs[1], mask[0], mask[1], outs[2]};
}

// Hilbert order of a (frames, height, width) grid as int64 on `device`.
at::Tensor hilbert_order(int64_t frames, int64_t height, int64_t width, at::Device device) {
  TORCH_CHECK_VALUE(frames >= 1 && height >= 1 && width >= 1,
                    "token_grid sizes must be >= 1, got (", frames, ", ", height, ", ", width,
                    ")");
  std::vector<int64_t> order = sparge::hilbert_order(frames, height, width);
  TORCH_CHECK(static_cast<int64_t>(order.size()) == frames * height * width,
              "sparge: hilbert_order returned ", order.size(), " entries for a grid of ",
              frames * height * width);
  at::Tensor host = at::empty({static_cast<int64_t>(order.size())}, at::kLong);
  std::copy(order.begin(), order.end(), host.data_ptr<int64_t>());
  return host.to(device);
}

}  // namespace

TORCH_LIBRARY(sparge, m) {
  m.def("predict_block_mask(Tensor q, Tensor k, float[] scalars, int[] flags, "
        "Tensor?[] per_head) -> (Tensor counts, Tensor indices)");
  m.def("block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor counts, Tensor indices, "
        "float[] scalars, int[] flags, Tensor?[] per_head) -> (Tensor out, Tensor lse, "
        "Tensor pv_counters)");
  m.def("attention(Tensor q, Tensor k, Tensor v, float[] scalars, int[] flags, "
        "Tensor?[] per_head) -> (Tensor out, Tensor lse, Tensor counts, Tensor indices, "
        "Tensor pv_counters)");
  m.def("hilbert_order(int frames, int height, int width, Device device) -> Tensor");
}

// One kernel for cpu and cuda: the C++ API dispatches on the tensors' device itself.
TORCH_LIBRARY_IMPL(sparge, CPU, m) {
  m.impl("predict_block_mask", &predict_block_mask);
  m.impl("block_sparse_attention", &block_sparse_attention);
  m.impl("attention", &attention);
}

TORCH_LIBRARY_IMPL(sparge, CUDA, m) {
  m.impl("predict_block_mask", &predict_block_mask);
  m.impl("block_sparse_attention", &block_sparse_attention);
  m.impl("attention", &attention);
}

TORCH_LIBRARY_IMPL(sparge, CompositeExplicitAutograd, m) {
  m.impl("hilbert_order", &hilbert_order);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", &sparge::build_info, "What this build contains, as one line.");
  module.def("cuda_device_count", &sparge::cuda_device_count);
  module.def("_set_poison_outputs", [](bool on) { g_poison_outputs = on; },
             "Test hook: fill outputs with NaN before each run.");
  sparge_binding::register_workloads(module);
}
