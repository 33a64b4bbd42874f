/* lattice.c - Gaussian filtering in feature space on the permutohedral
 * lattice (Adams, Baek and Davis, Eurographics 2010).
 *
 * Features f in R^d (divided by their sigmas) are embedded in the plane
 * H = {x in R^(d+1) : sum x = 0}, which the lattice A*_d tiles with
 * congruent simplices. Each point splats its value onto the d+1 corners of
 * its simplex with barycentric weights, the lattice is blurred with
 * [1/4 1/2 1/4] along each of its d+1 axes u_j = (d+1) e_j - (1,...,1), and
 * each point reads back (slices) its corners with the same weights.
 *
 * Scale: the blurs have covariance sum_j u_j u_j^T / 2 = (d+1)^2 / 2 on H;
 * splatting and slicing each convolve with the piecewise-linear hat of a
 * vertex, whose variance per direction is (d+1)^2 / 12 on this lattice. So
 * the lattice applies a Gaussian of variance s^2 = (2/3)(d+1)^2, and the
 * embedding scales features by s for the result to be exp(-|fi - fj|^2/2).
 * A vertex stands for a cell of volume (d+1)^(d - 1/2) of H (the points of
 * remainder 0 are (d+1) A_d, of covolume (d+1)^d sqrt(d+1), and there are
 * d+1 remainders), and mass is conserved by the normalised blur, so the
 * sliced values times (2 pi s^2)^(d/2) / (d+1)^(d - 1/2) approximate the
 * unnormalised sums sum_j exp(-|fi - fj|^2 / 2) v_j.
 *
 * Vertices are found with a hash table keyed by their first d integer
 * coordinates (the last one makes the sum zero). The blur only moves mass
 * between vertices some point touched; what would land elsewhere is lost,
 * as in the paper. */
#include "crf.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COORD_LIMIT 1000000000.0 /* lattice coordinates must fit int32 */

typedef struct hash_table {
  int32_t d;
  int64_t cap;     /* slots, a power of two */
  int32_t *slot;   /* vertex index, -1 when empty */
  int32_t *keys;   /* m x d */
  int64_t m, keys_cap;
} hash_table;

static uint64_t hash_key(const int32_t *k, int32_t d) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (int32_t i = 0; i < d; i++) {
    h ^= (uint32_t)k[i];
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
  }
  return h;
}

static lm_status table_init(const crf_env *e, hash_table *t, int32_t d, int64_t expect) {
  memset(t, 0, sizeof *t);
  t->d = d;
  t->cap = 1024;
  while (t->cap < 2 * expect) t->cap *= 2;
  t->keys_cap = t->cap / 2;
  t->slot = crf_alloc(e, (size_t)t->cap * sizeof *t->slot);
  t->keys = crf_alloc(e, (size_t)t->keys_cap * (size_t)d * sizeof *t->keys);
  if (!t->slot || !t->keys) return crf_oom(e, "the lattice hash table", (size_t)t->cap * (sizeof *t->slot + (size_t)d * 2));
  memset(t->slot, 0xff, (size_t)t->cap * sizeof *t->slot);
  return LM_OK;
}

static void table_free(const crf_env *e, hash_table *t) {
  crf_free(e, t->slot, (size_t)t->cap * sizeof *t->slot);
  crf_free(e, t->keys, (size_t)t->keys_cap * (size_t)t->d * sizeof *t->keys);
  t->slot = NULL;
  t->keys = NULL;
}

/* The slot of key: its vertex, or the empty slot where it would go. */
static int64_t table_probe(const hash_table *t, const int32_t *key) {
  int64_t mask = t->cap - 1, s = (int64_t)(hash_key(key, t->d) & (uint64_t)mask);
  for (;;) {
    int32_t v = t->slot[s];
    if (v < 0 || memcmp(t->keys + (int64_t)v * t->d, key, (size_t)t->d * sizeof *key) == 0) return s;
    s = (s + 1) & mask;
  }
}

static int32_t table_find(const hash_table *t, const int32_t *key) { return t->slot[table_probe(t, key)]; }

