// N:M x dense, AVX2: a row's slot columns are decoded (scalar) into a small buffer, then
// consumed by the batch-1 gather dot product or by the batched body (batched.h).
#include <immintrin.h>

#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx2.h"
#include "cpu/batched.h"
#include "cpu/gather_avx2.h"

void decode_row(const NM& w, const uint8_t* row_meta, int64_t slots, int64_t row_bytes,
                int bits, int32_t* cols) {
  for (int64_t s = 0, g = 0, in_group = 0; s < slots; ++s) {
    cols[s] = static_cast<int32_t>(g * w.m + nm_slot_index(row_meta, row_bytes, s, bits));
    if (++in_group == w.n) {
      in_group = 0;
      ++g;
    }
  }
}

template <typename T>
void nm_avx2(const Dense& d, const NM& w, const XPacked& xp, int64_t row_begin,
             int64_t row_end) {
  const int bits = nm_index_bits(w.m);
  const int64_t slots = nm_slots_per_row(d.in_features, w.n, w.m);
  const int64_t row_bytes = nm_meta_row_bytes(d.in_features, w.n, w.m);
  const T* vals = static_cast<const T*>(w.values);
  Scratch<int32_t> cols(slots);
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      decode_row(w, w.metadata + r * row_bytes, slots, row_bytes, bits, cols.data());
      float acc = row_dot_gather(cols.data(), vals + r * slots, 0, slots, xp.xt);
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
      decode_row(w, w.metadata + r * row_bytes, slots, row_bytes, bits, cols.data());
      dot_batched<V, NV>(cols.data(), vals + r * slots, slots, xt, out.slot(r));
    }
  });
}

}  // namespace

void spmm_nm_avx2(const Dense& d, const NM& w, const XPacked& xp, int64_t row_begin,
                  int64_t row_end) {
  if (d.dtype == DType::f32) {
    nm_avx2<float>(d, w, xp, row_begin, row_end);
  } else {
    nm_avx2<uint16_t>(d, w, xp, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
