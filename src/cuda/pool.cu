/* pool.cu - max, average and adaptive average pooling, forward and
 * backward, for the backend's pool entry (src/backend.h).
 *
 * One thread per written element: the forward walks its output's window;
 * the backward is a gather too (each input position finds the outputs
 * whose window holds it, in increasing order), so there are no atomics and
 * the sums do not depend on the schedule. */
#include "common.cuh"
#include <math.h>

namespace lmcuda {

struct pool_geom {
  int64_t in[3], out[3], k[3], s[3], pad[3], dil[3];
  int32_t op, count_pad;
  double divisor;
  int64_t in_sz, out_sz;
};

/* The taps of output o along dim d: first tap, one past the last, step. */
__host__ __device__ inline void window(const pool_geom &g, int d, int64_t o, int64_t *lo, int64_t *hi, int64_t *step) {
  if (g.op == LM_OP_ADAPTIVE_AVG_POOL) {
    *lo = o * g.in[d] / g.out[d];
    *hi = ((o + 1) * g.in[d] + g.out[d] - 1) / g.out[d];
    *step = 1;
    return;
  }
  int64_t start = o * g.s[d] - g.pad[d], end = start + (g.k[d] - 1) * g.dil[d] + 1;
  int64_t first = start;
  if (first < 0) first += ((-first + g.dil[d] - 1) / g.dil[d]) * g.dil[d];
  *lo = first;
  *hi = end < g.in[d] ? end : g.in[d];
  *step = g.dil[d];
}

/* The divisor of an average pool's output (od, oh, ow). */
__host__ __device__ inline double avg_divisor(const pool_geom &g, const int64_t *o) {
  if (g.divisor > 0) return g.divisor;
  int64_t n = 1;
  for (int d = 0; d < 3; d++) {
    int64_t lo, hi, step;
    window(g, d, o[d], &lo, &hi, &step);
    if (g.op == LM_OP_AVG_POOL && g.count_pad) {
      int64_t start = o[d] * g.s[d] - g.pad[d], end = start + g.k[d];
      n *= (end < g.in[d] + g.pad[d] ? end : g.in[d] + g.pad[d]) - start;
    } else {
      n *= hi - lo;
    }
  }
  return (double)n;
}

template <typename T>
__host__ __device__ inline void forward_at(const pool_geom &g, const T *x, T *y, int64_t *idx, int64_t e) {
  int64_t o[3], plane = e / g.out_sz, r = e % g.out_sz;
  o[2] = r % g.out[2], o[1] = r / g.out[2] % g.out[1], o[0] = r / (g.out[2] * g.out[1]);
  int64_t lo[3], hi[3], st[3];
  for (int d = 0; d < 3; d++) window(g, d, o[d], &lo[d], &hi[d], &st[d]);
  const T *xp = x + plane * g.in_sz;
  if (g.op == LM_OP_MAX_POOL) {
    double best = -INFINITY;
    int64_t best_i = (lo[0] * g.in[1] + lo[1]) * g.in[2] + lo[2];
    for (int64_t id = lo[0]; id < hi[0]; id += st[0])
      for (int64_t ih = lo[1]; ih < hi[1]; ih += st[1])
        for (int64_t iw = lo[2]; iw < hi[2]; iw += st[2]) {
          int64_t i = (id * g.in[1] + ih) * g.in[2] + iw;
          double v = (double)xp[i];
          if (v > best || v != v) best = v, best_i = i;
        }
    y[e] = (T)best;
    if (idx) idx[e] = best_i;
    return;
  }
  double sum = 0;
  for (int64_t id = lo[0]; id < hi[0]; id++)
    for (int64_t ih = lo[1]; ih < hi[1]; ih++)
      for (int64_t iw = lo[2]; iw < hi[2]; iw++) sum += (double)xp[(id * g.in[1] + ih) * g.in[2] + iw];
  y[e] = (T)(sum / avg_divisor(g, o));
}

/* The outputs along dim d whose window holds input position i: [*a, *b]. */
__host__ __device__ inline void holders(const pool_geom &g, int d, int64_t i, int64_t *a, int64_t *b) {
  if (g.op == LM_OP_ADAPTIVE_AVG_POOL) {
    int64_t o = i * g.out[d] / g.in[d], lo, hi, st;
    *a = o;
    while (*a > 0) {
      window(g, d, *a - 1, &lo, &hi, &st);
      if (hi <= i) break;
      (*a)--;
    }
    *b = o;
    while (*b + 1 < g.out[d]) {
      window(g, d, *b + 1, &lo, &hi, &st);
      if (lo > i) break;
      (*b)++;
    }
    return;
  }
  /* o * s - pad <= i <= o * s - pad + k - 1 (average pools: dilation 1) */
  int64_t q = i + g.pad[d] - g.k[d] + 1;
  *a = q <= 0 ? 0 : (q + g.s[d] - 1) / g.s[d];
  *b = (i + g.pad[d]) / g.s[d];
  if (*b > g.out[d] - 1) *b = g.out[d] - 1;
}

/* The output along dim d whose tap t lands on input position i, or -1. */
__host__ __device__ inline int64_t tap_output(const pool_geom &g, int d, int64_t i, int64_t t) {
  int64_t q = i + g.pad[d] - t * g.dil[d];
  if (q < 0 || q % g.s[d]) return -1;
  q /= g.s[d];
  return q < g.out[d] ? q : -1;
}

template <typename T>
__host__ __device__ inline void backward_at(const pool_geom &g, const T *gy, T *gx, const int64_t *idx, int64_t e) {
  int64_t i[3], plane = e / g.in_sz, r = e % g.in_sz;
  i[2] = r % g.in[2], i[1] = r / g.in[2] % g.in[1], i[0] = r / (g.in[2] * g.in[1]);
  const T *gp = gy + plane * g.out_sz;
  double sum = 0;
  if (g.op == LM_OP_MAX_POOL) {
    const int64_t *ip = idx + plane * g.out_sz;
    /* taps from the last to the first: outputs in increasing order */
    for (int64_t td = g.k[0] - 1; td >= 0; td--) {
      int64_t od = tap_output(g, 0, i[0], td);
      if (od < 0) continue;
      for (int64_t th = g.k[1] - 1; th >= 0; th--) {
        int64_t oh = tap_output(g, 1, i[1], th);
        if (oh < 0) continue;
        for (int64_t tw = g.k[2] - 1; tw >= 0; tw--) {
          int64_t ow = tap_output(g, 2, i[2], tw);
          if (ow < 0) continue;
          int64_t o = (od * g.out[1] + oh) * g.out[2] + ow;
          if (ip[o] == r) sum += (double)gp[o];
        }
      }
    }
  } else {
    int64_t a[3], b[3], o[3];
    for (int d = 0; d < 3; d++) holders(g, d, i[d], &a[d], &b[d]);
    for (o[0] = a[0]; o[0] <= b[0]; o[0]++)
      for (o[1] = a[1]; o[1] <= b[1]; o[1]++)
        for (o[2] = a[2]; o[2] <= b[2]; o[2]++)
          sum += (double)gp[(o[0] * g.out[1] + o[1]) * g.out[2] + o[2]] / avg_divisor(g, o);
  }
  gx[e] = (T)sum;
}

template <typename T> __global__ void forward_kernel(pool_geom g, const T *x, T *y, int64_t *idx, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    forward_at(g, x, y, idx, e);
}

template <typename T> __global__ void backward_kernel(pool_geom g, const T *gy, T *gx, const int64_t *idx, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    backward_at(g, gy, gx, idx, e);
}

template <typename T>
static int32_t run(const pool_geom &g, bool backward, int64_t planes, const void *src, void *dst, int64_t *idx) {
  int64_t n = planes * (backward ? g.in_sz : g.out_sz);
  if (n == 0) return 0;
#ifdef LMCUDA_EMULATE
  for (int64_t e = 0; e < n; e++) {
    if (backward) backward_at<T>(g, (const T *)src, (T *)dst, idx, e);
    else forward_at<T>(g, (const T *)src, (T *)dst, idx, e);
  }
  return 0;
#else
  unsigned blocks = grid_for(n, 256);
  if (backward) backward_kernel<T><<<blocks, 256, 0, stream>>>(g, (const T *)src, (T *)dst, idx, n);
  else forward_kernel<T><<<blocks, 256, 0, stream>>>(g, (const T *)src, (T *)dst, idx, n);
  return launched(backward ? "pool backward kernel" : "pool kernel");
#endif
}

int32_t pool(int32_t op, int32_t dtype, int32_t backward, int64_t planes, const int64_t *geom, int32_t count_pad,
             double divisor, const void *src, void *dst, int64_t *indices) {
  if (op != LM_OP_MAX_POOL && op != LM_OP_AVG_POOL && op != LM_OP_ADAPTIVE_AVG_POOL)
    return refuse(LM_E_ARG, "pool: op %d, expected max, average or adaptive average pooling", (int)op);
  pool_geom g;
  for (int d = 0; d < 3; d++) {
    g.in[d] = geom[d];
    g.out[d] = geom[3 + d];
    g.k[d] = geom[6 + d];
    g.s[d] = geom[9 + d];
    g.pad[d] = geom[12 + d];
    g.dil[d] = geom[15 + d];
    if (g.in[d] < 1 || g.out[d] < 1 || (op != LM_OP_ADAPTIVE_AVG_POOL && (g.k[d] < 1 || g.s[d] < 1 || g.dil[d] < 1)))
      return refuse(LM_E_ARG, "pool: sizes %lld -> %lld, kernel %lld, stride %lld, dilation %lld in dim %d",
                    (long long)g.in[d], (long long)g.out[d], (long long)g.k[d], (long long)g.s[d], (long long)g.dil[d], d);
  }
  g.op = op, g.count_pad = count_pad, g.divisor = divisor;
  g.in_sz = g.in[0] * g.in[1] * g.in[2];
  g.out_sz = g.out[0] * g.out[1] * g.out[2];
  if (backward && op == LM_OP_MAX_POOL && !indices) return refuse(LM_E_ARG, "pool: max pool backward without indices");
  if (dtype == LM_F32) return run<float>(g, backward != 0, planes, src, dst, indices);
  if (dtype == LM_F64) return run<double>(g, backward != 0, planes, src, dst, indices);
  return refuse(LM_E_DTYPE, "pool: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
