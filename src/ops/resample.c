/* resample.c - interpolation (nearest, and linear in 1-D, 2-D and 3-D),
 * grid_sample and affine_grid, with their gradients.
 *
 * Upsampling is separable: each output position along a dimension reads
 * one or two input positions with fixed weights, worked out once per
 * dimension by PyTorch's rules (below). As in pool.c, 1-D and 2-D inputs
 * are seen in 3-D with unit dims in front, forward passes run in parallel
 * over rows of outputs and backward passes, which scatter, over planes.
 *
 * grid_sample reads the input at the positions a grid gives in [-1, 1]
 * (x along W, y along H, z along D); each of the 2^nd corners around a
 * point gets the product of per-axis weights, and corners outside the
 * input count as zeros. The gradient for the grid differentiates those
 * weights; the gradient for the input scatters them.
 *
 * Kernels are written once over a `bool f64` that always-inlined helpers
 * specialise (float values are computed in double).
 *
 * On a device, interpolation goes to the backend's interp entry with the
 * same tables (dev_interp); affine_grid is two GEMMs there (dev_affine_gemm);
 * grid_sample goes to the backend's grid_sample entry (dev_grid). */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WORK_GRAIN 32768 /* element visits below which another thread does not pay */
/* Sizes stay below 2^31, so that the tables sized by them cannot overflow. */
#define SIZE_MAX_ENTRY INT64_C(2147483647)

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
static int64_t grain_for(int64_t work_per_item) {
  int64_t g = WORK_GRAIN / (work_per_item > 0 ? work_per_item : 1);
  return g < 1 ? 1 : g;
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

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what) {
  if (!lm_dtype_is_float(t->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: %s dtype %s, expected f32 or f64", op, what, lm_dtype_name(t->dtype));
  return LM_OK;
}

/* ---- upsample ---- */

/* Where each output position reads along one dimension: i0 with weight w0
   and i1 with weight w1 (nearest: i1 = i0, w1 = 0). */
typedef struct interp_dim {
  int64_t in, out;
  int64_t *i0, *i1;
  double *w0, *w1;
} interp_dim;

typedef struct interp_plan {
  int32_t nd;      /* spatial dims: the last nd of dim[] are real */
  bool nearest;
  int64_t planes;  /* N * C */
  interp_dim dim[3];
  int32_t ndim;    /* the input's shape, for gradients */
  int64_t shape[LM_MAX_DIMS];
  void *tables;
} interp_plan;

static void interp_plan_free(void *p_) {
  interp_plan *p = p_;
  if (p) free(p->tables);
  free(p);
}

/* PyTorch's 'nearest' rule, kept to its arithmetic (single precision
   floats): floor(o * in / out), or floor(o / scale) when the caller gave a
   scale factor, clamped to in - 1; sizes equal or doubled map exactly. */
static int64_t nearest_source(int64_t o, int64_t in, int64_t out, double scale) {
  if (out == in) return o;
  if (out == 2 * in) return o >> 1;
  float s = scale > 0 ? (float)(1.0 / scale) : (float)in / (float)out;
  int64_t i = (int64_t)floorf((float)o * s);
  return i < in - 1 ? i : in - 1;
}

/* PyTorch's linear rule. align_corners maps the corner samples onto each
   other: src = o * (in - 1) / (out - 1). Otherwise sample centres line up:
   src = (o + 0.5) * r - 0.5, at least 0, with r = 1 / scale when a scale
   factor was given, else in / out. */
static void linear_source(interp_dim *w, int64_t o, double scale, bool align) {
  double r, src;
  if (align) {
    r = w->out > 1 ? (double)(w->in - 1) / (double)(w->out - 1) : 0;
    src = r * (double)o;
  } else {
    r = scale > 0 ? 1.0 / scale : (double)w->in / (double)w->out;
    src = r * ((double)o + 0.5) - 0.5;
    if (src < 0) src = 0;
  }
  int64_t i0 = (int64_t)src;
  if (i0 > w->in - 1) i0 = w->in - 1;
  w->i0[o] = i0;
  w->i1[o] = i0 < w->in - 1 ? i0 + 1 : i0;
  w->w1[o] = src - (double)i0;
  w->w0[o] = 1 - w->w1[o];
}

static lm_status interp_plan_new(lm_ctx *ctx, const char *op, const lm_tensor *x, const int64_t *size, const double *scale,
                                 bool nearest, bool align, interp_plan **out) {
  int32_t nd = x->ndim - 2;
  interp_plan *p = calloc(1, sizeof *p);
  int64_t total = 0;
  for (int32_t d = 0; d < nd; d++) total += size[d];
  if (p) p->tables = malloc((size_t)(total + 3) * 4 * sizeof(int64_t));
  if (!p || !p->tables) {
    interp_plan_free(p);
    return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  }
  p->nd = nd, p->nearest = nearest;
  p->planes = x->shape[0] * x->shape[1];
  p->ndim = x->ndim;
  memcpy(p->shape, x->shape, sizeof p->shape);
  char *t = p->tables;
  for (int32_t d = 0; d < 3; d++) {
    interp_dim *w = &p->dim[d];
    int32_t src = d - (3 - nd); /* spatial dim, or < 0 for a unit dim */
    w->in = src < 0 ? 1 : x->shape[2 + src];
    w->out = src < 0 ? 1 : size[src];
    size_t n = (size_t)w->out;
    w->i0 = (int64_t *)t, w->i1 = w->i0 + n, w->w0 = (double *)(w->i1 + n), w->w1 = w->w0 + n;
    t += 4 * n * sizeof(int64_t);
    double s = src < 0 || !scale ? 0 : scale[src];
    for (int64_t o = 0; o < w->out; o++) {
      if (src < 0) {
        w->i0[o] = w->i1[o] = 0, w->w0[o] = 1, w->w1[o] = 0;
      } else if (nearest) {
        w->i0[o] = w->i1[o] = nearest_source(o, w->in, w->out, s);
        w->w0[o] = 1, w->w1[o] = 0;
      } else {
        linear_source(w, o, s, align);
      }
    }
  }
  *out = p;
  return LM_OK;
}

typedef struct interp_job {
  const interp_plan *p;
  const char *x; /* forward: input; backward: output gradient */
  char *y;       /* forward: output; backward: input gradient (zeroed plane by plane) */
  bool f64;
} interp_job;

/* Linear along W on one input row. */
LM_INLINE double lerp_w(const char *x, int64_t row, const interp_dim *W, int64_t ow, bool f64) {
  return W->w0[ow] * load(x, row + W->i0[ow], f64) + W->w1[ow] * load(x, row + W->i1[ow], f64);
}

/* Rows are (plane, od, oh) triples of out[2] outputs each. Linear weights
   nest as PyTorch's do (W inside H inside D); unit dims take no part. */
LM_INLINE void interp_rows(const interp_job *j, int64_t r0, int64_t r1, bool f64) {
  const interp_plan *p = j->p;
  const interp_dim *D = &p->dim[0], *H = &p->dim[1], *W = &p->dim[2];
  int64_t HW = H->in * W->in, ip = D->in * HW, op = D->out * H->out * W->out;
  for (int64_t r = r0; r < r1; r++) {
    int64_t oh = r % H->out, od = (r / H->out) % D->out, plane = r / (H->out * D->out);
    const char *x = j->x + plane * ip * (f64 ? 8 : 4);
    int64_t o = plane * op + (od * H->out + oh) * W->out;
    if (p->nearest) {
      int64_t row = D->i0[od] * HW + H->i0[oh] * W->in;
      for (int64_t ow = 0; ow < W->out; ow++) store(j->y, o + ow, load(x, row + W->i0[ow], f64), f64);
      continue;
    }
    int64_t r00 = D->i0[od] * HW + H->i0[oh] * W->in, r01 = D->i0[od] * HW + H->i1[oh] * W->in;
    int64_t r10 = D->i1[od] * HW + H->i0[oh] * W->in, r11 = D->i1[od] * HW + H->i1[oh] * W->in;
    double h0 = H->w0[oh], h1 = H->w1[oh], d0 = D->w0[od], d1 = D->w1[od];
    for (int64_t ow = 0; ow < W->out; ow++) {
      double v;
      if (p->nd == 1) {
        v = lerp_w(x, r00, W, ow, f64);
      } else if (p->nd == 2) {
        v = h0 * lerp_w(x, r00, W, ow, f64) + h1 * lerp_w(x, r01, W, ow, f64);
      } else {
        v = d0 * (h0 * lerp_w(x, r00, W, ow, f64) + h1 * lerp_w(x, r01, W, ow, f64)) +
            d1 * (h0 * lerp_w(x, r10, W, ow, f64) + h1 * lerp_w(x, r11, W, ow, f64));
      }
      store(j->y, o + ow, v, f64);
    }
  }
}
static void interp_rows_f32(void *a, int64_t r0, int64_t r1) { interp_rows(a, r0, r1, false); }
static void interp_rows_f64(void *a, int64_t r0, int64_t r1) { interp_rows(a, r0, r1, true); }

/* Linear along W, backward: g spread over the two positions of output ow. */
LM_INLINE void spread_w(char *gx, int64_t row, const interp_dim *W, int64_t ow, double g, bool f64) {
  add_to(gx, row + W->i0[ow], W->w0[ow] * g, f64);
  add_to(gx, row + W->i1[ow], W->w1[ow] * g, f64);
}

/* Backward: each output gradient goes to the positions it read, weighted
   (the forward's cases, reversed). */
LM_INLINE void interp_back_planes(const interp_job *j, int64_t p0, int64_t p1, bool f64) {
  const interp_plan *p = j->p;
  const interp_dim *D = &p->dim[0], *H = &p->dim[1], *W = &p->dim[2];
  int64_t HW = H->in * W->in, ip = D->in * HW, op = D->out * H->out * W->out;
  for (int64_t plane = p0; plane < p1; plane++) {
    char *gx = j->y + plane * ip * (f64 ? 8 : 4);
    memset(gx, 0, (size_t)ip * (f64 ? 8 : 4)); /* here: in parallel, and in cache */
    int64_t o = plane * op;
    for (int64_t od = 0; od < D->out; od++)
      for (int64_t oh = 0; oh < H->out; oh++, o += W->out) {
        int64_t r00 = D->i0[od] * HW + H->i0[oh] * W->in, r01 = D->i0[od] * HW + H->i1[oh] * W->in;
        int64_t r10 = D->i1[od] * HW + H->i0[oh] * W->in, r11 = D->i1[od] * HW + H->i1[oh] * W->in;
        double h0 = H->w0[oh], h1 = H->w1[oh], d0 = D->w0[od], d1 = D->w1[od];
        for (int64_t ow = 0; ow < W->out; ow++) {
          double g = load(j->x, o + ow, f64);
          if (p->nearest) {
            add_to(gx, r00 + W->i0[ow], g, f64);
          } else if (p->nd == 1) {
            spread_w(gx, r00, W, ow, g, f64);
          } else if (p->nd == 2) {
            spread_w(gx, r00, W, ow, h0 * g, f64);
            spread_w(gx, r01, W, ow, h1 * g, f64);
          } else {
            spread_w(gx, r00, W, ow, d0 * h0 * g, f64);
            spread_w(gx, r01, W, ow, d0 * h1 * g, f64);
            spread_w(gx, r10, W, ow, d1 * h0 * g, f64);
            spread_w(gx, r11, W, ow, d1 * h1 * g, f64);
          }
        }
      }
  }
}
static void interp_back_f32(void *a, int64_t p0, int64_t p1) { interp_back_planes(a, p0, p1, false); }
static void interp_back_f64(void *a, int64_t p0, int64_t p1) { interp_back_planes(a, p0, p1, true); }

/* Plan p's interpolation on the device of dst (forward: src = input, dst =
   output; backward: src = the output's gradient, dst = the input's): the
   tables go over as backend.h's interp entry lays them out, with the range
   of outputs that read each input position. */
static lm_status dev_interp(lm_ctx *ctx, const char *op, const interp_plan *p, bool backward, const lm_tensor *src,
                            lm_tensor *dst) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(dst), interp, &be);
  if (st) return st;
  int64_t n = 0, sizes[6];
  for (int32_t d = 0; d < 3; d++) {
    sizes[d] = p->dim[d].in, sizes[3 + d] = p->dim[d].out;
    n += 4 * p->dim[d].out + 2 * p->dim[d].in;
  }
  int64_t *host = malloc((size_t)n * sizeof *host), *t = host;
  if (!host) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  for (int32_t d = 0; d < 3; d++) {
    const interp_dim *w = &p->dim[d];
    int64_t out = w->out, in = w->in;
    memcpy(t, w->i0, (size_t)out * 8), memcpy(t + out, w->i1, (size_t)out * 8);
    memcpy(t + 2 * out, w->w0, (size_t)out * 8), memcpy(t + 3 * out, w->w1, (size_t)out * 8);
    int64_t *lo = t + 4 * out, *hi = lo + in, a = 0, b = 0;
    for (int64_t i = 0; i < in; i++) { /* i0 and i1 never decrease along o */
      while (a < out && w->i1[a] < i) a++;
      while (b < out && w->i0[b] <= i) b++;
      lo[i] = a, hi[i] = b > a ? b : a;
    }
    t += 4 * out + 2 * in;
  }
  lm_tensor *buf = NULL;
  const int64_t shape[1] = {n};
  if (!(st = lm_new_on(ctx, op, lm_device_of(dst), LM_F64, 1, shape, &buf))) {
    if ((st = be->copy_h2d(lm_data(buf), host, (size_t)n * 8)) ||
        (st = be->interp(dst->dtype, backward, p->nd, p->nearest, p->planes, sizes, lm_data(buf), lm_data(src),
                         lm_data(dst))))
      st = lm_backend_fail(ctx, op, be, st);
  }
  lm_tensor_release(buf);
  free(host);
  return st;
}

