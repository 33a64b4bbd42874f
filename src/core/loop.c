/* loop.c - running a kernel over strided operands, and parallel_for. */
#include "internal.h"
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GRAIN 32768 /* elements below which threads cost more than they save */

void lm_parallel_for(lm_ctx *ctx, int64_t n, int64_t grain, void (*fn)(void *, int64_t, int64_t), void *arg) {
  int nt = ctx ? ctx->nthreads : 1;
  if (grain < 1) grain = 1;
#ifdef _OPENMP
  if (omp_in_parallel()) nt = 1;
#endif
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks > nt) chunks = nt;
  if (chunks <= 1) {
    if (n > 0) fn(arg, 0, n);
    return;
  }
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
  for (int64_t c = 0; c < chunks; c++) fn(arg, n * c / chunks, n * (c + 1) / chunks);
}

lm_operand lm_operand_of(const lm_tensor *t, int32_t ndim, const int64_t *shape) {
  lm_operand op;
  op.data = lm_data(t);
  op.esize = lm_dtype_size(t->dtype);
  lm_broadcast_strides(t, ndim, shape, op.stride);
  return op;
}

typedef struct loop_plan {
  int32_t ndim, nops;
  int64_t shape[LM_MAX_DIMS];
  int64_t stride[LM_MAX_OPERANDS][LM_MAX_DIMS]; /* bytes */
  char *base[LM_MAX_OPERANDS];
  lm_loop_fn fn;
  void *arg;
} loop_plan;

/* Rows are positions over every dim but the last; [begin, end) of them. */
static void run_rows(void *p_, int64_t begin, int64_t end) {
  const loop_plan *p = p_;
  int32_t outer = p->ndim - 1;
  int64_t idx[LM_MAX_DIMS] = {0};
  char *ptr[LM_MAX_OPERANDS];
  int64_t inner_stride[LM_MAX_OPERANDS];
  int64_t r = begin;
  for (int32_t d = outer - 1; d >= 0; d--) {
    idx[d] = r % p->shape[d];
    r /= p->shape[d];
  }
  for (int32_t k = 0; k < p->nops; k++) {
    ptr[k] = p->base[k];
    for (int32_t d = 0; d < outer; d++) ptr[k] += idx[d] * p->stride[k][d];
    inner_stride[k] = p->stride[k][outer];
  }
  for (int64_t row = begin; row < end; row++) {
    p->fn(ptr, inner_stride, p->shape[outer], p->arg);
    for (int32_t d = outer - 1; d >= 0; d--) {
      for (int32_t k = 0; k < p->nops; k++) ptr[k] += p->stride[k][d];
      if (++idx[d] < p->shape[d]) break;
      for (int32_t k = 0; k < p->nops; k++) ptr[k] -= p->stride[k][d] * p->shape[d];
      idx[d] = 0;
    }
  }
}

/* A 1-D loop split into element ranges. */
static void run_span(void *p_, int64_t begin, int64_t end) {
  const loop_plan *p = p_;
  char *ptr[LM_MAX_OPERANDS];
  for (int32_t k = 0; k < p->nops; k++) ptr[k] = p->base[k] + begin * p->stride[k][0];
  int64_t st[LM_MAX_OPERANDS];
  for (int32_t k = 0; k < p->nops; k++) st[k] = p->stride[k][0];
  p->fn(ptr, st, end - begin, p->arg);
}

void lm_foreach(lm_ctx *ctx, int32_t ndim, const int64_t *shape, int32_t nops, lm_operand *ops, lm_loop_fn fn, void *arg, bool parallel) {
  loop_plan p;
  p.nops = nops;
  p.fn = fn;
  p.arg = arg;
  int64_t numel = 1;
  for (int32_t d = 0; d < ndim; d++) numel *= shape[d];
  if (numel == 0) return;
  /* drop size-1 dims, then merge dims that are contiguous for every operand */
  p.ndim = 0;
  for (int32_t d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    int32_t j = p.ndim;
    bool merge = j > 0;
    for (int32_t k = 0; k < nops && merge; k++)
      merge = p.stride[k][j - 1] == ops[k].stride[d] * ops[k].esize * shape[d];
    if (merge) {
      p.shape[j - 1] *= shape[d];
      for (int32_t k = 0; k < nops; k++) p.stride[k][j - 1] = ops[k].stride[d] * ops[k].esize;
    } else {
      p.shape[j] = shape[d];
      for (int32_t k = 0; k < nops; k++) p.stride[k][j] = ops[k].stride[d] * ops[k].esize;
      p.ndim++;
    }
  }
  for (int32_t k = 0; k < nops; k++) p.base[k] = ops[k].data;
  if (p.ndim == 0) { /* a single element */
    p.ndim = 1;
    p.shape[0] = 1;
    for (int32_t k = 0; k < nops; k++) p.stride[k][0] = 0;
  }
  if (!parallel) ctx = NULL;
  if (p.ndim == 1) {
    lm_parallel_for(ctx, p.shape[0], GRAIN, run_span, &p);
  } else {
    int64_t rows = numel / p.shape[p.ndim - 1];
    int64_t grain = GRAIN / p.shape[p.ndim - 1];
    lm_parallel_for(ctx, rows, grain < 1 ? 1 : grain, run_rows, &p);
  }
}
