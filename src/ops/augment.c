/* augment.c - the loops of the data pipeline (lua/lumen/augment.lua,
 * lua/lumen/loader.lua): warping a multi-channel patch out of a volume,
 * separable Gaussian filtering, smooth fields from a coarse control grid,
 * and where each label class lies (for class-balanced patch sampling).
 *
 * All take a channel dimension first and 2 or 3 spatial dimensions after
 * it ("C x H x W" or "C x D x H x W"), contiguous. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CLASSES 65536

static lm_status check_channels_first(lm_ctx *ctx, const char *op, const lm_tensor *x, int32_t nsp, const char *what) {
  char buf[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_input(ctx, op, x, what))) return st;
  if (nsp != 2 && nsp != 3) return lm_err(ctx, LM_E_ARG, "%s: %d spatial dims, expected 2 or 3", op, nsp);
  if (x->ndim != nsp + 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s is %d-D (%s), expected channels x %d spatial dims", op, what, x->ndim,
                  LM_SHP(x, buf), nsp);
  if (!lm_is_contiguous(x)) return lm_err(ctx, LM_E_ARG, "%s: %s is not contiguous", op, what);
  for (int d = 0; d <= nsp; d++)
    if (x->shape[d] < 1) return lm_err(ctx, LM_E_SHAPE, "%s: %s is empty (%s)", op, what, LM_SHP(x, buf));
  return LM_OK;
}

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  if (x->dtype != LM_F32 && x->dtype != LM_F64)
    return lm_err(ctx, LM_E_DTYPE, "%s: input is %s, expected f32 or f64", op, lm_dtype_name(x->dtype));
  return LM_OK;
}

static inline double load(const void *p, int32_t dtype, int64_t i) {
  return dtype == LM_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
static inline void store(void *p, int32_t dtype, int64_t i, double v) {
  if (dtype == LM_F32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}

/* ------------------------------------------------------------------ */
/* warp: out(c, p) = x(c, m * (p + disp(p))), one matrix row per spatial
   axis (nsp x (nsp + 1), row-major). Order 1 interpolates linearly with
   taps outside the volume reading cval (the field of view fades to cval
   over one voxel); order 0 takes the nearest voxel, cval outside. Labels
   use order 0 and keep their dtype. */

typedef struct {
  const lm_tensor *x, *disp;
  void *out;
  int32_t nsp, order, esize;
  int64_t in[3], size[3], in_plane, out_plane; /* spatial sizes (2-D: a leading 1) */
  double m[3][4], cval;
  char cval_bytes[8];
} warp_job;

