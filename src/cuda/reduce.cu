/* reduce.cu - the backend's reductions over runs.
 *
 * liblumen lays a reduction out as outputs, each reducing one run of rn
 * elements at stride rs from an offset given by the kept dims
 * (src/backend.h, lm_backend.reduce; src/ops/reduce.c makes the layout).
 * Each thread keeps a partial state over some of a run's elements (acc);
 * states merge in any order, since ties of an extremum are broken by
 * position and variances merge by Chan's formula, and the merged state
 * gives the output (finish), as the CPU's reduce.c does.
 *
 * Two shapes of kernel, both with blocks of 32 x 8 threads:
 *  - rows: a warp per output, its 32 lanes stepping through the run (the
 *    run's elements are neighbours when rs is 1);
 *  - columns: 32 neighbouring outputs per block (the innermost kept dim
 *    has stride 1), 8 threads per output stepping through the run, so
 *    that a warp reads 32 neighbouring elements (a reduction over the
 *    batch dim, as the gradient of a bias is).
 * When there are too few outputs to fill the device, each run is split
 * into pieces (blockIdx.y): the pieces' states go to a scratch buffer and
 * a second kernel merges them per output. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common.cuh"

namespace lmcuda {
namespace {

enum { K_SUM, K_PROD, K_EXT, K_VAR, K_NORM, K_COUNT };
enum { N_1, N_2, N_INF, N_NINF, N_0, N_P };
const int LANES = 32, GROUPS = 8; /* block: LANES x GROUPS threads */

struct acc {
  double d;    /* float sum, product, norm sum, extremum; mean for var */
  double m2;   /* var: sum of squared deviations from d */
  int64_t v;   /* integer sum, product, extremum; nonzero count */
  int64_t idx; /* extremum: its position in the run */
  int64_t n;   /* elements seen */
};

struct red_args {
  int32_t op, kind, norm, kn, odt;
  bool want_max;
  const char *x;
  int64_t kshape[LM_MAX_DIMS], kstride[LM_MAX_DIMS];
  int64_t rn, rs, nout, nsplit;
  double param;
  char *out;
  int64_t *idx;
  acc *part; /* nout x nsplit states when split */
};

__host__ __device__ __forceinline__ acc empty_acc(const red_args &a) {
  acc s;
  s.d = a.kind == K_PROD ? 1 : (a.kind == K_NORM && a.norm == N_NINF) ? INFINITY : 0;
  s.m2 = 0;
  s.v = a.kind == K_PROD ? 1 : 0;
  s.idx = 0;
  s.n = 0;
  return s;
}

/* Adds element x (at position r of the run) to s. */
template <typename T> __host__ __device__ __forceinline__ void add(const red_args &a, acc &s, T x, int64_t r) {
  constexpr bool fl = std::is_floating_point<T>::value;
  double f = (double)x;
  int64_t i = fl ? 0 : (int64_t)x;
  switch (a.kind) {
  case K_SUM:
    if (fl) s.d += f;
    else s.v = (int64_t)((uint64_t)s.v + (uint64_t)i);
    break;
  case K_PROD:
    if (fl) s.d *= f;
    else s.v = (int64_t)((uint64_t)s.v * (uint64_t)i);
    break;
  case K_COUNT: s.v += fl ? f != 0 : i != 0; break;
  case K_EXT: /* elements come in increasing r: strict comparisons keep the first */
    if (s.n == 0) {
      s.d = f, s.v = i, s.idx = r;
    } else if (fl) {
      if (!isnan(s.d) && (isnan(f) || (a.want_max ? f > s.d : f < s.d))) s.d = f, s.idx = r;
    } else if (a.want_max ? i > s.v : i < s.v) {
      s.v = i, s.idx = r;
    }
    break;
  case K_VAR: { /* Welford */
    double delta = f - s.d;
    s.d += delta / (double)(s.n + 1);
    s.m2 += delta * (f - s.d);
  } break;
  case K_NORM: {
    double ax = fabs(f);
    switch (a.norm) {
    case N_1: s.d += ax; break;
    case N_2: s.d += ax * ax; break;
    case N_0: s.d += f != 0; break;
    case N_P: s.d += pow(ax, a.param); break;
    case N_INF: if (!isnan(s.d) && (isnan(ax) || ax > s.d)) s.d = ax; break;
    default: if (!isnan(s.d) && (isnan(ax) || ax < s.d)) s.d = ax; break; /* N_NINF */
    }
  } break;
  }
  s.n++;
}

