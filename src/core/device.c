/* device.c - device backends, the device memory cache and transfers.
 *
 * A backend library (src/backend.h) registers its table here; liblumen
 * itself never links CUDA. Device memory is cached here, not in the
 * backend, because the bookkeeping is the same for every device and can
 * then be tested on machines without one (tests/plugin/fake_device.c):
 * freed blocks wait in lists keyed by their rounded size (the CPU
 * allocator's rounding) and are handed out again in the backend's one
 * stream order, so a training step stops calling cudaMalloc (which
 * synchronises) after its first pass. One cache per device kind for the
 * whole process, as tensors outlive contexts. */
#include "internal.h"
#include "../backend.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBINS 4096
#define NDEV 2 /* LM_CPU, LM_CUDA */

typedef struct dev_block {
  void *ptr;
  uint64_t ticket; /* pinned blocks: the last transfer issued when it was freed */
  struct dev_block *next;
} dev_block;
typedef struct dev_bin {
  size_t size;
  dev_block *head;
} dev_bin;
typedef struct dev_pool {
  const lm_backend *be;
  dev_bin bins[NBINS];
  dev_block *spare; /* list nodes to reuse */
  int64_t live, peak, cached, total_allocs, system_allocs;
} dev_pool;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static dev_pool pools[NDEV];
/* Page-locked host memory of the LM_CUDA backend (host_alloc), cached the
   same way. Transfers from it are asynchronous, so a freed block may still
   be read by one in flight: each such transfer takes a ticket (issued), a
   freed block keeps the last ticket issued, and a block goes out again only
   once a synchronize begun after its ticket has returned (synced). */
static dev_pool pinned;
static uint64_t issued, synced;

const char *lm_device_name(int32_t device) {
  switch (device) {
  case LM_CPU: return "cpu";
  case LM_CUDA: return "cuda";
  default: return "unknown-device";
  }
}

static bool device_valid(int32_t device) { return device == LM_CPU || device == LM_CUDA; }

int32_t lm_device_available(int32_t device) {
  if (device == LM_CPU) return 1;
  if (!device_valid(device)) return 0;
  pthread_mutex_lock(&lock);
  int32_t ok = pools[device].be != NULL;
  pthread_mutex_unlock(&lock);
  return ok;
}

/* The backend of device, or an error naming op. */
static lm_status backend_of(lm_ctx *ctx, const char *op, int32_t device, const lm_backend **be) {
  if (!device_valid(device) || device == LM_CPU)
    return lm_err(ctx, LM_E_ARG, "%s: device %d is not a backend device, expected LM_CUDA", op, device);
  pthread_mutex_lock(&lock);
  *be = pools[device].be;
  pthread_mutex_unlock(&lock);
  if (!*be)
    return lm_err(ctx, LM_E_DEVICE, "%s: no %s backend is loaded (lumen.cuda.status() says why)", op,
                  lm_device_name(device));
  return LM_OK;
}

const lm_backend *lm_backend_get(int32_t device) {
  if (!device_valid(device) || device == LM_CPU) return NULL;
  pthread_mutex_lock(&lock);
  const lm_backend *be = pools[device].be;
  pthread_mutex_unlock(&lock);
  return be;
}

lm_status lm_backend_fail(lm_ctx *ctx, const char *op, const lm_backend *be, lm_status code) {
  const char *why = be->last_error ? be->last_error() : NULL;
  if (code != LM_E_OOM) code = LM_E_DEVICE;
  return lm_err(ctx, code, "%s: %s: %s", op, be->name, why && why[0] ? why : "unknown error");
}

lm_status lm_backend_register(lm_ctx *ctx, int32_t device, const lm_backend *be) {
  if (device != LM_CUDA)
    return lm_err(ctx, LM_E_ARG, "backend_register: device %d cannot take a backend, expected LM_CUDA", device);
  if (!be) return lm_err(ctx, LM_E_ARG, "backend_register: the table is NULL");
  if (be->abi != LM_BACKEND_ABI)
    return lm_err(ctx, LM_E_ABI, "backend_register: the %s backend was built for backend ABI %u, this liblumen has %d (rebuild it)",
                  be->name ? be->name : "?", be->abi, LM_BACKEND_ABI);
  if (be->size < offsetof(lm_backend, mem_info) + sizeof be->mem_info || !be->malloc || !be->free ||
      !be->copy_h2d || !be->copy_d2h || !be->copy_d2d || !be->copy_strided || !be->memset || !be->synchronize)
    return lm_err(ctx, LM_E_ABI, "backend_register: the %s backend's table lacks the memory and copy functions",
                  be->name ? be->name : "?");
  pthread_mutex_lock(&lock);
  const lm_backend *had = pools[device].be;
  pthread_mutex_unlock(&lock);
  if (had == be) return LM_OK;
  if (had)
    return lm_err(ctx, LM_E_DEVICE, "backend_register: a %s backend (%s) is already registered for %s; unregister it first",
                  had->name, had->description ? had->description : "", lm_device_name(device));
  lm_status st = be->init ? be->init() : LM_OK;
  if (st) return lm_backend_fail(ctx, "backend_register", be, st);
  pthread_mutex_lock(&lock);
  pools[device].be = be;
  pthread_mutex_unlock(&lock);
  return LM_OK;
}

