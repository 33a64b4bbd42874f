/* pool.c - max, average and adaptive average pooling (1-D, 2-D, 3-D), max
 * unpooling, and their gradients.
 *
 * Every pool is seen in 3-D: a 1-D or 2-D pool puts unit dims in front of
 * its spatial dims, so one kernel serves all three. The input is (N x) C x
 * spatial; each of the N*C planes is pooled on its own. Where each output
 * window lies is worked out once per dimension (a table of [lo, hi) per
 * output position, already clamped to the input), so the kernels only walk
 * windows. Indices are flat positions within a plane, as PyTorch's.
 *
 * Kernels are written once over a `bool f64` that always-inlined helpers
 * turn into two specialised copies (float and double); float values are
 * compared and summed in double. Forward passes run in parallel over rows
 * of outputs; backward passes scatter into overlapping windows, so they run
 * in parallel over whole planes.
 *
 * On a device, the same plans go to the backend's pool entry (dev_pool):
 * max, average and adaptive average pooling, forward and backward; max
 * unpooling runs on the CPU only so far. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WORK_GRAIN 32768 /* element visits below which another thread does not pay */
/* loops whose iterations are independent: vectorise them even at -O2 */
#ifdef _OPENMP
#define SIMD _Pragma("omp simd")
#else
#define SIMD
#endif

LM_INLINE double load(const void *p, int64_t i, bool f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
LM_INLINE void store(void *p, int64_t i, double v, bool f64) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}
LM_INLINE void add_to(void *p, int64_t i, double v, bool f64) {
  if (f64) ((double *)p)[i] += v;
  else ((float *)p)[i] += (float)v;
}

/* mask ? a : b for a mask of all ones or all zeros, without a branch. */
LM_INLINE double select_double(int64_t mask, double a, double b) {
  uint64_t ua, ub;
  memcpy(&ua, &a, sizeof ua);
  memcpy(&ub, &b, sizeof ub);
  ub ^= (ua ^ ub) & (uint64_t)mask;
  memcpy(&b, &ub, sizeof b);
  return b;
}

/* ---- window plans ---- */

/* Where the windows lie along one dimension. */
typedef struct window_dim {
  int64_t in, out, step; /* step: the dilation */
  /* strided pools: kernel, stride, padding, and the outputs [inner_lo,
     inner_hi) whose windows lie wholly inside the input */
  int64_t k, s, pad, inner_lo, inner_hi;
  int64_t *lo, *hi;      /* out entries: window [lo, hi) clamped to the input */
  int64_t *count;        /* out entries: the divisor's share (average pools) */
} window_dim;

/* A pool over N*C planes of in[0] x in[1] x in[2] elements. */
typedef struct window_plan {
  int64_t planes;
  window_dim dim[3];
  double divisor; /* > 0: divides every window instead of the counts */
  int32_t code;   /* LM_OP_MAX_POOL, LM_OP_AVG_POOL or LM_OP_ADAPTIVE_AVG_POOL (for a device) */
  bool count_pad; /* average pools: count_include_pad (for a device) */
  int32_t ndim;   /* the input's shape, for gradients */
  int64_t shape[LM_MAX_DIMS];
  int64_t tables[]; /* lo, hi, count of the three dims */
} window_plan;

static int64_t in_plane(const window_plan *p) { return p->dim[0].in * p->dim[1].in * p->dim[2].in; }
static int64_t out_plane(const window_plan *p) { return p->dim[0].out * p->dim[1].out * p->dim[2].out; }

static lm_status plan_new(lm_ctx *ctx, const char *op, const lm_tensor *x, int32_t nd, const int64_t *out_size, window_plan **out) {
  int64_t total = 0;
  for (int32_t d = 0; d < nd; d++) total += 3 * out_size[d];
  window_plan *p = calloc(1, sizeof *p + (size_t)(total + 9) * sizeof(int64_t));
  if (!p) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  p->ndim = x->ndim;
  memcpy(p->shape, x->shape, sizeof p->shape);
  p->planes = 1;
  for (int32_t d = 0; d < x->ndim - nd; d++) p->planes *= x->shape[d];
  int64_t *t = p->tables;
  for (int32_t d = 0; d < 3; d++) {
    window_dim *w = &p->dim[d];
    int32_t src = d - (3 - nd); /* the spatial dim this is, or < 0 for a unit dim */
    w->in = src < 0 ? 1 : x->shape[x->ndim - nd + src];
    w->out = src < 0 ? 1 : out_size[src];
    w->step = 1;
    w->lo = t, w->hi = t + w->out, w->count = t + 2 * w->out;
    t += 3 * w->out;
    if (src < 0) w->lo[0] = 0, w->hi[0] = 1, w->count[0] = 1;
  }
  *out = p;
  return LM_OK;
}

/* Windows of a strided pool along one dim (kernel k, stride s, padding pad,
   dilation dil). count is the padded window (count_include_pad) or the part
   inside the input. */
