// Tile sizes, roles, register split and shared-memory layout of the warp-specialized sm_90a
// attention kernel (attn_fwd_sm90_ws), one place per (dtype, head dim): the kernel, the mainloop
// and the launcher read every number from here.
#pragma once

#include <cstdint>

#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

template <typename T, int kHeadDim_>
struct AttnTraitsSm90Ws {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // query rows per CTA = SparseOptions::block_q
  static constexpr int kBlockN = 64;   // keys per mask block = SparseOptions::block_k
  // Keys per consumer turn: up to kBlocksPerTurn consecutive entries of the row's kept-block
  // list (not necessarily adjacent blocks), each loaded as its own 64-row TMA box into one part
  // of a stage, so that S = Q·Kᵀ is one m64n(64·kBlocksPerTurn) GEMM and P·V one k = kTurnN
  // GEMM.
  // At one block per turn (m64n64) the softmax, the two turn hand-overs and the mbarrier waits of
  // every turn were amortized over a quarter of FA3's 128×176 tile: 448 TOPS at hd128; two blocks
  // gave 519 (docs/cuda.md). Three (m64n192, FA3's 176 rounded up to whole mask blocks) measured
  // at 8b18464 (bench/results/2026-12-03_NVIDIA-H200_sm90ws-8b18464_*): d64 +6% (337 -> 356, N 32K
  // dense), but d128 only +3% dense at 32K, -1% at 8K and -3% to -11% at block sparsity 0.75
  // (a row's short last turn wastes up to two blocks of GEMM work, and 2 stages hold fewer keys
  // in flight), so d128 keeps two. d128 at three needs S 96 + P 48 + O 64 registers per thread
  // (SASS max R237 of 240); four at d64 (n256) spills and makes ptxas serialize the wgmma
  // pipeline (C7512). d256 takes one (m64n64): its O accumulator alone is 128 registers per
  // thread, and S 32 + P 16 of one block bring the live set to 176 of 240; a second block (S 64 +
  // P 32) would leave 16 for addresses, the softmax state and the masks. A turn of one block is
  // still a GEMM of 64×64×256 per Q·Kᵀ and 64×256×64 per P·V, as much work per hand-over as two
  // blocks at d128.
  static constexpr int kBlocksPerTurn = kHeadDim == 256 ? 1 : kHeadDim == 128 ? 2 : 3;
  static constexpr int kTurnN = kBlocksPerTurn * kBlockN;
  // The exponentials' base moves only when a row's max passed it by more than 8 in log2 units
  // (P <= 256, well in range of bf16 and fp16, whose relative precision does not depend on the
  // magnitude), so that O is rescaled on few turns (OnlineSoftmax; 0: whenever the max moves,
  // which a random row at N 8K does on about half of its turns). Measured at d128 +1.1% (N 8K)
  // and +1.9% (32K), at d64 -1.6% to -1.7% (its three-block turns rescale less often anyway, and the
  // base's compare and selects come on top), so d64 keeps 0
  // (bench/results/2026-12-04_NVIDIA-H200_issue9-close_check.md).
  static constexpr int kLazyRescaleLog2 = kHeadDim == 64 ? 0 : 8;
  // Each thread sums its P into l (OnlineSoftmax; the quantized kernel takes l from its MMA).
  static constexpr bool kThreadRowSums = true;
  // The missing block of a row's short last turn: a TMA box entirely past seq_k (zeros, no
  // global read; the PTX ISA's zero fill applies to every element outside the tensor), or, if
  // false, block 0 of the turn again (see MainloopSm90Tma::load_kv_turn).
  static constexpr bool kZeroFillShortTurn = true;
  // WG0 = producer (one elected thread issues every TMA load), WG1-2 = consumers of 64 rows each;
  // within a consumer, warp w owns rows 16w..16w+15 (one λ group, as in the other kernels).
  static constexpr int kConsumers = kBlockM / 64;
  static constexpr int kThreads = (1 + kConsumers) * 128;
  static constexpr int kConsumerThreads = kConsumers * 128;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kSlabRows = 16;
  // The consumers take turns issuing their GEMMs (MmaTurn), so that one's softmax overlaps the
  // other's tensor work.
  static constexpr bool kPingPong = true;
  static constexpr int kMinBlocksPerSm = 1;
  // setmaxnreg split (FA3's for two consumer warpgroups and TMA loads): 24·128 + 240·256 =
  // 64512 of the SM's 65536 registers. ptxas compiles the kernel at 65536/384 -> 168.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // K/V ring: a stage holds the kTurnN keys of one turn, K and V, with separate full/empty
  // barriers (K of a stage is released after QKᵀ, V after P·V). As many stages as the 227 KiB
  // of shared memory hold, at most kMaxStages: d128 2 stages of 64 KiB (256 keys in flight; FA3
  // runs 2 stages of its 128×176 tiles) — three fit but measured equal or slower in every case
  // at 7ada588 (bench/results/2026-12-03_NVIDIA-H200_sm90ws-turns_check.md); d64 4 stages of
  // 48 KiB (768 keys); d256 2 stages of 64 KiB (128 keys in flight), the most that fit beside its
  // 64 KiB Q (a third would need 258 KiB; FA3 also runs 2 stages at hd256).
  static constexpr int kMaxStages = kHeadDim == 64 ? 4 : 2;
  static constexpr int kQBytes = kBlockM * kHeadDim * int(sizeof(T));
  static constexpr int kBlockBytes = kBlockN * kHeadDim * int(sizeof(T));  // one block of K (or V)
  static constexpr int kStageBytes = kBlocksPerTurn * kBlockBytes;         // K (or V) of a stage
  static constexpr int kColumnBlocks = kHeadDim / 64;  // TMA boxes per block (64 channels each)
  // Q + the ring + one atom for the barriers and turn slots + one atom of slack: the dynamic smem base is only
  // 16-byte aligned and the kernel rounds it up. d128: 162 KiB, d64: 210 KiB, d256: 194 KiB.
  static constexpr int kSmemLimit = 227 * 1024;  // sm_90's per-CTA opt-in maximum
  static constexpr int kFixedBytes = kQBytes + 2 * kSw128AtomBytes;
  static constexpr int kStagesFit = (kSmemLimit - kFixedBytes) / (2 * kStageBytes);
  static constexpr int kStages = kStagesFit < kMaxStages ? kStagesFit : kMaxStages;
  static constexpr int kSmemBytes = kFixedBytes + 2 * kStages * kStageBytes;

