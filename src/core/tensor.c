/* tensor.c - tensor handles, creation, views and copies. */
#include "internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- handles ---- */

static void storage_release(lm_storage *s) {
  if (atomic_fetch_sub(&s->refcount, 1) != 1) return;
  if (s->external) {
  } else if (s->pinned) {
    lm_pinned_free(s->data, s->nbytes);
  } else if (s->device == LM_CPU) {
    lm_free(s->data, s->nbytes);
  } else {
    lm_device_free(s->device, s->data, s->nbytes);
  }
  free(s);
}

void lm_tensor_retain(lm_tensor *t) {
  if (t) atomic_fetch_add(&t->refcount, 1);
}

void lm_tensor_release(lm_tensor *t) {
  if (!t || atomic_fetch_sub(&t->refcount, 1) != 1) return;
  if (t->grad_fn) lm_node_release(t->grad_fn);
  lm_tensor_release(t->grad);
  storage_release(t->storage);
  free(t);
}

int64_t lm_numel(const lm_tensor *t) {
  int64_t n = 1;
  for (int32_t d = 0; d < t->ndim; d++) n *= t->shape[d];
  return n;
}

bool lm_is_contiguous(const lm_tensor *t) {
  int64_t expect = 1;
  for (int32_t d = t->ndim - 1; d >= 0; d--) {
    if (t->shape[d] != 1 && t->stride[d] != expect) return false;
    expect *= t->shape[d];
  }
  return true;
}

void lm_tensor_get_info(const lm_tensor *t, lm_tensor_info *out) {
  memset(out, 0, sizeof *out);
  out->dtype = t->dtype;
  out->device = t->storage->device;
  out->ndim = t->ndim;
  out->contiguous = lm_is_contiguous(t);
  memcpy(out->shape, t->shape, sizeof t->shape);
  memcpy(out->stride, t->stride, sizeof t->stride);
  out->offset = t->offset;
  out->numel = lm_numel(t);
  out->data = lm_data(t);
}

int32_t lm_tensor_same_storage(const lm_tensor *a, const lm_tensor *b) {
  return a->storage == b->storage;
}

lm_tensor *lm_view_header(const lm_tensor *t) {
  lm_tensor *v = malloc(sizeof *v);
  if (!v) return NULL;
  memcpy(v, t, sizeof *v);
  atomic_init(&v->refcount, 1);
  v->requires_grad = false;
  v->output_nr = 0;
  v->grad_fn = NULL;
  v->grad = NULL;
  atomic_fetch_add(&t->storage->refcount, 1);
  return v;
}

static void contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int32_t d = ndim - 1; d >= 0; d--) {
    stride[d] = s;
    s *= shape[d] > 0 ? shape[d] : 1;
  }
}

/* Elements in a shape, or false when the count passes LM_MAX_NUMEL (which
   also keeps every byte offset within int64). */
#define LM_MAX_NUMEL (INT64_MAX / 16)
static bool checked_numel(int32_t ndim, const int64_t *shape, int64_t *numel) {
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; d++)
    if (__builtin_mul_overflow(n, shape[d], &n) || n > LM_MAX_NUMEL) return false;
  *numel = n;
  return true;
}

static lm_status too_many(lm_ctx *ctx, const char *op, int32_t ndim, const int64_t *shape) {
  char buf[LM_SHAPE_BUF];
  return lm_err(ctx, LM_E_SHAPE, "%s: shape %s has too many elements, expected at most %lld", op,
                lm_shape_str(ndim, shape, buf, sizeof buf), (long long)LM_MAX_NUMEL);
}

static lm_status check_shape(lm_ctx *ctx, const char *op, int32_t ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > LM_MAX_DIMS)
    return lm_err(ctx, LM_E_SHAPE, "%s: %d dimensions, expected 0 to %d", op, ndim, LM_MAX_DIMS);
  for (int32_t d = 0; d < ndim; d++)
    if (shape[d] < 0)
      return lm_err(ctx, LM_E_SHAPE, "%s: size %lld in dimension %d is negative", op, (long long)shape[d], d);
  return LM_OK;
}

lm_status lm_new(lm_ctx *ctx, const char *op, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  return lm_new_on(ctx, op, LM_CPU, dtype, ndim, shape, out);
}

