// Stage 1 with estimate = sampled_rows (docs/method.md, "The sampled_rows estimate"):
//  - the mask equals an independent oracle written from the docs (plain loops, full softmax rows,
//    its own similarity and causal arithmetic) on random, video-like and language-like inputs,
//    with odd lengths, both causal alignments, GQA, tail blocks with fewer rows than sample_rows,
//    TopCdf and TopK, sinks, per-head thresholds and a 16-bit dtype;
//  - which rows are sampled, on a hand-built block;
//  - calibration: on the language-like workload the true attention mass the kept blocks hold is
//    within 0.03 of τ (the pooled map's value is printed beside it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "reference_cases.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "test_util.h"

namespace sparge::test {
namespace {

struct Shape {
  int64_t B, Hq, Hkv, Nq, Nk, D;
};

// Logical HND fp32 q [B, Hq, Nq, D] and k [B, Hkv, Nk, D].
struct Inputs {
  Shape s;
  std::vector<float> q, k;
  float q_at(int64_t b, int64_t h, int64_t n, int64_t d) const {
    return q[((b * s.Hq + h) * s.Nq + n) * s.D + d];
  }
  float k_at(int64_t b, int64_t h, int64_t n, int64_t d) const {
    return k[((b * s.Hkv + h) * s.Nk + n) * s.D + d];
  }
};

Inputs from_workload(const workloads::Workload& w) {
  return {{w.batch, w.heads_q, w.heads_kv, w.seq_q, w.seq_k, w.head_dim}, w.q, w.k};
}

// ‖Σ x̂‖² / n² of rows [r0, r1) of `row(n, d)`, minus `shift` per channel.
template <typename Row>
double self_similarity(Row row, int64_t r0, int64_t r1, int64_t D,
                       const std::vector<double>& shift) {
  std::vector<double> unit(D, 0.0), x(D);
  for (int64_t r = r0; r < r1; ++r) {
    double norm2 = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      x[d] = row(r, d) - shift[d];
      norm2 += x[d] * x[d];
    }
    if (norm2 == 0.0) continue;
    for (int64_t d = 0; d < D; ++d) unit[d] += x[d] / std::sqrt(norm2);
  }
  double sum2 = 0.0;
  for (double u : unit) sum2 += u * u;
  return sum2 / double((r1 - r0) * (r1 - r0));
}

// An attention mask for the oracle: additive fp32 values [B, Nq, Nk] (natural-log units, −∞
// hidden; shared by the heads) and per batch entry its key length (keys past it are padding).
struct OracleMask {
  std::vector<float> value;
  std::vector<int32_t> key_lengths;
  AttentionMask view(int64_t B, int64_t Nq, int64_t Nk) const {
    AttentionMask m;
    m.data = value.data();
    m.dtype = MaskDType::kFloat32;
    m.batch = B, m.heads = 1, m.seq_q = Nq, m.seq_k = Nk;
    m.stride_batch = Nq * Nk, m.stride_q = Nk, m.stride_k = 1;
    m.capacity = int64_t(value.size());
    m.key_lengths = key_lengths.data();
    return m;
  }
};

// The sampled_rows mask as docs/method.md states it, in dense [B, Hq, nq, nk] 0/1 form. With
// `mask`: the sampled rows see only the keys it leaves (values added to their scores), and a
// tile it hides wholly (no visible pair) is neither selected nor kept.
std::vector<uint8_t> oracle_mask(const Inputs& in, const SparseOptions& o,
                                 const OracleMask* mask = nullptr) {
  const Shape& s = in.s;
  const int64_t BQ = o.block_q, BK = o.block_k;
  const int64_t nq = (s.Nq + BQ - 1) / BQ, nk = (s.Nk + BK - 1) / BK;
  const int64_t off = o.causal && o.causal_align == CausalAlign::kBottomRight ? s.Nk - s.Nq : 0;
  const double scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(s.D));
  const auto last_key = [&](int64_t r) {
    return o.causal ? std::min(s.Nk - 1, r + off) : s.Nk - 1;
  };
  std::vector<uint8_t> dense(s.B * s.Hq * nq * nk, 0);
  // The mask's term of (b, r, c): 0 without one, −∞ for a padding key or a hidden pair.
  const auto term = [&](int64_t b, int64_t r, int64_t c) -> double {
    if (mask == nullptr) return 0.0;
    if (c >= mask->key_lengths[b]) return -INFINITY;
    return mask->value[(b * s.Nq + r) * s.Nk + c];
  };
  const auto tile_hidden = [&](int64_t b, int64_t i, int64_t j) {
    for (int64_t r = i * BQ; r < std::min(s.Nq, (i + 1) * BQ); ++r)
      for (int64_t c = j * BK; c < std::min(s.Nk, (j + 1) * BK) && c <= last_key(r); ++c)
        if (term(b, r, c) != -INFINITY) return false;
    return true;
  };

  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t hk = h / (s.Hq / s.Hkv);
      const double theta = o.sim_threshold.at(h);
      std::vector<double> km(s.D, 0.0), zero(s.D, 0.0);
      for (int64_t c = 0; c < s.Nk; ++c)
        for (int64_t d = 0; d < s.D; ++d) km[d] += in.k_at(b, hk, c, d) / double(s.Nk);
      std::vector<bool> key_similar(nk);
      for (int64_t j = 0; j < nk; ++j)
        key_similar[j] =
            self_similarity([&](int64_t r, int64_t d) { return double(in.k_at(b, hk, r, d)); },
                            j * BK, std::min(s.Nk, (j + 1) * BK), s.D, km) > theta;
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t first = i * BQ, n = std::min(BQ, s.Nq - first);
        const int64_t lk = last_key(first + n - 1);
        const int64_t allowed = lk < 0 ? 0 : lk / BK + 1;
        const bool query_similar =
            self_similarity([&](int64_t r, int64_t d) { return double(in.q_at(b, h, r, d)); },
                            first, first + n, s.D, zero) > theta;
        uint8_t* row = &dense[((b * s.Hq + h) * nq + i) * nk];
        if (query_similar) {
          // Mean block mass of the sampled rows' exact softmax rows.
          const int64_t count = std::min<int64_t>(o.sample_rows, n);
          std::vector<double> mass(nk, 0.0);
          for (int64_t t = 0; t < count; ++t) {
            // Evenly spaced from the first to the last valid row, rounded half up.
            const double step = count == 1 ? 0.0 : double(n - 1) / double(count - 1);
            const int64_t r = count == 1 ? first + n - 1 : first + int64_t(std::floor(t * step + 0.5));
            const int64_t last = last_key(r);
            if (last < 0) continue;
            std::vector<double> p(last + 1);
            double mx = -INFINITY, z = 0.0;
            for (int64_t c = 0; c <= last; ++c) {
              double dot = 0.0;
              for (int64_t d = 0; d < s.D; ++d)
                dot += double(in.q_at(b, h, r, d)) * in.k_at(b, hk, c, d);
              p[c] = scale * dot + term(b, r, c);
              mx = std::max(mx, p[c]);
            }
            if (mx == -INFINITY) continue;  // the mask hides every key the row sees
            for (double& x : p) z += (x = std::exp(x - mx));
            for (int64_t c = 0; c <= last; ++c) mass[c / BK] += p[c] / z / double(count);
          }
          std::vector<int64_t> cols;
          double total = 0.0;
          for (int64_t j = 0; j < allowed; ++j)
            if (key_similar[j] && !tile_hidden(b, i, j)) cols.push_back(j), total += mass[j];
          if (!cols.empty() && total > 0.0) {
            std::stable_sort(cols.begin(), cols.end(),
                             [&](int64_t a, int64_t c) { return mass[a] > mass[c]; });
            size_t keep = cols.size();
            if (o.select == SelectMode::kTopCdf) {
              double acc = 0.0;
              for (size_t t = 0; t < cols.size(); ++t)
                if ((acc += mass[cols[t]] / total) >= o.select_value.at(h)) {
                  keep = t + 1;
                  break;
                }
            } else {
              const double kappa = o.select_value.at(h);
              const int64_t n_keep = std::max<int64_t>(1, int64_t(std::floor(kappa * allowed)));
              keep = std::min<size_t>(cols.size(), size_t(n_keep));
            }
            for (size_t t = 0; t < keep; ++t) row[cols[t]] = 1;
          }
        }
        for (int64_t j = 0; j < allowed; ++j)
          if (!query_similar || !key_similar[j]) row[j] = 1;
        if (o.attention_sink && allowed > 0) row[0] = 1;
        for (int64_t j = 0; j < allowed && mask != nullptr; ++j)
          if (tile_hidden(b, i, j)) row[j] = 0;
      }
    }
  return dense;
}

