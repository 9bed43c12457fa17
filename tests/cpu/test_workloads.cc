// Workload generators (src/workloads/): determinism, shapes, the statistics docs/workloads.md
// promises, and the end-to-end property of the demo: on a video grid in Hilbert order, the
// default options skip at least half of the tiles with rel L1 <= 0.05 against float64 dense
// attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/fp_convert.h"
#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "test_util.h"

namespace sparge {
namespace {

using workloads::Workload;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
}

// Softmax row of query `i` of query head `h` (batch 0) over all keys (causal: keys <= i).
std::vector<double> attention_row(const Workload& w, int64_t h, int64_t i, bool causal) {
  const int64_t d = w.head_dim, kvh = h / (w.heads_q / w.heads_kv);
  const float* q = &w.q[static_cast<size_t>((h * w.seq_q + i) * d)];
  const float* k = &w.k[static_cast<size_t>(kvh * w.seq_k * d)];
  const int64_t keys = causal ? i + 1 : w.seq_k;
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> p(static_cast<size_t>(keys));
  double mx = -std::numeric_limits<double>::infinity(), z = 0;
  for (int64_t j = 0; j < keys; ++j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += double(q[c]) * k[j * d + c];
    p[j] = s * scale;
    mx = std::max(mx, p[j]);
  }
  for (double& x : p) z += (x = std::exp(x - mx));
  for (double& x : p) x /= z;
  return p;
}

double entropy(const std::vector<double>& p) {
  double e = 0;
  for (double x : p)
    if (x > 0) e -= x * std::log(x);
  return e;
}

TEST(Workloads, SameSeedSameBitsOtherSeedOtherBits) {
  const auto gen = [](uint64_t seed) {
    return std::vector<Workload>{workloads::random_gaussian(1, 2, 1, 33, 40, 16, seed),
                                 workloads::video_grid(1, 2, 2, 5, 6, 16, seed),
                                 workloads::language_like(1, 4, 2, 200, 16, seed)};
  };
  const std::vector<Workload> a = gen(7), b = gen(7), c = gen(8);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(same_bits(a[i].q, b[i].q) && same_bits(a[i].k, b[i].k) && same_bits(a[i].v, b[i].v))
        << a[i].name;
    EXPECT_FALSE(same_bits(a[i].q, c[i].q)) << a[i].name;
    EXPECT_FALSE(same_bits(a[i].k, c[i].k)) << a[i].name;
    EXPECT_FALSE(same_bits(a[i].v, c[i].v)) << a[i].name;
  }
}

TEST(Workloads, ShapesAndMetadata) {
  Workload r = workloads::random_gaussian(2, 4, 2, 17, 29, 8, 1);
  EXPECT_EQ(r.q.size(), size_t(2 * 4 * 17 * 8));
  EXPECT_EQ(r.k.size(), size_t(2 * 2 * 29 * 8));
  EXPECT_EQ(r.v.size(), r.k.size());
  EXPECT_FALSE(r.causal);
  const TensorView qv = r.q_view();
  EXPECT_EQ(qv.tokens, 17);
  EXPECT_EQ(qv.heads, 4);
  EXPECT_EQ(r.k_view().tokens, 29);

  Workload v = workloads::video_grid(2, 3, 3, 4, 5, 33, 1);  // odd head_dim works too
  EXPECT_EQ(v.seq_q, 60);
  EXPECT_EQ(v.seq_k, 60);
  EXPECT_EQ(v.heads_kv, 3);
  EXPECT_EQ(v.grid_t * v.grid_h * v.grid_w, 60);
  EXPECT_EQ(v.q.size(), size_t(2 * 3 * 60 * 33));
  EXPECT_EQ(v.name, "video-grid");

  Workload l = workloads::language_like(1, 6, 2, 100, 32, 1);
  EXPECT_TRUE(l.causal);
  EXPECT_EQ(l.q.size(), size_t(6 * 100 * 32));
  EXPECT_EQ(l.k.size(), size_t(2 * 100 * 32));
  for (const Workload* w : {&r, &v, &l})
    EXPECT_TRUE(all_finite(w->q) && all_finite(w->k) && all_finite(w->v)) << w->name;
}

