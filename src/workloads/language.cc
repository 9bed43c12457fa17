// Language-model-like causal workload and the fp16/bf16 conversion helper.
// Construction and measured statistics: docs/workloads.md.
//
// Channels [0, P) carry a rotary-like positional code, [P, D) carry content:
//   * local window: q_i and k_j share a 1-D random Fourier feature of the position
//     (M^-1/2 [cos θ_m i, sin θ_m i], θ_m ~ N(0, 1/w²)), so q_i·k_j ∝ (1/M) Σ cos θ_m (i − j):
//     largest for recent keys, falling off over about w tokens (w per kv head);
//   * attention sinks: the first kSinkTokens keys carry a content direction u that every query
//     of the group also carries, so they score high from all queries;
//   * retrieval: a few keys carry a random content vector e_r that a run of distant queries
//     also carries, so those queries look far back to one key.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/fp_convert.h"
#include "sparge/workloads.h"
#include "workloads/random.h"

namespace sparge::workloads {
namespace {

using detail::Rng;

enum Stream : uint64_t { kQ = 11, kK, kV, kFreq, kSinkDir, kRetrieval };

constexpr int64_t kSinkTokens = 4;
constexpr int64_t kRetrievalQueries = 16;     // consecutive queries sharing one retrieval key
constexpr int64_t kTokensPerRetrieval = 512;  // one retrieval pair per this many tokens
constexpr double kContentNoise = 0.15;        // per-channel sd of content noise in q and k
constexpr double kRetrievalBoost = 6.0;       // retrieval logit above the local peak logit

// Per kv head: local window length w in tokens.
constexpr double kWindows[] = {16.0, 64.0, 256.0, 32.0};
// Per query head: peak logit of the local window and logit of a sink key.
struct QueryHead {
  double local_logit, sink_logit;
};
constexpr QueryHead kQueryHeads[] = {{10.0, 9.5}, {12.0, 11.5}, {8.0, 9.0}, {14.0, 13.0}};

template <typename T, size_t N>
const T& cycle(const T (&table)[N], int64_t i) {
  return table[static_cast<size_t>(i) % N];
}

// A random unit vector over channels [first, d).
std::vector<double> unit_vector(Rng rng, int64_t first, int64_t d) {
  std::vector<double> u(static_cast<size_t>(d), 0.0);
  double norm = 0;
  for (int64_t c = first; c < d; ++c) {
    u[c] = rng.normal();
    norm += u[c] * u[c];
  }
  norm = std::sqrt(norm);
  for (double& x : u) x = norm > 0 ? x / norm : 0.0;
  return u;
}

struct RetrievalPair {
  int64_t key, first_query;
  std::vector<double> content;
};

}  // namespace

Workload language_like(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t tokens,
                       int64_t head_dim, uint64_t seed) {
  Workload w;
  w.name = "llm-like";
  w.batch = batch;
  w.heads_q = heads_q;
  w.heads_kv = heads_kv;
  w.seq_q = w.seq_k = tokens;
  w.head_dim = head_dim;
  w.causal = true;
  const int64_t d = head_dim, n = tokens;
  w.q.assign(static_cast<size_t>(batch * heads_q * n * d), 0.0f);
  w.k.assign(static_cast<size_t>(batch * heads_kv * n * d), 0.0f);
  w.v.assign(w.k.size(), 0.0f);
  if (heads_kv < 1 || heads_q % heads_kv != 0) return w;
  const int64_t group = heads_q / heads_kv;
  const int64_t pairs = d / 4;  // positional channels P = 2 · pairs, about half of D
  const int64_t content_first = 2 * pairs;
  const double inv_scale = std::sqrt(static_cast<double>(d));  // logit = amplitude² / √D
  const int64_t sinks = std::min(kSinkTokens, n);

  for (int64_t b = 0; b < batch; ++b)
    for (int64_t g = 0; g < heads_kv; ++g) {
      Rng rfreq = Rng::stream(seed, kFreq, b, g);
      std::vector<double> theta(static_cast<size_t>(pairs));
      for (double& t : theta) t = rfreq.normal() / cycle(kWindows, g);
      const std::vector<double> sink_dir =
          unit_vector(Rng::stream(seed, kSinkDir, b, g), content_first, d);
      // Retrieval pairs: a key in the first half, queries at least n/4 tokens later.
      std::vector<RetrievalPair> retrieval;
      Rng rret = Rng::stream(seed, kRetrieval, b, g);
      const int64_t num_pairs =
          n >= 4 * kRetrievalQueries ? std::max<int64_t>(1, n / kTokensPerRetrieval) : 0;
      for (int64_t r = 0; r < num_pairs; ++r) {
        RetrievalPair p;
        p.key = sinks + rret.below(std::max<int64_t>(1, n / 2 - sinks));
        const int64_t lo = p.key + n / 4, hi = n - kRetrievalQueries;
        p.first_query = lo >= hi ? hi : lo + rret.below(hi - lo);
        p.content = unit_vector(Rng(rret.next()), content_first, d);
        retrieval.push_back(std::move(p));
      }

      // Keys: unit positional code (amplitude applied on the query side), content noise,
      // sink and retrieval content. Key amplitude is fixed to √(inv_scale) per component so
      // that the query side alone sets each logit.
      const double key_amp = std::sqrt(inv_scale);
      Rng rk = Rng::stream(seed, kK, b, g), rv = Rng::stream(seed, kV, b, g);
      const size_t kbase = static_cast<size_t>((b * heads_kv + g) * n * d);
      const double pos_norm = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(pairs, 1)));
      for (int64_t j = 0; j < n; ++j) {
        float* k = &w.k[kbase + static_cast<size_t>(j * d)];
        float* v = &w.v[kbase + static_cast<size_t>(j * d)];
        for (int64_t m = 0; m < pairs; ++m) {
          k[2 * m] = static_cast<float>(key_amp * pos_norm * std::cos(theta[m] * double(j)));
          k[2 * m + 1] = static_cast<float>(key_amp * pos_norm * std::sin(theta[m] * double(j)));
        }
        for (int64_t c = content_first; c < d; ++c) {
          double x = kContentNoise * rk.normal();
          if (j < sinks) x += key_amp * sink_dir[c];
          for (const RetrievalPair& p : retrieval)
            if (p.key == j) x += key_amp * p.content[c];
          k[c] = static_cast<float>(x);
        }
        for (int64_t c = 0; c < d; ++c) v[c] = static_cast<float>(rv.normal());
      }

