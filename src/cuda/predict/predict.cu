// Stage 1 launcher: key mean (two fixed-order passes), pooling + similarity of q and smoothed k
// blocks (unless the quantization pass did both: PredictParams::pooled_by_pass), compressed
// scores (estimate pooled) or sampled rows' block masses (sampled_rows; with target_error > 0,
// error_target_sample's, which also keep the rows' exact outputs), the error target's candidate
// errors and per-head choice (also the per-head stats), selection into the BlockMask (a warp per
// row up to kWarpSelectMaxBlocks key blocks, else a CTA per row). Two to nine launches on the
// caller's stream (one, keep_visible_tiles, when top-k keeps every tile), no allocation, no
// synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/common/check.cuh"
#include "cuda/predict/error_target.cuh"
#include "cuda/predict/error_target_sample.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/pool_sim.cuh"
#include "cuda/predict/sampled_rows.cuh"
#include "cuda/predict/sampled_rows_sm90.cuh"
#include "cuda/predict/select_long.cuh"
#include "cuda/predict/select_warp.cuh"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {
namespace {

int sort_length(int num_k_blocks) {
  int n = kSelectThreads;  // scans walk whole chunks of kSelectThreads slots
  while (n < num_k_blocks) n <<= 1;
  return n;
}

// The error target's two kernels for one compiled head dim (error_target_instance_dim).
template <typename T, int kHeadDim>
Status launch_error_target_dim(const PredictParams& p, int sort_len, cudaStream_t stream) {
  using Tr = EtTraits<T, kHeadDim>;
  const int bhq = p.batch * p.heads_q;
  const int unit_tiles = p.et_rows / kUnitRows;
  const int blocks_per_cta = std::max(1, kEtWarps / unit_tiles);
  // The dynamic-smem attribute is set whatever the size: the 48 KiB default covers static and
  // dynamic shared memory together (at hd 64 the sample kernel's 48 KiB plus its static bytes
  // exceed it).
  const int sample_smem = error_target_sample_smem<Tr>();
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(error_target_sample<T, kHeadDim>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, sample_smem));
  const dim3 sample_grid((p.num_q_blocks + blocks_per_cta - 1) / blocks_per_cta, bhq);
  error_target_sample<T, kHeadDim><<<sample_grid, kEtThreads, sample_smem, stream>>>(
      p, blocks_per_cta, unit_tiles);
  SPARGE_CUDA_CHECK_LAUNCH("error_target_sample launch");
  const int rows_smem = error_target_rows_smem<Tr>(sort_len);
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(error_target_rows<T, kHeadDim>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, rows_smem));
  error_target_rows<T, kHeadDim><<<dim3(p.num_q_blocks, bhq), kEtThreads, rows_smem, stream>>>(
      p, sort_len);
  SPARGE_CUDA_CHECK_LAUNCH("error_target_rows launch");
  return Status::ok();
}

