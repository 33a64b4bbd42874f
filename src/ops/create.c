/* create.c - fill, arange, linspace, eye. */
#include "../core/internal.h"
#include <math.h>
#include <string.h>

/* Contiguous data: copy the element pattern; strided: broadcast-copy from a
   0-d tensor holding the value. */
lm_status lm_fill(lm_ctx *ctx, lm_tensor *t, double value) {
  lm_status cs = lm_check_input(ctx, "fill", t, "tensor");
  if (cs) return cs;
  union { double d; int64_t i; char c[8]; } u; /* aligned for any dtype */
  char *v = u.c;
  lm_write_from_double(t->dtype, v, value);
  int64_t n = lm_numel(t), es = lm_dtype_size(t->dtype);
  if (!lm_is_contiguous(t)) {
    lm_tensor *src;
    lm_status st = lm_from_ptr(ctx, t->dtype, 0, NULL, NULL, v, &src);
    if (st) return st;
    st = lm_copy_(ctx, t, src);
    lm_tensor_release(src);
    return st;
  }
  char *p = lm_data(t);
  if (es == 1) {
    memset(p, v[0], n);
  } else if (es == 4) {
    uint32_t x; memcpy(&x, v, 4);
    for (int64_t i = 0; i < n; i++) ((uint32_t *)p)[i] = x;
  } else {
    uint64_t x; memcpy(&x, v, 8);
    for (int64_t i = 0; i < n; i++) ((uint64_t *)p)[i] = x;
  }
  return LM_OK;
}

/* Element i = start + i * step, written through double (exact for the
   integer ranges users build with it). */
static lm_status sequence(lm_ctx *ctx, const char *op, double start, double step, int64_t n, int32_t dtype, lm_tensor **out) {
  if (n < 0) return lm_err(ctx, LM_E_ARG, "%s: negative length %lld", op, (long long)n);
  lm_tensor *t;
  lm_status st = lm_new(ctx, op, dtype, 1, &n, &t);
  if (st) return st;
  char *p = lm_data(t);
  int32_t es = lm_dtype_size(dtype);
  for (int64_t i = 0; i < n; i++) lm_write_from_double(dtype, p + i * es, start + (double)i * step);
  *out = t;
  return LM_OK;
}

lm_status lm_arange(lm_ctx *ctx, double start, double step, int64_t n, int32_t dtype, lm_tensor **out) {
  if (step == 0) return lm_err(ctx, LM_E_ARG, "arange: step must not be zero");
  return sequence(ctx, "arange", start, step, n, dtype, out);
}

lm_status lm_linspace(lm_ctx *ctx, double start, double stop, int64_t n, int32_t dtype, lm_tensor **out) {
  lm_status st = sequence(ctx, "linspace", start, n > 1 ? (stop - start) / (double)(n - 1) : 0, n, dtype, out);
  if (st || n < 2) return st;
  /* the second half counts back from stop, as PyTorch does, so stop is exact */
  char *p = lm_data(*out);
  int32_t es = lm_dtype_size(dtype);
  double step = (stop - start) / (double)(n - 1);
  for (int64_t i = n / 2; i < n; i++) lm_write_from_double(dtype, p + i * es, stop - (double)(n - 1 - i) * step);
  return LM_OK;
}

lm_status lm_eye(lm_ctx *ctx, int64_t n, int64_t m, int32_t dtype, lm_tensor **out) {
  if (n < 0 || m < 0) return lm_err(ctx, LM_E_ARG, "eye: negative size %lldx%lld", (long long)n, (long long)m);
  int64_t shape[2] = {n, m};
  lm_tensor *t;
  lm_status st = lm_new(ctx, "eye", dtype, 2, shape, &t);
  if (st) return st;
  lm_fill(ctx, t, 0);
  char *p = lm_data(t);
  int32_t es = lm_dtype_size(dtype);
  for (int64_t i = 0; i < n && i < m; i++) lm_write_from_double(dtype, p + (i * m + i) * es, 1);
  *out = t;
  return LM_OK;
}