static void warp_rows(void *arg, int64_t begin, int64_t end) {
  const warp_job *j = arg;
  const int32_t nsp = j->nsp, dtype = j->x->dtype;
  const int64_t channels = j->x->shape[0];
  const char *src = lm_data(j->x);
  char *dst = j->out;
  const float *disp = j->disp ? (const float *)lm_data(j->disp) : NULL;
  for (int64_t row = begin; row < end; row++) {
    double p[3] = {(double)(row / j->size[1]), (double)(row % j->size[1]), 0};
    for (int64_t k = 0; k < j->size[2]; k++) {
      int64_t o = row * j->size[2] + k;
      double q[3] = {p[0], p[1], (double)k}, x[3] = {0, 0, 0};
      if (disp)
        for (int a = 0; a < nsp; a++) q[3 - nsp + a] += disp[a * j->out_plane + o];
      /* rows of m act on the nsp spatial coordinates (the last nsp of q) */
      for (int a = 0; a < nsp; a++) {
        double s = j->m[a][nsp];
        for (int b = 0; b < nsp; b++) s += j->m[a][b] * q[3 - nsp + b];
        x[3 - nsp + a] = s;
      }
      if (j->order == 0) {
        int64_t i[3];
        bool inside = true;
        for (int a = 0; a < 3; a++) {
          double r = floor(x[a] + 0.5);
          inside = inside && r >= 0 && r < (double)j->in[a]; /* false for NaN too */
          i[a] = inside ? (int64_t)r : 0;
        }
        int64_t at = (i[0] * j->in[1] + i[1]) * j->in[2] + i[2];
        for (int64_t c = 0; c < channels; c++)
          memcpy(dst + (c * j->out_plane + o) * j->esize,
                 inside ? src + (c * j->in_plane + at) * j->esize : j->cval_bytes, (size_t)j->esize);
        continue;
      }
      /* order 1: 2 taps per axis, weight 0 for taps outside */
      int64_t lo[3];
      double w[3][2];
      bool ok[3][2];
      for (int a = 0; a < 3; a++) {
        double f = floor(x[a]);
        if (!(f > -2.0 && f < (double)j->in[a])) f = -2.0; /* far outside or NaN: both taps out */
        double t = f == -2.0 ? 0.0 : x[a] - f;
        lo[a] = (int64_t)f;
        w[a][0] = 1.0 - t, w[a][1] = t;
        ok[a][0] = lo[a] >= 0 && lo[a] < j->in[a];
        ok[a][1] = lo[a] + 1 >= 0 && lo[a] + 1 < j->in[a];
      }
      for (int64_t c = 0; c < channels; c++) {
        const char *plane = src + c * j->in_plane * j->esize;
        double s = 0, outside = 0;
        for (int u = 0; u < 2; u++)
          for (int v = 0; v < 2; v++)
            for (int t = 0; t < 2; t++) {
              double wt = w[0][u] * w[1][v] * w[2][t];
              if (wt == 0) continue;
              if (ok[0][u] && ok[1][v] && ok[2][t])
                s += wt * load(plane, dtype, ((lo[0] + u) * j->in[1] + lo[1] + v) * j->in[2] + lo[2] + t);
              else
                outside += wt;
            }
        store(dst, dtype, c * j->out_plane + o, s + outside * j->cval);
      }
    }
  }
}

