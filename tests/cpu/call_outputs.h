// The outputs of one sparse_attention call on the CPU, for bit-for-bit comparisons of two ways of
// running the same call (the whole call against head chunks or row chunks).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {

struct CallOutputs {
  std::vector<float> out, lse, select;
  std::vector<unsigned long long> counters;
  std::vector<int64_t> forced;
  std::vector<uint8_t> tiles;  // the mask, when the call wrote one to compare
  Status status;

  // Poisoned LSE, Stage-1 stats and zeroed λ counters for a call of `batch` x `heads_q` heads
  // and `seq_q` query rows, and the extras that point at them.
  AttentionExtras extras_for(int64_t batch, int64_t heads_q, int64_t seq_q) {
    lse.assign(batch * heads_q * seq_q, NAN);
    counters.assign(heads_q * 2, 0);
    select.assign(batch * heads_q, NAN);
    forced.assign(batch * heads_q, -1);
    AttentionExtras extras;
    extras.lse = lse.data();
    extras.pv_counters = counters.data();
    extras.stage1.select_value = select.data();
    extras.stage1.forced_tiles = forced.data();
    return extras;
  }
};

inline void expect_same(const CallOutputs& got, const CallOutputs& want) {
  ASSERT_TRUE(got.status.is_ok()) << got.status.message();
  EXPECT_TRUE(same_bits(got.out, want.out));
  EXPECT_TRUE(same_bits(got.lse, want.lse));
  EXPECT_EQ(got.counters, want.counters);
  EXPECT_TRUE(same_bits(got.select, want.select));
  EXPECT_EQ(got.forced, want.forced);
  EXPECT_EQ(got.tiles, want.tiles);
}

}  // namespace sparge::test
