// Unstructured (CSR) weights on CUDA cores: the shared row kernels of rows.cuh with
// 16-bit column indices wherever in_features allows (4 bytes per fp16 nonzero), and
// csr_staged for batches above kSmallBatch when forced (SPARSEPRUNE_CUDA_CSR=staged; not
// chosen automatically until a GPU run has measured it against rows_mid).
//
// rows_mid (one warp per row, lanes over the row's nonzeros, each lane loading its
// nonzero's batch slice of x^T with plain loads) ran a 4096x4096 layer at 95% and batch
// 32 at 0.47x dense fp16 on an H200: 54 MB of 64-byte gathers in 29 us, 1.8 TB/s, about
// what ~16 loads in flight per warp give at L2 latency. csr_staged keeps many more bytes
// in flight: a warp takes a row's nonzeros 32 at a time, each lane copying its nonzero's
// 32-column slice of x^T into shared memory by cp.async, kStagedStages groups deep across
// chunks and rows; the lanes then own batch columns (lane = column), so each nonzero is a
// shuffle of its value, one shared-memory read and an FMA per lane, and no reduction is
// left at the end of a row.
#include <algorithm>
#include <string>
#include <type_traits>

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
    col = static_cast<int>(min(max(static_cast<int64_t>(__ldg(cols + e)), int64_t{0}), in - 1));
  }
};

constexpr int kStagedWarps = 8;
constexpr int kStagedBatch = detail::kWarp;  // batch columns per warp: one per lane
constexpr int kStagedStages = 3;

// Shared memory of one warp's stages: 32 nonzeros x 32 batch columns each.
template <typename T>
constexpr int staged_warp_bytes() {
  return kStagedStages * detail::kWarp * kStagedBatch * static_cast<int>(sizeof(T));
}

// One warp per row (rows strided over the grid's warps), 32 batch columns per grid.y. The
// warp walks its rows' chunks of up to 32 nonzeros (an empty row is one empty chunk); chunk
// i + 2 is in flight while chunk i is summed.
template <typename T, typename Idx>
__global__ __launch_bounds__(kStagedWarps * detail::kWarp) void csr_staged(
    const CsrRows<T, Idx> rows, const T* __restrict__ xt, int64_t ld, const T* __restrict__ bias,
    T* __restrict__ y, int64_t batch, int64_t out) {
  constexpr int kW = detail::kWarp, kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kRowVecs = kStagedBatch / kVec;  // 16-byte copies per nonzero
  extern __shared__ uint4 smem[];
  const int lane = threadIdx.x % kW, warp = threadIdx.x / kW;
  T* const stages = reinterpret_cast<T*>(smem) + warp * kStagedStages * kW * kStagedBatch;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kStagedBatch;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kStagedWarps;

  // The warp's position: the row and the first nonzero of its next chunk to issue.
  int64_t row = static_cast<int64_t>(blockIdx.x) * kStagedWarps + warp;
  int64_t e = row < out ? rows.begin(row) : 0, end = row < out ? rows.end(row) : 0;

  // A chunk in flight: its row, how many nonzeros, whether it ends the row, and this
  // lane's nonzero value.
  struct Chunk {
    int64_t row;
    int count;
    bool last;
    float v;
  };
  // Issues the next chunk into stage `slot` (one cp.async group per call, empty at the end).
  auto issue = [&](int slot, Chunk& c) -> bool {
    if (row >= out) {
      detail::cp_async_commit();
      return false;
    }
    const int64_t n = min(end - e, static_cast<int64_t>(kW));
    c.row = row;
    c.count = static_cast<int>(n);
    c.last = e + n >= end;
    c.v = 0.f;
    if (lane < n) {
      int col;
      rows.get(row, e + lane, c.v, col);
      T* dst = stages + (slot * kW + lane) * kStagedBatch;
      const T* src = xt + static_cast<int64_t>(col) * ld + b0;
#pragma unroll
      for (int q = 0; q < kRowVecs; ++q) {
        const bool ok = b0 + q * kVec < ld;  // ld is a multiple of 8: whole vectors
        detail::cp_async16(dst + q * kVec, ok ? src + q * kVec : xt, ok ? 16 : 0);
      }
    }
    detail::cp_async_commit();
    e += n;
    if (e >= end) {  // the next row of this warp
      row += row_step;
      if (row < out) {
        e = rows.begin(row);
        end = rows.end(row);
      }
    }
    return true;
  };

  Chunk chunk[kStagedStages];
  bool live[kStagedStages];
#pragma unroll
  for (int s = 0; s < kStagedStages - 1; ++s) live[s] = issue(s, chunk[s]);
  float acc = 0.f;
  // Chunk i sits in stage i % 3; the stages are named at compile time (step<S>) so that
  // chunk[] and live[] stay in registers.
  auto step = [&](auto stage) -> bool {
    constexpr int s = decltype(stage)::value;
    constexpr int ahead = (s + kStagedStages - 1) % kStagedStages;
    if (!live[s]) return false;
    live[ahead] = issue(ahead, chunk[ahead]);
    detail::cp_async_wait<kStagedStages - 1>();
    __syncwarp();  // every lane's copies of this chunk have landed
    const Chunk& c = chunk[s];
    const T* xs = stages + s * kW * kStagedBatch + lane;
    for (int k = 0; k < c.count; ++k) {
      const float v = __shfl_sync(0xffffffffu, c.v, k);
      acc += v * detail::to_float(xs[k * kStagedBatch]);
    }
    if (c.last) {
      const int64_t b = b0 + lane;
      if (b < batch) {
        const float bv = bias != nullptr ? detail::load_float(bias + c.row) : 0.f;
        y[b * out + c.row] = detail::from_float<T>(acc + bv);
      }
      acc = 0.f;
    }
    __syncwarp();  // this stage is free for the chunk issued next
    return true;
  };
  static_assert(kStagedStages == 3, "the loop below names three stages");
  while (step(std::integral_constant<int, 0>{}) && step(std::integral_constant<int, 1>{}) &&
         step(std::integral_constant<int, 2>{})) {
  }
  detail::cp_async_wait<0>();
}