// The sampled_rows estimate's kernel for one compiled head dim (sampled_rows.cuh): on the
// warpgroup MMAs where PredictParams::wgmma allows (sampled_rows_sm90.cuh; head dims 64 and 128,
// block_k ≥ 64, a group of at most 128 row slots), else on mma.sync.
template <typename T, int kHeadDim>
Status launch_sampled_rows_dim(const PredictParams& p, cudaStream_t stream) {
  using Tr = EtTraits<T, kHeadDim>;
  const int slots = sampled_row_slots(p.sample_rows, p.block_q);
  // Every CTA packs up to 128 row slots even where that leaves SMs idle: halving the blocks per
  // CTA until two CTAs per SM ran measured slower at 8K and at 32K on an H100 (each CTA then
  // reads all of K for fewer rows); the key splits fill the GPU instead.
  const int blocks_per_cta = sampled_row_blocks_per_cta(p.num_q_blocks, slots);
  const int ctas_per_head = (p.num_q_blocks + blocks_per_cta - 1) / blocks_per_cta;
  const int splits = sampled_row_key_splits(int64_t(ctas_per_head) * p.batch * p.heads_q,
                                            p.num_k_blocks, slots, p.head_dim, p.sr_one_pass);
  const dim3 grid(ctas_per_head, p.batch * p.heads_q, splits);
  // K by TMA on the wgmma path where the tensor map encodes (else cp.async by every thread).
  CUtensorMap k_map{};
  bool k_by_tma = false;
  const auto run = [&](auto kernel, int smem) {
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    if (p.sr_one_pass) {
      kernel<<<grid, kEtThreads, smem, stream>>>(p, slots, blocks_per_cta, SampledRowsPass::kTileSums,
                                                 k_map, k_by_tma);
      SPARGE_CUDA_CHECK_LAUNCH("sampled_row_weights (tile sums) launch");
      sampled_rows_combine<<<dim3(p.num_q_blocks, p.batch * p.heads_q), kCombineThreads, 0, stream>>>(
          p, slots);
      SPARGE_CUDA_CHECK_LAUNCH("sampled_rows_combine launch");
    } else if (splits == 1) {
      kernel<<<grid, kEtThreads, smem, stream>>>(p, slots, blocks_per_cta, SampledRowsPass::kWhole,
                                                 k_map, k_by_tma);
      SPARGE_CUDA_CHECK_LAUNCH("sampled_row_weights launch");
    } else {
      kernel<<<grid, kEtThreads, smem, stream>>>(p, slots, blocks_per_cta, SampledRowsPass::kMaxSum,
                                                 k_map, k_by_tma);
      SPARGE_CUDA_CHECK_LAUNCH("sampled_row_weights (max, sum) launch");
      kernel<<<grid, kEtThreads, smem, stream>>>(p, slots, blocks_per_cta, SampledRowsPass::kMasses,
                                                 k_map, k_by_tma);
      SPARGE_CUDA_CHECK_LAUNCH("sampled_row_weights (masses) launch");
    }
    return Status::ok();
  };
  const bool full_steps = p.block_k >= Tr::kStepKeys;
  if constexpr (kHeadDim <= 128) {
    if (p.wgmma && full_steps && slots <= kSlotsPerCta) {
      using Op = WgmmaOperands<Tr>;
      // SPARGE_ESTIMATE_TMA=0 keeps the cp.async loads (benchmarks compare the two).
      const char* tma_env = std::getenv("SPARGE_ESTIMATE_TMA");
      k_by_tma = !(tma_env != nullptr && tma_env[0] == '0') &&
                 encode_tensor_map_sw128(&k_map, p.k, std::is_same_v<T, __nv_bfloat16>, p.head_dim,
                                         p.seq_k, p.heads_kv, p.batch, p.k_stride, Tr::kStepKeys);
      return run(sampled_row_weights<T, kHeadDim, true, Op>, Op::kSmemBytes);
    }
  }
  using Op = MmaSyncOperands<Tr>;
  if (full_steps) return run(sampled_row_weights<T, kHeadDim, true, Op>, Op::kSmemBytes);
  return run(sampled_row_weights<T, kHeadDim, false, Op>, Op::kSmemBytes);
}

template <typename T>
Status launch_sampled_rows(const PredictParams& p, cudaStream_t stream) {
  switch (error_target_instance_dim(p.head_dim)) {
    case 64: return launch_sampled_rows_dim<T, 64>(p, stream);
    case 128: return launch_sampled_rows_dim<T, 128>(p, stream);
    case 256: return launch_sampled_rows_dim<T, 256>(p, stream);
    default:
      return Status::unsupported("SparseOptions.estimate sampled_rows on cuda takes head_dim <= 256, got " +
                                 std::to_string(p.head_dim));
  }
}

template <typename T>
Status launch_error_target(const PredictParams& p, int sort_len, cudaStream_t stream) {
  switch (error_target_instance_dim(p.head_dim)) {
    case 64: return launch_error_target_dim<T, 64>(p, sort_len, stream);
    case 128: return launch_error_target_dim<T, 128>(p, sort_len, stream);
    case 256: return launch_error_target_dim<T, 256>(p, sort_len, stream);
    default:
      return Status::unsupported("SparseOptions.target_error on cuda takes head_dim <= 256, got " +
                                 std::to_string(p.head_dim));
  }
}

// The selection with a warp per mask row (select_warp.cuh) for rows of up to
// kWarpSelectMaxBlocks key blocks: slots = nk rounded up to a power of two (at least 32).
Status launch_select_warp(const PredictParams& p, cudaStream_t stream) {
  const dim3 grid((p.num_q_blocks + kWarpSelectRows - 1) / kWarpSelectRows, p.batch * p.heads_q);
  const auto run = [&](auto per_lane) {
    select_blocks_warp<decltype(per_lane)::value><<<grid, kWarpSelectRows * 32, 0, stream>>>(p);
  };
  if (p.num_k_blocks <= 32) run(std::integral_constant<int, 1>{});
  else if (p.num_k_blocks <= 64) run(std::integral_constant<int, 2>{});
  else if (p.num_k_blocks <= 128) run(std::integral_constant<int, 4>{});
  else if (p.num_k_blocks <= 256) run(std::integral_constant<int, 8>{});
  else run(std::integral_constant<int, 16>{});
  static_assert(kWarpSelectMaxBlocks == 16 * 32, "the largest instance holds 16 slots per lane");
  SPARGE_CUDA_CHECK_LAUNCH("select_blocks_warp launch");
  return Status::ok();
}

