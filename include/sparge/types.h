// Public value types: tensor views, options, block masks, execution context.
//
// Nothing here depends on CUDA or PyTorch. All types are plain views or values; the library
// never takes ownership of caller memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "sparge/option_list.h"

namespace sparge {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class Device : int { kCPU = 0, kCUDA = 1 };

// How a 4-D attention tensor is laid out when it is built from a contiguous buffer.
// HND = [batch, heads, tokens, head_dim]; NHD = [batch, tokens, heads, head_dim].
// A TensorView always stores per-axis strides, so any other stride pattern works too.
enum class Layout : int { kHND = 0, kNHD = 1 };

const char* dtype_name(DType t);
std::size_t dtype_size(DType t);

// A non-owning view of a 4-D tensor indexed logically as (batch, head, token, channel).
// Strides are in elements, one per logical axis, whatever the physical order is.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCPU;
  int device_index = 0;
  int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
  int64_t stride_batch = 0, stride_head = 0, stride_token = 0, stride_dim = 1;
  // Number of elements reachable from `data` (the allocation), or -1 when unknown.
  // When known, validation rejects strides that would step outside it.
  int64_t capacity = -1;

  // A contiguous tensor in the given layout. For kNHD the dimensions are still passed in
  // logical order (batch, heads, tokens, head_dim); only the strides differ.
  static TensorView contiguous(void* data, DType dtype, Layout layout, int64_t batch,
                               int64_t heads, int64_t tokens, int64_t head_dim,
                               Device device = Device::kCPU, int device_index = 0);

  int64_t offset(int64_t b, int64_t h, int64_t n, int64_t d) const {
    return b * stride_batch + h * stride_head + n * stride_token + d * stride_dim;
  }
  int64_t numel() const { return batch * heads * tokens * head_dim; }
};

// The enums and fields below are expanded from include/sparge/option_list.h, where each one
// is written once with its default and meaning.
#define SPARGE_CXX_ENUMERATOR(kName, c_name, code, py_name, doc) kName = code,
enum class CausalAlign : int { SPARGE_CAUSAL_ALIGN_VALUES(SPARGE_CXX_ENUMERATOR) };
enum class SelectMode : int { SPARGE_SELECT_MODE_VALUES(SPARGE_CXX_ENUMERATOR) };
enum class EstimateMode : int { SPARGE_ESTIMATE_MODE_VALUES(SPARGE_CXX_ENUMERATOR) };
enum class QuantMode : int { SPARGE_QUANT_MODE_VALUES(SPARGE_CXX_ENUMERATOR) };
enum class Backend : int { SPARGE_BACKEND_VALUES(SPARGE_CXX_ENUMERATOR) };
#undef SPARGE_CXX_ENUMERATOR

// A threshold that is either one value for every head or one value per query head.
// `per_head` (host memory, length = query heads) wins when non-null; the caller keeps it alive.
struct HeadParam {
  float value = 0.0f;
  const float* per_head = nullptr;
  float at(int64_t head) const { return per_head ? per_head[head] : value; }
};

// Every option of the method (include/sparge/option_list.h says what each means), validated in
// one place (src/common/validate.cc). The defaults are estimate auto (sampled rows at prefill),
// TopCdf 0.98, sim 0.1, lambda 50, blocks 128x64, exact (docs/method.md, "The defaults").
struct SparseOptions {
#define SPARGE_CXX_FLOAT(name, dflt, doc) float name = dflt;
#define SPARGE_CXX_BOOL(name, dflt, doc) bool name = dflt;
#define SPARGE_CXX_INT(name, dflt, doc) int name = dflt;
#define SPARGE_CXX_ENUM(name, Type, dflt, doc) Type name = Type::dflt;
#define SPARGE_CXX_HEAD(name, dflt, doc) HeadParam name{dflt};
  SPARGE_OPTIONS(SPARGE_CXX_FLOAT, SPARGE_CXX_BOOL, SPARGE_CXX_INT, SPARGE_CXX_ENUM,
                 SPARGE_CXX_HEAD)
#undef SPARGE_CXX_FLOAT
#undef SPARGE_CXX_BOOL
#undef SPARGE_CXX_INT
#undef SPARGE_CXX_ENUM
#undef SPARGE_CXX_HEAD
};

