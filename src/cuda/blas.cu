/* blas.cu - GEMM through cuBLAS, which is found at run time, not linked.
 *
 * lua/lumen/device.lua looks for libcublas.so.13 when CUDA comes into use
 * (lumen.cuda.libraries(): the user's variables, the toolkit, the system,
 * pip's nvidia packages) and loads the copy it finds by its full path; the
 * dlopen of the soname below then gets that copy (or, when it found none,
 * whatever the loader's own search finds). The entry points are resolved
 * on the first GEMM, and the handle works on the backend's stream.
 *
 * liblumen describes row-major products (lm_backend.gemm); cuBLAS is
 * column-major, and a row-major matrix read column-major is its transpose,
 * so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the operands
 * swap places and keep their transpose flags. cuBLAS's default math mode
 * keeps f32 in f32 (no TF32), as the CPU does.
 *
 * Autocast (gemm_lowp): a small kernel packs each f32 operand into a
 * 16-bit copy (bf16 or f16, rounded by src/lowp.h as the CPU rounds) in
 * scratch memory, and cublasGemmStridedBatchedEx multiplies the copies with
 * f32 compute and an f32 result (tensor cores). */
#include <cublas_v2.h> /* types and constants only: the functions come from dlsym */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>

#include "common.cuh"
#include "../lowp.h"

namespace lmcuda {
#ifdef LMCUDA_EMULATE
/* tests/plugin/cuda_emulated.cu: cuBLAS's column-major contract on the host */
cublasStatus_t emu_create(cublasHandle_t *h);
cublasStatus_t emu_set_stream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t emu_sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float *alpha, const float *a, int lda, const float *b, int ldb, const float *beta,
                         float *c, int ldc);
cublasStatus_t emu_dgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const double *alpha, const double *a, int lda, const double *b, int ldb, const double *beta,
                         double *c, int ldc);
cublasStatus_t emu_sgemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                 const float *alpha, const float *a, int lda, long long sa, const float *b, int ldb,
                                 long long sb, const float *beta, float *c, int ldc, long long sc, int count);
cublasStatus_t emu_dgemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                 const double *alpha, const double *a, int lda, long long sa, const double *b, int ldb,
                                 long long sb, const double *beta, double *c, int ldc, long long sc, int count);
cublasStatus_t emu_gemm_ex(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const void *alpha, const void *a, cudaDataType at, int lda, long long sa, const void *b,
                           cudaDataType bt, int ldb, long long sb, const void *beta, void *c, cudaDataType ct, int ldc,
                           long long sc, int count, cublasComputeType_t compute, cublasGemmAlgo_t algo);
#endif
namespace {

/* cublasGemmStridedBatchedEx (the header also overloads the name in C++,
   so its type is spelled out) */
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                     const void *, cudaDataType, int, long long, const void *, cudaDataType, int,
                                     long long, const void *, void *, cudaDataType, int, long long, int,
                                     cublasComputeType_t, cublasGemmAlgo_t);

struct cublas_api {
  bool tried;
  int32_t status; /* 0 once loaded, else the code to repeat */
  char why[400];  /* when not loaded */
  cublasHandle_t handle;
  decltype(&cublasCreate_v2) create;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSgemm_v2) sgemm;
  decltype(&cublasDgemm_v2) dgemm;
  decltype(&cublasSgemmStridedBatched) sgemm_batched;
  decltype(&cublasDgemmStridedBatched) dgemm_batched;
  decltype(&cublasGetStatusString) status_string;
  gemm_ex_fn gemm_ex; /* NULL when the library lacks it: gemm_lowp then refuses */
} api;
pthread_mutex_t api_lock = PTHREAD_MUTEX_INITIALIZER;

#ifndef LMCUDA_EMULATE
const char *SONAME = "libcublas.so.13";
#endif

template <typename F> bool resolve(void *lib, const char *name, F *fn) {
  *fn = (F)dlsym(lib, name);
  return *fn != NULL;
}

/* The entry points from the library (or, in the specs' host build, the
   stand-ins of tests/plugin/cuda_emulated.cu); false with api.why set. */
