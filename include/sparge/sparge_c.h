/* Sparge C ABI for inference engines.
 *
 * Plain structs and int return codes (0 = ok, otherwise a sparge StatusCode). On failure the
 * message is written into the caller's buffer (`err`, `err_len` bytes, NUL-terminated); there
 * are no globals, so calls are thread-safe. Options start from sparge_default_options().
 */
#ifndef SPARGE_SPARGE_C_H_
#define SPARGE_SPARGE_C_H_

#include <stddef.h>
#include <stdint.h>

#include "sparge/option_list.h"

#ifdef __cplusplus
extern "C" {
#endif

enum sparge_dtype { SPARGE_F32 = 0, SPARGE_F16 = 1, SPARGE_BF16 = 2 };
enum sparge_device { SPARGE_CPU = 0, SPARGE_CUDA = 1 };

typedef struct sparge_tensor {
  void* data;
  int dtype;          /* enum sparge_dtype */
  int device;         /* enum sparge_device */
  int device_index;
  int64_t shape[4];   /* logical (batch, heads, tokens, head_dim) */
  int64_t strides[4]; /* elements, same logical order */
} sparge_tensor;

/* Enum constants (SPARGE_CAUSAL_TOP_LEFT, SPARGE_SELECT_TOPK, SPARGE_QUANT_INT8_FP8, ...) and
 * the option fields are expanded from sparge/option_list.h, which says what each one means. */
#define SPARGE_C_ENUMERATOR(kName, c_name, code, py_name, doc) SPARGE_##c_name = code,
enum sparge_causal_align { SPARGE_CAUSAL_ALIGN_VALUES(SPARGE_C_ENUMERATOR) };
enum sparge_select_mode { SPARGE_SELECT_MODE_VALUES(SPARGE_C_ENUMERATOR) };
enum sparge_estimate_mode { SPARGE_ESTIMATE_MODE_VALUES(SPARGE_C_ENUMERATOR) };
enum sparge_quant_mode { SPARGE_QUANT_MODE_VALUES(SPARGE_C_ENUMERATOR) };
#undef SPARGE_C_ENUMERATOR

/* Start from sparge_default_options(), which also sets `struct_size`: a library built with
 * other options rejects the struct instead of misreading it. Booleans are 0 or 1, enums their
 * constants above; each per-head pointer is NULL or an array of one float per query head. */
typedef struct sparge_options {
  size_t struct_size;
#define SPARGE_C_FLOAT(name, dflt, doc) float name;
#define SPARGE_C_INT(name, dflt, doc) int name;
#define SPARGE_C_ENUM(name, Type, dflt, doc) int name;
#define SPARGE_C_HEAD(name, dflt, doc) float name; const float* name##_per_head;
  SPARGE_OPTIONS(SPARGE_C_FLOAT, SPARGE_C_INT, SPARGE_C_INT, SPARGE_C_ENUM, SPARGE_C_HEAD)
#undef SPARGE_C_FLOAT
#undef SPARGE_C_INT
#undef SPARGE_C_ENUM
#undef SPARGE_C_HEAD
} sparge_options;

/* sparge::BlockMask. Padded (row_offsets NULL): indices [B, H, nq, nk], row r from r * nk.
 * Compact (CPU backends only so far): row_offsets [B * H * nq + 1] from 0, nondecreasing; row r
 * owns indices[row_offsets[r] .. row_offsets[r + 1]) and lists counts[r] blocks from the first
 * (CSR: counts[r] = indptr[r + 1] - indptr[r]). Zero-initialize the struct, so that code written
 * before row_offsets existed keeps the padded form. */
typedef struct sparge_block_mask {
  int32_t* counts;
  int32_t* indices;
  int device;
  int device_index;
  int64_t batch, heads, seq_q, seq_k;
  int block_q, block_k;
  int64_t* row_offsets;
} sparge_block_mask;

/* An attention mask (sparge::AttentionMask; NULL where a call takes one = no mask): a dense mask
 * `data` (NULL: none) of `dtype` (bool = one byte, nonzero = may attend; float = added to the
 * scores), logical shape (batch 1|B, heads 1|Hq, seq_q 1|Nq, seq_k Nk) with strides in elements
 * (extent-1 axes broadcast), and/or `key_lengths` ([B] int32: keys past key_lengths[b] are
 * padding; NULL: none). Rows that see no key give zeros and lse -inf. CPU only for now. */
enum sparge_mask_dtype {
  SPARGE_MASK_BOOL = 0,
  SPARGE_MASK_F32 = 1,
  SPARGE_MASK_F16 = 2,
  SPARGE_MASK_BF16 = 3
};

typedef struct sparge_attn_mask {
  const void* data;
  int dtype;  /* enum sparge_mask_dtype */
  int device; /* enum sparge_device */
  int device_index;
  int64_t shape[4];
  int64_t strides[4];
  const int32_t* key_lengths;
} sparge_attn_mask;

sparge_options sparge_default_options(void);

/* For bindings that cannot include this header (ctypes, other languages' FFI): the struct's size
 * and an initializer writing the defaults into caller memory of that size. */
size_t sparge_options_size(void);
void sparge_options_init(sparge_options* opts);

/* Sets one option by its name in option_list.h ("pv_threshold", "causal", "select", ...), for
 * bindings that cannot include this header: numbers for floats, 0/1 for booleans, the constant
 * for enums. A per-head value is set with sparge_options_set_per_head. Returns 0 or an error code
 * with the message in `err`. */
int sparge_options_set(sparge_options* opts, const char* name, double value, char* err,
                       size_t err_len);
int sparge_options_set_per_head(sparge_options* opts, const char* name, const float* values,
                                char* err, size_t err_len);

/* Workspace bytes of sparge_sparse_attention without mask_out (0 on the CPU, and for arguments
 * every call rejects). Long calls run in query-row chunks within it, which calls that keep the
 * block mask in the caller's memory cannot: they run whole and need
 * sparge_workspace_size_caller_mask. */
size_t sparge_workspace_size(const sparge_tensor* q, const sparge_tensor* k,
                             const sparge_options* opts);

/* Both stages. `mask_out` may be NULL. `stream` is a cudaStream_t (NULL = default stream). */
int sparge_sparse_attention(const sparge_tensor* q, const sparge_tensor* k,
                            const sparge_tensor* v, const sparge_options* opts,
                            const sparge_tensor* o, float* lse, void* workspace,
                            size_t workspace_bytes, void* stream,
                            const sparge_block_mask* mask_out, char* err, size_t err_len);

int sparge_predict_block_mask(const sparge_tensor* q, const sparge_tensor* k,
                              const sparge_options* opts, const sparge_block_mask* mask,
                              void* workspace, size_t workspace_bytes, void* stream, char* err,
                              size_t err_len);

int sparge_block_sparse_attention(const sparge_tensor* q, const sparge_tensor* k,
                                  const sparge_tensor* v, const sparge_block_mask* mask,
                                  const sparge_options* opts, const sparge_tensor* o, float* lse,
                                  void* workspace, size_t workspace_bytes, void* stream,
                                  char* err, size_t err_len);

/* Packed sequences of different lengths (sparge::sparse_attention_varlen): q [1, Hq, total_q, D],
 * k and v [1, Hkv, total_k, D], o like q; cu_seqlens_q / cu_seqlens_k are host arrays of
 * num_seqs + 1 values (0, nondecreasing, ending at total_q / total_k). No lse yet. */
int sparge_sparse_attention_varlen(const sparge_tensor* q, const sparge_tensor* k,
                                   const sparge_tensor* v, const int32_t* cu_seqlens_q,
                                   const int32_t* cu_seqlens_k, int64_t num_seqs,
                                   const sparge_options* opts, const sparge_tensor* o,
                                   void* workspace, size_t workspace_bytes, void* stream,
                                   char* err, size_t err_len);

/* The three calls above with an attention mask (`attn_mask` may be NULL: the same as above).
   Their workspace: sparge_workspace_size_masked (a dense mask on CUDA needs more; 0 on error). */
size_t sparge_workspace_size_masked(const sparge_tensor* q, const sparge_tensor* k,
                                    const sparge_attn_mask* attn_mask,
                                    const sparge_options* opts);

/* Workspace bytes of the calls that keep the block mask in the caller's memory and run whole:
   sparge_predict_block_mask, sparge_block_sparse_attention, and sparge_sparse_attention given
   mask_out (their _masked forms with `attn_mask`, which may be NULL). At long lengths it can
   exceed sparge_workspace_size, whose calls run in row chunks. */
size_t sparge_workspace_size_caller_mask(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_options* opts);

int sparge_sparse_attention_masked(const sparge_tensor* q, const sparge_tensor* k,
                                   const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                   const sparge_options* opts, const sparge_tensor* o, float* lse,
                                   void* workspace, size_t workspace_bytes, void* stream,
                                   const sparge_block_mask* mask_out, char* err, size_t err_len);

int sparge_predict_block_mask_masked(const sparge_tensor* q, const sparge_tensor* k,
                                     const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                     const sparge_options* opts, const sparge_block_mask* mask,
                                     void* workspace, size_t workspace_bytes, void* stream,
                                     char* err, size_t err_len);

int sparge_block_sparse_attention_masked(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_tensor* v,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_block_mask* mask,
                                         const sparge_options* opts, const sparge_tensor* o,
                                         float* lse, void* workspace, size_t workspace_bytes,
                                         void* stream, char* err, size_t err_len);

/* sparge::KeyBlocks: Stage 1's key side kept beside a KV cache for decode and chunked prefill
 * (the key mean, and per key block of block_k rows its pooled row and self-similarity). Caller
 * memory on k's device, double: pooled [B, Hkv, D, max_blocks], sim [B, Hkv, max_blocks],
 * mean [B, Hkv, D]. sparge_build_key_blocks fills them from all of k (taking the mean);
 * sparge_append_key_blocks extends them after the cache grew (reads the new keys and the last
 * incomplete block only). Both set `tokens`. CPU tensors only for now. */
typedef struct sparge_key_blocks {
  double* pooled;
  double* sim;
  double* mean;
  int device;
  int device_index;
  int64_t batch, heads_kv, head_dim, max_blocks;
  int block_k;
  int64_t tokens;
} sparge_key_blocks;

int sparge_build_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                            char* err, size_t err_len);
int sparge_append_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                             char* err, size_t err_len);
/* sparge_build_key_blocks pooling with blocks->mean as the caller set it (the mean of a longer
 * sequence k is a part of, e.g. all-reduced across sequence-parallel ranks) instead of taking
 * k's. */
