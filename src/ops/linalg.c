/* linalg.c - matmul and addmm on OpenBLAS (f32, f64).
 *
 * Every operand is handed to BLAS in place when its matrix dims can be read
 * as row-major (strides (ld, 1): NoTrans) or column-major (strides (1, ld):
 * Trans); only other layouts are copied to contiguous first. Batch dims
 * broadcast and are walked with pointer offsets, so an expanded operand is
 * never materialised. */
#include "../core/internal.h"
#include <limits.h>
#include <string.h>

/* The CBLAS entry points used, declared here so the build needs no include
   path for Debian's openblas-pthread/cblas.h. The enums are ints in the ABI,
   blasint is int in the 32-bit-index OpenBLAS that -lopenblas links. */
enum { CBLAS_ROW_MAJOR_ = 101, CBLAS_NO_TRANS_ = 111, CBLAS_TRANS_ = 112 };
extern void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc);
extern void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha, const double *a, int lda,
                        const double *b, int ldb, double beta, double *c, int ldc);
extern float cblas_sdot(int n, const float *x, int incx, const float *y, int incy);
extern double cblas_ddot(int n, const double *x, int incx, const double *y, int incy);

/* One operand as BLAS reads it: a rows x cols matrix per batch position. */
typedef struct mm_operand {
  const char *data;
  bool trans;
  int64_t ld;
  int64_t bstride[LM_MAX_DIMS]; /* elements, per result batch dim; 0 = broadcast */
} mm_operand;

void lm_gemm(int32_t dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const char *a,
             int64_t lda, const char *b, int64_t ldb, double beta, char *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) { /* BLAS refuses lda = 0; an empty sum leaves beta * c */
    int64_t es = lm_dtype_size(dtype);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        char *p = c + (i * ldc + j) * es;
        lm_write_from_double(dtype, p, beta == 0 ? 0 : beta * lm_read_as_double(dtype, p));
      }
    return;
  }
  int ta_ = ta ? CBLAS_TRANS_ : CBLAS_NO_TRANS_, tb_ = tb ? CBLAS_TRANS_ : CBLAS_NO_TRANS_;
  if (dtype == LM_F32)
    cblas_sgemm(CBLAS_ROW_MAJOR_, ta_, tb_, (int)m, (int)n, (int)k, (float)alpha, (const float *)a, (int)lda,
                (const float *)b, (int)ldb, (float)beta, (float *)c, (int)ldc);
  else
    cblas_dgemm(CBLAS_ROW_MAJOR_, ta_, tb_, (int)m, (int)n, (int)k, alpha, (const double *)a, (int)lda,
                (const double *)b, (int)ldb, beta, (double *)c, (int)ldc);
}

/* How BLAS can read an r x c matrix with strides (rs, cs) without a copy.
   Strides of size-1 dims never matter, so they are chosen freely. */
static bool blas_layout(int64_t r, int64_t c, int64_t rs, int64_t cs, bool *trans, int64_t *ld) {
  int64_t r1 = r > 1 ? r : 1, c1 = c > 1 ? c : 1;
  if ((c == 1 || cs == 1) && (r == 1 || rs >= c1)) {
    *trans = false;
    *ld = r == 1 ? c1 : rs;
  } else if ((r == 1 || rs == 1) && (c == 1 || cs >= r1)) {
    *trans = true;
    *ld = c == 1 ? r1 : cs;
  } else {
    return false;
  }
  return *ld <= INT_MAX;
}

/* Plans operand t of a matmul. A 1-D a is a 1 x K row, a 1-D b a K x 1
   column; batch dims are t's leading dims aligned to the result's right. */
static bool plan_operand(const lm_tensor *t, bool is_b, int32_t nbatch, const int64_t *bshape, mm_operand *p) {
  int32_t nd = t->ndim;
  int64_t r, c, rs, cs;
  if (nd == 1) {
    r = is_b ? t->shape[0] : 1;
    c = is_b ? 1 : t->shape[0];
    rs = is_b ? t->stride[0] : c;
    cs = is_b ? 1 : t->stride[0];
  } else {
    r = t->shape[nd - 2], c = t->shape[nd - 1];
    rs = t->stride[nd - 2], cs = t->stride[nd - 1];
  }
  if (!blas_layout(r, c, rs, cs, &p->trans, &p->ld)) return false;
  p->data = lm_data(t);
  int32_t tb = nd > 2 ? nd - 2 : 0; /* t's own batch dims */
  for (int32_t i = 0; i < nbatch; i++) {
    int32_t j = i - (nbatch - tb);
    p->bstride[i] = (j < 0 || t->shape[j] != bshape[i]) ? 0 : t->stride[j];
  }
  return true;
}

