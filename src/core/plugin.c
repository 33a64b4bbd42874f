/* plugin.c - loading plugins, running their ops, and the host table they
 * call back through.
 *
 * Plugins are process-wide: a shared object is opened once and stays mapped
 * for the life of the process (we never dlclose). Tensors a plugin made may
 * outlive any context, and a refused library may already have run
 * constructors or left callbacks pointing into itself, so unmapping it is
 * never safe. Op ids are process-wide too (LM_OP_COUNT + the op's position
 * in load order), so an id stays meaningful in every context; each context
 * keeps its own table of the ops it registered (ctx->plugin_ops, indexed by
 * id - LM_OP_COUNT, NULL where that context did not load the plugin). */
#include "internal.h"
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_OP_ARITY 64 /* inputs or outputs of one plugin op */

struct lm_plugin_handle {
  char *path;            /* canonical (realpath) */
  void *dl;
  const lm_plugin *desc; /* owned by the plugin, static there */
  int32_t first_id;      /* id of desc->ops[0] */
  struct lm_plugin_handle *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct lm_plugin_handle *loaded; /* every plugin accepted so far */
static int32_t n_global_ops;             /* ops of all of them */

/* ---- the host table ---- */


static void host_log(lm_ctx *ctx, const char *msg) {
  (void)ctx;
  fprintf(stderr, "lumen plugin: %s\n", msg ? msg : "(null)");
}

static const lm_host_api host_api = {
  .abi_major = LM_ABI_MAJOR,
  .abi_minor = LM_ABI_MINOR,
  .size = sizeof(lm_host_api),
  .tensor_empty = lm_empty,
  .tensor_contiguous = lm_contiguous,
  .tensor_retain = lm_tensor_retain,
  .tensor_release = lm_tensor_release,
  .tensor_info = lm_tensor_get_info,
  .set_error = lm_err,
  .log = host_log,
  .parallel_for = lm_parallel_for,
  .abort_requested = lm_ctx_abort_requested,
  .alloc = lm_alloc,
  .free = lm_free,
};

const lm_host_api *lm_host_api_get(void) { return &host_api; }

/* ---- loading ---- */

static const char *plugin_label(const lm_plugin *d) {
  return d && d->name ? d->name : "?";
}

/* Checks the descriptor a plugin's entry handed back; 0 when usable. */
static lm_status check_desc(lm_ctx *ctx, const char *path, const lm_plugin *d) {
  if (d->abi_major != LM_ABI_MAJOR)
    return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s) was built for lumen ABI %u.%u, this lumen is ABI %u.%u",
                  path, plugin_label(d), (unsigned)d->abi_major, (unsigned)d->abi_minor,
                  (unsigned)LM_ABI_MAJOR, (unsigned)LM_ABI_MINOR);
  if (d->struct_size < sizeof(lm_plugin))
    return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): its lm_plugin struct has %zu bytes, lumen ABI %u.%u needs at least %zu",
                  path, plugin_label(d), d->struct_size, (unsigned)LM_ABI_MAJOR, (unsigned)LM_ABI_MINOR, sizeof(lm_plugin));
  if (!d->name || !d->name[0])
    return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s has no name", path);
  if (d->n_ops < 0 || (d->n_ops > 0 && !d->ops))
    return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): bad op table (%d ops)", path, d->name, (int)d->n_ops);
  for (int32_t i = 0; i < d->n_ops; i++) {
    const lm_plugin_op *op = &d->ops[i];
    if (!op->name || !op->name[0] || !op->forward)
      return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): op %d has no name or no forward function", path, d->name, (int)i);
    if (op->n_in < 0 || op->n_in > MAX_OP_ARITY || op->n_out < 1 || op->n_out > MAX_OP_ARITY)
      return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): op %s takes %d inputs and makes %d outputs (expected 0..%d and 1..%d)",
                    path, d->name, op->name, (int)op->n_in, (int)op->n_out, MAX_OP_ARITY, MAX_OP_ARITY);
    for (int32_t j = 0; j < i; j++)
      if (strcmp(d->ops[j].name, op->name) == 0)
        return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): op %s is defined twice", path, d->name, op->name);
  }
  return LM_OK;
}

