/* elementwise.c - unary, binary, tensor-scalar, clamp and where, with
 * broadcasting.
 *
 * Semantics follow PyTorch:
 * - Unary result dtypes: exp, log, log1p, sqrt, rsqrt, sin, cos, sigmoid,
 *   tanh and reciprocal give f32 for integer and bool inputs (floats keep
 *   theirs); neg, abs, relu, floor, ceil, round and sign keep the dtype (bool
 *   is refused by neg, abs, relu, floor, ceil and round, as in torch);
 *   logical_not gives bool. round is half-to-even.
 * - Binary: the common dtype is lm_dtype_promote(a, b). div is true division
 *   (integers give f32); comparisons and logical ops give bool; add, mul,
 *   maximum and minimum on bool stay bool (or / and); sub refuses a bool
 *   operand and pow a bool common dtype. Integer arithmetic wraps. Integer pow with a negative exponent
 *   tensor gives 1 for base 1, +-1 for base -1 and 0 otherwise; a negative
 *   scalar exponent is an error. maximum / minimum propagate NaN.
 * - Scalars: a float tensor keeps its dtype; an integer tensor keeps its
 *   dtype with an integer-valued scalar and gives f32 otherwise; a bool
 *   tensor gives i64 with an integer-valued scalar and f32 otherwise. (Lua
 *   numbers cannot tell 2 from 2.0, so integer-valued means integer.)
 * - clamp uses the scalar rule with its bounds; integer bounds beyond the
 *   dtype's range saturate. lo > hi gives hi everywhere, NaN stays NaN.
 * - dst: the result is computed in the common dtype and converted on write;
 *   a result dtype torch would not cast to dst's dtype (float into an
 *   integer dst, non-bool into a bool dst) is an error. A dst whose memory
 *   overlaps an input with another layout gets the result through a
 *   temporary, so x.add_(x.t()) is right.
 *
 * Kernels take one contiguous-or-strided run of elements of a single
 * kernel dtype; ew_loop converts operands of other dtypes block by block
 * through small stack buffers, so mixed dtypes never need whole copies. */
#include "../core/internal.h"
#include <math.h>
#include <string.h>

typedef void (*un_fn)(char *o, int64_t os, const char *a, int64_t as, int64_t n, const void *param);
typedef void (*bin_fn)(char *o, int64_t os, const char *a, int64_t as, const char *b, int64_t bs, int64_t n);
typedef void (*where_fn)(char *o, int64_t os, const char *c, int64_t cs, const char *a, int64_t as,
                         const char *b, int64_t bs, int64_t n);

/* ---- exp and sigmoid for f32, eight lanes at a time ----
   over lm_v8_exp (internal.h), strided runs included; the same code serves
   both clones (AVX2 or two SSE halves). Only these kernels get LM_CLONES:
   the others are memory bound and fine with the baseline ISA. */
LM_INLINE lm_v8f v8_sigmoid(lm_v8f x) { return 1.0f / (1.0f + lm_v8_exp(-x)); }

/* A unary f32 kernel over lm_v8f; the tail goes through a padded vector. */
#define V8_KERNEL(NAME, VFN)                                                              \
  LM_CLONES static void NAME(char *o_, int64_t os, const char *a_, int64_t as, int64_t n, \
                             const void *param) {                                         \
    (void)param;                                                                          \
    int64_t i = 0;                                                                        \
    if (os == 4 && as == 4)                                                               \
      for (; i + 8 <= n; i += 8) {                                                        \
        lm_v8f v;                                                                         \
        memcpy(&v, a_ + i * 4, 32);                                                       \
        v = VFN(v);                                                                       \
        memcpy(o_ + i * 4, &v, 32);                                                       \
      }                                                                                   \
    for (; i < n; i += 8) {                                                               \
      int64_t m = n - i < 8 ? n - i : 8;                                                  \
      float buf[8] = {0};                                                                 \
      for (int64_t k = 0; k < m; k++) buf[k] = *(const float *)(a_ + (i + k) * as);       \
      lm_v8f v;                                                                           \
      memcpy(&v, buf, 32);                                                                \
      v = VFN(v);                                                                         \
      memcpy(buf, &v, 32);                                                                \
      for (int64_t k = 0; k < m; k++) *(float *)(o_ + (i + k) * os) = buf[k];             \
    }                                                                                     \
  }

V8_KERNEL(exp_f32, lm_v8_exp)
V8_KERNEL(sigmoid_f32, v8_sigmoid)

/* ---- kernel generators ----
   x (and y) are the input elements; EXPR is the output element. The first
   branches are the contiguous and scalar-broadcast runs the compiler
   vectorises; the last is the general strided loop. */
#define UN_KERNEL(ATTR, NAME, TI, TO, EXPR)                                               \
  ATTR static void NAME(char *o_, int64_t os, const char *a_, int64_t as, int64_t n,      \
                        const void *param) {                                              \
    (void)param;                                                                          \
    if (os == (int64_t)sizeof(TO) && as == (int64_t)sizeof(TI)) {                         \
      TO *o = (TO *)o_;                                                                   \
      const TI *a = (const TI *)a_;                                                       \
      LM_SIMD for (int64_t i = 0; i < n; i++) {                                           \
        TI x = a[i];                                                                      \
        o[i] = (TO)(EXPR);                                                                \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) {                                                   \
        TI x = *(const TI *)(a_ + i * as);                                                \
        *(TO *)(o_ + i * os) = (TO)(EXPR);                                                \
      }                                                                                   \
    }                                                                                     \
  }

#define BIN_KERNEL(NAME, T, TO, EXPR)                                                     \
  static void NAME(char *o_, int64_t os, const char *a_, int64_t as, const char *b_,      \
                   int64_t bs, int64_t n) {                                               \
    TO *o = (TO *)o_;                                                                     \
    const T *a = (const T *)a_, *b = (const T *)b_;                                       \
    const int64_t eo = sizeof(TO), ei = sizeof(T);                                        \
    if (os == eo && as == ei && bs == ei) {                                               \
      LM_SIMD for (int64_t i = 0; i < n; i++) {                                           \
        T x = a[i], y = b[i];                                                             \
        o[i] = (TO)(EXPR);                                                                \
      }                                                                                   \
    } else if (os == eo && as == ei && bs == 0) {                                         \
      const T y = b[0];                                                                   \
      LM_SIMD for (int64_t i = 0; i < n; i++) {                                           \
        T x = a[i];                                                                       \
        o[i] = (TO)(EXPR);                                                                \
      }                                                                                   \
    } else if (os == eo && as == 0 && bs == ei) {                                         \
      const T x = a[0];                                                                   \
      LM_SIMD for (int64_t i = 0; i < n; i++) {                                           \
        T y = b[i];                                                                       \
        o[i] = (TO)(EXPR);                                                                \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) {                                                   \
        T x = *(const T *)(a_ + i * as), y = *(const T *)(b_ + i * bs);                   \
        *(TO *)(o_ + i * os) = (TO)(EXPR);                                                \
      }                                                                                   \
    }                                                                                     \
  }

/* ---- unary kernels ---- */

