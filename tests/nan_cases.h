// NaN / Inf propagation cases shared by the CPU tests (tests/cpu/test_nan.cc) and the GPU tests
// (tests/cuda/test_attention.cc): the rules of docs/method.md "Inputs with NaN/Inf".
// Each case runs a backend twice, on clean inputs and with one NaN (or Inf) written into q, k or
// v, and states for every output row what it must be relative to the clean run: unchanged (bit
// for bit, lse too), all NaN (lse NaN), NaN in one channel only (the rest and lse unchanged),
// zeros with lse = -inf (the row sees no key), or unspecified.
// A backend is a Runner: it computes Stage 2 with a given mask, or both stages when none is given
// (and then reports the predicted mask). Geometry 128 × 64, the one the CUDA kernels compile.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "sparge/sparge.h"

namespace sparge::test::nan {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Logical HND float inputs; the runner converts them to its dtype (NaN and ±Inf survive).
struct Problem {
  int64_t B = 1, Hq = 4, Hkv = 2, Nq = 300, Nk = 300, D = 64;
  SparseOptions opts;
  std::vector<float> q, k, v;

  Problem() {
    opts.pv_threshold.value = kInf;   // no λ skip unless a case asks for it
    opts.sim_threshold.value = 1.0f;  // no block is similar: Stage 1 keeps everything allowed
    q = values(Hq * Nq, 11);
    k = values(Hkv * Nk, 12);
    v = values(Hkv * Nk, 13);
  }
  std::vector<float> values(int64_t rows, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(B * rows * D);
    for (float& e : x) e = dist(rng);
    return x;
  }
  float& at(std::vector<float>& t, int64_t heads, int64_t tokens, int64_t b, int64_t h, int64_t n,
            int64_t d) const {
    return t[((b * heads + h) * tokens + n) * D + d];
  }
  float& q_at(int64_t b, int64_t h, int64_t n, int64_t d) { return at(q, Hq, Nq, b, h, n, d); }
  float& k_at(int64_t b, int64_t h, int64_t n, int64_t d) { return at(k, Hkv, Nk, b, h, n, d); }
  float& v_at(int64_t b, int64_t h, int64_t n, int64_t d) { return at(v, Hkv, Nk, b, h, n, d); }
  // Last key row r sees (−1: none), per docs/method.md "Causality".
  int64_t last_key(int64_t r) const {
    if (!opts.causal) return Nk - 1;
    const int64_t off = opts.causal_align == CausalAlign::kBottomRight ? Nk - Nq : 0;
    return std::min(Nk - 1, r + off);
  }
  int64_t q_block(int64_t r) const { return r / opts.block_q; }
};

struct Outcome {
  Status status;
  std::vector<float> o, lse;  // [B, Hq, Nq, D] and [B, Hq, Nq]
  HostBlockMask mask;         // the mask used (predicted when the runner got none)
};

// Computes `p` with `mask`, or with Stage 1 + 2 when `mask` is null.
using Runner = std::function<Outcome(const Problem& p, const HostBlockMask* mask)>;

inline HostBlockMask dense_mask(const Problem& p) {
  HostBlockMask m(p.B, p.Hq, p.Nq, p.Nk, p.opts.block_q, p.opts.block_k);
  EXPECT_TRUE(fill_dense_mask(m.view(), p.opts.causal, p.opts.causal_align).is_ok());
  return m;
}

enum class Row { kUnchanged, kNaN, kChannelNaN, kZero, kUnspecified };
using RowRule = std::function<Row(int64_t b, int64_t h, int64_t r)>;

// Checks `got` against `clean` row by row; `channel` is the NaN channel of kChannelNaN rows.
// Stops after a few failures so that one broken rule does not print thousands of lines.
inline void expect_rows(const Problem& p, const Outcome& clean, const Outcome& got,
                        const RowRule& rule, int64_t channel, const std::string& what) {
  ASSERT_TRUE(clean.status.is_ok()) << what << ": " << clean.status.message();
  ASSERT_TRUE(got.status.is_ok()) << what << ": " << got.status.message();
  int failures = 0;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t r = 0; r < p.Nq && failures < 5; ++r) {
        const int64_t row = (b * p.Hq + h) * p.Nq + r;
        const float* o = &got.o[row * p.D];
        const float* c = &clean.o[row * p.D];
        const float lse = got.lse[row], lse_clean = clean.lse[row];
        const Row want = rule(b, h, r);
        bool ok = true;
        switch (want) {
          case Row::kUnchanged:
            for (int64_t d = 0; d < p.D; ++d) ok = ok && o[d] == c[d];
            ok = ok && (lse == lse_clean || (std::isnan(lse) && std::isnan(lse_clean)));
            break;
          case Row::kNaN:
            for (int64_t d = 0; d < p.D; ++d) ok = ok && std::isnan(o[d]);
            ok = ok && std::isnan(lse);
            break;
          case Row::kChannelNaN:
            for (int64_t d = 0; d < p.D; ++d)
              ok = ok && (d == channel ? std::isnan(o[d]) : o[d] == c[d]);
            ok = ok && lse == lse_clean;
            break;
          case Row::kZero:
            for (int64_t d = 0; d < p.D; ++d) ok = ok && o[d] == 0.0f;
            ok = ok && lse == -kInf;
            break;
          case Row::kUnspecified:
            break;
        }
        if (!ok) {
          ++failures;
          static const char* const kNames[] = {"unchanged", "all NaN", "NaN in one channel", "zero",
                                               "?"};
          ADD_FAILURE() << what << ": row (b " << b << ", h " << h << ", r " << r << ") should be "
                        << kNames[int(want)] << "; o[0] = " << o[0] << " (clean " << c[0] << "), o["
                        << channel << "] = " << o[channel] << ", lse = " << lse << " (clean "
                        << lse_clean << ")";
        }
      }
}

