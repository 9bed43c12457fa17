// libFuzzer target: host block masks on hostile contents and geometry.
//
//   * sparge_block_sparse_attention with a fuzzed host mask: counts and indices arrays sized
//     from the mask's geometry, holding any counts (negative, past the key blocks) and any
//     indices (out of range, repeated, descending). Validation must reject every bad mask before
//     the attention reads it; a good one runs.
//   * the same in the compact form (row_offsets): rows packed with spare slots, offsets valid or
//     one of them anything within the packed array (decreasing, negative, not from 0).
//   * the C++ host helpers of include/sparge/sparge.h on the same masks: HostBlockMask::from_dense
//     (dense maps of the right and of a wrong size), to_dense, to_compact / to_padded (round
//     trips exact), from_csr, mask_stats and fill_dense_mask.
// Tensors are tiny and contiguous (fuzz_c_abi covers strides). Any crash, sanitizer report or
// exception other than sparge::Error is a finding.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "fuzz_input.h"
#include "sparge/sparge.h"
#include "sparge/sparge_c.h"

namespace {

using sparge_fuzz::hostile_int;
using sparge_fuzz::hostile_int64;

constexpr int kBlocks[] = {16, 32, 64, 128, 256};

// Geometry: valid block sizes and small extents, or (rarely) one hostile field.
sparge::BlockMask geometry(FuzzedDataProvider& in) {
  sparge::BlockMask m;
  m.batch = in.ConsumeIntegralInRange(1, 2);
  m.heads = in.ConsumeIntegralInRange(1, 3);
  m.seq_q = in.ConsumeIntegralInRange(1, 300);
  m.seq_k = in.ConsumeIntegralInRange(1, 300);
  m.block_q = kBlocks[in.ConsumeIntegralInRange(0, 4)];
  m.block_k = kBlocks[in.ConsumeIntegralInRange(0, 4)];
  if (in.ConsumeIntegralInRange(0, 7) == 0) {
    switch (in.ConsumeIntegralInRange(0, 5)) {
      case 0:
        m.batch = hostile_int64(in) % 4;
        break;
      case 1:
        m.heads = hostile_int64(in) % 4;
        break;
      case 2:
        m.seq_q = hostile_int64(in) % 400;
        break;
      case 3:
        m.seq_k = hostile_int64(in) % 400;
        break;
      case 4:
        m.block_q = hostile_int(in);
        break;
      default:
        m.block_k = hostile_int(in);
        break;
    }
  }
  return m;
}

// Whether the geometry describes arrays a test can allocate (every extent >= 0, blocks >= 1).
bool sane(const sparge::BlockMask& m) {
  return m.batch >= 0 && m.heads >= 0 && m.seq_q >= 0 && m.seq_k >= 0 && m.block_q >= 1 &&
         m.block_k >= 1;
}

// The compact form of the fuzzed rows: each row's first min(count, nk) slots of the padded
// arrays and 0-2 spare slots of junk, packed; then, half the time, one offset replaced by any
// value the packed array can hold (so even a bad offset points inside it, as the contract wants
// of a caller: indices hold row_offsets[rows] entries).
struct Compact {
  std::vector<int64_t> offsets;
  std::vector<int32_t> indices;
};

Compact pack(FuzzedDataProvider& in, int64_t rows, int64_t nk, const std::vector<int32_t>& counts,
             const std::vector<int32_t>& padded) {
  Compact c;
  c.offsets.assign(static_cast<size_t>(rows + 1), 0);
  for (int64_t r = 0; r < rows; ++r) {
    c.offsets[r] = static_cast<int64_t>(c.indices.size());
    const int64_t listed = std::clamp<int64_t>(counts[r], 0, nk);
    for (int64_t t = 0; t < listed; ++t) c.indices.push_back(padded[r * nk + t]);
    for (int spare = in.ConsumeIntegralInRange(0, 2); spare > 0; --spare)
      c.indices.push_back(in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(nk)));
  }
  c.offsets[rows] = static_cast<int64_t>(c.indices.size());
  if (in.ConsumeBool())
    c.offsets[in.ConsumeIntegralInRange<int64_t>(0, rows)] =
        in.ConsumeIntegralInRange<int64_t>(-2, static_cast<int64_t>(c.indices.size()));
  if (c.indices.empty()) c.indices.push_back(0);  // a valid pointer even with no slots
  return c;
}

