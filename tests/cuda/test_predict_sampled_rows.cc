// GPU Stage 1 with estimate = sampled_rows against the CPU mask (src/cpu/predict.cc, itself
// checked against an oracle in tests/cpu/test_sampled_rows.cc): random and structured inputs,
// TopCdf and TopK, causal in both alignments, GQA, sinks, odd lengths, tail blocks with fewer
// rows than sample_rows, sample_rows above one 16-row unit (9, 128: a block over whole units).
// Both sides are fp32 in different orders (the GPU on the tensor cores, the CPU on the error
// target's kernels, masks included): only near-ties may differ.
// sample_rows 3 and 20 leave empty row slots in the GPU's 16-row units. Small grids split the
// keys over CTAs (two launches, sampled_rows.cuh); large ones run both passes in one.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/validate.h"
#include "gpu_test_util.h"
#include "sparge/workloads.h"

namespace sparge::test {
namespace {

struct SampledCase {
  std::string workload;  // "random", "video", "llm"
  int64_t Hq, Hkv, Nq, Nk, D;
  DType dtype;
  Layout layout;
  bool causal;
  CausalAlign align;
  SelectMode select;
  float sim, select_value;
  int sample_rows;
  bool sink;
  int block_k = 64;  // 128: a key block over two of the estimate's 64-key steps
};

workloads::Workload make_workload(const SampledCase& c, uint64_t seed) {
  return named_workload(c.workload, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, seed);
}

class SampledRowsVsCpu : public ::testing::TestWithParam<SampledCase> {};

TEST_P(SampledRowsVsCpu, MasksAgreeExceptAtTies) {
  SPARGE_SKIP_WITHOUT_GPU();
  const SampledCase& c = GetParam();
  workloads::Workload w = make_workload(c, 17 + c.Nq);
  const int64_t B = w.batch, Hq = w.heads_q, Hkv = w.heads_kv, Nq = w.seq_q, Nk = w.seq_k, D = w.head_dim;
  HostTensor q = HostTensor::make(w.q, B, Hq, Nq, D, c.dtype, c.layout, 1);
  HostTensor k = HostTensor::make(w.k, B, Hkv, Nk, D, c.dtype, c.layout, 1);

  SparseOptions opts;
  opts.estimate = EstimateMode::kSampledRows;
  opts.sample_rows = c.sample_rows;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.select = c.select;
  opts.attention_sink = c.sink;
  std::vector<float> per_head_sim(Hq);
  for (int64_t h = 0; h < Hq; ++h) per_head_sim[h] = c.sim + 0.1f * float(h % 3) - 0.1f;
  opts.sim_threshold.per_head = per_head_sim.data();
  opts.select_value.value = c.select_value;
  opts.block_k = c.block_k;

  const MaskAgreement m = predict_on_cpu_and_gpu(q, k, opts);
  ASSERT_TRUE(m.ok);
  const HostBlockMask& ref = m.ref;
  const double frac = m.identical;
  const int64_t same = m.same, kept = m.kept;
  const AttentionStats stats = mask_stats(ref.view(), c.causal, c.align);
  std::printf("[ sampled_rows ] %s Hq%ld Nq%ld Nk%ld D%ld bk%d rows %d %s: identical blocks %.5f (%ld/%zu), "
              "ref sparsity %.3f\n",
              c.workload.c_str(), long(Hq), long(Nq), long(Nk), long(D), c.block_k, c.sample_rows,
              c.select == SelectMode::kTopK ? "topk" : "topcdf", frac, long(same), size_t(m.flags), stats.sparsity());
  std::fflush(stdout);
  EXPECT_GE(frac, 0.995);
  EXPECT_GT(kept, 0);

  // Runs are bit-reproducible (fixed summation orders, no atomics).
  const MaskAgreement again = predict_on_cpu_and_gpu(q, k, opts);
  ASSERT_TRUE(again.ok);
  EXPECT_EQ(again.got.to_dense(), m.got.to_dense());
}

constexpr auto kBf16 = DType::kBFloat16;
constexpr auto kFp16 = DType::kFloat16;
constexpr auto kTL = CausalAlign::kTopLeft;
constexpr auto kBR = CausalAlign::kBottomRight;
constexpr auto kCdf = SelectMode::kTopCdf;
constexpr auto kTopK = SelectMode::kTopK;

const SampledCase kSampledCases[] = {
    // One token; then a tail block of 2 rows (Nq = 258) under sample_rows 4.
    {"random", 2, 1, 1, 1, 64, kBf16, Layout::kHND, false, kTL, kCdf, -0.5f, 0.9f, 4, false},
    {"random", 4, 2, 258, 1000, 128, kBf16, Layout::kNHD, true, kTL, kCdf, -0.5f, 0.9f, 4, false},
    {"random", 2, 2, 129, 1000, 64, kFp16, Layout::kHND, true, kBR, kTopK, -0.5f, 0.3f, 4, true},
    {"random", 2, 1, 1000, 129, 64, kFp16, Layout::kHND, true, kBR, kCdf, -0.5f, 0.5f, 7, false},
    {"random", 2, 2, 17, 1000, 96, kBf16, Layout::kNHD, false, kTL, kTopK, 0.0f, 0.5f, 1, false},
    {"video", 4, 4, 4096, 4096, 64, kBf16, Layout::kHND, false, kTL, kCdf, 0.5f, 0.9f, 4, false},
    {"video", 2, 2, 2048, 2048, 128, kFp16, Layout::kNHD, false, kTL, kTopK, 0.6f, 0.2f, 9, true},
    {"llm", 4, 2, 2000, 2000, 128, kBf16, Layout::kHND, true, kTL, kCdf, 0.3f, 0.95f, 4, true},
    {"llm", 4, 1, 3001, 3001, 64, kFp16, Layout::kNHD, true, kTL, kCdf, -0.5f, 0.98f, 128, false},
    {"llm", 8, 2, 8192, 8192, 128, kBf16, Layout::kHND, true, kTL, kCdf, -0.5f, 0.95f, 4, false},
    {"video", 2, 2, 3000, 3000, 64, kBf16, Layout::kHND, false, kTL, kCdf, 0.3f, 0.9f, 3, false},
    {"llm", 2, 1, 4000, 4100, 128, kFp16, Layout::kNHD, true, kBR, kTopK, -0.5f, 0.2f, 20, true},
    // 260 heads: a chunk of 256 fills the GPU in one launch (SampledRowsPass::kWhole), the chunk
    // of 4 heads splits its keys (every case above splits, but the one of 128 rows).
    {"video", 260, 260, 256, 256, 64, kBf16, Layout::kHND, false, kTL, kCdf, -0.5f, 0.9f, 4, false},
    // Key blocks of 128 keys (two 64-key steps each, the last one short), causal with a tail.
    {"llm", 4, 2, 3000, 3000, 128, kBf16, Layout::kHND, true, kTL, kCdf, -0.5f, 0.95f, 4, false, 128},
    {"video", 2, 2, 2000, 2000, 64, kFp16, Layout::kNHD, false, kTL, kTopK, 0.3f, 0.2f, 2, false, 128},
};
INSTANTIATE_TEST_SUITE_P(Shapes, SampledRowsVsCpu, ::testing::ValuesIn(kSampledCases));

// End to end: sparse_attention with the sampled_rows mask on the GPU against the reference backend.
TEST(SampledRowsEndToEnd, MatchesReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  workloads::Workload w = workloads::language_like(1, 2, 1, 1000, 128, 5);
  const int64_t B = 1, Hq = 2, Hkv = 1, N = w.seq_q, D = 128;
  HostTensor q = HostTensor::make(w.q, B, Hq, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor k = HostTensor::make(w.k, B, Hkv, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor v = HostTensor::make(w.v, B, Hkv, N, D, DType::kBFloat16, Layout::kHND);
  SparseOptions opts;
  opts.causal = true;
  opts.estimate = EstimateMode::kSampledRows;
  opts.sim_threshold.value = -0.5f;  // every block similar: selection decides
  opts.select_value.value = 0.95f;
  opts.pv_threshold.value = INFINITY;

  const EndToEnd run = sparse_attention_on_cpu_and_gpu(q, k, v, opts);
  ASSERT_TRUE(run.ok);
  const HostBlockMask& got = run.got_mask;
  const HostBlockMask& ref_mask = run.ref_mask;
  const AttentionStats stats = mask_stats(got.view(), true, CausalAlign::kTopLeft);
  const double err = measure::rel_l1(run.out, run.ref);
  std::printf("[ end-to-end ] llm-like N=%ld sampled_rows sparsity %.3f rel_l1 %.2e\n", long(N),
              stats.sparsity(), err);
  std::fflush(stdout);
  EXPECT_GT(stats.sparsity(), 0.2) << "the case must skip tiles";
  EXPECT_EQ(got.to_dense(), ref_mask.to_dense());
  EXPECT_LE(err, 5e-3);
}

}  // namespace
}  // namespace sparge::test
