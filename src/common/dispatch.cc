// The public entry points: validate once, resolve the backend, call it. This is the only place
// that chooses between the CPU reference, the fast CPU backend and the CUDA backend.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/error_target.h"
#include "common/geometry.h"
#include "common/head_chunks.h"
#include "common/row_chunks.h"
#include "common/validate.h"
#include "sparge/build_info.h"
#include "sparge/sparge.h"

namespace sparge {
namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

Status resolve_backend(Device device, const ExecContext& ctx, Backend* out) {
  if (ctx.num_threads < 0)
    return Status::invalid("ExecContext.num_threads must be >= 0 (0 = OpenMP default), got " +
                           std::to_string(ctx.num_threads));
  const Backend requested = ctx.backend;
  if (requested == Backend::kAuto) {
    *out = device == Device::kCUDA ? Backend::kCuda : Backend::kCpuFast;
    return Status::ok();
  }
  const bool cpu_backend = requested == Backend::kReference || requested == Backend::kCpuFast;
  if (requested != Backend::kCuda && !cpu_backend)
    return Status::invalid("ExecContext.backend must be kAuto, kReference, kCpuFast or kCuda");
  if (cpu_backend && device != Device::kCPU)
    return Status::invalid("ExecContext.backend kReference/kCpuFast needs cpu tensors, got cuda");
  if (requested == Backend::kCuda && device != Device::kCUDA)
    return Status::invalid("ExecContext.backend kCuda needs cuda tensors, got cpu");
  *out = requested;
  return Status::ok();
}

detail::Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& v,
                             const SparseOptions& opts, const AttentionMask& attn_mask = {}) {
  detail::Problem p{q, k, v, problem_shape(q, k), opts, opts.scale, attn_mask};
  if (p.scale == 0.0f) p.scale = static_cast<float>(1.0 / std::sqrt(double(q.head_dim)));
  if (opts.target_error > 0.0f) {
    // The error target needs the sampled rows, at least kErrorTargetMinRows of them per block
    // (error_target.h says why), and its budget must not be spent again by λ:
    // a λ below the floor (error_target.h) is raised to it. A per-head λ with any head below
    // it becomes one value, the largest of the floor and the heads' λ (no head skips more).
    p.opts.estimate = EstimateMode::kSampledRows;
    p.opts.sample_rows = std::max(opts.sample_rows, std::min(detail::kErrorTargetMinRows,
                                                             opts.block_q));
    const double floor = detail::error_target_min_pv_threshold(opts.target_error, k.tokens);
    HeadParam& pv = p.opts.pv_threshold;
    double low = pv.value, high = pv.value;
    if (pv.per_head) {
      low = high = pv.per_head[0];
      for (int64_t h = 1; h < q.heads; ++h) {
        low = std::min<double>(low, pv.per_head[h]);
        high = std::max<double>(high, pv.per_head[h]);
      }
    }
    if (low < floor) pv = HeadParam{static_cast<float>(std::max(floor, high))};
  }
  return p;
}

// How sparse_attention splits a CUDA workspace: the predicted mask's counts and indices, a row
// chunk's lse rows (when the call runs in row chunks, row_chunks.h), then the backend's Stage-1
// scratch, all sized for `shape`: the call's, or one chunk's. Planned once per call;
// workspace_size() is its total.
struct WorkspaceLayout {
  std::size_t counts = 0, indices = 0, lse = 0, stage1 = 0, stage1_bytes = 0, total = 0;
  detail::RowChunking chunks;
  ProblemShape shape;
};

WorkspaceLayout workspace_layout(const ProblemShape& s, const SparseOptions& o, bool row_chunks);

// What row chunks bound: the bytes a call of shape `s` needs whole for its mask and Stage 1's
// scratch, without the quantized copies of q, k and v. Those grow with the tokens, not with
// seq_q · seq_k, and chunks would redo K's and V's: counted in, they cut a quantized call of 8K
// tokens and 32 heads into 32 chunks, each quantizing the whole K and V again.
std::size_t chunked_bytes(const ProblemShape& s, const SparseOptions& o) {
  SparseOptions exact = o;
  exact.quant = QuantMode::kNone;
  return workspace_layout(s, exact, /*row_chunks=*/false).total;
}

