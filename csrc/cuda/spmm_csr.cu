// Unstructured (CSR) weights on CUDA cores: the shared row kernels of rows.cuh with
// 16-bit column indices wherever in_features allows (4 bytes per fp16 nonzero), and from
// batch 17 csr_chunked where the layer gives it enough CTAs (csr_choice).
//
// rows_mid gathers each nonzero's batch slice of x^T from L2 (nnz x batch x 2 bytes: 54 MB
// for a 4096x4096 layer at 95% and batch 32, 0.47x dense fp16 on an H200). csr_chunked
// instead stages x^T [KC inputs, 16 batch columns] (64 KB) in shared memory once per CTA of
// 64 rows and walks those rows' nonzeros inside the chunk, so x crosses L2 once per 64 rows
// ((out / 64) x batch x in x 2 bytes, a third of the gathers at 95%).
#include <climits>
#include <string>

#include "rows.cuh"

namespace sparseprune {
namespace cuda {
namespace {

template <typename T, typename Idx>
struct CsrRows {
  const int64_t* __restrict__ row_offsets;
  const Idx* __restrict__ cols;
  const T* __restrict__ values;
  int64_t nnz;
  int64_t in;

  __device__ __forceinline__ int64_t begin(int64_t r) const {
    return min(max(__ldg(row_offsets + r), int64_t{0}), nnz);
  }
  __device__ __forceinline__ int64_t end(int64_t r) const {
    return max(min(__ldg(row_offsets + r + 1), nnz), begin(r));
  }
  __device__ __forceinline__ void get(int64_t, int64_t e, float& v, int& col) const {
    v = detail::load_float(values + e);
    col = static_cast<int>(min(static_cast<int64_t>(__ldg(cols + e)), in - 1));
  }
};


constexpr int kChunkThreads = 256;
constexpr int kChunkWarps = kChunkThreads / detail::kWarp;
constexpr int kChunkRowsPerWarp = 8;
constexpr int kChunkRows = kChunkWarps * kChunkRowsPerWarp;  // 64 rows per CTA
constexpr int kChunkBatch = 16;                               // batch columns per CTA
constexpr int kChunkBytes = 64 << 10;                         // staged x^T per chunk
constexpr int kChunkFromBatch = 17;

template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p);
template <>
__device__ __forceinline__ float2 load_pair<float>(const float* p) {
  return *reinterpret_cast<const float2*>(p);
}
template <>
__device__ __forceinline__ float2 load_pair<__half>(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
template <>
__device__ __forceinline__ float2 load_pair<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// One CTA: 64 rows (8 per warp) x 16 batch columns. For each chunk of KC inputs, x^T
// [KC, 16] is staged in shared memory, then every warp walks each of its rows' nonzeros in
// that chunk four at a time: lane = 8 slot + q, slot s of the four nonzeros, batch columns
// 2q and 2q + 1. Columns are sorted within a row, so the nonzeros inside a chunk are a
// prefix of what is left of the row (one ballot per step finds its end) and each row keeps
// a cursor across chunks. The four slots' sums meet by two shuffles at the end.
template <typename T, typename Idx>
__global__ __launch_bounds__(kChunkThreads) void csr_chunked(
    const int64_t* __restrict__ row_offsets, const Idx* __restrict__ cols,
    const T* __restrict__ values, int64_t nnz, const T* __restrict__ xt, int64_t ld,
    const T* __restrict__ bias, T* __restrict__ y, int64_t batch, int64_t in, int64_t out) {
  constexpr int KC = kChunkBytes / (kChunkBatch * static_cast<int>(sizeof(T)));
  constexpr int kRowChunks = kChunkBatch * static_cast<int>(sizeof(T)) / 16;  // 16-byte
  extern __shared__ uint4 smem[];
  T* const xs = reinterpret_cast<T*>(smem);
  const int tid = threadIdx.x, lane = tid % detail::kWarp, warp = tid / detail::kWarp;
  const int slot = lane >> 3, q = lane & 7;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kChunkBatch;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kChunkRows + warp * kChunkRowsPerWarp;

  int64_t cur[kChunkRowsPerWarp], end[kChunkRowsPerWarp];
  float acc[kChunkRowsPerWarp][2];
#pragma unroll
  for (int r = 0; r < kChunkRowsPerWarp; ++r) {
    const int64_t row = min(r0 + r, out - 1);
    cur[r] = min(max(__ldg(row_offsets + row), int64_t{0}), nnz);
    end[r] = r0 + r < out ? max(min(__ldg(row_offsets + row + 1), nnz), cur[r]) : cur[r];
    acc[r][0] = acc[r][1] = 0.f;
  }

  for (int64_t k0 = 0; k0 < in; k0 += KC) {
    const int64_t k_end = min(k0 + KC, in);
    __syncthreads();  // every warp is done with the previous chunk
    for (int c = tid; c < KC * kRowChunks; c += kChunkThreads) {
      const int kr = c / kRowChunks, ch = c % kRowChunks;
      const int64_t col = b0 + ch * (16 / static_cast<int>(sizeof(T)));
      const bool ok = k0 + kr < in && col < ld;
      detail::cp_async16(xs + kr * kChunkBatch + ch * (16 / static_cast<int>(sizeof(T))),
                         ok ? xt + (k0 + kr) * ld + col : xt, ok ? 16 : 0);
    }
    detail::cp_async_commit();
    detail::cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kChunkRowsPerWarp; ++r) {
      int64_t e = cur[r];
      while (e < end[r]) {  // warp-uniform
        const int64_t idx = e + slot;
        int col = INT_MAX;
        float v = 0.f;
        if (idx < end[r]) {
          col = static_cast<int>(min(static_cast<int64_t>(__ldg(cols + idx)), in - 1));
          v = detail::load_float(values + idx);
        }
        const bool inside = col < k_end;
        if (inside && col >= k0) {
          const float2 xv = load_pair<T>(xs + (col - k0) * kChunkBatch + 2 * q);
          acc[r][0] += v * xv.x;
          acc[r][1] += v * xv.y;
        }
        const int taken = __popc(__ballot_sync(0xffffffffu, inside)) / 8;
        e += taken;
        if (taken < 4) break;
      }
      cur[r] = e;
    }
  }

#pragma unroll
  for (int r = 0; r < kChunkRowsPerWarp; ++r) {
    float s0 = acc[r][0], s1 = acc[r][1];
#pragma unroll
    for (int m = 8; m < detail::kWarp; m *= 2) {
      s0 += __shfl_xor_sync(0xffffffffu, s0, m);
      s1 += __shfl_xor_sync(0xffffffffu, s1, m);
    }
    const int64_t row = r0 + r;
    if (slot == 0 && row < out) {
      const float bv = bias != nullptr ? detail::load_float(bias + row) : 0.f;
      const int64_t b = b0 + 2 * q;
      if (b < batch) y[b * out + row] = detail::from_float<T>(s0 + bv);
      if (b + 1 < batch) y[(b + 1) * out + row] = detail::from_float<T>(s1 + bv);
    }
  }
}

template <typename T, typename Idx>
cudaError_t launch_chunked(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream) {
  const auto kernel = csr_chunked<T, Idx>;
  (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kChunkBytes);
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(d.batch, kChunkBatch)),
                  static_cast<unsigned>(detail::ceil_div(d.out_features, kChunkRows)));
  kernel<<<grid, kChunkThreads, kChunkBytes, stream>>>(
      w.row_offsets, static_cast<const Idx*>(w.col_indices), static_cast<const T*>(w.values),
      w.nnz, static_cast<const T*>(xt), padded_batch(d.batch), static_cast<const T*>(d.bias),
      static_cast<T*>(d.y), d.batch, d.in_features, d.out_features);
  return cudaGetLastError();
}

