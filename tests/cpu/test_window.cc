// Sliding windows (SparseOptions::window_left / window_right, issue 12) on the CPU: the block
// geometry against brute force, the exact reference and the fast backend against a naive masked
// softmax written here from the option docs (not from geometry.h), Stage 1 keeping only blocks
// inside the window, the statistics' denominator, and the validation messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/geometry.h"
#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::HostTensor;

// What the option docs say, pair by pair: causal hides keys right of the aligned diagonal,
// window_left / window_right hide keys more than that many positions left / right of it.
bool visible(int64_t r, int64_t c, int64_t nq, int64_t nk, const SparseOptions& o) {
  const int64_t diag = r + (o.causal_align == CausalAlign::kBottomRight ? nk - nq : 0);
  if (c < 0 || c >= nk) return false;
  if (o.causal && c > diag) return false;
  if (o.window_left >= 0 && c < diag - o.window_left) return false;
  if (o.window_right >= 0 && c > diag + o.window_right) return false;
  return true;
}

SparseOptions window(int64_t left, int64_t right, bool causal, CausalAlign align) {
  SparseOptions o;
  o.window_left = int(left);
  o.window_right = int(right);
  o.causal = causal;
  o.causal_align = align;
  return o;
}

TEST(WindowGeometry, AllowedBlocksAreExactlyTheBlocksWithAVisiblePair) {
  std::mt19937_64 rng(12);
  int checked = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t nq = 1 + int64_t(rng() % 300), nk = 1 + int64_t(rng() % 300);
    const int bq = 1 << (rng() % 5 + 2), bk = 1 << (rng() % 5 + 2);
    const int64_t left = int64_t(rng() % 5) == 0 ? -1 : int64_t(rng() % 200);
    const int64_t right = int64_t(rng() % 5) == 0 ? -1 : int64_t(rng() % 200);
    const SparseOptions o = window(left, right, rng() % 2,
                                   rng() % 2 ? CausalAlign::kBottomRight : CausalAlign::kTopLeft);
    const detail::KeyBand band = detail::Problem::band_of(o, nq, nk);
    for (int64_t qb = 0; qb * bq < nq; ++qb) {
      const detail::BlockRange got = detail::allowed_key_blocks(qb, bq, bk, band, nq, nk);
      for (int64_t kb = 0; kb * bk < nk; ++kb) {
        bool any = false;
        for (int64_t r = qb * bq; r < std::min(nq, (qb + 1) * bq) && !any; ++r)
          for (int64_t c = kb * bk; c < std::min(nk, (kb + 1) * bk) && !any; ++c)
            any = visible(r, c, nq, nk, o);
        ASSERT_EQ(got.contains(kb), any)
            << "nq " << nq << " nk " << nk << " bq " << bq << " bk " << bk << " left " << left
            << " right " << right << " causal " << o.causal << " qb " << qb << " kb " << kb;
        ++checked;
      }
      // Per row, the first/last visible key match the pairwise rule.
      for (int64_t r = qb * bq; r < std::min(nq, (qb + 1) * bq); ++r) {
        const int64_t first = detail::first_visible_key(r, band);
        const int64_t last = detail::last_visible_key(r, band, nk);
        for (int64_t c = 0; c < nk; ++c)
          ASSERT_EQ(c >= first && c <= last, visible(r, c, nq, nk, o)) << r << " " << c;
      }
    }
  }
  std::printf("[window] geometry: %d (query block, key block) pairs against brute force\n",
              checked);
}

struct WindowCase {
  std::string name;
  int64_t Hq, Hkv, Nq, Nk, D;
  int64_t left, right;
  bool causal;
  CausalAlign align;
  DType dtype;
  int block_q, block_k;
};

std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& e : x) e = dist(rng);
  return x;
}

