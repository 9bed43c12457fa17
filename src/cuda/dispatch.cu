// The CUDA backend's entry points (declared in src/common/backend.h). This is the only place
// where runtime values (dtype, head dim, banded) become template arguments: plain switches whose
// default returns Status::unsupported naming the field, the value and the compiled set.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "common/head_chunks.h"
#include "cuda/attention/decode.cuh"
#include "cuda/attention/params.h"
#include "common/backend.h"
#include "cuda/common/check.cuh"
#include "common/geometry.h"
#include "cuda/instances/compiled_instances.h"
#include "cuda/mask/tile_classes.h"
#include "cuda/permute/permute.h"
#include "cuda/predict/params.h"
#include "cuda/quantize/params.h"
#include "sparge/build_info.h"

namespace sparge::cuda {

// The public entries cut calls with more query heads into chunks of this many (head_chunks.h).
static_assert(kMaxPredictHeads == detail::kCudaMaxParamHeads &&
                  kMaxParamHeads == detail::kCudaMaxParamHeads,
              "per-head parameter arrays and the head-chunk bound must agree");
namespace {

constexpr int kTileQ = 128, kTileK = 64;  // kBlockM / kBlockN of both kernels (traits*.cuh)
constexpr int kPvGroupRows = 16;          // one warp's rows

template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

bool fast_build() {
#if SPARGE_FAST_BUILD
  return true;
#else
  return false;
#endif
}

// The attention kernels: sm80 (mma.sync), sm90 (single-role wgmma), sm90ws (warp-specialized,
// TMA); which one a call runs is chosen below (choose_kernel).
enum class Kernel { kSm80, kSm90, kSm90Ws };
constexpr Kernel kKernels[] = {Kernel::kSm80, Kernel::kSm90, Kernel::kSm90Ws};

const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::kSm90: return "sm90";
    case Kernel::kSm90Ws: return "sm90ws";
    default: return "sm80";
  }
}

constexpr bool instance_in(const CompiledInstance& inst, Kernel kernel) {
  return kernel == Kernel::kSm80 ? inst.sm80 : kernel == Kernel::kSm90 ? inst.sm90 : inst.sm90ws;
}

// Whether `kernel` has instances of `head_dim` (compiled_instances.h; constexpr, so that launch()
// names only the launchers that exist).
constexpr bool kernel_has_head_dim(Kernel kernel, int head_dim) {
  for (const auto& inst : kCompiledInstances)
    if (inst.head_dim == head_dim && instance_in(inst, kernel)) return true;
  return false;
}

// "sm90ws", "sm90 or sm90ws", "sm80, sm90 or sm90ws": the kernels for which `has` is true.
template <typename Pred>
std::string kernel_list(Pred has) {
  std::vector<const char*> names;
  for (const Kernel k : kKernels)
    if (has(k)) names.push_back(kernel_name(k));
  std::string out;
  for (size_t i = 0; i < names.size(); ++i)
    out += cat(i == 0 ? "" : i + 1 == names.size() ? " or " : ", ", names[i]);
  return out;
}

std::string kernels_with(int head_dim) {
  return kernel_list([&](Kernel k) { return kernel_has_head_dim(k, head_dim); });
}

// "64 or 128 on cuda, or 256 on sm_90 (sm90ws kernel)": the head dims of the table; those that
// the mma.sync kernel (the one every GPU runs) lacks, with the sm_90a kernels that have them.
std::string head_dims_text() {
  std::vector<int> dims;
  for (const auto& inst : kCompiledInstances)
    if (std::find(dims.begin(), dims.end(), inst.head_dim) == dims.end()) dims.push_back(inst.head_dim);
  std::sort(dims.begin(), dims.end());
  std::string everywhere, sm90_only;
  for (const int d : dims) {
    if (kernel_has_head_dim(Kernel::kSm80, d))
      everywhere += cat(everywhere.empty() ? "" : " or ", d);
    else
      sm90_only += cat(", or ", d, " on sm_90 (", kernels_with(d), " kernel)");
  }
  return everywhere + " on cuda" + sm90_only;
}

// The compiled instances; one that not every kernel has names its kernels ("d256 bf16 dense
// (sm90ws)").
std::string attention_set() {
  std::ostringstream os;
  bool first = true;
  for (const auto& inst : kCompiledInstances) {
    if (fast_build() && !inst.in_fast_build) continue;
    os << (first ? "" : ", ") << "d" << inst.head_dim << (inst.bf16 ? " bf16" : " fp16")
       << (inst.banded ? " banded" : " dense");
    if (!(inst.sm80 && inst.sm90 && inst.sm90ws))
      os << " (" << kernel_list([&](Kernel k) { return instance_in(inst, k); }) << ")";
    first = false;
  }
  return os.str();
}

bool compiled(int head_dim, bool bf16, bool banded) {
  for (const auto& inst : kCompiledInstances)
    if (inst.head_dim == head_dim && inst.bf16 == bf16 && inst.banded == banded)
      return !fast_build() || inst.in_fast_build;
  return false;
}

void set_strides(int64_t (&dst)[3], const TensorView& t) {
  dst[0] = t.stride_batch;
  dst[1] = t.stride_head;
  dst[2] = t.stride_token;
}

Status check_dtype(DType dtype, const char* field) {
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) return Status::ok();
  return Status::unsupported(cat(field, " must be float16 or bfloat16 on cuda, got ", dtype_name(dtype)));
}

// The launch goes to the current device; the tensors must live there.
Status check_device(int device_index) {
  int current = -1;
  SPARGE_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device_index)
    return Status::invalid(cat("q.device_index (", device_index, ") must be the current CUDA device (",
                               current, "); call cudaSetDevice first"));
  return Status::ok();
}

Status check_sizes(const detail::Problem& p) {
  const int64_t limit = INT32_MAX - 256;
  if (p.shape.seq_q > limit || p.shape.seq_k > limit)
    return Status::unsupported(cat("seq_q and seq_k must be < 2^31 on cuda, got ", p.shape.seq_q, " and ",
                                   p.shape.seq_k));
  if (p.shape.heads_q > 65535 || p.shape.batch > 65535)
    return Status::unsupported(cat("q.heads and q.batch must be <= 65535 on cuda, got ", p.shape.heads_q,
                                   " and ", p.shape.batch));
  return Status::ok();
}

// ---- attention: kernel family -> by_head_dim -> by_dtype -> by_band ---------------------------
// On sm_90 devices, when this build holds sm_90a code: sm90ws (warp-specialized, TMA), which runs
// 1.28-1.47x the single-role wgmma kernel sm90 at head dim 128 and 1.01-1.07x at head dim 64
// (bench/results/2026-12-03_NVIDIA-H200_sm90ws-turns_check.md). sm80 (mma.sync)
// everywhere else. Head dim 256 has instances in sm90ws only (tools/gen_instances.py), so it runs
// only on sm_90; the other kernels return Status::unsupported naming head_dim and the kernel.
// SPARGE_CUDA_KERNEL=sm80|sm90|sm90ws|sm90ws-persistent|auto overrides the choice,
// to compare the kernels or to fall back; it is read at every call (getenv costs far less than a
// launch), so a benchmark can switch kernels inside one process. sm90ws and sm90ws-persistent
// are the same kernel on its row grid and on its persistent grid (persistent_grid below; exact
// mode).
constexpr const char* kPersistentSm90Ws = "sm90ws-persistent";
Status kernel_override(const char** value) {
  const char* env = std::getenv("SPARGE_CUDA_KERNEL");
  *value = env;
  if (env == nullptr || !std::strcmp(env, "") || !std::strcmp(env, "auto") ||
      !std::strcmp(env, "sm80") || !std::strcmp(env, "sm90") || !std::strcmp(env, "sm90ws") ||
      !std::strcmp(env, kPersistentSm90Ws))
    return Status::ok();
  return Status::invalid(cat("environment variable SPARGE_CUDA_KERNEL must be auto, sm80, sm90, sm90ws or ",
                             kPersistentSm90Ws, ", got '", env, "'"));
}

