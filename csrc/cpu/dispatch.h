// Runtime choice of the instruction set: detected once, overridable by the environment
// variable SPARSEPRUNE_ISA=ref|avx2|avx512 or by set_isa() (tests force every ISA the
// machine has, so the AVX2 path is exercised on an AVX-512 machine).
#pragma once

#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace sparseprune {
namespace cpu {

enum class Isa : int { ref = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Throws std::invalid_argument for an unknown name.
Isa parse_isa(const std::string& name);

// The best ISA this CPU and OS support.
Isa detected_isa();
// Every ISA this machine can run, from ref upwards.
std::vector<Isa> supported_isas();
// The ISA kernels run with now. The first call reads SPARSEPRUNE_ISA; it throws
// std::invalid_argument if the variable names an unknown or unsupported ISA.
Isa active_isa();
// Throws std::invalid_argument if this machine cannot run `isa`.
void set_isa(Isa isa);

struct KernelTable {
  CsrKernel csr;
  XLayout csr_x;
  BsrKernel bsr;
  XLayout bsr_x;
  NMKernel nm;
  XLayout nm_x;
  PackFn pack;  // fills the packed activations of every layout above
  NMTilesKernel nm_tiles;   // null where the ISA has none
  int64_t nm_tiles_window;  // columns per window (rows per tile) of nm_tiles
  // Smallest batch nm_tiles runs at: below it, transposing the weight tiles costs more than
  // the faster inner loop gains (measured: ops.cpp).
  int64_t nm_tiles_min_batch;
  // The same kernel over a copy made once per weight (fp32, m dividing the window); null
  // where the ISA has none (the scalar reference). Worth its copy for batches of
  // nm_tiles_cached_min_batch .. nm_tiles_cached_max_batch rows of x (outside, the plain op
  // is as fast or faster; measured: dispatch.cpp).
  NMTilesPackFn nm_tiles_pack;
  NMTilesCachedKernel nm_tiles_cached;
  int64_t nm_tiles_cached_min_batch, nm_tiles_cached_max_batch;
  // Batch-1 CSR through its bitmap view (AVX-512 CPUs run the AVX2 kernel: an AVX-512 one
  // is yet to be written and measured).
  CsrBitmapKernel csr_bitmap;
};

// Kernels for `isa`; patterns without a kernel for it use the scalar reference.
const KernelTable& kernels_for(Isa isa);
inline const KernelTable& active_kernels() { return kernels_for(active_isa()); }

// Per-core L2 bytes as the OS reports them (sysconf), 0 where it does not.
int64_t l2_bytes();

// The activation layout of a CSR product with in_features columns: the table's, except
// that 16- and 32-bit rows (not 8-bit segmented ones) take chunks of fewer vectors, down
// to 16 lanes, while a chunk would fill more than half of l2_bytes().
XLayout csr_layout(const KernelTable& kernels, bool segmented, int64_t in_features,
                   int64_t l2);

}  // namespace cpu
}  // namespace sparseprune
