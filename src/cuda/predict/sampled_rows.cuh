// Stage 1, estimate sampled_rows: per query block, the exact softmax rows of a few evenly spaced
// query rows (detail::sampled_row), their mass per key block averaged over the rows, written where
// the pooled mode writes its compressed scores (PredictParams::scores); select_blocks then takes
// them as the eligible columns' weights (docs/method.md, Stage 1, step 4).
//
// On the tensor cores, fp32 accumulation: mma.sync m16n8k16 (MmaSyncOperands, the pieces of
// error_target_tiles.cuh) or, on sm_90, wgmma (WgmmaOperands, sampled_rows_sm90.cuh); the kernel
// body is one, the operands' layout and Q·Kᵀ a policy. The sampled rows of consecutive query
// blocks of one head are packed into 16-row units: each block takes `slots` row slots
// (sampled_row_slots: its rows rounded up to a power of two up to 16, so 4 rows make four blocks a
// unit, else to whole units); a CTA's 8 warps hold 8 units (warp w = unit w), so a K tile loaded
// once serves 128 row slots (32 blocks at the default 4 rows) instead of one block's rows. The CTA
// walks the union of its blocks' allowed keys in steps of kStepKeys, K in a ring of kSampleStages
// cp.async tiles in swizzled shared memory; a warp (a warpgroup with wgmma) skips the steps its
// unit (its four units) does not see. Pass 1: each row's online max and sum of 2^t over the keys
// it sees. Pass 2: P = 2^(t − m) summed per (row, key block), each row's mass divided by its sum;
// per key block one thread adds the rows of one query block in slot order into the block's score
// entry (a block over several groups of 128 slots through the entry itself), so every sum has a
// fixed order and runs are bit-reproducible.
//
// Scores are fp32 (the 16-bit inputs multiply exactly; the sums are the mma's), the exponentials
// MUFU.EX2 (exp2_approx in the running sums, exp2f in the masses), each key block's mass a fp32
// sum, the rows' weights double. The CPU computes the same in fp32 in another order
// (error_target.cc sample(), masks included): the two differ by ~1e-6 relative, so a mask can
// differ where a TopCdf prefix lands within that of τ or two masses tie that closely. The scalar
// kernel this replaced (one CTA per query block, double, a thread per key) took 300 ms at 32K
// tokens, H 32, hd 128 on an H100, 10.7x the dense kernel
// (bench/results/2026-12-05_NVIDIA-H100_stage1-sampled-rows_check.md).
//
// One pass (sampled_rows_one_pass: a block's rows take at most 4 slots, as at the default 4 rows):
// SampledRowsPass::kTileSums walks the keys once, each row's online (max, sum) restarted at every
// key block and stored at its last step as log2 Σ 2^t (PredictParams::sr_tile_lse, 4 bytes per row
// slot and key block); sampled_rows_combine then takes each row's max and total over its key
// blocks and writes the weights. This is the CPU's order too (error_target.cc: per tile max and
// mass, then rescaled by the row's max). It drops pass 2's second Q·Kᵀ and exponentials, and with
// key splits their second launch (each split writes its own entries).
//
// Few CTAs (few heads, short sequences: 64 CTAs at 8K tokens and 32 heads, on 132 SMs) leave most
// of the GPU idle; then the key blocks are split over gridDim.z CTAs (sampled_row_key_splits) and
// the two-pass estimate runs as two launches: SampledRowsPass::kMaxSum, pass 1 over the split's
// keys, storing each row's (max, sum) (PredictParams::sr_partial); then kMasses, which combines a
// row's splits in split order and runs pass 2 over its split's keys, writing the entries of its
// key blocks (still one writer each, so still reproducible). kWhole: both passes over all keys.
// (H200, 32 heads, hd 128: 8K tokens 1.00 -> 0.45 ms, 4K 0.53 -> 0.19, whole Stage 1;
// bench/results/2026-12-05_NVIDIA-H200_stage1-sampled-rows-split.md.)
//
// A dense attention mask (PredictParams::attn_mask.data) joins the scores: a pair it hides is not
// seen, a value is added (natural-log units), so the rows are those Stage 2 computes. Keys past a
// batch entry's key length are seen by no row.
#pragma once

