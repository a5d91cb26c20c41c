// CSR x dense, AVX2.
// Batch 1: one output row at a time, 8 nonzeros per step, activations fetched with a
// gather, a scalar loop for the rest. Larger batches: the batched body (batched.h).
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx2.h"
#include "cpu/batched.h"

template <typename I>
inline __m256i load_idx(const I* p);
template <>
inline __m256i load_idx<uint16_t>(const uint16_t* p) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
inline __m256i load_idx<int32_t>(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

template <typename T>
inline __m256 load_vals(const T* p);
template <>
inline __m256 load_vals<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 load_vals<uint16_t>(const uint16_t* p) {
  const __m256i wide =
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <typename I, typename T>
inline float row_dot_gather(const I* cols, const T* vals, int64_t k0, int64_t k1,
                            const float* x) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    const __m256 x0 = _mm256_i32gather_ps(x, load_idx(cols + k), 4);
    const __m256 x1 = _mm256_i32gather_ps(x, load_idx(cols + k + 8), 4);
    acc0 = _mm256_fmadd_ps(load_vals(vals + k), x0, acc0);
    acc1 = _mm256_fmadd_ps(load_vals(vals + k + 8), x1, acc1);
  }
  for (; k + 8 <= k1; k += 8) {
    const __m256 x0 = _mm256_i32gather_ps(x, load_idx(cols + k), 4);
    acc0 = _mm256_fmadd_ps(load_vals(vals + k), x0, acc0);
  }
  float acc = hsum(_mm256_add_ps(acc0, acc1));
  for (; k < k1; ++k) acc += load_f32(vals[k]) * x[cols[k]];
  return acc;
}

template <typename T, typename I>
void csr_avx2(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
              int64_t row_end) {
  const I* cols = static_cast<const I*>(w.col_indices);
  const T* vals = static_cast<const T*>(w.values);
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      float acc = row_dot_gather(cols, vals, w.row_offsets[r], w.row_offsets[r + 1], xp.xt);
      store_column<T>(d, &acc, 0, 1, r);
    }
    return;
  }
  for_each_chunk(xp.plan, [&](auto nv, int64_t c) {
    constexpr int NV = decltype(nv)::value;
    alignas(32) float acc[NV * Vec::kLanes];
    const float* xt = xp.xt + xp.plan.offset(c);
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t k0 = w.row_offsets[r];
      dot_batched<NV>(cols + k0, vals + k0, w.row_offsets[r + 1] - k0, xt, acc);
      store_column<T>(d, acc, xp.plan.first_row(c), xp.plan.rows(c), r);
    }
  });
}

}  // namespace

void spmm_csr_avx2(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
                   int64_t row_end) {
  const bool idx16 = w.index_type == IndexType::u16;
  if (d.dtype == DType::f32) {
    idx16 ? csr_avx2<float, uint16_t>(d, w, xp, row_begin, row_end)
          : csr_avx2<float, int32_t>(d, w, xp, row_begin, row_end);
  } else {
    idx16 ? csr_avx2<uint16_t, uint16_t>(d, w, xp, row_begin, row_end)
          : csr_avx2<uint16_t, int32_t>(d, w, xp, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
