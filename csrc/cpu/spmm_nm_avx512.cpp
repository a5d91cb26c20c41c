// N:M x dense, AVX-512. The bit-packed metadata is decoded 16 slots at a time in
// registers (one masked byte load, an in-lane byte shuffle, variable shifts), giving the
// input column of every slot without ever materializing per-slot indices in memory.
// Batch 1: the columns drive a gather. Larger batches: a row's columns are decoded once
// per chunk into a small buffer that the batched body (batched.h) consumes.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {

#include "cpu/vec_avx512.h"
#include "cpu/load_avx512.h"
#include "cpu/batched.h"
#include "cpu/transpose_avx512.h"

// Per-call constants of the decoder for a given n:m.
struct Decoder {
  __m512i ctrl;   // dword lane j <- metadata bytes (j*bits)/8 and the one after it
  __m512i shift;  // (j*bits) % 8
  __m512i field;  // (1 << bits) - 1
  __m512i group_cols[32];  // for r0 = s0 % n: m * floor((r0 + j) / n)
  int64_t n, m, bits, row_bytes, slots;
};

void make_decoder(Decoder& dc, const NM& w, int64_t in_features) {
  dc.n = w.n;
  dc.m = w.m;
  dc.bits = nm_index_bits(w.m);
  dc.row_bytes = nm_meta_row_bytes(in_features, w.n, w.m);
  dc.slots = nm_slots_per_row(in_features, w.n, w.m);
  alignas(64) int32_t ctrl[16], shift[16], cols[16];
  for (int j = 0; j < 16; ++j) {
    const int bit = j * static_cast<int>(dc.bits);
    const int byte = bit >> 3;
    ctrl[j] = byte | (byte + 1) << 8 | 0x80 << 16 | 0x80 << 24;
    shift[j] = bit & 7;
  }
  dc.ctrl = _mm512_load_si512(ctrl);
  dc.shift = _mm512_load_si512(shift);
  dc.field = _mm512_set1_epi32((1 << dc.bits) - 1);
  for (int64_t r0 = 0; r0 < dc.n; ++r0) {
    for (int j = 0; j < 16; ++j) cols[j] = static_cast<int32_t>((r0 + j) / dc.n * dc.m);
    dc.group_cols[r0] = _mm512_load_si512(cols);
  }
}

// Input columns of slots [s0, s0 + 16) of one row; s0 is a multiple of 16, q0 = s0 / n
// and r0 = s0 % n. Lanes past the row's last slot hold garbage.
inline __m512i decode16(const Decoder& dc, const uint8_t* row_meta, int64_t s0, int64_t q0,
                        int64_t r0) {
  const int64_t byte0 = s0 * dc.bits / 8;
  const int64_t avail = dc.row_bytes - byte0;
  const __mmask16 lm = avail >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << avail) - 1u);
  const __m512i window = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(lm, row_meta + byte0));
  const __m512i words = _mm512_shuffle_epi8(window, dc.ctrl);
  const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(words, dc.shift), dc.field);
  const __m512i base = _mm512_set1_epi32(static_cast<int32_t>(q0 * dc.m));
  return _mm512_add_epi32(_mm512_add_epi32(base, dc.group_cols[r0]), idx);
}

// Walks slots [begin, end) of a row 16 at a time (begin a multiple of 16), keeping
// s0 / n and s0 % n without dividing in the loop.
template <typename Fn>
inline void for_each_16_slots(const Decoder& dc, const uint8_t* row_meta, int64_t begin,
                              int64_t end, const Fn& fn) {
  const int64_t dq = 16 / dc.n, dr = 16 % dc.n;
  int64_t q0 = begin / dc.n, r0 = begin % dc.n;
  for (int64_t s0 = begin; s0 < end; s0 += 16) {
    fn(s0, decode16(dc, row_meta, s0, q0, r0));
    q0 += dq;
    r0 += dr;
    if (r0 >= dc.n) {
      r0 -= dc.n;
      ++q0;
    }
  }
}