/* When b is the same matrix for every batch and a's rows run evenly through
   its batch dims, all batches are one (B*M) x K @ K x N product (the output
   is contiguous, so its rows line up). Returns that matrix's row stride. */
static bool fold_batches(const mm_operand *a, const mm_operand *b, int32_t nbatch, const int64_t *bshape, int64_t m,
                         int64_t k, int64_t *ld) {
  if (a->trans || nbatch == 0) return false;
  for (int32_t i = 0; i < nbatch; i++)
    if (bshape[i] != 1 && b->bstride[i] != 0) return false;
  bool have = false;
  int64_t row = 0, next = 0;
  for (int32_t i = nbatch; i >= 0; i--) { /* i == nbatch: the M dim itself */
    int64_t n = i == nbatch ? m : bshape[i], s = i == nbatch ? a->ld : a->bstride[i];
    if (n == 1) continue;
    if (!have) {
      have = true;
      row = s;
      next = s * n;
    } else if (s != next) {
      return false;
    } else {
      next *= n;
    }
  }
  if (!have) row = k > 1 ? k : 1;
  if (row < (k > 1 ? k : 1) || row > INT_MAX) return false;
  *ld = row;
  return true;
}

/* batch products c_i = alpha * op(a_i) @ op(b_i) + beta * c_i, a_i at
   a + i * sa elements (b, c alike): on the CPU one BLAS call each, on a
   device one call of its backend's batched GEMM (its low-precision one
   when lowp: the CPU rounds its operands before, see with_lowp). */
static lm_status gemm_call(lm_ctx *ctx, const char *op, int32_t dev, int32_t lowp, int32_t dt, bool ta, bool tb,
                           int64_t m, int64_t n, int64_t k, double alpha, const char *a, int64_t lda, int64_t sa,
                           const char *b, int64_t ldb, int64_t sb, double beta, char *c, int64_t ldc, int64_t sc,
                           int64_t batch) {
  if (dev == LM_CPU) {
    int64_t es = lm_dtype_size(dt);
    for (int64_t i = 0; i < batch; i++)
      lm_gemm(dt, ta, tb, m, n, k, alpha, a + i * sa * es, lda, b + i * sb * es, ldb, beta, c + i * sc * es, ldc);
    return LM_OK;
  }
  const lm_backend *be;
  lm_status st;
  if (lowp) {
    if (!(st = LM_BACKEND_FOR(ctx, op, dev, gemm_lowp, &be)) &&
        (st = be->gemm_lowp(lowp, dt, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch)))
      st = lm_backend_fail(ctx, op, be, st);
    return st;
  }
  st = LM_BACKEND_FOR(ctx, op, dev, gemm, &be);
  if (!st && (st = be->gemm(dt, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch)))
    st = lm_backend_fail(ctx, op, be, st);
  return st;
}

