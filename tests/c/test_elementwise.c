/* test_elementwise.c - elementwise ops through the C API: the f32 exp
   against libm, in-place aliasing, dtype conversion on write, errors. */
#include "test.h"
#include <string.h>

static float *f32_data(lm_tensor *t) {
  lm_tensor_info i;
  lm_tensor_get_info(t, &i);
  return (float *)i.data;
}

LM_TEST(exp_f32_matches_libm) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_tensor *x, *y;
  int64_t n = 100003; /* not a multiple of the vector width */
  CHECK_OK(lm_linspace(ctx, -103.5, 88.7, n, LM_F32, &x));
  CHECK_OK(lm_unary(ctx, LM_OP_EXP, x, NULL, &y));
  const float *px = f32_data(x), *py = f32_data(y);
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double ref = exp((double)px[i]);
    if (ref < 1.2e-38) continue; /* subnormal results: relative error is meaningless */
    double r = fabs(py[i] - ref) / ref;
    if (r > worst) worst = r;
  }
  CHECK(worst < 2e-7);
  lm_tensor_release(y);
  /* NaN stays NaN, infinities saturate */
  float special[4] = {NAN, INFINITY, -INFINITY, 0};
  int64_t four = 4;
  lm_tensor *s, *e;
  CHECK_OK(lm_from_ptr(ctx, LM_F32, 1, &four, NULL, special, &s));
  CHECK_OK(lm_unary(ctx, LM_OP_EXP, s, NULL, &e));
  const float *pe = f32_data(e);
  CHECK(isnan(pe[0]) && isinf(pe[1]) && pe[2] == 0 && pe[3] == 1);
  lm_tensor_release(e);
  lm_tensor_release(s);
  lm_tensor_release(x);
  lm_ctx_free(ctx);
}

LM_TEST(inplace_add_of_own_transpose) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_tensor *x, *t;
  CHECK_OK(lm_arange(ctx, 0, 1, 9, LM_F32, &x));
  int64_t shape[2] = {3, 3};
  lm_tensor *m;
  CHECK_OK(lm_view(ctx, x, 2, shape, &m));
  CHECK_OK(lm_transpose(ctx, m, 0, 1, &t));
  CHECK_OK(lm_binary(ctx, LM_OP_ADD, m, t, m, NULL));
  const float *p = f32_data(m);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) CHECK(p[i * 3 + j] == (float)(i * 3 + j + j * 3 + i));
  lm_tensor_release(t);
  lm_tensor_release(m);
  lm_tensor_release(x);
  lm_ctx_free(ctx);
}

LM_TEST(dst_dtype_rules) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_tensor *i, *f;
  CHECK_OK(lm_arange(ctx, 0, 1, 4, LM_I32, &i));
  CHECK_OK(lm_arange(ctx, 0, 0.5, 4, LM_F32, &f));
  /* a float result cannot go into an integer destination */
  CHECK(lm_binary(ctx, LM_OP_ADD, i, f, i, NULL) == LM_E_DTYPE);
  CHECK(strstr(lm_ctx_errmsg(ctx), "add: result type f32") != NULL);
  /* a bool result converts into a float destination */
  CHECK_OK(lm_binary_scalar(ctx, LM_OP_GT, f, 0.7, 0, f, NULL));
  const float *p = f32_data(f);
  CHECK(p[0] == 0 && p[1] == 0 && p[2] == 1 && p[3] == 1);
  /* i32 / scalar is true division into f32 */
  lm_tensor *q;
  CHECK_OK(lm_binary_scalar(ctx, LM_OP_DIV, i, 2, 0, NULL, &q));
  lm_tensor_info info;
  lm_tensor_get_info(q, &info);
  CHECK(info.dtype == LM_F32 && ((float *)info.data)[3] == 1.5f);
  lm_tensor_release(q);
  /* bad op codes and NULLs are errors, not crashes */
  CHECK(lm_unary(ctx, LM_OP_ADD, i, NULL, &q) == LM_E_ARG);
  CHECK(lm_binary(ctx, LM_OP_NEG, i, i, NULL, &q) == LM_E_ARG);
  CHECK(lm_binary(ctx, LM_OP_ADD, i, NULL, NULL, &q) == LM_E_ARG);
  CHECK(lm_where(ctx, f, i, i, &q) == LM_E_DTYPE);
  lm_tensor_release(f);
  lm_tensor_release(i);
  lm_ctx_free(ctx);
}
