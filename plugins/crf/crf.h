/* crf.h - what the files of the crf plugin share (not a public header).
 *
 * The plugin reaches the engine only through the host table of
 * src/plugin.h: memory (host->alloc/free), threads (host->parallel_for),
 * errors (host->set_error) and the abort flag. Internally every kernel
 * works in double precision on contiguous, channel-major buffers
 * (K x N for K labels and N voxels, the last spatial axis fastest). */
#ifndef CRF_H
#define CRF_H

#include "plugin.h"
#include <stdint.h>

#define CRF_MAX_DIMS 3     /* spatial dims: 1-D to 3-D */
#define CRF_MAX_FEATURES 16 /* lattice feature dims: 3 positions + 13 channels */
#define CRF_MAX_LABELS 256

/* Hot loops get an AVX2+FMA clone picked at load time, as liblumen's
   LM_CLONES (src/core/internal.h). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CRF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("O3", "fp-contract=fast")))
#else
#define CRF_CLONES
#endif

/* The host and context of the call in progress, passed to every helper
   (ctx NULL on worker threads: helpers then return codes and set no
   message). */
typedef struct crf_env {
  const lm_host_api *host;
  lm_ctx *ctx;
  const char *op; /* name for messages */
} crf_env;

/* Scratch memory from the engine's allocator; NULL with the error set. */
void *crf_alloc(const crf_env *e, size_t nbytes);
void crf_free(const crf_env *e, void *p, size_t nbytes);
lm_status crf_oom(const crf_env *e, const char *what, size_t nbytes);
/* LM_E_ABORTED with a message when the user asked the context to stop. */
lm_status crf_check_abort(const crf_env *e);

/* ---- the permutohedral lattice (lattice.c) ---- */

/* Point i's features, already divided by their sigmas, into f[0..d). */
typedef void (*crf_feature_fn)(const void *arg, int64_t i, double *f);

typedef struct crf_lattice {
  int32_t d;       /* feature dims */
  int64_t n;       /* points */
  int64_t m;       /* lattice vertices touched by the points */
  int32_t *vert;   /* n x (d+1): the vertices of each point's simplex */
  float *bary;     /* n x (d+1): the point's barycentric weights on them */
  int32_t *nbr;    /* m x (d+1) x 2: neighbour along each lattice axis, -1 if absent */
  double gain;     /* turns the blurred sums into sums of exp(-|fi - fj|^2 / 2) */
  size_t nbr_bytes;
} crf_lattice;

lm_status crf_lattice_build(const crf_env *e, int64_t n, int32_t d, crf_feature_fn feature, const void *arg, crf_lattice *L);
void crf_lattice_free(const crf_env *e, crf_lattice *L);
/* out[c*ostride + i] (+)= scale * os_i * sum_j k(fi, fj) is_j in[c*istride + j]
   for c < nv, approximately (Adams et al. 2010), with the per-point scales
   os = out_scale and is = in_scale (NULL: 1). reverse blurs the lattice
   axes in the opposite order, which gives the transpose of the filter. */
lm_status crf_lattice_filter(const crf_env *e, const crf_lattice *L, const double *in, int64_t istride, double *out,
                             int64_t ostride, int32_t nv, double scale, int accumulate, int reverse, const float *in_scale,
                             const float *out_scale);

/* ---- separable Gaussian on the voxel grid (meanfield.c) ---- */

typedef struct crf_grid_shape {
  int32_t ndim;
  int64_t size[CRF_MAX_DIMS];
  int64_t n; /* voxels */
} crf_grid_shape;

/* ---- max-flow on a grid graph (maxflow.c) ---- */

typedef struct crf_flow crf_flow;

/* A graph whose nodes are the voxels of a grid and whose arcs join each
   voxel to its neighbours at the given offsets (nd of them, closed under
   negation). */
lm_status crf_flow_new(const crf_env *e, const crf_grid_shape *g, int32_t nd, const int32_t (*offsets)[CRF_MAX_DIMS], crf_flow **out);
void crf_flow_free(const crf_env *e, crf_flow *f);
/* Clears capacities and flow (keeps the graph). */
void crf_flow_reset(crf_flow *f);
/* Adds cap_source to the arc source -> v and cap_sink to v -> sink. */
void crf_flow_add_terminal(crf_flow *f, int64_t v, double cap_source, double cap_sink);
/* Adds cap to the arc from v to its neighbour along direction dir. */
void crf_flow_add_arc(crf_flow *f, int64_t v, int32_t dir, double cap);
/* Runs max-flow; *flow gets its value (plus the constant the terminal
   capacities cancelled). */
lm_status crf_flow_solve(const crf_env *e, crf_flow *f, double *flow);
/* 1 when v ends on the sink side of the minimum cut, 0 on the source side. */
int crf_flow_sink_side(const crf_flow *f, int64_t v);

#endif