WorkspaceLayout workspace_layout(const ProblemShape& s, const SparseOptions& o, bool row_chunks) {
  WorkspaceLayout w;
  if (row_chunks) w.chunks = detail::row_chunking(s, o, &chunked_bytes);
  w.shape = detail::chunk_shape(s, o, w.chunks);
  const int64_t rows = s.batch * s.heads_q * detail::ceil_div(w.shape.seq_q, o.block_q);
  const int64_t nk = detail::ceil_div(s.seq_k, o.block_k);
  w.indices = w.counts + align_up(sizeof(int32_t) * rows);
  w.lse = w.indices + align_up(sizeof(int32_t) * rows * nk);
  const std::size_t lse_rows =
      w.chunks.cut() ? std::size_t(s.batch * s.heads_q * w.shape.seq_q) : 0;
  w.stage1 = w.lse + align_up(sizeof(float) * lse_rows);
  w.stage1_bytes = align_up(cuda::workspace_size(w.shape, o));
  w.total = w.stage1 + w.stage1_bytes;
  // A cut call asks for its budget at least, plus what the whole call's quantized copies take
  // beyond the exact layout: row_chunks.h says why (sizes stay monotonic; a whole call holds at
  // most the budget and its copies).
  if (w.chunks.cut()) {
    const std::size_t whole = workspace_layout(s, o, false).total, exact = chunked_bytes(s, o);
    w.total = std::max(w.total, detail::row_chunk_budget(s) + (whole > exact ? whole - exact : 0));
  }
  return w;
}

// key_blocks for one call: k is a cache holding at least q's tokens (the new ones included), the
// blocks cover exactly k's tokens with the options' key blocks, and only the pooled estimate
// reads them (sampled rows and the error target read k's rows).
Status check_key_blocks_for_call(const KeyBlocks& kb, const TensorView& q, const TensorView& k,
                                 const SparseOptions& opts) {
  SPARGE_RETURN_IF_ERROR(detail::validate_key_blocks(kb, k));
  if (k.tokens < q.tokens)
    return Status::invalid("k (the cache, " + std::to_string(k.tokens) +
                           " keys) is shorter than q (" + std::to_string(q.tokens) +
                           " rows): append the new tokens' keys to the cache and the key "
                           "blocks before attending");
  if (kb.block_k != opts.block_k)
    return Status::invalid("key_blocks.block_k (" + std::to_string(kb.block_k) +
                           ") must equal SparseOptions.block_k (" + std::to_string(opts.block_k) +
                           ")");
  if (kb.tokens != k.tokens)
    return Status::invalid("key_blocks.tokens (" + std::to_string(kb.tokens) +
                           ") must equal k.tokens (" + std::to_string(k.tokens) +
                           "): append_key_blocks after the cache grows");
  if (!detail::pooled_estimate_only(opts))
    return Status::unsupported(
        "key_blocks serve Stage 1's pooled estimate only (estimate = pooled, target_error = 0); "
        "sampled rows and the error target read the keys themselves");
  return Status::ok();
}

// CUDA holds per-head thresholds in its kernel parameters (kCudaMaxParamHeads of them): a call
// with more query heads and per-head options runs in head chunks (common/head_chunks.h).
bool cut_into_head_chunks(Backend backend, const SparseOptions& opts, int64_t heads_q) {
  return backend == Backend::kCuda &&
         detail::needs_head_chunks(opts, heads_q, detail::kCudaMaxParamHeads);
}

BlockMask mask_like(const TensorView& q, const TensorView& k, const SparseOptions& o) {
  BlockMask m;
  m.device = q.device;
  m.device_index = q.device_index;
  m.batch = q.batch;
  m.heads = q.heads;
  m.seq_q = q.tokens;
  m.seq_k = k.tokens;
  m.block_q = o.block_q;
  m.block_k = o.block_k;
  return m;
}

}  // namespace

ProblemShape problem_shape(const TensorView& q, const TensorView& k) {
  return ProblemShape{q.batch, q.heads, k.heads, q.tokens, k.tokens, q.head_dim, q.dtype};
}