TEST(Workloads, RandomGaussianMoments) {
  Workload r = workloads::random_gaussian(1, 1, 1, 4096, 4096, 16, 5);
  double sum = 0, sq = 0, fourth = 0;
  for (float x : r.q) {
    sum += x;
    sq += double(x) * x;
    fourth += double(x) * x * x * x;
  }
  const double n = double(r.q.size()), mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(var, 1.0, 0.03);
  EXPECT_NEAR(fourth / n, 3.0, 0.15);  // Gaussian kurtosis, not a uniform's 1.8
}

TEST(Workloads, HalfBitsMatchTheConversions) {
  const std::vector<float> x = {1.0f, -2.5f, 0.0f, 65504.0f, 1e-8f, 3.14159f};
  const std::vector<uint16_t> h = workloads::to_half_bits(x, DType::kFloat16);
  const std::vector<uint16_t> b = workloads::to_half_bits(x, DType::kBFloat16);
  ASSERT_EQ(h.size(), x.size());
  EXPECT_EQ(h[0], 0x3C00);
  EXPECT_EQ(b[0], 0x3F80);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(h[i], detail::float_to_half_bits(x[i]));
    EXPECT_EQ(b[i], detail::float_to_bf16_bits(x[i]));
  }
}

TEST(Workloads, VideoAttentionIsLocalButNotOneHot) {
  Workload w = workloads::video_grid(1, 4, 6, 12, 12, 64, 0);
  const int64_t plane = w.grid_h * w.grid_w;
  std::vector<double> local_mass;
  for (int64_t h = 0; h < w.heads_q; ++h) {
    double local = 0, ent = 0;
    int rows = 0;
    for (int64_t i = 0; i < w.seq_q; i += 13, ++rows) {
      const std::vector<double> p = attention_row(w, h, i, false);
      ent += entropy(p);
      for (int64_t j = 0; j < w.seq_k; ++j) {
        const bool near = std::llabs(i / plane - j / plane) <= 2 &&
                          std::llabs(i / w.grid_w % w.grid_h - j / w.grid_w % w.grid_h) <= 2 &&
                          std::llabs(i % w.grid_w - j % w.grid_w) <= 2;
        if (near) local += p[j];
      }
    }
    local /= rows;
    ent /= rows;
    std::printf("video head %lld: mass within 2 cells %.3f, entropy %.2f nats\n",
                static_cast<long long>(h), local, ent);
    // The 5x5x5 neighbourhood is 125 of 864 tokens (14%) but holds far more of the mass.
    EXPECT_GT(local, 0.35) << "head " << h;
    EXPECT_GT(ent, 2.0) << "head " << h;
    local_mass.push_back(local);
  }
  const auto [lo, hi] = std::minmax_element(local_mass.begin(), local_mass.end());
  EXPECT_GT(*hi - *lo, 0.1) << "heads should differ in locality width";
}

TEST(Workloads, LanguageSinksWindowsAndRetrieval) {
  const int64_t n = 1024;
  Workload w = workloads::language_like(1, 4, 2, n, 64, 0);
  int far_lookups = 0;
  for (int64_t h = 0; h < w.heads_q; ++h) {
    double sink = 0, window = 0;
    int rows = 0;
    for (int64_t i = 64; i < n; ++i) {
      const std::vector<double> p = attention_row(w, h, i, true);
      const int64_t best = std::max_element(p.begin() + 4, p.end()) - p.begin();
      if (i - best > n / 4 && p[best] > 0.3) ++far_lookups;
      if (i % 7 != 0) continue;
      ++rows;
      for (int64_t j = 0; j < 4; ++j) sink += p[j];
      for (int64_t j = std::max<int64_t>(4, i - 63); j <= i; ++j) window += p[j];
    }
    sink /= rows;
    window /= rows;
    std::printf("llm head %lld: sink mass %.3f, last-64 window mass %.3f\n",
                static_cast<long long>(h), sink, window);
    EXPECT_GT(sink, 0.1) << "head " << h;    // 4 of ~500 keys
    EXPECT_GT(window, 0.2) << "head " << h;  // 64 of ~500 keys
  }
  // Each kv head has n / 512 = 2 retrieval keys, each read by 16 consecutive queries of both of
  // its query heads: up to 128 far lookups; ask for a quarter, as a key's own noise can win.
  EXPECT_GE(far_lookups, 32);
}

