// Key blocks kept beside a KV cache (KeyBlocks, issue 14 item 5, CPU): built on all of k they
// make sparse_attention give the plain call's output, mask and Stage-1 stats bit for bit, and
// Stage 1 then takes the key side from them, not from k; appends read only the new rows and the
// last incomplete block's, and any split of the appends gives the same blocks and the same
// decode outputs; bad blocks and unsupported settings get errors naming the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "c_tensor.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "sparge/sparge_c.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::gaussian;
using test::HostTensor;

// Rows with structure: per run of `run` rows one of 8 directions plus noise, so that blocks are
// self-similar, except every fifth run, strong noise (its blocks are not similar: the gate
// forces them); [B, H, N, D] logical values.
std::vector<float> structured(int64_t B, int64_t H, int64_t N, int64_t D, int64_t run,
                              uint64_t seed) {
  std::vector<float> x = gaussian(B * H * N * D, seed, 0.3f);
  const std::vector<float> dirs = gaussian(8 * D, seed + 1);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d)
        if ((n / run) % 5 != 4)
          x[(bh * N + n) * D + d] += 2.0f * dirs[((n / run + bh) % 8) * D + d];
        else
          x[(bh * N + n) * D + d] *= 20.0f;  // noise far larger than the mean it is smoothed by
  return x;
}

std::vector<float> structured_keys(int64_t B, int64_t H, int64_t N, int64_t D, uint64_t seed) {
  return structured(B, H, N, D, 64, seed);
}

struct Cache {
  static constexpr int64_t B = 2, Hq = 4, Hkv = 2, D = 32, kCapacity = 1100;
  HostTensor k = HostTensor::make(structured_keys(B, Hkv, kCapacity, D, 5), B, Hkv, kCapacity, D,
                                  DType::kBFloat16, Layout::kNHD);
  HostTensor v = HostTensor::make(gaussian(B * Hkv * kCapacity * D, 6), B, Hkv, kCapacity, D,
                                  DType::kBFloat16, Layout::kNHD);
  // The cache's first `tokens` rows (a view of the whole allocation).
  TensorView k_at(int64_t n) const { return test::first_tokens(k.view, n); }
  TensorView v_at(int64_t n) const { return test::first_tokens(v.view, n); }
  HostKeyBlocks blocks() const { return HostKeyBlocks(B, Hkv, D, kCapacity, 64); }
};

SparseOptions decode_options(SelectMode select, float value) {
  SparseOptions o;
  o.causal = true;
  o.causal_align = CausalAlign::kBottomRight;  // new queries at the cache's end
  o.select = select;
  o.select_value.value = value;
  o.sim_threshold.value = 0.3f;  // the gate forces some blocks, keeps others selectable
  o.pv_threshold.value = 6.0f;
  // Key blocks serve the pooled map: the calls they are compared with take it too (the default,
  // auto, would sample rows in the calls without key blocks that have a full query block).
  o.estimate = EstimateMode::kPooled;
  return o;
}

struct Call {
  std::vector<float> out;
  std::vector<uint8_t> tiles;
  std::vector<float> select_value;
  std::vector<int64_t> forced;
};

Call run(const Cache& c, const HostTensor& q, int64_t tokens, const SparseOptions& o,
         const KeyBlocks* blocks, Backend backend = Backend::kCpuFast) {
  const TensorView& qv = q.view;
  HostTensor out = HostTensor::poisoned(qv.batch, qv.heads, qv.tokens, qv.head_dim, qv.dtype,
                                        Layout::kNHD);
  HostBlockMask mask(qv.batch, qv.heads, qv.tokens, tokens, o.block_q, o.block_k);
  Call r;
  r.select_value.assign(qv.batch * qv.heads, NAN);
  r.forced.assign(qv.batch * qv.heads, -1);
  AttentionExtras extras;
  extras.stage1.select_value = r.select_value.data();
  extras.stage1.forced_tiles = r.forced.data();
  ExecContext ctx;
  ctx.backend = backend;
  if (blocks)
    check(sparse_attention(qv, c.k_at(tokens), c.v_at(tokens), *blocks, o, out.view, extras, ctx,
                           &mask.view()));
  else
    check(sparse_attention(qv, c.k_at(tokens), c.v_at(tokens), o, out.view, extras, ctx,
                           &mask.view()));
  r.out = out.to_hnd();
  r.tiles = mask.to_dense();
  return r;
}

