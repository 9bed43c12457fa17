// Token permutation on CUDA (Hilbert ordering of video tokens and its inverse):
//   forward: out[:, :, first + i] = in[:, :, first + order[i]],
//   inverse: out[:, :, first + order[i]] = in[:, :, first + i], other tokens copied unchanged.
// One warp per (batch, head, token) row, lanes stride over the channels (coalesced). Entries of
// `order` outside [0, order_len) are ignored (they cannot be checked without a sync).
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/check.cuh"
#include "cuda/permute/permute.h"

namespace sparge::cuda {
namespace {

constexpr int kRowsPerCta = 8;  // warps per CTA

template <typename E>
__global__ void __launch_bounds__(kRowsPerCta * 32) permute_rows(const PermuteParams p) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerCta + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = p.batch * p.heads * p.tokens;
  if (row >= rows) return;
  const int64_t n = row % p.tokens, bh = row / p.tokens, h = bh % p.heads, b = bh / p.heads;
  int64_t src = n, dst = n;
  if (n >= p.first && n < p.first + p.order_len) {
    const int64_t o = p.order[n - p.first];
    if (o < 0 || o >= p.order_len) return;
    if (p.inverse) dst = p.first + o;
    else src = p.first + o;
  }
  const E* in = static_cast<const E*>(p.in) + b * p.in_stride[0] + h * p.in_stride[1] + src * p.in_stride[2];
  E* out = static_cast<E*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + dst * p.out_stride[2];
  for (int64_t d = lane; d < p.head_dim; d += 32) out[d] = in[d];
}

}  // namespace

Status launch_permute(const PermuteParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads * p.tokens;
  const int64_t ctas = (rows + kRowsPerCta - 1) / kRowsPerCta;
  if (ctas > 0x7fffffffLL) return Status::unsupported("permute_tokens: too many token rows for one grid");
  if (p.elem_bytes == 4)
    permute_rows<uint32_t><<<unsigned(ctas), kRowsPerCta * 32, 0, stream>>>(p);
  else
    permute_rows<uint16_t><<<unsigned(ctas), kRowsPerCta * 32, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("permute_rows launch");
  return Status::ok();
}

}  // namespace sparge::cuda
