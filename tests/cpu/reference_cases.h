// Helpers for the reference / prediction / quantization tests: seeded inputs and runs of the
// exact CPU reference through the public API.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/fp_convert.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {

inline std::vector<float> gaussian(size_t n, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (float& e : x) e = dist(rng);
  return x;
}

inline ExecContext reference_context() {
  ExecContext ctx;
  ctx.backend = Backend::kReference;
  return ctx;
}

// Output, lse and counters of one Stage-2 reference run on a poisoned output.
struct ReferenceRun {
  Status status;
  std::vector<float> o, lse;
  std::vector<unsigned long long> counters;  // [Hq * 2]
};

inline ReferenceRun run_reference(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const BlockMask& mask, const SparseOptions& opts,
                                  DType out_dtype = DType::kFloat32) {
  ReferenceRun run;
  HostTensor o =
      HostTensor::poisoned(q.batch, q.heads, q.tokens, q.head_dim, out_dtype, Layout::kHND);
  run.lse.assign(q.batch * q.heads * q.tokens, std::numeric_limits<float>::quiet_NaN());
  run.counters.assign(q.heads * 2, 0);
  AttentionExtras extras;
  extras.lse = run.lse.data();
  extras.pv_counters = run.counters.data();
  run.status = block_sparse_attention(q, k, v, mask, opts, o.view, extras, reference_context());
  run.o = o.to_hnd();
  return run;
}

// Half a unit in the last place of x as a float: the rounding error of the fp32 output.
inline double half_ulp_f32(double x) {
  const float f = static_cast<float>(std::fabs(x));
  return 0.5 * (std::nextafter(f, std::numeric_limits<float>::infinity()) - f);
}

// One query row of quantized-mode attention, written out from the rule of docs/method.md
// ("Quantized mode"), in double: t[c] are the row's scores in log2 units, v[c * D + d] the
// dequantized V. Tiles of block_k keys in order, nothing skipped; m is the running max, P =
// 448·2^(t − m) goes to P·V and into l rounded to e4m3 (through float); acc and l are rescaled
// by 2^(m_old − m_new). round_p = false keeps P unrounded (the rule without rounding).
inline std::vector<double> quantized_row_by_rule(const std::vector<double>& t,
                                                 const std::vector<float>& v, int64_t D,
                                                 int64_t block_k, bool round_p = true) {
  const int64_t n = static_cast<int64_t>(t.size());
  double m = -INFINITY, l = 0.0;
  std::vector<double> acc(D, 0.0);
  for (int64_t c0 = 0; c0 < n; c0 += block_k) {
    const int64_t c1 = std::min(n, c0 + block_k);
    const double m_new = std::max(m, *std::max_element(t.begin() + c0, t.begin() + c1));
    const double rescale = std::exp2(m - m_new);
    l *= rescale;
    for (double& a : acc) a *= rescale;
    for (int64_t c = c0; c < c1; ++c) {
      const double p = 448.0 * std::exp2(t[c] - m_new);
      const double p8 =
          round_p ? detail::e4m3_bits_to_float(detail::float_to_e4m3_bits(float(p))) : p;
      l += p8;
      for (int64_t d = 0; d < D; ++d) acc[d] += p8 * v[c * D + d];
    }
    m = m_new;
  }
  for (double& a : acc) a /= l;
  return acc;
}

}  // namespace sparge::test
