/* grid.cu - grid_sample (2-D and 3-D, bilinear or nearest, zeros or border
 * padding) forward and backward for the backend's grid_sample entry
 * (src/backend.h), with src/ops/resample.c's sampling rules. The forward
 * and the grid's gradient run one thread per point; the input's gradient
 * one thread per (sample, channel) plane, adding its points in order (as
 * the CPU does: deterministic, but slow for few planes; atomics or a
 * sorted gather would be the faster path). */
#include "common.cuh"
#include <math.h>

namespace lmcuda {

struct grid_args {
  int32_t nd;
  int64_t N, C, P, in[3];
  const void *x, *grid, *g;
  void *y, *ggrid;
  bool nearest, border, align;
};

struct axis_pos {
  int64_t i0;
  double w0, w1, mult;
};

__host__ __device__ inline axis_pos axis_at(const grid_args &j, double gv, int64_t size) {
  axis_pos a;
  double c;
  if (j.align) {
    c = (gv + 1) / 2 * (double)(size - 1);
    a.mult = (double)(size - 1) / 2;
  } else {
    c = ((gv + 1) * (double)size - 1) / 2;
    a.mult = (double)size / 2;
  }
  if (j.border) {
    if (!(c > 0)) c = 0, a.mult = 0;
    else if (c >= (double)(size - 1)) c = (double)(size - 1), a.mult = 0;
  }
  if (j.nearest) {
    double r = nearbyint(c);
    a.i0 = r >= -1 && r <= (double)size ? (int64_t)r : -1;
    a.w0 = 1, a.w1 = 0;
  } else {
    double f = floor(c);
    a.i0 = f >= -1 && f <= (double)size ? (int64_t)f : -2;
    a.w1 = c - f;
    a.w0 = (f + 1) - c;
  }
  return a;
}

struct corners {
  int32_t n;
  int64_t off[8];
  double w[8], dw[8][3];
  double mult[3];
};

template <typename T> __host__ __device__ inline void corners_at(const grid_args &j, int64_t n, int64_t p, corners *k) {
  axis_pos ax[3] = {{0, 1, 0, 0}, {0, 1, 0, 0}, {0, 1, 0, 0}};
  const int64_t gbase = (n * j.P + p) * j.nd;
  for (int32_t c = 0; c < j.nd; c++) {
    int32_t axis = 2 - c;
    ax[axis] = axis_at(j, (double)((const T *)j.grid)[gbase + c], j.in[axis]);
  }
  int32_t nd_d = j.nd == 3 && !j.nearest ? 2 : 1, nh = j.nearest ? 1 : 2, nw = nh;
  k->n = 0;
  for (int32_t a = 0; a < 3; a++) k->mult[a] = ax[a].mult;
  for (int32_t a = 0; a < nd_d; a++) {
    int64_t id = ax[0].i0 + a;
    if (j.nd == 3 && (id < 0 || id >= j.in[0])) continue;
    double wd = a ? ax[0].w1 : ax[0].w0, sd = a ? 1 : -1;
    for (int32_t b = 0; b < nh; b++) {
      int64_t ih = ax[1].i0 + b;
      if (ih < 0 || ih >= j.in[1]) continue;
      double wh = b ? ax[1].w1 : ax[1].w0, sh = b ? 1 : -1;
      for (int32_t c = 0; c < nw; c++) {
        int64_t iw = ax[2].i0 + c;
        if (iw < 0 || iw >= j.in[2]) continue;
        double ww = c ? ax[2].w1 : ax[2].w0, sw = c ? 1 : -1;
        int32_t m = k->n++;
        k->off[m] = ((j.nd == 3 ? id : 0) * j.in[1] + ih) * j.in[2] + iw;
        k->w[m] = j.nd == 3 ? ww * wh * wd : ww * wh;
        k->dw[m][2] = sw * wh * (j.nd == 3 ? wd : 1);
        k->dw[m][1] = sh * ww * (j.nd == 3 ? wd : 1);
        k->dw[m][0] = sd * ww * wh;
      }
    }
  }
}

/* Point i = (n, p): forward samples every channel; backward the grid's gradient. */
template <typename T> __host__ __device__ inline void point_at(const grid_args &j, bool backward, int64_t i) {
  int64_t plane = j.in[0] * j.in[1] * j.in[2], n = i / j.P, p = i % j.P;
  const T *x = (const T *)j.x;
  corners k;
  if (!backward) {
    corners_at<T>(j, n, p, &k);
    for (int64_t ch = 0; ch < j.C; ch++) {
      const T *xp = x + (n * j.C + ch) * plane;
      double v = 0;
      for (int32_t m = 0; m < k.n; m++) v += k.w[m] * (double)xp[k.off[m]];
      ((T *)j.y)[(n * j.C + ch) * j.P + p] = (T)v;
    }
    return;
  }
  double acc[3] = {0, 0, 0};
  if (!j.nearest) {
    corners_at<T>(j, n, p, &k);
    for (int64_t ch = 0; ch < j.C; ch++) {
      const T *xp = x + (n * j.C + ch) * plane;
      double g = (double)((const T *)j.g)[(n * j.C + ch) * j.P + p];
      for (int32_t m = 0; m < k.n; m++) {
        double xv = (double)xp[k.off[m]] * g;
        for (int32_t a = 0; a < 3; a++) acc[a] += xv * k.dw[m][a];
      }
    }
    for (int32_t a = 0; a < 3; a++) acc[a] *= k.mult[a];
  }
  for (int32_t c = 0; c < j.nd; c++) ((T *)j.ggrid)[i * j.nd + c] = (T)acc[2 - c];
}

/* Plane q = (n, ch) of the input's gradient: its points added in order. */
template <typename T> __host__ __device__ inline void plane_at(const grid_args &j, int64_t q) {
  int64_t plane = j.in[0] * j.in[1] * j.in[2], n = q / j.C;
  T *gx = (T *)j.y + q * plane;
  for (int64_t e = 0; e < plane; e++) gx[e] = 0;
  for (int64_t p = 0; p < j.P; p++) {
    corners k;
    corners_at<T>(j, n, p, &k);
    double g = (double)((const T *)j.g)[q * j.P + p];
    for (int32_t m = 0; m < k.n; m++) gx[k.off[m]] += (T)(k.w[m] * g);
  }
}

template <typename T> __global__ void point_kernel(grid_args j, bool backward, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    point_at<T>(j, backward, i);
}

template <typename T> __global__ void plane_kernel(grid_args j, int64_t n) {
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < n; q += (int64_t)gridDim.x * blockDim.x)
    plane_at<T>(j, q);
}