void expect_same_call(const Call& a, const Call& b) {
  ASSERT_EQ(a.out.size(), b.out.size());
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)), 0);
  EXPECT_EQ(a.tiles, b.tiles);
  EXPECT_EQ(std::memcmp(a.select_value.data(), b.select_value.data(),
                        a.select_value.size() * sizeof(float)),
            0);
  EXPECT_EQ(a.forced, b.forced);
}

HostTensor queries(int64_t n, uint64_t seed) {
  return HostTensor::make(structured(Cache::B, Cache::Hq, n, Cache::D, 128, seed), Cache::B,
                          Cache::Hq, n, Cache::D, DType::kBFloat16, Layout::kNHD);
}

TEST(KeyBlocks, BuiltOnAllKeysTheCallEqualsThePlainCallBitForBit) {
  const Cache c;
  for (int64_t tokens : {1000, 64, 1}) {  // a tail block of 40 rows, one whole block, one key
    HostKeyBlocks kb = c.blocks();
    check(build_key_blocks(c.k_at(tokens), &kb.view()));
    EXPECT_EQ(kb.view().tokens, tokens);
    for (int64_t nq : {1, 37, 300}) {  // decode, a chunk, a chunk of several query blocks
      if (nq > tokens) continue;       // a cache holds the new queries' keys too
      const HostTensor q = queries(nq, 100 + nq);
      for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf}) {
        for (Backend backend : {Backend::kCpuFast, Backend::kReference}) {
          SCOPED_TRACE("tokens " + std::to_string(tokens) + " nq " + std::to_string(nq) + " " +
                       enum_name(select) + " " + enum_name(backend));
          const SparseOptions o = decode_options(select, select == SelectMode::kTopK ? 0.3f : 0.8f);
          const Call plain = run(c, q, tokens, o, nullptr, backend);
          EXPECT_FALSE(test::any_nan(plain.out));
          expect_same_call(run(c, q, tokens, o, &kb.view(), backend), plain);
        }
      }
    }
  }
  // The case is not trivial: at 1000 keys the selection skips tiles and the gate forces some.
  const SparseOptions o = decode_options(SelectMode::kTopK, 0.3f);
  const Call plain = run(c, queries(37, 137), 1000, o, nullptr);
  int64_t kept = 0, forced = 0;
  for (uint8_t t : plain.tiles) kept += t;
  for (int64_t f : plain.forced) forced += f;
  EXPECT_LT(kept, int64_t(plain.tiles.size()) * 3 / 4);
  EXPECT_GT(forced, 0);
}

TEST(KeyBlocks, TheAutoEstimateIsThePooledOneAtDecodeStepsAndWithKeyBlocks) {
  // EstimateMode::kAuto: the pooled map where key blocks stand in for k (they hold its side only)
  // and at calls shorter than a query block (a decode step would sample every row); sampled
  // rows for a call of whole query blocks without key blocks. The cases are chosen so that the
  // two estimates' masks differ (checked), so that equality says which one ran.
  const Cache c;
  HostKeyBlocks kb = c.blocks();
  check(build_key_blocks(c.k_at(1000), &kb.view()));
  SparseOptions pooled = decode_options(SelectMode::kTopCdf, 0.8f);
  pooled.sim_threshold.value = -1.0f;  // every block selectable: the estimate decides
  SparseOptions sampled = pooled, automatic = pooled;
  sampled.estimate = EstimateMode::kSampledRows;
  automatic.estimate = EstimateMode::kAuto;
  const HostTensor prefill = queries(300, 21), step = queries(37, 22);
  const Call prefill_pooled = run(c, prefill, 1000, pooled, nullptr);
  const Call prefill_sampled = run(c, prefill, 1000, sampled, nullptr);
  ASSERT_NE(prefill_pooled.tiles, prefill_sampled.tiles) << "the case must tell them apart";
  expect_same_call(run(c, prefill, 1000, automatic, nullptr), prefill_sampled);
  expect_same_call(run(c, prefill, 1000, automatic, &kb.view()),
                   run(c, prefill, 1000, pooled, &kb.view()));
  const Call step_pooled = run(c, step, 1000, pooled, nullptr);
  ASSERT_NE(step_pooled.tiles, run(c, step, 1000, sampled, nullptr).tiles);
  expect_same_call(run(c, step, 1000, automatic, nullptr), step_pooled);
  // Stage 1 alone resolves it the same way.
  HostBlockMask got(Cache::B, Cache::Hq, 300, 1000, pooled.block_q, pooled.block_k);
  check(predict_block_mask(prefill.view, c.k_at(1000), automatic, got.view()));
  EXPECT_EQ(got.to_dense(), prefill_sampled.tiles);
}

