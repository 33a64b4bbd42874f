/* fake_device.c - a device backend whose "device memory" is host memory.
 *
 * Registered as LM_CUDA by specs (tests/spec/device_spec.lua,
 * tests/spec/device_ops_spec.lua) and by tests/gpu/run.sh when asked to
 * check itself without a GPU, it lets the device paths run on any machine:
 * transfers, strided gathers, the device memory cache and its stats, the
 * dispatch of ops to the backend's kernels, and the refusals of the ops
 * that have none. Every block starts and ends with a guard word, so a
 * write past a block, or a block freed twice, is caught; counters tell the
 * specs how often the cache went to the "device" and which kernels ran.
 *
 * Its kernels (elementwise, reduce, gemm) are plain loops written from
 * src/backend.h's description alone, not from liblumen's CPU kernels:
 * values are held as double or int64 and rounded to the compute dtype
 * after each step, which is enough to check that liblumen hands the
 * backend the right loops (strides, broadcasting, dtypes, outputs).
 * Not thread-safe beyond what the specs need. */
#include "backend.h"
#include "lowp.h"
#include "lumen.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 0x6c756d656e646576ull /* "lumendev" */

typedef struct header {
  uint64_t guard;
  size_t nbytes;
} header;

static char msg[256];
static int64_t outstanding, mallocs, frees, syncs, h2d_bytes, d2h_bytes;
static int64_t fail_next_malloc; /* > 0: that many mallocs report out of memory */
static int64_t n_elementwise, n_reduce, n_gemm, n_other; /* n_other: the later kernel families */
static char description[] = "fake device: host memory (tests/plugin/fake_device.c)";

static int32_t fake_init(void) { return 0; }
static const char *fake_last_error(void) { return msg; }

static int32_t fake_malloc(size_t nbytes, void **ptr) {
  if (fail_next_malloc > 0) {
    fail_next_malloc--;
    snprintf(msg, sizeof msg, "fake malloc: out of memory (asked to fail)");
    return LM_E_OOM;
  }
  header *h = malloc(sizeof(header) + nbytes + sizeof(uint64_t));
  if (!h) {
    snprintf(msg, sizeof msg, "fake malloc: out of memory");
    return LM_E_OOM;
  }
  h->guard = GUARD;
  h->nbytes = nbytes;
  uint64_t tail = GUARD;
  memcpy((char *)(h + 1) + nbytes, &tail, sizeof tail);
  memset(h + 1, 0xA5, nbytes); /* not zeros: a missing copy shows */
  *ptr = h + 1;
  outstanding++;
  mallocs++;
  return 0;
}

static int32_t fake_free(void *ptr) {
  header *h = (header *)ptr - 1;
  uint64_t tail;
  memcpy(&tail, (char *)ptr + h->nbytes, sizeof tail);
  if (h->guard != GUARD || tail != GUARD) {
    fprintf(stderr, "fake_device: corrupt or doubly freed block %p\n", ptr);
    abort(); /* a test backend: a bug of ours must stop the run loudly */
  }
  h->guard = 0;
  free(h);
  outstanding--;
  frees++;
  return 0;
}

static int32_t fake_memset(void *ptr, int32_t byte, size_t n) {
  memset(ptr, byte, n);
  return 0;
}
static int32_t fake_h2d(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
  h2d_bytes += (int64_t)n;
  return 0;
}
static int32_t fake_d2h(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
  d2h_bytes += (int64_t)n;
  return 0;
}
static int32_t fake_d2d(void *dst, const void *src, size_t n) {
  memmove(dst, src, n);
  return 0;
}

