/* metrics.c - segmentation metrics on binary masks (lua/lumen/metrics.lua):
 * confusion counts, surface distances (HD95, ASSD) and per-label overlaps
 * for lesion-wise scores. Masks follow morph.c's rules (integer or bool,
 * nonzero = in, 1 to 3 dims, any strides).
 *
 * Surface distances follow medpy.metric.binary: the surface of a mask is
 * its voxels with a face neighbour outside it (or outside the volume); the
 * distance of each surface voxel of one mask to the nearest surface voxel
 * of the other, in mm, is read off the exact distance transform of the
 * other surface's complement. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static lm_status same_shape(lm_ctx *ctx, const char *op, const lm_tensor *pred, const lm_tensor *truth) {
  char b1[LM_SHAPE_BUF], b2[LM_SHAPE_BUF];
  bool same = pred->ndim == truth->ndim;
  for (int d = 0; same && d < pred->ndim; d++) same = pred->shape[d] == truth->shape[d];
  if (!same)
    return lm_err(ctx, LM_E_SHAPE, "%s: pred of shape %s and truth of shape %s, expected equal shapes", op,
                  LM_SHP(pred, b1), LM_SHP(truth, b2));
  return LM_OK;
}

/* Checks both masks and makes their 0/1 copies (+1 each). */
static lm_status mask_pair(lm_ctx *ctx, const char *op, const lm_tensor *pred, const lm_tensor *truth,
                           const double *spacing, lm_grid *g, lm_tensor **p, lm_tensor **t) {
  lm_grid gt;
  lm_status st;
  if ((st = lm_mask_grid(ctx, op, pred, "pred", spacing, g)) || (st = lm_mask_grid(ctx, op, truth, "truth", spacing, &gt)) ||
      (st = same_shape(ctx, op, pred, truth)))
    return st;
  if ((st = lm_mask_bytes(ctx, op, pred, p))) return st;
  if ((st = lm_mask_bytes(ctx, op, truth, t))) {
    lm_tensor_release(*p);
    return st;
  }
  return LM_OK;
}