/* lm_new_on, in pinned host memory when pin (device is then LM_CPU). */
static lm_status new_tensor(lm_ctx *ctx, const char *op, int32_t device, bool pin, int32_t dtype, int32_t ndim,
                            const int64_t *shape, lm_tensor **out) {
  if (!lm_dtype_valid(dtype)) return lm_err(ctx, LM_E_DTYPE, "%s: unknown dtype %d", op, dtype);
  lm_status st = check_shape(ctx, op, ndim, shape);
  if (st) return st;
  int64_t numel;
  if (!checked_numel(ndim, shape, &numel)) return too_many(ctx, op, ndim, shape);
  size_t nbytes = (size_t)numel * lm_dtype_size(dtype);
  lm_tensor *t = calloc(1, sizeof *t);
  lm_storage *s = calloc(1, sizeof *s);
  void *data = NULL;
  if (t && s && device != LM_CPU) {
    if ((st = lm_device_alloc(ctx, op, device, nbytes, &data))) {
      free(t);
      free(s);
      return st;
    }
  } else if (t && s && pin) {
    if ((st = lm_pinned_alloc(ctx, op, nbytes, &data))) {
      free(t);
      free(s);
      return st;
    }
    if (data) s->pinned = true;
    else data = lm_alloc(ctx, nbytes); /* nothing can pin: ordinary memory */
  } else if (t && s) {
    data = lm_alloc(ctx, nbytes);
  }
  if (!data) {
    free(t);
    free(s);
    char buf[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_OOM, "%s: out of memory allocating %s %s (%zu bytes)", op,
                  lm_dtype_name(dtype), lm_shape_str(ndim, shape, buf, sizeof buf), nbytes);
  }
  atomic_init(&s->refcount, 1);
  s->data = data;
  s->nbytes = nbytes;
  s->device = device;
  atomic_init(&t->refcount, 1);
  t->dtype = dtype;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, ndim * sizeof *shape);
  contiguous_strides(ndim, shape, t->stride);
  t->storage = s;
  *out = t;
  return LM_OK;
}

lm_status lm_new_on(lm_ctx *ctx, const char *op, int32_t device, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  return new_tensor(ctx, op, device, false, dtype, ndim, shape, out);
}

lm_status lm_new_pinned(lm_ctx *ctx, const char *op, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  return new_tensor(ctx, op, LM_CPU, true, dtype, ndim, shape, out);
}

lm_status lm_empty(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  return lm_new(ctx, "empty", dtype, ndim, shape, out);
}

lm_status lm_from_ptr(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, const int64_t *stride, void *data, lm_tensor **out) {
  if (!lm_dtype_valid(dtype)) return lm_err(ctx, LM_E_DTYPE, "from_ptr: unknown dtype %d", dtype);
  lm_status st = check_shape(ctx, "from_ptr", ndim, shape);
  if (st) return st;
  if (!data) return lm_err(ctx, LM_E_ARG, "from_ptr: data pointer is NULL");
  lm_tensor *t = calloc(1, sizeof *t);
  lm_storage *s = calloc(1, sizeof *s);
  if (!t || !s) {
    free(t);
    free(s);
    return lm_err(ctx, LM_E_OOM, "from_ptr: out of memory");
  }
  atomic_init(&s->refcount, 1);
  s->data = data;
  s->external = true;
  atomic_init(&t->refcount, 1);
  t->dtype = dtype;
  t->ndim = ndim;
  if (ndim) memcpy(t->shape, shape, ndim * sizeof *shape);
  if (stride && ndim) memcpy(t->stride, stride, ndim * sizeof *stride);
  else contiguous_strides(ndim, shape, t->stride);
  t->storage = s;
  *out = t;
  return LM_OK;
}

/* ---- broadcasting ---- */

lm_status lm_broadcast_shape(lm_ctx *ctx, const char *op, int32_t na, const int64_t *sa, int32_t nb, const int64_t *sb, int32_t *ndim, int64_t *shape) {
  int32_t n = na > nb ? na : nb;
  for (int32_t i = 0; i < n; i++) {
    int64_t a = i < n - na ? 1 : sa[i - (n - na)];
    int64_t b = i < n - nb ? 1 : sb[i - (n - nb)];
    if (a != b && a != 1 && b != 1) {
      char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
      return lm_err(ctx, LM_E_SHAPE, "%s: shapes %s and %s cannot broadcast (dimension %d: %lld vs %lld)",
                    op, lm_shape_str(na, sa, x, sizeof x), lm_shape_str(nb, sb, y, sizeof y), i,
                    (long long)a, (long long)b);
    }
    shape[i] = a == 1 ? b : a;
  }
  *ndim = n;
  return LM_OK;
}

void lm_broadcast_strides(const lm_tensor *t, int32_t ndim, const int64_t *shape, int64_t *stride) {
  int32_t lead = ndim - t->ndim;
  for (int32_t d = 0; d < ndim; d++) {
    int32_t s = d - lead;
    stride[d] = (s < 0 || t->shape[s] != shape[d]) ? 0 : t->stride[s];
  }
}

lm_status lm_prepare_out(lm_ctx *ctx, const char *op, lm_tensor *dst, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **res) {
  if (!dst) return lm_new(ctx, op, dtype, ndim, shape, res);
  bool same = dst->ndim == ndim;
  for (int32_t d = 0; same && d < ndim; d++) same = dst->shape[d] == shape[d];
  if (!same) {
    char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: destination has shape %s, expected %s", op,
                  LM_SHP(dst, x), lm_shape_str(ndim, shape, y, sizeof y));
  }
  lm_tensor_retain(dst);
  *res = dst;
  return LM_OK;
}

