/* elementwise.cu - the backend's one strided elementwise loop.
 *
 * liblumen decides everything an elementwise op means (result dtype,
 * broadcasting, where the output goes) and hands over a loop: operands
 * with strides over one shape, a compute dtype and an op code
 * (src/backend.h, lm_backend.elementwise). One kernel per compute dtype
 * (and index width) does every op: each thread walks positions of the
 * shape, turns a position into an offset per operand, reads and converts
 * the inputs, applies the op (a switch on a value the same for every
 * thread, so it does not diverge) and converts the result to the output's
 * dtype. liblumen merges dimensions first, so a contiguous loop is one
 * dimension here.
 *
 * The arithmetic matches the CPU kernels of src/ops/elementwise.c: integers
 * wrap (through their unsigned twins), integer pow follows torch's rules
 * for negative exponents, maximum and minimum propagate NaN, round is
 * half to even, relu keeps NaN. Float functions are CUDA's (exp, log, ...),
 * within a few ulps of the CPU's. */
#include <type_traits>

#include "common.cuh"

namespace lmcuda {
namespace {

const int MAXOPS = LM_BACKEND_MAX_OPERANDS;

struct ew_args {
  int32_t op, ndim, nops;
  int32_t dtype[MAXOPS];
  char *data[MAXOPS];
  lm_scalar scalar[MAXOPS];
  int64_t shape[LM_MAX_DIMS];
  int64_t stride[MAXOPS][LM_MAX_DIMS]; /* bytes */
  double param;
};

/* ---- reading and writing any dtype as T ---- */

template <typename T> __host__ __device__ __forceinline__ T load_as(int32_t dt, const char *p) {
  switch (dt) {
  case LM_F32: return (T) * (const float *)p;
  case LM_F64: return (T) * (const double *)p;
  case LM_I32: return (T) * (const int32_t *)p;
  case LM_I64: return (T) * (const int64_t *)p;
  default: return (T) * (const uint8_t *)p; /* u8, bool (0 / 1) */
  }
}

template <typename T> __host__ __device__ __forceinline__ T scalar_as(int32_t dt, lm_scalar s) {
  return dt == LM_F64 ? (T)s.f : (T)s.i;
}

template <typename T> __host__ __device__ __forceinline__ void store_as(int32_t dt, char *p, T v) {
  switch (dt) {
  case LM_F32: *(float *)p = (float)v; break;
  case LM_F64: *(double *)p = (double)v; break;
  case LM_I32: *(int32_t *)p = (int32_t)v; break;
  case LM_I64: *(int64_t *)p = (int64_t)v; break;
  case LM_U8: *(uint8_t *)p = (uint8_t)v; break;
  default: *(uint8_t *)p = v != T(0); break; /* bool */
  }
}

/* ---- float maths by overload (f32 calls the f suffixed functions) ---- */
#define MATH1(NAME, F, D)                                              \
  __host__ __device__ __forceinline__ float NAME(float x) { return F(x); }      \
  __host__ __device__ __forceinline__ double NAME(double x) { return D(x); }
MATH1(m_abs, fabsf, fabs)
MATH1(m_exp, expf, exp)
MATH1(m_log, logf, log)
MATH1(m_log1p, log1pf, log1p)
MATH1(m_sqrt, sqrtf, sqrt)
MATH1(m_sin, sinf, sin)
MATH1(m_cos, cosf, cos)
MATH1(m_tanh, tanhf, tanh)
MATH1(m_floor, floorf, floor)
MATH1(m_ceil, ceilf, ceil)
MATH1(m_rint, rintf, rint)
#undef MATH1
__host__ __device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__host__ __device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }

/* ---- the ops ---- */

template <typename T> __host__ __device__ T float_op(int32_t op, T x, T y) {
  switch (op) {
  case LM_OP_NEG: return -x;
  case LM_OP_ABS: return m_abs(x);
  case LM_OP_EXP: return m_exp(x);
  case LM_OP_LOG: return m_log(x);
  case LM_OP_LOG1P: return m_log1p(x);
  case LM_OP_SQRT: return m_sqrt(x);
  case LM_OP_RSQRT: return T(1) / m_sqrt(x);
  case LM_OP_SIN: return m_sin(x);
  case LM_OP_COS: return m_cos(x);
  case LM_OP_SIGMOID: return T(1) / (T(1) + m_exp(-x));
  case LM_OP_TANH: return m_tanh(x);
  case LM_OP_RELU: return (x > T(0) || x != x) ? x : T(0);
  case LM_OP_FLOOR: return m_floor(x);
  case LM_OP_CEIL: return m_ceil(x);
  case LM_OP_ROUND: return m_rint(x);
  case LM_OP_SIGN: return T((x > T(0)) - (x < T(0)));
  case LM_OP_RECIPROCAL: return T(1) / x;
  case LM_OP_ADD: return x + y;
  case LM_OP_SUB: return x - y;
  case LM_OP_MUL: return x * y;
  case LM_OP_DIV: return x / y;
  case LM_OP_POW: return m_pow(x, y);
  case LM_OP_MAXIMUM: return (x > y || x != x) ? x : y;
  case LM_OP_MINIMUM: return (x < y || x != x) ? x : y;
  }
  return x;
}

/* x ** y for integers by squaring, wrapping; negative exponents as torch */
template <typename T> __host__ __device__ T int_pow(T x, T y) {
  if constexpr (std::is_signed<T>::value) {
    if (y < 0) {
      if (x == 1) return 1;
      if (x == -1) return (y & 1) ? T(-1) : T(1);
      return 0;
    }
  }
  using U = typename std::make_unsigned<T>::type;
  U r = 1, b = (U)x;
  for (U e = (U)y; e; e >>= 1) {
    if (e & 1) r = (U)(r * b);
    b = (U)(b * b);
  }
  return (T)r;
}

/* x < 0, without a comparison that is always false for unsigned types */
template <typename T> __host__ __device__ __forceinline__ bool negative(T x) {
  if constexpr (std::is_signed<T>::value) return x < T(0);
  else return false;
}

template <typename T> __host__ __device__ T int_op(int32_t op, T x, T y) {
  using U = typename std::make_unsigned<T>::type;
  switch (op) {
  case LM_OP_NEG: return (T)(U)(U(0) - (U)x);
  case LM_OP_ABS: return negative(x) ? (T)(U)(U(0) - (U)x) : x;
  case LM_OP_RELU: return x > T(0) ? x : T(0);
  case LM_OP_SIGN: return T((x > T(0)) - negative(x));
  case LM_OP_ADD: return (T)(U)((U)x + (U)y);
  case LM_OP_SUB: return (T)(U)((U)x - (U)y);
  case LM_OP_MUL: return (T)(U)((U)x * (U)y);
  case LM_OP_POW: return int_pow(x, y);
  case LM_OP_MAXIMUM: return x > y ? x : y;
  case LM_OP_MINIMUM: return x < y ? x : y;
  }
  return x; /* floor, ceil, round: the identity on integers */
}

__host__ __device__ __forceinline__ double sgn(double x) { return x > 0 ? 1 : x < 0 ? -1 : x; }

/* The LM_PW_* formulas of src/backend.h (in double). */
__host__ __device__ double pointwise(int32_t op, double x, double a, double b, double p) {
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

template <typename T> __host__ __device__ __forceinline__ T apply(int32_t op, T x, T y, T z, double param) {
  switch (op) {
  case LM_OP_COPY: return x;
  case LM_OP_WHERE: return x != T(0) ? y : z;
  case LM_OP_CLAMP: {
    T t = x < y ? y : x;
    return t > z ? z : t;
  }
  case LM_OP_LOGICAL_NOT: return T(x == T(0));
  case LM_OP_EQ: return T(x == y);
  case LM_OP_NE: return T(x != y);
  case LM_OP_LT: return T(x < y);
  case LM_OP_LE: return T(x <= y);
  case LM_OP_GT: return T(x > y);
  case LM_OP_GE: return T(x >= y);
  case LM_OP_LOGICAL_AND: return T((x != T(0)) & (y != T(0)));
  case LM_OP_LOGICAL_OR: return T((x != T(0)) | (y != T(0)));
  case LM_OP_LOGICAL_XOR: return T((x != T(0)) ^ (y != T(0)));
  }
  if constexpr (std::is_same<T, double>::value) {
    if (op >= LM_PW_SCALE) return pointwise(op, x, y, z, param);
  }
  if constexpr (std::is_floating_point<T>::value) return float_op(op, x, y);
  else return int_op(op, x, y);
}

/* Position k of the loop; I is the index type: 32 bits when every offset
   fits, which spares 64-bit divisions. */
template <typename T, typename I> __host__ __device__ __forceinline__ void ew_at(const ew_args &a, int64_t k) {
  I off[MAXOPS] = {0, 0, 0, 0, 0};
  I rest = (I)k;
  for (int32_t d = a.ndim - 1; d >= 0; d--) {
    I size = (I)a.shape[d];
    I q = rest / size, i = rest - q * size;
    rest = q;
    for (int32_t j = 0; j < a.nops; j++) off[j] += i * (I)a.stride[j][d];
  }
  T v[3] = {T(0), T(0), T(0)};
  for (int32_t j = 1; j < a.nops && j <= 3; j++)
    v[j - 1] = a.data[j] ? load_as<T>(a.dtype[j], a.data[j] + off[j]) : scalar_as<T>(a.dtype[j], a.scalar[j]);
  store_as<T>(a.dtype[0], a.data[0] + off[0], apply<T>(a.op, v[0], v[1], v[2], a.param));
}

/* One thread per position (grid-stride). */
template <typename T, typename I> __global__ void ew_kernel(ew_args a, int64_t n) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x)
    ew_at<T, I>(a, k);
}

