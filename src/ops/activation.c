/* activation.c - leaky_relu, elu, gelu, prelu, softmax and log_softmax,
 * forward and backward (relu, sigmoid and tanh are unary ops in
 * elementwise.c).
 *
 * f64 is computed in double with libm. f32 is computed in float, with
 * exp, erf and tanh from the vectorisable approximations below (ELU keeps
 * expm1f for its accuracy near 0); sums are in double. The pointwise ops
 * run through lm_foreach, so strided inputs need no copy, and contiguous
 * runs go through loops the compiler vectorises. Softmax works on a
 * contiguous [outer, L, inner] view, a row at a time when the dim is the
 * last one and a block of neighbouring columns at a time otherwise (so
 * that the inner loops run over contiguous memory either way). */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Every function below may assume no FP trap handler looks on: GCC then
   turns selects such as x > 0 ? x : a x into vector blends (results are
   the same; only exception flags, which nothing reads, could differ); and
   multiply-adds may fuse. As a file-wide pragma, it also reaches the
   always-inline helpers (a function attribute does not). */
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")

#define GRAIN 32768 /* elements below which another thread does not pay */

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  lm_status st = lm_check_arg(ctx, op, x, "input");
  if (st) return st;
  if (!lm_dtype_is_float(x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input dtype %s, expected f32 or f64", op, lm_dtype_name(x->dtype));
  return LM_OK;
}

/* The gradient of an output as x's dtype (it may be strided). */
static lm_status grad_as(lm_ctx *ctx, const lm_tensor *g, int32_t dt, lm_tensor **out) {
  return lm_cast_if_needed(ctx, g, dt, out);
}

/* ---- on a device: the backend's activation and softmax entries ----
   They take contiguous arrays, so strided operands are gathered first (on
   the device, grad mode paused so that the copies do not record). */

static lm_status dev_contiguous(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  if (!t) { *out = NULL; return LM_OK; }
  const bool grad_was = lm_grad_pause(ctx);
  lm_status st = lm_contiguous(ctx, t, out);
  ctx->grad_enabled = grad_was;
  return st;
}

/* out (contiguous, on x's device) = the activation's mode over x, g, w */
static lm_status dev_activation(lm_ctx *ctx, const char *op, int32_t kind, int32_t mode, lm_tensor *out,
                                const lm_tensor *x, const lm_tensor *g, const lm_tensor *w, int64_t c, int64_t inner,
                                double param) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, lm_device_of(x), activation, &be);
  if (st) return st;
  lm_tensor *xc = NULL, *gc = NULL, *wc = NULL;
  if (!(st = dev_contiguous(ctx, x, &xc)) && !(st = dev_contiguous(ctx, g, &gc)) && !(st = dev_contiguous(ctx, w, &wc))) {
    int64_t n = lm_numel(x);
    if (n > 0 && (st = be->activation(kind, mode, x->dtype, n, lm_data(out), lm_data(xc), gc ? lm_data(gc) : NULL,
                                      wc ? lm_data(wc) : NULL, c, inner, param)))
      st = lm_backend_fail(ctx, op, be, st);
  }
  lm_tensor_release(xc);
  lm_tensor_release(gc);
  lm_tensor_release(wc);
  return st;
}

/* ---- pointwise: y = f(x), and dx = f'(x) g ---- */

enum { A_LEAKY_RELU, A_ELU, A_GELU, A_GELU_TANH };

typedef struct act_arg {
  int kind;
  double a; /* negative slope, alpha */
} act_arg;

#define SQRT_2_OVER_PI 0.79788456080286535588
#define INV_SQRT_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794
#define GELU_C 0.044715

/* erf and tanh for f32 from lm_exp_f32 (internal.h), so that GELU loops
   vectorise too: erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about
   the spacing of floats near 1), tanh(u) = 1 - 2 / (exp(2u) + 1). Both
   are only ever added to 1 here, so absolute error is what counts. */
LM_INLINE float erf_f32(float x) {
  float a = fabsf(x), t = 1 / (1 + 0.3275911f * a);
  float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  float y = 1 - p * lm_exp_f32(-a * a);
  return x < 0 ? -y : y;
}
LM_INLINE float tanh_f32(float u) { return 1 - 2 / (lm_exp_f32(2 * u) + 1); }

