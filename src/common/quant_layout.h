// The quantized mode's number rules and buffer layouts (docs/method.md "Quantized mode"), shared
// by the CPU emulation (src/cpu/quantize.cc) and the CUDA pass (src/cuda/quantize/), host and
// device code, so that both produce the same bytes:
//   Q   int8 [B, Hq, Nq, D]  (token-major, D contiguous), one fp32 scale per q_rows rows;
//   K   int8 [B, Hkv, Nk, D] of k − km, one fp32 scale per k_rows rows;
//   km  fp32 [B, Hkv, D], the per-channel token mean of k (summed in double, order below);
//   V8  e4m3 [B, Hkv, D, Nk8], kInt8Fp8 only (channel-major: keys contiguous, the K-major B
//       operand an FP8 wgmma needs for P·V), Nk8 = Nk rounded up to kV8KeyAlign, padding keys 0x00, one fp32
//       scale per channel [B, Hkv, D]. Inside every 16 keys the order is permuted (below).
#pragma once

#include <cstdint>

#include "common/geometry.h"
#include "sparge/types.h"

namespace sparge::detail {

// What each quantized mode rounds: both take Q and K as INT8 codes; only kInt8Fp8 takes V as
// e4m3 codes (V8) and P as e4m3 in P·V (kInt8 multiplies P and V at the inputs' 16-bit type).
SPARGE_HD constexpr bool quantizes_qk(QuantMode m) { return m != QuantMode::kNone; }
SPARGE_HD constexpr bool fp8_pv(QuantMode m) { return m == QuantMode::kInt8Fp8; }

constexpr float kInt8Max = 127.0f;
constexpr float kE4m3Max = 448.0f;
constexpr float kQuantScaleEpsilon = 1e-7f;  // keeps an all-zero group's scale positive
constexpr uint8_t kE4m3Nan = 0x7f;           // every NaN becomes this code (sign dropped: CPUs and
                                             // GPUs disagree on the sign of a generated NaN)

// Rows that share one INT8 scale (docs/method.md, "Quantized mode", has the measurements):
// per token for Q (a thread of an m64 wgmma already holds whole rows' scores, so a per-row
// scale costs one multiply per score and two registers), per 16 keys for K (one scale per thread
// per 16 score columns: a thread's columns 2t, 2t+1, 2t+8, 2t+9 of each 16 share it).
constexpr int kQuantQRows = 1;
constexpr int kQuantKRows = 16;

struct QuantGranularity {
  int q_rows = kQuantQRows;  // rows per Q scale; the groups start at row 0 of each (b, h)
  int k_rows = kQuantKRows;  // rows per K scale
};

// The key mean is Σ_runs (Σ_{t in run} k_t) / Nk: each run of kKeyMeanRun consecutive tokens is
// summed in double from 0 in token order, then the runs' sums are added in run order. The fixed
// order makes the fp32 mean bit-identical on every backend (a double sum is not associative).
constexpr int kKeyMeanRun = 64;

// V8 rows are padded to whole 64-key boxes: a TMA box of [D × 64 keys] per kept key block never
// leaves the row, and the row pitch (a multiple of 64 bytes) meets TMA's 16-byte stride rule.
constexpr int kV8KeyAlign = 64;

SPARGE_HD int64_t v8_keys(int64_t seq_k) { return ceil_div(seq_k, kV8KeyAlign) * kV8KeyAlign; }

// Position of key `c` in its V8 row. Within each 16 keys, positions 4t..4t+3 hold keys
// 2t, 2t+1, 2t+8, 2t+9: the score columns that thread t (lane % 4) of a warp holds in a wgmma
// fp32 accumulator are then exactly the k positions of its e4m3 A fragment (m64nNk32), so P is
// packed to FP8 in place, without shuffles (SageAttention2 stores V in the same order).
SPARGE_HD int64_t v8_position(int64_t c) {
  const int64_t k = c & 15, high = k >> 3, j = k & 7;
  return (c & ~int64_t(15)) + (j >> 1) * 4 + high * 2 + (j & 1);
}

// Element counts of the quantized buffers of one call (what a caller allocates on the device).
struct QuantizedCounts {
  int64_t q, q_scale, k, k_scale, km, v8, v_scale;
};

inline QuantizedCounts quantized_counts(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                        int64_t seq_q, int64_t seq_k, int64_t head_dim,
                                        const QuantGranularity& g) {
  const int64_t bq = batch * heads_q, bk = batch * heads_kv;
  return {bq * seq_q * head_dim, bq * ceil_div(seq_q, g.q_rows), bk * seq_k * head_dim,
          bk * ceil_div(seq_k, g.k_rows), bk * head_dim, bk * head_dim * v8_keys(seq_k),
          bk * head_dim};
}

}  // namespace sparge::detail
