/* crf.c - the crf plugin: its entry point, its ops and their argument checks.
 *
 * Ops (inputs; numeric params; outputs):
 *
 *   crf_meanfield   logits B x K x S, image B x C x S (C may be 0), compat K x K,
 *                   weights (2: spatial, bilateral);
 *                   ndim, iterations, use_spatial, use_bilateral, normalize,
 *                   probs_eps (> 0: input 0 holds probabilities P and the
 *                   logits are log(max(P, eps))), out_probs (1: return the
 *                   softmax), sigma_spatial_mm, sigma_bilateral_mm,
 *                   spacing[ndim], sigma_int[C];
 *                   the logits (or probabilities) after mean field, B x K x S
 *                   (differentiable in input 0, compat and weights)
 *   crf_lattice_filter  features N x d (already divided by their sigmas), values N x V;
 *                   (none);
 *                   sum_j exp(-|fi - fj|^2 / 2) v_j on the permutohedral lattice,
 *                   N x V (differentiable in values)
 *   crf_grid        unary costs K x S, image C x S;
 *                   ndim, neighbours, lambda, beta (< 0: automatic), solver
 *                   (0 graph cut, 1 alpha-expansion, 2 ICM), max_sweeps, spacing[ndim];
 *                   labels (i64, S) and energy (f64, one element)
 *   crf_grid_energy unary K x S, image C x S, labels S (i64);
 *                   the params of crf_grid; the energy (f64, one element)
 *
 * S is the spatial shape (1 to 3 dims). Float inputs may be f32 or f64; the
 * kernels compute in f64 and outputs take the dtype of the first input. */
#include "crf.h"
#include "grid.h"
#include "meanfield.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers shared by the files of the plugin ---- */

void *crf_alloc(const crf_env *e, size_t nbytes) { return e->host->alloc(e->ctx, nbytes ? nbytes : 1); }

void crf_free(const crf_env *e, void *p, size_t nbytes) {
  if (p) e->host->free(p, nbytes ? nbytes : 1);
}

lm_status crf_oom(const crf_env *e, const char *what, size_t nbytes) {
  if (!e->ctx) return LM_E_OOM; /* a worker thread: the caller reports it */
  return e->host->set_error(e->ctx, LM_E_OOM, "%s: out of memory for %s (%.1f MB)", e->op, what, (double)nbytes / 1048576.0);
}

lm_status crf_check_abort(const crf_env *e) {
  if (e->host->abort_requested(e->ctx)) return e->host->set_error(e->ctx, LM_E_ABORTED, "%s: stopped (abort requested)", e->op);
  return LM_OK;
}

static const char *dtype_name(int32_t d) {
  static const char *const names[] = { "f32", "f64", "i32", "i64", "u8", "bool" };
  return d >= 0 && d < LM_NDTYPES ? names[d] : "unknown";
}

static void shape_str(const lm_tensor_info *t, char *buf, size_t len) {
  size_t at = 0;
  buf[0] = 0;
  if (t->ndim == 0) snprintf(buf, len, "a scalar");
  for (int32_t i = 0; i < t->ndim && at + 24 < len; i++)
    at += (size_t)snprintf(buf + at, len - at, i ? "x%lld" : "%lld", (long long)t->shape[i]);
}

/* A float tensor on the CPU; name says which input in messages. */
static lm_status check_float(const crf_env *e, const lm_tensor *t, const char *name, lm_tensor_info *info) {
  e->host->tensor_info(t, info);
  if (info->device != LM_CPU) return e->host->set_error(e->ctx, LM_E_DEVICE, "%s: %s must be on the CPU", e->op, name);
  if (info->dtype != LM_F32 && info->dtype != LM_F64)
    return e->host->set_error(e->ctx, LM_E_DTYPE, "%s: %s must be f32 or f64, got %s", e->op, name, dtype_name(info->dtype));
  return LM_OK;
}

/* The values of a float tensor as doubles, in C order. */
static lm_status read_doubles(const crf_env *e, lm_tensor *t, double *dst) {
  lm_tensor *c = NULL;
  lm_status st = e->host->tensor_contiguous(e->ctx, t, &c);
  if (st) return st;
  lm_tensor_info ci;
  e->host->tensor_info(c, &ci);
  if (ci.dtype == LM_F64) {
    memcpy(dst, ci.data, (size_t)ci.numel * sizeof(double));
  } else {
    const float *s = ci.data;
    for (int64_t i = 0; i < ci.numel; i++) dst[i] = s[i];
  }
  e->host->tensor_release(c);
  return LM_OK;
}

/* A new tensor of dtype and the given shape, filled from doubles. */
static lm_status write_tensor(const crf_env *e, int32_t dtype, int32_t ndim, const int64_t *shape, const double *src, lm_tensor **out) {
  lm_tensor *t = NULL;
  lm_status st = e->host->tensor_empty(e->ctx, dtype, ndim, shape, &t);
  if (st) return st;
  lm_tensor_info ti;
  e->host->tensor_info(t, &ti);
  if (dtype == LM_F64) {
    memcpy(ti.data, src, (size_t)ti.numel * sizeof(double));
  } else {
    float *d = ti.data;
    for (int64_t i = 0; i < ti.numel; i++) d[i] = (float)src[i];
  }
  *out = t;
  return LM_OK;
}

