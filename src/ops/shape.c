/* shape.c - joining, reordering and padding: cat, flip, roll, pad.
 *
 * Each op makes a new contiguous result. Most of the work is expressed as
 * copies between views (lm_copy_ handles strides, dtype conversion and
 * threads); cat adds a memcpy path and pad's reflect/replicate modes a
 * gather through per-dimension offset tables. */
#include "../core/internal.h"
#include <stdlib.h>
#include <string.h>

#define COPY_GRAIN (1 << 16) /* elements per thread chunk for plain memcpy */

/* A view of t with the given shape and element offset, keeping t's strides.
   (The result's header only; the caller releases it.) */
static lm_status sub_view(lm_ctx *ctx, const char *op, const lm_tensor *t, const int64_t *shape, int64_t offset, lm_tensor **out) {
  lm_tensor *v = lm_view_header(t);
  if (!v) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  memcpy(v->shape, shape, t->ndim * sizeof *shape);
  v->offset = offset;
  *out = v;
  return LM_OK;
}

/* dst region (shape, offset into dst) = src, through a temporary view. */
static lm_status copy_into(lm_ctx *ctx, const char *op, lm_tensor *dst, const int64_t *shape, int64_t offset, const lm_tensor *src) {
  lm_tensor *v = NULL;
  lm_status st = sub_view(ctx, op, dst, shape, offset, &v);
  if (st) return st;
  st = lm_copy_(ctx, v, src);
  lm_tensor_release(v);
  return st;
}

/* ---- cat ---- */

/* One contiguous input copied into its column band of the output: the input
   is `rows` blocks of `blk` elements; block r lands at r * out_blk + col. */
typedef struct {
  const char *src;
  char *dst;
  int64_t blk, out_blk, col, es;
} cat_arg;

static void cat_blocks(void *arg, int64_t begin, int64_t end) {
  const cat_arg *a = arg;
  while (begin < end) {
    int64_t row = begin / a->blk, c = begin % a->blk;
    int64_t len = a->blk - c < end - begin ? a->blk - c : end - begin;
    memcpy(a->dst + (row * a->out_blk + a->col + c) * a->es, a->src + begin * a->es, len * a->es);
    begin += len;
  }
}

/* PyTorch still skips 1-D inputs of size 0 whatever the other shapes are. */
static bool cat_skipped(const lm_tensor *t) { return t->ndim == 1 && t->shape[0] == 0; }

