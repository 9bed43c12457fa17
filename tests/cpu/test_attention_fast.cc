// The fast CPU backend against the exact reference (src/cpu/reference.cc) on the same inputs:
// odd lengths, Nq ≠ Nk, GQA/MQA, both causal alignments, head dims, HND/NHD views, fp32/fp16/
// bf16, random sparse masks with empty rows, the λ rule with its counters, quantized mode.
// Tolerances (rel L1): fp32 1e-5; fp16/bf16 outputs 2× the dtype's rounding (both backends
// round the same exact function once). Each case prints one line with its error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

int test_level() {
  const char* s = std::getenv("SPARGE_TEST_LEVEL");
  return s ? std::atoi(s) : 1;
}

// Input values: i.i.d. Gaussian, or small integers ("grid") that make every score a multiple of
// 1/8 in log2 units (with kGridScale), so no λ decision can sit on a rounding tie.
enum class Data { kGaussian, kGrid };
constexpr float kGridScale = 0.125f * 0.69314718f;  // scale·log2(e) ≈ 1/8

struct Case {
  std::string name;
  int64_t B = 1, Hq = 2, Hkv = 2, Nq = 129, Nk = 129, D = 64;
  DType dtype = DType::kFloat32;
  Layout layout = Layout::kHND;
  bool causal = false;
  CausalAlign align = CausalAlign::kTopLeft;
  int block_q = 64, block_k = 32, group = 16;
  float lambda = kInf;
  double keep = 1.0;  // probability that an allowed tile is kept; 1 = dense
  QuantMode quant = QuantMode::kNone;
  Data data = Data::kGaussian;
  int grid_max = 3;  // grid values are integers in [-grid_max, grid_max]
  uint64_t seed = 1;
};

std::vector<float> make_values(const Case& c, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> x(n);
  if (c.data == Data::kGrid) {
    std::uniform_int_distribution<int> dist(-c.grid_max, c.grid_max);
    for (float& e : x) e = static_cast<float>(dist(rng));
  } else {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (float& e : x) e = dist(rng);
  }
  return x;
}

SparseOptions options_of(const Case& c) {
  SparseOptions o;
  o.causal = c.causal;
  o.causal_align = c.align;
  o.block_q = c.block_q;
  o.block_k = c.block_k;
  o.pv_group_rows = c.group;
  o.pv_threshold.value = c.lambda;
  o.quant = c.quant;
  if (c.data == Data::kGrid) o.scale = kGridScale;
  return o;
}

// A random subset of the causally allowed tiles; query block 0 of head 0 is left empty when
// the mask is sparse, so the "no key -> zeros" path always runs.
HostBlockMask random_mask(const Case& c) {
  HostBlockMask dense(c.B, c.Hq, c.Nq, c.Nk, c.block_q, c.block_k);
  EXPECT_TRUE(fill_dense_mask(dense.view(), c.causal, c.align).is_ok());
  if (c.keep >= 1.0) return dense;
  std::vector<uint8_t> map = dense.to_dense();
  std::mt19937_64 rng(c.seed * 7919 + 3);
  std::bernoulli_distribution keep(c.keep);
  for (uint8_t& m : map) m = m && keep(rng);
  const int64_t nk = dense.view().num_k_blocks();
  for (int64_t j = 0; j < nk; ++j) map[j] = 0;
  return HostBlockMask::from_dense(map, c.B, c.Hq, c.Nq, c.Nk, c.block_q, c.block_k);
}

struct RunResult {
  Status status;
  std::vector<float> o, lse;
  std::vector<unsigned long long> counters;
};

struct Inputs {
  test::HostTensor q, k, v;
};

Inputs make_inputs(const Case& c) {
  const int64_t pad = c.layout == Layout::kNHD ? 3 : 0;  // non-trivial strides in NHD views
  return {test::HostTensor::make(make_values(c, c.B * c.Hq * c.Nq * c.D, c.seed), c.B, c.Hq, c.Nq,
                                 c.D, c.dtype, c.layout, pad),
          test::HostTensor::make(make_values(c, c.B * c.Hkv * c.Nk * c.D, c.seed + 1), c.B, c.Hkv,
                                 c.Nk, c.D, c.dtype, c.layout, pad),
          test::HostTensor::make(make_values(c, c.B * c.Hkv * c.Nk * c.D, c.seed + 2), c.B, c.Hkv,
                                 c.Nk, c.D, c.dtype, c.layout, pad)};
}