/* Merges b into a (states over disjoint elements, in any order). */
template <bool FL> __host__ __device__ __forceinline__ void merge(const red_args &a, acc &s, const acc &b) {
  if (b.n == 0) return;
  if (s.n == 0) {
    s = b;
    return;
  }
  switch (a.kind) {
  case K_SUM:
    s.d += b.d;
    s.v = (int64_t)((uint64_t)s.v + (uint64_t)b.v);
    break;
  case K_PROD:
    s.d *= b.d;
    s.v = (int64_t)((uint64_t)s.v * (uint64_t)b.v);
    break;
  case K_COUNT: s.v += b.v; break;
  case K_EXT: {
    bool take;
    if (FL) { /* NaN wins; among NaNs, or equal values, the first position */
      bool sn = isnan(s.d), bn = isnan(b.d);
      if (sn || bn) take = bn && (!sn || b.idx < s.idx);
      else take = (a.want_max ? b.d > s.d : b.d < s.d) || (b.d == s.d && b.idx < s.idx);
    } else {
      take = (a.want_max ? b.v > s.v : b.v < s.v) || (b.v == s.v && b.idx < s.idx);
    }
    if (take) s.d = b.d, s.v = b.v, s.idx = b.idx;
  } break;
  case K_VAR: { /* Chan et al. */
    double na = (double)s.n, nb = (double)b.n, n = na + nb, delta = b.d - s.d;
    s.d += delta * nb / n;
    s.m2 += b.m2 + delta * delta * na * nb / n;
  } break;
  case K_NORM:
    if (a.norm == N_INF || a.norm == N_NINF) {
      bool mx = a.norm == N_INF;
      if (!isnan(s.d) && (isnan(b.d) || (mx ? b.d > s.d : b.d < s.d))) s.d = b.d;
    } else {
      s.d += b.d;
    }
    break;
  }
  s.n += b.n;
}

/* Writes output o from its merged state (src/ops/reduce.c's finish). */
__host__ __device__ void finish(const red_args &a, const acc &s, int64_t o) {
  double r = 0;
  int64_t iv = 0;
  switch (a.op) {
  case LM_OP_SUM:
  case LM_OP_PROD: iv = s.v, r = s.d; break;
  case LM_OP_MEAN: r = s.d / (double)a.rn; break;
  case LM_OP_MAX:
  case LM_OP_MIN:
    iv = s.v, r = s.d;
    if (a.idx) a.idx[o] = s.idx;
    break;
  case LM_OP_ARGMAX:
  case LM_OP_ARGMIN: iv = s.idx; break;
  case LM_OP_VAR:
  case LM_OP_STD:
    r = s.m2 / fmax(0.0, (double)s.n - a.param); /* 0/0 = NaN, as PyTorch */
    if (a.op == LM_OP_STD) r = sqrt(r);
    break;
  case LM_OP_NORM: r = a.norm == N_2 ? sqrt(s.d) : a.norm == N_P ? pow(s.d, 1.0 / a.param) : s.d; break;
  case LM_OP_ALL: iv = s.v == a.rn; break;
  case LM_OP_ANY: iv = s.v > 0; break;
  default: iv = s.v; /* count_nonzero */
  }
  switch (a.odt) {
  case LM_F32: ((float *)a.out)[o] = (float)r; break;
  case LM_F64: ((double *)a.out)[o] = r; break;
  case LM_I64: ((int64_t *)a.out)[o] = iv; break;
  case LM_I32: ((int32_t *)a.out)[o] = (int32_t)iv; break;
  case LM_U8: ((uint8_t *)a.out)[o] = (uint8_t)iv; break;
  default: ((uint8_t *)a.out)[o] = iv != 0; break;
  }
}

/* Element offset of output o over the kept dims. */
__host__ __device__ __forceinline__ int64_t kept_offset(const red_args &a, int64_t o) {
  int64_t off = 0;
  for (int32_t d = a.kn - 1; d >= 0; d--) {
    int64_t q = o / a.kshape[d];
    off += (o - q * a.kshape[d]) * a.kstride[d];
    o = q;
  }
  return off;
}

/* The state of output o done: finished, or kept as piece `piece`. */
__host__ __device__ __forceinline__ void put(const red_args &a, const acc &s, int64_t o, int64_t piece) {
  if (a.nsplit == 1) finish(a, s, o);
  else a.part[o * a.nsplit + piece] = s;
}

/* One thread's state: output o's elements r0 + first, r0 + first + step,
   ... of piece `piece` of its run. */
template <typename T>
__host__ __device__ __forceinline__ acc gather(const red_args &a, int64_t o, int64_t piece, int first, int step) {
  acc s = empty_acc(a);
  if (o >= a.nout) return s;
  const T *p = (const T *)a.x + kept_offset(a, o);
  int64_t r0 = a.rn * piece / a.nsplit, r1 = a.rn * (piece + 1) / a.nsplit;
  for (int64_t r = r0 + first; r < r1; r += step) add<T>(a, s, p[r * a.rs], r);
  return s;
}