static lm_status upsample_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const interp_plan *p = node->extra;
  lm_tensor *g = NULL, *gx = NULL;
  lm_status st;
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  if ((st = lm_new_on(ctx, "upsample backward", lm_device_of(g), g->dtype, p->ndim, p->shape, &gx))) goto done;
  if (lm_device_of(g) != LM_CPU) {
    if ((st = dev_interp(ctx, "upsample backward", p, true, g, gx))) goto done;
  } else {
    interp_job j = {p, lm_data(g), lm_data(gx), g->dtype == LM_F64};
    int64_t per_plane = lm_numel(g) / (p->planes > 0 ? p->planes : 1) * (1 << p->nd);
    lm_parallel_for(ctx, p->planes, grain_for(per_plane), j.f64 ? interp_back_f64 : interp_back_f32, &j);
  }
  gin[0] = gx, gx = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  return st;
}

lm_status lm_upsample(lm_ctx *ctx, const lm_tensor *x, const int64_t *size, const double *scale, int32_t mode,
                      int32_t align_corners, lm_tensor **out) {
  static const char *const names[] = {"", "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d"};
  static const char *const layouts[] = {"", "N x C x W", "N x C x H x W", "N x C x D x H x W"};
  char buf[LM_SHAPE_BUF];
  const char *op = "upsample";
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input"))) return st;
  if (mode != LM_INTERP_NEAREST && mode != LM_INTERP_LINEAR)
    return lm_err(ctx, LM_E_ARG, "upsample: mode %d, expected LM_INTERP_NEAREST or LM_INTERP_LINEAR", mode);
  bool nearest = mode == LM_INTERP_NEAREST;
  int32_t nd = x->ndim - 2;
  if (nd >= 1 && nd <= 3) op = nearest ? (nd == 1 ? "upsample_nearest1d" : nd == 2 ? "upsample_nearest2d" : "upsample_nearest3d") : names[nd];
  if (nd < 1 || nd > 3)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected 3-D (N x C x W), 4-D (N x C x H x W) or 5-D (N x C x D x H x W)",
                  op, x->ndim, LM_SHP(x, buf));
  if ((st = check_float(ctx, op, x, "input"))) return st;
  if (!size) return lm_err(ctx, LM_E_ARG, "%s: output size is NULL", op);
  for (int32_t d = 0; d < nd; d++) {
    if (size[d] < 1 || size[d] > SIZE_MAX_ENTRY)
      return lm_err(ctx, LM_E_ARG, "%s: output size[%d] is %lld, expected between 1 and %lld", op, d,
                    (long long)size[d], (long long)SIZE_MAX_ENTRY);
    if (x->shape[2 + d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s (%s) has an empty spatial dimension %d, expected sizes >= 1", op,
                    LM_SHP(x, buf), layouts[nd], 2 + d);
    if (scale && !(scale[d] >= 0 && isfinite(scale[d])))
      return lm_err(ctx, LM_E_ARG, "%s: scale[%d] is %g, expected a positive scale (or 0 for none)", op, d, scale[d]);
  }

  interp_plan *p = NULL;
  lm_tensor *xc = NULL, *y = NULL;
  int64_t shape[LM_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  for (int32_t d = 0; d < nd; d++) shape[2 + d] = size[d];
  if ((st = interp_plan_new(ctx, op, x, size, scale, nearest, align_corners != 0, &p))) goto fail;
  if ((st = contiguous_untracked(ctx, x, &xc))) goto fail;
  if ((st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, x->ndim, shape, &y))) goto fail;
  if (lm_device_of(x) != LM_CPU) {
    if ((st = dev_interp(ctx, op, p, false, xc, y))) goto fail;
  } else {
    interp_job j = {p, lm_data(xc), lm_data(y), x->dtype == LM_F64};
    int64_t rows = p->planes * p->dim[0].out * p->dim[1].out;
    lm_parallel_for(ctx, rows, grain_for(p->dim[2].out * (nearest ? 1 : 1 << nd)), j.f64 ? interp_rows_f64 : interp_rows_f32, &j);
  }

  lm_node *node;
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, LM_OP_UPSAMPLE, upsample_backward, 1, &x, 1, outs, &node))) goto fail;
  if (node) node->extra = p, node->extra_free = interp_plan_free, p = NULL;
  interp_plan_free(p);
  lm_tensor_release(xc);
  *out = y;
  return LM_OK;
