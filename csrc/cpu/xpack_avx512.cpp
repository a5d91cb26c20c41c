// pack_x with AVX-512: x [rows][in] -> xt [in][width] by 16 x 16 register transposes.
// The scalar packer moves one float per load and store (about a cycle per element); at
// batch >= 32 that was a fifth to a third of a 90%-sparse product's time on MiniLM-sized
// layers. Here 16 row loads, 64 in-register shuffles and 16 stores move 256 elements.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/transpose_avx512.h"

inline __m512 load_row(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_row(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T>
void pack_chunk(const T* x, int64_t in, int64_t rows, int64_t width, float* xt,
                int64_t col_begin, int64_t col_end) {
  const int64_t vec_end = col_begin + (col_end - col_begin) / 16 * 16;
  for (int64_t b0 = 0; b0 < width; b0 += 16) {
    const int64_t real = std::min<int64_t>(16, std::max<int64_t>(0, rows - b0));
    for (int64_t c0 = col_begin; c0 < vec_end; c0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < real ? load_row(x + (b0 + i) * in + c0) : _mm512_setzero_ps();
      transpose16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(xt + (c0 + j) * width + b0, r[j]);
    }
    for (int64_t c = vec_end; c < col_end; ++c) {
      for (int64_t i = 0; i < 16; ++i)
        xt[c * width + b0 + i] = i < real ? load_f32(x[(b0 + i) * in + c]) : 0.f;
    }
  }
}

}  // namespace

void pack_x_avx512(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                   int64_t col_end) {
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    if (plan.width(c) % 16 != 0) {  // narrow tails (8 or fewer lanes): the scalar packer
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
