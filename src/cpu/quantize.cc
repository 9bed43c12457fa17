// Quantized-mode emulation (docs/method.md "Quantized mode"). The arithmetic is fp32 with every
// operation rounded once (the build uses -ffp-contract=off), as the CUDA pass does it with
// _rn intrinsics: scales s = max|x|/127 + 1e-7 per group of rows, codes round(x · rn(1/s)) half
// away from zero; V per channel as e4m3 (round to nearest even, satfinite) of v · rn(1/s_v), with
// s_v = amax/448.
#include "cpu/quantize.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/fp_convert.h"
#include "common/geometry.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

using detail::kE4m3Max;
using detail::kInt8Max;

// Quantizes `rows` consecutive rows of D values (HND slice) in groups of `group` rows.
void quantize_groups(const float* x, int64_t rows, int64_t D, int group, int8_t* codes,
                     float* scales) {
  for (int64_t first = 0, g = 0; first < rows; first += group, ++g) {
    const int64_t end = std::min<int64_t>(rows, first + group);
    float amax = 0.0f;
    for (int64_t i = first * D; i < end * D; ++i) amax = abs_max(amax, x[i]);
    const float s = int8_scale(amax);
    scales[g] = s;
    for (int64_t i = first * D; i < end * D; ++i) codes[i] = quantize_int8(x[i], s);
  }
}

}  // namespace

float abs_max(float a, float x) {
  if (std::isnan(a) || std::isnan(x)) return NAN;
  return std::fmax(a, std::fabs(x));
}

float int8_scale(float amax) { return amax / kInt8Max + detail::kQuantScaleEpsilon; }

int8_t quantize_int8(float x, float scale) {
  const float r = std::round(x * (1.0f / scale));  // std::round: half away from zero
  if (std::isnan(r)) return 0;            // int8 has no NaN; the scale carries it instead
  return static_cast<int8_t>(std::fmin(kInt8Max, std::fmax(-kInt8Max, r)));
}

uint8_t quantize_e4m3(float v, float scale) {
  const float x = v * (1.0f / scale);
  return std::isnan(x) ? detail::kE4m3Nan : detail::float_to_e4m3_bits(x);
}

void round_to_e4m3(float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 min_normal = _mm256_set1_ps(0.015625f), max = _mm256_set1_ps(kE4m3Max);
  const __m256 steps = _mm256_set1_ps(512.0f), step = _mm256_set1_ps(1.0f / 512.0f);
  const __m256i below = _mm256_set1_epi32(0xfffff), half = _mm256_set1_epi32(0x7ffff);
  const __m256i one = _mm256_set1_epi32(1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_and_ps(v, abs_mask);
    // Normal range: round to nearest even on the 20 bits below e4m3's 3 mantissa bits (a carry
    // moves into the exponent); an infinity stays one, and min() saturates both to 448.
    __m256i u = _mm256_castps_si256(a);
    u = _mm256_add_epi32(u,
                         _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 20), one)));
    __m256 r = _mm256_min_ps(_mm256_castsi256_ps(_mm256_andnot_si256(below, u)), max);
    // Below 2^-6 e4m3 is subnormal, a fixed step of 2^-9: scaling by 2^9 is exact.
    const __m256 sub = _mm256_mul_ps(
        _mm256_round_ps(_mm256_mul_ps(a, steps), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
        step);
    r = _mm256_blendv_ps(r, sub, _mm256_cmp_ps(a, min_normal, _CMP_LT_OQ));
    r = _mm256_or_ps(r, _mm256_andnot_ps(abs_mask, v));             // the sign back
    r = _mm256_blendv_ps(r, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // NaN stays NaN
    _mm256_storeu_ps(x + i, r);
  }
  for (; i < n; ++i) x[i] = detail::e4m3_bits_to_float(detail::float_to_e4m3_bits(x[i]));
}

double lse_shift(const detail::Problem& p, const QuantizedInputs& qi, int64_t b, int64_t h,
                 int64_t r) {
  const ProblemShape& s = p.shape;
  const int64_t D = s.head_dim, hk = h / (s.heads_q / s.heads_kv);
  const float* km = &qi.km[(b * s.heads_kv + hk) * D];
  double dot = 0.0;
  for (int64_t d = 0; d < D; ++d)
    dot += double(load_element(p.q, p.q.offset(b, h, r, d))) * double(km[d]);
  return double(p.scale) * dot;
}

