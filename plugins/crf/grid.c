/* grid.c - contrast-sensitive Potts MRFs on voxel grids:
 *
 *   E(x) = sum_i U(x_i, i) + sum_(i,j) w_ij [x_i != x_j],
 *   w_ij = lambda exp(-beta |I_i - I_j|^2) / dist_ij (mm)
 *
 * over the 2/4/8 (1-D, 2-D) or 6/18/26 (3-D) neighbourhood, with beta =
 * 1 / (2 mean |I_i - I_j|^2) over the edges unless given (Boykov and Jolly
 * 2001; Rother et al. 2004), and w_ij = lambda / dist_ij without an image.
 *
 * Solvers: a graph cut for two labels (exact: Potts is submodular);
 * alpha-expansion for more (Boykov, Veksler and Zabih, TPAMI 2001): each
 * move lets every voxel keep its label or switch to alpha, a binary
 * problem whose pairwise terms are submodular because Potts is a metric,
 * solved exactly by a cut (terms written as in Kolmogorov and Zabih, TPAMI
 * 2004: no auxiliary nodes); moves that lower the energy are kept until a
 * sweep over all labels changes nothing. ICM (Besag 1986) updates voxels
 * in raster order to their best label given the neighbours. Both start
 * from the labels of least unary cost. */
#include "grid.h"
#include <math.h>
#include <string.h>

#define MAX_FWD 13

typedef struct edges {
  int32_t nf;                       /* forward directions (first nonzero offset positive) */
  int32_t dirs[2 * MAX_FWD][CRF_MAX_DIMS]; /* forward ones, then their negatives */
  int64_t step[MAX_FWD];            /* the index offset of each forward direction */
  double dist[MAX_FWD];
  double *w;                        /* N x nf, 0 where the neighbour is off the grid */
  size_t w_bytes;
} edges;

/* The weights encode the graph: voxel i is joined to i + step[k] exactly
   where w[i][k] != 0 (an edge of weight 0 changes no energy). */

static void make_directions(const crf_grid_problem *p, edges *E) {
  const int32_t nd = p->g.ndim;
  E->nf = 0;
  /* every offset in {-1, 0, 1}^nd with its first nonzero entry positive,
     kept when its squared length fits the neighbourhood */
  int32_t max_len2 = (p->neighbours == 2 * nd) ? 1 : (p->neighbours == 18 ? 2 : nd);
  int32_t total = 1;
  for (int32_t a = 0; a < nd; a++) total *= 3;
  for (int32_t code = 0; code < total; code++) {
    int32_t o[CRF_MAX_DIMS] = { 0, 0, 0 }, c = code, len2 = 0, first = 0;
    for (int32_t a = nd - 1; a >= 0; a--) {
      o[a] = c % 3 - 1;
      c /= 3;
    }
    for (int32_t a = 0; a < nd; a++) {
      len2 += o[a] * o[a];
      if (!first && o[a] != 0) first = o[a];
    }
    if (first <= 0 || len2 > max_len2) continue;
    double d2 = 0;
    for (int32_t a = 0; a < nd; a++) d2 += (o[a] * p->spacing[a]) * (o[a] * p->spacing[a]);
    E->dist[E->nf] = sqrt(d2);
    memcpy(E->dirs[E->nf], o, sizeof o);
    E->nf++;
  }
  for (int32_t k = 0; k < E->nf; k++) {
    for (int32_t a = 0; a < CRF_MAX_DIMS; a++) E->dirs[E->nf + k][a] = -E->dirs[k][a];
    int64_t step = 0;
    for (int32_t a = 0; a < nd; a++) step = step * p->g.size[a] + E->dirs[k][a];
    E->step[k] = step;
  }
}

static double diff2(const crf_grid_problem *p, int64_t i, int64_t j) {
  double s = 0;
  for (int32_t c = 0; c < p->C; c++) {
    double d = p->image[c * p->g.n + i] - p->image[c * p->g.n + j];
    s += d * d;
  }
  return s;
}

/* Calls visit(arg, i, j, k) for every edge (voxel i, its neighbour j along
   forward direction k), walking the grid with its coordinates. */
static void each_edge(const crf_grid_problem *p, const edges *E, void (*visit)(void *, int64_t, int64_t, int32_t), void *arg) {
  const crf_grid_shape *g = &p->g;
  int64_t c[CRF_MAX_DIMS] = { 0, 0, 0 };
  for (int64_t i = 0; i < g->n; i++) {
    for (int32_t k = 0; k < E->nf; k++) {
      int inside = 1;
      for (int32_t a = 0; a < g->ndim && inside; a++) {
        int64_t ca = c[a] + E->dirs[k][a];
        inside = ca >= 0 && ca < g->size[a];
      }
      if (inside) visit(arg, i, i + E->step[k], k);
    }
    for (int32_t a = g->ndim - 1; a >= 0 && ++c[a] == g->size[a]; a--) c[a] = 0;
  }
}