static lm_status cat_forward(lm_ctx *ctx, int32_t n, lm_tensor *const *ts, int32_t dim, lm_tensor **out) {
  char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
  if (n <= 0 || !ts) return lm_err(ctx, LM_E_ARG, "cat: expected a non-empty list of tensors");
  int32_t ref = -1, dtype = -1;
  for (int32_t i = 0; i < n; i++) {
    if (!ts[i]) return lm_err(ctx, LM_E_ARG, "cat: input %d is NULL", i);
    if (ts[i]->storage->device != LM_CPU) return lm_check_input(ctx, "cat", ts[i], "an input");
    if (ts[i]->ndim == 0)
      return lm_err(ctx, LM_E_SHAPE, "cat: input %d is 0-dimensional (a scalar) and cannot be concatenated", i);
    dtype = i == 0 ? ts[i]->dtype : lm_dtype_promote(dtype, ts[i]->dtype);
    if (ref < 0 && !cat_skipped(ts[i])) ref = i;
  }
  if (ref < 0) { /* only empty 1-D inputs */
    int64_t zero = 0;
    return lm_new(ctx, "cat", dtype, 1, &zero, out);
  }
  const lm_tensor *r = ts[ref];
  int32_t d = lm_wrap_dim(dim, r->ndim);
  if (d < 0) return lm_err(ctx, LM_E_INDEX, "cat: dimension %d out of range for %d-D inputs", dim, r->ndim);

  int64_t shape[LM_MAX_DIMS];
  memcpy(shape, r->shape, sizeof shape);
  shape[d] = 0;
  for (int32_t i = 0; i < n; i++) {
    const lm_tensor *t = ts[i];
    if (cat_skipped(t)) continue;
    if (t->ndim != r->ndim)
      return lm_err(ctx, LM_E_SHAPE, "cat: input %d has shape %s (%d-D), expected %d-D like input %d (%s)",
                    i, LM_SHP(t, x), t->ndim, r->ndim, ref, LM_SHP(r, y));
    for (int32_t k = 0; k < r->ndim; k++)
      if (k != d && t->shape[k] != r->shape[k])
        return lm_err(ctx, LM_E_SHAPE, "cat: input %d has shape %s, expected %s like input %d except in dimension %d (size %lld vs %lld in dimension %d)",
                      i, LM_SHP(t, x), LM_SHP(r, y), ref, d, (long long)t->shape[k], (long long)r->shape[k], k);
    if (__builtin_add_overflow(shape[d], t->shape[d], &shape[d]))
      return lm_err(ctx, LM_E_SHAPE, "cat: the joined size of dimension %d overflows, expected a total below 2^63", d);
  }

  lm_tensor *res;
  lm_status st = lm_new(ctx, "cat", dtype, r->ndim, shape, &res);
  if (st) return st;
  int64_t inner = 1, rows = 1; /* elements after dim; blocks before it */
  for (int32_t k = d + 1; k < r->ndim; k++) inner *= shape[k];
  for (int32_t k = 0; k < d; k++) rows *= shape[k];
  int64_t es = lm_dtype_size(dtype), pos = 0;
  for (int32_t i = 0; i < n && !st; i++) {
    const lm_tensor *t = ts[i];
    if (cat_skipped(t) || t->shape[d] == 0) continue;
    if (t->dtype == dtype && lm_is_contiguous(t)) {
      cat_arg a = {lm_data(t), lm_data(res), t->shape[d] * inner, shape[d] * inner, pos * inner, es};
      lm_parallel_for(ctx, rows * a.blk, COPY_GRAIN, cat_blocks, &a);
    } else {
      int64_t sub[LM_MAX_DIMS];
      memcpy(sub, shape, sizeof sub);
      sub[d] = t->shape[d];
      st = copy_into(ctx, "cat", res, sub, res->offset + pos * res->stride[d], t);
    }
    pos += t->shape[d];
  }
  if (st) { lm_tensor_release(res); return st; }
  return lm_finish_out(res, out);
}

/* ---- flip ---- */

/* A copy of a view that walks the flipped dims backwards. */
static lm_status flip_forward(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int32_t *dims, lm_tensor **out) {
  lm_status cs = lm_check_input(ctx, "flip", t, "input");
  if (cs) return cs;
  if (ndims < 0 || (ndims > 0 && !dims)) return lm_err(ctx, LM_E_ARG, "flip: bad dims list (%d entries)", ndims);
  bool flip[LM_MAX_DIMS] = {false};
  for (int32_t i = 0; i < ndims; i++) {
    int32_t d = lm_wrap_dim(dims[i], t->ndim);
    if (d < 0) return lm_err(ctx, LM_E_INDEX, "flip: dimension %d out of range for a %d-D tensor", dims[i], t->ndim);
    if (flip[d]) return lm_err(ctx, LM_E_ARG, "flip: dimension %d appears more than once in dims", d);
    flip[d] = true;
  }
  lm_tensor *res = NULL, *v = NULL;
  lm_status st = lm_new(ctx, "flip", t->dtype, t->ndim, t->shape, &res);
  if (st || lm_numel(t) == 0) goto done;
  v = lm_view_header(t);
  if (!v) { st = lm_err(ctx, LM_E_OOM, "flip: out of memory"); goto done; }
  for (int32_t d = 0; d < t->ndim; d++) {
    if (!flip[d]) continue;
    v->offset += (t->shape[d] - 1) * t->stride[d];
    v->stride[d] = -t->stride[d];
  }
  st = lm_copy_(ctx, res, v);
done:
  lm_tensor_release(v);
  if (st) { lm_tensor_release(res); return st; }
  return lm_finish_out(res, out);
}

/* ---- roll ---- */

/* Every rolled dim splits into two bands (the tail moves to the front), so
   the result is 2^k block copies for k rolled dims. */
