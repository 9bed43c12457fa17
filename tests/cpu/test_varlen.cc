// sparse_attention_varlen (issue 14, item 4) on the CPU backends: a packed batch of sequences of
// different lengths ([total, H, D], flash-attn's layout) gives, row for row and bit for bit,
// the outputs and Stage-1 statistics of separate sparse_attention calls on each sequence, with
// causality per sequence (both alignments, Nq != Nk), GQA, a sequence without queries, and the
// C ABI; bad cu_seqlens, batches and extras get errors naming the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "c_tensor.h"
#include "sparge/sparge.h"
#include "sparge/sparge_c.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::HostTensor;

std::vector<float> values(int64_t n, uint32_t seed) {
  std::vector<float> x(n);
  uint32_t s = seed * 2654435761u + 1u;
  for (auto& e : x) {
    s = s * 1664525u + 1013904223u;
    e = float(int32_t(s >> 8) % 2001 - 1000) / 500.0f;  // in [-2, 2], reproducible
  }
  return x;
}

// Logical [1, H, total, D] values of a packed tensor; `cu` cuts it into sequences.
struct Packed {
  int64_t H, D, total;
  std::vector<float> hnd;  // [H, total, D]
  // Sequence i's [H, n, D] values.
  std::vector<float> slice(const std::vector<int32_t>& cu, int64_t i) const {
    const int64_t first = cu[i], n = cu[i + 1] - cu[i];
    std::vector<float> out(H * n * D);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t d = 0; d < D; ++d) out[(h * n + t) * D + d] = hnd[(h * total + first + t) * D + d];
    return out;
  }
};

struct VarlenCase {
  std::vector<int32_t> cu_q, cu_k;
  int64_t Hq, Hkv, D;
  DType dtype;
  bool causal;
  CausalAlign align;
  Backend backend;
};

SparseOptions options_of(const VarlenCase& c) {
  SparseOptions o;
  o.causal = c.causal;
  o.causal_align = c.align;
  o.sim_threshold.value = -1.0f;  // every block similar: the selection decides, per sequence
  o.select_value.value = 0.5f;
  o.block_q = 32;
  o.block_k = 16;
  return o;
}

class Varlen : public ::testing::TestWithParam<VarlenCase> {};

