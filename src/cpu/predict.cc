// Stage 1 on the CPU, exactly as docs/method.md "Stage 1", in double: pool every q block and
// smoothed k block, measure its self-similarity, estimate each eligible key block's mass (the
// softmax of the compressed score map, or the exact softmax of a few sampled query rows), select
// by TopCdf / TopK, then force non-similar blocks (and the sink) on.
// Pooling and similarity are O(N·D): s = ‖Σ x̂‖² / n², no Gram matrix. Serves both CPU backends.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/error_target.h"
#include "common/geometry.h"
#include "cpu/attn_mask.h"
#include "cpu/block_pool.h"
#include "cpu/error_target.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

// Pooled rows and self-similarity of every block of one (batch, head) slice (block_pool.h).
struct BlockStats {
  std::vector<double> pooled;  // [num_blocks, D]
  std::vector<double> sim;     // [num_blocks]
};

// Blocks of `block` rows of (b, h); `shift` (per channel) is subtracted first when non-empty.
BlockStats block_stats(const TensorView& t, int64_t b, int64_t h, int block,
                       const std::vector<double>& shift) {
  const int64_t D = t.head_dim, num_blocks = detail::ceil_div(t.tokens, block);
  BlockStats s{std::vector<double>(num_blocks * D), std::vector<double>(num_blocks)};
  pool_blocks(t, b, h, block, shift.empty() ? nullptr : shift.data(), 0, num_blocks,
              s.pooled.data(), D, 1, s.sim.data());
  return s;
}

// The key side of Stage 1 for one (batch, kv head): computed from k, or read from the caller's
// key blocks (KeyBlocks, kept beside a KV cache), which hold the same values.
struct KeyStats {
  const double* pooled;  // block j, channel d at pooled[j * block_stride + d * dim_stride]
  int64_t block_stride, dim_stride;
  const double* sim;     // [num_k_blocks]
};

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

// The ranking of one mask row, whatever the estimate: `weight[j]` (>= 0, any common scale) is
// the estimated mass of eligible column j, and P̃[j] = weight[j] / Σ eligible weights (written
// into *prob). Ranks `cols` by P̃ descending (ties to the lower j). A zero total (every sampled
// row's weight on the eligible columns underflowed: the estimate puts all the mass on forced
// blocks) returns false: nothing is selected.
bool rank_row(const std::vector<double>& weight, std::vector<int64_t>* cols,
              std::vector<double>* prob) {
  double total = 0.0;
  for (int64_t j : *cols) total += weight[j];
  if (cols->empty() || total == 0.0) return false;
  *prob = weight;
  for (int64_t j : *cols) (*prob)[j] /= total;
  rank_columns(*prob, cols);
  return true;
}

// TopCdf: the shortest ranked prefix whose mass is >= tau (inclusive: the block that reaches tau
// is kept); all of them if rounding keeps the total below tau.
size_t topcdf_length(const std::vector<double>& prob, const std::vector<int64_t>& ranked,
                     double tau) {
  double mass = 0.0;
  for (size_t t = 0; t < ranked.size(); ++t) {
    mass += prob[ranked[t]];
    if (mass >= tau) return t + 1;
  }
  return ranked.size();
}

// TopCdf (select_value = τ) or TopK (κ: max(1, ⌊κ · allowed⌋) blocks) on a ranked row.
size_t keep_length(const std::vector<double>& prob, const std::vector<int64_t>& ranked,
                   detail::BlockRange allowed, const SparseOptions& o, int64_t h) {
  if (o.select == SelectMode::kTopCdf) return topcdf_length(prob, ranked, o.select_value.at(h));
  const double kappa = o.select_value.at(h);
  const int64_t n = std::max<int64_t>(
      1, static_cast<int64_t>(std::floor(kappa * static_cast<double>(allowed.size()))));
  return std::min<size_t>(ranked.size(), static_cast<size_t>(n));
}

