// The sm_90a warpgroup tensor-core primitives the Hopper attention kernel uses: shared-memory
// matrix descriptors for 128-byte-swizzled tiles, wgmma.mma_async (operands from shared memory,
// or A from registers) with fp32 accumulators, and the fences that order them.
//
// Tile layout ("SW128"): a tile of R rows × D 16-bit elements is stored as D/64 column blocks,
// each R rows × 128 bytes; within a column block the 16-byte chunk c of row r lives at chunk
// c ^ (r % 8). Every column block starts at a 1024-byte-aligned address, so the hardware's
// swizzle (address bits [4,7) ^= bits [7,10)) is exactly this XOR.
//
// Accumulator fragments: for m64nNk16, warp w of the warpgroup holds rows 16w..16w+15 with the
// mma.sync m16n8 C layout repeated over N/8 column tiles (lane 4g+t: d[n][0..1] = row g, cols
// 8n+2t..+1; d[n][2..3] = row g+8). The register A operand has the mma.sync m16n8k16 A layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sparge::cuda {

constexpr int kSw128RowBytes = 128;             // one swizzle row = 64 elements of 16 bits
constexpr int kSw128AtomBytes = 8 * kSw128RowBytes;  // 8 rows: the swizzle period

// Element offset of (row, col) in an SW128 tile of kRows rows.
template <int kRows>
__device__ __forceinline__ int sw128_offset(int row, int col) {
  return (col / 64) * kRows * 64 + row * 64 + ((((col % 64) / 8) ^ (row % 8)) * 8) + col % 8;
}

// Descriptor of a 128B-swizzled operand: start address, leading / stride byte offsets (both
// in 16-byte units) and the layout type 1 (SWIZZLE_128B) in bits 62-63. base_offset is 0: every
// atom starts 1024-byte aligned.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_byte_addr, uint32_t leading_bytes,
                                               uint32_t stride_bytes) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t(leading_bytes >> 4) << 16) |
         (uint64_t(stride_bytes >> 4) << 32) | (uint64_t(1) << 62);
}

