/* backend.cu - the CUDA backend: device discovery, memory, copies, and the
 * table that hands liblumen the op kernels of the other files
 * (elementwise.cu, reduce.cu, blas.cu).
 *
 * Built into its own liblumen_cuda.so (it does not link liblumen) and
 * loaded by lua/lumen/device.lua at run time under pcall, so a machine
 * without the CUDA driver or a GPU still runs lumen; the discovery
 * functions report why instead of failing. lm_cuda_backend() hands liblumen
 * the table of src/backend.h; liblumen caches the memory it allocates.
 *
 * Ordering: all work goes to one stream of the process (made at init, not
 * the legacy default stream, so it does not serialise with other libraries'
 * streams). liblumen's device cache relies on that: a block freed by one op
 * is reused by a later one in the same stream order, with no event. Copies
 * to the host synchronise with the stream; copies from the host go through
 * two pinned staging buffers, so the host memcpy of one chunk overlaps the
 * DMA of the previous one, and the call returns once the source was read. */
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.cuh"

namespace lmcuda {

cudaStream_t stream;
int sm_count;
thread_local char last_msg[512];

int32_t fail(const char *what, cudaError_t e) {
  snprintf(last_msg, sizeof last_msg, "%s: %s", what, cudaGetErrorString(e));
  cudaGetLastError(); /* clear the sticky-free error state for later calls */
  return e == cudaErrorMemoryAllocation ? LM_E_OOM : LM_E_DEVICE;
}

int32_t refuse(int32_t code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_msg, sizeof last_msg, fmt, ap);
  va_end(ap);
  return code;
}

int32_t launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail(what, e);
}

} // namespace lmcuda

namespace {

using lmcuda::fail;
using lmcuda::last_msg;
using lmcuda::stream;

#define CHECK(call)                                  \
  do {                                               \
    cudaError_t e_ = (call);                         \
    if (e_ != cudaSuccess) return fail(#call, e_);   \
  } while (0)

void put_msg(char *msg, int32_t msg_len, const char *text) {
  if (msg && msg_len > 0) snprintf(msg, (size_t)msg_len, "%s", text);
}

/* Why the runtime cannot be used, in words a user can act on. */
const char *why(cudaError_t e) {
  switch (e) {
  case cudaErrorInsufficientDriver: return "no CUDA driver, or one older than this CUDA runtime";
  case cudaErrorNoDevice: return "no CUDA device";
  default: return cudaGetErrorString(e);
  }
}

char description[320];

/* Host-to-device staging: two pinned buffers used in turn; an event per
   buffer says when its last DMA has finished reading it. */
const size_t STAGE_BYTES = (size_t)8 << 20;
const size_t DIRECT_BYTES = (size_t)64 << 10; /* smaller copies: let the driver stage */
void *stage[2];
cudaEvent_t stage_done[2];
int next_stage;
pthread_mutex_t stage_lock = PTHREAD_MUTEX_INITIALIZER;

int32_t cu_init(void) {
  int dev = 0;
  CHECK(cudaSetDevice(dev));
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int i = 0; i < 2; i++) {
    CHECK(cudaHostAlloc(&stage[i], STAGE_BYTES, cudaHostAllocDefault));
    CHECK(cudaEventCreateWithFlags(&stage_done[i], cudaEventDisableTiming));
  }
  cudaDeviceProp p;
  int rt = 0;
  CHECK(cudaGetDeviceProperties(&p, dev));
  lmcuda::sm_count = p.multiProcessorCount;
  cudaRuntimeGetVersion(&rt);
  snprintf(description, sizeof description, "CUDA runtime %d.%d, %s (sm_%d%d)", rt / 1000, rt % 1000 / 10, p.name,
           p.major, p.minor);
  return 0;
}

const char *cu_last_error(void) { return last_msg; }

int32_t cu_malloc(size_t nbytes, void **ptr) {
  cudaError_t e = cudaMalloc(ptr, nbytes);
  if (e != cudaSuccess) {
    *ptr = NULL;
    return fail("cudaMalloc", e);
  }
  return 0;
}

int32_t cu_free(void *ptr) {
  CHECK(cudaFree(ptr));
  return 0;
}

int32_t cu_memset(void *ptr, int32_t byte, size_t nbytes) {
  CHECK(cudaMemsetAsync(ptr, byte, nbytes, stream));
  return 0;
}

int32_t cu_copy_h2d(void *dst, const void *src, size_t nbytes) {
  if (nbytes <= DIRECT_BYTES) {
    CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream));
    return 0;
  }
  pthread_mutex_lock(&stage_lock);
  int32_t st = 0;
  for (size_t done = 0; done < nbytes && !st;) {
    size_t n = nbytes - done < STAGE_BYTES ? nbytes - done : STAGE_BYTES;
    int i = next_stage;
    next_stage ^= 1;
    cudaError_t e = cudaEventSynchronize(stage_done[i]); /* its previous DMA has read it */
    if (e == cudaSuccess) {
      memcpy(stage[i], (const char *)src + done, n);
      e = cudaMemcpyAsync((char *)dst + done, stage[i], n, cudaMemcpyHostToDevice, stream);
    }
    if (e == cudaSuccess) e = cudaEventRecord(stage_done[i], stream);
    if (e != cudaSuccess) st = fail("copy to the device", e);
    done += n;
  }
  pthread_mutex_unlock(&stage_lock);
  return st;
}

