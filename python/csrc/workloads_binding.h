// The workload generators of include/sparge/workloads.h for Python (sparge.workloads), so the
// evaluation report draws its inputs from exactly the C++ generators and seeds. Kept out of
// binding.cc, which only converts the attention ops. Arguments are checked in
// python/sparge/workloads.py; the generators themselves run with the GIL released.
#pragma once

#include <torch/extension.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "sparge/workloads.h"

namespace sparge_binding {

// A [batch, heads, tokens, head_dim] fp32 cpu tensor holding a copy of the generator's buffer.
inline at::Tensor workload_tensor(const std::vector<float>& data, int64_t batch, int64_t heads,
                                  int64_t tokens, int64_t head_dim) {
  at::Tensor t = at::empty({batch, heads, tokens, head_dim}, at::kFloat);
  TORCH_CHECK(static_cast<int64_t>(data.size()) == t.numel(), "sparge: workload buffer holds ",
              data.size(), " values, expected ", t.numel());
  std::memcpy(t.data_ptr<float>(), data.data(), data.size() * sizeof(float));
  return t;
}

// kind: "random" (dims B, Hq, Hkv, Nq, Nk, D), "video-grid" (B, H, T, Hgt, W, D) or
// "llm-like" (B, Hq, Hkv, N, D). Returns q, k, v, name, (grid_t, grid_h, grid_w), causal.
inline py::tuple make_workload(const std::string& kind, const std::vector<int64_t>& dims,
                               uint64_t seed) {
  namespace wl = sparge::workloads;
  TORCH_CHECK_VALUE(kind == "random" || kind == "video-grid" || kind == "llm-like",
                    "workload kind must be random, video-grid or llm-like, got '", kind, "'");
  const size_t arity = kind == "llm-like" ? 5 : 6;
  TORCH_CHECK_VALUE(dims.size() == arity, "workload '", kind, "' takes ", arity, " sizes, got ",
                    dims.size());
  wl::Workload w;
  {
    py::gil_scoped_release release;
    const auto& d = dims;
    if (kind == "random") w = wl::random_gaussian(d[0], d[1], d[2], d[3], d[4], d[5], seed);
    if (kind == "video-grid") w = wl::video_grid(d[0], d[1], d[2], d[3], d[4], d[5], seed);
    if (kind == "llm-like") w = wl::language_like(d[0], d[1], d[2], d[3], d[4], seed);
  }
  return py::make_tuple(workload_tensor(w.q, w.batch, w.heads_q, w.seq_q, w.head_dim),
                        workload_tensor(w.k, w.batch, w.heads_kv, w.seq_k, w.head_dim),
                        workload_tensor(w.v, w.batch, w.heads_kv, w.seq_k, w.head_dim), w.name,
                        py::make_tuple(w.grid_t, w.grid_h, w.grid_w), w.causal);
}

inline void register_workloads(py::module& module) {
  module.def("make_workload", &make_workload, py::arg("kind"), py::arg("dims"), py::arg("seed"),
             "Run a C++ workload generator; returns (q, k, v, name, grid, causal).");
}

}  // namespace sparge_binding