      // Queries of the group: logit of a component = (query amplitude · key_amp) / √D.
      for (int64_t hg = 0; hg < group; ++hg) {
        const int64_t h = g * group + hg;
        const QueryHead& prof = cycle(kQueryHeads, h);
        const double local_amp = prof.local_logit * inv_scale / key_amp;
        const double sink_amp = prof.sink_logit * inv_scale / key_amp;
        const double retrieval_amp = (prof.local_logit + kRetrievalBoost) * inv_scale / key_amp;
        Rng rq = Rng::stream(seed, kQ, b, h);
        const size_t qbase = static_cast<size_t>((b * heads_q + h) * n * d);
        for (int64_t i = 0; i < n; ++i) {
          float* q = &w.q[qbase + static_cast<size_t>(i * d)];
          for (int64_t m = 0; m < pairs; ++m) {
            q[2 * m] = static_cast<float>(local_amp * pos_norm * std::cos(theta[m] * double(i)));
            q[2 * m + 1] =
                static_cast<float>(local_amp * pos_norm * std::sin(theta[m] * double(i)));
          }
          for (int64_t c = content_first; c < d; ++c) {
            double x = kContentNoise * rq.normal() + sink_amp * sink_dir[c];
            for (const RetrievalPair& p : retrieval)
              if (i >= p.first_query && i < p.first_query + kRetrievalQueries)
                x += retrieval_amp * p.content[c];
            q[c] = static_cast<float>(x);
          }
        }
      }
    }
  return w;
}

std::vector<uint16_t> to_half_bits(const std::vector<float>& x, DType dtype) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = dtype == DType::kBFloat16 ? sparge::detail::float_to_bf16_bits(x[i])
                                       : sparge::detail::float_to_half_bits(x[i]);
  return out;
}

}  // namespace sparge::workloads