std::size_t workspace_size(const ProblemShape& s, const SparseOptions& opts, Device device,
                           bool caller_mask) {
  if (device != Device::kCUDA) return 0;
  const SparseOptions o = detail::resolve_estimate(opts, s.seq_q, s.seq_k, false);
  // A shape or options no call accepts need no workspace (and block sizes of 0 would divide by
  // zero below); the call itself reports what is wrong. The mask's index count must fit int64.
  int64_t cells = 0;
  // (ceil_div adds block - 1 to the lengths, so they stay well below 2^63 too.)
  constexpr int64_t kMaxTokens = int64_t{1} << 62;
  if (s.batch < 1 || s.heads_q < 1 || s.heads_kv < 1 || s.seq_q < 1 || s.seq_k < 1 ||
      s.seq_q > kMaxTokens || s.seq_k > kMaxTokens ||
      s.head_dim < 1 || !detail::validate_options(o, s.heads_q).is_ok() ||
      __builtin_mul_overflow(s.batch, s.heads_q, &cells) ||
      __builtin_mul_overflow(cells, s.seq_q, &cells) ||
      __builtin_mul_overflow(cells, s.seq_k, &cells))
    return 0;
  // A caller's mask holds every row: such calls run whole.
  const WorkspaceLayout layout = workspace_layout(s, o, /*row_chunks=*/!caller_mask);
  return caller_mask ? layout.stage1_bytes : layout.total;
}

std::size_t workspace_size(const ProblemShape& s, const AttentionMask& attn_mask,
                           const SparseOptions& opts, Device device, bool caller_mask) {
  if (attn_mask.data == nullptr) return workspace_size(s, opts, device, caller_mask);
  const SparseOptions o = detail::resolve_estimate(opts, s.seq_q, s.seq_k, false);
  if (workspace_size(s, o, device) == 0) return 0;  // cpu, or a call no backend accepts
  // A mask every call rejects (validate_attn_mask's extents and dtype) needs none either.
  const auto fits = [](int64_t extent, int64_t full) { return extent == 1 || extent == full; };
  const int code = int(attn_mask.dtype);
  if (code < int(MaskDType::kBool) || code > int(MaskDType::kBFloat16) ||
      !fits(attn_mask.batch, s.batch) || !fits(attn_mask.heads, s.heads_q) ||
      !fits(attn_mask.seq_q, s.seq_q) || attn_mask.seq_k != s.seq_k)
    return 0;
  // A dense mask's rows would move with row chunks, so such calls run whole (the mask's
  // storage, unless the caller holds it), then the mask's tile classes (cuda/dispatch.cu).
  const WorkspaceLayout layout = workspace_layout(s, o, /*row_chunks=*/false);
  return (caller_mask ? layout.stage1_bytes : layout.total) +
         align_up(cuda::tile_class_workspace_size(s, o, attn_mask));
}

Status validate_options(const SparseOptions& opts, int64_t heads_q) {
  if (heads_q < 1) return Status::invalid("heads_q must be >= 1, got " + std::to_string(heads_q));
  return detail::validate_options(opts, heads_q);
}

Status validate(const TensorView& q, const TensorView& k, const TensorView& v,
                const SparseOptions& opts) {
  return validate(q, k, v, AttentionMask{}, opts);
}

Status validate(const TensorView& q, const TensorView& k, const TensorView& v,
                const AttentionMask& attn_mask, const SparseOptions& opts) {
  SPARGE_RETURN_IF_ERROR(detail::validate_qkv(q, k, v));
  SPARGE_RETURN_IF_ERROR(detail::validate_options(opts, q.heads));
  SPARGE_RETURN_IF_ERROR(detail::validate_attn_mask(attn_mask, q, k));
  // The error target's estimate (cpu/error_target.cc, cuda/predict/error_target.cuh) reads no
  // attention mask yet, so its error would be that of the unmasked call.
  if (!attn_mask.empty() && opts.target_error > 0.0f)
    return Status::unsupported(
        "SparseOptions.target_error with an attn_mask or key_lengths is not supported yet (the "
        "error estimate ignores the mask); use target_error = 0 (a threshold) with a mask");
  return Status::ok();
}

