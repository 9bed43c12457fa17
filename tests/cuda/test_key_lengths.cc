// Key padding on the GPU (AttentionMask::key_lengths, a right-padded batch): Stage 1 and every
// attention kernel against the CPU reference, which defines the semantics (docs/method.md,
// "Attention masks"). Padding keys hold large values, so that a padding key that leaked into a
// softmax would dominate its row; lengths cut blocks mid-way, at a block edge, to one key and
// to none. Checked: the predicted masks equal the CPU's (pooled and sampled_rows estimates,
// TopCdf and top-k, causal both alignments, a window, GQA, the sink); the outputs and LSE of
// both stages match the reference; a caller's mask with tiles past a length computes them as
// skipped (the λ counters equal the CPU's); the quantized kernel matches the CPU emulation.
// Top-k with κ = 1 (every visible tile, Stage 1 skipped) is among the cases. Outputs are
// poisoned first, NaN never passes. The default kernel runs here; ctest runs the file again under
// SPARGE_CUDA_KERNEL=sm80 / sm90 / sm90ws.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

struct PadCase {
  std::string name;
  int64_t Hq, Hkv, N, D;
  std::vector<int32_t> lengths;  // one per batch entry
  bool causal;
  CausalAlign align;
  int window_left;
  EstimateMode estimate;
  SelectMode select;
  float select_value;
  bool sink;
  DType dtype;
};

// Video-like rows for every batch entry where N is whole frames of 8 × 8 tokens (so that Stage 1
// has structure to select from), Gaussian ones otherwise, with the keys past each entry's length
// overwritten by large values: k rows of 30 on channel 0 (a query with a positive channel 0 would
// put its mass there), v rows of 1000. GQA: kv head h is the workload's head h.
struct PaddedInputs {
  HostTensor q, k, v;
};

PaddedInputs make_inputs(const PadCase& c, uint64_t seed) {
  const int64_t B = int64_t(c.lengths.size()), N = c.N, D = c.D;
  const workloads::Workload w =
      N % 64 == 0 ? workloads::video_grid(B, c.Hq, N / 64, 8, 8, D, seed)
                  : workloads::random_gaussian(B, c.Hq, c.Hq, N, N, D, seed);
  std::vector<float> k(B * c.Hkv * N * D), v(k.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h)
      for (int64_t t = 0; t < N; ++t) {
        const int64_t to = ((b * c.Hkv + h) * N + t) * D, from = ((b * c.Hq + h) * N + t) * D;
        const bool pad = t >= c.lengths[b];
        for (int64_t d = 0; d < D; ++d) {
          k[to + d] = pad ? (d == 0 ? 30.0f : 0.0f) : w.k[from + d];
          v[to + d] = pad ? 1000.0f : w.v[from + d];
        }
      }
  return {HostTensor::make(w.q, B, c.Hq, N, D, c.dtype, Layout::kHND),
          HostTensor::make(k, B, c.Hkv, N, D, c.dtype, Layout::kHND),
          HostTensor::make(v, B, c.Hkv, N, D, c.dtype, Layout::kHND)};
}

// Whether this process has the attention instance a case needs (SPARGE_FAST_BUILD keeps bf16,
// head dim 128, dense; head dim 256 runs on the sm90ws kernel only).
bool instance_runs(const PadCase& c) {
  const bool banded = c.causal || c.window_left >= 0;
  if (SPARGE_FAST_BUILD && !(c.D == 128 && c.dtype == DType::kBFloat16 && !banded)) return false;
  return c.D != 256 || sm90ws_runs();
}

SparseOptions options_of(const PadCase& c) {
  SparseOptions o;
  o.causal = c.causal;
  o.causal_align = c.align;
  o.window_left = c.window_left;
  o.estimate = c.estimate;
  o.select = c.select;
  o.select_value.value = c.select_value;
  o.sim_threshold.value = -0.5f;  // every block similar: the selection decides
  o.attention_sink = c.sink;
  o.pv_threshold.value = INFINITY;
  return o;
}

AttentionMask padding(const std::vector<int32_t>& lengths, Device device) {
  AttentionMask m;
  m.device = device;
  m.key_lengths = lengths.data();
  return m;
}

class KeyLengths : public ::testing::TestWithParam<PadCase> {};

