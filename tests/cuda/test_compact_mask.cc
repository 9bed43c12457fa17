// Compact block masks (BlockMask::row_offsets, issue 14 item 1) in the CUDA attention kernels:
// block_sparse_attention on a compact mask (rows packed, and rows with spare slots of junk) gives
// the padded mask's output, lse and λ counters bit for bit on every kernel (sm80, sm90, sm90ws; the
// quantized one where it runs); as Stage 1's output (CUDA writes the padded form only) the compact
// form is refused by name. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

// A device copy of a host compact mask (counts, row_offsets, indices).
struct DeviceCompactMask {
  DeviceBuffer counts, offsets, indices;
  BlockMask mask;
  explicit DeviceCompactMask(const HostBlockMask& h) {
    counts = DeviceBuffer(sizeof(int32_t) * h.counts.size());
    offsets = DeviceBuffer(sizeof(int64_t) * h.row_offsets.size());
    indices = DeviceBuffer(sizeof(int32_t) * std::max<size_t>(h.indices.size(), 1));
    cudaMemcpy(counts.get(), h.counts.data(), counts.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(offsets.get(), h.row_offsets.data(), offsets.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(indices.get(), h.indices.data(), sizeof(int32_t) * h.indices.size(),
               cudaMemcpyHostToDevice);
    mask = h.view();
    mask.counts = static_cast<int32_t*>(counts.get());
    mask.indices = static_cast<int32_t*>(indices.get());
    mask.row_offsets = static_cast<int64_t*>(offsets.get());
    mask.device = Device::kCUDA;
  }
};

HostBlockMask with_spare_slots(const HostBlockMask& compact, int64_t spare) {
  return test::with_spare_slots(compact, spare, -1);
}

struct GpuRun {
  Status status;
  std::vector<float> out, lse;
  std::vector<unsigned long long> counters;
};

struct Problem {
  static constexpr int64_t B = 1, Hq = 4, Hkv = 2, N = 1000, D = 128;
  HostTensor hq = HostTensor::make(gaussian(B * Hq * N * D, 1), B, Hq, N, D, DType::kBFloat16,
                                   Layout::kHND);
  HostTensor hk = HostTensor::make(gaussian(B * Hkv * N * D, 2), B, Hkv, N, D, DType::kBFloat16,
                                   Layout::kHND);
  HostTensor hv = HostTensor::make(gaussian(B * Hkv * N * D, 3), B, Hkv, N, D, DType::kBFloat16,
                                   Layout::kHND);
  DeviceTensor q = DeviceTensor::upload(hq), k = DeviceTensor::upload(hk),
               v = DeviceTensor::upload(hv);
  SparseOptions opts;
  HostBlockMask padded;
  Problem() {
    opts.causal = true;
    opts.select = SelectMode::kTopK;
    opts.select_value.value = 0.3f;
    opts.sim_threshold.value = -1.0f;
    opts.pv_threshold.value = 8.0f;  // some λ skips: counters to compare
    padded = HostBlockMask(B, Hq, N, N, opts.block_q, opts.block_k);
    check(predict_block_mask(hq.view, hk.view, opts, padded.view()));
  }

  GpuRun run(const BlockMask& mask, QuantMode quant) {
    SparseOptions o = opts;
    o.quant = quant;
    HostTensor ho = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kHND);
    DeviceTensor out = DeviceTensor::upload(ho);
    DeviceBuffer lse(sizeof(float) * B * Hq * N), counters(sizeof(unsigned long long) * Hq * 2);
    cudaMemset(lse.get(), 0xff, lse.bytes());
    cudaMemset(counters.get(), 0, counters.bytes());
    AttentionExtras extras;
    extras.lse = static_cast<float*>(lse.get());
    extras.pv_counters = static_cast<unsigned long long*>(counters.get());
    const std::size_t bytes = workspace_size(problem_shape(q.view, k.view), o, Device::kCUDA);
    DeviceBuffer workspace(bytes);
    ExecContext ctx;
    ctx.workspace = workspace.get();
    ctx.workspace_bytes = bytes;
    GpuRun r;
    r.status = block_sparse_attention(q.view, k.view, v.view, mask, o, out.view, extras, ctx);
    cudaDeviceSynchronize();
    if (!r.status.is_ok()) return r;
    r.out = out.download();
    r.lse.resize(B * Hq * N);
    r.counters.resize(Hq * 2);
    cudaMemcpy(r.lse.data(), lse.get(), lse.bytes(), cudaMemcpyDeviceToHost);
    cudaMemcpy(r.counters.data(), counters.get(), counters.bytes(), cudaMemcpyDeviceToHost);
    return r;
  }
};

void expect_same(const GpuRun& a, const GpuRun& b) {
  ASSERT_TRUE(a.status.is_ok()) << a.status.message();
  ASSERT_TRUE(b.status.is_ok()) << b.status.message();
  ASSERT_EQ(a.out.size(), b.out.size());
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
  EXPECT_EQ(a.counters, b.counters);
}

TEST(CudaCompactMask, Stage2ReadsItAsThePaddedFormOnEveryKernel) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  const AttentionStats stats = mask_stats(p.padded.view(), p.opts);
  ASSERT_GT(stats.sparsity(), 0.3);  // rows of different lengths
  const DeviceMask padded = DeviceMask::upload(p.padded);
  const HostBlockMask compact_host = p.padded.to_compact();
  const DeviceCompactMask compact(compact_host), spare(with_spare_slots(compact_host, 3));
  for (const char* kernel : {"sm80", "sm90", "sm90ws"}) {
    SCOPED_TRACE(kernel);
    const ScopedEnv pick("SPARGE_CUDA_KERNEL", kernel);
    const GpuRun want = p.run(padded.mask, QuantMode::kNone);
    if (!want.status.is_ok()) {  // a kernel this build or device does not run
      std::printf("[ info ] %s: %s\n", kernel, want.status.message().c_str());
      continue;
    }
    EXPECT_FALSE(any_nan(want.out));
    expect_same(p.run(compact.mask, QuantMode::kNone), want);
    expect_same(p.run(spare.mask, QuantMode::kNone), want);
  }
  if (sm90ws_runs()) {  // the quantized kernel
    const GpuRun want = p.run(padded.mask, QuantMode::kInt8Fp8);
    ASSERT_TRUE(want.status.is_ok()) << want.status.message();
    expect_same(p.run(compact.mask, QuantMode::kInt8Fp8), want);
  }
}

TEST(CudaCompactMask, RefusedByNameAsStage1Output) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  const DeviceCompactMask compact(p.padded.to_compact());
  const Status st = predict_block_mask(p.q.view, p.k.view, p.opts, compact.mask);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("mask.row_offsets"), std::string::npos);
}

}  // namespace
}  // namespace sparge::test
