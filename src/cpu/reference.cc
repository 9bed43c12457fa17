// Stage 2 on the CPU, exactly as docs/method.md "Stage 2", in double: the oracle of every test.
// Per (b, h, query block) it walks the kept key blocks in ascending order with an online softmax
// in log2 units; each group of pv_group_rows rows skips a tile when every row's tile max is at
// least λ below its running max. Deliberately plain: no blocking, no vectorization. An attention
// mask (AttentionMask) is applied to every element, without the tile classes of the fast path.
// Quantized modes take their scores from the INT8 codes and scales (cpu/quantize.h); kInt8Fp8
// also V from its e4m3 values and P·V from P = 448·2^(t − m) rounded to e4m3 as the FP8 P·V
// kernel does (kInt8 keeps V and P exact), and l sums that rounded P as the kernel's MMA does;
// everything else stays in double, so it is exact given those roundings.
#include "cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/backend.h"
#include "common/fp_convert.h"
#include "common/geometry.h"
#include "cpu/attn_mask.h"
#include "cpu/quantize.h"
#include "cpu/tensor_io.h"

namespace sparge::cpu {
namespace {

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Scores t_rc in log2 units for one (b, query head): exact, or from the INT8 codes.
struct HeadScores {
  int64_t D = 0;
  double scale_log2 = 0;
  std::vector<double> q, k;    // exact mode, [Nq, D] / [Nk, D]
  const int8_t* q8 = nullptr;  // quantized mode, HND slices
  const int8_t* k8 = nullptr;
  const float* q_scale = nullptr;  // per group of q_rows query rows
  const float* k_scale = nullptr;  // per group of k_rows keys
  int q_rows = 0, k_rows = 0;

