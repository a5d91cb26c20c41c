// N:M x dense, AVX2. Where n divides 8 and m <= 16 (2:4, 1:4, 4:8, 2:8, 1:2, ...), the
// bit-packed metadata of 8 slots is one 32-bit word, decoded in a register (broadcast,
// variable shifts, mask, plus each slot's group column); other n:m decode slot by slot.
// Batch 1: where 8 slots span 16 or 32 columns, contiguous loads of x and permutes; else
// the decoded columns drive a gather. Larger batches: a row's columns are decoded into a
// small buffer that the batched body (batched.h) consumes, column tile by column tile
// once a row's activations outgrow L1.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
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

// Decodes 8 slots per step in a register (n divides 8, index bits <= 4): slot s0 + j of a
// step starting at slot s0 (a multiple of 8) lies in group s0 / n + j / n, and its index
// is bits [j * bits, (j + 1) * bits) of the 32-bit word at byte s0 * bits / 8.
struct Decoder8 {
  __m256i shift;       // j * bits
  __m256i field;       // (1 << bits) - 1
  __m256i group_cols;  // m * (j / n)
  int64_t cols_per_step, bits, row_bytes, slots;
  bool usable;
  bool quads;  // batch 1 fetches x with in-lane permutes (quads16 / quads32)
};

Decoder8 make_decoder8(const NM& w, int64_t in_features) {
  Decoder8 dc{};
  dc.bits = nm_index_bits(w.m);
  dc.row_bytes = nm_meta_row_bytes(in_features, w.n, w.m);
  dc.slots = nm_slots_per_row(in_features, w.n, w.m);
  dc.usable = 8 % w.n == 0 && dc.bits <= 4;
  if (!dc.usable) return dc;
  alignas(32) int32_t shift[8], cols[8];
  for (int j = 0; j < 8; ++j) {
    shift[j] = j * static_cast<int32_t>(dc.bits);
    cols[j] = static_cast<int32_t>(j / w.n * w.m);
  }
  dc.shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(shift));
  dc.field = _mm256_set1_epi32((1 << dc.bits) - 1);
  dc.group_cols = _mm256_load_si256(reinterpret_cast<const __m256i*>(cols));
  dc.cols_per_step = 8 / w.n * w.m;
  dc.quads = (w.n == 2 && w.m == 4) || (w.n == 1 && w.m == 2) || (w.n == 1 && w.m == 4);
  return dc;
}

// Input columns of slots [s0, s0 + 8) (s0 = step * 8); lanes past the row's last slot hold
// columns of its padding. Never reads past the row's metadata.
inline __m256i decode8(const Decoder8& dc, const uint8_t* row_meta, int64_t step) {
  const int64_t byte0 = step * dc.bits;  // 8 slots x bits / 8
  uint32_t word = 0;
  if (dc.row_bytes - byte0 >= 4) {
    std::memcpy(&word, row_meta + byte0, 4);
  } else {
    for (int64_t b = byte0; b < dc.row_bytes; ++b)
      word |= static_cast<uint32_t>(row_meta[b]) << (8 * (b - byte0));
  }
  const __m256i idx =
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(word)), dc.shift),
                       dc.field);
  const __m256i base = _mm256_set1_epi32(static_cast<int32_t>(step * dc.cols_per_step));
  return _mm256_add_epi32(_mm256_add_epi32(base, dc.group_cols), idx);
}

// The columns of a row's slots [8 * step_begin, 8 * step_end) into cols[0 ..).
void decode_steps8(const Decoder8& dc, const uint8_t* row_meta, int64_t step_begin,
                   int64_t step_end, int32_t* cols) {
  for (int64_t step = step_begin; step < step_end; ++step)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cols + (step - step_begin) * 8),
                        decode8(dc, row_meta, step));
}

// Mask of the first `left` (clamped to 0..8) lanes.
inline __m256i lanes8(int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int32_t n = static_cast<int32_t>(left < 0 ? 0 : (left > 8 ? 8 : left));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
}

