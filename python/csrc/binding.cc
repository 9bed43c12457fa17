// The PyTorch binding of Sparge: at::Tensor <-> sparge::TensorView, the current stream and device
// guard, a call into the C++ API, and sparge::Status -> Python exceptions. Shapes, layouts,
// padding and keyword sugar are decided in python/sparge/ops.py; fake kernels live in _fake.py.
//
// The ops take one named, typed keyword argument per option, in the order of
// include/sparge/option_list.h, with its default: the schema is expanded from that list when the
// library loads (option_schema() below) and the kernels read the arguments back in the same
// order (read_options()), so traces and errors name `block_q`, not a position; both live in
// options_binding.h. A per-head
// option is a float plus `<name>_per_head`, None or a float32 cpu tensor of length heads_q.
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <climits>
#include <atomic>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "sparge/sparge.h"
#include "attn_mask_binding.h"
#include "options_binding.h"
#include "order_binding.h"
#include "outputs_binding.h"
#include "workloads_binding.h"

namespace {

using sparge_binding::ArgReader;
using sparge_binding::empty_mask;
using sparge_binding::empty_outputs;
using sparge_binding::hilbert_order;
using sparge_binding::mask_view;
using sparge_binding::key_blocks_view;
using sparge_binding::read_attn_mask;
using sparge_binding::option_schema;
using sparge_binding::read_options;

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

// Guards the tensors' device and carries its current stream (and, on cuda, a workspace).
struct Launch {
  c10::OptionalDeviceGuard guard;
  sparge::ExecContext ctx;
  at::Tensor workspace;

  // caller_mask: the op passes the mask tensors it returns, so the workspace holds the rest only
  // (workspace_size's caller_mask); varlen runs sparse_attention without one per sequence.
  // attn_mask: a dense mask on cuda needs room for its tile classes too.
  Launch(const at::Tensor& q, const sparge::TensorView& qv, const sparge::TensorView& kv,
         const sparge::SparseOptions& opts, sparge::Backend backend, bool caller_mask = true,
         const sparge::AttentionMask& attn_mask = {}) {
    ctx.backend = backend;
    if (!q.is_cuda()) return;
    guard.reset_device(q.device());
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    ctx.stream = impl.getStream(q.device()).native_handle();
    const std::size_t bytes = sparge::workspace_size(sparge::problem_shape(qv, kv), attn_mask,
                                                     opts, sparge::Device::kCUDA, caller_mask);
    workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))},
                          q.options().dtype(at::kByte));
    ctx.workspace = workspace.data_ptr();
    ctx.workspace_bytes = bytes;
  }
};

// The boxed kernels: each reads its arguments in schema order, replaces them on the stack by
// its outputs. Options are validated (sparge::validate) before any allocation that uses them.
using Stack = torch::jit::Stack;

c10::ArrayRef<c10::IValue> op_arguments(const c10::OperatorHandle& op, Stack* stack) {
  return torch::jit::last(*stack, op.schema().arguments().size());
}

void finish(const c10::OperatorHandle& op, Stack* stack, const std::vector<at::Tensor>& outs) {
  torch::jit::drop(*stack, op.schema().arguments().size());
  for (const at::Tensor& t : outs) torch::jit::push(*stack, t);
}

// The schema's key-block arguments (sparge.KeyBlocks' tensors, the keys they cover, block_k):
// absent when the three tensors are None.
struct KeyBlockArgs {
  at::Tensor pooled, sim, mean;
  int64_t tokens, block_k;
  sparge::KeyBlocks view(const at::Tensor& k) const {
    return key_blocks_view(pooled, sim, mean, block_k, tokens, k);
  }
};

std::optional<KeyBlockArgs> read_key_blocks(ArgReader& in) {
  const c10::IValue& pooled = in.next();
  const c10::IValue& sim = in.next();
  const c10::IValue& mean = in.next();
  const int64_t tokens = in.next().toInt(), block_k = in.next().toInt();
  if (pooled.isNone() && sim.isNone() && mean.isNone()) return std::nullopt;
  TORCH_CHECK_VALUE(!pooled.isNone() && !sim.isNone() && !mean.isNone(),
                    "key_block_pooled, key_block_sim and key_block_mean go together");
  return KeyBlockArgs{pooled.toTensor(), sim.toTensor(), mean.toTensor(), tokens, block_k};
}