fail:
  interp_plan_free(p);
  lm_tensor_release(xc);
  lm_tensor_release(y);
  return st;
}

/* ---- grid_sample ---- */

typedef struct grid_job {
  int32_t nd;
  int64_t N, C, P;  /* batch, channels, output points per batch */
  int64_t in[3];    /* D, H, W of the input (D = 1 in 2-D) */
  const char *x;    /* N x C x in, contiguous */
  const char *grid; /* N x P x nd, contiguous */
  const char *g;    /* backward: output gradient, N x C x P */
  char *y;          /* forward: output N x C x P; backward: input gradient (zeroed plane by plane) */
  char *ggrid;      /* backward: grid gradient, or NULL */
  bool f64, nearest, border, align;
} grid_job;

/* One axis of a sample point: the lower corner i0, the weights of i0 and
   i0 + 1, and d(coordinate)/d(grid value), 0 where border padding clips. */
typedef struct axis_pos {
  int64_t i0;
  double w0, w1, mult;
} axis_pos;

LM_INLINE axis_pos axis_at(const grid_job *j, double gv, int64_t size) {
  axis_pos a;
  double c;
  if (j->align) {
    c = (gv + 1) / 2 * (double)(size - 1);
    a.mult = (double)(size - 1) / 2;
  } else {
    c = ((gv + 1) * (double)size - 1) / 2;
    a.mult = (double)size / 2;
  }
  if (j->border) { /* the edges themselves count as clipped, as in PyTorch */
    if (!(c > 0)) c = 0, a.mult = 0;
    else if (c >= (double)(size - 1)) c = (double)(size - 1), a.mult = 0;
  }
  if (j->nearest) {
    double r = nearbyint(c); /* half to even */
    a.i0 = r >= -1 && r <= (double)size ? (int64_t)r : -1;
    a.w0 = 1, a.w1 = 0;
  } else {
    double f = floor(c);
    a.i0 = f >= -1 && f <= (double)size ? (int64_t)f : -2; /* far outside: both corners out */
    a.w1 = c - f;
    a.w0 = (f + 1) - c;
  }
  return a;
}

