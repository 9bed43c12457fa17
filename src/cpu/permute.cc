// CPU token permutation (Hilbert reordering and its inverse), any dtype, any strides.
//
// Arguments arrive validated (src/common/dispatch.cc): same shape and dtype, order[i] in
// [0, order_len), the permuted range inside the token axis. stride_dim is 1, so one token's
// head_dim channels are contiguous and move as one memcpy.
#include <cstring>

#include "common/backend.h"

namespace sparge::cpu {

Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse) {
  const std::size_t row_bytes = static_cast<std::size_t>(in.head_dim) * dtype_size(in.dtype);
  const std::size_t elem = dtype_size(in.dtype);
  const auto* src_base = static_cast<const char*>(in.data);
  auto* dst_base = static_cast<char*>(out.data);
  const int64_t slices = in.batch * in.heads;

#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < slices; ++bh) {
    const int64_t b = bh / in.heads, h = bh % in.heads;
    for (int64_t n = 0; n < in.tokens; ++n) {
      // Output token n reads input token `from`; inside the range the order decides.
      int64_t to = n, from = n;
      const int64_t i = n - first_token;
      if (i >= 0 && i < order_len) {
        if (inverse) {
          // out[first + order[i]] = in[first + i]: walk the input side so each output row is
          // written exactly once (order is a permutation).
          to = first_token + order[i];
          from = n;
        } else {
          from = first_token + order[i];
        }
      }
      std::memcpy(dst_base + out.offset(b, h, to, 0) * elem,
                  src_base + in.offset(b, h, from, 0) * elem, row_bytes);
    }
  }
  return Status::ok();
}

}  // namespace sparge::cpu
