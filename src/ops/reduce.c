/* reduce.c - reductions (sum, mean, prod, max, min, argmax, argmin, var,
 * std, norm, all, any, count_nonzero) and cumsum.
 *
 * Kernels read the input in its own dtype (bool as u8); integer sums and
 * products accumulate in 64 bits, float ones in double across blocks. The
 * dims are split into kept and reduced ones and neighbouring dims merged,
 * so that the reduced dims become one run of rn elements at stride rs (a
 * permuted copy makes it so when they cannot merge). Then either
 *  - the row path reduces each output's run on its own (vectorised when
 *    rs == 1), in parallel over outputs, or over pieces of the run when
 *    there are fewer outputs than threads; or
 *  - the column path, used when the innermost kept dim is the denser one
 *    (e.g. summing a matrix over dim 0), walks the run row by row and
 *    updates a block of outputs at once.
 * Partial results are acc_t states, combined in order so that positions
 * (argmax, first occurrence) do not depend on the thread count. */
#include "../core/internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define VBLOCK 1024 /* elements per block of vector sums; block sums are added in double */
#define CB 256      /* outputs per block in the column path */
#define GRAIN 32768 /* elements below which another thread does not pay */
#define MAXSPLIT 64 /* pieces one long run is split into, at most */
/* loops whose iterations are independent: vectorise them even at -O2 */
#ifdef _OPENMP
#define PRAGMA(x) _Pragma(#x)
#define SIMD PRAGMA(omp simd)
#define SIMD_SUM(v) PRAGMA(omp simd reduction(+ : v))
#else
#define SIMD
#define SIMD_SUM(v)
#endif

typedef struct acc {
  double d;    /* float sum / product / norm accumulator, extremum; mean for var */
  double m2;   /* var: sum of squared deviations from d */
  int64_t v;   /* integer sum / product / extremum; nonzero count */
  int64_t idx; /* extremum: first position in the run */
  int64_t n;   /* elements seen */
} acc_t;

enum { K_SUM, K_PROD, K_EXT, K_VAR, K_NORM, K_COUNT };
enum { N_1, N_2, N_INF, N_NINF, N_0, N_P };

typedef struct plan {
  int32_t op, kind, ct, odt, norm;
  bool max;      /* K_EXT: max/argmax, else min/argmin */
  bool need_idx; /* K_EXT: track first positions */
  double param;
  const char *x; /* input data (or its permuted copy) */
  int32_t es;
  int64_t rn, rs; /* the reduced run: length and stride (elements) */
  int32_t kn;     /* kept dims after merging */
  int64_t kshape[LM_MAX_DIMS], kstride[LM_MAX_DIMS];
  int64_t nout;
  char *out;
  int64_t *idx;
  /* column path */
  int64_t cn, cs, nouter, ncb, nsplit;
  acc_t *part;
} plan;

/* ---- kernels over one run: n elements at stride s ----
   Most have an always-inlined body instantiated once with s == 1, which
   the compiler vectorises, and once for any stride. */

/* Sums of x, x^2, (x - c)^2 or |x| over contiguous data, in GCC/Clang
   vector types: eight vector accumulators per block of VBLOCK elements
   (each lane adds at most 32 values in the input's precision), block sums
   added in double. Fast (memory-bound) and accurate. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef double v2d __attribute__((vector_size(16)));
typedef int64_t v2l __attribute__((vector_size(16)));
enum { M_ID, M_SQ, M_DEV, M_ABS };

#define DEF_VSUM(SUF, T, V, VI, SIGNBIT)                                 \
  LM_INLINE V vmap_##SUF(V x, V c, int mode) {                              \
    switch (mode) {                                                      \
    case M_SQ: return x * x;                                             \
    case M_DEV: x -= c; return x * x;                                    \
    case M_ABS: return (V)((VI)x & ~(SIGNBIT));                          \
    default: return x;                                                   \
    }                                                                    \
  }                                                                      \
  LM_INLINE double smap_##SUF(double x, double c, int mode) {               \
    switch (mode) {                                                      \
    case M_SQ: return x * x;                                             \
    case M_DEV: return (x - c) * (x - c);                                \
    case M_ABS: return fabs(x);                                          \
    default: return x;                                                   \
    }                                                                    \
  }                                                                      \
  LM_INLINE double vsum_##SUF(const T *p, int64_t n, double c, int mode) {  \
    enum { W = sizeof(V) / sizeof(T) };                                  \
    const V cv = (V){0} + (T)c;                                          \
    double total = 0;                                                    \
    int64_t i = 0;                                                       \
    while (i + 8 * W <= n) {                                             \
      V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0}; \
      int64_t end = i + VBLOCK <= n ? i + VBLOCK : n - (n - i) % (8 * W); \
      for (; i < end; i += 8 * W) {                                      \
        V x[8];                                                          \
        memcpy(x, p + i, sizeof x);                                      \
        a0 += vmap_##SUF(x[0], cv, mode);                                \
        a1 += vmap_##SUF(x[1], cv, mode);                                \
        a2 += vmap_##SUF(x[2], cv, mode);                                \
        a3 += vmap_##SUF(x[3], cv, mode);                                \
        a4 += vmap_##SUF(x[4], cv, mode);                                \
        a5 += vmap_##SUF(x[5], cv, mode);                                \
        a6 += vmap_##SUF(x[6], cv, mode);                                \
        a7 += vmap_##SUF(x[7], cv, mode);                                \
      }                                                                  \
      a0 = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));            \
      for (int j = 0; j < W; j++) total += a0[j];                        \
    }                                                                    \
    for (; i < n; i++) total += smap_##SUF(p[i], c, mode);               \
    return total;                                                        \
  }                                                                      \
  /* any stride: contiguous data goes to the vector kernel */            \
  LM_INLINE double msum_##SUF(const T *p, int64_t n, int64_t s, double c, int mode) { \
    if (s == 1) return vsum_##SUF(p, n, c, mode);                        \
    double t = 0;                                                        \
    for (int64_t i = 0; i < n; i++) t += smap_##SUF(p[i * s], c, mode);  \
    return t;                                                            \
  }                                                                      \
  static double sum_##SUF(const T *p, int64_t n, int64_t s) { return msum_##SUF(p, n, s, 0, M_ID); } \
  static double sq_##SUF(const T *p, int64_t n, int64_t s) { return msum_##SUF(p, n, s, 0, M_SQ); } \
  static double abs_##SUF(const T *p, int64_t n, int64_t s) { return msum_##SUF(p, n, s, 0, M_ABS); }

DEF_VSUM(f32, float, v4f, v4i, (int32_t)0x80000000)
DEF_VSUM(f64, double, v2d, v2l, (int64_t)0x8000000000000000ull)

/* f32 mean and squared deviations in double: deviations from a mean near
   large values need more precision than f32 blocks keep. */
typedef double v4d __attribute__((vector_size(32)));
LM_INLINE double dsum_f32_k(const float *p, int64_t n, int64_t s, double c, int mode) {
  double total = 0;
  int64_t i = 0;
  if (s == 1) {
    const v4d cv = (v4d){0} + c;
    v4d a0 = {0}, a1 = {0};
    for (; i + 8 <= n; i += 8) {
      v4f x[2];
      memcpy(x, p + i, sizeof x);
      v4d x0 = __builtin_convertvector(x[0], v4d), x1 = __builtin_convertvector(x[1], v4d);
      if (mode == M_DEV) x0 -= cv, x1 -= cv, x0 *= x0, x1 *= x1;
      a0 += x0;
      a1 += x1;
    }
    a0 += a1;
    total = (a0[0] + a0[1]) + (a0[2] + a0[3]);
  }
  for (; i < n; i++) total += smap_f64(p[i * s], c, mode);
  return total;
}
static double dmean_f32(const float *p, int64_t n, int64_t s) { return dsum_f32_k(p, n, s, 0, M_ID) / (double)n; }
static double dsqdev_f32(const float *p, int64_t n, int64_t s, double c) { return dsum_f32_k(p, n, s, c, M_DEV); }
static double dmean_f64(const double *p, int64_t n, int64_t s) { return sum_f64(p, n, s) / (double)n; }
static double dsqdev_f64(const double *p, int64_t n, int64_t s, double c) { return msum_f64(p, n, s, c, M_DEV); }

/* sum of F(x) for general p norms; c is a constant F may use */
#define DEF_DSUM(NAME, T, F)                                             \
  static double NAME(const T *p, int64_t n, int64_t s, double c) {       \
    double t = 0;                                                        \
    for (int64_t i = 0; i < n; i++) {                                    \
      double x = (double)p[i * s];                                       \
      t += (F);                                                          \
    }                                                                    \
    return t;                                                            \
  }

