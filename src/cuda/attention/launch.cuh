// Host launchers of the attention kernels (sm80 mma.sync, exact and with INT8 Q·Kᵀ; sm_90a wgmma)
// for one (dtype, head dim, banded) instance. Included only by the generated files in src/cuda/instances/.
#pragma once

#include <cuda_runtime.h>

#include "cuda/attention/kernel_sm80.cuh"
#include "cuda/attention/kernel_sm90.cuh"
#include "cuda/attention/launch_kernel.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/traits.cuh"
#include "cuda/attention/traits_sm90.cuh"
#include "cuda/common/check.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn(const AttnParams& params, cudaStream_t stream) {
  using Traits = AttnTraitsSm80<T, kHeadDim>;
  return launch_attention_kernel<Traits, attn_fwd_sm80<Traits, kBanded, AttnParams>>(
      "attn_fwd_sm80", params, params, stream);
}

// The mma.sync kernel's dense-mask instances (kBanded is true: a dense mask runs banded).
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80dm(const AttnParams& params, cudaStream_t stream) {
  static_assert(kBanded, "the dense-mask instances are banded");
  using Traits = AttnTraitsSm80<T, kHeadDim>;
  return launch_attention_kernel<Traits, attn_fwd_sm80<Traits, true, AttnParams, true>>(
      "attn_fwd_sm80_dense_mask", params, params, stream);
}

// The kernel's parameters on INT8 Q/K codes.
inline AttnParamsSm80Q8 sm80q8_params(const AttnParams& params, const QuantOperands& quant) {
  AttnParamsSm80Q8 args;
  static_cast<AttnParams&>(args) = params;
  args.q8 = quant.q;
  args.k8 = quant.k;
  args.q_scale = quant.q_scale;
  args.k_scale = quant.k_scale;
  args.km = quant.km;
  args.k_groups = quant.k_groups;
  return args;
}

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80q8(const AttnParams& params, const QuantOperands& quant,
                          cudaStream_t stream) {
  using Traits = AttnTraitsSm80<T, kHeadDim, true>;
  return launch_attention_kernel<Traits, attn_fwd_sm80<Traits, kBanded, AttnParamsSm80Q8>>(
      "attn_fwd_sm80_q8", params, sm80q8_params(params, quant), stream);
}

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80q8dm(const AttnParams& params, const QuantOperands& quant,
                            cudaStream_t stream) {
  static_assert(kBanded, "the dense-mask instances are banded");
  using Traits = AttnTraitsSm80<T, kHeadDim, true>;
  return launch_attention_kernel<Traits, attn_fwd_sm80<Traits, true, AttnParamsSm80Q8, true>>(
      "attn_fwd_sm80_q8_dense_mask", params, sm80q8_params(params, quant), stream);
}

template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90(const AttnParams& params, cudaStream_t stream) {
  using Traits = AttnTraitsSm90<T, kHeadDim>;
  return launch_attention_kernel<Traits, attn_fwd_sm90<Traits, kBanded>>("attn_fwd_sm90", params,
                                                                         params, stream);
}

}  // namespace sparge::cuda