/* f(x) and f'(x) in double (f64) and in float (f32: float arithmetic is
   several times faster, and as accurate as the result is stored). */
LM_INLINE double act_f64(int kind, double a, double x) {
  switch (kind) {
  case A_LEAKY_RELU: {
    double neg = x * a;
    return x > 0 ? x : neg;
  }
  case A_ELU: return x > 0 ? x : a * expm1(x);
  case A_GELU: return 0.5 * x * (1 + erf(x * INV_SQRT_2));
  case A_GELU_TANH: return 0.5 * x * (1 + tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
  }
  return 0;
}
LM_INLINE double act_df64(int kind, double a, double x) {
  switch (kind) {
  case A_LEAKY_RELU: return x > 0 ? 1 : a;
  case A_ELU: return x > 0 ? 1 : a * exp(x);
  case A_GELU: return 0.5 * (1 + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x);
  case A_GELU_TANH: {
    double t = tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_C * x * x);
  }
  }
  return 0;
}
LM_INLINE float act_f32(int kind, float a, float x) {
  switch (kind) {
  case A_LEAKY_RELU: { /* both sides computed: a select the loop can vectorise */
    float neg = x * a;
    return x > 0 ? x : neg;
  }
  case A_ELU: return x > 0 ? x : a * expm1f(x);
  case A_GELU: return 0.5f * x * (1 + erf_f32(x * (float)INV_SQRT_2));
  case A_GELU_TANH: return 0.5f * x * (1 + tanh_f32((float)SQRT_2_OVER_PI * (x + (float)GELU_C * x * x * x)));
  }
  return 0;
}
LM_INLINE float act_df32(int kind, float a, float x) {
  switch (kind) {
  case A_LEAKY_RELU: return x > 0 ? 1 : a;
  case A_ELU: return x > 0 ? 1 : a * expf(x);
  case A_GELU: return 0.5f * (1 + erf_f32(x * (float)INV_SQRT_2)) + x * (float)INV_SQRT_2PI * lm_exp_f32(-0.5f * x * x);
  case A_GELU_TANH: {
    float t = tanh_f32((float)SQRT_2_OVER_PI * (x + (float)GELU_C * x * x * x));
    return 0.5f * (1 + t) + 0.5f * x * (1 - t * t) * (float)SQRT_2_OVER_PI * (1 + 3 * (float)GELU_C * x * x);
  }
  }
  return 0;
}

/* The lm_foreach kernels, written once: kind and f32 are constants in each
   instance (see act_fwd / act_bwd), and contiguous runs get their own loop
   so that the cheap kinds vectorise. */
#define ELEM(T, p, s, i) (*(T *)((p) + (i) * (s)))
LM_INLINE void fwd_body(char **p, const int64_t *s, int64_t n, int kind, double a, bool f32) {
  if (f32) {
    const float af = (float)a;
    if (s[0] == 4 && s[1] == 4) {
      float *y = (float *)p[0];
      const float *x = (const float *)p[1];
      LM_SIMD for (int64_t i = 0; i < n; i++) y[i] = act_f32(kind, af, x[i]);
    } else {
      for (int64_t i = 0; i < n; i++) ELEM(float, p[0], s[0], i) = act_f32(kind, af, ELEM(float, p[1], s[1], i));
    }
  } else {
    if (s[0] == 8 && s[1] == 8) {
      double *y = (double *)p[0];
      const double *x = (const double *)p[1];
      LM_SIMD for (int64_t i = 0; i < n; i++) y[i] = act_f64(kind, a, x[i]);
    } else {
      for (int64_t i = 0; i < n; i++) ELEM(double, p[0], s[0], i) = act_f64(kind, a, ELEM(double, p[1], s[1], i));
    }
  }
}
/* operands: dx, g, x */
LM_INLINE void bwd_body(char **p, const int64_t *s, int64_t n, int kind, double a, bool f32) {
  if (f32) {
    const float af = (float)a;
    if (s[0] == 4 && s[1] == 4 && s[2] == 4) {
      float *dx = (float *)p[0];
      const float *g = (const float *)p[1], *x = (const float *)p[2];
      LM_SIMD for (int64_t i = 0; i < n; i++) dx[i] = g[i] * act_df32(kind, af, x[i]);
    } else {
      for (int64_t i = 0; i < n; i++)
        ELEM(float, p[0], s[0], i) = ELEM(float, p[1], s[1], i) * act_df32(kind, af, ELEM(float, p[2], s[2], i));
    }
  } else {
    if (s[0] == 8 && s[1] == 8 && s[2] == 8) {
      double *dx = (double *)p[0];
      const double *g = (const double *)p[1], *x = (const double *)p[2];
      LM_SIMD for (int64_t i = 0; i < n; i++) dx[i] = g[i] * act_df64(kind, a, x[i]);
    } else {
      for (int64_t i = 0; i < n; i++)
        ELEM(double, p[0], s[0], i) = ELEM(double, p[1], s[1], i) * act_df64(kind, a, ELEM(double, p[2], s[2], i));
    }
  }
}