static void fill_strided(window_dim *w, int64_t k, int64_t s, int64_t pad, int64_t dil, bool count_pad) {
  w->step = dil, w->k = k, w->s = s, w->pad = pad;
  w->inner_lo = w->out, w->inner_hi = 0;
  for (int64_t o = 0; o < w->out; o++) {
    int64_t start = o * s - pad;
    int64_t end = start + (k - 1) * dil + 1;
    int64_t padded_end = end < w->in + pad ? end : w->in + pad; /* average pools: no dilation */
    int64_t lo = start;
    if (lo < 0) lo += ((-lo + dil - 1) / dil) * dil; /* first tap inside the input */
    w->lo[o] = lo;
    w->hi[o] = end < w->in ? end : w->in;
    w->count[o] = count_pad ? padded_end - start : w->hi[o] - lo;
    if (start >= 0 && end <= w->in) { /* whole: a contiguous range of outputs */
      if (o < w->inner_lo) w->inner_lo = o;
      w->inner_hi = o + 1;
    }
  }
  if (w->inner_hi <= w->inner_lo) w->inner_lo = w->inner_hi = 0;
}

/* Windows of an adaptive pool: [floor(o*in/out), ceil((o+1)*in/out)). */
static void fill_adaptive(window_dim *w) {
  for (int64_t o = 0; o < w->out; o++) {
    w->lo[o] = o * w->in / w->out;
    w->hi[o] = ((o + 1) * w->in + w->out - 1) / w->out;
    w->count[o] = w->hi[o] - w->lo[o];
  }
}

/* Output length of a strided pool; floors (or ceils) the window count, and
   in ceil mode drops a last window that would start in the right padding. */
static int64_t pooled_len(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t dil, bool ceil_mode) {
  int64_t span = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t q = span >= 0 ? span / s : -((-span + s - 1) / s); /* floor division */
  int64_t len = q + 1;
  if (ceil_mode && (len - 1) * s >= in + pad) len--;
  return len;
}