/* The corners of point p of batch n that lie inside the input: offsets
   within a plane, weights, and each weight's derivative along the three
   axes (D, H, W; D unused in 2-D). Returns how many. */
typedef struct corners {
  int32_t n;
  int64_t off[8];
  double w[8], dw[8][3];
  double mult[3];
} corners;

LM_INLINE void corners_at(const grid_job *j, int64_t n, int64_t p, corners *k) {
  axis_pos ax[3] = {{0, 1, 0, 0}, {0, 1, 0, 0}, {0, 1, 0, 0}};
  const int64_t gbase = (n * j->P + p) * j->nd;
  for (int32_t c = 0; c < j->nd; c++) { /* grid component c runs along spatial axis 2 - c */
    int32_t axis = 2 - c;
    ax[axis] = axis_at(j, load(j->grid, gbase + c, j->f64), j->in[axis]);
  }
  int32_t nd_d = j->nd == 3 && !j->nearest ? 2 : 1, nh = j->nearest ? 1 : 2, nw = nh;
  k->n = 0;
  for (int32_t a = 0; a < 3; a++) k->mult[a] = ax[a].mult;
  for (int32_t a = 0; a < nd_d; a++) {
    int64_t id = ax[0].i0 + a;
    if (j->nd == 3 && (id < 0 || id >= j->in[0])) continue;
    double wd = a ? ax[0].w1 : ax[0].w0, sd = a ? 1 : -1;
    for (int32_t b = 0; b < nh; b++) {
      int64_t ih = ax[1].i0 + b;
      if (ih < 0 || ih >= j->in[1]) continue;
      double wh = b ? ax[1].w1 : ax[1].w0, sh = b ? 1 : -1;
      for (int32_t c = 0; c < nw; c++) {
        int64_t iw = ax[2].i0 + c;
        if (iw < 0 || iw >= j->in[2]) continue;
        double ww = c ? ax[2].w1 : ax[2].w0, sw = c ? 1 : -1;
        int32_t m = k->n++;
        k->off[m] = ((j->nd == 3 ? id : 0) * j->in[1] + ih) * j->in[2] + iw;
        k->w[m] = j->nd == 3 ? ww * wh * wd : ww * wh; /* x weight first, as PyTorch multiplies */
        k->dw[m][2] = sw * wh * (j->nd == 3 ? wd : 1);
        k->dw[m][1] = sh * ww * (j->nd == 3 ? wd : 1);
        k->dw[m][0] = sd * ww * wh;
      }
    }
  }
}

