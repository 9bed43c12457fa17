// Calls cut into chunks of query rows (common/row_chunks.h; issue 14's memory target): a long
// call without a caller's mask runs Stage 1 and Stage 2 per chunk of whole query blocks, holding
// one chunk's mask and Stage-1 scratch. The chunk's problem keeps the call's visibility band, so
// the outputs, LSE, λ counters and Stage-1 stats equal the whole call's bit for bit on both CPU
// backends for every chunk size (SPARGE_ROW_CHUNK_BLOCKS forces them on small inputs): causal
// top-left and bottom-right, windows, Nq != Nk, odd lengths, GQA, key_lengths, per-head
// thresholds, both estimates, quantized mode and key blocks. The plan: long calls are cut so that
// the workspace stays within 10% of Q + K + V at 128K and 1M tokens, short ones are not, and the
// error target keeps a call whole.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/row_chunks.h"
#include "call_outputs.h"
#include "reference_cases.h"
#include "sparge/build_info.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::gaussian;
using test::HostTensor;
using test::expect_same;
using Outputs = test::CallOutputs;
using test::ScopedEnv;

struct Case {
  const char* name;
  int64_t b, hq, hkv, nq, nk, d;
  bool causal;
  CausalAlign align;
  int64_t window_left, window_right;
  EstimateMode estimate;
  QuantMode quant;
  bool key_lengths;
};

struct Inputs {
  HostTensor q, k, v;
  std::vector<float> sim, select, lambda;
  std::vector<int32_t> lengths;
  SparseOptions opts;
  AttentionMask attn;
};

Inputs make_inputs(const Case& c) {
  Inputs in;
  in.q = HostTensor::make(gaussian(c.b * c.hq * c.nq * c.d, 11), c.b, c.hq, c.nq, c.d,
                          DType::kBFloat16, Layout::kNHD);
  in.k = HostTensor::make(gaussian(c.b * c.hkv * c.nk * c.d, 12), c.b, c.hkv, c.nk, c.d,
                          DType::kBFloat16, Layout::kHND);
  in.v = HostTensor::make(gaussian(c.b * c.hkv * c.nk * c.d, 13), c.b, c.hkv, c.nk, c.d,
                          DType::kBFloat16, Layout::kHND);
  for (int64_t h = 0; h < c.hq; ++h) {
    in.sim.push_back(h % 2 ? -1.0f : 0.2f);
    in.select.push_back(0.2f + 0.15f * float(h % 3));
    in.lambda.push_back(h % 3 == 2 ? INFINITY : 4.0f + float(h));
  }
  SparseOptions& o = in.opts;
  o.causal = c.causal;
  o.causal_align = c.align;
  o.window_left = c.window_left;
  o.window_right = c.window_right;
  o.select = SelectMode::kTopK;
  o.estimate = c.estimate;
  o.quant = c.quant;
  o.block_q = 32;
  o.block_k = 16;
  o.sim_threshold.per_head = in.sim.data();
  o.select_value.per_head = in.select.data();
  o.pv_threshold.per_head = in.lambda.data();
  if (c.key_lengths) {
    for (int64_t b = 0; b < c.b; ++b) in.lengths.push_back(int32_t(c.nk - 37 * b));
    in.attn.key_lengths = in.lengths.data();
  }
  return in;
}

Outputs run(const Case& c, const Inputs& in, Backend backend, const KeyBlocks* kb = nullptr) {
  Outputs r;  // no tiles: a call cut into row chunks keeps its mask
  HostTensor o = HostTensor::poisoned(c.b, c.hq, c.nq, c.d, DType::kBFloat16, Layout::kNHD);
  const AttentionExtras extras = r.extras_for(c.b, c.hq, c.nq);
  ExecContext ctx;
  ctx.backend = backend;
  r.status = kb ? sparse_attention(in.q.view, in.k.view, in.v.view, in.attn, *kb, in.opts, o.view,
                                   extras, ctx)
                : sparse_attention(in.q.view, in.k.view, in.v.view, in.attn, in.opts, o.view,
                                   extras, ctx);
  r.out = o.to_hnd();
  return r;
}

