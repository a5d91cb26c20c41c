// 16 x 16 fp32 transposes in registers, shared by the AVX-512 files (the activation packer,
// the N:M row tiles, the result store of the batched kernels); include inside their
// anonymous namespace (see kernels.h on linkage).
#pragma once

// r[i] = row i (16 columns) -> r[j] = column j (16 rows).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int g = 0; g < 4; ++g) {  // 4 x 4 within every 128-bit lane
    const int b = 4 * g;
    t[b + 0] = _mm512_unpacklo_ps(r[b + 0], r[b + 1]);
    t[b + 1] = _mm512_unpackhi_ps(r[b + 0], r[b + 1]);
    t[b + 2] = _mm512_unpacklo_ps(r[b + 2], r[b + 3]);
    t[b + 3] = _mm512_unpackhi_ps(r[b + 2], r[b + 3]);
    u[b + 0] = _mm512_shuffle_ps(t[b + 0], t[b + 2], 0x44);
    u[b + 1] = _mm512_shuffle_ps(t[b + 0], t[b + 2], 0xEE);
    u[b + 2] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0x44);
    u[b + 3] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
  }
  // u[4g + k], lane L: column 4L + k of rows 4g .. 4g + 3.
  for (int k = 0; k < 4; ++k) {
    const __m512 a = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);       // cols k, 8+k; rows 0-7
    const __m512 b = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);       // cols 4+k, 12+k
    const __m512 c = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);  // rows 8-15
    const __m512 d = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
    r[k] = _mm512_shuffle_f32x4(a, c, 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(a, c, 0xDD);
    r[4 + k] = _mm512_shuffle_f32x4(b, d, 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(b, d, 0xDD);
  }
}

// 16 fp32 values to bf16 bit patterns, rounded as f32_to_bf16 (kernels.h) rounds them.
inline __m256i to_bf16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                        _mm512_and_si512(_mm512_srli_epi32(u, 16), one));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

inline void store16(float* p, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(p, k, v); }
inline void store16(uint16_t* p, __m512 v, __mmask16 k) {
  _mm256_mask_storeu_epi16(p, k, to_bf16x16(v));
}

// Mask of the first `left` lanes (none when left <= 0).
inline __mmask16 lanes_left(int64_t left) {
  if (left <= 0) return 0;
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

// y[j * ld + i] = buf[i * width + j] + b[i] for i < count, j < rows: a chunk's results,
// kept output row by output row, written batch row by batch row. Scalar stores here were
// 54% of the batched CSR kernel's time at batch 4096 (perf); in 16 x 16 register
// transposes each batch row takes one (masked) store per 16 outputs. Not inlined: once per
// 32 rows it costs nothing, and inlined into every kernel body it moved their hot loops
// (16x16 blocks at 80% ran 10-15% slower from cold weights, same loop code).
template <typename T>
__attribute__((noinline)) void store_transposed(const float* buf, int64_t width,
                                                int64_t count, int64_t rows, T* y,
                                                int64_t ld, const float* b) {
  for (int64_t i0 = 0; i0 < count; i0 += 16) {
    const int64_t ni = count - i0 < 16 ? count - i0 : 16;
    const __mmask16 im = lanes_left(ni);
    const __m512 bias = _mm512_maskz_loadu_ps(im, b + i0);
    for (int64_t j0 = 0; j0 < rows; j0 += 16) {
      const __mmask16 jm = lanes_left(width - j0);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i) {
        r[i] = i < ni ? _mm512_maskz_loadu_ps(jm, buf + (i0 + i) * width + j0)
                      : _mm512_setzero_ps();
      }
      transpose16(r);
      const int64_t nj = rows - j0 < 16 ? rows - j0 : 16;
      for (int64_t j = 0; j < nj; ++j)
        store16(y + (j0 + j) * ld + i0, _mm512_add_ps(r[j], bias), im);
    }
  }
}
