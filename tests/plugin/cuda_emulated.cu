/* cuda_emulated.cu - the CUDA backend's own kernel code, run on the host.
 *
 * No GPU is needed to check most of what the CUDA backend's op kernels do:
 * src/cuda/elementwise.cu, reduce.cu and blas.cu are compiled here with
 * LMCUDA_EMULATE, which runs every thread of each kernel on the host in
 * turn (the same bodies, index maths, partition into pieces and order of
 * merges), and calls stand-ins for cuBLAS that follow cuBLAS's documented
 * column-major contract, so the row-major to column-major swap of blas.cu
 * is checked too. Memory is host memory. tests/spec/device_ops_spec.lua
 * registers it as 'cuda' next to the fake device; what it cannot check
 * (launch configurations, the stream, real cuBLAS) is left to
 * tests/gpu/run.sh on a GPU machine. */
#include <cublas_v2.h>
#include <stdarg.h>
#include <stdlib.h>

#include "../../src/cuda/common.cuh"
#include "../../src/lowp.h"

namespace lmcuda {

cudaStream_t stream = 0;
int sm_count = 2; /* a small device: small spec tensors already split their runs */
static thread_local char msg[512];

int32_t fail(const char *what, cudaError_t e) {
  snprintf(msg, sizeof msg, "%s: CUDA error %d", what, (int)e);
  return LM_E_DEVICE;
}

int32_t refuse(int32_t code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return code;
}

int32_t launched(const char *what) { return 0; }

/* ---- cuBLAS's contract: column-major C (m x n) = alpha op(A) op(B) + beta C ---- */

static int handle_token;

cublasStatus_t emu_create(cublasHandle_t *h) {
  *h = (cublasHandle_t)&handle_token;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t emu_set_stream(cublasHandle_t h, cudaStream_t s) { return CUBLAS_STATUS_SUCCESS; }

template <typename T>
static cublasStatus_t col_major_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, T alpha,
                                     const T *a, int lda, long long sa, const T *b, int ldb, long long sb, T beta, T *c,
                                     int ldc, long long sc, int count) {
  /* cuBLAS's argument rules: leading dimensions cover the stored rows */
  if (m < 0 || n < 0 || k < 0 || count < 0 || ldc < (m > 1 ? m : 1) || lda < ((ta == CUBLAS_OP_N ? m : k) > 1 ? (ta == CUBLAS_OP_N ? m : k) : 1) ||
      ldb < ((tb == CUBLAS_OP_N ? k : n) > 1 ? (tb == CUBLAS_OP_N ? k : n) : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  for (int q = 0; q < count; q++) {
    const T *A = a + q * sa, *B = b + q * sb;
    T *Cq = c + q * sc;
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) {
        double s = 0;
        for (int p = 0; p < k; p++) {
          double x = ta == CUBLAS_OP_N ? A[i + (long long)p * lda] : A[p + (long long)i * lda];
          double y = tb == CUBLAS_OP_N ? B[p + (long long)j * ldb] : B[j + (long long)p * ldb];
          s += x * y;
        }
        T *cp = Cq + i + (long long)j * ldc;
        *cp = (T)(alpha * s + (beta == T(0) ? 0.0 : (double)beta * *cp));
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t emu_sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float *alpha, const float *a, int lda, const float *b, int ldb, const float *beta,
                         float *c, int ldc) {
  return col_major_gemm(ta, tb, m, n, k, *alpha, a, lda, 0, b, ldb, 0, *beta, c, ldc, 0, 1);
}
cublasStatus_t emu_dgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const double *alpha, const double *a, int lda, const double *b, int ldb, const double *beta,
                         double *c, int ldc) {
  return col_major_gemm(ta, tb, m, n, k, *alpha, a, lda, 0, b, ldb, 0, *beta, c, ldc, 0, 1);
}
cublasStatus_t emu_sgemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                 const float *alpha, const float *a, int lda, long long sa, const float *b, int ldb,
                                 long long sb, const float *beta, float *c, int ldc, long long sc, int count) {
  return col_major_gemm(ta, tb, m, n, k, *alpha, a, lda, sa, b, ldb, sb, *beta, c, ldc, sc, count);
}
cublasStatus_t emu_dgemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                 const double *alpha, const double *a, int lda, long long sa, const double *b, int ldb,
                                 long long sb, const double *beta, double *c, int ldc, long long sc, int count) {
  return col_major_gemm(ta, tb, m, n, k, *alpha, a, lda, sa, b, ldb, sb, *beta, c, ldc, sc, count);
}

/* cublasGemmStridedBatchedEx as autocast calls it: A and B of one type
   (CUDA_R_16BF, CUDA_R_16F or CUDA_R_32F), C CUDA_R_32F, f32 compute. The
   16-bit values widen exactly to f32 (their products are exact in f32 too)
   and the sums run in f32, as CUBLAS_COMPUTE_32F does. */
static float widen(const void *p, cudaDataType t, long long i) {
  if (t == CUDA_R_16BF) return lm_bf16_to_f32(((const uint16_t *)p)[i]);
  if (t == CUDA_R_16F) return lm_f16_to_f32(((const uint16_t *)p)[i]);
  return ((const float *)p)[i];
}

cublasStatus_t emu_gemm_ex(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const void *alpha, const void *a, cudaDataType at, int lda, long long sa, const void *b,
                           cudaDataType bt, int ldb, long long sb, const void *beta, void *c, cudaDataType ct, int ldc,
                           long long sc, int count, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  bool known = at == bt && (at == CUDA_R_16BF || at == CUDA_R_16F || at == CUDA_R_32F);
  if (!known || ct != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m < 0 || n < 0 || k < 0 || count < 0 || ldc < (m > 1 ? m : 1) || lda < ((ta == CUBLAS_OP_N ? m : k) > 1 ? (ta == CUBLAS_OP_N ? m : k) : 1) ||
      ldb < ((tb == CUBLAS_OP_N ? k : n) > 1 ? (tb == CUBLAS_OP_N ? k : n) : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  float al = *(const float *)alpha, be = *(const float *)beta;
  for (int q = 0; q < count; q++)
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) {
        float s = 0;
        for (int p = 0; p < k; p++) {
          float x = widen(a, at, q * sa + (ta == CUBLAS_OP_N ? i + (long long)p * lda : p + (long long)i * lda));
          float y = widen(b, bt, q * sb + (tb == CUBLAS_OP_N ? p + (long long)j * ldb : j + (long long)p * ldb));
          s += x * y;
        }
        float *cp = (float *)c + q * sc + i + (long long)j * ldc;
        *cp = al * s + (be == 0.0f ? 0.0f : be * *cp);
      }
  return CUBLAS_STATUS_SUCCESS;
}

} // namespace lmcuda

/* ---- memory and copies: host memory ---- */

namespace {

int32_t emu_init(void) { return 0; }
const char *emu_last_error(void) { return lmcuda::msg; }
int32_t emu_malloc(size_t n, void **p) {
  *p = malloc(n ? n : 1);
  return *p ? 0 : lmcuda::refuse(LM_E_OOM, "emulated malloc: out of memory");
}
int32_t emu_free(void *p) {
  free(p);
  return 0;
}
int32_t emu_memset(void *p, int32_t byte, size_t n) {
  memset(p, byte, n);
  return 0;
}
int32_t emu_copy(void *dst, const void *src, size_t n) {
  memmove(dst, src, n);
  return 0;
}
int32_t emu_strided(void *dst, const void *src, int32_t esize, int32_t ndim, const int64_t *shape,
                    const int64_t *stride) {
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; d++) n *= shape[d];
  for (int64_t k = 0; k < n; k++) {
    int64_t rest = k, off = 0;
    for (int32_t d = ndim - 1; d >= 0; d--) {
      off += rest % shape[d] * stride[d];
      rest /= shape[d];
    }
    memcpy((char *)dst + k * esize, (const char *)src + off * esize, (size_t)esize);
  }
  return 0;
}
int32_t emu_sync(void) { return 0; }
int32_t emu_mem_info(int64_t *f, int64_t *t) {
  *f = (int64_t)1 << 30;
  *t = (int64_t)1 << 31;
  return 0;
}

char description[] = "the CUDA backend's kernels emulated on the host (tests/plugin/cuda_emulated.cu)";
lm_backend table = {
    LM_BACKEND_ABI, sizeof(lm_backend), "cuda-emulated", description, emu_init, emu_last_error, emu_malloc, emu_free,
    emu_memset, emu_copy, emu_copy, emu_copy, emu_strided, emu_sync, emu_mem_info,
    LMCUDA_KERNEL_ENTRIES
    /* pinned host memory: ordinary host memory here */
    emu_malloc, emu_free, emu_copy,
    /* mixed precision */
    lmcuda::gemm_lowp,
};

} // namespace

extern "C" const lm_backend *lm_cuda_emulated_backend(void) {
  /* small pieces, so that spec-sized runs are split, yet long enough that
     a thread still meets several elements of its piece (positions
     interleave between threads, as they do on the device) */
  lmcuda::reduce_min_piece[0] = 40;
  lmcuda::reduce_min_piece[1] = 16;
  return &table;
}
