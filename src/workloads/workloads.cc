// Deterministic attention workloads. Constructions and measured statistics: docs/workloads.md.
//
// Locality comes from random Fourier features (RFF): with M frequency vectors ω_m drawn from
// N(0, diag(1/ℓ²)), the unit-norm feature f(p) = M^-1/2 [cos(ω_m·p), sin(ω_m·p)]_m satisfies
// f(p)·f(p') = (1/M) Σ_m cos(ω_m·(p − p')) ≈ exp(−Σ_axis Δ²/(2ℓ²)): a smooth field whose dot
// products fall off with distance. Queries and keys that share f attend to their neighbours
// with logits β·f(p)·f(p'), so β (the peak logit) sets how sharp attention is and ℓ how smooth
// the features are (and hence how self-similar a compact block of tokens is).
#include "sparge/workloads.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/fp_convert.h"
#include "workloads/random.h"

namespace sparge::workloads {
namespace {

using detail::Rng;

// Stream ids, so each tensor/head draws from its own independent generator.
enum Stream : uint64_t { kQ = 1, kK, kV, kFreq, kFreqV, kBias, kSink, kRetrieval };

Workload make_shell(const char* name, int64_t batch, int64_t heads_q, int64_t heads_kv,
                    int64_t seq_q, int64_t seq_k, int64_t head_dim) {
  Workload w;
  w.name = name;
  w.batch = batch;
  w.heads_q = heads_q;
  w.heads_kv = heads_kv;
  w.seq_q = seq_q;
  w.seq_k = seq_k;
  w.head_dim = head_dim;
  w.q.assign(static_cast<size_t>(batch * heads_q * seq_q * head_dim), 0.0f);
  w.k.assign(static_cast<size_t>(batch * heads_kv * seq_k * head_dim), 0.0f);
  w.v.assign(w.k.size(), 0.0f);
  return w;
}

// M frequency vectors over up to three coordinates, ω[axis] ~ N(0, 1/length[axis]²).
struct Frequencies {
  std::vector<double> omega;  // [M][3]
  int64_t count = 0;

  Frequencies(Rng rng, int64_t m, double len0, double len1, double len2) : count(m) {
    omega.resize(static_cast<size_t>(3 * m));
    for (int64_t i = 0; i < m; ++i) {
      omega[3 * i + 0] = rng.normal() / len0;
      omega[3 * i + 1] = rng.normal() / len1;
      omega[3 * i + 2] = rng.normal() / len2;
    }
  }

  // Adds amplitude · f(p) to out[0 .. 2M): channel 2m = cos, 2m + 1 = sin, unit norm overall.
  void add_feature(double p0, double p1, double p2, double amplitude, float* out) const {
    const double a = amplitude / std::sqrt(static_cast<double>(count));
    for (int64_t i = 0; i < count; ++i) {
      const double phase = omega[3 * i] * p0 + omega[3 * i + 1] * p1 + omega[3 * i + 2] * p2;
      out[2 * i] += static_cast<float>(a * std::cos(phase));
      out[2 * i + 1] += static_cast<float>(a * std::sin(phase));
    }
  }
};

// Per-head locality of the video workload, cycled over heads. Lengths are in grid cells; the
// attention width is roughly ℓ/√β cells. Chosen (see docs/workloads.md) so that 64-token key
// blocks and 128-token query blocks of a Hilbert order stay self-similar (s > 0.6) while
// attention reaches only a few cells: an isotropic head, a temporal head (long along t), a
// spatial head (wide within a frame) and a broad head.
struct VideoHead {
  double len_t, len_s, peak_logit;
};
constexpr VideoHead kVideoHeads[] = {
    {5.0, 5.0, 14.0},
    {10.0, 4.5, 14.0},
    {4.5, 7.0, 12.0},
    {7.0, 7.0, 9.0},
};
constexpr double kVideoNoise = 0.1;  // i.i.d. noise norm relative to the feature norm
constexpr double kVideoKeyBias =
    0.5;  // per-head constant added to every key (K smoothing removes it)

}  // namespace

Workload random_gaussian(int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t seq_q,
                         int64_t seq_k, int64_t head_dim, uint64_t seed) {
  Workload w = make_shell("random", batch, heads_q, heads_kv, seq_q, seq_k, head_dim);
  Rng rq = Rng::stream(seed, kQ), rk = Rng::stream(seed, kK), rv = Rng::stream(seed, kV);
  for (float& x : w.q) x = static_cast<float>(rq.normal());
  for (float& x : w.k) x = static_cast<float>(rk.normal());
  for (float& x : w.v) x = static_cast<float>(rv.normal());
  return w;
}

Workload video_grid(int64_t batch, int64_t heads, int64_t frames, int64_t height, int64_t width,
                    int64_t head_dim, uint64_t seed) {
  const int64_t n = frames * height * width, d = head_dim;
  Workload w = make_shell("video-grid", batch, heads, heads, n, n, d);
  w.grid_t = frames;
  w.grid_h = height;
  w.grid_w = width;
  const int64_t pairs = d / 2;  // an odd head_dim leaves its last channel to the noise
  // Logit β = scale · amplitude², with the default scale 1/√D.
  const double inv_scale = std::sqrt(static_cast<double>(d));
  const double noise_sd = kVideoNoise / std::sqrt(static_cast<double>(d));

  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      const VideoHead& prof = kVideoHeads[h % (sizeof(kVideoHeads) / sizeof(kVideoHeads[0]))];
      const Frequencies qk(Rng::stream(seed, kFreq, b, h), pairs, prof.len_t, prof.len_s,
                           prof.len_s);
      // Values vary smoothly too, on twice the length scale.
      const Frequencies vf(Rng::stream(seed, kFreqV, b, h), pairs, 2 * prof.len_t, 2 * prof.len_s,
                           2 * prof.len_s);
      const double amp = std::sqrt(prof.peak_logit * inv_scale);
      Rng rbias = Rng::stream(seed, kBias, b, h);
      std::vector<double> key_bias(static_cast<size_t>(d));
      for (double& x : key_bias) x = rbias.normal() * kVideoKeyBias * amp / std::sqrt(double(d));
      Rng rq = Rng::stream(seed, kQ, b, h), rk = Rng::stream(seed, kK, b, h);
      Rng rv = Rng::stream(seed, kV, b, h);
      const size_t base = static_cast<size_t>((b * heads + h) * n * d);
      for (int64_t t = 0; t < frames; ++t)
        for (int64_t y = 0; y < height; ++y)
          for (int64_t x = 0; x < width; ++x) {
            const int64_t token = (t * height + y) * width + x;
            float* q = &w.q[base + static_cast<size_t>(token * d)];
            float* k = &w.k[base + static_cast<size_t>(token * d)];
            float* v = &w.v[base + static_cast<size_t>(token * d)];
            qk.add_feature(double(t), double(y), double(x), amp, q);
            qk.add_feature(double(t), double(y), double(x), amp, k);
            vf.add_feature(double(t), double(y), double(x), std::sqrt(double(d)), v);
            for (int64_t c = 0; c < d; ++c) {
              q[c] += static_cast<float>(rq.normal() * noise_sd * amp);
              k[c] += static_cast<float>(rk.normal() * noise_sd * amp + key_bias[c]);
              v[c] += static_cast<float>(0.5 * rv.normal());
            }
          }
    }
  return w;
}

}  // namespace sparge::workloads
