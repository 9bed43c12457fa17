// Mainloop of the warp-specialized sm_90a attention kernel (attn_fwd_sm90_ws):
//   load(): the producer thread walks the CTA's BlockMask row in turns of up to kBlocksPerTurn
//           kept blocks and TMA-loads Q once, then K and V of every turn (one 64-row box per
//           block and 64 channels) into a kStages ring (full/empty mbarriers per stage), with
//           the turn's kept blocks in the stage's TurnSlot.
//   mma():  a consumer warpgroup (64 query rows) takes the turns from the slots; per turn t it issues
//           S[t] = Q·K[t]ᵀ (m64n·kTurnN) and O += P[t-1]·V[t-1] (k = kTurnN) as two wgmma
//           groups, then masks each 64-key block, applies the λ rule per block and
//           exponentiates S[t] while P[t-1]·V[t-1] still runs, then rescales O and packs P[t].
//           The two consumers take turns issuing their GEMMs (named barriers, ping-pong): one's
//           softmax runs while the other's GEMMs do. When all four warps of a consumer skip
//           every block of a turn (λ rule, causal or tail masking), its P·V is not issued.
// The math per block (apply_mask, OnlineSoftmax, pack_probs) is the sm90 kernel's; a turn of
// several blocks gives the same m, l and O as one turn per block, up to rounding (one
// exponentiation base).
#pragma once

#include <cuda.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/attention/block_iter.cuh"
#include "cuda/attention/mainloop_sm80.cuh"
#include "cuda/attention/mainloop_sm90.cuh"
#include "cuda/attention/params.h"
#include "cuda/attention/softmax.cuh"
#include "cuda/attention/traits_sm90_ws.cuh"
#include "cuda/common/mbarrier_sm90.cuh"
#include "cuda/common/named_barriers.cuh"
#include "cuda/common/tma_sm90.cuh"
#include "cuda/common/warpgroup_sm90.cuh"
#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

// The plain parameters and the tensor maps of Q, K and V (boxes of 64 channels × a block's rows)
// and of O (64 channels × 64 rows, one consumer's), encoded by launch_sm90_ws.cuh.
struct AttnParamsSm90Ws {
  AttnParams attn;
  CUtensorMap tma_q, tma_k, tma_v, tma_o;
};

// The CTA's work: one BlockMask row = query block qb of (batch b, query head h).
struct WorkTile {
  int qb, h, hk, b, q0;
  int key_end;  // key_end_of(p, b): keys at or past it are masked (padding, or past seq_k)
  int64_t mask_row;
};

template <typename Traits>
__device__ __forceinline__ WorkTile work_tile(const AttnParams& p, int qb, int h, int b) {
  WorkTile w;
  w.qb = qb;
  w.h = h;
  w.b = b;
  w.hk = h / p.group;
  w.q0 = qb * Traits::kBlockM;
  // Padding keys are masked, not skipped: the TMA reads them (one tensor map serves every batch
  // entry), so a non-finite v row of a padding key in a kept tile reaches P·V as 0·v.
  w.key_end = key_end_of(p, b);
  w.mask_row = (int64_t(b) * p.heads_q + h) * p.num_q_blocks + qb;
  return w;
}

// The 16 rows of one consumer warp: this thread holds rows row_g and row_g + 8.
struct WarpRows {
  int row_g;
  bool row_exists[2];
  bool slab_exists;  // the warp's first row exists (its λ decisions are counted)
  __device__ WarpRows(const AttnParams& p, const WorkTile& w, int consumer, int warp, int lane) {
    const int slab0 = w.q0 + consumer * 64 + warp * 16;
    row_g = slab0 + lane / 4;
    row_exists[0] = row_g < p.seq_q;
    row_exists[1] = row_g + 8 < p.seq_q;
    slab_exists = slab0 < p.seq_q;
  }
};

