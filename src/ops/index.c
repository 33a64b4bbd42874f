/* index.c - gather, scatter, index_select, masked_select, masked_fill and
 * nonzero. Indices are checked against their dimension before any element
 * moves, so a bad index is an LM_E_INDEX error and never a stray access. */
#include "../core/internal.h"
#include <stdlib.h>
#include <string.h>

#define GRAIN 32768 /* elements per thread below which threads do not pay */

/* ---- shared helpers ---- */

/* A header copy of t that is at least 1-D: PyTorch treats a 0-d tensor as
   one element along dimension 0 in these ops. Read-only, no reference. */
static void as_1d(const lm_tensor *t, lm_tensor *v) {
  memcpy(v, t, sizeof *v);
  if (v->ndim == 0) {
    v->ndim = 1;
    v->shape[0] = 1;
    v->stride[0] = 1;
  }
}

static lm_status bad_dim(lm_ctx *ctx, const char *op, int32_t dim, int32_t ndim) {
  return lm_err(ctx, LM_E_INDEX, "%s: dimension %d out of range for a %d-D tensor", op, dim, ndim);
}

/* Index tensors: i64 as given, i32 converted, anything else refused. */
static lm_status index_i64(lm_ctx *ctx, const char *op, const lm_tensor *index, lm_tensor **out) {
  lm_status st = lm_check_arg(ctx, op, index, "index");
  if (st) return st;
  if (index->dtype != LM_I64 && index->dtype != LM_I32)
    return lm_err(ctx, LM_E_DTYPE, "%s: index has dtype %s, expected i64 or i32", op, lm_dtype_name(index->dtype));
  return lm_cast_if_needed(ctx, index, LM_I64, out);
}

typedef struct range_arg {
  int64_t size, bad;
  bool found;
} range_arg;

static void range_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  range_arg *a = arg;
  if (a->found) return;
  for (int64_t i = 0; i < n; i++) {
    int64_t v = *(const int64_t *)(p[0] + i * s[0]);
    if ((uint64_t)v >= (uint64_t)a->size) { /* negatives wrap to huge */
      a->found = true;
      a->bad = v;
      return;
    }
  }
}

/* Every element of the i64 tensor idx must lie in [0, size); reports the
   first one (in row-major order) that does not. */
/* On a device: the smallest and largest index come back to the host (one
   read), and the offending value is the one out of range (the message
   then names the smallest bad value, not the first). */
static lm_status check_range_device(lm_ctx *ctx, const lm_tensor *idx, int64_t size, range_arg *a) {
  if (lm_numel(idx) == 0) return LM_OK;
  lm_tensor *lo = NULL, *hi = NULL, *hlo = NULL, *hhi = NULL;
  lm_status st;
  if (!(st = lm_reduce(ctx, LM_OP_MIN, idx, 0, NULL, 0, 0, &lo, NULL)) &&
      !(st = lm_reduce(ctx, LM_OP_MAX, idx, 0, NULL, 0, 0, &hi, NULL)) && !(st = lm_to_device(ctx, lo, LM_CPU, &hlo)) &&
      !(st = lm_to_device(ctx, hi, LM_CPU, &hhi))) {
    int64_t l = *(const int64_t *)lm_data(hlo), h = *(const int64_t *)lm_data(hhi);
    if (l < 0 || l >= size) { a->found = true; a->bad = l; }
    else if (h >= size) { a->found = true; a->bad = h; }
  }
  lm_tensor_release(lo);
  lm_tensor_release(hi);
  lm_tensor_release(hlo);
  lm_tensor_release(hhi);
  return st;
}

static lm_status check_range(lm_ctx *ctx, const char *op, const lm_tensor *idx, int32_t dim, int64_t size) {
  range_arg a = {size, 0, false};
  if (lm_device_of(idx) != LM_CPU) {
    lm_status st = check_range_device(ctx, idx, size, &a);
    if (st) return st;
  } else {
    lm_operand o = lm_operand_of(idx, idx->ndim, idx->shape);
    lm_foreach(ctx, idx->ndim, idx->shape, 1, &o, range_kernel, &a, false);
  }
  if (!a.found) return LM_OK;
  if (size == 0)
    return lm_err(ctx, LM_E_INDEX, "%s: index %lld is out of range for dimension %d of size 0 (it has no valid index)",
                  op, (long long)a.bad, dim);
  return lm_err(ctx, LM_E_INDEX, "%s: index %lld is out of range for dimension %d of size %lld (valid range 0 to %lld)",
                op, (long long)a.bad, dim, (long long)size, (long long)(size - 1));
}

/* ---- gather and index_select: out[pos] = t[pos with pos[dim] = idx[pos]] ---- */

typedef struct gather_arg {
  int32_t es;
  int64_t dim_stride; /* bytes between neighbours along dim in t */
} gather_arg;

#define GATHER_LOOP(T)                                                           \
  for (int64_t i = 0; i < n; i++) {                                              \
    int64_t v = *(const int64_t *)(p[1] + i * s[1]);                             \
    *(T *)(p[0] + i * s[0]) = *(const T *)(p[2] + i * s[2] + v * a->dim_stride); \
  }

/* operands: 0 out, 1 index (i64), 2 t with stride 0 along dim */
static void gather_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  const gather_arg *a = arg;
  if (s[1] == 0 && s[0] == a->es && s[2] == a->es) { /* one index for a contiguous run */
    memcpy(p[0], p[2] + *(const int64_t *)p[1] * a->dim_stride, n * a->es);
    return;
  }
  switch (a->es) {
  case 1: GATHER_LOOP(uint8_t) break;
  case 4: GATHER_LOOP(uint32_t) break;
  default: GATHER_LOOP(uint64_t) break;
  }
}

/* Runs the gather over (nd, shape) with an i64 index operand already set
   up; out is a fresh contiguous tensor of that shape (read as 1-D if 0-d). */
static void run_gather(lm_ctx *ctx, const lm_tensor *tv, int32_t dim, lm_tensor *out, lm_operand idx, int32_t nd, const int64_t *shape) {
  lm_tensor ov;
  as_1d(out, &ov);
  lm_operand src;
  src.data = lm_data(tv);
  src.esize = lm_dtype_size(tv->dtype);
  for (int32_t d = 0; d < nd; d++) src.stride[d] = d == dim ? 0 : tv->stride[d];
  lm_operand ops[3] = {lm_operand_of(&ov, nd, shape), idx, src};
  gather_arg a = {src.esize, tv->stride[dim] * src.esize};
  lm_foreach(ctx, nd, shape, 3, ops, gather_kernel, &a, true);
}

/* The backend's index_along over (nd, shape): out, src and the index
   through their strides (elements). */
