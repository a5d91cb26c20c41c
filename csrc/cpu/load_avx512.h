// Weight-value loads widened to fp32 (float as is, bf16 bit patterns shifted into the high
// half), shared by the AVX-512 kernel files; include inside their anonymous namespace.
#pragma once

inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 16 values.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The first lanes of k (the rest zero); never touches memory past them.
inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load16(const uint16_t* p, __mmask16 k) {
  return widen_bf16(_mm256_maskz_loadu_epi16(k, p));
}
