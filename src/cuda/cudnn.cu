/* cudnn.cu - convolution through cuDNN, the optional path of the backend's
 * conv_lib entry (src/backend.h); im2col and the GEMM (conv.cu, blas.cu)
 * remain the path that always works.
 *
 * cuDNN is not linked: libcudnn.so.9 is opened on the first convolution
 * (lua/lumen/device.lua has already loaded the copy it found by full path,
 * so dlopen of the soname gets that one) and bound to the backend's stream.
 * The algorithm of each shape is chosen once (cudnnGet*Algorithm_v7, the
 * first that succeeds) and cached with its workspace size. f32 runs with
 * CUDNN_FMA_MATH: no TF32, as the CPU and cuBLAS paths. Anything cuDNN
 * refuses comes back as LM_E_UNSUPPORTED, so liblumen falls back. */
#include "common.cuh"

#ifdef LMCUDA_EMULATE /* the host build has no cuDNN: always the fallback */
namespace lmcuda {
int32_t conv_lib(int32_t, int32_t, int64_t, int64_t, int64_t, int64_t, const int64_t *, const void *, const void *,
                 const void *, void *, void *, size_t *) {
  return refuse(LM_E_UNSUPPORTED, "cuDNN: not in the emulated build");
}
} // namespace lmcuda
#else

#include <cudnn.h>
#include <dlfcn.h>
#include <pthread.h>

namespace lmcuda {

namespace {

#define CUDNN_FUNCS(X)                                                                                                \
  X(cudnnCreate) X(cudnnSetStream) X(cudnnGetErrorString) X(cudnnCreateTensorDescriptor)                              \
  X(cudnnSetTensorNdDescriptor) X(cudnnDestroyTensorDescriptor) X(cudnnCreateFilterDescriptor)                        \
  X(cudnnSetFilterNdDescriptor) X(cudnnDestroyFilterDescriptor) X(cudnnCreateConvolutionDescriptor)                   \
  X(cudnnSetConvolutionNdDescriptor) X(cudnnSetConvolutionGroupCount) X(cudnnSetConvolutionMathType)                  \
  X(cudnnDestroyConvolutionDescriptor) X(cudnnGetConvolutionForwardAlgorithm_v7)                                      \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7) X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                     \
  X(cudnnGetConvolutionForwardWorkspaceSize) X(cudnnGetConvolutionBackwardDataWorkspaceSize)                          \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) X(cudnnConvolutionForward) X(cudnnConvolutionBackwardData)        \
  X(cudnnConvolutionBackwardFilter)

struct api {
#define FIELD(f) decltype(&::f) f;
  CUDNN_FUNCS(FIELD)
#undef FIELD
};

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
api fn;
cudnnHandle_t handle;
int state; /* 0: not tried, 1: ready, -1: unavailable */

/* Opens cuDNN once; false (with the message set) when it is not there. */
bool ready(void) {
  if (state) return state > 0;
  state = -1;
  void *lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) return false;
