// Stage 1 with target_error (docs/method.md, "The error target"):
//  - the measured rel L1 of each head against the dense reference stays within the target on the
//    large majority of heads of the video-like (natural and Hilbert order), language-like and
//    random workloads, at targets 0.02 and 0.05, and the stats carry the chosen τ and estimate;
//  - a target far below any dropped tile's error keeps every allowed tile (output = dense);
//  - sparsity does not decrease when the target grows;
//  - the reference and the fast CPU backend run the same mask;
//  - validation: range, TopK, predict_block_mask without v, the λ floor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "common/error_target.h"
#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"

namespace sparge::test {
namespace {

struct HeadResult {
  std::vector<double> rel_l1, sparsity, tau, estimate;
  std::vector<int64_t> forced;
};

// The double dense reference of w (the slow part of these tests: computed once per workload).
std::vector<double> reference(workloads::Workload& w) {
  const float scale = 1.0f / std::sqrt(float(w.head_dim));
  return cpu::dense_attention_reference(w.q_view(), w.k_view(), w.v_view(), scale, w.causal,
                                        CausalAlign::kTopLeft);
}

// Both stages on the CPU with `opts`, per query head of batch entry 0: measured rel L1 against
// `ref` (NaN without one), tile sparsity and the Stage-1 stats.
HeadResult run(workloads::Workload& w, SparseOptions opts, const std::vector<double>* ref,
               Backend backend = Backend::kCpuFast, HostBlockMask* mask_out = nullptr) {
  opts.causal = w.causal;
  const int64_t Hq = w.heads_q, B = w.batch;
  std::vector<float> o(w.q.size(), NAN);
  const TensorView ov = TensorView::contiguous(o.data(), DType::kFloat32, Layout::kHND, B, Hq,
                                               w.seq_q, w.head_dim);
  HostBlockMask mask(B, Hq, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  std::vector<float> tau(B * Hq), est(B * Hq);
  std::vector<int64_t> forced(B * Hq);
  AttentionExtras extras;
  extras.stage1.select_value = tau.data();
  extras.stage1.error_estimate = est.data();
  extras.stage1.forced_tiles = forced.data();
  ExecContext ctx;
  ctx.backend = backend;
  check(sparse_attention(w.q_view(), w.k_view(), w.v_view(), opts, ov, extras, ctx,
                         &mask.view()));
  HeadResult r;
  const int64_t per_head = w.seq_q * w.head_dim;
  const std::vector<uint8_t> dense = mask.to_dense();
  HostBlockMask full(B, Hq, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  check(fill_dense_mask(full.view(), opts));
  const std::vector<uint8_t> all = full.to_dense();
  const int64_t tiles = int64_t(dense.size()) / (B * Hq);
  for (int64_t h = 0; h < Hq; ++h) {
    double num = ref ? 0.0 : NAN, den = 0.0;
    for (int64_t e = h * per_head; ref && e < (h + 1) * per_head; ++e) {
      num += std::fabs(double(o[e]) - (*ref)[e]);
      den += std::fabs((*ref)[e]);
    }
    int64_t kept = 0, allowed = 0;
    for (int64_t t = h * tiles; t < (h + 1) * tiles; ++t) {
      kept += dense[t];
      allowed += all[t];
    }
    r.rel_l1.push_back(num / den);
    r.sparsity.push_back(1.0 - double(kept) / double(allowed));
    r.tau.push_back(tau[h]);
    r.estimate.push_back(est[h]);
    r.forced.push_back(forced[h]);
  }
  if (mask_out) *mask_out = mask;
  return r;
}

struct Case {
  std::string name;
  workloads::Workload w;
  std::vector<double> ref;  // filled by cases_with_reference()
};


std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"video", workloads::video_grid(1, 4, 8, 16, 16, 64, 3)});
  Case hilbert{"video-hilbert", workloads::video_grid(1, 4, 8, 16, 16, 64, 4)};
  // Hilbert order of the grid: tokens along the curve, q, k and v alike.
  const std::vector<int64_t> order = hilbert_order(8, 16, 16);
  for (std::vector<float>* t : {&hilbert.w.q, &hilbert.w.k, &hilbert.w.v}) {
    std::vector<float> src = *t;
    const int64_t D = hilbert.w.head_dim, N = int64_t(order.size());
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t d = 0; d < D; ++d)
          (*t)[(h * N + i) * D + d] = src[(h * N + order[i]) * D + d];
  }
  c.push_back(std::move(hilbert));
  c.push_back({"llm", workloads::language_like(1, 4, 2, 2048, 64, 5)});
  c.push_back({"random", workloads::random_gaussian(1, 4, 4, 1024, 1024, 64, 6)});
  return c;
}

