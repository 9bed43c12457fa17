// Host launcher of the quantized warp-specialized sm_90a attention kernel for one (output dtype,
// head dim, banded) instance: encodes the tensor maps of the quantization pass's Q8, K8 (boxes
// of kHeadDim-byte rows, SW128 at d128 and SW64 at d64) and V8 (SW64 boxes of 64 keys × D channels) and launches
// attn_fwd_sm90_ws with MainloopSm90Q8. The buffers are the library's own (contiguous, from the
// workspace), so the TMA can always address them; an encoder failure is an internal error.
// Included only by the generated files src/cuda/instances/attn_sm90q8_*.cu.
#pragma once

#include <cuda_runtime.h>


#include "cuda/attention/kernel_sm90_ws.cuh"
#include "cuda/attention/launch_kernel.cuh"
#include "cuda/attention/mainloop_sm90_q8.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits_sm90_q8.cuh"
#include "cuda/common/check.cuh"
#include "cuda/common/tma_sm90.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90q8(const AttnParams& params, const QuantOperands& quant,
                          cudaStream_t stream) {
  using Traits = AttnTraitsSm90Q8<T, kHeadDim>;
  using Mainloop = MainloopSm90Q8<Traits, kBanded>;
  constexpr auto kernel = attn_fwd_sm90_ws<Traits, kBanded, Mainloop>;
  AttnParamsSm90Q8 q8{};
  q8.attn = params;
  q8.q_scale = quant.q_scale;
  q8.k_scale = quant.k_scale;
  q8.v_scale = quant.v_scale;
  q8.km = quant.km;
  q8.k_groups = quant.k_groups;
  const int64_t D = kHeadDim, B = params.batch, Hq = params.heads_q, Hk = params.heads_kv;
  const int64_t Nq = params.seq_q, Nk = params.seq_k, Nv = quant.v8_keys;
  const int64_t q_stride[3] = {Hq * Nq * D, Nq * D, D}, k_stride[3] = {Hk * Nk * D, Nk * D, D};
  const int64_t v_stride[3] = {Hk * D * Nv, D * Nv, Nv};  // (batch, head, channel) of [.., D, Nv]
  constexpr CUtensorMapSwizzle kQkSwizzle = Traits::kQkRowBytes == kSw128RowBytes
                                                ? CU_TENSOR_MAP_SWIZZLE_128B
                                                : CU_TENSOR_MAP_SWIZZLE_64B;
  const bool tma_ok =
      encode_tensor_map_4d(&q8.tma_q, quant.q, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, {D, Nq, Hq, B},
                           q_stride, kHeadDim, Traits::kBlockM, kQkSwizzle) &&
      encode_tensor_map_4d(&q8.tma_k, quant.k, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, {D, Nk, Hk, B},
                           k_stride, kHeadDim, Traits::kBlockN, kQkSwizzle) &&
      encode_tensor_map_4d(&q8.tma_v, quant.v8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, {Nv, D, Hk, B},
                           v_stride, Traits::kBlockN, kHeadDim, CU_TENSOR_MAP_SWIZZLE_64B);
  if (!tma_ok)
    return Status::internal(
        "the quantized attention kernel could not encode the TMA maps of its Q8/K8/V8 buffers "
        "(cuTensorMapEncodeTiled missing in the CUDA driver, or a buffer not 16-byte aligned)");

  return launch_attention_kernel<Traits, kernel>("attn_fwd_sm90_q8", params, q8, stream);
}

}  // namespace sparge::cuda
