// libFuzzer target: the C ABI (include/sparge/sparge_c.h) on hostile arguments.
//
// The input decodes into shapes (tiny), strides (contiguous HND/NHD, padded, or hostile:
// negative, zero, overlapping, overflowing), dtype/device codes (valid or not), every field of
// sparge_options (expanded from option_list.h, so a new option is fuzzed without editing this
// file), an optional lse and mask, key blocks for the key-block entry points, and one entry
// point. Each tensor gets a host buffer of exactly
// the extent its strides claim; a claim too large to allocate is not passed at all, and a claim
// no buffer can hold (the extent overflows int64) gets a 1-element buffer, which a correct
// library must reject. So any ASan report is the library reading or writing where the caller
// said nothing lies. Return codes are not checked: an error is the expected answer to most
// inputs. A crash, a sanitizer report, or a hang is a finding.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "sparge/sparge_c.h"

namespace {

using sparge_fuzz::Buffer;
using sparge_fuzz::hostile_float;
using sparge_fuzz::hostile_int;
using sparge_fuzz::hostile_int64;
using sparge_fuzz::kMaxBytes;
using sparge_fuzz::wrap_add;
using sparge_fuzz::wrap_mul;

// Multiply-adds of one attention call above which an input is skipped (kept cheap under ASan).
constexpr int64_t kMaxWork = int64_t{1} << 22;

size_t elem_size(int dtype) { return dtype == SPARGE_F32 ? 4 : 2; }

struct Tensor {
  sparge_tensor t{};
  Buffer buf;
};

// Shape and strides of one tensor from the input; `shape` is the logical shape it should have.
// Returns false when its buffer would exceed kMaxBytes (the input is then skipped).
bool make_tensor(FuzzedDataProvider& in, const int64_t shape[4], int dtype, Tensor* out) {
  sparge_tensor& t = out->t;
  t.dtype = in.ConsumeIntegralInRange(0, 15) == 0 ? hostile_int(in) : dtype;
  const int dev = in.ConsumeIntegralInRange(0, 31);
  t.device = dev == 0 ? SPARGE_CUDA : dev == 1 ? hostile_int(in) : SPARGE_CPU;
  t.device_index = in.ConsumeIntegralInRange(0, 31) == 0 ? hostile_int(in) : 0;
  std::copy(shape, shape + 4, t.shape);
  if (in.ConsumeIntegralInRange(0, 15) == 0)
    t.shape[in.ConsumeIntegralInRange(0, 3)] = hostile_int64(in);
  const int64_t B = t.shape[0], H = t.shape[1], N = t.shape[2], D = t.shape[3];
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0:
    case 1:  // HND contiguous
      t.strides[3] = 1, t.strides[2] = D, t.strides[1] = wrap_mul(N, D);
      t.strides[0] = wrap_mul(H, N, D);
      break;
    case 2:  // NHD contiguous
      t.strides[3] = 1, t.strides[1] = D, t.strides[2] = wrap_mul(H, D);
      t.strides[0] = wrap_mul(N, H, D);
      break;
    case 3: {  // HND with padded rows and heads
      const int64_t pad = in.ConsumeIntegralInRange(1, 8);
      t.strides[3] = 1, t.strides[2] = wrap_add(D, pad);
      t.strides[1] = wrap_add(wrap_mul(N, t.strides[2]), pad);
      t.strides[0] = wrap_mul(H, t.strides[1]);
      break;
    }
    case 4:  // every stride small and arbitrary: zero, overlapping, transposed, negative
      for (int64_t& s : t.strides) s = in.ConsumeIntegralInRange<int64_t>(-4, 600);
      break;
    default:  // one stride hostile, the rest HND
      t.strides[3] = 1, t.strides[2] = D, t.strides[1] = wrap_mul(N, D);
      t.strides[0] = wrap_mul(H, N, D);
      t.strides[in.ConsumeIntegralInRange(0, 3)] = hostile_int64(in);
      break;
  }
  int64_t lo, hi;
  const size_t elem = elem_size(t.dtype);
  if (!sparge_fuzz::view_span(t.shape, t.strides, &lo, &hi)) {
    // Nothing valid can be described; a correct library rejects it before touching data.
    out->buf.fill(in, elem, elem);
    t.data = out->buf.bytes.data();
    return true;
  }
  if (hi - lo >= kMaxBytes / int64_t(elem)) return false;
  out->buf.fill(in, static_cast<size_t>(hi - lo + 1) * elem, elem);
  // The lowest offset sits at the buffer's start (a negative stride reaches below `data`).
  t.data = out->buf.bytes.data() - lo * int64_t(elem);
  return true;
}

// Every field of sparge_options: kept at its default or overwritten with a hostile value. The
// per-head arrays hold one float per query head, `heads` of them, as the header asks.
struct Options {
  sparge_options o = sparge_default_options();
  std::vector<std::vector<float>> per_head;

