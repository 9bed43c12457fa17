// One decode step on the fast CPU backend (issue 14 item 5): the last query row of a
// language-like causal workload against all its keys (bottom-right causal, GQA), timed as
//   sparge-cpu-dense       every tile, λ = ∞ (block_sparse_attention on the dense mask);
//   sparge-cpu             sparse_attention: Stage 1 pools every cached key again;
//   sparge-cpu-key-blocks  sparse_attention with KeyBlocks built beforehand: Stage 1 reads no
//                          key; `append_ms` is what append_key_blocks costs for the step's key.
// The two sparse rows use the same options, and their masks are equal here (the blocks are built
// on all keys, so they hold the keys' current mean). One JSON line per case on stdout
// (docs/bench-schema.md; rel_l1 against the dense row in fp32; `tops` counts the step's dense
// work 4·Hq·1·Nk·D).
// Usage: bench_decode DEVICE COMMIT [--heads-q H] [--heads-kv G] [--dim D] [--topk K]
//                     [--repeats R] [--threads T] N [N ...]
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

// The last query row of the workload: a view of its q buffer (HND, one token).
TensorView last_row(workloads::Workload& w) {
  TensorView q = w.q_view();
  q.data = w.q.data() + (w.seq_q - 1) * w.head_dim;
  q.tokens = 1;
  return q;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s DEVICE COMMIT [--heads-q H] [--heads-kv G] [--dim D] [--topk K] "
                 "[--repeats R] [--threads T] N [N ...]\n",
                 argv[0]);
    return 2;
  }
  const std::string device = argv[1], commit = argv[2];
  int64_t heads_q = 16, heads_kv = 4, dim = 128;
  double topk = 0.1;
  int repeats = 21, threads = 0;
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
    if (arg == "--heads-q")
      heads_q = std::atoll(next());
    else if (arg == "--heads-kv")
      heads_kv = std::atoll(next());
    else if (arg == "--dim")
      dim = std::atoll(next());
    else if (arg == "--topk")
      topk = std::atof(next());
    else if (arg == "--repeats")
      repeats = std::atoi(next());
    else if (arg == "--threads")
      threads = std::atoi(next());
    else
      lengths.push_back(std::atoll(arg.c_str()));
  }
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  ExecContext ctx;
  ctx.backend = Backend::kCpuFast;
  ctx.num_threads = threads;

  for (int64_t n : lengths) {
    workloads::Workload w = workloads::language_like(1, heads_q, heads_kv, n, dim, 7);
    const TensorView q = last_row(w), k = w.k_view(), v = w.v_view();
    SparseOptions opts;
    opts.causal = true;
    opts.causal_align = CausalAlign::kBottomRight;
    opts.select = SelectMode::kTopK;
    opts.select_value = HeadParam{float(topk)};
    opts.sim_threshold = HeadParam{-1.0f};  // the gate off, as top-k entry points use it
    SparseOptions dense_opts = opts;
    dense_opts.pv_threshold = HeadParam{std::numeric_limits<float>::infinity()};

    std::vector<float> dense_o(heads_q * dim), o(heads_q * dim);
    const auto out_view = [&](std::vector<float>& buf) {
      return TensorView::contiguous(buf.data(), DType::kFloat32, Layout::kHND, 1, heads_q, 1, dim);
    };
    HostBlockMask full(1, heads_q, 1, n, opts.block_q, opts.block_k), mask = full;
    check(fill_dense_mask(full.view(), opts));
    HostKeyBlocks blocks(1, heads_kv, dim, n, opts.block_k);
    check(build_key_blocks(k, &blocks.view(), ctx));

    struct Case {
      const char* impl;
      std::function<void()> run;
    };
    const Case cases[] = {
        {"sparge-cpu-dense",
         [&] {
           check(block_sparse_attention(q, k, v, full.view(), dense_opts, out_view(dense_o), {},
                                        ctx));
         }},
        {"sparge-cpu",
         [&] { check(sparse_attention(q, k, v, opts, out_view(o), {}, ctx, &mask.view())); }},
        {"sparge-cpu-key-blocks",
         [&] {
           check(sparse_attention(q, k, v, blocks.view(), opts, out_view(o), {}, ctx,
                                  &mask.view()));
         }},
    };
    // The step's new key: the blocks as they were one key ago, then append_key_blocks.
    TensorView k_before = k;
    k_before.tokens = n - 1;
    HostKeyBlocks before(1, heads_kv, dim, n, opts.block_k);
    check(build_key_blocks(k_before, &before.view(), ctx));
    const double append_ms = measure::median_ms(
        [&] {
          before.view().tokens = n - 1;
          check(append_key_blocks(k, &before.view(), ctx));
        },
        repeats);

    for (const Case& c : cases) {
      const double ms = measure::median_ms(c.run, repeats);
      c.run();  // the output and mask of this case, for rel_l1 and sparsity
      const bool dense = std::string(c.impl) == "sparge-cpu-dense";
      const double rel_l1 = dense ? 0.0 : measure::rel_l1(o, dense_o);
      const double sparsity =
          dense ? 0.0 : mask_stats(mask.view(), opts.causal, opts.causal_align).sparsity();
      const double work = 4.0 * double(heads_q) * double(n) * double(dim);
      std::printf(
          "{\"date\": \"%s\", \"device\": \"%s\", \"commit\": \"%s\", \"impl\": \"%s\", "
          "\"workload\": \"llm-like decode\", \"dtype\": \"float32\", \"head_dim\": %ld, "
          "\"batch\": 1, \"heads_q\": %ld, \"heads_kv\": %ld, \"seq_q\": 1, \"seq_k\": %ld, "
          "\"causal\": true, \"causal_align\": \"bottom_right\", \"sparsity\": %.4f, "
          "\"ms\": %.4f, \"tops\": %.6f, \"rel_l1\": %.5f, \"cos_sim\": null, \"topk\": %g, "
          "\"sim_threshold\": -1, \"append_ms\": %s, \"threads\": %d, \"repetitions\": %d, "
          "\"timing\": \"wall clock\"}\n",
          date, device.c_str(), commit.c_str(), c.impl, long(dim), long(heads_q), long(heads_kv),
          long(n), sparsity, ms, work / (ms * 1e-3) / 1e12, rel_l1, topk,
          std::string(c.impl) == "sparge-cpu-key-blocks" ? std::to_string(append_ms).c_str()
                                                          : "null",
          threads, repeats);
      std::fflush(stdout);
    }
  }
  return 0;
}
