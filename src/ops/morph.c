/* morph.c - binary masks: exact Euclidean distance transforms, connected
 * components, erosion and dilation by a ball, hole filling and Otsu's
 * threshold (lua/lumen/morph.lua; metrics.c builds its surface distances on
 * the same distance transform).
 *
 * A mask is any integer or bool tensor with 1 to 3 dims (nonzero = in),
 * strided or not; it is first copied to contiguous 0/1 bytes. Internally
 * every mask is 3-D: a 2-D mask H x W is 1 x H x W, and only the last nd
 * axes are "real" (a padded axis has no border and no spacing). */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* masks and grids */

lm_status lm_mask_grid(lm_ctx *ctx, const char *op, const lm_tensor *mask, const char *what, const double *spacing,
                       lm_grid *g) {
  char buf[LM_SHAPE_BUF];
  lm_status st;
  if ((st = lm_check_input(ctx, op, mask, what))) return st;
  if (lm_dtype_is_float(mask->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: %s is %s, expected an integer or bool mask (threshold or round it first)", op,
                  what, lm_dtype_name(mask->dtype));
  if (mask->ndim < 1 || mask->ndim > 3)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s is %d-D (%s), expected 1 to 3 spatial dims", op, what, mask->ndim,
                  LM_SHP(mask, buf));
  g->nd = mask->ndim;
  g->numel = 1;
  for (int a = 0; a < 3; a++) {
    int d = a - (3 - g->nd); /* the mask's dim, or < 0 for a padded axis */
    g->n[a] = d < 0 ? 1 : mask->shape[d];
    g->spacing[a] = 1.0;
    if (d >= 0 && spacing) {
      if (!(spacing[d] > 0) || !isfinite(spacing[d]))
        return lm_err(ctx, LM_E_ARG, "%s: spacing %g along dim %d, expected a positive finite number", op, spacing[d], d);
      g->spacing[a] = spacing[d];
    }
    g->numel *= g->n[a];
  }
  /* labels are i32 and line scratch is sized by axis: keep volumes sane */
  if (g->numel >= INT32_MAX)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s has %lld voxels, expected fewer than 2^31", op, what, (long long)g->numel);
  return LM_OK;
}

lm_status lm_mask_bytes(lm_ctx *ctx, const char *op, const lm_tensor *mask, lm_tensor **out) {
  lm_tensor *b = NULL;
  lm_status st = lm_new(ctx, op, LM_BOOL, mask->ndim, mask->shape, &b);
  if (!st) st = lm_copy_(ctx, b, mask); /* to bool: nonzero becomes 1 */
  if (st) {
    if (b) lm_tensor_release(b);
    return st;
  }
  *out = b;
  return LM_OK;
}

/* ------------------------------------------------------------------ */
/* Exact squared Euclidean distance transform, separable: one pass per real
   axis of the 1-D transform d(i) = min_q f(q) + ((i - q) h)^2, computed as
   the lower envelope of the parabolas rooted at each q with finite f(q)
   (Felzenszwalb and Huttenlocher, "Distance transforms of sampled
   functions", 2012). After the pass along the last axis, f holds the
   squared distance along that axis to the nearest feature in the same row;
   each later pass minimises over one more axis. With border set, the
   voxels just outside the volume are features too: parabolas of height 0
   at -1 and n on every line (the padded hyperplanes are all features, so
   their values stay 0 through every pass). */

typedef struct {
  double *f;
  int64_t n, stride, inner; /* line length, its stride, lines per outer block */
  double h;
  bool border;
  bool first; /* the first pass, along the contiguous last axis */
  atomic_bool oom;
} edt_pass;

