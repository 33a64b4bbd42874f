/* optim.c - fused optimizer updates (SGD, Adam/AdamW, RMSprop) and global
 * gradient-norm clipping.
 *
 * Each step function updates a whole list of parameters in place, one pass
 * over the elements of each parameter, split across threads. No autograd:
 * the update is not recorded, whatever the grad mode.
 *
 * The arithmetic follows torch.optim (1.13, the single-tensor path): the
 * same operations in the same order, in the parameter's dtype, with the
 * scalar coefficients computed in double and rounded to that dtype once.
 * Bias corrections and step sizes are per parameter because each parameter
 * carries its own step count (steps[i] counts this update: 1 on the first).
 *
 * A NULL gradient skips its parameter. Every tensor of every parameter is
 * checked before anything is written, so a bad argument leaves all
 * parameters and states as they were. Parameters or states that are not
 * contiguous are updated through contiguous copies written back afterwards;
 * expanded views (stride 0) are refused. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OPTIM_GRAIN 32768 /* elements per thread, as for the other loops */
/* The update loops test settings that stay fixed for the whole loop; GCC at
   -O2 does not version a loop on them (-funswitch-loops comes with -O3),
   and without that they do not vectorise. (The Makefile builds this file
   with -fno-math-errno, for the square roots.) */
#if defined(__GNUC__) && !defined(__clang__)
#define LM_KERNEL static __attribute__((optimize("unswitch-loops")))
#define LM_LOOP static inline __attribute__((always_inline, optimize("unswitch-loops")))
#else
#define LM_KERNEL static
#define LM_LOOP static inline
#endif

/* ---- checks ---- */

static const char *dtype_str(int32_t d) { return lm_dtype_name(d); }

/* Hyperparameters that must be non-negative numbers. */
static lm_status check_nonneg(lm_ctx *ctx, const char *op, const char *name, double v) {
  if (!(v >= 0) || isinf(v))
    return lm_err(ctx, LM_E_ARG, "%s: %s is %g, expected a finite number >= 0", op, name, v);
  return LM_OK;
}

static lm_status check_beta(lm_ctx *ctx, const char *op, const char *name, double v) {
  if (!(v >= 0 && v < 1)) return lm_err(ctx, LM_E_ARG, "%s: %s is %g, expected a number in [0, 1)", op, name, v);
  return LM_OK;
}

