// Stage 1, one test per rule of docs/method.md, on hand-built inputs whose right mask is known.
// Blocks are 16 rows and D = 4. A block whose rows are all equal is perfectly self-similar
// (s = 1); smoothing k by its mean keeps such a block constant, and shifts every compressed score
// of a row by the same amount, so the intended softmax is the one of the unsmoothed values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common/backend.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {
namespace {

using Blocks = std::vector<int32_t>;
constexpr int64_t kD = 4;
constexpr int kBlock = 16;

struct Dims {
  int64_t B = 1, Hq = 1, Hkv = 1, Nq = 16, Nk = 64;
};

void append_rows(std::vector<float>* x, int64_t n, std::vector<float> row) {
  for (int64_t i = 0; i < n; ++i) x->insert(x->end(), row.begin(), row.end());
}
// Rows alternating a, b, a, b, ...
void append_alternating(std::vector<float>* x, int64_t n, std::vector<float> a,
                        std::vector<float> b) {
  for (int64_t i = 0; i < n; ++i)
    x->insert(x->end(), (i % 2 ? b : a).begin(), (i % 2 ? b : a).end());
}
// Key blocks of 16 constant rows c_j·e0.
std::vector<float> constant_key_blocks(const std::vector<float>& c) {
  std::vector<float> k;
  for (float x : c) append_rows(&k, kBlock, {x, 0, 0, 0});
  return k;
}
std::vector<float> e0_queries(int64_t n) {
  std::vector<float> q;
  append_rows(&q, n, {1, 0, 0, 0});
  return q;
}

SparseOptions base_options() {
  SparseOptions o;
  o.block_q = o.block_k = kBlock;
  o.scale = 1.0f;
  o.sim_threshold = {0.5f};
  return o;
}
SparseOptions topk_options(float kappa) {
  SparseOptions o = base_options();
  o.select = SelectMode::kTopK;
  o.select_value = {kappa};
  return o;
}

HostBlockMask predict(const std::vector<float>& q, const std::vector<float>& k, const Dims& s,
                      const SparseOptions& opts, DType dtype = DType::kFloat32,
                      Layout layout = Layout::kHND) {
  EXPECT_EQ(q.size(), size_t(s.B * s.Hq * s.Nq * kD));
  EXPECT_EQ(k.size(), size_t(s.B * s.Hkv * s.Nk * kD));
  const HostTensor qt = HostTensor::make(q, s.B, s.Hq, s.Nq, kD, dtype, layout, 2);
  const HostTensor kt = HostTensor::make(k, s.B, s.Hkv, s.Nk, kD, dtype, layout, 1);
  HostBlockMask mask(s.B, s.Hq, s.Nq, s.Nk, opts.block_q, opts.block_k);
  std::fill(mask.counts.begin(), mask.counts.end(), -7);  // poison: every row must be written
  std::fill(mask.indices.begin(), mask.indices.end(), -7);
  const Status st = predict_block_mask(qt.view, kt.view, opts, mask.view());
  EXPECT_TRUE(st.is_ok()) << st.message();
  return mask;
}

Blocks kept(const HostBlockMask& m, int64_t b, int64_t h, int64_t i) {
  const int64_t row = m.view().row(b, h, i), nk = m.view().num_k_blocks();
  return Blocks(m.indices.begin() + row * nk, m.indices.begin() + row * nk + m.counts[row]);
}

TEST(Predict, TopCdfKeepsTheBlockThatReachesTau) {
  // P̃ = (0.15, 0.5, 0.05, 0.3) by construction: key block j scores ln P_j.
  const std::vector<float> k =
      constant_key_blocks({std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)});
  const std::vector<float> q = e0_queries(16);
  SparseOptions o = base_options();
  const std::pair<float, Blocks> cases[] = {
      {0.4f, {1}}, {0.75f, {1, 3}}, {0.9f, {0, 1, 3}}, {1.0f, {0, 1, 2, 3}}};
  for (const auto& [tau, want] : cases) {
    o.select_value = {tau};
    EXPECT_EQ(kept(predict(q, k, Dims{}, o), 0, 0, 0), want) << "tau " << tau;
  }
}