HostBlockMask predict(const Inputs& in, const SparseOptions& o, DType dtype = DType::kFloat32,
                      Layout layout = Layout::kHND) {
  const Shape& s = in.s;
  const HostTensor qt = HostTensor::make(in.q, s.B, s.Hq, s.Nq, s.D, dtype, layout, 1);
  const HostTensor kt = HostTensor::make(in.k, s.B, s.Hkv, s.Nk, s.D, dtype, layout, 2);
  HostBlockMask mask(s.B, s.Hq, s.Nq, s.Nk, o.block_q, o.block_k);
  std::fill(mask.counts.begin(), mask.counts.end(), -7);
  const Status st = predict_block_mask(qt.view, kt.view, o, mask.view());
  EXPECT_TRUE(st.is_ok()) << st.message();
  return mask;
}

SparseOptions sampled(float tau, float sim, int rows = 4) {
  SparseOptions o;
  o.estimate = EstimateMode::kSampledRows;
  o.sample_rows = rows;
  o.select_value = {tau};
  o.sim_threshold = {sim};
  return o;
}

void expect_oracle(const Inputs& in, const SparseOptions& o, const std::string& what,
                   DType dtype = DType::kFloat32, Layout layout = Layout::kHND) {
  const HostBlockMask got = predict(in, o, dtype, layout);
  const std::vector<uint8_t> a = got.to_dense(), b = oracle_mask(in, o);
  ASSERT_EQ(a.size(), b.size());
  int64_t differ = 0, kept = 0, allowed_rows = 0;
  for (size_t t = 0; t < a.size(); ++t) differ += a[t] != b[t], kept += b[t];
  for (int32_t c : got.counts) allowed_rows += c > 0;
  const AttentionStats st = mask_stats(got.view(), o.causal, o.causal_align);
  std::printf("[ sampled_rows ] %-34s kept %6ld blocks, sparsity %.3f, differ %ld\n", what.c_str(),
              long(kept), st.sparsity(), long(differ));
  EXPECT_EQ(differ, 0) << what;
  EXPECT_GT(allowed_rows, 0) << what;
}

