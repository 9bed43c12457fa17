// Stage 1's cost against dense attention on the fast CPU backend (issue 11: the error target's
// Stage 1 should cost a small fraction of dense attention). For each workload and length: the
// median time of dense attention (every allowed tile, λ = ∞), of predict_block_mask with the
// given options, and of the whole sparse_attention call; one JSON line per case on stdout
// (docs/bench-schema.md, impl "sparge-cpu", with dense_ms, stage1_ms, stage1_fraction).
// Usage: stage1_cost DEVICE COMMIT [--target E] [--sim S] [--heads H] [--dim D] [--repeats R]
//                    [--threads T] [--cpu-time] [--cdf C] [--sample-rows R]
//                    [--workloads video,video-hilbert,llm,random] N [N ...]
// --target 0 runs TopCdf with --cdf instead of the error target; --sample-rows R > 0 makes that
// TopCdf's estimate sampled_rows with R rows per block (0: pooled). rel_l1 is against the fast
// backend's dense fp32 output (the double reference would dominate the run at 32K tokens).
// --cpu-time times the process's CPU time instead of the wall clock (with OMP_NUM_THREADS=1 and
// --threads 1: the work of one core, whatever else runs on a shared machine).
// The video workload is a (N/256, 16, 16) grid; "video-hilbert" is the same in Hilbert order.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "sparge/sparge.h"
#include "sparge/workloads.h"
#include "workloads/measure.h"

