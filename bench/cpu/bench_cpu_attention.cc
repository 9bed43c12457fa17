// CPU attention benchmarks: the fast backend (dense mask and random block masks) next to
// OpenBLAS SGEMM, the machine's reference rate for dense fp32 GFLOP/s, measured in one run.
//
// Counters: GFLOP/s is dense-equivalent (4·B·H·Nq·Nk·D / time, whatever the mask skips);
// `sparsity` is the fraction of tiles the mask skips; `time_vs_dense` is this case's time over
// the dense case's (same shape and dtype, measured once per process before the sparse runs) and
// `target_ratio` = (1 − sparsity) / 0.8, the goal for time_vs_dense. `cpu_ms` is the process CPU
// time per iteration divided by the thread count: on a machine shared with other jobs it is the
// time the run would take with its cores to itself (wall time counts the stolen slices).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/fp_convert.h"
#include "sparge/sparge.h"
#include "workloads/measure.h"

#if SPARGE_HAVE_BLAS
#include <cblas.h>
#endif

namespace {

using sparge::DType;

struct Shape {
  int64_t B = 1, H = 8, N = 4096, D = 128;
  double flops() const { return 4.0 * B * H * N * N * D; }
};

// Inputs of one shape and dtype, generated once per process (N(0, 1), fixed seed).
struct Problem {
  Shape shape;
  DType dtype;
  std::vector<float> f32[4];      // q, k, v, o when fp32
  std::vector<uint16_t> bits[4];  // q, k, v, o when fp16/bf16
  sparge::TensorView view[4];

  Problem(const Shape& s, DType t) : shape(s), dtype(t) {
    const int64_t n = s.B * s.H * s.N * s.D;
    std::mt19937_64 rng(42);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int i = 0; i < 4; ++i) {
      void* data;
      if (t == DType::kFloat32) {
        f32[i].resize(n);
        for (float& x : f32[i]) x = dist(rng);
        data = f32[i].data();
      } else {
        bits[i].resize(n);
        for (uint16_t& x : bits[i])
          x = t == DType::kFloat16 ? sparge::detail::float_to_half_bits(dist(rng))
                                   : sparge::detail::float_to_bf16_bits(dist(rng));
        data = bits[i].data();
      }
      view[i] = sparge::TensorView::contiguous(data, t, sparge::Layout::kHND, s.B, s.H, s.N, s.D);
    }
  }
};

Problem& problem(DType t) {
  static std::map<DType, Problem> cache;
  auto it = cache.find(t);
  if (it == cache.end()) it = cache.try_emplace(t, Shape{}, t).first;
  return it->second;
}

double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

int thread_count() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

sparge::SparseOptions options() {
  sparge::SparseOptions o;
  o.block_q = 128;
  o.block_k = 64;
  o.pv_threshold.value = INFINITY;  // time the mask alone: no P·V skipping
  return o;
}

// Every query block keeps round((1 − sparsity)·nk) key blocks chosen at random (ascending).
sparge::HostBlockMask block_mask(const Shape& s, double sparsity) {
  const sparge::SparseOptions o = options();
  sparge::HostBlockMask m(s.B, s.H, s.N, s.N, o.block_q, o.block_k);
  const int64_t nk = m.view().num_k_blocks();
  const int64_t keep = std::max<int64_t>(1, std::llround((1.0 - sparsity) * nk));
  std::mt19937_64 rng(7);
  std::vector<int32_t> cols(nk);
  for (int64_t r = 0; r < m.view().rows(); ++r) {
    std::iota(cols.begin(), cols.end(), 0);
    std::shuffle(cols.begin(), cols.end(), rng);
    std::sort(cols.begin(), cols.begin() + keep);
    m.counts[r] = static_cast<int32_t>(keep);
    std::copy(cols.begin(), cols.begin() + keep, m.indices.begin() + r * nk);
  }
  return m;
}

bool run_attention(Problem& p, const sparge::BlockMask& mask) {
  sparge::ExecContext ctx;
  ctx.backend = sparge::Backend::kCpuFast;
  return sparge::block_sparse_attention(p.view[0], p.view[1], p.view[2], mask, options(), p.view[3],
                                        {}, ctx)
      .is_ok();
}

// Median of three timed dense runs, once per dtype: the denominator of time_vs_dense.
double dense_seconds(DType t) {
  static std::map<DType, double> cache;
  auto it = cache.find(t);
  if (it != cache.end()) return it->second;
  Problem& p = problem(t);
  const sparge::HostBlockMask mask = block_mask(p.shape, 0.0);
  const double ms = sparge::measure::median_ms([&] { run_attention(p, mask.view()); }, 3, 0);
  return cache[t] = ms * 1e-3;
}

// Arguments: dtype code, sparsity in percent.
void BM_SpargeCpu(benchmark::State& state) {
  const DType t = static_cast<DType>(state.range(0));
  const double sparsity = state.range(1) / 100.0;
  Problem& p = problem(t);
  const sparge::HostBlockMask mask = block_mask(p.shape, sparsity);
  const double dense_s = sparsity > 0 ? dense_seconds(t) : 0.0;
  double seconds = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!run_attention(p, mask.view())) state.SkipWithError("block_sparse_attention failed");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(s);
    seconds += s;
  }
  const Shape& sh = p.shape;
  const double iters = static_cast<double>(state.iterations());
  const double per_iter = seconds / iters;
  state.counters["cpu_ms"] = (process_cpu_seconds() - cpu0) / iters / thread_count() * 1e3;
  const double actual = sparge::mask_stats(mask.view(), false, {}).sparsity();
  state.counters["GFLOP/s"] = sh.flops() / per_iter * 1e-9;
  state.counters["sparsity"] = actual;
  state.counters["B"] = sh.B;
  state.counters["H"] = sh.H;
  state.counters["N"] = sh.N;
  state.counters["D"] = sh.D;
  if (sparsity > 0) {
    state.counters["time_vs_dense"] = per_iter / dense_s;
    state.counters["target_ratio"] = (1.0 - actual) / 0.8;
  }
  state.SetLabel(std::string(sparge::dtype_name(t)));
}
BENCHMARK(BM_SpargeCpu)
    ->ArgNames({"dtype", "sparsity_pct"})
    ->Args({static_cast<int>(DType::kFloat32), 0})
    ->Args({static_cast<int>(DType::kBFloat16), 0})
    ->Args({static_cast<int>(DType::kFloat32), 50})
    ->Args({static_cast<int>(DType::kFloat32), 75})
    ->Args({static_cast<int>(DType::kFloat32), 90})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

#if SPARGE_HAVE_BLAS
// C[M×N] = A[M×K]·B[K×N] (row-major, B transposed as in S = Q·Kᵀ), all BLAS threads.
void BM_OpenBlasSgemm(benchmark::State& state) {
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> a(M * K), b(N * K), c(M * N);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K,
                0.0f, c.data(), N);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cpu_ms"] = (process_cpu_seconds() - cpu0) /
                             static_cast<double>(state.iterations()) / thread_count() * 1e3;
  state.counters["M"] = M;
  state.counters["N"] = N;
  state.counters["K"] = K;
}
BENCHMARK(BM_OpenBlasSgemm)
    ->ArgNames({"M", "N", "K"})
    ->Args({4096, 4096, 128})
    ->Args({2048, 2048, 2048})
    ->UseRealTime()  // rates per wall second, as for the attention cases
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);
#endif

}  // namespace

BENCHMARK_MAIN();
