// The exact CPU reference (Stage 2) against a naive dense formula, the λ skip rule and its row
// groups, empty rows, and the dense helper other suites use as their oracle.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/fp_convert.h"
#include "common/geometry.h"
#include "cpu/reference.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Dims {
  int64_t B, Hq, Hkv, Nq, Nk, D;
};

// Textbook attention, natural exp, over keys [0, key_end) only. Rows without keys: zeros, -inf.
struct Naive {
  std::vector<double> o, lse;
};
Naive naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                      const std::vector<float>& v, const Dims& s, double scale, bool causal,
                      CausalAlign align, int64_t key_end) {
  Naive out{std::vector<double>(s.B * s.Hq * s.Nq * s.D, 0.0),
            std::vector<double>(s.B * s.Hq * s.Nq, -kInf)};
  const int64_t off = align == CausalAlign::kBottomRight ? s.Nk - s.Nq : 0;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t r = 0; r < s.Nq; ++r) {
        const int64_t hk = h / (s.Hq / s.Hkv), row = (b * s.Hq + h) * s.Nq + r;
        const float* qr = &q[row * s.D];
        std::vector<double> w;
        for (int64_t c = 0; c < key_end && (!causal || c <= r + off); ++c) {
          const float* kc = &k[((b * s.Hkv + hk) * s.Nk + c) * s.D];
          double dot = 0;
          for (int64_t d = 0; d < s.D; ++d) dot += double(qr[d]) * kc[d];
          w.push_back(scale * dot);
        }
        if (w.empty()) continue;
        const double mx = *std::max_element(w.begin(), w.end());
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        out.lse[row] = mx + std::log(sum);
        for (size_t c = 0; c < w.size(); ++c)
          for (int64_t d = 0; d < s.D; ++d)
            out.o[row * s.D + d] += w[c] / sum * v[((b * s.Hkv + hk) * s.Nk + c) * s.D + d];
      }
  return out;
}

// Rounding error allowed for a value written in `dtype` (the double result is exact to 1e-12).
double output_tolerance(double x, DType dtype) {
  const int mant_bits = dtype == DType::kFloat16 ? 10 : dtype == DType::kBFloat16 ? 7 : 23;
  const int min_exp = dtype == DType::kFloat16 ? -14 : -126;
  const int e = std::max(min_exp, std::ilogb(std::max(std::fabs(x), 1e-300)));
  return std::ldexp(0.5, e - mant_bits) + half_ulp_f32(x) + 1e-12;
}

void expect_matches(const ReferenceRun& run, const Naive& want, DType dtype, int64_t D) {
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  ASSERT_FALSE(any_nan(run.o));
  for (size_t i = 0; i < want.o.size(); ++i)
    ASSERT_LE(std::fabs(run.o[i] - want.o[i]), output_tolerance(want.o[i], dtype))
        << "element " << i << " (row " << i / D << ")";
  for (size_t r = 0; r < want.lse.size(); ++r) {
    if (want.lse[r] == -kInf) {
      ASSERT_EQ(run.lse[r], -INFINITY) << "row " << r;
    } else {
      ASSERT_LE(std::fabs(run.lse[r] - want.lse[r]), half_ulp_f32(want.lse[r]) + 1e-12)
          << "row " << r;
    }
  }
}

struct DenseCase {
  Dims s;
  bool causal;
  CausalAlign align;
  DType dtype;
  Layout layout;
  int block_q, block_k, group_rows;
};

class DenseReference : public ::testing::TestWithParam<DenseCase> {};

