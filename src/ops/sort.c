/* sort.c - sort, topk and unique.
 * Every dtype sorts through one unsigned 64-bit key per element whose order
 * is the value's order (NaN above +inf, -0 equal to +0, as PyTorch), so one
 * merge sort serves all dtypes; ties go by original position (stable), and
 * descending order sorts the inverted keys, which keeps that tie order. */
#include "../core/internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct kv {
  uint64_t key;
  int64_t idx;
} kv;

#define SIGN_BIT (UINT64_C(1) << 63)

static inline uint64_t key_of_double(double v) {
  if (v != v) return UINT64_MAX;
  if (v == 0) v = 0; /* -0 -> +0 */
  uint64_t b;
  memcpy(&b, &v, sizeof b);
  return (b & SIGN_BIT) ? ~b : b | SIGN_BIT;
}

#define KEY_LOOP(T, EXPR)                          \
  for (int64_t i = 0; i < n; i++) {                \
    T v = *(const T *)(p + i * stride);            \
    a[i].key = (EXPR);                             \
    a[i].idx = i;                                  \
  }

/* Keys for n elements at p, stride bytes apart; inverted when flip. */
static void make_keys(kv *a, int32_t dtype, const char *p, int64_t stride, int64_t n, bool flip) {
  switch (dtype) {
  case LM_F32: KEY_LOOP(float, key_of_double(v)) break;
  case LM_F64: KEY_LOOP(double, key_of_double(v)) break;
  case LM_I32: KEY_LOOP(int32_t, (uint64_t)(int64_t)v ^ SIGN_BIT) break;
  case LM_I64: KEY_LOOP(int64_t, (uint64_t)v ^ SIGN_BIT) break;
  case LM_U8: KEY_LOOP(uint8_t, v) break;
  default: KEY_LOOP(uint8_t, v != 0) break; /* bool */
  }
  if (flip)
    for (int64_t i = 0; i < n; i++) a[i].key = ~a[i].key;
}

/* Entries start in original order (idx ascending), so ordering by (key,
   idx) is the stable order, and a strict total order for selection. */
static inline bool kv_less(kv a, kv b) { return a.key < b.key || (a.key == b.key && a.idx < b.idx); }

/* Merge sort of a[0..n) by kv_less; tmp holds n entries. */
static void msort(kv *a, kv *tmp, int64_t n) {
  if (n <= 16) {
    for (int64_t i = 1; i < n; i++) {
      kv x = a[i];
      int64_t j = i;
      for (; j > 0 && kv_less(x, a[j - 1]); j--) a[j] = a[j - 1];
      a[j] = x;
    }
    return;
  }
  int64_t h = n / 2;
  msort(a, tmp, h);
  msort(a + h, tmp + h, n - h);
  if (!kv_less(a[h], a[h - 1])) return; /* already in order */
  memcpy(tmp, a, n * sizeof *a);
  int64_t i = 0, j = h, k = 0;
  while (i < h && j < n) a[k++] = kv_less(tmp[j], tmp[i]) ? tmp[j++] : tmp[i++];
  while (i < h) a[k++] = tmp[i++];
  while (j < n) a[k++] = tmp[j++];
}

/* Moves the k smallest entries of a[0..n) to the front, in any order
   (quickselect), so topk costs O(n + k log k) rather than a full sort. */
