// Shared test helpers: typed host tensors in any layout and poisoning. The error metrics are
// those of every test and benchmark (measure::rel_l1, measure::cosine: workloads/measure.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/fp_convert.h"
#include "sparge/sparge.h"
#include "workloads/measure.h"

namespace sparge::test {

// A host tensor of any dtype/layout built from logical HND float data [B, H, N, D].
// Storage is padded (`pad_tokens` extra token rows) so that NHD/HND views with non-trivial
// strides can be exercised; `view` describes the logical tensor.
struct HostTensor {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  TensorView view;

  static HostTensor make(const std::vector<float>& hnd, int64_t B, int64_t H, int64_t N,
                         int64_t D, DType dtype, Layout layout, int64_t pad_tokens = 0) {
    HostTensor t;
    const int64_t Np = N + pad_tokens;
    const int64_t total = B * H * Np * D;
    if (dtype == DType::kFloat32) t.f32.assign(total, 0.0f);
    else t.half.assign(total, 0);
    void* data = dtype == DType::kFloat32 ? static_cast<void*>(t.f32.data())
                                          : static_cast<void*>(t.half.data());
    t.view = TensorView::contiguous(data, dtype, layout, B, H, Np, D);
    t.view.tokens = N;  // logical extent; padding rows stay unused
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t d = 0; d < D; ++d)
            t.set(b, h, n, d, hnd[((b * H + h) * N + n) * D + d]);
    return t;
  }

  // An output tensor filled with NaN so that unwritten elements are caught; `pad_tokens` NaN
  // rows after each plane's N (see padding_rows_written) catch writes past the logical extent.
  static HostTensor poisoned(int64_t B, int64_t H, int64_t N, int64_t D, DType dtype,
                             Layout layout, int64_t pad_tokens = 0) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    HostTensor t = make(std::vector<float>(B * H * N * D, nan), B, H, N, D, dtype, layout, pad_tokens);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = N; n < N + pad_tokens; ++n)
          for (int64_t d = 0; d < D; ++d) t.set(b, h, n, d, nan);
    return t;
  }
  // Elements of the `pad_tokens` rows past the logical extent that are not NaN any more.
  int64_t padding_rows_written(int64_t pad_tokens) const {
    int64_t written = 0;
    for (int64_t b = 0; b < view.batch; ++b)
      for (int64_t h = 0; h < view.heads; ++h)
        for (int64_t n = view.tokens; n < view.tokens + pad_tokens; ++n)
          for (int64_t d = 0; d < view.head_dim; ++d) written += !std::isnan(get(b, h, n, d));
    return written;
  }

  void set(int64_t b, int64_t h, int64_t n, int64_t d, float x) {
    const int64_t off = view.offset(b, h, n, d);
    switch (view.dtype) {
      case DType::kFloat32: f32[off] = x; break;
      case DType::kFloat16: half[off] = detail::float_to_half_bits(x); break;
      case DType::kBFloat16: half[off] = detail::float_to_bf16_bits(x); break;
    }
  }
  float get(int64_t b, int64_t h, int64_t n, int64_t d) const {
    const int64_t off = view.offset(b, h, n, d);
    switch (view.dtype) {
      case DType::kFloat32: return f32[off];
      case DType::kFloat16: return detail::half_bits_to_float(half[off]);
      case DType::kBFloat16: return detail::bf16_bits_to_float(half[off]);
    }
    return NAN;
  }
  // Logical HND float copy (what the values actually are after rounding to the dtype).
  std::vector<float> to_hnd() const {
    std::vector<float> out(view.numel());
    size_t i = 0;
    for (int64_t b = 0; b < view.batch; ++b)
      for (int64_t h = 0; h < view.heads; ++h)
        for (int64_t n = 0; n < view.tokens; ++n)
          for (int64_t d = 0; d < view.head_dim; ++d) out[i++] = get(b, h, n, d);
    return out;
  }
};

// The first n tokens of a view (a KV cache's filled part).
inline TensorView first_tokens(TensorView t, int64_t n) {
  t.tokens = n;
  return t;
}

// A compact mask's copy whose rows own `spare` extra slots of `junk` after their kept blocks
// (Stage 1 writes such masks when it sizes rows by a bound; readers must not touch the junk).
inline HostBlockMask with_spare_slots(const HostBlockMask& compact, int64_t spare,
                                      int32_t junk) {
  HostBlockMask out = compact;
  const BlockMask& m = compact.view();
  out.row_offsets.assign(m.rows() + 1, 0);
  out.indices.clear();
  for (int64_t r = 0; r < m.rows(); ++r) {
    for (int32_t t = 0; t < m.counts[r]; ++t) out.indices.push_back(m.indices[m.row_begin(r) + t]);
    for (int64_t t = 0; t < spare; ++t) out.indices.push_back(junk);
    out.row_offsets[r + 1] = int64_t(out.indices.size());
  }
  out.mask.indices = out.indices.data();
  out.mask.row_offsets = out.row_offsets.data();
  return out;
}

inline bool any_nan(const std::vector<float>& x) {
  for (float v : x)
    if (std::isnan(v)) return true;
  return false;
}

// Sets an environment variable (null: unsets it) for one scope, then restores it: the kernel
// choice (SPARGE_CUDA_KERNEL), the opt-in switches and the tests' hooks (SPARGE_ROW_CHUNK_BLOCKS).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old, had_ = true;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, saved_.c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string saved_;
  bool had_ = false;
};

// Whether two arrays hold the same bits (NaN payloads included), for bit-for-bit comparisons.
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace sparge::test
