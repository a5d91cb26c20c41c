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

#include "cpu/gather_avx2.h"

#include "cpu/batched.h"
#include "cpu/csr_rows.h"

}  // namespace

void spmm_csr_avx2(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
                   int64_t row_end) {
  csr_dispatch(d, w, xp, row_begin, row_end);
}

}  // namespace cpu
}  // namespace sparseprune