static lm_status dev_index_along(lm_ctx *ctx, const char *op, int32_t mode, int32_t dtype, int32_t nd,
                                 const int64_t *shape, int32_t dim, const lm_tensor *out, const int64_t *ostride,
                                 const lm_tensor *src, const int64_t *sstride, const lm_tensor *idx,
                                 const int64_t *istride) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(out), index_along, &be);
  if (st) return st;
  int64_t n = 1;
  for (int32_t d = 0; d < nd; d++) n *= shape[d];
  if (n == 0) return LM_OK;
  if ((st = be->index_along(mode, dtype, nd, shape, dim, lm_data(out), ostride, lm_data(src), sstride,
                            (const int64_t *)lm_data(idx), istride)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

/* The one device of an index op's tensors (NULL entries skipped). */
static lm_status index_device(lm_ctx *ctx, const char *op, const lm_tensor *a, const lm_tensor *b, const lm_tensor *c,
                              const lm_tensor *d, int32_t *dev) {
  const lm_tensor *ts[4] = {a, b, c, d};
  const char *names[4] = {"input", "index", "src", "destination"};
  return lm_op_device(ctx, op, 4, ts, names, false, dev);
}

/* index.size(d) <= other.size(d) for every d (but skip, when skip >= 0). */
static lm_status check_fits(lm_ctx *ctx, const char *op, const lm_tensor *iv, const lm_tensor *ov, const char *oname, int32_t skip) {
  for (int32_t d = 0; d < iv->ndim; d++) {
    if (d == skip || iv->shape[d] <= ov->shape[d]) continue;
    char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
    if (skip >= 0)
      return lm_err(ctx, LM_E_SHAPE, "%s: index of shape %s is larger than %s of shape %s in dimension %d (only dimension %d may be larger)",
                    op, LM_SHP(iv, x), oname, LM_SHP(ov, y), d, skip);
    return lm_err(ctx, LM_E_SHAPE, "%s: index of shape %s is larger than %s of shape %s in dimension %d",
                  op, LM_SHP(iv, x), oname, LM_SHP(ov, y), d);
  }
  return LM_OK;
}

static lm_status gather_forward(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out) {
  const char *op = "gather";
  lm_tensor *idx = NULL, *res = NULL;
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if ((st = lm_check_arg(ctx, op, index, "index"))) return st;
  int32_t dev;
  if ((st = index_device(ctx, op, t, index, NULL, NULL, &dev))) return st;
  lm_tensor tv, iv;
  as_1d(t, &tv);
  as_1d(index, &iv);
  int32_t d = lm_wrap_dim(dim, tv.ndim);
  if (d < 0) return bad_dim(ctx, op, dim, t->ndim);
  if (iv.ndim != tv.ndim)
    return lm_err(ctx, LM_E_SHAPE, "%s: index has %d dimensions but input has %d (they must match)", op, index->ndim, t->ndim);
  if ((st = check_fits(ctx, op, &iv, &tv, "input", d))) return st;
  if ((st = index_i64(ctx, op, index, &idx))) return st;
  as_1d(idx, &iv);
  if ((st = check_range(ctx, op, &iv, d, tv.shape[d]))) goto done;
  if ((st = lm_new_on(ctx, op, dev, t->dtype, index->ndim, index->shape, &res))) goto done;
  if (dev != LM_CPU) {
    lm_tensor ov;
    as_1d(res, &ov);
    if ((st = dev_index_along(ctx, op, LM_INDEX_GATHER, t->dtype, iv.ndim, iv.shape, d, res, ov.stride, t, tv.stride,
                              idx, iv.stride)))
      goto done;
  } else {
    run_gather(ctx, &tv, d, res, lm_operand_of(&iv, iv.ndim, iv.shape), iv.ndim, iv.shape);
  }
  lm_finish_out(res, out);
  res = NULL;
done:
  lm_tensor_release(idx);
  lm_tensor_release(res);
  return st;
}

static lm_status index_select_forward(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out) {
  const char *op = "index_select";
  lm_tensor *idx = NULL, *res = NULL;
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if ((st = lm_check_arg(ctx, op, index, "index"))) return st;
  int32_t dev;
  if ((st = index_device(ctx, op, t, index, NULL, NULL, &dev))) return st;
  lm_tensor tv;
  as_1d(t, &tv);
  int32_t d = lm_wrap_dim(dim, tv.ndim);
  if (d < 0) return bad_dim(ctx, op, dim, t->ndim);
  if (index->ndim > 1) {
    char x[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: index must be 0-D or 1-D, got shape %s", op, LM_SHP(index, x));
  }
  int64_t n = lm_numel(index);
  if (t->ndim == 0 && n != 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: a 0-D input takes exactly one index, got %lld", op, (long long)n);
  if ((st = index_i64(ctx, op, index, &idx))) return st;
  lm_tensor iv;
  as_1d(idx, &iv);
  if ((st = check_range(ctx, op, &iv, d, tv.shape[d]))) goto done;
  int64_t shape[LM_MAX_DIMS];
  memcpy(shape, tv.shape, sizeof shape);
  shape[d] = n;
  if ((st = lm_new_on(ctx, op, dev, t->dtype, t->ndim, shape, &res))) goto done;
  /* the index varies along dim only: an operand with stride 0 elsewhere */
  lm_operand io;
  io.data = lm_data(idx);
  io.esize = 8;
  for (int32_t k = 0; k < tv.ndim; k++) io.stride[k] = k == d ? iv.stride[0] : 0;
  if (dev != LM_CPU) {
    lm_tensor ov;
    as_1d(res, &ov);
    if ((st = dev_index_along(ctx, op, LM_INDEX_GATHER, t->dtype, tv.ndim, shape, d, res, ov.stride, t, tv.stride, idx,
                              io.stride)))
      goto done;
  } else {
    run_gather(ctx, &tv, d, res, io, tv.ndim, shape);
  }
  lm_finish_out(res, out);
  res = NULL;
done:
  lm_tensor_release(idx);
  lm_tensor_release(res);
  return st;
}

/* ---- scatter ---- */

/* Each task owns whole lines along dim: positions that differ outside dim
   write different elements of dst, so tasks never collide, and within a
   line later indices win (SET) or add in order (ADD), as PyTorch on CPU. */
typedef struct scatter_plan {
  int32_t nouter;            /* dims other than dim */
  int64_t shape[LM_MAX_DIMS]; /* their sizes (from the index) */
  int64_t stride[3][LM_MAX_DIMS]; /* elements: 0 dst, 1 index, 2 src */
  int64_t len;               /* index.size(dim) */
  int64_t step[3];           /* elements along dim: dst (per index value), index, src */
  char *base[3];
  int32_t dtype, mode;
} scatter_plan;

#define SCATTER_LINE(T, OP)                                          \
  do {                                                               \
    T *dp = (T *)dst;                                                \
    const T *sp = (const T *)src;                                    \
    for (int64_t j = 0; j < p->len; j++) {                           \
      T *e = dp + ip[j * p->step[1]] * p->step[0];                   \
      T v = sp[j * p->step[2]];                                      \
      OP(T, e, v);                                                   \
    }                                                                \
  } while (0)
#define SET(T, e, v) (*(e) = (v))
#define ADD(T, e, v) (*(e) = (T)(*(e) + (v)))
/* integers wrap like PyTorch's: add as unsigned, no signed overflow */
#define ADD_I32(T, e, v) (*(e) = (T)((uint32_t)*(e) + (uint32_t)(v)))
#define ADD_I64(T, e, v) (*(e) = (T)((uint64_t)*(e) + (uint64_t)(v)))
#define OR(T, e, v) (*(e) = (T)(*(e) || (v)))

static void scatter_line(const scatter_plan *p, char *dst, const int64_t *ip, const char *src) {
  if (p->mode == LM_SCATTER_SET) {
    switch (lm_dtype_size(p->dtype)) {
    case 1: SCATTER_LINE(uint8_t, SET); break;
    case 4: SCATTER_LINE(uint32_t, SET); break;
    default: SCATTER_LINE(uint64_t, SET); break;
    }
    return;
  }
  switch (p->dtype) {
  case LM_F32: SCATTER_LINE(float, ADD); break;
  case LM_F64: SCATTER_LINE(double, ADD); break;
  case LM_I32: SCATTER_LINE(int32_t, ADD_I32); break;
  case LM_I64: SCATTER_LINE(int64_t, ADD_I64); break;
  case LM_U8: SCATTER_LINE(uint8_t, ADD); break;
  default: SCATTER_LINE(uint8_t, OR); break; /* bool */
  }
}

static void scatter_lines(void *p_, int64_t begin, int64_t end) {
  const scatter_plan *p = p_;
  int64_t coord[LM_MAX_DIMS], off[3] = {0, 0, 0}, r = begin;
  for (int32_t d = p->nouter - 1; d >= 0; d--) {
    coord[d] = r % p->shape[d];
    r /= p->shape[d];
    for (int k = 0; k < 3; k++) off[k] += coord[d] * p->stride[k][d];
  }
  int32_t es = lm_dtype_size(p->dtype);
  for (int64_t line = begin; line < end; line++) {
    scatter_line(p, p->base[0] + off[0] * es, (const int64_t *)p->base[1] + off[1], p->base[2] + off[2] * es);
    for (int32_t d = p->nouter - 1; d >= 0; d--) {
      for (int k = 0; k < 3; k++) off[k] += p->stride[k][d];
      if (++coord[d] < p->shape[d]) break;
      for (int k = 0; k < 3; k++) off[k] -= p->stride[k][d] * p->shape[d];
      coord[d] = 0;
    }
  }
}

static lm_status scatter_forward(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, const lm_tensor *src, int32_t mode, lm_tensor *dst, lm_tensor **out) {
  const char *op = mode == LM_SCATTER_ADD ? "scatter_add" : "scatter";
  lm_tensor *idx = NULL, *sc = NULL, *res = NULL, *tmp = NULL;
  lm_status st;
  if (mode != LM_SCATTER_SET && mode != LM_SCATTER_ADD)
    return lm_err(ctx, LM_E_ARG, "scatter: unknown mode %d (expected LM_SCATTER_SET or LM_SCATTER_ADD)", mode);
  if ((st = lm_check_arg(ctx, op, t, "input"))) return st;
  if ((st = lm_check_arg(ctx, op, index, "index"))) return st;
  if ((st = lm_check_arg(ctx, op, src, "src"))) return st;
  int32_t dev;
  if ((st = index_device(ctx, op, t, index, src, dst, &dev))) return st;
  lm_tensor tv, iv, sv;
  as_1d(t, &tv);
  as_1d(index, &iv);
  as_1d(src, &sv);
  int32_t d = lm_wrap_dim(dim, tv.ndim);
  if (d < 0) return bad_dim(ctx, op, dim, t->ndim);
  if (iv.ndim != tv.ndim)
    return lm_err(ctx, LM_E_SHAPE, "%s: index has %d dimensions but input has %d (they must match)", op, index->ndim, t->ndim);
  if ((st = check_fits(ctx, op, &iv, &tv, "input", d))) return st;
  bool scalar_src = src->ndim == 0; /* one value for every index */
  if (!scalar_src) {
    if (sv.ndim != iv.ndim)
      return lm_err(ctx, LM_E_SHAPE, "%s: src has %d dimensions but index has %d (they must match, or src is 0-D)", op, src->ndim, index->ndim);
    if ((st = check_fits(ctx, op, &iv, &sv, "src", -1))) return st;
  }
  if (dst && dst != t && dst->dtype != t->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: destination has dtype %s, expected %s like the input", op,
                  lm_dtype_name(dst->dtype), lm_dtype_name(t->dtype));
  if ((st = index_i64(ctx, op, index, &idx))) goto done;
  as_1d(idx, &iv);
  if ((st = check_range(ctx, op, &iv, d, tv.shape[d]))) goto done;
  if ((st = lm_cast_if_needed(ctx, src, t->dtype, &sc))) goto done;
  if (dst == t) {
    if ((st = lm_check_writable(ctx, op, dst))) goto done;
    lm_tensor_retain(dst);
    res = dst;
  } else {
    if (dst) {
      if ((st = lm_prepare_out(ctx, op, dst, t->dtype, t->ndim, t->shape, &res))) goto done;
    } else if ((st = lm_new_on(ctx, op, dev, t->dtype, t->ndim, t->shape, &res))) {
      goto done;
    }
    if ((st = lm_copy_(ctx, res, t))) goto done;
  }
  /* reading src or the index through storage being written: read a copy */
  if (lm_tensor_same_storage(sc, res)) {
    if ((st = lm_clone(ctx, sc, &tmp))) goto done;
    lm_tensor_release(sc);
    sc = tmp;
    tmp = NULL;
  }
  if (lm_tensor_same_storage(idx, res)) {
    if ((st = lm_clone(ctx, idx, &tmp))) goto done;
    lm_tensor_release(idx);
    idx = tmp;
    tmp = NULL;
    as_1d(idx, &iv);
  }
  lm_tensor rv;
  as_1d(res, &rv);
  as_1d(sc, &sv);
  scatter_plan p;
  p.nouter = 0;
  p.len = iv.shape[d];
  p.dtype = t->dtype;
  p.mode = mode;
  int64_t lines = 1;
  for (int32_t k = 0; k < iv.ndim; k++) {
    int64_t ss = scalar_src ? 0 : sv.stride[k];
    if (k == d) {
      p.step[0] = rv.stride[k];
      p.step[1] = iv.stride[k];
      p.step[2] = ss;
      continue;
    }
    p.shape[p.nouter] = iv.shape[k];
    p.stride[0][p.nouter] = rv.stride[k];
    p.stride[1][p.nouter] = iv.stride[k];
    p.stride[2][p.nouter] = ss;
    p.nouter++;
    lines *= iv.shape[k];
  }
  p.base[0] = lm_data(res);
  p.base[1] = lm_data(idx);
  p.base[2] = lm_data(sc);
  if (dev != LM_CPU) {
    int64_t ss[LM_MAX_DIMS];
    for (int32_t k = 0; k < iv.ndim; k++) ss[k] = scalar_src ? 0 : sv.stride[k];
    if ((st = dev_index_along(ctx, op, mode == LM_SCATTER_ADD ? LM_INDEX_SCATTER_ADD : LM_INDEX_SCATTER, t->dtype,
                              iv.ndim, iv.shape, d, res, rv.stride, sc, ss, idx, iv.stride)))
      goto done;
    lines = 0;
  }
  if (lines > 0 && p.len > 0) {
    int64_t grain = GRAIN / p.len;
    lm_parallel_for(ctx, lines, grain < 1 ? 1 : grain, scatter_lines, &p);
  }
  lm_finish_out(res, out);
  res = NULL;
done:
  lm_tensor_release(idx);
  lm_tensor_release(sc);
  lm_tensor_release(res);
  return st;
}

/* ---- masked_fill ---- */

typedef struct fill_arg {
  int32_t es;
  union { char b[8]; uint64_t align; } value; /* written as a double/int64 */
} fill_arg;

#define FILL_LOOP(T)                                                   \
  do {                                                                 \
    T v;                                                               \
    memcpy(&v, a->value.b, sizeof v);                                    \
    for (int64_t i = 0; i < n; i++)                                    \
      if (p[1][i * s[1]]) *(T *)(p[0] + i * s[0]) = v;                 \
  } while (0)

/* operands: 0 result, 1 mask (bool) */
static void fill_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  const fill_arg *a = arg;
  switch (a->es) {
  case 1: FILL_LOOP(uint8_t); break;
  case 4: FILL_LOOP(uint32_t); break;
  default: FILL_LOOP(uint64_t); break;
  }
}

static lm_status check_mask(lm_ctx *ctx, const char *op, const lm_tensor *mask, bool device_ok) {
  lm_status st = device_ok ? lm_check_arg(ctx, op, mask, "mask") : lm_check_input(ctx, op, mask, "mask");
  if (st) return st;
  if (mask->dtype != LM_BOOL)
    return lm_err(ctx, LM_E_DTYPE, "%s: mask has dtype %s, expected bool", op, lm_dtype_name(mask->dtype));
  return LM_OK;
}

static lm_status masked_fill_forward(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, double value, lm_tensor *dst, lm_tensor **out) {
  const char *op = "masked_fill";
  lm_tensor *res = NULL, *m = NULL;
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if ((st = check_mask(ctx, op, mask, true))) return st;
  int32_t dev;
  const lm_tensor *all[3] = {t, mask, dst};
  const char *names[3] = {"input", "mask", "destination"};
  if ((st = lm_op_device(ctx, op, 3, all, names, false, &dev))) return st;
  int32_t nd;
  int64_t shape[LM_MAX_DIMS];
  if ((st = lm_broadcast_shape(ctx, op, t->ndim, t->shape, mask->ndim, mask->shape, &nd, shape))) return st;
  if (dst == t) {
    /* in place: the mask must broadcast to t without growing it */
    if ((st = lm_check_writable(ctx, op, t))) return st;
    bool same = nd == t->ndim;
    for (int32_t d = 0; same && d < nd; d++) same = shape[d] == t->shape[d];
    if (!same) {
      char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
      return lm_err(ctx, LM_E_SHAPE, "%s: mask of shape %s does not broadcast to the destination's shape %s", op,
                    LM_SHP(mask, x), LM_SHP(t, y));
    }
    lm_tensor_retain(dst);
    res = dst;
  } else {
    if (dst) {
      if ((st = lm_prepare_out(ctx, op, dst, t->dtype, nd, shape, &res))) return st;
    } else if ((st = lm_new_on(ctx, op, dev, t->dtype, nd, shape, &res))) {
      return st;
    }
    if ((st = lm_copy_(ctx, res, t))) goto done;
  }
  if (lm_tensor_same_storage(mask, res)) { /* the fill would change the mask under us */
    if ((st = lm_clone(ctx, mask, &m))) goto done;
  } else {
    lm_tensor_retain((lm_tensor *)mask);
    m = (lm_tensor *)mask;
  }
  if (dev != LM_CPU) { /* res = where(mask, value, res): the elementwise loop, value a host scalar */
    lm_tensor *v = NULL;
    if (!(st = lm_from_ptr(ctx, LM_F64, 0, NULL, NULL, &value, &v))) {
      const lm_tensor *ops[4] = {res, m, v, res};
      int32_t kd = res->dtype == LM_BOOL ? LM_U8 : res->dtype;
      st = lm_dev_elementwise(ctx, op, LM_OP_WHERE, kd, res->ndim, res->shape, 4, ops, 0);
      lm_tensor_release(v);
    }
    if (st) goto done;
    lm_finish_out(res, out);
    res = NULL;
    goto done;
  }
  fill_arg a;
  a.es = lm_dtype_size(res->dtype);
  lm_write_from_double(res->dtype, a.value.b, value);
  lm_operand ops[2] = {lm_operand_of(res, res->ndim, res->shape), lm_operand_of(m, res->ndim, res->shape)};
  lm_foreach(ctx, res->ndim, res->shape, 2, ops, fill_kernel, &a, true);
  lm_finish_out(res, out);
  res = NULL;
done:
  lm_tensor_release(m);
  lm_tensor_release(res);
  return st;
}

/* ---- masked_select and nonzero: count per chunk, then write per chunk ---- */

/* A row-major walk over a shape with element offsets into two operands. */
typedef struct walker {
  int32_t ndim;
  int64_t shape[LM_MAX_DIMS];
  int64_t stride[2][LM_MAX_DIMS];
  int64_t idx[LM_MAX_DIMS];
  int64_t off[2];
} walker;

static void walker_seek(walker *w, int64_t pos) {
  w->off[0] = w->off[1] = 0;
  for (int32_t d = w->ndim - 1; d >= 0; d--) {
    w->idx[d] = pos % w->shape[d];
    pos /= w->shape[d];
    w->off[0] += w->idx[d] * w->stride[0][d];
    w->off[1] += w->idx[d] * w->stride[1][d];
  }
}

static inline void walker_next(walker *w) {
  for (int32_t d = w->ndim - 1; d >= 0; d--) {
    w->off[0] += w->stride[0][d];
    w->off[1] += w->stride[1][d];
    if (++w->idx[d] < w->shape[d]) return;
    w->off[0] -= w->stride[0][d] * w->shape[d];
    w->off[1] -= w->stride[1][d] * w->shape[d];
    w->idx[d] = 0;
  }
}

typedef struct select_plan {
  walker w;         /* operand 0: mask (bool), 1: values (masked_select) */
  int64_t n, chunks;
  int64_t *start;   /* per chunk: its count, then its first output row */
  const uint8_t *mask;
  char *vals;       /* NULL for nonzero */
  int32_t es, coords; /* element size of vals; coordinates per row (nonzero) */
  bool scatter;     /* the other way: vals at the mask = consecutive rows of out */
  char *out;
} select_plan;

static void select_count(void *p_, int64_t begin, int64_t end) {
  select_plan *p = p_;
  for (int64_t c = begin; c < end; c++) {
    int64_t lo = p->n * c / p->chunks, hi = p->n * (c + 1) / p->chunks, cnt = 0;
    if (p->w.ndim == 1 && p->w.stride[0][0] == 1) {
      for (int64_t i = lo; i < hi; i++) cnt += p->mask[i] != 0;
    } else {
      walker w = p->w;
      walker_seek(&w, lo);
      for (int64_t i = lo; i < hi; i++, walker_next(&w)) cnt += p->mask[w.off[0]] != 0;
    }
    p->start[c] = cnt;
  }
}

static void select_write(void *p_, int64_t begin, int64_t end) {
  select_plan *p = p_;
  for (int64_t c = begin; c < end; c++) {
    int64_t lo = p->n * c / p->chunks, hi = p->n * (c + 1) / p->chunks, row = p->start[c];
    walker w = p->w;
    walker_seek(&w, lo);
    for (int64_t i = lo; i < hi; i++, walker_next(&w)) {
      if (!p->mask[w.off[0]]) continue;
      if (p->vals && p->scatter) {
        memcpy(p->vals + w.off[1] * p->es, p->out + row * p->es, p->es);
      } else if (p->vals) {
        memcpy(p->out + row * p->es, p->vals + w.off[1] * p->es, p->es);
      } else {
        int64_t *o = (int64_t *)p->out + row * p->coords;
        for (int32_t d = 0; d < p->coords; d++) o[d] = w.idx[d];
      }
      row++;
    }
  }
}

/* Counts the selected positions of each chunk of the plan (walker, mask
   set) and gives each chunk its first row (p->start, which the caller
   frees); *total is the count. */
static lm_status select_starts(lm_ctx *ctx, const char *op, select_plan *p, int64_t *total) {
  p->n = 1;
  for (int32_t d = 0; d < p->w.ndim; d++) p->n *= p->w.shape[d];
  int64_t nt = ctx->nthreads > 0 ? ctx->nthreads : 1;
  p->chunks = (p->n + GRAIN - 1) / GRAIN;
  if (p->chunks > nt) p->chunks = nt;
  if (p->chunks < 1) p->chunks = 1;
  p->start = malloc(p->chunks * sizeof *p->start);
  if (!p->start) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  if (p->n > 0) lm_parallel_for(ctx, p->chunks, 1, select_count, p);
  else p->start[0] = 0;
  *total = 0;
  for (int64_t c = 0; c < p->chunks; c++) {
    int64_t k = p->start[c];
    p->start[c] = *total;
    *total += k;
  }
  return LM_OK;
}

/* Runs the plan (walker, mask, vals, es, coords set) and makes the N x
   coords i64 (nonzero) or N-element (masked_select) result. */
static lm_status run_select(lm_ctx *ctx, const char *op, select_plan *p, int32_t dtype, lm_tensor **out) {
  int64_t total = 0;
  p->scatter = false;
  lm_status st = select_starts(ctx, op, p, &total);
  if (st) return st;
  lm_tensor *res;
  int64_t shape[2] = {total, p->coords};
  st = lm_new(ctx, op, dtype, p->vals ? 1 : 2, shape, &res);
  if (!st) {
    p->out = lm_data(res);
    if (total > 0) lm_parallel_for(ctx, p->chunks, 1, select_write, p);
    *out = res;
  }
  free(p->start);
  return st;
}

static void mask_walker(walker *w, const lm_tensor *t, const lm_tensor *mask, int32_t nd, const int64_t *shape);

/* ---- masked_select and nonzero on a device ----
   Two passes of device ops, no kernel of their own: the flags' running
   count gives each selected element its slot (a scan of rows of SCAN_W,
   then of the row totals), the count comes back to the host (one value),
   and a scatter moves the selected elements to their slots; unselected
   ones go to one spare slot past the end, dropped after. */

#define SCAN_W 1024

/* flags: contiguous 1-D (any dtype, nonzero = set) of n elements; slots
   (i64, n): the slot of each set flag in order, *count for the others. */
static lm_status dev_slots(lm_ctx *ctx, const char *op, const lm_tensor *flags, lm_tensor **slots, int64_t *count) {
  const int64_t n = lm_numel(flags), rows = (n + SCAN_W - 1) / SCAN_W;
  lm_tensor *f = NULL, *fp = NULL, *grid = NULL, *c = NULL, *tot = NULL, *ctot = NULL, *excl = NULL, *col = NULL,
            *sum = NULL, *flat = NULL, *inc = NULL, *last = NULL, *host = NULL, *minus = NULL, *res = NULL, *cnt = NULL,
            *dec = NULL;
  lm_status st;
  int64_t pad[2] = {0, rows * SCAN_W - n}, gshape[2] = {rows, SCAN_W}, one = 1;
  if (n == 0) { /* nothing selected, no slots */
    *count = 0;
    return lm_new_on(ctx, op, lm_device_of(flags), LM_I64, 1, &n, slots);
  }
  if ((st = lm_to_dtype(ctx, flags, LM_BOOL, &f))) goto done;
  lm_tensor *fi = NULL;
  if ((st = lm_to_dtype(ctx, f, LM_I64, &fi))) goto done;
  lm_tensor_release(f);
  f = fi;
  if ((st = lm_pad(ctx, f, 1, pad, LM_PAD_CONSTANT, 0, &fp)) || (st = lm_reshape(ctx, fp, 2, gshape, &grid)) ||
      (st = lm_cumsum(ctx, grid, 1, &c)) || (st = lm_select(ctx, c, 1, SCAN_W - 1, &tot)) ||
      (st = lm_cumsum(ctx, tot, 0, &ctot)) || (st = lm_binary(ctx, LM_OP_SUB, ctot, tot, NULL, &excl)) ||
      (st = lm_unsqueeze(ctx, excl, 1, &col)) || (st = lm_binary(ctx, LM_OP_ADD, c, col, NULL, &sum)) ||
      (st = lm_reshape(ctx, sum, 1, (int64_t[1]){rows * SCAN_W}, &flat)) || (st = lm_slice(ctx, flat, 0, 0, n, 1, &inc)) ||
      (st = lm_slice(ctx, inc, 0, n - 1, n, 1, &last)) || (st = lm_to_device(ctx, last, LM_CPU, &host)))
    goto done;
  *count = *(const int64_t *)lm_data(host);
  /* slots = f ? inc - 1 : count */
  if ((st = lm_new_on(ctx, op, lm_device_of(flags), LM_I64, 1, &n, &res))) goto done;
  if ((st = lm_from_ptr(ctx, LM_I64, 0, NULL, NULL, &one, &minus)) || (st = lm_binary(ctx, LM_OP_SUB, inc, minus, NULL, &dec)))
    goto done;
  if ((st = lm_from_ptr(ctx, LM_I64, 0, NULL, NULL, count, &cnt))) goto done;
  const lm_tensor *ops[4] = {res, f, dec, cnt};
  if ((st = lm_dev_elementwise(ctx, op, LM_OP_WHERE, LM_I64, 1, &n, 4, ops, 0))) goto done;
  *slots = res;
  res = NULL;
done:
  lm_tensor_release(f);
  lm_tensor_release(fp);
  lm_tensor_release(grid);
  lm_tensor_release(c);
  lm_tensor_release(tot);
  lm_tensor_release(ctot);
  lm_tensor_release(excl);
  lm_tensor_release(col);
  lm_tensor_release(sum);
  lm_tensor_release(flat);
  lm_tensor_release(inc);
  lm_tensor_release(last);
  lm_tensor_release(host);
  lm_tensor_release(minus);
  lm_tensor_release(cnt);
  lm_tensor_release(dec);
  lm_tensor_release(res);
  return st;
}

/* t and mask broadcast to (nd, shape) and flattened, contiguous. */
static lm_status dev_flat_pair(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, int32_t nd, const int64_t *shape,
                               lm_tensor **tf, lm_tensor **mf) {
  int64_t n = 1;
  for (int32_t d = 0; d < nd; d++) n *= shape[d];
  lm_tensor *te = NULL, *me = NULL, *tc = NULL, *mc = NULL;
  lm_status st;
  if (!(st = lm_expand(ctx, t, nd, shape, &te)) && !(st = lm_expand(ctx, mask, nd, shape, &me)) &&
      !(st = lm_contiguous(ctx, te, &tc)) && !(st = lm_contiguous(ctx, me, &mc)) &&
      !(st = lm_reshape(ctx, tc, 1, &n, tf)))
    st = lm_reshape(ctx, mc, 1, &n, mf);
  lm_tensor_release(te);
  lm_tensor_release(me);
  lm_tensor_release(tc);
  lm_tensor_release(mc);
  return st;
}

/* The n selected values of the flat src by slots into a fresh 1-D tensor. */
static lm_status dev_compact(lm_ctx *ctx, const char *op, const lm_tensor *src, const lm_tensor *slots, int64_t count,
                             lm_tensor **out) {
  int64_t m = count + 1;
  lm_tensor *buf = NULL, *sc = NULL;
  lm_status st = lm_new_on(ctx, op, lm_device_of(src), src->dtype, 1, &m, &buf);
  if (!st) st = lm_scatter(ctx, buf, 0, slots, src, LM_SCATTER_SET, buf, NULL);
  if (!st) st = lm_slice(ctx, buf, 0, 0, count, 1, &sc);
  lm_tensor_release(buf);
  if (!st) *out = sc;
  return st;
}

static lm_status masked_select_device(lm_ctx *ctx, const char *op, const lm_tensor *t, const lm_tensor *mask, int32_t nd,
                                      const int64_t *shape, lm_tensor **out) {
  lm_tensor *tf = NULL, *mf = NULL, *slots = NULL;
  int64_t count = 0;
  lm_status st = dev_flat_pair(ctx, t, mask, nd, shape, &tf, &mf);
  if (!st) st = dev_slots(ctx, op, mf, &slots, &count);
  if (!st) st = dev_compact(ctx, op, tf, slots, count, out);
  lm_tensor_release(tf);
  lm_tensor_release(mf);
  lm_tensor_release(slots);
  return st;
}

static lm_status masked_select_forward(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, lm_tensor **out) {
  const char *op = "masked_select";
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if ((st = check_mask(ctx, op, mask, true))) return st;
  select_plan p;
  int32_t nd, dev;
  int64_t shape[LM_MAX_DIMS];
  if ((st = lm_broadcast_shape(ctx, op, t->ndim, t->shape, mask->ndim, mask->shape, &nd, shape))) return st;
  if ((st = index_device(ctx, op, t, mask, NULL, NULL, &dev))) return st;
  if (dev != LM_CPU) return masked_select_device(ctx, op, t, mask, nd, shape, out);
  mask_walker(&p.w, t, mask, nd, shape);
  p.mask = (const uint8_t *)lm_data(mask);
  p.vals = lm_data(t);
  p.es = lm_dtype_size(t->dtype);
  p.coords = 1;
  return run_select(ctx, op, &p, t->dtype, out);
}

/* A walker over the broadcast shape (nd, shape) of t and mask: operand 0
   the mask, 1 t; size-1 dims dropped, dims contiguous for both merged. */
static void mask_walker(walker *w, const lm_tensor *t, const lm_tensor *mask, int32_t nd, const int64_t *shape) {
  int64_t sm[LM_MAX_DIMS], sv[LM_MAX_DIMS];
  lm_broadcast_strides(mask, nd, shape, sm);
  lm_broadcast_strides(t, nd, shape, sv);
  w->ndim = 0;
  for (int32_t d = 0; d < nd; d++) {
    if (shape[d] == 1) continue;
    int32_t j = w->ndim;
    if (j > 0 && w->stride[0][j - 1] == sm[d] * shape[d] && w->stride[1][j - 1] == sv[d] * shape[d]) {
      w->shape[j - 1] *= shape[d];
      w->stride[0][j - 1] = sm[d];
      w->stride[1][j - 1] = sv[d];
    } else {
      w->shape[j] = shape[d];
      w->stride[0][j] = sm[d];
      w->stride[1][j] = sv[d];
      w->ndim++;
    }
  }
  if (w->ndim == 0) {
    w->ndim = 1;
    w->shape[0] = 1;
    w->stride[0][0] = w->stride[1][0] = 0;
  }
}

/* nonzero on a device: each dim's coordinates (an arange broadcast over
   the shape) compacted by the same slots, as the columns of the result. */
static lm_status nonzero_device(lm_ctx *ctx, const char *op, const lm_tensor *t, lm_tensor **out) {
  int64_t n = lm_numel(t), count = 0;
  const int32_t nd = t->ndim, dev = lm_device_of(t);
  lm_tensor *tc = NULL, *tf = NULL, *slots = NULL, *cols[LM_MAX_DIMS] = {NULL};
  lm_status st;
  if ((st = lm_contiguous(ctx, t, &tc)) || (st = lm_reshape(ctx, tc, 1, &n, &tf)) ||
      (st = dev_slots(ctx, op, tf, &slots, &count)))
    goto done;
  if (nd == 0) { /* a 0-d input: count x 0 */
    int64_t shape[2] = {count, 0};
    st = lm_new_on(ctx, op, dev, LM_I64, 2, shape, out);
    goto done;
  }
  for (int32_t d = 0; d < nd && !st; d++) {
    lm_tensor *ar = NULL, *r = NULL, *e = NULL, *ec = NULL, *ef = NULL, *c = NULL;
    int64_t rs[LM_MAX_DIMS];
    for (int32_t k = 0; k < nd; k++) rs[k] = k == d ? t->shape[d] : 1;
    if (!(st = lm_arange_on(ctx, dev, 0, 1, t->shape[d], LM_I64, &ar)) && !(st = lm_reshape(ctx, ar, nd, rs, &r)) &&
        !(st = lm_expand(ctx, r, nd, t->shape, &e)) && !(st = lm_contiguous(ctx, e, &ec)) &&
        !(st = lm_reshape(ctx, ec, 1, &n, &ef)) && !(st = dev_compact(ctx, op, ef, slots, count, &c)))
      st = lm_unsqueeze(ctx, c, 1, &cols[d]);
    lm_tensor_release(ar);
    lm_tensor_release(r);
    lm_tensor_release(e);
    lm_tensor_release(ec);
    lm_tensor_release(ef);
    lm_tensor_release(c);
  }
  if (!st) st = lm_cat(ctx, nd, cols, 1, out);
done:
  for (int32_t d = 0; d < LM_MAX_DIMS; d++) lm_tensor_release(cols[d]);
  lm_tensor_release(tc);
  lm_tensor_release(tf);
  lm_tensor_release(slots);
  return st;
}

lm_status lm_nonzero(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  const char *op = "nonzero";
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if (lm_device_of(t) != LM_CPU) {
    const bool was = lm_grad_pause(ctx);
    st = nonzero_device(ctx, op, t, out);
    ctx->grad_enabled = was;
    return st;
  }
  /* bool conversion is exactly "!= 0" for every dtype (NaN counts, -0 not) */
  lm_tensor *m;
  if ((st = lm_cast_if_needed(ctx, t, LM_BOOL, &m))) return st;
  select_plan p;
  lm_tensor mv;
  as_1d(m, &mv);
  /* no merging: the walker's position is the coordinate we report */
  p.w.ndim = mv.ndim;
  for (int32_t d = 0; d < mv.ndim; d++) {
    p.w.shape[d] = mv.shape[d];
    p.w.stride[0][d] = mv.stride[d];
    p.w.stride[1][d] = 0;
  }
  p.mask = (const uint8_t *)lm_data(m);
  p.vals = NULL;
  p.es = 0;
  p.coords = t->ndim;
  st = run_select(ctx, op, &p, LM_I64, out);
  lm_tensor_release(m);
  return st;
}

/* ---- autograd ----
 * The public entry points run the forward with grad mode off (its copies
 * into the fresh result must not be refused as writes), then record. An
 * op that writes into dst refuses inputs that need gradients first. The
 * backwards move the gradient back the way the values came: gather's is a
 * scatter-add, index_select's an index_add, masked_select's a masked
 * scatter; masked_fill's zeroes the filled positions. Indices and masks
 * never get gradients. */

/* node->ip layout shared by these ops */
enum { IX_DIM = 0, IX_MODE = 1, IX_SRC_DTYPE = 2, IX_NDIM = 3, IX_SHAPE = 4, IX_SRC_NDIM = 12, IX_SRC_SHAPE = 13 };

static void save_shape(lm_node *node, int32_t at, const lm_tensor *t) {
  node->ip[at] = t->ndim;
  for (int32_t d = 0; d < t->ndim; d++) node->ip[at + 1 + d] = t->shape[d];
}

/* zeros shaped like the node's saved shape at ip[at] */
static lm_status zeros_of(lm_ctx *ctx, const lm_node *node, int32_t at, int32_t dtype, int32_t device, lm_tensor **out) {
  lm_status st = lm_new_on(ctx, "backward", device, dtype, (int32_t)node->ip[at], node->ip + at + 1, out);
  if (!st) st = lm_fill(ctx, *out, 0);
  return st;
}

static lm_status record_failed(lm_tensor **out, lm_status st) {
  lm_tensor_release(*out);
  *out = NULL;
  return st;
}

/* gather: the gradient of t adds each g element at the position it came from */
static lm_status gather_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  lm_tensor *z;
  lm_status st = zeros_of(ctx, node, IX_NDIM, gout[0]->dtype, lm_device_of(gout[0]), &z);
  if (!st) st = scatter_forward(ctx, z, (int32_t)node->ip[IX_DIM], node->saved[0], gout[0], LM_SCATTER_ADD, z, NULL);
  if (st) {
    lm_tensor_release(z);
    return st;
  }
  gin[0] = z;
  return LM_OK;
}

lm_status lm_gather(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = gather_forward(ctx, t, dim, index, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  if ((st = lm_record(ctx, LM_OP_GATHER, gather_backward, 1, &t, 1, &res, &node))) return record_failed(&res, st);
  if (node) {
    node->ip[IX_DIM] = lm_wrap_dim(dim, t->ndim > 0 ? t->ndim : 1);
    save_shape(node, IX_NDIM, t);
    if ((st = lm_save(ctx, node, 0, index))) return record_failed(&res, st);
  }
  return lm_finish_out(res, out);
}

/* index_select: index_add of g into zeros, done as a scatter-add with the
   index broadcast along the other dims */
static lm_status index_select_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *g = gout[0], *index = node->saved[0];
  int32_t d = (int32_t)node->ip[IX_DIM], nd = (int32_t)node->ip[IX_NDIM];
  if (nd == 0) { /* one element, selected once */
    lm_tensor_retain((lm_tensor *)g);
    gin[0] = (lm_tensor *)g;
    return LM_OK;
  }
  int64_t shape[LM_MAX_DIMS];
  for (int32_t k = 0; k < nd; k++) shape[k] = k == d ? lm_numel(index) : 1;
  lm_tensor *line = NULL, *wide = NULL, *z = NULL;
  lm_status st = lm_reshape(ctx, index, nd, shape, &line);
  if (!st) st = lm_expand(ctx, line, nd, g->shape, &wide);
  if (!st) st = zeros_of(ctx, node, IX_NDIM, g->dtype, lm_device_of(g), &z);
  if (!st) st = scatter_forward(ctx, z, d, wide, g, LM_SCATTER_ADD, z, NULL);
  lm_tensor_release(line);
  lm_tensor_release(wide);
  if (st) {
    lm_tensor_release(z);
    return st;
  }
  gin[0] = z;
  return LM_OK;
}

lm_status lm_index_select(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = index_select_forward(ctx, t, dim, index, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  if ((st = lm_record(ctx, LM_OP_INDEX_SELECT, index_select_backward, 1, &t, 1, &res, &node)))
    return record_failed(&res, st);
  if (node) {
    node->ip[IX_DIM] = lm_wrap_dim(dim, t->ndim > 0 ? t->ndim : 1);
    save_shape(node, IX_NDIM, t);
    if ((st = lm_save(ctx, node, 0, index))) return record_failed(&res, st);
  }
  return lm_finish_out(res, out);
}

/* scatter: t's gradient is g, with the overwritten positions zeroed for
   SET; src's is g gathered at the index (zeros where src was not read, a
   sum for a 0-d src that was written everywhere) */
static lm_status scatter_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *g = gout[0], *index = node->saved[0];
  int32_t d = (int32_t)node->ip[IX_DIM];
  lm_status st = LM_OK;
  lm_tensor *zero = NULL, *gg = NULL, *z = NULL, *v = NULL;
  if (node->needs[0]) {
    if (node->ip[IX_MODE] == LM_SCATTER_ADD) {
      lm_tensor_retain((lm_tensor *)g);
      gin[0] = (lm_tensor *)g;
    } else {
      if ((st = lm_new_on(ctx, "backward", lm_device_of(g), g->dtype, 0, NULL, &zero)) || (st = lm_fill(ctx, zero, 0)))
        goto done;
      if ((st = scatter_forward(ctx, g, d, index, zero, LM_SCATTER_SET, NULL, &gin[0]))) goto done;
    }
  }
  if (node->needs[2]) {
    int32_t sdt = (int32_t)node->ip[IX_SRC_DTYPE], snd = (int32_t)node->ip[IX_SRC_NDIM];
    if ((st = gather_forward(ctx, g, d, index, &gg))) goto done;
    if (snd == 0) { /* one value written at every index */
      if ((st = lm_reduce(ctx, LM_OP_SUM, gg, 0, NULL, 0, 0, &z, NULL))) goto done;
      st = lm_cast_if_needed(ctx, z, sdt, &gin[2]);
      goto done;
    }
    if ((st = zeros_of(ctx, node, IX_SRC_NDIM, sdt, lm_device_of(g), &z))) goto done;
    /* the part of src that index covers: its leading corner */
    lm_tensor *corner = z;
    lm_tensor_retain(corner);
    for (int32_t k = 0; k < snd && !st; k++) { /* a 0-d index reads src as one element */
      st = lm_slice(ctx, corner, k, 0, k < gg->ndim ? gg->shape[k] : 1, 1, &v);
      lm_tensor_release(corner);
      corner = v;
      v = NULL;
    }
    if (!st) st = lm_copy_(ctx, corner, gg);
    lm_tensor_release(corner);
    if (!st) { gin[2] = z; z = NULL; }
  }
done:
  lm_tensor_release(zero);
  lm_tensor_release(gg);
  lm_tensor_release(z);
  return st;
}

lm_status lm_scatter(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, const lm_tensor *src, int32_t mode, lm_tensor *dst, lm_tensor **out) {
  const lm_tensor *ins[3] = {t, index, src};
  lm_status st = lm_check_grad_dst(ctx, mode == LM_SCATTER_ADD ? "scatter_add" : "scatter", dst, 3, ins);
  if (st) return st;
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  st = scatter_forward(ctx, t, dim, index, src, mode, dst, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node = NULL; /* an integer t takes src converted: nothing to differentiate */
  if (!dst && lm_dtype_is_float(res->dtype) && (st = lm_record(ctx, LM_OP_SCATTER, scatter_backward, 3, ins, 1, &res, &node)))
    return record_failed(&res, st);
  if (node) {
    node->ip[IX_DIM] = lm_wrap_dim(dim, t->ndim > 0 ? t->ndim : 1);
    node->ip[IX_MODE] = mode;
    node->ip[IX_SRC_DTYPE] = src->dtype;
    save_shape(node, IX_NDIM, t);
    save_shape(node, IX_SRC_NDIM, src);
    if ((st = lm_save(ctx, node, 0, index))) return record_failed(&res, st);
  }
  return lm_finish_out(res, out);
}

/* g (of the broadcast shape) summed back to t's shape, dtype cast */
static lm_status to_input(lm_ctx *ctx, const lm_node *node, lm_tensor *g, lm_tensor **out) {
  return lm_sum_to(ctx, g, (int32_t)node->ip[IX_NDIM], node->ip + IX_SHAPE, out);
}

/* masked_fill: the filled positions no longer depend on t */
static lm_status masked_fill_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  lm_tensor *r;
  lm_status st = masked_fill_forward(ctx, gout[0], node->saved[0], 0, NULL, &r);
  if (st) return st;
  st = to_input(ctx, node, r, &gin[0]);
  lm_tensor_release(r);
  return st;
}

lm_status lm_masked_fill(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, double value, lm_tensor *dst, lm_tensor **out) {
  const lm_tensor *ins[2] = {t, mask};
  lm_status st = lm_check_grad_dst(ctx, "masked_fill", dst, 2, ins);
  if (st) return st;
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  st = masked_fill_forward(ctx, t, mask, value, dst, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node = NULL;
  if (!dst && (st = lm_record(ctx, LM_OP_MASKED_FILL, masked_fill_backward, 2, ins, 1, &res, &node)))
    return record_failed(&res, st);
  if (node) {
    save_shape(node, IX_NDIM, t);
    if ((st = lm_save(ctx, node, 0, mask))) return record_failed(&res, st);
  }
  return lm_finish_out(res, out);
}

/* The elements of the contiguous dst (of the broadcast shape of dst and
   mask) where mask is set take the consecutive values of src, as many as
   the mask selects. */
static lm_status masked_scatter(lm_ctx *ctx, lm_tensor *dst, const lm_tensor *mask, const lm_tensor *src) {
  lm_tensor *sc = NULL;
  lm_status st = lm_contiguous(ctx, src, &sc);
  if (st) return st;
  select_plan p;
  mask_walker(&p.w, dst, mask, dst->ndim, dst->shape);
  p.mask = (const uint8_t *)lm_data(mask);
  p.vals = lm_data(dst);
  p.es = lm_dtype_size(dst->dtype);
  p.coords = 1;
  p.scatter = true;
  p.out = lm_data(sc);
  int64_t total = 0;
  if (!(st = select_starts(ctx, "backward", &p, &total))) {
    LM_ASSERT(total == lm_numel(sc));
    if (total > 0) lm_parallel_for(ctx, p.chunks, 1, select_write, &p);
    free(p.start);
  }
  lm_tensor_release(sc);
  return st;
}

/* masked_select: g goes back to the selected positions of the broadcast
   shape (ip[IX_SRC_NDIM..]), then sums to t's shape */
/* masked_select's backward on a device: the gradient with one 0 appended,
   gathered at the slots (unselected positions read the 0). */
static lm_status masked_select_backward_device(lm_ctx *ctx, lm_node *node, const lm_tensor *g, lm_tensor **z) {
  const int32_t nd = (int32_t)node->ip[IX_SRC_NDIM];
  const int64_t *shape = node->ip + IX_SRC_SHAPE;
  int64_t n = 1;
  for (int32_t d = 0; d < nd; d++) n *= shape[d];
  lm_tensor *me = NULL, *mc = NULL, *mf = NULL, *slots = NULL, *zero = NULL, *ge = NULL, *flat = NULL;
  int64_t count = 0, one = 1;
  lm_status st;
  if (!(st = lm_expand(ctx, node->saved[0], nd, shape, &me)) && !(st = lm_contiguous(ctx, me, &mc)) &&
      !(st = lm_reshape(ctx, mc, 1, &n, &mf)) && !(st = dev_slots(ctx, "masked_select", mf, &slots, &count)) &&
      !(st = lm_new_on(ctx, "backward", lm_device_of(g), g->dtype, 1, &one, &zero)) && !(st = lm_fill(ctx, zero, 0))) {
    lm_tensor *parts[2] = {(lm_tensor *)g, zero};
    if (!(st = lm_cat(ctx, 2, parts, 0, &ge)) && !(st = lm_gather(ctx, ge, 0, slots, &flat)))
      st = lm_reshape(ctx, flat, nd, shape, z);
  }
  lm_tensor_release(me);
  lm_tensor_release(mc);
  lm_tensor_release(mf);
  lm_tensor_release(slots);
  lm_tensor_release(zero);
  lm_tensor_release(ge);
  lm_tensor_release(flat);
  return st;
}

static lm_status masked_select_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  lm_tensor *z;
  lm_status st;
  if (lm_device_of(gout[0]) != LM_CPU) {
    if ((st = masked_select_backward_device(ctx, node, gout[0], &z))) return st;
    st = to_input(ctx, node, z, &gin[0]);
    lm_tensor_release(z);
    return st;
  }
  st = zeros_of(ctx, node, IX_SRC_NDIM, gout[0]->dtype, lm_device_of(gout[0]), &z);
  if (!st) st = masked_scatter(ctx, z, node->saved[0], gout[0]);
  if (!st) st = to_input(ctx, node, z, &gin[0]);
  lm_tensor_release(z);
  return st;
}

lm_status lm_masked_select(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = masked_select_forward(ctx, t, mask, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  const lm_tensor *ins[2] = {t, mask};
  if ((st = lm_record(ctx, LM_OP_MASKED_SELECT, masked_select_backward, 2, ins, 1, &res, &node)))
    return record_failed(&res, st);
  if (node) {
    save_shape(node, IX_NDIM, t);
    node->ip[IX_SRC_NDIM] = 0;
    /* the broadcast shape (checked by the forward) */
    int32_t nd;
    lm_broadcast_shape(ctx, "masked_select", t->ndim, t->shape, mask->ndim, mask->shape, &nd, node->ip + IX_SRC_SHAPE);
    node->ip[IX_SRC_NDIM] = nd;
    if ((st = lm_save(ctx, node, 0, mask))) return record_failed(&res, st);
  }
  return lm_finish_out(res, out);
}