// x[c0 + rel[j]] for rel in [0, C), C = 16 or 32, from C / 8 contiguous loads of
// x[c0 .. c0 + C): a permute of each and blends on bits 3 (and 4) of rel. Columns at or
// past `in` read as 0.
template <int C>
inline __m256 window(const float* x, int64_t c0, int64_t in, __m256i rel) {
  constexpr int H = C / 8;
  __m256 part[H];
  if (c0 + C <= in) {
    for (int h = 0; h < H; ++h) part[h] = _mm256_loadu_ps(x + c0 + 8 * h);
  } else {
    for (int h = 0; h < H; ++h)
      part[h] = _mm256_maskload_ps(x + c0 + 8 * h, lanes8(in - c0 - 8 * h));
  }
  for (int h = 0; h < H; ++h) part[h] = _mm256_permutevar8x32_ps(part[h], rel);
  const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(rel, 28));
  const __m256 lo = _mm256_blendv_ps(part[0], part[1], bit3);
  if constexpr (C == 16) {
    return lo;
  } else {
    const __m256 hi = _mm256_blendv_ps(part[2], part[3], bit3);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(rel, 27)));
  }
}

// x[c0 + rel[j]] for 8 slots over 16 columns whose slot j lies in the 4-column quad j / 2
// (2:4, 1:2): in-lane permutes of [quad 0 | quad 2] and [quad 1 | quad 3], which only read
// the low two bits of rel, and one immediate blend. Cheaper than window<16>'s lane-crossing
// permutes and variable blend (Zen 3: vpermps + FMA 0.73-0.88 ns, vpermilps + FMA 0.36).
inline __m256 quads16(const float* x, __m256i rel) {
  const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x)),
                                        _mm_loadu_ps(x + 8), 1);
  const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x + 4)),
                                        _mm_loadu_ps(x + 12), 1);
  return _mm256_blend_ps(_mm256_permutevar_ps(a, rel), _mm256_permutevar_ps(b, rel), 0xCC);
}

// The same for 8 slots over 32 columns, slot j in quad j (1:4): [quad k | quad k + 4] for
// k = 0..3, lane k of each half taken from the k-th.
inline __m256 quads32(const float* x, __m256i rel) {
  auto pair = [&](int k) {
    const __m256 q = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x + 4 * k)),
                                          _mm_loadu_ps(x + 16 + 4 * k), 1);
    return _mm256_permutevar_ps(q, rel);
  };
  const __m256 p01 = _mm256_blend_ps(pair(0), pair(1), 0x22);
  const __m256 p23 = _mm256_blend_ps(pair(2), pair(3), 0x88);
  return _mm256_blend_ps(p01, p23, 0xCC);
}

// Bytes ahead of the current values that the batch-1 loop asks for: the hardware
// prefetcher alone streamed a 2:4 row from DRAM at ~9 GB/s per thread against ~12 for a
// dense row (Zen 3, one thread); 1-2 KB ahead brought it to the dense row's rate.
constexpr int64_t kValuesAhead = 1024;

// x[st * C + rel[j]] of one batch row for a step's 8 slots over C columns: in-lane quads
// where the pattern allows (InLane: 2:4, 1:2, 1:4), lane-crossing windows otherwise.
template <int C, bool InLane>
inline __m256 step_x(const float* x, int64_t st, int64_t in, __m256i rel) {
  if constexpr (InLane && C == 16) {
    return quads16(x + st * C, rel);
  } else if constexpr (InLane) {
    return quads32(x + st * C, rel);
  } else {
    return window<C>(x, st * C, in, rel);
  }
}

// Steps from 0 whose C columns lie inside x and whose 32-bit metadata word starts >= 4
// bytes before the row end (no checks needed), at most `full`.
inline int64_t unchecked_steps(const Decoder8& dc, int64_t full, int64_t in, int64_t C) {
  return std::min({full, in / C, dc.row_bytes >= 4 ? (dc.row_bytes - 4) / dc.bits + 1 : 0});
}