#include <cuda.h>

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/dense_mask.cuh"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/predict/error_target_tiles.cuh"
#include "cuda/predict/params.h"

namespace sparge::cuda {

constexpr int kSlotsPerCta = kSampledRowSlotsPerCta;  // one 16-row unit per warp
static_assert(kEtWarps * kUnitRows == kSampledRowSlotsPerCta, "a unit per warp");

// What a launch of sampled_row_weights runs (the file's comment).
enum class SampledRowsPass : int { kWhole, kMaxSum, kMasses, kTileSums };

// K tiles in the ring (three loading while one is read). Two measured the same on an H100 (4.75
// against 4.65 ms at 32K, 0.98 against 1.00 at 8K): the steps do not wait on the loads; kept,
// as the registers, not the 96 KB, hold the kernel to two CTAs per SM at hd ≤ 128 (at hd 256 the
// 128 KB allow one; not timed).
constexpr int kSampleStages = 4;


// One query block of the CTA: its rows, whether it is estimated and its allowed key blocks.
struct EstimateBlock {
  int i;
  int64_t first, n, count;  // rows first .. first + n − 1; count of them sampled
  bool similar;             // not similar: nothing is selected, its weights are zero
  int begin, end;           // allowed key blocks
};
__device__ __forceinline__ EstimateBlock estimate_block(const PredictParams& p, int i, int h) {
  EstimateBlock blk;
  blk.i = i;
  blk.first = int64_t(i) * p.block_q;
  blk.n = min(int64_t(p.block_q), int64_t(p.seq_q) - blk.first);
  blk.count = detail::sampled_row_count(p.sample_rows, blk.n);
  const int64_t row = int64_t(blockIdx.y) * p.num_q_blocks + i;
  blk.similar = p.sim_q[row] > double(p.sim_threshold[p.per_head ? h : 0]);
  const detail::BlockRange r =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  blk.begin = int(r.begin), blk.end = int(r.end);
  return blk;
}

// The row in slot `slot` of the CTA (blocks i0 .. i0 + blocks − 1, `slots` each): its query row,
// or −1 for a slot past its block's sampled rows, past the CTA's blocks or of a non-similar block.
__device__ __forceinline__ int64_t slot_row(const PredictParams& p, int h, int i0, int blocks,
                                            int slots, int slot) {
  const int bb = slot / slots, s = slot % slots;
  if (bb >= blocks) return -1;
  const EstimateBlock blk = estimate_block(p, i0 + bb, h);
  if (!blk.similar || s >= blk.count) return -1;
  return detail::sampled_row(blk.first, blk.n, blk.count, s);
}

// What a CTA of the estimate works on (grid (⌈nq / blocks_per_cta⌉, batch·heads_q, key splits)):
// its (batch, head), its query blocks, the q and k slices, and its split of the key blocks.
template <typename T>
struct EstimateCta {
  int bh, b, h, i0, blocks;  // batch·head index, batch, head; query blocks i0 .. i0 + blocks − 1
  const T* gQ;
  const T* gK;
  bool vec_q, vec_k;         // rows_vectorizable
  float mul;                 // scale · log2 e: scores to log2 units
  int64_t key_end;           // the batch entry's keys (key_lengths)
  int splits, split_begin, split_end;  // key blocks [split_begin, split_end): split blockIdx.z
  __device__ EstimateCta(const PredictParams& p, int blocks_per_cta) {
    bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q;
    i0 = blockIdx.x * blocks_per_cta;
    blocks = min(blocks_per_cta, p.num_q_blocks - i0);
    gQ = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + (h / p.group) * p.k_stride[1];
    vec_q = rows_vectorizable(gQ, p.q_stride[2], p.head_dim);
    vec_k = rows_vectorizable(gK, p.k_stride[2], p.head_dim);
    mul = float(p.scale) * kLog2e;
    key_end = key_end_of(p, b);
    splits = gridDim.z;
    split_begin = int(int64_t(p.num_k_blocks) * blockIdx.z / splits);
    split_end = int(int64_t(p.num_k_blocks) * (blockIdx.z + 1) / splits);
  }
};

// This lane's rows g and g + 8 of the unit whose first slot is `unit_slot`: their query rows (−1
// for an empty slot) and the keys they see, [first, last] (first > last: none).
__device__ __forceinline__ void unit_lane_rows(const PredictParams& p, int h, int i0, int blocks,
                                               int slots, int unit_slot, int64_t key_end,
                                               int64_t (&qrow)[2], UnitRowKeys& rk) {
  const int g = (threadIdx.x % 32) / 4;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    qrow[hh] = slot_row(p, h, i0, blocks, slots, unit_slot + g + 8 * hh);
    rk.first[hh] = 1, rk.last[hh] = 0;
    if (qrow[hh] >= 0) {
      rk.first[hh] = int(detail::first_visible_key(qrow[hh], p.band));
      rk.last[hh] = int(detail::last_visible_key(qrow[hh], p.band, key_end));
    }
  }
}