// One option as the other layers see it at run time (bindings, command line, docs, tests).
struct OptionInfo {
  const char* name;
  const char* kind;     // "float", "bool", "int", "enum" or "head" (float or one per query head)
  double default_value;  // enums: the default's code
  const char* enum_type;             // enums: "CausalAlign", ...; else nullptr
  std::vector<const char*> choices;  // enums: the Python names in code order
  const char* doc;
};
// The fields of SparseOptions in declaration order, with the defaults of SparseOptions{}.
const std::vector<OptionInfo>& option_table();
// Python/CLI names of enum values ("top_left", "topk", "int8_fp8", "cpu"); nullptr when out of range.
const char* enum_name(CausalAlign v);
const char* enum_name(SelectMode v);
const char* enum_name(EstimateMode v);
const char* enum_name(QuantMode v);
const char* enum_name(Backend v);
// Parses those names; false (and *out unchanged) when `name` is none of them.
bool parse_enum(const char* name, CausalAlign* out);
bool parse_enum(const char* name, SelectMode* out);
bool parse_enum(const char* name, EstimateMode* out);
bool parse_enum(const char* name, QuantMode* out);
bool parse_enum(const char* name, Backend* out);
// All names of Backend's values, in code order (the other enums' are in option_table()).
std::vector<const char*> backend_names();

// Which (query block, key block) tiles are computed, per (batch, query head, query block) row
// r: `counts[r]` kept key blocks, listed in ascending order from indices[row_begin(r)]. Two
// storage forms, one type:
//  - padded (row_offsets null): every row has num_k_blocks slots, row r starts at
//    r * num_k_blocks. Memory grows with seq_q * seq_k, whatever the sparsity.
//  - compact (row_offsets set): CSR-like, as FlashInfer's block-sparse format. row_offsets
//    holds rows() + 1 nondecreasing entries from 0; row r owns the slots
//    [row_offsets[r], row_offsets[r + 1]) of `indices` (row_offsets[rows()] entries in all) and
//    lists its counts[r] <= that many blocks from the first. Memory grows with the kept tiles.
//    A row may own more slots than it fills, so Stage 1 can write into storage sized by a bound;
//    a caller's CSR arrays (indptr, indices) are a compact mask with counts[r] = indptr[r + 1] -
//    indptr[r]. Read by every backend's Stage 2 and written by every backend's Stage 1 (a row
//    that keeps more blocks than its slots fails the call, naming the row; on CUDA reading that
//    back synchronises the stream, for compact outputs only).
// The mask carries its geometry, so a kernel can reject a mask built for another tile shape.
// Memory is the caller's (host or device, see `device`).
struct BlockMask {
  int32_t* counts = nullptr;       // [batch, heads, num_q_blocks]
  int32_t* indices = nullptr;      // padded: [batch, heads, num_q_blocks, num_k_blocks]
  int64_t* row_offsets = nullptr;  // compact: [batch * heads * num_q_blocks + 1]; else null
  Device device = Device::kCPU;
  int device_index = 0;
  int64_t batch = 0, heads = 0;
  int64_t seq_q = 0, seq_k = 0;
  int block_q = 128, block_k = 64;

  int64_t num_q_blocks() const { return (seq_q + block_q - 1) / block_q; }
  int64_t num_k_blocks() const { return (seq_k + block_k - 1) / block_k; }
  int64_t rows() const { return batch * heads * num_q_blocks(); }
  int64_t row(int64_t b, int64_t h, int64_t qb) const {
    return (b * heads + h) * num_q_blocks() + qb;
  }
  bool compact() const { return row_offsets != nullptr; }
  // Where row r's indices start, and how many slots it owns. Read row_offsets, so host masks
  // only (a kernel reads its device copy of the same rule).
  int64_t row_begin(int64_t r) const { return compact() ? row_offsets[r] : r * num_k_blocks(); }
  int64_t row_slots(int64_t r) const {
    return compact() ? row_offsets[r + 1] - row_offsets[r] : num_k_blocks();
  }
};

// A BlockMask that owns host storage; `view()` hands out the non-owning BlockMask. Padded
// unless built by to_compact() / from_csr() (then `row_offsets` holds its rows' offsets).
struct HostBlockMask {
  std::vector<int32_t> counts, indices;
  std::vector<int64_t> row_offsets;  // empty for a padded mask
  BlockMask mask;