  double operator()(int64_t r, int64_t c) const {
    if (q8 == nullptr) {
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += q[r * D + d] * k[c * D + d];
      return scale_log2 * dot;
    }
    int32_t dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += int32_t(q8[r * D + d]) * int32_t(k8[c * D + d]);
    return double(dot) * q_scale[r / q_rows] * k_scale[c / k_rows] * scale_log2;
  }
};

// max(a, b) that is NaN when either is. std::max and fmax drop a NaN operand, which would make a
// row whose scores are all NaN look like a row that sees no key (zeros instead of NaN).
double max_nan(double a, double b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }

// Running softmax state of one query row.
struct RowState {
  double m = kNegInf, l = 0.0;
  std::vector<double> acc;
};

// One (b, h): all query blocks; adds (visited, skipped) group-tile pairs to `counters`.
// `quant` is null in exact mode.
void attend_head(const detail::Problem& p, const BlockMask& mask, const MaskReader& attn,
                 const HeadScores& score, const std::vector<double>& v,
                 const QuantizedInputs* quant, int64_t b, int64_t h, const TensorView& o,
                 float* lse, unsigned long long counters[2]) {
  const ProblemShape& s = p.shape;
  const bool fp8 = quant != nullptr && detail::fp8_pv(p.opts.quant);
  const double p_scale = fp8 ? kPScale : 1.0;
  const SparseOptions& opt = p.opts;
  const int64_t D = s.head_dim;
  const detail::KeyBand band = p.band();
  const double lambda = opt.pv_threshold.at(h);
  // The attention mask, applied to every element (the oracle does not classify tiles): keys at
  // or past key_end are padding, a hidden pair is -inf whatever its score (even NaN), and an
  // additive value joins the score in log2 units.
  const int64_t key_end = attn.key_end(b);
  const auto hidden = [&](int64_t r, int64_t c) {
    return c >= key_end || attn.value(b, h, r, c) == -INFINITY;
  };

  for (int64_t i = 0; i < mask.num_q_blocks(); ++i) {
    const int64_t r0 = i * opt.block_q, r1 = std::min<int64_t>(s.seq_q, r0 + opt.block_q);
    std::vector<RowState> rows(r1 - r0);
    for (RowState& st : rows) st.acc.assign(D, 0.0);
    const int64_t mrow = mask.row(b, h, i);

    for (int32_t t = 0; t < mask.counts[mrow]; ++t) {
      const int64_t j = mask.indices[mask.row_begin(mrow) + t];
      const int64_t c0 = j * opt.block_k, c1 = std::min<int64_t>(s.seq_k, c0 + opt.block_k);
      std::vector<double> tile((r1 - r0) * (c1 - c0)), tile_max(r1 - r0, kNegInf);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t first = detail::first_visible_key(r, band);
        const int64_t last = detail::last_visible_key(r, band, s.seq_k);
        for (int64_t c = c0; c < c1; ++c) {
          const double x = c >= first && c <= last && !hidden(r, c)
                               ? score(r, c) + kLog2e * attn.value(b, h, r, c)
                               : kNegInf;
          tile[(r - r0) * (c1 - c0) + (c - c0)] = x;
          tile_max[r - r0] = max_nan(tile_max[r - r0], x);  // NaN iff a visible score is
        }
      }
      for (int64_t g0 = r0; g0 < r1; g0 += opt.pv_group_rows) {
        const int64_t g1 = std::min<int64_t>(r1, g0 + opt.pv_group_rows);
        ++counters[0];
        bool skip = true;
        // A NaN m_loc or m fails both tests (NaN compares false): a NaN score is never skipped.
        for (int64_t r = g0; r < g1 && skip; ++r) {
          const double m_loc = tile_max[r - r0], m = rows[r - r0].m;
          skip = m_loc == kNegInf || (m != kNegInf && m_loc - m <= -lambda);
        }
        if (skip) {
          ++counters[1];
          continue;
        }
        for (int64_t r = g0; r < g1; ++r) {
          RowState& st = rows[r - r0];
          const double m_new = max_nan(st.m, tile_max[r - r0]);
          if (m_new == kNegInf) continue;  // the row has seen no key yet: nothing to add
          const double rescale = std::exp2(st.m - m_new);  // NaN once m_new is: l, acc stay NaN
          st.l *= rescale;
          for (double& a : st.acc) a *= rescale;
          // Only the keys the row sees: a masked key's p is 0, but 0·NaN in its v would not be.
          const int64_t c_begin = std::max(c0, detail::first_visible_key(r, band));
          const int64_t c_end = std::min(c1, detail::last_visible_key(r, band, s.seq_k) + 1);
          for (int64_t c = c_begin; c < c_end; ++c) {
            if (hidden(r, c)) continue;
            const double pr = p_scale * std::exp2(tile[(r - r0) * (c1 - c0) + (c - c0)] - m_new);
            // The FP8 P·V product sees P in e4m3 (NaN stays NaN), and l sums the same P (the
            // kernel's row sums are P times a column of ones in that product): o is then a
            // convex combination of V's rows.
            const double pv =
                fp8 ? detail::e4m3_bits_to_float(detail::float_to_e4m3_bits(float(pr))) : pr;
            st.l += pv;
            for (int64_t d = 0; d < D; ++d) st.acc[d] += pv * v[c * D + d];
          }
          st.m = m_new;
        }
      }
    }

    // double -> float -> fp16/bf16 may round twice; that moves an exact tie by one unit at most.
    // l = 0 exactly when the row saw no key (a row that saw one has a term p_scale · 2^0); a NaN
    // l (a NaN score) is not 0, so o and lse come out NaN. o = acc / l cancels p_scale; the lse
    // takes it out, and in quantized mode adds back what smoothing K took from the scores.
    for (int64_t r = r0; r < r1; ++r) {
      const RowState& st = rows[r - r0];
      const bool empty = st.l == 0.0;
      for (int64_t d = 0; d < D; ++d)
        store_element(o, o.offset(b, h, r, d), empty ? 0.0f : float(st.acc[d] / st.l));
      if (lse == nullptr) continue;
      double x = -INFINITY;
      if (!empty) {
        x = kLn2 * (st.m + std::log2(st.l));
        if (quant != nullptr) x += lse_shift(p, *quant, b, h, r) - kLn2 * std::log2(p_scale);
      }
      lse[(b * s.heads_q + h) * s.seq_q + r] = float(x);
    }
  }
}

}  // namespace

