// Sparge: training-free block-sparse attention (SpargeAttn), public C++ API.
//
//   o = softmax(scale * q kᵀ + causal mask, restricted to the kept tiles) v
//
// Two stages, callable together (`sparse_attention`) or apart:
//   1. predict_block_mask: pool Q/K blocks, measure self-similarity, softmax a compressed map,
//      keep key blocks by TopCdf / TopK, force non-similar blocks on -> BlockMask.
//   2. block_sparse_attention: FlashAttention-style online softmax over the kept tiles only,
//      skipping P·V per row group when the tile is negligible (pv_threshold).
// Every call validates its arguments first (messages name the argument) and returns a Status.
// Calls are thread-safe and re-entrant: there is no global state.
//
// Shapes: q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D] with Hq % Hkv == 0 (GQA/MQA), o like q.
// Any Nq, Nk >= 1. A query row that sees no key (an empty mask row, or a row that causal
// bottom-right alignment leaves without keys) gets zeros and lse = -inf.
// NaN/Inf inside q/k/v are not checked (that would cost a pass over the data): they propagate
// as in PyTorch's SDPA. A NaN in q row r makes row r NaN (o and lse); a NaN in k row c makes
// every row that sees key c NaN (a row causality hides c from is unaffected); a NaN in v[c][d]
// makes channel d NaN in the rows that see c. A NaN score never lets pv_threshold skip its row.
// A row that sees no key stays zeros with lse = -inf whatever the inputs hold. Stage 1 treats
// a block holding NaN/Inf as non-similar (its similarity is NaN), so it is always computed; a
// NaN in k makes every block of its kv head non-similar. Details: docs/method.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sparge/status.h"
#include "sparge/types.h"

namespace sparge {

// Sizes of one attention problem, read off q and k.
struct ProblemShape {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seq_q = 0, seq_k = 0, head_dim = 0;
  DType dtype = DType::kFloat32;
};
ProblemShape problem_shape(const TensorView& q, const TensorView& k);

// Bytes of scratch memory `sparse_attention` / `predict_block_mask` need on `device`. 0 on the
// CPU: the CPU backends allocate what they need and ignore ExecContext.workspace. 0 too for a
// shape or options that every call rejects (the call says why). With `caller_mask` the size
// leaves out the mask's storage ([B, Hq, nq] counts and [B, Hq, nq, nk] indices, the bulk at
// long lengths): enough for predict_block_mask, block_sparse_attention, and sparse_attention
// given a mask_out, which keep the mask in the caller's memory; sparse_attention without a
// mask_out keeps it in the workspace and needs the full size.
std::size_t workspace_size(const ProblemShape& shape, const SparseOptions& opts, Device device,
                           bool caller_mask = false);
// The same for calls given `attn_mask`: with a dense mask (data) on CUDA, the call runs whole
// (no row chunks) and keeps the mask's tile classes in the workspace too (one byte per tile of
// each batch entry and head the mask tells apart). Without dense data: the size above.
std::size_t workspace_size(const ProblemShape& shape, const AttentionMask& attn_mask,
                           const SparseOptions& opts, Device device, bool caller_mask = false);

// Check options alone (ranges, enum codes, per-head arrays of `heads_q` values), for settings
// chosen before any tensor exists.
Status validate_options(const SparseOptions& opts, int64_t heads_q);

// Check options and tensors without running anything (the same checks every entry performs).
Status validate(const TensorView& q, const TensorView& k, const TensorView& v,
                const SparseOptions& opts);

// Stage 1. `mask` must have storage for [B, Hq, nq] counts and [B, Hq, nq, nk] indices on the
// tensors' device, with the geometry (block_q, block_k, seq_q, seq_k) of `opts` and q/k.
// This form reads q and k only, so it rejects opts.target_error > 0 (the error estimate needs v).
Status predict_block_mask(const TensorView& q, const TensorView& k, const SparseOptions& opts,
                          const BlockMask& mask, const ExecContext& ctx = {});
// Stage 1 with v, which the error target (opts.target_error) reads; `stats` may be empty.
Status predict_block_mask(const TensorView& q, const TensorView& k, const TensorView& v,
                          const SparseOptions& opts, const BlockMask& mask,
                          const ExecContext& ctx = {}, const Stage1Stats& stats = {});

// Stage 2 with a given mask (predicted or the caller's own).
Status block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                              const BlockMask& mask, const SparseOptions& opts,
                              const TensorView& o, const AttentionExtras& extras = {},
                              const ExecContext& ctx = {});