/* ---- argument checks shared by the op families ---- */

lm_status lm_check_input(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what) {
  if (!t) return lm_err(ctx, LM_E_ARG, "%s: %s is NULL", op, what);
  if (t->storage->device != LM_CPU)
    return lm_err(ctx, LM_E_DEVICE, "%s: %s is on %s; this op runs on the CPU only so far (move it with :to('cpu'))",
                  op, what, lm_device_name(t->storage->device));
  return LM_OK;
}

lm_status lm_check_writable(lm_ctx *ctx, const char *op, const lm_tensor *t) {
  for (int32_t d = 0; d < t->ndim; d++)
    if (t->stride[d] == 0 && t->shape[d] > 1) {
      char buf[LM_SHAPE_BUF];
      return lm_err(ctx, LM_E_ARG, "%s: the destination of shape %s is an expanded view (stride 0 in dimension %d), "
                    "expected memory of its own (clone it first)", op, LM_SHP(t, buf), d);
    }
  return LM_OK;
}

/* The bytes t can touch: [*lo, *hi). */
static void byte_span(const lm_tensor *t, const char **lo, const char **hi) {
  int64_t es = lm_dtype_size(t->dtype), a = 0, b = 0;
  for (int32_t d = 0; d < t->ndim; d++) {
    if (t->shape[d] == 0) {
      *lo = *hi = lm_data(t);
      return;
    }
    int64_t ext = (t->shape[d] - 1) * t->stride[d];
    if (ext < 0) a += ext; else b += ext;
  }
  *lo = lm_data(t) + a * es;
  *hi = lm_data(t) + (b + 1) * es;
}

bool lm_needs_temp(const lm_tensor *dst, const lm_tensor *in, int32_t nd, const int64_t *shape) {
  const char *dlo, *dhi, *ilo, *ihi;
  byte_span(dst, &dlo, &dhi);
  byte_span(in, &ilo, &ihi);
  if (dhi <= ilo || ihi <= dlo) return false;
  if (lm_dtype_size(dst->dtype) != lm_dtype_size(in->dtype) || lm_data(dst) != lm_data(in)) return true;
  int64_t st[LM_MAX_DIMS];
  lm_broadcast_strides(in, nd, shape, st);
  for (int32_t d = 0; d < nd; d++)
    if (shape[d] > 1 && st[d] != dst->stride[d]) return true;
  return false;
}

/* ---- copies ---- */

typedef struct { int32_t dd, sd; } cast_arg;

static void cast_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  const cast_arg *a = arg;
  if (a->dd == a->sd && s[0] == s[1] && s[0] == lm_dtype_size(a->dd)) {
    memcpy(p[0], p[1], n * s[0]);
    return;
  }
  lm_cast_strided(a->dd, p[0], s[0], a->sd, p[1], s[1], n);
}

/* Copying a view whose last two dims are transposed (x:t():contiguous())
   element by element reads one cache line per element; tiles of TILE x TILE
   reuse each line TILE times. */
#define TILE 32
typedef struct {
  const lm_operand *ops;
  const int64_t *shape;
  int32_t nd, es;
  int64_t rows, cols, row_blocks;
} transpose_arg;

static bool is_transpose_copy(const lm_tensor *dst, const lm_tensor *src, int32_t nd, const int64_t *shape, const lm_operand *ops) {
  if (nd < 2 || dst->dtype != src->dtype || shape[nd - 1] < TILE || shape[nd - 2] < TILE) return false;
  int32_t es = ops[0].esize;
  return (es == 4 || es == 8) && ops[0].stride[nd - 1] == 1 && ops[1].stride[nd - 2] == 1 && ops[1].stride[nd - 1] >= shape[nd - 2];
}

#define TRANSPOSE_TILE(T)                                              \
  for (int64_t i = r0; i < r1; i++)                                    \
    for (int64_t j = c0; j < c1; j++) ((T *)d)[i * dld + j] = ((const T *)s)[i + j * sld];

static void transpose_tiles(void *arg, int64_t begin, int64_t end) {
  const transpose_arg *a = arg;
  int32_t nd = a->nd;
  int64_t dld = a->ops[0].stride[nd - 2], sld = a->ops[1].stride[nd - 1];
  for (int64_t task = begin; task < end; task++) {
    int64_t b = task / a->row_blocks, r0 = task % a->row_blocks * TILE;
    int64_t r1 = r0 + TILE < a->rows ? r0 + TILE : a->rows;
    char *d = a->ops[0].data, *s = a->ops[1].data;
    for (int32_t k = nd - 3; k >= 0; k--) { /* batch position -> offsets */
      int64_t i = b % a->shape[k];
      b /= a->shape[k];
      d += i * a->ops[0].stride[k] * a->es;
      s += i * a->ops[1].stride[k] * a->es;
    }
    for (int64_t c0 = 0; c0 < a->cols; c0 += TILE) {
      int64_t c1 = c0 + TILE < a->cols ? c0 + TILE : a->cols;
      if (a->es == 4) { TRANSPOSE_TILE(uint32_t) } else { TRANSPOSE_TILE(uint64_t) }
    }
  }
}