// The descriptor of the operand `bytes` (a multiple of 16) further on: only the start-address
// field (bits 0-13, address / 16) moves. Shared addresses are below 2^18, so the field never
// carries into the offsets above it and a 32-bit add of the low word suffices: one uniform
// add per wgmma instead of rebuilding the descriptor (mask, shift, or) from the address.
__device__ __forceinline__ uint64_t sw128_desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = uint32_t(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Shared memory written by ordinary stores or cp.async becomes visible to the tensor cores
// (the async proxy) only after this fence in each writing thread, followed by a barrier.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Pins register operands at this point of the program: without it the compiler may move the
// arithmetic that defines them past a wgmma fence, and then serializes every wgmma (C7513).
template <int kRows, int kCols>
__device__ __forceinline__ void fence_operands(float (&r)[kRows][kCols]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < kCols; ++j) asm volatile("" : "+f"(r[i][j])::"memory");
}
template <int kRows, int kCols>
__device__ __forceinline__ void fence_operands(uint32_t (&r)[kRows][kCols]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < kCols; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

#define SPARGE_F4(a, i) "+f"(a[i]), "+f"(a[i + 1]), "+f"(a[i + 2]), "+f"(a[i + 3])
#define SPARGE_F16(a, i) SPARGE_F4(a, i), SPARGE_F4(a, i + 4), SPARGE_F4(a, i + 8), SPARGE_F4(a, i + 12)
#define SPARGE_ACC32(a) SPARGE_F16(a, 0), SPARGE_F16(a, 16)
#define SPARGE_ACC64(a) SPARGE_ACC32(a), SPARGE_F16(a, 32), SPARGE_F16(a, 48)
#define SPARGE_ACC96(a) SPARGE_ACC64(a), SPARGE_F16(a, 64), SPARGE_F16(a, 80)
#define SPARGE_ACC128(a) SPARGE_ACC64(a), SPARGE_F16(a, 64), SPARGE_F16(a, 80), SPARGE_F16(a, 96), \
                         SPARGE_F16(a, 112)
#define SPARGE_OPS32                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SPARGE_OPS64                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "  \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "   \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "    \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// m64n192 / m64n256 (the warp-specialized kernel's Q·Kᵀ over three or four 64-key blocks,
// and its P·V at head dim 256).
#define SPARGE_OPS96 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, " \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, " \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, " \
  "%70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, " \
  "%87, %88, %89, %90, %91, %92, %93, %94, %95}"
#define SPARGE_OPS128 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, " \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, " \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, " \
  "%70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, " \
  "%87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, " \
  "%104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, " \
  "%118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"

// Which input type: the instruction strings below differ only in its PTX name, bf16 or f16.
template <typename T> struct WgmmaType;
template <> struct WgmmaType<__nv_bfloat16> { static constexpr bool kBf16 = true; };
template <> struct WgmmaType<__half> { static constexpr bool kBf16 = false; };

// SS: N/2 accumulators, then the two descriptors and the scale-d flag (m64n64k16: %32, %33 and
// %34; m64n128k16: %64, %65 and %66; m64n192k16: %96..%98; m64n256k16: %128..%130).
#define SPARGE_WGMMA_SS(SHAPE, TYPE, OPS, ACC, SCALE_D, TAIL)                              \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, " SCALE_D ", 0;\n"                       \
               " wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " " OPS TAIL   \
               : ACC : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)))
#define SPARGE_SS_TAIL32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
#define SPARGE_SS_TAIL64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
#define SPARGE_SS_TAIL96 ", %96, %97, p, 1, 1, 0, 0;\n}\n"
#define SPARGE_SS_TAIL128 ", %128, %129, p, 1, 1, 0, 0;\n}\n"
// RS: accumulators, then the four A registers and the B descriptor; always accumulates.
#define SPARGE_WGMMA_RS(SHAPE, TYPE, OPS, ACC, TAIL)                                        \
  asm volatile("{\n .reg .pred p;\n setp.eq.u32 p, 1, 1;\n"                                 \
               " wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " " OPS TAIL   \
               : ACC : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
#define SPARGE_RS_TAIL32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
#define SPARGE_RS_TAIL64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
#define SPARGE_RS_TAIL128 ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"

// d[64×N] (+)= A[64×16] · B[N×16]ᵀ, both K-major in shared memory, N = 64, 128, 192 or 256.
// accumulate = false overwrites d (the first k step of a tile).
template <typename T, int N>
__device__ __forceinline__ void wgmma_m64nNk16_ss(float (&d)[N / 8][4], uint64_t desc_a,
                                                  uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 192 || N == 256,
                "Q·Kᵀ wgmma is instantiated for 64, 128, 192 and 256 keys");
  float(&f)[N / 2] = reinterpret_cast<float(&)[N / 2]>(d);
  constexpr bool kBf16 = WgmmaType<T>::kBf16;
  if constexpr (N == 64 && kBf16)
    SPARGE_WGMMA_SS("m64n64k16", "bf16", SPARGE_OPS32, SPARGE_ACC32(f), "%34", SPARGE_SS_TAIL32);
  else if constexpr (N == 64)
    SPARGE_WGMMA_SS("m64n64k16", "f16", SPARGE_OPS32, SPARGE_ACC32(f), "%34", SPARGE_SS_TAIL32);
  else if constexpr (N == 128 && kBf16)
    SPARGE_WGMMA_SS("m64n128k16", "bf16", SPARGE_OPS64, SPARGE_ACC64(f), "%66", SPARGE_SS_TAIL64);
  else if constexpr (N == 128)
    SPARGE_WGMMA_SS("m64n128k16", "f16", SPARGE_OPS64, SPARGE_ACC64(f), "%66", SPARGE_SS_TAIL64);
  else if constexpr (N == 192 && kBf16)
    SPARGE_WGMMA_SS("m64n192k16", "bf16", SPARGE_OPS96, SPARGE_ACC96(f), "%98", SPARGE_SS_TAIL96);
  else if constexpr (N == 192)
    SPARGE_WGMMA_SS("m64n192k16", "f16", SPARGE_OPS96, SPARGE_ACC96(f), "%98", SPARGE_SS_TAIL96);
  else if constexpr (kBf16)
    SPARGE_WGMMA_SS("m64n256k16", "bf16", SPARGE_OPS128, SPARGE_ACC128(f), "%130",
                    SPARGE_SS_TAIL128);
  else
    SPARGE_WGMMA_SS("m64n256k16", "f16", SPARGE_OPS128, SPARGE_ACC128(f), "%130",
                    SPARGE_SS_TAIL128);
}

// d[64×64] (+)= A[64×16] · B[64×16]ᵀ, both K-major in shared memory. accumulate = false
// overwrites d (the first k step of a tile).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a,
                                                   uint64_t desc_b, bool accumulate) {
  wgmma_m64nNk16_ss<T, 64>(d, desc_a, desc_b, accumulate);
}