TEST_P(Varlen, EqualsSeparateCallsBitForBit) {
  const VarlenCase& c = GetParam();
  const int64_t seqs = int64_t(c.cu_q.size()) - 1;
  const int64_t tq = c.cu_q.back(), tk = c.cu_k.back();
  const Packed q{c.Hq, c.D, tq, values(c.Hq * tq * c.D, 1)};
  const Packed k{c.Hkv, c.D, tk, values(c.Hkv * tk * c.D, 2)};
  const Packed v{c.Hkv, c.D, tk, values(c.Hkv * tk * c.D, 3)};
  HostTensor hq = HostTensor::make(q.hnd, 1, c.Hq, tq, c.D, c.dtype, Layout::kNHD);
  HostTensor hk = HostTensor::make(k.hnd, 1, c.Hkv, tk, c.D, c.dtype, Layout::kNHD);
  HostTensor hv = HostTensor::make(v.hnd, 1, c.Hkv, tk, c.D, c.dtype, Layout::kNHD);
  HostTensor ho = HostTensor::poisoned(1, c.Hq, tq, c.D, c.dtype, Layout::kNHD);
  const SparseOptions opts = options_of(c);
  ExecContext ctx;
  ctx.backend = c.backend;
  std::vector<float> select(seqs * c.Hq, -7.0f);
  std::vector<int64_t> forced(seqs * c.Hq, -7);
  AttentionExtras extras;
  extras.stage1.select_value = select.data();
  extras.stage1.forced_tiles = forced.data();
  const Status st = sparse_attention_varlen(hq.view, hk.view, hv.view, c.cu_q.data(), c.cu_k.data(), seqs,
                                            opts, ho.view, extras, ctx);
  ASSERT_TRUE(st.is_ok()) << st.message();
  const std::vector<float> packed_out = ho.to_hnd();  // [Hq, tq, D]
  ASSERT_FALSE(test::any_nan(packed_out)) << "every query row is written";

  int64_t tiles_kept = 0, tiles_dense = 0;
  for (int64_t i = 0; i < seqs; ++i) {
    const int64_t nq = c.cu_q[i + 1] - c.cu_q[i], nk = c.cu_k[i + 1] - c.cu_k[i];
    if (nq == 0) {
      for (int64_t h = 0; h < c.Hq; ++h) EXPECT_EQ(select[i * c.Hq + h], -7.0f) << "skipped sequence " << i;
      continue;
    }
    HostTensor sq = HostTensor::make(q.slice(c.cu_q, i), 1, c.Hq, nq, c.D, c.dtype, Layout::kHND);
    HostTensor sk = HostTensor::make(k.slice(c.cu_k, i), 1, c.Hkv, nk, c.D, c.dtype, Layout::kHND);
    HostTensor sv = HostTensor::make(v.slice(c.cu_k, i), 1, c.Hkv, nk, c.D, c.dtype, Layout::kHND);
    HostTensor so = HostTensor::poisoned(1, c.Hq, nq, c.D, c.dtype, Layout::kHND);
    std::vector<float> sel(c.Hq);
    std::vector<int64_t> frc(c.Hq);
    AttentionExtras e;
    e.stage1.select_value = sel.data();
    e.stage1.forced_tiles = frc.data();
    HostBlockMask mask(1, c.Hq, nq, nk, opts.block_q, opts.block_k);
    const Status s1 = sparse_attention(sq.view, sk.view, sv.view, opts, so.view, e, ctx, &mask.view());
    ASSERT_TRUE(s1.is_ok()) << s1.message();
    const AttentionStats ms = mask_stats(mask.view(), opts);
    tiles_kept += ms.tiles_computed;
    tiles_dense += ms.tiles_dense;
    const std::vector<float> ref = so.to_hnd();
    int64_t differ = 0;
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t t = 0; t < nq; ++t)
        for (int64_t d = 0; d < c.D; ++d) {
          const float got = packed_out[(h * tq + c.cu_q[i] + t) * c.D + d];
          const float want = ref[(h * nq + t) * c.D + d];
          differ += !(got == want || (std::isnan(got) && std::isnan(want)));
        }
    EXPECT_EQ(differ, 0) << "sequence " << i << ": elements that differ from the separate call";
    for (int64_t h = 0; h < c.Hq; ++h) {
      EXPECT_EQ(select[i * c.Hq + h], sel[h]) << "sequence " << i << " head " << h;
      EXPECT_EQ(forced[i * c.Hq + h], frc[h]) << "sequence " << i << " head " << h;
    }
  }
  EXPECT_GT(tiles_kept, 0);
  EXPECT_LT(tiles_kept, tiles_dense) << "Stage 1 must skip tiles for the comparison to test it";
}

const VarlenCase kVarlenCases[] = {
    // Lengths around the blocks (1, a partial block, several), Nq != Nk per sequence.
    {{0, 1, 8, 138, 438}, {0, 1, 20, 150, 350}, 4, 2, 64, DType::kFloat32, false, CausalAlign::kTopLeft,
     Backend::kCpuFast},
    {{0, 1, 8, 138, 438}, {0, 1, 20, 150, 350}, 4, 2, 64, DType::kBFloat16, true, CausalAlign::kBottomRight,
     Backend::kCpuFast},
    // A sequence without queries (skipped; its keys are never read), causal top-left, fp16.
    {{0, 100, 100, 233}, {0, 100, 157, 290}, 2, 1, 32, DType::kFloat16, true, CausalAlign::kTopLeft,
     Backend::kCpuFast},
    // The reference backend, one sequence: the same as a plain call.
    {{0, 77}, {0, 91}, 2, 2, 16, DType::kFloat32, false, CausalAlign::kTopLeft, Backend::kReference},
};
INSTANTIATE_TEST_SUITE_P(Packed, Varlen, ::testing::ValuesIn(kVarlenCases));

