#include "cpu/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include <unistd.h>

namespace sparseprune {
namespace cpu {
namespace {

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
  __builtin_cpu_init();
  switch (isa) {
    case Isa::ref:
      return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("popcnt");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("popcnt");
  }
  return false;
#else
  return isa == Isa::ref;
#endif
}

constexpr int kUnset = -1;
std::atomic<int> g_active{kUnset};
std::once_flag g_env_once;

void check_supported(Isa isa) {
  if (!cpu_has(isa)) {
    throw std::invalid_argument(std::string("sparseprune: this CPU cannot run the '") +
                                isa_name(isa) + "' kernels (best available: '" +
                                isa_name(detected_isa()) + "')");
  }
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::ref:
      return "ref";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::ref, Isa::avx2, Isa::avx512}) {
    if (name == isa_name(isa)) return isa;
  }
  throw std::invalid_argument("sparseprune: unknown ISA '" + name +
                              "'; expected one of ref, avx2, avx512");
}

Isa detected_isa() {
  static const Isa best = cpu_has(Isa::avx512) ? Isa::avx512
                          : cpu_has(Isa::avx2) ? Isa::avx2
                                               : Isa::ref;
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::ref, Isa::avx2, Isa::avx512}) {
    if (cpu_has(isa)) out.push_back(isa);
  }
  return out;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_acquire);
  if (v != kUnset) return static_cast<Isa>(v);
  std::call_once(g_env_once, [] {
    Isa isa = detected_isa();
    if (const char* env = std::getenv("SPARSEPRUNE_ISA"); env != nullptr && *env != '\0') {
      try {
        isa = parse_isa(env);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("SPARSEPRUNE_ISA: ") + e.what());
      }
      check_supported(isa);
    }
    int expected = kUnset;
    g_active.compare_exchange_strong(expected, static_cast<int>(isa));
  });
  return static_cast<Isa>(g_active.load(std::memory_order_acquire));
}

void set_isa(Isa isa) {
  check_supported(isa);
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

const KernelTable& kernels_for(Isa isa) {
  constexpr XLayout as_is{};
  static const KernelTable ref{spmm_csr_ref, as_is, spmm_bsr_ref, as_is,
                               spmm_nm_ref,  as_is, pack_x, nullptr, 0, 0,
                               nullptr,      nullptr, 0, 0, spmm_csr_bitmap_ref};
  // Chunks of at most 32 batch rows keep a chunk [in][width] within L2 for in <= 4096.
  constexpr XLayout avx2_x{8, 4, 8, true}, avx512_x{16, 2, 8, true};
  // The AVX2 row tiles only when forced (SPARSEPRUNE_NM=tiles): on an AVX2-only Zen 3 the
  // batched body (vectorized decode, column tiles) beat them at every measured shape and
  // batch 128-256 but one (1.15-1.65x; RESULTS.md, "AVX2-only machine"). They had been the
  // default from batch 128 after a Zen 4 run forced to AVX2, against the older batched body.
  constexpr int64_t kAvx2TilesOff = INT64_MAX;
  // Their cached copies (opt-in, sparseprune.tile_cache) at batch 2-24: on the Zen 3 VM,
  // 2:4 and 1:4 on the five issue-4 shapes, 1.06-2.19x faster than the plain op at batch
  // 2-4 (its row kernel included), 1.13-1.74x at 8-12, 0.91-1.32x at 16-24, 0.79-1.11x at
  // 32 and 0.77-1.40x at 1, where the in-lane batch-1 kernel wins for 2:4 (RESULTS.md,
  // "AVX2: cached N:M row tiles").
  constexpr int64_t kAvx2CachedMinBatch = 2, kAvx2CachedMaxBatch = 24;
  static const KernelTable avx2{spmm_csr_avx2, avx2_x, spmm_bsr_avx2, avx2_x,
                                spmm_nm_avx2,  avx2_x, pack_x_avx2, spmm_nm_tiles_avx2, 8,
                                kAvx2TilesOff, nm_tiles_pack_avx2, spmm_nm_tiles_cached_avx2,
                                kAvx2CachedMinBatch, kAvx2CachedMaxBatch, spmm_csr_bitmap_avx2};
  static const KernelTable avx512{spmm_csr_avx512, avx512_x, spmm_bsr_avx512, avx512_x,
                                  spmm_nm_avx512,  avx512_x, pack_x_avx512,
                                  spmm_nm_tiles_avx512, 16, 8,
                                  nm_tiles_pack_avx512, spmm_nm_tiles_cached_avx512,
                                  1, INT64_MAX, spmm_csr_bitmap_avx2};
  switch (isa) {
    case Isa::avx512:
      return avx512;
    case Isa::avx2:
      return avx2;
    case Isa::ref:
      break;
  }
  return ref;
}

int64_t l2_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{0};
  }();
  return bytes;
#else
  return 0;
#endif
}

// A 16- or 32-bit CSR row loads the activations of each nonzero straight from the chunk,
// at columns all over it: once the chunk outgrows the L2 beside the streamed weights,
// those loads go to L3. Zen 3 (512 KB L2), 90% at batch 32-256 on 4096x4096 and 768x3072:
// 16 lanes instead of 32 ran 1.02-1.45x faster (benchmarks/RESULTS.md). The 8-bit rows walk
// the chunk segment by segment and keep the wide chunk (70%: 16 lanes 0.7-0.8x).
XLayout csr_layout(const KernelTable& kernels, bool segmented, int64_t in_features,
                   int64_t l2) {
  XLayout layout = kernels.csr_x;
  if (segmented || l2 <= 0 || layout.lanes == 0) return layout;
  while (layout.lanes * layout.max_vectors > 16 &&
         layout.lanes * layout.max_vectors * in_features * int64_t{4} > l2 / 2)
    layout.max_vectors /= 2;
  return layout;
}

}  // namespace cpu
}  // namespace sparseprune