RunResult run(const Case& c, const Inputs& in, const BlockMask& mask, Backend backend,
              int threads = 0) {
  RunResult r;
  test::HostTensor o = test::HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, c.dtype, c.layout);
  r.lse.assign(c.B * c.Hq * c.Nq, std::numeric_limits<float>::quiet_NaN());
  r.counters.assign(c.Hq * 2, 0);
  AttentionExtras extras;
  extras.lse = r.lse.data();
  extras.pv_counters = r.counters.data();
  ExecContext ctx;
  ctx.backend = backend;
  ctx.num_threads = threads;
  r.status = block_sparse_attention(in.q.view, in.k.view, in.v.view, mask, options_of(c), o.view,
                                    extras, ctx);
  r.o = o.to_hnd();
  return r;
}

double tolerance(DType t) {
  switch (t) {
    case DType::kFloat16:
      return 1e-3;  // 2 × 2^-11
    case DType::kBFloat16:
      return 8e-3;  // 2 × 2^-8
    default:
      return 1e-5;
  }
}

// Largest |lse_fast − lse_ref| over rows; -inf must match -inf exactly, NaN never passes.
double lse_error(const std::vector<float>& a, const std::vector<float>& ref) {
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isinf(ref[i]) || std::isinf(a[i])) {
      if (a[i] != ref[i]) return kInf;
      continue;
    }
    const double e = std::fabs(double(a[i]) - ref[i]);
    if (!(e <= worst)) worst = std::isnan(e) ? kInf : e;
  }
  return worst;
}

// Runs both backends; checks output, lse and (when asked) exact counter equality.
void check_case(const Case& c, bool expect_equal_counters = true) {
  const Inputs in = make_inputs(c);
  const HostBlockMask mask = random_mask(c);
  const RunResult ref = run(c, in, mask.view(), Backend::kReference);
  const RunResult fast = run(c, in, mask.view(), Backend::kCpuFast);
  ASSERT_TRUE(ref.status.is_ok()) << c.name << ": " << ref.status.message();
  ASSERT_TRUE(fast.status.is_ok()) << c.name << ": " << fast.status.message();
  const double err = measure::rel_l1(fast.o, ref.o);
  const double lse_err = lse_error(fast.lse, ref.lse);
  const double sparsity = mask_stats(mask.view(), c.causal, c.align).sparsity();
  unsigned long long visited = 0, skipped = 0;
  for (int64_t h = 0; h < c.Hq; ++h) {
    visited += ref.counters[h * 2];
    skipped += ref.counters[h * 2 + 1];
  }
  std::printf("[fast] %-34s rel_l1 %.2e  lse_err %.1e  sparsity %.2f  pv_skip %llu/%llu\n",
              c.name.c_str(), err, lse_err, sparsity, skipped, visited);
  EXPECT_LE(err, tolerance(c.dtype)) << c.name;
  EXPECT_LE(lse_err, c.dtype == DType::kFloat32 ? 1e-5 : 1e-3) << c.name;
  if (expect_equal_counters) {
    EXPECT_EQ(fast.counters, ref.counters) << c.name;
  }
}

TEST(AttentionFast, OddLengthsMatchReference) {
  for (int64_t n : {1, 17, 129, 1000}) {
    Case c;
    c.name = "dense N=" + std::to_string(n);
    c.Nq = c.Nk = n;
    check_case(c);
  }
}

TEST(AttentionFast, DenseMaskEqualsDenseAttention) {
  Case c;
  c.Nq = 200;
  c.Nk = 333;
  const Inputs in = make_inputs(c);
  const HostBlockMask mask = random_mask(c);
  const RunResult fast = run(c, in, mask.view(), Backend::kCpuFast);
  ASSERT_TRUE(fast.status.is_ok()) << fast.status.message();
  const std::vector<double> dense = cpu::dense_attention_reference(
      in.q.view, in.k.view, in.v.view, 1.0f / std::sqrt(float(c.D)), false, c.align);
  const double err = measure::rel_l1(fast.o, dense);
  std::printf("[fast] %-34s rel_l1 %.2e\n", "dense vs dense_attention_reference", err);
  EXPECT_LE(err, 1e-5);
}

TEST(AttentionFast, UnequalLengthsAndCausalAlignments) {
  const std::pair<int64_t, int64_t> lengths[] = {{17, 300}, {300, 17}, {129, 129}, {100, 257}};
  for (const auto& [nq, nk] : lengths)
    for (int mode = 0; mode < 3; ++mode) {
      Case c;
      c.Nq = nq;
      c.Nk = nk;
      c.causal = mode > 0;
      c.align = mode == 2 ? CausalAlign::kBottomRight : CausalAlign::kTopLeft;
      c.name = std::to_string(nq) + "x" + std::to_string(nk) +
               (mode == 0   ? " full"
                : mode == 1 ? " causal-tl"
                            : " causal-br");
      check_case(c);
    }
}