template <typename T> int32_t launch(const ew_args &a, int64_t n, bool narrow) {
#ifdef LMCUDA_EMULATE /* the specs' host build (tests/plugin/cuda_emulated.cu): the same positions in turn */
  for (int64_t k = 0; k < n; k++) {
    if (narrow) ew_at<T, int32_t>(a, k);
    else ew_at<T, int64_t>(a, k);
  }
  return 0;
#else
  unsigned blocks = grid_for(n, 256);
  if (narrow) ew_kernel<T, int32_t><<<blocks, 256, 0, stream>>>(a, n);
  else ew_kernel<T, int64_t><<<blocks, 256, 0, stream>>>(a, n);
  return launched("elementwise kernel");
#endif
}

/* The ops each compute dtype has; others are liblumen's mistake. */
bool supported(int32_t op, int32_t dtype) {
  bool fl = dtype == LM_F32 || dtype == LM_F64;
  if (op >= LM_PW_SCALE && op < LM_PW_END) return dtype == LM_F64;
  switch (op) {
  case LM_OP_COPY: case LM_OP_WHERE: case LM_OP_CLAMP: return true;
  case LM_OP_NEG: case LM_OP_ABS: case LM_OP_RELU: case LM_OP_FLOOR: case LM_OP_CEIL: case LM_OP_ROUND:
  case LM_OP_SIGN: case LM_OP_LOGICAL_NOT: return true;
  case LM_OP_EXP: case LM_OP_LOG: case LM_OP_LOG1P: case LM_OP_SQRT: case LM_OP_RSQRT: case LM_OP_SIN:
  case LM_OP_COS: case LM_OP_SIGMOID: case LM_OP_TANH: case LM_OP_RECIPROCAL: case LM_OP_DIV: return fl;
  }
  return op >= LM_OP_ADD && op <= LM_OP_LOGICAL_XOR;
}

