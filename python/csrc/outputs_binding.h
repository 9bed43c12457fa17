// Output and mask tensors of the PyTorch binding (python/csrc/binding.cc): a BlockMask view of
// the (counts, indices) tensors, and the empty outputs of each op, checked and shaped here so the
// op bodies only call the C++ API. `poison` (a test hook) fills them with NaN / -1 first.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sparge/sparge.h"

namespace sparge_binding {

// `row_offsets` (int64 [rows + 1], or undefined) makes the mask compact (sparge::BlockMask):
// indices then hold row_offsets[rows] entries, which the C++ validation reads on the host.
inline sparge::BlockMask mask_view(const at::Tensor& counts, const at::Tensor& indices,
                                   const at::Tensor& q, const at::Tensor& k,
                                   const sparge::SparseOptions& o,
                                   const at::Tensor& row_offsets = at::Tensor()) {
  const bool compact = row_offsets.defined();
  for (const auto* t : {&counts, &indices, &row_offsets}) {
    if (!t->defined()) continue;
    const char* name = t == &counts    ? "block_mask.counts"
                       : t == &indices ? "block_mask.indices"
                                       : "block_mask.row_offsets";
    const at::ScalarType want = t == &row_offsets ? at::kLong : at::kInt;
    TORCH_CHECK_TYPE(t->scalar_type() == want, name, " must be ",
                     want == at::kLong ? "int64" : "int32", ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->is_contiguous(), name, " must be contiguous");
    TORCH_CHECK_VALUE(t->device() == q.device(), name, " must be on q's device (", q.device(),
                      "), got ", t->device());
  }
  sparge::BlockMask m;
  m.counts = counts.data_ptr<int32_t>();
  m.indices = indices.data_ptr<int32_t>();
  m.row_offsets = compact ? row_offsets.data_ptr<int64_t>() : nullptr;
  m.device = q.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
  m.device_index = q.is_cuda() ? q.device().index() : 0;
  m.batch = q.size(0), m.heads = q.size(1), m.seq_q = q.size(2), m.seq_k = k.size(2);
  m.block_q = o.block_q, m.block_k = o.block_k;
  if (compact) {
    TORCH_CHECK_VALUE(counts.numel() == m.rows() && row_offsets.numel() == m.rows() + 1,
                      "block_mask must hold ", m.rows(), " counts and ", m.rows() + 1,
                      " row_offsets for q ", q.sizes(), ", k ", k.sizes(), " and blocks ",
                      o.block_q, "x", o.block_k, ", got ", counts.numel(), " and ",
                      row_offsets.numel());
    // The last offset is how many indices the rows own; on a CUDA mask the backend rejects the
    // compact form before any offset would be read, so only host offsets are read here.
    if (!q.is_cuda())
      TORCH_CHECK_VALUE(indices.numel() == m.row_offsets[m.rows()],
                        "block_mask.indices must hold row_offsets[-1] = ",
                        m.row_offsets[m.rows()], " entries, got ", indices.numel());
    return m;
  }
  TORCH_CHECK_VALUE(counts.numel() == m.rows() && indices.numel() == m.rows() * m.num_k_blocks(),
                    "block_mask must hold ", m.rows(), " counts and ", m.rows() * m.num_k_blocks(),
                    " indices for q ", q.sizes(), ", k ", k.sizes(), " and blocks ", o.block_q, "x",
                    o.block_k, ", got ", counts.numel(), " and ", indices.numel());
  return m;
}

// A KeyBlocks view of the (pooled [B, Hkv, D, max_blocks], sim [B, Hkv, max_blocks], mean
// [B, Hkv, D]) float64 tensors of sparge.KeyBlocks; the C++ validation checks them against k.
inline sparge::KeyBlocks key_blocks_view(const at::Tensor& pooled, const at::Tensor& sim,
                                         const at::Tensor& mean, int64_t block_k,
                                         int64_t tokens, const at::Tensor& k) {
  const int64_t dims[] = {4, 3, 3};
  const char* names[] = {"key_blocks.pooled", "key_blocks.sim", "key_blocks.mean"};
  const at::Tensor* tensors[] = {&pooled, &sim, &mean};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& t = *tensors[i];
    TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, names[i], " must be float64, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == dims[i] && t.is_contiguous(), names[i], " must be a contiguous ",
                      dims[i], "-D tensor, got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == k.device(), names[i], " must be on k's device (", k.device(),
                      "), got ", t.device());
  }
  TORCH_CHECK_VALUE(sim.sizes() == at::IntArrayRef({pooled.size(0), pooled.size(1),
                                                    pooled.size(3)}) &&
                        mean.sizes() == pooled.sizes().slice(0, 3),
                    "key_blocks.sim and .mean must be [B, Hkv, max_blocks] and [B, Hkv, D] for "
                    "pooled [B, Hkv, D, max_blocks] ", pooled.sizes(), ", got ", sim.sizes(),
                    " and ", mean.sizes());
  sparge::KeyBlocks kb;
  kb.pooled = pooled.data_ptr<double>();
  kb.sim = sim.data_ptr<double>();
  kb.mean = mean.data_ptr<double>();
  kb.device = k.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
  kb.device_index = k.is_cuda() ? k.device().index() : 0;
  kb.batch = pooled.size(0), kb.heads_kv = pooled.size(1), kb.head_dim = pooled.size(2);
  kb.max_blocks = pooled.size(3);
  kb.block_k = static_cast<int>(block_k);
  kb.tokens = tokens;
  return kb;
}