template <typename T> static int32_t run(const grid_args &j, bool backward) {
  int64_t points = j.N * j.P, planes = j.N * j.C;
  bool do_points = !backward || j.ggrid, do_planes = backward && j.y;
#ifdef LMCUDA_EMULATE
  if (do_points)
    for (int64_t i = 0; i < points; i++) point_at<T>(j, backward, i);
  if (do_planes)
    for (int64_t q = 0; q < planes; q++) plane_at<T>(j, q);
  return 0;
#else
  int32_t st = 0;
  if (do_points && points > 0) {
    point_kernel<T><<<grid_for(points, 128), 128, 0, stream>>>(j, backward, points);
    if ((st = launched("grid_sample kernel"))) return st;
  }
  if (do_planes && planes > 0) {
    plane_kernel<T><<<grid_for(planes, 64), 64, 0, stream>>>(j, planes);
    st = launched("grid_sample input gradient kernel");
  }
  return st;
#endif
}

int32_t grid_sample(int32_t dtype, int32_t backward, int32_t nd, int32_t flags, int64_t N, int64_t C, int64_t P,
                    const int64_t *in, const void *x, const void *grid, const void *g, void *y, void *ggrid) {
  if (nd != 2 && nd != 3) return refuse(LM_E_ARG, "grid_sample: %d spatial dims, expected 2 or 3", (int)nd);
  grid_args j;
  j.nd = nd, j.N = N, j.C = C, j.P = P;
  for (int d = 0; d < 3; d++) j.in[d] = in[d];
  j.x = x, j.grid = grid, j.g = g, j.y = y, j.ggrid = ggrid;
  j.nearest = flags & 1, j.border = (flags & 2) != 0, j.align = (flags & 4) != 0;
  if (dtype == LM_F32) return run<float>(j, backward != 0);
  if (dtype == LM_F64) return run<double>(j, backward != 0);
  return refuse(LM_E_DTYPE, "grid_sample: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
