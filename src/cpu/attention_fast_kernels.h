// AVX2/FMA building blocks of the fast CPU backend (src/cpu/attention_fast.cc): row
// conversions into fp32 scratch, a vectorized exp2, and the two register-blocked small GEMMs
//   S = K·Qᵀ  (scores, stored key-major: st[c * ld + r], so row maxima and sums are vertical)
//   acc[r] = alpha[r]·acc[r] + Σ_c P[c][r]·V[c]   (P·V for up to 4 query rows at a time).
// The library is built with -march=x86-64-v3 and -ffp-contract=off, so every fused multiply-add
// here is an explicit _mm256_fmadd_ps.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/fp_convert.h"

namespace sparge::cpu::fast {

// The element types a tile row is read from (fp32/fp16/bf16 tensors, int8 quantized codes).
enum class Elem { kF32, kF16, kBF16, kI8 };

// dst[i] = mul · float(src[i]) for i < n. Widening is exact; the product rounds once.
inline void load_row(const void* src, Elem type, int64_t n, float mul, float* dst) {
  const __m256 vmul = _mm256_set1_ps(mul);
  int64_t i = 0;
  switch (type) {
    case Elem::kF32: {
      const float* s = static_cast<const float*>(src);
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), vmul));
      for (; i < n; ++i) dst[i] = s[i] * mul;
      break;
    }
    case Elem::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(h), vmul));
      }
      for (; i < n; ++i) dst[i] = detail::half_bits_to_float(s[i]) * mul;
      break;
    }
    case Elem::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
        const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);  // bf16 = top half
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_castsi256_ps(w), vmul));
      }
      for (; i < n; ++i) dst[i] = detail::bf16_bits_to_float(s[i]) * mul;
      break;
    }
    case Elem::kI8: {
      const int8_t* s = static_cast<const int8_t*>(src);
      for (; i + 8 <= n; i += 8) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + i));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), vmul));
      }
      for (; i < n; ++i) dst[i] = static_cast<float>(s[i]) * mul;
      break;
    }
  }
}

// dst[i] = round_to_dtype(mul · src[i]) for i < n; fp16/bf16 round to nearest even.
inline void store_row(const float* src, int64_t n, float mul, Elem type, void* dst) {
  const __m256 vmul = _mm256_set1_ps(mul);
  int64_t i = 0;
  if (type == Elem::kF32) {
    float* d = static_cast<float*>(dst);
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), vmul));
    for (; i < n; ++i) d[i] = src[i] * mul;
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  if (type == Elem::kF16) {
    for (; i + 8 <= n; i += 8) {
      const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(src + i), vmul);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; ++i) d[i] = detail::float_to_half_bits(src[i] * mul);
    return;
  }
  // bf16: the scalar rule of fp_convert.h is branchy, and outputs are written once per row.
  for (; i < n; ++i) d[i] = detail::float_to_bf16_bits(src[i] * mul);
}

// out[i * ldo + j] = in[j * ldi + i] for i, j < 8: an 8×8 block transposed in registers
// (unpack pairs, then quads, then swap 128-bit halves).
inline void transpose_8x8(const float* in, int64_t ldi, float* out, int64_t ldo) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + i * ldi);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// 2^x for 8 lanes: 2^n · 2^f with n = round(x), f ∈ [-0.5, 0.5], 2^f by its Taylor series to
// degree 7 (truncation < 6e-9 relative; total error a few ulp). x < -126 gives exactly 0 (so
// -inf → 0), NaN stays NaN. Inputs above 127 saturate at 2^127.
inline __m256 exp2_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-126.0f), hi = _mm256_set1_ps(127.0f);
  // max/min return the second operand when one is NaN: the NaN flows through.
  const __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  // c_k = ln(2)^k / k!
  __m256 p = _mm256_set1_ps(1.5252733804059841e-05f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381608e-04f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  const __m256 r = _mm256_mul_ps(p, pow2n);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), r);
}