Status predict_block_mask(const TensorView& q, const TensorView& k, const SparseOptions& opts,
                          const BlockMask& mask, const ExecContext& ctx) {
  if (opts.target_error > 0.0f)
    return Status::invalid(
        "SparseOptions.target_error > 0 estimates the output error, which needs v: call "
        "predict_block_mask(q, k, v, ...) or sparse_attention (got target_error " +
        std::to_string(opts.target_error) + " and no v)");
  // Stage 1 reads only q and k here; k stands in for v in the shape checks.
  return predict_block_mask(q, k, k, opts, mask, ctx);
}

Status predict_block_mask(const TensorView& q, const TensorView& k, const TensorView& v,
                          const SparseOptions& opts, const BlockMask& mask,
                          const ExecContext& ctx, const Stage1Stats& stats) {
  return predict_block_mask(q, k, v, AttentionMask{}, opts, mask, ctx, stats);
}

Status predict_block_mask(const TensorView& q, const TensorView& k, const TensorView& v,
                          const AttentionMask& attn_mask, const SparseOptions& opts_in,
                          const BlockMask& mask, const ExecContext& ctx,
                          const Stage1Stats& stats) {
  const SparseOptions opts = detail::resolve_estimate(opts_in, q.tokens, k.tokens, false);
  SPARGE_RETURN_IF_ERROR(validate(q, k, v, attn_mask, opts));
  SPARGE_RETURN_IF_ERROR(detail::validate_mask_geometry(mask, q, k, opts));
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(q.device, ctx, &backend));
  if (cut_into_head_chunks(backend, opts, q.heads))
    return detail::predict_block_mask_in_head_chunks(q, k, v, attn_mask, nullptr, opts, mask,
                                                     ctx, stats, detail::kCudaMaxParamHeads);
  const detail::Problem p = make_problem(q, k, v, opts, attn_mask);
  if (backend == Backend::kCuda) return cuda::predict_block_mask(p, mask, ctx, stats);
  return cpu::predict_block_mask(p, mask, stats);
}

Status predict_block_mask(const TensorView& q, const TensorView& k,
                          const AttentionMask& attn_mask, const KeyBlocks& key_blocks,
                          const SparseOptions& opts_in, const BlockMask& mask,
                          const ExecContext& ctx, const Stage1Stats& stats) {
  const SparseOptions opts = detail::resolve_estimate(opts_in, q.tokens, k.tokens, true);
  // k stands in for v in the shape checks: with key blocks Stage 1 reads neither.
  SPARGE_RETURN_IF_ERROR(validate(q, k, k, attn_mask, opts));
  SPARGE_RETURN_IF_ERROR(detail::validate_mask_geometry(mask, q, k, opts));
  SPARGE_RETURN_IF_ERROR(check_key_blocks_for_call(key_blocks, q, k, opts));
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(q.device, ctx, &backend));
  if (cut_into_head_chunks(backend, opts, q.heads))
    return detail::predict_block_mask_in_head_chunks(q, k, k, attn_mask, &key_blocks, opts, mask,
                                                     ctx, stats, detail::kCudaMaxParamHeads);
  detail::Problem p = make_problem(q, k, k, opts, attn_mask);
  p.key_blocks = &key_blocks;
  if (backend == Backend::kCuda) return cuda::predict_block_mask(p, mask, ctx, stats);
  return cpu::predict_block_mask(p, mask, stats);
}

Status block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                              const BlockMask& mask, const SparseOptions& opts,
                              const TensorView& o, const AttentionExtras& extras,
                              const ExecContext& ctx) {
  return block_sparse_attention(q, k, v, AttentionMask{}, mask, opts, o, extras, ctx);
}

