/* loss.c - fused losses with their own backward: cross_entropy (log-softmax
 * and negative log-likelihood in one pass), nll_loss and
 * binary_cross_entropy_with_logits.
 *
 * Semantics follow PyTorch 1.13:
 * - cross_entropy / nll_loss take logits (or log-probabilities) of shape C,
 *   N x C or N x C x d1 x ... and class targets of the same shape without
 *   the class dimension (integer dtypes; a value outside 0..C-1 that is not
 *   ignore_index is an error naming it). With class weights w and label
 *   smoothing e, position i with target t costs
 *     (1 - e) * w[t] * -logp[t] + (e / C) * sum_c w[c] * -logp[c],
 *   ignored positions cost nothing, and 'mean' divides the total by the sum
 *   of w[t] over positions that are not ignored (NaN when there are none).
 * - cross_entropy also takes probability targets of the logits' shape:
 *   t' = (1 - e) * t + e / C, a position costs sum_c w[c] t'[c] * -logp[c],
 *   'mean' divides by the number of positions (N x d1 x ...).
 * - binary_cross_entropy_with_logits: per element
 *     w * ((1 - t) * x + (1 + (pw - 1) * t) * log(1 + exp(-x))),
 *   in forms where no exp overflows and small losses keep their digits
 *   (see the kernel); weight w and pos_weight pw broadcast to x's shape as
 *   in torch (aligned from the last dimension); gradients for x and t.
 *
 * The class-loss kernels walk the positions (N x d1 x ...) in fixed units,
 * in blocks: with spatial dims, neighbouring positions of one sample read
 * for every class at the class stride (inner loops over positions); for
 * N x C, rows of contiguous classes. Units are spread over threads and
 * their partial sums added in unit order, so results do not depend on the
 * thread count. When a gradient is wanted the forward keeps each position's
 * log-sum-exp (1/C of the logits' size, where torch keeps the whole
 * log-softmax); the backward's softmax is exp(x - lse). f32 runs on
 * vectorised exp (internal.h) and log (below); f64, the gradient-check dtype, on libm. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLK 256            /* positions per block in the class kernels */
#define UNIT_ELEMS 16384   /* logits per unit of work (at least one position) */
#define GRAIN_ELEMS 32768  /* elements below which another thread does not pay */

/* ---- shared argument checks ---- */

