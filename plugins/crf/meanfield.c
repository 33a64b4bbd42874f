/* meanfield.c - mean-field inference in a fully connected CRF
 * (Krähenbühl and Koltun, NIPS 2011) and its backward (the unrolled
 * iterations of CRF-as-RNN, Zheng et al., ICCV 2015).
 *
 * For one volume of N voxels and K labels, with logits A (the negative
 * unary energies):
 *
 *   Q0 = softmax(A)
 *   Mt = ws Es(Q(t-1)) + wb Eb(Q(t-1))            messages
 *   Zt = A - mu Mt,  Qt = softmax(Zt)              t = 1..T
 *
 * and the op returns ZT (logits, so a loss can take them as they are).
 * mu is the K x K label compatibility (Potts: 1 off the diagonal). The
 * kernels are S, exp(-|pi - pj|^2 / 2 sigma^2) over positions in mm,
 * applied exactly as a separable convolution truncated at 4 sigma, and B,
 * the bilateral exp(-|pi - pj|^2 / 2 sb^2 - sum_c (Ic,i - Ic,j)^2 / 2 sc^2),
 * applied on the permutohedral lattice (lattice.c). A kernel's message is
 *
 *   normalised (default):  E(Q) = (F Q) / (F 1)   a kernel-weighted mean of
 *                          the labels around each voxel, itself included,
 *                          as Krähenbühl's code does: weights are then in
 *                          logits, whatever the sigmas and the spacing;
 *   unnormalised:          E(Q) = F Q - Q         the paper's sum over the
 *                          other voxels (both kernels are 1 at distance 0).
 *
 * Either way E is linear in Q with a fixed per-voxel scale r = 1 / (F 1)
 * or 1, so its transpose is F^T (r g) (- g). S is symmetric; the lattice
 * filter's transpose blurs its axes in reverse order.
 *
 * The backward recomputes the forward (keeping Q0..Q(T-1)) and walks back:
 * gA collects gZt at every step, gmu -= gZt Mt^T, gMt = -mu^T gZt, gw_m +=
 * <gMt, E_m(Q(t-1))>, gQ(t-1) = ws Es^T gMt + wb Eb^T gMt, and gZ(t-1) is
 * gQ(t-1) through the softmax. */
#include "meanfield.h"
#include <math.h>
#include <string.h>

#define BLOCK 32768 /* voxels per block of fixed-order partial sums */

/* ---- the separable spatial Gaussian ---- */

typedef struct axis_job {
  const double *src;
  double *dst;
  const double *taps; /* taps[0..radius] */
  int32_t radius;
  int64_t len, inner; /* along the axis; elements per step of the axis */
  double scale;       /* applied with out_scale on the last pass */
  const float *out_scale;
  int last;
} axis_job;

static inline double out_factor(const axis_job *j, int64_t at) {
  return j->last ? j->scale * (j->out_scale ? j->out_scale[at] : 1.0) : 1.0;
}

/* Along an axis that is not the last: each item is one output line of
   `inner` contiguous elements, a weighted sum of whole input lines. */
static CRF_CLONES void axis_lines(void *arg, int64_t b, int64_t e) {
  const axis_job *j = arg;
  const int64_t L = j->len, st = j->inner;
  const double *g = j->taps;
  for (int64_t item = b; item < e; item++) {
    int64_t i = item % L;
    const double *restrict s = j->src + item * st;
    double *restrict d = j->dst + item * st;
    for (int64_t k = 0; k < st; k++) d[k] = g[0] * s[k];
    for (int32_t t = 1; t <= j->radius; t++) {
      const int lo = i - t >= 0, hi = i + t < L;
      const double *restrict a = s - t * st, *restrict c = s + t * st;
      if (lo && hi) {
        for (int64_t k = 0; k < st; k++) d[k] += g[t] * (a[k] + c[k]);
      } else if (lo) {
        for (int64_t k = 0; k < st; k++) d[k] += g[t] * a[k];
      } else if (hi) {
        for (int64_t k = 0; k < st; k++) d[k] += g[t] * c[k];
      } else {
        break;
      }
    }
    if (j->last && (j->scale != 1.0 || j->out_scale))
      for (int64_t k = 0; k < st; k++) d[k] *= out_factor(j, item * st + k);
  }
}