static int is_int(double v, double lo, double hi) { return v == floor(v) && v >= lo && v <= hi; }

/* The spatial shape of t, which has `lead` leading dims before it. */
static void spatial_of(const lm_tensor_info *t, int32_t lead, crf_grid_shape *g) {
  g->ndim = t->ndim - lead;
  g->n = 1;
  for (int32_t a = 0; a < g->ndim; a++) {
    g->size[a] = t->shape[lead + a];
    g->n *= g->size[a];
  }
}

static int same_spatial(const lm_tensor_info *a, int32_t alead, const lm_tensor_info *b, int32_t blead) {
  if (a->ndim - alead != b->ndim - blead) return 0;
  for (int32_t i = 0; i < a->ndim - alead; i++)
    if (a->shape[alead + i] != b->shape[blead + i]) return 0;
  return 1;
}

/* Spacing params: positive and finite. */
static lm_status read_spacing(const crf_env *e, const double *params, int32_t ndim, double *spacing) {
  for (int32_t a = 0; a < ndim; a++) {
    spacing[a] = params[a];
    if (!(spacing[a] > 0) || !isfinite(spacing[a]))
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: spacing along dim %d is %g, expected a positive number (mm)", e->op, (int)a, spacing[a]);
  }
  return LM_OK;
}

/* ---- crf_meanfield ---- */

enum { MF_NDIM, MF_ITERS, MF_USE_S, MF_USE_B, MF_NORMALIZE, MF_PROBS_EPS, MF_OUT_PROBS, MF_SIGMA_S, MF_SIGMA_B, MF_FIXED };

typedef struct mf_args {
  lm_tensor_info li, ii, ci, wi;
  crf_mf_problem p; /* the settings; compat, weights and image per call */
  int32_t B;
  double eps;       /* > 0: input 0 holds probabilities, the logits are log(max(P, eps)) */
} mf_args;

static lm_status mf_check(const crf_env *e, lm_tensor *const *in, const double *params, int32_t n_params, mf_args *a) {
  lm_status st;
  char s1[96], s2[96];
  memset(a, 0, sizeof *a);
  if ((st = check_float(e, in[0], "logits", &a->li)) || (st = check_float(e, in[1], "image", &a->ii)) ||
      (st = check_float(e, in[2], "compat", &a->ci)) || (st = check_float(e, in[3], "weights", &a->wi)))
    return st;
  if (n_params < MF_FIXED)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: expected at least %d params (ndim, iterations, use_spatial, use_bilateral, normalize, probs_eps, out_probs, sigma_spatial_mm, sigma_bilateral_mm, spacing..., sigma_int...), got %d",
                              e->op, MF_FIXED, (int)n_params);
  crf_mf_problem *p = &a->p;
  if (!is_int(params[MF_NDIM], 1, CRF_MAX_DIMS))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: ndim is %g, expected 1, 2 or 3", e->op, params[MF_NDIM]);
  int32_t nd = (int32_t)params[MF_NDIM];
  shape_str(&a->li, s1, sizeof s1);
  if (a->li.ndim != nd + 2)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: logits are %s, expected batch x labels x %d spatial dims", e->op, s1, (int)nd);
  a->B = (int32_t)a->li.shape[0];
  p->K = (int32_t)a->li.shape[1];
  spatial_of(&a->li, 2, &p->g);
  if (p->K < 1 || p->K > CRF_MAX_LABELS)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: logits have %lld labels, expected 1 to %d", e->op, (long long)a->li.shape[1], CRF_MAX_LABELS);
  shape_str(&a->ii, s2, sizeof s2);
  if (a->ii.ndim != nd + 2 || a->ii.shape[0] != a->li.shape[0] || !same_spatial(&a->li, 2, &a->ii, 2))
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: image is %s but logits are %s: expected the same batch and spatial sizes (batch x channels x spatial)",
                              e->op, s2, s1);
  p->C = (int32_t)a->ii.shape[1];
  if (p->C > CRF_MAX_FEATURES - nd)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: image has %d channels, at most %d are supported in %d-D", e->op, (int)p->C,
                              CRF_MAX_FEATURES - nd, (int)nd);
  if (n_params != MF_FIXED + nd + p->C)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: expected %d params (%d fixed, %d spacings, %d intensity sigmas), got %d", e->op,
                              MF_FIXED + nd + p->C, MF_FIXED, (int)nd, (int)p->C, (int)n_params);
  shape_str(&a->ci, s2, sizeof s2);
  if (a->ci.ndim != 2 || a->ci.shape[0] != p->K || a->ci.shape[1] != p->K)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: compat is %s, expected %dx%d (labels x labels)", e->op, s2, (int)p->K, (int)p->K);
  shape_str(&a->wi, s2, sizeof s2);
  if (a->wi.ndim != 1 || a->wi.shape[0] != 2)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: weights are %s, expected 2 values (spatial, bilateral)", e->op, s2);
  if (!is_int(params[MF_ITERS], 0, 1000))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: iterations is %g, expected an integer from 0 to 1000", e->op, params[MF_ITERS]);
  p->iterations = (int32_t)params[MF_ITERS];
  p->use_smooth = params[MF_USE_S] != 0;
  p->use_bilateral = params[MF_USE_B] != 0;
  p->normalize = params[MF_NORMALIZE] != 0;
  p->out_probs = params[MF_OUT_PROBS] != 0;
  a->eps = params[MF_PROBS_EPS];
  if (!(a->eps >= 0 && a->eps < 1))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: probs_eps is %g, expected 0 (the input is logits) or a number in (0, 1)", e->op, a->eps);
  p->sigma_smooth = params[MF_SIGMA_S];
  p->sigma_bil = params[MF_SIGMA_B];
  if (p->use_smooth && (!(p->sigma_smooth > 0) || !isfinite(p->sigma_smooth)))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: the spatial kernel's sigma is %g mm, expected a positive number", e->op, p->sigma_smooth);
  if (p->use_bilateral && (!(p->sigma_bil > 0) || !isfinite(p->sigma_bil)))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: the bilateral kernel's sigma is %g mm, expected a positive number", e->op, p->sigma_bil);
  if ((st = read_spacing(e, params + MF_FIXED, nd, p->spacing))) return st;
  for (int32_t c = 0; c < p->C; c++) {
    p->sigma_int[c] = params[MF_FIXED + nd + c];
    if (!(p->sigma_int[c] > 0) || !isfinite(p->sigma_int[c]))
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: the intensity sigma of channel %d is %g, expected a positive number", e->op, (int)c,
                                p->sigma_int[c]);
  }
  if (p->use_bilateral && p->C == 0)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: the bilateral kernel needs an image (it has 0 channels)", e->op);
  return LM_OK;
}