// Calls fn(std::integral_constant<int, C>, std::bool_constant<in-lane>) for a pattern whose
// 8-slot steps span C = 16 or 32 columns; nothing for the others (gathered).
template <typename Fn>
inline void with_step_window(const Decoder8& dc, const Fn& fn) {
  auto by_quads = [&](auto cols) {
    if (dc.quads) {
      fn(cols, std::true_type{});
    } else {
      fn(cols, std::false_type{});
    }
  };
  if (dc.cols_per_step == 16) by_quads(std::integral_constant<int, 16>{});
  if (dc.cols_per_step == 32) by_quads(std::integral_constant<int, 32>{});
}

// Batch 1: sum over the row's slots of vals[s] * x[col(s)], decoding 8 slots per step and
// fetching their activations with contiguous loads and permutes where 8 slots span 16 or
// 32 columns (2:4, 4:8, 1:4, 2:8, ...), else with a gather; two chains; the last partial
// step scalar. The windowed steps run in two loops: an unrolled one over the steps whose
// window and 32-bit metadata word lie inside the row, then the checked rest.
template <typename T>
float row_dot_decode8(const Decoder8& dc, const NM& w, const uint8_t* row_meta, const T* vals,
                      const float* x, int64_t in) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const int64_t full = dc.slots / 8;
  int64_t step = 0;
  with_step_window(dc, [&](auto cols, auto in_lane) {
    constexpr int C = decltype(cols)::value;
    constexpr bool kInLane = decltype(in_lane)::value;
    const int64_t safe = unchecked_steps(dc, full, in, C);
    const char* ahead = reinterpret_cast<const char*>(vals) + kValuesAhead;
    for (; step + 2 <= safe; step += 2) {
      _mm_prefetch(ahead + step * 8 * static_cast<int64_t>(sizeof(T)), _MM_HINT_T0);
      const __m256i c0 = _mm256_sub_epi32(decode8(dc, row_meta, step),
                                          _mm256_set1_epi32(static_cast<int32_t>(step * C)));
      const __m256i c1 = _mm256_sub_epi32(decode8(dc, row_meta, step + 1),
                                          _mm256_set1_epi32(static_cast<int32_t>(step * C + C)));
      acc0 = _mm256_fmadd_ps(V256::load8(vals + step * 8), step_x<C, kInLane>(x, step, in, c0),
                             acc0);
      acc1 = _mm256_fmadd_ps(V256::load8(vals + step * 8 + 8),
                             step_x<C, kInLane>(x, step + 1, in, c1), acc1);
    }
    for (; step < full; ++step) {
      const __m256i rel = _mm256_sub_epi32(decode8(dc, row_meta, step),
                                           _mm256_set1_epi32(static_cast<int32_t>(step * C)));
      const __m256 xv = window<C>(x, step * C, in, rel);
      if (step & 1) {
        acc1 = _mm256_fmadd_ps(V256::load8(vals + step * 8), xv, acc1);
      } else {
        acc0 = _mm256_fmadd_ps(V256::load8(vals + step * 8), xv, acc0);
      }
    }
  });
  for (; step + 2 <= full; step += 2) {
    const __m256 x0 = _mm256_i32gather_ps(x, decode8(dc, row_meta, step), 4);
    const __m256 x1 = _mm256_i32gather_ps(x, decode8(dc, row_meta, step + 1), 4);
    acc0 = _mm256_fmadd_ps(V256::load8(vals + step * 8), x0, acc0);
    acc1 = _mm256_fmadd_ps(V256::load8(vals + step * 8 + 8), x1, acc1);
  }
  if (step < full) {
    const __m256 x0 = _mm256_i32gather_ps(x, decode8(dc, row_meta, step), 4);
    acc0 = _mm256_fmadd_ps(V256::load8(vals + step * 8), x0, acc0);
  }
  float rest = 0.f;
  for (int64_t s = full * 8; s < dc.slots; ++s)
    rest += load_f32(vals[s]) *
            x[s / w.n * w.m + nm_slot_index(row_meta, dc.row_bytes, s, static_cast<int>(dc.bits))];
  return hsum(_mm256_add_ps(acc0, acc1)) + rest;
}

