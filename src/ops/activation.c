/* activation.c - leaky_relu, elu, gelu, prelu, softmax and log_softmax,
 * forward and backward (relu, sigmoid and tanh are unary ops in
 * elementwise.c).
 *
 * Values are computed in double and rounded once to the tensor's dtype
 * (f32 or f64). The pointwise ops run through lm_foreach, so strided
 * inputs need no copy; softmax works on a contiguous [outer, L, inner]
 * view, a row at a time when the dim is the last one and a block of
 * neighbouring columns at a time otherwise (so that the inner loops run
 * over contiguous memory either way). */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GRAIN 32768 /* elements below which another thread does not pay */

static lm_status check_float(lm_ctx *ctx, const char *op, const lm_tensor *x) {
  lm_status st = lm_check_input(ctx, op, x, "input");
  if (st) return st;
  if (!lm_dtype_is_float(x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input dtype %s, expected f32 or f64", op, lm_dtype_name(x->dtype));
  return LM_OK;
}

/* The gradient of an output as x's dtype (it may be strided). */
static lm_status grad_as(lm_ctx *ctx, const lm_tensor *g, int32_t dt, lm_tensor **out) {
  return lm_cast_if_needed(ctx, g, dt, out);
}

/* ---- pointwise: y = f(x), and dx = f'(x) g ---- */

enum { A_LEAKY_RELU, A_ELU, A_GELU, A_GELU_TANH, A_PRELU };

typedef struct act_arg {
  int kind;
  double a; /* negative slope, alpha */
} act_arg;

#define SQRT_2_OVER_PI 0.79788456080286535588
#define INV_SQRT_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794
#define GELU_C 0.044715

static inline double act_f(int kind, double a, double x) {
  switch (kind) {
  case A_LEAKY_RELU: return x > 0 ? x : x * a;
  case A_ELU: return x > 0 ? x : a * expm1(x);
  case A_GELU: return 0.5 * x * (1 + erf(x * INV_SQRT_2));
  case A_GELU_TANH: return 0.5 * x * (1 + tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
  }
  return 0;
}

/* f'(x) */
static inline double act_df(int kind, double a, double x) {
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

/* One loop per dtype and direction; the kind switch is hoisted by hand
   for the cheap leaky_relu, whose loop would otherwise be all switch. */
#define ACT_LOOPS(T, SFX)                                                                        \
  static void fwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                      \
    const act_arg *a = arg;                                                                      \
    if (a->kind == A_LEAKY_RELU) {                                                               \
      const T slope = (T)a->a;                                                                   \
      for (int64_t i = 0; i < n; i++) {                                                          \
        T x = *(const T *)(p[1] + i * s[1]);                                                     \
        *(T *)(p[0] + i * s[0]) = x > 0 ? x : x * slope;                                         \
      }                                                                                          \
      return;                                                                                    \
    }                                                                                            \
    for (int64_t i = 0; i < n; i++)                                                              \
      *(T *)(p[0] + i * s[0]) = (T)act_f(a->kind, a->a, *(const T *)(p[1] + i * s[1]));          \
  }                                                                                              \
  /* operands: dx, g, x */                                                                       \
  static void bwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                      \
    const act_arg *a = arg;                                                                      \
    for (int64_t i = 0; i < n; i++) {                                                            \
      double g = *(const T *)(p[1] + i * s[1]), x = *(const T *)(p[2] + i * s[2]);               \
      *(T *)(p[0] + i * s[0]) = (T)(g * act_df(a->kind, a->a, x));                               \
    }                                                                                            \
  }                                                                                              \
  /* prelu, operands: y, x, w (broadcast) */                                                     \
  static void prelu_fwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T x = *(const T *)(p[1] + i * s[1]), w = *(const T *)(p[2] + i * s[2]);                    \
      *(T *)(p[0] + i * s[0]) = x > 0 ? x : w * x;                                               \
    }                                                                                            \
  }                                                                                              \
  /* prelu, operands: dx, g, x, w */                                                             \
  static void prelu_bwd_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {                \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T g = *(const T *)(p[1] + i * s[1]), x = *(const T *)(p[2] + i * s[2]);                    \
      *(T *)(p[0] + i * s[0]) = x > 0 ? g : *(const T *)(p[3] + i * s[3]) * g;                   \
    }                                                                                            \
  }                                                                                              \
  /* prelu weight gradient terms, operands: t, g, x: t = x g where x <= 0 */                     \
  static void prelu_wterm_##SFX(char **p, const int64_t *s, int64_t n, void *arg) {              \
    for (int64_t i = 0; i < n; i++) {                                                            \
      T g = *(const T *)(p[1] + i * s[1]), x = *(const T *)(p[2] + i * s[2]);                    \
      *(T *)(p[0] + i * s[0]) = x > 0 ? 0 : x * g;                                               \
    }                                                                                            \
  }

