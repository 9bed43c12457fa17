// GPU Stage 1 against the CPU reference mask: random and structured (video-grid, language-like)
// inputs, TopCdf and TopK, causal in both alignments, GQA, sinks, per-head thresholds, odd
// lengths. Reports the fraction of identical blocks (only exact ties may differ).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "common/validate.h"
#include "gpu_test_util.h"
#include "sparge/workloads.h"

namespace sparge::test {
namespace {

struct PredictCase {
  std::string workload;  // "random", "video", "llm"
  int64_t Hq, Hkv, Nq, Nk, D;
  DType dtype;
  Layout layout;
  bool causal;
  CausalAlign align;
  SelectMode select;
  float sim, cdf_or_topk;
  bool sink;
  int window_left = -1, window_right = -1;  // sliding window (-1: no limit)
  // > 0: rows stored with this many extra channels (head_dim D inside rows of D + row_pad), so
  // that a head dim that is not a multiple of 8 keeps the 16-byte strides cuda requires and
  // Stage 1 reads it through its element path.
  int64_t row_pad = 0;
};

// HostTensor::make with every row stored in D + row_pad channels (zeros after D) and the view's
// head dim left at D.
HostTensor make_padded_rows(const std::vector<float>& hnd, int64_t B, int64_t H, int64_t N, int64_t D,
                            DType dtype, Layout layout, int64_t row_pad) {
  std::vector<float> wide(size_t(B * H * N * (D + row_pad)), 0.0f);
  for (int64_t r = 0; r < B * H * N; ++r)
    std::copy(hnd.begin() + r * D, hnd.begin() + (r + 1) * D, wide.begin() + r * (D + row_pad));
  HostTensor t = HostTensor::make(wide, B, H, N, D + row_pad, dtype, layout, 1);
  t.view.head_dim = D;
  return t;
}

workloads::Workload make_workload(const PredictCase& c, uint64_t seed) {
  return named_workload(c.workload, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, seed);
}

class PredictVsReference : public ::testing::TestWithParam<PredictCase> {};

TEST_P(PredictVsReference, MasksAgreeExceptAtTies) {
  SPARGE_SKIP_WITHOUT_GPU();
  const PredictCase& c = GetParam();
  workloads::Workload w = make_workload(c, 11 + c.Nq);
  const int64_t B = w.batch, Hq = w.heads_q, Hkv = w.heads_kv, Nq = w.seq_q, Nk = w.seq_k, D = w.head_dim;
  HostTensor q = make_padded_rows(w.q, B, Hq, Nq, D, c.dtype, c.layout, c.row_pad);
  HostTensor k = make_padded_rows(w.k, B, Hkv, Nk, D, c.dtype, c.layout, c.row_pad);

  SparseOptions opts;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.select = c.select;
  opts.attention_sink = c.sink;
  opts.window_left = c.window_left;
  opts.window_right = c.window_right;
  std::vector<float> per_head_sim(Hq);
  for (int64_t h = 0; h < Hq; ++h) per_head_sim[h] = c.sim + 0.1f * float(h % 3) - 0.1f;
  opts.sim_threshold.per_head = per_head_sim.data();
  opts.select_value.value = c.cdf_or_topk;

  const MaskAgreement m = predict_on_cpu_and_gpu(q, k, opts);
  ASSERT_TRUE(m.ok);
  const HostBlockMask& ref = m.ref;
  const double frac = m.identical;
  const int64_t same = m.same, kept = m.kept;
  const AttentionStats stats = mask_stats(ref.view(), opts);
  std::printf("[ predict ] %s Hq%ld Nq%ld Nk%ld D%ld %s window (%d, %d): identical blocks %.5f (%ld/%zu), ref sparsity %.3f\n",
              c.workload.c_str(), long(Hq), long(Nq), long(Nk), long(D),
              c.select == SelectMode::kTopK ? "topk" : "topcdf", c.window_left, c.window_right, frac, long(same), size_t(m.flags), stats.sparsity());
  std::fflush(stdout);
  EXPECT_GE(frac, 0.995);
  EXPECT_GT(kept, 0);
}

const PredictCase kPredictCases[] = {
    {"random", 2, 1, 1, 1, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.9f, false},
    {"random", 4, 2, 1000, 1000, 128, DType::kBFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, SelectMode::kTopCdf, -0.5f, 0.9f, false},
    {"random", 2, 2, 129, 1000, 64, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight, SelectMode::kTopK, -0.5f, 0.3f, true},
    {"random", 2, 1, 1000, 129, 64, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight, SelectMode::kTopCdf, -0.5f, 0.5f, false},
    {"random", 2, 2, 17, 1000, 128, DType::kBFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, SelectMode::kTopK, 0.0f, 0.5f, false},
    {"video", 4, 4, 4096, 4096, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.5f, 0.9f, false},
    {"video", 2, 2, 2048, 2048, 128, DType::kFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, SelectMode::kTopK, 0.6f, 0.2f, true},
    {"llm", 4, 2, 2000, 2000, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.95f, true},
    // Sliding windows: Stage 1 chooses among the blocks inside the window only.
    {"llm", 4, 2, 2000, 2000, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.95f, true, 512, -1},
    {"random", 2, 2, 300, 1000, 64, DType::kFloat16, Layout::kNHD, false, CausalAlign::kBottomRight, SelectMode::kTopK, -0.5f, 0.5f, true, 200, 70},
    // Head dims the 16-byte chunks cover unevenly: 40 (five chunks on eight lanes), 256 (a warp
    // per row), 16 (two chunks), and 36 and 20 in padded rows (the element path).
    {"video", 2, 2, 1000, 1000, 40, DType::kFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.9f, false},
    {"llm", 2, 1, 777, 777, 256, DType::kBFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.95f, true},
    {"random", 2, 2, 300, 500, 16, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopK, -0.5f, 0.5f, false},
    {"video", 2, 2, 1000, 1000, 36, DType::kBFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.9f, false, -1, -1, 4},
    {"llm", 2, 1, 500, 700, 20, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight, SelectMode::kTopK, 0.3f, 0.3f, false, -1, -1, 4},
    // More than kWarpSelectMaxBlocks (512) key blocks: the selection's CTA-per-row kernel; just
    // below and at it, the warp kernel's largest instance (16 slots per lane, some empty).
    {"random", 2, 1, 300, 40000, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, -0.5f, 0.6f, false},
    {"random", 2, 1, 300, 40000, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopK, -0.5f, 0.1f, true},
    {"random", 2, 2, 700, 32700, 64, DType::kFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, -0.5f, 0.7f, false},
    {"random", 2, 2, 700, 32768, 64, DType::kFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopK, -0.5f, 0.2f, true},
    // Kv heads none of whose query blocks is similar skip the key side (key_side_needed): random
    // blocks' similarity is ~1/block_q, so per-head thresholds 0, 0.1, 0.2 (sim 0.1) leave kv
    // head 2 of 3 (query heads 4 and 5) without one and the others with some; then every head
    // without one, with top-k and the sink, and on rows of the long-row selection.
    {"random", 6, 3, 1000, 1500, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.1f, 0.9f, false},
    {"random", 4, 4, 2000, 2000, 64, DType::kFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, SelectMode::kTopK, 0.3f, 0.3f, true},
    {"random", 2, 1, 300, 40000, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, SelectMode::kTopCdf, 0.3f, 0.6f, false},
};
INSTANTIATE_TEST_SUITE_P(Shapes, PredictVsReference, ::testing::ValuesIn(kPredictCases));

TEST(PredictErrors, WorkspaceTooSmallIsReported) {
  SPARGE_SKIP_WITHOUT_GPU();
  DeviceBuffer buf(2 * 256 * 64);
  TensorView t = TensorView::contiguous(buf.get(), DType::kBFloat16, Layout::kHND, 1, 1, 256, 64, Device::kCUDA);
  HostBlockMask h(1, 1, 256, 256, 128, 64);
  DeviceMask m = DeviceMask::like(h.view());
  SparseOptions opts;
  const Status st = predict_block_mask(t, t, opts, m.mask, ExecContext{});
  EXPECT_EQ(st.code(), StatusCode::kWorkspaceTooSmall);
  EXPECT_NE(st.message().find("workspace"), std::string::npos) << st.message();
}

// End to end: sparse_attention (Stage 1 + 2 from the workspace) against the reference backend.
TEST(SparseAttentionEndToEnd, MatchesReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  workloads::Workload w = workloads::video_grid(1, 2, 8, 8, 16, 128, 3);  // N = 1024
  const int64_t B = 1, H = 2, N = w.seq_q, D = 128;
  HostTensor q = HostTensor::make(w.q, B, H, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor k = HostTensor::make(w.k, B, H, N, D, DType::kBFloat16, Layout::kHND);
  HostTensor v = HostTensor::make(w.v, B, H, N, D, DType::kBFloat16, Layout::kHND);
  SparseOptions opts;
  opts.sim_threshold.value = -0.5f;  // every block similar: selection decides
  opts.select_value.value = 0.9f;
  opts.pv_threshold.value = INFINITY;

  const EndToEnd run = sparse_attention_on_cpu_and_gpu(q, k, v, opts);
  ASSERT_TRUE(run.ok);
  const HostBlockMask& got = run.got_mask;
  const HostBlockMask& ref_mask = run.ref_mask;
  const AttentionStats stats = mask_stats(got.view(), false, CausalAlign::kTopLeft);
  const double err = measure::rel_l1(run.out, run.ref);
  std::printf("[ end-to-end ] video N=%ld sparsity %.3f rel_l1 %.2e\n", long(N), stats.sparsity(), err);
  std::fflush(stdout);
  EXPECT_GT(stats.sparsity(), 0.2) << "the case must skip tiles";
  EXPECT_EQ(got.to_dense(), ref_mask.to_dense());
  EXPECT_LE(err, 5e-3);
}

}  // namespace
}  // namespace sparge::test