TEST(Predict, TopKCountsOnlyCausallyAllowedBlocks) {
  // κ = 0.5: row i keeps max(1, ⌊0.5·A_i⌋) of its A_i = i + 1 allowed blocks, not ⌊0.5·4⌋ = 2.
  SparseOptions o = topk_options(0.5f);
  o.causal = true;
  const HostBlockMask m =
      predict(e0_queries(64), constant_key_blocks({0, 3, 1, 2}), Dims{1, 1, 1, 64, 64}, o);
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({0}));
  EXPECT_EQ(kept(m, 0, 0, 1), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 0, 2), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 0, 3), Blocks({1, 3}));
}

TEST(Predict, TailBlocksArePooledOverTheirValidRows) {
  // Nk = 40: blocks of 16, 16 and a tail of 8 rows, all constant. km = 2·e0, so the smoothed
  // blocks are (1, -2, 2)·e0. Pooled over its 8 valid rows the tail scores 2 and wins; padded
  // with zero rows it would score 1, tie with block 0 and be non-similar (s = 0.25 < θ).
  std::vector<float> k;
  append_rows(&k, 16, {3, 0, 0, 0});
  append_rows(&k, 16, {0, 0, 0, 0});
  append_rows(&k, 8, {4, 0, 0, 0});
  SparseOptions o = topk_options(0.1f);
  o.sim_threshold = {0.9f};
  const HostBlockMask m = predict(e0_queries(24), k, Dims{1, 1, 1, 24, 40}, o);
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({2}));
  EXPECT_EQ(kept(m, 0, 0, 1), Blocks({2}));  // the 8-row q tail is similar too
}

TEST(Predict, SimilarityThresholdIsStrict) {
  // A q block alternating e0, e1 has s = ‖8e0 + 8e1‖²/16² = 0.5 exactly.
  std::vector<float> q;
  append_alternating(&q, 16, {1, 0, 0, 0}, {0, 1, 0, 0});
  SparseOptions o = topk_options(0.25f);
  o.sim_threshold = {0.5f};
  EXPECT_EQ(kept(predict(q, constant_key_blocks({0, 3, 1, 2}), Dims{}, o), 0, 0, 0),
            Blocks({0, 1, 2, 3}));
  o.sim_threshold = {0.49f};
  EXPECT_EQ(kept(predict(q, constant_key_blocks({0, 3, 1, 2}), Dims{}, o), 0, 0, 0), Blocks({1}));

  // Key blocks alternating (e0, e1) and (-e0, -e1): km = 0, both have s = 0.5 exactly.
  std::vector<float> k;
  append_alternating(&k, 16, {1, 0, 0, 0}, {0, 1, 0, 0});
  append_alternating(&k, 16, {-1, 0, 0, 0}, {0, -1, 0, 0});
  o.select_value = {0.5f};
  o.sim_threshold = {0.5f};
  EXPECT_EQ(kept(predict(e0_queries(16), k, Dims{1, 1, 1, 16, 32}, o), 0, 0, 0), Blocks({0, 1}));
  o.sim_threshold = {0.49f};
  EXPECT_EQ(kept(predict(e0_queries(16), k, Dims{1, 1, 1, 16, 32}, o), 0, 0, 0), Blocks({0}));
}

TEST(Predict, NonSimilarQueryRowsAndKeyColumnsAreForcedOn) {
  // q block 1 alternates e0/e1 (s = 0.5 < 0.7). Key block 2 alternates e1/e2: after smoothing
  // (km = (e1 + e2)/8) its rows have cosine -0.28, s = 0.36 < 0.7.
  std::vector<float> q = e0_queries(16);
  append_alternating(&q, 16, {1, 0, 0, 0}, {0, 1, 0, 0});
  std::vector<float> k;
  append_rows(&k, 16, {2, 0, 0, 0});
  append_rows(&k, 16, {-1, 0, 0, 0});
  append_alternating(&k, 16, {0, 1, 0, 0}, {0, 0, 1, 0});
  append_rows(&k, 16, {-1, 0, 0, 0});
  SparseOptions o = topk_options(0.25f);
  o.sim_threshold = {0.7f};
  const HostBlockMask m = predict(q, k, Dims{1, 1, 1, 32, 64}, o);
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({0, 2}));        // selected 0, forced 2
  EXPECT_EQ(kept(m, 0, 0, 1), Blocks({0, 1, 2, 3}));  // the whole row
}

