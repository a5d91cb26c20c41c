// The CSR kernel body shared by spmm_csr_avx2.cpp and spmm_csr_avx512.cpp; include inside
// the anonymous namespace after batched.h and the file's GatherAcc, gather_fma and
// gather_fma_segments.
#pragma once

#include <type_traits>

// 8-bit CSR, batch > 1, segment-major: for each block of ChunkWriter::kRows rows, segment
// by segment, every row of the block adds that segment's entries to its partial sums
// (kept in the writer's buffer). The activations the block reads at a time are one
// segment's, kCsrSegment * W floats (16 KB at W = 16), which stay in L1; row by row, each
// row reads across the whole chunk (in_features * W floats), and past L1 every entry's
// load came from L2: on an AVX2-only Zen 3, 50% 4096x4096 at batch 16 ran at 15 useful
// GFLOP/s against 33 for a 384-column layer whose chunk fits L1.
// Fewer entries than this per (row, segment) on average, or chunks narrower than 16: row by
// row. There the partial sums' round trips and the per-segment loop cost more than the L1
// misses they save (Zen 3: 90% at batch 8-32 ran 2.8-3.0x dense instead of 3.4-6.7x, 50%
// 384x1536 at batch 8 1.0x instead of 1.4x).
constexpr int64_t kSegmentMajorMinEntries = 64;

template <class V, int NV, typename T, typename Writer>
void csr_segment_major(const Csr& w, const uint8_t* cols, const T* vals, int64_t row_begin,
                       int64_t row_end, const float* xt, Writer& out) {
  constexpr int W = NV * V::kLanes;
  const int64_t nseg = w.segments;
  zeroed_row_blocks<W>(out, row_begin, row_end, [&](int64_t r0, int64_t rows, float** acc) {
    for (int64_t s = 0; s < nseg; ++s) {
      const float* xs = xt + s * kCsrSegment * W;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t* b = w.row_offsets + (r0 + i) * nseg + s;
        if (s + 1 < nseg) {
          prefetch_bytes(cols + b[1], b[2] - b[1]);
          prefetch_bytes(vals + b[1], (b[2] - b[1]) * static_cast<int64_t>(sizeof(T)));
        }
        dot_batched_csr<V, NV, uint8_t, T, true, kChains>(cols + b[0], vals + b[0], b[1] - b[0],
                                                          xs, acc[i]);
      }
    }
  });
}

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
  // The whole weight's average, not this thread's rows': a row's summation order must not
  // depend on how the rows were split between threads (bitwise-equal outputs).
  const int64_t row_segments = d.out_features * nseg;
  const bool dense_segments =
      kSegmented && w.row_offsets[row_segments] - w.row_offsets[0] >=
                        kSegmentMajorMinEntries * row_segments;
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    constexpr int W = NV * V::kLanes;
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, W> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    if constexpr (kSegmented && kSegmentMajor && W >= kSegmentMajorMinWidth) {
      if (dense_segments && d.in_features * W * static_cast<int64_t>(sizeof(float)) > kTileBytes) {
        csr_segment_major<V, NV>(w, cols, vals, row_begin, row_end, xt, out);
        return;
      }
    }
    // Width 8 (batch 2-8): weights broadcast in registers while a row's activations, read
    // from all over the chunk, stay near L1 (kWidth8BroadcastMaxIn, vec_<isa>.h).
    const bool width8_broadcast = W == 8 && d.in_features <= kWidth8BroadcastMaxIn;
    for (int64_t r = row_begin; r < row_end; ++r) {
      if constexpr (kSegmented) {
        dot_batched_segments<V, NV>(cols, vals, w.row_offsets + r * nseg, nseg, xt,
                                    out.slot(r), width8_broadcast);
      } else {
        const int64_t k0 = w.row_offsets[r];
        dot_batched_csr<V, NV>(cols + k0, vals + k0, w.row_offsets[r + 1] - k0, xt, out.slot(r),
                               width8_broadcast);
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
