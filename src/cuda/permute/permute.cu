// Token permutation on CUDA (Hilbert ordering of video tokens and its inverse):
//   forward: out[:, :, first + i] = in[:, :, first + order[i]],
//   inverse: out[:, :, first + order[i]] = in[:, :, first + i], other tokens copied unchanged.
// A row (batch, head, token) is copied in units of 16 bytes when the rows and strides of both
// tensors allow it, else of one element; consecutive threads take consecutive units of a row,
// then of the next row, so loads and stores are coalesced. Each thread copies kUnitsPerThread
// units with all their loads issued before the first store (in and out are distinct tensors):
// one warp per row with 2-byte copies ran at ~1.2 TB/s, a dependent load-store round trip per
// 64 bytes. Entries of `order` outside [0, order_len) are ignored (they cannot be checked
// without a sync).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common/check.cuh"
#include "cuda/permute/permute.h"

namespace sparge::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnitsPerThread = 4;

// U: the copy unit (uint4, or the element type). grid (x, batch·heads): blockIdx.y is the (b, h)
// slice, whose tokens · units_per_row units (< 2^31, checked on the host) the x CTAs stride over,
// so that the per-unit index arithmetic is 32-bit.
template <typename U>
__global__ void __launch_bounds__(kThreads) permute_units(const PermuteParams p, int units_per_row) {
  constexpr int kStride = kThreads * kUnitsPerThread;
  const int bh = blockIdx.y, b = bh / int(p.heads), h = bh % int(p.heads);
  const int slice_units = int(p.tokens) * units_per_row;
  const char* in = static_cast<const char*>(p.in) + (b * p.in_stride[0] + h * p.in_stride[1]) * p.elem_bytes;
  char* out = static_cast<char*>(p.out) + (b * p.out_stride[0] + h * p.out_stride[1]) * p.elem_bytes;
  const int64_t in_row_bytes = p.in_stride[2] * p.elem_bytes, out_row_bytes = p.out_stride[2] * p.elem_bytes;
  for (int base = blockIdx.x * kStride + threadIdx.x; base < slice_units; base += gridDim.x * kStride) {
    U value[kUnitsPerThread];
    U* dst_at[kUnitsPerThread];
#pragma unroll
    for (int i = 0; i < kUnitsPerThread; ++i) {
      dst_at[i] = nullptr;
      const int unit = base + i * kThreads;
      if (unit >= slice_units) continue;
      const int n = unit / units_per_row, part = unit % units_per_row;
      int64_t src = n, dst = n;
      if (n >= p.first && n < p.first + p.order_len) {
        const int64_t o = p.order[n - p.first];
        if (o < 0 || o >= p.order_len) continue;
        if (p.inverse) dst = p.first + o;
        else src = p.first + o;
      }
      value[i] = *reinterpret_cast<const U*>(in + src * in_row_bytes + part * int(sizeof(U)));
      dst_at[i] = reinterpret_cast<U*>(out + dst * out_row_bytes + part * int(sizeof(U)));
    }
#pragma unroll
    for (int i = 0; i < kUnitsPerThread; ++i)
      if (dst_at[i] != nullptr) *dst_at[i] = value[i];
  }
}

// Whether rows of both tensors start on 16-byte boundaries and hold whole 16-byte units.
bool rows_allow_16_bytes(const PermuteParams& p) {
  const auto aligned = [&](int64_t elems) { return (elems * p.elem_bytes) % 16 == 0; };
  const auto base_aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return aligned(p.head_dim) && base_aligned(p.in) && base_aligned(p.out) && aligned(p.in_stride[0]) &&
         aligned(p.in_stride[1]) && aligned(p.in_stride[2]) && aligned(p.out_stride[0]) &&
         aligned(p.out_stride[1]) && aligned(p.out_stride[2]);
}

template <typename U>
Status launch_units(const PermuteParams& p, cudaStream_t stream) {
  const int64_t units_per_row = p.head_dim * p.elem_bytes / int64_t(sizeof(U));
  const int64_t slice_units = p.tokens * units_per_row, slices = p.batch * p.heads;
  if (slice_units == 0 || slices == 0) return Status::ok();
  if (slice_units > 0x7fffffffLL)
    return Status::unsupported("permute_tokens: tokens · head_dim must be < 2^31 per (batch, head)");
  if (slices > 65535) return Status::unsupported("permute_tokens: batch · heads must be <= 65535 on cuda");
  constexpr int64_t kPerCta = int64_t(kThreads) * kUnitsPerThread;
  // The kernel strides over the slice, so a cap on the CTAs only costs loop turns.
  const int64_t ctas = std::min<int64_t>((slice_units + kPerCta - 1) / kPerCta, 1 << 16);
  permute_units<U><<<dim3(unsigned(ctas), unsigned(slices)), kThreads, 0, stream>>>(p, int(units_per_row));
  SPARGE_CUDA_CHECK_LAUNCH("permute_units launch");
  return Status::ok();
}

}  // namespace

Status launch_permute(const PermuteParams& p, cudaStream_t stream) {
  if (rows_allow_16_bytes(p)) return launch_units<uint4>(p, stream);
  if (p.elem_bytes == 4) return launch_units<uint32_t>(p, stream);
  return launch_units<uint16_t>(p, stream);
}

}  // namespace sparge::cuda
