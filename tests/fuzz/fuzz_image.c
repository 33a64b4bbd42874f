/* fuzz_image.c - libFuzzer target for one of lumen's image readers.
 *
 * make fuzz builds this file once per reader (-DREADER='"nifti"', "mha",
 * "png" or "dicom"), linked with LuaJIT, and runs it against an instrumented
 * liblumen (AddressSanitizer, UBSan, libFuzzer's coverage) in build-fuzz/.
 *
 * Each input is written to a file in a private scratch folder under the
 * reader's suffix, and tests/fuzz/harness.lua reads it through
 * lumen.image.read. An error that names the file is the right answer to a
 * bad file. Findings are everything else: sanitizer reports and crashes,
 * timeouts, allocations over -malloc_limit_mb, Lua errors that do not name
 * the file (a reader tripping over its own input), and memory still held
 * in C once the image has been collected.
 *
 * Coverage of the Lua code: libFuzzer sees only instrumented C, and the
 * readers are Lua run by an uninstrumented LuaJIT. A line hook fills the
 * gap: each step from one Lua line to the next bumps a byte, indexed by a
 * hash of the two (source, line) pairs, in an array placed in the
 * __libfuzzer_extra_counters section, which libFuzzer reads after every
 * input as it reads its own counters.
 *
 * The Lua heap comes from the allocator below: blocks of a page or more end
 * at an inaccessible page, so an FFI read past the end of a large buffer
 * (a whole file read into a string, a header buffer) faults at once. ASan
 * cannot see those reads: LuaJIT's code is not instrumented.
 *
 * By hand: build-fuzz/fuzz_dicom FILE... replays inputs (a finding's
 * reproducer from build-fuzz/findings/), build-fuzz/fuzz_dicom DIR... fuzzes
 * (libFuzzer's options apply). Environment: LUMEN_FUZZ_TMP (where the
 * scratch folder goes: $TMPDIR or /tmp by default; a finding stops the
 * process before it can remove it), LUMEN_FUZZ_LINES (a file to
 * write the Lua lines reached to, for tests/fuzz/coverage.lua),
 * LUMEN_FUZZ_NO_LUA_COVERAGE (no line hook: C coverage only). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>
#include <sanitizer/allocator_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#ifndef READER
#error "build with -DREADER='\"nifti\"' (or mha, png, dicom)"
#endif
#ifndef LUMEN_ROOT
#define LUMEN_ROOT "."
#endif
#ifndef LUMEN_FUZZ_LIB
#define LUMEN_FUZZ_LIB LUMEN_ROOT "/build-fuzz/liblumen.so"
#endif

/* ---- coverage of Lua lines -------------------------------------------- */

#define NCOUNTERS (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t lua_counters[NCOUNTERS];
static uint32_t prev_loc;
/* Line events left for the current input. LuaJIT's compiler is off while
   the hook counts (a hook during trace recording blacklists the loop, and
   compiled traces skip the hook); past the budget the hook goes and the
   compiler comes on until the next input, so that a long loop (a large file
   converted voxel by voxel) runs at full speed once its lines are counted. */
#define LINE_BUDGET (1 << 20)
static int64_t lines_left;

/* Every (source, line) seen, for LUMEN_FUZZ_LINES (written at exit). The
   source strings are LuaJIT's interned chunk names: stable while the
   modules stay loaded, so the pointer identifies the file. */
#define NSEEN (1 << 17)
static struct { const char *src; int line; } seen[NSEEN];
static const char *lines_out;

static void remember(const char *src, int line) {
  uint64_t h = ((uint64_t)(uintptr_t)src * 0x9E3779B97F4A7C15ull) ^ (uint64_t)line * 0xC2B2AE3D27D4EB4Full;
  for (size_t i = 0; i < NSEEN; i++) {
    size_t k = (size_t)(h + i) & (NSEEN - 1);
    if (seen[k].src == src && seen[k].line == line) return;
    if (!seen[k].src) {
      seen[k].src = src;
      seen[k].line = line;
      return;
    }
  }
}

