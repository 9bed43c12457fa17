// Calls cut into chunks of query rows, so that a long call never holds its whole padded block
// mask and Stage 1's score map (both grow with seq_q · seq_k; at 1M tokens and 8 heads, 4 GiB and
// 8 GiB): sparse_attention on CUDA without a caller mask runs Stage 1 and Stage 2 once per chunk
// of whole query blocks, on views of q, o and the lse rows, with the whole k and v and the storage
// of one chunk. A chunk's Problem keeps the call's visibility band (Problem::row_offset,
// call_seq_q), and Stage 1's rows depend only on their own query block and on all the keys, so
// every chunk computes exactly the rows the whole call would (masks and outputs bit for bit).
// The cost: each chunk's Stage 2 ends with its own tail, every chunk reads all of K (the
// sampled-rows estimate; in quantized mode the INT8 / FP8 copies of K and V are redone), and the
// row-parallel kernels run on a chunk's rows; the key mean and pooling are done once (CUDA:
// PredictParams::key_side_needed; CPU: key blocks built once for exact pooled calls,
// common/dispatch.cc, chunks_share_key_blocks). So CUDA cuts by heads where it can
// (heads_per_memory_chunk) and by rows only where one KV-head group alone exceeds the budget.
#pragma once

#include <cstdint>

#include "sparge/sparge.h"

namespace sparge::detail {

// A chunk holds at most this share of Q + K + V's bytes in mask and Stage-1 scratch (issue 14's
// target is 10% for both together), and never less than kRowChunkMinBytes (short calls stay
// whole: below it the repeated key work would cost more than the memory saved).
constexpr double kRowChunkShareOfQkv = 0.05;
constexpr std::size_t kRowChunkMinBytes = std::size_t(64) << 20;

// Query blocks per chunk and the number of chunks; q_blocks == 0 when the call stays whole.
struct RowChunking {
  int64_t q_blocks = 0;
  int64_t count = 1;
  bool cut() const { return q_blocks > 0; }
};

// `bytes_of(shape, opts)`: the mask and Stage-1 bytes a call of `shape` needs (the caller's
// workspace layout, without the quantized copies of q, k and v, which chunks do not shrink but
// for q's). A call is cut when they exceed max(kRowChunkMinBytes, kRowChunkShareOfQkv ·
// Q+K+V bytes), the error target is off (its per-head choice spans every row of the head), and
// it has at least 4 query blocks; chunks are equal runs of at least 2 query blocks (so no chunk is
// a few rows that a decode kernel would take instead). SPARGE_ROW_CHUNK_BLOCKS=n forces chunks
// of n >= 1 query blocks on any call the error target does not keep whole (tests compare the
// chunked call with the whole one on small inputs).
using ChunkBytesFn = std::size_t (*)(const ProblemShape&, const SparseOptions&);
RowChunking row_chunking(const ProblemShape& s, const SparseOptions& o, ChunkBytesFn bytes_of);

// Where a CUDA call must be cut (row_chunking plans chunks), it goes by heads when it can: the
// query heads of one batch entry in runs of whole KV-head groups (head_chunks.h), each run a
// whole call of its heads that fits its own budget (bytes_of(run) <= row_chunk_budget(run)),
// spread evenly. Row chunks each read all of K (the sampled-rows estimate's Q·Kᵀ, the quantized
// copies) and cut every row-parallel kernel's grid; head chunks read each head's keys once. The
// query heads per chunk, or 0 for row chunks: where one KV-head group of one batch entry does
// not fit, where SPARGE_ROW_CHUNK_BLOCKS forces row chunks, or with SPARGE_CHUNK_BY=rows (the
// benchmarks' way to compare the two). SPARGE_HEAD_CHUNK_HEADS=n forces chunks of n query heads
// (rounded down to whole groups, at least one) on any call that may be cut, unless
// SPARGE_ROW_CHUNK_BLOCKS forces rows (tests compare them with the whole call on small inputs).
int64_t heads_per_memory_chunk(const ProblemShape& s, const SparseOptions& o, ChunkBytesFn bytes_of);
bool head_chunks_forced();  // SPARGE_HEAD_CHUNK_HEADS is set

// max(kRowChunkMinBytes, kRowChunkShareOfQkv · the bytes of Q, K and V): the most a chunk holds,
// and the least workspace a cut call asks for, so that workspace_size grows with the shape (a
// workspace sized for a shape serves every call of smaller extents: varlen's longest sequence,
// an engine's maximum length), whether a smaller call is cut or not.
std::size_t row_chunk_budget(const ProblemShape& s);

// The shape of a chunk of `q_blocks` query blocks of a call of shape `s` (seq_q cut).
ProblemShape chunk_shape(const ProblemShape& s, const SparseOptions& o, const RowChunking& c);

// Rows [first, first + count) of a [B, H, N, D] view (no copy).
TensorView row_view(const TensorView& t, int64_t first, int64_t count);

}  // namespace sparge::detail