TEST(SampledRows, MatchesTheOracleOnRandomInputs) {
  Inputs in = from_workload(workloads::random_gaussian(2, 4, 2, 300, 333, 32, 5));
  // Random scores are nearly uniform: an exact near-tie is unlikely at these τ.
  expect_oracle(in, sampled(0.6f, -1.0f), "random GQA 300x333");
  SparseOptions o = sampled(0.8f, -1.0f, 3);
  o.causal = true;
  expect_oracle(in, o, "random causal top-left, 3 rows");
  o.causal_align = CausalAlign::kBottomRight;
  o.attention_sink = true;
  expect_oracle(in, o, "random causal bottom-right, sink");
  o.select = SelectMode::kTopK;
  o.select_value = {0.3f};
  expect_oracle(in, o, "random bottom-right TopK 0.3");
  // Nq > Nk, bottom-right: the first query blocks see no key at all.
  Inputs wide = from_workload(workloads::random_gaussian(1, 2, 1, 333, 150, 16, 6));
  SparseOptions w = sampled(0.7f, -1.0f, 8);
  w.causal = true;
  w.causal_align = CausalAlign::kBottomRight;
  expect_oracle(wide, w, "random Nq>Nk bottom-right, 8 rows");
}

TEST(SampledRows, MatchesTheOracleOnTailBlocksAndRowCounts) {
  // Nq = 2·128 + 2: the tail block has 2 valid rows, fewer than sample_rows = 4 (both are read).
  Inputs in = from_workload(workloads::language_like(1, 4, 1, 258, 64, 7));
  SparseOptions o = sampled(0.9f, -1.0f);
  o.causal = true;
  expect_oracle(in, o, "llm tail of 2 rows, 4 sampled");
  for (int rows : {1, 2, 7, 128}) {
    o.sample_rows = rows;
    expect_oracle(in, o, "llm 258, sample_rows " + std::to_string(rows));
  }
  // Small blocks: block_q 16 with sample_rows = block_q reads every row of every block.
  o.block_q = 16;
  o.block_k = 32;
  o.sample_rows = 16;
  expect_oracle(in, o, "llm blocks 16x32, every row");
}