  HostBlockMask() = default;
  HostBlockMask(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k, int block_q,
                int block_k);
  HostBlockMask(const HostBlockMask& other) { *this = other; }
  HostBlockMask& operator=(const HostBlockMask& other);
  BlockMask& view() { return mask; }
  const BlockMask& view() const { return mask; }
  // Dense 0/1 map [batch, heads, num_q_blocks, num_k_blocks]. Throws sparge::Error when the
  // contents are not a valid mask (a count or an index out of range, indices not ascending).
  std::vector<uint8_t> to_dense() const;
  // Build from a dense 0/1 map of the same shape. The constructor and from_dense throw
  // sparge::Error on block sizes < 1, negative extents, or a map of another size.
  static HostBlockMask from_dense(const std::vector<uint8_t>& dense, int64_t batch,
                                  int64_t heads, int64_t seq_q, int64_t seq_k, int block_q,
                                  int block_k);
  // The same tiles in the compact form, each row owning exactly its kept blocks (copies; this
  // mask may be either form). Throws sparge::Error on invalid contents, as to_dense.
  HostBlockMask to_compact() const;
  // The same tiles in the padded form.
  HostBlockMask to_padded() const;
  // A compact mask from CSR arrays: indptr [rows + 1] from 0, nondecreasing; row r keeps
  // indices[indptr[r] .. indptr[r + 1]). Throws sparge::Error when they are not a valid mask.
  static HostBlockMask from_csr(const std::vector<int64_t>& indptr,
                                const std::vector<int32_t>& indices, int64_t batch,
                                int64_t heads, int64_t seq_q, int64_t seq_k, int block_q,
                                int block_k);
};

// Optional outputs of Stage 1, per (batch, query head), each [batch, query heads] contiguous on
// the tensors' device; any may be null. Written, not accumulated.
struct Stage1Stats {
  // The selection's number each head used: select_value, or with target_error the chosen TopCdf
  // mass (1 when every allowed tile of the head is kept).
  float* select_value = nullptr;
  // target_error: the estimated relative L1 error of the chosen selection; NaN when off.
  float* error_estimate = nullptr;
  // Allowed tiles kept because the similarity gate forced them (query or key block not similar
  // to itself: sim_threshold), whatever the selection said. The rest of the kept tiles were
  // selected (or are the sink); forced / allowed says how much the gate overrode the selection.
  int64_t* forced_tiles = nullptr;
};

// Stage 1's view of the keys, kept beside a KV cache for decode and chunked prefill: per key
// block of `block_k` rows, the pooled (mean) row of the smoothed keys k − mean and the block's
// self-similarity, exactly as Stage 1 computes them from k (docs/method.md "Stage 1"), and the
// smoothing mean, per (batch, kv head). build_key_blocks fills it from the keys; then
// append_key_blocks extends it as tokens arrive, reading only the new keys and the rows of the
// last incomplete block. The mean stays the one build_key_blocks took (the blocks' values depend
// on it; a later build_key_blocks takes the current one). A sparse_attention call given it reads
// no key in Stage 1, whose cost then no longer grows with the cache's length times head_dim.
// Memory is the caller's, on the keys' device, in double (Stage 1's precision); `tokens` is set
// by build / append. The pooled rows are stored transposed, channel-major, as Stage 1's score
// kernels read them (along the key blocks).
struct KeyBlocks {
  double* pooled = nullptr;  // [batch, heads_kv, head_dim, max_blocks]
  double* sim = nullptr;     // [batch, heads_kv, max_blocks]
  double* mean = nullptr;    // [batch, heads_kv, head_dim]
  Device device = Device::kCPU;
  int device_index = 0;
  int64_t batch = 0, heads_kv = 0, head_dim = 0;
  int64_t max_blocks = 0;  // capacity: keys up to max_blocks * block_k
  int block_k = 64;        // must equal SparseOptions::block_k of the calls that read it
  int64_t tokens = 0;      // keys covered: the first `tokens` rows of the cache
};

// KeyBlocks with host storage for up to `max_tokens` keys; `view()` is the non-owning KeyBlocks.
// Throws sparge::Error on negative extents or block_k < 1.
struct HostKeyBlocks {
  std::vector<double> pooled, sim, mean;
  KeyBlocks blocks;

  HostKeyBlocks() = default;
  HostKeyBlocks(int64_t batch, int64_t heads_kv, int64_t head_dim, int64_t max_tokens,
                int block_k);
  HostKeyBlocks(const HostKeyBlocks& other) { *this = other; }
  HostKeyBlocks& operator=(const HostKeyBlocks& other);
  KeyBlocks& view() { return blocks; }
  const KeyBlocks& view() const { return blocks; }
};

