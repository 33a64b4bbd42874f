/* sort.cu - sort and topk along rows (lm_backend.sort).
 *
 * Every element becomes an unsigned 64-bit key whose order is
 * src/ops/sort.c's (NaN above +inf, -0 equal to +0; inverted for
 * descending) paired with its position in the row, so (key, position)
 * orders the row strictly and its sorted order is the stable one. The
 * sort is a bottom-up merge sort done by all rows at once: pass w merges
 * neighbouring sorted runs of w into runs of 2w, one thread per element,
 * which finds its place in the merged run by a binary search of the other
 * run (its rank there plus its rank in its own). ceil(log2 len) passes,
 * each O(n log len) work over every element of every row; no shared memory
 * or row-length limit, and the same launches run in the host emulation.
 * (A per-block bitonic sort in shared memory would be faster for short
 * rows, once timings ask for it.) */
#include "common.cuh"

namespace lmcuda {
namespace {

const uint64_t SIGN = (uint64_t)1 << 63;

__host__ __device__ inline uint64_t key_of_double(double v) {
  if (v != v) return ~(uint64_t)0;
  if (v == 0) v = 0; /* -0 -> +0 */
  uint64_t b;
  memcpy(&b, &v, sizeof b);
  return (b & SIGN) ? ~b : b | SIGN;
}

__host__ __device__ inline uint64_t key_of(float v) { return key_of_double((double)v); }
__host__ __device__ inline uint64_t key_of(double v) { return key_of_double(v); }
__host__ __device__ inline uint64_t key_of(int32_t v) { return (uint64_t)(int64_t)v ^ SIGN; }
__host__ __device__ inline uint64_t key_of(int64_t v) { return (uint64_t)v ^ SIGN; }
__host__ __device__ inline uint64_t key_of(uint8_t v) { return v; }

/* keys and positions of every element; bool is read as u8 but keyed 0/1 */
template <typename T> struct keys_fn {
  const T *x;
  uint64_t *key;
  int64_t *pos;
  int64_t len;
  uint64_t flip; /* all ones for descending */
  bool is_bool;
  __host__ __device__ void operator()(int64_t e) const {
    uint64_t k = is_bool ? (uint64_t)(((const uint8_t *)x)[e] != 0) : key_of(x[e]);
    key[e] = k ^ flip;
    pos[e] = e % len;
  }
};

/* (ka, pa) before (kb, pb) */
__host__ __device__ inline bool before(uint64_t ka, int64_t pa, uint64_t kb, int64_t pb) {
  return ka < kb || (ka == kb && pa < pb);
}

/* One merge pass: runs of w of each row, sorted, merged pairwise. */
struct merge_fn {
  const uint64_t *kin;
  const int64_t *pin;
  uint64_t *kout;
  int64_t *pout;
  int64_t len, w;
  __host__ __device__ void operator()(int64_t e) const {
    const int64_t base = e - e % len, p = e % len;
    const int64_t s = p / (2 * w) * (2 * w), mid = s + w < len ? s + w : len, end = s + 2 * w < len ? s + 2 * w : len;
    const uint64_t k = kin[e];
    const int64_t q = pin[e];
    /* the other run, and the count of its entries that go before this one */
    int64_t lo = p < mid ? mid : s, hi = p < mid ? end : mid;
    const int64_t first = lo;
    while (lo < hi) {
      const int64_t m = lo + (hi - lo) / 2;
      if (before(kin[base + m], pin[base + m], k, q)) lo = m + 1;
      else hi = m;
    }
    const int64_t at = s + (p < mid ? p - s : p - mid) + (lo - first);
    kout[base + at] = k;
    pout[base + at] = q;
  }
};

/* the first k of each sorted row: values gathered from x, positions */
template <typename T> struct write_fn {
  const T *x;
  const int64_t *pos;
  T *values;
  int64_t *indices;
  int64_t len, k;
  __host__ __device__ void operator()(int64_t e) const {
    const int64_t row = e / k, j = e % k, q = pos[row * len + j];
    if (values) values[e] = x[row * len + q];
    if (indices) indices[e] = q;
  }
};

template <typename T>
int32_t sort_run(int64_t rows, int64_t len, int64_t k, int32_t descending, bool is_bool, const void *x, void *values,
                 int64_t *indices, void *work) {
  const int64_t n = rows * len;
  uint64_t *key[2] = {(uint64_t *)work, (uint64_t *)work + 2 * n};
  int64_t *pos[2] = {(int64_t *)work + n, (int64_t *)work + 3 * n};
  keys_fn<T> kf = {(const T *)x, key[0], pos[0], len, descending ? ~(uint64_t)0 : 0, is_bool};
  int32_t st = for_each(n, kf, "sort keys kernel");
  int cur = 0;
  for (int64_t w = 1; w < len && !st; w *= 2, cur ^= 1) {
    merge_fn mf = {key[cur], pos[cur], key[cur ^ 1], pos[cur ^ 1], len, w};
    st = for_each(n, mf, "sort merge kernel");
  }
  if (st) return st;
  write_fn<T> wf = {(const T *)x, pos[cur], (T *)values, indices, len, k};
  return for_each(rows * k, wf, "sort write kernel");
}

} // namespace

int32_t sort(int32_t dtype, int64_t rows, int64_t len, int64_t k, int32_t descending, const void *x, void *values,
             int64_t *indices, void *work) {
  if (rows < 0 || len < 1 || k < 1 || k > len)
    return refuse(LM_E_ARG, "sort: %lld rows of %lld, first %lld", (long long)rows, (long long)len, (long long)k);
  switch (dtype) {
  case LM_F32: return sort_run<float>(rows, len, k, descending, false, x, values, indices, work);
  case LM_F64: return sort_run<double>(rows, len, k, descending, false, x, values, indices, work);
  case LM_I32: return sort_run<int32_t>(rows, len, k, descending, false, x, values, indices, work);
  case LM_I64: return sort_run<int64_t>(rows, len, k, descending, false, x, values, indices, work);
  case LM_U8: return sort_run<uint8_t>(rows, len, k, descending, false, x, values, indices, work);
  case LM_BOOL: return sort_run<uint8_t>(rows, len, k, descending, true, x, values, indices, work);
  }
  return refuse(LM_E_DTYPE, "sort: dtype %d is not supported on this device", dtype);
}

} // namespace lmcuda