static void select_k(kv *a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1, want = k - 1;
  while (hi > lo) {
    kv pivot = a[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (kv_less(a[i], pivot)) i++;
      while (kv_less(pivot, a[j])) j--;
      if (i <= j) {
        kv t = a[i];
        a[i++] = a[j];
        a[j--] = t;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else break;
  }
}

/* ---- sort and topk: one row (a line along dim) per task ---- */

typedef struct sort_plan {
  int32_t nouter, dtype, es;
  int64_t shape[LM_MAX_DIMS];   /* dims other than dim */
  int64_t tstride[LM_MAX_DIMS]; /* their strides in t (elements) */
  int64_t ostride[LM_MAX_DIMS]; /* and in the outputs */
  int64_t len, k, tstep, ostep; /* along dim */
  const char *src;
  char *vals;      /* may be NULL */
  int64_t *inds;   /* may be NULL */
  bool flip;
  atomic_bool oom;
} sort_plan;

static void sort_rows(void *p_, int64_t begin, int64_t end) {
  sort_plan *p = p_;
  kv *a = malloc(2 * p->len * sizeof *a);
  if (!a) {
    atomic_store(&p->oom, true);
    return;
  }
  int32_t es = p->es;
  for (int64_t row = begin; row < end; row++) {
    int64_t r = row, toff = 0, ooff = 0;
    for (int32_t d = p->nouter - 1; d >= 0; d--) {
      int64_t c = r % p->shape[d];
      r /= p->shape[d];
      toff += c * p->tstride[d];
      ooff += c * p->ostride[d];
    }
    const char *line = p->src + toff * es;
    make_keys(a, p->dtype, line, p->tstep * es, p->len, p->flip);
    if (p->k < p->len) select_k(a, p->len, p->k);
    msort(a, a + p->len, p->k);
    for (int64_t j = 0; j < p->k; j++) {
      int64_t o = ooff + j * p->ostep;
      if (p->vals) memcpy(p->vals + o * es, line + a[j].idx * p->tstep * es, es);
      if (p->inds) p->inds[o] = a[j].idx;
    }
  }
  free(a);
}

/* sort_k on a device: dim d is moved last and made contiguous, so the
   backend sorts rows x len; its rows x k results are moved back. */
static lm_status sort_k_device(lm_ctx *ctx, const char *op, const lm_tensor *t, int64_t k, int32_t d, bool flip,
                               lm_tensor **values, lm_tensor **indices) {
  const int32_t device = lm_device_of(t);
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, device, sort, &be);
  if (st) return st;
  lm_tensor *line = NULL, *moved = NULL, *xc = NULL, *work = NULL, *res[2] = {NULL, NULL}, *back = NULL;
  const int64_t one = 1;
  bool grad = lm_grad_pause(ctx); /* the views and copies here are not part of the graph */
  if (t->ndim == 0) st = lm_reshape(ctx, t, 1, &one, &line); /* one element along dim 0 */
  else lm_tensor_retain((lm_tensor *)t), line = (lm_tensor *)t;
  const int32_t last = line ? line->ndim - 1 : 0;
  if (!st) st = lm_transpose(ctx, line, d, last, &moved);
  if (!st) st = lm_contiguous(ctx, moved, &xc);
  if (st) goto done;
  const int64_t len = xc->shape[last], rows = len ? lm_numel(xc) / len : 0, slots = 4 * rows * len;
  int64_t shape[LM_MAX_DIMS];
  memcpy(shape, xc->shape, sizeof shape);
  shape[last] = k;
  if ((st = lm_new_on(ctx, op, device, LM_I64, 1, &slots, &work))) goto done;
  if (values && (st = lm_new_on(ctx, op, device, t->dtype, xc->ndim, shape, &res[0]))) goto done;
  if (indices && (st = lm_new_on(ctx, op, device, LM_I64, xc->ndim, shape, &res[1]))) goto done;
  if (rows > 0 && k > 0 &&
      (st = be->sort(t->dtype, rows, len, k, flip, lm_data(xc), res[0] ? lm_data(res[0]) : NULL,
                     res[1] ? (int64_t *)lm_data(res[1]) : NULL, lm_data(work)))) {
    st = lm_backend_fail(ctx, op, be, st);
    goto done;
  }
  lm_tensor **outs[2] = {values, indices};
  for (int i = 0; i < 2 && !st; i++) {
    if (!outs[i]) continue;
    lm_tensor *c = NULL;
    if (!(st = lm_transpose(ctx, res[i], d, last, &back)) && !(st = lm_contiguous(ctx, back, &c))) {
      if (t->ndim == 0) {
        st = lm_reshape(ctx, c, 0, NULL, outs[i]);
        lm_tensor_release(c);
      } else {
        *outs[i] = c;
      }
    }
    lm_tensor_release(back);
    back = NULL;
  }
  if (st && values && *values) lm_tensor_release(*values), *values = NULL;
done:
  ctx->grad_enabled = grad;
  lm_tensor_release(line);
  lm_tensor_release(moved);
  lm_tensor_release(xc);
  lm_tensor_release(work);
  lm_tensor_release(res[0]);
  lm_tensor_release(res[1]);
  return st;
}

/* The k first elements of each line along dim in key order (k = the whole
   line for sort); values and indices shaped like t with size k along dim. */
static lm_status sort_k(lm_ctx *ctx, const char *op, const lm_tensor *t, int64_t k, int32_t d, bool flip, lm_tensor **values, lm_tensor **indices) {
  if (lm_device_of(t) != LM_CPU) return sort_k_device(ctx, op, t, k, d, flip, values, indices);
  lm_tensor tv;
  memcpy(&tv, t, sizeof tv);
  if (tv.ndim == 0) { /* one element along dim 0 */
    tv.ndim = 1;
    tv.shape[0] = 1;
    tv.stride[0] = 1;
  }
  int64_t shape[LM_MAX_DIMS], ostr[LM_MAX_DIMS];
  memcpy(shape, tv.shape, sizeof shape);
  shape[d] = k;
  int64_t s = 1;
  for (int32_t i = tv.ndim - 1; i >= 0; i--) {
    ostr[i] = s;
    s *= shape[i];
  }
  lm_tensor *v = NULL, *ix = NULL;
  lm_status st = LM_OK;
  if (values && (st = lm_new(ctx, op, t->dtype, t->ndim, shape, &v))) goto done;
  if (indices && (st = lm_new(ctx, op, LM_I64, t->ndim, shape, &ix))) goto done;
  sort_plan p;
  p.nouter = 0;
  p.dtype = t->dtype;
  p.es = lm_dtype_size(t->dtype);
  p.len = tv.shape[d];
  p.k = k;
  p.tstep = tv.stride[d];
  p.ostep = ostr[d];
  int64_t rows = 1;
  for (int32_t i = 0; i < tv.ndim; i++) {
    if (i == d) continue;
    p.shape[p.nouter] = tv.shape[i];
    p.tstride[p.nouter] = tv.stride[i];
    p.ostride[p.nouter++] = ostr[i];
    rows *= tv.shape[i];
  }
  p.src = lm_data(t);
  p.vals = v ? lm_data(v) : NULL;
  p.inds = ix ? (int64_t *)lm_data(ix) : NULL;
  p.flip = flip;
  atomic_init(&p.oom, false);
  if (rows > 0 && p.len > 0 && k > 0) {
    int64_t grain = 4096 / p.len;
    lm_parallel_for(ctx, rows, grain < 1 ? 1 : grain, sort_rows, &p);
  }
  if (atomic_load(&p.oom)) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for a work buffer of %lld elements", op, (long long)p.len);
    goto done;
  }
  if (values) { *values = v; v = NULL; }
  if (indices) { *indices = ix; ix = NULL; }
done:
  lm_tensor_release(v);
  lm_tensor_release(ix);
  return st;
}