/* The context entry of plugin op id, or NULL when ctx has not registered it. */
static const lm_plugin_op_entry *ctx_entry(const lm_ctx *ctx, int32_t id) {
  int32_t k = id - LM_OP_COUNT;
  if (k < 0 || k >= ctx->n_plugin_ops || !ctx->plugin_ops[k].op) return NULL;
  return &ctx->plugin_ops[k];
}

static const lm_plugin_op_entry *ctx_find(const lm_ctx *ctx, const char *name, int32_t *id) {
  for (int32_t k = 0; k < ctx->n_plugin_ops; k++) {
    const lm_plugin_op_entry *e = &ctx->plugin_ops[k];
    if (e->op && strcmp(e->op->name, name) == 0) {
      if (id) *id = LM_OP_COUNT + k;
      return e;
    }
  }
  return NULL;
}

/* Adds h's ops to ctx (no-op when already there); refuses names ctx has. */
static lm_status register_ops(lm_ctx *ctx, const struct lm_plugin_handle *h) {
  const lm_plugin *d = h->desc;
  if (d->n_ops == 0) return LM_OK;
  const lm_plugin_op_entry *mine = ctx_entry(ctx, h->first_id);
  if (mine && mine->plugin == h) return LM_OK;
  for (int32_t i = 0; i < d->n_ops; i++) {
    const lm_plugin_op_entry *e = ctx_find(ctx, d->ops[i].name, NULL);
    if (e)
      return lm_err(ctx, LM_E_ABI, "plugin_load: plugin %s (%s): op %s is already defined by plugin %s (%s)",
                    h->path, d->name, d->ops[i].name, e->plugin->path, e->plugin->desc->name);
  }
  int32_t need = h->first_id - LM_OP_COUNT + d->n_ops;
  if (need > ctx->n_plugin_ops) {
    lm_plugin_op_entry *grown = realloc(ctx->plugin_ops, (size_t)need * sizeof *grown);
    if (!grown) return lm_err(ctx, LM_E_OOM, "plugin_load: out of memory");
    memset(grown + ctx->n_plugin_ops, 0, (size_t)(need - ctx->n_plugin_ops) * sizeof *grown);
    ctx->plugin_ops = grown;
    ctx->n_plugin_ops = need;
  }
  for (int32_t i = 0; i < d->n_ops; i++) {
    lm_plugin_op_entry *e = &ctx->plugin_ops[h->first_id - LM_OP_COUNT + i];
    e->op = &d->ops[i];
    e->plugin = h;
  }
  return LM_OK;
}

/* Opens path and validates it; the caller holds lock. */
static lm_status open_plugin(lm_ctx *ctx, const char *path, const char *real, struct lm_plugin_handle **out) {
  dlerror();
  void *dl = dlopen(real, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    const char *why = dlerror();
    return lm_err(ctx, LM_E_IO, "plugin_load: cannot load %s: %s", path, why ? why : "not a shared object");
  }
  /* the same object under another name (a hard link, say) */
  for (struct lm_plugin_handle *h = loaded; h; h = h->next)
    if (h->dl == dl) {
      *out = h;
      return LM_OK;
    }
  dlerror();
  lm_plugin_entry_fn entry;
  *(void **)&entry = dlsym(dl, "lm_plugin_entry");
  if (!entry)
    return lm_err(ctx, LM_E_ABI, "plugin_load: %s is not a lumen plugin (no lm_plugin_entry symbol)", path);
  const lm_plugin *d = NULL;
  lm_status st = entry(&host_api, LM_ABI_MAJOR, &d);
  if (st != LM_OK)
    return lm_err(ctx, st < 0 && st >= LM_E_ABORTED ? st : LM_E_ABI,
                  "plugin_load: %s refused to load (lm_plugin_entry returned %d; it may need another lumen ABI than %u.%u)",
                  path, (int)st, (unsigned)LM_ABI_MAJOR, (unsigned)LM_ABI_MINOR);
  if (!d) return lm_err(ctx, LM_E_ABI, "plugin_load: %s: lm_plugin_entry returned no plugin", path);
  st = check_desc(ctx, path, d);
  if (st) return st;
  if (n_global_ops > INT32_MAX - LM_OP_COUNT - d->n_ops)
    return lm_err(ctx, LM_E_ABI, "plugin_load: %s: too many plugin ops", path);
  struct lm_plugin_handle *h = calloc(1, sizeof *h);
  char *copy = strdup(real);
  if (!h || !copy) {
    free(h);
    free(copy);
    return lm_err(ctx, LM_E_OOM, "plugin_load: out of memory");
  }
  h->path = copy;
  h->dl = dl;
  h->desc = d;
  h->first_id = LM_OP_COUNT + n_global_ops;
  n_global_ops += d->n_ops;
  h->next = loaded;
  loaded = h;
  *out = h;
  return LM_OK;
}

