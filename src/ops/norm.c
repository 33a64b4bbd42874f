/* norm.c - batch norm, group norm (and instance norm as groups == C) and
 * layer norm, forward and backward.
 *
 * All three normalise "groups" of elements with their own mean and
 * variance: a channel across the batch (batch norm), a sample's group of
 * channels (group norm), a trailing block (layer norm). Each group is laid
 * out as nseg runs of seg_len contiguous elements (a contiguous input, so
 * the only copy is of a non-contiguous one), and the work is cut into
 * units: pieces of at most CHUNK elements of one group. Units run in
 * parallel and leave their partial sums in their own slots, which are
 * added in a fixed order, so results do not depend on the thread count.
 *
 * Statistics are one pass over shifted data: sums of (x - k) and (x - k)^2
 * in double, with k an element of the group, so that a mean far from zero
 * does not cancel the variance away. The backward is two passes too: the
 * sums of g and g * (x - mean) per group, then every gradient element as
 * a * g + b * x + c with per-group (or per-channel) coefficients. The
 * kernels compute in double and are instantiated once per dtype, with an
 * AVX2 clone; they run at about the speed of memory (a forward costs a sum
 * plus an add of the same tensor). */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16384   /* elements of one group handled by one unit, at most */
#define GRAIN 32768   /* elements below which another thread does not pay */

/* ---- elements as doubles ----
   The kernels are written once over double values and instantiated per
   dtype: f32 is a constant in each instance, so the tests fold away and the
   loops vectorise with the conversions inline. */
LM_INLINE double ld(const char *p, int64_t i, bool f32) {
  return f32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
LM_INLINE void st(char *p, int64_t i, double v, bool f32) {
  if (f32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}

/* n doubles (at least one, so that n == 0 is not a failure); NULL on OOM */
static double *doubles(int64_t n) { return malloc((size_t)(n > 0 ? n : 1) * sizeof(double)); }

/* ---- groups and units ---- */

/* Group q's elements, in order: run r (0 <= r < nseg) starts at element
   q * group_stride + r * seg_stride and holds seg_len elements. */
typedef struct layout {
  int64_t ngroups, group_stride, nseg, seg_len, seg_stride;
} layout;

static int64_t group_len(const layout *l) { return l->nseg * l->seg_len; }
static int64_t chunks_per_group(const layout *l) {
  int64_t n = group_len(l);
  return n ? (n + CHUNK - 1) / CHUNK : 1;
}

enum {
  K_MOMENTS,      /* s1 += sum(x - k), s2 += sum((x - k)^2), k = shift[q] */
  K_GRAD_SUMS,    /* s1 += sum(g), s2 += sum(g * (x - k)) */
  K_LN_GRAD_SUMS, /* the same with g * w[j] (layer norm) */
  K_AFFINE,       /* y = a[q] * x + b[q] */
  K_LN_AFFINE,    /* y = (a[q] * x + b[q]) * w[j] + bias[j] (layer norm) */
  K_GRAD_X,       /* y = a[q] * g + b[q] * x + c[q] */
  K_LN_GRAD_X     /* y = a[q] * g * w[j] + b[q] * x + c[q] */
};

typedef struct pass {
  int kind;
  int32_t dt;
  int32_t dev;                /* where x, g and y are (LM_CPU: the kernels here) */
  layout l;
  int64_t cpg;                /* chunks per group */
  const char *x, *g;          /* inputs (contiguous) */
  char *y;                    /* output (contiguous) */
  const double *k, *a, *b, *c; /* per group */
  const double *w, *bias;     /* per position within a group (layer norm; NULL: 1, 0) */
  double *part;               /* two partial sums per unit */
} pass;

/* One contiguous run of n elements at element offset off; j is the
   position of its first element within the group. */
LM_INLINE void run_body(const pass *p, int64_t q, int64_t off, int64_t j, int64_t n, double *s1, double *s2, bool f32) {
  const int64_t at = off * (f32 ? 4 : 8);
  const char *x = p->x + at, *g = p->g ? p->g + at : NULL;
  char *y = p->y ? p->y + at : NULL;
  const double *w = p->w ? p->w + j : NULL, *bias = p->bias ? p->bias + j : NULL;
  double u = 0, v = 0;
  switch (p->kind) {
  case K_MOMENTS: {
    const double k = p->k[q];
    LM_SIMD_SUM(u, v) for (int64_t t = 0; t < n; t++) {
      double d = ld(x, t, f32) - k;
      u += d;
      v += d * d;
    }
    break;
  }
  case K_GRAD_SUMS:
  case K_LN_GRAD_SUMS: {
    const double k = p->k[q];
    if (w) {
      LM_SIMD_SUM(u, v) for (int64_t t = 0; t < n; t++) {
        double gw = ld(g, t, f32) * w[t];
        u += gw;
        v += gw * (ld(x, t, f32) - k);
      }
    } else {
      LM_SIMD_SUM(u, v) for (int64_t t = 0; t < n; t++) {
        double gt = ld(g, t, f32);
        u += gt;
        v += gt * (ld(x, t, f32) - k);
      }
    }
    break;
  }
  case K_AFFINE: {
    const double a = p->a[q], b = p->b[q];
    LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, a * ld(x, t, f32) + b, f32);
    break;
  }
  case K_LN_AFFINE: {
    const double a = p->a[q], b = p->b[q];
    if (w && bias) {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, (a * ld(x, t, f32) + b) * w[t] + bias[t], f32);
    } else if (w) {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, (a * ld(x, t, f32) + b) * w[t], f32);
    } else if (bias) {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, (a * ld(x, t, f32) + b) + bias[t], f32);
    } else {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, a * ld(x, t, f32) + b, f32);
    }
    break;
  }
  case K_GRAD_X:
  case K_LN_GRAD_X: {
    const double a = p->a[q], b = p->b[q], c = p->c[q];
    if (w) {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, a * ld(g, t, f32) * w[t] + b * ld(x, t, f32) + c, f32);
    } else {
      LM_SIMD for (int64_t t = 0; t < n; t++) st(y, t, a * ld(g, t, f32) + b * ld(x, t, f32) + c, f32);
    }
    break;
  }
  }
  *s1 += u;
  *s2 += v;
}
LM_CLONES static void run_f32(const pass *p, int64_t q, int64_t off, int64_t j, int64_t n, double *s1, double *s2) {
  run_body(p, q, off, j, n, s1, s2, true);
}
LM_CLONES static void run_f64(const pass *p, int64_t q, int64_t off, int64_t j, int64_t n, double *s1, double *s2) {
  run_body(p, q, off, j, n, s1, s2, false);
}

