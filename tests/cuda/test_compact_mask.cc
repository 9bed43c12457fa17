// Compact block masks (BlockMask::row_offsets, issue 14 item 1) in the CUDA attention kernels:
// block_sparse_attention on a compact mask (rows packed, and rows with spare slots of junk) gives
// the padded mask's output, lse and λ counters bit for bit on every kernel (sm80, sm90, sm90ws; the
// quantized one where it runs); as Stage 1's output (every selection kernel: warp, CTA, long
// rows, every visible tile; sparse_attention's mask_out) it holds the padded form's rows, and a
// row with too few slots fails the call naming it. Needs a GPU: skipped with a message without.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace sparge::test {
namespace {

// A device copy of a host compact mask (counts, row_offsets, indices).
struct DeviceCompactMask {
  DeviceBuffer counts, offsets, indices;
  BlockMask mask;
  explicit DeviceCompactMask(const HostBlockMask& h) {
    counts = DeviceBuffer(sizeof(int32_t) * h.counts.size());
    offsets = DeviceBuffer(sizeof(int64_t) * h.row_offsets.size());
    indices = DeviceBuffer(sizeof(int32_t) * std::max<size_t>(h.indices.size(), 1));
    cudaMemcpy(counts.get(), h.counts.data(), counts.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(offsets.get(), h.row_offsets.data(), offsets.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(indices.get(), h.indices.data(), sizeof(int32_t) * h.indices.size(),
               cudaMemcpyHostToDevice);
    mask = h.view();
    mask.counts = static_cast<int32_t*>(counts.get());
    mask.indices = static_cast<int32_t*>(indices.get());
    mask.row_offsets = static_cast<int64_t*>(offsets.get());
    mask.device = Device::kCUDA;
  }
};

HostBlockMask with_spare_slots(const HostBlockMask& compact, int64_t spare) {
  return test::with_spare_slots(compact, spare, -1);
}

struct GpuRun {
  Status status;
  std::vector<float> out, lse;
  std::vector<unsigned long long> counters;
};

struct Problem {
  static constexpr int64_t B = 1, Hq = 4, Hkv = 2, N = 1000, D = 128;
  HostTensor hq = HostTensor::make(gaussian(B * Hq * N * D, 1), B, Hq, N, D, DType::kBFloat16,
                                   Layout::kHND);
  HostTensor hk = HostTensor::make(gaussian(B * Hkv * N * D, 2), B, Hkv, N, D, DType::kBFloat16,
                                   Layout::kHND);
  HostTensor hv = HostTensor::make(gaussian(B * Hkv * N * D, 3), B, Hkv, N, D, DType::kBFloat16,
                                   Layout::kHND);
  DeviceTensor q = DeviceTensor::upload(hq), k = DeviceTensor::upload(hk),
               v = DeviceTensor::upload(hv);
  SparseOptions opts;
  HostBlockMask padded;
  Problem() {
    opts.causal = true;
    opts.select = SelectMode::kTopK;
    opts.select_value.value = 0.3f;
    opts.sim_threshold.value = -1.0f;
    opts.pv_threshold.value = 8.0f;  // some λ skips: counters to compare
    padded = HostBlockMask(B, Hq, N, N, opts.block_q, opts.block_k);
    check(predict_block_mask(hq.view, hk.view, opts, padded.view()));
  }

  GpuRun run(const BlockMask& mask, QuantMode quant) {
    SparseOptions o = opts;
    o.quant = quant;
    HostTensor ho = HostTensor::poisoned(B, Hq, N, D, DType::kBFloat16, Layout::kHND);
    DeviceTensor out = DeviceTensor::upload(ho);
    const ExtrasOut extras(B * Hq * N, Hq);
    const std::size_t bytes = workspace_size(problem_shape(q.view, k.view), o, Device::kCUDA);
    DeviceBuffer workspace(bytes);
    ExecContext ctx;
    ctx.workspace = workspace.get();
    ctx.workspace_bytes = bytes;
    GpuRun r;
    r.status = block_sparse_attention(q.view, k.view, v.view, mask, o, out.view, extras.extras, ctx);
    cudaDeviceSynchronize();
    if (!r.status.is_ok()) return r;
    r.out = out.download();
    r.lse = extras.lse_host();
    r.counters = extras.counters_host();
    return r;
  }
};

void expect_same(const GpuRun& a, const GpuRun& b) {
  ASSERT_TRUE(a.status.is_ok()) << a.status.message();
  ASSERT_TRUE(b.status.is_ok()) << b.status.message();
  ASSERT_EQ(a.out.size(), b.out.size());
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
  EXPECT_EQ(a.counters, b.counters);
}

TEST(CudaCompactMask, Stage2ReadsItAsThePaddedFormOnEveryKernel) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  const AttentionStats stats = mask_stats(p.padded.view(), p.opts);
  ASSERT_GT(stats.sparsity(), 0.3);  // rows of different lengths
  const DeviceMask padded = DeviceMask::upload(p.padded);
  const HostBlockMask compact_host = p.padded.to_compact();
  const DeviceCompactMask compact(compact_host), spare(with_spare_slots(compact_host, 3));
  for (const char* kernel : {"sm80", "sm90", "sm90ws"}) {
    SCOPED_TRACE(kernel);
    const ScopedEnv pick("SPARGE_CUDA_KERNEL", kernel);
    const GpuRun want = p.run(padded.mask, QuantMode::kNone);
    if (!want.status.is_ok()) {  // a kernel this build or device does not run
      std::printf("[ info ] %s: %s\n", kernel, want.status.message().c_str());
      continue;
    }
    EXPECT_FALSE(any_nan(want.out));
    expect_same(p.run(compact.mask, QuantMode::kNone), want);
    expect_same(p.run(spare.mask, QuantMode::kNone), want);
  }
  if (sm90ws_runs()) {  // the quantized kernel
    const GpuRun want = p.run(padded.mask, QuantMode::kInt8Fp8);
    ASSERT_TRUE(want.status.is_ok()) << want.status.message();
    expect_same(p.run(compact.mask, QuantMode::kInt8Fp8), want);
  }
}

// A compact device mask with `slots(r, count)` slots per row, junk (-1) past the counts: the
// storage Stage 1 writes into (counts poisoned).
struct CompactOut {
  DeviceBuffer counts, offsets, indices;
  BlockMask mask;
  std::vector<int64_t> row_offsets;
  CompactOut(const BlockMask& like, const std::vector<int64_t>& slots) {
    row_offsets.assign(slots.size() + 1, 0);
    for (std::size_t r = 0; r < slots.size(); ++r) row_offsets[r + 1] = row_offsets[r] + slots[r];
    counts = DeviceBuffer(sizeof(int32_t) * slots.size());
    offsets = DeviceBuffer(sizeof(int64_t) * row_offsets.size());
    indices = DeviceBuffer(sizeof(int32_t) * std::max<int64_t>(row_offsets.back(), 1));
    cudaMemset(counts.get(), 0x7f, counts.bytes());
    cudaMemset(indices.get(), 0xff, indices.bytes());
    cudaMemcpy(offsets.get(), row_offsets.data(), offsets.bytes(), cudaMemcpyHostToDevice);
    mask = like;
    mask.counts = static_cast<int32_t*>(counts.get());
    mask.indices = static_cast<int32_t*>(indices.get());
    mask.row_offsets = static_cast<int64_t*>(offsets.get());
    mask.device = Device::kCUDA;
  }
  // The rows as a padded host mask (the first counts[r] slots of each).
  HostBlockMask download() const {
    HostBlockMask h(mask.batch, mask.heads, mask.seq_q, mask.seq_k, mask.block_q, mask.block_k);
    std::vector<int32_t> idx(std::size_t(std::max<int64_t>(row_offsets.back(), 1)));
    cudaMemcpy(h.counts.data(), counts.get(), counts.bytes(), cudaMemcpyDeviceToHost);
    cudaMemcpy(idx.data(), indices.get(), indices.bytes(), cudaMemcpyDeviceToHost);
    const int64_t nk = mask.num_k_blocks();
    for (std::size_t r = 0; r + 1 < row_offsets.size(); ++r)
      for (int32_t t = 0; t < h.counts[r] && t < row_offsets[r + 1] - row_offsets[r]; ++t)
        h.indices[r * nk + t] = idx[std::size_t(row_offsets[r] + t)];
    return h;
  }
};

// Stage 1 on the GPU into `mask` (padded or compact).
Status predict_into(const Problem& p, const SparseOptions& o, const BlockMask& mask) {
  const std::size_t bytes =
      workspace_size(problem_shape(p.q.view, p.k.view), o, Device::kCUDA, /*caller_mask=*/true);
  DeviceBuffer ws(std::max<std::size_t>(bytes, 1));
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = bytes;
  const Status s = predict_block_mask(p.q.view, p.k.view, o, mask, ctx);
  cudaDeviceSynchronize();
  return s;
}

// The rows of two masks agree: the same counts and kept blocks (slots past a count not read).
void expect_same_rows(const HostBlockMask& got, const HostBlockMask& want) {
  ASSERT_EQ(got.counts, want.counts);
  const BlockMask& w = want.view();
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int32_t t = 0; t < w.counts[r]; ++t)
      ASSERT_EQ(got.indices[r * w.num_k_blocks() + t], w.indices[r * w.num_k_blocks() + t])
          << "row " << r << " slot " << t;
}

TEST(CudaCompactMask, Stage1WritesTheRowsOfThePaddedForm) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  struct Case {
    const char* what;
    SelectMode select;
    float value;
    bool causal;
    const char* long_rows;  // SPARGE_CUDA_LONG_ROWS
  };
  // 16 key blocks: the warp kernel; "all": the long-row kernel; top-k 1: every visible tile.
  const Case cases[] = {{"top-k 0.3 causal", SelectMode::kTopK, 0.3f, true, nullptr},
                        {"TopCdf 0.9", SelectMode::kTopCdf, 0.9f, false, nullptr},
                        {"top-k 0.3 long rows", SelectMode::kTopK, 0.3f, true, "all"},
                        {"TopCdf 0.9 long rows", SelectMode::kTopCdf, 0.9f, false, "all"},
                        {"top-k 1 (every visible tile)", SelectMode::kTopK, 1.0f, true, nullptr}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const ScopedEnv long_rows("SPARGE_CUDA_LONG_ROWS", c.long_rows);
    SparseOptions o = p.opts;
    o.select = c.select;
    o.select_value.value = c.value;
    o.causal = c.causal;
    DeviceMask padded = DeviceMask::like(p.padded.view());
    ASSERT_TRUE(predict_into(p, o, padded.mask).is_ok());
    const HostBlockMask want = padded.download();
    const BlockMask& w = want.view();
    std::vector<int64_t> exact(std::size_t(w.rows())), spare(exact.size());
    for (int64_t r = 0; r < w.rows(); ++r) exact[r] = w.counts[r], spare[r] = w.counts[r] + 3;
    for (const auto* slots : {&exact, &spare}) {
      CompactOut out(p.padded.view(), *slots);
      const Status st = predict_into(p, o, out.mask);
      ASSERT_TRUE(st.is_ok()) << st.message();
      expect_same_rows(out.download(), want);
    }
    std::printf("[ compact ] %s: %lld rows, %lld kept blocks, equal to the padded form\n",
                c.what, (long long)w.rows(), (long long)mask_stats(w, o).tiles_computed);
  }
}

