// Tile sizes, roles, register split, parameters and shared-memory layout of the quantized
// warp-specialized sm_90a attention kernel (attn_fwd_sm90_q8): INT8 Q·Kᵀ, FP8 e4m3 P·V, on the
// pipeline of attn_fwd_sm90_ws (the same roles, turns, ring and TurnSlot; traits_sm90_ws.cuh
// says why each number is what it is there). The kernel reads the buffers of the quantization
// pass (common/quant_layout.h): Q and K int8 token-major, V8 e4m3 channel-major.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/attention/params.h"
#include "cuda/attention/traits_sm90_ws.cuh"
#include "cuda/common/wgmma_sm90_q8.cuh"

namespace sparge::cuda {

// T: the output's element type (the inputs were fp16 or bf16 before quantization).
template <typename T, int kHeadDim_>
struct AttnTraitsSm90Q8 {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  // Keys per turn as in the bf16 kernel (traits_sm90_ws.cuh): two 64-key blocks at d128, where S
  // is an m64n128 s32 accumulator (64 registers), P 16 (e4m3), O 64 and the turn's P·V result
  // 64 (the two-level accumulation below): 208 of the 240 registers; three at d64, where a
  // turn's softmax (per key, the same work at either head dim) must hide behind GEMMs half as
  // long: S 96, P 24, O 32, the turn's P·V 32.
  static constexpr int kBlocksPerTurn = kHeadDim == 64 ? 3 : 2;
  // Two-level accumulation (mainloop_sm90_q8.cuh): each turn's P·V in its own registers, added to
  // O in fp32. Without it (P·V straight into O, rescaled as in the bf16 kernel) the error against
  // fp32 grew from 0.0383 at N 8K to 0.0390 at 32K, with it 0.0382 to 0.0387; speed within
  // ±4% (bench/results/2026-12-04_NVIDIA-H200_quant-ab_check.md).
  static constexpr bool kTwoLevel = true;
  // l from the tensor cores: per k step of P·V one more wgmma (m64n8k32) multiplies P by a tile
  // of ones in shared memory, into a turn's row sums added to l as the turn's P·V is to O. l then
  // sums the e4m3-rounded P that O sums (O / l weighs V's rows by weights that add up to 1, where
  // the unrounded sum missed by the rounding's mean), and the 64 FADDs per thread and turn of the
  // sum leave the consumer's path (OnlineSoftmax's kThreadRowSums = false). Needs kTwoLevel: the
  // sums start from zero each turn.
  static constexpr bool kThreadRowSums = false;
  static constexpr int kTurnN = kBlocksPerTurn * kBlockN;
  // P = 448 · 2^(s - m) must stay within e4m3's 448: the base is always the running max.
  static constexpr int kLazyRescaleLog2 = 0;
  static constexpr bool kZeroFillShortTurn = true;
  static constexpr int kConsumers = kBlockM / 64;
  static constexpr int kThreads = (1 + kConsumers) * 128;
  static constexpr int kConsumerThreads = kConsumers * 128;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kSlabRows = 16;
  // The consumers take turns issuing their GEMMs (MmaTurn), so that one's softmax overlaps the
  // other's tensor work (without it: -7% to +11% by shape, no net gain; same record).
  static constexpr bool kPingPong = true;
  static constexpr int kMinBlocksPerSm = 1;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // Q and K rows are kHeadDim bytes: one SW128 row at d128, one SW64 row at d64 (the swizzle
  // whose row is the whole 8-bit row; the TMA boxes and the wgmma descriptors follow it).
  static constexpr int kQkRowBytes = kHeadDim;
  static constexpr int kQkAtomBytes = 8 * kQkRowBytes;  // 8 rows: the swizzle period
  static constexpr int kQBytes = kBlockM * kHeadDim;
  static constexpr int kKStageBytes = kTurnN * kHeadDim;
  // V8 of one block: kHeadDim channel rows of 64 keys (64 bytes): an SW64 tile, one TMA box.
  static constexpr int kVBlockBytes = kHeadDim * kBlockN;
  static constexpr int kVStageBytes = kBlocksPerTurn * kVBlockBytes;
  // Half the bytes per key of the bf16 kernel: four stages (512 keys in flight at d128, 768 at
  // d64) in 146 KiB / 104 KiB.
  static constexpr int kStages = 4;
  // The row sums' B operand: 8 rows of 64 e4m3 ones (one SW64 atom; every byte the same, so the
  // swizzle does not matter), written once before the role split.
  static constexpr int kOnesBytes = kSw64AtomBytes;
  static constexpr int kSmemBytes = kQBytes + kStages * (kKStageBytes + kVStageBytes) +
                                    kSw128AtomBytes + 2 * kSw128AtomBytes;
  // P = 2^(t - m) scaled by 448 (= 2^kProbLog2Scale) before its e4m3 rounding, so that P in
  // [0, 1] uses the whole e4m3 range (its smallest normal is 2^-6); l sums the same scaled P,
  // so the factor cancels in O = acc / l.
  static constexpr float kProbLog2Scale = 8.807354922057604f;  // log2(448)

  static_assert(kHeadDim == 64 || kHeadDim == 128,
                "the quantized kernel is written for head dims 64 and 128 (8-bit rows of one "
                "SW64 / SW128 swizzle row)");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA exceeds sm_90's 227 KiB");
  static_assert(kConsumers == 2, "the ping-pong schedule is written for two consumer warpgroups");
  static_assert(kTwoLevel || kThreadRowSums, "the MMA's row sums start from zero every turn");
};

// The plain parameters (o, strides, shape, mask, λ; q read for the LSE only, k and v unused), the tensor maps of the
// quantized Q, K and V8, and their scales (common/quant_layout.h, default granularity: one Q
// scale per row, one K scale per 16 keys, one V scale per channel).
struct AttnParamsSm90Q8 {
  AttnParams attn;
  CUtensorMap tma_q, tma_k, tma_v;
  const float* q_scale;  // [B, Hq, seq_q]
  const float* k_scale;  // [B, Hkv, k_groups]
  const float* v_scale;  // [B, Hkv, D]
  const float* km;       // [B, Hkv, D], the key mean (the LSE's shift)
  int k_groups;          // ⌈seq_k / 16⌉
};

// Shared memory: Q and K as swizzled tiles of kHeadDim-byte rows (K of a stage: block i of the turn in
// rows 64i..64i+63), V8 as one SW64 tile per block (channel rows of 64 keys), barriers and turn
// slots as in SharedStorageSm90Ws.
template <typename Traits>
struct SharedStorageSm90Q8 {
  alignas(kSw128AtomBytes) int8_t q[Traits::kQBytes];
  alignas(kSw128AtomBytes) int8_t k[Traits::kStages][Traits::kKStageBytes];
  alignas(kSw128AtomBytes) uint8_t v[Traits::kStages][Traits::kBlocksPerTurn][Traits::kVBlockBytes];
  alignas(kSw128AtomBytes) uint8_t ones[Traits::kOnesBytes];  // e4m3 1.0 (0x38) in every byte
  TurnSlot<Traits::kBlocksPerTurn> turn[Traits::kStages];
  uint64_t q_full;
  uint64_t k_full[Traits::kStages];
  uint64_t v_full[Traits::kStages];
  uint64_t k_empty[Traits::kStages];
  uint64_t v_empty[Traits::kStages];
};
}  // namespace sparge::cuda
