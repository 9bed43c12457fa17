// ErrorTargetRows (src/cpu/error_target.cc), the sampled rows' fp32 softmax and outputs of CPU
// Stage 1, equals bit for bit a scalar model of the same fp32 arithmetic, one row and one key at
// a time: a row's score is one FMA chain over the channels, invisible keys are −∞, the mask's
// values are added in log2 units; per key block the max, exp2 by fast::exp2_ps and the sum in key
// order; the row's max over its blocks and the weights in double; each bucket's P·V one FMA
// chain over its keys in order, and the candidates' errors in double. The model knows nothing of
// how the rows are laid out in the kernels' register blocks, so neither do the weights, masks and
// errors built on them. Checked on causal, sliding-window and attention-mask (key padding,
// additive values, hidden pairs) inputs, with sample_rows that do and do not divide the kernels'
// 16-row register blocks, for three groupings of the query blocks (as predict.cc forms them, one
// block per group, and every third block together: groups of blocks that see other key ranges),
// on the AVX-512 (where the CPU has it) and AVX2 kernels.
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

// What sample() computes for one query block, per sampled row s and allowed key block jj.
struct ModelBlock {
  detail::BlockRange allowed;
  int64_t rows = 0;
  std::vector<float> mass, rescale;   // [s][jj]: the mass relative to the row's max; 2^(m_t − m)
  std::vector<std::vector<float>> p;  // [s][jj]: 2^(score − m_t) of the key block's keys
  std::vector<double> weight;
};

ModelBlock model_block(const Inputs& in, int64_t b, int64_t h, int64_t i) {
  const detail::Problem& p = in.p;
  const SparseOptions& o = p.opts;
  const int64_t Nq = p.shape.seq_q, Nk = p.shape.seq_k, D = p.shape.head_dim, BK = o.block_k;
  const int64_t hk = h / (p.shape.heads_q / p.shape.heads_kv);
  const detail::KeyBand band = p.band();
  ModelBlock mb;
  mb.allowed = detail::allowed_key_blocks(i, o.block_q, o.block_k, band, Nq, Nk);
  const int64_t key_end = in.key_lengths.empty() ? Nk : in.key_lengths[b];
  const int64_t first = i * o.block_q, n = std::min<int64_t>(o.block_q, Nq - first);
  const int64_t rows = mb.rows = detail::sampled_row_count(o.sample_rows, n);
  const int64_t nb = mb.allowed.size();
  const float mul = p.scale * kLog2e;
  std::vector<float> tile_max(rows * nb), qs(D);
  mb.mass.resize(rows * nb);
  mb.rescale.resize(rows * nb);
  mb.p.resize(rows * nb);
  for (int64_t s = 0; s < rows; ++s) {
    const int64_t r = detail::sampled_row(first, n, rows, s);
    for (int64_t d = 0; d < D; ++d) qs[d] = in.q[((b * kHeadsQ + h) * Nq + r) * D + d] * mul;
    const int64_t lo = detail::first_visible_key(r, band);
    const int64_t hi = std::min(detail::last_visible_key(r, band, Nk), key_end - 1);
    for (int64_t jj = 0; jj < nb; ++jj) {
      const int64_t c0 = (mb.allowed.begin + jj) * BK, c1 = std::min(c0 + BK, Nk);
      std::vector<float>& score = mb.p[s * nb + jj];
      score.assign(c1 - c0, -INFINITY);
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
      for (float& x : score) sum += (x = exp2_lane(x - mx));
      mb.mass[s * nb + jj] = sum;
    }
  }
  mb.weight.assign(mb.allowed.end, 0.0);
  for (int64_t s = 0; s < rows; ++s) {
    float m = -INFINITY;
    for (int64_t jj = 0; jj < nb; ++jj) m = std::max(m, tile_max[s * nb + jj]);
    double total = 0.0;
    for (int64_t jj = 0; jj < nb; ++jj) {
      const int64_t at = s * nb + jj;
      mb.rescale[at] = m == -INFINITY ? 0.0f : std::exp2(tile_max[at] - m);
      mb.mass[at] *= mb.rescale[at];
      total += mb.mass[at];
    }
    if (total == 0.0) continue;
    for (int64_t jj = 0; jj < nb; ++jj)
      mb.weight[mb.allowed.begin + jj] += mb.mass[s * nb + jj] / total;
  }
  for (double& w : mb.weight) w /= double(rows);
  return mb;
}