std::vector<float> key_mean(const std::vector<float>& k, int64_t Nk, int64_t D) {
  std::vector<double> total(D, 0.0);
  for (int64_t t0 = 0; t0 < Nk; t0 += detail::kKeyMeanRun) {
    const int64_t t1 = std::min<int64_t>(Nk, t0 + detail::kKeyMeanRun);
    for (int64_t d = 0; d < D; ++d) {
      double run = 0.0;
      for (int64_t t = t0; t < t1; ++t) run += k[t * D + d];
      total[d] += run;
    }
  }
  std::vector<float> mean(D);
  for (int64_t d = 0; d < D; ++d) mean[d] = static_cast<float>(total[d] / static_cast<double>(Nk));
  return mean;
}

QuantizedInputs quantize_inputs(const detail::Problem& p, const detail::QuantGranularity& g) {
  const ProblemShape& s = p.shape;
  const int64_t D = s.head_dim, Nq = s.seq_q, Nk = s.seq_k, Nk8 = detail::v8_keys(Nk);
  QuantizedInputs out;
  out.granularity = g;
  out.q_groups = detail::ceil_div(Nq, g.q_rows);
  out.k_groups = detail::ceil_div(Nk, g.k_rows);
  out.q.resize(s.batch * s.heads_q * Nq * D);
  out.q_scale.resize(s.batch * s.heads_q * out.q_groups);
  out.k.resize(s.batch * s.heads_kv * Nk * D);
  out.k_scale.resize(s.batch * s.heads_kv * out.k_groups);
  out.km.resize(s.batch * s.heads_kv * D);
  const bool with_v = p.opts.quant != QuantMode::kInt8;  // kInt8's P·V reads v as it is
  if (with_v) {
    out.v.resize(s.batch * s.heads_kv * Nk * D);
    out.v_scale.resize(s.batch * s.heads_kv * D);
    out.v8.assign(s.batch * s.heads_kv * D * Nk8, 0);
  }

#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const std::vector<float> q = load_slice<float>(p.q, bh / s.heads_q, bh % s.heads_q);
    quantize_groups(q.data(), Nq, D, g.q_rows, &out.q[bh * Nq * D],
                    &out.q_scale[bh * out.q_groups]);
  }

#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_kv; ++bh) {
    const int64_t b = bh / s.heads_kv, h = bh % s.heads_kv;
    // K smoothed by its per-channel token mean (fp32 subtraction of the fp32 mean).
    std::vector<float> k = load_slice<float>(p.k, b, h);
    const std::vector<float> mean = key_mean(k, Nk, D);
    std::copy(mean.begin(), mean.end(), &out.km[bh * D]);
    for (int64_t n = 0; n < Nk; ++n)
      for (int64_t d = 0; d < D; ++d) k[n * D + d] -= mean[d];
    quantize_groups(k.data(), Nk, D, g.k_rows, &out.k[bh * Nk * D],
                    &out.k_scale[bh * out.k_groups]);

    // V per channel in e4m3: codes in the V8 layout, values dequantized in HND.
    if (!with_v) continue;
    const std::vector<float> v = load_slice<float>(p.v, b, h);
    for (int64_t d = 0; d < D; ++d) {
      float amax = 0.0f;
      for (int64_t n = 0; n < Nk; ++n) amax = abs_max(amax, v[n * D + d]);
      const float sv = amax == 0.0f ? 1.0f : amax / kE4m3Max;
      out.v_scale[bh * D + d] = sv;
      uint8_t* row8 = &out.v8[(bh * D + d) * Nk8];
      for (int64_t n = 0; n < Nk; ++n) {
        const uint8_t code = quantize_e4m3(v[n * D + d], sv);
        row8[detail::v8_position(n)] = code;
        out.v[(bh * Nk + n) * D + d] = detail::e4m3_bits_to_float(code) * sv;
      }
    }
  }
  return out;
}

}  // namespace sparge::cpu
