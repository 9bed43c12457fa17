// The C ABI end to end: defaults, errors in the caller's buffer, and runs that match the C++ API
// bit for bit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "c_tensor.h"
#include "reference_cases.h"
#include "sparge/build_info.h"
#include "sparge/sparge.h"
#include "sparge/sparge_c.h"
#include "test_util.h"

namespace sparge::test {
namespace {

using ::testing::HasSubstr;

sparge_tensor to_c(const TensorView& t) { return test::c_tensor(t); }

sparge_block_mask to_c(const BlockMask& m) { return test::c_block_mask(m); }

// A bf16 GQA problem in NHD layout (non-trivial strides), with outputs for both APIs.
struct Problem {
  static constexpr int64_t B = 1, Hq = 4, Hkv = 2, N = 200, D = 32;
  HostTensor q =
      HostTensor::make(gaussian(B * Hq * N * D, 31), B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  HostTensor k =
      HostTensor::make(gaussian(B * Hkv * N * D, 32), B, Hkv, N, D, DType::kBFloat16, Layout::kNHD);
  HostTensor v =
      HostTensor::make(gaussian(B * Hkv * N * D, 33), B, Hkv, N, D, DType::kBFloat16, Layout::kNHD);
  HostTensor o_c = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  HostTensor o_cpp = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kNHD);
  std::vector<float> lse_c = std::vector<float>(B * Hq * N, NAN);
  std::vector<float> lse_cpp = std::vector<float>(B * Hq * N, NAN);
};

TEST(CApi, DefaultsEqualTheCppDefaults) {
  // Field by field against SparseOptions{} and the run-time table; also the enum constants.
  const sparge_options c = sparge_default_options();
  EXPECT_EQ(c.struct_size, sizeof(sparge_options));
  const SparseOptions d;
  EXPECT_EQ(c.scale, d.scale);
  EXPECT_EQ(c.causal, int(d.causal));
  EXPECT_EQ(c.causal_align, int(d.causal_align));
  EXPECT_EQ(c.sim_threshold, d.sim_threshold.value);
  EXPECT_EQ(c.select, int(d.select));
  EXPECT_EQ(c.select_value, d.select_value.value);
  EXPECT_EQ(c.estimate, int(d.estimate));
  EXPECT_EQ(c.sample_rows, d.sample_rows);
  EXPECT_EQ(c.target_error, d.target_error);
  EXPECT_EQ(c.attention_sink, int(d.attention_sink));
  EXPECT_EQ(c.pv_threshold, d.pv_threshold.value);
  EXPECT_EQ(c.pv_group_rows, d.pv_group_rows);
  EXPECT_EQ(c.block_q, d.block_q);
  EXPECT_EQ(c.block_k, d.block_k);
  EXPECT_EQ(c.quant, int(d.quant));
  EXPECT_EQ(c.sim_threshold_per_head, nullptr);
  EXPECT_EQ(c.select_value_per_head, nullptr);
  EXPECT_EQ(c.pv_threshold_per_head, nullptr);
  EXPECT_EQ(sparge_options_size(), sizeof(sparge_options));
  sparge_options init;
  std::memset(&init, 0xff, sizeof(init));
  sparge_options_init(&init);
  EXPECT_EQ(init.struct_size, c.struct_size);
  EXPECT_EQ(init.select_value, c.select_value);
  EXPECT_EQ(init.block_k, c.block_k);
  EXPECT_EQ(init.pv_threshold_per_head, nullptr);
  EXPECT_EQ(SPARGE_CAUSAL_BOTTOM_RIGHT, int(CausalAlign::kBottomRight));
  EXPECT_EQ(SPARGE_SELECT_TOPK, int(SelectMode::kTopK));
  EXPECT_EQ(SPARGE_ESTIMATE_SAMPLED_ROWS, int(EstimateMode::kSampledRows));
  EXPECT_EQ(SPARGE_QUANT_INT8_FP8, int(QuantMode::kInt8Fp8));
  EXPECT_EQ(SPARGE_QUANT_INT8, int(QuantMode::kInt8));
}

TEST(CApi, SetsOptionsByName) {
  sparge_options c = sparge_default_options();
  char err[256] = "";
  // Every option of the table can be set by its name, and reads back as the C++ default when
  // set to it.
  for (const OptionInfo& info : option_table())
    EXPECT_EQ(sparge_options_set(&c, info.name, info.default_value, err, sizeof(err)), 0)
        << info.name << ": " << err;
  EXPECT_EQ(sparge_options_set(&c, "pv_threshold", 7.5, err, sizeof(err)), 0);
  EXPECT_EQ(c.pv_threshold, 7.5f);
  EXPECT_EQ(sparge_options_set(&c, "select", SPARGE_SELECT_TOPK, err, sizeof(err)), 0);
  EXPECT_EQ(c.select, SPARGE_SELECT_TOPK);
  EXPECT_NE(sparge_options_set(&c, "block_q", 64.5, err, sizeof(err)), 0);
  EXPECT_THAT(std::string(err), HasSubstr("sparge_options.block_q must be a whole number"));
  EXPECT_NE(sparge_options_set(&c, "cdf", 0.5, err, sizeof(err)), 0);
  EXPECT_THAT(std::string(err), HasSubstr("name must be a field of sparge_options"));
  const float per_head[2] = {0.1f, 0.2f};
  EXPECT_EQ(sparge_options_set_per_head(&c, "sim_threshold", per_head, err, sizeof(err)), 0);
  EXPECT_EQ(c.sim_threshold_per_head, per_head);
  EXPECT_NE(sparge_options_set_per_head(&c, "block_q", per_head, err, sizeof(err)), 0);
  EXPECT_THAT(std::string(err),
              HasSubstr("per-head option of sparge_options (sim_threshold select_value "
                        "pv_threshold), got 'block_q'"));
}

// Found by fuzz/fuzz_c_abi: a double beyond int (or NaN) was converted to int before the
// whole-number test, which is undefined behaviour (UBSan: "outside the range of representable
// values of type 'int'").
TEST(CApi, SetRejectsWholeNumbersOutsideInt) {
  sparge_options c = sparge_default_options();
  char err[256] = "";
  for (double bad : {-1.79769e308, 3e9, -3e9, double(NAN), double(INFINITY)}) {
    EXPECT_NE(sparge_options_set(&c, "block_q", bad, err, sizeof(err)), 0) << bad;
    EXPECT_THAT(std::string(err), HasSubstr("whole number in int's range"));
  }
  EXPECT_EQ(c.block_q, sparge_default_options().block_q);
  EXPECT_EQ(sparge_options_set(&c, "block_q", 2147483647.0, err, sizeof(err)), 0);
}

// Found by fuzz/fuzz_c_abi: the CUDA workspace of block_q = 0 divided by zero. Options or
// shapes that every call rejects need no workspace.
TEST(CApi, WorkspaceSizeOfRejectedArgumentsIsZero) {
  std::vector<float> buf(64);
  sparge_tensor q = to_c(TensorView::contiguous(buf.data(), DType::kFloat32, Layout::kHND, 1, 1, 4,
                                                16, Device::kCUDA));
  sparge_options o = sparge_default_options();
  o.block_q = 0;
  EXPECT_EQ(sparge_workspace_size(&q, &q, &o), 0u);
  o = sparge_default_options();
  q.shape[2] = std::numeric_limits<int64_t>::max();  // the mask's index count overflows
  EXPECT_EQ(sparge_workspace_size(&q, &q, &o), 0u);
}

// The masked size: a null or mask-free attn_mask gives sparge_workspace_size's; a dense mask on
// CUDA tensors adds its tile classes (one byte per tile here: nothing the mask broadcasts over)
// where the build has the CUDA backend; 0 on the CPU, and for a mask the call would reject.
TEST(CApi, WorkspaceSizeWithADenseMask) {
  std::vector<float> buf(2 * 300 * 64);
  std::vector<uint8_t> bools(300 * 300, 1);
  sparge_tensor q = to_c(TensorView::contiguous(buf.data(), DType::kBFloat16, Layout::kHND, 1, 2,
                                                300, 64, Device::kCUDA));
  const sparge_options o = sparge_default_options();
  sparge_attn_mask m = {bools.data(), SPARGE_MASK_BOOL, SPARGE_CUDA, 0,
                        {1, 1, 300, 300}, {0, 0, 300, 1}, nullptr};
  const size_t plain = sparge_workspace_size(&q, &q, &o);
  EXPECT_EQ(sparge_workspace_size_masked(&q, &q, nullptr, &o), plain);
  sparge_attn_mask lengths_only = m;
  lengths_only.data = nullptr;
  const int32_t lengths[1] = {200};
  lengths_only.key_lengths = lengths;
  EXPECT_EQ(sparge_workspace_size_masked(&q, &q, &lengths_only, &o), plain);
  const size_t masked = sparge_workspace_size_masked(&q, &q, &m, &o);
  const size_t tiles = 3 * 5;  // ⌈300 / 128⌉ query blocks × ⌈300 / 64⌉ key blocks
  if (SPARGE_WITH_CUDA) EXPECT_GE(masked, plain + tiles);
  else EXPECT_EQ(masked, plain);
  m.dtype = 17;  // not a mask dtype
  EXPECT_EQ(sparge_workspace_size_masked(&q, &q, &m, &o), 0u);
  q.device = SPARGE_CPU;
  m = {bools.data(), SPARGE_MASK_BOOL, SPARGE_CPU, 0, {1, 1, 300, 300}, {0, 0, 300, 1}, nullptr};
  EXPECT_EQ(sparge_workspace_size_masked(&q, &q, &m, &o), 0u);
}

// The calls that keep the block mask in caller memory run whole, so their size is the C++
// workspace_size's with caller_mask; where sparge_sparse_attention runs in row chunks (long
// queries) it is the larger of the two: the quantized Stage 2 of 8K tokens failed on a
// buffer of sparge_workspace_size before this function existed.
TEST(CApi, WorkspaceSizeForACallerMask) {
  std::vector<float> buf(64);  // never read: a size is all these calls compute
  const int64_t n = 131072;
  sparge_tensor q = to_c(TensorView::contiguous(buf.data(), DType::kBFloat16, Layout::kHND, 1, 8, n,
                                                128, Device::kCUDA));
  for (const int quant : {SPARGE_QUANT_NONE, SPARGE_QUANT_INT8_FP8, SPARGE_QUANT_INT8}) {
    sparge_options o = sparge_default_options();
    o.quant = quant;
    const size_t caller = sparge_workspace_size_caller_mask(&q, &q, nullptr, &o);
    sparge::SparseOptions cpp;
    cpp.quant = static_cast<sparge::QuantMode>(quant);
    const sparge::ProblemShape s{1, 8, 8, n, n, 128, sparge::DType::kBFloat16};
    EXPECT_EQ(caller, sparge::workspace_size(s, cpp, sparge::Device::kCUDA, /*caller_mask=*/true));
    if (SPARGE_WITH_CUDA) EXPECT_GT(caller, sparge_workspace_size(&q, &q, &o)) << quant;
  }
  q.device = SPARGE_CPU;
  const sparge_options o = sparge_default_options();
  EXPECT_EQ(sparge_workspace_size_caller_mask(&q, &q, nullptr, &o), 0u);
}

TEST(CApi, RejectsAStructOfAnotherSize) {
  Problem p;
  const sparge_tensor q = to_c(p.q.view), k = to_c(p.k.view), v = to_c(p.v.view),
                      o = to_c(p.o_c.view);
  sparge_options opts = sparge_default_options();
  opts.struct_size = sizeof(sparge_options) - 8;
  char err[256] = "";
  EXPECT_EQ(sparge_sparse_attention(&q, &k, &v, &opts, &o, nullptr, nullptr, 0, nullptr, nullptr,
                                    err, sizeof(err)),
            static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(err), HasSubstr("sparge_options.struct_size must be"));
}

TEST(CApi, ErrorsGoToTheCallersBuffer) {
  Problem p;
  const sparge_tensor q = to_c(p.q.view), k = to_c(p.k.view), v = to_c(p.v.view),
                      o = to_c(p.o_c.view);
  sparge_options opts = sparge_default_options();
  opts.select_value = 1.5f;
  char err[256];
  std::memset(err, 'x', sizeof(err));
  int rc = sparge_sparse_attention(&q, &k, &v, &opts, &o, nullptr, nullptr, 0, nullptr, nullptr,
                                   err, sizeof(err));
  EXPECT_EQ(rc, static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(err),
              HasSubstr("SparseOptions.select_value (cdf_threshold) must be in (0, 1], got 1.5"));
  EXPECT_TRUE(any_nan(p.o_c.to_hnd()));  // nothing was written

  // Truncated to the buffer, always terminated; a NULL buffer is fine too.
  char small[12];
  std::memset(small, 'x', sizeof(small));
  rc = sparge_sparse_attention(&q, &k, &v, &opts, &o, nullptr, nullptr, 0, nullptr, nullptr, small,
                               8);
  EXPECT_EQ(rc, static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_EQ(std::string(small), "SparseO");
  EXPECT_EQ(small[8], 'x');  // nothing past err_len
  EXPECT_EQ(sparge_sparse_attention(&q, &k, &v, &opts, &o, nullptr, nullptr, 0, nullptr, nullptr,
                                    nullptr, 0),
            static_cast<int>(StatusCode::kInvalidArgument));

  opts = sparge_default_options();
  rc = sparge_sparse_attention(nullptr, &k, &v, &opts, &o, nullptr, nullptr, 0, nullptr, nullptr,
                               err, sizeof(err));
  EXPECT_EQ(rc, static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(err), HasSubstr("q must not be NULL"));
  opts.causal = 2;
  rc = sparge_predict_block_mask(&q, &k, &opts, nullptr, nullptr, 0, nullptr, err, sizeof(err));
  EXPECT_THAT(std::string(err), HasSubstr("sparge_options.causal must be 0 or 1, got 2"));
  opts.causal = 0;
  rc = sparge_predict_block_mask(&q, &k, &opts, nullptr, nullptr, 0, nullptr, err, sizeof(err));
  EXPECT_THAT(std::string(err), HasSubstr("mask must not be NULL"));
  sparge_tensor bad = q;
  bad.device = 3;
  rc = sparge_block_sparse_attention(&bad, &k, &v, nullptr, &opts, &o, nullptr, nullptr, 0, nullptr,
                                     err, sizeof(err));
  EXPECT_THAT(std::string(err), HasSubstr("q.device must be SPARGE_CPU (0) or SPARGE_CUDA (1)"));
  bad = q;
  bad.dtype = 4;
  rc = sparge_block_sparse_attention(&bad, &k, &v, nullptr, &opts, &o, nullptr, nullptr, 0, nullptr,
                                     err, sizeof(err));
  EXPECT_THAT(std::string(err), HasSubstr("mask must not be NULL"));
  HostBlockMask mask(1, 4, 200, 200, 128, 64);
  const sparge_block_mask cmask = to_c(mask.view());
  rc = sparge_block_sparse_attention(&bad, &k, &v, &cmask, &opts, &o, nullptr, nullptr, 0, nullptr,
                                     err, sizeof(err));
  EXPECT_THAT(std::string(err),
              HasSubstr("q.dtype must be float32, float16 or bfloat16, got code 4"));
  EXPECT_EQ(sparge_workspace_size(&q, &k, &opts), 0u);  // CPU needs no workspace
}

TEST(CApi, RunsMatchTheCppApiBitForBit) {
  Problem p;
  const sparge_tensor q = to_c(p.q.view), k = to_c(p.k.view), v = to_c(p.v.view),
                      o = to_c(p.o_c.view);
  const float sim[4] = {0.2f, 0.3f, 1.0f, -1.0f}, pv[4] = {5.0f, 10.0f, 20.0f, INFINITY};
  sparge_options c = sparge_default_options();
  c.causal = 1;
  c.causal_align = SPARGE_CAUSAL_BOTTOM_RIGHT;
  c.block_q = 64;
  c.block_k = 32;
  c.select_value = 0.7f;
  c.attention_sink = 1;
  c.sim_threshold_per_head = sim;
  c.pv_threshold_per_head = pv;
  SparseOptions cpp;
  cpp.causal = true;
  cpp.causal_align = CausalAlign::kBottomRight;
  cpp.block_q = 64;
  cpp.block_k = 32;
  cpp.select_value = {0.7f};
  cpp.attention_sink = true;
  cpp.sim_threshold = {0.6f, sim};
  cpp.pv_threshold = {50.0f, pv};

  HostBlockMask mask_c(1, 4, 200, 200, 64, 32), mask_cpp(1, 4, 200, 200, 64, 32);
  const sparge_block_mask cmask = to_c(mask_c.view());
  char err[256] = "";
  ASSERT_EQ(sparge_sparse_attention(&q, &k, &v, &c, &o, p.lse_c.data(), nullptr, 0, nullptr, &cmask,
                                    err, sizeof(err)),
            0)
      << err;
  AttentionExtras extras;
  extras.lse = p.lse_cpp.data();
  ASSERT_TRUE(sparse_attention(p.q.view, p.k.view, p.v.view, cpp, p.o_cpp.view, extras, {},
                               &mask_cpp.view())
                  .is_ok());
  EXPECT_EQ(mask_c.counts, mask_cpp.counts);
  EXPECT_EQ(mask_c.indices, mask_cpp.indices);
  EXPECT_EQ(p.o_c.half, p.o_cpp.half);
  EXPECT_EQ(0, std::memcmp(p.lse_c.data(), p.lse_cpp.data(), p.lse_c.size() * sizeof(float)));
  EXPECT_FALSE(any_nan(p.o_c.to_hnd()));
  const AttentionStats st = mask_stats(mask_c.view(), true, CausalAlign::kBottomRight);
  EXPECT_GT(st.sparsity(), 0.0);  // the options really made a sparse mask

  // Stage 1 and Stage 2 separately, through the C entry points.
  HostBlockMask mask_c2(1, 4, 200, 200, 64, 32);
  const sparge_block_mask cmask2 = to_c(mask_c2.view());
  ASSERT_EQ(sparge_predict_block_mask(&q, &k, &c, &cmask2, nullptr, 0, nullptr, err, sizeof(err)),
            0)
      << err;
  EXPECT_EQ(mask_c2.indices, mask_cpp.indices);
  HostTensor o2 = HostTensor::poisoned(1, 4, 200, 32, DType::kBFloat16, Layout::kNHD);
  const sparge_tensor o2c = to_c(o2.view);
  ASSERT_EQ(sparge_block_sparse_attention(&q, &k, &v, &cmask2, &c, &o2c, nullptr, nullptr, 0,
                                          nullptr, err, sizeof(err)),
            0)
      << err;
  EXPECT_EQ(o2.half, p.o_cpp.half);
}

TEST(CApi, MaskedRunsMatchTheCppApiBitForBit) {
  Problem p;
  const sparge_tensor q = to_c(p.q.view), k = to_c(p.k.view), v = to_c(p.v.view),
                      o = to_c(p.o_c.view);
  // A [1, 1, 200, 200] bool mask hiding a block of keys from a band of rows, and key lengths.
  std::vector<uint8_t> bools(200 * 200, 1);
  for (int r = 50; r < 150; ++r)
    for (int c = 0; c < 100; ++c) bools[r * 200 + c] = 0;
  const int32_t lengths[1] = {170};
  sparge_attn_mask cm = {bools.data(), SPARGE_MASK_BOOL, SPARGE_CPU, 0,
                         {1, 1, 200, 200}, {0, 0, 200, 1}, lengths};
  AttentionMask am;
  am.data = bools.data();
  am.batch = 1, am.heads = 1, am.seq_q = 200, am.seq_k = 200;
  am.stride_q = 200, am.stride_k = 1;
  am.key_lengths = lengths;
  sparge_options c = sparge_default_options();
  c.block_q = 64;
  c.block_k = 32;
  SparseOptions cpp;
  cpp.block_q = 64;
  cpp.block_k = 32;
  HostBlockMask mask_c(1, 4, 200, 200, 64, 32), mask_cpp(1, 4, 200, 200, 64, 32);
  const sparge_block_mask cmask = to_c(mask_c.view());
  char err[256] = "";
  ASSERT_EQ(sparge_sparse_attention_masked(&q, &k, &v, &cm, &c, &o, p.lse_c.data(), nullptr, 0,
                                           nullptr, &cmask, err, sizeof(err)),
            0)
      << err;
  AttentionExtras extras;
  extras.lse = p.lse_cpp.data();
  ASSERT_TRUE(sparse_attention(p.q.view, p.k.view, p.v.view, am, cpp, p.o_cpp.view, extras, {},
                               &mask_cpp.view())
                  .is_ok());
  EXPECT_EQ(mask_c.indices, mask_cpp.indices);
  EXPECT_EQ(p.o_c.half, p.o_cpp.half);
  EXPECT_EQ(0, std::memcmp(p.lse_c.data(), p.lse_cpp.data(), p.lse_c.size() * sizeof(float)));
  // The mask changed the result: the unmasked call differs.
  HostTensor plain = HostTensor::poisoned(1, 4, 200, 32, DType::kBFloat16, Layout::kNHD);
  ASSERT_TRUE(sparse_attention(p.q.view, p.k.view, p.v.view, cpp, plain.view).is_ok());
  EXPECT_NE(plain.half, p.o_cpp.half);

  HostBlockMask mask_c2(1, 4, 200, 200, 64, 32);
  const sparge_block_mask cmask2 = to_c(mask_c2.view());
  ASSERT_EQ(sparge_predict_block_mask_masked(&q, &k, &v, &cm, &c, &cmask2, nullptr, 0, nullptr,
                                             err, sizeof(err)),
            0)
      << err;
  EXPECT_EQ(mask_c2.indices, mask_cpp.indices);
  HostTensor o2 = HostTensor::poisoned(1, 4, 200, 32, DType::kBFloat16, Layout::kNHD);
  const sparge_tensor o2c = to_c(o2.view);
  ASSERT_EQ(sparge_block_sparse_attention_masked(&q, &k, &v, &cm, &cmask2, &c, &o2c, nullptr,
                                                 nullptr, 0, nullptr, err, sizeof(err)),
            0)
      << err;
  EXPECT_EQ(o2.half, p.o_cpp.half);
  // Errors name the argument through the C ABI too.
  cm.shape[3] = 199;
  EXPECT_NE(sparge_sparse_attention_masked(&q, &k, &v, &cm, &c, &o, nullptr, nullptr, 0, nullptr,
                                           nullptr, err, sizeof(err)),
            0);
  EXPECT_NE(std::string(err).find("attn_mask.seq_k must equal k.tokens (200), got 199"),
            std::string::npos)
      << err;
}

}  // namespace
}  // namespace sparge::test
