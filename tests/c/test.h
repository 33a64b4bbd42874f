/* test.h - a minimal C test harness: LM_TEST(name) { CHECK(...); } */
#ifndef LUMEN_TEST_H
#define LUMEN_TEST_H
#include "../../src/lumen.h"
#include <math.h>
#include <stdio.h>

typedef void (*lm_test_fn)(int *failed);
void lm_test_register(const char *name, lm_test_fn fn);

#define LM_TEST(name)                                                      \
  static void name(int *lm_failed_);                                       \
  __attribute__((constructor)) static void name##_reg(void) { lm_test_register(#name, name); } \
  static void name(int *lm_failed_)

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
      *lm_failed_ = 1;                                                     \
    }                                                                      \
  } while (0)

#define CHECK_NEAR(a, b, tol) CHECK(fabs((double)(a) - (double)(b)) <= (tol))
#define CHECK_OK(expr) CHECK((expr) == LM_OK)
#endif