TEST(KeyBlocks, Stage1TakesTheKeySideFromTheBlocks) {
  // Blocks built from other keys of the same shape: the mask is theirs, not k's.
  const Cache c, other_cache;
  HostTensor other = HostTensor::make(structured_keys(Cache::B, Cache::Hkv, Cache::kCapacity,
                                                      Cache::D, 77),
                                      Cache::B, Cache::Hkv, Cache::kCapacity, Cache::D,
                                      DType::kBFloat16, Layout::kNHD);
  TensorView other_k = other.view;
  other_k.tokens = 1000;
  HostKeyBlocks kb = c.blocks();
  check(build_key_blocks(other_k, &kb.view()));
  const HostTensor q = queries(37, 9);
  const SparseOptions o = decode_options(SelectMode::kTopK, 0.3f);
  const Call with_other = run(c, q, 1000, o, &kb.view());
  const Call plain = run(c, q, 1000, o, nullptr);
  EXPECT_NE(with_other.tiles, plain.tiles);
  // The mask Stage 1 predicts from the other keys themselves.
  HostBlockMask want(Cache::B, Cache::Hq, 37, 1000, o.block_q, o.block_k);
  check(predict_block_mask(q.view, other_k, o, want.view()));
  EXPECT_EQ(with_other.tiles, want.to_dense());
}

TEST(KeyBlocks, AppendsReadOnlyNewRowsAndAnySplitGivesTheSameBlocks) {
  Cache c;
  HostKeyBlocks once = c.blocks();
  check(build_key_blocks(c.k_at(300), &once.view()));
  const HostKeyBlocks at_300 = once;
  check(append_key_blocks(c.k_at(1000), &once.view()));
  EXPECT_EQ(once.view().tokens, 1000);

  HostKeyBlocks steps = c.blocks();
  check(build_key_blocks(c.k_at(300), &steps.view()));
  for (int64_t tokens : {301, 302, 320, 383, 384, 385, 448, 700, 999, 1000})
    check(append_key_blocks(c.k_at(tokens), &steps.view()));
  EXPECT_EQ(steps.pooled, once.pooled);
  EXPECT_EQ(steps.sim, once.sim);
  EXPECT_EQ(steps.mean, at_300.mean);  // the mean stays build's
  EXPECT_EQ(once.mean, at_300.mean);
  // The complete blocks before 300 (4 of 64 rows) are untouched; the rest were filled. Pooled
  // rows are channel-major: block j, channel d of (b, h) at [(bh * D + d) * max_blocks + j].
  const int64_t nb = once.view().max_blocks;
  const auto at = [&](const HostKeyBlocks& kb, int64_t bh, int64_t d, int64_t j) {
    return kb.pooled[(bh * Cache::D + d) * nb + j];
  };
  for (int64_t bh = 0; bh < Cache::B * Cache::Hkv; ++bh)
    for (int64_t d = 0; d < Cache::D; ++d) {
      for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(at(once, bh, d, j), at(at_300, bh, d, j));
      EXPECT_EQ(at(at_300, bh, d, 15), 0.0);  // not covered at 300 keys
      EXPECT_NE(at(once, bh, d, 15), 0.0);
    }

  // Appends read no row before the last incomplete block: rows 0-255 poisoned with NaN now
  // leave the blocks as they were (block 4, rows 256-299, is pooled again and stays finite).
  HostKeyBlocks poisoned = c.blocks();
  check(build_key_blocks(c.k_at(300), &poisoned.view()));
  for (int64_t b = 0; b < Cache::B; ++b)
    for (int64_t h = 0; h < Cache::Hkv; ++h)
      for (int64_t n = 0; n < 256; ++n)
        for (int64_t d = 0; d < Cache::D; ++d) c.k.set(b, h, n, d, NAN);
  check(append_key_blocks(c.k_at(1000), &poisoned.view()));
  EXPECT_EQ(poisoned.pooled, once.pooled);
  EXPECT_EQ(poisoned.sim, once.sim);
}