// Which grid sm90ws runs (kernel_sm90_ws_persistent.cuh): SPARGE_CUDA_KERNEL=sm90ws forces the
// row grid, sm90ws-persistent the persistent grid; otherwise the persistent grid where no row can
// keep more than kPersistentMaxRowBlocks key blocks (N up to 4K, sliding windows up to ~3.9K
// keys), the row grid elsewhere. Measured on an H100 in one process, both orders
// (bench/results/2026-12-06_NVIDIA-H100_persistent-grid.md): at N 4K (64 blocks a row) the
// persistent grid is 1.03x (dense) to 1.2-1.3x (block sparsity 0.9) the row grid, causal 1.06x;
// W 512 windows 1.16-1.18x; with longer rows its fixed row order loses to the hardware's dynamic
// one (N 8K causal 0.95x, 32K causal 0.88-0.92x; W 4096 0.97-1.0x).
constexpr int64_t kPersistentMaxRowBlocks = 64;
bool persistent_grid(const AttnParams& a) {
  const char* env = std::getenv("SPARGE_CUDA_KERNEL");
  if (env != nullptr && !std::strcmp(env, kPersistentSm90Ws)) return true;
  if (env != nullptr && !std::strcmp(env, "sm90ws")) return false;
  // The keys a query block's rows see lie in [q0 + key_lo, q0 + kTileQ - 1 + key_hi].
  const int64_t band_keys = int64_t(a.key_hi) - a.key_lo + kTileQ;
  const int64_t band_blocks = (band_keys + kTileK - 1) / kTileK + 1;  // + 1: unaligned edges
  return std::min<int64_t>(a.num_k_blocks, band_blocks) <= kPersistentMaxRowBlocks;
}

// `why` says what chose the kernel, for the error of a head dim that it lacks.
Status choose_kernel(int device_index, Kernel* kernel, std::string* why) {
  const char* forced = nullptr;
  SPARGE_RETURN_IF_ERROR(kernel_override(&forced));
  int major = 0, minor = 0;
  SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index));
  SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_index));
  const bool sm90_runs = SPARGE_CUDA_HAVE_SM90A && major == 9 && minor == 0;
  if (forced != nullptr && !std::strcmp(forced, "sm80")) {
    *kernel = Kernel::kSm80;
    *why = "SPARGE_CUDA_KERNEL=sm80";
  } else if (forced != nullptr && (!std::strcmp(forced, "sm90") || !std::strcmp(forced, "sm90ws") ||
                                    !std::strcmp(forced, kPersistentSm90Ws))) {
    if (!sm90_runs)
      return Status::unsupported(cat("SPARGE_CUDA_KERNEL=", forced, " needs an sm_90 device and a build with sm_90a (",
                                     "device ", major, ".", minor, ", archs ", SPARGE_CUDA_ARCHS, ")"));
    *kernel = !std::strcmp(forced, "sm90") ? Kernel::kSm90 : Kernel::kSm90Ws;
    *why = cat("SPARGE_CUDA_KERNEL=", forced);
  } else {
    *kernel = sm90_runs ? Kernel::kSm90Ws : Kernel::kSm80;
    *why = cat("device ", major, ".", minor, ", archs ", SPARGE_CUDA_ARCHS);
  }
  return Status::ok();
}

// Every row of every (batch, head) slice of `t` starts 16-byte aligned: the base, and batch, head
// and token strides of whole 8-element chunks (what the 16-byte chunk loads need).
bool rows_in_chunks(const TensorView& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.stride_batch % 8 == 0 &&
         t.stride_head % 8 == 0 && t.stride_token % 8 == 0;
}

// Stage 1's sampled_rows estimate takes the attention's tensor-core family: wgmma where the
// attention runs sm90 or sm90ws, so SPARGE_CUDA_KERNEL=sm80 also compares the two estimates;
// its wgmma K loads are whole 16-byte chunks, so q and k need rows_in_chunks (PredictParams::wgmma).
Status choose_stage1_kernels(const detail::Problem& p, PredictParams* s) {
  Kernel kernel = Kernel::kSm80;
  std::string why;
  SPARGE_RETURN_IF_ERROR(choose_kernel(p.q.device_index, &kernel, &why));
  s->wgmma = kernel != Kernel::kSm80 && p.shape.head_dim % 8 == 0 && rows_in_chunks(p.q) &&
             rows_in_chunks(p.k);
  return Status::ok();
}

// Only the launchers that have an instance of kHeadDim are named (no undefined symbols);
// attention_by_head_dim has already rejected a kernel without one.
template <typename T, int kHeadDim, bool kBanded>
Status launch(Kernel kernel, const AttnParams& params, cudaStream_t stream) {
  switch (kernel) {
    case Kernel::kSm90:
      if constexpr (kernel_has_head_dim(Kernel::kSm90, kHeadDim))
        return launch_attn_sm90<T, kHeadDim, kBanded>(params, stream);
      break;
    case Kernel::kSm90Ws:
      if constexpr (kernel_has_head_dim(Kernel::kSm90Ws, kHeadDim))
        return launch_attn_sm90ws<T, kHeadDim, kBanded>(params, stream, persistent_grid(params));
      break;
    default:
      if constexpr (kernel_has_head_dim(Kernel::kSm80, kHeadDim))
        return launch_attn<T, kHeadDim, kBanded>(params, stream);
      break;
  }
  return Status::internal(cat("no ", kernel_name(kernel), " instance of head_dim ", kHeadDim));
}

template <typename T, int kHeadDim>
Status attention_by_band(Kernel kernel, const AttnParams& params, bool banded, cudaStream_t stream) {
  const bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  if (!compiled(kHeadDim, bf16, banded))
    return Status::unsupported(cat("attention instance (head_dim ", kHeadDim, ", ", bf16 ? "bf16" : "fp16",
                                   banded ? ", banded" : ", dense",
                                   ") is not compiled (SPARGE_FAST_BUILD=ON); compiled: ", attention_set()));
#if SPARGE_FAST_BUILD
  if constexpr (!(kHeadDim == 128 && std::is_same_v<T, __nv_bfloat16>)) return Status::internal("unreachable");
  else return launch<T, kHeadDim, false>(kernel, params, stream);
#else
  return banded ? launch<T, kHeadDim, true>(kernel, params, stream)
                : launch<T, kHeadDim, false>(kernel, params, stream);
#endif
}

template <int kHeadDim>
Status attention_by_dtype(Kernel kernel, const AttnParams& params, DType dtype, bool banded,
                          cudaStream_t stream) {
  switch (dtype) {
    case DType::kBFloat16: return attention_by_band<__nv_bfloat16, kHeadDim>(kernel, params, banded, stream);
    case DType::kFloat16: return attention_by_band<__half, kHeadDim>(kernel, params, banded, stream);
    default:
      return Status::unsupported(cat("q.dtype ", dtype_name(dtype), " is not compiled on cuda; compiled: ",
                                     attention_set()));
  }
}

Status attention_by_head_dim(Kernel kernel, const std::string& why, const AttnParams& params,
                             int64_t head_dim, DType dtype, bool banded, cudaStream_t stream) {
  // A head dim that other kernels have (256: sm90ws only) says which, not "must be".
  const std::string having = kernels_with(int(head_dim));
  if (!having.empty() && !kernel_has_head_dim(kernel, int(head_dim)))
    return Status::unsupported(cat("q.head_dim ", head_dim, " needs the ", having,
                                   " kernel (an sm_90 GPU and a build with sm_90a code); this call runs ",
                                   kernel_name(kernel), " (", why, ")"));
  switch (head_dim) {
    case 64: return attention_by_dtype<64>(kernel, params, dtype, banded, stream);
    case 128: return attention_by_dtype<128>(kernel, params, dtype, banded, stream);
    case 256: return attention_by_dtype<256>(kernel, params, dtype, banded, stream);
    default:
      return Status::unsupported(cat("q.head_dim must be ", head_dims_text(), ", got ", head_dim,
                                     "; compiled: ", attention_set()));
  }
}