// Whose turn it is to issue GEMMs. Consumer c waits on its barrier and, after issuing, arrives
// on the other's. Consumer 1 lets consumer 0 go first (one arrival up front) and skips its
// arrival after its last issue, so that each barrier sees as many arrivals as waits (both
// consumers walk the same tiles, hence issue equally often).
// The persistent kernel keeps the order across rows: the up-front arrival once per CTA, consumer
// 1 arrives after its last issue of a row too (consumer 0 may start the next row while consumer 1
// still writes O), and consumer 0 takes that last arrival when the CTA stops (finish()).
// Traits::kPingPong = false: no order (each consumer issues as soon as its operands are ready).
template <typename Traits>
struct MmaTurn {
  int consumer;
  __device__ void start() const {
    if (Traits::kPingPong && consumer == 1)
      named_barrier_arrive(mma_turn_barrier(0), Traits::kConsumerThreads);
  }
  __device__ void acquire() const {
    if (Traits::kPingPong) named_barrier_sync(mma_turn_barrier(consumer), Traits::kConsumerThreads);
  }
  __device__ void pass(bool last) const {
    if (Traits::kPingPong && !(last && consumer == 1))
      named_barrier_arrive(mma_turn_barrier(1 - consumer), Traits::kConsumerThreads);
  }
  __device__ void finish() const {
    if (Traits::kPingPong && consumer == 0)
      named_barrier_sync(mma_turn_barrier(0), Traits::kConsumerThreads);
  }
};

template <typename Traits_, bool kBanded>
struct MainloopSm90Tma {
  using Traits = Traits_;
  using Params = AttnParamsSm90Ws;
  using T = typename Traits::Element;
  using Storage = SharedStorageSm90Ws<Traits>;
  using Cursor = PipeCursor<Traits::kStages>;
  using Turns = BlockTurnIter<Traits::kBlocksPerTurn>;
  static constexpr int kBlocks = Traits::kBlocksPerTurn;
  static constexpr int kNTiles = Traits::kBlockN / 8;   // 8-key score tiles per block
  static constexpr int kKSteps = Traits::kBlockN / 16;  // k16 steps of P·V per block
  static constexpr int kOTiles = Traits::kHeadDim / 8;
  // Row state; exponentiates a whole turn.
  using Softmax = OnlineSoftmax<kBlocks * kNTiles, Traits::kLazyRescaleLog2, Traits::kThreadRowSums>;
  using BlockSoftmax = OnlineSoftmax<kNTiles>;       // the max of one block
  // Scores of a turn, block i in s[i] (the m64n·kTurnN accumulator: columns 64i.. are block i).
  using Scores = float[kBlocks][kNTiles][4];
  using Probs = uint32_t[kBlocks][kKSteps][4];  // P of a turn, A operand of its P·V
  // The epilogue stages O in the consumer's rows of smem.q (same dtype and size) and stores it
  // with params.tma_o (epilogue_sm90_tma.cuh).
  static constexpr bool kOutputThroughQTile = true;

  // One thread, before the role split (a __syncthreads must follow): what shared memory holds
  // before any load, here the barriers.
  static __device__ void init_shared(Storage& smem) { init_barriers(smem); }
  // Any storage with these barriers (the quantized kernel's too).
  template <typename AnyStorage>
  static __device__ void init_barriers(AnyStorage& smem) {
    mbarrier_init(&smem.q_full, 1);
    init_ring_barriers(smem);
  }
  // The K/V ring's barriers, then the fence (the persistent kernel inits its Q tiles' first).
  template <typename AnyStorage>
  static __device__ void init_ring_barriers(AnyStorage& smem) {
#pragma unroll
    for (int s = 0; s < Traits::kStages; ++s) {
      mbarrier_init(&smem.k_full[s], 1);
      mbarrier_init(&smem.v_full[s], 1);
      mbarrier_init(&smem.k_empty[s], Traits::kConsumerWarps);
      mbarrier_init(&smem.v_empty[s], Traits::kConsumerWarps);
    }
    mbarrier_init_fence();
  }

  // ---- producer (one thread) ------------------------------------------------------------
  static __device__ void load(const AttnParamsSm90Ws& p, Storage& smem, const WorkTile& w) {
    Cursor c;
    load_row<false>(p, smem, w, c, smem.q, &smem.q_full);
  }