static void edt_lines(void *arg, int64_t begin, int64_t end) {
  edt_pass *p = arg;
  const int64_t n = p->n;
  /* scratch: the line, envelope roots and values, boundaries */
  char *mem = malloc((size_t)(n + 3) * 5 * sizeof(double));
  if (!mem) {
    p->oom = true;
    return;
  }
  /* up to n + 2 parabolas (two on the border); z has one boundary more */
  double *line = (double *)mem, *pos = line + (n + 3), *val = pos + (n + 3), *key = val + (n + 3),
         *z = key + (n + 3);
  for (int64_t l = begin; l < end; l++) {
    double *base = p->f + (l / p->inner) * p->inner * n + (l % p->inner);
    if (p->first) { /* values are 0 or infinity: nearest feature by two sweeps */
      double last = p->border ? -1.0 : -INFINITY; /* none yet: infinitely far */
      for (int64_t i = 0; i < n; i++) {
        if (base[i] == 0) last = (double)i;
        line[i] = (double)i - last;
      }
      last = p->border ? (double)n : INFINITY;
      for (int64_t i = n - 1; i >= 0; i--) {
        if (base[i] == 0) last = (double)i;
        double d = fmin(line[i], last - (double)i) * p->h;
        base[i] = d * d;
      }
      continue;
    }
    for (int64_t i = 0; i < n; i++) line[i] = base[i * p->stride];
    /* envelope parabola k: root at position pos[k] (mm) with height val[k],
       key[k] = val + pos^2; it is lowest from z[k] to z[k + 1] */
    int64_t k = -1;
    /* candidates in increasing position: -1 (border), 0..n-1, n (border) */
    for (int64_t q = p->border ? -1 : 0; q <= (p->border ? n : n - 1); q++) {
      double fq = (q < 0 || q >= n) ? 0.0 : line[q];
      if (fq == INFINITY) continue;
      double pq = (double)q * p->h, kq = fq + pq * pq, s = -INFINITY;
      while (k >= 0) {
        s = (kq - key[k]) / (2.0 * (pq - pos[k]));
        if (s > z[k]) break;
        k--;
      }
      k++;
      pos[k] = pq, val[k] = fq, key[k] = kq;
      z[k] = k == 0 ? -INFINITY : s;
    }
    if (k < 0) continue; /* no feature on this line: stays infinite */
    z[k + 1] = INFINITY;
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++) {
      double x = (double)i * p->h;
      while (z[j + 1] < x) j++;
      double d = x - pos[j];
      base[i * p->stride] = d * d + val[j];
    }
  }
  free(mem);
}

lm_status lm_edt_sq(lm_ctx *ctx, const char *op, const lm_grid *g, double *f, bool border) {
  int64_t inner = 1;
  if (g->numel == 0) return LM_OK;
  for (int a = 2; a >= 3 - g->nd; a--) {
    edt_pass p = {f, g->n[a], inner, inner, g->spacing[a], border, a == 2, false};
    int64_t lines = g->numel / g->n[a];
    int64_t grain = 32768 / g->n[a];
    lm_parallel_for(ctx, lines, grain < 1 ? 1 : grain, edt_lines, &p);
    if (p.oom) return lm_err(ctx, LM_E_OOM, "%s: out of memory for distance transform lines of %lld", op, (long long)g->n[a]);
    inner *= g->n[a];
  }
  return LM_OK;
}

/* f = 0 where the byte equals feature, infinity elsewhere */
static void set_features(const uint8_t *m, int64_t n, uint8_t feature, double *f) {
  for (int64_t i = 0; i < n; i++) f[i] = m[i] == feature ? 0.0 : INFINITY;
}

lm_status lm_distance_transform(lm_ctx *ctx, const lm_tensor *mask, const double *spacing, lm_tensor **out) {
  const char *op = "distance_transform";
  lm_grid g;
  lm_tensor *m = NULL, *r = NULL;
  lm_status st;
  if ((st = lm_mask_grid(ctx, op, mask, "mask", spacing, &g))) return st;
  if ((st = lm_mask_bytes(ctx, op, mask, &m))) return st;
  if ((st = lm_new(ctx, op, LM_F64, mask->ndim, mask->shape, &r))) goto done;
  double *f = (double *)lm_data(r);
  set_features((const uint8_t *)lm_data(m), g.numel, 0, f);
  if ((st = lm_edt_sq(ctx, op, &g, f, false))) goto done;
  for (int64_t i = 0; i < g.numel; i++) f[i] = sqrt(f[i]);
done:
  lm_tensor_release(m);
  if (st) {
    if (r) lm_tensor_release(r);
    return st;
  }
  return lm_finish_out(r, out);
}

/* ------------------------------------------------------------------ */
/* erosion and dilation by the ball |o|^2 <= r^2 (voxel units): a voxel is
   in the dilation when a mask voxel lies within r of it, and in the
   erosion when no background voxel does; both read off one squared
   distance transform, whatever the radius. Squared distances between
   voxel centres are integers, exact in double. */