/* Forward: items are (n, p) pairs; every channel reads the same corners. */
LM_INLINE void grid_fwd(const grid_job *j, int64_t i0, int64_t i1, bool f64) {
  int64_t plane = j->in[0] * j->in[1] * j->in[2];
  for (int64_t i = i0; i < i1; i++) {
    int64_t n = i / j->P, p = i % j->P;
    corners k;
    corners_at(j, n, p, &k);
    for (int64_t ch = 0; ch < j->C; ch++) {
      const char *x = j->x + (n * j->C + ch) * plane * (f64 ? 8 : 4);
      double v = 0;
      for (int32_t m = 0; m < k.n; m++) v += k.w[m] * load(x, k.off[m], f64);
      store(j->y, (n * j->C + ch) * j->P + p, v, f64);
    }
  }
}
static void grid_fwd_f32(void *a, int64_t i0, int64_t i1) { grid_fwd(a, i0, i1, false); }
static void grid_fwd_f64(void *a, int64_t i0, int64_t i1) { grid_fwd(a, i0, i1, true); }

/* Input gradient: items are planes (n, ch), each scattering over its points. */
LM_INLINE void grid_back_x(const grid_job *j, int64_t q0, int64_t q1, bool f64) {
  int64_t plane = j->in[0] * j->in[1] * j->in[2];
  for (int64_t q = q0; q < q1; q++) {
    int64_t n = q / j->C;
    char *gx = j->y + q * plane * (f64 ? 8 : 4);
    memset(gx, 0, (size_t)plane * (f64 ? 8 : 4));
    for (int64_t p = 0; p < j->P; p++) {
      corners k;
      corners_at(j, n, p, &k);
      double g = load(j->g, q * j->P + p, f64);
      for (int32_t m = 0; m < k.n; m++) add_to(gx, k.off[m], k.w[m] * g, f64);
    }
  }
}
static void grid_back_x_f32(void *a, int64_t q0, int64_t q1) { grid_back_x(a, q0, q1, false); }
static void grid_back_x_f64(void *a, int64_t q0, int64_t q1) { grid_back_x(a, q0, q1, true); }

/* Grid gradient: items are (n, p) pairs, summing over channels. */
LM_INLINE void grid_back_grid(const grid_job *j, int64_t i0, int64_t i1, bool f64) {
  int64_t plane = j->in[0] * j->in[1] * j->in[2];
  for (int64_t i = i0; i < i1; i++) {
    int64_t n = i / j->P, p = i % j->P;
    double acc[3] = {0, 0, 0};
    if (!j->nearest) { /* nearest sampling is piecewise constant: zero */
      corners k;
      corners_at(j, n, p, &k);
      for (int64_t ch = 0; ch < j->C; ch++) {
        const char *x = j->x + (n * j->C + ch) * plane * (f64 ? 8 : 4);
        double g = load(j->g, (n * j->C + ch) * j->P + p, f64);
        for (int32_t m = 0; m < k.n; m++) {
          double xv = load(x, k.off[m], f64) * g;
          for (int32_t a = 0; a < 3; a++) acc[a] += xv * k.dw[m][a];
        }
      }
      for (int32_t a = 0; a < 3; a++) acc[a] *= k.mult[a];
    }
    for (int32_t c = 0; c < j->nd; c++) store(j->ggrid, i * j->nd + c, acc[2 - c], f64);
  }
}
static void grid_back_grid_f32(void *a, int64_t i0, int64_t i1) { grid_back_grid(a, i0, i1, false); }
static void grid_back_grid_f64(void *a, int64_t i0, int64_t i1) { grid_back_grid(a, i0, i1, true); }

static void grid_job_setup(grid_job *j, const lm_tensor *x, const lm_tensor *grid, int64_t params) {
  j->nd = x->ndim - 2;
  j->N = x->shape[0], j->C = x->shape[1];
  j->in[0] = j->nd == 3 ? x->shape[2] : 1;
  j->in[1] = x->shape[x->ndim - 2], j->in[2] = x->shape[x->ndim - 1];
  j->P = 1;
  for (int32_t d = 1; d < grid->ndim - 1; d++) j->P *= grid->shape[d];
  j->f64 = x->dtype == LM_F64;
  j->nearest = (params & 1) != 0, j->border = (params & 2) != 0, j->align = (params & 4) != 0;
}

/* grid_sample on a device: the backend's grid_sample entry with the job's
   sizes and flags (forward: y = the samples; backward: gx, gg when given). */