// The allowed key blocks of the unit's similar blocks, [lo, hi) (lo ≥ hi: none).
__device__ __forceinline__ int2 unit_key_blocks(const PredictParams& p, int h, int i0, int blocks,
                                                int slots, int unit_slot) {
  int lo = INT32_MAX, hi = 0;
  const int bb0 = unit_slot / slots, bb1 = min(blocks, (unit_slot + kUnitRows - 1) / slots + 1);
  for (int bb = bb0; bb < bb1; ++bb) {
    const EstimateBlock blk = estimate_block(p, i0 + bb, h);
    if (blk.similar && blk.begin < blk.end) lo = min(lo, blk.begin), hi = max(hi, blk.end);
  }
  return make_int2(lo, hi);
}

// Chunk c of query row `qr` (−1: an empty slot, zeros; so are channels past head_dim) to `dst`:
// cp.async where the rows are vectorizable (the caller commits), else a plain store.
template <typename T>
__device__ __forceinline__ void copy_q_chunk(T* dst, const T* gQ, int64_t stride, int64_t qr, int c,
                                             int head_dim, bool vec) {
  const bool in = qr >= 0 && c * kChunkElems < head_dim;
  const T* src = in ? gQ + qr * stride : gQ;
  if (vec)
    cp_async_16(dst, in ? src + c * kChunkElems : gQ, in);
  else
    *reinterpret_cast<uint4*>(dst) = in ? load_chunk(src, c, head_dim, false) : make_uint4(0, 0, 0, 0);
}

// A step's raw scores of this thread's rows g, g + 8 (qrow: their query rows, −1 for an empty
// slot; rk: the keys they see) and keys key0 + 8n + 2·(lane % 4) + {0, 1}, n < tiles, masked:
// −∞ where a row does not see a key, the dense mask's value added (−∞ where it hides the pair).
// Returns the factor that takes the result to log2 units. Where every row of the warp's unit
// sees every key of the step and there is no dense mask (all steps but those at the band's or the
// keys' edges), the scores stay raw and the factor is scale · log2 e (`mul`): the readers fold
// it into the FFMA before their exponentials (online_max_sum), which saves a FMUL and a FADD per
// score on the path that dominates (the exponent is then one rounding of s·mul − m instead of
// two: ~1 ulp). Elsewhere the scores are scaled here (the mask's values are in log2 units) and
// the factor is 1. An empty slot's row counts as seeing them: its results are never read (its Q
// row is zero, so its scores are too). Warp-wide (a vote).
template <int kN>
__device__ __forceinline__ float step_log2_scores(const PredictParams& p, float (&s)[kN][4],
                                                 int tiles, float mul, int key0,
                                                 const UnitRowKeys& rk, const int64_t (&qrow)[2],
                                                 int b, int h) {
  bool sees_all = true;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh)
    sees_all = sees_all && (qrow[hh] < 0 || (rk.first[hh] <= key0 && key0 + 8 * tiles - 1 <= rk.last[hh]));
  if (p.attn_mask.data == nullptr && __all_sync(0xffffffffu, sees_all)) return mul;
  const int t4 = threadIdx.x % 4;
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    if (n >= tiles) break;
    scale_and_mask(s[n], mul, key0 + 8 * n, rk);
    if (p.attn_mask.data != nullptr) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + 8 * n + 2 * t4 + (e & 1);
        if (s[n][e] == -INFINITY) continue;
        const float v = dense_mask_value(p.attn_mask, b, h, int(qrow[e >> 1]), key);
        s[n][e] = v == -INFINITY ? -INFINITY : s[n][e] + v * kLog2e;
      }
    }
  }
  return 1.0f;
}