// cases() with their references, built once per process (the two tests that measure errors
// share them; the references are the slow part).
std::vector<Case>& cases_with_reference() {
  static std::vector<Case> c = [] {
    std::vector<Case> all = cases();
    for (Case& x : all) x.ref = reference(x.w);
    return all;
  }();
  return c;
}

SparseOptions target(double t) {
  SparseOptions o;
  o.target_error = float(t);
  o.sim_threshold = HeadParam{-1.0f};  // every block similar: the selection alone decides
  return o;
}

TEST(ErrorTarget, MeasuredErrorWithinTargetOnMostHeads) {
  std::vector<Case>& all = cases_with_reference();
  for (double t : {0.02, 0.05}) {
    int heads = 0, within = 0;
    for (Case& c : all) {
      const HeadResult r = run(c.w, target(t), &c.ref);
      for (size_t h = 0; h < r.rel_l1.size(); ++h) {
        std::printf("target %.2f %-13s head %zu: tau %.4f est %.4f measured %.4f sparsity %.3f\n",
                    t, c.name.c_str(), h, r.tau[h], r.estimate[h], r.rel_l1[h], r.sparsity[h]);
        ++heads;
        within += r.rel_l1[h] <= t;
        // Not too far under either: the estimate is not an empty promise met by keeping all.
        EXPECT_LE(r.rel_l1[h], 1.5 * t) << c.name << " head " << h;
        EXPECT_FALSE(std::isnan(r.estimate[h]));
        EXPECT_LE(r.estimate[h] * detail::kErrorTargetMargin, t + 1e-6);
      }
    }
    EXPECT_GE(within, int(std::ceil(0.95 * heads))) << "target " << t;
  }
}

// The selection is not empty: on the structured workloads the target buys sparsity.
TEST(ErrorTarget, StructuredWorkloadsGetSparse) {
  for (Case& c : cases()) {
    if (c.name == "random") continue;
    const HeadResult r = run(c.w, target(0.05), nullptr);
    for (size_t h = 0; h < r.sparsity.size(); ++h)
      EXPECT_GT(r.sparsity[h], 0.3) << c.name << " head " << h;
  }
}

// A target below what dropping any tile costs keeps every allowed tile: output = dense.
TEST(ErrorTarget, TinyTargetKeepsEverything) {
  for (Case& c : cases_with_reference()) {
    const HeadResult r = run(c.w, target(1e-7), &c.ref);
    for (size_t h = 0; h < r.sparsity.size(); ++h) {
      EXPECT_EQ(r.sparsity[h], 0.0) << c.name << " head " << h;
      EXPECT_LT(r.rel_l1[h], 1e-5) << c.name << " head " << h;
    }
  }
}