static lm_status ball_op(lm_ctx *ctx, const char *op, const lm_tensor *mask, int64_t radius, bool dilate,
                         int32_t border_value, lm_tensor **out) {
  lm_grid g;
  lm_tensor *m = NULL, *r = NULL;
  double *f = NULL;
  lm_status st;
  if ((st = lm_mask_grid(ctx, op, mask, "mask", NULL, &g))) return st;
  if (radius < 0 || radius > (INT64_C(1) << 24))
    return lm_err(ctx, LM_E_ARG, "%s: radius %lld, expected 0 to 2^24 voxels", op, (long long)radius);
  if (border_value != 0 && border_value != 1)
    return lm_err(ctx, LM_E_ARG, "%s: border value %d, expected 0 or 1", op, border_value);
  if ((st = lm_mask_bytes(ctx, op, mask, &m))) return st;
  if ((st = lm_new(ctx, op, LM_U8, mask->ndim, mask->shape, &r))) goto done;
  f = lm_alloc(ctx, (size_t)g.numel * sizeof(double));
  if (!f) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for a %lld-voxel distance map", op, (long long)g.numel);
    goto done;
  }
  const uint8_t *in = (const uint8_t *)lm_data(m);
  uint8_t *res = (uint8_t *)lm_data(r);
  double r2 = (double)radius * (double)radius;
  if (dilate) {
    set_features(in, g.numel, 1, f);
    if ((st = lm_edt_sq(ctx, op, &g, f, false))) goto done;
    for (int64_t i = 0; i < g.numel; i++) res[i] = f[i] <= r2;
  } else {
    set_features(in, g.numel, 0, f);
    if ((st = lm_edt_sq(ctx, op, &g, f, border_value == 0))) goto done;
    for (int64_t i = 0; i < g.numel; i++) res[i] = f[i] > r2;
  }
done:
  if (f) lm_free(f, (size_t)g.numel * sizeof(double));
  lm_tensor_release(m);
  if (st) {
    if (r) lm_tensor_release(r);
    return st;
  }
  return lm_finish_out(r, out);
}

lm_status lm_binary_erode(lm_ctx *ctx, const lm_tensor *mask, int64_t radius, int32_t border_value, lm_tensor **out) {
  return ball_op(ctx, "binary_erode", mask, radius, false, border_value, out);
}

lm_status lm_binary_dilate(lm_ctx *ctx, const lm_tensor *mask, int64_t radius, lm_tensor **out) {
  return ball_op(ctx, "binary_dilate", mask, radius, true, 0, out);
}

/* ------------------------------------------------------------------ */
/* Connected components by union-find in one raster scan: each voxel joins
   the neighbours already scanned (the half of the neighbourhood before it
   in C order). A root is always the smallest index of its set, so it is
   the component's first voxel in scan order; numbering roots as they come
   gives scipy.ndimage.label's order. rank: how many offsets may be nonzero
   (1: faces, 2: faces and edges, 3: all 26). */

static int32_t find_root(int32_t *parent, int32_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]]; /* path halving keeps parent[i] <= i */
    i = parent[i];
  }
  return i;
}

/* lab (numel i32) gets 0 outside and 1..n inside; returns n. */
static int64_t label_core(const lm_grid *g, const uint8_t *m, int rank, int32_t *lab) {
  const int64_t n0 = g->n[0], n1 = g->n[1], n2 = g->n[2];
  /* offsets before the centre in scan order */
  int off[13][3], noff = 0;
  for (int a = -1; a <= 0; a++)
    for (int b = -1; b <= 1; b++)
      for (int c = -1; c <= 1; c++) {
        if (a == 0 && (b > 0 || (b == 0 && c >= 0))) continue;
        if (abs(a) + abs(b) + abs(c) > rank) continue;
        off[noff][0] = a, off[noff][1] = b, off[noff][2] = c;
        noff++;
      }
  /* When the voxel to the left is in the mask, i joins it first (offset
     0, 0, -1 comes last... or anywhere: the order does not matter), and
     every offset o that is also a neighbour of the left voxel, o + (0, 0, 1)
     within rank and before it in scan order, joined the left voxel already.
     For full connectivity that leaves 5 of 13 offsets. */
  bool covered[13];
  for (int k = 0; k < noff; k++) {
    int a = off[k][0], b = off[k][1], c = off[k][2] + 1;
    bool is_left = off[k][0] == 0 && off[k][1] == 0 && off[k][2] == -1;
    bool before = a < 0 || (a == 0 && b < 0); /* c <= 1 here; (0, 0, c) is the left voxel or itself */
    covered[k] = !is_left && c <= 1 && before && abs(a) + abs(b) + abs(c) <= rank;
  }
  int32_t *parent = lab;
  for (int64_t i0 = 0; i0 < n0; i0++)
    for (int64_t i1 = 0; i1 < n1; i1++)
      for (int64_t i2 = 0; i2 < n2; i2++) {
        int32_t i = (int32_t)((i0 * n1 + i1) * n2 + i2);
        if (!m[i]) {
          parent[i] = -1;
          continue;
        }
        parent[i] = i;
        int32_t ri = i; /* the root of i's set so far */
        bool left = i2 > 0 && m[i - 1];
        for (int k = 0; k < noff; k++) {
          if (left && covered[k]) continue;
          int64_t j0 = i0 + off[k][0], j1 = i1 + off[k][1], j2 = i2 + off[k][2];
          if (j0 < 0 || j1 < 0 || j1 >= n1 || j2 < 0 || j2 >= n2) continue;
          int32_t j = (int32_t)((j0 * n1 + j1) * n2 + j2);
          if (!m[j]) continue;
          int32_t rj = find_root(parent, j);
          if (ri < rj) parent[rj] = ri;
          else if (rj < ri) parent[ri] = rj, ri = rj;
        }
      }
  /* every parent is below its child, so one forward pass points each voxel
     at its root (its parent's parent is already the root) */
  for (int64_t i = 0; i < g->numel; i++)
    if (parent[i] >= 0) parent[i] = parent[parent[i]];
  /* and a second numbers the roots in scan order, writing labels over the
     parent slots: a voxel's root is earlier, so its slot holds a label now */
  int64_t n = 0;
  for (int64_t i = 0; i < g->numel; i++) {
    int32_t p = parent[i];
    if (p < 0) lab[i] = 0;
    else if (p == i) lab[i] = (int32_t)++n;
    else lab[i] = lab[p];
  }
  return n;
}

