/* window.c - the two loops of sliding-window inference
 * (lua/lumen/inference.lua): adding one window's prediction, weighted by a
 * separable importance map, into the whole-volume output; and dividing the
 * output by the summed weights once every window is in.
 *
 * The map is a product of per-axis weights w0(i) w1(j) w2(k), and the
 * windows sit on a Cartesian grid of starts, so the summed weight at a
 * voxel is a product S0(x) S1(y) S2(z) of per-axis sums: the caller keeps
 * those 1-D sums instead of a weight volume, and the output is the only
 * full-size buffer (one value per class per voxel).
 *
 * Both take 1 to 3 spatial dims; fewer are handled as 3 with leading
 * size-1 axes. Arithmetic is in double, stored in the output's dtype. */
#include "../core/internal.h"
#include <math.h>

/* One tensor's channel and spatial layout, spatial padded to 3 axes. */
typedef struct layout {
  char *data;
  int64_t channels, cstride;
  int64_t size[3], stride[3]; /* elements */
} layout;

static layout layout_of(const lm_tensor *t) {
  layout l = {lm_data(t), t->shape[0], t->stride[0], {1, 1, 1}, {0, 0, 0}};
  int nsp = t->ndim - 1, pad = 3 - nsp;
  for (int a = 0; a < nsp; a++) {
    l.size[pad + a] = t->shape[1 + a];
    l.stride[pad + a] = t->stride[1 + a];
  }
  return l;
}

