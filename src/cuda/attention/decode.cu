// Host launcher of the split-KV decode kernels (decode.cuh) and their instances: fp16 and bf16
// at head dims 64, 128 and 256.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/attention/decode.cuh"
#include "cuda/common/check.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim>
Status launch_attn_decode(const AttnParams& p, const DecodePartials& part, cudaStream_t stream) {
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "a lane holds kHeadDim / 32 channels");
  constexpr int smem = 2 * kDecodeKeys * kHeadDim * int(sizeof(T)) +
                       (kDecodeMaxRows * kDecodeKeys + kDecodeMaxRows) * int(sizeof(float));
  if (smem > 48 * 1024)  // head dim 256: 64 KB of tiles
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(decode_split<T, kHeadDim>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  decode_split<T, kHeadDim>
      <<<dim3(part.splits, p.batch * p.heads_q), kDecodeThreads, smem, stream>>>(p, part);
  SPARGE_CUDA_CHECK_LAUNCH("decode_split launch");
  decode_merge<T, kHeadDim><<<dim3(p.batch * p.heads_q, p.seq_q), kHeadDim, 0, stream>>>(p, part);
  SPARGE_CUDA_CHECK_LAUNCH("decode_merge launch");
  return Status::ok();
}

#define SPARGE_DECODE_INSTANCE(T, D) \
  template Status launch_attn_decode<T, D>(const AttnParams&, const DecodePartials&, cudaStream_t);
SPARGE_DECODE_INSTANCE(__half, 64)
SPARGE_DECODE_INSTANCE(__half, 128)
SPARGE_DECODE_INSTANCE(__half, 256)
SPARGE_DECODE_INSTANCE(__nv_bfloat16, 64)
SPARGE_DECODE_INSTANCE(__nv_bfloat16, 128)
SPARGE_DECODE_INSTANCE(__nv_bfloat16, 256)
#undef SPARGE_DECODE_INSTANCE

}  // namespace sparge::cuda