int inputs_of(int32_t op) {
  if (op >= LM_PW_SCALE && op < LM_PW_END) return 3;
  if (op == LM_OP_CLAMP || op == LM_OP_WHERE) return 3;
  if (op >= LM_OP_ADD && op <= LM_OP_LOGICAL_XOR) return 2;
  return 1;
}

} // namespace

int32_t elementwise(int32_t op, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t nops, void *const *data,
                    const int64_t *strides, const int32_t *dtypes, const lm_scalar *scalars, double param) {
  if (!supported(op, dtype))
    return refuse(LM_E_ARG, "elementwise: op %d is not defined for compute dtype %d", op, dtype);
  if (nops < 1 + inputs_of(op) || nops > MAXOPS || ndim < 0 || ndim > LM_MAX_DIMS)
    return refuse(LM_E_ARG, "elementwise: op %d with %d operands over %d dims", op, nops, ndim);
  ew_args a;
  memset(&a, 0, sizeof a);
  a.op = op;
  a.ndim = ndim;
  a.nops = nops;
  a.param = param;
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; d++) n *= a.shape[d] = shape[d];
  if (n == 0) return 0;
  /* 32-bit index maths when the positions and every byte offset fit */
  bool narrow = n < INT32_MAX;
  for (int32_t j = 0; j < nops; j++) {
    a.dtype[j] = dtypes[j];
    a.data[j] = (char *)data[j];
    a.scalar[j] = scalars ? scalars[j] : lm_scalar{0};
    if (!data[j] && j == 0) return refuse(LM_E_ARG, "elementwise: the output is a host value");
    int64_t es = dtype_size(dtypes[j]), reach = 0;
    for (int32_t d = 0; d < ndim; d++) {
      a.stride[j][d] = data[j] ? strides[j * ndim + d] * es : 0;
      reach += (shape[d] - 1) * (a.stride[j][d] < 0 ? -a.stride[j][d] : a.stride[j][d]);
    }
    narrow = narrow && reach < INT32_MAX;
  }
  switch (dtype) {
  case LM_F32: return launch<float>(a, n, narrow);
  case LM_F64: return launch<double>(a, n, narrow);
  case LM_I32: return launch<int32_t>(a, n, narrow);
  case LM_I64: return launch<int64_t>(a, n, narrow);
  case LM_U8: return launch<uint8_t>(a, n, narrow);
  }
  return refuse(LM_E_ARG, "elementwise: compute dtype %d, expected f32, f64, i32, i64 or u8", dtype);
}

} // namespace lmcuda