ACT_LOOPS(float, f32)
ACT_LOOPS(double, f64)

static const char *act_name(int kind) {
  switch (kind) {
  case A_LEAKY_RELU: return "leaky_relu";
  case A_ELU: return "elu";
  case A_PRELU: return "prelu";
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

/* saved: 0 x; ip[0]: kind; p[0]: parameter */
static lm_status act_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0];
  act_arg a = {.kind = (int)node->ip[0], .a = node->p[0]};
  lm_tensor *g, *dx;
  lm_status st = grad_as(ctx, gout[0], x->dtype, &g);
  if (st) return st;
  if ((st = lm_new(ctx, act_name(a.kind), x->dtype, x->ndim, x->shape, &dx))) { lm_tensor_release(g); return st; }
  lm_operand ops[3] = {lm_operand_of(dx, x->ndim, x->shape), lm_operand_of(g, x->ndim, x->shape),
                       lm_operand_of(x, x->ndim, x->shape)};
  lm_foreach(ctx, x->ndim, x->shape, 3, ops, x->dtype == LM_F32 ? bwd_f32 : bwd_f64, &a, true);
  lm_tensor_release(g);
  gin[0] = dx;
  return LM_OK;
}

static lm_status activation(lm_ctx *ctx, int kind, const lm_tensor *x, double param, lm_tensor **out) {
  const char *op = act_name(kind);
  lm_status st = check_float(ctx, op, x);
  if (st) return st;
  lm_tensor *y;
  if ((st = lm_new(ctx, op, x->dtype, x->ndim, x->shape, &y))) return st;
  act_arg a = {.kind = kind, .a = param};
  lm_operand ops[2] = {lm_operand_of(y, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape)};
  lm_foreach(ctx, x->ndim, x->shape, 2, ops, x->dtype == LM_F32 ? fwd_f32 : fwd_f64, &a, true);
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

/* saved: 0 x, 1 w */
static lm_status prelu_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0], *w = node->saved[1];
  const int32_t nd = x->ndim;
  const bool f32 = x->dtype == LM_F32;
  lm_tensor *g, *t = NULL;
  lm_status st = grad_as(ctx, gout[0], x->dtype, &g);
  if (st) return st;
  if (node->needs[0] && !(st = lm_new(ctx, "prelu", x->dtype, nd, x->shape, &gin[0]))) {
    lm_operand ops[4] = {lm_operand_of(gin[0], nd, x->shape), lm_operand_of(g, nd, x->shape),
                         lm_operand_of(x, nd, x->shape), weight_operand(w, x)};
    lm_foreach(ctx, nd, x->shape, 4, ops, f32 ? prelu_bwd_f32 : prelu_bwd_f64, NULL, true);
  }
  if (!st && node->needs[1] && !(st = lm_new(ctx, "prelu", x->dtype, nd, x->shape, &t))) {
    lm_operand ops[3] = {lm_operand_of(t, nd, x->shape), lm_operand_of(g, nd, x->shape), lm_operand_of(x, nd, x->shape)};
    lm_foreach(ctx, nd, x->shape, 3, ops, f32 ? prelu_wterm_f32 : prelu_wterm_f64, NULL, true);
    /* sum over every dim but the channel one (or all of them for one weight) */
    int32_t dims[LM_MAX_DIMS], n = 0;
    for (int32_t d = 0; d < nd; d++)
      if (d != 1 || lm_numel(w) == 1) dims[n++] = d;
    lm_tensor *s = NULL;
    if (n == 0) {
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
  if (st || (st = lm_check_input(ctx, op, weight, "weight"))) return st;
  if (weight->dtype != x->dtype)
    return lm_err(ctx, LM_E_DTYPE, "%s: weight has dtype %s, expected %s (the input's)", op,
                  lm_dtype_name(weight->dtype), lm_dtype_name(x->dtype));
  const int64_t channels = x->ndim >= 2 ? x->shape[1] : 1, nw = lm_numel(weight);
  if (weight->ndim > 1 || (nw != 1 && nw != channels))
    return lm_err(ctx, LM_E_SHAPE, "%s: weight of shape %s for input %s, expected 1 or %lld (channels, dim 1) values in 1-D",
                  op, LM_SHP(weight, sa), LM_SHP(x, sb), (long long)channels);
  lm_tensor *y;
  if ((st = lm_new(ctx, op, x->dtype, x->ndim, x->shape, &y))) return st;
  lm_operand ops[3] = {lm_operand_of(y, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape),
                       weight_operand(weight, x)};
  lm_foreach(ctx, x->ndim, x->shape, 3, ops, x->dtype == LM_F32 ? prelu_fwd_f32 : prelu_fwd_f64, NULL, true);
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
   unit is one outer index and a block of up to COLS neighbouring inner
   positions (one row when inner == 1). */

#define COLS 64

typedef struct smax {
  bool log;      /* log_softmax */
  bool backward;
  int32_t dt;
  int64_t outer, L, inner, nblk; /* nblk: blocks of inner positions */
  const char *x; /* forward: input; backward: the forward's output */
  const char *g; /* backward: output gradient (contiguous) */
  char *y;
} smax;

static inline double rd(int32_t dt, const char *p, int64_t i) {
  return dt == LM_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
static inline void wr(int32_t dt, char *p, int64_t i, double v) {
  if (dt == LM_F32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}

/* Forward over columns j0 .. j0 + m of one outer block starting at
   element base; element (l, j) is at base + l * inner + j. */
static void smax_forward(const smax *s, int64_t base, int64_t m) {
  double mx[COLS], sum[COLS];
  const int32_t dt = s->dt;
  const int64_t L = s->L, in = s->inner;
  for (int64_t j = 0; j < m; j++) { mx[j] = -INFINITY; sum[j] = 0; }
  for (int64_t l = 0; l < L; l++)
    for (int64_t j = 0; j < m; j++) {
      double v = rd(dt, s->x, base + l * in + j);
      if (v > mx[j] || v != v) mx[j] = v; /* a NaN sticks: the slice becomes NaN */
    }
  for (int64_t l = 0; l < L; l++)
    for (int64_t j = 0; j < m; j++) {
      const int64_t i = base + l * in + j;
      double e = exp(rd(dt, s->x, i) - mx[j]);
      sum[j] += e;
      if (!s->log) wr(dt, s->y, i, e);
    }
  for (int64_t j = 0; j < m; j++) sum[j] = s->log ? mx[j] + log(sum[j]) : 1 / sum[j];
  for (int64_t l = 0; l < L; l++)
    for (int64_t j = 0; j < m; j++) {
      const int64_t i = base + l * in + j;
      if (s->log) wr(dt, s->y, i, rd(dt, s->x, i) - sum[j]);
      else wr(dt, s->y, i, rd(dt, s->y, i) * sum[j]);
    }
}

/* softmax: dx = y (g - sum(g y)); log_softmax: dx = g - exp(y) sum(g) */
static void smax_backward(const smax *s, int64_t base, int64_t m) {
  double dot[COLS];
  const int32_t dt = s->dt;
  const int64_t L = s->L, in = s->inner;
  for (int64_t j = 0; j < m; j++) dot[j] = 0;
  for (int64_t l = 0; l < L; l++)
    for (int64_t j = 0; j < m; j++) {
      const int64_t i = base + l * in + j;
      double g = rd(dt, s->g, i);
      dot[j] += s->log ? g : g * rd(dt, s->x, i);
    }
  for (int64_t l = 0; l < L; l++)
    for (int64_t j = 0; j < m; j++) {
      const int64_t i = base + l * in + j;
      double g = rd(dt, s->g, i), y = rd(dt, s->x, i);
      wr(dt, s->y, i, s->log ? g - exp(y) * dot[j] : y * (g - dot[j]));
    }
}

static void smax_units(void *arg, int64_t begin, int64_t end) {
  const smax *s = arg;
  for (int64_t u = begin; u < end; u++) {
    const int64_t o = u / s->nblk, j0 = (u % s->nblk) * COLS;
    const int64_t m = s->inner - j0 < COLS ? s->inner - j0 : COLS;
    const int64_t base = o * s->L * s->inner + j0;
    if (s->backward) smax_backward(s, base, m);
    else smax_forward(s, base, m);
  }
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
  if (!st && !(st = lm_new(ctx, op, y->dtype, y->ndim, y->shape, &gin[0]))) {
    smax s = {.log = node->ip[1] != 0, .backward = true, .dt = y->dtype, .x = lm_data(y), .g = lm_data(g),
              .y = lm_data(gin[0])};
    smax_dims(y, (int32_t)node->ip[0], &s.outer, &s.L, &s.inner);
    smax_run(ctx, &s);
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
  if ((st = lm_contiguous(ctx, x, &xc))) return st;
  if ((st = lm_new(ctx, op, x->dtype, x->ndim, x->shape, &y))) goto done;
  smax s = {.log = log, .dt = x->dtype, .x = lm_data(xc), .y = lm_data(y)};
  smax_dims(x, d, &s.outer, &s.L, &s.inner);
  smax_run(ctx, &s);
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
