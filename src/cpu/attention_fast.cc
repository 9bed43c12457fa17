// Fast CPU Stage 2 (docs/method.md "Stage 2"): the same function as the reference, computed
// FlashAttention-style in fp32. OpenMP hands out (batch, head, query block) tasks dynamically
// (sparse rows have uneven work). Per task the query block is converted once to fp32,
// transposed and pre-scaled by scale·log2(e); each kept key tile is converted into thread-local
// scratch (allocated once per call), scored as a small GEMM, tested against the λ rule per
// group of pv_group_rows rows, and only then is V converted and P·V accumulated.
// Quantized modes read the int8 codes of src/cpu/quantize.h: the int8 dot products are exact in
// fp32 (|Σ q8·k8| ≤ 256·127² < 2^24), then scaled by s_q·s_k·scale·log2(e) per tile. kInt8Fp8's
// P is 448·2^(t − m), rounded to e4m3 for P·V with the e4m3 V and summed into l so rounded (the
// FP8 P·V kernel's rule); kInt8 takes P and v as exact mode does.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/backend.h"
#include "common/geometry.h"
#include "cpu/attention_fast_kernels.h"
#include "cpu/attn_mask.h"
#include "cpu/quantize.h"

namespace sparge::cpu {
namespace {

using fast::Elem;

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

Elem elem_of(DType t) {
  switch (t) {
    case DType::kFloat16:
      return Elem::kF16;
    case DType::kBFloat16:
      return Elem::kBF16;
    default:
      return Elem::kF32;
  }
}

// Rows of one (batch, head) plane of q, k or v: where row n starts and how to widen it.
struct Plane {
  const char* base = nullptr;
  int64_t row_bytes = 0;  // byte step between consecutive tokens
  Elem elem = Elem::kF32;
  const void* row(int64_t n) const { return base + n * row_bytes; }
};

Plane view_plane(const TensorView& t, int64_t b, int64_t h) {
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
  return {static_cast<const char*>(t.data) + t.offset(b, h, 0, 0) * es, t.stride_token * es,
          elem_of(t.dtype)};
}

// Everything a task needs, resolved once per call.
struct Plan {
  const detail::Problem* p = nullptr;
  const BlockMask* mask = nullptr;
  const QuantizedInputs* quant = nullptr;  // null in exact mode
  bool fp8_pv = false;                     // kInt8Fp8: e4m3 P and V in P·V
  TensorView o;
  AttentionExtras extras;
  int64_t D = 0, Dp = 0, bq = 0, bk = 0, group = 0, nq = 0;
  detail::KeyBand band;  // the keys each row sees (causal, window)
  MaskReader attn;       // the attention mask (inactive without one)
  double score_log2 = 0;  // scale · log2(e)
  bool avx512 = false;    // AVX-512 kernels (else AVX2)
};

// One thread's scratch, sized for the largest block; allocated once per call.
struct Scratch {
  float* mem = nullptr;
  float *qt, *k, *v, *st, *acc, *rows8, *m, *l, *mloc, *alpha, *rowsum, *pbuf, *qfactor;
  std::vector<int32_t> active;