/* Doubles the slots when half full, and the key store when full. */
static lm_status table_grow(const crf_env *e, hash_table *t) {
  if (t->m >= INT32_MAX - 1) return e->host->set_error(e->ctx, LM_E_UNSUPPORTED, "%s: the lattice has over 2^31 vertices", e->op);
  if (t->m < t->keys_cap && 2 * t->m < t->cap) return LM_OK;
  int64_t cap = t->cap * 2, keys_cap = cap / 2;
  int32_t *slot = crf_alloc(e, (size_t)cap * sizeof *slot);
  int32_t *keys = crf_alloc(e, (size_t)keys_cap * (size_t)t->d * sizeof *keys);
  if (!slot || !keys) {
    crf_free(e, slot, (size_t)cap * sizeof *slot);
    crf_free(e, keys, (size_t)keys_cap * (size_t)t->d * sizeof *keys);
    return crf_oom(e, "the lattice hash table", (size_t)cap * sizeof *slot);
  }
  memcpy(keys, t->keys, (size_t)t->m * (size_t)t->d * sizeof *keys);
  crf_free(e, t->keys, (size_t)t->keys_cap * (size_t)t->d * sizeof *t->keys);
  crf_free(e, t->slot, (size_t)t->cap * sizeof *t->slot);
  memset(slot, 0xff, (size_t)cap * sizeof *slot);
  t->slot = slot;
  t->keys = keys;
  t->cap = cap;
  t->keys_cap = keys_cap;
  for (int64_t v = 0; v < t->m; v++) t->slot[table_probe(t, t->keys + v * t->d)] = (int32_t)v;
  return LM_OK;
}

/* The vertex of key, added when new; -1 with the error set when out of memory. */
static int32_t table_insert(const crf_env *e, hash_table *t, const int32_t *key, lm_status *st) {
  int64_t s = table_probe(t, key);
  if (t->slot[s] >= 0) return t->slot[s];
  if ((*st = table_grow(e, t))) return -1;
  s = table_probe(t, key); /* the table may have been rebuilt */
  int32_t v = (int32_t)t->m++;
  memcpy(t->keys + (int64_t)v * t->d, key, (size_t)t->d * sizeof *key);
  t->slot[s] = v;
  return v;
}

/* The simplex of the lattice that holds x (on H, d+1 coordinates): its
   corners' first d coordinates keys[r*d + j] and barycentric weights b[r],
   r = 0..d. Corner r of the canonical simplex is (r, ..., r, r-d-1, ...,
   r-d-1) with d+1-r leading r's; the simplex holding x is a translate of a
   permutation of it, found from the nearest point of remainder 0 and the
   order of x's differences from it (Adams et al., section 3.1). */
static void enclosing_simplex(const double *x, int32_t d, int32_t *keys, double *b) {
  const int32_t d1 = d + 1;
  int32_t rem0[CRF_MAX_FEATURES + 1], rank[CRF_MAX_FEATURES + 1];
  double diff[CRF_MAX_FEATURES + 1];
  int32_t sum = 0;
  for (int32_t j = 0; j < d1; j++) {
    double r = nearbyint(x[j] / d1);
    rem0[j] = (int32_t)r * d1;
    sum += (int32_t)r;
    diff[j] = x[j] - rem0[j];
  }
  /* rank j: how many coordinates differ by more (ties broken by index) */
  for (int32_t j = 0; j < d1; j++) rank[j] = 0;
  for (int32_t j = 0; j < d1; j++)
    for (int32_t k = j + 1; k < d1; k++) {
      if (diff[j] < diff[k]) rank[j]++;
      else rank[k]++;
    }
  /* The rounded point lies off H by sum * (d+1): move the coordinates
     that rounded the furthest back by one step of d+1, keeping the ranks a
     permutation of 0..d. */
  if (sum > 0) {
    for (int32_t j = 0; j < d1; j++) {
      if (rank[j] >= d1 - sum) {
        rem0[j] -= d1;
        rank[j] += sum - d1;
      } else {
        rank[j] += sum;
      }
    }
  } else if (sum < 0) {
    for (int32_t j = 0; j < d1; j++) {
      if (rank[j] < -sum) {
        rem0[j] += d1;
        rank[j] += d1 + sum;
      } else {
        rank[j] += sum;
      }
    }
  }
  double bb[CRF_MAX_FEATURES + 2];
  for (int32_t r = 0; r <= d1; r++) bb[r] = 0;
  for (int32_t j = 0; j < d1; j++) {
    double delta = (x[j] - rem0[j]) / d1;
    bb[d - rank[j]] += delta;
    bb[d1 - rank[j]] -= delta;
  }
  bb[0] += 1.0 + bb[d1];
  for (int32_t r = 0; r < d1; r++) {
    b[r] = bb[r];
    for (int32_t j = 0; j < d; j++) keys[r * d + j] = rem0[j] + r - (rank[j] >= d1 - r ? d1 : 0);
  }
}

/* x = s E f: E has the orthonormal basis (1,..,1,-k,0,..)/sqrt(k(k+1)),
   k = 1..d, of H as columns. */
