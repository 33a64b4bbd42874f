/* rnn.c - the fused pointwise parts of LSTM and GRU cells, with their own
 * backward (the GEMMs around them are ordinary addmm / matmul calls).
 *
 * A time step computes gates_x = x W_ih^T + b_ih and gates_h = h W_hh^T + b_hh
 * (batch x G*hidden each), then one of these ops:
 *
 *   lstm_cell (gate order i, f, g, o as torch):
 *     i, f, o = sigmoid(gx + gh), g = tanh(gx + gh)
 *     c = f * c_prev + i * g,  h = o * tanh(c)
 *   gru_cell (gate order r, z, n as torch; hn includes b_hn):
 *     r, z = sigmoid(gx + gh),  n = tanh(gx_n + r * gh_n)
 *     h = (1 - z) * n + z * h_prev
 *
 * Recording saves the activated gates (a workspace of batch x 5H for the
 * LSTM: i, f, g, o, tanh(c); batch x 4H for the GRU: r, z, n, gh_n) so the
 * backward does no transcendental math. The LSTM's gates_x and gates_h get
 * the same gradient tensor; the GRU's differ in the n block (r * dn for gh).
 *
 * Operands are 2-D; rows may be strided (a step selected out of a sequence)
 * as long as each row is contiguous, otherwise they are copied first.
 *
 * On a device the same row layouts go to the backend's rnn_cell entry
 * (dev_cell); the GEMMs are the device's too. */
#include "../core/internal.h"
#include <math.h>
#include <string.h>

/* A batch x width operand read row by row: row b starts at data + b * ld
   elements. tmp holds a contiguous copy when the layout needed one. */
typedef struct rows {
  const char *data;
  int64_t ld;
  lm_tensor *tmp;
} rows;

static lm_status rows_of(lm_ctx *ctx, const lm_tensor *t, rows *r) {
  r->tmp = NULL;
  if (t->shape[1] > 1 && t->stride[1] != 1) {
    lm_status st = lm_contiguous(ctx, t, &r->tmp);
    if (st) return st;
    t = r->tmp;
  }
  r->data = lm_data(t);
  r->ld = t->shape[0] > 1 ? t->stride[0] : t->shape[1];
  return LM_OK;
}

/* ---- kernels ----
   Each worker handles batch rows [begin, end). Pointers are bytes; the
   kernels are generated for float and double. */
typedef struct cell_args {
  int64_t H;
  rows gx, gh, s;   /* gates from the input, gates from the hidden state, previous state */
  char *h, *c, *ws; /* outputs (contiguous batch x H) and the workspace of activated gates */
} cell_args;

typedef struct cell_grad_args {
  int64_t H;
  rows dh, dc, s, ws; /* output gradients (dc: LSTM only), previous state, saved workspace */
  char *dgx, *dgh, *ds; /* gate gradients (dgh: GRU only), state gradient (NULL: not wanted) */
} cell_grad_args;

/* f32 math that vectorizes (lm_exp_f32, internal.h): the loops below run
   eight lanes at a time (AVX2 clone) instead of calling libm per element,
   which made the cell the slowest part of an LSTM step. tanh(x) =
   1 - 2 / (1 + e^2x) is within 1e-7 absolutely. f64 keeps libm: it serves
   gradient checks, not speed. */
LM_INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + lm_exp_f32(-x)); }
LM_INLINE float tanh_f32(float x) { return 1.0f - 2.0f / (1.0f + lm_exp_f32(2.0f * x)); }
static inline double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double tanh_f64(double x) { return tanh(x); }

#define ROW(r, T, b) ((const T *)(r).data + (b) * (r).ld)

/* The LSTM forward always fills the workspace (i, f, g, o, tanh c): the
   loop stays branch-free, and the caller keeps it only when recording. */
