/* common.cuh - what the files of the CUDA backend share.
 *
 * backend.cu owns the stream, the error message and the table; the op
 * kernels live one family per file (elementwise.cu, reduce.cu, blas.cu)
 * and enqueue their work on that one stream, returning 0 or a negative
 * LM_E_* code with the message set (src/backend.h). */
#ifndef LUMEN_CUDA_COMMON_CUH
#define LUMEN_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>

#include "../backend.h"
#include "../lumen.h"

namespace lmcuda {

/* The process's one stream (made by init). */
extern cudaStream_t stream;
/* Streaming multiprocessors of the device (for grid sizes). */
extern int sm_count;

/* Sets the calling thread's message "what: <CUDA's words>" and returns
   LM_E_OOM or LM_E_DEVICE. */
int32_t fail(const char *what, cudaError_t e);
/* Sets the message (printf-style) and returns code. */
int32_t refuse(int32_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The launch just made, checked. */
int32_t launched(const char *what);

/* Blocks of threads threads to cover n items with a grid-stride loop:
   enough to fill the device, no more. */
inline unsigned grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads, most = (int64_t)(sm_count > 0 ? sm_count : 32) * 32;
  return (unsigned)(b < 1 ? 1 : b > most ? most : b);
}

/* The kernel entries of lm_backend, in the table's order: the real backend
   (backend.cu) and the host emulation (tests/plugin/cuda_emulated.cu) both
   end their tables with this. */
#define LMCUDA_KERNEL_ENTRIES                                                                              \
  lmcuda::elementwise, lmcuda::reduce, lmcuda::gemm,                                                        \
  /* activations, losses, copies, indexing, creation and random numbers, optimizers */                      \
  lmcuda::activation, lmcuda::softmax, lmcuda::class_loss, lmcuda::bce_logits, lmcuda::sequence,            \
  lmcuda::random, lmcuda::optim_step, lmcuda::index_along, lmcuda::cumsum,                                  \
  /* layer families */                                                                                     \
  lmcuda::im2col, lmcuda::pool, lmcuda::norm_pass, lmcuda::rnn_cell, lmcuda::interp, lmcuda::grid_sample,   \
  lmcuda::conv_lib,                                                                                         \
  /* sorting; each table then adds its own pinned host memory entries */                                   \
  lmcuda::sort,

/* The op kernels (their files). */
int32_t elementwise(int32_t op, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t nops, void *const *data,
                    const int64_t *strides, const int32_t *dtypes, const lm_scalar *scalars, double param);
int32_t reduce(int32_t op, int32_t dtype, const void *x, int32_t kn, const int64_t *kshape, const int64_t *kstride,
               int64_t rn, int64_t rs, double param, int32_t out_dtype, void *out, int64_t *indices);
int32_t gemm(int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha, const void *a,
             int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, double beta, void *c,
             int64_t ldc, int64_t stride_c, int64_t batch);
/* blas.cu: autocast's GEMM (bf16 or f16 operands, f32 accumulation) */
int32_t gemm_lowp(int32_t lowp, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha,
                  const void *a, int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                  double beta, void *c, int64_t ldc, int64_t stride_c, int64_t batch);

/* activation.cu */
int32_t activation(int32_t kind, int32_t mode, int32_t dtype, int64_t n, void *out, const void *x, const void *g,
                   const void *w, int64_t c, int64_t inner, double param);
int32_t softmax(int32_t log, int32_t backward, int32_t dtype, int64_t outer, int64_t len, int64_t inner, void *out,
                const void *x, const void *g);

/* loss.cu */
int32_t class_loss(int32_t backward, int32_t dtype, int64_t N, int64_t C, int64_t S, int32_t log_input, const void *x,
                   const int64_t *target, const void *prob, const double *weight, int64_t ignore, double eps,
                   void *loss, double *wt, uint8_t *bad, void *lse, const void *g, int64_t gstride, void *gx,
                   void *gt);
int32_t bce_logits(int32_t mode, int32_t dtype, int64_t n, void *out, const void *x, const void *t, const void *pw,
                   double scale);

/* random.cu */
int32_t sequence(int32_t dtype, int64_t n, void *out, double start, double step, double stop, int64_t half);
int32_t random(int32_t kind, int32_t dtype, int64_t n, void *out, uint64_t key, uint64_t base, double a, double b,
               int64_t ilo, uint64_t irange, const void *probs);

/* optim.cu */
int32_t optim_step(int32_t kind, int32_t dtype, int32_t nparams, const int64_t *numel, void *const *data,
                   const double *per, const double *hp);

/* index.cu */
int32_t index_along(int32_t mode, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out,
                    const int64_t *ostride, const void *src, const int64_t *sstride, const int64_t *idx,
                    const int64_t *istride);

/* scan.cu */
int32_t cumsum(int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out, const int64_t *ostride,
               const void *x, const int64_t *xstride);

/* Runs f(k) for k = 0 .. n-1, one thread per k (grid-stride) on the
   stream; f is a functor with a __host__ __device__ operator(). In the
   specs' host build (LMCUDA_EMULATE) every k runs in turn. */
template <typename F> __global__ void each_kernel(F f, int64_t n) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) f(k);
}
template <typename F> int32_t for_each(int64_t n, F f, const char *what) {
  if (n <= 0) return 0;
#ifdef LMCUDA_EMULATE
  for (int64_t k = 0; k < n; k++) f(k);
  return 0;
#else
  each_kernel<F><<<grid_for(n, 256), 256, 0, stream>>>(f, n);
  return launched(what);
#endif
}
/* Layer families: conv.cu, pool.cu, norm.cu, rnn.cu, resample.cu, grid.cu, cudnn.cu. */
int32_t im2col(int32_t dtype, int32_t to_cols, int64_t n, int64_t c, const int64_t *geom, void *img, void *cols);
int32_t pool(int32_t op, int32_t dtype, int32_t backward, int64_t planes, const int64_t *geom, int32_t count_pad,
             double divisor, const void *src, void *dst, int64_t *indices);
int32_t norm_pass(int32_t kind, int32_t dtype, const int64_t *layout, const void *x, const void *g, void *y,
                  double *coef, const double *w, const double *bias, double *sums);
int32_t rnn_cell(int32_t op, int32_t dtype, int32_t backward, int64_t n, int64_t H, const void *const *in,
                 const int64_t *ld, void *const *out);
int32_t interp(int32_t dtype, int32_t backward, int32_t nd, int32_t nearest, int64_t planes, const int64_t *sizes,
               const void *tables, const void *src, void *dst);
int32_t grid_sample(int32_t dtype, int32_t backward, int32_t nd, int32_t flags, int64_t N, int64_t C, int64_t P,
                    const int64_t *in, const void *x, const void *grid, const void *g, void *y, void *ggrid);
int32_t conv_lib(int32_t kind, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups,
                 const int64_t *geom, const void *img, const void *w, const void *col, void *out, void *ws,
                 size_t *ws_bytes);

/* sort.cu */
int32_t sort(int32_t dtype, int64_t rows, int64_t len, int64_t k, int32_t descending, const void *x, void *values,
             int64_t *indices, void *work);

/* reduce.cu: the fewest elements of a run worth a piece of their own
   (rows, columns). */
extern int64_t reduce_min_piece[2];

/* Element sizes by dtype. */
__host__ __device__ inline int64_t dtype_size(int32_t d) {
  return d == LM_F64 || d == LM_I64 ? 8 : d == LM_U8 || d == LM_BOOL ? 1 : 4;
}

} // namespace lmcuda

#endif