static void elevate(const double *f, int32_t d, double *x) {
  const double s = sqrt(2.0 / 3.0) * (d + 1);
  double acc = 0;
  for (int32_t j = d; j >= 0; j--) {
    double c = j > 0 ? 1.0 / sqrt((double)j * (j + 1)) : 0;
    x[j] = s * (acc - (j > 0 ? j * c * f[j - 1] : 0));
    if (j > 0) acc += c * f[j - 1];
  }
}

void crf_lattice_free(const crf_env *e, crf_lattice *L) {
  int64_t nd1 = L->n * (L->d + 1);
  crf_free(e, L->vert, (size_t)nd1 * sizeof *L->vert);
  crf_free(e, L->bary, (size_t)nd1 * sizeof *L->bary);
  crf_free(e, L->nbr, L->nbr_bytes);
  memset(L, 0, sizeof *L);
}

lm_status crf_lattice_build(const crf_env *e, int64_t n, int32_t d, crf_feature_fn feature, const void *arg, crf_lattice *L) {
  memset(L, 0, sizeof *L);
  if (d < 1 || d > CRF_MAX_FEATURES)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: %d feature dims, expected 1 to %d", e->op, (int)d, CRF_MAX_FEATURES);
  const int32_t d1 = d + 1;
  L->d = d;
  L->n = n;
  if ((int64_t)n * d1 >= INT64_MAX / 8) return crf_oom(e, "the lattice", SIZE_MAX);
  L->vert = crf_alloc(e, (size_t)(n * d1) * sizeof *L->vert);
  L->bary = crf_alloc(e, (size_t)(n * d1) * sizeof *L->bary);
  hash_table t;
  memset(&t, 0, sizeof t);
  lm_status st = LM_OK;
  if (!L->vert || !L->bary) {
    st = crf_oom(e, "the lattice splat weights", (size_t)(n * d1) * 8);
    goto fail;
  }
  if ((st = table_init(e, &t, d, n / 8 + 16))) goto fail;

  double f[CRF_MAX_FEATURES], x[CRF_MAX_FEATURES + 1], b[CRF_MAX_FEATURES + 1];
  int32_t keys[(CRF_MAX_FEATURES + 1) * CRF_MAX_FEATURES];
  for (int64_t i = 0; i < n; i++) {
    feature(arg, i, f);
    elevate(f, d, x);
    for (int32_t j = 0; j < d1; j++) {
      if (!(fabs(x[j]) < COORD_LIMIT)) {
        st = e->host->set_error(e->ctx, LM_E_ARG,
                                "%s: feature %lld is %g after scaling by 1/sigma (a sigma too small for the range of positions or intensities, or a NaN)",
                                e->op, (long long)i, f[j < d ? j : d - 1]);
        goto fail;
      }
    }
    enclosing_simplex(x, d, keys, b);
    for (int32_t r = 0; r < d1; r++) {
      int32_t v = table_insert(e, &t, keys + r * d, &st);
      if (v < 0) goto fail;
      L->vert[i * d1 + r] = v;
      L->bary[i * d1 + r] = (float)b[r];
    }
    if ((i & 0xfffff) == 0xfffff && (st = crf_check_abort(e))) goto fail;
  }
  /* Add the neighbours of every splatted vertex along every axis: the blur
     then carries mass through them instead of dropping it. Points on a
     thin manifold of feature space (an image whose intensity varies
     smoothly) touch few vertices around them, and without this ring the
     sums came out 10-40% low; with it the median error stays near 2-5%. */
  int64_t touched = t.m;
  int32_t ring[CRF_MAX_FEATURES];
  for (int64_t v = 0; v < touched; v++) {
    for (int32_t j = 0; j < d1; j++) {
      for (int32_t sgn = -1; sgn <= 1; sgn += 2) {
        const int32_t *k = t.keys + v * d; /* re-read: inserting may move the keys */
        for (int32_t c = 0; c < d; c++) ring[c] = k[c] - sgn + (c == j ? sgn * d1 : 0);
        if (table_insert(e, &t, ring, &st) < 0) goto fail;
      }
    }
  }
  L->m = t.m;

  /* neighbours along each lattice axis, both ways */
  L->nbr_bytes = (size_t)(L->m * d1 * 2) * sizeof *L->nbr;
  L->nbr = crf_alloc(e, L->nbr_bytes);
  if (!L->nbr) {
    st = crf_oom(e, "the lattice neighbours", L->nbr_bytes);
    goto fail;
  }
  int32_t up[CRF_MAX_FEATURES], down[CRF_MAX_FEATURES];
  for (int64_t v = 0; v < L->m; v++) {
    const int32_t *k = t.keys + v * d;
    for (int32_t j = 0; j < d1; j++) {
      for (int32_t c = 0; c < d; c++) {
        up[c] = k[c] - 1 + (c == j ? d1 : 0);
        down[c] = k[c] + 1 - (c == j ? d1 : 0);
      }
      L->nbr[(v * d1 + j) * 2] = table_find(&t, up);
      L->nbr[(v * d1 + j) * 2 + 1] = table_find(&t, down);
    }
  }
  table_free(e, &t);
  const double s2 = 2.0 / 3.0 * d1 * d1;
  L->gain = pow(2 * M_PI * s2, 0.5 * d) / pow((double)d1, d - 0.5);
  return LM_OK;
fail:
  table_free(e, &t);
  L->m = 0;
  crf_lattice_free(e, L);
  return st;
}

