// The error-target estimate on the CPU (docs/method.md, "The error target", steps 2-3).
//
// Cost: the sampled rows' scores against every allowed key and their P·V, rows / block_q of
// dense attention's flops (16/128 for the error target, 4/128 for the sampled_rows default),
// with the fast backend's fp32 kernels. Three choices keep it near the dense kernels' rate:
//  - query blocks are processed in groups (up to 8: 128 rows at 16 per block), key tile by key
//    tile, so a K or V tile loaded once serves every row of the group, as a dense tile serves
//    its 128 rows;
//  - the group's rows are packed: each block's sampled rows follow the previous block's, so a
//    16-row register block of the score kernels holds e.g. four blocks of 4 rows, not one block
//    and 12 rows of padding (which cost as much as real rows: 3/4 of the work at 4 rows). A key
//    tile's scores are computed for the register blocks that hold rows of the blocks that see
//    it; their other rows see none of its keys (p = 0) and get no P·V bucket. Every value of a
//    row is computed by the same operations in the same order as in a register block of its own
//    (tests/cpu/test_error_target_rows.cc);
//  - the 32 candidates cost one P·V pass, not 32: candidate g keeps the forced tiles and the
//    ranked prefix of keep[g] blocks, and keep[] grows with g, so a block is first kept by one
//    candidate g*(rank) and by every later one. Its P·V goes into bucket g*, and candidate g's
//    output is the forced bucket plus buckets 0..g: a running sum over the buckets per row.
#include "cpu/error_target.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/attention_fast_kernels.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

constexpr int64_t kRowBlock = 16;  // fast::scores_tile's rows per register block
constexpr int kCandidates = detail::kErrorTargetCandidates;
constexpr int kNever = kCandidates;       // ranks that no candidate keeps (only the exact output)
constexpr int kForced = kCandidates + 1;  // tiles kept whatever the candidate
constexpr int kBuckets = kCandidates + 2;
constexpr int64_t kMaxGroup = 8;            // 8 blocks of 16 rows: a dense tile's 128 rows
constexpr int64_t kStoredFloats = 1 << 22;  // the group's probabilities: at most 16 MB
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// (b, h) of t as fp32 [tokens + kRowBlock, width] into *out (its memory reused); the extra rows
// and the channels ≥ head_dim are zero (the score kernels read whole groups of 8 keys, the P·V
// kernels of 16 or 32 channels).
void load_padded(const TensorView& t, int64_t b, int64_t h, int64_t width,
                 std::vector<float>* out) {
  out->assign((t.tokens + kRowBlock) * width, 0.0f);
  for (int64_t n = 0; n < t.tokens; ++n)
    for (int64_t d = 0; d < t.head_dim; ++d)
      (*out)[n * width + d] = load_element(t, t.offset(b, h, n, d));
}

}  // namespace

ErrorTargetRows::ErrorTargetRows(const detail::Problem& p, int64_t b, int64_t h, bool outputs)
    : p_(p),
      attn_(p.attn_mask, p.shape.seq_k),
      avx512_(fast::use_avx512()),
      outputs_(outputs),
      D_(p.shape.head_dim),
      Dp_(round_up(p.shape.head_dim, avx512_ ? 32 : 16)) {
  set_head(b, h);
}

void ErrorTargetRows::set_head(int64_t b, int64_t h) {
  const int64_t hkv = h / (p_.shape.heads_q / p_.shape.heads_kv);
  if (b != b_ || hkv != hkv_) {
    load_padded(p_.k, b, hkv, D_, &k_);
    if (outputs_) load_padded(p_.v, b, hkv, Dp_, &v_);
  }
  b_ = b, h_ = h, hkv_ = hkv;
}

size_t ErrorTargetRows::group_blocks() const {
  if (!outputs_) return kMaxGroup;  // one tile of scores is stored, whatever the length
  // The error target's groups also fix how its norm is summed (add_errors returns a group's):
  // kept as they were before the rows were packed.
  const int64_t per_block = round_up(p_.opts.sample_rows, kRowBlock) * (p_.shape.seq_k + 8);
  return static_cast<size_t>(std::clamp<int64_t>(kStoredFloats / per_block, 1, kMaxGroup));
}

