// Mainloop of the quantized warp-specialized sm_90a attention kernel (attn_fwd_sm90_q8): the
// pipeline of MainloopSm90Tma (producer thread, kStages ring of turns, TurnSlots, ping-pong of
// the consumers' GEMMs, P·V of turn t-1 under the softmax of turn t, the λ rule per turn) on the
// quantization pass's buffers (common/quant_layout.h):
//   S = Q8·K8ᵀ in s32 (m64nNk32 s8 wgmma, N the turn's keys), exact in fp32, times s_q(row) · s_k(16 keys) ·
//   scale · log2 e: the scores in log2 units the exact kernel's softmax takes (λ rule, masks and
//   NaN handling are its code);
//   P = 448 · 2^(t - m) rounded to e4m3, O += P·V8 (m64nDk32 e4m3 wgmma), V's per-channel
//   scale applied once in the epilogue (O is linear in V); l += P·1 (m64n8k32 e4m3 wgmma on a
//   tile of ones), so l sums the same rounded P as O.
// Two-level accumulation: a turn's P·V (its keys in k32 steps) starts from zero in its own
// registers and is added to O in fp32 afterwards (O = O·alpha + turn, one FFMA per element,
// where the exact kernel multiplies O by alpha anyway). The FP8 wgmma keeps a narrower
// accumulator than fp32 (SageAttention2: 22 bits), so summing a whole row's keys in it would
// lose precision with the sequence's length; per turn it sums 128 (d128) or 192 (d64) products.
#pragma once

#include <cstdint>

#include "common/quant_layout.h"
#include "cuda/attention/mainloop_sm90_tma.cuh"
#include "cuda/attention/quant_lse.cuh"
#include "cuda/attention/traits_sm90_q8.cuh"
#include "cuda/common/wgmma_sm90_q8.cuh"

namespace sparge::cuda {

constexpr float kLn448 = 6.104793232414985f;  // ln 448: P's factor, out of the LSE

template <typename Traits_, bool kBanded>
struct MainloopSm90Q8 {
  using Traits = Traits_;
  using Params = AttnParamsSm90Q8;
  using Storage = SharedStorageSm90Q8<Traits>;
  using Exact = MainloopSm90Tma<Traits, kBanded>;  // the turn logic both kernels share
  using Cursor = PipeCursor<Traits::kStages>;
  using Turns = BlockTurnIter<Traits::kBlocksPerTurn>;
  using KeptTurn = typename Exact::KeptTurn;
  using Softmax = typename Exact::Softmax;
  using Scores = typename Exact::Scores;  // fp32 scores of a turn, log2 units
  static constexpr int kBlocks = Traits::kBlocksPerTurn;
  static constexpr int kNTiles = Traits::kBlockN / 8;
  static constexpr int kKSteps = Traits::kBlockN / 32;  // k32 steps of P·V per block
  static constexpr int kOTiles = Traits::kHeadDim / 8;
  static constexpr int kKScales = Traits::kBlockN / 16;  // K scales per block
  using RawScores = uint32_t[kBlocks][kNTiles][4];       // the s32 accumulator of S
  using Probs = uint32_t[kBlocks][kKSteps][4];           // e4m3 P, A operand of P·V
  using Acc = float[kOTiles][4];
  using RowSums = float[1][4];  // a turn's P·1 (m64n8): [0][0], [0][1] row g, [0][2], [0][3] row g+8
  // O leaves from registers: the 8-bit Q tile holds half a consumer's O tile.
  static constexpr bool kOutputThroughQTile = false;

  // One thread, before the role split: the barriers, and the ones of the row sums, stored through
  // the generic proxy and fenced for the wgmma's reads through the async proxy (the kernel's
  // __syncthreads then orders them before every consumer's first P·V).
  static __device__ void init_shared(Storage& smem) {
    Exact::init_barriers(smem);
    uint4* ones = reinterpret_cast<uint4*>(smem.ones);
#pragma unroll
    for (int i = 0; i < Traits::kOnesBytes / 16; ++i)
      ones[i] = make_uint4(0x38383838u, 0x38383838u, 0x38383838u, 0x38383838u);
    fence_proxy_async_smem();
  }