  explicit Scratch(const Plan& pl) {
    const int64_t bq = pl.bq, bk = pl.bk, D = pl.D, Dp = pl.Dp;
    const int64_t sizes[] = {D * bq, bk * D, bk * Dp, bk * bq, bq * Dp, 8 * Dp,
                             bq,     bq,     bq,      bq,      bq,      bk * 8, bq};
    int64_t total = 0;
    for (int64_t s : sizes) total += round_up(s, 16);
    mem = static_cast<float*>(std::aligned_alloc(64, total * sizeof(float)));
    if (mem == nullptr) return;
    std::fill(mem, mem + total, 0.0f);  // pads (V/acc columns ≥ D) must read as zero
    float** parts[] = {&qt, &k,    &v,     &st,     &acc,  &rows8, &m,
                       &l,  &mloc, &alpha, &rowsum, &pbuf, &qfactor};
    float* at = mem;
    for (int i = 0; i < 13; ++i) {
      *parts[i] = at;
      at += round_up(sizes[i], 16);
    }
    active.reserve(bq);
  }
  ~Scratch() { std::free(mem); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// P·V kernels by row count (index = rows in the register block).
using PvKernel = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                          float* const*, const float*);
constexpr PvKernel kPvAvx2[] = {nullptr, fast::pv_rows<1>, fast::pv_rows<2>, fast::pv_rows<3>,
                                fast::pv_rows<4>};
constexpr PvKernel kPvAvx512[] = {nullptr,
                                  fast::pv_rows_avx512<1>,
                                  fast::pv_rows_avx512<2>,
                                  fast::pv_rows_avx512<3>,
                                  fast::pv_rows_avx512<4>,
                                  fast::pv_rows_avx512<5>,
                                  fast::pv_rows_avx512<6>,
                                  fast::pv_rows_avx512<7>,
                                  fast::pv_rows_avx512<8>};

// P·V for the active rows, 4 (AVX2) or 8 (AVX-512) rows per register block. P is key-major
// (st[c * bq + r]): consecutive rows are read in place, others are first interleaved into pbuf.
void accumulate_pv(const Plan& pl, Scratch& s, const float* v, int64_t ldv, int64_t keys) {
  const int block = pl.avx512 ? 8 : 4;
  const int64_t n = static_cast<int64_t>(s.active.size());
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int rows = static_cast<int>(std::min<int64_t>(block, n - i0));
    const int32_t* r = &s.active[i0];
    float* acc[8];
    float alpha[8];
    for (int i = 0; i < rows; ++i) {
      acc[i] = s.acc + r[i] * pl.Dp;
      alpha[i] = s.alpha[r[i]];
    }
    const float* p = s.st + r[0];
    int64_t ldp = pl.bq;
    if (r[rows - 1] - r[0] != rows - 1) {  // rows are ascending: not consecutive, gather
      for (int i = 0; i < rows; ++i)
        for (int64_t c = 0; c < keys; ++c) s.pbuf[c * block + i] = s.st[c * pl.bq + r[i]];
      p = s.pbuf;
      ldp = block;
    }
    (pl.avx512 ? kPvAvx512 : kPvAvx2)[rows](p, ldp, v, ldv, keys, pl.Dp, acc, alpha);
  }
}

int64_t elem_bytes(Elem e) {
  switch (e) {
    case Elem::kF32:
      return 4;
    case Elem::kI8:
      return 1;
    default:
      return 2;
  }
}

// Asks for the first `width` elements of rows [first, first + count) to be brought into L2.
void prefetch_rows(const Plane& plane, int64_t first, int64_t count, int64_t width) {
  const int64_t bytes = width * elem_bytes(plane.elem);
  for (int64_t n = first; n < first + count; ++n) {
    const char* row = static_cast<const char*>(plane.row(n));
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(row + off, _MM_HINT_T1);
  }
}

// Sets st[c][r] = -inf where key key0 + c is outside row row0 + r's band: with
// d = key0 + c - row0, rows r < d - hi (right of the diagonal or the window: a prefix of each
// key-major line) and rows r > d - lo (left of the window: a suffix).
void apply_band_mask(const Plan& pl, Scratch& s, int64_t row0, int64_t key0, int64_t keys,
                     int64_t rows) {
  for (int64_t c = 0; c < keys; ++c) {
    const int64_t d = key0 + c - row0;
    const int64_t prefix = std::clamp<int64_t>(d - pl.band.hi, 0, rows);
    const int64_t suffix = std::clamp<int64_t>(d - pl.band.lo + 1, prefix, rows);
    float* line = s.st + c * pl.bq;
    std::fill(line, line + prefix, kNegInf);
    std::fill(line + suffix, line + rows, kNegInf);
  }
}

// Applies the attention mask to a partial tile (cpu/attn_mask.h): st[c][r] = -inf where the pair
// is hidden (key padding, a false bool, an additive -inf), else += value · log2(e). A value whose
// product leaves the float range is held at -FLT_MAX: SDPA keeps a finite mask value finite (a
// row of torch.finfo.min values attends uniformly), and -inf would make it a hidden pair.
void apply_attn_mask(const Plan& pl, Scratch& s, int64_t b, int64_t h, int64_t row0,
                     int64_t key0, int64_t keys, int64_t rows) {
  const int64_t key_end = pl.attn.key_end(b);
  const float log2e = static_cast<float>(kLog2e);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < keys; ++c) {
      float& x = s.st[c * pl.bq + r];
      const float add = key0 + c < key_end ? pl.attn.value(b, h, row0 + r, key0 + c) : kNegInf;
      x = add == kNegInf ? kNegInf
                         : x + std::max(add * log2e, -std::numeric_limits<float>::max());
    }
}

// One (batch, query head, query block) task. counters[0/1] get visited / skipped pairs.
void attend_block(const Plan& pl, Scratch& s, int64_t b, int64_t h, int64_t qb,
                  unsigned long long counters[2]) {
  const detail::Problem& p = *pl.p;
  const int64_t Nq = p.shape.seq_q, Nk = p.shape.seq_k, D = pl.D, bq = pl.bq, bk = pl.bk;
  const int64_t hkv = h / (p.shape.heads_q / p.shape.heads_kv);
  const int64_t row0 = qb * bq, rows = std::min(bq, Nq - row0), rows16 = round_up(rows, 16);
  const float lambda = p.opts.pv_threshold.at(h);

  // Q block → qt[d * bq + r] (transposed so that the score GEMM reads rows as vectors).
  Plane qplane, kplane, vplane;
  float q_mul = static_cast<float>(pl.score_log2);
  if (pl.quant) {
    const QuantizedInputs& qi = *pl.quant;
    qplane = {reinterpret_cast<const char*>(&qi.q[((b * p.shape.heads_q + h) * Nq) * D]), D,
              Elem::kI8};
    kplane = {reinterpret_cast<const char*>(&qi.k[((b * p.shape.heads_kv + hkv) * Nk) * D]), D,
              Elem::kI8};
    vplane = pl.fp8_pv ? Plane{reinterpret_cast<const char*>(
                                   &qi.v[((b * p.shape.heads_kv + hkv) * Nk) * D]),
                               D * static_cast<int64_t>(sizeof(float)), Elem::kF32}
                       : view_plane(p.v, b, hkv);
    q_mul = 1.0f;  // codes stay integers; the scales multiply the scores per tile
    const int64_t bh = b * p.shape.heads_q + h;
    for (int64_t r = 0; r < rows16; ++r)  // rows past the block's end: factor 0, scores 0
      s.qfactor[r] = r < rows ? static_cast<float>(double(qi.q_scale_at(bh, row0 + r)) *
                                                   pl.score_log2)
                              : 0.0f;
  } else {
    qplane = view_plane(p.q, b, h);
    kplane = view_plane(p.k, b, hkv);
    vplane = view_plane(p.v, b, hkv);
  }
  // Eight rows at a time: widen into rows8, then transpose 8×8 blocks in registers.
  for (int64_t r0 = 0; r0 < rows16; r0 += 8) {
    for (int64_t i = 0; i < 8; ++i) {
      float* line = s.rows8 + i * pl.Dp;
      if (r0 + i < rows)
        fast::load_row(qplane.row(row0 + r0 + i), qplane.elem, D, q_mul, line);
      else
        std::fill(line, line + D, 0.0f);
    }
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) fast::transpose_8x8(s.rows8 + d, pl.Dp, s.qt + d * bq + r0, bq);
    for (; d < D; ++d)
      for (int64_t i = 0; i < 8; ++i) s.qt[d * bq + r0 + i] = s.rows8[i * pl.Dp + d];
  }
  std::fill(s.m, s.m + bq, kNegInf);
  std::fill(s.l, s.l + bq, 0.0f);
  std::fill(s.acc, s.acc + rows16 * pl.Dp, 0.0f);