// The element type of an attention mask: a boolean (one byte per element, nonzero = the query
// may attend the key: SDPA's bool mask), or an additive float mask added to the scores before the
// softmax (in natural-log units, as SDPA's float mask; -inf hides the key).
enum class MaskDType : int { kBool = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };
const char* mask_dtype_name(MaskDType t);
std::size_t mask_dtype_size(MaskDType t);

// An optional attention mask, an input beside q, k and v (scaled_dot_product_attention's
// attn_mask), in two forms that may be combined (a pair is visible iff both allow it, and the
// causal flag and the window too):
//  - `data`: a dense mask indexed (batch, head, query, key), broadcastable to [B, Hq, Nq, Nk]:
//    batch is 1 or B, heads 1 or Hq (query heads), seq_q 1 or Nq, seq_k = Nk; an axis of
//    extent 1 is broadcast (its stride is not read). Strides in elements, any order, >= 0, so
//    a [B, Nk] key-padding mask is batch = B, heads = 1, seq_q = 1 with no copy.
//  - `key_lengths`: per batch entry, the number of leading keys every query may see (keys
//    key_lengths[b] .. Nk - 1 are padding): [B] int32 in [0, Nk], on the tensors' device. The
//    cheap form of a right-padded batch: no mask memory is read, and tiles are classified by
//    arithmetic. The causal/window band keeps its alignment to the full Nk. The CUDA backend
//    takes it (device memory; values outside [0, Nk] are clamped there, not checked) but no
//    dense `data` yet.
// A query row that sees no key gets zeros and lse = -inf (PyTorch >= 2.5's SDPA returns zeros for
// such rows too). An additive -inf hides a key; any finite value, however negative, does not.
struct AttentionMask {
  const void* data = nullptr;  // null: no dense mask
  MaskDType dtype = MaskDType::kBool;
  Device device = Device::kCPU;
  int device_index = 0;
  int64_t batch = 1, heads = 1, seq_q = 1, seq_k = 0;
  int64_t stride_batch = 0, stride_head = 0, stride_q = 0, stride_k = 1;
  // Number of elements reachable from `data`, or -1 when unknown (as TensorView::capacity).
  int64_t capacity = -1;
  const int32_t* key_lengths = nullptr;  // null: every key is real

  bool empty() const { return data == nullptr && key_lengths == nullptr; }
  int64_t offset(int64_t b, int64_t h, int64_t r, int64_t c) const {
    return (batch > 1 ? b * stride_batch : 0) + (heads > 1 ? h * stride_head : 0) +
           (seq_q > 1 ? r * stride_q : 0) + c * stride_k;
  }
};

// Optional outputs of the attention call. Pointers live on the same device as the output.
struct AttentionExtras {
  // Natural-log log-sum-exp of each query row, fp32 [batch, query heads, seq_q] contiguous;
  // -inf for rows that see no key.
  float* lse = nullptr;
  // Per query head, 64-bit counters, accumulated across calls (the caller zeroes them):
  // [h * 2 + 0] = (row group, key tile) pairs visited, [h * 2 + 1] = pairs whose P·V was skipped.
  unsigned long long* pv_counters = nullptr;
  // Stage 1's per-head outputs (sparse_attention only; block_sparse_attention has no Stage 1).
  Stage1Stats stage1;
};

// Where and how to run: CUDA stream (cudaStream_t as void*), caller workspace, backend.
struct ExecContext {
  void* stream = nullptr;
  void* workspace = nullptr;         // required on CUDA (see workspace_size); unused on CPU
  std::size_t workspace_bytes = 0;
  Backend backend = Backend::kAuto;
  int num_threads = 0;               // CPU: 0 = OpenMP default
};

// Host-side summary of a mask and a run. sparsity() is the `sparsity` of docs/bench-schema.md:
// skipped tiles over the tiles dense (or causal) attention computes (docs/method.md).
struct AttentionStats {
  int64_t tiles_dense = 0;     // tiles dense (or causal) attention computes
  int64_t tiles_computed = 0;  // tiles the mask keeps (within the causal region)
  unsigned long long pv_visited = 0, pv_skipped = 0;
  double sparsity() const {
    return tiles_dense ? 1.0 - double(tiles_computed) / double(tiles_dense) : 0.0;
  }
  double pv_skip_fraction() const {
    return pv_visited ? double(pv_skipped) / double(pv_visited) : 0.0;
  }
};

}  // namespace sparge