/* ---- input checks shared by the pools ---- */

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  if (!lm_dtype_is_float(x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input dtype %s, expected f32 or f64", op, lm_dtype_name(x->dtype));
  return LM_OK;
}

/* x must be (N x) C x nd spatial dims, each spatial dim non-empty. */
static lm_status check_pool_input(lm_ctx *ctx, const char *op, const lm_tensor *x, int32_t nd) {
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input"))) return st;
  if ((st = check_float(ctx, op, x))) return st;
  static const char *const layout[] = {"", "W", "H x W", "D x H x W"};
  char buf[LM_SHAPE_BUF];
  if (x->ndim != nd + 1 && x->ndim != nd + 2)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected %d-D (C x %s) or %d-D (N x C x %s)", op,
                  x->ndim, LM_SHP(x, buf), nd + 1, layout[nd], nd + 2, layout[nd]);
  for (int32_t d = x->ndim - nd; d < x->ndim; d++)
    if (x->shape[d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s has an empty spatial dimension %d, expected sizes >= 1", op,
                    LM_SHP(x, buf), d);
  return LM_OK;
}

/* Sizes, kernels, strides, paddings and dilations stay below 2^31, so
   that products of them (and the tables sized by them) cannot overflow. */
#define PARAM_MAX INT64_C(2147483647)

/* One of kernel/stride/padding/dilation/output size: nd values, each in
   [min, PARAM_MAX]. */
static lm_status check_param(lm_ctx *ctx, const char *op, const char *what, int32_t nd, const int64_t *v, int64_t min) {
  for (int32_t d = 0; d < nd; d++) {
    if (v[d] < min)
      return lm_err(ctx, LM_E_ARG, "%s: %s[%d] is %lld, expected >= %lld", op, what, d, (long long)v[d], (long long)min);
    if (v[d] > PARAM_MAX)
      return lm_err(ctx, LM_E_ARG, "%s: %s[%d] is %lld, expected at most %lld", op, what, d, (long long)v[d],
                    (long long)PARAM_MAX);
  }
  return LM_OK;
}

static lm_status check_nd(lm_ctx *ctx, const char *op, int32_t nd) {
  if (nd < 1 || nd > 3) return lm_err(ctx, LM_E_ARG, "%s: %d spatial dims, expected 1, 2 or 3", op, nd);
  return LM_OK;
}

/* A contiguous version of t (+1) made with grad mode off: the copy is an
   internal step of this op, not an op of its own. */
static lm_status contiguous_untracked(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  lm_status st = lm_contiguous(ctx, t, out);
  ctx->grad_enabled = was;
  return st;
}

/* Parameters of a strided pool, resolved and checked; output sizes too. */
typedef struct strided_args {
  int64_t k[3], s[3], pad[3], dil[3], out[3];
} strided_args;

static lm_status strided_setup(lm_ctx *ctx, const char *op, const lm_tensor *x, int32_t nd, const int64_t *kernel,
                               const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                               bool ceil_mode, strided_args *a) {
  lm_status st;
  if (!kernel) return lm_err(ctx, LM_E_ARG, "%s: kernel size is NULL", op);
  for (int32_t d = 0; d < nd; d++) {
    a->k[d] = kernel[d];
    a->s[d] = stride ? stride[d] : kernel[d];
    a->pad[d] = padding ? padding[d] : 0;
    a->dil[d] = dilation ? dilation[d] : 1;
  }
  if ((st = check_param(ctx, op, "kernel size", nd, a->k, 1)) || (st = check_param(ctx, op, "stride", nd, a->s, 1)) ||
      (st = check_param(ctx, op, "padding", nd, a->pad, 0)) || (st = check_param(ctx, op, "dilation", nd, a->dil, 1)))
    return st;
  for (int32_t d = 0; d < nd; d++)
    if (a->pad[d] > a->k[d] / 2)
      return lm_err(ctx, LM_E_ARG, "%s: padding[%d] is %lld with kernel size %lld, expected at most half the kernel size",
                    op, d, (long long)a->pad[d], (long long)a->k[d]);
  char buf[LM_SHAPE_BUF];
  for (int32_t d = 0; d < nd; d++) {
    int64_t in = x->shape[x->ndim - nd + d];
    a->out[d] = pooled_len(in, a->k[d], a->s[d], a->pad[d], a->dil[d], ceil_mode);
    if (a->out[d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s is too small for kernel size %lld (dilation %lld, padding %lld) "
                    "in spatial dim %d: the output would be empty", op, LM_SHP(x, buf), (long long)a->k[d],
                    (long long)a->dil[d], (long long)a->pad[d], d);
  }
  return LM_OK;
}

static void out_shape(const lm_tensor *x, int32_t nd, const int64_t *spatial, int64_t *shape) {
  memcpy(shape, x->shape, sizeof x->shape);
  for (int32_t d = 0; d < nd; d++) shape[x->ndim - nd + d] = spatial[d];
}

static void plan_free(void *p) { free(p); }

/* ---- on a device: the backend's pool entry ---- */

/* Runs plan p's pool (forward: src = input, dst = output; backward: src =
   the output's gradient, dst = the input's) on the device of dst. */
static lm_status dev_pool(lm_ctx *ctx, const char *op, const window_plan *p, bool backward, const lm_tensor *src,
                          lm_tensor *dst, const lm_tensor *indices) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(dst), pool, &be);
  if (st) return st;
  int64_t geom[18];
  for (int32_t d = 0; d < 3; d++) {
    const window_dim *w = &p->dim[d];
    bool unit = w->k == 0; /* a unit dim in front, or an adaptive pool's */
    geom[d] = w->in, geom[3 + d] = w->out;
    geom[6 + d] = unit ? 1 : w->k, geom[9 + d] = unit ? 1 : w->s;
    geom[12 + d] = unit ? 0 : w->pad, geom[15 + d] = unit ? 1 : w->step;
  }
  if ((st = be->pool(p->code, dst->dtype, backward, p->planes, geom, p->count_pad, p->divisor, lm_data(src),
                     lm_data(dst), indices ? (int64_t *)lm_data(indices) : NULL)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

/* ---- max pooling ---- */

typedef struct max_job {
  const window_plan *p;
  const char *x;
  char *y;
  int64_t *idx; /* may be NULL */
  bool f64;
  atomic_bool oom;
} max_job;

/* One output's update by input position i holding v. NaN wins, as in
   PyTorch. Masks rather than branches: on random data a branch here
   mispredicts half the time. */
LM_INLINE void max_update(double *best, int64_t *best_i, double v, int64_t i) {
  int64_t take = -(int64_t)((v > *best) | (v != v));
  *best = select_double(take, v, *best);
  *best_i ^= (*best_i ^ i) & take;
}

/* Rows are (plane, od, oh) triples; each holds out[2] outputs, updated
   together one input row of their windows at a time, so that the inner
   loop runs along the output row where windows lie wholly inside the
   input (vectorised). A window's positions are still visited in order
   (d, h, w), which decides ties as PyTorch does. */
LM_INLINE void max_rows(max_job *j, int64_t r0, int64_t r1, bool f64) {
  const window_plan *p = j->p;
  const window_dim *D = &p->dim[0], *H = &p->dim[1], *W = &p->dim[2];
  int64_t ip = in_plane(p), op = out_plane(p), HW = H->in * W->in;
  double *best = malloc((size_t)W->out * sizeof *best);
  int64_t *best_i = malloc((size_t)W->out * sizeof *best_i);
  if (!best || !best_i) {
    atomic_store(&j->oom, true);
    goto done;
  }
  for (int64_t r = r0; r < r1; r++) {
    int64_t oh = r % H->out, od = (r / H->out) % D->out, plane = r / (H->out * D->out);
    const char *x = j->x + plane * ip * (f64 ? 8 : 4);
    int64_t first = (D->lo[od] * H->in + H->lo[oh]) * W->in;
    for (int64_t ow = 0; ow < W->out; ow++) best[ow] = -INFINITY, best_i[ow] = first + W->lo[ow];
    for (int64_t id = D->lo[od]; id < D->hi[od]; id += D->step)
      for (int64_t ih = H->lo[oh]; ih < H->hi[oh]; ih += H->step) {
        int64_t row = id * HW + ih * W->in;
        const char *xr = x + row * (f64 ? 8 : 4);
        for (int64_t ow = 0; ow < W->inner_lo; ow++)
          for (int64_t iw = W->lo[ow]; iw < W->hi[ow]; iw += W->step) max_update(&best[ow], &best_i[ow], load(xr, iw, f64), row + iw);
        for (int64_t k = 0; k < W->k; k++) {
          int64_t off = k * W->step - W->pad;
          SIMD for (int64_t ow = W->inner_lo; ow < W->inner_hi; ow++) {
            int64_t iw = ow * W->s + off;
            max_update(&best[ow], &best_i[ow], load(xr, iw, f64), row + iw);
          }
        }
        for (int64_t ow = W->inner_hi > W->inner_lo ? W->inner_hi : W->inner_lo; ow < W->out; ow++)
          for (int64_t iw = W->lo[ow]; iw < W->hi[ow]; iw += W->step) max_update(&best[ow], &best_i[ow], load(xr, iw, f64), row + iw);
      }
    int64_t o = plane * op + (od * H->out + oh) * W->out;
    for (int64_t ow = 0; ow < W->out; ow++) store(j->y, o + ow, best[ow], f64);
    if (j->idx) memcpy(j->idx + o, best_i, (size_t)W->out * sizeof *best_i);
  }
done:
  free(best);
  free(best_i);
}
static void max_rows_f32(void *a, int64_t r0, int64_t r1) { max_rows(a, r0, r1, false); }
static void max_rows_f64(void *a, int64_t r0, int64_t r1) { max_rows(a, r0, r1, true); }

typedef struct scatter_job {
  const window_plan *p;
  const char *g;        /* output gradient (contiguous) */
  const int64_t *idx;   /* positions within the plane of the input */
  char *gx;             /* input gradient (each task zeroes its planes) */
  atomic_bool bad;      /* an index outside the plane */
} scatter_job;

/* Max pool backward: each output's gradient goes to its argmax. The
   indices are also the caller's, who may have changed them since. */
LM_INLINE void max_back_planes(scatter_job *j, int64_t p0, int64_t p1, bool f64) {
  int64_t ip = in_plane(j->p), op = out_plane(j->p);
  for (int64_t plane = p0; plane < p1; plane++) {
    char *gx = j->gx + plane * ip * (f64 ? 8 : 4);
    memset(gx, 0, (size_t)ip * (f64 ? 8 : 4)); /* here: in parallel, and in cache */
    for (int64_t o = plane * op; o < (plane + 1) * op; o++) {
      int64_t k = j->idx[o];
      if (k < 0 || k >= ip) {
        atomic_store(&j->bad, true);
        return;
      }
      add_to(gx, k, load(j->g, o, f64), f64);
    }
  }
}
static void max_back_f32(void *a, int64_t p0, int64_t p1) { max_back_planes(a, p0, p1, false); }
static void max_back_f64(void *a, int64_t p0, int64_t p1) { max_back_planes(a, p0, p1, true); }

/* A plane's worth of work in element visits, as a parallel_for grain. */
static int64_t grain_for(int64_t work_per_item) {
  int64_t g = WORK_GRAIN / (work_per_item > 0 ? work_per_item : 1);
  return g < 1 ? 1 : g;
}

/* A tensor of the saved input's shape, for its gradient. */
static lm_status grad_like_input(lm_ctx *ctx, const char *op, const window_plan *p, const lm_tensor *g, lm_tensor **out) {
  return lm_new_on(ctx, op, lm_device_of(g), g->dtype, p->ndim, p->shape, out);
}

static lm_status max_pool_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const window_plan *p = node->extra;
  lm_tensor *g = NULL, *gx = NULL;
  lm_status st;
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  if ((st = grad_like_input(ctx, "max_pool backward", p, g, &gx))) goto done;
  if (lm_device_of(g) != LM_CPU) {
    if ((st = dev_pool(ctx, "max_pool backward", p, true, g, gx, node->saved[0]))) goto done;
    gin[0] = gx, gx = NULL;
    goto done;
  }
  scatter_job j = {p, lm_data(g), (const int64_t *)lm_data(node->saved[0]), lm_data(gx), false};
  lm_parallel_for(ctx, p->planes, grain_for(out_plane(p)), g->dtype == LM_F64 ? max_back_f64 : max_back_f32, &j);
  if (atomic_load(&j.bad)) {
    st = lm_err(ctx, LM_E_INDEX, "max_pool backward: an index lies outside its plane of %lld elements "
                "(were the indices changed in place after the forward?)", (long long)in_plane(p));
    goto done;
  }
  gin[0] = gx, gx = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  return st;
}

lm_status lm_max_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *kernel, const int64_t *stride,
                      const int64_t *padding, const int64_t *dilation, int32_t ceil_mode, lm_tensor **values,
                      lm_tensor **indices) {
  char op[16];
  snprintf(op, sizeof op, "max_pool%dd", nd);
  lm_status st;
  if ((st = check_nd(ctx, "max_pool", nd)) || (st = check_pool_input(ctx, op, x, nd))) return st;
  if (!values) return lm_err(ctx, LM_E_ARG, "%s: values out-parameter is NULL", op);
  strided_args a;
  if ((st = strided_setup(ctx, op, x, nd, kernel, stride, padding, dilation, ceil_mode != 0, &a))) return st;

  window_plan *p = NULL;
  lm_tensor *xc = NULL, *y = NULL, *idx = NULL;
  int64_t shape[LM_MAX_DIMS];
  out_shape(x, nd, a.out, shape);
  bool grad = lm_grad_needed(ctx, 1, &x);
  if ((st = plan_new(ctx, op, x, nd, a.out, &p))) goto fail;
  for (int32_t d = 0; d < nd; d++)
    fill_strided(&p->dim[3 - nd + d], a.k[d], a.s[d], a.pad[d], a.dil[d], false);
  p->code = LM_OP_MAX_POOL;
  int32_t dev = lm_device_of(x);
  if ((st = contiguous_untracked(ctx, x, &xc))) goto fail;
  if ((st = lm_new_on(ctx, op, dev, x->dtype, x->ndim, shape, &y))) goto fail;
  if ((indices || grad) && (st = lm_new_on(ctx, op, dev, LM_I64, x->ndim, shape, &idx))) goto fail;

  max_job j = {p, lm_data(xc), lm_data(y), idx ? (int64_t *)lm_data(idx) : NULL, x->dtype == LM_F64, false};
  int64_t rows = p->planes * p->dim[0].out * p->dim[1].out;
  int64_t kvol = (a.k[0]) * (nd > 1 ? a.k[1] : 1) * (nd > 2 ? a.k[2] : 1);
  if (dev != LM_CPU) {
    if ((st = dev_pool(ctx, op, p, false, xc, y, idx))) goto fail;
  } else {
    lm_parallel_for(ctx, rows, grain_for(p->dim[2].out * kvol), j.f64 ? max_rows_f64 : max_rows_f32, &j);
  }
  if (atomic_load(&j.oom)) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    goto fail;
  }

  lm_node *node;
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, LM_OP_MAX_POOL, max_pool_backward, 1, &x, 1, outs, &node))) goto fail;
  if (node) {
    if ((st = lm_save(ctx, node, 0, idx))) goto fail;
    node->extra = p, node->extra_free = plan_free, p = NULL;
  }
  free(p);
  lm_tensor_release(xc);
  *values = y;
  if (indices) *indices = idx;
  else lm_tensor_release(idx);
  return LM_OK;
