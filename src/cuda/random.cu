/* random.cu - creation on the device: arange and linspace
 * (lm_backend.sequence) and Philox4x32-10 draws (lm_backend.random).
 *
 * The draws are src/core/rng.c's: element i of a draw is a pure function of
 * (seed, offset + i), so a thread per element computes exactly what the
 * CPU's loop computes. Products and sums are written with round-to-nearest
 * intrinsics on the device, so that the compiler does not fuse them into
 * multiply-adds the CPU does not make: uniform, bernoulli and randint give
 * the CPU's bits; normal goes through CUDA's double log and cos, within an
 * ulp or two of the CPU's libm. */
#include "common.cuh"

namespace lmcuda {
namespace {

/* a * b and a + b rounded once each (never fused) */
__host__ __device__ inline float mul_f(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ inline float add_f(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ inline double mul_d(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ inline double add_d(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

/* a double as dtype, as a copy from f64 converts it */
template <typename T> __host__ __device__ inline void put(T *p, int64_t i, double v, bool to_bool) {
  p[i] = to_bool ? (T)(v != 0) : (T)v;
}

template <typename T> struct sequence_fn {
  T *out;
  int64_t n, half;
  double start, step, stop;
  bool to_bool;
  __host__ __device__ void operator()(int64_t i) const {
    double v = i < half ? add_d(start, mul_d((double)i, step)) : add_d(stop, -mul_d((double)(n - 1 - i), step));
    put(out, i, v, to_bool);
  }
};

/* ---- Philox4x32-10 ---- */

__host__ __device__ inline void philox(uint64_t ctr, uint64_t key, uint32_t w[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

__host__ __device__ inline uint64_t join64(uint32_t lo, uint32_t hi) { return ((uint64_t)hi << 32) | lo; }
__host__ __device__ inline double unit53(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }
__host__ __device__ inline double unit53_open0(uint64_t x) { return (double)((x >> 11) + 1) * 0x1.0p-53; }

template <typename T> struct random_fn {
  int32_t kind;
  T *out;
  uint64_t key, base;
  double a, b;
  int64_t ilo;
  uint64_t irange;
  const T *probs;
  bool to_bool;
  __host__ __device__ void operator()(int64_t i) const {
    uint32_t w[4];
    philox(base + (uint64_t)i, key, w);
    switch (kind) {
    case LM_RNG_UNIFORM:
      if (sizeof(T) == 4) {
        float lo = (float)a, hi = (float)b, span = hi - lo;
        float v = add_f(lo, mul_f(mul_f((float)(w[0] >> 8), 0x1.0p-24f), span));
        out[i] = (T)(v < hi ? v : fmaxf(nextafterf(hi, -INFINITY), lo));
      } else {
        double v = add_d(a, mul_d(unit53(join64(w[0], w[1])), b - a));
        out[i] = (T)(v < b ? v : fmax(nextafter(b, (double)-INFINITY), a));
      }
      break;
    case LM_RNG_NORMAL: {
      double u1 = unit53_open0(join64(w[0], w[1])), u2 = unit53(join64(w[2], w[3]));
      double z = mul_d(sqrt(mul_d(-2.0, log(u1))), cos(mul_d(6.283185307179586, u2)));
      out[i] = (T)add_d(a, mul_d(b, z));
      break;
    }
    case LM_RNG_BERNOULLI: put(out, i, unit53(join64(w[0], w[1])) < a ? 1.0 : 0.0, to_bool); break;
    case LM_RNG_BERNOULLI_T: out[i] = unit53(join64(w[0], w[1])) < (double)probs[i] ? T(1) : T(0); break;
    default: { /* randint: 64 random bits mod the range */
      int64_t v = (int64_t)((uint64_t)ilo + join64(w[0], w[1]) % irange);
      out[i] = to_bool ? (T)(v != 0) : (T)v;
    }
    }
  }
};

template <typename T>
int32_t random_run(int32_t kind, int32_t dtype, int64_t n, void *out, uint64_t key, uint64_t base, double a, double b,
                   int64_t ilo, uint64_t irange, const void *probs) {
  random_fn<T> f = {kind, (T *)out, key, base, a, b, ilo, irange, (const T *)probs, dtype == LM_BOOL};
  return for_each(n, f, "random kernel");
}

template <typename T>
int32_t sequence_run(int32_t dtype, int64_t n, void *out, double start, double step, double stop, int64_t half) {
  sequence_fn<T> f = {(T *)out, n, half, start, step, stop, dtype == LM_BOOL};
  return for_each(n, f, "sequence kernel");
}

} // namespace

int32_t sequence(int32_t dtype, int64_t n, void *out, double start, double step, double stop, int64_t half) {
  switch (dtype) {
  case LM_F32: return sequence_run<float>(dtype, n, out, start, step, stop, half);
  case LM_F64: return sequence_run<double>(dtype, n, out, start, step, stop, half);
  case LM_I32: return sequence_run<int32_t>(dtype, n, out, start, step, stop, half);
  case LM_I64: return sequence_run<int64_t>(dtype, n, out, start, step, stop, half);
  case LM_U8: case LM_BOOL: return sequence_run<uint8_t>(dtype, n, out, start, step, stop, half);
  }
  return refuse(LM_E_ARG, "sequence: dtype %d", dtype);
}

int32_t random(int32_t kind, int32_t dtype, int64_t n, void *out, uint64_t key, uint64_t base, double a, double b,
               int64_t ilo, uint64_t irange, const void *probs) {
  bool fl = dtype == LM_F32 || dtype == LM_F64;
  if (kind < LM_RNG_UNIFORM || kind > LM_RNG_RANDINT || (kind <= LM_RNG_NORMAL && !fl) ||
      (kind == LM_RNG_BERNOULLI_T && (!fl || !probs)) || (kind == LM_RNG_RANDINT && irange == 0))
    return refuse(LM_E_ARG, "random: kind %d for dtype %d", kind, dtype);
  switch (dtype) {
  case LM_F32: return random_run<float>(kind, dtype, n, out, key, base, a, b, ilo, irange, probs);
  case LM_F64: return random_run<double>(kind, dtype, n, out, key, base, a, b, ilo, irange, probs);
  case LM_I32: return random_run<int32_t>(kind, dtype, n, out, key, base, a, b, ilo, irange, probs);
  case LM_I64: return random_run<int64_t>(kind, dtype, n, out, key, base, a, b, ilo, irange, probs);
  case LM_U8: case LM_BOOL: return random_run<uint8_t>(kind, dtype, n, out, key, base, a, b, ilo, irange, probs);
  }
  return refuse(LM_E_ARG, "random: dtype %d", dtype);
}

} // namespace lmcuda
