// Calls cut into head chunks (common/head_chunks.h; issue 14 item 6): CUDA holds per-head
// thresholds in its kernel parameters (256), so a call with more query heads and per-head
// options runs as calls on views of at most 256 heads of one batch entry. The views are
// backend-independent, so the CPU backends check them here with small bounds: every chunking
// (whole KV groups, one KV head cut into parts, single heads) gives the uncut call's outputs,
// LSE, λ counters, Stage-1 stats and masks bit for bit, for the three entries and with key
// blocks; the chunks themselves; a compact mask is refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/head_chunks.h"
#include "call_outputs.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::gaussian;
using test::HostTensor;
using test::expect_same;
using test::same_bits;
using Outputs = test::CallOutputs;

constexpr int64_t B = 2, Hq = 6, Hkv = 2, N = 300, D = 32;

struct Problem {
  HostTensor q = HostTensor::make(gaussian(B * Hq * N * D, 1), B, Hq, N, D, DType::kBFloat16,
                                  Layout::kNHD);
  HostTensor k = HostTensor::make(gaussian(B * Hkv * N * D, 2), B, Hkv, N, D, DType::kBFloat16,
                                  Layout::kNHD);
  HostTensor v = HostTensor::make(gaussian(B * Hkv * N * D, 3), B, Hkv, N, D, DType::kBFloat16,
                                  Layout::kNHD);
  std::vector<float> sim = {0.1f, -1.0f, 0.3f, 0.0f, -0.5f, 0.2f};
  std::vector<float> select = {0.3f, 0.5f, 0.2f, 0.6f, 0.1f, 0.4f};
  std::vector<float> lambda = {4.0f, 8.0f, INFINITY, 6.0f, 3.0f, 10.0f};
  std::vector<int32_t> key_lengths = {300, 251};
  SparseOptions opts;
  AttentionMask attn;
  Problem() {
    opts.causal = true;
    opts.select = SelectMode::kTopK;
    opts.block_q = 64;
    opts.block_k = 32;
    opts.sim_threshold.per_head = sim.data();
    opts.select_value.per_head = select.data();
    opts.pv_threshold.per_head = lambda.data();
    attn.key_lengths = key_lengths.data();
  }
};

Outputs run_sparse_attention(const Problem& p, const KeyBlocks* kb, Backend backend,
                             int64_t max_heads) {
  Outputs r;
  HostTensor o = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  HostBlockMask mask(B, Hq, N, N, p.opts.block_q, p.opts.block_k);
  const AttentionExtras extras = r.extras_for(B, Hq, N);
  ExecContext ctx;
  ctx.backend = backend;
  if (max_heads > 0)
    r.status = detail::sparse_attention_in_head_chunks(p.q.view, p.k.view, p.v.view, p.attn, kb,
                                                       p.opts, o.view, extras, ctx, &mask.view(),
                                                       max_heads);
  else if (kb)
    r.status = sparse_attention(p.q.view, p.k.view, p.v.view, p.attn, *kb, p.opts, o.view, extras,
                                ctx, &mask.view());
  else
    r.status = sparse_attention(p.q.view, p.k.view, p.v.view, p.attn, p.opts, o.view, extras, ctx,
                                &mask.view());
  r.out = o.to_hnd();
  r.tiles = mask.to_dense();
  return r;
}

TEST(HeadChunks, TheChunks) {
  // Whole KV groups of at most max_heads query heads, per batch entry.
  auto c = detail::head_chunks(2, 512, 8, 256);  // group 64: 4 KV heads per chunk
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(c[1].batch, 0);
  EXPECT_EQ(c[1].head0, 256);
  EXPECT_EQ(c[1].heads, 256);
  EXPECT_EQ(c[1].kv_head0, 4);
  EXPECT_EQ(c[1].kv_heads, 4);
  EXPECT_EQ(c[2].batch, 1);
  // A group larger than the bound: the largest divisor of it that fits, inside one KV head.
  c = detail::head_chunks(1, 600, 1, 256);  // MQA: 600 = 3 x 200
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[2].head0, 400);
  EXPECT_EQ(c[2].heads, 200);
  EXPECT_EQ(c[2].kv_head0, 0);
  EXPECT_EQ(c[2].kv_heads, 1);
  c = detail::head_chunks(1, 300, 100, 256);  // group 3: 255 heads (85 KV heads), then 45
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].heads, 255);
  EXPECT_EQ(c[1].kv_head0, 85);
  EXPECT_EQ(c[1].kv_heads, 15);
  // Only per-head options beyond the bound need chunks.
  SparseOptions o;
  EXPECT_FALSE(detail::needs_head_chunks(o, 1000, 256));
  std::vector<float> per(1000, 0.5f);
  o.pv_threshold.per_head = per.data();
  EXPECT_TRUE(detail::needs_head_chunks(o, 1000, 256));
  EXPECT_FALSE(detail::needs_head_chunks(o, 256, 256));
}

