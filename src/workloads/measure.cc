// The measures of measure.h. One template per measure serves the float and double references.
#include "workloads/measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

namespace sparge::measure {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Whether any element is NaN or ±Inf.
template <typename T>
bool any_non_finite(const std::vector<T>& x) {
  return std::any_of(x.begin(), x.end(), [](T v) { return !std::isfinite(v); });
}

template <typename Ref>
double rel_l1_of(const std::vector<float>& out, const std::vector<Ref>& ref) {
  if (out.size() != ref.size()) return kNaN;
  if (any_non_finite(out)) return kInf;
  if (any_non_finite(ref)) return kNaN;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += std::fabs(double(out[i]) - double(ref[i]));
    norm += std::fabs(double(ref[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

template <typename Ref>
double cosine_of(const std::vector<float>& out, const std::vector<Ref>& ref) {
  if (out.size() != ref.size() || any_non_finite(out) || any_non_finite(ref)) return kNaN;
  double dot = 0, sq_out = 0, sq_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double a = out[i], b = ref[i];
    dot += a * b;
    sq_out += a * a;
    sq_ref += b * b;
  }
  if (sq_out > 0 && sq_ref > 0) return dot / std::sqrt(sq_out * sq_ref);
  return sq_out == sq_ref ? 1.0 : 0.0;
}

}  // namespace

double rel_l1(const std::vector<float>& out, const std::vector<float>& ref) {
  return rel_l1_of(out, ref);
}
double rel_l1(const std::vector<float>& out, const std::vector<double>& ref) {
  return rel_l1_of(out, ref);
}
double cosine(const std::vector<float>& out, const std::vector<float>& ref) {
  return cosine_of(out, ref);
}
double cosine(const std::vector<float>& out, const std::vector<double>& ref) {
  return cosine_of(out, ref);
}

double median(std::vector<double> values) {
  if (values.empty()) return kNaN;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double median_ms(const std::function<void()>& fn, int repeats, int warmup) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    const Clock::time_point start = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return median(std::move(times));
}

}  // namespace sparge::measure