/* The inputs of one call, contiguous, and per-volume buffers in f64. */
typedef struct mf_data {
  lm_tensor *lc, *ic;       /* contiguous logits (or probs) and image */
  lm_tensor_info lci, ici;
  double *A, *I, *Z, *mu, w[2];
  size_t kn_bytes, cn_bytes, mu_bytes;
} mf_data;

static void mf_data_free(const crf_env *e, mf_data *d) {
  if (d->lc) e->host->tensor_release(d->lc);
  if (d->ic) e->host->tensor_release(d->ic);
  crf_free(e, d->A, d->kn_bytes);
  crf_free(e, d->Z, d->kn_bytes);
  crf_free(e, d->I, d->cn_bytes);
  crf_free(e, d->mu, d->mu_bytes);
}

static double value_at(const lm_tensor_info *t, int64_t i) {
  return t->dtype == LM_F64 ? ((const double *)t->data)[i] : (double)((const float *)t->data)[i];
}

static lm_status mf_data_load(const crf_env *e, lm_tensor *const *in, mf_args *a, mf_data *d) {
  memset(d, 0, sizeof *d);
  const int64_t N = a->p.g.n;
  d->kn_bytes = (size_t)(a->p.K * N) * sizeof(double);
  d->cn_bytes = (size_t)(a->p.C * N) * sizeof(double);
  d->mu_bytes = (size_t)a->ci.numel * sizeof(double);
  d->A = crf_alloc(e, d->kn_bytes);
  d->Z = crf_alloc(e, d->kn_bytes);
  d->I = crf_alloc(e, d->cn_bytes);
  d->mu = crf_alloc(e, d->mu_bytes);
  if (!d->A || !d->Z || !d->I || !d->mu) return crf_oom(e, "the volumes in f64", 2 * d->kn_bytes + d->cn_bytes);
  lm_status st;
  if ((st = e->host->tensor_contiguous(e->ctx, in[0], &d->lc)) || (st = e->host->tensor_contiguous(e->ctx, in[1], &d->ic))) return st;
  e->host->tensor_info(d->lc, &d->lci);
  e->host->tensor_info(d->ic, &d->ici);
  if ((st = read_doubles(e, in[2], d->mu)) || (st = read_doubles(e, in[3], d->w))) return st;
  for (int64_t i = 0; i < a->ci.numel; i++)
    if (!isfinite(d->mu[i])) return e->host->set_error(e->ctx, LM_E_ARG, "%s: compat holds %g, expected finite values", e->op, d->mu[i]);
  if (!isfinite(d->w[0]) || !isfinite(d->w[1]))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: the kernel weights are %g and %g, expected finite values", e->op, d->w[0], d->w[1]);
  a->p.compat = d->mu;
  a->p.w_smooth = d->w[0];
  a->p.w_bil = d->w[1];
  a->p.image = d->I;
  return LM_OK;
}

/* Loading volume b, in parallel: logits (from probabilities when eps > 0)
   into A; bad[chunk] = the first flat index that is wrong, or -1. */
typedef struct load_job {
  const mf_args *a;
  const mf_data *d;
  int64_t base; /* first element of the volume in the input */
  int64_t *bad;
  int64_t chunks;
} load_job;