int sparge_pool_key_blocks(const sparge_tensor* k, sparge_key_blocks* blocks, void* stream,
                           char* err, size_t err_len);
/* Stage 1 alone from `key_blocks`: k gives the keys' shape only (not read; a broadcast view with
 * stride_token 0 serves), so a rank holding gathered blocks but not the keys predicts its rows
 * over all of them. */
int sparge_predict_block_mask_key_blocks(const sparge_tensor* q, const sparge_tensor* k,
                                         const sparge_attn_mask* attn_mask,
                                         const sparge_key_blocks* key_blocks,
                                         const sparge_options* opts,
                                         const sparge_block_mask* mask, void* workspace,
                                         size_t workspace_bytes, void* stream, char* err,
                                         size_t err_len);
/* sparge_sparse_attention_masked whose Stage 1 takes the key side from `key_blocks` (covering
 * exactly k's tokens, block_k = opts->block_k, pooled estimate) instead of reading k. */
int sparge_sparse_attention_key_blocks(const sparge_tensor* q, const sparge_tensor* k,
                                       const sparge_tensor* v, const sparge_attn_mask* attn_mask,
                                       const sparge_key_blocks* key_blocks,
                                       const sparge_options* opts, const sparge_tensor* o,
                                       float* lse, void* workspace, size_t workspace_bytes,
                                       void* stream, const sparge_block_mask* mask_out,
                                       char* err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* SPARGE_SPARGE_C_H_ */
