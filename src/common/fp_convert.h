// Bit-exact conversions between float and the storage formats Sparge reads or emulates:
// IEEE fp16, bfloat16 and FP8 e4m3 ("fn": no infinities, max 448, 0x7F/0xFF = NaN).
// All narrowing conversions round to nearest, ties to even, as the GPU's cvt.rn does;
// e4m3 saturates to ±448 (cvt.rn.satfinite), NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sparge::detail {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN / inf
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                        // below 2^-14: fp16 subnormal, step 2^-24
    // Scaling by 2^24 is exact; nearbyint rounds half to even in the default mode.
    return sign | static_cast<uint16_t>(std::nearbyint(bits_float(ax) * 16777216.0f));
  }
  uint32_t h = ((((ax >> 23) - 127u + 15u)) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
  return sign | static_cast<uint16_t>(h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(((x >> 16) & 0x8000u) | 0x7fc0u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline uint8_t float_to_e4m3_bits(float f) {
  const uint8_t sign = static_cast<uint8_t>((float_bits(f) >> 24) & 0x80u);
  if (std::isnan(f)) return sign | 0x7fu;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7eu;      // satfinite, infinities included
  if (a < 0.015625f) {                        // below 2^-6: subnormal, step 2^-9
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  const uint32_t ax = float_bits(a);
  uint32_t r = (((ax >> 23) - 127u + 7u) << 3) | ((ax & 0x7fffffu) >> 20);
  const uint32_t rem = ax & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;
  return sign | static_cast<uint8_t>(r > 0x7eu ? 0x7eu : r);
}

inline float e4m3_bits_to_float(uint8_t b) {
  const uint32_t exp = (b >> 3) & 0xfu, mant = b & 0x7u;
  float v;
  if (exp == 15 && mant == 7) v = NAN;
  else if (exp == 0) v = std::ldexp(static_cast<float>(mant), -9);
  else v = std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, static_cast<int>(exp) - 7);
  return (b & 0x80u) ? -v : v;
}

// Round a float to the nearest value representable in `dtype` (fp32 unchanged).
inline float round_to_half(float f) { return half_bits_to_float(float_to_half_bits(f)); }
inline float round_to_bf16(float f) { return bf16_bits_to_float(float_to_bf16_bits(f)); }

}  // namespace sparge::detail