/* Along the last (contiguous) axis: each item is one row. */
static CRF_CLONES void axis_rows(void *arg, int64_t b, int64_t e) {
  const axis_job *j = arg;
  const int64_t L = j->len;
  const double *g = j->taps;
  for (int64_t row = b; row < e; row++) {
    const double *restrict s = j->src + row * L;
    double *restrict d = j->dst + row * L;
    for (int64_t i = 0; i < L; i++) d[i] = g[0] * s[i];
    for (int32_t t = 1; t <= j->radius && t < L; t++) {
      for (int64_t i = t; i < L; i++) d[i] += g[t] * s[i - t];
      for (int64_t i = 0; i < L - t; i++) d[i] += g[t] * s[i + t];
    }
    if (j->last && (j->scale != 1.0 || j->out_scale))
      for (int64_t i = 0; i < L; i++) d[i] *= out_factor(j, row * L + i);
  }
}

lm_status crf_spatial_init(const crf_env *e, crf_spatial *sp, const crf_grid_shape *g, const double *spacing, double sigma_mm) {
  memset(sp, 0, sizeof *sp);
  sp->g = *g;
  for (int32_t a = 0; a < g->ndim; a++) {
    double sv = sigma_mm / spacing[a]; /* sigma in voxels along a */
    double rr = ceil(4 * sv);
    int64_t r = rr > (double)(g->size[a] - 1) ? g->size[a] - 1 : (int64_t)rr;
    if (r < 0) r = 0;
    sp->radius[a] = (int32_t)r;
    sp->taps[a] = crf_alloc(e, (size_t)(r + 1) * sizeof(double));
    if (!sp->taps[a]) {
      crf_spatial_free(e, sp);
      return crf_oom(e, "the Gaussian taps", (size_t)(r + 1) * sizeof(double));
    }
    for (int64_t t = 0; t <= r; t++) sp->taps[a][t] = exp(-0.5 * (double)(t * t) / (sv * sv));
  }
  return LM_OK;
}

void crf_spatial_free(const crf_env *e, crf_spatial *sp) {
  for (int32_t a = 0; a < CRF_MAX_DIMS; a++)
    if (sp->taps[a]) crf_free(e, sp->taps[a], (size_t)(sp->radius[a] + 1) * sizeof(double));
  memset(sp->taps, 0, sizeof sp->taps);
}

void crf_spatial_filter(const crf_env *e, const crf_spatial *sp, const double *in, double *out, double *tmp, int32_t nv,
                        double scale, const float *out_scale) {
  const crf_grid_shape *g = &sp->g;
  const int64_t N = g->n;
  const int32_t nd = g->ndim;
  for (int32_t c = 0; c < nv; c++) {
    const double *src = in + c * N;
    int64_t inner = N;
    for (int32_t a = 0; a < nd; a++) {
      inner /= g->size[a];
      const int last = a == nd - 1;
      /* alternate between out and tmp so that the last pass lands in out */
      double *dst = (nd - 1 - a) % 2 == 0 ? out + c * N : tmp;
      /* out_scale is per voxel, the same for every channel */
      axis_job j = { src, dst, sp->taps[a], sp->radius[a], g->size[a], inner, scale, out_scale, last };
      if (inner == 1) {
        e->host->parallel_for(e->ctx, N / g->size[a], 64, axis_rows, &j);
      } else {
        int64_t grain = inner >= 4096 ? 1 : 4096 / inner;
        e->host->parallel_for(e->ctx, N / inner, grain, axis_lines, &j);
      }
      src = dst;
    }
  }
}

