/* compress.c - gzip files and raw zlib streams (zlib), for the image
 * formats (.nii.gz, MHA .zraw).
 *
 * Reads refuse to inflate past a caller's byte limit, so a small
 * malicious file (a "gzip bomb") cannot exhaust memory. Writes go through
 * lm_file_write_atomic (temp file, fsync, rename). */
#include "../core/internal.h"
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define CHUNK ((int64_t)1 << 20)

/* Inflates src (n bytes) as gzip (window_bits 15+32: gzip or zlib header,
   concatenated gzip members allowed) or raw zlib into a growing buffer of
   at most max_bytes. what names the source in errors. */
static lm_status inflate_bytes(lm_ctx *ctx, const char *what, const unsigned char *src, int64_t n, int64_t max_bytes,
                               int window_bits, bool prefix, lm_tensor **out) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, window_bits) != Z_OK) return lm_err(ctx, LM_E_OOM, "gzip: cannot start zlib for %s", what);
  int64_t cap = n * 4 < CHUNK ? CHUNK : n * 4, used = 0;
  if (cap > max_bytes) cap = max_bytes > 0 ? max_bytes : 1;
  unsigned char *buf = malloc((size_t)cap);
  lm_status st = LM_OK;
  if (!buf) { st = lm_err(ctx, LM_E_OOM, "gzip: out of memory inflating %s", what); goto done; }
  int64_t in_left = n;
  const unsigned char *in = src;
  for (;;) {
    if (zs.avail_in == 0 && in_left > 0) {
      uInt take = in_left > (int64_t)1 << 30 ? 1u << 30 : (uInt)in_left;
      zs.next_in = (unsigned char *)in;
      zs.avail_in = take;
      in += take;
      in_left -= take;
    }
    if (used == cap) {
      if (cap >= max_bytes && prefix) break; /* only the first max_bytes wanted */
      if (cap >= max_bytes) {
        /* the output may be exactly full with only the stream's trailer
           left: one probe byte tells that from more data */
        unsigned char probe;
        zs.next_out = &probe;
        zs.avail_out = 1;
        int prc = inflate(&zs, Z_NO_FLUSH);
        if (prc == Z_STREAM_END && zs.avail_out == 1 && zs.avail_in == 0 && in_left == 0) break;
        st = lm_err(ctx, LM_E_FORMAT, "gzip: %s inflates to more than %lld bytes (the limit)", what, (long long)max_bytes);
        goto done;
      }
      int64_t ncap = cap * 2 > max_bytes ? max_bytes : cap * 2;
      unsigned char *nb = realloc(buf, (size_t)ncap);
      if (!nb) { st = lm_err(ctx, LM_E_OOM, "gzip: out of memory inflating %s", what); goto done; }
      buf = nb;
      cap = ncap;
    }
    int64_t room = cap - used;
    zs.next_out = buf + used;
    zs.avail_out = room > (int64_t)1 << 30 ? 1u << 30 : (uInt)room;
    uInt before = zs.avail_out;
    int rc = inflate(&zs, Z_NO_FLUSH);
    used += before - zs.avail_out;
    if (rc == Z_STREAM_END) {
      /* another gzip member may follow (as gzip -c a b > c writes) */
      if (zs.avail_in == 0 && in_left == 0) break;
      if (window_bits <= 15) break; /* zlib or raw deflate: trailing bytes ignored */
      if (inflateReset(&zs) != Z_OK) { st = lm_err(ctx, LM_E_FORMAT, "gzip: %s: corrupt data after a gzip member", what); goto done; }
      continue;
    }
    if (rc == Z_BUF_ERROR && zs.avail_out > 0 && zs.avail_in == 0 && in_left == 0) {
      st = lm_err(ctx, LM_E_FORMAT, "gzip: %s is truncated (the compressed stream ends early after %lld bytes)", what, (long long)used);
      goto done;
    }
    if (rc == Z_MEM_ERROR) { st = lm_err(ctx, LM_E_OOM, "gzip: out of memory inflating %s", what); goto done; }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      st = lm_err(ctx, LM_E_FORMAT, "gzip: %s is corrupt: %s", what, zs.msg ? zs.msg : "bad compressed data");
      goto done;
    }
  }
  int64_t shape[1] = {used};
  lm_tensor *t;
  if ((st = lm_new(ctx, "gzip", LM_U8, 1, shape, &t))) goto done;
  if (used) memcpy(lm_data(t), buf, (size_t)used);
  *out = t;
done:
  inflateEnd(&zs);
  free(buf);
  return st;
}

static lm_status gzip_read(lm_ctx *ctx, const char *path, int64_t max_bytes, bool prefix, lm_tensor **out) {
  if (!out) return lm_err(ctx, LM_E_ARG, "gzip: out is NULL");
  if (max_bytes < 0) return lm_err(ctx, LM_E_ARG, "gzip: max_bytes is %lld, expected >= 0", (long long)max_bytes);
  int64_t size;
  lm_status st = lm_file_size(ctx, path, &size);
  if (st) return st;
  unsigned char *src = malloc(size > 0 ? (size_t)size : 1);
  if (!src) return lm_err(ctx, LM_E_OOM, "gzip: out of memory reading %s (%lld bytes)", path, (long long)size);
  if (!(st = lm_file_read(ctx, path, 0, size, src))) {
    if (size < 18 || src[0] != 0x1f || src[1] != 0x8b)
      st = lm_err(ctx, LM_E_FORMAT, "gzip: %s is not a gzip file (%s)", path, size < 18 ? "too short" : "no gzip magic bytes");
    else
      st = inflate_bytes(ctx, path, src, size, max_bytes, 15 + 16, prefix, out);
  }
  free(src);
  return st;
}