#define LSTM_KERNELS(T, ATTR, SIG, TANH)                                                 \
  ATTR static void lstm_forward_##T(void *arg, int64_t begin, int64_t end) {             \
    const cell_args *a = arg;                                                            \
    int64_t H = a->H;                                                                    \
    for (int64_t b = begin; b < end; b++) {                                              \
      const T *restrict gx = ROW(a->gx, T, b), *restrict gh = ROW(a->gh, T, b);          \
      const T *restrict cp = ROW(a->s, T, b);                                            \
      T *restrict h = (T *)a->h + b * H, *restrict c = (T *)a->c + b * H;                \
      T *restrict ws = (T *)a->ws + b * 5 * H;                                           \
      LM_SIMD for (int64_t j = 0; j < H; j++) {                                          \
        T i = SIG(gx[j] + gh[j]), f = SIG(gx[H + j] + gh[H + j]);                        \
        T g = TANH(gx[2 * H + j] + gh[2 * H + j]), o = SIG(gx[3 * H + j] + gh[3 * H + j]); \
        T cn = f * cp[j] + i * g, tc = TANH(cn);                                         \
        c[j] = cn;                                                                       \
        h[j] = o * tc;                                                                   \
        ws[j] = i, ws[H + j] = f, ws[2 * H + j] = g, ws[3 * H + j] = o, ws[4 * H + j] = tc; \
      }                                                                                  \
    }                                                                                    \
  }                                                                                      \
  ATTR static void lstm_backward_##T(void *arg, int64_t begin, int64_t end) {            \
    const cell_grad_args *a = arg;                                                       \
    int64_t H = a->H;                                                                    \
    for (int64_t b = begin; b < end; b++) {                                              \
      const T *restrict dh = ROW(a->dh, T, b), *restrict dc = ROW(a->dc, T, b);          \
      const T *restrict cp = ROW(a->s, T, b), *restrict ws = ROW(a->ws, T, b);           \
      T *restrict dg = (T *)a->dgx + b * 4 * H;                                          \
      LM_SIMD for (int64_t j = 0; j < H; j++) {                                          \
        T i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], tc = ws[4 * H + j]; \
        T dct = dc[j] + dh[j] * o * (1 - tc * tc); /* through h = o * tanh(c) too */     \
        dg[j] = dct * g * i * (1 - i);                                                   \
        dg[H + j] = dct * cp[j] * f * (1 - f);                                           \
        dg[2 * H + j] = dct * i * (1 - g * g);                                           \
        dg[3 * H + j] = dh[j] * tc * o * (1 - o);                                        \
      }                                                                                  \
      if (!a->ds) continue;                                                              \
      T *restrict ds = (T *)a->ds + b * H;                                               \
      LM_SIMD for (int64_t j = 0; j < H; j++) {                                          \
        T o = ws[3 * H + j], tc = ws[4 * H + j];                                         \
        ds[j] = (dc[j] + dh[j] * o * (1 - tc * tc)) * ws[H + j];                         \
      }                                                                                  \
    }                                                                                    \
  }

#define GRU_KERNELS(T, ATTR, SIG, TANH)                                                  \
  ATTR static void gru_forward_##T(void *arg, int64_t begin, int64_t end) {              \
    const cell_args *a = arg;                                                            \
    int64_t H = a->H;                                                                    \
    for (int64_t b = begin; b < end; b++) {                                              \
      const T *restrict gx = ROW(a->gx, T, b), *restrict gh = ROW(a->gh, T, b);          \
      const T *restrict hp = ROW(a->s, T, b);                                            \
      T *restrict h = (T *)a->h + b * H, *restrict ws = (T *)a->ws + b * 4 * H;          \
      LM_SIMD for (int64_t j = 0; j < H; j++) {                                          \
        T r = SIG(gx[j] + gh[j]), z = SIG(gx[H + j] + gh[H + j]);                        \
        T hn = gh[2 * H + j], n = TANH(gx[2 * H + j] + r * hn);                          \
        h[j] = (1 - z) * n + z * hp[j];                                                  \
        ws[j] = r, ws[H + j] = z, ws[2 * H + j] = n, ws[3 * H + j] = hn;                 \
      }                                                                                  \
    }                                                                                    \
  }                                                                                      \
  ATTR static void gru_backward_##T(void *arg, int64_t begin, int64_t end) {             \
    const cell_grad_args *a = arg;                                                       \
    int64_t H = a->H;                                                                    \
    for (int64_t b = begin; b < end; b++) {                                              \
      const T *restrict dh = ROW(a->dh, T, b), *restrict hp = ROW(a->s, T, b);           \
      const T *restrict ws = ROW(a->ws, T, b);                                           \
      T *restrict dgx = (T *)a->dgx + b * 3 * H, *restrict dgh = (T *)a->dgh + b * 3 * H; \
      LM_SIMD for (int64_t j = 0; j < H; j++) {                                          \
        T r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];               \
        T dn = dh[j] * (1 - z) * (1 - n * n);                                            \
        T dz = dh[j] * (hp[j] - n) * z * (1 - z);                                        \
        T dr = dn * hn * r * (1 - r);                                                    \
        dgx[j] = dgh[j] = dr;                                                            \
        dgx[H + j] = dgh[H + j] = dz;                                                    \
        dgx[2 * H + j] = dn;                                                             \
        dgh[2 * H + j] = dn * r;                                                         \
      }                                                                                  \
      if (!a->ds) continue;                                                              \
      T *restrict ds = (T *)a->ds + b * H;                                               \
      LM_SIMD for (int64_t j = 0; j < H; j++) ds[j] = dh[j] * ws[H + j];                 \
    }                                                                                    \
  }