/* Parameter i itself: a float CPU tensor that can be written. */
static lm_status check_param(lm_ctx *ctx, const char *op, int32_t i, const lm_tensor *p) {
  char what[64];
  snprintf(what, sizeof what, "parameter %d", i);
  lm_status st = lm_check_arg(ctx, op, p, what);
  if (st) return st;
  if (!lm_dtype_is_float(p->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: parameter %d is %s, expected f32 or f64", op, i, dtype_str(p->dtype));
  if (lm_check_writable(ctx, op, p))
    return lm_err(ctx, LM_E_ARG, "%s: parameter %d is an expanded view (a stride of 0), expected memory of its own", op, i);
  return LM_OK;
}

/* A gradient or state tensor of parameter i: same shape and dtype as p. */
static lm_status check_like(lm_ctx *ctx, const char *op, int32_t i, const lm_tensor *p, const lm_tensor *t,
                            const char *name, bool written) {
  char what[96];
  snprintf(what, sizeof what, "%s of parameter %d", name, i);
  lm_status st = lm_check_arg(ctx, op, t, what);
  if (st) return st;
  if (lm_device_of(t) != lm_device_of(p))
    return lm_err(ctx, LM_E_DEVICE, "%s: %s is on %s and the parameter on %s, expected one device", op, what,
                  lm_device_name(lm_device_of(t)), lm_device_name(lm_device_of(p)));
  bool same = t->ndim == p->ndim;
  for (int32_t d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
  if (!same) {
    char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: %s has shape %s, expected %s (the parameter's shape)", op, what, LM_SHP(t, a),
                  LM_SHP(p, b));
  }
  if (t->dtype != p->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: %s is %s, expected %s (the parameter's dtype)", op, what, dtype_str(t->dtype),
                  dtype_str(p->dtype));
  if (written && lm_check_writable(ctx, op, t))
    return lm_err(ctx, LM_E_ARG, "%s: %s is an expanded view (a stride of 0), expected memory of its own", op, what);
  return LM_OK;
}

/* A required per-parameter list (states, steps) that is missing. */
static lm_status missing(lm_ctx *ctx, const char *op, const char *name, const char *why) {
  return lm_err(ctx, LM_E_ARG, "%s: the %s list is NULL, but %s needs it", op, name, why);
}

/* ---- contiguous runs ----
   The operands of one parameter's update as contiguous tensors: the tensor
   itself when it is contiguous, otherwise a copy that is written back to
   the original afterwards (for operands the update writes). */
enum { MAX_OPERANDS = 5 };
typedef struct runs {
  int32_t n;
  lm_tensor *orig[MAX_OPERANDS]; /* borrowed; NULL for unused operands */
  lm_tensor *run[MAX_OPERANDS];  /* +1 */
  bool written[MAX_OPERANDS];
} runs;

static void runs_release(runs *r) {
  for (int32_t k = 0; k < r->n; k++)
    if (r->run[k]) lm_tensor_release(r->run[k]);
  memset(r, 0, sizeof *r);
}

static lm_status runs_open(lm_ctx *ctx, runs *r, int32_t n, lm_tensor *const *ts, const bool *written) {
  memset(r, 0, sizeof *r);
  r->n = n;
  for (int32_t k = 0; k < n; k++) {
    r->orig[k] = ts[k];
    r->written[k] = written[k];
    if (!ts[k]) continue;
    lm_status st = lm_contiguous(ctx, ts[k], &r->run[k]);
    if (st) {
      runs_release(r);
      return st;
    }
  }
  return LM_OK;
}

static lm_status runs_close(lm_ctx *ctx, runs *r) {
  lm_status st = LM_OK;
  for (int32_t k = 0; k < r->n && !st; k++)
    if (r->run[k] && r->written[k] && r->run[k] != r->orig[k]) st = lm_copy_(ctx, r->orig[k], r->run[k]);
  runs_release(r);
  return st;
}

static void *run_data(const runs *r, int32_t k) { return r->run[k] ? lm_data(r->run[k]) : NULL; }

/* The update of one parameter: opens its runs, runs kernel over its
   elements (f32 or f64 variant), writes back. Grad mode is off meanwhile
   so that nothing here is recorded. */
typedef void (*range_fn)(void *arg, int64_t begin, int64_t end);
static lm_status update_one(lm_ctx *ctx, int32_t n_ops, lm_tensor *const *ops, const bool *written, range_fn f32_fn,
                            range_fn f64_fn, void *job, void **data) {
  runs r;
  lm_status st = runs_open(ctx, &r, n_ops, ops, written);
  if (st) return st;
  for (int32_t k = 0; k < n_ops; k++) data[k] = run_data(&r, k);
  int64_t numel = lm_numel(ops[0]);
  lm_parallel_for(ctx, numel, OPTIM_GRAIN, ops[0]->dtype == LM_F32 ? f32_fn : f64_fn, job);
  return runs_close(ctx, &r);
}

/* ---- on a device: one launch of the backend's optim_step per group ----
   ops[k][i] is operand k of parameter i (NULL lists or entries: unused);
   parameters without a gradient are skipped. Strided operands go through
   contiguous copies written back afterwards, as on the CPU. f32 and f64
   parameters of one list are launched apart. */

static void pack_hparams(const lm_optim_hparams *h, double *hp) {
  hp[LM_HP_LR] = h->lr;
  hp[LM_HP_MOMENTUM] = h->momentum;
  hp[LM_HP_DAMPENING] = h->dampening;
  hp[LM_HP_WEIGHT_DECAY] = h->weight_decay;
  hp[LM_HP_BETA1] = h->beta1;
  hp[LM_HP_BETA2] = h->beta2;
  hp[LM_HP_EPS] = h->eps;
  hp[LM_HP_ALPHA] = h->alpha;
  hp[LM_HP_NESTEROV] = h->nesterov != 0;
  hp[LM_HP_AMSGRAD] = h->amsgrad != 0;
  hp[LM_HP_DECOUPLED] = h->decoupled != 0;
  hp[LM_HP_CENTERED] = h->centered != 0;
  hp[LM_HP_MAXIMIZE] = h->maximize != 0;
}

/* The device of the parameters that have gradients (grads NULL: every
   entry of params counts), which must be one. */
static lm_status group_device_of(lm_ctx *ctx, const char *op, int32_t n, lm_tensor *const *params,
                                 lm_tensor *const *grads, int32_t *dev) {
  *dev = LM_CPU;
  int32_t first = -1;
  for (int32_t i = 0; i < n; i++) {
    if ((grads && !grads[i]) || !params[i]) continue;
    if (first < 0) {
      first = i;
      *dev = lm_device_of(params[i]);
    } else if (lm_device_of(params[i]) != *dev) {
      return lm_err(ctx, LM_E_DEVICE, "%s: parameter %d is on %s and parameter %d on %s, expected one device", op,
                    first, lm_device_name(*dev), i, lm_device_name(lm_device_of(params[i])));
    }
  }
  return LM_OK;
}

static lm_status group_device(lm_ctx *ctx, const char *op, int32_t device, int32_t kind, int32_t n, int32_t nops,
                              lm_tensor *const *const *ops, const bool *written, const double *per, const double *hp) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, device, optim_step, &be);
  if (st || n == 0) return st;
  runs *r = calloc((size_t)n, sizeof *r);
  int64_t *numel = malloc((size_t)n * sizeof *numel);
  void **data = calloc((size_t)n * MAX_OPERANDS, sizeof *data);
  double *gper = calloc((size_t)n * 2, sizeof *gper);
  if (!r || !numel || !data || !gper) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    goto done;
  }
  for (int32_t dt = LM_F32; dt <= LM_F64 && !st; dt++) {
    int32_t m = 0; /* parameters of dtype dt */
    for (int32_t i = 0; i < n && !st; i++) {
      if (!ops[0][i] || (nops > 1 && !ops[1][i]) || ops[0][i]->dtype != dt) continue;
      lm_tensor *ts[MAX_OPERANDS] = {NULL};
      for (int32_t k = 0; k < nops; k++) ts[k] = ops[k] ? ops[k][i] : NULL;
      if ((st = runs_open(ctx, &r[m], nops, ts, written))) break;
      numel[m] = lm_numel(ops[0][i]);
      if (per) memcpy(gper + 2 * m, per + 2 * i, 2 * sizeof *gper);
      m++;
    }
    if (!st && m > 0) {
      for (int32_t k = 0; k < MAX_OPERANDS; k++)
        for (int32_t j = 0; j < m; j++) data[k * m + j] = k < nops ? run_data(&r[j], k) : NULL;
      if ((st = be->optim_step(kind, dt, m, numel, data, gper, hp))) st = lm_backend_fail(ctx, op, be, st);
    }
    for (int32_t j = 0; j < m; j++) {
      lm_status cs = st ? (runs_release(&r[j]), LM_OK) : runs_close(ctx, &r[j]);
      if (!st) st = cs;
    }
  }
done:
  free(r);
  free(numel);
  free(data);
  free(gper);
  return st;
}

/* ---- SGD ---- */

typedef struct sgd_job {
  void *data[3]; /* param, grad, momentum buffer */
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, fresh;
} sgd_job;

/* Each kernel calls its loop with constants for the settings that decide
   which buffers exist; the other settings are tested in the loop, which
   GCC versions on them (LM_KERNEL). */
#define SGD_KERNEL(T, NM)                                                                      \
  LM_LOOP void sgd_loop_##NM(const sgd_job *j, int64_t b, int64_t e, bool use_buf) {           \
    T *restrict p = j->data[0], *restrict buf = j->data[2];                                    \
    const T *restrict g = j->data[1];                                                          \
    const T wd = (T)j->weight_decay, mom = (T)j->momentum, keep = (T)(1 - j->dampening);       \
    const T neg_lr = (T)(-j->lr);                                                              \
    const bool maximize = j->maximize, use_wd = j->weight_decay != 0;                          \
    const bool fresh = j->fresh, nesterov = j->nesterov;                                       \
    LM_SIMD for (int64_t i = b; i < e; i++) {                                                  \
      T d = maximize ? -g[i] : g[i];                                                           \
      d = use_wd ? d + wd * p[i] : d;                                                          \
      if (use_buf) {                                                                           \
        /* a fresh buffer starts as the gradient itself, without dampening */                  \
        T m = fresh ? d : buf[i] * mom + keep * d;                                             \
        buf[i] = m;                                                                            \
        d = nesterov ? d + mom * m : m;                                                        \
      }                                                                                        \
      p[i] = p[i] + neg_lr * d;                                                                \
    }                                                                                          \
  }                                                                                            \
  LM_KERNEL void sgd_##NM(void *arg, int64_t b, int64_t e) {                                   \
    const sgd_job *j = arg;                                                                    \
    if (j->momentum != 0) sgd_loop_##NM(j, b, e, true);                                        \
    else sgd_loop_##NM(j, b, e, false);                                                        \
  }