static lm_status roll_blocks(lm_ctx *ctx, lm_tensor *res, const lm_tensor *src, const int64_t *shift) {
  int32_t nd = src->ndim, rolled[LM_MAX_DIMS], k = 0;
  for (int32_t d = 0; d < nd; d++)
    if (shift[d]) rolled[k++] = d;
  for (int32_t mask = 0; mask < (1 << k); mask++) {
    int64_t shape[LM_MAX_DIMS], soff = src->offset, doff = res->offset;
    memcpy(shape, src->shape, sizeof shape);
    for (int32_t j = 0; j < k; j++) {
      int32_t d = rolled[j];
      int64_t n = src->shape[d], s = shift[d];
      if (mask & (1 << j)) { /* src [n-s, n) -> dst [0, s) */
        shape[d] = s;
        soff += (n - s) * src->stride[d];
      } else { /* src [0, n-s) -> dst [s, n) */
        shape[d] = n - s;
        doff += s * res->stride[d];
      }
    }
    lm_tensor *sv = NULL;
    lm_status st = sub_view(ctx, "roll", src, shape, soff, &sv);
    if (st) return st;
    st = copy_into(ctx, "roll", res, shape, doff, sv);
    lm_tensor_release(sv);
    if (st) return st;
  }
  return LM_OK;
}

static int64_t wrap_shift(int64_t s, int64_t n) {
  if (n == 0) return 0;
  s %= n;
  return s < 0 ? s + n : s;
}

static lm_status roll_forward(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int64_t *shifts, const int32_t *dims, lm_tensor **out) {
  lm_status cs = lm_check_input(ctx, "roll", t, "input");
  if (cs) return cs;
  if (ndims < 0 || !shifts || (ndims > 0 && !dims))
    return lm_err(ctx, LM_E_ARG, "roll: bad shifts/dims lists (%d entries)", ndims);
  int64_t shift[LM_MAX_DIMS] = {0};
  for (int32_t i = 0; i < ndims; i++) {
    int32_t d = lm_wrap_dim(dims[i], t->ndim);
    if (d < 0) return lm_err(ctx, LM_E_INDEX, "roll: dimension %d out of range for a %d-D tensor", dims[i], t->ndim);
    /* a repeated dim rolls twice, as in PyTorch */
    shift[d] = wrap_shift(shift[d] + wrap_shift(shifts[i], t->shape[d]), t->shape[d]);
  }
  lm_tensor *res, *src = NULL, *flat_src = NULL, *flat_res = NULL;
  lm_status st = lm_new(ctx, "roll", t->dtype, t->ndim, t->shape, &res);
  if (st) return st;
  if (ndims > 0) {
    st = roll_blocks(ctx, res, t, shift);
  } else {
    /* the flattened tensor: roll a 1-D view of a contiguous copy into a 1-D
       view of the (contiguous) result */
    int64_t n = lm_numel(t), s = wrap_shift(shifts[0], n);
    st = lm_contiguous(ctx, t, &src);
    if (st) goto done;
    flat_src = lm_view_header(src);
    flat_res = lm_view_header(res);
    if (!flat_src || !flat_res) { st = lm_err(ctx, LM_E_OOM, "roll: out of memory"); goto done; }
    flat_src->ndim = flat_res->ndim = 1;
    flat_src->shape[0] = flat_res->shape[0] = n;
    flat_src->stride[0] = flat_res->stride[0] = 1;
    st = roll_blocks(ctx, flat_res, flat_src, &s);
  }
done:
  lm_tensor_release(flat_src);
  lm_tensor_release(flat_res);
  lm_tensor_release(src);
  if (st) { lm_tensor_release(res); return st; }
  return lm_finish_out(res, out);
}

/* ---- pad ---- */

/* Reflect / replicate: out element (o_0, ..., o_n) reads the input at byte
   offset sum_d off[d][o_d], each table built from that dim's index map. */
typedef struct {
  int32_t ndim, es;
  const int64_t *shape; /* output */
  int64_t *off[LM_MAX_DIMS];
  const char *src;
  char *dst;
} gather_arg;

#define GATHER_ROW(T)                                                  \
  for (int64_t j = 0; j < inner; j++) {                                \
    T v;                                                               \
    memcpy(&v, s + last[j], sizeof v);                                 \
    memcpy(d + j * sizeof v, &v, sizeof v);                            \
  }