fail:
  free(p);
  lm_tensor_release(xc);
  lm_tensor_release(y);
  lm_tensor_release(idx);
  return st;
}

/* ---- average pooling (strided and adaptive) ---- */

typedef struct avg_job {
  const window_plan *p;
  const char *x; /* forward: input; backward: output gradient */
  char *y;       /* forward: output; backward: input gradient (zeroed plane by plane) */
  bool f64;
  atomic_bool oom;
} avg_job;

LM_INLINE double window_divisor(const window_plan *p, int64_t od, int64_t oh, int64_t ow) {
  if (p->divisor > 0) return p->divisor;
  return (double)(p->dim[0].count[od] * p->dim[1].count[oh] * p->dim[2].count[ow]);
}

/* Rows of outputs, summed one input row of their windows at a time, as
   max_rows does. */
LM_INLINE void avg_rows(avg_job *j, int64_t r0, int64_t r1, bool f64) {
  const window_plan *p = j->p;
  const window_dim *D = &p->dim[0], *H = &p->dim[1], *W = &p->dim[2];
  int64_t ip = in_plane(p), op = out_plane(p), HW = H->in * W->in;
  double *sum = malloc((size_t)W->out * sizeof *sum);
  if (!sum) {
    atomic_store(&j->oom, true);
    return;
  }
  for (int64_t r = r0; r < r1; r++) {
    int64_t oh = r % H->out, od = (r / H->out) % D->out, plane = r / (H->out * D->out);
    const char *x = j->x + plane * ip * (f64 ? 8 : 4);
    for (int64_t ow = 0; ow < W->out; ow++) sum[ow] = 0;
    for (int64_t id = D->lo[od]; id < D->hi[od]; id++)
      for (int64_t ih = H->lo[oh]; ih < H->hi[oh]; ih++) {
        const char *xr = x + (id * HW + ih * W->in) * (f64 ? 8 : 4);
        for (int64_t ow = 0; ow < W->inner_lo; ow++)
          for (int64_t iw = W->lo[ow]; iw < W->hi[ow]; iw++) sum[ow] += load(xr, iw, f64);
        for (int64_t k = 0; k < W->k; k++) {
          int64_t off = k - W->pad;
          SIMD for (int64_t ow = W->inner_lo; ow < W->inner_hi; ow++) sum[ow] += load(xr, ow * W->s + off, f64);
        }
        for (int64_t ow = W->inner_hi > W->inner_lo ? W->inner_hi : W->inner_lo; ow < W->out; ow++)
          for (int64_t iw = W->lo[ow]; iw < W->hi[ow]; iw++) sum[ow] += load(xr, iw, f64);
      }
    int64_t o = plane * op + (od * H->out + oh) * W->out;
    for (int64_t ow = 0; ow < W->out; ow++) store(j->y, o + ow, sum[ow] / window_divisor(p, od, oh, ow), f64);
  }
  free(sum);
}
static void avg_rows_f32(void *a, int64_t r0, int64_t r1) { avg_rows(a, r0, r1, false); }
static void avg_rows_f64(void *a, int64_t r0, int64_t r1) { avg_rows(a, r0, r1, true); }

