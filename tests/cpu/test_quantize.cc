// Number formats (int8, e4m3, fp16, bf16) and the quantized attention mode of the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "common/backend.h"
#include "common/fp_convert.h"
#include "cpu/quantize.h"
#include "cpu/reference.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {
namespace {

using cpu::quantize_int8;
using detail::e4m3_bits_to_float;
using detail::float_to_e4m3_bits;

TEST(QuantizeInt8, RoundTripsEveryCode) {
  for (const float scale : {1.0f, 0.125f, 3.0f}) {
    for (int code = -127; code <= 127; ++code)
      ASSERT_EQ(quantize_int8(code * scale, scale), code) << "scale " << scale;
  }
}

TEST(QuantizeInt8, TiesRoundHalfAwayFromZero) {
  EXPECT_EQ(quantize_int8(2.5f, 1.0f), 3);
  EXPECT_EQ(quantize_int8(-2.5f, 1.0f), -3);
  EXPECT_EQ(quantize_int8(0.5f, 1.0f), 1);
  EXPECT_EQ(quantize_int8(-0.5f, 1.0f), -1);
  EXPECT_EQ(quantize_int8(1.5f, 1.0f), 2);
  EXPECT_EQ(quantize_int8(0.49f, 1.0f), 0);
  EXPECT_EQ(quantize_int8(1.25f, 0.5f), 3);  // 2.5 after scaling
}

TEST(QuantizeInt8, SaturatesSymmetrically) {
  EXPECT_EQ(quantize_int8(1000.0f, 1.0f), 127);
  EXPECT_EQ(quantize_int8(-1000.0f, 1.0f), -127);  // never -128
  EXPECT_EQ(quantize_int8(127.4f, 1.0f), 127);
  EXPECT_EQ(quantize_int8(INFINITY, 1.0f), 127);
}

TEST(E4m3, EveryCodeRoundTripsBitExactly) {
  for (int code = 0; code < 256; ++code) {
    const float x = e4m3_bits_to_float(uint8_t(code));
    if ((code & 0x7f) == 0x7f) {
      ASSERT_TRUE(std::isnan(x)) << code;
      ASSERT_EQ(float_to_e4m3_bits(x) & 0x7f, 0x7f) << code;
    } else {
      ASSERT_EQ(float_to_e4m3_bits(x), code) << "value " << x;
    }
  }
  EXPECT_EQ(e4m3_bits_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_bits_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_bits_to_float(0x38), 1.0f);
}

TEST(E4m3, TiesRoundToEven) {
  EXPECT_EQ(float_to_e4m3_bits(1.0625f), 0x38);  // between 1 (even) and 1.125
  EXPECT_EQ(float_to_e4m3_bits(1.1875f), 0x3a);  // between 1.125 and 1.25 (even)
  EXPECT_EQ(float_to_e4m3_bits(-1.0625f), 0xb8);
  EXPECT_EQ(float_to_e4m3_bits(std::ldexp(1.0f, -10)), 0x00);   // half the smallest step
  EXPECT_EQ(float_to_e4m3_bits(std::ldexp(3.0f, -10)), 0x02);   // 1.5 steps -> 2
  EXPECT_EQ(float_to_e4m3_bits(std::ldexp(15.0f, -10)), 0x08);  // 7.5 steps: up to 2^-6
  EXPECT_EQ(float_to_e4m3_bits(1.05f), 0x38);                   // not a tie: nearest
  EXPECT_EQ(float_to_e4m3_bits(1.08f), 0x39);
}

TEST(E4m3, SaturatesToFiniteAndKeepsNan) {
  EXPECT_EQ(float_to_e4m3_bits(449.0f), 0x7e);
  EXPECT_EQ(float_to_e4m3_bits(464.0f), 0x7e);  // would round to 480, which does not exist
  EXPECT_EQ(float_to_e4m3_bits(1e6f), 0x7e);
  EXPECT_EQ(float_to_e4m3_bits(INFINITY), 0x7e);
  EXPECT_EQ(float_to_e4m3_bits(-INFINITY), 0xfe);
  EXPECT_TRUE(std::isnan(e4m3_bits_to_float(float_to_e4m3_bits(NAN))));
}

// cpu::round_to_e4m3 (8 lanes at a time, the fast backend's P) against the scalar rule on a
// sweep of every 1009th float of both signs, each e4m3 midpoint and its neighbours, and specials;
// lengths that are not multiples of 8 run the scalar tail too.
TEST(E4m3, VectorRoundingMatchesScalar) {
  std::vector<float> x;
  for (uint64_t u = 0; u <= 0xffffffffu; u += 1009) x.push_back(detail::bits_float(uint32_t(u)));
  for (int code = 0; code < 0x7e; ++code) {
    const float a = e4m3_bits_to_float(uint8_t(code)), b = e4m3_bits_to_float(uint8_t(code + 1));
    const float mid = 0.5f * (a + b);  // exact: one more bit than e4m3 has
    for (const float m : {std::nextafter(mid, 0.0f), mid, std::nextafter(mid, 1e9f)})
      for (const float sign : {1.0f, -1.0f}) x.push_back(sign * m);
  }
  for (const float s : {0.0f, -0.0f, 448.0f, 463.99f, 464.0f, 1e30f, INFINITY, -INFINITY, NAN, -NAN,
                        std::numeric_limits<float>::denorm_min()})
    x.push_back(s);
  x.push_back(1.0f);  // odd length: the scalar tail
  std::vector<float> r = x;
  cpu::round_to_e4m3(r.data(), int64_t(r.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = e4m3_bits_to_float(float_to_e4m3_bits(x[i]));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(r[i])) << "x = " << x[i];
    } else {
      ASSERT_EQ(detail::float_bits(r[i]), detail::float_bits(want)) << "x = " << x[i];
    }
  }
}