const Case kCases[] = {
    {"causal top-left", 2, 4, 2, 300, 300, 32, true, CausalAlign::kTopLeft, -1, -1,
     EstimateMode::kPooled, QuantMode::kNone, false},
    {"causal bottom-right, Nq < Nk, key lengths", 2, 4, 1, 201, 333, 32, true,
     CausalAlign::kBottomRight, -1, -1, EstimateMode::kSampledRows, QuantMode::kNone, true},
    {"window, Nq > Nk", 1, 2, 2, 333, 250, 64, false, CausalAlign::kBottomRight, 70, 20,
     EstimateMode::kPooled, QuantMode::kNone, false},
    {"causal window", 1, 3, 1, 257, 257, 32, true, CausalAlign::kTopLeft, 90, -1,
     EstimateMode::kSampledRows, QuantMode::kNone, false},
    {"not causal, quantized", 1, 4, 2, 199, 260, 64, false, CausalAlign::kTopLeft, -1, -1,
     EstimateMode::kPooled, QuantMode::kInt8Fp8, false},
};

TEST(RowChunks, EveryChunkSizeEqualsTheWholeCallBitForBit) {
  for (const Case& c : kCases) {
    const Inputs in = make_inputs(c);
    for (Backend backend : {Backend::kCpuFast, Backend::kReference}) {
      if (backend == Backend::kReference && c.quant != QuantMode::kNone) continue;
      SCOPED_TRACE(std::string(c.name) + ", " + enum_name(backend));
      Outputs whole;
      {
        const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
        whole = run(c, in, backend);
      }
      ASSERT_TRUE(whole.status.is_ok()) << whole.status.message();
      EXPECT_FALSE(test::any_nan(whole.out));
      // Not trivial: λ skipped pairs on some head (the exact path; its rule reads the running
      // max over the kept tiles, so a chunk's mask or band that differed would show).
      unsigned long long skipped = 0;
      for (int64_t h = 0; h < c.hq; ++h) skipped += whole.counters[h * 2 + 1];
      if (c.quant == QuantMode::kNone) EXPECT_GT(skipped, 0u);
      for (const char* blocks : {"1", "2", "3", "5"}) {
        SCOPED_TRACE(std::string("chunks of ") + blocks + " query blocks");
        const ScopedEnv on("SPARGE_ROW_CHUNK_BLOCKS", blocks);
        expect_same(run(c, in, backend), whole);
      }
    }
  }
}

TEST(RowChunks, WithKeyBlocks) {
  const Case c = kCases[1];
  const Inputs in = make_inputs(c);
  Inputs pooled = make_inputs(c);
  pooled.opts.estimate = EstimateMode::kPooled;  // key blocks serve the pooled estimate
  HostKeyBlocks kb(c.b, c.hkv, c.d, c.nk, pooled.opts.block_k);
  ASSERT_TRUE(build_key_blocks(in.k.view, &kb.view()).is_ok());
  Outputs whole;
  {
    const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
    whole = run(c, pooled, Backend::kCpuFast, &kb.view());
  }
  ASSERT_TRUE(whole.status.is_ok()) << whole.status.message();
  const ScopedEnv on("SPARGE_ROW_CHUNK_BLOCKS", "2");
  expect_same(run(c, pooled, Backend::kCpuFast, &kb.view()), whole);
}

TEST(RowChunks, TheErrorTargetKeepsTheCallWhole) {
  const ScopedEnv on("SPARGE_ROW_CHUNK_BLOCKS", "1");
  SparseOptions o;
  const ProblemShape s{1, 8, 8, 4096, 4096, 128, DType::kBFloat16};
  EXPECT_TRUE(detail::row_chunking(s, o, [](const ProblemShape&, const SparseOptions&) {
                return std::size_t(1) << 40;
              }).cut());
  o.target_error = 0.02f;
  EXPECT_FALSE(detail::row_chunking(s, o, [](const ProblemShape&, const SparseOptions&) {
                 return std::size_t(1) << 40;
               }).cut());
}