/* Whether backend be's table has entry (a field of lm_backend) set. */
#define HAS_ENTRY(be, entry) \
  ((be)->size >= offsetof(lm_backend, entry) + sizeof((be)->entry) && (be)->entry)

static void release_cache_locked(dev_pool *p) {
  for (size_t i = 0; i < NBINS; i++) {
    while (p->bins[i].head) {
      dev_block *b = p->bins[i].head;
      p->bins[i].head = b->next;
      if (p == &pinned) p->be->host_free(b->ptr);
      else p->be->free(b->ptr);
      p->cached -= (int64_t)p->bins[i].size;
      b->next = p->spare;
      p->spare = b;
    }
  }
}

lm_status lm_backend_unregister(lm_ctx *ctx, int32_t device) {
  if (device != LM_CUDA) return lm_err(ctx, LM_E_ARG, "backend_unregister: device %d has no backend", device);
  pthread_mutex_lock(&lock);
  dev_pool *p = &pools[device];
  lm_status st = LM_OK;
  if (p->be && p->live > 0) {
    st = lm_err(ctx, LM_E_DEVICE, "backend_unregister: %lld bytes of %s memory are still held by tensors",
                (long long)p->live, lm_device_name(device));
  } else if (pinned.be && pinned.live > 0) {
    st = lm_err(ctx, LM_E_DEVICE, "backend_unregister: %lld bytes of pinned host memory are still held by tensors",
                (long long)pinned.live);
  } else if (p->be) {
    p->be->synchronize();
    dev_pool *both[2] = {p, &pinned};
    for (int k = 0; k < 2; k++) {
      if (!both[k]->be) continue;
      release_cache_locked(both[k]);
      while (both[k]->spare) {
        dev_block *b = both[k]->spare;
        both[k]->spare = b->next;
        free(b);
      }
      memset(both[k], 0, sizeof *both[k]);
    }
  }
  pthread_mutex_unlock(&lock);
  return st;
}

static dev_bin *find_bin(dev_pool *p, size_t size, bool create) {
  size_t h = (size * 0x9E3779B97F4A7C15ull) >> 52;
  for (size_t i = 0; i < NBINS; i++) {
    dev_bin *b = &p->bins[(h + i) & (NBINS - 1)];
    if (b->size == size) return b;
    if (b->size == 0) {
      if (!create) return NULL;
      b->size = size;
      return b;
    }
  }
  return NULL;
}

lm_status lm_device_alloc(lm_ctx *ctx, const char *op, int32_t device, size_t nbytes, void **out) {
  const lm_backend *be;
  lm_status st = backend_of(ctx, op, device, &be);
  if (st) return st;
  size_t size = lm_round_alloc_size(nbytes);
  dev_pool *p = &pools[device];
  void *ptr = NULL;
  pthread_mutex_lock(&lock);
  dev_bin *b = find_bin(p, size, false);
  if (b && b->head) {
    dev_block *blk = b->head;
    b->head = blk->next;
    ptr = blk->ptr;
    blk->next = p->spare;
    p->spare = blk;
    p->cached -= (int64_t)size;
  }
  pthread_mutex_unlock(&lock);
  if (!ptr) {
    st = be->malloc(size, &ptr);
    if (st == LM_E_OOM) { /* give the cache back to the device and try once more */
      pthread_mutex_lock(&lock);
      release_cache_locked(p);
      pthread_mutex_unlock(&lock);
      st = be->malloc(size, &ptr);
    }
    if (st) {
      const char *why = be->last_error ? be->last_error() : "";
      return lm_err(ctx, st == LM_E_OOM ? LM_E_OOM : LM_E_DEVICE, "%s: %s allocating %zu bytes on %s (%s)", op,
                    st == LM_E_OOM ? "out of memory" : "failed", nbytes, lm_device_name(device), why);
    }
    pthread_mutex_lock(&lock);
    p->system_allocs++;
    pthread_mutex_unlock(&lock);
  }
  pthread_mutex_lock(&lock);
  p->live += (int64_t)size;
  if (p->live > p->peak) p->peak = p->live;
  p->total_allocs++;
  pthread_mutex_unlock(&lock);
  if (ctx) ctx->allocated_since += (int64_t)size;
  *out = ptr;
  return LM_OK;
}

