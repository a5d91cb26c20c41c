// BSR x dense, AVX2.
// Batch 1 with block width a multiple of 8: each block row is a run of short dot products,
// vectorized along the block width; blocks stream contiguously, x is loaded once per block
// and pass of up to 32 rows (before, batch 1 ran the batched body on a chunk padded to 8
// lanes, 1 of them used). Both batch-1 bodies: bsr_batch1.h. Larger batches: the batched block body
// of batched.h.
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx2.h"
#include "cpu/batched.h"
#include "cpu/gather_avx2.h"
#include "cpu/bsr_batch1.h"

// The loads of the shared batch-1 row dot products (bsr_batch1.h).
struct Load8 {
  using reg = __m256;
  static constexpr int kLanes = 8;
  template <typename T>
  static reg weights(const T* p) { return V256::load8(p); }
  static reg x(const float* p) { return _mm256_loadu_ps(p); }
  static reg x_tail(const float* p, int64_t n) {  // n < 8 lanes, zeros after
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(
        p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), lane));
  }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(reg v) { return hsum(v); }
};

template <typename T>
void bsr_avx2(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
              int64_t br_end) {
  if (xp.plan.full_width == 1) {
    if (w.bw % 8 == 0) {
      bsr_rowdot<Load8, T>(d, w, xp.xt, br_begin, br_end);
    } else {
      bsr_narrow<T>(d, w, xp.xt, br_begin, br_end);
    }
  } else {
    bsr_batched<T>(d, w, xp, br_begin, br_end);
  }
}

}  // namespace

void spmm_bsr_avx2(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
                   int64_t br_end) {
  if (d.dtype == DType::f32) {
    bsr_avx2<float>(d, w, xp, br_begin, br_end);
  } else {
    bsr_avx2<uint16_t>(d, w, xp, br_begin, br_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
