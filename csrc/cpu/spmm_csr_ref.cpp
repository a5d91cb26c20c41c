#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

template <typename T, typename I>
void csr_ref(const Dense& d, const Csr& w, int64_t row_begin, int64_t row_end) {
  const T* x = static_cast<const T*>(d.x);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  const I* cols = static_cast<const I*>(w.col_indices);
  const T* vals = static_cast<const T*>(w.values);
  // Segment s of a row starts at column s * seg_cols (8-bit CSR); one segment otherwise.
  const int64_t nseg = w.segments;
  const int64_t seg_cols = w.index_type == IndexType::u8 ? kCsrSegment : 0;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t* bounds = w.row_offsets + r * nseg;
    for (int64_t b = 0; b < d.batch; ++b) {
      const T* xb = x + b * d.in_features;
      double acc = bias ? load_f32(bias[r]) : 0.0;
      for (int64_t s = 0; s < nseg; ++s) {
        const T* xs = xb + s * seg_cols;
        for (int64_t k = bounds[s]; k < bounds[s + 1]; ++k) {
          acc += static_cast<double>(load_f32(vals[k])) * load_f32(xs[cols[k]]);
        }
      }
      y[b * d.out_features + r] = store_f32<T>(static_cast<float>(acc));
    }
  }
}

}  // namespace

void spmm_csr_ref(const Dense& d, const Csr& w, const XPacked&, int64_t row_begin,
                  int64_t row_end) {
  const bool f32 = d.dtype == DType::f32;
  switch (w.index_type) {
    case IndexType::u16:
      f32 ? csr_ref<float, uint16_t>(d, w, row_begin, row_end)
          : csr_ref<uint16_t, uint16_t>(d, w, row_begin, row_end);
      break;
    case IndexType::i32:
      f32 ? csr_ref<float, int32_t>(d, w, row_begin, row_end)
          : csr_ref<uint16_t, int32_t>(d, w, row_begin, row_end);
      break;
    case IndexType::u8:
      f32 ? csr_ref<float, uint8_t>(d, w, row_begin, row_end)
          : csr_ref<uint16_t, uint8_t>(d, w, row_begin, row_end);
      break;
  }
}

}  // namespace cpu
}  // namespace sparseprune