// o = softmax over the visible keys, in double; rows that see nothing give zeros.
std::vector<double> naive(const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v, const WindowCase& c,
                          const SparseOptions& o) {
  const int64_t group = c.Hq / c.Hkv;
  const double scale = double(float(1.0 / std::sqrt(double(c.D))));  // the options' float scale
  std::vector<double> out(c.Hq * c.Nq * c.D, 0.0);
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t r = 0; r < c.Nq; ++r) {
      std::vector<double> w(c.Nk, -INFINITY);
      double mx = -INFINITY;
      for (int64_t j = 0; j < c.Nk; ++j) {
        if (!visible(r, j, c.Nq, c.Nk, o)) continue;
        double dot = 0.0;
        for (int64_t d = 0; d < c.D; ++d)
          dot += double(q[(h * c.Nq + r) * c.D + d]) * k[((h / group) * c.Nk + j) * c.D + d];
        w[j] = scale * dot;
        mx = std::max(mx, w[j]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0.0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < c.Nk; ++j)
        for (int64_t d = 0; d < c.D; ++d)
          out[(h * c.Nq + r) * c.D + d] += w[j] / sum * v[((h / group) * c.Nk + j) * c.D + d];
    }
  return out;
}

void PrintTo(const WindowCase& c, std::ostream* os) { *os << c.name; }

// The CUDA kernels' element mask (cuda/attention/mainloop_sm80.cuh apply_mask) takes each row's
// visible columns as two bounds (detail::visible_columns); they must hide exactly the pairs of the
// rule they replaced, "key >= key_end, or (banded) key - row outside [key_lo, key_hi]", for every
// thread column c0 + j, also where the bounds would overflow an int (band ends at ±2^31 - 1 scale).
TEST(WindowGeometry, KernelColumnBoundsHideExactlyTheMaskedPairs) {
  std::mt19937_64 rng(31);
  constexpr int kBlockN = 64;
  const int big = std::numeric_limits<int>::max() - 64;
  auto pick = [&](int lo, int hi) {  // uniform in [lo, hi], in 64 bits: hi - lo may pass 2^31
    return int(int64_t(lo) + int64_t(rng() % uint64_t(int64_t(hi) - lo + 1)));
  };
  int64_t checked = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const bool extreme = trial % 4 == 0;
    const int row = extreme ? pick(0, big) : pick(0, 5000);
    const int key0 = extreme ? pick(0, big / 64) * 64 : pick(0, 100) * 64;
    const int c0 = key0 + 2 * pick(0, 3);
    const int key_end = extreme ? pick(0, big) : pick(0, 7000);
    const int key_lo = extreme ? pick(-big, big) : pick(-6000, 300);
    const int key_hi = extreme ? pick(key_lo, big) : pick(key_lo, 6000);
    const bool banded = rng() % 4 != 0;
    const detail::VisibleColumns v =
        detail::visible_columns(row, c0, key_end, key_lo, key_hi, banded, kBlockN);
    for (int j = 0; j < kBlockN; ++j) {
      const int64_t key = int64_t(c0) + j, d = key - row;
      const bool masked = key >= key_end || (banded && (d > key_hi || d < key_lo));
      ASSERT_EQ(v.contains(j), !masked) << "row " << row << " c0 " << c0 << " j " << j << " key_end "
                                        << key_end << " band [" << key_lo << ", " << key_hi << "] banded "
                                        << banded;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 20000 * kBlockN);
}

class WindowAttention : public ::testing::TestWithParam<WindowCase> {};