// The estimate is, by definition, the rel L1 of the chosen mask's output on the sampled rows
// (16 evenly spaced rows per query block, every block selectable with sim -1). Stage 2's output
// on those rows is that renormalized output, so the two agree to rounding: a check of the
// one-pass candidate sums against the definition.
TEST(ErrorTarget, EstimateIsTheErrorOnTheSampledRows) {
  struct DefinitionCase {
    workloads::Workload w;
    SparseOptions o;
  };
  std::vector<DefinitionCase> cases;
  cases.push_back({workloads::language_like(1, 2, 1, 1000, 64, 11), target(0.05)});
  cases.push_back({workloads::video_grid(1, 2, 4, 8, 16, 64, 12), target(0.05)});
  // Odd lengths, GQA, a head dim that is no multiple of 8, bottom-right causality, 32 rows per
  // block; random inputs only drop tiles at a large target.
  cases.push_back({workloads::random_gaussian(1, 4, 2, 333, 517, 20, 14), target(0.3)});
  cases.back().w.causal = true;
  cases.back().o.causal_align = CausalAlign::kBottomRight;
  cases.back().o.sample_rows = 32;
  for (DefinitionCase& c : cases) {
    workloads::Workload& w = c.w;
    SparseOptions& o = c.o;
    o.causal = w.causal;
    const std::vector<double> ref = cpu::dense_attention_reference(
        w.q_view(), w.k_view(), w.v_view(), 1.0f / std::sqrt(float(w.head_dim)), o.causal,
        o.causal_align);
    std::vector<float> out(w.q.size());
    const TensorView ov = TensorView::contiguous(out.data(), DType::kFloat32, Layout::kHND, 1,
                                                 w.heads_q, w.seq_q, w.head_dim);
    std::vector<float> est(w.heads_q);
    AttentionExtras extras;
    extras.stage1.error_estimate = est.data();
    check(sparse_attention(w.q_view(), w.k_view(), w.v_view(), o, ov, extras));
    const int rows = std::max(o.sample_rows, detail::kErrorTargetMinRows);
    for (int64_t h = 0; h < w.heads_q; ++h) {
      double num = 0.0, den = 0.0;
      for (int64_t i = 0; i * o.block_q < w.seq_q; ++i) {
        const int64_t first = i * o.block_q, n = std::min<int64_t>(o.block_q, w.seq_q - first);
        const int64_t count = detail::sampled_row_count(rows, n);
        for (int64_t s = 0; s < count; ++s) {
          const int64_t r = detail::sampled_row(first, n, count, s);
          for (int64_t d = 0; d < w.head_dim; ++d) {
            const int64_t e = (h * w.seq_q + r) * w.head_dim + d;
            num += std::fabs(double(out[e]) - ref[e]);
            den += std::fabs(ref[e]);
          }
        }
      }
      std::printf("%s head %ld: estimate %.6f, sampled rows' error %.6f\n", w.name.c_str(),
                  long(h), est[h], num / den);
      EXPECT_GT(est[h], 0.005) << w.name << " head " << h;  // something was dropped
      EXPECT_NEAR(est[h], num / den, 1e-4 * est[h] + 1e-6) << w.name << " head " << h;
    }
  }
}

// A NaN in v makes the estimate NaN, and a NaN never passes: every allowed tile is kept.
TEST(ErrorTarget, NanInputKeepsEveryTile) {
  workloads::Workload w = workloads::video_grid(1, 2, 4, 8, 16, 64, 13);
  w.v[(0 * w.seq_k + 300) * w.head_dim + 5] = NAN;  // kv head 0 (query head 0), key 300
  const HeadResult r = run(w, target(0.05), nullptr);
  EXPECT_EQ(r.sparsity[0], 0.0);
  EXPECT_EQ(r.tau[0], 1.0f);
  EXPECT_GT(r.sparsity[1], 0.3);  // the other head is untouched
}

// Larger targets never keep more tiles, head by head.
TEST(ErrorTarget, SparsityGrowsWithTheTarget) {
  for (Case& c : cases()) {
    std::vector<double> last(c.w.heads_q, -1.0);
    for (double t : {0.001, 0.005, 0.02, 0.05, 0.1, 0.3}) {
      const HeadResult r = run(c.w, target(t), nullptr);
      for (size_t h = 0; h < last.size(); ++h) {
        EXPECT_GE(r.sparsity[h], last[h]) << c.name << " head " << h << " target " << t;
        last[h] = r.sparsity[h];
      }
    }
  }
}