// Runs clean and poisoned inputs through `run` with the dense mask of the problem.
inline void check_dense(const Runner& run, const Problem& clean, const Problem& poisoned,
                        const RowRule& rule, int64_t channel, const std::string& what) {
  const HostBlockMask mask = dense_mask(clean);
  expect_rows(clean, run(clean, &mask), run(poisoned, &mask), rule, channel, what);
}

// A NaN (or ±Inf making scores ±Inf) in one q row: that row is NaN, every other row is unchanged.
// With a finite λ the NaN row's group computes tiles it might have skipped, so only the rows of
// other query blocks must stay unchanged. Both causal alignments of Nq ≠ Nk and a dense case.
inline void q_row_cases(const Runner& run) {
  for (float bad : {kNaN, kInf, -kInf})
    for (int variant = 0; variant < 4; ++variant) {
      Problem p;
      p.opts.causal = variant == 1 || variant == 2;
      if (variant == 2) {
        p.Nk = 250;
        p.opts.causal_align = CausalAlign::kBottomRight;
        p.k = p.values(p.Hkv * p.Nk, 12);
        p.v = p.values(p.Hkv * p.Nk, 13);
      }
      if (variant == 3) p.opts.pv_threshold.value = 0.0f;  // λ = 0: skip whenever not larger
      Problem bad_p = p;
      const int64_t h = 1, r = 130;
      bad_p.q_at(0, h, r, 5) = bad;
      const bool lambda = variant == 3;
      check_dense(
          run, p, bad_p,
          [&](int64_t, int64_t hh, int64_t rr) {
            if (hh == h && rr == r) return Row::kNaN;
            if (lambda && hh == h && p.q_block(rr) == p.q_block(r)) return Row::kUnspecified;
            return Row::kUnchanged;
          },
          5, "q[130] = " + std::to_string(bad) + ", variant " + std::to_string(variant));
    }
}