/* ---- per-voxel steps (K x N buffers, channel-major) ---- */

typedef struct voxel_job {
  int32_t K;
  int64_t N;
  const double *A, *Q, *G, *mu, *gM;
  double *Z, *out;
  const float *r;
  double w, s;
  int32_t nf; /* update_span: labels whose messages are in Z (the last is s minus the others) */
} voxel_job;

static void run_voxels(const crf_env *e, voxel_job *j, void (*fn)(void *, int64_t, int64_t)) {
  e->host->parallel_for(e->ctx, j->N, 16384 / j->K + 1, fn, j);
}

/* The softmax of z[0..K) into q, with one exp fewer (the largest is 1). */
static inline __attribute__((always_inline)) void softmax_of(const double *z, double *q, int32_t K) {
  int32_t top = 0;
  for (int32_t k = 1; k < K; k++)
    if (z[k] > z[top]) top = k;
  double s = 1;
  for (int32_t k = 0; k < K; k++) {
    q[k] = k == top ? 1.0 : exp(z[k] - z[top]);
    if (k != top) s += q[k];
  }
  double inv = 1.0 / s;
  for (int32_t k = 0; k < K; k++) q[k] *= inv;
}

/* out = softmax over labels of Z */
static CRF_CLONES void softmax_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  double z[CRF_MAX_LABELS], q[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    for (int32_t k = 0; k < K; k++) z[k] = j->Z[k * N + i];
    softmax_of(z, q, K);
    for (int32_t k = 0; k < K; k++) j->out[k * N + i] = q[k];
  }
}

/* Z holds the filtered messages ws rs S Q + wb rb B Q of the first nf
   labels; in place: Z = A - mu (Z - w Q), w the weight of the self terms
   to remove; then,
   when out is set, out = softmax(Z) (out may be Q: each voxel reads its
   Q before writing it) */
static CRF_CLONES void update_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  double m[CRF_MAX_LABELS], z[CRF_MAX_LABELS], q[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    for (int32_t k = 0; k < j->nf; k++) m[k] = j->Z[k * N + i] - j->w * j->Q[k * N + i];
    if (j->nf < K) { /* the last label's normalised message: the total minus the others' */
      double rest = j->s;
      for (int32_t k = 0; k < K - 1; k++) rest -= m[k];
      m[K - 1] = rest;
    }
    for (int32_t l = 0; l < K; l++) {
      double p = 0;
      const double *row = j->mu + l * K;
      for (int32_t k = 0; k < K; k++) p += row[k] * m[k];
      z[l] = j->A[l * N + i] - p;
      j->Z[l * N + i] = z[l];
    }
    if (j->out) {
      softmax_of(z, q, K);
      for (int32_t k = 0; k < K; k++) j->out[k * N + i] = q[k];
    }
  }
}

/* out = -mu^T G: the gradient of the messages from that of Z */
static CRF_CLONES void message_grad_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  for (int64_t i = b; i < e; i++)
    for (int32_t k = 0; k < K; k++) {
      double s = 0;
      for (int32_t l = 0; l < K; l++) s += j->mu[l * K + k] * j->G[l * N + i];
      j->out[k * N + i] = -s;
    }
}

/* out -= s Q (out holds r F Q): one kernel's message */
static CRF_CLONES void self_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  for (int32_t k = 0; k < j->K; k++)
    for (int64_t i = b; i < e; i++) j->out[k * j->N + i] -= j->s * j->Q[k * j->N + i];
}

/* out = r gM */
static CRF_CLONES void scale_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  for (int32_t k = 0; k < j->K; k++)
    for (int64_t i = b; i < e; i++) j->out[k * j->N + i] = (j->r ? j->r[i] : 1.0) * j->gM[k * j->N + i];
}

/* out = Q (g - <Q, g>) with g = G - w gM (gM NULL: g = G): a gradient
   through the softmax Q = softmax(Z) */