template <typename T>
void nm_avx512(const Dense& d, const NM& w, const XPacked& xp, int64_t row_begin,
               int64_t row_end) {
  Decoder dc;
  make_decoder(dc, w, d.in_features);
  const T* vals = static_cast<const T*>(w.values);
  // When 16 slots always cover the same window of 32 or 64 columns (n divides 16 and
  // m <= 4n: 2:4, 4:8, 1:4, 2:8), contiguous loads and two-register permutes replace the
  // gather.
  const int64_t cols_per_step = 16 % w.n == 0 ? 16 / w.n * w.m : 0;
  if (xp.plan.full_width == 1 && cols_per_step && cols_per_step <= 64) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const T* vrow = vals + r * dc.slots;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t step = 0;
      for_each_16_slots(dc, w.metadata + r * dc.row_bytes, 0, dc.slots,
                        [&](int64_t s0, __m512i cols) {
        const int64_t c0 = s0 / 16 * cols_per_step;
        const __mmask16 k = lanes_left(dc.slots - s0);
        const float* xw = xp.xt + c0;
        const int64_t left = d.in_features - c0;
        const __mmask16 k0 = lanes_left(left), k1 = lanes_left(left - 16);
        const __m512i rel = _mm512_sub_epi32(cols, _mm512_set1_epi32(static_cast<int32_t>(c0)));
        __m512 x = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k0, xw), rel,
                                          _mm512_maskz_loadu_ps(k1, xw + 16));
        if (cols_per_step > 32) {
          const __mmask16 k2 = lanes_left(left - 32), k3 = lanes_left(left - 48);
          const __m512 upper = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k2, xw + 32), rel,
                                                      _mm512_maskz_loadu_ps(k3, xw + 48));
          x = _mm512_mask_blend_ps(_mm512_test_epi32_mask(rel, _mm512_set1_epi32(32)), x, upper);
        }
        if (step++ & 1) {
          acc1 = _mm512_fmadd_ps(load16(vrow + s0, k), x, acc1);
        } else {
          acc0 = _mm512_fmadd_ps(load16(vrow + s0, k), x, acc0);
        }
      });
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
      store_column<T>(d, &sum, 0, 1, r);
    }
    return;
  }
  if (xp.plan.full_width == 1) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const T* vrow = vals + r * dc.slots;
      __m512 acc = _mm512_setzero_ps();
      for_each_16_slots(dc, w.metadata + r * dc.row_bytes, 0, dc.slots,
                        [&](int64_t s0, __m512i cols) {
        const __mmask16 k = lanes_left(dc.slots - s0);
        const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, cols, xp.xt, 4);
        acc = _mm512_fmadd_ps(load16(vrow + s0, k), x, acc);
      });
      float sum = _mm512_reduce_add_ps(acc);
      store_column<T>(d, &sum, 0, 1, r);
    }
    return;
  }
  // Column tiles: the activations of a tile of columns stay in L1 while a block of rows
  // takes its slots in that tile, partial sums waiting in `partial` (see batched.h on why
  // the L2-resident chunk, not the FMAs, bounds the untiled loop). The tile is a whole
  // number of 16-slot steps, so decoding starts aligned.
  // A block of rows is swept once per tile: its weights (values, metadata) must stay in
  // L2 meanwhile, so long rows get smaller blocks.
  constexpr int64_t kMaxRowBlock = 64, kRowBlockBytes = 128 << 10;
  const int64_t row_block_bytes = dc.slots * static_cast<int64_t>(sizeof(T)) + dc.row_bytes;
  const int64_t row_block = std::max<int64_t>(
      4, std::min<int64_t>(kMaxRowBlock, kRowBlockBytes / std::max<int64_t>(1, row_block_bytes)));
  Scratch<int32_t> cols(dc.slots + 16);
  Scratch<float> partial(kMaxRowBlock * xp.plan.full_width);
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    constexpr int W = NV * V::kLanes;
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, W> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    const int64_t tile_slots = (kTileBytes / (W * 4) / dc.m * dc.n) / 16 * 16;
    // Measured: tiling pays from 32-wide chunks (a chunk [in][32] overflows L1 from
    // in = 256); with 16 or fewer lanes it was neutral to slower.
    if (W < 32 || tile_slots < 16 || dc.slots <= 2 * tile_slots) {
      for (int64_t r = row_begin; r < row_end; ++r) {
        for_each_16_slots(dc, w.metadata + r * dc.row_bytes, 0, dc.slots,
                          [&](int64_t s0, __m512i cv) { _mm512_storeu_si512(cols.data() + s0, cv); });
        dot_batched<V, NV>(cols.data(), vals + r * dc.slots, dc.slots, xt, out.slot(r));
      }
      return;
    }
    for (int64_t r0 = row_begin; r0 < row_end; r0 += row_block) {
      const int64_t rows = row_end - r0 < row_block ? row_end - r0 : row_block;
      float* acc = partial.data();
      for (int64_t i = 0; i < rows * W; ++i) acc[i] = 0.f;
      for (int64_t s0 = 0; s0 < dc.slots; s0 += tile_slots) {
        const int64_t s1 = s0 + tile_slots < dc.slots ? s0 + tile_slots : dc.slots;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t r = r0 + i;
          for_each_16_slots(dc, w.metadata + r * dc.row_bytes, s0, s1, [&](int64_t s, __m512i cv) {
            _mm512_storeu_si512(cols.data() + (s - s0), cv);
          });
          dot_batched<V, NV, int32_t, T, true>(cols.data(), vals + r * dc.slots + s0, s1 - s0,
                                               xt, acc + i * W);
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        float* dst = out.slot(r0 + i);
        for (int j = 0; j < W; ++j) dst[j] = acc[i * W + j];
      }
    }
  });
}