/* connectivity as a neighbour count -> rank; 0 on a count that does not fit nd */
static int connectivity_rank(int32_t nd, int32_t connectivity) {
  if (nd == 3) return connectivity == 6 ? 1 : connectivity == 18 ? 2 : connectivity == 26 ? 3 : 0;
  if (nd == 2) return connectivity == 4 ? 1 : connectivity == 8 ? 2 : 0;
  return connectivity == 2 ? 1 : 0;
}

lm_status lm_label_components(lm_ctx *ctx, const lm_tensor *mask, int32_t connectivity, lm_tensor **labels,
                              lm_tensor **sizes) {
  const char *op = "label_components";
  lm_grid g;
  lm_tensor *m = NULL, *lab = NULL, *sz = NULL;
  lm_status st;
  if ((st = lm_mask_grid(ctx, op, mask, "mask", NULL, &g))) return st;
  int rank = connectivity_rank(g.nd, connectivity);
  if (!rank)
    return lm_err(ctx, LM_E_ARG, "%s: connectivity %d for a %d-D mask, expected %s", op, connectivity, g.nd,
                  g.nd == 3 ? "6, 18 or 26" : g.nd == 2 ? "4 or 8" : "2");
  if ((st = lm_mask_bytes(ctx, op, mask, &m))) return st;
  if ((st = lm_new(ctx, op, LM_I32, mask->ndim, mask->shape, &lab))) goto done;
  int32_t *l = (int32_t *)lm_data(lab);
  int64_t n = label_core(&g, (const uint8_t *)lm_data(m), rank, l);
  int64_t count = n + 1;
  if ((st = lm_new(ctx, op, LM_I64, 1, &count, &sz))) goto done;
  int64_t *s = (int64_t *)lm_data(sz);
  memset(s, 0, (size_t)count * sizeof(int64_t));
  for (int64_t i = 0; i < g.numel; i++) s[l[i]]++;
done:
  lm_tensor_release(m);
  if (st) {
    if (lab) lm_tensor_release(lab);
    if (sz) lm_tensor_release(sz);
    return st;
  }
  lm_finish_out(lab, labels);
  return lm_finish_out(sz, sizes);
}

