// The ceiling of the N:M row-tile kernel (csrc/cpu/spmm_nm_avx512.cpp) on this CPU, and
// how close the kernel gets, single-threaded, without torch:
//
//   cmake --build build/cmake --target nm_tiles_roofline && ./build/cmake/nm_tiles_roofline
//
// Part 1 times the kernel's inner step in registers: 12 independent chains of a 512-bit
// FMA alone, and of a vpermps feeding an FMA (one stored slot of 16 output rows). Part 2
// times spmm_nm_tiles_avx512 on random N:M weights (the minimum of 30 calls) and reports ns
// per 512-bit FMA (one stored slot of 16 rows for one batch row), comparable with part 1;
// a dense product needs m / n times as many FMAs (benchmarks/RESULTS.md has the arithmetic).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/kernels.h"

namespace {

using namespace sparseprune::cpu;
using Clock = std::chrono::steady_clock;

double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

// ns per FMA of 12 chains; Permute 1 adds a vpermps (any of 16 lanes) in front of every
// FMA, 2 a vpermilps (within each 128-bit lane: a 2:4 or 1:4 group broadcast to all four
// lanes). Compiled for AVX-512 by attribute (the file has no ISA flags); main checks the CPU
// first.
template <int Permute>
__attribute__((noinline, target("avx512f,fma"))) double chain(long iters) {
  alignas(64) float seed[16 * 12];
  for (int i = 0; i < 16 * 12; ++i) seed[i] = 1e-3f * static_cast<float>(i);
  __m512 acc[12], xv[12];
  for (int b = 0; b < 12; ++b) {
    acc[b] = _mm512_setzero_ps();
    xv[b] = _mm512_load_ps(seed + 16 * b);
  }
  __m512i id = _mm512_set_epi32(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
  __m512 v = _mm512_set1_ps(1.0001f);
  const auto t0 = Clock::now();
  for (long i = 0; i < iters; ++i) {
    __asm__ volatile("" : "+v"(id), "+v"(v));  // keep the operands live, not hoisted
    for (int b = 0; b < 12; ++b) {
      const __m512 p = Permute == 1   ? _mm512_permutexvar_ps(id, xv[b])
                       : Permute == 2 ? _mm512_permutevar_ps(xv[b], id)
                                      : xv[b];
      acc[b] = _mm512_fmadd_ps(p, v, acc[b]);
    }
  }
  const double ns = ns_since(t0) / (static_cast<double>(iters) * 12);
  __m512 s = acc[0];
  for (int b = 1; b < 12; ++b) s = _mm512_add_ps(s, acc[b]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return ns;
}

double kernel_ns_per_fma(int64_t out, int64_t in, int64_t batch, int64_t n, int64_t m) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t slots = nm_slots_per_row(in, n, m), row_bytes = nm_meta_row_bytes(in, n, m);
  std::vector<float> vals(out * slots), x(batch * in), y(batch * out), bias(out);
  std::vector<uint8_t> meta(out * row_bytes);
  for (auto& v : vals) v = u(rng);
  for (auto& v : x) v = u(rng);
  for (auto& v : bias) v = u(rng);
  // Any bits are in-range in-group indices when m is a power of two (all that run here).
  for (auto& b : meta) b = static_cast<uint8_t>(rng());
  const Dense d{x.data(), bias.data(), y.data(), batch, in, out, DType::f32};
  const NM w{vals.data(), meta.data(), n, m};
  const NMTilesKernel kernel = kernels_for(Isa::avx512).nm_tiles;
  double best = 1e300;
  for (int r = 0; r < 30; ++r) {
    const auto t0 = Clock::now();
    kernel(d, w, 0, out);
    best = std::min(best, ns_since(t0));
  }
  return best / (static_cast<double>(batch) * out * slots / 16);
}

}  // namespace

int main() {
  if (detected_isa() != Isa::avx512) {
    std::printf("needs AVX-512\n");
    return 1;
  }
  const long iters = 20000000;
  chain<0>(iters / 10);  // warm up the clock
  std::printf("in registers, 12 chains: FMA alone %.3f ns, vpermps + FMA %.3f ns, "
              "vpermilps + FMA %.3f ns\n",
              chain<0>(iters), chain<1>(iters), chain<2>(iters));
  std::printf("| shape (out x in) | batch | pattern | ns per 512-bit FMA |\n|---|---|---|---|\n");
  const int64_t shapes[][2] = {{384, 384}, {1536, 384}, {384, 1536}, {3072, 768}, {4096, 4096}};
  const int64_t patterns[][2] = {{2, 4}, {1, 4}, {2, 8}, {4, 8}};
  for (const auto& s : shapes) {
    for (int64_t batch : {1, 8, 32, 128, 512, 4096}) {
      if (s[0] * s[1] * batch > int64_t{4096} * 4096 * 512) continue;
      for (const auto& p : patterns) {
        std::printf("| %lldx%lld | %lld | %lld:%lld | %.3f |\n", static_cast<long long>(s[0]),
                    static_cast<long long>(s[1]), static_cast<long long>(batch),
                    static_cast<long long>(p[0]), static_cast<long long>(p[1]),
                    kernel_ns_per_fma(s[0], s[1], batch, p[0], p[1]));
      }
    }
  }
  return 0;
}