TEST(RowChunks, ThePlan) {
  const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  SparseOptions o;  // block_q 128, block_k 64
  // A made-up cost: 1 MiB per query block plus 3 MiB per call.
  const detail::ChunkBytesFn cost = [](const ProblemShape& s, const SparseOptions& op) {
    return std::size_t((s.seq_q + op.block_q - 1) / op.block_q) * (std::size_t(1) << 20) +
           (std::size_t(3) << 20);
  };
  // 1000 query blocks (1003 MiB) against a 64 MiB floor (Q+K+V of 1 head is small): chunks of
  // 61 blocks fit, spread evenly over 17 chunks of 59.
  const ProblemShape s{1, 1, 1, 128000, 128000, 64, DType::kBFloat16};
  const detail::RowChunking plan = detail::row_chunking(s, o, cost);
  ASSERT_TRUE(plan.cut());
  EXPECT_EQ(plan.count, 17);
  EXPECT_EQ(plan.q_blocks, 59);
  EXPECT_LE(cost(detail::chunk_shape(s, o, plan), o), detail::kRowChunkMinBytes);
  // Within the budget, or fewer than 4 query blocks: whole.
  ProblemShape small = s;
  small.seq_q = 60 * 128;
  EXPECT_FALSE(detail::row_chunking(small, o, cost).cut());
  // The forced size, and a forced size of the whole call or more.
  {
    const ScopedEnv on("SPARGE_ROW_CHUNK_BLOCKS", "300");
    EXPECT_EQ(detail::row_chunking(s, o, cost).q_blocks, 300);
    EXPECT_EQ(detail::row_chunking(s, o, cost).count, 4);
    EXPECT_FALSE(detail::row_chunking(small, o, cost).cut());
  }
}

// Head chunks (heads_per_memory_chunk): the most whole KV-head groups of one batch entry whose
// cost fits their own budget, spread evenly; 0 (row chunks) where one group does not fit or rows
// are forced; a forced head count rounds down to whole groups.
TEST(RowChunks, TheHeadChunkPlan) {
  const ScopedEnv rows_off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  const ScopedEnv by_off("SPARGE_CHUNK_BY", nullptr);
  const ScopedEnv heads_off("SPARGE_HEAD_CHUNK_HEADS", nullptr);
  SparseOptions o;
  // A made-up cost: 10 MiB per query head (a 64 MiB floor: 6 heads fit).
  const detail::ChunkBytesFn cost = [](const ProblemShape& s, const SparseOptions&) {
    return std::size_t(s.batch * s.heads_q) * (std::size_t(10) << 20);
  };
  const ProblemShape mha{2, 32, 32, 4096, 4096, 64, DType::kBFloat16};
  EXPECT_EQ(detail::heads_per_memory_chunk(mha, o, cost), 6);  // 6 chunks per batch entry
  const ProblemShape gqa{1, 32, 8, 4096, 4096, 64, DType::kBFloat16};  // groups of 4: one fits
  EXPECT_EQ(detail::heads_per_memory_chunk(gqa, o, cost), 4);
  const ProblemShape wide{1, 64, 4, 4096, 4096, 64, DType::kBFloat16};  // groups of 16: none fits
  EXPECT_EQ(detail::heads_per_memory_chunk(wide, o, cost), 0);
  {
    const ScopedEnv rows("SPARGE_CHUNK_BY", "rows");
    EXPECT_EQ(detail::heads_per_memory_chunk(mha, o, cost), 0);
  }
  {
    const ScopedEnv forced_rows("SPARGE_ROW_CHUNK_BLOCKS", "3");
    EXPECT_EQ(detail::heads_per_memory_chunk(mha, o, cost), 0);
  }
  {
    const ScopedEnv forced("SPARGE_HEAD_CHUNK_HEADS", "7");
    EXPECT_TRUE(detail::head_chunks_forced());
    EXPECT_EQ(detail::heads_per_memory_chunk(mha, o, cost), 7);
    EXPECT_EQ(detail::heads_per_memory_chunk(gqa, o, cost), 4);   // rounded down to a group
    EXPECT_EQ(detail::heads_per_memory_chunk(wide, o, cost), 16);  // at least one group
  }
  EXPECT_FALSE(detail::head_chunks_forced());
}