// estimate pooled: weight[j] = exp(S̃[i, j] − max), S̃ = scale · p_q[i] · p_k[j], on the eligible
// columns (the softmax of the compressed map).
std::vector<double> pooled_weights(const double* pooled_q, const KeyStats& ks,
                                   const std::vector<int64_t>& cols, detail::BlockRange allowed,
                                   int64_t D, double scale) {
  std::vector<double> weight(allowed.end, 0.0);
  double max_score = -INFINITY;
  for (int64_t j : cols) {
    double dot = 0.0;
    for (int64_t d = 0; d < D; ++d)
      dot += pooled_q[d] * ks.pooled[j * ks.block_stride + d * ks.dim_stride];
    weight[j] = scale * dot;
    max_score = std::max(max_score, weight[j]);
  }
  for (int64_t j : cols) weight[j] = std::exp(weight[j] - max_score);
  return weight;
}

// Writes the stats of one (batch, query head) (host memory; null outputs are skipped). Row
// chunks after the first add their forced tiles to the count (Problem::adds_to_stage1_stats).
void write_stats(const Stage1Stats& st, int64_t bh, double select_value, double error,
                 int64_t forced_tiles, bool add_forced) {
  if (st.select_value) st.select_value[bh] = static_cast<float>(select_value);
  if (st.error_estimate) st.error_estimate[bh] = static_cast<float>(error);
  if (st.forced_tiles) st.forced_tiles[bh] = (add_forced ? st.forced_tiles[bh] : 0) + forced_tiles;
}

// Stage 1's output rows, written where the mask's form puts them (padded or compact). A compact
// row that owns fewer slots than it keeps is left unwritten and reported after the parallel loop
// (the smallest such row, so the message does not depend on the thread schedule).
class MaskRowWriter {
 public:
  explicit MaskRowWriter(const BlockMask& mask) : mask_(mask) {}

  void write(int64_t row, const std::vector<int32_t>& kept) {
    const int64_t count = static_cast<int64_t>(kept.size());
    if (count > mask_.row_slots(row)) {
      const std::lock_guard<std::mutex> lock(overflow_mutex_);
      if (row < overflow_row_) overflow_row_ = row, overflow_count_ = count;
      return;
    }
    std::copy(kept.begin(), kept.end(), mask_.indices + mask_.row_begin(row));
    mask_.counts[row] = static_cast<int32_t>(count);
  }

  Status status() const {
    if (overflow_row_ == kNone) return Status::ok();
    return Status::invalid(
        "mask.row_offsets give row " + std::to_string(overflow_row_) + " " +
        std::to_string(mask_.row_slots(overflow_row_)) + " slots, but Stage 1 keeps " +
        std::to_string(overflow_count_) + " key blocks there: size each row of a compact "
        "output mask for the blocks it may keep (num_k_blocks covers any selection), or "
        "compact a padded mask after Stage 1 (HostBlockMask::to_compact)");
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const BlockMask& mask_;
  std::mutex overflow_mutex_;
  int64_t overflow_row_ = kNone, overflow_count_ = 0;
};

}  // namespace