/* dst = src on a device: the backend's elementwise copy (a 0-d CPU source
   is a host value, read as f64 or an exact i64). */
static lm_status copy_on_device(lm_ctx *ctx, const char *op, lm_tensor *dst, const lm_tensor *src, int32_t nd,
                                const int64_t *shape) {
  int32_t kd = src->dtype == LM_BOOL ? LM_U8 : src->dtype;
  if (lm_device_of(src) != lm_device_of(dst)) kd = lm_dtype_is_float(src->dtype) ? LM_F64 : LM_I64;
  const lm_tensor *ts[2] = {dst, src};
  return lm_dev_elementwise(ctx, op, LM_OP_COPY, kd, nd, shape, 2, ts, 0);
}

static lm_status to_dtype_as(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t dtype, lm_tensor **out);

/* lm_copy_, with errors in the name of op (to, clone, contiguous use it). */
static lm_status copy_as(lm_ctx *ctx, const char *op, lm_tensor *dst, const lm_tensor *src) {
  int32_t nd;
  int64_t shape[LM_MAX_DIMS];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, dst, "destination")) || (st = lm_check_arg(ctx, op, src, "source")))
    return st;
  st = lm_broadcast_shape(ctx, op, dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape);
  if (st) return st;
  bool same = nd == dst->ndim;
  for (int32_t d = 0; same && d < nd; d++) same = shape[d] == dst->shape[d];
  if (!same) {
    char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: source of shape %s does not broadcast to destination %s", op,
                  LM_SHP(src, x), LM_SHP(dst, y));
  }
  if ((st = lm_check_writable(ctx, op, dst))) return st;
  int32_t dd = lm_device_of(dst), sd = lm_device_of(src);
  bool host_value = dd != LM_CPU && sd == LM_CPU && src->ndim == 0;
  if (dd != sd && !host_value) { /* from another device: bring the source over first */
    lm_tensor *moved;
    bool grad = lm_grad_pause(ctx);
    st = lm_to_device(ctx, src, dd, &moved);
    ctx->grad_enabled = grad;
    if (st) return st;
    st = copy_as(ctx, op, dst, moved);
    lm_tensor_release(moved);
    return st;
  }
  if (dd == sd && lm_needs_temp(dst, src, nd, shape)) { /* overlapping memory: copy via a temporary */
    lm_tensor *tmp;
    if ((st = to_dtype_as(ctx, op, src, src->dtype, &tmp))) return st;
    st = copy_as(ctx, op, dst, tmp);
    lm_tensor_release(tmp);
    return st;
  }
  if (dd != LM_CPU) return copy_on_device(ctx, op, dst, src, nd, shape);
  lm_operand ops[2] = {lm_operand_of(dst, nd, shape), lm_operand_of(src, nd, shape)};
  if (is_transpose_copy(dst, src, nd, shape, ops)) {
    transpose_arg a = {ops, shape, nd, ops[0].esize, shape[nd - 2], shape[nd - 1], (shape[nd - 2] + TILE - 1) / TILE};
    int64_t batch = 1;
    for (int32_t d = 0; d < nd - 2; d++) batch *= shape[d];
    lm_parallel_for(ctx, batch * a.row_blocks, 1, transpose_tiles, &a);
    return LM_OK;
  }
  cast_arg a = {dst->dtype, src->dtype};
  lm_foreach(ctx, nd, shape, 2, ops, cast_kernel, &a, true);
  return LM_OK;
}

lm_status lm_copy_(lm_ctx *ctx, lm_tensor *dst, const lm_tensor *src) { return copy_as(ctx, "copy", dst, src); }

lm_status lm_clone(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  lm_status st = lm_check_arg(ctx, "clone", t, "tensor");
  return st ? st : to_dtype_as(ctx, "clone", t, t->dtype, out);
}

/* The gradient of a copy or conversion: g in the input's dtype. */
static lm_status copy_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  return lm_cast_if_needed(ctx, gout[0], (int32_t)n->ip[0], &gin[0]);
}

/* A converted copy of t on its device, errors named op. */
static lm_status to_dtype_as(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t dtype, lm_tensor **out) {
  lm_tensor *r;
  lm_node *n;
  lm_status st = lm_check_arg(ctx, op, t, "tensor");
  if (st) return st;
  st = lm_new_on(ctx, op, lm_device_of(t), dtype, t->ndim, t->shape, &r);
  if (st) return st;
  st = copy_as(ctx, op, r, t);
  if (!st && lm_dtype_is_float(dtype) && (st = lm_record(ctx, LM_OP_COPY, copy_backward, 1, &t, 1, &r, &n)) == LM_OK && n)
    n->ip[0] = t->dtype;
  if (st) { lm_tensor_release(r); return st; }
  *out = r;
  return LM_OK;
}

