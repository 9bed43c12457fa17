// Dense attention masks on the GPU (AttentionMask::data, SDPA's attn_mask; issue 12 item 2),
// against the CPU reference that defines them (docs/method.md, "Attention masks"): the CUDA path
// (tile classes, Stage 1's eligibility, the mma.sync kernel's element masks). Masks: tiles hidden,
// shown or mixed at random (empty rows among them), block-causal frames that cut tiles, additive
// float32 per head with -inf, finite biases and finfo.min, left padding under causality (rows
// that see no key), an fp16 mask broadcast over batch and heads; causal and not, GQA, odd
// lengths, TopCdf and top-k, the pooled and sampled-rows estimates, exact and quant kInt8.
// Checked: Stage 1's mask equals the CPU's (but for ties) and keeps no tile the mask hides
// wholly (the CPU's tile classes); the output and LSE match the
// reference; Stage 2 on a caller's mask keeps the CPU's λ counters (hidden kept tiles count as
// skipped); the refusals name what is missing. Outputs are poisoned first, NaN never passes.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/fp_convert.h"
#include "cpu/attn_mask.h"
#include "gpu_test_util.h"
#include "sparge/build_info.h"

namespace sparge::test {
namespace {

enum class MaskKind { kTiles, kFrames, kAdditive, kLeftPadding, kBroadcastFp16 };

struct MaskCase {
  std::string name;
  int64_t B, Hq, Hkv, Nq, Nk, D;
  MaskKind kind;
  bool causal;
  SelectMode select;
  float select_value;
  QuantMode quant;
  DType dtype;
  EstimateMode estimate = EstimateMode::kPooled;
};

// A dense mask on the host in its own dtype, and its views (host and device).
struct Mask {
  MaskDType dtype = MaskDType::kBool;
  int64_t batch = 1, heads = 1, rows = 1, keys = 0;
  std::vector<uint8_t> bytes;
  DeviceBuffer device;