/* extremum value only (n > 0): a NaN anywhere makes it NaN. Contiguous
   data runs four vector accumulators, selecting with compare masks (vector
   ?: is C++ only); strided data a scalar loop. */
#define DEF_EXT(SUF, T, V, VI)                                           \
  LM_INLINE V vsel_##SUF(VI m, V a, V b) { return (V)(((VI)a & m) | ((VI)b & ~m)); } \
  LM_INLINE double ext_##SUF##_k(const T *p, int64_t n, int64_t s, bool mx) { \
    enum { W = sizeof(V) / sizeof(T) };                                  \
    T best = p[0];                                                       \
    bool nan = false;                                                    \
    int64_t i = 0;                                                       \
    if (s == 1 && n >= 4 * W) {                                          \
      V a[4], x[4];                                                      \
      VI bad = {0};                                                      \
      memcpy(a, p, sizeof a);                                            \
      for (i = 4 * W; i + 4 * W <= n; i += 4 * W) {                      \
        memcpy(x, p + i, sizeof x);                                      \
        for (int k = 0; k < 4; k++) {                                    \
          a[k] = vsel_##SUF(mx ? x[k] > a[k] : x[k] < a[k], x[k], a[k]); \
          bad |= x[k] != x[k];                                           \
        }                                                                \
      }                                                                  \
      for (int k = 0; k < 4; k++) bad |= a[k] != a[k];                   \
      for (int k = 0; k < 4; k++)                                        \
        for (int j = 0; j < W; j++) {                                    \
          T y = a[k][j];                                                 \
          if (mx ? y > best : y < best) best = y;                        \
          nan |= bad[j] != 0;                                            \
        }                                                                \
    }                                                                    \
    for (; i < n; i++) {                                                 \
      T y = p[i * s];                                                    \
      if (mx ? y > best : y < best) best = y;                            \
      nan |= isnan(y);                                                   \
    }                                                                    \
    return nan ? (double)NAN : (double)best;                             \
  }                                                                      \
  static double ext_##SUF(const T *p, int64_t n, int64_t s, bool mx) {   \
    return mx ? ext_##SUF##_k(p, n, s, true) : ext_##SUF##_k(p, n, s, false); \
  }

DEF_EXT(f32, float, v4f, v4i)
DEF_EXT(f64, double, v2d, v2l)

/* extremum and its first position (n > 0); a NaN wins and stops */
#define DEF_EXTI(NAME, T, CMP, ISNAN)                                    \
  static void NAME(const T *p, int64_t n, int64_t s, T *bv, int64_t *bi) { \
    T best = p[0];                                                       \
    int64_t b = 0;                                                       \
    if (!ISNAN(best))                                                    \
      for (int64_t i = 1; i < n; i++) {                                  \
        T x = p[i * s];                                                  \
        if (x CMP best || ISNAN(x)) {                                    \
          best = x;                                                      \
          b = i;                                                         \
          if (ISNAN(x)) break;                                           \
        }                                                                \
      }                                                                  \
    *bv = best;                                                          \
    *bi = b;                                                             \
  }

#define FNAN(x) isnan(x)
#define INAN(x) 0

/* nonzero count (NaN counts, as x != 0) */
#define DEF_COUNT(SUF, T)                                                \
  LM_INLINE int64_t count_##SUF##_k(const T *p, int64_t n, int64_t s) {     \
    int64_t c = 0;                                                       \
    SIMD_SUM(c)                                                          \
    for (int64_t i = 0; i < n; i++) c += p[i * s] != 0;                  \
    return c;                                                            \
  }                                                                      \
  static int64_t count_##SUF(const T *p, int64_t n, int64_t s) {         \
    return s == 1 ? count_##SUF##_k(p, n, 1) : count_##SUF##_k(p, n, s); \
  }