TEST(Predict, AttentionSinkKeepsKeyBlockZeroWhereAllowed) {
  SparseOptions o = topk_options(0.25f);
  const std::vector<float> k = constant_key_blocks({0, 3, 1, 2});
  EXPECT_EQ(kept(predict(e0_queries(16), k, Dims{}, o), 0, 0, 0), Blocks({1}));
  o.attention_sink = true;
  EXPECT_EQ(kept(predict(e0_queries(16), k, Dims{}, o), 0, 0, 0), Blocks({0, 1}));

  // Bottom-right, Nq = 64 > Nk = 32: q blocks 0 and 1 see no key, so the sink adds nothing there.
  o.causal = true;
  o.causal_align = CausalAlign::kBottomRight;
  const HostBlockMask m =
      predict(e0_queries(64), constant_key_blocks({0, 3}), Dims{1, 1, 1, 64, 32}, o);
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({}));
  EXPECT_EQ(kept(m, 0, 0, 1), Blocks({}));
  EXPECT_EQ(kept(m, 0, 0, 2), Blocks({0}));
  EXPECT_EQ(kept(m, 0, 0, 3), Blocks({0, 1}));
}

TEST(Predict, CausalTopLeftAndBottomRightAllowDifferentBlocks) {
  SparseOptions o = base_options();
  o.sim_threshold = {1.0f};  // nothing similar: the mask is exactly the allowed region
  o.causal = true;
  const Dims s{1, 1, 1, 32, 64};
  const std::vector<float> q = gaussian(32 * kD, 11), k = gaussian(64 * kD, 12);
  const HostBlockMask tl = predict(q, k, s, o);
  EXPECT_EQ(kept(tl, 0, 0, 0), Blocks({0}));
  EXPECT_EQ(kept(tl, 0, 0, 1), Blocks({0, 1}));
  o.causal_align = CausalAlign::kBottomRight;  // offset Nk - Nq = 32
  const HostBlockMask br = predict(q, k, s, o);
  EXPECT_EQ(kept(br, 0, 0, 0), Blocks({0, 1, 2}));
  EXPECT_EQ(kept(br, 0, 0, 1), Blocks({0, 1, 2, 3}));
}

TEST(Predict, GqaQueryHeadsShareTheirKvHead) {
  // Hq = 4, Hkv = 2: heads 0, 1 read kv head 0 (best block 1), heads 2, 3 kv head 1 (best 3).
  std::vector<float> k = constant_key_blocks({0, 3, 1, 2});
  const std::vector<float> k1 = constant_key_blocks({2, 0, 1, 3});
  k.insert(k.end(), k1.begin(), k1.end());
  const HostBlockMask m =
      predict(e0_queries(4 * 16), k, Dims{1, 4, 2, 16, 64}, topk_options(0.25f));
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 1, 0), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 2, 0), Blocks({3}));
  EXPECT_EQ(kept(m, 0, 3, 0), Blocks({3}));
}

TEST(Predict, PerHeadThresholdsApplyToTheirOwnHead) {
  const std::vector<float> q = e0_queries(3 * 16), k = constant_key_blocks({0, 3, 1, 2});
  const float sim[3] = {-1.0f, -1.0f, 1.0f}, kappa[3] = {0.25f, 0.5f, 0.25f};
  SparseOptions o = topk_options(0.25f);
  o.sim_threshold = {0.5f, sim};
  o.select_value = {0.5f, kappa};
  const HostBlockMask m = predict(q, k, Dims{1, 3, 1, 16, 64}, o);
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 1, 0), Blocks({1, 3}));
  EXPECT_EQ(kept(m, 0, 2, 0), Blocks({0, 1, 2, 3}));  // θ = 1: dense head

  const std::vector<float> kp =
      constant_key_blocks({std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)});
  const float tau[2] = {0.4f, 0.9f};
  SparseOptions c = base_options();
  c.select_value = {0.5f, tau};
  const HostBlockMask mc = predict(e0_queries(2 * 16), kp, Dims{1, 2, 1, 16, 64}, c);
  EXPECT_EQ(kept(mc, 0, 0, 0), Blocks({1}));
  EXPECT_EQ(kept(mc, 0, 1, 0), Blocks({0, 1, 3}));
}