  // The persistent grid (kernel_sm90_ws_persistent.cuh): a second Q tile, where it fits, so
  // that the producer loads the next row's Q while the consumers still finish the current row and
  // stage its O in the current Q tile (d128 194 KiB, d64 226 KiB; d256 keeps one: 258 KiB).
  static constexpr int kPersistentQBuffers = kSmemBytes + kQBytes <= kSmemLimit ? 2 : 1;
  static constexpr int kPersistentSmemBytes = kSmemBytes + (kPersistentQBuffers - 1) * kQBytes;

  static_assert(sizeof(T) == 2, "the SW128 layout is written for 16-bit elements");
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "the turn and stage choices above are made for head dims 64, 128 and 256");
  static_assert(kSmemBytes <= kSmemLimit, "shared memory per CTA exceeds sm_90's 227 KiB");
  static_assert(kBlocksPerTurn >= 1 && kTurnN <= 256, "wgmma N is at most 256");
  static_assert(kStages >= 2, "the ring needs two stages in 227 KiB");
  static_assert(kConsumers == 2, "the ping-pong schedule is written for two consumer warpgroups");
  static_assert(kProducerRegs * 128 + kConsumerRegs * kConsumerThreads <= 65536,
                "setmaxnreg split exceeds the register file");
};

// What the producer tells the consumers about the turn it loaded into a stage: the turn's kept
// blocks (BlockTurnIter's entries, -1 past count), their count (0: the row keeps none) and
// whether it is the row's last turn. The producer writes it before its arrive on the stage's K
// full barrier; the consumers read it after the wait that tells them K landed, and before they
// release K, after which the producer may rewrite it. The consumers thereby never read the
// BlockMask from global memory themselves: those dependent loads sat on their critical path
// between turns (long-scoreboard stalls in the profile; +4-6% dense at hd128 on top of the
// softmax changes, bench/results/2026-12-04_NVIDIA-H200_ab-v3_check.md). One array of words, so
// that a consumer can copy it with one loop (MainloopSm90Tma::KeptTurn::read). (The bulk-copy
// engine or st.async would deliver it on the barrier like the TMA data, but both need a cluster
// launch: illegal instruction without one.)
template <int kBlocks>
struct TurnSlot {
  static constexpr int kCount = kBlocks, kLast = kBlocks + 1, kWords = kBlocks + 2;
  int32_t word[kWords];  // block[0..kBlocks), count, last
};

// Everything the kernel keeps in shared memory. Tiles are SW128 (wgmma_sm90.cuh) and each starts
// 1024-byte aligned, which the TMA's 128B swizzle and the wgmma descriptors (base offset 0) need.
// A K (or V) stage is one SW128 tile of kTurnN rows: column block cb holds rows 0..kTurnN-1, and
// block i of the turn lands in rows i·64..i·64+63 of every column block (one TMA box each), so
// that one descriptor with an 8-row stride of 1024 bytes spans all the turn's keys.
template <typename Traits>
struct SharedStorageSm90Ws {
  using T = typename Traits::Element;
  alignas(kSw128AtomBytes) T q[Traits::kBlockM * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T k[Traits::kStages][Traits::kTurnN * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T v[Traits::kStages][Traits::kTurnN * Traits::kHeadDim];
  TurnSlot<Traits::kBlocksPerTurn> turn[Traits::kStages];  // published with K of the stage
  uint64_t q_full;                   // Q landed (1 arrival + bytes)
  uint64_t k_full[Traits::kStages];  // K of the stage landed
  uint64_t v_full[Traits::kStages];
  uint64_t k_empty[Traits::kStages];  // every consumer warp is done with K of the stage
  uint64_t v_empty[Traits::kStages];
};

// The persistent grid's shared storage: the same ring, kPersistentQBuffers Q tiles, each with
// its full and empty barriers and the row it holds (q_row: the linear tile index the producer
// took from the schedule, -1 when the CTA has no row left), written before the arrive on q_full
// that publishes it. A Q tile is released (q_empty) once the consumers' O staged in it has been
// read by its TMA store.
template <typename Traits>
struct SharedStorageSm90WsPersistent {
  using T = typename Traits::Element;
  static constexpr int kQBuffers = Traits::kPersistentQBuffers;
  alignas(kSw128AtomBytes) T q[kQBuffers][Traits::kBlockM * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T k[Traits::kStages][Traits::kTurnN * Traits::kHeadDim];
  alignas(kSw128AtomBytes) T v[Traits::kStages][Traits::kTurnN * Traits::kHeadDim];
  TurnSlot<Traits::kBlocksPerTurn> turn[Traits::kStages];
  int32_t q_row[kQBuffers];
  uint64_t q_full[kQBuffers];
  uint64_t q_empty[kQBuffers];
  uint64_t k_full[Traits::kStages];
  uint64_t v_full[Traits::kStages];
  uint64_t k_empty[Traits::kStages];
  uint64_t v_empty[Traits::kStages];
};

}  // namespace sparge::cuda