static lm_status dev_grid(lm_ctx *ctx, const char *op, const grid_job *j, int32_t dev, int32_t dtype, int64_t params,
                          bool backward, void *y, void *gg) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, dev, grid_sample, &be);
  if (st) return st;
  if ((st = be->grid_sample(dtype, backward, j->nd, (int32_t)params, j->N, j->C, j->P, j->in, j->x, j->grid, j->g, y, gg)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

static lm_status grid_sample_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *grid = node->saved[1];
  lm_tensor *g = NULL, *gx = NULL, *gg = NULL;
  lm_status st;
  grid_job j;
  grid_job_setup(&j, x, grid, node->ip[0]);
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  j.x = lm_data(x), j.grid = lm_data(grid), j.g = lm_data(g);
  if (lm_device_of(x) != LM_CPU) {
    int32_t dev = lm_device_of(x);
    if ((node->needs[0] && (st = lm_new_on(ctx, "grid_sample backward", dev, x->dtype, x->ndim, x->shape, &gx))) ||
        (node->needs[1] && (st = lm_new_on(ctx, "grid_sample backward", dev, grid->dtype, grid->ndim, grid->shape, &gg))))
      goto done;
    if ((st = dev_grid(ctx, "grid_sample backward", &j, dev, x->dtype, node->ip[0], true, gx ? lm_data(gx) : NULL,
                       gg ? lm_data(gg) : NULL)))
      goto done;
    gin[0] = gx, gin[1] = gg, gx = gg = NULL;
    goto done;
  }
  if (node->needs[0]) {
    if ((st = lm_new(ctx, "grid_sample backward", x->dtype, x->ndim, x->shape, &gx))) goto done;
    j.y = lm_data(gx);
    lm_parallel_for(ctx, j.N * j.C, grain_for(j.P * 8), j.f64 ? grid_back_x_f64 : grid_back_x_f32, &j);
  }
  if (node->needs[1]) {
    if ((st = lm_new(ctx, "grid_sample backward", grid->dtype, grid->ndim, grid->shape, &gg))) goto done;
    j.ggrid = lm_data(gg);
    lm_parallel_for(ctx, j.N * j.P, grain_for(j.C * 8), j.f64 ? grid_back_grid_f64 : grid_back_grid_f32, &j);
  }
  gin[0] = gx, gin[1] = gg, gx = gg = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  lm_tensor_release(gg);
  return st;
}

lm_status lm_grid_sample(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *grid, int32_t mode, int32_t padding_mode,
                         int32_t align_corners, lm_tensor **out) {
  const char *op = "grid_sample";
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input")) || (st = lm_check_arg(ctx, op, grid, "grid"))) return st;
  const lm_tensor *both[2] = {x, grid};
  const char *const names[2] = {"input", "grid"};
  int32_t dev;
  if ((st = lm_op_device(ctx, op, 2, both, names, false, &dev))) return st;
  if ((st = check_float(ctx, op, x, "input")) || (st = check_float(ctx, op, grid, "grid"))) return st;
  if (grid->dtype != x->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: grid dtype %s with input dtype %s, expected the same dtype", op,
                  lm_dtype_name(grid->dtype), lm_dtype_name(x->dtype));
  if (mode != LM_INTERP_NEAREST && mode != LM_INTERP_LINEAR)
    return lm_err(ctx, LM_E_ARG, "%s: mode %d, expected LM_INTERP_NEAREST or LM_INTERP_LINEAR", op, mode);
  if (padding_mode != LM_GRID_PAD_ZEROS && padding_mode != LM_GRID_PAD_BORDER)
    return lm_err(ctx, LM_E_ARG, "%s: padding mode %d, expected LM_GRID_PAD_ZEROS or LM_GRID_PAD_BORDER", op, padding_mode);
  if (x->ndim != 4 && x->ndim != 5)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected 4-D (N x C x H x W) or 5-D (N x C x D x H x W)", op,
                  x->ndim, LM_SHP(x, a));
  int32_t nd = x->ndim - 2;
  if (grid->ndim != x->ndim || grid->shape[0] != x->shape[0] || grid->shape[grid->ndim - 1] != nd)
    return lm_err(ctx, LM_E_SHAPE, "%s: grid of shape %s for an input of shape %s, expected %s with N = %lld", op,
                  LM_SHP(grid, a), LM_SHP(x, b), nd == 2 ? "N x H_out x W_out x 2" : "N x D_out x H_out x W_out x 3",
                  (long long)x->shape[0]);
  for (int32_t d = 2; d < x->ndim; d++)
    if (x->shape[d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s has an empty spatial dimension %d, expected sizes >= 1", op,
                    LM_SHP(x, a), d);

  lm_tensor *xc = NULL, *gc = NULL, *y = NULL;
  int64_t shape[LM_MAX_DIMS] = {x->shape[0], x->shape[1]};
  for (int32_t d = 1; d < grid->ndim - 1; d++) shape[d + 1] = grid->shape[d];
  if ((st = contiguous_untracked(ctx, x, &xc)) || (st = contiguous_untracked(ctx, grid, &gc))) goto fail;
  if ((st = lm_new_on(ctx, op, dev, x->dtype, x->ndim, shape, &y))) goto fail;
  int64_t params = (mode == LM_INTERP_NEAREST) | (padding_mode == LM_GRID_PAD_BORDER) << 1 | (align_corners != 0) << 2;
  grid_job j;
  grid_job_setup(&j, x, grid, params);
  j.x = lm_data(xc), j.grid = lm_data(gc), j.y = lm_data(y), j.g = NULL;
  if (dev != LM_CPU) {
    if ((st = dev_grid(ctx, op, &j, dev, x->dtype, params, false, j.y, NULL))) goto fail;
  } else {
    lm_parallel_for(ctx, j.N * j.P, grain_for(j.C * 8), j.f64 ? grid_fwd_f64 : grid_fwd_f32, &j);
  }

  lm_node *node;
  const lm_tensor *ins[2] = {x, grid};
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, LM_OP_GRID_SAMPLE, grid_sample_backward, 2, ins, 1, outs, &node))) goto fail;
  if (node) {
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, gc))) goto fail;
    node->ip[0] = params;
  }
  lm_tensor_release(xc);
  lm_tensor_release(gc);
  *out = y;
  return LM_OK;
