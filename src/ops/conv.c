/* conv.c - convolution and transposed convolution over 1, 2 or 3 spatial
 * dims (f32, f64), forward and backward, on OpenBLAS.
 *
 * Both ops come down to three steps over one geometry: an "image" (the
 * input of a convolution, the output of a transposed one) and a grid of
 * "columns" (the other side: one position per placement of the kernel).
 *   gather:  out = A . im2col(image)            conv forward, conv_transpose grad input
 *   scatter: image = col2im(A^T . in)           conv grad input, conv_transpose forward
 *   weight:  dA = sum over samples of in . im2col(image)^T
 * A is the weight read as (column channels) x (image channels / groups x
 * kernel) per group: Cout x Cin/g*K for a convolution, Cin x Cout/g*K for a
 * transposed one, which is how both weights already lie in memory.
 *
 * im2col works on tiles of output rows so that its buffer stays small
 * and hot in cache; a 1x1 kernel with stride 1 and no padding skips it (the
 * image already is the column matrix). With stride 1, scatter usually runs
 * as a gather with the kernel reversed (see scatter()). Samples (or tiles)
 * are split across OpenMP threads with single-threaded BLAS in each; with
 * fewer of them than threads, they run one after another and BLAS uses the
 * threads. Gradients of the weight are summed in a fixed number of partial
 * sums that depends on the shapes only, so results do not depend on the
 * thread count. docs/ARCHITECTURE.md has the measurements behind this plan.
 *
 * On a device the same three steps run on its backend (src/backend.h): the
 * im2col entry makes (or, as col2im, folds back) the column matrix of a
 * chunk of samples and the gemm entry multiplies per group, batched over
 * the samples (dev_gather, dev_scatter, dev_weight_grad below). A backend
 * with a library convolution (cuDNN: the conv_lib entry) runs the three
 * steps there instead, unless LUMEN_CUDNN=0 or the library declines the
 * case (try_conv_lib).
 */
#include "../core/internal.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>

extern void openblas_set_num_threads(int n);

/* Bytes of one im2col tile per thread: big enough for GEMM to run well,
   small enough to stay in cache between im2col and GEMM. */
#define COL_TILE_BYTES ((int64_t)2 << 20)
/* Most partial sums of the weight gradient, and the memory they may take. */
#define MAX_PARTS 16
#define PARTS_BYTES ((int64_t)64 << 20)

typedef struct conv_geom {
  int32_t dtype, es;
  int64_t n, groups;
  int64_t img_c, col_c;    /* channels of the image side and of the column side */
  int64_t img[3], col[3];  /* spatial sizes (depth, height, width); 1 for dims the op lacks */
  int64_t k[3], stride[3], pad[3], dil[3];
  int64_t img_sz, col_sz, ksz;
  int64_t cg, mg, ckg;     /* per group: image channels, column channels, rows of A^T */
  int64_t rows, tile_rows, ntiles; /* output rows are (depth, height) pairs of the column grid */
  bool direct;             /* the image is its own column matrix */
  int32_t lowp;            /* autocast: the GEMMs read their operands as bf16 or f16 (src/ops/amp.c) */
} conv_geom;

/* Fills in the derived sizes; spatial arrays are right-aligned to 3 dims. */
static void geom_finish(conv_geom *g) {
  g->es = lm_dtype_size(g->dtype);
  g->img_sz = g->img[0] * g->img[1] * g->img[2];
  g->col_sz = g->col[0] * g->col[1] * g->col[2];
  g->ksz = g->k[0] * g->k[1] * g->k[2];
  g->cg = g->img_c / g->groups;
  g->mg = g->col_c / g->groups;
  g->ckg = g->cg * g->ksz;
  g->direct = g->ksz == 1;
  for (int d = 0; d < 3; d++)
    g->direct = g->direct && g->stride[d] == 1 && g->pad[d] == 0 && g->img[d] == g->col[d];
  g->rows = g->col[0] * g->col[1];
  int64_t row_bytes = g->ckg * g->col[2] * g->es;
  g->tile_rows = g->rows;
  if (!g->direct && row_bytes > 0 && g->rows * row_bytes > COL_TILE_BYTES) {
    g->tile_rows = COL_TILE_BYTES / row_bytes;
    if (g->tile_rows < 1) g->tile_rows = 1;
  }
  g->ntiles = g->rows > 0 ? (g->rows + g->tile_rows - 1) / g->tile_rows : 0;
}

/* ---- im2col and col2im on one group of one sample ---- */

/* Output columns ow in [lo, hi) read input column ow * s + off inside [0, w). */
static void valid_cols(int64_t off, int64_t s, int64_t w, int64_t ow, int64_t *lo, int64_t *hi) {
  int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
  int64_t b = w - 1 - off < 0 ? 0 : (w - 1 - off) / s + 1;
  if (b > ow) b = ow;
  if (a > b) a = b;
  *lo = a;
  *hi = b;
}

/* dst[i] = src[i * step] */
static void copy_run(int32_t es, char *dst, const char *src, int64_t n, int64_t step) {
  if (step == 1) {
    memcpy(dst, src, (size_t)(n * es));
  } else if (es == 4) {
    float *d = (float *)dst;
    const float *s = (const float *)src;
    for (int64_t i = 0; i < n; i++) d[i] = s[i * step];
  } else {
    double *d = (double *)dst;
    const double *s = (const double *)src;
    for (int64_t i = 0; i < n; i++) d[i] = s[i * step];
  }
}

/* dst[i * step] += src[i] */
static void add_run(int32_t es, char *dst, int64_t step, const char *src, int64_t n) {
  if (es == 4) {
    float *d = (float *)dst;
    const float *s = (const float *)src;
    if (step == 1)
      for (int64_t i = 0; i < n; i++) d[i] += s[i];
    else
      for (int64_t i = 0; i < n; i++) d[i * step] += s[i];
  } else {
    double *d = (double *)dst;
    const double *s = (const double *)src;
    if (step == 1)
      for (int64_t i = 0; i < n; i++) d[i] += s[i];
    else
      for (int64_t i = 0; i < n; i++) d[i * step] += s[i];
  }
}

/* Walks the column matrix of output rows [r0, r1) for the cg image channels
   at img: row (c, kd, kh, kw), one output row of width col[2] at a time.
   scatter == false copies image values into col (zeros where the kernel
   hangs over the padding); scatter == true adds col into the image. */
static void im2col_walk(const conv_geom *g, char *img, int64_t r0, int64_t r1, char *col, bool scatter) {
  const int32_t es = g->es;
  const int64_t D = g->img[0], H = g->img[1], W = g->img[2], OH = g->col[1], OW = g->col[2];
  char *dst = col;
  for (int64_t c = 0; c < g->cg; c++) {
    char *plane = img + c * g->img_sz * es;
    for (int64_t kd = 0; kd < g->k[0]; kd++)
      for (int64_t kh = 0; kh < g->k[1]; kh++)
        for (int64_t kw = 0; kw < g->k[2]; kw++) {
          int64_t off = kw * g->dil[2] - g->pad[2], lo, hi;
          valid_cols(off, g->stride[2], W, OW, &lo, &hi);
          for (int64_t r = r0; r < r1; r++, dst += OW * es) {
            int64_t od = r / OH, oh = r % OH;
            int64_t id = od * g->stride[0] - g->pad[0] + kd * g->dil[0];
            int64_t ih = oh * g->stride[1] - g->pad[1] + kh * g->dil[1];
            bool inside = id >= 0 && id < D && ih >= 0 && ih < H && lo < hi;
            if (scatter) {
              if (inside)
                add_run(es, plane + ((id * H + ih) * W + off + lo * g->stride[2]) * es, g->stride[2], dst + lo * es,
                        hi - lo);
              continue;
            }
            if (!inside) {
              memset(dst, 0, (size_t)(OW * es));
              continue;
            }
            if (lo > 0) memset(dst, 0, (size_t)(lo * es));
            copy_run(es, dst + lo * es, plane + ((id * H + ih) * W + off + lo * g->stride[2]) * es, hi - lo,
                     g->stride[2]);
            if (hi < OW) memset(dst + hi * es, 0, (size_t)((OW - hi) * es));
          }
        }
  }
}