TEST(SampledRows, MatchesTheOracleOnVideoAndLanguageWorkloads) {
  // Self-similarity thresholds that leave some blocks non-similar (forced on), per head.
  Inputs video = from_workload(workloads::video_grid(1, 3, 4, 8, 10, 64, 8));  // N = 320
  const float sim[3] = {0.3f, 0.6f, -1.0f}, tau[3] = {0.9f, 0.95f, 0.7f};
  SparseOptions o = sampled(0.9f, 0.5f);
  o.sim_threshold = {0.5f, sim};
  o.select_value = {0.9f, tau};
  expect_oracle(video, o, "video 320, per-head sim and tau");
  expect_oracle(video, o, "video 320, NHD", DType::kFloat32, Layout::kNHD);

  Inputs llm = from_workload(workloads::language_like(2, 4, 2, 777, 64, 9));
  SparseOptions c = sampled(0.95f, 0.3f);
  c.causal = true;
  expect_oracle(llm, c, "llm 777 GQA causal sim 0.3");
  c.select = SelectMode::kTopK;
  c.select_value = {0.2f};
  c.attention_sink = true;
  expect_oracle(llm, c, "llm 777 TopK 0.2 sink");

  // 16-bit inputs: the oracle reads the same rounded values.
  for (float& x : llm.q) x = detail::round_to_bf16(x);
  for (float& x : llm.k) x = detail::round_to_bf16(x);
  c = sampled(0.95f, -1.0f);
  c.causal = true;
  expect_oracle(llm, c, "llm 777 bf16 NHD", DType::kBFloat16, Layout::kNHD);
}

