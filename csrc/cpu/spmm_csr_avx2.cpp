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
#include "cpu/batched.h"

#include "cpu/gather_avx2.h"

template <typename T, typename I>
void csr_avx2(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
              int64_t row_end) {
  const I* cols = static_cast<const I*>(w.col_indices);
  const T* vals = static_cast<const T*>(w.values);
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      float acc = row_dot_gather(cols, vals, w.row_offsets[r], w.row_offsets[r + 1], xp.xt);
      store_column<T>(d, &acc, 0, 1, r);
    }
    return;
  }
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, NV * V::kLanes> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t k0 = w.row_offsets[r];
      dot_batched<V, NV>(cols + k0, vals + k0, w.row_offsets[r + 1] - k0, xt, out.slot(r));
    }
  });
}

}  // namespace

void spmm_csr_avx2(const Dense& d, const Csr& w, const XPacked& xp, int64_t row_begin,
                   int64_t row_end) {
  const bool idx16 = w.index_type == IndexType::u16;
  if (d.dtype == DType::f32) {
    idx16 ? csr_avx2<float, uint16_t>(d, w, xp, row_begin, row_end)
          : csr_avx2<float, int32_t>(d, w, xp, row_begin, row_end);
  } else {
    idx16 ? csr_avx2<uint16_t, uint16_t>(d, w, xp, row_begin, row_end)
          : csr_avx2<uint16_t, int32_t>(d, w, xp, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
