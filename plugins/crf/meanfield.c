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
  double scale;
  int accumulate, last;
} axis_job;

static void axis_span(void *arg, int64_t b, int64_t e) {
  const axis_job *j = arg;
  const int64_t L = j->len, st = j->inner;
  for (int64_t item = b; item < e; item++) {
    int64_t o = item / L, i = item % L;
    int64_t lo = i - j->radius < 0 ? -i : -j->radius;
    int64_t hi = i + j->radius > L - 1 ? L - 1 - i : j->radius;
    const double *s = j->src + (o * L + i) * st;
    double *d = j->dst + (o * L + i) * st;
    if (st == 1) {
      double acc = 0;
      for (int64_t t = lo; t <= hi; t++) acc += j->taps[t < 0 ? -t : t] * s[t];
      acc *= j->scale;
      *d = j->accumulate ? *d + acc : acc;
    } else {
      double g0 = j->taps[0] * j->scale;
      if (j->accumulate) {
        for (int64_t k = 0; k < st; k++) d[k] += g0 * s[k];
      } else {
        for (int64_t k = 0; k < st; k++) d[k] = g0 * s[k];
      }
      for (int64_t t = lo; t <= hi; t++) {
        if (t == 0) continue;
        double g = j->taps[t < 0 ? -t : t] * j->scale;
        const double *r = s + t * st;
        for (int64_t k = 0; k < st; k++) d[k] += g * r[k];
      }
    }
  }
}

lm_status crf_spatial_init(const crf_env *e, crf_spatial *sp, const crf_grid_shape *g, const double *spacing, double sigma_mm) {
  memset(sp, 0, sizeof *sp);
  sp->g = *g;
  for (int32_t a = 0; a < g->ndim; a++) {
    double sv = sigma_mm / spacing[a]; /* sigma in voxels along a */
    int64_t r = (int64_t)ceil(4 * sv);
    if (r > g->size[a] - 1) r = g->size[a] - 1;
    if (r > 4096) r = 4096;
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

/* out[c] (+)= scale * S in[c] for nv channels of N voxels; tmp holds 2 N. */
void crf_spatial_filter(const crf_env *e, const crf_spatial *sp, const double *in, double *out, double *tmp, int32_t nv,
                        double scale, int accumulate) {
  const crf_grid_shape *g = &sp->g;
  const int64_t N = g->n;
  for (int32_t c = 0; c < nv; c++) {
    const double *src = in + c * N;
    double *bufs[2] = { tmp, tmp + N };
    int64_t inner = N;
    for (int32_t a = 0; a < g->ndim; a++) {
      inner /= g->size[a];
      int last = a == g->ndim - 1;
      double *dst = last ? out + c * N : bufs[a & 1];
      axis_job j = { src, dst, sp->taps[a], sp->radius[a], g->size[a], inner, last ? scale : 1.0, last ? accumulate : 0, last };
      int64_t items = N / inner;
      int64_t grain = inner >= 1024 ? 1 : 1024 / inner;
      e->host->parallel_for(e->ctx, items, grain, axis_span, &j);
      src = dst;
    }
  }
}

/* ---- per-voxel steps (K x N buffers, channel-major) ---- */

/* The two kernels' messages, as the update and the backward see them:
   E = r (F Q) - s Q with F the filter, r = 1 / (F 1) per voxel and s = 0
   when normalised, r = 1 and s = 1 (the self term removed) when not. */
typedef struct kernels {
  const double *rs, *rb; /* per-voxel normalisers, NULL: 1 */
  double s;              /* 1: subtract the self term */
  double ws, wb;         /* weights (0 for a kernel that is off) */
} kernels;

typedef struct voxel_job {
  int32_t K;
  int64_t N;
  const kernels *k;
  const double *A, *Q, *Fs, *Fb, *mu, *gM, *r;
  double *Z, *out;
} voxel_job;

static void run_voxels(const crf_env *e, voxel_job *j, void (*fn)(void *, int64_t, int64_t)) {
  e->host->parallel_for(e->ctx, j->N, 16384 / j->K + 1, fn, j);
}

/* out = softmax over labels of Z */
static void softmax_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  for (int64_t i = b; i < e; i++) {
    double mx = -INFINITY;
    for (int32_t k = 0; k < K; k++) mx = j->Z[k * N + i] > mx ? j->Z[k * N + i] : mx;
    double s = 0;
    for (int32_t k = 0; k < K; k++) {
      double v = exp(j->Z[k * N + i] - mx);
      j->out[k * N + i] = v;
      s += v;
    }
    double inv = 1.0 / s;
    for (int32_t k = 0; k < K; k++) j->out[k * N + i] *= inv;
  }
}

/* Z = A - mu M, M = ws Es + wb Eb from the filtered Fs, Fb */
static void update_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const kernels *kn = j->k;
  const int32_t K = j->K;
  const int64_t N = j->N;
  double m[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    double rs = kn->rs ? kn->rs[i] : 1, rb = kn->rb ? kn->rb[i] : 1;
    for (int32_t k = 0; k < K; k++) {
      double q = j->Q[k * N + i], v = 0;
      if (kn->ws != 0) v += kn->ws * (rs * j->Fs[k * N + i] - kn->s * q);
      if (kn->wb != 0) v += kn->wb * (rb * j->Fb[k * N + i] - kn->s * q);
      m[k] = v;
    }
    for (int32_t l = 0; l < K; l++) {
      double p = 0;
      const double *row = j->mu + l * K;
      for (int32_t k = 0; k < K; k++) p += row[k] * m[k];
      j->Z[l * N + i] = j->A[l * N + i] - p;
    }
  }
}