static CRF_CLONES void softmax_grad_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  double gq[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    double dot = 0;
    for (int32_t k = 0; k < K; k++) {
      gq[k] = j->G[k * N + i] - (j->gM ? j->w * j->gM[k * N + i] : 0.0);
      dot += gq[k] * j->Q[k * N + i];
    }
    for (int32_t k = 0; k < K; k++) j->out[k * N + i] = j->Q[k * N + i] * (gq[k] - dot);
  }
}

/* ---- sums in fixed blocks (results do not depend on the thread count) ---- */

typedef struct sum_job {
  int32_t K;
  int64_t N;
  const double *g, *f; /* sum_i g_l f_k (outer), or sum g . f */
  double *partial;     /* per block: K*K values, or 1 */
  int outer;
} sum_job;

static void sum_span(void *arg, int64_t b, int64_t e) {
  const sum_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  for (int64_t blk = b; blk < e; blk++) {
    int64_t lo = blk * BLOCK, hi = lo + BLOCK < N ? lo + BLOCK : N;
    if (j->outer) {
      double *p = j->partial + blk * K * K;
      for (int32_t l = 0; l < K; l++)
        for (int32_t k = 0; k < K; k++) {
          double s = 0;
          const double *gl = j->g + l * N, *fk = j->f + k * N;
          for (int64_t i = lo; i < hi; i++) s += gl[i] * fk[i];
          p[l * K + k] = s;
        }
    } else {
      double s = 0;
      for (int32_t k = 0; k < K; k++) {
        const double *gk = j->g + k * N, *fk = j->f + k * N;
        for (int64_t i = lo; i < hi; i++) s += gk[i] * fk[i];
      }
      j->partial[blk] = s;
    }
  }
}

/* result[w] += the block sums, added in block order */
static lm_status block_sums(const crf_env *e, sum_job *j, double *result, int32_t width, double scale) {
  int64_t nblk = (j->N + BLOCK - 1) / BLOCK;
  size_t bytes = (size_t)(nblk > 0 ? nblk : 1) * (size_t)width * sizeof(double);
  j->partial = crf_alloc(e, bytes);
  if (!j->partial) return crf_oom(e, "partial sums", bytes);
  e->host->parallel_for(e->ctx, nblk, 1, sum_span, j);
  for (int32_t w = 0; w < width; w++) {
    double s = 0;
    for (int64_t blk = 0; blk < nblk; blk++) s += j->partial[blk * width + w];
    result[w] += scale * s;
  }
  crf_free(e, j->partial, bytes);
  return LM_OK;
}

/* ---- one volume ---- */

static void bilateral_feature(const void *arg, int64_t i, double *f) {
  const crf_mf_problem *p = arg;
  int64_t r = i;
  for (int32_t a = p->g.ndim - 1; a >= 0; a--) {
    int64_t c = r % p->g.size[a];
    r /= p->g.size[a];
    f[a] = (double)c * p->spacing[a] / p->sigma_bil;
  }
  for (int32_t c = 0; c < p->C; c++) f[p->g.ndim + c] = p->image[c * p->g.n + i] / p->sigma_int[c];
}

static size_t norm_bytes(const crf_mf_problem *p) { return (size_t)p->g.n * sizeof(float); }

void crf_mf_release(const crf_env *e, crf_mf_problem *p) {
  if (p->have_spatial) crf_spatial_free(e, &p->spatial);
  if (p->have_lattice) crf_lattice_free(e, &p->lattice);
  crf_free(e, p->norm_spatial, norm_bytes(p));
  crf_free(e, p->norm_bil, norm_bytes(p));
  p->norm_spatial = p->norm_bil = NULL;
  p->have_spatial = p->have_lattice = 0;
}

/* r = 1 / (F 1), floored (the lattice may give an isolated point less
   than its own weight, never zero in practice). The spatial kernel is
   separable, so there F 1 is the product of per-axis sums of the taps
   that fall inside the volume. */
