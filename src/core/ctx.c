/* ctx.c - the context, error messages, op names, threads and BLAS info. */
#include "internal.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS extensions (declared here to avoid depending on its headers). */
extern void openblas_set_num_threads(int n);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);

static const char *const op_names[] = {
  "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt", "sin", "cos",
  "sigmoid", "tanh", "relu", "floor", "ceil", "round", "sign", "reciprocal",
  "logical_not",
  "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt",
  "le", "gt", "ge", "logical_and", "logical_or", "logical_xor",
  "sum", "mean", "prod", "max", "min", "argmax", "argmin", "var", "std",
  "norm", "all", "any", "count_nonzero",
  "copy", "fill", "clamp", "where", "cumsum", "matmul", "addmm", "cat",
  "flip", "roll", "pad", "gather", "scatter", "index_select",
  "masked_select", "masked_fill", "sort", "topk", "unique", "nonzero",
  "arange", "linspace", "eye", "uniform", "normal", "bernoulli", "randint",
  "randperm",
  "conv", "conv_transpose", "max_pool", "avg_pool", "max_unpool",
  "adaptive_avg_pool", "batch_norm", "group_norm", "layer_norm",
  "leaky_relu", "prelu", "elu", "gelu", "softmax", "log_softmax", "upsample",
  "grid_sample", "affine_grid", "cross_entropy", "nll", "bce_with_logits",
  "sgd", "adam", "rmsprop", "lstm_cell", "gru_cell", "view", "custom",
};
_Static_assert(sizeof(op_names) / sizeof(op_names[0]) == LM_OP_COUNT,
               "op_names must name every LM_OP_*");

uint32_t lm_abi_version(void) { return ((uint32_t)LM_ABI_MAJOR << 16) | LM_ABI_MINOR; }
const char *lm_version(void) { return LM_VERSION; }

const char *lm_op_name(int32_t op) {
  if (op < 0 || op >= LM_OP_COUNT) return "unknown-op";
  return op_names[op];
}

lm_status lm_ctx_new(lm_ctx **out) {
  lm_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return LM_E_OOM;
#ifdef _OPENMP
  ctx->nthreads = omp_get_max_threads();
#else
  ctx->nthreads = 1;
#endif
  ctx->rng_seed = 0x5eed;
  ctx->grad_enabled = true;
  *out = ctx;
  return LM_OK;
}

void lm_ctx_free(lm_ctx *ctx) {
  if (!ctx) return;
  lm_autograd_forget_ctx(ctx);
  free(ctx->plugin_ops);
  free(ctx->custom_freed);
  free(ctx);
}

const char *lm_ctx_errmsg(const lm_ctx *ctx) { return ctx->errmsg; }

void lm_ctx_clear_error(lm_ctx *ctx) {
  ctx->errmsg[0] = 0;
  ctx->last = LM_OK;
}

void lm_ctx_request_abort(lm_ctx *ctx) { atomic_store(&ctx->abort_requested, 1); }
int32_t lm_ctx_abort_requested(const lm_ctx *ctx) {
  return atomic_load(&((lm_ctx *)ctx)->abort_requested);
}

lm_status lm_err(lm_ctx *ctx, lm_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->errmsg, sizeof ctx->errmsg, fmt, ap);
  va_end(ap);
  ctx->last = code;
  return code;
}

const char *lm_shape_str(int32_t ndim, const int64_t *shape, char *buf, size_t n) {
  if (ndim == 0) {
    snprintf(buf, n, "scalar");
    return buf;
  }
  size_t used = 0;
  buf[0] = 0;
  for (int32_t i = 0; i < ndim && used < n; i++)
    used += snprintf(buf + used, n - used, i ? "x%lld" : "%lld", (long long)shape[i]);
  return buf;
}

int32_t lm_wrap_dim(int32_t dim, int32_t ndim) {
  if (dim < 0) dim += ndim;
  return (dim < 0 || dim >= ndim) ? -1 : dim;
}

void lm_set_num_threads(lm_ctx *ctx, int32_t n) {
  if (n < 1) n = 1;
  ctx->nthreads = n;
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
  openblas_set_num_threads(n);
}

void lm_ctx_set_loop_threads(lm_ctx *ctx, int32_t n) { ctx->nthreads = n < 1 ? 1 : n; }

int32_t lm_get_num_threads(const lm_ctx *ctx) { return ctx->nthreads; }

const char *lm_blas_info(void) {
  static char buf[256];
  snprintf(buf, sizeof buf, "%s | core=%s", openblas_get_config(), openblas_get_corename());
  return buf;
}