// Runs default-option sparse attention on `w` in the given token order and returns
// {sparsity, rel L1 vs float64 dense}.
std::pair<double, double> sparse_vs_dense(Workload& w, const std::vector<int64_t>& order) {
  const int64_t n = w.seq_q;
  std::vector<float> q(w.q.size()), k(w.k.size()), v(w.v.size());
  const auto permute = [&](Workload& src, std::vector<float>& from, std::vector<float>& to,
                           int64_t heads) {
    const TensorView a = TensorView::contiguous(from.data(), DType::kFloat32, Layout::kHND,
                                                src.batch, heads, n, src.head_dim);
    const TensorView b = TensorView::contiguous(to.data(), DType::kFloat32, Layout::kHND, src.batch,
                                                heads, n, src.head_dim);
    EXPECT_TRUE(permute_tokens(a, b, order.data(), n, 0, false));
  };
  permute(w, w.q, q, w.heads_q);
  permute(w, w.k, k, w.heads_kv);
  permute(w, w.v, v, w.heads_kv);
  const auto view = [&](std::vector<float>& x, int64_t heads) {
    return TensorView::contiguous(x.data(), DType::kFloat32, Layout::kHND, w.batch, heads, n,
                                  w.head_dim);
  };
  std::vector<float> o(q.size(), std::numeric_limits<float>::quiet_NaN());
  HostBlockMask mask(w.batch, w.heads_q, n, n, 128, 64);
  // SpargeAttn's rule (the pooled map behind the similarity gate at 0.6), whose masks the Hilbert
  // order is there for; the defaults' sampled rows and lower gate find the sparsity in either
  // order.
  SparseOptions opts;
  opts.estimate = EstimateMode::kPooled;
  opts.sim_threshold.value = 0.6f;
  EXPECT_TRUE(sparse_attention(view(q, w.heads_q), view(k, w.heads_kv), view(v, w.heads_kv), opts,
                               view(o, w.heads_q), {}, {}, &mask.view()));
  const std::vector<double> ref = cpu::dense_attention_reference(
      view(q, w.heads_q), view(k, w.heads_kv), view(v, w.heads_kv),
      static_cast<float>(1.0 / std::sqrt(double(w.head_dim))), false, CausalAlign::kTopLeft);
  return {mask_stats(mask.view(), false, CausalAlign::kTopLeft).sparsity(),
          measure::rel_l1(o, ref)};
}

TEST(Workloads, VideoDemoPropertyHoldsWithHilbertOrder) {
  Workload w = workloads::video_grid(1, 4, 8, 16, 16, 64, 0);
  std::vector<int64_t> row_major(static_cast<size_t>(w.seq_q));
  for (int64_t i = 0; i < w.seq_q; ++i) row_major[i] = i;
  const auto [sparsity, err] = sparse_vs_dense(w, hilbert_order(8, 16, 16));
  const auto [sparsity_rm, err_rm] = sparse_vs_dense(w, row_major);
  std::printf(
      "video 8x16x16: Hilbert sparsity %.3f rel L1 %.4f; row-major sparsity %.3f rel L1 %.4f\n",
      sparsity, err, sparsity_rm, err_rm);
  EXPECT_GE(sparsity, 0.5);
  EXPECT_LE(err, 0.05);
  EXPECT_GT(sparsity, sparsity_rm + 0.2) << "Hilbert order should make far more tiles skippable";
}

}  // namespace
}  // namespace sparge