typedef struct edge_acc {
  const crf_grid_problem *p;
  edges *E;
  double sum, beta;
  int64_t count;
} edge_acc;

static void sum_diff2(void *arg, int64_t i, int64_t j, int32_t k) {
  edge_acc *a = arg;
  (void)k;
  a->sum += diff2(a->p, i, j);
  a->count++;
}

static void set_weight(void *arg, int64_t i, int64_t j, int32_t k) {
  edge_acc *a = arg;
  double w = a->p->lambda / a->E->dist[k];
  if (a->p->C > 0) w *= exp(-a->beta * diff2(a->p, i, j));
  a->E->w[i * a->E->nf + k] = w;
}

static lm_status make_edges(const crf_env *e, const crf_grid_problem *p, edges *E) {
  make_directions(p, E);
  const int64_t N = p->g.n;
  const int32_t nf = E->nf;
  E->w_bytes = (size_t)(N * nf) * sizeof(double);
  E->w = crf_alloc(e, E->w_bytes);
  if (!E->w) return crf_oom(e, "the edge weights", E->w_bytes);
  memset(E->w, 0, E->w_bytes);
  edge_acc acc = { p, E, 0, p->beta, 0 };
  if (p->C > 0 && p->beta < 0) {
    each_edge(p, E, sum_diff2, &acc);
    acc.beta = acc.sum > 0 ? acc.count / (2 * acc.sum) : 0;
  }
  each_edge(p, E, set_weight, &acc);
  return LM_OK;
}

static double energy_of(const crf_grid_problem *p, const edges *E, const int32_t *x) {
  const int64_t N = p->g.n;
  double s = 0;
  for (int64_t i = 0; i < N; i++) {
    s += p->unary[(int64_t)x[i] * N + i];
    for (int32_t k = 0; k < E->nf; k++) {
      double w = E->w[i * E->nf + k];
      if (w != 0 && x[i + E->step[k]] != x[i]) s += w;
    }
  }
  return s;
}

lm_status crf_grid_energy(const crf_env *e, const crf_grid_problem *p, const int32_t *labels, double *energy) {
  edges E;
  lm_status st = make_edges(e, p, &E);
  if (st) return st;
  *energy = energy_of(p, &E, labels);
  crf_free(e, E.w, E.w_bytes);
  return LM_OK;
}

static void least_unary(const crf_grid_problem *p, int32_t *x) {
  const int64_t N = p->g.n;
  for (int64_t i = 0; i < N; i++) {
    int32_t best = 0;
    for (int32_t l = 1; l < p->K; l++)
      if (p->unary[l * N + i] < p->unary[best * N + i]) best = l;
    x[i] = best;
  }
}

static lm_status new_flow(const crf_env *e, const crf_grid_problem *p, const edges *E, crf_flow **f) {
  return crf_flow_new(e, &p->g, 2 * E->nf, (const int32_t(*)[CRF_MAX_DIMS])E->dirs, f);
}

static lm_status graph_cut(const crf_env *e, const crf_grid_problem *p, const edges *E, int32_t *x) {
  const int64_t N = p->g.n;
  crf_flow *f;
  lm_status st = new_flow(e, p, E, &f);
  if (st) return st;
  for (int64_t i = 0; i < N; i++) {
    /* the sink side is label 1: cutting source -> i costs U(1, i) */
    crf_flow_add_terminal(f, i, p->unary[N + i], p->unary[i]);
    for (int32_t k = 0; k < E->nf; k++) {
      double w = E->w[i * E->nf + k];
      if (w == 0) continue;
      crf_flow_add_arc(f, i, k, w);
      crf_flow_add_arc(f, i + E->step[k], E->nf + k, w);
    }
  }
  double flow;
  if ((st = crf_flow_solve(e, f, &flow)) == LM_OK)
    for (int64_t i = 0; i < N; i++) x[i] = crf_flow_sink_side(f, i);
  crf_flow_free(e, f);
  return st;
}