SGD_KERNEL(float, f32)
SGD_KERNEL(double, f64)

lm_status lm_sgd_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads,
                      lm_tensor *const *momentum_bufs, const int64_t *steps, const lm_optim_hparams *h) {
  const char *op = lm_op_name(LM_OP_SGD);
  lm_status st;
  if (n < 0 || (n > 0 && (!params || !grads)) || !h)
    return lm_err(ctx, LM_E_ARG, "%s: bad arguments (%d parameters, params, grads and hyperparameters must be given)",
                  op, n);
  if ((st = check_nonneg(ctx, op, "lr", h->lr)) || (st = check_nonneg(ctx, op, "momentum", h->momentum)) ||
      (st = check_nonneg(ctx, op, "weight_decay", h->weight_decay)))
    return st;
  if (isnan(h->dampening) || isinf(h->dampening))
    return lm_err(ctx, LM_E_ARG, "%s: dampening is %g, expected a finite number", op, h->dampening);
  if (h->nesterov && (h->momentum <= 0 || h->dampening != 0))
    return lm_err(ctx, LM_E_ARG, "%s: nesterov needs momentum > 0 and dampening 0 (got momentum %g, dampening %g)", op,
                  h->momentum, h->dampening);
  bool use_buf = h->momentum != 0;
  if (use_buf && !momentum_bufs) return missing(ctx, op, "momentum buffer", "momentum");
  if (use_buf && !steps) return missing(ctx, op, "step count", "momentum");
  for (int32_t i = 0; i < n; i++) {
    if (!grads[i]) continue;
    if ((st = check_param(ctx, op, i, params[i])) || (st = check_like(ctx, op, i, params[i], grads[i], "grad", false)))
      return st;
    if (use_buf) {
      if ((st = check_like(ctx, op, i, params[i], momentum_bufs[i], "momentum buffer", true))) return st;
      if (steps[i] < 1) return lm_err(ctx, LM_E_ARG, "%s: step count of parameter %d is %lld, expected >= 1", op, i,
                                      (long long)steps[i]);
    }
  }
  int32_t dev;
  if ((st = group_device_of(ctx, op, n, params, grads, &dev))) return st;
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  if (dev != LM_CPU) {
    double hp[LM_HP_COUNT], *per = calloc((size_t)(n > 0 ? n : 1) * 2, sizeof *per);
    if (!per) { ctx->grad_enabled = was; return lm_err(ctx, LM_E_OOM, "%s: out of memory", op); }
    pack_hparams(h, hp);
    for (int32_t i = 0; i < n; i++) per[2 * i] = use_buf && grads[i] && steps[i] == 1;
    lm_tensor *const *lists[3] = {params, grads, use_buf ? momentum_bufs : NULL};
    const bool written[3] = {true, false, true};
    st = group_device(ctx, op, dev, LM_OPTIM_SGD, n, 3, lists, written, per, hp);
    free(per);
    ctx->grad_enabled = was;
    return st;
  }
  for (int32_t i = 0; i < n && !st; i++) {
    if (!grads[i]) continue;
    sgd_job j = {{0}, h->lr, h->momentum, h->dampening, h->weight_decay, h->nesterov != 0, h->maximize != 0,
                 use_buf && steps[i] == 1};
    lm_tensor *ops[3] = {params[i], grads[i], use_buf ? momentum_bufs[i] : NULL};
    const bool written[3] = {true, false, true};
    st = update_one(ctx, 3, ops, written, sgd_f32, sgd_f64, &j, j.data);
  }
  ctx->grad_enabled = was;
  return st;
}

