// Key blocks on CUDA (KeyBlocks, issue 14 item 5): built on the GPU with Stage 1's own kernels,
// they make sparse_attention give the plain call's output and mask bit for bit (exact and
// quantized), appends in any split give the same blocks, and the GPU's blocks agree with the
// CPU's. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

// Runs of 64 rows along one of 8 directions (self-similar blocks), every fifth run strong noise
// (blocks the gate forces); [B, H, N, D].
std::vector<float> structured(int64_t B, int64_t H, int64_t N, int64_t D, int64_t run,
                              uint64_t seed) {
  std::vector<float> x = gaussian(B * H * N * D, seed, 0.3f);
  const std::vector<float> dirs = gaussian(8 * D, seed + 1);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) {
        float& e = x[(bh * N + n) * D + d];
        if ((n / run) % 5 != 4) e += 2.0f * dirs[((n / run + bh) % 8) * D + d];
        else e *= 20.0f;
      }
  return x;
}

// KeyBlocks in device memory for up to `max_tokens` keys, and host copies of them.
struct DeviceKeyBlocks {
  DeviceBuffer pooled, sim, mean;
  KeyBlocks kb;
  DeviceKeyBlocks(int64_t B, int64_t Hkv, int64_t D, int64_t max_tokens, int block_k = 64) {
    kb.batch = B, kb.heads_kv = Hkv, kb.head_dim = D, kb.block_k = block_k;
    kb.max_blocks = (max_tokens + block_k - 1) / block_k;
    pooled = DeviceBuffer(sizeof(double) * B * Hkv * D * kb.max_blocks);
    sim = DeviceBuffer(sizeof(double) * B * Hkv * kb.max_blocks);
    mean = DeviceBuffer(sizeof(double) * B * Hkv * D);
    cudaMemset(pooled.get(), 0, pooled.bytes());
    cudaMemset(sim.get(), 0, sim.bytes());
    kb.pooled = static_cast<double*>(pooled.get());
    kb.sim = static_cast<double*>(sim.get());
    kb.mean = static_cast<double*>(mean.get());
    kb.device = Device::kCUDA;
  }
  std::vector<double> download(const DeviceBuffer& b) const {
    std::vector<double> h(b.bytes() / sizeof(double));
    cudaMemcpy(h.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost);
    return h;
  }
};

struct Cache {
  static constexpr int64_t B = 2, Hq = 8, Hkv = 2, N = 3000, D = 128;
  HostTensor hk = HostTensor::make(structured(B, Hkv, N, D, 64, 5), B, Hkv, N, D,
                                   DType::kBFloat16, Layout::kHND);
  HostTensor hv = HostTensor::make(gaussian(B * Hkv * N * D, 6), B, Hkv, N, D, DType::kBFloat16,
                                   Layout::kHND);
  DeviceTensor k = DeviceTensor::upload(hk), v = DeviceTensor::upload(hv);
  TensorView k_at(int64_t n) const { return test::first_tokens(k.view, n); }
  TensorView v_at(int64_t n) const { return test::first_tokens(v.view, n); }
};

