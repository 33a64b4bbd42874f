/* norm.cu - the passes of batch, group and layer norm (src/ops/norm.c) for
 * the backend's norm_pass entry (src/backend.h).
 *
 * liblumen computes the per-group coefficients between passes; here are
 * the loops over the data: sums per group (one block per group, each
 * thread striding through the group, then a fixed tree in shared memory,
 * so the order of the additions depends on the sizes only) and the
 * elementwise passes (one thread per element). */
#include "common.cuh"

namespace lmcuda {

enum { NORM_THREADS = 256 };

struct norm_args {
  int32_t kind;
  int64_t ngroups, group_stride, nseg, seg_len, seg_stride, len;
  const void *x, *g;
  void *y;
  double *coef; /* k, a, b, c: ngroups each */
  const double *w, *bias;
  double *sums;
};

/* Element offset of position j of group q. */
__host__ __device__ inline int64_t norm_offset(const norm_args &a, int64_t q, int64_t j) {
  return q * a.group_stride + (j / a.seg_len) * a.seg_stride + j % a.seg_len;
}

/* Thread tid's share of group q's two sums. */
template <typename T> __host__ __device__ inline void thread_sums(const norm_args &a, int64_t q, int tid, double *u, double *v) {
  const T *x = (const T *)a.x, *g = (const T *)a.g;
  double k = a.kind == LM_NORM_MOMENTS ? (a.len ? (double)x[q * a.group_stride] : 0.0) : a.coef[q];
  double s1 = 0, s2 = 0;
  for (int64_t j = tid; j < a.len; j += NORM_THREADS) {
    int64_t o = norm_offset(a, q, j);
    double d = (double)x[o] - k;
    if (a.kind == LM_NORM_MOMENTS) {
      s1 += d;
      s2 += d * d;
    } else {
      double gw = a.w ? (double)g[o] * a.w[j] : (double)g[o];
      s1 += gw;
      s2 += gw * d;
    }
  }
  *u = s1, *v = s2;
}

template <typename T> __host__ __device__ inline void element_at(const norm_args &a, int64_t e) {
  int64_t q = e / a.len, j = e % a.len, o = norm_offset(a, q, j);
  const double *A = a.coef + a.ngroups, *B = A + a.ngroups, *Cc = B + a.ngroups;
  double x = (double)((const T *)a.x)[o], r;
  if (a.kind == LM_NORM_AFFINE) {
    r = A[q] * x + B[q];
    if (a.w) r *= a.w[j];
    if (a.bias) r += a.bias[j];
  } else {
    double g = (double)((const T *)a.g)[o];
    r = a.w ? A[q] * g * a.w[j] + B[q] * x + Cc[q] : A[q] * g + B[q] * x + Cc[q];
  }
  ((T *)a.y)[o] = (T)r;
}

template <typename T> __global__ void sums_kernel(norm_args a) {
  __shared__ double s1[NORM_THREADS], s2[NORM_THREADS];
  int tid = threadIdx.x;
  for (int64_t q = blockIdx.x; q < a.ngroups; q += gridDim.x) {
    thread_sums<T>(a, q, tid, &s1[tid], &s2[tid]);
    __syncthreads();
    for (int step = NORM_THREADS / 2; step > 0; step >>= 1) {
      if (tid < step) s1[tid] += s1[tid + step], s2[tid] += s2[tid + step];
      __syncthreads();
    }
    if (tid == 0) {
      a.sums[2 * q] = s1[0], a.sums[2 * q + 1] = s2[0];
      if (a.kind == LM_NORM_MOMENTS) a.coef[q] = a.len ? (double)((const T *)a.x)[q * a.group_stride] : 0.0;
    }
    __syncthreads();
  }
}

template <typename T> __global__ void element_kernel(norm_args a, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    element_at<T>(a, e);
}

template <typename T> static int32_t run(const norm_args &a) {
  bool sums = a.kind == LM_NORM_MOMENTS || a.kind == LM_NORM_GRAD_SUMS;
  int64_t n = sums ? a.ngroups : a.ngroups * a.len;
  if (n == 0) return 0;
#ifdef LMCUDA_EMULATE
  if (sums) {
    static double s1[NORM_THREADS], s2[NORM_THREADS];
    for (int64_t q = 0; q < a.ngroups; q++) {
      for (int tid = 0; tid < NORM_THREADS; tid++) thread_sums<T>(a, q, tid, &s1[tid], &s2[tid]);
      for (int step = NORM_THREADS / 2; step > 0; step >>= 1)
        for (int tid = 0; tid < step; tid++) s1[tid] += s1[tid + step], s2[tid] += s2[tid + step];
      a.sums[2 * q] = s1[0], a.sums[2 * q + 1] = s2[0];
      if (a.kind == LM_NORM_MOMENTS) a.coef[q] = a.len ? (double)((const T *)a.x)[q * a.group_stride] : 0.0;
    }
  } else {
    for (int64_t e = 0; e < n; e++) element_at<T>(a, e);
  }
  return 0;
#else
  if (sums) {
    int64_t most = (int64_t)(sm_count > 0 ? sm_count : 32) * 8;
    sums_kernel<T><<<(unsigned)(n < most ? n : most), NORM_THREADS, 0, stream>>>(a);
  } else {
    element_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(a, n);
  }
  return launched(sums ? "norm sums kernel" : "norm kernel");
#endif
}

int32_t norm_pass(int32_t kind, int32_t dtype, const int64_t *layout, const void *x, const void *g, void *y,
                  double *coef, const double *w, const double *bias, double *sums) {
  norm_args a;
  a.kind = kind;
  a.ngroups = layout[0], a.group_stride = layout[1], a.nseg = layout[2], a.seg_len = layout[3],
  a.seg_stride = layout[4];
  a.len = a.nseg * a.seg_len;
  a.x = x, a.g = g, a.y = y, a.coef = coef, a.w = w, a.bias = bias, a.sums = sums;
  if (kind < LM_NORM_MOMENTS || kind > LM_NORM_GRAD_X)
    return refuse(LM_E_ARG, "norm_pass: kind %d, expected LM_NORM_MOMENTS .. LM_NORM_GRAD_X", (int)kind);
  if (a.seg_len < 1 && a.len) return refuse(LM_E_ARG, "norm_pass: seg_len %lld", (long long)a.seg_len);
  if ((kind == LM_NORM_MOMENTS || kind == LM_NORM_GRAD_SUMS) && !sums)
    return refuse(LM_E_ARG, "norm_pass: a sums pass without sums");
  if (dtype == LM_F32) return run<float>(a);
  if (dtype == LM_F64) return run<double>(a);
  return refuse(LM_E_DTYPE, "norm_pass: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
