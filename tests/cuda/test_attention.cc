// GPU block-sparse attention against the CPU reference (double accumulation) on fresh inputs:
// odd lengths, Nq != Nk, GQA/MQA, causal in both alignments, head dims 64/128, HND/NHD,
// fp16/bf16, dense / random / empty-row masks; λ skip counters; determinism; rejections;
// NaN/Inf propagation (the cases of nan_cases.h, on whichever kernel SPARGE_CUDA_KERNEL picks);
// sliding windows (the banded instances) with masks that reach outside the window.
// Head dim 256 (sm90ws only): the same comparisons where that kernel runs, a refusal naming
// head_dim where another one does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "nan_cases.h"
#include "sparge/build_info.h"

namespace sparge::test {
namespace {

struct Case {
  int64_t B, Hq, Hkv, Nq, Nk, D;
  DType dtype;
  Layout layout;
  bool causal;
  CausalAlign align;
  double keep;      // fraction of allowed tiles kept (1 = dense)
  int empty_every;  // every n-th mask row empty (0 = none)
  float q_gain;     // > 1 sharpens the scores so that the λ rule skips tiles
  float lambda;
  // > 0: an attention sink. Channel 0 of every query and of the keys of block 0 is `sink`, and
  // 0 for every other key, so that block 0 dominates every row and, walked first, lets the λ
  // rule skip every later block for whole warpgroups at once.
  float sink = 0.0f;
  int window_left = -1, window_right = -1;  // sliding window (-1: no limit)
  // > 0: scores that climb with the key block. Channel 0 of every query is 4 and of key c is
  // key_ramp · ⌊c / 64⌋, so each later block's scores exceed the row's running max by about
  // 4 · key_ramp · scale · log2 e (log2 units): below the lazy rescale's 8 its base stays and P
  // grows past 1, above it the base moves mid-row.
  float key_ramp = 0.0f;
};

std::string name(const Case& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "B%ld_H%ld/%ld_Nq%ld_Nk%ld_D%ld_%s_%s_%s%s_keep%.2f", long(c.B),
                long(c.Hq), long(c.Hkv), long(c.Nq), long(c.Nk), long(c.D),
                c.dtype == DType::kBFloat16 ? "bf16" : "fp16", c.layout == Layout::kHND ? "HND" : "NHD",
                c.causal ? "causal" : "full",
                c.causal ? (c.align == CausalAlign::kTopLeft ? "TL" : "BR") : "", c.keep);
  std::string s = buf;
  if (c.window_left >= 0 || c.window_right >= 0)
    s += "_window" + std::to_string(c.window_left) + "," + std::to_string(c.window_right) +
         (c.align == CausalAlign::kTopLeft ? "TL" : "BR");
  return s;
}

struct Result {
  Status status = Status::ok();  // of the GPU call
  double rel_l1 = 0, lse_max_err = 0;
  unsigned long long gpu_counters[2] = {0, 0}, ref_counters[2] = {0, 0};
  std::vector<float> out;
};

// Runs the case on the GPU and, when the GPU ran it, on the CPU reference with the same mask and
// options. A GPU call that fails is a test failure unless `gpu_may_refuse` (then the caller checks
// Result::status).
Result run_case(const Case& c, uint64_t seed, bool gpu_may_refuse = false) {
  Result res;
  SparseOptions opts;
  opts.causal = c.causal;
  opts.causal_align = c.align;
  opts.pv_threshold.value = c.lambda;
  opts.window_left = c.window_left;
  opts.window_right = c.window_right;
  const int64_t pad = 3;  // extra token rows: non-trivial strides
  std::vector<float> qv = gaussian(c.B * c.Hq * c.Nq * c.D, seed, c.q_gain);
  std::vector<float> kv = gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 1);
  if (c.sink > 0) {  // both in HND order: row r of a (batch, head) plane starts at r·D
    for (size_t i = 0; i < qv.size(); i += c.D) qv[i] = c.sink;
    for (size_t i = 0; i < kv.size(); i += c.D) kv[i] = (i / c.D) % c.Nk < 64 ? c.sink : 0.0f;
  }
  if (c.key_ramp > 0) {
    for (size_t i = 0; i < qv.size(); i += c.D) qv[i] = 4.0f;
    for (size_t i = 0; i < kv.size(); i += c.D) kv[i] = c.key_ramp * float((i / c.D) % c.Nk / 64);
  }
  HostTensor q = HostTensor::make(qv, c.B, c.Hq, c.Nq, c.D, c.dtype, c.layout, pad);
  HostTensor k = HostTensor::make(kv, c.B, c.Hkv, c.Nk, c.D, c.dtype, c.layout, pad);
  HostTensor v = HostTensor::make(gaussian(c.B * c.Hkv * c.Nk * c.D, seed + 2), c.B, c.Hkv, c.Nk, c.D,
                                  c.dtype, c.layout, pad);
  HostBlockMask hmask = random_mask(c.B, c.Hq, c.Nq, c.Nk, c.causal, c.align, c.keep, c.empty_every, seed);

  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k), dv = DeviceTensor::upload(v);
  // Padded like the inputs: the sm90ws kernel stores O with the TMA, whose tensor map must stop
  // at Nq (the padding rows stay NaN).
  DeviceTensor dout =
      DeviceTensor::upload(HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, c.dtype, c.layout, pad));
  DeviceMask dmask = DeviceMask::upload(hmask);
  DeviceBuffer dlse(sizeof(float) * c.B * c.Hq * c.Nq), dcounters(sizeof(unsigned long long) * 2 * c.Hq);
  cudaMemset(dlse.get(), 0xff, dlse.bytes());  // NaN
  cudaMemset(dcounters.get(), 0, dcounters.bytes());
  AttentionExtras extras{static_cast<float*>(dlse.get()), static_cast<unsigned long long*>(dcounters.get())};
  res.status = block_sparse_attention(dq.view, dk.view, dv.view, dmask.mask, opts, dout.view, extras);
  if (!gpu_may_refuse) EXPECT_TRUE(res.status.is_ok()) << res.status.message();
  if (!res.status.is_ok()) {
    res.rel_l1 = res.lse_max_err = INFINITY;
    return res;
  }

  // Reference (while the GPU runs): fp32 copies of the rounded inputs, fp32 output.
  HostTensor q32 = as_fp32(q), k32 = as_fp32(k), v32 = as_fp32(v);
  HostTensor o32 = HostTensor::poisoned(c.B, c.Hq, c.Nq, c.D, DType::kFloat32, Layout::kHND);
  std::vector<float> ref_lse(c.B * c.Hq * c.Nq, NAN);
  ExecContext ref_ctx;
  ref_ctx.backend = Backend::kReference;
  std::vector<unsigned long long> ref_counters(2 * c.Hq, 0);  // per query head
  AttentionExtras ref_extras{ref_lse.data(), ref_counters.data()};
  const Status st = block_sparse_attention(q32.view, k32.view, v32.view, hmask.view(), opts, o32.view,
                                           ref_extras, ref_ctx);
  EXPECT_TRUE(st.is_ok()) << st.message();
  for (int64_t h = 0; h < c.Hq; ++h) {
    res.ref_counters[0] += ref_counters[2 * h];
    res.ref_counters[1] += ref_counters[2 * h + 1];
  }

  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  res.out = dout.download();
  EXPECT_EQ(dout.host.padding_rows_written(pad), 0) << "O written past seq_q";
  res.rel_l1 = measure::rel_l1(res.out, o32.to_hnd());
  std::vector<float> lse(ref_lse.size());
  cudaMemcpy(lse.data(), dlse.get(), dlse.bytes(), cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < lse.size(); ++i) {
    const bool both_empty = std::isinf(lse[i]) && lse[i] < 0 && std::isinf(ref_lse[i]) && ref_lse[i] < 0;
    const double err = both_empty ? 0.0 : std::fabs(double(lse[i]) - ref_lse[i]);
    res.lse_max_err = std::isnan(err) ? INFINITY : std::max(res.lse_max_err, err);
  }
  std::vector<unsigned long long> counters(2 * c.Hq);
  cudaMemcpy(counters.data(), dcounters.get(), dcounters.bytes(), cudaMemcpyDeviceToHost);
  for (int64_t h = 0; h < c.Hq; ++h) {
    res.gpu_counters[0] += counters[2 * h];
    res.gpu_counters[1] += counters[2 * h + 1];
  }
  return res;
}

