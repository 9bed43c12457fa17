// Attention masks (sparge::AttentionMask, issue 12 item 2) on the CPU: both backends against a
// naive masked softmax written here from the API's comments (bool = may attend, additive values
// join the scores, key_lengths cut the keys, rows without keys give zeros and lse -inf), the tile
// classes against brute force, Stage 1 never keeping a tile the mask hides, the CUDA refusal and
// the validation messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/fp_convert.h"
#include "cpu/attn_mask.h"
#include "sparge/sparge.h"
#include "test_util.h"

namespace sparge {
namespace {

using test::HostTensor;
constexpr float kInf = std::numeric_limits<float>::infinity();

// A dense mask with its storage: logical [mb, mh, mq, Nk], stored row-major (contiguous), or
// with seq_q == 1 a key-padding row per batch entry.
struct HostMask {
  std::vector<uint8_t> bools;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  AttentionMask view;

  // The additive value of element (b, h, r, c) in natural-log units, as the docs define it.
  float at(int64_t b, int64_t h, int64_t r, int64_t c) const {
    const int64_t off = view.offset(b, h, r, c);
    switch (view.dtype) {
      case MaskDType::kBool: return bools[off] ? 0.0f : -kInf;
      case MaskDType::kFloat32: return f32[off];
      case MaskDType::kFloat16: return detail::half_bits_to_float(half[off]);
      default: return detail::bf16_bits_to_float(half[off]);
    }
  }
};

// `hidden` in [0, 1] is the chance that an element is masked; additive masks also get a bias in
// [-2, 2] on the rest. Rows listed in `empty_rows` are masked whole.
HostMask make_mask(MaskDType dtype, int64_t mb, int64_t mh, int64_t mq, int64_t nk, double hidden,
                   std::mt19937& rng, const std::vector<int64_t>& empty_rows = {}) {
  HostMask m;
  const int64_t n = mb * mh * mq * nk;
  std::uniform_real_distribution<float> u(0.0f, 1.0f), bias(-2.0f, 2.0f);
  std::vector<float> values(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / nk % mq;
    const bool masked = u(rng) < hidden ||
                        std::find(empty_rows.begin(), empty_rows.end(), r) != empty_rows.end();
    values[i] = masked ? -kInf : (dtype == MaskDType::kBool ? 0.0f : bias(rng));
  }
  if (dtype == MaskDType::kBool)
    for (float x : values) m.bools.push_back(x == 0.0f);
  else if (dtype == MaskDType::kFloat32)
    m.f32 = values;
  else
    for (float x : values)
      m.half.push_back(dtype == MaskDType::kFloat16 ? detail::float_to_half_bits(x)
                                                     : detail::float_to_bf16_bits(x));
  m.view.data = dtype == MaskDType::kBool      ? static_cast<const void*>(m.bools.data())
                : dtype == MaskDType::kFloat32 ? static_cast<const void*>(m.f32.data())
                                               : static_cast<const void*>(m.half.data());
  m.view.dtype = dtype;
  m.view.batch = mb, m.view.heads = mh, m.view.seq_q = mq, m.view.seq_k = nk;
  m.view.stride_k = 1, m.view.stride_q = nk, m.view.stride_head = mq * nk;
  m.view.stride_batch = mh * mq * nk;
  m.view.capacity = n;
  return m;
}

struct Case {
  int64_t B = 2, Hq = 4, Hkv = 2, Nq = 77, Nk = 150, D = 32;
  bool causal = false;
  int window_left = -1;
};

// out[b, h, r, :] = softmax over the visible keys of scale·q·k + mask, zeros where no key is
// visible; lse[b, h, r] = log Σ exp(...), -inf there. In double, pair by pair.
void naive(const Case& cs, const std::vector<float>& q, const std::vector<float>& k,
           const std::vector<float>& v, const HostMask* mask, const std::vector<int32_t>* lengths,
           std::vector<double>* out, std::vector<double>* lse) {
  const double scale = 1.0 / std::sqrt(double(cs.D));
  out->assign(cs.B * cs.Hq * cs.Nq * cs.D, 0.0);
  lse->assign(cs.B * cs.Hq * cs.Nq, -INFINITY);
  for (int64_t b = 0; b < cs.B; ++b)
    for (int64_t h = 0; h < cs.Hq; ++h)
      for (int64_t r = 0; r < cs.Nq; ++r) {
        const int64_t hk = h / (cs.Hq / cs.Hkv);
        std::vector<double> s(cs.Nk, -INFINITY);
        double mx = -INFINITY;
        for (int64_t c = 0; c < cs.Nk; ++c) {
          if (cs.causal && c > r) continue;
          if (cs.window_left >= 0 && c < r - cs.window_left) continue;
          if (lengths && c >= (*lengths)[b]) continue;
          const double add = mask ? mask->at(b, h, r, c) : 0.0;
          if (add == -INFINITY) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < cs.D; ++d)
            dot += double(q[((b * cs.Hq + h) * cs.Nq + r) * cs.D + d]) *
                   k[((b * cs.Hkv + hk) * cs.Nk + c) * cs.D + d];
          s[c] = scale * dot + add;
          mx = std::max(mx, s[c]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0.0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        double* o = &(*out)[((b * cs.Hq + h) * cs.Nq + r) * cs.D];
        for (int64_t c = 0; c < cs.Nk; ++c)
          for (int64_t d = 0; d < cs.D; ++d)
            o[d] += s[c] / sum * v[((b * cs.Hkv + hk) * cs.Nk + c) * cs.D + d];
        (*lse)[(b * cs.Hq + h) * cs.Nq + r] = mx + std::log(sum);
      }
}

std::vector<float> random_values(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& e : x) e = g(rng);
  return x;
}

// Runs sparse_attention with nothing skipped (every block non-similar, λ = inf) on `backend`
// and checks o and lse against the naive masked softmax.
void expect_exact(const Case& cs, const HostMask* mask, const std::vector<int32_t>* lengths,
                  Backend backend, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<float> q = random_values(cs.B * cs.Hq * cs.Nq * cs.D, rng);
  const std::vector<float> k = random_values(cs.B * cs.Hkv * cs.Nk * cs.D, rng);
  const std::vector<float> v = random_values(cs.B * cs.Hkv * cs.Nk * cs.D, rng);
  HostTensor qt = HostTensor::make(q, cs.B, cs.Hq, cs.Nq, cs.D, DType::kFloat32, Layout::kHND);
  HostTensor kt = HostTensor::make(k, cs.B, cs.Hkv, cs.Nk, cs.D, DType::kFloat32, Layout::kNHD);
  HostTensor vt = HostTensor::make(v, cs.B, cs.Hkv, cs.Nk, cs.D, DType::kFloat32, Layout::kHND);
  HostTensor ot = HostTensor::poisoned(cs.B, cs.Hq, cs.Nq, cs.D, DType::kFloat32, Layout::kHND);
  AttentionMask am = mask ? mask->view : AttentionMask{};
  if (lengths) am.key_lengths = lengths->data();
  SparseOptions o;
  o.sim_threshold = HeadParam{1.0f};
  o.pv_threshold = HeadParam{kInf};
  o.causal = cs.causal;
  o.window_left = cs.window_left;
  o.block_q = 32;
  o.block_k = 16;
  std::vector<float> lse(cs.B * cs.Hq * cs.Nq, NAN);
  AttentionExtras extras;
  extras.lse = lse.data();
  ExecContext ctx;
  ctx.backend = backend;
  ASSERT_TRUE(sparse_attention(qt.view, kt.view, vt.view, am, o, ot.view, extras, ctx).is_ok());
  std::vector<double> want, want_lse;
  naive(cs, q, k, v, mask, lengths, &want, &want_lse);
  const double tol = backend == Backend::kReference ? 1e-5 : 2e-4;
  int empty_rows = 0;
  for (int64_t i = 0; i < int64_t(want_lse.size()); ++i) {
    if (want_lse[i] == -INFINITY) {
      ++empty_rows;
      EXPECT_EQ(lse[i], -kInf) << "row " << i;
    } else {
      EXPECT_NEAR(lse[i], want_lse[i], tol * (1 + std::fabs(want_lse[i]))) << "row " << i;
    }
    for (int64_t d = 0; d < cs.D; ++d)
      ASSERT_NEAR(ot.f32[i * cs.D + d], want[i * cs.D + d], tol) << "row " << i << " d " << d;
  }
  (void)empty_rows;
}

class BothBackends : public ::testing::TestWithParam<Backend> {};

TEST_P(BothBackends, BoolMaskBroadcastOverHeadsWithEmptyRows) {
  std::mt19937 rng(1);
  Case cs;
  const HostMask m = make_mask(MaskDType::kBool, cs.B, 1, cs.Nq, cs.Nk, 0.5, rng, {3, 40});
  expect_exact(cs, &m, nullptr, GetParam(), 11);
}

TEST_P(BothBackends, AdditiveMasksOfEachDtypePerHead) {
  for (MaskDType t : {MaskDType::kFloat32, MaskDType::kFloat16, MaskDType::kBFloat16}) {
    std::mt19937 rng(2 + int(t));
    Case cs;
    cs.B = 1;
    const HostMask m = make_mask(t, 1, cs.Hq, cs.Nq, cs.Nk, 0.3, rng, {0});
    expect_exact(cs, &m, nullptr, GetParam(), 12);
  }
}

TEST_P(BothBackends, KeyPaddingRowAndKeyLengthsGiveTheSameAsTheirDenseMask) {
  Case cs;
  const std::vector<int32_t> lengths = {150, 0};
  expect_exact(cs, nullptr, &lengths, GetParam(), 13);
  const std::vector<int32_t> lengths2 = {37, 101};
  expect_exact(cs, nullptr, &lengths2, GetParam(), 14);
  // A [B, Nk] padding mask with a hole (left padding and a masked middle key), through strides.
  std::mt19937 rng(3);
  HostMask pad = make_mask(MaskDType::kBool, cs.B, 1, 1, cs.Nk, 0.0, rng);
  for (int64_t c = 0; c < 20; ++c) pad.bools[c] = 0;
  pad.bools[cs.Nk + 77] = 0;
  expect_exact(cs, &pad, nullptr, GetParam(), 15);
  // Both forms together.
  expect_exact(cs, &pad, &lengths2, GetParam(), 16);
}

TEST_P(BothBackends, MasksCombineWithCausalAndTheWindow) {
  std::mt19937 rng(4);
  Case cs;
  cs.Nq = cs.Nk = 130;
  cs.causal = true;
  const HostMask m = make_mask(MaskDType::kFloat32, cs.B, cs.Hq, cs.Nq, cs.Nk, 0.2, rng);
  expect_exact(cs, &m, nullptr, GetParam(), 17);
  cs.window_left = 20;
  const std::vector<int32_t> lengths = {90, 130};
  expect_exact(cs, &m, &lengths, GetParam(), 18);
}

TEST_P(BothBackends, BlockStructuredMaskSkipsTilesAndStaysExact) {
  // A prefix-LM pattern (every row sees the 48-key prefix, then causal), as multimodal models use.
  Case cs;
  cs.Nq = cs.Nk = 160;
  HostMask m;
  std::mt19937 rng(5);
  m = make_mask(MaskDType::kBool, 1, 1, cs.Nq, cs.Nk, 0.0, rng);
  for (int64_t r = 0; r < cs.Nq; ++r)
    for (int64_t c = 0; c < cs.Nk; ++c) m.bools[r * cs.Nk + c] = c < 48 || c <= r;
  expect_exact(cs, &m, nullptr, GetParam(), 19);
}

INSTANTIATE_TEST_SUITE_P(AttnMask, BothBackends,
                         ::testing::Values(Backend::kReference, Backend::kCpuFast),
                         [](const auto& info) {
                           return std::string(info.param == Backend::kReference ? "Reference"
                                                                                : "Fast");
                         });

TEST(AttnMaskTiles, ClassesMatchBruteForce) {
  std::mt19937 rng(6);
  const int64_t nq = 50, nk = 70;
  for (int trial = 0; trial < 30; ++trial) {
    // Sparse holes or mostly hidden, so that all three classes occur.
    const double hidden = trial % 3 == 0 ? 0.0 : trial % 3 == 1 ? 0.02 : 0.97;
    HostMask m = make_mask(trial % 2 ? MaskDType::kBool : MaskDType::kFloat32, 1, 1, nq, nk,
                           hidden, rng);
    if (trial % 2 == 0 && hidden == 0.0)  // additive with no hole: zeros except one bias
      for (float& x : m.f32) x = 0.0f;
    if (trial % 6 == 4) m.f32[5] = 0.5f;
    AttentionMask am = m.view;
    const int32_t len = int32_t(rng() % (nk + 1));
    if (trial % 4 == 1) am.key_lengths = &len;
    const detail::KeyBand band =
        detail::key_band(trial % 5 == 0, false, trial % 7 == 0 ? 10 : -1, -1, nq, nk);
    const cpu::MaskReader reader(am, nk);
    for (int64_t r0 = 0; r0 < nq; r0 += 16)
      for (int64_t c0 = 0; c0 < nk; c0 += 16) {
        const int64_t r1 = std::min(nq, r0 + 16), c1 = std::min(nk, c0 + 16);
        bool visible = false, untouched = true;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            if (c < r + band.lo || c > r + band.hi) continue;  // outside the band: not asked
            const bool padded = am.key_lengths && c >= len;
            const float x = padded ? -kInf : m.at(0, 0, r, c);
            visible = visible || x != -kInf;
            untouched = untouched && x == 0.0f;
          }
        const cpu::TileClass want = !visible   ? cpu::TileClass::kSkipped
                                    : untouched ? cpu::TileClass::kPlain
                                                : cpu::TileClass::kPartial;
        EXPECT_EQ(int(reader.classify(0, 0, r0, r1, c0, c1, band)), int(want))
            << "trial " << trial << " tile " << r0 << "," << c0;
      }
  }
}

TEST(AttnMaskStage1, NeverKeepsAHiddenTileAndKeepsEveryOtherWhenNothingIsSkipped) {
  std::mt19937 rng(7);
  const int64_t B = 2, H = 2, N = 200, D = 16;
  const std::vector<float> x = random_values(B * H * N * D, rng);
  HostTensor q = HostTensor::make(x, B, H, N, D, DType::kFloat32, Layout::kHND);
  HostTensor k = HostTensor::make(random_values(B * H * N * D, rng), B, H, N, D, DType::kFloat32,
                                  Layout::kHND);
  // Block-diagonal (packed sequences of 70 and 130 tokens) in batch 0, key padding in batch 1.
  HostMask m = make_mask(MaskDType::kBool, B, 1, N, N, 0.0, rng);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < N; ++c) {
      m.bools[r * N + c] = (r < 70) == (c < 70);
      m.bools[N * N + r * N + c] = c < 90;
    }
  for (const char* estimate : {"pooled", "sampled_rows"})
    for (float sim : {1.0f, 0.3f}) {
      SparseOptions o;
      o.block_q = o.block_k = 32;
      o.sim_threshold = HeadParam{sim};
      o.select_value = HeadParam{0.5f};
      parse_enum(estimate, &o.estimate);
      HostBlockMask out(B, H, N, N, o.block_q, o.block_k);
      ASSERT_TRUE(predict_block_mask(q.view, k.view, k.view, m.view, o, out.view()).is_ok());
      const std::vector<uint8_t> dense = out.to_dense();
      const int64_t nb = (N + 31) / 32;
      const cpu::MaskReader reader(m.view, N);
      int64_t hidden_tiles = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < nb; ++i)
            for (int64_t j = 0; j < nb; ++j) {
              const bool hidden =
                  reader.classify(b, h, i * 32, std::min(N, i * 32 + 32), j * 32,
                                  std::min(N, j * 32 + 32), detail::KeyBand{}) ==
                  cpu::TileClass::kSkipped;
              hidden_tiles += hidden;
              const bool kept = dense[((b * H + h) * nb + i) * nb + j];
              if (hidden) EXPECT_FALSE(kept) << estimate << " " << b << h << i << j;
              if (sim == 1.0f && !hidden) EXPECT_TRUE(kept) << estimate << " " << b << h << i << j;
            }
      EXPECT_GT(hidden_tiles, 0);  // the masks do hide whole tiles
    }
}

