// CUDA-core kernels over "rows of (value, column) pairs", shared by the three formats: an
// accessor (CsrRows in spmm_csr.cu, BsrRows in spmm_bsr.cu, NmRows in spmm_nm.cu) says
// which pairs row r holds, in non-decreasing column order. Two shapes of work:
//   rows_small  batch <= kSmallBatch: one warp per output row, lanes stride the row's
//               pairs (coalesced weight reads; the few activation rows stay in L1), one
//               warp reduction per batch column at the end;
//   rows_mid    larger batches: one warp per output row as well, but every pair reads its
//               batch slice of x^T [in, padded batch] as 16-byte vectors (one or two
//               sectors per pair instead of one sector per batch column).
#pragma once

#include <climits>
#include <type_traits>

#include "common.cuh"

namespace sparseprune {
namespace cuda {
namespace detail {

constexpr int kRowsThreads = 256;
constexpr int kRowsWarps = kRowsThreads / kWarp;

template <typename T, typename Rows, int NB>
__global__ __launch_bounds__(kRowsThreads) void rows_small(const Rows rows, const T* __restrict__ x,
                                                           const T* __restrict__ bias,
                                                           T* __restrict__ y, int batch,
                                                           int64_t in, int64_t out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsWarps + threadIdx.x / kWarp;
  if (row >= out) return;
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;
  const int64_t begin = rows.begin(row), end = rows.end(row);
#pragma unroll 4
  for (int64_t e = begin + lane; e < end; e += kWarp) {
    float v;
    int col;
    rows.get(row, e, v, col);
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      if (b < batch) acc[b] += v * load_float(x + b * in + col);
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    const float s = warp_sum(acc[b]);
    if (lane == 0 && b < batch) {
      const float bv = bias != nullptr ? load_float(bias + row) : 0.f;
      y[b * out + row] = from_float<T>(s + bv);
    }
  }
}

// Batch columns per pass of rows_mid; x^T rows are padded to a multiple of kXtAlign so that
// each pair's batch slice is whole 16-byte vectors.
constexpr int kMidBatch = 32;

template <typename T>
__device__ __forceinline__ void add_scaled(float* acc, float v, const uint4& chunk) {
  if constexpr (std::is_same_v<T, float>) {
    acc[0] += v * __uint_as_float(chunk.x);
    acc[1] += v * __uint_as_float(chunk.y);
    acc[2] += v * __uint_as_float(chunk.z);
    acc[3] += v * __uint_as_float(chunk.w);
  } else {
    const T* h = reinterpret_cast<const T*>(&chunk);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] += v * to_float(h[i]);
  }
}

// Batch > kSmallBatch: one warp per output row, lanes stride the row's pairs, and each pair
// reads its NB batch values as 16-byte vectors from one row of x^T [in, ld] (in L2: the
// activations are shared by every row). grid.y walks the batch in tiles of NB.
template <typename T, typename Rows, int NB>
__global__ __launch_bounds__(kRowsThreads) void rows_mid(const Rows rows, const T* __restrict__ xt,
                                                         int64_t ld, const T* __restrict__ bias,
                                                         T* __restrict__ y, int64_t batch,
                                                         int64_t out) {
  constexpr int PER_VEC = 16 / int(sizeof(T));
  constexpr int NV = NB / PER_VEC;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsWarps + threadIdx.x / kWarp;
  if (row >= out) return;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * NB;
  // Vectors of this tile inside the padded row (warp-uniform).
  const int64_t left = (ld - b0) / PER_VEC;
  const int nv = left < NV ? static_cast<int>(left) : NV;
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.f;
  const int64_t begin = rows.begin(row), end = rows.end(row);
#pragma unroll 2
  for (int64_t e = begin + lane; e < end; e += kWarp) {
    float v;
    int col;
    rows.get(row, e, v, col);
    const uint4* src = reinterpret_cast<const uint4*>(xt + col * ld + b0);
    uint4 chunk[NV];
#pragma unroll
    for (int q = 0; q < NV; ++q) chunk[q] = q < nv ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int q = 0; q < NV; ++q) add_scaled<T>(acc + q * PER_VEC, v, chunk[q]);
  }
  const float bv = bias != nullptr ? load_float(bias + row) : 0.f;
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    const float s = warp_sum(acc[b]);
    if (lane == b && b0 + b < batch) y[(b0 + b) * out + row] = from_float<T>(s + bv);
  }
}

template <typename T, typename Rows>
cudaError_t launch_rows(const Dense& d, const void* xt_, const Rows& rows, cudaStream_t stream) {
  const T* x = static_cast<const T*>(d.x);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  const int64_t out = d.out_features, in = d.in_features, batch = d.batch;
  if (!wants_transposed_x(batch)) {
    const dim3 grid(static_cast<unsigned>(ceil_div(out, kRowsWarps)));
    const int b = static_cast<int>(batch);
    if (batch <= 1) {
      rows_small<T, Rows, 1><<<grid, kRowsThreads, 0, stream>>>(rows, x, bias, y, b, in, out);
    } else if (batch <= 2) {
      rows_small<T, Rows, 2><<<grid, kRowsThreads, 0, stream>>>(rows, x, bias, y, b, in, out);
    } else if (batch <= 4) {
      rows_small<T, Rows, 4><<<grid, kRowsThreads, 0, stream>>>(rows, x, bias, y, b, in, out);
    } else {
      rows_small<T, Rows, 8><<<grid, kRowsThreads, 0, stream>>>(rows, x, bias, y, b, in, out);
    }
    return cudaGetLastError();
  }
  const T* xt = static_cast<const T*>(xt_);
  const int64_t ld = padded_batch(batch);
  const dim3 grid(static_cast<unsigned>(ceil_div(out, kRowsWarps)),
                  static_cast<unsigned>(ceil_div(batch, batch <= 16 ? 16 : kMidBatch)));
  if (batch <= 16) {
    rows_mid<T, Rows, 16><<<grid, kRowsThreads, 0, stream>>>(rows, xt, ld, bias, y, batch, out);
  } else {
    rows_mid<T, Rows, kMidBatch><<<grid, kRowsThreads, 0, stream>>>(rows, xt, ld, bias, y, batch,
                                                                    out);
  }
  return cudaGetLastError();
}

// Calls fn with a null pointer of the element type of dt (float, __half, __nv_bfloat16).
template <typename Fn>
cudaError_t by_dtype(DType dt, const Fn& fn) {
  switch (dt) {
    case DType::f32:
      return fn(static_cast<float*>(nullptr));
    case DType::f16:
      return fn(static_cast<__half*>(nullptr));
    case DType::bf16:
      return fn(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace cuda
}  // namespace sparseprune
