/* meanfield.h - mean-field inference of the dense CRF (meanfield.c). */
#ifndef CRF_MEANFIELD_H
#define CRF_MEANFIELD_H

#include "crf.h"

/* The spatial kernel as per-axis taps exp(-(t h)^2 / 2 sigma^2), t = 0..radius. */
typedef struct crf_spatial {
  crf_grid_shape g;
  int32_t radius[CRF_MAX_DIMS];
  double *taps[CRF_MAX_DIMS];
} crf_spatial;

lm_status crf_spatial_init(const crf_env *e, crf_spatial *sp, const crf_grid_shape *g, const double *spacing, double sigma_mm);
void crf_spatial_free(const crf_env *e, crf_spatial *sp);
/* out[c] = scale * os * (S in[c]) for nv channels of N voxels, os the
   per-voxel out_scale (NULL: 1); tmp holds N; in and out must differ. */
void crf_spatial_filter(const crf_env *e, const crf_spatial *sp, const double *in, double *out, double *tmp, int32_t nv,
                        double scale, const float *out_scale);

/* One volume's problem: the settings, its image and the kernels built from them. */
typedef struct crf_mf_problem {
  crf_grid_shape g;
  int32_t K, C, iterations;
  double spacing[CRF_MAX_DIMS];
  int use_smooth, use_bilateral;
  int normalize; /* messages as kernel-weighted means (self included) */
  int out_probs; /* the forward ends with softmax(Z): probabilities */
  double sigma_smooth, sigma_bil; /* mm */
  double sigma_int[CRF_MAX_FEATURES];
  double w_smooth, w_bil;
  const double *compat; /* K x K, compat[l*K + k] = mu(l, k) */
  const double *image;  /* C x N */
  /* made by crf_mf_prepare */
  crf_spatial spatial;
  crf_lattice lattice;
  int have_spatial, have_lattice;
  float *norm_spatial, *norm_bil; /* 1 / (F 1) per voxel when normalising */
} crf_mf_problem;

lm_status crf_mf_prepare(const crf_env *e, crf_mf_problem *p);
void crf_mf_release(const crf_env *e, crf_mf_problem *p);
/* Z = the logits after p->iterations steps (K x N), or their softmax
   with out_probs; Qhist, when given, receives Q0..Q(T-1). */
lm_status crf_mf_forward(const crf_env *e, const crf_mf_problem *p, const double *A, double *Z, double *Qhist);
/* gA = dL/dA (K x N) from G = dL/d(output); gmu (K x K) and gw (2) are
   added to. */
lm_status crf_mf_backward(const crf_env *e, const crf_mf_problem *p, const double *A, const double *G, double *gA, double *gmu,
                          double *gw);

#endif
