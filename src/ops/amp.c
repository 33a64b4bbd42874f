/* amp.c - mixed precision: the autocast mode of a context and the rounding
 * of f32 values to bf16 or f16.
 *
 * lumen has no 16-bit storage dtype. Under autocast, the ops that torch's
 * autocast runs in low precision and that lumen computes with a GEMM
 * (convolutions of every kind, matmul and addmm, hence mm, bmm, mv, linear)
 * read their f32 GEMM operands rounded to bf16 or f16 and accumulate in
 * f32; their results stay f32, and parameters stay f32 (the master
 * weights). On the CPU the ops round copies of their operands (this file's
 * lm_lowp_copy) before the usual f32 GEMM, which is the exact reference of
 * what the device does: its backend's gemm_lowp entry converts the
 * operands to 16 bits on the device and multiplies them on tensor cores
 * with f32 accumulation. Additive terms (a convolution's bias, addmm's
 * input) are not GEMM operands and stay f32. The rounding itself is
 * src/lowp.h, shared with the CUDA backend. */
#include "../core/internal.h"
#include "../lowp.h"

static lm_status check_mode(lm_ctx *ctx, const char *op, int32_t mode) {
  if (mode == LM_AUTOCAST_OFF || mode == LM_AUTOCAST_BF16 || mode == LM_AUTOCAST_F16) return LM_OK;
  return lm_err(ctx, LM_E_ARG, "%s: mode %d, expected LM_AUTOCAST_OFF (0), LM_AUTOCAST_BF16 (1) or LM_AUTOCAST_F16 (2)",
                op, mode);
}

lm_status lm_set_autocast(lm_ctx *ctx, int32_t mode) {
  lm_status st = check_mode(ctx, "set_autocast", mode);
  if (!st) ctx->autocast = mode;
  return st;
}

int32_t lm_autocast(const lm_ctx *ctx) { return ctx->autocast; }

int32_t lm_autocast_for(const lm_ctx *ctx, int32_t dtype) {
  return dtype == LM_F32 ? ctx->autocast : LM_AUTOCAST_OFF;
}

typedef struct round_arg { float *p; int32_t mode; } round_arg;

static void round_range(void *arg, int64_t i0, int64_t i1) {
  const round_arg *r = arg;
  for (int64_t i = i0; i < i1; i++) r->p[i] = lm_round_lowp(r->p[i], r->mode);
}

lm_status lm_lowp_copy(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t mode, lm_tensor **out) {
  LM_ASSERT(t->dtype == LM_F32 && lm_device_of(t) == LM_CPU);
  lm_tensor *r;
  lm_status st = lm_new(ctx, op, LM_F32, t->ndim, t->shape, &r);
  if (st) return st;
  if ((st = lm_copy_(ctx, r, t))) {
    lm_tensor_release(r);
    return st;
  }
  round_arg a = {(float *)lm_data(r), mode};
  lm_parallel_for(ctx, lm_numel(r), 1 << 16, round_range, &a);
  *out = r;
  return LM_OK;
}

lm_status lm_lowp_round(lm_ctx *ctx, const lm_tensor *t, int32_t mode, lm_tensor **out) {
  const char *op = "lowp_round";
  lm_status st = lm_check_input(ctx, op, t, "input");
  if (st || (st = check_mode(ctx, op, mode))) return st;
  if (t->dtype != LM_F32)
    return lm_err(ctx, LM_E_DTYPE, "%s: input is %s, expected f32 (the dtype autocast rounds)", op,
                  lm_dtype_name(t->dtype));
  return lm_lowp_copy(ctx, op, t, mode, out); /* mode off: a plain copy */
}