static lm_status float_input(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what) {
  lm_status st = lm_check_arg(ctx, op, t, what);
  if (st) return st;
  if (!lm_dtype_is_float(t->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: %s has dtype %s, expected f32 or f64", op, what, lm_dtype_name(t->dtype));
  return LM_OK;
}

static lm_status check_reduction(lm_ctx *ctx, const char *op, int32_t reduction) {
  if (reduction == LM_REDUCTION_NONE || reduction == LM_REDUCTION_MEAN || reduction == LM_REDUCTION_SUM) return LM_OK;
  return lm_err(ctx, LM_E_ARG, "%s: unknown reduction %d, expected none (0), mean (1) or sum (2)", op, reduction);
}

/* Internal conversions must not be recorded: the loss records one node. */
static lm_status contiguous_as(lm_ctx *ctx, const lm_tensor *t, int32_t dtype, lm_tensor **out) {
  bool grad = lm_grad_pause(ctx);
  lm_tensor *c = NULL;
  lm_status st = lm_cast_if_needed(ctx, t, dtype, &c);
  if (!st) st = lm_contiguous(ctx, c, out);
  lm_tensor_release(c);
  ctx->grad_enabled = grad;
  return st;
}

/* A reduced loss: 0-d; 'none': the per-position shape. */
static lm_status new_loss(lm_ctx *ctx, const char *op, int32_t dtype, int32_t reduction, int32_t ndim,
                          const int64_t *shape, lm_tensor **out) {
  if (reduction == LM_REDUCTION_NONE) return lm_new(ctx, op, dtype, ndim, shape, out);
  return lm_new(ctx, op, dtype, 0, NULL, out);
}

/* The one device of a loss's tensors (NULL entries skipped). */
static lm_status loss_device(lm_ctx *ctx, const char *op, const lm_tensor *a, const lm_tensor *b, const lm_tensor *c,
                             const lm_tensor *d, const char *const *names, int32_t *dev) {
  const lm_tensor *ts[4] = {a, b, c, d};
  return lm_op_device(ctx, op, 4, ts, names, false, dev);
}

/* ==== vector maths for the f32 kernels ====
   (exp and the vector types are in internal.h) */

/* log for normal positive s (0 gives -inf, inf gives inf, NaN or a negative
   NaN): s = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(z) with
   z = (m - 1) / (m + 1), |z| < 0.172, by its odd series to z^9 (error below
   1e-9). */
LM_INLINE lm_v8f v8_log(lm_v8f s) {
  lm_v8i bits = (lm_v8i)s;
  lm_v8i e = ((bits >> 23) & 0xff) - 127;
  lm_v8f m = (lm_v8f)((bits & 0x7fffff) | 0x3f800000);
  lm_v8i big = m > lm_v8_splat(1.41421356f);
  m = lm_v8_select(big, m * 0.5f, m);
  e -= big; /* big is -1 where set */
  lm_v8f z = (m - 1.0f) / (m + 1.0f), z2 = z * z;
  lm_v8f q = lm_v8_splat(2.0f / 9);
  q = q * z2 + 2.0f / 7;
  q = q * z2 + 2.0f / 5;
  q = q * z2 + 2.0f / 3;
  q = q * z2 + 2.0f;
  lm_v8f ef = __builtin_convertvector(e, lm_v8f);
  lm_v8f r = ef * 0.693359375f + (ef * -2.12194440e-4f + q * z);
  r = lm_v8_select(s == lm_v8_splat(0), lm_v8_splat(-INFINITY), r);
  r = lm_v8_select(s == lm_v8_splat(INFINITY), s, r);
  return lm_v8_select((s != s) | (s < lm_v8_splat(0)), lm_v8_splat(NAN), r);
}

/* out[j] = exp(x[j] - m[j * m_step]) for j < n (m_step 0: one shift for all) */
LM_INLINE void exp_diff_f32(const float *x, const float *m, int64_t m_step, float *out, int64_t n) {
  int64_t j = 0;
  lm_v8f a, b, r;
  for (; j + 8 <= n; j += 8) {
    memcpy(&a, x + j, sizeof a);
    if (m_step) memcpy(&b, m + j, sizeof b);
    else b = lm_v8_splat(m[0]);
    r = lm_v8_exp(a - b);
    memcpy(out + j, &r, sizeof r);
  }
  if (j < n) {
    float ta[8] = {0}, tb[8] = {0}, tr[8];
    memcpy(ta, x + j, (size_t)(n - j) * sizeof *ta);
    if (m_step) memcpy(tb, m + j, (size_t)(n - j) * sizeof *tb);
    else for (int k = 0; k < 8; k++) tb[k] = m[0];
    memcpy(&a, ta, sizeof a);
    memcpy(&b, tb, sizeof b);
    r = lm_v8_exp(a - b);
    memcpy(tr, &r, sizeof r);
    memcpy(out + j, tr, (size_t)(n - j) * sizeof *tr);
  }
}

LM_INLINE void log_f32(const float *s, float *out, int64_t n) {
  int64_t j = 0;
  lm_v8f a, r;
  for (; j + 8 <= n; j += 8) {
    memcpy(&a, s + j, sizeof a);
    r = v8_log(a);
    memcpy(out + j, &r, sizeof r);
  }
  if (j < n) {
    float ta[8], tr[8];
    for (int k = 0; k < 8; k++) ta[k] = 1;
    memcpy(ta, s + j, (size_t)(n - j) * sizeof *ta);
    memcpy(&a, ta, sizeof a);
    r = v8_log(a);
    memcpy(tr, &r, sizeof r);
    memcpy(out + j, tr, (size_t)(n - j) * sizeof *tr);
  }
}

/* f64 (gradient checks, not the fast path): libm */
LM_INLINE void exp_diff_f64(const double *x, const double *m, int64_t m_step, double *out, int64_t n) {
  for (int64_t j = 0; j < n; j++) out[j] = exp(x[j] - m[j * m_step]);
}
LM_INLINE void log_f64(const double *s, double *out, int64_t n) {
  for (int64_t j = 0; j < n; j++) out[j] = log(s[j]);
}
LM_INLINE float log1_f32(float s) { float r; log_f32(&s, &r, 1); return r; }
LM_INLINE double log1_f64(double s) { return log(s); }

/* ==== cross_entropy and nll_loss ==== */

typedef struct class_plan {
  int32_t dtype;
  int64_t N, C, S;      /* batch, classes, positions per sample */
  int64_t npos;         /* N * S */
  bool log_input;       /* nll_loss: x holds log-probabilities already */
  const char *x;        /* contiguous logits / log-probabilities */
  const int64_t *tgt;   /* class targets (contiguous), or NULL */
  const char *prob;     /* probability targets (contiguous, x's dtype), or NULL */
  const double *w;      /* class weights, or NULL (all 1) */
  double wsum;          /* sum of the class weights */
  int64_t ignore;       /* ignore_index */
  double eps;           /* label smoothing */
  int64_t unit, nunits; /* positions per unit, number of units */
  char *lse;            /* per-position log-sum-exp: written by the forward
                           (when kept for backward), read by the backward */
  /* forward */
  char *loss;           /* per-position losses ('none'), or NULL */
  double *part;         /* per unit: loss sum, weight sum */
  int64_t *bad;         /* per unit: first position with a bad target, or -1 */
  /* backward */
  const char *gout;     /* per-position output gradient ('none'), or NULL */
  double gscale;        /* the reduced output's gradient (already divided for 'mean') */
  char *gx;             /* gradient of x (contiguous), or NULL */
  char *gt;             /* gradient of the probability targets, or NULL */
} class_plan;

static inline double class_weight(const class_plan *p, int64_t c) { return p->w ? p->w[c] : 1.0; }

/* The kernels, once per float type. Positions come in blocks of b: with
   S > 1 a block is b neighbouring positions of one sample, read for each
   class at stride S (inner loops over positions); with S == 1 (N x C) a
   block is b rows of C contiguous classes (inner loops over classes). */
#define DEF_CLASS_KERNELS(SUF, T)                                                                 \
  /* log-sum-exp over the classes of one block */                                                 \
  LM_INLINE void block_lse_##SUF(const class_plan *p, const T *x, int64_t b, T *lse) {            \
    const int64_t S = p->S, C = p->C;                                                             \
    if (p->log_input) {                                                                           \
      for (int64_t j = 0; j < b; j++) lse[j] = 0;                                                 \
      return;                                                                                     \
    }                                                                                             \
    T m[BLK], s[BLK], e[BLK];                                                                     \
    if (S == 1) {                                                                                 \
      for (int64_t j = 0; j < b; j++) {                                                           \
        const T *row = x + j * C;                                                                 \
        T mj = row[0], sj = 0;                                                                    \
        LM_SIMD_MAX(mj) for (int64_t c = 1; c < C; c++) mj = row[c] > mj ? row[c] : mj;           \
        if (mj == INFINITY || mj == -INFINITY) mj = 0; /* keeps inf - inf out */                  \
        for (int64_t c0 = 0; c0 < C; c0 += BLK) {                                                 \
          int64_t k = C - c0 < BLK ? C - c0 : BLK;                                                \
          exp_diff_##SUF(row + c0, &mj, 0, e, k);                                                 \
          LM_SIMD_SUM(sj) for (int64_t c = 0; c < k; c++) sj += e[c];                             \
        }                                                                                         \
        lse[j] = mj + log1_##SUF(sj);                                                             \
      }                                                                                           \
      return;                                                                                     \
    }                                                                                             \
    for (int64_t j = 0; j < b; j++) m[j] = x[j];                                                  \
    for (int64_t c = 1; c < C; c++) {                                                             \
      const T *xc = x + c * S;                                                                    \
      LM_SIMD for (int64_t j = 0; j < b; j++) m[j] = xc[j] > m[j] ? xc[j] : m[j];                 \
    }                                                                                             \
    for (int64_t j = 0; j < b; j++) {                                                             \
      if (m[j] == INFINITY || m[j] == -INFINITY) m[j] = 0;                                        \
      s[j] = 0;                                                                                   \
    }                                                                                             \
    for (int64_t c = 0; c < C; c++) {                                                             \
      exp_diff_##SUF(x + c * S, m, 1, e, b);                                                      \
      LM_SIMD for (int64_t j = 0; j < b; j++) s[j] += e[j];                                       \
    }                                                                                             \
    log_##SUF(s, lse, b);                                                                         \
    LM_SIMD for (int64_t j = 0; j < b; j++) lse[j] += m[j];                                       \
  }                                                                                               \
                                                                                                  \
  /* sum_c coef[c] * (lse - x[c]) for each position of the block, where                           \
     coef[c] = w[c] * ((1 - e) t[c] + e / C) with probability targets t,                          \
     else w[c] */                                                                                 \
  LM_INLINE void block_weighted_nll_##SUF(const class_plan *p, const T *x, const T *t, int64_t b, \
                                       const T *lse, T *out) {                                    \
    const int64_t S = p->S, C = p->C;                                                             \
    const T e = (T)p->eps, u = (T)(p->eps / C);                                                   \
    for (int64_t j = 0; j < b; j++) out[j] = 0;                                                   \
    if (S == 1) {                                                                                 \
      for (int64_t j = 0; j < b; j++) {                                                           \
        const T *row = x + j * C, *trow = t ? t + j * C : NULL;                                   \
        T acc = 0;                                                                                \
        for (int64_t c = 0; c < C; c++) {                                                         \
          T coef = (T)class_weight(p, c) * (trow ? (1 - e) * trow[c] + u : 1);                    \
          acc += coef * (lse[j] - row[c]);                                                        \
        }                                                                                         \
        out[j] = acc;                                                                             \
      }                                                                                           \
      return;                                                                                     \
    }                                                                                             \
    for (int64_t c = 0; c < C; c++) {                                                             \
      const T wc = (T)class_weight(p, c), *xc = x + c * S;                                        \
      if (t) {                                                                                    \
        const T *tc = t + c * S;                                                                  \
        LM_SIMD for (int64_t j = 0; j < b; j++) out[j] += wc * ((1 - e) * tc[j] + u) * (lse[j] - xc[j]); \
      } else {                                                                                    \
        LM_SIMD for (int64_t j = 0; j < b; j++) out[j] += wc * (lse[j] - xc[j]);                  \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
                                                                                                  \
  /* Forward over the b positions from flat position pos. */                                      \
  static LM_CLONES void fwd_block_##SUF(const class_plan *p, int64_t pos, int64_t b, double *lsum, \
                                     double *wsum, int64_t *bad) {                                \
    const int64_t S = p->S, C = p->C, off = (pos / S) * C * S + pos % S;                          \
    const T *x = (const T *)p->x + off;                                                           \
    T lse[BLK], sx[BLK];                                                                          \
    block_lse_##SUF(p, x, b, lse);                                                                \
    if (p->lse) memcpy((T *)p->lse + pos, lse, (size_t)b * sizeof *lse);                          \
    T *out = p->loss ? (T *)p->loss + pos : NULL;                                                 \
    if (p->prob) {                                                                                \
      block_weighted_nll_##SUF(p, x, (const T *)p->prob + off, b, lse, sx);                       \
      double ls = 0;                                                                              \
      for (int64_t j = 0; j < b; j++) {                                                           \
        if (out) out[j] = sx[j];                                                                  \
        ls += sx[j];                                                                              \
      }                                                                                           \
      *lsum += ls;                                                                                \
      *wsum += (double)b;                                                                         \
      return;                                                                                     \
    }                                                                                             \
    if (p->eps > 0) block_weighted_nll_##SUF(p, x, NULL, b, lse, sx);                             \
    const int64_t *t = p->tgt + pos, rs = S == 1 ? C : 1; /* next position's offset */            \
    double ls = 0, ws = 0; /* locals: no store-to-load chain through the pointers */              \
    for (int64_t j = 0; j < b; j++) {                                                             \
      const int64_t k = t[j];                                                                     \
      if (k == p->ignore || k < 0 || k >= C) {                                                    \
        if (k != p->ignore && *bad < 0) *bad = pos + j;                                           \
        if (out) out[j] = 0;                                                                      \
        continue;                                                                                 \
      }                                                                                           \
      const double wk = class_weight(p, k);                                                       \
      double l = wk * (double)(lse[j] - x[j * rs + k * S]);                                       \
      if (p->eps > 0) l = (1 - p->eps) * l + p->eps / C * (double)sx[j];                          \
      if (out) out[j] = (T)l;                                                                     \
      ls += l;                                                                                    \
      ws += wk;                                                                                   \
    }                                                                                             \
    *lsum += ls;                                                                                  \
    *wsum += ws;                                                                                  \
  }                                                                                               \
                                                                                                  \
  /* Backward over b positions: d/dx[c] = g * (A * softmax[c] - B[c]) with                        \
     class targets A = (1 - e) w[t] + (e / C) sum(w), B[c] = (1 - e) w[t] [c == t]                \
     + (e / C) w[c]; with probability targets A = sum_c w[c] t'[c],                               \
     B[c] = w[c] t'[c]; for nll_loss A = 0. */                                                    \
  static LM_CLONES void bwd_block_##SUF(const class_plan *p, int64_t pos, int64_t b) {            \
    const int64_t S = p->S, C = p->C, off = (pos / S) * C * S + pos % S;                          \
    const int64_t rs = S == 1 ? C : 1, cs = S == 1 ? 1 : S; /* position and class strides */      \
    const T *x = (const T *)p->x + off, *lse = p->lse ? (const T *)p->lse + pos : NULL;           \
    const T *t = p->prob ? (const T *)p->prob + off : NULL;                                       \
    const T e = (T)p->eps, u = (T)(p->eps / C);                                                   \
    T g[BLK], a[BLK], wt[BLK], ex[BLK];                                                           \
    for (int64_t j = 0; j < b; j++) g[j] = p->gout ? ((const T *)p->gout)[pos + j] : (T)p->gscale; \
    if (t) {                                                                                      \
      for (int64_t j = 0; j < b; j++) a[j] = 0;                                                   \
      for (int64_t c = 0; c < C; c++) {                                                           \
        const T wc = (T)class_weight(p, c);                                                       \
        for (int64_t j = 0; j < b; j++) a[j] += wc * ((1 - e) * t[j * rs + c * cs] + u);          \
      }                                                                                           \
    } else {                                                                                      \
      for (int64_t j = 0; j < b; j++) {                                                           \
        const int64_t k = p->tgt[pos + j];                                                        \
        const bool skip = k == p->ignore || k < 0 || k >= C;                                      \
        if (skip) g[j] = 0;                                                                       \
        wt[j] = skip ? 0 : (T)class_weight(p, k);                                                 \
        a[j] = p->log_input ? 0 : (1 - e) * wt[j] + u * (T)p->wsum;                               \
      }                                                                                           \
    }                                                                                             \
    if (p->gx) {                                                                                  \
      T *gx = (T *)p->gx + off;                                                                   \
      if (S == 1) {                                                                               \
        for (int64_t j = 0; j < b; j++) {                                                         \
          const T *row = x + j * C, *trow = t ? t + j * C : NULL;                                 \
          T *grow = gx + j * C;                                                                   \
          for (int64_t c0 = 0; c0 < C; c0 += BLK) {                                               \
            int64_t k = C - c0 < BLK ? C - c0 : BLK;                                              \
            if (p->log_input) {                                                                   \
              for (int64_t c = 0; c < k; c++) ex[c] = 0;                                          \
            } else {                                                                              \
              exp_diff_##SUF(row + c0, lse + j, 0, ex, k);                                        \
            }                                                                                     \
            for (int64_t c = 0; c < k; c++) {                                                     \
              T coef = (T)class_weight(p, c0 + c) * (trow ? (1 - e) * trow[c0 + c] + u : u);      \
              grow[c0 + c] = g[j] * (a[j] * ex[c] - coef);                                        \
            }                                                                                     \
          }                                                                                       \
        }                                                                                         \
      } else {                                                                                    \
        for (int64_t c = 0; c < C; c++) {                                                         \
          const T wc = (T)class_weight(p, c), *xc = x + c * S;                                    \
          T *gc = gx + c * S;                                                                     \
          if (p->log_input) {                                                                     \
            for (int64_t j = 0; j < b; j++) gc[j] = 0;                                            \
            continue;                                                                             \
          }                                                                                       \
          exp_diff_##SUF(xc, lse, 1, ex, b);                                                      \
          if (t) {                                                                                \
            const T *tc = t + c * S;                                                              \
            LM_SIMD for (int64_t j = 0; j < b; j++) gc[j] = g[j] * (a[j] * ex[j] - wc * ((1 - e) * tc[j] + u)); \
          } else {                                                                                \
            LM_SIMD for (int64_t j = 0; j < b; j++) gc[j] = g[j] * (a[j] * ex[j] - u * wc);       \
          }                                                                                       \
        }                                                                                         \
      }                                                                                           \
      if (!t)                                                                                     \
        for (int64_t j = 0; j < b; j++)                                                           \
          if (g[j] != 0) gx[j * rs + p->tgt[pos + j] * cs] -= g[j] * (1 - e) * wt[j];             \
    }                                                                                             \
    if (p->gt) { /* d/dt[c] = g (1 - e) w[c] (lse - x[c]) */                                      \
      T *gt = (T *)p->gt + off;                                                                   \
      for (int64_t c = 0; c < C; c++) {                                                           \
        const T wc = (T)class_weight(p, c);                                                       \
        for (int64_t j = 0; j < b; j++)                                                           \
          gt[j * rs + c * cs] = g[j] * (1 - e) * wc * (lse[j] - x[j * rs + c * cs]);              \
      }                                                                                           \
    }                                                                                             \
  }

DEF_CLASS_KERNELS(f32, float)
DEF_CLASS_KERNELS(f64, double)

/* Runs the kernels over units [u0, u1), block by block; with S > 1 a block
   never crosses a sample boundary. */
typedef struct unit_arg {
  const class_plan *p;
  bool backward;
} unit_arg;

static void run_units(void *arg, int64_t u0, int64_t u1) {
  const unit_arg *ua = arg;
  const class_plan *p = ua->p;
  for (int64_t u = u0; u < u1; u++) {
    int64_t pos = u * p->unit, end = pos + p->unit < p->npos ? pos + p->unit : p->npos;
    double lsum = 0, wsum = 0;
    int64_t bad = -1;
    while (pos < end) {
      int64_t b = end - pos;
      if (p->S > 1 && b > p->S - pos % p->S) b = p->S - pos % p->S;
      if (b > BLK) b = BLK;
      if (ua->backward) {
        if (p->dtype == LM_F32) bwd_block_f32(p, pos, b);
        else bwd_block_f64(p, pos, b);
      } else {
        if (p->dtype == LM_F32) fwd_block_f32(p, pos, b, &lsum, &wsum, &bad);
        else fwd_block_f64(p, pos, b, &lsum, &wsum, &bad);
      }
      pos += b;
    }
    if (!ua->backward) {
      p->part[2 * u] = lsum;
      p->part[2 * u + 1] = wsum;
      p->bad[u] = bad;
    }
  }
}

static void run_plan(lm_ctx *ctx, const class_plan *p, bool backward) {
  unit_arg ua = {p, backward};
  int64_t per_unit = p->unit * p->C;
  int64_t grain = GRAIN_ELEMS / (per_unit > 0 ? per_unit : 1);
  lm_parallel_for(ctx, p->nunits, grain < 1 ? 1 : grain, run_units, &ua);
}

static void plan_units(class_plan *p) {
  p->npos = p->N * p->S;
  p->unit = UNIT_ELEMS / (p->C > 0 ? p->C : 1);
  if (p->unit < 1) p->unit = 1;
  p->nunits = (p->npos + p->unit - 1) / p->unit;
}

/* What the backward keeps: saved[0] the contiguous x, saved[1] the targets
   (i64 classes or probabilities, contiguous), saved[2] the log-sum-exp of
   each position (cross_entropy); weights in extra. */
typedef struct class_saved {
  int64_t C;
  double w[]; /* C class weights */
} class_saved;

enum { IP_IGNORE, IP_REDUCTION, IP_PROB, IP_LOGIN, IP_N, IP_C, IP_S, IP_HAS_W };
enum { P_EPS, P_DENOM, P_WSUM };

static lm_status class_backward_dev(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin);

static lm_status class_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  if (lm_device_of(node->saved[0]) != LM_CPU) return class_backward_dev(ctx, node, gout, gin);
  const lm_tensor *x = node->saved[0], *tgt = node->saved[1];
  const class_saved *cs = node->extra;
  const char *op = node->ip[IP_LOGIN] ? "nll_loss" : "cross_entropy";
  lm_tensor *g = NULL, *gx = NULL, *gt = NULL;
  class_plan p = {0};
  p.dtype = x->dtype;
  p.N = node->ip[IP_N];
  p.C = node->ip[IP_C];
  p.S = node->ip[IP_S];
  p.log_input = node->ip[IP_LOGIN];
  p.x = lm_data(x);
  p.lse = node->saved[2] ? lm_data(node->saved[2]) : NULL;
  p.eps = node->p[P_EPS];
  p.wsum = node->p[P_WSUM];
  p.ignore = node->ip[IP_IGNORE];
  p.w = node->ip[IP_HAS_W] ? cs->w : NULL;
  if (node->ip[IP_PROB]) p.prob = lm_data(tgt);
  else p.tgt = (const int64_t *)lm_data(tgt);
  plan_units(&p);
  lm_status st;
  int32_t reduction = (int32_t)node->ip[IP_REDUCTION];
  if ((st = contiguous_as(ctx, gout[0], x->dtype, &g))) goto done;
  if (reduction == LM_REDUCTION_NONE) {
    p.gout = lm_data(g);
  } else {
    p.gscale = lm_read_as_double(g->dtype, lm_data(g));
    if (reduction == LM_REDUCTION_MEAN) p.gscale /= node->p[P_DENOM];
  }
  if (node->needs[0]) {
    if ((st = lm_new(ctx, op, x->dtype, x->ndim, x->shape, &gx))) goto done;
    p.gx = lm_data(gx);
  }
  if (node->n_in > 1 && node->needs[1] && p.prob) {
    if ((st = lm_new(ctx, op, tgt->dtype, tgt->ndim, tgt->shape, &gt))) goto done;
    p.gt = lm_data(gt);
  }
  if (p.gx || p.gt) run_plan(ctx, &p, true);
  gin[0] = gx;
  if (node->n_in > 1) gin[1] = gt;
  gx = gt = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gx);
  lm_tensor_release(gt);
  return st;
}