#define BIND(f)                                                                                                       \
  if (!(fn.f = (decltype(fn.f))dlsym(lib, #f))) return false;
  CUDNN_FUNCS(BIND)
#undef BIND
  if (fn.cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) return false;
  if (fn.cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) return false;
  state = 1;
  return true;
}

/* One shape's choice. */
struct choice {
  int64_t key[25];
  int algo;
  size_t ws;
};
choice cache[128];
int cached, next_slot;

struct descs {
  cudnnTensorDescriptor_t img = nullptr, col = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  ~descs() {
    if (img) fn.cudnnDestroyTensorDescriptor(img);
    if (col) fn.cudnnDestroyTensorDescriptor(col);
    if (w) fn.cudnnDestroyFilterDescriptor(w);
    if (conv) fn.cudnnDestroyConvolutionDescriptor(conv);
  }
};

int32_t declined(const char *what, cudnnStatus_t s) {
  return refuse(LM_E_UNSUPPORTED, "cuDNN %s: %s", what, fn.cudnnGetErrorString ? fn.cudnnGetErrorString(s) : "?");
}

#define TRY(what, call)                                                                                               \
  do {                                                                                                                \
    cudnnStatus_t s_ = (call);                                                                                        \
    if (s_ != CUDNN_STATUS_SUCCESS) return declined(what, s_);                                                        \
  } while (0)

/* Descriptors of the case: 4-D when the depth dims are all 1, else 5-D. */
int32_t describe(descs &d, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups, const int64_t *g) {
  bool flat = g[0] == 1 && g[3] == 1 && g[6] == 1 && g[9] == 1 && g[12] == 0 && g[15] == 1;
  int nb = flat ? 2 : 3, first = flat ? 1 : 0, nd = nb + 2;
  cudnnDataType_t t = dtype == LM_F64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  int dims_i[5], dims_c[5], dims_w[5], st_i[5], st_c[5], pad[3], str[3], dil[3];
  dims_i[0] = (int)n, dims_i[1] = (int)img_c, dims_c[0] = (int)n, dims_c[1] = (int)col_c;
  dims_w[0] = (int)col_c, dims_w[1] = (int)(img_c / groups);
  for (int k = 0; k < nb; k++) {
    dims_i[2 + k] = (int)g[first + k], dims_c[2 + k] = (int)g[3 + first + k], dims_w[2 + k] = (int)g[6 + first + k];
    str[k] = (int)g[9 + first + k], pad[k] = (int)g[12 + first + k], dil[k] = (int)g[15 + first + k];
  }
  st_i[nd - 1] = st_c[nd - 1] = 1;
  for (int k = nd - 2; k >= 0; k--) st_i[k] = st_i[k + 1] * dims_i[k + 1], st_c[k] = st_c[k + 1] * dims_c[k + 1];
  TRY("tensor descriptor", fn.cudnnCreateTensorDescriptor(&d.img));
  TRY("tensor descriptor", fn.cudnnCreateTensorDescriptor(&d.col));
  TRY("filter descriptor", fn.cudnnCreateFilterDescriptor(&d.w));
  TRY("convolution descriptor", fn.cudnnCreateConvolutionDescriptor(&d.conv));
  TRY("tensor descriptor", fn.cudnnSetTensorNdDescriptor(d.img, t, nd, dims_i, st_i));
  TRY("tensor descriptor", fn.cudnnSetTensorNdDescriptor(d.col, t, nd, dims_c, st_c));
  TRY("filter descriptor", fn.cudnnSetFilterNdDescriptor(d.w, t, CUDNN_TENSOR_NCHW, nd, dims_w));
  TRY("convolution descriptor",
      fn.cudnnSetConvolutionNdDescriptor(d.conv, nb, pad, str, dil, CUDNN_CROSS_CORRELATION, t));
  TRY("group count", fn.cudnnSetConvolutionGroupCount(d.conv, (int)groups));
  TRY("math type", fn.cudnnSetConvolutionMathType(d.conv, dtype == LM_F64 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
  return 0;
}

/* The algorithm for the case (cached by key), and its workspace size. */
int32_t choose(const descs &d, int32_t kind, const int64_t *key, int *algo, size_t *ws) {
  for (int i = 0; i < cached; i++)
    if (!memcmp(cache[i].key, key, sizeof cache[i].key)) {
      *algo = cache[i].algo, *ws = cache[i].ws;
      return 0;
    }
  int found = 0;
  if (kind == 0) {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    TRY("forward algorithm", fn.cudnnGetConvolutionForwardAlgorithm_v7(handle, d.img, d.w, d.conv, d.col,
                                                                         CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf));
    int i = 0;
    while (i < found && perf[i].status != CUDNN_STATUS_SUCCESS) i++;
    if (i == found) return refuse(LM_E_UNSUPPORTED, "cuDNN: no forward algorithm");
    *algo = perf[i].algo;
    TRY("workspace", fn.cudnnGetConvolutionForwardWorkspaceSize(handle, d.img, d.w, d.conv, d.col, perf[i].algo, ws));
  } else if (kind == 1) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    TRY("backward data algorithm", fn.cudnnGetConvolutionBackwardDataAlgorithm_v7(
                                       handle, d.w, d.col, d.conv, d.img, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &found, perf));
    int i = 0;
    while (i < found && perf[i].status != CUDNN_STATUS_SUCCESS) i++;
    if (i == found) return refuse(LM_E_UNSUPPORTED, "cuDNN: no backward data algorithm");
    *algo = perf[i].algo;
    TRY("workspace",
        fn.cudnnGetConvolutionBackwardDataWorkspaceSize(handle, d.w, d.col, d.conv, d.img, perf[i].algo, ws));
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    TRY("backward filter algorithm",
        fn.cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, d.img, d.col, d.conv, d.w,
                                                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &found, perf));
    int i = 0;
    while (i < found && perf[i].status != CUDNN_STATUS_SUCCESS) i++;
    if (i == found) return refuse(LM_E_UNSUPPORTED, "cuDNN: no backward filter algorithm");
    *algo = perf[i].algo;
    TRY("workspace",
        fn.cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, d.img, d.col, d.conv, d.w, perf[i].algo, ws));
  }
  choice &c = cache[cached < 128 ? cached++ : next_slot++ % 128];
  memcpy(c.key, key, sizeof c.key);
  c.algo = *algo, c.ws = *ws;
  return 0;
}

int32_t run(int32_t kind, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups, const int64_t *geom,
            const void *img, const void *w, const void *col, void *out, void *ws, size_t *ws_bytes) {
  if (!ready()) return refuse(LM_E_UNSUPPORTED, "cuDNN: libcudnn.so.9 not available");
  if (dtype != LM_F32 && dtype != LM_F64) return refuse(LM_E_UNSUPPORTED, "cuDNN: dtype %d", (int)dtype);
  const int64_t most = 2147483647;
  if (n > most || img_c > most || col_c > most) return refuse(LM_E_UNSUPPORTED, "cuDNN: sizes beyond int");
  for (int k = 0; k < 18; k++)
    if (geom[k] > most) return refuse(LM_E_UNSUPPORTED, "cuDNN: sizes beyond int");
  descs d;
  int32_t st = describe(d, dtype, n, img_c, col_c, groups, geom);
  if (st) return st;
  int64_t key[25] = {kind, dtype, n, img_c, col_c, groups, 0};
  memcpy(key + 7, geom, 18 * sizeof *geom);
  int algo;
  size_t need;
  if ((st = choose(d, kind, key, &algo, &need))) return st;
  if (!ws && need > 0) {
    *ws_bytes = need;
    return 0;
  }
  *ws_bytes = need;
  double one64 = 1, zero64 = 0;
  float one32 = 1, zero32 = 0;
  const void *one = dtype == LM_F64 ? (const void *)&one64 : (const void *)&one32;
  const void *zero = dtype == LM_F64 ? (const void *)&zero64 : (const void *)&zero32;
  if (kind == 0)
    TRY("forward", fn.cudnnConvolutionForward(handle, one, d.img, img, d.w, w, d.conv, (cudnnConvolutionFwdAlgo_t)algo, ws,
                                              need, zero, d.col, out));
  else if (kind == 1)
    TRY("backward data", fn.cudnnConvolutionBackwardData(handle, one, d.w, w, d.col, col, d.conv,
                                                         (cudnnConvolutionBwdDataAlgo_t)algo, ws, need, zero, d.img, out));
  else
    TRY("backward filter", fn.cudnnConvolutionBackwardFilter(handle, one, d.img, img, d.col, col, d.conv,
                                                             (cudnnConvolutionBwdFilterAlgo_t)algo, ws, need, zero, d.w,
                                                             out));
  return 0;
}

} // namespace

int32_t conv_lib(int32_t kind, int32_t dtype, int64_t n, int64_t img_c, int64_t col_c, int64_t groups,
                 const int64_t *geom, const void *img, const void *w, const void *col, void *out, void *ws,
                 size_t *ws_bytes) {
  pthread_mutex_lock(&lock);
  int32_t st = run(kind, dtype, n, img_c, col_c, groups, geom, img, w, col, out, ws, ws_bytes);
  pthread_mutex_unlock(&lock);
  return st;
}

} // namespace lmcuda
#endif