LSTM_KERNELS(float, LM_CLONES, sigmoid_f32, tanh_f32)
LSTM_KERNELS(double, , sigmoid_f64, tanh_f64)
GRU_KERNELS(float, LM_CLONES, sigmoid_f32, tanh_f32)
GRU_KERNELS(double, , sigmoid_f64, tanh_f64)

/* Rows per thread chunk: small steps stay on one thread. */
static int64_t row_grain(int64_t width) {
  int64_t g = 16384 / (width > 0 ? width : 1);
  return g < 1 ? 1 : g;
}

/* ---- checks shared by both cells ----
   gates_x and gates_h are batch x G*H, the state batch x H. */
static lm_status check_cell(lm_ctx *ctx, const char *op, const char *state_name, int32_t G,
                            const lm_tensor *gx, const lm_tensor *gh, const lm_tensor *s) {
  lm_status st;
  if ((st = lm_check_arg(ctx, op, gx, "gates_x")) || (st = lm_check_arg(ctx, op, gh, "gates_h")) ||
      (st = lm_check_arg(ctx, op, s, state_name)))
    return st;
  const lm_tensor *ts[3] = {gx, gh, s};
  const char *names[3] = {"gates_x", "gates_h", state_name};
  int32_t dev;
  if ((st = lm_op_device(ctx, op, 3, ts, names, false, &dev))) return st;
  for (int32_t k = 0; k < 3; k++) {
    if (!lm_dtype_is_float(ts[k]->dtype))
      return lm_err(ctx, LM_E_DTYPE, "%s: %s has dtype %s, expected f32 or f64", op, names[k],
                    lm_dtype_name(ts[k]->dtype));
    if (ts[k]->dtype != gx->dtype)
      return lm_err(ctx, LM_E_DTYPE, "%s: gates_x is %s but %s is %s, expected one dtype", op,
                    lm_dtype_name(gx->dtype), names[k], lm_dtype_name(ts[k]->dtype));
  }
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF], c[LM_SHAPE_BUF];
  if (s->ndim != 2)
    return lm_err(ctx, LM_E_SHAPE, "%s: %s has shape %s, expected 2-D (batch x hidden)", op, state_name, LM_SHP(s, a));
  int64_t want[2] = {s->shape[0], G * s->shape[1]};
  for (int32_t k = 0; k < 2; k++)
    if (ts[k]->ndim != 2 || ts[k]->shape[0] != want[0] || ts[k]->shape[1] != want[1])
      return lm_err(ctx, LM_E_SHAPE, "%s: %s has shape %s, expected %s (batch x %d*hidden, from %s of shape %s)", op,
                    names[k], LM_SHP(ts[k], a), lm_shape_str(2, want, b, sizeof b), G, state_name, LM_SHP(s, c));
  return LM_OK;
}

/* A cell on a device: the backend's rnn_cell with the row layouts given. */
static lm_status dev_cell(lm_ctx *ctx, const char *op, int32_t code, int32_t dev, int32_t dt, bool backward, int64_t n,
                          int64_t H, const rows *const *in, int32_t nin, void *const *out) {
  const lm_backend *be;
  lm_status st = LM_BACKEND_FOR(ctx, op, dev, rnn_cell, &be);
  if (st) return st;
  const void *ptrs[4];
  int64_t ld[4];
  for (int32_t k = 0; k < nin; k++) ptrs[k] = in[k]->data, ld[k] = in[k]->ld;
  if ((st = be->rnn_cell(code, dt, backward, n, H, ptrs, ld, out))) return lm_backend_fail(ctx, op, be, st);
  return LM_OK;
}

static void release_rows(rows *r, int32_t n) {
  for (int32_t k = 0; k < n; k++) lm_tensor_release(r[k].tmp);
}

/* ---- LSTM ---- */