TEST(Predict, UserScaleIsUsedForTheCompressedScores) {
  // Scores scale·c with c = (4, 0, 1, 2), τ = 0.7: a sharper softmax needs fewer blocks.
  const std::vector<float> q = e0_queries(16), k = constant_key_blocks({4, 0, 1, 2});
  SparseOptions o = base_options();
  o.select_value = {0.7f};
  o.scale = 1.0f;
  EXPECT_EQ(kept(predict(q, k, Dims{}, o), 0, 0, 0), Blocks({0}));
  o.scale = 0.0f;  // 1/sqrt(4) = 0.5: P = (0.58, 0.08, 0.13, 0.21)
  EXPECT_EQ(kept(predict(q, k, Dims{}, o), 0, 0, 0), Blocks({0, 3}));
  o.scale = 0.01f;  // nearly uniform
  EXPECT_EQ(kept(predict(q, k, Dims{}, o), 0, 0, 0), Blocks({0, 2, 3}));
}

TEST(Predict, DtypeAndLayoutDoNotChangeTheMask) {
  // Values exactly representable in bf16 give the same mask in every dtype and layout.
  const Dims s{2, 4, 2, 150, 200};
  std::vector<float> q = gaussian(s.B * s.Hq * s.Nq * kD, 13);
  std::vector<float> k = gaussian(s.B * s.Hkv * s.Nk * kD, 14);
  for (float& x : q) x = detail::round_to_bf16(x);
  for (float& x : k) x = detail::round_to_bf16(x);
  SparseOptions o;
  o.block_q = 32;
  o.block_k = 16;
  o.sim_threshold = {-1.0f};  // every block similar: the selection alone decides
  o.select_value = {0.5f};
  o.causal = true;
  const HostBlockMask ref = predict(q, k, s, o);
  EXPECT_EQ(predict(q, k, s, o, DType::kBFloat16, Layout::kNHD).indices, ref.indices);
  EXPECT_EQ(predict(q, k, s, o, DType::kFloat16, Layout::kNHD).counts, ref.counts);
  // Well formed: ascending, inside the causal region, never empty where keys are allowed.
  const AttentionStats st = mask_stats(ref.view(), true, CausalAlign::kTopLeft);
  int64_t kept_total = 0;
  for (int32_t c : ref.counts) {
    EXPECT_GE(c, 1);
    kept_total += c;
  }
  EXPECT_EQ(st.tiles_computed, kept_total);
  EXPECT_GT(st.sparsity(), 0.2);  // τ = 0.5 drops tiles
}

TEST(Predict, NanBlockIsNonSimilarAndKept) {
  // A NaN in q block 1 makes its similarity NaN: the block is non-similar, its row dense.
  std::vector<float> q = e0_queries(32);
  q[kBlock * kD + 5] = std::numeric_limits<float>::quiet_NaN();
  const HostBlockMask m =
      predict(q, constant_key_blocks({0, 3, 1, 2}), Dims{1, 1, 1, 32, 64}, topk_options(0.25f));
  EXPECT_EQ(kept(m, 0, 0, 0), Blocks({1}));
  EXPECT_EQ(kept(m, 0, 0, 1), Blocks({0, 1, 2, 3}));
}

