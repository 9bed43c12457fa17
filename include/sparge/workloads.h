// Deterministic attention workloads (fixed seeds) for the demo, tests and benchmarks: the header
// of the sparge_workloads library (CMake target; src/workloads/), which is not part of libsparge.
// Link sparge_workloads to use it. Each generator's statistics are in docs/workloads.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparge/types.h"

namespace sparge::workloads {

// q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D], fp32, HND contiguous.
struct Workload {
  std::string name;
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seq_q = 0, seq_k = 0, head_dim = 0;
  std::vector<float> q, k, v;
  // Grid workloads: tokens are the (frames, height, width) grid in row-major order.
  int64_t grid_t = 0, grid_h = 0, grid_w = 0;
  bool causal = false;  // how the workload is meant to be run

  TensorView q_view() { return view(q, heads_q, seq_q); }
  TensorView k_view() { return view(k, heads_kv, seq_k); }
  TensorView v_view() { return view(v, heads_kv, seq_k); }

 private:
  TensorView view(std::vector<float>& buf, int64_t heads, int64_t tokens) {
    return TensorView::contiguous(buf.data(), DType::kFloat32, Layout::kHND, batch, heads,
                                  tokens, head_dim);
  }
};

// I.i.d. N(0, 1) entries: attention is nearly uniform, nothing can be skipped safely.
Workload random_gaussian(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t seq_q,
                         int64_t seq_k, int64_t head_dim, uint64_t seed = 0);

// Video-like tokens on a (frames, height, width) grid whose features vary smoothly in space and
// time, so attention is local and block masks are sparse. Self-attention: Nq = Nk = T*H*W.
Workload video_grid(int64_t batch, int64_t heads, int64_t frames, int64_t height, int64_t width,
                    int64_t head_dim, uint64_t seed = 0);

// Language-model-like causal heads: attention sinks on the first tokens, local windows, and a
// few retrieval keys that distant queries match. Self-attention with Hq/Hkv = gqa groups.
Workload language_like(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t tokens,
                       int64_t head_dim, uint64_t seed = 0);

// Convert an fp32 buffer to fp16/bf16 bits (round to nearest even), for typed test inputs.
std::vector<uint16_t> to_half_bits(const std::vector<float>& x, DType dtype);

}  // namespace sparge::workloads
