// Stage 1's long-row selection on CUDA (select_long.cuh; issue 14, a million tokens): rows of
// more than kMaxSortedKeyBlocks (8192) key blocks, which one CTA cannot sort in shared memory,
// take S̃ per chunk of rows, then per row P̃ and its ranks in bands (a radix select, a sort in
// shared memory) under the same keep rule. On rows both paths take (SPARGE_CUDA_LONG_ROWS=all
// sends them to the long-row path; SPARGE_CUDA_LONG_ROW_BAND=512 narrows the bands) the masks
// and forced-tile counts are the shared-memory path's bit for bit, ties wider than a band
// included; beyond 8192 key blocks they equal the CPU's as the other Stage-1 tests do, and
// sparse_attention runs end to end; for sampled rows and the error target such rows are refused
// by name. Needs a GPU (but for the workspace sizes): skipped with a message without.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

struct GpuMask {
  HostBlockMask mask;
  std::vector<int64_t> forced;
};

// Stage 1 on the GPU alone (mask and forced tiles per head).
GpuMask predict_on_gpu(const HostTensor& q, const HostTensor& k, const SparseOptions& opts) {
  const TensorView& qv = q.view;
  GpuMask r{HostBlockMask(qv.batch, qv.heads, qv.tokens, k.view.tokens, opts.block_q,
                          opts.block_k),
            std::vector<int64_t>(std::size_t(qv.batch * qv.heads), -1)};
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k);
  DeviceMask dmask = DeviceMask::like(r.mask.view());
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes), forced(sizeof(int64_t) * r.forced.size());
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  Stage1Stats stats;
  stats.forced_tiles = static_cast<int64_t*>(forced.get());
  const Status s = predict_block_mask(dq.view, dk.view, dk.view, opts, dmask.mask, ctx, stats);
  EXPECT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r.mask = dmask.download();
  EXPECT_EQ(cudaMemcpy(r.forced.data(), forced.get(), forced.bytes(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return r;
}

SparseOptions options(SelectMode select, float value, bool causal, float sim) {
  SparseOptions o;
  o.causal = causal;
  o.causal_align = CausalAlign::kBottomRight;
  o.select = select;
  o.select_value.value = value;
  o.sim_threshold.value = sim;
  return o;
}

struct Shape {
  const char* workload;
  int64_t hq, hkv, nq, nk, d;
};

// One comparison: the long-row path (bands of `band` ranks, "" = kLongRowBand) against the
// shared-memory path on the same inputs and options; prints the sparsity.
void expect_long_rows_equal(const HostTensor& q, const HostTensor& k, const SparseOptions& o,
                            const char* band, const std::string& what) {
  SCOPED_TRACE(what + " band " + (*band ? band : "default"));
  const GpuMask shared = predict_on_gpu(q, k, o);
  GpuMask long_rows;
  {
    ScopedEnv on("SPARGE_CUDA_LONG_ROWS", "all");
    ScopedEnv narrow("SPARGE_CUDA_LONG_ROW_BAND", *band ? band : nullptr);
    long_rows = predict_on_gpu(q, k, o);
  }
  EXPECT_EQ(long_rows.mask.to_dense(), shared.mask.to_dense());
  EXPECT_EQ(long_rows.mask.counts, shared.mask.counts);
  EXPECT_EQ(long_rows.forced, shared.forced);
  const AttentionStats st = mask_stats(shared.mask.view(), o);
  std::printf("[ long rows ] %s band %s: sparsity %.3f, equal\n", what.c_str(),
              *band ? band : "default", st.sparsity());
}

TEST(CudaLongRows, EqualTheSharedMemoryPathBitForBit) {
  SPARGE_SKIP_WITHOUT_GPU();
  // A warp per row (300 keys: 5 blocks), a CTA per row (5000 keys: 79 blocks; 40000: 625).
  // Bands of 512 ranks make the 625-block rows take several bands, partial chunks carried over.
  const Shape shapes[] = {{"random", 2, 1, 300, 300, 64},
                          {"llm", 4, 2, 5000, 5000, 128},
                          {"random", 2, 2, 2048, 40000, 64}};
  for (const Shape& sh : shapes) {
    workloads::Workload w = named_workload(sh.workload, sh.hq, sh.hkv, sh.nq, sh.nk, sh.d, 7);
    const HostTensor q = HostTensor::make(w.q, 1, w.heads_q, w.seq_q, sh.d, DType::kBFloat16,
                                          Layout::kHND);
    const HostTensor k = HostTensor::make(w.k, 1, w.heads_kv, w.seq_k, sh.d, DType::kBFloat16,
                                          Layout::kHND);
    for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf})
      for (float value : select == SelectMode::kTopK ? std::vector<float>{0.1f, 0.6f, 1.0f}
                                                     : std::vector<float>{0.5f, 0.9f, 0.999f, 1.0f})
        for (bool causal : {false, true}) {
          // The gate forces every tile of random inputs: off there, so that ranks are kept.
          const float sim = std::string(sh.workload) == "random" ? -1.0f : 0.3f;
          const SparseOptions o = options(select, value, causal, sim);
          const std::string what = std::string(sh.workload) + " nk " + std::to_string(w.seq_k) +
                                   " " + enum_name(select) + " " + std::to_string(value) +
                                   (causal ? " causal" : "");
          for (const char* band : {"", "512"}) expect_long_rows_equal(q, k, o, band, what);
        }
  }
}