double tolerance(DType t) { return t == DType::kBFloat16 ? 5e-3 : 1e-3; }

class AttentionVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionVsReference, MatchesWithinDtypeTolerance) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  const Result r = run_case(c, 1000 + c.Nq * 7 + c.Nk);
  std::printf("[ attention ] %s rel_l1 %.2e lse_err %.2e\n", name(c).c_str(), r.rel_l1, r.lse_max_err);
  std::fflush(stdout);
  EXPECT_LE(r.rel_l1, tolerance(c.dtype)) << name(c);
  EXPECT_LE(r.lse_max_err, 2e-2) << name(c);
  // λ = inf: only groups that causality masks entirely in a tile skip; counts are exact.
  EXPECT_EQ(r.gpu_counters[0], r.ref_counters[0]);
  EXPECT_EQ(r.gpu_counters[1], r.ref_counters[1]);
  if (!c.causal && c.window_left < 0 && c.window_right < 0) EXPECT_EQ(r.gpu_counters[1], 0u);
}

const Case kCases[] = {
    {1, 1, 1, 1, 1, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
    {1, 2, 2, 17, 17, 128, DType::kFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
    {2, 4, 2, 129, 1000, 64, DType::kBFloat16, Layout::kHND, true, CausalAlign::kBottomRight, 1.0, 0, 1, INFINITY},
    {1, 4, 4, 1000, 129, 128, DType::kFloat16, Layout::kHND, true, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
    {1, 2, 1, 1000, 129, 64, DType::kBFloat16, Layout::kNHD, true, CausalAlign::kBottomRight, 1.0, 0, 1, INFINITY},
    {1, 4, 1, 1000, 1000, 128, DType::kBFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, 0.5, 0, 1, INFINITY},
    {1, 3, 3, 257, 1000, 64, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight, 0.5, 3, 1, INFINITY},
    {1, 2, 1, 1000, 1000, 128, DType::kFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, 0.6, 4, 1, INFINITY},
    {1, 2, 2, 129, 17, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
};
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionVsReference, ::testing::ValuesIn(kCases));

// Sliding windows (the banded instances): the masks are random over the causal region only, so
// kept tiles can lie wholly or partly outside the window; the kernel must mask them element by
// element and count the hidden groups as skipped, exactly as the reference does.
const Case kWindowCases[] = {
    {1, 4, 2, 1000, 1000, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY, 0, 300, -1},
    {1, 2, 1, 1000, 1000, 64, DType::kFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, 0.7, 5, 1, INFINITY, 0, 512, -1},
    {2, 3, 3, 257, 1000, 64, DType::kBFloat16, Layout::kHND, false, CausalAlign::kBottomRight, 1.0, 0, 1, INFINITY, 0, 100, 50},
    {1, 2, 2, 1000, 129, 128, DType::kFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY, 0, 0, 0},
    {1, 2, 2, 333, 333, 128, DType::kBFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY, 0, -1, 37},
    {1, 2, 1, 500, 500, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, 1.0, 0, 4, 6.0f, 0, 200, -1},
};
INSTANTIATE_TEST_SUITE_P(Window, AttentionVsReference, ::testing::ValuesIn(kWindowCases));

// ---- head dim 256: only the sm90ws kernel has it (tools/gen_instances.py) -------------------
// Whether this process runs d256: where sm90ws runs, except SPARGE_FAST_BUILD (no d256).
bool d256_runs() { return sm90ws_runs() && !SPARGE_FAST_BUILD; }

// Elsewhere the call must be refused, naming the argument (a pass there would be silent).
void expect_d256_refused(const Status& st) {
  EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.message();
  EXPECT_NE(st.message().find("head_dim 256"), std::string::npos) << st.message();
}

class AttentionD256 : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionD256, MatchesTheReferenceOnSm90wsAndIsRefusedElsewhere) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  const bool runs = d256_runs();
  const Result r = run_case(c, 2000 + c.Nq * 7 + c.Nk, /*gpu_may_refuse=*/!runs);
  if (!runs) {
    std::printf("[ d256 ] %s refused: %s\n", name(c).c_str(), r.status.message().c_str());
    std::fflush(stdout);
    expect_d256_refused(r.status);
    return;
  }
  std::printf("[ d256 ] %s rel_l1 %.2e lse_err %.2e visited %llu/%llu skipped %llu/%llu (gpu/ref)\n",
              name(c).c_str(), r.rel_l1, r.lse_max_err, r.gpu_counters[0], r.ref_counters[0],
              r.gpu_counters[1], r.ref_counters[1]);
  std::fflush(stdout);
  EXPECT_LE(r.rel_l1, tolerance(c.dtype)) << name(c);
  EXPECT_LE(r.lse_max_err, 2e-2) << name(c);
  EXPECT_FALSE(any_nan(r.out)) << name(c);
  EXPECT_EQ(r.gpu_counters[0], r.ref_counters[0]) << name(c);
  if (c.lambda == INFINITY) {
    EXPECT_EQ(r.gpu_counters[1], r.ref_counters[1]) << name(c);
  } else {
    // Decisions sit on fp32 vs double scores: a few near-threshold groups may differ.
    ASSERT_GT(r.ref_counters[1], 0u) << "the case must exercise skipping: " << name(c);
    const double diff = std::fabs(double(r.gpu_counters[1]) - double(r.ref_counters[1]));
    EXPECT_LE(diff, 0.01 * double(r.ref_counters[1]) + 2) << name(c);
  }
}

// One 64-key block per turn and 4 TMA boxes of 64 channels per block: odd lengths (short last
// query block, tail keys), GQA, causal in both alignments, fp16 and bf16, HND and NHD, random
// masks with empty rows, a finite λ on sharp scores, and an attention sink (every warp of a
// warpgroup skips whole turns).
const Case kD256Cases[] = {
    {1, 2, 1, 333, 517, 256, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
    {1, 4, 2, 1000, 129, 256, DType::kFloat16, Layout::kNHD, true, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY},
    {2, 2, 2, 129, 1000, 256, DType::kBFloat16, Layout::kNHD, true, CausalAlign::kBottomRight, 1.0, 0, 1, INFINITY},
    {1, 3, 3, 257, 700, 256, DType::kFloat16, Layout::kHND, true, CausalAlign::kBottomRight, 0.5, 3, 1, INFINITY},
    {1, 2, 1, 1000, 1000, 256, DType::kBFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, 0.6, 0, 1, INFINITY},
    {1, 4, 2, 1000, 1000, 256, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, 0.8, 0, 3.0f, 6.0f},
    {1, 2, 1, 333, 2000, 256, DType::kFloat16, Layout::kNHD, false, CausalAlign::kTopLeft, 0.7, 0, 1.0f, 8.0f,
     16.0f},
    {1, 2, 1, 700, 700, 256, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft, 1.0, 0, 1, INFINITY,
     0, 200, -1},
};
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionD256, ::testing::ValuesIn(kD256Cases));

// A stride the TMA cannot address (>= 2^40 bytes): d128 falls back to the sm90 kernel, d256 has
// none and is refused by sm90ws (or, where sm90ws does not run, by dispatch). Nothing is launched,
// so the views may reach past the buffer.
TEST(AttentionD256Errors, StrideTheTmaCannotAddressIsRefused) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t B = 2, N = 64, D = 256;
  DeviceBuffer buf(sizeof(uint16_t) * B * N * D), counts(64), indices(64);
  TensorView o = TensorView::contiguous(buf.get(), DType::kBFloat16, Layout::kHND, B, 1, N, D,
                                        Device::kCUDA);
  TensorView far = o;
  far.stride_batch = int64_t(1) << 39;  // elements: 2^40 bytes
  far.capacity = -1;  // an allocation that large is the caller's claim, not the test buffer's
  BlockMask m;
  m.counts = static_cast<int32_t*>(counts.get());
  m.indices = static_cast<int32_t*>(indices.get());
  m.device = Device::kCUDA;
  m.batch = B;
  m.heads = 1;
  m.seq_q = m.seq_k = N;
  const Status st = block_sparse_attention(far, far, far, m, SparseOptions{}, o);
  std::printf("[ d256 ] stride 2^40 bytes: %s\n", st.message().c_str());
  expect_d256_refused(st);
  if (d256_runs()) EXPECT_NE(st.message().find("TMA"), std::string::npos) << st.message();
}

