// 16 x 16 fp32 transpose in registers, shared by the AVX-512 files (the activation packer,
// the N:M row tiles); include inside their anonymous namespace (see kernels.h on linkage).
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