// Batch 2..kRowBatch (x read as it is; bf16 x converted to fp32 first): row_dot_decode8 for
// BT batch rows at once, each step decoded once and its values loaded once for all of them.
// The batched body below vectorizes over 8 batch rows, most of them empty at this size.
template <int BT, typename T>
void rows_dot_decode8(const Decoder8& dc, const NM& w, const uint8_t* row_meta, const T* vals,
                      const float* x, int64_t in, float* out) {
  __m256 acc[BT];
  for (int b = 0; b < BT; ++b) acc[b] = _mm256_setzero_ps();
  const int64_t full = dc.slots / 8;
  int64_t step = 0;
  with_step_window(dc, [&](auto cols, auto in_lane) {
    constexpr int C = decltype(cols)::value;
    constexpr bool kInLane = decltype(in_lane)::value;
    const int64_t safe = unchecked_steps(dc, full, in, C);
    const char* ahead = reinterpret_cast<const char*>(vals) + kValuesAhead;
    for (; step < safe; ++step) {
      _mm_prefetch(ahead + step * 8 * static_cast<int64_t>(sizeof(T)), _MM_HINT_T0);
      const __m256i rel = _mm256_sub_epi32(decode8(dc, row_meta, step),
                                           _mm256_set1_epi32(static_cast<int32_t>(step * C)));
      const __m256 v = V256::load8(vals + step * 8);
      for (int b = 0; b < BT; ++b)
        acc[b] = _mm256_fmadd_ps(v, step_x<C, kInLane>(x + b * in, step, in, rel), acc[b]);
    }
    for (; step < full; ++step) {
      const __m256i rel = _mm256_sub_epi32(decode8(dc, row_meta, step),
                                           _mm256_set1_epi32(static_cast<int32_t>(step * C)));
      const __m256 v = V256::load8(vals + step * 8);
      for (int b = 0; b < BT; ++b)
        acc[b] = _mm256_fmadd_ps(v, window<C>(x + b * in, step * C, in, rel), acc[b]);
    }
  });
  for (; step < full; ++step) {
    const __m256i c = decode8(dc, row_meta, step);
    const __m256 v = V256::load8(vals + step * 8);
    for (int b = 0; b < BT; ++b)
      acc[b] = _mm256_fmadd_ps(v, _mm256_i32gather_ps(x + b * in, c, 4), acc[b]);
  }
  for (int b = 0; b < BT; ++b) {
    float rest = 0.f;
    for (int64_t s = full * 8; s < dc.slots; ++s)
      rest += load_f32(vals[s]) * x[b * in + s / w.n * w.m +
                                    nm_slot_index(row_meta, dc.row_bytes, s,
                                                  static_cast<int>(dc.bits))];
    out[b] = hsum(acc[b]) + rest;
  }
}

// Largest batch rows_dot_decode8 takes. Zen 3, 2 threads, same-process A/B against the
// batched body (5 issue-4 shapes, 2:4 and 1:4, 13-15 rounds, A/A spread up to 1.27x): fp32
// batch 2-4 1.3-2.6x faster (about even for 1:4 on 1536x384 at 3-4), batch 5-6 0.62-1.54x;
// bf16 batch 2-4 1.15-2.76x for 2:4, 1.2-2.4x for 1:4 but 0.78-0.99x for 1:4 at 3-4 on the
// two 384/768-input shapes.
constexpr int64_t kRowBatch = 4;