Status build(const TensorView& k, KeyBlocks* kb) {
  const std::size_t bytes = key_blocks_workspace_size(k);
  DeviceBuffer ws(bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = bytes;
  const Status st = build_key_blocks(k, kb, ctx);
  cudaDeviceSynchronize();
  return st;
}

struct GpuCall {
  Status status;
  std::vector<float> out;
  std::vector<uint8_t> tiles;
};

GpuCall run(const Cache& c, const DeviceTensor& q, int64_t n, const SparseOptions& o,
            const KeyBlocks* kb) {
  const TensorView& qv = q.view;
  HostTensor ho = HostTensor::poisoned(qv.batch, qv.heads, qv.tokens, qv.head_dim, qv.dtype,
                                       Layout::kHND);
  DeviceTensor out = DeviceTensor::upload(ho);
  HostBlockMask shape(qv.batch, qv.heads, qv.tokens, n, o.block_q, o.block_k);
  DeviceMask mask = DeviceMask::like(shape.view());
  const std::size_t bytes = workspace_size(problem_shape(qv, c.k_at(n)), o, Device::kCUDA);
  DeviceBuffer ws(bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = bytes;
  GpuCall r;
  r.status = kb ? sparse_attention(qv, c.k_at(n), c.v_at(n), *kb, o, out.view, {}, ctx, &mask.mask)
                : sparse_attention(qv, c.k_at(n), c.v_at(n), o, out.view, {}, ctx, &mask.mask);
  cudaDeviceSynchronize();
  if (!r.status.is_ok()) return r;
  r.out = out.download();
  r.tiles = mask.download().to_dense();
  return r;
}

SparseOptions decode_options(SelectMode select, float value) {
  SparseOptions o;
  o.causal = true;
  o.causal_align = CausalAlign::kBottomRight;
  o.select = select;
  o.select_value.value = value;
  o.sim_threshold.value = 0.3f;
  o.pv_threshold.value = 8.0f;
  // Key blocks hold the pooled map's side (estimate auto takes it with them); the plain calls
  // compared against them must estimate the same way.
  o.estimate = EstimateMode::kPooled;
  return o;
}

TEST(CudaKeyBlocks, BuiltOnAllKeysTheCallEqualsThePlainCall) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Cache c;
  DeviceKeyBlocks blocks(Cache::B, Cache::Hkv, Cache::D, 4096);
  ASSERT_TRUE(build(c.k_at(Cache::N), &blocks.kb).is_ok());
  EXPECT_EQ(blocks.kb.tokens, Cache::N);
  for (int64_t nq : {1, 37, 300}) {
    const HostTensor hq = HostTensor::make(structured(Cache::B, Cache::Hq, nq, Cache::D, 128, nq),
                                           Cache::B, Cache::Hq, nq, Cache::D, DType::kBFloat16,
                                           Layout::kHND);
    const DeviceTensor q = DeviceTensor::upload(hq);
    for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf}) {
      for (QuantMode quant : {QuantMode::kNone, QuantMode::kInt8Fp8}) {
        if (quant == QuantMode::kInt8Fp8 && !sm90ws_runs()) continue;
        SCOPED_TRACE("nq " + std::to_string(nq) + " " + enum_name(select) + " " + enum_name(quant));
        SparseOptions o = decode_options(select, select == SelectMode::kTopK ? 0.3f : 0.8f);
        o.quant = quant;
        const GpuCall plain = run(c, q, Cache::N, o, nullptr);
        ASSERT_TRUE(plain.status.is_ok()) << plain.status.message();
        EXPECT_FALSE(any_nan(plain.out));
        const GpuCall cached = run(c, q, Cache::N, o, &blocks.kb);
        ASSERT_TRUE(cached.status.is_ok()) << cached.status.message();
        EXPECT_EQ(cached.tiles, plain.tiles);
        EXPECT_EQ(std::memcmp(cached.out.data(), plain.out.data(), plain.out.size() * 4), 0);
      }
    }
  }
}

TEST(CudaKeyBlocks, AppendsInAnySplitGiveTheSameBlocksAndMatchTheCpu) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Cache c;
  DeviceKeyBlocks once(Cache::B, Cache::Hkv, Cache::D, 4096),
      steps(Cache::B, Cache::Hkv, Cache::D, 4096);
  ASSERT_TRUE(build(c.k_at(1000), &once.kb).is_ok());
  ASSERT_TRUE(build(c.k_at(1000), &steps.kb).is_ok());
  ASSERT_TRUE(append_key_blocks(c.k_at(Cache::N), &once.kb).is_ok());
  for (int64_t n : {1001, 1030, 1087, 1088, 2000, 2999, 3000})
    ASSERT_TRUE(append_key_blocks(c.k_at(n), &steps.kb).is_ok()) << n;
  cudaDeviceSynchronize();
  EXPECT_EQ(steps.kb.tokens, Cache::N);
  EXPECT_EQ(steps.download(steps.pooled), once.download(once.pooled));
  EXPECT_EQ(steps.download(steps.sim), once.download(once.sim));

  // Against the CPU's blocks of the same keys (other summation orders: close, not equal).
  DeviceKeyBlocks gpu(Cache::B, Cache::Hkv, Cache::D, 4096);
  ASSERT_TRUE(build(c.k_at(Cache::N), &gpu.kb).is_ok());
  HostKeyBlocks cpu(Cache::B, Cache::Hkv, Cache::D, 4096, 64);
  TensorView host_k = c.hk.view;
  check(build_key_blocks(host_k, &cpu.view()));
  const std::vector<double> gp = gpu.download(gpu.pooled), gs = gpu.download(gpu.sim),
                            gm = gpu.download(gpu.mean);
  double worst = 0.0;
  for (size_t i = 0; i < gp.size(); ++i) worst = std::max(worst, std::abs(gp[i] - cpu.pooled[i]));
  for (size_t i = 0; i < gs.size(); ++i) worst = std::max(worst, std::abs(gs[i] - cpu.sim[i]));
  for (size_t i = 0; i < gm.size(); ++i) worst = std::max(worst, std::abs(gm[i] - cpu.mean[i]));
  std::printf("[ info ] key blocks, GPU vs CPU: max |difference| %.3g\n", worst);
  EXPECT_LT(worst, 1e-9);
}

}  // namespace
}  // namespace sparge::test
