// Helpers shared by the fuzz targets: hostile values for each kind of field, and host buffers of
// exactly the extent a tensor's shape and strides claim (docs/fuzzing.md).
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace sparge_fuzz {

// The largest buffer a target allocates, in bytes: the inputs stay tiny so that one execution
// costs well under a millisecond. A claim needing more is not passed to the library at all.
constexpr int64_t kMaxBytes = int64_t{1} << 20;

// A float for an option: the edges of every documented range, NaN, infinities, or any bits.
inline float hostile_float(FuzzedDataProvider& in) {
  static const float kValues[] = {0.0f, -0.0f,    1.0f,      -1.0f,  0.5f,  0.98f,
                                  0.6f, 1.5f,     50.0f,     1e-45f, 1e38f, -1e38f,
                                  NAN,  INFINITY, -INFINITY, 2.0f,   1e-3f, 1.0000001f};
  const size_t pick = in.ConsumeIntegralInRange<size_t>(0, std::size(kValues));
  if (pick < std::size(kValues)) return kValues[pick];
  const uint32_t bits = in.ConsumeIntegral<uint32_t>();
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// An int for an option or a code: small values, block sizes, both ends of int, or any int.
inline int hostile_int(FuzzedDataProvider& in) {
  constexpr int kMin = std::numeric_limits<int>::min(), kMax = std::numeric_limits<int>::max();
  static const int kValues[] = {0, 1, -1, 2, 3, 7, 15, 16, 17, 32, 64, 128, 256, 512, kMin, kMax};
  const size_t pick = in.ConsumeIntegralInRange<size_t>(0, std::size(kValues));
  return pick < std::size(kValues) ? kValues[pick] : in.ConsumeIntegral<int>();
}

// A stride or dimension beyond any buffer: negative, zero, or so large that offsets overflow.
inline int64_t hostile_int64(FuzzedDataProvider& in) {
  static const int64_t kValues[] = {0,
                                    -1,
                                    -64,
                                    int64_t{1} << 31,
                                    int64_t{1} << 40,
                                    int64_t{1} << 62,
                                    std::numeric_limits<int64_t>::max(),
                                    std::numeric_limits<int64_t>::min()};
  const size_t pick = in.ConsumeIntegralInRange<size_t>(0, std::size(kValues));
  return pick < std::size(kValues) ? kValues[pick] : in.ConsumeIntegral<int64_t>();
}

// a * b wrapped to int64 as two's complement: contiguous strides of a hostile shape, computed
// the way a caller's unchecked arithmetic would, without undefined behaviour in the harness.
inline int64_t wrap_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
inline int64_t wrap_mul(int64_t a, int64_t b, int64_t c) { return wrap_mul(wrap_mul(a, b), c); }
inline int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// The lowest and highest element offsets a 4-D view reaches, or false when computing them or
// their distance overflows int64 (no buffer can hold such a view) or a dimension is < 1 (the
// view reaches nothing).
inline bool view_span(const int64_t shape[4], const int64_t strides[4], int64_t* lo, int64_t* hi) {
  *lo = 0;
  *hi = 0;
  for (int i = 0; i < 4; ++i) {
    if (shape[i] < 1) return false;
    int64_t reach;
    if (__builtin_mul_overflow(shape[i] - 1, strides[i], &reach)) return false;
    if (__builtin_add_overflow(reach < 0 ? *lo : *hi, reach, reach < 0 ? lo : hi)) return false;
  }
  int64_t span;
  return !__builtin_sub_overflow(*hi, *lo, &span);  // the elements between must count too
}

// Host memory of exactly `bytes`, filled from the input: small values or raw bits (NaN, Inf,
// denormals). ASan reports any access outside it.
struct Buffer {
  std::vector<unsigned char> bytes;

  void fill(FuzzedDataProvider& in, size_t n, size_t elem) {
    bytes.assign(n, 0);
    const bool raw = in.ConsumeBool();
    uint32_t state = in.ConsumeIntegral<uint32_t>() | 1u;
    for (size_t i = 0; i + elem <= n; i += elem) {
      state = state * 1664525u + 1013904223u;  // one LCG step per element: cheap and varied
      uint32_t bits = state;
      if (!raw) {
        const float x = static_cast<float>(static_cast<int32_t>(state >> 8)) / float(1 << 22);
        std::memcpy(&bits, &x, sizeof(bits));
        if (elem == 2) bits >>= 16;  // bfloat16 bits; as float16 they are some finite value
      }
      std::memcpy(&bytes[i], &bits, elem);
    }
  }
};

}  // namespace sparge_fuzz