Status block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                              const AttentionMask& attn_mask, const BlockMask& mask,
                              const SparseOptions& opts_in, const TensorView& o,
                              const AttentionExtras& extras, const ExecContext& ctx) {
  // (No Stage 1 here; resolved so that nothing below sees kAuto.)
  const SparseOptions opts = detail::resolve_estimate(opts_in, q.tokens, k.tokens, false);
  SPARGE_RETURN_IF_ERROR(validate(q, k, v, attn_mask, opts));
  SPARGE_RETURN_IF_ERROR(detail::validate_output(o, q));
  SPARGE_RETURN_IF_ERROR(detail::validate_mask(mask, q, k, opts));
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(q.device, ctx, &backend));
  if (cut_into_head_chunks(backend, opts, q.heads))
    return detail::block_sparse_attention_in_head_chunks(q, k, v, attn_mask, mask, opts, o,
                                                         extras, ctx, detail::kCudaMaxParamHeads);
  const detail::Problem p = make_problem(q, k, v, opts, attn_mask);
  switch (backend) {
    case Backend::kCuda: return cuda::attention(p, mask, o, extras, ctx);
    case Backend::kReference: return cpu::attention_reference(p, mask, o, extras);
    default: return cpu::attention_fast(p, mask, o, extras, ctx.num_threads);
  }
}

Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const SparseOptions& opts, const TensorView& o,
                        const AttentionExtras& extras, const ExecContext& ctx,
                        const BlockMask* mask_out) {
  return sparse_attention(q, k, v, AttentionMask{}, opts, o, extras, ctx, mask_out);
}

