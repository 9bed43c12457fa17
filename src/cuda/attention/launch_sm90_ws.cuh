// Host launcher of the warp-specialized sm_90a attention kernel for one (dtype, head dim, banded)
// instance: encodes the tensor maps of Q, K, V and O, or falls back to the cp.async wgmma kernel
// (launch_attn_sm90) where the TMA cannot address them (base not 16-byte aligned, a token/head/
// batch stride not a multiple of 16 bytes or >= 2^40 bytes, no cuTensorMapEncodeTiled in the
// driver). Head dim 256 has no attn_fwd_sm90 instance (tools/gen_instances.py): there the same
// cases return Status::unsupported. Included only by the generated files
// src/cuda/instances/attn_sm90ws_*.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/attention/kernel_sm90_ws.cuh"
#include "cuda/attention/kernel_sm90_ws_persistent.cuh"
#include "cuda/attention/launch_kernel.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits_sm90_ws.cuh"
#include "cuda/common/check.cuh"
#include "cuda/common/tma_sm90.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90ws(const AttnParams& params, cudaStream_t stream, bool persistent) {
  using Traits = AttnTraitsSm90Ws<T, kHeadDim>;
  constexpr auto kernel = attn_fwd_sm90_ws<Traits, kBanded>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  AttnParamsSm90Ws ws{};
  ws.attn = params;
  const bool tma_ok =
      encode_tensor_map_sw128(&ws.tma_q, params.q, kBf16, kHeadDim, params.seq_q, params.heads_q,
                              params.batch, params.q_stride, Traits::kBlockM) &&
      encode_tensor_map_sw128(&ws.tma_k, params.k, kBf16, kHeadDim, params.seq_k, params.heads_kv,
                              params.batch, params.k_stride, Traits::kBlockN) &&
      encode_tensor_map_sw128(&ws.tma_v, params.v, kBf16, kHeadDim, params.seq_k, params.heads_kv,
                              params.batch, params.v_stride, Traits::kBlockN) &&
      encode_tensor_map_sw128(&ws.tma_o, params.o, kBf16, kHeadDim, params.seq_q, params.heads_q,
                              params.batch, params.o_stride, 64);
  if (!tma_ok) {
    if constexpr (kHeadDim == 256)
      return Status::unsupported(
          "q, k, v and o with head_dim 256 need the TMA (the sm90ws kernel is the only one with "
          "head_dim 256): 16-byte aligned base, batch/head/token strides multiples of 16 bytes "
          "and < 2^40 bytes, and cuTensorMapEncodeTiled in the CUDA driver");
    else
      return launch_attn_sm90<T, kHeadDim, kBanded>(params, stream);
  }

  if (persistent) {
    // One CTA per SM (a host-side lookup, as dispatch.cu's compute-capability queries each call).
    int device = 0, sms = 0;
    SPARGE_CUDA_CHECK(cudaGetDevice(&device));
    SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t rows = int64_t(params.num_q_blocks) * params.heads_q * params.batch;
    const int64_t ctas = rows < sms ? rows : sms;
    if (rows + ctas < (int64_t(1) << 31))  // the kernel's row index is an int
      return launch_kernel_on<attn_fwd_sm90_ws_persistent<Traits, kBanded>>(
          "attn_fwd_sm90_ws_persistent", dim3(unsigned(ctas)), Traits::kThreads,
          Traits::kPersistentSmemBytes, ws, stream);
  }
  return launch_attention_kernel<Traits, kernel>("attn_fwd_sm90_ws", params, ws, stream);
}

}  // namespace sparge::cuda
