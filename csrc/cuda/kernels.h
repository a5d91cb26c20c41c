// The torch-free interface of the CUDA kernels (csrc/cuda/*.cu): raw device pointers and a
// stream, so nvcc compiles them without torch's headers (see DESIGN.md, "CUDA on this
// machine"). csrc/cuda/ops_cuda.cpp binds them to torch.ops.sparseprune.
//
// Every launcher computes y[b, o] = sum_k x[b, k] * W[o, k] + bias[o] with x [batch, in]
// and y [batch, out] row-major, values and activations of one dtype, fp32 accumulation.
// Index contents are trusted (sparseprune.formats validates them when a weight is built),
// but a bad index never reads outside x: offsets and columns are clamped in the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace sparseprune {
namespace cuda {

enum class DType { f32, f16, bf16 };

struct Dense {
  const void* x;     // [batch, in]
  const void* bias;  // [out] or nullptr
  void* y;           // [batch, out]
  int64_t batch;
  int64_t in_features;
  int64_t out_features;
  DType dtype;
};

// Kernels for batch > kSmallBatch read the activations transposed, xt [in, batch]; the
// binding makes that copy (a small fraction of the product at those batch sizes).
// xt is [in, padded_batch(batch)] (pad columns zero), so rows are whole 16-byte vectors.
constexpr int64_t kSmallBatch = 8;
inline bool wants_transposed_x(int64_t batch) { return batch > kSmallBatch; }
inline int64_t padded_batch(int64_t batch) { return (batch + 7) / 8 * 8; }

struct Csr {
  const int64_t* row_offsets;  // [out + 1]
  const void* col_indices;     // uint16 (in <= 65536) or int32 [nnz]
  const void* values;          // [nnz]
  int64_t nnz;
  bool idx16;
  int variant = 0;          // 0 automatic, else csr_variant(...)
  void* scratch = nullptr;  // csr_scratch_bytes(d, *this) bytes, 16-byte aligned
};

struct Bsr {
  const int64_t* block_row_offsets;  // [ceil(out / bh) + 1]
  const int32_t* block_col_indices;  // [nnzb]
  const void* blocks;                // [nnzb, bh, bw]
  int64_t nnzb;
  int64_t bh, bw;
  int variant = 0;  // tensor-core kernel: 0 automatic, else bsr_variant(...)
};

struct NM {
  const void* values;      // [out, slots]
  const uint8_t* metadata;  // [out, row_bytes], slot s at bit s * bits
  int64_t n, m;
  int variant = 0;          // 2:4 tensor-core kernel: 0 automatic, else nm24_variant(...)
  void* scratch = nullptr;  // nm_scratch_bytes(d, *this) bytes, 16-byte aligned
};

// The 2:4 tensor-core kernel a name forces ("auto", "legacy" or "frag:ROWSxBATCH"; the
// binding reads it from SPARSEPRUNE_CUDA_NM24): its NM::variant, or -1 if unknown.
int nm24_variant(const char* spec);
std::string nm24_variant_names();
// The CSR kernel a name forces ("auto", "rows" or "tc:BATCH"; the binding reads it from
// SPARSEPRUNE_CUDA_CSR): its Csr::variant, or -1 if unknown.
int csr_variant(const char* spec);
std::string csr_variant_names();
// Whether linear_csr reads x^T for this problem (the row kernels above kSmallBatch; the
// tensor-core kernels read x as it is), and the bytes of scratch it needs (0: none).
bool csr_reads_xt(const Dense& d, const Csr& w);
int64_t csr_scratch_bytes(const Dense& d, const Csr& w);
// The BSR tensor-core kernel a name forces ("auto", "legacy" or "gemm:BATCH"; the binding
// reads it from SPARSEPRUNE_CUDA_BSR): its Bsr::variant, or -1 if unknown.
int bsr_variant(const char* spec);
std::string bsr_variant_names();
// Bytes of scratch linear_nm needs for this problem (0: none); the binding allocates them.
int64_t nm_scratch_bytes(const Dense& d, const NM& w);

// xt may be nullptr when !wants_transposed_x(d.batch) (for CSR: when !csr_reads_xt). The
// returned error is cudaGetLastError() after the launches (launch-configuration errors).
cudaError_t linear_csr(const Dense& d, const void* xt, const Csr& w, cudaStream_t stream);
cudaError_t linear_bsr(const Dense& d, const void* xt, const Bsr& w, cudaStream_t stream);
cudaError_t linear_nm(const Dense& d, const void* xt, const NM& w, cudaStream_t stream);

// Which path a problem takes (for tests and benchmarks): "tensor_core" or "cuda_core".
const char* bsr_path(DType dtype, int64_t bh, int64_t bw, int64_t in_features);
const char* nm_path(DType dtype, int64_t n, int64_t m, int64_t in_features);

}  // namespace cuda
}  // namespace sparseprune
