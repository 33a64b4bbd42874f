/* autograd.c - the tape: nodes recorded by ops, and the backward walk.
 *
 * Each op output that needs a gradient points at the node of the op that
 * made it; a node points at the nodes (or leaves) of its inputs. Backward
 * collects the nodes reachable from a tensor, counts how many consumers
 * each has, and runs them in dependency order (Kahn), summing gradients per
 * output and accumulating into leaves. Without retain_graph every node's
 * saved tensors and edges are released as soon as it has run.
 */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

static bool wants_grad(const lm_tensor *t) { return t && (t->requires_grad || t->grad_fn); }

void lm_set_grad_enabled(lm_ctx *ctx, int32_t enabled) { ctx->grad_enabled = enabled != 0; }
int32_t lm_grad_enabled(const lm_ctx *ctx) { return ctx->grad_enabled; }
int32_t lm_tensor_requires_grad(const lm_tensor *t) { return wants_grad(t); }
int32_t lm_tensor_is_leaf(const lm_tensor *t) { return t->grad_fn == NULL; }

const char *lm_tensor_grad_fn_name(const lm_tensor *t) {
  return t->grad_fn ? t->grad_fn->name : "";
}

lm_status lm_tensor_set_requires_grad(lm_ctx *ctx, lm_tensor *t, int32_t flag) {
  if (t->grad_fn)
    return lm_err(ctx, LM_E_ARG, "requires_grad: the tensor was made by %s, expected a leaf (detach it first)",
                  t->grad_fn->name);
  if (flag && !lm_dtype_is_float(t->dtype))
    return lm_err(ctx, LM_E_DTYPE, "requires_grad: dtype %s, expected f32 or f64", lm_dtype_name(t->dtype));
  t->requires_grad = flag != 0;
  return LM_OK;
}

lm_tensor *lm_tensor_grad(const lm_tensor *t) {
  lm_tensor_retain(t->grad);
  return t->grad;
}

static bool same_shape(int32_t na, const int64_t *a, int32_t nb, const int64_t *b) {
  return na == nb && memcmp(a, b, (size_t)na * sizeof *a) == 0;
}

lm_status lm_tensor_set_grad(lm_ctx *ctx, lm_tensor *t, lm_tensor *g) {
  if (g && (!same_shape(g->ndim, g->shape, t->ndim, t->shape) || g->dtype != t->dtype)) {
    char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "set_grad: gradient %s %s for a tensor %s %s, expected the same shape and dtype",
                  LM_SHP(g, a), lm_dtype_name(g->dtype), LM_SHP(t, b), lm_dtype_name(t->dtype));
  }
  lm_tensor_retain(g);
  lm_tensor_release(t->grad);
  t->grad = g;
  return LM_OK;
}

lm_status lm_detach(lm_ctx *ctx, const lm_tensor *t, lm_tensor **out) {
  lm_tensor *v = lm_view_header(t);
  if (!v) return lm_err(ctx, LM_E_OOM, "detach: out of memory");
  *out = v;
  return LM_OK;
}

/* ---- recording ---- */

bool lm_grad_needed(const lm_ctx *ctx, int32_t n, const lm_tensor *const *in) {
  if (!ctx->grad_enabled) return false;
  for (int32_t i = 0; i < n; i++)
    if (wants_grad(in[i])) return true;
  return false;
}

lm_status lm_check_grad_dst(lm_ctx *ctx, const char *op, const lm_tensor *dst, int32_t n, const lm_tensor *const *in) {
  if (!dst || !ctx->grad_enabled) return LM_OK;
  if (wants_grad(dst) || lm_grad_needed(ctx, n, in))
    return lm_err(ctx, LM_E_ARG, "%s: writing into an existing tensor (in place or out=) cannot be tracked by autograd, "
                  "expected the out-of-place form (or no_grad)", op);
  return LM_OK;
}

static void custom_freed_push(lm_ctx *ctx, int32_t id) {
  if (!ctx) return;
  if (ctx->n_custom_freed == ctx->cap_custom_freed) {
    int32_t cap = ctx->cap_custom_freed ? 2 * ctx->cap_custom_freed : 64;
    int32_t *g = realloc(ctx->custom_freed, (size_t)cap * sizeof *g);
    if (!g) return; /* the Lua side keeps one closure longer; harmless */
    ctx->custom_freed = g;
    ctx->cap_custom_freed = cap;
  }
  ctx->custom_freed[ctx->n_custom_freed++] = id;
}

