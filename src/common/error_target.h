// The error-target mode of Stage 1 (SparseOptions.target_error; docs/method.md, "The error
// target"), the parts every backend shares: the candidate TopCdf masses, the safety margin, the
// head's choice and the λ floor. Host and device code (CPU predict.cc, CUDA predict/), so that
// the backends compare the same numbers.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"

namespace sparge::detail {

// Candidate TopCdf masses τ_g = 1 − drop_g, g ascending = τ ascending = sparsest first. The
// drops are geometric from 0.5 to 0.0002 (ratio 0.78, two significant digits): rel L1 ≈ 0.3-3 ×
// the dropped mass (calibration study), so a step costs at most ~1.3× in error and the choice
// lands close below the target. One more candidate, index kErrorTargetCandidates, keeps every
// allowed tile (error 0).
constexpr int kErrorTargetCandidates = 32;
SPARGE_HD double error_target_drop(int g) {
  constexpr double kDrop[kErrorTargetCandidates] = {
      0.5,    0.39,   0.3,    0.23,    0.18,    0.14,    0.11,    0.085,
      0.066,  0.052,  0.04,   0.031,   0.024,   0.019,   0.015,   0.011,
      0.0088, 0.0068, 0.0053, 0.0041,  0.0032,  0.0025,  0.0019,  0.0015,
      0.0012, 0.00091, 0.00071, 0.00055, 0.00043, 0.00033, 0.00026, 0.0002};
  return kDrop[g];
}
SPARGE_HD double error_target_tau(int g) { return 1.0 - error_target_drop(g); }

// Rows sampled per query block in this mode: max(sample_rows, 16) (at most block_q). The error
// of a block comes from its worst rows, and rare ones hide between samples: on the language-like
// workload 16 consecutive rows per 512 tokens look far back to one key, and with 4 rows per
// 128 (one every 42) the estimate missed them (measured rel L1 0.04-0.11 at target 0.02,
// estimate 0.013); 16 rows (one every 8) see every such run (0.011-0.015). Cost: 16/128 of the
// score work and as much again for P·V (docs/method.md).
constexpr int kErrorTargetMinRows = 16;

// A candidate passes when margin · estimated rel L1 ≤ target. The estimate averages a few rows
// per query block; the margin covers its sampling error (calibrated in
// bench/eval/error_target_study.py: the smallest margin for which ≥ 95% of (workload, head)
// pairs measure ≤ target at targets 0.02 and 0.05, rounded up).
constexpr double kErrorTargetMargin = 1.1;

// The head's choice from the summed errors: scan from the densest candidate down and stop at the
// first that fails (the estimate is noisy, so a sparser candidate that passes beyond a failing
// one is not trusted). err[g] = Σ_rows ‖o_g − o‖₁, norm = Σ_rows ‖o‖₁. Returns g in
// [0, kErrorTargetCandidates]; kErrorTargetCandidates keeps every allowed tile. Taking fewer
// candidates for larger targets makes the sparsity monotone in the target.
SPARGE_HD int error_target_choice(const double* err, double norm, double target) {
  int g = kErrorTargetCandidates;
  while (g > 0) {
    // No sampled row saw a key (norm 0): nothing to lose. A NaN norm or error (NaN inputs)
    // fails: keep the denser choice.
    const double e = norm == 0.0 ? 0.0 : err[g - 1] / norm;
    if (!(kErrorTargetMargin * e <= target)) break;
    --g;
  }
  return g;
}

// The λ skip drops weights < 2^−λ of a row's maximum, at most seq_k of them, so a row loses
// at most seq_k · 2^−λ of its mass. The error-target mode raises λ to at least
// log2(seq_k / target) + 10, which bounds that loss by target / 1024: the budget stays Stage 1's.
inline double error_target_min_pv_threshold(double target, int64_t seq_k) {
  return std::log2(static_cast<double>(seq_k) / target) + 10.0;
}

}  // namespace sparge::detail
