/* index.cu - gather, index_select, scatter and scatter_add along one dim
 * (lm_backend.index_along).
 *
 * A thread per position of the index: it turns the position into offsets of
 * the index, src and out, reads its index value and moves one element.
 * scatter_add adds with atomics, so float sums over duplicate indices come
 * in any order (an ulp of the CPU's sequential sums); scatter with
 * duplicate indices lands one of the writes, as torch on CUDA. */
#include "common.cuh"

namespace lmcuda {
namespace {

struct index_args {
  int32_t mode, ndim, dim;
  int64_t shape[LM_MAX_DIMS], ost[LM_MAX_DIMS], sst[LM_MAX_DIMS], ist[LM_MAX_DIMS];
};

/* *p += v, atomically on the device; integers wrap (through unsigned). */
#ifdef __CUDA_ARCH__
__device__ inline void add_at(float *p, float v) { atomicAdd(p, v); }
__device__ inline void add_at(double *p, double v) { atomicAdd(p, v); }
__device__ inline void add_at(int32_t *p, int32_t v) { atomicAdd((unsigned int *)p, (unsigned int)v); }
__device__ inline void add_at(int64_t *p, int64_t v) { atomicAdd((unsigned long long *)p, (unsigned long long)v); }
__device__ inline void add_at(uint8_t *p, uint8_t v) { *p = (uint8_t)(*p + v); } /* refused before launch */
#else
inline void add_at(float *p, float v) { *p += v; }
inline void add_at(double *p, double v) { *p += v; }
inline void add_at(int32_t *p, int32_t v) { *p = (int32_t)((uint32_t)*p + (uint32_t)v); }
inline void add_at(int64_t *p, int64_t v) { *p = (int64_t)((uint64_t)*p + (uint64_t)v); }
inline void add_at(uint8_t *p, uint8_t v) { *p = (uint8_t)(*p + v); }
#endif

template <typename T> struct index_fn {
  index_args a;
  T *out;
  const T *src;
  const int64_t *idx;
  __host__ __device__ void operator()(int64_t k) const {
    int64_t o = 0, s = 0, ix = 0, rest = k, at = 0;
    for (int32_t d = a.ndim - 1; d >= 0; d--) {
      const int64_t c = rest % a.shape[d];
      rest /= a.shape[d];
      ix += c * a.ist[d];
      if (d == a.dim) {
        at = c;
        continue;
      }
      o += c * a.ost[d];
      s += c * a.sst[d];
    }
    const int64_t v = idx[ix];
    if (a.mode == LM_INDEX_GATHER) {
      out[o + at * a.ost[a.dim]] = src[s + v * a.sst[a.dim]];
    } else if (a.mode == LM_INDEX_SCATTER) {
      out[o + v * a.ost[a.dim]] = src[s + at * a.sst[a.dim]];
    } else {
      add_at(out + o + v * a.ost[a.dim], src[s + at * a.sst[a.dim]]);
    }
  }
};

template <typename T>
int32_t index_run(const index_args &a, int64_t n, void *out, const void *src, const int64_t *idx) {
  index_fn<T> f = {a, (T *)out, (const T *)src, idx};
  return for_each(n, f, "index kernel");
}

} // namespace

int32_t index_along(int32_t mode, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out,
                    const int64_t *ostride, const void *src, const int64_t *sstride, const int64_t *idx,
                    const int64_t *istride) {
  if (mode < LM_INDEX_GATHER || mode > LM_INDEX_SCATTER_ADD || ndim < 1 || ndim > LM_MAX_DIMS || dim < 0 || dim >= ndim)
    return refuse(LM_E_ARG, "index_along: mode %d over %d dims (dim %d)", mode, ndim, dim);
  index_args a;
  memset(&a, 0, sizeof a);
  a.mode = mode;
  a.ndim = ndim;
  a.dim = dim;
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; d++) {
    n *= a.shape[d] = shape[d];
    a.ost[d] = ostride[d];
    a.sst[d] = sstride[d];
    a.ist[d] = istride[d];
  }
  if (n == 0) return 0;
  const bool add = mode == LM_INDEX_SCATTER_ADD;
  switch (dtype) {
  case LM_F32: return index_run<float>(a, n, out, src, idx);
  case LM_F64: return index_run<double>(a, n, out, src, idx);
  case LM_I32: return index_run<int32_t>(a, n, out, src, idx);
  case LM_I64: return index_run<int64_t>(a, n, out, src, idx);
  case LM_U8: case LM_BOOL:
    if (add) break;
    return index_run<uint8_t>(a, n, out, src, idx);
  }
  return refuse(LM_E_DTYPE, "%s of dtype %d is not supported on this device", add ? "scatter_add" : "index_along", dtype);
}

} // namespace lmcuda
