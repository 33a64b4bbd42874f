/* imgproc.c - the loops of image resampling (lua/lumen/image/ops.lua):
 * the cubic B-spline prefilter and sampling a volume on an affine map of
 * voxel indices, with scipy.ndimage.map_coordinates' conventions.
 *
 * Both work on contiguous f64 3-D volumes (i, j, k; k fastest); the Lua
 * side converts, pads and chooses. Sampling: output voxel (a, b, c) reads
 * the input at m * (a, b, c, 1); order 0 takes the voxel floor(x + 0.5),
 * order 1 the 2 neighbours per axis, order 3 the 4 spline coefficients
 * around x. Mode LM_IMG_CONSTANT gives cval when a point lies outside
 * [0, n - 1] on any axis (with a 1e-9 voxel tolerance: affine arithmetic
 * leaves -1e-16 where 0 was meant); LM_IMG_NEAREST clamps the point to
 * the volume. Taps past an edge mirror back (d c b | a b c d | c b a),
 * the boundary the prefilter assumes. */
#include "../core/internal.h"
#include <math.h>

#define EDGE 1e-9

static lm_status check_volume(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  char buf[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_input(ctx, op, x, "input"))) return st;
  if (x->dtype != LM_F64) return lm_err(ctx, LM_E_DTYPE, "%s: input is %s, expected f64", op, lm_dtype_name(x->dtype));
  if (x->ndim != 3) return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected a 3-D volume", op, x->ndim, LM_SHP(x, buf));
  if (!lm_is_contiguous(x)) return lm_err(ctx, LM_E_ARG, "%s: input is not contiguous", op);
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* prefilter: the cubic spline's single pole z = sqrt(3) - 2, one causal
   and one anticausal recursion per line, with the exact mirror start. */

typedef struct {
  double *p;
  int64_t n, stride, inner; /* line length, step along it, lines per outer block */
} filter_job;

static void filter_lines(void *arg, int64_t begin, int64_t end) {
  const filter_job *job = arg;
  const double z = sqrt(3.0) - 2.0, gain = (1.0 - z) * (1.0 - 1.0 / z);
  const int64_t n = job->n, s = job->stride;
  const double zn1 = pow(z, (double)(n - 1));
  for (int64_t line = begin; line < end; line++) {
    double *c = job->p + (line / job->inner) * n * s + line % job->inner;
    for (int64_t i = 0; i < n; i++) c[i * s] *= gain;
    double c0 = c[0] + zn1 * c[(n - 1) * s], zi = z;
    for (int64_t i = 1; i < n - 1; i++) {
      c0 += zi * (c[i * s] + zn1 * c[(n - 1 - i) * s]);
      zi *= z;
    }
    c[0] = c0 / (1.0 - zn1 * zn1);
    for (int64_t i = 1; i < n; i++) c[i * s] += z * c[(i - 1) * s];
    c[(n - 1) * s] = (z / (z * z - 1.0)) * (z * c[(n - 2) * s] + c[(n - 1) * s]);
    for (int64_t i = n - 2; i >= 0; i--) c[i * s] = z * (c[(i + 1) * s] - c[i * s]);
  }
}

