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
 * The table is append-only and carries its own size: later entries are
 * read only when size says the library has them, and a NULL entry means
 * the backend lacks that function (the ops needing it then refuse the
 * device with a message).
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

enum { LM_BACKEND_ABI = 1, LM_BACKEND_MAX_OPERANDS = 5 };

/* A host value standing for an operand of elementwise (an f64 or an i64,
   so that every integer keeps its exact value). */
typedef union lm_scalar {
  double f;
  int64_t i;
} lm_scalar;

/* Pointwise formulas of the backward passes of reductions
   (src/ops/reduce.c), elementwise op codes past the core op set: each maps
   (x, a, b) and param p to one value, computed in double. */
enum {
  LM_PW_SCALE = 1000,    /* x * p */
  LM_PW_IS_ZERO,         /* x == 0 */
  LM_PW_ZERO_TO_ONE,     /* x == 0 ? 1 : x */
  LM_PW_DIV,             /* x / a */
  LM_PW_MUL_IF_COUNT,    /* b == p ? x * a : 0 */
  LM_PW_PROD_GRAD,       /* x == 0 ? b : a / x */
  LM_PW_IS_EXTREMUM,     /* x == a, or both NaN */
  LM_PW_IS_ABS_EXTREMUM, /* |x| == a, or x NaN */
  LM_PW_SELECT,          /* x != 0 ? a : 0 */
  LM_PW_SELECT_SIGNED,   /* b != 0 ? sgn(x) * a : 0 (sgn(NaN) is NaN) */
  LM_PW_DIV_STD,         /* a == 0 ? 0 : x / a * p */
  LM_PW_CENTERED,        /* a * (x - b) */
  LM_PW_NORM_GRAD,       /* d|x|_p / dx for gradient a and norm b (see reduce.c) */
  LM_PW_END
};

/* The kinds of draw of lm_backend.random. */
enum { LM_RNG_UNIFORM, LM_RNG_NORMAL, LM_RNG_BERNOULLI, LM_RNG_BERNOULLI_T, LM_RNG_RANDINT };

/* The updates of lm_backend.optim_step, and the positions of its
   hyperparameters hp[] (lm_optim_hparams of lumen.h as doubles; flags 0 or
   1). */
enum { LM_OPTIM_SGD, LM_OPTIM_ADAM, LM_OPTIM_RMSPROP, LM_OPTIM_SCALE };