// What add_errors() adds to err[] and returns for the blocks `group` (in its order).
double model_errors(const Inputs& in, int64_t b, int64_t h, const std::vector<int64_t>& group,
                    const std::vector<ModelBlock>& model, const std::vector<cpu::RankedRow>& rows,
                    const std::vector<uint8_t>& selectable, const std::vector<uint8_t>& forced,
                    double* err) {
  constexpr int kCandidates = detail::kErrorTargetCandidates;
  constexpr int kNever = kCandidates, kForced = kCandidates + 1, kBuckets = kCandidates + 2;
  const detail::Problem& p = in.p;
  const int64_t Nk = p.shape.seq_k, D = p.shape.head_dim, BK = p.opts.block_k;
  const int64_t hk = h / (p.shape.heads_q / p.shape.heads_kv);
  const auto v = [&](int64_t c, int64_t d) { return in.v[((b * kHeadsKv + hk) * Nk + c) * D + d]; };
  double norm = 0.0;
  for (int64_t i : group) {
    if (!selectable[i]) continue;
    const ModelBlock& mb = model[i];
    const int64_t nb = mb.allowed.size();
    std::vector<int> of(nb, kNever);  // each allowed key block's bucket
    int g = 0;
    for (size_t rank = 0; rank < rows[i].ranked.size(); ++rank) {
      while (g < kCandidates && rows[i].keep[g] <= rank) ++g;
      of[rows[i].ranked[rank] - mb.allowed.begin] = g;
    }
    for (int64_t jj = 0; jj < nb; ++jj)
      if (forced[mb.allowed.begin + jj]) of[jj] = kForced;
    for (int64_t s = 0; s < mb.rows; ++s) {
      std::vector<std::vector<float>> part(kBuckets, std::vector<float>(D, 0.0f));
      std::vector<double> mass(kBuckets, 0.0);
      for (int64_t jj = 0; jj < nb; ++jj) {
        const int64_t c0 = (mb.allowed.begin + jj) * BK;
        const std::vector<float>& pj = mb.p[s * nb + jj];
        for (int64_t c = 0; c < int64_t(pj.size()); ++c) {
          const float pc = mb.rescale[s * nb + jj] * pj[c];
          for (int64_t d = 0; d < D; ++d)
            part[of[jj]][d] = std::fma(pc, v(c0 + c, d), part[of[jj]][d]);
        }
        mass[of[jj]] += mb.mass[s * nb + jj];
      }
      std::vector<double> exact(part[kForced].begin(), part[kForced].end());
      double total = mass[kForced];
      for (int bk = 0; bk <= kNever; ++bk) {
        total += mass[bk];
        for (int64_t d = 0; d < D; ++d) exact[d] += part[bk][d];
      }
      if (total == 0.0) continue;
      const double inv_total = 1.0 / total;
      double kept = mass[kForced];
      std::vector<double> acc(part[kForced].begin(), part[kForced].end());
      for (int64_t d = 0; d < D; ++d) norm += std::fabs(exact[d] *= inv_total);
      for (int c = 0; c < kCandidates; ++c) {
        kept += mass[c];
        const double inv = kept > 0.0 ? 1.0 / kept : 0.0;
        double lane[4] = {0.0, 0.0, 0.0, 0.0};  // the kernel's four channels at a time
        for (int64_t d = 0; d < D; ++d) {
          acc[d] += part[c][d];
          lane[d % 4] += std::fabs(acc[d] * inv - exact[d]);
        }
        err[c] += (lane[0] + lane[1]) + (lane[2] + lane[3]);
      }
    }
  }
  return norm;
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

// Samples `groups` in turn and, with `outputs`, adds up their errors as predict.cc does; checks
// every block's weights and the errors against the model.
void check_grouping(const Inputs& in, int64_t b, int64_t h,
                    const std::vector<std::vector<int64_t>>& groups, bool outputs) {
  const detail::Problem& p = in.p;
  const int64_t nq = detail::ceil_div(p.shape.seq_q, p.opts.block_q);
  const int64_t nk = detail::ceil_div(p.shape.seq_k, p.opts.block_k);
  cpu::ErrorTargetRows et(p, b, h, outputs);
  std::vector<ModelBlock> model(nq);
  std::vector<cpu::RankedRow> rows(nq);
  std::vector<uint8_t> selectable(nq, 0), forced(nk);
  for (int64_t j = 0; j < nk; ++j) forced[j] = j % 5 == 1;
  std::vector<double> err(detail::kErrorTargetCandidates, 0.0), model_err = err;
  double norm = 0.0, model_norm = 0.0;
  for (const std::vector<int64_t>& group : groups) {
    et.sample(group);
    for (size_t t = 0; t < group.size(); ++t) {
      model[group[t]] = model_block(in, b, h, group[t]);
      ASSERT_EQ(et.weight(t), model[group[t]].weight) << "block " << group[t];
    }
    if (!outputs) continue;
    rank_group(et, p, group, &rows, &selectable);
    norm += et.add_errors(rows, selectable, forced, err.data());
    model_norm += model_errors(in, b, h, group, model, rows, selectable, forced, model_err.data());
  }
  if (!outputs) return;
  EXPECT_GT(norm, 0.0);
  EXPECT_EQ(norm, model_norm);
  EXPECT_EQ(err, model_err);
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
        const size_t step = cpu::ErrorTargetRows(in.p, b, h, false).group_blocks();
        const auto ways = groupings(blocks, step);
        for (size_t w = 0; w < ways.size(); ++w)
          for (bool outputs : {false, true}) {
            SCOPED_TRACE("b " + std::to_string(b) + " h " + std::to_string(h) + " grouping " +
                         std::to_string(w) + (outputs ? " with outputs" : ""));
            check_grouping(in, b, h, ways[w], outputs);
            if (::testing::Test::HasFatalFailure()) return;
          }
      }
  }
}

TEST(ErrorTargetRows, EqualsAScalarModelOfItsFp32ArithmeticWhateverTheGroup) { check_cases(); }

// The AVX2 kernels (CPUs without AVX-512F); on such a CPU this repeats the test above.
TEST(ErrorTargetRows, Avx2EqualsAScalarModelOfItsFp32ArithmeticWhateverTheGroup) {
  ASSERT_EQ(0, setenv("SPARGE_CPU_ISA", "avx2", 1));
  check_cases();
  ASSERT_EQ(0, unsetenv("SPARGE_CPU_ISA"));
}

}  // namespace
}  // namespace sparge::test