/* rows are positions over every dim but the last; [begin, end) of them */
static void gather_rows(void *arg, int64_t begin, int64_t end) {
  const gather_arg *a = arg;
  int32_t outer = a->ndim - 1;
  int64_t inner = a->shape[outer], idx[LM_MAX_DIMS] = {0}, r = begin;
  const int64_t *last = a->off[outer];
  for (int32_t k = outer - 1; k >= 0; k--) {
    idx[k] = r % a->shape[k];
    r /= a->shape[k];
  }
  for (int64_t row = begin; row < end; row++) {
    const char *s = a->src;
    for (int32_t k = 0; k < outer; k++) s += a->off[k][idx[k]];
    char *d = a->dst + row * inner * a->es;
    switch (a->es) {
    case 1: GATHER_ROW(uint8_t) break;
    case 4: GATHER_ROW(uint32_t) break;
    default: GATHER_ROW(uint64_t) break;
    }
    for (int32_t k = outer - 1; k >= 0; k--) {
      if (++idx[k] < a->shape[k]) break;
      idx[k] = 0;
    }
  }
}

static const char *const pad_mode_names[] = {"constant", "reflect", "replicate"};

static lm_status pad_forward(lm_ctx *ctx, const lm_tensor *t, int32_t npairs, const int64_t *pad, int32_t mode, double value, lm_tensor **out) {
  char x[LM_SHAPE_BUF];
  lm_status cs = lm_check_input(ctx, "pad", t, "input");
  if (cs) return cs;
  if (mode != LM_PAD_CONSTANT && mode != LM_PAD_REFLECT && mode != LM_PAD_REPLICATE)
    return lm_err(ctx, LM_E_ARG, "pad: unknown mode %d (expected constant, reflect or replicate)", mode);
  if (npairs < 0 || (npairs > 0 && !pad))
    return lm_err(ctx, LM_E_ARG, "pad: bad padding list (%d pairs)", npairs);
  if (npairs > t->ndim)
    return lm_err(ctx, LM_E_ARG, "pad: %d (before, after) pairs for a %d-D tensor (%s), at most %d",
                  npairs, t->ndim, LM_SHP(t, x), t->ndim);

  int64_t before[LM_MAX_DIMS] = {0}, after[LM_MAX_DIMS] = {0}, shape[LM_MAX_DIMS];
  const char *mname = pad_mode_names[mode];
  bool any = false;
  for (int32_t p = 0; p < npairs; p++) {
    int32_t d = t->ndim - 1 - p;
    int64_t b = pad[2 * p], e = pad[2 * p + 1], n = t->shape[d];
    const int64_t lim = (int64_t)1 << 48; /* keeps the size sums exact */
    if (b > lim || b < -lim || e > lim || e < -lim)
      return lm_err(ctx, LM_E_ARG, "pad: padding (%lld, %lld) of dimension %d is out of range", (long long)b, (long long)e, d);
    if (n + b + e < 0)
      return lm_err(ctx, LM_E_SHAPE, "pad: padding (%lld, %lld) leaves dimension %d of size %lld with negative size %lld (input %s)",
                    (long long)b, (long long)e, d, (long long)n, (long long)(n + b + e), LM_SHP(t, x));
    if (mode == LM_PAD_REFLECT && (b >= n || e >= n) && (b > 0 || e > 0))
      return lm_err(ctx, LM_E_SHAPE, "pad: reflect padding (%lld, %lld) of dimension %d must be less than its size %lld (input %s)",
                    (long long)b, (long long)e, d, (long long)n, LM_SHP(t, x));
    if (mode == LM_PAD_REPLICATE && n == 0 && n + b + e > 0)
      return lm_err(ctx, LM_E_SHAPE, "pad: replicate padding of dimension %d needs a non-empty dimension (input %s)", d, LM_SHP(t, x));
    before[d] = b;
    after[d] = e;
    any |= b != 0 || e != 0;
  }
  for (int32_t d = 0; d < t->ndim; d++) shape[d] = t->shape[d] + before[d] + after[d];

  lm_tensor *res;
  lm_status st = lm_new(ctx, "pad", t->dtype, t->ndim, shape, &res);
  if (st) return st;
  int64_t numel = lm_numel(res);
  int64_t *tables = NULL;
  gather_arg a = {t->ndim, lm_dtype_size(t->dtype), shape, {NULL}, lm_data(t), lm_data(res)};
  if (numel == 0) goto done;

  /* no padding at all is a plain copy whatever the mode */
  if (mode == LM_PAD_CONSTANT || !any) {
    /* fill, then copy the part of the input that survives any cropping */
    int64_t sub[LM_MAX_DIMS], soff = t->offset, doff = 0;
    bool grows = false, empty = false;
    for (int32_t d = 0; d < t->ndim; d++) {
      int64_t cb = before[d] < 0 ? -before[d] : 0, ce = after[d] < 0 ? -after[d] : 0;
      grows |= before[d] > 0 || after[d] > 0;
      sub[d] = t->shape[d] - cb - ce;
      empty |= sub[d] <= 0;
      soff += cb * t->stride[d];
      doff += (before[d] > 0 ? before[d] : 0) * res->stride[d];
    }
    if (grows) st = lm_fill(ctx, res, value);
    if (!st && !empty) {
      lm_tensor *sv = NULL;
      st = sub_view(ctx, "pad", t, sub, soff, &sv);
      if (!st) {
        st = copy_into(ctx, "pad", res, sub, doff, sv);
        lm_tensor_release(sv);
      }
    }
    goto done;
  }

  /* reflect / replicate */
  int64_t total = 0;
  for (int32_t d = 0; d < t->ndim; d++) total += shape[d];
  tables = malloc(total * sizeof *tables);
  if (!tables) { st = lm_err(ctx, LM_E_OOM, "pad: out of memory"); goto done; }
  int64_t *next = tables;
  for (int32_t d = 0; d < t->ndim; d++) {
    int64_t n = t->shape[d];
    a.off[d] = next;
    for (int64_t o = 0; o < shape[d]; o++) {
      int64_t i = o - before[d];
      if (mode == LM_PAD_REFLECT) {
        if (i < 0) i = -i;
        if (i >= n) i = 2 * (n - 1) - i;
      } else {
        i = i < 0 ? 0 : i >= n ? n - 1 : i;
      }
      if (i < 0 || i >= n) { /* unreachable given the checks above */
        st = lm_err(ctx, LM_E_SHAPE, "pad: %s padding of dimension %d reaches outside the input (%s)", mname, d, LM_SHP(t, x));
        goto done;
      }
      next[o] = i * t->stride[d] * a.es;
    }
    next += shape[d];
  }
  int64_t rows = numel / shape[t->ndim - 1];
  int64_t grain = COPY_GRAIN / shape[t->ndim - 1];
  lm_parallel_for(ctx, rows, grain < 1 ? 1 : grain, gather_rows, &a);

done:
  free(tables);
  if (st) { lm_tensor_release(res); return st; }
  return lm_finish_out(res, out);
}

