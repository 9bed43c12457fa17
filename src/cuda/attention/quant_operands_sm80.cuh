// What the sm80 kernel (kernel_sm80.cuh) reads for Q·Kᵀ: the inputs' q and k (exact kernel), or
// the quantization pass's INT8 codes and scales (Traits::kInt8Qk, QuantMode::kInt8), behind one
// interface so that the kernel body is the same for both.
#pragma once

#include <cstdint>

#include "cuda/attention/params.h"

namespace sparge::cuda {

// The (b, h) slice of Q and the (b, hk) slice of K the kernel loads, their token strides, and
// (kInt8Qk) the scales. Whatever the kernel can re-read from its parameters (strides, counts) is
// read from them at each use, not held: a copy in registers made the exact kernel spill more.
template <typename Traits, bool kInt8 = Traits::kInt8Qk>
struct QkOperands {
  using T = typename Traits::Element;
  const AttnParams& p;
  const T* q;
  const T* k;

  __device__ __forceinline__ QkOperands(const AttnParams& params, int b, int h, int hk)
      : p(params),
        q(static_cast<const T*>(params.q) + int64_t(b) * params.q_stride[0] +
          int64_t(h) * params.q_stride[1]),
        k(static_cast<const T*>(params.k) + int64_t(b) * params.k_stride[0] +
          int64_t(hk) * params.k_stride[1]) {}
  __device__ __forceinline__ int64_t q_token_stride() const { return p.q_stride[2]; }
  __device__ __forceinline__ int64_t k_token_stride() const { return p.k_stride[2]; }
};

// The codes are the pass's contiguous [B, H, N, D] buffers (common/quant_layout.h); Q has one
// scale per row, K one per 16 keys (kQuantKRows), k_groups = ⌈seq_k / 16⌉ per (b, kv head).
template <typename Traits>
struct QkOperands<Traits, true> {
  const AttnParamsSm80Q8& p;
  const int8_t* q;
  const int8_t* k;
  const float* q_scale;  // this (b, h)'s [seq_q]
  const float* k_scale;  // this (b, hk)'s [k_groups]

  __device__ __forceinline__ QkOperands(const AttnParamsSm80Q8& params, int b, int h, int hk)
      : p(params),
        q(params.q8 + (int64_t(b) * params.heads_q + h) * params.seq_q * Traits::kHeadDim),
        k(params.k8 + (int64_t(b) * params.heads_kv + hk) * params.seq_k * Traits::kHeadDim),
        q_scale(params.q_scale + (int64_t(b) * params.heads_q + h) * params.seq_q),
        k_scale(params.k_scale + (int64_t(b) * params.heads_kv + hk) * params.k_groups) {}
  static constexpr int64_t q_token_stride() { return Traits::kHeadDim; }
  static constexpr int64_t k_token_stride() { return Traits::kHeadDim; }

  // The scales of the tile's keys [key0, key0 + kBlockN) in groups of 16; a group past the last
  // (a tail tile) reads none and gives 0 (its keys are masked, their codes zero-filled).
  __device__ __forceinline__ void key_scales(int key0, float (&out)[Traits::kBlockN / 16]) const {
    static_assert(Traits::kBlockN % 16 == 0, "whole K scale groups per tile");
#pragma unroll
    for (int i = 0; i < Traits::kBlockN / 16; ++i) {
      const int g = key0 / 16 + i;
      out[i] = g < p.k_groups ? __ldg(k_scale + g) : 0.0f;
    }
  }
};

}  // namespace sparge::cuda
