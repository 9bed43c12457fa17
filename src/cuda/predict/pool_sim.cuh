// Stage 1, first half: the key mean km and, per block of BQ (q) or BK (smoothed k) rows, the
// pooled row p = Σ rows / n and the self-similarity s = ‖Σ x̂_r‖² / n² over the block's n valid
// rows (x̂ = x/‖x‖, a zero row stays zero). Everything is accumulated in double, as in the CPU
// reference, so that masks agree except at exact ties. One pass over q and two over k; q is
// pooled first, and the key side is skipped for the kv heads none of whose query blocks is
// similar, and pooled once for all the row chunks of a call (PredictParams::key_side_needed).
#pragma once

#include <cstdint>
#include <type_traits>

#include <math_constants.h>

#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/row_chunks.cuh"

namespace sparge::cuda {

// Both kernels read q or k once as 16-byte chunks (row_chunks.cuh) and keep several loads in
// flight per lane (key mean: in registers; pooling: through a ring in shared memory), so that
// they approach HBM bandwidth; the sums are combined in a fixed order.
constexpr int kMeanThreads = 256;
constexpr int kMeanTokensPerLane = 8;  // loads a lane issues before it adds the first
constexpr int kPoolThreads = 128;
constexpr int kPoolWarps = kPoolThreads / 32;
constexpr int kPoolRowsPerLane = 4;  // rows a lane widens at once (a group: 4 loads a lane)
// Groups in pool_blocks' ring: two are loading while one is summed (24 KB of shared memory; the
// former one group in flight, in registers, left pool_blocks below 60% of HBM bandwidth once
// its instructions were cut: bench/results/2026-12-06_NVIDIA-H100_pool-widen-once.md).
constexpr int kPoolStages = 3;

// kv head `bhk`'s key side (PredictParams::key_side_needed): kNeeded (pool it now), kPooled (an
// earlier row chunk of the call did) or kUnused (no query block of its heads is similar: the gate
// computes every tile of their rows whatever the keys hold). Without the states: always kNeeded.
__device__ __forceinline__ KeySide key_side_state(const PredictParams& p, int bhk) {
  return p.key_side_needed == nullptr ? kKeySideNeeded : KeySide(p.key_side_needed[bhk]);
}

// After pool_blocks<k>: the key side pooled now serves the call's later row chunks. Grid
// ⌈batch·heads_kv / 128⌉ × 128.
__global__ void key_side_pooled(const PredictParams p) {
  const int bhk = blockIdx.x * blockDim.x + threadIdx.x;
  if (bhk < p.batch * p.heads_kv && p.key_side_needed[bhk] == kKeySideNeeded)
    p.key_side_needed[bhk] = kKeySidePooled;
}

// Partial key sums over chunks of kKeyMeanChunk tokens: grid (chunks, batch·heads_kv),
// kMeanThreads threads. Lane groups of lanes_per_row(D) lanes each read one token per load.
template <typename T>
__global__ void __launch_bounds__(kMeanThreads) key_mean_partial(const PredictParams p) {
  __shared__ double sPart[kMeanThreads / 32][256];
  const int bh = blockIdx.y, b = bh / p.heads_kv, hk = bh % p.heads_kv;
  if (key_side_state(p, bh) != kKeySideNeeded) return;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const int D = p.head_dim, lanes = lanes_per_row(D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = lane % lanes, slot = lane / lanes;
  const bool vec = rows_vectorizable(gK, p.k_stride[2], D);
  const int t0 = blockIdx.x * kKeyMeanChunk;
  const int t1 = min(p.seq_k, t0 + kKeyMeanChunk);
  const int step = kMeanThreads / lanes;  // tokens one load instruction of the CTA covers

  double sum[kChunkElems] = {};
  // kVec: 16-byte loads (a compile-time choice, so the loop holds one load path).
  const auto add_tokens = [&](auto vec_tag) {
    constexpr bool kVec = decltype(vec_tag)::value;
    for (int t = t0 + warp * (32 / lanes) + slot; t < t1; t += step * kMeanTokensPerLane) {
      uint4 raw[kMeanTokensPerLane];
#pragma unroll
      for (int u = 0; u < kMeanTokensPerLane; ++u) {
        const int tu = t + u * step;
        raw[u] = tu < t1 ? load_chunk(gK + int64_t(tu) * p.k_stride[2], chunk, D, kVec)
                         : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kMeanTokensPerLane; ++u) {
        double x[kChunkElems];
        widen_chunk<T>(raw[u], x);
#pragma unroll
        for (int e = 0; e < kChunkElems; ++e) sum[e] += x[e];
      }
    }
  };
  if (chunk * kChunkElems < D) {
    if (vec)
      add_tokens(std::true_type{});
    else
      add_tokens(std::false_type{});
  }
  // Fixed order: the lanes of a chunk (xor tree), then the warps in order.
  for (int off = lanes; off < 32; off <<= 1)
#pragma unroll
    for (int e = 0; e < kChunkElems; ++e) sum[e] += __shfl_xor_sync(0xffffffffu, sum[e], off);
#pragma unroll
  for (int e = 0; e < kChunkElems; ++e) {
    const int d = chunk * kChunkElems + e;
    if (slot == 0 && d < D) sPart[warp][d] = sum[e];
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += kMeanThreads) {
    double s = 0.0;
    for (int w = 0; w < kMeanThreads / 32; ++w) s += sPart[w][d];
    p.km_partial[(int64_t(bh) * gridDim.x + blockIdx.x) * D + d] = s;
  }
}

// km = Σ partials / Nk in a fixed order (runs are bit-reproducible): grid (batch·heads_kv).
__global__ void key_mean_finalize(const PredictParams p, int chunks) {
  const int bh = blockIdx.x;
  if (key_side_state(p, bh) != kKeySideNeeded) return;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    double sum = 0.0;
    for (int c = 0; c < chunks; ++c) sum += p.km_partial[(int64_t(bh) * chunks + c) * p.head_dim + d];
    p.km[int64_t(bh) * p.head_dim + d] = sum / double(p.seq_k);
  }
}

// Σ over a row group's `lanes` lanes of v[u] (the lane's part of its u-th row), left in every
// lane c of the group for row c % 4: two halving exchanges hand each lane one row (three adds
// for the four rows, where a butterfly per row would take two each), then a butterfly over the
// other lanes. Each lane then computes one 1/‖x‖ instead of four.
__device__ __forceinline__ double row_sums_scattered(const double (&v)[kPoolRowsPerLane], int lanes) {
  static_assert(kPoolRowsPerLane == 4, "two halving steps");
  const int lane = threadIdx.x % 32;
  const bool upper2 = lane & 2, upper1 = lane & 1;
  double half[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const double keep = upper2 ? v[j + 2] : v[j], give = upper2 ? v[j] : v[j + 2];
    half[j] = keep + __shfl_xor_sync(0xffffffffu, give, 2);
  }
  const double keep = upper1 ? half[1] : half[0], give = upper1 ? half[0] : half[1];
  double s = keep + __shfl_xor_sync(0xffffffffu, give, 1);
  for (int off = 4; off < lanes; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  return s;
}

// Blocks a CTA of pool_blocks pools in turn: enough that a CTA's start (the first loads' latency
// with nothing to overlap) and end (the block's reduction) are paid once per several blocks,
// while the grid keeps about 4 waves of 3 CTAs on each of a 132-SM H100 / H200's SMs; at most 8.
// Measured at 32K tokens on an H100: k (64-row blocks, twice the CTA starts per byte) 224 → 200
// µs, q unchanged at 153 µs: its per-element loop, not its start, is q's cost
// (bench/results/2026-12-06_NVIDIA-H100_pool-per-cta.md).
inline int pool_blocks_per_cta(int64_t blocks, int64_t heads) {
  constexpr int64_t kWaveCtas = 4 * 3 * 132;
  const int64_t per = blocks * heads / kWaveCtas;
  return int(per < 1 ? 1 : per > 8 ? 8 : per);
}

// Pool blocks: grid (⌈count / blocks_per_cta⌉, batch·heads), kPoolThreads threads; CTA x pools
// blocks first + [x·blocks_per_cta, min((x+1)·blocks_per_cta, count)) of its (batch, head) in
// turn, where first is PredictParams::key_block_first for keys, 0 for queries. kIsKey: subtract
// km and write the pooled row transposed ([D][nk]) for the score kernel. Lane groups of
// lanes_per_row(D) lanes read one row per load, 4 rows a lane per group; the CTA's blocks' groups
// stream through a ring of kPoolStages groups in shared memory, the loads of the next two (across
// block ends) in flight while a group is summed. Every block's sums run in the order of one block
// per CTA.
template <typename T, bool kIsKey>
__global__ void __launch_bounds__(kPoolThreads, 3)
    pool_blocks(const PredictParams p, int count, int blocks_per_cta) {
  __shared__ double sSum[kPoolWarps][256];
  __shared__ double sUnit[kPoolWarps][256];
  __shared__ double sUnitSq[kPoolWarps];
  __shared__ double sMean[kMaxChunks * kChunkElems];  // km, zero past D (key blocks only)
  __shared__ uint4 sRing[kPoolStages][kPoolRowsPerLane][kPoolThreads];  // groups in flight
  const int heads = kIsKey ? p.heads_kv : p.heads_q;
  const int block_rows = kIsKey ? p.block_k : p.block_q;
  const int seq = kIsKey ? p.seq_k : p.seq_q;
  const int nblocks = kIsKey ? p.num_k_blocks : p.num_q_blocks;
  const int first = kIsKey ? p.key_block_first : 0, bh = blockIdx.y;
  const int local0 = blockIdx.x * blocks_per_cta, local_end = min(count, local0 + blocks_per_cta);
  const int b = bh / heads, h = bh % heads;
  const int64_t* stride = kIsKey ? p.k_stride : p.q_stride;
  const int D = p.head_dim, lanes = lanes_per_row(D), rows_per_warp = 32 / lanes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = lane % lanes, slot = lane / lanes;
  const bool has_chunk = chunk * kChunkElems < D;
  const T* gHead = static_cast<const T*>(kIsKey ? p.k : p.q) + b * stride[0] + h * stride[1];
  if (kIsKey && key_side_state(p, bh) == kKeySidePooled) return;  // an earlier row chunk did
  if (kIsKey && key_side_state(p, bh) == kKeySideUnused) {
    // Nothing reads these blocks' values (every row of its heads is computed whole); they are
    // written as zero blocks that are not similar, so that later kernels read defined memory.
    for (int local = local0; local < local_end; ++local) {
      const int blk = first + local;
      for (int d = threadIdx.x; d < D; d += kPoolThreads)
        p.pooled_kt[(int64_t(bh) * D + d) * nblocks + blk] = 0.0;
      if (threadIdx.x == 0) p.sim_k[int64_t(bh) * nblocks + blk] = CUDART_NAN;
    }
    return;
  }
  // Lane (warp, slot)'s rows of a block: lane_row + g·rows_per_group + u·rows_per_load for its
  // load u of group g; each load instruction of a warp reads adjacent rows.
  const int rows_per_load = kPoolWarps * rows_per_warp;
  const int rows_per_group = rows_per_load * kPoolRowsPerLane;
  const int lane_row = warp * rows_per_warp + slot;
  const int64_t load_step = int64_t(rows_per_load) * stride[2];
  const auto rows_in_block = [&](int local) { return min(seq - (first + local) * block_rows, block_rows); };

  // km sits in shared memory, not registers: 16 more registers per lane would spill at 3 CTAs/SM.
  if (kIsKey) {
    for (int d = threadIdx.x; d < kMaxChunks * kChunkElems; d += kPoolThreads)
      sMean[d] = d < D ? p.km[int64_t(bh) * D + d] : 0.0;
    __syncthreads();
  }
  // A block's sums, reduced in a fixed order: its pooled row, its similarity, and the key-side
  // state the query side decides.
  const auto finish_block = [&](int blk, int n, double (&sum)[kChunkElems], double (&unit)[kChunkElems]) {
    // Fixed order: the row slots of a warp (xor tree), the warps in order, then ‖Σ x̂‖² over d.
    for (int off = lanes; off < 32; off <<= 1)
#pragma unroll
      for (int e = 0; e < kChunkElems; ++e) {
        sum[e] += __shfl_xor_sync(0xffffffffu, sum[e], off);
        unit[e] += __shfl_xor_sync(0xffffffffu, unit[e], off);
      }
#pragma unroll
    for (int e = 0; e < kChunkElems; ++e) {
      const int d = chunk * kChunkElems + e;
      if (slot == 0 && d < D) {
        sSum[warp][d] = sum[e];
        sUnit[warp][d] = unit[e];
      }
    }
    __syncthreads();
    double unit_sq = 0.0;
    for (int d = threadIdx.x; d < D; d += kPoolThreads) {
      double s = 0.0, u = 0.0;
      for (int w = 0; w < kPoolWarps; ++w) {
        s += sSum[w][d];
        u += sUnit[w][d];
      }
      unit_sq += u * u;
      const double pooled = s / double(n);
      if (kIsKey)
        p.pooled_kt[(int64_t(bh) * D + d) * nblocks + blk] = pooled;
      else
        p.pooled_q[(int64_t(bh) * nblocks + blk) * D + d] = pooled;
    }
    unit_sq = warp_sum(unit_sq);
    if (lane == 0) sUnitSq[warp] = unit_sq;
    __syncthreads();  // also: every lane is done with sSum / sUnit before the next block's stores
    if (threadIdx.x == 0) {
      double total = 0.0;
      for (int w = 0; w < kPoolWarps; ++w) total += sUnitSq[w];
      const double sim = total / (double(n) * double(n));
      (kIsKey ? p.sim_k : p.sim_q)[int64_t(bh) * nblocks + blk] = sim;
      // The selection's test (NaN compares false: not similar). A key side an earlier row chunk
      // pooled stays kPooled; the CTAs that race here all write kNeeded over kUnused.
      if (!kIsKey && p.key_side_needed != nullptr && sim > double(p.sim_threshold[p.per_head ? h : 0])) {
        int32_t& state = p.key_side_needed[b * p.heads_kv + h / p.group];
        if (state == kKeySideUnused) state = kKeySideNeeded;
      }
    }
  };
  // 16-byte loads serve every row where they serve the head's first (base and token stride).
  const bool vec = rows_vectorizable(gHead, stride[2], D);
  // Every block of the CTA has block_rows rows in whole groups (all CTAs but one that holds a
  // sequence's short last block).
  const bool whole = block_rows % rows_per_group == 0 &&
                     int64_t(first + local_end) * block_rows <= int64_t(seq);
  // The CTA's walk over its blocks, with vec and whole as compile-time facts, so that the common
  // case's loop tests no row and holds one load path. Each element is widened to double once and
  // kept in registers until its row's norm is known (the former integer widening, redone by
  // ptxas for the x̂ sums and with its non-finite checks, was ~40% of the kernel's instructions:
  // 2026-12-06_NVIDIA-H100_stage1-ncu-full-8k-265a223.txt). At 3 CTAs per SM pool_blocks<k>
  // spills a few registers, outside its whole-block loop (sm_90a, ptxas -v and SASS).
  const auto walk_blocks = [&](auto vec_tag, auto whole_tag) {
    constexpr bool kVec = decltype(vec_tag)::value, kWhole = decltype(whole_tag)::value;
    const int groups_per_block = (block_rows + rows_per_group - 1) / rows_per_group;
    // The loads run kPoolStages − 1 groups ahead of the sums through a ring in shared memory (a
    // lane reads back only its own copies, so its cp.async group waits are all the ordering
    // needed). The element path (!kVec) stores its loads there synchronously.
    int issue_local = local0, issue_g = 0, issue_slot = 0;
    const auto issue_next_group = [&] {
      if (issue_local < local_end) {
        const int n = rows_in_block(issue_local);
        const int r0 = issue_g * rows_per_group + lane_row;
        const T* row = gHead + int64_t((first + issue_local) * block_rows + r0) * stride[2];
#pragma unroll
        for (int u = 0; u < kPoolRowsPerLane; ++u) {
          const bool load = has_chunk && (kWhole || r0 + u * rows_per_load < n);
          uint4* dst = &sRing[issue_slot][u][threadIdx.x];
          if constexpr (kVec) {
            if (load) cp_async_16(dst, row + u * load_step + chunk * kChunkElems, true);
          } else {
            *dst = load ? load_chunk(row + u * load_step, chunk, D, false) : make_uint4(0, 0, 0, 0);
          }
        }
        if (++issue_g == groups_per_block) issue_g = 0, ++issue_local;
        issue_slot = issue_slot + 1 == kPoolStages ? 0 : issue_slot + 1;
      }
      cp_async_commit();  // empty groups past the end keep the count the waits assume
    };
#pragma unroll
    for (int s = 0; s + 1 < kPoolStages; ++s) issue_next_group();
    int slot = 0;
    for (int local = local0; local < local_end; ++local) {
      const int blk = first + local;
      const int n = rows_in_block(local);
      const int groups = kWhole ? groups_per_block : (n + rows_per_group - 1) / rows_per_group;
      double sum[kChunkElems], unit[kChunkElems];
#pragma unroll
      for (int e = 0; e < kChunkElems; ++e) sum[e] = unit[e] = 0.0;
      for (int g = 0; g < groups_per_block; ++g) {
        // The slot this lane read one group ago: its values are in use, so its reads are done.
        issue_next_group();
        cp_async_wait_groups<kPoolStages - 1>();
        const int this_slot = slot;
        slot = slot + 1 == kPoolStages ? 0 : slot + 1;
        if (!kWhole && g >= groups) continue;  // a short block's groups past its rows
        double mean[kChunkElems];
#pragma unroll
        for (int e = 0; e < kChunkElems; ++e) mean[e] = kIsKey ? sMean[chunk * kChunkElems + e] : 0.0;
        double x[kPoolRowsPerLane][kChunkElems], sq[kPoolRowsPerLane];
#pragma unroll
        for (int u = 0; u < kPoolRowsPerLane; ++u) {
          // Rows past the block's end add nothing (not −km); their slots were not loaded, nor
          // were a lane's channels past head_dim (zeros, as km is there).
          const bool row_ok = kWhole || g * rows_per_group + u * rows_per_load + lane_row < n;
          widen_chunk<T>(has_chunk ? sRing[this_slot][u][threadIdx.x] : make_uint4(0, 0, 0, 0), x[u]);
          sq[u] = 0.0;
#pragma unroll
          for (int e = 0; e < kChunkElems; ++e) {
            if (kIsKey) x[u][e] -= mean[e];
            x[u][e] = row_ok ? x[u][e] : 0.0;
            sq[u] += x[u][e] * x[u][e];
            sum[e] += x[u][e];
          }
        }
        // ‖x_r‖² is spread over the row's lanes: each lane finishes one row's 1/‖x‖, then shares it.
        const double row_sq = row_sums_scattered(sq, lanes);
        const double inv_norm = row_sq > 0.0 ? 1.0 / sqrt(row_sq) : 0.0;
#pragma unroll
        for (int u = 0; u < kPoolRowsPerLane; ++u) {
          const double inv = __shfl_sync(0xffffffffu, inv_norm, (lane & ~(lanes - 1)) | u);
#pragma unroll
          for (int e = 0; e < kChunkElems; ++e) unit[e] += x[u][e] * inv;
        }
      }
      finish_block(blk, n, sum, unit);
    }
    cp_async_wait_all();  // no copy outlives the CTA's walk
  };
  if (vec && whole)
    walk_blocks(std::true_type{}, std::true_type{});
  else if (vec)
    walk_blocks(std::true_type{}, std::false_type{});
  else
    walk_blocks(std::false_type{}, std::false_type{});
}

}  // namespace sparge::cuda