/* ---- cross_entropy and nll_loss on a device ----
   The backend's class_loss entry writes per-position costs, weights and
   flags; the sums are device reductions, so the loss stays on the device.
   A bad target is found by one flag read back to the host (its position and
   value then come from a copy of the targets, on the error path only).
   saved: 0 x, 1 targets (contiguous, i64 or x's dtype), 2 lse, 3 weights
   (f64), 4 the 'mean' denominator (0-d). */

static lm_status dev_class_run(lm_ctx *ctx, const char *op, int32_t dev, bool backward, const class_plan *p,
                               const lm_tensor *w, void *loss, double *wt, uint8_t *bad, void *lse, const void *g,
                               int64_t gstride, void *gx, void *gt) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, dev, class_loss, &be);
  if (st || p->npos == 0) return st;
  if ((st = be->class_loss(backward, p->dtype, p->N, p->C, p->S, p->log_input, p->x, p->tgt, p->prob,
                           w ? (const double *)lm_data(w) : NULL, p->ignore, p->eps, loss, wt, bad, lse, g, gstride,
                           gx, gt)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

/* Whether any flag of the u8 tensor is set (read back to the host). */
static lm_status dev_any(lm_ctx *ctx, const lm_tensor *flags, bool *any) {
  lm_tensor *r = NULL, *h = NULL;
  lm_status st = lm_reduce(ctx, LM_OP_ANY, flags, 0, NULL, 0, 0, &r, NULL);
  if (!st) st = lm_to_device(ctx, r, LM_CPU, &h);
  if (!st) *any = *(const uint8_t *)lm_data(h) != 0;
  lm_tensor_release(r);
  lm_tensor_release(h);
  return st;
}

static lm_status bad_target_error(lm_ctx *ctx, const char *op, const lm_tensor *target, const lm_tensor *tc,
                                  const lm_tensor *flags, int64_t C, int64_t ignore_index) {
  lm_tensor *ht = NULL, *hf = NULL;
  char a[LM_SHAPE_BUF];
  lm_status st = lm_to_device(ctx, tc, LM_CPU, &ht);
  if (!st) st = lm_to_device(ctx, flags, LM_CPU, &hf);
  if (!st) {
    const int64_t *t = (const int64_t *)lm_data(ht), n = lm_numel(hf);
    const uint8_t *f = (const uint8_t *)lm_data(hf);
    int64_t at = 0;
    while (at < n - 1 && !f[at]) at++;
    st = lm_err(ctx, LM_E_INDEX, "%s: target value %lld (at flat position %lld of target %s) is out of range for %lld classes "
                "(expected 0 to %lld, or ignore_index %lld)", op, (long long)t[at], (long long)at, LM_SHP(target, a),
                (long long)C, (long long)(C - 1), (long long)ignore_index);
  }
  lm_tensor_release(ht);
  lm_tensor_release(hf);
  return st;
}

static lm_status class_loss_dev(lm_ctx *ctx, const char *op, bool log_input, bool prob, const lm_tensor *x,
                                const lm_tensor *target, const lm_tensor *weight, int64_t ignore_index,
                                double label_smoothing, int32_t reduction, class_plan *p, int32_t pnd,
                                const int64_t *pshape, lm_tensor **out) {
  const int32_t dev = lm_device_of(x);
  lm_tensor *xc = NULL, *tc = NULL, *wc = NULL, *lse = NULL, *loss = NULL, *wt = NULL, *flags = NULL, *res = NULL,
            *lsum = NULL, *wsum = NULL;
  lm_status st;
  const lm_tensor *ins[2] = {x, target};
  const bool keep = lm_grad_needed(ctx, 2, ins); /* the backward's softmax needs lse */
  const bool grad = lm_grad_pause(ctx);         /* the conversions and sums are not recorded */
  if ((st = contiguous_as(ctx, x, x->dtype, &xc))) goto done;
  if ((st = contiguous_as(ctx, target, prob ? x->dtype : LM_I64, &tc))) goto done;
  if (weight && (st = contiguous_as(ctx, weight, LM_F64, &wc))) goto done;
  p->x = lm_data(xc);
  if (prob) p->prob = lm_data(tc);
  else p->tgt = (const int64_t *)lm_data(tc);
  p->ignore = ignore_index;
  p->eps = label_smoothing;
  p->npos = p->N * p->S;
  if ((st = lm_new_on(ctx, op, dev, x->dtype, pnd, pshape, &loss))) goto done;
  if ((st = lm_new_on(ctx, op, dev, LM_F64, pnd, pshape, &wt))) goto done;
  if ((st = lm_new_on(ctx, op, dev, LM_U8, pnd, pshape, &flags))) goto done;
  if (!log_input && keep && (st = lm_new_on(ctx, op, dev, x->dtype, 1, &p->npos, &lse))) goto done;
  if ((st = dev_class_run(ctx, op, dev, false, p, wc, lm_data(loss), (double *)lm_data(wt), (uint8_t *)lm_data(flags),
                          lse ? lm_data(lse) : NULL, NULL, 0, NULL, NULL)))
    goto done;
  bool any_bad = false;
  if (!prob && (st = dev_any(ctx, flags, &any_bad))) goto done;
  if (any_bad) { st = bad_target_error(ctx, op, target, tc, flags, p->C, ignore_index); goto done; }
  if ((st = lm_reduce(ctx, LM_OP_SUM, wt, 0, NULL, 0, 0, &wsum, NULL))) goto done;
  if (reduction == LM_REDUCTION_NONE) {
    res = loss;
    loss = NULL;
  } else {
    lm_tensor *l64 = NULL;
    if ((st = lm_to_dtype(ctx, loss, LM_F64, &l64))) goto done;
    st = lm_reduce(ctx, LM_OP_SUM, l64, 0, NULL, 0, 0, &lsum, NULL);
    lm_tensor_release(l64);
    if (st) goto done;
    if (reduction == LM_REDUCTION_MEAN && (st = lm_binary(ctx, LM_OP_DIV, lsum, wsum, lsum, NULL))) goto done;
    if ((st = lm_to_dtype(ctx, lsum, x->dtype, &res))) goto done;
  }
  ctx->grad_enabled = grad;
  lm_node *node;
  lm_tensor *outs[1] = {res};
  if ((st = lm_record(ctx, log_input ? LM_OP_NLL : LM_OP_CROSS_ENTROPY, class_backward, 2, ins, 1, outs, &node))) goto done;
  if (node) {
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, tc))) goto done;
    if (lse && (st = lm_save(ctx, node, 2, lse))) goto done;
    if (wc && (st = lm_save(ctx, node, 3, wc))) goto done;
    if ((st = lm_save(ctx, node, 4, wsum))) goto done;
    node->ip[IP_IGNORE] = ignore_index;
    node->ip[IP_REDUCTION] = reduction;
    node->ip[IP_PROB] = prob;
    node->ip[IP_LOGIN] = log_input;
    node->ip[IP_N] = p->N;
    node->ip[IP_C] = p->C;
    node->ip[IP_S] = p->S;
    node->ip[IP_HAS_W] = weight != NULL;
    node->p[P_EPS] = label_smoothing;
  }
  st = lm_finish_out(res, out);
  res = NULL;
