// Stage 1, error target, first kernel (docs/method.md, "The error target"): for the sampled rows
// of each similar query block, in fp32 on the tensor cores (as src/cpu/error_target.cc sample()):
//  - the rows' softmax max m_r and sum z_r over the keys each sees (pass 1, online),
//  - the weights of the sampled_rows estimate, Σ_r mass_r[j] / z_r / rows per key block j, into
//    PredictParams::scores (select_blocks and error_target_rows rank by them),
//  - each row's exact output o_r = Σ_c 2^(t_rc − m_r) v_c / Σ_c 2^(t_rc − m_r) (pass 2), and m_r,
//    into the workspace for error_target_rows (error_target.cuh).
// One CTA per kEtWarps units (a unit = 16 sampled rows of one query block: with the default 16
// rows, 8 consecutive query blocks of one head), 8 warps, warp w = unit w. The CTA walks the
// union of its blocks' allowed keys in steps of kStepKeys with K (and V) double-buffered by
// cp.async in swizzled shared memory, so a K/V tile loaded once serves 8 units, as a dense tile
// serves its 128 rows; a warp skips the tiles its block does not see. P·V splits P into 16-bit
// parts (error_target_tiles.cuh). Every sum has a fixed order: runs are bit-reproducible.
// Smem: 2 K + 2 V tiles + 8 unit q tiles, (4·kStepKeys + 128)·kHeadDim·2 bytes (96 KB at 128).
// Chosen when target_error > 0 (instead of sampled_row_weights), head_dim ≤ 256.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/geometry.h"
#include "cuda/common/math.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/predict/error_target_tiles.cuh"
#include "cuda/predict/params.h"

