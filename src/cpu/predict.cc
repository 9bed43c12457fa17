// Stage 1 on the CPU, exactly as docs/method.md "Stage 1", in double: pool every q block and
// smoothed k block, measure its self-similarity, estimate each eligible key block's mass (the
// softmax of the compressed score map, or the exact softmax of a few sampled query rows), select
// by TopCdf / TopK, then force non-similar blocks (and the sink) on.
// Pooling and similarity are O(N·D): s = ‖Σ x̂‖² / n², no Gram matrix. Serves both CPU backends.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "common/backend.h"
#include "common/geometry.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

// Pooled rows and self-similarity of every block of one (batch, head) slice.
struct BlockStats {
  std::vector<double> pooled;  // [num_blocks, D]
  std::vector<double> sim;     // [num_blocks]
};

// Per-channel mean of k over all tokens of (b, h): the smoothing shift of Stage 1.
std::vector<double> key_mean(const TensorView& k, int64_t b, int64_t h) {
  std::vector<double> mean(k.head_dim, 0.0);
  for (int64_t n = 0; n < k.tokens; ++n)
    for (int64_t d = 0; d < k.head_dim; ++d) mean[d] += load_element(k, k.offset(b, h, n, d));
  for (double& m : mean) m /= static_cast<double>(k.tokens);
  return mean;
}

// Blocks of `block` rows of (b, h); `shift` (per channel) is subtracted first when non-empty.
// A tail block is pooled over its valid rows only.
BlockStats block_stats(const TensorView& t, int64_t b, int64_t h, int block,
                       const std::vector<double>& shift) {
  const int64_t D = t.head_dim, num_blocks = detail::ceil_div(t.tokens, block);
  BlockStats s{std::vector<double>(num_blocks * D, 0.0), std::vector<double>(num_blocks, 0.0)};
  std::vector<double> row(D), unit_sum(D);
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const int64_t first = blk * block, n = std::min<int64_t>(block, t.tokens - first);
    double* pooled = &s.pooled[blk * D];
    std::fill(unit_sum.begin(), unit_sum.end(), 0.0);
    for (int64_t r = first; r < first + n; ++r) {
      double norm2 = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        row[d] = load_element(t, t.offset(b, h, r, d)) - (shift.empty() ? 0.0 : shift[d]);
        norm2 += row[d] * row[d];
        pooled[d] += row[d];
      }
      if (norm2 == 0.0) continue;  // a zero row normalizes to zero; NaN rows propagate
      const double inv = 1.0 / std::sqrt(norm2);
      for (int64_t d = 0; d < D; ++d) unit_sum[d] += row[d] * inv;
    }
    double sum2 = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      pooled[d] /= static_cast<double>(n);
      sum2 += unit_sum[d] * unit_sum[d];
    }
    s.sim[blk] = sum2 / (static_cast<double>(n) * static_cast<double>(n));
  }
  return s;
}

// A NaN similarity compares false, so its block is non-similar (always computed).
bool is_similar(double sim, double threshold) { return sim > threshold; }

// Ranks eligible columns by probability, descending, ties to the lower index; NaN ranks last
// (its selection is unspecified, but the comparator must stay a strict weak order).
void rank_columns(const std::vector<double>& prob, std::vector<int64_t>* cols) {
  auto key = [&](int64_t j) { return std::isnan(prob[j]) ? -1.0 : prob[j]; };
  std::stable_sort(cols->begin(), cols->end(),
                   [&](int64_t a, int64_t b) { return key(a) > key(b); });
}

// Eligible columns of one mask row: allowed (causal, window) and key block similar.
std::vector<int64_t> eligible_columns(const std::vector<uint8_t>& key_sim,
                                      detail::BlockRange allowed) {
  std::vector<int64_t> cols;
  for (int64_t j = allowed.begin; j < allowed.end; ++j)
    if (key_sim[j]) cols.push_back(j);
  return cols;
}

// The selection of one mask row, whatever the estimate: `weight[j]` (>= 0, any common scale) is
// the estimated mass of eligible column j, and P̃[j] = weight[j] / Σ eligible weights. Ranks by
// P̃ descending (ties to the lower j), then TopCdf / TopK. A zero total (every sampled row's
// weight on the eligible columns underflowed: the estimate puts all the mass on forced blocks)
// selects nothing.
void select_columns(std::vector<double> weight, std::vector<int64_t> cols,
                    detail::BlockRange allowed, const SparseOptions& o, int64_t h,
                    std::vector<uint8_t>* selected) {
  double total = 0.0;
  for (int64_t j : cols) total += weight[j];
  if (cols.empty() || total == 0.0) return;
  std::vector<double>& prob = weight;
  for (int64_t j : cols) prob[j] /= total;
  rank_columns(prob, &cols);

  size_t keep = cols.size();
  if (o.select == SelectMode::kTopCdf) {
    const double tau = o.select_value.at(h);
    double mass = 0.0;
    for (size_t t = 0; t < cols.size(); ++t) {
      mass += prob[cols[t]];
      if (mass >= tau) {  // inclusive: the block that reaches tau is kept
        keep = t + 1;
        break;
      }
    }
  } else {
    const double kappa = o.select_value.at(h);
    const int64_t n = std::max<int64_t>(
        1, static_cast<int64_t>(std::floor(kappa * static_cast<double>(allowed.size()))));
    keep = std::min<size_t>(cols.size(), static_cast<size_t>(n));
  }
  for (size_t t = 0; t < keep; ++t) (*selected)[cols[t]] = 1;
}