// Both stages. When `mask_out` is given, the predicted mask is written there (and is what the
// attention used); otherwise it lives in the workspace.
Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const SparseOptions& opts, const TensorView& o,
                        const AttentionExtras& extras = {}, const ExecContext& ctx = {},
                        const BlockMask* mask_out = nullptr);

// The same four entry points with an attention mask (types.h: AttentionMask, SDPA's attn_mask,
// a dense bool or additive mask and/or per-batch key lengths). Each tile of the attention matrix
// is classified: a tile the mask hides wholly is never kept by Stage 1 nor computed by Stage 2,
// a tile it leaves untouched runs as without a mask, and the others apply it per element
// (docs/method.md, "Attention masks"). The CPU backends take both forms; the CUDA backend takes
// key_lengths and returns Status::unsupported naming attn_mask for a dense mask (for now).
Status validate(const TensorView& q, const TensorView& k, const TensorView& v,
                const AttentionMask& attn_mask, const SparseOptions& opts);
Status predict_block_mask(const TensorView& q, const TensorView& k, const TensorView& v,
                          const AttentionMask& attn_mask, const SparseOptions& opts,
                          const BlockMask& mask, const ExecContext& ctx = {},
                          const Stage1Stats& stats = {});
Status block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                              const AttentionMask& attn_mask, const BlockMask& mask,
                              const SparseOptions& opts, const TensorView& o,
                              const AttentionExtras& extras = {}, const ExecContext& ctx = {});
Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const AttentionMask& attn_mask, const SparseOptions& opts,
                        const TensorView& o, const AttentionExtras& extras = {},
                        const ExecContext& ctx = {}, const BlockMask* mask_out = nullptr);

// Decode and chunked prefill against a long KV cache: Stage 1 reads the key blocks kept beside
// the cache (types.h: KeyBlocks) instead of pooling k, so its cost grows with the cache's
// blocks, not its keys. k and v are the cache's first key_blocks.tokens rows (a view of a
// larger allocation is fine), the new queries' keys included (k shorter than q is an error);
// causality aligns as the options say (bottom_right for new queries at the cache's end). The result is bit for bit that of the call without key_blocks
// whenever the blocks' mean is k's current mean (right after build_key_blocks on all of k);
// after appends the key blocks keep build's mean, the only difference. Pooled estimate only;
// CPU backends (CUDA: Status::unsupported for now).
Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const KeyBlocks& key_blocks, const SparseOptions& opts,
                        const TensorView& o, const AttentionExtras& extras = {},
                        const ExecContext& ctx = {}, const BlockMask* mask_out = nullptr);
Status sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const AttentionMask& attn_mask, const KeyBlocks& key_blocks,
                        const SparseOptions& opts, const TensorView& o,
                        const AttentionExtras& extras = {}, const ExecContext& ctx = {},
                        const BlockMask* mask_out = nullptr);
// Stage 1 alone with the key side from key blocks: the mask the sparse_attention overload above
// predicts, without Stage 2. k gives the keys' shape only ([B, Hkv, key_blocks.tokens, D]) and
// is not read, so a caller that holds the key blocks but not the keys (a sequence-parallel rank
// holding its own shard, whose blocks were gathered from the others) passes a broadcast view
// (stride_token 0). Pooled estimate only; `stats` may be empty.
Status predict_block_mask(const TensorView& q, const TensorView& k,
                          const AttentionMask& attn_mask, const KeyBlocks& key_blocks,
                          const SparseOptions& opts, const BlockMask& mask,
                          const ExecContext& ctx = {}, const Stage1Stats& stats = {});