lm_status lm_confusion_counts(lm_ctx *ctx, const lm_tensor *pred, const lm_tensor *truth, int64_t *counts) {
  const char *op = "confusion_counts";
  lm_grid g;
  lm_tensor *p, *t;
  lm_status st;
  if (!counts) return lm_err(ctx, LM_E_ARG, "%s: counts is NULL", op);
  if ((st = mask_pair(ctx, op, pred, truth, NULL, &g, &p, &t))) return st;
  const uint8_t *a = (const uint8_t *)lm_data(p), *b = (const uint8_t *)lm_data(t);
  int64_t n[4] = {0, 0, 0, 0}; /* indexed by 2 * pred + truth: tn, fn, fp, tp */
  for (int64_t i = 0; i < g.numel; i++) n[2 * a[i] + b[i]]++;
  counts[0] = n[3], counts[1] = n[2], counts[2] = n[1], counts[3] = n[0];
  lm_tensor_release(p);
  lm_tensor_release(t);
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* surface distances */

/* The k-th smallest (0-based) of v[0..n), reordering v so that it sits at
   v[k] with nothing larger before it and nothing smaller after it
   (quickselect; equal values are swapped across the pivot, so the many
   ties of voxel distances cost nothing extra). */
static double select_kth(double *v, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  while (hi > lo) {
    double a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
    double pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (v[i] < pivot) i++;
      while (v[j] > pivot) j--;
      if (i <= j) {
        double t = v[i];
        v[i++] = v[j], v[j--] = t;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break; /* between the parts: equal to the pivot */
  }
  return v[k];
}

/* numpy.percentile's default (linear) rule on v[0..n), which it reorders */
static double percentile(double *v, int64_t n, double q) {
  double at = q / 100.0 * (double)(n - 1);
  int64_t lo = (int64_t)floor(at);
  if (lo >= n - 1) return select_kth(v, n, n - 1);
  double a = select_kth(v, n, lo), b = v[lo + 1];
  for (int64_t i = lo + 2; i < n; i++) b = fmin(b, v[i]); /* the next order statistic */
  return a + (b - a) * (at - (double)lo);
}

/* Voxels of m (0/1 over grid g) with a face neighbour along a real axis
   that is 0 or outside the grid; returns how many. */
static int64_t surface(const lm_grid *g, const uint8_t *m, uint8_t *s) {
  const int64_t st[3] = {g->n[1] * g->n[2], g->n[2], 1};
  int64_t count = 0;
  for (int64_t i0 = 0; i0 < g->n[0]; i0++)
    for (int64_t i1 = 0; i1 < g->n[1]; i1++)
      for (int64_t i2 = 0; i2 < g->n[2]; i2++) {
        int64_t i = i0 * st[0] + i1 * st[1] + i2, at[3] = {i0, i1, i2};
        bool on = false;
        if (m[i])
          for (int a = 3 - g->nd; a < 3 && !on; a++)
            on = at[a] == 0 || at[a] == g->n[a] - 1 || !m[i - st[a]] || !m[i + st[a]];
        s[i] = on;
        count += on;
      }
  return count;
}

/* The crop of a full grid to the box [lo, hi) (inclusive lo, exclusive hi). */
static void crop(const lm_grid *g, const uint8_t *src, const int64_t *lo, const int64_t *hi, lm_grid *c, uint8_t *dst) {
  *c = *g;
  c->numel = 1;
  for (int a = 0; a < 3; a++) c->n[a] = hi[a] - lo[a], c->numel *= c->n[a];
  int64_t o = 0;
  for (int64_t i0 = lo[0]; i0 < hi[0]; i0++)
    for (int64_t i1 = lo[1]; i1 < hi[1]; i1++) {
      memcpy(dst + o, src + (i0 * g->n[1] + i1) * g->n[2] + lo[2], (size_t)c->n[2]);
      o += c->n[2];
    }
}

/* dist[k] for the k-th voxel (scan order) of surface `from`: distance in mm
   to the nearest voxel of surface `to`, via f (scratch of c's size). */
static lm_status directed(lm_ctx *ctx, const char *op, const lm_grid *c, const uint8_t *from, const uint8_t *to,
                          double *f, double *dist) {
  for (int64_t i = 0; i < c->numel; i++) f[i] = to[i] ? 0.0 : INFINITY;
  lm_status st = lm_edt_sq(ctx, op, c, f, false);
  if (st) return st;
  int64_t k = 0;
  for (int64_t i = 0; i < c->numel; i++)
    if (from[i]) dist[k++] = sqrt(f[i]);
  return LM_OK;
}

static double mean(const double *v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += v[i];
  return s / (double)n;
}

lm_status lm_surface_distance(lm_ctx *ctx, const lm_tensor *pred, const lm_tensor *truth, const double *spacing,
                              double q, double *result) {
  const char *op = "surface_distance";
  lm_grid g, c;
  lm_tensor *p = NULL, *t = NULL;
  uint8_t *buf = NULL;
  double *f = NULL, *dist = NULL;
  size_t buf_bytes = 0, f_bytes = 0, dist_bytes = 0;
  lm_status st;
  if (!result) return lm_err(ctx, LM_E_ARG, "%s: result is NULL", op);
  if (!(q >= 0 && q <= 100)) return lm_err(ctx, LM_E_ARG, "%s: percentile %g, expected 0 to 100", op, q);
  if ((st = mask_pair(ctx, op, pred, truth, spacing, &g, &p, &t))) return st;
  const uint8_t *a = (const uint8_t *)lm_data(p), *b = (const uint8_t *)lm_data(t);
  /* the box around both masks: the nearest surface voxel of one lies in it,
     and a mask voxel on the box's edge has background beyond it either way
     (the other mask is not there, or the volume ends), so cropping changes
     no surface and no distance */
  int64_t lo[3] = {g.n[0], g.n[1], g.n[2]}, hi[3] = {0, 0, 0}, na = 0, nb = 0;
  for (int64_t i0 = 0; i0 < g.n[0]; i0++)
    for (int64_t i1 = 0; i1 < g.n[1]; i1++)
      for (int64_t i2 = 0; i2 < g.n[2]; i2++) {
        int64_t i = (i0 * g.n[1] + i1) * g.n[2] + i2;
        na += a[i], nb += b[i];
        if (!(a[i] | b[i])) continue;
        int64_t at[3] = {i0, i1, i2};
        for (int k = 0; k < 3; k++) {
          if (at[k] < lo[k]) lo[k] = at[k];
          if (at[k] + 1 > hi[k]) hi[k] = at[k] + 1;
        }
      }
  if (na == 0 || nb == 0) { /* both empty: perfect; one empty: no distance */
    double v = (na == 0 && nb == 0) ? 0.0 : INFINITY;
    for (int k = 0; k < 6; k++) result[k] = v;
    goto done;
  }
  /* crops of both masks, then their surfaces, 4 bytes per voxel */
  size_t nbox = (size_t)((hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2]));
  buf_bytes = 4 * nbox, f_bytes = nbox * sizeof(double);
  buf = lm_alloc(ctx, buf_bytes);
  f = lm_alloc(ctx, f_bytes);
  if (!buf || !f) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for a box of %zu voxels", op, nbox);
    goto done;
  }
  uint8_t *ca = buf, *cb = buf + nbox, *sa = buf + 2 * nbox, *sb = buf + 3 * nbox;
  crop(&g, a, lo, hi, &c, ca);
  crop(&g, b, lo, hi, &c, cb);
  int64_t nsa = surface(&c, ca, sa), nsb = surface(&c, cb, sb);
  dist_bytes = (size_t)(2 * (nsa + nsb)) * sizeof(double);
  dist = lm_alloc(ctx, dist_bytes);
  if (!dist) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for %lld surface distances", op, (long long)(nsa + nsb));
    goto done;
  }
  double *da = dist, *db = dist + nsa, *both = dist + nsa + nsb;
  if ((st = directed(ctx, op, &c, sa, sb, f, da)) || (st = directed(ctx, op, &c, sb, sa, f, db))) goto done;
  double ma = mean(da, nsa), mb = mean(db, nsb);
  memcpy(both, da, (size_t)(nsa + nsb) * sizeof(double)); /* the union: da and db lie side by side */
  result[0] = percentile(both, nsa + nsb, q);
  result[1] = (ma + mb) / 2;
  result[2] = ma, result[3] = mb;
  result[4] = percentile(da, nsa, q);
  result[5] = percentile(db, nsb, q);
