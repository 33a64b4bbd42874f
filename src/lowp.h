/* lowp.h - f32 to bf16 / f16 and back, shared by liblumen (C), the CUDA
 * backend (host and device code) and the fake device of the tests, so that
 * every path of autocast rounds alike.
 *
 * lumen has no 16-bit storage dtype: autocast (src/ops/amp.c) reads the
 * operands of f32 matrix products rounded to one of these formats and
 * accumulates in f32. Rounding is to nearest, ties to even, as IEEE 754
 * and PyTorch's x.bfloat16() / x.half() do: bf16 keeps f32's exponent
 * range (8 significant bits), f16 has 11 significant bits, overflows to
 * inf from 65520 on and keeps subnormals down to 2^-24. NaN stays NaN
 * (quiet), with its sign. Modes are LM_AUTOCAST_BF16 (1) and
 * LM_AUTOCAST_F16 (2) of lumen.h. */
#ifndef LUMEN_LOWP_H
#define LUMEN_LOWP_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define LM_LOWP_FN static inline __host__ __device__
#else
#define LM_LOWP_FN static inline
#endif

LM_LOWP_FN uint32_t lm_f32_bits(float x) {
  uint32_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

LM_LOWP_FN float lm_bits_f32(uint32_t b) {
  float x;
  memcpy(&x, &b, sizeof x);
  return x;
}

/* bf16 is the top half of an f32: round the low 16 bits away. */
LM_LOWP_FN uint16_t lm_f32_to_bf16(float x) {
  uint32_t b = lm_f32_bits(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u); /* NaN, made quiet */
  b += 0x7fffu + ((b >> 16) & 1u); /* a carry into the exponent is right, up to inf */
  return (uint16_t)(b >> 16);
}

LM_LOWP_FN float lm_bf16_to_f32(uint16_t h) { return lm_bits_f32((uint32_t)h << 16); }

LM_LOWP_FN uint16_t lm_f32_to_f16(float x) {
  uint32_t b = lm_f32_bits(x), sign = (b >> 16) & 0x8000u, a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* 65520 and up round to inf */
  if (a >= 0x38800000u) { /* normal in f16 (2^-14 and up): drop 13 mantissa bits, rebias 127 -> 15 */
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
  }
  if (a <= 0x33000000u) return (uint16_t)sign; /* up to 2^-25 (a tie, to the even 0) */
  /* subnormal: the value in units of 2^-24, rounded half to even */
  uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);
  uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (uint16_t)(sign | q); /* q may reach 0x400: the smallest normal, correctly */
}

LM_LOWP_FN float lm_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return lm_bits_f32(sign | 0x7f800000u | (m << 13));
  if (e != 0) return lm_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
  float v = (float)m * 5.9604644775390625e-08f; /* m * 2^-24, exact */
  return sign ? -v : v;
}

/* x rounded to mode (1 bf16, 2 f16) and widened back; other modes: x. */
LM_LOWP_FN float lm_round_lowp(float x, int32_t mode) {
  if (mode == 1) return lm_bf16_to_f32(lm_f32_to_bf16(x));
  if (mode == 2) return lm_f16_to_f32(lm_f32_to_f16(x));
  return x;
}

#endif
