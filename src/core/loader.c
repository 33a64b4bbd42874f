/* loader.c - worker threads that produce batches ahead of the training loop.
 *
 * Each worker is a POSIX thread running its own LuaJIT state (so workers
 * share no interpreter and need no lock around Lua). The state runs the
 * loader's script once; the script returns a function produce(job) that
 * builds batch number `job` and hands its tensors over with
 * lm_loader_put. Tensors are reference counted atomically, so they cross
 * from a worker's state to the main one without copies.
 *
 * Jobs are numbered 0, 1, 2, ... and taken in order by whichever worker is
 * free, at most `prefetch` ahead of the consumer; batch k lands in slot
 * k % prefetch and the consumer takes them in order, so what a batch holds
 * depends only on k (the script seeds from it), not on which worker made it
 * or when. Every job a worker takes is answered: with tensors, or with the
 * error produce raised, or with a note that it put nothing.
 *
 * liblumen does not link LuaJIT: the host process has it (the lumen
 * program, or the luajit interpreter, both export the Lua C API), and the
 * few functions used here are looked up at run time. */
#include "internal.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct lua_State lua_State;
static struct {
  lua_State *(*newstate)(void);
  void (*openlibs)(lua_State *);
  int (*loadbuffer)(lua_State *, const char *, size_t, const char *);
  int (*pcall)(lua_State *, int, int, int);
  void (*pushlightuserdata)(lua_State *, void *);
  void (*pushnumber)(lua_State *, double);
  void (*pushvalue)(lua_State *, int);
  const char *(*tolstring)(lua_State *, int, size_t *);
  void (*settop)(lua_State *, int);
  void (*close)(lua_State *);
} lua;

#define MAX_OUT 16

typedef struct {
  lm_tensor *t[MAX_OUT];
  int32_t n;
  char *error; /* the worker's message, or NULL */
  bool ready;
} slot;

struct lm_loader {
  pthread_mutex_t mu;
  pthread_cond_t job_free;   /* a job may be taken, or stop */
  pthread_cond_t slot_ready; /* a batch was put, or a worker gave up */
  int32_t nworkers, prefetch, running;
  int64_t next_job, consumed;
  bool stop;
  char *fatal; /* why a worker could not start */
  slot *slots;
  pthread_t *threads;
  int32_t started;
  char *script;
  size_t script_len;
};

typedef struct {
  lm_loader *loader;
  int32_t index;
} worker_arg;

static bool lua_found;
static void resolve_lua(void) {
#define SYM(field, name) (*(void **)&lua.field = dlsym(RTLD_DEFAULT, name))
  lua_found = SYM(newstate, "luaL_newstate") && SYM(openlibs, "luaL_openlibs") && SYM(loadbuffer, "luaL_loadbuffer") &&
              SYM(pcall, "lua_pcall") && SYM(pushlightuserdata, "lua_pushlightuserdata") &&
              SYM(pushnumber, "lua_pushnumber") && SYM(pushvalue, "lua_pushvalue") &&
              SYM(tolstring, "lua_tolstring") && SYM(settop, "lua_settop") && SYM(close, "lua_close");
#undef SYM
}

static bool find_lua(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, resolve_lua);
  return lua_found;
}

/* The last job this thread answered (lm_loader_put runs on the worker's
   own thread, inside produce). */
static _Thread_local int64_t last_put = -1;

/* Answers job `job` with an error message (the caller holds no lock). */
static void put_error(lm_loader *ld, int64_t job, const char *msg) {
  last_put = job;
  pthread_mutex_lock(&ld->mu);
  slot *s = &ld->slots[job % ld->prefetch];
  if (!s->ready && !ld->stop && job >= ld->consumed) {
    s->error = strdup(msg ? msg : "unknown error");
    s->ready = true;
    pthread_cond_broadcast(&ld->slot_ready);
  }
  pthread_mutex_unlock(&ld->mu);
}

static void *worker_main(void *p) {
  worker_arg *arg = p;
  lm_loader *ld = arg->loader;
  int32_t index = arg->index;
  free(arg);
  lua_State *L = lua.newstate();
  const char *failed = L ? NULL : "cannot create a Lua state (out of memory)";
  if (L) {
    lua.openlibs(L);
    if (lua.loadbuffer(L, ld->script, ld->script_len, "=lumen.loader worker") == 0) {
      lua.pushlightuserdata(L, ld);
      lua.pushnumber(L, (double)index);
      if (lua.pcall(L, 2, 1, 0) != 0) failed = lua.tolstring(L, -1, NULL);
    } else {
      failed = lua.tolstring(L, -1, NULL);
    }
  }
  pthread_mutex_lock(&ld->mu);
  if (failed && !ld->fatal) ld->fatal = strdup(failed ? failed : "unknown error");
  pthread_mutex_unlock(&ld->mu);
  /* the stack now holds produce (index 1) */
  for (int64_t job; !failed && (job = lm_loader_next_job(ld)) >= 0;) {
    lua.pushvalue(L, 1);
    lua.pushnumber(L, (double)job);
    if (lua.pcall(L, 1, 0, 0) != 0) {
      put_error(ld, job, lua.tolstring(L, -1, NULL));
      lua.settop(L, 1);
    } else if (last_put != job) {
      put_error(ld, job, "the worker's produce function returned without handing over a batch");
    }
  }
  if (L) lua.close(L);
  pthread_mutex_lock(&ld->mu);
  ld->running--;
  pthread_cond_broadcast(&ld->slot_ready);
  pthread_mutex_unlock(&ld->mu);
  return NULL;
}