TEST(AttentionFast, GroupedAndMultiQueryHeads) {
  for (int64_t hkv : {2, 1}) {
    Case c;
    c.B = 2;
    c.Hq = 4;
    c.Hkv = hkv;
    c.Nq = 150;
    c.Nk = 190;
    c.causal = true;
    c.keep = 0.6;
    c.name = "Hq=4 Hkv=" + std::to_string(hkv) + " B=2 causal sparse";
    check_case(c);
  }
}

TEST(AttentionFast, HeadDims) {
  for (int64_t d : {64, 128, 256, 40}) {
    Case c;
    c.D = d;
    c.Nq = 130;
    c.Nk = 97;
    c.keep = 0.7;
    c.name = "D=" + std::to_string(d);
    check_case(c);
  }
}

TEST(AttentionFast, DtypesAndLayouts) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (Layout l : {Layout::kHND, Layout::kNHD}) {
      Case c;
      c.dtype = t;
      c.layout = l;
      c.Hq = 4;
      c.Hkv = 2;
      c.Nq = 140;
      c.Nk = 201;
      c.causal = true;
      c.align = CausalAlign::kBottomRight;
      c.keep = 0.8;
      c.name = std::string(dtype_name(t)) + (l == Layout::kNHD ? " NHD" : " HND");
      check_case(c);
    }
}

TEST(AttentionFast, RandomSparseMasksAndBlockShapes) {
  const int shapes[][2] = {{128, 64}, {64, 32}, {32, 16}, {16, 128}, {256, 64}};
  uint64_t seed = 10;
  for (const auto& s : shapes)
    for (double keep : {0.5, 0.2}) {
      Case c;
      c.block_q = s[0];
      c.block_k = s[1];
      c.group = std::min(16, s[0]);
      c.Nq = 300;
      c.Nk = 411;
      c.keep = keep;
      c.causal = seed % 2 == 0;
      c.seed = ++seed;
      c.name = "blocks " + std::to_string(s[0]) + "x" + std::to_string(s[1]) + " keep " +
               std::to_string(keep).substr(0, 3) + (c.causal ? " causal" : "");
      check_case(c);
    }
}

// On grid inputs the scores are multiples of 1/8 (log2 units) and λ sits between them, so the
// skip decisions and counters must be identical; the cases must really skip something.
TEST(AttentionFast, PvSkipCountersMatchOnSeparatedScores) {
  // λ = 0 on ternary data in 16 dimensions: many rows meet a tile max equal to their running
  // max, so "≤ −λ" versus "< −λ" changes the counters.
  const int groups[] = {16, 1, 5, 64, 1};
  const float lambdas[] = {3.0625f, 0.0625f, 9.5625f, 0.0f, 0.0f};
  for (int g = 0; g < 5; ++g) {
    Case c;
    c.data = Data::kGrid;
    if (g == 4) {
      c.grid_max = 1;
      c.D = 16;
    }
    c.group = groups[g];
    c.lambda = lambdas[g];
    c.Hq = 4;
    c.Hkv = 2;
    c.Nq = 257;
    c.Nk = 300;
    c.causal = g % 2 == 1;
    c.keep = 0.8;
    c.seed = 40 + g;
    c.name =
        "lambda " + std::to_string(c.lambda).substr(0, 6) + " group " + std::to_string(c.group);
    const Inputs in = make_inputs(c);
    const HostBlockMask mask = random_mask(c);
    const RunResult ref = run(c, in, mask.view(), Backend::kReference);
    ASSERT_TRUE(ref.status.is_ok()) << ref.status.message();
    unsigned long long visited = 0, skipped = 0;
    for (int64_t h = 0; h < c.Hq; ++h) {
      visited += ref.counters[h * 2];
      skipped += ref.counters[h * 2 + 1];
    }
    EXPECT_GT(skipped, 0u) << c.name << ": the case must exercise the skip";
    EXPECT_LT(skipped, visited) << c.name;
    check_case(c);
  }
}

TEST(AttentionFast, QuantizedModesMatchReference) {
  for (QuantMode mode : {QuantMode::kInt8Fp8, QuantMode::kInt8})
    for (DType t : {DType::kFloat32, DType::kBFloat16}) {
      Case c;
      c.quant = mode;
      c.dtype = t;
      c.Hq = 4;
      c.Hkv = 1;
      c.Nq = 190;
      c.Nk = 230;
      c.D = 128;
      c.causal = true;
      c.keep = 0.7;
      c.name = std::string("quant ") + enum_name(mode) + " " + dtype_name(t);
      check_case(c);
    }
}