void lm_device_free(int32_t device, void *ptr, size_t nbytes) {
  if (!ptr || !device_valid(device)) return;
  size_t size = lm_round_alloc_size(nbytes);
  dev_pool *p = &pools[device];
  pthread_mutex_lock(&lock);
  LM_ASSERT(p->be);
  p->live -= (int64_t)size;
  dev_bin *b = find_bin(p, size, true);
  dev_block *blk = p->spare;
  if (blk) p->spare = blk->next;
  else blk = malloc(sizeof *blk);
  if (b && blk) { /* back to the cache; the backend's ordering makes it safe to reuse */
    blk->ptr = ptr;
    blk->next = b->head;
    b->head = blk;
    p->cached += (int64_t)size;
  } else {
    free(blk);
    p->be->free(ptr);
  }
  pthread_mutex_unlock(&lock);
}

void lm_device_mem_stats(lm_ctx *ctx, int32_t device, lm_mem_stats *out) {
  if (device == LM_CPU) {
    lm_mem_get_stats(ctx, out);
    return;
  }
  memset(out, 0, sizeof *out);
  if (!device_valid(device)) return;
  pthread_mutex_lock(&lock);
  const dev_pool *p = &pools[device];
  out->live_bytes = p->live;
  out->peak_bytes = p->peak;
  out->cached_bytes = p->cached;
  out->total_allocs = p->total_allocs;
  out->system_allocs = p->system_allocs;
  pthread_mutex_unlock(&lock);
}

lm_status lm_device_empty_cache(lm_ctx *ctx, int32_t device) {
  if (device == LM_CPU) {
    lm_mem_empty_cache(ctx);
    return LM_OK;
  }
  const lm_backend *be;
  lm_status st = backend_of(ctx, "empty_cache", device, &be);
  if (st) return st;
  if ((st = be->synchronize())) return lm_backend_fail(ctx, "empty_cache", be, st);
  pthread_mutex_lock(&lock);
  release_cache_locked(&pools[device]);
  if (pinned.be) release_cache_locked(&pinned);
  pthread_mutex_unlock(&lock);
  return LM_OK;
}

void lm_device_reset_peak(lm_ctx *ctx, int32_t device) {
  if (device == LM_CPU) {
    lm_mem_reset_peak(ctx);
    return;
  }
  if (!device_valid(device)) return;
  pthread_mutex_lock(&lock);
  pools[device].peak = pools[device].live;
  pthread_mutex_unlock(&lock);
}

lm_status lm_device_mem_info(lm_ctx *ctx, int32_t device, int64_t *free_bytes, int64_t *total_bytes) {
  const lm_backend *be;
  lm_status st = backend_of(ctx, "mem_info", device, &be);
  if (st) return st;
  if (!be->mem_info) return lm_err(ctx, LM_E_UNSUPPORTED, "mem_info: the %s backend cannot tell", be->name);
  if ((st = be->mem_info(free_bytes, total_bytes))) return lm_backend_fail(ctx, "mem_info", be, st);
  return LM_OK;
}

lm_status lm_device_synchronize(lm_ctx *ctx, int32_t device) {
  if (device == LM_CPU) return LM_OK;
  const lm_backend *be;
  lm_status st = backend_of(ctx, "synchronize", device, &be);
  if (st) return st;
  if ((st = be->synchronize())) return lm_backend_fail(ctx, "synchronize", be, st);
  return LM_OK;
}

/* ---- pinned host memory ---- */