lm_status lm_gzip_read(lm_ctx *ctx, const char *path, int64_t max_bytes, lm_tensor **out) {
  return gzip_read(ctx, path, max_bytes, false, out);
}

lm_status lm_gzip_read_head(lm_ctx *ctx, const char *path, int64_t nbytes, lm_tensor **out) {
  return gzip_read(ctx, path, nbytes, true, out);
}

lm_status lm_inflate(lm_ctx *ctx, const lm_tensor *src, int64_t expected_size, lm_tensor **out) {
  lm_status st;
  if (!out) return lm_err(ctx, LM_E_ARG, "inflate: out is NULL");
  if ((st = lm_check_input(ctx, "inflate", src, "src"))) return st;
  if (src->dtype != LM_U8 || !lm_is_contiguous(src))
    return lm_err(ctx, LM_E_DTYPE, "inflate: src must be a contiguous u8 tensor");
  if (expected_size < 0) return lm_err(ctx, LM_E_ARG, "inflate: expected_size is %lld, expected >= 0", (long long)expected_size);
  lm_tensor *t;
  /* one byte of slack tells "exactly expected" from "more than expected" */
  if ((st = inflate_bytes(ctx, "zlib stream", (const unsigned char *)lm_data(src), lm_numel(src), expected_size, 15, false, &t)))
    return st;
  if (lm_numel(t) != expected_size) {
    st = lm_err(ctx, LM_E_FORMAT, "inflate: zlib stream holds %lld bytes, expected %lld", (long long)lm_numel(t), (long long)expected_size);
    lm_tensor_release(t);
    return st;
  }
  *out = t;
  return LM_OK;
}

lm_status lm_inflate_raw(lm_ctx *ctx, const lm_tensor *src, int64_t max_bytes, lm_tensor **out) {
  lm_status st;
  if (!out) return lm_err(ctx, LM_E_ARG, "inflate: out is NULL");
  if ((st = lm_check_input(ctx, "inflate", src, "src"))) return st;
  if (src->dtype != LM_U8 || !lm_is_contiguous(src))
    return lm_err(ctx, LM_E_DTYPE, "inflate: src must be a contiguous u8 tensor");
  if (max_bytes < 0) return lm_err(ctx, LM_E_ARG, "inflate: max_bytes is %lld, expected >= 0", (long long)max_bytes);
  /* window_bits -15: raw deflate, no header or checksum */
  return inflate_bytes(ctx, "deflate stream", (const unsigned char *)lm_data(src), lm_numel(src), max_bytes, -15, false, out);
}

lm_status lm_gzip_write_atomic(lm_ctx *ctx, const char *path, int32_t nparts, const void *const *parts, const int64_t *sizes, int32_t level) {
  if (!path || !*path) return lm_err(ctx, LM_E_ARG, "gzip: path is NULL or empty");
  if (nparts < 0 || (nparts > 0 && (!parts || !sizes)))
    return lm_err(ctx, LM_E_ARG, "gzip: writing %s: bad part list (%d parts)", path, nparts);
  if (level < -1 || level > 9) return lm_err(ctx, LM_E_ARG, "gzip: level %d, expected -1 (default) or 0..9", level);
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return lm_err(ctx, LM_E_OOM, "gzip: cannot start zlib writing %s", path);
  int64_t total = 0;
  for (int32_t i = 0; i < nparts; i++) {
    if (sizes[i] < 0 || (sizes[i] > 0 && !parts[i])) {
      deflateEnd(&zs);
      return lm_err(ctx, LM_E_ARG, "gzip: writing %s: part %d has size %lld and %s data", path, i, (long long)sizes[i],
                    parts[i] ? "non-NULL" : "NULL");
    }
    total += sizes[i];
  }
  int64_t cap = total / 2 + CHUNK, used = 0;
  unsigned char *buf = malloc((size_t)cap);
  lm_status st = LM_OK;
  if (!buf) { st = lm_err(ctx, LM_E_OOM, "gzip: out of memory writing %s", path); goto done; }
  for (int32_t i = 0; i <= nparts; i++) {
    const unsigned char *p = i < nparts ? parts[i] : NULL;
    int64_t left = i < nparts ? sizes[i] : 0;
    int flush = i < nparts ? Z_NO_FLUSH : Z_FINISH;
    for (;;) {
      if (zs.avail_in == 0 && left > 0) {
        uInt take = left > (int64_t)1 << 30 ? 1u << 30 : (uInt)left;
        zs.next_in = (unsigned char *)p;
        zs.avail_in = take;
        p += take;
        left -= take;
      }
      if (cap - used < CHUNK / 2) {
        unsigned char *nb = realloc(buf, (size_t)(cap * 2));
        if (!nb) { st = lm_err(ctx, LM_E_OOM, "gzip: out of memory writing %s", path); goto done; }
        buf = nb;
        cap *= 2;
      }
      int64_t room = cap - used;
      zs.next_out = buf + used;
      zs.avail_out = room > (int64_t)1 << 30 ? 1u << 30 : (uInt)room;
      uInt before = zs.avail_out;
      int rc = deflate(&zs, zs.avail_in == 0 && left == 0 ? flush : Z_NO_FLUSH);
      used += before - zs.avail_out;
      if (rc == Z_STREAM_END) break;
      if (rc != Z_OK && rc != Z_BUF_ERROR) { st = lm_err(ctx, LM_E_IO, "gzip: compressing %s failed", path); goto done; }
      if (flush == Z_NO_FLUSH && zs.avail_in == 0 && left == 0) break;
    }
  }
  {
    const void *part[1] = {buf};
    int64_t size[1] = {used};
    st = lm_file_write_atomic(ctx, path, 1, part, size);
  }
done:
  deflateEnd(&zs);
  free(buf);
  return st;
}
