/* test_reduce.c - reductions and cumsum through the C API: values, the
   threaded paths against one thread, and error paths that leak nothing. */
#include "test.h"
#include <string.h>

static double item(lm_tensor *t) {
  lm_tensor_info i;
  lm_tensor_get_info(t, &i);
  switch (i.dtype) {
  case LM_F32: return *(float *)i.data;
  case LM_F64: return *(double *)i.data;
  case LM_I64: return (double)*(int64_t *)i.data;
  default: return *(unsigned char *)i.data;
  }
}

LM_TEST(reduce_sum_max_and_positions) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_tensor *x, *m, *v, *ix;
  CHECK_OK(lm_arange(ctx, 0, 1, 12, LM_F32, &x));
  int64_t shape[2] = {3, 4};
  CHECK_OK(lm_view(ctx, x, 2, shape, &m));
  CHECK_OK(lm_reduce(ctx, LM_OP_SUM, m, 0, NULL, 0, 0, &v, NULL));
  CHECK_NEAR(item(v), 66, 0);
  lm_tensor_release(v);
  int32_t dim = -1;
  CHECK_OK(lm_reduce(ctx, LM_OP_MAX, m, 1, &dim, 1, 0, &v, &ix));
  lm_tensor_info i;
  lm_tensor_get_info(ix, &i);
  CHECK(i.dtype == LM_I64 && i.ndim == 2 && i.shape[0] == 3 && i.shape[1] == 1);
  CHECK(((int64_t *)i.data)[2] == 3);
  lm_tensor_get_info(v, &i);
  CHECK(((float *)i.data)[2] == 11);
  lm_tensor_release(v);
  lm_tensor_release(ix);
  lm_tensor_release(m);
  lm_tensor_release(x);
  lm_ctx_free(ctx);
}

/* a long run split across threads gives what one thread gives */
LM_TEST(reduce_threads_agree) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  int64_t n = 300001;
  lm_tensor *x, *v1, *v2;
  CHECK_OK(lm_arange(ctx, 0, 1, n, LM_I64, &x));
  int ops[3] = {LM_OP_SUM, LM_OP_ARGMAX, LM_OP_ARGMIN};
  double want[3] = {(double)(n - 1) * n / 2, (double)(n - 1), 0};
  for (int k = 0; k < 3; k++) {
    lm_set_num_threads(ctx, 1);
    CHECK_OK(lm_reduce(ctx, ops[k], x, 0, NULL, 0, 0, &v1, NULL));
    lm_set_num_threads(ctx, 4);
    CHECK_OK(lm_reduce(ctx, ops[k], x, 0, NULL, 0, 0, &v2, NULL));
    CHECK(item(v1) == want[k] && item(v2) == want[k]);
    lm_tensor_release(v1);
    lm_tensor_release(v2);
  }
  lm_tensor_release(x);
  lm_ctx_free(ctx);
}

LM_TEST(reduce_errors_leak_nothing) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  int64_t shape[2] = {0, 3};
  lm_tensor *z, *i, *v = NULL, *ix = NULL;
  CHECK_OK(lm_empty(ctx, LM_F32, 2, shape, &z));
  CHECK_OK(lm_arange(ctx, 0, 1, 5, LM_I32, &i));
  lm_mem_stats before, after;
  lm_mem_get_stats(ctx, &before);
  int32_t dims[2] = {0, 0};
  CHECK(lm_reduce(ctx, LM_OP_MAX, z, 0, NULL, 0, 0, &v, NULL) == LM_E_SHAPE);
  CHECK(strcmp(lm_ctx_errmsg(ctx), "max: cannot reduce over an empty dimension (input shape 0x3)") == 0);
  CHECK(lm_reduce(ctx, LM_OP_MEAN, i, 0, NULL, 0, 0, &v, NULL) == LM_E_DTYPE);
  CHECK(lm_reduce(ctx, LM_OP_SUM, z, 2, dims, 0, 0, &v, NULL) == LM_E_ARG);
  dims[0] = 2;
  CHECK(lm_reduce(ctx, LM_OP_SUM, z, 1, dims, 0, 0, &v, NULL) == LM_E_INDEX);
  CHECK(lm_reduce(ctx, LM_OP_MIN, z, 0, NULL, 0, 0, &v, &ix) == LM_E_ARG);
  CHECK(lm_cumsum(ctx, i, 1, &v) == LM_E_INDEX);
  CHECK(v == NULL && ix == NULL);
  lm_mem_get_stats(ctx, &after);
  CHECK(after.live_bytes == before.live_bytes);
  /* the empty dims themselves: sum 0, prod 1 */
  dims[0] = 0;
  CHECK_OK(lm_reduce(ctx, LM_OP_PROD, z, 1, dims, 0, 0, &v, NULL));
  CHECK(item(v) == 1);
  lm_tensor_release(v);
  lm_tensor_release(z);
  lm_tensor_release(i);
  lm_ctx_free(ctx);
}

LM_TEST(cumsum_of_ints_is_i64) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_tensor *x, *c;
  CHECK_OK(lm_arange(ctx, 1, 1, 5, LM_U8, &x));
  CHECK_OK(lm_cumsum(ctx, x, -1, &c));
  lm_tensor_info i;
  lm_tensor_get_info(c, &i);
  CHECK(i.dtype == LM_I64 && ((int64_t *)i.data)[4] == 15);
  lm_tensor_release(c);
  lm_tensor_release(x);
  lm_ctx_free(ctx);
}