  AttentionMask view(Device where) const {
    AttentionMask m;
    m.data = where == Device::kCPU ? static_cast<const void*>(bytes.data()) : device.get();
    m.dtype = dtype;
    m.device = where;
    m.batch = batch;
    m.heads = heads;
    m.seq_q = rows;
    m.seq_k = keys;
    m.stride_k = 1;
    m.stride_q = keys;
    m.stride_head = rows * keys;
    m.stride_batch = heads * rows * keys;
    return m;
  }
};

// Element values (natural-log terms: 0 attend, -inf hidden, anything else a bias) in the mask's
// dtype (bool: value != -inf).
Mask make_mask(MaskDType dtype, int64_t batch, int64_t heads, int64_t rows, int64_t keys,
               const std::vector<float>& values) {
  Mask m;
  m.dtype = dtype;
  m.batch = batch, m.heads = heads, m.rows = rows, m.keys = keys;
  const std::size_t n = values.size(), size = mask_dtype_size(dtype);
  m.bytes.assign(n * size, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const float x = values[i];
    switch (dtype) {
      case MaskDType::kBool: m.bytes[i] = x != -INFINITY; break;
      case MaskDType::kFloat16: {
        const uint16_t h = detail::float_to_half_bits(x);
        std::memcpy(&m.bytes[2 * i], &h, 2);
        break;
      }
      case MaskDType::kBFloat16: {
        const uint16_t h = detail::float_to_bf16_bits(x);
        std::memcpy(&m.bytes[2 * i], &h, 2);
        break;
      }
      default: std::memcpy(&m.bytes[4 * i], &x, 4); break;
    }
  }
  m.device = DeviceBuffer(m.bytes.size());
  cudaMemcpy(m.device.get(), m.bytes.data(), m.bytes.size(), cudaMemcpyHostToDevice);
  return m;
}

Mask mask_of(const MaskCase& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const float inf = INFINITY;
  switch (c.kind) {
    case MaskKind::kTiles: {  // [B, 1, Nq, Nk]: per 128 x 64 tile hidden, shown or mixed
      std::vector<float> v(c.B * c.Nq * c.Nk);
      const int64_t nq = (c.Nq + 127) / 128, nk = (c.Nk + 63) / 64;
      std::vector<int> kind(c.B * nq * nk);
      for (int& k : kind) k = int(u(rng) * 3.0f);  // 0 hidden, 1 shown, 2 mixed
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t r = 0; r < c.Nq; ++r)
          for (int64_t j = 0; j < c.Nk; ++j) {
            const int k = kind[(b * nq + r / 128) * nk + j / 64];
            const bool shown = k == 1 || (k == 2 && u(rng) < 0.7f);
            v[(b * c.Nq + r) * c.Nk + j] = shown ? 0.0f : -inf;
          }
      return make_mask(MaskDType::kBool, c.B, 1, c.Nq, c.Nk, v);
    }
    case MaskKind::kFrames: {  // [1, 1, N, N] block-causal: frames of 100 tokens
      std::vector<float> v(c.Nq * c.Nk);
      for (int64_t r = 0; r < c.Nq; ++r)
        for (int64_t j = 0; j < c.Nk; ++j) v[r * c.Nk + j] = j / 100 <= r / 100 ? 0.0f : -inf;
      return make_mask(MaskDType::kBool, 1, 1, c.Nq, c.Nk, v);
    }
    case MaskKind::kAdditive: {  // [B, Hq, Nq, Nk] float32
      std::vector<float> v(c.B * c.Hq * c.Nq * c.Nk);
      std::normal_distribution<float> bias(0.0f, 2.0f);
      for (float& x : v) {
        const float t = u(rng);
        x = t < 0.6f ? 0.0f : t < 0.8f ? -inf : t < 0.95f ? bias(rng) : -FLT_MAX;
      }
      return make_mask(MaskDType::kFloat32, c.B, c.Hq, c.Nq, c.Nk, v);
    }
    case MaskKind::kLeftPadding: {  // [B, 1, 1, Nk]: keys before each entry's start hidden
      std::vector<float> v(c.B * c.Nk);
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t j = 0; j < c.Nk; ++j) v[b * c.Nk + j] = j < b * 300 ? -inf : 0.0f;
      return make_mask(MaskDType::kBool, c.B, 1, 1, c.Nk, v);
    }
    default: {  // [1, 1, Nq, Nk] fp16 additive, broadcast over batch and heads
      std::vector<float> v(c.Nq * c.Nk);
      for (float& x : v) {
        const float t = u(rng);
        x = t < 0.7f ? 0.0f : t < 0.85f ? -inf : -3.0f;
      }
      return make_mask(MaskDType::kFloat16, 1, 1, c.Nq, c.Nk, v);
    }
  }
}

SparseOptions options_of(const MaskCase& c) {
  SparseOptions o;
  o.causal = c.causal;
  o.select = c.select;
  o.select_value.value = c.select_value;
  o.sim_threshold.value = -0.5f;  // every block similar: the selection decides
  o.pv_threshold.value = INFINITY;
  o.quant = c.quant;
  o.estimate = c.estimate;
  return o;
}

bool instance_runs(const MaskCase& c) { return !SPARGE_FAST_BUILD && (c.D == 64 || c.D == 128); }

struct Inputs {
  HostTensor q, k, v;
};

Inputs inputs_of(const MaskCase& c, uint64_t seed) {
  return {HostTensor::make(gaussian(c.B * c.Hq * c.Nq * c.D, seed), c.B, c.Hq, c.Nq, c.D,
                           c.dtype, Layout::kNHD),
          HostTensor::make(gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 1), c.B, c.Hkv, c.Nk, c.D,
                           c.dtype, Layout::kNHD),
          HostTensor::make(gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 2), c.B, c.Hkv, c.Nk, c.D,
                           c.dtype, Layout::kNHD)};
}

class DenseMask : public ::testing::TestWithParam<MaskCase> {};