Status attention_reference(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                           const AttentionExtras& extras) {
  const ProblemShape& s = p.shape;
  const int64_t D = s.head_dim, group = s.heads_q / s.heads_kv;
  const bool quantized = detail::quantizes_qk(p.opts.quant);
  QuantizedInputs qi;
  if (quantized) qi = quantize_inputs(p);

  std::vector<unsigned long long> counters(s.batch * s.heads_q * 2, 0);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const int64_t b = bh / s.heads_q, h = bh % s.heads_q, hk = h / group;
    const int64_t bhk = b * s.heads_kv + hk;
    HeadScores score;
    score.D = D;
    score.scale_log2 = double(p.scale) * kLog2e;
    std::vector<double> v;
    if (quantized) {
      score.q8 = &qi.q[bh * s.seq_q * D];
      score.k8 = &qi.k[bhk * s.seq_k * D];
      score.q_scale = &qi.q_scale[bh * qi.q_groups];
      score.k_scale = &qi.k_scale[bhk * qi.k_groups];
      score.q_rows = qi.granularity.q_rows;
      score.k_rows = qi.granularity.k_rows;
      if (detail::fp8_pv(p.opts.quant))
        v.assign(qi.v.begin() + bhk * s.seq_k * D, qi.v.begin() + (bhk + 1) * s.seq_k * D);
    } else {
      score.q = load_slice<double>(p.q, b, h);
      score.k = load_slice<double>(p.k, b, hk);
    }
    if (v.empty()) v = load_slice<double>(p.v, b, hk);
    attend_head(p, mask, MaskReader(p.attn_mask, s.seq_k), score, v, quantized ? &qi : nullptr, b,
                h, o, extras.lse, &counters[bh * 2]);
  }
  if (extras.pv_counters != nullptr)
    for (int64_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
      const int64_t h = bh % s.heads_q;
      extras.pv_counters[h * 2 + 0] += counters[bh * 2 + 0];
      extras.pv_counters[h * 2 + 1] += counters[bh * 2 + 1];
    }
  return Status::ok();
}

std::vector<double> dense_attention_reference(const TensorView& q, const TensorView& k,
                                              const TensorView& v, float scale,
                                              const SparseOptions& visibility) {
  const int64_t B = q.batch, Hq = q.heads, Nq = q.tokens, Nk = k.tokens, D = q.head_dim;
  const int64_t group = Hq / k.heads;
  const detail::KeyBand band = detail::Problem::band_of(visibility, Nq, Nk);
  std::vector<double> out(B * Hq * Nq * D, 0.0);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    const int64_t b = bh / Hq, h = bh % Hq;
    const std::vector<double> qs = load_slice<double>(q, b, h);
    const std::vector<double> ks = load_slice<double>(k, b, h / group);
    const std::vector<double> vs = load_slice<double>(v, b, h / group);
    std::vector<double> w(Nk);
    for (int64_t r = 0; r < Nq; ++r) {
      const int64_t first = detail::first_visible_key(r, band);
      const int64_t last = detail::last_visible_key(r, band, Nk);
      if (last < first) continue;  // the row sees no key: zeros
      double mx = kNegInf;
      for (int64_t c = first; c <= last; ++c) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) dot += qs[r * D + d] * ks[c * D + d];
        w[c] = double(scale) * dot;
        mx = std::max(mx, w[c]);
      }
      double sum = 0.0;
      for (int64_t c = first; c <= last; ++c) sum += (w[c] = std::exp(w[c] - mx));
      double* o = &out[(bh * Nq + r) * D];
      for (int64_t c = first; c <= last; ++c)
        for (int64_t d = 0; d < D; ++d) o[d] += w[c] / sum * vs[c * D + d];
    }
  }
  return out;
}

std::vector<double> dense_attention_reference(const TensorView& q, const TensorView& k,
                                              const TensorView& v, float scale, bool causal,
                                              CausalAlign align) {
  SparseOptions visibility;
  visibility.causal = causal;
  visibility.causal_align = align;
  return dense_attention_reference(q, k, v, scale, visibility);
}

}  // namespace sparge::cpu