/* ---- Adam and AdamW ---- */

typedef struct adam_job {
  void *data[5]; /* param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq */
  double decay_factor;     /* AdamW: 1 - lr * weight_decay */
  double weight_decay;     /* Adam: L2 term added to the gradient */
  double beta1, beta2, eps;
  double neg_step_size;    /* -lr / (1 - beta1^step) */
  double bc2_sqrt;         /* sqrt(1 - beta2^step) */
  bool decoupled, amsgrad, maximize;
} adam_job;

#define ADAM_KERNEL(T, NM, SQRT)                                                               \
  LM_LOOP void adam_loop_##NM(const adam_job *j, int64_t b, int64_t e, bool amsgrad) {         \
    T *restrict p = j->data[0], *restrict m = j->data[2], *restrict v = j->data[3];            \
    T *restrict vmax = j->data[4];                                                             \
    const T *restrict g = j->data[1];                                                          \
    const T decay = (T)j->decay_factor, wd = (T)j->weight_decay;                               \
    const T b1 = (T)j->beta1, b2 = (T)j->beta2;                                                \
    const T c1 = (T)(1 - j->beta1), c2 = (T)(1 - j->beta2);                                    \
    const T eps = (T)j->eps, step = (T)j->neg_step_size, bc2 = (T)j->bc2_sqrt;                 \
    const bool maximize = j->maximize, decoupled = j->decoupled;                               \
    const bool use_wd = !j->decoupled && j->weight_decay != 0;                                 \
    LM_SIMD for (int64_t i = b; i < e; i++) {                                                  \
      T d = maximize ? -g[i] : g[i];                                                           \
      T pi = decoupled ? p[i] * decay : p[i];                                                  \
      d = use_wd ? d + wd * pi : d;                                                            \
      T mi = m[i] * b1 + c1 * d;                                                               \
      T vi = v[i] * b2 + c2 * d * d;                                                           \
      m[i] = mi;                                                                               \
      v[i] = vi;                                                                               \
      if (amsgrad) {                                                                           \
        T top = vmax[i];                                                                       \
        top = ((vi > top) | (vi != vi)) ? vi : top; /* NaN propagates, as torch.maximum */     \
        vmax[i] = top;                                                                         \
        vi = top;                                                                              \
      }                                                                                        \
      T denom = SQRT(vi) / bc2 + eps;                                                          \
      p[i] = pi + step * (mi / denom);                                                         \
    }                                                                                          \
  }                                                                                            \
  LM_KERNEL void adam_##NM(void *arg, int64_t b, int64_t e) {                                  \
    const adam_job *j = arg;                                                                   \
    if (j->amsgrad) adam_loop_##NM(j, b, e, true);                                             \
    else adam_loop_##NM(j, b, e, false);                                                       \
  }