done:
  ctx->grad_enabled = grad;
  lm_tensor_release(xc);
  lm_tensor_release(tc);
  lm_tensor_release(wc);
  lm_tensor_release(lse);
  lm_tensor_release(loss);
  lm_tensor_release(wt);
  lm_tensor_release(flags);
  lm_tensor_release(lsum);
  lm_tensor_release(wsum);
  lm_tensor_release(res);
  return st;
}

static lm_status class_backward_dev(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *tgt = node->saved[1];
  const char *op = node->ip[IP_LOGIN] ? "nll_loss" : "cross_entropy";
  const int32_t dev = lm_device_of(x);
  lm_tensor *g = NULL, *g1 = NULL, *gx = NULL, *gt = NULL;
  class_plan p = {0};
  p.dtype = x->dtype;
  p.N = node->ip[IP_N];
  p.C = node->ip[IP_C];
  p.S = node->ip[IP_S];
  p.npos = p.N * p.S;
  p.log_input = node->ip[IP_LOGIN];
  p.x = lm_data(x);
  p.eps = node->p[P_EPS];
  p.ignore = node->ip[IP_IGNORE];
  if (node->ip[IP_PROB]) p.prob = lm_data(tgt);
  else p.tgt = (const int64_t *)lm_data(tgt);
  int32_t reduction = (int32_t)node->ip[IP_REDUCTION];
  lm_status st;
  if (reduction == LM_REDUCTION_MEAN) { /* g / the sum of weights, on the device */
    if ((st = lm_binary(ctx, LM_OP_DIV, gout[0], node->saved[4], NULL, &g1))) goto done;
    st = contiguous_as(ctx, g1, x->dtype, &g);
  } else {
    st = contiguous_as(ctx, gout[0], x->dtype, &g);
  }
  if (st) goto done;
  if (node->needs[0] && (st = lm_new_on(ctx, op, dev, x->dtype, x->ndim, x->shape, &gx))) goto done;
  if (node->n_in > 1 && node->needs[1] && p.prob &&
      (st = lm_new_on(ctx, op, dev, tgt->dtype, tgt->ndim, tgt->shape, &gt)))
    goto done;
  if ((gx || gt) &&
      (st = dev_class_run(ctx, op, dev, true, &p, node->saved[3], NULL, NULL, NULL,
                          node->saved[2] ? lm_data(node->saved[2]) : NULL, lm_data(g),
                          reduction == LM_REDUCTION_NONE ? 1 : 0, gx ? lm_data(gx) : NULL, gt ? lm_data(gt) : NULL)))
    goto done;
  gin[0] = gx;
  if (node->n_in > 1) gin[1] = gt;
  gx = gt = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(g1);
  lm_tensor_release(gx);
  lm_tensor_release(gt);
  return st;
}