void predict_block_mask(const c10::OperatorHandle& op, Stack* stack) {
  ArgReader in(op_arguments(op, stack));
  const at::Tensor q = in.tensor(), k = in.tensor();
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k");
  const sparge::AttentionMask am = read_attn_mask(in, q);
  const std::optional<KeyBlockArgs> kb_args = read_key_blocks(in);
  sparge::Backend backend;
  const sparge::SparseOptions opts = read_options(in, q.size(1), &backend);
  throw_if_error(sparge::validate(qv, kv, kv, am, opts));
  Launch launch(q, qv, kv, opts, backend, /*caller_mask=*/true, am);
  std::vector<at::Tensor> mask = empty_mask(q, k, opts, g_poison_outputs);
  const sparge::BlockMask m = mask_view(mask[0], mask[1], q, k, opts);
  if (kb_args) {
    const sparge::KeyBlocks kb = kb_args->view(k);
    throw_if_error(sparge::predict_block_mask(qv, kv, am, kb, opts, m, launch.ctx));
  } else {
    // Stage 1 reads no v unless the error target is on, which the (q, k) form rejects by name.
    throw_if_error(am.empty() || opts.target_error > 0.0f
                       ? sparge::predict_block_mask(qv, kv, opts, m, launch.ctx)
                       : sparge::predict_block_mask(qv, kv, kv, am, opts, m, launch.ctx));
  }
  finish(op, stack, mask);
}

void block_sparse_attention(const c10::OperatorHandle& op, Stack* stack) {
  ArgReader in(op_arguments(op, stack));
  const at::Tensor q = in.tensor(), k = in.tensor(), v = in.tensor();
  const at::Tensor counts = in.tensor(), indices = in.tensor();
  const c10::IValue& offsets_arg = in.next();
  const at::Tensor row_offsets = offsets_arg.isNone() ? at::Tensor() : offsets_arg.toTensor();
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
  const sparge::AttentionMask am = read_attn_mask(in, q);
  sparge::Backend backend;
  const sparge::SparseOptions opts = read_options(in, q.size(1), &backend);
  const bool with_extras = in.next().toBool();
  throw_if_error(sparge::validate(qv, kv, vv, am, opts));
  Launch launch(q, qv, kv, opts, backend, /*caller_mask=*/true, am);
  const sparge::BlockMask m = mask_view(counts, indices, q, k, opts, row_offsets);
  sparge::AttentionExtras extras;
  std::vector<at::Tensor> outs = empty_outputs(q, with_extras, g_poison_outputs, &extras);
  throw_if_error(sparge::block_sparse_attention(qv, kv, vv, am, m, opts,
                                                to_view(outs[0], "out"), extras, launch.ctx));
  finish(op, stack, {outs[0], outs[1], outs[2]});
}