ADAM_KERNEL(float, f32, sqrtf)
ADAM_KERNEL(double, f64, sqrt)

lm_status lm_adam_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads,
                       lm_tensor *const *exp_avgs, lm_tensor *const *exp_avg_sqs, lm_tensor *const *max_exp_avg_sqs,
                       const int64_t *steps, const lm_optim_hparams *h) {
  const char *op = lm_op_name(LM_OP_ADAM);
  lm_status st;
  if (n < 0 || (n > 0 && (!params || !grads)) || !h)
    return lm_err(ctx, LM_E_ARG, "%s: bad arguments (%d parameters, params, grads and hyperparameters must be given)",
                  op, n);
  if ((st = check_nonneg(ctx, op, "lr", h->lr)) || (st = check_nonneg(ctx, op, "eps", h->eps)) ||
      (st = check_beta(ctx, op, "beta1", h->beta1)) || (st = check_beta(ctx, op, "beta2", h->beta2)) ||
      (st = check_nonneg(ctx, op, "weight_decay", h->weight_decay)))
    return st;
  if (n > 0 && (!exp_avgs || !exp_avg_sqs)) return missing(ctx, op, "exp_avg or exp_avg_sq", "every step");
  if (n > 0 && !steps) return missing(ctx, op, "step count", "bias correction");
  if (n > 0 && h->amsgrad && !max_exp_avg_sqs) return missing(ctx, op, "max_exp_avg_sq", "amsgrad");
  for (int32_t i = 0; i < n; i++) {
    if (!grads[i]) continue;
    lm_tensor *p = params[i];
    if ((st = check_param(ctx, op, i, p)) || (st = check_like(ctx, op, i, p, grads[i], "grad", false)) ||
        (st = check_like(ctx, op, i, p, exp_avgs[i], "exp_avg", true)) ||
        (st = check_like(ctx, op, i, p, exp_avg_sqs[i], "exp_avg_sq", true)) ||
        (h->amsgrad && (st = check_like(ctx, op, i, p, max_exp_avg_sqs[i], "max_exp_avg_sq", true))))
      return st;
    if (steps[i] < 1)
      return lm_err(ctx, LM_E_ARG, "%s: step count of parameter %d is %lld, expected >= 1", op, i, (long long)steps[i]);
  }
  int32_t dev;
  if ((st = group_device_of(ctx, op, n, params, grads, &dev))) return st;
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  if (dev != LM_CPU) {
    double hp[LM_HP_COUNT], *per = calloc((size_t)(n > 0 ? n : 1) * 2, sizeof *per);
    if (!per) { ctx->grad_enabled = was; return lm_err(ctx, LM_E_OOM, "%s: out of memory", op); }
    pack_hparams(h, hp);
    for (int32_t i = 0; i < n; i++) {
      if (!grads[i]) continue;
      double k = (double)steps[i];
      per[2 * i] = -(h->lr / (1 - pow(h->beta1, k)));
      per[2 * i + 1] = sqrt(1 - pow(h->beta2, k));
    }
    lm_tensor *const *lists[5] = {params, grads, exp_avgs, exp_avg_sqs, h->amsgrad ? max_exp_avg_sqs : NULL};
    const bool written[5] = {true, false, true, true, true};
    st = group_device(ctx, op, dev, LM_OPTIM_ADAM, n, 5, lists, written, per, hp);
    free(per);
    ctx->grad_enabled = was;
    return st;
  }
  for (int32_t i = 0; i < n && !st; i++) {
    if (!grads[i]) continue;
    double k = (double)steps[i];
    adam_job j;
    memset(&j, 0, sizeof j);
    j.decay_factor = 1 - h->lr * h->weight_decay;
    j.weight_decay = h->weight_decay;
    j.beta1 = h->beta1;
    j.beta2 = h->beta2;
    j.eps = h->eps;
    j.neg_step_size = -(h->lr / (1 - pow(h->beta1, k)));
    j.bc2_sqrt = sqrt(1 - pow(h->beta2, k));
    j.decoupled = h->decoupled != 0;
    j.amsgrad = h->amsgrad != 0;
    j.maximize = h->maximize != 0;
    lm_tensor *ops[5] = {params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], j.amsgrad ? max_exp_avg_sqs[i] : NULL};
    const bool written[5] = {true, false, true, true, true};
    st = update_one(ctx, 5, ops, written, adam_f32, adam_f64, &j, j.data);
  }
  ctx->grad_enabled = was;
  return st;
}

/* ---- RMSprop ---- */

typedef struct rmsprop_job {
  void *data[5]; /* param, grad, square_avg, grad_avg, momentum buffer */
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
} rmsprop_job;

