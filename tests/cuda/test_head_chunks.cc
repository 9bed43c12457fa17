// More than 256 query heads with per-head thresholds on CUDA (issue 14 item 6): the public entries
// cut the call into head chunks (common/head_chunks.h; the views are checked on the CPU in
// tests/cpu/test_head_chunks.cc), so 300 query heads over 3 KV heads with per-head sim, top-k
// and λ run, with masks equal to the CPU's and outputs within the GPU tests' bound of the
// float32 reference. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

TEST(CudaHeadChunks, ThreeHundredHeadsWithPerHeadThresholds) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t Hq = 300, Hkv = 3, N = 512, D = 64;  // 4 x 8 tiles of the kernel's 128 x 64
  const HostTensor q = HostTensor::make(gaussian(Hq * N * D, 41), 1, Hq, N, D, DType::kBFloat16,
                                        Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(Hkv * N * D, 42), 1, Hkv, N, D,
                                        DType::kBFloat16, Layout::kHND);
  const HostTensor v = HostTensor::make(gaussian(Hkv * N * D, 43), 1, Hkv, N, D,
                                        DType::kBFloat16, Layout::kHND);
  std::vector<float> sim(Hq), select(Hq), lambda(Hq);
  for (int64_t h = 0; h < Hq; ++h) {
    sim[h] = -1.0f + 0.5f * float(h % 4);
    select[h] = 0.2f + 0.1f * float(h % 7);
    lambda[h] = 4.0f + float(h % 5);
  }
  SparseOptions o;
  o.causal = true;
  o.select = SelectMode::kTopK;
  o.sim_threshold.per_head = sim.data();
  o.select_value.per_head = select.data();
  o.pv_threshold.per_head = lambda.data();
  const MaskAgreement m = predict_on_cpu_and_gpu(q, k, o);
  ASSERT_TRUE(m.ok);
  EXPECT_GE(m.identical, 0.995);
  const EndToEnd e = sparse_attention_on_cpu_and_gpu(q, k, v, o);
  ASSERT_TRUE(e.ok);
  EXPECT_FALSE(any_nan(e.out));
  const double err = measure::rel_l1(e.out, e.ref);
  std::printf("[ head chunks ] 300 heads: identical blocks %.5f, rel L1 %.3g\n", m.identical, err);
  EXPECT_LT(err, 2e-2);
}

}  // namespace
}  // namespace sparge::test