/* res (contiguous, batch x M x N) = alpha * a @ b + beta * res. */
static lm_status gemm_batched(lm_ctx *ctx, const char *op, int32_t lowp, const lm_tensor *a, const lm_tensor *b,
                              int32_t nbatch, const int64_t *bshape, int64_t m, int64_t n, int64_t k, double alpha,
                              double beta, lm_tensor *res) {
  int64_t nout = lm_numel(res);
  int32_t dt = res->dtype, es = lm_dtype_size(dt), dev = lm_device_of(res);
  if (nout == 0) return LM_OK;
  if (k == 0 && dev != LM_CPU) /* an empty sum: only the beta term is left */
    return beta == 0 ? lm_fill(ctx, res, 0) : lm_binary_scalar(ctx, LM_OP_MUL, res, beta, 0, res, NULL);
  if (k == 0) {
    char *p = lm_data(res);
    for (int64_t i = 0; i < nout; i++)
      lm_write_from_double(dt, p + i * es, beta == 0 ? 0 : beta * lm_read_as_double(dt, p + i * es));
    return LM_OK;
  }
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
    return lm_err(ctx, LM_E_UNSUPPORTED, "%s: matrix sizes %lldx%lld @ %lldx%lld exceed BLAS's 32-bit limit", op,
                  (long long)m, (long long)k, (long long)k, (long long)n);
  lm_status st = LM_OK;
  lm_tensor *ca = NULL, *cb = NULL;
  mm_operand pa, pb;
  if (!plan_operand(a, false, nbatch, bshape, &pa)) {
    if ((st = lm_contiguous(ctx, a, &ca))) goto done;
    if (!plan_operand(ca, false, nbatch, bshape, &pa)) goto too_big;
  }
  if (!plan_operand(b, true, nbatch, bshape, &pb)) {
    if ((st = lm_contiguous(ctx, b, &cb))) goto done;
    if (!plan_operand(cb, true, nbatch, bshape, &pb)) goto too_big;
  }
  char *out = lm_data(res);
  int64_t lda;
  if (fold_batches(&pa, &pb, nbatch, bshape, m, k, &lda) && nout / n <= INT_MAX) {
    st = gemm_call(ctx, op, dev, lowp, dt, false, pb.trans, nout / n, n, k, alpha, pa.data, lda, 0, pb.data, pb.ld, 0, beta,
                   out, n, 0, 1);
    goto done;
  }
  /* the innermost batch dim is one batched call; the outer ones a loop */
  int32_t outer_nd = nbatch > 0 ? nbatch - 1 : 0;
  int64_t inner = nbatch > 0 ? bshape[nbatch - 1] : 1, nb = nout / (m * n * inner);
  int64_t sa = nbatch > 0 ? pa.bstride[nbatch - 1] : 0, sb = nbatch > 0 ? pb.bstride[nbatch - 1] : 0;
  int64_t idx[LM_MAX_DIMS] = {0}, oa = 0, ob = 0;
  for (int64_t bi = 0; bi < nb && !st; bi++) {
    st = gemm_call(ctx, op, dev, lowp, dt, pa.trans, pb.trans, m, n, k, alpha, pa.data + oa * es, pa.ld, sa,
                   pb.data + ob * es, pb.ld, sb, beta, out + bi * inner * m * n * es, n, m * n, inner);
    for (int32_t d = outer_nd - 1; d >= 0; d--) { /* next outer batch position */
      oa += pa.bstride[d];
      ob += pb.bstride[d];
      if (++idx[d] < bshape[d]) break;
      oa -= pa.bstride[d] * bshape[d];
      ob -= pb.bstride[d] * bshape[d];
      idx[d] = 0;
    }
  }
  goto done;
too_big:
  st = lm_err(ctx, LM_E_UNSUPPORTED, "%s: leading dimension exceeds BLAS's 32-bit limit", op);
done:
  lm_tensor_release(ca);
  lm_tensor_release(cb);
  return st;
}

/* NULL, device and dtype checks shared by both ops; *dev is where they run. */
static lm_status check_operands(lm_ctx *ctx, const char *op, int32_t n, const lm_tensor *const *ts, int32_t *dev) {
  static const char *const names[] = {"operand 0", "operand 1", "operand 2"};
  for (int32_t i = 0; i < n; i++) {
    lm_status st = lm_check_arg(ctx, op, ts[i], names[i]);
    if (st) return st;
  }
  lm_status st = lm_op_device(ctx, op, n, ts, names, false, dev);
  if (st) return st;
  for (int32_t i = 1; i < n; i++) {
    int32_t x = ts[0]->dtype, y = ts[i]->dtype;
    if (!lm_dtype_is_float(x) || !lm_dtype_is_float(y))
      return lm_err(ctx, LM_E_DTYPE, "%s: dtypes %s and %s are not supported (expected f32 or f64)", op,
                    lm_dtype_name(x), lm_dtype_name(y));
    if (x != y)
      return lm_err(ctx, LM_E_DTYPE, "%s: dtypes %s and %s differ (expected both f32 or both f64)", op,
                    lm_dtype_name(x), lm_dtype_name(y));
  }
  return LM_OK;
}