lm_status lm_label_select(lm_ctx *ctx, const lm_tensor *labels, const uint8_t *keep, int64_t n_keep, lm_tensor **out) {
  const char *op = "label_select";
  char buf[LM_SHAPE_BUF];
  lm_tensor *l = NULL, *r = NULL;
  lm_status st;
  if ((st = lm_check_input(ctx, op, labels, "labels"))) return st;
  if (labels->dtype != LM_I32 && labels->dtype != LM_I64 && labels->dtype != LM_U8)
    return lm_err(ctx, LM_E_DTYPE, "%s: labels are %s, expected i32, i64 or u8", op, lm_dtype_name(labels->dtype));
  if (!keep || n_keep < 1) return lm_err(ctx, LM_E_ARG, "%s: the keep table is empty", op);
  if ((st = lm_new(ctx, op, LM_I64, labels->ndim, labels->shape, &l))) return st;
  if ((st = lm_copy_(ctx, l, labels))) goto done;
  if ((st = lm_new(ctx, op, LM_U8, labels->ndim, labels->shape, &r))) goto done;
  const int64_t *li = (const int64_t *)lm_data(l), numel = lm_numel(labels);
  uint8_t *res = (uint8_t *)lm_data(r);
  for (int64_t i = 0; i < numel; i++) {
    if (li[i] < 0 || li[i] >= n_keep) {
      st = lm_err(ctx, LM_E_INDEX, "%s: label %lld in labels of shape %s, expected 0 to %lld", op, (long long)li[i],
                  LM_SHP(labels, buf), (long long)(n_keep - 1));
      goto done;
    }
    res[i] = keep[li[i]] != 0;
  }
done:
  lm_tensor_release(l);
  if (st) {
    if (r) lm_tensor_release(r);
    return st;
  }
  return lm_finish_out(r, out);
}

/* ------------------------------------------------------------------ */
/* Holes: background components (face connectivity, as
   scipy.ndimage.binary_fill_holes' default structure) that touch no border
   of a real axis become foreground. */

lm_status lm_fill_holes(lm_ctx *ctx, const lm_tensor *mask, lm_tensor **out) {
  const char *op = "fill_holes";
  lm_grid g;
  lm_tensor *m = NULL, *r = NULL;
  int32_t *lab = NULL;
  uint8_t *open = NULL;
  int64_t n = 0;
  lm_status st;
  if ((st = lm_mask_grid(ctx, op, mask, "mask", NULL, &g))) return st;
  if ((st = lm_mask_bytes(ctx, op, mask, &m))) return st;
  if ((st = lm_new(ctx, op, LM_U8, mask->ndim, mask->shape, &r))) goto done;
  uint8_t *res = (uint8_t *)lm_data(r);
  const uint8_t *in = (const uint8_t *)lm_data(m);
  for (int64_t i = 0; i < g.numel; i++) res[i] = !in[i]; /* the background, labelled below */
  lab = lm_alloc(ctx, (size_t)g.numel * sizeof(int32_t));
  if (!lab) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for %lld labels", op, (long long)g.numel);
    goto done;
  }
  n = label_core(&g, res, 1, lab);
  open = lm_alloc(ctx, (size_t)n + 1);
  if (!open) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for %lld labels", op, (long long)n);
    goto done;
  }
  memset(open, 0, (size_t)n + 1);
  open[0] = 1; /* the mask itself */
  for (int64_t i0 = 0; i0 < g.n[0]; i0++)
    for (int64_t i1 = 0; i1 < g.n[1]; i1++)
      for (int64_t i2 = 0; i2 < g.n[2]; i2++) {
        int64_t i[3] = {i0, i1, i2};
        bool border = false;
        for (int a = 3 - g.nd; a < 3; a++) border = border || i[a] == 0 || i[a] == g.n[a] - 1;
        if (border) open[lab[(i0 * g.n[1] + i1) * g.n[2] + i2]] = 1;
      }
  for (int64_t i = 0; i < g.numel; i++) res[i] = in[i] || !open[lab[i]];
done:
  if (lab) lm_free(lab, (size_t)g.numel * sizeof(int32_t));
  if (open) lm_free(open, (size_t)n + 1);
  lm_tensor_release(m);
  if (st) {
    if (r) lm_tensor_release(r);
    return st;
  }
  return lm_finish_out(r, out);
}

/* ------------------------------------------------------------------ */
/* Otsu's threshold on a histogram of bins equal bins over [min, max] of the
   (masked) values, binned as numpy.histogram does; the threshold is the
   centre of the bin that maximises the between-class variance
   w1 w2 (m1 - m2)^2 of the split after it (skimage's threshold_otsu for
   float images). All values equal: that value. */