lm_status lm_pinned_alloc(lm_ctx *ctx, const char *op, size_t nbytes, void **out) {
  *out = NULL;
  const lm_backend *be = lm_backend_get(LM_CUDA);
  if (!be || !HAS_ENTRY(be, host_alloc) || !HAS_ENTRY(be, host_free)) return LM_OK; /* nothing can pin */
  size_t size = lm_round_alloc_size(nbytes);
  void *ptr = NULL;
  uint64_t ticket = 0;
  pthread_mutex_lock(&lock);
  pinned.be = be;
  dev_bin *b = find_bin(&pinned, size, false);
  if (b && b->head) {
    dev_block *blk = b->head;
    b->head = blk->next;
    ptr = blk->ptr;
    ticket = blk->ticket;
    blk->next = pinned.spare;
    pinned.spare = blk;
    pinned.cached -= (int64_t)size;
  }
  uint64_t upto = issued;
  bool wait = ptr && ticket > synced;
  pthread_mutex_unlock(&lock);
  lm_status st = LM_OK;
  if (wait) { /* a transfer issued before the block was freed may still read it */
    if ((st = be->synchronize())) {
      pthread_mutex_lock(&lock);
      pinned.live += (int64_t)size; /* lm_pinned_free takes it off again */
      pthread_mutex_unlock(&lock);
      lm_pinned_free(ptr, nbytes);
      return lm_backend_fail(ctx, op, be, st);
    }
    pthread_mutex_lock(&lock);
    if (upto > synced) synced = upto;
    pthread_mutex_unlock(&lock);
  }
  if (!ptr) {
    st = be->host_alloc(size, &ptr);
    if (st == LM_E_OOM) {
      pthread_mutex_lock(&lock);
      release_cache_locked(&pinned);
      pthread_mutex_unlock(&lock);
      st = be->host_alloc(size, &ptr);
    }
    if (st) {
      const char *why = be->last_error ? be->last_error() : "";
      return lm_err(ctx, st == LM_E_OOM ? LM_E_OOM : LM_E_DEVICE, "%s: %s allocating %zu bytes of pinned host memory (%s)",
                    op, st == LM_E_OOM ? "out of memory" : "failed", nbytes, why);
    }
    pthread_mutex_lock(&lock);
    pinned.system_allocs++;
    pthread_mutex_unlock(&lock);
  }
  pthread_mutex_lock(&lock);
  pinned.live += (int64_t)size;
  if (pinned.live > pinned.peak) pinned.peak = pinned.live;
  pinned.total_allocs++;
  pthread_mutex_unlock(&lock);
  *out = ptr;
  return LM_OK;
}

void lm_pinned_free(void *ptr, size_t nbytes) {
  if (!ptr) return;
  size_t size = lm_round_alloc_size(nbytes);
  pthread_mutex_lock(&lock);
  LM_ASSERT(pinned.be);
  pinned.live -= (int64_t)size;
  dev_bin *b = find_bin(&pinned, size, true);
  dev_block *blk = pinned.spare;
  if (blk) pinned.spare = blk->next;
  else blk = malloc(sizeof *blk);
  if (b && blk) {
    blk->ptr = ptr;
    blk->ticket = issued;
    blk->next = b->head;
    b->head = blk;
    pinned.cached += (int64_t)size;
  } else { /* no room to cache it: wait for any transfer, then give it back */
    free(blk);
    pinned.be->synchronize();
    pinned.be->host_free(ptr);
  }
  pthread_mutex_unlock(&lock);
}

void lm_pinned_mem_stats(lm_mem_stats *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&lock);
  out->live_bytes = pinned.live;
  out->peak_bytes = pinned.peak;
  out->cached_bytes = pinned.cached;
  out->total_allocs = pinned.total_allocs;
  out->system_allocs = pinned.system_allocs;
  pthread_mutex_unlock(&lock);
}

int32_t lm_is_pinned(const lm_tensor *t) { return t && t->storage->pinned; }

lm_status lm_empty_pinned(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  if (!out) return lm_err(ctx, LM_E_ARG, "empty_pinned: out is NULL");
  return lm_new_pinned(ctx, "empty_pinned", dtype, ndim, shape, out);
}

lm_status lm_pin_memory(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  if (!t) return lm_err(ctx, LM_E_ARG, "pin_memory: tensor is NULL");
  if (!out) return lm_err(ctx, LM_E_ARG, "pin_memory: out is NULL");
  if (lm_device_of(t) != LM_CPU)
    return lm_err(ctx, LM_E_DEVICE, "pin_memory: the tensor is on %s, expected a CPU tensor (only host memory is pinned)",
                  lm_device_name(lm_device_of(t)));
  lm_tensor *r = NULL;
  lm_status st = LM_OK;
  if (!t->storage->pinned && (st = lm_new_pinned(ctx, "pin_memory", t->dtype, t->ndim, t->shape, &r))) return st;
  if (!r || !r->storage->pinned) { /* pinned already, or nothing can pin: t itself */
    lm_tensor_release(r);
    lm_tensor_retain((lm_tensor *)t);
    *out = (lm_tensor *)t;
    return LM_OK;
  }
  bool grad = lm_grad_pause(ctx); /* a copy of the values, cut from the graph */
  st = lm_copy_(ctx, r, t);
  ctx->grad_enabled = grad;
  if (st) {
    lm_tensor_release(r);
    return st;
  }
  *out = r;
  return LM_OK;
}

