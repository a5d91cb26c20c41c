// CUDA registrations of the sparseprune ops (schemas in csrc/ops.cpp), built only against a
// CUDA build of torch. The glue checks what is O(1) to check without a device sync (dtypes,
// shapes, devices, compute capability), lays out the activations the kernels read, and
// launches the torch-free kernels of csrc/cuda/*.cu on torch's current stream. Index
// contents are validated when a packed weight is constructed (sparseprune.formats); the
// kernels clamp offsets and columns, so a bad index cannot read outside the tensors.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/kernels.h"

namespace sparseprune {
namespace {

namespace cu = sparseprune::cuda;

// grid.y covers the batch in tiles of at most 64 rows.
constexpr int64_t kMaxBatch = int64_t{65535} * 32;

cu::DType dtype_of(const char* op, const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return cu::DType::f32;
    case at::kHalf:
      return cu::DType::f16;
    case at::kBFloat16:
      return cu::DType::bf16;
    default:
      TORCH_CHECK_TYPE(false, op, ": x must be float32, float16 or bfloat16 on CUDA, got ",
                       x.scalar_type());
  }
  return cu::DType::f32;
}

// Numbers in messages go through std::to_string, never through an ostream: on a CUDA
// machine we built on (its own GCC, torch 2.11 + cu130), streaming an integer from this
// library crashed inside c10::str, while strings streamed fine.
std::string num(int64_t v) { return std::to_string(v); }

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device(), "; move the packed weight with .to(x.device)");
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType dtype, int64_t size, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", name,
                    " must be 1-D with ", num(size), " elements, got shape ", shape_str(t));
  check_device(op, name, t, x);
}

// Contiguous, and 16-byte aligned for the kernels' vector loads (a view into the middle of
// a tensor may not be; a fresh copy from the caching allocator is).
at::Tensor aligned(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

struct Problem {
  at::Tensor x2, xt, bias, y2;
  std::vector<int64_t> out_shape;
  cu::Dense dense;
  bool empty = false;  // nothing to launch: y is already final
};

Problem make_problem(const char* op, const at::Tensor& x, const at::Tensor& weights,
                     const std::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension, got a scalar");
  TORCH_CHECK(x.is_cuda(), op, ": x is on ", x.device(), " but the packed weight is on ",
              weights.device(), "; move x (or the weight) so both are on one device");
  const cu::DType dtype = dtype_of(op, x);
  TORCH_CHECK_TYPE(weights.scalar_type() == x.scalar_type(), op, ": weight values are ",
                   weights.scalar_type(), " but x is ", x.scalar_type(),
                   "; convert one of them");
  check_device(op, "the weight", weights, x);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": out_features must be >= 0, got ", num(out_features));
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(x.get_device());
  TORCH_CHECK(prop->major >= 8, op, ": the CUDA kernels need compute capability 8.0 or newer "
              "(they are built for sm_80 and sm_90); ", prop->name, " is sm_", num(prop->major),
              num(prop->minor));

  Problem p;
  const int64_t in = x.size(-1);
  TORCH_CHECK_VALUE(in <= INT_MAX, op, ": in_features must be < 2^31, got ", num(in));
  int64_t batch = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) batch *= x.size(d);
  TORCH_CHECK_VALUE(batch <= kMaxBatch, op, ": at most ", num(kMaxBatch),
                    " rows of x per call on CUDA, got ", num(batch), "; split the batch");
  p.x2 = aligned(x.reshape({batch, in}));
  p.out_shape = x.sizes().vec();
  p.out_shape.back() = out_features;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias is ", b.scalar_type(),
                     " but x is ", x.scalar_type());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == out_features, op,
                      ": bias must have shape [", num(out_features), "], got ", shape_str(b));
    check_device(op, "bias", b, x);
    p.bias = b.contiguous();
  }
  p.y2 = at::empty({batch, out_features}, x.options());
  if (batch == 0 || out_features == 0) {
    p.empty = true;
  } else if (in == 0) {
    p.empty = true;
    if (p.bias.defined()) {
      p.y2.copy_(p.bias.unsqueeze(0).expand({batch, out_features}));
    } else {
      p.y2.zero_();
    }
  }
  p.dense = cu::Dense{p.x2.data_ptr(), p.bias.defined() ? p.bias.data_ptr() : nullptr,
                      p.y2.data_ptr(), batch, in, out_features, dtype};
  return p;
}

