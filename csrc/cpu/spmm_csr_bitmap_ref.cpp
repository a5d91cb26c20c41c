// CSR bitmap view (cpu::CsrBitmap), scalar reference: accumulates in double.
#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

template <typename T>
void csr_bitmap_ref(const Dense& d, const CsrBitmap& w, const float* x, int64_t row_begin,
                    int64_t row_end) {
  const T* vals = static_cast<const T*>(w.values);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* bits = w.bitmap + r * w.row_bytes;
    int64_t k = w.row_starts[r];
    const int64_t end = w.row_starts[r + 1];
    double acc = bias ? load_f32(bias[r]) : 0.0;
    for (int64_t c = 0; c < w.row_bytes * 8 && k < end; ++c) {
      if (bits[c >> 3] >> (c & 7) & 1) acc += static_cast<double>(load_f32(vals[k++])) * x[c];
    }
    y[r] = store_f32<T>(static_cast<float>(acc));
  }
}

}  // namespace

void spmm_csr_bitmap_ref(const Dense& d, const CsrBitmap& w, const float* x, int64_t row_begin,
                         int64_t row_end) {
  if (d.dtype == DType::f32) {
    csr_bitmap_ref<float>(d, w, x, row_begin, row_end);
  } else {
    csr_bitmap_ref<uint16_t>(d, w, x, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
