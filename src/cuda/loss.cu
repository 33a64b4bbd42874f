/* loss.cu - cross_entropy, nll_loss and binary_cross_entropy_with_logits
 * (lm_backend.class_loss and .bce_logits).
 *
 * The formulas are src/ops/loss.c's. The class losses give each position
 * (a sample and a spatial index) to one thread, which walks the C classes
 * at stride S: forward writes the position's cost, weight and bad-target
 * flag (liblumen sums them with device reductions), backward its C
 * gradients. Sums over classes are in double. */
#include "common.cuh"

namespace lmcuda {
namespace {

__host__ __device__ inline float m_exp(float x) { return expf(x); }
__host__ __device__ inline double m_exp(double x) { return exp(x); }
__host__ __device__ inline float m_log1p(float x) { return log1pf(x); }
__host__ __device__ inline double m_log1p(double x) { return log1p(x); }

template <typename T> struct class_fn {
  bool backward, log_input;
  int64_t C, S, ignore;
  double eps;
  const T *x, *prob, *g;
  const int64_t *target;
  const double *w;
  T *loss, *lse, *gx, *gt;
  double *wt;
  uint8_t *bad;
  int64_t gstride;

  __host__ __device__ double weight(int64_t c) const { return w ? w[c] : 1.0; }

  __host__ __device__ void operator()(int64_t p) const {
    const int64_t base = (p / S) * C * S + p % S;
    const double u = eps / (double)C;
    if (backward) {
      backward_at(p, base, u);
      return;
    }
    double l = 0; /* the log-sum-exp */
    if (!log_input) {
      T m = x[base];
      for (int64_t c = 1; c < C; c++) m = x[base + c * S] > m ? x[base + c * S] : m;
      if (m == T(INFINITY) || m == T(-INFINITY)) m = 0; /* keeps inf - inf out */
      double s = 0;
      for (int64_t c = 0; c < C; c++) s += (double)m_exp((T)(x[base + c * S] - m));
      l = (double)m + ::log(s);
      if (lse) lse[p] = (T)l;
    }
    if (prob) {
      double cost = 0;
      for (int64_t c = 0; c < C; c++)
        cost += weight(c) * ((1 - eps) * (double)prob[base + c * S] + u) * (l - (double)x[base + c * S]);
      loss[p] = (T)cost;
      wt[p] = 1;
      bad[p] = 0;
      return;
    }
    const int64_t k = target[p];
    if (k == ignore || k < 0 || k >= C) {
      loss[p] = 0;
      wt[p] = 0;
      bad[p] = k != ignore;
      return;
    }
    const double wk = weight(k);
    double cost = wk * (l - (double)x[base + k * S]);
    if (eps > 0) {
      double sx = 0;
      for (int64_t c = 0; c < C; c++) sx += weight(c) * (l - (double)x[base + c * S]);
      cost = (1 - eps) * cost + u * sx;
    }
    loss[p] = (T)cost;
    wt[p] = wk;
    bad[p] = 0;
  }

  __host__ __device__ void backward_at(int64_t p, int64_t base, double u) const {
    double gv = (double)g[p * gstride];
    const double l = lse ? (double)lse[p] : 0;
    if (prob) {
      double a = 0;
      for (int64_t c = 0; c < C; c++) a += weight(c) * ((1 - eps) * (double)prob[base + c * S] + u);
      for (int64_t c = 0; c < C; c++) {
        const int64_t i = base + c * S;
        const double coef = weight(c) * ((1 - eps) * (double)prob[i] + u);
        if (gx) gx[i] = (T)(gv * (a * (double)m_exp((T)(x[i] - (T)l)) - coef));
        if (gt) gt[i] = (T)(gv * (1 - eps) * weight(c) * (l - (double)x[i]));
      }
      return;
    }
    if (!gx) return;
    const int64_t k = target[p];
    const bool skip = k == ignore || k < 0 || k >= C;
    if (skip) gv = 0;
    double wsum = 0;
    if (!log_input && u != 0)
      for (int64_t c = 0; c < C; c++) wsum += weight(c);
    const double wk = skip ? 0 : weight(k), a = log_input ? 0 : (1 - eps) * wk + u * wsum;
    for (int64_t c = 0; c < C; c++) {
      const int64_t i = base + c * S;
      const double sm = log_input ? 0 : (double)m_exp((T)(x[i] - (T)l));
      double r = gv * (a * sm - u * weight(c));
      if (c == k && !skip) r -= gv * (1 - eps) * wk;
      gx[i] = (T)r;
    }
  }
};

/* the loss or a gradient, in forms where no exp overflows (see loss.c) */
template <typename T> struct bce_fn {
  int32_t mode;
  T *out;
  const T *x, *t, *pw;
  T scale;
  __host__ __device__ void operator()(int64_t i) const {
    const T xv = x[i], tv = t[i], pv = pw ? pw[i] : T(1);
    const T e = m_exp(xv < 0 ? xv : -xv), lw = 1 + (pv - 1) * tv;
    T r;
    if (mode == 1) {
      const T q = e / (1 + e);
      r = xv < 0 ? lw * q - pv * tv : (1 - tv) - lw * q;
    } else {
      const T l1p = m_log1p(e), sp = (xv < 0 ? -xv : T(0)) + l1p;
      r = mode == 0 ? (xv < 0 ? -pv * tv * xv : (1 - tv) * xv) + lw * l1p : -xv + (pv - 1) * sp;
    }
    out[i] = r * scale;
  }
};

template <typename T>
int32_t class_run(int32_t backward, int64_t N, int64_t C, int64_t S, int32_t log_input, const void *x,
                  const int64_t *target, const void *prob, const double *weight, int64_t ignore, double eps, void *loss,
                  double *wt, uint8_t *bad, void *lse, const void *g, int64_t gstride, void *gx, void *gt) {
  class_fn<T> f;
  f.backward = backward != 0;
  f.log_input = log_input != 0;
  f.C = C;
  f.S = S < 1 ? 1 : S;
  f.ignore = ignore;
  f.eps = eps;
  f.x = (const T *)x;
  f.prob = (const T *)prob;
  f.g = (const T *)g;
  f.target = target;
  f.w = weight;
  f.loss = (T *)loss;
  f.lse = (T *)lse;
  f.gx = (T *)gx;
  f.gt = (T *)gt;
  f.wt = wt;
  f.bad = bad;
  f.gstride = gstride;
  return for_each(N * f.S, f, "class loss kernel");
}

} // namespace

int32_t class_loss(int32_t backward, int32_t dtype, int64_t N, int64_t C, int64_t S, int32_t log_input, const void *x,
                   const int64_t *target, const void *prob, const double *weight, int64_t ignore, double eps,
                   void *loss, double *wt, uint8_t *bad, void *lse, const void *g, int64_t gstride, void *gx,
                   void *gt) {
  if (C < 1 || (!target && !prob) || (backward ? !g : (!loss || !wt || !bad)))
    return refuse(LM_E_ARG, "class_loss: %lld classes, missing operands", (long long)C);
  switch (dtype) {
  case LM_F32:
    return class_run<float>(backward, N, C, S, log_input, x, target, prob, weight, ignore, eps, loss, wt, bad, lse, g,
                            gstride, gx, gt);
  case LM_F64:
    return class_run<double>(backward, N, C, S, log_input, x, target, prob, weight, ignore, eps, loss, wt, bad, lse, g,
                             gstride, gx, gt);
  }
  return refuse(LM_E_ARG, "class_loss: dtype %d, expected f32 or f64", dtype);
}

int32_t bce_logits(int32_t mode, int32_t dtype, int64_t n, void *out, const void *x, const void *t, const void *pw,
                   double scale) {
  if (mode < 0 || mode > 2) return refuse(LM_E_ARG, "bce_logits: mode %d", mode);
  switch (dtype) {
  case LM_F32: {
    bce_fn<float> f = {mode, (float *)out, (const float *)x, (const float *)t, (const float *)pw, (float)scale};
    return for_each(n, f, "bce kernel");
  }
  case LM_F64: {
    bce_fn<double> f = {mode, (double *)out, (const double *)x, (const double *)t, (const double *)pw, scale};
    return for_each(n, f, "bce kernel");
  }
  }
  return refuse(LM_E_ARG, "bce_logits: dtype %d, expected f32 or f64", dtype);
}

} // namespace lmcuda
