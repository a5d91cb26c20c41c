// N:M x dense, AVX2: a row's slot columns are decoded (scalar) into a small buffer, then
// consumed by the batch-1 gather dot product or by the batched body (batched.h).
#include <immintrin.h>

#include <algorithm>
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

// ---- Row tiles: vectorized over 8 output rows (fp32, m divides 8) ----
// The AVX2 counterpart of the AVX-512 row tiles (spmm_nm_avx512.cpp explains the idea):
// windows of 8 columns, vpermps over 8 rows, 6 batch rows per register block (2 * 6 + 3 of
// the 16 registers). The slot-major copy is made with scalar loads and stores.

constexpr int64_t kTileBlockBytes = 32 << 10, kBatchBlockBytes = 256 << 10;

// tv[s][i], ti[s][i] for slots [s_begin, s_end) of rows [r0, r0 + rows), rows <= 8; padding
// (rows past `rows`, slots past the row's end) is value 0 at column 7, a lane of the last
// window past in_features whenever such slots exist (x there is a masked 0).
void build_tile8(const NM& w, int64_t in, int64_t r0, int64_t rows, int64_t s_begin,
                 int64_t s_end, float* tv, int32_t* ti) {
  const int bits = nm_index_bits(w.m);
  const int64_t slots = nm_slots_per_row(in, w.n, w.m);
  const int64_t row_bytes = nm_meta_row_bytes(in, w.n, w.m);
  const float* vals = static_cast<const float*>(w.values);
  for (int64_t i = 0; i < 8; ++i) {
    const uint8_t* meta = w.metadata + (r0 + i) * row_bytes;
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t o = (s - s_begin) * 8 + i;
      if (i < rows && s < slots) {
        tv[o] = vals[(r0 + i) * slots + s];
        ti[o] = static_cast<int32_t>((s / w.n * w.m + nm_slot_index(meta, row_bytes, s, bits)) & 7);
      } else {
        tv[o] = 0.f;
        ti[o] = 7;
      }
    }
  }
}

inline __m256i lanes8(int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int32_t n = static_cast<int32_t>(left < 0 ? 0 : (left > 8 ? 8 : left));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
}

template <int BT>
inline void tile_batch8(const float* x, int64_t in, int64_t windows, int64_t S, const float* tv,
                        const int32_t* ti, __m256 init, bool accumulate, float* y, int64_t ldy,
                        __m256i ymask, __m256i last_window) {
  __m256 acc[BT];
  for (int b = 0; b < BT; ++b) acc[b] = accumulate ? _mm256_maskload_ps(y + b * ldy, ymask) : init;
  for (int64_t wi = 0; wi < windows; ++wi) {
    __m256 xv[BT];
    if (wi + 1 < windows) {
      for (int b = 0; b < BT; ++b) xv[b] = _mm256_loadu_ps(x + b * in + wi * 8);
    } else {
      for (int b = 0; b < BT; ++b) xv[b] = _mm256_maskload_ps(x + b * in + wi * 8, last_window);
    }
    for (int64_t j = 0; j < S; ++j) {
      const __m256 v = _mm256_loadu_ps(tv + (wi * S + j) * 8);
      const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ti + (wi * S + j) * 8));
      for (int b = 0; b < BT; ++b)
        acc[b] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(xv[b], id), v, acc[b]);
    }
  }
  for (int b = 0; b < BT; ++b) _mm256_maskstore_ps(y + b * ldy, ymask, acc[b]);
}

}  // namespace

void spmm_nm_tiles_avx2(const Dense& d, const NM& w, int64_t row_begin, int64_t row_end) {
  if (d.batch == 0 || row_begin >= row_end) return;
  const int64_t in = d.in_features;
  const int64_t S = 8 / w.m * w.n;  // slots per 8-column window
  const int64_t windows = (in + 7) / 8;
  const int64_t block_windows =
      std::min(windows, std::max<int64_t>(1, kTileBlockBytes / (S * 8 * 8)));
  const int64_t max_block = std::max<int64_t>(6, kBatchBlockBytes / (block_windows * 32));
  const int64_t batch_blocks = (d.batch + max_block - 1) / max_block;
  const int64_t batch_block = (d.batch + batch_blocks - 1) / batch_blocks;
  Scratch<float> tv(block_windows * S * 8);
  Scratch<int32_t> ti(block_windows * S * 8);
  const float* x = static_cast<const float*>(d.x);
  const float* bias = static_cast<const float*>(d.bias);
  float* y = static_cast<float*>(d.y);
  // One tile at a time (its copy in L1) over all batch blocks, column block by column block.
  for (int64_t r0 = row_begin; r0 < row_end; r0 += 8) {
    const int64_t rows = std::min<int64_t>(8, row_end - r0);
    const __m256i ymask = lanes8(rows);
    const __m256 init = bias ? _mm256_maskload_ps(bias + r0, ymask) : _mm256_setzero_ps();
    for (int64_t w0 = 0; w0 < windows; w0 += block_windows) {
      const int64_t wn = std::min(block_windows, windows - w0);
      const __m256i last = w0 + wn < windows ? lanes8(8) : lanes8(in - (windows - 1) * 8);
      build_tile8(w, in, r0, rows, w0 * S, (w0 + wn) * S, tv.data(), ti.data());
      for (int64_t b0 = 0; b0 < d.batch; b0 += batch_block) {
        const int64_t b1 = std::min(d.batch, b0 + batch_block);
        int64_t b = b0;
        auto run = [&](auto bt) {
          constexpr int BT = decltype(bt)::value;
          for (; b + BT <= b1; b += BT)
            tile_batch8<BT>(x + b * in + w0 * 8, in, wn, S, tv.data(), ti.data(), init, w0 > 0,
                            y + b * d.out_features + r0, d.out_features, ymask, last);
        };
        run(std::integral_constant<int, 6>{});
        run(std::integral_constant<int, 3>{});
        run(std::integral_constant<int, 1>{});
      }
    }
  }
}

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