void attention(const c10::OperatorHandle& op, Stack* stack) {
  ArgReader in(op_arguments(op, stack));
  const at::Tensor q = in.tensor(), k = in.tensor(), v = in.tensor();
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
  const sparge::AttentionMask am = read_attn_mask(in, q);
  const std::optional<KeyBlockArgs> kb_args = read_key_blocks(in);
  sparge::Backend backend;
  const sparge::SparseOptions opts = read_options(in, q.size(1), &backend);
  const bool with_extras = in.next().toBool();
  throw_if_error(sparge::validate(qv, kv, vv, am, opts));
  // The mask comes back with the extras only: without them the call keeps it in its workspace,
  // where a long call runs in row chunks and never holds the whole padded mask (row_chunks.h).
  Launch launch(q, qv, kv, opts, backend, /*caller_mask=*/with_extras, am);
  sparge::AttentionExtras extras;
  std::vector<at::Tensor> outs = empty_outputs(q, with_extras, g_poison_outputs, &extras);
  std::vector<at::Tensor> mask =
      with_extras ? empty_mask(q, k, opts, g_poison_outputs)
                  : std::vector<at::Tensor>{at::empty({0, 0, 0}, q.options().dtype(at::kInt)),
                                            at::empty({0, 0, 0, 0}, q.options().dtype(at::kInt))};
  sparge::BlockMask m;
  if (with_extras) m = mask_view(mask[0], mask[1], q, k, opts);
  const sparge::BlockMask* mask_out = with_extras ? &m : nullptr;
  if (!kb_args) {
    throw_if_error(sparge::sparse_attention(qv, kv, vv, am, opts, to_view(outs[0], "out"),
                                            extras, launch.ctx, mask_out));
  } else {
    const sparge::KeyBlocks kb = kb_args->view(k);
    throw_if_error(sparge::sparse_attention(qv, kv, vv, am, kb, opts, to_view(outs[0], "out"),
                                            extras, launch.ctx, mask_out));
  }
  finish(op, stack, {outs[0], outs[1], mask[0], mask[1], outs[2], outs[3], outs[4]});
}

// Fills (build) or extends (append) sparge.KeyBlocks' tensors from the cache's keys k
// [B, Hkv, tokens, D]; `tokens` is what the blocks covered before (append). A build without
// take_mean pools with the mean already in `mean` (pool_key_blocks).
void update_key_blocks(const at::Tensor& k, const at::Tensor& pooled, const at::Tensor& sim,
                       const at::Tensor& mean, int64_t block_k, int64_t tokens, bool build,
                       bool take_mean) {
  const sparge::TensorView kv = to_view(k, "k");
  sparge::KeyBlocks kb = key_blocks_view(pooled, sim, mean, block_k, tokens, k);
  sparge::ExecContext ctx;
  c10::OptionalDeviceGuard guard;
  at::Tensor workspace;  // the key mean's partial sums on cuda (build only; 0 bytes on cpu)
  if (k.is_cuda()) {
    guard.reset_device(k.device());
    ctx.stream = c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(k.device())
                     .native_handle();
  }
  if (build && take_mean && sparge::key_blocks_workspace_size(kv) > 0) {
    ctx.workspace_bytes = sparge::key_blocks_workspace_size(kv);
    workspace = at::empty({static_cast<int64_t>(ctx.workspace_bytes)},
                          k.options().dtype(at::kByte));
    ctx.workspace = workspace.data_ptr();
  }
  throw_if_error(!build     ? sparge::append_key_blocks(kv, &kb, ctx)
                 : take_mean ? sparge::build_key_blocks(kv, &kb, ctx)
                             : sparge::pool_key_blocks(kv, &kb, ctx));
}

// A host int32 copy of a cu_seqlens tensor (1-D, num_seqs + 1 values, any device).
at::Tensor host_cu_seqlens(const at::Tensor& cu, const char* name) {
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kInt, name, ".dtype must be int32, got ", cu.scalar_type());
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.numel() >= 2, name, " must be 1-D with num_seqs + 1 >= 2 values, got shape ",
                    cu.sizes());
  return cu.to(at::kCPU).contiguous();
}

// The longest sequence of cu (host), checked against the caller's max_seqlen (flash-attn sizes
// its grid by it; here it is only checked, so that a wrong value is reported, not trusted).
int64_t longest(const at::Tensor& cu, int64_t max_seqlen, const char* name) {
  const int32_t* c = cu.data_ptr<int32_t>();
  int64_t most = 0;
  for (int64_t i = 0; i + 1 < cu.numel(); ++i) most = std::max<int64_t>(most, int64_t(c[i + 1]) - c[i]);
  TORCH_CHECK_VALUE(max_seqlen >= most, name, " (", max_seqlen, ") is below the longest sequence (", most, ")");
  return most;
}