/* Lua-defined nodes report their ids here when freed; nodes do not know
   their context, so the last context that recorded one is remembered. */
static lm_ctx *custom_ctx;

/* A freed context must not be written: tensors holding Lua-defined nodes
   can outlive it (finalizers run in any order when Lua closes). */
void lm_autograd_forget_ctx(const lm_ctx *ctx) {
  if (custom_ctx == ctx) custom_ctx = NULL;
}

/* Drops what the node holds for backward; returns nodes to release. */
static void node_clear(lm_node *n, lm_node ***stack, int32_t *top, int32_t *cap) {
  for (int32_t i = 0; i < LM_NODE_SAVED; i++) { lm_tensor_release(n->saved[i]); n->saved[i] = NULL; }
  if (n->extra_free && n->extra) n->extra_free(n->extra);
  n->extra = NULL;
  for (int32_t i = 0; i < n->n_in; i++) {
    lm_tensor_release(n->next[i].leaf);
    n->next[i].leaf = NULL;
    lm_node *up = n->next[i].node;
    n->next[i].node = NULL;
    if (!up) continue;
    if (*top == *cap) {
      int32_t c = *cap ? 2 * *cap : 16;
      lm_node **g = realloc(*stack, (size_t)c * sizeof *g);
      if (!g) { lm_node_release(up); continue; } /* recursion as a fallback */
      *stack = g;
      *cap = c;
    }
    (*stack)[(*top)++] = up;
  }
  n->freed = true;
}

/* Iterative, so that releasing a long chain (an RNN over many steps) cannot
   overflow the C stack. */
void lm_node_release(lm_node *n) {
  lm_node **stack = NULL;
  int32_t top = 0, cap = 0;
  while (n) {
    if (--n->refcount == 0) {
      node_clear(n, &stack, &top, &cap);
      if (n->custom_id) custom_freed_push(custom_ctx, n->custom_id);
      free(n->next);
      free(n->needs);
      free(n->outs);
      free(n->grads);
      free(n);
    }
    n = top ? stack[--top] : NULL;
  }
  free(stack);
}

static lm_node *node_new(lm_ctx *ctx, int32_t op, lm_backward_fn fn, int32_t n_in, const lm_tensor *const *in,
                         int32_t n_out, lm_tensor *const *out) {
  lm_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->refcount = 1;
  n->op = op;
  n->name = lm_op_name(op); /* plugin ops overwrite it */
  n->backward = fn;
  n->n_in = n_in;
  n->n_out = n_out;
  n->next = calloc((size_t)(n_in ? n_in : 1), sizeof *n->next);
  n->needs = calloc((size_t)(n_in ? n_in : 1), sizeof *n->needs);
  n->outs = calloc((size_t)n_out, sizeof *n->outs);
  if (!n->next || !n->needs || !n->outs) { lm_node_release(n); return NULL; }
  for (int32_t i = 0; i < n_in; i++) {
    const lm_tensor *t = in[i];
    if (!wants_grad(t)) continue;
    n->needs[i] = true;
    if (t->grad_fn) {
      n->next[i].node = t->grad_fn;
      n->next[i].node->refcount++;
      n->next[i].nr = t->output_nr;
    } else {
      n->next[i].leaf = (lm_tensor *)t;
      lm_tensor_retain(n->next[i].leaf);
    }
  }
  for (int32_t i = 0; i < n_out; i++) {
    lm_tensor *o = out[i];
    n->outs[i].dtype = o->dtype;
    n->outs[i].ndim = o->ndim;
    n->outs[i].device = o->storage->device;
    memcpy(n->outs[i].shape, o->shape, sizeof o->shape);
    if (o->grad_fn) lm_node_release(o->grad_fn);
    o->grad_fn = n;
    o->output_nr = i;
    n->refcount++;
  }
  n->refcount--; /* the outputs hold it now */
  (void)ctx;
  return n;
}

lm_status lm_record(lm_ctx *ctx, int32_t op, lm_backward_fn fn, int32_t n_in, const lm_tensor *const *in,
                    int32_t n_out, lm_tensor *const *out, lm_node **node) {
  *node = NULL;
  if (!lm_grad_needed(ctx, n_in, in)) return LM_OK;
  if (!(*node = node_new(ctx, op, fn, n_in, in, n_out, out)))
    return lm_err(ctx, LM_E_OOM, "%s: out of memory recording the op for autograd", lm_op_name(op));
  return LM_OK;
}

