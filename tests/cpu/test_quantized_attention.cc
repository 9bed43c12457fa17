// The quantized modes' attention rules on both CPU backends (docs/method.md "Quantized mode"):
// kInt8Fp8's P·V takes P = 448·2^(t − m) rounded to e4m3 while l sums it unrounded, kInt8's takes
// P and v unrounded, and the LSE is that of the unsmoothed scores (smoothing K shifts row r's
// log-sum-exp by scale · q_r · km).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "common/backend.h"
#include "cpu/quantize.h"
#include "reference_cases.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge::test {
namespace {

constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

struct Outputs {
  std::vector<float> o, lse;
};

Outputs run(const HostTensor& q, const HostTensor& k, const HostTensor& v,
            const SparseOptions& opts, Backend backend) {
  const TensorView& qv = q.view;
  HostBlockMask mask(qv.batch, qv.heads, qv.tokens, k.view.tokens, opts.block_q, opts.block_k);
  EXPECT_TRUE(fill_dense_mask(mask.view(), opts.causal, opts.causal_align).is_ok());
  Outputs r;
  HostTensor o =
      HostTensor::poisoned(qv.batch, qv.heads, qv.tokens, qv.head_dim, qv.dtype, Layout::kHND);
  r.lse.assign(qv.batch * qv.heads * qv.tokens, std::numeric_limits<float>::quiet_NaN());
  AttentionExtras extras;
  extras.lse = r.lse.data();
  ExecContext ctx;
  ctx.backend = backend;
  const Status st =
      block_sparse_attention(qv, k.view, v.view, mask.view(), opts, o.view, extras, ctx);
  EXPECT_TRUE(st.is_ok()) << st.message();
  r.o = o.to_hnd();
  return r;
}

const char* name_of(Backend b) { return b == Backend::kReference ? "reference" : "fast"; }

// One query row against six keys, D 16, scale 1 (scores a few log2 units apart: P spans
// several e4m3 binades): the quantized scores t (log2 units) from the mode's codes, and the LSE
// of the unsmoothed scores, ln Σ_c e^(s_c) with s_c = t_c·ln2 + scale · q·km; with kInt8Fp8 the
// sum is of the e4m3-rounded 448·2^(t_c − max t), over 448 (what l sums in that mode).
struct OneRow {
  static constexpr int64_t kKeys = 6, kD = 16;
  HostTensor q = HostTensor::make(gaussian(kD, 51), 1, 1, 1, kD, DType::kFloat32, Layout::kHND);
  HostTensor k =
      HostTensor::make(gaussian(kKeys * kD, 52), 1, 1, kKeys, kD, DType::kFloat32, Layout::kHND);
  std::vector<float> v_values = gaussian(kKeys * kD, 53);
  HostTensor v = HostTensor::make(v_values, 1, 1, kKeys, kD, DType::kFloat32, Layout::kHND);
  SparseOptions opts;
  cpu::QuantizedInputs qi;
  std::vector<double> t;
  double lse = 0;

  explicit OneRow(QuantMode mode) {
    opts.quant = mode;
    opts.pv_threshold = {INFINITY};
    opts.scale = 1.0f;
    qi = cpu::quantize_inputs(problem());
    t.resize(kKeys);
    for (int64_t c = 0; c < kKeys; ++c) {
      double dot = 0;
      for (int64_t d = 0; d < kD; ++d) dot += double(qi.q[d]) * double(qi.k[c * kD + d]);
      t[c] = dot * double(qi.q_scale_at(0, 0)) * double(qi.k_scale_at(0, c)) *
             (double(opts.scale) * kLog2e);
    }
    const double t_max = *std::max_element(t.begin(), t.end());
    double sum = 0, shift = 0;
    for (double x : t) {
      const double p = std::exp2(x - t_max);
      sum += mode == QuantMode::kInt8Fp8
                 ? detail::e4m3_bits_to_float(detail::float_to_e4m3_bits(float(448.0 * p))) / 448.0
                 : p;
    }
    for (int64_t d = 0; d < kD; ++d) shift += double(q.get(0, 0, 0, d)) * double(qi.km[d]);
    lse = kLn2 * (t_max + std::log2(sum)) + double(opts.scale) * shift;
  }
  detail::Problem problem() const {
    return {q.view, k.view, v.view, problem_shape(q.view, k.view), opts, opts.scale};
  }