static int32_t fake_strided(void *dst, const void *src, int32_t esize, int32_t ndim, const int64_t *shape,
                            const int64_t *stride) {
  int64_t n = 1, idx[LM_MAX_DIMS] = {0};
  for (int32_t d = 0; d < ndim; d++) n *= shape[d];
  for (int64_t k = 0; k < n; k++) {
    int64_t off = 0;
    for (int32_t d = 0; d < ndim; d++) off += idx[d] * stride[d];
    memcpy((char *)dst + k * esize, (const char *)src + off * esize, (size_t)esize);
    for (int32_t d = ndim - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return 0;
}

static int32_t fake_sync(void) {
  syncs++;
  return 0;
}
static int32_t fake_mem_info(int64_t *f, int64_t *t) {
  *f = (int64_t)1 << 30;
  *t = (int64_t)1 << 31;
  return 0;
}


/* ---- kernels ---- */

static int is_float(int32_t d) { return d == LM_F32 || d == LM_F64; }
/* element sizes (a backend does not link liblumen) */
static int64_t esize(int32_t d) { return d == LM_F64 || d == LM_I64 ? 8 : d == LM_U8 || d == LM_BOOL ? 1 : 4; }

/* A value in a compute dtype: f for f32/f64 (already rounded to it), i for
   the integers (already wrapped to the dtype's width). */
typedef struct val {
  double f;
  int64_t i;
} val;

static int64_t wrap(int32_t kd, uint64_t v) {
  switch (kd) {
  case LM_I32: return (int32_t)(uint32_t)v;
  case LM_U8: return (uint8_t)v;
  default: return (int64_t)v;
  }
}

/* v (held as double when from_float, else as int64) converted to kd. */
static val convert(int32_t kd, int from_float, double f, int64_t i) {
  val r = {0, 0};
  switch (kd) {
  case LM_F32: r.f = from_float ? (double)(float)f : (double)(float)i; break;
  case LM_F64: r.f = from_float ? f : (double)i; break;
  case LM_I32: r.i = from_float ? (int32_t)f : (int32_t)i; break;
  case LM_I64: r.i = from_float ? (int64_t)f : i; break;
  default: r.i = from_float ? (uint8_t)f : (uint8_t)i; break; /* u8 */
  }
  return r;
}

static val load(int32_t kd, int32_t dt, const char *p) {
  switch (dt) {
  case LM_F32: return convert(kd, 1, *(const float *)p, 0);
  case LM_F64: return convert(kd, 1, *(const double *)p, 0);
  case LM_I32: return convert(kd, 0, 0, *(const int32_t *)p);
  case LM_I64: return convert(kd, 0, 0, *(const int64_t *)p);
  default: return convert(kd, 0, 0, *(const uint8_t *)p); /* u8, bool */
  }
}

static void store(int32_t dt, char *p, int32_t kd, val v) {
  int fl = is_float(kd);
  switch (dt) {
  case LM_F32: *(float *)p = fl ? (float)v.f : (float)v.i; break;
  case LM_F64: *(double *)p = fl ? v.f : (double)v.i; break;
  case LM_I32: *(int32_t *)p = fl ? (int32_t)v.f : (int32_t)v.i; break;
  case LM_I64: *(int64_t *)p = fl ? (int64_t)v.f : v.i; break;
  case LM_U8: *(uint8_t *)p = fl ? (uint8_t)v.f : (uint8_t)v.i; break;
  default: *(uint8_t *)p = fl ? v.f != 0 : v.i != 0; break; /* bool */
  }
}

static double sgn(double x) { return x > 0 ? 1 : x < 0 ? -1 : x; }

static double pw(int32_t op, double x, double a, double b, double p) {
  switch (op) {
  case LM_PW_SCALE: return x * p;
  case LM_PW_IS_ZERO: return x == 0;
  case LM_PW_ZERO_TO_ONE: return x == 0 ? 1 : x;
  case LM_PW_DIV: return x / a;
  case LM_PW_MUL_IF_COUNT: return b == p ? x * a : 0;
  case LM_PW_PROD_GRAD: return x == 0 ? b : a / x;
  case LM_PW_IS_EXTREMUM: return x == a || (isnan(x) && isnan(a));
  case LM_PW_IS_ABS_EXTREMUM: return fabs(x) == a || isnan(x);
  case LM_PW_SELECT: return x != 0 ? a : 0;
  case LM_PW_SELECT_SIGNED: return b != 0 ? sgn(x) * a : 0;
  case LM_PW_DIV_STD: return a == 0 ? 0 : x / a * p;
  case LM_PW_CENTERED: return a * (x - b);
  default: /* LM_PW_NORM_GRAD */
    if (p == 1) return a * sgn(x);
    if (p == 2) return b == 0 ? 0 : a * x / b;
    if (p < 1) return x == 0 ? 0 : a * sgn(x) * pow(fabs(x), p - 1) * pow(b, 1 - p);
    return b == 0 ? 0 : a * sgn(x) * pow(fabs(x), p - 1) / pow(b, p - 1);
  }
}

/* op on floats, in double; -1 in *bad for an op this dtype lacks */
static double float_op(int32_t op, const val *in, double param, int *bad) {
  double x = in[0].f, y = in[1].f, z = in[2].f;
  switch (op) {
  case LM_OP_NEG: return -x;
  case LM_OP_ABS: return fabs(x);
  case LM_OP_EXP: return exp(x);
  case LM_OP_LOG: return log(x);
  case LM_OP_LOG1P: return log1p(x);
  case LM_OP_SQRT: return sqrt(x);
  case LM_OP_RSQRT: return 1 / sqrt(x);
  case LM_OP_SIN: return sin(x);
  case LM_OP_COS: return cos(x);
  case LM_OP_SIGMOID: return 1 / (1 + exp(-x));
  case LM_OP_TANH: return tanh(x);
  case LM_OP_RELU: return x > 0 || isnan(x) ? x : 0;
  case LM_OP_FLOOR: return floor(x);
  case LM_OP_CEIL: return ceil(x);
  case LM_OP_ROUND: return nearbyint(x);
  case LM_OP_SIGN: return (x > 0) - (x < 0);
  case LM_OP_RECIPROCAL: return 1 / x;
  case LM_OP_LOGICAL_NOT: return x == 0;
  case LM_OP_ADD: return x + y;
  case LM_OP_SUB: return x - y;
  case LM_OP_MUL: return x * y;
  case LM_OP_DIV: return x / y;
  case LM_OP_POW: return pow(x, y);
  case LM_OP_MAXIMUM: return isnan(x) || isnan(y) ? (isnan(x) ? x : y) : x > y ? x : y;
  case LM_OP_MINIMUM: return isnan(x) || isnan(y) ? (isnan(x) ? x : y) : x < y ? x : y;
  case LM_OP_EQ: return x == y;
  case LM_OP_NE: return x != y;
  case LM_OP_LT: return x < y;
  case LM_OP_LE: return x <= y;
  case LM_OP_GT: return x > y;
  case LM_OP_GE: return x >= y;
  case LM_OP_LOGICAL_AND: return x != 0 && y != 0;
  case LM_OP_LOGICAL_OR: return x != 0 || y != 0;
  case LM_OP_LOGICAL_XOR: return (x != 0) != (y != 0);
  case LM_OP_COPY: return x;
  case LM_OP_CLAMP: return x < y ? y : x > z ? z : x;
  case LM_OP_WHERE: return x != 0 ? y : z;
  }
  if (op >= LM_PW_SCALE && op < LM_PW_END) return pw(op, x, y, z, param);
  *bad = 1;
  return 0;
}

/* x ** y in 64 bits, wrapping; negative exponents as torch's integers */
static uint64_t int_pow(int64_t x, int64_t y) {
  if (y < 0) return x == 1 ? 1 : x == -1 ? ((y & 1) ? (uint64_t)-1 : 1) : 0;
  uint64_t r = 1;
  for (int64_t e = 0; e < y; e++) r *= (uint64_t)x;
  return r;
}

static uint64_t int_op(int32_t op, const val *in, int *bad) {
  int64_t x = in[0].i, y = in[1].i, z = in[2].i;
  switch (op) {
  case LM_OP_NEG: return 0 - (uint64_t)x;
  case LM_OP_ABS: return x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
  case LM_OP_RELU: return x > 0 ? x : 0;
  case LM_OP_FLOOR: case LM_OP_CEIL: case LM_OP_ROUND: case LM_OP_COPY: return x;
  case LM_OP_SIGN: return (uint64_t)(int64_t)((x > 0) - (x < 0));
  case LM_OP_LOGICAL_NOT: return x == 0;
  case LM_OP_ADD: return (uint64_t)x + (uint64_t)y;
  case LM_OP_SUB: return (uint64_t)x - (uint64_t)y;
  case LM_OP_MUL: return (uint64_t)x * (uint64_t)y;
  case LM_OP_POW: return int_pow(x, y);
  case LM_OP_MAXIMUM: return x > y ? x : y;
  case LM_OP_MINIMUM: return x < y ? x : y;
  case LM_OP_EQ: return x == y;
  case LM_OP_NE: return x != y;
  case LM_OP_LT: return x < y;
  case LM_OP_LE: return x <= y;
  case LM_OP_GT: return x > y;
  case LM_OP_GE: return x >= y;
  case LM_OP_LOGICAL_AND: return x != 0 && y != 0;
  case LM_OP_LOGICAL_OR: return x != 0 || y != 0;
  case LM_OP_LOGICAL_XOR: return (x != 0) != (y != 0);
  case LM_OP_CLAMP: return (uint64_t)(x < y ? y : x > z ? z : x);
  case LM_OP_WHERE: return (uint64_t)(x != 0 ? y : z);
  }
  *bad = 1;
  return 0;
}

/* Walks the positions of (nd, shape) row-major; off[k] is operand k's
   element offset at the current position. */
static int next_position(int32_t nd, const int64_t *shape, int32_t n, const int64_t *strides, int64_t *idx,
                         int64_t *off) {
  for (int32_t d = nd - 1; d >= 0; d--) {
    for (int32_t k = 0; k < n; k++) off[k] += strides[k * nd + d];
    if (++idx[d] < shape[d]) return 1;
    for (int32_t k = 0; k < n; k++) off[k] -= strides[k * nd + d] * shape[d];
    idx[d] = 0;
  }
  return 0;
}

static int32_t fake_elementwise(int32_t op, int32_t kd, int32_t nd, const int64_t *shape, int32_t n,
                                void *const *data, const int64_t *strides, const int32_t *dtypes,
                                const lm_scalar *scalars, double param) {
  n_elementwise++;
  if (n < 1 || n > LM_BACKEND_MAX_OPERANDS || nd < 0 || nd > LM_MAX_DIMS) {
    snprintf(msg, sizeof msg, "fake elementwise: %d operands, %d dims", n, nd);
    return LM_E_ARG;
  }
  int64_t idx[LM_MAX_DIMS] = {0}, off[LM_BACKEND_MAX_OPERANDS] = {0}, total = 1;
  for (int32_t d = 0; d < nd; d++) total *= shape[d];
  if (total == 0) return 0;
  do {
    val in[3] = {{0, 0}, {0, 0}, {0, 0}};
    for (int32_t k = 1; k < n && k <= 3; k++) {
      if (data[k]) {
        in[k - 1] = load(kd, dtypes[k], (const char *)data[k] + off[k] * (int64_t)esize(dtypes[k]));
      } else if (dtypes[k] == LM_F64) {
        in[k - 1] = convert(kd, 1, scalars[k].f, 0);
      } else {
        in[k - 1] = convert(kd, 0, 0, scalars[k].i);
      }
    }
    int bad = 0;
    val r = {0, 0};
    if (is_float(kd)) r = convert(kd, 1, float_op(op, in, param, &bad), 0);
    else r.i = wrap(kd, int_op(op, in, &bad));
    if (bad) {
      snprintf(msg, sizeof msg, "fake elementwise: op %d on compute dtype %d", op, kd);
      return LM_E_ARG;
    }
    store(dtypes[0], (char *)data[0] + off[0] * (int64_t)esize(dtypes[0]), kd, r);
  } while (next_position(nd, shape, n, strides, idx, off));
  return 0;
}

static int32_t fake_reduce(int32_t op, int32_t dt, const void *x, int32_t kn, const int64_t *kshape,
                           const int64_t *kstride, int64_t rn, int64_t rs, double param, int32_t odt, void *out,
                           int64_t *indices) {
  n_reduce++;
  int64_t nout = 1, es = esize(dt);
  for (int32_t d = 0; d < kn; d++) nout *= kshape[d];
  for (int64_t o = 0; o < nout; o++) {
    int64_t off = 0, rest = o;
    for (int32_t d = kn - 1; d >= 0; d--) {
      off += rest % kshape[d] * kstride[d];
      rest /= kshape[d];
    }
    const char *p = (const char *)x + off * es;
    int fl = is_float(dt);
    /* every element as double (floats) or int64 */
    double sum = 0, prod = 1, best = 0, mean = 0, m2 = 0;
    uint64_t isum = 0, iprod = 1;
    int64_t ibest = 0, pos = 0, nonzero = 0;
    for (int64_t r = 0; r < rn; r++) {
      val v = load(fl ? LM_F64 : LM_I64, dt, p + r * rs * es);
      double f = fl ? v.f : (double)v.i;
      sum += f;
      prod *= f;
      isum += (uint64_t)v.i;
      iprod *= (uint64_t)v.i;
      nonzero += fl ? f != 0 : v.i != 0;
      int want_max = op == LM_OP_MAX || op == LM_OP_ARGMAX;
      if (r == 0) {
        best = f, ibest = v.i, pos = 0;
      } else if (fl) {
        if (!isnan(best) && (isnan(f) || (want_max ? f > best : f < best))) best = f, pos = r;
      } else if (want_max ? v.i > ibest : v.i < ibest) {
        ibest = v.i, pos = r;
      }
    }
    mean = sum / (double)rn;
    double pnorm = 0, amax = 0, amin = INFINITY;
    for (int64_t r = 0; r < rn; r++) {
      val v = load(fl ? LM_F64 : LM_I64, dt, p + r * rs * es);
      double f = fl ? v.f : (double)v.i;
      m2 += (f - mean) * (f - mean);
      double a = fabs(f);
      pnorm += param == 0 ? (f != 0) : param == 1 ? a : param == 2 ? a * a : pow(a, param);
      if (isnan(a) || isnan(amax)) amax = NAN; else if (a > amax) amax = a;
      if (isnan(a) || isnan(amin)) amin = NAN; else if (a < amin) amin = a;
    }
    val r = {0, 0};
    int32_t rkd = fl ? LM_F64 : LM_I64; /* how r holds the result */
    switch (op) {
    case LM_OP_SUM: if (fl) r.f = sum; else r.i = (int64_t)isum; break;
    case LM_OP_PROD: if (fl) r.f = prod; else r.i = (int64_t)iprod; break;
    case LM_OP_MEAN: r.f = mean; break;
    case LM_OP_MAX: case LM_OP_MIN:
      if (fl) r.f = best; else r.i = ibest;
      if (indices) indices[o] = pos;
      break;
    case LM_OP_ARGMAX: case LM_OP_ARGMIN: rkd = LM_I64; r.i = pos; break;
    case LM_OP_VAR: case LM_OP_STD:
      r.f = m2 / fmax(0.0, (double)rn - param);
      if (op == LM_OP_STD) r.f = sqrt(r.f);
      break;
    case LM_OP_NORM:
      r.f = isinf(param) ? (param > 0 ? amax : amin) : param == 0 || param == 1 ? pnorm
            : param == 2 ? sqrt(pnorm) : pow(pnorm, 1 / param);
      break;
    case LM_OP_ALL: rkd = LM_I64; r.i = nonzero == rn; break;
    case LM_OP_ANY: rkd = LM_I64; r.i = nonzero > 0; break;
    case LM_OP_COUNT_NONZERO: rkd = LM_I64; r.i = nonzero; break;
    default:
      snprintf(msg, sizeof msg, "fake reduce: op %d", op);
      return LM_E_ARG;
    }
    store(odt, (char *)out + o * esize(odt), rkd, r);
  }
  return 0;
}

static int32_t fake_gemm(int32_t dt, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha,
                         const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb, int64_t sb, double beta,
                         void *c, int64_t ldc, int64_t sc, int64_t batch) {
  n_gemm++;
  if (dt != LM_F32 && dt != LM_F64) {
    snprintf(msg, sizeof msg, "fake gemm: dtype %d", dt);
    return LM_E_ARG;
  }
  int64_t es = esize(dt);
  for (int64_t q = 0; q < batch; q++) {
    const char *A = (const char *)a + q * sa * es, *B = (const char *)b + q * sb * es;
    char *Cq = (char *)c + q * sc * es;
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        double s = 0;
        for (int64_t p = 0; p < k; p++) {
          val x = load(LM_F64, dt, A + (ta ? p * lda + i : i * lda + p) * es);
          val y = load(LM_F64, dt, B + (tb ? j * ldb + p : p * ldb + j) * es);
          s += x.f * y.f;
        }
        char *cp = Cq + (i * ldc + j) * es;
        val r = {alpha * s, 0};
        if (beta != 0) r.f += beta * load(LM_F64, dt, cp).f;
        store(dt, cp, LM_F64, r);
      }
  }
  return 0;
}

/* autocast's GEMM: the operands rounded to bf16 / f16 (src/lowp.h, the
   rounding under test elsewhere), products summed in double */
static int64_t n_gemm_lowp;
static int32_t fake_gemm_lowp(int32_t lowp, int32_t dt, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k,
                              double alpha, const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb,
                              int64_t sb, double beta, void *c, int64_t ldc, int64_t sc, int64_t batch) {
  n_gemm_lowp++;
  if (dt != LM_F32 || (lowp != 1 && lowp != 2)) {
    snprintf(msg, sizeof msg, "fake gemm_lowp: dtype %d, mode %d", dt, lowp);
    return LM_E_ARG;
  }
  for (int64_t q = 0; q < batch; q++) {
    const float *A = (const float *)a + q * sa, *B = (const float *)b + q * sb;
    float *Cq = (float *)c + q * sc;
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        double s = 0;
        for (int64_t p = 0; p < k; p++)
          s += (double)lm_round_lowp(A[ta ? p * lda + i : i * lda + p], lowp) *
               lm_round_lowp(B[tb ? j * ldb + p : p * ldb + j], lowp);
        float *cp = Cq + i * ldc + j;
        *cp = (float)(alpha * s + (beta != 0 ? beta * *cp : 0));
      }
  }
  return 0;
}

