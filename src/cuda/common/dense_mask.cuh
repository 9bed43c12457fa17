// A dense attention mask (sparge::AttentionMask::data, SDPA's attn_mask) as the CUDA kernels read
// it: element values through the mask's broadcast strides, and the per-tile classes that Stage 1
// and Stage 2 share (docs/method.md, "Attention masks"; the CPU's cpu/attn_mask.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "sparge/types.h"

namespace sparge::cuda {

// A tile's class, as cpu::TileClass: no pair visible (never kept, never computed), every visible
// pair unmasked with value 0 (computed as without a mask), or anything else (the element mask
// is applied to its scores).
constexpr uint8_t kTileSkipped = 0, kTilePlain = 1, kTilePartial = 2;

struct DenseMaskView {
  const void* data = nullptr;  // null: no dense mask
  int dtype = 0;               // MaskDType
  int64_t batch = 1, heads = 1, seq_q = 1;  // 1: broadcast over that axis
  int64_t stride_b = 0, stride_h = 0, stride_q = 0, stride_k = 1;
  // The tile classes, [class_batch, class_heads, nq, nk] in the block geometry of the call
  // (class_batch / class_heads 1: the same for every batch entry / head); null: not computed.
  const uint8_t* tile_class = nullptr;
  int class_batch = 1, class_heads = 1;
};

#if defined(__CUDACC__)
// The offset of (b, query head h, row r, key 0) in the mask's elements (broadcast axes add 0).
__device__ __forceinline__ int64_t dense_mask_row(const DenseMaskView& m, int b, int h, int r) {
  return (m.batch > 1 ? int64_t(b) * m.stride_b : 0) + (m.heads > 1 ? int64_t(h) * m.stride_h : 0) +
         (m.seq_q > 1 ? int64_t(r) * m.stride_q : 0);
}

// Element `off` of a mask of element type E as the additive term in natural-log units: 0 or -inf
// for a bool mask (true = attend), the value itself for a float one.
template <typename E>
__device__ __forceinline__ float dense_mask_at(const void* data, int64_t off) {
  const E x = __ldg(static_cast<const E*>(data) + off);
  if constexpr (std::is_same_v<E, unsigned char>) return x ? 0.0f : -INFINITY;
  else if constexpr (std::is_same_v<E, __half>) return __half2float(x);
  else if constexpr (std::is_same_v<E, __nv_bfloat16>) return __bfloat162float(x);
  else return x;
}

// Calls f(E{}) with E the mask's element type: loops over many elements put their loop inside f,
// so that the dtype is decided once, not per element.
template <typename F>
__device__ __forceinline__ void with_mask_type(const DenseMaskView& m, F&& f) {
  switch (m.dtype) {
    case int(MaskDType::kBool): f((unsigned char)0); break;
    case int(MaskDType::kFloat16): f(__half()); break;
    case int(MaskDType::kBFloat16): f(__nv_bfloat16()); break;
    default: f(0.0f); break;
  }
}

// The additive term of (b, query head h, row r, key c), for a single element.
__device__ __forceinline__ float dense_mask_value(const DenseMaskView& m, int b, int h, int r,
                                                  int c) {
  const int64_t off = dense_mask_row(m, b, h, r) + int64_t(c) * m.stride_k;
  float v = 0.0f;
  with_mask_type(m, [&](auto element) { v = dense_mask_at<decltype(element)>(m.data, off); });
  return v;
}

// The class of tile (query block i, key block j) of (b, h); partial when no table was made.
__device__ __forceinline__ uint8_t tile_class_of(const DenseMaskView& m, int b, int h, int i,
                                                 int j, int num_q_blocks, int num_k_blocks) {
  if (m.tile_class == nullptr) return kTilePartial;
  const int64_t bb = m.class_batch > 1 ? b : 0, hh = m.class_heads > 1 ? h : 0;
  return m.tile_class[((bb * m.class_heads + hh) * num_q_blocks + i) * int64_t(num_k_blocks) + j];
}
#endif

}  // namespace sparge::cuda
