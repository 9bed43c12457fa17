// Tensor Memory Accelerator (sm_90): host-side encoding of a tensor map for a 4-D tensor (the
// (batch, head, token, channel) inputs and output with 128-byte-swizzled boxes; the quantized
// kernel's 8-bit buffers), the device-side 4-D tile load that completes on an mbarrier, and the
// 4-D tile store from shared memory (a bulk group the issuing thread waits for).
//
// A box is 64 channels × kRows tokens of one (batch, head): exactly one 64-column block of the
// SW128 tile layout of wgmma_sm90.cuh (the TMA's 128B swizzle XORs the 16-byte chunk index with
// the row index mod 8, the layout the wgmma descriptors name). Rows past the tensor's token count
// are zero-filled by the TMA, and the full box is still counted in the transaction bytes.
//
// The encode function lives in the driver; the library links cudart_static and no -lcuda, so it
// is looked up once through the runtime (cudaGetDriverEntryPointByVersion).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

namespace sparge::cuda {

// ---- host ---------------------------------------------------------------------------------
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// nullptr when the driver does not provide it (then the caller falls back to a non-TMA kernel).
inline EncodeTiledFn tensor_map_encoder() {
  static std::once_flag once;
  static EncodeTiledFn fn = nullptr;
  std::call_once(once, [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    // 12000: the ABI of cuTensorMapEncodeTiled since CUDA 12.0.
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<EncodeTiledFn>(p);
    else
      (void)cudaGetLastError();
  });
  return fn;
}

// Tensor map of a 4-D tensor [dim3][dim2][dim1][dim0] (dim0 contiguous) of elem_bytes-byte
// elements with element strides (dim3, dim2, dim1), boxes of box0 × box1 elements of one
// (dim2, dim3) index. Returns false (map unusable) where the TMA cannot address the tensor: base
// not 16-byte aligned, a stride of a dimension longer than 1 not a positive multiple of 16
// bytes or >= 2^40 bytes, or an encoder error.
inline bool encode_tensor_map_4d(CUtensorMap* map, const void* base, CUtensorMapDataType type,
                                 int64_t elem_bytes, const int64_t (&dims_in)[4],
                                 const int64_t (&stride)[3], int box0, int box1,
                                 CUtensorMapSwizzle swizzle) {
  const EncodeTiledFn encode = tensor_map_encoder();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  const cuuint64_t dims[4] = {cuuint64_t(dims_in[0]), cuuint64_t(dims_in[1]),
                              cuuint64_t(dims_in[2]), cuuint64_t(dims_in[3])};
  const int64_t strides[3] = {stride[2] * elem_bytes, stride[1] * elem_bytes, stride[0] * elem_bytes};
  cuuint64_t gstrides[3];
  int64_t dense = dims_in[0] * elem_bytes;  // a valid stride for a dimension of length 1
  for (int i = 0; i < 3; ++i) {
    int64_t s = strides[i];
    if (dims[i + 1] == 1) s = dense;  // never multiplied by a nonzero index
    if (s <= 0 || s % 16 != 0 || s >= (int64_t(1) << 40)) return false;
    gstrides[i] = cuuint64_t(s);
    dense = s * int64_t(dims[i + 1]);
  }
  const cuuint32_t box[4] = {cuuint32_t(box0), cuuint32_t(box1), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode(map, type, 4, const_cast<void*>(base), dims, gstrides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// Tensor map of a [batch][heads][tokens][head_dim] 16-bit tensor with element strides
// (batch, head, token) and contiguous channels; boxes of 64 channels × box_rows tokens, SW128.
inline bool encode_tensor_map_sw128(CUtensorMap* map, const void* base, bool bf16, int head_dim,
                                    int tokens, int heads, int batch, const int64_t (&stride)[3],
                                    int box_rows) {
  return encode_tensor_map_4d(map, base,
                              bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                              2, {head_dim, tokens, heads, batch}, stride, 64, box_rows,
                              CU_TENSOR_MAP_SWIZZLE_128B);
}

// ---- device -------------------------------------------------------------------------------
// Brings the descriptor into the TMA unit's cache ahead of the first load.
__device__ __forceinline__ void tma_prefetch_descriptor(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// The box at (channel c0, token c1, head c2, batch c3) into shared memory at `smem_dst`
// (1024-byte aligned); its bytes complete a transaction on `bar`.
__device__ __forceinline__ void tma_load_4d(const CUtensorMap* map, uint64_t* bar, void* smem_dst,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst))),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(static_cast<uint32_t>(__cvta_generic_to_shared(bar)))
      : "memory");
}

// The box at (c0, c1, c2, c3) of the tensor from shared memory at `smem_src` (1024-byte aligned,
// in the map's swizzle), added to this thread's bulk group. Elements of the box outside the
// tensor are not written. The shared memory must have been written before a
// fence_proxy_async_smem() of each writing thread and a barrier with this one.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* smem_src, int c0,
                                             int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem_src))), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Closes this thread's bulk group of stores, then waits until their shared-memory reads are done
// (the source may then be overwritten, or the CTA exit; the global writes finish on their own
// and are visible to later kernels on the stream).
__device__ __forceinline__ void tma_store_commit_and_wait_read() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

}  // namespace sparge::cuda
