// The CUDA workspace of decode-shaped calls (1-4 query rows; src/cuda/dispatch.cu,
// takes_decode_kernel): the split-KV kernels' partial outputs count in workspace_size only when
// SPARGE_CUDA_DECODE=1 forces those kernels. By default they run only when the caller's workspace
// already holds the partials, so that workspace_size stays monotonic in seq_q: a call of one row
// over few keys would otherwise ask for more than a call of a hundred rows. Runs without a GPU
// (workspace_size is host arithmetic); a build without the CUDA backend has no such workspace.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>

#include "sparge/build_info.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::ScopedEnv;

TEST(DecodeWorkspace, PartialsCountOnlyWhenTheKernelsAreForced) {
  if (!SPARGE_WITH_CUDA) GTEST_SKIP() << "the CUDA workspace (no Stage-1 scratch in this build)";
  SparseOptions o;
  o.select = SelectMode::kTopK;
  // B 1, 32 query heads over 8, hd 128, 1000 keys: 16 key blocks of Stage-1 scratch, far less
  // than the partials of 32 rows × 16 splits × (128 + 2) floats.
  const ProblemShape one_row{1, 32, 8, 1, 1000, 128, DType::kBFloat16};
  std::size_t unset = 0, off = 0, forced = 0;
  {
    const ScopedEnv env("SPARGE_CUDA_DECODE", nullptr);
    unset = workspace_size(one_row, o, Device::kCUDA, /*caller_mask=*/true);
  }
  {
    const ScopedEnv env("SPARGE_CUDA_DECODE", "0");
    off = workspace_size(one_row, o, Device::kCUDA, true);
  }
  {
    const ScopedEnv env("SPARGE_CUDA_DECODE", "1");
    forced = workspace_size(one_row, o, Device::kCUDA, true);
  }
  EXPECT_EQ(unset, off);
  // The partials share the workspace with Stage 1's scratch (Stage 1 is done when they are
  // written), so forcing the kernels makes it the larger of the two: here the partials.
  EXPECT_GT(forced, unset);
  EXPECT_GE(forced, std::size_t(32) * 16 * (128 + 2) * sizeof(float));

  // From 2000 keys on (here) the Stage-1 scratch holds the partials, so a workspace of
  // workspace_size's default bytes takes the decode kernels: forcing them adds nothing.
  for (int64_t keys : {2000, 131072}) {
    ProblemShape s = one_row;
    s.seq_k = keys;
    std::size_t plain = 0;
    {
      const ScopedEnv env("SPARGE_CUDA_DECODE", nullptr);
      plain = workspace_size(s, o, Device::kCUDA, true);
    }
    const ScopedEnv env("SPARGE_CUDA_DECODE", "1");
    EXPECT_EQ(workspace_size(s, o, Device::kCUDA, true), plain) << keys << " keys";
  }

  // Unset, the size grows with the rows across the decode shapes' end (4 rows).
  const ScopedEnv env("SPARGE_CUDA_DECODE", nullptr);
  std::size_t previous = 0;
  for (int64_t rows : {1, 2, 4, 5, 64, 100, 1000}) {
    ProblemShape s = one_row;
    s.seq_q = rows;
    const std::size_t bytes = workspace_size(s, o, Device::kCUDA, true);
    EXPECT_GE(bytes, previous) << rows << " rows";
    previous = bytes;
  }
}

}  // namespace
}  // namespace sparge
