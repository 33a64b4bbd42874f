/* rng.c - random numbers from Philox4x32-10 (Salmon et al., SC'11).
 *
 * The generator is counter-based: the context holds a 64-bit seed (the
 * Philox key) and a 64-bit offset. Element i of a draw is a pure function
 * of (seed, offset + i), the 64-bit counter sitting in the first two counter
 * words, so the numbers do not depend on the thread count or on how the
 * work is chunked. Every element uses one Philox block (four 32-bit words);
 * after a draw of n elements the offset moves on by n.
 */
#include "internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline void philox_block(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1, uint32_t out[4]) {
  for (int r = 0; r < 10; r++) {
    if (r) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The raw bijection, exported (not in lumen.h) for the known-answer tests
   in tests/c/test_rng.c. */
void lm_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  philox_block(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1], out);
}

/* The four words for counter value ctr under a 64-bit key. */
static inline void philox64(uint64_t ctr, uint64_t key, uint32_t w[4]) {
  philox_block((uint32_t)ctr, (uint32_t)(ctr >> 32), 0, 0, (uint32_t)key, (uint32_t)(key >> 32), w);
}

static inline uint64_t join64(uint32_t lo, uint32_t hi) { return ((uint64_t)hi << 32) | lo; }
/* [0, 1) from the top 53 bits of a 64-bit word */
static inline double unit53(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }
/* (0, 1]: the same grid shifted up one step, so log() is finite */
static inline double unit53_open0(uint64_t x) { return (double)((x >> 11) + 1) * 0x1.0p-53; }

void lm_seed(lm_ctx *ctx, uint64_t seed) {
  ctx->rng_seed = seed;
  ctx->rng_offset = 0;
}

void lm_rng_get_state(const lm_ctx *ctx, uint64_t *seed, uint64_t *offset) {
  if (seed) *seed = ctx->rng_seed;
  if (offset) *offset = ctx->rng_offset;
}

void lm_rng_set_state(lm_ctx *ctx, uint64_t seed, uint64_t offset) {
  ctx->rng_seed = seed;
  ctx->rng_offset = offset;
}

/* ---- drawing into a contiguous buffer ---- */

/* the backend's LM_RNG_* codes (src/backend.h) */
enum { K_UNIFORM = LM_RNG_UNIFORM, K_NORMAL = LM_RNG_NORMAL, K_BERNOULLI = LM_RNG_BERNOULLI, K_BERNOULLI_T = LM_RNG_BERNOULLI_T,
       K_RANDINT = LM_RNG_RANDINT };

typedef struct draw_arg {
  int kind;
  int32_t dtype;
  uint64_t key, base; /* seed, and the counter of element 0 */
  double a, b;        /* uniform: lo, hi; normal: mean, std; bernoulli: p */
  int64_t ilo;        /* randint: lo */
  uint64_t irange;    /* randint: hi - lo */
  char *data;
  const char *probs;  /* bernoulli(probs): contiguous, same dtype as data */
} draw_arg;

/* Writes expr (which may use the words w[] of element i) into every
   element of [b, e) as type T. */
#define DRAW_LOOP(T, expr)                                  \
  do {                                                      \
    T *p_ = (T *)a->data;                                   \
    for (int64_t i = b; i < e; i++) {                       \
      uint32_t w[4];                                        \
      philox64(a->base + (uint64_t)i, a->key, w);           \
      p_[i] = (T)(expr);                                    \
    }                                                       \
  } while (0)

/* The same for every dtype (bool gets 0/1 from a nonzero test). */
#define DRAW_ANY(expr)                                      \
  switch (a->dtype) {                                       \
  case LM_F32: DRAW_LOOP(float, expr); break;               \
  case LM_F64: DRAW_LOOP(double, expr); break;              \
  case LM_I32: DRAW_LOOP(int32_t, expr); break;             \
  case LM_I64: DRAW_LOOP(int64_t, expr); break;             \
  case LM_U8: DRAW_LOOP(uint8_t, expr); break;              \
  case LM_BOOL: DRAW_LOOP(uint8_t, (expr) != 0); break;     \
  }

static inline float uniform_f32(const uint32_t *w, float lo, float hi, float span) {
  float v = lo + (float)(w[0] >> 8) * 0x1.0p-24f * span;
  /* rounding can land on hi; [lo, hi) is promised */
  return v < hi ? v : fmaxf(nextafterf(hi, -INFINITY), lo);
}

static inline double uniform_f64(const uint32_t *w, double lo, double hi, double span) {
  double v = lo + unit53(join64(w[0], w[1])) * span;
  return v < hi ? v : fmax(nextafter(hi, -INFINITY), lo);
}

