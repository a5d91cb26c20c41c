// The GEMM-shaped 2:4 tensor-core kernels (csrc/cuda/spmm_nm24_gemm.cu), for the dispatch in
// spmm_nm.cu. Variant k is an index of that file's shape table.
#pragma once

#include <cstdint>
#include <string>

#include "kernels.h"

namespace sparseprune {
namespace cuda {
namespace gemm24 {

int count();
// "gemm:ROWSxBATCH", the CTA tile of variant k.
std::string name(int k);
// The variant with this CTA tile, or -1.
int find(int rows, int batch);
// Whether variant k can run this problem on the current device (in_features % 64 == 0, grid
// limits, shared memory the device lets a block opt in to).
bool fits(int k, const Dense& d);
// The number of K splits variant k uses for this problem on the current device.
int64_t splits(int k, const Dense& d);
// Bytes of fp32 partial sums variant k needs (0 when it does not split K).
int64_t scratch_bytes(int k, const Dense& d);
// Runs variant k; w.scratch holds scratch_bytes(k, d) bytes.
void launch(int k, const Dense& d, const NM& w, cudaStream_t stream);

}  // namespace gemm24
}  // namespace cuda
}  // namespace sparseprune