lm_status lm_save(lm_ctx *ctx, lm_node *node, int32_t i, const lm_tensor *t) {
  LM_ASSERT(i >= 0 && i < LM_NODE_SAVED && !node->saved[i]);
  if (!t) return LM_OK;
  if (!(node->saved[i] = lm_view_header(t)))
    return lm_err(ctx, LM_E_OOM, "%s: out of memory saving a tensor for backward", lm_op_name(node->op));
  return LM_OK;
}

lm_status lm_custom_op(lm_ctx *ctx, int32_t id, int32_t n_in, lm_tensor *const *in, int32_t n_out, lm_tensor *const *out) {
  if (id <= 0) return lm_err(ctx, LM_E_ARG, "custom_op: id %d, expected a positive id", id);
  for (int32_t i = 0; i < n_out; i++)
    if (out[i]->grad_fn || out[i]->requires_grad)
      return lm_err(ctx, LM_E_ARG, "custom_op: output %d already takes part in autograd, expected a fresh tensor "
                    "(compute the forward under no_grad)", i);
  lm_node *n;
  lm_status st = lm_record(ctx, LM_OP_CUSTOM, NULL, n_in, (const lm_tensor *const *)in, n_out, out, &n);
  if (st || !n) return st;
  n->custom_id = id;
  custom_ctx = ctx;
  return LM_OK;
}

int32_t lm_custom_freed(lm_ctx *ctx, int32_t *ids, int32_t max) {
  int32_t k = ctx->n_custom_freed < max ? ctx->n_custom_freed : max;
  memcpy(ids, ctx->custom_freed + ctx->n_custom_freed - k, (size_t)k * sizeof *ids);
  ctx->n_custom_freed -= k;
  return k;
}

lm_status lm_sum_to(lm_ctx *ctx, const lm_tensor *g, int32_t ndim, const int64_t *shape, lm_tensor **out) {
  if (same_shape(g->ndim, g->shape, ndim, shape)) {
    lm_tensor_retain((lm_tensor *)g);
    *out = (lm_tensor *)g;
    return LM_OK;
  }
  int32_t dims[LM_MAX_DIMS], nd = 0, lead = g->ndim - ndim;
  LM_ASSERT(lead >= 0);
  for (int32_t d = 0; d < g->ndim; d++)
    if (d < lead || (shape[d - lead] == 1 && g->shape[d] != 1)) dims[nd++] = d;
  lm_tensor *s;
  lm_status st = lm_reduce(ctx, LM_OP_SUM, g, nd, dims, 1, 0, &s, NULL);
  if (st) return st;
  st = lm_reshape(ctx, s, ndim, shape, out);
  lm_tensor_release(s);
  return st;
}

/* ---- the backward walk ---- */

struct lm_backward_walk {
  lm_node **all;     /* every node reached (+1 each) */
  int32_t n_all;
  lm_node **ready;   /* nodes whose consumers have all run */
  int32_t n_ready;
  bool retain;
  lm_node *waiting;  /* a Lua-defined node handed to the caller */
  lm_tensor **waiting_in; /* what the caller supplied for it */
};

static lm_status accumulate_leaf(lm_ctx *ctx, lm_tensor *leaf, lm_tensor *g) {
  if (!same_shape(g->ndim, g->shape, leaf->ndim, leaf->shape) || g->dtype != leaf->dtype) {
    char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "backward: gradient %s %s for a leaf %s %s", LM_SHP(g, a),
                  lm_dtype_name(g->dtype), LM_SHP(leaf, b), lm_dtype_name(leaf->dtype));
  }
  if (lm_device_of(g) != lm_device_of(leaf)) { /* a 0-d CPU leaf used as a host value by a device op */
    lm_tensor *moved;
    lm_status st = lm_to_device(ctx, g, lm_device_of(leaf), &moved);
    if (st) return st;
    st = accumulate_leaf(ctx, leaf, moved);
    lm_tensor_release(moved);
    return st;
  }
  if (leaf->grad) return lm_binary(ctx, LM_OP_ADD, leaf->grad, g, leaf->grad, NULL);
  /* a gradient nobody else holds can be kept as it is */
  if (atomic_load(&g->refcount) == 1 && lm_is_contiguous(g) && atomic_load(&g->storage->refcount) == 1) {
    lm_tensor_retain(g);
    leaf->grad = g;
    return LM_OK;
  }
  return lm_clone(ctx, g, &leaf->grad);
}

