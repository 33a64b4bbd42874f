/* main.c - runs every LM_TEST registered by the files in tests/c/. */
#include "test.h"
#include <stdlib.h>
#include <string.h>

static struct { const char *name; lm_test_fn fn; } tests[512];
static int ntests;

void lm_test_register(const char *name, lm_test_fn fn) {
  if (ntests < 512) {
    tests[ntests].name = name;
    tests[ntests++].fn = fn;
  }
}

int main(int argc, char **argv) {
  int passed = 0, failed = 0;
  for (int i = 0; i < ntests; i++) {
    if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
    int f = 0;
    tests[i].fn(&f);
    printf("%s %s\n", f ? "FAIL" : "ok  ", tests[i].name);
    if (f) failed++; else passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
