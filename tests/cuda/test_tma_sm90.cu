// The TMA pieces of src/cuda/common/tma_sm90.cuh on the device (sm_90 only): a 64-channel box
// lands in the SW128 layout the wgmma descriptors read (wgmma_sm90.cuh), rows past the token
// count are zero-filled, and the encoder accepts the layouts the tests use (HND and NHD with
// padded strides) while refusing what the TMA cannot address (then attn_fwd_sm90_ws falls back).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cuda/common/mbarrier_sm90.cuh"
#include "cuda/common/tma_sm90.cuh"
#include "gpu_test_util.h"
#include "sparge/build_info.h"

namespace sparge::test {
namespace {

constexpr int kBoxRows = 64;

// One CTA: thread 0 loads the box at (channel c0, token t0, head, batch) into a 1024-byte-aligned
// tile; then every element is copied out in shared-memory order.
__global__ void tma_box_to_global(const __grid_constant__ CUtensorMap map, int c0, int t0, int head,
                                  int batch, uint16_t* out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ __align__(1024) uint16_t tile[kBoxRows * 64];
  __shared__ uint64_t bar;
  if (threadIdx.x == 0) {
    cuda::mbarrier_init(&bar, 1);
    cuda::mbarrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::mbarrier_arrive_expect_tx(&bar, kBoxRows * 64 * 2);
    cuda::tma_load_4d(&map, &bar, tile, c0, t0, head, batch);
  }
  cuda::mbarrier_wait(&bar, 0);
  for (int i = threadIdx.x; i < kBoxRows * 64; i += blockDim.x) out[i] = tile[i];
#endif
}

bool sm90_device() {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return SPARGE_CUDA_HAVE_SM90A && major == 9 && minor == 0;
}

TEST(TmaSm90, BoxLandsSwizzledWithZeroTail) {
  SPARGE_SKIP_WITHOUT_GPU();
  if (!sm90_device()) GTEST_SKIP() << "needs an sm_90 device and a build with sm_90a";
  // NHD tensor [B 2][N 100][H 3][D 128] of distinct odd 16-bit patterns (0 only from the fill).
  const int B = 2, N = 100, H = 3, D = 128;
  const int64_t stride[3] = {int64_t(N) * H * D, D, int64_t(H) * D};  // batch, head, token
  std::vector<uint16_t> host(size_t(B) * N * H * D);
  for (size_t i = 0; i < host.size(); ++i) host[i] = uint16_t((i * 2 + 1) & 0xffff);
  DeviceBuffer dev(host.size() * 2), out(kBoxRows * 64 * 2);
  SPARGE_ASSERT_CUDA(cudaMemcpy(dev.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  CUtensorMap map;
  ASSERT_TRUE(cuda::encode_tensor_map_sw128(&map, dev.get(), true, D, N, H, B, stride, kBoxRows));
  const int c0 = 64, t0 = 64, head = 2, batch = 1;  // rows 64..99 exist, 100..127 do not
  tma_box_to_global<<<1, 128>>>(map, c0, t0, head, batch, static_cast<uint16_t*>(out.get()));
  SPARGE_ASSERT_CUDA(cudaGetLastError());
  SPARGE_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> got(kBoxRows * 64);
  SPARGE_ASSERT_CUDA(cudaMemcpy(got.data(), out.get(), got.size() * 2, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int r = 0; r < kBoxRows; ++r)
    for (int c = 0; c < 64; ++c) {
      // SW128: row r is 128 bytes; its 16-byte chunk c/8 sits at chunk (c/8) ^ (r % 8).
      const int at = r * 64 + (((c / 8) ^ (r % 8)) * 8) + c % 8;
      const int t = t0 + r;
      const uint16_t want = t < N ? host[batch * stride[0] + head * stride[1] + t * stride[2] + c0 + c] : 0;
      if (got[at] != want && ++bad <= 5) ADD_FAILURE() << "row " << r << " col " << c << ": " << got[at] << " != " << want;
    }
  EXPECT_EQ(bad, 0);
}

TEST(TmaSm90, EncoderAcceptsPaddedLayoutsAndRefusesMisalignment) {
  SPARGE_SKIP_WITHOUT_GPU();
  if (!sm90_device()) GTEST_SKIP() << "needs an sm_90 device and a build with sm_90a";
  const int B = 2, N = 1000, H = 4, D = 64, pad = 3;
  DeviceBuffer buf(size_t(B) * H * (N + pad) * D * 2 + 64);
  CUtensorMap map;
  const int64_t hnd[3] = {int64_t(H) * (N + pad) * D, int64_t(N + pad) * D, D};
  const int64_t nhd[3] = {int64_t(N + pad) * H * D, D, int64_t(H) * D};
  EXPECT_TRUE(cuda::encode_tensor_map_sw128(&map, buf.get(), true, D, N, H, B, hnd, 128));
  EXPECT_TRUE(cuda::encode_tensor_map_sw128(&map, buf.get(), false, D, N, H, B, nhd, 64));
  const int64_t odd_token[3] = {hnd[0], hnd[1], D + 4};  // 136-byte rows: not a multiple of 16
  EXPECT_FALSE(cuda::encode_tensor_map_sw128(&map, buf.get(), true, D, N, H, B, odd_token, 64));
  auto* shifted = static_cast<char*>(buf.get()) + 8;  // base not 16-byte aligned
  EXPECT_FALSE(cuda::encode_tensor_map_sw128(&map, shifted, true, D, N, H, B, hnd, 64));
}

}  // namespace
}  // namespace sparge::test