// The long-row selection (select_long.cuh): per chunk of whole row groups, S̃ of its rows
// (compressed_scores, its key blocks split over column slices so that a chunk of a few groups
// still fills the GPU), then a CTA per row.
Status launch_long_rows(const PredictParams& p, cudaStream_t stream) {
  const int64_t groups_per_bh = (p.num_q_blocks + kScoreRowsPerCta - 1) / kScoreRowsPerCta;
  const int64_t groups = int64_t(p.batch) * p.heads_q * groups_per_bh;
  const int64_t chunk_groups = std::max(1, p.lr_chunk_rows / kScoreRowsPerCta);
  const auto first_row = [&](int64_t g) {  // row (bh · nq + i) of group g's first query block
    return g / groups_per_bh * p.num_q_blocks + g % groups_per_bh * kScoreRowsPerCta;
  };
  constexpr int kColsPerPass = kScoreThreads * kScoreColsPerThread;
  const int col_slices = std::min(8, (p.num_k_blocks + kColsPerPass - 1) / kColsPerPass);
  const std::size_t keep_bytes = long_row_keep_bytes(p.num_k_blocks);
  if (keep_bytes > 16 * 1024)  // beyond the 48 KiB default with the static arrays (~26 KiB)
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(select_long_rows,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(keep_bytes)));
  for (int64_t g0 = 0; g0 < groups; g0 += chunk_groups) {
    const int64_t g1 = std::min(groups, g0 + chunk_groups);
    const int64_t row0 = first_row(g0), rows = first_row(g1) - row0;
    compressed_scores<true><<<dim3(unsigned(g1 - g0), 1, col_slices), kScoreThreads, 0, stream>>>(
        p, int(g0), row0);
    SPARGE_CUDA_CHECK_LAUNCH("compressed_scores (long rows) launch");
    select_long_rows<<<unsigned(rows), kSelectThreads, keep_bytes, stream>>>(p, row0);
    SPARGE_CUDA_CHECK_LAUNCH("select_long_rows launch");
  }
  return Status::ok();
}

}  // namespace

