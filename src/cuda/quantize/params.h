// Arguments and workspace of the quantization pass on CUDA (issue 10): INT8 Q, INT8 smoothed K,
// the key mean and FP8 e4m3 V in the layouts of common/quant_layout.h, bit-identical to the CPU
// emulation (src/cpu/quantize.cc).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/quant_layout.h"
#include "sparge/status.h"

namespace sparge::cuda {

constexpr int kQuantMaxHeadDim = 256;  // a row is at most one warp of 16-byte chunks
constexpr int kQuantMinHeadDim = 16;   // a Q/K tile has at least one chunk per thread
constexpr int kQuantTileRows = 128;    // rows per CTA of the Q/K kernel; groups must divide it
constexpr int kQuantQkThreads = 256;   // threads per CTA of the Q/K kernel
constexpr int kV8TileKeys = 64;        // keys per CTA of the V kernel (one V8 box)
static_assert(kV8TileKeys % detail::kV8KeyAlign == 0 || detail::kV8KeyAlign % kV8TileKeys == 0,
              "a V tile must not straddle the padding rule");
static_assert(detail::kKeyMeanRun == 64, "key_value_runs maps one run to one thread sequence");

struct QuantizeParams {
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride[3], k_stride[3], v_stride[3];  // (batch, head, token) in elements
  int batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
  int q_rows, k_rows;      // rows per scale (powers of two dividing kQuantTileRows)
  int q_groups, k_groups;  // scales per (b, head)
  int num_runs;            // ⌈seq_k / kKeyMeanRun⌉
  int64_t v8_keys;         // V8 row length (seq_k padded)
  // Outputs (common/quant_layout.h).
  int8_t* q8;
  float* q_scale;
  int8_t* k8;
  float* k_scale;
  float* km;
  uint8_t* v8;      // null: no V codes or scales (QuantMode::kInt8), V not read
  float* v_scale;
  // Workspace: per run of kKeyMeanRun keys, the key sums (double) and |v| maxima.
  double* k_run_sum;  // [batch·heads_kv, num_runs, D]
  float* v_run_amax;  // [batch·heads_kv, num_runs, D]
  // Stage 1's reading of q and k, fused into this pass (sparse_attention's quantized calls; null
  // pooled_q: not asked): the key mean in double, then per block of kPoolQRows (q) or kPoolKRows
  // (smoothed k) rows the pooled row and self-similarity, as pool_sim.cuh defines them, in
  // PredictParams' arrays. Blocks of kPoolQRows and kPoolKRows rows (pooling_fusable).
  double* km_pool;    // [batch·heads_kv, D] Σ runs / Nk in double (the float km before rounding)
  double* pooled_q;   // [batch·heads_q, num_q_blocks, D]
  double* sim_q;      // [batch·heads_q, num_q_blocks]
  double* pooled_kt;  // [batch·heads_kv, D, num_k_blocks]
  double* sim_k;      // [batch·heads_kv, num_k_blocks]
  int num_q_blocks, num_k_blocks;
};

// Rows one step of the Q/K kernel's loads covers (its threads read whole rows of 16-byte chunks).
constexpr int qk_rows_per_step(int head_dim) { return kQuantQkThreads * 8 / head_dim; }

// The blocks Stage 1's fused pooling takes: the attention kernels' tiles (128 query rows, 64 key
// rows), compile-time so that each block's chunks are known registers.
constexpr int kPoolQRows = 128, kPoolKRows = 64;

// Whether Stage 1's pooling can ride on the Q/K kernel: those blocks, and the quantized kernel's
// head dims (the instances compiled with pooling).
constexpr bool pooling_fusable(int block_q, int block_k, int head_dim) {
  return block_q == kPoolQRows && block_k == kPoolKRows && (head_dim == 64 || head_dim == 128);
}

// Byte offsets of the workspace arrays, 256-byte aligned.
struct QuantizeWorkspace {
  std::size_t k_run_sum, v_run_amax, total;
};

inline QuantizeWorkspace quantize_workspace(int64_t batch, int64_t heads_kv, int64_t seq_k,
                                            int64_t head_dim) {
  auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  const std::size_t runs = static_cast<std::size_t>(detail::ceil_div(seq_k, detail::kKeyMeanRun));
  const std::size_t n = static_cast<std::size_t>(batch * heads_kv * head_dim) * runs;
  const std::size_t sum_bytes = align(n * sizeof(double));
  return {0, sum_bytes, sum_bytes + align(n * sizeof(float))};
}

// What quantized attention on CUDA takes from ExecContext.workspace: the quantization pass's
// outputs for `mode` (default granularity, common/quant_layout.h) and its scratch, byte offsets 256-byte
// aligned (the V8 rows and every buffer's TMA base need 16).
struct QuantAttentionWorkspace {
  std::size_t q, q_scale, k, k_scale, km, v8, v_scale, pass, total;
};

inline QuantAttentionWorkspace quant_attention_workspace(int64_t batch, int64_t heads_q,
                                                         int64_t heads_kv, int64_t seq_q,
                                                         int64_t seq_k, int64_t head_dim,
                                                         QuantMode mode) {
  auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  const detail::QuantizedCounts n =
      detail::quantized_counts(batch, heads_q, heads_kv, seq_q, seq_k, head_dim, {});
  QuantAttentionWorkspace w{};
  std::size_t at = 0;
  const auto take = [&](std::size_t bytes) {
    const std::size_t offset = at;
    at += align(bytes);
    return offset;
  };
  w.q = take(std::size_t(n.q));
  w.q_scale = take(sizeof(float) * std::size_t(n.q_scale));
  w.k = take(std::size_t(n.k));
  w.k_scale = take(sizeof(float) * std::size_t(n.k_scale));
  w.km = take(sizeof(float) * std::size_t(n.km));
  const bool with_v = detail::fp8_pv(mode);  // kInt8: no V codes (v8 and v_scale empty)
  w.v8 = take(with_v ? std::size_t(n.v8) : 0);
  w.v_scale = take(with_v ? sizeof(float) * std::size_t(n.v_scale) : 0);
  w.pass = take(quantize_workspace(batch, heads_kv, seq_k, head_dim).total);
  w.total = at;
  return w;
}

// Explicitly instantiated for __half and __nv_bfloat16 in quantize.cu. Four launches on the
// caller's stream, no allocation, no synchronisation.
template <typename T>
Status launch_quantize(const QuantizeParams& params, cudaStream_t stream);

}  // namespace sparge::cuda