// x^T for a kernel that reads it (the CUDA-core kernels, at larger batch sizes: see
// cuda/kernels.h).
const void* transposed_x(Problem& p, bool reads_xt) {
  if (!reads_xt || !cu::wants_transposed_x(p.dense.batch)) return nullptr;
  const int64_t batch = p.dense.batch, padded = cu::padded_batch(batch);
  p.xt = at::empty({p.dense.in_features, padded}, p.x2.options());
  p.xt.narrow(1, 0, batch).copy_(p.x2.t());
  if (padded > batch) p.xt.narrow(1, batch, padded - batch).zero_();
  return p.xt.data_ptr();
}

at::Tensor finish(const Problem& p, cudaError_t err) {
  C10_CUDA_CHECK(err);
  return p.y2.view(p.out_shape);
}

// SPARSEPRUNE_CUDA_CSR / _BSR / _NM24 force one kernel (benchmarks and tests; unset or
// "auto": chosen by shape and batch).
int variant_from_env(const char* name, int (*parse)(const char*), std::string (*names)()) {
  const char* env = std::getenv(name);
  const int variant = parse(env);
  TORCH_CHECK_VALUE(variant >= 0, name, " must be one of ", names(), "; got '",
                    std::string(env), "'");
  return variant;
}

at::Tensor linear_csr_cuda(const at::Tensor& x, const at::Tensor& row_offsets,
                           const at::Tensor& col_indices, const at::Tensor& values,
                           const std::optional<at::Tensor>& bias, int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_csr";
  Problem p = make_problem(op, x, values, bias, out_features);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nnz = values.numel();
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": values must be 1-D, got shape ",
                    shape_str(values));
  // Before the offsets' shape: an 8-bit CSR has one offset per (row, segment).
  TORCH_CHECK_TYPE(col_indices.scalar_type() != at::kByte, op,
                   ": 8-bit (uint8, segmented) CSR is a CPU layout; move the CSRWeight with "
                   ".to(device) (it repacks to 16-bit) or pack without index_bits=8");
  check_index_tensor(op, "row_offsets", row_offsets, at::kLong, out_features + 1, x);
  const bool idx16 = col_indices.scalar_type() == at::kUInt16;
  TORCH_CHECK_TYPE(idx16 || col_indices.scalar_type() == at::kInt, op,
                   ": col_indices must be uint16 or int32, got ", col_indices.scalar_type());
  check_index_tensor(op, "col_indices", col_indices, col_indices.scalar_type(), nnz, x);
  TORCH_CHECK_VALUE(!idx16 || p.dense.in_features <= 65536, op,
                    ": uint16 col_indices address at most 65536 columns, x has ",
                    num(p.dense.in_features));
  if (p.empty) return finish(p, cudaSuccess);
  const at::Tensor ro = row_offsets.contiguous();
  const at::Tensor ci = aligned(col_indices);
  const at::Tensor vals = aligned(values);
  cu::Csr w{ro.data_ptr<int64_t>(), ci.data_ptr(), vals.data_ptr(), nnz, idx16};
  w.variant = variant_from_env("SPARSEPRUNE_CUDA_CSR", cu::csr_variant, cu::csr_variant_names);
  const void* xt = transposed_x(p, cu::csr_reads_xt(p.dense, w));
  at::Tensor scratch;
  const int64_t scratch_bytes = cu::csr_scratch_bytes(p.dense, w);
  if (scratch_bytes > 0) {
    scratch = at::empty({scratch_bytes}, p.x2.options().dtype(at::kByte));
    w.scratch = scratch.data_ptr();
  }
  return finish(p, cu::linear_csr(p.dense, xt, w, at::cuda::getCurrentCUDAStream()));
}

