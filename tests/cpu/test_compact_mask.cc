// The compact BlockMask (row_offsets, issue 14 item 1) on the CPU backends: conversions to and
// from the padded form and CSR arrays, Stage 1 writing into it, Stage 2 and the statistics
// reading it give bit for bit what the padded form gives (rows with spare slots too), and bad
// offsets, counts and rows too small for Stage 1's output get errors naming the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "c_tensor.h"
#include "sparge/sparge.h"
#include "sparge/sparge_c.h"
#include "reference_cases.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::gaussian;
using test::HostTensor;

// A reproducible dense tile map with about `keep` of the tiles kept, some rows empty.
std::vector<uint8_t> random_tiles(int64_t n, double keep, uint32_t seed) {
  std::vector<uint8_t> d(n);
  uint32_t s = seed * 747796405u + 7u;
  for (auto& e : d) {
    s = s * 1664525u + 1013904223u;
    e = (s >> 8) % 1000 < keep * 1000;
  }
  return d;
}

HostBlockMask with_spare_slots(const HostBlockMask& compact, int64_t spare) {
  return test::with_spare_slots(compact, spare, -777);
}

TEST(CompactMask, ConversionsKeepTheTiles) {
  // [2, 3, 4 query blocks, 5 key blocks]: seq_q 100 / 32, seq_k 70 / 16.
  const std::vector<uint8_t> dense = random_tiles(2 * 3 * 4 * 5, 0.4, 1);
  const HostBlockMask padded = HostBlockMask::from_dense(dense, 2, 3, 100, 70, 32, 16);
  const HostBlockMask compact = padded.to_compact();
  ASSERT_TRUE(compact.view().compact());
  EXPECT_FALSE(padded.view().compact());
  const int64_t kept = std::accumulate(dense.begin(), dense.end(), int64_t{0});
  EXPECT_EQ(int64_t(compact.indices.size()), kept);  // memory grows with the kept tiles
  EXPECT_EQ(compact.row_offsets.back(), kept);
  EXPECT_EQ(compact.to_dense(), dense);
  EXPECT_EQ(compact.to_padded().to_dense(), dense);
  EXPECT_EQ(compact.to_padded().counts, padded.counts);
  EXPECT_EQ(compact.to_compact().indices, compact.indices);  // compact to compact: a copy
  EXPECT_EQ(with_spare_slots(compact, 3).to_dense(), dense);
  EXPECT_EQ(with_spare_slots(compact, 3).to_compact().indices, compact.indices);

  // From CSR arrays (FlashInfer's indptr + indices): the same mask.
  const HostBlockMask csr = HostBlockMask::from_csr(compact.row_offsets, compact.indices, 2, 3,
                                                    100, 70, 32, 16);
  EXPECT_EQ(csr.to_dense(), dense);
  EXPECT_EQ(csr.counts, padded.counts);

  // A copy points at its own storage.
  HostBlockMask copy = compact;
  EXPECT_EQ(copy.view().row_offsets, copy.row_offsets.data());
  EXPECT_EQ(copy.view().indices, copy.indices.data());
}

