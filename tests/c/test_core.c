/* test_core.c - the context, views and the allocator through the C API. */
#include "test.h"
#include <string.h>

LM_TEST(view_of_transposed_needs_copy) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  int64_t shape[2] = {2, 3};
  lm_tensor *a, *t, *v;
  CHECK_OK(lm_empty(ctx, LM_F32, 2, shape, &a));
  CHECK_OK(lm_transpose(ctx, a, 0, 1, &t));
  int64_t flat = 6;
  CHECK(lm_view(ctx, t, 1, &flat, &v) == LM_E_SHAPE);
  CHECK(strstr(lm_ctx_errmsg(ctx), "view") != NULL);
  /* splitting a dim of a transposed view is fine without a copy */
  int64_t split[3] = {3, 2, 1};
  CHECK_OK(lm_view(ctx, t, 3, split, &v));
  lm_tensor_info i;
  lm_tensor_get_info(v, &i);
  CHECK(i.stride[0] == 1 && i.stride[1] == 3);
  lm_tensor_release(v);
  lm_tensor_release(t);
  lm_tensor_release(a);
  lm_ctx_free(ctx);
}

LM_TEST(allocator_reuses_blocks) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_mem_stats before, after;
  int64_t n = 1 << 18;
  lm_tensor *a;
  CHECK_OK(lm_empty(ctx, LM_F32, 1, &n, &a));
  lm_tensor_release(a);
  lm_mem_get_stats(ctx, &before);
  CHECK(before.cached_bytes >= n * 4);
  CHECK_OK(lm_empty(ctx, LM_F32, 1, &n, &a));
  lm_mem_get_stats(ctx, &after);
  CHECK(after.cached_bytes == before.cached_bytes - n * 4);
  CHECK(after.live_bytes == before.live_bytes + n * 4);
  lm_tensor_release(a);
  lm_mem_empty_cache(ctx);
  lm_mem_get_stats(ctx, &after);
  CHECK(after.cached_bytes == 0);
  lm_ctx_free(ctx);
}

LM_TEST(bad_arguments_return_errors) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  int64_t shape[2] = {2, -3};
  lm_tensor *a;
  CHECK(lm_empty(ctx, LM_F32, 2, shape, &a) == LM_E_SHAPE);
  CHECK(lm_empty(ctx, 99, 1, shape, &a) == LM_E_DTYPE);
  shape[1] = 3;
  CHECK_OK(lm_empty(ctx, LM_F32, 2, shape, &a));
  lm_tensor *s;
  CHECK(lm_select(ctx, a, 0, 2, &s) == LM_E_INDEX);
  CHECK(lm_select(ctx, a, 5, 0, &s) == LM_E_INDEX);
  int64_t big[2] = {2, 4};
  CHECK(lm_expand(ctx, a, 2, big, &s) == LM_E_SHAPE);
  int64_t strides[2] = {3, 1};
  CHECK(lm_as_strided(ctx, a, 2, big, strides, 0, &s) == LM_E_INDEX);
  lm_tensor_release(a);
  lm_ctx_free(ctx);
}

LM_TEST(op_names_cover_the_enum) {
  CHECK(strcmp(lm_op_name(LM_OP_NEG), "neg") == 0);
  CHECK(strcmp(lm_op_name(LM_OP_RANDPERM), "randperm") == 0);
  CHECK(strcmp(lm_op_name(LM_OP_COUNT), "unknown-op") == 0);
}
