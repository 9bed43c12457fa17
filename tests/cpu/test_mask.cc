// Host mask helpers (src/common/mask.cc, HostBlockMask in src/common/types.cc) on masks a caller
// wrote by hand: bad counts, bad indices, bad geometry. Each case was found by
// fuzz/fuzz_block_mask (its corpus holds the input) and read or wrote outside the arrays.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "sparge/sparge.h"

namespace sparge::test {
namespace {

TEST(Mask, StatsReadOnlyTheRowWhateverItsCount) {
  HostBlockMask m(1, 1, 64, 128, 64, 64);  // one row, two key blocks
  m.counts[0] = 1000;                      // past the row: indices of the next rows
  m.indices = {1, -5};
  m.mask.indices = m.indices.data();
  const AttentionStats s = mask_stats(m.view(), false, CausalAlign::kTopLeft);
  EXPECT_EQ(s.tiles_dense, 2);
  EXPECT_EQ(s.tiles_computed, 1);  // index 1 counts, -5 does not
  m.counts[0] = -3;
  EXPECT_EQ(mask_stats(m.view(), false, CausalAlign::kTopLeft).tiles_computed, 0);
}

TEST(Mask, HelpersRejectBadGeometry) {
  int32_t counts[1] = {0}, indices[1] = {0};
  BlockMask m;
  m.counts = counts;
  m.indices = indices;
  m.batch = m.heads = 1;
  m.seq_q = m.seq_k = 16;
  m.block_q = 0;  // num_q_blocks() would divide by zero
  EXPECT_EQ(mask_stats(m, true, CausalAlign::kTopLeft).tiles_dense, 0);
  EXPECT_FALSE(fill_dense_mask(m, true, CausalAlign::kTopLeft).is_ok());
  m.block_q = 16;
  m.seq_k = -1;
  EXPECT_FALSE(fill_dense_mask(m, false, CausalAlign::kTopLeft).is_ok());
  EXPECT_THROW(HostBlockMask(1, 1, 16, 16, 16, 0), Error);
  EXPECT_THROW(HostBlockMask(-1, 1, 16, 16, 16, 16), Error);
}

TEST(Mask, DenseRoundTripChecksSizesAndContents) {
  const std::vector<uint8_t> dense = {1, 0, 1, 1};  // [1, 1, 2, 2]
  HostBlockMask m = HostBlockMask::from_dense(dense, 1, 1, 32, 32, 16, 16);
  EXPECT_EQ(m.to_dense(), dense);
  EXPECT_THROW(HostBlockMask::from_dense({1, 0, 1}, 1, 1, 32, 32, 16, 16), Error);
  m.indices[0] = 7;  // out of range: to_dense would write past its map
  EXPECT_THROW(m.to_dense(), Error);
  m.indices[0] = 0;
  m.counts[1] = 3;
  EXPECT_THROW(m.to_dense(), Error);
  m.counts.pop_back();
  EXPECT_THROW(m.to_dense(), Error);
}

}  // namespace
}  // namespace sparge::test
