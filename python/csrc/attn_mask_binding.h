// The attention-mask arguments of the sparge ops (python/csrc/binding.cc): at::Tensor ->
// sparge::AttentionMask. Kept apart from binding.cc, which converts q/k/v, streams and errors.
#pragma once

#include <torch/extension.h>

#include "options_binding.h"
#include "sparge/sparge.h"

namespace sparge_binding {

// The attention mask: a 4-D view broadcastable to [B, Hq, Nq, Nk] (python/sparge/ops.py makes
// it 4-D; the C++ core checks the shape, the device and the strides) and [B] int32 key lengths.
inline sparge::AttentionMask attn_mask_view(const c10::IValue& mask, const c10::IValue& lengths,
                                     const at::Tensor& q) {
  sparge::AttentionMask m;
  if (!mask.isNone()) {
    const at::Tensor t = mask.toTensor();
    TORCH_CHECK_VALUE(t.dim() == 4, "attn_mask must be 4-D [B|1, Hq|1, Nq|1, Nk], got ", t.dim(),
                      "-D");
    switch (t.scalar_type()) {
      case at::kBool: m.dtype = sparge::MaskDType::kBool; break;
      case at::kFloat: m.dtype = sparge::MaskDType::kFloat32; break;
      case at::kHalf: m.dtype = sparge::MaskDType::kFloat16; break;
      case at::kBFloat16: m.dtype = sparge::MaskDType::kBFloat16; break;
      default:
        TORCH_CHECK_TYPE(false, "attn_mask.dtype must be bool, float32, float16 or bfloat16, got ",
                         t.scalar_type());
    }
    m.data = t.data_ptr();
    m.device = t.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
    m.device_index = t.is_cuda() ? t.device().index() : 0;
    TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), "attn_mask must be on cpu or cuda, got ",
                      t.device());
    m.batch = t.size(0), m.heads = t.size(1), m.seq_q = t.size(2), m.seq_k = t.size(3);
    m.stride_batch = t.stride(0), m.stride_head = t.stride(1), m.stride_q = t.stride(2);
    m.stride_k = t.stride(3);
    m.capacity = static_cast<int64_t>(t.storage().nbytes() / t.element_size()) -
                 t.storage_offset();
  }
  if (!lengths.isNone()) {
    const at::Tensor t = lengths.toTensor();
    TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, "key_lengths must be int32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == q.size(0) && t.is_contiguous(),
                      "key_lengths must be a contiguous 1-D tensor of length batch (", q.size(0),
                      "), got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == q.device(), "key_lengths must be on q's device (", q.device(),
                      "), got ", t.device());
    m.key_lengths = t.data_ptr<int32_t>();
    m.device = q.is_cuda() ? sparge::Device::kCUDA : sparge::Device::kCPU;
    m.device_index = q.is_cuda() ? q.device().index() : 0;
  }
  return m;
}

// The op's next two arguments (attn_mask, key_lengths), in schema order.
inline sparge::AttentionMask read_attn_mask(ArgReader& in, const at::Tensor& q) {
  const c10::IValue& mask = in.next();
  return attn_mask_view(mask, in.next(), q);
}

}  // namespace sparge_binding
