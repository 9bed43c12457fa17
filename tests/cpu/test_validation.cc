// Every error of the validation layer (src/common/validate.cc) and of the dispatcher, through the
// public entry points: the Status code and a message that names the argument.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sparge/sparge.h"

namespace sparge::test {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A valid GQA problem (q [1, 4, 40, 16], k/v [1, 2, 40, 16]) that each test breaks in one place.
struct Inputs {
  std::vector<float> qd = std::vector<float>(4 * 40 * 16, 0.5f);
  std::vector<float> kd = std::vector<float>(2 * 40 * 16, 0.25f);
  std::vector<float> vd = std::vector<float>(2 * 40 * 16, 1.0f);
  std::vector<float> od = std::vector<float>(4 * 40 * 16, NAN);
  TensorView q = view(qd, 4), k = view(kd, 2), v = view(vd, 2), o = view(od, 4);
  SparseOptions opts = options();
  HostBlockMask mask{1, 4, 40, 40, 16, 16};
  ExecContext ctx = reference();

  Inputs() { EXPECT_TRUE(fill_dense_mask(mask.view(), false, CausalAlign::kTopLeft).is_ok()); }

  static TensorView view(std::vector<float>& d, int64_t heads) {
    return TensorView::contiguous(d.data(), DType::kFloat32, Layout::kHND, 1, heads, 40, 16);
  }
  static SparseOptions options() {
    SparseOptions o;
    o.block_q = o.block_k = 16;
    return o;
  }
  static ExecContext reference() {
    ExecContext c;
    c.backend = Backend::kReference;
    return c;
  }
  Status attention() const {
    return block_sparse_attention(q, k, v, mask.view(), opts, o, {}, ctx);
  }
  Status both() const { return sparse_attention(q, k, v, opts, o, {}, ctx); }
  Status predict() const { return predict_block_mask(q, k, opts, mask.view(), ctx); }
};

void expect_error(const Status& s, const std::string& needle,
                  StatusCode code = StatusCode::kInvalidArgument) {
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_THAT(s.message(), HasSubstr(needle));
}

// The same error from every entry point that reads the broken argument.
void expect_everywhere(const std::function<void(Inputs&)>& breaker, const std::string& needle,
                       StatusCode code = StatusCode::kInvalidArgument, bool stage1_reads = true) {
  Inputs in;
  ASSERT_TRUE(in.attention().is_ok());
  breaker(in);
  SCOPED_TRACE(needle);
  expect_error(in.attention(), needle, code);
  expect_error(in.both(), needle, code);
  if (stage1_reads) expect_error(in.predict(), needle, code);
}

TEST(Validation, TheBaseProblemIsValid) {
  Inputs in;
  EXPECT_TRUE(in.attention().is_ok());
  EXPECT_TRUE(in.both().is_ok());
  EXPECT_TRUE(in.predict().is_ok());
  EXPECT_TRUE(validate(in.q, in.k, in.v, in.opts).is_ok());
}

TEST(Validation, TensorFields) {
  expect_everywhere([](Inputs& in) { in.q.dtype = static_cast<DType>(7); },
                    "q.dtype must be float32, float16 or bfloat16, got code 7");
  expect_everywhere([](Inputs& in) { in.k.device = static_cast<Device>(5); },
                    "k.device must be cpu or cuda, got code 5");
  expect_everywhere([](Inputs& in) { in.q.tokens = 0; }, "q.tokens must be >= 1, got 0");
  expect_everywhere([](Inputs& in) { in.k.batch = -1; }, "k.batch must be >= 1, got -1");
  expect_everywhere([](Inputs& in) { in.q.heads = 0; }, "q.heads must be >= 1");
  expect_everywhere([](Inputs& in) { in.q.head_dim = 0; }, "q.head_dim must be >= 1");
  expect_everywhere([](Inputs& in) { in.k.data = nullptr; }, "k.data must not be null");
  expect_everywhere([](Inputs& in) { in.q.stride_dim = 2; }, "q.stride_dim must be 1");
  expect_everywhere([](Inputs& in) { in.k.stride_token = -16; },
                    "k.stride_token must be >= 0, got -16");
  expect_everywhere([](Inputs& in) { in.v.stride_head = -1; }, "v.stride_head must be >= 0",
                    StatusCode::kInvalidArgument, false);
  expect_everywhere([](Inputs& in) { in.q.stride_token = 17; },
                    "q strides (2560, 640, 17, 1) reach element 2598 but the buffer holds 2560");
  expect_everywhere([](Inputs& in) { in.v.capacity = 100; }, "but the buffer holds 100",
                    StatusCode::kInvalidArgument, false);
}

// Found by fuzz/fuzz_c_abi: with no capacity (the C ABI has none), strides whose offsets pass
// int64 were accepted, and the CPU backend's offset arithmetic overflowed (UBSan) and read
// outside the buffer. Such a view describes no buffer at all.
TEST(Validation, StridesPastInt64) {
  expect_everywhere(
      [](Inputs& in) {
        in.q.stride_token = int64_t{1} << 60;  // 39 * 2^60 elements
        in.q.capacity = -1;
      },
      "q shape [1, 4, 40, 16] with strides (2560, 640, 1152921504606846976, 1) reaches past 2^63");
  expect_everywhere(
      [](Inputs& in) {
        in.k.stride_batch = int64_t{1} << 60;  // batch 1: never stepped, so this one is fine...
        in.k.stride_token = int64_t{1} << 60;  // ...but 39 * 2^60 is not
        in.k.capacity = -1;
      },
      "reaches past 2^63");
}

// Found by fuzz/fuzz_c_abi in CI: an axis of extent 1 may carry any stride, since it never steps,
// but the CPU backend formed the row's byte step (stride * element size) first, and a stride of
// 5e18 overflowed it (UBSan). A stride past 2^63 bytes is refused on every axis.
TEST(Validation, StrideBytesPastInt64OnAnAxisOfOne) {
  expect_everywhere(
      [](Inputs& in) {
        in.q.stride_batch = int64_t{5027642223525033718};  // batch 1
        in.q.capacity = -1;
      },
      "q.stride_batch = 5027642223525033718 elements is past 2^63 bytes");
}

// Found by fuzz/fuzz_c_abi: the mismatch message computed the mask's block counts as
// (seq + block - 1) / block, which overflowed for a seq near INT64_MAX.
TEST(Validation, MaskLengthNearInt64Max) {
  Inputs in;
  in.mask.mask.seq_k = INT64_MAX;
  expect_error(in.attention(), "mask shape [1, 4, 3, 576460752303423488] (seq_q 40, seq_k "
                               "9223372036854775807)");
  expect_error(in.predict(), "mask shape [1, 4, 3,");
}

TEST(Validation, ShapesAcrossTensors) {
  expect_everywhere(
      [](Inputs& in) {
        in.k.batch = 2;
        in.v.batch = 2;
        in.k.capacity = in.v.capacity = -1;
      },
      "k.batch must equal q.batch (1), got 2");
  expect_everywhere([](Inputs& in) { in.v.tokens = 39; },
                    "v shape must equal k shape [1, 2, 40, 16], got [1, 2, 39, 16]",
                    StatusCode::kInvalidArgument, false);
  expect_everywhere([](Inputs& in) { in.q.heads = 3; },
                    "q.heads (3) must be a multiple of k.heads (2) for GQA/MQA");
  expect_everywhere([](Inputs& in) { in.k.head_dim = 8; },
                    "k.head_dim and v.head_dim must equal q.head_dim (16), got 8");
  expect_everywhere([](Inputs& in) { in.k.dtype = DType::kFloat16; },
                    "k.dtype and v.dtype must equal q.dtype (float32), got float16");
  expect_everywhere([](Inputs& in) { in.v.device_index = 1; }, "k and v must be on q's device",
                    StatusCode::kInvalidArgument, false);
}

TEST(Validation, HeadDimAbove256IsUnsupported) {
  std::vector<float> q(300), k(300), v(300), o(300);
  const auto make = [](std::vector<float>& d) {
    return TensorView::contiguous(d.data(), DType::kFloat32, Layout::kHND, 1, 1, 1, 300);
  };
  SparseOptions opts;
  const Status s = sparse_attention(make(q), make(k), make(v), opts, make(o));
  expect_error(s, "q.head_dim must be <= 256, got 300", StatusCode::kUnsupported);
}

TEST(Validation, OutputTensor) {
  expect_everywhere([](Inputs& in) { in.o.dtype = DType::kBFloat16; },
                    "o.dtype must equal q.dtype (float32), got bfloat16",
                    StatusCode::kInvalidArgument, false);
  expect_everywhere([](Inputs& in) { in.o.tokens = 39; },
                    "o shape must equal q shape [1, 4, 40, 16], got [1, 4, 39, 16]",
                    StatusCode::kInvalidArgument, false);
  expect_everywhere([](Inputs& in) { in.o.device_index = 2; }, "o must be on q's device",
                    StatusCode::kInvalidArgument, false);
  expect_everywhere(
      [](Inputs& in) {
        in.o.stride_head = 8;
        in.o.capacity = -1;
      },
      "o strides (2560, 8, 16, 1) make distinct elements share memory",
      StatusCode::kInvalidArgument, false);
  expect_everywhere([](Inputs& in) { in.o.data = nullptr; }, "o.data must not be null",
                    StatusCode::kInvalidArgument, false);
}

TEST(Validation, OptionRanges) {
  const float nan = NAN;
  expect_everywhere([&](Inputs& in) { in.opts.scale = nan; }, "SparseOptions.scale must be finite");
  expect_everywhere([](Inputs& in) { in.opts.scale = -1.0f; }, "SparseOptions.scale");
  expect_everywhere([](Inputs& in) { in.opts.scale = INFINITY; }, "SparseOptions.scale");
  expect_everywhere([](Inputs& in) { in.opts.causal_align = static_cast<CausalAlign>(2); },
                    "SparseOptions.causal_align must be kTopLeft or kBottomRight, got code 2");
  expect_everywhere([](Inputs& in) { in.opts.select = static_cast<SelectMode>(3); },
                    "SparseOptions.select must be kTopCdf or kTopK, got code 3");
  expect_everywhere([](Inputs& in) { in.opts.estimate = static_cast<EstimateMode>(5); },
                    "SparseOptions.estimate must be kPooled, kSampledRows or kAuto, got code 5");
  // sample_rows is checked in either estimate mode (block_q is 16 here).
  expect_everywhere([](Inputs& in) { in.opts.sample_rows = 0; },
                    "SparseOptions.sample_rows must be in [1, block_q = 16], got 0");
  expect_everywhere(
      [](Inputs& in) {
        in.opts.estimate = EstimateMode::kSampledRows;
        in.opts.sample_rows = 17;
      },
      "SparseOptions.sample_rows must be in [1, block_q = 16], got 17");
  expect_everywhere([](Inputs& in) { in.opts.sample_rows = -3; },
                    "SparseOptions.sample_rows must be in [1, block_q = 16], got -3");
  expect_everywhere([](Inputs& in) { in.opts.quant = static_cast<QuantMode>(9); },
                    "SparseOptions.quant must be kNone, kInt8Fp8 or kInt8, got code 9");
  expect_everywhere([](Inputs& in) { in.opts.sim_threshold = {1.5f}; },
                    "SparseOptions.sim_threshold must be in [-1, 1], got 1.5");
  expect_everywhere([&](Inputs& in) { in.opts.sim_threshold = {nan}; },
                    "SparseOptions.sim_threshold must be in [-1, 1], got nan");
  expect_everywhere([](Inputs& in) { in.opts.select_value = {0.0f}; },
                    "SparseOptions.select_value (cdf_threshold) must be in (0, 1], got 0");
  expect_everywhere([](Inputs& in) { in.opts.select_value = {1.01f}; },
                    "SparseOptions.select_value (cdf_threshold) must be in (0, 1]");
  expect_everywhere([&](Inputs& in) { in.opts.select_value = {nan}; },
                    "SparseOptions.select_value (cdf_threshold) must be in (0, 1], got nan");
  expect_everywhere(
      [](Inputs& in) {
        in.opts.select = SelectMode::kTopK;
        in.opts.select_value = {0.0f};
      },
      "SparseOptions.select_value (topk) must be in (0, 1], got 0");
  expect_everywhere(
      [&](Inputs& in) {
        in.opts.select = SelectMode::kTopK;
        in.opts.select_value = {nan};
      },
      "SparseOptions.select_value (topk) must be in (0, 1], got nan");
  expect_everywhere([](Inputs& in) { in.opts.pv_threshold = {-0.5f}; },
                    "SparseOptions.pv_threshold must be in [0, inf], got -0.5");
  expect_everywhere([&](Inputs& in) { in.opts.pv_threshold = {nan}; },
                    "SparseOptions.pv_threshold must be in [0, inf], got nan");
  expect_everywhere([](Inputs& in) { in.opts.block_q = 48; },
                    "SparseOptions.block_q must be one of 16, 32, 64, 128, 256, got 48");
  expect_everywhere([](Inputs& in) { in.opts.block_k = 0; },
                    "SparseOptions.block_k must be one of 16, 32, 64, 128, 256, got 0");
  expect_everywhere([](Inputs& in) { in.opts.pv_group_rows = 0; },
                    "SparseOptions.pv_group_rows must be in [1, block_q = 16], got 0");
  expect_everywhere([](Inputs& in) { in.opts.pv_group_rows = 17; },
                    "SparseOptions.pv_group_rows must be in [1, block_q = 16], got 17");

  Inputs ok;  // +inf is a valid λ
  ok.opts.pv_threshold = {INFINITY};
  EXPECT_TRUE(ok.attention().is_ok());
  ok.opts.estimate = EstimateMode::kSampledRows;  // sample_rows = block_q: every row
  ok.opts.sample_rows = 16;
  EXPECT_TRUE(ok.attention().is_ok());
}

TEST(Validation, PerHeadOptionsNameTheHead) {
  const float sim[4] = {0.5f, 0.5f, NAN, 0.5f}, cdf[4] = {0.9f, 0.9f, 0.9f, 2.0f};
  const float pv[4] = {1.0f, NAN, 1.0f, 1.0f}, topk[4] = {0.5f, -0.1f, 0.5f, 0.5f};
  expect_everywhere(
      [&](Inputs& in) {
        in.opts.sim_threshold = {0.5f, sim};
      },
      "SparseOptions.sim_threshold[2] must be in [-1, 1], got nan");
  expect_everywhere(
      [&](Inputs& in) {
        in.opts.select_value = {0.5f, cdf};
      },
      "SparseOptions.select_value (cdf_threshold)[3] must be in (0, 1], got 2");
  expect_everywhere(
      [&](Inputs& in) {
        in.opts.pv_threshold = {0.5f, pv};
      },
      "SparseOptions.pv_threshold[1] must be in [0, inf], got nan");
  expect_everywhere(
      [&](Inputs& in) {
        in.opts.select = SelectMode::kTopK;
        in.opts.select_value = {0.5f, topk};
      },
      "SparseOptions.select_value (topk)[1] must be in (0, 1], got -0.1");
}

TEST(Validation, MaskGeometry) {
  Inputs in;
  HostBlockMask wrong(1, 4, 40, 80, 16, 16);
  expect_error(block_sparse_attention(in.q, in.k, in.v, wrong.view(), in.opts, in.o, {}, in.ctx),
               "mask shape [1, 4, 3, 5] (seq_q 40, seq_k 80) must equal [1, 4, 3, 3] (seq_q 40, "
               "seq_k 40) for blocks 16x16");
  expect_error(predict_block_mask(in.q, in.k, in.opts, wrong.view(), in.ctx),
               "mask shape [1, 4, 3, 5]");
  HostBlockMask heads(1, 2, 40, 40, 16, 16);
  expect_error(predict_block_mask(in.q, in.k, in.opts, heads.view(), in.ctx),
               "mask shape [1, 2, 3, 3]");
  expect_error(sparse_attention(in.q, in.k, in.v, in.opts, in.o, {}, in.ctx, &heads.view()),
               "mask shape [1, 2, 3, 3]");
  HostBlockMask tiles(1, 4, 40, 40, 32, 16);
  expect_error(predict_block_mask(in.q, in.k, in.opts, tiles.view(), in.ctx),
               "mask block geometry (block_q 32, block_k 16) must equal SparseOptions (block_q 16, "
               "block_k 16)");
  BlockMask null_mask = in.mask.view();
  null_mask.indices = nullptr;
  expect_error(block_sparse_attention(in.q, in.k, in.v, null_mask, in.opts, in.o, {}, in.ctx),
               "mask.counts and mask.indices must not be null");
  BlockMask cuda_mask = in.mask.view();
  cuda_mask.device = Device::kCUDA;
  expect_error(block_sparse_attention(in.q, in.k, in.v, cuda_mask, in.opts, in.o, {}, in.ctx),
               "mask must be on q's device (cpu:0), got cuda:0");
}

TEST(Validation, MaskContents) {
  Inputs in;
  in.mask.counts[5] = 4;  // nk = 3
  expect_error(in.attention(), "mask.counts[5] must be in [0, 3], got 4");
  in.mask.counts[5] = -1;
  expect_error(in.attention(), "mask.counts[5] must be in [0, 3], got -1");
  in.mask.counts[5] = 3;
  in.mask.indices[5 * 3 + 2] = 1;  // 0, 1, 1
  expect_error(in.attention(),
               "mask.indices of row 5 must be strictly ascending key-block "
               "indices in [0, 3), got 1 at position 2");
  in.mask.indices[5 * 3 + 2] = 3;
  expect_error(in.attention(), "got 3 at position 2");
  // An output mask is written by Stage 1, so its old contents do not matter.
  EXPECT_TRUE(in.predict().is_ok());
  EXPECT_EQ(in.mask.indices[5 * 3 + 2], 2);
}

TEST(Validation, BackendChoice) {
  Inputs in;
  in.ctx.backend = static_cast<Backend>(9);
  expect_error(in.attention(), "ExecContext.backend must be kAuto, kReference, kCpuFast or kCuda");
  in.ctx.backend = Backend::kCuda;
  expect_error(in.attention(), "ExecContext.backend kCuda needs cuda tensors, got cpu");
  expect_error(in.predict(), "ExecContext.backend kCuda needs cuda tensors");
  in.ctx.backend = Backend::kCpuFast;
  in.ctx.num_threads = -1;
  expect_error(in.attention(), "ExecContext.num_threads must be >= 0");
}

// CUDA tensors (host pointers, 16-byte aligned, never dereferenced: validation or the missing
// backend stops first).
struct CudaInputs : Inputs {
  CudaInputs() {
    for (TensorView* t : {&q, &k, &v, &o}) t->device = Device::kCUDA;
    mask.mask.device = Device::kCUDA;
  }
};

TEST(Validation, CudaTensorRules) {
  CudaInputs in;
  in.ctx.backend = Backend::kReference;
  expect_error(in.attention(),
               "ExecContext.backend kReference/kCpuFast needs cpu tensors, got cuda");
  in.ctx.backend = Backend::kAuto;
  in.k.stride_token = 18;
  in.k.capacity = -1;
  expect_error(in.attention(),
               "k.stride_token must be a multiple of 4 elements (16 bytes) on cuda, got 18");
  in.k.stride_token = 16;
  in.q.data = static_cast<char*>(in.q.data) + 4;
  in.q.capacity = -1;
  expect_error(in.attention(), "q.data must be 16-byte aligned on cuda");
}

TEST(Validation, CudaTensorsInACpuOnlyBuild) {
  if (build_info().find("cuda: not built") == std::string::npos)
    GTEST_SKIP() << "this build has the CUDA backend";
  CudaInputs in;
  in.ctx.backend = Backend::kAuto;
  const std::string needle = "this build of sparge has no CUDA backend";
  expect_error(in.attention(), needle, StatusCode::kUnsupported);
  expect_error(in.predict(), needle, StatusCode::kUnsupported);
  expect_error(in.both(), needle, StatusCode::kUnsupported);
  EXPECT_EQ(cuda_device_count(), 0);
}

// A build without the CUDA backend may well have had nvcc on PATH (CMake's SPARGE_WITH_CUDA=OFF,
// pip's SPARGE_WITH_CUDA=0): the texts name the switches that build it, not nvcc.
TEST(Validation, CpuOnlyBuildSaysHowToGetCudaWithoutBlamingNvcc) {
  const std::string info = build_info();
  if (info.find("cuda: not built") == std::string::npos)
    GTEST_SKIP() << "this build has the CUDA backend";
  CudaInputs in;
  in.ctx.backend = Backend::kAuto;
  const std::string stub = in.attention().message();
  for (const std::string& text : {info, stub}) {
    EXPECT_EQ(text.find("nvcc"), std::string::npos) << text;
    EXPECT_NE(text.find("configured without"), std::string::npos) << text;
    EXPECT_NE(text.find("SPARGE_WITH_CUDA=ON for CMake"), std::string::npos) << text;
    EXPECT_NE(text.find("SPARGE_WITH_CUDA=1 for pip"), std::string::npos) << text;
  }
}

}  // namespace
}  // namespace sparge::test