ErrorTargetRows::RowRange ErrorTargetRows::rows_seeing(int64_t j) const {
  size_t first = 0, last = blocks_.size();
  while (first < last && !blocks_[first].allowed.contains(j)) ++first;
  size_t end = first;
  while (end < last && blocks_[end].allowed.contains(j)) ++end;
  if (first == end) return {};
  const Block& back = blocks_[end - 1];
  return {blocks_[first].r0 / kRowBlock * kRowBlock,
          std::min(rows_, round_up(back.r0 + back.rows, kRowBlock))};
}

void ErrorTargetRows::scores(int64_t j, RowRange rows) {
  const int64_t BK = p_.opts.block_k, c0 = j * BK - key0_;
  const int64_t width8 = round_up(std::min(BK, p_.shape.seq_k - j * BK), 8);
  const float* k = &k_[j * BK * D_];
  const float* qt = &qt_[rows.begin];
  float* st = tile_scores(c0) + rows.begin;
  if (avx512_)
    fast::scores_tile_avx512(qt, rows_, k, D_, D_, width8, rows.end - rows.begin, st, rows_);
  else
    fast::scores_tile(qt, rows_, k, D_, D_, width8, rows.end - rows.begin, st, rows_);
}

void ErrorTargetRows::sample(const std::vector<int64_t>& blocks) {
  const SparseOptions& o = p_.opts;
  const int64_t Nq = p_.shape.seq_q, Nk = p_.shape.seq_k, BK = o.block_k;
  const detail::KeyBand band = p_.band();
  blocks_.resize(blocks.size());
  int64_t rows = 0;
  int64_t first_key_block = Nk, end_key_block = 0;
  for (size_t t = 0; t < blocks.size(); ++t) {
    Block& blk = blocks_[t];
    blk.i = blocks[t];
    const int64_t n = std::min<int64_t>(o.block_q, Nq - blk.i * o.block_q);
    blk.rows = detail::sampled_row_count(o.sample_rows, n);
    blk.r0 = rows;
    rows += blk.rows;
    blk.allowed = detail::allowed_key_blocks(blk.i, o.block_q, o.block_k, band, Nq, Nk);
    first_key_block = std::min(first_key_block, blk.allowed.begin);
    end_key_block = std::max(end_key_block, blk.allowed.end);
  }
  rows_ = round_up(rows, kRowBlock);
  const int64_t R = rows_;
  block_of_.assign(R, -1);
  for (size_t t = 0; t < blocks_.size(); ++t)
    std::fill_n(&block_of_[blocks_[t].r0], blocks_[t].rows, static_cast<int>(t));
  first_key_block_ = first_key_block;
  span_ = end_key_block - first_key_block;
  key0_ = first_key_block * BK;
  keys_ = std::min(end_key_block * BK, Nk) - key0_;
  tile_rows_.resize(span_);
  for (int64_t jj = 0; jj < span_; ++jj) tile_rows_[jj] = rows_seeing(first_key_block + jj);

  // q rows times scale · log2(e): scores in log2 units, probabilities by exp2 (as Stage 2).
  qt_.assign(D_ * R, 0.0f);
  std::vector<int64_t> lo(R, 0), hi(R, -1);  // keys each row sees, from key0_; none for pads
  std::vector<int64_t> qrow(R, -1);          // each slot's query row (-1: a pad)
  const int64_t key_end = attn_.key_end(b_);  // keys past it are the entry's padding
  const float mul = p_.scale * kLog2e;
  for (const Block& blk : blocks_) {
    const int64_t first = blk.i * o.block_q, n = std::min<int64_t>(o.block_q, Nq - first);
    for (int64_t s = 0; s < blk.rows; ++s) {
      const int64_t r = detail::sampled_row(first, n, blk.rows, s);
      for (int64_t d = 0; d < D_; ++d)
        qt_[d * R + blk.r0 + s] = load_element(p_.q, p_.q.offset(b_, h_, r, d)) * mul;
      qrow[blk.r0 + s] = r;
      lo[blk.r0 + s] = detail::first_visible_key(r, band) - key0_;
      hi[blk.r0 + s] = std::min(detail::last_visible_key(r, band, Nk), key_end - 1) - key0_;
    }
  }
  st_.resize((round_up(outputs_ ? keys_ : BK, 8) + 8) * R);
  mass_.assign(span_ * R, 0.0f);
  tile_max_.assign(span_ * R, kNegInf);
  rescale_.assign(span_ * R, 0.0f);

  // Tile by tile, while the tile (block_k keys × the rows that see it) is in cache: scores, the
  // keys a row does not see (causality, the window, key padding; every key of the tile for the
  // rows of blocks that do not see it, which share its register blocks) at -inf, the dense
  // mask's values added, each row's tile maximum m_t and p = 2^(t − m_t) in place, and the
  // tile's mass Σ p per row. A row that sees no key of the tile has m_t = −inf; 0 in its place
  // keeps its p at exactly 0.
  for (int64_t jj = 0; jj < span_; ++jj) {
    const RowRange tile = tile_rows_[jj];
    if (tile.begin == tile.end) continue;
    const int64_t j = first_key_block + jj;
    scores(j, tile);
    const int64_t c0 = j * BK - key0_, width = std::min(BK, Nk - j * BK);
    float* const st = tile_scores(c0);  // key c0 + c of row r at st[c * R + r]
    for (int64_t r = tile.begin; r < tile.end; ++r) {
      const bool sees = block_of_[r] >= 0 && blocks_[block_of_[r]].allowed.contains(j);
      const int64_t first = sees ? std::clamp(lo[r] - c0, int64_t{0}, width) : 0;
      const int64_t end = sees ? std::clamp(hi[r] + 1 - c0, first, width) : 0;
      for (int64_t c = 0; c < first; ++c) st[c * R + r] = kNegInf;
      for (int64_t c = end; c < width; ++c) st[c * R + r] = kNegInf;
      if (attn_.dense() && qrow[r] >= 0)  // the mask's value, in log2 units (−∞: hidden)
        for (int64_t c = first; c < end; ++c)
          st[c * R + r] += kLog2e * attn_.value(b_, h_, qrow[r], key0_ + c0 + c);
    }
    for (int64_t r = tile.begin; r < tile.end; r += 8) {
      float* line = &st[r];
      __m256 mx = _mm256_set1_ps(kNegInf);
      for (int64_t c = 0; c < width; ++c) mx = _mm256_max_ps(_mm256_loadu_ps(line + c * R), mx);
      _mm256_storeu_ps(&tile_max_[jj * R + r], mx);
      mx = _mm256_blendv_ps(mx, _mm256_setzero_ps(),
                            _mm256_cmp_ps(mx, _mm256_set1_ps(kNegInf), _CMP_EQ_OQ));
      __m256 sum = _mm256_setzero_ps();
      for (int64_t c = 0; c < width; ++c) {
        const __m256 e = fast::exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(line + c * R), mx));
        _mm256_storeu_ps(line + c * R, e);
        sum = _mm256_add_ps(sum, e);
      }
      _mm256_storeu_ps(&mass_[jj * R + r], sum);
    }
  }

  // Per row: the maximum m over its block's tiles; each tile's p is then 2^(m_t − m) too large.
  // mass becomes the tile's mass relative to m, rescale the factor 2^(m_t − m) that add_errors()
  // applies to p before P·V (0 for a row that sees no key at all).
  for (Block& blk : blocks_) {
    const int64_t nb = blk.allowed.size();
    const int64_t at0 = (blk.allowed.begin - first_key_block) * R + blk.r0;  // [jj * R + s]
    for (int64_t s = 0; s < blk.rows; ++s) {
      float m = kNegInf;
      for (int64_t jj = 0; jj < nb; ++jj) m = std::max(m, tile_max_[at0 + jj * R + s]);
      for (int64_t jj = 0; jj < nb; ++jj) {
        const int64_t at = at0 + jj * R + s;
        rescale_[at] = m == kNegInf ? 0.0f : std::exp2(tile_max_[at] - m);
        mass_[at] *= rescale_[at];
      }
    }
    // weight[j] = mean over the rows of the fraction of their mass on block j. Rows that see no
    // key add 0; a NaN row makes every weight NaN (ranked last, and its errors NaN: keep all).
    blk.weight.assign(blk.allowed.end, 0.0);
    for (int64_t s = 0; s < blk.rows; ++s) {
      double total = 0.0;
      for (int64_t jj = 0; jj < nb; ++jj) total += mass_[at0 + jj * R + s];
      if (total == 0.0) continue;
      for (int64_t jj = 0; jj < nb; ++jj)
        blk.weight[blk.allowed.begin + jj] += mass_[at0 + jj * R + s] / total;
    }
    for (double& w : blk.weight) w /= static_cast<double>(blk.rows);
  }
}