/* ---- activations (plain loops in double, rounded to the dtype on store) ---- */

static double rd(int32_t dt, const void *p, int64_t i) {
  return dt == LM_F32 ? ((const float *)p)[i] : ((const double *)p)[i];
}
static void wr(int32_t dt, void *p, int64_t i, double v) {
  if (dt == LM_F32) ((float *)p)[i] = (float)v;
  else ((double *)p)[i] = v;
}

static int32_t fake_activation(int32_t kind, int32_t mode, int32_t dt, int64_t n, void *out, const void *x,
                               const void *g, const void *w, int64_t c, int64_t inner, double a) {
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake activation: dtype %d", dt);
    return LM_E_ARG;
  }
  n_other++;
  for (int64_t k = 0; k < n; k++) {
    double v = rd(dt, x, k), gv = mode ? rd(dt, g, k) : 0, r = 0, d = 0;
    switch (kind) {
    case LM_OP_LEAKY_RELU: r = v > 0 ? v : v * a; d = v > 0 ? 1 : a; break;
    case LM_OP_ELU: r = v > 0 ? v : a * expm1(v); d = v > 0 ? 1 : a * exp(v); break;
    case LM_OP_GELU:
      if (a == 0) {
        double cdf = 0.5 * (1 + erf(v / sqrt(2)));
        r = v * cdf;
        d = cdf + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
      } else {
        double u = sqrt(2 / M_PI) * (v + 0.044715 * v * v * v), t = tanh(u);
        r = 0.5 * v * (1 + t);
        d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * sqrt(2 / M_PI) * (1 + 3 * 0.044715 * v * v);
      }
      break;
    case LM_OP_PRELU: {
      double wk = rd(dt, w, c > 1 ? k / inner % c : 0);
      r = v > 0 ? v : wk * v;
      d = v > 0 ? 1 : wk;
      if (mode == 2) { wr(dt, out, k, v > 0 ? 0 : v * gv); continue; }
      break;
    }
    default: snprintf(msg, sizeof msg, "fake activation: kind %d", kind); return LM_E_ARG;
    }
    wr(dt, out, k, mode ? gv * d : r);
  }
  return 0;
}

static int32_t fake_softmax(int32_t log_, int32_t backward, int32_t dt, int64_t outer, int64_t len, int64_t inner,
                            void *out, const void *x, const void *g) {
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake softmax: dtype %d", dt);
    return LM_E_ARG;
  }
  n_other++;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < inner; j++) {
      int64_t base = o * len * inner + j;
      if (backward) {
        double dot = 0;
        for (int64_t l = 0; l < len; l++)
          dot += log_ ? rd(dt, g, base + l * inner) : rd(dt, g, base + l * inner) * rd(dt, x, base + l * inner);
        for (int64_t l = 0; l < len; l++) {
          double gv = rd(dt, g, base + l * inner), yv = rd(dt, x, base + l * inner);
          wr(dt, out, base + l * inner, log_ ? gv - exp(yv) * dot : yv * (gv - dot));
        }
        continue;
      }
      double m = -INFINITY, s = 0;
      for (int64_t l = 0; l < len; l++) {
        double v = rd(dt, x, base + l * inner);
        m = v != v || m != m ? NAN : v > m ? v : m;
      }
      for (int64_t l = 0; l < len; l++) s += exp(rd(dt, x, base + l * inner) - m);
      for (int64_t l = 0; l < len; l++) {
        double v = rd(dt, x, base + l * inner);
        wr(dt, out, base + l * inner, log_ ? v - m - log(s) : exp(v - m) / s);
      }
    }
  return 0;
}

/* ---- losses (in double, rounded on store) ---- */