#define DISPATCH(BODY, F32)                                                    \
  switch (a->kind) {                                                           \
  case A_LEAKY_RELU: BODY(p, s, n, A_LEAKY_RELU, a->a, F32); break;            \
  case A_ELU: BODY(p, s, n, A_ELU, a->a, F32); break;                          \
  case A_GELU: BODY(p, s, n, A_GELU, a->a, F32); break;                        \
  case A_GELU_TANH: BODY(p, s, n, A_GELU_TANH, a->a, F32); break;              \
  }
LM_CLONES static void fwd_f32(char **p, const int64_t *s, int64_t n, void *arg) {
  const act_arg *a = arg;
  DISPATCH(fwd_body, true)
}
LM_CLONES static void fwd_f64(char **p, const int64_t *s, int64_t n, void *arg) {
  const act_arg *a = arg;
  DISPATCH(fwd_body, false)
}
LM_CLONES static void bwd_f32(char **p, const int64_t *s, int64_t n, void *arg) {
  const act_arg *a = arg;
  DISPATCH(bwd_body, true)
}
LM_CLONES static void bwd_f64(char **p, const int64_t *s, int64_t n, void *arg) {
  const act_arg *a = arg;
  DISPATCH(bwd_body, false)
}

/* prelu kernels, over strided operands */
#define PRELU_LOOPS(T, SFX)                                                                      \
  /* operands: y, x, w (broadcast) */                                                            \
  static void prelu_fwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T x = ELEM(T, p[1], s[1], i);                                                              \
      ELEM(T, p[0], s[0], i) = x > 0 ? x : ELEM(T, p[2], s[2], i) * x;                           \
    }                                                                                            \
  }                                                                                              \
  /* operands: dx, g, x, w */                                                                    \
  static void prelu_bwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T g = ELEM(T, p[1], s[1], i);                                                              \
      ELEM(T, p[0], s[0], i) = ELEM(T, p[2], s[2], i) > 0 ? g : ELEM(T, p[3], s[3], i) * g;      \
    }                                                                                            \
  }                                                                                              \
  /* weight gradient terms, operands: t, g, x: t = x g where x <= 0 */                           \
  static void prelu_wterm_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {              \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T x = ELEM(T, p[2], s[2], i);                                                              \
      ELEM(T, p[0], s[0], i) = x > 0 ? 0 : x * ELEM(T, p[1], s[1], i);                           \
    }                                                                                            \
  }

PRELU_LOOPS(float, f32)
PRELU_LOOPS(double, f64)

static const char *act_name(int kind) {
  switch (kind) {
  case A_LEAKY_RELU: return "leaky_relu";
  case A_ELU: return "elu";
  }
  return "gelu";
}

static int32_t act_op(int kind) {
  switch (kind) {
  case A_LEAKY_RELU: return LM_OP_LEAKY_RELU;
  case A_ELU: return LM_OP_ELU;
  }
  return LM_OP_GELU;
}

/* The backend's parameter of kind: gelu says which form. */
static double act_param(int kind, double a) {
  return kind == A_GELU ? 0 : kind == A_GELU_TANH ? 1 : a;
}