/* float dtypes: SFX is the libm suffix (f for float) */
#define FLOAT_UNARY(T, NM, SFX, EXP_SIGMOID)                                                 \
  UN_KERNEL(, neg_##NM, T, T, -x)                                                         \
  UN_KERNEL(, abs_##NM, T, T, fabs##SFX(x))                                               \
  EXP_SIGMOID                                                                             \
  UN_KERNEL(, log_##NM, T, T, log##SFX(x))                                                \
  UN_KERNEL(, log1p_##NM, T, T, log1p##SFX(x))                                            \
  UN_KERNEL(, sqrt_##NM, T, T, sqrt##SFX(x))                                              \
  UN_KERNEL(, rsqrt_##NM, T, T, (T)1 / sqrt##SFX(x))                                      \
  UN_KERNEL(, sin_##NM, T, T, sin##SFX(x))                                                \
  UN_KERNEL(, cos_##NM, T, T, cos##SFX(x))                                                \
  UN_KERNEL(, tanh_##NM, T, T, tanh##SFX(x))                                              \
  UN_KERNEL(, relu_##NM, T, T, (x > 0 || x != x) ? x : (T)0)                              \
  UN_KERNEL(, floor_##NM, T, T, floor##SFX(x))                                            \
  UN_KERNEL(, ceil_##NM, T, T, ceil##SFX(x))                                              \
  UN_KERNEL(, round_##NM, T, T, nearbyint##SFX(x))                                        \
  UN_KERNEL(, sign_##NM, T, T, (T)((x > 0) - (x < 0)))                                    \
  UN_KERNEL(, recip_##NM, T, T, (T)1 / x)                                                 \
  UN_KERNEL(, lnot_##NM, T, uint8_t, x == 0)                                              \
  static un_fn unary_##NM(int32_t op) {                                                   \
    switch (op) {                                                                         \
    case LM_OP_NEG: return neg_##NM;                                                      \
    case LM_OP_ABS: return abs_##NM;                                                      \
    case LM_OP_EXP: return exp_##NM;                                                      \
    case LM_OP_LOG: return log_##NM;                                                      \
    case LM_OP_LOG1P: return log1p_##NM;                                                  \
    case LM_OP_SQRT: return sqrt_##NM;                                                    \
    case LM_OP_RSQRT: return rsqrt_##NM;                                                  \
    case LM_OP_SIN: return sin_##NM;                                                      \
    case LM_OP_COS: return cos_##NM;                                                      \
    case LM_OP_SIGMOID: return sigmoid_##NM;                                              \
    case LM_OP_TANH: return tanh_##NM;                                                    \
    case LM_OP_RELU: return relu_##NM;                                                    \
    case LM_OP_FLOOR: return floor_##NM;                                                  \
    case LM_OP_CEIL: return ceil_##NM;                                                    \
    case LM_OP_ROUND: return round_##NM;                                                  \
    case LM_OP_SIGN: return sign_##NM;                                                    \
    case LM_OP_RECIPROCAL: return recip_##NM;                                             \
    case LM_OP_LOGICAL_NOT: return lnot_##NM;                                             \
    }                                                                                     \
    return NULL;                                                                          \
  }

/* f32 exp and sigmoid are the vector kernels above */
FLOAT_UNARY(float, f32, f, )
FLOAT_UNARY(double, f64, , UN_KERNEL(, exp_f64, double, double, exp(x))
                               UN_KERNEL(, sigmoid_f64, double, double, 1 / (1 + exp(-x))))

/* signed integers: U is the unsigned twin, so negation wraps without UB */
#define INT_UNARY(T, U, NM)                                                               \
  UN_KERNEL(, neg_##NM, T, T, (T)(0 - (U)x))                                              \
  UN_KERNEL(, abs_##NM, T, T, x < 0 ? (T)(0 - (U)x) : x)                                  \
  UN_KERNEL(, relu_##NM, T, T, x > 0 ? x : 0)                                             \
  UN_KERNEL(, copy_##NM, T, T, x)                                                         \
  UN_KERNEL(, sign_##NM, T, T, (T)((x > 0) - (x < 0)))                                    \
  UN_KERNEL(, lnot_##NM, T, uint8_t, x == 0)                                              \
  static un_fn unary_##NM(int32_t op) {                                                   \
    switch (op) {                                                                         \
    case LM_OP_NEG: return neg_##NM;                                                      \
    case LM_OP_ABS: return abs_##NM;                                                      \
    case LM_OP_RELU: return relu_##NM;                                                    \
    case LM_OP_FLOOR: case LM_OP_CEIL: case LM_OP_ROUND: return copy_##NM;                \
    case LM_OP_SIGN: return sign_##NM;                                                    \
    case LM_OP_LOGICAL_NOT: return lnot_##NM;                                             \
    }                                                                                     \
    return NULL;                                                                          \
  }

INT_UNARY(int32_t, uint32_t, i32)
INT_UNARY(int64_t, uint64_t, i64)

/* u8 (and bool, read as u8): abs, floor, ceil, round are the identity */
UN_KERNEL(, neg_u8, uint8_t, uint8_t, 0 - x)
UN_KERNEL(, copy_u8, uint8_t, uint8_t, x)
UN_KERNEL(, sign_u8, uint8_t, uint8_t, x != 0)
UN_KERNEL(, lnot_u8, uint8_t, uint8_t, x == 0)
static un_fn unary_u8(int32_t op) {
  switch (op) {
  case LM_OP_NEG: return neg_u8;
  case LM_OP_ABS: case LM_OP_RELU: case LM_OP_FLOOR: case LM_OP_CEIL: case LM_OP_ROUND: return copy_u8;
  case LM_OP_SIGN: return sign_u8;
  case LM_OP_LOGICAL_NOT: return lnot_u8;
  }
  return NULL;
}

static un_fn unary_kernel(int32_t op, int32_t kd) {
  switch (kd) {
  case LM_F32: return unary_f32(op);
  case LM_F64: return unary_f64(op);
  case LM_I32: return unary_i32(op);
  case LM_I64: return unary_i64(op);
  case LM_U8: return unary_u8(op);
  }
  return NULL;
}

/* ---- clamp kernels: param points at {lo, hi} in the kernel dtype ---- */
#define CLAMP_KERNEL(T, NM)                                                               \
  static void clamp_##NM(char *o_, int64_t os, const char *a_, int64_t as, int64_t n,     \
                         const void *param) {                                             \
    const T lo = ((const T *)param)[0], hi = ((const T *)param)[1];                       \
    if (os == (int64_t)sizeof(T) && as == (int64_t)sizeof(T)) {                           \
      T *o = (T *)o_;                                                                     \
      const T *a = (const T *)a_;                                                         \
      LM_SIMD for (int64_t i = 0; i < n; i++) {                                           \
        T y = a[i] < lo ? lo : a[i];                                                      \
        o[i] = y > hi ? hi : y;                                                           \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) {                                                   \
        T x = *(const T *)(a_ + i * as);                                                  \
        T y = x < lo ? lo : x;                                                            \
        *(T *)(o_ + i * os) = y > hi ? hi : y;                                            \
      }                                                                                   \
    }                                                                                     \
  }
CLAMP_KERNEL(float, f32)
CLAMP_KERNEL(double, f64)
CLAMP_KERNEL(int32_t, i32)
CLAMP_KERNEL(int64_t, i64)
CLAMP_KERNEL(uint8_t, u8)

/* ---- binary kernels ---- */

/* x ** y for integers by squaring, wrapping like torch; negative exponents
   follow torch's integer rules. */
#define INT_POW(T, U, NM)                                                                 \
  static inline T ipow_##NM(T x, T y) {                                                   \
    if (y < 0) {                                                                          \
      if (x == 1) return 1;                                                               \
      if (x == -1) return (y & 1) ? (T)-1 : (T)1;                                         \
      return 0;                                                                           \
    }                                                                                     \
    U r = 1, b = (U)x;                                                                    \
    for (U e = (U)y; e; e >>= 1) {                                                        \
      if (e & 1) r *= b;                                                                  \
      b *= b;                                                                             \
    }                                                                                     \
    return (T)r;                                                                          \
  }
INT_POW(int32_t, uint32_t, i32)
INT_POW(int64_t, uint64_t, i64)
static inline uint8_t ipow_u8(uint8_t x, uint8_t y) {
  unsigned r = 1, b = x;
  for (unsigned e = y; e; e >>= 1) {
    if (e & 1) r = (r * b) & 0xff;
    b = (b * b) & 0xff;
  }
  return (uint8_t)r;
}

/* Comparisons and logical ops, the same for every dtype. */
#define CMP_LOGIC(T, NM)                                                                  \
  BIN_KERNEL(eq_##NM, T, uint8_t, x == y)                                                 \
  BIN_KERNEL(ne_##NM, T, uint8_t, x != y)                                                 \
  BIN_KERNEL(lt_##NM, T, uint8_t, x < y)                                                  \
  BIN_KERNEL(le_##NM, T, uint8_t, x <= y)                                                 \
  BIN_KERNEL(gt_##NM, T, uint8_t, x > y)                                                  \
  BIN_KERNEL(ge_##NM, T, uint8_t, x >= y)                                                 \
  BIN_KERNEL(and_##NM, T, uint8_t, (x != 0) & (y != 0))                                   \
  BIN_KERNEL(or_##NM, T, uint8_t, (x != 0) | (y != 0))                                    \
  BIN_KERNEL(xor_##NM, T, uint8_t, (x != 0) ^ (y != 0))

#define CMP_CASES(NM)                                                                     \
  case LM_OP_EQ: return eq_##NM;                                                          \
  case LM_OP_NE: return ne_##NM;                                                          \
  case LM_OP_LT: return lt_##NM;                                                          \
  case LM_OP_LE: return le_##NM;                                                          \
  case LM_OP_GT: return gt_##NM;                                                          \
  case LM_OP_GE: return ge_##NM;                                                          \
  case LM_OP_LOGICAL_AND: return and_##NM;                                                \
  case LM_OP_LOGICAL_OR: return or_##NM;                                                  \
  case LM_OP_LOGICAL_XOR: return xor_##NM;

/* The kernel for each binary op code; integer division is true division
   and goes through f32, so integer tables have no DIV_CASE. */
#define BINARY_TABLE(NM, DIV_CASE)                                                        \
  static bin_fn binary_##NM(int32_t op) {                                                 \
    switch (op) {                                                                         \
    case LM_OP_ADD: return add_##NM;                                                      \
    case LM_OP_SUB: return sub_##NM;                                                      \
    case LM_OP_MUL: return mul_##NM;                                                      \
    DIV_CASE                                                                              \
    case LM_OP_POW: return pow_##NM;                                                      \
    case LM_OP_MAXIMUM: return max_##NM;                                                  \
    case LM_OP_MINIMUM: return min_##NM;                                                  \
      CMP_CASES(NM)                                                                       \
    }                                                                                     \
    return NULL;                                                                          \
  }

#define FLOAT_BINARY(T, NM, SFX)                                                          \
  BIN_KERNEL(add_##NM, T, T, x + y)                                                       \
  BIN_KERNEL(sub_##NM, T, T, x - y)                                                       \
  BIN_KERNEL(mul_##NM, T, T, x * y)                                                       \
  BIN_KERNEL(div_##NM, T, T, x / y)                                                       \
  BIN_KERNEL(pow_##NM, T, T, pow##SFX(x, y))                                              \
  BIN_KERNEL(max_##NM, T, T, (x > y || x != x) ? x : y)                                   \
  BIN_KERNEL(min_##NM, T, T, (x < y || x != x) ? x : y)                                   \
  CMP_LOGIC(T, NM)                                                                        \
  BINARY_TABLE(NM, case LM_OP_DIV: return div_##NM;)

FLOAT_BINARY(float, f32, f)
FLOAT_BINARY(double, f64, )

/* integers: arithmetic through the unsigned twin U wraps without UB */
#define INT_BINARY(T, U, NM)                                                              \
  BIN_KERNEL(add_##NM, T, T, (U)x + (U)y)                                                 \
  BIN_KERNEL(sub_##NM, T, T, (U)x - (U)y)                                                 \
  BIN_KERNEL(mul_##NM, T, T, (U)x * (U)y)                                                 \
  BIN_KERNEL(pow_##NM, T, T, ipow_##NM(x, y))                                             \
  BIN_KERNEL(max_##NM, T, T, x > y ? x : y)                                               \
  BIN_KERNEL(min_##NM, T, T, x < y ? x : y)                                               \
  CMP_LOGIC(T, NM)                                                                        \
  BINARY_TABLE(NM, )

INT_BINARY(int32_t, uint32_t, i32)
INT_BINARY(int64_t, uint64_t, i64)
INT_BINARY(uint8_t, uint32_t, u8)

static bin_fn binary_kernel(int32_t op, int32_t kd) {
  switch (kd) {
  case LM_F32: return binary_f32(op);
  case LM_F64: return binary_f64(op);
  case LM_I32: return binary_i32(op);
  case LM_I64: return binary_i64(op);
  case LM_U8: return binary_u8(op);
  }
  return NULL;
}

/* ---- where: a bitwise select by element size ---- */
#define WHERE_KERNEL(T, NM)                                                               \
  static void where_##NM(char *o_, int64_t os, const char *c_, int64_t cs, const char *a_, \
                         int64_t as, const char *b_, int64_t bs, int64_t n) {             \
    const int64_t e = sizeof(T);                                                          \
    if (os == e && cs == 1 && as == e && bs == e) {                                       \
      T *o = (T *)o_;                                                                     \
      const T *a = (const T *)a_, *b = (const T *)b_;                                     \
      const uint8_t *c = (const uint8_t *)c_;                                             \
      LM_SIMD for (int64_t i = 0; i < n; i++) o[i] = c[i] ? a[i] : b[i];                  \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++)                                                     \
        *(T *)(o_ + i * os) = c_[i * cs] ? *(const T *)(a_ + i * as) : *(const T *)(b_ + i * bs); \
    }                                                                                     \
  }
WHERE_KERNEL(uint8_t, 1)
WHERE_KERNEL(uint32_t, 4)
WHERE_KERNEL(uint64_t, 8)

/* ---- the driver: broadcasting, dtype conversion, dst, aliasing ---- */

typedef struct ew_plan {
  int32_t nin;
  int32_t in_dtype[3]; /* the operands' dtypes */
  int32_t kin[3];      /* the dtype the kernel reads for each input */
  int32_t kout;        /* the dtype the kernel writes */
  int32_t out_dtype;   /* the destination's dtype */
  un_fn un;
  bin_fn bin;
  where_fn wh;
  const void *param;
} ew_plan;

/* bool data reads fine as u8 (0 / 1); the other way needs normalising */
static bool reads_as(int32_t have, int32_t want) {
  return have == want || (have == LM_BOOL && want == LM_U8);
}

static void call_kernel(const ew_plan *p, char *o, int64_t os, char **in, const int64_t *is, int64_t n) {
  if (p->nin == 1) p->un(o, os, in[0], is[0], n, p->param);
  else if (p->nin == 2) p->bin(o, os, in[0], is[0], in[1], is[1], n);
  else p->wh(o, os, in[0], is[0], in[1], is[1], in[2], is[2], n);
}

#define BLOCK 256

/* ptrs[0] is the output, ptrs[1..nin] the inputs (byte strides in s). */
static void ew_loop(char **ptrs, const int64_t *s, int64_t n, void *arg) {
  const ew_plan *p = arg;
  bool convert = p->kout != p->out_dtype;
  for (int32_t k = 0; k < p->nin; k++) convert |= !reads_as(p->in_dtype[k], p->kin[k]);
  if (!convert) {
    call_kernel(p, ptrs[0], s[0], ptrs + 1, s + 1, n);
    return;
  }
  _Alignas(64) char ibuf[3][BLOCK * 8];
  _Alignas(64) char obuf[BLOCK * 8];
  int32_t osz = lm_dtype_size(p->kout);
  for (int64_t start = 0; start < n; start += BLOCK) {
    int64_t m = n - start < BLOCK ? n - start : BLOCK;
    char *in[3];
    int64_t is[3];
    for (int32_t k = 0; k < p->nin; k++) {
      char *src = ptrs[k + 1] + start * s[k + 1];
      if (reads_as(p->in_dtype[k], p->kin[k])) {
        in[k] = src;
        is[k] = s[k + 1];
      } else if (s[k + 1] == 0) { /* a broadcast value: convert it once */
        lm_cast_strided(p->kin[k], ibuf[k], 0, p->in_dtype[k], src, 0, 1);
        in[k] = ibuf[k];
        is[k] = 0;
      } else {
        int32_t ksz = lm_dtype_size(p->kin[k]);
        lm_cast_strided(p->kin[k], ibuf[k], ksz, p->in_dtype[k], src, s[k + 1], m);
        in[k] = ibuf[k];
        is[k] = ksz;
      }
    }
    char *dst = ptrs[0] + start * s[0];
    if (p->kout == p->out_dtype) {
      call_kernel(p, dst, s[0], in, is, m);
    } else {
      call_kernel(p, obuf, osz, in, is, m);
      lm_cast_strided(p->out_dtype, dst, s[0], p->kout, obuf, osz, m);
    }
  }
}

/* torch's can_cast: no float into integers, nothing but bool into bool */
static bool can_cast(int32_t from, int32_t to) {
  if (lm_dtype_is_float(from) && !lm_dtype_is_float(to)) return false;
  if (from != LM_BOOL && to == LM_BOOL) return false;
  return true;
}

/* Runs plan over inputs ins[0..nin) broadcast together; the result has
   dtype rd (or goes into dst). */
static lm_status ew_run(lm_ctx *ctx, const char *op, ew_plan *plan, const lm_tensor *const *ins,
                        int32_t rd, lm_tensor *dst, lm_tensor **out) {
  int32_t nd = ins[0]->ndim;
  int64_t shape[LM_MAX_DIMS];
  memcpy(shape, ins[0]->shape, nd * sizeof *shape);
  for (int32_t k = 1; k < plan->nin; k++) {
    int64_t prev[LM_MAX_DIMS];
    memcpy(prev, shape, sizeof prev);
    lm_status st = lm_broadcast_shape(ctx, op, nd, prev, ins[k]->ndim, ins[k]->shape, &nd, shape);
    if (st) return st;
  }
  lm_tensor *res = NULL, *tmp = NULL;
  lm_status st = LM_OK;
  if (dst) {
    if (!can_cast(rd, dst->dtype))
      return lm_err(ctx, LM_E_DTYPE, "%s: result type %s can't be cast to the destination dtype %s", op,
                    lm_dtype_name(rd), lm_dtype_name(dst->dtype));
    st = lm_prepare_out(ctx, op, dst, rd, nd, shape, &res);
    if (st) return st;
    if ((st = lm_check_writable(ctx, op, dst))) goto done;
    bool alias = false;
    for (int32_t k = 0; k < plan->nin && !alias; k++) alias = lm_needs_temp(dst, ins[k], nd, shape);
    if (alias) {
      st = lm_new(ctx, op, dst->dtype, nd, shape, &tmp);
      if (st) goto done;
    }
  } else {
    st = lm_new(ctx, op, rd, nd, shape, &res);
    if (st) return st;
  }
  lm_tensor *target = tmp ? tmp : res;
  plan->out_dtype = target->dtype;
  for (int32_t k = 0; k < plan->nin; k++) plan->in_dtype[k] = ins[k]->dtype;
  lm_operand ops[4];
  ops[0] = lm_operand_of(target, nd, shape);
  for (int32_t k = 0; k < plan->nin; k++) ops[k + 1] = lm_operand_of(ins[k], nd, shape);
  lm_foreach(ctx, nd, shape, plan->nin + 1, ops, ew_loop, plan, true);
  if (tmp) st = lm_copy_(ctx, res, tmp);
done:
  if (tmp) lm_tensor_release(tmp);
  if (st) {
    lm_tensor_release(res);
    return st;
  }
  return lm_finish_out(res, out);
}

static const char *op_label(int32_t op) {
  const char *s = lm_op_name(op);
  return s ? s : "elementwise";
}

/* ---- unary ---- */

static bool float_valued(int32_t op) {
  switch (op) {
  case LM_OP_EXP: case LM_OP_LOG: case LM_OP_LOG1P: case LM_OP_SQRT: case LM_OP_RSQRT:
  case LM_OP_SIN: case LM_OP_COS: case LM_OP_SIGMOID: case LM_OP_TANH: case LM_OP_RECIPROCAL:
    return true;
  }
  return false;
}

static lm_status unary_forward(lm_ctx *ctx, int32_t op, const lm_tensor *x, lm_tensor *dst, lm_tensor **out) {
  if (op < LM_OP_NEG || op > LM_OP_LOGICAL_NOT) return lm_err(ctx, LM_E_ARG, "unary: op %d is not a unary elementwise op", op);
  const char *name = op_label(op);
  lm_status cs;
  if ((cs = lm_check_input(ctx, name, x, "input")) ||
      (dst && (cs = lm_check_input(ctx, name, dst, "destination"))))
    return cs;
  if (!dst && !out) return lm_err(ctx, LM_E_ARG, "%s: neither dst nor out given", name);
  int32_t xd = x->dtype, kd, rd, kout;
  if (float_valued(op)) {
    kd = rd = kout = lm_dtype_is_float(xd) ? xd : LM_F32;
  } else if (op == LM_OP_LOGICAL_NOT) {
    kd = xd == LM_BOOL ? LM_U8 : xd;
    rd = kout = LM_BOOL;
  } else {
    if (xd == LM_BOOL && op == LM_OP_NEG)
      return lm_err(ctx, LM_E_DTYPE, "neg: negation of a bool tensor is not supported (use logical_not)");
    if (xd == LM_BOOL && op != LM_OP_SIGN)
      return lm_err(ctx, LM_E_DTYPE, "%s: not supported for bool tensors", name);
    kd = kout = xd == LM_BOOL ? LM_U8 : xd;
    rd = xd;
  }
  ew_plan p = {.nin = 1, .kin = {kd}, .kout = kout};
  p.un = unary_kernel(op, kd);
  if (!p.un) return lm_err(ctx, LM_E_DTYPE, "%s: not supported for dtype %s", name, lm_dtype_name(xd));
  return ew_run(ctx, name, &p, &x, rd, dst, out);
}

/* ---- binary ---- */

static bool is_compare(int32_t op) { return op >= LM_OP_EQ && op <= LM_OP_LOGICAL_XOR; }

/* Kernel and result dtypes for op on common dtype cd. */
static lm_status binary_plan(lm_ctx *ctx, const char *name, int32_t op, int32_t cd, ew_plan *p, int32_t *rd) {
  if (cd == LM_BOOL && op == LM_OP_POW) return lm_err(ctx, LM_E_DTYPE, "pow: not supported for bool tensors");
  int32_t kd;
  if (op == LM_OP_DIV) {
    kd = *rd = lm_dtype_is_float(cd) ? cd : LM_F32;
    p->kout = kd;
  } else if (is_compare(op)) {
    kd = cd == LM_BOOL ? LM_U8 : cd;
    *rd = p->kout = LM_BOOL;
  } else {
    kd = p->kout = cd == LM_BOOL ? LM_U8 : cd; /* u8 results become bool as (v != 0) */
    *rd = cd;
  }
  p->nin = 2;
  p->kin[0] = p->kin[1] = kd;
  p->bin = binary_kernel(op, kd);
  if (!p->bin) return lm_err(ctx, LM_E_DTYPE, "%s: not supported for dtype %s", name, lm_dtype_name(cd));
  return LM_OK;
}

/* torch refuses sub with a bool operand on either side */
static lm_status bool_sub_error(lm_ctx *ctx) {
  return lm_err(ctx, LM_E_DTYPE, "sub: subtraction with a bool tensor is not supported (use logical_xor or logical_not)");
}

static lm_status check_binary_op(lm_ctx *ctx, int32_t op) {
  if (op < LM_OP_ADD || op > LM_OP_LOGICAL_XOR)
    return lm_err(ctx, LM_E_ARG, "binary: op %d is not a binary elementwise op", op);
  return LM_OK;
}

static lm_status binary_forward(lm_ctx *ctx, int32_t op, const lm_tensor *a, const lm_tensor *b, lm_tensor *dst, lm_tensor **out) {
  lm_status st = check_binary_op(ctx, op);
  if (st) return st;
  const char *name = op_label(op);
  lm_status cs;
  if ((cs = lm_check_input(ctx, name, a, "first input")) ||
      (cs = lm_check_input(ctx, name, b, "second input")) ||
      (dst && (cs = lm_check_input(ctx, name, dst, "destination"))))
    return cs;
  if (!dst && !out) return lm_err(ctx, LM_E_ARG, "%s: neither dst nor out given", name);
  if (op == LM_OP_SUB && (a->dtype == LM_BOOL || b->dtype == LM_BOOL)) return bool_sub_error(ctx);
  ew_plan p = {0};
  int32_t rd;
  st = binary_plan(ctx, name, op, lm_dtype_promote(a->dtype, b->dtype), &p, &rd);
  if (st) return st;
  const lm_tensor *ins[2] = {a, b};
  return ew_run(ctx, name, &p, ins, rd, dst, out);
}

/* Whether s counts as an integer scalar (and fits an i64). */
static bool integral(double s) { return isfinite(s) && s == floor(s) && fabs(s) < 9.2e18; }

/* The dtype of (tensor of dtype td) op (number s), as torch types it. */
static int32_t scalar_common(int32_t td, double s) {
  if (lm_dtype_is_float(td)) return td;
  if (td == LM_BOOL) return integral(s) ? LM_I64 : LM_F32;
  return integral(s) ? td : LM_F32;
}

/* A 0-d tensor holding s: i64 when integral, so integer results wrap the
   way torch's do, else f64. */
static lm_status scalar_tensor(lm_ctx *ctx, const char *op, double s, lm_tensor **out) {
  bool in = integral(s);
  lm_status st = lm_new(ctx, op, in ? LM_I64 : LM_F64, 0, NULL, out);
  if (st) return st;
  if (in) *(int64_t *)lm_data(*out) = (int64_t)s;
  else *(double *)lm_data(*out) = s;
  return LM_OK;
}

static lm_status scalar_forward(lm_ctx *ctx, int32_t op, const lm_tensor *a, double s, int32_t scalar_first, lm_tensor *dst, lm_tensor **out) {
  lm_status st = check_binary_op(ctx, op);
  if (st) return st;
  const char *name = op_label(op);
  lm_status cs;
  if ((cs = lm_check_input(ctx, name, a, "input")) ||
      (dst && (cs = lm_check_input(ctx, name, dst, "destination"))))
    return cs;
  if (!dst && !out) return lm_err(ctx, LM_E_ARG, "%s: neither dst nor out given", name);
  if (op == LM_OP_SUB && a->dtype == LM_BOOL) return bool_sub_error(ctx);
  int32_t cd = scalar_common(a->dtype, s);
  if (op == LM_OP_POW && !scalar_first && !lm_dtype_is_float(cd) && s < 0)
    return lm_err(ctx, LM_E_ARG, "pow: integers to negative integer powers are not allowed (%s tensor ** %g)",
                  lm_dtype_name(a->dtype), s);
  ew_plan p = {0};
  int32_t rd;
  st = binary_plan(ctx, name, op, cd, &p, &rd);
  if (st) return st;
  lm_tensor *sc;
  st = scalar_tensor(ctx, name, s, &sc);
  if (st) return st;
  const lm_tensor *ins[2] = {a, sc};
  if (scalar_first) {
    ins[0] = sc;
    ins[1] = a;
  }
  st = ew_run(ctx, name, &p, ins, rd, dst, out);
  lm_tensor_release(sc);
  return st;
}

/* ---- clamp ---- */

/* v as an integer bound in [lo, hi] (saturating; infinities too). */
static int64_t sat_bound(double v, double lo, double hi) {
  if (v <= lo) return (int64_t)lo;
  if (v >= hi) return hi >= 9.2e18 ? INT64_MAX : (int64_t)hi;
  return (int64_t)v;
}

static lm_status clamp_forward(lm_ctx *ctx, const lm_tensor *x, double lo, double hi, lm_tensor *dst, lm_tensor **out) {
  lm_status cs;
  if ((cs = lm_check_input(ctx, "clamp", x, "input")) ||
      (dst && (cs = lm_check_input(ctx, "clamp", dst, "destination"))))
    return cs;
  if (!dst && !out) return lm_err(ctx, LM_E_ARG, "clamp: neither dst nor out given");
  /* the scalar rule over both bounds; an open (infinite) side does not count */
  int32_t rd = x->dtype;
  bool nonint = false;
  if (isnan(lo) || isnan(hi)) {
    if (!lm_dtype_is_float(rd)) return lm_err(ctx, LM_E_ARG, "clamp: a NaN bound on a %s tensor", lm_dtype_name(rd));
  }
  if (isfinite(lo) && !integral(lo)) nonint = true;
  if (isfinite(hi) && !integral(hi)) nonint = true;
  if (!lm_dtype_is_float(rd) && nonint) rd = LM_F32;
  else if (rd == LM_BOOL) rd = LM_I64;
  union { float f[2]; double d[2]; int32_t i[2]; int64_t l[2]; uint8_t u[2]; } b;
  ew_plan p = {.nin = 1, .kin = {rd}, .kout = rd, .param = &b};
  switch (rd) {
  case LM_F32: b.f[0] = (float)lo; b.f[1] = (float)hi; p.un = clamp_f32; break;
  case LM_F64: b.d[0] = lo; b.d[1] = hi; p.un = clamp_f64; break;
  case LM_I32: b.i[0] = (int32_t)sat_bound(lo, INT32_MIN, INT32_MAX); b.i[1] = (int32_t)sat_bound(hi, INT32_MIN, INT32_MAX); p.un = clamp_i32; break;
  case LM_I64: b.l[0] = sat_bound(lo, -9.2233720368547758e18, 9.2233720368547758e18); b.l[1] = sat_bound(hi, -9.2233720368547758e18, 9.2233720368547758e18); p.un = clamp_i64; break;
  case LM_U8: b.u[0] = (uint8_t)sat_bound(lo, 0, 255); b.u[1] = (uint8_t)sat_bound(hi, 0, 255); p.un = clamp_u8; break;
  default: return lm_err(ctx, LM_E_DTYPE, "clamp: not supported for dtype %s", lm_dtype_name(rd));
  }
  return ew_run(ctx, "clamp", &p, &x, rd, dst, out);
}

/* ---- where ---- */

static lm_status where_forward(lm_ctx *ctx, const lm_tensor *cond, const lm_tensor *a, const lm_tensor *b, lm_tensor **out) {
  lm_status cs;
  if ((cs = lm_check_input(ctx, "where", cond, "condition")) ||
      (cs = lm_check_input(ctx, "where", a, "first input")) ||
      (cs = lm_check_input(ctx, "where", b, "second input")))
    return cs;
  if (!out) return lm_err(ctx, LM_E_ARG, "where: out is NULL");
  if (cond->dtype != LM_BOOL && cond->dtype != LM_U8)
    return lm_err(ctx, LM_E_DTYPE, "where: condition must be a bool tensor, got %s", lm_dtype_name(cond->dtype));
  int32_t rd = lm_dtype_promote(a->dtype, b->dtype);
  ew_plan p = {.nin = 3, .kin = {LM_U8, rd, rd}, .kout = rd};
  switch (lm_dtype_size(rd)) {
  case 1: p.wh = where_1; break;
  case 4: p.wh = where_4; break;
  default: p.wh = where_8; break;
  }
  /* a u8 condition must be read as (v != 0); bool is already 0 / 1 */
  if (cond->dtype == LM_U8) p.kin[0] = LM_BOOL;
  const lm_tensor *ins[3] = {cond, a, b};
  return ew_run(ctx, "where", &p, ins, rd, NULL, out);
}

/* ---- autograd ----
   The public functions run the forward above, then record. Backward
   formulas are written with the same ops through a small scratch list
   (gx) that owns the temporaries and stops at the first error. */

typedef struct gx {
  lm_ctx *ctx;
  lm_status st;
  int32_t n;
  lm_tensor *tmp[24];
} gx;

/* Keeps r, made with status st (computed first: C leaves the order of
   argument evaluation open). */
static lm_tensor *gx_keep(gx *g, lm_status st, lm_tensor *r) {
  if (st) { g->st = st; return NULL; }
  LM_ASSERT(g->n < 24);
  return g->tmp[g->n++] = r;
}
static lm_tensor *B(gx *g, int32_t op, const lm_tensor *a, const lm_tensor *b) {
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = binary_forward(g->ctx, op, a, b, NULL, &r);
  return gx_keep(g, st, r);
}
static lm_tensor *S(gx *g, int32_t op, const lm_tensor *a, double s) {
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = scalar_forward(g->ctx, op, a, s, 0, NULL, &r);
  return gx_keep(g, st, r);
}
static lm_tensor *U(gx *g, int32_t op, const lm_tensor *a) {
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = unary_forward(g->ctx, op, a, NULL, &r);
  return gx_keep(g, st, r);
}
static lm_tensor *W(gx *g, const lm_tensor *c, const lm_tensor *a, const lm_tensor *b) {
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = where_forward(g->ctx, c, a, b, &r);
  return gx_keep(g, st, r);
}
static lm_tensor *SF(gx *g, int32_t op, double s, const lm_tensor *a) { /* s op a */
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = scalar_forward(g->ctx, op, a, s, 1, NULL, &r);
  return gx_keep(g, st, r);
}
/* Hands v on as the gradient of an input with meta m: summed over
   broadcast dimensions, in the input's dtype (+1). */
static void gx_give(gx *g, const lm_tensor *v, const int64_t *m, lm_tensor **gin) {
  if (g->st || !v) return;
  lm_tensor *summed = NULL;
  g->st = lm_sum_to(g->ctx, v, (int32_t)m[0], m + 2, &summed);
  if (g->st) return;
  g->st = lm_cast_if_needed(g->ctx, summed, (int32_t)m[1], gin);
  lm_tensor_release(summed);
}
/* Input meta in node->ip: ndim, dtype, shape (10 slots per input). */
static void put_meta(int64_t *m, const lm_tensor *t) {
  m[0] = t->ndim;
  m[1] = t->dtype;
  memcpy(m + 2, t->shape, (size_t)t->ndim * sizeof *t->shape);
}
static lm_status gx_end(gx *g) {
  for (int32_t i = 0; i < g->n; i++) lm_tensor_release(g->tmp[i]);
  return g->st;
}
/* A zero tensor (0-d, dtype of like) to broadcast in where(). */
static lm_tensor *Z(gx *g, const lm_tensor *like) {
  lm_tensor *r = NULL;
  if (g->st) return NULL;
  lm_status st = lm_new(g->ctx, "backward", like->dtype, 0, NULL, &r);
  if (!gx_keep(g, st, r)) return NULL;
  lm_fill(g->ctx, r, 0.0);
  return r;
}

/* ip[0] op, ip[1..] the input's meta; saved[0] x or saved[1] y */
static lm_status unary_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  gx g = {.ctx = ctx};
  const lm_tensor *x = n->saved[0], *y = n->saved[1], *d = gout[0];
  lm_tensor *r = NULL;
  switch (n->ip[0]) {
  case LM_OP_NEG: r = U(&g, LM_OP_NEG, d); break;
  case LM_OP_ABS: r = B(&g, LM_OP_MUL, d, U(&g, LM_OP_SIGN, x)); break;
  case LM_OP_EXP: r = B(&g, LM_OP_MUL, d, y); break;
  case LM_OP_LOG: r = B(&g, LM_OP_DIV, d, x); break;
  case LM_OP_LOG1P: r = B(&g, LM_OP_DIV, d, S(&g, LM_OP_ADD, x, 1)); break;
  case LM_OP_SQRT: r = B(&g, LM_OP_DIV, d, S(&g, LM_OP_MUL, y, 2)); break;
  case LM_OP_RSQRT: r = B(&g, LM_OP_MUL, d, S(&g, LM_OP_MUL, B(&g, LM_OP_MUL, y, B(&g, LM_OP_MUL, y, y)), -0.5)); break;
  case LM_OP_SIN: r = B(&g, LM_OP_MUL, d, U(&g, LM_OP_COS, x)); break;
  case LM_OP_COS: r = B(&g, LM_OP_MUL, d, U(&g, LM_OP_NEG, U(&g, LM_OP_SIN, x))); break;
  case LM_OP_SIGMOID: r = B(&g, LM_OP_MUL, d, B(&g, LM_OP_MUL, y, SF(&g, LM_OP_SUB, 1, y))); break;
  case LM_OP_TANH: r = B(&g, LM_OP_MUL, d, SF(&g, LM_OP_SUB, 1, B(&g, LM_OP_MUL, y, y))); break;
  case LM_OP_RELU: r = B(&g, LM_OP_MUL, d, S(&g, LM_OP_GT, y, 0)); break;
  case LM_OP_RECIPROCAL: r = B(&g, LM_OP_MUL, d, U(&g, LM_OP_NEG, B(&g, LM_OP_MUL, y, y))); break;
  default: r = B(&g, LM_OP_MUL, d, Z(&g, d)); break; /* floor, ceil, round, sign: flat */
  }
  gx_give(&g, r, n->ip + 1, &gin[0]);
  return gx_end(&g);
}

static bool saves_output(int32_t op) {
  return op == LM_OP_EXP || op == LM_OP_SQRT || op == LM_OP_RSQRT || op == LM_OP_SIGMOID || op == LM_OP_TANH ||
         op == LM_OP_RELU || op == LM_OP_RECIPROCAL;
}

/* Records *out; on failure releases it. */
static lm_status finish_record(lm_ctx *ctx, lm_status st, lm_tensor **out) {
  if (st && out) { lm_tensor_release(*out); *out = NULL; }
  return st;
}

lm_status lm_unary(lm_ctx *ctx, int32_t op, const lm_tensor *x, lm_tensor *dst, lm_tensor **out) {
  const char *name = op >= LM_OP_NEG && op <= LM_OP_LOGICAL_NOT ? op_label(op) : "unary";
  lm_status st = lm_check_grad_dst(ctx, name, dst, 1, &x);
  if (st || (st = unary_forward(ctx, op, x, dst, out))) return st;
  if (dst || op == LM_OP_LOGICAL_NOT || !lm_dtype_is_float(x->dtype)) return LM_OK;
  lm_node *n;
  if ((st = lm_record(ctx, op, unary_backward, 1, &x, 1, out, &n)) || !n) return finish_record(ctx, st, out);
  n->ip[0] = op;
  put_meta(n->ip + 1, x);
  return finish_record(ctx, saves_output(op) ? lm_save(ctx, n, 1, *out) : lm_save(ctx, n, 0, x), out);
}

/* ip[0] op, ip[1..10] a's meta, ip[11..20] b's; saved[0] a, [1] b, [2] y */
static lm_status binary_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  gx g = {.ctx = ctx};
  const lm_tensor *a = n->saved[0], *b = n->saved[1], *y = n->saved[2], *d = gout[0];
  lm_tensor *ga = NULL, *gb = NULL;
  bool na = n->needs[0], nb = n->needs[1];
  switch (n->ip[0]) {
  case LM_OP_ADD: ga = (lm_tensor *)d; gb = (lm_tensor *)d; break;
  case LM_OP_SUB: ga = (lm_tensor *)d; if (nb) gb = U(&g, LM_OP_NEG, d); break;
  case LM_OP_MUL:
    if (na) ga = B(&g, LM_OP_MUL, d, b);
    if (nb) gb = B(&g, LM_OP_MUL, d, a);
    break;
  case LM_OP_DIV:
    if (na) ga = B(&g, LM_OP_DIV, d, b);
    if (nb) gb = U(&g, LM_OP_NEG, B(&g, LM_OP_DIV, B(&g, LM_OP_MUL, d, y), b));
    break;
  case LM_OP_POW: /* d * b * a^(b-1); d * y * log(a), taken as 0 where a == 0 */
    if (na) ga = B(&g, LM_OP_MUL, d, B(&g, LM_OP_MUL, b, B(&g, LM_OP_POW, a, S(&g, LM_OP_SUB, b, 1))));
    if (nb) gb = W(&g, S(&g, LM_OP_EQ, a, 0), Z(&g, d), B(&g, LM_OP_MUL, B(&g, LM_OP_MUL, d, y), U(&g, LM_OP_LOG, a)));
    break;
  default: { /* maximum, minimum: the winner takes d, ties split it */
    int32_t wins = n->ip[0] == LM_OP_MAXIMUM ? LM_OP_GT : LM_OP_LT;
    lm_tensor *half = S(&g, LM_OP_MUL, d, 0.5), *tie = B(&g, LM_OP_EQ, a, b), *zero = Z(&g, d);
    if (na) ga = W(&g, tie, half, W(&g, B(&g, wins, a, b), d, zero));
    if (nb) gb = W(&g, tie, half, W(&g, B(&g, wins, b, a), d, zero));
  }
  }
  if (na) gx_give(&g, ga, n->ip + 1, &gin[0]);
  if (nb) gx_give(&g, gb, n->ip + 11, &gin[1]);
  return gx_end(&g);
}

static bool differentiable_binary(int32_t op) { return op >= LM_OP_ADD && op <= LM_OP_MINIMUM; }

lm_status lm_binary(lm_ctx *ctx, int32_t op, const lm_tensor *a, const lm_tensor *b, lm_tensor *dst, lm_tensor **out) {
  const lm_tensor *ins[2] = {a, b};
  const char *name = op >= LM_OP_ADD && op <= LM_OP_LOGICAL_XOR ? op_label(op) : "binary";
  lm_status st = lm_check_grad_dst(ctx, name, dst, 2, ins);
  if (st || (st = binary_forward(ctx, op, a, b, dst, out))) return st;
  if (dst || !differentiable_binary(op) || !lm_dtype_is_float((*out)->dtype)) return LM_OK;
  lm_node *n;
  if ((st = lm_record(ctx, op, binary_backward, 2, ins, 1, out, &n)) || !n) return finish_record(ctx, st, out);
  n->ip[0] = op;
  put_meta(n->ip + 1, a);
  put_meta(n->ip + 11, b);
  bool need_a = op == LM_OP_MUL || op == LM_OP_POW || op == LM_OP_DIV || op == LM_OP_MAXIMUM || op == LM_OP_MINIMUM;
  bool need_b = op == LM_OP_MUL || op == LM_OP_POW || op == LM_OP_DIV || op == LM_OP_MAXIMUM || op == LM_OP_MINIMUM;
  if (need_a) st = lm_save(ctx, n, 0, a);
  if (!st && need_b) st = lm_save(ctx, n, 1, b);
  if (!st && (op == LM_OP_DIV || op == LM_OP_POW)) st = lm_save(ctx, n, 2, *out);
  return finish_record(ctx, st, out);
}

/* a op s (or s op a): ip[0] op, ip[1..10] a's meta, ip[11] scalar_first,
   p[0] s; saved[0] a, [1] y */
static lm_status scalar_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  gx g = {.ctx = ctx};
  const lm_tensor *a = n->saved[0], *y = n->saved[1], *d = gout[0];
  double s = n->p[0];
  bool first = n->ip[11] != 0;
  lm_tensor *r = NULL;
  switch (n->ip[0]) {
  case LM_OP_ADD: r = (lm_tensor *)d; break;
  case LM_OP_SUB: r = first ? U(&g, LM_OP_NEG, d) : (lm_tensor *)d; break;
  case LM_OP_MUL: r = S(&g, LM_OP_MUL, d, s); break;
  case LM_OP_DIV: r = first ? U(&g, LM_OP_NEG, B(&g, LM_OP_DIV, B(&g, LM_OP_MUL, d, y), a)) : S(&g, LM_OP_DIV, d, s); break;
  case LM_OP_POW:
    if (first) r = S(&g, LM_OP_MUL, B(&g, LM_OP_MUL, d, y), log(s)); /* s^a */
    else if (s == 0) r = S(&g, LM_OP_MUL, d, 0);
    else r = B(&g, LM_OP_MUL, d, S(&g, LM_OP_MUL, S(&g, LM_OP_POW, a, s - 1), s));
    break;
  default: { /* maximum, minimum against a number */
    int32_t wins = n->ip[0] == LM_OP_MAXIMUM ? LM_OP_GT : LM_OP_LT;
    r = W(&g, S(&g, LM_OP_EQ, a, s), S(&g, LM_OP_MUL, d, 0.5), W(&g, S(&g, wins, a, s), d, Z(&g, d)));
  }
  }
  gx_give(&g, r, n->ip + 1, &gin[0]);
  return gx_end(&g);
}

lm_status lm_binary_scalar(lm_ctx *ctx, int32_t op, const lm_tensor *a, double s, int32_t scalar_first, lm_tensor *dst, lm_tensor **out) {
  const char *name = op >= LM_OP_ADD && op <= LM_OP_LOGICAL_XOR ? op_label(op) : "binary";
  lm_status st = lm_check_grad_dst(ctx, name, dst, 1, &a);
  if (st || (st = scalar_forward(ctx, op, a, s, scalar_first, dst, out))) return st;
  if (dst || !differentiable_binary(op) || !lm_dtype_is_float((*out)->dtype)) return LM_OK;
  lm_node *n;
  if ((st = lm_record(ctx, op, scalar_backward, 1, &a, 1, out, &n)) || !n) return finish_record(ctx, st, out);
  n->ip[0] = op;
  put_meta(n->ip + 1, a);
  n->ip[11] = scalar_first != 0;
  n->p[0] = s;
  if (op != LM_OP_ADD && op != LM_OP_SUB && op != LM_OP_MUL) st = lm_save(ctx, n, 0, a);
  if (!st && (op == LM_OP_DIV || op == LM_OP_POW)) st = lm_save(ctx, n, 1, *out);
  return finish_record(ctx, st, out);
}

/* d where lo <= x <= hi, else 0 (torch's rule); p[0] lo, p[1] hi */
static lm_status clamp_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  gx g = {.ctx = ctx};
  const lm_tensor *x = n->saved[0], *d = gout[0];
  lm_tensor *inside = B(&g, LM_OP_LOGICAL_AND, S(&g, LM_OP_GE, x, n->p[0]), S(&g, LM_OP_LE, x, n->p[1]));
  gx_give(&g, W(&g, inside, d, Z(&g, d)), n->ip + 1, &gin[0]);
  return gx_end(&g);
}

lm_status lm_clamp(lm_ctx *ctx, const lm_tensor *x, double lo, double hi, lm_tensor *dst, lm_tensor **out) {
  lm_status st = lm_check_grad_dst(ctx, "clamp", dst, 1, &x);
  if (st || (st = clamp_forward(ctx, x, lo, hi, dst, out))) return st;
  if (dst || !lm_dtype_is_float((*out)->dtype)) return LM_OK;
  lm_node *n;
  if ((st = lm_record(ctx, LM_OP_CLAMP, clamp_backward, 1, &x, 1, out, &n)) || !n) return finish_record(ctx, st, out);
  put_meta(n->ip + 1, x);
  n->p[0] = lo;
  n->p[1] = hi;
  return finish_record(ctx, lm_save(ctx, n, 0, x), out);
}

/* inputs (cond, a, b); ip[1..10] a's meta, ip[11..20] b's; saved[0] cond */
static lm_status where_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  gx g = {.ctx = ctx};
  const lm_tensor *c = n->saved[0], *d = gout[0];
  if (n->needs[1]) gx_give(&g, W(&g, c, d, Z(&g, d)), n->ip + 1, &gin[1]);
  if (n->needs[2]) gx_give(&g, W(&g, c, Z(&g, d), d), n->ip + 11, &gin[2]);
  return gx_end(&g);
}

lm_status lm_where(lm_ctx *ctx, const lm_tensor *cond, const lm_tensor *a, const lm_tensor *b, lm_tensor **out) {
  lm_status st = where_forward(ctx, cond, a, b, out);
  if (st || !lm_dtype_is_float((*out)->dtype)) return st;
  const lm_tensor *ins[3] = {cond, a, b};
  lm_node *n;
  if ((st = lm_record(ctx, LM_OP_WHERE, where_backward, 3, ins, 1, out, &n)) || !n) return finish_record(ctx, st, out);
  put_meta(n->ip + 1, a);
  put_meta(n->ip + 11, b);
  return finish_record(ctx, lm_save(ctx, n, 0, cond), out);
}
