// Batch-1 BSR bodies shared by the per-ISA files (include inside the anonymous namespace
// after batched.h, as batched.h itself): row dot products along the block width for blocks
// a multiple of the vector width wide, and scalar code the compiler may vectorize for
// blocks narrower than 8 columns.
#pragma once

// Rows [i0, i0 + G) of block row br at batch 1, along the block width in vectors of L
// (the including file's loads: kLanes, reg, weights, x, x_tail, fma, sum). Activation
// lanes past in_features load as zero, so the padding of a ragged last block column
// contributes nothing.
template <class L, int G, typename T>
inline void rowdot_rows(const Dense& d, const Bsr& w, const float* x, int64_t br,
                        int64_t i0, float* out) {
  using reg = typename L::reg;
  reg acc[G];
  for (int i = 0; i < G; ++i) acc[i] = reg{};
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
    const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
    const T* blk = blocks + (k * w.bh + i0) * w.bw;
    for (int64_t j = 0; j < w.bw; j += L::kLanes) {
      const int64_t left = d.in_features - c0 - j;
      if (left <= 0) break;
      const reg xv = left >= L::kLanes ? L::x(x + c0 + j) : L::x_tail(x + c0 + j, left);
      for (int i = 0; i < G; ++i) {
        acc[i] = L::fma(L::weights(blk + i * w.bw + j), xv, acc[i]);
      }
    }
  }
  for (int i = 0; i < G; ++i) out[i] = L::sum(acc[i]);
}

// Up to 32 rows per pass, so a block 8, 16 or 32 rows tall is read once, front to back:
// batch 1 is bound by the weight stream, and passes of 8 rows read every block in strided
// pieces (AVX2, Zen 3: 16x16@80% 2.8-3.9x -> 4.0-5.9x dense, 32x32@90% 5.7-6.0x ->
// 7.6-18.8x). With more rows than registers GCC keeps some sums on the stack: L1 traffic
// the stream leaves time for (AVX-512 shares this, unmeasured there). Other heights end
// in passes of 4, 2 and 1 rows, each of which walks the block row once more.
template <class L, typename T>
void bsr_rowdot(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
                int64_t br_end) {
  float out[32];
  for (int64_t br = br_begin; br < br_end; ++br) {
    const int64_t r0 = br * w.bh;
    const int64_t valid = d.out_features - r0 < w.bh ? d.out_features - r0 : w.bh;
    row_passes<32>(valid, [&](auto g, int64_t i0) {
      constexpr int G = decltype(g)::value;
      rowdot_rows<L, G, T>(d, w, x, br, i0, out);
      for (int i = 0; i < G; ++i) store_column<T>(d, out + i, 0, 1, r0 + i0 + i);
    });
  }
}

// Batch 1, blocks narrower than 8: each block adds x[c] times one block column to the
// rows of the block row, so the accumulators run along the block height (a contiguous
// column when bw == 1, the 4x1 / 8x1 patterns); groups of 64 rows bound the buffer.
template <typename T>
void bsr_columns(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
                 int64_t br_end) {
  constexpr int64_t kRows = 64;
  const T* blocks = static_cast<const T*>(w.blocks);
  float acc[kRows];
  for (int64_t br = br_begin; br < br_end; ++br) {
    const int64_t r0 = br * w.bh;
    const int64_t valid = d.out_features - r0 < w.bh ? d.out_features - r0 : w.bh;
    for (int64_t i0 = 0; i0 < valid; i0 += kRows) {
      const int64_t rows = valid - i0 < kRows ? valid - i0 : kRows;
      for (int64_t i = 0; i < rows; ++i) acc[i] = 0.f;
      for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
        const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
        const int64_t cols = block_cols(w, d.in_features, c0);
        const T* blk = blocks + (k * w.bh + i0) * w.bw;
        for (int64_t j = 0; j < cols; ++j) {
          const float xj = x[c0 + j];
          for (int64_t i = 0; i < rows; ++i) acc[i] += load_f32(blk[i * w.bw + j]) * xj;
        }
      }
      for (int64_t i = 0; i < rows; ++i) store_column<T>(d, acc + i, 0, 1, r0 + i0 + i);
    }
  }
}

// Batch 1, BH x 1 blocks (a block is BH consecutive rows of one column): one FMA of a
// BH-wide block against the broadcast x[c] per block, with BH known at compile time.
template <int BH, typename T>
void bsr_tall(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
              int64_t br_end) {
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t br = br_begin; br < br_end; ++br) {
    float acc[BH] = {};
    for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
      const float xj = x[w.block_col_indices[k]];
      const T* blk = blocks + k * BH;
      for (int i = 0; i < BH; ++i) acc[i] += load_f32(blk[i]) * xj;
    }
    const int64_t r0 = br * BH;
    const int64_t valid = d.out_features - r0 < BH ? d.out_features - r0 : BH;
    for (int64_t i = 0; i < valid; ++i) store_column<T>(d, acc + i, 0, 1, r0 + i);
  }
}

// Batch 1, 1 x BW blocks (BW consecutive columns of one row): a BW-wide product per block,
// summed across the row at the end. x lanes past in_features are never read: a ragged
// last block multiplies only its real columns.
template <int BW, typename T>
void bsr_wide(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
              int64_t br_end) {
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t r = br_begin; r < br_end; ++r) {
    float acc[BW] = {};
    for (int64_t k = w.block_row_offsets[r]; k < w.block_row_offsets[r + 1]; ++k) {
      const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * BW;
      const T* blk = blocks + k * BW;
      if (c0 + BW <= d.in_features) {
        for (int j = 0; j < BW; ++j) acc[j] += load_f32(blk[j]) * x[c0 + j];
      } else {
        for (int64_t j = 0; c0 + j < d.in_features; ++j) acc[j] += load_f32(blk[j]) * x[c0 + j];
      }
    }
    float sum = 0.f;
    for (int j = 0; j < BW; ++j) sum += acc[j];
    store_column<T>(d, &sum, 0, 1, r);
  }
}

// Batch 1 with blocks narrower than 8 columns: the specialized shapes, else generic.
template <typename T>
void bsr_narrow(const Dense& d, const Bsr& w, const float* x, int64_t br_begin,
                int64_t br_end) {
  if (w.bw == 1 && w.bh == 4) return bsr_tall<4, T>(d, w, x, br_begin, br_end);
  if (w.bw == 1 && w.bh == 8) return bsr_tall<8, T>(d, w, x, br_begin, br_end);
  if (w.bw == 1 && w.bh == 16) return bsr_tall<16, T>(d, w, x, br_begin, br_end);
  if (w.bw == 1 && w.bh == 2) return bsr_tall<2, T>(d, w, x, br_begin, br_end);
  if (w.bh == 1 && w.bw == 4) return bsr_wide<4, T>(d, w, x, br_begin, br_end);
  if (w.bh == 1 && w.bw == 2) return bsr_wide<2, T>(d, w, x, br_begin, br_end);
  bsr_columns<T>(d, w, x, br_begin, br_end);
}
