// Device helpers shared by the CUDA kernel files: element conversions, warp reductions and
// the tensor-core instructions (inline PTX, so no CUTLASS or torch headers are needed).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"

namespace sparseprune {
namespace cuda {
namespace detail {

constexpr int kWarp = 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ float load_float(const T* p) {
  return to_float(__ldg(p));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int s = kWarp / 2; s > 0; s /= 2) v += __shfl_xor_sync(0xffffffffu, v, s);
  return v;
}

__device__ __forceinline__ uint32_t load_u32(const void* p) {
  return __ldg(static_cast<const uint32_t*>(p));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers; src_bytes < 16 zero-fills the rest.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(src_bytes));
}
// 4-byte global -> shared copy (cached in L1); src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(src_bytes));
}
// 8-byte global -> shared copy (cached in L1); src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async8(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// Four 8x8 b16 matrices from shared memory; lane l supplies the row address of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// D += A B for A 16x16 (row), B 16x8 (col), fp32 accumulators; T = __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D += A B on the sparse tensor cores: A is 16x32 at 2:4, stored as its 16x16 kept values
// (same register layout as a dense 16x16 A), B 32x8 (col). e holds the 2-bit in-group
// indices: with selector 0, lane 4g supplies k 0..15 and lane 4g+1 k 16..31, each as
// bits 0..15 for row g and bits 16..31 for row g + 8 (PTX ISA, sparse mma metadata).
template <typename T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4], uint32_t e);
template <>
__device__ __forceinline__ void mma_sp_16832<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[4], uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
        "r"(b[3]), "r"(e));
}
template <>
__device__ __forceinline__ void mma_sp_16832<__nv_bfloat16>(float (&d)[4],
                                                            const uint32_t (&a)[4],
                                                            const uint32_t (&b)[4],
                                                            uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
        "r"(b[3]), "r"(e));
}

// The mma.sp metadata word of k-tile kk (0 or 1) of a 64-input step for the 16 rows whose
// step metadata (8 bytes per row, rows consecutive) starts at `rows` in shared memory:
// lanes t < 2 of group g supply row g in the low half and row g + 8 in the high half.
__device__ __forceinline__ uint32_t smem_step_meta(const uint8_t* rows, int kk, int g, int t) {
  if (t >= 2) return 0u;
  const uint8_t* top = rows + g * 8 + kk * 4 + 2 * t;
  return *reinterpret_cast<const uint16_t*>(top) |
         (static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(top + 64)) << 16);
}

// Byte offset of 16-byte chunk c of row r in a tile of KC-input rows (KC * 2 bytes each).
// 64-byte rows: the chunk is XORed with row bits 1-2 (two rows share a 128-byte bank line);
// 32-byte rows: with row bit 2 (four rows share one). Rows r..r+7 then use 8 bank groups.
template <int KC>
__device__ __forceinline__ int tile_off(int r, int c) {
  if constexpr (KC == 32) {
    return r * 64 + ((c ^ ((r >> 1) & 3)) << 4);
  } else {
    return r * 32 + ((c ^ ((r >> 2) & 1)) << 4);
  }
}

// An attribute of the current device (fallback if the query fails).
inline int device_attr(cudaDeviceAttr attr, int fallback) {
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    return fallback;
  }
  return value;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// For compile-time trip counts in device code.
__host__ __device__ constexpr int ceil_div_c(int a, int b) { return (a + b - 1) / b; }

// Writes the accumulators of a 16(out) x 8(batch) mma tile: c0,c1 are (row g, batch 2t,
// 2t+1), c2,c3 (row g + 8, same batch columns).
template <typename T>
__device__ __forceinline__ void store_tile(const float (&c)[4], const T* __restrict__ bias,
                                           T* __restrict__ y, int64_t row0, int64_t b0,
                                           int64_t out, int64_t batch, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + g + 8 * h;
    if (row >= out) continue;
    const float bv = bias != nullptr ? load_float(bias + row) : 0.f;
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int64_t b = b0 + 2 * t + q;
      if (b < batch) y[b * out + row] = from_float<T>(c[2 * h + q] + bv);
    }
  }
}