TEST_P(KeyLengths, BothStagesMatchTheReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  const PadCase& c = GetParam();
  if (!instance_runs(c)) GTEST_SKIP() << "no attention instance for " << c.name << " in this build / kernel";
  const int64_t B = int64_t(c.lengths.size());
  const PaddedInputs in = make_inputs(c, 11 + c.N);
  const SparseOptions opts = options_of(c);

  // CPU reference: fp32 copies of the rounded inputs, host lengths.
  HostTensor q32 = as_fp32(in.q), k32 = as_fp32(in.k), v32 = as_fp32(in.v);
  HostTensor ref = HostTensor::poisoned(B, c.Hq, c.N, c.D, DType::kFloat32, Layout::kHND);
  HostBlockMask ref_mask(B, c.Hq, c.N, c.N, opts.block_q, opts.block_k);
  std::vector<float> ref_lse(B * c.Hq * c.N, NAN);
  ExecContext ref_ctx;
  ref_ctx.backend = Backend::kReference;
  const Status cpu = sparse_attention(q32.view, k32.view, v32.view, padding(c.lengths, Device::kCPU),
                                      opts, ref.view, AttentionExtras{ref_lse.data()}, ref_ctx,
                                      &ref_mask.view());
  ASSERT_TRUE(cpu.is_ok()) << cpu.message();

  // GPU: device lengths, the mask and Stage-1 scratch from the workspace.
  DeviceBuffer dlen(sizeof(int32_t) * B);
  cudaMemcpy(dlen.get(), c.lengths.data(), dlen.bytes(), cudaMemcpyHostToDevice);
  AttentionMask dpad;
  dpad.device = Device::kCUDA;
  dpad.key_lengths = static_cast<const int32_t*>(dlen.get());
  const MaskedGpuRun gpu =
      masked_sparse_attention_on_gpu(in.q, in.k, in.v, dpad, opts, ref_mask.view(), Layout::kHND);
  ASSERT_TRUE(gpu.status.is_ok()) << gpu.status.message();
  const HostBlockMask& got = gpu.mask;
  const std::vector<float>& out = gpu.out;
  const std::vector<float>& lse = gpu.lse;
  const std::vector<float> want = ref.to_hnd();
  const double lse_err = lse_max_error(lse, ref_lse);
  const AttentionStats stats = mask_stats(got.view(), c.causal, c.align);
  const double err = measure::rel_l1(out, want);
  std::printf("[ key lengths ] %s: sparsity %.3f, rel_l1 %.2e, lse err %.2e\n", c.name.c_str(),
              stats.sparsity(), err, lse_err);
  std::fflush(stdout);
  // The pooled map is double on both sides, the sampled rows fp32 in different orders: only
  // (near-)ties of masses may differ.
  const std::vector<uint8_t> a = got.to_dense(), r = ref_mask.to_dense();
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == r[i];
  EXPECT_GE(double(same), 0.998 * double(a.size())) << c.name;
  EXPECT_FALSE(any_nan(out)) << c.name;
  EXPECT_LE(err, c.dtype == DType::kBFloat16 ? 8e-3 : 2e-3) << c.name;
  EXPECT_LE(lse_err, 2e-2) << c.name;
  // A row of an entry with no real key sees nothing: zeros and lse -inf, as the reference.
  for (int64_t b = 0; b < B; ++b)
    if (c.lengths[b] == 0)
      for (int64_t i = 0; i < c.Hq * c.N; ++i)
        EXPECT_TRUE(std::isinf(lse[b * c.Hq * c.N + i]) && lse[b * c.Hq * c.N + i] < 0) << c.name;
}