// st[c * lds + r] = Σ_{d < D} k[c * ldk + d] · qt[d * ldq + r] for c < keys, r < rows.
// keys % 4 == 0 and rows % 16 == 0: a 4-key × 16-row register block (8 accumulators, enough
// independent FMA chains to hide the FMA latency on two pipes).
inline void scores_tile(const float* qt, int64_t ldq, const float* k, int64_t ldk, int64_t D,
                        int64_t keys, int64_t rows, float* st, int64_t lds) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    for (int64_t c0 = 0; c0 < keys; c0 += 4) {
      __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
      __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
      __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
      __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
      const float* k0 = k + c0 * ldk;
      const float* q = qt + r0;
      for (int64_t d = 0; d < D; ++d, q += ldq) {
        const __m256 q0 = _mm256_loadu_ps(q), q1 = _mm256_loadu_ps(q + 8);
        __m256 kb = _mm256_broadcast_ss(k0 + d);
        a00 = _mm256_fmadd_ps(kb, q0, a00);
        a01 = _mm256_fmadd_ps(kb, q1, a01);
        kb = _mm256_broadcast_ss(k0 + ldk + d);
        a10 = _mm256_fmadd_ps(kb, q0, a10);
        a11 = _mm256_fmadd_ps(kb, q1, a11);
        kb = _mm256_broadcast_ss(k0 + 2 * ldk + d);
        a20 = _mm256_fmadd_ps(kb, q0, a20);
        a21 = _mm256_fmadd_ps(kb, q1, a21);
        kb = _mm256_broadcast_ss(k0 + 3 * ldk + d);
        a30 = _mm256_fmadd_ps(kb, q0, a30);
        a31 = _mm256_fmadd_ps(kb, q1, a31);
      }
      float* s = st + c0 * lds + r0;
      _mm256_storeu_ps(s, a00);
      _mm256_storeu_ps(s + 8, a01);
      _mm256_storeu_ps(s + lds, a10);
      _mm256_storeu_ps(s + lds + 8, a11);
      _mm256_storeu_ps(s + 2 * lds, a20);
      _mm256_storeu_ps(s + 2 * lds + 8, a21);
      _mm256_storeu_ps(s + 3 * lds, a30);
      _mm256_storeu_ps(s + 3 * lds + 8, a31);
    }
  }
}

// For kRows query rows: acc_i[0:dp] = alpha_i · acc_i + Σ_{c < keys} p[c * ldp + i] · v_c[0:dp]
// with v_c = v + c * ldv (row i's probability of key c at p[c * ldp + i]), dp % 16 == 0.
template <int kRows>
inline void pv_rows(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t keys,
                    int64_t dp, float* const* acc, const float* alpha) {
  for (int64_t d0 = 0; d0 < dp; d0 += 16) {
    __m256 lo[kRows], hi[kRows];
    for (int i = 0; i < kRows; ++i) {
      const __m256 a = _mm256_set1_ps(alpha[i]);
      lo[i] = _mm256_mul_ps(a, _mm256_loadu_ps(acc[i] + d0));
      hi[i] = _mm256_mul_ps(a, _mm256_loadu_ps(acc[i] + d0 + 8));
    }
    const float* vc = v + d0;
    for (int64_t c = 0; c < keys; ++c, vc += ldv) {
      const __m256 v0 = _mm256_loadu_ps(vc), v1 = _mm256_loadu_ps(vc + 8);
      for (int i = 0; i < kRows; ++i) {
        const __m256 pb = _mm256_broadcast_ss(p + c * ldp + i);
        lo[i] = _mm256_fmadd_ps(pb, v0, lo[i]);
        hi[i] = _mm256_fmadd_ps(pb, v1, hi[i]);
      }
    }
    for (int i = 0; i < kRows; ++i) {
      _mm256_storeu_ps(acc[i] + d0, lo[i]);
      _mm256_storeu_ps(acc[i] + d0 + 8, hi[i]);
    }
  }
}

// ---- AVX-512 variants (chosen at run time when the CPU has AVX-512F, by use_avx512()).
// Same contracts with wider register blocks: 32 rows × 8 keys for the scores, 8 rows × 32
// channels for P·V (16 zmm accumulators each, half the load traffic per FMA of the AVX2 blocks).
#define SPARGE_TARGET_AVX512 __attribute__((target("avx512f")))

