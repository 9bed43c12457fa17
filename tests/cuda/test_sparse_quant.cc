// Quantized sparse_attention on the GPU, where Stage 1's reading of q and k rides on the
// quantization pass (quantize/pool_tile.cuh: key mean, pooled blocks and similarities from the
// registers the pass quantizes): the one call must give the mask, the Stage-1 statistics and the
// output bits of the two calls that do not fuse (predict_block_mask, then block_sparse_attention
// with the same quantized options), and a mask that agrees with the CPU reference's except at
// ties; for both quantized modes (kInt8's pass makes no V codes). Structured inputs (video grid, language-like) make blocks similar, so the pooled rows and
// similarities decide the mask; odd lengths leave partial blocks in the pass's tiles; both head
// dims, dtypes and layouts, causal in both alignments, the three estimates. Outputs are poisoned
// before each run; NaN never passes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "sparge/build_info.h"

namespace sparge::test {
namespace {

struct FusedCase {
  std::string workload;  // named_workload
  int64_t Hq, Hkv, Nq, Nk, D;
  DType dtype;
  Layout layout;
  bool causal;
  CausalAlign align;
  SelectMode select;
  float sim, select_value;
  EstimateMode estimate = EstimateMode::kPooled;
  float target_error = 0.0f;
};

std::string name(const FusedCase& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s_H%ld/%ld_Nq%ld_Nk%ld_D%ld_%s_%s_%s_%s%g_sim%g_%s_te%g",
                c.workload.c_str(), long(c.Hq), long(c.Hkv), long(c.Nq), long(c.Nk), long(c.D),
                c.dtype == DType::kBFloat16 ? "bf16" : "fp16", c.layout == Layout::kHND ? "HND" : "NHD",
                c.causal ? (c.align == CausalAlign::kTopLeft ? "causalTL" : "causalBR") : "full",
                c.select == SelectMode::kTopK ? "topk" : "cdf", c.select_value, c.sim,
                c.estimate == EstimateMode::kPooled ? "pooled" : "sampled", c.target_error);
  return buf;
}

// kInt8Fp8 runs where sm90ws does, kInt8 on every GPU; SPARGE_FAST_BUILD keeps the quantized
// kernels' bf16 dense instance of head dim 128 only.
bool quant_runs(const FusedCase& c, QuantMode mode) {
  return (mode == QuantMode::kInt8 || sm90ws_runs()) &&
         (!SPARGE_FAST_BUILD || (c.dtype == DType::kBFloat16 && !c.causal && c.D == 128));
}

struct GpuRun {
  HostBlockMask mask;
  std::vector<float> out;
  HeadStats stats;
};

// One GPU run: fused = sparse_attention; else predict_block_mask then block_sparse_attention.
GpuRun run_gpu(const HostTensor& q, const HostTensor& k, const HostTensor& v,
               const SparseOptions& opts, bool fused) {
  GpuRun r;
  const TensorView& qv = q.view;
  const int64_t B = qv.batch, H = qv.heads, Nq = qv.tokens, Nk = k.view.tokens, D = qv.head_dim;
  const std::size_t heads = std::size_t(B * H);
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k), dv = DeviceTensor::upload(v);
  DeviceTensor dout = DeviceTensor::upload(HostTensor::poisoned(B, H, Nq, D, qv.dtype, Layout::kHND));
  r.mask = HostBlockMask(B, H, Nq, Nk, opts.block_q, opts.block_k);
  DeviceMask dmask = DeviceMask::like(r.mask.view());
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes);
  // Poisoned scratch: a pooled value the pass failed to write would be NaN, not a stale zero.
  EXPECT_EQ(cudaMemset(ws.get(), 0xff, ws_bytes), cudaSuccess);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  DeviceBuffer d_select(heads * sizeof(float)), d_error(heads * sizeof(float)),
      d_forced(heads * sizeof(int64_t));
  AttentionExtras extras;
  extras.stage1 = {static_cast<float*>(d_select.get()), static_cast<float*>(d_error.get()),
                   static_cast<int64_t*>(d_forced.get())};
  Status st;
  if (fused) {
    st = sparse_attention(dq.view, dk.view, dv.view, opts, dout.view, extras, ctx, &dmask.mask);
  } else {
    st = predict_block_mask(dq.view, dk.view, dv.view, opts, dmask.mask, ctx, extras.stage1);
    if (st.is_ok())
      st = block_sparse_attention(dq.view, dk.view, dv.view, dmask.mask, opts, dout.view, {}, ctx);
  }
  EXPECT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (!st.is_ok()) return r;
  r.mask = dmask.download();
  r.out = dout.download();
  r.stats = {std::vector<float>(heads), std::vector<float>(heads), std::vector<int64_t>(heads)};
  cudaMemcpy(r.stats.select_value.data(), d_select.get(), heads * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(r.stats.error_estimate.data(), d_error.get(), heads * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(r.stats.forced_tiles.data(), d_forced.get(), heads * sizeof(int64_t), cudaMemcpyDeviceToHost);
  return r;
}

double agreement(const HostBlockMask& a, const HostBlockMask& b) {
  const std::vector<uint8_t> x = a.to_dense(), y = b.to_dense();
  if (x.size() != y.size() || x.empty()) return 0.0;
  int64_t same = 0;
  for (size_t i = 0; i < x.size(); ++i) same += x[i] == y[i];
  return double(same) / double(x.size());
}

class FusedStage1 : public ::testing::TestWithParam<std::tuple<FusedCase, QuantMode>> {};

TEST_P(FusedStage1, EqualsTheTwoCallsAndTheReferenceMask) {
  SPARGE_SKIP_WITHOUT_GPU();
  const auto& [c, mode] = GetParam();
  if (!quant_runs(c, mode)) GTEST_SKIP() << "the quantized kernel does not run here (test_attention_quant checks the refusal)";
  workloads::Workload w = named_workload(c.workload, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, 71 + c.Nq);
  const int64_t B = w.batch, Hq = w.heads_q, Hkv = w.heads_kv, Nq = w.seq_q, Nk = w.seq_k, D = w.head_dim;
  HostTensor q = HostTensor::make(w.q, B, Hq, Nq, D, c.dtype, c.layout);
  HostTensor k = HostTensor::make(w.k, B, Hkv, Nk, D, c.dtype, c.layout);
  HostTensor v = HostTensor::make(w.v, B, Hkv, Nk, D, c.dtype, c.layout);
  SparseOptions opts;
  opts.quant = mode;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.select = c.select;
  opts.sim_threshold.value = c.sim;
  opts.select_value.value = c.select_value;
  opts.estimate = c.estimate;
  opts.target_error = c.target_error;
  opts.pv_threshold.value = INFINITY;

  const GpuRun fused = run_gpu(q, k, v, opts, true);
  const GpuRun split = run_gpu(q, k, v, opts, false);
  ASSERT_FALSE(fused.out.empty());
  ASSERT_FALSE(split.out.empty());
  const Status valid = detail::validate_mask_contents(fused.mask.view());
  ASSERT_TRUE(valid.is_ok()) << valid.message();

  // The reference: the CPU's Stage 1 (and its quantized emulation) on fp32 copies.
  const EndToEnd ref = sparse_attention_on_cpu_and_gpu(q, k, v, opts);
  ASSERT_TRUE(ref.ok);
  const double vs_split = agreement(fused.mask, split.mask), vs_ref = agreement(fused.mask, ref.ref_mask);
  const AttentionStats stats = mask_stats(fused.mask.view(), opts);
  const bool same_mask = fused.mask.to_dense() == split.mask.to_dense();
  const bool same_bits =
      same_mask && std::memcmp(fused.out.data(), split.out.data(), fused.out.size() * sizeof(float)) == 0;
  const double err = measure::rel_l1(fused.out, ref.ref);
  std::printf("[ fused ] %s %s sparsity %.3f, mask = two calls %.5f, = cpu %.5f, output bits equal "
              "%d, rel_l1 vs cpu emulation %.2e\n",
              enum_name(mode), name(c).c_str(), stats.sparsity(), vs_split, vs_ref, int(same_bits), err);
  std::fflush(stdout);
  EXPECT_FALSE(any_nan(fused.out)) << name(c);
  EXPECT_GT(stats.sparsity(), 0.05) << "the case must skip tiles: " << name(c);
  // The fused pooling sums in another order (doubles may differ in the last bits): equal masks
  // except at exact ties, and then equal output bits (the same codes, the same kernel).
  EXPECT_GE(vs_split, 0.999) << name(c);
  if (same_mask) EXPECT_TRUE(same_bits) << name(c);
  EXPECT_GE(vs_ref, 0.995) << name(c);
  for (size_t h = 0; h < fused.stats.select_value.size(); ++h) {
    EXPECT_EQ(fused.stats.forced_tiles[h], split.stats.forced_tiles[h]) << name(c) << " head " << h;
    EXPECT_NEAR(fused.stats.select_value[h], split.stats.select_value[h], 1e-6) << name(c) << " head " << h;
  }
  // Against the CPU's emulation with the CPU's own mask (tests/cuda/test_attention_quant.cc's
  // bounds, a little wider for the odd tile a tie flips).
  const double bound = mode == QuantMode::kInt8 ? (c.dtype == DType::kBFloat16 ? 1e-2 : 5e-3)
                                                : (c.D == 64 ? 2e-2 : 1.5e-2);
  EXPECT_LE(err, bound) << name(c);
}

const FusedCase kFusedCases[] = {
    {"video", 2, 2, 2048, 2048, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft,
     SelectMode::kTopCdf, 0.5f, 0.9f},
    {"video", 4, 4, 1024, 1024, 64, DType::kFloat16, Layout::kNHD, false, CausalAlign::kTopLeft,
     SelectMode::kTopK, 0.6f, 0.3f},
    {"llm", 4, 2, 2000, 2000, 128, DType::kBFloat16, Layout::kNHD, true, CausalAlign::kTopLeft,
     SelectMode::kTopCdf, 0.3f, 0.95f},
    {"llm", 2, 1, 777, 777, 64, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight,
     SelectMode::kTopK, 0.3f, 0.3f},
    {"random", 2, 2, 300, 1000, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft,
     SelectMode::kTopCdf, -0.5f, 0.5f},
    {"video", 2, 2, 2048, 2048, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft,
     SelectMode::kTopCdf, 0.5f, 0.9f, EstimateMode::kSampledRows},
    {"video", 2, 2, 2048, 2048, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft,
     SelectMode::kTopCdf, 0.5f, 0.9f, EstimateMode::kPooled, 0.05f},
};
INSTANTIATE_TEST_SUITE_P(Shapes, FusedStage1,
                         ::testing::Combine(::testing::ValuesIn(kFusedCases),
                                            ::testing::Values(QuantMode::kInt8Fp8, QuantMode::kInt8)),
                         test_name_with_mode<FusedCase>);

}  // namespace
}  // namespace sparge::test
