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

typedef struct sparge_options {
  float scale;                  /* 0 = 1/sqrt(head_dim) */
  int causal;                   /* 0 or 1 */
  int causal_bottom_right;      /* 0 = top-left (SDPA), 1 = bottom-right (FlashAttention) */
  float sim_threshold;
  int select_topk;              /* 0 = TopCdf, 1 = TopK */
  float cdf_threshold;
  float topk;
  int attention_sink;
  float pv_threshold;
  int pv_group_rows;
  int block_q, block_k;
  int quant;                    /* 0 = exact, 1 = INT8 Q/K + FP8 V */
  const float* per_head_sim;    /* optional, length = query heads */
  const float* per_head_cdf;
  const float* per_head_topk;
  const float* per_head_pv;
} sparge_options;

typedef struct sparge_block_mask {
  int32_t* counts;
  int32_t* indices;
  int device;
  int device_index;
  int64_t batch, heads, seq_q, seq_k;
  int block_q, block_k;
} sparge_block_mask;

sparge_options sparge_default_options(void);

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

#ifdef __cplusplus
}
#endif

#endif /* SPARGE_SPARGE_C_H_ */