// ---- predict: by_dtype ------------------------------------------------------------------------
// After Stage 1 into a compact mask: the first row that kept more key blocks than its slots
// (PredictParams::mask_overflow), named as the CPU backend names it. Reading the word back
// synchronises the stream: compact outputs only.
Status compact_overflow_status(const PredictParams& params, cudaStream_t stream) {
  unsigned long long word = 0;
  SPARGE_CUDA_CHECK(cudaMemcpyAsync(&word, params.mask_overflow, sizeof(word),
                                    cudaMemcpyDeviceToHost, stream));
  SPARGE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (word == ~0ull) return Status::ok();
  const int64_t row = int64_t(word >> kOverflowCountBits);
  const int64_t count = int64_t(word & ((1ull << kOverflowCountBits) - 1));
  int64_t offsets[2] = {0, 0};
  SPARGE_CUDA_CHECK(cudaMemcpy(offsets, params.mask_row_offsets + row, sizeof(offsets),
                               cudaMemcpyDeviceToHost));
  return Status::invalid(cat(
      "mask.row_offsets give row ", row, " ", offsets[1] - offsets[0],
      " slots, but Stage 1 keeps ", count, " key blocks there: size each row of a compact output "
      "mask for the blocks it may keep (num_k_blocks covers any selection), or compact a padded "
      "mask after Stage 1 (HostBlockMask::to_compact)"));
}

Status predict_by_dtype(const PredictParams& params, DType dtype, cudaStream_t stream) {
  const bool compact = params.mask_row_offsets != nullptr;
  if (compact)
    SPARGE_CUDA_CHECK(cudaMemsetAsync(params.mask_overflow, 0xff, sizeof(unsigned long long),
                                      stream));
  Status launched;
  switch (dtype) {
    case DType::kBFloat16: launched = launch_predict<__nv_bfloat16>(params, stream); break;
    case DType::kFloat16: launched = launch_predict<__half>(params, stream); break;
    default:
      return Status::unsupported(cat("q.dtype must be float16 or bfloat16 on cuda, got ", dtype_name(dtype)));
  }
  if (!launched.is_ok() || !compact) return launched;
  return compact_overflow_status(params, stream);
}

// ---- quantize: by_dtype -----------------------------------------------------------------------
Status quantize_by_dtype(const QuantizeParams& params, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kBFloat16: return launch_quantize<__nv_bfloat16>(params, stream);
    case DType::kFloat16: return launch_quantize<__half>(params, stream);
    default:
      return Status::unsupported(cat("q.dtype must be float16 or bfloat16 on cuda, got ", dtype_name(dtype)));
  }
}

// ExecContext.workspace holds `bytes` for `what` and is 256-byte aligned (every scratch layout
// aligns its arrays to 256 bytes from the base).
Status check_workspace(const ExecContext& ctx, std::size_t bytes, const char* what) {
  if (ctx.workspace == nullptr || ctx.workspace_bytes < bytes)
    return Status::workspace(cat("ExecContext.workspace must hold at least ", bytes, " bytes for ", what,
                                 ", got ", ctx.workspace ? ctx.workspace_bytes : 0));
  if (reinterpret_cast<uintptr_t>(ctx.workspace) % 256 != 0)
    return Status::invalid("ExecContext.workspace must be 256-byte aligned on cuda");
  return Status::ok();
}

// The quantization pass reads 16-byte chunks of 8 channels: every row start must be 16-byte
// aligned (TMA-ready tensors are).
Status check_chunk_alignment(const TensorView& t, const char* name) {
  if (rows_in_chunks(t)) return Status::ok();
  return Status::unsupported(cat(name, " must be 16-byte aligned with batch, head and token strides that are multiples of 8 elements for the cuda quantization pass"));
}

// Arguments -> Params of the attention kernels (both families take AttnParams).
AttnParams to_params(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                     const AttentionExtras& extras) {
  AttnParams a{};
  a.q = p.q.data;
  a.k = p.k.data;
  a.v = p.v.data;
  a.o = o.data;
  set_strides(a.q_stride, p.q);
  set_strides(a.k_stride, p.k);
  set_strides(a.v_stride, p.v);
  set_strides(a.o_stride, o);
  a.batch = int(p.shape.batch);
  a.heads_q = int(p.shape.heads_q);
  a.heads_kv = int(p.shape.heads_kv);
  a.seq_q = int(p.shape.seq_q);
  a.seq_k = int(p.shape.seq_k);
  a.key_lengths = p.attn_mask.key_lengths;  // device memory (validate_attn_mask: the tensors' device)
  a.group = int(p.shape.heads_q / p.shape.heads_kv);
  // key - row lies in [-(seq_q - 1), seq_k - 1]: clamped there, the band's ends fit an int and
  // an unbounded end stays out of reach (geometry.h; < 2^31 is checked by check_sizes).
  const detail::KeyBand band = p.band();
  a.key_lo = int(std::clamp<int64_t>(band.lo, -p.shape.seq_q, p.shape.seq_k));
  a.key_hi = int(std::clamp<int64_t>(band.hi, -p.shape.seq_q, p.shape.seq_k));
  a.scale_log2 = float(double(p.scale) * 1.4426950408889634);
  a.mask_counts = mask.counts;
  a.mask_indices = mask.indices;
  a.mask_row_offsets = mask.row_offsets;
  a.num_q_blocks = int(mask.num_q_blocks());
  a.num_k_blocks = int(mask.num_k_blocks());
  a.lse = extras.lse;
  a.pv_counters = extras.pv_counters;
  a.pv_lambda_uniform = p.opts.pv_threshold.value;
  a.pv_lambda_per_head = p.opts.pv_threshold.per_head != nullptr;
  if (a.pv_lambda_per_head)
    for (int h = 0; h < a.heads_q; ++h) a.pv_lambda[h] = p.opts.pv_threshold.per_head[h];
  return a;
}

// Arguments -> Params of the Stage-1 kernels; `ws` lays out the scratch at `workspace`.
PredictParams to_params(const detail::Problem& p, const BlockMask& mask, const PredictWorkspace& ws,
                        void* workspace, const Stage1Stats& stats) {
  const bool per_head = p.opts.sim_threshold.per_head || p.opts.select_value.per_head;
  PredictParams s{};
  s.q = p.q.data;
  s.k = p.k.data;
  set_strides(s.q_stride, p.q);
  set_strides(s.k_stride, p.k);
  s.batch = int(p.shape.batch);
  s.heads_q = int(p.shape.heads_q);
  s.heads_kv = int(p.shape.heads_kv);
  s.group = int(p.shape.heads_q / p.shape.heads_kv);
  s.seq_q = int(p.shape.seq_q);
  s.key_lengths = p.attn_mask.key_lengths;
  s.seq_k = int(p.shape.seq_k);
  s.head_dim = int(p.shape.head_dim);
  s.block_q = mask.block_q;
  s.block_k = mask.block_k;
  s.num_q_blocks = int(mask.num_q_blocks());
  s.num_k_blocks = int(mask.num_k_blocks());
  s.kt_pitch = s.num_k_blocks;  // the workspace's pooled_kt and sim_k (use_key_blocks: others)
  s.scale = double(p.scale);
  s.band = p.band();
  s.topk = p.opts.select == SelectMode::kTopK;
  s.keep_every_tile = detail::selection_keeps_every_tile(p, stats);
  s.sampled_rows = p.opts.estimate == EstimateMode::kSampledRows;
  s.sample_rows = p.opts.sample_rows;
  s.attention_sink = p.opts.attention_sink;
  s.per_head = per_head;
  for (int h = 0; h < (per_head ? s.heads_q : 1); ++h) {
    s.sim_threshold[h] = p.opts.sim_threshold.at(h);
    s.select_value[h] = p.opts.select_value.at(h);
  }
  s.v = p.v.data;
  set_strides(s.v_stride, p.v);
  s.error_target = p.opts.target_error > 0.0f;
  s.target_error = double(p.opts.target_error);
  s.stat_select_value = stats.select_value;
  s.stat_error = stats.error_estimate;
  s.stat_forced = stats.forced_tiles;
  s.add_to_forced = p.adds_to_stage1_stats();
  s.mask_counts = mask.counts;
  s.mask_indices = mask.indices;
  s.mask_row_offsets = mask.row_offsets;
  auto* base = static_cast<char*>(workspace);
  s.km_partial = reinterpret_cast<double*>(base + ws.km_partial);
  s.km = reinterpret_cast<double*>(base + ws.km);
  s.pooled_q = reinterpret_cast<double*>(base + ws.pooled_q);
  s.sr_partial = reinterpret_cast<float2*>(base + ws.pooled_q);  // see PredictParams
  s.sim_q = reinterpret_cast<double*>(base + ws.sim_q);
  s.pooled_kt = reinterpret_cast<double*>(base + ws.pooled_kt);
  s.sim_k = reinterpret_cast<double*>(base + ws.sim_k);
  s.key_side_needed = reinterpret_cast<int32_t*>(base + ws.key_side_needed);
  s.first_row_chunk = p.row_offset == 0;  // later row chunks reuse the key side it pools
  s.later_row_chunks = p.call_seq_q > 0 && p.row_offset + p.shape.seq_q < p.call_seq_q;
  s.scores = reinterpret_cast<double*>(base + ws.scores);
  s.sr_tile_lse = reinterpret_cast<float*>(base + ws.sr_tile_lse);
  s.sr_one_pass = sampled_rows_one_pass(s.num_k_blocks, p.opts);
  s.cand_err = reinterpret_cast<double*>(base + ws.cand_err);
  s.cand_norm = reinterpret_cast<double*>(base + ws.cand_norm);
  s.head_tau = reinterpret_cast<double*>(base + ws.head_tau);
  s.et_row_max = reinterpret_cast<float*>(base + ws.et_row_max);
  s.et_exact = reinterpret_cast<float*>(base + ws.et_exact);
  s.et_rows = error_target_row_stride(p.opts);
  s.et_channels = error_target_channel_stride(p.shape.head_dim);
  s.lr_scores = reinterpret_cast<double*>(base + ws.lr_scores);
  s.mask_overflow = reinterpret_cast<unsigned long long*>(base + ws.mask_overflow);
  s.lr_chunk_rows = int(ws.lr_chunk_rows);
  s.lr_band = long_row_band();
  return s;
}