// A NaN in k row j of kv head 0: every row of query heads 0 and 1 (GQA group of kv head 0) that
// sees key j is NaN; a row causality hides j from is unchanged, though key j is in a tile it
// computes; kv head 1's query heads are unchanged. With λ = 0 the NaN score must still not be
// skipped (rows of the affected query blocks are then unspecified unless they see j).
inline void k_row_cases(const Runner& run) {
  for (int variant = 0; variant < 4; ++variant) {
    Problem p;
    p.opts.causal = variant >= 1;
    if (variant == 2) {  // Nq < Nk: row r sees keys up to r + 100
      p.opts.causal_align = CausalAlign::kBottomRight;
      p.Nq = 200;
      p.q = p.values(p.Hq * p.Nq, 11);
    }
    const bool lambda = variant == 3;
    if (lambda) p.opts.pv_threshold.value = 0.0f;
    Problem bad = p;
    const int64_t j = 200;
    bad.k_at(0, 0, j, 7) = kNaN;
    check_dense(
        run, p, bad,
        [&](int64_t, int64_t h, int64_t r) {
          if (h >= 2) return Row::kUnchanged;
          if (p.last_key(r) >= j) return Row::kNaN;
          return lambda ? Row::kUnspecified : Row::kUnchanged;
        },
        7, "k[200] = NaN, variant " + std::to_string(variant));
  }
}

// A NaN in v[j][9] of kv head 0 (λ = ∞): rows that see key j are NaN in channel 9 only (0·NaN
// and p·NaN are NaN, the other channels and lse are unchanged). Rows that do not see j but share
// a computed tile with it are unspecified (0·NaN inside the block product, as in SDPA); rows of
// query blocks whose allowed tiles end before j's tile are unchanged.
inline void v_row_cases(const Runner& run) {
  for (bool causal : {false, true}) {
    Problem p;
    p.opts.causal = causal;
    Problem bad = p;
    const int64_t j = 200, channel = 9;
    bad.v_at(0, 0, j, channel) = kNaN;
    const int64_t tile_first_key = j / p.opts.block_k * p.opts.block_k;
    check_dense(
        run, p, bad,
        [&](int64_t, int64_t h, int64_t r) {
          if (h >= 2) return Row::kUnchanged;
          if (p.last_key(r) >= j) return Row::kChannelNaN;
          const int64_t block_last_row = std::min(p.Nq, (p.q_block(r) + 1) * p.opts.block_q) - 1;
          return p.last_key(block_last_row) < tile_first_key ? Row::kUnchanged : Row::kUnspecified;
        },
        channel, causal ? "v[200][9] = NaN, causal" : "v[200][9] = NaN");
  }
}

// Rows that see no key stay zeros with lse = -inf whatever q, k and v hold: an empty mask row
// (query block 1 of head 1) and the rows bottom-right causality leaves without keys (Nq > Nk),
// with NaN in q of such a row, in k and in v of keys other rows of the same tile see.
inline void keyless_row_cases(const Runner& run) {
  for (bool bottom_right : {false, true}) {
    Problem p;
    if (bottom_right) {
      p.opts.causal = true;
      p.opts.causal_align = CausalAlign::kBottomRight;
      p.Nk = 200;  // rows 0..99 see no key
      p.k = p.values(p.Hkv * p.Nk, 12);
      p.v = p.values(p.Hkv * p.Nk, 13);
    }
    Problem bad = p;
    bad.q_at(0, 1, 50, 3) = kNaN;
    bad.q_at(0, 1, 130, 3) = kNaN;
    bad.k_at(0, 0, 10, 4) = kNaN;
    bad.v_at(0, 0, 11, 5) = kNaN;
    HostBlockMask mask = dense_mask(p);
    if (!bottom_right) {  // empty mask row: (b 0, h 1, query block 1)
      std::vector<uint8_t> map = mask.to_dense();
      const int64_t nk = mask.view().num_k_blocks();
      for (int64_t jj = 0; jj < nk; ++jj) map[mask.view().row(0, 1, 1) * nk + jj] = 0;
      mask = HostBlockMask::from_dense(map, p.B, p.Hq, p.Nq, p.Nk, p.opts.block_q, p.opts.block_k);
    }
    const Outcome clean = run(p, &mask), got = run(bad, &mask);
    expect_rows(
        p, clean, got,
        [&](int64_t, int64_t h, int64_t r) {
          if (p.last_key(r) < 0) return Row::kZero;
          if (!bottom_right && h == 1 && p.q_block(r) == 1) return Row::kZero;
          if (h >= 2) return Row::kUnchanged;
          return Row::kUnspecified;  // sees the NaN key (rows with NaN: the cases above)
        },
        0, bottom_right ? "keyless rows, bottom-right causal" : "empty mask row");
  }
}

