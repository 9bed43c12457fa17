// Element access to host TensorViews of any dtype, for the CPU backends.
#pragma once

#include <cstdint>
#include <vector>

#include "common/fp_convert.h"
#include "sparge/types.h"

namespace sparge::cpu {

// The element at offset `off` (TensorView::offset) widened to float (exact for every dtype).
inline float load_element(const TensorView& t, int64_t off) {
  switch (t.dtype) {
    case DType::kFloat16:
      return detail::half_bits_to_float(static_cast<const uint16_t*>(t.data)[off]);
    case DType::kBFloat16:
      return detail::bf16_bits_to_float(static_cast<const uint16_t*>(t.data)[off]);
    default: return static_cast<const float*>(t.data)[off];
  }
}

// Stores `x` at offset `off`, rounding to nearest even for fp16/bf16.
inline void store_element(const TensorView& t, int64_t off, float x) {
  switch (t.dtype) {
    case DType::kFloat16:
      static_cast<uint16_t*>(t.data)[off] = detail::float_to_half_bits(x);
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(t.data)[off] = detail::float_to_bf16_bits(x);
      break;
    default: static_cast<float*>(t.data)[off] = x; break;
  }
}

// Logical [tokens, D] copy of (b, h) of t, widened to Real (float or double; exact either way).
template <typename Real>
std::vector<Real> load_slice(const TensorView& t, int64_t b, int64_t h) {
  std::vector<Real> out(t.tokens * t.head_dim);
  for (int64_t n = 0; n < t.tokens; ++n)
    for (int64_t d = 0; d < t.head_dim; ++d)
      out[n * t.head_dim + d] = load_element(t, t.offset(b, h, n, d));
  return out;
}

}  // namespace sparge::cpu