// The workspace of quantized attention for a problem shape and quant mode.
QuantAttentionWorkspace quant_workspace_of(const ProblemShape& s, QuantMode mode) {
  return quant_attention_workspace(s.batch, s.heads_q, s.heads_kv, s.seq_q, s.seq_k, s.head_dim,
                                   mode);
}

// Where sparse_attention's quantized call puts the quantization pass's buffers: after Stage 1's
// scratch, which the fused pass fills while Stage 1 is still to run.
std::size_t quant_offset(const ProblemShape& shape, const SparseOptions& opts) {
  return (predict_workspace(shape, opts).total + 255) / 256 * 256;
}

// The refusals of quantized attention on CUDA: the kernel it needs, its head dims, its instances.
Status check_quantized(Kernel kernel, const std::string& why, const detail::Problem& p) {
  const bool fp8 = detail::fp8_pv(p.opts.quant);
  if (fp8 && kernel != Kernel::kSm90Ws)
    return Status::unsupported(cat("SparseOptions.quant kInt8Fp8 on cuda needs the sm90ws kernel's GPU and build ",
                                   "(sm_90 and sm_90a code); this call runs ", kernel_name(kernel), " (", why,
                                   "); quant kInt8 (INT8 Q·Kᵀ, 16-bit P·V) runs on every GPU from sm_80"));
  const char* mode = fp8 ? "kInt8Fp8" : "kInt8";
  const int64_t D = p.shape.head_dim;
  if (D != 64 && D != 128)
    return Status::unsupported(cat("SparseOptions.quant ", mode, " on cuda takes q.head_dim 64 or 128, got ", D,
                                   " (use quant kNone, or the cpu backends)"));
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  const bool banded = p.band().limited() || p.attn_mask.data != nullptr;
  if (!compiled(int(D), bf16, banded))
    return Status::unsupported(cat("quantized attention instance (head_dim ", D, ", ", bf16 ? "bf16" : "fp16",
                                   banded ? ", banded" : ", dense", ") is not compiled (SPARGE_FAST_BUILD=ON)"));
  return Status::ok();
}

// The quantization pass's outputs and scratch laid out by `ws` from `base`; kInt8 has no V codes
// (null v8 and v_scale: the pass does not read V).
QuantizedBuffers quant_buffers(const QuantAttentionWorkspace& ws, char* base, QuantMode mode) {
  QuantizedBuffers buf;
  buf.q = reinterpret_cast<int8_t*>(base + ws.q);
  buf.q_scale = reinterpret_cast<float*>(base + ws.q_scale);
  buf.k = reinterpret_cast<int8_t*>(base + ws.k);
  buf.k_scale = reinterpret_cast<float*>(base + ws.k_scale);
  buf.km = reinterpret_cast<float*>(base + ws.km);
  const bool with_v = detail::fp8_pv(mode);
  buf.v8 = with_v ? reinterpret_cast<uint8_t*>(base + ws.v8) : nullptr;
  buf.v_scale = with_v ? reinterpret_cast<float*>(base + ws.v_scale) : nullptr;
  return buf;
}

template <typename T>
struct TypeTag {
  using Type = T;
};

// The quantized kernel on the pass's outputs (head dims 64 and 128): kInt8Fp8's
// attn_fwd_sm90_q8 (sm_90a), kInt8's attn_fwd_sm80 on INT8 codes (sm_80 and newer).
Status launch_quantized(const detail::Problem& p, const AttnParams& a, const QuantizedBuffers& buf,
                        cudaStream_t stream) {
  const QuantOperands q8{buf.q, buf.q_scale, buf.k, buf.k_scale, buf.v8, buf.v_scale, buf.km,
                         int(detail::ceil_div(p.shape.seq_k, detail::kQuantKRows)),
                         detail::v8_keys(p.shape.seq_k)};
  const bool fp8 = detail::fp8_pv(p.opts.quant);
#if SPARGE_FAST_BUILD
  if (p.attn_mask.data != nullptr)
    return Status::unsupported("attn_mask on cuda: the dense-mask instances are not compiled "
                               "(SPARGE_FAST_BUILD=ON)");
  return fp8 ? launch_attn_sm90q8<__nv_bfloat16, 128, false>(a, q8, stream)
             : launch_attn_sm80q8<__nv_bfloat16, 128, false>(a, q8, stream);
#else
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  // A dense attention mask runs in the banded instances (the sm80 kernel's element masks).
  const bool banded = p.band().limited() || p.attn_mask.data != nullptr;
  const auto by_band = [&](auto type, auto head_dim) {
    using T = typename decltype(type)::Type;
    constexpr int kD = decltype(head_dim)::value;
    if (fp8)
      return banded ? launch_attn_sm90q8<T, kD, true>(a, q8, stream)
                    : launch_attn_sm90q8<T, kD, false>(a, q8, stream);
    if (p.attn_mask.data != nullptr) return launch_attn_sm80q8dm<T, kD, true>(a, q8, stream);
    return banded ? launch_attn_sm80q8<T, kD, true>(a, q8, stream)
                  : launch_attn_sm80q8<T, kD, false>(a, q8, stream);
  };
  const auto by_type = [&](auto head_dim) {
    return bf16 ? by_band(TypeTag<__nv_bfloat16>{}, head_dim) : by_band(TypeTag<__half>{}, head_dim);
  };
  return p.shape.head_dim == 64 ? by_type(std::integral_constant<int, 64>{})
                                : by_type(std::integral_constant<int, 128>{});
#endif
}