template <typename T, typename Idx>
cudaError_t launch_staged(const Dense& d, const void* xt, const CsrRows<T, Idx>& rows,
                          cudaStream_t stream) {
  const auto kernel = csr_staged<T, Idx>;
  constexpr int kSmem = kStagedWarps * staged_warp_bytes<T>();
  if (kSmem > 48 * 1024) {
    (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  }
  // Two CTAs per SM over the rows (each warp then takes about out / (16 SMs) rows in turn,
  // so its pipeline runs across rows); grid.y walks the batch.
  const int64_t sms = detail::device_attr(cudaDevAttrMultiProcessorCount, 132);
  const int64_t ctas =
      std::min<int64_t>(detail::ceil_div(d.out_features, kStagedWarps), 2 * sms);
  const dim3 grid(static_cast<unsigned>(ctas),
                  static_cast<unsigned>(detail::ceil_div(d.batch, kStagedBatch)));
  kernel<<<grid, kStagedWarps * detail::kWarp, kSmem, stream>>>(
      rows, static_cast<const T*>(xt), padded_batch(d.batch), static_cast<const T*>(d.bias),
      static_cast<T*>(d.y), d.batch, d.out_features);
  return cudaGetLastError();
}

constexpr int kRowsVariant = 1;
constexpr int kStagedVariant = 2;

// rows_mid / rows_small unless csr_staged is forced (and the batch has x^T; grid limits).
int csr_choice(const Dense& d, const Csr& w) {
  if (!wants_transposed_x(d.batch) || w.variant != kStagedVariant) return kRowsVariant;
  return detail::ceil_div(d.batch, kStagedBatch) <= 65535 ? kStagedVariant : kRowsVariant;
}

}  // namespace

int csr_variant(const char* spec) {
  const std::string v = spec == nullptr ? "" : spec;
  if (v.empty() || v == "auto") return 0;
  if (v == "rows") return kRowsVariant;
  if (v == "staged") return kStagedVariant;
  return -1;
}

std::string csr_variant_names() { return "auto, rows, staged"; }

cudaError_t linear_csr(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream) {
  return detail::by_dtype(d.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto run = [&](auto* idx_tag) {
      using Idx = std::remove_pointer_t<decltype(idx_tag)>;
      const CsrRows<T, Idx> rows{w.row_offsets, static_cast<const Idx*>(w.col_indices),
                                 static_cast<const T*>(w.values), w.nnz, d.in_features};
      return csr_choice(d, w) == kStagedVariant ? launch_staged(d, xt, rows, stream)
                                                : detail::launch_rows<T>(d, xt, rows, stream);
    };
    return w.idx16 ? run(static_cast<uint16_t*>(nullptr)) : run(static_cast<int32_t*>(nullptr));
  });
}

}  // namespace cuda
}  // namespace sparseprune