TEST(KeyBlocks, DecodeStepByStepEqualsOneAppendPerStep) {
  // A decode loop: one new key per step, the blocks appended each step, vs blocks built at the
  // prefill length and appended once to each step's length: the same outputs and masks.
  const Cache c;
  HostKeyBlocks running = c.blocks();
  check(build_key_blocks(c.k_at(500), &running.view()));
  const HostKeyBlocks prefill = running;
  const SparseOptions o = decode_options(SelectMode::kTopCdf, 0.8f);
  for (int64_t tokens = 501; tokens <= 515; ++tokens) {
    SCOPED_TRACE(tokens);
    check(append_key_blocks(c.k_at(tokens), &running.view()));
    HostKeyBlocks fresh = prefill;
    check(append_key_blocks(c.k_at(tokens), &fresh.view()));
    const HostTensor q = queries(1, 1000 + tokens);
    const Call step = run(c, q, tokens, o, &running.view());
    EXPECT_FALSE(test::any_nan(step.out));
    expect_same_call(step, run(c, q, tokens, o, &fresh.view()));
  }
}

// Keys of k's shape that are never read: one zero row per (batch, head) broadcast along the
// tokens (stride_token 0), as a rank that holds the key blocks but not the keys passes them.
struct BroadcastKeys {
  HostTensor row = HostTensor::make(std::vector<float>(Cache::B * Cache::Hkv * Cache::D, 0.0f),
                                    Cache::B, Cache::Hkv, 1, Cache::D, DType::kBFloat16,
                                    Layout::kHND);
  TensorView at(int64_t tokens) const {
    TensorView v = row.view;
    v.tokens = tokens;
    v.stride_token = 0;
    return v;
  }
};

TEST(KeyBlocks, PredictFromTheBlocksAloneEqualsThePlainPrediction) {
  const Cache c;
  const BroadcastKeys unread;
  HostKeyBlocks kb = c.blocks();
  check(build_key_blocks(c.k_at(1000), &kb.view()));
  for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf}) {
    for (int64_t nq : {1, 300}) {
      SCOPED_TRACE(std::string(enum_name(select)) + " nq " + std::to_string(nq));
      const HostTensor q = queries(nq, 300 + nq);
      const SparseOptions o = decode_options(select, select == SelectMode::kTopK ? 0.3f : 0.8f);
      HostBlockMask want(Cache::B, Cache::Hq, nq, 1000, o.block_q, o.block_k);
      HostBlockMask got(Cache::B, Cache::Hq, nq, 1000, o.block_q, o.block_k);
      std::vector<int64_t> forced_want(Cache::B * Cache::Hq, -1), forced_got = forced_want;
      Stage1Stats sw, sg;
      sw.forced_tiles = forced_want.data();
      sg.forced_tiles = forced_got.data();
      check(predict_block_mask(q.view, c.k_at(1000), c.v_at(1000), o, want.view(), {}, sw));
      check(predict_block_mask(q.view, unread.at(1000), AttentionMask{}, kb.view(), o, got.view(),
                               {}, sg));
      EXPECT_EQ(got.to_dense(), want.to_dense());
      EXPECT_EQ(forced_got, forced_want);
    }
  }
  // The same checks as the call with key blocks: a refused estimate names the key blocks.
  const HostTensor q = queries(37, 5);
  SparseOptions sampled = decode_options(SelectMode::kTopK, 0.3f);
  sampled.estimate = EstimateMode::kSampledRows;
  HostBlockMask mask(Cache::B, Cache::Hq, 37, 1000, sampled.block_q, sampled.block_k);
  EXPECT_NE(predict_block_mask(q.view, unread.at(1000), AttentionMask{}, kb.view(), sampled,
                               mask.view())
                .message()
                .find("pooled estimate only"),
            std::string::npos);
}