TEST_P(DenseMask, BothStagesMatchTheReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  const MaskCase& c = GetParam();
  if (!instance_runs(c)) GTEST_SKIP() << "no dense-mask instance for " << c.name << " in this build";
  const Inputs in = inputs_of(c, 40 + c.Nq);
  const Mask mask = mask_of(c, 7 + c.Nk);
  const SparseOptions opts = options_of(c);

  // CPU reference (and, with kInt8, its emulation): fp32 copies of the rounded inputs.
  HostTensor q32 = as_fp32(in.q), k32 = as_fp32(in.k), v32 = as_fp32(in.v);
  HostTensor ref = HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, DType::kFloat32, Layout::kHND);
  HostBlockMask ref_mask(c.B, c.Hq, c.Nq, c.Nk, opts.block_q, opts.block_k);
  std::vector<float> ref_lse(c.B * c.Hq * c.Nq, NAN);
  ExecContext ref_ctx;
  ref_ctx.backend = Backend::kReference;
  const Status cpu = sparse_attention(q32.view, k32.view, v32.view, mask.view(Device::kCPU), opts,
                                      ref.view, AttentionExtras{ref_lse.data()}, ref_ctx,
                                      &ref_mask.view());
  ASSERT_TRUE(cpu.is_ok()) << cpu.message();

  const AttentionMask dmask_attn = mask.view(Device::kCUDA);
  ASSERT_GT(workspace_size(problem_shape(in.q.view, in.k.view), dmask_attn, opts, Device::kCUDA),
            workspace_size(problem_shape(in.q.view, in.k.view), opts, Device::kCUDA,
                           /*caller_mask=*/true))
      << "the tile classes take room too";
  const MaskedGpuRun gpu = masked_sparse_attention_on_gpu(in.q, in.k, in.v, dmask_attn, opts,
                                                          ref_mask.view(), Layout::kNHD);
  ASSERT_TRUE(gpu.status.is_ok()) << gpu.status.message();
  const HostBlockMask& got = gpu.mask;
  const std::vector<float>& out = gpu.out;
  const std::vector<float> want = ref.to_hnd();
  const std::vector<uint8_t> a = got.to_dense(), r = ref_mask.to_dense();
  int64_t same = 0, kept = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    same += a[i] == r[i];
    kept += a[i];
  }
  const double err = measure::rel_l1(out, want), lse_err = lse_max_error(gpu.lse, ref_lse);
  std::printf("[ dense mask ] %s: kept %lld of %zu tiles, mask = cpu %.5f, rel_l1 %.2e, lse err %.2e\n",
              c.name.c_str(), (long long)kept, a.size(), double(same) / double(a.size()), err,
              lse_err);
  std::fflush(stdout);
  // The pooled map is double on both sides, the sampled rows fp32 in different orders: only
  // (near-)ties of masses may differ.
  EXPECT_GE(double(same), 0.998 * double(a.size())) << c.name;
  // No kept tile is one the mask hides wholly (cpu/attn_mask.h's classes, the GPU's rule too).
  const cpu::TileClasses classes(cpu::MaskReader(mask.view(Device::kCPU), c.Nk), c.B, c.Hq, c.Nq,
                                 opts.block_q, opts.block_k,
                                 detail::Problem::band_of(opts, c.Nq, c.Nk));
  int64_t hidden_kept = 0;
  const BlockMask gv = got.view();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < gv.num_q_blocks(); ++i) {
        const int64_t row = gv.row(b, h, i);
        for (int32_t t = 0; t < gv.counts[row]; ++t)
          hidden_kept += classes.skipped(b, h, i, gv.indices[gv.row_begin(row) + t]);
      }
  EXPECT_EQ(hidden_kept, 0) << c.name;
  EXPECT_LT(kept, int64_t(a.size())) << "the case must hide or drop tiles: " << c.name;
  EXPECT_FALSE(any_nan(out)) << c.name;
  EXPECT_LE(err, c.dtype == DType::kBFloat16 ? 8e-3 : 2e-3) << c.name;
  EXPECT_LE(lse_err, 2e-2) << c.name;
}

