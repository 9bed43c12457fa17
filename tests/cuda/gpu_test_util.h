// Helpers of the GPU tests: device copies of host tensors and masks, poisoned outputs, the
// skip-without-GPU guard, and the fp32 CPU reference on exactly the values the GPU reads.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/validate.h"
#include "sparge/build_info.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "test_util.h"

namespace sparge::test {

#define SPARGE_SKIP_WITHOUT_GPU()                                                \
  do {                                                                           \
    if (::sparge::cuda_device_count() == 0)                                      \
      GTEST_SKIP() << "no CUDA device (or no driver): GPU test skipped";         \
  } while (0)

#define SPARGE_ASSERT_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, bytes ? bytes : 16) != cudaSuccess) ptr_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// The extras a GPU test reads back: the LSE of `rows` query rows (NaN-poisoned before the call)
// and the λ counters of `heads` query heads (zeroed), wired into `extras`.
struct ExtrasOut {
  DeviceBuffer lse, counters;
  AttentionExtras extras;
  ExtrasOut(int64_t rows, int64_t heads)
      : lse(sizeof(float) * rows), counters(sizeof(unsigned long long) * heads * 2) {
    cudaMemset(lse.get(), 0xff, lse.bytes());
    cudaMemset(counters.get(), 0, counters.bytes());
    extras.lse = static_cast<float*>(lse.get());
    extras.pv_counters = static_cast<unsigned long long*>(counters.get());
  }
  std::vector<float> lse_host() const {
    std::vector<float> h(lse.bytes() / sizeof(float));
    cudaMemcpy(h.data(), lse.get(), lse.bytes(), cudaMemcpyDeviceToHost);
    return h;
  }
  std::vector<unsigned long long> counters_host() const {
    std::vector<unsigned long long> h(counters.bytes() / sizeof(unsigned long long));
    cudaMemcpy(h.data(), counters.get(), counters.bytes(), cudaMemcpyDeviceToHost);
    return h;
  }
};

// A device copy of a HostTensor's storage with the same strides.
struct DeviceTensor {
  DeviceBuffer buf;
  TensorView view;
  HostTensor host;  // layout twin used to read the device data back