lm_status lm_plugin_load(lm_ctx *ctx, const char *path, lm_plugin_handle **out) {
  if (!path || !path[0]) return lm_err(ctx, LM_E_ARG, "plugin_load: path is empty");
  if (!out) return lm_err(ctx, LM_E_ARG, "plugin_load: out is NULL");
  *out = NULL;
  /* Check the file ourselves: dlopen would search the library path for a
     bare name, and its messages for a missing file are less direct. */
  struct stat sb;
  if (stat(path, &sb) != 0)
    return lm_err(ctx, LM_E_IO, "plugin_load: cannot open %s: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode))
    return lm_err(ctx, LM_E_IO, "plugin_load: %s is not a regular file", path);
  char *real = realpath(path, NULL);
  if (!real) return lm_err(ctx, LM_E_IO, "plugin_load: cannot resolve %s: %s", path, strerror(errno));

  lm_status st = LM_OK;
  struct lm_plugin_handle *h = NULL;
  pthread_mutex_lock(&lock);
  for (struct lm_plugin_handle *p = loaded; p; p = p->next)
    if (strcmp(p->path, real) == 0) h = p;
  if (!h) st = open_plugin(ctx, path, real, &h);
  if (st == LM_OK) st = register_ops(ctx, h);
  pthread_mutex_unlock(&lock);
  free(real);
  if (st == LM_OK) *out = h;
  return st;
}

const char *lm_plugin_name(const lm_plugin_handle *p) { return p ? p->desc->name : ""; }
const char *lm_plugin_version(const lm_plugin_handle *p) {
  return p && p->desc->version ? p->desc->version : "";
}
int32_t lm_plugin_op_count(const lm_plugin_handle *p) { return p ? p->desc->n_ops : 0; }
int32_t lm_plugin_op_id(const lm_plugin_handle *p, int32_t i) {
  if (!p || i < 0 || i >= p->desc->n_ops) return -1;
  return p->first_id + i;
}

/* Name of the plugin's op i ("" when out of range). */
const char *lm_plugin_op_name(const lm_plugin_handle *p, int32_t i) {
  if (!p || i < 0 || i >= p->desc->n_ops) return "";
  return p->desc->ops[i].name;
}

/* ---- running ops ---- */

lm_status lm_op_lookup(lm_ctx *ctx, const char *name, int32_t *op, int32_t *n_in, int32_t *n_out) {
  if (!name) return lm_err(ctx, LM_E_ARG, "op_lookup: name is NULL");
  int32_t id;
  const lm_plugin_op_entry *e = ctx_find(ctx, name, &id);
  if (!e) return lm_err(ctx, LM_E_ARG, "op_lookup: no plugin op named '%s' is loaded", name);
  if (op) *op = id;
  if (n_in) *n_in = e->op->n_in;
  if (n_out) *n_out = e->op->n_out;
  return LM_OK;
}

/* The entry for id, or an error naming what is wrong with it. */
static lm_status find_op(lm_ctx *ctx, const char *what, int32_t id, const lm_plugin_op_entry **e) {
  if (id >= 0 && id < LM_OP_COUNT)
    return lm_err(ctx, LM_E_UNSUPPORTED, "%s: op %d (%s) is a core op; call its own function", what, (int)id, lm_op_name(id));
  *e = ctx_entry(ctx, id);
  if (!*e) return lm_err(ctx, LM_E_ARG, "%s: no plugin op with id %d is loaded in this context", what, (int)id);
  return LM_OK;
}

/* Tensors in list[0..n) must be given; role names them in the message. */
static lm_status check_list(lm_ctx *ctx, const char *op, const char *role, int32_t n, lm_tensor *const *list) {
  if (n > 0 && !list) return lm_err(ctx, LM_E_ARG, "%s: %s are missing (NULL array)", op, role);
  for (int32_t i = 0; i < n; i++)
    if (!list[i]) return lm_err(ctx, LM_E_ARG, "%s: %s %d is NULL", op, role, (int)i);
  return LM_OK;
}

static lm_status check_call(lm_ctx *ctx, const lm_plugin_op *op, int32_t n_in, lm_tensor *const *in, const double *params, int32_t n_params) {
  if (n_in != op->n_in)
    return lm_err(ctx, LM_E_ARG, "%s: expected %d input%s, got %d", op->name, (int)op->n_in, op->n_in == 1 ? "" : "s", (int)n_in);
  if (n_params < 0 || (n_params > 0 && !params))
    return lm_err(ctx, LM_E_ARG, "%s: bad parameter list (%d params)", op->name, (int)n_params);
  return check_list(ctx, op->name, "input", n_in, in);
}

/* What autograd keeps of a plugin op call: detached inputs and outputs and
   the parameters, all handed back to the plugin's backward. */
typedef struct plugin_call {
  int32_t n_in, n_out, n_params;
  lm_tensor **in, **out;
  double *params;
} plugin_call;

static void plugin_call_free(void *p) {
  plugin_call *c = p;
  for (int32_t i = 0; i < c->n_in; i++) lm_tensor_release(c->in[i]);
  for (int32_t i = 0; i < c->n_out; i++) lm_tensor_release(c->out[i]);
  free(c->in);
  free(c->out);
  free(c->params);
  free(c);
}

static lm_status plugin_node_backward(lm_ctx *ctx, lm_node *n, lm_tensor *const *gout, lm_tensor **gin) {
  plugin_call *c = n->extra;
  return lm_op_backward(ctx, n->op, c->n_in, c->in, c->out, gout, c->params, c->n_params, gin);
}

static lm_status record_call(lm_ctx *ctx, int32_t op, int32_t n_in, lm_tensor *const *in, int32_t n_out, lm_tensor *const *out,
                             const double *params, int32_t n_params) {
  lm_node *node;
  lm_status st = lm_record(ctx, op, plugin_node_backward, n_in, (const lm_tensor *const *)in, n_out, out, &node);
  if (st || !node) return st;
  node->name = ctx_entry(ctx, op)->op->name;
  plugin_call *c = calloc(1, sizeof *c);
  if (c) {
    node->extra = c;
    node->extra_free = plugin_call_free;
    c->in = calloc((size_t)(n_in ? n_in : 1), sizeof *c->in);
    c->out = calloc((size_t)n_out, sizeof *c->out);
    c->params = malloc((size_t)(n_params ? n_params : 1) * sizeof *c->params);
  }
  if (!c || !c->in || !c->out || !c->params) return lm_err(ctx, LM_E_OOM, "%s: out of memory recording for autograd", lm_op_name(op));
  if (n_params) memcpy(c->params, params, (size_t)n_params * sizeof *params);
  c->n_params = n_params;
  for (; c->n_in < n_in; c->n_in++)
    if (!(c->in[c->n_in] = lm_view_header(in[c->n_in]))) return lm_err(ctx, LM_E_OOM, "%s: out of memory", lm_op_name(op));
  for (; c->n_out < n_out; c->n_out++)
    if (!(c->out[c->n_out] = lm_view_header(out[c->n_out]))) return lm_err(ctx, LM_E_OOM, "%s: out of memory", lm_op_name(op));
  return LM_OK;
}

lm_status lm_op_forward(lm_ctx *ctx, int32_t op, int32_t n_in, lm_tensor *const *in, const double *params, int32_t n_params, lm_tensor **out) {
  const lm_plugin_op_entry *e;
  lm_status st = find_op(ctx, "op_forward", op, &e);
  if (st) return st;
  const lm_plugin_op *o = e->op;
  if ((st = check_call(ctx, o, n_in, in, params, n_params))) return st;
  if (!out) return lm_err(ctx, LM_E_ARG, "%s: output array is NULL", o->name);
  for (int32_t i = 0; i < o->n_out; i++) out[i] = NULL;
  ctx->errmsg[0] = 0;
  bool grad = ctx->grad_enabled;
  ctx->grad_enabled = false; /* the ops a plugin calls are not recorded one by one */
  st = o->forward(&host_api, ctx, in, params, n_params, out);
  ctx->grad_enabled = grad;
  if (st != LM_OK) {
    /* On failure the plugin owns cleanup; we only drop what it left. */
    for (int32_t i = 0; i < o->n_out; i++) out[i] = NULL;
    if (!ctx->errmsg[0]) lm_err(ctx, st < 0 ? st : LM_E_ARG, "%s: failed (status %d)", o->name, (int)st);
    return st < 0 ? st : LM_E_ARG;
  }
  int32_t made = 0;
  for (int32_t i = 0; i < o->n_out; i++) made += out[i] != NULL;
  if (made != o->n_out) {
    for (int32_t i = 0; i < o->n_out; i++) {
      if (out[i]) lm_tensor_release(out[i]);
      out[i] = NULL;
    }
    return lm_err(ctx, LM_E_ABI, "%s: the plugin made %d of its %d outputs", o->name, (int)made, (int)o->n_out);
  }
  if ((st = record_call(ctx, op, n_in, in, o->n_out, out, params, n_params))) {
    for (int32_t i = 0; i < o->n_out; i++) { lm_tensor_release(out[i]); out[i] = NULL; }
  }
  return st;
}

lm_status lm_op_backward(lm_ctx *ctx, int32_t op, int32_t n_in, lm_tensor *const *in, lm_tensor *const *out, lm_tensor *const *grad_out, const double *params, int32_t n_params, lm_tensor **grad_in) {
  const lm_plugin_op_entry *e;
  lm_status st = find_op(ctx, "op_backward", op, &e);
  if (st) return st;
  const lm_plugin_op *o = e->op;
  if (!o->backward)
    return lm_err(ctx, LM_E_UNSUPPORTED, "%s: has no backward (plugin %s does not differentiate it)", o->name, e->plugin->desc->name);
  if ((st = check_call(ctx, o, n_in, in, params, n_params))) return st;
  if ((st = check_list(ctx, o->name, "output", o->n_out, out))) return st;
  if ((st = check_list(ctx, o->name, "output gradient", o->n_out, grad_out))) return st;
  if (!grad_in && n_in > 0) return lm_err(ctx, LM_E_ARG, "%s: gradient array is NULL", o->name);
  for (int32_t i = 0; i < n_in; i++) grad_in[i] = NULL;
  ctx->errmsg[0] = 0;
  st = o->backward(&host_api, ctx, in, out, grad_out, params, n_params, grad_in);
  if (st != LM_OK) {
    for (int32_t i = 0; i < n_in; i++) grad_in[i] = NULL;
    if (!ctx->errmsg[0]) lm_err(ctx, st < 0 ? st : LM_E_ARG, "%s: backward failed (status %d)", o->name, (int)st);
    return st < 0 ? st : LM_E_ARG;
  }
  return LM_OK;
}