#define RMSPROP_KERNEL(T, NM, SQRT)                                                            \
  LM_LOOP void rmsprop_loop_##NM(const rmsprop_job *j, int64_t b, int64_t e, bool centered,    \
                                 bool use_buf) {                                               \
    T *restrict p = j->data[0], *restrict sq = j->data[2], *restrict ga = j->data[3];          \
    T *restrict buf = j->data[4];                                                              \
    const T *restrict g = j->data[1];                                                          \
    const T alpha = (T)j->alpha, c = (T)(1 - j->alpha), eps = (T)j->eps;                       \
    const T wd = (T)j->weight_decay, mom = (T)j->momentum, neg_lr = (T)(-j->lr);               \
    const bool maximize = j->maximize, use_wd = j->weight_decay != 0;                          \
    LM_SIMD for (int64_t i = b; i < e; i++) {                                                  \
      T d = maximize ? -g[i] : g[i];                                                           \
      d = use_wd ? d + wd * p[i] : d;                                                          \
      T s = sq[i] * alpha + c * d * d;                                                         \
      sq[i] = s;                                                                               \
      T avg;                                                                                   \
      if (centered) {                                                                          \
        T a = ga[i] * alpha + c * d;                                                           \
        ga[i] = a;                                                                             \
        avg = SQRT(s - a * a);                                                                 \
      } else {                                                                                 \
        avg = SQRT(s);                                                                         \
      }                                                                                        \
      avg = avg + eps;                                                                         \
      if (use_buf) {                                                                           \
        T m = buf[i] * mom + d / avg;                                                          \
        buf[i] = m;                                                                            \
        p[i] = p[i] + neg_lr * m;                                                              \
      } else {                                                                                 \
        p[i] = p[i] + neg_lr * (d / avg);                                                      \
      }                                                                                        \
    }                                                                                          \
  }                                                                                            \
  LM_KERNEL void rmsprop_##NM(void *arg, int64_t b, int64_t e) {                               \
    const rmsprop_job *j = arg;                                                                \
    bool centered = j->centered, use_buf = j->momentum > 0;                                    \
    if (centered && use_buf) rmsprop_loop_##NM(j, b, e, true, true);                           \
    else if (centered) rmsprop_loop_##NM(j, b, e, true, false);                                \
    else if (use_buf) rmsprop_loop_##NM(j, b, e, false, true);                                 \
    else rmsprop_loop_##NM(j, b, e, false, false);                                             \
  }
RMSPROP_KERNEL(float, f32, sqrtf)
RMSPROP_KERNEL(double, f64, sqrt)

lm_status lm_rmsprop_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads,
                          lm_tensor *const *square_avgs, lm_tensor *const *grad_avgs, lm_tensor *const *momentum_bufs,
                          const lm_optim_hparams *h) {
  const char *op = lm_op_name(LM_OP_RMSPROP);
  lm_status st;
  if (n < 0 || (n > 0 && (!params || !grads)) || !h)
    return lm_err(ctx, LM_E_ARG, "%s: bad arguments (%d parameters, params, grads and hyperparameters must be given)",
                  op, n);
  if ((st = check_nonneg(ctx, op, "lr", h->lr)) || (st = check_nonneg(ctx, op, "alpha", h->alpha)) ||
      (st = check_nonneg(ctx, op, "eps", h->eps)) || (st = check_nonneg(ctx, op, "momentum", h->momentum)) ||
      (st = check_nonneg(ctx, op, "weight_decay", h->weight_decay)))
    return st;
  bool use_buf = h->momentum > 0, centered = h->centered != 0;
  if (n > 0 && !square_avgs) return missing(ctx, op, "square_avg", "every step");
  if (n > 0 && centered && !grad_avgs) return missing(ctx, op, "grad_avg", "centered");
  if (n > 0 && use_buf && !momentum_bufs) return missing(ctx, op, "momentum buffer", "momentum");
  for (int32_t i = 0; i < n; i++) {
    if (!grads[i]) continue;
    lm_tensor *p = params[i];
    if ((st = check_param(ctx, op, i, p)) || (st = check_like(ctx, op, i, p, grads[i], "grad", false)) ||
        (st = check_like(ctx, op, i, p, square_avgs[i], "square_avg", true)) ||
        (centered && (st = check_like(ctx, op, i, p, grad_avgs[i], "grad_avg", true))) ||
        (use_buf && (st = check_like(ctx, op, i, p, momentum_bufs[i], "momentum buffer", true))))
      return st;
  }
  int32_t dev;
  if ((st = group_device_of(ctx, op, n, params, grads, &dev))) return st;
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  if (dev != LM_CPU) {
    double hp[LM_HP_COUNT];
    pack_hparams(h, hp);
    lm_tensor *const *lists[5] = {params, grads, square_avgs, centered ? grad_avgs : NULL,
                                  use_buf ? momentum_bufs : NULL};
    const bool written[5] = {true, false, true, true, true};
    st = group_device(ctx, op, dev, LM_OPTIM_RMSPROP, n, 5, lists, written, NULL, hp);
    ctx->grad_enabled = was;
    return st;
  }
  for (int32_t i = 0; i < n && !st; i++) {
    if (!grads[i]) continue;
    rmsprop_job j = {{0}, h->lr, h->alpha, h->eps, h->weight_decay, h->momentum, centered, h->maximize != 0};
    lm_tensor *ops[5] = {params[i], grads[i], square_avgs[i], centered ? grad_avgs[i] : NULL,
                         use_buf ? momentum_bufs[i] : NULL};
    const bool written[5] = {true, false, true, true, true};
    st = update_one(ctx, 5, ops, written, rmsprop_f32, rmsprop_f64, &j, j.data);
  }
  ctx->grad_enabled = was;
  return st;
}

