/* The options of Sparge, written once.
 *
 * Every layer is expanded from these lists, so adding an option is one line here plus its
 * validation (src/common/validate.cc) and its use:
 *   include/sparge/types.h      SparseOptions (C++ fields and defaults) and its enums
 *   include/sparge/sparge_c.h   sparge_options (C ABI) and the enum constants
 *   src/common/options.cc       option_table(): names, kinds, defaults and docs at run time,
 *                               enum names, the C ABI conversion
 *   python/csrc/binding.cc      the torch op schemas (one named, typed argument per option)
 *   python/sparge/_options.py   Python defaults and enum names, read from option_table()
 *   tools/cli_common.cc         the command line's defaults, read from SparseOptions{}
 * tests/cpu/test_options.cc and tests/python/test_options.py fail if a layer disagrees.
 *
 * Plain C preprocessor, so the C header can expand it too. Each list takes one macro per kind:
 *   FLOAT(name, default, doc)            one float
 *   BOOL(name, default, doc)             on/off (an int 0/1 in the C ABI)
 *   INT(name, default, doc)              one int
 *   ENUM(name, Type, default, doc)       an enum class value (its list below; an int in C)
 *   HEAD(name, default, doc)             a float for every query head, or one per head
 *                                        (HeadParam; in C a float and `const float* name_per_head`)
 * Enum lists take X(kCxxName, C_NAME, code, "python_name", doc); the C constant is SPARGE_<C_NAME>.
 */
#ifndef SPARGE_OPTION_LIST_H_
#define SPARGE_OPTION_LIST_H_

/* Causal alignment when Nq != Nk: query i may see key j iff j <= i + offset. */
#define SPARGE_CAUSAL_ALIGN_VALUES(X)                                                           \
  X(kTopLeft, CAUSAL_TOP_LEFT, 0, "top_left", "offset 0 (PyTorch SDPA's is_causal)")           \
  X(kBottomRight, CAUSAL_BOTTOM_RIGHT, 1, "bottom_right",                                      \
    "offset Nk - Nq (FlashAttention's: a prefill chunk attending to a KV cache that ends at "  \
    "the same position)")

/* How Stage 1 chooses key blocks per query block; `select_value` is the mode's one number. */
#define SPARGE_SELECT_MODE_VALUES(X)                                                            \
  X(kTopCdf, SELECT_TOPCDF, 0, "topcdf",                                                       \
    "keep the most probable key blocks until their predicted mass reaches select_value "       \
    "(inclusive); Python's cdf_threshold")                                                     \
  X(kTopK, SELECT_TOPK, 1, "topk",                                                             \
    "keep floor(select_value * allowed key blocks) blocks, at least one; Python's topk")

/* Where Stage 1's per-(query block, key block) mass comes from, before TopCdf / TopK selects. */
#define SPARGE_ESTIMATE_MODE_VALUES(X)                                                          \
  X(kPooled, ESTIMATE_POOLED, 0, "pooled",                                                     \
    "softmax of the mean-pooled q block against the mean-pooled key blocks (SpargeAttn's "     \
    "compressed map)")                                                                         \
  X(kSampledRows, ESTIMATE_SAMPLED_ROWS, 1, "sampled_rows",                                    \
    "exact softmax rows of sample_rows evenly spaced query rows per block, their mass per "    \
    "key block averaged: TopCdf's select_value is then close to the true attention mass kept") \
  X(kAuto, ESTIMATE_AUTO, 2, "auto",                                                           \
    "sampled_rows where the call has a full query block (seq_q >= block_q), no key blocks "    \
    "stand in for k and k has at most 8192 key blocks; pooled otherwise (decode steps, where "  \
    "sampling would read every row)")