/* 1-D @ 1-D: a 0-d dot product. */
static lm_status dot(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, lm_tensor **out) {
  lm_tensor *res = NULL, *ca = NULL, *cb = NULL;
  lm_status st = lm_new(ctx, "matmul", a->dtype, 0, NULL, &res);
  if (st) return st;
  int64_t n = a->shape[0];
  if (n > INT_MAX) {
    st = lm_err(ctx, LM_E_UNSUPPORTED, "matmul: dot of length %lld exceeds BLAS's 32-bit limit", (long long)n);
    goto done;
  }
  /* BLAS walks negative increments from the other end; keep to positive ones */
  if (n > 1 && (a->stride[0] < 1 || a->stride[0] > INT_MAX)) {
    if ((st = lm_contiguous(ctx, a, &ca))) goto done;
    a = ca;
  }
  if (n > 1 && (b->stride[0] < 1 || b->stride[0] > INT_MAX)) {
    if ((st = lm_contiguous(ctx, b, &cb))) goto done;
    b = cb;
  }
  int inca = n > 1 ? (int)a->stride[0] : 1, incb = n > 1 ? (int)b->stride[0] : 1;
  if (a->dtype == LM_F32)
    *(float *)lm_data(res) = n ? cblas_sdot((int)n, (const float *)lm_data(a), inca, (const float *)lm_data(b), incb) : 0;
  else
    *(double *)lm_data(res) = n ? cblas_ddot((int)n, (const double *)lm_data(a), inca, (const double *)lm_data(b), incb) : 0;
done:
  lm_tensor_release(ca);
  lm_tensor_release(cb);
  if (st) lm_tensor_release(res);
  else lm_finish_out(res, out);
  return st;
}

static lm_status matmul_run(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, int32_t dev, int32_t lowp,
                            lm_tensor **out);

/* Under autocast (lowp, f32 operands), the CPU multiplies copies of a and b
   rounded to the low precision (*ra, *rb: +1, else NULL); a device's
   gemm_lowp entry rounds them itself. Returns the mode left for the GEMM. */
static lm_status with_lowp(lm_ctx *ctx, const char *op, int32_t dev, int32_t lowp, const lm_tensor **a,
                           const lm_tensor **b, lm_tensor **ra, lm_tensor **rb, int32_t *gemm_lowp) {
  *ra = *rb = NULL;
  *gemm_lowp = dev == LM_CPU ? LM_AUTOCAST_OFF : lowp;
  if (!lowp || dev != LM_CPU) return LM_OK;
  lm_status st = lm_lowp_copy(ctx, op, *a, lowp, ra);
  if (!st) st = lm_lowp_copy(ctx, op, *b, lowp, rb);
  if (st) {
    lm_tensor_release(*ra);
    *ra = NULL;
    return st;
  }
  *a = *ra;
  *b = *rb;
  return LM_OK;
}

static lm_status matmul_forward(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, lm_tensor **out) {
  const lm_tensor *ts[2] = {a, b};
  int32_t dev, lowp;
  lm_status st = check_operands(ctx, "matmul", 2, ts, &dev);
  if (st) return st;
  lm_tensor *ra, *rb;
  if ((st = with_lowp(ctx, "matmul", dev, lm_autocast_for(ctx, a->dtype), &a, &b, &ra, &rb, &lowp))) return st;
  st = matmul_run(ctx, a, b, dev, lowp, out);
  lm_tensor_release(ra);
  lm_tensor_release(rb);
  return st;
}

static lm_status matmul_run(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, int32_t dev, int32_t lowp,
                            lm_tensor **out) {
  lm_status st;
  char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF];
  if (a->ndim == 0 || b->ndim == 0)
    return lm_err(ctx, LM_E_SHAPE, "matmul: both operands need at least 1 dimension, got %s and %s", LM_SHP(a, x),
                  LM_SHP(b, y));
  bool a1 = a->ndim == 1, b1 = b->ndim == 1;
  int64_t m = a1 ? 1 : a->shape[a->ndim - 2], k = a->shape[a->ndim - 1];
  int64_t k2 = b1 ? b->shape[0] : b->shape[b->ndim - 2], n = b1 ? 1 : b->shape[b->ndim - 1];
  if (k != k2)
    return lm_err(ctx, LM_E_SHAPE, "matmul: shapes %s and %s cannot be multiplied (%lld vs %lld)", LM_SHP(a, x),
                  LM_SHP(b, y), (long long)k, (long long)k2);
  if (a1 && b1 && dev == LM_CPU) return dot(ctx, a, b, out);
  /* batch dims broadcast, aligned on the right */
  int32_t na = a1 ? 0 : a->ndim - 2, nb = b1 ? 0 : b->ndim - 2, nbatch = na > nb ? na : nb;
  int64_t shape[LM_MAX_DIMS];
  for (int32_t i = 0; i < nbatch; i++) {
    int64_t sa = i < nbatch - na ? 1 : a->shape[i - (nbatch - na)];
    int64_t sb = i < nbatch - nb ? 1 : b->shape[i - (nbatch - nb)];
    if (sa != sb && sa != 1 && sb != 1)
      return lm_err(ctx, LM_E_SHAPE, "matmul: batch dimensions of %s and %s cannot broadcast (%lld vs %lld)",
                    LM_SHP(a, x), LM_SHP(b, y), (long long)sa, (long long)sb);
    shape[i] = sa == 1 ? sb : sa;
  }
  /* a 1-D operand's added dim is left out of the result */
  int32_t nd = nbatch;
  if (!a1) shape[nd++] = m;
  if (!b1) shape[nd++] = n;
  lm_tensor *res;
  if ((st = lm_new_on(ctx, "matmul", dev, a->dtype, nd, shape, &res))) return st;
  st = gemm_batched(ctx, "matmul", lowp, a, b, nbatch, shape, m, n, k, 1.0, 0.0, res);
  if (st) {
    lm_tensor_release(res);
    return st;
  }
  return lm_finish_out(res, out);
}