static lm_status normaliser(const crf_env *e, crf_mf_problem *p, int lattice, float **out) {
  const int64_t N = p->g.n;
  const size_t db = (size_t)N * sizeof(double);
  float *rf = crf_alloc(e, norm_bytes(p));
  double *ones = NULL, *r = NULL, *axis[CRF_MAX_DIMS] = { NULL, NULL, NULL };
  lm_status st = LM_OK;
  if (!rf) return crf_oom(e, "the normalisers", norm_bytes(p));
  if (lattice) {
    ones = crf_alloc(e, db);
    r = crf_alloc(e, db);
    if (!ones || !r) {
      st = crf_oom(e, "the normalisers", 2 * db);
      goto done;
    }
    for (int64_t i = 0; i < N; i++) ones[i] = 1;
    if ((st = crf_lattice_filter(e, &p->lattice, ones, N, r, N, 1, 1.0, 0, 0, NULL, NULL))) goto done;
    for (int64_t i = 0; i < N; i++) rf[i] = (float)(1.0 / (r[i] > 1e-6 ? r[i] : 1e-6));
  } else {
    const crf_spatial *sp = &p->spatial;
    for (int32_t a = 0; a < p->g.ndim; a++) {
      const int64_t L = p->g.size[a];
      if (!(axis[a] = crf_alloc(e, (size_t)L * sizeof(double)))) {
        st = crf_oom(e, "the normalisers", (size_t)L * sizeof(double));
        goto done;
      }
      for (int64_t i = 0; i < L; i++) {
        double s = 0;
        for (int64_t t = -sp->radius[a]; t <= sp->radius[a]; t++)
          if (i + t >= 0 && i + t < L) s += sp->taps[a][t < 0 ? -t : t];
        axis[a][i] = s;
      }
    }
    int64_t c[CRF_MAX_DIMS] = { 0, 0, 0 };
    for (int64_t i = 0; i < N; i++) {
      double s = 1;
      for (int32_t a = 0; a < p->g.ndim; a++) s *= axis[a][c[a]];
      rf[i] = (float)(1.0 / s);
      for (int32_t a = p->g.ndim - 1; a >= 0 && ++c[a] == p->g.size[a]; a--) c[a] = 0;
    }
  }
  *out = rf;
  rf = NULL;
done:
  crf_free(e, ones, db);
  crf_free(e, r, db);
  for (int32_t a = 0; a < CRF_MAX_DIMS; a++)
    if (axis[a]) crf_free(e, axis[a], (size_t)p->g.size[a] * sizeof(double));
  crf_free(e, rf, norm_bytes(p));
  return st;
}

lm_status crf_mf_prepare(const crf_env *e, crf_mf_problem *p) {
  lm_status st = LM_OK;
  p->have_spatial = p->have_lattice = 0;
  p->norm_spatial = p->norm_bil = NULL;
  if (p->use_smooth) {
    if ((st = crf_spatial_init(e, &p->spatial, &p->g, p->spacing, p->sigma_smooth))) return st;
    p->have_spatial = 1;
    if (p->normalize && (st = normaliser(e, p, 0, &p->norm_spatial))) goto fail;
  }
  if (p->use_bilateral) {
    if ((st = crf_lattice_build(e, p->g.n, p->g.ndim + p->C, bilateral_feature, p, &p->lattice))) goto fail;
    p->have_lattice = 1;
    if (p->normalize && (st = normaliser(e, p, 1, &p->norm_bil))) goto fail;
  }
  return LM_OK;
fail:
  crf_mf_release(e, p);
  return st;
}

static double weight_s(const crf_mf_problem *p) { return p->have_spatial ? p->w_smooth : 0; }
static double weight_b(const crf_mf_problem *p) { return p->have_lattice ? p->w_bil : 0; }
/* the weight of the self terms removed from unnormalised messages */
static double weight_self(const crf_mf_problem *p) { return p->normalize ? 0 : weight_s(p) + weight_b(p); }

