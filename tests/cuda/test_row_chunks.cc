// Calls cut into chunks of query rows on CUDA (common/row_chunks.h; issue 14's memory target):
// sparse_attention without a caller's mask, forced into chunks of 1, 2 or 3 query blocks
// (SPARGE_ROW_CHUNK_BLOCKS) or of query heads (SPARGE_HEAD_CHUNK_HEADS, the cut CUDA prefers),
// gives the whole call's output, LSE, λ counters and Stage-1 stats bit for bit on every kernel it picks (exact and quantized, causal bottom-right with Nq < Nk and key
// lengths, a window, GQA), in a workspace of workspace_size() for the chunked plan; and a long
// call's workspace_size() is the chunked one. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/predict/params.h"
#include "gpu_test_util.h"

namespace sparge::test {
namespace {

struct GpuRun {
  std::vector<float> out, lse;
  std::vector<unsigned long long> counters;
  std::vector<int64_t> forced;
  Status status;
};

GpuRun run_on_gpu(const HostTensor& q, const HostTensor& k, const HostTensor& v,
               const SparseOptions& opts, const std::vector<int32_t>& lengths) {
  GpuRun r;
  const TensorView& qv = q.view;
  const int64_t B = qv.batch, H = qv.heads, Nq = qv.tokens, D = qv.head_dim;
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k),
               dv = DeviceTensor::upload(v);
  DeviceTensor dout =
      DeviceTensor::upload(HostTensor::poisoned(B, H, Nq, D, qv.dtype, Layout::kHND));
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes), lse(sizeof(float) * B * H * Nq), counters(16 * H),
      forced(sizeof(int64_t) * B * H), lens(sizeof(int32_t) * (lengths.size() + 1));
  cudaMemset(lse.get(), 0xff, lse.bytes());  // NaN poison
  cudaMemset(counters.get(), 0, counters.bytes());
  cudaMemset(forced.get(), 0xff, forced.bytes());
  AttentionMask attn;
  if (!lengths.empty()) {
    cudaMemcpy(lens.get(), lengths.data(), sizeof(int32_t) * lengths.size(),
               cudaMemcpyHostToDevice);
    attn.key_lengths = static_cast<const int32_t*>(lens.get());
    attn.device = Device::kCUDA;
  }
  AttentionExtras extras;
  extras.lse = static_cast<float*>(lse.get());
  extras.pv_counters = static_cast<unsigned long long*>(counters.get());
  extras.stage1.forced_tiles = static_cast<int64_t*>(forced.get());
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  r.status = sparse_attention(dq.view, dk.view, dv.view, attn, opts, dout.view, extras, ctx);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r.out = dout.download();
  r.lse.resize(B * H * Nq);
  r.counters.resize(2 * H);
  r.forced.resize(B * H);
  cudaMemcpy(r.lse.data(), lse.get(), lse.bytes(), cudaMemcpyDeviceToHost);
  cudaMemcpy(r.counters.data(), counters.get(), counters.bytes(), cudaMemcpyDeviceToHost);
  cudaMemcpy(r.forced.data(), forced.get(), forced.bytes(), cudaMemcpyDeviceToHost);
  return r;
}

struct Case {
  const char* name;
  int64_t hq, hkv, nq, nk, d;
  bool causal;
  int64_t window_left;
  QuantMode quant;
  bool lengths;
  // Query rows of the second half and every key a shared direction plus noise (self-similar
  // blocks), the first half's rows noise: early chunks leave the key side unused, a later one
  // pools it and the rest reuse it (PredictParams::key_side_needed). With the pooled estimate
  // the pooled key blocks reach the scores too.
  bool half_similar = false;
  EstimateMode estimate = EstimateMode::kAuto;
};

// n rows of d values: noise (similar = false) or a direction per head plus noise.
std::vector<float> rows_of(int64_t batch_heads, int64_t n, int64_t d, uint64_t seed,
                           int64_t similar_from) {
  std::vector<float> x = gaussian(batch_heads * n * d, seed);
  const std::vector<float> dir = gaussian(batch_heads * d, seed + 100);
  for (int64_t bh = 0; bh < batch_heads; ++bh)
    for (int64_t r = similar_from; r < n; ++r)
      for (int64_t c = 0; c < d; ++c) {
        float& v = x[(bh * n + r) * d + c];
        v = 2.0f * dir[bh * d + c] + 0.3f * v;
      }
  return x;
}

