/* resample.cu - interpolation (nearest and linear, 1-3-D) forward and
 * backward for the backend's interp entry (src/backend.h), from the
 * per-dim tables resample.c builds. One thread per written element; the
 * backward is a gather over the outputs that read each input position
 * (their range per dim is in the tables), so there are no atomics. */
#include "common.cuh"

namespace lmcuda {

struct interp_args {
  int32_t nd, nearest;
  int64_t in[3], out[3], in_sz, out_sz;
  const int64_t *i0[3], *i1[3], *lo[3], *hi[3];
  const double *w0[3], *w1[3];
};

template <typename T> __host__ __device__ inline double lerp_w(const interp_args &a, const T *x, int64_t row, int64_t ow) {
  return a.w0[2][ow] * (double)x[row + a.i0[2][ow]] + a.w1[2][ow] * (double)x[row + a.i1[2][ow]];
}

template <typename T> __host__ __device__ inline void forward_at(const interp_args &a, const T *xs, T *y, int64_t e) {
  int64_t plane = e / a.out_sz, r = e % a.out_sz;
  int64_t ow = r % a.out[2], oh = r / a.out[2] % a.out[1], od = r / (a.out[2] * a.out[1]);
  const T *x = xs + plane * a.in_sz;
  int64_t HW = a.in[1] * a.in[2], W = a.in[2];
  if (a.nearest) {
    y[e] = x[a.i0[0][od] * HW + a.i0[1][oh] * W + a.i0[2][ow]];
    return;
  }
  int64_t r00 = a.i0[0][od] * HW + a.i0[1][oh] * W, r01 = a.i0[0][od] * HW + a.i1[1][oh] * W;
  int64_t r10 = a.i1[0][od] * HW + a.i0[1][oh] * W, r11 = a.i1[0][od] * HW + a.i1[1][oh] * W;
  double h0 = a.w0[1][oh], h1 = a.w1[1][oh], d0 = a.w0[0][od], d1 = a.w1[0][od], v;
  if (a.nd == 1) v = lerp_w(a, x, r00, ow);
  else if (a.nd == 2) v = h0 * lerp_w(a, x, r00, ow) + h1 * lerp_w(a, x, r01, ow);
  else
    v = d0 * (h0 * lerp_w(a, x, r00, ow) + h1 * lerp_w(a, x, r01, ow)) +
        d1 * (h0 * lerp_w(a, x, r10, ow) + h1 * lerp_w(a, x, r11, ow));
  y[e] = (T)v;
}

/* The weight with which output o reads input position i along dim d. */
__host__ __device__ inline double weight(const interp_args &a, int d, int64_t o, int64_t i) {
  double w = a.i0[d][o] == i ? a.w0[d][o] : 0.0;
  if (!a.nearest && a.i1[d][o] == i) w += a.w1[d][o];
  return w;
}

template <typename T> __host__ __device__ inline void backward_at(const interp_args &a, const T *gs, T *gx, int64_t e) {
  int64_t plane = e / a.in_sz, r = e % a.in_sz;
  int64_t iw = r % a.in[2], ih = r / a.in[2] % a.in[1], id = r / (a.in[2] * a.in[1]);
  const T *g = gs + plane * a.out_sz;
  double sum = 0;
  for (int64_t od = a.lo[0][id]; od < a.hi[0][id]; od++) {
    double wd = weight(a, 0, od, id);
    if (wd == 0 && a.nearest) continue;
    for (int64_t oh = a.lo[1][ih]; oh < a.hi[1][ih]; oh++) {
      double wh = weight(a, 1, oh, ih);
      if (wh == 0 && a.nearest) continue;
      for (int64_t ow = a.lo[2][iw]; ow < a.hi[2][iw]; ow++) {
        double ww = weight(a, 2, ow, iw);
        if (ww == 0 && a.nearest) continue;
        sum += (double)g[(od * a.out[1] + oh) * a.out[2] + ow] * wd * wh * ww;
      }
    }
  }
  gx[e] = (T)sum;
}

template <typename T> __global__ void interp_kernel(interp_args a, bool backward, const T *src, T *dst, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    if (backward) backward_at<T>(a, src, dst, e);
    else forward_at<T>(a, src, dst, e);
  }
}

template <typename T> static int32_t run(const interp_args &a, bool backward, int64_t planes, const void *src, void *dst) {
  int64_t n = planes * (backward ? a.in_sz : a.out_sz);
  if (n == 0) return 0;
#ifdef LMCUDA_EMULATE
  for (int64_t e = 0; e < n; e++) {
    if (backward) backward_at<T>(a, (const T *)src, (T *)dst, e);
    else forward_at<T>(a, (const T *)src, (T *)dst, e);
  }
  return 0;
#else
  interp_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(a, backward, (const T *)src, (T *)dst, n);
  return launched("interpolation kernel");
#endif
}

int32_t interp(int32_t dtype, int32_t backward, int32_t nd, int32_t nearest, int64_t planes, const int64_t *sizes,
               const void *tables, const void *src, void *dst) {
  interp_args a;
  a.nd = nd, a.nearest = nearest;
  const char *t = (const char *)tables;
  for (int d = 0; d < 3; d++) {
    a.in[d] = sizes[d], a.out[d] = sizes[3 + d];
    if (a.in[d] < 1 || a.out[d] < 1)
      return refuse(LM_E_ARG, "interp: sizes %lld -> %lld in dim %d", (long long)a.in[d], (long long)a.out[d], d);
    int64_t o = a.out[d];
    a.i0[d] = (const int64_t *)t, a.i1[d] = a.i0[d] + o;
    a.w0[d] = (const double *)(a.i1[d] + o), a.w1[d] = a.w0[d] + o;
    a.lo[d] = (const int64_t *)(a.w1[d] + o), a.hi[d] = a.lo[d] + a.in[d];
    t = (const char *)(a.hi[d] + a.in[d]);
  }
  a.in_sz = a.in[0] * a.in[1] * a.in[2], a.out_sz = a.out[0] * a.out[1] * a.out[2];
  if (dtype == LM_F32) return run<float>(a, backward != 0, planes, src, dst);
  if (dtype == LM_F64) return run<double>(a, backward != 0, planes, src, dst);
  return refuse(LM_E_DTYPE, "interp: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