// The plan against CUDA's workspace arithmetic at long lengths (sizes only, no GPU): a chunk
// holds the most query blocks whose whole-call workspace (and lse rows) fits the budget. CUDA's
// long-row scratch stops growing at its cap, so a line through the sizes at 2 and 4 query blocks
// (the plan before 2026-12-05) undercounts what fits: it printed 107 blocks at 1M tokens, 8 heads,
// where 191 fit.
std::size_t cuda_whole_call_bytes(const ProblemShape& s, const SparseOptions& o) {
  const ScopedEnv whole("SPARGE_ROW_CHUNK_BLOCKS", "1000000000");
  return workspace_size(s, o, Device::kCUDA);
}

TEST(RowChunks, ChunksHoldWhatFitsAtLongLengths) {
  if (build_info().find("cuda: not built") != std::string::npos)
    GTEST_SKIP() << "CUDA's workspace arithmetic: not in a CPU-only build";
  const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  SparseOptions o;
  o.select = SelectMode::kTopK;
  for (int64_t n : {int64_t(262144), int64_t(1) << 20}) {
    const ProblemShape s{1, 8, 8, n, n, 128, DType::kBFloat16};
    const double budget = double(detail::row_chunk_budget(s));
    int64_t most = 0;  // the largest chunk that fits, by a scan
    for (int64_t b = 2; b < n / 128; ++b) {
      ProblemShape c = s;
      c.seq_q = b * 128;
      if (double(cuda_whole_call_bytes(c, o)) + 4.0 * 8 * 128 * double(b) > budget) break;
      most = b;
    }
    const detail::RowChunking plan = detail::row_chunking(s, o, cuda_whole_call_bytes);
    std::printf("[ row chunks ] N %lld: %lld chunks of %lld query blocks (%lld fit)\n",
                (long long)n, (long long)plan.count, (long long)plan.q_blocks, (long long)most);
    ASSERT_TRUE(plan.cut());
    EXPECT_LE(plan.q_blocks, most);
    EXPECT_EQ(plan.count, (n / 128 + most - 1) / most);  // as few chunks as fit, spread evenly
  }
}

// Where CUDA's cut goes by heads (heads_per_memory_chunk against the workspace arithmetic, no
// GPU): the defaults' 32K calls at 32 heads in three chunks of 11 heads, a 128K call at 8 heads
// one head a chunk, and rows at 256K tokens (one head alone exceeds the 64 MiB floor).
TEST(RowChunks, HeadChunksAgainstTheWorkspaceArithmetic) {
  if (build_info().find("cuda: not built") != std::string::npos)
    GTEST_SKIP() << "CUDA's workspace arithmetic: not in a CPU-only build";
  const ScopedEnv rows_off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  const ScopedEnv by_off("SPARGE_CHUNK_BY", nullptr);
  const ScopedEnv heads_off("SPARGE_HEAD_CHUNK_HEADS", nullptr);
  const SparseOptions o;  // the defaults
  struct Case {
    int64_t heads, n, want;
  };
  for (const Case c : {Case{32, 32768, 11}, Case{8, 131072, 1}, Case{8, 262144, 0}}) {
    const ProblemShape s{1, c.heads, c.heads, c.n, c.n, 128, DType::kBFloat16};
    const int64_t got = detail::heads_per_memory_chunk(s, o, cuda_whole_call_bytes);
    std::printf("[ head chunks ] H %lld, N %lld: %lld heads a chunk\n", (long long)c.heads,
                (long long)c.n, (long long)got);
    EXPECT_TRUE(detail::row_chunking(s, o, cuda_whole_call_bytes).cut());
    EXPECT_EQ(got, c.want);
  }
}

