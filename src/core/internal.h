/* internal.h - what the engine's own files share; never installed. */
#ifndef LUMEN_INTERNAL_H
#define LUMEN_INTERNAL_H

#include "../lumen.h"
#include "../plugin.h"
#include "../backend.h"
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

/* Invariants of our own code (never user input) may assert. */
#include <assert.h>
#define LM_ASSERT(c) assert(c)

typedef struct lm_storage {
  atomic_int refcount;
  void *data;
  size_t nbytes;
  int32_t device;
  bool external; /* memory owned by the caller of lm_from_ptr */
  bool pinned;   /* CPU memory page-locked by the backend (lm_pinned_alloc) */
} lm_storage;

struct lm_tensor {
  atomic_int refcount;
  int32_t dtype;
  int32_t ndim;
  int64_t shape[LM_MAX_DIMS];
  int64_t stride[LM_MAX_DIMS];
  int64_t offset;
  lm_storage *storage;
  /* autograd (src/core/autograd.c); a view header starts without them */
  bool requires_grad;      /* a leaf whose gradient is wanted */
  int32_t output_nr;       /* which output of grad_fn this is */
  struct lm_node *grad_fn; /* the op that made this tensor (+1), or NULL */
  lm_tensor *grad;         /* accumulated gradient (+1), or NULL */
};

typedef struct lm_plugin_op_entry {
  const lm_plugin_op *op;
  const lm_plugin_handle *plugin;
} lm_plugin_op_entry;

struct lm_ctx {
  char errmsg[1024];
  lm_status last;
  int32_t nthreads;
  uint64_t rng_seed;
  uint64_t rng_offset;
  atomic_int abort_requested;
  int64_t allocated_since; /* bytes, for GC pacing */
  lm_plugin_op_entry *plugin_ops;
  int32_t n_plugin_ops;
  bool grad_enabled;
  int32_t autocast;       /* LM_AUTOCAST_*: how f32 GEMM operands are read (src/ops/amp.c) */
  uint32_t walk_epoch;    /* marks the nodes one backward walk has seen */
  int32_t *custom_freed;  /* ids of freed Lua-defined ops, for lm_custom_freed */
  int32_t n_custom_freed, cap_custom_freed;
};

