// The 8-bit sm_90a warpgroup tensor-core primitives of the quantized attention kernel
// (attn_fwd_sm90_q8): INT8 Q·Kᵀ (s8·s8 -> s32, both operands K-major in shared memory: SW128
// tiles of 128-byte rows at head dim 128, SW64 tiles of 64-byte rows at 64), FP8 P·V (e4m3·e4m3 -> f32, P from registers, V K-major in 64-byte-swizzled tiles),
// the SW64 descriptor, the exact s32 -> f32 conversion of the scores and the e4m3 packing of P.
//
// An 8-bit wgmma takes k = 32 per instruction: 32 bytes of a K-major row, as the 16-bit k16
// ones, so a k step advances a descriptor by 32 bytes in both. 8-bit operands must be K-major
// (PTX ISA: no transpose for them), which is why V is stored channel-major (common/quant_layout.h).
//
// Register A fragment of m64nNk32 8-bit (per warp: 16 rows × 32 k, four 32-bit registers of four
// bytes, lowest byte first): a[0] = row g, k 4t..4t+3; a[1] = row g+8, the same k; a[2] = row g,
// k 16+4t..16+4t+3; a[3] = row g+8, the same (lane 4g+t). The fp32 accumulator layout is that of
// wgmma_sm90.cuh, so thread t holds score columns 2t, 2t+1, 2t+8, 2t+9 of every 16: V8's key order
// (quant_layout.h) puts exactly those at k positions 4t..4t+3, and P packs without shuffles.
#pragma once

#include <cstdint>

#include "cuda/common/wgmma_sm90.cuh"

namespace sparge::cuda {

constexpr int kSw64RowBytes = 64;                  // one swizzle row of a 64-byte-swizzled tile
constexpr int kSw64AtomBytes = 8 * kSw64RowBytes;  // 8 rows: the swizzle period

// Descriptor of a 64-byte-swizzled K-major operand (layout type 2 in bits 62-63): rows of 64
// bytes, 8-row groups stride_bytes apart; the leading offset is unused for a K-major operand whose
// k extent (32 bytes) lies inside one swizzle row. base_offset 0: every atom 512-byte aligned.
__device__ __forceinline__ uint64_t sw64_desc(uint32_t smem_byte_addr, uint32_t stride_bytes) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) |
         (uint64_t(stride_bytes >> 4) << 32) | (uint64_t(2) << 62);
}

// An s32 accumulator x of |x| < 2^22 (an INT8 dot product over at most 256 channels: 127² · 256
// < 2^22) as the float 1.5·2^23 + x, exactly: x added to the bits of 1.5·2^23 (one ulp is 1
// there). The caller folds the offset into the FFMA that scales the score; an integer add on
// the full-rate pipe instead of an I2F, which shares the quarter-rate pipe with the exponentials
// that bound this kernel.
constexpr float kS32Offset = 12582912.0f;  // 1.5 · 2^23
__device__ __forceinline__ float s32_to_f32_offset(uint32_t x) {
  return __uint_as_float(x + 0x4B400000u);
}

// Two floats to two e4m3 bytes (round to nearest even, saturated to ±448; NaN stays NaN), lo in
// the low byte.
__device__ __forceinline__ uint32_t pack_e4m3x2(float lo, float hi) {
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}

#define SPARGE_R4(a, i) "+r"(a[i]), "+r"(a[i + 1]), "+r"(a[i + 2]), "+r"(a[i + 3])
#define SPARGE_R16(a, i) \
  SPARGE_R4(a, i), SPARGE_R4(a, i + 4), SPARGE_R4(a, i + 8), SPARGE_R4(a, i + 12)
#define SPARGE_RACC32(a) SPARGE_R16(a, 0), SPARGE_R16(a, 16)
#define SPARGE_RACC64(a) SPARGE_RACC32(a), SPARGE_R16(a, 32), SPARGE_R16(a, 48)
#define SPARGE_RACC96(a) SPARGE_RACC64(a), SPARGE_R16(a, 64), SPARGE_R16(a, 80)
#define SPARGE_F4(a, i) "+f"(a[i]), "+f"(a[i + 1]), "+f"(a[i + 2]), "+f"(a[i + 3])
#define SPARGE_F16(a, i) \
  SPARGE_F4(a, i), SPARGE_F4(a, i + 4), SPARGE_F4(a, i + 8), SPARGE_F4(a, i + 12)
#define SPARGE_FACC32(a) SPARGE_F16(a, 0), SPARGE_F16(a, 16)
#define SPARGE_FACC64(a) SPARGE_FACC32(a), SPARGE_F16(a, 32), SPARGE_F16(a, 48)
#define SPARGE_OPS32                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SPARGE_OPS64                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "  \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "  \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

#define SPARGE_OPS96 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, " \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, " \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, " \
  "%70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, " \
  "%87, %88, %89, %90, %91, %92, %93, %94, %95}"

// d[64×N] (+)= A[64×32] · B[N×32]ᵀ in s32, both s8 and K-major in shared memory; N = 64 or
// 128 or 192 keys (one to three key blocks of a turn). accumulate = false overwrites d (the
// first k step).
template <int N>
__device__ __forceinline__ void wgmma_m64nNk32_s8_ss(uint32_t (&d)[N / 8][4], uint64_t desc_a,
                                                     uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 192,
                "INT8 Q·Kᵀ wgmma is instantiated for 64, 128 and 192 keys");
  uint32_t(&r)[N / 2] = reinterpret_cast<uint32_t(&)[N / 2]>(d);
  if constexpr (N == 64)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 " SPARGE_OPS32 ", %32, %33, p;\n}\n"
        : SPARGE_RACC32(r)
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
  else if constexpr (N == 128)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " SPARGE_OPS64 ", %64, %65, p;\n}\n"
        : SPARGE_RACC64(r)
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
  else
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %98, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n192k32.s32.s8.s8 " SPARGE_OPS96 ", %96, %97, p;\n}\n"
        : SPARGE_RACC96(r)
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
}

// d[64×N] (+)= A[64×32] · B[N×32]ᵀ in f32, A = P in e4m3 registers (fragment above), B = V8 in
// e4m3, K-major in shared memory; N = 64 or 128 channels, or 8 (P times a tile of ones: the
// row sums). accumulate = false overwrites d.
template <int N>
__device__ __forceinline__ void wgmma_m64nNk32_e4m3_rs(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                                       uint64_t desc_b, bool accumulate) {
  static_assert(N == 8 || N == 64 || N == 128,
                "FP8 P·V wgmma is instantiated for head dims 64 and 128 and the row sums' 8");
  float(&f)[N / 2] = reinterpret_cast<float(&)[N / 2]>(d);
  if constexpr (N == 8)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %9, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0, %1, %2, %3}"
        ", {%4, %5, %6, %7}, %8, p, 1, 1;\n}\n"
        : "+f"(f[0]), "+f"(f[1]), "+f"(f[2]), "+f"(f[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)));
  else if constexpr (N == 64)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 " SPARGE_OPS32
        ", {%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
        : SPARGE_FACC32(f)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)));
  else
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " SPARGE_OPS64
        ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
        : SPARGE_FACC64(f)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)));
}

#undef SPARGE_R4
#undef SPARGE_R16
#undef SPARGE_RACC32
#undef SPARGE_RACC64
#undef SPARGE_RACC96
#undef SPARGE_F4
#undef SPARGE_F16
#undef SPARGE_FACC32
#undef SPARGE_FACC64
#undef SPARGE_OPS32
#undef SPARGE_OPS64
#undef SPARGE_OPS96

}  // namespace sparge::cuda
