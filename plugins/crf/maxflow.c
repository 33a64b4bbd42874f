/* maxflow.c - minimum s-t cuts on grid graphs with the augmenting-path
 * algorithm of Boykov and Kolmogorov (IEEE TPAMI 26(9), 2004).
 *
 * Two search trees grow from the source (S) and the sink (T) through arcs
 * with residual capacity; where they touch there is an augmenting path,
 * whose bottleneck is pushed. Arcs that saturate cut nodes off their tree
 * (orphans); adoption looks for a new parent in the same tree that still
 * leads to its terminal (cheaply, by marking nodes verified in this round
 * with a timestamp and their distance), and frees the orphan when there
 * is none. The trees are kept between augmentations, which is what makes
 * the method fast on grids. It stops when no active node is left; the S
 * tree is then the source side of a minimum cut.
 *
 * The graph is implicit: nodes are voxels of a grid padded by one wall
 * voxel on each side (walls never join a tree, so neighbours need no
 * bounds checks), arcs go to the neighbours at fixed offsets, and each node
 * keeps the residual capacities of its outgoing arcs. Terminal arcs are
 * kept as one signed residual per node: tr > 0 from the source, tr < 0 to
 * the sink (a node cut from both pays the smaller part as a constant). */
#include "crf.h"
#include <math.h>
#include <string.h>

#define MAX_DIRS 26
enum { FREE = 0, SRC = 1, SNK = 2, WALL = 3 };
enum { PARENT_NONE = -1, PARENT_TERMINAL = -2, PARENT_ORPHAN = -3 };

struct crf_flow {
  crf_grid_shape g;
  int64_t pstride[CRF_MAX_DIMS]; /* strides of the padded grid */
  int64_t np;                    /* padded nodes */
  int32_t nd;
  int64_t off[MAX_DIRS];
  int32_t opp[MAX_DIRS];
  double *rc;                    /* np x nd */
  double *tr;                    /* np */
  double constant;               /* cut-independent part of the terminal costs */
  uint8_t *tree;
  int8_t *parent;                /* direction to the parent, or PARENT_* */
  int32_t *ts, *dist;
  int32_t *next;                 /* active list: -1 out of it, self at its tail */
  int32_t head, tail;
  int32_t *pidx;                 /* the padded index of each voxel */
  int32_t *orphans;              /* FIFO of orphans */
  int64_t orphan_cap, orphan_head, orphan_tail;
  int32_t time;
};

static inline int64_t padded_index(const crf_flow *f, int64_t v) { return f->pidx[v]; }

lm_status crf_flow_new(const crf_env *e, const crf_grid_shape *g, int32_t nd, const int32_t (*offsets)[CRF_MAX_DIMS], crf_flow **out) {
  *out = NULL;
  if (nd < 1 || nd > MAX_DIRS) return e->host->set_error(e->ctx, LM_E_ARG, "%s: %d neighbour directions, expected 1 to %d", e->op, (int)nd, MAX_DIRS);
  crf_flow *f = crf_alloc(e, sizeof *f);
  if (!f) return crf_oom(e, "the graph", sizeof *f);
  memset(f, 0, sizeof *f);
  f->g = *g;
  f->nd = nd;
  int64_t np = 1;
  for (int32_t a = g->ndim - 1; a >= 0; a--) {
    f->pstride[a] = np;
    np *= g->size[a] + 2;
  }
  f->np = np;
  if (np >= INT32_MAX) {
    crf_free(e, f, sizeof *f);
    return e->host->set_error(e->ctx, LM_E_UNSUPPORTED, "%s: %lld voxels is too many for the graph (at most 2^31 with padding)", e->op, (long long)g->n);
  }
  for (int32_t d = 0; d < nd; d++) {
    f->off[d] = 0;
    for (int32_t a = 0; a < g->ndim; a++) f->off[d] += offsets[d][a] * f->pstride[a];
    f->opp[d] = -1;
  }
  for (int32_t d = 0; d < nd; d++)
    for (int32_t q = 0; q < nd; q++)
      if (f->off[q] == -f->off[d]) f->opp[d] = q;
  for (int32_t d = 0; d < nd; d++)
    if (f->opp[d] < 0) {
      crf_free(e, f, sizeof *f);
      return e->host->set_error(e->ctx, LM_E_ARG, "%s: the neighbour offsets are not closed under negation", e->op);
    }
  f->rc = crf_alloc(e, (size_t)(np * nd) * sizeof *f->rc);
  f->tr = crf_alloc(e, (size_t)np * sizeof *f->tr);
  f->tree = crf_alloc(e, (size_t)np);
  f->parent = crf_alloc(e, (size_t)np);
  f->ts = crf_alloc(e, (size_t)np * sizeof *f->ts);
  f->dist = crf_alloc(e, (size_t)np * sizeof *f->dist);
  f->next = crf_alloc(e, (size_t)np * sizeof *f->next);
  f->pidx = crf_alloc(e, (size_t)g->n * sizeof *f->pidx);
  f->orphan_cap = 4096;
  f->orphans = crf_alloc(e, (size_t)f->orphan_cap * sizeof *f->orphans);
  if (!f->rc || !f->tr || !f->tree || !f->parent || !f->ts || !f->dist || !f->next || !f->pidx || !f->orphans) {
    crf_flow_free(e, f);
    return crf_oom(e, "the graph", (size_t)np * (size_t)(nd * 8 + 22));
  }
  /* voxel -> padded node, walking the grid (no divisions per voxel) */
  int64_t c[CRF_MAX_DIMS] = { 0, 0, 0 }, p = 0;
  for (int32_t a = 0; a < g->ndim; a++) p += f->pstride[a];
  for (int64_t v = 0; v < g->n; v++) {
    f->pidx[v] = (int32_t)p;
    int32_t a = g->ndim - 1;
    while (a >= 0 && ++c[a] == g->size[a]) c[a--] = 0;
    if (a == g->ndim - 1) {
      p++;
    } else {
      p = 0;
      for (int32_t b = 0; b < g->ndim; b++) p += (c[b] + 1) * f->pstride[b];
    }
  }
  crf_flow_reset(f);
  *out = f;
  return LM_OK;
}