/* Units [begin, end): unit u is chunk (u % cpg) of group (u / cpg). */
static void run_units(void *arg, int64_t begin, int64_t end) {
  const pass *p = arg;
  const layout *l = &p->l;
  const int64_t len = group_len(l);
  for (int64_t u = begin; u < end; u++) {
    const int64_t q = u / p->cpg;
    int64_t j = (u % p->cpg) * CHUNK;
    const int64_t stop = j + CHUNK < len ? j + CHUNK : len;
    double s1 = 0, s2 = 0;
    while (j < stop) {
      const int64_t seg = j / l->seg_len, within = j % l->seg_len;
      const int64_t n = l->seg_len - within < stop - j ? l->seg_len - within : stop - j;
      (p->dt == LM_F32 ? run_f32 : run_f64)(p, q, q * l->group_stride + seg * l->seg_stride + within, j, n, &s1, &s2);
      j += n;
    }
    if (p->part) {
      p->part[2 * u] = s1;
      p->part[2 * u + 1] = s2;
    }
  }
}

/* A pass on a device: the coefficients go over, the backend's norm_pass
   runs the loop, the sums (and the shifts of K_MOMENTS, into p->k) come
   back. */
static lm_status dev_pass(lm_ctx *ctx, const char *op, pass *p, double *sums) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, p->dev, norm_pass, &be);
  if (st) return st;
  const int64_t G = p->l.ngroups, len = group_len(&p->l);
  const int kind = p->kind == K_MOMENTS ? LM_NORM_MOMENTS
                   : p->kind == K_GRAD_SUMS || p->kind == K_LN_GRAD_SUMS ? LM_NORM_GRAD_SUMS
                   : p->kind == K_AFFINE || p->kind == K_LN_AFFINE     ? LM_NORM_AFFINE
                                                                        : LM_NORM_GRAD_X;
  const int64_t n = 4 * G + 2 * len + 2 * G; /* coef, w, bias, sums */
  double *host = doubles(n);
  if (!host) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  double *w = host + 4 * G, *bias = w + len, *hs = bias + len;
  const double *const src[4] = {p->k, p->a, p->b, p->c};
  for (int i = 0; i < 4; i++)
    for (int64_t q = 0; q < G; q++) host[i * G + q] = src[i] ? src[i][q] : 0;
  for (int64_t j = 0; j < len; j++) w[j] = p->w ? p->w[j] : 1, bias[j] = p->bias ? p->bias[j] : 0;
  lm_tensor *buf = NULL;
  const int64_t shape[1] = {n};
  if ((st = lm_new_on(ctx, op, p->dev, LM_F64, 1, shape, &buf))) goto done;
  double *d = (double *)lm_data(buf);
  const int64_t layout[5] = {G, p->l.group_stride, p->l.nseg, p->l.seg_len, p->l.seg_stride};
  if ((st = be->copy_h2d(d, host, (size_t)(4 * G + 2 * len) * sizeof(double))) ||
      (st = be->norm_pass(kind, p->dt, layout, p->x, p->g, p->y, d, p->w ? d + 4 * G : NULL,
                          p->bias ? d + 4 * G + len : NULL, sums ? d + 4 * G + 2 * len : NULL))) {
    st = lm_backend_fail(ctx, op, be, st);
    goto done;
  }
  if (sums) {
    if ((st = be->copy_d2h(hs, d + 4 * G + 2 * len, (size_t)(2 * G) * sizeof(double))) ||
        (kind == LM_NORM_MOMENTS && (st = be->copy_d2h((double *)p->k, d, (size_t)G * sizeof(double))))) {
      st = lm_backend_fail(ctx, op, be, st);
      goto done;
    }
    memcpy(sums, hs, (size_t)(2 * G) * sizeof(double));
  }
done:
  lm_tensor_release(buf);
  free(host);
  return st;
}

/* Runs pass p over every unit; when sums is given, sums[2q], sums[2q+1]
   receive group q's two sums. */
static lm_status run_pass(lm_ctx *ctx, const char *op, pass *p, double *sums) {
  if (p->dev != LM_CPU) return dev_pass(ctx, op, p, sums);
  p->cpg = chunks_per_group(&p->l);
  const int64_t units = p->l.ngroups * p->cpg;
  p->part = NULL;
  if (sums) {
    if (!(p->part = doubles(2 * units)))
      return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  }
  const int64_t unit_len = group_len(&p->l) < CHUNK ? group_len(&p->l) : CHUNK;
  const int64_t grain = unit_len > 0 ? GRAIN / unit_len : GRAIN;
  lm_parallel_for(ctx, units, grain < 1 ? 1 : grain, run_units, p);
  if (sums) {
    for (int64_t q = 0; q < p->l.ngroups; q++) {
      double s1 = 0, s2 = 0;
      for (int64_t k = 0; k < p->cpg; k++) {
        s1 += p->part[2 * (q * p->cpg + k)];
        s2 += p->part[2 * (q * p->cpg + k) + 1];
      }
      sums[2 * q] = s1;
      sums[2 * q + 1] = s2;
    }
    free(p->part);
    p->part = NULL;
  }
  return LM_OK;
}

/* Mean and 1/sqrt(var + eps) of every group from one shifted pass; var
   (biased) goes to var when given. */
static lm_status group_stats(lm_ctx *ctx, const char *op, int32_t dev, int32_t dt, const char *x, const layout *l,
                             double eps, double *mean, double *rstd, double *var) {
  const int64_t n = group_len(l);
  double *shift = doubles(3 * l->ngroups);
  if (!shift) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  double *sums = shift + l->ngroups;
  for (int64_t q = 0; q < l->ngroups; q++) /* on a device the pass takes them itself */
    shift[q] = n && dev == LM_CPU ? lm_read_as_double(dt, x + q * l->group_stride * lm_dtype_size(dt)) : 0;
  pass p = {.kind = K_MOMENTS, .dt = dt, .dev = dev, .l = *l, .x = x, .k = shift};
  lm_status st = run_pass(ctx, op, &p, sums);
  for (int64_t q = 0; q < l->ngroups && !st; q++) {
    double m = sums[2 * q] / (double)n;
    double v = sums[2 * q + 1] / (double)n - m * m;
    if (v < 0) v = 0; /* rounding */
    mean[q] = shift[q] + m;
    rstd[q] = 1.0 / sqrt(v + eps);
    if (var) var[q] = v;
  }
  free(shift);
  return st;
}

