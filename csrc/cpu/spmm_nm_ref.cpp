#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

template <typename T>
void nm_ref(const Dense& d, const NM& w, int64_t row_begin, int64_t row_end) {
  const T* x = static_cast<const T*>(d.x);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  const T* vals = static_cast<const T*>(w.values);
  const int bits = nm_index_bits(w.m);
  const int64_t slots = nm_slots_per_row(d.in_features, w.n, w.m);
  const int64_t row_bytes = nm_meta_row_bytes(d.in_features, w.n, w.m);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* vrow = vals + r * slots;
    const uint8_t* mrow = w.metadata + r * row_bytes;
    for (int64_t b = 0; b < d.batch; ++b) {
      const T* xb = x + b * d.in_features;
      double acc = bias ? load_f32(bias[r]) : 0.0;
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t col = (s / w.n) * w.m + nm_slot_index(mrow, row_bytes, s, bits);
        acc += static_cast<double>(load_f32(vrow[s])) * load_f32(xb[col]);
      }
      y[b * d.out_features + r] = store_f32<T>(static_cast<float>(acc));
    }
  }
}

}  // namespace

void spmm_nm_ref(const Dense& d, const NM& w, const XPacked&, int64_t row_begin,
                 int64_t row_end) {
  if (d.dtype == DType::f32) {
    nm_ref<float>(d, w, row_begin, row_end);
  } else {
    nm_ref<uint16_t>(d, w, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