/* ---- the three steps, split into work items run by workers ---- */

enum { STEP_GATHER, STEP_SCATTER, STEP_WEIGHT };

typedef struct conv_job {
  const conv_geom *g;
  int32_t step;
  const char *img;  /* gather, weight: the image (N x img_c x img) */
  const char *in;   /* scatter, weight: the column side (N x col_c x col) */
  const char *a;    /* gather, scatter: the weight */
  const char *bias; /* gather: added to out; scatter: added to the image (NULL: none) */
  char *out;        /* gather: column side; scatter: image; weight: dA */
  char *parts;      /* weight: partial sums 1..nparts-1 (0 is out itself) */
  int64_t nparts, nitems, nworkers;
  char *bufs;       /* one im2col tile per worker */
  int64_t buf_bytes;
} conv_job;

/* Tile t of the output rows: positions [*p0, *p0 + *len), rows [*r0, *r1). */
static void tile_span(const conv_geom *g, int64_t t, int64_t *r0, int64_t *r1, int64_t *p0, int64_t *len) {
  *r0 = t * g->tile_rows;
  *r1 = *r0 + g->tile_rows < g->rows ? *r0 + g->tile_rows : g->rows;
  *p0 = *r0 * g->col[2];
  *len = (*r1 - *r0) * g->col[2];
}

/* Fills rows of m channels (row stride ld) with their bias, len values each. */
static void fill_bias(int32_t dtype, char *dst, int64_t ld, const char *bias, int64_t m, int64_t len) {
  for (int64_t c = 0; c < m; c++) {
    if (dtype == LM_F32) {
      float v = ((const float *)bias)[c], *d = (float *)dst + c * ld;
      for (int64_t i = 0; i < len; i++) d[i] = v;
    } else {
      double v = ((const double *)bias)[c], *d = (double *)dst + c * ld;
      for (int64_t i = 0; i < len; i++) d[i] = v;
    }
  }
}

/* Adds bias[c] to each of m rows of len values (contiguous). */
static void add_bias(int32_t dtype, char *dst, const char *bias, int64_t m, int64_t len) {
  for (int64_t c = 0; c < m; c++) {
    if (dtype == LM_F32) {
      float v = ((const float *)bias)[c], *d = (float *)dst + c * len;
      for (int64_t i = 0; i < len; i++) d[i] += v;
    } else {
      double v = ((const double *)bias)[c], *d = (double *)dst + c * len;
      for (int64_t i = 0; i < len; i++) d[i] += v;
    }
  }
}

/* Item = (sample, tile): out[n][:, tile] = A . im2col(img[n])[:, tile]. */
static void gather_items(const conv_job *j, int64_t i0, int64_t i1, char *col) {
  const conv_geom *g = j->g;
  const int32_t es = g->es;
  for (int64_t i = i0; i < i1; i++) {
    int64_t n = i / g->ntiles, r0, r1, p0, len;
    tile_span(g, i % g->ntiles, &r0, &r1, &p0, &len);
    const char *img = j->img + n * g->img_c * g->img_sz * es;
    char *out = j->out + (n * g->col_c * g->col_sz + p0) * es;
    if (j->bias) fill_bias(g->dtype, out, g->col_sz, j->bias, g->col_c, len);
    for (int64_t gi = 0; gi < g->groups; gi++) {
      const char *ig = img + gi * g->cg * g->img_sz * es, *b = ig + p0 * es;
      int64_t ldb = g->col_sz;
      if (!g->direct) {
        im2col_walk(g, (char *)ig, r0, r1, col, false);
        b = col;
        ldb = len;
      }
      lm_gemm(g->dtype, false, false, g->mg, len, g->ckg, 1.0, j->a + gi * g->mg * g->ckg * es, g->ckg, b, ldb,
           j->bias ? 1.0 : 0.0, out + gi * g->mg * g->col_sz * es, g->col_sz);
    }
  }
}

/* Item = sample: img[n] = col2im(A^T . in[n]) (+ bias). */
static void scatter_items(const conv_job *j, int64_t i0, int64_t i1, char *col) {
  const conv_geom *g = j->g;
  const int32_t es = g->es;
  for (int64_t n = i0; n < i1; n++) {
    char *img = j->out + n * g->img_c * g->img_sz * es;
    const char *in = j->in + n * g->col_c * g->col_sz * es;
    if (!g->direct) memset(img, 0, (size_t)(g->img_c * g->img_sz * es));
    for (int64_t t = 0; t < g->ntiles; t++) {
      int64_t r0, r1, p0, len;
      tile_span(g, t, &r0, &r1, &p0, &len);
      for (int64_t gi = 0; gi < g->groups; gi++) {
        const char *a = j->a + gi * g->mg * g->ckg * es, *ing = in + (gi * g->mg * g->col_sz + p0) * es;
        char *ig = img + gi * g->cg * g->img_sz * es;
        if (g->direct) {
          lm_gemm(g->dtype, true, false, g->ckg, len, g->mg, 1.0, a, g->ckg, ing, g->col_sz, 0.0, ig + p0 * es, g->col_sz);
        } else {
          lm_gemm(g->dtype, true, false, g->ckg, len, g->mg, 1.0, a, g->ckg, ing, g->col_sz, 0.0, col, len);
          im2col_walk(g, ig, r0, r1, col, true);
        }
      }
    }
    if (j->bias) add_bias(g->dtype, img, j->bias, g->img_c, g->img_sz);
  }
}

/* Item = partial sum p over its run of samples: dA_p = sum in[n] . im2col(img[n])^T. */
static void weight_items(const conv_job *j, int64_t i0, int64_t i1, char *col) {
  const conv_geom *g = j->g;
  const int32_t es = g->es;
  int64_t asz = g->col_c * g->ckg;
  for (int64_t p = i0; p < i1; p++) {
    char *acc = p == 0 ? j->out : j->parts + (p - 1) * asz * es;
    memset(acc, 0, (size_t)(asz * es));
    for (int64_t n = p * g->n / j->nparts; n < (p + 1) * g->n / j->nparts; n++) {
      const char *img = j->img + n * g->img_c * g->img_sz * es;
      const char *in = j->in + n * g->col_c * g->col_sz * es;
      for (int64_t t = 0; t < g->ntiles; t++) {
        int64_t r0, r1, p0, len;
        tile_span(g, t, &r0, &r1, &p0, &len);
        for (int64_t gi = 0; gi < g->groups; gi++) {
          const char *ig = img + gi * g->cg * g->img_sz * es, *b = ig + p0 * es;
          int64_t ldb = g->col_sz;
          if (!g->direct) {
            im2col_walk(g, (char *)ig, r0, r1, col, false);
            b = col;
            ldb = len;
          }
          lm_gemm(g->dtype, false, true, g->mg, g->ckg, len, 1.0, in + (gi * g->mg * g->col_sz + p0) * es, g->col_sz, b, ldb,
               1.0, acc + gi * g->mg * g->ckg * es, g->ckg);
        }
      }
    }
  }
}

