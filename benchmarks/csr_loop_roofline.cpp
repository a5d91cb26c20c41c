// The AVX2 CSR batched loop (csrc/cpu/batched.h) against the FMA ceiling of this CPU,
// single-threaded, without torch:
//
//   cmake --build build/cmake --target csr_loop_roofline && ./build/cmake/csr_loop_roofline
//
// Part 1 times 10 independent chains of a 256-bit FMA in registers. Part 2 times one output
// row's batched sum (32 rows of random sorted columns, repeated; the minimum of interleaved
// rounds) with the plain loop (dot_batched, 8 chains: per entry a broadcast load of the
// value, a column load and NV activation loads) and with Bcast8Sums (values and columns of
// 8 entries per load, broadcast by permutes), in ns per 8-wide FMA, comparable with part 1
// (benchmarks/RESULTS.md, "AVX2: CSR weights broadcast in registers").
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {
namespace {
#include "cpu/vec_avx2.h"

#include "cpu/batched.h"
}  // namespace
}  // namespace cpu
}  // namespace sparseprune

namespace {

using namespace sparseprune::cpu;
using Clock = std::chrono::steady_clock;

double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

double fma_ns() {
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    int64_t n = 50000000;
    const auto t0 = Clock::now();
    asm volatile(
        "vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n"
        "vxorps %%ymm2, %%ymm2, %%ymm2\n vxorps %%ymm3, %%ymm3, %%ymm3\n"
        "vxorps %%ymm4, %%ymm4, %%ymm4\n vxorps %%ymm5, %%ymm5, %%ymm5\n"
        "vxorps %%ymm6, %%ymm6, %%ymm6\n vxorps %%ymm7, %%ymm7, %%ymm7\n"
        "vxorps %%ymm8, %%ymm8, %%ymm8\n vxorps %%ymm9, %%ymm9, %%ymm9\n"
        "1:\n"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n"
        "dec %0\n jnz 1b\n"
        : "+r"(n)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "cc");
    best = std::min(best, ns_since(t0) / (50000000.0 * 10));
  }
  return best;
}

// ns per 8-wide FMA of the plain loop and of Bcast8Sums, width 8 * NV, rows of `per`
// entries among `ncols` columns.
template <int NV, typename I>
void loop(const char* what, int ncols, int per) {
  constexpr int W = NV * 8, kRows = 32;
  std::vector<float> xt(static_cast<size_t>(ncols) * W);
  for (size_t i = 0; i < xt.size(); ++i) xt[i] = 1e-3f * static_cast<float>(i % 97);
  std::mt19937 gen(1);
  std::vector<I> cols(kRows * per);
  std::vector<float> vals(kRows * per);
  std::vector<int> perm(ncols);
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < ncols; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), gen);
    std::sort(perm.begin(), perm.begin() + per);
    for (int j = 0; j < per; ++j) {
      cols[r * per + j] = static_cast<I>(perm[j]);
      vals[r * per + j] = 1e-3f * static_cast<float>(j);
    }
  }
  std::vector<float> out(kRows * W, 0.f);
  const int reps = std::max(1, 2000000 / (kRows * per));
  double best[2] = {1e30, 1e30};
  for (int round = 0; round < 15; ++round) {
    for (int m = 0; m < 2; ++m) {
      const auto t0 = Clock::now();
      for (int it = 0; it < reps; ++it) {
        for (int r = 0; r < kRows; ++r) {
          const I* c = cols.data() + r * per;
          const float* v = vals.data() + r * per;
          float* o = out.data() + r * W;
          if (m == 0) {
            dot_batched<V256, NV, I, float, true, 8>(c, v, per, xt.data(), o);
          } else {
            Bcast8Sums<NV, I, float> sums(o);
            sums.add(c, v, per, xt.data());
            sums.store(o);
          }
        }
      }
      best[m] = std::min(best[m], ns_since(t0) / (static_cast<double>(reps) * kRows * per * NV));
    }
  }
  std::printf("%-34s plain %.3f  broadcast %.3f ns per 8-wide FMA (%.2fx)\n", what, best[0],
              best[1], best[0] / best[1]);
}

}  // namespace

int main() {
  const double peak = fma_ns();
  std::printf("FMA alone: %.3f ns per 8-wide FMA (%.1f GFLOP/s per thread)\n", peak,
              16.0 / peak);
  loop<4, uint8_t>("width 32, 8-bit, 256 cols, 50%", 256, 128);
  loop<4, uint8_t>("width 32, 8-bit, 256 cols, 75%", 256, 64);
  loop<4, uint8_t>("width 32, 8-bit, 256 cols, 87.5%", 256, 32);
  loop<2, uint8_t>("width 16, 8-bit, 256 cols, 50%", 256, 128);
  loop<2, uint16_t>("width 16, 16-bit, 3072 cols, 90%", 3072, 307);
  loop<4, uint16_t>("width 32, 16-bit, 1536 cols, 90%", 1536, 154);
  return 0;
}