static void line_hook(lua_State *L, lua_Debug *ar) {
  if (--lines_left < 0) {
    lua_sethook(L, NULL, 0, 0);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
    return;
  }
  if (!lua_getinfo(L, "Sl", ar) || ar->currentline < 0) return;
  uint64_t h = ((uint64_t)(uintptr_t)ar->source * 0x9E3779B97F4A7C15ull) ^ (uint64_t)ar->currentline * 0xC2B2AE3D27D4EB4Full;
  uint32_t loc = (uint32_t)(h >> 40);
  /* AFL's edge hash: the shift tells A -> B from B -> A */
  uint8_t *c = &lua_counters[(loc ^ prev_loc) & (NCOUNTERS - 1)];
  if (*c != 255) (*c)++;
  prev_loc = loc >> 1;
  if (lines_out) remember(ar->source, ar->currentline);
}

static void write_lines(void) {
  FILE *f = fopen(lines_out, "w");
  if (!f) {
    fprintf(stderr, "fuzz: cannot write %s: %s\n", lines_out, strerror(errno));
    return;
  }
  for (size_t i = 0; i < NSEEN; i++)
    if (seen[i].src) fprintf(f, "%s\t%d\n", seen[i].src, seen[i].line);
  fclose(f);
}

/* ---- the Lua heap: large blocks end at a guard page ------------------- */

#define GUARD_MIN 4096
static size_t page;
static size_t lua_malloc_bytes; /* small blocks, which ASan's count includes */

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

static void *guarded_alloc(size_t n) {
  size_t body = round16(n), span = (body + page - 1) / page * page;
  char *base = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  if (mprotect(base + span, page, PROT_NONE) != 0) {
    munmap(base, span + page);
    return NULL;
  }
  return base + span - body;
}

static void guarded_free(void *p, size_t n) {
  size_t body = round16(n);
  char *end = (char *)p + body; /* the guard page */
  char *base = (char *)((uintptr_t)p & ~(uintptr_t)(page - 1));
  munmap(base, (size_t)(end - base) + page);
}

static void *lua_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (p == NULL) osize = 0;
  if (nsize == 0) {
    if (osize >= GUARD_MIN) guarded_free(p, osize);
    else {
      free(p);
      lua_malloc_bytes -= osize;
    }
    return NULL;
  }
  if (osize < GUARD_MIN && nsize < GUARD_MIN) {
    void *q = realloc(p, nsize);
    if (q) lua_malloc_bytes += nsize - osize;
    return q;
  }
  void *q = nsize >= GUARD_MIN ? guarded_alloc(nsize) : malloc(nsize);
  if (!q) return NULL;
  if (nsize < GUARD_MIN) lua_malloc_bytes += nsize;
  if (p) {
    memcpy(q, p, osize < nsize ? osize : nsize);
    lua_alloc(ud, p, osize, 0);
  }
  return q;
}

/* ---- set-up and one input ---------------------------------------------- */

/* LeakSanitizer cannot follow the Lua heap (LuaJIT keeps pointers with type
   tags in their high bits), so every tensor a Lua object holds would look
   leaked; the C byte count after each input checks leaks instead. */
const char *__asan_default_options(void) { return "detect_leaks=0"; }

static lua_State *L;
static int lua_coverage;
static int run_ref;
static char dir[256], input[320];

static void die(const char *what) {
  fprintf(stderr, "fuzz: %s\n", what);
  exit(2);
}

static void write_file(const char *path, const void *data, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) die(strerror(errno));
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die(strerror(errno));
    p += w;
    n -= (size_t)w;
  }
  close(fd);
}

static char companion_path[400];
static const char *companion(const char *name) {
  snprintf(companion_path, sizeof companion_path, "%s/%s", dir, name);
  return companion_path;
}

