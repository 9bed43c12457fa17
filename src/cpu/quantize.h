// Emulation of the quantized mode (docs/method.md "Quantized mode"), shared by the CPU reference
// and the fast CPU backend: per-block INT8 Q and smoothed K, per-channel FP8 e4m3 V.
#pragma once

#include <cstdint>
#include <vector>

#include "common/backend.h"

namespace sparge::cpu {

// round(x / scale), half away from zero, saturated to [-127, 127].
int8_t quantize_int8(float x, float scale);

struct QuantizedInputs {
  std::vector<int8_t> q, k;    // logical HND contiguous [B,Hq,Nq,D] / [B,Hkv,Nk,D]; k is k - km
  std::vector<float> q_scale;  // [B, Hq, nq] (block_q rows)
  std::vector<float> k_scale;  // [B, Hkv, nk] (block_k rows)
  std::vector<float> v;        // dequantized FP8 V (v8 * s_v) as fp32, HND [B,Hkv,Nk,D]
  std::vector<float> v_scale;  // [B, Hkv, D]
};

// Quantizes p.q, p.k, p.v with the block sizes of p.opts.
QuantizedInputs quantize_inputs(const detail::Problem& p);

}  // namespace sparge::cpu