TEST(KeyBlocks, PoolingPartsWithTheWholeMeanGivesTheWholeBlocks) {
  // A sequence-parallel rank pools its part of the keys with the mean of all of them
  // (pool_key_blocks): the blocks of keys [512, 1000) equal blocks 8.. of the whole, bit for
  // bit, and the part's mean is left as given.
  const Cache c;
  HostKeyBlocks whole = c.blocks();
  check(build_key_blocks(c.k_at(1000), &whole.view()));
  TensorView tail = c.k_at(1000);
  tail.data = static_cast<char*>(tail.data) + 512 * tail.stride_token * 2;  // bf16 rows
  tail.tokens = 1000 - 512;
  HostKeyBlocks part(Cache::B, Cache::Hkv, Cache::D, 1000 - 512, 64);
  std::copy(whole.mean.begin(), whole.mean.end(), part.mean.begin());
  check(pool_key_blocks(tail, &part.view()));
  EXPECT_EQ(part.view().tokens, 1000 - 512);
  EXPECT_EQ(part.mean, whole.mean);
  const int64_t nb_part = part.view().max_blocks, nb_whole = whole.view().max_blocks;
  for (int64_t bh = 0; bh < Cache::B * Cache::Hkv; ++bh)
    for (int64_t j = 0; j < nb_part; ++j) {
      EXPECT_EQ(part.sim[bh * nb_part + j], whole.sim[bh * nb_whole + 8 + j]);
      for (int64_t d = 0; d < Cache::D; ++d)
        EXPECT_EQ(part.pooled[(bh * Cache::D + d) * nb_part + j],
                  whole.pooled[(bh * Cache::D + d) * nb_whole + 8 + j]);
    }
  // With the part's own mean (build) the blocks differ: the mean matters.
  HostKeyBlocks own(Cache::B, Cache::Hkv, Cache::D, 1000 - 512, 64);
  check(build_key_blocks(tail, &own.view()));
  EXPECT_NE(own.pooled, part.pooled);
}