// The quantization pass into `out` (scratch from ctx.workspace); with `pool`, also Stage 1's key
// mean, pooled blocks and similarities into pool's arrays (quantize/pool_tile.cuh).
Status quantize_pass(const detail::Problem& p, const QuantizedBuffers& out,
                     const detail::QuantGranularity& g, const ExecContext& ctx,
                     const PredictParams* pool) {
  SPARGE_RETURN_IF_ERROR(check_dtype(p.q.dtype, "q.dtype"));
  if (p.k.dtype != p.q.dtype || p.v.dtype != p.q.dtype)
    return Status::invalid("q, k and v must have the same dtype for the cuda quantization pass");
  SPARGE_RETURN_IF_ERROR(check_sizes(p));
  const int64_t D = p.shape.head_dim;
  if (D < kQuantMinHeadDim || D > kQuantMaxHeadDim || (D & (D - 1)) != 0)
    return Status::unsupported(cat("q.head_dim must be a power of two in [", kQuantMinHeadDim, ", ",
                                   kQuantMaxHeadDim,
                                   "] for the cuda quantization pass, got ", D));
  for (const auto& [rows, field] : {std::pair{g.q_rows, "q_rows"}, std::pair{g.k_rows, "k_rows"}})
    if (rows < 1 || rows > kQuantTileRows || (rows & (rows - 1)) != 0)
      return Status::unsupported(cat("QuantGranularity.", field, " must be a power of two in [1, ",
                                     kQuantTileRows, "] on cuda, got ", rows));
  if (p.shape.batch * p.shape.heads_q > 65535)
    return Status::unsupported(cat("q.batch * q.heads must be <= 65535 for the cuda quantization pass, got ",
                                   p.shape.batch * p.shape.heads_q));
  SPARGE_RETURN_IF_ERROR(check_chunk_alignment(p.q, "q"));
  SPARGE_RETURN_IF_ERROR(check_chunk_alignment(p.k, "k"));
  SPARGE_RETURN_IF_ERROR(check_chunk_alignment(p.v, "v"));
  const QuantizeWorkspace ws =
      quantize_workspace(p.shape.batch, p.shape.heads_kv, p.shape.seq_k, p.shape.head_dim);
  SPARGE_RETURN_IF_ERROR(check_workspace(ctx, ws.total, "the quantization pass (quantize_workspace_size())"));
  if (reinterpret_cast<uintptr_t>(out.v8) % 16 != 0 || reinterpret_cast<uintptr_t>(out.q) % 8 != 0 ||
      reinterpret_cast<uintptr_t>(out.k) % 8 != 0)
    return Status::invalid("QuantizedBuffers.v8 must be 16-byte aligned, q and k 8-byte aligned");
  SPARGE_RETURN_IF_ERROR(check_device(p.q.device_index));

  QuantizeParams qp{};
  qp.q = p.q.data;
  qp.k = p.k.data;
  qp.v = p.v.data;
  set_strides(qp.q_stride, p.q);
  set_strides(qp.k_stride, p.k);
  set_strides(qp.v_stride, p.v);
  qp.batch = int(p.shape.batch);
  qp.heads_q = int(p.shape.heads_q);
  qp.heads_kv = int(p.shape.heads_kv);
  qp.seq_q = int(p.shape.seq_q);
  qp.seq_k = int(p.shape.seq_k);
  qp.head_dim = int(D);
  qp.q_rows = g.q_rows;
  qp.k_rows = g.k_rows;
  qp.q_groups = int(detail::ceil_div(p.shape.seq_q, g.q_rows));
  qp.k_groups = int(detail::ceil_div(p.shape.seq_k, g.k_rows));
  qp.num_runs = int(detail::ceil_div(p.shape.seq_k, detail::kKeyMeanRun));
  qp.v8_keys = detail::v8_keys(p.shape.seq_k);
  qp.q8 = out.q;
  qp.q_scale = out.q_scale;
  qp.k8 = out.k;
  qp.k_scale = out.k_scale;
  qp.km = out.km;
  qp.v8 = out.v8;
  qp.v_scale = out.v_scale;
  char* base = static_cast<char*>(ctx.workspace);
  qp.k_run_sum = reinterpret_cast<double*>(base + ws.k_run_sum);
  qp.v_run_amax = reinterpret_cast<float*>(base + ws.v_run_amax);
  if (pool != nullptr) {
    qp.km_pool = pool->km;
    qp.pooled_q = pool->pooled_q;
    qp.sim_q = pool->sim_q;
    qp.pooled_kt = pool->pooled_kt;
    qp.sim_k = pool->sim_k;
    qp.num_q_blocks = pool->num_q_blocks;
    qp.num_k_blocks = pool->num_k_blocks;
  }
  return quantize_by_dtype(qp, p.q.dtype, static_cast<cudaStream_t>(ctx.stream));
}

// ---- dense attention masks ------------------------------------------------------------------
// The path of a dense attn_mask: tile classes, Stage 1's eligibility, the sm80 kernel's element
// masks (tests/cuda/test_dense_mask.cc).

// The mask's data as the kernels read it (no tile classes yet).
DenseMaskView dense_mask_view(const AttentionMask& m) {
  DenseMaskView v;
  v.data = m.data;
  v.dtype = int(m.dtype);
  v.batch = m.batch;
  v.heads = m.heads;
  v.seq_q = m.seq_q;
  v.stride_b = m.stride_batch;
  v.stride_h = m.stride_head;
  v.stride_q = m.stride_q;
  v.stride_k = m.stride_k;
  return v;
}

// The class table's extents: batch entries and query heads the mask (or key lengths) tell apart.
struct TileClassShape {
  int batch = 1, heads = 1;
  std::size_t bytes = 0;
};

TileClassShape tile_class_shape(const ProblemShape& s, const SparseOptions& o,
                                const AttentionMask& m) {
  TileClassShape t;
  if (m.data == nullptr) return t;
  t.batch = m.batch > 1 || m.key_lengths != nullptr ? int(s.batch) : 1;
  t.heads = m.heads > 1 ? int(s.heads_q) : 1;
  // Rounded as workspace_size() counts it, so that make_tile_classes asks for what it reports.
  t.bytes = (tile_class_bytes(t.batch, t.heads, s.seq_q, s.seq_k, o.block_q, o.block_k) + 255) /
            256 * 256;
  return t;
}

// Where the table lies in ExecContext.workspace: past everything else the call keeps there.
std::size_t tile_class_offset(const ProblemShape& s, const SparseOptions& o) {
  return (workspace_size(s, o) + 255) / 256 * 256;
}

// What a dense attn_mask on CUDA does not take (yet), before anything runs.
Status check_dense_mask(const detail::Problem& p) {
  if (p.attn_mask.data == nullptr) return Status::ok();
  if (detail::fp8_pv(p.opts.quant))
    return Status::unsupported(
        "attn_mask with SparseOptions.quant kInt8Fp8 on cuda: dense masks run in the mma.sync "
        "kernels, exact (quant kNone) or with quant kInt8");
  if (p.opts.target_error > 0.0f)  // common/dispatch.cc refuses it on every backend first
    return Status::unsupported("attn_mask with SparseOptions.target_error on cuda");
  if (p.shape.head_dim != 64 && p.shape.head_dim != 128)
    return Status::unsupported(cat("attn_mask on cuda runs the mma.sync kernel, which takes q.head_dim 64 or ",
                                   "128, got ", p.shape.head_dim, " (or run on cpu tensors)"));
  const TileClassShape t = tile_class_shape(p.shape, p.opts, p.attn_mask);
  if (detail::ceil_div(p.shape.seq_q, p.opts.block_q) > 65535 || int64_t(t.batch) * t.heads > 65535)
    return Status::unsupported(cat("attn_mask on cuda takes at most 65535 query blocks and 65535 (batch entry, "
                                   "head) pairs the mask tells apart, got ",
                                   detail::ceil_div(p.shape.seq_q, p.opts.block_q), " and ",
                                   int64_t(t.batch) * t.heads));
  return Status::ok();
}

// The mask's tile classes into the workspace (tile_class_offset); `view` gets the mask with them.
Status make_tile_classes(const detail::Problem& p, const ExecContext& ctx, DenseMaskView* view) {
  const TileClassShape t = tile_class_shape(p.shape, p.opts, p.attn_mask);
  const std::size_t at = tile_class_offset(p.shape, p.opts);
  SPARGE_RETURN_IF_ERROR(check_workspace(
      ctx, at + t.bytes,
      "a dense attn_mask on cuda (workspace_size(shape, attn_mask, opts, ...): its tile classes)"));
  TileClassParams tp{};
  tp.mask = dense_mask_view(p.attn_mask);
  tp.out = reinterpret_cast<uint8_t*>(static_cast<char*>(ctx.workspace) + at);
  tp.key_lengths = p.attn_mask.key_lengths;
  tp.band = p.band();
  tp.seq_q = int(p.shape.seq_q);
  tp.seq_k = int(p.shape.seq_k);
  tp.block_q = p.opts.block_q;
  tp.block_k = p.opts.block_k;
  tp.num_q_blocks = int(detail::ceil_div(p.shape.seq_q, p.opts.block_q));
  tp.num_k_blocks = int(detail::ceil_div(p.shape.seq_k, p.opts.block_k));
  tp.class_batch = t.batch;
  tp.class_heads = t.heads;
  SPARGE_RETURN_IF_ERROR(launch_tile_classes(tp, static_cast<cudaStream_t>(ctx.stream)));
  *view = tp.mask;
  view->tile_class = tp.out;
  view->class_batch = t.batch;
  view->class_heads = t.heads;
  return Status::ok();
}

