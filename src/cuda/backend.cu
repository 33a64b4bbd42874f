/* backend.cu - the CUDA backend (empty for now): device discovery only.
 *
 * Built into its own liblumen_cuda.so and loaded by the Lua side at run time
 * under pcall, so a machine without the CUDA driver or a GPU still runs
 * lumen; these functions report why instead of failing. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

static void put_msg(char *msg, int32_t msg_len, const char *text) {
  if (msg && msg_len > 0) snprintf(msg, (size_t)msg_len, "%s", text);
}

/* Why the runtime cannot be used, in words a user can act on. */
static const char *why(cudaError_t e) {
  switch (e) {
  case cudaErrorInsufficientDriver: return "no CUDA driver, or one older than this CUDA runtime";
  case cudaErrorNoDevice: return "no CUDA device";
  default: return cudaGetErrorString(e);
  }
}

extern "C" {

/* The number of CUDA devices (0 or more), or -1 with the reason in msg. */
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

/* "NAME, N MiB, sm_XY" for device i into buf; 0 on success, -1 with the
   reason in buf. */
int32_t lm_cuda_device_describe(int32_t i, char *buf, int32_t buf_len) {
  cudaDeviceProp p;
  cudaError_t e = cudaGetDeviceProperties(&p, i);
  if (e != cudaSuccess) {
    put_msg(buf, buf_len, why(e));
    cudaGetLastError();
    return -1;
  }
  if (buf && buf_len > 0)
    snprintf(buf, (size_t)buf_len, "%s, %lld MiB, sm_%d%d", p.name,
             (long long)(p.totalGlobalMem >> 20), p.major, p.minor);
  return 0;
}

}