/* Worker w takes items [w * nitems / nworkers, (w + 1) * nitems / nworkers). */
static void conv_workers(void *arg, int64_t w0, int64_t w1) {
  const conv_job *j = arg;
  for (int64_t w = w0; w < w1; w++) {
    int64_t i0 = w * j->nitems / j->nworkers, i1 = (w + 1) * j->nitems / j->nworkers;
    char *col = j->bufs ? j->bufs + w * j->buf_bytes : NULL;
    if (j->step == STEP_GATHER) gather_items(j, i0, i1, col);
    else if (j->step == STEP_SCATTER) scatter_items(j, i0, i1, col);
    else weight_items(j, i0, i1, col);
  }
}

/* dA += parts[0] + parts[1] + ..., in that order for every element. */
typedef struct sum_parts_arg { int32_t dtype; char *out; const char *parts; int64_t nparts, size; } sum_parts_arg;
static void sum_parts(void *arg, int64_t e0, int64_t e1) {
  const sum_parts_arg *s = arg;
  for (int64_t e = e0; e < e1; e++) {
    if (s->dtype == LM_F32) {
      float v = ((float *)s->out)[e];
      for (int64_t p = 0; p < s->nparts; p++) v += ((const float *)s->parts)[p * s->size + e];
      ((float *)s->out)[e] = v;
    } else {
      double v = ((double *)s->out)[e];
      for (int64_t p = 0; p < s->nparts; p++) v += ((const double *)s->parts)[p * s->size + e];
      ((double *)s->out)[e] = v;
    }
  }
}

/* Runs a job: samples split over threads (single-threaded BLAS in each), or
   one worker whose GEMMs use every BLAS thread when there are too few
   items to share. */
static lm_status conv_run(lm_ctx *ctx, const char *op, conv_job *j) {
  const conv_geom *g = j->g;
  int64_t nt = ctx->nthreads > 1 ? ctx->nthreads : 1;
  if (j->step == STEP_GATHER) j->nitems = g->n * g->ntiles;
  else if (j->step == STEP_SCATTER) j->nitems = g->n;
  else j->nitems = j->nparts;
  if (j->nitems == 0) return LM_OK;
  j->nworkers = j->nitems >= nt ? nt : 1;
  j->buf_bytes = g->direct ? 0 : (g->ckg * g->tile_rows * g->col[2] * g->es + 63) / 64 * 64;
  size_t nbytes = (size_t)(j->nworkers * j->buf_bytes);
  j->bufs = nbytes ? lm_alloc(ctx, nbytes) : NULL;
  if (nbytes && !j->bufs)
    return lm_err(ctx, LM_E_OOM, "%s: out of memory for a %lld-byte im2col buffer", op, (long long)nbytes);
  bool split = j->nworkers > 1;
  if (split) openblas_set_num_threads(1);
  lm_parallel_for(ctx, j->nworkers, 1, conv_workers, j);
  if (split) openblas_set_num_threads((int)nt);
  lm_free(j->bufs, nbytes);
  j->bufs = NULL;
  return LM_OK;
}

/* ---- on a device: im2col / col2im kernels of the backend and its GEMM ----
   The column matrix of a chunk of samples is made at once (the backend's
   im2col entry), then one strided-batched GEMM per group covers the chunk
   (the weight's stride 0 across samples). Chunks keep the column buffer
   under DEV_COL_BYTES. */
#define DEV_COL_BYTES ((int64_t)256 << 20)

static void geom_array(const conv_geom *g, int64_t *a) {
  for (int d = 0; d < 3; d++) {
    a[d] = g->img[d];
    a[3 + d] = g->col[d];
    a[6 + d] = g->k[d];
    a[9 + d] = g->stride[d];
    a[12 + d] = g->pad[d];
    a[15 + d] = g->dil[d];
  }
}

/* Samples per chunk, and the column buffer for them (NULL when direct). */
static lm_status dev_cols(lm_ctx *ctx, const char *op, const conv_geom *g, int32_t dev, int64_t *chunk,
                          lm_tensor **cols) {
  int64_t per = g->img_c * g->ksz * g->col_sz;
  *chunk = g->n;
  *cols = NULL;
  if (g->direct || per == 0 || g->n == 0) return LM_OK;
  int64_t most = DEV_COL_BYTES / (per * g->es);
  if (most < 1) most = 1;
  if (*chunk > most) *chunk = most;
  int64_t shape[1] = {*chunk * per};
  return lm_new_on(ctx, op, dev, g->dtype, 1, shape, cols);
}

static lm_status dev_call(lm_ctx *ctx, const char *op, const lm_backend *be, lm_status st) {
  return st ? lm_backend_fail(ctx, op, be, st) : LM_OK;
}

/* The backend with the entries the device steps use: im2col unless direct,
   the GEMM, or under autocast the low-precision GEMM. */
static lm_status dev_backend(lm_ctx *ctx, const char *op, const conv_geom *g, int32_t dev, const lm_backend **be) {
  lm_status st = g->lowp ? LM_BACKEND_FOR(ctx, op, dev, gemm_lowp, be) : LM_BACKEND_FOR(ctx, op, dev, gemm, be);
  if (!st && !g->direct) st = LM_BACKEND_FOR(ctx, op, dev, im2col, be);
  return st;
}

