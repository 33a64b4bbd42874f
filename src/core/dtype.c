/* dtype.c - element sizes, names, promotion and conversion between dtypes. */
#include "internal.h"
#include <math.h>

static const int32_t sizes[LM_NDTYPES] = {4, 8, 4, 8, 1, 1};
static const char *const names[LM_NDTYPES] = {"f32", "f64", "i32", "i64", "u8", "bool"};
/* promotion rank: bool < u8 < i32 < i64 < f32 < f64 (as PyTorch) */
static const int rank[LM_NDTYPES] = {4, 5, 2, 3, 1, 0};

bool lm_dtype_valid(int32_t d) { return d >= 0 && d < LM_NDTYPES; }
int32_t lm_dtype_size(int32_t d) { return lm_dtype_valid(d) ? sizes[d] : 0; }
const char *lm_dtype_name(int32_t d) { return lm_dtype_valid(d) ? names[d] : "invalid-dtype"; }

int32_t lm_dtype_promote(int32_t a, int32_t b) {
  if (!lm_dtype_valid(a) || !lm_dtype_valid(b)) return -1;
  return rank[a] >= rank[b] ? a : b;
}

/* Element types per dtype, in enum order, for the X-macro below. */
typedef unsigned char lm_bool_t;
#define LM_FOR_EACH_DTYPE(X) \
  X(LM_F32, float) X(LM_F64, double) X(LM_I32, int32_t) X(LM_I64, int64_t) \
  X(LM_U8, uint8_t) X(LM_BOOL, lm_bool_t)

/* Conversions follow C, except that anything becomes bool as (v != 0) and
   float to integer is undefined past the range, as in PyTorch. */
#define CONVERT(TD, v) ((TD)(v))
#define CAST_LOOP(DT, TD, ST)                                              \
  for (int64_t i = 0; i < n; i++) {                                        \
    ST v = *(const ST *)(src + i * ss);                                    \
    *(TD *)(dst + i * ds) = (DT == LM_BOOL) ? (TD)(v != 0) : CONVERT(TD, v); \
  }

#define INNER(SD, ST)                                                        \
  case SD:                                                                   \
    switch (dst_dtype) {                                                     \
    case LM_F32: CAST_LOOP(LM_F32, float, ST) break;                         \
    case LM_F64: CAST_LOOP(LM_F64, double, ST) break;                        \
    case LM_I32: CAST_LOOP(LM_I32, int32_t, ST) break;                       \
    case LM_I64: CAST_LOOP(LM_I64, int64_t, ST) break;                       \
    case LM_U8: CAST_LOOP(LM_U8, uint8_t, ST) break;                         \
    case LM_BOOL: CAST_LOOP(LM_BOOL, lm_bool_t, ST) break;                   \
    }                                                                        \
    break;

void lm_cast_strided(int32_t dst_dtype, char *dst, int64_t ds, int32_t src_dtype, const char *src, int64_t ss, int64_t n) {
  switch (src_dtype) { LM_FOR_EACH_DTYPE(INNER) }
}

double lm_read_as_double(int32_t dtype, const char *p) {
  double v = 0;
  lm_cast_strided(LM_F64, (char *)&v, 8, dtype, p, 0, 1);
  return v;
}

void lm_write_from_double(int32_t dtype, char *p, double v) {
  lm_cast_strided(dtype, p, 0, LM_F64, (const char *)&v, 0, 1);
}

lm_status lm_cast_if_needed(lm_ctx *ctx, const lm_tensor *t, int32_t dtype, lm_tensor **out) {
  if (t->dtype == dtype) {
    lm_tensor_retain((lm_tensor *)t);
    *out = (lm_tensor *)t;
    return LM_OK;
  }
  return lm_to_dtype(ctx, t, dtype, out);
}