#define DEF_FLOAT_ROW(SUF, T)                                            \
  DEF_COUNT(SUF, T)                                                      \
  DEF_DSUM(pow_##SUF, T, pow(fabs(x), c))                                \
  DEF_EXTI(imax_##SUF, T, >, FNAN)                                       \
  DEF_EXTI(imin_##SUF, T, <, FNAN)                                       \
  static void row_##SUF(const plan *P, const T *p, int64_t n, int64_t s, acc_t *a) { \
    switch (P->kind) {                                                   \
    case K_COUNT: a->v = count_##SUF(p, n, s); break;                    \
    case K_SUM: a->d = sum_##SUF(p, n, s); break;                        \
    case K_PROD: {                                                       \
      double t = 1;                                                      \
      for (int64_t i = 0; i < n; i++) t *= p[i * s];                     \
      a->d = t;                                                          \
    } break;                                                             \
    case K_EXT:                                                          \
      if (P->need_idx) {                                                 \
        T v;                                                             \
        if (P->max) imax_##SUF(p, n, s, &v, &a->idx);                    \
        else imin_##SUF(p, n, s, &v, &a->idx);                           \
        a->d = v;                                                        \
      } else {                                                           \
        a->d = ext_##SUF(p, n, s, P->max);                               \
      }                                                                  \
      break;                                                             \
    case K_VAR:                                                          \
      a->d = dmean_##SUF(p, n, s);                                       \
      a->m2 = dsqdev_##SUF(p, n, s, a->d);                               \
      break;                                                             \
    case K_NORM:                                                         \
      switch (P->norm) {                                                 \
      case N_1: a->d = abs_##SUF(p, n, s); break;                        \
      case N_2: a->d = sq_##SUF(p, n, s); break;                         \
      case N_0: a->d = (double)count_##SUF(p, n, s); break;              \
      case N_P: a->d = pow_##SUF(p, n, s, P->param); break;              \
      default: { /* N_INF, N_NINF */                                     \
        bool mx = P->norm == N_INF;                                      \
        double m = mx ? 0 : INFINITY;                                    \
        for (int64_t i = 0; i < n; i++) {                                \
          double ax = fabs((double)p[i * s]);                            \
          if (isnan(ax)) { m = ax; break; }                              \
          if (mx ? ax > m : ax < m) m = ax;                              \
        }                                                                \
        a->d = m;                                                        \
      }                                                                  \
      }                                                                  \
      break;                                                             \
    }                                                                    \
  }

DEF_FLOAT_ROW(f32, float)
DEF_FLOAT_ROW(f64, double)

/* integers (bool read as u8): sums and products in uint64, which wraps like
   PyTorch's int64 instead of overflowing */
#define DEF_INT_ROW(SUF, T)                                              \
  DEF_COUNT(SUF, T)                                                      \
  DEF_EXTI(imax_##SUF, T, >, INAN)                                       \
  DEF_EXTI(imin_##SUF, T, <, INAN)                                       \
  LM_INLINE uint64_t usum_##SUF##_k(const T *p, int64_t n, int64_t s) {     \
    uint64_t t = 0;                                                      \
    SIMD_SUM(t)                                                          \
    for (int64_t i = 0; i < n; i++) t += (uint64_t)p[i * s];             \
    return t;                                                            \
  }                                                                      \
  static void row_##SUF(const plan *P, const T *p, int64_t n, int64_t s, acc_t *a) { \
    switch (P->kind) {                                                   \
    case K_COUNT: a->v = count_##SUF(p, n, s); break;                    \
    case K_SUM:                                                          \
      a->v = (int64_t)(s == 1 ? usum_##SUF##_k(p, n, 1) : usum_##SUF##_k(p, n, s)); \
      break;                                                             \
    case K_PROD: {                                                       \
      uint64_t t = 1;                                                    \
      for (int64_t i = 0; i < n; i++) t *= (uint64_t)p[i * s];           \
      a->v = (int64_t)t;                                                 \
    } break;                                                             \
    default: { /* K_EXT */                                               \
      T v;                                                               \
      if (P->max) imax_##SUF(p, n, s, &v, &a->idx);                      \
      else imin_##SUF(p, n, s, &v, &a->idx);                             \
      a->v = v;                                                          \
    }                                                                    \
    }                                                                    \
  }

DEF_INT_ROW(i64, int64_t)
DEF_INT_ROW(i32, int32_t)
DEF_INT_ROW(u8, uint8_t)

static void row_reduce(const plan *P, const char *p, int64_t n, int64_t s, acc_t *a) {
  memset(a, 0, sizeof *a);
  a->n = n;
  switch (P->ct) {
  case LM_F32: row_f32(P, (const float *)p, n, s, a); break;
  case LM_F64: row_f64(P, (const double *)p, n, s, a); break;
  case LM_I64: row_i64(P, (const int64_t *)p, n, s, a); break;
  case LM_I32: row_i32(P, (const int32_t *)p, n, s, a); break;
  default: row_u8(P, (const uint8_t *)p, n, s, a); /* u8, bool */
  }
}

/* ---- kernels over a block of cb outputs (columns at stride cs) and rows
   [r0, r1) of the run (stride rs); p points at row 0 of the block ---- */

/* runs BODY for every (r, j) with x = the element; the cs == 1 copy is the
   one the compiler vectorises (HINT: SIMD, or nothing for bodies it cannot) */
#define COL_LOOP_(HINT, T, ...)                                          \
  do {                                                                   \
    if (cs == 1) {                                                       \
      for (int64_t r = r0; r < r1; r++) {                                \
        const T *q = p + r * rs;                                         \
        HINT                                                             \
        for (int64_t j = 0; j < cb; j++) {                               \
          T x = q[j];                                                    \
          __VA_ARGS__;                                                   \
        }                                                                \
      }                                                                  \
    } else {                                                             \
      for (int64_t r = r0; r < r1; r++) {                                \
        const T *q = p + r * rs;                                         \
        for (int64_t j = 0; j < cb; j++) {                               \
          T x = q[j * cs];                                               \
          __VA_ARGS__;                                                   \
        }                                                                \
      }                                                                  \
    }                                                                    \
  } while (0)
#define COL_LOOP(T, ...) COL_LOOP_(SIMD, T, __VA_ARGS__)
#define COL_LOOP_PLAIN(T, ...) COL_LOOP_(, T, __VA_ARGS__)

/* extremum per column with first positions; the first row seeds it */
#define COL_EXT(T, CMP, ISNAN, best, bi)                                 \
  do {                                                                   \
    for (int64_t j = 0; j < cb; j++) best[j] = p[r0 * rs + j * cs], bi[j] = r0; \
    int64_t r0_ = r0;                                                    \
    r0 = r0 + 1;                                                         \
    COL_LOOP_PLAIN(T, if (x CMP best[j] || (ISNAN(x) && !ISNAN(best[j]))) { best[j] = x; bi[j] = r; }); \
    r0 = r0_;                                                            \
  } while (0)

#define DEF_FLOAT_COLS(SUF, T)                                           \
  static void cols_##SUF(const plan *P, const T *p, int64_t r0, int64_t r1, int64_t cb, acc_t *st) { \
    const int64_t rs = P->rs, cs = P->cs;                                \
    double d[CB], m2[CB];                                                \
    int64_t bi[CB];                                                      \
    T best[CB];                                                          \
    const double c = P->param;                                           \
    switch (P->kind) {                                                   \
    case K_COUNT:                                                        \
      for (int64_t j = 0; j < cb; j++) bi[j] = 0;                        \
      COL_LOOP(T, bi[j] += x != 0);                                      \
      for (int64_t j = 0; j < cb; j++) st[j].v = bi[j];                  \
      return;                                                            \
    case K_SUM:                                                          \
      for (int64_t j = 0; j < cb; j++) d[j] = 0;                         \
      COL_LOOP(T, d[j] += x);                                            \
      break;                                                             \
    case K_PROD:                                                         \
      for (int64_t j = 0; j < cb; j++) d[j] = 1;                         \
      COL_LOOP(T, d[j] *= x);                                            \
      break;                                                             \
    case K_EXT:                                                          \
      if (P->max) COL_EXT(T, >, FNAN, best, bi);                         \
      else COL_EXT(T, <, FNAN, best, bi);                                \
      for (int64_t j = 0; j < cb; j++) d[j] = best[j], st[j].idx = bi[j]; \
      break;                                                             \
    case K_VAR: /* two passes: the mean, then squared deviations */      \
      for (int64_t j = 0; j < cb; j++) d[j] = 0, m2[j] = 0;              \
      COL_LOOP(T, d[j] += x);                                            \
      for (int64_t j = 0; j < cb; j++) d[j] /= (double)(r1 - r0);        \
      COL_LOOP(T, double e = x - d[j]; m2[j] += e * e);                  \
      for (int64_t j = 0; j < cb; j++) st[j].m2 = m2[j];                 \
      break;                                                             \
    case K_NORM:                                                         \
      for (int64_t j = 0; j < cb; j++) d[j] = P->norm == N_NINF ? INFINITY : 0; \
      switch (P->norm) {                                                 \
      case N_1: COL_LOOP(T, d[j] += fabs((double)x)); break;             \
      case N_2: COL_LOOP(T, d[j] += (double)x * x); break;               \
      case N_0: COL_LOOP(T, d[j] += x != 0); break;                      \
      case N_P: COL_LOOP_PLAIN(T, d[j] += pow(fabs((double)x), c)); break; \
      case N_INF:                                                        \
        COL_LOOP_PLAIN(T, double ax = fabs((double)x); d[j] = (ax > d[j] || isnan(ax)) ? ax : d[j]); \
        break;                                                           \
      default:                                                           \
        COL_LOOP_PLAIN(T, double ax = fabs((double)x); d[j] = (ax < d[j] || isnan(ax)) ? ax : d[j]); \
      }                                                                  \
      break;                                                             \
    }                                                                    \
    for (int64_t j = 0; j < cb; j++) st[j].d = d[j];                     \
    (void)c;                                                             \
  }

DEF_FLOAT_COLS(f32, float)
DEF_FLOAT_COLS(f64, double)

#define DEF_INT_COLS(SUF, T)                                             \
  static void cols_##SUF(const plan *P, const T *p, int64_t r0, int64_t r1, int64_t cb, acc_t *st) { \
    const int64_t rs = P->rs, cs = P->cs;                                \
    uint64_t v[CB];                                                      \
    int64_t bi[CB];                                                      \
    T best[CB];                                                          \
    switch (P->kind) {                                                   \
    case K_EXT:                                                          \
      if (P->max) COL_EXT(T, >, INAN, best, bi);                         \
      else COL_EXT(T, <, INAN, best, bi);                                \
      for (int64_t j = 0; j < cb; j++) st[j].v = best[j], st[j].idx = bi[j]; \
      return;                                                            \
    case K_COUNT:                                                        \
      for (int64_t j = 0; j < cb; j++) v[j] = 0;                         \
      COL_LOOP(T, v[j] += x != 0);                                       \
      break;                                                             \
    case K_SUM:                                                          \
      for (int64_t j = 0; j < cb; j++) v[j] = 0;                         \
      COL_LOOP(T, v[j] += (uint64_t)x);                                  \
      break;                                                             \
    default: /* K_PROD */                                                \
      for (int64_t j = 0; j < cb; j++) v[j] = 1;                         \
      COL_LOOP(T, v[j] *= (uint64_t)x);                                  \
    }                                                                    \
    for (int64_t j = 0; j < cb; j++) st[j].v = (int64_t)v[j];            \
  }

DEF_INT_COLS(i64, int64_t)
DEF_INT_COLS(i32, int32_t)
DEF_INT_COLS(u8, uint8_t)

static void col_reduce(const plan *P, const char *p, int64_t r0, int64_t r1, int64_t cb, acc_t *st) {
  memset(st, 0, cb * sizeof *st);
  for (int64_t j = 0; j < cb; j++) st[j].n = r1 - r0;
  switch (P->ct) {
  case LM_F32: cols_f32(P, (const float *)p, r0, r1, cb, st); break;
  case LM_F64: cols_f64(P, (const double *)p, r0, r1, cb, st); break;
  case LM_I64: cols_i64(P, (const int64_t *)p, r0, r1, cb, st); break;
  case LM_I32: cols_i32(P, (const int32_t *)p, r0, r1, cb, st); break;
  default: cols_u8(P, (const uint8_t *)p, r0, r1, cb, st); /* u8, bool */
  }
}

/* ---- combining partial states (a holds the earlier positions) ---- */

static void combine(const plan *P, acc_t *a, const acc_t *b) {
  switch (P->kind) {
  case K_SUM:
    a->d += b->d;
    a->v = (int64_t)((uint64_t)a->v + (uint64_t)b->v);
    break;
  case K_PROD:
    a->d *= b->d;
    a->v = (int64_t)((uint64_t)a->v * (uint64_t)b->v);
    break;
  case K_COUNT: a->v += b->v; break;
  case K_EXT: /* strict comparisons keep the earlier position on ties */
    if (!lm_dtype_is_float(P->ct)) {
      if (P->max ? b->v > a->v : b->v < a->v) a->v = b->v, a->idx = b->idx;
    } else if (!isnan(a->d) && (isnan(b->d) || (P->max ? b->d > a->d : b->d < a->d))) {
      a->d = b->d, a->idx = b->idx;
    }
    break;
  case K_VAR: { /* Chan et al.: merge (n, mean, m2) pairs */
    double na = (double)a->n, nb = (double)b->n, n = na + nb;
    if (nb == 0) break;
    double delta = b->d - a->d;
    a->d += delta * nb / n;
    a->m2 += b->m2 + delta * delta * na * nb / n;
  } break;
  case K_NORM:
    if (P->norm == N_INF || P->norm == N_NINF) {
      bool mx = P->norm == N_INF;
      if (!isnan(a->d) && (isnan(b->d) || (mx ? b->d > a->d : b->d < a->d))) a->d = b->d;
    } else {
      a->d += b->d;
    }
    break;
  }
  a->n += b->n;
}

/* Writes output o (and its position) from a finished state. */
static void finish(const plan *P, const acc_t *a, int64_t o) {
  double r = 0;
  int64_t iv = 0;
  switch (P->op) {
  case LM_OP_SUM:
  case LM_OP_PROD: iv = a->v, r = a->d; break;
  case LM_OP_MEAN: r = a->d / (double)P->rn; break;
  case LM_OP_MAX:
  case LM_OP_MIN:
    iv = a->v, r = a->d;
    if (P->idx) P->idx[o] = a->idx;
    break;
  case LM_OP_ARGMAX:
  case LM_OP_ARGMIN: iv = a->idx; break;
  case LM_OP_VAR:
  case LM_OP_STD:
    r = a->m2 / fmax(0.0, (double)a->n - P->param); /* 0/0 = NaN, as PyTorch */
    if (P->op == LM_OP_STD) r = sqrt(r);
    break;
  case LM_OP_NORM:
    r = P->norm == N_2 ? sqrt(a->d) : P->norm == N_P ? pow(a->d, 1.0 / P->param) : a->d;
    break;
  case LM_OP_ALL: iv = a->v == P->rn; break;
  case LM_OP_ANY: iv = a->v > 0; break;
  default: iv = a->v; /* count_nonzero */
  }
  switch (P->odt) { /* float outputs come from r, integer ones from iv */
  case LM_F32: ((float *)P->out)[o] = (float)r; break;
  case LM_F64: ((double *)P->out)[o] = r; break;
  case LM_I64: ((int64_t *)P->out)[o] = iv; break;
  case LM_I32: ((int32_t *)P->out)[o] = (int32_t)iv; break;
  case LM_U8: ((uint8_t *)P->out)[o] = (uint8_t)iv; break;
  default: ((uint8_t *)P->out)[o] = iv != 0; break;
  }
}

/* ---- drivers ---- */

/* element offset of position o over the first nd kept dims */
static int64_t kept_offset(const plan *P, int64_t o, int32_t nd) {
  int64_t off = 0;
  for (int32_t d = nd - 1; d >= 0; d--) {
    off += (o % P->kshape[d]) * P->kstride[d];
    o /= P->kshape[d];
  }
  return off;
}

static void row_worker(void *arg, int64_t b, int64_t e) {
  const plan *P = arg;
  for (int64_t o = b; o < e; o++) {
    acc_t a;
    row_reduce(P, P->x + kept_offset(P, o, P->kn) * P->es, P->rn, P->rs, &a);
    finish(P, &a, o);
  }
}

typedef struct split_arg {
  const plan *P;
  const char *base;
  int64_t nchunks;
  acc_t part[MAXSPLIT];
} split_arg;

/* one piece of one output's run: chunk c of nchunks */
static void split_worker(void *arg, int64_t b, int64_t e) {
  split_arg *S = arg;
  const plan *P = S->P;
  for (int64_t c = b; c < e; c++) {
    int64_t r0 = P->rn * c / S->nchunks, r1 = P->rn * (c + 1) / S->nchunks;
    row_reduce(P, S->base + r0 * P->rs * P->es, r1 - r0, P->rs, &S->part[c]);
    S->part[c].idx += r0;
  }
}

/* column item w = (outer position, column block, row piece) */
static void col_item(const plan *P, int64_t w, acc_t *st, int64_t *o0, int64_t *cb) {
  int64_t piece = w % P->nsplit, item = w / P->nsplit;
  int64_t outer = item / P->ncb, blk = item % P->ncb;
  int64_t j0 = blk * CB;
  int64_t r0 = P->rn * piece / P->nsplit, r1 = P->rn * (piece + 1) / P->nsplit;
  *cb = P->cn - j0 < CB ? P->cn - j0 : CB;
  *o0 = outer * P->cn + j0;
  const char *p = P->x + (kept_offset(P, outer, P->kn - 1) + j0 * P->cs) * P->es;
  col_reduce(P, p, r0, r1, *cb, st);
}

static void col_worker(void *arg, int64_t b, int64_t e) {
  const plan *P = arg;
  acc_t st[CB];
  for (int64_t w = b; w < e; w++) {
    int64_t o0, cb;
    col_item(P, w, st, &o0, &cb);
    for (int64_t j = 0; j < cb; j++) finish(P, &st[j], o0 + j);
  }
}

static void col_split_worker(void *arg, int64_t b, int64_t e) {
  const plan *P = arg;
  for (int64_t w = b; w < e; w++) {
    int64_t o0, cb;
    col_item(P, w, P->part + w * CB, &o0, &cb);
  }
}

static lm_status run_plan(lm_ctx *ctx, plan *P) {
  int64_t nt = lm_get_num_threads(ctx);
  int64_t total = P->nout * P->rn;
  int64_t rabs = llabs(P->rs);
  bool columns = P->kn >= 1 && rabs != 1 && llabs(P->kstride[P->kn - 1]) < rabs;
  if (columns) {
    P->cn = P->kshape[P->kn - 1];
    P->cs = P->kstride[P->kn - 1];
    P->nouter = P->nout / P->cn;
    P->ncb = (P->cn + CB - 1) / CB;
    int64_t items = P->nouter * P->ncb;
    P->nsplit = 1;
    if (items < nt && total >= 2 * GRAIN) { /* few outputs, long runs: split the rows too */
      P->nsplit = (nt + items - 1) / items;
      if (P->nsplit > P->rn) P->nsplit = P->rn;
    }
    if (P->nsplit == 1) {
      int64_t per = P->rn * (P->cn < CB ? P->cn : CB);
      lm_parallel_for(ctx, items, per >= GRAIN ? 1 : GRAIN / per, col_worker, P);
      return LM_OK;
    }
    P->part = malloc((size_t)(items * P->nsplit * CB) * sizeof *P->part);
    if (!P->part) return lm_err(ctx, LM_E_OOM, "%s: out of memory", lm_op_name(P->op));
    lm_parallel_for(ctx, items * P->nsplit, 1, col_split_worker, P);
    for (int64_t item = 0; item < items; item++) {
      int64_t j0 = (item % P->ncb) * CB, cb = P->cn - j0 < CB ? P->cn - j0 : CB;
      int64_t o0 = (item / P->ncb) * P->cn + j0;
      acc_t *first = P->part + item * P->nsplit * CB;
      for (int64_t j = 0; j < cb; j++) {
        for (int64_t k = 1; k < P->nsplit; k++) combine(P, &first[j], &first[k * CB + j]);
        finish(P, &first[j], o0 + j);
      }
    }
    free(P->part);
    P->part = NULL;
    return LM_OK;
  }
  if (P->nout < nt && P->rn >= 2 * GRAIN) { /* few long runs: split each across threads */
    split_arg S;
    S.P = P;
    S.nchunks = nt < MAXSPLIT ? nt : MAXSPLIT;
    if (S.nchunks > P->rn / GRAIN) S.nchunks = P->rn / GRAIN;
    for (int64_t o = 0; o < P->nout; o++) {
      S.base = P->x + kept_offset(P, o, P->kn) * P->es;
      lm_parallel_for(ctx, S.nchunks, 1, split_worker, &S);
      for (int64_t c = 1; c < S.nchunks; c++) combine(P, &S.part[0], &S.part[c]);
      finish(P, &S.part[0], o);
    }
    return LM_OK;
  }
  lm_parallel_for(ctx, P->nout, P->rn >= GRAIN ? 1 : GRAIN / P->rn, row_worker, P);
  return LM_OK;
}

/* appends dim (size, stride) to a list, merging it into the last entry
   when the two are contiguous with each other */
static void push_dim(int64_t *shape, int64_t *stride, int32_t *n, int64_t size, int64_t st) {
  if (*n > 0 && stride[*n - 1] == st * size) {
    shape[*n - 1] *= size;
    stride[*n - 1] = st;
  } else {
    shape[*n] = size;
    stride[*n] = st;
    (*n)++;
  }
}

/* Splits t's dims of size > 1 into kept and reduced lists (mask bit d set:
   reduced), merging neighbours. Unless positions are wanted, the reduced
   dims may be taken in any order: by decreasing stride, so that e.g. a
   transposed tensor still reduces as one run. Returns how many reduced runs
   remain; fills P's kept dims, rn, rs and nout. */
static int32_t layout(plan *P, const lm_tensor *t, uint32_t mask) {
  int64_t rshape[LM_MAX_DIMS], rstride[LM_MAX_DIMS];
  int32_t rd[LM_MAX_DIMS], nrd = 0, nr = 0;
  P->kn = 0;
  for (int32_t d = 0; d < t->ndim; d++) {
    if (t->shape[d] == 1) continue;
    if (mask & (1u << d)) rd[nrd++] = d;
    else push_dim(P->kshape, P->kstride, &P->kn, t->shape[d], t->stride[d]);
  }
  if (!P->need_idx) /* insertion sort: at most 8 dims */
    for (int32_t i = 1; i < nrd; i++)
      for (int32_t j = i; j > 0 && llabs(t->stride[rd[j]]) > llabs(t->stride[rd[j - 1]]); j--) {
        int32_t tmp = rd[j];
        rd[j] = rd[j - 1];
        rd[j - 1] = tmp;
      }
  for (int32_t i = 0; i < nrd; i++) push_dim(rshape, rstride, &nr, t->shape[rd[i]], t->stride[rd[i]]);
  P->rn = 1;
  for (int32_t k = 0; k < nr; k++) P->rn *= rshape[k];
  P->rs = nr == 1 ? rstride[0] : 1;
  P->nout = 1;
  for (int32_t k = 0; k < P->kn; k++) P->nout *= P->kshape[k];
  return nr;
}

/* The result dtype per op (PyTorch's rules); kernels read the input's own. */
static lm_status result_dtype(lm_ctx *ctx, int32_t op, int32_t dt, int32_t *odt) {
  bool fl = lm_dtype_is_float(dt);
  switch (op) {
  case LM_OP_SUM:
  case LM_OP_PROD: *odt = fl ? dt : LM_I64; break;
  case LM_OP_MEAN:
  case LM_OP_VAR:
  case LM_OP_STD:
  case LM_OP_NORM:
    if (!fl)
      return lm_err(ctx, LM_E_DTYPE, "%s: expected a floating-point input (f32 or f64), got %s",
                    lm_op_name(op), lm_dtype_name(dt));
    *odt = dt;
    break;
  case LM_OP_MAX:
  case LM_OP_MIN: *odt = dt; break;
  case LM_OP_ARGMAX:
  case LM_OP_ARGMIN:
  case LM_OP_COUNT_NONZERO: *odt = LM_I64; break;
  default: *odt = LM_BOOL; /* all, any */
  }
  return LM_OK;
}

static lm_status reduce_forward(lm_ctx *ctx, int32_t op, const lm_tensor *x, int32_t ndims, const int32_t *dims, int32_t keepdim, double param, lm_tensor **values, lm_tensor **indices) {
  if (op < LM_OP_SUM || op > LM_OP_COUNT_NONZERO)
    return lm_err(ctx, LM_E_ARG, "reduce: op %d (%s) is not a reduction", op, lm_op_name(op));
  const char *name = lm_op_name(op);
  lm_status st = lm_check_arg(ctx, name, x, "input");
  if (st) return st;
  int32_t dev = lm_device_of(x);
  if (!values) return lm_err(ctx, LM_E_ARG, "%s: values out-pointer is NULL", name);
  *values = NULL;
  if (indices) *indices = NULL;
  if (ndims < 0 || ndims > LM_MAX_DIMS)
    return lm_err(ctx, LM_E_ARG, "%s: %d dimensions given, expected 0 to %d", name, ndims, LM_MAX_DIMS);
  if (ndims > 0 && !dims) return lm_err(ctx, LM_E_ARG, "%s: dims is NULL", name);
  if (indices && op != LM_OP_MAX && op != LM_OP_MIN)
    return lm_err(ctx, LM_E_ARG, "%s: only max and min return indices", name);
  if (indices && ndims != 1)
    return lm_err(ctx, LM_E_ARG, "%s: indices need exactly one dimension, got %d", name, ndims);
  if (op == LM_OP_NORM && isnan(param)) return lm_err(ctx, LM_E_ARG, "norm: p is NaN");

  /* dims: a 0-d tensor accepts dim 0 and -1, as in PyTorch */
  int32_t nd = x->ndim;
  uint32_t mask = 0;
  for (int32_t k = 0; k < ndims; k++) {
    int32_t w = lm_wrap_dim(dims[k], nd > 0 ? nd : 1);
    if (w < 0)
      return lm_err(ctx, LM_E_INDEX, "%s: dimension %d out of range for a %d-D tensor", name, dims[k], nd);
    if (mask & (1u << w)) return lm_err(ctx, LM_E_ARG, "%s: dimension %d appears more than once", name, dims[k]);
    mask |= 1u << w;
  }
  if (ndims == 0) mask = nd > 0 ? (1u << nd) - 1 : 1;

  plan P;
  memset(&P, 0, sizeof P);
  P.op = op;
  P.param = param;
  if (!lm_dtype_valid(x->dtype)) return lm_err(ctx, LM_E_DTYPE, "%s: unknown dtype %d", name, x->dtype);
  P.ct = x->dtype; /* kernels read the input's own dtype (bool as u8) */
  st = result_dtype(ctx, op, x->dtype, &P.odt);
  if (st) return st;
  switch (op) {
  case LM_OP_SUM:
  case LM_OP_MEAN: P.kind = K_SUM; break;
  case LM_OP_PROD: P.kind = K_PROD; break;
  case LM_OP_VAR:
  case LM_OP_STD: P.kind = K_VAR; break;
  case LM_OP_NORM: P.kind = K_NORM; break;
  case LM_OP_MAX:
  case LM_OP_MIN:
  case LM_OP_ARGMAX:
  case LM_OP_ARGMIN:
    P.kind = K_EXT;
    P.max = op == LM_OP_MAX || op == LM_OP_ARGMAX;
    P.need_idx = indices || op == LM_OP_ARGMAX || op == LM_OP_ARGMIN;
    break;
  default: P.kind = K_COUNT;
  }
  P.norm = param == 2 ? N_2 : param == 1 ? N_1 : param == INFINITY ? N_INF : param == -INFINITY ? N_NINF
         : param == 0 ? N_0 : N_P;

  int64_t oshape[LM_MAX_DIMS], rn = 1, nout = 1;
  int32_t on = 0;
  for (int32_t d = 0; d < nd; d++) {
    if (mask & (1u << d)) {
      rn *= x->shape[d];
      if (keepdim) oshape[on++] = 1;
    } else {
      nout *= x->shape[d];
      oshape[on++] = x->shape[d];
    }
  }
  if (rn == 0 && nout > 0 && P.kind == K_EXT) {
    char b[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "%s: cannot reduce over an empty dimension (input shape %s)", name, LM_SHP(x, b));
  }

  lm_tensor *val = NULL, *idx = NULL, *xp = NULL;
  st = lm_new_on(ctx, name, dev, P.odt, on, oshape, &val);
  if (st) goto done;
  if (indices && (st = lm_new_on(ctx, name, dev, LM_I64, on, oshape, &idx))) goto done;
  if (nout == 0) goto done;
  if (rn == 0) { /* the identity of each op; NaN for a mean or variance of nothing */
    double id = P.kind == K_PROD || op == LM_OP_ALL ? 1 : (op == LM_OP_MEAN || P.kind == K_VAR) ? NAN : 0;
    st = lm_fill(ctx, val, id);
    goto done;
  }

  if (layout(&P, x, mask) > 1) { /* reduced dims do not merge: copy them innermost */
    int32_t perm[LM_MAX_DIMS], k = 0;
    for (int32_t d = 0; d < nd; d++)
      if (!(mask & (1u << d))) perm[k++] = d;
    int32_t nkept = k;
    for (int32_t d = 0; d < nd; d++)
      if (mask & (1u << d)) perm[k++] = d;
    lm_tensor *v = NULL;
    if ((st = lm_permute(ctx, x, perm, &v))) goto done;
    st = lm_contiguous(ctx, v, &xp);
    lm_tensor_release(v);
    if (st) goto done;
    uint32_t m2 = ((1u << nd) - 1) & ~((1u << nkept) - 1);
    int32_t runs = layout(&P, xp, m2);
    LM_ASSERT(runs <= 1);
    (void)runs;
  }
  P.x = lm_data(xp ? xp : x);
  P.es = lm_dtype_size(P.ct);
  P.out = lm_data(val);
  P.idx = idx ? (int64_t *)lm_data(idx) : NULL;
  if (dev == LM_CPU) {
    st = run_plan(ctx, &P);
  } else { /* the same runs, reduced by the device's backend */
    const lm_backend *be;
    if (!(st = LM_BACKEND_FOR(ctx, name, dev, reduce, &be)) &&
        (st = be->reduce(op, P.ct, P.x, P.kn, P.kshape, P.kstride, P.rn, P.rs, param, P.odt, P.out, P.idx)))
      st = lm_backend_fail(ctx, name, be, st);
  }

done:
  lm_tensor_release(xp);
  if (st) {
    lm_tensor_release(val);
    lm_tensor_release(idx);
    return st;
  }
  *values = val;
  if (indices) *indices = idx;
  return LM_OK;
}

/* ---- cumsum: running sums along one dim, in double for f32 as PyTorch ---- */

typedef struct cum_arg {
  int32_t dt;
  int64_t len, os, is; /* length and element strides of the dim */
} cum_arg;

/* One line: out[r] = in[0] + ... + in[r], strides in elements. */
#define CUM_LINE(T, ACC)                                                 \
  do {                                                                   \
    const T *in = (const T *)p[1];                                       \
    T *o = (T *)p[0];                                                    \
    ACC acc = 0;                                                         \
    for (int64_t r = 0; r < len; r++) {                                  \
      acc += (ACC)in[r * is];                                            \
      o[r * os] = (T)acc;                                                \
    }                                                                    \
  } while (0)

/* Lines k0 .. k0+m (line strides ls, lo), walking the dim in the outer loop
   so that neighbouring lines share cache lines. */
#define CUM_LINES(T, ACC)                                                \
  do {                                                                   \
    const int64_t ls = s[1] / (int64_t)sizeof(T), lo = s[0] / (int64_t)sizeof(T); \
    for (int64_t k0 = 0; k0 < n; k0 += CB) {                             \
      int64_t m = n - k0 < CB ? n - k0 : CB;                             \
      const T *in = (const T *)p[1] + k0 * ls;                           \
      T *o = (T *)p[0] + k0 * lo;                                        \
      ACC acc[CB] = {0};                                                 \
      for (int64_t r = 0; r < len; r++) {                                \
        SIMD                                                             \
        for (int64_t k = 0; k < m; k++) {                                \
          acc[k] += (ACC)in[r * is + k * ls];                            \
          o[r * os + k * lo] = (T)acc[k];                                \
        }                                                                \
      }                                                                  \
    }                                                                    \
  } while (0)

/* p[0] out, p[1] in; n lines, s: byte strides between lines */
static void cum_kernel(char **p, const int64_t *s, int64_t n, void *arg) {
  const cum_arg *A = arg;
  const int64_t len = A->len, os = A->os, is = A->is; /* locals: stores cannot alias them */
  int32_t dt = A->dt;
  if (n == 1) {
    if (dt == LM_I64) CUM_LINE(int64_t, uint64_t); /* unsigned: wraps, no overflow */
    else if (dt == LM_F64) CUM_LINE(double, double);
    else CUM_LINE(float, double);
  } else {
    if (dt == LM_I64) CUM_LINES(int64_t, uint64_t);
    else if (dt == LM_F64) CUM_LINES(double, double);
    else CUM_LINES(float, double);
  }
}

static lm_status cumsum_forward(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out) {
  lm_status st = lm_check_arg(ctx, "cumsum", x, "input");
  if (st) return st;
  if (!out) return lm_err(ctx, LM_E_ARG, "cumsum: out-pointer is NULL");
  *out = NULL;
  int32_t nd = x->ndim;
  int32_t w = lm_wrap_dim(dim, nd > 0 ? nd : 1);
  if (w < 0) return lm_err(ctx, LM_E_INDEX, "cumsum: dimension %d out of range for a %d-D tensor", dim, nd);
  int32_t dt = lm_dtype_is_float(x->dtype) ? x->dtype : LM_I64;
  lm_tensor *res = NULL, *xc = NULL;
  st = lm_new_on(ctx, "cumsum", lm_device_of(x), dt, nd, x->shape, &res);
  if (st) return st;
  if (lm_numel(x) > 0 && lm_device_of(x) != LM_CPU) { /* the backend's scan, a line per thread */
    const lm_backend *be;
    if ((st = LM_BACKEND_FOR(ctx, "cumsum", lm_device_of(x), cumsum, &be)) || (st = lm_cast_if_needed(ctx, x, dt, &xc)))
      goto done;
    int64_t one = 1, zero = 0;
    if ((st = be->cumsum(dt, nd > 0 ? nd : 1, nd > 0 ? x->shape : &one, w, lm_data(res), nd > 0 ? res->stride : &zero,
                         lm_data(xc), nd > 0 ? xc->stride : &zero)))
      st = lm_backend_fail(ctx, "cumsum", be, st);
  } else if (lm_numel(x) > 0) {
    if ((st = lm_cast_if_needed(ctx, x, dt, &xc))) goto done;
    int64_t shape[LM_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    cum_arg A = {dt, 1, 0, 0};
    if (nd > 0) {
      A.len = shape[w];
      A.os = res->stride[w];
      A.is = xc->stride[w];
      shape[w] = 1;
    }
    lm_operand ops[2] = {lm_operand_of(res, nd, shape), lm_operand_of(xc, nd, shape)};
    lm_foreach(ctx, nd, shape, 2, ops, cum_kernel, &A, true);
  }
done:
  lm_tensor_release(xc);
  if (st) {
    lm_tensor_release(res);
    return st;
  }
  *out = res;
  return LM_OK;
}

/* ---- autograd ----
 * The public entry points run the kernels with grad mode off (a permuted
 * copy inside must not record), then record a node on the values. Backward
 * works on the gradient in the "keepdim" shape (reduced dims of size 1),
 * which broadcasts against the input. Saved in the node: ip[0] the mask of
 * reduced dims, ip[1] keepdim, ip[2] the dim of max/min with indices,
 * ip[3] and ip[8..15] the input's ndim and shape; p[0] the parameter;
 * saved[0] the input, saved[1] the values, saved[2] the indices, each only
 * when the backward reads it. */

enum { IP_MASK = 0, IP_KEEP = 1, IP_DIM = 2, IP_NDIM = 3, IP_SHAPE = 8 };

/* the reduced dims as a bit mask (dims already checked by the forward) */
static uint32_t reduced_mask(const lm_tensor *x, int32_t ndims, const int32_t *dims) {
  int32_t nd = x->ndim > 0 ? x->ndim : 1;
  if (ndims == 0) return (1u << nd) - 1;
  uint32_t m = 0;
  for (int32_t k = 0; k < ndims; k++) m |= 1u << lm_wrap_dim(dims[k], nd);
  return m;
}

/* The reduced dims of an nd-D input as a list; 0 (every dim) for 0-d. */
static int32_t mask_dims(uint32_t mask, int32_t nd, int32_t *dims) {
  int32_t n = 0;
  for (int32_t d = 0; d < nd; d++)
    if (mask & (1u << d)) dims[n++] = d;
  return n;
}

/* Elementwise out = f(x, a, b, p) over x's shape, a and b (NULL: unused)
   broadcast to it; every operand has x's float dtype. Backward formulas
   with masks and divisions read best as one scalar function each; they are
   named by the LM_PW_* codes of src/backend.h, which a device backend
   evaluates the same way. */
typedef double (*pw_fn)(double x, double a, double b, double p);
typedef struct pw_arg {
  pw_fn fn;
  double p;
  int32_t dt;
} pw_arg;

#define PW_LOOP(T)                                                            \
  for (int64_t i = 0; i < n; i++)                                             \
    *(T *)(ptr[0] + i * s[0]) = (T)A->fn(*(const T *)(ptr[1] + i * s[1]),     \
                                          *(const T *)(ptr[2] + i * s[2]),     \
                                          *(const T *)(ptr[3] + i * s[3]), A->p)

static void pw_kernel(char **ptr, const int64_t *s, int64_t n, void *arg) {
  const pw_arg *A = arg;
  if (A->dt == LM_F64) PW_LOOP(double);
  else PW_LOOP(float);
}

static const pw_fn pw_fns[LM_PW_END - LM_PW_SCALE];

static lm_status pointwise(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *a, const lm_tensor *b, int32_t code, double p, lm_tensor **out) {
  LM_ASSERT(lm_dtype_is_float(x->dtype) && (!a || a->dtype == x->dtype) && (!b || b->dtype == x->dtype));
  LM_ASSERT(code >= LM_PW_SCALE && code < LM_PW_END);
  int32_t dev = lm_device_of(x);
  lm_status st = lm_new_on(ctx, "backward", dev, x->dtype, x->ndim, x->shape, out);
  if (st) return st;
  if (dev != LM_CPU) {
    const lm_tensor *ts[4] = {*out, x, a ? a : x, b ? b : x};
    st = lm_dev_elementwise(ctx, "backward", code, LM_F64, x->ndim, x->shape, 4, ts, p);
    if (st) { lm_tensor_release(*out); *out = NULL; }
    return st;
  }
  lm_operand ops[4] = {lm_operand_of(*out, x->ndim, x->shape), lm_operand_of(x, x->ndim, x->shape),
                       lm_operand_of(a ? a : x, x->ndim, x->shape), lm_operand_of(b ? b : x, x->ndim, x->shape)};
  pw_arg A = {pw_fns[code - LM_PW_SCALE], p, x->dtype};
  lm_foreach(ctx, x->ndim, x->shape, 4, ops, pw_kernel, &A, true);
  return LM_OK;
}

static double sgn(double x) { return x > 0 ? 1 : x < 0 ? -1 : x; }
static double f_scale(double x, double a, double b, double p) { return x * p; }
static double f_is_zero(double x, double a, double b, double p) { return x == 0; }
static double f_zero_to_one(double x, double a, double b, double p) { return x == 0 ? 1 : x; }
static double f_div(double x, double a, double b, double p) { return x / a; }
/* x * a where the count b equals p, else 0 */
static double f_mul_if_count(double x, double a, double b, double p) { return b == p ? x * a : 0; }
/* prod: a = g * prod of the nonzero elements when the slice has no zero,
   b = the same when it has exactly one; x's share is a / x, or b for the zero */
static double f_prod_grad(double x, double a, double b, double p) { return x == 0 ? b : a / x; }
/* max/min: 1 at the elements equal to the extremum a (NaN matches NaN) */
static double f_is_extremum(double x, double a, double b, double p) { return x == a || (isnan(x) && isnan(a)); }
/* norm(inf): 1 where |x| is the extremum a, or NaN */
static double f_is_abs_extremum(double x, double a, double b, double p) { return fabs(x) == a || isnan(x); }
static double f_select(double x, double a, double b, double p) { return x != 0 ? a : 0; }
static double f_select_signed(double x, double a, double b, double p) { return b != 0 ? sgn(x) * a : 0; }
/* std: g / std scaled, 0 where std is 0 (as PyTorch) */
static double f_div_std(double x, double a, double b, double p) { return a == 0 ? 0 : x / a * p; }
static double f_centered(double x, double a, double b, double p) { return a * (x - b); }
/* d norm_p / dx for x with gradient a and norm b */
static double f_norm_grad(double x, double a, double b, double p) {
  if (p == 1) return a * sgn(x);
  if (p == 2) return b == 0 ? 0 : a * x / b;
  if (p < 1) return x == 0 ? 0 : a * sgn(x) * pow(fabs(x), p - 1) * pow(b, 1 - p);
  return b == 0 ? 0 : a * sgn(x) * pow(fabs(x), p - 1) / pow(b, p - 1);
}

static const pw_fn pw_fns[LM_PW_END - LM_PW_SCALE] = {
    [LM_PW_SCALE - LM_PW_SCALE] = f_scale,
    [LM_PW_IS_ZERO - LM_PW_SCALE] = f_is_zero,
    [LM_PW_ZERO_TO_ONE - LM_PW_SCALE] = f_zero_to_one,
    [LM_PW_DIV - LM_PW_SCALE] = f_div,
    [LM_PW_MUL_IF_COUNT - LM_PW_SCALE] = f_mul_if_count,
    [LM_PW_PROD_GRAD - LM_PW_SCALE] = f_prod_grad,
    [LM_PW_IS_EXTREMUM - LM_PW_SCALE] = f_is_extremum,
    [LM_PW_IS_ABS_EXTREMUM - LM_PW_SCALE] = f_is_abs_extremum,
    [LM_PW_SELECT - LM_PW_SCALE] = f_select,
    [LM_PW_SELECT_SIGNED - LM_PW_SCALE] = f_select_signed,
    [LM_PW_DIV_STD - LM_PW_SCALE] = f_div_std,
    [LM_PW_CENTERED - LM_PW_SCALE] = f_centered,
    [LM_PW_NORM_GRAD - LM_PW_SCALE] = f_norm_grad,
};

/* t viewed in the keepdim shape of the node's input */
static lm_status keep_view(lm_ctx *ctx, const lm_node *node, const lm_tensor *t, lm_tensor **out) {
  int32_t nd = (int32_t)node->ip[IP_NDIM];
  uint32_t mask = (uint32_t)node->ip[IP_MASK];
  int64_t shape[LM_MAX_DIMS];
  for (int32_t d = 0; d < nd; d++) shape[d] = mask & (1u << d) ? 1 : node->ip[IP_SHAPE + d];
  return lm_reshape(ctx, t, nd, shape, out);
}

static lm_status zeros_like_input(lm_ctx *ctx, const lm_node *node, const lm_tensor *g, lm_tensor **out) {
  lm_status st = lm_new_on(ctx, "backward", lm_device_of(g), g->dtype, (int32_t)node->ip[IP_NDIM], node->ip + IP_SHAPE, out);
  if (!st) st = lm_fill(ctx, *out, 0);
  return st;
}

/* Spreads the keepdim-shaped g evenly over the elements of x where
   is(x, v) holds, v keepdim-shaped; sign multiplies by sgn(x) (norm inf). */
static lm_status spread_evenly(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *v, const lm_tensor *g, int32_t is,
                               int32_t nd, const int32_t *dims, bool sign, lm_tensor **out) {
  lm_tensor *m = NULL, *cnt = NULL, *share = NULL;
  lm_status st = pointwise(ctx, x, v, NULL, is, 0, &m);
  if (!st) st = lm_reduce(ctx, LM_OP_SUM, m, nd, dims, 1, 0, &cnt, NULL);
  if (!st) st = pointwise(ctx, g, cnt, NULL, LM_PW_DIV, 0, &share);
  if (!st) st = sign ? pointwise(ctx, x, share, m, LM_PW_SELECT_SIGNED, 0, out) : pointwise(ctx, m, share, NULL, LM_PW_SELECT, 0, out);
  lm_tensor_release(m);
  lm_tensor_release(cnt);
  lm_tensor_release(share);
  return st;
}

/* max/min over dim d on a device (which has no scatter yet): g where the
   position along d equals the index ix, else 0, comparing ix with the
   positions 0 .. n-1 broadcast along d. */
static lm_status to_position_on_device(lm_ctx *ctx, const lm_node *node, const lm_tensor *g, const lm_tensor *ix,
                                       int32_t d, lm_tensor **out) {
  int32_t nd = (int32_t)node->ip[IP_NDIM];
  if (nd == 0) { /* the extremum of one value is that value */
    lm_tensor_retain((lm_tensor *)g);
    *out = (lm_tensor *)g;
    return LM_OK;
  }
  int64_t n = node->ip[IP_SHAPE + d], shape[LM_MAX_DIMS];
  for (int32_t k = 0; k < nd; k++) shape[k] = k == d ? n : 1;
  lm_tensor *pos = NULL, *dpos = NULL, *vpos = NULL, *hit = NULL, *zero = NULL;
  lm_status st = lm_arange(ctx, 0, 1, n, LM_I64, &pos);
  if (!st) st = lm_to_device(ctx, pos, lm_device_of(g), &dpos);
  if (!st) st = lm_view(ctx, dpos, nd, shape, &vpos);
  if (!st) st = lm_binary(ctx, LM_OP_EQ, vpos, ix, NULL, &hit);
  if (!st) st = lm_new(ctx, "backward", g->dtype, 0, NULL, &zero);
  if (!st) st = lm_fill(ctx, zero, 0);
  if (!st) st = lm_where(ctx, hit, g, zero, out);
  lm_tensor_release(pos);
  lm_tensor_release(dpos);
  lm_tensor_release(vpos);
  lm_tensor_release(hit);
  lm_tensor_release(zero);
  return st;
}

/* prod: each element's gradient is g times the product of the others,
   found without dividing by zero: slices with two zeros give 0 everywhere,
   with one zero only the zero gets the product of the rest. */
static lm_status prod_backward(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *g, int32_t nd, const int32_t *dims, lm_tensor **out) {
  lm_tensor *z = NULL, *xs = NULL, *pnz = NULL, *nz = NULL, *a0 = NULL, *a1 = NULL;
  lm_status st = pointwise(ctx, x, NULL, NULL, LM_PW_IS_ZERO, 0, &z);
  if (!st) st = pointwise(ctx, x, NULL, NULL, LM_PW_ZERO_TO_ONE, 0, &xs);
  if (!st) st = lm_reduce(ctx, LM_OP_PROD, xs, nd, dims, 1, 0, &pnz, NULL);
  if (!st) st = lm_reduce(ctx, LM_OP_SUM, z, nd, dims, 1, 0, &nz, NULL);
  if (!st) st = pointwise(ctx, g, pnz, nz, LM_PW_MUL_IF_COUNT, 0, &a0);
  if (!st) st = pointwise(ctx, g, pnz, nz, LM_PW_MUL_IF_COUNT, 1, &a1);
  if (!st) st = pointwise(ctx, x, a0, a1, LM_PW_PROD_GRAD, 0, out);
  lm_tensor_release(z);
  lm_tensor_release(xs);
  lm_tensor_release(pnz);
  lm_tensor_release(nz);
  lm_tensor_release(a0);
  lm_tensor_release(a1);
  return st;
}

/* var and std: (x - mean) times 2 g / (N - correction), or g / ((N -
   correction) std) for std */
static lm_status var_backward(lm_ctx *ctx, int32_t op, const lm_tensor *x, const lm_tensor *y, const lm_tensor *g,
                              int32_t nd, const int32_t *dims, double n, double correction, lm_tensor **out) {
  lm_tensor *mean = NULL, *a = NULL;
  lm_status st = lm_reduce(ctx, LM_OP_MEAN, x, nd, dims, 1, 0, &mean, NULL);
  double denom = n - correction;
  if (!st) st = op == LM_OP_VAR ? pointwise(ctx, g, NULL, NULL, LM_PW_SCALE, 2 / denom, &a)
                                : pointwise(ctx, g, y, NULL, LM_PW_DIV_STD, 1 / denom, &a);
  if (!st) st = pointwise(ctx, x, a, mean, LM_PW_CENTERED, 0, out);
  lm_tensor_release(mean);
  lm_tensor_release(a);
  return st;
}

static lm_status reduce_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *x = node->saved[0];
  int32_t op = node->op, nd = (int32_t)node->ip[IP_NDIM], dims[LM_MAX_DIMS];
  int32_t ndims = mask_dims((uint32_t)node->ip[IP_MASK], nd, dims);
  double param = node->p[0], n = 1;
  for (int32_t k = 0; k < ndims; k++) n *= (double)node->ip[IP_SHAPE + dims[k]];
  lm_tensor *g = NULL, *y = NULL, *ix = NULL, *t = NULL;
  lm_status st = keep_view(ctx, node, gout[0], &g);
  if (!st && node->saved[1]) st = keep_view(ctx, node, node->saved[1], &y);
  if (st) goto done;
  switch (op) {
  case LM_OP_SUM: st = lm_expand(ctx, g, nd, node->ip + IP_SHAPE, &gin[0]); break;
  case LM_OP_MEAN:
    st = lm_binary_scalar(ctx, LM_OP_DIV, g, n, 0, NULL, &t);
    if (!st) st = lm_expand(ctx, t, nd, node->ip + IP_SHAPE, &gin[0]);
    break;
  case LM_OP_PROD: st = prod_backward(ctx, x, g, ndims, dims, &gin[0]); break;
  case LM_OP_MAX:
  case LM_OP_MIN:
    if (node->saved[2]) { /* max/min over one dim: all of it to the reported position */
      int32_t d = (int32_t)node->ip[IP_DIM];
      st = keep_view(ctx, node, node->saved[2], &ix);
      if (!st && lm_device_of(g) != LM_CPU) {
        st = to_position_on_device(ctx, node, g, ix, d, &gin[0]);
        break;
      }
      if (!st) st = zeros_like_input(ctx, node, g, &t);
      if (!st) st = lm_scatter(ctx, t, d, ix, g, LM_SCATTER_SET, t, NULL);
      if (!st) { gin[0] = t; t = NULL; }
    } else { /* max/min over all or several dims: shared evenly among ties */
      st = spread_evenly(ctx, x, y, g, LM_PW_IS_EXTREMUM, ndims, dims, false, &gin[0]);
    }
    break;
  case LM_OP_VAR:
  case LM_OP_STD: st = var_backward(ctx, op, x, y, g, ndims, dims, n, param, &gin[0]); break;
  case LM_OP_NORM:
    if (param == 0) st = zeros_like_input(ctx, node, g, &gin[0]);
    else if (isinf(param)) st = spread_evenly(ctx, x, y, g, LM_PW_IS_ABS_EXTREMUM, ndims, dims, true, &gin[0]);
    else st = pointwise(ctx, x, g, y, LM_PW_NORM_GRAD, param, &gin[0]);
    break;
  default: st = lm_err(ctx, LM_E_UNSUPPORTED, "%s: no backward", lm_op_name(op));
  }
done:
  lm_tensor_release(g);
  lm_tensor_release(y);
  lm_tensor_release(ix);
  lm_tensor_release(t);
  return st;
}

static bool differentiable(int32_t op) {
  switch (op) {
  case LM_OP_SUM: case LM_OP_MEAN: case LM_OP_PROD: case LM_OP_MAX: case LM_OP_MIN:
  case LM_OP_VAR: case LM_OP_STD: case LM_OP_NORM: return true;
  default: return false;
  }
}

lm_status lm_reduce(lm_ctx *ctx, int32_t op, const lm_tensor *x, int32_t ndims, const int32_t *dims, int32_t keepdim, double param, lm_tensor **values, lm_tensor **indices) {
  bool was = lm_grad_pause(ctx);
  lm_status st = reduce_forward(ctx, op, x, ndims, dims, keepdim, param, values, indices);
  ctx->grad_enabled = was;
  if (st || !differentiable(op) || !lm_dtype_is_float(x->dtype)) return st;
  lm_node *node;
  const lm_tensor *ins[1] = {x};
  if ((st = lm_record(ctx, op, reduce_backward, 1, ins, 1, values, &node)) || !node) goto fail;
  node->ip[IP_MASK] = reduced_mask(x, ndims, dims);
  node->ip[IP_KEEP] = keepdim != 0;
  node->ip[IP_NDIM] = x->ndim;
  for (int32_t d = 0; d < x->ndim; d++) node->ip[IP_SHAPE + d] = x->shape[d];
  node->p[0] = param;
  bool by_index = (op == LM_OP_MAX || op == LM_OP_MIN) && indices;
  lm_tensor *ix = indices ? *indices : NULL;
  if (by_index) {
    node->ip[IP_DIM] = lm_wrap_dim(dims[0], x->ndim > 0 ? x->ndim : 1);
    st = lm_save(ctx, node, 2, ix);
  } else if (op != LM_OP_SUM && op != LM_OP_MEAN) {
    st = lm_save(ctx, node, 0, x);
    if (!st && op != LM_OP_PROD && op != LM_OP_VAR) st = lm_save(ctx, node, 1, *values);
  }
  if (st) goto fail;
  return LM_OK;
fail:
  if (st) {
    lm_tensor_release(*values);
    *values = NULL;
    if (indices) {
      lm_tensor_release(*indices);
      *indices = NULL;
    }
  }
  return st;
}

/* cumsum: the gradient of a running sum is the running sum of the
   gradient taken from the end: flip, cumsum, flip. */
static lm_status cumsum_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  if (node->ip[1] == 0) { /* 0-d: the identity */
    lm_tensor_retain(gout[0]);
    gin[0] = gout[0];
    return LM_OK;
  }
  int32_t d = (int32_t)node->ip[0];
  lm_tensor *f = NULL, *c = NULL;
  lm_status st = lm_flip(ctx, gout[0], 1, &d, &f);
  if (!st) st = cumsum_forward(ctx, f, d, &c);
  if (!st) st = lm_flip(ctx, c, 1, &d, &gin[0]);
  lm_tensor_release(f);
  lm_tensor_release(c);
  return st;
}

lm_status lm_cumsum(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out) {
  bool was = lm_grad_pause(ctx);
  lm_status st = cumsum_forward(ctx, x, dim, out);
  ctx->grad_enabled = was;
  if (st || !lm_dtype_is_float(x->dtype)) return st;
  lm_node *node;
  const lm_tensor *ins[1] = {x};
  if ((st = lm_record(ctx, LM_OP_CUMSUM, cumsum_backward, 1, ins, 1, out, &node))) {
    lm_tensor_release(*out);
    *out = NULL;
    return st;
  }
  if (node) {
    node->ip[0] = lm_wrap_dim(dim, x->ndim > 0 ? x->ndim : 1);
    node->ip[1] = x->ndim;
  }
  return LM_OK;
}