  // One row: Q into q_tile (q_full), then its turns into the ring from stage c on. An empty row
  // loads nothing (nothing is consumed): its first slot says so (count 0). In the persistent
  // kernel (kPersistent) the ring and the Q tiles run on across rows, so an empty row still takes
  // one whole stage (the slot on K, an arrival without data on V) and arrives on q_full without
  // Q: the consumers' cursors move with the producer's, and they stage the row's zeros there.
  template <bool kPersistent, typename AnyStorage>
  static __device__ void load_row(const AttnParamsSm90Ws& p, AnyStorage& smem, const WorkTile& w,
                                  Cursor& c, T* q_tile, uint64_t* q_full) {
    Turns it(p.attn, w.mask_row);
    if (it.done()) {
      if constexpr (kPersistent) {
        mbarrier_arrive(q_full);
        mbarrier_wait_sleep(&smem.k_empty[c.stage], c.phase ^ 1u);
        send_turn(smem.turn[c.stage], it);
        mbarrier_arrive(&smem.k_full[c.stage]);
        mbarrier_wait_sleep(&smem.v_empty[c.stage], c.phase ^ 1u);
        mbarrier_arrive(&smem.v_full[c.stage]);
        c.advance();
      } else {
        send_turn(smem.turn[0], it);
        mbarrier_arrive(&smem.k_full[0]);
      }
      return;
    }
    if constexpr (!kPersistent) {  // the persistent producer prefetched them once
      tma_prefetch_descriptor(&p.tma_k);
      tma_prefetch_descriptor(&p.tma_v);
    }
    mbarrier_arrive_expect_tx(q_full, Traits::kQBytes);
#pragma unroll
    for (int cb = 0; cb < Traits::kColumnBlocks; ++cb)
      tma_load_4d(&p.tma_q, q_full, q_tile + cb * Traits::kBlockM * 64, cb * 64, w.q0, w.h, w.b);
    for (; !it.done(); it.next(), c.advance()) {
      mbarrier_wait_sleep(&smem.k_empty[c.stage], c.phase ^ 1u);
      send_turn(smem.turn[c.stage], it);
      mbarrier_arrive_expect_tx(&smem.k_full[c.stage], Traits::kStageBytes);
      load_kv_turn(&p.tma_k, smem.k_full[c.stage], smem.k[c.stage], it, p.attn, w);
      mbarrier_wait_sleep(&smem.v_empty[c.stage], c.phase ^ 1u);
      mbarrier_arrive_expect_tx(&smem.v_full[c.stage], Traits::kStageBytes);
      load_kv_turn(&p.tma_v, smem.v_full[c.stage], smem.v[c.stage], it, p.attn, w);
    }
  }

  // The turn's TurnSlot (count 0 and last if the iterator is already done: an empty row), written
  // before the arrive on the stage's K full barrier that publishes it (release; the consumers'
  // wait acquires). The slot is free: the consumers read it before releasing the stage's K.
  static __device__ void send_turn(TurnSlot<kBlocks>& slot, const Turns& it) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) slot.word[i] = it.done() ? -1 : it.block(i);
    slot.word[TurnSlot<kBlocks>::kCount] = it.done() ? 0 : it.count();
    slot.word[TurnSlot<kBlocks>::kLast] = it.done() || it.last();
  }

  // Loads the turn's blocks of kv head w.hk into a stage the consumers released (the caller
  // made `full` expect the bytes), block i into rows 64i.. of every column block. The missing
  // part of a short last turn is still loaded (the full barrier counts the whole stage), from
  // the box that starts at seq_k: entirely past the sequence end, so the TMA reads nothing and
  // writes zeros.
  // The consumers give that part P = 0, and 0·0 keeps O exact; 0 times stale or never-written
  // shared memory could be NaN (Traits::kZeroFillShortTurn = false loads block 0 again instead:
  // finite unless block 0 holds Inf or NaN, which that turn then also spreads to rows whose P
  // is positive).
  static __device__ void load_kv_turn(const CUtensorMap* map, uint64_t& full, T* dst, const Turns& it,
                                      const AttnParams& p, const WorkTile& w) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      const int missing_key0 = Traits::kZeroFillShortTurn ? p.seq_k : it.block(0) * Traits::kBlockN;
      const int key0 = it.block(i) >= 0 ? it.block(i) * Traits::kBlockN : missing_key0;