/* ---- checks ---- */

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  if (!lm_dtype_is_float(x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input dtype %s, expected f32 or f64", op, lm_dtype_name(x->dtype));
  return LM_OK;
}

/* An optional per-channel tensor (weight, bias, running stats): NULL, or
   ndim dims equal to shape, of dtype dt. */
static lm_status check_param(lm_ctx *ctx, const char *op, const lm_tensor *x, const lm_tensor *t, const char *what,
                             int32_t dt, int32_t ndim, const int64_t *shape) {
  if (!t) return LM_OK;
  const lm_tensor *ts[2] = {x, t};
  const char *const names[2] = {"input", what};
  int32_t dev;
  lm_status st = lm_op_device(ctx, op, 2, ts, names, false, &dev);
  if (st) return st;
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  bool same = t->ndim == ndim;
  for (int32_t d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (!same)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s has shape %s, expected %s", op, what, LM_SHP(t, a),
                  lm_shape_str(ndim, shape, b, sizeof b));
  if (t->dtype != dt)
    return lm_err(ctx, LM_E_DTYPE, "%s: %s has dtype %s, expected %s (the input's)", op, what,
                  lm_dtype_name(t->dtype), lm_dtype_name(dt));
  return LM_OK;
}

/* The values of a small tensor as a contiguous array of doubles (NULL
   tensor: n copies of dflt). */
static lm_status read_doubles(lm_ctx *ctx, const char *op, const lm_tensor *t, int64_t n, double dflt, double **out) {
  double *v = doubles(n);
  if (!v) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  if (!t) {
    for (int64_t i = 0; i < n; i++) v[i] = dflt;
  } else {
    lm_tensor *c; /* contiguous, on the CPU */
    lm_status st = lm_device_of(t) == LM_CPU ? lm_contiguous(ctx, t, &c) : lm_to_device(ctx, t, LM_CPU, &c);
    if (st) { free(v); return st; }
    for (int64_t i = 0; i < n; i++) v[i] = lm_read_as_double(c->dtype, lm_data(c) + i * lm_dtype_size(c->dtype));
    lm_tensor_release(c);
  }
  *out = v;
  return LM_OK;
}

/* Element i of a 1-D tensor, through its stride. */
static char *elem1(const lm_tensor *t, int64_t i) { return lm_data(t) + i * t->stride[0] * lm_dtype_size(t->dtype); }

/* The backward's gradient of x's shape, contiguous and of x's dtype. */
static lm_status contiguous_grad(lm_ctx *ctx, const lm_tensor *g, int32_t dt, lm_tensor **out) {
  lm_tensor *c;
  lm_status st = lm_cast_if_needed(ctx, g, dt, &c);
  if (st) return st;
  st = lm_contiguous(ctx, c, out);
  lm_tensor_release(c);
  return st;
}

/* A new tensor of dtype dt and shape (ndim, shape) holding v, on dev. */
static lm_status tensor_of(lm_ctx *ctx, const char *op, int32_t dev, int32_t dt, int32_t ndim, const int64_t *shape,
                           const double *v, lm_tensor **out) {
  lm_tensor *h;
  lm_status st = lm_new(ctx, op, dt, ndim, shape, &h);
  if (st) return st;
  int64_t n = lm_numel(h);
  for (int64_t i = 0; i < n; i++) lm_write_from_double(dt, lm_data(h) + i * lm_dtype_size(dt), v[i]);
  if (dev == LM_CPU) {
    *out = h;
    return LM_OK;
  }
  st = lm_to_device(ctx, h, dev, out);
  lm_tensor_release(h);
  return st;
}

/* t (1-D, n values, any device) = (1 - momentum) t + momentum * scale * v. */
static lm_status update_running(lm_ctx *ctx, const char *op, lm_tensor *t, int64_t n, double momentum, double scale,
                                const double *v) {
  if (lm_device_of(t) == LM_CPU) {
    for (int64_t q = 0; q < n; q++) {
      char *p = elem1(t, q);
      lm_write_from_double(t->dtype, p, (1 - momentum) * lm_read_as_double(t->dtype, p) + momentum * v[q] * scale);
    }
    return LM_OK;
  }
  double *old;
  lm_status st = read_doubles(ctx, op, t, n, 0, &old);
  if (st) return st;
  for (int64_t q = 0; q < n; q++) old[q] = (1 - momentum) * old[q] + momentum * v[q] * scale;
  lm_tensor *h;
  if (!(st = tensor_of(ctx, op, LM_CPU, t->dtype, 1, &n, old, &h))) {
    st = lm_copy_(ctx, t, h);
    lm_tensor_release(h);
  }
  free(old);
  return st;
}

/* The backward of every norm keeps the per-group statistics in
   node->extra: mean[0..G) then rstd[0..G), one block (G in ip[1]). */
static void keep_stats(lm_node *node, double *block, int64_t groups) {
  node->extra = block;
  node->extra_free = free;
  node->ip[1] = groups;
}
static const double *saved_mean(const lm_node *node) { return node->extra; }
static const double *saved_rstd(const lm_node *node) { return (const double *)node->extra + node->ip[1]; }

/* ---- batch norm ---- */

/* x [N, C, S]: channel c's group is N runs of S at stride C * S. */
static layout channel_layout(int64_t N, int64_t C, int64_t S) {
  return (layout){.ngroups = C, .group_stride = S, .nseg = N, .seg_len = S, .seg_stride = C * S};
}

static void nc_s(const lm_tensor *x, int64_t *N, int64_t *C, int64_t *S) {
  *N = x->shape[0];
  *C = x->shape[1];
  *S = 1;
  for (int32_t d = 2; d < x->ndim; d++) *S *= x->shape[d];
}

/* saved: 0 x (contiguous), 1 weight; ip[0]: training; extra: mean, rstd */
static lm_status batch_norm_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *wt = node->saved[1];
  const double *mean = saved_mean(node), *rstd = saved_rstd(node);
  const int32_t dt = x->dtype;
  const bool training = node->ip[0] != 0;
  int64_t N, C, S;
  nc_s(x, &N, &C, &S);
  const layout l = channel_layout(N, C, S);
  const double M = (double)(N * S);
  lm_tensor *g = NULL;
  double *w = NULL, *sums = doubles(5 * C);
  if (!sums) return lm_err(ctx, LM_E_OOM, "batch_norm: out of memory");
  double *a = sums + 2 * C, *b = a + C, *c = b + C;
  lm_status st = contiguous_grad(ctx, gout[0], dt, &g);
  if (!st) st = read_doubles(ctx, "batch_norm", wt, C, 1.0, &w);
  pass p = {.kind = K_GRAD_SUMS, .dt = dt, .dev = lm_device_of(x), .l = l, .x = lm_data(x), .g = g ? lm_data(g) : NULL, .k = mean};
  if (!st) st = run_pass(ctx, "batch_norm", &p, sums); /* sum(g), sum(g (x - mean)) */
  if (!st && node->needs[0]) {
    for (int64_t q = 0; q < C; q++) {
      double r = rstd[q];
      a[q] = w[q] * r;
      b[q] = training ? -w[q] * r * r * r * sums[2 * q + 1] / M : 0;
      c[q] = training ? -w[q] * r * sums[2 * q] / M - b[q] * mean[q] : 0;
    }
    if (!(st = lm_new_on(ctx, "batch_norm", lm_device_of(x), dt, x->ndim, x->shape, &gin[0]))) {
      pass px = {.kind = K_GRAD_X, .dt = dt, .dev = lm_device_of(x), .l = l, .x = lm_data(x), .g = lm_data(g), .y = lm_data(gin[0]),
                 .a = a, .b = b, .c = c};
      st = run_pass(ctx, "batch_norm", &px, NULL);
    }
  }
  const int64_t cshape[1] = {C};
  if (!st && node->needs[1]) {
    for (int64_t q = 0; q < C; q++) a[q] = sums[2 * q + 1] * rstd[q];
    st = tensor_of(ctx, "batch_norm", lm_device_of(x), dt, 1, cshape, a, &gin[1]);
  }
  if (!st && node->needs[2]) {
    for (int64_t q = 0; q < C; q++) a[q] = sums[2 * q];
    st = tensor_of(ctx, "batch_norm", lm_device_of(x), dt, 1, cshape, a, &gin[2]);
  }
  lm_tensor_release(g);
  free(w);
  free(sums);
  return st;
}

