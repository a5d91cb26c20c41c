// BSR x dense, AVX2.
// Batch 1 with block width a multiple of 8: each block row is a run of short dot products,
// vectorized along the block width; blocks stream contiguously, x is loaded once per block
// and 8 rows (before, batch 1 ran the batched body on a chunk padded to 8 lanes, 1 of them
// used). Narrower blocks at batch 1: bsr_narrow.h. Larger batches: the batched block body
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
#include "cpu/bsr_narrow.h"

// x[p .. p + n), n < 8, zeros after.
inline __m256 x_tail(const float* p, int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)),
                                                  lane));
}

// Rows [i0, i0 + G) of block row br at batch 1. Activation lanes past in_features load as
// zero, so the padding of a ragged last block column contributes nothing.
template <int G, typename T>
inline void rowdot_rows(const Dense& d, const Bsr& w, const float* x, int64_t br, int64_t i0,
                        float* out) {
  __m256 acc[G];
  for (int i = 0; i < G; ++i) acc[i] = _mm256_setzero_ps();
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
    const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
    const T* blk = blocks + (k * w.bh + i0) * w.bw;
    for (int64_t j = 0; j < w.bw; j += 8) {
      const int64_t left = d.in_features - c0 - j;
      if (left <= 0) break;
      const __m256 xv = left >= 8 ? _mm256_loadu_ps(x + c0 + j) : x_tail(x + c0 + j, left);
      for (int i = 0; i < G; ++i)
        acc[i] = _mm256_fmadd_ps(load_vals(blk + i * w.bw + j), xv, acc[i]);
    }
  }
  for (int i = 0; i < G; ++i) out[i] = hsum(acc[i]);
}

template <typename T>
void bsr_rowdot(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
                int64_t br_end) {
  float out[8];
  for (int64_t br = br_begin; br < br_end; ++br) {
    const int64_t r0 = br * w.bh;
    const int64_t valid = d.out_features - r0 < w.bh ? d.out_features - r0 : w.bh;
    int64_t i0 = 0;
    for (; i0 + 8 <= valid; i0 += 8) {
      rowdot_rows<8, T>(d, w, x, br, i0, out);
      for (int i = 0; i < 8; ++i) store_column<T>(d, out + i, 0, 1, r0 + i0 + i);
    }
    for (; i0 < valid; ++i0) {
      rowdot_rows<1, T>(d, w, x, br, i0, out);
      store_column<T>(d, out, 0, 1, r0 + i0);
    }
  }
}

template <typename T>
void bsr_avx2(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
              int64_t br_end) {
  if (xp.plan.full_width == 1) {
    if (w.bw % 8 == 0) {
      bsr_rowdot<T>(d, w, xp.xt, br_begin, br_end);
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