static void load_span(void *arg, int64_t cb, int64_t ce) {
  const load_job *j = arg;
  const int32_t K = j->a->p.K;
  const int64_t N = j->a->p.g.n;
  const double eps = j->a->eps;
  for (int64_t c = cb; c < ce; c++) {
    const int64_t lo = N * c / j->chunks, hi = N * (c + 1) / j->chunks;
    j->bad[c] = -1;
    for (int64_t i = lo; i < hi && j->bad[c] < 0; i++) {
      double sum = 0;
      for (int32_t k = 0; k < K; k++) {
        double v = value_at(&j->d->lci, j->base + k * N + i);
        if (eps > 0) {
          sum += v;
          if (!(v >= -1e-4 && v <= 1 + 1e-4)) j->bad[c] = k * N + i;
          v = log(v > eps ? v : eps);
        } else if (!isfinite(v)) {
          j->bad[c] = k * N + i;
        }
        j->d->A[k * N + i] = v;
      }
      if (eps > 0 && !(fabs(sum - 1) <= 1e-3) && j->bad[c] < 0) j->bad[c] = i; /* a voxel: its sum is off */
    }
  }
}

/* Volume b's logits into d->A (from probabilities when eps > 0, checking
   they are probabilities) and its image into d->I. */
static lm_status mf_load_volume(const crf_env *e, const mf_args *a, mf_data *d, int32_t b) {
  const int32_t K = a->p.K;
  const int64_t N = a->p.g.n, base = (int64_t)b * K * N;
  int64_t bad[64];
  load_job lj = { a, d, base, bad, N >= 64 * 4096 ? 64 : 1 };
  e->host->parallel_for(e->ctx, lj.chunks, 1, load_span, &lj);
  for (int64_t c = 0; c < lj.chunks; c++) {
    if (bad[c] < 0) continue;
    /* the first problem in this chunk: say what it is */
    for (int64_t i = N * c / lj.chunks; i < N * (c + 1) / lj.chunks; i++) {
      double sum = 0;
      for (int32_t k = 0; k < K; k++) {
        double v = value_at(&d->lci, base + k * N + i);
        sum += v;
        if (a->eps > 0 && isnan(v))
          return e->host->set_error(e->ctx, LM_E_ARG, "%s: probs are not probabilities: NaN at flat index %lld", e->op, (long long)(base + k * N + i));
        if (a->eps > 0 && !(v >= -1e-4 && v <= 1 + 1e-4))
          return e->host->set_error(e->ctx, LM_E_ARG, "%s: probs are not probabilities: %g at flat index %lld (expected 0 to 1; pass softmax outputs, not logits)",
                                    e->op, v, (long long)(base + k * N + i));
        if (a->eps == 0 && !isfinite(v))
          return e->host->set_error(e->ctx, LM_E_ARG, "%s: logits hold %g at flat index %lld, expected finite values", e->op, v, (long long)(base + k * N + i));
      }
      if (a->eps > 0 && fabs(sum - 1) > 1e-3)
        return e->host->set_error(e->ctx, LM_E_ARG, "%s: probs are not probabilities: they sum to %g over the %d labels at voxel %lld of volume %d, expected 1",
                                  e->op, sum, (int)K, (long long)i, (int)b);
    }
  }
  const int64_t cbase = (int64_t)b * a->p.C * N;
  for (int64_t i = 0; i < a->p.C * N; i++) {
    double v = value_at(&d->ici, cbase + i);
    if (!isfinite(v))
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: the image holds %g at flat index %lld, expected finite values", e->op, v, (long long)(cbase + i));
    d->I[i] = v;
  }
  return LM_OK;
}

static void store(const lm_tensor_info *t, int64_t base, const double *src, int64_t n) {
  if (t->dtype == LM_F64) memcpy((double *)t->data + base, src, (size_t)n * sizeof(double));
  else
    for (int64_t i = 0; i < n; i++) ((float *)t->data)[base + i] = (float)src[i];
}

static lm_status mf_forward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out) {
  crf_env e = { host, ctx, "crf_meanfield" };
  mf_args a;
  mf_data d;
  memset(&d, 0, sizeof d);
  lm_tensor *y = NULL;
  lm_status st = mf_check(&e, in, params, n_params, &a);
  if (st) return st;
  if ((st = mf_data_load(&e, in, &a, &d))) goto done;
  if ((st = host->tensor_empty(ctx, a.li.dtype, a.li.ndim, a.li.shape, &y))) goto done;
  lm_tensor_info yi;
  host->tensor_info(y, &yi);
  const int64_t kn = (int64_t)a.p.K * a.p.g.n;
  for (int32_t b = 0; b < a.B && kn > 0; b++) {
    if ((st = mf_load_volume(&e, &a, &d, b))) goto done;
    crf_mf_problem p = a.p;
    if ((st = crf_mf_prepare(&e, &p))) goto done;
    st = crf_mf_forward(&e, &p, d.A, d.Z, NULL);
    crf_mf_release(&e, &p);
    if (st) goto done;
    store(&yi, b * kn, d.Z, kn);
  }
  out[0] = y;
  y = NULL;
done:
  if (y) host->tensor_release(y);
  mf_data_free(&e, &d);
  return st;
}