/* ---- errors: set the message, return the code ---- */
lm_status lm_err(lm_ctx *ctx, lm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "2x3x4" (or "scalar") into buf; returns buf */
const char *lm_shape_str(int32_t ndim, const int64_t *shape, char *buf, size_t n);
#define LM_SHAPE_BUF 96
/* Shorthand used inside op functions: shape string of a tensor. */
#define LM_SHP(t, buf) lm_shape_str((t)->ndim, (t)->shape, (buf), sizeof(buf))
/* Wraps a negative dim; returns -1 when out of range. */
int32_t lm_wrap_dim(int32_t dim, int32_t ndim);

/* ---- allocator (process-wide, size-bucketed cache) ---- */
void *lm_alloc(lm_ctx *ctx, size_t nbytes); /* NULL on OOM; 64-byte aligned */
void lm_free(void *p, size_t nbytes);
/* The size a request of nbytes is served with (both caches round alike). */
size_t lm_round_alloc_size(size_t nbytes);
/* Device memory through the device's cache (src/core/device.c); errors name op. */
lm_status lm_device_alloc(lm_ctx *ctx, const char *op, int32_t device, size_t nbytes, void **out);
void lm_device_free(int32_t device, void *p, size_t nbytes);
/* Page-locked host memory from the LM_CUDA backend's host_alloc, through its
   cache (src/core/device.c); *out is NULL, with no error, when no backend
   can pin. */
lm_status lm_pinned_alloc(lm_ctx *ctx, const char *op, size_t nbytes, void **out);
void lm_pinned_free(void *p, size_t nbytes);

/* ---- tensors ---- */
int64_t lm_numel(const lm_tensor *t);
bool lm_is_contiguous(const lm_tensor *t);
static inline char *lm_data(const lm_tensor *t) {
  return (char *)t->storage->data + t->offset * lm_dtype_size(t->dtype);
}
/* A new contiguous tensor (uninitialised); sets an OOM error naming op. */
lm_status lm_new(lm_ctx *ctx, const char *op, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
/* The same on device (LM_CPU or one with a backend). */
lm_status lm_new_on(lm_ctx *ctx, const char *op, int32_t device, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
/* A new CPU tensor in pinned memory, or in ordinary memory when nothing can pin. */
lm_status lm_new_pinned(lm_ctx *ctx, const char *op, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
/* A new tensor header over t's storage. */
lm_tensor *lm_view_header(const lm_tensor *t);
bool lm_dtype_valid(int32_t dtype);
static inline bool lm_dtype_is_float(int32_t d) { return d == LM_F32 || d == LM_F64; }
/* Broadcast shape of a and b into shape/ndim; error names op. */
lm_status lm_broadcast_shape(lm_ctx *ctx, const char *op, int32_t na, const int64_t *sa, int32_t nb, const int64_t *sb, int32_t *ndim, int64_t *shape);
/* Strides (elements) of t read as if broadcast to (ndim, shape): 0 on
   broadcast dims. Caller guarantees compatibility. */
void lm_broadcast_strides(const lm_tensor *t, int32_t ndim, const int64_t *shape, int64_t *stride);
/* Resolves the dst / out convention: if dst is given it must have shape
   (ndim, shape); otherwise a new tensor of dtype is made. *res is +1. */
lm_status lm_prepare_out(lm_ctx *ctx, const char *op, lm_tensor *dst, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **res);
/* An error naming op and what when t is NULL or not on the CPU: ops with no
   device kernels check their inputs with it, the one place that says so. */
lm_status lm_check_input(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what);

/* ---- where an op runs (src/core/dispatch.c) ----
   An op that has device kernels keeps its meaning here in liblumen (checks,
   shapes, broadcasting, result dtypes, outputs, autograd) and sends only the
   raw loop to the device's backend (src/backend.h): it finds its device with
   lm_op_device, allocates its outputs there (lm_new_on), and for a device
   other than the CPU calls lm_dev_elementwise, or the backend entry it
   needs through LM_BACKEND_FOR. */
static inline int32_t lm_device_of(const lm_tensor *t) { return t->storage->device; }
/* An error naming op and what when t is NULL (any device is fine). */
lm_status lm_check_arg(lm_ctx *ctx, const char *op, const lm_tensor *t, const char *what);
/* The device of the tensors ts[0 .. n) (NULL entries skipped), which must
   all be on one device, else an error naming op, the devices and the
   tensors (what[i] names ts[i]). With cpu_scalars, 0-d CPU tensors do not
   count (they become host scalars of a device op, as in torch). */
lm_status lm_op_device(lm_ctx *ctx, const char *op, int32_t n, const lm_tensor *const *ts, const char *const *what,
                       bool cpu_scalars, int32_t *device);
/* The registered backend of device (NULL for the CPU or none). */
const lm_backend *lm_backend_get(int32_t device);
/* The backend's message for its failed call (status code) as an error of op. */
lm_status lm_backend_fail(lm_ctx *ctx, const char *op, const lm_backend *be, lm_status code);
/* The backend of device when its table has entry (a field of lm_backend),
   else an error naming op that says the op does not run there yet. */
lm_status lm_backend_for(lm_ctx *ctx, const char *op, int32_t device, size_t end, const char *entry,
                         const lm_backend **be);
#define LM_BACKEND_FOR(ctx, op, device, entry, be)                                                       \
  lm_backend_for(ctx, op, device, offsetof(lm_backend, entry) + sizeof(((lm_backend *)0)->entry), #entry, be)
/* The backend's elementwise loop: ts[0] (on the device) is written, ts[1 ..
   n) read, all broadcast to (ndim, shape); inputs are tensors on the device
   or 0-d CPU tensors (passed as host scalars). code and dtype as
   lm_backend.elementwise. */
lm_status lm_dev_elementwise(lm_ctx *ctx, const char *op, int32_t code, int32_t dtype, int32_t ndim,
                             const int64_t *shape, int32_t n, const lm_tensor *const *ts, double param);
/* An error naming op when t is an expanded view (stride 0 on a dim of size
   > 1): writing it would race between threads and lose values. */
lm_status lm_check_writable(lm_ctx *ctx, const char *op, const lm_tensor *t);
/* Whether writing dst while reading in (broadcast to (nd, shape)) could read
   elements already overwritten: the memory overlaps and positions differ. */
bool lm_needs_temp(const lm_tensor *dst, const lm_tensor *in, int32_t nd, const int64_t *shape);
/* Hands res to the caller's out (or releases it when out is NULL). */
static inline lm_status lm_finish_out(lm_tensor *res, lm_tensor **out) {
  if (out) *out = res; else lm_tensor_release(res);
  return LM_OK;
}

/* ---- loops over strided operands ----
   fn(ptrs, strides, n, arg) handles n elements of the innermost dim; ptrs[k]
   and strides[k] (bytes) belong to operand k. */
typedef void (*lm_loop_fn)(char **ptrs, const int64_t *strides, int64_t n, void *arg);
#define LM_MAX_OPERANDS 4
typedef struct lm_operand {
  char *data;
  int64_t stride[LM_MAX_DIMS]; /* elements; 0 on broadcast dims */
  int32_t esize;
} lm_operand;
/* Runs fn over every position of (ndim, shape), splitting the outer
   positions across threads when the work is large enough and parallel is
   set (operands written by fn must not overlap between positions). */
void lm_foreach(lm_ctx *ctx, int32_t ndim, const int64_t *shape, int32_t nops, lm_operand *ops, lm_loop_fn fn, void *arg, bool parallel);
/* Operand for tensor t as seen through a broadcast to (ndim, shape). */
lm_operand lm_operand_of(const lm_tensor *t, int32_t ndim, const int64_t *shape);

/* parallel_for over [0, n) in chunks of at least grain; fn(arg, begin, end) */
void lm_parallel_for(lm_ctx *ctx, int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end), void *arg);

/* ---- BLAS (src/ops/linalg.c) ----
   c = alpha * op(a) @ op(b) + beta * c, row-major, f32 or f64; m, n or k
   may be 0. */
void lm_gemm(int32_t dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const char *a,
             int64_t lda, const char *b, int64_t ldb, double beta, char *c, int64_t ldc);

/* ---- mixed precision (src/ops/amp.c) ----
   Under autocast, f32 convolutions and matrix products read their GEMM
   operands rounded to bf16 or f16 (src/lowp.h) and accumulate in f32. */
/* The mode an op over dtype uses: ctx's for f32, LM_AUTOCAST_OFF otherwise. */
int32_t lm_autocast_for(const lm_ctx *ctx, int32_t dtype);
/* A new contiguous CPU f32 tensor holding t's values rounded to mode. */
lm_status lm_lowp_copy(lm_ctx *ctx, const char *op, const lm_tensor *t, int32_t mode, lm_tensor **out);

/* ---- dtype conversion ---- */
/* Converts n elements between dtypes with byte strides. */
void lm_cast_strided(int32_t dst_dtype, char *dst, int64_t dst_stride, int32_t src_dtype, const char *src, int64_t src_stride, int64_t n);
double lm_read_as_double(int32_t dtype, const char *p);
void lm_write_from_double(int32_t dtype, char *p, double v);
/* t itself (+1) when already dtype, else a converted contiguous copy. */
lm_status lm_cast_if_needed(lm_ctx *ctx, const lm_tensor *t, int32_t dtype, lm_tensor **out);

/* ---- autograd nodes (src/core/autograd.c) ----
   An op that supports autograd computes its outputs, then calls lm_record;
   when that hands back a node, the op saves what its backward needs in it.
   backward(ctx, node, grad_out, grad_in) reads node->saved / p / ip and
   sets grad_in[i] (+1) for every input with node->needs[i]; it runs with
   grad mode off, and grad_out[i] is never NULL. Gradients must have the
   input's shape and dtype (lm_sum_to undoes broadcasting). */
typedef struct lm_node lm_node;
typedef lm_status (*lm_backward_fn)(lm_ctx *ctx, lm_node *node, lm_tensor *const *grad_out, lm_tensor **grad_in);
enum { LM_NODE_SAVED = 8, LM_NODE_P = 8, LM_NODE_IP = 40 };
typedef struct lm_edge {
  lm_node *node;   /* the op that made the input (+1), or NULL */
  int32_t nr;      /* which of its outputs */
  lm_tensor *leaf; /* or the leaf that accumulates the gradient (+1) */
} lm_edge;
typedef struct lm_out_meta { int32_t dtype, ndim, device; int64_t shape[LM_MAX_DIMS]; } lm_out_meta;
struct lm_node {
  int32_t refcount;
  int32_t op;               /* LM_OP_* or a plugin op id */
  const char *name;         /* for grad_fn and messages */
  lm_backward_fn backward;  /* NULL for Lua-defined ops */
  int32_t n_in, n_out;
  lm_edge *next;            /* n_in edges */
  bool *needs;              /* n_in: does input i want a gradient */
  lm_out_meta *outs;        /* n_out output shapes, for zero gradients */
  lm_tensor *saved[LM_NODE_SAVED]; /* detached aliases (+1) */
  double p[LM_NODE_P];      /* scalar parameters the backward needs */
  int64_t ip[LM_NODE_IP];   /* integer parameters (dims, shapes, strides) */
  void *extra;              /* anything else; freed with extra_free */
  void (*extra_free)(void *);
  int32_t custom_id;        /* Lua-defined ops */
  int32_t autocast;         /* the forward's LM_AUTOCAST_* mode, which its backward runs under */
  bool freed;               /* saved state released by a backward */
  /* scratch of one backward walk */
  uint32_t epoch;
  int32_t deps;
  lm_tensor **grads;
};
/* Whether an op over these inputs must record (grad mode on, an input
   requires grad). NULL inputs are skipped. */
bool lm_grad_needed(const lm_ctx *ctx, int32_t n, const lm_tensor *const *in);
/* When lm_grad_needed, a node on outputs out[0..n_out) (*node NULL
   otherwise). */
lm_status lm_record(lm_ctx *ctx, int32_t op, lm_backward_fn fn, int32_t n_in, const lm_tensor *const *in,
                    int32_t n_out, lm_tensor *const *out, lm_node **node);
/* An error naming op when dst is given and autograd would have to track
   the write (an input or dst itself requires grad, grad mode on). */
lm_status lm_check_grad_dst(lm_ctx *ctx, const char *op, const lm_tensor *dst, int32_t n, const lm_tensor *const *in);
/* Keeps a detached alias of t in node->saved[i]. */
lm_status lm_save(lm_ctx *ctx, lm_node *node, int32_t i, const lm_tensor *t);
/* Sums g over broadcast dimensions to (ndim, shape); +1 (g itself when it
   already has that shape). */
lm_status lm_sum_to(lm_ctx *ctx, const lm_tensor *g, int32_t ndim, const int64_t *shape, lm_tensor **out);
void lm_node_release(lm_node *n);
/* Called by lm_ctx_free: freed Lua-defined nodes stop reporting to ctx. */
void lm_autograd_forget_ctx(const lm_ctx *ctx);

/* reduce, shape, index, sort (opsgrad): ops built from other ops run those
   with grad mode off (they must neither record nor refuse to write into
   their own temporaries), then record themselves. Returns the old mode. */
static inline bool lm_grad_pause(lm_ctx *ctx) {
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  return was;
}

/* ---- binary masks (src/ops/morph.c, used by metrics.c) ----
   A mask of 1 to 3 dims seen as a 3-D grid: the last nd axes are its dims,
   the leading ones have size 1 (no border, no spacing). */
typedef struct lm_grid {
  int32_t nd;        /* the mask's own dims */
  int64_t n[3];      /* sizes, padded with leading 1s */
  int64_t numel;
  double spacing[3]; /* mm per voxel (1 on padded axes) */
} lm_grid;
/* Checks mask (what: its name in messages: an integer or bool tensor of
   1 to 3 dims on the CPU) and spacing (NULL: 1, else one positive value
   per dim), and describes its grid. */
lm_status lm_mask_grid(lm_ctx *ctx, const char *op, const lm_tensor *mask, const char *what, const double *spacing,
                       lm_grid *g);
/* A contiguous bool copy of mask (nonzero = 1), +1. */
lm_status lm_mask_bytes(lm_ctx *ctx, const char *op, const lm_tensor *mask, lm_tensor **out);
/* In place over g's contiguous grid: f is 0 at features and infinity
   elsewhere; on return, the squared distance in mm^2 to the nearest feature
   (infinity when there is none). border: voxels just outside the grid
   (along its real axes) count as features. */
lm_status lm_edt_sq(lm_ctx *ctx, const char *op, const lm_grid *g, double *f, bool border);

/* ---- host API table handed to plugins ---- */
const lm_host_api *lm_host_api_get(void);

/* ---- vector maths for f32 kernels ----
   Shared by the kernel files (elementwise, activation, loss, rnn, norm,
   optim). LM_CLONES gives a kernel an AVX2+FMA (x86-64-v3) clone picked at
   load time, with multiply-adds fused; the helpers below are always inlined
   into it, so they run on its ISA. */
#include <string.h>
#define LM_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define LM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define LM_CLONES
#endif
#ifdef _OPENMP
#define LM_PRAGMA(x) _Pragma(#x)
#define LM_SIMD LM_PRAGMA(omp simd)
#define LM_SIMD_SUM(...) LM_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define LM_SIMD_MAX(v) LM_PRAGMA(omp simd reduction(max : v))
#else
#define LM_PRAGMA(x)
#define LM_SIMD
#define LM_SIMD_SUM(...)
#define LM_SIMD_MAX(v)
#endif

/* Eight f32 lanes as GCC vector types (one AVX register, or two SSE halves
   on the baseline ISA). The helpers are inlined, so no vector crosses a
   call and the ABI notes of -Wpsabi are moot (the Makefile turns them off). */
typedef float lm_v8f __attribute__((vector_size(32)));
typedef int32_t lm_v8i __attribute__((vector_size(32)));
typedef uint32_t lm_v8u __attribute__((vector_size(32)));
LM_INLINE lm_v8f lm_v8_splat(float v) { return (lm_v8f){0} + v; }
/* a where mask is set (all ones), else b */
LM_INLINE lm_v8f lm_v8_select(lm_v8i mask, lm_v8f a, lm_v8f b) {
  return (lm_v8f)(((lm_v8i)a & mask) | ((lm_v8i)b & ~mask));
}

/* c ? a : b through the bits: GCC keeps a float ?: as a branch when FP
   traps may be observed (the default), and a branch stops a loop from
   vectorising. */
LM_INLINE float lm_pick_f32(bool c, float a, float b) {
  uint32_t ua, ub, m = -(uint32_t)c;
  memcpy(&ua, &a, 4);
  memcpy(&ub, &b, 4);
  ua = (ua & m) | (ub & ~m);
  memcpy(&a, &ua, 4);
  return a;
}

/* exp for f32, within about 1 ulp: exp(x) = 2^n exp(r), n = round(x / ln2),
   r = x - n ln2 with ln2 in two parts so that r is exact (|r| <= ln2 / 2),
   exp(r) by the degree-7 Cephes polynomial. Adding 1.5 * 2^23 rounds x / ln2
   to an integer, which the low bits of the sum then hold (no float-to-int
   conversion, so NaN is no trouble). x is clamped to [-104, 88.8] and 2^n
   applied in two halves, so that overflow gives inf and the subnormal range
   comes out right; NaN compares false, passes the clamps and stays NaN.
   lm_exp_f32 is the same arithmetic one lane at a time, with bit selects for
   clamps, so loops over it vectorise under any flags; both give the same
   results. */
#define LM_EXP_SHIFT 12582912.0f /* 1.5 * 2^23 */
#define LM_EXP_SHIFT_BITS 0x4B400000
#define LM_EXP_POLY(p, r)                          \
  do {                                             \
    p = p * r + 1.3981999507e-3f;                  \
    p = p * r + 8.3334519073e-3f;                  \
    p = p * r + 4.1665795894e-2f;                  \
    p = p * r + 1.6666665459e-1f;                  \
    p = p * r + 5.0000001201e-1f;                  \
    p = p * (r * r) + r + 1.0f;                    \
  } while (0)
LM_INLINE lm_v8f lm_v8_exp(lm_v8f x) {
  x = lm_v8_select(x > lm_v8_splat(88.8f), lm_v8_splat(88.8f), x);
  x = lm_v8_select(x < lm_v8_splat(-104.0f), lm_v8_splat(-104.0f), x);
  lm_v8f t = x * 1.44269504088896341f + LM_EXP_SHIFT, n = t - LM_EXP_SHIFT;
  lm_v8f r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  lm_v8f p = lm_v8_splat(1.9875691500e-4f);
  LM_EXP_POLY(p, r);
  lm_v8i ni = (lm_v8i)t - LM_EXP_SHIFT_BITS, n1 = ni >> 1, n2 = ni - n1;
  lm_v8f s1 = (lm_v8f)((lm_v8u)(n1 + 127) << 23), s2 = (lm_v8f)((lm_v8u)(n2 + 127) << 23);
  return p * s1 * s2;
}
LM_INLINE float lm_exp_f32(float x) {
  x = lm_pick_f32(x > 88.8f, 88.8f, x);
  x = lm_pick_f32(x < -104.0f, -104.0f, x);
  float t = x * 1.44269504088896341f + LM_EXP_SHIFT, n = t - LM_EXP_SHIFT;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  LM_EXP_POLY(p, r);
  uint32_t tb;
  memcpy(&tb, &t, 4);
  int32_t ni = (int32_t)(tb - LM_EXP_SHIFT_BITS), n1 = ni >> 1, n2 = ni - n1;
  uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, 4);
  memcpy(&s2, &b2, 4);
  return p * s1 * s2;
}

#endif