/* Backward: every output spreads its gradient over its window. */
LM_INLINE void avg_back_planes(avg_job *j, int64_t p0, int64_t p1, bool f64) {
  const window_plan *p = j->p;
  const window_dim *D = &p->dim[0], *H = &p->dim[1], *W = &p->dim[2];
  int64_t ip = in_plane(p), op = out_plane(p), HW = H->in * W->in;
  for (int64_t plane = p0; plane < p1; plane++) {
    char *gx = j->y + plane * ip * (f64 ? 8 : 4);
    memset(gx, 0, (size_t)ip * (f64 ? 8 : 4));
    int64_t o = plane * op;
    for (int64_t od = 0; od < D->out; od++)
      for (int64_t oh = 0; oh < H->out; oh++)
        for (int64_t ow = 0; ow < W->out; ow++, o++) {
          double g = load(j->x, o, f64) / window_divisor(p, od, oh, ow);
          for (int64_t id = D->lo[od]; id < D->hi[od]; id++)
            for (int64_t ih = H->lo[oh]; ih < H->hi[oh]; ih++) {
              int64_t row = id * HW + ih * W->in;
              for (int64_t iw = W->lo[ow]; iw < W->hi[ow]; iw++) add_to(gx, row + iw, g, f64);
            }
        }
  }
}
static void avg_back_f32(void *a, int64_t p0, int64_t p1) { avg_back_planes(a, p0, p1, false); }
static void avg_back_f64(void *a, int64_t p0, int64_t p1) { avg_back_planes(a, p0, p1, true); }