/* Adds g into the slot of output nr of node n. */
static lm_status accumulate_node(lm_ctx *ctx, lm_node *n, int32_t nr, lm_tensor *g) {
  if (lm_device_of(g) != n->outs[nr].device) { /* a 0-d CPU tensor used as a host value by a device op */
    lm_tensor *moved;
    lm_status st = lm_to_device(ctx, g, n->outs[nr].device, &moved);
    if (st) return st;
    st = accumulate_node(ctx, n, nr, moved);
    lm_tensor_release(moved);
    return st;
  }
  lm_tensor **slot = &n->grads[nr];
  if (!*slot) {
    lm_tensor_retain(g);
    *slot = g;
    return LM_OK;
  }
  lm_tensor *sum;
  lm_status st = lm_binary(ctx, LM_OP_ADD, *slot, g, NULL, &sum);
  if (st) return st;
  lm_tensor_release(*slot);
  *slot = sum;
  return LM_OK;
}

static lm_status freed_error(lm_ctx *ctx, const lm_node *n) {
  return lm_err(ctx, LM_E_ARG, "backward: the graph through %s was freed by an earlier backward, "
                "expected retain_graph=true on that first backward", n->name);
}

/* Collects the nodes reachable from root and counts their consumers. */
static lm_status collect(lm_ctx *ctx, lm_backward_walk *w, lm_node *root) {
  uint32_t epoch = ++ctx->walk_epoch;
  int32_t cap = 64, top = 0;
  lm_node **stack = malloc((size_t)cap * sizeof *stack);
  w->all = malloc((size_t)cap * sizeof *w->all);
  int32_t all_cap = cap;
  if (!stack || !w->all) { free(stack); return lm_err(ctx, LM_E_OOM, "backward: out of memory"); }
  root->epoch = epoch;
  root->deps = 0;
  stack[top++] = root;
  lm_status st = LM_OK;
  while (top && !st) {
    lm_node *n = stack[--top];
    if (n->freed) { st = freed_error(ctx, n); break; }
    if (w->n_all == all_cap) {
      lm_node **g = realloc(w->all, (size_t)(all_cap *= 2) * sizeof *g);
      if (!g) { st = lm_err(ctx, LM_E_OOM, "backward: out of memory"); break; }
      w->all = g;
    }
    n->refcount++;
    w->all[w->n_all++] = n;
    free(n->grads);
    if (!(n->grads = calloc((size_t)n->n_out, sizeof *n->grads))) { st = lm_err(ctx, LM_E_OOM, "backward: out of memory"); break; }
    for (int32_t i = 0; i < n->n_in; i++) {
      lm_node *up = n->next[i].node;
      if (!up) continue;
      if (up->epoch == epoch) { up->deps++; continue; }
      up->epoch = epoch;
      up->deps = 1;
      if (top == cap) {
        lm_node **g = realloc(stack, (size_t)(cap *= 2) * sizeof *g);
        if (!g) { st = lm_err(ctx, LM_E_OOM, "backward: out of memory"); break; }
        stack = g;
      }
      stack[top++] = up;
    }
  }
  free(stack);
  if (!st && !(w->ready = malloc((size_t)w->n_all * sizeof *w->ready)))
    st = lm_err(ctx, LM_E_OOM, "backward: out of memory");
  return st;
}

