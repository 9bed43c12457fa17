// Quantization pass, V to FP8 e4m3 in the V8 layout (common/quant_layout.h): channel-major rows
// of keys, keys permuted inside each 16 so that an FP8 P·V wgmma takes P from registers as is.
// A CTA takes kV8TileKeys keys × D channels of one (b, kv head). Step 1: a thread reads the four
// keys that land in one 32-bit word of a V8 row (2t, 2t+1, 2t+8, 2t+9 of a 16-key group) for 8
// channels (16-byte loads; D/8 consecutive threads per key row), quantizes them with the channel
// scales and stores 8 words, one per channel, into shared memory; step 2 writes the rows out, 64
// bytes per channel. Keys past seq_k are 0x00 (the padding of the layout).
#pragma once

#include <cstdint>

#include "cuda/quantize/codes.cuh"
#include "cuda/quantize/params.h"

namespace sparge::cuda {

constexpr int kVThreads = 256;
constexpr int kV8TileWords = kV8TileKeys / 4;  // 32-bit words per channel row of a tile
constexpr int kV8SmemPitch = kV8TileWords + 1;  // words; the +1 spreads a word column over banks

// grid (v8_keys / kV8TileKeys, batch·heads_kv).
template <typename T>
__global__ void __launch_bounds__(kVThreads) quantize_v_e4m3(const QuantizeParams p) {
  __shared__ uint32_t sV8[kQuantMaxHeadDim * kV8SmemPitch];
  __shared__ float sInvScale[kQuantMaxHeadDim];
  const int bh = blockIdx.y, b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int key0 = blockIdx.x * kV8TileKeys;
  const int D = p.head_dim, lanes_per_row = D / 8;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[1];
  for (int d = threadIdx.x; d < D; d += kVThreads) sInvScale[d] = code_reciprocal(p.v_scale[int64_t(bh) * D + d]);
  __syncthreads();

  // 1. Word q of every channel row: keys 16·(q/4) + {2t, 2t+1, 2t+8, 2t+9}, t = q % 4.
  for (int item = threadIdx.x; item < kV8TileWords * lanes_per_row; item += kVThreads) {
    const int q = item / lanes_per_row, col = (item % lanes_per_row) * 8;
    const int first = 16 * (q / 4) + 2 * (q % 4);
    const int keys[4] = {first, first + 1, first + 8, first + 9};
    // The four loads first, then the codes (a load per key between codes kept one in flight).
    uint4 raw[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int key = key0 + keys[k];
      raw[k] = key < p.seq_k ? *reinterpret_cast<const uint4*>(gV + int64_t(key) * p.v_stride[2] + col)
                             : make_uint4(0u, 0u, 0u, 0u);
    }
    uint32_t word[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (key0 + keys[k] >= p.seq_k) continue;  // padding: 0x00
      float x[8];
      widen_chunk8<T>(raw[k], x);
#pragma unroll
      for (int j = 0; j < 8; ++j) word[j] |= uint32_t(e4m3_code(x[j], sInvScale[col + j])) << (8 * k);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) sV8[(col + j) * kV8SmemPitch + q] = word[j];
  }
  __syncthreads();

  // 2. Rows out: kV8TileWords consecutive threads write one channel's 64 bytes.
  uint32_t* gOut = reinterpret_cast<uint32_t*>(p.v8 + int64_t(bh) * D * p.v8_keys + key0);
  const int64_t pitch_words = p.v8_keys / 4;
  for (int w = threadIdx.x; w < D * kV8TileWords; w += kVThreads) {
    const int d = w / kV8TileWords, q = w % kV8TileWords;
    gOut[d * pitch_words + q] = sV8[d * kV8SmemPitch + q];
  }
}

}  // namespace sparge::cuda