lm_status lm_loader_new(lm_ctx *ctx, const char *script, int32_t workers, int32_t prefetch, lm_loader **out) {
  const char *op = "loader";
  if (!script) return lm_err(ctx, LM_E_ARG, "%s: script is NULL", op);
  if (workers < 1 || workers > 256) return lm_err(ctx, LM_E_ARG, "%s: %d workers, expected 1 to 256", op, workers);
  if (prefetch < 1 || prefetch > 4096) return lm_err(ctx, LM_E_ARG, "%s: prefetch %d, expected 1 to 4096", op, prefetch);
  if (!find_lua())
    return lm_err(ctx, LM_E_UNSUPPORTED,
                  "%s: worker threads need the Lua C API in the host process (run under the lumen program or luajit)", op);
  lm_loader *ld = calloc(1, sizeof *ld);
  if (!ld) return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  ld->nworkers = workers, ld->prefetch = prefetch;
  ld->script_len = strlen(script);
  ld->script = strdup(script);
  ld->slots = calloc((size_t)prefetch, sizeof *ld->slots);
  ld->threads = calloc((size_t)workers, sizeof *ld->threads);
  pthread_mutex_init(&ld->mu, NULL);
  pthread_cond_init(&ld->job_free, NULL);
  pthread_cond_init(&ld->slot_ready, NULL);
  if (!ld->script || !ld->slots || !ld->threads) {
    lm_loader_free(ld);
    return lm_err(ctx, LM_E_OOM, "%s: out of memory", op);
  }
  for (int32_t i = 0; i < workers; i++) {
    worker_arg *arg = malloc(sizeof *arg);
    if (!arg) break;
    arg->loader = ld, arg->index = i;
    pthread_mutex_lock(&ld->mu);
    ld->running++;
    pthread_mutex_unlock(&ld->mu);
    if (pthread_create(&ld->threads[i], NULL, worker_main, arg) != 0) {
      free(arg);
      pthread_mutex_lock(&ld->mu);
      ld->running--;
      pthread_mutex_unlock(&ld->mu);
      break;
    }
    ld->started++;
  }
  if (ld->started == 0) {
    lm_loader_free(ld);
    return lm_err(ctx, LM_E_OOM, "%s: cannot start a worker thread", op);
  }
  *out = ld;
  return LM_OK;
}

int64_t lm_loader_next_job(lm_loader *ld) {
  pthread_mutex_lock(&ld->mu);
  while (!ld->stop && ld->next_job >= ld->consumed + ld->prefetch) pthread_cond_wait(&ld->job_free, &ld->mu);
  int64_t job = ld->stop ? -1 : ld->next_job++;
  pthread_mutex_unlock(&ld->mu);
  return job;
}

void lm_loader_put(lm_loader *ld, int64_t job, int32_t n, lm_tensor *const *tensors) {
  if (n < 0 || n > MAX_OUT || job < 0) {
    put_error(ld, job < 0 ? 0 : job, "lm_loader_put: a batch holds 0 to 16 tensors");
    return;
  }
  last_put = job;
  pthread_mutex_lock(&ld->mu);
  slot *s = &ld->slots[job % ld->prefetch];
  if (!s->ready && !ld->stop && job >= ld->consumed) {
    for (int32_t i = 0; i < n; i++) {
      s->t[i] = tensors[i];
      if (s->t[i]) lm_tensor_retain(s->t[i]);
    }
    s->n = n;
    s->ready = true;
    pthread_cond_broadcast(&ld->slot_ready);
  }
  pthread_mutex_unlock(&ld->mu);
}

lm_status lm_loader_take(lm_ctx *ctx, lm_loader *ld, int32_t max, lm_tensor **out, int32_t *n) {
  const char *op = "loader";
  pthread_mutex_lock(&ld->mu);
  slot *s = &ld->slots[ld->consumed % ld->prefetch];
  while (!s->ready && !ld->fatal && ld->running > 0) pthread_cond_wait(&ld->slot_ready, &ld->mu);
  if (!s->ready) {
    lm_status st = lm_err(ctx, LM_E_WORKER, "%s: %s", op,
                          ld->fatal ? ld->fatal : "every worker has stopped before producing the batch");
    pthread_mutex_unlock(&ld->mu);
    return st;
  }
  lm_status st = LM_OK;
  if (s->error) {
    st = lm_err(ctx, LM_E_WORKER, "%s", s->error);
    free(s->error);
  } else if (s->n > max) {
    st = lm_err(ctx, LM_E_ARG, "%s: the batch holds %d tensors, room for %d", op, s->n, max);
    for (int32_t i = 0; i < s->n; i++) lm_tensor_release(s->t[i]);
  } else {
    for (int32_t i = 0; i < s->n; i++) out[i] = s->t[i];
    *n = s->n;
  }
  memset(s, 0, sizeof *s);
  ld->consumed++;
  pthread_cond_broadcast(&ld->job_free);
  pthread_mutex_unlock(&ld->mu);
  return st;
}

void lm_loader_free(lm_loader *ld) {
  if (!ld) return;
  pthread_mutex_lock(&ld->mu);
  ld->stop = true;
  pthread_cond_broadcast(&ld->job_free);
  pthread_mutex_unlock(&ld->mu);
  for (int32_t i = 0; i < ld->started; i++) pthread_join(ld->threads[i], NULL);
  for (int32_t k = 0; ld->slots && k < ld->prefetch; k++) {
    for (int32_t i = 0; i < ld->slots[k].n; i++) lm_tensor_release(ld->slots[k].t[i]);
    free(ld->slots[k].error);
  }
  pthread_cond_destroy(&ld->job_free);
  pthread_cond_destroy(&ld->slot_ready);
  pthread_mutex_destroy(&ld->mu);
  free(ld->fatal), free(ld->slots), free(ld->threads), free(ld->script), free(ld);
}