lm_status lm_batch_norm(lm_ctx *ctx, const lm_tensor *x, lm_tensor *running_mean, lm_tensor *running_var,
                        const lm_tensor *weight, const lm_tensor *bias, int32_t training, double momentum, double eps,
                        lm_tensor **out) {
  const char *op = "batch_norm";
  char sb[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input")) || (st = check_float(ctx, op, x))) return st;
  if (x->ndim < 2)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected N x C x * (at least 2-D)", op, x->ndim, LM_SHP(x, sb));
  if (!(eps >= 0)) return lm_err(ctx, LM_E_ARG, "%s: eps is %g, expected a number >= 0", op, eps);
  int64_t N, C, S;
  nc_s(x, &N, &C, &S);
  const int64_t cshape[1] = {C};
  if ((st = check_param(ctx, op, x, weight, "weight", x->dtype, 1, cshape)) ||
      (st = check_param(ctx, op, x, bias, "bias", x->dtype, 1, cshape)) ||
      (st = check_param(ctx, op, x, running_mean, "running_mean", x->dtype, 1, cshape)) ||
      (st = check_param(ctx, op, x, running_var, "running_var", x->dtype, 1, cshape)))
    return st;
  if (!training && (!running_mean || !running_var))
    return lm_err(ctx, LM_E_ARG, "%s: running_mean and running_var are needed in evaluation mode (training = false)", op);
  if (training && N * S <= 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: input %s has %lld value(s) per channel, expected more than 1 when training",
                  op, LM_SHP(x, sb), (long long)(N * S));
  if (training) {
    lm_tensor *const stats[2] = {running_mean, running_var};
    for (int i = 0; i < 2; i++) {
      if (!stats[i]) continue;
      if ((st = lm_check_writable(ctx, op, stats[i]))) return st;
      if (lm_tensor_requires_grad(stats[i]) && lm_grad_enabled(ctx))
        return lm_err(ctx, LM_E_ARG, "%s: %s requires grad, expected a buffer (running statistics are updated in place)",
                      op, i ? "running_var" : "running_mean");
    }
  }

  const int32_t dt = x->dtype;
  const layout l = channel_layout(N, C, S);
  lm_tensor *xc = NULL, *y = NULL;
  double *mean = doubles(5 * C), *w = NULL, *b = NULL;
  if (!mean) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  double *rstd = mean + C, *var = rstd + C, *sa = var + C, *sbias = sa + C;
  const bool grad_was = lm_grad_pause(ctx); /* the copies made here must not record */
  if ((st = lm_contiguous(ctx, x, &xc))) goto done;
  if ((st = read_doubles(ctx, op, weight, C, 1.0, &w)) || (st = read_doubles(ctx, op, bias, C, 0.0, &b))) goto done;
  if (training) {
    if ((st = group_stats(ctx, op, lm_device_of(x), dt, lm_data(xc), &l, eps, mean, rstd, var))) goto done;
    const double unbias = (double)(N * S) / (double)(N * S - 1);
    if ((running_mean && (st = update_running(ctx, op, running_mean, C, momentum, 1.0, mean))) ||
        (running_var && (st = update_running(ctx, op, running_var, C, momentum, unbias, var))))
      goto done;
  } else {
    double *rm = NULL, *rv = NULL;
    if (!(st = read_doubles(ctx, op, running_mean, C, 0, &rm)) && !(st = read_doubles(ctx, op, running_var, C, 0, &rv)))
      for (int64_t q = 0; q < C; q++) {
        mean[q] = rm[q];
        rstd[q] = 1.0 / sqrt(rv[q] + eps);
      }
    free(rm);
    free(rv);
    if (st) goto done;
  }
  /* y = w (x - mean) rstd + b = sa x + sbias */
  for (int64_t q = 0; q < C; q++) {
    sa[q] = w[q] * rstd[q];
    sbias[q] = b[q] - mean[q] * sa[q];
  }
  if ((st = lm_new_on(ctx, op, lm_device_of(x), dt, x->ndim, x->shape, &y))) goto done;
  pass p = {.kind = K_AFFINE, .dt = dt, .dev = lm_device_of(x), .l = l, .x = lm_data(xc), .y = lm_data(y), .a = sa, .b = sbias};
  if ((st = run_pass(ctx, op, &p, NULL))) goto done;

  ctx->grad_enabled = grad_was;
  lm_node *node;
  const lm_tensor *ins[3] = {x, weight, bias};
  if ((st = lm_record(ctx, LM_OP_BATCH_NORM, batch_norm_backward, 3, ins, 1, &y, &node))) goto done;
  if (node) {
    node->ip[0] = training != 0;
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, weight))) goto done;
    keep_stats(node, mean, C); /* mean and rstd lead the block */
    mean = NULL;
  }
done:
  ctx->grad_enabled = grad_was;
  free(mean);
  free(w);
  free(b);
  lm_tensor_release(xc);
  if (st) { lm_tensor_release(y); return st; }
  return lm_finish_out(y, out);
}

/* ---- group norm ---- */