static int32_t fake_class_loss(int32_t backward, int32_t dt, int64_t N, int64_t C, int64_t S, int32_t log_input,
                               const void *x, const int64_t *target, const void *prob, const double *w,
                               int64_t ignore, double eps, void *loss, double *wt, uint8_t *bad, void *lse,
                               const void *g, int64_t gstride, void *gx, void *gt) {
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake class_loss: dtype %d", dt);
    return LM_E_ARG;
  }
  n_other++;
  const double u = eps / (double)C;
  double wsum = 0;
  for (int64_t c = 0; c < C; c++) wsum += w ? w[c] : 1;
  for (int64_t p = 0; p < N * S; p++) {
    const int64_t base = p / S * C * S + p % S;
    double l = 0;
    if (!log_input) {
      if (backward) {
        l = rd(dt, lse, p);
      } else {
        double m = -INFINITY, sum = 0;
        for (int64_t c = 0; c < C; c++) m = fmax(m, rd(dt, x, base + c * S));
        if (isinf(m)) m = 0;
        for (int64_t c = 0; c < C; c++) sum += exp(rd(dt, x, base + c * S) - m);
        l = m + log(sum);
        if (lse) wr(dt, lse, p, l);
      }
    }
    if (!backward) {
      double cost = 0, wk = 1;
      int isbad = 0;
      if (prob) {
        for (int64_t c = 0; c < C; c++)
          cost += (w ? w[c] : 1) * ((1 - eps) * rd(dt, prob, base + c * S) + u) * (l - rd(dt, x, base + c * S));
      } else {
        int64_t k = target[p];
        if (k == ignore || k < 0 || k >= C) {
          wk = 0;
          isbad = k != ignore;
        } else {
          wk = w ? w[k] : 1;
          cost = wk * (l - rd(dt, x, base + k * S));
          if (eps > 0) {
            double sx = 0;
            for (int64_t c = 0; c < C; c++) sx += (w ? w[c] : 1) * (l - rd(dt, x, base + c * S));
            cost = (1 - eps) * cost + u * sx;
          }
        }
      }
      wr(dt, loss, p, cost);
      wt[p] = wk;
      bad[p] = (uint8_t)isbad;
      continue;
    }
    double gv = rd(dt, g, p * gstride);
    if (prob) {
      double a = 0;
      for (int64_t c = 0; c < C; c++) a += (w ? w[c] : 1) * ((1 - eps) * rd(dt, prob, base + c * S) + u);
      for (int64_t c = 0; c < C; c++) {
        int64_t i = base + c * S;
        double wc = w ? w[c] : 1, coef = wc * ((1 - eps) * rd(dt, prob, i) + u);
        if (gx) wr(dt, gx, i, gv * (a * exp(rd(dt, x, i) - l) - coef));
        if (gt) wr(dt, gt, i, gv * (1 - eps) * wc * (l - rd(dt, x, i)));
      }
      continue;
    }
    if (!gx) continue;
    int64_t k = target[p];
    int skip = k == ignore || k < 0 || k >= C;
    if (skip) gv = 0;
    double wk = skip ? 0 : w ? w[k] : 1, a = log_input ? 0 : (1 - eps) * wk + u * wsum;
    for (int64_t c = 0; c < C; c++) {
      int64_t i = base + c * S;
      double r = gv * (a * (log_input ? 0 : exp(rd(dt, x, i) - l)) - u * (w ? w[c] : 1));
      if (c == k && !skip) r -= gv * (1 - eps) * wk;
      wr(dt, gx, i, r);
    }
  }
  return 0;
}

static int32_t fake_bce_logits(int32_t mode, int32_t dt, int64_t n, void *out, const void *x, const void *t,
                               const void *pw, double scale) {
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake bce_logits: dtype %d", dt);
    return LM_E_ARG;
  }
  n_other++;
  for (int64_t i = 0; i < n; i++) {
    double xv = rd(dt, x, i), tv = rd(dt, t, i), pv = pw ? rd(dt, pw, i) : 1;
    double sp = fmax(-xv, 0) + log1p(exp(-fabs(xv))), r; /* log(1 + exp(-x)) */
    if (mode == 0) r = (1 - tv) * xv + (1 + (pv - 1) * tv) * sp;
    else if (mode == 1) r = (1 - tv) - (1 + (pv - 1) * tv) / (1 + exp(xv));
    else r = -xv + (pv - 1) * sp;
    wr(dt, out, i, r * scale);
  }
  return 0;
}

/* ---- creation and random numbers ---- */

/* a double into any dtype, as a copy from f64 converts it */
static void put_double(int32_t dt, void *p, int64_t i, double v) {
  switch (dt) {
  case LM_F32: ((float *)p)[i] = (float)v; break;
  case LM_F64: ((double *)p)[i] = v; break;
  case LM_I32: ((int32_t *)p)[i] = (int32_t)v; break;
  case LM_I64: ((int64_t *)p)[i] = (int64_t)v; break;
  case LM_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
  default: ((uint8_t *)p)[i] = v != 0; break;
  }
}

static int32_t fake_sequence(int32_t dt, int64_t n, void *out, double start, double step, double stop, int64_t half) {
  n_other++;
  for (int64_t i = 0; i < n; i++) put_double(dt, out, i, i < half ? start + (double)i * step : stop - (double)(n - 1 - i) * step);
  return 0;
}

/* Philox4x32-10 with the counter in the first two words */
static void philox(uint64_t ctr, uint64_t key, uint32_t w[4]) {
  uint32_t c[4] = {(uint32_t)ctr, (uint32_t)(ctr >> 32), 0, 0}, k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
    c[1] = (uint32_t)p1;
    c[3] = (uint32_t)p0;
    c[0] = n0;
    c[2] = n2;
  }
  memcpy(w, c, sizeof c);
}

static int32_t fake_random(int32_t kind, int32_t dt, int64_t n, void *out, uint64_t key, uint64_t base, double a,
                           double b, int64_t ilo, uint64_t irange, const void *probs) {
  n_other++;
  for (int64_t i = 0; i < n; i++) {
    uint32_t w[4];
    philox(base + (uint64_t)i, key, w);
    uint64_t bits = ((uint64_t)w[1] << 32) | w[0];
    double u = (double)(bits >> 11) * 0x1.0p-53;
    switch (kind) {
    case LM_RNG_UNIFORM:
      if (dt == LM_F32) {
        float lo = (float)a, hi = (float)b, v = lo + (float)(w[0] >> 8) * 0x1.0p-24f * (hi - lo);
        ((float *)out)[i] = v < hi ? v : fmaxf(nextafterf(hi, -INFINITY), lo);
      } else {
        double v = a + u * (b - a);
        ((double *)out)[i] = v < b ? v : fmax(nextafter(b, -INFINITY), a);
      }
      break;
    case LM_RNG_NORMAL: {
      double u1 = (double)((bits >> 11) + 1) * 0x1.0p-53;
      double u2 = (double)(((((uint64_t)w[3] << 32) | w[2])) >> 11) * 0x1.0p-53;
      put_double(dt, out, i, a + b * (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)));
      break;
    }
    case LM_RNG_BERNOULLI: put_double(dt, out, i, u < a ? 1 : 0); break;
    case LM_RNG_BERNOULLI_T: put_double(dt, out, i, u < rd(dt, probs, i) ? 1 : 0); break;
    case LM_RNG_RANDINT: {
      int64_t v = (int64_t)((uint64_t)ilo + bits % irange);
      if (dt == LM_BOOL) ((uint8_t *)out)[i] = v != 0;
      else if (dt == LM_I64) ((int64_t *)out)[i] = v;
      else put_double(dt, out, i, (double)v);
      break;
    }
    default: snprintf(msg, sizeof msg, "fake random: kind %d", kind); return LM_E_ARG;
    }
  }
  return 0;
}

/* ---- optimizers (in double, rounded on store) ---- */