  // ---- producer (one thread) ------------------------------------------------------------
  static __device__ void load(const Params& p, Storage& smem, const WorkTile& w) {
    Turns it(p.attn, w.mask_row);
    if (it.done()) {
      Exact::send_turn(smem.turn[0], it);
      mbarrier_arrive(&smem.k_full[0]);
      return;
    }
    tma_prefetch_descriptor(&p.tma_k);
    tma_prefetch_descriptor(&p.tma_v);
    mbarrier_arrive_expect_tx(&smem.q_full, Traits::kQBytes);
    tma_load_4d(&p.tma_q, &smem.q_full, smem.q, 0, w.q0, w.h, w.b);
    Cursor c;
    for (; !it.done(); it.next(), c.advance()) {
      mbarrier_wait_sleep(&smem.k_empty[c.stage], c.phase ^ 1u);
      Exact::send_turn(smem.turn[c.stage], it);
      mbarrier_arrive_expect_tx(&smem.k_full[c.stage], Traits::kKStageBytes);
      // The missing block of a short last turn: the box past the end of the keys (zeros).
#pragma unroll
      for (int i = 0; i < kBlocks; ++i)
        tma_load_4d(&p.tma_k, &smem.k_full[c.stage],
                    smem.k[c.stage] + i * Traits::kBlockN * Traits::kHeadDim, 0,
                    it.block(i) >= 0 ? it.block(i) * Traits::kBlockN : p.attn.seq_k, w.hk, w.b);
      mbarrier_wait_sleep(&smem.v_empty[c.stage], c.phase ^ 1u);
      mbarrier_arrive_expect_tx(&smem.v_full[c.stage], Traits::kVStageBytes);
      const int v8_end = int(detail::v8_keys(p.attn.seq_k));
#pragma unroll
      for (int i = 0; i < kBlocks; ++i)
        tma_load_4d(&p.tma_v, &smem.v_full[c.stage], smem.v[c.stage][i],
                    it.block(i) >= 0 ? it.block(i) * Traits::kBlockN : v8_end, 0, w.hk, w.b);
    }
  }

  // ---- consumer (one warpgroup) ---------------------------------------------------------
  // Descriptor of a Q or K tile at `addr`: 8-row swizzle atoms one after the other (the leading
  // offset is unused: a k32 step stays inside one swizzle row).
  static __device__ uint64_t qk_desc(uint32_t addr) {
    if constexpr (Traits::kQkRowBytes == kSw128RowBytes)
      return sw128_desc(addr, 16, kSw128AtomBytes);
    else
      return sw64_desc(addr, kSw64AtomBytes);
  }

  // S (s32) = Q8·K8ᵀ over the turn's keys, issued: kHeadDim/32 k32 steps of 32 bytes inside the
  // one swizzle row of Q and K (advancing the start address is how a k step moves inside a
  // swizzled row: the hardware swizzles the addresses it forms).
  static __device__ void issue_qk(RawScores& s, uint64_t dq, uint64_t dk) {
    auto& d = reinterpret_cast<uint32_t(&)[kBlocks * kNTiles][4]>(s);
#pragma unroll
    for (int ks = 0; ks < Traits::kHeadDim / 32; ++ks)
      wgmma_m64nNk32_s8_ss<Traits::kTurnN>(d, sw128_desc_advance(dq, ks * 32),
                                           sw128_desc_advance(dk, ks * 32), ks > 0);
  }

