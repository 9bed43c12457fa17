// Quantization pass launcher (issue 10): per-run key sums and |v| maxima, key mean and V scales,
// INT8 Q, INT8 smoothed K (with Stage 1's pooling when asked: pool_tile.cuh), FP8 V8 (not for
// kInt8, whose buffers have no v8: then V is not read at all). Five
// launches on the caller's stream, no allocation, no synchronisation. Bytes per call (2-byte
// inputs, Nq·D·Hq = |Q| elements, likewise |K| = |V|): reads 2|Q| + 4|K| + 4|V| (K and V twice:
// the mean and the V scales need every key before the first code), writes |Q| + |K| + |V8| plus
// scales; docs/cuda.md "Quantization pass".
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "cuda/common/check.cuh"
#include "cuda/quantize/key_stats.cuh"
#include "cuda/quantize/params.h"
#include "cuda/quantize/quantize_qk.cuh"
#include "cuda/quantize/quantize_v.cuh"

namespace sparge::cuda {

namespace {

// Returns f(std::integral_constant<int, chunks per thread>) (whether f launched) for the head dims
// the pass takes (powers of two in [kQuantMinHeadDim, kQuantMaxHeadDim]); false for any other.
template <typename F>
bool with_qk_chunks(int head_dim, F&& f) {
  switch (head_dim) {
    case 16: return f(std::integral_constant<int, qk_chunks_per_thread(16)>{});
    case 32: return f(std::integral_constant<int, qk_chunks_per_thread(32)>{});
    case 64: return f(std::integral_constant<int, qk_chunks_per_thread(64)>{});
    case 128: return f(std::integral_constant<int, qk_chunks_per_thread(128)>{});
    case 256: return f(std::integral_constant<int, qk_chunks_per_thread(256)>{});
    default: return false;
  }
}

}  // namespace

template <typename T>
Status launch_quantize(const QuantizeParams& p, cudaStream_t stream) {
  const int bhk = p.batch * p.heads_kv, bhq = p.batch * p.heads_q;
  const int per_cta = runs_per_cta(p.head_dim);
  key_value_runs<T><<<dim3((p.num_runs + per_cta - 1) / per_cta, bhk), kRunThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("key_value_runs launch");
  key_value_finalize<<<bhk, (p.head_dim + 31) / 32 * 32, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("key_value_finalize launch");
  const int q_tiles = (p.seq_q + kQuantTileRows - 1) / kQuantTileRows;
  const int k_tiles = (p.seq_k + kQuantTileRows - 1) / kQuantTileRows;
  const bool pool = p.pooled_q != nullptr;
  const bool launched = with_qk_chunks(p.head_dim, [&](auto chunks) {
    constexpr int kChunks = decltype(chunks)::value;
    // The fused pooling serves the quantized kernel's head dims only (pooling_fusable).
    constexpr bool kPoolable = kChunks == qk_chunks_per_thread(64) || kChunks == qk_chunks_per_thread(128);
    if constexpr (kPoolable) {
      if (pool) {
        quantize_int8_rows<T, false, kChunks, true><<<dim3(q_tiles, bhq), kQuantQkThreads, 0, stream>>>(p);
        quantize_int8_rows<T, true, kChunks, true><<<dim3(k_tiles, bhk), kQuantQkThreads, 0, stream>>>(p);
        return true;
      }
    }
    if (pool) return false;
    quantize_int8_rows<T, false, kChunks, false><<<dim3(q_tiles, bhq), kQuantQkThreads, 0, stream>>>(p);
    quantize_int8_rows<T, true, kChunks, false><<<dim3(k_tiles, bhk), kQuantQkThreads, 0, stream>>>(p);
    return true;
  });
  if (!launched)
    return Status::unsupported("quantize: head_dim " + std::to_string(p.head_dim) +
                               (pool ? " with Stage 1's pooling (64 and 128 only)" : ""));
  SPARGE_CUDA_CHECK_LAUNCH("quantize_int8_rows launch");
  if (p.v8 == nullptr) return Status::ok();  // kInt8: P·V reads v as it is
  quantize_v_e4m3<T><<<dim3(int(p.v8_keys / kV8TileKeys), bhk), kVThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("quantize_v_e4m3 launch");
  return Status::ok();
}

template Status launch_quantize<__half>(const QuantizeParams&, cudaStream_t);
template Status launch_quantize<__nv_bfloat16>(const QuantizeParams&, cudaStream_t);

}  // namespace sparge::cuda
