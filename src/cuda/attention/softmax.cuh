// Online softmax in log2 units for one 16-row slab of a warp (each thread holds rows g and g+8
// of the mma C fragments), and the λ rule of docs/method.md deciding whether the slab skips P·V.
// Scores arrive raw (q·k); the scale·log2 e factor is folded into the max and into one FFMA per
// element before exp2.
// NaN: the maxima are NaN-propagating (max_nan, the same one instruction as fmaxf), so a NaN
// score makes m_loc and m NaN; the λ tests then compare false (never skip), 2^(s - NaN) makes
// l and acc NaN, and the epilogue writes NaN. "The row saw no key" is l = 0, not m = -inf.
#pragma once

#include <cmath>

#include "cuda/common/math.cuh"

namespace sparge::cuda {

// kLazyRescaleLog2 = 0: the exponentials' base is the running max m_r, so P <= 1 and O is rescaled
// whenever m_r moves. kLazyRescaleLog2 = k > 0: the base b_r moves to m_r only when m_r passed it by
// more than k (log2 units), so P <= 2^k and most turns of a long row keep alpha = 1, i.e. no
// rescale of O (FlashAttention-4's conditional rescaling). The λ rule still reads m_r.
//
// kThreadRowSums = false: exponentiate leaves l alone; the kernel forms each turn's row sums
// itself (the quantized kernel, as a column of ones in its P·V MMA: l then sums the same
// e4m3-rounded P as O does) and folds them in with add_row_sums / scale_row_sums, holding each
// row's whole l in every thread of its quad.
template <int kNTiles, int kLazyRescaleLog2 = 0,
          bool kThreadRowSums = true>  // kNTiles: 8-column score tiles per key tile
struct OnlineSoftmax {
  float row_max[2];   // m_r in log2 units, -inf until the row sees a key
  float row_base[2];  // b_r, the exponentials' base (kLazyRescaleLog2 > 0 only)
  float row_sum[2];   // this thread's share of l_r (summed over the quad in finalize), or with
                      // !kThreadRowSums the row's whole l

  __device__ void init() {
    row_max[0] = row_max[1] = -INFINITY;
    row_base[0] = row_base[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.0f;
  }
  // The base of P = 2^(s·c - base) and of l (the LSE is ln 2 · (base + log2 l)).
  __device__ const float (&exp_base() const)[2] {
    if constexpr (kLazyRescaleLog2 > 0) return row_base;
    else return row_max;
  }

  // Max of each of the thread's two rows over its 2·kNTiles scores of the tile, no quad
  // reduction and no scaling. Tree-shaped: a chain of 2·kNTiles - 1 dependent max instructions
  // left each one waiting on the one before (the largest stall in the profile of the sm90ws
  // kernel); a tree has the same count at depth log2(2·kNTiles).
  __device__ static void thread_max(const float (&s)[kNTiles][4], float (&m_loc)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      m_loc[r] = fragment_row_max(s, r, [](float a, float b) { return max_nan(a, b); });
  }

  // Max of each of the thread's two rows over the tile, in log2 units. Scaling by a positive
  // factor is monotonic under rounding, so max(s)·c equals max(s·c) exactly.
  __device__ static void tile_max(const float (&s)[kNTiles][4], float scale_log2, float (&m_loc)[2]) {
    static_assert((kNTiles & (kNTiles - 1)) == 0, "thread_max's tree wants a power of two");
    thread_max(s, m_loc);
    // The 4 threads of a quad share a row.
    m_loc[0] = warp_max_xor(m_loc[0], 2) * scale_log2;
    m_loc[1] = warp_max_xor(m_loc[1], 2) * scale_log2;
  }

  // The λ rule: the slab skips the tile iff every existing row r has m_loc_r = -inf or
  // (m_r != -inf and m_loc_r - m_r <= -λ). Rows past seq_q do not exist and never block a skip.
  // A NaN m_loc_r or m_r fails both tests, so a row with a NaN score always computes.
  // λ must not be -inf (the validated range is [0, inf]; see the guard note below).
  // All lanes hold the same slab, so the result is warp-uniform.
  __device__ bool slab_skips(const float (&m_loc)[2], const bool (&row_exists)[2],
                             float lambda) const {
    return slab_skips(m_loc, row_max, row_exists, lambda);
  }
  // The same rule against a given running max m_run (a kernel that tests several tiles before
  // exponentiating them passes the max the rows would have after the earlier ones).
  __device__ static bool slab_skips(const float (&m_loc)[2], const float (&m_run)[2],
                                    const bool (&row_exists)[2], float lambda) {
    return __all_sync(0xffffffffu, rows_negligible(m_loc, m_run, row_exists, lambda));
  }
  // This thread's part of the rule: both of its rows are absent or negligible. The slab skips iff
  // this holds on every lane (a kernel that tests several tiles at once reduces the lanes' bits
  // together).
  __device__ static bool rows_negligible(const float (&m_loc)[2], const float (&m_run)[2],
                                         const bool (&row_exists)[2], float lambda) {
    // λ >= 0 (validated to [0, inf]), so the guard m_r != -inf costs nothing to drop: with
    // m_r = -inf the difference is +inf or NaN (m_loc_r = ±inf), which fails <= -λ by itself,
    // and m_loc_r = -inf is caught by the first test. Bitwise | and &: without short-circuit
    // the tests are predicate logic, not the branches (BSSY/BSYNC) the && / || chain compiled to.
    bool skippable = true;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool negligible = (m_loc[i] == -INFINITY) | (m_loc[i] - m_run[i] <= -lambda);
      skippable = skippable & (!row_exists[i] | negligible);
    }
    return skippable;
  }

