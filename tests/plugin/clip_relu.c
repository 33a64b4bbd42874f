/* clip_relu.c - a test plugin: y = min(max(x, 0), cap), params {cap}.
 *
 * Built without liblumen: everything comes through the host table. Compiled
 * with -DCLIP_RELU_ABI_MAJOR=99 it claims an ABI the host must refuse. */
#include "plugin.h"
#include <string.h>

#ifndef CLIP_RELU_ABI_MAJOR
#define CLIP_RELU_ABI_MAJOR LM_ABI_MAJOR
#endif

#define GRAIN 32768

static const char *dtype_name(int32_t d) {
  static const char *const names[] = { "f32", "f64", "i32", "i64", "u8", "bool" };
  return d >= 0 && d < LM_NDTYPES ? names[d] : "unknown";
}

typedef struct job {
  int32_t dtype;
  const void *x, *g;
  void *y;
  double cap;
} job;

/* Comparisons written so a NaN input gives NaN (forward) and a zero
   gradient (backward), as torch.clamp does. */
static void forward_span(void *arg, int64_t b, int64_t e) {
  const job *j = arg;
  if (j->dtype == LM_F32) {
    const float *x = j->x;
    float *y = j->y, cap = (float)j->cap;
    for (int64_t i = b; i < e; i++) {
      float v = x[i] < 0 ? 0 : x[i];
      y[i] = v > cap ? cap : v;
    }
  } else {
    const double *x = j->x;
    double *y = j->y, cap = j->cap;
    for (int64_t i = b; i < e; i++) {
      double v = x[i] < 0 ? 0 : x[i];
      y[i] = v > cap ? cap : v;
    }
  }
}

/* The gradient passes where 0 <= x <= cap: PyTorch's convention for clamp
   (the bounds themselves count as inside). */
static void backward_span(void *arg, int64_t b, int64_t e) {
  const job *j = arg;
  if (j->dtype == LM_F32) {
    const float *x = j->x, *g = j->g;
    float *y = j->y, cap = (float)j->cap;
    for (int64_t i = b; i < e; i++) y[i] = (x[i] >= 0 && x[i] <= cap) ? g[i] : 0.0f;
  } else {
    const double *x = j->x, *g = j->g;
    double *y = j->y, cap = j->cap;
    for (int64_t i = b; i < e; i++) y[i] = (x[i] >= 0 && x[i] <= cap) ? g[i] : 0.0;
  }
}

static lm_status check_args(const lm_host_api *host, lm_ctx *ctx, const lm_tensor *x, int32_t n_params, lm_tensor_info *xi) {
  if (n_params != 1)
    return host->set_error(ctx, LM_E_ARG, "clip_relu: expected 1 parameter (cap), got %d", (int)n_params);
  host->tensor_info(x, xi);
  if (xi->dtype != LM_F32 && xi->dtype != LM_F64)
    return host->set_error(ctx, LM_E_DTYPE, "clip_relu: x must be f32 or f64, got %s", dtype_name(xi->dtype));
  if (xi->device != LM_CPU)
    return host->set_error(ctx, LM_E_DEVICE, "clip_relu: x must be on the CPU");
  return LM_OK;
}

static lm_status clip_forward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out) {
  lm_tensor_info xi, ci;
  lm_tensor *xc = NULL, *y = NULL;
  lm_status st = check_args(host, ctx, in[0], n_params, &xi);
  if (st) goto done;
  if ((st = host->tensor_contiguous(ctx, in[0], &xc))) goto done;
  if ((st = host->tensor_empty(ctx, xi.dtype, xi.ndim, xi.shape, &y))) goto done;
  host->tensor_info(xc, &ci);
  lm_tensor_info yi;
  host->tensor_info(y, &yi);
  job j = { xi.dtype, ci.data, NULL, yi.data, params[0] };
  host->parallel_for(ctx, ci.numel, GRAIN, forward_span, &j);
  out[0] = y;
  y = NULL;
done:
  if (xc) host->tensor_release(xc);
  if (y) host->tensor_release(y);
  return st;
}

static lm_status clip_backward(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out, const double *params, int32_t n_params, lm_tensor **grad_in) {
  (void)out;
  lm_tensor_info xi, gi, ci, hi, ri;
  lm_tensor *xc = NULL, *gc = NULL, *r = NULL;
  lm_status st = check_args(host, ctx, in[0], n_params, &xi);
  if (st) goto done;
  host->tensor_info(grad_out[0], &gi);
  if (gi.dtype != xi.dtype) {
    st = host->set_error(ctx, LM_E_DTYPE, "clip_relu: gradient is %s, expected %s like x", dtype_name(gi.dtype), dtype_name(xi.dtype));
    goto done;
  }
  if (gi.ndim != xi.ndim || memcmp(gi.shape, xi.shape, (size_t)xi.ndim * sizeof xi.shape[0]) != 0) {
    st = host->set_error(ctx, LM_E_SHAPE, "clip_relu: gradient shape differs from x's (%d-D vs %d-D or other sizes)", (int)gi.ndim, (int)xi.ndim);
    goto done;
  }
  if ((st = host->tensor_contiguous(ctx, in[0], &xc))) goto done;
  if ((st = host->tensor_contiguous(ctx, grad_out[0], &gc))) goto done;
  if ((st = host->tensor_empty(ctx, xi.dtype, xi.ndim, xi.shape, &r))) goto done;
  host->tensor_info(xc, &ci);
  host->tensor_info(gc, &hi);
  host->tensor_info(r, &ri);
  job j = { xi.dtype, ci.data, hi.data, ri.data, params[0] };
  host->parallel_for(ctx, ci.numel, GRAIN, backward_span, &j);
  grad_in[0] = r;
  r = NULL;
done:
  if (xc) host->tensor_release(xc);
  if (gc) host->tensor_release(gc);
  if (r) host->tensor_release(r);
  return st;
}

static const lm_plugin_op ops[] = {
  { "clip_relu", 1, 1, clip_forward, clip_backward },
};

static const lm_plugin plugin = {
  .abi_major = CLIP_RELU_ABI_MAJOR,
  .abi_minor = LM_ABI_MINOR,
  .struct_size = sizeof(lm_plugin),
  .name = "clip_relu",
  .version = "1.0.0",
  .n_ops = 1,
  .ops = ops,
  .destroy = NULL,
};

__attribute__((visibility("default")))
lm_status lm_plugin_entry(const lm_host_api *host, uint32_t host_abi_major, const lm_plugin **out) {
  (void)host_abi_major; /* the host compares ABIs and names both in its message */
  /* every host field we call exists in a host at least as new as our header */
  if (!host || host->size < sizeof(lm_host_api)) return LM_E_ABI;
  *out = &plugin;
  return LM_OK;
}
