// Batch-1 row dot product with AVX2 gathers; include only from *_avx2.cpp, inside an
// anonymous namespace (see the linkage note in kernels.h).
#pragma once

#include "cpu/vec256.h"  // V256::load8

template <typename I>
inline __m256i load_idx(const I* p);
template <>
inline __m256i load_idx<uint16_t>(const uint16_t* p) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
inline __m256i load_idx<int32_t>(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
template <>
inline __m256i load_idx<uint8_t>(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Partial sums of one output row at batch 1 (two vector chains and the scalar rest), kept
// across the segments of an 8-bit CSR row.
struct GatherAcc {
  __m256 a0 = _mm256_setzero_ps();
  __m256 a1 = _mm256_setzero_ps();
  float rest = 0.f;
  float sum() const { return hsum(_mm256_add_ps(a0, a1)) + rest; }
};

// Values and indices asked for this far (in values' bytes) ahead of the loads. Same-process
// A/B on the five issue-4 shapes at 90%, batch 1, fp32 16-bit CSR (Zen 3, 2 threads, two
// runs): +0-13%, about +5% on average, against an A/A pair of identical code that spread by
// up to 10%; 2 KB no better.
constexpr int64_t kGatherAhead = 1024;

// acc += vals[k0..k1) * x[cols[k0..k1)].
template <typename I, typename T>
inline void gather_fma(const I* cols, const T* vals, int64_t k0, int64_t k1, const float* x,
                       GatherAcc& acc) {
  __m256 acc0 = acc.a0;
  __m256 acc1 = acc.a1;
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(vals + k) + kGatherAhead, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(cols + k) + kGatherAhead * sizeof(I) / sizeof(T),
                 _MM_HINT_T0);
    const __m256 x0 = _mm256_i32gather_ps(x, load_idx(cols + k), 4);
    const __m256 x1 = _mm256_i32gather_ps(x, load_idx(cols + k + 8), 4);
    acc0 = _mm256_fmadd_ps(V256::load8(vals + k), x0, acc0);
    acc1 = _mm256_fmadd_ps(V256::load8(vals + k + 8), x1, acc1);
  }
  for (; k + 8 <= k1; k += 8) {
    const __m256 x0 = _mm256_i32gather_ps(x, load_idx(cols + k), 4);
    acc0 = _mm256_fmadd_ps(V256::load8(vals + k), x0, acc0);
  }
  float rest = acc.rest;
  for (; k < k1; ++k) rest += load_f32(vals[k]) * x[cols[k]];
  acc.a0 = acc0;
  acc.a1 = acc1;
  acc.rest = rest;
}

// acc += the entries of an 8-bit CSR row (segment offsets bounds[0..nseg]), segment by
// segment from each segment's first column.
template <typename T>
inline void gather_fma_segments(const uint8_t* cols, const T* vals, const int64_t* bounds,
                                int64_t nseg, const float* x, GatherAcc& acc) {
  for (int64_t s = 0; s < nseg; ++s)
    gather_fma(cols, vals, bounds[s], bounds[s + 1], x + s * kCsrSegment, acc);
}

template <typename I, typename T>
inline float row_dot_gather(const I* cols, const T* vals, int64_t k0, int64_t k1,
                            const float* x) {
  GatherAcc acc;
  gather_fma(cols, vals, k0, k1, x, acc);
  return acc.sum();
}