/* out = -mu^T Z (Z holds gZ): the gradient of the messages */
static void message_grad_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  for (int64_t i = b; i < e; i++)
    for (int32_t k = 0; k < K; k++) {
      double s = 0;
      for (int32_t l = 0; l < K; l++) s += j->mu[l * K + k] * j->Z[l * N + i];
      j->out[k * N + i] = -s;
    }
}

/* In place on Fs and Fb: E = r F - s Q */
static void finish_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const kernels *kn = j->k;
  const int32_t K = j->K;
  const int64_t N = j->N;
  double *F[2] = { (double *)j->Fs, (double *)j->Fb };
  const double *r[2] = { kn->rs, kn->rb };
  for (int32_t m = 0; m < 2; m++) {
    if (!F[m]) continue;
    for (int32_t k = 0; k < K; k++)
      for (int64_t i = b; i < e; i++) F[m][k * N + i] = (r[m] ? r[m][i] : 1) * F[m][k * N + i] - kn->s * j->Q[k * N + i];
  }
}

/* out = r gM (r NULL: 1) */
static void scale_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const int32_t K = j->K;
  const int64_t N = j->N;
  const double *r = j->r;
  for (int32_t k = 0; k < K; k++)
    for (int64_t i = b; i < e; i++) j->out[k * N + i] = (r ? r[i] : 1) * j->gM[k * N + i];
}

/* gQ = Fs - s (ws + wb) gM (Fs holds the filtered part), then through the
   softmax: out = Q (gQ - <Q, gQ>) */
