// BSR weights at large batch on the tensor cores, shaped as a GEMM: y^T [out, batch] = W x^T
// for one block row of W per CTA, mma.sync m16n8k16 with x read from its row-major
// [batch, in] layout as the B operand (KC inputs of one batch row are one column of B).
//
// bsr_tc (spmm_bsr.cu) loads every fragment straight from global memory, one block at a
// time per warp: at batch 128-512 it waits on L2 for each and ran at 0.46-1.03x dense fp16
// cuBLAS on an H200 with 32x32 blocks at 90% (a tenth of the FLOPs). Here a CTA of 4 warps
// owns a block row (bh = 16 MF rows) x BATCH columns and walks the row's blocks in steps of
// KC inputs (32, or 16 when bw is an odd multiple of 16): each step stages the block's
// bh x KC values and the BATCH x KC activations under it in shared memory by cp.async, S
// stages deep, and every warp reads its fragments with ldmatrix. Rows are XOR-swizzled in
// 16-byte chunks, so an ldmatrix phase (8 rows, one chunk each) hits 8 bank groups.
#include <type_traits>

#include "bsr_gemm.cuh"
#include "common.cuh"

namespace sparseprune {
namespace cuda {
namespace bsr_gemm {
namespace {

using detail::kWarp;

constexpr int kWarps = 4;  // along the batch; each owns all bh rows x 8 NF columns
// cp.async pipeline stages. Measured on an H200 (benchmarks/cuda/bsr_sweep_h200_2.json): 8
// stages were 0-40% slower than 4 at every shape and batch (the kernel is not waiting on
// load latency).
constexpr int kStages = 4;

// Batch columns per warp of each variant, in 8-column mma tiles (the CTA tile is
// 8 * kWarps * nf columns).
constexpr int kNf[] = {2, 4};
constexpr int kCount = sizeof(kNf) / sizeof(kNf[0]);

__host__ __device__ constexpr int stage_bytes(int mf, int nf, int kc) {
  return (16 * mf + 8 * kWarps * nf) * kc * 2;
}

template <typename T, int MF, int NF, int KC, int S>
__global__ __launch_bounds__(kWarps * kWarp) void bsr_gemm(
    const int64_t* __restrict__ block_row_offsets, const int32_t* __restrict__ block_cols,
    const T* __restrict__ blocks, int64_t nnzb, int bw, const T* __restrict__ x,
    const T* __restrict__ bias, T* __restrict__ y, int64_t batch, int64_t in, int64_t out) {
  constexpr int BH = 16 * MF, BATCH = 8 * kWarps * NF, CH = KC / 8;
  constexpr int kThreads = kWarps * kWarp, kABytes = BH * KC * 2;
  constexpr int kStage = stage_bytes(MF, NF, KC);
  static_assert(NF % 2 == 0, "KC = 16 loads the B fragments of two n-tiles per ldmatrix");
  extern __shared__ uint4 smem[];
  uint8_t* const base = reinterpret_cast<uint8_t*>(smem);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int wcol = warp * 8 * NF;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BATCH;
  const int64_t br = blockIdx.y;
  const int64_t kb = min(max(__ldg(block_row_offsets + br), int64_t{0}), nnzb);
  const int64_t ke = max(min(__ldg(block_row_offsets + br + 1), nnzb), kb);
  const int64_t col_blocks = (in + bw - 1) / bw;
  const int per_block = bw / KC;
  const int64_t steps = (ke - kb) * per_block;

  // Batch rows past `batch` and inputs past `in` (a last, partial block column) are
  // zero-filled; in % 8 == 0, so a 16-byte chunk is wholly inside or outside.
  auto load_stage = [&](int64_t s) {
    uint8_t* const st = base + static_cast<int>(s % S) * kStage;
    const int64_t k = kb + s / per_block;
    const int c = static_cast<int>(s % per_block);
    const int64_t cb = min(max(static_cast<int64_t>(__ldg(block_cols + k)), int64_t{0}),
                           col_blocks - 1);
    const T* const blk = blocks + k * BH * bw + c * KC;
#pragma unroll
    for (int it = 0; it < detail::ceil_div_c(BH * CH, kThreads); ++it) {
      const int q = tid + it * kThreads, rr = q / CH, ch = q % CH;
      if (q >= BH * CH) break;
      detail::cp_async16(st + detail::tile_off<KC>(rr, ch), blk + rr * bw + ch * 8, 16);
    }
    detail::stage_x_tile<BATCH, KC, kThreads>(st + kABytes, x, in, b0, batch,
                                               cb * bw + c * KC, in, tid);
  };

#pragma unroll
  for (int p = 0; p < S - 1; ++p) {
    if (p < steps) load_stage(p);
    detail::cp_async_commit();
  }
  float acc[MF][NF][4] = {};
  for (int64_t s = 0; s < steps; ++s) {
    detail::cp_async_wait<S - 2>();
    __syncthreads();  // step s landed for every thread; the buffer of step s - 1 is free
    if (s + S - 1 < steps) load_stage(s + S - 1);
    detail::cp_async_commit();
    const uint8_t* const st = base + static_cast<int>(s % S) * kStage;
    const uint8_t* const xs = st + kABytes;
    // B fragments of the step: for n-tile j, k-tile kk: bf[j][2 kk], bf[j][2 kk + 1].
    uint32_t bf[NF][CH];
    if constexpr (KC == 32) {
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        detail::ldmatrix_x4(bf[j], xs + detail::tile_off<KC>(wcol + 8 * j + (lane & 7), lane >> 3));
      }
    } else {
#pragma unroll
      for (int j = 0; j < NF; j += 2) {
        uint32_t r[4];
        const int rb = wcol + 8 * (j + (lane >> 4)) + (lane & 7);
        detail::ldmatrix_x4(r, xs + detail::tile_off<KC>(rb, (lane >> 3) & 1));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
    }
#pragma unroll
    for (int kk = 0; kk < KC / 16; ++kk) {
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        uint32_t a[4];
        const int row = 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8;
        detail::ldmatrix_x4(a, st + detail::tile_off<KC>(row, 2 * kk + (lane >> 4)));
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          detail::mma_16816<T>(acc[i][j], a, bf[j][2 * kk], bf[j][2 * kk + 1]);
        }
      }
    }
  }
  detail::cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      detail::store_tile(acc[i][j], bias, y, br * BH + 16 * i, b0 + wcol + 8 * j, out, batch,
                         lane);
}

__host__ __device__ constexpr int smem_bytes(int mf, int nf, int kc, int stages) {
  return stages * stage_bytes(mf, nf, kc);
}

template <typename T, int MF, int NF, int KC, int S>
void go(const Dense& d, const Bsr& w, cudaStream_t stream) {
  constexpr int kSmem = smem_bytes(MF, NF, KC, S);
  const auto kernel = bsr_gemm<T, MF, NF, KC, S>;
  // Above 48 KB; set on every launch so that every device gets it (host-side, no stream
  // work). A failure resurfaces as the launch error.
  if (kSmem > 48 * 1024) {
    (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  }
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(d.batch, 8 * kWarps * NF)),
                  static_cast<unsigned>(detail::ceil_div(d.out_features, w.bh)));
  kernel<<<grid, kWarps * kWarp, kSmem, stream>>>(
      w.block_row_offsets, w.block_col_indices, static_cast<const T*>(w.blocks), w.nnzb,
      static_cast<int>(w.bw), static_cast<const T*>(d.x), static_cast<const T*>(d.bias),
      static_cast<T*>(d.y), d.batch, d.in_features, d.out_features);
}

template <typename T, int NF>
void by_block(const Dense& d, const Bsr& w, cudaStream_t stream) {
  auto kc = [&](auto mf) {
    constexpr int MF = decltype(mf)::value;
    if (w.bw % 32 == 0) {
      go<T, MF, NF, 32, kStages>(d, w, stream);
    } else {
      go<T, MF, NF, 16, kStages>(d, w, stream);
    }
  };
  switch (w.bh / 16) {
    case 1: kc(std::integral_constant<int, 1>{}); break;
    case 2: kc(std::integral_constant<int, 2>{}); break;
    case 3: kc(std::integral_constant<int, 3>{}); break;
    default: kc(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace

int count() { return kCount; }

std::string name(int k) { return "gemm:" + std::to_string(8 * kWarps * kNf[k]); }

int find(int batch) {
  for (int k = 0; k < kCount; ++k) {
    if (8 * kWarps * kNf[k] == batch) return k;
  }
  return -1;
}

bool fits(int k, const Dense& d, const Bsr& w) {
  return k >= 0 && k < kCount && d.dtype != DType::f32 && w.bh % 16 == 0 && w.bh >= 16 &&
         w.bh <= 64 && w.bw % 16 == 0 && d.in_features % 8 == 0 && detail::aligned16(d.x) &&
         detail::aligned16(w.blocks) && detail::ceil_div(d.out_features, w.bh) <= 65535 &&
         detail::ceil_div(d.batch, 8 * kWarps * kNf[k]) <= 0x7fffffff &&
         smem_bytes(static_cast<int>(w.bh / 16), kNf[k], w.bw % 32 == 0 ? 32 : 16, kStages) <=
             detail::device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10);
}

void launch(int k, const Dense& d, const Bsr& w, cudaStream_t stream) {
  static_assert(kCount == 2 && kNf[0] == 2 && kNf[1] == 4, "launch instantiates these");
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (kNf[k] == 2) {
      by_block<T, 2>(d, w, stream);
    } else {
      by_block<T, 4>(d, w, stream);
    }
  };
  detail::by_half_dtype(d.dtype, run);
}

}  // namespace bsr_gemm
}  // namespace cuda
}  // namespace sparseprune