Status predict_block_mask(const detail::Problem& p, const BlockMask& mask,
                          const Stage1Stats& stats) {
  const ProblemShape& s = p.shape;
  const SparseOptions& o = p.opts;
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const int64_t nq = mask.num_q_blocks(), nk = mask.num_k_blocks();
  const detail::KeyBand band = p.band();
  const double scale = p.scale;
  const bool error_target = o.target_error > 0.0f;
  // target_error implies sampled rows (make_problem sets it; repeated for direct callers).
  const bool sampled = o.estimate == EstimateMode::kSampledRows || error_target;
  // The attention mask's tile classes: a tile it hides wholly is neither eligible nor kept.
  const MaskReader attn(p.attn_mask, s.seq_k);
  // Sampled rows (the estimate and the error target) run in groups of query blocks on the fp32
  // kernels of error_target.cc, which apply the attention mask too (in double, a row at a time,
  // they took 0.39-0.41x a dense call at 4 rows and 1.51-1.57x at 16, grouped 0.12-0.13x and
  // 0.10-0.12x: bench/results/2026-12-05_Intel-Xeon_cpu-sampled-rows.md).
  const TileClasses tiles(attn, s.batch, s.heads_q, s.seq_q, o.block_q, o.block_k, band);
  MaskRowWriter writer(mask);
  if (detail::selection_keeps_every_tile(p, stats)) {  // every visible tile, q and k unread
    std::vector<int32_t> kept;
    for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh)
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t b = bh / s.heads_q, h = bh % s.heads_q;
        const detail::BlockRange allowed =
            detail::allowed_key_blocks(i, o.block_q, o.block_k, band, s.seq_q, s.seq_k);
        kept.clear();
        for (int64_t j = allowed.begin; j < allowed.end; ++j)
          if (!tiles.skipped(b, h, i, j)) kept.push_back(static_cast<int32_t>(j));
        writer.write(mask.row(b, h, i), kept);
      }
    return writer.status();
  }

  std::vector<BlockStats> key_store(p.key_blocks ? 0 : s.batch * s.heads_kv);
  std::vector<KeyStats> key_stats(s.batch * s.heads_kv);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_kv; ++bh) {
    if (const KeyBlocks* kb = p.key_blocks) {  // the cache's blocks: k is not read
      key_stats[bh] = {kb->pooled + bh * D * kb->max_blocks, 1, kb->max_blocks,
                       kb->sim + bh * kb->max_blocks};
      continue;
    }
    const int64_t b = bh / s.heads_kv, h = bh % s.heads_kv;
    key_store[bh] = block_stats(p.k, b, h, o.block_k, key_mean(p.k, b, h));
    key_stats[bh] = {key_store[bh].pooled.data(), D, 1, key_store[bh].sim.data()};
  }