TEST(CompactMask, BadCsrGetsErrorsNamingWhat) {
  // One head, 2 query blocks, 3 key blocks.
  const auto error_of = [](std::vector<int64_t> indptr, std::vector<int32_t> indices) {
    try {
      HostBlockMask::from_csr(indptr, indices, 1, 1, 64, 48, 32, 16);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of({0, 1, 3}, {2, 0, 1}), "no error");
  EXPECT_NE(error_of({0, 1}, {0}).find("indptr must hold"), std::string::npos);
  EXPECT_NE(error_of({1, 1, 3}, {0, 0, 1}).find("row_offsets[0] must be 0"), std::string::npos);
  EXPECT_NE(error_of({0, 2, 1}, {0, 1}).find("nondecreasing"), std::string::npos);
  EXPECT_NE(error_of({0, 1, 3}, {0, 1}).find("ending at indices' size"), std::string::npos);
  EXPECT_NE(error_of({0, 1, 3}, {0, 2, 1}).find("strictly ascending"), std::string::npos);
  EXPECT_NE(error_of({0, 1, 3}, {3, 0, 1}).find("strictly ascending"), std::string::npos);
  EXPECT_NE(error_of({0, 4, 4}, {0, 1, 2, 2}).find("more than the 3"), std::string::npos);
}

struct Problem {
  int64_t B = 1, Hq = 4, Hkv = 2, Nq = 157, Nk = 203, D = 32;
  HostTensor q = HostTensor::make(gaussian(B * Hq * Nq * D, 11), B, Hq, Nq, D, DType::kBFloat16,
                                  Layout::kNHD);
  HostTensor k = HostTensor::make(gaussian(B * Hkv * Nk * D, 12), B, Hkv, Nk, D, DType::kBFloat16,
                                  Layout::kNHD);
  HostTensor v = HostTensor::make(gaussian(B * Hkv * Nk * D, 13), B, Hkv, Nk, D, DType::kBFloat16,
                                  Layout::kNHD);
  SparseOptions opts;
  Problem() {
    opts.causal = true;
    opts.causal_align = CausalAlign::kBottomRight;
    opts.block_q = 32;
    opts.block_k = 16;
    opts.sim_threshold.value = -1.0f;  // every block similar: the selection decides
    opts.select_value.value = 0.6f;
    opts.pv_threshold.value = 4.0f;    // the λ rule skips some groups: counters to compare
  }
  HostTensor poisoned_out() const {
    return HostTensor::poisoned(B, Hq, Nq, D, DType::kBFloat16, Layout::kNHD);
  }
  HostBlockMask empty_mask() const {
    return HostBlockMask(B, Hq, Nq, Nk, opts.block_q, opts.block_k);
  }
};

struct Result {
  std::vector<float> out, lse;
  std::vector<unsigned long long> counters;
};

Result stage2(const Problem& p, const BlockMask& mask, Backend backend) {
  HostTensor o = p.poisoned_out();
  Result r;
  r.lse.assign(p.B * p.Hq * p.Nq, NAN);
  r.counters.assign(p.Hq * 2, 0);
  AttentionExtras extras;
  extras.lse = r.lse.data();
  extras.pv_counters = r.counters.data();
  ExecContext ctx;
  ctx.backend = backend;
  check(block_sparse_attention(p.q.view, p.k.view, p.v.view, mask, p.opts, o.view, extras, ctx));
  r.out = o.to_hnd();
  return r;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(CompactMask, Stage2ReadsItAsThePaddedForm) {
  const Problem p;
  HostBlockMask padded = p.empty_mask();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, padded.view()));
  const AttentionStats dense_stats = mask_stats(padded.view(), p.opts);
  ASSERT_GT(dense_stats.sparsity(), 0.1);  // some tiles skipped, so the rows differ in length
  const HostBlockMask compact = padded.to_compact();
  const HostBlockMask spare = with_spare_slots(compact, 2);
  for (Backend backend : {Backend::kReference, Backend::kCpuFast}) {
    SCOPED_TRACE(enum_name(backend));
    const Result want = stage2(p, padded.view(), backend);
    EXPECT_FALSE(test::any_nan(want.out));
    for (const HostBlockMask* m : {&compact, &spare}) {
      const Result got = stage2(p, m->view(), backend);
      expect_same_bits(got.out, want.out);
      expect_same_bits(got.lse, want.lse);
      EXPECT_EQ(got.counters, want.counters);
    }
  }
  for (const HostBlockMask* m : {&compact, &spare}) {
    const AttentionStats s = mask_stats(m->view(), p.opts);
    EXPECT_EQ(s.tiles_dense, dense_stats.tiles_dense);
    EXPECT_EQ(s.tiles_computed, dense_stats.tiles_computed);
  }
}

TEST(CompactMask, Stage1WritesIntoIt) {
  const Problem p;
  HostBlockMask padded = p.empty_mask();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, padded.view()));
  const int64_t nk = padded.view().num_k_blocks();

  // Rows sized for any selection (num_k_blocks slots each): the tiles of the padded output.
  HostBlockMask roomy = padded.to_compact();
  for (size_t r = 0; r < roomy.row_offsets.size(); ++r) roomy.row_offsets[r] = int64_t(r) * nk;
  roomy.indices.assign(roomy.row_offsets.back(), -1);
  roomy.counts.assign(roomy.counts.size(), -1);
  roomy.mask.indices = roomy.indices.data();
  roomy.mask.counts = roomy.counts.data();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, roomy.view()));
  EXPECT_EQ(roomy.to_dense(), padded.to_dense());

  // Rows sized exactly (a known selection, as a caller sizing by a bound would): the same.
  HostBlockMask exact = padded.to_compact();
  std::fill(exact.indices.begin(), exact.indices.end(), -1);
  check(predict_block_mask(p.q.view, p.k.view, p.opts, exact.view()));
  EXPECT_EQ(exact.indices, padded.to_compact().indices);

  // sparse_attention's mask_out, and its output, equal the padded mask's.
  HostTensor o_padded = p.poisoned_out(), o_compact = p.poisoned_out();
  HostBlockMask out_padded = p.empty_mask();
  check(sparse_attention(p.q.view, p.k.view, p.v.view, p.opts, o_padded.view, {}, {},
                         &out_padded.view()));
  std::fill(roomy.indices.begin(), roomy.indices.end(), -1);
  check(sparse_attention(p.q.view, p.k.view, p.v.view, p.opts, o_compact.view, {}, {},
                         &roomy.view()));
  EXPECT_EQ(roomy.to_dense(), out_padded.to_dense());
  expect_same_bits(o_compact.to_hnd(), o_padded.to_hnd());

  // fill_dense_mask writes the compact form too.
  SparseOptions causal = p.opts;
  HostBlockMask dense_padded = p.empty_mask();
  check(fill_dense_mask(dense_padded.view(), causal));
  std::fill(roomy.indices.begin(), roomy.indices.end(), -1);
  check(fill_dense_mask(roomy.view(), causal));
  EXPECT_EQ(roomy.to_dense(), dense_padded.to_dense());
}

