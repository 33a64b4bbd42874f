/* grid.h - contrast-sensitive Potts MRFs on voxel grids (grid.c). */
#ifndef CRF_GRID_H
#define CRF_GRID_H

#include "crf.h"

enum { CRF_SOLVER_GRAPHCUT = 0, CRF_SOLVER_EXPANSION = 1, CRF_SOLVER_ICM = 2 };

typedef struct crf_grid_problem {
  crf_grid_shape g;
  int32_t K, C, neighbours, solver, max_sweeps;
  double lambda, beta; /* beta < 0: 1 / (2 mean |Ii - Ij|^2) over the edges */
  double spacing[CRF_MAX_DIMS];
  const double *unary; /* K x N costs */
  const double *image; /* C x N */
} crf_grid_problem;

/* labels (N) minimising the energy with p->solver; *energy its value */
lm_status crf_grid_solve(const crf_env *e, const crf_grid_problem *p, int32_t *labels, double *energy);
lm_status crf_grid_energy(const crf_env *e, const crf_grid_problem *p, const int32_t *labels, double *energy);

#endif