static lm_status check_output(lm_ctx *ctx, const char *op, const lm_tensor *out) {
  char buf[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_input(ctx, op, out, "output"))) return st;
  if (!lm_dtype_is_float(out->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: output is %s, expected f32 or f64", op, lm_dtype_name(out->dtype));
  if (out->ndim < 2 || out->ndim > 4)
    return lm_err(ctx, LM_E_SHAPE, "%s: output is %d-D (%s), expected classes x 1 to 3 spatial dims", op, out->ndim,
                  LM_SHP(out, buf));
  return lm_check_writable(ctx, op, out);
}

/* ------------------------------------------------------------------ */
/* accumulate: out[c, start + r] += scale * w0 w1 w2 (r) * pred[c, r'],
   r' = r, or R - 1 - r along axes whose flip bit is set (the window was
   predicted mirrored); positions outside out are skipped (padded windows). */

typedef struct accumulate_job {
  layout out, pred;
  int64_t start[3], lo[3], hi[3]; /* window offsets [lo, hi) that land inside out */
  const double *w[3];
  int flip[3];
  double scale;
} accumulate_job;

#define ACCUMULATE_ROWS(T, name)                                                              \
  static void name(void *arg, int64_t begin, int64_t end) {                                   \
    const accumulate_job *j = arg;                                                            \
    int64_t n0 = j->hi[0] - j->lo[0], n1 = j->hi[1] - j->lo[1];                               \
    for (int64_t row = begin; row < end; row++) {                                             \
      int64_t c = row / (n0 * n1), r0 = j->lo[0] + row / n1 % n0, r1 = j->lo[1] + row % n1;   \
      int64_t p0 = j->flip[0] ? j->pred.size[0] - 1 - r0 : r0;                                \
      int64_t p1 = j->flip[1] ? j->pred.size[1] - 1 - r1 : r1;                                \
      T *o = (T *)j->out.data + c * j->out.cstride + (j->start[0] + r0) * j->out.stride[0] +  \
             (j->start[1] + r1) * j->out.stride[1] + j->start[2] * j->out.stride[2];          \
      const T *p = (const T *)j->pred.data + c * j->pred.cstride + p0 * j->pred.stride[0] +   \
                   p1 * j->pred.stride[1];                                                    \
      double wrow = j->scale * j->w[0][r0] * j->w[1][r1];                                     \
      int64_t os = j->out.stride[2], ps = j->pred.stride[2], last = j->pred.size[2] - 1;      \
      for (int64_t r2 = j->lo[2]; r2 < j->hi[2]; r2++) {                                      \
        int64_t p2 = j->flip[2] ? last - r2 : r2;                                             \
        o[r2 * os] = (T)((double)o[r2 * os] + wrow * j->w[2][r2] * (double)p[p2 * ps]);       \
      }                                                                                       \
    }                                                                                         \
  }
ACCUMULATE_ROWS(float, accumulate_rows_f32)
ACCUMULATE_ROWS(double, accumulate_rows_f64)

lm_status lm_window_accumulate(lm_ctx *ctx, lm_tensor *out, const lm_tensor *pred, const int64_t *start,
                               const double *weights, int32_t flip, double scale) {
  const char *op = "window_accumulate";
  char buf[LM_SHAPE_BUF], buf2[LM_SHAPE_BUF];
  lm_status st;
  if ((st = check_output(ctx, op, out))) return st;
  if ((st = lm_check_input(ctx, op, pred, "prediction"))) return st;
  if ((st = lm_check_grad_dst(ctx, op, out, 1, &pred))) return st;
  if (pred->dtype != out->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: prediction is %s, expected the output's %s", op, lm_dtype_name(pred->dtype),
                  lm_dtype_name(out->dtype));
  if (pred->ndim != out->ndim || pred->shape[0] != out->shape[0])
    return lm_err(ctx, LM_E_SHAPE, "%s: prediction is %s, expected %lld classes and %d spatial dims as the output (%s)",
                  op, LM_SHP(pred, buf), (long long)out->shape[0], out->ndim - 1, LM_SHP(out, buf2));
  if (!start || !weights) return lm_err(ctx, LM_E_ARG, "%s: start or weights is NULL", op);
  if (!isfinite(scale)) return lm_err(ctx, LM_E_ARG, "%s: scale is not finite", op);

  static const double one = 1.0;
  accumulate_job job = {layout_of(out), layout_of(pred), {0}, {0}, {0}, {&one, &one, &one}, {0}, scale};
  int nsp = out->ndim - 1, pad = 3 - nsp;
  const double *w = weights;
  for (int a = 0; a < 3; a++) {
    int64_t s = 0;
    if (a >= pad) {
      s = start[a - pad];
      job.w[a] = w;
      w += job.pred.size[a];
      job.flip[a] = (flip >> (a - pad)) & 1;
    }
    int64_t r = job.pred.size[a], n = job.out.size[a];
    job.start[a] = s;
    job.lo[a] = s < 0 ? -s : 0;
    job.hi[a] = n - s < r ? n - s : r;
    if (job.hi[a] <= job.lo[a]) return LM_OK; /* the window misses the volume */
  }
  int64_t rows = job.out.channels * (job.hi[0] - job.lo[0]) * (job.hi[1] - job.lo[1]);
  int64_t len = job.hi[2] - job.lo[2], grain = 32768 / len + 1;
  lm_parallel_for(ctx, rows, grain, out->dtype == LM_F32 ? accumulate_rows_f32 : accumulate_rows_f64, &job);
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* normalize: out[c, x, y, z] /= S0(x) S1(y) S2(z) */

typedef struct normalize_job {
  layout out;
  const double *s[3];
} normalize_job;

#define NORMALIZE_ROWS(T, name)                                                                \
  static void name(void *arg, int64_t begin, int64_t end) {                                    \
    const normalize_job *j = arg;                                                              \
    int64_t n0 = j->out.size[0], n1 = j->out.size[1];                                          \
    for (int64_t row = begin; row < end; row++) {                                              \
      int64_t c = row / (n0 * n1), x = row / n1 % n0, y = row % n1;                            \
      T *o = (T *)j->out.data + c * j->out.cstride + x * j->out.stride[0] + y * j->out.stride[1]; \
      double sxy = j->s[0][x] * j->s[1][y];                                                    \
      int64_t os = j->out.stride[2];                                                           \
      for (int64_t z = 0; z < j->out.size[2]; z++)                                             \
        o[z * os] = (T)((double)o[z * os] / (sxy * j->s[2][z]));                               \
    }                                                                                          \
  }
NORMALIZE_ROWS(float, normalize_rows_f32)
NORMALIZE_ROWS(double, normalize_rows_f64)

lm_status lm_window_normalize(lm_ctx *ctx, lm_tensor *out, const double *sums) {
  const char *op = "window_normalize";
  lm_status st;
  if ((st = check_output(ctx, op, out))) return st;
  if (!sums) return lm_err(ctx, LM_E_ARG, "%s: sums is NULL", op);
  static const double one = 1.0;
  normalize_job job = {layout_of(out), {&one, &one, &one}};
  int nsp = out->ndim - 1, pad = 3 - nsp;
  const double *s = sums;
  for (int a = pad; a < 3; a++) {
    for (int64_t i = 0; i < job.out.size[a]; i++)
      if (!(s[i] > 0) || !isfinite(s[i])) /* a voxel no window covered, or a broken map */
        return lm_err(ctx, LM_E_ARG, "%s: weight sum %g at position %lld of spatial axis %d, expected > 0", op, s[i],
                      (long long)i, a - pad);
    job.s[a] = s;
    s += job.out.size[a];
  }
  int64_t rows = job.out.channels * job.out.size[0] * job.out.size[1];
  int64_t grain = 32768 / (job.out.size[2] ? job.out.size[2] : 1) + 1;
  lm_parallel_for(ctx, rows, grain, out->dtype == LM_F32 ? normalize_rows_f32 : normalize_rows_f64, &job);
  return LM_OK;
}