static lm_status mf_backward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out,
                             const double *params, int32_t n_params, lm_tensor **grad_in) {
  (void)out;
  crf_env e = { host, ctx, "crf_meanfield" };
  mf_args a;
  mf_data d;
  memset(&d, 0, sizeof d);
  double *G = NULL, *gA = NULL, gw[2] = { 0, 0 }, *gmu = NULL;
  lm_tensor *gc = NULL, *ga_t = NULL, *gmu_t = NULL, *gw_t = NULL;
  lm_tensor_info gi;
  char s1[96], s2[96];
  lm_status st = mf_check(&e, in, params, n_params, &a);
  if (st) return st;
  if ((st = check_float(&e, grad_out[0], "the output gradient", &gi))) return st;
  shape_str(&gi, s1, sizeof s1);
  shape_str(&a.li, s2, sizeof s2);
  if (gi.ndim != a.li.ndim || memcmp(gi.shape, a.li.shape, (size_t)gi.ndim * sizeof gi.shape[0]) != 0)
    return host->set_error(ctx, LM_E_SHAPE, "%s: the output gradient is %s, expected %s like the logits", e.op, s1, s2);
  if ((st = mf_data_load(&e, in, &a, &d))) goto done;
  G = crf_alloc(&e, d.kn_bytes);
  gA = crf_alloc(&e, d.kn_bytes);
  gmu = crf_alloc(&e, d.mu_bytes);
  if (!G || !gA || !gmu) {
    st = crf_oom(&e, "the gradients", 2 * d.kn_bytes);
    goto done;
  }
  memset(gmu, 0, d.mu_bytes);
  if ((st = host->tensor_contiguous(ctx, grad_out[0], &gc))) goto done;
  lm_tensor_info gci;
  host->tensor_info(gc, &gci);
  if ((st = host->tensor_empty(ctx, a.li.dtype, a.li.ndim, a.li.shape, &ga_t))) goto done;
  lm_tensor_info gai;
  host->tensor_info(ga_t, &gai);
  const int64_t kn = (int64_t)a.p.K * a.p.g.n;
  for (int32_t b = 0; b < a.B && kn > 0; b++) {
    if ((st = mf_load_volume(&e, &a, &d, b))) goto done;
    for (int64_t i = 0; i < kn; i++) G[i] = value_at(&gci, b * kn + i);
    crf_mf_problem p = a.p;
    if ((st = crf_mf_prepare(&e, &p))) goto done;
    st = crf_mf_backward(&e, &p, d.A, G, gA, gmu, gw);
    crf_mf_release(&e, &p);
    if (st) goto done;
    if (a.eps > 0) /* A = log(max(P, eps)) */
      for (int64_t i = 0; i < kn; i++) {
        double pv = value_at(&d.lci, b * kn + i);
        gA[i] = pv > a.eps ? gA[i] / pv : 0;
      }
    store(&gai, b * kn, gA, kn);
  }
  if ((st = write_tensor(&e, a.ci.dtype, a.ci.ndim, a.ci.shape, gmu, &gmu_t))) goto done;
  if ((st = write_tensor(&e, a.wi.dtype, a.wi.ndim, a.wi.shape, gw, &gw_t))) goto done;
  grad_in[0] = ga_t;
  grad_in[1] = NULL; /* no gradient for the image (it only shapes the kernel) */
  grad_in[2] = gmu_t;
  grad_in[3] = gw_t;
  ga_t = gmu_t = gw_t = NULL;
done:
  if (gc) host->tensor_release(gc);
  if (ga_t) host->tensor_release(ga_t);
  if (gmu_t) host->tensor_release(gmu_t);
  if (gw_t) host->tensor_release(gw_t);
  mf_data_free(&e, &d);
  crf_free(&e, G, d.kn_bytes);
  crf_free(&e, gA, d.kn_bytes);
  crf_free(&e, gmu, d.mu_bytes);
  return st;
}

/* ---- crf_lattice_filter ---- */

typedef struct lf_args {
  lm_tensor_info fi, vi;
  int64_t n;
  int32_t d, nv;
} lf_args;

static lm_status lf_check(const crf_env *e, lm_tensor *const *in, int32_t n_params, lf_args *a) {
  lm_status st;
  char s1[96], s2[96];
  if ((st = check_float(e, in[0], "features", &a->fi)) || (st = check_float(e, in[1], "values", &a->vi))) return st;
  if (n_params != 0) return e->host->set_error(e->ctx, LM_E_ARG, "%s: takes no params, got %d", e->op, (int)n_params);
  shape_str(&a->fi, s1, sizeof s1);
  shape_str(&a->vi, s2, sizeof s2);
  if (a->fi.ndim != 2 || a->fi.shape[1] < 1 || a->fi.shape[1] > CRF_MAX_FEATURES)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: features are %s, expected points x dims with 1 to %d dims", e->op, s1, CRF_MAX_FEATURES);
  if (a->vi.ndim != 2 || a->vi.shape[0] != a->fi.shape[0])
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: values are %s and features %s, expected points x values with the same points", e->op, s2, s1);
  if (a->fi.shape[0] >= INT32_MAX / (CRF_MAX_FEATURES + 1))
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: %lld points is too many", e->op, (long long)a->fi.shape[0]);
  a->n = a->fi.shape[0];
  a->d = (int32_t)a->fi.shape[1];
  a->nv = (int32_t)a->vi.shape[1];
  return LM_OK;
}