static int64_t mean_window(const window_plan *p) {
  int64_t v = 1;
  for (int32_t d = 0; d < 3; d++) {
    const window_dim *w = &p->dim[d];
    v *= (w->in + w->out - 1) / w->out + 1; /* about the largest window */
  }
  return v;
}

static lm_status avg_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const window_plan *p = node->extra;
  lm_tensor *g = NULL, *gx = NULL;
  lm_status st;
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  if ((st = grad_like_input(ctx, "avg_pool backward", p, g, &gx))) goto done;
  if (lm_device_of(g) != LM_CPU) {
    if ((st = dev_pool(ctx, "avg_pool backward", p, true, g, gx, NULL))) goto done;
    gin[0] = gx, gx = NULL;
    goto done;
  }
  avg_job j = {p, lm_data(g), lm_data(gx), g->dtype == LM_F64, false};
  lm_parallel_for(ctx, p->planes, grain_for(out_plane(p) * mean_window(p)), j.f64 ? avg_back_f64 : avg_back_f32, &j);
  gin[0] = gx, gx = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  return st;
}

/* Runs an average pool over plan p (which it takes over) and records it. */
static lm_status run_avg(lm_ctx *ctx, const char *op, int32_t op_code, const lm_tensor *x, int32_t nd, window_plan *p,
                         lm_tensor **out) {
  lm_tensor *xc = NULL, *y = NULL;
  int64_t shape[LM_MAX_DIMS], spatial[3];
  for (int32_t d = 0; d < nd; d++) spatial[d] = p->dim[3 - nd + d].out;
  out_shape(x, nd, spatial, shape);
  lm_status st;
  p->code = op_code;
  if ((st = contiguous_untracked(ctx, x, &xc))) goto fail;
  if ((st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, x->ndim, shape, &y))) goto fail;
  avg_job j = {p, lm_data(xc), lm_data(y), x->dtype == LM_F64, false};
  int64_t rows = p->planes * p->dim[0].out * p->dim[1].out;
  if (lm_device_of(x) != LM_CPU) {
    if ((st = dev_pool(ctx, op, p, false, xc, y, NULL))) goto fail;
  } else {
    lm_parallel_for(ctx, rows, grain_for(p->dim[2].out * mean_window(p)), j.f64 ? avg_rows_f64 : avg_rows_f32, &j);
  }
  if (atomic_load(&j.oom)) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    goto fail;
  }

  lm_node *node;
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, op_code, avg_backward, 1, &x, 1, outs, &node))) goto fail;
  if (node) node->extra = p, node->extra_free = plan_free, p = NULL;
  free(p);
  lm_tensor_release(xc);
  *out = y;
  return LM_OK;
fail:
  free(p);
  lm_tensor_release(xc);
  lm_tensor_release(y);
  return st;
}

lm_status lm_avg_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *kernel, const int64_t *stride,
                      const int64_t *padding, int32_t ceil_mode, int32_t count_include_pad, int64_t divisor_override,
                      lm_tensor **out) {
  char op[16];
  snprintf(op, sizeof op, "avg_pool%dd", nd);
  lm_status st;
  if ((st = check_nd(ctx, "avg_pool", nd)) || (st = check_pool_input(ctx, op, x, nd))) return st;
  if (divisor_override < 0)
    return lm_err(ctx, LM_E_ARG, "%s: divisor_override is %lld, expected > 0 (or 0 for none)", op,
                  (long long)divisor_override);
  strided_args a;
  if ((st = strided_setup(ctx, op, x, nd, kernel, stride, padding, NULL, ceil_mode != 0, &a))) return st;
  window_plan *p;
  if ((st = plan_new(ctx, op, x, nd, a.out, &p))) return st;
  for (int32_t d = 0; d < nd; d++)
    fill_strided(&p->dim[3 - nd + d], a.k[d], a.s[d], a.pad[d], 1, count_include_pad != 0);
  p->divisor = (double)divisor_override;
  p->count_pad = count_include_pad != 0;
  return run_avg(ctx, op, LM_OP_AVG_POOL, x, nd, p, out);
}

lm_status lm_adaptive_avg_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *output_size, lm_tensor **out) {
  char op[24];
  snprintf(op, sizeof op, "adaptive_avg_pool%dd", nd);
  lm_status st;
  if ((st = check_nd(ctx, "adaptive_avg_pool", nd)) || (st = check_pool_input(ctx, op, x, nd))) return st;
  if (!output_size) return lm_err(ctx, LM_E_ARG, "%s: output size is NULL", op);
  if ((st = check_param(ctx, op, "output size", nd, output_size, 1))) return st;
  window_plan *p;
  if ((st = plan_new(ctx, op, x, nd, output_size, &p))) return st;
  for (int32_t d = 3 - nd; d < 3; d++) fill_adaptive(&p->dim[d]);
  return run_avg(ctx, op, LM_OP_ADAPTIVE_AVG_POOL, x, nd, p, out);
}