// Batch > 1 when a row's activations outgrow L1 (as csr_segment_major in csr_rows.h):
// blocks of ChunkWriter::kRows rows, column tile by column tile (8-slot steps spanning
// <= 16 KB of the chunk), every row of the block adding the tile's slots to its partial sums
// in the writer's buffer. `cols` holds one tile's decoded columns.
template <class V, int NV, typename T, typename Writer>
void nm_column_tiles(const Decoder8& dc, const NM& w, const T* vals, int64_t row_begin,
                     int64_t row_end, const float* xt, int32_t* cols, Writer& out) {
  constexpr int W = NV * V::kLanes;
  const int64_t steps = (dc.slots + 7) / 8;
  const int64_t tile_steps = std::max<int64_t>(
      1, (16 << 10) / (W * static_cast<int64_t>(sizeof(float))) / dc.cols_per_step);
  zeroed_row_blocks<W>(out, row_begin, row_end, [&](int64_t r0, int64_t rows, float** acc) {
    for (int64_t t0 = 0; t0 < steps; t0 += tile_steps) {
      const int64_t t1 = std::min(steps, t0 + tile_steps);
      const int64_t s1 = std::min(dc.slots, t1 * 8);
      const int64_t next_slots = std::min(dc.slots, (t1 + tile_steps) * 8) - t1 * 8;
      for (int64_t i = 0; i < rows; ++i) {
        if (next_slots > 0) {
          prefetch_bytes(vals + (r0 + i) * dc.slots + t1 * 8, next_slots * sizeof(T));
          prefetch_bytes(w.metadata + (r0 + i) * dc.row_bytes + t1 * dc.bits,
                         std::min(dc.row_bytes - t1 * dc.bits, tile_steps * dc.bits));
        }
        decode_steps8(dc, w.metadata + (r0 + i) * dc.row_bytes, t0, t1, cols);
        dot_batched<V, NV, int32_t, T, true, kChains>(
            cols, vals + (r0 + i) * dc.slots + t0 * 8, s1 - t0 * 8, xt, acc[i]);
      }
    }
  });
}

template <typename T>
void nm_avx2(const Dense& d, const NM& w, const XPacked& xp, int64_t row_begin,
             int64_t row_end) {
  const int bits = nm_index_bits(w.m);
  const int64_t slots = nm_slots_per_row(d.in_features, w.n, w.m);
  const int64_t row_bytes = nm_meta_row_bytes(d.in_features, w.n, w.m);
  const T* vals = static_cast<const T*>(w.values);
  const Decoder8 dc = make_decoder8(w, d.in_features);
  Scratch<int32_t> cols((slots + 7) / 8 * 8);
  auto decode = [&](int64_t r) {
    if (dc.usable) {
      decode_steps8(dc, w.metadata + r * row_bytes, 0, (slots + 7) / 8, cols.data());
    } else {
      decode_row(w, w.metadata + r * row_bytes, slots, row_bytes, bits, cols.data());
    }
  };
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      float acc;
      if (dc.usable) {
        acc = row_dot_decode8(dc, w, w.metadata + r * row_bytes, vals + r * slots, xp.xt,
                              d.in_features);
      } else {
        decode(r);
        acc = row_dot_gather(cols.data(), vals + r * slots, 0, slots, xp.xt);
      }
      store_column<T>(d, &acc, 0, 1, r);
    }
    return;
  }
  if (dc.usable && d.batch >= 2 && d.batch <= kRowBatch && !xp.plan.split_part) {
    // bf16 x: its 2-4 rows converted to fp32 once per call (a few KB per thread).
    Scratch<float> xf(d.dtype == DType::f32 ? 0 : d.batch * d.in_features);
    const float* x = static_cast<const float*>(d.x);
    if (d.dtype != DType::f32) {
      const T* xs = static_cast<const T*>(d.x);
      for (int64_t i = 0; i < d.batch * d.in_features; ++i) xf.data()[i] = load_f32(xs[i]);
      x = xf.data();
    }
    auto run = [&](auto bt) {
      constexpr int BT = decltype(bt)::value;
      float acc[BT];
      for (int64_t r = row_begin; r < row_end; ++r) {
        rows_dot_decode8<BT>(dc, w, w.metadata + r * row_bytes, vals + r * slots, x,
                             d.in_features, acc);
        store_column<T>(d, acc, 0, BT, r);
      }
    };
    static_assert(kRowBatch == 4, "the cases below");
    switch (d.batch) {
      case 2: run(std::integral_constant<int, 2>{}); return;
      case 3: run(std::integral_constant<int, 3>{}); return;
      case 4: run(std::integral_constant<int, 4>{}); return;
      default: break;
    }
  }
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    constexpr int W = NV * V::kLanes;
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, W> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    // Column tiles once a row's activations outgrow L1: where 8 slots span 16 columns (2:4,
    // 4:8, 1:2) from 16 lanes; where they span 32 (1:4, 2:8, 4:16), fewer slots per tile, from
    // twice that size, at any width. Zen 3, 2 threads, same-process A/B with the next tile
    // prefetched: 1:4 4096x4096 batch 8 +26%, batch 64 +25%, 768x3072 batch 64 +22%;
    // below 64 KB (384x1536 at batch 8) -10%; 2:4 at 8 lanes mixed (+15% to -19%).
    const int64_t x_bytes = d.in_features * W * static_cast<int64_t>(sizeof(float));
    const bool tiles =
        dc.usable && ((dc.cols_per_step == 16 && W >= 16 && x_bytes > kTileBytes) ||
                      (dc.cols_per_step == 32 && x_bytes > 2 * kTileBytes));
    if (tiles) {
      nm_column_tiles<V, NV>(dc, w, vals, row_begin, row_end, xt, cols.data(), out);
      return;
    }
    for (int64_t r = row_begin; r < row_end; ++r) {
      decode(r);
      dot_batched<V, NV, int32_t, T, false, kChains>(cols.data(), vals + r * slots, slots, xt,
                                                     out.slot(r));
    }
  });
}