// The operands of a step's Q·Kᵀ, the policy sampled_row_weights takes: where the group's q rows
// and the K ring live in shared memory, and how a warp gets its unit's raw scores. This one runs
// on every GPU: each warp's unit has its own [16 × head dim] tile and the ring's tiles are
// [keys × head dim], rows XOR-swizzled for ldmatrix (error_target_tiles.cuh); a warp computes its
// unit's scores alone (mma.sync m16n8k16), so it skips the steps its unit does not see. The
// wgmma policy (sm_90a) is in sampled_rows_sm90.cuh.
template <typename Tr>
struct MmaSyncOperands {
  using T = typename Tr::Element;
  static constexpr bool kWarpgroupSteps = false;  // a warp runs the steps its own unit sees
  static constexpr int kSmemBytes =
      (kSampleStages * Tr::kTileElems + kSlotsPerCta * Tr::kHeadDim) * int(sizeof(T));
  T* sK;  // [kSampleStages][kTileElems]
  T* sQ;  // [kEtWarps][kUnitElems]
  __device__ MmaSyncOperands(unsigned char* smem, const CUtensorMap* /*k_map: TMA unused*/, bool /*k_by_tma*/)
      : sK(reinterpret_cast<T*>(smem)), sQ(sK + kSampleStages * Tr::kTileElems) {}
  // Where chunk c of the group's row slot r goes.
  __device__ T* q_chunk(int r, int c) const {
    return sQ + (r / kUnitRows) * Tr::kUnitElems + swizzled<Tr::kChunks>(r % kUnitRows, c);
  }
  // Keys [key0, key0 + rows) of the (batch, kv head) slice gK into ring stage `stage` (zeros past
  // seq_k and head_dim; cp.async where `vec`, the caller commits). CTA-wide.
  __device__ void load_keys(int stage, const T* gK, int64_t stride, int key0, int rows, int seq_k,
                            int head_dim, bool vec, int /*b*/, int /*hk*/) const {
    load_key_tile<Tr>(sK + stage * Tr::kTileElems, gK, stride, key0, rows, seq_k, head_dim, vec);
  }
  // ldmatrix reads what this thread's cp.async wrote once the barrier after this has passed.
  __device__ static void keys_landed(int /*stage*/, bool /*first_step*/) {}
  // This warp's unit's raw scores against the first 8·tiles keys of stage `stage`.
  template <int kN>
  __device__ void scores(int stage, int tiles, float (&s)[kN][4]) const {
    unit_scores<Tr, kN>(sQ + (threadIdx.x / 32) * Tr::kUnitElems, sK + stage * Tr::kTileElems, tiles, s);
  }
};