lm_status lm_to_dtype(lm_ctx *ctx, const lm_tensor *t, int32_t dtype, lm_tensor **out) {
  return to_dtype_as(ctx, "to", t, dtype, out);
}

lm_status lm_contiguous(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  if (lm_is_contiguous(t)) {
    lm_tensor_retain((lm_tensor *)t);
    *out = (lm_tensor *)t;
    return LM_OK;
  }
  lm_status st = lm_check_arg(ctx, "contiguous", t, "tensor");
  return st ? st : to_dtype_as(ctx, "contiguous", t, t->dtype, out);
}

/* ---- views ---- */

static lm_status make_view(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t ndim, const int64_t *shape, const int64_t *stride, int64_t offset, lm_tensor **out) {
  int64_t numel;
  if (!checked_numel(ndim, shape, &numel)) return too_many(ctx, op, ndim, shape);
  lm_tensor *v = lm_view_header(t);
  if (!v) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  v->ndim = ndim;
  memmove(v->shape, shape, ndim * sizeof *shape);
  memmove(v->stride, stride, ndim * sizeof *stride);
  v->offset = offset;
  *out = v;
  return LM_OK;
}

/* Views on the tape: each kind knows how to send the gradient back to the
   viewed tensor's shape. ip[0] = kind, ip[1..] its parameters, ip[16] the
   input's ndim and ip[17..] its shape. */
enum { VIEW_RESHAPE, VIEW_SLICE, VIEW_SELECT, VIEW_TRANSPOSE, VIEW_PERMUTE, VIEW_EXPAND };

static lm_status view_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  const int64_t *ip = n->ip, *in_shape = ip + 17;
  int32_t in_nd = (int32_t)ip[16];
  const lm_tensor *g = gout[0];
  lm_tensor *z = NULL, *v = NULL;
  lm_status st;
  switch (ip[0]) {
  case VIEW_RESHAPE: return lm_reshape(ctx, g, in_nd, in_shape, &gin[0]);
  case VIEW_EXPAND: return lm_sum_to(ctx, g, in_nd, in_shape, &gin[0]);
  case VIEW_TRANSPOSE: return lm_transpose(ctx, g, (int32_t)ip[1], (int32_t)ip[2], &gin[0]);
  case VIEW_PERMUTE: {
    int32_t inv[LM_MAX_DIMS];
    for (int32_t d = 0; d < in_nd; d++) inv[ip[1 + d]] = d;
    return lm_permute(ctx, g, inv, &gin[0]);
  }
  default: /* slice and select: the gradient lands in a zero tensor */
    if ((st = lm_new_on(ctx, "backward", lm_device_of(g), g->dtype, in_nd, in_shape, &z))) return st;
    if ((st = lm_fill(ctx, z, 0.0))) goto done;
    st = ip[0] == VIEW_SLICE ? lm_slice(ctx, z, (int32_t)ip[1], ip[2], ip[3], ip[4], &v)
                             : lm_select(ctx, z, (int32_t)ip[1], ip[2], &v);
    if (!st) st = lm_copy_(ctx, v, g);
    if (!st) { gin[0] = z; z = NULL; }
  done:
    lm_tensor_release(v);
    lm_tensor_release(z);
    return st;
  }
}

/* Records view *out of t (kind and up to 8 parameters); on failure the
   view is released. */
static lm_status record_view(lm_ctx *ctx, int32_t kind, const lm_tensor *t, lm_tensor **out, int32_t np, const int64_t *params) {
  lm_node *n;
  lm_status st = lm_record(ctx, LM_OP_VIEW, view_backward, 1, &t, 1, out, &n);
  if (st) { lm_tensor_release(*out); *out = NULL; return st; }
  if (!n) return LM_OK;
  n->ip[0] = kind;
  memcpy(n->ip + 1, params, (size_t)np * sizeof *params);
  n->ip[16] = t->ndim;
  memcpy(n->ip + 17, t->shape, (size_t)t->ndim * sizeof *t->shape);
  return LM_OK;
}