static int32_t fake_optim_step(int32_t kind, int32_t dt, int32_t np, const int64_t *numel, void *const *data,
                               const double *per, const double *hp) {
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake optim_step: dtype %d", dt);
    return LM_E_ARG;
  }
  n_other++;
  for (int32_t j = 0; j < np; j++) {
    void *p = data[j], *g = kind == LM_OPTIM_SCALE ? NULL : data[np + j];
    void *s1 = kind == LM_OPTIM_SCALE ? NULL : data[2 * np + j];
    void *s2 = kind == LM_OPTIM_SGD || kind == LM_OPTIM_SCALE ? NULL : data[3 * np + j];
    void *s3 = kind == LM_OPTIM_SGD || kind == LM_OPTIM_SCALE ? NULL : data[4 * np + j];
    for (int64_t i = 0; i < numel[j]; i++) {
      double pv = rd(dt, p, i);
      if (kind == LM_OPTIM_SCALE) { wr(dt, p, i, pv * hp[0]); continue; }
      double d = rd(dt, g, i);
      if (hp[LM_HP_MAXIMIZE] != 0) d = -d;
      if (kind == LM_OPTIM_SGD) {
        d += hp[LM_HP_WEIGHT_DECAY] * pv;
        if (s1) {
          double m = per[2 * j] != 0 ? d : rd(dt, s1, i) * hp[LM_HP_MOMENTUM] + (1 - hp[LM_HP_DAMPENING]) * d;
          wr(dt, s1, i, m);
          d = hp[LM_HP_NESTEROV] != 0 ? d + hp[LM_HP_MOMENTUM] * m : m;
        }
        wr(dt, p, i, pv - hp[LM_HP_LR] * d);
      } else if (kind == LM_OPTIM_ADAM) {
        if (hp[LM_HP_DECOUPLED] != 0) pv *= 1 - hp[LM_HP_LR] * hp[LM_HP_WEIGHT_DECAY];
        else d += hp[LM_HP_WEIGHT_DECAY] * pv;
        double m = rd(dt, s1, i) * hp[LM_HP_BETA1] + (1 - hp[LM_HP_BETA1]) * d;
        double v = rd(dt, s2, i) * hp[LM_HP_BETA2] + (1 - hp[LM_HP_BETA2]) * d * d;
        wr(dt, s1, i, m);
        wr(dt, s2, i, v);
        if (s3) {
          double top = rd(dt, s3, i);
          if (v > top || v != v) top = v;
          wr(dt, s3, i, top);
          v = top;
        }
        wr(dt, p, i, pv + per[2 * j] * (m / (sqrt(v) / per[2 * j + 1] + hp[LM_HP_EPS])));
      } else {
        d += hp[LM_HP_WEIGHT_DECAY] * pv;
        double a = hp[LM_HP_ALPHA], sq = rd(dt, s1, i) * a + (1 - a) * d * d, avg;
        wr(dt, s1, i, sq);
        if (s2) {
          double ga = rd(dt, s2, i) * a + (1 - a) * d;
          wr(dt, s2, i, ga);
          avg = sqrt(sq - ga * ga);
        } else {
          avg = sqrt(sq);
        }
        avg += hp[LM_HP_EPS];
        if (s3) {
          double m = rd(dt, s3, i) * hp[LM_HP_MOMENTUM] + d / avg;
          wr(dt, s3, i, m);
          wr(dt, p, i, pv - hp[LM_HP_LR] * m);
        } else {
          wr(dt, p, i, pv - hp[LM_HP_LR] * (d / avg));
        }
      }
    }
  }
  return 0;
}

/* ---- gather / scatter along a dim ---- */

static int32_t fake_index_along(int32_t mode, int32_t dt, int32_t nd, const int64_t *shape, int32_t dim, void *out,
                                const int64_t *ost, const void *src, const int64_t *sst, const int64_t *idx,
                                const int64_t *ist) {
  n_other++;
  int64_t n = 1, es = esize(dt);
  for (int32_t d = 0; d < nd; d++) n *= shape[d];
  if (mode == LM_INDEX_SCATTER_ADD && (dt == LM_U8 || dt == LM_BOOL)) {
    snprintf(msg, sizeof msg, "scatter_add of dtype %d is not supported on this device", dt);
    return LM_E_DTYPE;
  }
  for (int64_t k = 0; k < n; k++) {
    int64_t o = 0, s = 0, ix = 0, rest = k, at = 0;
    for (int32_t d = nd - 1; d >= 0; d--) {
      int64_t c = rest % shape[d];
      rest /= shape[d];
      ix += c * ist[d];
      if (d == dim) { at = c; continue; }
      o += c * ost[d];
      s += c * sst[d];
    }
    int64_t v = idx[ix];
    char *dst = (char *)out + (o + (mode == LM_INDEX_GATHER ? at : v) * ost[dim]) * es;
    const char *from = (const char *)src + (s + (mode == LM_INDEX_GATHER ? v : at) * sst[dim]) * es;
    if (mode != LM_INDEX_SCATTER_ADD) {
      memcpy(dst, from, (size_t)es);
    } else {
      int32_t kd = is_float(dt) ? LM_F64 : LM_I64;
      val x = load(kd, dt, dst), y = load(kd, dt, from), r = {x.f + y.f, (int64_t)((uint64_t)x.i + (uint64_t)y.i)};
      store(dt, dst, kd, r);
    }
  }
  return 0;
}

static int32_t fake_cumsum(int32_t dt, int32_t nd, const int64_t *shape, int32_t dim, void *out, const int64_t *ost,
                           const void *x, const int64_t *xst) {
  n_other++;
  int64_t lines = 1, es = esize(dt);
  for (int32_t d = 0; d < nd; d++)
    if (d != dim) lines *= shape[d];
  for (int64_t line = 0; line < lines; line++) {
    int64_t o = 0, s = 0, rest = line;
    for (int32_t d = nd - 1; d >= 0; d--) {
      if (d == dim) continue;
      o += rest % shape[d] * ost[d];
      s += rest % shape[d] * xst[d];
      rest /= shape[d];
    }
    int32_t kd = is_float(dt) ? LM_F64 : LM_I64;
    val acc = {0, 0};
    for (int64_t r = 0; r < shape[dim]; r++) {
      val v = load(kd, dt, (const char *)x + (s + r * xst[dim]) * es);
      acc.f += v.f;
      acc.i = (int64_t)((uint64_t)acc.i + (uint64_t)v.i);
      store(dt, (char *)out + (o + r * ost[dim]) * es, kd, acc);
    }
  }
  return 0;
}

/* ---- layer families ---- */

static int64_t n_layer; /* calls of the layer kernels below */

/* im2col as backend.h describes it; col2im as the adjoint: every column
   entry added (in double) into the image position it read. */
static int32_t fake_im2col(int32_t dt, int32_t to_cols, int64_t n, int64_t c, const int64_t *geom, void *img,
                           void *cols) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake im2col: dtype %d", dt);
    return LM_E_DTYPE;
  }
  const int64_t *I = geom, *O = geom + 3, *K = geom + 6, *S = geom + 9, *P = geom + 12, *D = geom + 15;
  int64_t isz = I[0] * I[1] * I[2], osz = O[0] * O[1] * O[2], ksz = K[0] * K[1] * K[2], es = esize(dt);
  double *acc = NULL;
  if (!to_cols) {
    acc = calloc((size_t)(n * c * isz + 1), sizeof *acc);
    if (!acc) {
      snprintf(msg, sizeof msg, "fake col2im: out of memory");
      return LM_E_OOM;
    }
  }
  int64_t e = 0;
  for (int64_t s = 0; s < n * c; s++)
    for (int64_t kd = 0; kd < K[0]; kd++)
      for (int64_t kh = 0; kh < K[1]; kh++)
        for (int64_t kw = 0; kw < K[2]; kw++)
          for (int64_t od = 0; od < O[0]; od++)
            for (int64_t oh = 0; oh < O[1]; oh++)
              for (int64_t ow = 0; ow < O[2]; ow++, e++) {
                int64_t id = od * S[0] - P[0] + kd * D[0], ih = oh * S[1] - P[1] + kh * D[1];
                int64_t iw = ow * S[2] - P[2] + kw * D[2];
                int inside = id >= 0 && id < I[0] && ih >= 0 && ih < I[1] && iw >= 0 && iw < I[2];
                int64_t at = s * isz + (id * I[1] + ih) * I[2] + iw;
                char *col = (char *)cols + e * es;
                if (to_cols) {
                  double v = inside ? (dt == LM_F32 ? ((const float *)img)[at] : ((const double *)img)[at]) : 0;
                  if (dt == LM_F32) *(float *)col = (float)v;
                  else *(double *)col = v;
                } else if (inside) {
                  acc[at] += dt == LM_F32 ? *(const float *)col : *(const double *)col;
                }
              }
  (void)ksz, (void)osz;
  if (!to_cols) {
    for (int64_t i = 0; i < n * c * isz; i++) {
      if (dt == LM_F32) ((float *)img)[i] = (float)acc[i];
      else ((double *)img)[i] = acc[i];
    }
    free(acc);
  }
  return 0;
}

/* Windows along one dim as backend.h describes them: taps lo, lo + step,
   ... below hi; len is the average pool's share of the divisor. */
static void fake_window(int32_t op, const int64_t *geom, int d, int64_t o, int32_t count_pad, int64_t *lo, int64_t *hi,
                        int64_t *step, int64_t *len) {
  int64_t in = geom[d], out = geom[3 + d], k = geom[6 + d], s = geom[9 + d], pad = geom[12 + d], dil = geom[15 + d];
  if (op == LM_OP_ADAPTIVE_AVG_POOL) {
    *lo = (int64_t)floor((double)o * in / out);
    *hi = (int64_t)ceil((double)(o + 1) * in / out);
    *step = 1;
    *len = *hi - *lo;
    return;
  }
  int64_t start = o * s - pad, end = start + (k - 1) * dil + 1;
  *lo = start;
  while (*lo < 0) *lo += dil;
  *hi = end < in ? end : in;
  *step = dil;
  *len = 0;
  for (int64_t t = *lo; t < *hi; t += dil) ++*len;
  if (count_pad) *len = (end < in + pad ? end : in + pad) - start;
}