/* ---- filtering ---- */

typedef struct blur_job {
  const crf_lattice *L;
  const double *src;
  double *dst;
  int32_t nv, axis;
} blur_job;

static void blur_span(void *arg, int64_t b, int64_t e) {
  const blur_job *j = arg;
  const int32_t d1 = j->L->d + 1, nv = j->nv;
  for (int64_t v = b; v < e; v++) {
    const int32_t *nb = j->L->nbr + (v * d1 + j->axis) * 2;
    const double *s = j->src + v * nv;
    double *o = j->dst + v * nv;
    const double *a = nb[0] >= 0 ? j->src + (int64_t)nb[0] * nv : NULL;
    const double *c = nb[1] >= 0 ? j->src + (int64_t)nb[1] * nv : NULL;
    for (int32_t k = 0; k < nv; k++) {
      double acc = 0.5 * s[k];
      if (a) acc += 0.25 * a[k];
      if (c) acc += 0.25 * c[k];
      o[k] = acc;
    }
  }
}

typedef struct slice_job {
  const crf_lattice *L;
  const double *vals;
  double *out;
  int64_t ostride;
  int32_t nv, accumulate;
  double scale;
} slice_job;

static void slice_span(void *arg, int64_t b, int64_t e) {
  const slice_job *j = arg;
  const int32_t d1 = j->L->d + 1, nv = j->nv;
  double acc[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    for (int32_t k = 0; k < nv; k++) acc[k] = 0;
    for (int32_t r = 0; r < d1; r++) {
      double w = j->L->bary[i * d1 + r];
      const double *src = j->vals + (int64_t)j->L->vert[i * d1 + r] * nv;
      for (int32_t k = 0; k < nv; k++) acc[k] += w * src[k];
    }
    for (int32_t k = 0; k < nv; k++) {
      double v = j->scale * acc[k];
      double *o = j->out + k * j->ostride + i;
      *o = j->accumulate ? *o + v : v;
    }
  }
}

lm_status crf_lattice_filter(const crf_env *e, const crf_lattice *L, const double *in, int64_t istride, double *out,
                             int64_t ostride, int32_t nv, double scale, int accumulate, int reverse) {
  if (nv < 1 || nv > CRF_MAX_LABELS)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: %d values per point, expected 1 to %d", e->op, (int)nv, CRF_MAX_LABELS);
  const int32_t d1 = L->d + 1;
  size_t bytes = (size_t)(L->m * nv) * sizeof(double);
  double *a = crf_alloc(e, bytes), *b = crf_alloc(e, bytes);
  if (!a || !b) {
    crf_free(e, a, bytes);
    crf_free(e, b, bytes);
    return crf_oom(e, "the lattice values", 2 * bytes);
  }
  memset(a, 0, bytes);
  /* splat: a scatter, kept on one thread (it is a small share of the time) */
  for (int64_t i = 0; i < L->n; i++) {
    for (int32_t r = 0; r < d1; r++) {
      double w = L->bary[i * d1 + r];
      double *dst = a + (int64_t)L->vert[i * d1 + r] * nv;
      for (int32_t k = 0; k < nv; k++) dst[k] += w * in[k * istride + i];
    }
  }
  for (int32_t s = 0; s < d1; s++) {
    blur_job j = { L, a, b, nv, reverse ? d1 - 1 - s : s };
    e->host->parallel_for(e->ctx, L->m, 4096, blur_span, &j);
    double *t = a;
    a = b;
    b = t;
  }
  slice_job sj = { L, a, out, ostride, nv, accumulate, scale * L->gain };
  e->host->parallel_for(e->ctx, L->n, 8192, slice_span, &sj);
  crf_free(e, a, bytes);
  crf_free(e, b, bytes);
  return LM_OK;
}