void crf_flow_free(const crf_env *e, crf_flow *f) {
  if (!f) return;
  crf_free(e, f->rc, (size_t)(f->np * f->nd) * sizeof *f->rc);
  crf_free(e, f->tr, (size_t)f->np * sizeof *f->tr);
  crf_free(e, f->tree, (size_t)f->np);
  crf_free(e, f->parent, (size_t)f->np);
  crf_free(e, f->ts, (size_t)f->np * sizeof *f->ts);
  crf_free(e, f->dist, (size_t)f->np * sizeof *f->dist);
  crf_free(e, f->next, (size_t)f->np * sizeof *f->next);
  crf_free(e, f->pidx, (size_t)f->g.n * sizeof *f->pidx);
  crf_free(e, f->orphans, (size_t)f->orphan_cap * sizeof *f->orphans);
  crf_free(e, f, sizeof *f);
}

void crf_flow_reset(crf_flow *f) {
  memset(f->rc, 0, (size_t)(f->np * f->nd) * sizeof *f->rc);
  memset(f->tr, 0, (size_t)f->np * sizeof *f->tr);
  memset(f->tree, WALL, (size_t)f->np);
  for (int64_t v = 0; v < f->g.n; v++) f->tree[padded_index(f, v)] = FREE;
  f->constant = 0;
}

void crf_flow_add_terminal(crf_flow *f, int64_t v, double cap_source, double cap_sink) {
  /* cost: cap_sink when v stays with the source, cap_source when it goes
     to the sink = cap_sink + (cap_source - cap_sink) [v on the sink side] */
  f->tr[padded_index(f, v)] += cap_source - cap_sink;
  f->constant += cap_sink;
}

void crf_flow_add_arc(crf_flow *f, int64_t v, int32_t dir, double cap) { f->rc[padded_index(f, v) * f->nd + dir] += cap; }

int crf_flow_sink_side(const crf_flow *f, int64_t v) { return f->tree[padded_index(f, v)] != SRC; }

/* ---- the algorithm ---- */

static void activate(crf_flow *f, int32_t v) {
  if (f->next[v] >= 0) return;
  f->next[v] = v;
  if (f->tail >= 0) f->next[f->tail] = v;
  else f->head = v;
  f->tail = v;
}

/* The next active node still in a tree, or -1. */
static int32_t pop_active(crf_flow *f) {
  while (f->head >= 0) {
    int32_t v = f->head;
    f->head = f->next[v] == v ? -1 : f->next[v];
    if (f->head < 0) f->tail = -1;
    f->next[v] = -1;
    if (f->tree[v] == SRC || f->tree[v] == SNK) return v;
  }
  return -1;
}