// Dense mask and λ = +inf: nothing is skipped, so the reference is plain attention.
TEST_P(DenseReference, MatchesNaiveFormula) {
  const DenseCase c = GetParam();
  const Dims& s = c.s;
  const HostTensor q = HostTensor::make(gaussian(s.B * s.Hq * s.Nq * s.D, 1), s.B, s.Hq, s.Nq,
                                        s.D, c.dtype, c.layout, 3);
  const HostTensor k = HostTensor::make(gaussian(s.B * s.Hkv * s.Nk * s.D, 2), s.B, s.Hkv, s.Nk,
                                        s.D, c.dtype, c.layout, 5);
  const HostTensor v = HostTensor::make(gaussian(s.B * s.Hkv * s.Nk * s.D, 3), s.B, s.Hkv, s.Nk,
                                        s.D, c.dtype, c.layout);
  SparseOptions opts;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.pv_threshold = {INFINITY};
  opts.block_q = c.block_q;
  opts.block_k = c.block_k;
  opts.pv_group_rows = c.group_rows;
  HostBlockMask mask(s.B, s.Hq, s.Nq, s.Nk, c.block_q, c.block_k);
  ASSERT_TRUE(fill_dense_mask(mask.view(), c.causal, c.align).is_ok());

  const ReferenceRun run = run_reference(q.view, k.view, v.view, mask.view(), opts, c.dtype);
  const double scale = 1.0 / std::sqrt(double(s.D));
  const Naive want = naive_attention(q.to_hnd(), k.to_hnd(), v.to_hnd(), s, float(scale),
                                     c.causal, c.align, s.Nk);
  expect_matches(run, want, c.dtype, s.D);

  // The dense helper agrees in double.
  const std::vector<double> dense = cpu::dense_attention_reference(
      q.view, k.view, v.view, float(scale), c.causal, c.align);
  ASSERT_EQ(dense.size(), want.o.size());
  for (size_t i = 0; i < dense.size(); ++i) ASSERT_NEAR(dense[i], want.o[i], 1e-12) << i;

  // Every (group, tile) pair is visited; with λ = inf only pairs causality fully masks skip.
  const int64_t off = detail::causal_offset(c.align == CausalAlign::kBottomRight, s.Nq, s.Nk);
  unsigned long long visited = 0, skipped = 0;
  for (int64_t i = 0; i < mask.view().num_q_blocks(); ++i)
    for (int64_t g0 = i * c.block_q; g0 < std::min(s.Nq, (i + 1) * c.block_q);
         g0 += c.group_rows) {
      const int64_t g_last = std::min({s.Nq, (i + 1) * int64_t(c.block_q), g0 + c.group_rows}) - 1;
      for (int32_t t = 0; t < mask.counts[i]; ++t) {
        ++visited;
        // The group's last row sees the most keys.
        if (c.causal && mask.indices[i * mask.view().num_k_blocks() + t] * c.block_k > g_last + off)
          ++skipped;
      }
    }
  for (int64_t h = 0; h < s.Hq; ++h) {
    EXPECT_EQ(run.counters[h * 2], visited * s.B) << "head " << h;
    EXPECT_EQ(run.counters[h * 2 + 1], skipped * s.B) << "head " << h;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DenseReference,
    ::testing::Values(
        DenseCase{{1, 2, 2, 77, 77, 32}, false, CausalAlign::kTopLeft, DType::kFloat32,
                  Layout::kHND, 16, 16, 16},
        DenseCase{{2, 4, 2, 130, 200, 64}, true, CausalAlign::kTopLeft, DType::kFloat32,
                  Layout::kNHD, 32, 64, 16},
        DenseCase{{1, 4, 1, 200, 130, 16}, true, CausalAlign::kBottomRight, DType::kFloat32,
                  Layout::kHND, 64, 32, 7},
        DenseCase{{1, 2, 1, 33, 300, 32}, true, CausalAlign::kBottomRight, DType::kBFloat16,
                  Layout::kNHD, 16, 64, 16},
        DenseCase{{1, 2, 2, 300, 33, 32}, true, CausalAlign::kTopLeft, DType::kFloat16,
                  Layout::kHND, 128, 16, 16},
        DenseCase{{1, 3, 3, 150, 61, 16}, true, CausalAlign::kBottomRight, DType::kFloat32,
                  Layout::kNHD, 32, 16, 16},
        DenseCase{{1, 1, 1, 64, 96, 128}, true, CausalAlign::kBottomRight, DType::kFloat32,
                  Layout::kHND, 64, 64, 16},
        DenseCase{{1, 2, 1, 40, 50, 256}, false, CausalAlign::kTopLeft, DType::kFloat32,
                  Layout::kNHD, 16, 32, 16}),
    [](const ::testing::TestParamInfo<DenseCase>& info) {
      const DenseCase& c = info.param;
      const char* mode = !c.causal ? "full" : c.align == CausalAlign::kTopLeft ? "tl" : "br";
      return "b" + std::to_string(c.s.B) + "h" + std::to_string(c.s.Hq) + "g" +
             std::to_string(c.s.Hkv) + "q" + std::to_string(c.s.Nq) + "k" +
             std::to_string(c.s.Nk) + "d" + std::to_string(c.s.D) + "_" + mode + "_" +
             dtype_name(c.dtype);
    });

TEST(Reference, EmptyMaskRowGivesZerosAndNegInfLse) {
  const Dims s{1, 2, 1, 64, 64, 16};
  const HostTensor q = HostTensor::make(gaussian(s.Hq * s.Nq * s.D, 4), 1, s.Hq, s.Nq, s.D,
                                        DType::kFloat32, Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(s.Nk * s.D, 5), 1, 1, s.Nk, s.D,
                                        DType::kFloat32, Layout::kHND);
  const HostTensor v = HostTensor::make(gaussian(s.Nk * s.D, 6), 1, 1, s.Nk, s.D,
                                        DType::kFloat32, Layout::kHND);
  SparseOptions opts;
  opts.block_q = opts.block_k = 16;
  HostBlockMask mask(1, s.Hq, s.Nq, s.Nk, 16, 16);
  ASSERT_TRUE(fill_dense_mask(mask.view(), false, CausalAlign::kTopLeft).is_ok());
  mask.counts[mask.view().row(0, 1, 2)] = 0;  // head 1, rows 32..47 keep nothing

  const ReferenceRun run = run_reference(q.view, k.view, v.view, mask.view(), opts);
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  Naive want = naive_attention(q.to_hnd(), k.to_hnd(), v.to_hnd(), s, 0.25, false,
                               CausalAlign::kTopLeft, s.Nk);
  for (int64_t r = 32; r < 48; ++r) {
    const int64_t row = s.Nq + r;  // head 1
    want.lse[row] = -kInf;
    for (int64_t d = 0; d < s.D; ++d) want.o[row * s.D + d] = 0.0;
  }
  expect_matches(run, want, DType::kFloat32, s.D);
  EXPECT_EQ(run.counters[0], 16u);  // head 0: 4 blocks x 4 tiles x 1 group
  EXPECT_EQ(run.counters[2], 12u);  // head 1: the empty row visits nothing
}

TEST(Reference, BottomRightRowsWithoutKeysGiveZeros) {
  const Dims s{1, 1, 1, 100, 40, 16};  // offset -60: rows 0..59 see no key
  const HostTensor q = HostTensor::make(gaussian(s.Nq * s.D, 7), 1, 1, s.Nq, s.D,
                                        DType::kFloat32, Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(s.Nk * s.D, 8), 1, 1, s.Nk, s.D,
                                        DType::kFloat32, Layout::kHND);
  const HostTensor v = HostTensor::make(gaussian(s.Nk * s.D, 9), 1, 1, s.Nk, s.D,
                                        DType::kFloat32, Layout::kHND);
  SparseOptions opts;
  opts.causal = true;
  opts.causal_align = CausalAlign::kBottomRight;
  opts.block_q = 32;
  opts.block_k = 16;
  HostBlockMask mask(1, 1, s.Nq, s.Nk, 32, 16);
  ASSERT_TRUE(fill_dense_mask(mask.view(), true, CausalAlign::kBottomRight).is_ok());
  EXPECT_EQ(mask.counts[0], 0);  // rows 0..31 are causally empty

  const ReferenceRun run = run_reference(q.view, k.view, v.view, mask.view(), opts);
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  for (int64_t r = 0; r < 60; ++r) {
    EXPECT_EQ(run.lse[r], -INFINITY) << "row " << r;
    for (int64_t d = 0; d < s.D; ++d) ASSERT_EQ(run.o[r * s.D + d], 0.0f) << "row " << r;
  }
  expect_matches(run, naive_attention(q.to_hnd(), k.to_hnd(), v.to_hnd(), s, 0.25, true,
                                      CausalAlign::kBottomRight, s.Nk),
                 DType::kFloat32, s.D);
}

// Two 16-key blocks, scale 1: "cold" query rows e0 score 50·log2(e) ≈ 72.1 on block 0 and
// 8·log2(e) ≈ 11.5 on block 1 (≈ 60.6 lower in log2 units); block 1's values are 1e15, so its
// 2^-60.6 weights still move the output by ~6e-4 and a skip is visible.
struct SkipCase {
  Dims s;
  std::vector<float> q, k, v;
};
SkipCase make_skip_case(int64_t heads, int64_t rows, int64_t hot_row) {
  SkipCase c{{1, heads, 1, rows, 32, 16}, {}, {}, {}};
  c.q.assign(heads * rows * 16, 0.0f);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < rows; ++r) c.q[(h * rows + r) * 16 + (r == hot_row ? 1 : 0)] = 1.0f;
  c.k.assign(32 * 16, 0.0f);
  c.v = gaussian(32 * 16, 10);
  for (int64_t n = 0; n < 32; ++n) {
    c.k[n * 16] = n < 16 ? 50.0f : 8.0f;
    if (n >= 16) {
      c.k[n * 16 + 1] = 1.0f;  // the hot row (q = e1) scores 1·log2(e) here and 0 on block 0
      for (int64_t d = 0; d < 16; ++d) c.v[n * 16 + d] = 1e15f;
    }
  }
  return c;
}