/* MetaImage headers may name a data file beside them (ElementDataFile =
   data.raw, or a LIST of slices): the seeds do, and these are the files. */
static void write_companions(void) {
  unsigned char raw[4096], z[8192];
  for (size_t i = 0; i < sizeof raw; i++) raw[i] = (unsigned char)(i * 7 + (i >> 8));
  write_file(companion("data.raw"), raw, sizeof raw);
  write_file(companion("slice0.raw"), raw, 1024);
  write_file(companion("slice1.raw"), raw + 1024, 1024);
  uLongf zn = sizeof z;
  if (compress(z, &zn, raw, sizeof raw) != Z_OK) die("zlib compress failed");
  write_file(companion("data.zraw"), z, zn);
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(companion(e->d_name));
    closedir(d);
  }
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  page = (size_t)sysconf(_SC_PAGESIZE);
  const char *root = getenv("LUMEN_ROOT");
  if (!root || !*root) root = LUMEN_ROOT;
  setenv("LUMEN_LIB", LUMEN_FUZZ_LIB, 0);
  setenv("OPENBLAS_NUM_THREADS", "1", 0); /* one core; no idle BLAS threads */
  lines_out = getenv("LUMEN_FUZZ_LINES");
  if (lines_out && *lines_out) atexit(write_lines);
  else lines_out = NULL;

  const char *tmp = getenv("LUMEN_FUZZ_TMP");
  if (!tmp || !*tmp) tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/lumen-fuzz-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", READER);
  if (!mkdtemp(dir)) die("cannot make the scratch folder");
  atexit(remove_dir);
  write_companions();

  L = lua_newstate(lua_alloc, NULL);
  if (!L) die("cannot create a Lua state");
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/fuzz/?.lua", root, root, root);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  /* harness.run(path, reader) */
  if (luaL_dostring(L, "return require('harness').run") != 0) {
    fprintf(stderr, "fuzz: cannot load tests/fuzz/harness.lua: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_coverage = !getenv("LUMEN_FUZZ_NO_LUA_COVERAGE");
  return 0;
}

/* Runs the reader on the current input file: NULL, or what went wrong. */
static const char *read_input(void) {
  prev_loc = 0;
  lines_left = LINE_BUDGET;
  if (lua_coverage) { /* each input starts from no compiled code, hooked */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, run_ref);
  lua_pushstring(L, input);
  lua_pushstring(L, READER);
  if (lua_pcall(L, 2, 1, 0) != 0) return lua_tostring(L, -1); /* the harness itself failed */
  return lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
}

/* Bytes malloc'ed by C code (liblumen, zlib, libpng): ASan's count less the
   Lua heap's small blocks. */
static size_t c_bytes(void) { return __sanitizer_get_current_allocated_bytes() - lua_malloc_bytes; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *suffix = "." READER;
  if (!strcmp(READER, "nifti")) suffix = size >= 2 && data[0] == 0x1f && data[1] == 0x8b ? ".nii.gz" : ".nii";
  else if (!strcmp(READER, "dicom")) suffix = ".dcm";
  snprintf(input, sizeof input, "%s/input%s", dir, suffix);
  write_file(input, data, size);

  size_t before = c_bytes();
  const char *finding = read_input();
  if (finding) {
    fprintf(stderr, "\n==fuzz== finding in the %s reader: %s\n", READER, finding);
    abort();
  }
  lua_settop(L, 0);
  /* Still allocated after the image was collected: first reads may set up
     something that lasts, so a leak must show on two more runs as well. */
  size_t after = c_bytes();
  if (after > before) {
    for (int again = 0; again < 2 && after > before; again++) {
      before = after;
      read_input();
      lua_settop(L, 0);
      after = c_bytes();
    }
    if (after > before) {
      fprintf(stderr, "\n==fuzz== finding in the %s reader: %zu bytes of C memory are still allocated "
              "after each read of this input (a leak)\n", READER, after - before);
      abort();
    }
  }
  return 0;
}
