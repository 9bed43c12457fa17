// Times the CUDA quantization pass (src/cuda/quantize/, issue 10) with CUDA events: per shape,
// the median of --reps calls after --warmup calls, on inputs larger than L2 (50 MiB on an H200)
// unless --small. Prints one JSON line per shape (docs/bench-schema.md fields plus the bytes the
// pass moves, its GB/s, and the bytes of reading Q and K once, the floor of Stage 1's reading).
// Usage: bench_quantize [--reps N] [--warmup N] [--small]   (bench/gpu/bench_quantize.sh)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/quant_layout.h"
#include "cuda/quantize/params.h"
#include "sparge/sparge.h"

namespace {

#define BENCH_CHECK(call)                                                              \
  do {                                                                                 \
    cudaError_t e = (call);                                                            \
    if (e != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e));                  \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

struct Shape {
  int64_t B, Hq, Hkv, N, D;
};

void* device_alloc(std::size_t bytes) {
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, std::max<std::size_t>(bytes, 256)));
  return p;
}

void run_shape(const Shape& s, sparge::DType dtype, int reps, int warmup, const char* device,
               const char* commit, const char* date) {
  using namespace sparge;
  const std::size_t q_elems = s.B * s.Hq * s.N * s.D, kv_elems = s.B * s.Hkv * s.N * s.D;
  void* q = device_alloc(q_elems * 2);
  void* k = device_alloc(kv_elems * 2);
  void* v = device_alloc(kv_elems * 2);
  // Inputs: a byte pattern that is a finite value in fp16 and bf16 (0x3c3c), so no NaN path runs.
  BENCH_CHECK(cudaMemset(q, 0x3c, q_elems * 2));
  BENCH_CHECK(cudaMemset(k, 0x3c, kv_elems * 2));
  BENCH_CHECK(cudaMemset(v, 0x3c, kv_elems * 2));
  const detail::QuantGranularity g{};
  const detail::QuantizedCounts n = detail::quantized_counts(s.B, s.Hq, s.Hkv, s.N, s.N, s.D, g);
  cuda::QuantizedBuffers out;
  out.q = static_cast<int8_t*>(device_alloc(n.q));
  out.q_scale = static_cast<float*>(device_alloc(n.q_scale * 4));
  out.k = static_cast<int8_t*>(device_alloc(n.k));
  out.k_scale = static_cast<float*>(device_alloc(n.k_scale * 4));
  out.km = static_cast<float*>(device_alloc(n.km * 4));
  out.v8 = static_cast<uint8_t*>(device_alloc(n.v8));
  out.v_scale = static_cast<float*>(device_alloc(n.v_scale * 4));

  auto view = [&](void* data, int64_t heads) {
    TensorView t = TensorView::contiguous(data, dtype, Layout::kHND, s.B, heads, s.N, s.D);
    t.device = Device::kCUDA;
    return t;
  };
  const TensorView tq = view(q, s.Hq), tk = view(k, s.Hkv), tv = view(v, s.Hkv);
  const ProblemShape shape = problem_shape(tq, tk);
  SparseOptions opts;
  const detail::Problem p{tq, tk, tv, shape, opts, 1.0f};
  ExecContext ctx;
  ctx.workspace_bytes = cuda::quantize_workspace_size(shape);
  ctx.workspace = device_alloc(ctx.workspace_bytes);

  auto call = [&] {
    const Status st = cuda::quantize_inputs(p, out, g, ctx);
    if (!st.is_ok()) {
      std::fprintf(stderr, "quantize_inputs: %s\n", st.message().c_str());
      std::exit(1);
    }
  };
  for (int i = 0; i < warmup; ++i) call();
  BENCH_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK(cudaEventRecord(start));
    call();
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    BENCH_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  std::sort(ms.begin(), ms.end());
  const double median = reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);

  // Bytes: Q once; K and V twice (the key sums and |v| maxima, then the codes); the per-run
  // partials written and read back; codes and scales written.
  const int64_t runs = detail::ceil_div(s.N, detail::kKeyMeanRun);
  const double partials = double(s.B * s.Hkv * runs * s.D) * (8 + 4) * 2;
  const double read = 2.0 * q_elems + 4.0 * kv_elems + 4.0 * kv_elems + partials / 2 +
                      double(n.km + n.v_scale) * 4 * 2;
  const double written = double(n.q + n.k + n.v8) + 4.0 * double(n.q_scale + n.k_scale) +
                         partials / 2 + double(n.km + n.v_scale) * 4;
  const double floor_qk = 2.0 * (q_elems + kv_elems);  // reading Q and K once
  std::printf(
      "{\"date\": \"%s\", \"device\": \"%s\", \"commit\": \"%s\", \"impl\": \"sparge-quantize-pass\", "
      "\"workload\": \"constant\", \"dtype\": \"%s\", \"head_dim\": %lld, \"batch\": %lld, "
      "\"heads_q\": %lld, \"heads_kv\": %lld, \"seq_q\": %lld, \"seq_k\": %lld, \"causal\": false, "
      "\"sparsity\": null, \"ms\": %.4f, \"tops\": null, \"rel_l1\": null, \"cos_sim\": null, "
      "\"q_rows\": %d, \"k_rows\": %d, \"bytes_read\": %.0f, \"bytes_written\": %.0f, "
      "\"gbps\": %.1f, \"bytes_read_qk_once\": %.0f, \"ms_at_gbps_qk_once\": %.4f, \"reps\": %d}\n",
      date, device, commit, dtype_name(dtype), (long long)s.D, (long long)s.B, (long long)s.Hq,
      (long long)s.Hkv, (long long)s.N, (long long)s.N, median, g.q_rows, g.k_rows, read, written,
      (read + written) / (median * 1e6), floor_qk, floor_qk / ((read + written) / median), reps);
  std::fflush(stdout);

  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  for (void* ptr : {q, k, v, static_cast<void*>(out.q), static_cast<void*>(out.q_scale),
                    static_cast<void*>(out.k), static_cast<void*>(out.k_scale),
                    static_cast<void*>(out.km), static_cast<void*>(out.v8),
                    static_cast<void*>(out.v_scale), ctx.workspace})
    cudaFree(ptr);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50, warmup = 5;
  bool small = false;
  const char* commit = "unknown";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--commit") && i + 1 < argc) commit = argv[++i];
    else if (!std::strcmp(argv[i], "--small")) small = true;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device: nothing to time\n");
    return 77;
  }
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::localtime(&now));
  // B 1, 32 query heads: MHA and GQA 4:1, head dims 64/128; each input ≥ 64 MiB at N ≥ 8K, D 128.
  std::vector<Shape> shapes = {{1, 32, 32, 8192, 128},  {1, 32, 32, 32768, 128},
                               {1, 32, 8, 32768, 128},  {1, 32, 32, 131072, 128},
                               {1, 32, 32, 32768, 64},  {1, 24, 24, 75600, 128}};
  if (small) shapes = {{1, 2, 2, 4096, 128}};
  for (const Shape& s : shapes)
    for (const sparge::DType t : {sparge::DType::kBFloat16, sparge::DType::kFloat16})
      run_shape(s, t, reps, warmup, prop.name, commit, date);
  return 0;
}