  // Both backends give `want` and the LSE; `other` is what the case must be told apart from
  // (ASSERTed visible first), `rule` names the rule in the log.
  void check(const std::vector<double>& want, const std::vector<double>& other,
             const char* rule) const {
    double visible = 0, size = 0;
    for (int64_t d = 0; d < kD; ++d) {
      visible = std::max(visible, std::fabs(want[d] - other[d]));
      size = std::max(size, std::fabs(other[d]));
    }
    ASSERT_GT(visible, 1e-3 * size) << rule << ": the case must tell the rules apart";
    for (Backend b : {Backend::kReference, Backend::kCpuFast}) {
      const Outputs r = run(q, k, v, opts, b);
      double err = 0;
      for (int64_t d = 0; d < kD; ++d) err = std::max(err, std::fabs(r.o[d] - want[d]));
      std::printf("[quant] %-9s %s: max |o - rule| %.1e (the other rule moves o by %.1e), lse %.1e\n",
                  name_of(b), rule, err, visible, std::fabs(r.lse[0] - lse));
      // The reference rounds the double result once; the fast backend's fp32 P and sums add a
      // few ulp (an e4m3 tie that its P lands on the other side of would show as ~1e-2 here).
      const double tol = b == Backend::kReference ? 0.0 : 1e-5 * size;
      for (int64_t d = 0; d < kD; ++d)
        EXPECT_NEAR(r.o[d], want[d], tol + half_ulp_f32(want[d]) + 1e-12) << name_of(b) << " d " << d;
      EXPECT_NEAR(r.lse[0], lse, 1e-5) << name_of(b);
    }
  }
};

// kInt8Fp8: the output is the rule's (P·V and l both on the e4m3 P), computed here from the
// quantized scores, and visibly not the one with P unrounded; the LSE is that of the rounded P
// without 448 in it.
TEST(QuantizedAttention, PvAndLUseE4m3P) {
  const OneRow c(QuantMode::kInt8Fp8);
  c.check(quantized_row_by_rule(c.t, c.qi.v, OneRow::kD, c.opts.block_k),
          quantized_row_by_rule(c.t, c.qi.v, OneRow::kD, c.opts.block_k, false), "e4m3 P rule");
}

// kInt8: the same INT8 scores as kInt8Fp8, then P·V with P and v as they are (no e4m3, no 448),
// which on this row differs visibly from kInt8Fp8's output; the LSE has no 448 to take out.
TEST(QuantizedAttention, Int8ModeTakesPAndVUnrounded) {
  const OneRow c(QuantMode::kInt8);
  EXPECT_TRUE(c.qi.v.empty() && c.qi.v8.empty()) << "kInt8 quantizes no V";
  const OneRow fp8(QuantMode::kInt8Fp8);
  c.check(quantized_row_by_rule(c.t, c.v_values, OneRow::kD, c.opts.block_k, false),
          quantized_row_by_rule(fp8.t, fp8.qi.v, OneRow::kD, c.opts.block_k), "int8 rule");
}

// What kInt8 is for: with nothing skipped, on random bf16 inputs (the hardest case for V's
// e4m3: docs/method.md "Scale granularity"), its error against exact mode is at most 0.02 and
// well below kInt8Fp8's, whose e4m3 V and P carry most of its error.
TEST(QuantizedAttention, Int8ModeErrorBelowInt8Fp8) {
  const int64_t B = 1, H = 2, N = 512, D = 128;
  const HostTensor q =
      HostTensor::make(gaussian(B * H * N * D, 71), B, H, N, D, DType::kBFloat16, Layout::kNHD);
  const HostTensor k =
      HostTensor::make(gaussian(B * H * N * D, 72), B, H, N, D, DType::kBFloat16, Layout::kNHD);
  const HostTensor v =
      HostTensor::make(gaussian(B * H * N * D, 73), B, H, N, D, DType::kBFloat16, Layout::kNHD);
  SparseOptions opts;
  opts.pv_threshold = {INFINITY};
  const Outputs exact = run(q, k, v, opts, Backend::kCpuFast);
  double err[2] = {0, 0};
  const QuantMode modes[2] = {QuantMode::kInt8, QuantMode::kInt8Fp8};
  for (int i = 0; i < 2; ++i) {
    opts.quant = modes[i];
    err[i] = measure::rel_l1(run(q, k, v, opts, Backend::kCpuFast).o, exact.o);
    std::printf("[quant] %-8s rel L1 against exact mode %.4f (random bf16, N %lld, D %lld)\n",
                enum_name(modes[i]), err[i], (long long)N, (long long)D);
  }
  EXPECT_LE(err[0], 0.02);
  EXPECT_LT(err[0], 0.5 * err[1]);
}

// On random N(0,1) inputs the quantized LSE stays within 0.05 of the exact mode's on both
// backends. Without the smoothing's shift it would not: the test checks that the shift itself
// exceeds the tolerance on these inputs.
TEST(QuantizedAttention, LseMatchesExactMode) {
  struct Case {
    int64_t D;
    bool causal;
    DType dtype;
    float k_bias;  // added to k channel 3 (a biased key channel, what smoothing is for)
  };
  const Case cases[] = {{64, false, DType::kFloat32, 0.0f},
                        {64, true, DType::kFloat32, 0.0f},
                        {128, false, DType::kFloat32, 0.0f},
                        {128, true, DType::kBFloat16, 0.0f},
                        {128, true, DType::kFloat16, 4.0f}};
  const int64_t B = 1, Hq = 2, Hkv = 1, Nq = 200, Nk = 256;
  uint64_t seed = 60;
  for (const Case& c : cases) {
    const int64_t D = c.D;
    std::vector<float> kx = gaussian(B * Hkv * Nk * D, ++seed);
    for (size_t i = 3; i < kx.size(); i += D) kx[i] += c.k_bias;
    const HostTensor q =
        HostTensor::make(gaussian(B * Hq * Nq * D, ++seed), B, Hq, Nq, D, c.dtype, Layout::kNHD);
    const HostTensor k = HostTensor::make(kx, B, Hkv, Nk, D, c.dtype, Layout::kNHD);
    const HostTensor v =
        HostTensor::make(gaussian(B * Hkv * Nk * D, ++seed), B, Hkv, Nk, D, c.dtype, Layout::kNHD);
    SparseOptions opts;
    opts.causal = c.causal;
    opts.pv_threshold = {INFINITY};  // the same tiles in both modes
    const Outputs exact = run(q, k, v, opts, Backend::kReference);

    // The shift scale · q_r · mean(k), from the inputs as stored.
    const std::vector<float> qh = q.to_hnd(), kh = k.to_hnd();
    std::vector<double> km(D, 0.0);
    for (int64_t n = 0; n < Nk; ++n)
      for (int64_t d = 0; d < D; ++d) km[d] += kh[n * D + d] / double(Nk);
    double largest_shift = 0;
    for (int64_t r = 0; r < Hq * Nq; ++r) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += qh[r * D + d] * km[d];
      largest_shift = std::max(largest_shift, std::fabs(dot) / std::sqrt(double(D)));
    }
    const std::string name = "D " + std::to_string(D) + (c.causal ? " causal " : " full ") +
                             dtype_name(c.dtype) + " k bias " + std::to_string(int(c.k_bias));
    EXPECT_GT(largest_shift, 0.05) << name << ": the shift must matter on these inputs";

    for (QuantMode mode : {QuantMode::kInt8Fp8, QuantMode::kInt8})
    for (Backend b : {Backend::kReference, Backend::kCpuFast}) {
      opts.quant = mode;
      const Outputs quant = run(q, k, v, opts, b);
      double worst = 0;
      for (size_t i = 0; i < exact.lse.size(); ++i) {
        ASSERT_TRUE(std::isfinite(exact.lse[i])) << name << " row " << i;  // every row sees a key
        const double e = std::fabs(double(quant.lse[i]) - exact.lse[i]);
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
      }
      std::printf("[quant] %-9s %-8s %-30s max |lse - exact lse| %.4f (largest shift %.3f)\n",
                  name_of(b), enum_name(mode), name.c_str(), worst, largest_shift);
      EXPECT_LE(worst, 0.05) << name << " " << name_of(b) << " " << enum_name(mode);
    }
  }
}

}  // namespace
}  // namespace sparge::test