static lm_status expansion(const crf_env *e, const crf_grid_problem *p, const edges *E, int32_t *x) {
  const int64_t N = p->g.n;
  crf_flow *f = NULL;
  size_t nb = (size_t)N * sizeof(double), lb = (size_t)N * sizeof(int32_t);
  double *c1 = crf_alloc(e, nb);
  int32_t *y = crf_alloc(e, lb);
  lm_status st = LM_OK;
  if (!c1 || !y) {
    st = crf_oom(e, "alpha-expansion", nb + lb);
    goto done;
  }
  if ((st = new_flow(e, p, E, &f))) goto done;
  least_unary(p, x);
  double energy = energy_of(p, E, x);
  for (int32_t sweep = 0; sweep < p->max_sweeps; sweep++) {
    int changed = 0;
    for (int32_t alpha = 0; alpha < p->K; alpha++) {
      if ((st = crf_check_abort(e))) goto done;
      crf_flow_reset(f);
      /* y_i = 1: i switches to alpha. Pairwise terms E(y_i, y_j) with
         E00 = w[xi != xj], E01 = w[xi != a], E10 = w[a != xj], E11 = 0 are
         E00 + (E10 - E00) y_i - E10 y_j + (E01 + E10 - E00) (1 - y_i) y_j */
      for (int64_t i = 0; i < N; i++) c1[i] = p->unary[(int64_t)alpha * N + i] - p->unary[(int64_t)x[i] * N + i];
      for (int64_t i = 0; i < N; i++) {
        for (int32_t k = 0; k < E->nf; k++) {
          double w = E->w[i * E->nf + k];
          if (w == 0) continue;
          int64_t j = i + E->step[k];
          double e00 = x[i] != x[j] ? w : 0, e01 = x[i] != alpha ? w : 0, e10 = alpha != x[j] ? w : 0;
          c1[i] += e10 - e00;
          c1[j] -= e10;
          double cap = e01 + e10 - e00;
          if (cap > 0) crf_flow_add_arc(f, i, k, cap);
        }
      }
      for (int64_t i = 0; i < N; i++) crf_flow_add_terminal(f, i, c1[i] > 0 ? c1[i] : 0, c1[i] < 0 ? -c1[i] : 0);
      double flow;
      if ((st = crf_flow_solve(e, f, &flow))) goto done;
      for (int64_t i = 0; i < N; i++) y[i] = crf_flow_sink_side(f, i) ? alpha : x[i];
      double ey = energy_of(p, E, y);
      if (ey < energy - 1e-12 * fabs(energy)) {
        memcpy(x, y, lb);
        energy = ey;
        changed = 1;
      }
    }
    if (!changed) break;
  }
done:
  crf_flow_free(e, f);
  crf_free(e, c1, nb);
  crf_free(e, y, lb);
  return st;
}

static lm_status icm(const crf_env *e, const crf_grid_problem *p, const edges *E, int32_t *x) {
  const int64_t N = p->g.n;
  const int32_t nf = E->nf;
  double cost[CRF_MAX_LABELS];
  least_unary(p, x);
  for (int32_t sweep = 0; sweep < p->max_sweeps; sweep++) {
    lm_status st = crf_check_abort(e);
    if (st) return st;
    int changed = 0;
    for (int64_t i = 0; i < N; i++) {
      for (int32_t l = 0; l < p->K; l++) cost[l] = p->unary[(int64_t)l * N + i];
      for (int32_t k = 0; k < nf; k++) {
        double w = E->w[i * nf + k]; /* the edge to i + step */
        if (w != 0) cost[x[i + E->step[k]]] -= w; /* no penalty for agreeing with the neighbour */
        int64_t j = i - E->step[k];       /* the edge from i - step, when there is one */
        if (j >= 0 && (w = E->w[j * nf + k]) != 0) cost[x[j]] -= w;
      }
      int32_t best = x[i];
      for (int32_t l = 0; l < p->K; l++)
        if (cost[l] < cost[best]) best = l;
      if (best != x[i]) {
        x[i] = best;
        changed = 1;
      }
    }
    if (!changed) break;
  }
  return LM_OK;
}

lm_status crf_grid_solve(const crf_env *e, const crf_grid_problem *p, int32_t *labels, double *energy) {
  edges E;
  lm_status st = make_edges(e, p, &E);
  if (st) return st;
  if (p->solver == CRF_SOLVER_GRAPHCUT) st = graph_cut(e, p, &E, labels);
  else if (p->solver == CRF_SOLVER_EXPANSION) st = expansion(e, p, &E, labels);
  else st = icm(e, p, &E, labels);
  if (st == LM_OK) *energy = energy_of(p, &E, labels);
  crf_free(e, E.w, E.w_bytes);
  return st;
}
