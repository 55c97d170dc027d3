// skillgraft's CUDA kernels: the fused ops (LayerNorm, softmax, exact GELU; forward and backward), per-row
// sparse graft corrections for batches that mix tasks, and in-place scatter for grafts applied to the weights.
// Compiled to PTX at build time (build.rs, `cuda` feature) and loaded by src/model/ops/cuda.rs.
//
// Every kernel exists for float, double, __nv_bfloat16 and __half (suffixes _f32, _f64, _bf16, _f16) and
// accumulates in float (double for double). Row kernels use one warp per row.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <stdint.h>

typedef unsigned int u32;
typedef unsigned long long u64;

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }

template <typename T, typename A> __device__ __forceinline__ T store(A v) { return from_acc<T>(v); }
template <> __device__ __forceinline__ double store<double, double>(double v) { return v; }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) {
    A w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

__device__ __forceinline__ float acc_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float acc_exp(float v) { return __expf(v); }
__device__ __forceinline__ double acc_exp(double v) { return exp(v); }
__device__ __forceinline__ float acc_erf(float v) { return erff(v); }
__device__ __forceinline__ double acc_erf(double v) { return erf(v); }

// ------------------------------------------------------------------------------------------------ LayerNorm

// Mean and reciprocal standard deviation of one row, computed by one warp (every lane gets both).
template <typename T, typename A>
__device__ __forceinline__ void row_stats(const T* xr, u32 d, A eps, A* mean, A* rstd) {
  int lane = threadIdx.x & 31;
  A s = 0;
  for (u32 j = lane; j < d; j += 32) s += to_acc(xr[j]);
  A m = warp_sum(s) / (A)d;
  A v = 0;
  for (u32 j = lane; j < d; j += 32) {
    A c = to_acc(xr[j]) - m;
    v += c * c;
  }
  v = warp_sum(v) / (A)d;
  *mean = m;
  *rstd = (A)1 / acc_sqrt(v + eps);
}

template <typename T>
__device__ void layer_norm_fwd(const T* x, const T* g, const T* b, T* y, u32 rows, u32 d, double eps) {
  typedef typename Acc<T>::type A;
  u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const T* xr = x + (size_t)row * d;
  T* yr = y + (size_t)row * d;
  A mean, rstd;
  row_stats<T, A>(xr, d, (A)eps, &mean, &rstd);
  for (u32 j = threadIdx.x & 31; j < d; j += 32)
    yr[j] = store<T, A>((to_acc(xr[j]) - mean) * rstd * to_acc(g[j]) + to_acc(b[j]));
}

// dx of LayerNorm: rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)).
template <typename T>
__device__ void layer_norm_bwd_dx(const T* x, const T* g, const T* dy, T* dx, u32 rows, u32 d, double eps) {
  typedef typename Acc<T>::type A;
  u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const T* xr = x + (size_t)row * d;
  const T* dyr = dy + (size_t)row * d;
  T* dxr = dx + (size_t)row * d;
  A mean, rstd;
  row_stats<T, A>(xr, d, (A)eps, &mean, &rstd);
  A s1 = 0, s2 = 0;
  for (u32 j = threadIdx.x & 31; j < d; j += 32) {
    A xhat = (to_acc(xr[j]) - mean) * rstd;
    A gdy = to_acc(g[j]) * to_acc(dyr[j]);
    s1 += gdy;
    s2 += gdy * xhat;
  }
  A m1 = warp_sum(s1) / (A)d;
  A m2 = warp_sum(s2) / (A)d;
  for (u32 j = threadIdx.x & 31; j < d; j += 32) {
    A xhat = (to_acc(xr[j]) - mean) * rstd;
    dxr[j] = store<T, A>(rstd * (to_acc(g[j]) * to_acc(dyr[j]) - m1 - xhat * m2));
  }
}

// -------------------------------------------------------------------------------------------------- Softmax

template <typename T>
__device__ void softmax_fwd(const T* x, T* y, u32 rows, u32 d) {
  typedef typename Acc<T>::type A;
  u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const T* xr = x + (size_t)row * d;
  T* yr = y + (size_t)row * d;
  int lane = threadIdx.x & 31;
  A m = (A)(-CUDART_INF_F);
  for (u32 j = lane; j < d; j += 32) {
    A v = to_acc(xr[j]);
    m = v > m ? v : m;
  }
  m = warp_max(m);
  A s = 0;
  for (u32 j = lane; j < d; j += 32) s += acc_exp(to_acc(xr[j]) - m);
  A inv = (A)1 / warp_sum(s);
  for (u32 j = lane; j < d; j += 32) yr[j] = store<T, A>(acc_exp(to_acc(xr[j]) - m) * inv);
}

// dx = y * (dy - sum(y * dy)).
template <typename T>
__device__ void softmax_bwd(const T* y, const T* dy, T* dx, u32 rows, u32 d) {
  typedef typename Acc<T>::type A;
  u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const T* yr = y + (size_t)row * d;
  const T* dyr = dy + (size_t)row * d;
  T* dxr = dx + (size_t)row * d;
  int lane = threadIdx.x & 31;
  A s = 0;
  for (u32 j = lane; j < d; j += 32) s += to_acc(yr[j]) * to_acc(dyr[j]);
  A dot = warp_sum(s);
  for (u32 j = lane; j < d; j += 32) dxr[j] = store<T, A>(to_acc(yr[j]) * (to_acc(dyr[j]) - dot));
}

// ----------------------------------------------------------------------------------------------------- GELU

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, size_t n) {
  typedef typename Acc<T>::type A;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    A v = to_acc(x[i]);
    y[i] = store<T, A>((A)0.5 * v * ((A)1 + acc_erf(v * (A)0.70710678118654752440)));
  }
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* dy, T* dx, size_t n) {
  typedef typename Acc<T>::type A;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    A v = to_acc(x[i]);
    A cdf = (A)0.5 * ((A)1 + acc_erf(v * (A)0.70710678118654752440));
    A pdf = (A)0.39894228040143267794 * acc_exp((A)-0.5 * v * v);
    dx[i] = store<T, A>(to_acc(dy[i]) * (cdf + v * pdf));
  }
}