lm_status lm_as_strided(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, const int64_t *stride, int64_t offset, lm_tensor **out) {
  if (lm_grad_needed(ctx, 1, &t))
    return lm_err(ctx, LM_E_UNSUPPORTED, "as_strided: not differentiable; use view, slice, select or expand (or no_grad)");
  lm_status st = check_shape(ctx, "as_strided", ndim, shape);
  if (st) return st;
  /* every reachable element must lie inside the storage */
  int64_t lo = offset, hi = offset, numel;
  if (!checked_numel(ndim, shape, &numel)) return too_many(ctx, "as_strided", ndim, shape);
  bool overflow = false;
  for (int32_t d = 0; d < ndim && numel > 0; d++) {
    int64_t ext;
    overflow |= __builtin_mul_overflow(shape[d] - 1, stride[d], &ext);
    overflow |= ext < 0 ? __builtin_add_overflow(lo, ext, &lo) : __builtin_add_overflow(hi, ext, &hi);
  }
  int64_t cap = t->storage->external ? INT64_MAX : (int64_t)(t->storage->nbytes / lm_dtype_size(t->dtype));
  if (overflow)
    return lm_err(ctx, LM_E_INDEX, "as_strided: strides overflow the address range, expected a view inside the storage");
  if (numel > 0 && (lo < 0 || hi >= cap))
    return lm_err(ctx, LM_E_INDEX, "as_strided: view reaches elements %lld..%lld outside storage of %lld elements",
                  (long long)lo, (long long)hi, (long long)cap);
  return make_view(ctx, "as_strided", t, ndim, shape, stride, offset, out);
}

/* Fills in a -1 and checks the element count. */
static lm_status infer_shape(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t ndim, const int64_t *shape, int64_t *res) {
  if (ndim < 0 || ndim > LM_MAX_DIMS)
    return lm_err(ctx, LM_E_SHAPE, "%s: %d dimensions, expected 0 to %d", op, ndim, LM_MAX_DIMS);
  int64_t known = 1, numel = lm_numel(t);
  int32_t infer = -1;
  for (int32_t d = 0; d < ndim; d++) {
    res[d] = shape[d];
    if (shape[d] == -1) {
      if (infer >= 0) return lm_err(ctx, LM_E_SHAPE, "%s: only one dimension can be -1", op);
      infer = d;
    } else if (shape[d] < 0) {
      return lm_err(ctx, LM_E_SHAPE, "%s: size %lld in dimension %d is negative", op, (long long)shape[d], d);
    } else if (__builtin_mul_overflow(known, shape[d], &known) || known > LM_MAX_NUMEL) {
      return too_many(ctx, op, ndim, shape);
    }
  }
  if (infer >= 0 && known != 0 && numel % known == 0) {
    res[infer] = numel / known;
    known = numel;
  }
  if (known != numel || (infer >= 0 && known == 0)) {
    char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: cannot reshape %s (%lld elements) to %s", op, LM_SHP(t, x),
                  (long long)numel, lm_shape_str(ndim, shape, y, sizeof y));
  }
  return LM_OK;
}

/* Strides for viewing t with a new shape without copying, if possible.
   The old dims split into runs that are contiguous within themselves; each
   run must be covered exactly by a run of new dims. */
static bool view_strides(const lm_tensor *t, int32_t ndim, const int64_t *shape, int64_t *stride) {
  if (lm_numel(t) == 0 || t->ndim == 0) {
    contiguous_strides(ndim, shape, stride);
    return true;
  }
  int32_t nd = ndim - 1;
  int64_t base = t->stride[t->ndim - 1], old_n = 1, new_n = 1;
  for (int32_t od = t->ndim - 1; od >= 0; od--) {
    old_n *= t->shape[od];
    bool run_ends = od == 0 || (t->shape[od - 1] != 1 && t->stride[od - 1] != old_n * base);
    if (!run_ends) continue;
    while (nd >= 0 && (new_n < old_n || shape[nd] == 1)) {
      stride[nd] = new_n * base;
      new_n *= shape[nd--];
    }
    if (new_n != old_n) return false;
    if (od > 0) {
      base = t->stride[od - 1];
      old_n = new_n = 1;
    }
  }
  return nd < 0;
}

lm_status lm_view(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  int64_t s[LM_MAX_DIMS], st[LM_MAX_DIMS];
  lm_status e = infer_shape(ctx, "view", t, ndim, shape, s);
  if (e) return e;
  if (!view_strides(t, ndim, s, st)) {
    char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "view: a %s tensor with these strides cannot be viewed as %s without a copy (use reshape)",
                  LM_SHP(t, x), lm_shape_str(ndim, s, y, sizeof y));
  }
  if ((e = make_view(ctx, "view", t, ndim, s, st, t->offset, out))) return e;
  return record_view(ctx, VIEW_RESHAPE, t, out, 0, NULL);
}

lm_status lm_reshape(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  int64_t s[LM_MAX_DIMS], st[LM_MAX_DIMS];
  lm_status e = infer_shape(ctx, "reshape", t, ndim, shape, s);
  if (e) return e;
  if (view_strides(t, ndim, s, st)) {
    if ((e = make_view(ctx, "reshape", t, ndim, s, st, t->offset, out))) return e;
    return record_view(ctx, VIEW_RESHAPE, t, out, 0, NULL);
  }
  lm_tensor *c;
  e = lm_clone(ctx, t, &c);
  if (e) return e;
  e = lm_view(ctx, c, ndim, s, out);
  lm_tensor_release(c);
  return e;
}