ReferenceRun run_skip_case(const SkipCase& c, int block_q, HeadParam lambda) {
  const Dims& s = c.s;
  const HostTensor q = HostTensor::make(c.q, 1, s.Hq, s.Nq, 16, DType::kFloat32, Layout::kHND);
  const HostTensor k = HostTensor::make(c.k, 1, 1, 32, 16, DType::kFloat32, Layout::kHND);
  const HostTensor v = HostTensor::make(c.v, 1, 1, 32, 16, DType::kFloat32, Layout::kHND);
  SparseOptions opts;
  opts.scale = 1.0f;
  opts.block_q = block_q;
  opts.block_k = 16;
  opts.pv_group_rows = 16;
  opts.pv_threshold = lambda;
  HostBlockMask mask(1, s.Hq, s.Nq, 32, block_q, 16);
  EXPECT_TRUE(fill_dense_mask(mask.view(), false, CausalAlign::kTopLeft).is_ok());
  return run_reference(q.view, k.view, v.view, mask.view(), opts);
}

TEST(Reference, PvSkipDropsANegligibleTileAndCountsIt) {
  const SkipCase c = make_skip_case(2, 16, -1);
  const float lambdas[2] = {20.0f, 100.0f};  // head 0 must skip block 1, head 1 must not
  const ReferenceRun run = run_skip_case(c, 16, HeadParam{0.0f, lambdas});
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  EXPECT_EQ(run.counters[0], 2u);
  EXPECT_EQ(run.counters[1], 1u);
  EXPECT_EQ(run.counters[2], 2u);
  EXPECT_EQ(run.counters[3], 0u);

  const Naive without_block1 = naive_attention(c.q, c.k, c.v, c.s, 1.0, false,
                                               CausalAlign::kTopLeft, 16);
  const Naive with_block1 = naive_attention(c.q, c.k, c.v, c.s, 1.0, false,
                                            CausalAlign::kTopLeft, 32);
  const int64_t head = 16 * 16;  // elements per head
  for (int64_t i = 0; i < head; ++i) {
    ASSERT_LE(std::fabs(run.o[i] - without_block1.o[i]), output_tolerance(without_block1.o[i],
                                                                           DType::kFloat32));
    ASSERT_LE(std::fabs(run.o[head + i] - with_block1.o[head + i]),
              output_tolerance(with_block1.o[head + i], DType::kFloat32));
    // The two expectations really differ, so each check can fail.
    ASSERT_GT(std::fabs(with_block1.o[i] - without_block1.o[i]), 1e-4);
  }
}