namespace {

using namespace sparge;

void to_hilbert(workloads::Workload& w) {
  const std::vector<int64_t> order = hilbert_order(w.grid_t, w.grid_h, w.grid_w);
  for (std::vector<float>* t : {&w.q, &w.k, &w.v}) {
    const int64_t heads = t == &w.q ? w.heads_q : w.heads_kv;
    std::vector<float> src = *t;
    const int64_t N = w.seq_q, D = w.head_dim;
    for (int64_t h = 0; h < w.batch * heads; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t d = 0; d < D; ++d) (*t)[(h * N + i) * D + d] = src[(h * N + order[i]) * D + d];
  }
}

// Median over `repeats` runs (after one warm-up) of the process's CPU time in ms: on a shared
// machine, with one thread, this counts the work and not the waits for a core.
double median_cpu_ms(const std::function<void()>& fn, int repeats) {
  fn();
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    fn();
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    ms.push_back((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) * 1e-6);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

workloads::Workload make(const std::string& name, int64_t heads, int64_t n, int64_t dim) {
  if (name == "llm") return workloads::language_like(1, heads, heads / 2, n, dim, 5);
  if (name == "random") return workloads::random_gaussian(1, heads, heads, n, n, dim, 6);
  workloads::Workload w = workloads::video_grid(1, heads, n / 256, 16, 16, dim, 3);
  if (name == "video-hilbert") to_hilbert(w);
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(
        stderr,
        "usage: %s DEVICE COMMIT [--target E] [--sim S] [--heads H] [--dim D] "
        "[--repeats R] [--threads T] [--cpu-time] [--cdf C] [--sample-rows R] [--workloads LIST] "
        "N [N ...]\n",
        argv[0]);
    return 2;
  }
  const std::string device = argv[1], commit = argv[2];
  double target = 0.02, sim = -1.0, cdf = 0.98;
  int64_t heads = 4, dim = 64;
  int repeats = 3, threads = 0, sample_rows = 0;
  bool cpu_time = false;
  std::string only = "video,video-hilbert,llm,random";
  std::vector<int64_t> lengths;
  for (int a = 3; a < argc; ++a) {
    const std::string arg = argv[a];
    const auto next = [&]() -> const char* {
      if (a + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++a];
    };
    if (arg == "--target")
      target = std::atof(next());
    else if (arg == "--cdf")
      cdf = std::atof(next());
    else if (arg == "--sample-rows")
      sample_rows = std::atoi(next());
    else if (arg == "--sim")
      sim = std::atof(next());
    else if (arg == "--heads")
      heads = std::atoll(next());
    else if (arg == "--dim")
      dim = std::atoll(next());
    else if (arg == "--repeats")
      repeats = std::atoi(next());
    else if (arg == "--threads")
      threads = std::atoi(next());
    else if (arg == "--cpu-time")
      cpu_time = true;
    else if (arg == "--workloads")
      only = next();
    else
      lengths.push_back(std::atoll(arg.c_str()));
  }
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  const auto time_ms = [&](const std::function<void()>& fn) {
    return cpu_time ? median_cpu_ms(fn, repeats) : measure::median_ms(fn, repeats);
  };
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  ctx.num_threads = threads;
  for (int64_t n : lengths)
    for (const std::string name : {"video", "video-hilbert", "llm", "random"}) {
      if (("," + only + ",").find("," + name + ",") == std::string::npos) continue;
      workloads::Workload w = make(name, heads, n, dim);
      SparseOptions opts;
      opts.causal = w.causal;
      opts.target_error = float(target);
      opts.sim_threshold = HeadParam{float(sim)};
      opts.select_value = HeadParam{float(cdf)};
      if (sample_rows > 0) {
        opts.estimate = EstimateMode::kSampledRows;
        opts.sample_rows = sample_rows;
      }
      std::vector<float> o(w.q.size());
      const TensorView ov = TensorView::contiguous(o.data(), DType::kFloat32, Layout::kHND, w.batch,
                                                   w.heads_q, w.seq_q, w.head_dim);
      HostBlockMask full(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
      HostBlockMask mask = full;
      check(fill_dense_mask(full.view(), opts));
      SparseOptions dense_opts = opts;
      dense_opts.pv_threshold = HeadParam{std::numeric_limits<float>::infinity()};
      const double dense_ms = time_ms([&] {
        check(block_sparse_attention(w.q_view(), w.k_view(), w.v_view(), full.view(), dense_opts,
                                     ov, {}, ctx));
      });
      const double stage1_ms = time_ms([&] {
        check(predict_block_mask(w.q_view(), w.k_view(), w.v_view(), opts, mask.view(), ctx));
      });
      const double total_ms = time_ms([&] {
        check(
            sparse_attention(w.q_view(), w.k_view(), w.v_view(), opts, ov, {}, ctx, &mask.view()));
      });
      std::vector<float> dense_o(w.q.size());
      const TensorView dv = TensorView::contiguous(dense_o.data(), DType::kFloat32, Layout::kHND,
                                                   w.batch, w.heads_q, w.seq_q, w.head_dim);
      check(block_sparse_attention(w.q_view(), w.k_view(), w.v_view(), full.view(), dense_opts, dv,
                                   {}, ctx));
      std::vector<int64_t> forced(w.heads_q);
      AttentionExtras extras;
      extras.stage1.forced_tiles = forced.data();
      check(sparse_attention(w.q_view(), w.k_view(), w.v_view(), opts, ov, extras, ctx,
                             &mask.view()));
      const std::vector<double> ref(dense_o.begin(), dense_o.end());
      const double rel_l1 = measure::rel_l1(o, ref);
      const AttentionStats st = mask_stats(mask.view(), w.causal, opts.causal_align);
      double forced_fraction = 0.0;
      for (int64_t f : forced) forced_fraction += double(f);
      forced_fraction /= double(st.tiles_dense);
      const double work =
          4.0 * double(heads) * double(n) * double(n) * double(dim) * (w.causal ? 0.5 : 1.0);
      std::printf(
          "{\"date\": \"%s\", \"device\": \"%s\", \"commit\": \"%s\", \"impl\": \"sparge-cpu\", "
          "\"workload\": \"%s\", \"dtype\": \"float32\", \"head_dim\": %ld, \"batch\": 1, "
          "\"heads_q\": %ld, \"heads_kv\": %ld, \"seq_q\": %ld, \"seq_k\": %ld, \"causal\": %s, "
          "\"sparsity\": %.4f, \"ms\": %.3f, \"tops\": %.5f, \"rel_l1\": %.5f, \"cos_sim\": null, "
          "\"target_error\": %g, \"sim_threshold\": %g, \"cdf_threshold\": %g, \"sample_rows\": %d, "
          "\"forced_fraction\": %.4f, \"dense_ms\": %.3f, \"stage1_ms\": %.3f, "
          "\"stage1_fraction\": %.4f, \"threads\": %d, \"timing\": \"%s\"}\n",
          date, device.c_str(), commit.c_str(), name.c_str(), long(dim), long(heads),
          long(w.heads_kv), long(n), long(n), w.causal ? "true" : "false", st.sparsity(), total_ms,
          work / (total_ms * 1e-3) / 1e12, rel_l1, target, sim, cdf, sample_rows, forced_fraction, dense_ms,
          stage1_ms, stage1_ms / dense_ms, threads, cpu_time ? "process cpu time" : "wall clock");
      std::fflush(stdout);
    }
  return 0;
}
