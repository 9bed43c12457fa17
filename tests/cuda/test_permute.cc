// GPU token permutation against the CPU one: Hilbert order of a video grid after text tokens,
// forward and inverse, HND and NHD, bf16 and fp32; the inverse undoes the forward exactly. Rows
// of 80 and 160 bytes take the kernel's 16-byte units; rows of 72 and 140 bytes (head dims 36 and
// 35 in rows padded to 40 channels, which keeps the strides 16-byte multiples as cuda requires)
// its element copies.
#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

// t with its logical head dim cut to d (the rows keep their storage and strides).
HostTensor narrowed(HostTensor t, int64_t d) {
  t.view.head_dim = d;
  return t;
}

void check_permute(DType dtype, Layout layout, int64_t D) {
  const int64_t B = 2, H = 3, text = 5, T = 3, Hh = 5, W = 7, Dp = 40;
  const int64_t N = text + T * Hh * W;
  const std::vector<int64_t> order = hilbert_order(T, Hh, W);
  const auto poisoned = [&] { return narrowed(HostTensor::poisoned(B, H, N, Dp, dtype, layout), D); };
  HostTensor in = narrowed(HostTensor::make(gaussian(B * H * N * Dp, 21), B, H, N, Dp, dtype, layout, 2), D);
  DeviceTensor din = DeviceTensor::upload(in);
  DeviceBuffer dorder(sizeof(int64_t) * order.size());
  SPARGE_ASSERT_CUDA(cudaMemcpy(dorder.get(), order.data(), dorder.bytes(), cudaMemcpyHostToDevice));
  const auto* dord = static_cast<const int64_t*>(dorder.get());

  for (bool inverse : {false, true}) {
    HostTensor ref = poisoned();
    Status st = permute_tokens(in.view, ref.view, order.data(), int64_t(order.size()), text, inverse);
    ASSERT_TRUE(st.is_ok()) << st.message();
    DeviceTensor dout = DeviceTensor::upload(poisoned());
    st = permute_tokens(din.view, dout.view, dord, int64_t(order.size()), text, inverse);
    ASSERT_TRUE(st.is_ok()) << st.message();
    SPARGE_ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = dout.download();
    EXPECT_FALSE(any_nan(got));
    EXPECT_EQ(got, ref.to_hnd()) << (inverse ? "inverse" : "forward");
  }

  // Forward then inverse on the device gives the input back.
  DeviceTensor mid = DeviceTensor::upload(poisoned());
  DeviceTensor back = DeviceTensor::upload(poisoned());
  ASSERT_TRUE(permute_tokens(din.view, mid.view, dord, int64_t(order.size()), text, false).is_ok());
  ASSERT_TRUE(permute_tokens(mid.view, back.view, dord, int64_t(order.size()), text, true).is_ok());
  SPARGE_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(back.download(), in.to_hnd());
}

TEST(PermuteTokens, MatchesCpuBf16Hnd) {
  SPARGE_SKIP_WITHOUT_GPU();
  check_permute(DType::kBFloat16, Layout::kHND, 40);
}
TEST(PermuteTokens, MatchesCpuBf16HndElementCopies) {
  SPARGE_SKIP_WITHOUT_GPU();
  check_permute(DType::kBFloat16, Layout::kHND, 36);
}
TEST(PermuteTokens, MatchesCpuFp32Nhd) {
  SPARGE_SKIP_WITHOUT_GPU();
  check_permute(DType::kFloat32, Layout::kNHD, 40);
}
TEST(PermuteTokens, MatchesCpuFp32NhdElementCopies) {
  SPARGE_SKIP_WITHOUT_GPU();
  check_permute(DType::kFloat32, Layout::kNHD, 35);
}

}  // namespace
}  // namespace sparge::test
