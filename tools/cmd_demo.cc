// `sparge demo`: one workload, dense vs sparse attention on the fast CPU backend.
// Dense = the same backend with every (causally allowed) tile kept; sparse = sparse_attention
// (Stage 1 prediction + Stage 2). Accuracy of both against float64 full attention.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "cpu/reference.h"
#include "sparge/sparge.h"
#include "workloads/measure.h"

namespace sparge::cli {

int run_demo(int argc, char** argv) {
  ArgParser p("sparge demo",
              "Runs dense and SpargeAttn sparse attention on one workload with the fast CPU\n"
              "backend and prints times, speedup, sparsity, P·V skips and the error of both\n"
              "against float64 full attention. Video tokens are put in Hilbert order first.");
  add_workload_options(p, "8,24,32", "4096");
  add_sparse_options(p);
  add_quant_option(p);
  p.add("dtype", "T", "float32", "float32, bfloat16 or float16 inputs");
  p.add("threads", "N", "0", "CPU threads (0 = OpenMP default)");
  p.add("repeats", "N", "3", "timed runs per measurement (median)");
  p.add_flag("no-hilbert", "keep video tokens in row-major order");
  if (!p.parse(argc, argv, 2)) {
    std::printf("%s", p.help().c_str());
    return 0;
  }
  const DType dtype = dtype_option(p);
  const int threads = static_cast<int>(p.integer("threads", 0, 1024));
  const int repeats = static_cast<int>(p.integer("repeats", 1, 100));
  const int steps = 5;

  progress(1, steps, "generating the workload");
  workloads::Workload w = make_workload(p);
  SparseOptions opts = sparse_options(p, w.causal);
  opts.quant = quant_option(p);
  const bool hilbert = w.grid_t > 0 && !p.flag("no-hilbert");
  const double permute_ms = hilbert ? apply_hilbert(w) : 0.0;
  TypedInputs in = typed_inputs(w, dtype);
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  ctx.num_threads = threads;

  progress(2, steps, "dense attention (all tiles)");
  HostBlockMask dense_mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  check_ok(fill_dense_mask(dense_mask.view(), opts.causal, opts.causal_align), "fill_dense_mask");
  TypedTensor dense_out = TypedTensor::poisoned(dtype, w.batch, w.heads_q, w.seq_q, w.head_dim);
  SparseOptions dense_opts = opts;  // full attention: no P·V skipping, exact numbers
  dense_opts.pv_threshold = HeadParam{std::numeric_limits<float>::infinity()};
  dense_opts.quant = QuantMode::kNone;
  const double dense_ms = measure::median_ms(
      [&] {
        check_ok(block_sparse_attention(in.q.view, in.k.view, in.v.view, dense_mask.view(),
                                        dense_opts, dense_out.view, {}, ctx),
                 "dense attention");
      },
      repeats);

  progress(3, steps, "sparse attention (prediction + attention)");
  HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  TypedTensor sparse_out = TypedTensor::poisoned(dtype, w.batch, w.heads_q, w.seq_q, w.head_dim);
  std::vector<unsigned long long> counters(static_cast<size_t>(2 * w.heads_q), 0);
  AttentionExtras extras;
  extras.pv_counters = counters.data();
  // One counted run (the counters accumulate), then timed runs without them.
  check_ok(sparse_attention(in.q.view, in.k.view, in.v.view, opts, sparse_out.view, extras, ctx,
                            &mask.view()),
           "sparse_attention");
  const double sparse_ms = measure::median_ms(
      [&] {
        check_ok(sparse_attention(in.q.view, in.k.view, in.v.view, opts, sparse_out.view, {}, ctx,
                                  &mask.view()),
                 "sparse_attention");
      },
      repeats);
  const double predict_ms = measure::median_ms(
      [&] {
        check_ok(predict_block_mask(in.q.view, in.k.view, in.v.view, opts, mask.view(), ctx),
                 "predict_block_mask");
      },
      repeats);

  progress(4, steps, "float64 full attention (reference)");
  const std::vector<double> ref = cpu::dense_attention_reference(
      in.q.view, in.k.view, in.v.view, 1.0f / std::sqrt(float(w.head_dim)), opts.causal,
      opts.causal_align);
  progress(5, steps, "done");

  AttentionStats stats = mask_stats(mask.view(), opts.causal, opts.causal_align);
  for (int64_t h = 0; h < w.heads_q; ++h) {
    stats.pv_visited += counters[2 * h];
    stats.pv_skipped += counters[2 * h + 1];
  }
  const std::vector<float> sparse_f = sparse_out.to_float(), dense_f = dense_out.to_float();
  std::printf("workload   %s, %s, %s order\n", shape_text(w).c_str(), dtype_name(dtype),
              hilbert ? "Hilbert" : (w.grid_t ? "row-major" : "sequence"));
  if (hilbert) std::printf("permute    %.1f ms (Hilbert reorder of q, k, v)\n", permute_ms);
  std::printf("dense      %.1f ms   (fast CPU backend, %lld tiles)\n", dense_ms,
              static_cast<long long>(stats.tiles_dense));
  std::printf("sparse     %.1f ms   (prediction %.1f ms + attention%s%s)\n", sparse_ms, predict_ms,
              opts.quant == QuantMode::kNone ? "" : ", quant ",
              opts.quant == QuantMode::kNone ? "" : enum_name(opts.quant));
  std::printf("speedup    %.2fx\n", dense_ms / sparse_ms);
  std::printf("sparsity   %.3f   (%lld of %lld tiles computed)\n", stats.sparsity(),
              static_cast<long long>(stats.tiles_computed),
              static_cast<long long>(stats.tiles_dense));
  std::printf("PV skip    %.4f   (%llu of %llu row-group tiles, λ = %g)\n",
              stats.pv_skip_fraction(), stats.pv_skipped, stats.pv_visited,
              double(opts.pv_threshold.value));
  std::printf("accuracy   sparse: rel L1 %.3e, cosine %.6f   dense: rel L1 %.3e, cosine %.6f\n",
              measure::rel_l1(sparse_f, ref), measure::cosine(sparse_f, ref),
              measure::rel_l1(dense_f, ref), measure::cosine(dense_f, ref));
  return 0;
}

}  // namespace sparge::cli
