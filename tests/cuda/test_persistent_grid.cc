// The sm90ws kernel's persistent grid (SPARGE_CUDA_KERNEL=sm90ws-persistent,
// kernel_sm90_ws_persistent.cuh) against its row grid (sm90ws): the same rows, computed by CTAs
// that each walk several rows through one K/V ring and two Q tiles, so the output, the LSE and
// the λ counters must be the same bit for bit. The problems have more BlockMask rows than an
// H100 or H200 has SMs (so every CTA runs several rows and the ring and Q tiles wrap), rows that
// keep no block (the empty row's pass through the ring), tails, GQA, batch 2, causal and
// sliding-window bands, and head dims 64, 128 (two Q tiles) and 256 (one). The whole GPU suite
// also runs on this grid (ctest sparge_gpu_tests_sm90ws-persistent_kernel), against the CPU
// reference. Skipped with a message without an sm_90 GPU and sm_90a code.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

struct Case {
  const char* name;
  int64_t B, Hq, Hkv, N, D;
  DType dtype;
  bool causal;
  int window_left;  // -1: none
  double keep;      // probability of keeping a key block; every 5th row keeps none
};

struct GridRun {
  Status status;
  std::vector<float> out, lse;
  std::vector<unsigned long long> counters;
};

// A random padded mask: each key block kept with probability c.keep, every 5th row empty.
HostBlockMask random_mask(const Case& c, const SparseOptions& opts) {
  const int64_t nq = (c.N + opts.block_q - 1) / opts.block_q, nk = (c.N + opts.block_k - 1) / opts.block_k;
  std::vector<uint8_t> dense(c.B * c.Hq * nq * nk);
  std::mt19937_64 rng(uint64_t(c.N * 131 + c.D));
  std::bernoulli_distribution kept(c.keep);
  for (int64_t r = 0; r < c.B * c.Hq * nq; ++r)
    for (int64_t j = 0; j < nk; ++j) dense[r * nk + j] = r % 5 != 3 && kept(rng);
  return HostBlockMask::from_dense(dense, c.B, c.Hq, c.N, c.N, opts.block_q, opts.block_k);
}

GridRun run(const Case& c, const char* kernel) {
  const ScopedEnv pick("SPARGE_CUDA_KERNEL", kernel);
  SparseOptions opts;
  opts.causal = c.causal;
  opts.window_left = c.window_left;
  opts.pv_threshold.value = 6.0f;  // some λ skips: counters to compare
  const HostTensor hq = HostTensor::make(gaussian(c.B * c.Hq * c.N * c.D, 1, 2.0f), c.B, c.Hq, c.N,
                                         c.D, c.dtype, Layout::kHND);
  const HostTensor hk = HostTensor::make(gaussian(c.B * c.Hkv * c.N * c.D, 2), c.B, c.Hkv, c.N, c.D,
                                         c.dtype, Layout::kHND);
  const HostTensor hv = HostTensor::make(gaussian(c.B * c.Hkv * c.N * c.D, 3), c.B, c.Hkv, c.N, c.D,
                                         c.dtype, Layout::kHND);
  const DeviceTensor q = DeviceTensor::upload(hq), k = DeviceTensor::upload(hk),
                     v = DeviceTensor::upload(hv);
  const DeviceMask mask = DeviceMask::upload(random_mask(c, opts));
  DeviceTensor out = DeviceTensor::upload(HostTensor::poisoned(c.B, c.Hq, c.N, c.D, c.dtype, Layout::kHND));
  const ExtrasOut extras(c.B * c.Hq * c.N, c.Hq);
  const std::size_t bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer workspace(bytes);
  ExecContext ctx;
  ctx.workspace = workspace.get();
  ctx.workspace_bytes = bytes;
  GridRun r;
  r.status = block_sparse_attention(q.view, k.view, v.view, mask.mask, opts, out.view, extras.extras, ctx);
  const cudaError_t sync = cudaDeviceSynchronize();
  if (r.status.is_ok() && sync != cudaSuccess)
    r.status = Status::internal(std::string("cudaDeviceSynchronize: ") + cudaGetErrorString(sync));
  if (!r.status.is_ok()) return r;
  r.out = out.download();
  r.lse = extras.lse_host();
  r.counters = extras.counters_host();
  return r;
}

void expect_equal_grids(const Case& c) {
  SCOPED_TRACE(c.name);
  const GridRun rows = run(c, "sm90ws"), persistent = run(c, "sm90ws-persistent");
  ASSERT_TRUE(rows.status.is_ok()) << rows.status.message();
  ASSERT_TRUE(persistent.status.is_ok()) << persistent.status.message();
  const int64_t block_rows = c.B * c.Hq * ((c.N + 127) / 128);
  unsigned long long visited = 0, skipped = 0;
  for (int64_t h = 0; h < c.Hq; ++h) visited += rows.counters[2 * h], skipped += rows.counters[2 * h + 1];
  std::printf("[ info ] %s: %lld BlockMask rows, λ skipped %llu of %llu, rel L1 vs the row grid %.3g\n",
              c.name, static_cast<long long>(block_rows), skipped, visited,
              measure::rel_l1(persistent.out, rows.out));
  EXPECT_GT(block_rows, 132) << "fewer rows than an H100's SMs: no CTA would run two";
  EXPECT_FALSE(any_nan(rows.out));
  EXPECT_EQ(std::memcmp(rows.out.data(), persistent.out.data(), rows.out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(rows.lse.data(), persistent.lse.data(), rows.lse.size() * sizeof(float)), 0);
  EXPECT_EQ(rows.counters, persistent.counters);
}

#define SPARGE_SKIP_WITHOUT_SM90WS()                                                     \
  SPARGE_SKIP_WITHOUT_GPU();                                                             \
  if (!sm90ws_runs())                                                                    \
  GTEST_SKIP() << "the sm90ws kernel does not run here (needs an sm_90 device and sm_90a code)"

TEST(CudaPersistentGrid, EqualsTheRowGridBitForBit) {
  SPARGE_SKIP_WITHOUT_SM90WS();
  const Case cases[] = {
      {"d128 bf16 B2 GQA tail", 2, 4, 2, 4100, 128, DType::kBFloat16, false, -1, 0.4},
      {"d128 bf16 B2 GQA causal", 2, 4, 2, 4100, 128, DType::kBFloat16, true, -1, 0.6},
      {"d128 fp16 dense rows", 1, 6, 6, 3000, 128, DType::kFloat16, false, -1, 1.0},
      {"d64 fp16 window 500", 1, 8, 4, 3000, 64, DType::kFloat16, true, 500, 0.7},
      {"d256 bf16 causal", 1, 12, 3, 2100, 256, DType::kBFloat16, true, -1, 0.5},
  };
  for (const Case& c : cases) expect_equal_grids(c);
}

// Small enough for compute-sanitizer (racecheck, memcheck): 134 rows of ~13 blocks (5 turns at
// d64), so that two CTAs of an H100 or H200 run a second row through the other Q tile, starting
// at a stage of the ring other than 0.
TEST(CudaPersistentGrid, SmallCaseForSanitizers) {
  SPARGE_SKIP_WITHOUT_SM90WS();
  expect_equal_grids({"d64 fp16 134 rows", 1, 2, 1, 8500, 64, DType::kFloat16, false, -1, 0.1});
}

}  // namespace
}  // namespace sparge::test