/* ---- autograd ----
 * The public entry points run the forward with grad mode off (its copies
 * into the fresh result must not be refused as writes into a tensor), then
 * record. The backward of each op is the op's own adjoint: slices of the
 * gradient for cat, the inverse flip and roll, the opposite padding for
 * constant pad, and an accumulating gather for reflect/replicate. */

static lm_status record_failed(lm_tensor **out, lm_status st) {
  lm_tensor_release(*out);
  *out = NULL;
  return st;
}

/* cat: node->extra holds, per input, its size along the dim, its dtype and
   whether cat skipped it (a 1-D empty input) */
static lm_status cat_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t d = (int32_t)node->ip[0], n = (int32_t)node->ip[1];
  const int64_t *size = node->extra, *dtype = size + n, *skipped = dtype + n;
  int64_t pos = 0;
  lm_status st = LM_OK;
  for (int32_t i = 0; i < n && !st; i++) {
    if (skipped[i]) {
      int64_t zero = 0;
      if (node->needs[i]) st = lm_new(ctx, "backward", (int32_t)dtype[i], 1, &zero, &gin[i]);
      continue;
    }
    if (node->needs[i]) {
      lm_tensor *s;
      st = lm_slice(ctx, gout[0], d, pos, pos + size[i], 1, &s);
      if (!st) {
        st = lm_cast_if_needed(ctx, s, (int32_t)dtype[i], &gin[i]);
        lm_tensor_release(s);
      }
    }
    pos += size[i];
  }
  return st;
}

