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
};