/* saved: 0 x (contiguous), 1 weight; ip[0]: groups; extra: mean, rstd */
static lm_status group_norm_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *wt = node->saved[1];
  const double *mean = saved_mean(node), *rstd = saved_rstd(node);
  const int32_t dt = x->dtype;
  const int64_t G = node->ip[0];
  int64_t N, C, S;
  nc_s(x, &N, &C, &S);
  const int64_t cg = C / G, P = N * C;
  const double M = (double)(cg * S);
  lm_tensor *g = NULL;
  double *w = NULL, *buf = doubles(6 * P);
  if (!buf) return lm_err(ctx, LM_E_OOM, "group_norm: out of memory");
  double *sums = buf, *k = buf + 2 * P, *a = k + P, *b = a + P, *c = b + P;
  for (int64_t p = 0; p < P; p++) k[p] = mean[(p / C) * G + (p % C) / cg];
  lm_status st = contiguous_grad(ctx, gout[0], dt, &g);
  if (!st) st = read_doubles(ctx, "group_norm", wt, C, 1.0, &w);
  const layout planes = {.ngroups = P, .group_stride = S, .nseg = 1, .seg_len = S, .seg_stride = S};
  pass p = {.kind = K_GRAD_SUMS, .dt = dt, .dev = lm_device_of(x), .l = planes, .x = lm_data(x), .g = g ? lm_data(g) : NULL, .k = k};
  if (!st) st = run_pass(ctx, "group_norm", &p, sums); /* per (n, c): sum(g), sum(g (x - mean)) */
  if (!st && node->needs[0]) {
    for (int64_t q = 0; q < N * G; q++) {
      const int64_t n = q / G, c0 = (q % G) * cg;
      double m1 = 0, m2 = 0;
      for (int64_t ch = c0; ch < c0 + cg; ch++) {
        m1 += w[ch] * sums[2 * (n * C + ch)];
        m2 += w[ch] * sums[2 * (n * C + ch) + 1];
      }
      const double r = rstd[q];
      m1 /= M;
      m2 *= r / M;
      for (int64_t ch = c0; ch < c0 + cg; ch++) {
        const int64_t pl = n * C + ch;
        a[pl] = r * w[ch];
        b[pl] = -r * r * m2;
        c[pl] = -r * m1 - b[pl] * mean[q];
      }
    }
    if (!(st = lm_new_on(ctx, "group_norm", lm_device_of(x), dt, x->ndim, x->shape, &gin[0]))) {
      pass px = {.kind = K_GRAD_X, .dt = dt, .dev = lm_device_of(x), .l = planes, .x = lm_data(x), .g = lm_data(g), .y = lm_data(gin[0]),
                 .a = a, .b = b, .c = c};
      st = run_pass(ctx, "group_norm", &px, NULL);
    }
  }
  const int64_t cshape[1] = {C};
  for (int i = 1; i <= 2 && !st; i++) {
    if (!node->needs[i]) continue;
    for (int64_t ch = 0; ch < C; ch++) {
      double s = 0;
      for (int64_t n = 0; n < N; n++) {
        const int64_t pl = n * C + ch;
        s += i == 1 ? sums[2 * pl + 1] * rstd[n * G + ch / cg] : sums[2 * pl];
      }
      a[ch] = s;
    }
    st = tensor_of(ctx, "group_norm", lm_device_of(x), dt, 1, cshape, a, &gin[i]);
  }
  lm_tensor_release(g);
  free(w);
  free(buf);
  return st;
}

lm_status lm_group_norm(lm_ctx *ctx, const lm_tensor *x, int64_t groups, const lm_tensor *weight, const lm_tensor *bias,
                        double eps, lm_tensor **out) {
  const char *op = "group_norm";
  char sb[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input")) || (st = check_float(ctx, op, x))) return st;
  if (x->ndim < 2)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected N x C x * (at least 2-D)", op, x->ndim, LM_SHP(x, sb));
  if (!(eps >= 0)) return lm_err(ctx, LM_E_ARG, "%s: eps is %g, expected a number >= 0", op, eps);
  int64_t N, C, S;
  nc_s(x, &N, &C, &S);
  if (groups < 1 || C % groups != 0)
    return lm_err(ctx, LM_E_ARG, "%s: %lld groups for %lld channels (input %s), expected a positive divisor of the channels",
                  op, (long long)groups, (long long)C, LM_SHP(x, sb));
  const int64_t cshape[1] = {C};
  if ((st = check_param(ctx, op, x, weight, "weight", x->dtype, 1, cshape)) ||
      (st = check_param(ctx, op, x, bias, "bias", x->dtype, 1, cshape)))
    return st;

  const int32_t dt = x->dtype;
  const int64_t G = groups, cg = C / G, P = N * C;
  lm_tensor *xc = NULL, *y = NULL;
  const bool grad_was = lm_grad_pause(ctx); /* the copies made here must not record */
  double *stats = doubles(2 * (N * G)), *w = NULL, *b = NULL;
  double *sa = doubles(2 * P);
  if (!stats || !sa) { st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op); goto done; }
  double *mean = stats, *rstd = stats + N * G, *sbias = sa + P;
  if ((st = lm_contiguous(ctx, x, &xc))) goto done;
  if ((st = read_doubles(ctx, op, weight, C, 1.0, &w)) || (st = read_doubles(ctx, op, bias, C, 0.0, &b))) goto done;
  const layout gl = {.ngroups = N * G, .group_stride = cg * S, .nseg = 1, .seg_len = cg * S, .seg_stride = cg * S};
  if ((st = group_stats(ctx, op, lm_device_of(x), dt, lm_data(xc), &gl, eps, mean, rstd, NULL))) goto done;
  for (int64_t pl = 0; pl < P; pl++) { /* y = w (x - mean) rstd + b, per (n, c) */
    const int64_t ch = pl % C, q = (pl / C) * G + ch / cg;
    sa[pl] = w[ch] * rstd[q];
    sbias[pl] = b[ch] - mean[q] * sa[pl];
  }
  if ((st = lm_new_on(ctx, op, lm_device_of(x), dt, x->ndim, x->shape, &y))) goto done;
  const layout planes = {.ngroups = P, .group_stride = S, .nseg = 1, .seg_len = S, .seg_stride = S};
  pass p = {.kind = K_AFFINE, .dt = dt, .dev = lm_device_of(x), .l = planes, .x = lm_data(xc), .y = lm_data(y), .a = sa, .b = sbias};
  if ((st = run_pass(ctx, op, &p, NULL))) goto done;

  ctx->grad_enabled = grad_was;
  lm_node *node;
  const lm_tensor *ins[3] = {x, weight, bias};
  if ((st = lm_record(ctx, LM_OP_GROUP_NORM, group_norm_backward, 3, ins, 1, &y, &node))) goto done;
  if (node) {
    node->ip[0] = G;
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, weight))) goto done;
    keep_stats(node, stats, N * G);
    stats = NULL;
  }