#pragma omp parallel
  {
    // One estimator per thread: its buffers (k, v, the scores of a group of query blocks:
    // megabytes at long lengths) serve every head the thread runs, not allocated per head.
    std::optional<ErrorTargetRows> estimator;
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
      const int64_t b = bh / s.heads_q, h = bh % s.heads_q;
      const BlockStats qs = block_stats(p.q, b, h, o.block_q, {});
      const KeyStats& ks = key_stats[b * s.heads_kv + h / group];
      const double theta = o.sim_threshold.at(h);
      if (sampled) {
        if (estimator)
          estimator->set_head(b, h);
        else
          estimator.emplace(p, b, h, /*outputs=*/error_target);
      }
      std::vector<uint8_t> key_sim(nk), keep(nk);
      std::vector<int32_t> kept;  // one mask row's output
      for (int64_t j = 0; j < nk; ++j) key_sim[j] = is_similar(ks.sim[j], theta);

      // Per query block: the ranked eligible columns and how many of them the selection keeps.
      // The error target decides the count per head after every block is ranked (below).
      std::vector<RankedRow> rows(nq);
      std::vector<uint8_t> selectable(nq, 0);
      double err[detail::kErrorTargetCandidates] = {}, norm = 0.0;
      std::vector<double> prob;
      const auto allowed_of = [&](int64_t i) {
        return detail::allowed_key_blocks(i, o.block_q, o.block_k, band, s.seq_q, s.seq_k);
      };
      // The columns block i may select: allowed, similar, and not hidden whole by the mask.
      const auto selectable_columns = [&](int64_t i) {
        std::vector<int64_t> cols = eligible_columns(key_sim, allowed_of(i));
        cols.erase(std::remove_if(cols.begin(), cols.end(),
                                  [&](int64_t j) { return tiles.skipped(b, h, i, j); }),
                   cols.end());
        return cols;
      };
      if (sampled) {
        // The blocks to estimate (similar, with selectable columns), in groups that share key
        // tiles.
        std::vector<int64_t> todo;
        std::vector<std::vector<int64_t>> columns(nq);  // each estimated block's, ranked below
        for (int64_t i = 0; i < nq; ++i) {
          if (!is_similar(qs.sim[i], theta)) continue;
          columns[i] = selectable_columns(i);
          if (!columns[i].empty()) todo.push_back(i);
        }
        std::vector<uint8_t> forced(nk);
        for (int64_t j = 0; j < nk; ++j) forced[j] = !key_sim[j] || (o.attention_sink && j == 0);
        const size_t step = estimator->group_blocks();
        for (size_t first = 0; first < todo.size(); first += step) {
          const std::vector<int64_t> group(todo.begin() + first,
                                           todo.begin() + std::min(first + step, todo.size()));
          estimator->sample(group);
          for (size_t t = 0; t < group.size(); ++t) {
            const int64_t i = group[t];
            std::vector<int64_t> cols = std::move(columns[i]);
            if (!rank_row(estimator->weight(t), &cols, &prob)) continue;
            selectable[i] = 1;
            rows[i].ranked = std::move(cols);
            if (!error_target) {
              rows[i].keep[0] = keep_length(prob, rows[i].ranked, allowed_of(i), o, h);
              continue;
            }
            for (int g = 0; g < detail::kErrorTargetCandidates; ++g)
              rows[i].keep[g] = topcdf_length(prob, rows[i].ranked, detail::error_target_tau(g));
          }
          if (error_target) norm += estimator->add_errors(rows, selectable, forced, err);
        }
      }
      for (int64_t i = 0; i < nq && !sampled; ++i) {
        const detail::BlockRange allowed = allowed_of(i);
        if (!is_similar(qs.sim[i], theta)) continue;  // forced on whole below
        std::vector<int64_t> cols = selectable_columns(i);
        if (cols.empty()) continue;
        const std::vector<double> weight =
            pooled_weights(&qs.pooled[i * D], ks, cols, allowed, D, scale);
        if (!rank_row(weight, &cols, &prob)) continue;
        selectable[i] = 1;
        rows[i].ranked = std::move(cols);
        rows[i].keep[0] = keep_length(prob, rows[i].ranked, allowed, o, h);
      }
      // The error target's choice for this head; kErrorTargetCandidates keeps every allowed tile.
      const int choice = error_target
                             ? detail::error_target_choice(err, norm, o.target_error)
                             : 0;
      const bool keep_all = choice == detail::kErrorTargetCandidates;

      int64_t forced_tiles = 0;
      for (int64_t i = 0; i < nq; ++i) {
        const detail::BlockRange allowed = allowed_of(i);
        const bool query_sim = is_similar(qs.sim[i], theta);
        std::fill(keep.begin(), keep.end(), 0);
        if (selectable[i])
          for (size_t t = 0; t < rows[i].keep[choice < detail::kErrorTargetCandidates ? choice : 0];
               ++t)
            keep[rows[i].ranked[t]] = 1;
        for (int64_t j = allowed.begin; j < allowed.end; ++j)
          if (!query_sim || !key_sim[j]) {
            keep[j] = 1;
            forced_tiles += !tiles.skipped(b, h, i, j);
          } else if (keep_all) {
            keep[j] = 1;
          }
        if (o.attention_sink && allowed.contains(0)) keep[0] = 1;

        kept.clear();
        for (int64_t j = allowed.begin; j < allowed.end; ++j)
          if (keep[j] && !tiles.skipped(b, h, i, j)) kept.push_back(static_cast<int32_t>(j));
        writer.write(mask.row(b, h, i), kept);
      }
      if (!error_target)
        write_stats(stats, bh, o.select_value.at(h), NAN, forced_tiles, p.adds_to_stage1_stats());
      else if (keep_all)
        write_stats(stats, bh, 1.0, 0.0, forced_tiles, p.adds_to_stage1_stats());
      else
        write_stats(stats, bh, detail::error_target_tau(choice),
                    norm > 0.0 ? err[choice] / norm : 0.0, forced_tiles,
                    p.adds_to_stage1_stats());
    }
  }
  return writer.status();
}

}  // namespace sparge::cpu
