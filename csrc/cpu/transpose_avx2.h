// 8 x 8 fp32 transposes in registers for the AVX2 files (the result store of the batched
// kernels, the activation packer); include inside their anonymous namespace (see kernels.h
// on linkage).
#pragma once

// r[i] = row i (8 columns) -> r[j] = column j (8 rows).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int g = 0; g < 2; ++g) {  // 4 x 4 within every 128-bit lane
    const int b = 4 * g;
    t[b + 0] = _mm256_unpacklo_ps(r[b + 0], r[b + 1]);
    t[b + 1] = _mm256_unpackhi_ps(r[b + 0], r[b + 1]);
    t[b + 2] = _mm256_unpacklo_ps(r[b + 2], r[b + 3]);
    t[b + 3] = _mm256_unpackhi_ps(r[b + 2], r[b + 3]);
    u[b + 0] = _mm256_shuffle_ps(t[b + 0], t[b + 2], 0x44);
    u[b + 1] = _mm256_shuffle_ps(t[b + 0], t[b + 2], 0xEE);
    u[b + 2] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0x44);
    u[b + 3] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
  }
  // u[k] lane L (of rows 0-3) and u[4 + k] (rows 4-7): column 4L + k.
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
  }
}

// 8 fp32 values to bf16 bit patterns, rounded as f32_to_bf16 (kernels.h) rounds them.
inline __m128i to_bf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i bias = _mm256_add_epi32(
      _mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  // |u| > inf as signed 32-bit compares: both sides are below 2^31.
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  const __m256i packed = _mm256_packus_epi32(r, r);  // per 128-bit lane: 4 values twice
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(uint16_t* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16x8(v));
}

// y[j * ld + i] = buf[i * width + j] + b[i] for i < count, j < rows (width a multiple of 8):
// see store_transposed in transpose_avx512.h. A ragged last group of outputs goes through
// a stack row, so no store lands past y's row.
template <typename T>
__attribute__((noinline)) void store_transposed(const float* buf, int64_t width,
                                                int64_t count, int64_t rows, T* y,
                                                int64_t ld, const float* b) {
  for (int64_t i0 = 0; i0 < count; i0 += 8) {
    const int64_t ni = count - i0 < 8 ? count - i0 : 8;
    alignas(32) float bb[8] = {};
    for (int64_t i = 0; i < ni; ++i) bb[i] = b[i0 + i];
    const __m256 bias = _mm256_load_ps(bb);
    for (int64_t j0 = 0; j0 < rows; j0 += 8) {
      __m256 r[8];
      for (int64_t i = 0; i < 8; ++i) {
        r[i] = i < ni ? _mm256_loadu_ps(buf + (i0 + i) * width + j0) : _mm256_setzero_ps();
      }
      transpose8(r);
      const int64_t nj = rows - j0 < 8 ? rows - j0 : 8;
      for (int64_t j = 0; j < nj; ++j) {
        T* dst = y + (j0 + j) * ld + i0;
        const __m256 v = _mm256_add_ps(r[j], bias);
        if (ni == 8) {
          store8(dst, v);
        } else {
          T tmp[8];
          store8(tmp, v);
          for (int64_t i = 0; i < ni; ++i) dst[i] = tmp[i];
        }
      }
    }
  }
}