static lm_status addmm_forward(lm_ctx *ctx, const lm_tensor *c, const lm_tensor *a, const lm_tensor *b, double beta,
                               double alpha, lm_tensor **out) {
  const lm_tensor *ts[3] = {a, b, c};
  int32_t dev, lowp;
  lm_status st = check_operands(ctx, "addmm", 3, ts, &dev);
  if (st) return st;
  lm_tensor *ra = NULL, *rb = NULL, *res = NULL;
  char x[LM_SHAPE_BUF], y[LM_SHAPE_BUF], z[LM_SHAPE_BUF], w[LM_SHAPE_BUF];
  if (a->ndim != 2 || b->ndim != 2)
    return lm_err(ctx, LM_E_SHAPE, "addmm: expected 2-D matrices, got %s and %s", LM_SHP(a, x), LM_SHP(b, y));
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  if (b->shape[0] != k)
    return lm_err(ctx, LM_E_SHAPE, "addmm: shapes %s and %s cannot be multiplied (%lld vs %lld)", LM_SHP(a, x),
                  LM_SHP(b, y), (long long)k, (long long)b->shape[0]);
  int64_t shape[2] = {m, n};
  bool fits = c->ndim <= 2;
  for (int32_t d = 0; fits && d < c->ndim; d++) {
    int64_t s = c->shape[c->ndim - 1 - d];
    fits = s == 1 || s == shape[1 - d];
  }
  if (!fits)
    return lm_err(ctx, LM_E_SHAPE, "addmm: input of shape %s does not broadcast to the product's %s (%s @ %s)",
                  LM_SHP(c, z), lm_shape_str(2, shape, x, sizeof x), LM_SHP(a, y), LM_SHP(b, w));
  if ((st = with_lowp(ctx, "addmm", dev, lm_autocast_for(ctx, a->dtype), &a, &b, &ra, &rb, &lowp))) return st;
  if ((st = lm_new_on(ctx, "addmm", dev, a->dtype, 2, shape, &res))) goto fail;
  /* BLAS does not read C when beta is 0, so NaN in c stays out (as in torch) */
  if (beta != 0 && (st = lm_copy_(ctx, res, c))) goto fail;
  if ((st = gemm_batched(ctx, "addmm", lowp, a, b, 0, NULL, m, n, k, alpha, beta, res))) goto fail;
  lm_tensor_release(ra);
  lm_tensor_release(rb);
  return lm_finish_out(res, out);
fail:
  lm_tensor_release(ra);
  lm_tensor_release(rb);
  lm_tensor_release(res);
  return st;
}

/* ---- autograd ---- */

/* x with a unit dimension inserted at dim when flag, else x itself (+1). */
static lm_status unit_dim(lm_ctx *ctx, const lm_tensor *x, bool flag, int32_t dim, lm_tensor **out) {
  if (flag) return lm_unsqueeze(ctx, x, dim, out);
  lm_tensor_retain((lm_tensor *)x);
  *out = (lm_tensor *)x;
  return LM_OK;
}

/* alpha * p summed to like's shape (and reshaped back from its 2-D form). */
static lm_status grad_to(lm_ctx *ctx, lm_tensor *p, const lm_tensor *like2, const lm_tensor *like, double alpha,
                         lm_tensor **out) {
  lm_tensor *s = NULL, *r = NULL;
  lm_status st = lm_sum_to(ctx, p, like2->ndim, like2->shape, &s);
  if (!st) st = lm_reshape(ctx, s, like->ndim, like->shape, &r);
  if (!st && alpha != 1) {
    lm_tensor *scaled;
    if (!(st = lm_binary_scalar(ctx, LM_OP_MUL, r, alpha, 0, NULL, &scaled))) {
      lm_tensor_release(r);
      r = scaled;
    }
  }
  lm_tensor_release(s);
  if (st) lm_tensor_release(r);
  else *out = r;
  return st;
}

