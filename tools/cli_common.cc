#include "cli_common.h"

#include <chrono>
#include <cstdio>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "common/fp_convert.h"

namespace sparge::cli {
namespace {

double now_ms() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
}

}  // namespace

const std::vector<std::string>& workload_names() {
  static const std::vector<std::string> names = {"video", "llm", "random"};
  return names;
}

void add_workload_options(ArgParser& p, const std::string& default_grid,
                          const std::string& default_tokens) {
  p.add("workload", "NAME", "video",
        "video (smooth T,H,W grid), llm (causal: sinks, windows, retrieval) or random");
  p.add("batch", "B", "1", "batch size");
  p.add("heads", "H", "4", "query heads");
  p.add("kv-heads", "H", "", "key/value heads for llm and random (default: --heads)");
  p.add("grid", "T,H,W", default_grid, "video token grid (frames,height,width)");
  p.add("tokens", "N", default_tokens, "sequence length for llm and random");
  p.add("head-dim", "D", "64", "head dimension");
  p.add("seed", "S", "0", "workload seed");
}

workloads::Workload make_workload(const ArgParser& p, const std::string& workload) {
  const std::string name = workload.empty() ? p.choice("workload", workload_names()) : workload;
  const int64_t batch = p.integer("batch", 1, 64);
  const int64_t heads = p.integer("heads", 1, 128);
  const int64_t kv_heads = p.given("kv-heads") ? p.integer("kv-heads", 1, heads) : heads;
  if (heads % kv_heads != 0)
    throw UsageError("--kv-heads must divide --heads (" + std::to_string(heads) + "), got " +
                     std::to_string(kv_heads));
  const int64_t dim = p.integer("head-dim", 1, 256);
  const uint64_t seed = static_cast<uint64_t>(p.integer("seed", 0, INT64_MAX));
  if (name == "video") {
    const std::vector<int64_t> g = p.int_list("grid", 3, 1, 4096);
    if (g[0] * g[1] * g[2] > (int64_t(1) << 22))
      throw UsageError("--grid must have at most 4194304 tokens, got " +
                       std::to_string(g[0] * g[1] * g[2]));
    return workloads::video_grid(batch, heads, g[0], g[1], g[2], dim, seed);
  }
  const int64_t tokens = p.integer("tokens", 1, int64_t(1) << 22);
  if (name == "llm") return workloads::language_like(batch, heads, kv_heads, tokens, dim, seed);
  return workloads::random_gaussian(batch, heads, kv_heads, tokens, tokens, dim, seed);
}

namespace {

// A default as the help text shows it: the shortest text that reads back as the same float.
std::string number_text(double x) {
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  std::ostringstream os;
  os << static_cast<float>(x);
  return os.str();
}

}  // namespace

// The defaults shown and used here are SparseOptions{}'s (include/sparge/option_list.h).
void add_sparse_options(ArgParser& p, bool sweep) {
  const SparseOptions d;
  p.add("sim", "X", number_text(d.sim_threshold.value),
        "sim_threshold: blocks with self-similarity <= X are always computed");
  const std::string cdf_default =
      d.select == SelectMode::kTopCdf ? number_text(d.select_value.value) : "";
  if (sweep) {
    p.add("cdf", "X,X,..", "0.9,0.95,0.98,0.995", "TopCdf thresholds to sweep");
    p.add("topk", "X,X,..", "", "sweep TopK fractions instead of TopCdf");
  } else {
    p.add("cdf", "X", cdf_default,
          "select TopCdf: keep key blocks until their predicted mass reaches X");
    p.add("topk", "X", "", "select TopK instead: keep a fraction X of the key blocks");
  }
  p.add("estimate", "E", enum_name(d.estimate),
        "where Stage 1's block mass comes from: pooled (block means), sampled_rows (exact "
        "softmax rows) or auto (sampled_rows from a full query block on, else pooled)");
  p.add("sample-rows", "N", std::to_string(d.sample_rows),
        "estimate sampled_rows: query rows sampled per query block, [1, block-q]");
  p.add("target-error", "E", number_text(d.target_error),
        "error target: per head the sparsest TopCdf mass whose estimated rel L1 is <= E "
        "(0 = off; implies --estimate sampled_rows, replaces --cdf)");
  p.add("pv", "L", number_text(d.pv_threshold.value),
        "pv_threshold λ (log2 units; inf = never skip P·V)");
  p.add("block-q", "N", std::to_string(d.block_q), "query block rows");
  p.add("block-k", "N", std::to_string(d.block_k), "key block rows");
  p.add_flag("sink", "always keep key block 0 (attention sink)");
}

