// GPU Stage 1 with target_error against the CPU (src/cpu/predict.cc, itself checked against
// measured errors in tests/cpu/test_error_target.cc): random, video-like and language-like
// inputs, causal in both alignments, GQA, sinks, the similarity gate on and off, odd lengths.
// Compares the masks, each head's chosen τ, the estimates and the tiles the gate forced. Both
// estimate in fp32 with different summation orders: the CPU with AVX2 / AVX-512 kernels
// (src/cpu/error_target.cc), the GPU on the tensor cores (scores exact products with fp32
// accumulation, P split into 16-bit parts that hold fp32's precision for P·V:
// src/cuda/predict/error_target_tiles.cuh), so only near-ties may differ (of masses, or of an
// estimate with target / margin, within ~1e-6); a different choice of τ for a head shows as a
// large mask difference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "sparge/workloads.h"

namespace sparge::test {
namespace {

struct TargetCase {
  std::string workload;  // "random", "video", "llm"
  int64_t Hq, Hkv, Nq, Nk, D;
  DType dtype;
  bool causal;
  CausalAlign align;
  float sim, target;
  bool sink;
};

workloads::Workload make_workload(const TargetCase& c, uint64_t seed) {
  return named_workload(c.workload, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, seed);
}

class ErrorTargetVsCpu : public ::testing::TestWithParam<TargetCase> {};

TEST_P(ErrorTargetVsCpu, SameChoiceAndMask) {
  SPARGE_SKIP_WITHOUT_GPU();
  const TargetCase& c = GetParam();
  workloads::Workload w = make_workload(c, 29 + c.Nq);  // fresh inputs per shape
  const int64_t B = w.batch, Hq = w.heads_q, Hkv = w.heads_kv, Nq = w.seq_q, Nk = w.seq_k, D = w.head_dim;
  HostTensor q = HostTensor::make(w.q, B, Hq, Nq, D, c.dtype, Layout::kHND, 1);
  HostTensor k = HostTensor::make(w.k, B, Hkv, Nk, D, c.dtype, Layout::kHND, 1);
  HostTensor v = HostTensor::make(w.v, B, Hkv, Nk, D, c.dtype, Layout::kHND, 1);
  SparseOptions opts;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.sim_threshold.value = c.sim;
  opts.attention_sink = c.sink;
  opts.target_error = c.target;

  HeadStats cpu, gpu;
  const MaskAgreement m = predict_on_cpu_and_gpu(q, k, opts, &v, &cpu, &gpu);
  ASSERT_TRUE(m.ok);
  const AttentionStats stats = mask_stats(m.ref.view(), c.causal, c.align);
  std::printf("[ error target ] %s Hq%ld Nq%ld Nk%ld D%ld target %.3f: identical blocks %.5f, "
              "ref sparsity %.3f\n", c.workload.c_str(), long(Hq), long(Nq), long(Nk), long(D),
              double(c.target), m.identical, stats.sparsity());
  for (int64_t h = 0; h < Hq; ++h)
    std::printf("  head %ld: tau cpu %.4f gpu %.4f, estimate cpu %.5f gpu %.5f, forced %ld / %ld\n",
                long(h), cpu.select_value[h], gpu.select_value[h], cpu.error_estimate[h],
                gpu.error_estimate[h], long(cpu.forced_tiles[h]), long(gpu.forced_tiles[h]));
  std::fflush(stdout);
  EXPECT_GE(m.identical, 0.995);
  for (int64_t h = 0; h < Hq; ++h) {
    EXPECT_EQ(cpu.select_value[h], gpu.select_value[h]) << "head " << h;
    EXPECT_NEAR(cpu.error_estimate[h], gpu.error_estimate[h], 1e-5 + 1e-3 * cpu.error_estimate[h])
        << "head " << h;
    EXPECT_EQ(cpu.forced_tiles[h], gpu.forced_tiles[h]) << "head " << h;
  }

  // Runs are bit-reproducible (fixed summation orders; the forced count is an integer sum).
  const MaskAgreement again = predict_on_cpu_and_gpu(q, k, opts, &v);
  ASSERT_TRUE(again.ok);
  EXPECT_EQ(again.got.to_dense(), m.got.to_dense());
}

constexpr auto kBf16 = DType::kBFloat16;
constexpr auto kFp16 = DType::kFloat16;
constexpr auto kTL = CausalAlign::kTopLeft;
constexpr auto kBR = CausalAlign::kBottomRight;

const TargetCase kTargetCases[] = {
    {"random", 2, 1, 1, 1, 64, kBf16, false, kTL, -0.5f, 0.02f, false},
    {"random", 4, 2, 258, 1000, 128, kBf16, true, kTL, -0.5f, 0.05f, false},
    {"random", 2, 2, 1000, 129, 64, kFp16, true, kBR, 0.6f, 0.02f, true},
    {"video", 4, 4, 4096, 4096, 64, kBf16, false, kTL, -0.5f, 0.02f, false},
    {"video", 2, 2, 2048, 2048, 128, kFp16, false, kTL, 0.5f, 0.05f, true},
    {"llm", 4, 2, 2000, 2000, 128, kBf16, true, kTL, -0.5f, 0.02f, true},
    {"llm", 4, 1, 3001, 3001, 64, kFp16, true, kTL, 0.3f, 0.05f, false},
    {"llm", 8, 2, 8192, 8192, 128, kBf16, true, kTL, -0.5f, 0.02f, false},
};
INSTANTIATE_TEST_SUITE_P(Shapes, ErrorTargetVsCpu, ::testing::ValuesIn(kTargetCases));

// End to end: sparse_attention with target_error on the GPU against the reference backend (same
// mask, same output; the reference's error against dense attention is tests/cpu's concern).
TEST(ErrorTargetEndToEnd, MatchesReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  workloads::Workload w = workloads::language_like(1, 2, 1, 2048, 128, 7);
  const int64_t B = 1, Hq = 2, Hkv = 1, N = w.seq_q, D = 128;
  HostTensor q = HostTensor::make(w.q, B, Hq, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor k = HostTensor::make(w.k, B, Hkv, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor v = HostTensor::make(w.v, B, Hkv, N, D, DType::kBFloat16, Layout::kHND);
  SparseOptions opts;
  opts.causal = true;
  opts.sim_threshold.value = -0.5f;
  opts.target_error = 0.05f;
  const EndToEnd run = sparse_attention_on_cpu_and_gpu(q, k, v, opts);
  ASSERT_TRUE(run.ok);
  const AttentionStats stats = mask_stats(run.got_mask.view(), true, CausalAlign::kTopLeft);
  const double err = measure::rel_l1(run.out, run.ref);
  std::printf("[ end-to-end ] llm-like N=%ld target 0.05: sparsity %.3f rel_l1 vs cpu %.2e\n", long(N),
              stats.sparsity(), err);
  std::fflush(stdout);
  EXPECT_GT(stats.sparsity(), 0.3);
  EXPECT_EQ(run.got_mask.to_dense(), run.ref_mask.to_dense());
  EXPECT_LE(err, 5e-3);
}

}  // namespace
}  // namespace sparge::test