const MaskCase kMaskCases[] = {
    {"tiles_topcdf", 2, 2, 2, 1000, 1000, 128, MaskKind::kTiles, false, SelectMode::kTopCdf, 0.9f,
     QuantMode::kNone, DType::kBFloat16},
    {"tiles_causal_topk_gqa", 1, 4, 2, 777, 1234, 64, MaskKind::kTiles, true, SelectMode::kTopK,
     0.4f, QuantMode::kNone, DType::kFloat16},
    {"block_causal_frames", 1, 2, 1, 1100, 1100, 128, MaskKind::kFrames, false, SelectMode::kTopCdf,
     0.95f, QuantMode::kNone, DType::kBFloat16},
    {"additive_per_head", 2, 2, 1, 600, 700, 64, MaskKind::kAdditive, false, SelectMode::kTopK,
     0.5f, QuantMode::kNone, DType::kFloat16},
    {"left_padding_causal", 3, 2, 2, 900, 900, 128, MaskKind::kLeftPadding, true,
     SelectMode::kTopCdf, 0.9f, QuantMode::kNone, DType::kBFloat16},
    {"fp16_broadcast_int8", 2, 2, 2, 1000, 1000, 128, MaskKind::kBroadcastFp16, false,
     SelectMode::kTopCdf, 0.9f, QuantMode::kInt8, DType::kBFloat16},
    {"tiles_int8_d64", 1, 2, 2, 700, 900, 64, MaskKind::kTiles, true, SelectMode::kTopK, 0.5f,
     QuantMode::kInt8, DType::kFloat16},
    // The sampled-rows estimate reads the mask too (its exact rows are Stage 2's).
    {"additive_sampled_rows", 1, 2, 2, 800, 800, 128, MaskKind::kAdditive, false,
     SelectMode::kTopCdf, 0.9f, QuantMode::kNone, DType::kBFloat16, EstimateMode::kSampledRows},
    {"left_padding_sampled_rows", 2, 2, 1, 640, 640, 64, MaskKind::kLeftPadding, true,
     SelectMode::kTopK, 0.5f, QuantMode::kNone, DType::kFloat16, EstimateMode::kSampledRows},
};
INSTANTIATE_TEST_SUITE_P(Masks, DenseMask, ::testing::ValuesIn(kMaskCases),
                         [](const ::testing::TestParamInfo<MaskCase>& info) { return info.param.name; });

// Stage 2 alone on a caller's block mask that keeps every tile, the ones the mask hides wholly
// included: those compute as skipped (all -inf), so the λ counters equal the reference's, and
// the outputs match.
TEST(DenseMaskStage2, HiddenTilesCountAsSkipped) {
  SPARGE_SKIP_WITHOUT_GPU();
  const MaskCase c{"stage2", 2, 2, 1, 900, 1000, 128, MaskKind::kTiles, true, SelectMode::kTopCdf,
                   1.0f, QuantMode::kNone, DType::kBFloat16};
  if (!instance_runs(c)) GTEST_SKIP() << "no dense-mask instance in this build";
  const Inputs in = inputs_of(c, 77);
  const Mask mask = mask_of(c, 78);
  const SparseOptions opts = options_of(c);
  HostBlockMask all = random_mask(c.B, c.Hq, c.Nq, c.Nk, c.causal, CausalAlign::kTopLeft, 1.0, 0, 5);

  HostTensor q32 = as_fp32(in.q), k32 = as_fp32(in.k), v32 = as_fp32(in.v);
  HostTensor ref = HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, DType::kFloat32, Layout::kHND);
  std::vector<unsigned long long> ref_counters(2 * c.Hq, 0);
  ExecContext ref_ctx;
  ref_ctx.backend = Backend::kReference;
  ASSERT_TRUE(block_sparse_attention(q32.view, k32.view, v32.view, mask.view(Device::kCPU),
                                     all.view(), opts, ref.view,
                                     AttentionExtras{nullptr, ref_counters.data()}, ref_ctx)
                  .is_ok());

  DeviceTensor dq = DeviceTensor::upload(in.q), dk = DeviceTensor::upload(in.k),
               dv = DeviceTensor::upload(in.v);
  DeviceTensor dout =
      DeviceTensor::upload(HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, c.dtype, Layout::kNHD));
  DeviceMask dall = DeviceMask::upload(all);
  DeviceBuffer dcounters(sizeof(unsigned long long) * 2 * c.Hq);
  cudaMemset(dcounters.get(), 0, dcounters.bytes());
  const AttentionMask dmask_attn = mask.view(Device::kCUDA);
  const std::size_t ws_bytes = workspace_size(problem_shape(in.q.view, in.k.view), dmask_attn,
                                              opts, Device::kCUDA, /*caller_mask=*/true);
  DeviceBuffer ws(ws_bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  const Status gpu = block_sparse_attention(
      dq.view, dk.view, dv.view, dmask_attn, dall.mask, opts, dout.view,
      AttentionExtras{nullptr, static_cast<unsigned long long*>(dcounters.get())}, ctx);
  ASSERT_TRUE(gpu.is_ok()) << gpu.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<unsigned long long> counters(2 * c.Hq);
  cudaMemcpy(counters.data(), dcounters.get(), dcounters.bytes(), cudaMemcpyDeviceToHost);
  const std::vector<float> out = dout.download();
  const double err = measure::rel_l1(out, ref.to_hnd());
  std::printf("[ dense mask ] stage 2 on every tile: rel_l1 %.2e, skipped %llu (cpu %llu) of %llu\n",
              err, counters[1], ref_counters[1], counters[0]);
  EXPECT_FALSE(any_nan(out));
  EXPECT_LE(err, 8e-3);
  EXPECT_GT(ref_counters[1], 0u) << "the case must keep tiles the mask hides";
  EXPECT_EQ(counters, ref_counters);
}