void host_helpers(FuzzedDataProvider& in, const sparge::BlockMask& g,
                  const std::vector<int32_t>& counts, const std::vector<int32_t>& indices,
                  Compact* compact) {
  // fill_dense_mask and mask_stats on the caller's arrays, as they are.
  std::vector<int32_t> c = counts, idx = compact ? compact->indices : indices;
  sparge::BlockMask m = g;
  m.counts = c.data();
  m.indices = idx.data();
  m.row_offsets = compact ? compact->offsets.data() : nullptr;
  const bool causal = in.ConsumeBool();
  const auto align = static_cast<sparge::CausalAlign>(in.ConsumeIntegralInRange(0, 2));
  (void)sparge::mask_stats(m, causal, align);
  if (in.ConsumeBool()) (void)sparge::fill_dense_mask(m, causal, align);
  if (!sane(g)) return;

  // from_dense / to_dense round trip on a dense map of the geometry's size (or off by some).
  const int64_t rows = g.rows(), nk = g.num_k_blocks();
  int64_t n = rows * nk;
  if (in.ConsumeIntegralInRange(0, 7) == 0)
    n = std::max<int64_t>(0, n + in.ConsumeIntegralInRange(-3, 3));
  std::vector<uint8_t> dense(static_cast<size_t>(n));
  for (uint8_t& x : dense) x = in.ConsumeBool();
  try {
    sparge::HostBlockMask h = sparge::HostBlockMask::from_dense(dense, g.batch, g.heads, g.seq_q,
                                                                g.seq_k, g.block_q, g.block_k);
    if (n == rows * nk && h.to_dense() != dense) __builtin_trap();  // the round trip is exact
    if (n == rows * nk && (h.to_compact().to_dense() != dense ||
                           h.to_compact().to_padded().indices != h.indices))
      __builtin_trap();  // so are the form conversions
    if (compact) {  // CSR arrays as a caller hands them over
      (void)sparge::HostBlockMask::from_csr(compact->offsets, compact->indices, g.batch, g.heads,
                                            g.seq_q, g.seq_k, g.block_q, g.block_k)
          .to_compact();
    }
    // to_dense on contents that may be invalid: a mask the caller wrote by hand.
    if (c.size() == h.counts.size() && idx.size() == h.indices.size()) {
      h.counts = counts;
      h.indices = indices;
      h.mask.counts = h.counts.data();
      h.mask.indices = h.indices.data();
      (void)h.to_dense();
    }
  } catch (const sparge::Error&) {
    // the documented answer to a dense map or contents that do not fit the geometry
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const sparge::BlockMask g = geometry(in);
  int64_t rows = 0, nk = 0;
  if (sane(g)) {
    rows = g.rows();
    nk = g.num_k_blocks();
  }
  if (rows * nk > 4096) return 0;
  std::vector<int32_t> counts(static_cast<size_t>(std::max<int64_t>(rows, 1)));
  std::vector<int32_t> indices(static_cast<size_t>(std::max<int64_t>(rows * nk, 1)));
  const int style = in.ConsumeIntegralInRange(0, 2);
  for (int64_t r = 0; r < rows; ++r) {
    if (style == 0) {  // valid: an ascending subset
      int32_t c = 0;
      for (int64_t j = 0; j < nk; ++j)
        if (in.ConsumeBool()) indices[r * nk + c++] = static_cast<int32_t>(j);
      counts[r] = c;
    } else {  // anything near the valid range, or any int
      counts[r] = style == 1 ? in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(nk) + 1)
                             : in.ConsumeIntegral<int32_t>();
      for (int64_t j = 0; j < nk; ++j)
        indices[r * nk + j] = in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(nk));
    }
  }

  std::optional<Compact> compact;
  if (sane(g) && in.ConsumeIntegralInRange(0, 2) == 0) compact = pack(in, rows, nk, counts, indices);
  Compact* packed = compact ? &*compact : nullptr;

  if (in.ConsumeBool()) {
    host_helpers(in, g, counts, indices, packed);
    return 0;
  }

  // Attention through the C ABI: tensors of the problem the mask was meant for, HND contiguous.
  const int64_t batch = std::max<int64_t>(g.batch, 1), heads = std::max<int64_t>(g.heads, 1);
  const int64_t seq_q = std::clamp<int64_t>(g.seq_q, 1, 300),
                seq_k = std::clamp<int64_t>(g.seq_k, 1, 300);
  const int64_t head_dim = in.ConsumeBool() ? 16 : in.ConsumeIntegralInRange(1, 40);
  const int64_t shape_q[4] = {batch, heads, seq_q, head_dim};
  const int64_t shape_k[4] = {batch, heads, seq_k, head_dim};
  std::vector<float> q(static_cast<size_t>(batch * heads * seq_q * head_dim), 0.5f);
  std::vector<float> o(q.size()), lse(static_cast<size_t>(batch * heads * seq_q));
  std::vector<float> k(static_cast<size_t>(batch * heads * seq_k * head_dim), 0.25f), v(k);
  const auto tensor = [](float* p, const int64_t shape[4]) {
    sparge_tensor t{};
    t.data = p;
    t.dtype = SPARGE_F32;
    t.device = SPARGE_CPU;
    for (int i = 0; i < 4; ++i) t.shape[i] = shape[i];
    t.strides[3] = 1;
    t.strides[2] = shape[3];
    t.strides[1] = shape[2] * shape[3];
    t.strides[0] = shape[1] * shape[2] * shape[3];
    return t;
  };
  const sparge_tensor tq = tensor(q.data(), shape_q), tk = tensor(k.data(), shape_k),
                      tv = tensor(v.data(), shape_k), to = tensor(o.data(), shape_q);
  sparge_block_mask cm{};
  cm.counts = counts.data();
  cm.indices = packed ? packed->indices.data() : indices.data();
  cm.row_offsets = packed ? packed->offsets.data() : nullptr;
  cm.device = SPARGE_CPU;
  cm.batch = g.batch;
  cm.heads = g.heads;
  cm.seq_q = g.seq_q;
  cm.seq_k = g.seq_k;
  cm.block_q = g.block_q;
  cm.block_k = g.block_k;
  sparge_options opts = sparge_default_options();
  opts.block_q = g.block_q;
  opts.block_k = g.block_k;
  opts.causal = in.ConsumeBool();
  opts.causal_align = in.ConsumeIntegralInRange(0, 1);
  char err[128];
  sparge_block_sparse_attention(&tq, &tk, &tv, &cm, &opts, &to,
                                in.ConsumeBool() ? lse.data() : nullptr, nullptr, 0, nullptr, err,
                                sizeof(err));
  return 0;
}