// Packed sequences (flash-attn's varlen): q [1, Hq, total_q, D] (the NHD view of a packed
// [total_q, Hq, D] tensor), k and v likewise; cu_seqlens int32 on any device, copied to the host
// (a sync on cuda). The cuda workspace is sized for the longest query and key sequences.
void attention_varlen(const c10::OperatorHandle& op, Stack* stack) {
  ArgReader in(op_arguments(op, stack));
  const at::Tensor q = in.tensor(), k = in.tensor(), v = in.tensor();
  const at::Tensor cu_q = host_cu_seqlens(in.tensor(), "cu_seqlens_q");
  const at::Tensor cu_k = host_cu_seqlens(in.tensor(), "cu_seqlens_k");
  const int64_t max_q = in.next().toInt(), max_k = in.next().toInt();
  const sparge::TensorView qv = to_view(q, "q"), kv = to_view(k, "k"), vv = to_view(v, "v");
  sparge::Backend backend;
  const sparge::SparseOptions opts = read_options(in, q.size(1), &backend);
  throw_if_error(sparge::validate(qv, kv, vv, opts));
  TORCH_CHECK_VALUE(cu_q.numel() == cu_k.numel(), "cu_seqlens_q and cu_seqlens_k must have the same length, got ",
                    cu_q.numel(), " and ", cu_k.numel());
  sparge::TensorView longest_q = qv, longest_k = kv;
  longest_q.tokens = std::max<int64_t>(1, longest(cu_q, max_q, "max_seqlen_q"));
  longest_k.tokens = std::max<int64_t>(1, longest(cu_k, max_k, "max_seqlen_k"));
  Launch launch(q, longest_q, longest_k, opts, backend, /*caller_mask=*/false);
  at::Tensor out = at::empty_like(q);
  if (g_poison_outputs) out.fill_(NAN);
  throw_if_error(sparge::sparse_attention_varlen(qv, kv, vv, cu_q.data_ptr<int32_t>(), cu_k.data_ptr<int32_t>(),
                                                 cu_q.numel() - 1, opts, to_view(out, "out"), {}, launch.ctx));
  finish(op, stack, {out});
}

// The option checks of the ops without tensors, for settings given ahead of any call
// (sparge.patch_sdpa); per-head tensors are checked against `heads_q`.
void check_options(const c10::OperatorHandle& op, Stack* stack) {
  ArgReader in(op_arguments(op, stack));
  const int64_t heads_q = in.next().toInt();
  TORCH_CHECK_VALUE(heads_q >= 1, "heads_q must be >= 1, got ", heads_q);
  sparge::Backend backend;
  const sparge::SparseOptions opts = read_options(in, heads_q, &backend);
  throw_if_error(sparge::validate_options(opts, heads_q));
  finish(op, stack, {});
}

// x with tokens [first, first + order.numel()) reordered (out[first + i] = x[first + order[i]],
// or the inverse), as a new contiguous [B, H, N, D] tensor: one copy that reads x through its
// strides, the library's 16-byte-unit kernel on cuda (index_select ran at ~1.2 TB/s there).
at::Tensor permute_tokens(const at::Tensor& x, const at::Tensor& order, int64_t first, bool inverse) {
  TORCH_CHECK_VALUE(order.dim() == 1 && order.scalar_type() == at::kLong,
                    "order must be a 1-D int64 tensor, got ", order.dim(), "-D ", order.scalar_type());
  TORCH_CHECK_VALUE(order.device() == x.device(), "order must be on x's device (", x.device(),
                    "), got ", order.device());
  const at::Tensor ord = order.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  c10::OptionalDeviceGuard guard;
  sparge::ExecContext ctx;
  if (x.is_cuda()) {
    guard.reset_device(x.device());
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    ctx.stream = impl.getStream(x.device()).native_handle();
  }
  throw_if_error(sparge::permute_tokens(to_view(x, "x"), to_view(out, "out"), ord.data_ptr<int64_t>(),
                                        ord.numel(), first, inverse, ctx));
  return out;
}

}  // namespace

