/* alloc.c - the CPU caching allocator.
 *
 * Freed blocks are kept in free lists keyed by their rounded size and handed
 * out again for the next request of that size, so a training loop that makes
 * the same temporaries every step stops calling malloc after its first step.
 * One allocator serves the whole process (tensors may outlive a context);
 * a mutex guards it because data-loader threads allocate too. */
#include "internal.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBINS 4096          /* open-addressing table of distinct sizes */

/* Sanitizer builds (make fuzz defines LM_SANITIZE) allocate each block at
   its exact size and free it at once: AddressSanitizer then sees a tensor's
   true extent and every use after free, which rounding and reuse would hide. */
#ifdef LM_SANITIZE
#define CACHING 0
#else
#define CACHING 1
#endif
#define CACHE_LIMIT ((int64_t)2 << 30) /* cached bytes beyond this are freed */

typedef struct free_block { struct free_block *next; } free_block;
typedef struct bin { size_t size; free_block *head; } bin;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bin bins[NBINS];
static int64_t live, peak, cached, total_allocs, system_allocs;

/* Small sizes round to 512 bytes; larger ones to an eighth of their power
   of two, which bounds waste at 12.5% and keeps the number of sizes small. */
size_t lm_round_alloc_size(size_t n) {
  if (n == 0) n = 1;
  if (n <= ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
  size_t p = (size_t)1 << (63 - __builtin_clzll(n));
  size_t step = p >> 3;
  return (n + step - 1) / step * step;
}

static bin *find_bin(size_t size, bool create) {
  size_t h = (size * 0x9E3779B97F4A7C15ull) >> 52; /* 12 bits */
  for (size_t i = 0; i < NBINS; i++) {
    bin *b = &bins[(h + i) & (NBINS - 1)];
    if (b->size == size) return b;
    if (b->size == 0) {
      if (!create) return NULL;
      b->size = size;
      return b;
    }
  }
  return NULL; /* table full: the block is simply not cached */
}

static void release_cache_locked(void) {
  for (size_t i = 0; i < NBINS; i++) {
    while (bins[i].head) {
      free_block *f = bins[i].head;
      bins[i].head = f->next;
      free(f);
      cached -= (int64_t)bins[i].size;
    }
  }
}

/* A block of size (rounded) bytes, or of exactly nbytes in sanitizer builds. */
static void *system_alloc(size_t nbytes, size_t size) {
  if (CACHING) return aligned_alloc(64, size);
  void *p;
  return posix_memalign(&p, 64, nbytes ? nbytes : 1) ? NULL : p;
}

void *lm_alloc(lm_ctx *ctx, size_t nbytes) {
  size_t size = lm_round_alloc_size(nbytes);
  void *p = NULL;
  if (CACHING) {
    pthread_mutex_lock(&lock);
    bin *b = find_bin(size, false);
    if (b && b->head) {
      p = b->head;
      b->head = b->head->next;
      cached -= (int64_t)size;
    }
    pthread_mutex_unlock(&lock);
  }
  if (!p) {
    p = system_alloc(nbytes, size);
    if (!p) { /* give the cache back to the system and try once more */
      pthread_mutex_lock(&lock);
      release_cache_locked();
      pthread_mutex_unlock(&lock);
      p = system_alloc(nbytes, size);
      if (!p) return NULL;
    }
    pthread_mutex_lock(&lock);
    system_allocs++;
    pthread_mutex_unlock(&lock);
  }
  pthread_mutex_lock(&lock);
  live += (int64_t)size;
  if (live > peak) peak = live;
  total_allocs++;
  pthread_mutex_unlock(&lock);
  if (ctx) ctx->allocated_since += (int64_t)size;
  return p;
}

void lm_free(void *p, size_t nbytes) {
  if (!p) return;
  size_t size = lm_round_alloc_size(nbytes);
  pthread_mutex_lock(&lock);
  live -= (int64_t)size;
  bin *b = CACHING && cached + (int64_t)size <= CACHE_LIMIT ? find_bin(size, true) : NULL;
  if (b) {
    free_block *f = p;
    f->next = b->head;
    b->head = f;
    cached += (int64_t)size;
    p = NULL;
  }
  pthread_mutex_unlock(&lock);
  free(p);
}

void lm_mem_get_stats(lm_ctx *ctx, lm_mem_stats *out) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  out->live_bytes = live;
  out->peak_bytes = peak;
  out->cached_bytes = cached;
  out->total_allocs = total_allocs;
  out->system_allocs = system_allocs;
  pthread_mutex_unlock(&lock);
}

void lm_mem_empty_cache(lm_ctx *ctx) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  release_cache_locked();
  pthread_mutex_unlock(&lock);
}

void lm_mem_reset_peak(lm_ctx *ctx) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  peak = live;
  pthread_mutex_unlock(&lock);
}

int64_t lm_mem_allocated_since(lm_ctx *ctx, int32_t reset) {
  int64_t n = ctx->allocated_since;
  if (reset) ctx->allocated_since = 0;
  return n;
}