static void softmax_grad_span(void *arg, int64_t b, int64_t e) {
  const voxel_job *j = arg;
  const kernels *kn = j->k;
  const int32_t K = j->K;
  const int64_t N = j->N;
  const double wself = kn->s * (kn->ws + kn->wb);
  double gq[CRF_MAX_LABELS];
  for (int64_t i = b; i < e; i++) {
    double dot = 0;
    for (int32_t k = 0; k < K; k++) {
      gq[k] = j->Fs[k * N + i] - wself * j->gM[k * N + i];
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

static size_t norm_bytes(const crf_mf_problem *p) { return (size_t)p->g.n * sizeof(double); }

void crf_mf_release(const crf_env *e, crf_mf_problem *p) {
  if (p->have_spatial) crf_spatial_free(e, &p->spatial);
  if (p->have_lattice) crf_lattice_free(e, &p->lattice);
  crf_free(e, p->norm_spatial, norm_bytes(p));
  crf_free(e, p->norm_bil, norm_bytes(p));
  p->norm_spatial = p->norm_bil = NULL;
  p->have_spatial = p->have_lattice = 0;
}

/* r = 1 / (F 1), floored (the lattice may give slightly less than the
   self weight of an isolated point, never zero in practice) */
static lm_status normaliser(const crf_env *e, crf_mf_problem *p, int lattice, double **out) {
  const int64_t N = p->g.n;
  double *ones = crf_alloc(e, norm_bytes(p)), *r = crf_alloc(e, norm_bytes(p)), *tmp = crf_alloc(e, 2 * norm_bytes(p));
  lm_status st = LM_OK;
  if (!ones || !r || !tmp) {
    st = crf_oom(e, "the normalisers", 4 * norm_bytes(p));
    goto done;
  }
  for (int64_t i = 0; i < N; i++) ones[i] = 1;
  if (lattice) st = crf_lattice_filter(e, &p->lattice, ones, N, r, N, 1, 1.0, 0, 0);
  else crf_spatial_filter(e, &p->spatial, ones, r, tmp, 1, 1.0, 0);
  if (st) goto done;
  for (int64_t i = 0; i < N; i++) r[i] = 1.0 / (r[i] > 1e-6 ? r[i] : 1e-6);
  *out = r;
  r = NULL;
done:
  crf_free(e, ones, norm_bytes(p));
  crf_free(e, r, norm_bytes(p));
  crf_free(e, tmp, 2 * norm_bytes(p));
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

static kernels kernels_of(const crf_mf_problem *p) {
  kernels k = { p->norm_spatial, p->norm_bil, p->normalize ? 0.0 : 1.0, p->have_spatial ? p->w_smooth : 0,
                p->have_lattice ? p->w_bil : 0 };
  return k;
}

/* Fs = S Q and Fb = B Q (the kernels that are on); tmp holds 2 N */
static lm_status filter_both(const crf_env *e, const crf_mf_problem *p, const kernels *k, const double *Q, double *Fs, double *Fb,
                             double *tmp) {
  if (k->ws != 0) crf_spatial_filter(e, &p->spatial, Q, Fs, tmp, p->K, 1.0, 0);
  if (k->wb != 0) return crf_lattice_filter(e, &p->lattice, Q, p->g.n, Fb, p->g.n, p->K, 1.0, 0, 0);
  return LM_OK;
}

lm_status crf_mf_forward(const crf_env *e, const crf_mf_problem *p, const double *A, double *Z, double *Qhist) {
  const int64_t N = p->g.n;
  const int32_t K = p->K;
  const size_t kn = (size_t)(K * N) * sizeof(double), nb = 2 * (size_t)N * sizeof(double);
  const kernels k = kernels_of(p);
  double *Q = crf_alloc(e, kn), *Fs = crf_alloc(e, kn), *Fb = crf_alloc(e, kn), *tmp = crf_alloc(e, nb);
  lm_status st = LM_OK;
  if (!Q || !Fs || !Fb || !tmp) {
    st = crf_oom(e, "the mean-field buffers", 3 * kn + nb);
    goto done;
  }
  memcpy(Z, A, kn);
  voxel_job sm = { K, N, &k, .Z = Z, .out = Q };
  run_voxels(e, &sm, softmax_span);
  for (int32_t t = 1; t <= p->iterations; t++) {
    if ((st = crf_check_abort(e))) goto done;
    if (Qhist) memcpy(Qhist + (int64_t)(t - 1) * K * N, Q, kn);
    if ((st = filter_both(e, p, &k, Q, Fs, Fb, tmp))) goto done;
    voxel_job up = { K, N, &k, .A = A, .Q = Q, .Fs = Fs, .Fb = Fb, .mu = p->compat, .Z = Z };
    run_voxels(e, &up, update_span);
    if (t < p->iterations) run_voxels(e, &sm, softmax_span);
  }
done:
  crf_free(e, Q, kn);
  crf_free(e, Fs, kn);
  crf_free(e, Fb, kn);
  crf_free(e, tmp, nb);
  return st;
}

lm_status crf_mf_backward(const crf_env *e, const crf_mf_problem *p, const double *A, const double *G, double *gA, double *gmu,
                          double *gw) {
  const int64_t N = p->g.n;
  const int32_t K = p->K, T = p->iterations;
  const size_t kn = (size_t)(K * N) * sizeof(double), nb = 2 * (size_t)N * sizeof(double), kk = (size_t)K * K * sizeof(double);
  const size_t qh = (size_t)(T > 0 ? T : 1) * kn;
  const kernels k = kernels_of(p);
  lm_status st = LM_OK;
  double *Qhist = crf_alloc(e, qh), *gZ = crf_alloc(e, kn), *gM = crf_alloc(e, kn);
  double *Fs = crf_alloc(e, kn), *Fb = crf_alloc(e, kn), *H = crf_alloc(e, kn), *tmp = crf_alloc(e, nb), *acc = crf_alloc(e, kk);
  if (!Qhist || !gZ || !gM || !Fs || !Fb || !H || !tmp || !acc) {
    st = crf_oom(e, "the mean-field backward", qh + 5 * kn);
    goto done;
  }
  if ((st = crf_mf_forward(e, p, A, gZ, Qhist))) goto done; /* gZ as scratch for Z */
  memcpy(gZ, G, kn);
  memset(gA, 0, kn);
  for (int32_t t = T; t >= 1; t--) {
    if ((st = crf_check_abort(e))) goto done;
    const double *Q = Qhist + (int64_t)(t - 1) * K * N;
    for (int64_t i = 0; i < K * N; i++) gA[i] += gZ[i];
    /* gM = -mu^T gZ */
    voxel_job mg = { K, N, &k, .mu = p->compat, .Z = gZ, .out = gM };
    run_voxels(e, &mg, message_grad_span);
    /* the messages of this step, kernel by kernel: Es and Eb */
    if ((st = filter_both(e, p, &k, Q, Fs, Fb, tmp))) goto done;
    voxel_job fin = { K, N, &k, .Q = Q, .Fs = k.ws != 0 ? Fs : NULL, .Fb = k.wb != 0 ? Fb : NULL };
    run_voxels(e, &fin, finish_span);
    /* gmu[l][k] -= sum_i gZ_l M_k; gw += <gM, E> */
    for (int32_t m = 0; m < 2; m++) {
      double w = m == 0 ? k.ws : k.wb;
      const double *E = m == 0 ? Fs : Fb;
      if (w == 0) continue;
      memset(acc, 0, kk);
      sum_job outer = { K, N, gZ, E, NULL, 1 };
      if ((st = block_sums(e, &outer, acc, K * K, 1.0))) goto done;
      for (int32_t q = 0; q < K * K; q++) gmu[q] -= w * acc[q];
      sum_job dot = { K, N, gM, E, NULL, 0 };
      if ((st = block_sums(e, &dot, &gw[m], 1, 1.0))) goto done;
    }
    /* gQ = ws S (rs gM) + wb B^T (rb gM) - s (ws + wb) gM, into Fs */
    if (k.ws != 0) {
      voxel_job sc = { K, N, &k, .gM = gM, .r = k.rs, .out = H };
      run_voxels(e, &sc, scale_span);
      crf_spatial_filter(e, &p->spatial, H, Fs, tmp, K, k.ws, 0);
    } else {
      memset(Fs, 0, kn);
    }
    if (k.wb != 0) {
      voxel_job sc = { K, N, &k, .gM = gM, .r = k.rb, .out = H };
      run_voxels(e, &sc, scale_span);
      if ((st = crf_lattice_filter(e, &p->lattice, H, N, Fs, N, K, k.wb, 1, 1))) goto done;
    }
    voxel_job sg = { K, N, &k, .Q = Q, .Fs = Fs, .gM = gM, .out = gZ };
    run_voxels(e, &sg, softmax_grad_span);
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
