// Pieces of the vector layer shared by every ISA from AVX2 up; included by vec_<isa>.h,
// inside the anonymous namespace of a per-ISA file (see the linkage note in kernels.h).
#pragma once

template <class T>
struct Tag {
  using type = T;
};

// 8 fp32 lanes.
struct V256 {
  using reg = __m256;
  static constexpr int kLanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // 8 weight values widened to fp32 (bf16: bit patterns shifted into the high half).
  static reg load8(const float* p) { return _mm256_loadu_ps(p); }
  static reg load8(const uint16_t* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};