/* The shared body of cross_entropy (log_input false) and nll_loss. */
static lm_status class_loss(lm_ctx *ctx, const char *op, bool log_input, const lm_tensor *x, const lm_tensor *target,
                            const lm_tensor *weight, int64_t ignore_index, double label_smoothing, int32_t reduction,
                            lm_tensor **out) {
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  lm_tensor *xc = NULL, *tc = NULL, *wc = NULL, *lse = NULL, *res = NULL;
  class_saved *saved = NULL;
  double *part = NULL;
  int64_t *bad = NULL;
  lm_status st;
  const char *xname = log_input ? "input" : "logits";
  if ((st = float_input(ctx, op, x, xname))) return st;
  if ((st = lm_check_arg(ctx, op, target, "target"))) return st;
  if (weight && (st = float_input(ctx, op, weight, "weight"))) return st;
  if ((st = check_reduction(ctx, op, reduction))) return st;
  int32_t dev;
  const char *names[4] = {xname, "target", "weight", ""};
  if ((st = loss_device(ctx, op, x, target, weight, NULL, names, &dev))) return st;
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    return lm_err(ctx, LM_E_ARG, "%s: label_smoothing is %g, expected a value in [0, 1]", op, label_smoothing);
  if (x->ndim < 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s are 0-D, expected C, N x C or N x C x d1 x ... (classes in dimension 1)", op, xname);
  class_plan p = {0};
  p.dtype = x->dtype;
  p.log_input = log_input;
  bool batched = x->ndim >= 2;
  p.N = batched ? x->shape[0] : 1;
  p.C = x->shape[batched ? 1 : 0];
  p.S = 1;
  for (int32_t d = 2; d < x->ndim; d++) p.S *= x->shape[d];
  if (p.C < 1) return lm_err(ctx, LM_E_SHAPE, "%s: %s of shape %s have no classes (dimension %d is 0)", op, xname, LM_SHP(x, a), batched);
  /* the shape of a per-position result: x's without the class dimension */
  int32_t pnd = x->ndim - 1;
  int64_t pshape[LM_MAX_DIMS];
  for (int32_t d = 0, k = 0; d < x->ndim; d++)
    if (d != (batched ? 1 : 0)) pshape[k++] = x->shape[d];
  bool same_shape = target->ndim == x->ndim && !memcmp(target->shape, x->shape, x->ndim * sizeof *x->shape);
  bool prob = !log_input && same_shape && lm_dtype_is_float(target->dtype);
  if (prob) {
    if (target->dtype != x->dtype)
      return lm_err(ctx, LM_E_DTYPE, "%s: probability target has dtype %s, expected the logits' dtype %s", op,
                    lm_dtype_name(target->dtype), lm_dtype_name(x->dtype));
    if (ignore_index >= 0)
      return lm_err(ctx, LM_E_ARG, "%s: ignore_index (%lld) is not supported with probability targets", op, (long long)ignore_index);
  } else {
    if (lm_dtype_is_float(target->dtype) || target->dtype == LM_BOOL) {
      if (log_input)
        return lm_err(ctx, LM_E_DTYPE, "%s: target has dtype %s, expected class indices (i64, i32 or u8)", op,
                      lm_dtype_name(target->dtype));
      return lm_err(ctx, LM_E_DTYPE, "%s: target has dtype %s and shape %s for logits %s, expected class indices (i64, i32 or u8) "
                    "of shape %s, or probabilities of the logits' shape", op, lm_dtype_name(target->dtype), LM_SHP(target, a),
                    LM_SHP(x, b), lm_shape_str(pnd, pshape, (char[LM_SHAPE_BUF]){0}, LM_SHAPE_BUF));
    }
    bool fits = target->ndim == pnd && !memcmp(target->shape, pshape, pnd * sizeof *pshape);
    if (!fits)
      return lm_err(ctx, LM_E_SHAPE, "%s: target has shape %s for %s %s, expected %s (the %s' shape without the class dimension %d)",
                    op, LM_SHP(target, a), xname, LM_SHP(x, b), lm_shape_str(pnd, pshape, (char[LM_SHAPE_BUF]){0}, LM_SHAPE_BUF),
                    xname, batched);
  }
  if (weight && (weight->ndim != 1 || weight->shape[0] != p.C))
    return lm_err(ctx, LM_E_SHAPE, "%s: weight has shape %s, expected %lld (one per class)", op, LM_SHP(weight, a), (long long)p.C);
  if (dev != LM_CPU)
    return class_loss_dev(ctx, op, log_input, prob, x, target, weight, ignore_index, label_smoothing, reduction, &p, pnd,
                          pshape, out);

  if ((st = contiguous_as(ctx, x, x->dtype, &xc))) goto done;
  if ((st = contiguous_as(ctx, target, prob ? x->dtype : LM_I64, &tc))) goto done;
  saved = malloc(sizeof *saved + (size_t)p.C * sizeof(double));
  if (!saved) { st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op); goto done; }
  saved->C = p.C;
  p.wsum = (double)p.C;
  if (weight) {
    if ((st = contiguous_as(ctx, weight, LM_F64, &wc))) goto done;
    memcpy(saved->w, lm_data(wc), (size_t)p.C * sizeof(double));
    p.w = saved->w;
    p.wsum = 0;
    for (int64_t c = 0; c < p.C; c++) p.wsum += p.w[c];
  }
  p.x = lm_data(xc);
  if (prob) p.prob = lm_data(tc);
  else p.tgt = (const int64_t *)lm_data(tc);
  p.ignore = ignore_index;
  p.eps = label_smoothing;
  plan_units(&p);
  if ((st = new_loss(ctx, op, x->dtype, reduction, pnd, pshape, &res))) goto done;
  if (reduction == LM_REDUCTION_NONE) p.loss = lm_data(res);
  const lm_tensor *ins[2] = {x, target};
  if (!log_input && lm_grad_needed(ctx, 2, ins)) { /* the backward's softmax needs it */
    if ((st = lm_new(ctx, op, x->dtype, 1, &p.npos, &lse))) goto done;
    p.lse = lm_data(lse);
  }
  part = malloc((size_t)(p.nunits ? p.nunits : 1) * 2 * sizeof *part);
  bad = malloc((size_t)(p.nunits ? p.nunits : 1) * sizeof *bad);
  if (!part || !bad) { st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op); goto done; }
  p.part = part;
  p.bad = bad;
  run_plan(ctx, &p, false);

  double lsum = 0, wsum = 0;
  for (int64_t u = 0; u < p.nunits; u++) {
    if (bad[u] >= 0) {
      int64_t at = bad[u];
      st = lm_err(ctx, LM_E_INDEX, "%s: target value %lld (at flat position %lld of target %s) is out of range for %lld classes "
                  "(expected 0 to %lld, or ignore_index %lld)", op, (long long)p.tgt[at], (long long)at, LM_SHP(target, a),
                  (long long)p.C, (long long)(p.C - 1), (long long)ignore_index);
      goto done;
    }
    lsum += part[2 * u];
    wsum += part[2 * u + 1];
  }
  double denom = wsum;
  if (reduction != LM_REDUCTION_NONE) {
    double v = reduction == LM_REDUCTION_SUM ? lsum : lsum / denom;
    lm_write_from_double(res->dtype, lm_data(res), v);
  }

  lm_node *node;
  lm_tensor *outs[1] = {res};
  if ((st = lm_record(ctx, log_input ? LM_OP_NLL : LM_OP_CROSS_ENTROPY, class_backward, 2, ins, 1, outs, &node))) goto done;
  if (node) {
    if ((st = lm_save(ctx, node, 0, xc))) goto done;
    if ((st = lm_save(ctx, node, 1, tc))) goto done;
    if (lse && (st = lm_save(ctx, node, 2, lse))) goto done;
    node->ip[IP_IGNORE] = ignore_index;
    node->ip[IP_REDUCTION] = reduction;
    node->ip[IP_PROB] = prob;
    node->ip[IP_LOGIN] = log_input;
    node->ip[IP_N] = p.N;
    node->ip[IP_C] = p.C;
    node->ip[IP_S] = p.S;
    node->ip[IP_HAS_W] = weight != NULL;
    node->p[P_EPS] = label_smoothing;
    node->p[P_DENOM] = denom;
    node->p[P_WSUM] = p.wsum;
    node->extra = saved;
    node->extra_free = free;
    saved = NULL;
  }
  st = lm_finish_out(res, out);
  res = NULL;