  void fuzz(FuzzedDataProvider& in, int64_t heads) {
    const bool touch_all = in.ConsumeBool();
    const auto change = [&] {
      return touch_all ? in.ConsumeBool() : in.ConsumeIntegralInRange(0, 7) == 0;
    };
    const auto head_array = [&]() -> const float* {
      if (heads < 1 || heads > 64 || !in.ConsumeBool()) return nullptr;
      per_head.emplace_back();
      for (int64_t h = 0; h < heads; ++h) per_head.back().push_back(hostile_float(in));
      return per_head.back().data();
    };
    per_head.reserve(8);  // the pointers handed out stay valid
#define FUZZ_FLOAT(name, dflt, doc) \
  if (change()) o.name = hostile_float(in);
#define FUZZ_INT(name, dflt, doc) \
  if (change()) o.name = hostile_int(in);
#define FUZZ_ENUM(name, Type, dflt, doc) \
  if (change()) o.name = in.ConsumeBool() ? in.ConsumeIntegralInRange(0, 2) : hostile_int(in);
#define FUZZ_HEAD(name, dflt, doc)          \
  if (change()) o.name = hostile_float(in); \
  if (change()) o.name##_per_head = head_array();
    SPARGE_OPTIONS(FUZZ_FLOAT, FUZZ_INT, FUZZ_INT, FUZZ_ENUM, FUZZ_HEAD)
#undef FUZZ_FLOAT
#undef FUZZ_INT
#undef FUZZ_ENUM
#undef FUZZ_HEAD
    if (in.ConsumeIntegralInRange(0, 63) == 0) o.struct_size = in.ConsumeIntegral<uint16_t>();
  }
};

// A host block mask with the given geometry (usually the problem's), its arrays sized from the
// geometry it claims; contents predicted-like (ascending) or arbitrary. False: too large.
struct Mask {
  sparge_block_mask m{};
  std::vector<int32_t> counts, indices;

  bool make(FuzzedDataProvider& in, const sparge_block_mask& geometry) {
    m = geometry;
    if (in.ConsumeIntegralInRange(0, 7) == 0) {
      switch (in.ConsumeIntegralInRange(0, 6)) {
        case 0:
          m.batch = hostile_int64(in);
          break;
        case 1:
          m.heads = hostile_int64(in);
          break;
        case 2:
          m.seq_q = hostile_int64(in);
          break;
        case 3:
          m.seq_k = hostile_int64(in);
          break;
        case 4:
          m.block_q = hostile_int(in);
          break;
        case 5:
          m.block_k = hostile_int(in);
          break;
        default:
          m.device = hostile_int(in);
          break;
      }
    }
    int64_t rows = 1, nk = 1;
    if (m.batch >= 0 && m.heads >= 0 && m.seq_q >= 0 && m.seq_k >= 0 && m.block_q > 0 &&
        m.block_k > 0 && m.batch <= 64 && m.heads <= 64 && m.seq_q <= 4096 && m.seq_k <= 4096) {
      rows = m.batch * m.heads * ((m.seq_q + m.block_q - 1) / m.block_q);
      nk = (m.seq_k + m.block_k - 1) / m.block_k;
    }
    if (rows * nk * 4 > kMaxBytes) return false;
    counts.assign(static_cast<size_t>(std::max<int64_t>(rows, 1)), 0);
    indices.assign(static_cast<size_t>(std::max<int64_t>(rows * nk, 1)), 0);
    const bool arbitrary = in.ConsumeIntegralInRange(0, 3) == 0;
    for (int64_t r = 0; r < rows; ++r) {
      int32_t c = 0;
      for (int64_t j = 0; j < nk; ++j)
        if (arbitrary ? true : in.ConsumeBool()) indices[r * nk + c++] = static_cast<int32_t>(j);
      counts[r] = c;
      if (arbitrary) {
        counts[r] = in.ConsumeIntegralInRange<int32_t>(-2, static_cast<int32_t>(nk) + 2);
        for (int64_t j = 0; j < nk; ++j)
          indices[r * nk + j] =
              in.ConsumeIntegralInRange<int32_t>(-2, static_cast<int32_t>(nk) + 1);
      }
    }
    m.counts = in.ConsumeIntegralInRange(0, 63) == 0 ? nullptr : counts.data();
    m.indices = indices.data();
    return true;
  }
};

// Key blocks (sparge_key_blocks) for the cache k: usually the geometry k has, sometimes one
// field hostile; the three arrays sized from the geometry they claim (when it can be allocated),
// `tokens` as a build left it, below it, or anything.
struct KeyBlocksArg {
  sparge_key_blocks kb{};
  std::vector<double> pooled, sim, mean;