template <typename T>
Status launch_predict(const PredictParams& p, cudaStream_t stream) {
  const int bhk = p.batch * p.heads_kv, bhq = p.batch * p.heads_q;
  if (p.keep_every_tile) {
    keep_visible_tiles<<<dim3(p.num_q_blocks, bhq), kSelectThreads, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("keep_visible_tiles launch");
    return Status::ok();
  }
  const int chunks = (p.seq_k + kKeyMeanChunk - 1) / kKeyMeanChunk;
  const int mean_threads = std::min(256, (p.head_dim + 31) / 32 * 32);

  if (!p.pooled_by_pass) {
    // q first: its similarities decide which kv heads' key side is read (key_side_needed); a
    // call's later row chunks keep the states, and the key side, of the chunks before them.
    if (!p.keys_given && p.key_side_needed != nullptr && p.first_row_chunk)
      SPARGE_CUDA_CHECK(cudaMemsetAsync(p.key_side_needed, kKeySideUnused, sizeof(int32_t) * bhk, stream));
    const int q_per_cta = pool_blocks_per_cta(p.num_q_blocks, bhq);
    pool_blocks<T, false><<<dim3((p.num_q_blocks + q_per_cta - 1) / q_per_cta, bhq), kPoolThreads, 0,
                            stream>>>(p, p.num_q_blocks, q_per_cta);
    SPARGE_CUDA_CHECK_LAUNCH("pool_blocks(q) launch");
    if (!p.keys_given) {
      key_mean_partial<T><<<dim3(chunks, bhk), kMeanThreads, 0, stream>>>(p);
      SPARGE_CUDA_CHECK_LAUNCH("key_mean_partial launch");
      key_mean_finalize<<<bhk, mean_threads, 0, stream>>>(p, chunks);
      SPARGE_CUDA_CHECK_LAUNCH("key_mean_finalize launch");
      const int k_per_cta = pool_blocks_per_cta(p.num_k_blocks, bhk);
      pool_blocks<T, true><<<dim3((p.num_k_blocks + k_per_cta - 1) / k_per_cta, bhk), kPoolThreads, 0,
                             stream>>>(p, p.num_k_blocks, k_per_cta);
      SPARGE_CUDA_CHECK_LAUNCH("pool_blocks(k) launch");
      if (p.key_side_needed != nullptr && p.later_row_chunks) {
        key_side_pooled<<<(bhk + 127) / 128, 128, 0, stream>>>(p);
        SPARGE_CUDA_CHECK_LAUNCH("key_side_pooled launch");
      }
    }
  }
  if (p.lr_chunk_rows > 0) {
    // Long rows: the scores are formed per chunk of rows in the selection (below).
  } else if (p.error_target) {
    // error_target_sample writes the weights (launched with error_target_rows, below).
  } else if (p.sampled_rows) {
    SPARGE_RETURN_IF_ERROR(launch_sampled_rows<T>(p, stream));
  } else {
    const int score_ctas = (p.num_q_blocks + kScoreRowsPerCta - 1) / kScoreRowsPerCta;
    compressed_scores<false><<<dim3(score_ctas, bhq), kScoreThreads, 0, stream>>>(p, 0, 0);
    SPARGE_CUDA_CHECK_LAUNCH("compressed_scores launch");
  }

  const int sort_len = sort_length(p.num_k_blocks);
  const int smem = sort_len * int(sizeof(double) + 2 * sizeof(int));
  // The error target's dynamic smem is at most the sort buffer (128 KB at kMaxSortedKeyBlocks) or the
  // tiles (< 160 KB), within sm_80's 163 KB.
  if (p.error_target) SPARGE_RETURN_IF_ERROR(launch_error_target<T>(p, sort_len, stream));
  if (p.error_target || p.stat_select_value != nullptr || p.stat_error != nullptr) {
    choose_head<<<(bhq + 127) / 128, 128, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("choose_head launch");
  }
  if (p.stat_forced != nullptr && !p.add_to_forced)  // select_blocks adds each row's forced tiles
    SPARGE_CUDA_CHECK(cudaMemsetAsync(p.stat_forced, 0, sizeof(int64_t) * bhq, stream));
  if (p.lr_chunk_rows > 0) return launch_long_rows(p, stream);
  if (p.num_k_blocks <= kWarpSelectMaxBlocks) return launch_select_warp(p, stream);
  if (smem > 48 * 1024)
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(select_blocks, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  select_blocks<<<dim3(p.num_q_blocks, bhq), kSelectThreads, smem, stream>>>(p, sort_len);
  SPARGE_CUDA_CHECK_LAUNCH("select_blocks launch");
  return Status::ok();
}

template Status launch_predict<__half>(const PredictParams&, cudaStream_t);
template Status launch_predict<__nv_bfloat16>(const PredictParams&, cudaStream_t);

// The kernels of Stage 1's key side, writing into the caller's KeyBlocks: the same code, so the
// blocks hold the bits Stage 1 would compute from k with the same mean.
template <typename T>
Status launch_key_blocks(const PredictParams& p, bool new_mean, int end_block,
                         cudaStream_t stream) {
  const int bhk = p.batch * p.heads_kv;
  if (new_mean) {
    const int chunks = (p.seq_k + kKeyMeanChunk - 1) / kKeyMeanChunk;
    key_mean_partial<T><<<dim3(chunks, bhk), kMeanThreads, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("key_mean_partial launch");
    key_mean_finalize<<<bhk, std::min(256, (p.head_dim + 31) / 32 * 32), 0, stream>>>(p, chunks);
    SPARGE_CUDA_CHECK_LAUNCH("key_mean_finalize launch");
  }
  if (end_block > p.key_block_first) {
    const int count = end_block - p.key_block_first, per_cta = pool_blocks_per_cta(count, bhk);
    pool_blocks<T, true><<<dim3((count + per_cta - 1) / per_cta, bhk), kPoolThreads, 0, stream>>>(
        p, count, per_cta);
    SPARGE_CUDA_CHECK_LAUNCH("pool_blocks(key blocks) launch");
  }
  return Status::ok();
}

template Status launch_key_blocks<__half>(const PredictParams&, bool, int, cudaStream_t);
template Status launch_key_blocks<__nv_bfloat16>(const PredictParams&, bool, int, cudaStream_t);

}  // namespace sparge::cuda