done:
  free(saved);
  free(part);
  free(bad);
  lm_tensor_release(xc);
  lm_tensor_release(tc);
  lm_tensor_release(wc);
  lm_tensor_release(lse);
  lm_tensor_release(res);
  return st;
}

lm_status lm_cross_entropy(lm_ctx *ctx, const lm_tensor *logits, const lm_tensor *target, const lm_tensor *weight,
                           int64_t ignore_index, double label_smoothing, int32_t reduction, lm_tensor **out) {
  return class_loss(ctx, "cross_entropy", false, logits, target, weight, ignore_index, label_smoothing, reduction, out);
}

lm_status lm_nll_loss(lm_ctx *ctx, const lm_tensor *input, const lm_tensor *target, const lm_tensor *weight,
                      int64_t ignore_index, int32_t reduction, lm_tensor **out) {
  return class_loss(ctx, "nll_loss", true, input, target, weight, ignore_index, 0, reduction, out);
}

/* ==== binary_cross_entropy_with_logits ==== */

/* Per element: the loss (or one of its gradients, times scale) from x, t
   and pos_weight pw (operand 3, when present). Operand 0 is written. */
typedef struct bce_arg {
  int32_t mode; /* BCE_LOSS, BCE_GRAD_X, BCE_GRAD_T */
  bool has_pw;
  double scale;
} bce_arg;
enum { BCE_LOSS, BCE_GRAD_X, BCE_GRAD_T };

