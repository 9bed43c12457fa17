// Arguments of the block-sparse attention kernel: plain pointers, element strides and runtime
// scalars, filled once by dispatch.cu (Arguments -> Params) and passed by value to the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/dense_mask.cuh"
#include "sparge/status.h"

namespace sparge::cuda {

// Per-head thresholds travel inside the kernel parameters (no host->device copy in the hot path).
constexpr int kMaxParamHeads = 256;

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  // Strides in elements, logical order (batch, head, token); channels are contiguous.
  int64_t q_stride[3], k_stride[3], v_stride[3], o_stride[3];
  int batch, heads_q, heads_kv, seq_q, seq_k;
  int group;            // heads_q / heads_kv
  // Row r sees key c iff key_lo <= c - r <= key_hi (geometry.h's band: causal, window; read by
  // the banded instances only; clamped to [-seq_q, seq_k], so an unbounded end never masks).
  int key_lo, key_hi;
  // Per batch entry, keys key_lengths[b] .. seq_k - 1 are padding (AttentionMask::key_lengths;
  // null: none); the band keeps its alignment to seq_k. Read once per CTA (key_end_of).
  const int32_t* key_lengths;
  // A dense attention mask with its tile classes (attn_mask.data null: none). Only the sm80
  // kernel's dense-mask instances read it (dispatch.cu routes such calls there); kept tiles of
  // class skipped are computed as all -inf, partial ones get the element mask.
  DenseMaskView attn_mask;
  float scale_log2;     // scale · log2(e): scores in log2 units
  const int32_t* mask_counts;   // [batch, heads_q, nq]
  const int32_t* mask_indices;  // padded: [batch, heads_q, nq, nk]; compact: row_offsets[rows]
  // Compact mask (BlockMask::row_offsets): [batch·heads_q·nq + 1]; null: the padded form.
  const int64_t* mask_row_offsets;
  int num_q_blocks, num_k_blocks;
  float* lse;                           // optional [batch, heads_q, seq_q]
  unsigned long long* pv_counters;      // optional [heads_q][2]: visited, skipped
  // λ per query head (log2 units); pv_lambda_uniform when per-head values are not given.
  float pv_lambda_uniform;
  bool pv_lambda_per_head;
  float pv_lambda[kMaxParamHeads];
};

#if defined(__CUDACC__)  // device helpers (host translation units include the struct only)
// The keys batch entry b's rows may see: [0, key_end). A length outside [0, seq_k] (the host
// cannot check device memory without a copy) is clamped. The rule of geometry.h's key_end (Stage 1
// and the CPU call that one), in int: routed through it, the sm80 kernel's spills grew from 176
// to 188 bytes at d128 (ptxas), which no run has measured, so the attention kernels keep this.
__device__ __forceinline__ int key_end_of(const AttnParams& p, int b) {
  if (p.key_lengths == nullptr) return p.seq_k;
  const int len = __ldg(p.key_lengths + b);
  return len < 0 ? 0 : (len > p.seq_k ? p.seq_k : len);
}
#endif

// The quantization pass's buffers the quantized kernel reads (common/quant_layout.h, default
// granularity): device pointers, all contiguous.
struct QuantOperands {
  const int8_t* q;         // [B, Hq, Nq, D]
  const float* q_scale;    // [B, Hq, Nq]
  const int8_t* k;         // [B, Hkv, Nk, D] of k - km
  const float* k_scale;    // [B, Hkv, k_groups]
  const uint8_t* v8;       // e4m3 [B, Hkv, D, v8_keys]
  const float* v_scale;    // [B, Hkv, D]
  const float* km;         // [B, Hkv, D]
  int k_groups;            // ⌈Nk / 16⌉
  int64_t v8_keys;         // Nk rounded up to 64
};

// The mma.sync kernel with INT8 Q·Kᵀ (QuantMode::kInt8): AttnParams (whose q, k and v are the
// inputs: v for P·V, q for the LSE's smoothing shift) and the pass's codes and scales. Derived, so
// that the kernel reads both kinds by the same names (a reference to its parameter would make it
// copy the parameter to local memory).
struct AttnParamsSm80Q8 : AttnParams {
  const int8_t* q8;      // [B, Hq, Nq, D]
  const int8_t* k8;      // [B, Hkv, Nk, D] of k - km
  const float* q_scale;  // [B, Hq, Nq]
  const float* k_scale;  // [B, Hkv, k_groups]
  const float* km;       // [B, Hkv, D]
  int k_groups;          // ⌈Nk / 16⌉
};

// Explicitly instantiated per (dtype, head dim, banded) in src/cuda/instances/: the mma.sync
// kernel (sm_80 and newer) and the wgmma kernel (sm_90a only).
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn(const AttnParams& params, cudaStream_t stream);
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90(const AttnParams& params, cudaStream_t stream);
// The warp-specialized TMA kernel (sm_90a; launch_sm90_ws.cuh), the default on sm_90; persistent:
// on its persistent grid (kernel_sm90_ws_persistent.cuh; dispatch.cu's persistent_grid decides).
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90ws(const AttnParams& params, cudaStream_t stream, bool persistent = false);
// Its quantized variant (launch_sm90_q8.cuh): T is the output's type; k, v of `params` unused.
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm90q8(const AttnParams& params, const QuantOperands& quant, cudaStream_t stream);
// The mma.sync kernel on INT8 Q and K codes, P·V in T (launch.cuh; QuantMode::kInt8, sm_80 and
// newer): quant's q, q_scale, k, k_scale, km, k_groups; v8 and v_scale unused.
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80q8(const AttnParams& params, const QuantOperands& quant, cudaStream_t stream);
// The two mma.sync kernels' instances that read a dense attention mask (params.attn_mask; kBanded
// true only): exact, and on INT8 Q/K codes.
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80dm(const AttnParams& params, cudaStream_t stream);
template <typename T, int kHeadDim, bool kBanded>
Status launch_attn_sm80q8dm(const AttnParams& params, const QuantOperands& quant, cudaStream_t stream);

}  // namespace sparge::cuda
