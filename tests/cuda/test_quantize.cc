// The CUDA quantization pass (src/cuda/quantize/) against the CPU emulation
// (src/cpu/quantize.cc), byte for byte: INT8 Q and K codes, FP8 V8 codes (padding included), the
// bits of every fp32 scale and of the key mean. A NaN scale matches any NaN (the sign and payload
// of a generated NaN differ between CPUs and GPUs; the codes do not, quant_layout.h).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/quant_layout.h"
#include "cpu/quantize.h"
#include "gpu_test_util.h"
#include "sparge/workloads.h"

namespace sparge::test {
namespace {

struct Inputs {
  HostTensor q, k, v;
};

struct Case {
  int64_t B = 1, Hq = 2, Hkv = 2, Nq = 1000, Nk = 1000, D = 128;
  DType dtype = DType::kBFloat16;
  Layout layout = Layout::kHND;
  detail::QuantGranularity g{};
};

Inputs random_inputs(const Case& c, uint64_t seed, float k_bias = 0.0f) {
  std::vector<float> k = gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 1);
  for (size_t i = 0; i < k.size(); ++i) k[i] += k_bias * float(int(i % c.D) % 5 - 2);
  return {HostTensor::make(gaussian(c.B * c.Hq * c.Nq * c.D, seed, 2.0f), c.B, c.Hq, c.Nq, c.D,
                           c.dtype, c.layout),
          HostTensor::make(k, c.B, c.Hkv, c.Nk, c.D, c.dtype, c.layout),
          HostTensor::make(gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 2, 0.5f), c.B, c.Hkv, c.Nk,
                           c.D, c.dtype, c.layout)};
}

template <typename T>
std::vector<T> download(const DeviceBuffer& buf, int64_t count) {
  std::vector<T> out(count);
  cudaMemcpy(out.data(), buf.get(), count * sizeof(T), cudaMemcpyDeviceToHost);
  return out;
}

// Equal bytes; `what` names the buffer, the first mismatch and the number of them.
template <typename T>
::testing::AssertionResult same_codes(const char* what, const std::vector<T>& gpu,
                                      const std::vector<T>& cpu) {
  if (gpu.size() != cpu.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < gpu.size(); ++i)
    if (gpu[i] != cpu[i] && bad++ == 0) first = int64_t(i);
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << gpu.size()
                                       << " differ, first at " << first << " (gpu "
                                       << int(gpu[first]) << ", cpu " << int(cpu[first]) << ")";
}

