/* scan.cu - cumsum (lm_backend.cumsum): one thread per line along the dim,
 * walking it in order with a double accumulator (f32, f64) or a wrapping
 * 64-bit one (i64), so the sums are the CPU's, bit for bit. Lines are
 * independent; long lines with few of them would want a parallel scan
 * (not yet). */
#include "common.cuh"

namespace lmcuda {
namespace {

struct scan_args {
  int32_t ndim, dim;
  int64_t shape[LM_MAX_DIMS], ost[LM_MAX_DIMS], xst[LM_MAX_DIMS];
};

template <typename T, typename ACC> struct scan_fn {
  scan_args a;
  T *out;
  const T *x;
  __host__ __device__ void operator()(int64_t line) const {
    int64_t o = 0, s = 0, rest = line;
    for (int32_t d = a.ndim - 1; d >= 0; d--) {
      if (d == a.dim) continue;
      const int64_t c = rest % a.shape[d];
      rest /= a.shape[d];
      o += c * a.ost[d];
      s += c * a.xst[d];
    }
    ACC acc = 0;
    for (int64_t r = 0; r < a.shape[a.dim]; r++) {
      acc += (ACC)x[s + r * a.xst[a.dim]];
      out[o + r * a.ost[a.dim]] = (T)acc;
    }
  }
};

template <typename T, typename ACC> int32_t scan_run(const scan_args &a, int64_t lines, void *out, const void *x) {
  scan_fn<T, ACC> f = {a, (T *)out, (const T *)x};
  return for_each(lines, f, "cumsum kernel");
}

} // namespace

int32_t cumsum(int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out, const int64_t *ostride,
               const void *x, const int64_t *xstride) {
  if (ndim < 1 || ndim > LM_MAX_DIMS || dim < 0 || dim >= ndim) return refuse(LM_E_ARG, "cumsum: dim %d of %d", dim, ndim);
  scan_args a;
  memset(&a, 0, sizeof a);
  a.ndim = ndim;
  a.dim = dim;
  int64_t lines = 1;
  for (int32_t d = 0; d < ndim; d++) {
    a.shape[d] = shape[d];
    a.ost[d] = ostride[d];
    a.xst[d] = xstride[d];
    if (d != dim) lines *= shape[d];
  }
  if (lines == 0 || shape[dim] == 0) return 0;
  switch (dtype) {
  case LM_F32: return scan_run<float, double>(a, lines, out, x);
  case LM_F64: return scan_run<double, double>(a, lines, out, x);
  case LM_I64: return scan_run<int64_t, uint64_t>(a, lines, out, x);
  }
  return refuse(LM_E_ARG, "cumsum: dtype %d, expected f32, f64 or i64", dtype);
}

} // namespace lmcuda
