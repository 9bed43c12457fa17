// ErrorTargetRows (src/cpu/error_target.cc), the sampled rows' fp32 softmax of CPU Stage 1, on
// causal, sliding-window and attention-mask (key padding, additive values, hidden pairs) inputs,
// with sample_rows that do and do not divide the kernels' 16-row register blocks, on the AVX-512
// (where the CPU has it) and AVX2 kernels:
//  - sample()'s weights equal, bit for bit, a scalar model of the same fp32 arithmetic (a row's
//    score is one FMA chain over the channels, invisible keys are −∞, the mask's values are added
//    in log2 units; per key block the max, exp2 by fast::exp2_ps and the sum in key order; then
//    the row's max over its blocks and the weights in double). The model knows nothing of how
//    rows are laid out in the kernels' register blocks, so the masks built on these weights do
//    not depend on that layout either;
//  - a block's weights, and add_errors()'s per-candidate errors, do not depend on the group it
//    is sampled in: alone (its rows then fill a register block by themselves), in the groups
//    predict.cc forms, or beside blocks that are not its neighbours and see other key ranges.
// Compiled with the library's flags (tests/CMakeLists.txt): the model must not fuse a multiply
// and an add where the library does not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/error_target.h"
#include "common/geometry.h"
#include "cpu/attention_fast_kernels.h"
#include "cpu/error_target.h"
#include "sparge/sparge.h"