// ---- Row tiles: vectorized over 16 output rows (fp32, m divides 16) ----
//
// The batched body above does one activation load per FMA (the weight is broadcast), so it
// is bound by the load ports at about half of FMA peak. Here a vector holds 16 output rows
// of one batch row instead. When m divides 16, every slot of a 16-column window of x
// (16 / m whole groups) draws its input from that window, so one load of x[b, 16w ..
// 16w + 16) feeds S = 16 n / m slots: each is one in-register permute (vpermps, by the
// slot's column in the window) and one FMA with the 16 rows' values of that slot.
//
// The rows' values and decoded columns are transposed into slot-major order, [slot][16
// rows], once per call, and blocked like a GEMM so that this copy is reused by the whole
// batch: a panel of rows x a block of windows is transposed (its copy stays in L2), then
// for each block of batch rows (x of the column block in L2) every tile of the panel runs
// over the batch block with its part of the copy in L1. Partial sums go through y.

// Bytes of one tile's transposed copy for a column block (values and columns): the L1
// data cache (measured best among 16, 24, 32 and 64 KiB on 2:4 layers).
constexpr int64_t kTileBlockBytes = 32 << 10;
// The panel's copy and the batch block's x for one column block, both within L2.
constexpr int64_t kPanelBytes = 256 << 10, kBatchBlockBytes = 256 << 10;
// From this many batch blocks on, the panel is every row of the call when their copy fits
// kWidePanelBytes: the copy then comes from L3 once per batch block, but x comes from
// memory only once (measured 5-9% faster at batch 4096 on MiniLM shapes; slower with fewer
// blocks, and 1.5x slower with 4096x4096's 8 MiB copy at batch 512).
constexpr int64_t kWidePanelBlocks = 8, kWidePanelBytes = 4 << 20;

// The copy reads each row's values and metadata side by side. Measured with cold weights
// (bench_formats.py, which cycles through 96 MB of copies), this was 1.2x faster at batch 8
// than two variants that were faster with the weights in cache: values of the 16 rows
// first and columns after, or the columns fetched for all 16 rows by 8-byte gathers.

