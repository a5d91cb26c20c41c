// BSR x dense, AVX-512: the batched block body of batched.h (every batch size, batch 1
// included: a chunk of one 16-lane vector), 16 lanes per vector.
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx512.h"
#include "cpu/batched.h"

}  // namespace

void spmm_bsr_avx512(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
                     int64_t br_end) {
  if (d.dtype == DType::f32) {
    bsr_batched<float>(d, w, xp, br_begin, br_end);
  } else {
    bsr_batched<uint16_t>(d, w, xp, br_begin, br_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