typedef struct lf_feat {
  const double *f;
  int32_t d;
} lf_feat;

static void lf_feature(const void *arg, int64_t i, double *f) {
  const lf_feat *lf = arg;
  memcpy(f, lf->f + i * lf->d, (size_t)lf->d * sizeof(double));
}

/* out (n x nv) = filter of in (n x nv), both point-major */
static lm_status lf_run(const crf_env *e, lm_tensor *feat, lm_tensor *vals, const lf_args *a, int reverse, lm_tensor **out) {
  size_t fb = (size_t)(a->n * a->d) * sizeof(double), vb = (size_t)(a->n * a->nv) * sizeof(double);
  double *F = crf_alloc(e, fb), *V = crf_alloc(e, vb), *T = crf_alloc(e, vb), *O = crf_alloc(e, vb);
  crf_lattice L;
  memset(&L, 0, sizeof L);
  lm_status st = LM_OK;
  if (!F || !V || !T || !O) {
    st = crf_oom(e, "the lattice filter", fb + 3 * vb);
    goto done;
  }
  if ((st = read_doubles(e, feat, F)) || (st = read_doubles(e, vals, V))) goto done;
  for (int64_t i = 0; i < a->n * a->nv; i++)
    if (!isfinite(V[i])) {
      st = e->host->set_error(e->ctx, LM_E_ARG, "%s: values hold %g at flat index %lld, expected finite values", e->op, V[i], (long long)i);
      goto done;
    }
  lf_feat lf = { F, a->d };
  if (a->n > 0 && (st = crf_lattice_build(e, a->n, a->d, lf_feature, &lf, &L))) goto done;
  /* channel-major for the filter */
  for (int64_t i = 0; i < a->n; i++)
    for (int32_t c = 0; c < a->nv; c++) T[c * a->n + i] = V[i * a->nv + c];
  for (int32_t c0 = 0; c0 < a->nv && a->n > 0; c0 += CRF_MAX_LABELS) {
    int32_t cn = a->nv - c0 < CRF_MAX_LABELS ? a->nv - c0 : CRF_MAX_LABELS;
    if ((st = crf_lattice_filter(e, &L, T + c0 * a->n, a->n, V + c0 * a->n, a->n, cn, 1.0, 0, reverse, NULL, NULL))) goto done;
  }
  for (int64_t i = 0; i < a->n; i++)
    for (int32_t c = 0; c < a->nv; c++) O[i * a->nv + c] = V[c * a->n + i];
  st = write_tensor(e, a->vi.dtype, 2, a->vi.shape, O, out);
done:
  if (L.vert || L.bary || L.nbr) crf_lattice_free(e, &L);
  crf_free(e, F, fb);
  crf_free(e, V, vb);
  crf_free(e, T, vb);
  crf_free(e, O, vb);
  return st;
}

static lm_status lf_forward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out) {
  (void)params;
  crf_env e = { host, ctx, "crf_lattice_filter" };
  lf_args a;
  lm_status st = lf_check(&e, in, n_params, &a);
  if (st) return st;
  return lf_run(&e, in[0], in[1], &a, 0, &out[0]);
}

static lm_status lf_backward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out,
                             const double *params, int32_t n_params, lm_tensor **grad_in) {
  (void)out;
  (void)params;
  crf_env e = { host, ctx, "crf_lattice_filter" };
  lf_args a, g;
  lm_status st = lf_check(&e, in, n_params, &a);
  if (st) return st;
  lm_tensor *pair[2] = { in[0], grad_out[0] };
  if ((st = lf_check(&e, pair, n_params, &g))) return st;
  if (g.nv != a.nv) return host->set_error(ctx, LM_E_SHAPE, "%s: the output gradient has %d values per point, expected %d", e.op, (int)g.nv, (int)a.nv);
  g.vi.dtype = a.vi.dtype; /* the gradient takes the values' dtype */
  grad_in[0] = NULL;
  return lf_run(&e, in[0], grad_out[0], &g, 1, &grad_in[1]);
}

/* ---- crf_grid and crf_grid_energy ---- */

enum { GR_NDIM, GR_NBRS, GR_LAMBDA, GR_BETA, GR_SOLVER, GR_SWEEPS, GR_FIXED };

typedef struct gr_args {
  lm_tensor_info ui, ii, labi;
  crf_grid_problem p;
} gr_args;