// Top-k with κ = 1 keeps every visible tile whatever q and k hold: the mask is written without
// Stage 1 (detail::selection_keeps_every_tile) and equals what the whole Stage 1 writes (forced
// here by asking for Stage1Stats), under causality, a window, key lengths and a dense mask;
// q full of NaN changes nothing.
TEST(Predict, TopKOfOneWritesEveryVisibleTileWithoutStage1) {
  const Dims s{2, 2, 1, 300, 333};
  // The shortcut is taken exactly when it is safe (so the comparison below is fast vs full).
  detail::Problem prob;
  prob.shape.heads_q = s.Hq;
  prob.opts = topk_options(1.0f);
  int64_t forced_out[4];
  Stage1Stats with_stats;
  with_stats.forced_tiles = forced_out;
  EXPECT_TRUE(detail::selection_keeps_every_tile(prob, {}));
  EXPECT_FALSE(detail::selection_keeps_every_tile(prob, with_stats));
  const float per_head[2] = {1.0f, 0.99f};
  prob.opts.select_value.per_head = per_head;
  EXPECT_FALSE(detail::selection_keeps_every_tile(prob, {}));
  prob.opts = topk_options(1.0f);
  prob.opts.target_error = 0.05f;
  EXPECT_FALSE(detail::selection_keeps_every_tile(prob, {}));
  prob.opts = base_options();  // TopCdf: τ = 1 may still drop blocks the sum rounds past
  prob.opts.select_value = {1.0f};
  EXPECT_FALSE(detail::selection_keeps_every_tile(prob, {}));

  std::vector<float> q(s.B * s.Hq * s.Nq * kD), k(s.B * s.Hkv * s.Nk * kD);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * float(i));
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.11f * float(i));
  const int32_t lengths[2] = {333, 130};
  std::vector<uint8_t> dense(s.Nq * s.Nk);
  for (size_t i = 0; i < dense.size(); ++i) dense[i] = (i / 7) % 5 != 0;
  for (int variant = 0; variant < 4; ++variant) {
    SparseOptions o = topk_options(1.0f);
    AttentionMask m;
    if (variant == 1) o.causal = true, o.causal_align = CausalAlign::kBottomRight;
    if (variant == 2) o.window_left = 40, o.window_right = 10, m.key_lengths = lengths;
    if (variant == 3) {
      o.causal = true;
      m.data = dense.data();
      m.seq_q = s.Nq;
      m.seq_k = s.Nk;
      m.stride_q = s.Nk;
    }
    for (const bool nan_inputs : {false, true}) {
      std::vector<float> qi = q, ki = k;
      if (nan_inputs) std::fill(qi.begin(), qi.end(), std::numeric_limits<float>::quiet_NaN());
      const HostTensor qt = HostTensor::make(qi, s.B, s.Hq, s.Nq, kD, DType::kFloat32, Layout::kHND);
      const HostTensor kt = HostTensor::make(ki, s.B, s.Hkv, s.Nk, kD, DType::kFloat32, Layout::kHND);
      HostBlockMask fast(s.B, s.Hq, s.Nq, s.Nk, o.block_q, o.block_k);
      HostBlockMask full(s.B, s.Hq, s.Nq, s.Nk, o.block_q, o.block_k);
      std::vector<int64_t> forced(s.B * s.Hq);
      Stage1Stats stats;
      stats.forced_tiles = forced.data();
      ASSERT_TRUE(predict_block_mask(qt.view, kt.view, kt.view, m, o, fast.view()).is_ok());
      ASSERT_TRUE(
          predict_block_mask(qt.view, kt.view, kt.view, m, o, full.view(), {}, stats).is_ok());
      EXPECT_EQ(fast.to_dense(), full.to_dense()) << "variant " << variant << " nan " << nan_inputs;
      EXPECT_EQ(fast.counts, full.counts) << "variant " << variant;
    }
  }
}

TEST(Predict, TheAutoEstimateRule) {
  // detail::resolve_estimate: sampled rows from one full query block on, without key blocks and
  // up to kAutoSampledMaxKeyBlocks key blocks; the pooled map otherwise; other modes untouched.
  SparseOptions o;
  o.estimate = EstimateMode::kAuto;
  const auto resolved = [&](int64_t seq_q, int64_t seq_k, bool key_blocks) {
    return detail::resolve_estimate(o, seq_q, seq_k, key_blocks).estimate;
  };
  const int64_t max_keys = detail::kAutoSampledMaxKeyBlocks * o.block_k;
  EXPECT_EQ(resolved(o.block_q, 1000, false), EstimateMode::kSampledRows);
  EXPECT_EQ(resolved(o.block_q - 1, 1000, false), EstimateMode::kPooled);  // a decode-sized call
  EXPECT_EQ(resolved(1, 1000, false), EstimateMode::kPooled);
  EXPECT_EQ(resolved(4096, 4096, true), EstimateMode::kPooled);
  EXPECT_EQ(resolved(4096, max_keys, false), EstimateMode::kSampledRows);
  EXPECT_EQ(resolved(4096, max_keys + 1, false), EstimateMode::kPooled);
  // A length validation will reject: no overflow on the way (UBSan runs this test).
  EXPECT_EQ(resolved(4096, std::numeric_limits<int64_t>::max(), false), EstimateMode::kPooled);
  for (EstimateMode e : {EstimateMode::kPooled, EstimateMode::kSampledRows}) {
    o.estimate = e;
    EXPECT_EQ(resolved(1, max_keys + 1, true), e);
    EXPECT_EQ(resolved(4096, 4096, false), e);
  }
}

}  // namespace
}  // namespace sparge::test