done:
  ctx->grad_enabled = grad_was;
  free(stats);
  free(sa);
  free(w);
  free(b);
  lm_tensor_release(xc);
  if (st) { lm_tensor_release(y); return st; }
  return lm_finish_out(y, out);
}

/* ---- layer norm ----
   Rows of up to ROW_MAX elements stay in cache between the passes over
   them, so each row is normalised (forward), or gets its sums and then its
   gradient (backward), in one go: the data is read from memory once. The
   weight and bias gradients sum over rows; each of at most ROW_BLOCKS
   fixed blocks of rows keeps its own column sums, added in block order.
   Longer rows go through the units above, like the other norms. */

#define ROW_MAX 16384
#define ROW_BLOCKS 16

typedef struct ln_rows {
  int32_t dt;
  int64_t M, D, nblk;  /* nblk: blocks of rows (backward) */
  double eps;
  const char *x, *g;
  char *y;                 /* forward: output; backward: dx or NULL */
  const double *w, *bias;  /* NULL: 1, 0 */
  double *mean, *rstd;     /* per row: written by the forward */
  double *cols;            /* backward: 2 D column sums per block, or NULL */
} ln_rows;

LM_INLINE void ln_forward_rows(const ln_rows *p, int64_t begin, int64_t end, bool f32) {
  const int64_t D = p->D, es = f32 ? 4 : 8;
  const double *w = p->w, *bias = p->bias;
  for (int64_t r = begin; r < end; r++) {
    const char *x = p->x + r * D * es;
    char *y = p->y + r * D * es;
    const double k = ld(x, 0, f32);
    double u = 0, v = 0;
    LM_SIMD_SUM(u, v) for (int64_t j = 0; j < D; j++) {
      double d = ld(x, j, f32) - k;
      u += d;
      v += d * d;
    }
    const double m = u / (double)D;
    double var = v / (double)D - m * m;
    if (var < 0) var = 0; /* rounding */
    const double mu = k + m, rs = 1.0 / sqrt(var + p->eps);
    p->mean[r] = mu;
    p->rstd[r] = rs;
    if (w && bias) {
      LM_SIMD for (int64_t j = 0; j < D; j++) st(y, j, (ld(x, j, f32) - mu) * rs * w[j] + bias[j], f32);
    } else if (w) {
      LM_SIMD for (int64_t j = 0; j < D; j++) st(y, j, (ld(x, j, f32) - mu) * rs * w[j], f32);
    } else if (bias) {
      LM_SIMD for (int64_t j = 0; j < D; j++) st(y, j, (ld(x, j, f32) - mu) * rs + bias[j], f32);
    } else {
      LM_SIMD for (int64_t j = 0; j < D; j++) st(y, j, (ld(x, j, f32) - mu) * rs, f32);
    }
  }
}
LM_CLONES static void ln_forward_run(void *arg, int64_t begin, int64_t end) {
  const ln_rows *p = arg;
  if (p->dt == LM_F32) ln_forward_rows(p, begin, end, true);
  else ln_forward_rows(p, begin, end, false);
}

/* dx = rstd (g w - mean(g w) - xhat mean(g w xhat)), as a g w + b x + c */
LM_INLINE void ln_backward_blocks(const ln_rows *p, int64_t begin, int64_t end, bool f32) {
  const int64_t D = p->D, M = p->M, es = f32 ? 4 : 8;
  const double *w = p->w;
  for (int64_t blk = begin; blk < end; blk++) {
    double *cw = p->cols ? p->cols + 2 * D * blk : NULL, *cb = cw ? cw + D : NULL;
    if (cw)
      for (int64_t j = 0; j < 2 * D; j++) cw[j] = 0;
    for (int64_t r = M * blk / p->nblk; r < M * (blk + 1) / p->nblk; r++) {
      const char *x = p->x + r * D * es, *g = p->g + r * D * es;
      const double mu = p->mean[r], rs = p->rstd[r];
      double u = 0, v = 0; /* sum(g w), sum(g w (x - mean)) */
      if (cw && w) { /* the column sums ride along */
        LM_SIMD_SUM(u, v) for (int64_t j = 0; j < D; j++) {
          const double gj = ld(g, j, f32), dj = ld(x, j, f32) - mu, gw = gj * w[j];
          u += gw;
          v += gw * dj;
          cw[j] += gj * dj * rs;
          cb[j] += gj;
        }
      } else if (cw) {
        LM_SIMD_SUM(u, v) for (int64_t j = 0; j < D; j++) {
          const double gj = ld(g, j, f32), dj = ld(x, j, f32) - mu;
          u += gj;
          v += gj * dj;
          cw[j] += gj * dj * rs;
          cb[j] += gj;
        }
      } else if (w) {
        LM_SIMD_SUM(u, v) for (int64_t j = 0; j < D; j++) {
          const double gw = ld(g, j, f32) * w[j];
          u += gw;
          v += gw * (ld(x, j, f32) - mu);
        }
      } else {
        LM_SIMD_SUM(u, v) for (int64_t j = 0; j < D; j++) {
          const double gj = ld(g, j, f32);
          u += gj;
          v += gj * (ld(x, j, f32) - mu);
        }
      }
      if (!p->y) continue;
      char *dx = p->y + r * D * es;
      const double b = -rs * rs * rs * v / (double)D, c = -rs * u / (double)D - b * mu;
      if (w) {
        LM_SIMD for (int64_t j = 0; j < D; j++) st(dx, j, rs * ld(g, j, f32) * w[j] + b * ld(x, j, f32) + c, f32);
      } else {
        LM_SIMD for (int64_t j = 0; j < D; j++) st(dx, j, rs * ld(g, j, f32) + b * ld(x, j, f32) + c, f32);
      }
    }
  }
}
LM_CLONES static void ln_backward_run(void *arg, int64_t begin, int64_t end) {
  const ln_rows *p = arg;
  if (p->dt == LM_F32) ln_backward_blocks(p, begin, end, true);
  else ln_backward_blocks(p, begin, end, false);
}


/* Column sums over the M rows of [M, D] data: gw[j] = sum_r g (x - mean_r)
   rstd_r, gb[j] = sum_r g. Parallel over blocks of columns, each summing
   its rows in order. */
typedef struct ln_cols {
  int32_t dt;
  int64_t M, D;
  const char *x, *g;
  const double *mean, *rstd;
  double *gw, *gb;
} ln_cols;