static lm_status gr_check(const crf_env *e, lm_tensor *const *in, int with_labels, const double *params, int32_t n_params, gr_args *a) {
  lm_status st;
  char s1[96], s2[96];
  memset(a, 0, sizeof *a);
  if ((st = check_float(e, in[0], "unary", &a->ui)) || (st = check_float(e, in[1], "image", &a->ii))) return st;
  if (n_params < GR_FIXED)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: expected %d params (ndim, neighbours, lambda, beta, solver, max_sweeps, spacing...), got %d", e->op,
                              GR_FIXED, (int)n_params);
  crf_grid_problem *p = &a->p;
  if (!is_int(params[GR_NDIM], 1, CRF_MAX_DIMS))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: ndim is %g, expected 1, 2 or 3", e->op, params[GR_NDIM]);
  int32_t nd = (int32_t)params[GR_NDIM];
  if (n_params != GR_FIXED + nd)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: expected %d params (%d fixed and %d spacings), got %d", e->op, GR_FIXED + nd, GR_FIXED, (int)nd, (int)n_params);
  shape_str(&a->ui, s1, sizeof s1);
  if (a->ui.ndim != nd + 1)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: unary costs are %s, expected labels x %d spatial dims", e->op, s1, (int)nd);
  p->K = (int32_t)a->ui.shape[0];
  if (p->K < 2 || p->K > CRF_MAX_LABELS)
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: %lld labels, expected 2 to %d", e->op, (long long)a->ui.shape[0], CRF_MAX_LABELS);
  spatial_of(&a->ui, 1, &p->g);
  shape_str(&a->ii, s2, sizeof s2);
  if (a->ii.ndim != nd + 1 || !same_spatial(&a->ui, 1, &a->ii, 1))
    return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: image is %s but unary costs are %s: expected the same spatial sizes (channels x spatial)", e->op, s2, s1);
  p->C = (int32_t)a->ii.shape[0];
  if (with_labels) {
    e->host->tensor_info(in[2], &a->labi);
    shape_str(&a->labi, s2, sizeof s2);
    if (a->labi.dtype != LM_I64 && a->labi.dtype != LM_I32)
      return e->host->set_error(e->ctx, LM_E_DTYPE, "%s: labels must be i64 or i32, got %s", e->op, dtype_name(a->labi.dtype));
    if (a->labi.device != LM_CPU) return e->host->set_error(e->ctx, LM_E_DEVICE, "%s: labels must be on the CPU", e->op);
    if (a->labi.ndim != nd || !same_spatial(&a->ui, 1, &a->labi, 0))
      return e->host->set_error(e->ctx, LM_E_SHAPE, "%s: labels are %s, expected the spatial shape of the unary costs (%s without the labels dim)", e->op, s2, s1);
  }
  double nb = params[GR_NBRS];
  int ok = (nd == 1 && nb == 2) || (nd == 2 && (nb == 4 || nb == 8)) || (nd == 3 && (nb == 6 || nb == 18 || nb == 26));
  if (!ok)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: neighbours is %g, expected %s in %d-D", e->op, nb,
                              nd == 1 ? "2" : nd == 2 ? "4 or 8" : "6, 18 or 26", (int)nd);
  p->neighbours = (int32_t)nb;
  p->lambda = params[GR_LAMBDA];
  if (!(p->lambda >= 0) || !isfinite(p->lambda))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: lambda is %g, expected a number >= 0", e->op, p->lambda);
  p->beta = params[GR_BETA];
  if (isnan(p->beta) || isinf(p->beta))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: beta is %g, expected a number (< 0: from the image)", e->op, p->beta);
  if (!is_int(params[GR_SOLVER], 0, 2))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: solver is %g, expected 0 (graph cut), 1 (alpha-expansion) or 2 (ICM)", e->op, params[GR_SOLVER]);
  p->solver = (int32_t)params[GR_SOLVER];
  if (p->solver == CRF_SOLVER_GRAPHCUT && p->K != 2)
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: graph cut solves two labels exactly, these costs have %d (use alpha-expansion)", e->op, (int)p->K);
  if (!is_int(params[GR_SWEEPS], 1, 1e6))
    return e->host->set_error(e->ctx, LM_E_ARG, "%s: max_sweeps is %g, expected an integer from 1 to 1000000", e->op, params[GR_SWEEPS]);
  p->max_sweeps = (int32_t)params[GR_SWEEPS];
  return read_spacing(e, params + GR_FIXED, nd, p->spacing);
}

typedef struct gr_data {
  double *U, *I;
  int32_t *labels;
  size_t u_bytes, i_bytes, l_bytes;
} gr_data;

static void gr_data_free(const crf_env *e, gr_data *d) {
  crf_free(e, d->U, d->u_bytes);
  crf_free(e, d->I, d->i_bytes);
  crf_free(e, d->labels, d->l_bytes);
}

