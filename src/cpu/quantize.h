// Emulation of the quantized mode (docs/method.md "Quantized mode"), shared by the CPU reference
// and the fast CPU backend, and the oracle of the CUDA quantization pass (src/cuda/quantize/),
// which must produce the same bytes: INT8 Q and smoothed K with one scale per group of rows,
// per-channel FP8 e4m3 V (also in the transposed V8 layout of common/quant_layout.h). It also
// holds the two rules of the attention itself that the quantization brings: P's e4m3 rounding
// for the FP8 P·V product, and the LSE shift that smoothing K leaves.
#pragma once

#include <cstdint>
#include <vector>

#include "common/backend.h"
#include "common/quant_layout.h"

namespace sparge::cpu {

// round(x · rn(1/scale)), half away from zero, saturated to [-127, 127]; a NaN product gives 0.
// The reciprocal, rounded once, replaces a division per element (the GPU pass computes it once
// per group), and both backends round the same way.
int8_t quantize_int8(float x, float scale);

// The scale of a group whose largest |x| is amax: amax/127 + 1e-7 (NaN stays NaN).
float int8_scale(float amax);

// v · rn(1/s_v) in e4m3 (round to nearest even, satfinite), every NaN as detail::kE4m3Nan.
uint8_t quantize_e4m3(float v, float scale);

// max(a, |x|) that keeps a NaN, so a NaN input poisons its group's scale instead of vanishing.
float abs_max(float a, float x);

// P of the FP8 P·V product is exponentiated as kPScale · 2^(t − m) (t the score, m the row's
// running max of that tile, log2 units), so that the row's largest P, 2^0, lands on e4m3's
// largest value and small P keep their mantissa bits instead of going subnormal. Only P·V sees
// the e4m3 rounding of that value; l sums it unrounded, and o = acc / l cancels the factor.
constexpr double kPScale = detail::kE4m3Max;

// x[i] = e4m3_bits_to_float(float_to_e4m3_bits(x[i])) for i < n (round to nearest even,
// satfinite, NaN stays NaN), 8 lanes at a time: P's rounding in the fast backend.
void round_to_e4m3(float* x, int64_t n);

struct QuantizedInputs {
  detail::QuantGranularity granularity;
  int64_t q_groups = 0, k_groups = 0;  // scale groups per (b, head): ⌈N / rows per scale⌉
  std::vector<int8_t> q, k;    // logical HND contiguous [B,Hq,Nq,D] / [B,Hkv,Nk,D]; k is k - km
  std::vector<float> q_scale;  // [B, Hq, q_groups]
  std::vector<float> k_scale;  // [B, Hkv, k_groups]
  std::vector<float> km;       // [B, Hkv, D], fp32 key mean
  // V, empty in kInt8 mode:
  std::vector<float> v;        // dequantized FP8 V (v8 * s_v) as fp32, HND [B,Hkv,Nk,D]
  std::vector<float> v_scale;  // [B, Hkv, D]
  std::vector<uint8_t> v8;     // e4m3 codes [B, Hkv, D, v8_keys(Nk)] (quant_layout.h order)

  // Scale of query row r of (b, h) flattened as bh, and of key c of kv head bhk.
  float q_scale_at(int64_t bh, int64_t r) const {
    return q_scale[bh * q_groups + r / granularity.q_rows];
  }
  float k_scale_at(int64_t bhk, int64_t c) const {
    return k_scale[bhk * k_groups + c / granularity.k_rows];
  }
};

// Quantizes p.q, p.k and, unless p.opts.quant is kInt8 (whose P·V reads v as it is), p.v; the
// granularity defaults to the one every backend uses.
QuantizedInputs quantize_inputs(const detail::Problem& p,
                                const detail::QuantGranularity& g = detail::QuantGranularity{});

// scale · Σ_d q[b, h, r, d] · km[d] in double (q exact at its dtype, km of h's kv head): what
// smoothing K (k − km) subtracts from every score of row r in natural-log units. Softmax does
// not see it, the log-sum-exp does: the backends add it back to the row's LSE.
double lse_shift(const detail::Problem& p, const QuantizedInputs& qi, int64_t b, int64_t h,
                 int64_t r);

// The fp32 key mean of one (b, kv head) slice [Nk, D], in the order of quant_layout.h.
std::vector<float> key_mean(const std::vector<float>& k, int64_t Nk, int64_t D);

}  // namespace sparge::cpu
