/* main.c - the lumen program: embeds LuaJIT and hands its arguments to
 * lua/lumen/cli.lua, which does the work.
 *
 * It does not link liblumen: the Lua module loads it after choosing
 * OpenBLAS's kernel set. The repository root (where lua/ lives) is, in
 * order: $LUMEN_ROOT, the LUMEN_ROOT the build defined (when it still holds
 * lua/lumen/cli.lua), or the directory above this executable's. */
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lumen.h"

#ifndef LUMEN_ROOT
#define LUMEN_ROOT ""
#endif

#define CLI "/lua/lumen/cli.lua"

static int file_exists(const char *dir, const char *rel) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s%s", dir, rel) >= (int)sizeof path) return 0;
  return access(path, R_OK) == 0;
}

/* The directory of the running executable into buf ("" if unknown). */
static void exe_dir(char *buf, size_t n) {
  ssize_t len = readlink("/proc/self/exe", buf, n - 1);
  if (len <= 0) {
    buf[0] = 0;
    return;
  }
  buf[len] = 0;
  char *slash = strrchr(buf, '/');
  if (slash) *slash = 0;
}

static void find_root(char *root, size_t n, const char *exe) {
  const char *env = getenv("LUMEN_ROOT");
  char above[PATH_MAX], up[PATH_MAX];
  if (snprintf(up, sizeof up, "%s/..", exe[0] ? exe : ".") >= (int)sizeof up) up[0] = 0;
  if (!realpath(up, above)) memcpy(above, up, sizeof above);
  if (env && env[0]) {
    snprintf(root, n, "%s", env);
  } else if (exe[0] && file_exists(above, CLI)) {
    snprintf(root, n, "%s", above);
  } else if (LUMEN_ROOT[0] && file_exists(LUMEN_ROOT, CLI)) {
    snprintf(root, n, "%s", LUMEN_ROOT);
  } else {
    snprintf(root, n, "%s/..", exe[0] ? exe : ".");
  }
}

/* Message plus traceback for errors that escape cli.lua itself. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

int main(int argc, char **argv) {
  char exe[PATH_MAX], root[PATH_MAX];
  exe_dir(exe, sizeof exe);
  find_root(root, sizeof root, exe);

  /* A build directory holds lumen next to liblumen.so, a bundle holds
     bin/lumen and lib/liblumen.so: use that library unless the user chose
     one. */
  const char *near[] = {"/liblumen.so", "/../lib/liblumen.so"};
  for (int i = 0; i < 2 && !getenv("LUMEN_LIB") && exe[0]; i++) {
    char lib[PATH_MAX], real[PATH_MAX];
    if (file_exists(exe, near[i]) && snprintf(lib, sizeof lib, "%s%s", exe, near[i]) < (int)sizeof lib)
      setenv("LUMEN_LIB", realpath(lib, real) ? real : lib, 1);
  }

  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "lumen: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  luaL_openlibs(L);

  /* package.path = <root>/lua/?.lua;<root>/lua/?/init.lua;<the default> */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  const char *def = lua_tostring(L, -1);
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root, def ? def : "");
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);

  lua_pushcfunction(L, traceback);
  char cli[sizeof root + sizeof CLI];
  snprintf(cli, sizeof cli, "%s%s", root, CLI);
  if (luaL_loadfile(L, cli) != 0) {
    fprintf(stderr, "lumen: cannot load %s\n  %s\n  (set LUMEN_ROOT to the directory holding lua/lumen)\n",
            cli, lua_tostring(L, -1));
    lua_close(L);
    return 2;
  }
  /* cli.lua receives {root=, exe=, version=} and then argv[1..] */
  lua_createtable(L, 0, 3);
  lua_pushstring(L, root);
  lua_setfield(L, -2, "root");
  lua_pushstring(L, exe);
  lua_setfield(L, -2, "exe_dir");
  lua_pushstring(L, LM_VERSION);
  lua_setfield(L, -2, "version");
  for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
  int status = 1;
  if (lua_pcall(L, argc, 1, 1) != 0) {
    fprintf(stderr, "lumen: %s\n", lua_tostring(L, -1));
  } else {
    status = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  }
  fflush(stdout);
  lua_close(L);
  return status;
}