// ---- Row tiles: vectorized over 8 output rows (fp32, m divides 8) ----
// The AVX2 counterpart of the AVX-512 row tiles (spmm_nm_avx512.cpp explains the idea):
// windows of 8 columns, vpermps over 8 rows, up to 6 batch rows per register block (2 * 6 + 2
// of the 16 registers). The slot-major copy is made with scalar loads and stores.

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

// A slot's 8 column indices: int32 from the per-call copy, uint8 from a cached one (a
// quarter of the bytes to stream; one zero-extending load).
inline __m256i load_cols8(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline __m256i load_cols8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// kS: slots per window known at compile time (0: s_rt).
template <int BT, int kS, typename Idx>
inline void tile_batch8(const float* x, int64_t in, int64_t windows, int64_t s_rt, const float* tv,
                        const Idx* ti, __m256 init, bool accumulate, float* y, int64_t ldy,
                        __m256i ymask, __m256i last_window) {
  const int64_t S = kS ? kS : s_rt;
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
      const __m256i id = load_cols8(ti + (wi * S + j) * 8);
      for (int b = 0; b < BT; ++b)
        acc[b] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(xv[b], id), v, acc[b]);
    }
  }
  for (int b = 0; b < BT; ++b) _mm256_maskstore_ps(y + b * ldy, ymask, acc[b]);
}

