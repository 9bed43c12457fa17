// Helpers for the reference / prediction / quantization tests: seeded inputs and runs of the
// exact CPU reference through the public API.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

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

}  // namespace sparge::test