constexpr int kRowsVariant = 1;
constexpr int kChunkedVariant = 2;

// csr_chunked from batch 17 where its CTAs fill every SM (a 64-row tile of a narrow layer
// leaves SMs idle: rows_mid then); forced variants when they can run.
int csr_choice(const Dense& d, const Csr& w) {
  if (!wants_transposed_x(d.batch)) return kRowsVariant;
  const bool fits = d.out_features <= 65535LL * kChunkRows &&
                    kChunkBytes <= detail::device_attr(
                                       cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10);
  if (w.variant == kRowsVariant || !fits) return kRowsVariant;
  if (w.variant == kChunkedVariant) return kChunkedVariant;
  const int64_t ctas =
      detail::ceil_div(d.out_features, kChunkRows) * detail::ceil_div(d.batch, kChunkBatch);
  return d.batch >= kChunkFromBatch &&
                 ctas >= detail::device_attr(cudaDevAttrMultiProcessorCount, 132)
             ? kChunkedVariant
             : kRowsVariant;
}

}  // namespace

int csr_variant(const char* spec) {
  const std::string v = spec == nullptr ? "" : spec;
  if (v.empty() || v == "auto") return 0;
  if (v == "rows") return kRowsVariant;
  if (v == "chunked") return kChunkedVariant;
  return -1;
}

std::string csr_variant_names() { return "auto, rows, chunked"; }

cudaError_t linear_csr(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream) {
  return detail::by_dtype(d.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* values = static_cast<const T*>(w.values);
    if (csr_choice(d, w) == kChunkedVariant) {
      return w.idx16 ? launch_chunked<T, uint16_t>(d, xt, w, stream)
                     : launch_chunked<T, int32_t>(d, xt, w, stream);
    }
    if (w.idx16) {
      const CsrRows<T, uint16_t> rows{w.row_offsets, static_cast<const uint16_t*>(w.col_indices),
                                      values, w.nnz, d.in_features};
      return detail::launch_rows<T>(d, xt, rows, stream);
    }
    const CsrRows<T, int32_t> rows{w.row_offsets, static_cast<const int32_t*>(w.col_indices),
                                   values, w.nnz, d.in_features};
    return detail::launch_rows<T>(d, xt, rows, stream);
  });
}

}  // namespace cuda
}  // namespace sparseprune