/* M = ws rs S Q + wb rb B Q (without the self terms); tmp holds N */
/* The labels filtered by messages(): normalised messages of the K labels
   sum to ws + wb (Q sums to 1 at every voxel and each kernel's message is
   F Q / F 1), so the last one is left to the update, which saves a K-th
   of the filtering (half of it with two labels). */
static int32_t filtered_labels(const crf_mf_problem *p) { return p->normalize && p->K > 1 ? p->K - 1 : p->K; }

static lm_status messages(const crf_env *e, const crf_mf_problem *p, const double *Q, double *M, double *tmp) {
  const double ws = weight_s(p), wb = weight_b(p);
  const int32_t nf = filtered_labels(p);
  if (ws != 0) crf_spatial_filter(e, &p->spatial, Q, M, tmp, nf, ws, p->norm_spatial);
  else memset(M, 0, (size_t)(nf * p->g.n) * sizeof *M);
  if (wb != 0) return crf_lattice_filter(e, &p->lattice, Q, p->g.n, M, p->g.n, nf, wb, 1, 0, NULL, p->norm_bil);
  return LM_OK;
}

lm_status crf_mf_forward(const crf_env *e, const crf_mf_problem *p, const double *A, double *Z, double *Qhist) {
  const int64_t N = p->g.n;
  const int32_t K = p->K;
  const size_t kn = (size_t)(K * N) * sizeof(double), nb = (size_t)N * sizeof(double);
  double *Q = crf_alloc(e, kn), *tmp = crf_alloc(e, nb);
  lm_status st = LM_OK;
  if (!Q || !tmp) {
    st = crf_oom(e, "the mean-field buffers", kn + nb);
    goto done;
  }
  memcpy(Z, A, kn);
  voxel_job sm = { K, N, .Z = Z, .out = Q };
  run_voxels(e, &sm, softmax_span);
  for (int32_t t = 1; t <= p->iterations; t++) {
    if ((st = crf_check_abort(e))) goto done;
    if (Qhist) memcpy(Qhist + (int64_t)(t - 1) * K * N, Q, kn);
    if ((st = messages(e, p, Q, Z, tmp))) goto done;
    voxel_job up = { K, N, .A = A, .Q = Q, .mu = p->compat, .Z = Z, .w = weight_self(p), .out = t < p->iterations ? Q : NULL,
                     .s = weight_s(p) + weight_b(p), .nf = filtered_labels(p) };
    run_voxels(e, &up, update_span);
  }
  if (p->out_probs) run_voxels(e, &(voxel_job){ K, N, .Z = Z, .out = Z }, softmax_span);
done:
  crf_free(e, Q, kn);
  crf_free(e, tmp, nb);
  return st;
}