TEST(HeadChunks, SparseAttentionInChunksEqualsTheWholeCallBitForBit) {
  const Problem p;
  for (Backend backend : {Backend::kCpuFast, Backend::kReference}) {
    const Outputs whole = run_sparse_attention(p, nullptr, backend, 0);
    ASSERT_TRUE(whole.status.is_ok()) << whole.status.message();
    EXPECT_FALSE(test::any_nan(whole.out));
    // 3: one KV group per chunk; 4: still one group (3 fits, 6 does not); 2: a group of 3 cut
    // into single heads; 6: one chunk per batch entry.
    for (int64_t max_heads : {1, 2, 3, 4, 6}) {
      SCOPED_TRACE(std::string(enum_name(backend)) + " max_heads " + std::to_string(max_heads));
      expect_same(run_sparse_attention(p, nullptr, backend, max_heads), whole);
    }
  }
  // Not trivial: the heads differ (per-head thresholds), tiles were skipped, λ skipped pairs.
  const Outputs whole = run_sparse_attention(p, nullptr, Backend::kCpuFast, 0);
  int64_t kept = 0;
  for (uint8_t t : whole.tiles) kept += t;
  EXPECT_LT(kept, int64_t(whole.tiles.size()) * 3 / 4);
  unsigned long long skipped = 0;
  for (int64_t h = 0; h < Hq; ++h) skipped += whole.counters[h * 2 + 1];
  EXPECT_GT(skipped, 0u);
}

TEST(HeadChunks, WithKeyBlocks) {
  const Problem p;
  HostKeyBlocks kb(B, Hkv, D, N, p.opts.block_k);
  check(build_key_blocks(p.k.view, &kb.view()));
  const Outputs whole = run_sparse_attention(p, &kb.view(), Backend::kCpuFast, 0);
  ASSERT_TRUE(whole.status.is_ok()) << whole.status.message();
  for (int64_t max_heads : {1, 3}) {
    SCOPED_TRACE(max_heads);
    expect_same(run_sparse_attention(p, &kb.view(), Backend::kCpuFast, max_heads), whole);
  }
}

TEST(HeadChunks, PredictAndBlockSparseInChunks) {
  const Problem p;
  HostBlockMask whole(B, Hq, N, N, p.opts.block_q, p.opts.block_k);
  std::vector<int64_t> forced_whole(B * Hq, -1), forced_chunks(B * Hq, -1);
  Stage1Stats sw, sc;
  sw.forced_tiles = forced_whole.data();
  sc.forced_tiles = forced_chunks.data();
  check(predict_block_mask(p.q.view, p.k.view, p.v.view, p.attn, p.opts, whole.view(), {}, sw));
  HostBlockMask chunks(B, Hq, N, N, p.opts.block_q, p.opts.block_k);
  check(detail::predict_block_mask_in_head_chunks(p.q.view, p.k.view, p.v.view, p.attn, nullptr,
                                                  p.opts, chunks.view(), {}, sc, 2));
  EXPECT_EQ(chunks.to_dense(), whole.to_dense());
  EXPECT_EQ(forced_chunks, forced_whole);

  HostTensor o1 = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  HostTensor o2 = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  std::vector<float> lse1(B * Hq * N, NAN), lse2(B * Hq * N, NAN);
  AttentionExtras e1, e2;
  e1.lse = lse1.data();
  e2.lse = lse2.data();
  check(block_sparse_attention(p.q.view, p.k.view, p.v.view, p.attn, whole.view(), p.opts,
                               o1.view, e1));
  check(detail::block_sparse_attention_in_head_chunks(p.q.view, p.k.view, p.v.view, p.attn,
                                                      whole.view(), p.opts, o2.view, e2, {}, 4));
  EXPECT_TRUE(same_bits(o2.to_hnd(), o1.to_hnd()));
  EXPECT_TRUE(same_bits(lse2, lse1));

  // A compact mask cannot be cut: refused by name.
  HostBlockMask compact = whole.to_compact();
  const Status s = detail::block_sparse_attention_in_head_chunks(
      p.q.view, p.k.view, p.v.view, p.attn, compact.view(), p.opts, o2.view, {}, {}, 4);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("mask.row_offsets"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace sparge