TORCH_LIBRARY(sparge, m) {
  const std::string options = option_schema();
  const std::string mask_out = "Tensor counts, Tensor indices";
  const std::string attn_out = "Tensor out, Tensor lse";
  // Positional with defaults, so that the keyword-only arguments stay exactly the options.
  const std::string masks = "Tensor? attn_mask=None, Tensor? key_lengths=None";
  // sparge.KeyBlocks' tensors and the keys they cover (none: Stage 1 pools k).
  const std::string key_blocks = "Tensor? key_block_pooled=None, Tensor? key_block_sim=None, "
                                 "Tensor? key_block_mean=None, int key_block_tokens=0, "
                                 "int key_block_k=64";
  m.def(("predict_block_mask(Tensor q, Tensor k, " + masks + ", " + key_blocks + ", *" +
         options + ") -> (" +
         mask_out + ")").c_str());
  m.def(("block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor counts, Tensor indices, "
         "Tensor? row_offsets=None, " + masks + ", *" + options + ", bool with_extras=False) -> (" + attn_out +
         ", Tensor pv_counters)").c_str());
  m.def(("attention(Tensor q, Tensor k, Tensor v, " + masks + ", " + key_blocks + ", *" +
         options +
         ", bool with_extras=False) -> (" + attn_out + ", " + mask_out +
         ", Tensor pv_counters, Tensor stage1, Tensor forced_tiles)")
            .c_str());
  m.def(("attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
         "int max_seqlen_q, int max_seqlen_k, *" + options + ") -> Tensor").c_str());
  m.def(("check_options(int heads_q, *" + options + ") -> ()").c_str());
  m.def("update_key_blocks(Tensor k, Tensor(a!) pooled, Tensor(b!) sim, Tensor(c!) mean, "
        "int block_k, int tokens, bool build, bool take_mean=True) -> ()");
  m.def("hilbert_order(int frames, int height, int width, Device device) -> Tensor");
  m.def("permute_tokens(Tensor x, Tensor order, int first, bool inverse) -> Tensor");
}

// One kernel for cpu and cuda: the C++ API dispatches on the tensors' device itself.
#define SPARGE_BOXED(fn) torch::CppFunction::makeFromBoxedFunction<&fn>()
TORCH_LIBRARY_IMPL(sparge, CPU, m) {
  m.impl("predict_block_mask", SPARGE_BOXED(predict_block_mask));
  m.impl("block_sparse_attention", SPARGE_BOXED(block_sparse_attention));
  m.impl("attention", SPARGE_BOXED(attention));
  m.impl("attention_varlen", SPARGE_BOXED(attention_varlen));
}

TORCH_LIBRARY_IMPL(sparge, CUDA, m) {
  m.impl("predict_block_mask", SPARGE_BOXED(predict_block_mask));
  m.impl("block_sparse_attention", SPARGE_BOXED(block_sparse_attention));
  m.impl("attention", SPARGE_BOXED(attention));
  m.impl("attention_varlen", SPARGE_BOXED(attention_varlen));
}

TORCH_LIBRARY_IMPL(sparge, CompositeExplicitAutograd, m) {
  m.impl("check_options", SPARGE_BOXED(check_options));
  m.impl("hilbert_order", &hilbert_order);
  m.impl("permute_tokens", &permute_tokens);
  m.impl("update_key_blocks", &update_key_blocks);
}
#undef SPARGE_BOXED

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", &sparge::build_info, "What this build contains, as one line.");
  module.def("cuda_head_dims", &sparge::cuda_head_dims,
             "Head dims of the compiled CUDA attention kernels (empty without CUDA).");
  module.def("cuda_device_count", &sparge::cuda_device_count);
  module.def("option_table", &sparge_binding::option_table,
             "The options of include/sparge/option_list.h: name, kind, default, choices, doc.");
  module.def("backend_names", [] {
    const std::vector<const char*> names = sparge::backend_names();
    return std::vector<std::string>(names.begin(), names.end());
  });
  module.def("_set_poison_outputs", [](bool on) { g_poison_outputs = on; },
             "Test hook: fill outputs with NaN before each run.");
  sparge_binding::register_workloads(module);
}