namespace {

// Both stages on one problem and mask: the CPU backends, or CUDA (its scratch from `ctx`).
Status run_both_stages(Backend backend, const detail::Problem& p, const BlockMask& mask,
                       const TensorView& o, const AttentionExtras& extras,
                       const ExecContext& ctx) {
  if (backend == Backend::kCuda) return cuda::sparse_attention(p, mask, o, extras, ctx);
  SPARGE_RETURN_IF_ERROR(cpu::predict_block_mask(p, mask, extras.stage1));
  return backend == Backend::kReference ? cpu::attention_reference(p, mask, o, extras)
                                        : cpu::attention_fast(p, mask, o, extras, ctx.num_threads);
}

// Row chunks on the CPU backends pool the keys once: an exact call whose Stage 1 takes the
// pooled estimate builds the key blocks of all of k (types.h KeyBlocks: pooled blocks, their
// self-similarities, the key mean) in host memory before its first chunk, and every chunk's
// Stage 1 reads them instead of pooling k again (the key mean and the pooling are the call's, so
// the masks stay the whole call's bit for bit; sparge.h, key blocks built on all of k).
// Quantized calls pool with their quantization; sampled rows and the error target read k's rows
// (the error target keeps a call whole anyway); a caller's key blocks are used as they are.
// CUDA's chunks still pool per chunk: the same build into the workspace measured slower on an
// H100 (its blocks take part of the chunk budget; docs/cuda.md, Row chunks).
bool chunks_share_key_blocks(const SparseOptions& o) {
  return o.quant == QuantMode::kNone && detail::pooled_estimate_only(o);
}

// sparse_attention in row chunks (row_chunks.h; `key_lengths`: an AttentionMask without dense
// data): per chunk of layout.chunks.q_blocks query blocks, both stages on views of q and o with
// one chunk's mask storage (CUDA: the workspace's; CPU: host memory), the lse rows through a
// chunk's scratch into the call's, Stage 1's forced-tile counts summed over the chunks. On CUDA
// `stage1_ctx` is the workspace past the mask and lse scratch.
Status run_in_row_chunks(Backend backend, const TensorView& q, const TensorView& k,
                         const TensorView& v, const AttentionMask& key_lengths,
                         const KeyBlocks* key_blocks, const SparseOptions& opts,
                         const TensorView& o, const AttentionExtras& extras, const ExecContext& ctx,
                         const ExecContext& stage1_ctx, const WorkspaceLayout& layout) {
  const bool cuda = backend == Backend::kCuda;
  const int64_t chunk_rows = layout.shape.seq_q, heads = q.batch * q.heads;
  auto* base = static_cast<char*>(ctx.workspace);
  std::vector<float> host_lse(cuda || !extras.lse ? 0 : std::size_t(heads * chunk_rows));
  float* lse_rows = !extras.lse ? nullptr
                    : cuda      ? reinterpret_cast<float*>(base + layout.lse)
                                : host_lse.data();
  // One chunk's mask storage, reused by every chunk (the last one's rows fit in it).
  HostBlockMask host_mask;
  if (!cuda) host_mask = HostBlockMask(q.batch, q.heads, chunk_rows, k.tokens, opts.block_q,
                                       opts.block_k);
  int32_t* counts =
      cuda ? reinterpret_cast<int32_t*>(base + layout.counts) : host_mask.counts.data();
  int32_t* indices =
      cuda ? reinterpret_cast<int32_t*>(base + layout.indices) : host_mask.indices.data();
  for (int64_t c = 0; c < layout.chunks.count; ++c) {
    const int64_t first = c * chunk_rows, rows = std::min(chunk_rows, q.tokens - first);
    const TensorView qc = detail::row_view(q, first, rows), oc = detail::row_view(o, first, rows);
    BlockMask mask = mask_like(qc, k, opts);
    mask.counts = counts;
    mask.indices = indices;
    detail::Problem p = make_problem(qc, k, v, opts, key_lengths);
    p.key_blocks = key_blocks;
    p.row_offset = first;
    p.call_seq_q = q.tokens;
    AttentionExtras ex = extras;
    ex.lse = lse_rows;
    const Status st = run_both_stages(backend, p, mask, oc, ex, stage1_ctx);
    if (!st.is_ok())
      return st.with_context("query rows " + std::to_string(first) + ".." +
                             std::to_string(first + rows - 1) + " (a row chunk): ");
    if (!extras.lse) continue;
    if (cuda) {
      SPARGE_RETURN_IF_ERROR(cuda::copy_rows(extras.lse + first, sizeof(float) * q.tokens,
                                             lse_rows, sizeof(float) * rows,
                                             sizeof(float) * rows, heads, ctx));
    } else {
      for (int64_t h = 0; h < heads; ++h)
        std::copy_n(lse_rows + h * rows, rows, extras.lse + h * q.tokens + first);
    }
  }
  return Status::ok();
}

// Both stages; `key_blocks` (may be null) replaces Stage 1's pooling of k.
Status run_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const AttentionMask& attn_mask, const KeyBlocks* key_blocks,
                            const SparseOptions& opts_in, const TensorView& o,
                            const AttentionExtras& extras, const ExecContext& ctx,
                            const BlockMask* mask_out) {
  const SparseOptions opts =
      detail::resolve_estimate(opts_in, q.tokens, k.tokens, key_blocks != nullptr);
  SPARGE_RETURN_IF_ERROR(validate(q, k, v, attn_mask, opts));
  SPARGE_RETURN_IF_ERROR(detail::validate_output(o, q));
  if (key_blocks) SPARGE_RETURN_IF_ERROR(check_key_blocks_for_call(*key_blocks, q, k, opts));
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(q.device, ctx, &backend));
  if (cut_into_head_chunks(backend, opts, q.heads))
    return detail::sparse_attention_in_head_chunks(q, k, v, attn_mask, key_blocks, opts, o, extras,
                                                   ctx, mask_out, detail::kCudaMaxParamHeads);

  // Without a caller's mask, long calls run in row chunks (row_chunks.h); a dense attn_mask's
  // rows would move with them, so such calls run whole.
  const bool may_chunk = mask_out == nullptr && attn_mask.data == nullptr;
  if (backend != Backend::kCuda) {
    if (may_chunk) {
      const WorkspaceLayout layout = workspace_layout(problem_shape(q, k), opts, true);
      if (layout.chunks.cut()) {
        HostKeyBlocks shared;  // the chunks' key blocks (chunks_share_key_blocks), host memory
        const KeyBlocks* chunk_key_blocks = key_blocks;
        if (key_blocks == nullptr && chunks_share_key_blocks(opts)) {
          shared = HostKeyBlocks(k.batch, k.heads, k.head_dim, k.tokens, opts.block_k);
          SPARGE_RETURN_IF_ERROR(cpu::update_key_blocks(k, &shared.view(), 0, true));
          chunk_key_blocks = &shared.view();
        }
        return run_in_row_chunks(backend, q, k, v, attn_mask, chunk_key_blocks, opts, o, extras,
                                 ctx, ctx, layout);
      }
    }
    HostBlockMask owned;
    const BlockMask* mask = mask_out;
    if (mask == nullptr) {
      owned = HostBlockMask(q.batch, q.heads, q.tokens, k.tokens, opts.block_q, opts.block_k);
      mask = &owned.view();
    } else {
      SPARGE_RETURN_IF_ERROR(detail::validate_mask_geometry(*mask, q, k, opts));
    }
    detail::Problem p = make_problem(q, k, v, opts, attn_mask);
    p.key_blocks = key_blocks;
    return run_both_stages(backend, p, *mask, o, extras, ctx);
  }

  // CUDA: the mask (unless the caller gives one) and Stage-1 scratch come from the workspace.
