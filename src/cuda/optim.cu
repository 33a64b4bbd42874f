/* optim.cu - fused optimizer updates (lm_backend.optim_step): SGD, Adam and
 * AdamW, RMSprop, and the scaling of gradient clipping.
 *
 * A group's parameters go out in launches of up to CHUNK parameters whose
 * addresses, sizes and coefficients travel in the kernel's arguments (no
 * device copy of the lists): the thread of flat element k finds its
 * parameter by a binary search over the chunk's offsets. The arithmetic is
 * src/ops/optim.c's, in the parameter's dtype with coefficients rounded to
 * it once; the compiler may fuse a product and a sum where the CPU rounds
 * twice (an ulp). */
#include "common.cuh"

namespace lmcuda {
namespace {

const int CHUNK = 40; /* parameters per launch: the arguments stay under 4 KiB */

template <typename T> __host__ __device__ inline T m_sqrt(T x) { return sqrt(x); }
template <> __host__ __device__ inline float m_sqrt<float>(float x) { return sqrtf(x); }

template <typename T> struct optim_fn {
  int32_t kind, m;
  int64_t end[CHUNK]; /* exclusive end of each parameter's elements in the flat range */
  T *op[5][CHUNK];
  double per[CHUNK][2];
  double hp[LM_HP_COUNT];

  __host__ __device__ void operator()(int64_t k) const {
    int lo = 0, hi = m - 1; /* the first parameter whose end is past k */
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (end[mid] > k) hi = mid;
      else lo = mid + 1;
    }
    const int64_t i = k - (lo ? end[lo - 1] : 0);
    T *p = op[0][lo];
    if (kind == LM_OPTIM_SCALE) {
      p[i] = p[i] * (T)hp[0];
      return;
    }
    const T g = op[1][lo][i];
    T d = hp[LM_HP_MAXIMIZE] != 0 ? -g : g;
    const T wd = (T)hp[LM_HP_WEIGHT_DECAY];
    const bool use_wd = hp[LM_HP_WEIGHT_DECAY] != 0;
    if (kind == LM_OPTIM_SGD) {
      d = use_wd ? d + wd * p[i] : d;
      T *buf = op[2][lo];
      if (buf) {
        const T mom = (T)hp[LM_HP_MOMENTUM], keep = (T)(1 - hp[LM_HP_DAMPENING]);
        T mv = per[lo][0] != 0 ? d : buf[i] * mom + keep * d;
        buf[i] = mv;
        d = hp[LM_HP_NESTEROV] != 0 ? d + mom * mv : mv;
      }
      p[i] = p[i] + (T)(-hp[LM_HP_LR]) * d;
    } else if (kind == LM_OPTIM_ADAM) {
      const bool decoupled = hp[LM_HP_DECOUPLED] != 0;
      T pi = decoupled ? p[i] * (T)(1 - hp[LM_HP_LR] * hp[LM_HP_WEIGHT_DECAY]) : p[i];
      d = !decoupled && use_wd ? d + wd * pi : d;
      T *m1 = op[2][lo], *v = op[3][lo], *vmax = op[4][lo];
      T mi = m1[i] * (T)hp[LM_HP_BETA1] + (T)(1 - hp[LM_HP_BETA1]) * d;
      T vi = v[i] * (T)hp[LM_HP_BETA2] + (T)(1 - hp[LM_HP_BETA2]) * d * d;
      m1[i] = mi;
      v[i] = vi;
      if (vmax) {
        T top = vmax[i];
        top = (vi > top || vi != vi) ? vi : top; /* NaN propagates */
        vmax[i] = top;
        vi = top;
      }
      T denom = m_sqrt(vi) / (T)per[lo][1] + (T)hp[LM_HP_EPS];
      p[i] = pi + (T)per[lo][0] * (mi / denom);
    } else { /* RMSprop */
      d = use_wd ? d + wd * p[i] : d;
      const T alpha = (T)hp[LM_HP_ALPHA], c = (T)(1 - hp[LM_HP_ALPHA]);
      T *sq = op[2][lo], *ga = op[3][lo], *buf = op[4][lo];
      T s = sq[i] * alpha + c * d * d;
      sq[i] = s;
      T avg;
      if (ga) {
        T a = ga[i] * alpha + c * d;
        ga[i] = a;
        avg = m_sqrt(s - a * a);
      } else {
        avg = m_sqrt(s);
      }
      avg = avg + (T)hp[LM_HP_EPS];
      const T neg_lr = (T)(-hp[LM_HP_LR]);
      if (buf) {
        T mv = buf[i] * (T)hp[LM_HP_MOMENTUM] + d / avg;
        buf[i] = mv;
        p[i] = p[i] + neg_lr * mv;
      } else {
        p[i] = p[i] + neg_lr * (d / avg);
      }
    }
  }
};

template <typename T>
int32_t optim_run(int32_t kind, int32_t nparams, const int64_t *numel, void *const *data, const double *per,
                  const double *hp) {
  optim_fn<T> f;
  memset(&f, 0, sizeof f);
  f.kind = kind;
  memcpy(f.hp, hp, (kind == LM_OPTIM_SCALE ? 1 : LM_HP_COUNT) * sizeof *hp);
  for (int32_t c0 = 0; c0 < nparams; c0 += CHUNK) {
    f.m = nparams - c0 < CHUNK ? nparams - c0 : CHUNK;
    int64_t total = 0;
    for (int j = 0; j < f.m; j++) {
      total += numel[c0 + j];
      f.end[j] = total;
      for (int k = 0; k < 5; k++) f.op[k][j] = (kind == LM_OPTIM_SCALE && k > 0) ? nullptr : (T *)data[k * nparams + c0 + j];
      f.per[j][0] = per ? per[2 * (c0 + j)] : 0;
      f.per[j][1] = per ? per[2 * (c0 + j) + 1] : 0;
    }
    int32_t st = for_each(total, f, "optimizer kernel");
    if (st) return st;
  }
  return 0;
}

} // namespace

int32_t optim_step(int32_t kind, int32_t dtype, int32_t nparams, const int64_t *numel, void *const *data,
                   const double *per, const double *hp) {
  if (kind < LM_OPTIM_SGD || kind > LM_OPTIM_SCALE || nparams < 0) return refuse(LM_E_ARG, "optim_step: kind %d", kind);
  switch (dtype) {
  case LM_F32: return optim_run<float>(kind, nparams, numel, data, per, hp);
  case LM_F64: return optim_run<double>(kind, nparams, numel, data, per, hp);
  }
  return refuse(LM_E_ARG, "optim_step: dtype %d, expected f32 or f64", dtype);
}

} // namespace lmcuda
