// The CSR kernel body shared by spmm_csr_avx2.cpp and spmm_csr_avx512.cpp; include inside
// the anonymous namespace after batched.h and the file's GatherAcc, gather_fma and
// gather_fma_segments.
#pragma once

#include <type_traits>

// A CSR row range: batch 1 through the ISA's gather dot product (gather_fma or
// gather_fma_segments into a GatherAcc, defined by the including file), larger batches
// through dot_batched (8-bit CSR: dot_batched_segments) per chunk.
template <typename T, typename I>
void csr_rows(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
              int64_t row_end) {
  constexpr bool kSegmented = std::is_same<I, uint8_t>::value;
  const I* cols = static_cast<const I*>(w.col_indices);
  const T* vals = static_cast<const T*>(w.values);
  const int64_t nseg = w.segments;
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      GatherAcc acc;
      if constexpr (kSegmented) {
        gather_fma_segments(cols, vals, w.row_offsets + r * nseg, nseg, xp.xt, acc);
      } else {
        gather_fma(cols, vals, w.row_offsets[r], w.row_offsets[r + 1], xp.xt, acc);
      }
      const float sum = acc.sum();
      store_column<T>(d, &sum, 0, 1, r);
    }
    return;
  }
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, NV * V::kLanes> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    for (int64_t r = row_begin; r < row_end; ++r) {
      if constexpr (kSegmented) {
        dot_batched_segments<V, NV>(cols, vals, w.row_offsets + r * nseg, nseg, xt,
                                    out.slot(r));
      } else {
        const int64_t k0 = w.row_offsets[r];
        dot_batched<V, NV>(cols + k0, vals + k0, w.row_offsets[r + 1] - k0, xt, out.slot(r));
      }
    }
  });
}

// The exported entry of a CSR kernel file: dtype x index type.
inline void csr_dispatch(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
                         int64_t row_end) {
  const bool f32 = d.dtype == DType::f32;
  switch (w.index_type) {
    case IndexType::u16:
      f32 ? csr_rows<float, uint16_t>(d, w, xp, row_begin, row_end)
          : csr_rows<uint16_t, uint16_t>(d, w, xp, row_begin, row_end);
      break;
    case IndexType::i32:
      f32 ? csr_rows<float, int32_t>(d, w, xp, row_begin, row_end)
          : csr_rows<uint16_t, int32_t>(d, w, xp, row_begin, row_end);
      break;
    case IndexType::u8:
      f32 ? csr_rows<float, uint8_t>(d, w, xp, row_begin, row_end)
          : csr_rows<uint16_t, uint8_t>(d, w, xp, row_begin, row_end);
      break;
  }
}