TEST(KeyBlocks, ErrorsNameTheArgument) {
  const Cache c;
  const HostTensor q = queries(3, 1);
  const SparseOptions o = decode_options(SelectMode::kTopK, 0.3f);
  HostTensor out = HostTensor::poisoned(Cache::B, Cache::Hq, 3, Cache::D, DType::kBFloat16,
                                        Layout::kNHD);
  const auto call = [&](const KeyBlocks& kb, const SparseOptions& opts, int64_t tokens = 400) {
    return sparse_attention(q.view, c.k_at(tokens), c.v_at(tokens), kb, opts, out.view).message();
  };
  const auto has = [](const std::string& message, const char* what) {
    return message.find(what) != std::string::npos;
  };
  HostKeyBlocks kb = c.blocks();
  EXPECT_TRUE(has(append_key_blocks(c.k_at(400), &kb.view()).message(), "build_key_blocks first"));
  check(build_key_blocks(c.k_at(400), &kb.view()));
  HostTensor ok_out = HostTensor::poisoned(Cache::B, Cache::Hq, 3, Cache::D, DType::kBFloat16,
                                           Layout::kNHD);
  EXPECT_TRUE(sparse_attention(q.view, c.k_at(400), c.v_at(400), kb.view(), o, ok_out.view).is_ok());
  EXPECT_TRUE(has(call(kb.view(), o, 450), "append_key_blocks after the cache grows"));
  SparseOptions other_block = o;
  other_block.block_k = 32;
  EXPECT_TRUE(has(call(kb.view(), other_block), "key_blocks.block_k (64) must equal"));
  SparseOptions sampled = o;
  sampled.estimate = EstimateMode::kSampledRows;
  EXPECT_TRUE(has(call(kb.view(), sampled), "pooled estimate only"));
  SparseOptions target = decode_options(SelectMode::kTopCdf, 0.9f);
  target.target_error = 0.05f;
  EXPECT_TRUE(has(call(kb.view(), target), "pooled estimate only"));
  EXPECT_TRUE(has(append_key_blocks(c.k_at(300), &kb.view()).message(),
                  "key_blocks.tokens (400) must be in [0, k.tokens = 300]"));
  KeyBlocks small = kb.view();
  small.max_blocks = 5;
  EXPECT_TRUE(has(call(small, o), "key_blocks hold up to 5 blocks of block_k 64 keys, k has 400"));
  {  // a cache shorter than the query
    const HostTensor long_q = queries(500, 2);
    HostTensor long_out = HostTensor::poisoned(Cache::B, Cache::Hq, 500, Cache::D,
                                               DType::kBFloat16, Layout::kNHD);
    EXPECT_TRUE(has(sparse_attention(long_q.view, c.k_at(400), c.v_at(400), kb.view(), o,
                                     long_out.view)
                        .message(),
                    "k (the cache, 400 keys) is shorter than q (500 rows)"));
  }
  KeyBlocks huge = kb.view();  // a capacity no array can have: rejected before any write
  huge.max_blocks = std::numeric_limits<int64_t>::max() / 4;
  EXPECT_TRUE(has(call(huge, o), "overflow int64"));
  EXPECT_TRUE(has(append_key_blocks(c.k_at(400), &huge).message(), "overflow int64"));
  KeyBlocks no_sim = kb.view();
  no_sim.sim = nullptr;
  EXPECT_TRUE(has(call(no_sim, o), "key_blocks.pooled, .sim and .mean must not be null"));
  KeyBlocks heads = kb.view();
  heads.heads_kv = 4;
  EXPECT_TRUE(has(call(heads, o), "must match k (batch 2, heads 2, head_dim 32)"));
  KeyBlocks gpu = kb.view();
  gpu.device = Device::kCUDA;
  EXPECT_TRUE(has(call(gpu, o), "key_blocks must be on k's device"));
  EXPECT_TRUE(has(build_key_blocks(c.k_at(400), nullptr).message(), "key_blocks must not be null"));
  EXPECT_THROW(HostKeyBlocks(1, 1, 8, 100, 0), Error);
  // Nothing was written by the rejected calls.
  EXPECT_TRUE(std::isnan(out.get(0, 0, 0, 0)));
}

using test::c_tensor;