// Storage for a mask of the options' geometry; the options are validated before this divides
// by block_q and block_k.
inline std::vector<at::Tensor> empty_mask(const at::Tensor& q, const at::Tensor& k,
                                          const sparge::SparseOptions& o, bool poison) {
  const int64_t nq = (q.size(2) + o.block_q - 1) / o.block_q;
  const int64_t nk = (k.size(2) + o.block_k - 1) / o.block_k;
  auto opts = q.options().dtype(at::kInt);
  at::Tensor counts = at::empty({q.size(0), q.size(1), nq}, opts);
  at::Tensor indices = at::empty({q.size(0), q.size(1), nq, nk}, opts);
  if (poison) counts.fill_(-1), indices.fill_(-1);
  return {counts, indices};
}

// Output like q (same strides when q is dense, e.g. an NHD view), lse, P·V counters and Stage 1's
// per-head stats: stage1 float32 [2, batch, heads_q] (the select_value each head used: TopCdf τ,
// TopK κ or the error target's choice; then the error estimate, NaN without target_error) and
// forced_tiles int64 [batch, heads_q] (tiles the similarity gate forced). All but `out` are
// empty unless `with_extras`; on q's device, as the C++ API writes them.
inline std::vector<at::Tensor> empty_outputs(const at::Tensor& q, bool with_extras, bool poison,
                                             sparge::AttentionExtras* extras) {
  at::Tensor out = at::empty_like(q);
  const int64_t lse_rows = with_extras ? q.size(0) * q.size(1) * q.size(2) : 0;
  const int64_t heads = with_extras ? q.size(1) : 0, rows = with_extras ? q.size(0) : 0;
  at::Tensor lse = at::empty({lse_rows}, q.options().dtype(at::kFloat));
  at::Tensor counters = at::zeros({heads, 2}, q.options().dtype(at::kLong));
  at::Tensor stage1 = at::empty({2, rows, heads}, q.options().dtype(at::kFloat));
  at::Tensor forced = at::empty({rows, heads}, q.options().dtype(at::kLong));
  if (poison) out.fill_(NAN), lse.fill_(NAN), stage1.fill_(NAN), forced.fill_(-1);
  if (with_extras) {
    extras->lse = lse.data_ptr<float>();
    extras->pv_counters = reinterpret_cast<unsigned long long*>(counters.data_ptr<int64_t>());
    extras->stage1.select_value = stage1.data_ptr<float>();
    extras->stage1.error_estimate = stage1.data_ptr<float>() + rows * heads;
    extras->stage1.forced_tiles = forced.data_ptr<int64_t>();
  }
  return {out, lse.view({rows, q.size(1), q.size(2)}), counters, stage1, forced};
}

}  // namespace sparge_binding