// Equal fp32 bits, or both NaN.
::testing::AssertionResult same_floats(const char* what, const std::vector<float>& gpu,
                                       const std::vector<float>& cpu) {
  if (gpu.size() != cpu.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const bool same = (std::isnan(gpu[i]) && std::isnan(cpu[i])) ||
                      std::memcmp(&gpu[i], &cpu[i], sizeof(float)) == 0;
    if (!same && bad++ == 0) first = int64_t(i);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << gpu.size()
                                       << " differ, first at " << first << " (gpu "
                                       << gpu[first] << ", cpu " << cpu[first] << ")";
}

// The GPU's buffers, read back.
struct GpuQuantized {
  Status status;
  std::vector<int8_t> q, k;
  std::vector<float> q_scale, k_scale, km, v_scale;
  std::vector<uint8_t> v8;
};

GpuQuantized quantize_on_gpu(const Inputs& in, const detail::QuantGranularity& g) {
  DeviceTensor q = DeviceTensor::upload(in.q), k = DeviceTensor::upload(in.k),
               v = DeviceTensor::upload(in.v);
  const ProblemShape shape = problem_shape(q.view, k.view);
  const detail::QuantizedCounts n = detail::quantized_counts(
      shape.batch, shape.heads_q, shape.heads_kv, shape.seq_q, shape.seq_k, shape.head_dim, g);
  DeviceBuffer q8(n.q), qs(n.q_scale * 4), k8(n.k), ks(n.k_scale * 4), km(n.km * 4), v8(n.v8),
      vs(n.v_scale * 4);
  // Poison: every byte the pass must write starts as 0xff (a NaN scale, code -1, e4m3 NaN).
  for (const DeviceBuffer* b : {&q8, &qs, &k8, &ks, &km, &v8, &vs}) cudaMemset(b->get(), 0xff, b->bytes());
  const std::size_t ws_bytes = cuda::quantize_workspace_size(shape);
  DeviceBuffer ws(ws_bytes);
  cuda::QuantizedBuffers out;
  out.q = static_cast<int8_t*>(q8.get());
  out.q_scale = static_cast<float*>(qs.get());
  out.k = static_cast<int8_t*>(k8.get());
  out.k_scale = static_cast<float*>(ks.get());
  out.km = static_cast<float*>(km.get());
  out.v8 = static_cast<uint8_t*>(v8.get());
  out.v_scale = static_cast<float*>(vs.get());
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  SparseOptions opts;
  const detail::Problem p{q.view, k.view, v.view, shape, opts, 1.0f};
  GpuQuantized r;
  r.status = cuda::quantize_inputs(p, out, g, ctx);
  if (r.status.is_ok() && cudaDeviceSynchronize() != cudaSuccess)
    r.status = Status::cuda("quantization pass failed at run time");
  if (!r.status.is_ok()) return r;
  r.q = download<int8_t>(q8, n.q);
  r.q_scale = download<float>(qs, n.q_scale);
  r.k = download<int8_t>(k8, n.k);
  r.k_scale = download<float>(ks, n.k_scale);
  r.km = download<float>(km, n.km);
  r.v8 = download<uint8_t>(v8, n.v8);
  r.v_scale = download<float>(vs, n.v_scale);
  return r;
}

void expect_gpu_equals_cpu(const Inputs& in, const detail::QuantGranularity& g) {
  const GpuQuantized gpu = quantize_on_gpu(in, g);
  ASSERT_TRUE(gpu.status.is_ok()) << gpu.status.message();
  SparseOptions opts;
  const detail::Problem p{in.q.view, in.k.view, in.v.view, problem_shape(in.q.view, in.k.view),
                          opts, 1.0f};
  const cpu::QuantizedInputs cpu = cpu::quantize_inputs(p, g);
  EXPECT_TRUE(same_floats("km", gpu.km, cpu.km));
  EXPECT_TRUE(same_floats("q_scale", gpu.q_scale, cpu.q_scale));
  EXPECT_TRUE(same_floats("k_scale", gpu.k_scale, cpu.k_scale));
  EXPECT_TRUE(same_floats("v_scale", gpu.v_scale, cpu.v_scale));
  EXPECT_TRUE(same_codes("q codes", gpu.q, cpu.q));
  EXPECT_TRUE(same_codes("k codes", gpu.k, cpu.k));
  EXPECT_TRUE(same_codes("v8 codes", gpu.v8, cpu.v8));
}

TEST(QuantizePass, MatchesCpuBf16HndOddLengths) {
  SPARGE_SKIP_WITHOUT_GPU();
  Case c;
  c.Nq = 1000;
  c.Nk = 777;  // neither a multiple of a block, of a scale group nor of the 64-key V8 box
  expect_gpu_equals_cpu(random_inputs(c, 100, 1.5f), c.g);
}

TEST(QuantizePass, MatchesCpuFp16NhdGqa) {
  SPARGE_SKIP_WITHOUT_GPU();
  Case c;
  c.Hq = 8;
  c.Hkv = 2;
  c.Nq = 333;
  c.Nk = 4097;
  c.D = 64;
  c.dtype = DType::kFloat16;
  c.layout = Layout::kNHD;
  expect_gpu_equals_cpu(random_inputs(c, 200, 3.0f), c.g);
}

TEST(QuantizePass, MatchesCpuAtEveryGranularityAndHeadDim) {
  SPARGE_SKIP_WITHOUT_GPU();
  const detail::QuantGranularity grains[] = {{128, 64}, {16, 16}, {1, 1}, {2, 128}};
  for (const int64_t D : {64, 128, 256})
    for (const auto& g : grains)
      for (const DType t : {DType::kBFloat16, DType::kFloat16}) {
        SCOPED_TRACE("D " + std::to_string(D) + " q_rows " + std::to_string(g.q_rows) +
                     " k_rows " + std::to_string(g.k_rows) + " " + dtype_name(t));
        Case c;
        c.B = 2;
        c.Nq = 301;
        c.Nk = 129;
        c.D = D;
        c.dtype = t;
        expect_gpu_equals_cpu(random_inputs(c, 300 + D, 0.5f), g);
      }
}

// Video-like tokens (smooth in space and time, biased keys) and a long key axis (many runs of
// the key mean, whose order must match).
TEST(QuantizePass, MatchesCpuOnVideoLikeAndLongInputs) {
  SPARGE_SKIP_WITHOUT_GPU();
  workloads::Workload w = workloads::video_grid(1, 2, 8, 24, 32, 128, 5);
  for (const DType t : {DType::kBFloat16, DType::kFloat16}) {
    const Inputs in{HostTensor::make(w.q, 1, 2, w.seq_q, 128, t, Layout::kNHD),
                    HostTensor::make(w.k, 1, 2, w.seq_k, 128, t, Layout::kNHD),
                    HostTensor::make(w.v, 1, 2, w.seq_k, 128, t, Layout::kNHD)};
    expect_gpu_equals_cpu(in, detail::QuantGranularity{});
  }
  Case c;
  c.Hq = c.Hkv = 1;
  c.Nq = 64;
  c.Nk = 70001;
  c.D = 64;
  expect_gpu_equals_cpu(random_inputs(c, 400, 20.0f), c.g);
}

// docs/method.md "Inputs with NaN/Inf", quantized mode: a NaN or Inf in q makes its group's scale
// NaN or Inf and the group's codes 0 (x/s is NaN or 0); in k it makes the key mean of its
// channel, so every k code of that kv head (the scales are NaN) 0; in v the channel's scale is
// NaN or Inf, its codes 0x7f (NaN) or ±0 with 0x7f where the input was ±Inf.
TEST(QuantizePass, NanAndInfMatchCpu) {
  SPARGE_SKIP_WITHOUT_GPU();
  Case c;
  c.B = 2;
  c.Hq = 4;
  c.Nq = 200;
  c.Nk = 150;
  c.D = 64;
  for (const DType t : {DType::kBFloat16, DType::kFloat16}) {
    c.dtype = t;
    Inputs in = random_inputs(c, 500);
    in.q.set(0, 1, 7, 3, NAN);
    in.q.set(1, 2, 130, 0, INFINITY);
    in.q.set(1, 3, 199, 63, -INFINITY);
    in.k.set(0, 1, 149, 5, NAN);
    in.k.set(1, 0, 3, 9, INFINITY);
    in.v.set(0, 0, 10, 2, NAN);
    in.v.set(1, 1, 140, 7, INFINITY);
    in.v.set(1, 1, 20, 8, -INFINITY);
    for (const auto& g : {detail::QuantGranularity{}, detail::QuantGranularity{128, 64}})
      expect_gpu_equals_cpu(in, g);
    const GpuQuantized gpu = quantize_on_gpu(in, detail::QuantGranularity{});
    ASSERT_TRUE(gpu.status.is_ok());
    EXPECT_TRUE(std::isnan(gpu.q_scale[1 * c.Nq + 7]));  // (b 0, h 1), row 7: per-row scale
    EXPECT_TRUE(std::isinf(gpu.q_scale[(1 * 4 + 2) * c.Nq + 130]));
    EXPECT_TRUE(std::isnan(gpu.km[1 * c.D + 5]));
    const int64_t Nk8 = detail::v8_keys(c.Nk);
    EXPECT_EQ(gpu.v8[(0 * c.D + 2) * Nk8 + detail::v8_position(0)], detail::kE4m3Nan);
    EXPECT_EQ(gpu.v8[((1 * 2 + 1) * c.D + 7) * Nk8 + detail::v8_position(140)], detail::kE4m3Nan);
  }
}

TEST(QuantizePass, RepeatedRunsAreBitIdentical) {
  SPARGE_SKIP_WITHOUT_GPU();
  Case c;
  c.Nk = 5000;
  const Inputs in = random_inputs(c, 600, 2.0f);
  const GpuQuantized a = quantize_on_gpu(in, c.g), b = quantize_on_gpu(in, c.g);
  ASSERT_TRUE(a.status.is_ok() && b.status.is_ok());
  EXPECT_TRUE(same_floats("km", a.km, b.km));
  EXPECT_TRUE(same_codes("k codes", a.k, b.k));
  EXPECT_TRUE(same_codes("v8 codes", a.v8, b.v8));
}

TEST(QuantizePass, RejectsUnsupportedArguments) {
  SPARGE_SKIP_WITHOUT_GPU();
  Case c;
  c.D = 96;
  const GpuQuantized odd_dim = quantize_on_gpu(random_inputs(c, 700), c.g);
  EXPECT_EQ(odd_dim.status.code(), StatusCode::kUnsupported);
  EXPECT_NE(odd_dim.status.message().find("head_dim"), std::string::npos);
  c.D = 64;
  const GpuQuantized odd_group = quantize_on_gpu(random_inputs(c, 701), {3, 16});
  EXPECT_EQ(odd_group.status.code(), StatusCode::kUnsupported);
  EXPECT_NE(odd_group.status.message().find("q_rows"), std::string::npos);
}

}  // namespace
}  // namespace sparge::test