// Sharp scores with a finite λ: tiles are skipped; the GPU follows the same rule per 16 rows.
TEST(AttentionPvSkip, CountersAndOutputFollowTheReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case c{1, 4, 2, 1000, 1000, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kTopLeft,
               1.0, 0, 3.0f, 6.0f};
  const Result r = run_case(c, 77);
  std::printf("[ pv skip ] visited %llu/%llu skipped %llu/%llu (gpu/ref) rel_l1 %.2e\n",
              r.gpu_counters[0], r.ref_counters[0], r.gpu_counters[1], r.ref_counters[1], r.rel_l1);
  std::fflush(stdout);
  EXPECT_EQ(r.gpu_counters[0], r.ref_counters[0]);
  ASSERT_GT(r.ref_counters[1], 0u) << "the case must exercise skipping";
  // Decisions sit on fp32 vs double scores: allow a few near-threshold groups to differ.
  const double diff = std::fabs(double(r.gpu_counters[1]) - double(r.ref_counters[1]));
  EXPECT_LE(diff, 0.01 * double(r.ref_counters[1]) + 2);
  EXPECT_LE(r.rel_l1, tolerance(c.dtype));
}

// An attention sink: block 0 dominates every row, so after it the λ rule skips every block for
// every warp, and the sm90ws kernel leaves out whole turns of P·V (its other path). Head dims 64
// (three blocks per turn) and 128 (two), odd lengths (a short last turn, a half-empty last query
// block), causal and not, GQA.
TEST(AttentionPvSkip, WholeWarpgroupSkipsFollowTheReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {1, 4, 2, 1000, 1000, 128, DType::kBFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0,
       0, 1.0f, 8.0f, 12.0f},
      {1, 2, 2, 777, 1357, 64, DType::kFloat16, Layout::kNHD, true, CausalAlign::kBottomRight, 1.0,
       0, 1.0f, 8.0f, 12.0f},
      {1, 2, 1, 333, 2000, 128, DType::kFloat16, Layout::kHND, false, CausalAlign::kTopLeft, 1.0,
       0, 1.0f, 8.0f, 12.0f},
  };
  for (const Case& c : cases) {
    const Result r = run_case(c, 31);
    std::printf("[ pv skip ] %s sink: visited %llu/%llu skipped %llu/%llu (gpu/ref) rel_l1 %.2e\n",
                name(c).c_str(), r.gpu_counters[0], r.ref_counters[0], r.gpu_counters[1],
                r.ref_counters[1], r.rel_l1);
    std::fflush(stdout);
    EXPECT_EQ(r.gpu_counters[0], r.ref_counters[0]) << name(c);
    // Nearly every (warp, block) pair but those of block 0 is skipped.
    EXPECT_GT(double(r.ref_counters[1]), 0.8 * double(r.ref_counters[0])) << name(c);
    const double diff = std::fabs(double(r.gpu_counters[1]) - double(r.ref_counters[1]));
    EXPECT_LE(diff, 0.01 * double(r.ref_counters[1]) + 2) << name(c);
    EXPECT_LE(r.rel_l1, tolerance(c.dtype)) << name(c);
    EXPECT_FALSE(any_nan(r.out)) << name(c);
  }
}