done:
  if (buf) lm_free(buf, buf_bytes);
  if (f) lm_free(f, f_bytes);
  if (dist) lm_free(dist, dist_bytes);
  lm_tensor_release(p);
  lm_tensor_release(t);
  return st;
}

/* ------------------------------------------------------------------ */

lm_status lm_label_overlap(lm_ctx *ctx, const lm_tensor *labels, const lm_tensor *mask, int64_t n_labels,
                           lm_tensor **out) {
  const char *op = "label_overlap";
  char b1[LM_SHAPE_BUF], b2[LM_SHAPE_BUF];
  lm_grid g;
  lm_tensor *l = NULL, *m = NULL, *r = NULL;
  lm_status st;
  if ((st = lm_check_input(ctx, op, labels, "labels"))) return st;
  if (labels->dtype != LM_I32 && labels->dtype != LM_I64 && labels->dtype != LM_U8)
    return lm_err(ctx, LM_E_DTYPE, "%s: labels are %s, expected i32, i64 or u8", op, lm_dtype_name(labels->dtype));
  if ((st = lm_mask_grid(ctx, op, mask, "mask", NULL, &g))) return st;
  bool same = labels->ndim == mask->ndim;
  for (int d = 0; same && d < mask->ndim; d++) same = labels->shape[d] == mask->shape[d];
  if (!same)
    return lm_err(ctx, LM_E_SHAPE, "%s: labels of shape %s and mask of shape %s, expected equal shapes", op,
                  LM_SHP(labels, b1), LM_SHP(mask, b2));
  if (n_labels < 1 || n_labels > g.numel + 1)
    return lm_err(ctx, LM_E_ARG, "%s: %lld labels, expected 1 to %lld", op, (long long)n_labels, (long long)g.numel + 1);
  if ((st = lm_new(ctx, op, LM_I64, labels->ndim, labels->shape, &l))) return st;
  if ((st = lm_copy_(ctx, l, labels)) || (st = lm_mask_bytes(ctx, op, mask, &m))) goto done;
  if ((st = lm_new(ctx, op, LM_I64, 1, &n_labels, &r))) goto done;
  int64_t *counts = (int64_t *)lm_data(r);
  memset(counts, 0, (size_t)n_labels * sizeof(int64_t));
  const int64_t *li = (const int64_t *)lm_data(l);
  const uint8_t *in = (const uint8_t *)lm_data(m);
  for (int64_t i = 0; i < g.numel; i++) {
    if (li[i] < 0 || li[i] >= n_labels) {
      st = lm_err(ctx, LM_E_INDEX, "%s: label %lld at flat position %lld, expected 0 to %lld", op, (long long)li[i],
                  (long long)i, (long long)(n_labels - 1));
      goto done;
    }
    counts[li[i]] += in[i];
  }
done:
  lm_tensor_release(l);
  if (m) lm_tensor_release(m);
  if (st) {
    if (r) lm_tensor_release(r);
    return st;
  }
  return lm_finish_out(r, out);
}
