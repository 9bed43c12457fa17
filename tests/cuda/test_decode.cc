// The split-KV decode kernels (cuda/attention/decode.cuh; issue 14 item 5), behind
// SPARGE_CUDA_DECODE=1 until these tests have passed on a GPU: calls of 1-4 query rows against a
// long key cache, split over several CTAs per (batch, head) and merged by their maxima. Against
// the float32 reference on the same mask (both stages: the masks equal the CPU's), and against
// the tensor-core kernel (the switch off) on one mask: outputs and LSE; GQA, causal bottom-right,
// a sliding window, head dims 64 / 128 / 256, fp16 and bf16, λ finite and not; a NaN query row
// stays NaN. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

struct DecodeCase {
  int64_t rows, keys, hq, hkv, d;
  DType dtype;
  int window_left;
  float lambda;
};

SparseOptions decode_options(const DecodeCase& c) {
  SparseOptions o;
  o.causal = true;
  o.causal_align = CausalAlign::kBottomRight;  // the new rows at the cache's end
  o.window_left = c.window_left;
  o.select = SelectMode::kTopK;
  o.select_value.value = 0.2f;
  o.sim_threshold.value = -1.0f;
  o.pv_threshold.value = c.lambda;
  return o;
}

// block_sparse_attention on the GPU with a given mask: output (HND floats) and LSE.
struct GpuOut {
  std::vector<float> out, lse;
};
GpuOut run_on_mask(const HostTensor& q, const HostTensor& k, const HostTensor& v,
                   const HostBlockMask& mask, const SparseOptions& o) {
  const TensorView& qv = q.view;
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k), dv = DeviceTensor::upload(v);
  DeviceTensor dout = DeviceTensor::upload(
      HostTensor::poisoned(qv.batch, qv.heads, qv.tokens, qv.head_dim, qv.dtype, Layout::kHND));
  DeviceMask dmask = DeviceMask::upload(mask);
  DeviceBuffer lse(sizeof(float) * qv.batch * qv.heads * qv.tokens);
  cudaMemset(lse.get(), 0xff, lse.bytes());
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), o, Device::kCUDA, true);
  DeviceBuffer ws(std::max<std::size_t>(ws_bytes, 1));
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  AttentionExtras extras;
  extras.lse = static_cast<float*>(lse.get());
  const Status s = block_sparse_attention(dq.view, dk.view, dv.view, dmask.mask, o, dout.view,
                                          extras, ctx);
  EXPECT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  GpuOut r{dout.download(), std::vector<float>(qv.batch * qv.heads * qv.tokens)};
  cudaMemcpy(r.lse.data(), lse.get(), lse.bytes(), cudaMemcpyDeviceToHost);
  return r;
}

class CudaDecode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(CudaDecode, EqualsTheReferenceAndTheTensorCoreKernel) {
  SPARGE_SKIP_WITHOUT_GPU();
  const DecodeCase& c = GetParam();
  const HostTensor q = HostTensor::make(gaussian(c.hq * c.rows * c.d, 51), 1, c.hq, c.rows, c.d,
                                        c.dtype, Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(c.hkv * c.keys * c.d, 52), 1, c.hkv, c.keys,
                                        c.d, c.dtype, Layout::kNHD);
  const HostTensor v = HostTensor::make(gaussian(c.hkv * c.keys * c.d, 53), 1, c.hkv, c.keys,
                                        c.d, c.dtype, Layout::kNHD);
  const SparseOptions o = decode_options(c);
  EndToEnd e;
  {
    ScopedEnv on("SPARGE_CUDA_DECODE", "1");
    e = sparse_attention_on_cpu_and_gpu(q, k, v, o);
  }
  ASSERT_TRUE(e.ok);
  EXPECT_FALSE(any_nan(e.out));
  EXPECT_EQ(e.got_mask.to_dense(), e.ref_mask.to_dense());
  const double vs_ref = measure::rel_l1(e.out, e.ref);
  // The same mask through the tensor-core kernel and the decode kernels.
  GpuOut tc = run_on_mask(q, k, v, e.ref_mask, o), dec;
  {
    ScopedEnv on("SPARGE_CUDA_DECODE", "1");
    dec = run_on_mask(q, k, v, e.ref_mask, o);
  }
  const double vs_tc = measure::rel_l1(dec.out, tc.out);
  double lse_err = 0.0;
  for (size_t i = 0; i < tc.lse.size(); ++i) lse_err = std::max(lse_err, double(std::fabs(dec.lse[i] - tc.lse[i])));
  std::printf("[ decode ] rows %ld keys %ld H %ld/%ld D %ld %s window %d lambda %g: vs ref %.3g, vs "
              "tensor-core kernel %.3g, lse max diff %.3g\n",
              long(c.rows), long(c.keys), long(c.hq), long(c.hkv), long(c.d),
              dtype_name(c.dtype), c.window_left, double(c.lambda), vs_ref, vs_tc, lse_err);
  EXPECT_LT(vs_ref, std::isinf(c.lambda) ? 1e-2 : 3e-2);
  EXPECT_LT(vs_tc, std::isinf(c.lambda) ? 1e-2 : 3e-2);
  EXPECT_LT(lse_err, std::isinf(c.lambda) ? 1e-3 : 5e-2);
}

constexpr float kInf = INFINITY;
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDecode,
    ::testing::Values(DecodeCase{1, 3000, 8, 2, 128, DType::kBFloat16, -1, kInf},
                      DecodeCase{1, 70000, 4, 1, 128, DType::kBFloat16, -1, kInf},
                      DecodeCase{4, 5000, 4, 4, 64, DType::kFloat16, -1, kInf},
                      DecodeCase{3, 4000, 2, 2, 256, DType::kBFloat16, 700, kInf},
                      DecodeCase{1, 20000, 8, 2, 128, DType::kBFloat16, -1, 6.0f},
                      DecodeCase{2, 100, 2, 1, 128, DType::kFloat16, -1, kInf}));

TEST(CudaDecodeNan, ANanQueryRowStaysNaN) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t Hq = 2, Hkv = 1, rows = 2, keys = 1000, D = 64;
  std::vector<float> qv = gaussian(Hq * rows * D, 61);
  qv[D] = NAN;  // head 0, row 1
  const HostTensor q = HostTensor::make(qv, 1, Hq, rows, D, DType::kBFloat16, Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(Hkv * keys * D, 62), 1, Hkv, keys, D,
                                        DType::kBFloat16, Layout::kHND);
  const HostTensor v = HostTensor::make(gaussian(Hkv * keys * D, 63), 1, Hkv, keys, D,
                                        DType::kBFloat16, Layout::kHND);
  SparseOptions o = decode_options({rows, keys, Hq, Hkv, D, DType::kBFloat16, -1, kInf});
  o.select_value.value = 1.0f;
  HostBlockMask mask(1, Hq, rows, keys, o.block_q, o.block_k);
  check(fill_dense_mask(mask.view(), o));
  ScopedEnv on("SPARGE_CUDA_DECODE", "1");
  const GpuOut r = run_on_mask(q, k, v, mask, o);
  for (int64_t d = 0; d < D; ++d) {
    EXPECT_TRUE(std::isnan(r.out[1 * D + d])) << d;   // head 0, row 1
    EXPECT_FALSE(std::isnan(r.out[0 * D + d])) << d;  // head 0, row 0
    EXPECT_FALSE(std::isnan(r.out[(2 + 1) * D + d])) << d;  // head 1, row 1
  }
}

}  // namespace
}  // namespace sparge::test
