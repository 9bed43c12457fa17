// Quantized-mode emulation (docs/method.md "Quantized mode"). The arithmetic is fp32, as on the
// GPU: scales s = max|x|/127 + 1e-7 per block, codes round(x/s) half away from zero; V per
// channel as e4m3 (round to nearest even, satfinite) with s_v = amax/448.
#include "cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/fp_convert.h"
#include "common/geometry.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

constexpr float kInt8Max = 127.0f;
constexpr float kE4m3Max = 448.0f;
constexpr float kScaleEpsilon = 1e-7f;  // keeps an all-zero block's scale positive

// max(a, |x|) that keeps a NaN, so a NaN input poisons its block's scale instead of vanishing.
float abs_max(float a, float x) {
  if (std::isnan(a) || std::isnan(x)) return NAN;
  return std::fmax(a, std::fabs(x));
}

// Quantizes `rows` consecutive rows of D values (HND slice) in blocks of `block` rows.
void quantize_blocks(const float* x, int64_t rows, int64_t D, int block, int8_t* codes,
                     float* scales) {
  for (int64_t first = 0, blk = 0; first < rows; first += block, ++blk) {
    const int64_t end = std::min<int64_t>(rows, first + block);
    float amax = 0.0f;
    for (int64_t i = first * D; i < end * D; ++i) amax = abs_max(amax, x[i]);
    const float s = amax / kInt8Max + kScaleEpsilon;
    scales[blk] = s;
    for (int64_t i = first * D; i < end * D; ++i) codes[i] = quantize_int8(x[i], s);
  }
}

}  // namespace

int8_t quantize_int8(float x, float scale) {
  const float r = std::round(x / scale);  // std::round: half away from zero
  if (std::isnan(r)) return 0;            // int8 has no NaN; the scale carries it instead
  return static_cast<int8_t>(std::fmin(kInt8Max, std::fmax(-kInt8Max, r)));
}

QuantizedInputs quantize_inputs(const detail::Problem& p) {
  const ProblemShape& s = p.shape;
  const int64_t D = s.head_dim, Nq = s.seq_q, Nk = s.seq_k;
  const int bq = p.opts.block_q, bk = p.opts.block_k;
  const int64_t nq = detail::ceil_div(Nq, bq), nk = detail::ceil_div(Nk, bk);
  QuantizedInputs out;
  out.q.resize(s.batch * s.heads_q * Nq * D);
  out.q_scale.resize(s.batch * s.heads_q * nq);
  out.k.resize(s.batch * s.heads_kv * Nk * D);
  out.k_scale.resize(s.batch * s.heads_kv * nk);
  out.v.resize(s.batch * s.heads_kv * Nk * D);
  out.v_scale.resize(s.batch * s.heads_kv * D);

#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const std::vector<float> q = load_slice<float>(p.q, bh / s.heads_q, bh % s.heads_q);
    quantize_blocks(q.data(), Nq, D, bq, &out.q[bh * Nq * D], &out.q_scale[bh * nq]);
  }

#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_kv; ++bh) {
    const int64_t b = bh / s.heads_kv, h = bh % s.heads_kv;
    // K smoothed by its per-channel token mean (summed in double, then used in fp32).
    std::vector<float> k = load_slice<float>(p.k, b, h);
    std::vector<double> sum(D, 0.0);
    for (int64_t n = 0; n < Nk; ++n)
      for (int64_t d = 0; d < D; ++d) sum[d] += k[n * D + d];
    for (int64_t d = 0; d < D; ++d) {
      const float mean = static_cast<float>(sum[d] / static_cast<double>(Nk));
      for (int64_t n = 0; n < Nk; ++n) k[n * D + d] -= mean;
    }
    quantize_blocks(k.data(), Nk, D, bk, &out.k[bh * Nk * D], &out.k_scale[bh * nk]);

    // V per channel in e4m3, stored dequantized.
    const std::vector<float> v = load_slice<float>(p.v, b, h);
    for (int64_t d = 0; d < D; ++d) {
      float amax = 0.0f;
      for (int64_t n = 0; n < Nk; ++n) amax = abs_max(amax, v[n * D + d]);
      const float sv = amax == 0.0f ? 1.0f : amax / kE4m3Max;
      out.v_scale[bh * D + d] = sv;
      for (int64_t n = 0; n < Nk; ++n) {
        const uint8_t code = detail::float_to_e4m3_bits(v[n * D + d] / sv);
        out.v[(bh * Nk + n) * D + d] = detail::e4m3_bits_to_float(code) * sv;
      }
    }
  }
  return out;
}

}  // namespace sparge::cpu