TEST(CudaRowChunks, EveryChunkSizeEqualsTheWholeCallBitForBit) {
  SPARGE_SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {"causal bottom-right, Nq < Nk, key lengths", 4, 2, 1000, 1500, 128, true, -1,
       QuantMode::kNone, true},
      {"window", 4, 4, 777, 777, 64, false, 300, QuantMode::kNone, false},
      {"quantized causal", 8, 2, 1100, 1100, 128, true, -1, QuantMode::kInt8Fp8, false},
      {"key side pooled by a later chunk, sampled rows", 4, 2, 1000, 1200, 128, false, -1,
       QuantMode::kNone, false, true, EstimateMode::kSampledRows},
      {"key side pooled by a later chunk, pooled estimate", 4, 2, 1000, 1200, 64, true, -1,
       QuantMode::kNone, true, true, EstimateMode::kPooled},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t B = 2;
    const HostTensor q =
        HostTensor::make(rows_of(B * c.hq, c.nq, c.d, 5, c.half_similar ? c.nq / 2 : c.nq), B, c.hq,
                         c.nq, c.d, DType::kBFloat16, Layout::kHND);
    const HostTensor k =
        HostTensor::make(rows_of(B * c.hkv, c.nk, c.d, 6, c.half_similar ? 0 : c.nk), B, c.hkv,
                         c.nk, c.d, DType::kBFloat16, Layout::kHND);
    const HostTensor v = HostTensor::make(gaussian(B * c.hkv * c.nk * c.d, 7), B, c.hkv, c.nk,
                                          c.d, DType::kBFloat16, Layout::kHND);
    SparseOptions o;
    o.causal = c.causal;
    o.causal_align = CausalAlign::kBottomRight;
    o.window_left = c.window_left;
    o.window_right = c.window_left >= 0 ? 100 : -1;
    o.select = SelectMode::kTopK;
    o.select_value.value = 0.3f;
    o.sim_threshold.value = 0.2f;
    o.pv_threshold.value = 5.0f;
    o.quant = c.quant;
    o.estimate = c.estimate;
    const std::vector<int32_t> lengths =
        c.lengths ? std::vector<int32_t>{int32_t(c.nk), int32_t(c.nk - 333)}
                  : std::vector<int32_t>{};
    GpuRun whole;
    {
      const ScopedEnv off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
      whole = run_on_gpu(q, k, v, o, lengths);
    }
    if (!whole.status.is_ok() && c.quant != QuantMode::kNone) {  // no quantized kernel here
      std::printf("[ info ] %s: %s\n", c.name, whole.status.message().c_str());
      continue;
    }
    ASSERT_TRUE(whole.status.is_ok()) << whole.status.message();
    EXPECT_FALSE(any_nan(whole.out));
    unsigned long long skipped = 0;
    for (int64_t h = 0; h < c.hq; ++h) skipped += whole.counters[2 * h + 1];
    int64_t forced = 0;
    for (int64_t f : whole.forced) forced += f;
    std::printf("[ row chunks ] %s: λ skipped %llu pairs, %lld tiles forced\n", c.name, skipped,
                (long long)forced);
    // The call as the environment cuts it, against the whole one.
    const auto expect_whole_call = [&] {
      const GpuRun got = run_on_gpu(q, k, v, o, lengths);
      ASSERT_TRUE(got.status.is_ok()) << got.status.message();
      EXPECT_EQ(std::memcmp(got.out.data(), whole.out.data(), 4 * whole.out.size()), 0);
      EXPECT_EQ(std::memcmp(got.lse.data(), whole.lse.data(), 4 * whole.lse.size()), 0);
      EXPECT_EQ(got.counters, whole.counters);
      EXPECT_EQ(got.forced, whole.forced);
    };
    for (const char* blocks : {"1", "2", "3"}) {
      SCOPED_TRACE(std::string("chunks of ") + blocks + " query blocks");
      const ScopedEnv on("SPARGE_ROW_CHUNK_BLOCKS", blocks);
      expect_whole_call();
    }
    // Head chunks (row_chunks.h, heads_per_memory_chunk): one KV-head group, then three query
    // heads (rounded down to whole groups), per batch entry.
    for (const char* heads : {"1", "3"}) {
      SCOPED_TRACE(std::string("head chunks of ") + heads + " query heads");
      const ScopedEnv rows_off("SPARGE_ROW_CHUNK_BLOCKS", nullptr);
      const ScopedEnv on("SPARGE_HEAD_CHUNK_HEADS", heads);
      expect_whole_call();
    }
  }
}