lm_status lm_cat(lm_ctx *ctx, int32_t n, lm_tensor *const *ts, int32_t dim, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = cat_forward(ctx, n, ts, dim, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  if (lm_dtype_is_float(res->dtype)) {
    lm_node *node;
    if ((st = lm_record(ctx, LM_OP_CAT, cat_backward, n, (const lm_tensor *const *)ts, 1, &res, &node)))
      return record_failed(&res, st);
    if (node) {
      int64_t *info = malloc((size_t)n * 3 * sizeof *info);
      if (!info) return record_failed(&res, lm_err(ctx, LM_E_OOM, "cat: out of memory"));
      node->extra = info;
      node->extra_free = free;
      int32_t ref = 0;
      while (ref < n - 1 && cat_skipped(ts[ref])) ref++;
      int32_t d = cat_skipped(ts[ref]) ? 0 : lm_wrap_dim(dim, ts[ref]->ndim);
      for (int32_t i = 0; i < n; i++) {
        info[2 * n + i] = cat_skipped(ts[i]);
        info[i] = cat_skipped(ts[i]) ? 0 : ts[i]->shape[d];
        info[n + i] = ts[i]->dtype;
      }
      node->ip[0] = d;
      node->ip[1] = n;
    }
  }
  return lm_finish_out(res, out);
}

/* flip: ip[0] the number of dims, ip[1..] the dims */
static lm_status flip_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t dims[LM_MAX_DIMS], n = (int32_t)node->ip[0];
  for (int32_t i = 0; i < n; i++) dims[i] = (int32_t)node->ip[1 + i];
  return flip_forward(ctx, gout[0], n, dims, &gin[0]);
}

lm_status lm_flip(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int32_t *dims, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = flip_forward(ctx, t, ndims, dims, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  if ((st = lm_record(ctx, LM_OP_FLIP, flip_backward, 1, &t, 1, &res, &node))) return record_failed(&res, st);
  if (node) {
    node->ip[0] = ndims;
    for (int32_t i = 0; i < ndims; i++) node->ip[1 + i] = dims[i];
  }
  return lm_finish_out(res, out);
}

/* roll: ip[0] the number of dims, ip[1..8] the dims, ip[9..] the shifts
   that undo the roll */
static lm_status roll_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t dims[LM_MAX_DIMS], n = (int32_t)node->ip[0];
  for (int32_t i = 0; i < n; i++) dims[i] = (int32_t)node->ip[1 + i];
  return roll_forward(ctx, gout[0], n, node->ip + 9, dims, &gin[0]);
}

lm_status lm_roll(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int64_t *shifts, const int32_t *dims, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = roll_forward(ctx, t, ndims, shifts, dims, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  if ((st = lm_record(ctx, LM_OP_ROLL, roll_backward, 1, &t, 1, &res, &node))) return record_failed(&res, st);
  if (node) {
    node->ip[0] = ndims;
    if (ndims == 0) node->ip[9] = -wrap_shift(shifts[0], lm_numel(t));
    for (int32_t i = 0; i < ndims; i++) {
      node->ip[1 + i] = dims[i];
      node->ip[9 + i] = -wrap_shift(shifts[i], t->shape[lm_wrap_dim(dims[i], t->ndim)]);
    }
  }
  return lm_finish_out(res, out);
}

/* pad: ip[0] pairs, ip[1] mode, ip[2..17] the padding, ip[20] and ip[21..]
   the input's ndim and shape */
enum { PAD_N = 0, PAD_MODE = 1, PAD_PADS = 2, PAD_NDIM = 20, PAD_SHAPE = 21 };

typedef struct pad_back_arg {
  int32_t dt;
  int64_t nout, gs, ds; /* output positions along the dim; element strides of g and of the result */
  const int64_t *map;   /* output position -> input position */
} pad_back_arg;

#define PAD_BACK_LINES(T)                                                \
  for (int64_t k = 0; k < n; k++) {                                      \
    T *d = (T *)(p[0] + k * s[0]);                                       \
    const T *g = (const T *)(p[1] + k * s[1]);                           \
    for (int64_t o = 0; o < A->nout; o++) d[A->map[o] * A->ds] += g[o * A->gs]; \
  }

/* p[0] the (zeroed) result, p[1] the gradient; n lines along the dim,
   s their byte strides */
static void pad_back_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  const pad_back_arg *A = arg;
  if (A->dt == LM_F64) PAD_BACK_LINES(double)
  else PAD_BACK_LINES(float)
}