#define WRAP_DIM(op, dim, nd)                                                              \
  int32_t dim##_w = lm_wrap_dim(dim, nd);                                                  \
  if (dim##_w < 0)                                                                         \
    return lm_err(ctx, LM_E_INDEX, "%s: dimension %d out of range for a %d-D tensor", op, dim, nd);

lm_status lm_slice(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int64_t start, int64_t stop, int64_t step, lm_tensor **out) {
  WRAP_DIM("slice", dim, t->ndim);
  if (step <= 0) return lm_err(ctx, LM_E_ARG, "slice: step %lld must be positive", (long long)step);
  int64_t n = t->shape[dim_w];
  /* Python rules: negatives count from the end, out-of-range bounds clip */
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  start = start < 0 ? 0 : start > n ? n : start;
  stop = stop < start ? start : stop > n ? n : stop;
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  memcpy(stride, t->stride, sizeof stride);
  shape[dim_w] = stop > start ? (stop - start - 1) / step + 1 : 0;
  if (__builtin_mul_overflow(t->stride[dim_w], step, &stride[dim_w]))
    return lm_err(ctx, LM_E_ARG, "slice: step %lld is too large, expected at most the dimension's size", (long long)step);
  int64_t off = t->offset + (shape[dim_w] > 0 ? start * t->stride[dim_w] : 0);
  lm_status e = make_view(ctx, "slice", t, t->ndim, shape, stride, off, out);
  if (e) return e;
  int64_t params[4] = {dim_w, start, stop, step};
  return record_view(ctx, VIEW_SLICE, t, out, 4, params);
}

lm_status lm_select(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int64_t index, lm_tensor **out) {
  WRAP_DIM("select", dim, t->ndim);
  int64_t n = t->shape[dim_w];
  if (index < -n || index >= n)
    return lm_err(ctx, LM_E_INDEX, "select: index %lld out of range for dimension %d of size %lld",
                  (long long)index, dim_w, (long long)n);
  if (index < 0) index += n;
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS];
  int32_t k = 0;
  for (int32_t d = 0; d < t->ndim; d++) {
    if (d == dim_w) continue;
    shape[k] = t->shape[d];
    stride[k++] = t->stride[d];
  }
  lm_status e = make_view(ctx, "select", t, k, shape, stride, t->offset + index * t->stride[dim_w], out);
  if (e) return e;
  int64_t params[2] = {dim_w, index};
  return record_view(ctx, VIEW_SELECT, t, out, 2, params);
}

/* unbind: one node for all the slices, whose backward writes each slice's
   gradient into one tensor (selecting slice by slice would send back a
   full-size gradient per slice: O(n^2) for a loop over time steps). */
static lm_status unbind_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t dim = (int32_t)n->ip[0], in_nd = (int32_t)n->ip[16];
  lm_tensor *g, *v = NULL;
  lm_status st = lm_new_on(ctx, "backward", lm_device_of(gout[0]), gout[0]->dtype, in_nd, n->ip + 17, &g);
  for (int32_t i = 0; !st && i < n->n_out; i++) {
    if (!(st = lm_select(ctx, g, dim, i, &v))) st = lm_copy_(ctx, v, gout[i]);
    lm_tensor_release(v);
    v = NULL;
  }
  if (st) lm_tensor_release(g);
  else gin[0] = g;
  return st;
}

lm_status lm_unbind(lm_ctx *ctx, const lm_tensor *t, int32_t dim, lm_tensor **outs) {
  WRAP_DIM("unbind", dim, t->ndim);
  int64_t n = t->shape[dim_w];
  if (n > INT32_MAX) return lm_err(ctx, LM_E_SHAPE, "unbind: %lld slices, expected fewer than 2^31", (long long)n);
  bool grad = ctx->grad_enabled;
  ctx->grad_enabled = false; /* the slices record one node together, below */
  lm_status st = LM_OK;
  int64_t made = 0;
  for (; made < n && !st; made++) st = lm_select(ctx, t, dim_w, made, &outs[made]);
  ctx->grad_enabled = grad;
  if (st) made--;
  lm_node *node = NULL;
  if (!st && n > 0) st = lm_record(ctx, LM_OP_VIEW, unbind_backward, 1, &t, (int32_t)n, outs, &node);
  if (node) {
    node->ip[0] = dim_w;
    node->ip[16] = t->ndim;
    memcpy(node->ip + 17, t->shape, (size_t)t->ndim * sizeof *t->shape);
  }
  if (st)
    for (int64_t i = 0; i < made; i++) { lm_tensor_release(outs[i]); outs[i] = NULL; }
  return st;
}