  const int64_t mrow = pl.mask->row(b, h, qb);
  const int32_t count = pl.mask->counts[mrow];
  const int32_t* kept = pl.mask->indices + pl.mask->row_begin(mrow);
  const detail::BlockRange allowed = detail::allowed_key_blocks(
      qb, static_cast<int>(bq), static_cast<int>(bk), pl.band, Nq, Nk);
  const int64_t groups = detail::ceil_div(rows, pl.group);
  // fp32 rows are used where they lie: K when a tile fills whole 8-key register blocks (the
  // tail tile is copied and zero-padded), V when no zero pad columns are needed (D == Dp).
  const bool k_in_place = kplane.elem == Elem::kF32;
  const bool v_in_place = vplane.elem == Elem::kF32 && D == pl.Dp;
  for (int32_t t = 0; t < count; ++t) {
    const int64_t j = kept[t];
    counters[0] += groups;
    if (!allowed.contains(j)) {  // causality or the window hides the whole tile: all groups skip
      counters[1] += groups;
      continue;
    }
    const int64_t key0 = j * bk, keys = std::min(bk, Nk - key0), keys8 = round_up(keys, 8);
    // The attention mask's class of this tile: one that it hides wholly is skipped like a tile
    // outside the band (its scores are never computed), one it leaves untouched runs plain.
    const TileClass cls = pl.attn.active()
                              ? pl.attn.classify(b, h, row0, row0 + rows, key0, key0 + keys,
                                                 pl.band)
                              : TileClass::kPlain;
    if (cls == TileClass::kSkipped) {
      counters[1] += groups;
      continue;
    }
    // Kept tiles are scattered: fetch the next one while this one is computed.
    if (t + 1 < count && allowed.contains(kept[t + 1])) {
      const int64_t next0 = kept[t + 1] * bk, next_keys = std::min(bk, Nk - next0);
      prefetch_rows(kplane, next0, next_keys, D);
      prefetch_rows(vplane, next0, next_keys, D);
    }
    const float* ktile = s.k;
    int64_t ldk = D;
    if (k_in_place && keys == keys8) {
      ktile = static_cast<const float*>(kplane.row(key0));
      ldk = kplane.row_bytes / static_cast<int64_t>(sizeof(float));
    } else {
      for (int64_t c = 0; c < keys; ++c)
        fast::load_row(kplane.row(key0 + c), kplane.elem, D, 1.0f, s.k + c * D);
      std::fill(s.k + keys * D, s.k + keys8 * D, 0.0f);
    }
    if (pl.avx512)
      fast::scores_tile_avx512(s.qt, bq, ktile, ldk, D, keys8, rows16, s.st, bq);
    else
      fast::scores_tile(s.qt, bq, ktile, ldk, D, keys8, rows16, s.st, bq);
    if (pl.quant) {  // t = (Σ q8·k8) · (s_q · scale · log2(e)) · s_k, per row and key
      const int64_t bhk = b * p.shape.heads_kv + hkv;
      for (int64_t c = 0; c < keys; ++c) {
        const __m256 vk = _mm256_set1_ps(pl.quant->k_scale_at(bhk, key0 + c));
        for (int64_t r = 0; r < rows16; r += 8)
          _mm256_storeu_ps(s.st + c * bq + r,
                           _mm256_mul_ps(_mm256_mul_ps(vk, _mm256_loadu_ps(s.qfactor + r)),
                                         _mm256_loadu_ps(s.st + c * bq + r)));
      }
    }
    if (cls == TileClass::kPartial) apply_attn_mask(pl, s, b, h, row0, key0, keys, rows);
    if (key0 + keys - 1 - row0 > pl.band.hi || key0 - (row0 + rows - 1) < pl.band.lo)
      apply_band_mask(pl, s, row0, key0, keys, rows);

    // Tile row maxima m_loc (vertical over the key-major lines), NaN when a visible score is:
    // max_ps keeps a NaN only by operand order, so the NaN lanes are collected apart (an
    // all-ones lane is a NaN) and OR-ed in.
    for (int64_t r = 0; r < rows16; r += 8) {
      __m256 mx = _mm256_set1_ps(kNegInf), nan = _mm256_setzero_ps();
      for (int64_t c = 0; c < keys; ++c) {
        const __m256 x = _mm256_loadu_ps(s.st + c * bq + r);
        mx = _mm256_max_ps(mx, x);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      }
      _mm256_storeu_ps(s.mloc + r, _mm256_or_ps(mx, nan));
    }

    // λ rule per group; computed groups update m and collect their rows that see a key. A NaN
    // m_loc or m fails both tests (NaN compares false), so a NaN score is never skipped.
    s.active.clear();
    int64_t span_lo = rows, span_hi = 0;
    for (int64_t g0 = 0; g0 < rows; g0 += pl.group) {
      const int64_t g1 = std::min(rows, g0 + pl.group);
      bool skip = true;
      for (int64_t r = g0; r < g1 && skip; ++r)
        skip = s.mloc[r] == kNegInf || (s.m[r] != kNegInf && s.mloc[r] - s.m[r] <= -lambda);
      if (skip) {
        ++counters[1];
        continue;
      }
      for (int64_t r = g0; r < g1; ++r) {
        // NaN-propagating max (std::max(-inf, NaN) is -inf): a NaN m_loc makes m, l and acc NaN.
        const float m_new = std::isnan(s.mloc[r]) ? s.mloc[r] : std::max(s.m[r], s.mloc[r]);
        if (m_new == kNegInf) continue;  // the row has seen no key yet and none here
        s.alpha[r] = s.m[r] == kNegInf ? 0.0f : std::exp2(s.m[r] - m_new);
        s.m[r] = m_new;
        s.active.push_back(static_cast<int32_t>(r));
      }
      span_lo = std::min(span_lo, g0);
      span_hi = g1;
    }
    if (s.active.empty()) continue;

    // p = 2^(t − m_new) over the computed span (8-aligned), times kPScale with FP8 P·V (1 is
    // exact), then row sums.
    const int64_t lo8 = span_lo / 8 * 8, hi8 = round_up(span_hi, 8);
    const __m256 p_scale = _mm256_set1_ps(pl.fp8_pv ? static_cast<float>(kPScale) : 1.0f);
    for (int64_t c = 0; c < keys; ++c) {
      float* line = s.st + c * bq;
      for (int64_t r = lo8; r < hi8; r += 8) {
        const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(line + r), _mm256_loadu_ps(s.m + r));
        _mm256_storeu_ps(line + r, _mm256_mul_ps(fast::exp2_ps(x), p_scale));
      }
    }
    // The FP8 P·V product sees P in e4m3, and l sums that P (the GPU kernel forms l with the
    // same MMA, P times a column of ones).
    if (pl.fp8_pv)
      for (int64_t c = 0; c < keys; ++c) round_to_e4m3(s.st + c * bq + lo8, hi8 - lo8);
    for (int64_t r = lo8; r < hi8; r += 8) {
      __m256 sum = _mm256_setzero_ps();
      for (int64_t c = 0; c < keys; ++c)
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(s.st + c * bq + r));
      _mm256_storeu_ps(s.rowsum + r, sum);
    }
    for (int32_t r : s.active) s.l[r] = s.l[r] * s.alpha[r] + s.rowsum[r];

    if (v_in_place) {
      accumulate_pv(pl, s, static_cast<const float*>(vplane.row(key0)),
                    vplane.row_bytes / static_cast<int64_t>(sizeof(float)), keys);
    } else {
      for (int64_t c = 0; c < keys; ++c)
        fast::load_row(vplane.row(key0 + c), vplane.elem, D, 1.0f, s.v + c * pl.Dp);
      accumulate_pv(pl, s, s.v, pl.Dp, keys);
    }
  }

  // o = acc / l (0 for a row without keys); lse = ln2 · (m + log2 l), in quantized modes plus
  // the smoothing's shift (cpu/quantize.h), with FP8 P·V less ln(kPScale). l = 0 exactly when
  // the row saw no key (its acc was never touched); a NaN l is not 0, so o and lse come out NaN.
  const Elem out_elem = elem_of(pl.o.dtype);
  const int64_t es = static_cast<int64_t>(dtype_size(pl.o.dtype));
  for (int64_t r = 0; r < rows; ++r) {
    const bool empty = s.l[r] == 0.0f;
    void* dst = static_cast<char*>(pl.o.data) + pl.o.offset(b, h, row0 + r, 0) * es;
    fast::store_row(s.acc + r * pl.Dp, D, empty ? 0.0f : 1.0f / s.l[r], out_elem, dst);
    if (pl.extras.lse == nullptr) continue;
    double lse = kNegInf;
    if (!empty) {
      lse = kLn2 * (double(s.m[r]) + std::log2(double(s.l[r])));
      if (pl.quant) lse += lse_shift(p, *pl.quant, b, h, row0 + r);
      if (pl.fp8_pv) lse -= kLn2 * std::log2(kPScale);
    }
    pl.extras.lse[(b * p.shape.heads_q + h) * Nq + row0 + r] = static_cast<float>(lse);
  }
}

}  // namespace