// Q/K/V stand-ins for the checks that fail before any element is read.
struct Shapes {
  std::vector<float> buf = std::vector<float>(2 * 2 * 8 * 4, 0.0f);
  TensorView q = TensorView::contiguous(buf.data(), DType::kFloat32, Layout::kHND, 2, 2, 8, 4);
  TensorView o = q;
};

std::string message(const Status& s) { return s.message(); }

TEST(AttnMaskValidation, MessagesNameTheArgument) {
  Shapes t;
  std::vector<float> out(t.buf.size());
  t.o.data = out.data();
  std::vector<uint8_t> storage(2 * 2 * 8 * 8, 1);
  AttentionMask m;
  m.data = storage.data();
  m.batch = 2, m.heads = 2, m.seq_q = 8, m.seq_k = 8;
  m.stride_batch = 128, m.stride_head = 64, m.stride_q = 8, m.stride_k = 1;
  m.capacity = int64_t(storage.size());
  const SparseOptions o;
  ASSERT_TRUE(sparse_attention(t.q, t.q, t.q, m, o, t.o).is_ok());

  struct Bad {
    AttentionMask m;
    const char* expect;
  };
  std::vector<Bad> bad;
  AttentionMask x = m;
  x.batch = 3;
  bad.push_back({x, "attn_mask.batch must be 1 (broadcast) or q.batch (2), got 3"});
  x = m, x.heads = 4;
  bad.push_back({x, "attn_mask.heads must be 1 (broadcast) or q.heads (2)"});
  x = m, x.seq_q = 5;
  bad.push_back({x, "attn_mask.seq_q must be 1 (broadcast) or q.tokens (8)"});
  x = m, x.seq_k = 7;
  bad.push_back({x, "attn_mask.seq_k must equal k.tokens (8), got 7"});
  x = m, x.dtype = static_cast<MaskDType>(9);
  bad.push_back({x, "attn_mask.dtype must be bool, float32, float16 or bfloat16, got code 9"});
  x = m, x.device = Device::kCUDA;
  bad.push_back({x, "attn_mask must be on q's device (cpu:0), got cuda:0"});
  x = m, x.stride_q = -8;
  bad.push_back({x, "attn_mask.stride_q must be >= 0, got -8"});
  x = m, x.stride_batch = 129;
  bad.push_back({x, "attn_mask strides (129, 64, 8, 1) reach element 256 but the buffer holds 256"});
  const int32_t lengths[2] = {8, 9};
  x = m, x.key_lengths = lengths;
  bad.push_back({x, "attn_mask.key_lengths[1] must be in [0, k.tokens = 8], got 9"});
  for (const Bad& c : bad) {
    const Status s = sparse_attention(t.q, t.q, t.q, c.m, o, t.o);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.expect;
    EXPECT_NE(message(s).find(c.expect), std::string::npos) << message(s);
    const Status v = validate(t.q, t.q, t.q, c.m, o);
    EXPECT_EQ(message(v), message(s));
  }
  // A broadcast axis's stride is not read: any value passes.
  x = m, x.heads = 1, x.stride_head = -5;
  EXPECT_TRUE(sparse_attention(t.q, t.q, t.q, x, o, t.o).is_ok());
  // The error target's estimate does not read masks: refused by name rather than wrong.
  SparseOptions with_target = o;
  with_target.target_error = 0.05f;
  const Status s = sparse_attention(t.q, t.q, t.q, m, with_target, t.o);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(message(s).find("SparseOptions.target_error with an attn_mask"), std::string::npos)
      << message(s);
  EXPECT_TRUE(sparse_attention(t.q, t.q, t.q, AttentionMask{}, with_target, t.o).is_ok());
}