fail:
  lm_tensor_release(xc);
  lm_tensor_release(gc);
  lm_tensor_release(y);
  return st;
}

/* ---- affine_grid ---- */

/* Normalised coordinate of position i of n: evenly from -1 to 1 over the
   corner samples (align_corners), or over the sample centres (the same
   scaled by (n - 1) / n); 0 when n is 1. */
static double base_coord(int64_t i, int64_t n, bool align) {
  if (n <= 1) return 0;
  double v = -1 + 2 * (double)i / (double)(n - 1);
  return align ? v : v * (double)(n - 1) / (double)n;
}

typedef struct affine_job {
  int32_t nd;                /* 2 or 3 */
  int64_t sp[3], P;          /* D, H, W of the grid (D = 1 in 2-D), points */
  const double *base[3];     /* coordinates along D, H, W */
  const char *theta, *g;     /* N x nd x (nd + 1); backward: grid gradient */
  char *out;                 /* grid, or theta's gradient */
  bool f64;
} affine_job;

/* The point's homogeneous coordinates: x, y(, z), 1. */
LM_INLINE void point_coords(const affine_job *j, int64_t p, double *b) {
  int64_t w = p % j->sp[2], h = (p / j->sp[2]) % j->sp[1], d = p / (j->sp[2] * j->sp[1]);
  b[0] = j->base[2][w], b[1] = j->base[1][h];
  if (j->nd == 3) b[2] = j->base[0][d];
  b[j->nd] = 1;
}

LM_INLINE void affine_fwd(const affine_job *j, int64_t i0, int64_t i1, bool f64) {
  int32_t nd = j->nd, nc = nd + 1;
  for (int64_t i = i0; i < i1; i++) {
    int64_t n = i / j->P, p = i % j->P;
    double b[4];
    point_coords(j, p, b);
    for (int32_t r = 0; r < nd; r++) {
      double v = 0;
      for (int32_t c = 0; c < nc; c++) v += b[c] * load(j->theta, (n * nd + r) * nc + c, f64);
      store(j->out, i * nd + r, v, f64);
    }
  }
}
static void affine_fwd_f32(void *a, int64_t i0, int64_t i1) { affine_fwd(a, i0, i1, false); }
static void affine_fwd_f64(void *a, int64_t i0, int64_t i1) { affine_fwd(a, i0, i1, true); }

/* Backward: theta's gradient for batch n sums g(p) b(p)^T over its points. */
LM_INLINE void affine_back(const affine_job *j, int64_t n0, int64_t n1, bool f64) {
  int32_t nd = j->nd, nc = nd + 1;
  for (int64_t n = n0; n < n1; n++) {
    double acc[12] = {0};
    for (int64_t p = 0; p < j->P; p++) {
      double b[4];
      point_coords(j, p, b);
      for (int32_t r = 0; r < nd; r++) {
        double g = load(j->g, (n * j->P + p) * nd + r, f64);
        for (int32_t c = 0; c < nc; c++) acc[r * nc + c] += g * b[c];
      }
    }
    for (int32_t k = 0; k < nd * nc; k++) store(j->out, n * nd * nc + k, acc[k], f64);
  }
}
static void affine_back_f32(void *a, int64_t n0, int64_t n1) { affine_back(a, n0, n1, false); }
static void affine_back_f64(void *a, int64_t n0, int64_t n1) { affine_back(a, n0, n1, true); }

/* Coordinates along D, H, W in one allocation (base[0] is {0} in 2-D). */
static double *affine_bases(affine_job *j, bool align) {
  double *mem = malloc((size_t)(j->sp[0] + j->sp[1] + j->sp[2]) * sizeof *mem);
  if (!mem) return NULL;
  double *t = mem;
  for (int32_t a = 0; a < 3; a++) {
    j->base[a] = t;
    for (int64_t i = 0; i < j->sp[a]; i++) t[i] = base_coord(i, j->sp[a], align);
    t += j->sp[a];
  }
  return mem;
}

static void affine_setup(affine_job *j, int32_t nd, const int64_t *spatial, int32_t dtype) {
  j->nd = nd;
  j->sp[0] = nd == 3 ? spatial[0] : 1, j->sp[1] = spatial[nd - 2], j->sp[2] = spatial[nd - 1];
  j->P = j->sp[0] * j->sp[1] * j->sp[2];
  j->f64 = dtype == LM_F64;
}

/* On a device, affine_grid is two GEMMs with the matrix B of the points'
   homogeneous coordinates (P x (nd + 1), made here and moved over):
   grid_n = B theta_n^T, and theta_n's gradient g_n^T B. */