#pragma unroll
      for (int cb = 0; cb < Traits::kColumnBlocks; ++cb)
        tma_load_4d(map, &full, dst + (cb * Traits::kTurnN + i * Traits::kBlockN) * 64, cb * 64,
                    key0, w.hk, w.b);
    }
  }

  // A consumer's register copy of a stage's TurnSlot, taken after the stage's K landed and
  // before the consumer releases that K (after which the producer may rewrite the slot). Lane 0
  // reads and broadcasts: it is the lane that then arrives on the K empty barrier for its warp,
  // so every read of the slot is ordered before the producer's next write by that one arrive
  // (compute-sanitizer's racecheck does not see the __syncwarp before it as ordering the other
  // lanes' reads, and reported every lane's read as a race with the rewrite).
  struct KeptTurn {
    int blocks[kBlocks];
    int n;
    bool last;
    __device__ int count() const { return n; }
    __device__ int block(int i) const { return blocks[i]; }
    __device__ static KeptTurn read(const TurnSlot<kBlocks>& slot, int lane) {
      using Slot = TurnSlot<kBlocks>;
      int word[Slot::kWords];
#pragma unroll
      for (int i = 0; i < Slot::kWords; ++i)
        word[i] = __shfl_sync(0xffffffffu, lane == 0 ? slot.word[i] : 0, 0);
      KeptTurn t;
#pragma unroll
      for (int i = 0; i < kBlocks; ++i) t.blocks[i] = word[i];
      t.n = word[Slot::kCount];
      t.last = word[Slot::kLast] != 0;
      return t;
    }
  };

  // ---- consumer (one warpgroup) ---------------------------------------------------------
  // One arrival per warp: each warp has waited for its own wgmma groups, so once all of them
  // arrived no tensor-core read of the stage is left.
  static __device__ void release(uint64_t& empty, int lane) {
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty);
  }

  // S[64 rows of this consumer × kTurnN keys] = Q·Kᵀ, issued (not waited): one m64n·kTurnN·k16
  // per k16 step (Q is read from shared memory once per turn, not once per block). Both operands
  // are K-major SW128 tiles: a k16 step advances the start by 32 bytes inside the 128-byte row,
  // and a new 64-channel column block every 4 steps. dq / dk: descriptors of this consumer's Q
  // rows and of the stage's K at step 0 (the steps only advance their start address).
  static __device__ void issue_qk(Scores& s, uint64_t dq, uint64_t dk) {
    constexpr int kQColumnBytes = Traits::kBlockM * kSw128RowBytes;
    constexpr int kKColumnBytes = Traits::kTurnN * kSw128RowBytes;
    auto& d = reinterpret_cast<float(&)[kBlocks * kNTiles][4]>(s);
#pragma unroll
    for (int ks = 0; ks < Traits::kHeadDim / 16; ++ks) {
      const uint32_t a = (ks / 4) * kQColumnBytes + (ks % 4) * 32;
      const uint32_t b = (ks / 4) * kKColumnBytes + (ks % 4) * 32;
      wgmma_m64nNk16_ss<T, Traits::kTurnN>(d, sw128_desc_advance(dq, a), sw128_desc_advance(dk, b),
                                           ks > 0);
    }
  }
  // Descriptors at step 0: Q rows of consumer c, and K (or V: the same start) of stage `stage`.
  static __device__ uint64_t q_desc(uint32_t sQ, int consumer) {
    return sw128_desc(sQ + consumer * 64 * kSw128RowBytes, 16, kSw128AtomBytes);
  }
  static __device__ uint64_t k_desc(uint64_t dk0, int stage) {
    return sw128_desc_advance(dk0, stage * Traits::kStageBytes);
  }
  static __device__ uint64_t v_desc(uint64_t dv0, int stage) {
    return sw128_desc_advance(dv0, stage * Traits::kStageBytes);
  }

  // O[64 rows × D] += P·V over the turn's kTurnN keys, issued (not waited). V is [key][channel]:
  // MN-major for this product, 8 keys per 1024-byte atom (stride byte offset) and kTurnN keys
  // per 64-channel column block (leading byte offset between blocks). dv: the stage's V at key 0.
  static __device__ void issue_pv(float (&acc)[kOTiles][4], const Probs& prob, uint64_t dv) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk)
        wgmma_m64nNk16_rs<T, Traits::kHeadDim>(
            acc, prob[i][kk], sw128_desc_advance(dv, (i * kKSteps + kk) * 16 * kSw128RowBytes));
  }

  // Whether the whole warpgroup skips the turn's P·V: the λ rule decides per warp (16 rows,
  // docs/method.md), with P = 0 for the rows of a skipping warp, but a wgmma is issued by all four
  // warps, so tensor work is saved only when every warp skips every block of the turn (a missing
  // block of a short last turn counts as skipped). One bar.red.and per turn, while the previous
  // turn's P·V runs. Without λ and causality no warp skips a block unless its rows are all past
  // seq_q, which is known without the vote.
  static __device__ bool vote_turn_skip(const bool (&skip)[kBlocks], float lambda, int consumer,
                                        const AttnParams& p, const WorkTile& w) {
    bool skipped;
    if (lambda == INFINITY && !kBanded) {
      skipped = w.q0 + consumer * 64 >= p.seq_q;
    } else {
      bool all = true;
#pragma unroll
      for (int i = 0; i < kBlocks; ++i) all = all && skip[i];
      skipped = named_barrier_all(pv_vote_barrier(consumer), kWarpgroupThreads, all);
    }
    // Broadcast from lane 0: ptxas then knows the value is warp-uniform, keeps the branch on it
    // convergent and the pipeline's stage addresses in uniform registers (without it, R2UR
    // before every wgmma descriptor and BRA.DIV checks appeared in the loop).
    return __shfl_sync(0xffffffffu, int(skipped), 0) != 0;
  }

  // Mask, block maxima, λ rule per block and exponentiation of the turn's scores (raw scores
  // times score_scale are in log2 units; P carries the factor 2^prob_log2_scale, see
  // OnlineSoftmax::exponentiate). The blocks
  // are tested in order, each against the running max the rows would have after the computed
  // blocks before it (as if every block had its own turn), so the decisions and the counters
  // are exactly the one-block-per-turn ones. The computed blocks are then exponentiated with
  // one base, max(m, their maxima) = the m of the sequential walk. skip[i] is true for a block
  // the warp skips and for a missing block of a short turn (not counted); alpha = 1 if all skip.
  //
  // Latency, not work, bounds this on the consumer's critical path, so nothing waits on what it
  // need not: every block's maxima are reduced over the quad with their shuffles in flight
  // together, and block i's test is made against each possible history (which of the blocks
  // before it were computed: 2^i running maxima), so that one warp reduction (REDUX.AND of a
  // bit per test) decides the whole turn instead of one vote per block, each waiting for the
  // one before. The walk then only reads bits.
  static __device__ void scores_to_probs(Scores& s, float (&alpha)[2], bool (&skip)[kBlocks],
                                         bool& any_skip, const KeptTurn& turn, const AttnParams& p,
                                         const WorkTile& w, const WarpRows& rows, int lane,
                                         float lambda, Softmax& softmax, unsigned& visited,
                                         unsigned& skipped, float score_scale,
                                         float prob_log2_scale) {
    static_assert(kBlocks <= 4, "2^kBlocks - 1 tests must fit the reduced word");
    // The missing block of a short last turn is not masked: nothing below reads its maxima.
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      if (i == 0 || i < turn.count()) {
        const int key0 = turn.block(i) * Traits::kBlockN;
        if (block_needs_mask<Traits, kBanded>(p, w.key_end, key0, w.q0))
          apply_mask<Traits, kBanded>(s[i], p, w.key_end, rows.row_g, key0, lane);
      }
    }
    float m_loc[kBlocks][2];
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) BlockSoftmax::thread_max(s[i], m_loc[i]);
#pragma unroll
    for (int offset = 1; offset <= 2; offset *= 2)  // the 4 threads of a quad share a row