/* The modes of lm_backend.index_along. */
enum { LM_INDEX_GATHER, LM_INDEX_SCATTER, LM_INDEX_SCATTER_ADD };
enum {
  LM_HP_LR, LM_HP_MOMENTUM, LM_HP_DAMPENING, LM_HP_WEIGHT_DECAY, LM_HP_BETA1, LM_HP_BETA2, LM_HP_EPS, LM_HP_ALPHA,
  LM_HP_NESTEROV, LM_HP_AMSGRAD, LM_HP_DECOUPLED, LM_HP_CENTERED, LM_HP_MAXIMIZE, LM_HP_COUNT
};
/* Kinds of the norm_pass entry. */
enum { LM_NORM_MOMENTS = 1, LM_NORM_GRAD_SUMS, LM_NORM_AFFINE, LM_NORM_GRAD_X };

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

  /* ---- op kernels ----
     liblumen's op code keeps the op's meaning (argument checks, shapes,
     broadcasting, result dtypes, output allocation, autograd) and hands a
     backend only raw loops over device memory, described below. Pointers
     are device addresses of element [0, ..., 0] of each operand; strides
     are in elements and may be 0 (broadcast) or negative. An entry that is
     NULL (or past size) makes the ops that need it refuse the device. */

  /* One strided N-d loop over the positions of (ndim, shape), row-major.
     Operand 0 is written, operands 1 .. nops-1 are read (nops at most
     LM_BACKEND_MAX_OPERANDS); strides[k * ndim + d] is operand k's stride
     in dim d and dtypes[k] its dtype. Each input is converted to the
     compute dtype `dtype` (f32, f64, i32, i64 or u8; bool data is read as
     u8), op is applied in that dtype, and the result converted to operand
     0's dtype (to bool as v != 0). An input whose data[k] is NULL is the
     host value scalars[k] at every position (dtypes[k] is then LM_F64,
     read from .f, or LM_I64, read from .i). op is one of
       LM_OP_NEG .. LM_OP_LOGICAL_NOT: 1 input, as src/ops/elementwise.c;
       LM_OP_ADD .. LM_OP_LOGICAL_XOR: 2 inputs (integers wrap; comparisons
         and logical ops give 0 or 1);
       LM_OP_COPY: 1 input, dtype being its own (so conversions are direct);
       LM_OP_CLAMP: inputs x, lo, hi: min(max(x, lo), hi), NaN stays;
       LM_OP_WHERE: inputs cond, a, b: a where cond != 0, else b;
       LM_PW_*: inputs x, a, b and the parameter param, in f64 (below). */
  int32_t (*elementwise)(int32_t op, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t nops,
                         void *const *data, const int64_t *strides, const int32_t *dtypes,
                         const union lm_scalar *scalars, double param);
  /* Reductions. Output o (of nout = the product of kshape[0 .. kn), in
     row-major order of the kept dims) reduces the run of rn >= 1 elements
     x[off(o) + r * rs], r = 0 .. rn-1, where off(o) is the sum over kept
     dims of o's position times kstride. x has dtype (bool read as u8); op
     is LM_OP_SUM .. LM_OP_COUNT_NONZERO with src/ops/reduce.c's meaning;
     param is the correction of VAR and STD, p of NORM. out (contiguous,
     out_dtype) receives the values, and indices (i64, NULL when not
     wanted) the position r of MAX and MIN; ARGMAX and ARGMIN write
     positions into out. Floats accumulate in double; integer sums and
     products wrap in 64 bits; an extremum is NaN when the run has one, and
     ties give the first position. */
  int32_t (*reduce)(int32_t op, int32_t dtype, const void *x, int32_t kn, const int64_t *kshape,
                    const int64_t *kstride, int64_t rn, int64_t rs, double param, int32_t out_dtype, void *out,
                    int64_t *indices);
  /* c = alpha * op(a) @ op(b) + beta * c for `batch` products of row-major
     matrices (as lm_gemm in src/core/internal.h: op(a) is m x k, op(b)
     k x n, transposed when ta / tb), product i reading a + i * stride_a,
     b + i * stride_b and writing c + i * stride_c (strides in elements);
     f32 or f64; m, n, k >= 1; c is not read when beta is 0. */
  int32_t (*gemm)(int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, double alpha,
                  const void *a, int64_t lda, int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                  double beta, void *c, int64_t ldc, int64_t stride_c, int64_t batch);

  /* ---- activations, losses, copies, indexing, creation and random numbers,
     optimizers (issue 7, the second set of kernel families) ---- */

  /* Pointwise activations over n contiguous elements of dtype (f32 or f64):
     kind LM_OP_LEAKY_RELU (param: the negative slope), LM_OP_ELU (param:
     alpha), LM_OP_GELU (param: 0 exact through erf, 1 the tanh form),
     LM_OP_PRELU (element i has the weight w[(i / inner) % c]). mode 0:
     out = f(x); mode 1: out = g f'(x); mode 2 (prelu): out = x > 0 ? 0 :
     x g, the terms of the weight's gradient. */
  int32_t (*activation)(int32_t kind, int32_t mode, int32_t dtype, int64_t n, void *out, const void *x,
                        const void *g, const void *w, int64_t c, int64_t inner, double param);
  /* Softmax (log 0) or log_softmax (log 1) along the middle dim of a
     contiguous [outer, len, inner] array of dtype (f32 or f64), as
     src/ops/activation.c (a NaN makes its slice NaN; sums in double).
     Forward: out from x. Backward: x is the forward's output y and g the
     output's gradient (contiguous); out = y (g - sum(g y)) for softmax,
     g - exp(y) sum(g) for log_softmax. */
  int32_t (*softmax)(int32_t log, int32_t backward, int32_t dtype, int64_t outer, int64_t len, int64_t inner,
                     void *out, const void *x, const void *g);
  /* cross_entropy (log_input 0) and nll_loss (log_input 1) over contiguous
     x [N, C, S] of dtype (f32 or f64) with classes at stride S, as
     src/ops/loss.c: class targets (i64, one per position p = n S + s) or,
     for cross_entropy, probability targets prob (x's layout and dtype);
     class weights weight (C f64, NULL: all 1), ignore_index ignore, label
     smoothing eps. Forward (backward 0), per position: loss[p] (dtype) its
     cost, wt[p] (f64) its weight in 'mean' (w[t], 0 when ignored, 1 with
     probability targets), bad[p] (u8) 1 when its target is out of range
     and not ignore_index, and lse[p] (dtype) the log-sum-exp of its logits
     when lse is not NULL (cross_entropy). Backward: g (dtype) the gradient
     of position p at g[p * gstride] (gstride 0: one value for all), lse as
     the forward wrote it; writes gx (x's layout) and gt (prob's layout)
     when not NULL. */
  int32_t (*class_loss)(int32_t backward, int32_t dtype, int64_t N, int64_t C, int64_t S, int32_t log_input,
                        const void *x, const int64_t *target, const void *prob, const double *weight, int64_t ignore,
                        double eps, void *loss, double *wt, uint8_t *bad, void *lse, const void *g, int64_t gstride,
                        void *gx, void *gt);
  /* binary_cross_entropy_with_logits over n contiguous elements of dtype
     (f32 or f64): x, t and pw (pos_weight expanded to x's shape, NULL: 1);
     mode 0 the loss, 1 its gradient for x, 2 for t, times scale, as
     src/ops/loss.c writes them (no exp overflows). */
  int32_t (*bce_logits)(int32_t mode, int32_t dtype, int64_t n, void *out, const void *x, const void *t,
                        const void *pw, double scale);
  /* arange and linspace (src/ops/create.c): n contiguous elements of dtype,
     element i = start + i step for i < half, stop - (n - 1 - i) step from
     half on, computed in double and converted to dtype as a copy from f64
     converts (to bool: v != 0). */
  int32_t (*sequence)(int32_t dtype, int64_t n, void *out, double start, double step, double stop, int64_t half);
  /* Philox4x32-10 draws as src/core/rng.c makes them: element i of the n
     contiguous elements of out (dtype) uses the block of counter base + i
     under key, so that a seed and offset give the CPU's numbers. kind:
     LM_RNG_UNIFORM (on [a, b); f32 or f64), LM_RNG_NORMAL (mean a, std b;
     f32 or f64), LM_RNG_BERNOULLI (1 with probability a, any dtype),
     LM_RNG_BERNOULLI_T (probability probs[i], probs contiguous of out's
     float dtype), LM_RNG_RANDINT (ilo + the 64 random bits mod irange, any
     dtype). */
  int32_t (*random)(int32_t kind, int32_t dtype, int64_t n, void *out, uint64_t key, uint64_t base, double a,
                    double b, int64_t ilo, uint64_t irange, const void *probs);
  /* One fused optimizer update of a group of nparams parameters of dtype
     (f32 or f64), in one launch, as src/ops/optim.c computes it. Parameter
     i has numel[i] contiguous elements; data[k * nparams + i] is its
     operand k (device addresses; NULL for a state the settings do not
     use); per[2 i], per[2 i + 1] are its own coefficients; all arrays are
     host memory the call does not keep. kind:
       LM_OPTIM_SGD: operands param, grad, momentum buffer; per[2 i] = 1
         when the buffer starts now (the parameter's first step);
       LM_OPTIM_ADAM: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
         per: -lr / (1 - beta1^step), sqrt(1 - beta2^step);
       LM_OPTIM_RMSPROP: param, grad, square_avg, grad_avg, momentum buffer;
       LM_OPTIM_SCALE: operand 0 (a gradient) times hp[0]. */
  int32_t (*optim_step)(int32_t kind, int32_t dtype, int32_t nparams, const int64_t *numel, void *const *data,
                        const double *per, const double *hp);
  /* gather, index_select and scatter along dim (src/ops/index.c) over the
     positions pos of (ndim, shape), the index's shape: idx (i64) is read at
     pos through istride, src through sstride, out through ostride
     (elements of dtype; strides may be 0). The indices are in range.
       LM_INDEX_GATHER: out[pos] = src[pos with pos[dim] = idx[pos]];
       LM_INDEX_SCATTER: out[pos with pos[dim] = idx[pos]] = src[pos]
         (of duplicate indices, one write lands);
       LM_INDEX_SCATTER_ADD: the same, adding (f32, f64, i32, i64; in any
         order, integers wrapping). */
  int32_t (*index_along)(int32_t mode, int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out,
                         const int64_t *ostride, const void *src, const int64_t *sstride, const int64_t *idx,
                         const int64_t *istride);
  /* cumsum (src/ops/reduce.c): along dim of (ndim, shape), out[.., r, ..]
     = x[.., 0, ..] + ... + x[.., r, ..] for dtype f32, f64 (accumulated
     in double, in order) or i64 (wrapping); strides in elements. */
  int32_t (*cumsum)(int32_t dtype, int32_t ndim, const int64_t *shape, int32_t dim, void *out, const int64_t *ostride,
                    const void *x, const int64_t *xstride);
  /* ---- layer families: convolution, pooling, normalisation, rnn cells,
     interpolation, grid_sample, cuDNN convolution ---- */

  /* Convolution's column matrix for n samples of c channels (f32 or f64).
     geom holds 18 values, each for (depth, height, width), with 1 (padding
     0) on the dims an op lacks: the image's spatial sizes, the column
     grid's, the kernel's, stride, padding before, dilation. img is
     n x c x image (contiguous), cols n x (c * K) x grid with K the kernel's
     size: row (ch, kd, kh, kw) holds at grid position (od, oh, ow) the image
     value at (od * stride - pad + kd * dil, ...), 0 where that lies outside.
     to_cols != 0: cols = im2col(img). to_cols == 0: img = col2im(cols), each
     image position written with the sum of the column entries that read it
     (0 when none), in the order (ch, kd, kh, kw). */
  int32_t (*im2col)(int32_t dtype, int32_t to_cols, int64_t n, int64_t c, const int64_t *geom, void *img,
                    void *cols);
  /* Pooling over `planes` contiguous planes (f32 or f64), each seen in 3-D
     (a 1-D or 2-D pool has unit dims in front). geom holds 18 values, each
     for (depth, height, width): the input's sizes, the output's, kernel,
     stride, padding, dilation. Along one dim, output o's window has the taps
     o * stride - pad + t * dil, t = 0 .. kernel-1, that lie inside the
     input; for ADAPTIVE_AVG_POOL it is [floor(o * in / out),
     ceil((o + 1) * in / out)) instead (kernel .. dilation unused). op:
       LM_OP_MAX_POOL: forward: dst = the window's largest value (NaN wins,
         a later NaN over an earlier one; ties keep the first tap in (d, h,
         w) order; a window of -inf gives its first tap), indices (i64, NULL
         when not wanted) its flat position in the plane. backward: src is
         the output's gradient, indices the forward's; dst (input-sized)
         gets at each position the sum, over the outputs whose window holds
         it as a tap and whose index names it, of their gradients.
       LM_OP_AVG_POOL, LM_OP_ADAPTIVE_AVG_POOL: forward: dst = the sum over
         the window / the divisor: `divisor` when > 0, else the product over
         dims of the window's length (count_pad: the window clipped to the
         padded input, [start, min(end, in + pad)); else only the taps
         inside). backward: dst (input-sized) = the sum over the outputs
         whose window holds the position of gradient / divisor.
     Sums are in double, over outputs in increasing order. */
  int32_t (*pool)(int32_t op, int32_t dtype, int32_t backward, int64_t planes, const int64_t *geom,
                  int32_t count_pad, double divisor, const void *src, void *dst, int64_t *indices);
  /* One pass of the normalisations (src/ops/norm.c) over groups of
     elements (f32 or f64 data; everything else f64). layout holds 5 values:
     ngroups, group_stride, nseg, seg_len, seg_stride: group q's elements,
     position j = 0 .. nseg * seg_len - 1 in order, are the runs of seg_len
     contiguous elements starting at q * group_stride + r * seg_stride,
     r = 0 .. nseg-1. coef holds 4 * ngroups values k, a, b, c (per group),
     w and bias one per position j (NULL: 1 and 0). kind:
       LM_NORM_MOMENTS: k[q] := the group's first element (0 when empty),
         then sums[2q] = sum(x - k[q]), sums[2q + 1] = sum((x - k[q])^2);
       LM_NORM_GRAD_SUMS: sums[2q] = sum(g w[j]), sums[2q + 1] =
         sum(g w[j] (x - k[q]));
       LM_NORM_AFFINE: y = (a[q] x + b[q]) w[j] + bias[j] (a[q] x + b[q]
         when w and bias are NULL);
       LM_NORM_GRAD_X: y = a[q] g w[j] + b[q] x + c[q].
     Sums are in double, added in an order that depends on the sizes only. */
  int32_t (*norm_pass)(int32_t kind, int32_t dtype, const int64_t *layout, const void *x, const void *g, void *y,
                       double *coef, const double *w, const double *bias, double *sums);
  /* The fused pointwise part of an LSTM or GRU cell (src/ops/rnn.c, whose
     header gives the formulas and the gate orders), for n rows of hidden
     width H (f32 or f64). Inputs are read row by row, row b of in[k] at
     in[k] + b * ld[k]; outputs are contiguous. op LM_OP_LSTM_CELL:
       forward:  in = gates_x, gates_h (n x 4H), c_prev (n x H);
                 out = h, c (n x H), workspace (n x 5H: i, f, g, o, tanh c);
       backward: in = dh, dc, c_prev, workspace; out = d gates (n x 4H),
                 d c_prev (NULL: not wanted).
     op LM_OP_GRU_CELL:
       forward:  in = gates_x, gates_h (n x 3H), h_prev; out = h, workspace
                 (n x 4H: r, z, n, gates_h's n block);
       backward: in = dh, h_prev, workspace; out = d gates_x, d gates_h
                 (n x 3H), d h_prev (NULL: not wanted). */
  int32_t (*rnn_cell)(int32_t op, int32_t dtype, int32_t backward, int64_t n, int64_t H, const void *const *in,
                      const int64_t *ld, void *const *out);
  /* Interpolation (src/ops/resample.c's upsample) over `planes`
     contiguous planes, seen in 3-D (sizes: in[3], out[3] for (d, h, w); nd
     of them real, the others 1). tables (device memory, 8-byte slots) hold
     for each of the 3 dims in turn: i0[out], i1[out] (i64), w0[out],
     w1[out] (f64): output o reads positions i0 and i1 with weights w0, w1
     (nearest: i1 = i0, w1 = 0); then lo[in], hi[in] (i64): the outputs
     reading input i lie in [lo[i], hi[i]). forward: dst = the weighted
     reads, nested as resample.c (W inside H inside D; nearest reads i0).
     backward: src is the output's gradient, dst[i] = the sum over the
     outputs reading input position i of gradient times weight (w0 where
     i0 names i, plus w1 where i1 does; nearest: w0 only). */
  int32_t (*interp)(int32_t dtype, int32_t backward, int32_t nd, int32_t nearest, int64_t planes,
                    const int64_t *sizes, const void *tables, const void *src, void *dst);
  /* grid_sample (src/ops/resample.c, whose comments give the sampling
     rules) of x (N x C x in, contiguous; in[3] = D, H, W with D = 1 in 2-D)
     at grid (N x P x nd, contiguous) points; flags: 1 nearest, 2 border
     padding (else zeros), 4 align_corners. forward: y (N x C x P) = the
     samples. backward: g is the output's gradient (N x C x P); y, when not
     NULL, receives the input's gradient (each plane's points added in
     order), ggrid, when not NULL, the grid's (summed over channels). */
  int32_t (*grid_sample)(int32_t dtype, int32_t backward, int32_t nd, int32_t flags, int64_t N, int64_t C, int64_t P,
                         const int64_t *in, const void *x, const void *grid, const void *g, void *y, void *ggrid);
  /* Convolution by a vendor library (cuDNN), optional: LM_E_UNSUPPORTED
     when the library is missing or declines the case, and liblumen then
     uses im2col and the GEMM. n samples, image side img_c channels
     (img: n x img_c x image), column side col_c channels (col: n x col_c x
     grid), w: col_c x img_c / groups x kernel; geom as im2col's. kind 0:
     out (column side) = the convolution of img by w; 1: out (image side)
     = its adjoint applied to col; 2: out (w's shape) = the weight gradient
     of img and col. With ws NULL it sets *ws_bytes to the workspace the
     chosen algorithm needs (chosen once per shape) and, when that is more
     than 0, runs nothing: the caller then calls again with a buffer of
     that size. */
  int32_t (*conv_lib)(int32_t kind, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups,
                      const int64_t *geom, const void *img, const void *w, const void *col, void *out, void *ws,
                      size_t *ws_bytes);

  /* ---- sorting and pinned host memory (issue 7: the last CPU-only ops;
     one block, appended) ---- */

  /* Sorts each of `rows` contiguous rows of len >= 1 elements of x (dtype;
     bool read as u8) as src/ops/sort.c does: by value, NaN above +inf, -0
     equal to +0, ties in their original order (stable); descending
     reverses the value order but keeps ties in original order (NaN
     first). Writes the first k (1 .. len) of each row: values (x's dtype,
     rows x k; NULL: not wanted) and indices (i64 positions within the row,
     rows x k; NULL: not wanted). work is device scratch of 4 * rows * len
     8-byte slots. */
  int32_t (*sort)(int32_t dtype, int64_t rows, int64_t len, int64_t k, int32_t descending, const void *x,
                  void *values, int64_t *indices, void *work);
  /* Page-locked ("pinned") host memory that the device reads directly
     (cudaHostAlloc), and its release. liblumen caches freed blocks
     (src/core/device.c), so these are called only when the cache cannot
     serve a request and when it is emptied. */
  int32_t (*host_alloc)(size_t nbytes, void **ptr);
  int32_t (*host_free)(void *ptr);
  /* Host to device from memory of host_alloc, with no staging: returns at
     once, the transfer ordered before later work. src must stay untouched
     until a later synchronize has returned (liblumen's pinned cache
     synchronizes before it hands a block out again). */
  int32_t (*copy_h2d_async)(void *dst, const void *src, size_t nbytes);

  /* ---- mixed precision (autocast, src/ops/amp.c) ---- */

  /* gemm's product for dtype LM_F32 with a and b read rounded to lowp
     (1: bf16, 2: f16; to nearest, ties to even, as src/lowp.h) and the
     products summed in f32; alpha, beta and c as gemm (c is f32). The CUDA
     backend converts the operands to 16 bits on the device and multiplies
     them on tensor cores (cublasGemmStridedBatchedEx, f32 compute). */
  int32_t (*gemm_lowp)(int32_t lowp, int32_t dtype, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k,
                       double alpha, const void *a, int64_t lda, int64_t stride_a, const void *b, int64_t ldb,
                       int64_t stride_b, double beta, void *c, int64_t ldc, int64_t stride_c, int64_t batch);
} lm_backend;

#ifdef __cplusplus
}
#endif
#endif
