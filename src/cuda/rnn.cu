/* rnn.cu - the fused pointwise parts of LSTM and GRU cells, forward and
 * backward, for the backend's rnn_cell entry (src/backend.h); the formulas
 * and gate orders are src/ops/rnn.c's. One thread per (row, hidden unit). */
#include "common.cuh"
#include <math.h>

namespace lmcuda {

struct cell_args {
  int32_t op, backward;
  int64_t n, H;
  const void *in[4];
  int64_t ld[4];
  void *out[3];
};

__host__ __device__ inline float sig(float x) { return 1.0f / (1.0f + expf(-x)); }
__host__ __device__ inline double sig(double x) { return 1.0 / (1.0 + exp(-x)); }
__host__ __device__ inline float th(float x) { return tanhf(x); }
__host__ __device__ inline double th(double x) { return tanh(x); }

template <typename T> __host__ __device__ inline const T *row(const cell_args &a, int k, int64_t b) {
  return (const T *)a.in[k] + b * a.ld[k];
}

template <typename T> __host__ __device__ inline void cell_at(const cell_args &a, int64_t e) {
  const int64_t H = a.H, b = e / H, j = e % H;
  if (a.op == LM_OP_LSTM_CELL && !a.backward) {
    const T *gx = row<T>(a, 0, b), *gh = row<T>(a, 1, b), *cp = row<T>(a, 2, b);
    T i = sig(gx[j] + gh[j]), f = sig(gx[H + j] + gh[H + j]);
    T g = th(gx[2 * H + j] + gh[2 * H + j]), o = sig(gx[3 * H + j] + gh[3 * H + j]);
    T cn = f * cp[j] + i * g, tc = th(cn);
    T *ws = (T *)a.out[2] + b * 5 * H;
    ((T *)a.out[1])[b * H + j] = cn;
    ((T *)a.out[0])[b * H + j] = o * tc;
    ws[j] = i, ws[H + j] = f, ws[2 * H + j] = g, ws[3 * H + j] = o, ws[4 * H + j] = tc;
  } else if (a.op == LM_OP_LSTM_CELL) {
    const T *dh = row<T>(a, 0, b), *dc = row<T>(a, 1, b), *cp = row<T>(a, 2, b), *ws = row<T>(a, 3, b);
    T i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], tc = ws[4 * H + j];
    T dct = dc[j] + dh[j] * o * (1 - tc * tc);
    T *dg = (T *)a.out[0] + b * 4 * H;
    dg[j] = dct * g * i * (1 - i);
    dg[H + j] = dct * cp[j] * f * (1 - f);
    dg[2 * H + j] = dct * i * (1 - g * g);
    dg[3 * H + j] = dh[j] * tc * o * (1 - o);
    if (a.out[1]) ((T *)a.out[1])[b * H + j] = dct * f;
  } else if (!a.backward) {
    const T *gx = row<T>(a, 0, b), *gh = row<T>(a, 1, b), *hp = row<T>(a, 2, b);
    T r = sig(gx[j] + gh[j]), z = sig(gx[H + j] + gh[H + j]);
    T hn = gh[2 * H + j], n = th(gx[2 * H + j] + r * hn);
    T *ws = (T *)a.out[1] + b * 4 * H;
    ((T *)a.out[0])[b * H + j] = (1 - z) * n + z * hp[j];
    ws[j] = r, ws[H + j] = z, ws[2 * H + j] = n, ws[3 * H + j] = hn;
  } else {
    const T *dh = row<T>(a, 0, b), *hp = row<T>(a, 1, b), *ws = row<T>(a, 2, b);
    T r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
    T dn = dh[j] * (1 - z) * (1 - n * n);
    T dz = dh[j] * (hp[j] - n) * z * (1 - z);
    T dr = dn * hn * r * (1 - r);
    T *dgx = (T *)a.out[0] + b * 3 * H, *dgh = (T *)a.out[1] + b * 3 * H;
    dgx[j] = dgh[j] = dr;
    dgx[H + j] = dgh[H + j] = dz;
    dgx[2 * H + j] = dn;
    dgh[2 * H + j] = dn * r;
    if (a.out[2]) ((T *)a.out[2])[b * H + j] = dh[j] * z;
  }
}

template <typename T> __global__ void cell_kernel(cell_args a, int64_t count) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < count; e += (int64_t)gridDim.x * blockDim.x)
    cell_at<T>(a, e);
}

template <typename T> static int32_t run(const cell_args &a) {
  int64_t count = a.n * a.H;
  if (count == 0) return 0;
#ifdef LMCUDA_EMULATE
  for (int64_t e = 0; e < count; e++) cell_at<T>(a, e);
  return 0;
#else
  cell_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(a, count);
  return launched("rnn cell kernel");
#endif
}

int32_t rnn_cell(int32_t op, int32_t dtype, int32_t backward, int64_t n, int64_t H, const void *const *in,
                 const int64_t *ld, void *const *out) {
  if (op != LM_OP_LSTM_CELL && op != LM_OP_GRU_CELL)
    return refuse(LM_E_ARG, "rnn_cell: op %d, expected LM_OP_LSTM_CELL or LM_OP_GRU_CELL", (int)op);
  cell_args a;
  a.op = op, a.backward = backward, a.n = n, a.H = H;
  int nin = op == LM_OP_LSTM_CELL ? (backward ? 4 : 3) : 3, nout = op == LM_OP_LSTM_CELL ? (backward ? 2 : 3) : (backward ? 3 : 2);
  for (int k = 0; k < 4; k++) a.in[k] = k < nin ? in[k] : NULL, a.ld[k] = k < nin ? ld[k] : 0;
  for (int k = 0; k < 3; k++) a.out[k] = k < nout ? out[k] : NULL;
  if (dtype == LM_F32) return run<float>(a);
  if (dtype == LM_F64) return run<double>(a);
  return refuse(LM_E_DTYPE, "rnn_cell: dtype %d, expected f32 or f64", (int)dtype);
}

} // namespace lmcuda