#define COLS 256
LM_INLINE void ln_cols_body(const ln_cols *p, int64_t begin, int64_t end, bool f32) {
  for (int64_t blk = begin; blk < end; blk++) {
    const int64_t j0 = blk * COLS, m = p->D - j0 < COLS ? p->D - j0 : COLS;
    double *gw = p->gw + j0, *gb = p->gb + j0;
    for (int64_t t = 0; t < m; t++) gw[t] = gb[t] = 0;
    for (int64_t r = 0; r < p->M; r++) {
      const int64_t at = (r * p->D + j0) * (f32 ? 4 : 8);
      const char *x = p->x + at, *g = p->g + at;
      const double mu = p->mean[r], rs = p->rstd[r];
      LM_SIMD for (int64_t t = 0; t < m; t++) {
        double gt = ld(g, t, f32);
        gw[t] += gt * (ld(x, t, f32) - mu) * rs;
        gb[t] += gt;
      }
    }
  }
}
LM_CLONES static void ln_cols_run(void *arg, int64_t begin, int64_t end) {
  const ln_cols *p = arg;
  if (p->dt == LM_F32) ln_cols_body(p, begin, end, true);
  else ln_cols_body(p, begin, end, false);
}

/* t (contiguous, M * D elements) seen as M x D, summed over the rows into a
   tensor of shape like's (+1). */
static lm_status sum_rows(lm_ctx *ctx, const lm_tensor *t, int64_t M, int64_t D, const lm_tensor *like, lm_tensor **out) {
  lm_tensor *v = lm_view_header(t), *s = NULL;
  if (!v) return lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
  v->ndim = 2;
  v->shape[0] = M, v->shape[1] = D, v->stride[0] = D, v->stride[1] = 1;
  const int32_t dim0[1] = {0};
  lm_status st = lm_reduce(ctx, LM_OP_SUM, v, 1, dim0, 0, 0, &s, NULL);
  lm_tensor_release(v);
  if (st) return st;
  st = lm_reshape(ctx, s, like->ndim, like->shape, out);
  lm_tensor_release(s);
  return st;
}

/* The weight and bias gradients of layer norm on a device: sums over the
   rows of g xhat and of g, with xhat = (x - mean) rstd made by a pass. */
static lm_status ln_param_grads_dev(lm_ctx *ctx, lm_node *node, const lm_tensor *x, const lm_tensor *g,
                                    const lm_tensor *wt, const lm_tensor *bt, const double *mean, const double *rstd,
                                    int64_t M, int64_t D, lm_tensor **gin) {
  lm_status st = LM_OK;
  if (node->needs[2] && (st = sum_rows(ctx, g, M, D, bt, &gin[2]))) return st;
  if (!node->needs[1]) return LM_OK;
  double *ab = doubles(2 * M);
  if (!ab) return lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
  for (int64_t r = 0; r < M; r++) ab[r] = rstd[r], ab[M + r] = -mean[r] * rstd[r];
  lm_tensor *xh = NULL, *gx = NULL;
  const layout rows = {.ngroups = M, .group_stride = D, .nseg = 1, .seg_len = D, .seg_stride = D};
  if (!(st = lm_new_on(ctx, "layer_norm", lm_device_of(x), x->dtype, x->ndim, x->shape, &xh))) {
    pass p = {.kind = K_AFFINE, .dt = x->dtype, .dev = lm_device_of(x), .l = rows, .x = lm_data(x), .y = lm_data(xh),
              .a = ab, .b = ab + M};
    if (!(st = run_pass(ctx, "layer_norm", &p, NULL)) && !(st = lm_binary(ctx, LM_OP_MUL, g, xh, NULL, &gx)))
      st = sum_rows(ctx, gx, M, D, wt, &gin[1]);
  }
  lm_tensor_release(xh);
  lm_tensor_release(gx);
  free(ab);
  return st;
}

/* saved: 0 x (contiguous), 1 weight (contiguous); ip[0]: D; extra: mean, rstd */
static lm_status layer_norm_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *wt = node->saved[1], *bt = node->saved[2];
  const double *mean = saved_mean(node), *rstd = saved_rstd(node);
  const int32_t dt = x->dtype;
  const int64_t D = node->ip[0], M = node->ip[1];
  lm_tensor *g = NULL;
  double *w = NULL, *buf = doubles(5 * M), *cols = NULL;
  if (!buf) return lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
  double *sums = buf, *a = buf + 2 * M, *b = a + M, *c = b + M;
  lm_status st = contiguous_grad(ctx, gout[0], dt, &g);
  if (!st && wt) st = read_doubles(ctx, "layer_norm", wt, D, 1.0, &w);
  const bool want_cols = node->needs[1] || node->needs[2];
  if (!st && D <= ROW_MAX && lm_device_of(x) == LM_CPU) { /* rows in cache: one pass over them */
    const int64_t nblk = want_cols ? (M < ROW_BLOCKS ? M : ROW_BLOCKS) : M;
    double *part = NULL;
    if (want_cols && !(part = doubles(2 * D * nblk))) st = lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
    if (!st && node->needs[0]) st = lm_new_on(ctx, "layer_norm", lm_device_of(x), dt, x->ndim, x->shape, &gin[0]);
    if (!st) {
      ln_rows p = {.dt = dt, .M = M, .D = D, .nblk = nblk, .x = lm_data(x), .g = lm_data(g),
                   .y = gin[0] ? lm_data(gin[0]) : NULL, .w = w, .mean = (double *)mean, .rstd = (double *)rstd,
                   .cols = part};
      const int64_t per = nblk ? M / nblk * D : 1, grain = per > 0 ? GRAIN / per : GRAIN;
      lm_parallel_for(ctx, nblk, grain < 1 ? 1 : grain, ln_backward_run, &p);
    }
    if (!st && want_cols && !(cols = doubles(2 * D))) st = lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
    if (!st && want_cols) {
      for (int64_t j = 0; j < 2 * D; j++) cols[j] = 0;
      for (int64_t blk = 0; blk < nblk; blk++) /* in block order: the same sums for any thread count */
        for (int64_t j = 0; j < 2 * D; j++) cols[j] += part[2 * D * blk + j];
    }
    free(part);
    goto params;
  }
  const layout rows = {.ngroups = M, .group_stride = D, .nseg = 1, .seg_len = D, .seg_stride = D};
  if (!st && node->needs[0]) {
    pass p = {.kind = K_LN_GRAD_SUMS, .dt = dt, .dev = lm_device_of(x), .l = rows, .x = lm_data(x), .g = lm_data(g), .k = mean, .w = w};
    st = run_pass(ctx, "layer_norm", &p, sums); /* sum(g w), sum(g w (x - mean)) per row */
    for (int64_t r = 0; r < M && !st; r++) {
      const double rs = rstd[r], m1 = sums[2 * r] / (double)D, m2 = rs * sums[2 * r + 1] / (double)D;
      a[r] = rs;
      b[r] = -rs * rs * m2;
      c[r] = -rs * m1 - b[r] * mean[r];
    }
    if (!st && !(st = lm_new_on(ctx, "layer_norm", lm_device_of(x), dt, x->ndim, x->shape, &gin[0]))) {
      pass px = {.kind = K_LN_GRAD_X, .dt = dt, .dev = lm_device_of(x), .l = rows, .x = lm_data(x), .g = lm_data(g), .y = lm_data(gin[0]),
                 .a = a, .b = b, .c = c, .w = w};
      st = run_pass(ctx, "layer_norm", &px, NULL);
    }
  }
  if (!st && want_cols && lm_device_of(x) != LM_CPU) {
    st = ln_param_grads_dev(ctx, node, x, g, wt, bt, mean, rstd, M, D, gin);
    goto done;
  }
  if (!st && want_cols) {
    if (!(cols = doubles(2 * D))) st = lm_err(ctx, LM_E_OOM, "layer_norm: out of memory");
    if (!st) {
      ln_cols lc = {.dt = dt, .M = M, .D = D, .x = lm_data(x), .g = lm_data(g), .mean = mean, .rstd = rstd,
                    .gw = cols, .gb = cols + D};
      const int64_t nblk = (D + COLS - 1) / COLS, grain = M > 0 ? GRAIN / (M * COLS) : 1;
      lm_parallel_for(ctx, nblk, grain < 1 ? 1 : grain, ln_cols_run, &lc);
    }
  }
