/* fake_device.c - a device backend whose "device memory" is host memory.
 *
 * Registered as LM_CUDA by specs (tests/spec/device_spec.lua) and by
 * tests/gpu/run.sh when asked to check itself without a GPU, it lets the
 * device paths run on any machine: transfers, strided gathers, the device
 * memory cache and its stats, and the refusals of CPU ops. Every block
 * starts and ends with a guard word, so a write past a block, or a block
 * freed twice, is caught; counters tell the specs how often the cache
 * went to the "device". Not thread-safe beyond what the specs need. */
#include "backend.h"
#include "lumen.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 0x6c756d656e646576ull /* "lumendev" */

typedef struct header {
  uint64_t guard;
  size_t nbytes;
} header;

static char msg[256];
static int64_t outstanding, mallocs, frees, syncs, h2d_bytes, d2h_bytes;
static int64_t fail_next_malloc; /* > 0: that many mallocs report out of memory */
static char description[] = "fake device: host memory (tests/plugin/fake_device.c)";

static int32_t fake_init(void) { return 0; }
static const char *fake_last_error(void) { return msg; }

static int32_t fake_malloc(size_t nbytes, void **ptr) {
  if (fail_next_malloc > 0) {
    fail_next_malloc--;
    snprintf(msg, sizeof msg, "fake malloc: out of memory (asked to fail)");
    return LM_E_OOM;
  }
  header *h = malloc(sizeof(header) + nbytes + sizeof(uint64_t));
  if (!h) {
    snprintf(msg, sizeof msg, "fake malloc: out of memory");
    return LM_E_OOM;
  }
  h->guard = GUARD;
  h->nbytes = nbytes;
  uint64_t tail = GUARD;
  memcpy((char *)(h + 1) + nbytes, &tail, sizeof tail);
  memset(h + 1, 0xA5, nbytes); /* not zeros: a missing copy shows */
  *ptr = h + 1;
  outstanding++;
  mallocs++;
  return 0;
}

static int32_t fake_free(void *ptr) {
  header *h = (header *)ptr - 1;
  uint64_t tail;
  memcpy(&tail, (char *)ptr + h->nbytes, sizeof tail);
  if (h->guard != GUARD || tail != GUARD) {
    fprintf(stderr, "fake_device: corrupt or doubly freed block %p\n", ptr);
    abort(); /* a test backend: a bug of ours must stop the run loudly */
  }
  h->guard = 0;
  free(h);
  outstanding--;
  frees++;
  return 0;
}

static int32_t fake_memset(void *ptr, int32_t byte, size_t n) {
  memset(ptr, byte, n);
  return 0;
}
static int32_t fake_h2d(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
  h2d_bytes += (int64_t)n;
  return 0;
}
static int32_t fake_d2h(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
  d2h_bytes += (int64_t)n;
  return 0;
}
static int32_t fake_d2d(void *dst, const void *src, size_t n) {
  memmove(dst, src, n);
  return 0;
}

static int32_t fake_strided(void *dst, const void *src, int32_t esize, int32_t ndim, const int64_t *shape,
                            const int64_t *stride) {
  int64_t n = 1, idx[LM_MAX_DIMS] = {0};
  for (int32_t d = 0; d < ndim; d++) n *= shape[d];
  for (int64_t k = 0; k < n; k++) {
    int64_t off = 0;
    for (int32_t d = 0; d < ndim; d++) off += idx[d] * stride[d];
    memcpy((char *)dst + k * esize, (const char *)src + off * esize, (size_t)esize);
    for (int32_t d = ndim - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return 0;
}

static int32_t fake_sync(void) {
  syncs++;
  return 0;
}
static int32_t fake_mem_info(int64_t *f, int64_t *t) {
  *f = (int64_t)1 << 30;
  *t = (int64_t)1 << 31;
  return 0;
}

static const lm_backend table = {
    LM_BACKEND_ABI, sizeof(lm_backend), "fake", description, fake_init, fake_last_error, fake_malloc, fake_free,
    fake_memset, fake_h2d, fake_d2h, fake_d2d, fake_strided, fake_sync, fake_mem_info,
};

const lm_backend *lm_fake_backend(void) { return &table; }

/* counters: outstanding blocks, mallocs, frees, synchronizes, bytes in, bytes out */
void lm_fake_counters(int64_t *out) {
  out[0] = outstanding;
  out[1] = mallocs;
  out[2] = frees;
  out[3] = syncs;
  out[4] = h2d_bytes;
  out[5] = d2h_bytes;
}

void lm_fake_fail_mallocs(int64_t n) { fail_next_malloc = n; }

/* A table of another ABI, which registration must refuse. */
static const lm_backend old_table = {
    LM_BACKEND_ABI + 98, sizeof(lm_backend), "fake", description, fake_init, fake_last_error, fake_malloc, fake_free,
    fake_memset, fake_h2d, fake_d2h, fake_d2d, fake_strided, fake_sync, fake_mem_info,
};
const lm_backend *lm_fake_backend_wrong_abi(void) { return &old_table; }