bool resolve_all() {
#ifdef LMCUDA_EMULATE
  api.create = emu_create, api.set_stream = emu_set_stream, api.sgemm = emu_sgemm, api.dgemm = emu_dgemm;
  api.sgemm_batched = emu_sgemm_batched, api.dgemm_batched = emu_dgemm_batched;
  api.gemm_ex = emu_gemm_ex;
  return true;
#else
  void *lib = dlopen(SONAME, RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    snprintf(api.why, sizeof api.why, "cuBLAS (%s) is not found: %s (lumen.cuda.libraries() says where lumen looked)",
             SONAME, dlerror());
    return false;
  }
  if (!resolve(lib, "cublasCreate_v2", &api.create) || !resolve(lib, "cublasSetStream_v2", &api.set_stream) ||
      !resolve(lib, "cublasSgemm_v2", &api.sgemm) || !resolve(lib, "cublasDgemm_v2", &api.dgemm) ||
      !resolve(lib, "cublasSgemmStridedBatched", &api.sgemm_batched) ||
      !resolve(lib, "cublasDgemmStridedBatched", &api.dgemm_batched)) {
    snprintf(api.why, sizeof api.why, "cuBLAS (%s) lacks an entry point: %s", SONAME, dlerror());
    return false;
  }
  resolve(lib, "cublasGetStatusString", &api.status_string); /* for messages; may be missing */
  resolve(lib, "cublasGemmStridedBatchedEx", &api.gemm_ex);   /* autocast only */
  return true;
#endif
}

/* Loads cuBLAS once; 0, or the code with the message set (every time). */
int32_t load_cublas() {
  pthread_mutex_lock(&api_lock);
  if (!api.tried) {
    api.tried = true;
    api.status = LM_E_DEVICE;
    if (resolve_all()) {
      cublasStatus_t s = api.create(&api.handle);
      if (s == CUBLAS_STATUS_SUCCESS) s = api.set_stream(api.handle, stream);
      if (s == CUBLAS_STATUS_SUCCESS) {
        api.status = 0;
      } else {
        snprintf(api.why, sizeof api.why, "cublasCreate: %s",
                 api.status_string ? api.status_string(s) : "cuBLAS could not start");
        if (s == CUBLAS_STATUS_ALLOC_FAILED) api.status = LM_E_OOM;
      }
    }
  }
  int32_t st = api.status;
  if (st) refuse(st, "%s", api.why);
  pthread_mutex_unlock(&api_lock);
  return st;
}

int32_t cublas_fail(const char *what, cublasStatus_t s) {
  return refuse(s == CUBLAS_STATUS_ALLOC_FAILED ? LM_E_OOM : LM_E_DEVICE, "%s: %s", what,
                api.status_string ? api.status_string(s) : "cuBLAS error");
}

cublasOperation_t op_of(int32_t t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

/* Scratch device memory for the 16-bit operands, kept and grown; used
   under api_lock (the stream orders one call's use before the next's). */
void *lowp_scratch;
size_t lowp_bytes;

int32_t lowp_scratch_for(size_t nbytes, void **p) {
  if (nbytes > lowp_bytes) {
#ifdef LMCUDA_EMULATE
    free(lowp_scratch);
    lowp_scratch = malloc(nbytes);
    if (!lowp_scratch) {
      lowp_bytes = 0;
      return refuse(LM_E_OOM, "gemm_lowp: out of memory for %zu bytes of 16-bit operands", nbytes);
    }
#else
    if (lowp_scratch) cudaFree(lowp_scratch); /* waits for the work that used it */
    lowp_scratch = NULL;
    lowp_bytes = 0;
    cudaError_t e = cudaMalloc(&lowp_scratch, nbytes);
    if (e != cudaSuccess) return fail("gemm_lowp: 16-bit operands", e);
#endif
    lowp_bytes = nbytes;
  }
  *p = lowp_scratch;
  return 0;
}

/* dst (count x rows x cols, contiguous 16-bit) = the rows x cols row-major
   matrices at src + q * stride (row stride ld), rounded to lowp. */
struct pack_lowp {
  const float *src;
  uint16_t *dst;
  int64_t rows, cols, ld, stride;
  int32_t lowp;
  __host__ __device__ void operator()(int64_t k) const {
    int64_t per = rows * cols, q = k / per, r = k - q * per, i = r / cols, j = r - i * cols;
    float v = src[q * stride + i * ld + j];
    dst[k] = lowp == 1 ? lm_f32_to_bf16(v) : lm_f32_to_f16(v);
  }
};

} // namespace