// Scores that climb block after block, so the running max moves on every turn: by ~2.3 log2
// units per block (the lazy rescale at d128 / d256 keeps its base, P reaches ~2^7 before the
// base moves) and by ~12 (the base moves mid-row on every turn). Dense, λ off, both dtypes, odd
// lengths; d256 only where the sm90ws kernel runs.
TEST(AttentionLazyRescale, ClimbingScoresMatchTheReference) {
  SPARGE_SKIP_WITHOUT_GPU();
  for (const float ramp : {4.5f, 24.0f})
    for (const int64_t D : {64, 128, 256}) {
      Case c{1, 2, 2, 300, 1000, D, D == 128 ? DType::kBFloat16 : DType::kFloat16, Layout::kHND,
             false, CausalAlign::kTopLeft, 1.0, 0, 1.0f, INFINITY};
      c.key_ramp = ramp * std::sqrt(float(D) / 128.0f);  // the same log2 step at every head dim
      const Result r = run_case(c, 41, /*gpu_may_refuse=*/D == 256);
      if (D == 256 && !r.status.is_ok()) {
        expect_d256_refused(r.status);
        continue;
      }
      std::printf("[ lazy rescale ] %s ramp %.1f: rel_l1 %.2e, lse err %.2e\n", name(c).c_str(), c.key_ramp,
                  r.rel_l1, r.lse_max_err);
      std::fflush(stdout);
      EXPECT_LE(r.rel_l1, tolerance(c.dtype)) << name(c);
      EXPECT_LE(r.lse_max_err, 2e-2) << name(c);
      EXPECT_FALSE(any_nan(r.out)) << name(c);
    }
}