/* ---- max unpooling ---- */

typedef struct unpool_job {
  int64_t in_plane, out_plane;
  const char *src; /* forward: values; backward: output gradient */
  const int64_t *idx;
  char *dst;       /* forward: the output (zeroed plane by plane); backward: input gradient */
  atomic_bool bad; /* an index outside the output plane */
} unpool_job;

LM_INLINE void unpool_planes(unpool_job *j, int64_t p0, int64_t p1, bool f64) {
  for (int64_t plane = p0; plane < p1; plane++) {
    char *y = j->dst + plane * j->out_plane * (f64 ? 8 : 4);
    memset(y, 0, (size_t)j->out_plane * (f64 ? 8 : 4));
    for (int64_t i = plane * j->in_plane; i < (plane + 1) * j->in_plane; i++) {
      int64_t k = j->idx[i];
      if (k < 0 || k >= j->out_plane) {
        atomic_store(&j->bad, true);
        return;
      }
      store(y, k, load(j->src, i, f64), f64);
    }
  }
}
static void unpool_f32(void *a, int64_t p0, int64_t p1) { unpool_planes(a, p0, p1, false); }
static void unpool_f64(void *a, int64_t p0, int64_t p1) { unpool_planes(a, p0, p1, true); }

/* Backward gathers: the gradient of input i is the output's at idx[i]
   (checked again: the indices are the caller's, who may have changed them). */
LM_INLINE void unpool_back(unpool_job *j, int64_t p0, int64_t p1, bool f64) {
  for (int64_t plane = p0; plane < p1; plane++) {
    const char *g = j->src + plane * j->out_plane * (f64 ? 8 : 4);
    for (int64_t i = plane * j->in_plane; i < (plane + 1) * j->in_plane; i++) {
      int64_t k = j->idx[i];
      if (k < 0 || k >= j->out_plane) {
        atomic_store(&j->bad, true);
        return;
      }
      store(j->dst, i, load(g, k, f64), f64);
    }
  }
}
static void unpool_back_f32(void *a, int64_t p0, int64_t p1) { unpool_back(a, p0, p1, false); }
static void unpool_back_f64(void *a, int64_t p0, int64_t p1) { unpool_back(a, p0, p1, true); }

/* On a device, unpooling is the index kernels' scatter (forward) and
   gather (backward) along the flattened plane, after a range check of the
   indices there (their smallest and largest come back). */
static lm_status unpool_indices_ok(lm_ctx *ctx, const lm_tensor *idx, int64_t out_plane, bool *ok) {
  *ok = true;
  if (lm_numel(idx) == 0) return LM_OK;
  lm_tensor *lo = NULL, *hi = NULL, *hl = NULL, *hh = NULL;
  lm_status st;
  if (!(st = lm_reduce(ctx, LM_OP_MIN, idx, 0, NULL, 0, 0, &lo, NULL)) &&
      !(st = lm_reduce(ctx, LM_OP_MAX, idx, 0, NULL, 0, 0, &hi, NULL)) && !(st = lm_to_device(ctx, lo, LM_CPU, &hl)) &&
      !(st = lm_to_device(ctx, hi, LM_CPU, &hh)))
    *ok = *(const int64_t *)lm_data(hl) >= 0 && *(const int64_t *)lm_data(hh) < out_plane;
  lm_tensor_release(lo);
  lm_tensor_release(hi);
  lm_tensor_release(hl);
  lm_tensor_release(hh);
  return st;
}

/* planes x in_plane views of the contiguous x and idx; scatter (forward:
   into zeros of planes x out_plane) or gather (backward: from x, which is
   planes x out_plane), reshaped to (ndim, shape). */
static lm_status unpool_device(lm_ctx *ctx, const char *op, bool backward, const lm_tensor *x, const lm_tensor *idx,
                               int64_t in_plane, int64_t out_plane, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  const int64_t planes = in_plane ? lm_numel(idx) / in_plane : 0;
  int64_t ishape[2] = {planes, in_plane}, oshape[2] = {planes, out_plane};
  lm_tensor *x2 = NULL, *i2 = NULL, *z = NULL, *r = NULL;
  bool grad = lm_grad_pause(ctx);
  lm_status st;
  if (!(st = lm_reshape(ctx, x, 2, backward ? oshape : ishape, &x2)) && !(st = lm_reshape(ctx, idx, 2, ishape, &i2))) {
    if (backward) {
      st = lm_gather(ctx, x2, 1, i2, &r);
    } else if (!(st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, 2, oshape, &z)) && !(st = lm_fill(ctx, z, 0))) {
      st = lm_scatter(ctx, z, 1, i2, x2, LM_SCATTER_SET, NULL, &r);
    }
  }
  if (!st) st = lm_reshape(ctx, r, ndim, shape, out);
  ctx->grad_enabled = grad;
  lm_tensor_release(x2);
  lm_tensor_release(i2);
  lm_tensor_release(z);
  lm_tensor_release(r);
  return st;
}

