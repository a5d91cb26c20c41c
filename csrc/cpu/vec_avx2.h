// Vectors for the shared kernel bodies; include only from *_avx2.cpp, inside an
// anonymous namespace (see the linkage note in kernels.h).
#pragma once

#include "cpu/vec256.h"
#include "cpu/transpose_avx2.h"

// Lanes of this ISA's widest vector (chunk widths: see XLayout in dispatch.cpp).
constexpr int64_t kLanes = 8;

// Vector registers (the BSR register passes in batched.h size themselves by it).
constexpr int kRegs = 16;

// 8-bit CSR batched products walk segment-major once the activation chunk outgrows L1,
// at chunks of at least kSegmentMajorMinWidth lanes (measured on an AVX2-only Zen 3
// (csr_rows.h)).
constexpr bool kSegmentMajor = true;
constexpr int kSegmentMajorMinWidth = 16;

// Independent accumulator chains in the batched dot products over activations in L1
// (batched.h: dot_batched): two FMA pipes x 4 cycles of latency (Zen 3, one thread: 2:4 at
// batch 128 1.15-1.35x faster than with 4).
constexpr int kChains = 8;

// CSR products at chunk width 16 and 32 (batch > 8) read eight weights per load and
// broadcast them in registers (batched.h: Bcast8Sums).
constexpr bool kRegisterBroadcast = true;
// Not at width 8 (batch 2-8): not measured on an AVX2 machine (vec_avx512.h).
constexpr int64_t kWidth8BroadcastMaxIn = 0;

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