at::Tensor linear_bsr_cuda(const at::Tensor& x, const at::Tensor& block_row_offsets,
                           const at::Tensor& block_col_indices, const at::Tensor& blocks,
                           const std::optional<at::Tensor>& bias, int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_bsr";
  Problem p = make_problem(op, x, blocks, bias, out_features);
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK_VALUE(blocks.dim() == 3 && blocks.size(1) >= 1 && blocks.size(2) >= 1, op,
                    ": blocks must have shape [nnzb, bh, bw] with bh, bw >= 1, got ",
                    shape_str(blocks));
  const int64_t nnzb = blocks.size(0), bh = blocks.size(1), bw = blocks.size(2);
  TORCH_CHECK_VALUE(bh <= 4096 && bw <= 4096, op, ": blocks larger than 4096 on a side are "
                    "not supported on CUDA, got ", num(bh), "x", num(bw));
  const int64_t block_rows = (out_features + bh - 1) / bh;
  check_index_tensor(op, "block_row_offsets", block_row_offsets, at::kLong, block_rows + 1, x);
  check_index_tensor(op, "block_col_indices", block_col_indices, at::kInt, nnzb, x);
  if (p.empty) return finish(p, cudaSuccess);
  const at::Tensor bro = block_row_offsets.contiguous();
  const at::Tensor bci = block_col_indices.contiguous();
  const at::Tensor blk = aligned(blocks);
  cu::Bsr w{bro.data_ptr<int64_t>(), bci.data_ptr<int32_t>(), blk.data_ptr(), nnzb, bh, bw};
  w.variant = variant_from_env("SPARSEPRUNE_CUDA_BSR", cu::bsr_variant, cu::bsr_variant_names);
  const bool cuda_core =
      std::string(cu::bsr_path(p.dense.dtype, bh, bw, p.dense.in_features)) == "cuda_core";
  const void* xt = transposed_x(p, cuda_core);
  return finish(p, cu::linear_bsr(p.dense, xt, w, at::cuda::getCurrentCUDAStream()));
}

at::Tensor linear_nm_cuda(const at::Tensor& x, const at::Tensor& values,
                          const at::Tensor& metadata, const std::optional<at::Tensor>& bias,
                          int64_t n, int64_t m) {
  constexpr const char* op = "sparseprune::linear_nm";
  TORCH_CHECK_VALUE(m >= 2 && m <= 32 && n >= 1 && n < m, op,
                    ": need 1 <= n < m <= 32, got n=", num(n), " m=", num(m));
  TORCH_CHECK_VALUE(values.dim() == 2, op, ": values must be 2-D [out, slots], got shape ",
                    shape_str(values));
  const int64_t out_features = values.size(0);
  Problem p = make_problem(op, x, values, bias, out_features);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t in = p.dense.in_features;
  const int64_t slots = (in + m - 1) / m * n;
  TORCH_CHECK_VALUE(values.size(1) == slots, op, ": values must have ", num(slots),
                    " slots per row for in_features=", num(in), " at ", num(n), ":", num(m),
                    ", got ", num(values.size(1)));
  const int64_t bits = m <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(m - 1));
  const int64_t row_bytes = (slots * bits + 7) / 8;
  TORCH_CHECK_TYPE(metadata.scalar_type() == at::kByte, op, ": metadata must be uint8, got ",
                   metadata.scalar_type());
  TORCH_CHECK_VALUE(metadata.dim() == 2 && metadata.size(0) == out_features &&
                        metadata.size(1) == row_bytes,
                    op, ": metadata must have shape [", num(out_features), ", ", num(row_bytes),
                    "], got ", shape_str(metadata));
  check_device(op, "metadata", metadata, x);
  if (p.empty) return finish(p, cudaSuccess);
  const at::Tensor vals = aligned(values);
  const at::Tensor meta = aligned(metadata);
  cu::NM w{vals.data_ptr(), meta.data_ptr<uint8_t>(), n, m};
  w.variant =
      variant_from_env("SPARSEPRUNE_CUDA_NM24", cu::nm24_variant, cu::nm24_variant_names);
  const bool cuda_core = std::string(cu::nm_path(p.dense.dtype, n, m, in)) == "cuda_core";
  const void* xt = transposed_x(p, cuda_core);
  at::Tensor scratch;
  const int64_t scratch_bytes = cu::nm_scratch_bytes(p.dense, w);
  if (scratch_bytes > 0) {
    scratch = at::empty({scratch_bytes}, p.x2.options().dtype(at::kByte));
    w.scratch = scratch.data_ptr();
  }
  return finish(p, cu::linear_nm(p.dense, xt, w, at::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseprune, CUDA, m) {
  m.impl("linear_csr", &linear_csr_cuda);
  m.impl("linear_bsr", &linear_bsr_cuda);
  m.impl("linear_nm", &linear_nm_cuda);
}

}  // namespace sparseprune