static int32_t fake_pool(int32_t op, int32_t dt, int32_t backward, int64_t planes, const int64_t *geom,
                         int32_t count_pad, double divisor, const void *src, void *dst, int64_t *indices) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake pool: dtype %d", dt);
    return LM_E_DTYPE;
  }
  const int64_t *I = geom, *O = geom + 3;
  int64_t isz = I[0] * I[1] * I[2], osz = O[0] * O[1] * O[2];
  double *acc = NULL;
  if (backward && !(acc = calloc((size_t)(planes * isz + 1), sizeof *acc))) {
    snprintf(msg, sizeof msg, "fake pool: out of memory");
    return LM_E_OOM;
  }
#define AT(p, i) (dt == LM_F32 ? (double)((const float *)(p))[i] : ((const double *)(p))[i])
  for (int64_t pl = 0; pl < planes; pl++)
    for (int64_t od = 0; od < O[0]; od++)
      for (int64_t oh = 0; oh < O[1]; oh++)
        for (int64_t ow = 0; ow < O[2]; ow++) {
          int64_t lo[3], hi[3], st[3], len[3], oo[3] = {od, oh, ow};
          for (int d = 0; d < 3; d++) fake_window(op, geom, d, oo[d], count_pad, &lo[d], &hi[d], &st[d], &len[d]);
          int64_t o = pl * osz + (od * O[1] + oh) * O[2] + ow;
          double div = divisor > 0 ? divisor : (double)(len[0] * len[1] * len[2]);
          double best = -INFINITY, sum = 0;
          int64_t best_i = (lo[0] * I[1] + lo[1]) * I[2] + lo[2];
          if (backward && op == LM_OP_MAX_POOL) {
            int64_t k = indices[o];
            if (k >= 0 && k < isz) acc[pl * isz + k] += AT(src, o);
            continue;
          }
          for (int64_t id = lo[0]; id < hi[0]; id += st[0])
            for (int64_t ih = lo[1]; ih < hi[1]; ih += st[1])
              for (int64_t iw = lo[2]; iw < hi[2]; iw += st[2]) {
                int64_t i = (id * I[1] + ih) * I[2] + iw;
                if (backward) {
                  acc[pl * isz + i] += AT(src, o) / div;
                  continue;
                }
                double v = AT(src, pl * isz + i);
                sum += v;
                if (v > best || isnan(v)) best = v, best_i = i;
              }
          if (backward) continue;
          double r = op == LM_OP_MAX_POOL ? best : sum / div;
          if (dt == LM_F32) ((float *)dst)[o] = (float)r;
          else ((double *)dst)[o] = r;
          if (op == LM_OP_MAX_POOL && indices) indices[o] = best_i;
        }
#undef AT
  if (backward) {
    for (int64_t i = 0; i < planes * isz; i++) {
      if (dt == LM_F32) ((float *)dst)[i] = (float)acc[i];
      else ((double *)dst)[i] = acc[i];
    }
    free(acc);
  }
  return 0;
}

static int32_t fake_norm_pass(int32_t kind, int32_t dt, const int64_t *l, const void *x, const void *g, void *y,
                              double *coef, const double *w, const double *bias, double *sums) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake norm_pass: dtype %d", dt);
    return LM_E_DTYPE;
  }
  int64_t G = l[0], len = l[2] * l[3];
  double *K = coef, *A = coef + G, *B = A + G, *Cc = B + G;
#define AT(p, i) (dt == LM_F32 ? (double)((const float *)(p))[i] : ((const double *)(p))[i])
  for (int64_t q = 0; q < G; q++) {
    double s1 = 0, s2 = 0;
    if (kind == LM_NORM_MOMENTS) K[q] = len ? AT(x, q * l[1]) : 0;
    for (int64_t j = 0; j < len; j++) {
      int64_t o = q * l[1] + (j / l[3]) * l[4] + j % l[3];
      double xv = AT(x, o), r;
      switch (kind) {
      case LM_NORM_MOMENTS: s1 += xv - K[q], s2 += (xv - K[q]) * (xv - K[q]); continue;
      case LM_NORM_GRAD_SUMS: {
        double gw = AT(g, o) * (w ? w[j] : 1);
        s1 += gw, s2 += gw * (xv - K[q]);
        continue;
      }
      case LM_NORM_AFFINE: r = (A[q] * xv + B[q]) * (w ? w[j] : 1) + (bias ? bias[j] : 0); break;
      default: r = A[q] * AT(g, o) * (w ? w[j] : 1) + B[q] * xv + Cc[q]; break;
      }
      if (dt == LM_F32) ((float *)y)[o] = (float)r;
      else ((double *)y)[o] = r;
    }
    if (kind == LM_NORM_MOMENTS || kind == LM_NORM_GRAD_SUMS) sums[2 * q] = s1, sums[2 * q + 1] = s2;
  }
#undef AT
  return 0;
}

/* The cells in double, rounded to the dtype at each store. */
static int32_t fake_rnn_cell(int32_t op, int32_t dt, int32_t backward, int64_t n, int64_t H, const void *const *in,
                             const int64_t *ld, void *const *out) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake rnn_cell: dtype %d", dt);
    return LM_E_DTYPE;
  }
#define IN(k, b, i) (dt == LM_F32 ? (double)((const float *)in[k])[(b) * ld[k] + (i)] : ((const double *)in[k])[(b) * ld[k] + (i)])
#define PUT(k, i, v) (dt == LM_F32 ? (void)(((float *)out[k])[i] = (float)(v)) : (void)(((double *)out[k])[i] = (v)))
#define RD(v) (dt == LM_F32 ? (double)(float)(v) : (v))
  for (int64_t b = 0; b < n; b++)
    for (int64_t j = 0; j < H; j++) {
      if (op == LM_OP_LSTM_CELL && !backward) {
        double i = RD(1 / (1 + exp(-(IN(0, b, j) + IN(1, b, j))))), f = RD(1 / (1 + exp(-(IN(0, b, H + j) + IN(1, b, H + j)))));
        double g = RD(tanh(IN(0, b, 2 * H + j) + IN(1, b, 2 * H + j))), o = RD(1 / (1 + exp(-(IN(0, b, 3 * H + j) + IN(1, b, 3 * H + j)))));
        double c = RD(f * IN(2, b, j) + i * g), tc = RD(tanh(c));
        PUT(1, b * H + j, c);
        PUT(0, b * H + j, o * tc);
        double w[5] = {i, f, g, o, tc};
        for (int k = 0; k < 5; k++) PUT(2, b * 5 * H + k * H + j, w[k]);
      } else if (op == LM_OP_LSTM_CELL) {
        double i = IN(3, b, j), f = IN(3, b, H + j), g = IN(3, b, 2 * H + j), o = IN(3, b, 3 * H + j), tc = IN(3, b, 4 * H + j);
        double dh = IN(0, b, j), dct = IN(1, b, j) + dh * o * (1 - tc * tc);
        PUT(0, b * 4 * H + j, dct * g * i * (1 - i));
        PUT(0, b * 4 * H + H + j, dct * IN(2, b, j) * f * (1 - f));
        PUT(0, b * 4 * H + 2 * H + j, dct * i * (1 - g * g));
        PUT(0, b * 4 * H + 3 * H + j, dh * tc * o * (1 - o));
        if (out[1]) PUT(1, b * H + j, dct * f);
      } else if (!backward) {
        double r = RD(1 / (1 + exp(-(IN(0, b, j) + IN(1, b, j))))), z = RD(1 / (1 + exp(-(IN(0, b, H + j) + IN(1, b, H + j)))));
        double hn = IN(1, b, 2 * H + j), nn = RD(tanh(IN(0, b, 2 * H + j) + r * hn));
        PUT(0, b * H + j, (1 - z) * nn + z * IN(2, b, j));
        double w[4] = {r, z, nn, hn};
        for (int k = 0; k < 4; k++) PUT(1, b * 4 * H + k * H + j, w[k]);
      } else {
        double r = IN(2, b, j), z = IN(2, b, H + j), nn = IN(2, b, 2 * H + j), hn = IN(2, b, 3 * H + j), dh = IN(0, b, j);
        double dn = dh * (1 - z) * (1 - nn * nn), dz = dh * (IN(1, b, j) - nn) * z * (1 - z), dr = dn * hn * r * (1 - r);
        PUT(0, b * 3 * H + j, dr), PUT(1, b * 3 * H + j, dr);
        PUT(0, b * 3 * H + H + j, dz), PUT(1, b * 3 * H + H + j, dz);
        PUT(0, b * 3 * H + 2 * H + j, dn), PUT(1, b * 3 * H + 2 * H + j, dn * r);
        if (out[2]) PUT(2, b * H + j, dh * z);
      }
    }