#if !SPARGE_WITH_CUDA
  // No CUDA backend in this build: say so (the stub's message), not that the workspace is small.
  return cuda::predict_block_mask(make_problem(q, k, v, opts), mask_like(q, k, opts), ctx);
#endif
  const WorkspaceLayout layout = workspace_layout(problem_shape(q, k), opts, may_chunk);
  // A call that must be cut goes by heads where one KV-head group fits (row_chunks.h): each
  // chunk is a whole call of its heads, within the workspace this call was sized for (and is not
  // cut again: it fits its budget, or, when forced, it is one batch entry's chunk already).
  if (may_chunk && (layout.chunks.cut() || detail::head_chunks_forced())) {
    const int64_t heads = detail::heads_per_memory_chunk(problem_shape(q, k), opts, &chunked_bytes);
    if (heads > 0 && (heads < q.heads || q.batch > 1))
      return detail::sparse_attention_in_head_chunks(q, k, v, attn_mask, key_blocks, opts, o,
                                                     extras, ctx, nullptr, heads);
  }
  // The mask's storage leads the workspace unless the caller holds the mask (mask_out).
  const std::size_t mask_bytes = mask_out ? 0 : layout.stage1;
  if (ctx.workspace == nullptr || ctx.workspace_bytes < mask_bytes + layout.stage1_bytes) {
    std::ostringstream os;
    os << "ExecContext.workspace must hold at least " << mask_bytes + layout.stage1_bytes
       << " bytes (workspace_size(" << (mask_out ? "..., caller_mask = true" : "") << ")), got "
       << (ctx.workspace ? ctx.workspace_bytes : 0);
    return Status::workspace(os.str());
  }
  auto* base = static_cast<char*>(ctx.workspace);
  BlockMask mask = mask_out ? *mask_out : mask_like(q, k, opts);
  if (mask_out) {
    SPARGE_RETURN_IF_ERROR(detail::validate_mask_geometry(mask, q, k, opts));
  } else {
    mask.counts = reinterpret_cast<int32_t*>(base + layout.counts);
    mask.indices = reinterpret_cast<int32_t*>(base + layout.indices);
  }
  ExecContext rest = ctx;  // Stage-1 scratch follows the mask storage, if any
  rest.workspace = base + mask_bytes;
  rest.workspace_bytes = ctx.workspace_bytes - mask_bytes;
  if (layout.chunks.cut())
    return run_in_row_chunks(backend, q, k, v, attn_mask, key_blocks, opts, o, extras, ctx, rest,
                             layout);
  detail::Problem p = make_problem(q, k, v, opts, attn_mask);
  p.key_blocks = key_blocks;
  return cuda::sparse_attention(p, mask, o, extras, rest);
}

}  // namespace

Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const AttentionMask& attn_mask, const SparseOptions& opts,
                        const TensorView& o, const AttentionExtras& extras,
                        const ExecContext& ctx, const BlockMask* mask_out) {
  return run_sparse_attention(q, k, v, attn_mask, nullptr, opts, o, extras, ctx, mask_out);
}

Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const KeyBlocks& key_blocks, const SparseOptions& opts,
                        const TensorView& o, const AttentionExtras& extras,
                        const ExecContext& ctx, const BlockMask* mask_out) {
  return run_sparse_attention(q, k, v, AttentionMask{}, &key_blocks, opts, o, extras, ctx,
                              mask_out);
}

Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const AttentionMask& attn_mask, const KeyBlocks& key_blocks,
                        const SparseOptions& opts, const TensorView& o,
                        const AttentionExtras& extras, const ExecContext& ctx,
                        const BlockMask* mask_out) {
  return run_sparse_attention(q, k, v, attn_mask, &key_blocks, opts, o, extras, ctx, mask_out);
}

