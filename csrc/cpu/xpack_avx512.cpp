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
#include "cpu/xpack_tiles.h"

struct Tile16 {
  using reg = __m512;
  static constexpr int kLanes = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static reg zero() { return _mm512_setzero_ps(); }
  static void transpose(reg* r) { transpose16(r); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};

}  // namespace

void pack_x_avx512(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                   int64_t col_end) {
  pack_x_tiles<Tile16>(d, plan, xt, col_begin, col_end);
}

}  // namespace cpu
}  // namespace sparseprune