TEST(AttentionDeterminism, RepeatedRunsAreBitIdentical) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case c{1, 2, 2, 300, 700, 128, DType::kBFloat16, Layout::kHND, true, CausalAlign::kBottomRight,
               0.7, 0, 1.0f, 4.0f};
  const Result a = run_case(c, 5), b = run_case(c, 5);
  ASSERT_EQ(a.out.size(), b.out.size());
  EXPECT_FALSE(any_nan(a.out));
  EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)));
  EXPECT_EQ(a.gpu_counters[1], b.gpu_counters[1]);
}

TEST(AttentionEmptyRows, WriteZerosAndMinusInfLse) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case c{1, 2, 2, 300, 300, 64, DType::kFloat16, Layout::kHND, false, CausalAlign::kTopLeft,
               1.0, 1, 1.0f, INFINITY};  // every row empty
  const Result r = run_case(c, 9);
  ASSERT_EQ(r.out.size(), size_t(c.B * c.Hq * c.Nq * c.D));
  for (float x : r.out) ASSERT_EQ(x, 0.0f);
  EXPECT_EQ(r.lse_max_err, 0.0);
  EXPECT_EQ(r.gpu_counters[0], 0u);
}

// The NaN/Inf cases of nan_cases.h on the GPU, bf16: Stage 2 with the given mask, or Stage 1 + 2
// from the workspace when none is given.
nan::Outcome run_nan_gpu(const nan::Problem& p, const HostBlockMask* mask) {
  nan::Outcome out;
  const HostTensor q = HostTensor::make(p.q, p.B, p.Hq, p.Nq, p.D, DType::kBFloat16, Layout::kHND);
  const HostTensor k = HostTensor::make(p.k, p.B, p.Hkv, p.Nk, p.D, DType::kBFloat16, Layout::kHND);
  const HostTensor v = HostTensor::make(p.v, p.B, p.Hkv, p.Nk, p.D, DType::kBFloat16, Layout::kHND);
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k),
               dv = DeviceTensor::upload(v);
  DeviceTensor dout = DeviceTensor::upload(
      HostTensor::poisoned(p.B, p.Hq, p.Nq, p.D, DType::kBFloat16, Layout::kHND));
  DeviceBuffer dlse(sizeof(float) * p.B * p.Hq * p.Nq);
  cudaMemset(dlse.get(), 0xff, dlse.bytes());  // NaN
  AttentionExtras extras{static_cast<float*>(dlse.get()), nullptr};
  DeviceMask dmask;
  if (mask != nullptr) {
    out.mask = *mask;
    dmask = DeviceMask::upload(*mask);
    out.status =
        block_sparse_attention(dq.view, dk.view, dv.view, dmask.mask, p.opts, dout.view, extras);
  } else {
    dmask = DeviceMask::like(
        HostBlockMask(p.B, p.Hq, p.Nq, p.Nk, p.opts.block_q, p.opts.block_k).view());
    const std::size_t ws_bytes =
        workspace_size(problem_shape(q.view, k.view), p.opts, Device::kCUDA);
    DeviceBuffer ws(ws_bytes);
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = ws_bytes;
    out.status =
        sparse_attention(dq.view, dk.view, dv.view, p.opts, dout.view, extras, ctx, &dmask.mask);
    if (cudaDeviceSynchronize() != cudaSuccess) out.status = Status::internal("CUDA error");
    out.mask = dmask.download();
  }
  if (cudaDeviceSynchronize() != cudaSuccess && out.status.is_ok())
    out.status = Status::internal("CUDA error");
  out.o = dout.download();
  out.lse.resize(p.B * p.Hq * p.Nq);
  cudaMemcpy(out.lse.data(), dlse.get(), dlse.bytes(), cudaMemcpyDeviceToHost);
  return out;
}