/* saved[0]: workspace (i, f, g, o, tanh c), saved[1]: c_prev. */
static lm_status lstm_cell_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *ws = node->saved[0], *cp = node->saved[1];
  int64_t N = cp->shape[0], H = cp->shape[1];
  int32_t dt = cp->dtype, dev = lm_device_of(cp);
  cell_grad_args a = {.H = H};
  lm_tensor *dg = NULL, *ds = NULL;
  lm_status st;
  if ((st = rows_of(ctx, gout[0], &a.dh)) || (st = rows_of(ctx, gout[1], &a.dc)) || (st = rows_of(ctx, cp, &a.s)) ||
      (st = rows_of(ctx, ws, &a.ws)))
    goto done;
  int64_t gshape[2] = {N, 4 * H};
  if ((st = lm_new_on(ctx, "lstm_cell", dev, dt, 2, gshape, &dg))) goto done;
  if (node->needs[2] && (st = lm_new_on(ctx, "lstm_cell", dev, dt, 2, cp->shape, &ds))) goto done;
  a.dgx = lm_data(dg);
  a.ds = ds ? lm_data(ds) : NULL;
  if (dev != LM_CPU) {
    const rows *in[4] = {&a.dh, &a.dc, &a.s, &a.ws};
    void *out[2] = {a.dgx, a.ds};
    if ((st = dev_cell(ctx, "lstm_cell", LM_OP_LSTM_CELL, dev, dt, true, N, H, in, 4, out))) goto done;
  } else {
    lm_parallel_for(ctx, N, row_grain(5 * H), dt == LM_F32 ? lstm_backward_float : lstm_backward_double, &a);
  }
  /* both gate inputs enter as a sum, so they share one gradient */
  if (node->needs[0]) { lm_tensor_retain(dg); gin[0] = dg; }
  if (node->needs[1]) { lm_tensor_retain(dg); gin[1] = dg; }
  gin[2] = ds;
  ds = NULL;
done:
  release_rows(&a.dh, 1), release_rows(&a.dc, 1), release_rows(&a.s, 1), release_rows(&a.ws, 1);
  lm_tensor_release(dg);
  lm_tensor_release(ds);
  return st;
}

lm_status lm_lstm_cell(lm_ctx *ctx, const lm_tensor *gates_x, const lm_tensor *gates_h, const lm_tensor *c_prev,
                       lm_tensor **h_out, lm_tensor **c_out) {
  lm_status st = check_cell(ctx, "lstm_cell", "c_prev", 4, gates_x, gates_h, c_prev);
  if (st) return st;
  int64_t N = c_prev->shape[0], H = c_prev->shape[1];
  int32_t dt = c_prev->dtype, dev = lm_device_of(c_prev);
  const lm_tensor *ins[3] = {gates_x, gates_h, c_prev};
  cell_args a = {.H = H};
  lm_tensor *h = NULL, *c = NULL, *ws = NULL;
  if ((st = rows_of(ctx, gates_x, &a.gx)) || (st = rows_of(ctx, gates_h, &a.gh)) || (st = rows_of(ctx, c_prev, &a.s)))
    goto done;
  int64_t wshape[2] = {N, 5 * H};
  if ((st = lm_new_on(ctx, "lstm_cell", dev, dt, 2, c_prev->shape, &h)) ||
      (st = lm_new_on(ctx, "lstm_cell", dev, dt, 2, c_prev->shape, &c)) ||
      (st = lm_new_on(ctx, "lstm_cell", dev, dt, 2, wshape, &ws)))
    goto done;
  a.h = lm_data(h), a.c = lm_data(c), a.ws = lm_data(ws);
  if (dev != LM_CPU) {
    const rows *in[3] = {&a.gx, &a.gh, &a.s};
    void *out[3] = {a.h, a.c, a.ws};
    if ((st = dev_cell(ctx, "lstm_cell", LM_OP_LSTM_CELL, dev, dt, false, N, H, in, 3, out))) goto done;
  } else {
    lm_parallel_for(ctx, N, row_grain(5 * H), dt == LM_F32 ? lstm_forward_float : lstm_forward_double, &a);
  }
  lm_node *node;
  lm_tensor *outs[2] = {h, c};
  if ((st = lm_record(ctx, LM_OP_LSTM_CELL, lstm_cell_backward, 3, ins, 2, outs, &node))) goto done;
  if (node && ((st = lm_save(ctx, node, 0, ws)) || (st = lm_save(ctx, node, 1, c_prev)))) goto done;
done:
  release_rows(&a.gx, 1), release_rows(&a.gh, 1), release_rows(&a.s, 1);
  lm_tensor_release(ws);
  if (st) {
    lm_tensor_release(h);
    lm_tensor_release(c);
    return st;
  }
  lm_finish_out(h, h_out);
  return lm_finish_out(c, c_out);
}

/* ---- GRU ---- */

