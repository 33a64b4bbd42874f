/* create.c - fill, arange, linspace, eye. */
#include "../core/internal.h"
#include <math.h>
#include <string.h>

/* On a device: zeros of contiguous memory by the backend's memset, anything
   else as a copy of the value (a host scalar, converted as on the CPU). */
static lm_status fill_device(lm_ctx *ctx, lm_tensor *t, double value) {
  int64_t n = lm_numel(t);
  if (n == 0) return LM_OK;
  if (value == 0 && !signbit(value) && lm_is_contiguous(t)) { /* every dtype's zero is all zero bytes */
    const lm_backend *be = lm_backend_get(lm_device_of(t));
    lm_status st = be->memset(lm_data(t), 0, (size_t)n * lm_dtype_size(t->dtype));
    return st ? lm_backend_fail(ctx, "fill", be, st) : LM_OK;
  }
  lm_tensor *src;
  lm_status st = lm_from_ptr(ctx, LM_F64, 0, NULL, NULL, &value, &src);
  if (st) return st;
  st = lm_copy_(ctx, t, src);
  lm_tensor_release(src);
  return st;
}

/* Contiguous data: copy the element pattern; strided: broadcast-copy from a
   0-d tensor holding the value. */
lm_status lm_fill(lm_ctx *ctx, lm_tensor *t, double value) {
  lm_status cs = lm_check_arg(ctx, "fill", t, "tensor");
  if (cs) return cs;
  if (lm_device_of(t) != LM_CPU) return fill_device(ctx, t, value);
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

lm_status lm_empty_on(lm_ctx *ctx, int32_t device, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  return lm_new_on(ctx, "empty", device, dtype, ndim, shape, out);
}

/* The backend's sequence into a new 1-d tensor of n on device. */
static lm_status sequence_device(lm_ctx *ctx, const char *op, int32_t device, double start, double step, double stop,
                                 int64_t half, int64_t n, int32_t dtype, lm_tensor **out) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, device, sequence, &be);
  if (st || (st = lm_new_on(ctx, op, device, dtype, 1, &n, out))) return st;
  if (n > 0 && (st = be->sequence(dtype, n, lm_data(*out), start, step, stop, half))) {
    lm_tensor_release(*out);
    *out = NULL;
    return lm_backend_fail(ctx, op, be, st);
  }
  return LM_OK;
}

/* Element i = start + i * step, written through double (exact for the
   integer ranges users build with it). */
static lm_status sequence(lm_ctx *ctx, const char *op, int32_t device, double start, double step, int64_t n,
                          int32_t dtype, lm_tensor **out) {
  if (n < 0) return lm_err(ctx, LM_E_ARG, "%s: negative length %lld", op, (long long)n);
  if (!lm_dtype_valid(dtype)) return lm_err(ctx, LM_E_DTYPE, "%s: unknown dtype %d", op, dtype);
  if (device != LM_CPU) return sequence_device(ctx, op, device, start, step, 0, n, n, dtype, out);
  lm_tensor *t;
  lm_status st = lm_new(ctx, op, dtype, 1, &n, &t);
  if (st) return st;
  char *p = lm_data(t);
  int32_t es = lm_dtype_size(dtype);
  for (int64_t i = 0; i < n; i++) lm_write_from_double(dtype, p + i * es, start + (double)i * step);
  *out = t;
  return LM_OK;
}

lm_status lm_arange_on(lm_ctx *ctx, int32_t device, double start, double step, int64_t n, int32_t dtype,
                       lm_tensor **out) {
  if (step == 0) return lm_err(ctx, LM_E_ARG, "arange: step must not be zero");
  return sequence(ctx, "arange", device, start, step, n, dtype, out);
}

lm_status lm_arange(lm_ctx *ctx, double start, double step, int64_t n, int32_t dtype, lm_tensor **out) {
  return lm_arange_on(ctx, LM_CPU, start, step, n, dtype, out);
}

lm_status lm_linspace(lm_ctx *ctx, double start, double stop, int64_t n, int32_t dtype, lm_tensor **out) {
  return lm_linspace_on(ctx, LM_CPU, start, stop, n, dtype, out);
}

lm_status lm_linspace_on(lm_ctx *ctx, int32_t device, double start, double stop, int64_t n, int32_t dtype,
                         lm_tensor **out) {
  if (device != LM_CPU && n >= 2) {
    if (!lm_dtype_valid(dtype)) return lm_err(ctx, LM_E_DTYPE, "linspace: unknown dtype %d", dtype);
    return sequence_device(ctx, "linspace", device, start, (stop - start) / (double)(n - 1), stop, n / 2, n, dtype, out);
  }
  lm_status st = sequence(ctx, "linspace", device, start, n > 1 ? (stop - start) / (double)(n - 1) : 0, n, dtype, out);
  if (st || n < 2) return st;
  /* the second half counts back from stop, as PyTorch does, so stop is exact */
  char *p = lm_data(*out);
  int32_t es = lm_dtype_size(dtype);
  double step = (stop - start) / (double)(n - 1);
  for (int64_t i = n / 2; i < n; i++) lm_write_from_double(dtype, p + i * es, stop - (double)(n - 1 - i) * step);
  return LM_OK;
}

lm_status lm_eye(lm_ctx *ctx, int64_t n, int64_t m, int32_t dtype, lm_tensor **out) {
  return lm_eye_on(ctx, LM_CPU, n, m, dtype, out);
}

lm_status lm_eye_on(lm_ctx *ctx, int32_t device, int64_t n, int64_t m, int32_t dtype, lm_tensor **out) {
  if (n < 0 || m < 0) return lm_err(ctx, LM_E_ARG, "eye: negative size %lldx%lld", (long long)n, (long long)m);
  int64_t shape[2] = {n, m};
  lm_tensor *t;
  lm_status st = lm_new_on(ctx, "eye", device, dtype, 2, shape, &t);
  if (st) return st;
  if (device != LM_CPU) { /* zeros, then ones along the diagonal: a view of stride m + 1 */
    lm_tensor *diag = NULL;
    int64_t k = n < m ? n : m, one = m + 1;
    if (!(st = lm_fill(ctx, t, 0)) && k > 0 && !(st = lm_as_strided(ctx, t, 1, &k, &one, 0, &diag)))
      st = lm_fill(ctx, diag, 1);
    lm_tensor_release(diag);
    if (st) { lm_tensor_release(t); return st; }
    *out = t;
    return LM_OK;
  }
  lm_fill(ctx, t, 0);
  char *p = lm_data(t);
  int32_t es = lm_dtype_size(dtype);
  for (int64_t i = 0; i < n && i < m; i++) lm_write_from_double(dtype, p + (i * m + i) * es, 1);
  *out = t;
  return LM_OK;
}
