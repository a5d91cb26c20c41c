// The GEMM-shaped BSR tensor-core kernels (csrc/cuda/spmm_bsr_gemm.cu), for the dispatch in
// spmm_bsr.cu. Variant k is an index of that file's shape table.
#pragma once

#include <cstdint>
#include <string>

#include "kernels.h"

namespace sparseprune {
namespace cuda {
namespace bsr_gemm {

int count();
// "gemm:BATCH", the batch columns of variant k's CTA tile (its rows are one block row).
std::string name(int k);
// The variant whose CTA tile has this many batch columns, or -1.
int find(int batch);
// Whether variant k can run this problem: fp16/bf16, bh in {16, 32, 48, 64}, bw a multiple
// of 16, in_features a multiple of 8, x and blocks 16-byte aligned, grid limits.
bool fits(int k, const Dense& d, const Bsr& w);
// Runs variant k.
void launch(int k, const Dense& d, const Bsr& w, cudaStream_t stream);

}  // namespace bsr_gemm
}  // namespace cuda
}  // namespace sparseprune
