/* test_rng.c - Philox4x32-10 known answers (Random123's kat_vectors) and the
   counter-based draws through the C API. */
#include "test.h"
#include <string.h>

/* Exported by src/core/rng.c for these tests; not part of lumen.h. */
void lm_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

LM_TEST(philox_known_answers) {
  static const uint32_t kat[3][10] = {
    /* counter (4 words), key (2 words), expected output (4 words) */
    {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
    {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
     0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
    {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
     0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
  };
  for (int k = 0; k < 3; k++) {
    uint32_t out[4];
    lm_philox4x32_10(kat[k], kat[k] + 4, out);
    for (int j = 0; j < 4; j++) CHECK(out[j] == kat[k][6 + j]);
  }
}

/* Seed 0, offset 0: element 0 of a draw is built from the words of the
   first known answer (counter 0, key 0). */
LM_TEST(rng_draws_use_counter_offset_plus_i) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  lm_seed(ctx, 0);
  int64_t n = 3;
  lm_tensor *t;
  CHECK_OK(lm_empty(ctx, LM_F64, 1, &n, &t));
  CHECK_OK(lm_uniform_(ctx, t, 0, 1));
  lm_tensor_info i;
  lm_tensor_get_info(t, &i);
  uint64_t bits = ((uint64_t)0xe169c58d << 32) | 0x6627e8d5;
  CHECK(((double *)i.data)[0] == (double)(bits >> 11) * 0x1.0p-53);
  uint64_t seed, off;
  lm_rng_get_state(ctx, &seed, &off);
  CHECK(seed == 0 && off == 3);
  /* element 2 of a draw at offset 0 equals element 0 of a draw at offset 2 */
  double third = ((double *)i.data)[2];
  lm_rng_set_state(ctx, 0, 2);
  CHECK_OK(lm_uniform_(ctx, t, 0, 1));
  CHECK(((double *)i.data)[0] == third);
  lm_tensor_release(t);
  lm_ctx_free(ctx);
}

LM_TEST(rng_bad_arguments) {
  lm_ctx *ctx;
  CHECK_OK(lm_ctx_new(&ctx));
  int64_t n = 4;
  lm_tensor *t, *r = NULL;
  CHECK_OK(lm_empty(ctx, LM_I32, 1, &n, &t));
  CHECK(lm_uniform_(ctx, t, 0, 1) == LM_E_DTYPE);
  CHECK(strstr(lm_ctx_errmsg(ctx), "i32") != NULL);
  CHECK(lm_randint_(ctx, t, 3, 3) == LM_E_ARG);
  CHECK(lm_randperm(ctx, -1, LM_I64, &r) == LM_E_ARG);
  CHECK(lm_uniform_(ctx, NULL, 0, 1) == LM_E_ARG);
  CHECK(r == NULL);
  lm_tensor_release(t);
  lm_ctx_free(ctx);
}
