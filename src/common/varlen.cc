// Packed batches of sequences of different lengths (flash-attn's varlen convention, issue 14):
// one sparse_attention per sequence on views into the packed tensors, so that every sequence is
// its own problem (Stage 1, causality and windows per sequence) and nothing is copied or padded.
// A first step: one call per sequence, no kernel that spans sequences (many short sequences on
// a GPU pay a launch sequence each).
#include <string>

#include "common/validate.h"
#include "sparge/sparge.h"

namespace sparge {
namespace {

// Tokens [first, first + count) of a packed tensor.
TensorView token_slice(const TensorView& t, int64_t first, int64_t count) {
  TensorView s = t;
  s.data = static_cast<char*>(t.data) + first * t.stride_token * int64_t(dtype_size(t.dtype));
  s.tokens = count;
  if (t.capacity >= 0) s.capacity = t.capacity - first * t.stride_token;
  return s;
}

// Stage1Stats arrays advanced to sequence i's [heads] values.
Stage1Stats stats_of(const Stage1Stats& s, int64_t i, int64_t heads) {
  Stage1Stats r;
  if (s.select_value) r.select_value = s.select_value + i * heads;
  if (s.error_estimate) r.error_estimate = s.error_estimate + i * heads;
  if (s.forced_tiles) r.forced_tiles = s.forced_tiles + i * heads;
  return r;
}

}  // namespace

Status sparse_attention_varlen(const TensorView& q, const TensorView& k, const TensorView& v,
                               const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k,
                               int64_t num_seqs, const SparseOptions& opts, const TensorView& o,
                               const AttentionExtras& extras, const ExecContext& ctx) {
  SPARGE_RETURN_IF_ERROR(detail::validate_varlen(q, k, v, o, cu_seqlens_q, cu_seqlens_k, num_seqs, extras));
  SPARGE_RETURN_IF_ERROR(validate(q, k, v, opts));
  SPARGE_RETURN_IF_ERROR(detail::validate_output(o, q));
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t q0 = cu_seqlens_q[i], nq = cu_seqlens_q[i + 1] - q0;
    const int64_t k0 = cu_seqlens_k[i], nk = cu_seqlens_k[i + 1] - k0;
    if (nq == 0) continue;
    AttentionExtras e;
    e.pv_counters = extras.pv_counters;  // accumulated across calls
    e.stage1 = stats_of(extras.stage1, i, q.heads);
    const Status st = sparse_attention(token_slice(q, q0, nq), token_slice(k, k0, nk), token_slice(v, k0, nk),
                                       opts, token_slice(o, q0, nq), e, ctx);
    // A per-sequence refusal (a workspace sized for a shorter sequence, say) names the sequence.
    if (!st.is_ok())
      return st.with_context("sequence " + std::to_string(i) + " (" + std::to_string(nq) + " queries, " +
                             std::to_string(nk) + " keys): ");
  }
  return Status::ok();
}

}  // namespace sparge