// The CUDA entry points take dense masks and key_lengths (the dense-mask path passed its GPU
// tests, tests/cuda/test_dense_mask.cc, on 2026-12-05): a valid mask on CUDA tensors is never
// refused as a mask; the calls go on, here to refusals of another kind (no GPU, no CUDA backend,
// or no workspace, checked before a kernel would read these host buffers).
TEST(AttnMaskValidation, CudaBackendTakesDenseMasks) {
  alignas(16) static float buf[2 * 2 * 8 * 8] = {};
  alignas(16) static float out[2 * 2 * 8 * 8] = {};
  alignas(16) static uint8_t allowed[2 * 8 * 8] = {};
  TensorView q = TensorView::contiguous(buf, DType::kBFloat16, Layout::kHND, 2, 2, 8, 8,
                                        Device::kCUDA);
  TensorView o = TensorView::contiguous(out, DType::kBFloat16, Layout::kHND, 2, 2, 8, 8,
                                        Device::kCUDA);
  const int32_t lengths[2] = {8, 4};
  AttentionMask dense;  // [2, 1, 8, 8] bool
  dense.data = allowed;
  dense.device = Device::kCUDA;
  dense.batch = 2;
  dense.seq_q = 8;
  dense.seq_k = 8;
  dense.stride_batch = 64;
  dense.stride_q = 8;
  AttentionMask padding;  // key_lengths alone: the CUDA backend takes it
  padding.key_lengths = lengths;
  padding.device = Device::kCUDA;
  const SparseOptions opts;
  HostBlockMask host(2, 2, 8, 8, opts.block_q, opts.block_k);
  BlockMask bm = host.view();
  bm.device = Device::kCUDA;
  for (const AttentionMask& m : {dense, padding}) {
    // Exact Stage 2 with key_lengths alone needs no workspace: not called (see above).
    std::vector<Status> calls = {sparse_attention(q, q, q, m, opts, o),
                                 predict_block_mask(q, q, q, m, opts, bm)};
    if (m.data != nullptr) calls.push_back(block_sparse_attention(q, q, q, m, bm, opts, o));
    for (const Status& s : calls) {
      EXPECT_FALSE(s.is_ok());
      EXPECT_NE(message(s).rfind("attn_mask", 0), 0u) << message(s);
    }
  }
}

}  // namespace
}  // namespace sparge
