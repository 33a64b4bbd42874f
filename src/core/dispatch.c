/* dispatch.c - how an op reaches a device kernel.
 *
 * An op keeps its meaning in liblumen whatever the device: the op's own
 * file checks arguments, works out shapes, broadcasting and the result
 * dtype, allocates its outputs (on the inputs' device) and records the
 * autograd node; only the raw loop differs. On the CPU it runs the op's
 * kernels; on a device it calls one of the few generic entries of the
 * device's backend table (src/backend.h): a strided elementwise loop, a
 * reduction over runs, a batched GEMM. This file decides where an op runs
 * and lays out the elementwise loop for the backend. */
#include "internal.h"
#include <string.h>

lm_status lm_check_arg(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what) {
  return t ? LM_OK : lm_err(ctx, LM_E_ARG, "%s: %s is NULL", op, what);
}

static bool cpu_scalar(const lm_tensor *t) { return t->ndim == 0 && lm_device_of(t) == LM_CPU; }

lm_status lm_op_device(lm_ctx *ctx, const char *op, int32_t n, const lm_tensor *const *ts, const char *const *what,
                       bool cpu_scalars, int32_t *device) {
  int32_t first = -1;
  for (int32_t i = 0; i < n; i++) {
    const lm_tensor *t = ts[i];
    if (!t || (cpu_scalars && cpu_scalar(t))) continue;
    if (first < 0) {
      first = i;
    } else if (lm_device_of(t) != lm_device_of(ts[first])) {
      const char *a = lm_device_name(lm_device_of(ts[first])), *b = lm_device_name(lm_device_of(t));
      return lm_err(ctx, LM_E_DEVICE, "%s: inputs on %s and %s (%s on %s, %s on %s), expected one device (move them with :to())",
                    op, a, b, what[first], a, what[i], b);
    }
  }
  *device = first < 0 ? LM_CPU : lm_device_of(ts[first]);
  return LM_OK;
}

lm_status lm_backend_for(lm_ctx *ctx, const char *op, int32_t device, size_t end, const char *entry,
                         const lm_backend **be) {
  const lm_backend *b = lm_backend_get(device);
  if (!b)
    return lm_err(ctx, LM_E_DEVICE, "%s: no %s backend is loaded (lumen.cuda.status() says why)", op,
                  lm_device_name(device));
  void (*fn)(void) = NULL;
  if (b->size >= end) memcpy(&fn, (const char *)b + end - sizeof fn, sizeof fn);
  if (!fn)
    return lm_err(ctx, LM_E_DEVICE, "%s: the %s backend (%s) has no %s kernel, so this op runs on the CPU only "
                  "(move the tensors with :to('cpu'))", op, lm_device_name(device), b->name ? b->name : "?", entry);
  *be = b;
  return LM_OK;
}

/* ---- the elementwise loop ---- */

/* The value of a 0-d CPU tensor as a host scalar of the elementwise entry:
   floats as f64, everything else as an exact i64. */
static void host_scalar(const lm_tensor *t, int32_t *dtype, lm_scalar *s) {
  const char *p = lm_data(t);
  if (lm_dtype_is_float(t->dtype)) {
    *dtype = LM_F64;
    s->f = lm_read_as_double(t->dtype, p);
    return;
  }
  *dtype = LM_I64;
  switch (t->dtype) {
  case LM_I32: s->i = *(const int32_t *)p; break;
  case LM_I64: s->i = *(const int64_t *)p; break;
  default: s->i = *(const uint8_t *)p; break; /* u8, bool */
  }
}

/* Drops size-1 dims and merges neighbours that every operand walks as one
   (stride of the outer = stride of the inner times its size), so that a
   contiguous loop becomes one dim and the kernels' index maths is short.
   st[k * LM_MAX_DIMS + d] is operand k's stride in dim d; returns the new
   ndim, with shape and st rewritten in place. */
static int32_t coalesce(int32_t nd, int64_t *shape, int32_t n, int64_t *st) {
  int32_t m = 0;
  for (int32_t d = 0; d < nd; d++) {
    if (shape[d] == 1) continue;
    shape[m] = shape[d];
    for (int32_t k = 0; k < n; k++) st[k * LM_MAX_DIMS + m] = st[k * LM_MAX_DIMS + d];
    m++;
  }
  if (m < 2) return m;
  int32_t out = m - 1; /* the innermost dim kept so far */
  for (int32_t d = m - 2; d >= 0; d--) {
    bool merge = true;
    for (int32_t k = 0; k < n && merge; k++)
      merge = st[k * LM_MAX_DIMS + d] == st[k * LM_MAX_DIMS + out] * shape[out];
    if (merge) {
      shape[out] *= shape[d];
    } else {
      out--;
      shape[out] = shape[d];
      for (int32_t k = 0; k < n; k++) st[k * LM_MAX_DIMS + out] = st[k * LM_MAX_DIMS + d];
    }
  }
  /* the kept dims sit at [out, m): move them to the front */
  int32_t nk = m - out;
  for (int32_t d = 0; d < nk; d++) {
    shape[d] = shape[out + d];
    for (int32_t k = 0; k < n; k++) st[k * LM_MAX_DIMS + d] = st[k * LM_MAX_DIMS + out + d];
  }
  return nk;
}

lm_status lm_dev_elementwise(lm_ctx *ctx, const char *op, int32_t code, int32_t dtype, int32_t ndim,
                             const int64_t *shape, int32_t n, const lm_tensor *const *ts, double param) {
  LM_ASSERT(n >= 1 && n <= LM_BACKEND_MAX_OPERANDS && ndim <= LM_MAX_DIMS);
  int32_t device = lm_device_of(ts[0]);
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, device, elementwise, &be);
  if (st) return st;
  int64_t sh[LM_MAX_DIMS], numel = 1;
  for (int32_t d = 0; d < ndim; d++) numel *= sh[d] = shape[d];
  if (numel == 0) return LM_OK;
  int64_t strides[LM_BACKEND_MAX_OPERANDS * LM_MAX_DIMS];
  void *data[LM_BACKEND_MAX_OPERANDS];
  int32_t dtypes[LM_BACKEND_MAX_OPERANDS];
  lm_scalar scalars[LM_BACKEND_MAX_OPERANDS];
  memset(scalars, 0, sizeof scalars);
  for (int32_t k = 0; k < n; k++) {
    const lm_tensor *t = ts[k];
    int64_t *s = strides + k * LM_MAX_DIMS;
    if (k > 0 && lm_device_of(t) != device) { /* a 0-d CPU tensor: a host value */
      LM_ASSERT(cpu_scalar(t));
      data[k] = NULL;
      host_scalar(t, &dtypes[k], &scalars[k]);
      memset(s, 0, LM_MAX_DIMS * sizeof *s);
      continue;
    }
    data[k] = lm_data(t);
    dtypes[k] = t->dtype;
    lm_broadcast_strides(t, ndim, shape, s);
  }
  int32_t nd = coalesce(ndim, sh, n, strides);
  int64_t packed[LM_BACKEND_MAX_OPERANDS * LM_MAX_DIMS]; /* operand-major, nd per operand */
  for (int32_t k = 0; k < n; k++)
    for (int32_t d = 0; d < nd; d++) packed[k * nd + d] = strides[k * LM_MAX_DIMS + d];
  if ((st = be->elementwise(code, dtype, nd, sh, n, data, packed, dtypes, scalars, param)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}