static lm_status push_orphan(const crf_env *e, crf_flow *f, int32_t v) {
  f->parent[v] = PARENT_ORPHAN;
  if (f->orphan_tail == f->orphan_cap) {
    if (f->orphan_head > 0) { /* slide the live part down */
      memmove(f->orphans, f->orphans + f->orphan_head, (size_t)(f->orphan_tail - f->orphan_head) * sizeof *f->orphans);
      f->orphan_tail -= f->orphan_head;
      f->orphan_head = 0;
    }
    if (f->orphan_tail == f->orphan_cap) {
      int64_t cap = f->orphan_cap * 2;
      int32_t *o = crf_alloc(e, (size_t)cap * sizeof *o);
      if (!o) return crf_oom(e, "the orphan list", (size_t)cap * sizeof *o);
      memcpy(o, f->orphans, (size_t)f->orphan_tail * sizeof *o);
      crf_free(e, f->orphans, (size_t)f->orphan_cap * sizeof *o);
      f->orphans = o;
      f->orphan_cap = cap;
    }
  }
  f->orphans[f->orphan_tail++] = v;
  return LM_OK;
}

/* Pushes the bottleneck of source -> ... -> a -> b -> ... -> sink, with
   a -> b the arc of direction d; saturated arcs make orphans. */
static lm_status augment(const crf_env *e, crf_flow *f, int32_t a, int32_t b, int32_t d, double *flow) {
  const int32_t nd = f->nd;
  double m = f->rc[(int64_t)a * nd + d];
  for (int32_t v = a;;) {
    int32_t p = f->parent[v];
    if (p == PARENT_TERMINAL) {
      if (f->tr[v] < m) m = f->tr[v];
      break;
    }
    int32_t u = (int32_t)(v + f->off[p]);
    double c = f->rc[(int64_t)u * nd + f->opp[p]];
    if (c < m) m = c;
    v = u;
  }
  for (int32_t v = b;;) {
    int32_t p = f->parent[v];
    if (p == PARENT_TERMINAL) {
      if (-f->tr[v] < m) m = -f->tr[v];
      break;
    }
    double c = f->rc[(int64_t)v * nd + p];
    if (c < m) m = c;
    v = (int32_t)(v + f->off[p]);
  }
  f->rc[(int64_t)a * nd + d] -= m;
  f->rc[(int64_t)b * nd + f->opp[d]] += m;
  lm_status st = LM_OK;
  for (int32_t v = a;;) {
    int32_t p = f->parent[v];
    if (p == PARENT_TERMINAL) {
      f->tr[v] -= m;
      if (f->tr[v] == 0 && (st = push_orphan(e, f, v))) return st;
      break;
    }
    int32_t u = (int32_t)(v + f->off[p]);
    double *c = &f->rc[(int64_t)u * nd + f->opp[p]];
    *c -= m;
    f->rc[(int64_t)v * nd + p] += m;
    if (*c == 0 && (st = push_orphan(e, f, v))) return st;
    v = u;
  }
  for (int32_t v = b;;) {
    int32_t p = f->parent[v];
    if (p == PARENT_TERMINAL) {
      f->tr[v] += m;
      if (f->tr[v] == 0 && (st = push_orphan(e, f, v))) return st;
      break;
    }
    int32_t u = (int32_t)(v + f->off[p]);
    double *c = &f->rc[(int64_t)v * nd + p];
    *c -= m;
    f->rc[(int64_t)u * nd + f->opp[p]] += m;
    if (*c == 0 && (st = push_orphan(e, f, v))) return st;
    v = u;
  }
  *flow += m;
  return LM_OK;
}

/* The distance from u to its tree's terminal through valid parents, or -1
   when the chain ends at an orphan; marks the chain as checked now. */
static int32_t origin_distance(crf_flow *f, int32_t u) {
  int32_t k = 0, w = u;
  for (;;) {
    if (f->ts[w] == f->time) {
      k += f->dist[w];
      break;
    }
    int32_t p = f->parent[w];
    if (p == PARENT_TERMINAL) {
      f->ts[w] = f->time;
      f->dist[w] = 1;
      k += 1;
      break;
    }
    if (p < 0) return -1; /* an orphan (or a node without a parent) */
    k++;
    w = (int32_t)(w + f->off[p]);
  }
  int32_t dist = k;
  for (w = u; f->ts[w] != f->time; w = (int32_t)(w + f->off[f->parent[w]])) {
    f->ts[w] = f->time;
    f->dist[w] = k--;
  }
  return dist;
}