/* saved: 0 x; ip[0]: kind; p[0]: parameter */
static lm_status act_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0];
  act_arg a = {.kind = (int)node->ip[0], .a = node->p[0]};
  lm_tensor *g, *dx;
  lm_status st = grad_as(ctx, gout[0], x->dtype, &g);
  if (st) return st;
  if ((st = lm_new_on(ctx, act_name(a.kind), lm_device_of(x), x->dtype, x->ndim, x->shape, &dx))) {
    lm_tensor_release(g);
    return st;
  }
  if (lm_device_of(x) != LM_CPU) {
    st = dev_activation(ctx, act_name(a.kind), act_op(a.kind), 1, dx, x, g, NULL, 1, 1, act_param(a.kind, a.a));
  } else {
    lm_operand ops[3] = {lm_operand_of(dx, x->ndim, x->shape), lm_operand_of(g, x->ndim, x->shape),
                         lm_operand_of(x, x->ndim, x->shape)};
    lm_foreach(ctx, x->ndim, x->shape, 3, ops, x->dtype == LM_F32 ? bwd_f32 : bwd_f64, &a, true);
  }
  lm_tensor_release(g);
  if (st) { lm_tensor_release(dx); return st; }
  gin[0] = dx;
  return LM_OK;
}

static lm_status activation(lm_ctx *ctx, int kind, const lm_tensor *x, double param, lm_tensor **out) {
  const char *op = act_name(kind);
  lm_status st = check_float(ctx, op, x);
  if (st) return st;
  lm_tensor *y;
  if ((st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, x->ndim, x->shape, &y))) return st;
  act_arg a = {.kind = kind, .a = param};
  if (lm_device_of(x) != LM_CPU) {
    if ((st = dev_activation(ctx, op, act_op(kind), 0, y, x, NULL, NULL, 1, 1, act_param(kind, param)))) goto fail;
  } else {
    lm_operand ops[2] = {lm_operand_of(y, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape)};
    lm_foreach(ctx, x->ndim, x->shape, 2, ops, x->dtype == LM_F32 ? fwd_f32 : fwd_f64, &a, true);
  }
  lm_node *node;
  if ((st = lm_record(ctx, act_op(kind), act_backward, 1, &x, 1, &y, &node))) goto fail;
  if (node) {
    node->ip[0] = kind;
    node->p[0] = param;
    if ((st = lm_save(ctx, node, 0, x))) goto fail;
  }
  return lm_finish_out(y, out);
fail:
  lm_tensor_release(y);
  return st;
}

lm_status lm_leaky_relu(lm_ctx *ctx, const lm_tensor *x, double negative_slope, lm_tensor **out) {
  return activation(ctx, A_LEAKY_RELU, x, negative_slope, out);
}

lm_status lm_elu(lm_ctx *ctx, const lm_tensor *x, double alpha, lm_tensor **out) {
  return activation(ctx, A_ELU, x, alpha, out);
}

lm_status lm_gelu(lm_ctx *ctx, const lm_tensor *x, int32_t approximate, lm_tensor **out) {
  if (approximate != 0 && approximate != 1)
    return lm_err(ctx, LM_E_ARG, "gelu: approximate is %d, expected 0 (exact, erf) or 1 (tanh)", approximate);
  return activation(ctx, approximate ? A_GELU_TANH : A_GELU, x, 0, out);
}

/* ---- prelu ---- */

/* w as an operand over x's shape: its elements along the channel dim (1)
   when it has one per channel, else one value everywhere. */
static lm_operand weight_operand(const lm_tensor *w, const lm_tensor *x) {
  lm_operand op = {.data = lm_data(w), .esize = lm_dtype_size(w->dtype)};
  memset(op.stride, 0, sizeof op.stride);
  if (lm_numel(w) > 1) op.stride[1] = w->ndim ? w->stride[0] : 0;
  return op;
}

/* The channel count and the inner size of prelu's weight over x (one
   weight: c = 1). */
static void prelu_layout(const lm_tensor *x, const lm_tensor *w, int64_t *c, int64_t *inner) {
  *c = lm_numel(w);
  *inner = 1;
  if (*c > 1)
    for (int32_t d = 2; d < x->ndim; d++) *inner *= x->shape[d];
}

