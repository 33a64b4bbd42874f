/* conv.cu - convolution's column matrix (im2col) and its fold back
 * (col2im) for the backend's im2col entry (src/backend.h); the products
 * themselves go through blas.cu.
 *
 * Both are gathers, one thread per written element, so nothing needs
 * atomics and results do not depend on the schedule: im2col reads one
 * image value (or 0) per column entry; col2im sums, for one image
 * position, the column entries whose kernel tap lands on it (in the order
 * channel, kd, kh, kw), so the same position always adds in the same
 * order. */
#include "common.cuh"

namespace lmcuda {

struct conv_geom {
  int64_t img[3], col[3], k[3], stride[3], pad[3], dil[3];
  int64_t c, img_sz, col_sz, ksz;
};

/* cols[n][ch, kd, kh, kw][od, oh, ow] for flat index e over the column
   matrices of all samples. */
template <typename T> __host__ __device__ inline void im2col_at(const conv_geom &g, const T *img, T *cols, int64_t e) {
  int64_t ow = e % g.col[2], r = e / g.col[2];
  int64_t oh = r % g.col[1];
  r /= g.col[1];
  int64_t od = r % g.col[0];
  r /= g.col[0];
  int64_t kw = r % g.k[2];
  r /= g.k[2];
  int64_t kh = r % g.k[1];
  r /= g.k[1];
  int64_t kd = r % g.k[0];
  r /= g.k[0]; /* r = sample * c + ch */
  int64_t id = od * g.stride[0] - g.pad[0] + kd * g.dil[0];
  int64_t ih = oh * g.stride[1] - g.pad[1] + kh * g.dil[1];
  int64_t iw = ow * g.stride[2] - g.pad[2] + kw * g.dil[2];
  bool inside = id >= 0 && id < g.img[0] && ih >= 0 && ih < g.img[1] && iw >= 0 && iw < g.img[2];
  cols[e] = inside ? img[r * g.img_sz + (id * g.img[1] + ih) * g.img[2] + iw] : T(0);
}

/* The grid positions o in [0, n) with o * s - p + t * dil == i for one
   dim: o = (i + p - t * dil) / s when that divides and lies inside. */
__host__ __device__ inline int64_t tap_source(int64_t i, int64_t p, int64_t t, int64_t dil, int64_t s, int64_t n) {
  int64_t q = i + p - t * dil;
  if (q < 0 || q % s) return -1;
  q /= s;
  return q < n ? q : -1;
}

/* img[n][ch][id, ih, iw] = the sum of the column entries that read it. */
template <typename T> __host__ __device__ inline void col2im_at(const conv_geom &g, T *img, const T *cols, int64_t e) {
  int64_t iw = e % g.img[2], r = e / g.img[2];
  int64_t ih = r % g.img[1];
  r /= g.img[1];
  int64_t id = r % g.img[0];
  r /= g.img[0]; /* r = sample * c + ch */
  const T *base = cols + r * g.ksz * g.col_sz;
  double sum = 0;
  for (int64_t kd = 0; kd < g.k[0]; kd++) {
    int64_t od = tap_source(id, g.pad[0], kd, g.dil[0], g.stride[0], g.col[0]);
    if (od < 0) continue;
    for (int64_t kh = 0; kh < g.k[1]; kh++) {
      int64_t oh = tap_source(ih, g.pad[1], kh, g.dil[1], g.stride[1], g.col[1]);
      if (oh < 0) continue;
      for (int64_t kw = 0; kw < g.k[2]; kw++) {
        int64_t ow = tap_source(iw, g.pad[2], kw, g.dil[2], g.stride[2], g.col[2]);
        if (ow < 0) continue;
        int64_t row = (kd * g.k[1] + kh) * g.k[2] + kw;
        sum += (double)base[row * g.col_sz + (od * g.col[1] + oh) * g.col[2] + ow];
      }
    }
  }
  img[e] = (T)sum;
}

template <typename T> __global__ void im2col_kernel(conv_geom g, const T *img, T *cols, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    im2col_at(g, img, cols, e);
}

template <typename T> __global__ void col2im_kernel(conv_geom g, T *img, const T *cols, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    col2im_at(g, img, cols, e);
}

template <typename T> static int32_t run(const conv_geom &g, bool to_cols, int64_t n, void *img, void *cols) {
  int64_t count = to_cols ? n * g.c * g.ksz * g.col_sz : n * g.c * g.img_sz;
  if (count == 0) return 0;
#ifdef LMCUDA_EMULATE
  for (int64_t e = 0; e < count; e++) {
    if (to_cols) im2col_at<T>(g, (const T *)img, (T *)cols, e);
    else col2im_at<T>(g, (T *)img, (const T *)cols, e);
  }
  return 0;
#else
  unsigned blocks = grid_for(count, 256);
  if (to_cols) im2col_kernel<T><<<blocks, 256, 0, stream>>>(g, (const T *)img, (T *)cols, count);
  else col2im_kernel<T><<<blocks, 256, 0, stream>>>(g, (T *)img, (const T *)cols, count);
  return launched(to_cols ? "im2col kernel" : "col2im kernel");
#endif
}

int32_t im2col(int32_t dtype, int32_t to_cols, int64_t n, int64_t c, const int64_t *geom, void *img, void *cols) {
  conv_geom g;
  for (int d = 0; d < 3; d++) {
    g.img[d] = geom[d];
    g.col[d] = geom[3 + d];
    g.k[d] = geom[6 + d];
    g.stride[d] = geom[9 + d];
    g.pad[d] = geom[12 + d];
    g.dil[d] = geom[15 + d];
    if (g.stride[d] < 1 || g.dil[d] < 1 || g.k[d] < 1)
      return refuse(LM_E_ARG, "im2col: stride %lld, dilation %lld, kernel %lld in dim %d, expected >= 1",
                    (long long)g.stride[d], (long long)g.dil[d], (long long)g.k[d], d);
  }
  g.c = c;
  g.img_sz = g.img[0] * g.img[1] * g.img[2];
  g.col_sz = g.col[0] * g.col[1] * g.col[2];
  g.ksz = g.k[0] * g.k[1] * g.k[2];
  if (dtype == LM_F32) return run<float>(g, to_cols != 0, n, img, cols);
  if (dtype == LM_F64) return run<double>(g, to_cols != 0, n, img, cols);
  return refuse(LM_E_DTYPE, "im2col: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