std::size_t key_blocks_workspace_size(const TensorView& k) {
  if (k.device != Device::kCUDA || k.batch < 1 || k.heads < 1 || k.tokens < 1 || k.head_dim < 1)
    return 0;
  return cuda::key_blocks_workspace_size(k.batch, k.heads, k.tokens, k.head_dim);
}

namespace {

// Every block of k pooled into `blocks` from block 0, with k's mean (new_mean) or the one the
// blocks hold.
Status pool_all_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx,
                           bool new_mean) {
  if (blocks == nullptr) return Status::invalid("key_blocks must not be null");
  SPARGE_RETURN_IF_ERROR(detail::validate_key_blocks(*blocks, k));
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(k.device, ctx, &backend));
  if (backend == Backend::kCuda) return cuda::update_key_blocks(k, blocks, 0, new_mean, ctx);
  return cpu::update_key_blocks(k, blocks, 0, new_mean);
}

}  // namespace

Status build_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx) {
  return pool_all_key_blocks(k, blocks, ctx, /*new_mean=*/true);
}

Status pool_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx) {
  return pool_all_key_blocks(k, blocks, ctx, /*new_mean=*/false);
}

Status append_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx) {
  if (blocks == nullptr) return Status::invalid("key_blocks must not be null");
  SPARGE_RETURN_IF_ERROR(detail::validate_key_blocks(*blocks, k));
  if (blocks->tokens == 0)
    return Status::invalid("key_blocks cover no key yet (tokens 0): build_key_blocks first, "
                           "which also takes the smoothing mean");
  Backend backend;
  SPARGE_RETURN_IF_ERROR(resolve_backend(k.device, ctx, &backend));
  // The last incomplete block gains rows: it is pooled again from its first row.
  const int64_t first_block = blocks->tokens / blocks->block_k;
  if (backend == Backend::kCuda)
    return cuda::update_key_blocks(k, blocks, first_block, /*new_mean=*/false, ctx);
  return cpu::update_key_blocks(k, blocks, first_block, /*new_mean=*/false);
}

Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse,
                      const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(detail::validate_qkv(in, in, in));
  SPARGE_RETURN_IF_ERROR(detail::validate_output(out, in, "out"));
  if (order == nullptr) return Status::invalid("order must not be null");
  if (order_len < 0 || first_token < 0 || first_token + order_len > in.tokens) {
    std::ostringstream os;
    os << "first_token (" << first_token << ") + order_len (" << order_len
       << ") must lie within in.tokens (" << in.tokens << ")";
    return Status::invalid(os.str());
  }
  if (in.device == Device::kCUDA)
    return cuda::permute_tokens(in, out, order, order_len, first_token, inverse, ctx);
  for (int64_t i = 0; i < order_len; ++i)
    if (order[i] < 0 || order[i] >= order_len) {
      std::ostringstream os;
      os << "order[" << i << "] must be in [0, " << order_len << "), got " << order[i];
      return Status::invalid(os.str());
    }
  return cpu::permute_tokens(in, out, order, order_len, first_token, inverse);
}

std::string build_info() {
  std::ostringstream os;
  os << "sparge " << SPARGE_VERSION << "; backends: cpu-reference, cpu-fast";
#if SPARGE_WITH_CUDA
  os << ", cuda (" << cuda::compiled_set() << ")";
#else
  // SPARGE_WITH_CUDA is 0 both when CMake ran with SPARGE_WITH_CUDA=OFF (or AUTO found no nvcc)
  // and when pip ran with SPARGE_WITH_CUDA=0 (or auto saw no usable toolkit or GPU), nvcc on
  // PATH or not: name the switch that builds it, not a cause this build cannot know.
  os << "; cuda: not built (this build was configured without the CUDA backend; rebuild with "
        "SPARGE_WITH_CUDA=ON for CMake, SPARGE_WITH_CUDA=1 for pip install)";
#endif
  return os.str();
}

int cuda_device_count() { return cuda::device_count(); }

std::vector<int> cuda_head_dims() { return cuda::compiled_head_dims(); }

}  // namespace sparge