TEST(CompactMask, RowsTooSmallForStage1AreNamed) {
  const Problem p;
  HostBlockMask padded = p.empty_mask();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, padded.view()));
  HostBlockMask tight = padded.to_compact();
  // Take one slot from the first row that keeps two or more blocks, give it to the next row.
  int64_t row = 0;
  while (tight.counts[row] < 2) ++row;
  tight.row_offsets[row + 1] -= 1;
  const Status s = predict_block_mask(p.q.view, p.k.view, p.opts, tight.view());
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("mask.row_offsets give row " + std::to_string(row) + " "),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("to_compact"), std::string::npos) << s.message();
  EXPECT_FALSE(fill_dense_mask(tight.view(), p.opts).is_ok());
}

TEST(CompactMask, BadOffsetsAndCountsAreRejected) {
  const Problem p;
  HostBlockMask padded = p.empty_mask();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, padded.view()));
  const auto message = [&](const HostBlockMask& m) {
    HostTensor o = p.poisoned_out();
    const Status s = block_sparse_attention(p.q.view, p.k.view, p.v.view, m.view(), p.opts,
                                            o.view, {}, {});
    EXPECT_FALSE(s.is_ok());
    // Nothing written on a rejected call.
    EXPECT_TRUE(std::isnan(o.get(0, 0, 0, 0)));
    return s.message();
  };
  HostBlockMask m = padded.to_compact();
  m.row_offsets[0] = 1;
  EXPECT_NE(message(m).find("mask.row_offsets[0] must be 0"), std::string::npos);
  m = padded.to_compact();
  m.row_offsets[2] = m.row_offsets[1] - 1;
  EXPECT_NE(message(m).find("mask.row_offsets must be nondecreasing"), std::string::npos);
  m = padded.to_compact();
  int64_t row = 0;
  while (m.counts[row] < 1) ++row;
  m.counts[row] += 1;  // more than the row's slots (the next row's first index would be read)
  EXPECT_NE(message(m).find("must not exceed the"), std::string::npos);
  // The predict call validates the offsets of an output mask before writing through them.
  m = padded.to_compact();
  m.row_offsets[1] = -4;
  const Status s = predict_block_mask(p.q.view, p.k.view, p.opts, m.view());
  EXPECT_NE(s.message().find("nondecreasing"), std::string::npos) << s.message();
  // Statistics of a mask with bad offsets count nothing rather than read outside it.
  EXPECT_EQ(mask_stats(m.view(), p.opts).tiles_computed, 0);
}

TEST(CompactMask, ThroughTheCApi) {
  const Problem p;
  HostBlockMask padded = p.empty_mask();
  check(predict_block_mask(p.q.view, p.k.view, p.opts, padded.view()));
  HostBlockMask compact = padded.to_compact();
  const Result want = stage2(p, padded.view(), Backend::kCpuFast);

  const auto to_c = test::c_tensor;
  const BlockMask& m = compact.view();
  sparge_block_mask cm{};
  cm.counts = m.counts;
  cm.indices = m.indices;
  cm.device = SPARGE_CPU;
  cm.batch = m.batch, cm.heads = m.heads, cm.seq_q = m.seq_q, cm.seq_k = m.seq_k;
  cm.block_q = m.block_q, cm.block_k = m.block_k;
  cm.row_offsets = m.row_offsets;
  sparge_options co = sparge_default_options();
  co.causal = 1;
  co.causal_align = SPARGE_CAUSAL_BOTTOM_RIGHT;
  co.block_q = 32;
  co.block_k = 16;
  co.sim_threshold = -1.0f;
  co.select_value = 0.6f;
  co.pv_threshold = 4.0f;
  HostTensor o = p.poisoned_out();
  const sparge_tensor cq = to_c(p.q.view), ck = to_c(p.k.view), cv = to_c(p.v.view),
                      cout = to_c(o.view);
  char err[256] = {};
  ASSERT_EQ(sparge_block_sparse_attention(&cq, &ck, &cv, &cm, &co, &cout, nullptr, nullptr, 0,
                                          nullptr, err, sizeof(err)),
            0)
      << err;
  expect_same_bits(o.to_hnd(), want.out);
  cm.row_offsets[0] = 3;
  EXPECT_NE(sparge_block_sparse_attention(&cq, &ck, &cv, &cm, &co, &cout, nullptr, nullptr, 0,
                                          nullptr, err, sizeof(err)),
            0);
  EXPECT_NE(std::string(err).find("mask.row_offsets[0]"), std::string::npos) << err;
}

}  // namespace
}  // namespace sparge