// d[64×N] += A[64×16] · B[16×N]: A from registers (mma.sync A layout), B MN-major in shared
// memory (transposed by the instruction: imm-trans-b = 1). N = 64, 128 or 256 (the head dim;
// at 256 the accumulator is 128 registers per thread).
template <typename T, int N>
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                                  uint64_t desc_b) {
  static_assert(N == 64 || N == 128 || N == 256,
                "P·V wgmma is instantiated for head dims 64, 128 and 256");
  float(&f)[N / 2] = reinterpret_cast<float(&)[N / 2]>(d);
  constexpr bool kBf16 = WgmmaType<T>::kBf16;
  if constexpr (N == 64 && kBf16)
    SPARGE_WGMMA_RS("m64n64k16", "bf16", SPARGE_OPS32, SPARGE_ACC32(f), SPARGE_RS_TAIL32);
  else if constexpr (N == 64)
    SPARGE_WGMMA_RS("m64n64k16", "f16", SPARGE_OPS32, SPARGE_ACC32(f), SPARGE_RS_TAIL32);
  else if constexpr (N == 128 && kBf16)
    SPARGE_WGMMA_RS("m64n128k16", "bf16", SPARGE_OPS64, SPARGE_ACC64(f), SPARGE_RS_TAIL64);
  else if constexpr (N == 128)
    SPARGE_WGMMA_RS("m64n128k16", "f16", SPARGE_OPS64, SPARGE_ACC64(f), SPARGE_RS_TAIL64);
  else if constexpr (kBf16)
    SPARGE_WGMMA_RS("m64n256k16", "bf16", SPARGE_OPS128, SPARGE_ACC128(f), SPARGE_RS_TAIL128);
  else
    SPARGE_WGMMA_RS("m64n256k16", "f16", SPARGE_OPS128, SPARGE_ACC128(f), SPARGE_RS_TAIL128);
}

#undef SPARGE_WGMMA_SS
#undef SPARGE_SS_TAIL32
#undef SPARGE_SS_TAIL64
#undef SPARGE_SS_TAIL96
#undef SPARGE_SS_TAIL128
#undef SPARGE_WGMMA_RS
#undef SPARGE_RS_TAIL32
#undef SPARGE_RS_TAIL64
#undef SPARGE_RS_TAIL128
#undef SPARGE_F4
#undef SPARGE_F16
#undef SPARGE_ACC32
#undef SPARGE_ACC64
#undef SPARGE_ACC96
#undef SPARGE_ACC128
#undef SPARGE_OPS32
#undef SPARGE_OPS64
#undef SPARGE_OPS96
#undef SPARGE_OPS128

}  // namespace sparge::cuda