lm_status lm_spline_prefilter3d(lm_ctx *ctx, lm_tensor *x) {
  lm_status st;
  if ((st = check_volume(ctx, "spline_prefilter3d", x))) return st;
  for (int axis = 0; axis < 3; axis++) {
    int64_t n = x->shape[axis], stride = 1, outer = 1;
    if (n < 2) continue;
    for (int d = axis + 1; d < 3; d++) stride *= x->shape[d];
    for (int d = 0; d < axis; d++) outer *= x->shape[d];
    filter_job job = {(double *)lm_data(x), n, stride, stride};
    lm_parallel_for(ctx, outer * stride, 64, filter_lines, &job);
  }
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* sampling */

static inline int64_t mirror(int64_t i, int64_t n) {
  if (n == 1) return 0;
  int64_t period = 2 * n - 2;
  i %= period;
  if (i < 0) i += period;
  return i >= n ? period - i : i;
}

/* Taps and weights along one axis for x in [0, n - 1]; returns their count. */
static inline int taps(int order, double x, int64_t n, int64_t *idx, double *w) {
  int64_t i;
  double t;
  switch (order) {
  case 0:
    i = (int64_t)floor(x + 0.5);
    idx[0] = i < n ? i : n - 1;
    w[0] = 1.0;
    return 1;
  case 1:
    i = (int64_t)floor(x);
    t = x - (double)i;
    idx[0] = mirror(i, n), w[0] = 1.0 - t;
    idx[1] = mirror(i + 1, n), w[1] = t;
    return 2;
  default:
    i = (int64_t)floor(x);
    t = x - (double)i;
    double u = 1.0 - t;
    w[0] = u * u * u / 6.0;
    w[1] = (4.0 - 6.0 * t * t + 3.0 * t * t * t) / 6.0;
    w[2] = (1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t * t * t) / 6.0;
    w[3] = t * t * t / 6.0;
    for (int q = 0; q < 4; q++) idx[q] = mirror(i - 1 + q, n);
    return 4;
  }
}

typedef struct {
  const double *in;
  double *out;
  int64_t n0, n1, n2, o1, o2; /* input sizes; output sizes along j, k */
  double m[12], cval;
  int order, mode;
} sample_job;

static inline double clamp(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

static void sample_rows(void *arg, int64_t begin, int64_t end) {
  const sample_job *j = arg;
  const double *m = j->m;
  int64_t i0[4], i1[4], i2[4];
  double w0[4], w1[4], w2[4];
  for (int64_t row = begin; row < end; row++) {
    double a = (double)(row / j->o1), b = (double)(row % j->o1);
    double *dst = j->out + row * j->o2;
    for (int64_t cc = 0; cc < j->o2; cc++) {
      double c = (double)cc;
      double x = m[0] * a + m[1] * b + m[2] * c + m[3];
      double y = m[4] * a + m[5] * b + m[6] * c + m[7];
      double z = m[8] * a + m[9] * b + m[10] * c + m[11];
      double hx = (double)(j->n0 - 1), hy = (double)(j->n1 - 1), hz = (double)(j->n2 - 1);
      if (j->mode == LM_IMG_CONSTANT &&
          !(x >= -EDGE && y >= -EDGE && z >= -EDGE && x <= hx + EDGE && y <= hy + EDGE && z <= hz + EDGE)) {
        dst[cc] = j->cval; /* also NaN coordinates */
        continue;
      }
      x = clamp(x, 0, hx), y = clamp(y, 0, hy), z = clamp(z, 0, hz);
      int k0 = taps(j->order, x, j->n0, i0, w0);
      int k1 = taps(j->order, y, j->n1, i1, w1);
      int k2 = taps(j->order, z, j->n2, i2, w2);
      double s = 0;
      for (int u = 0; u < k0; u++) {
        double su = 0;
        for (int v = 0; v < k1; v++) {
          const double *line = j->in + (i0[u] * j->n1 + i1[v]) * j->n2;
          double sv = 0;
          for (int t = 0; t < k2; t++) sv += w2[t] * line[i2[t]];
          su += w1[v] * sv;
        }
        s += w0[u] * su;
      }
      dst[cc] = s;
    }
  }
}

lm_status lm_map_affine3d(lm_ctx *ctx, const lm_tensor *x, const double *m, int32_t order, int32_t mode, double cval,
                          const int64_t *size, lm_tensor **out) {
  const char *op = "map_affine3d";
  lm_status st;
  if ((st = check_volume(ctx, op, x))) return st;
  if (order != 0 && order != 1 && order != 3) return lm_err(ctx, LM_E_ARG, "%s: order %d, expected 0, 1 or 3", op, order);
  if (mode != LM_IMG_CONSTANT && mode != LM_IMG_NEAREST)
    return lm_err(ctx, LM_E_ARG, "%s: mode %d, expected LM_IMG_CONSTANT or LM_IMG_NEAREST", op, mode);
  if (!m || !size) return lm_err(ctx, LM_E_ARG, "%s: matrix or size is NULL", op);
  for (int d = 0; d < 3; d++)
    if (size[d] < 1 || size[d] > (INT64_C(1) << 31))
      return lm_err(ctx, LM_E_ARG, "%s: output size %lld along axis %d, expected 1 to 2^31", op, (long long)size[d], d);
  for (int k = 0; k < 12; k++)
    if (!isfinite(m[k])) return lm_err(ctx, LM_E_ARG, "%s: matrix entry %d is not finite", op, k);
  if (x->shape[0] < 1 || x->shape[1] < 1 || x->shape[2] < 1) return lm_err(ctx, LM_E_SHAPE, "%s: input is empty", op);
  lm_tensor *y = NULL;
  if ((st = lm_new(ctx, op, LM_F64, 3, size, &y))) return st;
  sample_job job = {(const double *)lm_data(x), (double *)lm_data(y), x->shape[0], x->shape[1], x->shape[2],
                    size[1], size[2], {0}, cval, order, mode};
  for (int k = 0; k < 12; k++) job.m[k] = m[k];
  lm_parallel_for(ctx, size[0] * size[1], 4, sample_rows, &job);
  *out = y;
  return LM_OK;
}
