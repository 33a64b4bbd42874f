/* png.c - PNG images through libpng.
 *
 * libpng reports errors by longjmp to the setjmp of its caller. The jump
 * never leaves this file: every libpng call runs inside a function here that
 * set the jump point, and the cleanup after it releases what was allocated.
 * The whole file is read into memory first (and written from memory, then
 * through lm_file_write_atomic), so libpng never touches a FILE. */
#include "../core/internal.h"
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* deflate expands at most about 1032:1; a header promising more pixels than
   that (plus slack for the row filters) cannot be backed by the file. */
#define PNG_MAX_EXPANSION 1100

typedef struct png_job {
  const char *path;
  char msg[256];         /* libpng's error message */
  const uint8_t *src;    /* read: the whole file */
  size_t src_size, src_pos;
  uint8_t *dst;          /* write: the encoded file, growing */
  size_t dst_size, dst_cap;
  bool dst_oom;
  png_bytep *rows;       /* row pointers, freed after the jump too */
  lm_tensor *t;          /* read: the result; released on failure */
} png_job;

static void on_error(png_structp png, png_const_charp msg) {
  png_job *job = png_get_error_ptr(png);
  snprintf(job->msg, sizeof job->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void read_from_memory(png_structp png, png_bytep out, size_t n) {
  png_job *job = png_get_io_ptr(png);
  if (n > job->src_size - job->src_pos) png_error(png, "the file is truncated");
  memcpy(out, job->src + job->src_pos, n);
  job->src_pos += n;
}

static void write_to_memory(png_structp png, png_bytep in, size_t n) {
  png_job *job = png_get_io_ptr(png);
  if (n > job->dst_cap - job->dst_size) {
    size_t cap = job->dst_cap ? job->dst_cap : 4096;
    while (cap - job->dst_size < n) cap *= 2;
    uint8_t *p = realloc(job->dst, cap);
    if (!p) {
      job->dst_oom = true;
      png_error(png, "out of memory");
    }
    job->dst = p;
    job->dst_cap = cap;
  }
  memcpy(job->dst + job->dst_size, in, n);
  job->dst_size += n;
}

static void flush_nothing(png_structp png) { (void)png; }

/* libpng allocates a chunk's buffer from the length its header claims,
   before reading the chunk (and a claim over its limit is only a warning):
   a 100-byte file could make it ask for 2 GB. Every claim is checked
   against the bytes that follow first. Returns false with job->msg set. */
static bool chunks_fit(png_job *job) {
  size_t pos = 8, n = job->src_size;
  while (n - pos >= 8) {
    const uint8_t *p = job->src + pos;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    char kind[5];
    for (int i = 0; i < 4; i++) kind[i] = p[4 + i] >= 32 && p[4 + i] < 127 ? (char)p[4 + i] : '?';
    kind[4] = 0;
    if (len > n - pos - 8) {
      snprintf(job->msg, sizeof job->msg, "the file is truncated: chunk %s at byte %zu says %lu bytes but only %zu follow",
               kind, pos, (unsigned long)len, n - pos - 8);
      return false;
    }
    if (!memcmp(kind, "IEND", 4)) break;
    pos += 8 + (size_t)len + 4 < n - pos ? 8 + (size_t)len + 4 : n - pos; /* data and CRC */
  }
  return true;
}

/* Decodes job->src into job->t. Returns 0, or 1 after a libpng error
   (message in job->msg), or a negative lm_status already set on ctx. */
static int decode(lm_ctx *ctx, png_job *job, png_structp png, png_infop info) {
  if (setjmp(png_jmpbuf(png))) return 1;
  png_set_read_fn(png, job, read_from_memory);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);

  /* Everything becomes 8- or 16-bit grey, grey+alpha, RGB or RGBA. */
  if (type == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  }
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) {
    uint16_t one = 1;
    if (*(uint8_t *)&one == 1) png_set_swap(png); /* PNG is big-endian */
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  int channels = png_get_channels(png, info);
  int out_depth = png_get_bit_depth(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  int bytes = out_depth == 16 ? 2 : 1;
  if (rowbytes != (size_t)w * channels * bytes) png_error(png, "unexpected row layout after the transforms");
  double raw = (double)rowbytes * h;
  if (raw > (double)job->src_size * PNG_MAX_EXPANSION + 65536.0) {
    snprintf(job->msg, sizeof job->msg,
             "header says %lux%lu with %d channel(s) of %d bits (%.0f MB) but the file has only %zu bytes",
             (unsigned long)h, (unsigned long)w, channels, out_depth, raw / 1e6, job->src_size);
    return 1;
  }

  int64_t shape[3] = {(int64_t)h, (int64_t)w, channels};
  int32_t nd = channels == 1 ? 2 : 3;
  lm_status st = lm_new(ctx, "png", out_depth == 16 ? LM_I32 : LM_U8, nd, shape, &job->t);
  if (st) return st;
  job->rows = malloc(sizeof(png_bytep) * (h ? h : 1));
  if (!job->rows) return lm_err(ctx, LM_E_OOM, "png: out of memory reading '%s'", job->path);
  /* 16-bit rows are decoded into the upper half of each i32 row (the
     samples take half the bytes), then widened in place from the front. */
  uint8_t *base = (uint8_t *)lm_data(job->t);
  size_t stride = (size_t)w * channels * (out_depth == 16 ? 4 : 1);
  for (png_uint_32 y = 0; y < h; y++) job->rows[y] = base + y * stride + (out_depth == 16 ? stride / 2 : 0);
  png_read_image(png, job->rows);
  png_read_end(png, NULL);
  if (out_depth == 16) {
    size_t n = (size_t)w * channels;
    for (png_uint_32 y = 0; y < h; y++) {
      const uint16_t *s = (const uint16_t *)job->rows[y];
      int32_t *d = (int32_t *)(base + y * stride);
      for (size_t i = 0; i < n; i++) d[i] = s[i]; /* d[i] ends before s[i] starts */
    }
  }
  return 0;
}

lm_status lm_png_read(lm_ctx *ctx, const char *path, lm_tensor **out) {
  if (!path) return lm_err(ctx, LM_E_ARG, "png: path is NULL");
  if (!out) return lm_err(ctx, LM_E_ARG, "png: out is NULL");
  *out = NULL;
  png_job job = {.path = path};
  uint8_t *buf = NULL;
  png_structp png = NULL;
  png_infop info = NULL;
  int64_t size;
  lm_status st = lm_file_size(ctx, path, &size);
  if (st) goto done;
  if (size < 8) {
    st = lm_err(ctx, LM_E_FORMAT, "png: '%s' is not a PNG file: it has only %lld bytes", path, (long long)size);
    goto done;
  }
  buf = malloc((size_t)size);
  if (!buf) {
    st = lm_err(ctx, LM_E_OOM, "png: out of memory reading '%s' (%lld bytes)", path, (long long)size);
    goto done;
  }
  if ((st = lm_file_read(ctx, path, 0, size, buf))) goto done;
  if (png_sig_cmp(buf, 0, 8) != 0) {
    st = lm_err(ctx, LM_E_FORMAT, "png: '%s' is not a PNG file (wrong signature)", path);
    goto done;
  }
  job.src = buf;
  job.src_size = (size_t)size;
  if (!chunks_fit(&job)) {
    st = lm_err(ctx, LM_E_FORMAT, "png: '%s': %s", path, job.msg);
    goto done;
  }
  png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job, on_error, on_warning);
  if (png) info = png_create_info_struct(png);
  if (!png || !info) {
    st = lm_err(ctx, LM_E_OOM, "png: out of memory reading '%s'", path);
    goto done;
  }
  int rc = decode(ctx, &job, png, info);
  if (rc == 1) st = lm_err(ctx, LM_E_FORMAT, "png: '%s': %s", path, job.msg);
  else st = rc;

done:
  if (png) png_destroy_read_struct(&png, info ? &info : NULL, NULL);
  free(job.rows);
  free(buf);
  if (st) {
    if (job.t) lm_tensor_release(job.t);
    return st;
  }
  *out = job.t;
  return LM_OK;
}

/* Encodes the contiguous tensor c (u8 or 16-bit samples already packed
   big-endian in pix) into job->dst. Returns 0 or 1 after a libpng error. */
static int encode(png_job *job, png_structp png, png_infop info, uint32_t w, uint32_t h, int channels, int depth,
                  uint8_t *pix) {
  if (setjmp(png_jmpbuf(png))) return 1;
  static const int types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                               PNG_COLOR_TYPE_RGB_ALPHA};
  png_set_write_fn(png, job, write_to_memory, flush_nothing);
  png_set_IHDR(png, info, w, h, depth, types[channels], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  size_t stride = (size_t)w * channels * (depth / 8);
  for (uint32_t y = 0; y < h; y++) job->rows[y] = pix + y * stride;
  png_write_image(png, job->rows);
  png_write_end(png, NULL);
  return 0;
}

lm_status lm_png_write(lm_ctx *ctx, const char *path, const lm_tensor *t) {
  if (!path || !*path) return lm_err(ctx, LM_E_ARG, "png: path is NULL or empty");
  lm_status st = lm_check_input(ctx, "png", t, "image");
  if (st) return st;
  char sb[LM_SHAPE_BUF];
  int channels = t->ndim == 2 ? 1 : t->ndim == 3 ? (int)t->shape[2] : 0;
  if (channels < 1 || channels > 4)
    return lm_err(ctx, LM_E_SHAPE, "png: writing '%s': image is %s, expected H x W or H x W x C with C in 1..4",
                  path, LM_SHP(t, sb));
  if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > PNG_UINT_31_MAX || t->shape[1] > PNG_UINT_31_MAX)
    return lm_err(ctx, LM_E_SHAPE, "png: writing '%s': image is %s; PNG needs 1 to 2^31-1 rows and columns", path,
                  LM_SHP(t, sb));
  int depth;
  if (t->dtype == LM_U8) depth = 8;
  else if (t->dtype == LM_I32 || t->dtype == LM_I64) depth = 16;
  else return lm_err(ctx, LM_E_DTYPE, "png: writing '%s': dtype %s, expected u8 (8-bit) or i32/i64 in 0..65535 (16-bit)",
                     path, lm_dtype_name(t->dtype));

  png_job job = {.path = path};
  lm_tensor *c = NULL;
  uint8_t *packed = NULL;
  png_structp png = NULL;
  png_infop info = NULL;
  uint32_t h = (uint32_t)t->shape[0], w = (uint32_t)t->shape[1];
  int64_t n = lm_numel(t);
  if ((st = lm_contiguous(ctx, t, &c))) goto done;
  uint8_t *pix = (uint8_t *)lm_data(c);
  if (depth == 16) {
    /* PNG stores 16-bit samples big-endian */
    packed = malloc((size_t)n * 2);
    if (!packed) {
      st = lm_err(ctx, LM_E_OOM, "png: out of memory writing '%s'", path);
      goto done;
    }
    for (int64_t i = 0; i < n; i++) {
      int64_t v = t->dtype == LM_I32 ? ((const int32_t *)pix)[i] : ((const int64_t *)pix)[i];
      if (v < 0 || v > 65535) {
        st = lm_err(ctx, LM_E_ARG, "png: writing '%s': value %lld at element %lld is outside 0..65535 (16-bit PNG)",
                    path, (long long)v, (long long)i);
        goto done;
      }
      packed[2 * i] = (uint8_t)(v >> 8);
      packed[2 * i + 1] = (uint8_t)(v & 0xff);
    }
    pix = packed;
  }
  job.rows = malloc(sizeof(png_bytep) * h);
  png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &job, on_error, on_warning);
  if (png) info = png_create_info_struct(png);
  if (!job.rows || !png || !info) {
    st = lm_err(ctx, LM_E_OOM, "png: out of memory writing '%s'", path);
    goto done;
  }
  if (encode(&job, png, info, w, h, channels, depth, pix)) {
    st = lm_err(ctx, job.dst_oom ? LM_E_OOM : LM_E_FORMAT, "png: writing '%s': %s", path, job.msg);
    goto done;
  }
  const void *parts[1] = {job.dst};
  int64_t sizes[1] = {(int64_t)job.dst_size};
  st = lm_file_write_atomic(ctx, path, 1, parts, sizes);

done:
  if (png) png_destroy_write_struct(&png, info ? &info : NULL);
  free(job.rows);
  free(job.dst);
  free(packed);
  if (c) lm_tensor_release(c);
  return st;
}