Status attention_fast(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                      const AttentionExtras& extras, int num_threads) {
  if (!detail::quantizes_qk(p.opts.quant))
    return attention_fast_with(p, mask, o, extras, num_threads, nullptr);
  const QuantizedInputs quantized = quantize_inputs(p);
  return attention_fast_with(p, mask, o, extras, num_threads, &quantized);
}

Status attention_fast_with(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                           const AttentionExtras& extras, int num_threads,
                           const QuantizedInputs* quantized) {
  Plan pl;
  pl.p = &p;
  pl.mask = &mask;
  pl.quant = quantized;
  pl.fp8_pv = quantized != nullptr && detail::fp8_pv(p.opts.quant);
  pl.o = o;
  pl.extras = extras;
  pl.D = p.shape.head_dim;
  pl.Dp = round_up(pl.D, 32);  // whole register blocks of either ISA
  pl.bq = p.opts.block_q;
  pl.bk = p.opts.block_k;
  pl.group = p.opts.pv_group_rows;
  pl.nq = mask.num_q_blocks();
  pl.band = p.band();
  pl.attn = MaskReader(p.attn_mask, p.shape.seq_k);
  pl.score_log2 = double(p.scale) * kLog2e;
  pl.avx512 = fast::use_avx512();

  const int64_t heads = p.shape.heads_q, tasks = p.shape.batch * heads * pl.nq;
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  bool out_of_memory = false;
#pragma omp parallel num_threads(threads)
  {
    Scratch scratch(pl);
    if (scratch.mem == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      if (scratch.mem == nullptr) continue;
      const int64_t qb = task % pl.nq, bh = task / pl.nq;
      unsigned long long counters[2] = {0, 0};
      attend_block(pl, scratch, bh / heads, bh % heads, qb, counters);
      if (extras.pv_counters) {
        unsigned long long* dst = extras.pv_counters + (bh % heads) * 2;
#pragma omp atomic
        dst[0] += counters[0];
#pragma omp atomic
        dst[1] += counters[1];
      }
    }
  }
  if (out_of_memory)
    return Status::internal("attention_fast: could not allocate per-thread scratch memory");
  return Status::ok();
}

}  // namespace sparge::cpu
