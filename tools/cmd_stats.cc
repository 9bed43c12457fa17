// `sparge stats`: the attention statistics of a workload that docs/workloads.md reports, per
// query head of batch entry 0: mean row entropy, where the attention mass goes (video: within
// 2 grid cells; llm: sink keys, the last 64 keys, far retrieval lookups), and the sparsity and
// error that the given options reach (video: in Hilbert and in row-major order).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
namespace {

constexpr int64_t kSinkKeys = 4;     // docs/workloads.md: the llm workload's sink tokens
constexpr int64_t kWindowKeys = 64;  // "recent" keys for the llm window mass
constexpr int64_t kNearCells = 2;    // video: Chebyshev radius of the local neighbourhood

// Softmax row of query i of head h, batch 0, in double.
std::vector<double> attention_row(const workloads::Workload& w, int64_t h, int64_t i) {
  const int64_t d = w.head_dim, kvh = h / (w.heads_q / w.heads_kv);
  const float* q = &w.q[static_cast<size_t>((h * w.seq_q + i) * d)];
  const float* k = &w.k[static_cast<size_t>(kvh * w.seq_k * d)];
  const int64_t keys = w.causal ? std::min(i + 1, w.seq_k) : w.seq_k;
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> p(static_cast<size_t>(keys));
  double mx = -std::numeric_limits<double>::infinity(), z = 0;
  for (int64_t j = 0; j < keys; ++j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += double(q[c]) * k[j * d + c];
    mx = std::max(mx, p[j] = s * scale);
  }
  for (double& x : p) z += (x = std::exp(x - mx));
  for (double& x : p) x /= z;
  return p;
}

struct HeadRun {
  std::vector<double> sparsity, rel_l1;  // per query head
};

// Default-path sparse attention (fast backend) vs float64 dense, per query head.
HeadRun run_per_head(workloads::Workload w, bool hilbert, const SparseOptions& opts, int threads) {
  if (hilbert) apply_hilbert(w);
  TypedInputs in = typed_inputs(w, DType::kFloat32);
  TypedTensor o = TypedTensor::poisoned(DType::kFloat32, w.batch, w.heads_q, w.seq_q, w.head_dim);
  HostBlockMask mask(w.batch, w.heads_q, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  ctx.num_threads = threads;
  check_ok(sparse_attention(in.q.view, in.k.view, in.v.view, opts, o.view, {}, ctx, &mask.view()),
           "sparse_attention");
  const std::vector<double> ref = cpu::dense_attention_reference(
      in.q.view, in.k.view, in.v.view, 1.0f / std::sqrt(float(w.head_dim)), opts.causal,
      opts.causal_align);
  HeadRun run;
  const int64_t nq = mask.view().num_q_blocks(), nk = mask.view().num_k_blocks();
  const size_t head_elems = static_cast<size_t>(w.seq_q * w.head_dim);
  for (int64_t h = 0; h < w.heads_q; ++h) {
    HostBlockMask one(1, 1, w.seq_q, w.seq_k, opts.block_q, opts.block_k);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t src = mask.view().row(0, h, r);
      one.counts[r] = mask.counts[src];
      std::copy_n(&mask.indices[src * nk], nk, &one.indices[r * nk]);
    }
    run.sparsity.push_back(mask_stats(one.view(), opts.causal, opts.causal_align).sparsity());
    const size_t first = static_cast<size_t>(h) * head_elems;
    const std::vector<float> out(o.f32.begin() + first, o.f32.begin() + first + head_elems);
    const std::vector<double> r(ref.begin() + first, ref.begin() + first + head_elems);
    run.rel_l1.push_back(measure::rel_l1(out, r));
  }
  return run;
}

}  // namespace

