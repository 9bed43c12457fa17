// Tile classes of a dense attention mask (tile_classes.h): the rule of the CPU's
// MaskReader::classify (cpu/attn_mask.cc) on the device.
#include "cuda/mask/tile_classes.h"

#include <cmath>

#include "cuda/common/check.cuh"

namespace sparge::cuda {
namespace {

constexpr int kClassifyThreads = 128;

// A tile is skipped when no pair in it is visible (band, key padding and the mask together),
// plain when every pair the band shows is a real key with mask value 0, partial otherwise. The
// tile's pairs are read row by row with the keys fastest (coalesced along a mask row).
__global__ void __launch_bounds__(kClassifyThreads) classify_tiles(const TileClassParams p) {
  const int j = blockIdx.x, i = blockIdx.y, bh = blockIdx.z;
  const int b = bh / p.class_heads, h = bh % p.class_heads;
  uint8_t* out = p.out + (int64_t(bh) * p.num_q_blocks + i) * p.num_k_blocks + j;
  const detail::BlockRange allowed =
      detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, p.seq_k);
  if (!allowed.contains(j)) {  // uniform over the CTA: the band hides the whole tile
    if (threadIdx.x == 0) *out = kTileSkipped;
    return;
  }
  const int64_t key_end = detail::key_end(p.key_lengths, b, p.seq_k);
  const int r0 = i * p.block_q, rows = min(p.seq_q, r0 + p.block_q) - r0;
  const int c0 = j * p.block_k, keys = min(p.seq_k, c0 + p.block_k) - c0;
  bool visible = false, plain = true;
  with_mask_type(p.mask, [&](auto element) {
    using E = decltype(element);
    for (int e = threadIdx.x; e < rows * keys; e += kClassifyThreads) {
      const int r = r0 + e / keys, c = c0 + e % keys;
      if (c < detail::first_visible_key(r, p.band) ||
          c > detail::last_visible_key(r, p.band, p.seq_k))
        continue;  // the band hides the pair: it says nothing about the tile
      if (c >= key_end) {  // the band shows the row a padding key: masked, so not plain
        plain = false;
        continue;
      }
      const int64_t off = dense_mask_row(p.mask, b, h, r) + int64_t(c) * p.mask.stride_k;
      const float x = dense_mask_at<E>(p.mask.data, off);
      if (x != -INFINITY) visible = true;
      if (x != 0.0f) plain = false;  // hidden or biased (NaN too: it must reach the scores)
    }
  });
  visible = __syncthreads_or(visible);
  plain = __syncthreads_and(plain);
  if (threadIdx.x == 0) *out = !visible ? kTileSkipped : plain ? kTilePlain : kTilePartial;
}

}  // namespace

Status launch_tile_classes(const TileClassParams& p, cudaStream_t stream) {
  const dim3 grid(p.num_k_blocks, p.num_q_blocks, p.class_batch * p.class_heads);
  classify_tiles<<<grid, kClassifyThreads, 0, stream>>>(p);
  SPARGE_CUDA_CHECK_LAUNCH("classify_tiles launch");
  return Status::ok();
}

}  // namespace sparge::cuda
