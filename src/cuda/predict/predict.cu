// Stage 1 launcher: key mean (two fixed-order passes), pooling + similarity of q and smoothed k
// blocks, compressed scores (estimate pooled) or sampled rows' block masses (sampled_rows), the
// error target's candidate errors and per-head choice (target_error > 0; also the per-head
// stats), selection into the BlockMask. Six to nine launches on the caller's stream, no
// allocation, no synchronisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "cuda/common/check.cuh"
#include "cuda/predict/error_target.cuh"
#include "cuda/predict/params.h"
#include "cuda/predict/pool_sim.cuh"
#include "cuda/predict/sampled_rows.cuh"
#include "cuda/predict/topcdf.cuh"

namespace sparge::cuda {
namespace {

// Selection sorts up to this many key blocks in one CTA's shared memory (16 bytes per slot).
constexpr int kMaxSortLen = 8192;

int sort_length(int num_k_blocks) {
  int n = kSelectThreads;  // scans walk whole chunks of kSelectThreads slots
  while (n < num_k_blocks) n <<= 1;
  return n;
}

}  // namespace

int max_sortable_key_blocks() { return kMaxSortLen; }

template <typename T>
Status launch_predict(const PredictParams& p, cudaStream_t stream) {
  const int bhk = p.batch * p.heads_kv, bhq = p.batch * p.heads_q;
  const int chunks = (p.seq_k + kKeyMeanChunk - 1) / kKeyMeanChunk;
  const int mean_threads = std::min(256, (p.head_dim + 31) / 32 * 32);

  key_mean_partial<T><<<dim3(chunks, bhk), kMeanThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("key_mean_partial launch");
  key_mean_finalize<<<bhk, mean_threads, 0, stream>>>(p, chunks);
  SPARGE_CUDA_CHECK_LAUNCH("key_mean_finalize launch");
  pool_blocks<T, false><<<dim3(p.num_q_blocks, bhq), kPoolThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("pool_blocks(q) launch");
  pool_blocks<T, true><<<dim3(p.num_k_blocks, bhk), kPoolThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("pool_blocks(k) launch");
  if (p.sampled_rows) {
    sampled_row_mass<T><<<dim3(p.num_q_blocks, bhq), kEstimateThreads, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("sampled_row_mass launch");
  } else {
    const int score_ctas = (p.num_q_blocks + kScoreRowsPerCta - 1) / kScoreRowsPerCta;
    compressed_scores<<<dim3(score_ctas, bhq), kScoreThreads, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("compressed_scores launch");
  }

  const int sort_len = sort_length(p.num_k_blocks);
  const int smem = sort_len * int(sizeof(double) + 2 * sizeof(int));
  if (p.error_target) {
    // ~17 KB of static smem beside the sort buffer (error_target.cuh; the 48 KB default covers
    // both), within sm_80's 163 KB up to kMaxSortLen.
    if (smem + 20 * 1024 > 48 * 1024)
      SPARGE_CUDA_CHECK(cudaFuncSetAttribute(error_target_rows<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    error_target_rows<T><<<dim3(p.num_q_blocks, bhq), kEstimateThreads, smem, stream>>>(p, sort_len);
    SPARGE_CUDA_CHECK_LAUNCH("error_target_rows launch");
  }
  if (p.error_target || p.stat_select_value != nullptr || p.stat_error != nullptr) {
    choose_head<<<(bhq + 127) / 128, 128, 0, stream>>>(p);
    SPARGE_CUDA_CHECK_LAUNCH("choose_head launch");
  }
  if (p.stat_forced != nullptr)  // select_blocks adds each row's forced tiles
    SPARGE_CUDA_CHECK(cudaMemsetAsync(p.stat_forced, 0, sizeof(int64_t) * bhq, stream));
  if (smem > 48 * 1024)
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(select_blocks, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  select_blocks<<<dim3(p.num_q_blocks, bhq), kSelectThreads, smem, stream>>>(p, sort_len);
  SPARGE_CUDA_CHECK_LAUNCH("select_blocks launch");
  return Status::ok();
}

template Status launch_predict<__half>(const PredictParams&, cudaStream_t);
template Status launch_predict<__nv_bfloat16>(const PredictParams&, cudaStream_t);

}  // namespace sparge::cuda
