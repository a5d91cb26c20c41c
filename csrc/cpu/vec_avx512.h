// Vectors for the shared kernel bodies; include only from *_avx512.cpp, inside an
// anonymous namespace (see the linkage note in kernels.h).
#pragma once

#include "cpu/vec256.h"
#include "cpu/transpose_avx512.h"

// 16 fp32 lanes.
struct V512 {
  using reg = __m512;
  static constexpr int kLanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};

// Lanes of this ISA's widest vector (chunk widths: see XLayout in dispatch.cpp).
constexpr int64_t kLanes = 16;

// Vector registers (the BSR register passes in batched.h size themselves by it).
constexpr int kRegs = 32;

// 8-bit CSR batched products walk segment-major once the activation chunk outgrows L1, at
// 32-lane chunks (batch > 16). Zen 4 (AVX-512, 2 threads, same-process A/B against row by
// row): 50% and 70% at batch 32-128 1.03-1.38x faster on the issue-4 shapes (50% at 128
// 1.07-1.17x -> 1.30-1.62x dense); at 16 lanes 0.78-1.13x, so those stay row by row
// (benchmarks/RESULTS.md, "AVX-512: 8-bit CSR segment-major").
constexpr bool kSegmentMajor = true;
constexpr int kSegmentMajorMinWidth = 32;

// CSR weights broadcast in registers at batch > 8 (Bcast8Sums512, batched.h), and at batch
// 2-8 (Bcast8Sums, four chains) on layers of at most kWidth8BroadcastMaxIn inputs: Zen 4,
// same-process A/B against dot_batched at 50-90%, batch 2 and 8: 1.02-1.24x faster at 384
// to 1536 inputs, 0.90-1.09x at 2048-4096 (50%: 0.90-0.98x) (benchmarks/RESULTS.md).
constexpr bool kRegisterBroadcast = true;
constexpr int64_t kWidth8BroadcastMaxIn = 1536;

// Independent accumulator chains in the batched dot products (batched.h); 8 not measured
// on an AVX-512 machine yet.
constexpr int kChains = 4;

// Calls f(Tag<vector>, integral_constant<vectors per chunk>) for a chunk width. Width 8
// uses ymm (AVX-512VL encodings): half the cost of a padded zmm chunk on cores that
// split zmm operations in two.
template <class F>
inline void with_width(int64_t width, const F& f) {
  if (width <= 8) {
    f(Tag<V256>{}, std::integral_constant<int, 1>{});
  } else if (width <= 16) {
    f(Tag<V512>{}, std::integral_constant<int, 1>{});
  } else if (width <= 32) {
    f(Tag<V512>{}, std::integral_constant<int, 2>{});
  } else {
    f(Tag<V512>{}, std::integral_constant<int, 4>{});
  }
}
