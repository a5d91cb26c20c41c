// 16-lane fp32 vector for the shared kernel bodies; include only from *_avx512.cpp,
// inside an anonymous namespace (see the linkage note in kernels.h).
#pragma once
#include <immintrin.h>

struct Vec {
  using reg = __m512;
  static constexpr int kLanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};