  // The turn's P·V into `turn_acc` (from zero with Traits::kTwoLevel, else onto O): block i's V8
  // tile, two k32 steps of 32 bytes; with !kThreadRowSums also P·1 into `sums` (from zero; the
  // ones' descriptor serves every step: each row of the tile is the same).
  static __device__ void issue_pv(Acc& turn_acc, RowSums& sums, const Probs& prob, uint64_t dv,
                                  uint64_t dones) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        wgmma_m64nNk32_e4m3_rs<Traits::kHeadDim>(
            turn_acc, prob[i][kk], sw128_desc_advance(dv, i * Traits::kVBlockBytes + kk * 32),
            !Traits::kTwoLevel || i + kk > 0);
        if constexpr (!Traits::kThreadRowSums)
          wgmma_m64nNk32_e4m3_rs<8>(sums, prob[i][kk], dones, i + kk > 0);
      }
  }

  // O = O · alpha + the turn's P·V, and l likewise with the turn's row sums.
  static __device__ void add_turn(Acc& acc, const Acc& turn_acc, const RowSums& sums,
                                  const float (&alpha)[2], Softmax& softmax) {
    add_turn(acc, turn_acc, alpha);
    if constexpr (!Traits::kThreadRowSums) softmax.add_row_sums(alpha, {sums[0][0], sums[0][2]});
  }
  // O and l times alpha (a turn without P·V).
  static __device__ void rescale(Acc& acc, const float (&alpha)[2], Softmax& softmax) {
    Softmax::rescale(acc, alpha);
    if constexpr (!Traits::kThreadRowSums) softmax.scale_row_sums(alpha);
  }

  // The K scales of the turn's blocks (kKScales per block, the same for every thread), loaded as
  // soon as the turn is known so that they arrive under the Q·Kᵀ. Groups past the last key
  // (a tail block) and the missing block of a short turn get 0: their scores are masked or
  // skipped anyway, and the load stays inside the buffer.
  static __device__ void load_k_scales(float (&kf)[kBlocks][kKScales], const KeptTurn& turn,
                                       const float* ks, int k_groups) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int j = 0; j < kKScales; ++j) {
        const int g = turn.block(i) * kKScales + j;
        kf[i][j] = (i == 0 || i < turn.count()) && g < k_groups ? __ldg(ks + g) : 0.0f;
      }
  }

  // t = float(s32) · s_q · scale · log2 e · s_k: tile n of a block holds keys 8n..8n+7, all in
  // K scale group n / 2. One IADD and one FFMA per score: (1.5·2^23 + x) · f - 1.5·2^23 · f
  // (s32_to_f32_offset), whose cancellation costs at most ~1 unit of x times f, ~1e-4 in log2
  // units for N(0, 1) inputs at D 128 (the exact FADD-then-FMUL form costs a third instruction
  // per score on the consumer's critical path).
  static __device__ void dequantize(const RawScores& raw, Scores& s, const float (&qf)[2],
                                    const float (&kf)[kBlocks][kKScales]) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        const float f0 = qf[0] * kf[i][n / 2], f1 = qf[1] * kf[i][n / 2];
        const float c0 = -kS32Offset * f0, c1 = -kS32Offset * f1;
        s[i][n][0] = fmaf(s32_to_f32_offset(raw[i][n][0]), f0, c0);
        s[i][n][1] = fmaf(s32_to_f32_offset(raw[i][n][1]), f0, c0);
        s[i][n][2] = fmaf(s32_to_f32_offset(raw[i][n][2]), f1, c1);
        s[i][n][3] = fmaf(s32_to_f32_offset(raw[i][n][3]), f1, c1);
      }
  }

  // P (scaled by 448) to e4m3 A fragments: k32 step kk of block i is score tiles 4kk..4kk+3; a[0]
  // = row g of tiles 4kk, 4kk+1, a[1] row g+8 of them, a[2] / a[3] the same of tiles 4kk+2, +3.
  static __device__ void pack(Scores& s, Probs& prob, const bool (&skip)[kBlocks], bool any_skip) {
    if (any_skip) Exact::fill_skipped(s, skip, 0.0f);
#pragma unroll
    for (int i = 0; i < kBlocks; ++i)
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float(&a)[4] = s[i][4 * kk + 2 * half];
          const float(&b)[4] = s[i][4 * kk + 2 * half + 1];
          prob[i][kk][2 * half] = pack_e4m3x2(a[0], a[1]) | (pack_e4m3x2(b[0], b[1]) << 16);
          prob[i][kk][2 * half + 1] = pack_e4m3x2(a[2], a[3]) | (pack_e4m3x2(b[2], b[3]) << 16);
        }
  }

  static __device__ void fence_raw(RawScores& raw) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) fence_operands(raw[i]);
  }
  static __device__ void fence_probs(Probs& prob) {
#pragma unroll
    for (int i = 0; i < kBlocks; ++i) fence_operands(prob[i]);
  }

  // O = O · alpha + the turn's P·V (rows g and g+8).
  static __device__ void add_turn(Acc& acc, const Acc& turn_acc, const float (&alpha)[2]) {
#pragma unroll
    for (int d = 0; d < kOTiles; ++d) {
      acc[d][0] = fmaf(acc[d][0], alpha[0], turn_acc[d][0]);
      acc[d][1] = fmaf(acc[d][1], alpha[0], turn_acc[d][1]);
      acc[d][2] = fmaf(acc[d][2], alpha[1], turn_acc[d][2]);
      acc[d][3] = fmaf(acc[d][3], alpha[1], turn_acc[d][3]);
    }
  }

  // Epilogue hook: V's per-channel scale (thread t holds channels 8d + 2t and 8d + 2t + 1), and
  // the LSE's shift when the caller asks for it: the scores were of k - km and P carried the
  // factor 448, so lse = ln 2 · (m + log2 l) - ln 448 + scale · q_r · km (docs/method.md), the
  // dot product from the exact q row (a quad's four threads take 32 channels each).
  static __device__ void finish(const Params& params, const WorkTile& w, const WarpRows& rows,
                                int lane, Acc& acc, float (&lse_add)[2]) {
    const AttnParams& p = params.attn;
    const float* vs = params.v_scale + (int64_t(w.b) * p.heads_kv + w.hk) * Traits::kHeadDim;
#pragma unroll
    for (int d = 0; d < kOTiles; ++d) {
      const float2 f = *reinterpret_cast<const float2*>(vs + d * 8 + (lane & 3) * 2);
      acc[d][0] *= f.x, acc[d][1] *= f.y, acc[d][2] *= f.x, acc[d][3] *= f.y;
    }
    const float* km = params.km + (int64_t(w.b) * p.heads_kv + w.hk) * Traits::kHeadDim;
    smoothing_lse_shift<typename Traits::Element, Traits::kHeadDim>(p, km, w.b, w.h, rows.row_g,
                                                                     rows.row_exists, lane, lse_add);
    if (p.lse == nullptr) return;
    lse_add[0] -= kLn448;
    lse_add[1] -= kLn448;
  }

  static __device__ void mma(const Params& params, Storage& smem, const WorkTile& w,
                             const WarpRows& rows, int consumer, int lane, Acc& acc,
                             Softmax& softmax, unsigned& visited, unsigned& skipped) {
    const AttnParams& p = params.attn;
    Cursor kc, vc;
    mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
    KeptTurn kept = KeptTurn::read(smem.turn[kc.stage], lane);
    if (kept.count() == 0) return;
    const float lambda = p.pv_lambda_per_head ? p.pv_lambda[w.h] : p.pv_lambda_uniform;
    // Per-row factor s_q · scale · log2 e (0 for rows past seq_q, whose scores nothing reads).
    const float* qs = params.q_scale + (int64_t(w.b) * p.heads_q + w.h) * p.seq_q;
    float qf[2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
      qf[r] = rows.row_exists[r] ? qs[rows.row_g + 8 * r] * p.scale_log2 : 0.0f;
    const float* ks = params.k_scale + (int64_t(w.b) * p.heads_kv + w.hk) * params.k_groups;
    const uint64_t dq = qk_desc(smem_addr(smem.q) + consumer * 64 * Traits::kQkRowBytes);
    const uint64_t dk0 = qk_desc(smem_addr(smem.k[0]));
    const uint64_t dv0 = sw64_desc(smem_addr(smem.v[0][0]), kSw64AtomBytes);
    const uint64_t dones = sw64_desc(smem_addr(smem.ones), kSw64AtomBytes);
    const MmaTurn<Traits> turn{consumer};
    turn.start();
    RawScores raw;
    Scores s;
    Probs prob;
    Acc turn_buffer;  // the turn's P·V with Traits::kTwoLevel (else P·V goes straight into O)
#pragma unroll
    for (int d = 0; d < kOTiles; ++d)
      turn_buffer[d][0] = turn_buffer[d][1] = turn_buffer[d][2] = turn_buffer[d][3] = 0.0f;
    Acc& turn_acc = Traits::kTwoLevel ? turn_buffer : acc;
    RowSums sums = {{0.0f, 0.0f, 0.0f, 0.0f}};  // the turn's P·1 (!kThreadRowSums)
    float kf[kBlocks][kKScales];
    float alpha[2], alpha_pv[2];  // alpha_pv: the factor of the turn whose P·V is in `prob`
    bool skip[kBlocks], any_skip;
    bool pv_skipped;
    const auto softmax_turn = [&] {
      dequantize(raw, s, qf, kf);
      Exact::scores_to_probs(s, alpha, skip, any_skip, kept, p, w, rows, lane, lambda, softmax,
                             visited, skipped, 1.0f, Traits::kProbLog2Scale);
    };

    // First turn: S[0] alone.
    load_k_scales(kf, kept, ks, params.k_groups);
    mbarrier_wait(&smem.q_full, 0);
    turn.acquire();
    fence_raw(raw);
    wgmma_fence();
    issue_qk(raw, dq, dk0);
    wgmma_commit();
    turn.pass(false);
    wgmma_wait<0>();
    fence_raw(raw);
    Exact::release(smem.k_empty[kc.stage], lane);
    kc.advance();
    softmax_turn();
    pv_skipped = Exact::vote_turn_skip(skip, lambda, consumer, p, w);
    alpha_pv[0] = alpha[0], alpha_pv[1] = alpha[1];
    pack(s, prob, skip, any_skip);

    // One turn: S[t] and, unless the warpgroup skips turn t-1, P[t-1]·V[t-1] into turn_acc; the
    // two variants are whole pipeline stages (see MainloopSm90Tma::mma for why).
    const auto step = [&](auto with_pv) {
      constexpr bool kWithPv = decltype(with_pv)::value;
      mbarrier_wait(&smem.k_full[kc.stage], kc.phase);
      kept = KeptTurn::read(smem.turn[kc.stage], lane);
      load_k_scales(kf, kept, ks, params.k_groups);
      mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
      turn.acquire();
      fence_operands(turn_acc);
      fence_operands(sums);
      fence_probs(prob);
      fence_raw(raw);
      wgmma_fence();
      issue_qk(raw, dq, sw128_desc_advance(dk0, kc.stage * Traits::kKStageBytes));
      wgmma_commit();
      if constexpr (kWithPv) {
        wgmma_fence();
        issue_pv(turn_acc, sums, prob, sw128_desc_advance(dv0, vc.stage * Traits::kVStageBytes),
                 dones);
        wgmma_commit();
      }
      turn.pass(false);
      wgmma_wait<kWithPv ? 1 : 0>();
      fence_raw(raw);
      Exact::release(smem.k_empty[kc.stage], lane);
      kc.advance();
      softmax_turn();
      const bool turn_skipped = Exact::vote_turn_skip(skip, lambda, consumer, p, w);
      wgmma_wait<0>();
      fence_operands(turn_acc);
      fence_operands(sums);
      Exact::release(smem.v_empty[vc.stage], lane);
      vc.advance();
      if constexpr (!Traits::kTwoLevel) {  // O moves to the new max before P[t]·V[t] adds to it
        if (Softmax::needs_rescale(alpha)) Softmax::rescale(acc, alpha);
      } else if constexpr (kWithPv) {
        add_turn(acc, turn_acc, sums, alpha_pv, softmax);
      } else if (Softmax::needs_rescale(alpha_pv)) {
        rescale(acc, alpha_pv, softmax);
      }
      alpha_pv[0] = alpha[0], alpha_pv[1] = alpha[1];
      pack(s, prob, skip, any_skip);
      pv_skipped = turn_skipped;
    };
    while (!kept.last) {
      if (pv_skipped)
        step(std::false_type{});
      else
        step(std::true_type{});
    }

    const auto last_step = [&](auto with_pv) {
      constexpr bool kWithPv = decltype(with_pv)::value;
      mbarrier_wait(&smem.v_full[vc.stage], vc.phase);
      turn.acquire();
      if constexpr (kWithPv) {
        fence_operands(turn_acc);
        fence_operands(sums);
        fence_probs(prob);
        wgmma_fence();
        issue_pv(turn_acc, sums, prob, sw128_desc_advance(dv0, vc.stage * Traits::kVStageBytes),
                 dones);
        wgmma_commit();
      }
      turn.pass(true);
      if constexpr (kWithPv) {
        wgmma_wait<0>();
        fence_operands(turn_acc);
        fence_operands(sums);
      }
      Exact::release(smem.v_empty[vc.stage], lane);
      if constexpr (!Traits::kTwoLevel) {
      } else if constexpr (kWithPv) {
        add_turn(acc, turn_acc, sums, alpha_pv, softmax);
      } else if (Softmax::needs_rescale(alpha_pv)) {
        rescale(acc, alpha_pv, softmax);
      }
    };
    if (pv_skipped)
      last_step(std::false_type{});
    else
      last_step(std::true_type{});
  }
};

}  // namespace sparge::cuda
