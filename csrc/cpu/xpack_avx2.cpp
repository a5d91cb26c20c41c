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
#include "cpu/xpack_tiles.h"

struct Tile8 {
  using reg = __m256;
  static constexpr int kLanes = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static reg zero() { return _mm256_setzero_ps(); }
  static void transpose(reg* r) { transpose8(r); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
};

}  // namespace

void pack_x_avx2(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                 int64_t col_end) {
  pack_x_tiles<Tile8>(d, plan, xt, col_begin, col_end);
}

}  // namespace cpu
}  // namespace sparseprune