// Slot-major copy of slots [s_begin, s_end) (s_begin a multiple of 16) of rows
// [r0, r0 + rows) (rows <= 16): tv[s][i] = value of slot s_begin + s of row r0 + i, ti[s][i]
// its input column (only the low 4 bits are used). Slots past the row's end and rows past
// `rows` get value 0 and column 15, a lane of the last window that lies past in_features
// whenever such padding slots exist, so x there is a masked 0. Writes whole 16-slot steps.
void build_tile(const Decoder& dc, const NM& w, int64_t r0, int64_t rows, int64_t s_begin,
                int64_t s_end, float* tv, int32_t* ti) {
  const float* vals = static_cast<const float*>(w.values);
  const __m512i pad_col = _mm512_set1_epi32(15);
  // 1:4 and 2:4: a whole step's 16 two-bit indices are one 32-bit word of each row, so one
  // gather of the 16 rows' words yields the indices in slot-major order directly (slot j:
  // bits 2j, 2j + 1 of every lane) and only the values need the transpose. Against 16
  // decodes and a second transpose: 1.07-1.42x faster products at batch 8-16, 1.0-1.08x at
  // 128 (Zen 4, five issue-4 shapes, same outputs bit for bit; RESULTS.md, "N:M tiles:
  // indices without a transpose").
  const bool slot_major_cols =
      dc.m == 4 && 16 % dc.n == 0 && dc.row_bytes < (int64_t{1} << 26);
  const __m512i row_off =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int32_t>(dc.row_bytes)));
  const __m512i two_bits = _mm512_set1_epi32(3);
  for (int64_t s0 = s_begin; s0 < s_end; s0 += 16) {
    const __mmask16 k = lanes_left(dc.slots - s0);
    const bool whole = slot_major_cols && s0 + 16 <= dc.slots;
    __m512 v[16], c[16];
    for (int i = 0; i < 16; ++i) {
      if (i < rows && k) {
        const int64_t r = r0 + i;
        v[i] = _mm512_maskz_loadu_ps(k, vals + r * dc.slots + s0);
        if (!whole) {
          const __m512i cols =
              decode16(dc, w.metadata + r * dc.row_bytes, s0, s0 / dc.n, s0 % dc.n);
          c[i] = _mm512_castsi512_ps(_mm512_mask_mov_epi32(pad_col, k, cols));
        }
      } else {
        v[i] = _mm512_setzero_ps();
        c[i] = _mm512_castsi512_ps(pad_col);
      }
    }
    transpose16(v);
    const int64_t o = (s0 - s_begin) * 16;
    if (whole) {
      // Rows past `rows` read nothing and get index 0 with value 0.
      __m512i word = _mm512_mask_i32gather_epi32(
          _mm512_setzero_si512(), lanes_left(rows), row_off,
          w.metadata + r0 * dc.row_bytes + s0 / 4, 1);
      const int64_t group0 = s0 / dc.n;
      for (int j = 0; j < 16; ++j) {
        // Only the column's low 4 bits are read: its offset in the 16-column window.
        const int32_t base = static_cast<int32_t>((4 * (group0 + j / dc.n)) & 15);
        const __m512i col = _mm512_add_epi32(_mm512_and_si512(word, two_bits),
                                             _mm512_set1_epi32(base));
        _mm512_storeu_si512(ti + o + j * 16, col);
        _mm512_storeu_ps(tv + o + j * 16, v[j]);
        word = _mm512_srli_epi32(word, 2);
      }
      continue;
    }
    transpose16(c);
    for (int j = 0; j < 16; ++j) {
      _mm512_storeu_ps(tv + o + j * 16, v[j]);
      _mm512_storeu_ps(reinterpret_cast<float*>(ti + o + j * 16), c[j]);
    }
  }
}

