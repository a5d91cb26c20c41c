// pack_x with AVX2: x [rows][in] -> xt [in][width] by 8 x 8 register transposes.
// The scalar packer moves one float per load and store; on an AVX2-only Zen 3 it was 11% of
// a 16x16-block product's profile at batch 128 (768x3072, 80%), a fifth of the kernel's own
// time. Here 8 row loads, 24 in-register shuffles and 8 stores move 64 elements.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/transpose_avx2.h"

inline __m256 load_row(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_row(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename T>
void pack_chunk(const T* x, int64_t in, int64_t rows, int64_t width, float* xt,
                int64_t col_begin, int64_t col_end) {
  const int64_t vec_end = col_begin + (col_end - col_begin) / 8 * 8;
  for (int64_t b0 = 0; b0 < width; b0 += 8) {
    const int64_t real = std::min<int64_t>(8, std::max<int64_t>(0, rows - b0));
    for (int64_t c0 = col_begin; c0 < vec_end; c0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = i < real ? load_row(x + (b0 + i) * in + c0) : _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(xt + (c0 + j) * width + b0, r[j]);
    }
    for (int64_t c = vec_end; c < col_end; ++c) {
      for (int64_t i = 0; i < 8; ++i)
        xt[c * width + b0 + i] = i < real ? load_f32(x[(b0 + i) * in + c]) : 0.f;
    }
  }
}

}  // namespace

void pack_x_avx2(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                 int64_t col_end) {
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    if (plan.width(c) % 8 != 0) {  // plain x at batch 1 (width 1): the scalar packer
      pack_x_chunk(d, plan, c, xt, col_begin, col_end);
      continue;
    }
    with_chunk(d, plan, c, xt, [&](const auto* x, int64_t rows, int64_t width, float* dst) {
      pack_chunk(x, d.in_features, rows, width, dst, col_begin, col_end);
    });
  }
}

}  // namespace cpu
}  // namespace sparseprune