/* ---- autograd for sort and topk values ----
   Each value came from one position of t (saved[0] holds the indices), so
   the gradient goes back there: zeros with g scattered at the indices.
   ip[0] the dim, ip[1] and ip[2..] t's ndim and shape. */
static lm_status sort_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  lm_tensor *z;
  lm_status st = lm_new_on(ctx, "backward", lm_device_of(gout[0]), gout[0]->dtype, (int32_t)node->ip[1], node->ip + 2, &z);
  if (!st) st = lm_fill(ctx, z, 0);
  if (!st) st = lm_scatter(ctx, z, (int32_t)node->ip[0], node->saved[0], gout[0], LM_SCATTER_SET, z, NULL);
  if (st) {
    lm_tensor_release(z);
    return st;
  }
  gin[0] = z;
  return LM_OK;
}

/* sort_k, recording a node on the values when t needs a gradient (the
   indices are then computed even when the caller does not want them) */
static lm_status sort_k_grad(lm_ctx *ctx, int32_t op, const lm_tensor *t, int64_t k, int32_t d, bool flip, lm_tensor **values, lm_tensor **indices) {
  bool rec = values && lm_dtype_is_float(t->dtype) && lm_grad_needed(ctx, 1, &t);
  lm_tensor *ix = NULL;
  if (values) *values = NULL;
  lm_status st = sort_k(ctx, lm_op_name(op), t, k, d, flip, values, rec || indices ? &ix : NULL);
  if (st || !rec) goto done;
  lm_node *node;
  if ((st = lm_record(ctx, op, sort_backward, 1, &t, 1, values, &node)) || !node) goto done;
  node->ip[0] = d;
  node->ip[1] = t->ndim;
  for (int32_t i = 0; i < t->ndim; i++) node->ip[2 + i] = t->shape[i];
  st = lm_save(ctx, node, 0, ix);
done:
  if (st && values && *values) {
    lm_tensor_release(*values);
    *values = NULL;
  }
  if (!st && indices) *indices = ix;
  else lm_tensor_release(ix);
  return st;
}