SparseOptions sparse_options(const ArgParser& p, bool causal, double swept_value) {
  SparseOptions o;
  o.causal = causal;
  o.sim_threshold.value = static_cast<float>(p.real("sim", -1.0, 1.0));
  const bool topk = p.given("topk");
  if (topk && p.given("cdf") && swept_value < 0)
    throw UsageError("give --cdf or --topk, not both");
  o.select = topk ? SelectMode::kTopK : SelectMode::kTopCdf;
  if (swept_value >= 0)
    o.select_value.value = static_cast<float>(swept_value);
  else
    o.select_value.value = static_cast<float>(p.real(topk ? "topk" : "cdf", 0.0, 1.0, true));
  o.pv_threshold.value =
      static_cast<float>(p.real("pv", 0.0, std::numeric_limits<double>::infinity()));
  const std::vector<std::string> blocks = {"16", "32", "64", "128", "256"};
  o.block_q = std::stoi(p.choice("block-q", blocks));
  o.block_k = std::stoi(p.choice("block-k", blocks));
  o.attention_sink = p.flag("sink");
  const std::string estimate = p.choice("estimate", {enum_name(EstimateMode::kPooled),
                                                     enum_name(EstimateMode::kSampledRows),
                                                     enum_name(EstimateMode::kAuto)});
  parse_enum(estimate.c_str(), &o.estimate);
  o.sample_rows = static_cast<int>(p.integer("sample-rows", 1, o.block_q));
  o.target_error = static_cast<float>(p.real("target-error", 0.0, 1.0));
  if (o.target_error >= 1.0f) throw UsageError("--target-error must be 0 (off) or in (0, 1)");
  if (o.target_error > 0.0f && topk)
    throw UsageError("--target-error chooses a TopCdf mass per head: give it without --topk");
  return o;
}

void add_quant_option(ArgParser& p) {
  p.add("quant", "MODE", enum_name(SparseOptions{}.quant),
        "Stage 2's number format: none (exact), int8_fp8 (INT8 Q·Kᵀ, FP8 P·V) or int8 (INT8 "
        "Q·Kᵀ, P·V at the inputs' precision); the dense baseline stays exact");
}

QuantMode quant_option(const ArgParser& p) {
  QuantMode mode = QuantMode::kNone;
  parse_enum(p.choice("quant", {enum_name(QuantMode::kNone), enum_name(QuantMode::kInt8Fp8),
                                enum_name(QuantMode::kInt8)})
                 .c_str(),
             &mode);
  return mode;
}

DType dtype_option(const ArgParser& p) {
  const std::string s = p.choice("dtype", {"float32", "bfloat16", "float16"});
  if (s == "bfloat16") return DType::kBFloat16;
  if (s == "float16") return DType::kFloat16;
  return DType::kFloat32;
}

double apply_hilbert(workloads::Workload& w) {
  if (w.grid_t == 0) return 0.0;
  const double start = now_ms();
  const std::vector<int64_t> order = hilbert_order(w.grid_t, w.grid_h, w.grid_w);
  const auto reorder = [&](std::vector<float>& x, int64_t heads) {
    std::vector<float> out(x.size());
    const TensorView in = TensorView::contiguous(x.data(), DType::kFloat32, Layout::kHND, w.batch,
                                                 heads, w.seq_q, w.head_dim);
    const TensorView to = TensorView::contiguous(out.data(), DType::kFloat32, Layout::kHND, w.batch,
                                                 heads, w.seq_q, w.head_dim);
    check_ok(permute_tokens(in, to, order.data(), w.seq_q, 0, false), "permute_tokens");
    x.swap(out);
  };
  reorder(w.q, w.heads_q);
  reorder(w.k, w.heads_kv);
  reorder(w.v, w.heads_kv);
  return now_ms() - start;
}

TypedTensor TypedTensor::from(const std::vector<float>& x, DType dtype, int64_t batch,
                              int64_t heads, int64_t tokens, int64_t dim) {
  TypedTensor t;
  void* data = nullptr;
  if (dtype == DType::kFloat32) {
    t.f32 = x;
    data = t.f32.data();
  } else {
    t.bits = workloads::to_half_bits(x, dtype);
    data = t.bits.data();
  }
  t.view = TensorView::contiguous(data, dtype, Layout::kHND, batch, heads, tokens, dim);
  return t;
}

TypedTensor TypedTensor::poisoned(DType dtype, int64_t batch, int64_t heads, int64_t tokens,
                                  int64_t dim) {
  const std::vector<float> nan(static_cast<size_t>(batch * heads * tokens * dim),
                               std::numeric_limits<float>::quiet_NaN());
  return from(nan, dtype, batch, heads, tokens, dim);
}

std::vector<float> TypedTensor::to_float() const {
  if (view.dtype == DType::kFloat32) return f32;
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i)
    out[i] = view.dtype == DType::kBFloat16 ? detail::bf16_bits_to_float(bits[i])
                                            : detail::half_bits_to_float(bits[i]);
  return out;
}

TypedInputs typed_inputs(const workloads::Workload& w, DType dtype) {
  return {TypedTensor::from(w.q, dtype, w.batch, w.heads_q, w.seq_q, w.head_dim),
          TypedTensor::from(w.k, dtype, w.batch, w.heads_kv, w.seq_k, w.head_dim),
          TypedTensor::from(w.v, dtype, w.batch, w.heads_kv, w.seq_k, w.head_dim)};
}

void check_ok(const Status& s, const std::string& what) {
  if (!s.is_ok()) throw std::runtime_error(what + ": " + s.message());
}

void progress(int step, int steps, const std::string& what) {
  std::fprintf(stderr, "[%d/%d] %s\n", step, steps, what.c_str());
  std::fflush(stderr);
}

std::string shape_text(const workloads::Workload& w) {
  std::ostringstream os;
  os << w.name << " B" << w.batch << " Hq" << w.heads_q << " Hkv" << w.heads_kv << " N" << w.seq_q
     << " D" << w.head_dim;
  if (w.grid_t) os << " (grid " << w.grid_t << "x" << w.grid_h << "x" << w.grid_w << ")";
  if (w.causal) os << " causal";
  return os.str();
}

}  // namespace sparge::cli