lm_status lm_backward_begin(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *grad, int32_t retain_graph, lm_backward_walk **out) {
  char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
  *out = NULL;
  if (!wants_grad(t))
    return lm_err(ctx, LM_E_ARG, "backward: the tensor does not require grad (no input of the ops that made it "
                  "had requires_grad, or it was computed under no_grad)");
  lm_tensor *g = NULL;
  lm_status st;
  if (grad) {
    if (!same_shape(grad->ndim, grad->shape, t->ndim, t->shape))
      return lm_err(ctx, LM_E_SHAPE, "backward: gradient of shape %s for a tensor of shape %s, expected the same shape",
                    LM_SHP(grad, a), LM_SHP(t, b));
    lm_tensor *moved = NULL; /* the gradient goes where the tensor is */
    if ((st = lm_to_device(ctx, grad, lm_device_of(t), &moved))) return st;
    st = lm_cast_if_needed(ctx, moved, t->dtype, &g);
    lm_tensor_release(moved);
    if (st) return st;
  } else {
    if (lm_numel(t) != 1)
      return lm_err(ctx, LM_E_SHAPE, "backward: the tensor has shape %s, expected one element (or pass a gradient)",
                    LM_SHP(t, a));
    if ((st = lm_new_on(ctx, "backward", lm_device_of(t), t->dtype, t->ndim, t->shape, &g))) return st;
    if ((st = lm_fill(ctx, g, 1.0))) { lm_tensor_release(g); return st; }
  }
  lm_backward_walk *w = calloc(1, sizeof *w);
  if (!w) { lm_tensor_release(g); return lm_err(ctx, LM_E_OOM, "backward: out of memory"); }
  w->retain = retain_graph != 0;
  *out = w;
  if (!t->grad_fn) { /* a leaf: its gradient is the seed */
    st = accumulate_leaf(ctx, (lm_tensor *)t, g);
    lm_tensor_release(g);
    return st;
  }
  lm_node *root = t->grad_fn;
  if (!(st = collect(ctx, w, root))) {
    st = accumulate_node(ctx, root, t->output_nr, g);
    w->ready[w->n_ready++] = root;
  }
  lm_tensor_release(g);
  return st;
}

/* Hands input gradients gin of node n on, then drops what n held. */
static lm_status propagate(lm_ctx *ctx, lm_backward_walk *w, lm_node *n, lm_tensor **gin) {
  lm_status st = LM_OK;
  for (int32_t i = 0; i < n->n_in && !st; i++) {
    lm_edge *e = &n->next[i];
    if (gin[i] && e->leaf) st = accumulate_leaf(ctx, e->leaf, gin[i]);
    if (e->node) {
      if (gin[i]) st = accumulate_node(ctx, e->node, e->nr, gin[i]);
      if (!st && --e->node->deps == 0) w->ready[w->n_ready++] = e->node;
    }
  }
  for (int32_t i = 0; i < n->n_out; i++) { lm_tensor_release(n->grads[i]); n->grads[i] = NULL; }
  if (!w->retain && !st) {
    lm_node **stack = NULL;
    int32_t top = 0, cap = 0;
    node_clear(n, &stack, &top, &cap);
    for (int32_t i = 0; i < top; i++) lm_node_release(stack[i]);
    free(stack);
  }
  return st;
}

static lm_status grad_out_of(lm_ctx *ctx, lm_node *n, int32_t i, lm_tensor **out) {
  if (n->grads[i]) {
    lm_tensor_retain(n->grads[i]);
    *out = n->grads[i];
    return LM_OK;
  }
  lm_out_meta *m = &n->outs[i];
  lm_status st = lm_new_on(ctx, "backward", m->device, m->dtype, m->ndim, m->shape, out);
  if (!st) st = lm_fill(ctx, *out, 0.0);
  return st;
}

static lm_status run_node(lm_ctx *ctx, lm_node *n, lm_tensor **gin) {
  lm_tensor *gout_buf[8], **gout = n->n_out <= 8 ? gout_buf : calloc((size_t)n->n_out, sizeof *gout);
  if (!gout) return lm_err(ctx, LM_E_OOM, "backward: out of memory");
  lm_status st = LM_OK;
  int32_t made = 0;
  for (; made < n->n_out && !st; made++) st = grad_out_of(ctx, n, made, &gout[made]);
  if (!st) { /* an op's backward reads its operands as its forward did (autocast) */
    int32_t was = ctx->autocast;
    ctx->autocast = n->autocast;
    st = n->backward(ctx, n, gout, gin);
    ctx->autocast = was;
  }
  for (int32_t i = 0; i < made; i++) lm_tensor_release(gout[i]);
  if (gout != gout_buf) free(gout);
  return st;
}