// Dense thresholds (every block non-similar, λ = ∞): Stage 1 keeps exactly the allowed blocks,
// and both CPU backends compute the naive windowed softmax.
TEST_P(WindowAttention, BothBackendsMatchTheNaiveMaskedSoftmax) {
  const WindowCase c = GetParam();
  const std::vector<float> qf = gaussian(c.Hq * c.Nq * c.D, 1),
                           kf = gaussian(c.Hkv * c.Nk * c.D, 2),
                           vf = gaussian(c.Hkv * c.Nk * c.D, 3);
  const HostTensor q = HostTensor::make(qf, 1, c.Hq, c.Nq, c.D, c.dtype, Layout::kHND);
  const HostTensor k = HostTensor::make(kf, 1, c.Hkv, c.Nk, c.D, c.dtype, Layout::kNHD, 2);
  const HostTensor v = HostTensor::make(vf, 1, c.Hkv, c.Nk, c.D, c.dtype, Layout::kHND);
  SparseOptions o = window(c.left, c.right, c.causal, c.align);
  o.block_q = c.block_q;
  o.block_k = c.block_k;
  o.pv_group_rows = std::min(16, c.block_q);
  o.sim_threshold = {1.0f};  // nothing similar: every allowed block is computed
  o.pv_threshold = {INFINITY};
  const std::vector<double> want = naive(q.to_hnd(), k.to_hnd(), v.to_hnd(), c, o);

  // Stage 1 keeps exactly the allowed blocks; fill_dense_mask writes the same mask.
  HostBlockMask predicted(1, c.Hq, c.Nq, c.Nk, c.block_q, c.block_k);
  HostBlockMask dense(1, c.Hq, c.Nq, c.Nk, c.block_q, c.block_k);
  ASSERT_TRUE(predict_block_mask(q.view, k.view, o, predicted.view()).is_ok());
  ASSERT_TRUE(fill_dense_mask(dense.view(), o).is_ok());
  EXPECT_EQ(predicted.counts, dense.counts);
  EXPECT_EQ(predicted.to_dense(), dense.to_dense());
  const AttentionStats st = mask_stats(dense.view(), o);
  EXPECT_EQ(st.tiles_computed, st.tiles_dense);
  int64_t full = 0;
  for (int32_t n : dense.counts) full += n;
  EXPECT_EQ(st.tiles_dense, full);

  // The double-precision dense helper is the naive formula.
  const std::vector<double> dense_ref = cpu::dense_attention_reference(
      q.view, k.view, v.view, float(1.0 / std::sqrt(double(c.D))), o);
  ASSERT_EQ(dense_ref.size(), want.size());
  double helper_err = 0.0;
  for (size_t i = 0; i < want.size(); ++i)
    helper_err = std::max(helper_err, std::abs(dense_ref[i] - want[i]));
  EXPECT_LT(helper_err, 1e-9);

  const double tol = c.dtype == DType::kFloat32 ? 1e-5 : (c.dtype == DType::kFloat16 ? 4e-3 : 2e-2);
  for (Backend backend : {Backend::kReference, Backend::kCpuFast}) {
    HostTensor out = HostTensor::poisoned(1, c.Hq, c.Nq, c.D, c.dtype, Layout::kHND);
    std::vector<float> lse(c.Hq * c.Nq, NAN);
    AttentionExtras extras;
    extras.lse = lse.data();
    ExecContext ctx;
    ctx.backend = backend;
    ASSERT_TRUE(
        block_sparse_attention(q.view, k.view, v.view, dense.view(), o, out.view, extras, ctx)
            .is_ok());
    const std::vector<float> got = out.to_hnd();
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << i;
      num += std::abs(got[i] - want[i]);
      den += std::abs(want[i]);
    }
    const double rel = den > 0 ? num / den : num;
    // Rows that see no key: zeros and lse = -inf; the others a finite lse.
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t r = 0; r < c.Nq; ++r) {
        bool any = false;
        for (int64_t j = 0; j < c.Nk && !any; ++j) any = visible(r, j, c.Nq, c.Nk, o);
        if (any)
          EXPECT_TRUE(std::isfinite(lse[h * c.Nq + r])) << r;
        else
          EXPECT_EQ(lse[h * c.Nq + r], -INFINITY) << r;
      }
    std::printf("[window] %-34s %-9s rel_l1 %.2e (kept %lld of %lld tiles)\n", c.name.c_str(),
                backend == Backend::kReference ? "reference" : "fast", rel,
                static_cast<long long>(st.tiles_computed),
                static_cast<long long>(int64_t(dense.counts.size()) * dense.view().num_k_blocks()));
    EXPECT_LT(rel, tol) << c.name;
  }
}