lm_status lm_sort(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int32_t descending, lm_tensor **values, lm_tensor **indices) {
  lm_status st = lm_check_arg(ctx, "sort", t, "input");
  if (st) return st;
  int32_t d = lm_wrap_dim(dim, t->ndim ? t->ndim : 1);
  if (d < 0) return lm_err(ctx, LM_E_INDEX, "sort: dimension %d out of range for a %d-D tensor", dim, t->ndim);
  int64_t len = t->ndim ? t->shape[d] : 1;
  return sort_k_grad(ctx, LM_OP_SORT, t, len, d, descending != 0, values, indices);
}

lm_status lm_topk(lm_ctx *ctx, const lm_tensor *t, int64_t k, int32_t dim, int32_t largest, lm_tensor **values, lm_tensor **indices) {
  lm_status st = lm_check_arg(ctx, "topk", t, "input");
  if (st) return st;
  int32_t d = lm_wrap_dim(dim, t->ndim ? t->ndim : 1);
  if (d < 0) return lm_err(ctx, LM_E_INDEX, "topk: dimension %d out of range for a %d-D tensor", dim, t->ndim);
  int64_t len = t->ndim ? t->shape[d] : 1;
  if (k < 0 || k > len)
    return lm_err(ctx, LM_E_INDEX, "topk: k = %lld is out of range for dimension %d of size %lld (valid range 0 to %lld)",
                  (long long)k, d, (long long)len, (long long)len);
  return sort_k_grad(ctx, LM_OP_TOPK, t, k, d, largest != 0, values, indices);
}

/* ---- unique ---- */

/* unique on a device, from device ops: the flattened values sorted (stably,
   with their positions), a flag where each group starts (a value unlike
   the one before; NaN != NaN, so each NaN stands alone, -0 == +0), group
   numbers by a running count of the flags, the starts' values selected,
   the group numbers scattered back to the positions (inverse) and ones
   added up per group (counts). One value comes back: the group count. */
static lm_status unique_device(lm_ctx *ctx, const lm_tensor *t, lm_tensor **values, lm_tensor **inverse, lm_tensor **counts) {
  const char *op = "unique";
  const int32_t device = lm_device_of(t);
  int64_t n = lm_numel(t), groups = 0, one = 1;
  lm_tensor *flat = NULL, *v = NULL, *ix = NULL, *head = NULL, *a = NULL, *b = NULL, *ne = NULL, *starts = NULL,
            *s64 = NULL, *run = NULL, *gid = NULL, *last = NULL, *host = NULL, *uv = NULL, *zi = NULL, *inv = NULL,
            *ones = NULL, *zc = NULL, *cnt = NULL, *unit = NULL;
  lm_status st;
  bool grad = lm_grad_pause(ctx);
  if ((st = lm_reshape(ctx, t, 1, &n, &flat))) goto done;
  if (n == 0) {
    if (values && (st = lm_new_on(ctx, op, device, t->dtype, 1, &n, values))) goto done;
    if (inverse && (st = lm_new_on(ctx, op, device, LM_I64, t->ndim, t->shape, inverse))) goto done;
    if (counts && (st = lm_new_on(ctx, op, device, LM_I64, 1, &n, counts))) goto done;
    goto done;
  }
  if ((st = sort_k(ctx, op, flat, n, 0, false, &v, &ix)) ||
      (st = lm_new_on(ctx, op, device, LM_BOOL, 1, &one, &head)) || (st = lm_fill(ctx, head, 1)) ||
      (st = lm_slice(ctx, v, 0, 1, n, 1, &a)) || (st = lm_slice(ctx, v, 0, 0, n - 1, 1, &b)) ||
      (st = lm_binary(ctx, LM_OP_NE, a, b, NULL, &ne)))
    goto done;
  lm_tensor *parts[2] = {head, ne};
  if ((st = lm_cat(ctx, 2, parts, 0, &starts)) || (st = lm_to_dtype(ctx, starts, LM_I64, &s64)) ||
      (st = lm_cumsum(ctx, s64, 0, &run)) || (st = lm_from_ptr(ctx, LM_I64, 0, NULL, NULL, &one, &unit)) ||
      (st = lm_binary(ctx, LM_OP_SUB, run, unit, NULL, &gid)) ||
      (st = lm_slice(ctx, run, 0, n - 1, n, 1, &last)) || (st = lm_to_device(ctx, last, LM_CPU, &host)))
    goto done;
  groups = *(const int64_t *)lm_data(host);
  if (values && (st = lm_masked_select(ctx, v, starts, &uv))) goto done;
  if (inverse) {
    if ((st = lm_new_on(ctx, op, device, LM_I64, 1, &n, &zi)) || (st = lm_fill(ctx, zi, 0)) ||
        (st = lm_scatter(ctx, zi, 0, ix, gid, LM_SCATTER_SET, NULL, &inv)) ||
        (st = lm_reshape(ctx, inv, t->ndim, t->shape, inverse)))
      goto done;
  }
  if (counts) {
    if ((st = lm_new_on(ctx, op, device, LM_I64, 1, &n, &ones)) || (st = lm_fill(ctx, ones, 1)) ||
        (st = lm_new_on(ctx, op, device, LM_I64, 1, &groups, &zc)) || (st = lm_fill(ctx, zc, 0)) ||
        (st = lm_scatter(ctx, zc, 0, gid, ones, LM_SCATTER_ADD, NULL, &cnt)))
      goto done;
    *counts = cnt, cnt = NULL;
  }
  if (values) *values = uv, uv = NULL;
done:
  ctx->grad_enabled = grad;
  if (st && inverse && *inverse) lm_tensor_release(*inverse), *inverse = NULL;
  if (st && counts && *counts) lm_tensor_release(*counts), *counts = NULL;
  lm_tensor *all[] = {flat, v, ix, head, a, b, ne, starts, s64, run, gid, last, host, uv, zi, inv, ones, zc, cnt, unit};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) lm_tensor_release(all[i]);
  return st;
}