int32_t gemm(int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha, const void *a,
             int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b, double beta, void *c,
             int64_t ldc, int64_t stride_c, int64_t batch) {
  if (dtype != LM_F32 && dtype != LM_F64) return refuse(LM_E_ARG, "gemm: dtype %d, expected f32 or f64", dtype);
  if (m < 1 || n < 1 || k < 1 || batch < 0)
    return refuse(LM_E_ARG, "gemm: sizes %lld x %lld x %lld, batch %lld", (long long)m, (long long)n, (long long)k,
                  (long long)batch);
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
    return refuse(LM_E_UNSUPPORTED, "gemm: sizes past cuBLAS's 32-bit limit");
  if (batch == 0) return 0;
  int32_t st = load_cublas();
  if (st) return st;
  /* cuBLAS's handle is not for two threads at once */
  pthread_mutex_lock(&api_lock);
  cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
  cublasOperation_t oa = op_of(ta), ob = op_of(tb);
  int M = (int)n, N = (int)m, K = (int)k; /* the column-major problem: C^T = op(B)^T op(A)^T */
  for (int64_t done = 0; done < batch && s == CUBLAS_STATUS_SUCCESS;) {
    int64_t count = batch - done < INT_MAX ? batch - done : INT_MAX;
    if (dtype == LM_F32) {
      float al = (float)alpha, be = (float)beta;
      const float *A = (const float *)a + done * stride_a, *B = (const float *)b + done * stride_b;
      float *Cp = (float *)c + done * stride_c;
      s = count == 1 ? api.sgemm(api.handle, ob, oa, M, N, K, &al, B, (int)ldb, A, (int)lda, &be, Cp, (int)ldc)
                     : api.sgemm_batched(api.handle, ob, oa, M, N, K, &al, B, (int)ldb, stride_b, A, (int)lda, stride_a,
                                         &be, Cp, (int)ldc, stride_c, (int)count);
    } else {
      const double *A = (const double *)a + done * stride_a, *B = (const double *)b + done * stride_b;
      double *Cp = (double *)c + done * stride_c;
      s = count == 1 ? api.dgemm(api.handle, ob, oa, M, N, K, &alpha, B, (int)ldb, A, (int)lda, &beta, Cp, (int)ldc)
                     : api.dgemm_batched(api.handle, ob, oa, M, N, K, &alpha, B, (int)ldb, stride_b, A, (int)lda,
                                         stride_a, &beta, Cp, (int)ldc, stride_c, (int)count);
    }
    done += count;
  }
  pthread_mutex_unlock(&api_lock);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas_fail(dtype == LM_F32 ? "cublasSgemm" : "cublasDgemm", s);
  return 0;
}

int32_t gemm_lowp(int32_t lowp, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha,
                  const void *a, int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                  double beta, void *c, int64_t ldc, int64_t stride_c, int64_t batch) {
  if (lowp != 1 && lowp != 2) return refuse(LM_E_ARG, "gemm_lowp: mode %d, expected 1 (bf16) or 2 (f16)", lowp);
  if (dtype != LM_F32) return refuse(LM_E_ARG, "gemm_lowp: dtype %d, expected f32", dtype);
  if (m < 1 || n < 1 || k < 1 || batch < 0)
    return refuse(LM_E_ARG, "gemm_lowp: sizes %lld x %lld x %lld, batch %lld", (long long)m, (long long)n,
                  (long long)k, (long long)batch);
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || ldc > INT_MAX || batch > INT_MAX)
    return refuse(LM_E_UNSUPPORTED, "gemm_lowp: sizes past cuBLAS's 32-bit limit");
  if (batch == 0) return 0;
  int32_t st = load_cublas();
  if (st) return st;
  pthread_mutex_lock(&api_lock);
  if (!api.gemm_ex) {
    pthread_mutex_unlock(&api_lock);
    return refuse(LM_E_UNSUPPORTED, "gemm_lowp: this cuBLAS lacks cublasGemmStridedBatchedEx");
  }
  /* the stored matrices (row-major): a is m x k (k x m when ta), b k x n
     (n x k when tb); an operand with batch stride 0 is packed once */
  int64_t ra = ta ? k : m, ca = ta ? m : k, rb = tb ? n : k, cb = tb ? k : n;
  int64_t qa = stride_a ? batch : 1, qb = stride_b ? batch : 1;
  int64_t na = qa * ra * ca, nb = qb * rb * cb;
  void *p = NULL;
  if ((st = lowp_scratch_for((size_t)(na + nb) * sizeof(uint16_t), &p))) {
    pthread_mutex_unlock(&api_lock);
    return st;
  }
  uint16_t *pa = (uint16_t *)p, *pb = pa + na;
  st = for_each(na, pack_lowp{(const float *)a, pa, ra, ca, lda, stride_a, lowp}, "gemm_lowp: packing");
  if (!st) st = for_each(nb, pack_lowp{(const float *)b, pb, rb, cb, ldb, stride_b, lowp}, "gemm_lowp: packing");
  if (st) {
    pthread_mutex_unlock(&api_lock);
    return st;
  }
  cudaDataType in = lowp == 1 ? CUDA_R_16BF : CUDA_R_16F;
  float al = (float)alpha, be = (float)beta;
  /* the column-major problem C^T = op(B)^T op(A)^T, as gemm */
  cublasStatus_t s = api.gemm_ex(api.handle, op_of(tb), op_of(ta), (int)n, (int)m, (int)k, &al, pb, in, (int)cb,
                                 stride_b ? rb * cb : 0, pa, in, (int)ca, stride_a ? ra * ca : 0, &be, c, CUDA_R_32F,
                                 (int)ldc, stride_c, (int)batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  pthread_mutex_unlock(&api_lock);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasGemmStridedBatchedEx", s);
  return 0;
}

} // namespace lmcuda