const WindowCase kWindowCases[] = {
    {"left 100, causal", 2, 2, 300, 300, 32, 100, -1, true, CausalAlign::kTopLeft, DType::kFloat32,
     64, 32},
    {"left 0 right 0 (diagonal only)", 2, 1, 130, 130, 16, 0, 0, false, CausalAlign::kTopLeft,
     DType::kFloat32, 32, 16},
    {"left 40 right 17, bottom-right", 4, 2, 97, 251, 32, 40, 17, false, CausalAlign::kBottomRight,
     DType::kFloat32, 32, 64},
    {"right only 5, Nq > Nk top-left", 2, 2, 333, 129, 32, -1, 5, false, CausalAlign::kTopLeft,
     DType::kFloat32, 64, 32},
    {"left 63 causal bottom-right", 3, 1, 200, 517, 64, 63, -1, true, CausalAlign::kBottomRight,
     DType::kBFloat16, 128, 64},
    {"left 512 causal (Gemma-like)", 2, 1, 1100, 1100, 64, 512, -1, true, CausalAlign::kTopLeft,
     DType::kFloat16, 128, 64},
    {"left 7 right 300 non-causal", 2, 2, 211, 211, 32, 7, 300, false, CausalAlign::kTopLeft,
     DType::kFloat32, 16, 16},
    {"window wider than the sequence", 1, 1, 77, 77, 32, 5000, 5000, false, CausalAlign::kTopLeft,
     DType::kFloat32, 32, 32},
    {"rows past the keys see nothing", 1, 1, 300, 100, 32, 10, 0, false, CausalAlign::kTopLeft,
     DType::kFloat32, 64, 32},
};
INSTANTIATE_TEST_SUITE_P(Cases, WindowAttention, ::testing::ValuesIn(kWindowCases));

// Stage 1 with real thresholds never keeps a block the window hides, and keeps the sink block
// only where the window reaches it.
TEST(WindowPredict, KeepsOnlyAllowedBlocksAndTheSinkOnlyInsideTheWindow) {
  const int64_t H = 2, N = 1000, D = 64;
  const HostTensor q =
      HostTensor::make(gaussian(H * N * D, 4), 1, H, N, D, DType::kFloat32, Layout::kHND);
  const HostTensor k =
      HostTensor::make(gaussian(H * N * D, 5), 1, H, N, D, DType::kFloat32, Layout::kHND);
  for (EstimateMode estimate : {EstimateMode::kPooled, EstimateMode::kSampledRows}) {
    SparseOptions o = window(200, -1, true, CausalAlign::kTopLeft);
    o.sim_threshold = {-1.0f};  // every block similar: the selection alone decides
    o.select_value = {0.5f};
    o.attention_sink = true;
    o.estimate = estimate;
    HostBlockMask m(1, H, N, N, o.block_q, o.block_k);
    ASSERT_TRUE(predict_block_mask(q.view, k.view, o, m.view()).is_ok());
    const detail::KeyBand band = detail::Problem::band_of(o, N, N);
    const int64_t nq = m.view().num_q_blocks(), nk = m.view().num_k_blocks();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < nq; ++i) {
        const detail::BlockRange allowed =
            detail::allowed_key_blocks(i, o.block_q, o.block_k, band, N, N);
        const int64_t row = m.view().row(0, h, i);
        ASSERT_GE(m.counts[row], 1) << "every query block sees some key";
        for (int32_t t = 0; t < m.counts[row]; ++t)
          EXPECT_TRUE(allowed.contains(m.indices[row * nk + t]))
              << "row " << i << " block " << m.indices[row * nk + t];
        const bool has_sink = m.indices[row * nk] == 0;
        EXPECT_EQ(has_sink, allowed.contains(0)) << "query block " << i;
      }
  }
}

TEST(WindowValidation, NegativeSizesOtherThanMinusOneAreRefusedByName) {
  const int64_t N = 64, D = 32;
  const HostTensor q =
      HostTensor::make(gaussian(N * D, 6), 1, 1, N, D, DType::kFloat32, Layout::kHND);
  HostTensor out = HostTensor::poisoned(1, 1, N, D, DType::kFloat32, Layout::kHND);
  for (const char* which : {"window_left", "window_right"}) {
    SparseOptions o;
    (std::string(which) == "window_left" ? o.window_left : o.window_right) = -2;
    const Status st = sparse_attention(q.view, q.view, q.view, o, out.view);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(std::string("SparseOptions.") + which), std::string::npos)
        << st.message();
    EXPECT_NE(st.message().find("-2"), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace sparge
