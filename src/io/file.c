/* file.c - exact reads and crash-safe writes for the tensor file formats.
 *
 * Writes go to a temporary file in the target's directory, are flushed to
 * disk, then renamed over the target: a reader sees either the old file or
 * the complete new one, never a half-written file, even after a crash. */
#include "../core/internal.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Opens path for reading and stats it; refuses directories. */
static lm_status open_regular(lm_ctx *ctx, const char *path, int *fd_out, struct stat *sb) {
  if (!path) return lm_err(ctx, LM_E_ARG, "file: path is NULL");
  int fd;
  do fd = open(path, O_RDONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) return lm_err(ctx, LM_E_IO, "file: cannot open %s: %s", path, strerror(errno));
  if (fstat(fd, sb) != 0) {
    int e = errno;
    close(fd);
    return lm_err(ctx, LM_E_IO, "file: cannot stat %s: %s", path, strerror(e));
  }
  if (S_ISDIR(sb->st_mode)) {
    close(fd);
    return lm_err(ctx, LM_E_IO, "file: %s is a directory, not a file", path);
  }
  *fd_out = fd;
  return LM_OK;
}

lm_status lm_file_size(lm_ctx *ctx, const char *path, int64_t *size) {
  int fd;
  struct stat sb;
  lm_status st = open_regular(ctx, path, &fd, &sb);
  if (st) return st;
  close(fd);
  *size = (int64_t)sb.st_size;
  return LM_OK;
}

lm_status lm_file_read(lm_ctx *ctx, const char *path, int64_t offset, int64_t nbytes, void *dst) {
  if (offset < 0 || nbytes < 0)
    return lm_err(ctx, LM_E_ARG, "file: read of %lld bytes at offset %lld from %s: negative value",
                  (long long)nbytes, (long long)offset, path ? path : "(null)");
  if (nbytes > 0 && !dst) return lm_err(ctx, LM_E_ARG, "file: read from %s into a NULL buffer", path ? path : "(null)");
  int fd;
  struct stat sb;
  lm_status st = open_regular(ctx, path, &fd, &sb);
  if (st) return st;
  int64_t size = (int64_t)sb.st_size;
  /* offset > size - nbytes avoids overflowing offset + nbytes */
  if (nbytes > size || offset > size - nbytes) {
    st = lm_err(ctx, LM_E_FORMAT, "file: %s is truncated: wanted %lld bytes at offset %lld, file has %lld", path,
                (long long)nbytes, (long long)offset, (long long)size);
    goto done;
  }
  char *p = dst;
  int64_t have = 0;
  while (have < nbytes) {
    int64_t want = nbytes - have;
    if (want > (int64_t)1 << 30) want = (int64_t)1 << 30; /* pread caps one call near 2 GiB */
    ssize_t got = pread(fd, p + have, (size_t)want, (off_t)(offset + have));
    if (got < 0) {
      if (errno == EINTR) continue;
      st = lm_err(ctx, LM_E_IO, "file: cannot read %s: %s", path, strerror(errno));
      goto done;
    }
    if (got == 0) { /* the file shrank after fstat */
      st = lm_err(ctx, LM_E_FORMAT, "file: %s is truncated: wanted %lld bytes at offset %lld, file has %lld", path,
                  (long long)nbytes, (long long)offset, (long long)(offset + have));
      goto done;
    }
    have += got;
  }
done:
  close(fd);
  return st;
}

static int write_all(int fd, const char *p, int64_t n) {
  while (n > 0) {
    size_t want = n > ((int64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
    ssize_t w = write(fd, p, want);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= w;
  }
  return 0;
}

/* The directory part of path ("." when there is none). */
static void dir_of(const char *path, char *dir, size_t n) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(dir, n, ".");
  } else if (slash == path) {
    snprintf(dir, n, "/");
  } else {
    snprintf(dir, n, "%.*s", (int)(slash - path), path);
  }
}