lm_status lm_unique(lm_ctx *ctx, const lm_tensor *t, lm_tensor **values, lm_tensor **inverse, lm_tensor **counts) {
  const char *op = "unique";
  lm_status st = lm_check_arg(ctx, op, t, "input");
  if (st) return st;
  if (lm_device_of(t) != LM_CPU) return unique_device(ctx, t, values, inverse, counts);
  lm_tensor *c = NULL, *v = NULL, *inv = NULL, *cnt = NULL;
  kv *a = NULL;
  if ((st = lm_contiguous(ctx, t, &c))) return st;
  int64_t n = lm_numel(t);
  int32_t es = lm_dtype_size(t->dtype);
  a = malloc((2 * n + 1) * sizeof *a);
  if (!a) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for a work buffer of %lld elements", op, (long long)n);
    goto done;
  }
  const char *src = lm_data(c);
  make_keys(a, t->dtype, src, es, n, false);
  msort(a, a + n, n);
  /* groups of equal keys; each NaN stands alone, since NaN != NaN */
  bool fl = lm_dtype_is_float(t->dtype);
#define NEW_GROUP(i) ((i) == 0 || a[i].key != a[(i) - 1].key || (fl && a[i].key == UINT64_MAX))
  int64_t groups = 0;
  for (int64_t i = 0; i < n; i++) groups += NEW_GROUP(i);
  if ((st = lm_new(ctx, op, t->dtype, 1, &groups, &v))) goto done;
  if (inverse && (st = lm_new(ctx, op, LM_I64, t->ndim, t->shape, &inv))) goto done;
  if (counts && (st = lm_new(ctx, op, LM_I64, 1, &groups, &cnt))) goto done;
  char *vp = lm_data(v);
  int64_t *ip = inv ? (int64_t *)lm_data(inv) : NULL, *cp = cnt ? (int64_t *)lm_data(cnt) : NULL;
  int64_t g = -1;
  for (int64_t i = 0; i < n; i++) {
    if (NEW_GROUP(i)) {
      g++;
      memcpy(vp + g * es, src + a[i].idx * es, es);
      if (cp) cp[g] = 0;
    }
    if (cp) cp[g]++;
    if (ip) ip[a[i].idx] = g;
  }
#undef NEW_GROUP
  if (values) { *values = v; v = NULL; }
  if (inverse) { *inverse = inv; inv = NULL; }
  if (counts) { *counts = cnt; cnt = NULL; }
done:
  free(a);
  lm_tensor_release(c);
  lm_tensor_release(v);
  lm_tensor_release(inv);
  lm_tensor_release(cnt);
  return st;
}