// What the CUDA path does not take names itself: quant kInt8Fp8, head dim 256, a
// workspace without room for the tile classes.
TEST(DenseMaskArgs, RefusalsNameWhatIsMissing) {
  SPARGE_SKIP_WITHOUT_GPU();
  const MaskCase c{"args", 1, 2, 2, 300, 300, 128, MaskKind::kTiles, false, SelectMode::kTopCdf,
                   0.9f, QuantMode::kNone, DType::kBFloat16};
  const Inputs in = inputs_of(c, 90);
  const Mask mask = mask_of(c, 91);
  DeviceTensor dq = DeviceTensor::upload(in.q);
  DeviceTensor dout =
      DeviceTensor::upload(HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, c.dtype, Layout::kNHD));
  const AttentionMask m = mask.view(Device::kCUDA);
  const auto call = [&](const SparseOptions& opts, std::size_t bytes) {
    DeviceBuffer ws(std::max<std::size_t>(bytes, 256));
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = bytes;
    return sparse_attention(dq.view, dq.view, dq.view, m, opts, dout.view, {}, ctx);
  };
  const ProblemShape shape = problem_shape(in.q.view, in.q.view);
  SparseOptions opts = options_of(c);
  const std::size_t full = workspace_size(shape, m, opts, Device::kCUDA);
  SparseOptions fp8 = opts;
  fp8.quant = QuantMode::kInt8Fp8;
  {
    const Status s = call(fp8, workspace_size(shape, m, fp8, Device::kCUDA));
    EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.message();
    EXPECT_NE(s.message().find("kInt8Fp8"), std::string::npos) << s.message();
  }
  {  // head dim 256 (the sm90ws kernel's alone): refused before anything runs
    HostTensor q256 = HostTensor::make(gaussian(2 * 300 * 256, 92), 1, 2, 300, 256, c.dtype,
                                       Layout::kNHD);
    DeviceTensor d256 = DeviceTensor::upload(q256);
    DeviceTensor o256 =
        DeviceTensor::upload(HostTensor::poisoned(1, 2, 300, 256, c.dtype, Layout::kNHD));
    const std::size_t bytes = workspace_size(problem_shape(q256.view, q256.view), m, opts,
                                             Device::kCUDA);
    DeviceBuffer ws(bytes);
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = bytes;
    const Status s = sparse_attention(d256.view, d256.view, d256.view, m, opts, o256.view, {}, ctx);
    EXPECT_EQ(s.code(), StatusCode::kUnsupported) << s.message();
    EXPECT_NE(s.message().find("head_dim"), std::string::npos) << s.message();
  }
  const Status whole = call(opts, full);  // exactly workspace_size(): enough
  EXPECT_TRUE(whole.is_ok()) << whole.message();
  const Status small = call(opts, full - 1);
  EXPECT_EQ(small.code(), StatusCode::kWorkspaceTooSmall) << small.message();
  EXPECT_NE(small.message().find("workspace"), std::string::npos) << small.message();
}

}  // namespace
}  // namespace sparge::test