/* ---- gradient clipping ----
   The norm of all gradients taken together, in double. Partial results
   over fixed blocks combine in block order, so the norm does not depend on
   the thread count. */

#define NORM_BLOCK 4096

typedef struct norm_job {
  const void *data;
  int64_t numel;
  double p;       /* the norm's order; INFINITY for the max norm */
  double *partial; /* one per block */
} norm_job;

#define NORM_KERNEL(T, NM)                                                                     \
  static void norm_##NM(void *arg, int64_t b, int64_t e) {                                     \
    const norm_job *j = arg;                                                                   \
    const T *g = j->data;                                                                      \
    for (int64_t blk = b; blk < e; blk++) {                                                    \
      int64_t lo = blk * NORM_BLOCK;                                                           \
      int64_t hi = lo + NORM_BLOCK < j->numel ? lo + NORM_BLOCK : j->numel;                    \
      double acc = 0;                                                                          \
      if (isinf(j->p)) {                                                                       \
        for (int64_t i = lo; i < hi; i++) {                                                    \
          double a = fabs((double)g[i]);                                                       \
          if (a > acc || a != a) acc = a;                                                      \
          if (acc != acc) break;                                                               \
        }                                                                                      \
      } else if (j->p == 2) {                                                                  \
        for (int64_t i = lo; i < hi; i++) acc += (double)g[i] * (double)g[i];                  \
      } else if (j->p == 1) {                                                                  \
        for (int64_t i = lo; i < hi; i++) acc += fabs((double)g[i]);                           \
      } else {                                                                                 \
        for (int64_t i = lo; i < hi; i++) acc += pow(fabs((double)g[i]), j->p);                \
      }                                                                                        \
      j->partial[blk] = acc;                                                                   \
    }                                                                                          \
  }
NORM_KERNEL(float, f32)
NORM_KERNEL(double, f64)

typedef struct scale_job {
  void *data;
  double coef;
} scale_job;

#define SCALE_KERNEL(T, NM)                                                                    \
  static void scale_##NM(void *arg, int64_t b, int64_t e) {                                    \
    const scale_job *j = arg;                                                                  \
    T *restrict g = j->data;                                                                   \
    const T c = (T)j->coef;                                                                    \
    LM_SIMD for (int64_t i = b; i < e; i++) g[i] = g[i] * c;                                   \
  }
SCALE_KERNEL(float, f32)
SCALE_KERNEL(double, f64)

/* Adds gradient g's share to *acc (a sum of |x|^p, or a running max). */
static lm_status norm_part(lm_ctx *ctx, const lm_tensor *g, double p, double *acc) {
  lm_tensor *c;
  lm_status st = lm_contiguous(ctx, g, &c);
  if (st) return st;
  int64_t numel = lm_numel(c), nblocks = (numel + NORM_BLOCK - 1) / NORM_BLOCK;
  double *partial = nblocks ? malloc((size_t)nblocks * sizeof *partial) : NULL;
  if (nblocks && !partial) {
    lm_tensor_release(c);
    return lm_err(ctx, LM_E_OOM, "clip_grad_norm: out of memory");
  }
  norm_job j = {lm_data(c), numel, p, partial};
  lm_parallel_for(ctx, nblocks, OPTIM_GRAIN / NORM_BLOCK, c->dtype == LM_F32 ? norm_f32 : norm_f64, &j);
  for (int64_t b = 0; b < nblocks; b++) {
    if (isinf(p)) {
      if (partial[b] > *acc || partial[b] != partial[b]) *acc = partial[b];
    } else {
      *acc += partial[b];
    }
  }
  free(partial);
  lm_tensor_release(c);
  return LM_OK;
}

/* The CPU's acc (a sum of |x|^p over all gradients, or their max) on a
   device: each gradient's norm by a device reduction (in double), raised
   to p and added on the device; one value comes back at the end. */