/* saved: 0 x, 1 w */
static lm_status prelu_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *w = node->saved[1];
  const int32_t nd = x->ndim;
  const bool f32 = x->dtype == LM_F32;
  const int32_t dev = lm_device_of(x);
  int64_t c, inner;
  prelu_layout(x, w, &c, &inner);
  lm_tensor *g, *t = NULL;
  lm_status st = grad_as(ctx, gout[0], x->dtype, &g);
  if (st) return st;
  if (node->needs[0] && !(st = lm_new_on(ctx, "prelu", dev, x->dtype, nd, x->shape, &gin[0])) && dev != LM_CPU) {
    st = dev_activation(ctx, "prelu", LM_OP_PRELU, 1, gin[0], x, g, w, c, inner, 0);
  } else if (node->needs[0] && !st) {
    lm_operand ops[4] = {lm_operand_of(gin[0], nd, x->shape), lm_operand_of(g, nd, x->shape),
                         lm_operand_of(x, nd, x->shape), weight_operand(w, x)};
    lm_foreach(ctx, nd, x->shape, 4, ops, f32 ? prelu_bwd_f32 : prelu_bwd_f64, NULL, true);
  }
  if (!st && node->needs[1] && !(st = lm_new_on(ctx, "prelu", dev, x->dtype, nd, x->shape, &t))) {
    if (dev != LM_CPU) {
      st = dev_activation(ctx, "prelu", LM_OP_PRELU, 2, t, x, g, w, c, inner, 0);
    } else {
      lm_operand ops[3] = {lm_operand_of(t, nd, x->shape), lm_operand_of(g, nd, x->shape), lm_operand_of(x, nd, x->shape)};
      lm_foreach(ctx, nd, x->shape, 3, ops, f32 ? prelu_wterm_f32 : prelu_wterm_f64, NULL, true);
    }
    /* sum over every dim but the channel one (or all of them for one weight) */
    int32_t dims[LM_MAX_DIMS], n = 0;
    for (int32_t d = 0; d < nd; d++)
      if (d != 1 || lm_numel(w) == 1) dims[n++] = d;
    lm_tensor *s = NULL;
    if (st) {
    } else if (n == 0) {
      lm_tensor_retain(t);
      s = t;
    } else {
      st = lm_reduce(ctx, LM_OP_SUM, t, n, dims, 0, 0, &s, NULL);
    }
    if (!st) st = lm_reshape(ctx, s, w->ndim, w->shape, &gin[1]);
    lm_tensor_release(s);
  }
  lm_tensor_release(t);
  lm_tensor_release(g);
  return st;
}