namespace sparge::cuda {

template <typename Tr>
constexpr int error_target_sample_smem() {
  return (4 * Tr::kTileElems + kEtWarps * Tr::kUnitElems) * int(sizeof(typename Tr::Element));
}

// One query block's place in the CTA: its index, rows, units and allowed key blocks.
struct SampleBlock {
  int i;
  int64_t first, n, count;
  int units;           // ⌈count / 16⌉, 0 for a non-similar block (not estimated)
  int begin, end;      // allowed key blocks
};
__device__ __forceinline__ SampleBlock sample_block(const PredictParams& p, int i, int h) {
  SampleBlock blk;
  blk.i = i;
  blk.first = int64_t(i) * p.block_q;
  blk.n = min(int64_t(p.block_q), int64_t(p.seq_q) - blk.first);
  blk.count = detail::sampled_row_count(p.sample_rows, blk.n);
  const int64_t row = int64_t(blockIdx.y) * p.num_q_blocks + i;
  const bool similar = p.sim_q[row] > double(p.sim_threshold[p.per_head ? h : 0]);
  blk.units = similar ? int((blk.count + kUnitRows - 1) / kUnitRows) : 0;
  const detail::BlockRange r =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  blk.begin = int(r.begin), blk.end = int(r.end);
  return blk;
}

// Grid (⌈nq / blocks_per_cta⌉, batch·heads_q), kEtThreads threads, error_target_sample_smem
// bytes. unit_tiles = et_rows / 16 (units of a full block); blocks_per_cta = max(1, 8 / unit_tiles).
// Two CTAs per SM where their shared memory fits (128 registers; a few spills at hd 128): at one
// 8-warp CTA per SM the kernel was latency-bound; two measured 11-18% faster on the H200
// (bench/results/2026-12-04_NVIDIA-H200_error-target-occupancy_check.md). Where two do not fit
// (hd 256; hd 128 on sm_80's 164 KiB) the register cap would only add spills, so it stays at one.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int kSmemPerSm = 164 * 1024;
#else
constexpr int kSmemPerSm = 227 * 1024;
#endif
template <typename Tr>
constexpr int error_target_sample_ctas_per_sm() {
  return 2 * error_target_sample_smem<Tr>() <= kSmemPerSm ? 2 : 1;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kEtThreads,
                                  error_target_sample_ctas_per_sm<EtTraits<T, kHeadDim>>())
    error_target_sample(const PredictParams p, int blocks_per_cta, int unit_tiles) {
  using Tr = EtTraits<T, kHeadDim>;
  constexpr int kN = Tr::kStepKeys / 8;                 // 8-key tiles per step
  constexpr int kAccN = Tr::kExactChannels / 8;         // 8-channel tiles of the exact output
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [2][kTileElems]
  T* sV = sK + 2 * Tr::kTileElems;          // [2][kTileElems]
  T* sQ = sV + 2 * Tr::kTileElems;          // [kEtWarps][kUnitElems]
  __shared__ double sUnitWeight[2][kEtWarps];  // per step parity: a unit's Σ_r mass / z
  __shared__ int sRange[kEtWarps][2];

  const int bh = blockIdx.y, b = bh / p.heads_q, h = bh % p.heads_q, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t4 = lane % 4;
  const int i0 = blockIdx.x * blocks_per_cta;
  const int blocks = min(blocks_per_cta, p.num_q_blocks - i0);
  const T* gQ = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* gK = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* gV = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool vec_q = rows_vectorizable(gQ, p.q_stride[2], p.head_dim);
  const bool vec_k = rows_vectorizable(gK, p.k_stride[2], p.head_dim);
  const bool vec_v = rows_vectorizable(gV, p.v_stride[2], p.head_dim);
  const float mul = float(p.scale) * kLog2e;
  const int W = min(p.block_k, Tr::kStepKeys);  // keys per step; divides block_k

  // Non-similar blocks: nothing is selected in their rows; zero weights (as sampled_row_weights).
  for (int bb = 0; bb < blocks; ++bb) {
    const SampleBlock blk = sample_block(p, i0 + bb, h);
    if (blk.units > 0) continue;
    double* gW = p.scores + (int64_t(bh) * p.num_q_blocks + blk.i) * p.num_k_blocks;
    for (int j = blk.begin + threadIdx.x; j < blk.end; j += kEtThreads) gW[j] = 0.0;
  }

  const int units = blocks * unit_tiles;
  for (int u0 = 0; u0 < units; u0 += kEtWarps) {
    // This warp's unit: tile `unit` of block bb (inactive past the block's rows or non-similar).
    const int u = u0 + warp, bb = u / unit_tiles, unit = u % unit_tiles;
    const SampleBlock blk = sample_block(p, i0 + min(bb, blocks - 1), h);
    const bool active = u < units && unit < blk.units;
    const UnitRowKeys rk = unit_row_keys(p, blk.first, blk.n, active ? blk.count : 0, unit);
    T* sQw = sQ + warp * Tr::kUnitElems;
    load_unit_rows<Tr>(sQw, gQ, p.q_stride[2], p.head_dim, vec_q, blk.first, blk.n,
                       active ? blk.count : 0, unit, lane, 32);
    if (lane == 0) sRange[warp][0] = active ? blk.begin : INT32_MAX, sRange[warp][1] = active ? blk.end : 0;
    __syncthreads();
    int j_begin = INT32_MAX, j_end = 0;  // the union of the units' allowed key blocks
    for (int w = 0; w < kEtWarps; ++w)
      if (sRange[w][0] < sRange[w][1]) j_begin = min(j_begin, sRange[w][0]), j_end = max(j_end, sRange[w][1]);
    __syncthreads();  // sRange is read; the next group rewrites it
    if (j_begin >= j_end) {  // no unit sees a key: let the q copies land before sQ is reused
      cp_async_commit();
      cp_async_wait_all();
      continue;
    }
    const int key_begin = j_begin * p.block_k, key_end = min(j_end * p.block_k, p.seq_k);
    const int steps = (key_end - key_begin + W - 1) / W;
    const auto sees = [&](int key0) {
      const int j = key0 / p.block_k;
      return active && j >= blk.begin && j < blk.end;
    };
    // Steps st = 0 .. steps − 1 in buffer st % 2, the next loading while `visit` runs.
    const auto walk = [&](bool with_v, auto&& visit) {
      const auto load = [&](int st) {
        const int key0 = key_begin + st * W, buf = st & 1;
        load_key_tile<Tr>(sK + buf * Tr::kTileElems, gK, p.k_stride[2], key0, W, p.seq_k, p.head_dim, vec_k);
        if (with_v)
          load_key_tile<Tr>(sV + buf * Tr::kTileElems, gV, p.v_stride[2], key0, W, p.seq_k, p.head_dim, vec_v);
      };
      load(0);
      cp_async_commit();
      for (int st = 0; st < steps; ++st) {
        cp_async_wait_all();
        __syncthreads();  // tile st is in; every warp is done with tile st − 1
        if (st + 1 < steps) load(st + 1);
        cp_async_commit();
        visit(st, key_begin + st * W, sK + (st & 1) * Tr::kTileElems, sV + (st & 1) * Tr::kTileElems);
      }
      __syncthreads();  // every warp is done with both buffers
    };

    // Pass 1: online max and sum of 2^t per row (each thread: rows g, g + 8, its columns; the
    // max is the quad's, so the partial sums share it and add up at the end).
    float m[2] = {-INFINITY, -INFINITY}, z[2] = {0.0f, 0.0f};
    walk(false, [&](int, int key0, const T* sKt, const T*) {
      if (!sees(key0)) return;
      float s[kN][4];
      unit_scores<Tr, kN>(sQw, sKt, W / 8, s);
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n >= W / 8) break;
        scale_and_mask(s[n], mul, key0 + 8 * n, rk);
      }
      online_max_sum<kN>(s, W / 8, m, z);
    });
    quad_sum(z);
    const float base[2] = {exp_base(m[0]), exp_base(m[1])};
    const int64_t row0 = (int64_t(bh) * p.num_q_blocks + blk.i) * p.et_rows + int64_t(unit) * kUnitRows;
    const int g = lane / 4;
    if (active && t4 == 0) {
      p.et_row_max[row0 + g] = m[0];
      p.et_row_max[row0 + g + 8] = m[1];
    }

