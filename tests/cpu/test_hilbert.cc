// Hilbert ordering (src/common/hilbert.cc) and token permutation (src/cpu/permute.cc).
//
// Properties checked for every grid listed: the order is a bijection of [0, T·H·W), every two
// consecutive tokens are grid neighbours (Manhattan distance exactly 1), inverse_order inverts
// it. Permuting then un-permuting through the public permute_tokens is the identity, bit for
// bit, for fp32/bf16 and HND/NHD with a text prefix that stays in place. On the video workload
// the Hilbert order makes Q/K blocks more self-similar than row-major order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "test_util.h"

namespace sparge {
namespace {

struct Grid {
  int64_t t, h, w;
};

std::string grid_name(const Grid& g) {
  return std::to_string(g.t) + "x" + std::to_string(g.h) + "x" + std::to_string(g.w);
}

// Empty string when `order` is a bijection whose consecutive cells are neighbours, else why not.
std::string check_curve(const Grid& g, const std::vector<int64_t>& order) {
  const int64_t n = g.t * g.h * g.w;
  if (static_cast<int64_t>(order.size()) != n)
    return "size " + std::to_string(order.size()) + " != " + std::to_string(n);
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t cell = order[i];
    if (cell < 0 || cell >= n || seen[cell])
      return "index " + std::to_string(i) + " repeats or is out of range";
    seen[cell] = 1;
  }
  for (int64_t i = 1; i < n; ++i) {
    const int64_t a = order[i - 1], b = order[i], plane = g.h * g.w;
    const int64_t dist = std::llabs(a / plane - b / plane) +
                         std::llabs(a / g.w % g.h - b / g.w % g.h) + std::llabs(a % g.w - b % g.w);
    if (dist != 1)
      return "step " + std::to_string(i) + " has Manhattan distance " + std::to_string(dist);
  }
  return "";
}

TEST(Hilbert, EveryGridUpTo9IsANeighbourWalk) {
  for (int64_t t = 1; t <= 9; ++t)
    for (int64_t h = 1; h <= 9; ++h)
      for (int64_t w = 1; w <= 9; ++w) {
        const Grid g{t, h, w};
        EXPECT_EQ(check_curve(g, hilbert_order(t, h, w)), "") << grid_name(g);
      }
}

TEST(Hilbert, LargerAndDegenerateGrids) {
  const Grid grids[] = {{13, 30, 45}, {1, 1, 1000}, {1, 97, 89}, {17, 1, 33},  {2, 15, 2},
                        {99, 3, 5},   {16, 45, 80}, {7, 61, 1},  {21, 16, 16}, {1, 1, 1}};
  for (const Grid& g : grids)
    EXPECT_EQ(check_curve(g, hilbert_order(g.t, g.h, g.w)), "") << grid_name(g);
}

TEST(Hilbert, NonPositiveSizesGiveAnEmptyOrder) {
  EXPECT_TRUE(hilbert_order(0, 4, 4).empty());
  EXPECT_TRUE(hilbert_order(4, -1, 4).empty());
}

TEST(Hilbert, PowerOfTwoCubeRunsAreCubes) {
  // On a 16³ grid a Hilbert curve visits each aligned 4×4×4 sub-cube in one run of 64 tokens;
  // a row-major order's 64-runs are 1×4×16 slabs.
  const std::vector<int64_t> order = hilbert_order(16, 16, 16);
  for (size_t start = 0; start < order.size(); start += 64) {
    int64_t lo[3] = {99, 99, 99}, hi[3] = {-1, -1, -1};
    for (size_t i = start; i < start + 64; ++i) {
      const int64_t c[3] = {order[i] / 256, order[i] / 16 % 16, order[i] % 16};
      for (int a = 0; a < 3; ++a) {
        lo[a] = std::min(lo[a], c[a]);
        hi[a] = std::max(hi[a], c[a]);
      }
    }
    for (int a = 0; a < 3; ++a) EXPECT_EQ(hi[a] - lo[a], 3) << "run at " << start << " axis " << a;
  }
}

TEST(Hilbert, InverseOrderInverts) {
  const std::vector<int64_t> order = hilbert_order(5, 7, 11);
  const std::vector<int64_t> inv = inverse_order(order);
  ASSERT_EQ(inv.size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(inv[order[i]], static_cast<int64_t>(i));
    EXPECT_EQ(order[inv[i]], static_cast<int64_t>(i));
  }
}

struct PermuteCase {
  DType dtype;
  Layout layout;
};

class PermuteRoundTrip : public ::testing::TestWithParam<PermuteCase> {};

TEST_P(PermuteRoundTrip, ForwardMovesTokensAndInverseRestores) {
  const PermuteCase pc = GetParam();
  const Grid g{3, 5, 6};
  const int64_t prefix = 7, suffix = 2, grid_tokens = g.t * g.h * g.w;
  const int64_t B = 2, H = 3, N = prefix + grid_tokens + suffix, D = 8;
  std::vector<float> data(static_cast<size_t>(B * H * N * D));
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i % 251) * 0.25f - 30.0f;
  const test::HostTensor in = test::HostTensor::make(data, B, H, N, D, pc.dtype, pc.layout);
  test::HostTensor mid = test::HostTensor::poisoned(B, H, N, D, pc.dtype, pc.layout);
  test::HostTensor back = test::HostTensor::poisoned(B, H, N, D, pc.dtype, pc.layout);
  const std::vector<int64_t> order = hilbert_order(g.t, g.h, g.w);