#pragma unroll
      for (int i = 0; i < kBlocks; ++i)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          m_loc[i][r] = max_nan(m_loc[i][r], __shfl_xor_sync(0xffffffffu, m_loc[i][r], offset));
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) m_loc[i][0] *= score_scale, m_loc[i][1] *= score_scale;

    // Test bit (2^i - 1 + h): block i is negligible for this thread's rows after history h
    // (bit j of h: block j < i was computed).
    unsigned tests = 0;
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int h = 0; h < (1 << i); ++h) {
        float m_run[2] = {softmax.row_max[0], softmax.row_max[1]};
#pragma unroll
        for (int j = 0; j < i; ++j)
          if (h & (1 << j)) m_run[0] = max_nan(m_run[0], m_loc[j][0]), m_run[1] = max_nan(m_run[1], m_loc[j][1]);
        tests |= unsigned(Softmax::rows_negligible(m_loc[i], m_run, rows.row_exists, lambda))
                 << ((1 << i) - 1 + h);
      }
    const unsigned negligible = __reduce_and_sync(0xffffffffu, tests);  // warp-uniform

    float m_turn[2] = {-INFINITY, -INFINITY};
    unsigned history = 0;
    any_skip = false;
    bool all_skip = true;
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) {
      const bool present = i == 0 || i < turn.count();
      skip[i] = !present || ((negligible >> ((1 << i) - 1 + history)) & 1u);
      skipped += present & skip[i];  // counted whether or not the slab exists: the kernel drops both
      if (!skip[i]) {
        history |= 1u << i;
        m_turn[0] = max_nan(m_turn[0], m_loc[i][0]);
        m_turn[1] = max_nan(m_turn[1], m_loc[i][1]);
      }
      any_skip = any_skip || skip[i];
      all_skip = all_skip && skip[i];
    }
    visited += turn.count();  // blocks tested this turn (a missing block is not)
    alpha[0] = alpha[1] = 1.0f;
    if (all_skip) return;
    // A skipped block adds nothing to l: its scores become -inf, so 2^(s·c - m) = 0.
    if (any_skip) fill_skipped(s, skip, -INFINITY);
    softmax.exponentiate(reinterpret_cast<float(&)[kBlocks * kNTiles][4]>(s), m_turn,
                         score_scale, alpha, prob_log2_scale);
  }

  // P of a skipped block is 0. Zero its scores rather than P: a P defined on two paths makes
  // the compiler serialize the wgmma pipeline (C7513; see kernel_sm90.cuh).
  static __device__ void pack(Scores& s, Probs& prob, const bool (&skip)[kBlocks], bool any_skip) {
    if (any_skip) fill_skipped(s, skip, 0.0f);
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) pack_probs<Traits>(s[i], prob[i]);
  }

  // Every score of the skipped blocks becomes `value` (a select, not a branch per block).
  static __device__ void fill_skipped(Scores& s, const bool (&skip)[kBlocks], float value) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][n][e] = skip[i] ? value : s[i][n][e];
  }

  static __device__ void fence_scores(Scores& s) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) fence_operands(s[i]);
  }
  static __device__ void fence_probs(Probs& prob) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) fence_operands(prob[i]);
  }

  // Epilogue hook (the quantized kernel scales O by V's scales and shifts the LSE here):
  // nothing to scale, no shift.
  template <typename Acc>
  static __device__ void finish(const Params&, const WorkTile&, const WarpRows&, int, Acc&,
                                float (&lse_add)[2]) {
    lse_add[0] = lse_add[1] = 0.0f;
  }

  static __device__ void mma(const AttnParamsSm90Ws& params, Storage& smem, const WorkTile& w,
                             const WarpRows& rows, int consumer, int lane, float (&acc)[kOTiles][4],
                             Softmax& softmax, unsigned& visited, unsigned& skipped) {
    Cursor kc, vc;
    mma_row<false>(params, smem, w, rows, consumer, lane, acc, softmax, visited, skipped, kc, vc,
                   smem.q);
  }

  // One row from ring stages kc (K) and vc (V) on, with Q in q_tile. kPersistent: the caller has
  // waited for the Q tile (its q_full also delivers the row), and an empty row releases the one
  // stage the producer passed for it (load_row); otherwise Q is waited for here (q_full phase 0).
  template <bool kPersistent, typename AnyStorage>
  static __device__ void mma_row(const AttnParamsSm90Ws& params, AnyStorage& smem, const WorkTile& w,
                                 const WarpRows& rows, int consumer, int lane,
                                 float (&acc)[kOTiles][4], Softmax& softmax, unsigned& visited,
                                 unsigned& skipped, Cursor& kc, Cursor& vc, const T* q_tile) {
    const AttnParams& p = params.attn;
    // The first slot says whether the row keeps any block (count 0: nothing was loaded, and the
    // epilogue writes the empty row).
    mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
    KeptTurn kept = KeptTurn::read(smem.turn[kc.stage], lane);
    if (kept.count() == 0) {
      if constexpr (kPersistent) {
        release(smem.k_empty[kc.stage], lane);
        kc.advance();
        mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
        release(smem.v_empty[vc.stage], lane);
        vc.advance();
      }
      return;
    }
    const float lambda = p.pv_lambda_per_head ? p.pv_lambda[w.h] : p.pv_lambda_uniform;
    // Descriptors built once; a turn only advances their start address (sw128_desc_advance).
    uint64_t dq = q_desc(smem_addr(q_tile), consumer);
    // Opaque to ptxas: with the persistent kernel's Q tile chosen at run time it otherwise rebuilt
    // the Q descriptors from the address inside the turn loop (a mask and moves per wgmma); the
    // row grid's loop is the same either way
    // (bench/results/2026-12-06_sm90a-sass_attention-turn-loops.txt).
    asm volatile("" : "+l"(dq));
    const uint64_t dk0 = sw128_desc(smem_addr(smem.k[0]), 16, kSw128AtomBytes);
    const uint64_t dv0 = sw128_desc(smem_addr(smem.v[0]), Traits::kTurnN * kSw128RowBytes,
                                    kSw128AtomBytes);
    const MmaTurn<Traits> turn{consumer};
    if constexpr (!kPersistent) turn.start();  // the persistent kernel's once per CTA
    Scores s;    // scores of the turn being processed
    Probs prob;  // P of the previous turn
    float alpha[2];
    bool skip[kBlocks], any_skip;
    bool pv_skipped;  // the whole warpgroup skips the P·V of the turn whose P is in `prob`

    // First turn: S[0] alone.
    if constexpr (!kPersistent) mbarrier_wait(&smem.q_full, 0);
    turn.acquire();
    fence_scores(s);
    wgmma_fence();
    issue_qk(s, dq, k_desc(dk0, kc.stage));  // stage 0 unless a persistent CTA's ring ran on
    wgmma_commit();
    turn.pass(false);
    wgmma_wait<0>();
    fence_scores(s);
    release(smem.k_empty[kc.stage], lane);
    kc.advance();
    scores_to_probs(s, alpha, skip, any_skip, kept, p, w, rows, lane, lambda, softmax, visited,
                    skipped, p.scale_log2, 0.0f);
    pv_skipped = vote_turn_skip(skip, lambda, consumer, p, w);
    pack(s, prob, skip, any_skip);

    // One turn: S[t] = Q·K[t]ᵀ and, unless the whole warpgroup skips turn t-1, O += P[t-1]·V[t-1].
    // The two variants are separate code paths, each a complete wgmma pipeline stage (fence ...
    // wait 0): a wgmma or a commit on a branch inside a stage makes ptxas serialize every wgmma
    // of the kernel (C7514, C7520), even when the branch is warpgroup-uniform, as this one is.
    // V[t-1] is still waited for in both: a stage may only be released once its load landed.
    const auto step = [&](auto with_pv) {
      constexpr bool kWithPv = decltype(with_pv)::value;
      mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
      kept = KeptTurn::read(smem.turn[kc.stage], lane);
      mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
      turn.acquire();
      fence_operands(acc);
      fence_probs(prob);
      fence_scores(s);
      wgmma_fence();
      issue_qk(s, dq, k_desc(dk0, kc.stage));
      wgmma_commit();
      if constexpr (kWithPv) {
        wgmma_fence();
        issue_pv(acc, prob, v_desc(dv0, vc.stage));
        wgmma_commit();
      }
      turn.pass(false);
      wgmma_wait<kWithPv ? 1 : 0>();  // S[t] ready; P·V of t-1 may still run
      fence_scores(s);
      release(smem.k_empty[kc.stage], lane);
      kc.advance();
      scores_to_probs(s, alpha, skip, any_skip, kept, p, w, rows, lane, lambda, softmax, visited,
                    skipped, p.scale_log2, 0.0f);
      const bool turn_skipped = vote_turn_skip(skip, lambda, consumer, p, w);
      wgmma_wait<0>();  // P·V of t-1 done: O and P are free, and so is V[t-1]
      fence_operands(acc);
      release(smem.v_empty[vc.stage], lane);
      vc.advance();
      if (Softmax::needs_rescale(alpha)) Softmax::rescale(acc, alpha);
      pack(s, prob, skip, any_skip);
      pv_skipped = turn_skipped;
    };
    while (!kept.last) {
      if (pv_skipped)
        step(std::false_type{});
      else
        step(std::true_type{});
    }

    // Last turn: its P·V alone (the same two variants).
    const auto last_step = [&](auto with_pv) {
      constexpr bool kWithPv = decltype(with_pv)::value;
      mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
      turn.acquire();
      if constexpr (kWithPv) {
        fence_operands(acc);
        fence_probs(prob);
        wgmma_fence();
        issue_pv(acc, prob, v_desc(dv0, vc.stage));
        wgmma_commit();
      }
      turn.pass(!kPersistent);
      if constexpr (kWithPv) {
        wgmma_wait<0>();
        fence_operands(acc);
      }
      release(smem.v_empty[vc.stage], lane);
      vc.advance();  // the persistent kernel's next row starts at the next stage
    };
    if (pv_skipped)
      last_step(std::false_type{});
    else
      last_step(std::true_type{});
  }
};

}  // namespace sparge::cuda
