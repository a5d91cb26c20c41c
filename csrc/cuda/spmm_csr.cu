// Unstructured (CSR) weights: the shared CUDA-core row kernels of rows.cuh with 16-bit
// column indices wherever in_features allows (4 bytes per fp16 nonzero), and the
// tensor-core kernels of spmm_csr_tc.cu (chosen at batch >= 256 and density >= 7.5%, see
// csr_choice; SPARSEPRUNE_CUDA_CSR=rows / tc:32 / tc:64 forces one).
//
// rows_mid (one warp per row, lanes over the row's nonzeros, each lane loading its
// nonzero's batch slice of x^T with plain loads) ran a 4096x4096 layer at 95% and batch
// 32 at 0.47x dense fp16 on an H200: 54 MB of 64-byte gathers in 29 us. Two kernels that
// kept more of those gathers in flight were slower still on the H200 and were removed:
// csr_chunked (x^T staged per 64-row CTA, 3-25x slower; commit 80a0737) and csr_staged (a
// warp's row chunks of 32 nonzeros copied to shared memory by cp.async 3 deep, lane = batch
// column; 0.9-0.5x of rows_mid at batch 16-512, benchmarks/cuda/csr_sweep_h200_staged.json;
// commit 11a7c94). The gathers themselves are the cost: the tensor-core kernels read x once
// per 128 rows instead, but their per-row scatter is the cost there (spmm_csr_tc.cu).
#include <string>
#include <type_traits>

#include "csr_tc.cuh"
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

constexpr int kRowsVariant = 1;
constexpr int kTcVariant = 2;  // + csr_tc variant index

// The tensor-core kernel at batch >= 256 where the weight keeps 7.5% or more (its cost is
// that of a dense tile, the rows' grows with the nonzeros): on an H200 tc:64 ran 1.27-1.61x
// faster than rows_mid at 90% and batch 256-512 on all three measured shapes, 0.83-1.05x at
// 95% (benchmarks/cuda/csr_sweep_h200_tc1.json; below batch 256 it lost at one shape or
// more). Otherwise rows_small / rows_mid, unless a fitting tensor-core kernel is forced.
constexpr int64_t kTcMinBatch = 256;
constexpr double kTcMinDensity = 0.075;

int csr_choice(const Dense& d, const Csr& w) {
  if (!wants_transposed_x(d.batch) || w.variant == kRowsVariant) return kRowsVariant;
  if (w.variant == 0) {
    const int k = csr_tc::find(64);
    const double density = static_cast<double>(w.nnz) /
                           (static_cast<double>(d.out_features) * d.in_features);
    return d.batch >= kTcMinBatch && density >= kTcMinDensity && csr_tc::fits(k, d, w)
               ? kTcVariant + k
               : kRowsVariant;
  }
  return csr_tc::fits(w.variant - kTcVariant, d, w) ? w.variant : kRowsVariant;
}

}  // namespace

int csr_variant(const char* spec) {
  const std::string v = spec == nullptr ? "" : spec;
  if (v.empty() || v == "auto") return 0;
  if (v == "rows") return kRowsVariant;
  for (int k = 0; k < csr_tc::count(); ++k) {
    if (v == csr_tc::name(k)) return kTcVariant + k;
  }
  return -1;
}

std::string csr_variant_names() {
  std::string names = "auto, rows";
  for (int k = 0; k < csr_tc::count(); ++k) names += ", " + csr_tc::name(k);
  return names;
}

bool csr_reads_xt(const Dense& d, const Csr& w) {
  return wants_transposed_x(d.batch) && csr_choice(d, w) == kRowsVariant;
}

int64_t csr_scratch_bytes(const Dense& d, const Csr& w) {
  const int choice = csr_choice(d, w);
  return choice >= kTcVariant ? csr_tc::scratch_bytes(choice - kTcVariant, d) : 0;
}

cudaError_t linear_csr(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream) {
  const int choice = csr_choice(d, w);
  if (choice >= kTcVariant) {
    csr_tc::launch(choice - kTcVariant, d, w, stream);
    return cudaGetLastError();
  }
  return detail::by_dtype(d.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto run = [&](auto* idx_tag) {
      using Idx = std::remove_pointer_t<decltype(idx_tag)>;
      const CsrRows<T, Idx> rows{w.row_offsets, static_cast<const Idx*>(w.col_indices),
                                 static_cast<const T*>(w.values), w.nnz, d.in_features};
      return detail::launch_rows<T>(d, xt, rows, stream);
    };
    return w.idx16 ? run(static_cast<uint16_t*>(nullptr)) : run(static_cast<int32_t*>(nullptr));
  });
}

}  // namespace cuda
}  // namespace sparseprune