TEST(AttentionNan, QRowGivesThatRowNaN) {
  SPARGE_SKIP_WITHOUT_GPU();
  nan::q_row_cases(run_nan_gpu);
}
TEST(AttentionNan, KRowGivesTheRowsThatSeeItNaN) {
  SPARGE_SKIP_WITHOUT_GPU();
  nan::k_row_cases(run_nan_gpu);
}
TEST(AttentionNan, VRowGivesOneNaNChannel) {
  SPARGE_SKIP_WITHOUT_GPU();
  nan::v_row_cases(run_nan_gpu);
}
TEST(AttentionNan, RowsWithoutKeysStayZero) {
  SPARGE_SKIP_WITHOUT_GPU();
  nan::keyless_row_cases(run_nan_gpu);
}
TEST(AttentionNan, PredictedMaskKeepsNaNBlocks) {
  SPARGE_SKIP_WITHOUT_GPU();
  nan::predicted_cases(run_nan_gpu);
}

// Rejections name the field and the supported value.
TEST(AttentionErrors, UnsupportedRequestsAreRejected) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t N = 64, D = 64;
  DeviceBuffer buf(sizeof(float) * N * D * 4);
  TensorView t = TensorView::contiguous(buf.get(), DType::kBFloat16, Layout::kHND, 1, 1, N, D, Device::kCUDA);
  DeviceBuffer counts(64), indices(64);
  BlockMask m;
  m.counts = static_cast<int32_t*>(counts.get());
  m.indices = static_cast<int32_t*>(indices.get());
  m.device = Device::kCUDA;
  m.batch = m.heads = 1;
  m.seq_q = m.seq_k = N;
  SparseOptions opts;
  opts.block_q = m.block_q = 64;
  Status st = block_sparse_attention(t, t, t, m, opts, t);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("block_q 64"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("block_q 128"), std::string::npos) << st.message();

  opts.block_q = m.block_q = 128;
  TensorView f32 = TensorView::contiguous(buf.get(), DType::kFloat32, Layout::kHND, 1, 1, N, D, Device::kCUDA);
  st = block_sparse_attention(f32, f32, f32, m, opts, f32);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("float32"), std::string::npos) << st.message();

  TensorView d96 = TensorView::contiguous(buf.get(), DType::kBFloat16, Layout::kHND, 1, 1, N, 96, Device::kCUDA);
  st = block_sparse_attention(d96, d96, d96, m, opts, d96);
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("q.head_dim must be 64 or 128 on cuda, or 256 on sm_90 (sm90ws kernel), got 96"),
            std::string::npos)
      << st.message();

  // A kernel override that names no kernel is an error naming the variable, not a silent default.
  const char* saved = std::getenv("SPARGE_CUDA_KERNEL");
  const std::string restore = saved ? saved : "";
  setenv("SPARGE_CUDA_KERNEL", "sm70", 1);
  st = block_sparse_attention(t, t, t, m, opts, t);
  if (saved) setenv("SPARGE_CUDA_KERNEL", restore.c_str(), 1);
  else unsetenv("SPARGE_CUDA_KERNEL");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("SPARGE_CUDA_KERNEL must be auto, sm80, sm90, sm90ws or sm90ws-persistent, got 'sm70'"),
            std::string::npos)
      << st.message();
}

}  // namespace
}  // namespace sparge::test