// Quantized mode (docs/method.md "Quantized mode"): the quantization pass into the workspace,
// then the quantized kernel.
Status attention_quantized(Kernel kernel, const std::string& why, const detail::Problem& p,
                           const AttnParams& a, const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(check_quantized(kernel, why, p));
  const QuantAttentionWorkspace ws = quant_workspace_of(p.shape, p.opts.quant);
  SPARGE_RETURN_IF_ERROR(check_workspace(ctx, ws.total,
                                         "quantized attention on cuda (workspace_size(..., "
                                         "caller_mask=true); C: sparge_workspace_size_caller_mask)"));
  char* base = static_cast<char*>(ctx.workspace);
  const QuantizedBuffers buf = quant_buffers(ws, base, p.opts.quant);
  ExecContext pass = ctx;
  pass.workspace = base + ws.pass;
  pass.workspace_bytes = ws.total - ws.pass;
  SPARGE_RETURN_IF_ERROR(quantize_pass(p, buf, detail::QuantGranularity{}, pass, nullptr));
  return launch_quantized(p, a, buf, static_cast<cudaStream_t>(ctx.stream));
}

}  // namespace

int device_count() {
  int n = 0;
  // No driver or no GPU: cudart_static reports an error, which means "no device" here.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string compiled_set() {
  return cat("archs ", SPARGE_CUDA_ARCHS, "; attention ", SPARGE_CUDA_HAVE_SM90A ? "wgmma (sm_90a) and " : "",
             "mma.sync tiles ", kTileQ, "x", kTileK, ": ",
             attention_set(), "; stage 1: fp16, bf16, any head_dim <= 256");
}

// Head dims with an instance that some GPU can run: those of the mma.sync kernel, and, when this
// build holds sm_90a code, those of the sm_90a kernels (256: sm90ws only, so sm_90 only).
std::vector<int> compiled_head_dims() {
  std::vector<int> dims;
  for (const auto& inst : kCompiledInstances) {
    if (fast_build() && !inst.in_fast_build) continue;
    if (!inst.sm80 && !SPARGE_CUDA_HAVE_SM90A) continue;
    if (std::find(dims.begin(), dims.end(), inst.head_dim) == dims.end()) dims.push_back(inst.head_dim);
  }
  std::sort(dims.begin(), dims.end());
  return dims;
}

namespace {

// The split-KV decode kernels (decode.cuh) can serve calls of one query block of at most
// kDecodeMaxRows rows (decode, speculative tokens) with the exact path and block_k 64. They take
// those with at most kDecodeMaxBatchHeads (batch, query head) rows of the mask: the tensor-core
// kernels give such a call one CTA per row, which leaves most SMs idle. Measured on an H100 (132
// SMs; 128K keys, hd 128, 32 query heads over 8 KV heads, bench/results/
// 2026-12-05_NVIDIA-H100_decode-83918f3.jsonl and ..._decode-3ead0a5.jsonl): at B 1 (32 CTAs)
// split-KV took 0.132 ms against 0.168 at top-k 0.1 and 0.979 against 1.592 with nothing
// skipped; at B 8 (256 CTAs) it lost, 0.929 against 0.513 and 7.95 against 3.14. Between the two
// is not measured: the threshold is half an H100's SMs. Their partial outputs live in the
// workspace: workspace_size counts them only when SPARGE_CUDA_DECODE=1 forces the kernels (the
// tests; =0 forces them off, bench_decode.py times both), so that it stays monotonic in seq_q
// (a call of 1-4 rows would otherwise ask for more than one of 100 rows over few keys); by
// default they run when the caller's workspace holds the partials, which workspace_size's
// Stage-1 scratch (it grows with the key blocks) does from 2000 keys on at B 1 and 32 heads
// (266 KB of partials; tests/cpu/test_decode_workspace.cc).
constexpr int64_t kDecodeMaxBatchHeads = 64;
bool decode_kernel_fits(const ProblemShape& s, const SparseOptions& o) {
  return s.seq_q >= 1 && s.seq_q <= kDecodeMaxRows && s.seq_q <= o.block_q &&
         o.block_k == kDecodeKeys && o.quant == QuantMode::kNone &&
         (s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256);
}
// SPARGE_CUDA_DECODE: 1 (on), 0 (off) or unset (-1: the rule above).
int decode_kernel_forced() {
  const char* forced = std::getenv("SPARGE_CUDA_DECODE");
  if (forced == nullptr) return -1;
  return std::string(forced) == "1" ? 1 : std::string(forced) == "0" ? 0 : -1;
}
bool decode_partials_in_workspace_size(const ProblemShape& s, const SparseOptions& o) {
  return decode_kernel_fits(s, o) && decode_kernel_forced() == 1;
}

// Where the decode partials lie (256-byte aligned, from the workspace's start).
struct DecodeWorkspace {
  std::size_t m, l, acc, total;
  int splits;
};

DecodeWorkspace decode_workspace(const ProblemShape& s) {
  auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  DecodeWorkspace w;
  w.splits = decode_splits(s.batch * s.heads_q);
  const std::size_t rows = std::size_t(s.batch * s.heads_q) * w.splits * std::size_t(s.seq_q);
  w.m = 0;
  w.l = align(rows * sizeof(float));
  w.acc = w.l + align(rows * sizeof(float));
  w.total = w.acc + align(rows * std::size_t(s.head_dim) * sizeof(float));
  return w;
}

// Whether a call runs on the decode kernels: forced, or by the rule when its workspace holds
// their partials.
bool takes_decode_kernel(const ProblemShape& s, const SparseOptions& o, const ExecContext& ctx) {
  if (!decode_kernel_fits(s, o)) return false;
  const int forced = decode_kernel_forced();
  if (forced >= 0) return forced == 1;
  return s.batch * s.heads_q <= kDecodeMaxBatchHeads && ctx.workspace != nullptr &&
         ctx.workspace_bytes >= decode_workspace(s).total;
}

}  // namespace

// Quantized mode: sparse_attention's fused pass writes the quantized operands while Stage 1's
// scratch still holds its pooled blocks, so the two lie side by side (quant_offset).
// The decode kernels' partials (decode.cuh), at the workspace's start: Stage 1 has finished with
// its scratch when the attention runs (the same stream), so the two share it.
std::size_t workspace_size(const ProblemShape& shape, const SparseOptions& opts) {
  const std::size_t stage1 = predict_workspace(shape, opts).total;
  const std::size_t decode =
      decode_partials_in_workspace_size(shape, opts) ? decode_workspace(shape).total : 0;
  if (opts.quant == QuantMode::kNone) return std::max(stage1, decode);
  return quant_offset(shape, opts) + quant_workspace_of(shape, opts.quant).total;
}