const PadCase kPadCases[] = {
    {"full_topcdf_pooled", 2, 2, 1024, 128, {1024, 700, 513}, false, CausalAlign::kTopLeft, -1,
     EstimateMode::kPooled, SelectMode::kTopCdf, 0.9f, false, DType::kBFloat16},
    {"full_topk_sink_gqa", 4, 2, 768, 64, {768, 64, 1, 0}, false, CausalAlign::kTopLeft, -1,
     EstimateMode::kPooled, SelectMode::kTopK, 0.3f, true, DType::kFloat16},
    {"causal_tl_sampled", 2, 1, 1024, 128, {1000, 333}, true, CausalAlign::kTopLeft, -1,
     EstimateMode::kSampledRows, SelectMode::kTopCdf, 0.95f, false, DType::kBFloat16},
    {"causal_br_window", 2, 2, 1024, 64, {900, 200}, true, CausalAlign::kBottomRight, 300,
     EstimateMode::kPooled, SelectMode::kTopCdf, 0.9f, true, DType::kFloat16},
    {"window_d256", 2, 2, 512, 256, {512, 129}, false, CausalAlign::kTopLeft, 200,
     EstimateMode::kSampledRows, SelectMode::kTopK, 0.5f, false, DType::kBFloat16},
    // Top-k with κ = 1 keeps every visible tile: both backends write that mask without Stage 1
    // (detail::selection_keeps_every_tile; the GPU's keep_visible_tiles kernel).
    {"topk1_causal_br", 2, 1, 1000, 128, {1000, 450, 3}, true, CausalAlign::kBottomRight, -1,
     EstimateMode::kPooled, SelectMode::kTopK, 1.0f, true, DType::kBFloat16},
    {"topk1_dense", 2, 2, 640, 128, {640, 640}, false, CausalAlign::kTopLeft, -1,
     EstimateMode::kPooled, SelectMode::kTopK, 1.0f, false, DType::kBFloat16},
};
INSTANTIATE_TEST_SUITE_P(Padding, KeyLengths, ::testing::ValuesIn(kPadCases),
                         [](const ::testing::TestParamInfo<PadCase>& info) { return info.param.name; });

// A caller's block mask that keeps every allowed tile, tiles past the lengths included: the
// kernels compute those as skipped (their keys are all masked) with the CPU's λ counters, and the
// outputs match. Also in quantized mode against the CPU emulation (where the quantized kernel
// runs: sm_90 with the sm90ws kernel, head dim 128 in a fast build).
TEST(KeyLengthsDenseMask, TilesPastTheLengthCountAsSkipped) {
  SPARGE_SKIP_WITHOUT_GPU();
  const PadCase c{"dense", 2, 1, 700, 128, {700, 190, 0}, true, CausalAlign::kBottomRight, -1,
                  EstimateMode::kPooled, SelectMode::kTopCdf, 1.0f, false, DType::kBFloat16};
  if (!instance_runs(c)) GTEST_SKIP() << "no banded bf16 d128 instance in this build";
  const int64_t B = int64_t(c.lengths.size());
  const PaddedInputs in = make_inputs(c, 5);
  HostBlockMask hmask = random_mask(B, c.Hq, c.N, c.N, c.causal, c.align, 1.0, 0, 3);
  HostTensor q32 = as_fp32(in.q), k32 = as_fp32(in.k), v32 = as_fp32(in.v);
  DeviceTensor dq = DeviceTensor::upload(in.q), dk = DeviceTensor::upload(in.k),
               dv = DeviceTensor::upload(in.v);
  DeviceMask dmask = DeviceMask::upload(hmask);
  DeviceBuffer dlen(sizeof(int32_t) * B);
  cudaMemcpy(dlen.get(), c.lengths.data(), dlen.bytes(), cudaMemcpyHostToDevice);
  AttentionMask dpad;
  dpad.device = Device::kCUDA;
  dpad.key_lengths = static_cast<const int32_t*>(dlen.get());
  for (const QuantMode quant : {QuantMode::kNone, QuantMode::kInt8Fp8}) {
    SparseOptions opts = options_of(c);
    opts.quant = quant;
    opts.pv_threshold.value = 8.0f;  // the λ rule on: the counters must agree
    const bool quantized = quant == QuantMode::kInt8Fp8;
    if (quantized && !(sm90ws_runs() && (!SPARGE_FAST_BUILD || !c.causal))) continue;

    HostTensor ref = HostTensor::poisoned(B, c.Hq, c.N, c.D, DType::kFloat32, Layout::kHND);
    std::vector<unsigned long long> ref_counters(2 * c.Hq, 0);
    ExecContext ref_ctx;
    ref_ctx.backend = Backend::kReference;
    const Status cpu = block_sparse_attention(q32.view, k32.view, v32.view,
                                              padding(c.lengths, Device::kCPU), hmask.view(), opts,
                                              ref.view, AttentionExtras{nullptr, ref_counters.data()},
                                              ref_ctx);
    ASSERT_TRUE(cpu.is_ok()) << cpu.message();

    DeviceTensor dout =
        DeviceTensor::upload(HostTensor::poisoned(B, c.Hq, c.N, c.D, c.dtype, Layout::kHND));
    DeviceBuffer dcounters(sizeof(unsigned long long) * 2 * c.Hq);
    cudaMemset(dcounters.get(), 0, dcounters.bytes());
    const std::size_t ws_bytes =
        workspace_size(problem_shape(in.q.view, in.k.view), opts, Device::kCUDA);
    DeviceBuffer ws(ws_bytes);
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = ws_bytes;
    const Status gpu = block_sparse_attention(
        dq.view, dk.view, dv.view, dpad, dmask.mask, opts, dout.view,
        AttentionExtras{nullptr, static_cast<unsigned long long*>(dcounters.get())}, ctx);
    ASSERT_TRUE(gpu.is_ok()) << gpu.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<unsigned long long> counters(2 * c.Hq);
    cudaMemcpy(counters.data(), dcounters.get(), dcounters.bytes(), cudaMemcpyDeviceToHost);
    unsigned long long got[2] = {0, 0}, want[2] = {0, 0};
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int i = 0; i < 2; ++i) got[i] += counters[2 * h + i], want[i] += ref_counters[2 * h + i];
    const std::vector<float> out = dout.download();
    const double err = measure::rel_l1(out, ref.to_hnd());
    std::printf("[ key lengths ] caller's mask%s: rel_l1 %.2e, skipped %llu/%llu (gpu/ref) of %llu/%llu\n",
                quantized ? " (quantized, vs the emulation)" : "", err, got[1], want[1], got[0],
                want[0]);
    std::fflush(stdout);
    EXPECT_FALSE(any_nan(out));
    EXPECT_LE(err, quantized ? 1e-2 : 8e-3);
    EXPECT_EQ(got[0], want[0]);
    // The λ rule tests tiles in turns on sm90ws (docs/cuda.md): its decisions may differ from the
    // CPU's one-tile walk by rounding; the masked-out tiles are skipped by every kernel.
    EXPECT_NEAR(double(got[1]), double(want[1]), 0.01 * double(want[1]) + 2);
    EXPECT_GT(want[1], 0u) << "tiles past the lengths must count as skipped";
  }
}