// Ties: three in four key blocks hold one constant token (equal pooled blocks, so equal S̃ and
// P̃: more equal ranks than a band holds, taken in key-block order), and a sharp query scale
// underflows P̃ to exactly 0 on many of the others (a second run of ties, at the bottom).
TEST(CudaLongRows, TiesWiderThanABandEqualTheSharedMemoryPath) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t Hq = 2, Hkv = 1, Nq = 512, Nk = 80000, D = 64, block_k = 64;
  std::vector<float> qv = gaussian(Hq * Nq * D, 41, 8.0f), kv = gaussian(Hkv * Nk * D, 42);
  const std::vector<float> constant = gaussian(D, 43);
  for (int64_t t = 0; t < Nk; ++t)
    if ((t / block_k) % 4 != 0)
      for (int64_t d = 0; d < D; ++d) kv[std::size_t(t * D + d)] = constant[std::size_t(d)];
  const HostTensor q = HostTensor::make(qv, 1, Hq, Nq, D, DType::kBFloat16, Layout::kHND);
  const HostTensor k = HostTensor::make(kv, 1, Hkv, Nk, D, DType::kBFloat16, Layout::kHND);
  for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf})
    for (float value : select == SelectMode::kTopK ? std::vector<float>{0.1f, 0.5f, 0.95f}
                                                   : std::vector<float>{0.5f, 0.99f, 1.0f})
      for (bool causal : {false, true}) {
        const SparseOptions o = options(select, value, causal, -1.0f);
        const std::string what = std::string("ties ") + enum_name(select) + " " +
                                 std::to_string(value) + (causal ? " causal" : "");
        for (const char* band : {"", "512"}) expect_long_rows_equal(q, k, o, band, what);
      }
}

TEST(CudaLongRows, RowsBeyondTheSharedMemorySortMatchTheCpu) {
  SPARGE_SKIP_WITHOUT_GPU();
  // 8195 key blocks of 64 (the last one partial): past the 8192 one CTA sorts.
  const int64_t Hq = 2, Hkv = 1, Nq = 200, Nk = 8194 * 64 + 17, D = 64;
  const HostTensor q = HostTensor::make(gaussian(Hq * Nq * D, 21), 1, Hq, Nq, D,
                                        DType::kBFloat16, Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(Hkv * Nk * D, 22), 1, Hkv, Nk, D,
                                        DType::kBFloat16, Layout::kHND);
  for (SelectMode select : {SelectMode::kTopK, SelectMode::kTopCdf}) {
    SCOPED_TRACE(enum_name(select));
    const SparseOptions o = options(select, select == SelectMode::kTopK ? 0.05f : 0.5f,
                                    /*causal=*/true, -1.0f);
    const MaskAgreement m = predict_on_cpu_and_gpu(q, k, o);
    ASSERT_TRUE(m.ok);
    std::printf("[ long rows ] nk %ld %s: identical blocks %.5f, kept %ld\n",
                long(m.ref.view().num_k_blocks()), enum_name(select), m.identical, long(m.kept));
    EXPECT_GE(m.identical, 0.995);
    EXPECT_GT(m.kept, 0);
  }
  // Both stages end to end on the long rows: the output of the GPU's mask against the
  // reference's output on its own mask (the masks agree, above).
  const HostTensor v = HostTensor::make(gaussian(Hkv * Nk * D, 23), 1, Hkv, Nk, D,
                                        DType::kBFloat16, Layout::kHND);
  const SparseOptions o = options(SelectMode::kTopK, 0.05f, true, -1.0f);
  const EndToEnd e = sparse_attention_on_cpu_and_gpu(q, k, v, o);
  ASSERT_TRUE(e.ok);
  EXPECT_FALSE(any_nan(e.out));
  EXPECT_EQ(e.got_mask.to_dense(), e.ref_mask.to_dense());
  const double err = measure::rel_l1(e.out, e.ref);
  std::printf("[ long rows ] sparse_attention nk %ld: rel L1 %.3g\n",
              long(e.ref_mask.view().num_k_blocks()), err);
  EXPECT_LT(err, 2e-2);
}