#define SPARGE_QUANT_MODE_VALUES(X)                                                             \
  X(kNone, QUANT_NONE, 0, "none", "exact: the inputs' dtype, fp32 accumulation")               \
  X(kInt8Fp8, QUANT_INT8_FP8, 1, "int8_fp8",                                                   \
    "INT8 Q per row, K per 16 keys (smoothed by its mean), FP8 e4m3 P and V (SageAttention2)") \
  X(kInt8, QUANT_INT8, 2, "int8",                                                              \
    "INT8 Q and K as int8_fp8, P and V at the inputs' 16-bit type (SageAttention's sm_80 "     \
    "kernels): runs on any CUDA GPU from sm_80; V not rounded to 3 mantissa bits")

/* Which implementation runs (ExecContext, not SparseOptions). */
#define SPARGE_BACKEND_VALUES(X)                                                                \
  X(kAuto, BACKEND_AUTO, 0, "auto", "by device: the fast CPU backend or the CUDA backend")     \
  X(kReference, BACKEND_REFERENCE, 1, "reference", "the exact CPU reference (double sums)")    \
  X(kCpuFast, BACKEND_CPU_FAST, 2, "cpu", "the fast CPU backend")                              \
  X(kCuda, BACKEND_CUDA, 3, "cuda", "the CUDA backend")

/* The fields of SparseOptions, in order. */
#define SPARGE_OPTIONS(FLOAT, BOOL, INT, ENUM, HEAD)                                            \
  FLOAT(scale, 0.0f, "softmax scale; 0 means 1/sqrt(head_dim); Stage 1 uses the same")         \
  BOOL(causal, false, "causal attention, aligned by causal_align")                            \
  ENUM(causal_align, CausalAlign, kTopLeft,                                                   \
       "alignment of causal and the window when seq_q != seq_k")                              \
  HEAD(sim_threshold, 0.1f,                                                                    \
       "a block is self-similar iff its mean pairwise cosine similarity is > sim_threshold; "  \
       "non-similar blocks are always computed. [-1, 1]: < 0 every block is similar, "        \
       ">= 1 none is (dense)")                                                                 \
  ENUM(select, SelectMode, kTopCdf, "how Stage 1 chooses key blocks")                         \
  HEAD(select_value, 0.98f, "the selection's number: TopCdf's mass or TopK's fraction, (0, 1]") \
  BOOL(attention_sink, false,                                                                  \
       "always keep key block 0 where causality and the window allow it")                       \
  HEAD(pv_threshold, 50.0f,                                                                    \
       "lambda: skip P.V of a tile for a row group when every row's tile max is at least "    \
       "this far below its running max (log2 units of the scaled scores). [0, inf]; inf "     \
       "never skips")                                                                          \
  INT(pv_group_rows, 16, "query rows that decide the P.V skip together (CUDA: 16, one warp)")  \
  INT(block_q, 128, "query rows per mask block (the CUDA kernels take 128)")                  \
  INT(block_k, 64, "key rows per mask block (the CUDA kernels take 64)")                      \
  ENUM(quant, QuantMode, kNone, "quantization of Stage 2")                                     \
  INT(window_left, -1,                                                                         \
      "sliding window: a query row sees no key more than this many positions left of its "     \
      "diagonal (aligned by causal_align); -1 = no limit (flash-attn's window_size[0])")        \
  INT(window_right, -1,                                                                        \
      "sliding window: nor more than this many positions right of it; -1 = no limit "          \
      "(window_size[1]); causal hides every key right of the diagonal whatever this says")      \
  ENUM(estimate, EstimateMode, kAuto, "where Stage 1's block mass estimate comes from")       \
  INT(sample_rows, 4,                                                                          \
      "estimate sampled_rows: query rows per query block whose exact softmax is computed, "    \
      "[1, block_q] (a tail block with fewer valid rows samples all of them)")              \
  FLOAT(target_error, 0.0f,                                                                    \
        "error target: per query head, the sparsest TopCdf mass whose relative L1 error, "     \
        "estimated from the sampled rows' exact outputs (needs v), stays within this; "        \
        "implies estimate sampled_rows, replaces select_value, raises a small pv_threshold. "  \
        "0 = off, else (0, 1)")

#endif /* SPARGE_OPTION_LIST_H_ */
