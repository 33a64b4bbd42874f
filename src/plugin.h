/* plugin.h - the ABI between the lumen host and its plugins.
 *
 * A plugin is a shared object exporting one symbol:
 *
 *   lm_status lm_plugin_entry(const lm_host_api *host, uint32_t host_abi_major,
 *                             const lm_plugin **out);
 *
 * Plugins never link liblumen: everything they need from the engine comes
 * through the host table. The table is append-only (a new minor version only
 * adds fields at its end), so a plugin checks host->size before using a
 * field newer than the ones it was built with.
 */
#ifndef LUMEN_PLUGIN_H
#define LUMEN_PLUGIN_H

#include "lumen.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_host_api {
  uint32_t abi_major;
  uint32_t abi_minor;
  size_t size; /* sizeof(lm_host_api) of the host */
  lm_status (*tensor_empty)(lm_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape, lm_tensor **out);
  lm_status (*tensor_contiguous)(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out);
  void (*tensor_retain)(lm_tensor *t);
  void (*tensor_release)(lm_tensor *t);
  void (*tensor_info)(const lm_tensor *t, lm_tensor_info *out);
  /* Sets the context's message and returns code. */
  lm_status (*set_error)(lm_ctx *ctx, lm_status code, const char *fmt, ...);
  void (*log)(lm_ctx *ctx, const char *msg);
  /* fn(arg, begin, end) over [0, n) on the engine's threads */
  void (*parallel_for)(lm_ctx *ctx, int64_t n, int64_t grain, void (*fn)(void *arg, int64_t begin, int64_t end), void *arg);
  int32_t (*abort_requested)(const lm_ctx *ctx);
  void *(*alloc)(lm_ctx *ctx, size_t nbytes);
  void (*free)(void *p, size_t nbytes);
} lm_host_api;

/* One op. forward makes its n_out outputs; backward (NULL when the op is not
   differentiable) makes one gradient per input (NULL entries allowed for
   inputs that take none). params are the op's numeric options. */
typedef struct lm_plugin_op {
  const char *name;
  int32_t n_in;
  int32_t n_out;
  lm_status (*forward)(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out);
  lm_status (*backward)(const lm_host_api *host, lm_ctx *ctx, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out, const double *params, int32_t n_params, lm_tensor **grad_in);
} lm_plugin_op;

typedef struct lm_plugin {
  uint32_t abi_major;  /* LM_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor;
  size_t struct_size; /* sizeof(lm_plugin) as the plugin saw it */
  const char *name;
  const char *version;
  int32_t n_ops;
  const lm_plugin_op *ops;
  void (*destroy)(void); /* may be NULL */
} lm_plugin;

typedef lm_status (*lm_plugin_entry_fn)(const lm_host_api *host, uint32_t host_abi_major, const lm_plugin **out);

#ifdef __cplusplus
}
#endif
#endif