/* With e = exp(-|x|) and sp = log(1 + exp(-x)) = max(-x, 0) + log1p(e):
   loss (1 - t) x + lw sp, lw = 1 + (pw - 1) t; d/dx (1 - t) - lw sigmoid(-x);
   d/dt -x + (pw - 1) sp. For x < 0 the loss is taken as -pw t x + lw log1p(e)
   and d/dx as lw sigmoid(x) - pw t (the same values), so that nothing
   cancels where the loss is small: q = e / (1 + e) is sigmoid(-|x|). */
#define DEF_BCE_SCALAR(SUF, T, EXP, LOG1P)                                              \
  static void bce_scalar_##SUF(char **ptr, const int64_t *s, int64_t n, const bce_arg *a) { \
    for (int64_t i = 0; i < n; i++) {                                                   \
      const T x = *(const T *)(ptr[1] + i * s[1]), t = *(const T *)(ptr[2] + i * s[2]); \
      const T pw = a->has_pw ? *(const T *)(ptr[3] + i * s[3]) : (T)1;                  \
      const T e = EXP(x < 0 ? x : -x), lw = 1 + (pw - 1) * t;                           \
      T r;                                                                              \
      if (a->mode == BCE_GRAD_X) {                                                      \
        const T q = e / (1 + e);                                                        \
        r = x < 0 ? lw * q - pw * t : (1 - t) - lw * q;                                 \
      } else {                                                                          \
        const T l1p = LOG1P(e), sp = (x < 0 ? -x : 0) + l1p;                            \
        if (a->mode == BCE_LOSS) r = (x < 0 ? -pw * t * x : (1 - t) * x) + lw * l1p;    \
        else r = -x + (pw - 1) * sp;                                                    \
      }                                                                                 \
      *(T *)(ptr[0] + i * s[0]) = r * (T)a->scale;                                      \
    }                                                                                   \
  }
DEF_BCE_SCALAR(f32, float, expf, log1pf)
DEF_BCE_SCALAR(f64, double, exp, log1p)

/* log1p(e) for e in [0, 1]: log(u) e / (u - 1) with u = 1 + e corrects the
   rounding of u (e itself where u rounds to 1). */
LM_INLINE lm_v8f v8_log1p_unit(lm_v8f e) {
  lm_v8f u = e + 1.0f;
  return lm_v8_select(u == lm_v8_splat(1.0f), e, v8_log(u) * (e / (u - 1.0f)));
}

LM_INLINE lm_v8f load8(const float *p, int64_t k) {
  lm_v8f v;
  if (k == 8) {
    memcpy(&v, p, sizeof v);
  } else {
    float tmp[8] = {0};
    memcpy(tmp, p, (size_t)k * sizeof *tmp);
    memcpy(&v, tmp, sizeof v);
  }
  return v;
}

/* f32: eight lanes at a time where the run is contiguous (pos_weight may be
   one value for the run), the scalar loop otherwise. */
static LM_CLONES void bce_kernel_f32(char **ptr, const int64_t *s, int64_t n, void *arg) {
  const bce_arg *a = arg;
  const int64_t fs = sizeof(float);
  if (s[0] != fs || s[1] != fs || s[2] != fs || (a->has_pw && s[3] != fs && s[3] != 0)) {
    bce_scalar_f32(ptr, s, n, a);
    return;
  }
  float *o = (float *)ptr[0];
  const float *xs = (const float *)ptr[1], *ts = (const float *)ptr[2];
  const float *pws = a->has_pw ? (const float *)ptr[3] : NULL;
  const lm_v8i sign = (lm_v8i){0} + INT32_MIN;
  for (int64_t i = 0; i < n; i += 8) {
    int64_t k = n - i < 8 ? n - i : 8;
    lm_v8f x = load8(xs + i, k), t = load8(ts + i, k);
    lm_v8f pw = !pws ? lm_v8_splat(1) : s[3] ? load8(pws + i, k) : lm_v8_splat(pws[0]);
    lm_v8f e = lm_v8_exp((lm_v8f)((lm_v8i)x | sign)), lw = (pw - 1.0f) * t + 1.0f; /* exp(-|x|) */
    lm_v8f r;
    if (a->mode == BCE_GRAD_X) {
      lm_v8f q = e / (e + 1.0f);
      r = lm_v8_select(x < lm_v8_splat(0), lw * q - pw * t, (1.0f - t) - lw * q);
    } else {
      lm_v8f l1p = v8_log1p_unit(e);
      lm_v8i neg = x < lm_v8_splat(0);
      if (a->mode == BCE_LOSS) r = lm_v8_select(neg, -pw * t * x, (1.0f - t) * x) + lw * l1p;
      else r = (pw - 1.0f) * (lm_v8_select(neg, -x, lm_v8_splat(0)) + l1p) - x;
    }
    r *= (float)a->scale;
    if (k == 8) {
      memcpy(o + i, &r, sizeof r);
    } else {
      float tmp[8];
      memcpy(tmp, &r, sizeof r);
      memcpy(o + i, tmp, (size_t)k * sizeof *tmp);
    }
  }
}

static void bce_kernel_f64(char **ptr, const int64_t *s, int64_t n, void *arg) { bce_scalar_f64(ptr, s, n, arg); }

/* bce_map on a device: the backend's entry over contiguous x, t and pw
   expanded to x's shape. */
static lm_status bce_map_dev(lm_ctx *ctx, int32_t mode, double scale, lm_tensor *res, const lm_tensor *x,
                             const lm_tensor *t, const lm_tensor *pw) {
  const char *op = "binary_cross_entropy_with_logits";
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(x), bce_logits, &be);
  if (st) return st;
  lm_tensor *xc = NULL, *tc = NULL, *pe = NULL, *pc = NULL;
  const bool grad = lm_grad_pause(ctx);
  if (!(st = lm_contiguous(ctx, x, &xc)) && !(st = lm_contiguous(ctx, t, &tc)) && pw &&
      !(st = lm_expand(ctx, pw, x->ndim, x->shape, &pe)))
    st = lm_contiguous(ctx, pe, &pc);
  ctx->grad_enabled = grad;
  int64_t n = lm_numel(x);
  if (!st && n > 0 &&
      (st = be->bce_logits(mode, x->dtype, n, lm_data(res), lm_data(xc), lm_data(tc), pc ? lm_data(pc) : NULL, scale)))
    st = lm_backend_fail(ctx, op, be, st);
  lm_tensor_release(xc);
  lm_tensor_release(tc);
  lm_tensor_release(pe);
  lm_tensor_release(pc);
  return st;
}