namespace sparge::test {
namespace {

constexpr float kLog2e = 1.4426950408889634f;  // as error_target.cc

struct Case {
  std::string name;
  int64_t Nq = 1000, Nk = 1000, D = 64;
  bool causal = false;
  CausalAlign align = CausalAlign::kTopLeft;
  int window_left = -1, window_right = -1;
  bool attn_mask = false;  // fp32 additive values, hidden pairs, per-entry key lengths
  int sample_rows = 4, block_q = 128, block_k = 64;
};

constexpr int64_t kBatch = 2, kHeadsQ = 2, kHeadsKv = 1;

// The inputs of one case and the Problem that views them.
struct Inputs {
  std::vector<float> q, k, v, mask;  // mask [B, Nq, Nk], shared by the heads
  std::vector<int32_t> key_lengths;
  detail::Problem p;
};

Inputs make_inputs(const Case& c) {
  Inputs in;
  std::mt19937 gen(static_cast<uint32_t>(c.Nq * 31 + c.Nk * 7 + c.sample_rows));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // A shared direction makes some keys stand out, so the weights are far from uniform.
  std::vector<float> dir(c.D);
  for (float& x : dir) x = normal(gen);
  const auto fill = [&](std::vector<float>& t, int64_t heads, int64_t n, float lift) {
    t.resize(kBatch * heads * n * c.D);
    for (int64_t e = 0; e < int64_t(t.size()); ++e) t[e] = normal(gen) + lift * dir[e % c.D];
  };
  fill(in.q, kHeadsQ, c.Nq, 0.8f);
  fill(in.k, kHeadsKv, c.Nk, 0.5f);
  fill(in.v, kHeadsKv, c.Nk, 0.0f);
  detail::Problem& p = in.p;
  p.q = TensorView::contiguous(in.q.data(), DType::kFloat32, Layout::kHND, kBatch, kHeadsQ, c.Nq,
                               c.D);
  p.k = TensorView::contiguous(in.k.data(), DType::kFloat32, Layout::kHND, kBatch, kHeadsKv, c.Nk,
                               c.D);
  p.v = TensorView::contiguous(in.v.data(), DType::kFloat32, Layout::kHND, kBatch, kHeadsKv, c.Nk,
                               c.D);
  p.shape = problem_shape(p.q, p.k);
  p.opts.causal = c.causal;
  p.opts.causal_align = c.align;
  p.opts.window_left = c.window_left;
  p.opts.window_right = c.window_right;
  p.opts.sample_rows = c.sample_rows;
  p.opts.block_q = c.block_q;
  p.opts.block_k = c.block_k;
  p.opts.estimate = EstimateMode::kSampledRows;
  p.scale = 1.0f / std::sqrt(float(c.D));
  if (c.attn_mask) {
    // Additive values in [-3, 1], a quarter of the pairs hidden, and batch entry 0's last
    // eighth of keys padding.
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    in.mask.resize(kBatch * c.Nq * c.Nk);
    for (float& x : in.mask) x = uniform(gen) < 0.25f ? -INFINITY : 4.0f * uniform(gen) - 3.0f;
    in.key_lengths = {int32_t(c.Nk - c.Nk / 8), int32_t(c.Nk)};
    AttentionMask& m = p.attn_mask;
    m.data = in.mask.data();
    m.dtype = MaskDType::kFloat32;
    m.batch = kBatch, m.heads = 1, m.seq_q = c.Nq, m.seq_k = c.Nk;
    m.stride_batch = c.Nq * c.Nk, m.stride_q = c.Nk, m.stride_k = 1;
    m.capacity = int64_t(in.mask.size());
    m.key_lengths = in.key_lengths.data();
  }
  return in;
}

float exp2_lane(float x) { return _mm256_cvtss_f32(cpu::fast::exp2_ps(_mm256_set1_ps(x))); }

// What sample() computes for block i of (b, h), one row and one key at a time.
std::vector<double> model_weights(const Inputs& in, int64_t b, int64_t h, int64_t i) {
  const detail::Problem& p = in.p;
  const SparseOptions& o = p.opts;
  const int64_t Nq = p.shape.seq_q, Nk = p.shape.seq_k, D = p.shape.head_dim, BK = o.block_k;
  const int64_t hk = h / (p.shape.heads_q / p.shape.heads_kv);
  const detail::KeyBand band = p.band();
  const detail::BlockRange allowed =
      detail::allowed_key_blocks(i, o.block_q, o.block_k, band, Nq, Nk);
  const int64_t key_end = in.key_lengths.empty() ? Nk : in.key_lengths[b];
  const int64_t first = i * o.block_q, n = std::min<int64_t>(o.block_q, Nq - first);
  const int64_t rows = detail::sampled_row_count(o.sample_rows, n), nb = allowed.size();
  const float mul = p.scale * kLog2e;
  std::vector<float> mass(rows * nb), tile_max(rows * nb), qs(D);
  for (int64_t s = 0; s < rows; ++s) {
    const int64_t r = detail::sampled_row(first, n, rows, s);
    for (int64_t d = 0; d < D; ++d) qs[d] = in.q[((b * kHeadsQ + h) * Nq + r) * D + d] * mul;
    const int64_t lo = detail::first_visible_key(r, band);
    const int64_t hi = std::min(detail::last_visible_key(r, band, Nk), key_end - 1);
    for (int64_t jj = 0; jj < nb; ++jj) {
      const int64_t c0 = (allowed.begin + jj) * BK, c1 = std::min(c0 + BK, Nk);
      std::vector<float> score(c1 - c0, -INFINITY);
      for (int64_t c = std::max(c0, lo); c < std::min(c1, hi + 1); ++c) {
        float acc = 0.0f;
        for (int64_t d = 0; d < D; ++d)
          acc = std::fma(in.k[((b * kHeadsKv + hk) * Nk + c) * D + d], qs[d], acc);
        if (!in.mask.empty()) acc += kLog2e * in.mask[(b * Nq + r) * Nk + c];
        score[c - c0] = acc;
      }
      float mx = -INFINITY, sum = 0.0f;
      for (float x : score) mx = x > mx ? x : mx;  // _mm256_max_ps(x, mx)
      tile_max[s * nb + jj] = mx;
      if (mx == -INFINITY) mx = 0.0f;
      for (float x : score) sum += exp2_lane(x - mx);
      mass[s * nb + jj] = sum;
    }
  }
  std::vector<double> weight(allowed.end, 0.0);
  for (int64_t s = 0; s < rows; ++s) {
    float m = -INFINITY;
    for (int64_t jj = 0; jj < nb; ++jj) m = std::max(m, tile_max[s * nb + jj]);
    double total = 0.0;
    for (int64_t jj = 0; jj < nb; ++jj) {
      mass[s * nb + jj] *= m == -INFINITY ? 0.0f : std::exp2(tile_max[s * nb + jj] - m);
      total += mass[s * nb + jj];
    }
    if (total == 0.0) continue;
    for (int64_t jj = 0; jj < nb; ++jj) weight[allowed.begin + jj] += mass[s * nb + jj] / total;
  }
  for (double& w : weight) w /= double(rows);
  return weight;
}

// The query blocks of a case that see some key (predict.cc samples no other).
std::vector<int64_t> blocks_with_keys(const detail::Problem& p) {
  std::vector<int64_t> blocks;
  const int64_t nq = detail::ceil_div(p.shape.seq_q, p.opts.block_q);
  for (int64_t i = 0; i < nq; ++i)
    if (detail::allowed_key_blocks(i, p.opts.block_q, p.opts.block_k, p.band(), p.shape.seq_q,
                                   p.shape.seq_k)
            .size() > 0)
      blocks.push_back(i);
  return blocks;
}

// Three ways to group `blocks` (ascending): as predict.cc does (consecutive runs of
// group_blocks()), one block per group, and interleaved (every third block together), whose
// groups hold blocks that see different key ranges.
std::vector<std::vector<std::vector<int64_t>>> groupings(const std::vector<int64_t>& blocks,
                                                         size_t step) {
  std::vector<std::vector<int64_t>> runs, alone, interleaved(3);
  for (size_t t = 0; t < blocks.size(); t += step)
    runs.emplace_back(blocks.begin() + t, blocks.begin() + std::min(t + step, blocks.size()));
  for (int64_t i : blocks) alone.push_back({i});
  for (size_t t = 0; t < blocks.size(); ++t) interleaved[t % 3].push_back(blocks[t]);
  interleaved.erase(std::remove_if(interleaved.begin(), interleaved.end(),
                                   [](const auto& g) { return g.empty(); }),
                    interleaved.end());
  return {runs, alone, interleaved};
}

// add_errors()'s inputs for a group: each block's allowed key blocks ranked by weight, the
// candidates keeping growing prefixes; some blocks not selectable, some key blocks forced.
void rank_group(const cpu::ErrorTargetRows& et, const detail::Problem& p,
                const std::vector<int64_t>& group, std::vector<cpu::RankedRow>* rows,
                std::vector<uint8_t>* selectable) {
  for (size_t t = 0; t < group.size(); ++t) {
    const int64_t i = group[t];
    const detail::BlockRange allowed = detail::allowed_key_blocks(
        i, p.opts.block_q, p.opts.block_k, p.band(), p.shape.seq_q, p.shape.seq_k);
    cpu::RankedRow& rr = (*rows)[i];
    rr.ranked.resize(allowed.size());
    std::iota(rr.ranked.begin(), rr.ranked.end(), allowed.begin);
    const std::vector<double>& w = et.weight(t);
    std::stable_sort(rr.ranked.begin(), rr.ranked.end(),
                     [&](int64_t a, int64_t c) { return w[a] > w[c]; });
    const size_t n = rr.ranked.size();
    for (int g = 0; g < detail::kErrorTargetCandidates; ++g)
      rr.keep[g] = size_t(g + 1) * n / detail::kErrorTargetCandidates;  // non-decreasing, <= n
    (*selectable)[i] = i % 4 != 2;
  }
}

struct GroupingResult {
  std::vector<std::vector<double>> weights;  // per query block
  std::vector<double> err;                   // per candidate, summed over the groups
  double norm = 0.0;
};

GroupingResult run_grouping(const Inputs& in, int64_t b, int64_t h,
                            const std::vector<std::vector<int64_t>>& groups, bool outputs) {
  const detail::Problem& p = in.p;
  const int64_t nq = detail::ceil_div(p.shape.seq_q, p.opts.block_q);
  const int64_t nk = detail::ceil_div(p.shape.seq_k, p.opts.block_k);
  cpu::ErrorTargetRows et(p, b, h, outputs);
  GroupingResult res;
  res.weights.resize(nq);
  res.err.assign(detail::kErrorTargetCandidates, 0.0);
  std::vector<cpu::RankedRow> rows(nq);
  std::vector<uint8_t> selectable(nq, 0), forced(nk);
  for (int64_t j = 0; j < nk; ++j) forced[j] = j % 5 == 1;
  // add_errors() sums its rows in the group's order and scales the group's probabilities in
  // place: to compare groupings exactly, each block's errors come from a call of their own (the
  // group sampled again), and are summed over the blocks in ascending order.
  std::vector<std::vector<double>> block_err(nq);
  std::vector<double> block_norm(nq, 0.0);
  for (const std::vector<int64_t>& group : groups) {
    et.sample(group);
    for (size_t t = 0; t < group.size(); ++t) res.weights[group[t]] = et.weight(t);
    if (!outputs) continue;
    rank_group(et, p, group, &rows, &selectable);
    for (int64_t i : group) {
      std::vector<uint8_t> only(nq, 0);
      only[i] = selectable[i];
      et.sample(group);
      block_err[i].assign(detail::kErrorTargetCandidates, 0.0);
      block_norm[i] = et.add_errors(rows, only, forced, block_err[i].data());
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    res.norm += block_norm[i];
    for (size_t g = 0; g < block_err[i].size(); ++g) res.err[g] += block_err[i][g];
  }
  return res;
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  Case c;
  c.name = "causal, 3 rows";
  c.causal = true;
  c.sample_rows = 3;
  cs.push_back(c);
  c = Case{};
  c.name = "causal bottom-right Nq < Nk, 5 rows, 64x32 blocks";
  c.causal = true, c.align = CausalAlign::kBottomRight;
  c.Nq = 600, c.Nk = 1000, c.sample_rows = 5, c.block_q = 64, c.block_k = 32;
  cs.push_back(c);
  c = Case{};
  c.name = "causal bottom-right Nq > Nk (rows that see no key), 4 rows, D 40";
  c.causal = true, c.align = CausalAlign::kBottomRight;
  c.Nq = 1000, c.Nk = 600, c.D = 40;
  cs.push_back(c);
  c = Case{};
  c.name = "window 200 left 50 right, 4 rows";
  c.Nq = c.Nk = 900, c.window_left = 200, c.window_right = 50;
  cs.push_back(c);
  c = Case{};
  c.name = "causal window 300, 16 rows, 64x64 blocks";
  c.causal = true, c.window_left = 300, c.sample_rows = 16, c.block_q = 64;
  cs.push_back(c);
  c = Case{};
  c.name = "attention mask, 20 rows";
  c.attn_mask = true, c.Nq = 700, c.Nk = 950, c.sample_rows = 20;
  cs.push_back(c);
  c = Case{};
  c.name = "attention mask, causal bottom-right, window 150, 1 row, 32x16 blocks";
  c.attn_mask = true, c.causal = true, c.align = CausalAlign::kBottomRight;
  c.Nq = 500, c.Nk = 700, c.window_left = 150, c.sample_rows = 1, c.block_q = 32, c.block_k = 16;
  cs.push_back(c);
  c = Case{};
  c.name = "attention mask, causal, 4 rows, 64x16 blocks";
  c.attn_mask = true, c.causal = true, c.Nq = c.Nk = 777, c.block_q = 64, c.block_k = 16;
  cs.push_back(c);
  return cs;
}

void check_cases() {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Inputs in = make_inputs(c);
    const std::vector<int64_t> blocks = blocks_with_keys(in.p);
    ASSERT_FALSE(blocks.empty());
    for (int64_t b = 0; b < kBatch; ++b)
      for (int64_t h = 0; h < kHeadsQ; ++h) {
        SCOPED_TRACE("b " + std::to_string(b) + " h " + std::to_string(h));
        const size_t step = cpu::ErrorTargetRows(in.p, b, h, false).group_blocks();
        const auto ways = groupings(blocks, step);
        const GroupingResult first = run_grouping(in, b, h, ways[0], /*outputs=*/true);
        for (int64_t i : blocks)
          ASSERT_EQ(first.weights[i], model_weights(in, b, h, i)) << "block " << i;
        for (size_t w = 0; w < ways.size(); ++w)
          for (bool outputs : {false, true}) {
            SCOPED_TRACE("grouping " + std::to_string(w) + (outputs ? " outputs" : ""));
            const GroupingResult other = run_grouping(in, b, h, ways[w], outputs);
            for (int64_t i : blocks) ASSERT_EQ(other.weights[i], first.weights[i]) << "block " << i;
            if (!outputs) continue;
            ASSERT_EQ(other.err, first.err);
            ASSERT_EQ(other.norm, first.norm);
            ASSERT_GT(first.norm, 0.0);
          }
      }
  }
}

TEST(ErrorTargetRows, SampledWeightsAreTheRowsFp32SoftmaxWhateverTheGroup) { check_cases(); }

// The AVX2 kernels (CPUs without AVX-512F); on such a CPU this repeats the test above.
TEST(ErrorTargetRows, Avx2SampledWeightsAreTheRowsFp32SoftmaxWhateverTheGroup) {
  ASSERT_EQ(0, setenv("SPARGE_CPU_ISA", "avx2", 1));
  check_cases();
  ASSERT_EQ(0, unsetenv("SPARGE_CPU_ISA"));
}

}  // namespace
}  // namespace sparge::test