// ---------------------------------------------------------------------------------- sparse row corrections
//
// A task pack is two buffers: u32 `pk` and f32 `pv`. pk starts with a directory of 4 u32 per site (a dense or
// LayerNorm layer of the model): slots_at, n_slots, cols_at, vals_at. A site's slots are its touched outputs:
// pk[slots_at + s] is the output index of slot s, and pk[slots_at + n_slots + s .. + s + 1] bound its entries
// (relative to cols_at / vals_at). Entry e adds pv[vals_at + e] times an input: for a dense layer column
// c = pk[cols_at + e] of the input row (c == in_dim: the constant 1, i.e. a bias delta); for a LayerNorm the
// normalized input at the slot's own index (c == dim: the constant 1, a shift delta).
//
// A batch plan (u64) holds, per segment of rows of one task, {pk pointer, pv pointer, row0 << 32 | rows},
// then one u64 per tile of at most `rt` rows: segment << 32 | tile index within the segment.

struct Tile {
  const u32* pk;
  const float* pv;
  u32 row0, nrows;
};

__device__ __forceinline__ Tile tile_of(const u64* plan, u32 n_segs, u32 rt) {
  u64 t = plan[3 * (size_t)n_segs + blockIdx.x];
  u32 seg = (u32)(t >> 32), ti = (u32)(t & 0xffffffffu);
  const u64* s = plan + 3 * (size_t)seg;
  Tile out;
  out.pk = (const u32*)s[0];
  out.pv = (const float*)s[1];
  u32 row0 = (u32)(s[2] >> 32), rows = (u32)(s[2] & 0xffffffffu);
  out.row0 = row0 + ti * rt;
  u32 left = rows - ti * rt;
  out.nrows = left < rt ? left : rt;
  return out;
}

template <typename T>
__device__ void sparse_dense(const T* x, T* y, u32 in_dim, u32 out_dim, u32 site, const u64* plan, u32 n_segs, u32 rt) {
  Tile t = tile_of(plan, n_segs, rt);
  const u32* dir = t.pk + 4 * site;
  u32 n_slots = dir[1];
  if (n_slots == 0) return;
  const u32* slot_out = t.pk + dir[0];
  const u32* slot_ptr = slot_out + n_slots;
  const u32* cols = t.pk + dir[2];
  const float* vals = t.pv + dir[3];
  u32 pairs = n_slots * t.nrows;
  for (u32 p = threadIdx.x; p < pairs; p += blockDim.x) {
    u32 s = p % n_slots, r = t.row0 + p / n_slots;
    const T* xr = x + (size_t)r * in_dim;
    float acc = 0.f;
    for (u32 e = slot_ptr[s]; e < slot_ptr[s + 1]; ++e) {
      u32 c = cols[e];
      float xv = c < in_dim ? (float)to_acc(xr[c]) : 1.f;
      acc += xv * vals[e];
    }
    T* yp = y + (size_t)r * out_dim + slot_out[s];
    *yp = store<T, typename Acc<T>::type>(to_acc(*yp) + acc);
  }
}

