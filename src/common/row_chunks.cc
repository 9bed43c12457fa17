// Calls cut into chunks of query rows (row_chunks.h): the plan and the views.
#include "common/row_chunks.h"

#include <algorithm>
#include <cstdlib>

namespace sparge::detail {
namespace {

int64_t forced_row_chunk_blocks() {
  const char* v = std::getenv("SPARGE_ROW_CHUNK_BLOCKS");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return (end != nullptr && *end == '\0' && n > 0) ? int64_t(n) : 0;
}

}  // namespace

RowChunking row_chunking(const ProblemShape& s, const SparseOptions& o, ChunkBytesFn bytes_of) {
  if (o.target_error > 0.0f || o.block_q < 1 || s.seq_q < 1) return {};
  const int64_t nq = (s.seq_q + o.block_q - 1) / o.block_q;
  const auto plan = [nq](int64_t blocks) -> RowChunking {
    if (blocks >= nq) return {};
    return {blocks, (nq + blocks - 1) / blocks};
  };
  if (const int64_t forced = forced_row_chunk_blocks(); forced > 0) return plan(forced);
  if (nq < 4) return {};
  const std::size_t budget = row_chunk_budget(s);
  if (bytes_of(s, o) <= budget) return {};
  // The bytes that grow with the rows, per query block, from two shapes (the rest is per call),
  // and a chunk's lse rows.
  ProblemShape two = s, four = s;
  two.seq_q = 2 * int64_t(o.block_q);
  four.seq_q = 4 * int64_t(o.block_q);
  const std::size_t at_two = bytes_of(two, o), at_four = bytes_of(four, o);
  const double lse_per_block = 4.0 * double(s.batch) * double(s.heads_q) * double(o.block_q);
  const double per_block =
      std::max(1.0, (double(at_four) - double(at_two)) / 2.0) + lse_per_block;
  const double fixed = std::max(0.0, double(at_two) - 2.0 * per_block);
  const int64_t fit = int64_t((double(budget) - fixed) / per_block);
  // Equal chunks: as few as the budget allows, then spread over them.
  const int64_t blocks = std::max<int64_t>(2, fit);
  const int64_t count = (nq + blocks - 1) / blocks;
  return plan(std::max<int64_t>(2, (nq + count - 1) / count));
}

std::size_t row_chunk_budget(const ProblemShape& s) {
  const double tokens =
      double(s.heads_q) * double(s.seq_q) + 2.0 * double(s.heads_kv) * double(s.seq_k);
  const double qkv = double(dtype_size(s.dtype)) * double(s.batch) * double(s.head_dim) * tokens;
  return std::max(kRowChunkMinBytes, std::size_t(kRowChunkShareOfQkv * qkv));
}

ProblemShape chunk_shape(const ProblemShape& s, const SparseOptions& o, const RowChunking& c) {
  ProblemShape r = s;
  if (c.cut()) r.seq_q = std::min<int64_t>(s.seq_q, c.q_blocks * int64_t(o.block_q));
  return r;
}

TensorView row_view(const TensorView& t, int64_t first, int64_t count) {
  TensorView r = t;
  const int64_t offset = first * t.stride_token;
  r.data = static_cast<char*>(t.data) + offset * int64_t(dtype_size(t.dtype));
  r.tokens = count;
  if (t.capacity >= 0) r.capacity = t.capacity - offset;
  return r;
}

}  // namespace sparge::detail