// estimate pooled: weight[j] = exp(S̃[i, j] − max), S̃ = scale · p_q[i] · p_k[j], on the eligible
// columns (the softmax of the compressed map).
std::vector<double> pooled_weights(const double* pooled_q, const BlockStats& ks,
                                   const std::vector<int64_t>& cols, detail::BlockRange allowed,
                                   int64_t D, double scale) {
  std::vector<double> weight(allowed.end, 0.0);
  double max_score = -INFINITY;
  for (int64_t j : cols) {
    double dot = 0.0;
    for (int64_t d = 0; d < D; ++d) dot += pooled_q[d] * ks.pooled[j * D + d];
    weight[j] = scale * dot;
    max_score = std::max(max_score, weight[j]);
  }
  for (int64_t j : cols) weight[j] = std::exp(weight[j] - max_score);
  return weight;
}

// estimate sampled_rows: weight[j] = the mean over the sampled rows r of query block i of
// Σ_{c in key block j, c visible to r} softmax_c(scale · q_r · k_c), the softmax taken over every
// key r sees (unsmoothed k: the true attention row). Allowed columns, eligible or not.
// `k` is the kv head's [Nk, D] slice.
std::vector<double> sampled_weights(const TensorView& q, int64_t b, int64_t h,
                                    const std::vector<double>& k, int64_t i,
                                    detail::BlockRange allowed, double scale,
                                    const SparseOptions& o, const detail::KeyBand& band,
                                    int64_t seq_k) {
  const int64_t D = q.head_dim, first = i * o.block_q;
  const int64_t n = std::min<int64_t>(o.block_q, q.tokens - first);
  const int64_t count = detail::sampled_row_count(o.sample_rows, n);
  std::vector<double> weight(allowed.end, 0.0), qr(D), score, block_sum(allowed.end);
  for (int64_t s = 0; s < count; ++s) {
    const int64_t r = detail::sampled_row(first, n, count, s);
    const int64_t c0 = detail::first_visible_key(r, band);
    const int64_t last = detail::last_visible_key(r, band, seq_k);
    if (last < c0) continue;  // the row sees no key: it adds no mass
    for (int64_t d = 0; d < D; ++d) qr[d] = load_element(q, q.offset(b, h, r, d));
    score.assign(last + 1, 0.0);
    double max_score = -INFINITY;
    for (int64_t c = c0; c <= last; ++c) {
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += qr[d] * k[c * D + d];
      score[c] = scale * dot;
      max_score = std::max(max_score, score[c]);
    }
    std::fill(block_sum.begin(), block_sum.end(), 0.0);
    double row_sum = 0.0;
    for (int64_t c = c0; c <= last; ++c) {
      const double e = std::exp(score[c] - max_score);
      block_sum[c / o.block_k] += e;
      row_sum += e;
    }
    for (int64_t j = allowed.begin; j < allowed.end; ++j) weight[j] += block_sum[j] / row_sum;
  }
  for (double& w : weight) w /= static_cast<double>(count);
  return weight;
}

}  // namespace

Status predict_block_mask(const detail::Problem& p, const BlockMask& mask) {
  const ProblemShape& s = p.shape;
  const SparseOptions& o = p.opts;
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const int64_t nq = mask.num_q_blocks(), nk = mask.num_k_blocks();
  const detail::KeyBand band = p.band();
  const double scale = p.scale;

  std::vector<BlockStats> key_stats(s.batch * s.heads_kv);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_kv; ++bh) {
    const int64_t b = bh / s.heads_kv, h = bh % s.heads_kv;
    key_stats[bh] = block_stats(p.k, b, h, o.block_k, key_mean(p.k, b, h));
  }

#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const int64_t b = bh / s.heads_q, h = bh % s.heads_q;
    const BlockStats qs = block_stats(p.q, b, h, o.block_q, {});
    const BlockStats& ks = key_stats[b * s.heads_kv + h / group];
    const double theta = o.sim_threshold.at(h);
    const bool sampled = o.estimate == EstimateMode::kSampledRows;
    const std::vector<double> k_slice =
        sampled ? load_slice<double>(p.k, b, h / group) : std::vector<double>{};
    std::vector<uint8_t> key_sim(nk), keep(nk);
    for (int64_t j = 0; j < nk; ++j) key_sim[j] = is_similar(ks.sim[j], theta);

    for (int64_t i = 0; i < nq; ++i) {
      const detail::BlockRange allowed =
          detail::allowed_key_blocks(i, o.block_q, o.block_k, band, s.seq_q, s.seq_k);
      const bool query_sim = is_similar(qs.sim[i], theta);
      std::fill(keep.begin(), keep.end(), 0);
      if (query_sim) {
        const std::vector<int64_t> cols = eligible_columns(key_sim, allowed);
        if (!cols.empty())
          select_columns(sampled ? sampled_weights(p.q, b, h, k_slice, i, allowed, scale, o,
                                                   band, s.seq_k)
                                 : pooled_weights(&qs.pooled[i * D], ks, cols, allowed, D, scale),
                         cols, allowed, o, h, &keep);
      }
      for (int64_t j = allowed.begin; j < allowed.end; ++j)
        if (!query_sim || !key_sim[j]) keep[j] = 1;
      if (o.attention_sink && allowed.contains(0)) keep[0] = 1;

      const int64_t row = mask.row(b, h, i);
      int32_t count = 0;
      for (int64_t j = allowed.begin; j < allowed.end; ++j)
        if (keep[j]) mask.indices[row * nk + count++] = static_cast<int32_t>(j);
      mask.counts[row] = count;
    }
  }
  return Status::ok();
}

}  // namespace sparge::cpu