// y[b, 0..16) (masked by ymask) for BT consecutive batch rows over `windows` windows of x
// (the last one masked by last_window), starting from init or, with `accumulate`, from y.
// Accumulators and the BT windows of x stay in registers (2 BT + 3 of the 32).
// The columns of a slot's 16 rows: int32 from the per-call copy, uint8 from a cached one
// (a quarter of the bytes to stream; one zero-extending load).
inline __m512i load_cols(const int32_t* p) { return _mm512_loadu_si512(p); }
inline __m512i load_cols(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <int BT, int kS, typename Idx>
inline void tile_batch(const float* x, int64_t in, int64_t windows, int64_t s_rt, const float* tv,
                       const Idx* ti, __m512 init, bool accumulate, float* y, int64_t ldy,
                       __mmask16 ymask, __mmask16 last_window) {
  const int64_t S = kS ? kS : s_rt;
  __m512 acc[BT];
  for (int b = 0; b < BT; ++b)
    acc[b] = accumulate ? _mm512_maskz_loadu_ps(ymask, y + b * ldy) : init;
  auto window = [&](int64_t wi, auto load) {
    __m512 xv[BT];
    for (int b = 0; b < BT; ++b) xv[b] = load(x + b * in + wi * 16);
    const float* vv = tv + wi * S * 16;
    const Idx* ii = ti + wi * S * 16;
    for (int64_t j = 0; j < S; ++j) {
      const __m512 v = _mm512_loadu_ps(vv + j * 16);
      const __m512i id = load_cols(ii + j * 16);
      for (int b = 0; b < BT; ++b)
        acc[b] = _mm512_fmadd_ps(_mm512_permutexvar_ps(id, xv[b]), v, acc[b]);
    }
  };
  for (int64_t wi = 0; wi + 1 < windows; ++wi)
    window(wi, [](const float* p) { return _mm512_loadu_ps(p); });
  window(windows - 1, [&](const float* p) { return _mm512_maskz_loadu_ps(last_window, p); });
  for (int b = 0; b < BT; ++b) _mm512_mask_storeu_ps(y + b * ldy, ymask, acc[b]);
}

int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }

// The row-tile product over rows [row_begin, row_end), transposing each tile per call or,
// given `copy` (row_begin a multiple of 16), reading the weight's cached copy.
void tiles_body(const Dense& d, const NM& w, const NMTileCopy* copy, int64_t row_begin,
                int64_t row_end) {
  if (d.batch == 0 || row_begin >= row_end) return;
  Decoder dc;
  make_decoder(dc, w, d.in_features);
  const int64_t in = d.in_features;
  const int64_t S = 16 / w.m * w.n;  // slots per 16-column window
  const int64_t windows = (in + 15) / 16;
  // Windows per column block: the tile's copy within kTileBlockBytes, and a whole number
  // of 16-slot steps so that every block's decoding starts aligned.
  const int64_t step = 16 / gcd64(S, 16);
  const int64_t block_windows =
      std::min(windows, std::max(step, kTileBlockBytes / (S * 16 * 8) / step * step));
  const int64_t block_slots = (block_windows * S + 15) / 16 * 16;
  const int64_t tile_floats = block_slots * 16;
  // Batch blocks of equal size. When all of x fits the L2 budget, each tile is transposed
  // right before its use (its copy still in L1); otherwise a panel of tiles is transposed
  // first so that x of a batch block is fetched once per panel rather than once per tile.
  const int64_t max_block = std::max<int64_t>(12, kBatchBlockBytes / (block_windows * 64));
  const int64_t batch_blocks = (d.batch + max_block - 1) / max_block;
  const int64_t batch_block = (d.batch + batch_blocks - 1) / batch_blocks;
  const int64_t all_tiles = (row_end - row_begin + 15) / 16;
  const int64_t panel_tiles =
      batch_blocks == 1 && d.batch * in * 4 <= kBatchBlockBytes ? 1
      : batch_blocks >= kWidePanelBlocks && all_tiles * tile_floats * 8 <= kWidePanelBytes
          ? all_tiles
          : std::min(all_tiles, std::max<int64_t>(1, kPanelBytes / (tile_floats * 8)));
  // No scratch with a copy: the tiles are read where they are.
  Scratch<float> tv(copy ? 0 : panel_tiles * tile_floats);
  Scratch<int32_t> ti(copy ? 0 : panel_tiles * tile_floats);
  const int64_t copy_slots = nm_tile_slots(in, w.n, w.m, 16);
  const float* x = static_cast<const float*>(d.x);
  const float* bias = static_cast<const float*>(d.bias);
  float* y = static_cast<float*>(d.y);
  for (int64_t p0 = row_begin; p0 < row_end; p0 += panel_tiles * 16) {
    const int64_t p1 = std::min(row_end, p0 + panel_tiles * 16);
    for (int64_t w0 = 0; w0 < windows; w0 += block_windows) {
      const int64_t wn = std::min(block_windows, windows - w0);
      const __mmask16 last = w0 + wn < windows ? __mmask16(0xFFFF)
                                               : lanes_left(in - (windows - 1) * 16);
      if (copy == nullptr) {
        for (int64_t r0 = p0, t = 0; r0 < p1; r0 += 16, ++t)
          build_tile(dc, w, r0, std::min<int64_t>(16, p1 - r0), w0 * S, (w0 + wn) * S,
                     tv.data() + t * tile_floats, ti.data() + t * tile_floats);
      }
      for (int64_t b0 = 0; b0 < d.batch; b0 += batch_block) {
        const int64_t b1 = std::min(d.batch, b0 + batch_block);
        for (int64_t r0 = p0, t = 0; r0 < p1; r0 += 16, ++t) {
          const int64_t rows = std::min<int64_t>(16, p1 - r0);
          const __mmask16 ymask = lanes_left(rows);
          const __m512 init =
              bias ? _mm512_maskz_loadu_ps(ymask, bias + r0) : _mm512_setzero_ps();
          int64_t b = b0;
          auto batch_tiles = [&](auto ks, const float* tvt, const auto* tit) {
            constexpr int kS = decltype(ks)::value;
            auto run = [&](auto bt) {
              constexpr int BT = decltype(bt)::value;
              for (; b + BT <= b1; b += BT)
                tile_batch<BT, kS>(x + b * in + w0 * 16, in, wn, S, tvt, tit, init, w0 > 0,
                                   y + b * d.out_features + r0, d.out_features, ymask, last);
            };
            run(std::integral_constant<int, 12>{});
            run(std::integral_constant<int, 8>{});
            run(std::integral_constant<int, 4>{});
            run(std::integral_constant<int, 2>{});
            run(std::integral_constant<int, 1>{});
          };
          auto slots = [&](auto ks) {
            if (copy != nullptr) {
              const int64_t o = (r0 / 16 * copy_slots + w0 * S) * 16;
              batch_tiles(ks, copy->values + o, copy->cols + o);
            } else {
              batch_tiles(ks, tv.data() + t * tile_floats, ti.data() + t * tile_floats);
            }
          };
          // The common patterns (2:4, 4:8: 8 slots; 1:4, 2:8: 4) get the slot loop unrolled.
          if (S == 8) {
            slots(std::integral_constant<int, 8>{});
          } else if (S == 4) {
            slots(std::integral_constant<int, 4>{});
          } else {
            slots(std::integral_constant<int, 0>{});
          }
        }
      }
    }
  }
}

}  // namespace

