#include <algorithm>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

template <typename T>
void bsr_ref(const Dense& d, const Bsr& w, int64_t block_row_begin, int64_t block_row_end) {
  const T* x = static_cast<const T*>(d.x);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  const T* blocks = static_cast<const T*>(w.blocks);
  const int64_t block_elems = w.bh * w.bw;
  for (int64_t br = block_row_begin; br < block_row_end; ++br) {
    const int64_t r0 = br * w.bh;
    const int64_t rows = std::min(w.bh, d.out_features - r0);
    const int64_t k0 = w.block_row_offsets[br];
    const int64_t k1 = w.block_row_offsets[br + 1];
    for (int64_t b = 0; b < d.batch; ++b) {
      const T* xb = x + b * d.in_features;
      for (int64_t i = 0; i < rows; ++i) {
        double acc = bias ? load_f32(bias[r0 + i]) : 0.0;
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
          const int64_t cols = std::min(w.bw, d.in_features - c0);
          const T* wrow = blocks + k * block_elems + i * w.bw;
          for (int64_t j = 0; j < cols; ++j) {
            acc += static_cast<double>(load_f32(wrow[j])) * load_f32(xb[c0 + j]);
          }
        }
        y[b * d.out_features + r0 + i] = store_f32<T>(static_cast<float>(acc));
      }
    }
  }
}

}  // namespace

void spmm_bsr_ref(const Dense& d, const Bsr& w, const XPacked&, int64_t block_row_begin,
                  int64_t block_row_end) {
  if (d.dtype == DType::f32) {
    bsr_ref<float>(d, w, block_row_begin, block_row_end);
  } else {
    bsr_ref<uint16_t>(d, w, block_row_begin, block_row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