  static DeviceTensor upload(const HostTensor& h) {
    DeviceTensor d;
    d.host = h;
    const bool f32 = h.view.dtype == DType::kFloat32;
    const void* src = f32 ? static_cast<const void*>(h.f32.data()) : static_cast<const void*>(h.half.data());
    const std::size_t bytes = f32 ? h.f32.size() * 4 : h.half.size() * 2;
    d.buf = DeviceBuffer(bytes);
    cudaMemcpy(d.buf.get(), src, bytes, cudaMemcpyHostToDevice);
    d.view = h.view;
    d.view.data = d.buf.get();
    d.view.device = Device::kCUDA;
    return d;
  }
  // Logical HND float values currently on the device.
  std::vector<float> download() {
    const bool f32 = host.view.dtype == DType::kFloat32;
    void* dst = f32 ? static_cast<void*>(host.f32.data()) : static_cast<void*>(host.half.data());
    cudaMemcpy(dst, buf.get(), buf.bytes(), cudaMemcpyDeviceToHost);
    return host.to_hnd();
  }
};

struct DeviceMask {
  DeviceBuffer counts, indices;
  BlockMask mask;
  static DeviceMask like(const BlockMask& m) {
    DeviceMask d;
    d.counts = DeviceBuffer(sizeof(int32_t) * m.rows());
    d.indices = DeviceBuffer(sizeof(int32_t) * m.rows() * m.num_k_blocks());
    d.mask = m;
    d.mask.counts = static_cast<int32_t*>(d.counts.get());
    d.mask.indices = static_cast<int32_t*>(d.indices.get());
    d.mask.device = Device::kCUDA;
    // Poison: counts past nk and indices of -1 are caught by the comparisons.
    cudaMemset(d.counts.get(), 0x7f, d.counts.bytes());
    cudaMemset(d.indices.get(), 0xff, d.indices.bytes());
    return d;
  }
  static DeviceMask upload(const HostBlockMask& h) {
    DeviceMask d = like(h.view());
    cudaMemcpy(d.counts.get(), h.counts.data(), d.counts.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(d.indices.get(), h.indices.data(), d.indices.bytes(), cudaMemcpyHostToDevice);
    return d;
  }
  HostBlockMask download() const {
    HostBlockMask h(mask.batch, mask.heads, mask.seq_q, mask.seq_k, mask.block_q, mask.block_k);
    cudaMemcpy(h.counts.data(), counts.get(), counts.bytes(), cudaMemcpyDeviceToHost);
    cudaMemcpy(h.indices.data(), indices.get(), indices.bytes(), cudaMemcpyDeviceToHost);
    return h;
  }
};

// Whether calls in this process run the sm90ws kernel (the only one with head dim 256 and the
// quantized mainloop): dispatch.cu picks it on an sm_90 device when the build holds sm_90a code,
// unless SPARGE_CUDA_KERNEL names another kernel.
inline bool sm90ws_runs() {
  const char* env = std::getenv("SPARGE_CUDA_KERNEL");
  const bool chosen = env == nullptr || !std::strcmp(env, "") || !std::strcmp(env, "auto") ||
                      !std::strcmp(env, "sm90ws") || !std::strcmp(env, "sm90ws-persistent");
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  return SPARGE_CUDA_HAVE_SM90A && chosen && major == 9 && minor == 0;
}

inline std::vector<float> gaussian(std::size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

// The same values in fp32 (HND contiguous): the CPU reference then computes on exactly the
// numbers the GPU read, and writes an fp32 output that adds no rounding of its own.
inline HostTensor as_fp32(const HostTensor& t) {
  return HostTensor::make(t.to_hnd(), t.view.batch, t.view.heads, t.view.tokens,
                          t.view.head_dim, DType::kFloat32, Layout::kHND);
}

// Random mask over the causally allowed tiles: each kept with probability `keep`; rows listed
// in `empty_every` (every n-th row, 0 = none) keep nothing.
inline HostBlockMask random_mask(int64_t B, int64_t H, int64_t Nq, int64_t Nk, bool causal,
                                 CausalAlign align, double keep, int empty_every, uint64_t seed) {
  HostBlockMask full(B, H, Nq, Nk, 128, 64);
  EXPECT_TRUE(fill_dense_mask(full.view(), causal, align).is_ok());
  std::vector<uint8_t> dense = full.to_dense();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int64_t nk = full.mask.num_k_blocks();
  for (int64_t r = 0; r < full.mask.rows(); ++r)
    for (int64_t j = 0; j < nk; ++j) {
      uint8_t& cell = dense[r * nk + j];
      if (empty_every > 0 && r % empty_every == 0) cell = 0;
      else if (cell && u(rng) >= keep) cell = 0;
    }
  return HostBlockMask::from_dense(dense, B, H, Nq, Nk, 128, 64);
}

// Stage 1 on the CPU (the reference) and on the GPU with the same options: both masks, and the
// fraction of (query block, key block) flags on which they agree. `ok` is false (with a test
// failure recorded) when a call fails or the GPU mask is not a valid mask.
struct MaskAgreement {
  bool ok = false;
  HostBlockMask ref, got;
  double identical = 0.0;  // fraction of equal flags of the dense maps
  int64_t same = 0, flags = 0, kept = 0;
};

// With `v` (the error target reads it), Stage 1 takes v on both sides; `cpu_stats` / `gpu_stats`
// (host memory, [batch, heads_q] each) receive the Stage1Stats of either side when given.
struct HeadStats {
  std::vector<float> select_value, error_estimate;
  std::vector<int64_t> forced_tiles;
};

inline MaskAgreement predict_on_cpu_and_gpu(const HostTensor& q, const HostTensor& k,
                                            const SparseOptions& opts,
                                            const HostTensor* v = nullptr,
                                            HeadStats* cpu_stats = nullptr,
                                            HeadStats* gpu_stats = nullptr) {
  MaskAgreement r;
  const TensorView& qv = q.view;
  const std::size_t heads = std::size_t(qv.batch * qv.heads);
  for (HeadStats* st : {cpu_stats, gpu_stats})
    if (st) *st = {std::vector<float>(heads), std::vector<float>(heads), std::vector<int64_t>(heads)};
  Stage1Stats host_stats;
  if (cpu_stats)
    host_stats = {cpu_stats->select_value.data(), cpu_stats->error_estimate.data(),
                  cpu_stats->forced_tiles.data()};
  r.ref = HostBlockMask(qv.batch, qv.heads, qv.tokens, k.view.tokens, opts.block_q, opts.block_k);
  const Status cpu = v ? predict_block_mask(q.view, k.view, v->view, opts, r.ref.view(), {}, host_stats)
                       : predict_block_mask(q.view, k.view, opts, r.ref.view());
  EXPECT_TRUE(cpu.is_ok()) << cpu.message();
  if (!cpu.is_ok()) return r;
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k);
  DeviceMask dmask = DeviceMask::like(r.ref.view());
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  DeviceTensor dv = v ? DeviceTensor::upload(*v) : DeviceTensor{};
  DeviceBuffer d_select(heads * sizeof(float)), d_error(heads * sizeof(float)),
      d_forced(heads * sizeof(int64_t));
  Stage1Stats dev_stats;
  if (gpu_stats)
    dev_stats = {static_cast<float*>(d_select.get()), static_cast<float*>(d_error.get()),
                 static_cast<int64_t*>(d_forced.get())};
  const Status gpu = v ? predict_block_mask(dq.view, dk.view, dv.view, opts, dmask.mask, ctx, dev_stats)
                       : predict_block_mask(dq.view, dk.view, opts, dmask.mask, ctx);
  EXPECT_TRUE(gpu.is_ok()) << gpu.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (!gpu.is_ok()) return r;
  if (gpu_stats) {
    EXPECT_EQ(cudaMemcpy(gpu_stats->select_value.data(), d_select.get(), heads * sizeof(float),
                         cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(gpu_stats->error_estimate.data(), d_error.get(), heads * sizeof(float),
                         cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(gpu_stats->forced_tiles.data(), d_forced.get(), heads * sizeof(int64_t),
                         cudaMemcpyDeviceToHost), cudaSuccess);
  }
  r.got = dmask.download();
  const Status valid = detail::validate_mask_contents(r.got.view());
  EXPECT_TRUE(valid.is_ok()) << valid.message();
  if (!valid.is_ok()) return r;
  const std::vector<uint8_t> a = r.got.to_dense(), b = r.ref.to_dense();
  for (size_t i = 0; i < a.size(); ++i) {
    r.same += a[i] == b[i];
    r.kept += b[i];
  }
  r.flags = int64_t(a.size());
  r.identical = r.flags ? double(r.same) / double(r.flags) : 1.0;
  r.ok = true;
  return r;
}

// Both stages (sparse_attention) on the reference backend (fp32 copies of the rounded inputs) and
// on the GPU with the same options: both masks and both outputs (logical HND). `ok` is false
// (with a test failure recorded) when a call fails.
struct EndToEnd {
  bool ok = false;
  HostBlockMask ref_mask, got_mask;
  std::vector<float> out, ref;
};

inline EndToEnd sparse_attention_on_cpu_and_gpu(const HostTensor& q, const HostTensor& k,
                                                const HostTensor& v, const SparseOptions& opts) {
  EndToEnd r;
  const TensorView& qv = q.view;
  const int64_t B = qv.batch, H = qv.heads, Nq = qv.tokens, Nk = k.view.tokens, D = qv.head_dim;
  HostTensor q32 = as_fp32(q), k32 = as_fp32(k), v32 = as_fp32(v);
  HostTensor o32 = HostTensor::poisoned(B, H, Nq, D, DType::kFloat32, Layout::kHND);
  r.ref_mask = HostBlockMask(B, H, Nq, Nk, opts.block_q, opts.block_k);
  ExecContext ref_ctx;
  ref_ctx.backend = Backend::kReference;
  const Status cpu = sparse_attention(q32.view, k32.view, v32.view, opts, o32.view, {}, ref_ctx,
                                      &r.ref_mask.view());
  EXPECT_TRUE(cpu.is_ok()) << cpu.message();
  if (!cpu.is_ok()) return r;
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k), dv = DeviceTensor::upload(v);
  DeviceTensor dout = DeviceTensor::upload(HostTensor::poisoned(B, H, Nq, D, qv.dtype, Layout::kHND));
  const std::size_t ws_bytes = workspace_size(problem_shape(q.view, k.view), opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  DeviceMask dmask = DeviceMask::like(r.ref_mask.view());
  const Status gpu = sparse_attention(dq.view, dk.view, dv.view, opts, dout.view, {}, ctx, &dmask.mask);
  EXPECT_TRUE(gpu.is_ok()) << gpu.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (!gpu.is_ok()) return r;
  r.got_mask = dmask.download();
  r.out = dout.download();
  r.ref = o32.to_hnd();
  r.ok = true;
  return r;
}

// The GPU tests' workloads by name: "video" (a frames × 8 × 8 grid, nq = nk = frames·64, one
// KV head per query head), "llm" (language-like, nq = nk) or anything else: random Gaussian.
inline workloads::Workload named_workload(const std::string& name, int64_t hq, int64_t hkv,
                                          int64_t nq, int64_t nk, int64_t d, uint64_t seed) {
  if (name == "video") return workloads::video_grid(1, hq, nq / 64, 8, 8, d, seed);
  if (name == "llm") return workloads::language_like(1, hq, hkv, nq, d, seed);
  return workloads::random_gaussian(1, hq, hkv, nq, nk, d, seed);
}

// The largest |lse − want| over rows, 0 where both are −inf (a row that sees no key), ∞ on NaN.
inline double lse_max_error(const std::vector<float>& got, const std::vector<float>& want) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_empty = std::isinf(got[i]) && got[i] < 0 && std::isinf(want[i]) && want[i] < 0;
    const double e = both_empty ? 0.0 : std::fabs(double(got[i]) - want[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst;
}

// sparse_attention on the device with an attention mask whose pointers are device memory: q, k,
// v uploaded, the output and LSE poisoned (NaN), the predicted mask into a poisoned device mask
// of `geometry`, the workspace workspace_size(shape, attn_mask, ...) says, the output in
// `layout`. Read back after.
struct MaskedGpuRun {
  Status status = Status::ok();
  HostBlockMask mask;
  std::vector<float> out, lse;
};

inline MaskedGpuRun masked_sparse_attention_on_gpu(const HostTensor& q, const HostTensor& k,
                                                   const HostTensor& v,
                                                   const AttentionMask& attn_mask,
                                                   const SparseOptions& opts,
                                                   const BlockMask& geometry, Layout layout) {
  MaskedGpuRun r;
  const TensorView& qv = q.view;
  DeviceTensor dq = DeviceTensor::upload(q), dk = DeviceTensor::upload(k),
               dv = DeviceTensor::upload(v);
  DeviceTensor dout = DeviceTensor::upload(
      HostTensor::poisoned(qv.batch, qv.heads, qv.tokens, qv.head_dim, qv.dtype, layout));
  DeviceBuffer dlse(sizeof(float) * qv.batch * qv.heads * qv.tokens);
  cudaMemset(dlse.get(), 0xff, dlse.bytes());  // NaN
  const std::size_t ws_bytes =
      workspace_size(problem_shape(qv, k.view), attn_mask, opts, Device::kCUDA);
  DeviceBuffer ws(ws_bytes);
  ExecContext ctx;
  ctx.workspace = ws.get();
  ctx.workspace_bytes = ws_bytes;
  DeviceMask dmask = DeviceMask::like(geometry);
  r.status = sparse_attention(dq.view, dk.view, dv.view, attn_mask, opts, dout.view,
                              AttentionExtras{static_cast<float*>(dlse.get())}, ctx, &dmask.mask);
  if (!r.status.is_ok()) return r;
  if (cudaDeviceSynchronize() != cudaSuccess) {
    r.status = Status::internal("cudaDeviceSynchronize failed after sparse_attention");
    return r;
  }
  r.mask = dmask.download();
  r.out = dout.download();
  r.lse.resize(qv.batch * qv.heads * qv.tokens);
  cudaMemcpy(r.lse.data(), dlse.get(), dlse.bytes(), cudaMemcpyDeviceToHost);
  return r;
}

// Names of tests parameterized by (case, quant mode): "<index>_<mode>" ("3_int8", "3_int8_fp8"),
// so that a filter can pick one mode (e.g. '*_int8' for kInt8's cases).
template <typename Case>
std::string test_name_with_mode(const ::testing::TestParamInfo<std::tuple<Case, QuantMode>>& info) {
  return std::to_string(info.index) + "_" + enum_name(std::get<1>(info.param));
}

}  // namespace sparge::test