TEST(KeyBlocks, ThroughTheCApi) {
  const Cache c;
  HostKeyBlocks storage = c.blocks(), want = c.blocks();
  const KeyBlocks& v = storage.view();
  sparge_key_blocks kb{};
  kb.pooled = v.pooled, kb.sim = v.sim, kb.mean = v.mean;
  kb.device = SPARGE_CPU;
  kb.batch = v.batch, kb.heads_kv = v.heads_kv, kb.head_dim = v.head_dim;
  kb.max_blocks = v.max_blocks, kb.block_k = v.block_k;
  char err[256] = {};
  const sparge_tensor k300 = c_tensor(c.k_at(300)), k700 = c_tensor(c.k_at(700));
  ASSERT_EQ(sparge_build_key_blocks(&k300, &kb, nullptr, err, sizeof(err)), 0) << err;
  EXPECT_EQ(kb.tokens, 300);
  ASSERT_EQ(sparge_append_key_blocks(&k700, &kb, nullptr, err, sizeof(err)), 0) << err;
  EXPECT_EQ(kb.tokens, 700);
  check(build_key_blocks(c.k_at(300), &want.view()));
  check(append_key_blocks(c.k_at(700), &want.view()));
  EXPECT_EQ(storage.pooled, want.pooled);
  EXPECT_EQ(storage.sim, want.sim);
  EXPECT_EQ(storage.mean, want.mean);

  const HostTensor q = queries(5, 3);
  HostTensor o = HostTensor::poisoned(Cache::B, Cache::Hq, 5, Cache::D, DType::kBFloat16,
                                      Layout::kNHD);
  const SparseOptions so = decode_options(SelectMode::kTopK, 0.3f);
  sparge_options co = sparge_default_options();
  co.causal = 1;
  co.causal_align = SPARGE_CAUSAL_BOTTOM_RIGHT;
  co.select = SPARGE_SELECT_TOPK;
  co.select_value = 0.3f;
  co.sim_threshold = 0.3f;
  co.pv_threshold = 6.0f;
  const sparge_tensor cq = c_tensor(q.view), cv = c_tensor(c.v_at(700)), co_t = c_tensor(o.view);
  ASSERT_EQ(sparge_sparse_attention_key_blocks(&cq, &k700, &cv, nullptr, &kb, &co, &co_t, nullptr,
                                               nullptr, 0, nullptr, nullptr, err, sizeof(err)),
            0)
      << err;
  const Call cpp = run(c, q, 700, so, &want.view());
  const std::vector<float> got = o.to_hnd();
  EXPECT_EQ(std::memcmp(got.data(), cpp.out.data(), got.size() * sizeof(float)), 0);
  co.block_k = 32;
  EXPECT_NE(sparge_sparse_attention_key_blocks(&cq, &k700, &cv, nullptr, &kb, &co, &co_t, nullptr,
                                               nullptr, 0, nullptr, nullptr, err, sizeof(err)),
            0);
  EXPECT_NE(std::string(err).find("key_blocks.block_k"), std::string::npos) << err;
  EXPECT_NE(sparge_build_key_blocks(&k300, nullptr, nullptr, err, sizeof(err)), 0);
  EXPECT_NE(std::string(err).find("key_blocks must not be NULL"), std::string::npos) << err;

  // Blocks pooled with a given mean, then Stage 1 from them alone with unread keys: the C++
  // calls' results.
  HostKeyBlocks given = c.blocks(), given_cpp = c.blocks();
  std::copy(want.mean.begin(), want.mean.end(), given.mean.begin());
  std::copy(want.mean.begin(), want.mean.end(), given_cpp.mean.begin());
  sparge_key_blocks gkb = kb;
  gkb.pooled = given.view().pooled, gkb.sim = given.view().sim, gkb.mean = given.view().mean;
  gkb.tokens = 0;
  ASSERT_EQ(sparge_pool_key_blocks(&k700, &gkb, nullptr, err, sizeof(err)), 0) << err;
  check(pool_key_blocks(c.k_at(700), &given_cpp.view()));
  EXPECT_EQ(gkb.tokens, 700);
  EXPECT_EQ(given.pooled, given_cpp.pooled);
  EXPECT_EQ(given.sim, given_cpp.sim);
  const BroadcastKeys unread;
  const sparge_tensor cu = c_tensor(unread.at(700));
  co.block_k = 64;
  HostBlockMask predicted(Cache::B, Cache::Hq, 5, 700, so.block_q, so.block_k);
  HostBlockMask expect(Cache::B, Cache::Hq, 5, 700, so.block_q, so.block_k);
  const sparge_block_mask cm = test::c_block_mask(predicted.view());
  ASSERT_EQ(sparge_predict_block_mask_key_blocks(&cq, &cu, nullptr, &gkb, &co, &cm, nullptr, 0,
                                                 nullptr, err, sizeof(err)),
            0)
      << err;
  check(predict_block_mask(q.view, unread.at(700), AttentionMask{}, given_cpp.view(), so,
                           expect.view()));
  EXPECT_EQ(predicted.to_dense(), expect.to_dense());
  EXPECT_NE(sparge_predict_block_mask_key_blocks(&cq, &cu, nullptr, nullptr, &co, &cm, nullptr,
                                                 0, nullptr, err, sizeof(err)),
            0);
  EXPECT_NE(std::string(err).find("key_blocks must not be NULL"), std::string::npos) << err;
}

}  // namespace
}  // namespace sparge
