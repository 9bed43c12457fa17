// End-to-end error of the quantized modes on the CPU (issue 10): rel L1 and cosine of quantized
// dense attention (nothing skipped: every tile kept, λ = ∞) against the fp32 attention of the
// same bf16 inputs, on the random, video-grid and llm-like workloads. By default kInt8Fp8 at
// several scale granularities, with parts of it exact; with --modes, the two modes (kInt8Fp8,
// kInt8) at the granularity every backend uses.
// The quantization is the emulation of src/cpu/quantize.cc (what the GPU pass reproduces bit for
// bit), the attention the fast CPU backend on those codes. One JSON line per case on stdout
// (docs/bench-schema.md, impl "sparge-quant-cpu", with q_rows/k_rows: rows per Q / K scale).
// Usage: quant_error DEVICE COMMIT [--modes] [N ...]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "common/backend.h"
#include "common/fp_convert.h"
#include "cpu/quantize.h"
#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "workloads/measure.h"

namespace {

using sparge::detail::QuantGranularity;

// (q_rows, k_rows): per block (the official SpargeAttn/SageAttention1 granularity of 128-row Q
// and 64-row K blocks), per warp of Q (16 rows), per token of Q, and finer K.
const QuantGranularity kGranularities[] = {{128, 64}, {16, 64}, {1, 64}, {16, 16}, {1, 16}, {1, 1}};
constexpr int kCases = sizeof(kGranularities) / sizeof(kGranularities[0]);

std::vector<float> round_bf16(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  const std::vector<uint16_t> bits = sparge::workloads::to_half_bits(x, sparge::DType::kBFloat16);
  for (size_t i = 0; i < x.size(); ++i) out[i] = sparge::detail::bf16_bits_to_float(bits[i]);
  return out;
}

// One JSON line (docs/bench-schema.md); `quantized` says what was quantized: "all" / "qk" / "v"
// (parts of kInt8Fp8) or a mode's name.
void print(const sparge::workloads::Workload& w, const char* device, const char* commit,
           const std::string& date, double rel_l1, double cos_sim, const QuantGranularity& g,
           const char* quantized) {
  std::printf(
      "{\"date\": \"%s\", \"device\": \"%s\", \"commit\": \"%s\", \"impl\": \"sparge-quant-cpu\", "
      "\"workload\": \"%s\", \"dtype\": \"bf16\", \"head_dim\": %lld, \"batch\": %lld, "
      "\"heads_q\": %lld, \"heads_kv\": %lld, \"seq_q\": %lld, \"seq_k\": %lld, "
      "\"causal\": false, \"sparsity\": 0.0, \"ms\": null, \"tops\": null, \"rel_l1\": %.6f, "
      "\"cos_sim\": %.8f, \"q_rows\": %d, \"k_rows\": %d, \"quantized\": \"%s\", "
      "\"reference\": \"fp32 attention of the bf16 inputs\"}\n",
      date.c_str(), device, commit, w.name.c_str(), (long long)w.head_dim, (long long)w.batch,
      (long long)w.heads_q, (long long)w.heads_kv, (long long)w.seq_q, (long long)w.seq_k, rel_l1,
      cos_sim, g.q_rows, g.k_rows, quantized);
  std::fflush(stdout);
}

void run_case(sparge::workloads::Workload w, const char* device, const char* commit,
              const std::string& date, bool modes_only) {
  // The values the GPU would read: bf16 inputs, widened exactly to fp32.
  w.q = round_bf16(w.q);
  w.k = round_bf16(w.k);
  w.v = round_bf16(w.v);
  const sparge::TensorView q = w.q_view(), k = w.k_view(), v = w.v_view();
  sparge::SparseOptions opts;
  opts.pv_threshold = {INFINITY};  // nothing skipped
  const sparge::ProblemShape shape = sparge::problem_shape(q, k);
  const float scale = 1.0f / std::sqrt(float(w.head_dim));
  sparge::HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  sparge::check(sparge::fill_dense_mask(mask.view(), false, sparge::CausalAlign::kTopLeft));

  const int64_t n_out = w.batch * w.heads_q * w.seq_q * w.head_dim;
  std::vector<float> exact(n_out), quant(n_out);
  auto out_view = [&](std::vector<float>& o) {
    return sparge::TensorView::contiguous(o.data(), sparge::DType::kFloat32, sparge::Layout::kHND,
                                          w.batch, w.heads_q, w.seq_q, w.head_dim);
  };
  sparge::detail::Problem p{q, k, v, shape, opts, scale};
  sparge::check(sparge::cpu::attention_fast_with(p, mask.view(), out_view(exact), {}, 0, nullptr));
  if (modes_only) {  // the two modes at the default granularity, whole calls
    for (const sparge::QuantMode mode : {sparge::QuantMode::kInt8Fp8, sparge::QuantMode::kInt8}) {
      sparge::detail::Problem pm = p;
      pm.opts.quant = mode;
      sparge::check(sparge::cpu::attention_fast(pm, mask.view(), out_view(quant), {}, 0));
      print(w, device, commit, date, sparge::measure::rel_l1(quant, exact),
            sparge::measure::cosine(quant, exact), QuantGranularity{},
            sparge::enum_name(mode));
    }
    return;
  }
  p.opts.quant = sparge::QuantMode::kInt8Fp8;
  // Each granularity with everything quantized ("all") and with INT8 Q/K but exact V ("qk"),
  // then exact Q/K with the FP8 V ("v"; does not depend on the granularity).
  for (int i = 0; i < 2 * kCases + 1; ++i) {
    const bool qk_only = i % 2 == 1 && i < 2 * kCases, v_only = i == 2 * kCases;
    const QuantGranularity g = i < 2 * kCases ? kGranularities[i / 2] : QuantGranularity{};
    sparge::cpu::QuantizedInputs qi = sparge::cpu::quantize_inputs(p, g);
    const char* part = qk_only ? "qk" : v_only ? "v" : "all";
    if (qk_only) qi.v = w.v;
    if (v_only) {
      sparge::detail::Problem pv = p;
      pv.opts.quant = sparge::QuantMode::kNone;
      pv.v = sparge::TensorView::contiguous(qi.v.data(), sparge::DType::kFloat32,
                                            sparge::Layout::kHND, w.batch, w.heads_kv, w.seq_k,
                                            w.head_dim);
      sparge::check(
          sparge::cpu::attention_fast_with(pv, mask.view(), out_view(quant), {}, 0, nullptr));
    } else {
      sparge::check(
          sparge::cpu::attention_fast_with(p, mask.view(), out_view(quant), {}, 0, &qi));
    }
    print(w, device, commit, date, sparge::measure::rel_l1(quant, exact),
          sparge::measure::cosine(quant, exact), g, part);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s DEVICE COMMIT [--modes] [N ...]\n", argv[0]);
    return 2;
  }
  std::vector<long> lengths;
  bool modes_only = false;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--modes") modes_only = true;
    else lengths.push_back(std::atol(argv[i]));
  }
  if (lengths.empty()) lengths = {4096, 8192, 16384};
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::localtime(&now));
  const int64_t D = 128, heads = 2;
  for (long n : lengths) {
    run_case(sparge::workloads::random_gaussian(1, heads, heads, n, n, D, 7), argv[1], argv[2],
             date, modes_only);
    // Frames of 32×32 tokens in natural (t, y, x) order.
    run_case(sparge::workloads::video_grid(1, heads, n / 1024, 32, 32, D, 7), argv[1], argv[2],
             date, modes_only);
    // Sinks and retrieval keys: rows and keys of very different sizes (run without causality).
    run_case(sparge::workloads::language_like(1, heads, heads, n, D, 7), argv[1], argv[2], date,
             modes_only);
  }
  return 0;
}