TEST(CudaLongRows, RefusedForSampledRows) {
  SPARGE_SKIP_WITHOUT_GPU();
  const int64_t Nq = 128, Nk = 8200 * 64, D = 64;
  const HostTensor q = HostTensor::make(gaussian(Nq * D, 31), 1, 1, Nq, D, DType::kBFloat16,
                                        Layout::kHND);
  const HostTensor k = HostTensor::make(gaussian(Nk * D, 32), 1, 1, Nk, D, DType::kBFloat16,
                                        Layout::kHND);
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k);
  SparseOptions o = options(SelectMode::kTopCdf, 0.9f, false, 0.3f);
  o.estimate = EstimateMode::kSampledRows;
  HostBlockMask like(1, 1, Nq, Nk, o.block_q, o.block_k);
  DeviceMask dmask = DeviceMask::like(like.view());
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), o, Device::kCUDA);
  DeviceBuffer ws(std::max<std::size_t>(ws_bytes, 1));
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  const Status s = predict_block_mask(dq.view, dk.view, o, dmask.mask, ctx);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("pooled estimate only"), std::string::npos) << s.message();
}

// Sizes only (no GPU needed): with the caller holding the mask the workspace leaves out its
// counts and padded indices (a call kept whole: SPARGE_ROW_CHUNK_BLOCKS of every query block),
// row chunks make a call that keeps its mask need less than one given a mask, and long rows
// (SPARGE_CUDA_LONG_ROWS=all at 128K keys) replace the score map by a chunk's scratch.
TEST(CudaWorkspace, CallerMaskLeavesOutTheMaskAndLongRowsTheScoreMap) {
  ProblemShape s;
  s.batch = 1, s.heads_q = 8, s.heads_kv = 8, s.seq_q = 131072, s.seq_k = 131072,
  s.head_dim = 128, s.dtype = DType::kBFloat16;
  SparseOptions o;
  o.estimate = EstimateMode::kPooled;  // the estimate whose rows take the long-row path
  o.select = SelectMode::kTopK;
  o.select_value.value = 0.1f;
  const std::size_t rows = 8 * 1024, nk = 2048;
  const double qkv = 3.0 * 8 * 131072 * 128 * 2;
  const std::size_t caller = workspace_size(s, o, Device::kCUDA, /*caller_mask=*/true);
  std::size_t whole = 0;
  {
    ScopedEnv one_chunk("SPARGE_ROW_CHUNK_BLOCKS", "1024");
    whole = workspace_size(s, o, Device::kCUDA);
  }
  EXPECT_EQ(whole - caller, rows * 4 + rows * nk * 4);  // counts and indices, 256-byte multiples
  EXPECT_GE(caller, rows * nk * 8);                      // the fp64 score map
  const std::size_t chunked = workspace_size(s, o, Device::kCUDA);
  EXPECT_LT(chunked, caller);
  EXPECT_LE(double(chunked), 0.10 * qkv);
  {
    ScopedEnv on("SPARGE_CUDA_LONG_ROWS", "all");
    const std::size_t long_rows = workspace_size(s, o, Device::kCUDA, true);
    EXPECT_LT(long_rows, caller - rows * nk * 8 + (std::size_t(96) << 20));
    std::printf("[ workspace ] 128K keys, H 8: whole %.1f MiB, caller mask %.1f MiB, row chunks "
                "%.1f MiB, long rows %.1f MiB (Q+K+V %.1f MiB)\n", whole / 1048576.0,
                caller / 1048576.0, chunked / 1048576.0, long_rows / 1048576.0,
                qkv / 1048576.0);
  }
}

}  // namespace
}  // namespace sparge::test