// Fills `blocks` from all of k's tokens: the smoothing mean (per batch entry and kv head), then
// every block's pooled row and similarity; blocks->tokens = k.tokens. Capacity: k.tokens <=
// max_blocks * block_k. On CUDA
// ctx.workspace must hold key_blocks_workspace_size(k) bytes (0 on the CPU).
Status build_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx = {});
std::size_t key_blocks_workspace_size(const TensorView& k);
// Fills `blocks` from all of k's tokens like build_key_blocks, but pools with blocks->mean as
// the caller set it (the mean of a longer sequence k is a part of: a sequence-parallel rank
// pooling its shard with the all-reduced mean) instead of taking k's. No workspace.
Status pool_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx = {});
// Extends `blocks` to k's tokens after the cache grew (k.tokens >= blocks->tokens; the first
// blocks->tokens rows must be those the blocks were made from): reads the new rows and those of
// the last incomplete block only, with the mean build_key_blocks took.
Status append_key_blocks(const TensorView& k, KeyBlocks* blocks, const ExecContext& ctx = {});

// Packed batches of sequences of different lengths (flash-attn's varlen convention): q holds
// every sequence's queries one after another as [1, Hq, total_q, D] (a packed [total_q, Hq, D]
// tensor is the kNHD view with batch 1), k and v [1, Hkv, total_k, D], o like q. Sequence i
// owns queries [cu_seqlens_q[i], cu_seqlens_q[i+1]) and keys [cu_seqlens_k[i],
// cu_seqlens_k[i+1]) and is its own problem: Stage 1, causality and windows per sequence.
// cu_seqlens_q / cu_seqlens_k are host arrays of num_seqs + 1 values from 0, nondecreasing,
// ending at total_q / total_k. A sequence without queries is skipped; one with queries and no
// key is an error. extras.stage1 arrays hold [num_seqs, Hq] values (rows of skipped sequences
// are left as they were), pv_counters accumulate; extras.lse is not taken (unsupported). On CUDA
// the workspace must hold workspace_size() of a batch-1 problem of the longest query and key
// lengths. Today this runs one sparse_attention per sequence on views of the packed tensors.
Status sparse_attention_varlen(const TensorView& q, const TensorView& k, const TensorView& v,
                               const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k,
                               int64_t num_seqs, const SparseOptions& opts, const TensorView& o,
                               const AttentionExtras& extras = {}, const ExecContext& ctx = {});

// Host helpers on host masks. "Allowed" tiles hold at least one pair that the options' causal
// flag and window (with causal_align) leave visible; the other options are not read.
// Every allowed tile on (the dense mask, for baselines and user masks).
Status fill_dense_mask(const BlockMask& mask, const SparseOptions& opts);
Status fill_dense_mask(const BlockMask& mask, bool causal, CausalAlign align);
// Tiles kept vs tiles dense attention computes (allowed ones); sparsity uses that denominator.
AttentionStats mask_stats(const BlockMask& host_mask, const SparseOptions& opts);
AttentionStats mask_stats(const BlockMask& host_mask, bool causal, CausalAlign align);

// Hilbert ordering of a (T, H, W) token grid (generalized curve: any sizes >= 1).
// order[i] = row-major index t*H*W + h*W + w of the i-th token along the curve; consecutive
// tokens are grid neighbours.
std::vector<int64_t> hilbert_order(int64_t frames, int64_t height, int64_t width);
std::vector<int64_t> inverse_order(const std::vector<int64_t>& order);

// out[:, :, first + i] = in[:, :, first + order[i]] for i < order_len (inverse: out[..order[i]..]
// = in[..i..]); tokens outside [first, first + order_len) are copied unchanged (e.g. text tokens).
// `order` lives on the tensors' device. in and out must not overlap.
Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse,
                      const ExecContext& ctx = {});

// What this build contains (backends, CUDA archs, head dims, dtypes) as one line of text.
std::string build_info();
// Head dims the compiled CUDA attention kernels take, ascending (empty without CUDA); the
// Python package pads other head dims up to the next one. 256 is listed when the build holds
// sm_90a code: only the sm_90 kernel sm90ws has it, and other GPUs refuse it (docs/cuda.md).
std::vector<int> cuda_head_dims();
// Number of usable CUDA devices (0 when built without CUDA or when no driver/GPU is present).
int cuda_device_count();

}  // namespace sparge