// AVX-512F when the CPU has it, unless SPARGE_CPU_ISA=avx2 asks for the AVX2 kernels (tests run
// both; results agree to rounding, not bit for bit). Read per call: calls are long.
inline bool use_avx512() {
  const char* isa = std::getenv("SPARGE_CPU_ISA");
  if (isa != nullptr && std::strcmp(isa, "avx2") == 0) return false;
  return __builtin_cpu_supports("avx512f");
}

// kRowVecs × 16 rows × 8 keys of st = K·Qᵀ starting at (c0, r0).
template <int kRowVecs>
SPARGE_TARGET_AVX512 inline void scores_block_avx512(const float* qt, int64_t ldq, const float* k,
                                                     int64_t ldk, int64_t D, float* st,
                                                     int64_t lds) {
  __m512 acc[8][kRowVecs];
  for (int i = 0; i < 8; ++i)
    for (int v = 0; v < kRowVecs; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d, qt += ldq) {
    __m512 q[kRowVecs];
    for (int v = 0; v < kRowVecs; ++v) q[v] = _mm512_loadu_ps(qt + 16 * v);
    for (int i = 0; i < 8; ++i) {
      const __m512 kb = _mm512_set1_ps(k[i * ldk + d]);
      for (int v = 0; v < kRowVecs; ++v) acc[i][v] = _mm512_fmadd_ps(kb, q[v], acc[i][v]);
    }
  }
  for (int i = 0; i < 8; ++i)
    for (int v = 0; v < kRowVecs; ++v) _mm512_storeu_ps(st + i * lds + 16 * v, acc[i][v]);
}

// scores_tile with keys % 8 == 0 and rows % 16 == 0.
SPARGE_TARGET_AVX512 inline void scores_tile_avx512(const float* qt, int64_t ldq, const float* k,
                                                    int64_t ldk, int64_t D, int64_t keys,
                                                    int64_t rows, float* st, int64_t lds) {
  int64_t r0 = 0;
  for (; r0 + 32 <= rows; r0 += 32)
    for (int64_t c0 = 0; c0 < keys; c0 += 8)
      scores_block_avx512<2>(qt + r0, ldq, k + c0 * ldk, ldk, D, st + c0 * lds + r0, lds);
  if (r0 < rows)
    for (int64_t c0 = 0; c0 < keys; c0 += 8)
      scores_block_avx512<1>(qt + r0, ldq, k + c0 * ldk, ldk, D, st + c0 * lds + r0, lds);
}

// pv_rows for up to 8 rows, dp % 32 == 0.
template <int kRows>
SPARGE_TARGET_AVX512 inline void pv_rows_avx512(const float* p, int64_t ldp, const float* v,
                                                int64_t ldv, int64_t keys, int64_t dp,
                                                float* const* acc, const float* alpha) {
  for (int64_t d0 = 0; d0 < dp; d0 += 32) {
    __m512 lo[kRows], hi[kRows];
    for (int i = 0; i < kRows; ++i) {
      const __m512 a = _mm512_set1_ps(alpha[i]);
      lo[i] = _mm512_mul_ps(a, _mm512_loadu_ps(acc[i] + d0));
      hi[i] = _mm512_mul_ps(a, _mm512_loadu_ps(acc[i] + d0 + 16));
    }
    const float* vc = v + d0;
    for (int64_t c = 0; c < keys; ++c, vc += ldv) {
      const __m512 v0 = _mm512_loadu_ps(vc), v1 = _mm512_loadu_ps(vc + 16);
      for (int i = 0; i < kRows; ++i) {
        const __m512 pb = _mm512_set1_ps(p[c * ldp + i]);
        lo[i] = _mm512_fmadd_ps(pb, v0, lo[i]);
        hi[i] = _mm512_fmadd_ps(pb, v1, hi[i]);
      }
    }
    for (int i = 0; i < kRows; ++i) {
      _mm512_storeu_ps(acc[i] + d0, lo[i]);
      _mm512_storeu_ps(acc[i] + d0 + 16, hi[i]);
    }
  }
}

}  // namespace sparge::cpu::fast