static lm_status max_unpool_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *idx = node->saved[0];
  lm_tensor *g = NULL, *gx = NULL;
  lm_status st;
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  if (lm_device_of(g) != LM_CPU) {
    bool ok;
    if ((st = unpool_indices_ok(ctx, idx, node->ip[1], &ok))) goto done;
    if (!ok) {
      st = lm_err(ctx, LM_E_INDEX, "max_unpool backward: an index lies outside the output plane of %lld elements "
                  "(were the indices changed in place after the forward?)", (long long)node->ip[1]);
      goto done;
    }
    st = unpool_device(ctx, "max_unpool backward", true, g, idx, node->ip[0], node->ip[1], idx->ndim, idx->shape, &gin[0]);
    goto done;
  }
  if ((st = lm_new(ctx, "max_unpool backward", g->dtype, idx->ndim, idx->shape, &gx))) goto done;
  unpool_job j = {node->ip[0], node->ip[1], lm_data(g), (const int64_t *)lm_data(idx), lm_data(gx), false};
  int64_t planes = lm_numel(idx) / j.in_plane;
  lm_parallel_for(ctx, planes, grain_for(j.in_plane), g->dtype == LM_F64 ? unpool_back_f64 : unpool_back_f32, &j);
  if (atomic_load(&j.bad)) {
    st = lm_err(ctx, LM_E_INDEX, "max_unpool backward: an index lies outside the output plane of %lld elements "
                "(were the indices changed in place after the forward?)", (long long)j.out_plane);
    goto done;
  }
  gin[0] = gx, gx = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  return st;
}

lm_status lm_max_unpool(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *indices, int32_t nd, const int64_t *output_size,
                        lm_tensor **out) {
  char op[16], a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  snprintf(op, sizeof op, "max_unpool%dd", nd);
  lm_status st;
  const lm_tensor *both[2] = {x, indices};
  const char *what[2] = {"input", "indices"};
  int32_t device;
  if ((st = check_nd(ctx, "max_unpool", nd)) || (st = lm_check_arg(ctx, op, x, "input")) ||
      (st = check_pool_input(ctx, op, x, nd)))
    return st;
  if ((st = lm_check_arg(ctx, op, indices, "indices")) || (st = lm_op_device(ctx, op, 2, both, what, false, &device)))
    return st;
  if (indices->dtype != LM_I64)
    return lm_err(ctx, LM_E_DTYPE, "%s: indices dtype %s, expected i64", op, lm_dtype_name(indices->dtype));
  if (indices->ndim != x->ndim || memcmp(indices->shape, x->shape, (size_t)x->ndim * sizeof *x->shape))
    return lm_err(ctx, LM_E_SHAPE, "%s: indices of shape %s for an input of shape %s, expected the same shape", op,
                  LM_SHP(indices, a), LM_SHP(x, b));
  if (!output_size) return lm_err(ctx, LM_E_ARG, "%s: output size is NULL", op);
  if ((st = check_param(ctx, op, "output size", nd, output_size, 1))) return st;

  lm_tensor *xc = NULL, *ic = NULL, *y = NULL;
  int64_t shape[LM_MAX_DIMS];
  out_shape(x, nd, output_size, shape);
  if ((st = contiguous_untracked(ctx, x, &xc)) || (st = contiguous_untracked(ctx, indices, &ic))) goto fail;
  unpool_job j = {1, 1, lm_data(xc), (const int64_t *)lm_data(ic), NULL, false};
  int64_t planes = 1;
  for (int32_t d = 0; d < x->ndim; d++) {
    if (d < x->ndim - nd) planes *= x->shape[d];
    else j.in_plane *= x->shape[d], j.out_plane *= shape[d];
  }
  if (device != LM_CPU) {
    bool ok;
    if ((st = unpool_indices_ok(ctx, ic, j.out_plane, &ok))) goto fail;
    atomic_store(&j.bad, !ok);
    if (ok && (st = unpool_device(ctx, op, false, xc, ic, j.in_plane, j.out_plane, x->ndim, shape, &y))) goto fail;
  } else {
    if ((st = lm_new(ctx, op, x->dtype, x->ndim, shape, &y))) goto fail;
    j.dst = lm_data(y);
    lm_parallel_for(ctx, planes, grain_for(j.in_plane), x->dtype == LM_F64 ? unpool_f64 : unpool_f32, &j);
  }
  if (atomic_load(&j.bad)) {
    char ys[LM_SHAPE_BUF];
    st = lm_err(ctx, LM_E_INDEX, "%s: an index lies outside the output plane of %lld elements (output %s), "
                "expected indices in [0, %lld)", op, (long long)j.out_plane, lm_shape_str(x->ndim, shape, ys, sizeof ys),
                (long long)j.out_plane);
    goto fail;
  }

  lm_node *node;
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, LM_OP_MAX_UNPOOL, max_unpool_backward, 1, &x, 1, outs, &node))) goto fail;
  if (node) {
    if ((st = lm_save(ctx, node, 0, ic))) goto fail;
    node->ip[0] = j.in_plane, node->ip[1] = j.out_plane;
  }
  lm_tensor_release(xc);
  lm_tensor_release(ic);
  *out = y;
  return LM_OK;
fail:
  lm_tensor_release(xc);
  lm_tensor_release(ic);
  lm_tensor_release(y);
  return st;
}