TEST(CudaCompactMask, Stage1NamesARowWithTooFewSlots) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  DeviceMask padded = DeviceMask::like(p.padded.view());
  ASSERT_TRUE(predict_into(p, p.opts, padded.mask).is_ok());
  const HostBlockMask want = padded.download();
  const BlockMask& w = want.view();
  std::vector<int64_t> slots(std::size_t(w.rows()));
  for (int64_t r = 0; r < w.rows(); ++r) slots[r] = w.counts[r];
  const int64_t short_row = 5;
  ASSERT_GT(slots[short_row], 0);
  slots[short_row] -= 1;
  CompactOut out(p.padded.view(), slots);
  const Status st = predict_into(p, p.opts, out.mask);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("mask.row_offsets give row 5 " + std::to_string(slots[short_row]) +
                              " slots, but Stage 1 keeps " +
                              std::to_string(w.counts[short_row])),
            std::string::npos)
      << st.message();
}

// Both stages with a compact mask to fill (mask_out): the output, LSE and the mask's rows equal
// those of the same call with a padded mask_out.
TEST(CudaCompactMask, SparseAttentionFillsACompactMaskOut) {
  SPARGE_SKIP_WITHOUT_GPU();
  Problem p;
  const auto run = [&](const BlockMask& mask_out, std::vector<float>* out,
                       std::vector<float>* lse) {
    HostTensor ho = HostTensor::poisoned(p.B, p.Hq, p.N, p.D, DType::kBFloat16, Layout::kHND);
    DeviceTensor o = DeviceTensor::upload(ho);
    DeviceBuffer l(sizeof(float) * p.B * p.Hq * p.N);
    cudaMemset(l.get(), 0xff, l.bytes());
    AttentionExtras extras;
    extras.lse = static_cast<float*>(l.get());
    const std::size_t bytes = workspace_size(problem_shape(p.q.view, p.k.view), p.opts,
                                             Device::kCUDA, /*caller_mask=*/true);
    DeviceBuffer ws(std::max<std::size_t>(bytes, 1));
    ExecContext ctx;
    ctx.workspace = ws.get();
    ctx.workspace_bytes = bytes;
    const Status s = sparse_attention(p.q.view, p.k.view, p.v.view, p.opts, o.view, extras, ctx,
                                      &mask_out);
    cudaDeviceSynchronize();
    EXPECT_TRUE(s.is_ok()) << s.message();
    *out = o.download();
    lse->resize(std::size_t(p.B * p.Hq * p.N));
    cudaMemcpy(lse->data(), l.get(), l.bytes(), cudaMemcpyDeviceToHost);
  };
  DeviceMask padded = DeviceMask::like(p.padded.view());
  std::vector<float> want_out, want_lse, got_out, got_lse;
  run(padded.mask, &want_out, &want_lse);
  const HostBlockMask want = padded.download();
  std::vector<int64_t> slots(std::size_t(want.view().rows()));
  for (std::size_t r = 0; r < slots.size(); ++r) slots[r] = want.counts[r] + 1;
  CompactOut out(p.padded.view(), slots);
  run(out.mask, &got_out, &got_lse);
  EXPECT_FALSE(any_nan(want_out));
  ASSERT_EQ(got_out.size(), want_out.size());
  EXPECT_EQ(std::memcmp(got_out.data(), want_out.data(), got_out.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(got_lse.data(), want_lse.data(), got_lse.size() * sizeof(float)), 0);
  expect_same_rows(out.download(), want);
}

}  // namespace
}  // namespace sparge::test
