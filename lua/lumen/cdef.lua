-- Generated from src/lumen.h by src/tools/gen_cdef.lua (make cdef). Do not edit.
return [==[
/* The ABI: a plugin or Lua binding of another major version is refused. */
enum { LM_ABI_MAJOR = 0, LM_ABI_MINOR = 1, LM_MAX_DIMS = 8 };

typedef struct lm_ctx lm_ctx;
typedef struct lm_tensor lm_tensor;
typedef struct lm_backend lm_backend; /* a device backend's table (src/backend.h) */
typedef struct lm_plugin_handle lm_plugin_handle;
typedef int32_t lm_status;

enum {
  LM_OK = 0,
  LM_E_ARG = -1,         /* a bad argument value or an unknown option */
  LM_E_SHAPE = -2,       /* shapes that do not fit the op */
  LM_E_DTYPE = -3,       /* a dtype the op does not take */
  LM_E_INDEX = -4,       /* an index out of range */
  LM_E_OOM = -5,         /* out of memory */
  LM_E_IO = -6,          /* a file that cannot be opened, read or written */
  LM_E_FORMAT = -7,      /* a file whose contents are corrupt or truncated */
  LM_E_DEVICE = -8,      /* a device error, or tensors on different devices */
  LM_E_UNSUPPORTED = -9, /* valid, but not implemented for these inputs */
  LM_E_ABI = -10,        /* a plugin built for another ABI */
  LM_E_ABORTED = -11,    /* a long job stopped by lm_ctx_request_abort */
  LM_E_WORKER = -12      /* a data-pipeline worker failed (its message says why) */
};

enum { LM_F32 = 0, LM_F64, LM_I32, LM_I64, LM_U8, LM_BOOL, LM_NDTYPES };
enum { LM_CPU = 0, LM_CUDA = 1 };

/* The core op set. lm_op_name() names each; plugin ops get ids from
   LM_OP_COUNT upwards. */
enum {
  /* unary elementwise */
  LM_OP_NEG = 0, LM_OP_ABS, LM_OP_EXP, LM_OP_LOG, LM_OP_LOG1P, LM_OP_SQRT,
  LM_OP_RSQRT, LM_OP_SIN, LM_OP_COS, LM_OP_SIGMOID, LM_OP_TANH, LM_OP_RELU,
  LM_OP_FLOOR, LM_OP_CEIL, LM_OP_ROUND, LM_OP_SIGN, LM_OP_RECIPROCAL,
  LM_OP_LOGICAL_NOT,
  /* binary elementwise */
  LM_OP_ADD, LM_OP_SUB, LM_OP_MUL, LM_OP_DIV, LM_OP_POW, LM_OP_MAXIMUM,
  LM_OP_MINIMUM, LM_OP_EQ, LM_OP_NE, LM_OP_LT, LM_OP_LE, LM_OP_GT, LM_OP_GE,
  LM_OP_LOGICAL_AND, LM_OP_LOGICAL_OR, LM_OP_LOGICAL_XOR,
  /* reductions */
  LM_OP_SUM, LM_OP_MEAN, LM_OP_PROD, LM_OP_MAX, LM_OP_MIN, LM_OP_ARGMAX,
  LM_OP_ARGMIN, LM_OP_VAR, LM_OP_STD, LM_OP_NORM, LM_OP_ALL, LM_OP_ANY,
  LM_OP_COUNT_NONZERO,
  /* everything else */
  LM_OP_COPY, LM_OP_FILL, LM_OP_CLAMP, LM_OP_WHERE, LM_OP_CUMSUM,
  LM_OP_MATMUL, LM_OP_ADDMM, LM_OP_CAT, LM_OP_FLIP, LM_OP_ROLL, LM_OP_PAD,
  LM_OP_GATHER, LM_OP_SCATTER, LM_OP_INDEX_SELECT, LM_OP_MASKED_SELECT,
  LM_OP_MASKED_FILL, LM_OP_SORT, LM_OP_TOPK, LM_OP_UNIQUE, LM_OP_NONZERO,
  LM_OP_ARANGE, LM_OP_LINSPACE, LM_OP_EYE, LM_OP_UNIFORM, LM_OP_NORMAL,
  LM_OP_BERNOULLI, LM_OP_RANDINT, LM_OP_RANDPERM,
  /* neural-network layers, losses and optimizers */
  LM_OP_CONV, LM_OP_CONV_TRANSPOSE, LM_OP_MAX_POOL, LM_OP_AVG_POOL,
  LM_OP_MAX_UNPOOL, LM_OP_ADAPTIVE_AVG_POOL, LM_OP_BATCH_NORM,
  LM_OP_GROUP_NORM, LM_OP_LAYER_NORM, LM_OP_LEAKY_RELU, LM_OP_PRELU,
  LM_OP_ELU, LM_OP_GELU, LM_OP_SOFTMAX, LM_OP_LOG_SOFTMAX, LM_OP_UPSAMPLE,
  LM_OP_GRID_SAMPLE, LM_OP_AFFINE_GRID, LM_OP_CROSS_ENTROPY, LM_OP_NLL,
  LM_OP_BCE_LOGITS, LM_OP_SGD, LM_OP_ADAM, LM_OP_RMSPROP, LM_OP_LSTM_CELL,
  LM_OP_GRU_CELL,
  /* views and ops defined in Lua, as autograd names them */
  LM_OP_VIEW, LM_OP_CUSTOM,
  LM_OP_COUNT
};

enum { LM_PAD_CONSTANT = 0, LM_PAD_REFLECT = 1, LM_PAD_REPLICATE = 2 };
enum { LM_SCATTER_SET = 0, LM_SCATTER_ADD = 1 };

/* A snapshot of a tensor's layout. data points at element [0,...,0]. */
typedef struct lm_tensor_info {
  int32_t dtype;
  int32_t device;
  int32_t ndim;
  int32_t contiguous;
  int64_t shape[8];
  int64_t stride[8];
  int64_t offset; /* in elements, from the start of the storage */
  int64_t numel;
  void *data;
} lm_tensor_info;

typedef struct lm_mem_stats {
  int64_t live_bytes;    /* held by live tensors */
  int64_t peak_bytes;    /* highest live_bytes since start or reset */
  int64_t cached_bytes;  /* freed blocks kept for reuse */
  int64_t total_allocs;  /* allocations served, cached or not */
  int64_t system_allocs; /* those the cache could not serve (malloc, cudaMalloc) */
} lm_mem_stats;

/* library and context */
uint32_t lm_abi_version(void); /* (major << 16) | minor */
const char *lm_version(void);
const char *lm_op_name(int32_t op);
lm_status lm_ctx_new(lm_ctx **out);
void lm_ctx_free(lm_ctx *ctx);
const char *lm_ctx_errmsg(const lm_ctx *ctx);
void lm_ctx_clear_error(lm_ctx *ctx);
void lm_ctx_request_abort(lm_ctx *ctx);
int32_t lm_ctx_abort_requested(const lm_ctx *ctx);

/* threads and BLAS */
void lm_set_num_threads(lm_ctx *ctx, int32_t n);
int32_t lm_get_num_threads(const lm_ctx *ctx);
const char *lm_blas_info(void); /* OpenBLAS build and the kernel set in use */

/* memory */
void lm_mem_get_stats(lm_ctx *ctx, lm_mem_stats *out);
void lm_mem_empty_cache(lm_ctx *ctx);
void lm_mem_reset_peak(lm_ctx *ctx);
/* Bytes allocated since the last call with reset != 0 (GC pacing). */
int64_t lm_mem_allocated_since(lm_ctx *ctx, int32_t reset);

/* devices (src/core/device.c). LM_CPU always works; LM_CUDA once the
   backend library (liblumen_cuda.so) has registered its table. Device
   memory is cached like the CPU's; its stats and cache are per device. */
lm_status lm_backend_register(lm_ctx *ctx, int32_t device, const lm_backend *be);
/* Refused while tensors hold memory of the device. */
lm_status lm_backend_unregister(lm_ctx *ctx, int32_t device);
int32_t lm_device_available(int32_t device);
const char *lm_device_name(int32_t device);
/* A contiguous copy of t on device (t itself, +1, when it is there already);
   differentiable: the gradient goes back to t's device. */
lm_status lm_to_device(lm_ctx *ctx, const lm_tensor *t, int32_t device, lm_tensor **out);
lm_status lm_device_synchronize(lm_ctx *ctx, int32_t device);
void lm_device_mem_stats(lm_ctx *ctx, int32_t device, lm_mem_stats *out);
lm_status lm_device_empty_cache(lm_ctx *ctx, int32_t device);
void lm_device_reset_peak(lm_ctx *ctx, int32_t device);
/* What the device itself reports as free and in total, in bytes. */
lm_status lm_device_mem_info(lm_ctx *ctx, int32_t device, int64_t *free_bytes, int64_t *total_bytes);
/* Pinned (page-locked) host memory, allocated by the LM_CUDA backend, so
   that a copy to the device goes straight to the DMA engine and overlaps
   with device work. Without a backend that can pin, these give ordinary
   CPU tensors (lm_is_pinned 0), not an error. lm_pin_memory: a contiguous
   pinned copy of the CPU tensor t (cut from the graph), or t itself (+1)
   when it is pinned already or nothing can pin. Views of a pinned tensor
   are pinned. lm_to_device from pinned memory returns before the device
   has read it (as torch's non_blocking): do not write the tensor until
   lm_device_synchronize. */
lm_status lm_empty_pinned(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
lm_status lm_pin_memory(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
int32_t lm_is_pinned(const lm_tensor *t);
/* The pinned memory cache's stats (as lm_device_mem_stats). */
void lm_pinned_mem_stats(lm_mem_stats *out);

/* The CUDA backend library (liblumen_cuda.so, src/cuda/), loaded at run time
   by lua/lumen/device.lua; liblumen does not define these. */
/* The number of CUDA devices (0 or more), or -1 with the reason in msg. */
int32_t lm_cuda_device_count(char *msg, int32_t msg_len);
/* "NAME, N MiB, sm_XY" of device i into buf; 0, or -1 with the reason. */
int32_t lm_cuda_device_describe(int32_t i, char *buf, int32_t buf_len);
/* CUDA versions as 1000 * major + 10 * minor (0 when unknown). */
void lm_cuda_versions(int32_t *runtime, int32_t *driver, int32_t *built_with);
const lm_backend *lm_cuda_backend(void);

/* dtypes */
int32_t lm_dtype_size(int32_t dtype);
const char *lm_dtype_name(int32_t dtype);
int32_t lm_dtype_promote(int32_t a, int32_t b);

/* tensor handles */
void lm_tensor_retain(lm_tensor *t);
void lm_tensor_release(lm_tensor *t);
void lm_tensor_get_info(const lm_tensor *t, lm_tensor_info *out);
int32_t lm_tensor_same_storage(const lm_tensor *a, const lm_tensor *b);

/* creation */
lm_status lm_empty(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
/* Wraps memory the caller owns and keeps alive; stride NULL means contiguous. */
lm_status lm_from_ptr(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, const int64_t *stride, void *data, lm_tensor **out);
lm_status lm_fill(lm_ctx *ctx, lm_tensor *t, double value);
lm_status lm_arange(lm_ctx *ctx, double start, double step, int64_t n, int32_t dtype, lm_tensor **out);
lm_status lm_linspace(lm_ctx *ctx, double start, double stop, int64_t n, int32_t dtype, lm_tensor **out);
lm_status lm_eye(lm_ctx *ctx, int64_t n, int64_t m, int32_t dtype, lm_tensor **out);
/* The same made directly on device (LM_CPU or one with a backend). */
lm_status lm_empty_on(lm_ctx *ctx, int32_t device, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
lm_status lm_arange_on(lm_ctx *ctx, int32_t device, double start, double step, int64_t n, int32_t dtype, lm_tensor **out);
lm_status lm_linspace_on(lm_ctx *ctx, int32_t device, double start, double stop, int64_t n, int32_t dtype, lm_tensor **out);
lm_status lm_eye_on(lm_ctx *ctx, int32_t device, int64_t n, int64_t m, int32_t dtype, lm_tensor **out);

/* random numbers: Philox 4x32-10, a counter-based generator; element i of a
   draw uses counter (offset + i), so results do not depend on threads. */
void lm_seed(lm_ctx *ctx, uint64_t seed);
void lm_rng_get_state(const lm_ctx *ctx, uint64_t *seed, uint64_t *offset);
void lm_rng_set_state(lm_ctx *ctx, uint64_t seed, uint64_t offset);
lm_status lm_uniform_(lm_ctx *ctx, lm_tensor *t, double lo, double hi);
lm_status lm_normal_(lm_ctx *ctx, lm_tensor *t, double mean, double std);
lm_status lm_bernoulli_(lm_ctx *ctx, lm_tensor *t, double p);
lm_status lm_bernoulli(lm_ctx *ctx, const lm_tensor *probs, lm_tensor **out);
lm_status lm_randint_(lm_ctx *ctx, lm_tensor *t, int64_t lo, int64_t hi);
lm_status lm_randperm(lm_ctx *ctx, int64_t n, int32_t dtype, lm_tensor **out);
/* The same permutation made on device (drawn on the host, then copied). */
lm_status lm_randperm_on(lm_ctx *ctx, int32_t device, int64_t n, int32_t dtype, lm_tensor **out);

/* views (share storage) and copies */
lm_status lm_as_strided(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, const int64_t *stride, int64_t offset, lm_tensor **out);
lm_status lm_view(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out);
lm_status lm_reshape(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out);
lm_status lm_slice(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int64_t start, int64_t stop, int64_t step, lm_tensor **out);
lm_status lm_select(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int64_t index, lm_tensor **out);
/* outs (t->shape[dim] slots) receives every slice along dim */
lm_status lm_unbind(lm_ctx *ctx, const lm_tensor *t, int32_t dim, lm_tensor **outs);
lm_status lm_transpose(lm_ctx *ctx, const lm_tensor *t, int32_t dim0, int32_t dim1, lm_tensor **out);
lm_status lm_permute(lm_ctx *ctx, const lm_tensor *t, const int32_t *perm, lm_tensor **out);
lm_status lm_expand(lm_ctx *ctx, const lm_tensor *t, int32_t ndim, const int64_t *shape, lm_tensor **out);
lm_status lm_squeeze(lm_ctx *ctx, const lm_tensor *t, int32_t all, int32_t dim, lm_tensor **out);
lm_status lm_unsqueeze(lm_ctx *ctx, const lm_tensor *t, int32_t dim, lm_tensor **out);
lm_status lm_contiguous(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
lm_status lm_clone(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
lm_status lm_to_dtype(lm_ctx *ctx, const lm_tensor *t, int32_t dtype, lm_tensor **out);
/* dst = src, broadcasting src to dst's shape and converting its dtype. */
lm_status lm_copy_(lm_ctx *ctx, lm_tensor *dst, const lm_tensor *src);

/* elementwise, with broadcasting */
lm_status lm_unary(lm_ctx *ctx, int32_t op, const lm_tensor *x, lm_tensor *dst, lm_tensor **out);
lm_status lm_binary(lm_ctx *ctx, int32_t op, const lm_tensor *a, const lm_tensor *b, lm_tensor *dst, lm_tensor **out);
/* a op s, or s op a when scalar_first != 0 */
lm_status lm_binary_scalar(lm_ctx *ctx, int32_t op, const lm_tensor *a, double s, int32_t scalar_first, lm_tensor *dst, lm_tensor **out);
/* lo = -inf or hi = +inf leaves that side open */
lm_status lm_clamp(lm_ctx *ctx, const lm_tensor *x, double lo, double hi, lm_tensor *dst, lm_tensor **out);
lm_status lm_where(lm_ctx *ctx, const lm_tensor *cond, const lm_tensor *a, const lm_tensor *b, lm_tensor **out);

/* reductions: ndims == 0 reduces over every dimension. param is the
   correction for VAR/STD (1 = unbiased) and p for NORM. indices (may be
   NULL) receives i64 positions for MAX/MIN over one dimension. */
lm_status lm_reduce(lm_ctx *ctx, int32_t op, const lm_tensor *x, int32_t ndims, const int32_t *dims, int32_t keepdim, double param, lm_tensor **values, lm_tensor **indices);
lm_status lm_cumsum(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out);

/* linear algebra on BLAS (f32, f64) */
lm_status lm_matmul(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, lm_tensor **out);
/* beta * c + alpha * (a @ b) for 2-D a, b; c broadcasts to the result */
lm_status lm_addmm(lm_ctx *ctx, const lm_tensor *c, const lm_tensor *a, const lm_tensor *b, double beta, double alpha, lm_tensor **out);

/* joining, reordering, padding */
lm_status lm_cat(lm_ctx *ctx, int32_t n, lm_tensor *const *ts, int32_t dim, lm_tensor **out);
lm_status lm_flip(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int32_t *dims, lm_tensor **out);
/* ndims == 0 rolls the flattened tensor by shifts[0] */
lm_status lm_roll(lm_ctx *ctx, const lm_tensor *t, int32_t ndims, const int64_t *shifts, const int32_t *dims, lm_tensor **out);
/* pad holds (before, after) pairs starting from the last dimension */
lm_status lm_pad(lm_ctx *ctx, const lm_tensor *t, int32_t npairs, const int64_t *pad, int32_t mode, double value, lm_tensor **out);

/* indexing; index tensors are i64 (i32 accepted) */
lm_status lm_gather(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out);
lm_status lm_scatter(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, const lm_tensor *src, int32_t mode, lm_tensor *dst, lm_tensor **out);
lm_status lm_index_select(lm_ctx *ctx, const lm_tensor *t, int32_t dim, const lm_tensor *index, lm_tensor **out);
lm_status lm_masked_select(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, lm_tensor **out);
lm_status lm_masked_fill(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *mask, double value, lm_tensor *dst, lm_tensor **out);
lm_status lm_nonzero(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
lm_status lm_sort(lm_ctx *ctx, const lm_tensor *t, int32_t dim, int32_t descending, lm_tensor **values, lm_tensor **indices);
lm_status lm_topk(lm_ctx *ctx, const lm_tensor *t, int64_t k, int32_t dim, int32_t largest, lm_tensor **values, lm_tensor **indices);
/* over the flattened tensor, sorted ascending; inverse and counts may be NULL */
lm_status lm_unique(lm_ctx *ctx, const lm_tensor *t, lm_tensor **values, lm_tensor **inverse, lm_tensor **counts);

/* autograd: define-by-run reverse mode. Ops record a node on their outputs
   when grad mode is on and an input requires grad; backward walks the nodes
   from a tensor and accumulates into the .grad of leaves. */
void lm_set_grad_enabled(lm_ctx *ctx, int32_t enabled);
int32_t lm_grad_enabled(const lm_ctx *ctx);
/* Only leaves (tensors no op made) of a float dtype. */
lm_status lm_tensor_set_requires_grad(lm_ctx *ctx, lm_tensor *t, int32_t flag);
int32_t lm_tensor_requires_grad(const lm_tensor *t);
int32_t lm_tensor_is_leaf(const lm_tensor *t);
/* The op that made t ("" for a leaf). */
const char *lm_tensor_grad_fn_name(const lm_tensor *t);
/* t's accumulated gradient (+1), or NULL. */
lm_tensor *lm_tensor_grad(const lm_tensor *t);
/* Replaces t's gradient (NULL clears it); g must match t's shape and dtype. */
lm_status lm_tensor_set_grad(lm_ctx *ctx, lm_tensor *t, lm_tensor *g);
/* A view of t's memory cut from the graph. */
lm_status lm_detach(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
/* Backward from t with gradient grad (NULL: ones, only for one element).
   retain_graph keeps the saved tensors for another backward. */
lm_status lm_backward(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *grad, int32_t retain_graph);
/* The same in steps, for ops whose backward is written in Lua: step returns
   with *custom_id > 0 when such an op's turn comes; the caller reads its
   output gradients, supplies its input gradients and steps again, until
   *custom_id == 0. end frees the walk (after an error too). */
typedef struct lm_backward_walk lm_backward_walk;
lm_status lm_backward_begin(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *grad, int32_t retain_graph, lm_backward_walk **out);
lm_status lm_backward_step(lm_ctx *ctx, lm_backward_walk *w, int32_t *custom_id);
/* Gradient of output i of the waiting op (+1; zeros if none arrived). */
lm_status lm_backward_grad_out(lm_ctx *ctx, lm_backward_walk *w, int32_t i, lm_tensor **out);
/* Gradient for input i of the waiting op; g may be NULL (none). */
lm_status lm_backward_supply(lm_ctx *ctx, lm_backward_walk *w, int32_t i, const lm_tensor *g);
void lm_backward_end(lm_ctx *ctx, lm_backward_walk *w);
/* Attaches a Lua-defined op (id > 0) to outputs computed from inputs. */
lm_status lm_custom_op(lm_ctx *ctx, int32_t id, int32_t n_in, lm_tensor *const *in, int32_t n_out, lm_tensor *const *out);
/* Ids of custom ops whose nodes were freed since the last call (up to max). */
int32_t lm_custom_freed(lm_ctx *ctx, int32_t *ids, int32_t max);

/* mixed precision (src/ops/amp.c): while autocast is on, f32 convolutions
   (all of them, transposed too, forward and backward) and matrix products
   (matmul, addmm and what is built on them) read their operands rounded
   to bf16 or f16 (to nearest, ties to even) and accumulate in f32; results
   stay f32 and other dtypes are untouched. An op records the mode in its
   autograd node, and its backward runs under the same mode. */
enum { LM_AUTOCAST_OFF = 0, LM_AUTOCAST_BF16 = 1, LM_AUTOCAST_F16 = 2 };
lm_status lm_set_autocast(lm_ctx *ctx, int32_t mode);
int32_t lm_autocast(const lm_ctx *ctx);
/* t (f32, on the CPU) with its values rounded to mode and widened back to
   f32: what autocast reads (not differentiable). */
lm_status lm_lowp_round(lm_ctx *ctx, const lm_tensor *t, int32_t mode, lm_tensor **out);

/* neural-network ops: each family's declarations under its own heading */
/* conv (src/ops/conv.c) */
/* Convolution over nsp = 1, 2 or 3 spatial dims (f32, f64): x is
   N x Cin x spatial (or unbatched Cin x spatial), w is Cout x Cin/groups x
   kernel, b is NULL or Cout values. stride, dilation and the padding before
   (pad_lo) and after (pad_hi) hold nsp values each. */
lm_status lm_conv(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *w, const lm_tensor *b, int32_t nsp, const int64_t *stride, const int64_t *pad_lo, const int64_t *pad_hi, const int64_t *dilation, int64_t groups, lm_tensor **out);
/* Transposed convolution (the gradient of lm_conv with respect to its
   input): w is Cin x Cout/groups x kernel; output_padding adds positions at
   the far end of each spatial dim. */
lm_status lm_conv_transpose(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *w, const lm_tensor *b, int32_t nsp, const int64_t *stride, const int64_t *padding, const int64_t *output_padding, const int64_t *dilation, int64_t groups, lm_tensor **out);

/* pool (src/ops/pool.c)
   x is (N x) C x spatial with nd = 1, 2 or 3 spatial dims; kernel, stride,
   padding, dilation and sizes hold nd values (stride NULL: the kernel;
   padding NULL: 0; dilation NULL: 1). Indices are i64 flat positions within
   each input plane (as PyTorch's); indices may be NULL. */
lm_status lm_max_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *kernel, const int64_t *stride, const int64_t *padding, const int64_t *dilation, int32_t ceil_mode, lm_tensor **values, lm_tensor **indices);
/* divisor_override > 0 divides every window by it instead */
lm_status lm_avg_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *kernel, const int64_t *stride, const int64_t *padding, int32_t ceil_mode, int32_t count_include_pad, int64_t divisor_override, lm_tensor **out);
lm_status lm_adaptive_avg_pool(lm_ctx *ctx, const lm_tensor *x, int32_t nd, const int64_t *output_size, lm_tensor **out);
/* Places x[i] at indices[i] of an output plane of output_size, zeros elsewhere. */
lm_status lm_max_unpool(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *indices, int32_t nd, const int64_t *output_size, lm_tensor **out);

/* resample (src/ops/resample.c) */
enum { LM_INTERP_NEAREST = 0, LM_INTERP_LINEAR = 1 };
enum { LM_GRID_PAD_ZEROS = 0, LM_GRID_PAD_BORDER = 1 };
/* x is N x C x spatial (1 to 3 spatial dims); size holds the output's
   spatial sizes. scale (may be NULL; entries <= 0 mean none) holds the
   scale factors the caller gave: PyTorch maps output positions back with
   them rather than with in/out (not with align_corners). Linear mode is
   linear, bilinear or trilinear by the number of spatial dims. */
lm_status lm_upsample(lm_ctx *ctx, const lm_tensor *x, const int64_t *size, const double *scale, int32_t mode, int32_t align_corners, lm_tensor **out);
/* x N x C x H x W with grid N x H' x W' x 2, or x N x C x D x H x W with
   grid N x D' x H' x W' x 3; grid values in [-1, 1] as (x, y[, z]). */
lm_status lm_grid_sample(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *grid, int32_t mode, int32_t padding_mode, int32_t align_corners, lm_tensor **out);
/* theta N x 2 x 3 with size (N, C, H, W), or N x 3 x 4 with size (N, C, D, H, W). */
lm_status lm_affine_grid(lm_ctx *ctx, const lm_tensor *theta, int32_t size_len, const int64_t *size, int32_t align_corners, lm_tensor **out);

/* imgproc (src/ops/imgproc.c): image resampling loops, on contiguous f64
   3-D volumes (scipy.ndimage.map_coordinates' conventions). */
enum { LM_IMG_CONSTANT = 0, LM_IMG_NEAREST = 1 };
/* In place: the cubic B-spline coefficients of x (mirror boundaries). */
lm_status lm_spline_prefilter3d(lm_ctx *ctx, lm_tensor *x);
/* out (f64, size[0] x size[1] x size[2]) samples x at m * (a, b, c, 1), m
   3 x 4 row-major from output to input voxel indices; order 0, 1 or 3 (x
   then holds spline coefficients); LM_IMG_CONSTANT: cval outside
   [0, n - 1], LM_IMG_NEAREST: clamp to the volume. */
lm_status lm_map_affine3d(lm_ctx *ctx, const lm_tensor *x, const double *m, int32_t order, int32_t mode, double cval, const int64_t *size, lm_tensor **out);

/* augment (src/ops/augment.c): data-pipeline loops on contiguous
   "channels x spatial" tensors with nsp = 2 or 3 spatial dims. */
/* out (C x size) = x at m * (p + disp(p), 1); m nsp x (nsp + 1) row-major
   from output to input voxel indices, disp NULL or f32 nsp x size. Order 1
   (f32/f64): linear, taps outside read cval; order 0 (any dtype): nearest. */
lm_status lm_warp(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const double *m, const lm_tensor *disp, int32_t order, double cval, const int64_t *size, lm_tensor **out);
/* Gaussian smoothing along each spatial axis (sigma in voxels, 0 skips an
   axis), truncated at 4 sigma, mirror-reflected edges (scipy.ndimage's). */
lm_status lm_gaussian_filter(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const double *sigma, lm_tensor **out);
/* A smooth field of the given spatial size from a coarse control grid
   (C x g...), blended by cubic B-splines; the grid reaches one control
   point past each end. */
lm_status lm_bspline_upsample(lm_ctx *ctx, const lm_tensor *x, int32_t nsp, const int64_t *size, lm_tensor **out);
/* For each label value c (0 .. max), up to limit flat voxel indices holding
   it, spread evenly; class c's are locations[offsets[c] .. offsets[c+1]). */
lm_status lm_class_locations(lm_ctx *ctx, const lm_tensor *label, int64_t limit, uint64_t seed, lm_tensor **locations, lm_tensor **offsets);

/* loader (src/core/loader.c): worker threads, each with its own LuaJIT
   state running script(loader, index), which returns produce(job); batch
   job goes to the consumer through lm_loader_put, in job order. */
typedef struct lm_loader lm_loader;
lm_status lm_loader_new(lm_ctx *ctx, const char *script, int32_t workers, int32_t prefetch, lm_loader **out);
/* A worker's next job number, or -1 when the loader stops. */
int64_t lm_loader_next_job(lm_loader *loader);
/* Hands over a batch (n tensors, each retained) for job. */
void lm_loader_put(lm_loader *loader, int64_t job, int32_t n, lm_tensor *const *tensors);
/* The next batch in job order (+1 references); LM_E_WORKER with the
   worker's message when making it failed. */
lm_status lm_loader_take(lm_ctx *ctx, lm_loader *loader, int32_t max, lm_tensor **out, int32_t *n);
/* Stops the workers (each finishes its current job) and frees all. */
void lm_loader_free(lm_loader *loader);
/* Threads for this context's own loops only (not BLAS, not other contexts). */
void lm_ctx_set_loop_threads(lm_ctx *ctx, int32_t n);
/* window (src/ops/window.c): the loops of sliding-window inference
   (lua/lumen/inference.lua). out is K x S (S: 1 to 3 spatial sizes), f32 or
   f64. lm_window_accumulate adds scale * w(r) * pred[c, r] at out[c, start + r]
   for one window's prediction pred (K x R, out's dtype), where w is the
   product of per-axis weights (weights: R[0] + R[1] + ... doubles, axis
   after axis); bit a of flip says pred is mirrored along spatial axis a.
   start may be negative or run past the end: positions outside out are
   skipped. lm_window_normalize divides out[c, x] by the product of per-axis
   sums (sums: S[0] + S[1] + ... doubles, all > 0). */
lm_status lm_window_accumulate(lm_ctx *ctx, lm_tensor *out, const lm_tensor *pred, const int64_t *start, const double *weights, int32_t flip, double scale);
lm_status lm_window_normalize(lm_ctx *ctx, lm_tensor *out, const double *sums);

/* norm (src/ops/norm.c): statistics in double; weight and bias may be
   NULL (1 and 0). Batch and group norm take x as N x C x * with per-channel
   [C] weight, bias and running statistics of x's dtype. */
/* training != 0: normalise with the batch's mean and biased variance, and
   update running_mean / running_var (either may be NULL) in place as
   r = (1 - momentum) r + momentum s, with the unbiased variance.
   training == 0: normalise with the running statistics (both needed). */
lm_status lm_batch_norm(lm_ctx *ctx, const lm_tensor *x, lm_tensor *running_mean, lm_tensor *running_var, const lm_tensor *weight, const lm_tensor *bias, int32_t training, double momentum, double eps, lm_tensor **out);
/* Statistics per sample and group of C / groups channels (groups == C is
   instance norm). */
lm_status lm_group_norm(lm_ctx *ctx, const lm_tensor *x, int64_t groups, const lm_tensor *weight, const lm_tensor *bias, double eps, lm_tensor **out);
/* Statistics over the last nshape dims of x, which must equal shape;
   weight and bias have that shape. */
lm_status lm_layer_norm(lm_ctx *ctx, const lm_tensor *x, int32_t nshape, const int64_t *shape, const lm_tensor *weight, const lm_tensor *bias, double eps, lm_tensor **out);

/* activation (src/ops/activation.c): f32 and f64, computed in double */
lm_status lm_leaky_relu(lm_ctx *ctx, const lm_tensor *x, double negative_slope, lm_tensor **out);
/* x > 0 ? x : alpha (exp(x) - 1) */
lm_status lm_elu(lm_ctx *ctx, const lm_tensor *x, double alpha, lm_tensor **out);
/* approximate: 0 exact, x Phi(x) with erf; 1 the tanh approximation */
lm_status lm_gelu(lm_ctx *ctx, const lm_tensor *x, int32_t approximate, lm_tensor **out);
/* x > 0 ? x : w x; weight holds one value, or one per channel (dim 1) */
lm_status lm_prelu(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *weight, lm_tensor **out);
/* along dim, with the maximum subtracted first */
lm_status lm_softmax(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out);
lm_status lm_log_softmax(lm_ctx *ctx, const lm_tensor *x, int32_t dim, lm_tensor **out);

/* loss (src/ops/loss.c) */
enum { LM_REDUCTION_NONE = 0, LM_REDUCTION_MEAN = 1, LM_REDUCTION_SUM = 2 };
/* logits C, N x C or N x C x d1 x ...; target: class indices (i64, i32 or
   u8) of the logits' shape without dimension 1, or probabilities of the
   logits' shape and dtype. weight (C) may be NULL. */
lm_status lm_cross_entropy(lm_ctx *ctx, const lm_tensor *logits, const lm_tensor *target, const lm_tensor *weight, int64_t ignore_index, double label_smoothing, int32_t reduction, lm_tensor **out);
/* input: log-probabilities laid out as cross_entropy's logits */
lm_status lm_nll_loss(lm_ctx *ctx, const lm_tensor *input, const lm_tensor *target, const lm_tensor *weight, int64_t ignore_index, int32_t reduction, lm_tensor **out);
/* target of x's shape; weight and pos_weight (NULL for none) broadcast to it */
lm_status lm_bce_with_logits(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *target, const lm_tensor *weight, const lm_tensor *pos_weight, int32_t reduction, lm_tensor **out);

/* rnn (src/ops/rnn.c) */
/* One LSTM step after its GEMMs: gates_x, gates_h are batch x 4H (gate order
   i, f, g, o), c_prev batch x H; gives h and c (batch x H). */
lm_status lm_lstm_cell(lm_ctx *ctx, const lm_tensor *gates_x, const lm_tensor *gates_h, const lm_tensor *c_prev, lm_tensor **h, lm_tensor **c);
/* One GRU step after its GEMMs: gates_x, gates_h are batch x 3H (r, z, n;
   gates_h includes b_hh), h_prev batch x H; gives h (batch x H). */
lm_status lm_gru_cell(lm_ctx *ctx, const lm_tensor *gates_x, const lm_tensor *gates_h, const lm_tensor *h_prev, lm_tensor **h);

/* optim (src/ops/optim.c): fused in-place updates of a list of n
   parameters. grads[i] == NULL skips parameter i; every state tensor has
   its parameter's shape and dtype (f32 or f64). steps[i] counts the update
   being made (1 on a parameter's first): SGD starts its momentum buffer as
   the gradient then, Adam's bias correction uses it. Arithmetic follows
   torch.optim. Lists a setting does not use may be NULL. */
typedef struct lm_optim_hparams {
  double lr;
  double momentum;     /* SGD, RMSprop */
  double dampening;    /* SGD */
  double weight_decay; /* added to the gradient (AdamW: decoupled) */
  double beta1, beta2; /* Adam */
  double eps;          /* Adam, RMSprop */
  double alpha;        /* RMSprop: smoothing of the squared gradient */
  int32_t nesterov;    /* SGD */
  int32_t amsgrad;     /* Adam */
  int32_t decoupled;   /* Adam: AdamW's weight decay */
  int32_t centered;    /* RMSprop */
  int32_t maximize;    /* ascend instead of descend */
} lm_optim_hparams;
lm_status lm_sgd_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads, lm_tensor *const *momentum_bufs, const int64_t *steps, const lm_optim_hparams *h);
lm_status lm_adam_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads, lm_tensor *const *exp_avgs, lm_tensor *const *exp_avg_sqs, lm_tensor *const *max_exp_avg_sqs, const int64_t *steps, const lm_optim_hparams *h);
lm_status lm_rmsprop_step(lm_ctx *ctx, int32_t n, lm_tensor *const *params, lm_tensor *const *grads, lm_tensor *const *square_avgs, lm_tensor *const *grad_avgs, lm_tensor *const *momentum_bufs, const lm_optim_hparams *h);
/* Scales the gradients in place so that their global norm of order
   norm_type (> 0, or inf) is at most max_norm, as
   torch.nn.utils.clip_grad_norm_; the norm before clipping, computed in
   double, goes to *total_norm. NULL entries are skipped. */
lm_status lm_clip_grad_norm(lm_ctx *ctx, int32_t n, lm_tensor *const *grads, double max_norm, double norm_type, int32_t error_if_nonfinite, double *total_norm);

/* morph (src/ops/morph.c): binary masks, any integer or bool dtype
   (nonzero = in), 1 to 3 dims, any strides. spacing: one value (mm) per
   dim, or NULL for 1. Results have the mask's shape. */
/* f64: the distance (mm) of each voxel to the nearest voxel outside the
   mask, 0 outside (scipy.ndimage.distance_transform_edt with sampling);
   infinity everywhere when nothing is outside. */
lm_status lm_distance_transform(lm_ctx *ctx, const lm_tensor *mask, const double *spacing, lm_tensor **out);
/* u8: the erosion by the ball |o|^2 <= radius^2 (voxels); outside the
   volume reads as border_value (0: scipy's default, 1: skimage's). */
lm_status lm_binary_erode(lm_ctx *ctx, const lm_tensor *mask, int64_t radius, int32_t border_value, lm_tensor **out);
/* u8: the dilation by the same ball. */
lm_status lm_binary_dilate(lm_ctx *ctx, const lm_tensor *mask, int64_t radius, lm_tensor **out);
/* Connected components: labels (i32) 1..n in order of each component's
   first voxel in C order (scipy.ndimage.label's), 0 outside; sizes (i64,
   n + 1) the voxel counts per label, sizes[0] the background's.
   connectivity: neighbours counted (6, 18, 26 in 3-D; 4, 8 in 2-D; 2 in 1-D). */
lm_status lm_label_components(lm_ctx *ctx, const lm_tensor *mask, int32_t connectivity, lm_tensor **labels, lm_tensor **sizes);
/* u8: keep[label] != 0 for each voxel of labels (i32, i64 or u8, values 0
   to n_keep - 1). */
lm_status lm_label_select(lm_ctx *ctx, const lm_tensor *labels, const uint8_t *keep, int64_t n_keep, lm_tensor **out);
/* u8: the mask with every background component (face connectivity) that
   touches no border made foreground (scipy.ndimage.binary_fill_holes). */
lm_status lm_fill_holes(lm_ctx *ctx, const lm_tensor *mask, lm_tensor **out);
/* Otsu's threshold over a histogram of bins equal bins over [min, max] of
   the image's values (those where mask is nonzero when mask is given), as
   skimage.filters.threshold_otsu for float images. */
lm_status lm_otsu(lm_ctx *ctx, const lm_tensor *image, const lm_tensor *mask, int32_t bins, double *threshold);

/* metrics (src/ops/metrics.c): pred and truth are masks as for morph, of
   equal shapes. */
/* counts: true positives, false positives, false negatives, true negatives. */
lm_status lm_confusion_counts(lm_ctx *ctx, const lm_tensor *pred, const lm_tensor *truth, int64_t *counts);
/* Surface distances in mm (medpy.metric.binary's definitions): a surface
   voxel is in the mask with a face neighbour outside it or outside the
   volume. result[0]: the percentile (0..100, numpy's linear rule) of the
   union of both directed sets (medpy's hd95 at 95); [1] the mean of the two
   directed means (medpy's assd); [2], [3] the directed means pred -> truth
   and truth -> pred; [4], [5] the directed percentiles (MONAI's
   compute_hausdorff_distance is the larger). All 0 when both masks are
   empty, infinity when one is. */
lm_status lm_surface_distance(lm_ctx *ctx, const lm_tensor *pred, const lm_tensor *truth, const double *spacing, double percentile, double *result);
/* i64 (n_labels): how many voxels of each label (labels: i32, i64 or u8,
   values 0 to n_labels - 1) lie in mask. */
lm_status lm_label_overlap(lm_ctx *ctx, const lm_tensor *labels, const lm_tensor *mask, int64_t n_labels, lm_tensor **out);

/* files: exact reads and atomic writes (temp file, fsync, rename) */
lm_status lm_file_size(lm_ctx *ctx, const char *path, int64_t *size);
lm_status lm_file_read(lm_ctx *ctx, const char *path, int64_t offset, int64_t nbytes, void *dst);
lm_status lm_file_write_atomic(lm_ctx *ctx, const char *path, int32_t nparts, const void *const *parts, const int64_t *sizes);
void lm_byteswap(void *data, int64_t count, int32_t width);
/* lm_is_dir: 1 when path is a directory. lm_dir_list: the names in a
   directory, NUL-terminated one after another, into buf (cap bytes);
   *needed is the size of the whole list (retry when it exceeds cap). */
int32_t lm_is_dir(const char *path);
lm_status lm_dir_list(lm_ctx *ctx, const char *path, char *buf, int64_t cap, int64_t *needed);
/* gzip and zlib (src/io/compress.c): lm_gzip_read inflates a .gz file into
   a u8 tensor, refusing more than max_bytes; lm_inflate inflates a raw zlib
   stream that must hold exactly expected_size bytes; lm_gzip_write_atomic
   writes the parts gzip-compressed (level -1: zlib's default, or 0..9).
   lm_gzip_read_head inflates only the first nbytes (fewer when the data
   is shorter), to read a header before trusting its sizes. */
lm_status lm_gzip_read(lm_ctx *ctx, const char *path, int64_t max_bytes, lm_tensor **out);
lm_status lm_gzip_read_head(lm_ctx *ctx, const char *path, int64_t nbytes, lm_tensor **out);
lm_status lm_inflate(lm_ctx *ctx, const lm_tensor *src, int64_t expected_size, lm_tensor **out);
/* lm_inflate_raw: a raw deflate stream (no zlib header, as DICOM's Deflated
   Explicit VR Little Endian) of at most max_bytes, whatever its size. */
lm_status lm_inflate_raw(lm_ctx *ctx, const lm_tensor *src, int64_t max_bytes, lm_tensor **out);
lm_status lm_gzip_write_atomic(lm_ctx *ctx, const char *path, int32_t nparts, const void *const *parts, const int64_t *sizes, int32_t level);
/* PNG (src/io/png.c): read gives H x W (grey) or H x W x C (grey+alpha,
   RGB, RGBA; palettes become RGB, or RGBA with transparency), u8 for 8-bit
   files (1, 2, 4 bits are scaled up), i32 for 16-bit ones. write takes
   H x W or H x W x {1..4}: u8 as 8-bit, i32/i64 in 0..65535 as 16-bit;
   it is atomic (temp file, fsync, rename). */
lm_status lm_png_read(lm_ctx *ctx, const char *path, lm_tensor **out);
lm_status lm_png_write(lm_ctx *ctx, const char *path, const lm_tensor *t);

/* plugins */
lm_status lm_plugin_load(lm_ctx *ctx, const char *path, lm_plugin_handle **out);
const char *lm_plugin_name(const lm_plugin_handle *p);
const char *lm_plugin_version(const lm_plugin_handle *p);
int32_t lm_plugin_op_count(const lm_plugin_handle *p);
int32_t lm_plugin_op_id(const lm_plugin_handle *p, int32_t i);
const char *lm_plugin_op_name(const lm_plugin_handle *p, int32_t i); /* "" when out of range */
lm_status lm_op_lookup(lm_ctx *ctx, const char *name, int32_t *op, int32_t *n_in, int32_t *n_out);
lm_status lm_op_forward(lm_ctx *ctx, int32_t op, int32_t n_in, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out);
lm_status lm_op_backward(lm_ctx *ctx, int32_t op, int32_t n_in, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out, const double *params, int32_t n_params, lm_tensor **grad_in);
]==]