lm_status lm_file_write_atomic(lm_ctx *ctx, const char *path, int32_t nparts, const void *const *parts, const int64_t *sizes) {
  if (!path || !*path) return lm_err(ctx, LM_E_ARG, "file: path is NULL or empty");
  if (nparts < 0 || (nparts > 0 && (!parts || !sizes)))
    return lm_err(ctx, LM_E_ARG, "file: writing %s: bad part list (%d parts)", path, nparts);
  for (int32_t i = 0; i < nparts; i++) {
    if (sizes[i] < 0 || (sizes[i] > 0 && !parts[i]))
      return lm_err(ctx, LM_E_ARG, "file: writing %s: part %d has size %lld and %s data", path, i,
                    (long long)sizes[i], parts[i] ? "non-NULL" : "NULL");
  }
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 64);
  if (!tmp) return lm_err(ctx, LM_E_OOM, "file: out of memory writing %s", path);
  lm_status st = LM_OK;
  int fd = -1;
  bool created = false;

  /* O_EXCL with a fresh name: never clobbers another writer's temp file;
     mode 0666 lets the umask decide the permissions, as for any new file. */
  static atomic_uint counter;
  for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
    unsigned c = atomic_fetch_add(&counter, 1);
    snprintf(tmp, plen + 64, "%s.tmp.%ld.%u.%lx", path, (long)getpid(), c, (unsigned long)time(NULL) ^ (unsigned long)attempt);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST && errno != EINTR) break;
  }
  if (fd < 0) {
    st = lm_err(ctx, LM_E_IO, "file: cannot write %s: cannot create a temporary file next to it: %s", path, strerror(errno));
    goto done;
  }
  created = true;
  /* Keep the permissions of the file being replaced. */
  struct stat old;
  if (stat(path, &old) == 0 && S_ISREG(old.st_mode)) (void)fchmod(fd, old.st_mode & 07777);

  for (int32_t i = 0; i < nparts; i++) {
    if (sizes[i] > 0 && write_all(fd, parts[i], sizes[i]) != 0) {
      st = lm_err(ctx, LM_E_IO, "file: cannot write %s: %s", path, strerror(errno));
      goto done;
    }
  }
  if (fsync(fd) != 0) {
    st = lm_err(ctx, LM_E_IO, "file: cannot write %s: fsync failed: %s", path, strerror(errno));
    goto done;
  }
  int rc = close(fd);
  fd = -1;
  if (rc != 0) {
    st = lm_err(ctx, LM_E_IO, "file: cannot write %s: close failed: %s", path, strerror(errno));
    goto done;
  }
  if (rename(tmp, path) != 0) {
    st = lm_err(ctx, LM_E_IO, "file: cannot write %s: cannot rename the temporary file over it: %s", path, strerror(errno));
    goto done;
  }
  created = false;

  /* The rename is only durable once the directory entry is on disk. Some
     file systems refuse fsync on directories (EINVAL): nothing to do then. */
  char *dir = malloc(plen + 2);
  if (dir) {
    dir_of(path, dir, plen + 2);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS)
        st = lm_err(ctx, LM_E_IO, "file: wrote %s but could not flush its directory %s: %s", path, dir, strerror(errno));
      close(dfd);
    }
    free(dir);
  }

done:
  if (fd >= 0) close(fd);
  if (created) unlink(tmp);
  free(tmp);
  return st;
}

void lm_byteswap(void *data, int64_t count, int32_t width) {
  if (!data || count <= 0) return;
  char *p = data;
  /* memcpy through a register: data need not be aligned */
#define SWAP_EACH(T, SWAP)                                 \
  for (int64_t i = 0; i < count; i++) {                    \
    T v;                                                   \
    memcpy(&v, p + sizeof v * i, sizeof v);                \
    v = SWAP(v);                                           \
    memcpy(p + sizeof v * i, &v, sizeof v);                \
  }
  switch (width) {
  case 2: SWAP_EACH(uint16_t, __builtin_bswap16) break;
  case 4: SWAP_EACH(uint32_t, __builtin_bswap32) break;
  case 8: SWAP_EACH(uint64_t, __builtin_bswap64) break;
  default:
    break; /* width 1 (or anything else): nothing to swap */
  }
}

int32_t lm_is_dir(const char *path) {
  struct stat sb;
  return path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Names in a directory (not . and ..), each ending in a NUL byte, into buf;
   *needed gets the bytes the whole list takes, so a caller whose cap was
   too small can retry with a bigger buffer. */
lm_status lm_dir_list(lm_ctx *ctx, const char *path, char *buf, int64_t cap, int64_t *needed) {
  if (!path || !needed) return lm_err(ctx, LM_E_ARG, "file: dir_list: path or needed is NULL");
  DIR *d = opendir(path);
  if (!d) return lm_err(ctx, LM_E_IO, "file: cannot list directory %s: %s", path, strerror(errno));
  int64_t used = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    int64_t n = (int64_t)strlen(e->d_name) + 1;
    if (buf && used + n <= cap) memcpy(buf + used, e->d_name, (size_t)n);
    used += n;
  }
  closedir(d);
  *needed = used;
  return LM_OK;
}