static lm_status dev_affine_gemm(lm_ctx *ctx, const char *op, const affine_job *j, int32_t dtype, int32_t dev, bool backward,
                                 int64_t N, const lm_tensor *src, lm_tensor *dst) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, dev, gemm, &be);
  if (st) return st;
  int64_t nd = j->nd, nc = nd + 1, bshape[2] = {j->P, nc};
  lm_tensor *bh = NULL, *bd = NULL;
  if ((st = lm_new(ctx, op, dtype, 2, bshape, &bh))) return st;
  for (int64_t p = 0; p < j->P; p++) {
    double b[4];
    point_coords(j, p, b);
    for (int64_t c = 0; c < nc; c++) lm_write_from_double(dtype, lm_data(bh) + (p * nc + c) * lm_dtype_size(dtype), b[c]);
  }
  if (!(st = lm_to_device(ctx, bh, dev, &bd))) {
    if (backward) /* dtheta_n (nd x nc) = g_n^T (nd x P) B (P x nc) */
      st = be->gemm(dtype, 1, 0, nd, nc, j->P, 1.0, lm_data(src), nd, j->P * nd, lm_data(bd), nc, 0, 0.0, lm_data(dst),
                    nc, nd * nc, N);
    else /* grid_n (P x nd) = B (P x nc) theta_n^T (nc x nd) */
      st = be->gemm(dtype, 0, 1, j->P, nd, nc, 1.0, lm_data(bd), nc, 0, lm_data(src), nc, nd * nc, 0.0, lm_data(dst),
                    nd, j->P * nd, N);
    if (st) st = lm_backend_fail(ctx, op, be, st);
  }
  lm_tensor_release(bh);
  lm_tensor_release(bd);
  return st;
}

static lm_status affine_grid_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  int32_t nd = (int32_t)node->ip[0];
  int64_t N = node->ip[1];
  affine_job j;
  affine_setup(&j, nd, &node->ip[2], gout[0]->dtype);
  lm_tensor *g = NULL, *gt = NULL;
  double *mem = NULL;
  lm_status st;
  int64_t shape[3] = {N, nd, nd + 1};
  if ((st = contiguous_untracked(ctx, gout[0], &g))) goto done;
  if ((st = lm_new_on(ctx, "affine_grid backward", lm_device_of(g), g->dtype, 3, shape, &gt))) goto done;
  if (!(mem = affine_bases(&j, node->ip[5] != 0))) {
    st = lm_err(ctx, LM_E_OOM, "affine_grid backward: out of memory");
    goto done;
  }
  j.g = lm_data(g), j.out = lm_data(gt);
  if (lm_device_of(g) != LM_CPU) {
    if ((st = dev_affine_gemm(ctx, "affine_grid backward", &j, g->dtype, lm_device_of(g), true, N, g, gt))) goto done;
  } else {
    lm_parallel_for(ctx, N, grain_for(j.P * nd * (nd + 1)), j.f64 ? affine_back_f64 : affine_back_f32, &j);
  }
  gin[0] = gt, gt = NULL;
done:
  free(mem);
  lm_tensor_release(g);
  lm_tensor_release(gt);
  return st;
}

lm_status lm_affine_grid(lm_ctx *ctx, const lm_tensor *theta, int32_t size_len, const int64_t *size, int32_t align_corners,
                         lm_tensor **out) {
  const char *op = "affine_grid";
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_arg(ctx, op, theta, "theta")) || (st = check_float(ctx, op, theta, "theta"))) return st;
  if (!size || (size_len != 4 && size_len != 5))
    return lm_err(ctx, LM_E_ARG, "%s: size has %d entries, expected 4 (N x C x H x W) or 5 (N x C x D x H x W)", op,
                  size ? size_len : 0);
  for (int32_t d = 0; d < size_len; d++)
    if (size[d] < 1 || size[d] > SIZE_MAX_ENTRY)
      return lm_err(ctx, LM_E_ARG, "%s: size %s has an entry outside [1, %lld]", op,
                    lm_shape_str(size_len, size, a, sizeof a), (long long)SIZE_MAX_ENTRY);
  int32_t nd = size_len - 2;
  if (theta->ndim != 3 || theta->shape[0] != size[0] || theta->shape[1] != nd || theta->shape[2] != nd + 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: theta of shape %s for size %s, expected %lld x %d x %d (a batch of %d-D affine matrices)",
                  op, LM_SHP(theta, a), lm_shape_str(size_len, size, b, sizeof b), (long long)size[0], nd, nd + 1, nd);

  affine_job j;
  affine_setup(&j, nd, size + 2, theta->dtype);
  lm_tensor *tc = NULL, *y = NULL;
  double *mem = NULL;
  int64_t shape[LM_MAX_DIMS] = {size[0]};
  for (int32_t d = 0; d < nd; d++) shape[1 + d] = size[2 + d];
  shape[1 + nd] = nd;
  if ((st = contiguous_untracked(ctx, theta, &tc))) goto fail;
  if ((st = lm_new_on(ctx, op, lm_device_of(theta), theta->dtype, nd + 2, shape, &y))) goto fail;
  if (!(mem = affine_bases(&j, align_corners != 0))) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    goto fail;
  }
  j.theta = lm_data(tc), j.out = lm_data(y);
  if (lm_device_of(theta) != LM_CPU) {
    if ((st = dev_affine_gemm(ctx, op, &j, theta->dtype, lm_device_of(theta), false, size[0], tc, y))) goto fail;
  } else {
    lm_parallel_for(ctx, size[0] * j.P, grain_for(nd * (nd + 1)), j.f64 ? affine_fwd_f64 : affine_fwd_f32, &j);
  }

  lm_node *node;
  lm_tensor *outs[1] = {y};
  if ((st = lm_record(ctx, LM_OP_AFFINE_GRID, affine_grid_backward, 1, &theta, 1, outs, &node))) goto fail;
  if (node) {
    node->ip[0] = nd, node->ip[1] = size[0];
    for (int32_t d = 0; d < nd; d++) node->ip[2 + d] = size[2 + d];
    node->ip[5] = align_corners != 0;
  }
  free(mem);
  lm_tensor_release(tc);
  *out = y;
  return LM_OK;
fail:
  free(mem);
  lm_tensor_release(tc);
  lm_tensor_release(y);
  return st;
}