params:
  if (!st && node->needs[1]) st = tensor_of(ctx, "layer_norm", lm_device_of(x), dt, wt->ndim, wt->shape, cols, &gin[1]);
  if (!st && node->needs[2]) st = tensor_of(ctx, "layer_norm", lm_device_of(x), dt, bt->ndim, bt->shape, cols + D, &gin[2]);
done:
  lm_tensor_release(g);
  free(w);
  free(buf);
  free(cols);
  return st;
}

lm_status lm_layer_norm(lm_ctx *ctx, const lm_tensor *x, int32_t nshape, const int64_t *shape, const lm_tensor *weight,
                        const lm_tensor *bias, double eps, lm_tensor **out) {
  const char *op = "layer_norm";
  char xs[LM_SHAPE_BUF], ns[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input")) || (st = check_float(ctx, op, x))) return st;
  if (nshape < 1 || nshape > LM_MAX_DIMS || !shape)
    return lm_err(ctx, LM_E_ARG, "%s: normalized_shape has %d dims, expected 1 to %d", op, nshape, LM_MAX_DIMS);
  bool fits = nshape <= x->ndim;
  for (int32_t d = 0; fits && d < nshape; d++) fits = x->shape[x->ndim - nshape + d] == shape[d];
  if (!fits)
    return lm_err(ctx, LM_E_SHAPE, "%s: input %s does not end with normalized_shape %s", op, LM_SHP(x, xs),
                  lm_shape_str(nshape, shape, ns, sizeof ns));
  if (!(eps >= 0)) return lm_err(ctx, LM_E_ARG, "%s: eps is %g, expected a number >= 0", op, eps);
  if ((st = check_param(ctx, op, x, weight, "weight", x->dtype, nshape, shape)) ||
      (st = check_param(ctx, op, x, bias, "bias", x->dtype, nshape, shape)))
    return st;

  const int32_t dt = x->dtype;
  int64_t D = 1, M = 1;
  for (int32_t d = 0; d < x->ndim; d++) *(d < x->ndim - nshape ? &M : &D) *= x->shape[d];
  lm_tensor *xc = NULL, *y = NULL;
  double *stats = doubles(4 * M), *w = NULL, *b = NULL;
  if (!stats) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  double *mean = stats, *rstd = stats + M, *scale = rstd + M, *offset = scale + M;
  const bool grad_was = lm_grad_pause(ctx); /* the copies made here must not record */
  if ((st = lm_contiguous(ctx, x, &xc))) goto done;
  if ((weight && (st = read_doubles(ctx, op, weight, D, 1.0, &w))) ||
      (bias && (st = read_doubles(ctx, op, bias, D, 0.0, &b))))
    goto done;
  if ((st = lm_new_on(ctx, op, lm_device_of(x), dt, x->ndim, x->shape, &y))) goto done;
  if (D <= ROW_MAX && lm_device_of(x) == LM_CPU) { /* rows in cache: one pass over them */
    ln_rows p = {.dt = dt, .M = M, .D = D, .eps = eps, .x = lm_data(xc), .y = lm_data(y), .w = w, .bias = b,
                 .mean = mean, .rstd = rstd};
    const int64_t grain = D > 0 ? GRAIN / D : GRAIN;
    lm_parallel_for(ctx, M, grain < 1 ? 1 : grain, ln_forward_run, &p);
  } else {
    const layout rows = {.ngroups = M, .group_stride = D, .nseg = 1, .seg_len = D, .seg_stride = D};
    if ((st = group_stats(ctx, op, lm_device_of(x), dt, lm_data(xc), &rows, eps, mean, rstd, NULL))) goto done;
    for (int64_t r = 0; r < M; r++) { /* xhat = scale x + offset */
      scale[r] = rstd[r];
      offset[r] = -mean[r] * rstd[r];
    }
    pass p = {.kind = K_LN_AFFINE, .dt = dt, .dev = lm_device_of(x), .l = rows, .x = lm_data(xc), .y = lm_data(y), .a = scale, .b = offset,
              .w = w, .bias = b};
    if ((st = run_pass(ctx, op, &p, NULL))) goto done;
  }

  ctx->grad_enabled = grad_was;
  lm_node *node;
  const lm_tensor *ins[3] = {x, weight, bias};
  if ((st = lm_record(ctx, LM_OP_LAYER_NORM, layer_norm_backward, 3, ins, 1, &y, &node))) goto done;
  if (node) {
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, weight)) || (st = lm_save(ctx, node, 2, bias)))
      goto done;
    keep_stats(node, stats, M); /* the block's tail (scale, offset) goes along, unused */
    node->ip[0] = D;
    stats = NULL;
  }
done:
  ctx->grad_enabled = grad_was;
  free(stats);
  free(w);
  free(b);
  lm_tensor_release(xc);
  if (st) { lm_tensor_release(y); return st; }
  return lm_finish_out(y, out);
}
