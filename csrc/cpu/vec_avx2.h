// Vectors for the shared kernel bodies; include only from *_avx2.cpp, inside an
// anonymous namespace (see the linkage note in kernels.h).
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

// Chunk widths this ISA packs activations in (see XLayout in dispatch.cpp).
constexpr int64_t kLanes = 8;
constexpr int64_t kMinWidth = 8;

// Calls f(Tag<vector>, integral_constant<vectors per chunk>) for a chunk width.
template <class F>
inline void with_width(int64_t width, const F& f) {
  if (width <= 8) {
    f(Tag<V256>{}, std::integral_constant<int, 1>{});
  } else if (width <= 16) {
    f(Tag<V256>{}, std::integral_constant<int, 2>{});
  } else {
    f(Tag<V256>{}, std::integral_constant<int, 4>{});
  }
}