  // Computed tile, scores half: m_new = max(m, m_loc), l rescaled by alpha = 2^(m - m_new),
  // s <- 2^(s·c - m_new), l += Σ s. A row still at -inf uses 0 as base so that no inf - inf
  // appears; a NaN m_new (a NaN score) makes alpha, s and l NaN. The accumulator is rescaled
  // separately (rescale) so that a kernel whose P·V of the previous tile is still in flight can
  // do this half first.
  // prob_log2_scale: P is 2^prob_log2_scale · 2^(s·c - m_new) (the quantized kernel scales P
  // into e4m3's range; l then holds the same factor, which cancels in acc / l).
  __device__ void exponentiate(float (&s)[kNTiles][4], const float (&m_loc)[2], float scale_log2,
                               float (&alpha)[2], float prob_log2_scale = 0.0f) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = max_nan(row_max[i], m_loc[i]);
      float base;
      if constexpr (kLazyRescaleLog2 > 0) {
        // Move the base only past the threshold (always from -inf to a finite max; a NaN m_new
        // fails the test and moves it, so NaN still spreads to alpha, P and l).
        const bool move = !(m_new <= row_base[i] + float(kLazyRescaleLog2));
        const float b_new = move ? m_new : row_base[i];
        base = b_new == -INFINITY ? 0.0f : b_new;
        alpha[i] = move ? exp2_approx(row_base[i] - base) : 1.0f;
        row_base[i] = b_new;
      } else {
        base = m_new == -INFINITY ? 0.0f : m_new;
        alpha[i] = exp2_approx(row_max[i] - base);
      }
      const float shift = base - prob_log2_scale;
      row_max[i] = m_new;
      // kSums independent partial sums: one running sum made every add wait for the one before
      // (and the in-order issue then held back the exponentials behind it).
      constexpr int kSums = kNTiles < 4 ? kNTiles : 4;
      float sum[kSums];
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        s[n][2 * i] = exp2_approx(fmaf(s[n][2 * i], scale_log2, -shift));
        s[n][2 * i + 1] = exp2_approx(fmaf(s[n][2 * i + 1], scale_log2, -shift));
        if constexpr (kThreadRowSums) {
          const float pair = s[n][2 * i] + s[n][2 * i + 1];
          sum[n % kSums] = n < kSums ? pair : sum[n % kSums] + pair;
        }
      }
      if constexpr (kThreadRowSums) {
#pragma unroll
        for (int j = 1; j < kSums; ++j) sum[0] += sum[j];
        row_sum[i] *= alpha[i];
        row_sum[i] += sum[0];
      }
    }
  }

  // !kThreadRowSums: l = l · alpha + a turn's row sums (each row's whole sum, in every thread of
  // its quad), or l · alpha alone for a turn that added nothing.
  __device__ void add_row_sums(const float (&alpha)[2], const float (&turn_sums)[2]) {
    static_assert(!kThreadRowSums, "thread row sums are added by exponentiate");
    row_sum[0] = fmaf(row_sum[0], alpha[0], turn_sums[0]);
    row_sum[1] = fmaf(row_sum[1], alpha[1], turn_sums[1]);
  }
  __device__ void scale_row_sums(const float (&alpha)[2]) {
    static_assert(!kThreadRowSums, "thread row sums are scaled by exponentiate");
    row_sum[0] *= alpha[0];
    row_sum[1] *= alpha[1];
  }
  // Whether any row of the warp has alpha != 1, i.e. its running max moved (or it is NaN). Once
  // the rows have seen a few hundred keys the max rarely moves in a turn, and acc·1 = acc
  // exactly, so a kernel may skip rescale when this is false (one vote instead of one FMUL per
  // accumulator register). Warp-uniform, so the branch on it does not diverge.
  __device__ static bool needs_rescale(const float (&alpha)[2]) {
    return __any_sync(0xffffffffu, (alpha[0] != 1.0f) | (alpha[1] != 1.0f));
  }

  // acc of rows g and g+8 times their alpha.
  template <int kOTiles>
  __device__ static void rescale(float (&acc)[kOTiles][4], const float (&alpha)[2]) {
#pragma unroll
    for (int d = 0; d < kOTiles; ++d) {
      acc[d][0] *= alpha[0];
      acc[d][1] *= alpha[0];
      acc[d][2] *= alpha[1];
      acc[d][3] *= alpha[1];
    }
  }

  // Both halves at once (the sm80 kernel, whose P·V is synchronous).
  template <int kOTiles>
  __device__ void update(float (&s)[kNTiles][4], const float (&m_loc)[2], float scale_log2,
                         float (&acc)[kOTiles][4]) {
    float alpha[2];
    exponentiate(s, m_loc, scale_log2, alpha);
    rescale(acc, alpha);
  }

  // Full l_r of both rows (quad sum; !kThreadRowSums: already whole).
  __device__ void finalize(float (&l)[2]) const {
    if constexpr (!kThreadRowSums) {
      l[0] = row_sum[0], l[1] = row_sum[1];
    } else {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float x = row_sum[i];
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        l[i] = x;
      }
    }
  }
};

}  // namespace sparge::cuda