static lm_status device_norm_acc(lm_ctx *ctx, int32_t n, lm_tensor *const *grads, double p, double *acc) {
  lm_tensor *total = NULL, *host = NULL;
  lm_status st = LM_OK;
  const bool inf = isinf(p);
  double pv = p;
  lm_tensor *pw = NULL;
  if ((st = lm_from_ptr(ctx, LM_F64, 0, NULL, NULL, &pv, &pw))) return st;
  for (int32_t i = 0; i < n && !st; i++) {
    if (!grads[i]) continue;
    lm_tensor *g64 = NULL, *nrm = NULL, *part = NULL, *sum = NULL;
    if (!(st = lm_to_dtype(ctx, grads[i], LM_F64, &g64)) && !(st = lm_reduce(ctx, LM_OP_NORM, g64, 0, NULL, 0, p, &nrm, NULL))) {
      if (inf) {
        lm_tensor_retain(nrm);
        part = nrm;
      } else {
        st = lm_binary(ctx, LM_OP_POW, nrm, pw, NULL, &part);
      }
    }
    if (!st) {
      if (!total) {
        lm_tensor_retain(part);
        total = part;
      } else if (!(st = lm_binary(ctx, inf ? LM_OP_MAXIMUM : LM_OP_ADD, total, part, NULL, &sum))) {
        lm_tensor_release(total);
        total = sum;
      }
    }
    lm_tensor_release(g64);
    lm_tensor_release(nrm);
    lm_tensor_release(part);
  }
  if (!st && total && !(st = lm_to_device(ctx, total, LM_CPU, &host))) *acc = *(const double *)lm_data(host);
  lm_tensor_release(pw);
  lm_tensor_release(total);
  lm_tensor_release(host);
  return st;
}

lm_status lm_clip_grad_norm(lm_ctx *ctx, int32_t n, lm_tensor *const *grads, double max_norm, double norm_type,
                            int32_t error_if_nonfinite, double *total_norm) {
  const char *op = "clip_grad_norm";
  if (n < 0 || (n > 0 && !grads)) return lm_err(ctx, LM_E_ARG, "%s: bad gradient list (%d gradients)", op, n);
  if (!(max_norm >= 0))
    return lm_err(ctx, LM_E_ARG, "%s: max_norm is %g, expected a number >= 0", op, max_norm);
  if (!(norm_type > 0))
    return lm_err(ctx, LM_E_ARG, "%s: norm_type is %g, expected a number > 0 or inf", op, norm_type);
  lm_status st;
  for (int32_t i = 0; i < n; i++) {
    if (!grads[i]) continue;
    char what[48];
    snprintf(what, sizeof what, "gradient %d", i);
    if ((st = lm_check_arg(ctx, op, grads[i], what))) return st;
    if (!lm_dtype_is_float(grads[i]->dtype))
      return lm_err(ctx, LM_E_DTYPE, "%s: gradient %d is %s, expected f32 or f64", op, i, dtype_str(grads[i]->dtype));
    if (lm_check_writable(ctx, op, grads[i]))
      return lm_err(ctx, LM_E_ARG, "%s: gradient %d is an expanded view (a stride of 0), expected memory of its own",
                    op, i);
  }
  int32_t dev;
  if ((st = group_device_of(ctx, op, n, grads, NULL, &dev))) return st;
  double acc = 0;
  if (dev != LM_CPU) {
    if ((st = device_norm_acc(ctx, n, grads, norm_type, &acc))) return st;
  } else {
    for (int32_t i = 0; i < n; i++)
      if (grads[i] && (st = norm_part(ctx, grads[i], norm_type, &acc))) return st;
  }
  double total = isinf(norm_type) ? acc : norm_type == 2 ? sqrt(acc) : norm_type == 1 ? acc : pow(acc, 1 / norm_type);
  if (total_norm) *total_norm = total;
  if (error_if_nonfinite && !isfinite(total))
    return lm_err(ctx, LM_E_ARG,
                  "%s: the total norm of order %g of the gradients is %g, so they cannot be clipped "
                  "(error_if_nonfinite is set)", op, norm_type, total);
  /* As torch: scale by min(1, max_norm / (total + 1e-6)); a NaN norm makes
     every gradient NaN, an infinite one makes them 0 (or NaN). */
  double coef = max_norm / (total + 1e-6);
  if (coef >= 1) return LM_OK;
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  st = LM_OK;
  if (dev != LM_CPU) {
    double hp[LM_HP_COUNT] = {coef};
    lm_tensor *const *lists[1] = {grads};
    const bool written[1] = {true};
    st = group_device(ctx, op, dev, LM_OPTIM_SCALE, n, 1, lists, written, NULL, hp);
    ctx->grad_enabled = was;
    return st;
  }
  for (int32_t i = 0; i < n && !st; i++) {
    if (!grads[i]) continue;
    scale_job j = {NULL, coef};
    const bool written[1] = {true};
    st = update_one(ctx, 1, &grads[i], written, scale_f32, scale_f64, &j, &j.data);
  }
  ctx->grad_enabled = was;
  return st;
}