/* The backend's batched GEMM with alpha 1 (gemm_lowp under autocast). */
static int32_t be_gemm(const lm_backend *be, const conv_geom *g, int32_t ta, int32_t tb, int64_t m, int64_t n,
                       int64_t k, const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb, int64_t sb,
                       double beta, void *c, int64_t ldc, int64_t sc, int64_t batch) {
  if (g->lowp)
    return be->gemm_lowp(g->lowp, g->dtype, ta, tb, m, n, k, 1.0, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
  return be->gemm(g->dtype, ta, tb, m, n, k, 1.0, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
}

/* out (N x C x len, contiguous) += bias[c]: the elementwise entry with the
   bias seen as C x 1. */
static lm_status dev_add_bias(lm_ctx *ctx, const char *op, lm_tensor *out, const lm_tensor *bias, int64_t n, int64_t c,
                              int64_t len) {
  lm_tensor *o = lm_view_header(out), *b = lm_view_header(bias);
  lm_status st = LM_OK;
  if (!o || !b) {
    st = lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  } else {
    int64_t shape[3] = {n, c, len};
    o->ndim = 3;
    for (int d = 0; d < 3; d++) o->shape[d] = shape[d];
    o->stride[0] = c * len, o->stride[1] = len, o->stride[2] = 1;
    b->ndim = 2;
    b->shape[0] = c, b->shape[1] = 1, b->stride[0] = bias->ndim ? bias->stride[0] : 1, b->stride[1] = 1;
    const lm_tensor *ts[3] = {o, o, b};
    st = lm_dev_elementwise(ctx, op, LM_OP_ADD, out->dtype, 3, shape, 3, ts, 0);
  }
  if (o) lm_tensor_release(o);
  if (b) lm_tensor_release(b);
  return st;
}

/* The backend's library convolution (cuDNN) for step kind (0 gather, 1
   scatter, 2 weight), when the backend has one, LUMEN_CUDNN is not "0" and
   the library takes the case; *done says whether it ran (else im2col).
   Under autocast it is not asked: conv_lib has no low-precision mode, so
   the columns go through the backend's gemm_lowp (simple, and rounded
   exactly as the CPU rounds; cuDNN's bf16 convolutions would need 16-bit
   copies of the image and the weight, a later step). */
static lm_status try_conv_lib(lm_ctx *ctx, const char *op, const conv_geom *g, int32_t kind, const lm_tensor *img,
                              const lm_tensor *a, const lm_tensor *col, lm_tensor *out, bool *done) {
  *done = false;
  const lm_backend *be = lm_backend_get(lm_device_of(out));
  const char *env = getenv("LUMEN_CUDNN");
  if (!be || be->size < offsetof(lm_backend, conv_lib) + sizeof be->conv_lib || !be->conv_lib ||
      (env && !strcmp(env, "0")) || g->lowp)
    return LM_OK;
  int64_t geom[18];
  geom_array(g, geom);
  const void *pi = img ? lm_data(img) : NULL, *pa = a ? lm_data(a) : NULL, *pc = col ? lm_data(col) : NULL;
  size_t need = 0;
  lm_status st = be->conv_lib(kind, g->dtype, g->n, g->img_c, g->col_c, g->groups, geom, pi, pa, pc, lm_data(out),
                              NULL, &need);
  if (st == LM_E_UNSUPPORTED) return LM_OK;
  if (st) return lm_backend_fail(ctx, op, be, st);
  if (need > 0) {
    lm_tensor *ws;
    const int64_t shape[1] = {(int64_t)need};
    if ((st = lm_new_on(ctx, op, lm_device_of(out), LM_U8, 1, shape, &ws))) return st;
    st = be->conv_lib(kind, g->dtype, g->n, g->img_c, g->col_c, g->groups, geom, pi, pa, pc, lm_data(out),
                      lm_data(ws), &need);
    lm_tensor_release(ws);
    if (st == LM_E_UNSUPPORTED) return LM_OK;
    if (st) return lm_backend_fail(ctx, op, be, st);
  }
  *done = true;
  return LM_OK;
}

/* out (column side) = A . im2col(img) (+ bias). */
static lm_status dev_gather(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *img,
                            const lm_tensor *a, const lm_tensor *bias, lm_tensor *out) {
  int32_t dev = lm_device_of(out), es = g->es;
  const lm_backend *be;
  lm_status st = dev_backend(ctx, op, g, dev, &be);
  if (st || g->n == 0 || g->col_sz == 0) return st;
  if (g->ckg == 0) { /* no input channels: only the bias is left */
    if ((st = lm_fill(ctx, out, 0))) return st;
    return bias ? dev_add_bias(ctx, op, out, bias, g->n, g->col_c, g->col_sz) : LM_OK;
  }
  bool done;
  if ((st = try_conv_lib(ctx, op, g, 0, img, a, NULL, out, &done))) return st;
  if (done) return bias ? dev_add_bias(ctx, op, out, bias, g->n, g->col_c, g->col_sz) : LM_OK;
  int64_t chunk, geom[18], per = g->img_c * g->ksz * g->col_sz;
  lm_tensor *cols;
  if ((st = dev_cols(ctx, op, g, dev, &chunk, &cols))) return st;
  geom_array(g, geom);
  const char *x = lm_data(img), *w = lm_data(a);
  char *y = lm_data(out), *c = cols ? lm_data(cols) : NULL;
  for (int64_t n0 = 0; n0 < g->n && !st; n0 += chunk) {
    int64_t nb = g->n - n0 < chunk ? g->n - n0 : chunk;
    const char *xs = x + n0 * g->img_c * g->img_sz * es;
    if (c) st = dev_call(ctx, op, be, be->im2col(g->dtype, 1, nb, g->img_c, geom, (void *)xs, c));
    for (int64_t gi = 0; gi < g->groups && !st; gi++) {
      const char *b = c ? c + gi * g->ckg * g->col_sz * es : xs + gi * g->cg * g->img_sz * es;
      int64_t sb = c ? per : g->img_c * g->img_sz;
      st = dev_call(ctx, op, be, be_gemm(be, g, 0, 0, g->mg, g->col_sz, g->ckg, w + gi * g->mg * g->ckg * es,
                                          g->ckg, 0, b, g->col_sz, sb, 0.0,
                                          y + (n0 * g->col_c + gi * g->mg) * g->col_sz * es, g->col_sz,
                                          g->col_c * g->col_sz, nb));
    }
  }
  if (cols) lm_tensor_release(cols);
  if (!st && bias) st = dev_add_bias(ctx, op, out, bias, g->n, g->col_c, g->col_sz);
  return st;
}

/* out (image side) = col2im(A^T . in) (+ bias). */
static lm_status dev_scatter(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *in,
                             const lm_tensor *a, const lm_tensor *bias, lm_tensor *out) {
  int32_t dev = lm_device_of(out), es = g->es;
  const lm_backend *be;
  lm_status st = dev_backend(ctx, op, g, dev, &be);
  if (st || g->n == 0 || g->img_sz == 0 || g->img_c == 0) return st;
  if (g->mg == 0 || g->col_sz == 0) { /* nothing reaches the image */
    if ((st = lm_fill(ctx, out, 0))) return st;
    return bias ? dev_add_bias(ctx, op, out, bias, g->n, g->img_c, g->img_sz) : LM_OK;
  }
  bool done;
  if ((st = try_conv_lib(ctx, op, g, 1, NULL, a, in, out, &done))) return st;
  if (done) return bias ? dev_add_bias(ctx, op, out, bias, g->n, g->img_c, g->img_sz) : LM_OK;
  int64_t chunk, geom[18], per = g->img_c * g->ksz * g->col_sz;
  lm_tensor *cols;
  if ((st = dev_cols(ctx, op, g, dev, &chunk, &cols))) return st;
  geom_array(g, geom);
  const char *x = lm_data(in), *w = lm_data(a);
  char *y = lm_data(out), *c = cols ? lm_data(cols) : NULL;
  for (int64_t n0 = 0; n0 < g->n && !st; n0 += chunk) {
    int64_t nb = g->n - n0 < chunk ? g->n - n0 : chunk;
    char *ys = y + n0 * g->img_c * g->img_sz * es;
    for (int64_t gi = 0; gi < g->groups && !st; gi++) {
      char *dst = c ? c + gi * g->ckg * g->col_sz * es : ys + gi * g->cg * g->img_sz * es;
      int64_t sc = c ? per : g->img_c * g->img_sz;
      st = dev_call(ctx, op, be, be_gemm(be, g, 1, 0, g->ckg, g->col_sz, g->mg, w + gi * g->mg * g->ckg * es,
                                          g->ckg, 0, x + (n0 * g->col_c + gi * g->mg) * g->col_sz * es, g->col_sz,
                                          g->col_c * g->col_sz, 0.0, dst, g->col_sz, sc, nb));
    }
    if (!st && c) st = dev_call(ctx, op, be, be->im2col(g->dtype, 0, nb, g->img_c, geom, ys, c));
  }
  if (cols) lm_tensor_release(cols);
  if (!st && bias) st = dev_add_bias(ctx, op, out, bias, g->n, g->img_c, g->img_sz);
  return st;
}

/* out (the weight's shape) = sum over samples of in[n] . im2col(img[n])^T:
   one GEMM per sample batched over the groups, accumulating (beta 1) after
   the first. */
static lm_status dev_weight_grad(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *in,
                                 const lm_tensor *img, lm_tensor *out) {
  int32_t dev = lm_device_of(out), es = g->es;
  const lm_backend *be;
  lm_status st = dev_backend(ctx, op, g, dev, &be);
  if (st) return st;
  if (g->n == 0 || g->col_sz == 0 || g->mg == 0 || g->ckg == 0) return lm_fill(ctx, out, 0);
  bool done;
  if ((st = try_conv_lib(ctx, op, g, 2, img, NULL, in, out, &done)) || done) return st;
  int64_t chunk, geom[18], per = g->img_c * g->ksz * g->col_sz;
  lm_tensor *cols;
  if ((st = dev_cols(ctx, op, g, dev, &chunk, &cols))) return st;
  geom_array(g, geom);
  const char *x = lm_data(img), *dy = lm_data(in);
  char *dw = lm_data(out), *c = cols ? lm_data(cols) : NULL;
  for (int64_t n0 = 0; n0 < g->n && !st; n0 += chunk) {
    int64_t nb = g->n - n0 < chunk ? g->n - n0 : chunk;
    const char *xs = x + n0 * g->img_c * g->img_sz * es;
    if (c) st = dev_call(ctx, op, be, be->im2col(g->dtype, 1, nb, g->img_c, geom, (void *)xs, c));
    for (int64_t i = 0; i < nb && !st; i++) {
      int64_t n = n0 + i;
      const char *b = c ? c + i * per * es : xs + i * g->img_c * g->img_sz * es;
      int64_t sb = c ? g->ckg * g->col_sz : g->cg * g->img_sz;
      st = dev_call(ctx, op, be, be_gemm(be, g, 0, 1, g->mg, g->ckg, g->col_sz,
                                          dy + n * g->col_c * g->col_sz * es, g->col_sz, g->mg * g->col_sz, b,
                                          g->col_sz, sb, n == 0 ? 0.0 : 1.0, dw, g->ckg, g->mg * g->ckg, g->groups));
    }
  }
  if (cols) lm_tensor_release(cols);
  return st;
}

static lm_status gather(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *img, const lm_tensor *a,
                        const lm_tensor *bias, lm_tensor *out) {
  if (lm_device_of(out) != LM_CPU) return dev_gather(ctx, op, g, img, a, bias, out);
  conv_job j = {.g = g, .step = STEP_GATHER, .img = lm_data(img), .a = lm_data(a),
                .bias = bias ? lm_data(bias) : NULL, .out = lm_data(out)};
  return conv_run(ctx, op, &j);
}

/* The weight of the reverse step: A (col_c x cg x K per group) as
   img_c x mg x K, with the kernel reversed (one flat reversal reverses every
   kernel dim at once). */
static lm_status reverse_weight(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *a, lm_tensor **out) {
  int64_t shape[2] = {g->img_c, g->mg * g->ksz}, K = g->ksz;
  lm_status st = lm_new(ctx, op, a->dtype, 2, shape, out);
  if (st) return st;
  const int32_t es = g->es;
  const char *src = lm_data(a);
  char *dst = lm_data(*out);
  for (int64_t gi = 0; gi < g->groups; gi++)
    for (int64_t m = 0; m < g->mg; m++)
      for (int64_t c = 0; c < g->cg; c++) {
        const char *s = src + (((gi * g->mg + m) * g->cg + c) * K) * es;
        char *d = dst + (((gi * g->cg + c) * g->mg + m) * K) * es;
        for (int64_t k = 0; k < K; k++) memcpy(d + (K - 1 - k) * es, s + k * es, (size_t)es);
      }
  return LM_OK;
}

static lm_status scatter(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *in, const lm_tensor *a,
                         const lm_tensor *bias, lm_tensor *out) {
  if (lm_device_of(out) != LM_CPU) return dev_scatter(ctx, op, g, in, a, bias, out);
  bool unit_stride = g->stride[0] == 1 && g->stride[1] == 1 && g->stride[2] == 1;
  if (unit_stride && !g->direct && g->mg <= 2 * g->cg) {
    /* With stride 1, col2im(A^T . in) is a convolution of in with the
       reversed kernel and the complementary padding: im2col reads and a
       GEMM over mg x K instead of scattered adds and a GEMM over mg. Its
       im2col buffer is mg / cg times bigger, so it pays unless the column
       side has many more channels (a 3x3 conv from 1 to 32 channels: 3x
       slower; 32 to 32 channels in 3-D: 1.4x faster). */
    conv_geom r = *g;
    r.img_c = g->col_c;
    r.col_c = g->img_c;
    for (int d = 0; d < 3; d++) {
      r.img[d] = g->col[d];
      r.col[d] = g->img[d];
      r.pad[d] = g->dil[d] * (g->k[d] - 1) - g->pad[d];
    }
    geom_finish(&r);
    lm_tensor *ar;
    lm_status st = reverse_weight(ctx, op, g, a, &ar);
    if (st) return st;
    conv_job j = {.g = &r, .step = STEP_GATHER, .img = lm_data(in), .a = lm_data(ar),
                  .bias = bias ? lm_data(bias) : NULL, .out = lm_data(out)};
    st = conv_run(ctx, op, &j);
    lm_tensor_release(ar);
    return st;
  }
  conv_job j = {.g = g, .step = STEP_SCATTER, .in = lm_data(in), .a = lm_data(a),
                .bias = bias ? lm_data(bias) : NULL, .out = lm_data(out)};
  return conv_run(ctx, op, &j);
}

static lm_status weight_grad(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *in,
                             const lm_tensor *img, lm_tensor *out) {
  if (lm_device_of(out) != LM_CPU) return dev_weight_grad(ctx, op, g, in, img, out);
  int64_t asz = g->col_c * g->ckg, abytes = asz * g->es;
  int64_t nparts = g->n < MAX_PARTS ? g->n : MAX_PARTS;
  if (abytes > 0 && (nparts - 1) * abytes > PARTS_BYTES) nparts = 1 + PARTS_BYTES / abytes;
  if (nparts < 1) { /* no samples: the gradient is zero */
    memset(lm_data(out), 0, (size_t)abytes);
    return LM_OK;
  }
  conv_job j = {.g = g, .step = STEP_WEIGHT, .in = lm_data(in), .img = lm_data(img), .out = lm_data(out),
                .nparts = nparts};
  size_t pbytes = (size_t)((nparts - 1) * abytes);
  if (pbytes && !(j.parts = lm_alloc(ctx, pbytes)))
    return lm_err(ctx, LM_E_OOM, "%s: out of memory for %lld partial weight gradients", op, (long long)(nparts - 1));
  lm_status st = conv_run(ctx, op, &j);
  if (!st && nparts > 1) {
    sum_parts_arg s = {g->dtype, lm_data(out), j.parts, nparts - 1, asz};
    lm_parallel_for(ctx, asz, 16384, sum_parts, &s);
  }
  lm_free(j.parts, pbytes);
  return st;
}

/* db[c] = sum over samples and positions of dy[n, c, :] (contiguous), in
   double with four running sums (independent adds keep the FPU busy). */
typedef struct bias_grad_arg { int32_t dtype; const char *dy; char *db; int64_t n, c, len; } bias_grad_arg;
static void bias_grad_rows(void *arg, int64_t c0, int64_t c1) {
  const bias_grad_arg *b = arg;
  for (int64_t c = c0; c < c1; c++) {
    double s[4] = {0, 0, 0, 0};
    for (int64_t n = 0; n < b->n; n++) {
      int64_t base = (n * b->c + c) * b->len, i = 0;
      if (b->dtype == LM_F32) {
        const float *p = (const float *)b->dy + base;
        for (; i + 4 <= b->len; i += 4)
          for (int k = 0; k < 4; k++) s[k] += p[i + k];
        for (; i < b->len; i++) s[0] += p[i];
      } else {
        const double *p = (const double *)b->dy + base;
        for (; i + 4 <= b->len; i += 4)
          for (int k = 0; k < 4; k++) s[k] += p[i + k];
        for (; i < b->len; i++) s[0] += p[i];
      }
    }
    lm_write_from_double(b->dtype, b->db + c * lm_dtype_size(b->dtype), (s[0] + s[1]) + (s[2] + s[3]));
  }
}

static lm_status bias_grad(lm_ctx *ctx, const char *op, const lm_tensor *dy, int64_t n, int64_t c, int64_t len,
                           lm_tensor **out) {
  if (lm_device_of(dy) != LM_CPU) { /* the sum over samples and positions of dy seen as N x C x len */
    lm_tensor *v = lm_view_header(dy);
    if (!v) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
    v->ndim = 3;
    v->shape[0] = n, v->shape[1] = c, v->shape[2] = len;
    v->stride[0] = c * len, v->stride[1] = len, v->stride[2] = 1;
    const int32_t dims[2] = {0, 2};
    lm_status st = lm_reduce(ctx, LM_OP_SUM, v, 2, dims, 0, 0, out, NULL);
    lm_tensor_release(v);
    return st;
  }
  lm_tensor *db;
  int64_t shape[1] = {c};
  lm_status st = lm_new(ctx, op, dy->dtype, 1, shape, &db);
  if (st) return st;
  bias_grad_arg a = {dy->dtype, lm_data(dy), lm_data(db), n, c, len};
  int64_t grain = len * n > 0 ? 32768 / (len * n) + 1 : c + 1;
  lm_parallel_for(ctx, c, grain, bias_grad_rows, &a);
  *out = db;
  return LM_OK;
}

/* ---- argument checks and shapes ---- */

static const char *const spatial_names[4] = {"", "L", "H x W", "D x H x W"};
static const char *const kernel_names[4] = {"", "kL", "kH x kW", "kD x kH x kW"};

/* What both ops share: tensors, dtypes, ranks, groups, parameter ranges. */
static lm_status check_args(lm_ctx *ctx, const char *op, const lm_tensor *x, const lm_tensor *w, const lm_tensor *b,
                            int32_t nsp, const int64_t *stride, const int64_t *dilation, int64_t groups) {
  lm_status st;
  if ((st = lm_check_arg(ctx, op, x, "input")) || (st = lm_check_arg(ctx, op, w, "weight"))) return st;
  const lm_tensor *ts[3] = {x, w, b};
  const char *const what[3] = {"input", "weight", "bias"};
  int32_t device;
  if ((st = lm_op_device(ctx, op, 3, ts, what, false, &device))) return st;
  if (nsp < 1 || nsp > 3)
    return lm_err(ctx, LM_E_ARG, "%s: %d spatial dimensions, expected 1, 2 or 3", op, nsp);
  if (!lm_dtype_is_float(x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input dtype %s is not supported (expected f32 or f64)", op,
                  lm_dtype_name(x->dtype));
  if (w->dtype != x->dtype || (b && b->dtype != x->dtype))
    return lm_err(ctx, LM_E_DTYPE, "%s: input is %s, weight %s%s%s, expected one float dtype for all", op,
                  lm_dtype_name(x->dtype), lm_dtype_name(w->dtype), b ? ", bias " : "",
                  b ? lm_dtype_name(b->dtype) : "");
  char xs[LM_SHAPE_BUF], ws[LM_SHAPE_BUF];
  if (x->ndim != nsp + 2 && x->ndim != nsp + 1)
    return lm_err(ctx, LM_E_SHAPE, "%s: input is %d-D (%s), expected N x C x %s (or unbatched C x %s)", op, x->ndim,
                  LM_SHP(x, xs), spatial_names[nsp], spatial_names[nsp]);
  if (w->ndim != nsp + 2)
    return lm_err(ctx, LM_E_SHAPE, "%s: weight is %d-D (%s), expected %d-D (out x in x %s)", op, w->ndim,
                  LM_SHP(w, ws), nsp + 2, kernel_names[nsp]);
  if (groups < 1) return lm_err(ctx, LM_E_ARG, "%s: groups is %lld, expected a positive count", op, (long long)groups);
  for (int32_t d = 0; d < nsp; d++) {
    if (stride[d] < 1)
      return lm_err(ctx, LM_E_ARG, "%s: stride %lld in spatial dim %d, expected a positive value", op,
                    (long long)stride[d], d);
    if (dilation[d] < 1)
      return lm_err(ctx, LM_E_ARG, "%s: dilation %lld in spatial dim %d, expected a positive value", op,
                    (long long)dilation[d], d);
    if (w->shape[2 + d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: weight %s has an empty kernel, expected kernel sizes of at least 1", op,
                    LM_SHP(w, ws));
  }
  return LM_OK;
}

/* Lays the spatial sizes of a tensor (skipping its lead dims) and params
   into a geometry's 3-slot arrays, right-aligned; missing dims get 1 (0 pad). */
static void right_align(int32_t nsp, const int64_t *src, int64_t fill, int64_t *dst) {
  for (int32_t d = 0; d < 3; d++) dst[d] = d < 3 - nsp ? fill : src[d - (3 - nsp)];
}

/* The geometry of an op: the image is img_t's spatial dims, the columns
   col_sp (spatial sizes). lead is 1 for unbatched tensors, 2 otherwise. */
static void make_geom(conv_geom *g, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups,
                      int32_t nsp, const int64_t *img_sp, const int64_t *col_sp, const int64_t *k,
                      const int64_t *stride, const int64_t *pad, const int64_t *dil) {
  memset(g, 0, sizeof *g);
  g->dtype = dtype;
  g->n = n;
  g->img_c = img_c;
  g->col_c = col_c;
  g->groups = groups;
  right_align(nsp, img_sp, 1, g->img);
  right_align(nsp, col_sp, 1, g->col);
  right_align(nsp, k, 1, g->k);
  right_align(nsp, stride, 1, g->stride);
  right_align(nsp, pad, 0, g->pad);
  right_align(nsp, dil, 1, g->dil);
  geom_finish(g);
}

/* BLAS takes int sizes and leading dims. */
static lm_status check_blas_limits(lm_ctx *ctx, const char *op, const conv_geom *g) {
  /* mg x K: the rows of the reversed step (see scatter) */
  if (g->col_sz > INT_MAX || g->img_sz > INT_MAX || g->ckg > INT_MAX || g->mg * g->ksz > INT_MAX)
    return lm_err(ctx, LM_E_UNSUPPORTED, "%s: a matrix of the convolution exceeds BLAS's 32-bit sizes", op);
  return LM_OK;
}

/* A contiguous tensor of the given shape (lead dims then spatial). */
static lm_status new_out(lm_ctx *ctx, const char *op, int32_t device, int32_t dtype, bool batched, int64_t n, int64_t c, int32_t nsp,
                         const int64_t *sp, lm_tensor **out) {
  int64_t shape[LM_MAX_DIMS];
  int32_t nd = 0;
  if (batched) shape[nd++] = n;
  shape[nd++] = c;
  for (int32_t d = 0; d < nsp; d++) shape[nd++] = sp[d];
  return lm_new_on(ctx, op, device, dtype, nd, shape, out);
}

/* Parameters kept in a node: ip[0] nsp, [1] groups, [2] batched, then 3
   slots each for stride, padding before, dilation. */
enum { IP_NSP, IP_GROUPS, IP_BATCHED, IP_STRIDE, IP_PAD = IP_STRIDE + 3, IP_DIL = IP_PAD + 3 };

static void save_params(lm_node *node, int32_t nsp, int64_t groups, bool batched, const int64_t *stride,
                        const int64_t *pad, const int64_t *dil) {
  node->ip[IP_NSP] = nsp;
  node->ip[IP_GROUPS] = groups;
  node->ip[IP_BATCHED] = batched;
  for (int32_t d = 0; d < nsp; d++) {
    node->ip[IP_STRIDE + d] = stride[d];
    node->ip[IP_PAD + d] = pad[d];
    node->ip[IP_DIL + d] = dil[d];
  }
}

/* What the CPU's GEMMs read of operand t (contiguous): under autocast a
   copy rounded to the low precision, else t itself (+1 either way). On a
   device the backend's gemm_lowp rounds instead. */
static lm_status gemm_operand(lm_ctx *ctx, const char *op, const conv_geom *g, const lm_tensor *t, lm_tensor **out) {
  if (g->lowp && lm_device_of(t) == LM_CPU) return lm_lowp_copy(ctx, op, t, g->lowp, out);
  lm_tensor_retain((lm_tensor *)t);
  *out = (lm_tensor *)t;
  return LM_OK;
}

/* The gradient of output 0 as a contiguous tensor (+1). */
static lm_status grad_out_contiguous(lm_ctx *ctx, lm_tensor *const *gout, lm_tensor **out) {
  return lm_contiguous(ctx, gout[0], out);
}

/* ---- convolution ---- */

/* Both directions' backward. A convolution reads x as the image side and
   writes y on the column side (x: N x Cin x img, w: Cout x Cin/g x k); a
   transposed one the other way round (x: N x Cin x col, w: Cin x Cout/g x
   k). The input gradient runs the opposite direction of the forward. */
static lm_status backward_of(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin, bool transposed) {
  const char *op = transposed ? "conv_transpose" : "conv";
  const lm_tensor *sx = node->saved[0], *sw = node->saved[1], *x = sx, *w = sw;
  int32_t nsp = (int32_t)node->ip[IP_NSP];
  bool batched = node->ip[IP_BATCHED];
  int32_t lead = batched ? 2 : 1;
  int64_t groups = node->ip[IP_GROUPS];
  int64_t n = batched ? x->shape[0] : 1, cin = x->shape[lead - 1];
  int64_t cout = transposed ? w->shape[1] * groups : w->shape[0];
  lm_tensor *dy = NULL, *dx = NULL, *dw = NULL, *dyr = NULL, *xr = NULL, *wr = NULL;
  lm_status st = grad_out_contiguous(ctx, gout, &dy);
  if (st) return st;
  conv_geom g;
  if (transposed)
    make_geom(&g, x->dtype, n, cout, cin, groups, nsp, dy->shape + lead, x->shape + lead, w->shape + 2,
              node->ip + IP_STRIDE, node->ip + IP_PAD, node->ip + IP_DIL);
  else
    make_geom(&g, x->dtype, n, cin, cout, groups, nsp, x->shape + lead, dy->shape + lead, w->shape + 2,
              node->ip + IP_STRIDE, node->ip + IP_PAD, node->ip + IP_DIL);
  g.lowp = node->autocast; /* the forward's precision (run_node set it on ctx too) */
  if ((st = gemm_operand(ctx, op, &g, dy, &dyr)) || (st = gemm_operand(ctx, op, &g, sx, &xr)) ||
      (st = gemm_operand(ctx, op, &g, sw, &wr)))
    goto fail;
  x = xr;
  w = wr;
  if (node->needs[0]) {
    if ((st = lm_new_on(ctx, op, lm_device_of(x), x->dtype, x->ndim, x->shape, &dx))) goto fail;
    if ((st = transposed ? gather(ctx, op, &g, dyr, w, NULL, dx) : scatter(ctx, op, &g, dyr, w, NULL, dx))) goto fail;
  }
  if (node->needs[1]) {
    if ((st = lm_new_on(ctx, op, lm_device_of(w), w->dtype, w->ndim, w->shape, &dw))) goto fail;
    if ((st = transposed ? weight_grad(ctx, op, &g, x, dyr, dw) : weight_grad(ctx, op, &g, dyr, x, dw))) goto fail;
  }
  /* the bias is no GEMM operand: its gradient sums the f32 dy */
  if (node->needs[2] && (st = bias_grad(ctx, op, dy, n, cout, transposed ? g.img_sz : g.col_sz, &gin[2]))) goto fail;
  gin[0] = dx;
  gin[1] = dw;
  lm_tensor_release(dy);
  lm_tensor_release(dyr);
  lm_tensor_release(xr);
  lm_tensor_release(wr);
  return LM_OK;
fail:
  lm_tensor_release(dy);
  lm_tensor_release(dyr);
  lm_tensor_release(xr);
  lm_tensor_release(wr);
  lm_tensor_release(dx);
  lm_tensor_release(dw);
  return st;
}

static lm_status conv_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  return backward_of(ctx, node, gout, gin, false);
}

static lm_status conv_transpose_backward(lm_ctx *ctx, lm_node *node, lm_tensor *const *gout, lm_tensor **gin) {
  return backward_of(ctx, node, gout, gin, true);
}

/* Runs a convolution (gather) or a transposed one (scatter) on contiguous
   operands into a new output and records it for autograd. */
static lm_status run_conv(lm_ctx *ctx, const char *op, bool transposed, const conv_geom *g, const lm_tensor *x,
                          const lm_tensor *w, const lm_tensor *b, bool batched, int64_t n, int64_t cout, int32_t nsp,
                          const int64_t *osp, const int64_t *stride, const int64_t *pad, const int64_t *dilation,
                          int64_t groups, lm_tensor **out) {
  lm_status st;
  lm_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *xr = NULL, *wr = NULL;
  if ((st = lm_contiguous(ctx, x, &xc)) || (st = lm_contiguous(ctx, w, &wc))) goto done;
  if (b && (st = lm_contiguous(ctx, b, &bc))) goto done;
  if ((st = gemm_operand(ctx, op, g, xc, &xr)) || (st = gemm_operand(ctx, op, g, wc, &wr))) goto done;
  if ((st = new_out(ctx, op, lm_device_of(x), x->dtype, batched, n, cout, nsp, osp, &y))) goto done;
  if ((st = transposed ? scatter(ctx, op, g, xr, wr, bc, y) : gather(ctx, op, g, xr, wr, bc, y))) goto done;

  lm_node *node;
  const lm_tensor *ins[3] = {x, w, b};
  if ((st = lm_record(ctx, transposed ? LM_OP_CONV_TRANSPOSE : LM_OP_CONV,
                      transposed ? conv_transpose_backward : conv_backward, 3, ins, 1, &y, &node)))
    goto done;
  if (node) {
    /* the f32 operands: the backward rounds them again under node->autocast */
    if ((st = lm_save(ctx, node, 0, xc)) || (st = lm_save(ctx, node, 1, wc))) goto done;
    save_params(node, nsp, groups, batched, stride, pad, dilation);
    node->autocast = g->lowp;
  }
done:
  lm_tensor_release(xr);
  lm_tensor_release(wr);
  lm_tensor_release(xc);
  lm_tensor_release(wc);
  lm_tensor_release(bc);
  if (st) {
    lm_tensor_release(y);
    return st;
  }
  return lm_finish_out(y, out);
}

lm_status lm_conv(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *w, const lm_tensor *b, int32_t nsp,
                  const int64_t *stride, const int64_t *pad_lo, const int64_t *pad_hi, const int64_t *dilation,
                  int64_t groups, lm_tensor **out) {
  const char *op = "conv";
  lm_status st = check_args(ctx, op, x, w, b, nsp, stride, dilation, groups);
  if (st) return st;
  char xs[LM_SHAPE_BUF], ws[LM_SHAPE_BUF];
  bool batched = x->ndim == nsp + 2;
  int32_t lead = batched ? 2 : 1;
  int64_t n = batched ? x->shape[0] : 1, cin = x->shape[lead - 1], cout = w->shape[0];
  if (cin % groups || cout % groups)
    return lm_err(ctx, LM_E_SHAPE, "%s: %lld input and %lld output channels, expected both divisible by groups = %lld",
                  op, (long long)cin, (long long)cout, (long long)groups);
  if (w->shape[1] * groups != cin)
    return lm_err(ctx, LM_E_SHAPE,
                  "%s: input %s has %lld channels, weight %s expects %lld (%lld per group x %lld groups)", op,
                  LM_SHP(x, xs), (long long)cin, LM_SHP(w, ws), (long long)(w->shape[1] * groups),
                  (long long)w->shape[1], (long long)groups);
  if (b && (b->ndim != 1 || b->shape[0] != cout))
    return lm_err(ctx, LM_E_SHAPE, "%s: bias has shape %s, expected %lld (one per output channel)", op, LM_SHP(b, xs),
                  (long long)cout);
  int64_t osp[3];
  for (int32_t d = 0; d < nsp; d++) {
    if (pad_lo[d] < 0 || pad_hi[d] < 0) {
      if (pad_lo[d] == pad_hi[d])
        return lm_err(ctx, LM_E_ARG, "%s: padding %lld in spatial dim %d, expected values >= 0", op,
                      (long long)pad_lo[d], d);
      return lm_err(ctx, LM_E_ARG, "%s: padding %lld before and %lld after spatial dim %d, expected values >= 0", op,
                    (long long)pad_lo[d], (long long)pad_hi[d], d);
    }
    int64_t span = dilation[d] * (w->shape[2 + d] - 1) + 1, padded = x->shape[lead + d] + pad_lo[d] + pad_hi[d];
    if (padded < span)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s padded to %lld in spatial dim %d is smaller than the kernel's "
                    "span %lld (weight %s), expected at least the span", op, LM_SHP(x, xs), (long long)padded, d,
                    (long long)span, LM_SHP(w, ws));
    osp[d] = (padded - span) / stride[d] + 1;
  }
  conv_geom g;
  make_geom(&g, x->dtype, n, cin, cout, groups, nsp, x->shape + lead, osp, w->shape + 2, stride, pad_lo, dilation);
  if ((st = check_blas_limits(ctx, op, &g))) return st;
  g.lowp = lm_autocast_for(ctx, x->dtype);

  return run_conv(ctx, op, false, &g, x, w, b, batched, n, cout, nsp, osp, stride, pad_lo, dilation, groups, out);
}

/* ---- transposed convolution ---- */


lm_status lm_conv_transpose(lm_ctx *ctx, const lm_tensor *x, const lm_tensor *w, const lm_tensor *b, int32_t nsp,
                            const int64_t *stride, const int64_t *padding, const int64_t *output_padding,
                            const int64_t *dilation, int64_t groups, lm_tensor **out) {
  const char *op = "conv_transpose";
  lm_status st = check_args(ctx, op, x, w, b, nsp, stride, dilation, groups);
  if (st) return st;
  char xs[LM_SHAPE_BUF], ws[LM_SHAPE_BUF];
  bool batched = x->ndim == nsp + 2;
  int32_t lead = batched ? 2 : 1;
  int64_t n = batched ? x->shape[0] : 1, cin = x->shape[lead - 1], cout = w->shape[1] * groups;
  if (w->shape[0] != cin)
    return lm_err(ctx, LM_E_SHAPE,
                  "%s: input %s has %lld channels, weight %s expects %lld (weight is in x out/groups x %s)", op,
                  LM_SHP(x, xs), (long long)cin, LM_SHP(w, ws), (long long)w->shape[0], kernel_names[nsp]);
  if (cin % groups)
    return lm_err(ctx, LM_E_SHAPE, "%s: %lld input channels, expected a multiple of groups = %lld", op, (long long)cin,
                  (long long)groups);
  if (b && (b->ndim != 1 || b->shape[0] != cout))
    return lm_err(ctx, LM_E_SHAPE, "%s: bias has shape %s, expected %lld (one per output channel)", op, LM_SHP(b, xs),
                  (long long)cout);
  int64_t osp[3];
  for (int32_t d = 0; d < nsp; d++) {
    if (padding[d] < 0)
      return lm_err(ctx, LM_E_ARG, "%s: padding %lld in spatial dim %d, expected a value >= 0", op,
                    (long long)padding[d], d);
    if (output_padding[d] < 0 || (output_padding[d] >= stride[d] && output_padding[d] >= dilation[d]))
      return lm_err(ctx, LM_E_ARG, "%s: output_padding %lld in spatial dim %d, expected a value >= 0 and smaller than "
                    "the stride (%lld) or the dilation (%lld)", op, (long long)output_padding[d], d,
                    (long long)stride[d], (long long)dilation[d]);
    osp[d] = (x->shape[lead + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (w->shape[2 + d] - 1) +
             output_padding[d] + 1;
    if (osp[d] < 1)
      return lm_err(ctx, LM_E_SHAPE, "%s: input %s with weight %s gives output size %lld in spatial dim %d, expected "
                    "at least 1 (less padding?)", op, LM_SHP(x, xs), LM_SHP(w, ws), (long long)osp[d], d);
  }
  conv_geom g;
  make_geom(&g, x->dtype, n, cout, cin, groups, nsp, osp, x->shape + lead, w->shape + 2, stride, padding, dilation);
  if ((st = check_blas_limits(ctx, op, &g))) return st;
  g.lowp = lm_autocast_for(ctx, x->dtype);

  return run_conv(ctx, op, true, &g, x, w, b, batched, n, cout, nsp, osp, stride, padding, dilation, groups, out);
}
