// CSR x dense, AVX-512.
// Batch 1: one output row at a time, 16 nonzeros per step, activations fetched with a
// gather (8-bit CSR: segment by segment, from the segment's first column). Larger batches: the batched body (batched.h) over packed activations.
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx512.h"
#include "cpu/load_avx512.h"

template <typename I>
inline __m512i load_idx(const I* p);
template <>
inline __m512i load_idx<uint16_t>(const uint16_t* p) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <>
inline __m512i load_idx<int32_t>(const int32_t* p) {
  return _mm512_loadu_si512(p);
}
template <>
inline __m512i load_idx<uint8_t>(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename I>
inline __m512i load_idx_tail(const I* p, __mmask16 k);
template <>
inline __m512i load_idx_tail<uint16_t>(const uint16_t* p, __mmask16 k) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
}
template <>
inline __m512i load_idx_tail<int32_t>(const int32_t* p, __mmask16 k) {
  return _mm512_maskz_loadu_epi32(k, p);
}
template <>
inline __m512i load_idx_tail<uint8_t>(const uint8_t* p, __mmask16 k) {
  return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p));
}

// Partial sums of one output row at batch 1 (two chains), kept across the segments of an
// 8-bit CSR row.
struct GatherAcc {
  __m512 a0 = _mm512_setzero_ps();
  __m512 a1 = _mm512_setzero_ps();
  float sum() const { return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)); }
};

// acc += vals[k0..k1) * x[cols[k0..k1)].
template <typename I, typename T>
inline void gather_fma(const I* cols, const T* vals, int64_t k0, int64_t k1, const float* x,
                       GatherAcc& acc) {
  __m512 acc0 = acc.a0;
  __m512 acc1 = acc.a1;
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) {
    const __m512 x0 = _mm512_i32gather_ps(load_idx(cols + k), x, 4);
    const __m512 x1 = _mm512_i32gather_ps(load_idx(cols + k + 16), x, 4);
    acc0 = _mm512_fmadd_ps(load16(vals + k), x0, acc0);
    acc1 = _mm512_fmadd_ps(load16(vals + k + 16), x1, acc1);
  }
  for (; k + 16 <= k1; k += 16) {
    const __m512 x0 = _mm512_i32gather_ps(load_idx(cols + k), x, 4);
    acc0 = _mm512_fmadd_ps(load16(vals + k), x0, acc0);
  }
  if (k < k1) {
    const __mmask16 m = static_cast<__mmask16>((1u << (k1 - k)) - 1u);
    const __m512 x0 =
        _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx_tail(cols + k, m), x, 4);
    acc1 = _mm512_fmadd_ps(load16(vals + k, m), x0, acc1);
  }
  acc.a0 = acc0;
  acc.a1 = acc1;
}

// acc += the entries of an 8-bit CSR row (segment offsets bounds[0..nseg]). Whole windows
// of 16 inside a segment gather from the segment's first column, as 16-bit CSR does from
// column 0; the rest of a segment shares one window with the start of the next segment(s),
// whose lanes move one segment up at every segment start inside the window. Measured at
// batch 1 against 16-bit CSR: a masked tail per segment instead (~2 gathers per 25 entries
// at 90%) ran 0.69-0.94x; every window crossing boundaries found by a running segment
// count (a chain through the offsets) 0.70-0.83x.
template <typename T>
inline void gather_fma_segments(const uint8_t* cols, const T* vals, const int64_t* bounds,
                                int64_t nseg, const float* x, GatherAcc& acc) {
  const int64_t end = bounds[nseg];
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i seg_cols = _mm512_set1_epi32(static_cast<int>(kCsrSegment));
  __m512 acc0 = acc.a0;
  __m512 acc1 = acc.a1;
  int64_t k = bounds[0];
  for (int64_t s = 0; s < nseg && k < end; ++s) {
    const float* xs = x + s * kCsrSegment;
    const int64_t e = bounds[s + 1];
    for (; k + 32 <= e; k += 32) {
      const __m512 x0 = _mm512_i32gather_ps(load_idx(cols + k), xs, 4);
      const __m512 x1 = _mm512_i32gather_ps(load_idx(cols + k + 16), xs, 4);
      acc0 = _mm512_fmadd_ps(load16(vals + k), x0, acc0);
      acc1 = _mm512_fmadd_ps(load16(vals + k + 16), x1, acc1);
    }
    if (k + 16 <= e) {
      acc0 = _mm512_fmadd_ps(load16(vals + k), _mm512_i32gather_ps(load_idx(cols + k), xs, 4),
                             acc0);
      k += 16;
    }
    if (k >= e) continue;
    const int64_t n = end - k < 16 ? end - k : 16;
    const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
    __m512i idx = load_idx_tail(cols + k, m);
    for (int64_t t = s + 1; t < nseg && bounds[t] < k + n; ++t) {
      const __m512i first = _mm512_set1_epi32(static_cast<int>(bounds[t] - k));
      idx = _mm512_mask_add_epi32(idx, _mm512_cmpge_epi32_mask(iota, first), idx, seg_cols);
    }
    acc1 = _mm512_fmadd_ps(load16(vals + k, m),
                           _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, xs, 4), acc1);
    k += n;
  }
  acc.a0 = acc0;
  acc.a1 = acc1;
}

#include "cpu/batched.h"
#include "cpu/csr_rows.h"

}  // namespace

void spmm_csr_avx512(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
                     int64_t row_end) {
  csr_dispatch(d, w, xp, row_begin, row_end);
}

}  // namespace cpu
}  // namespace sparseprune