/* d(a @ b): a 1-D operand is treated as a row (a) or column (b) matrix,
   and gradients over broadcast batch dimensions are summed. p[0] alpha. */
static lm_status matmul_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  const lm_tensor *a = n->saved[0], *b = n->saved[1];
  double alpha = n->op == LM_OP_ADDMM ? n->p[0] : 1;
  lm_tensor *a2 = NULL, *b2 = NULL, *g1 = NULL, *g2 = NULL, *t = NULL, *p = NULL;
  lm_status st;
  int32_t ia = n->op == LM_OP_ADDMM ? 1 : 0; /* addmm's inputs are (c, a, b) */
  bool a1 = a->ndim == 1, b1 = b->ndim == 1;
  if ((st = unit_dim(ctx, a, a1, 0, &a2)) || (st = unit_dim(ctx, b, b1, 1, &b2))) goto done;
  if ((st = unit_dim(ctx, gout[0], a1, gout[0]->ndim - (b1 ? 0 : 1), &g1))) goto done;
  if ((st = unit_dim(ctx, g1, b1, g1->ndim, &g2))) goto done;
  if (n->needs[ia]) {
    if ((st = lm_transpose(ctx, b2, -1, -2, &t)) || (st = lm_matmul(ctx, g2, t, &p))) goto done;
    if ((st = grad_to(ctx, p, a2, a, alpha, &gin[ia]))) goto done;
    lm_tensor_release(t); lm_tensor_release(p);
    t = p = NULL;
  }
  if (n->needs[ia + 1]) {
    if ((st = lm_transpose(ctx, a2, -1, -2, &t)) || (st = lm_matmul(ctx, t, g2, &p))) goto done;
    if ((st = grad_to(ctx, p, b2, b, alpha, &gin[ia + 1]))) goto done;
  }
  if (ia && n->needs[0]) {
    const int64_t *m = n->ip;
    lm_tensor *s;
    if ((st = lm_sum_to(ctx, gout[0], (int32_t)m[0], m + 2, &s))) goto done;
    st = lm_binary_scalar(ctx, LM_OP_MUL, s, n->p[1], 0, NULL, &gin[0]);
    lm_tensor_release(s);
  }
done:
  lm_tensor_release(a2); lm_tensor_release(b2); lm_tensor_release(g1); lm_tensor_release(g2);
  lm_tensor_release(t); lm_tensor_release(p);
  return st;
}

static lm_status record_mm(lm_ctx *ctx, int32_t op, int32_t nin, const lm_tensor *const *ins, const lm_tensor *a,
                           const lm_tensor *b, lm_tensor **out, double alpha, double beta) {
  lm_node *n;
  lm_status st = lm_record(ctx, op, matmul_backward, nin, ins, 1, out, &n);
  if (!st && n) {
    n->autocast = lm_autocast_for(ctx, a->dtype);
    n->p[0] = alpha;
    n->p[1] = beta;
    if (op == LM_OP_ADDMM) { /* c's shape, for its gradient */
      n->ip[0] = ins[0]->ndim;
      memcpy(n->ip + 2, ins[0]->shape, (size_t)ins[0]->ndim * sizeof *ins[0]->shape);
    }
    if (!(st = lm_save(ctx, n, 0, a))) st = lm_save(ctx, n, 1, b);
  }
  if (st) { lm_tensor_release(*out); *out = NULL; }
  return st;
}

lm_status lm_matmul(lm_ctx *ctx, const lm_tensor *a, const lm_tensor *b, lm_tensor **out) {
  lm_tensor *res;
  lm_status st = matmul_forward(ctx, a, b, &res);
  if (st) return st;
  const lm_tensor *ins[2] = {a, b};
  if ((st = record_mm(ctx, LM_OP_MATMUL, 2, ins, a, b, &res, 1, 0))) return st;
  return lm_finish_out(res, out);
}

lm_status lm_addmm(lm_ctx *ctx, const lm_tensor *c, const lm_tensor *a, const lm_tensor *b, double beta, double alpha,
                   lm_tensor **out) {
  lm_tensor *res;
  lm_status st = addmm_forward(ctx, c, a, b, beta, alpha, &res);
  if (st) return st;
  const lm_tensor *ins[3] = {c, a, b};
  if ((st = record_mm(ctx, LM_OP_ADDMM, 3, ins, a, b, &res, alpha, beta))) return st;
  return lm_finish_out(res, out);
}
