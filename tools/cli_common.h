// Pieces the `sparge` subcommands share: workload and option flags, Hilbert reordering of a
// workload, typed copies of its tensors and progress lines. Timing and error metrics are those
// of every test and benchmark: src/workloads/measure.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "args.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"

namespace sparge::cli {

// --workload, --batch, --heads, --kv-heads, --grid, --tokens, --head-dim, --seed.
void add_workload_options(ArgParser& p, const std::string& default_grid,
                          const std::string& default_tokens);
// Builds the workload the flags describe; `workload` overrides --workload when not empty.
workloads::Workload make_workload(const ArgParser& p, const std::string& workload = "");
const std::vector<std::string>& workload_names();  // video, llm, random

// --sim, --cdf, --topk, --pv, --block-q, --block-k, --sink. `sweep` makes --cdf/--topk lists
// (for bench); sparse_options then takes the swept value (cdf, or topk when --topk is given).
void add_sparse_options(ArgParser& p, bool sweep = false);
SparseOptions sparse_options(const ArgParser& p, bool causal, double swept_value = -1.0);

// Reorders the tokens of a grid workload (q, k, v) along hilbert_order; returns the time it
// took in ms. Workloads without a grid are left alone (returns 0).
double apply_hilbert(workloads::Workload& w);

// --dtype float32|bfloat16|float16.
DType dtype_option(const ArgParser& p);

// --quant none|int8_fp8|int8: Stage 2's number format (SparseOptions.quant; the CPU backends
// emulate the GPU's), for the commands that run Stage 2 (demo, bench).
void add_quant_option(ArgParser& p);
QuantMode quant_option(const ArgParser& p);

// A workload's q/k/v (or an output) stored in one dtype, with its views.
struct TypedTensor {
  std::vector<float> f32;
  std::vector<uint16_t> bits;
  TensorView view;
  // A typed copy of the HND fp32 buffer `x` of shape [batch, heads, tokens, dim].
  static TypedTensor from(const std::vector<float>& x, DType dtype, int64_t batch, int64_t heads,
                          int64_t tokens, int64_t dim);
  // An output of that shape filled with NaN, so unwritten elements show.
  static TypedTensor poisoned(DType dtype, int64_t batch, int64_t heads, int64_t tokens,
                              int64_t dim);
  std::vector<float> to_float() const;
};

struct TypedInputs {
  TypedTensor q, k, v;
};
TypedInputs typed_inputs(const workloads::Workload& w, DType dtype);

// Throws std::runtime_error("<what>: <message>") when the status failed.
void check_ok(const Status& s, const std::string& what);

// One progress line on stderr ("[2/5] dense attention ..."), so stdout stays parseable.
void progress(int step, int steps, const std::string& what);

std::string shape_text(const workloads::Workload& w);

}  // namespace sparge::cli