lm_status lm_prelu(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *weight, lm_tensor **out) {
  const char *op = "prelu";
  char sa[LM_SHAPE_BUF], sb[LM_SHAPE_BUF];
  lm_status st = check_float(ctx, op, x);
  if (st || (st = lm_check_arg(ctx, op, weight, "weight"))) return st;
  const lm_tensor *both[2] = {x, weight};
  const char *names[2] = {"input", "weight"};
  int32_t dev;
  if ((st = lm_op_device(ctx, op, 2, both, names, false, &dev))) return st;
  if (weight->dtype != x->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: weight has dtype %s, expected %s (the input's)", op,
                  lm_dtype_name(weight->dtype), lm_dtype_name(x->dtype));
  const int64_t channels = x->ndim >= 2 ? x->shape[1] : 1, nw = lm_numel(weight);
  if (weight->ndim > 1 || (nw != 1 && nw != channels))
    return lm_err(ctx, LM_E_SHAPE, "%s: weight of shape %s for input %s, expected 1 or %lld (channels, dim 1) values in 1-D",
                  op, LM_SHP(weight, sa), LM_SHP(x, sb), (long long)channels);
  lm_tensor *y;
  if ((st = lm_new_on(ctx, op, dev, x->dtype, x->ndim, x->shape, &y))) return st;
  if (dev != LM_CPU) {
    int64_t c, inner;
    prelu_layout(x, weight, &c, &inner);
    if ((st = dev_activation(ctx, op, LM_OP_PRELU, 0, y, x, NULL, weight, c, inner, 0))) goto fail;
  } else {
    lm_operand ops[3] = {lm_operand_of(y, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape),
                         weight_operand(weight, x)};
    lm_foreach(ctx, x->ndim, x->shape, 3, ops, x->dtype == LM_F32 ? prelu_fwd_f32 : prelu_fwd_f64, NULL, true);
  }
  lm_node *node;
  const lm_tensor *ins[2] = {x, weight};
  if ((st = lm_record(ctx, LM_OP_PRELU, prelu_backward, 2, ins, 1, &y, &node))) goto fail;
  if (node && ((st = lm_save(ctx, node, 0, x)) || (st = lm_save(ctx, node, 1, weight)))) goto fail;
  return lm_finish_out(y, out);
fail:
  lm_tensor_release(y);
  return st;
}

/* ---- softmax and log_softmax ----
   x is read as [outer, L, inner] (contiguous) and normalised along L. A
   unit is one row (inner == 1), or one outer index and a block of up to
   COLS neighbouring inner positions, whose loops run along the contiguous
   inner dim. Sums are in double; f32 exponentials use lm_exp_f32, which the
   loops vectorise, f64 ones libm's exp. */

#define COLS 64

LM_INLINE double ld(const char *p, int64_t i, bool f32) {
  return f32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
LM_INLINE void st(char *p, int64_t i, double v, bool f32) {
  if (f32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}
LM_INLINE double ex(double v, bool f32) { return f32 ? (double)lm_exp_f32((float)v) : exp(v); }
/* exp(p[i] - m), for f32 in float arithmetic (m holds a float value) */
LM_INLINE double exp_minus(const char *p, int64_t i, double m, bool f32) {
  return f32 ? (double)lm_exp_f32(((const float *)p)[i] - (float)m) : exp(((const double *)p)[i] - m);
}

typedef struct smax {
  bool log;      /* log_softmax */
  bool backward;
  int32_t dt;
  int64_t outer, L, inner, nblk; /* nblk: blocks of inner positions */
  const char *x; /* forward: input; backward: the forward's output */
  const char *g; /* backward: output gradient (contiguous) */
  char *y;
} smax;

/* Forward over one row of L contiguous elements at x, into y. */
LM_INLINE void row_forward(const char *x, char *y, int64_t L, bool is_log, bool f32) {
  double m = -INFINITY, s = 0;
  int nan = 0;
  LM_PRAGMA(omp simd reduction(max : m) reduction(| : nan))
  for (int64_t l = 0; l < L; l++) {
    double v = ld(x, l, f32);
    m = v > m ? v : m;
    nan |= v != v;
  }
  if (nan) m = NAN; /* a NaN makes the whole slice NaN, as in torch */
  LM_SIMD_SUM(s) for (int64_t l = 0; l < L; l++) {
    double e = exp_minus(x, l, m, f32);
    if (!is_log) st(y, l, e, f32);
    s += e;
  }
  if (is_log) {
    const double lse = m + log(s);
    LM_SIMD for (int64_t l = 0; l < L; l++) st(y, l, ld(x, l, f32) - lse, f32);
  } else {
    const double r = 1 / s;
    LM_SIMD for (int64_t l = 0; l < L; l++) st(y, l, ld(y, l, f32) * r, f32);
  }
}

/* Forward over m <= COLS columns: element (l, j) at offset l * in + j. */
LM_INLINE void cols_forward(const char *x, char *y, int64_t L, int64_t in, int64_t m, bool is_log, bool f32) {
  double mx[COLS], sum[COLS];
  int nan[COLS];
  for (int64_t j = 0; j < m; j++) { mx[j] = -INFINITY; sum[j] = 0; nan[j] = 0; }
  for (int64_t l = 0; l < L; l++) {
    LM_SIMD for (int64_t j = 0; j < m; j++) {
      double v = ld(x, l * in + j, f32);
      mx[j] = v > mx[j] ? v : mx[j];
      nan[j] |= v != v;
    }
  }
  for (int64_t j = 0; j < m; j++) if (nan[j]) mx[j] = NAN;
  for (int64_t l = 0; l < L; l++) {
    LM_SIMD for (int64_t j = 0; j < m; j++) {
      double e = exp_minus(x, l * in + j, mx[j], f32);
      if (!is_log) st(y, l * in + j, e, f32);
      sum[j] += e;
    }
  }
  for (int64_t j = 0; j < m; j++) sum[j] = is_log ? mx[j] + log(sum[j]) : 1 / sum[j];
  for (int64_t l = 0; l < L; l++) {
    if (is_log) {
      LM_SIMD for (int64_t j = 0; j < m; j++) st(y, l * in + j, ld(x, l * in + j, f32) - sum[j], f32);
    } else {
      LM_SIMD for (int64_t j = 0; j < m; j++) st(y, l * in + j, ld(y, l * in + j, f32) * sum[j], f32);
    }
  }
}

/* softmax: dx = y (g - sum(g y)); log_softmax: dx = g - exp(y) sum(g).
   y is the forward's output; dx may not alias it. */
LM_INLINE void row_backward(const char *y, const char *g, char *dx, int64_t L, bool is_log, bool f32) {
  double dot = 0;
  LM_SIMD_SUM(dot) for (int64_t l = 0; l < L; l++) dot += is_log ? ld(g, l, f32) : ld(g, l, f32) * ld(y, l, f32);
  LM_SIMD for (int64_t l = 0; l < L; l++) {
    double gv = ld(g, l, f32), yv = ld(y, l, f32);
    st(dx, l, is_log ? gv - ex(yv, f32) * dot : yv * (gv - dot), f32);
  }
}

LM_INLINE void cols_backward(const char *y, const char *g, char *dx, int64_t L, int64_t in, int64_t m, bool is_log, bool f32) {
  double dot[COLS];
  for (int64_t j = 0; j < m; j++) dot[j] = 0;
  for (int64_t l = 0; l < L; l++) {
    LM_SIMD for (int64_t j = 0; j < m; j++) {
      double gv = ld(g, l * in + j, f32);
      dot[j] += is_log ? gv : gv * ld(y, l * in + j, f32);
    }
  }
  for (int64_t l = 0; l < L; l++) {
    LM_SIMD for (int64_t j = 0; j < m; j++) {
      double gv = ld(g, l * in + j, f32), yv = ld(y, l * in + j, f32);
      st(dx, l * in + j, is_log ? gv - ex(yv, f32) * dot[j] : yv * (gv - dot[j]), f32);
    }
  }
}

LM_INLINE void smax_body(const smax *s, int64_t begin, int64_t end, bool is_log, bool f32) {
  const int64_t es = f32 ? 4 : 8;
  for (int64_t u = begin; u < end; u++) {
    const int64_t o = u / s->nblk, j0 = (u % s->nblk) * COLS;
    const int64_t m = s->inner - j0 < COLS ? s->inner - j0 : COLS;
    const int64_t at = (o * s->L * s->inner + j0) * es;
    const char *g = s->g ? s->g + at : NULL;
    if (s->inner == 1) {
      if (s->backward) row_backward(s->x + at, g, s->y + at, s->L, is_log, f32);
      else row_forward(s->x + at, s->y + at, s->L, is_log, f32);
    } else {
      if (s->backward) cols_backward(s->x + at, g, s->y + at, s->L, s->inner, m, is_log, f32);
      else cols_forward(s->x + at, s->y + at, s->L, s->inner, m, is_log, f32);
    }
  }
}

LM_CLONES static void smax_units(void *arg, int64_t begin, int64_t end) {
  const smax *s = arg;
  if (s->dt == LM_F32) {
    if (s->log) smax_body(s, begin, end, true, true);
    else smax_body(s, begin, end, false, true);
  } else {
    if (s->log) smax_body(s, begin, end, true, false);
    else smax_body(s, begin, end, false, false);
  }
}

/* The backend's softmax over s (x, g, y device addresses). */
static lm_status smax_dev(lm_ctx *ctx, const char *op, int32_t device, const smax *s) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, device, softmax, &be);
  if (st) return st;
  if (s->outer * s->L * s->inner == 0) return LM_OK;
  if ((st = be->softmax(s->log, s->backward, s->dt, s->outer, s->L, s->inner, s->y, s->x, s->g)))
    return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

static void smax_run(lm_ctx *ctx, smax *s) {
  s->nblk = (s->inner + COLS - 1) / COLS;
  const int64_t units = s->outer * s->nblk, per = s->L * (s->inner < COLS ? s->inner : COLS);
  const int64_t grain = per > 0 ? GRAIN / per : GRAIN;
  lm_parallel_for(ctx, units, grain < 1 ? 1 : grain, smax_units, s);
}

static void smax_dims(const lm_tensor *x, int32_t dim, int64_t *outer, int64_t *L, int64_t *inner) {
  *outer = *inner = 1;
  *L = x->ndim ? x->shape[dim] : 1;
  for (int32_t d = 0; d < x->ndim; d++) {
    if (d < dim) *outer *= x->shape[d];
    if (d > dim) *inner *= x->shape[d];
  }
}

/* saved: 0 y (the forward's output); ip[0]: dim; ip[1]: log */
static lm_status smax_backward_node(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *y = node->saved[0];
  const char *op = node->ip[1] ? "log_softmax" : "softmax";
  lm_tensor *g1, *g = NULL;
  lm_status st = grad_as(ctx, gout[0], y->dtype, &g1);
  if (st) return st;
  st = lm_contiguous(ctx, g1, &g);
  lm_tensor_release(g1);
  if (!st && !(st = lm_new_on(ctx, op, lm_device_of(y), y->dtype, y->ndim, y->shape, &gin[0]))) {
    smax s = {.log = node->ip[1] != 0, .backward = true, .dt = y->dtype, .x = lm_data(y), .g = lm_data(g),
              .y = lm_data(gin[0])};
    smax_dims(y, (int32_t)node->ip[0], &s.outer, &s.L, &s.inner);
    if (lm_device_of(y) != LM_CPU) st = smax_dev(ctx, op, lm_device_of(y), &s);
    else smax_run(ctx, &s);
  }
  lm_tensor_release(g);
  return st;
}

static lm_status softmax_op(lm_ctx *ctx, bool log, const lm_tensor *x, int32_t dim, lm_tensor **out) {
  const char *op = log ? "log_softmax" : "softmax";
  char sb[LM_SHAPE_BUF];
  lm_status st = check_float(ctx, op, x);
  if (st) return st;
  int32_t d = lm_wrap_dim(dim, x->ndim ? x->ndim : 1);
  if (d < 0)
    return lm_err(ctx, LM_E_INDEX, "%s: dim %d is out of range for input %s (%d-D)", op, dim, LM_SHP(x, sb), x->ndim);
  lm_tensor *xc, *y = NULL;
  const bool grad_was = lm_grad_pause(ctx); /* the copy must not record */
  st = lm_contiguous(ctx, x, &xc);
  ctx->grad_enabled = grad_was;
  if (st) return st;
  if ((st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, x->ndim, x->shape, &y))) goto done;
  smax s = {.log = log, .dt = x->dtype, .x = lm_data(xc), .y = lm_data(y)};
  smax_dims(x, d, &s.outer, &s.L, &s.inner);
  if (lm_device_of(x) != LM_CPU) {
    if ((st = smax_dev(ctx, op, lm_device_of(x), &s))) goto done;
  } else {
    smax_run(ctx, &s);
  }
  lm_node *node;
  if ((st = lm_record(ctx, log ? LM_OP_LOG_SOFTMAX : LM_OP_SOFTMAX, smax_backward_node, 1, &x, 1, &y, &node))) goto done;
  if (node) {
    node->ip[0] = d;
    node->ip[1] = log;
    st = lm_save(ctx, node, 0, y);
  }
done:
  lm_tensor_release(xc);
  if (st) { lm_tensor_release(y); return st; }
  return lm_finish_out(y, out);
}

lm_status lm_softmax(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out) {
  return softmax_op(ctx, false, x, dim, out);
}

lm_status lm_log_softmax(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out) {
  return softmax_op(ctx, true, x, dim, out);
}