// Same inputs → bit-identical outputs whatever the thread count; counters accumulate.
TEST(AttentionFast, DeterministicAcrossThreadsAndCountersAccumulate) {
  Case c;
  c.Nq = 333;
  c.Nk = 333;
  c.keep = 0.5;
  c.lambda = 2.0f;
  const Inputs in = make_inputs(c);
  const HostBlockMask mask = random_mask(c);
  const RunResult one = run(c, in, mask.view(), Backend::kCpuFast, 1);
  const RunResult two = run(c, in, mask.view(), Backend::kCpuFast, 2);
  ASSERT_TRUE(one.status.is_ok() && two.status.is_ok());
  EXPECT_EQ(0, std::memcmp(one.o.data(), two.o.data(), one.o.size() * sizeof(float)));
  EXPECT_EQ(one.counters, two.counters);
  EXPECT_FALSE(test::any_nan(one.o));

  std::vector<unsigned long long> counters(c.Hq * 2, 0);
  AttentionExtras extras;
  extras.pv_counters = counters.data();
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  test::HostTensor o = test::HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, c.dtype, c.layout);
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(block_sparse_attention(in.q.view, in.k.view, in.v.view, mask.view(), options_of(c),
                                       o.view, extras, ctx)
                    .is_ok());
  for (size_t i = 0; i < counters.size(); ++i) EXPECT_EQ(counters[i], 2 * one.counters[i]);
}

// Empty mask rows and rows that bottom-right causality leaves without keys: zeros, lse = -inf.
TEST(AttentionFast, RowsWithoutKeysAreZero) {
  Case c;
  c.Nq = 100;
  c.Nk = 40;  // bottom-right: rows < 60 see no key
  c.causal = true;
  c.align = CausalAlign::kBottomRight;
  c.keep = 0.999;  // sparse path: head 0's first query block is emptied by random_mask
  const Inputs in = make_inputs(c);
  const HostBlockMask mask = random_mask(c);
  const RunResult fast = run(c, in, mask.view(), Backend::kCpuFast);
  ASSERT_TRUE(fast.status.is_ok()) << fast.status.message();
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t r = 0; r < c.Nq; ++r) {
      const bool no_keys = r < 60 || (h == 0 && r < c.block_q);
      if (!no_keys) continue;
      EXPECT_EQ(fast.lse[h * c.Nq + r], -kInf) << "h " << h << " row " << r;
      for (int64_t d = 0; d < c.D; ++d)
        ASSERT_EQ(fast.o[(h * c.Nq + r) * c.D + d], 0.0f) << "h " << h << " row " << r;
    }
  check_case(c);
}

// The AVX2 kernels (used on CPUs without AVX-512F) on a mix of the cases above; on such a CPU
// this repeats them, elsewhere it is the only run of that code.
TEST(AttentionFast, Avx2KernelsMatchReference) {
  ASSERT_EQ(0, setenv("SPARGE_CPU_ISA", "avx2", 1));
  uint64_t seed = 90;
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (int64_t d : {64, 40, 256}) {
      Case c;
      c.dtype = t;
      c.D = d;
      c.Hq = 4;
      c.Hkv = 2;
      c.Nq = 150;
      c.Nk = 203;
      c.causal = d != 64;
      c.align = d == 40 ? CausalAlign::kBottomRight : CausalAlign::kTopLeft;
      c.layout = t == DType::kFloat16 ? Layout::kNHD : Layout::kHND;
      c.keep = 0.7;
      c.seed = ++seed;
      c.name = std::string("avx2 ") + dtype_name(t) + " D=" + std::to_string(d);
      check_case(c);
    }
  Case grid;
  grid.data = Data::kGrid;
  grid.grid_max = 1;
  grid.D = 16;
  grid.group = 1;
  grid.lambda = 0.0f;
  grid.Nq = 257;
  grid.Nk = 300;
  grid.keep = 0.8;
  grid.name = "avx2 lambda 0 group 1";
  check_case(grid);
  Case quant;
  quant.quant = QuantMode::kInt8Fp8;
  quant.D = 128;
  quant.causal = true;
  quant.name = "avx2 quant int8/fp8";
  check_case(quant);
  quant.quant = QuantMode::kInt8;
  quant.name = "avx2 quant int8";
  check_case(quant);
  ASSERT_EQ(0, unsetenv("SPARGE_CPU_ISA"));
}

TEST(AttentionFast, LargerShapesAtLevel2) {
  if (test_level() < 2) GTEST_SKIP() << "SPARGE_TEST_LEVEL < 2";
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    Case c;
    c.dtype = t;
    c.Hq = 8;
    c.Hkv = 2;
    c.Nq = c.Nk = 2049;
    c.D = 128;
    c.block_q = 128;
    c.block_k = 64;
    c.causal = true;
    c.keep = 0.5;
    c.lambda = 8.0f;
    c.name = std::string("level2 N=2049 D=128 ") + dtype_name(t);
    check_case(c, /*expect_equal_counters=*/false);
  }
}

}  // namespace
}  // namespace sparge