// With an attention mask the sampled rows see what Stage 2 computes: additive values join their
// scores, hidden pairs and padding keys get no mass, rows it hides whole add nothing, and tiles
// it hides whole are neither selected nor kept. Batch 0: two packed sequences (block-diagonal)
// with a distance bias; batch 1: random hidden pairs and values in [-2, 2], a run of rows with
// every key hidden, and key padding past 600.
TEST(SampledRows, MatchesTheOracleWithAnAttentionMask) {
  Inputs llm = from_workload(workloads::language_like(2, 4, 2, 777, 64, 11));
  const int64_t N = 777;
  OracleMask m;
  m.value.resize(2 * N * N);
  m.key_lengths = {int32_t(N), 600};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.0f, 1.0f), bias(-2.0f, 2.0f);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < N; ++c) {
      m.value[r * N + c] = (r < 300) == (c < 300) ? -0.02f * float(std::abs(r - c)) : -INFINITY;
      const bool hidden = u(rng) < 0.3f || (r >= 400 && r < 420);
      m.value[(N + r) * N + c] = hidden ? -INFINITY : bias(rng);
    }
  const AttentionMask view = m.view(2, N, N);
  for (bool causal : {true, false})
    for (SelectMode select : {SelectMode::kTopCdf, SelectMode::kTopK}) {
      SparseOptions o = sampled(select == SelectMode::kTopCdf ? 0.9f : 0.2f, 0.3f);
      o.causal = causal;
      o.select = select;
      o.attention_sink = select == SelectMode::kTopK;
      const std::string what = std::string("llm 777 masked ") + (causal ? "causal " : "") +
                               (select == SelectMode::kTopK ? "TopK 0.2 sink" : "TopCdf 0.9");
      const HostTensor qt = HostTensor::make(llm.q, 2, 4, N, 64, DType::kFloat32, Layout::kHND, 1);
      const HostTensor kt = HostTensor::make(llm.k, 2, 2, N, 64, DType::kFloat32, Layout::kHND, 2);
      HostBlockMask got(2, 4, N, N, o.block_q, o.block_k);
      ASSERT_TRUE(predict_block_mask(qt.view, kt.view, kt.view, view, o, got.view()).is_ok()) << what;
      const std::vector<uint8_t> a = got.to_dense(), b = oracle_mask(llm, o, &m);
      int64_t differ = 0, kept = 0;
      for (size_t t = 0; t < a.size(); ++t) differ += a[t] != b[t], kept += b[t];
      // The same call without the mask keeps tiles the mask hides whole (batch 0: the first key
      // block, the heads' sink, for the query blocks of the second sequence, rows 384 on); with
      // it, none is kept.
      HostBlockMask plain(2, 4, N, N, o.block_q, o.block_k);
      ASSERT_TRUE(predict_block_mask(qt.view, kt.view, o, plain.view()).is_ok());
      const std::vector<uint8_t> c = plain.to_dense();
      const int64_t nk = got.view().num_k_blocks(), nq = got.view().num_q_blocks();
      int64_t hidden_kept = 0, hidden_kept_plain = 0;
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t i = 384 / o.block_q; i < nq; ++i) {
          hidden_kept += a[(h * nq + i) * nk + 0];
          hidden_kept_plain += c[(h * nq + i) * nk + 0];
        }
      std::printf("[ sampled_rows ] %-34s kept %6ld blocks, differ %ld, hidden tiles kept %ld "
                  "(without the mask %ld)\n", what.c_str(), long(kept), long(differ),
                  long(hidden_kept), long(hidden_kept_plain));
      EXPECT_EQ(differ, 0) << what;
      EXPECT_EQ(hidden_kept, 0) << what;
      EXPECT_GT(hidden_kept_plain, 0) << what;
      EXPECT_NE(c, a) << what;  // the mask changes the selection
    }
}

// Query block of 16 rows: rows 0-14 match key block 1, row 15 (the one row that sample_rows = 1
// reads: the block's last) matches key block 2; the other key blocks match nothing. D = 4.
TEST(SampledRows, ReadsEvenlySpacedRowsFromTheFirstToTheLast) {
  const int64_t D = 4;
  Inputs in{{1, 1, 1, 16, 64, D}, {}, {}};
  for (int64_t r = 0; r < 16; ++r)
    in.q.insert(in.q.end(), {r < 15 ? 8.0f : 0.0f, r < 15 ? 0.0f : 8.0f, 0, 0});
  const float key_rows[4][4] = {{0, 0, 1, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 0, 1}};
  for (const auto& kr : key_rows)
    for (int t = 0; t < 16; ++t) in.k.insert(in.k.end(), kr, kr + 4);
  SparseOptions o = sampled(0.5f, -1.0f, 1);
  o.block_q = o.block_k = 16;
  o.scale = 1.0f;
  auto kept = [&](const SparseOptions& opts) {
    const HostBlockMask m = predict(in, opts);
    return std::vector<int32_t>(m.indices.begin(), m.indices.begin() + m.counts[0]);
  };
  EXPECT_EQ(kept(o), std::vector<int32_t>({2}));  // row 15 only
  // Rows 0 and 15: blocks 1 and 2 tie at just under half the mass each (ties to the lower j).
  o.sample_rows = 2;
  o.select_value = {0.4f};
  EXPECT_EQ(kept(o), std::vector<int32_t>({1}));
  o.select_value = {0.9f};
  EXPECT_EQ(kept(o), std::vector<int32_t>({1, 2}));
  o.sample_rows = 16;  // every row: 15 to block 1, 1 to block 2
  EXPECT_EQ(kept(o), std::vector<int32_t>({1}));
  o.estimate = EstimateMode::kPooled;  // the block mean points at block 1 too
  EXPECT_EQ(kept(o), std::vector<int32_t>({1}));
}