namespace {

// What attention() refuses before anything runs (also for sparse_attention's fused call).
Status check_attention(const detail::Problem& p, const BlockMask& mask) {
  SPARGE_RETURN_IF_ERROR(check_dtype(p.q.dtype, "q.dtype"));
  if (mask.block_q != kTileQ || mask.block_k != kTileK)
    return Status::unsupported(cat("mask block geometry (block_q ", mask.block_q, ", block_k ", mask.block_k,
                                   ") must equal the CUDA kernel's tile (block_q ", kTileQ, ", block_k ",
                                   kTileK, ")"));
  if (p.opts.pv_group_rows != kPvGroupRows)
    return Status::unsupported(cat("SparseOptions.pv_group_rows must be ", kPvGroupRows,
                                   " on cuda (one warp's rows), got ", p.opts.pv_group_rows));
  if (p.opts.pv_threshold.per_head && p.shape.heads_q > kMaxParamHeads)
    return Status::unsupported(cat("per-head pv_threshold supports at most ", kMaxParamHeads,
                                   " query heads on cuda, got ", p.shape.heads_q));
  SPARGE_RETURN_IF_ERROR(check_sizes(p));
  return check_device(p.q.device_index);
}

// Stage 1's key side from the caller's key blocks (KeyBlocks, channel-major [D, max_blocks] per
// kv head): pooled_kt and sim_k point into them, rows of max_blocks (the first nk read); the
// launcher then skips the key mean and the key pooling. Nothing is copied (a decode step with
// 128K keys and 8 KV heads used to copy 16 MB of blocks here).
Status use_key_blocks(const KeyBlocks& kb, PredictParams* s) {
  s->pooled_kt = kb.pooled;
  s->sim_k = kb.sim;
  s->kt_pitch = int(kb.max_blocks);
  s->keys_given = true;
  return Status::ok();
}

// What predict_block_mask() refuses before anything runs, the workspace aside.
Status check_predict(const detail::Problem& p, const BlockMask& mask) {
  SPARGE_RETURN_IF_ERROR(check_dtype(p.q.dtype, "q.dtype"));
  SPARGE_RETURN_IF_ERROR(check_sizes(p));
  const bool per_head = p.opts.sim_threshold.per_head || p.opts.select_value.per_head;
  if (per_head && p.shape.heads_q > kMaxPredictHeads)
    return Status::unsupported(cat("per-head Stage-1 thresholds support at most ", kMaxPredictHeads,
                                   " query heads on cuda, got ", p.shape.heads_q));
  // Rows beyond one CTA's shared-memory sort take the long-row selection, which forms the
  // pooled estimate's scores itself: sampled rows and the error target stop there.
  if (mask.num_k_blocks() > kMaxSortedKeyBlocks) {
    if (!detail::pooled_estimate_only(p.opts))
      return Status::unsupported(cat(
          "Stage 1 on cuda takes rows of more than ", kMaxSortedKeyBlocks,
          " key blocks with the pooled estimate only (estimate = pooled, target_error = 0); got ",
          mask.num_k_blocks(), " (seq_k ", p.shape.seq_k, " / block_k ", mask.block_k, ")"));
  }
  SPARGE_RETURN_IF_ERROR(check_device(p.q.device_index));
  if (p.opts.target_error > 0.0f) {
    SPARGE_RETURN_IF_ERROR(check_dtype(p.v.dtype, "v.dtype"));
    if (p.shape.head_dim > 256)
      return Status::unsupported(cat("SparseOptions.target_error on cuda takes head_dim <= 256, got ",
                                     p.shape.head_dim));
  }
  return Status::ok();
}

// Whether a quantized sparse_attention call reads q and k once for Stage 1 and the
// quantization pass together: the quantized kernel runs it, the tiles hold Stage 1's blocks,
// and Stage 1 pools at all (it does not when the selection keeps every tile).
bool fuses_stage1(const detail::Problem& p, const BlockMask& mask, const Stage1Stats& stats) {
  if (p.opts.quant == QuantMode::kNone || detail::selection_keeps_every_tile(p, stats)) return false;
  if (p.key_blocks != nullptr) return false;  // Stage 1 pools no key: nothing to fuse for k
  Kernel kernel = Kernel::kSm80;
  std::string why;
  if (!choose_kernel(p.q.device_index, &kernel, &why).is_ok()) return false;
  const int D = int(p.shape.head_dim);
  return check_quantized(kernel, why, p).is_ok() && pooling_fusable(mask.block_q, mask.block_k, D);
}

// The split-KV decode kernels on the workspace's partials.
Status attention_decode(const AttnParams& a, const detail::Problem& p, const ExecContext& ctx) {
  const DecodeWorkspace ws = decode_workspace(p.shape);
  SPARGE_RETURN_IF_ERROR(check_workspace(ctx, ws.total, "the decode kernels (workspace_size())"));
  auto* base = static_cast<char*>(ctx.workspace);
  DecodePartials part;
  part.m = reinterpret_cast<float*>(base + ws.m);
  part.l = reinterpret_cast<float*>(base + ws.l);
  part.acc = reinterpret_cast<float*>(base + ws.acc);
  part.splits = ws.splits;
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  switch (p.shape.head_dim) {
    case 64:
      return bf16 ? launch_attn_decode<__nv_bfloat16, 64>(a, part, stream)
                  : launch_attn_decode<__half, 64>(a, part, stream);
    case 128:
      return bf16 ? launch_attn_decode<__nv_bfloat16, 128>(a, part, stream)
                  : launch_attn_decode<__half, 128>(a, part, stream);
    default:
      return bf16 ? launch_attn_decode<__nv_bfloat16, 256>(a, part, stream)
                  : launch_attn_decode<__half, 256>(a, part, stream);
  }
}

}  // namespace

namespace {

// The exact mma.sync kernel's dense-mask instances (banded; every GPU from sm_80).
Status attention_dense_mask(const detail::Problem& p, const AttnParams& a, cudaStream_t stream) {
#if SPARGE_FAST_BUILD
  (void)p, (void)a, (void)stream;
  return Status::unsupported("attn_mask on cuda: the dense-mask instances are not compiled "
                             "(SPARGE_FAST_BUILD=ON)");
#else
  const bool bf16 = p.q.dtype == DType::kBFloat16;
  switch (p.shape.head_dim) {
    case 64:
      return bf16 ? launch_attn_sm80dm<__nv_bfloat16, 64, true>(a, stream)
                  : launch_attn_sm80dm<__half, 64, true>(a, stream);
    case 128:
      return bf16 ? launch_attn_sm80dm<__nv_bfloat16, 128, true>(a, stream)
                  : launch_attn_sm80dm<__half, 128, true>(a, stream);
    default:  // check_dense_mask refused it by name before anything ran
      return Status::internal(cat("no dense-mask instance of head_dim ", p.shape.head_dim));
  }
#endif
}

// attention() after its checks, with a dense mask's tile classes already made (`classes`; null:
// made here when the call has a dense mask).
Status attention_with(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                      const AttentionExtras& extras, const ExecContext& ctx,
                      const DenseMaskView* classes) {
  AttnParams a = to_params(p, mask, o, extras);
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  if (p.attn_mask.data != nullptr) {
    if (classes != nullptr) a.attn_mask = *classes;
    else SPARGE_RETURN_IF_ERROR(make_tile_classes(p, ctx, &a.attn_mask));
    // The sm80 kernel's dense-mask instances apply it (every GPU; on sm_90 too, for now).
    if (p.opts.quant != QuantMode::kNone)
      return attention_quantized(Kernel::kSm80, "a dense attn_mask runs the mma.sync kernel", p, a,
                                 ctx);
    return attention_dense_mask(p, a, stream);
  }
  // A row chunk's last rows are part of a longer call: the tensor-core kernels, as for the rest.
  if (takes_decode_kernel(p.shape, p.opts, ctx) && p.call_seq_q == 0)
    return attention_decode(a, p, ctx);
  Kernel kernel = Kernel::kSm80;
  std::string why;
  SPARGE_RETURN_IF_ERROR(choose_kernel(p.q.device_index, &kernel, &why));
  if (p.opts.quant != QuantMode::kNone) return attention_quantized(kernel, why, p, a, ctx);
  return attention_by_head_dim(kernel, why, a, p.shape.head_dim, p.q.dtype, p.band().limited(),
                               stream);
}

// predict_block_mask() after its checks, with a dense mask's tile classes already made (as
// attention_with).
Status predict_with(const detail::Problem& p, const BlockMask& mask, const ExecContext& ctx,
                    const Stage1Stats& stats, const DenseMaskView* classes) {
  const PredictWorkspace ws = predict_workspace(p.shape, p.opts);
  SPARGE_RETURN_IF_ERROR(check_workspace(
      ctx, ws.total,
      "Stage 1 (workspace_size(..., caller_mask=true); C: sparge_workspace_size_caller_mask)"));
  PredictParams s = to_params(p, mask, ws, ctx.workspace, stats);
  SPARGE_RETURN_IF_ERROR(choose_stage1_kernels(p, &s));
  if (p.attn_mask.data != nullptr) {
    if (classes != nullptr) s.attn_mask = *classes;
    else SPARGE_RETURN_IF_ERROR(make_tile_classes(p, ctx, &s.attn_mask));
    s.keep_every_tile = false;  // keep_visible_tiles does not read the classes: the selection does
  }
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  if (p.key_blocks != nullptr && !s.keep_every_tile)
    SPARGE_RETURN_IF_ERROR(use_key_blocks(*p.key_blocks, &s));
  return predict_by_dtype(s, p.q.dtype, stream);
}

}  // namespace