template <typename T>
__device__ void sparse_norm(const T* x, T* y, u32 dim, double eps, u32 site, const u64* plan, u32 n_segs, u32 rt) {
  typedef typename Acc<T>::type A;
  extern __shared__ unsigned char smem_raw[];
  A* stats = (A*)smem_raw;
  Tile t = tile_of(plan, n_segs, rt);
  const u32* dir = t.pk + 4 * site;
  u32 n_slots = dir[1];
  if (n_slots == 0) return;
  u32 warps = blockDim.x / 32, warp = threadIdx.x / 32;
  for (u32 r = warp; r < t.nrows; r += warps) {
    A mean, rstd;
    row_stats<T, A>(x + (size_t)(t.row0 + r) * dim, dim, (A)eps, &mean, &rstd);
    if ((threadIdx.x & 31) == 0) {
      stats[2 * r] = mean;
      stats[2 * r + 1] = rstd;
    }
  }
  __syncthreads();
  const u32* slot_out = t.pk + dir[0];
  const u32* slot_ptr = slot_out + n_slots;
  const u32* cols = t.pk + dir[2];
  const float* vals = t.pv + dir[3];
  u32 pairs = n_slots * t.nrows;
  for (u32 p = threadIdx.x; p < pairs; p += blockDim.x) {
    u32 s = p % n_slots, r = p / n_slots;
    u32 j = slot_out[s];
    const T* xr = x + (size_t)(t.row0 + r) * dim;
    A xhat = (to_acc(xr[j]) - stats[2 * r]) * stats[2 * r + 1];
    A acc = 0;
    for (u32 e = slot_ptr[s]; e < slot_ptr[s + 1]; ++e) acc += (cols[e] < dim ? xhat : (A)1) * (A)vals[e];
    T* yp = y + (size_t)(t.row0 + r) * dim + j;
    *yp = store<T, A>(to_acc(*yp) + acc);
  }
}

// ------------------------------------------------------------------------------------------------- scatter

// dst[idx[i]] = src[i] for i < n (indices unique).
template <typename T>
__device__ void scatter_set(T* dst, const u32* idx, const T* src, u32 n) {
  for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[idx[i]] = src[i];
}

// ------------------------------------------------------------------------------------------ instantiations

#define FOR_EACH_TYPE(X) X(float, f32) X(double, f64) X(__nv_bfloat16, bf16) X(__half, f16)

#define INSTANTIATE(T, S)                                                                                     \
  extern "C" __global__ void sg_layer_norm_fwd_##S(const T* x, const T* g, const T* b, T* y, u32 rows, u32 d, \
                                                   double eps) {                                             \
    layer_norm_fwd<T>(x, g, b, y, rows, d, eps);                                                              \
  }                                                                                                           \
  extern "C" __global__ void sg_layer_norm_bwd_dx_##S(const T* x, const T* g, const T* dy, T* dx, u32 rows,   \
                                                      u32 d, double eps) {                                    \
    layer_norm_bwd_dx<T>(x, g, dy, dx, rows, d, eps);                                                         \
  }                                                                                                           \
  extern "C" __global__ void sg_softmax_fwd_##S(const T* x, T* y, u32 rows, u32 d) { softmax_fwd<T>(x, y, rows, d); } \
  extern "C" __global__ void sg_softmax_bwd_##S(const T* y, const T* dy, T* dx, u32 rows, u32 d) {            \
    softmax_bwd<T>(y, dy, dx, rows, d);                                                                       \
  }                                                                                                           \
  extern "C" __global__ void sg_gelu_fwd_##S(const T* x, T* y, u64 n) { gelu_fwd<T>(x, y, (size_t)n); }       \
  extern "C" __global__ void sg_gelu_bwd_##S(const T* x, const T* dy, T* dx, u64 n) {                         \
    gelu_bwd<T>(x, dy, dx, (size_t)n);                                                                        \
  }                                                                                                           \
  extern "C" __global__ void sg_sparse_dense_##S(const T* x, T* y, u32 in_dim, u32 out_dim, u32 site,         \
                                                 const u64* plan, u32 n_segs, u32 rt) {                       \
    sparse_dense<T>(x, y, in_dim, out_dim, site, plan, n_segs, rt);                                           \
  }                                                                                                           \
  extern "C" __global__ void sg_sparse_norm_##S(const T* x, T* y, u32 dim, double eps, u32 site,              \
                                                const u64* plan, u32 n_segs, u32 rt) {                        \
    sparse_norm<T>(x, y, dim, eps, site, plan, n_segs, rt);                                                   \
  }                                                                                                           \
  extern "C" __global__ void sg_scatter_set_##S(T* dst, const u32* idx, const T* src, u32 n) {                \
    scatter_set<T>(dst, idx, src, n);                                                                         \
  }

FOR_EACH_TYPE(INSTANTIATE)