/* Merges the pieces of output o and finishes it. */
template <bool FL> __host__ __device__ __forceinline__ void merge_pieces(const red_args &a, int64_t o) {
  acc s = a.part[o * a.nsplit];
  for (int64_t k = 1; k < a.nsplit; k++) merge<FL>(a, s, a.part[o * a.nsplit + k]);
  finish(a, s, o);
}

/* rows: warp g of the block serves output blockIdx.x * GROUPS + g; its lanes'
   states merge as a tree. */
template <typename T> __global__ void reduce_rows(red_args a) {
  constexpr bool FL = std::is_floating_point<T>::value;
  __shared__ acc sh[GROUPS][LANES];
  int lane = threadIdx.x, g = threadIdx.y;
  int64_t o = (int64_t)blockIdx.x * GROUPS + g, piece = blockIdx.y;
  sh[g][lane] = gather<T>(a, o, piece, lane, LANES);
  __syncthreads();
  for (int w = LANES / 2; w > 0; w /= 2) {
    if (lane < w) merge<FL>(a, sh[g][lane], sh[g][lane + w]);
    __syncthreads();
  }
  if (lane == 0 && o < a.nout) put(a, sh[g][0], o, piece);
}

/* columns: lane serves output blockIdx.x * LANES + lane with the GROUPS
   threads of its column, merged in order by the first. */
template <typename T> __global__ void reduce_cols(red_args a) {
  constexpr bool FL = std::is_floating_point<T>::value;
  __shared__ acc sh[GROUPS][LANES];
  int lane = threadIdx.x, g = threadIdx.y;
  int64_t o = (int64_t)blockIdx.x * LANES + lane, piece = blockIdx.y;
  sh[g][lane] = gather<T>(a, o, piece, g, GROUPS);
  __syncthreads();
  if (g == 0 && o < a.nout) {
    acc s = sh[0][lane];
    for (int k = 1; k < GROUPS; k++) merge<FL>(a, s, sh[k][lane]);
    put(a, s, o, piece);
  }
}

template <bool FL> __global__ void reduce_pieces(red_args a) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < a.nout; o += (int64_t)gridDim.x * blockDim.x)
    merge_pieces<FL>(a, o);
}

#ifdef LMCUDA_EMULATE
/* The specs' host build (tests/plugin/cuda_emulated.cu): every block and
   thread of the kernels above in turn, merging in the kernels' order. */
template <typename T> void emulate(red_args &a, bool columns, int64_t blocks) {
  constexpr bool FL = std::is_floating_point<T>::value;
  acc sh[GROUPS][LANES];
  for (int64_t piece = 0; piece < a.nsplit; piece++)
    for (int64_t b = 0; b < blocks; b++) {
      for (int g = 0; g < GROUPS; g++)
        for (int lane = 0; lane < LANES; lane++)
          sh[g][lane] = columns ? gather<T>(a, b * LANES + lane, piece, g, GROUPS)
                                : gather<T>(a, b * GROUPS + g, piece, lane, LANES);
      if (columns) {
        for (int lane = 0; lane < LANES; lane++) {
          int64_t o = b * LANES + lane;
          if (o >= a.nout) continue;
          acc s = sh[0][lane];
          for (int k = 1; k < GROUPS; k++) merge<FL>(a, s, sh[k][lane]);
          put(a, s, o, piece);
        }
      } else {
        for (int g = 0; g < GROUPS; g++) {
          for (int w = LANES / 2; w > 0; w /= 2)
            for (int lane = 0; lane < w; lane++) merge<FL>(a, sh[g][lane], sh[g][lane + w]);
          if (b * GROUPS + g < a.nout) put(a, sh[g][0], b * GROUPS + g, piece);
        }
      }
    }
  if (a.nsplit > 1)
    for (int64_t o = 0; o < a.nout; o++) merge_pieces<FL>(a, o);
}
#endif

/* Scratch memory for the pieces, kept between calls and grown when needed;
   the lock holds it for one reduction's launches (the stream orders the
   rest). */
pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
void *scratch;
size_t scratch_bytes;

int32_t scratch_for(size_t nbytes, void **p) {
  if (nbytes > scratch_bytes) {
#ifdef LMCUDA_EMULATE
    free(scratch);
    scratch = malloc(nbytes);
    if (!scratch) return refuse(LM_E_OOM, "reduce: scratch memory");
#else
    if (scratch) cudaFree(scratch); /* waits for the work that used it */
    scratch = NULL;
    scratch_bytes = 0;
    cudaError_t e = cudaMalloc(&scratch, nbytes);
    if (e != cudaSuccess) return fail("reduce: scratch memory", e);
#endif
    scratch_bytes = nbytes;
  }
  *p = scratch;
  return 0;
}