  bool make(FuzzedDataProvider& in, int64_t batch, int64_t heads_kv, int64_t head_dim,
            int64_t seq_k, int block_k) {
    kb.device = SPARGE_CPU;
    kb.batch = batch, kb.heads_kv = heads_kv, kb.head_dim = head_dim;
    kb.block_k = block_k;
    kb.max_blocks = block_k > 0 ? (seq_k + block_k - 1) / block_k + in.ConsumeIntegralInRange(-1, 2)
                                : 1;
    kb.tokens = in.ConsumeBool() ? seq_k : in.ConsumeIntegralInRange<int64_t>(0, seq_k);
    if (in.ConsumeIntegralInRange(0, 7) == 0) {
      switch (in.ConsumeIntegralInRange(0, 7)) {
        case 0:
          kb.batch = hostile_int64(in);
          break;
        case 1:
          kb.heads_kv = hostile_int64(in);
          break;
        case 2:
          kb.head_dim = hostile_int64(in);
          break;
        case 3:
          kb.max_blocks = hostile_int64(in);
          break;
        case 4:
          kb.block_k = hostile_int(in);
          break;
        case 5:
          kb.tokens = hostile_int64(in);
          break;
        case 6:
          kb.device = hostile_int(in);
          break;
        default:
          kb.device = SPARGE_CUDA;
          break;
      }
    }
    // As for tensors: a claim that fits int64 gets arrays of exactly its extent (or the input is
    // skipped when too large); one that overflows, or a negative one, gets 1-element arrays,
    // which a correct library rejects before writing.
    int64_t heads = 1, blocks = 1, dim = 1, extent = 0;
    const bool fits = kb.batch > 0 && kb.heads_kv > 0 && kb.head_dim > 0 && kb.max_blocks > 0 &&
                      !__builtin_mul_overflow(kb.batch, kb.heads_kv, &extent) &&
                      !__builtin_mul_overflow(extent, kb.max_blocks, &extent) &&
                      !__builtin_mul_overflow(extent, kb.head_dim, &extent);
    if (fits) {
      if (extent > kMaxBytes / 8) return false;
      heads = kb.batch * kb.heads_kv, blocks = kb.max_blocks, dim = kb.head_dim;
    }
    pooled.assign(static_cast<size_t>(heads * blocks * dim), 0.0);
    sim.assign(static_cast<size_t>(heads * blocks), 0.0);
    mean.assign(static_cast<size_t>(heads * dim), 0.0);
    kb.pooled = pooled.data();
    kb.sim = in.ConsumeIntegralInRange(0, 63) == 0 ? nullptr : sim.data();
    kb.mean = mean.data();
    return true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int op = in.ConsumeIntegralInRange(0, 7);
  static const int64_t kHeadDims[] = {1, 3, 8, 16, 17, 32, 63, 64, 65, 128, 256, 257};
  const int64_t batch = in.ConsumeIntegralInRange(1, 2);
  const int64_t heads_kv = in.ConsumeIntegralInRange(1, 4);
  const int64_t heads_q = in.ConsumeBool() ? heads_kv * in.ConsumeIntegralInRange(1, 2)
                                           : in.ConsumeIntegralInRange(1, 4);
  const int64_t seq_q = in.ConsumeIntegralInRange(1, 300);
  const int64_t seq_k = in.ConsumeIntegralInRange(1, 300);
  const int64_t head_dim = in.ConsumeBool() ? kHeadDims[in.ConsumeIntegralInRange<size_t>(0, 11)]
                                            : in.ConsumeIntegralInRange(1, 300);
  if (batch * heads_q * seq_q * seq_k * head_dim > kMaxWork) return 0;
  const int dtype = in.ConsumeIntegralInRange(0, 2);

  const int64_t q_shape[4] = {batch, heads_q, seq_q, head_dim};
  const int64_t kv_shape[4] = {batch, heads_kv, seq_k, head_dim};
  Tensor q, k, v, o;
  if (!make_tensor(in, q_shape, dtype, &q) || !make_tensor(in, kv_shape, dtype, &k) ||
      !make_tensor(in, kv_shape, dtype, &v) || !make_tensor(in, q_shape, dtype, &o))
    return 0;
  Options opts;
  opts.fuzz(in, q.t.shape[1]);

  // lse: one float per (batch, query head, query row) of the shape q claims, or NULL.
  std::vector<float> lse;
  float* lse_ptr = nullptr;
  const int64_t* qs = q.t.shape;  // as claimed, which may differ from the intended shape
  if (in.ConsumeBool() && qs[0] >= 1 && qs[1] >= 1 && qs[2] >= 1 && qs[0] <= 64 && qs[1] <= 64 &&
      qs[2] <= 4096) {
    lse.assign(static_cast<size_t>(qs[0] * qs[1] * qs[2]), 0.0f);
    lse_ptr = lse.data();
  }
  sparge_block_mask geometry{};
  geometry.device = SPARGE_CPU;
  geometry.batch = batch;
  geometry.heads = heads_q;
  geometry.seq_q = seq_q;
  geometry.seq_k = seq_k;
  geometry.block_q = opts.o.block_q;
  geometry.block_k = opts.o.block_k;
  Mask mask;
  const bool with_mask = in.ConsumeBool();
  if ((with_mask || op == 1 || op == 2 || op == 7) && !mask.make(in, geometry)) return 0;

  KeyBlocksArg blocks;
  if (op >= 5 && !blocks.make(in, batch, heads_kv, head_dim, seq_k, opts.o.block_k)) return 0;

  // The message buffer: absent, empty, one byte, short (truncation) or roomy.
  static const size_t kErrLens[] = {0, 1, 7, 256};
  char err[256];
  const size_t err_len = kErrLens[in.ConsumeIntegralInRange<size_t>(0, 3)];
  char* err_ptr = err_len == 0 && in.ConsumeBool() ? nullptr : err;

  switch (op) {
    case 0:
      sparge_sparse_attention(&q.t, &k.t, &v.t, &opts.o, &o.t, lse_ptr, nullptr, 0, nullptr,
                              with_mask ? &mask.m : nullptr, err_ptr, err_len);
      break;
    case 1:
      sparge_predict_block_mask(&q.t, &k.t, &opts.o, &mask.m, nullptr, 0, nullptr, err_ptr,
                                err_len);
      break;
    case 2:
      sparge_block_sparse_attention(&q.t, &k.t, &v.t, &mask.m, &opts.o, &o.t, lse_ptr, nullptr, 0,
                                    nullptr, err_ptr, err_len);
      break;
    case 3: {  // and the masked size, with a hostile attention mask (its data is never read)
      sparge_workspace_size(&q.t, &k.t, &opts.o);
      static const uint8_t kMaskByte = 1;
      sparge_attn_mask am{};
      am.data = in.ConsumeBool() ? &kMaskByte : nullptr;
      am.dtype = in.ConsumeIntegralInRange(-1, 4);
      am.device = in.ConsumeIntegralInRange(-1, 2);
      for (int64_t& x : am.shape)
        x = in.ConsumeBool() ? hostile_int64(in) : in.ConsumeIntegralInRange<int64_t>(0, 300);
      for (int64_t& x : am.strides) x = hostile_int64(in);
      sparge_workspace_size_masked(&q.t, &k.t, in.ConsumeBool() ? &am : nullptr, &opts.o);
      sparge_workspace_size_caller_mask(&q.t, &k.t, in.ConsumeBool() ? &am : nullptr, &opts.o);
      break;
    }
    case 5:  // build, then append the same keys (or build again on a shorter claim)
      sparge_build_key_blocks(&k.t, in.ConsumeIntegralInRange(0, 63) ? &blocks.kb : nullptr,
                              nullptr, err_ptr, err_len);
      sparge_append_key_blocks(&k.t, &blocks.kb, nullptr, err_ptr, err_len);
      break;
    case 6:
      if (in.ConsumeBool()) sparge_build_key_blocks(&k.t, &blocks.kb, nullptr, err_ptr, err_len);
      sparge_sparse_attention_key_blocks(&q.t, &k.t, &v.t, nullptr, &blocks.kb, &opts.o, &o.t,
                                         lse_ptr, nullptr, 0, nullptr,
                                         with_mask ? &mask.m : nullptr, err_ptr, err_len);
      break;
    case 7:  // blocks pooled with the mean they hold, then Stage 1 from them alone
      if (in.ConsumeBool()) sparge_pool_key_blocks(&k.t, &blocks.kb, nullptr, err_ptr, err_len);
      sparge_predict_block_mask_key_blocks(&q.t, &k.t, nullptr,
                                           in.ConsumeIntegralInRange(0, 63) ? &blocks.kb : nullptr,
                                           &opts.o, &mask.m, nullptr, 0, nullptr, err_ptr, err_len);
      break;
    default: {
      // A field by name (a real one, or any bytes) and any value.
#define FUZZ_NAME(name, ...) #name,
      static const char* kNames[] = {
          SPARGE_OPTIONS(FUZZ_NAME, FUZZ_NAME, FUZZ_NAME, FUZZ_NAME, FUZZ_NAME)};
#undef FUZZ_NAME
      const size_t pick = in.ConsumeIntegralInRange<size_t>(0, std::size(kNames));
      const std::string name =
          pick < std::size(kNames) ? kNames[pick] : in.ConsumeRandomLengthString(32);
      sparge_options_set(&opts.o, name.c_str(), in.ConsumeFloatingPoint<double>(), err_ptr,
                         err_len);
      sparge_options_set_per_head(&opts.o, name.c_str(), nullptr, err_ptr, err_len);
      break;
    }
  }
  return 0;
}