#undef IN
#undef PUT
#undef RD
  return 0;
}

/* Interpolation from backend.h's tables: forward reads, backward scatters
   (in double) what each output read; the lo/hi ranges are not used. */
static int32_t fake_interp(int32_t dt, int32_t backward, int32_t nd, int32_t nearest, int64_t planes,
                           const int64_t *sizes, const void *tables, const void *src, void *dst) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake interp: dtype %d", dt);
    return LM_E_DTYPE;
  }
  const int64_t *i0[3], *i1[3];
  const double *w0[3], *w1[3];
  const char *t = tables;
  for (int d = 0; d < 3; d++) {
    int64_t o = sizes[3 + d];
    i0[d] = (const int64_t *)t, i1[d] = i0[d] + o, w0[d] = (const double *)(i1[d] + o), w1[d] = w0[d] + o;
    t = (const char *)(w1[d] + o + 2 * sizes[d]);
  }
  int64_t isz = sizes[0] * sizes[1] * sizes[2], osz = sizes[3] * sizes[4] * sizes[5];
  double *acc = NULL;
  if (backward && !(acc = calloc((size_t)(planes * isz + 1), sizeof *acc))) {
    snprintf(msg, sizeof msg, "fake interp: out of memory");
    return LM_E_OOM;
  }
  (void)nd;
  for (int64_t pl = 0; pl < planes; pl++)
    for (int64_t od = 0; od < sizes[3]; od++)
      for (int64_t oh = 0; oh < sizes[4]; oh++)
        for (int64_t ow = 0; ow < sizes[5]; ow++) {
          int64_t o = pl * osz + (od * sizes[4] + oh) * sizes[5] + ow;
          double g = backward ? (dt == LM_F32 ? ((const float *)src)[o] : ((const double *)src)[o]) : 0, v = 0;
          for (int cd = 0; cd < 2; cd++)
            for (int ch = 0; ch < 2; ch++)
              for (int cw = 0; cw < 2; cw++) {
                if (nearest && (cd || ch || cw)) continue;
                int64_t id = cd ? i1[0][od] : i0[0][od], ih = ch ? i1[1][oh] : i0[1][oh], iw = cw ? i1[2][ow] : i0[2][ow];
                double w = (cd ? w1[0][od] : w0[0][od]) * (ch ? w1[1][oh] : w0[1][oh]) * (cw ? w1[2][ow] : w0[2][ow]);
                if (nearest) w = 1;
                int64_t i = pl * isz + (id * sizes[1] + ih) * sizes[2] + iw;
                if (backward) acc[i] += g * w;
                else v += w * (dt == LM_F32 ? ((const float *)src)[i] : ((const double *)src)[i]);
              }
          if (backward) continue;
          if (dt == LM_F32) ((float *)dst)[o] = (float)v;
          else ((double *)dst)[o] = v;
        }
  if (backward) {
    for (int64_t i = 0; i < planes * isz; i++) {
      if (dt == LM_F32) ((float *)dst)[i] = (float)acc[i];
      else ((double *)dst)[i] = acc[i];
    }
    free(acc);
  }
  return 0;
}

/* grid_sample with resample.c's rules, in double, point by point. */
typedef struct fake_axis { int64_t i0; double w0, w1, mult; } fake_axis;
static fake_axis fake_axis_at(int32_t flags, double gv, int64_t size) {
  fake_axis a;
  int nearest = flags & 1, border = flags & 2, align = flags & 4;
  double c = align ? (gv + 1) / 2 * (double)(size - 1) : ((gv + 1) * (double)size - 1) / 2;
  a.mult = align ? (double)(size - 1) / 2 : (double)size / 2;
  if (border) {
    if (!(c > 0)) c = 0, a.mult = 0;
    else if (c >= (double)(size - 1)) c = (double)(size - 1), a.mult = 0;
  }
  double f = nearest ? nearbyint(c) : floor(c);
  a.i0 = f >= -1 && f <= (double)size ? (int64_t)f : -2;
  a.w1 = nearest ? 0 : c - f;
  a.w0 = nearest ? 1 : (f + 1) - c;
  return a;
}

static int32_t fake_grid_sample(int32_t dt, int32_t backward, int32_t nd, int32_t flags, int64_t N, int64_t C, int64_t P,
                                const int64_t *in, const void *x, const void *grid, const void *g, void *y, void *ggrid) {
  n_layer++;
  if (!is_float(dt)) {
    snprintf(msg, sizeof msg, "fake grid_sample: dtype %d", dt);
    return LM_E_DTYPE;
  }
#define V(p, i) (dt == LM_F32 ? (double)((const float *)(p))[i] : ((const double *)(p))[i])
#define SET(p, i, v) (dt == LM_F32 ? (void)(((float *)(p))[i] = (float)(v)) : (void)(((double *)(p))[i] = (v)))
  int64_t plane = in[0] * in[1] * in[2];
  int nearest = flags & 1;
  if (backward && y)
    for (int64_t i = 0; i < N * C * plane; i++) SET(y, i, 0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t p = 0; p < P; p++) {
      fake_axis ax[3] = {{0, 1, 0, 0}, {0, 1, 0, 0}, {0, 1, 0, 0}};
      for (int c = 0; c < nd; c++) ax[2 - c] = fake_axis_at(flags, V(grid, (n * P + p) * nd + c), in[2 - c]);
      double acc[3] = {0, 0, 0};
      int nk = nd == 3 && !nearest ? 2 : 1, nh = nearest ? 1 : 2;
      for (int64_t ch = 0; ch < C; ch++) {
        int64_t q = n * C + ch;
        double v = 0, gv = backward ? V(g, q * P + p) : 0;
        for (int a = 0; a < nk; a++)
          for (int b = 0; b < nh; b++)
            for (int c = 0; c < nh; c++) {
              int64_t id = ax[0].i0 + a, ih = ax[1].i0 + b, iw = ax[2].i0 + c;
              if ((nd == 3 && (id < 0 || id >= in[0])) || ih < 0 || ih >= in[1] || iw < 0 || iw >= in[2]) continue;
              if (nd == 2) id = 0;
              double wd = nd == 3 ? (a ? ax[0].w1 : ax[0].w0) : 1, wh = b ? ax[1].w1 : ax[1].w0, ww = c ? ax[2].w1 : ax[2].w0;
              int64_t off = q * plane + (id * in[1] + ih) * in[2] + iw;
              double w = ww * wh * wd, xv = V(x, off);
              if (!backward) {
                v += w * xv;
              } else {
                if (y) SET(y, off, V(y, off) + (dt == LM_F32 ? (double)(float)(w * gv) : w * gv));
                acc[2] += xv * gv * (c ? 1 : -1) * wh * wd;
                acc[1] += xv * gv * (b ? 1 : -1) * ww * wd;
                acc[0] += xv * gv * (a ? 1 : -1) * ww * wh;
              }
            }
        if (!backward) SET(y, q * P + p, v);
      }
      if (backward && ggrid)
        for (int c = 0; c < nd; c++) SET(ggrid, (n * P + p) * nd + c, nearest ? 0 : acc[2 - c] * ax[2 - c].mult);
    }
#undef V
#undef SET
  return 0;
}

/* A library convolution by direct loops (in double), standing for cuDNN so
   that the specs run conv.c's conv_lib path: it wants a 64-byte workspace
   (checked), and declines dilated cases (so the fallback to im2col runs
   too). */
