// The error-target estimate of Stage 1 on the CPU (docs/method.md, "The error target"), for one
// (batch, query head): the sampled rows' exact softmax and outputs, in fp32 with the fast
// backend's AVX2 / AVX-512 score and P·V kernels (src/cpu/attention_fast_kernels.h). Its
// sample() alone is also the sampled_rows estimate (an attention mask joins its rows' scores).
// predict.cc hands it groups of query blocks: sample() gives each block's weights, predict.cc
// ranks the key blocks, then add_errors() sums every candidate's error over the group's rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/backend.h"
#include "common/error_target.h"
#include "cpu/attn_mask.h"

namespace sparge::cpu {

// One query block's selection: its ranked eligible columns and, per candidate g of the error
// target (or [0] alone: the plain selection), how many of them it keeps.
struct RankedRow {
  std::vector<int64_t> ranked;
  size_t keep[detail::kErrorTargetCandidates] = {};
};

class ErrorTargetRows {
 public:
  // For (batch b, query head h) of p: reads the kv head's k and, with `outputs` (the error
  // target; add_errors needs it), v once (fp32, zero-padded); `q` rows are read per group.
  // Without `outputs` only sample() and weight() serve: the sampled_rows estimate.
  ErrorTargetRows(const detail::Problem& p, int64_t b, int64_t h, bool outputs = true);

  // Moves on to (b, h), reading k (and v) again unless its kv head is the last one's. The buffers
  // (k, v, the group's scores: megabytes at long lengths) keep their memory, so one object serves
  // every head a thread runs without allocating them again (and faulting their pages in) per head.
  void set_head(int64_t b, int64_t h);

  // How many query blocks one group should hold: their rows share every key tile the scores and
  // P·V kernels load. The error target stores the group's probabilities (rows × key span
  // floats), so long sequences take fewer blocks per group; the sampled_rows estimate one tile's.
  size_t group_blocks() const;

  // The sampled rows (detail::sampled_row, p.opts.sample_rows per block) of the query blocks
  // `blocks` (ascending, each with allowed key blocks): their softmax over the keys each sees,
  // kept for add_errors(). p.attn_mask joins the scores as Stage 2 applies it: keys past the
  // batch entry's key length are not seen, hidden pairs get no mass, additive values add. Then
  // weight(t) is block blocks[t]'s weights: weight[j] for j < allowed.end = the rows' mean mass
  // on key block j (the sampled_rows estimate).
  void sample(const std::vector<int64_t>& blocks);
  const std::vector<double>& weight(size_t t) const { return blocks_[t].weight; }

  // For the group last sampled, with rows[i] the ranking and the candidates' lengths of block i
  // (used where selectable[i]) and forced[j] the key blocks kept whatever the selection: adds
  // Σ_rows ‖o_g − o‖₁ to err[g] for every candidate and returns Σ_rows ‖o‖₁, over the rows of
  // the selectable blocks, block by block in ascending order (rows that see no key add nothing).
  double add_errors(const std::vector<RankedRow>& rows, const std::vector<uint8_t>& selectable,
                    const std::vector<uint8_t>& forced, double* err);

 private:
  struct Block {
    int64_t i = 0, rows = 0, r0 = 0;  // block index, sampled rows, first row in the group
    detail::BlockRange allowed;
    std::vector<double> weight;
  };
  // Rows [begin, end) of the group: those key block j's scores are computed for.
  struct RowRange {
    int64_t begin = 0, end = 0;
  };
  // The rows of the blocks that see key block j (consecutive: allowed ranges grow with the block
  // index), widened to whole 16-row register blocks; empty when no block of the group sees it.
  RowRange rows_seeing(int64_t j) const;
  // Scores of key block j for `rows`.
  void scores(int64_t j, RowRange rows);
  // The stored scores of the key tile that starts c0 keys after key0_: add_errors() reads every
  // tile's probabilities, so the error target keeps them all; the sampled_rows estimate keeps one.
  float* tile_scores(int64_t c0) { return &st_[(outputs_ ? c0 : 0) * rows_]; }

  const detail::Problem& p_;
  MaskReader attn_;
  bool avx512_;                         // the AVX-512 kernels (fast::use_avx512), else AVX2
  bool outputs_;                        // the error target: v is read, add_errors() serves
  int64_t D_, Dp_;                      // Dp_: D rounded up to the P·V kernel's channel block
  int64_t b_ = -1, h_ = -1, hkv_ = -1;  // the head set_head() moved to, and its kv head
  std::vector<float> k_, v_;            // [Nk + 16, D] and [Nk + 16, Dp], zero tail
  std::vector<Block> blocks_;
  // The group's rows, packed: each block's sampled rows right after the previous block's (a
  // 16-row register block of the kernels holds rows of several blocks), padded at the end to a
  // multiple of 16.
  int64_t rows_ = 0;
  std::vector<int> block_of_;    // [rows_]: the row's block in blocks_, -1 for the padding
  int64_t key0_ = 0, keys_ = 0;  // the keys of the group's allowed blocks
  // Those keys' blocks, first_key_block_ + jj for jj < span_ (key0_ = first_key_block_ · block_k).
  int64_t first_key_block_ = 0, span_ = 0;
  std::vector<RowRange> tile_rows_;  // [span_]: rows_seeing(first_key_block_ + jj)
  std::vector<float> qt_;            // [D, rows_]: sampled q rows · scale · log2(e), transposed
  // [keys, rows_]: scores, then unnormalized probabilities; without outputs_ one tile's keys.
  std::vector<float> st_;
  // [span_, rows_]: per key block jj and row, the row's mass on it (relative to the row's
  // maximum once sample() is done), its maximum there, and the factor 2^(tile max − row max)
  // that scales the stored probabilities before P·V (0 where the row's block does not see it).
  std::vector<float> mass_, tile_max_, rescale_;
  std::vector<float> bucket_;  // per selectable block [kBuckets, rows, Dp]: P·V by bucket
};

}  // namespace sparge::cpu
