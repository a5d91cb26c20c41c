// CSR x dense, AVX-512.
// Batch 1: one output row at a time, 16 nonzeros per step, activations fetched with a
// gather. Larger batches: the batched body (batched.h) over packed activations.
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

template <typename I, typename T>
inline float row_dot_gather(const I* cols, const T* vals, int64_t k0, int64_t k1,
                            const float* x) {
  __m512 acc0 = _mm512_setzero_ps();
  __m512 acc1 = _mm512_setzero_ps();
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
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
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