// The exact reference and the fast backend share Stage 1: the same mask, the same stats.
TEST(ErrorTarget, ReferenceAndFastBackendAgree) {
  workloads::Workload w = workloads::language_like(1, 4, 2, 1000, 64, 9);
  HostBlockMask a, b;
  const std::vector<double> ref = reference(w);
  const HeadResult ra = run(w, target(0.02), &ref, Backend::kReference, &a);
  const HeadResult rb = run(w, target(0.02), &ref, Backend::kCpuFast, &b);
  EXPECT_EQ(a.to_dense(), b.to_dense());
  EXPECT_EQ(ra.tau, rb.tau);
  EXPECT_EQ(ra.estimate, rb.estimate);
  for (size_t h = 0; h < ra.rel_l1.size(); ++h) EXPECT_NEAR(ra.rel_l1[h], rb.rel_l1[h], 1e-4);
}

// With the gate on (the default sim_threshold), the stats count the tiles it forced, and the
// random workload (no block similar to itself) is forced whole.
TEST(ErrorTarget, StatsCountTilesTheGateForced) {
  workloads::Workload w = workloads::random_gaussian(1, 2, 2, 512, 512, 64, 1);
  SparseOptions o;
  const HeadResult r = run(w, o, nullptr);
  for (size_t h = 0; h < r.forced.size(); ++h) {
    EXPECT_EQ(r.forced[h], 4 * 8) << "head " << h;  // every one of the 4 x 8 tiles
    EXPECT_EQ(r.tau[h], o.select_value.value);
    EXPECT_TRUE(std::isnan(r.estimate[h]));
  }
  o.sim_threshold = HeadParam{-1.0f};
  const HeadResult none = run(w, o, nullptr);
  for (int64_t f : none.forced) EXPECT_EQ(f, 0);
}

TEST(ErrorTarget, Validation) {
  workloads::Workload w = workloads::random_gaussian(1, 2, 2, 256, 256, 64, 1);
  HostBlockMask mask(1, 2, 256, 256, 128, 64);
  for (float bad : {-0.1f, 1.0f, 2.0f, NAN}) {
    SparseOptions o;
    o.target_error = bad;
    const Status st = predict_block_mask(w.q_view(), w.k_view(), w.v_view(), o, mask.view());
    EXPECT_FALSE(st.is_ok()) << bad;
    EXPECT_NE(st.message().find("SparseOptions.target_error"), std::string::npos) << st.message();
  }
  SparseOptions o;
  o.target_error = 0.02f;
  Status st = predict_block_mask(w.q_view(), w.k_view(), o, mask.view());
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("needs v"), std::string::npos) << st.message();
  o.select = SelectMode::kTopK;
  o.select_value = HeadParam{0.5f};
  st = predict_block_mask(w.q_view(), w.k_view(), w.v_view(), o, mask.view());
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("kTopK"), std::string::npos) << st.message();
}

// λ is raised to the floor log2(Nk / target) + 10 in this mode: with λ = 0 (which would skip
// every tile below the running max) the output still meets the target.
TEST(ErrorTarget, SmallPvThresholdIsRaised) {
  workloads::Workload w = workloads::video_grid(1, 2, 4, 16, 16, 64, 2);
  SparseOptions o = target(0.002);
  o.pv_threshold = HeadParam{0.0f};
  const std::vector<double> ref = reference(w);
  const HeadResult r = run(w, o, &ref);
  for (double e : r.rel_l1) EXPECT_LE(e, 0.003);
  SparseOptions plain;
  plain.pv_threshold = HeadParam{0.0f};
  plain.sim_threshold = HeadParam{-1.0f};
  plain.select_value = HeadParam{1.0f};
  const HeadResult skipped = run(w, plain, &ref);  // the same λ without the mode drops real mass
  for (double e : skipped.rel_l1) EXPECT_GT(e, 0.01);
}

}  // namespace
}  // namespace sparge::test
