// Quantization pass, first read of K and V: per run of kKeyMeanRun keys and channel, the key sum
// (double, token order from 0: the order of quant_layout.h) and max |v| (NaN-propagating); then
// per (b, kv head) and channel the fp32 key mean km = (Σ runs in run order) / Nk (and, for Stage
// 1's fused pooling, the same quotient in double) and the V scale
// s_v = max|v| / 448 (1 when 0); V is not read without V codes to make (v8 null: kInt8). Threads own two adjacent channels (one 32-bit load per token),
// D/2 threads per run, ⌊128 / (D/2)⌋ runs per CTA.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/math.cuh"
#include "cuda/quantize/params.h"

namespace sparge::cuda {

constexpr int kRunThreads = 128;

SPARGE_HD int runs_per_cta(int head_dim) { return kRunThreads / (head_dim / 2); }

// Two adjacent 16-bit values -> floats (exact widening).
template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p);
template <>
__device__ __forceinline__ float2 load_pair(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
template <>
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// grid (⌈num_runs / runs_per_cta⌉, batch·heads_kv), kRunThreads threads.
template <typename T>
__global__ void __launch_bounds__(kRunThreads) key_value_runs(const QuantizeParams p) {
  const int pairs = p.head_dim / 2;
  const int slot = threadIdx.x / pairs, pair = threadIdx.x % pairs;
  const int run = blockIdx.x * runs_per_cta(p.head_dim) + slot;
  if (slot >= runs_per_cta(p.head_dim) || run >= p.num_runs) return;
  const int bh = blockIdx.y, b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int t0 = run * detail::kKeyMeanRun, t1 = min(p.seq_k, t0 + detail::kKeyMeanRun);
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[1] + 2 * pair;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[1] + 2 * pair;
  const int64_t at = (int64_t(bh) * p.num_runs + run) * p.head_dim + 2 * pair;

  double sum0 = 0.0, sum1 = 0.0;  // adds in token order: the CPU's order, so the same doubles
  if (p.v8 == nullptr) {  // kInt8: no V codes, so no V scales either
#pragma unroll 8
    for (int t = t0; t < t1; ++t) {
      const float2 k2 = load_pair(gK + int64_t(t) * p.k_stride[2]);
      sum0 = __dadd_rn(sum0, double(k2.x));
      sum1 = __dadd_rn(sum1, double(k2.y));
    }
  } else {
    float amax0 = 0.0f, amax1 = 0.0f;
#pragma unroll 8
    for (int t = t0; t < t1; ++t) {
      const float2 k2 = load_pair(gK + int64_t(t) * p.k_stride[2]);
      const float2 v2 = load_pair(gV + int64_t(t) * p.v_stride[2]);
      sum0 = __dadd_rn(sum0, double(k2.x));
      sum1 = __dadd_rn(sum1, double(k2.y));
      amax0 = max_nan(amax0, fabsf(v2.x));
      amax1 = max_nan(amax1, fabsf(v2.y));
    }
    p.v_run_amax[at] = amax0;
    p.v_run_amax[at + 1] = amax1;
  }
  p.k_run_sum[at] = sum0;
  p.k_run_sum[at + 1] = sum1;
}

// Runs of one channel loaded per batch before they are added (in run order): one load at a time
// left the kernel waiting on memory, 81 us at N 32K, H 32, hd 128 on the H200 (512 runs per
// channel, 32 CTAs).
constexpr int kFinalizeBatch = 32;

// grid (batch·heads_kv), threads over channels.
__global__ void key_value_finalize(const QuantizeParams p) {
  const int bh = blockIdx.x;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    double total = 0.0;
    float amax = 0.0f;
    const int64_t base = int64_t(bh) * p.num_runs * p.head_dim + d;
    for (int r0 = 0; r0 < p.num_runs; r0 += kFinalizeBatch) {
      double sums[kFinalizeBatch];
      float maxima[kFinalizeBatch];
      // Past the last run: +0.0 and 0, which change neither (total starts at +0.0, so it is
      // never -0.0; amax >= 0), and keep the adds unconditional so that every load is issued first.
#pragma unroll
      for (int j = 0; j < kFinalizeBatch; ++j) {
        const bool in = r0 + j < p.num_runs;
        const int64_t at = base + int64_t(in ? r0 + j : 0) * p.head_dim;
        sums[j] = in ? p.k_run_sum[at] : 0.0;
        maxima[j] = in && p.v8 != nullptr ? p.v_run_amax[at] : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kFinalizeBatch; ++j) {
        total = __dadd_rn(total, sums[j]);
        amax = max_nan(amax, maxima[j]);
      }
    }
    const double mean = __ddiv_rn(total, double(p.seq_k));
    p.km[int64_t(bh) * p.head_dim + d] = __double2float_rn(mean);
    if (p.km_pool != nullptr) p.km_pool[int64_t(bh) * p.head_dim + d] = mean;
    if (p.v8 != nullptr)
      p.v_scale[int64_t(bh) * p.head_dim + d] =
          amax == 0.0f ? 1.0f : __fdiv_rn(amax, detail::kE4m3Max);
  }
}

}  // namespace sparge::cuda