// The C ABI's entry gives the C++ entry's output.
TEST(VarlenCApi, MatchesTheCppEntry) {
  const std::vector<int32_t> cu_q{0, 5, 70}, cu_k{0, 40, 100};
  const int64_t H = 2, D = 16;
  HostTensor q = HostTensor::make(values(H * 70 * D, 4), 1, H, 70, D, DType::kFloat32, Layout::kNHD);
  HostTensor k = HostTensor::make(values(H * 100 * D, 5), 1, H, 100, D, DType::kFloat32, Layout::kNHD);
  HostTensor v = HostTensor::make(values(H * 100 * D, 6), 1, H, 100, D, DType::kFloat32, Layout::kNHD);
  HostTensor o_cpp = HostTensor::poisoned(1, H, 70, D, DType::kFloat32, Layout::kNHD);
  HostTensor o_c = HostTensor::poisoned(1, H, 70, D, DType::kFloat32, Layout::kNHD);
  SparseOptions opts;
  ASSERT_TRUE(sparse_attention_varlen(q.view, k.view, v.view, cu_q.data(), cu_k.data(), 2, opts, o_cpp.view).is_ok());

  using test::c_tensor;
  const sparge_tensor cq = c_tensor(q.view), ck = c_tensor(k.view), cv = c_tensor(v.view), co = c_tensor(o_c.view);
  std::vector<char> c_opts(sparge_options_size());
  sparge_options* copts = reinterpret_cast<sparge_options*>(c_opts.data());
  sparge_options_init(copts);
  char err[256] = {};
  ASSERT_EQ(sparge_sparse_attention_varlen(&cq, &ck, &cv, cu_q.data(), cu_k.data(), 2, copts, &co, nullptr, 0,
                                           nullptr, err, sizeof err), 0)
      << err;
  EXPECT_EQ(o_c.to_hnd(), o_cpp.to_hnd());
  // An error comes back as a code and a message naming the argument.
  const std::vector<int32_t> bad{0, 5, 71};
  EXPECT_NE(sparge_sparse_attention_varlen(&cq, &ck, &cv, bad.data(), cu_k.data(), 2, copts, &co, nullptr, 0,
                                           nullptr, err, sizeof err), 0);
  EXPECT_NE(std::string(err).find("cu_seqlens_q"), std::string::npos) << err;
}

// Each bad argument is refused with a message that names it.
TEST(VarlenErrors, NameTheArgument) {
  const int64_t H = 2, D = 16;
  HostTensor q = HostTensor::make(values(H * 30 * D, 7), 1, H, 30, D, DType::kFloat32, Layout::kNHD);
  HostTensor k = HostTensor::make(values(H * 40 * D, 8), 1, H, 40, D, DType::kFloat32, Layout::kNHD);
  HostTensor v = HostTensor::make(values(H * 40 * D, 9), 1, H, 40, D, DType::kFloat32, Layout::kNHD);
  HostTensor o = HostTensor::poisoned(1, H, 30, D, DType::kFloat32, Layout::kNHD);
  HostTensor q2 = HostTensor::make(values(2 * H * 15 * D, 7), 2, H, 15, D, DType::kFloat32, Layout::kNHD);
  const SparseOptions opts;
  const std::vector<int32_t> cu_q{0, 10, 30}, cu_k{0, 20, 40};
  struct Bad {
    const int32_t* cq;
    const int32_t* ck;
    int64_t seqs;
    const TensorView* qv;
    const char* names;
  };
  const std::vector<int32_t> not_zero{1, 10, 30}, decreasing{0, 20, 10, 30}, short_total{0, 10, 29},
      no_keys_q{0, 10, 30}, no_keys_k{0, 40, 40};
  const Bad cases[] = {
      {nullptr, cu_k.data(), 2, &q.view, "cu_seqlens_q"},
      {cu_q.data(), nullptr, 2, &q.view, "cu_seqlens_k"},
      {not_zero.data(), cu_k.data(), 2, &q.view, "cu_seqlens_q[0]"},
      {decreasing.data(), decreasing.data(), 3, &q.view, "nondecreasing"},
      {short_total.data(), cu_k.data(), 2, &q.view, "cu_seqlens_q[2]"},
      {no_keys_q.data(), no_keys_k.data(), 2, &q.view, "no key"},
      {cu_q.data(), cu_k.data(), 0, &q.view, "num_seqs"},
      {cu_q.data(), cu_k.data(), 2, &q2.view, "q.batch"},
  };
  for (const Bad& b : cases) {
    const Status st = sparse_attention_varlen(*b.qv, k.view, v.view, b.cq, b.ck, b.seqs, opts, o.view);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << b.names << ": " << st.message();
    EXPECT_NE(st.message().find(b.names), std::string::npos) << st.message();
  }
  std::vector<float> lse(H * 30);
  AttentionExtras with_lse;
  with_lse.lse = lse.data();
  const Status st = sparse_attention_varlen(q.view, k.view, v.view, cu_q.data(), cu_k.data(), 2, opts, o.view, with_lse);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.message();
  EXPECT_NE(st.message().find("extras.lse"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace sparge