double ErrorTargetRows::add_errors(const std::vector<RankedRow>& rows,
                                   const std::vector<uint8_t>& selectable,
                                   const std::vector<uint8_t>& forced, double* err) {
  const int64_t R = rows_, BK = p_.opts.block_k, G = static_cast<int64_t>(blocks_.size());
  const int64_t span = span_;
  // The bucket of each (block, key block of the span): forced, else the first candidate that
  // keeps its rank; -1 where the block does not see the key block or is not estimated (not
  // selectable).
  std::vector<int> bucket_of(G * span, -1);
  int64_t bucket_rows = 0;
  std::vector<int64_t> bucket_base(G, 0);  // the block's first bucket row: [kBuckets, rows]
  for (int64_t t = 0; t < G; ++t) {
    const Block& blk = blocks_[t];
    if (!selectable[blk.i]) continue;
    const RankedRow& rr = rows[blk.i];
    const auto of = [&](int64_t j) -> int& { return bucket_of[t * span + j - first_key_block_]; };
    for (int64_t j = blk.allowed.begin; j < blk.allowed.end; ++j) of(j) = kNever;
    int g = 0;
    for (size_t rank = 0; rank < rr.ranked.size(); ++rank) {
      while (g < kCandidates && rr.keep[g] <= rank) ++g;  // keep[] is non-decreasing in g
      of(rr.ranked[rank]) = g;
    }
    for (int64_t j = blk.allowed.begin; j < blk.allowed.end; ++j)
      if (forced[j]) of(j) = kForced;
    bucket_base[t] = bucket_rows;
    bucket_rows += kBuckets * blk.rows;
  }
  // A register block of the P·V kernel may hold rows with no bucket for the tile (the padding,
  // blocks that do not see it or are not estimated): their sums go to one scratch row.
  bucket_.assign((bucket_rows + 1) * Dp_, 0.0f);
  float* const scratch = &bucket_[bucket_rows * Dp_];
  const auto bucket_row = [&](int64_t r, int64_t jj) {
    const int t = block_of_[r];
    const int bk = t < 0 ? -1 : bucket_of[t * span + jj];
    if (bk < 0) return scratch;
    return &bucket_[(bucket_base[t] + bk * blocks_[t].rows + r - blocks_[t].r0) * Dp_];
  };

  // One P·V pass, key tile by key tile: each row's Σ_c p[r][c] · v_c into its bucket for the
  // tile, 4 (AVX2) or 8 (AVX-512) rows per register block (skipped when none of them has one).
  const float one[8] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  const int step = avx512_ ? 8 : 4;
  for (int64_t jj = 0; jj < span; ++jj) {
    const RowRange tile = tile_rows_[jj];
    const int64_t c0 = jj * BK, width = std::min(keys_, c0 + BK) - c0;
    const float* v = &v_[(key0_ + c0) * Dp_];
    // p relative to the row's maximum (sample()'s factors), in place: the tile is in cache.
    for (int64_t r = tile.begin; r < tile.end; r += 8) {
      const __m256 f = _mm256_loadu_ps(&rescale_[jj * R + r]);
      float* line = &st_[c0 * R + r];
      for (int64_t c = 0; c < width; ++c)
        _mm256_storeu_ps(line + c * R, _mm256_mul_ps(f, _mm256_loadu_ps(line + c * R)));
    }
    for (int64_t r = tile.begin; r < tile.end; r += step) {
      float* acc[8];
      bool any = false;
      for (int a = 0; a < step; ++a) {
        acc[a] = bucket_row(r + a, jj);
        any |= acc[a] != scratch;
      }
      if (!any) continue;
      const float* p = &st_[c0 * R + r];
      if (avx512_)
        fast::pv_rows_avx512<8>(p, R, v, Dp_, width, Dp_, acc, one);
      else
        fast::pv_rows<4>(p, R, v, Dp_, width, Dp_, acc, one);
    }
  }

  // Per row: the exact output (every bucket) and each candidate's (forced, then buckets 0..g),
  // each renormalized by its mass. Both sum the buckets in the same order, so a candidate that
  // keeps every block with mass has error exactly 0.
  double norm = 0.0;
  std::vector<double> exact(Dp_), acc(Dp_), mass(kBuckets);
  for (int64_t t = 0; t < G; ++t) {
    const Block& blk = blocks_[t];
    if (!selectable[blk.i]) continue;
    const int64_t nb = blk.allowed.size();
    const int* of = &bucket_of[t * span + blk.allowed.begin - first_key_block_];
    const float* blk_mass = &mass_[(blk.allowed.begin - first_key_block_) * R + blk.r0];
    for (int64_t s = 0; s < blk.rows; ++s) {
      const auto part = [&](int bk) {
        return &bucket_[(bucket_base[t] + bk * blk.rows + s) * Dp_];
      };
      std::fill(mass.begin(), mass.end(), 0.0);
      for (int64_t jj = 0; jj < nb; ++jj) mass[of[jj]] += blk_mass[jj * R + s];
      double total = mass[kForced];
      for (int64_t d = 0; d < Dp_; ++d) exact[d] = part(kForced)[d];
      for (int bk = 0; bk <= kNever; ++bk) {
        total += mass[bk];
        for (int64_t d = 0; d < Dp_; ++d) exact[d] += part(bk)[d];
      }
      if (total == 0.0) continue;            // the row sees no key: its output is 0 either way
      const double inv_total = 1.0 / total;  // as the candidates' 1 / kept below
      double kept = mass[kForced];
      for (int64_t d = 0; d < Dp_; ++d) {
        exact[d] *= inv_total;
        norm += std::fabs(exact[d]);
        acc[d] = part(kForced)[d];
      }
      // Four channels at a time (the pad channels ≥ D are 0 in every bucket and in exact).
      const __m256d sign = _mm256_set1_pd(-0.0);
      for (int c = 0; c < kCandidates; ++c) {
        kept += mass[c];
        const double inv = kept > 0.0 ? 1.0 / kept : 0.0;  // no kept mass: output 0 (Stage 2)
        const __m256d vinv = _mm256_set1_pd(inv);
        const float* add = part(c);
        __m256d e = _mm256_setzero_pd();
        for (int64_t d = 0; d < Dp_; d += 4) {
          const __m256d a =
              _mm256_add_pd(_mm256_loadu_pd(&acc[d]), _mm256_cvtps_pd(_mm_loadu_ps(add + d)));
          _mm256_storeu_pd(&acc[d], a);
          const __m256d diff = _mm256_sub_pd(_mm256_mul_pd(a, vinv), _mm256_loadu_pd(&exact[d]));
          e = _mm256_add_pd(e, _mm256_andnot_pd(sign, diff));
        }
        double lanes[4];
        _mm256_storeu_pd(lanes, e);
        err[c] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
      }
    }
  }
  return norm;
}

}  // namespace sparge::cpu