/* Box-Muller: one normal from two uniforms (the sine partner is dropped so
   that element i needs only its own counter). */
static inline double normal01(const uint32_t *w) {
  double u1 = unit53_open0(join64(w[0], w[1])), u2 = unit53(join64(w[2], w[3]));
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void draw_chunk(void *arg, int64_t b, int64_t e) {
  const draw_arg *a = arg;
  switch (a->kind) {
  case K_UNIFORM:
    if (a->dtype == LM_F32) {
      float lo = (float)a->a, hi = (float)a->b, span = hi - lo;
      DRAW_LOOP(float, uniform_f32(w, lo, hi, span));
    } else {
      double span = a->b - a->a;
      DRAW_LOOP(double, uniform_f64(w, a->a, a->b, span));
    }
    break;
  case K_NORMAL:
    if (a->dtype == LM_F32) DRAW_LOOP(float, a->a + a->b * normal01(w));
    else DRAW_LOOP(double, a->a + a->b * normal01(w));
    break;
  case K_BERNOULLI:
    DRAW_ANY(unit53(join64(w[0], w[1])) < a->a ? 1 : 0);
    break;
  case K_BERNOULLI_T:
    if (a->dtype == LM_F32) {
      const float *q = (const float *)a->probs;
      DRAW_LOOP(float, unit53(join64(w[0], w[1])) < (double)q[i] ? 1 : 0);
    } else {
      const double *q = (const double *)a->probs;
      DRAW_LOOP(double, unit53(join64(w[0], w[1])) < q[i] ? 1 : 0);
    }
    break;
  case K_RANDINT:
    /* 64 random bits mod the range: the bias is below range / 2^64 */
    DRAW_ANY((int64_t)((uint64_t)a->ilo + join64(w[0], w[1]) % a->irange));
    break;
  }
}

/* The draw on t's device by its backend (the same counters, so the same
   numbers); the backend's kinds are LM_RNG_*, in the order of K_*. */
static lm_status draw_device(lm_ctx *ctx, const char *op, const lm_tensor *dst, const draw_arg *a, int64_t n) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(dst), random, &be);
  if (st) return st;
  if ((st = be->random(a->kind, dst->dtype, n, lm_data(dst), a->key, a->base, a->a, a->b, a->ilo, a->irange, a->probs)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

/* Runs a draw of kind over every element of t (through a contiguous temp
   when t is strided) and moves the offset past it. */
static lm_status draw(lm_ctx *ctx, const char *op, lm_tensor *t, draw_arg *a) {
  int64_t n = lm_numel(t);
  if (n == 0) return LM_OK;
  lm_tensor *dst = t, *tmp = NULL;
  lm_status st = LM_OK;
  if (!lm_is_contiguous(t)) {
    st = lm_new_on(ctx, op, lm_device_of(t), t->dtype, t->ndim, t->shape, &tmp);
    if (st) return st;
    dst = tmp;
  }
  a->dtype = t->dtype;
  a->key = ctx->rng_seed;
  a->base = ctx->rng_offset;
  a->data = lm_data(dst);
  if (lm_device_of(t) != LM_CPU) st = draw_device(ctx, op, dst, a, n);
  else lm_parallel_for(ctx, n, 4096, draw_chunk, a);
  if (st) {
    lm_tensor_release(tmp);
    return st;
  }
  if (tmp) st = lm_copy_(ctx, t, tmp);
  if (!st) ctx->rng_offset += (uint64_t)n;
  lm_tensor_release(tmp);
  return st;
}

static lm_status check_target(lm_ctx *ctx, const char *op, const lm_tensor *t, bool float_only, bool written) {
  lm_status st = lm_check_arg(ctx, op, t, "tensor");
  if (st) return st;
  /* an expanded view would get several draws per memory cell, and which
     one lands would depend on the threads */
  if (written && (st = lm_check_writable(ctx, op, t))) return st;
  if (float_only && !lm_dtype_is_float(t->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: expected a floating tensor (f32 or f64), got %s", op,
                  lm_dtype_name(t->dtype));
  return LM_OK;
}

lm_status lm_uniform_(lm_ctx *ctx, lm_tensor *t, double lo, double hi) {
  lm_status st = check_target(ctx, "uniform_", t, true, true);
  if (st) return st;
  if (!(lo < hi) || !isfinite(lo) || !isfinite(hi))
    return lm_err(ctx, LM_E_ARG, "uniform_: expected finite lo < hi, got lo=%g, hi=%g", lo, hi);
  if (!isfinite(hi - lo) || (t->dtype == LM_F32 && (!isfinite((float)hi - (float)lo) || !((float)lo < (float)hi))))
    return lm_err(ctx, LM_E_ARG, "uniform_: range [%g, %g) is too wide or too narrow for %s", lo, hi,
                  lm_dtype_name(t->dtype));
  draw_arg a = {.kind = K_UNIFORM, .a = lo, .b = hi};
  return draw(ctx, "uniform_", t, &a);
}

lm_status lm_normal_(lm_ctx *ctx, lm_tensor *t, double mean, double std) {
  lm_status st = check_target(ctx, "normal_", t, true, true);
  if (st) return st;
  if (!(std >= 0) || !isfinite(std) || !isfinite(mean))
    return lm_err(ctx, LM_E_ARG, "normal_: expected a finite mean and std >= 0, got mean=%g, std=%g", mean, std);
  draw_arg a = {.kind = K_NORMAL, .a = mean, .b = std};
  return draw(ctx, "normal_", t, &a);
}

lm_status lm_bernoulli_(lm_ctx *ctx, lm_tensor *t, double p) {
  lm_status st = check_target(ctx, "bernoulli_", t, false, true);
  if (st) return st;
  if (!(p >= 0 && p <= 1)) return lm_err(ctx, LM_E_ARG, "bernoulli_: p must be in [0, 1], got %g", p);
  draw_arg a = {.kind = K_BERNOULLI, .a = p};
  return draw(ctx, "bernoulli_", t, &a);
}

/* Whether every element of p (on a device) lies in [0, 1]: 0 <= p <= 1 is
   false for NaN too; the all() of it is read back. */
static lm_status probs_in_range(lm_ctx *ctx, const lm_tensor *p, bool *ok) {
  double zero = 0, one = 1;
  lm_tensor *z = NULL, *o = NULL, *ge = NULL, *le = NULL, *both = NULL, *all = NULL, *host = NULL;
  lm_status st;
  const bool grad = lm_grad_pause(ctx);
  if (!(st = lm_from_ptr(ctx, LM_F64, 0, NULL, NULL, &zero, &z)) && !(st = lm_from_ptr(ctx, LM_F64, 0, NULL, NULL, &one, &o)) &&
      !(st = lm_binary(ctx, LM_OP_GE, p, z, NULL, &ge)) && !(st = lm_binary(ctx, LM_OP_LE, p, o, NULL, &le)) &&
      !(st = lm_binary(ctx, LM_OP_LOGICAL_AND, ge, le, NULL, &both)) &&
      !(st = lm_reduce(ctx, LM_OP_ALL, both, 0, NULL, 0, 0, &all, NULL)) && !(st = lm_to_device(ctx, all, LM_CPU, &host)))
    *ok = *(const uint8_t *)lm_data(host) != 0;
  ctx->grad_enabled = grad;
  lm_tensor_release(z);
  lm_tensor_release(o);
  lm_tensor_release(ge);
  lm_tensor_release(le);
  lm_tensor_release(both);
  lm_tensor_release(all);
  lm_tensor_release(host);
  return st;
}

lm_status lm_bernoulli(lm_ctx *ctx, const lm_tensor *probs, lm_tensor **out) {
  lm_status st = check_target(ctx, "bernoulli", probs, true, false);
  if (st) return st;
  if (!out) return lm_err(ctx, LM_E_ARG, "bernoulli: out is NULL");
  lm_tensor *pc = NULL, *res = NULL;
  st = lm_contiguous(ctx, probs, &pc);
  if (st) goto done;
  int64_t n = lm_numel(pc);
  const char *q = lm_data(pc);
  if (lm_device_of(pc) != LM_CPU) { /* the range check on the device: one flag comes back */
    bool ok = false;
    if ((st = probs_in_range(ctx, pc, &ok))) goto done;
    if (!ok) {
      st = lm_err(ctx, LM_E_ARG, "bernoulli: probabilities must be in [0, 1] (one is not, or is NaN)");
      goto done;
    }
    n = 0;
  }
  for (int64_t i = 0; i < n; i++) {
    double p = pc->dtype == LM_F32 ? ((const float *)q)[i] : ((const double *)q)[i];
    if (!(p >= 0 && p <= 1)) {
      st = lm_err(ctx, LM_E_ARG, "bernoulli: probabilities must be in [0, 1], found %g at flat position %lld",
                  p, (long long)i);
      goto done;
    }
  }
  st = lm_new_on(ctx, "bernoulli", lm_device_of(pc), pc->dtype, pc->ndim, pc->shape, &res);
  if (st) goto done;
  draw_arg a = {.kind = K_BERNOULLI_T, .probs = q};
  st = draw(ctx, "bernoulli", res, &a);
  if (st) goto done;
  *out = res;
  res = NULL;
done:
  lm_tensor_release(res);
  lm_tensor_release(pc);
  return st;
}

/* Whether every integer in [lo, hi) is exactly representable in dtype. */
static bool range_fits(int32_t dtype, int64_t lo, int64_t hi) {
  int64_t last = hi - 1;
  switch (dtype) {
  case LM_BOOL: return lo >= 0 && last <= 1;
  case LM_U8: return lo >= 0 && last <= 255;
  case LM_I32: return lo >= INT32_MIN && last <= INT32_MAX;
  case LM_I64: return true;
  case LM_F32: return lo >= -(INT64_C(1) << 24) && last <= (INT64_C(1) << 24);
  case LM_F64: return lo >= -(INT64_C(1) << 53) && last <= (INT64_C(1) << 53);
  }
  return false;
}

lm_status lm_randint_(lm_ctx *ctx, lm_tensor *t, int64_t lo, int64_t hi) {
  lm_status st = check_target(ctx, "randint_", t, false, true);
  if (st) return st;
  if (lo >= hi)
    return lm_err(ctx, LM_E_ARG, "randint_: expected lo < hi, got lo=%lld, hi=%lld", (long long)lo, (long long)hi);
  if (!range_fits(t->dtype, lo, hi))
    return lm_err(ctx, LM_E_ARG, "randint_: range [%lld, %lld) does not fit dtype %s", (long long)lo,
                  (long long)hi, lm_dtype_name(t->dtype));
  draw_arg a = {.kind = K_RANDINT, .ilo = lo, .irange = (uint64_t)hi - (uint64_t)lo};
  return draw(ctx, "randint_", t, &a);
}

/* Fisher-Yates driven by the counter: step i (from n-1 down) swaps with a
   position drawn from counter offset + i. Serial, O(n). */
lm_status lm_randperm(lm_ctx *ctx, int64_t n, int32_t dtype, lm_tensor **out) {
  if (!out) return lm_err(ctx, LM_E_ARG, "randperm: out is NULL");
  if (n < 0) return lm_err(ctx, LM_E_ARG, "randperm: n must be >= 0, got %lld", (long long)n);
  if (!lm_dtype_valid(dtype) || dtype == LM_BOOL)
    return lm_err(ctx, LM_E_DTYPE, "randperm: dtype %s is not supported (expected a numeric dtype)",
                  lm_dtype_valid(dtype) ? lm_dtype_name(dtype) : "unknown");
  if (n > 0 && !range_fits(dtype, 0, n))
    return lm_err(ctx, LM_E_ARG, "randperm: n=%lld does not fit dtype %s", (long long)n, lm_dtype_name(dtype));
  lm_tensor *idx = NULL, *res = NULL;
  lm_status st = lm_new(ctx, "randperm", LM_I64, 1, &n, &idx);
  if (st) goto done;
  int64_t *p = (int64_t *)lm_data(idx);
  for (int64_t i = 0; i < n; i++) p[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    uint32_t w[4];
    philox64(ctx->rng_offset + (uint64_t)i, ctx->rng_seed, w);
    int64_t j = (int64_t)(join64(w[0], w[1]) % (uint64_t)(i + 1));
    int64_t x = p[i];
    p[i] = p[j];
    p[j] = x;
  }
  if (dtype == LM_I64) {
    res = idx;
    idx = NULL;
  } else {
    st = lm_to_dtype(ctx, idx, dtype, &res);
    if (st) goto done;
  }
  ctx->rng_offset += (uint64_t)n;
  *out = res;
done:
  lm_tensor_release(idx);
  return st;
}

/* Fisher-Yates is a chain of n dependent swaps, so it stays serial on the
   host whatever the device: the permutation is drawn there (the CPU's, for
   the same seed and offset) and copied over, 8 bytes per element. */
lm_status lm_randperm_on(lm_ctx *ctx, int32_t device, int64_t n, int32_t dtype, lm_tensor **out) {
  if (!out) return lm_err(ctx, LM_E_ARG, "randperm: out is NULL");
  if (device != LM_CPU && !lm_device_available(device))
    return lm_err(ctx, LM_E_DEVICE, "randperm: no %s backend is loaded (lumen.cuda.status() says why)",
                  lm_device_name(device));
  lm_tensor *h = NULL;
  lm_status st = lm_randperm(ctx, n, dtype, &h);
  if (st || device == LM_CPU) {
    *out = h;
    return st;
  }
  st = lm_to_device(ctx, h, device, out);
  lm_tensor_release(h);
  return st;
}