TEST(Reference, PvSkipIsDecidedPerRowGroup) {
  // One 32-row query block = two groups of 16; row 3 of group 0 is hot on key block 1.
  const SkipCase c = make_skip_case(1, 32, 3);
  const ReferenceRun run = run_skip_case(c, 32, HeadParam{20.0f});
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  EXPECT_EQ(run.counters[0], 4u);  // 2 groups x 2 tiles
  EXPECT_EQ(run.counters[1], 1u);  // only group 1 skips block 1

  const Naive full = naive_attention(c.q, c.k, c.v, c.s, 1.0, false, CausalAlign::kTopLeft, 32);
  const Naive first = naive_attention(c.q, c.k, c.v, c.s, 1.0, false, CausalAlign::kTopLeft, 16);
  for (int64_t r = 0; r < 32; ++r) {
    const Naive& want = r < 16 ? full : first;
    for (int64_t d = 0; d < 16; ++d) {
      const int64_t i = r * 16 + d;
      ASSERT_LE(std::fabs(run.o[i] - want.o[i]), output_tolerance(want.o[i], DType::kFloat32))
          << "row " << r;
      // Cold rows of group 0 keep block 1's (visible) contribution because of row 3.
      if (r < 16 && r != 3) ASSERT_GT(std::fabs(full.o[i] - first.o[i]), 1e-4);
    }
  }
}

}  // namespace
}  // namespace sparge::test