// Stage 1 + 2: a NaN in q makes its query block non-similar, so its mask row keeps every allowed
// block; a NaN in k makes every block of its kv head non-similar (the key mean is NaN), so the
// rows of its query heads keep everything. Other rows of the mask are those of the clean run,
// other query heads are unchanged, and the output rows other than the NaN ones equal Stage 2 of
// the clean inputs under the mask the poisoned run used.
inline void predicted_cases(const Runner& run) {
  for (bool in_q : {true, false}) {
    Problem p;
    p.Nq = p.Nk = 700;
    p.q = p.values(p.Hq * p.Nq, 21);
    p.k = p.values(p.Hkv * p.Nk, 22);
    p.v = p.values(p.Hkv * p.Nk, 23);
    p.opts.sim_threshold.value = 0.0f;  // every finite block is similar: selection decides
    p.opts.select_value.value = 0.3f;
    Problem bad = p;
    const int64_t h = 1, r = 300;  // query block 2 of head 1; key row 300 of kv head 0
    (in_q ? bad.q_at(0, h, r, 2) : bad.k_at(0, 0, r, 2)) = kNaN;
    const std::string what = in_q ? "predicted, q[300] = NaN" : "predicted, k[300] = NaN";

    const Outcome clean = run(p, nullptr), got = run(bad, nullptr);
    ASSERT_TRUE(clean.status.is_ok()) << what << ": " << clean.status.message();
    ASSERT_TRUE(got.status.is_ok()) << what << ": " << got.status.message();
    // Mask rows: forced dense where the NaN is, as in the clean run elsewhere.
    const HostBlockMask full = dense_mask(p);
    const BlockMask &m0 = clean.mask.view(), &m1 = got.mask.view(), &mf = full.view();
    int64_t sparse_rows = 0;
    for (int64_t hh = 0; hh < p.Hq; ++hh)
      for (int64_t i = 0; i < m0.num_q_blocks(); ++i) {
        const int64_t row = m0.row(0, hh, i);
        const bool forced = in_q ? (hh == h && i == p.q_block(r)) : hh < 2;
        const BlockMask& want = forced ? mf : m0;
        sparse_rows += m0.counts[row] < mf.counts[row];
        EXPECT_EQ(m1.counts[row], want.counts[row])
            << what << ": mask row (h " << hh << ", i " << i << ")";
        for (int32_t t = 0; t < std::min(m1.counts[row], want.counts[row]); ++t)
          EXPECT_EQ(m1.indices[row * m1.num_k_blocks() + t],
                    want.indices[row * mf.num_k_blocks() + t])
              << what << ": mask row (h " << hh << ", i " << i << ") entry " << t;
      }
    EXPECT_GT(sparse_rows, 0) << what
                              << ": the clean mask must be sparse for the case to test Stage 1";

    const Outcome same_mask = run(p, &got.mask);  // clean inputs, the poisoned run's mask
    expect_rows(
        p, same_mask, got,
        [&](int64_t, int64_t hh, int64_t rr) {
          if (in_q) return hh == h && rr == r ? Row::kNaN : Row::kUnchanged;
          return hh < 2 ? Row::kNaN : Row::kUnchanged;  // non-causal: every row sees key 300
        },
        2, what);
    expect_rows(
        p, clean, got,
        [&](int64_t, int64_t hh, int64_t) { return hh >= 2 ? Row::kUnchanged : Row::kUnspecified; },
        2, what + " (other heads against the clean run)");
  }
}

}  // namespace sparge::test::nan