  ASSERT_TRUE(permute_tokens(in.view, mid.view, order.data(), grid_tokens, prefix, false));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n) {
        const bool in_grid = n >= prefix && n < prefix + grid_tokens;
        const int64_t src = in_grid ? prefix + order[n - prefix] : n;
        for (int64_t d = 0; d < D; ++d)
          ASSERT_EQ(mid.get(b, h, n, d), in.get(b, h, src, d)) << "token " << n;
      }

  ASSERT_TRUE(permute_tokens(mid.view, back.view, order.data(), grid_tokens, prefix, true));
  EXPECT_FALSE(test::any_nan(back.to_hnd()));
  EXPECT_EQ(back.to_hnd(), in.to_hnd());
}

INSTANTIATE_TEST_SUITE_P(DtypesAndLayouts, PermuteRoundTrip,
                         ::testing::Values(PermuteCase{DType::kFloat32, Layout::kHND},
                                           PermuteCase{DType::kFloat32, Layout::kNHD},
                                           PermuteCase{DType::kBFloat16, Layout::kHND},
                                           PermuteCase{DType::kBFloat16, Layout::kNHD}));

TEST(Permute, RejectsBadArguments) {
  std::vector<float> a(64, 1.0f), b(64, 0.0f);
  const TensorView in =
      TensorView::contiguous(a.data(), DType::kFloat32, Layout::kHND, 1, 1, 16, 4);
  const TensorView out =
      TensorView::contiguous(b.data(), DType::kFloat32, Layout::kHND, 1, 1, 16, 4);
  std::vector<int64_t> order = {0, 1, 2, 9};
  Status s = permute_tokens(in, out, order.data(), 4, 0, false);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("order[3]"), std::string::npos) << s.message();
  order[3] = 3;
  s = permute_tokens(in, out, order.data(), 4, 13, false);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("first_token"), std::string::npos) << s.message();
  EXPECT_EQ(permute_tokens(in, out, nullptr, 4, 0, false).code(), StatusCode::kInvalidArgument);
}

// Mean over blocks of the method's self-similarity s = ‖Σ x̂‖² / n² (docs/method.md, Stage 1),
// for one head's rows [n, d] taken in the given token order; keys are smoothed by their mean.
double mean_block_similarity(const float* x, int64_t n, int64_t d, int64_t block,
                             const std::vector<int64_t>& order, bool smooth) {
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  if (smooth)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c) mean[c] += x[i * d + c] / double(n);
  double total = 0;
  int64_t blocks = 0;
  for (int64_t start = 0; start < n; start += block, ++blocks) {
    const int64_t end = std::min(n, start + block);
    std::vector<double> sum(static_cast<size_t>(d), 0.0);
    for (int64_t i = start; i < end; ++i) {
      const float* row = x + order[i] * d;
      double norm = 0;
      for (int64_t c = 0; c < d; ++c) norm += (row[c] - mean[c]) * (row[c] - mean[c]);
      norm = std::sqrt(norm);
      for (int64_t c = 0; c < d; ++c) sum[c] += norm > 0 ? (row[c] - mean[c]) / norm : 0.0;
    }
    double sq = 0;
    for (double s : sum) sq += s * s;
    total += sq / double((end - start) * (end - start));
  }
  return total / double(blocks);
}

TEST(Hilbert, RaisesBlockSelfSimilarityOnVideo) {
  workloads::Workload w = workloads::video_grid(1, 4, 6, 16, 16, 64, 3);
  const int64_t n = w.seq_q, d = w.head_dim;
  std::vector<int64_t> row_major(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) row_major[i] = i;
  const std::vector<int64_t> hilbert = hilbert_order(w.grid_t, w.grid_h, w.grid_w);
  for (int64_t h = 0; h < w.heads_q; ++h) {
    const float* q = &w.q[static_cast<size_t>(h * n * d)];
    const float* k = &w.k[static_cast<size_t>(h * n * d)];
    const double q_rm = mean_block_similarity(q, n, d, 128, row_major, false);
    const double q_hb = mean_block_similarity(q, n, d, 128, hilbert, false);
    const double k_rm = mean_block_similarity(k, n, d, 64, row_major, true);
    const double k_hb = mean_block_similarity(k, n, d, 64, hilbert, true);
    std::printf(
        "head %lld: q blocks s %.3f -> %.3f, k blocks s %.3f -> %.3f (row-major -> Hilbert)\n",
        static_cast<long long>(h), q_rm, q_hb, k_rm, k_hb);
    EXPECT_GT(q_hb, q_rm + 0.05) << "head " << h;
    EXPECT_GT(k_hb, k_rm + 0.1) << "head " << h;
    // Above the default sim_threshold 0.6, so Stage 1 may skip these blocks at all.
    EXPECT_GT(k_hb, 0.6) << "head " << h;
  }
}

}  // namespace
}  // namespace sparge