/* Reflect / replicate: every output element read one input element, so
   the gradient adds each output's gradient into that element. The index
   map is a product of per-dim maps, so this runs one dim at a time. */
static lm_status pad_gather_backward(lm_ctx *ctx, const lm_node *node, const lm_tensor *g, lm_tensor **out) {
  int32_t nd = (int32_t)node->ip[PAD_NDIM], npairs = (int32_t)node->ip[PAD_N], mode = (int32_t)node->ip[PAD_MODE];
  const int64_t *in_shape = node->ip + PAD_SHAPE;
  lm_tensor *cur = (lm_tensor *)g, *next = NULL;
  lm_tensor_retain(cur);
  int64_t *map = NULL;
  lm_status st = LM_OK;
  for (int32_t k = 0; k < npairs && !st; k++) {
    int32_t d = nd - 1 - k;
    int64_t b = node->ip[PAD_PADS + 2 * k], e = node->ip[PAD_PADS + 2 * k + 1], n = in_shape[d];
    if (b == 0 && e == 0) continue;
    int64_t shape[LM_MAX_DIMS];
    memcpy(shape, cur->shape, sizeof shape);
    shape[d] = n;
    if ((st = lm_new(ctx, "backward", g->dtype, nd, shape, &next)) || (st = lm_fill(ctx, next, 0))) break;
    int64_t nout = cur->shape[d];
    if (lm_numel(next) > 0 && nout > 0) {
      if (!(map = malloc((size_t)nout * sizeof *map))) { st = lm_err(ctx, LM_E_OOM, "pad: out of memory"); break; }
      for (int64_t o = 0; o < nout; o++) {
        int64_t i = o - b;
        if (mode == LM_PAD_REFLECT) {
          if (i < 0) i = -i;
          if (i >= n) i = 2 * (n - 1) - i;
        } else {
          i = i < 0 ? 0 : i >= n ? n - 1 : i;
        }
        map[o] = i;
      }
      pad_back_arg A = {g->dtype, nout, cur->stride[d], next->stride[d], map};
      shape[d] = 1; /* iterate over the lines along d */
      lm_operand ops[2] = {lm_operand_of(next, nd, shape), lm_operand_of(cur, nd, shape)};
      lm_foreach(ctx, nd, shape, 2, ops, pad_back_kernel, &A, true);
      free(map);
      map = NULL;
    }
    lm_tensor_release(cur);
    cur = next;
    next = NULL;
  }
  lm_tensor_release(next);
  if (st) {
    lm_tensor_release(cur);
    return st;
  }
  *out = cur;
  return LM_OK;
}

static lm_status pad_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t npairs = (int32_t)node->ip[PAD_N];
  if (node->ip[PAD_MODE] != LM_PAD_CONSTANT) return pad_gather_backward(ctx, node, gout[0], &gin[0]);
  /* constant: the opposite padding crops what was added and puts zeros
     where the forward cropped */
  int64_t undo[2 * LM_MAX_DIMS];
  for (int32_t i = 0; i < 2 * npairs; i++) undo[i] = -node->ip[PAD_PADS + i];
  return pad_forward(ctx, gout[0], npairs, undo, LM_PAD_CONSTANT, 0, &gin[0]);
}

lm_status lm_pad(lm_ctx *ctx, const lm_tensor *t, int32_t npairs, const int64_t *pad, int32_t mode, double value, lm_tensor **out) {
  lm_tensor *res = NULL;
  bool was = lm_grad_pause(ctx);
  lm_status st = pad_forward(ctx, t, npairs, pad, mode, value, &res);
  ctx->grad_enabled = was;
  if (st) return st;
  lm_node *node;
  if ((st = lm_record(ctx, LM_OP_PAD, pad_backward, 1, &t, 1, &res, &node))) return record_failed(&res, st);
  if (node) {
    node->ip[PAD_N] = npairs;
    node->ip[PAD_MODE] = mode;
    for (int32_t i = 0; i < 2 * npairs; i++) node->ip[PAD_PADS + i] = pad[i];
    node->ip[PAD_NDIM] = t->ndim;
    for (int32_t d = 0; d < t->ndim; d++) node->ip[PAD_SHAPE + d] = t->shape[d];
  }
  return lm_finish_out(res, out);
}