/* saved[0]: workspace (r, z, n, gh_n), saved[1]: h_prev. */
static lm_status gru_cell_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *ws = node->saved[0], *hp = node->saved[1];
  int64_t N = hp->shape[0], H = hp->shape[1];
  int32_t dt = hp->dtype, dev = lm_device_of(hp);
  cell_grad_args a = {.H = H};
  lm_tensor *dgx = NULL, *dgh = NULL, *ds = NULL;
  lm_status st;
  if ((st = rows_of(ctx, gout[0], &a.dh)) || (st = rows_of(ctx, hp, &a.s)) || (st = rows_of(ctx, ws, &a.ws))) goto done;
  int64_t gshape[2] = {N, 3 * H};
  if ((st = lm_new_on(ctx, "gru_cell", dev, dt, 2, gshape, &dgx)) || (st = lm_new_on(ctx, "gru_cell", dev, dt, 2, gshape, &dgh)))
    goto done;
  if (node->needs[2] && (st = lm_new_on(ctx, "gru_cell", dev, dt, 2, hp->shape, &ds))) goto done;
  a.dgx = lm_data(dgx), a.dgh = lm_data(dgh), a.ds = ds ? lm_data(ds) : NULL;
  if (dev != LM_CPU) {
    const rows *in[3] = {&a.dh, &a.s, &a.ws};
    void *out[3] = {a.dgx, a.dgh, a.ds};
    if ((st = dev_cell(ctx, "gru_cell", LM_OP_GRU_CELL, dev, dt, true, N, H, in, 3, out))) goto done;
  } else {
    lm_parallel_for(ctx, N, row_grain(5 * H), dt == LM_F32 ? gru_backward_float : gru_backward_double, &a);
  }
  if (node->needs[0]) gin[0] = dgx, dgx = NULL;
  if (node->needs[1]) gin[1] = dgh, dgh = NULL;
  gin[2] = ds;
  ds = NULL;
done:
  release_rows(&a.dh, 1), release_rows(&a.s, 1), release_rows(&a.ws, 1);
  lm_tensor_release(dgx);
  lm_tensor_release(dgh);
  lm_tensor_release(ds);
  return st;
}

lm_status lm_gru_cell(lm_ctx *ctx, const lm_tensor *gates_x, const lm_tensor *gates_h, const lm_tensor *h_prev,
                      lm_tensor **h_out) {
  lm_status st = check_cell(ctx, "gru_cell", "h_prev", 3, gates_x, gates_h, h_prev);
  if (st) return st;
  int64_t N = h_prev->shape[0], H = h_prev->shape[1];
  int32_t dt = h_prev->dtype, dev = lm_device_of(h_prev);
  const lm_tensor *ins[3] = {gates_x, gates_h, h_prev};
  cell_args a = {.H = H};
  lm_tensor *h = NULL, *ws = NULL;
  if ((st = rows_of(ctx, gates_x, &a.gx)) || (st = rows_of(ctx, gates_h, &a.gh)) || (st = rows_of(ctx, h_prev, &a.s)))
    goto done;
  int64_t wshape[2] = {N, 4 * H};
  if ((st = lm_new_on(ctx, "gru_cell", dev, dt, 2, h_prev->shape, &h)) ||
      (st = lm_new_on(ctx, "gru_cell", dev, dt, 2, wshape, &ws)))
    goto done;
  a.h = lm_data(h), a.ws = lm_data(ws);
  if (dev != LM_CPU) {
    const rows *in[3] = {&a.gx, &a.gh, &a.s};
    void *out[2] = {a.h, a.ws};
    if ((st = dev_cell(ctx, "gru_cell", LM_OP_GRU_CELL, dev, dt, false, N, H, in, 3, out))) goto done;
  } else {
    lm_parallel_for(ctx, N, row_grain(4 * H), dt == LM_F32 ? gru_forward_float : gru_forward_double, &a);
  }
  lm_node *node;
  lm_tensor *outs[1] = {h};
  if ((st = lm_record(ctx, LM_OP_GRU_CELL, gru_cell_backward, 3, ins, 1, outs, &node))) goto done;
  if (node && ((st = lm_save(ctx, node, 0, ws)) || (st = lm_save(ctx, node, 1, h_prev)))) goto done;
done:
  release_rows(&a.gx, 1), release_rows(&a.gh, 1), release_rows(&a.s, 1);
  lm_tensor_release(ws);
  if (st) {
    lm_tensor_release(h);
    return st;
  }
  return lm_finish_out(h, h_out);
}