    // The weights of step `st` (its key block's last step) for every block of the group: thread
    // bb sums its block's units in order, adds earlier groups' part and divides on its last.
    const auto flush_weights = [&](int st) {
      const int key0 = key_begin + st * W, j = key0 / p.block_k;
      if (key0 + W < min((j + 1) * p.block_k, p.seq_k) || threadIdx.x >= blocks) return;
      const SampleBlock fb = sample_block(p, i0 + threadIdx.x, h);
      const int ua = max(u0, int(threadIdx.x) * unit_tiles), ub = min(u0 + kEtWarps, int(threadIdx.x) * unit_tiles + fb.units);
      if (ua >= ub || j < fb.begin || j >= fb.end) return;
      double* gW = p.scores + (int64_t(bh) * p.num_q_blocks + fb.i) * p.num_k_blocks + j;
      double w = ua == int(threadIdx.x) * unit_tiles ? 0.0 : *gW;
      for (int uu = ua; uu < ub; ++uu) w += sUnitWeight[st & 1][uu - u0];
      *gW = ub == int(threadIdx.x) * unit_tiles + fb.units ? w / double(fb.count) : w;
    };

    // Pass 2 (per channel slice): P = 2^(t − m), its mass per key block and P·V.
    for (int cp = 0; cp < Tr::kChannelPasses; ++cp) {
      float acc[kAccN][4];
#pragma unroll
      for (int n = 0; n < kAccN; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
      float mass[2] = {0.0f, 0.0f};      // the current key block's, this thread's columns
      double total[2] = {0.0, 0.0};      // Σ over key blocks of the quad's masses
      walk(true, [&](int st, int key0, const T* sKt, const T* sVt) {
        if (cp == 0 && st > 0) flush_weights(st - 1);
        if (!sees(key0)) return;
        float s[kN][4];
        unit_scores<Tr, kN>(sQw, sKt, W / 8, s);
#pragma unroll
        for (int n = 0; n < kN; ++n) {
          if (n >= W / 8) break;
          scale_and_mask(s[n], mul, key0 + 8 * n, rk);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[n][e] = exp2f(s[n][e] - base[e >> 1]);
            mass[e >> 1] += s[n][e];
            s[n][e] *= Tr::kPScale;
          }
        }
        // O += P · V over this pass's channels; each V fragment feeds every part.
        const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int kk = 0; kk < kN / 2; ++kk) {
          if (2 * kk >= W / 8) break;
          uint32_t a[Tr::kParts][4];
          p_fragments<T, kN>(s, kk, a);
#pragma unroll
          for (int dp = 0; dp < kAccN / 2; ++dp) {
            uint32_t bv[4];
            const int chunk = cp * (Tr::kExactChannels / 8) + 2 * dp + (lane >> 4);
            ldmatrix_x4_trans(bv, sVt + swizzled<Tr::kChunks>(16 * kk + v_row, chunk));
#pragma unroll
            for (int k = 0; k < Tr::kParts; ++k) {
              mma_16816<T>(acc[2 * dp], a[k], bv[0], bv[1]);
              mma_16816<T>(acc[2 * dp + 1], a[k], bv[2], bv[3]);
            }
          }
        }
        const int j = key0 / p.block_k;
        if (key0 + W < min((j + 1) * p.block_k, p.seq_k)) return;  // the key block goes on
        // Key block j done: the rows' masses (quad sums), their total, the unit's weight.
        double wsum = 0.0;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          float ms = mass[hh];
          ms += __shfl_xor_sync(0xffffffffu, ms, 1);
          ms += __shfl_xor_sync(0xffffffffu, ms, 2);
          mass[hh] = 0.0f;
          total[hh] += double(ms);
          // A row that sees no key has z = 0 and adds nothing; a NaN z makes the weight NaN.
          wsum += z[hh] == 0.0f ? 0.0 : double(ms) / double(z[hh]);
        }
        if (cp != 0) return;
        for (int off = 4; off < 32; off <<= 1) wsum += __shfl_xor_sync(0xffffffffu, wsum, off);
        if (lane == 0) sUnitWeight[st & 1][warp] = wsum;
      });
      if (cp == 0) flush_weights(steps - 1);  // after walk's final barrier
      if (!active) continue;
      // The exact output, normalized by the rows' total mass (0 for a row that sees no key).
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int64_t s = int64_t(unit) * kUnitRows + g + 8 * hh;
        if (s >= blk.count) continue;
        // A NaN total (NaN inputs) leaves the output NaN, as on the CPU.
        const double inv = total[hh] == 0.0 ? 0.0 : 1.0 / (total[hh] * double(Tr::kPScale));
        float* gE = p.et_exact + (row0 + g + 8 * hh) * p.et_channels;
#pragma unroll
        for (int n = 0; n < kAccN; ++n) {
          const int ch = cp * Tr::kExactChannels + 8 * n + 2 * t4;
          if (ch >= p.et_channels) break;
          const float2 e = make_float2(float(double(acc[n][2 * hh]) * inv),
                                       float(double(acc[n][2 * hh + 1]) * inv));
          *reinterpret_cast<float2*>(gE + ch) = e;
        }
      }
    }
  }
}

}  // namespace sparge::cuda