lm_status lm_warp(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const double *m, const lm_tensor *disp, int32_t order,
                  double cval, const int64_t *size, lm_tensor **out) {
  const char *op = "warp";
  char buf[LM_SHAPE_BUF];
  lm_status st;
  if ((st = check_channels_first(ctx, op, x, nsp, "input"))) return st;
  if (order != 0 && order != 1) return lm_err(ctx, LM_E_ARG, "%s: order %d, expected 0 (nearest) or 1 (linear)", op, order);
  if (order == 1 && (st = check_float(ctx, op, x))) return st;
  if (!m || !size) return lm_err(ctx, LM_E_ARG, "%s: matrix or size is NULL", op);
  for (int k = 0; k < nsp * (nsp + 1); k++)
    if (!isfinite(m[k])) return lm_err(ctx, LM_E_ARG, "%s: matrix entry %d is not finite", op, k);
  int64_t shape[4] = {x->shape[0], 1, 1, 1};
  for (int a = 0; a < nsp; a++) {
    if (size[a] < 1 || size[a] > (INT64_C(1) << 24))
      return lm_err(ctx, LM_E_ARG, "%s: output size %lld along spatial axis %d, expected 1 to 2^24", op,
                    (long long)size[a], a);
    shape[a + 1] = size[a];
  }
  if (disp) {
    if ((st = lm_check_input(ctx, op, disp, "displacement"))) return st;
    bool good = disp->dtype == LM_F32 && disp->ndim == nsp + 1 && disp->shape[0] == nsp && lm_is_contiguous(disp);
    for (int a = 0; good && a < nsp; a++) good = disp->shape[a + 1] == size[a];
    if (!good)
      return lm_err(ctx, LM_E_SHAPE, "%s: displacement is %s %s, expected contiguous f32 of %d x the output size", op,
                    lm_dtype_name(disp->dtype), LM_SHP(disp, buf), nsp);
  }
  warp_job job = {.x = x, .disp = disp, .nsp = nsp, .order = order, .esize = lm_dtype_size(x->dtype), .cval = cval};
  for (int a = 0; a < 3; a++) job.in[a] = job.size[a] = 1;
  for (int a = 0; a < nsp; a++) {
    job.in[3 - nsp + a] = x->shape[a + 1];
    job.size[3 - nsp + a] = size[a];
    for (int b = 0; b <= nsp; b++) job.m[a][b] = m[a * (nsp + 1) + b];
  }
  job.in_plane = job.in[0] * job.in[1] * job.in[2];
  job.out_plane = job.size[0] * job.size[1] * job.size[2];
  switch (x->dtype) { /* the fill value outside, in the input's type */
  case LM_F32: *(float *)job.cval_bytes = (float)cval; break;
  case LM_F64: *(double *)job.cval_bytes = cval; break;
  case LM_I32: *(int32_t *)job.cval_bytes = (int32_t)cval; break;
  case LM_I64: *(int64_t *)job.cval_bytes = (int64_t)cval; break;
  default: *(uint8_t *)job.cval_bytes = (uint8_t)cval; break;
  }
  lm_tensor *y = NULL;
  if ((st = lm_new(ctx, op, x->dtype, nsp + 1, shape, &y))) return st;
  job.out = lm_data(y);
  lm_parallel_for(ctx, job.size[0] * job.size[1], 8, warp_rows, &job);
  *out = y;
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* Separable passes: fn filters every line along one axis of a contiguous
   tensor viewed as outer x n x inner. */

typedef struct {
  void *data;
  int32_t dtype;
  int64_t n, inner, out_n;     /* line length in and out, lines per block */
  const void *src;             /* resampling passes read from src */
  const double *weights;       /* gaussian: 2r + 1 taps */
  int64_t radius;
  double spacing;              /* bspline: control point spacing in output voxels */
} line_job;

static inline int64_t reflect(int64_t i, int64_t n) { /* d c b a | a b c d | d c b a */
  int64_t period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

static void gaussian_lines(void *arg, int64_t begin, int64_t end) {
  const line_job *j = arg;
  const int64_t n = j->n, r = j->radius, s = j->inner;
  double *line = malloc((size_t)(n + 2 * r) * sizeof *line);
  if (!line) return; /* cannot happen for sane sizes; the caller checked n */
  for (int64_t l = begin; l < end; l++) {
    int64_t base = (l / s) * n * s + l % s;
    for (int64_t i = -r; i < n + r; i++) line[i + r] = load(j->data, j->dtype, base + reflect(i, n) * s);
    for (int64_t i = 0; i < n; i++) {
      double acc = 0;
      for (int64_t t = 0; t <= 2 * r; t++) acc += j->weights[t] * line[i + t];
      store(j->data, j->dtype, base + i * s, acc);
    }
  }
  free(line);
}

lm_status lm_gaussian_filter(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const double *sigma, lm_tensor **out) {
  const char *op = "gaussian_filter";
  lm_status st;
  if ((st = check_channels_first(ctx, op, x, nsp, "input")) || (st = check_float(ctx, op, x))) return st;
  for (int a = 0; a < nsp; a++)
    if (!(sigma[a] >= 0 && sigma[a] <= 1e4))
      return lm_err(ctx, LM_E_ARG, "%s: sigma %g along spatial axis %d, expected 0 to 1e4 voxels", op, sigma[a], a);
  lm_tensor *y = NULL;
  if ((st = lm_new(ctx, op, x->dtype, x->ndim, x->shape, &y))) return st;
  memcpy(lm_data(y), lm_data(x), (size_t)lm_numel(x) * lm_dtype_size(x->dtype));
  for (int a = 0; a < nsp; a++) {
    if (sigma[a] == 0) continue;
    /* scipy.ndimage's kernel: truncated at 4 sigma, normalised */
    int64_t r = (int64_t)(4.0 * sigma[a] + 0.5);
    double *w = malloc((size_t)(2 * r + 1) * sizeof *w), total = 0;
    if (!w) {
      lm_tensor_release(y);
      return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    }
    for (int64_t t = -r; t <= r; t++) total += w[t + r] = exp(-0.5 * (double)(t * t) / (sigma[a] * sigma[a]));
    for (int64_t t = 0; t <= 2 * r; t++) w[t] /= total;
    int64_t n = x->shape[a + 1], inner = 1;
    for (int d = a + 2; d <= nsp; d++) inner *= x->shape[d];
    line_job job = {.data = lm_data(y), .dtype = y->dtype, .n = n, .inner = inner, .weights = w, .radius = r};
    lm_parallel_for(ctx, lm_numel(y) / n, 16, gaussian_lines, &job);
    free(w);
  }
  *out = y;
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* bspline_upsample: a smooth field from values on a coarse control grid.
   Along each axis, g control points sit at positions (j - 1) * h for
   j = 0 .. g - 1, h = (n - 1) / (g - 3), one beyond each end of the n
   output voxels; voxel i takes the cubic B-spline blend of its 4 nearest
   control points (an approximating spline: smooth, no overshoot). */

static void bspline_lines(void *arg, int64_t begin, int64_t end) {
  const line_job *j = arg;
  const int64_t g = j->n, n = j->out_n, s = j->inner;
  for (int64_t l = begin; l < end; l++) {
    int64_t in_base = (l / s) * g * s + l % s, out_base = (l / s) * n * s + l % s;
    for (int64_t i = 0; i < n; i++) {
      double u = (double)i / j->spacing + 1.0, f = floor(u), t = u - f, v = 1.0 - t;
      double w[4] = {v * v * v / 6.0, (4.0 - 6.0 * t * t + 3.0 * t * t * t) / 6.0,
                     (1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t * t * t) / 6.0, t * t * t / 6.0};
      double acc = 0;
      for (int q = 0; q < 4; q++) {
        int64_t c = (int64_t)f - 1 + q;
        c = c < 0 ? 0 : c >= g ? g - 1 : c; /* only ever a weight-0 tap */
        acc += w[q] * load(j->src, j->dtype, in_base + c * s);
      }
      store(j->data, j->dtype, out_base + i * s, acc);
    }
  }
}

lm_status lm_bspline_upsample(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const int64_t *size, lm_tensor **out) {
  const char *op = "bspline_upsample";
  lm_status st;
  if ((st = check_channels_first(ctx, op, x, nsp, "control grid")) || (st = check_float(ctx, op, x))) return st;
  for (int a = 0; a < nsp; a++) {
    if (x->shape[a + 1] < 4)
      return lm_err(ctx, LM_E_SHAPE, "%s: %lld control points along spatial axis %d, expected at least 4", op,
                    (long long)x->shape[a + 1], a);
    if (size[a] < 1 || size[a] > (INT64_C(1) << 24))
      return lm_err(ctx, LM_E_ARG, "%s: output size %lld along spatial axis %d, expected 1 to 2^24", op,
                    (long long)size[a], a);
  }
  /* one axis at a time: cur (sizes so far) -> next */
  lm_tensor *cur = (lm_tensor *)x;
  lm_tensor_retain(cur);
  int64_t shape[4];
  memcpy(shape, x->shape, sizeof shape);
  for (int a = 0; a < nsp; a++) {
    int64_t g = shape[a + 1];
    shape[a + 1] = size[a];
    lm_tensor *next = NULL;
    if ((st = lm_new(ctx, op, x->dtype, x->ndim, shape, &next))) {
      lm_tensor_release(cur);
      return st;
    }
    int64_t inner = 1;
    for (int d = a + 2; d <= nsp; d++) inner *= shape[d];
    line_job job = {.data = lm_data(next), .src = lm_data(cur), .dtype = x->dtype, .n = g, .out_n = size[a],
                    .inner = inner, .spacing = size[a] > 1 ? (double)(size[a] - 1) / (double)(g - 3) : 1.0};
    lm_parallel_for(ctx, lm_numel(next) / size[a], 16, bspline_lines, &job);
    lm_tensor_release(cur);
    cur = next;
  }
  *out = cur;
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* class_locations: for each label value c = 0 .. max, up to `limit` flat
   voxel indices holding c, spread evenly over all of them (every k-th in
   scan order, starting at a seeded offset). locations holds them class
   after class; offsets (max + 2 entries) where each class starts. Negative
   labels are skipped (an ignore value). */

/* where class c's every-step-th pick starts, from the seed */
static int64_t phase_of(uint64_t seed, int64_t c, int64_t step) {
  uint64_t h = seed * 0x9E3779B97F4A7C15ull + (uint64_t)c * 0xBF58476D1CE4E5B9ull;
  return (int64_t)((h >> 33) % (uint64_t)step);
}

static inline int64_t label_at(const void *p, int32_t dtype, int64_t i) {
  switch (dtype) {
  case LM_I32: return ((const int32_t *)p)[i];
  case LM_I64: return ((const int64_t *)p)[i];
  default: return ((const uint8_t *)p)[i];
  }
}

lm_status lm_class_locations(lm_ctx *ctx, const lm_tensor *label, int64_t limit, uint64_t seed, lm_tensor **locations,
                             lm_tensor **offsets) {
  const char *op = "class_locations";
  lm_status st;
  if ((st = lm_check_input(ctx, op, label, "label"))) return st;
  if (label->dtype != LM_U8 && label->dtype != LM_BOOL && label->dtype != LM_I32 && label->dtype != LM_I64)
    return lm_err(ctx, LM_E_DTYPE, "%s: label is %s, expected an integer type", op, lm_dtype_name(label->dtype));
  if (!lm_is_contiguous(label)) return lm_err(ctx, LM_E_ARG, "%s: label is not contiguous", op);
  if (limit < 1) return lm_err(ctx, LM_E_ARG, "%s: limit %lld, expected at least 1", op, (long long)limit);
  const void *p = lm_data(label);
  int64_t n = lm_numel(label), top = -1;
  for (int64_t i = 0; i < n; i++) {
    int64_t v = label_at(p, label->dtype, i);
    if (v > top) top = v;
  }
  if (top >= MAX_CLASSES)
    return lm_err(ctx, LM_E_ARG, "%s: label value %lld, expected at most %d classes", op, (long long)top, MAX_CLASSES);
  int64_t classes = top + 1, nofs = classes + 1;
  lm_tensor *ofs = NULL, *loc = NULL;
  if ((st = lm_new(ctx, op, LM_I64, 1, &nofs, &ofs))) return st;
  int64_t *start = (int64_t *)lm_data(ofs);
  int64_t *count = calloc((size_t)(classes + 1), sizeof *count), *seen = calloc((size_t)(classes + 1), sizeof *seen);
  if (!count || !seen) {
    free(count), free(seen), lm_tensor_release(ofs);
    return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  }
  for (int64_t i = 0; i < n; i++) {
    int64_t v = label_at(p, label->dtype, i);
    if (v >= 0) count[v]++;
  }
  /* class c keeps voxels whose rank r has r % step == phase */
  start[0] = 0;
  for (int64_t c = 0; c < classes; c++) {
    int64_t step = (count[c] + limit - 1) / limit, kept = 0;
    if (count[c] > 0) {
      int64_t phase = phase_of(seed, c, step);
      kept = (count[c] - phase + step - 1) / step;
    }
    start[c + 1] = start[c] + kept;
  }
  int64_t total = start[classes];
  if ((st = lm_new(ctx, op, LM_I64, 1, &total, &loc))) {
    free(count), free(seen), lm_tensor_release(ofs);
    return st;
  }
  int64_t *dst = (int64_t *)lm_data(loc);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = label_at(p, label->dtype, i);
    if (v < 0) continue;
    int64_t step = (count[v] + limit - 1) / limit;
    int64_t phase = phase_of(seed, v, step);
    int64_t r = seen[v]++;
    if (r % step == phase) dst[start[v] + (r - phase) / step] = i;
  }
  free(count), free(seen);
  *locations = loc;
  *offsets = ofs;
  return LM_OK;
}