// Grid (⌈nq / blocks_per_cta⌉, batch·heads_q, key splits), kEtThreads threads,
// Operands::kSmemBytes of dynamic shared memory. Runs after pool_blocks (it reads sim_q). `pass`
// is a kernel argument, not a template one: the passes share the walk and score code, so one
// instance serves all four (the branches on it sit outside the per-step loops).
// Two CTAs per SM (128 registers; the K ring and the q tiles take 96 KB at hd 128).
// kFullSteps: block_k ≥ kStepKeys, so every step has kStepKeys keys and the score loops have
// compile-time trip counts (unrolled without exits, the ldmatrix loads free to run ahead of the
// mma chain; 12-19% faster where the estimate dominates, same record); else steps of block_k keys.
// Operands: MmaSyncOperands, or WgmmaOperands (sampled_rows_sm90.cuh; kFullSteps, hd ≤ 128).
// k_map, k_by_tma: K by TMA (WgmmaOperands, where the launcher could encode the map).
template <typename T, int kHeadDim, bool kFullSteps, typename Operands>
__global__ void __launch_bounds__(kEtThreads, 2)
    sampled_row_weights(const PredictParams p, int slots, int blocks_per_cta, SampledRowsPass pass,
                        const __grid_constant__ CUtensorMap k_map, bool k_by_tma) {
  using Tr = EtTraits<T, kHeadDim>;
  constexpr int kN = Tr::kStepKeys / 8;  // 8-key tiles per step
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Operands op(smem_raw, &k_map, k_by_tma);
  __shared__ double sRowWeight[2][kSlotsPerCta];  // per step parity: each slot's mass / sum
  __shared__ int sRange[kEtWarps][2];

  const EstimateCta<T> cta(p, blocks_per_cta);
  const int bh = cta.bh, b = cta.b, h = cta.h, i0 = cta.i0, blocks = cta.blocks;
  const int splits = cta.splits, split = blockIdx.z, split_begin = cta.split_begin, split_end = cta.split_end;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int W = kFullSteps ? Tr::kStepKeys : min(p.block_k, Tr::kStepKeys);  // divides block_k
  const int tiles = kFullSteps ? kN : W / 8;  // 8-key tiles a step computes
  const int steps_per_block = p.block_k / W;
  // Runs pass 2 and writes the weights (kTileSums: sampled_rows_combine does).
  const bool masses = pass == SampledRowsPass::kWhole || pass == SampledRowsPass::kMasses;

  // Non-similar blocks: nothing is selected in their rows; zero weights.
  for (int bb = 0; bb < blocks && masses; ++bb) {
    const EstimateBlock blk = estimate_block(p, i0 + bb, h);
    if (blk.similar) continue;
    double* gW = p.scores + (int64_t(bh) * p.num_q_blocks + blk.i) * p.num_k_blocks;
    for (int j = max(blk.begin, split_begin) + threadIdx.x; j < min(blk.end, split_end);
         j += kEtThreads)
      gW[j] = 0.0;
  }

  const int total_slots = blocks * slots;
  for (int slot0 = 0; slot0 < total_slots; slot0 += kSlotsPerCta) {
    // This warp's unit: slots slot0 + 16·warp .. + 15; each lane's rows g and g + 8 and the
    // keys they see.
    const int unit_slot = slot0 + warp * kUnitRows;
    int64_t qrow[2];
    UnitRowKeys rk;
    unit_lane_rows(p, h, i0, blocks, slots, unit_slot, cta.key_end, qrow, rk);
    // The group's q rows (zero rows for empty slots) and each unit's allowed key blocks.
    for (int e = threadIdx.x; e < kSlotsPerCta * Tr::kChunks; e += kEtThreads) {
      const int r = e / Tr::kChunks, c = e % Tr::kChunks;
      copy_q_chunk(op.q_chunk(r, c), cta.gQ, p.q_stride[2], slot_row(p, h, i0, blocks, slots, slot0 + r),
                   c, p.head_dim, cta.vec_q);
    }
    if (lane == 0) {
      const int2 range = unit_key_blocks(p, h, i0, blocks, slots, unit_slot);
      sRange[warp][0] = range.x, sRange[warp][1] = range.y;
    }
    __syncthreads();
    // The key blocks the CTA walks (the union of the units', within the split) and those this
    // warp computes: its unit's, or its warpgroup's four units' (a wgmma is warpgroup-wide).
    int j_begin = INT32_MAX, j_end = 0, u_begin = INT32_MAX, u_end = 0;
    for (int w = 0; w < kEtWarps; ++w) {
      if (sRange[w][0] >= sRange[w][1]) continue;
      j_begin = min(j_begin, sRange[w][0]), j_end = max(j_end, sRange[w][1]);
      if (Operands::kWarpgroupSteps ? w / 4 == warp / 4 : w == warp)
        u_begin = min(u_begin, sRange[w][0]), u_end = max(u_end, sRange[w][1]);
    }
    j_begin = max(j_begin, split_begin), j_end = min(j_end, split_end);  // and the split's
    __syncthreads();  // sRange is read; the next group rewrites it
    // Row slot `slot`'s (max, sum) pairs, one per split (PredictParams::sr_partial).
    const auto partials = [&](int slot) {
      return p.sr_partial + ((int64_t(bh) * p.num_q_blocks + i0) * slots + slot) * splits;
    };
    // kMaxSum: the rows' (max, sum) over the split's keys, quad-reduced, for kMasses to combine.
    const auto store_max_sum = [&](const float (&m)[2], const float (&z)[2]) {
      if (t4 != 0) return;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int slot = unit_slot + g + 8 * hh;
        if (slot < total_slots) partials(slot)[split] = make_float2(m[hh], z[hh]);
      }
    };
    if (j_begin >= j_end) {  // no unit sees a key: let the q copies land before sQ is reused
      cp_async_commit();
      cp_async_wait_all();
      if (pass == SampledRowsPass::kMaxSum) store_max_sum({-INFINITY, -INFINITY}, {0.0f, 0.0f});
      continue;
    }
    const int key_begin = j_begin * p.block_k, key_end_walk = min(j_end * p.block_k, p.seq_k);
    const int steps = (key_end_walk - key_begin + W - 1) / W;
    // A step: its index, its key block and which of the block's steps it is, whether it is the
    // block's last (the block's last W keys, or the keys' end), and whether this warp computes it.
    struct Step {
      int st, j, block_step;
      bool block_last, computed;
    };
    // Steps st = 0 .. steps − 1 in ring stage st % kSampleStages, kSampleStages − 1 tiles ahead
    // loading while `visit` runs (one commit group a step, empty past the last tile). Every
    // thread calls visit(step, s, mul); where step.computed, mul · s are the step's scores in
    // log2 units (step_log2_scores).
    const auto walk = [&](auto&& visit) {
      const auto load = [&](int st) {
        if (st < steps)
          op.load_keys(st % kSampleStages, cta.gK, p.k_stride[2], key_begin + st * W, W, p.seq_k,
                       p.head_dim, cta.vec_k, b, h / p.group);
        cp_async_commit();
      };
      for (int st = 0; st < kSampleStages - 1; ++st) load(st);
      Step step{0, j_begin, 0, false, false};
      for (; step.st < steps; ++step.st) {
        cp_async_wait_groups<kSampleStages - 2>();  // this thread's copies of tile st (and of q)
        op.keys_landed(step.st % kSampleStages, step.st == 0);
        __syncthreads();  // every thread's copies; every warp is done with tile st − 1's buffer
        load(step.st + kSampleStages - 1);
        const int key0 = key_begin + step.st * W;
        step.block_last = step.block_step + 1 == steps_per_block || key0 + W >= p.seq_k;
        step.computed = step.j >= u_begin && step.j < u_end;
        float s[kN][4];
        float mul = 1.0f;
        if (step.computed) {
          op.template scores<kN>(step.st % kSampleStages, tiles, s);
          mul = step_log2_scores<kN>(p, s, tiles, cta.mul, key0, rk, qrow, b, h);
        }
        visit(step, s, mul);
        if (++step.block_step == steps_per_block) step.block_step = 0, ++step.j;
      }
      cp_async_wait_all();  // only empty groups remain
      __syncthreads();      // every warp is done with every buffer
    };

    if (pass == SampledRowsPass::kTileSums) {
      // One pass: per row and key block the online max and sum over the block's steps, stored
      // at its last step as log2 Σ 2^t (−∞ where the row sees none of its keys; NaN stays);
      // sampled_rows_combine turns them into the weights. Lane 4g + t (t < 2) stores row g + 8t
      // (one logarithm a lane; log2_approx: z holds its max's 1).
      float* row_lse = nullptr;
      if (t4 < 2 && unit_slot + g + 8 * t4 < total_slots)
        row_lse = p.sr_tile_lse + ((int64_t(bh) * p.num_q_blocks + i0) * slots + unit_slot + g + 8 * t4) *
                                      int64_t(p.num_k_blocks);
      float m[2] = {-INFINITY, -INFINITY}, z[2] = {0.0f, 0.0f};
      walk([&](const Step& step, float (&s)[kN][4], float mul) {
        if (!step.computed) return;
        online_max_sum<kN, Operands::kWarpgroupSteps>(s, tiles, m, z, mul);
        if (!step.block_last) return;
        quad_sum(z);
        if (row_lse != nullptr) {
          const float mt = t4 == 0 ? m[0] : m[1], zt = t4 == 0 ? z[0] : z[1];
          row_lse[step.j] = zt == 0.0f ? -INFINITY : mt + log2_approx(zt);
        }
        m[0] = m[1] = -INFINITY, z[0] = z[1] = 0.0f;
      });
      continue;  // after walk's final barrier: the q tiles and sRange are free for the next group
    }

    // Pass 1: online max and sum of 2^t per row (each thread: rows g, g + 8, its columns; the
    // max is the quad's, so the partial sums share it and add up at the end). kMasses instead
    // combines the splits' (max, sum): z = Σ z_c · 2^(m_c − m), in split order.
    float m[2] = {-INFINITY, -INFINITY}, z[2] = {0.0f, 0.0f};
    if (pass == SampledRowsPass::kMasses) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int slot = unit_slot + g + 8 * hh;
        if (slot >= total_slots) continue;
        const float2* part = partials(slot);
        for (int c = 0; c < splits; ++c) m[hh] = fmaxf(m[hh], part[c].x);
        for (int c = 0; c < splits; ++c) {
          const float2 mz = part[c];
          // A split that saw no key (z 0) adds nothing, also where 2^(0 − m) would overflow; a
          // NaN sum is not 0 and stays.
          if (mz.y != 0.0f) z[hh] += mz.y * exp2f(exp_base(mz.x) - exp_base(m[hh]));
        }
      }
    } else {
      walk([&](const Step& step, float (&s)[kN][4], float mul) {
        if (step.computed) online_max_sum<kN, Operands::kWarpgroupSteps>(s, tiles, m, z, mul);
      });
      quad_sum(z);
    }
    if (pass == SampledRowsPass::kMaxSum) {
      store_max_sum(m, z);
      continue;  // after walk's final barrier: the q tiles and sRange are free for the next group
    }
    const float base[2] = {exp_base(m[0]), exp_base(m[1])};

    // Key block j's weights, which step st (its last) wrote, for every block of the CTA with
    // slots in this group: thread bb adds its block's slots in order, to what earlier groups left
    // in the entry, and divides by the block's row count after its last slot.
    const auto flush_weights = [&](int st, int j) {
      if (int(threadIdx.x) >= blocks) return;
      const int bb = threadIdx.x;
      const EstimateBlock blk = estimate_block(p, i0 + bb, h);
      const int first_slot = bb * slots, end_slot = first_slot + int(blk.count);
      const int a = max(first_slot, slot0), e = min(end_slot, slot0 + kSlotsPerCta);
      if (!blk.similar || a >= e || j < blk.begin || j >= blk.end) return;
      double* gW = p.scores + (int64_t(bh) * p.num_q_blocks + blk.i) * p.num_k_blocks + j;
      double w = a == first_slot ? 0.0 : *gW;
      for (int sl = a; sl < e; ++sl) w += sRowWeight[st & 1][sl - slot0];
      *gW = e == end_slot ? w / double(blk.count) : w;
    };

    // Pass 2: P = 2^(t − m) summed per row and key block; at a key block's last step each row's
    // mass / sum goes to its slot (0 for an empty slot or a row that sees no key; NaN stays).
    // The first step of a key block flushes the block before it (its last step wrote the
    // weights before this step's barrier); the walk's last step ends a block.
    float mass[2] = {0.0f, 0.0f};  // the current key block's, this thread's columns
    walk([&](const Step& step, float (&s)[kN][4], float mul) {
      if (step.st > 0 && step.block_step == 0) flush_weights(step.st - 1, step.j - 1);
      if (!step.computed) return;
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n >= tiles) break;
#pragma unroll
        for (int e = 0; e < 4; ++e) mass[e >> 1] += exp2f(fmaf(s[n][e], mul, -base[e >> 1]));
      }
      if (!step.block_last) return;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float ms = mass[hh];
        ms += __shfl_xor_sync(0xffffffffu, ms, 1);
        ms += __shfl_xor_sync(0xffffffffu, ms, 2);
        mass[hh] = 0.0f;
        if (t4 == 0)
          sRowWeight[step.st & 1][warp * kUnitRows + g + 8 * hh] = z[hh] == 0.0f ? 0.0 : double(ms) / double(z[hh]);
      }
    });
    flush_weights(steps - 1, j_begin + (steps - 1) / steps_per_block);  // after walk's final barrier
    __syncthreads();  // the flush has read sRowWeight before the next group's pass 2 writes it
  }
}