// Lengths outside [0, Nk] in device memory are clamped (the host cannot check them without a
// copy): no crash, no NaN, the same output as the clamped lengths.
TEST(KeyLengthsDevice, OutOfRangeLengthsAreClamped) {
  SPARGE_SKIP_WITHOUT_GPU();
  const PadCase c{"clamped", 2, 2, 300, 64, {-5, 1000}, false, CausalAlign::kTopLeft, -1,
                  EstimateMode::kPooled, SelectMode::kTopCdf, 1.0f, false, DType::kFloat16};
  if (!instance_runs(c)) GTEST_SKIP() << "no fp16 d64 instance in this build";
  const int64_t B = 2;
  PadCase clamped = c;
  clamped.lengths = {0, 300};
  const PaddedInputs in = make_inputs(clamped, 9);
  DeviceTensor dq = DeviceTensor::upload(in.q), dk = DeviceTensor::upload(in.k),
               dv = DeviceTensor::upload(in.v);
  std::vector<float> outs[2];
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<int32_t>& lengths = pass == 0 ? c.lengths : clamped.lengths;
    DeviceBuffer dlen(sizeof(int32_t) * B);
    cudaMemcpy(dlen.get(), lengths.data(), dlen.bytes(), cudaMemcpyHostToDevice);
    AttentionMask dpad;
    dpad.device = Device::kCUDA;
    dpad.key_lengths = static_cast<const int32_t*>(dlen.get());
    const SparseOptions opts = options_of(c);
    DeviceTensor dout =
        DeviceTensor::upload(HostTensor::poisoned(B, c.Hq, c.N, c.D, c.dtype, Layout::kHND));
    const std::size_t ws_bytes =
        workspace_size(problem_shape(in.q.view, in.k.view), opts, Device::kCUDA);
    DeviceBuffer ws(ws_bytes);
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = ws_bytes;
    const Status st = sparse_attention(dq.view, dk.view, dv.view, dpad, opts, dout.view, {}, ctx);
    ASSERT_TRUE(st.is_ok()) << st.message();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    outs[pass] = dout.download();
  }
  EXPECT_FALSE(any_nan(outs[0]));
  EXPECT_EQ(outs[0], outs[1]);
}

}  // namespace
}  // namespace sparge::test
