// Token order for the PyTorch binding: the Hilbert order of a (frames, height, width) grid as a
// tensor (the permutation itself is the C++ core's sparge::hilbert_order).
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sparge/sparge.h"

namespace sparge_binding {

// Hilbert order of a (frames, height, width) grid as int64 on `device`.
inline at::Tensor hilbert_order(int64_t frames, int64_t height, int64_t width, at::Device device) {
  TORCH_CHECK_VALUE(frames >= 1 && height >= 1 && width >= 1,
                    "token_grid sizes must be >= 1, got (", frames, ", ", height, ", ", width,
                    ")");
  std::vector<int64_t> order = sparge::hilbert_order(frames, height, width);
  TORCH_CHECK(static_cast<int64_t>(order.size()) == frames * height * width,
              "sparge: hilbert_order returned ", order.size(), " entries for a grid of ",
              frames * height * width);
  at::Tensor host = at::empty({static_cast<int64_t>(order.size())}, at::kLong);
  std::copy(order.begin(), order.end(), host.data_ptr<int64_t>());
  return host.to(device);
}

}  // namespace sparge_binding
