// Unstructured (CSR) weights on CUDA cores: the shared row kernels of rows.cuh with
// 16-bit column indices wherever in_features allows (4 bytes per fp16 nonzero).
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

}  // namespace

cudaError_t linear_csr(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream) {
  return detail::by_dtype(d.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* values = static_cast<const T*>(w.values);
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