static int64_t n_conv_lib;
static int32_t fake_conv_lib(int32_t kind, int32_t dt, int64_t n, int64_t img_c, int64_t col_c, int64_t groups,
                             const int64_t *geom, const void *img, const void *w, const void *col, void *out, void *ws,
                             size_t *ws_bytes) {
  const int64_t *I = geom, *O = geom + 3, *K = geom + 6, *S = geom + 9, *P = geom + 12, *D = geom + 15;
  if (!is_float(dt) || D[0] != 1 || D[1] != 1 || D[2] != 1) {
    snprintf(msg, sizeof msg, "fake conv_lib: declined");
    return LM_E_UNSUPPORTED;
  }
  *ws_bytes = 64;
  if (!ws) return 0;
  ((char *)ws)[63] = 1; /* the workspace must be writable device memory */
  n_conv_lib++, n_layer++;
  int64_t isz = I[0] * I[1] * I[2], osz = O[0] * O[1] * O[2], ksz = K[0] * K[1] * K[2];
  int64_t cg = img_c / groups, mg = col_c / groups;
  int64_t nout = kind == 0 ? n * col_c * osz : kind == 1 ? n * img_c * isz : col_c * cg * ksz;
  double *acc = calloc((size_t)(nout + 1), sizeof *acc);
  if (!acc) return LM_E_OOM;
#define RD(p, i) (dt == LM_F32 ? (double)((const float *)(p))[i] : ((const double *)(p))[i])
  for (int64_t b = 0; b < n; b++)
    for (int64_t co = 0; co < col_c; co++)
      for (int64_t ci = 0; ci < cg; ci++)
        for (int64_t k = 0; k < ksz; k++) {
          int64_t kd = k / (K[1] * K[2]), kh = k / K[2] % K[1], kw = k % K[2];
          int64_t wi = (co * cg + ci) * ksz + k, cin = (co / mg) * cg + ci;
          for (int64_t o = 0; o < osz; o++) {
            int64_t od = o / (O[1] * O[2]), oh = o / O[2] % O[1], ow = o % O[2];
            int64_t id = od * S[0] - P[0] + kd, ih = oh * S[1] - P[1] + kh, iw = ow * S[2] - P[2] + kw;
            if (id < 0 || id >= I[0] || ih < 0 || ih >= I[1] || iw < 0 || iw >= I[2]) continue;
            int64_t ii = (b * img_c + cin) * isz + (id * I[1] + ih) * I[2] + iw, oi = (b * col_c + co) * osz + o;
            if (kind == 0) acc[oi] += RD(w, wi) * RD(img, ii);
            else if (kind == 1) acc[ii] += RD(w, wi) * RD(col, oi);
            else acc[wi] += RD(col, oi) * RD(img, ii);
          }
        }
#undef RD
  for (int64_t i = 0; i < nout; i++) {
    if (dt == LM_F32) ((float *)out)[i] = (float)acc[i];
    else ((double *)out)[i] = acc[i];
  }
  free(acc);
  return 0;
}

/* ---- sorting and pinned host memory ---- */

static int64_t n_sort, pinned_outstanding, pinned_allocs, pinned_frees, async_bytes;

/* A row's element as a sort key: (class, value) with class 0 numbers, 1 NaN. */
typedef struct sort_key {
  int nan;
  double f;
  int64_t i;
} sort_key;

/* -1, 0, 1 as a goes before, ties, or goes after b, ascending */
static int key_cmp(int32_t dt, sort_key a, sort_key b) {
  if (is_float(dt)) {
    if (a.nan != b.nan) return a.nan ? 1 : -1;
    if (a.nan) return 0;
    return a.f < b.f ? -1 : a.f > b.f; /* -0 == +0 */
  }
  return a.i < b.i ? -1 : a.i > b.i;
}

static int32_t fake_sort(int32_t dt, int64_t rows, int64_t len, int64_t k, int32_t descending, const void *x,
                         void *values, int64_t *indices, void *work) {
  n_other++;
  n_sort++;
  if (rows < 0 || len < 1 || k < 1 || k > len) {
    snprintf(msg, sizeof msg, "fake sort: bad sizes");
    return LM_E_ARG;
  }
  int64_t *order = work; /* insertion sort of positions: stable, written for clarity */
  int64_t es = esize(dt);
  for (int64_t r = 0; r < rows; r++) {
    const char *row = (const char *)x + r * len * es;
    sort_key *keys = malloc((size_t)len * sizeof *keys);
    if (!keys) return LM_E_OOM;
    for (int64_t j = 0; j < len; j++) {
      sort_key q = {0, 0, 0};
      if (is_float(dt)) {
        q.f = rd(dt, row, j);
        q.nan = q.f != q.f;
      } else {
        val v = load(dt == LM_BOOL ? LM_U8 : LM_I64, dt, row + j * es);
        q.i = dt == LM_BOOL ? v.i != 0 : v.i;
      }
      keys[j] = q;
      int64_t at = j;
      while (at > 0) {
        int c = key_cmp(dt, keys[order[at - 1]], q);
        if (descending ? c >= 0 : c <= 0) break; /* ties stay in original order */
        order[at] = order[at - 1];
        at--;
      }
      order[at] = j;
    }
    for (int64_t j = 0; j < k; j++) {
      if (values) memcpy((char *)values + (r * k + j) * es, row + order[j] * es, (size_t)es);
      if (indices) indices[r * k + j] = order[j];
    }
    free(keys);
  }
  return 0;
}

/* pinned memory: malloc with a leading flag word, so a block that is not
   ours is caught */
#define PINNED 0x70696e6e65646d65ull /* "pinnedme" */
static int32_t fake_host_alloc(size_t nbytes, void **ptr) {
  uint64_t *h = malloc(sizeof(uint64_t) * 2 + nbytes);
  if (!h) {
    snprintf(msg, sizeof msg, "fake host_alloc: out of memory");
    return LM_E_OOM;
  }
  h[0] = PINNED;
  *ptr = h + 2;
  pinned_outstanding++;
  pinned_allocs++;
  return 0;
}
static int32_t fake_host_free(void *ptr) {
  uint64_t *h = (uint64_t *)ptr - 2;
  if (h[0] != PINNED) {
    fprintf(stderr, "fake_device: host_free of a block host_alloc did not give %p\n", ptr);
    abort();
  }
  h[0] = 0;
  free(h);
  pinned_outstanding--;
  pinned_frees++;
  return 0;
}
static int32_t fake_h2d_async(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
  async_bytes += (int64_t)n;
  return 0;
}

/* pinned blocks outstanding, host_alloc calls, host_free calls, bytes sent by copy_h2d_async, sort calls */
void lm_fake_pinned_counters(int64_t *out) {
  out[0] = pinned_outstanding;
  out[1] = pinned_allocs;
  out[2] = pinned_frees;
  out[3] = async_bytes;
  out[4] = n_sort;
}

static const lm_backend table = {
    LM_BACKEND_ABI, sizeof(lm_backend), "fake", description, fake_init, fake_last_error, fake_malloc, fake_free,
    fake_memset, fake_h2d, fake_d2h, fake_d2d, fake_strided, fake_sync, fake_mem_info,
    fake_elementwise, fake_reduce, fake_gemm,
    /* activations, losses, copies, indexing, creation and random numbers, optimizers */
    fake_activation, fake_softmax, fake_class_loss, fake_bce_logits,
    fake_sequence, fake_random, fake_optim_step, fake_index_along,
    fake_cumsum,
    /* layer families */
    fake_im2col, fake_pool, fake_norm_pass, fake_rnn_cell, fake_interp,
    fake_grid_sample, fake_conv_lib,
    /* sorting and pinned host memory */
    fake_sort, fake_host_alloc, fake_host_free, fake_h2d_async,
    /* mixed precision */
    fake_gemm_lowp,
};

const lm_backend *lm_fake_backend(void) { return &table; }

/* counters: outstanding blocks, mallocs, frees, synchronizes, bytes in, bytes out */
void lm_fake_counters(int64_t *out) {
  out[0] = outstanding;
  out[1] = mallocs;
  out[2] = frees;
  out[3] = syncs;
  out[4] = h2d_bytes;
  out[5] = d2h_bytes;
}

void lm_fake_fail_mallocs(int64_t n) { fail_next_malloc = n; }

/* calls of the kernels: elementwise, reduce, gemm, the later families */
void lm_fake_kernel_counts(int64_t *out) {
  out[0] = n_elementwise;
  out[1] = n_reduce;
  out[2] = n_gemm;
  out[3] = n_other;
}

/* calls of the layer kernels (im2col, ...) */
int64_t lm_fake_layer_count(void) { return n_layer; }

/* calls of autocast's GEMM */
int64_t lm_fake_gemm_lowp_count(void) { return n_gemm_lowp; }

/* The table as a library built before autocast gives it (size ends before
   gemm_lowp): autocast's products must then refuse the device. */
static lm_backend before_lowp_table;
const lm_backend *lm_fake_backend_before_lowp(void) {
  before_lowp_table = table;
  before_lowp_table.size = (uint32_t)offsetof(lm_backend, gemm_lowp);
  return &before_lowp_table;
}

/* convolutions run by the library stand-in */
int64_t lm_fake_conv_lib_count(void) { return n_conv_lib; }

/* The table as an older library would give it: its size ends before the op
   kernels (the pointers are there, but past size), so registration accepts
   it and the ops refuse the device. */
static lm_backend no_kernels_table;
const lm_backend *lm_fake_backend_no_kernels(void) {
  no_kernels_table = table;
  no_kernels_table.size = (uint32_t)offsetof(lm_backend, elementwise);
  return &no_kernels_table;
}

/* The table as a library from before the sort and pinned memory entries. */
static lm_backend no_sort_table;
const lm_backend *lm_fake_backend_no_sort(void) {
  no_sort_table = table;
  no_sort_table.size = (uint32_t)offsetof(lm_backend, sort);
  return &no_sort_table;
}

/* A table of another ABI, which registration must refuse. */
static lm_backend old_table;
const lm_backend *lm_fake_backend_wrong_abi(void) {
  old_table = table;
  old_table.abi = LM_BACKEND_ABI + 98;
  return &old_table;
}