lm_status lm_backward_step(lm_ctx *ctx, lm_backward_walk *w, int32_t *custom_id) {
  *custom_id = 0;
  bool was = ctx->grad_enabled;
  ctx->grad_enabled = false;
  lm_status st = LM_OK;
  lm_tensor *gin_buf[16], **gin = NULL;
  if (w->waiting) { /* the caller has supplied the Lua op's gradients */
    lm_node *n = w->waiting;
    w->waiting = NULL;
    st = propagate(ctx, w, n, w->waiting_in);
    for (int32_t i = 0; i < n->n_in; i++) lm_tensor_release(w->waiting_in[i]);
    free(w->waiting_in);
    w->waiting_in = NULL;
  }
  while (!st && w->n_ready) {
    lm_node *n = w->ready[--w->n_ready];
    if (n->freed) { st = freed_error(ctx, n); break; }
    if (n->op == LM_OP_CUSTOM) {
      if (!(w->waiting_in = calloc((size_t)n->n_in, sizeof *w->waiting_in))) {
        st = lm_err(ctx, LM_E_OOM, "backward: out of memory");
        break;
      }
      w->waiting = n;
      *custom_id = n->custom_id;
      break;
    }
    gin = n->n_in <= 16 ? gin_buf : calloc((size_t)n->n_in, sizeof *gin);
    if (!gin) { st = lm_err(ctx, LM_E_OOM, "backward: out of memory"); break; }
    memset(gin, 0, (size_t)n->n_in * sizeof *gin);
    st = run_node(ctx, n, gin);
    if (!st) st = propagate(ctx, w, n, gin);
    for (int32_t i = 0; i < n->n_in; i++) lm_tensor_release(gin[i]);
    if (gin != gin_buf) free(gin);
  }
  ctx->grad_enabled = was;
  return st;
}

lm_status lm_backward_grad_out(lm_ctx *ctx, lm_backward_walk *w, int32_t i, lm_tensor **out) {
  if (!w->waiting || i < 0 || i >= w->waiting->n_out)
    return lm_err(ctx, LM_E_ARG, "backward: no Lua-defined op output %d is waiting for its gradient", i);
  return grad_out_of(ctx, w->waiting, i, out);
}

lm_status lm_backward_supply(lm_ctx *ctx, lm_backward_walk *w, int32_t i, const lm_tensor *g) {
  lm_node *n = w->waiting;
  if (!n || i < 0 || i >= n->n_in)
    return lm_err(ctx, LM_E_ARG, "backward: no Lua-defined op input %d is waiting for a gradient", i);
  if (!g || !n->needs[i]) return LM_OK;
  const lm_tensor *in = n->next[i].leaf;
  int32_t ndim = in ? in->ndim : n->next[i].node->outs[n->next[i].nr].ndim;
  const int64_t *shape = in ? in->shape : n->next[i].node->outs[n->next[i].nr].shape;
  int32_t dtype = in ? in->dtype : n->next[i].node->outs[n->next[i].nr].dtype;
  if (!same_shape(g->ndim, g->shape, ndim, shape)) {
    char a[LM_SHAPE_BUF], b[LM_SHAPE_BUF];
    return lm_err(ctx, LM_E_SHAPE, "backward: a Lua-defined op returned a gradient of shape %s for input %d of shape %s",
                  LM_SHP(g, a), i + 1, lm_shape_str(ndim, shape, b, sizeof b));
  }
  lm_tensor *c;
  lm_status st = lm_cast_if_needed(ctx, g, dtype, &c);
  if (st) return st;
  lm_tensor_release(w->waiting_in[i]);
  w->waiting_in[i] = c;
  return LM_OK;
}

void lm_backward_end(lm_ctx *ctx, lm_backward_walk *w) {
  if (!w) return;
  if (w->waiting_in) {
    for (int32_t i = 0; i < w->waiting->n_in; i++) lm_tensor_release(w->waiting_in[i]);
    free(w->waiting_in);
  }
  for (int32_t i = 0; i < w->n_all; i++) {
    lm_node *n = w->all[i];
    for (int32_t k = 0; k < n->n_out; k++) { lm_tensor_release(n->grads[k]); n->grads[k] = NULL; }
    lm_node_release(n);
  }
  free(w->all);
  free(w->ready);
  free(w);
}

lm_status lm_backward(lm_ctx *ctx, const lm_tensor *t, const lm_tensor *grad, int32_t retain_graph) {
  lm_backward_walk *w;
  int32_t id = 0;
  lm_status st = lm_backward_begin(ctx, t, grad, retain_graph, &w);
  if (!st) st = lm_backward_step(ctx, w, &id);
  if (!st && id)
    st = lm_err(ctx, LM_E_UNSUPPORTED, "backward: the graph holds an op defined in Lua, expected the Lua backward (t:backward())");
  lm_backward_end(ctx, w);
  return st;
}