// The same tile's accumulators as fp32 partial sums of one input split, no bias: p is the
// split's [batch, out] slice (split_sum adds the slices up).
__device__ __forceinline__ void store_partial_tile(const float (&c)[4], float* __restrict__ p,
                                                   int64_t row0, int64_t b0, int64_t out,
                                                   int64_t batch, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int64_t row = row0 + g + 8 * h;
      const int64_t b = b0 + 2 * t + q;
      if (row < out && b < batch) p[b * out + row] = c[2 * h + q];
    }
}

// y = bias + the sum of the splits' fp32 partials [splits, batch, out] (total = batch * out
// elements each), in a fixed order (deterministic; no atomics); four elements per thread
// when they align. Grid-stride.
template <typename T>
__global__ __launch_bounds__(256) void split_sum(const float* __restrict__ partial, int splits,
                                                 const T* __restrict__ bias, T* __restrict__ y,
                                                 int64_t total, int64_t out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (total % 4 == 0) {
    for (int64_t v = first; v < total / 4; v += stride) {
      float4 sum = reinterpret_cast<const float4*>(partial)[v];
      for (int s = 1; s < splits; ++s) {
        const float4 q = reinterpret_cast<const float4*>(partial + s * total)[v];
        sum.x += q.x;
        sum.y += q.y;
        sum.z += q.z;
        sum.w += q.w;
      }
      const float r[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t i = 4 * v + c;
        y[i] = from_float<T>(r[c] + (bias != nullptr ? load_float(bias + i % out) : 0.f));
      }
    }
    return;
  }
  for (int64_t i = first; i < total; i += stride) {
    float sum = bias != nullptr ? load_float(bias + i % out) : 0.f;
    for (int s = 0; s < splits; ++s) sum += partial[s * total + i];
    y[i] = from_float<T>(sum);
  }
}

// Launches split_sum on `stream`: at most 4 CTAs per SM, each thread looping.
template <typename T>
void launch_split_sum(const float* partial, int64_t splits, const void* bias, void* y,
                      int64_t total, int64_t out, cudaStream_t stream) {
  const int64_t blocks =
      std::min<int64_t>(ceil_div(ceil_div(total, 4), 256),
                        4 * static_cast<int64_t>(device_attr(cudaDevAttrMultiProcessorCount, 132)));
  split_sum<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      partial, static_cast<int>(splits), static_cast<const T*>(bias), static_cast<T*>(y), total,
      out);
}

// Rows [b0, b0 + ROWS) x inputs [col0, col0 + KC) of x [batch, in] into a tile swizzled by
// tile_off<KC>, by cp.async from THREADS threads (thread tid); rows at or past `batch` and
// inputs at or past col_end are zero-filled. in and col_end are multiples of 8, so a 16-byte
// chunk is wholly inside or outside.
template <int ROWS, int KC, int THREADS, typename T>
__device__ __forceinline__ void stage_x_tile(uint8_t* xs, const T* __restrict__ x, int64_t in,
                                             int64_t b0, int64_t batch, int64_t col0,
                                             int64_t col_end, int tid) {
  constexpr int CH = KC / 8;
#pragma unroll
  for (int it = 0; it < ceil_div_c(ROWS * CH, THREADS); ++it) {
    const int q = tid + it * THREADS, rb = q / CH, ch = q % CH;
    if (q >= ROWS * CH) break;
    const int64_t col = col0 + ch * 8;
    const bool ok = b0 + rb < batch && col < col_end;
    cp_async16(xs + tile_off<KC>(rb, ch), ok ? x + (b0 + rb) * in + col : x, ok ? 16 : 0);
  }
}

// Host: calls fn with a null pointer of the half type of dt (__half or __nv_bfloat16);
// nothing for fp32 (the tensor-core kernels' fits() exclude it).
template <typename Fn>
void by_half_dtype(DType dt, const Fn& fn) {
  if (dt == DType::f16) {
    fn(static_cast<__half*>(nullptr));
  } else if (dt == DType::bf16) {
    fn(static_cast<__nv_bfloat16*>(nullptr));
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace detail
}  // namespace cuda
}  // namespace sparseprune