lm_status crf_mf_backward(const crf_env *e, const crf_mf_problem *p, const double *A, const double *G, double *gA, double *gmu,
                          double *gw) {
  const int64_t N = p->g.n;
  const int32_t K = p->K, T = p->iterations;
  const size_t kn = (size_t)(K * N) * sizeof(double), nb = (size_t)N * sizeof(double), kk = (size_t)K * K * sizeof(double);
  const size_t qh = (size_t)(T > 0 ? T : 1) * kn;
  const double ws = weight_s(p), wb = weight_b(p), s = p->normalize ? 0.0 : 1.0;
  lm_status st = LM_OK;
  double *Qhist = crf_alloc(e, qh), *gZ = crf_alloc(e, kn), *gM = crf_alloc(e, kn);
  double *Fs = crf_alloc(e, kn), *Fb = crf_alloc(e, kn), *H = crf_alloc(e, kn), *tmp = crf_alloc(e, nb), *acc = crf_alloc(e, kk);
  if (!Qhist || !gZ || !gM || !Fs || !Fb || !H || !tmp || !acc) {
    st = crf_oom(e, "the mean-field backward", qh + 5 * kn);
    goto done;
  }
  crf_mf_problem fwd = *p;
  fwd.out_probs = 0;
  if ((st = crf_mf_forward(e, &fwd, A, H, Qhist))) goto done; /* H: Z at the end */
  if (p->out_probs) {
    /* the output was softmax(Z): take G back through it */
    run_voxels(e, &(voxel_job){ K, N, .Z = H, .out = Fs }, softmax_span);
    run_voxels(e, &(voxel_job){ K, N, .Q = Fs, .G = G, .out = gZ }, softmax_grad_span);
  } else {
    memcpy(gZ, G, kn);
  }
  memset(gA, 0, kn);
  for (int32_t t = T; t >= 1; t--) {
    if ((st = crf_check_abort(e))) goto done;
    const double *Q = Qhist + (int64_t)(t - 1) * K * N;
    for (int64_t i = 0; i < K * N; i++) gA[i] += gZ[i];
    run_voxels(e, &(voxel_job){ K, N, .G = gZ, .mu = p->compat, .out = gM }, message_grad_span);
    /* each kernel's message E = r F Q - s Q of this step */
    if (ws != 0) {
      crf_spatial_filter(e, &p->spatial, Q, Fs, tmp, K, 1.0, p->norm_spatial);
      if (s != 0) run_voxels(e, &(voxel_job){ K, N, .Q = Q, .out = Fs, .s = s }, self_span);
    }
    if (wb != 0) {
      if ((st = crf_lattice_filter(e, &p->lattice, Q, N, Fb, N, K, 1.0, 0, 0, NULL, p->norm_bil))) goto done;
      if (s != 0) run_voxels(e, &(voxel_job){ K, N, .Q = Q, .out = Fb, .s = s }, self_span);
    }
    /* gmu -= sum_i gZ M^T with M = ws Es + wb Eb; gw += <gM, E> */
    for (int32_t m = 0; m < 2; m++) {
      double w = m == 0 ? ws : wb;
      const double *E = m == 0 ? Fs : Fb;
      if (w == 0) continue;
      memset(acc, 0, kk);
      sum_job outer = { K, N, gZ, E, NULL, 1 };
      if ((st = block_sums(e, &outer, acc, K * K, 1.0))) goto done;
      for (int32_t q = 0; q < K * K; q++) gmu[q] -= w * acc[q];
      sum_job dot = { K, N, gM, E, NULL, 0 };
      if ((st = block_sums(e, &dot, &gw[m], 1, 1.0))) goto done;
    }
    /* gQ = ws S (rs gM) + wb B^T (rb gM) - s (ws + wb) gM, in Fs */
    if (ws != 0) {
      run_voxels(e, &(voxel_job){ K, N, .gM = gM, .r = p->norm_spatial, .out = H }, scale_span);
      crf_spatial_filter(e, &p->spatial, H, Fs, tmp, K, ws, NULL);
    } else {
      memset(Fs, 0, kn);
    }
    if (wb != 0 && (st = crf_lattice_filter(e, &p->lattice, gM, N, Fs, N, K, wb, 1, 1, p->norm_bil, NULL))) goto done;
    run_voxels(e, &(voxel_job){ K, N, .Q = Q, .G = Fs, .gM = gM, .w = s * (ws + wb), .out = gZ }, softmax_grad_span);
  }
  for (int64_t i = 0; i < K * N; i++) gA[i] += gZ[i];
done:
  crf_free(e, Qhist, qh);
  crf_free(e, gZ, kn);
  crf_free(e, gM, kn);
  crf_free(e, Fs, kn);
  crf_free(e, Fb, kn);
  crf_free(e, H, kn);
  crf_free(e, tmp, nb);
  crf_free(e, acc, kk);
  return st;
}