static lm_status gr_data_load(const crf_env *e, lm_tensor *const *in, gr_args *a, gr_data *d) {
  memset(d, 0, sizeof *d);
  d->u_bytes = (size_t)a->ui.numel * sizeof(double);
  d->i_bytes = (size_t)a->ii.numel * sizeof(double);
  d->l_bytes = (size_t)a->p.g.n * sizeof(int32_t);
  d->U = crf_alloc(e, d->u_bytes);
  d->I = crf_alloc(e, d->i_bytes);
  d->labels = crf_alloc(e, d->l_bytes);
  if (!d->U || !d->I || !d->labels) return crf_oom(e, "the inputs in f64", d->u_bytes + d->i_bytes);
  lm_status st;
  if ((st = read_doubles(e, in[0], d->U)) || (st = read_doubles(e, in[1], d->I))) return st;
  for (int64_t i = 0; i < a->ui.numel; i++)
    if (!isfinite(d->U[i]))
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: unary costs hold %g at flat index %lld, expected finite values", e->op, d->U[i], (long long)i);
  for (int64_t i = 0; i < a->ii.numel; i++)
    if (!isfinite(d->I[i]))
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: the image holds %g at flat index %lld, expected finite values", e->op, d->I[i], (long long)i);
  a->p.unary = d->U;
  a->p.image = d->I;
  return LM_OK;
}

static lm_status read_labels(const crf_env *e, lm_tensor *t, const gr_args *a, int32_t *dst) {
  lm_tensor *c = NULL;
  lm_status st = e->host->tensor_contiguous(e->ctx, t, &c);
  if (st) return st;
  lm_tensor_info ci;
  e->host->tensor_info(c, &ci);
  for (int64_t i = 0; i < ci.numel && st == LM_OK; i++) {
    int64_t v = ci.dtype == LM_I64 ? ((const int64_t *)ci.data)[i] : ((const int32_t *)ci.data)[i];
    if (v < 0 || v >= a->p.K)
      st = e->host->set_error(e->ctx, LM_E_INDEX, "%s: label %lld at flat index %lld, expected 0 to %d", e->op, (long long)v, (long long)i, (int)a->p.K - 1);
    else
      dst[i] = (int32_t)v;
  }
  e->host->tensor_release(c);
  return st;
}

static lm_status energy_tensor(const crf_env *e, double energy, lm_tensor **out) {
  int64_t one = 1;
  return write_tensor(e, LM_F64, 1, &one, &energy, out);
}

static lm_status grid_forward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out) {
  crf_env e = { host, ctx, "crf_grid" };
  gr_args a;
  gr_data d;
  memset(&d, 0, sizeof d);
  lm_tensor *lab = NULL, *en = NULL;
  lm_status st = gr_check(&e, in, 0, params, n_params, &a);
  if (st) return st;
  if ((st = gr_data_load(&e, in, &a, &d))) goto done;
  double energy = 0;
  if ((st = crf_grid_solve(&e, &a.p, d.labels, &energy))) goto done;
  if ((st = host->tensor_empty(ctx, LM_I64, a.p.g.ndim, a.p.g.size, &lab))) goto done;
  lm_tensor_info li;
  host->tensor_info(lab, &li);
  int64_t *ld = li.data;
  for (int64_t i = 0; i < a.p.g.n; i++) ld[i] = d.labels[i];
  if ((st = energy_tensor(&e, energy, &en))) goto done;
  out[0] = lab;
  out[1] = en;
  lab = en = NULL;
done:
  if (lab) host->tensor_release(lab);
  if (en) host->tensor_release(en);
  gr_data_free(&e, &d);
  return st;
}

static lm_status grid_energy_forward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params,
                                     lm_tensor **out) {
  crf_env e = { host, ctx, "crf_grid_energy" };
  gr_args a;
  gr_data d;
  memset(&d, 0, sizeof d);
  lm_status st = gr_check(&e, in, 1, params, n_params, &a);
  if (st) return st;
  if ((st = gr_data_load(&e, in, &a, &d))) goto done;
  if ((st = read_labels(&e, in[2], &a, d.labels))) goto done;
  double energy = 0;
  if ((st = crf_grid_energy(&e, &a.p, d.labels, &energy))) goto done;
  st = energy_tensor(&e, energy, &out[0]);
done:
  gr_data_free(&e, &d);
  return st;
}

/* ---- the plugin ---- */

static const lm_plugin_op ops[] = {
  { "crf_meanfield", 4, 1, mf_forward, mf_backward },
  { "crf_lattice_filter", 2, 1, lf_forward, lf_backward },
  { "crf_grid", 2, 2, grid_forward, NULL },
  { "crf_grid_energy", 3, 1, grid_energy_forward, NULL },
};

static const lm_plugin plugin = {
  .abi_major = LM_ABI_MAJOR,
  .abi_minor = LM_ABI_MINOR,
  .struct_size = sizeof(lm_plugin),
  .name = "crf",
  .version = "1.0.0",
  .n_ops = (int32_t)(sizeof ops / sizeof ops[0]),
  .ops = ops,
  .destroy = NULL,
};

__attribute__((visibility("default")))
lm_status lm_plugin_entry(const lm_host_api *host, uint32_t host_abi_major, const lm_plugin **out) {
  (void)host_abi_major; /* the host compares ABIs and names both in its message */
  if (!host || host->size < sizeof(lm_host_api)) return LM_E_ABI;
  *out = &plugin;
  return LM_OK;
}
