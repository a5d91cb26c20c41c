// Block-sparse (BSR) weights. Blocks whose sides are multiples of 16 run on the tensor
// cores (mma.sync m16n8k16, fp16/bf16): a warp owns a block row's bh rows and up to 32
// batch columns and walks a share of the row's blocks; the CTA's warps split the blocks
// and sum through shared memory, so a short block row still keeps several warps loading.
// At larger batch the GEMM-shaped kernels of spmm_bsr_gemm.cu take over (bsr_choice).
// Other blocks and fp32 take the CUDA-core row kernels of rows.cuh, which read a block row
// as rows of (value, column) pairs.
#include "bsr_gemm.cuh"
#include "rows.cuh"

namespace sparseprune {
namespace cuda {
namespace {

using detail::kWarp;

template <typename T>
struct BsrRows {
  const int64_t* __restrict__ block_row_offsets;
  const int32_t* __restrict__ block_cols;
  const T* __restrict__ blocks;
  int64_t nnzb;
  int bh, bw;
  int64_t in;

  __device__ __forceinline__ int64_t first_block(int64_t r) const {
    return min(max(__ldg(block_row_offsets + r / bh), int64_t{0}), nnzb);
  }
  __device__ __forceinline__ int64_t begin(int64_t) const { return 0; }
  __device__ __forceinline__ int64_t end(int64_t r) const {
    const int64_t last = min(__ldg(block_row_offsets + r / bh + 1), nnzb);
    return max(last - first_block(r), int64_t{0}) * bw;
  }
  // Pair e of row r: column j = e % bw of the row's (e / bw)-th block.
  __device__ __forceinline__ void get(int64_t r, int64_t e, float& v, int& col) const {
    const int64_t k = first_block(r) + e / bw;
    const int j = static_cast<int>(e % bw);
    const int64_t c = static_cast<int64_t>(__ldg(block_cols + k)) * bw + j;
    if (c >= 0 && c < in) {
      v = detail::load_float(blocks + (k * bh + r % bh) * bw + j);
      col = static_cast<int>(c);
    } else {  // padding columns of a last, partial block column
      v = 0.f;
      col = static_cast<int>(in - 1);
    }
  }
};

// Warps per CTA: 8 keep more loads in flight; 4 for tall blocks keep the reduction buffer
// under 48 KB of static shared memory.
template <int MF, int NF>
struct TcWarps {
  static constexpr int value = MF * NF <= 8 ? 8 : 4;
};

// One CTA per (block row, 8 * NF batch columns); bh = 16 * MF, bw a multiple of 16.
template <typename T, int MF, int NF>
__global__ __launch_bounds__(TcWarps<MF, NF>::value * kWarp) void bsr_tc(
    const int64_t* __restrict__ block_row_offsets, const int32_t* __restrict__ block_cols,
    const T* __restrict__ blocks, int64_t nnzb, int bw, const T* __restrict__ x,
    const T* __restrict__ bias, T* __restrict__ y, int64_t batch, int64_t in, int64_t out) {
  constexpr int W = TcWarps<MF, NF>::value;
  constexpr int BH = 16 * MF;
  __shared__ float partial[W - 1][MF][NF][4][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t br = blockIdx.x;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * 8 * NF;
  const int64_t kb = min(max(__ldg(block_row_offsets + br), int64_t{0}), nnzb);
  const int64_t ke = max(min(__ldg(block_row_offsets + br + 1), nnzb), kb);
  const int64_t col_blocks = (in + bw - 1) / bw;

  const T* xrow[NF];
  bool xok[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int64_t b = b0 + 8 * j + g;
    xok[j] = b < batch;
    xrow[j] = x + (xok[j] ? b : 0) * in;
  }

  float acc[MF][NF][4] = {};
  for (int64_t k = kb + warp; k < ke; k += W) {
    const int64_t cb = min(max(static_cast<int64_t>(__ldg(block_cols + k)), int64_t{0}),
                           col_blocks - 1);
    const T* blk = blocks + k * BH * bw;
    for (int ks = 0; ks < bw; ks += 16) {
      uint32_t a[MF][4];
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        const T* top = blk + (16 * i + g) * bw + ks + 2 * t;
        const T* bottom = top + 8 * bw;
        a[i][0] = detail::load_u32(top);
        a[i][1] = detail::load_u32(bottom);
        a[i][2] = detail::load_u32(top + 8);
        a[i][3] = detail::load_u32(bottom + 8);
      }
      const int64_t kc = cb * bw + ks + 2 * t;  // even; in is even on this path
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        const uint32_t bl = xok[j] && kc < in ? detail::load_u32(xrow[j] + kc) : 0u;
        const uint32_t bh = xok[j] && kc + 8 < in ? detail::load_u32(xrow[j] + kc + 8) : 0u;
#pragma unroll
        for (int i = 0; i < MF; ++i) detail::mma_16816<T>(acc[i][j], a[i], bl, bh);
      }
    }
  }

