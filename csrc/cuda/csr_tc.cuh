// The CSR tensor-core kernels (csrc/cuda/spmm_csr_tc.cu), for the dispatch in spmm_csr.cu.
// Variant k is an index of that file's shape table.
#pragma once

#include <cstdint>
#include <string>

#include "kernels.h"

namespace sparseprune {
namespace cuda {
namespace csr_tc {

int count();
// "tc:BATCH", the batch columns of variant k's CTA tile (its rows are 128 weight rows).
std::string name(int k);
// The variant whose CTA tile has this many batch columns, or -1.
int find(int batch);
// Whether variant k can run this problem: fp16/bf16, uint16 column indices, in_features a
// multiple of 8, x, values and indices 16-byte aligned, grid limits.
bool fits(int k, const Dense& d, const Csr& w);
// Bytes of fp32 split-K partial sums variant k needs (0 when the K walk is not split).
int64_t scratch_bytes(int k, const Dense& d);
// Runs variant k; w.scratch holds scratch_bytes(k, d) bytes.
void launch(int k, const Dense& d, const Csr& w, cudaStream_t stream);

}  // namespace csr_tc
}  // namespace cuda
}  // namespace sparseprune
