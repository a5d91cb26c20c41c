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
#include "cpu/bsr_narrow.h"

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
inline __m256 fma_(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
inline __m512 fma_(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }

struct Load8 {
  using reg = __m256;
  static constexpr int kLanes = 8;
  template <typename T>
  static reg weights(const T* p) { return load8(p); }
  static reg x(const float* p) { return _mm256_loadu_ps(p); }
  static reg x_tail(const float* p, int64_t n) {
    return _mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1u), p);
  }
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
};

// Rows [i0, i0 + G) of block row br at batch 1. Activation lanes past in_features load
// as zero, so the padding of a ragged last block column contributes nothing.
template <class L, int G, typename T>
inline void rowdot_rows(const Dense& d, const Bsr& w, const float* x, int64_t br,
                        int64_t i0, float* out) {
  using reg = typename L::reg;
  reg acc[G];
  for (int i = 0; i < G; ++i) acc[i] = reg{};
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
    const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
    const T* blk = blocks + (k * w.bh + i0) * w.bw;
    for (int64_t j = 0; j < w.bw; j += L::kLanes) {
      const int64_t left = d.in_features - c0 - j;
      if (left <= 0) break;
      const reg xv = left >= L::kLanes ? L::x(x + c0 + j) : L::x_tail(x + c0 + j, left);
      for (int i = 0; i < G; ++i) {
        acc[i] = fma_(L::weights(blk + i * w.bw + j), xv, acc[i]);
      }
    }
  }
  for (int i = 0; i < G; ++i) out[i] = hsum(acc[i]);
}

template <class L, typename T>
void bsr_rowdot(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
                int64_t br_end) {
  float out[8];
  for (int64_t br = br_begin; br < br_end; ++br) {
    const int64_t r0 = br * w.bh;
    const int64_t valid = d.out_features - r0 < w.bh ? d.out_features - r0 : w.bh;
    int64_t i0 = 0;
    for (; i0 + 8 <= valid; i0 += 8) {
      rowdot_rows<L, 8, T>(d, w, x, br, i0, out);
      for (int i = 0; i < 8; ++i) store_column<T>(d, out + i, 0, 1, r0 + i0 + i);
    }
    for (; i0 < valid; ++i0) {
      rowdot_rows<L, 1, T>(d, w, x, br, i0, out);
      store_column<T>(d, out, 0, 1, r0 + i0);
    }
  }
}

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