static lm_status adopt(const crf_env *e, crf_flow *f) {
  const int32_t nd = f->nd;
  lm_status st;
  while (f->orphan_head < f->orphan_tail) {
    int32_t v = f->orphans[f->orphan_head++];
    if (f->orphan_head == f->orphan_tail) f->orphan_head = f->orphan_tail = 0;
    uint8_t t = f->tree[v];
    int32_t best = -1, best_dist = INT32_MAX;
    for (int32_t d = 0; d < nd; d++) {
      int32_t u = (int32_t)(v + f->off[d]);
      if (f->tree[u] != t) continue;
      /* a parent must send into v (source tree) or take from v (sink tree) */
      double c = t == SRC ? f->rc[(int64_t)u * nd + f->opp[d]] : f->rc[(int64_t)v * nd + d];
      if (c <= 0) continue;
      int32_t k = origin_distance(f, u);
      if (k >= 0 && k < best_dist) {
        best = d;
        best_dist = k;
      }
    }
    if (best >= 0) {
      f->parent[v] = (int8_t)best;
      f->ts[v] = f->time;
      f->dist[v] = best_dist + 1;
      continue;
    }
    /* no parent: v leaves its tree; neighbours that could reach it become
       active, and its children orphans */
    for (int32_t d = 0; d < nd; d++) {
      int32_t u = (int32_t)(v + f->off[d]);
      if (f->tree[u] != t) continue;
      double c = t == SRC ? f->rc[(int64_t)u * nd + f->opp[d]] : f->rc[(int64_t)v * nd + d];
      if (c > 0) activate(f, u);
      if (f->parent[u] == f->opp[d] && (st = push_orphan(e, f, u))) return st;
    }
    f->tree[v] = FREE;
    f->parent[v] = PARENT_NONE;
  }
  return LM_OK;
}

lm_status crf_flow_solve(const crf_env *e, crf_flow *f, double *flow) {
  const int32_t nd = f->nd;
  double pushed = 0, constant = f->constant;
  f->head = f->tail = -1;
  f->orphan_head = f->orphan_tail = 0;
  f->time = 0;
  for (int64_t v = 0; v < f->np; v++) {
    f->next[v] = -1;
    f->ts[v] = 0;
    f->dist[v] = 0;
    f->parent[v] = PARENT_NONE;
    if (f->tree[v] == WALL) continue;
    if (f->tr[v] < 0) constant += f->tr[v]; /* the part of the cost both sides pay */
    if (f->tr[v] > 0) f->tree[v] = SRC;
    else if (f->tr[v] < 0) f->tree[v] = SNK;
    else f->tree[v] = FREE;
    if (f->tree[v] != FREE) {
      f->parent[v] = PARENT_TERMINAL;
      f->dist[v] = 1;
      activate(f, (int32_t)v);
    }
  }
  lm_status st = LM_OK;
  int32_t v = -1;
  int64_t steps = 0;
  for (;;) {
    if (v < 0 || f->tree[v] == FREE) {
      v = pop_active(f);
      if (v < 0) break;
    }
    if ((++steps & 0xffff) == 0 && (st = crf_check_abort(e))) return st;
    int32_t a = -1, b = -1, dir = -1;
    if (f->tree[v] == SRC) {
      for (int32_t d = 0; d < nd; d++) {
        if (f->rc[(int64_t)v * nd + d] <= 0) continue;
        int32_t u = (int32_t)(v + f->off[d]);
        uint8_t tu = f->tree[u];
        if (tu == FREE) {
          f->tree[u] = SRC;
          f->parent[u] = (int8_t)f->opp[d];
          f->ts[u] = f->ts[v];
          f->dist[u] = f->dist[v] + 1;
          activate(f, u);
        } else if (tu == SNK) {
          a = v, b = u, dir = d;
          break;
        } else if (tu == SRC && f->ts[u] <= f->ts[v] && f->dist[u] > f->dist[v]) {
          f->parent[u] = (int8_t)f->opp[d];
          f->ts[u] = f->ts[v];
          f->dist[u] = f->dist[v] + 1;
        }
      }
    } else {
      for (int32_t d = 0; d < nd; d++) {
        int32_t u = (int32_t)(v + f->off[d]);
        if (f->rc[(int64_t)u * nd + f->opp[d]] <= 0) continue;
        uint8_t tu = f->tree[u];
        if (tu == FREE) {
          f->tree[u] = SNK;
          f->parent[u] = (int8_t)f->opp[d];
          f->ts[u] = f->ts[v];
          f->dist[u] = f->dist[v] + 1;
          activate(f, u);
        } else if (tu == SRC) {
          a = u, b = v, dir = f->opp[d];
          break;
        } else if (tu == SNK && f->ts[u] <= f->ts[v] && f->dist[u] > f->dist[v]) {
          f->parent[u] = (int8_t)f->opp[d];
          f->ts[u] = f->ts[v];
          f->dist[u] = f->dist[v] + 1;
        }
      }
    }
    if (a < 0) {
      v = -1; /* v has no more to offer: it stays inactive */
      continue;
    }
    f->time++;
    if ((st = augment(e, f, a, b, dir, &pushed))) return st;
    if ((st = adopt(e, f))) return st;
    /* v may still have arcs to grow through: look at it again */
  }
  *flow = constant + pushed;
  return LM_OK;
}