int32_t cu_copy_d2h(void *dst, const void *src, size_t nbytes) {
  CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream));
  CHECK(cudaStreamSynchronize(stream));
  return 0;
}

int32_t cu_copy_d2d(void *dst, const void *src, size_t nbytes) {
  CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream));
  return 0;
}

/* ---- strided gather ---- */

struct strided_desc {
  int32_t ndim;
  int64_t shape[LM_MAX_DIMS];
  int64_t stride[LM_MAX_DIMS];
};

template <typename T>
__global__ void gather_strided(T *dst, const T *src, strided_desc d, int64_t n) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
    int64_t rest = k, off = 0;
    for (int32_t i = d.ndim - 1; i >= 0; i--) {
      int64_t q = rest / d.shape[i];
      off += (rest - q * d.shape[i]) * d.stride[i];
      rest = q;
    }
    dst[k] = src[off];
  }
}

template <typename T>
int32_t launch_gather(void *dst, const void *src, const strided_desc &d, int64_t n) {
  const int threads = 256;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  gather_strided<T><<<(unsigned)blocks, threads, 0, stream>>>((T *)dst, (const T *)src, d, n);
  CHECK(cudaGetLastError());
  return 0;
}

int32_t cu_copy_strided(void *dst, const void *src, int32_t esize, int32_t ndim, const int64_t *shape,
                        const int64_t *stride) {
  strided_desc d;
  if (ndim < 0 || ndim > LM_MAX_DIMS) {
    snprintf(last_msg, sizeof last_msg, "copy_strided: %d dimensions, expected at most %d", ndim, LM_MAX_DIMS);
    return LM_E_ARG;
  }
  d.ndim = ndim;
  int64_t n = 1;
  for (int32_t i = 0; i < ndim; i++) {
    d.shape[i] = shape[i];
    d.stride[i] = stride[i];
    n *= shape[i];
  }
  if (n == 0) return 0;
  switch (esize) {
  case 1: return launch_gather<uint8_t>(dst, src, d, n);
  case 2: return launch_gather<uint16_t>(dst, src, d, n);
  case 4: return launch_gather<uint32_t>(dst, src, d, n);
  case 8: return launch_gather<uint64_t>(dst, src, d, n);
  }
  snprintf(last_msg, sizeof last_msg, "copy_strided: element size %d, expected 1, 2, 4 or 8", esize);
  return LM_E_ARG;
}

/* ---- pinned host memory ---- */

int32_t cu_host_alloc(size_t nbytes, void **ptr) {
  cudaError_t e = cudaHostAlloc(ptr, nbytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    *ptr = NULL;
    return fail("cudaHostAlloc", e);
  }
  return 0;
}

int32_t cu_host_free(void *ptr) {
  CHECK(cudaFreeHost(ptr));
  return 0;
}

/* Page-locked source: the DMA reads it directly, so nothing waits here. */
int32_t cu_copy_h2d_async(void *dst, const void *src, size_t nbytes) {
  CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream));
  return 0;
}

int32_t cu_synchronize(void) {
  CHECK(cudaStreamSynchronize(stream));
  return 0;
}

int32_t cu_mem_info(int64_t *free_bytes, int64_t *total_bytes) {
  size_t f = 0, t = 0;
  CHECK(cudaMemGetInfo(&f, &t));
  *free_bytes = (int64_t)f;
  *total_bytes = (int64_t)t;
  return 0;
}

lm_backend table = {
    LM_BACKEND_ABI, sizeof(lm_backend), "cuda", description, cu_init, cu_last_error, cu_malloc, cu_free,
    cu_memset, cu_copy_h2d, cu_copy_d2h, cu_copy_d2d, cu_copy_strided, cu_synchronize, cu_mem_info,
    LMCUDA_KERNEL_ENTRIES
    /* pinned host memory */
    cu_host_alloc, cu_host_free, cu_copy_h2d_async,
    /* mixed precision */
    lmcuda::gemm_lowp,
};

} // namespace

extern "C" {

int32_t lm_cuda_device_count(char *msg, int32_t msg_len) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    put_msg(msg, msg_len, why(e));
    cudaGetLastError(); /* reset the last-error state for later calls */
    return -1;
  }
  put_msg(msg, msg_len, "");
  return n;
}

int32_t lm_cuda_device_describe(int32_t i, char *buf, int32_t buf_len) {
  cudaDeviceProp p;
  cudaError_t e = cudaGetDeviceProperties(&p, i);
  if (e != cudaSuccess) {
    put_msg(buf, buf_len, why(e));
    cudaGetLastError();
    return -1;
  }
  if (buf && buf_len > 0)
    snprintf(buf, (size_t)buf_len, "%s, %lld MiB, sm_%d%d", p.name, (long long)(p.totalGlobalMem >> 20), p.major,
             p.minor);
  return 0;
}

void lm_cuda_versions(int32_t *runtime, int32_t *driver, int32_t *built_with) {
  int rt = 0, dr = 0;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
  if (cudaDriverGetVersion(&dr) != cudaSuccess) dr = 0;
  cudaGetLastError();
  if (runtime) *runtime = rt;
  if (driver) *driver = dr;
  if (built_with) *built_with = CUDART_VERSION;
}

const lm_backend *lm_cuda_backend(void) { return &table; }
}