// One pass's weights (sampled_rows_one_pass): grid (nq, batch·heads_q), kCombineThreads
// threads (a warp per row slot), after sampled_row_weights(kTileSums). Per query block, warp s
// reads its sampled row's tile sums L_j over the allowed key blocks once, for the row's max m and
// total Σ_j 2^(L_j − m) (online, lanes combined in a fixed order); then each thread writes its
// key blocks' weights Σ_s 2^(L_sj − m_s) / total_s over the rows in slot order, divided by their
// count. Non-similar blocks get zeros; a row that sees no key (m = −∞) adds nothing; a NaN stays
// (the max keeps it, so the row's total is NaN). Every entry has one writer and fixed-order sums:
// reproducible.
constexpr int kCombineThreads = 32 * 4;  // slots ≤ 4 (sampled_rows_one_pass)
__global__ void __launch_bounds__(kCombineThreads) sampled_rows_combine(const PredictParams p, int slots) {
  __shared__ float sMax[kCombineThreads / 32], sTotal[kCombineThreads / 32];
  const int i = blockIdx.x, bh = blockIdx.y, h = bh % p.heads_q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const EstimateBlock blk = estimate_block(p, i, h);
  double* gW = p.scores + (int64_t(bh) * p.num_q_blocks + i) * p.num_k_blocks;
  if (!blk.similar) {
    for (int j = blk.begin + threadIdx.x; j < blk.end; j += kCombineThreads) gW[j] = 0.0;
    return;
  }
  const float* gL = p.sr_tile_lse + (int64_t(bh) * p.num_q_blocks + i) * slots * int64_t(p.num_k_blocks);
  // (m, z) ⊕ (m', z'): the max keeps a NaN (fmaxf would drop it); z rescaled to the new max.
  const auto merge = [](float& m, float& z, float m2, float z2) {
    const float mm = m != m || m > m2 ? m : m2;
    const float base = mm == -INFINITY ? 0.0f : mm;
    z = z * exp2f(m - base) + z2 * exp2f(m2 - base);  // 0 · 2^(−∞) = 0 for an empty side
    m = mm;
  };
  if (warp < int(blk.count)) {
    const float* L = gL + int64_t(warp) * p.num_k_blocks;
    float m = -INFINITY, z = 0.0f;
    for (int j = blk.begin + lane; j < blk.end; j += 32) merge(m, z, L[j], 1.0f);
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, off), z2 = __shfl_xor_sync(0xffffffffu, z, off);
      merge(m, z, m2, z2);
    }
    if (lane == 0) sMax[warp] = m, sTotal[warp] = z;
  }
  __syncthreads();
  for (int j = blk.begin + threadIdx.x; j < blk.end; j += kCombineThreads) {
    double w = 0.0;
    for (int s = 0; s < int(blk.count); ++s) {
      const float m = sMax[s];
      if (m == -INFINITY) continue;  // the row sees no key
      w += double(exp2f(gL[int64_t(s) * p.num_k_blocks + j] - m)) / double(sTotal[s]);
    }
    gW[j] = w / double(blk.count);
  }
}

}  // namespace sparge::cuda
