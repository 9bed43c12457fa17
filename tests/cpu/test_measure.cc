// src/workloads/measure.cc: the error and time measures of every C++ test and benchmark, on
// values worked out by hand, the non-finite rules (a broken output never passes) and the median.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "workloads/measure.h"

namespace sparge::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Measure, RelL1AndCosineByHand) {
  const std::vector<float> out = {1.5f, -2.0f, 2.0f, 0.5f};
  const std::vector<float> ref = {1.0f, -2.0f, 3.0f, 0.0f};
  const std::vector<double> ref64(ref.begin(), ref.end());
  EXPECT_DOUBLE_EQ(measure::rel_l1(out, ref), 2.0 / 6.0);  // (0.5 + 0 + 1 + 0.5) / 6
  EXPECT_DOUBLE_EQ(measure::rel_l1(out, ref64), 2.0 / 6.0);
  const double cos = 11.5 / std::sqrt(10.5 * 14.0);  // out·ref / (‖out‖ ‖ref‖)
  EXPECT_DOUBLE_EQ(measure::cosine(out, ref), cos);
  EXPECT_DOUBLE_EQ(measure::cosine(out, ref64), cos);
  EXPECT_EQ(measure::rel_l1(ref, ref), 0.0);
}

TEST(Measure, ANonFiniteOutputNeverPasses) {
  const std::vector<float> ref = {1.0f, 2.0f, 3.0f};
  for (float bad : {kNaN, kInf, -kInf}) {
    const std::vector<float> out = {1.0f, bad, 3.0f};
    EXPECT_EQ(measure::rel_l1(out, ref), std::numeric_limits<double>::infinity());
    EXPECT_TRUE(std::isnan(measure::cosine(out, ref)));
    const std::vector<float> broken_ref = {1.0f, 2.0f, bad};
    EXPECT_TRUE(std::isnan(measure::rel_l1(ref, broken_ref)));
    EXPECT_TRUE(std::isnan(measure::cosine(ref, broken_ref)));
  }
}

TEST(Measure, ZeroTensorsAndSizeMismatch) {
  const std::vector<float> zero(4, 0.0f), x = {1.0f, 2.0f, 3.0f, 4.0f};
  EXPECT_EQ(measure::rel_l1(x, zero), 10.0);  // absolute when the reference is zero
  EXPECT_EQ(measure::rel_l1(zero, zero), 0.0);
  EXPECT_EQ(measure::cosine(zero, zero), 1.0);
  EXPECT_EQ(measure::cosine(x, zero), 0.0);
  EXPECT_TRUE(std::isnan(measure::rel_l1(x, std::vector<float>(3, 1.0f))));
  EXPECT_TRUE(std::isnan(measure::cosine(x, std::vector<double>(5, 1.0))));
}

TEST(Measure, MedianAndTiming) {
  EXPECT_EQ(measure::median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_EQ(measure::median({4.0, 1.0, 3.0, 2.0}), 2.5);
  EXPECT_TRUE(std::isnan(measure::median({})));
  int calls = 0;
  const double ms = measure::median_ms([&] { ++calls; }, 5, 2);
  EXPECT_EQ(calls, 7);  // 2 warm-up + 5 timed
  EXPECT_GE(ms, 0.0);
  calls = 0;
  measure::median_ms([&] { ++calls; }, 0, 0);
  EXPECT_EQ(calls, 1);  // repeats < 1 counts as 1
}

}  // namespace
}  // namespace sparge::test