  if (warp > 0) {
#pragma unroll
    for (int i = 0; i < MF; ++i)
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) partial[warp - 1][i][j][q][lane] = acc[i][j][q];
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < MF; ++i) {
#pragma unroll
    for (int j = 0; j < NF; ++j) {
#pragma unroll
      for (int w = 0; w < W - 1; ++w)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[i][j][q] += partial[w][i][j][q][lane];
      detail::store_tile(acc[i][j], bias, y, br * BH + 16 * i, b0 + 8 * j, out, batch, lane);
    }
  }
}

template <typename T, int MF>
void launch_tc(const Dense& d, const Bsr& w, cudaStream_t stream) {
  const int64_t block_rows = detail::ceil_div(d.out_features, w.bh);
  auto go = [&](auto nf) {
    constexpr int NF = decltype(nf)::value;
    const dim3 grid(static_cast<unsigned>(block_rows),
                    static_cast<unsigned>(detail::ceil_div(d.batch, 8 * NF)));
    bsr_tc<T, MF, NF><<<grid, TcWarps<MF, NF>::value * kWarp, 0, stream>>>(
        w.block_row_offsets, w.block_col_indices, static_cast<const T*>(w.blocks), w.nnzb,
        static_cast<int>(w.bw), static_cast<const T*>(d.x), static_cast<const T*>(d.bias),
        static_cast<T*>(d.y), d.batch, d.in_features, d.out_features);
  };
  if (d.batch <= 8) {
    go(std::integral_constant<int, 1>{});
  } else if (d.batch <= 16) {
    go(std::integral_constant<int, 2>{});
  } else if (d.batch <= 64) {
    go(std::integral_constant<int, 4>{});
  } else {
    go(std::integral_constant<int, 8>{});  // each block fragment feeds 8 mma per load
  }
}

bool tensor_core_ok(DType dtype, int64_t bh, int64_t bw, int64_t in_features) {
  return dtype != DType::f32 && bh % 16 == 0 && bh <= 64 && bw % 16 == 0 &&
         in_features % 2 == 0;
}

constexpr int kLegacy = 1;     // bsr_tc
constexpr int kFirstGemm = 2;  // bsr_gemm::launch(variant - kFirstGemm)
// The tensor-core kernel for this problem: a forced variant if it fits, else the measured
// choice (H200, benchmarks/cuda/bsr_sweep_h200_{1,2}.json: 16x16 and 32x32 blocks at 90%, five
// shapes, batch 32-512). bsr_tc to batch 32, and to 64 unless the layer has enough block rows
// for 64-column tiles to give every SM two CTAs; with 16-wide blocks (16-input steps) also
// while 64-column tiles would not; else the GEMM kernels, with 128-column tiles from batch 65
// once there are three CTAs per SM of them (fewer, larger tiles: less re-read of the blocks).
int bsr_choice(const Dense& d, const Bsr& w) {
  if (w.variant == kLegacy) return kLegacy;
  if (w.variant >= kFirstGemm) {
    return bsr_gemm::fits(w.variant - kFirstGemm, d, w) ? w.variant : kLegacy;
  }
  if (d.batch <= 32) return kLegacy;
  const int wide = bsr_gemm::find(128), narrow = bsr_gemm::find(64);
  const int64_t block_rows = detail::ceil_div(d.out_features, w.bh);
  const int64_t sms = detail::device_attr(cudaDevAttrMultiProcessorCount, 132);
  if (d.batch <= 64 && block_rows < 2 * sms) return kLegacy;
  if (w.bw % 32 != 0 && block_rows * detail::ceil_div(d.batch, 64) < 2 * sms) return kLegacy;
  if (d.batch > 64 && block_rows * detail::ceil_div(d.batch, 128) >= 3 * sms &&
      bsr_gemm::fits(wide, d, w)) {
    return kFirstGemm + wide;
  }
  return bsr_gemm::fits(narrow, d, w) ? kFirstGemm + narrow : kLegacy;
}

}  // namespace

int bsr_variant(const char* spec) {
  const std::string v = spec == nullptr ? "" : spec;
  if (v.empty() || v == "auto") return 0;
  if (v == "legacy") return kLegacy;
  for (int k = 0; k < bsr_gemm::count(); ++k) {
    if (v == bsr_gemm::name(k)) return kFirstGemm + k;
  }
  return -1;
}

std::string bsr_variant_names() {
  std::string names = "auto, legacy";
  for (int k = 0; k < bsr_gemm::count(); ++k) names += ", " + bsr_gemm::name(k);
  return names;
}

const char* bsr_path(DType dtype, int64_t bh, int64_t bw, int64_t in_features) {
  return tensor_core_ok(dtype, bh, bw, in_features) ? "tensor_core" : "cuda_core";
}

cudaError_t linear_bsr(const Dense& d, const void* xt, const Bsr& w, cudaStream_t stream) {
  return detail::by_dtype(d.dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (!std::is_same_v<T, float>) {
      if (tensor_core_ok(d.dtype, w.bh, w.bw, d.in_features)) {
        const int choice = bsr_choice(d, w);
        if (choice >= kFirstGemm) {
          bsr_gemm::launch(choice - kFirstGemm, d, w, stream);
          return cudaGetLastError();
        }
        switch (w.bh / 16) {
          case 1: launch_tc<T, 1>(d, w, stream); break;
          case 2: launch_tc<T, 2>(d, w, stream); break;
          case 3: launch_tc<T, 3>(d, w, stream); break;
          default: launch_tc<T, 4>(d, w, stream); break;
        }
        return cudaGetLastError();
      }
    }
    const BsrRows<T> rows{w.block_row_offsets, w.block_col_indices,
                          static_cast<const T*>(w.blocks), w.nnzb, static_cast<int>(w.bh),
                          static_cast<int>(w.bw), d.in_features};
    return detail::launch_rows<T>(d, xt, rows, stream);
  });
}

}  // namespace cuda
}  // namespace sparseprune