int run_stats(int argc, char** argv) {
  ArgParser p("sparge stats",
              "Prints per query head (batch entry 0) the mean attention entropy, where the\n"
              "attention mass goes, and the sparsity and rel L1 error the options reach\n"
              "(video: Hilbert and row-major order). These are docs/workloads.md's numbers.");
  add_workload_options(p, "8,16,16", "2048");
  add_sparse_options(p);
  p.add("row-stride", "N", "7", "use every N-th query row for entropy and mass statistics");
  p.add("threads", "N", "0", "CPU threads (0 = OpenMP default)");
  if (!p.parse(argc, argv, 2)) {
    std::printf("%s", p.help().c_str());
    return 0;
  }
  const workloads::Workload w = make_workload(p);
  const SparseOptions opts = sparse_options(p, w.causal);
  const int64_t stride = p.integer("row-stride", 1, 1 << 20);
  const int threads = static_cast<int>(p.integer("threads", 0, 1024));
  const bool video = w.grid_t > 0;
  const int64_t plane = w.grid_h * w.grid_w;

  progress(1, 3, "attention rows");
  std::printf("%s; entropy in nats (uniform would be %.2f)\n", shape_text(w).c_str(),
              std::log(double(w.seq_k)));
  for (int64_t h = 0; h < w.heads_q; ++h) {
    double entropy = 0, near = 0, sink = 0, window = 0;
    int64_t rows = 0, far_lookups = 0;
    for (int64_t i = 0; i < w.seq_q; i += stride, ++rows) {
      const std::vector<double> pr = attention_row(w, h, i);
      for (size_t j = 0; j < pr.size(); ++j) {
        if (pr[j] > 0) entropy -= pr[j] * std::log(pr[j]);
        const int64_t jj = static_cast<int64_t>(j);
        if (video && std::llabs(i / plane - jj / plane) <= kNearCells &&
            std::llabs(i / w.grid_w % w.grid_h - jj / w.grid_w % w.grid_h) <= kNearCells &&
            std::llabs(i % w.grid_w - jj % w.grid_w) <= kNearCells)
          near += pr[j];
        if (jj < kSinkKeys)
          sink += pr[j];
        else if (i - jj < kWindowKeys)
          window += pr[j];
      }
      if (w.causal && static_cast<int64_t>(pr.size()) > kSinkKeys) {
        const int64_t best = std::max_element(pr.begin() + kSinkKeys, pr.end()) - pr.begin();
        if (i - best > w.seq_k / 4 && pr[best] > 0.3) ++far_lookups;
      }
    }
    std::printf("head %lld: entropy %.2f", static_cast<long long>(h), entropy / rows);
    if (video)
      std::printf(", mass within %lld cells %.3f", static_cast<long long>(kNearCells), near / rows);
    if (w.causal)
      std::printf(", sink mass %.3f, last-%lld mass %.3f, far lookups %lld of %lld rows",
                  sink / rows, static_cast<long long>(kWindowKeys), window / rows,
                  static_cast<long long>(far_lookups), static_cast<long long>(rows));
    std::printf("\n");
  }

  progress(2, 3, video ? "sparse attention in Hilbert order" : "sparse attention");
  const HeadRun main_run = run_per_head(w, video, opts, threads);
  HeadRun row_major;
  if (video) {
    progress(3, 3, "sparse attention in row-major order");
    row_major = run_per_head(w, false, opts, threads);
  }
  for (int64_t h = 0; h < w.heads_q; ++h) {
    std::printf("head %lld: %ssparsity %.3f rel L1 %.4f", static_cast<long long>(h),
                video ? "Hilbert " : "", main_run.sparsity[h], main_run.rel_l1[h]);
    if (video)
      std::printf(" | row-major sparsity %.3f rel L1 %.4f", row_major.sparsity[h],
                  row_major.rel_l1[h]);
    std::printf("\n");
  }
  double s = 0, e = 0, s_rm = 0, e_rm = 0;
  for (int64_t h = 0; h < w.heads_q; ++h) {
    s += main_run.sparsity[h] / double(w.heads_q);
    e += main_run.rel_l1[h] / double(w.heads_q);
    if (video) {
      s_rm += row_major.sparsity[h] / double(w.heads_q);
      e_rm += row_major.rel_l1[h] / double(w.heads_q);
    }
  }
  std::printf("mean over heads: sparsity %.3f rel L1 %.4f", s, e);
  if (video) std::printf(" | row-major sparsity %.3f rel L1 %.4f", s_rm, e_rm);
  std::printf("\n");
  return 0;
}

}  // namespace sparge::cli
