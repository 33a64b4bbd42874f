/* backend.h - the table a device backend library hands to liblumen.
 *
 * A backend (liblumen_cuda.so, or the fake device of the tests) is its own
 * shared library that does not link liblumen; the Lua side loads it when
 * the device is usable and registers its table with
 * lm_backend_register(ctx, LM_CUDA, table). liblumen never links CUDA: it
 * reaches the device only through these function pointers.
 *
 * Every function returns 0 or a negative LM_E_* code (LM_E_OOM when the
 * device is out of memory, LM_E_DEVICE otherwise); last_error() then gives
 * the calling thread's message ("cudaMemcpyAsync: an illegal memory access
 * was encountered"), which liblumen puts after the op's name.
 *
 * The table is append-only and carries its own size: later entries (the op
 * kernels) are read only when size says the library has them, and a NULL
 * entry means the backend lacks that function.
 *
 * Ordering: a backend runs its work in one order (one stream for the whole
 * process), so device memory freed by one op can be handed to the next
 * without waiting; copies to the host return once the data is there. */
#ifndef LUMEN_BACKEND_H
#define LUMEN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { LM_BACKEND_ABI = 1 };

typedef struct lm_backend {
  uint32_t abi;   /* LM_BACKEND_ABI the library was built with */
  uint32_t size;  /* sizeof(lm_backend) as the library saw it */
  const char *name;        /* "cuda" */
  const char *description; /* "CUDA runtime 13.0, NVIDIA H200 (sm_90)": for messages */
  /* Prepares the device (stream, staging buffers). Called once, at
     registration. */
  int32_t (*init)(void);
  /* The message of the calling thread's last failure. */
  const char *(*last_error)(void);
  /* Raw device memory. liblumen caches freed blocks (src/core/alloc.c), so
     these are called only when the cache cannot serve a request and when it
     is emptied. */
  int32_t (*malloc)(size_t nbytes, void **ptr);
  int32_t (*free)(void *ptr);
  /* Sets nbytes at ptr to byte. */
  int32_t (*memset)(void *ptr, int32_t byte, size_t nbytes);
  /* Host to device: returns once src may be reused (the transfer itself
     may still be in flight, ordered before later work). */
  int32_t (*copy_h2d)(void *dst, const void *src, size_t nbytes);
  /* Device to host: returns once dst holds the data. */
  int32_t (*copy_d2h)(void *dst, const void *src, size_t nbytes);
  int32_t (*copy_d2d)(void *dst, const void *src, size_t nbytes);
  /* Gathers a strided view into contiguous memory on the device: element k
     of dst (row-major over shape) is src[sum(i_d * stride_d)] (strides in
     elements of esize bytes: 1, 2, 4 or 8). */
  int32_t (*copy_strided)(void *dst, const void *src, int32_t esize, int32_t ndim, const int64_t *shape,
                          const int64_t *stride);
  /* Waits until all work queued so far has finished. */
  int32_t (*synchronize)(void);
  /* Free and total memory of the device. */
  int32_t (*mem_info)(int64_t *free_bytes, int64_t *total_bytes);
  /* The op kernels will be appended here. */
} lm_backend;

#ifdef __cplusplus
}
#endif
#endif