TEST(HalfFormats, EveryCodeRoundTrips) {
  for (uint32_t code = 0; code < 65536; ++code) {
    const uint16_t c = uint16_t(code);
    const float h = detail::half_bits_to_float(c), b = detail::bf16_bits_to_float(c);
    if (std::isnan(h))
      ASSERT_TRUE(std::isnan(detail::half_bits_to_float(detail::float_to_half_bits(h))));
    else
      ASSERT_EQ(detail::float_to_half_bits(h), c) << code;
    if (std::isnan(b))
      ASSERT_TRUE(std::isnan(detail::bf16_bits_to_float(detail::float_to_bf16_bits(b))));
    else
      ASSERT_EQ(detail::float_to_bf16_bits(b), c) << code;
  }
}

TEST(HalfFormats, TiesRoundToEvenAndOverflow) {
  EXPECT_EQ(detail::round_to_half(1.0f + std::ldexp(1.0f, -11)), 1.0f);
  EXPECT_EQ(detail::round_to_half(1.0f + std::ldexp(3.0f, -11)), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(detail::round_to_half(65519.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(detail::round_to_half(65520.0f)));
  EXPECT_EQ(detail::round_to_half(std::ldexp(1.0f, -25)), 0.0f);  // tie to even (0)
  EXPECT_EQ(detail::round_to_half(std::ldexp(3.0f, -25)), std::ldexp(1.0f, -23));
  EXPECT_EQ(detail::round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(detail::round_to_bf16(1.0f + std::ldexp(3.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(detail::round_to_bf16(NAN)));
}

// Quantized vs exact attention on the same random problem and the same dense mask.
TEST(QuantizedAttention, StaysCloseToExactOnRandomInputs) {
  const int64_t B = 1, H = 2, N = 256, D = 64;
  const HostTensor q =
      HostTensor::make(gaussian(B * H * N * D, 21), B, H, N, D, DType::kFloat16, Layout::kNHD);
  std::vector<float> kx = gaussian(B * H * N * D, 22);
  for (size_t i = 0; i < kx.size(); ++i) kx[i] += i % D == 3 ? 5.0f : 0.0f;  // a channel bias
  const HostTensor k = HostTensor::make(kx, B, H, N, D, DType::kFloat16, Layout::kNHD);
  const HostTensor v =
      HostTensor::make(gaussian(B * H * N * D, 23), B, H, N, D, DType::kFloat16, Layout::kNHD);
  SparseOptions opts;
  opts.causal = true;
  opts.quant = QuantMode::kInt8Fp8;
  HostBlockMask mask(B, H, N, N, opts.block_q, opts.block_k);
  ASSERT_TRUE(fill_dense_mask(mask.view(), true, CausalAlign::kTopLeft).is_ok());
  const ReferenceRun quant =
      run_reference(q.view, k.view, v.view, mask.view(), opts, DType::kFloat16);
  ASSERT_TRUE(quant.status.is_ok()) << quant.status.message();
  const std::vector<double> exact =
      cpu::dense_attention_reference(q.view, k.view, v.view, 0.125f, true, CausalAlign::kTopLeft);
  const double err = measure::rel_l1(quant.o, exact);
  std::printf("quantized (int8 Q/K, e4m3 P and V) vs exact: rel L1 = %.5f\n", err);
  // e4m3 P and e4m3 V each cost about 0.025 on random inputs, int8 Q/K 0.01 (docs/method.md,
  // "Scale granularity"): about 0.036 together; this case gives 0.034.
  EXPECT_LT(err, 0.045);
  EXPECT_GT(err, 1e-4);  // it really is quantized
}

// Inputs built so that every quantization step is known by hand: q and k - km are integers
// with block max 127 (so s = 127/127 + 1e-7 and the codes are the integers), v channels have
// amax 448 (s_v = 1) and e4m3-representable values.
TEST(QuantizedAttention, ReproducesAHandQuantizedCase) {
  const int64_t N = 32, D = 16;
  std::vector<float> q(N * D), k(N * D), v(N * D);
  const float e4m3_values[8] = {448.0f, -448.0f, 1.0f, -0.5f, 3.5f, 0.015625f, -96.0f, 12.0f};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      // q block 1 is halved: its scale is 0.5 + 1e-7 and its codes are the same integers.
      q[n * D + d] = float(((n * 7 + d * 3) % 255) - 127) * ((n + d) % 5 == 0 ? 1.0f : 0.0f) *
                     (n < 16 ? 1.0f : 0.5f);
      // Rows n and n + 16 of k are opposite, so the token mean is exactly the +10 offset.
      const float base = float(((n % 16) * 5 + d * 11) % 255 - 127);
      k[n * D + d] = 10.0f + (n < 16 ? base : -base) * ((n % 16 + 2 * d) % 3 == 0 ? 1.0f : 0.0f);
      v[n * D + d] = e4m3_values[(n + d) % 8];
    }
  for (int64_t blk = 0; blk < 2; ++blk) {  // pin every block's max |x| to 127
    q[blk * 16 * D] = blk == 0 ? 127.0f : 63.5f;
    k[blk * 16 * D] = 10.0f + (blk == 0 ? 127.0f : -127.0f);  // rows 0 and 16 stay opposite
  }
  const HostTensor qt = HostTensor::make(q, 1, 1, N, D, DType::kFloat32, Layout::kHND);
  const HostTensor kt = HostTensor::make(k, 1, 1, N, D, DType::kFloat32, Layout::kHND);
  const HostTensor vt = HostTensor::make(v, 1, 1, N, D, DType::kFloat32, Layout::kHND);
  SparseOptions opts;
  opts.block_q = opts.block_k = 16;
  opts.quant = QuantMode::kInt8Fp8;
  opts.pv_threshold = {INFINITY};
  opts.scale = 1e-4f;  // logits of a few units, so the softmax is not one-hot

  // The codes and scales are the hand values.
  const ProblemShape shape = problem_shape(qt.view, kt.view);
  const detail::Problem p{qt.view, kt.view, vt.view, shape, opts, opts.scale};
  // Per 16-row groups (the blocks here), the codes and scales are the hand values.
  const cpu::QuantizedInputs qi = cpu::quantize_inputs(p, detail::QuantGranularity{16, 16});
  const float s = 127.0f / 127.0f + 1e-7f, q_scale[2] = {s, 63.5f / 127.0f + 1e-7f};
  ASSERT_EQ(qi.q_scale[0], q_scale[0]);
  ASSERT_EQ(qi.q_scale[1], q_scale[1]);
  for (float x : qi.k_scale) ASSERT_EQ(x, s);
  for (float x : qi.v_scale) ASSERT_EQ(x, 1.0f);
  for (int64_t i = 0; i < N * D; ++i) {
    ASSERT_EQ(qi.q[i], int8_t(i < 16 * D ? q[i] : 2 * q[i])) << i;
    ASSERT_EQ(qi.k[i], int8_t(k[i] - 10.0f)) << i;
    ASSERT_EQ(qi.v[i], v[i]) << i;
  }

  // Attention on the codes of the backends' granularity, scores q8·k8 · s_q·s_k · scale, by the
  // quantized mode's rule (P rounded to e4m3 for P·V, per 16-key tile); V does not depend on
  // the granularity.
  const cpu::QuantizedInputs qd = cpu::quantize_inputs(p);
  ASSERT_EQ(qd.v, qi.v);
  HostBlockMask mask(1, 1, N, N, 16, 16);
  ASSERT_TRUE(fill_dense_mask(mask.view(), false, CausalAlign::kTopLeft).is_ok());
  const ReferenceRun run = run_reference(qt.view, kt.view, vt.view, mask.view(), opts);
  ASSERT_TRUE(run.status.is_ok()) << run.status.message();
  const double scale_log2 = double(opts.scale) * 1.4426950408889634;
  for (int64_t r = 0; r < N; ++r) {
    std::vector<double> t(N);
    for (int64_t c = 0; c < N; ++c) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += double(qd.q[r * D + d]) * double(qd.k[c * D + d]);
      t[c] = dot * double(qd.q_scale_at(0, r)) * double(qd.k_scale_at(0, c)) * scale_log2;
    }
    const std::vector<double> o = quantized_row_by_rule(t, v, D, opts.block_k);
    for (int64_t d = 0; d < D; ++d)
      ASSERT_NEAR(run.o[r * D + d], o[d], half_ulp_f32(o[d]) + 1e-12) << "row " << r << " d " << d;
  }
}

// V8: position p of every 16 keys holds key 2t, 2t+1, 2t+8, 2t+9 for p = 4t..4t+3 (the e4m3 A
// fragment order of a wgmma, quant_layout.h), a bijection inside each 16 keys.
TEST(QuantLayout, V8PositionsPermuteEach16Keys) {
  const int64_t expected[16] = {0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15};
  for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(detail::v8_position(c), (c / 16) * 16 + expected[c % 16]);
  EXPECT_EQ(detail::v8_keys(1), 64);
  EXPECT_EQ(detail::v8_keys(64), 64);
  EXPECT_EQ(detail::v8_keys(65), 128);
}

// The emulation's buffers on an odd length with GQA: groups of rows, the key mean's run order,
// V8 bytes = the codes of the dequantized V, zero padding.
TEST(QuantizeInputs, GroupsMeanAndV8LayoutOnOddLengths) {
  const int64_t B = 1, Hq = 4, Hkv = 2, Nq = 77, Nk = 150, D = 16;
  const HostTensor q = HostTensor::make(gaussian(B * Hq * Nq * D, 31), B, Hq, Nq, D,
                                        DType::kBFloat16, Layout::kHND);
  std::vector<float> kx = gaussian(B * Hkv * Nk * D, 32);
  for (float& x : kx) x += 3.0f;
  const HostTensor k = HostTensor::make(kx, B, Hkv, Nk, D, DType::kBFloat16, Layout::kNHD);
  const HostTensor v = HostTensor::make(gaussian(B * Hkv * Nk * D, 33), B, Hkv, Nk, D,
                                        DType::kBFloat16, Layout::kNHD);
  SparseOptions opts;
  const detail::Problem p{q.view, k.view, v.view, problem_shape(q.view, k.view), opts, 0.25f};
  const detail::QuantGranularity g{4, 16};
  const cpu::QuantizedInputs qi = cpu::quantize_inputs(p, g);
  const int64_t Nk8 = detail::v8_keys(Nk);
  ASSERT_EQ(qi.q_groups, 20);  // ⌈77 / 4⌉: the last group has one row
  ASSERT_EQ(qi.k_groups, 10);
  ASSERT_EQ(qi.v8.size(), size_t(B * Hkv * D * Nk8));
  const std::vector<float> qh = q.to_hnd(), kh = k.to_hnd(), vh = v.to_hnd();
  for (int64_t bh = 0; bh < B * Hq; ++bh)
    for (int64_t grp = 0; grp < qi.q_groups; ++grp) {
      float amax = 0.0f;
      for (int64_t r = grp * 4; r < std::min<int64_t>(Nq, grp * 4 + 4); ++r)
        for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(qh[(bh * Nq + r) * D + d]));
      ASSERT_EQ(qi.q_scale[bh * qi.q_groups + grp], amax / 127.0f + 1e-7f);
    }
  for (int64_t bh = 0; bh < B * Hkv; ++bh)
    for (int64_t d = 0; d < D; ++d) {
      double total = 0.0;  // runs of 64 summed from 0, then the runs in order
      for (int64_t t0 = 0; t0 < Nk; t0 += detail::kKeyMeanRun) {
        double run = 0.0;
        for (int64_t t = t0; t < std::min<int64_t>(Nk, t0 + detail::kKeyMeanRun); ++t)
          run += kh[(bh * Nk + t) * D + d];
        total += run;
      }
      ASSERT_EQ(qi.km[bh * D + d], float(total / double(Nk)));
      for (int64_t n = 0; n < Nk8; ++n) {
        const uint8_t code = qi.v8[(bh * D + d) * Nk8 + detail::v8_position(n)];
        if (n >= Nk) {
          ASSERT_EQ(code, 0) << "padding key " << n;
          continue;
        }
        ASSERT_EQ(e4m3_bits_to_float(code) * qi.v_scale[bh * D + d], qi.v[(bh * Nk + n) * D + d]);
        const float x = vh[(bh * Nk + n) * D + d] * (1.0f / qi.v_scale[bh * D + d]);
        ASSERT_EQ(code, float_to_e4m3_bits(x));
      }
    }
}

}  // namespace
}  // namespace sparge::test
