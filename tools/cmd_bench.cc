// `sparge bench`: CPU timing of dense vs sparse attention (fast CPU backend) over workloads and
// a sweep of TopCdf (or TopK) thresholds; medians of repeated runs, one line per case, and
// optionally JSON Lines in the format of docs/bench-schema.md.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "workloads/measure.h"

namespace sparge::cli {
namespace {

// First line of a shell command's output, or "" when it fails.
std::string command_output(const char* cmd) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> pipe(popen(cmd, "r"), pclose);
  if (!pipe) return "";
  char buf[256];
  std::string out;
  if (std::fgets(buf, sizeof(buf), pipe.get())) out = buf;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown cpu";
}

std::string git_commit() {
  std::string c = command_output("git rev-parse --short HEAD 2>/dev/null");
  if (c.empty()) return "unknown";
  if (!command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty())
    c += "-dirty";
  return c;
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream os;
  os.precision(6);
  os << x;
  return os.str();
}

struct Record {
  std::string impl, setting;
  double sparsity = 0, ms = 0, rel_l1 = NAN, cos_sim = NAN, pv_skip = 0, stage1_ms = NAN;
};

}  // namespace

int run_bench(int argc, char** argv) {
  ArgParser p("sparge bench",
              "Times dense and sparse attention on the fast CPU backend for each workload and\n"
              "each threshold of the sweep (median of --repeats runs after a warm-up) and\n"
              "prints one line per case. Errors are against float64 full attention.");
  add_workload_options(p, "8,16,16", "2048");
  p.add("workloads", "LIST", "video,llm", "comma-separated workloads to run (video, llm, random)");
  add_sparse_options(p, true);
  add_quant_option(p);
  p.add("dtype", "T", "float32", "float32, bfloat16 or float16 inputs");
  p.add("threads", "N", "0", "CPU threads (0 = OpenMP default)");
  p.add("repeats", "N", "5", "timed runs per case (median)");
  p.add("jsonl", "FILE", "", "also append one JSON object per case to FILE");
  p.add_flag("no-hilbert", "keep video tokens in row-major order");
  if (!p.parse(argc, argv, 2)) {
    std::printf("%s", p.help().c_str());
    return 0;
  }
  std::vector<std::string> names;
  {
    std::istringstream in(p.str("workloads"));
    for (std::string s; std::getline(in, s, ',');) {
      bool known = false;
      for (const std::string& n : workload_names()) known = known || n == s;
      if (!known)
        throw UsageError("--workloads must list names from video, llm, random, got '" + s + "'");
      names.push_back(s);
    }
  }
  const bool topk = p.given("topk");
  const std::vector<double> sweep =
      topk ? p.real_list("topk", 0.0, 1.0, true) : p.real_list("cdf", 0.0, 1.0, true);
  const DType dtype = dtype_option(p);
  const QuantMode quant = quant_option(p);
  const int repeats = static_cast<int>(p.integer("repeats", 1, 1000));
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  ctx.num_threads = static_cast<int>(p.integer("threads", 0, 1024));
  std::ofstream jsonl;
  if (p.given("jsonl")) {
    jsonl.open(p.str("jsonl"), std::ios::app);
    if (!jsonl) throw UsageError("--jsonl: cannot open '" + p.str("jsonl") + "' for appending");
  }
  const std::string date = today(), device = cpu_model(), commit = git_commit();
  const int threads_used = ctx.num_threads > 0 ? ctx.num_threads : omp_get_max_threads();

  int step = 0;
  const int steps = static_cast<int>(names.size() * (2 + sweep.size()));
  for (const std::string& name : names) {
    workloads::Workload w = make_workload(p, name);
    const bool hilbert = w.grid_t > 0 && !p.flag("no-hilbert");
    if (hilbert) apply_hilbert(w);
    TypedInputs in = typed_inputs(w, dtype);
    const SparseOptions base = sparse_options(p, w.causal, sweep[0]);
    progress(++step, steps, w.name + ": float64 reference");
    const std::vector<double> ref = cpu::dense_attention_reference(
        in.q.view, in.k.view, in.v.view, 1.0f / std::sqrt(float(w.head_dim)), w.causal,
        base.causal_align);

    std::vector<Record> records;
    progress(++step, steps, w.name + ": dense");
    {
      HostBlockMask dense(w.batch, w.heads_q, w.seq_q, w.seq_k, base.block_q, base.block_k);
      check_ok(fill_dense_mask(dense.view(), w.causal, base.causal_align), "fill_dense_mask");
      TypedTensor o = TypedTensor::poisoned(dtype, w.batch, w.heads_q, w.seq_q, w.head_dim);
      Record r{"dense-cpu", "all tiles"};
      SparseOptions dense_opts = base;  // full attention: no P·V skipping either
      dense_opts.pv_threshold = HeadParam{std::numeric_limits<float>::infinity()};
      r.ms = measure::median_ms(
          [&] {
            check_ok(block_sparse_attention(in.q.view, in.k.view, in.v.view, dense.view(),
                                            dense_opts, o.view, {}, ctx),
                     "dense attention");
          },
          repeats);
      r.rel_l1 = measure::rel_l1(o.to_float(), ref);
      r.cos_sim = measure::cosine(o.to_float(), ref);
      records.push_back(r);
    }
    for (double value : sweep) {
      SparseOptions opts = sparse_options(p, w.causal, value);
      opts.quant = quant;
      std::ostringstream setting;
      if (opts.target_error > 0.0f)  // the mode replaces the swept TopCdf mass
        setting << "target_error " << opts.target_error;
      else
        setting << (topk ? "topk " : "cdf ") << value;
      if (quant != QuantMode::kNone) setting << " " << enum_name(quant);
      progress(++step, steps, w.name + ": sparse, " + setting.str());
      HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
      TypedTensor o = TypedTensor::poisoned(dtype, w.batch, w.heads_q, w.seq_q, w.head_dim);
      std::vector<unsigned long long> counters(static_cast<size_t>(2 * w.heads_q), 0);
      AttentionExtras extras;
      extras.pv_counters = counters.data();
      check_ok(sparse_attention(in.q.view, in.k.view, in.v.view, opts, o.view, extras, ctx,
                                &mask.view()),
               "sparse_attention");
      Record r{quant == QuantMode::kNone ? "sparge-cpu" : "sparge-cpu-quant", setting.str()};
      r.ms = measure::median_ms(
          [&] {
            check_ok(sparse_attention(in.q.view, in.k.view, in.v.view, opts, o.view, {}, ctx,
                                      &mask.view()),
                     "sparse_attention");
          },
          repeats);
      r.stage1_ms = measure::median_ms(
          [&] {
            check_ok(predict_block_mask(in.q.view, in.k.view, in.v.view, opts, mask.view(), ctx),
                     "predict_block_mask");
          },
          repeats);
      AttentionStats st = mask_stats(mask.view(), w.causal, opts.causal_align);
      for (int64_t h = 0; h < w.heads_q; ++h) {
        st.pv_visited += counters[2 * h];
        st.pv_skipped += counters[2 * h + 1];
      }
      r.sparsity = st.sparsity();
      r.pv_skip = st.pv_skip_fraction();
      r.rel_l1 = measure::rel_l1(o.to_float(), ref);
      r.cos_sim = measure::cosine(o.to_float(), ref);
      records.push_back(r);
    }

    const SparseOptions shown = sparse_options(p, w.causal, 0.5);
    const double target_error = shown.target_error, sim_threshold = shown.sim_threshold.value;
    const char* estimate = shown.target_error > 0.0f ? "sampled_rows" : enum_name(shown.estimate);
    const double dense_ms = records[0].ms;
    const double work = 4.0 * double(w.batch * w.heads_q) * double(w.seq_q) * double(w.seq_k) *
                        double(w.head_dim) * (w.causal ? 0.5 : 1.0);
    for (const Record& r : records) {
      std::printf(
          "%-10s %-28s %-10s %-10s sparsity %.3f  %9.2f ms  speedup %5.2fx  "
          "rel_l1 %.3e  cos %.6f\n",
          w.name.c_str(), shape_text(w).substr(w.name.size() + 1).c_str(), r.impl.c_str(),
          r.setting.c_str(), r.sparsity, r.ms, dense_ms / r.ms, r.rel_l1, r.cos_sim);
      if (!jsonl.is_open()) continue;
      jsonl << "{\"date\": \"" << date << "\", \"device\": \"" << json_escape(device)
            << "\", \"commit\": \"" << commit << "\", \"impl\": \"" << r.impl
            << "\", \"workload\": \"" << w.name << "\", \"dtype\": \"" << dtype_name(dtype)
            << "\", \"head_dim\": " << w.head_dim << ", \"batch\": " << w.batch
            << ", \"heads_q\": " << w.heads_q << ", \"heads_kv\": " << w.heads_kv
            << ", \"seq_q\": " << w.seq_q << ", \"seq_k\": " << w.seq_k
            << ", \"causal\": " << (w.causal ? "true" : "false")
            << ", \"sparsity\": " << json_number(r.sparsity) << ", \"ms\": " << json_number(r.ms)
            << ", \"tops\": " << json_number(work / (r.ms * 1e-3) / 1e12)
            << ", \"rel_l1\": " << json_number(r.rel_l1)
            << ", \"cos_sim\": " << json_number(r.cos_sim) << ", \"setting\": \"" << r.setting
            << "\", \"stage1_ms\": " << json_number(r.stage1_ms)
            << ", \"pv_skip_fraction\": " << json_number(r.pv_skip)
            << ", \"target_error\": " << json_number(r.impl == "dense-cpu" ? NAN : target_error)
            << ", \"sim_threshold\": " << json_number(sim_threshold)
            << ", \"estimate\": \"" << estimate << "\""
            << ", \"quant\": \"" << (r.impl == "dense-cpu" ? "none" : enum_name(quant)) << "\""
            << ", \"threads\": " << threads_used
            << ", \"hilbert\": " << (hilbert ? "true" : "false") << "}\n";
    }
  }
  return 0;
}

}  // namespace sparge::cli
