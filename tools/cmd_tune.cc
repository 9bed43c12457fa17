// `sparge tune`: the error target's per-head choice on a workload (docs/method.md, "The error
// target"): Stage 1 runs once with --target-error, and each query head reports the TopCdf mass
// it chose (the sparsest of 32, all read from one sorted map), its estimated rel L1 error and
// its sparsity. --out writes them as a tune plan with one layer named after the workload, in the
// JSON format of sparge.TunePlan (python/sparge/tune_plan.py, docs/python.md "Tuning"), which
// sparge.patch_sdpa(plan=...) loads.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "common/error_target.h"
#include "sparge/sparge.h"

namespace sparge::cli {
namespace {

// What the plan of one layer holds, per query head over the batch entries: the largest mass
// chosen, the worst estimate, and the mean sparsity.
struct HeadChoice {
  double cdf = 0.0, error = 0.0, sparsity = 0.0;
};

struct TuneResult {
  std::vector<HeadChoice> heads;
  double sparsity = 0.0;      // of the whole call
  double pv_threshold = 0.0;  // λ as the error-target mode ran it
  int sample_rows = 0;        // rows per query block it read
};

TuneResult tune_workload(workloads::Workload& w, const SparseOptions& opts) {
  const int64_t rows = w.batch * w.heads_q;
  std::vector<float> chosen(static_cast<size_t>(rows)), error(static_cast<size_t>(rows));
  Stage1Stats stats;
  stats.select_value = chosen.data();
  stats.error_estimate = error.data();
  HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  check_ok(predict_block_mask(w.q_view(), w.k_view(), w.v_view(), opts, mask.view(), {}, stats),
           "predict_block_mask");

  const AttentionStats whole = mask_stats(mask.view(), opts);
  const int64_t nq = mask.view().num_q_blocks();
  const double allowed_per_head = double(whole.tiles_dense) / double(rows);  // same every head
  TuneResult r;
  r.sparsity = whole.sparsity();
  r.heads.resize(static_cast<size_t>(w.heads_q));
  for (int64_t b = 0; b < w.batch; ++b) {
    for (int64_t h = 0; h < w.heads_q; ++h) {
      HeadChoice& c = r.heads[static_cast<size_t>(h)];
      const size_t bh = static_cast<size_t>(b * w.heads_q + h);
      c.cdf = std::max(c.cdf, double(chosen[bh]));
      // A NaN estimate (NaN inputs: the head kept every tile) counts as the worst.
      c.error = std::isnan(error[bh]) ? std::numeric_limits<double>::infinity()
                                      : std::max(c.error, double(error[bh]));
      int64_t kept = 0;
      for (int64_t i = 0; i < nq; ++i) kept += mask.counts[mask.view().row(b, h, i)];
      const double head_sparsity = allowed_per_head ? 1.0 - kept / allowed_per_head : 0.0;
      c.sparsity += head_sparsity / double(w.batch);
    }
  }
  // The options the mode ran with (src/common/dispatch.cc): its λ floor and sampled rows.
  r.pv_threshold = std::max<double>(
      opts.pv_threshold.value, detail::error_target_min_pv_threshold(opts.target_error, w.seq_k));
  r.sample_rows = std::max(opts.sample_rows, std::min(detail::kErrorTargetMinRows, opts.block_q));
  return r;
}

// A JSON number; the plan writes λ = inf as the string "inf" and an unknown estimate as null.
std::string json_number(double x) {
  if (std::isinf(x) && x > 0) return "\"inf\"";
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", x);  // 9 digits: a float32 reads back exactly
  return buf;
}

std::string json_list(const std::vector<HeadChoice>& heads, double HeadChoice::*field) {
  std::string s = "[";
  for (size_t h = 0; h < heads.size(); ++h) s += (h ? ", " : "") + json_number(heads[h].*field);
  return s + "]";
}

void write_plan(const std::string& path, const std::string& layer, double target_error,
                double sim_threshold, const SparseOptions& opts, const TuneResult& r) {
  std::ofstream out(path);
  if (!out) throw UsageError("--out '" + path + "' cannot be written");
  out << "{\"format\": \"sparge-tune-plan\", \"version\": 1,\n"
      << " \"target_error\": " << json_number(target_error) << ",\n"
      << " \"options\": {\"estimate\": \"sampled_rows\", \"sample_rows\": " << r.sample_rows
      << ", \"sim_threshold\": " << json_number(sim_threshold) << ", \"block_q\": " << opts.block_q
      << ", \"block_k\": " << opts.block_k
      << ", \"attention_sink\": " << (opts.attention_sink ? "true" : "false") << "},\n"
      << " \"layers\": {\"" << layer
      << "\": {\"cdf_threshold\": " << json_list(r.heads, &HeadChoice::cdf)
      << ",\n   \"pv_threshold\": " << json_number(r.pv_threshold)
      << ", \"calls\": 1, \"error_estimate\": " << json_list(r.heads, &HeadChoice::error)
      << ", \"sparsity\": " << json_number(r.sparsity) << "}},\n"
      << " \"fallbacks\": {}}\n";
  if (!out) throw std::runtime_error("writing " + path + " failed");
}

}  // namespace

int run_tune(int argc, char** argv) {
  ArgParser p("sparge tune",
              "Runs Stage 1 with the error target on a workload and prints per query head the\n"
              "TopCdf mass it chose (the sparsest whose estimated rel L1 error is within\n"
              "--target-error, which is required here), that estimate and the head's sparsity.\n"
              "--out writes them as a sparge.TunePlan JSON file with one layer named after the\n"
              "workload. Video tokens are put in Hilbert order unless --no-hilbert.");
  add_workload_options(p, "8,16,16", "2048");
  add_sparse_options(p);
  p.add("out", "PATH", "", "write the plan (JSON, sparge.TunePlan's format) to PATH");
  p.add_flag("no-hilbert", "keep video tokens in row-major order");
  if (!p.parse(argc, argv, 2)) {
    std::printf("%s", p.help().c_str());
    return 0;
  }
  workloads::Workload w = make_workload(p);
  const SparseOptions opts = sparse_options(p, w.causal);
  if (!p.given("target-error") || opts.target_error <= 0.0f)
    throw UsageError(
        "--target-error E in (0, 1) is required: the error bound the heads are "
        "tuned against");
  const bool hilbert = w.grid_t > 0 && !p.flag("no-hilbert");
  if (hilbert) apply_hilbert(w);

  progress(1, 1, "Stage 1 with the error target");
  const TuneResult r = tune_workload(w, opts);
  std::printf("%s%s, target rel L1 %g, sim_threshold %g, %d sampled rows per query block\n",
              shape_text(w).c_str(), hilbert ? ", Hilbert order" : "", p.real("target-error", 0, 1),
              opts.sim_threshold.value, r.sample_rows);
  for (size_t h = 0; h < r.heads.size(); ++h)
    std::printf("head %zu: TopCdf %.4f  est. rel L1 %.4f  sparsity %.3f\n", h, r.heads[h].cdf,
                r.heads[h].error, r.heads[h].sparsity);
  std::printf("all heads: sparsity %.3f, pv_threshold %.2f\n", r.sparsity, r.pv_threshold);
  if (p.given("out")) {
    write_plan(p.str("out"), w.name, p.real("target-error", 0, 1), p.real("sim", -1, 1), opts, r);
    std::printf("wrote %s (layer '%s')\n", p.str("out").c_str(), w.name.c_str());
  }
  return 0;
}

}  // namespace sparge::cli
