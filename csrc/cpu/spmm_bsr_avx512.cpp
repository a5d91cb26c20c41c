// BSR x dense, AVX-512.
// Batch 1 with block width a multiple of 8: each block row is a run of short dot
// products, vectorized along the block width; blocks stream contiguously, x is loaded
// once per block. Otherwise: the batched block body of batched.h (padded chunk at
// batch 1).
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx512.h"
#include "cpu/load_avx512.h"
#include "cpu/batched.h"
#include "cpu/bsr_batch1.h"

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Load8 {
  using reg = __m256;
  static constexpr int kLanes = 8;
  template <typename T>
  static reg weights(const T* p) { return V256::load8(p); }
  static reg x(const float* p) { return _mm256_loadu_ps(p); }
  static reg x_tail(const float* p, int64_t n) {
    return _mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1u), p);
  }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(reg v) { return hsum(v); }
};
struct Load16 {
  using reg = __m512;
  static constexpr int kLanes = 16;
  template <typename T>
  static reg weights(const T* p) { return load16(p); }
  static reg x(const float* p) { return _mm512_loadu_ps(p); }
  static reg x_tail(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

template <typename T>
void bsr_avx512(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
                int64_t br_end) {
  if (xp.plan.full_width == 1) {
    if (w.bw % 16 == 0) {
      bsr_rowdot<Load16, T>(d, w, xp.xt, br_begin, br_end);
    } else if (w.bw % 8 == 0) {
      bsr_rowdot<Load8, T>(d, w, xp.xt, br_begin, br_end);
    } else {
      bsr_narrow<T>(d, w, xp.xt, br_begin, br_end);
    }
  } else {
    bsr_batched<T>(d, w, xp, br_begin, br_end);
  }
}

}  // namespace

void spmm_bsr_avx512(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
                     int64_t br_end) {
  if (d.dtype == DType::f32) {
    bsr_avx512<float>(d, w, xp, br_begin, br_end);
  } else {
    bsr_avx512<uint16_t>(d, w, xp, br_begin, br_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
