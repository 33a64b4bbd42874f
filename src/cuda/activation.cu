/* activation.cu - leaky_relu, elu, gelu, prelu, softmax and log_softmax,
 * forward and backward, over contiguous arrays (lm_backend.activation and
 * .softmax; liblumen gathers strided operands first).
 *
 * The formulas are src/ops/activation.c's; f32 uses CUDA's float
 * functions (erff, tanhf, expm1f), within an ulp or two of the CPU's own
 * approximations. Softmax gives each (outer, inner) slice to one thread,
 * which walks its len elements three times (max, sum, write): sums in
 * double, as on the CPU, in the same order. */
#include "common.cuh"

namespace lmcuda {
namespace {

#define SQRT_2_OVER_PI 0.79788456080286535588
#define INV_SQRT_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228040143267794
#define GELU_C 0.044715

__host__ __device__ inline float m_exp(float x) { return expf(x); }
__host__ __device__ inline double m_exp(double x) { return exp(x); }
__host__ __device__ inline float m_expm1(float x) { return expm1f(x); }
__host__ __device__ inline double m_expm1(double x) { return expm1(x); }
__host__ __device__ inline float m_erf(float x) { return erff(x); }
__host__ __device__ inline double m_erf(double x) { return erf(x); }
__host__ __device__ inline float m_tanh(float x) { return tanhf(x); }
__host__ __device__ inline double m_tanh(double x) { return tanh(x); }

/* f(x) (mode 0) or f'(x) (mode 1) of the pointwise kinds */
template <typename T> __host__ __device__ inline T act(int32_t kind, bool deriv, T a, T x) {
  switch (kind) {
  case LM_OP_LEAKY_RELU: return deriv ? (x > 0 ? T(1) : a) : (x > 0 ? x : x * a);
  case LM_OP_ELU: return deriv ? (x > 0 ? T(1) : a * m_exp(x)) : (x > 0 ? x : a * m_expm1(x));
  default: break;
  }
  if (a == T(0)) { /* gelu, exact */
    T cdf = T(0.5) * (T(1) + m_erf(x * T(INV_SQRT_2)));
    return deriv ? cdf + x * T(INV_SQRT_2PI) * m_exp(T(-0.5) * x * x) : x * cdf;
  }
  T t = m_tanh(T(SQRT_2_OVER_PI) * (x + T(GELU_C) * x * x * x));
  return deriv ? T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(SQRT_2_OVER_PI) * (T(1) + T(3 * GELU_C) * x * x)
               : T(0.5) * x * (T(1) + t);
}

template <typename T> struct act_fn {
  int32_t kind, mode;
  T *out;
  const T *x, *g, *w;
  int64_t c, inner;
  T param;
  __host__ __device__ void operator()(int64_t k) const {
    T v = x[k];
    if (kind == LM_OP_PRELU) {
      T wk = w[c > 1 ? (k / inner) % c : 0];
      out[k] = mode == 0 ? (v > 0 ? v : wk * v) : mode == 1 ? (v > 0 ? g[k] : wk * g[k]) : (v > 0 ? T(0) : v * g[k]);
      return;
    }
    out[k] = mode == 0 ? act<T>(kind, false, param, v) : g[k] * act<T>(kind, true, param, v);
  }
};

template <typename T> struct smax_fn {
  bool log, backward;
  int64_t len, inner;
  T *out;
  const T *x, *g;
  __host__ __device__ void operator()(int64_t k) const {
    const int64_t o = k / inner, j = k % inner, base = o * len * inner + j;
    if (backward) { /* x holds y */
      double dot = 0;
      for (int64_t l = 0; l < len; l++) {
        int64_t i = base + l * inner;
        dot += log ? (double)g[i] : (double)g[i] * (double)x[i];
      }
      for (int64_t l = 0; l < len; l++) {
        int64_t i = base + l * inner;
        double gv = g[i], yv = x[i];
        out[i] = (T)(log ? gv - (double)m_exp(x[i]) * dot : yv * (gv - dot));
      }
      return;
    }
    double m = -INFINITY;
    bool nan = false;
    for (int64_t l = 0; l < len; l++) {
      double v = x[base + l * inner];
      m = v > m ? v : m;
      nan = nan || v != v;
    }
    if (nan) m = NAN; /* a NaN makes the whole slice NaN */
    double s = 0;
    for (int64_t l = 0; l < len; l++) {
      int64_t i = base + l * inner;
      T e = m_exp((T)(x[i] - (T)m));
      if (!log) out[i] = e;
      s += (double)e;
    }
    if (log) {
      const double lse = m + ::log(s);
      for (int64_t l = 0; l < len; l++) out[base + l * inner] = (T)((double)x[base + l * inner] - lse);
    } else {
      const double r = 1 / s;
      for (int64_t l = 0; l < len; l++) out[base + l * inner] = (T)((double)out[base + l * inner] * r);
    }
  }
};

template <typename T>
int32_t act_run(int32_t kind, int32_t mode, int64_t n, void *out, const void *x, const void *g, const void *w,
                int64_t c, int64_t inner, double param) {
  act_fn<T> f = {kind, mode, (T *)out, (const T *)x, (const T *)g, (const T *)w, c, inner < 1 ? 1 : inner, (T)param};
  return for_each(n, f, "activation kernel");
}

template <typename T>
int32_t smax_run(int32_t log, int32_t backward, int64_t outer, int64_t len, int64_t inner, void *out, const void *x,
                 const void *g) {
  smax_fn<T> f = {log != 0, backward != 0, len, inner, (T *)out, (const T *)x, (const T *)g};
  return for_each(outer * inner, f, "softmax kernel");
}

} // namespace

int32_t activation(int32_t kind, int32_t mode, int32_t dtype, int64_t n, void *out, const void *x, const void *g,
                   const void *w, int64_t c, int64_t inner, double param) {
  bool known = kind == LM_OP_LEAKY_RELU || kind == LM_OP_ELU || kind == LM_OP_GELU || kind == LM_OP_PRELU;
  if (!known || mode < 0 || mode > (kind == LM_OP_PRELU ? 2 : 1) || (mode > 0 && !g) || (kind == LM_OP_PRELU && !w))
    return refuse(LM_E_ARG, "activation: kind %d, mode %d", kind, mode);
  if (kind == LM_OP_GELU) param = param != 0 ? 1 : 0;
  switch (dtype) {
  case LM_F32: return act_run<float>(kind, mode, n, out, x, g, w, c, inner, param);
  case LM_F64: return act_run<double>(kind, mode, n, out, x, g, w, c, inner, param);
  }
  return refuse(LM_E_ARG, "activation: dtype %d, expected f32 or f64", dtype);
}

int32_t softmax(int32_t log, int32_t backward, int32_t dtype, int64_t outer, int64_t len, int64_t inner, void *out,
                const void *x, const void *g) {
  if (backward && !g) return refuse(LM_E_ARG, "softmax: backward without a gradient");
  switch (dtype) {
  case LM_F32: return smax_run<float>(log, backward, outer, len, inner, out, x, g);
  case LM_F64: return smax_run<double>(log, backward, outer, len, inner, out, x, g);
  }
  return refuse(LM_E_ARG, "softmax: dtype %d, expected f32 or f64", dtype);
}

} // namespace lmcuda