template <typename T> int32_t run(red_args &a) {
  [[maybe_unused]] constexpr bool FL = std::is_floating_point<T>::value;
  bool columns = a.kn >= 1 && a.kstride[a.kn - 1] == 1 && a.rs != 1 && a.rs != -1;
  /* enough threads to fill the device: split runs when outputs are few */
  int64_t want = (int64_t)(sm_count > 0 ? sm_count : 32) * 1024;
  int64_t threads = a.nout * (columns ? GROUPS : LANES), min_piece = reduce_min_piece[columns];
  a.nsplit = 1;
  if (threads < want && a.rn >= 2 * min_piece) {
    int64_t s = (want + threads - 1) / threads, most = a.rn / min_piece;
    a.nsplit = s < most ? s : most;
    if (a.nsplit > 65535) a.nsplit = 65535;
  }
  int64_t blocks = columns ? (a.nout + LANES - 1) / LANES : (a.nout + GROUPS - 1) / GROUPS;
  if (blocks > INT32_MAX) return refuse(LM_E_UNSUPPORTED, "reduce: %lld outputs are too many", (long long)a.nout);
  dim3 grid((unsigned)blocks, (unsigned)a.nsplit), block(LANES, GROUPS);
  int32_t st = 0;
  bool split = a.nsplit > 1;
  if (split) {
    pthread_mutex_lock(&scratch_lock);
    void *p;
    if ((st = scratch_for((size_t)(a.nout * a.nsplit) * sizeof(acc), &p))) {
      pthread_mutex_unlock(&scratch_lock);
      return st;
    }
    a.part = (acc *)p;
  }
#ifdef LMCUDA_EMULATE
  (void)grid, (void)block;
  emulate<T>(a, columns, blocks);
#else
  if (columns) reduce_cols<T><<<grid, block, 0, stream>>>(a);
  else reduce_rows<T><<<grid, block, 0, stream>>>(a);
  st = launched("reduce kernel");
  if (!st && split) {
    reduce_pieces<FL><<<grid_for(a.nout, 256), 256, 0, stream>>>(a);
    st = launched("reduce kernel (merging pieces)");
  }
#endif
  if (split) pthread_mutex_unlock(&scratch_lock);
  return st;
}

} // namespace

/* The fewest elements of a run a piece gets (rows, columns): splitting
   runs shorter than that does not pay. The emulation lowers them, so that
   small spec tensors take the split path too. */
int64_t reduce_min_piece[2] = {1024, 256};

int32_t reduce(int32_t op, int32_t dtype, const void *x, int32_t kn, const int64_t *kshape, const int64_t *kstride,
               int64_t rn, int64_t rs, double param, int32_t out_dtype, void *out, int64_t *indices) {
  if (op < LM_OP_SUM || op > LM_OP_COUNT_NONZERO) return refuse(LM_E_ARG, "reduce: op %d is not a reduction", op);
  if (kn < 0 || kn > LM_MAX_DIMS || rn < 1) return refuse(LM_E_ARG, "reduce: %d kept dims, runs of %lld", kn, (long long)rn);
  red_args a;
  memset(&a, 0, sizeof a);
  a.op = op;
  a.kn = kn;
  a.odt = out_dtype;
  a.x = (const char *)x;
  a.rn = rn;
  a.rs = rs;
  a.param = param;
  a.out = (char *)out;
  a.idx = indices;
  a.nout = 1;
  for (int32_t d = 0; d < kn; d++) {
    a.kshape[d] = kshape[d];
    a.kstride[d] = kstride[d];
    a.nout *= kshape[d];
  }
  if (a.nout == 0) return 0;
  switch (op) {
  case LM_OP_SUM: case LM_OP_MEAN: a.kind = K_SUM; break;
  case LM_OP_PROD: a.kind = K_PROD; break;
  case LM_OP_VAR: case LM_OP_STD: a.kind = K_VAR; break;
  case LM_OP_NORM: a.kind = K_NORM; break;
  case LM_OP_MAX: case LM_OP_MIN: case LM_OP_ARGMAX: case LM_OP_ARGMIN:
    a.kind = K_EXT;
    a.want_max = op == LM_OP_MAX || op == LM_OP_ARGMAX;
    break;
  default: a.kind = K_COUNT; /* all, any, count_nonzero */
  }
  a.norm = param == 2 ? N_2 : param == 1 ? N_1 : param == INFINITY ? N_INF : param == -INFINITY ? N_NINF
         : param == 0 ? N_0 : N_P;
  switch (dtype) {
  case LM_F32: return run<float>(a);
  case LM_F64: return run<double>(a);
  case LM_I32: return run<int32_t>(a);
  case LM_I64: return run<int64_t>(a);
  case LM_U8: case LM_BOOL: return run<uint8_t>(a);
  }
  return refuse(LM_E_ARG, "reduce: dtype %d", dtype);
}

} // namespace lmcuda