lm_status lm_transpose(lm_ctx *ctx, const lm_tensor *t, int32_t d0, int32_t d1, lm_tensor **out) {
  WRAP_DIM("transpose", d0, t->ndim);
  WRAP_DIM("transpose", d1, t->ndim);
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  memcpy(stride, t->stride, sizeof stride);
  shape[d0_w] = t->shape[d1_w]; shape[d1_w] = t->shape[d0_w];
  stride[d0_w] = t->stride[d1_w]; stride[d1_w] = t->stride[d0_w];
  lm_status e = make_view(ctx, "transpose", t, t->ndim, shape, stride, t->offset, out);
  if (e) return e;
  int64_t params[2] = {d0_w, d1_w};
  return record_view(ctx, VIEW_TRANSPOSE, t, out, 2, params);
}

lm_status lm_permute(lm_ctx *ctx, const lm_tensor *t, const int32_t *perm, lm_tensor **out) {
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS], params[LM_MAX_DIMS];
  bool seen[LM_MAX_DIMS] = {false};
  for (int32_t d = 0; d < t->ndim; d++) {
    int32_t p = lm_wrap_dim(perm[d], t->ndim);
    if (p < 0 || seen[p])
      return lm_err(ctx, LM_E_ARG, "permute: entry %d (%d) is not a distinct dimension of a %d-D tensor", d, perm[d], t->ndim);
    seen[p] = true;
    shape[d] = t->shape[p];
    stride[d] = t->stride[p];
    params[d] = p;
  }
  lm_status e = make_view(ctx, "permute", t, t->ndim, shape, stride, t->offset, out);
  if (e) return e;
  return record_view(ctx, VIEW_PERMUTE, t, out, t->ndim, params);
}

lm_status lm_expand(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  if (ndim < t->ndim || ndim > LM_MAX_DIMS)
    return lm_err(ctx, LM_E_SHAPE, "expand: cannot expand a %d-D tensor to %d dimensions", t->ndim, ndim);
  int64_t s[LM_MAX_DIMS], st[LM_MAX_DIMS];
  int32_t lead = ndim - t->ndim;
  for (int32_t d = 0; d < ndim; d++) {
    int64_t have = d < lead ? 1 : t->shape[d - lead];
    int64_t want = shape[d] == -1 ? have : shape[d];
    if (d < lead && shape[d] == -1)
      return lm_err(ctx, LM_E_SHAPE, "expand: -1 is not allowed for new leading dimension %d", d);
    if (have != want && have != 1) {
      char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
      return lm_err(ctx, LM_E_SHAPE, "expand: cannot expand %s to %s (dimension %d has size %lld, not 1)",
                    LM_SHP(t, x), lm_shape_str(ndim, shape, y, sizeof y), d, (long long)have);
    }
    if (want < 0) return lm_err(ctx, LM_E_SHAPE, "expand: size %lld in dimension %d is negative", (long long)want, d);
    s[d] = want;
    st[d] = (d < lead || have != want) ? 0 : t->stride[d - lead];
  }
  lm_status e = make_view(ctx, "expand", t, ndim, s, st, t->offset, out);
  if (e) return e;
  return record_view(ctx, VIEW_EXPAND, t, out, 0, NULL);
}

lm_status lm_squeeze(lm_ctx *ctx, const lm_tensor *t, int32_t all, int32_t dim, lm_tensor **out) {
  int32_t dw = -1;
  if (!all) {
    dw = lm_wrap_dim(dim, t->ndim);
    if (dw < 0) return lm_err(ctx, LM_E_INDEX, "squeeze: dimension %d out of range for a %d-D tensor", dim, t->ndim);
  }
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS];
  int32_t k = 0;
  for (int32_t d = 0; d < t->ndim; d++) {
    if (t->shape[d] == 1 && (all || d == dw)) continue;
    shape[k] = t->shape[d];
    stride[k++] = t->stride[d];
  }
  lm_status e = make_view(ctx, "squeeze", t, k, shape, stride, t->offset, out);
  if (e) return e;
  return record_view(ctx, VIEW_RESHAPE, t, out, 0, NULL);
}

lm_status lm_unsqueeze(lm_ctx *ctx, const lm_tensor *t, int32_t dim, lm_tensor **out) {
  int32_t dw = lm_wrap_dim(dim, t->ndim + 1);
  if (dw < 0 || t->ndim >= LM_MAX_DIMS)
    return lm_err(ctx, LM_E_INDEX, "unsqueeze: dimension %d out of range for a %d-D tensor", dim, t->ndim);
  int64_t shape[LM_MAX_DIMS], stride[LM_MAX_DIMS];
  for (int32_t d = 0, k = 0; d <= t->ndim; d++) {
    if (d == dw) {
      shape[d] = 1;
      stride[d] = k < t->ndim ? t->stride[k] * t->shape[k] : 1;
    } else {
      shape[d] = t->shape[k];
      stride[d] = t->stride[k++];
    }
  }
  lm_status e = make_view(ctx, "unsqueeze", t, t->ndim + 1, shape, stride, t->offset, out);
  if (e) return e;
  return record_view(ctx, VIEW_RESHAPE, t, out, 0, NULL);
}