// Exact per-(query block, key block) attention mass of one head: mean over the block's rows of
// each row's softmax mass on the key block (causal as the workload says).
std::vector<double> true_block_mass(const Inputs& in, int64_t b, int64_t h, bool causal, int BQ,
                                    int BK) {
  const Shape& s = in.s;
  const int64_t hk = h / (s.Hq / s.Hkv), nq = (s.Nq + BQ - 1) / BQ, nk = (s.Nk + BK - 1) / BK;
  const double scale = 1.0 / std::sqrt(double(s.D));
  std::vector<double> mass(nq * nk, 0.0), p(s.Nk);
  for (int64_t r = 0; r < s.Nq; ++r) {
    const int64_t last = causal ? std::min(s.Nk - 1, r) : s.Nk - 1;
    double mx = -INFINITY, z = 0.0;
    for (int64_t c = 0; c <= last; ++c) {
      double dot = 0.0;
      for (int64_t d = 0; d < s.D; ++d) dot += double(in.q_at(b, h, r, d)) * in.k_at(b, hk, c, d);
      mx = std::max(mx, p[c] = scale * dot);
    }
    for (int64_t c = 0; c <= last; ++c) z += (p[c] = std::exp(p[c] - mx));
    const int64_t i = r / BQ, n = std::min<int64_t>(BQ, s.Nq - i * BQ);
    for (int64_t c = 0; c <= last; ++c) mass[i * nk + c / BK] += p[c] / z / double(n);
  }
  return mass;
}

struct Calibration {
  double mean_kept, min_kept, sparsity;
};

Calibration kept_mass(const Inputs& in, const std::vector<std::vector<double>>& truth,
                      const SparseOptions& o) {
  const HostBlockMask m = predict(in, o);
  const int64_t nk = m.view().num_k_blocks();
  double sum = 0.0, mn = 1.0;
  int64_t rows = 0;
  for (int64_t h = 0; h < in.s.Hq; ++h)
    for (int64_t i = 0; i < m.view().num_q_blocks(); ++i) {
      const int64_t row = m.view().row(0, h, i);
      double kept = 0.0;
      for (int32_t t = 0; t < m.counts[row]; ++t)
        kept += truth[h][i * nk + m.indices[row * nk + t]];
      sum += kept;
      mn = std::min(mn, kept);
      ++rows;
    }
  return {sum / double(rows), mn, mask_stats(m.view(), o.causal, o.causal_align).sparsity()};
}

TEST(SampledRows, KeepsTheTrueMassTauAsksForOnLanguageLikeHeads) {
  // Every block similar: the selection alone decides, as in bench/eval/calibration_study.py.
  Inputs in = from_workload(workloads::language_like(1, 4, 2, 2048, 64, 3));
  std::vector<std::vector<double>> truth;
  for (int64_t h = 0; h < in.s.Hq; ++h) truth.push_back(true_block_mass(in, 0, h, true, 128, 64));
  for (float tau : {0.95f, 0.98f}) {
    SparseOptions o = sampled(tau, -1.0f);
    o.causal = true;
    const Calibration rows = kept_mass(in, truth, o);
    o.estimate = EstimateMode::kPooled;
    const Calibration pooled = kept_mass(in, truth, o);
    std::printf(
        "[ calibration ] llm-like 2048 tokens, tau %.2f: kept true mass (mean / min over "
        "query blocks), sparsity: sampled_rows %.4f / %.4f, %.3f; pooled %.4f / %.4f, %.3f\n",
        tau, rows.mean_kept, rows.min_kept, rows.sparsity, pooled.mean_kept, pooled.min_kept,
        pooled.sparsity);
    std::fflush(stdout);
    EXPECT_GE(rows.mean_kept, tau - 0.03) << "tau " << tau;
    EXPECT_GT(rows.sparsity, 0.0) << "tau " << tau;
  }
}

}  // namespace
}  // namespace sparge::test