Status attention(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                 const AttentionExtras& extras, const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(check_attention(p, mask));
  SPARGE_RETURN_IF_ERROR(check_dense_mask(p));
  return attention_with(p, mask, o, extras, ctx, nullptr);
}

std::size_t tile_class_workspace_size(const ProblemShape& shape, const SparseOptions& opts,
                                      const AttentionMask& attn_mask) {
  return tile_class_shape(shape, opts, attn_mask).bytes;
}

Status predict_block_mask(const detail::Problem& p, const BlockMask& mask, const ExecContext& ctx,
                          const Stage1Stats& stats) {
  SPARGE_RETURN_IF_ERROR(check_predict(p, mask));
  SPARGE_RETURN_IF_ERROR(check_dense_mask(p));
  return predict_with(p, mask, ctx, stats, nullptr);
}

std::size_t key_blocks_workspace_size(int64_t batch, int64_t heads_kv, int64_t tokens,
                                      int64_t head_dim) {
  const int64_t chunks = (tokens + kKeyMeanChunk - 1) / kKeyMeanChunk;
  return std::size_t(batch * heads_kv * chunks * head_dim) * sizeof(double);
}

Status update_key_blocks(const TensorView& k, KeyBlocks* kb, int64_t first_block, bool new_mean,
                         const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(check_dtype(k.dtype, "k.dtype"));
  SPARGE_RETURN_IF_ERROR(check_device(k.device_index));
  if (k.head_dim > 256)
    return Status::unsupported(cat("key blocks on cuda take head_dim <= 256, got ", k.head_dim));
  if (k.tokens > INT32_MAX || kb->max_blocks > INT32_MAX)
    return Status::unsupported(cat("key blocks on cuda take at most 2^31 - 1 keys and blocks, "
                                   "got ", k.tokens, " keys"));
  PredictParams s{};
  s.k = k.data;
  set_strides(s.k_stride, k);
  s.batch = int(k.batch);
  s.heads_kv = s.heads_q = int(k.heads);
  s.group = 1;
  s.seq_k = int(k.tokens);
  s.head_dim = int(k.head_dim);
  s.block_k = kb->block_k;
  s.num_k_blocks = int(kb->max_blocks);  // the arrays' stride in blocks
  s.kt_pitch = s.num_k_blocks;
  s.km = kb->mean;
  s.pooled_kt = kb->pooled;
  s.sim_k = kb->sim;
  s.key_block_first = int(first_block);
  if (new_mean) {
    const std::size_t bytes = key_blocks_workspace_size(k.batch, k.heads, k.tokens, k.head_dim);
    SPARGE_RETURN_IF_ERROR(check_workspace(ctx, bytes, "build_key_blocks on cuda "
                                                       "(key_blocks_workspace_size())"));
    s.km_partial = static_cast<double*>(ctx.workspace);
  }
  const int end_block = int((k.tokens + kb->block_k - 1) / kb->block_k);
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  switch (k.dtype) {
    case DType::kBFloat16:
      SPARGE_RETURN_IF_ERROR(launch_key_blocks<__nv_bfloat16>(s, new_mean, end_block, stream));
      break;
    case DType::kFloat16:
      SPARGE_RETURN_IF_ERROR(launch_key_blocks<__half>(s, new_mean, end_block, stream));
      break;
    default: return Status::invalid("k.dtype must be float16 or bfloat16 on cuda");
  }
  kb->tokens = k.tokens;
  return Status::ok();
}

// Stage 1 then attention; quantized calls that can read q and k once for both (fuses_stage1)
// run the quantization pass first, with Stage 1's pooling in it, then the rest of Stage 1, then
// the quantized kernel: five launches fewer, and Q read once and K twice fewer (docs/cuda.md).
Status sparse_attention(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                        const AttentionExtras& extras, const ExecContext& ctx) {
  if (p.attn_mask.data != nullptr) {  // a dense mask: checks and tile classes once, both stages
    SPARGE_RETURN_IF_ERROR(check_dense_mask(p));
    SPARGE_RETURN_IF_ERROR(check_predict(p, mask));
    SPARGE_RETURN_IF_ERROR(check_attention(p, mask));
    DenseMaskView classes;
    SPARGE_RETURN_IF_ERROR(make_tile_classes(p, ctx, &classes));
    SPARGE_RETURN_IF_ERROR(predict_with(p, mask, ctx, extras.stage1, &classes));
    return attention_with(p, mask, o, extras, ctx, &classes);
  }
  if (!fuses_stage1(p, mask, extras.stage1)) {
    SPARGE_RETURN_IF_ERROR(predict_block_mask(p, mask, ctx, extras.stage1));
    return attention(p, mask, o, extras, ctx);
  }
  SPARGE_RETURN_IF_ERROR(check_predict(p, mask));
  SPARGE_RETURN_IF_ERROR(check_attention(p, mask));
  const PredictWorkspace pws = predict_workspace(p.shape, p.opts);
  const QuantAttentionWorkspace qws = quant_workspace_of(p.shape, p.opts.quant);
  const std::size_t quant_at = quant_offset(p.shape, p.opts);
  SPARGE_RETURN_IF_ERROR(check_workspace(ctx, quant_at + qws.total,
                                         "quantized sparse_attention on cuda (workspace_size())"));
  PredictParams s = to_params(p, mask, pws, ctx.workspace, extras.stage1);
  SPARGE_RETURN_IF_ERROR(choose_stage1_kernels(p, &s));
  s.pooled_by_pass = true;
  char* quant_base = static_cast<char*>(ctx.workspace) + quant_at;
  const QuantizedBuffers buf = quant_buffers(qws, quant_base, p.opts.quant);
  ExecContext pass = ctx;
  pass.workspace = quant_base + qws.pass;
  pass.workspace_bytes = qws.total - qws.pass;
  SPARGE_RETURN_IF_ERROR(quantize_pass(p, buf, detail::QuantGranularity{}, pass, &s));
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  SPARGE_RETURN_IF_ERROR(predict_by_dtype(s, p.q.dtype, stream));
  return launch_quantized(p, to_params(p, mask, o, extras), buf, stream);
}

Status copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t width, std::size_t rows, const ExecContext& ctx) {
  if (rows == 0 || width == 0) return Status::ok();
  SPARGE_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows,
                                      cudaMemcpyDeviceToDevice,
                                      static_cast<cudaStream_t>(ctx.stream)));
  return Status::ok();
}

std::size_t quantize_workspace_size(const ProblemShape& shape) {
  return quantize_workspace(shape.batch, shape.heads_kv, shape.seq_k, shape.head_dim).total;
}

Status quantize_inputs(const detail::Problem& p, const QuantizedBuffers& out,
                       const detail::QuantGranularity& g, const ExecContext& ctx) {
  return quantize_pass(p, out, g, ctx, nullptr);
}

Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse, const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(check_device(in.device_index));
  PermuteParams pp{};
  pp.in = in.data;
  pp.out = out.data;
  set_strides(pp.in_stride, in);
  set_strides(pp.out_stride, out);
  pp.batch = in.batch;
  pp.heads = in.heads;
  pp.tokens = in.tokens;
  pp.head_dim = in.head_dim;
  pp.elem_bytes = int(dtype_size(in.dtype));
  pp.order = order;
  pp.order_len = order_len;
  pp.first = first_token;
  pp.inverse = inverse;
  return launch_permute(pp, static_cast<cudaStream_t>(ctx.stream));
}

}  // namespace sparge::cuda