void spmm_nm_tiles_avx512(const Dense& d, const NM& w, int64_t row_begin, int64_t row_end) {
  tiles_body(d, w, nullptr, row_begin, row_end);
}

void spmm_nm_tiles_cached_avx512(const Dense& d, const NM& w, const NMTileCopy& copy,
                                 int64_t row_begin, int64_t row_end) {
  tiles_body(d, w, &copy, row_begin, row_end);
}

void nm_tiles_pack_avx512(const NM& w, int64_t in_features, int64_t out_features,
                          int64_t tile_begin, int64_t tile_end, float* values, uint8_t* cols) {
  Decoder dc;
  make_decoder(dc, w, in_features);
  const int64_t tile_slots = nm_tile_slots(in_features, w.n, w.m, 16);
  Scratch<int32_t> ci(tile_slots * 16);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t r0 = t * 16;
    float* tv = values + t * tile_slots * 16;
    build_tile(dc, w, r0, std::min<int64_t>(16, out_features - r0), 0, tile_slots, tv,
               ci.data());
    uint8_t* tc = cols + t * tile_slots * 16;
    for (int64_t k = 0; k < tile_slots * 16; k += 16) {
      const __m512i c = _mm512_loadu_si512(ci.data() + k);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tc + k), _mm512_cvtepi32_epi8(c));
    }
  }
}

void spmm_nm_avx512(const Dense& d, const NM& w, const XPacked& xp, int64_t row_begin,
                    int64_t row_end) {
  if (d.dtype == DType::f32) {
    nm_avx512<float>(d, w, xp, row_begin, row_end);
  } else {
    nm_avx512<uint16_t>(d, w, xp, row_begin, row_end);
  }
}

}  // namespace cpu
}  // namespace sparseprune