// The row-tile product over rows [row_begin, row_end), transposing each tile per call or,
// given `copy` (row_begin a multiple of 8), reading the weight's cached copy; the same
// blocking and summation order either way (bitwise equal results).
void tiles_body8(const Dense& d, const NM& w, const NMTileCopy* copy, int64_t row_begin,
                 int64_t row_end) {
  if (d.batch == 0 || row_begin >= row_end) return;
  const int64_t in = d.in_features;
  const int64_t S = 8 / w.m * w.n;  // slots per 8-column window
  const int64_t windows = (in + 7) / 8;
  const int64_t block_windows =
      std::min(windows, std::max<int64_t>(1, kTileBlockBytes / (S * 8 * 8)));
  const int64_t max_block = std::max<int64_t>(6, kBatchBlockBytes / (block_windows * 32));
  const int64_t batch_blocks = (d.batch + max_block - 1) / max_block;
  const int64_t batch_block = (d.batch + batch_blocks - 1) / batch_blocks;
  Scratch<float> tv(copy ? 0 : block_windows * S * 8);
  Scratch<int32_t> ti(copy ? 0 : block_windows * S * 8);
  const int64_t copy_slots = nm_tile_slots(in, w.n, w.m, 8);
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
      if (copy == nullptr)
        build_tile8(w, in, r0, rows, w0 * S, (w0 + wn) * S, tv.data(), ti.data());
      for (int64_t b0 = 0; b0 < d.batch; b0 += batch_block) {
        const int64_t b1 = std::min(d.batch, b0 + batch_block);
        int64_t b = b0;
        // Register blocks of at most 6 batch rows, balanced (8 rows: 4 + 4, not 6 + 1 + 1: a
        // block of one row is bound by its two weight loads per FMA).
        auto batch_tiles = [&](auto ks, const float* tvt, const auto* tit) {
          constexpr int kS = decltype(ks)::value;
          auto run = [&](auto bt) {
            constexpr int BT = decltype(bt)::value;
            tile_batch8<BT, kS>(x + b * in + w0 * 8, in, wn, S, tvt, tit, init, w0 > 0,
                                y + b * d.out_features + r0, d.out_features, ymask, last);
            b += BT;
          };
          while (b < b1) {
            const int64_t left = b1 - b, blocks = (left + 5) / 6;
            switch ((left + blocks - 1) / blocks) {
              case 6: run(std::integral_constant<int, 6>{}); break;
              case 5: run(std::integral_constant<int, 5>{}); break;
              case 4: run(std::integral_constant<int, 4>{}); break;
              case 3: run(std::integral_constant<int, 3>{}); break;
              case 2: run(std::integral_constant<int, 2>{}); break;
              default: run(std::integral_constant<int, 1>{}); break;
            }
          }
        };
        auto slots = [&](auto ks) {
          if (copy != nullptr) {
            const int64_t o = (r0 / 8 * copy_slots + w0 * S) * 8;
            batch_tiles(ks, copy->values + o, copy->cols + o);
          } else {
            batch_tiles(ks, tv.data(), ti.data());
          }
        };
        // The common patterns (2:4, 4:8, 1:2: 4 slots; 1:4, 2:8: 2) get the slot loop unrolled.
        if (S == 4) {
          slots(std::integral_constant<int, 4>{});
        } else if (S == 2) {
          slots(std::integral_constant<int, 2>{});
        } else {
          slots(std::integral_constant<int, 0>{});
        }
      }
    }
  }
}

}  // namespace

void spmm_nm_tiles_avx2(const Dense& d, const NM& w, int64_t row_begin, int64_t row_end) {
  tiles_body8(d, w, nullptr, row_begin, row_end);
}

void spmm_nm_tiles_cached_avx2(const Dense& d, const NM& w, const NMTileCopy& copy,
                               int64_t row_begin, int64_t row_end) {
  tiles_body8(d, w, &copy, row_begin, row_end);
}

void nm_tiles_pack_avx2(const NM& w, int64_t in_features, int64_t out_features,
                        int64_t tile_begin, int64_t tile_end, float* values, uint8_t* cols) {
  const int64_t tile_slots = nm_tile_slots(in_features, w.n, w.m, 8);
  Scratch<int32_t> ci(tile_slots * 8);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t r0 = t * 8;
    build_tile8(w, in_features, r0, std::min<int64_t>(8, out_features - r0), 0, tile_slots,
                values + t * tile_slots * 8, ci.data());
    uint8_t* tc = cols + t * tile_slots * 8;
    for (int64_t k = 0; k < tile_slots * 8; ++k) tc[k] = static_cast<uint8_t>(ci.data()[k]);
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