/* res = scale * f(x, t, pw) elementwise over x's shape; res is fresh. */
static lm_status bce_map(lm_ctx *ctx, int32_t mode, double scale, lm_tensor *res, const lm_tensor *x, const lm_tensor *t,
                    const lm_tensor *pw) {
  if (lm_device_of(x) != LM_CPU) return bce_map_dev(ctx, mode, scale, res, x, t, pw);
  bce_arg a = {mode, pw != NULL, scale};
  lm_operand ops[4] = {lm_operand_of(res, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape),
                       lm_operand_of(t, x->ndim, x->shape)};
  if (pw) ops[3] = lm_operand_of(pw, x->ndim, x->shape);
  lm_foreach(ctx, x->ndim, x->shape, pw ? 4 : 3, ops, x->dtype == LM_F32 ? bce_kernel_f32 : bce_kernel_f64, &a, true);
  return LM_OK;
}

/* saved: 0 x, 1 t (x's dtype), 2 weight, 3 pos_weight (x's dtype, or NULL) */
static lm_status bce_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *t = node->saved[1], *w = node->saved[2], *pw = node->saved[3];
  int32_t reduction = (int32_t)node->ip[0];
  int32_t tdtype = (int32_t)node->ip[1];
  lm_tensor *g = NULL, *gs[2] = {NULL, NULL};
  lm_status st = LM_OK;
  double scale = 1;
  /* a device's reduced gradient stays there: it multiplies like 'none' */
  const bool on_dev = lm_device_of(x) != LM_CPU, times_g = reduction == LM_REDUCTION_NONE || on_dev;
  if (reduction == LM_REDUCTION_MEAN) scale /= (double)lm_numel(x);
  if (reduction != LM_REDUCTION_NONE && !on_dev) scale *= lm_read_as_double(gout[0]->dtype, lm_data(gout[0]));
  for (int32_t i = 0; i < 2; i++) {
    if (!node->needs[i]) continue;
    if ((st = lm_new_on(ctx, "binary_cross_entropy_with_logits", lm_device_of(x), x->dtype, x->ndim, x->shape, &gs[i])))
      goto done;
    if ((st = bce_map(ctx, i == 0 ? BCE_GRAD_X : BCE_GRAD_T, scale, gs[i], x, t, pw))) goto done;
    if (times_g && (st = lm_binary(ctx, LM_OP_MUL, gs[i], gout[0], gs[i], NULL))) goto done;
    if (w && (st = lm_binary(ctx, LM_OP_MUL, gs[i], w, gs[i], NULL))) goto done;
  }
  if (gs[1] && tdtype != x->dtype) { /* the target's own dtype */
    if ((st = lm_to_dtype(ctx, gs[1], tdtype, &g))) goto done;
    lm_tensor_release(gs[1]);
    gs[1] = g;
    g = NULL;
  }
  gin[0] = gs[0];
  gin[1] = gs[1];
  gs[0] = gs[1] = NULL;
done:
  lm_tensor_release(g);
  lm_tensor_release(gs[0]);
  lm_tensor_release(gs[1]);
  return st;
}

static lm_status broadcasts_to(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what, const lm_tensor *x) {
  int32_t nd;
  int64_t shape[LM_MAX_DIMS];
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  bool ok = t->ndim <= x->ndim;
  if (ok) {
    lm_status st = lm_broadcast_shape(ctx, op, t->ndim, t->shape, x->ndim, x->shape, &nd, shape);
    lm_ctx_clear_error(ctx);
    ok = !st && nd == x->ndim && !memcmp(shape, x->shape, nd * sizeof *shape);
  }
  if (ok) return LM_OK;
  if (t->ndim == 1 && x->ndim > 2 && t->shape[0] == x->shape[1]) { /* meant per class: say how */
    int64_t per_class[LM_MAX_DIMS];
    per_class[0] = t->shape[0];
    for (int32_t d = 1; d < x->ndim - 1; d++) per_class[d] = 1;
    char c[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: %s of shape %s does not broadcast to the input's shape %s "
                  "(shapes align from the last dimension: one value per class of dimension 1 is %s)", op, what,
                  LM_SHP(t, a), LM_SHP(x, b), lm_shape_str(x->ndim - 1, per_class, c, sizeof c));
  }
  return lm_err(ctx, LM_E_SHAPE, "%s: %s of shape %s does not broadcast to the input's shape %s", op, what, LM_SHP(t, a), LM_SHP(x, b));
}

lm_status lm_bce_with_logits(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *target, const lm_tensor *weight,
                             const lm_tensor *pos_weight, int32_t reduction, lm_tensor **out) {
  const char *op = "binary_cross_entropy_with_logits";
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  lm_tensor *tc = NULL, *wc = NULL, *pwc = NULL, *l = NULL, *res = NULL;
  lm_status st;
  if ((st = float_input(ctx, op, x, "input"))) return st;
  if ((st = lm_check_arg(ctx, op, target, "target"))) return st;
  if (weight && (st = float_input(ctx, op, weight, "weight"))) return st;
  if (pos_weight && (st = float_input(ctx, op, pos_weight, "pos_weight"))) return st;
  if ((st = check_reduction(ctx, op, reduction))) return st;
  int32_t dev;
  const char *names[4] = {"input", "target", "weight", "pos_weight"};
  if ((st = loss_device(ctx, op, x, target, weight, pos_weight, names, &dev))) return st;
  if (target->ndim != x->ndim || memcmp(target->shape, x->shape, x->ndim * sizeof *x->shape))
    return lm_err(ctx, LM_E_SHAPE, "%s: target has shape %s, expected the input's shape %s", op, LM_SHP(target, a), LM_SHP(x, b));
  if (weight && (st = broadcasts_to(ctx, op, weight, "weight", x))) return st;
  if (pos_weight && (st = broadcasts_to(ctx, op, pos_weight, "pos_weight", x))) return st;

  bool grad = lm_grad_pause(ctx); /* the conversions and the sum are not recorded */
  if ((st = lm_cast_if_needed(ctx, target, x->dtype, &tc))) goto done;
  if (weight && (st = lm_cast_if_needed(ctx, weight, x->dtype, &wc))) goto done;
  if (pos_weight && (st = lm_cast_if_needed(ctx, pos_weight, x->dtype, &pwc))) goto done;
  if ((st = lm_new_on(ctx, op, dev, x->dtype, x->ndim, x->shape, &l))) goto done;
  if ((st = bce_map(ctx, BCE_LOSS, 1, l, x, tc, pwc))) goto done;
  if (wc && (st = lm_binary(ctx, LM_OP_MUL, l, wc, l, NULL))) goto done;
  if (reduction == LM_REDUCTION_NONE) {
    res = l;
    l = NULL;
  } else {
    if ((st = lm_reduce(ctx, reduction == LM_REDUCTION_SUM ? LM_OP_SUM : LM_OP_MEAN, l, 0, NULL, 0, 0, &res, NULL))) goto done;
  }
  ctx->grad_enabled = grad;

  lm_node *node;
  const lm_tensor *ins[2] = {x, target};
  lm_tensor *outs[1] = {res};
  if ((st = lm_record(ctx, LM_OP_BCE_LOGITS, bce_backward, 2, ins, 1, outs, &node))) goto done;
  if (node) {
    if ((st = lm_save(ctx, node, 0, x))) goto done;
    if ((st = lm_save(ctx, node, 1, tc))) goto done;
    if (wc && (st = lm_save(ctx, node, 2, wc))) goto done;
    if (pwc && (st = lm_save(ctx, node, 3, pwc))) goto done;
    node->ip[0] = reduction;
    node->ip[1] = target->dtype;
  }
  st = lm_finish_out(res, out);
  res = NULL;
done:
  ctx->grad_enabled = grad;
  lm_tensor_release(tc);
  lm_tensor_release(wc);
  lm_tensor_release(pwc);
  lm_tensor_release(l);
  lm_tensor_release(res);
  return st;
}
