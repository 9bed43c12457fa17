// Internal helpers of the CPU reference that tests, the fast backend's tests, the GPU tests and
// the command line share.
#pragma once

#include <vector>

#include "sparge/types.h"

namespace sparge::cpu {

// Plain dense softmax attention in double, nothing skipped: o = softmax(scale·q kᵀ + mask) v,
// the mask hiding what `visibility`'s causal flag and window (with causal_align) hide; its other
// options are not read. q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D] in any dtype/strides (host memory,
// Hq % Hkv == 0). Returns logical HND [B, Hq, Nq, D] contiguous; a row that sees no key gets zeros.
std::vector<double> dense_attention_reference(const TensorView& q, const TensorView& k,
                                              const TensorView& v, float scale,
                                              const SparseOptions& visibility);
std::vector<double> dense_attention_reference(const TensorView& q, const TensorView& k,
                                              const TensorView& v, float scale, bool causal,
                                              CausalAlign align);

}  // namespace sparge::cpu