lm_status lm_otsu(lm_ctx *ctx, const lm_tensor *image, const lm_tensor *mask, int32_t bins, double *threshold) {
  const char *op = "otsu";
  char b1[LM_SHAPE_BUF], b2[LM_SHAPE_BUF];
  lm_tensor *x = NULL, *m = NULL;
  double *hist = NULL;
  lm_status st;
  if ((st = lm_check_input(ctx, op, image, "image"))) return st;
  if (!threshold) return lm_err(ctx, LM_E_ARG, "%s: threshold is NULL", op);
  if (image->dtype == LM_BOOL) return lm_err(ctx, LM_E_DTYPE, "%s: image is bool, expected numbers", op);
  if (bins < 2 || bins > (1 << 24)) return lm_err(ctx, LM_E_ARG, "%s: %d bins, expected 2 to 2^24", op, bins);
  if (mask) {
    if ((st = lm_check_input(ctx, op, mask, "mask"))) return st;
    if (lm_dtype_is_float(mask->dtype))
      return lm_err(ctx, LM_E_DTYPE, "%s: mask is %s, expected an integer or bool mask", op, lm_dtype_name(mask->dtype));
    bool same = mask->ndim == image->ndim;
    for (int d = 0; same && d < image->ndim; d++) same = mask->shape[d] == image->shape[d];
    if (!same)
      return lm_err(ctx, LM_E_SHAPE, "%s: mask of shape %s and image of shape %s, expected equal shapes", op,
                    LM_SHP(mask, b1), LM_SHP(image, b2));
  }
  if ((st = lm_new(ctx, op, LM_F64, image->ndim, image->shape, &x))) return st;
  if ((st = lm_copy_(ctx, x, image))) goto done;
  if (mask && (st = lm_mask_bytes(ctx, op, mask, &m))) goto done;
  const double *v = (const double *)lm_data(x);
  const uint8_t *in = m ? (const uint8_t *)lm_data(m) : NULL;
  int64_t numel = lm_numel(image), count = 0;
  double lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < numel; i++) {
    if (in && !in[i]) continue;
    if (!isfinite(v[i])) {
      st = lm_err(ctx, LM_E_ARG, "%s: the image holds %g at flat position %lld, expected finite values", op, v[i],
                  (long long)i);
      goto done;
    }
    lo = fmin(lo, v[i]), hi = fmax(hi, v[i]);
    count++;
  }
  if (count == 0) {
    st = lm_err(ctx, LM_E_ARG, "%s: no voxels to threshold (%s)", op, mask ? "the mask is empty" : "the image is empty");
    goto done;
  }
  if (lo == hi) {
    *threshold = lo;
    goto done;
  }
  hist = lm_alloc(ctx, (size_t)bins * sizeof(double));
  if (!hist) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for %d bins", op, bins);
    goto done;
  }
  memset(hist, 0, (size_t)bins * sizeof(double));
  /* edges as numpy.linspace(lo, hi, bins + 1); the index from the scaled
     offset, then moved by one where rounding put a value across an edge */
  double width = (hi - lo) / bins, norm = bins / (hi - lo);
#define EDGE(k) ((k) == bins ? hi : lo + (double)(k) * width)
  for (int64_t i = 0; i < numel; i++) {
    if (in && !in[i]) continue;
    int64_t k = (int64_t)((v[i] - lo) * norm);
    if (k >= bins) k = bins - 1;
    if (v[i] < EDGE(k)) k--;
    else if (k < bins - 1 && v[i] >= EDGE(k + 1)) k++;
    hist[k] += 1;
  }
  /* class 1 = bins 0..k, class 2 = bins k+1..: the mean of class 2 from
     sums taken from the top down (as skimage, so that near-ties between
     bins resolve alike); bin 0 and the last bin are never empty */
  double *w2 = lm_alloc(ctx, (size_t)bins * 2 * sizeof(double));
  if (!w2) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory for %d bins", op, bins);
    goto done;
  }
  double *s2 = w2 + bins, wsum = 0, ssum = 0;
  for (int k = bins - 1; k >= 0; k--) {
    wsum += hist[k], ssum += hist[k] * ((EDGE(k) + EDGE(k + 1)) / 2);
    w2[k] = wsum, s2[k] = ssum;
  }
  double w1 = 0, s1 = 0, best = -1;
  int best_k = 0;
  for (int k = 0; k < bins - 1; k++) {
    w1 += hist[k], s1 += hist[k] * ((EDGE(k) + EDGE(k + 1)) / 2);
    double diff = s1 / w1 - s2[k + 1] / w2[k + 1], var = w1 * w2[k + 1] * diff * diff;
    if (var > best) best = var, best_k = k;
  }
  lm_free(w2, (size_t)bins * 2 * sizeof(double));
  *threshold = (EDGE(best_k) + EDGE(best_k + 1)) / 2;
#undef EDGE
done:
  if (hist) lm_free(hist, (size_t)bins * sizeof(double));
  lm_tensor_release(x);
  if (m) lm_tensor_release(m);
  return st;
}