// The key side the first row chunk pools serves the later chunks (PredictParams::key_side_needed):
// its arrays must sit at the same workspace offsets whatever the chunk's rows, the last, shorter
// chunk included, and nothing sized by the rows may come before them. Host arithmetic only: runs
// without a GPU.
TEST(CudaRowChunks, KeySideOffsetsDoNotDependOnTheRows) {
  SparseOptions o;
  for (const EstimateMode estimate : {EstimateMode::kPooled, EstimateMode::kSampledRows}) {
    o.estimate = estimate;
    const ProblemShape full{1, 32, 8, 32768, 32768, 128, DType::kBFloat16};
    ProblemShape last = full;
    last.seq_q = 1000;  // a short last chunk
    const cuda::PredictWorkspace a = cuda::predict_workspace(full, o);
    const cuda::PredictWorkspace b = cuda::predict_workspace(last, o);
    EXPECT_EQ(a.km_partial, b.km_partial);
    EXPECT_EQ(a.km, b.km);
    EXPECT_EQ(a.pooled_kt, b.pooled_kt);
    EXPECT_EQ(a.sim_k, b.sim_k);
    EXPECT_EQ(a.key_side_needed, b.key_side_needed);
    EXPECT_GT(a.pooled_q, a.key_side_needed);  // the rows' arrays follow the key side
    EXPECT_GT(a.total, b.total);
  }
}

// The sampled_rows estimate's grid of a row chunk: its query blocks spread evenly over the CTAs
// (no short last CTA), and in one pass enough key splits to fill the GPU where the two-pass
// rule's floor would leave a quarter of it idle; whole calls of 4K-32K tokens at 32 heads keep
// the counts they had. Host arithmetic only: runs without a GPU.
TEST(CudaRowChunks, EstimateGridOfAChunkFillsTheGpu) {
  constexpr int kSlots = 4;  // 4 sampled rows: 32 query blocks per CTA at most
  for (int nq = 1; nq <= 600; ++nq) {
    const int per = cuda::sampled_row_blocks_per_cta(nq, kSlots);
    const int ctas = (nq + per - 1) / per;
    ASSERT_LE(per, 32) << nq;
    EXPECT_EQ(ctas, (nq + 31) / 32) << nq;           // as few CTAs as 128 slots allow
    EXPECT_GT(nq - (ctas - 1) * per, per - ctas) << nq;  // the last CTA is at most ctas-1 short
  }
  EXPECT_EQ(cuda::sampled_row_blocks_per_cta(86, kSlots), 29);
  EXPECT_EQ(cuda::sampled_row_blocks_per_cta(3, 256), 1);
  // (query blocks, key blocks) at 32 heads: whole calls of 4K, 8K, 16K, 32K tokens, and a row
  // chunk of 86 query blocks at 32K; the splits both rules give.
  struct Case {
    int nq, nk, one_pass, two_pass;
  };
  for (const Case c : {Case{32, 64, 8, 8}, Case{64, 128, 4, 4}, Case{128, 256, 2, 2},
                       Case{256, 512, 1, 1}, Case{86, 512, 8, 2}}) {
    const int per = cuda::sampled_row_blocks_per_cta(c.nq, kSlots);
    const int64_t ctas = int64_t((c.nq + per - 1) / per) * 32;
    EXPECT_EQ(cuda::sampled_row_key_splits(ctas, c.nk, kSlots, 128, true), c.one_pass) << c.nq;
    EXPECT_EQ(cuda::sampled_row_key_splits(ctas, c.nk, kSlots, 128, false), c.two_pass) << c.nq;
  }
  EXPECT_EQ(cuda::sampled_row_key_splits(1, 3, kSlots, 128, true), 3);  // one key block each
}

}  // namespace
}  // namespace sparge::test