/* ---- transfers ---- */

/* The gradient of a transfer goes back to the source's device. */
static lm_status to_device_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  return lm_to_device(ctx, gout[0], (int32_t)n->ip[0], &gin[0]);
}

/* A contiguous device copy of the CPU tensor t. */
static lm_status host_to_device(lm_ctx *ctx, const lm_backend *be, const lm_tensor *t, int32_t device, lm_tensor **out) {
  lm_tensor *c = NULL, *r = NULL;
  bool grad = lm_grad_pause(ctx); /* the CPU copy below is not part of the graph */
  lm_status st = lm_contiguous(ctx, t, &c);
  ctx->grad_enabled = grad;
  if (!st) st = lm_new_on(ctx, "to", device, t->dtype, t->ndim, t->shape, &r);
  size_t nbytes = (size_t)lm_numel(t) * lm_dtype_size(t->dtype);
  /* pinned source (contiguous, so c is t): straight to the DMA, no staging */
  bool direct = c && c->storage->pinned && HAS_ENTRY(be, copy_h2d_async);
  if (!st && nbytes && direct) {
    pthread_mutex_lock(&lock);
    issued++;
    pthread_mutex_unlock(&lock);
    if ((st = be->copy_h2d_async(r->storage->data, lm_data(c), nbytes))) st = lm_backend_fail(ctx, "to", be, st);
  } else if (!st && nbytes && (st = be->copy_h2d(r->storage->data, lm_data(c), nbytes))) {
    st = lm_backend_fail(ctx, "to", be, st);
  }
  lm_tensor_release(c);
  if (st) { lm_tensor_release(r); return st; }
  *out = r;
  return LM_OK;
}

/* A contiguous CPU copy of the device tensor t: a strided view is gathered
   on the device first, so only its elements cross the bus. */
static lm_status device_to_host(lm_ctx *ctx, const lm_backend *be, const lm_tensor *t, lm_tensor **out) {
  lm_tensor *r = NULL, *tmp = NULL;
  size_t nbytes = (size_t)lm_numel(t) * lm_dtype_size(t->dtype);
  lm_status st = lm_new(ctx, "to", t->dtype, t->ndim, t->shape, &r);
  if (st || !nbytes) goto done;
  const char *src = lm_data(t);
  if (!lm_is_contiguous(t)) {
    if ((st = lm_new_on(ctx, "to", t->storage->device, t->dtype, t->ndim, t->shape, &tmp))) goto done;
    if ((st = be->copy_strided(tmp->storage->data, src, lm_dtype_size(t->dtype), t->ndim, t->shape, t->stride))) {
      st = lm_backend_fail(ctx, "to", be, st);
      goto done;
    }
    src = tmp->storage->data;
  }
  if ((st = be->copy_d2h(r->storage->data, src, nbytes))) st = lm_backend_fail(ctx, "to", be, st);
done:
  lm_tensor_release(tmp);
  if (st) { lm_tensor_release(r); return st; }
  *out = r;
  return LM_OK;
}

lm_status lm_to_device(lm_ctx *ctx, const lm_tensor *t, int32_t device, lm_tensor **out) {
  if (!t) return lm_err(ctx, LM_E_ARG, "to: tensor is NULL");
  if (!device_valid(device))
    return lm_err(ctx, LM_E_ARG, "to: unknown device %d (expected %d for cpu or %d for cuda)", device, LM_CPU, LM_CUDA);
  int32_t from = t->storage->device;
  if (from == device) {
    lm_tensor_retain((lm_tensor *)t);
    *out = (lm_tensor *)t;
    return LM_OK;
  }
  const lm_backend *be;
  lm_status st = backend_of(ctx, "to", from == LM_CPU ? device : from, &be);
  if (st) return st;
  lm_tensor *r;
  st = from == LM_CPU ? host_to_device(ctx, be, t, device, &r) : device_to_host(ctx, be, t, &r);
  if (st) return st;
  lm_node *n = NULL;
  if (lm_dtype_is_float(t->dtype) && (st = lm_record(ctx, LM_OP_COPY, to_device_backward, 1, &t, 1, &r, &n))) {
    lm_tensor_release(r);
    return st;
  }
  if (n) n->ip[0] = from;
  *out = r;
  return LM_OK;
}