// Issue 14's target, for the workspace a call without a caller's mask needs (mask + Stage-1
// scratch; on a build without CUDA, the mask alone): at most 10% of Q + K + V's bytes at 128K and
// 1M tokens (B 1, H 8, hd 128, bf16, top-k), where a whole call would need several times that.
TEST(RowChunks, WorkspaceWithinATenthOfQkvAtLongLengths) {
  const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  SparseOptions o;
  o.select = SelectMode::kTopK;
  for (int64_t n : {int64_t(131072), int64_t(1) << 20}) {
    const ProblemShape s{1, 8, 8, n, n, 128, DType::kBFloat16};
    const double qkv = 3.0 * 2.0 * 8.0 * double(n) * 128.0;
    const std::size_t chunked = workspace_size(s, o, Device::kCUDA);
    std::printf("[ row chunks ] N %lld: workspace %.1f MiB = %.2f%% of Q+K+V\n", (long long)n,
                double(chunked) / (1 << 20), 100.0 * double(chunked) / qkv);
    EXPECT_LE(double(chunked), 0.10 * qkv);
    std::size_t whole = 0;
    {
      const ScopedEnv whole_call("SPARGE_ROW_CHUNK_BLOCKS", "1000000");
      whole = workspace_size(s, o, Device::kCUDA);
    }
    EXPECT_LT(chunked, whole);
  }
}

// A workspace sized for a shape serves every call of smaller extents, cut into row chunks or
// not (varlen sizes its workspace for the longest sequences; engines size theirs for a maximum
// length): workspace_size grows with every extent, across the point where calls start being cut.
TEST(RowChunks, WorkspaceSizeGrowsWithTheShape) {
  const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  SparseOptions o;
  o.select = SelectMode::kTopK;
  const int64_t lengths[] = {1, 100, 4096, 16384, 32768, 65536, 100000, 131072, 262144, 600000};
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kInt8Fp8, QuantMode::kInt8})
  for (int64_t heads : {1, 8, 32})
    for (int64_t nk : lengths) {
      o.quant = quant;
      std::size_t previous = 0;
      for (int64_t nq : lengths) {
        const ProblemShape s{1, heads, heads, nq, nk, 128, DType::kBFloat16};
        const std::size_t bytes = workspace_size(s, o, Device::kCUDA);
        EXPECT_GE(bytes, previous) << enum_name(quant) << " H " << heads << " nq " << nq
                                   << " nk " << nk;
        previous = bytes;
        if (nk > 1) {  // and along the keys
          ProblemShape fewer = s;
          fewer.seq_k = nk / 2;
          EXPECT_GE(bytes, workspace_size(fewer, o, Device::kCUDA))
              << enum_name(quant) << " H " << heads << " nq " << nq << " nk " << nk;
        }
      }
    }
}

// The quantized copies of q, k and v grow with the tokens, not with seq_q · seq_k, and chunks
// would quantize K and V again each: they do not count towards cutting a call. A quantized call
// of 8K tokens and 32 heads (Q+K+V 192 MiB, its copies about 100 MiB) stays whole, so its
// workspace holds its mask too and exceeds the caller-mask size; before, it was cut into 32
// chunks of 2 query blocks.
TEST(RowChunks, QuantizedCopiesDoNotCutACall) {
  if (!SPARGE_WITH_CUDA) GTEST_SKIP() << "the CUDA workspace (no Stage-1 scratch in this build)";
  const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
  const ProblemShape s{1, 32, 32, 8192, 8192, 128, DType::kBFloat16};
  for (QuantMode quant : {QuantMode::kNone, QuantMode::kInt8Fp8, QuantMode::kInt8}) {
    SparseOptions o;
    o.quant = quant;
    EXPECT_GT(workspace_size(s, o, Device::kCUDA), workspace_size(s, o, Device::kCUDA, true))
        << enum_name(quant);
  }
}

}  // namespace
}  // namespace sparge
