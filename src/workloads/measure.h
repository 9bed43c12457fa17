// Error and time measures of the C++ tests, the command line and the CPU benchmarks: part of the
// sparge_workloads library (not of libsparge), and the same definitions as python/sparge/measure.py
// and the rel_l1, cos_sim and ms fields of docs/bench-schema.md:
//   rel_l1(out, ref) = ‖out − ref‖₁ / ‖ref‖₁ in double (‖out − ref‖₁ when ref is all zero);
//   cosine(out, ref) = out·ref / (‖out‖₂ ‖ref‖₂) in double (1 when both are zero, 0 when one is).
// A NaN or Inf anywhere in `out` makes rel_l1 +inf and cosine NaN, so a broken output never passes
// an error bound. A NaN or Inf in `ref`, or sizes that differ, make both NaN.
#pragma once

#include <functional>
#include <vector>

namespace sparge::measure {

double rel_l1(const std::vector<float>& out, const std::vector<float>& ref);
double rel_l1(const std::vector<float>& out, const std::vector<double>& ref);
double cosine(const std::vector<float>& out, const std::vector<float>& ref);
double cosine(const std::vector<float>& out, const std::vector<double>& ref);

// The median of `values` (the mean of the middle two for an even count); NaN when empty.
double median(std::vector<double> values);

// The median wall time (steady clock) of `repeats` calls of fn in ms, after `warmup` untimed
// calls. repeats < 1 counts as 1.
double median_ms(const std::function<void()>& fn, int repeats, int warmup = 1);

}  // namespace sparge::measure
