// Calls cut into chunks of query rows or heads (row_chunks.h): the plans and the row views.
#include "common/row_chunks.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace sparge::detail {
namespace {

// A positive integer from the environment variable `name`, else 0 (unset, empty or malformed).
int64_t positive_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return (end != nullptr && *end == '\0' && n > 0) ? int64_t(n) : 0;
}

int64_t forced_row_chunk_blocks() { return positive_env("SPARGE_ROW_CHUNK_BLOCKS"); }
int64_t forced_head_chunk_heads() { return positive_env("SPARGE_HEAD_CHUNK_HEADS"); }

bool rows_forced_by_env() {
  const char* v = std::getenv("SPARGE_CHUNK_BY");
  return v != nullptr && std::string(v) == "rows";
}

}  // namespace

bool head_chunks_forced() { return forced_head_chunk_heads() > 0; }

int64_t heads_per_memory_chunk(const ProblemShape& s, const SparseOptions& o, ChunkBytesFn bytes_of) {
  if (forced_row_chunk_blocks() > 0 || rows_forced_by_env() || s.heads_kv < 1 ||
      s.heads_q % s.heads_kv != 0)
    return 0;
  const int64_t group = s.heads_q / s.heads_kv;
  if (const int64_t forced = forced_head_chunk_heads(); forced > 0)
    return std::max(group, forced / group * group);
  const auto fits = [&](int64_t groups) {
    ProblemShape c = s;
    c.batch = 1;
    c.heads_q = groups * group;
    c.heads_kv = groups;
    return bytes_of(c, o) <= row_chunk_budget(c);
  };
  // The most groups a chunk holds (bytes_of grows with them faster than the budget's floor).
  int64_t fit = 0;
  for (int64_t lo = 1, hi = s.heads_kv; lo <= hi;) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (fits(mid)) fit = mid, lo = mid + 1;
    else hi = mid - 1;
  }
  if (fit == 0) return 0;
  const int64_t count = (s.heads_kv + fit - 1) / fit;  // as few chunks as fit, evenly spread
  return (s.heads_kv + count - 1) / count * group;
}

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
  // The most query blocks a chunk can hold within the budget, its lse rows included: a binary
  // search over bytes_of, which grows with the rows (not always linearly: CUDA's long-row
  // scratch stops growing at its cap, so a straight line through two sizes undercounts what fits).
  const double lse_per_block = 4.0 * double(s.batch) * double(s.heads_q) * double(o.block_q);
  const auto fits = [&](int64_t blocks) {
    ProblemShape c = s;
    c.seq_q = std::min<int64_t>(s.seq_q, blocks * int64_t(o.block_q));
    return double(bytes_of(c, o)) + lse_per_block * double(blocks) <= double(budget);
  };
  int64_t fit = 2;  // at least 2 blocks a chunk, even where 2 do not fit
  for (int64_t lo = 3, hi = nq - 1; lo <= hi;) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (fits(mid)) fit = mid, lo = mid + 1;
    else hi = mid - 1;
  }
  // Equal chunks: as few as the budget allows, then spread over them.
  const int64_t count = (nq + fit - 1) / fit;
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
