// 2:4 weights at large batch, shaped as a GEMM: y^T [out, batch] = W x^T, with W the
// compressed A operand of mma.sp m16n8k32 and x the B operand read from its row-major
// [batch, in] layout as it is (32 inputs of one batch row are one column of B).
//
// The kernels of spmm_nm.cu split a small tile's work over the input dimension inside a CTA
// (batch <= 128) or stage a 128 x 64 tile with 4 warps; at batch 128-512 both reread the
// activations once per 16-128 output rows from L2 and ran at 0.25-0.7x cuSPARSELt on an
// H200. Here a CTA of 8 warps owns ROWS output rows x BATCH columns (up to 256 x 128), so
// every staged byte feeds 128-256 multiply-adds. Each 64-input step stages the tile's kept
// values (64 bytes per row), metadata (8 bytes per row) and activations (128 bytes per
// batch row) in shared memory by cp.async, 4 stages deep; each warp reads the fragments of
// its 16 MF x 8 NF sub-tile with ldmatrix. Rows are XOR-swizzled in 16-byte chunks instead
// of padded, so that an ldmatrix phase (8 rows, one chunk each) touches 8 different bank
// groups with no padding bytes (4 stages of 256 x 128: 139 KB; of 128 x 64: 69 KB, two
// CTAs per SM).
//
// Few tiles leave SMs idle (a 4096-row layer at batch 128 is 16 tiles of 256 x 128): the
// input dimension is then split over gridDim.z, each split writes fp32 partial sums and
// split_sum adds them and the bias in a fixed order (deterministic; no atomics).
#include <algorithm>
#include <atomic>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "nm24_gemm.cuh"

namespace sparseprune {
namespace cuda {
namespace gemm24 {
namespace {

using detail::kWarp;

constexpr int kStepK = 64;             // inputs per pipeline step
constexpr int kMinStepsPerSplit = 4;   // a split shorter than this never fills its pipeline

// Warps along the rows x along the batch, 16-row x 8-column mma tiles per warp in each
// direction, pipeline stages, and the CTAs per SM the register budget is set for
// (__launch_bounds__). The CTA tile is (16 wm mf) x (8 wn nf).
struct Shape {
  int wm, wn, mf, nf, stages, ctas;
  __host__ __device__ constexpr int rows() const { return 16 * wm * mf; }
  __host__ __device__ constexpr int batch() const { return 8 * wn * nf; }
  // A step's kept values: kStepK / 2 per row, 2 bytes each.
  __host__ __device__ constexpr int a_bytes() const { return rows() * kStepK; }
  __host__ __device__ constexpr int x_bytes() const { return batch() * kStepK * 2; }
  __host__ __device__ constexpr int stage_bytes() const {
    return a_bytes() + x_bytes() + rows() * 8;
  }
  __host__ __device__ constexpr int smem_bytes() const { return stages * stage_bytes(); }
  __host__ __device__ constexpr int threads() const { return wm * wn * kWarp; }
};
// Measured on an H200 and dropped (benchmarks/cuda/nm24_sweep_h200_5.json, _6.json): 256 x 64
// (8 warps) and 128 x 128 with 8 or 16 warps and 256 x 128 with 16 warps (64 x 32 or 32 x 32
// warp tiles): never more than 2% faster than one of these two, often 10-50% slower.
constexpr Shape kShapes[] = {{4, 2, 4, 8, 4, 1}, {4, 2, 2, 4, 4, 2}};
constexpr int kCount = sizeof(kShapes) / sizeof(kShapes[0]);

// Byte offset of 16-byte chunk c (0..3) of kept-value row r (64 bytes): the chunk is XORed
// with row bits 1-2, so rows r..r+7 of one ldmatrix phase land in 8 distinct bank groups
// (two 64-byte rows share a 128-byte bank line).
__device__ __forceinline__ int a_off(int r, int c) {
  return r * 64 + ((c ^ ((r >> 1) & 3)) << 4);
}
// Chunk c (0..7) of activation row r (128 bytes): XORed with the row's low 3 bits.
__device__ __forceinline__ int x_off(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

template <typename T, int WM, int WN, int MF, int NF, int S, int CTAS>
__global__ __launch_bounds__(WM * WN * kWarp, CTAS) void nm24_gemm(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
    float* __restrict__ partial, int64_t batch, int64_t in, int64_t out,
    int64_t steps_per_split) {
  constexpr Shape G{WM, WN, MF, NF, S, CTAS};
  constexpr int kRows = G.rows(), kBatch = G.batch(), kStage = G.stage_bytes();
  constexpr int kABytes = G.a_bytes(), kXBytes = G.x_bytes(), kThreads = G.threads();
  extern __shared__ uint4 smem[];
  uint8_t* const base = reinterpret_cast<uint8_t*>(smem);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int wrow = (warp % WM) * 16 * MF, wcol = (warp / WM) * 8 * NF;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kBatch;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * steps_per_split;
  const int64_t ke = min(in / kStepK, kb + steps_per_split);
  const int64_t half_in = in / 2, meta_row = in / 8;

  // Rows past `out` and batch rows past `batch` are zero-filled (their results are dropped).
  auto load_stage = [&](int64_t s) {
    uint8_t* const st = base + static_cast<int>((s - kb) % S) * kStage;
#pragma unroll
    for (int it = 0; it < detail::ceil_div_c(kRows * 4, kThreads); ++it) {
      const int c = tid + it * kThreads, rr = c >> 2, ch = c & 3;
      if (c >= kRows * 4) break;
      const bool ok = r0 + rr < out;
      detail::cp_async16(st + a_off(rr, ch),
                         values + (ok ? r0 + rr : 0) * half_in + s * (kStepK / 2) + ch * 8,
                         ok ? 16 : 0);
    }
    uint8_t* const xs = st + kABytes;
#pragma unroll
    for (int it = 0; it < detail::ceil_div_c(kBatch * 8, kThreads); ++it) {
      const int c = tid + it * kThreads, rb = c >> 3, ch = c & 7;
      if (c >= kBatch * 8) break;
      const bool ok = b0 + rb < batch;
      detail::cp_async16(xs + x_off(rb, ch), x + (ok ? b0 + rb : 0) * in + s * kStepK + ch * 8,
                         ok ? 16 : 0);
    }
    uint8_t* const ms = xs + kXBytes;
#pragma unroll
    for (int it = 0; it < detail::ceil_div_c(kRows, kThreads); ++it) {
      const int c = tid + it * kThreads;
      if (c >= kRows) break;
      const bool ok = r0 + c < out;
      detail::cp_async8(ms + c * 8, metadata + (ok ? r0 + c : 0) * meta_row + s * 8,
                        ok ? 8 : 0);
    }
  };

#pragma unroll
  for (int p = 0; p < S - 1; ++p) {
    if (kb + p < ke) load_stage(kb + p);
    detail::cp_async_commit();
  }
  float acc[MF][NF][4] = {};
  for (int64_t s = kb; s < ke; ++s) {
    detail::cp_async_wait<S - 2>();
    __syncthreads();  // step s landed for every thread; the buffer of step s - 1 is free
    if (s + S - 1 < ke) load_stage(s + S - 1);
    detail::cp_async_commit();
    const uint8_t* const st = base + static_cast<int>((s - kb) % S) * kStage;
    const uint8_t* const xs = st + kABytes;
    const uint8_t* const ms = xs + kXBytes;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t a[MF][4], e[MF];
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        const int row = wrow + 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8;
        detail::ldmatrix_x4(a[i], st + a_off(row, kk * 2 + (lane >> 4)));
        e[i] = detail::smem_step_meta(ms + (wrow + 16 * i) * 8, kk, g, t);
      }
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        uint32_t b[4];
        detail::ldmatrix_x4(b, xs + x_off(wcol + 8 * j + (lane & 7), kk * 4 + (lane >> 3)));
#pragma unroll
        for (int i = 0; i < MF; ++i) detail::mma_sp_16832<T>(acc[i][j], a[i], b, e[i]);
      }
    }
  }
  detail::cp_async_wait<0>();

  if (partial == nullptr) {
#pragma unroll
    for (int i = 0; i < MF; ++i)
#pragma unroll
      for (int j = 0; j < NF; ++j)
        detail::store_tile(acc[i][j], bias, y, r0 + wrow + 16 * i, b0 + wcol + 8 * j, out,
                           batch, lane);
    return;
  }
  // Partial sums of this split, [batch, out] like y: lanes g = 0..7 write 8 consecutive rows.
  float* const p = partial + static_cast<int64_t>(blockIdx.z) * batch * out;
#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      detail::store_partial_tile(acc[i][j], p, r0 + wrow + 16 * i, b0 + wcol + 8 * j, out,
                                 batch, lane);
}

// Calls f(std::integral_constant<int, k>) for the runtime variant k.
template <int K = 0, typename F>
void with_variant(int k, F&& f) {
  if constexpr (K < kCount) {
    if (k == K) {
      f(std::integral_constant<int, K>{});
    } else {
      with_variant<K + 1>(k, f);
    }
  }
}

template <typename T, int K>
auto kernel_of() {
  constexpr Shape s = kShapes[K];
  return &nm24_gemm<T, s.wm, s.wn, s.mf, s.nf, s.stages, s.ctas>;
}

// Resident CTAs of variant k per SM on the current device (registers and shared memory),
// times the SM count; asked once per variant and device.
int64_t slots(int k) {
  constexpr int kDevices = 16;
  static std::atomic<int> cache[kCount][kDevices];  // zero: not asked yet
  int device = 0;
  (void)cudaGetDevice(&device);
  std::atomic<int>* c = device >= 0 && device < kDevices ? &cache[k][device] : nullptr;
  if (c != nullptr && c->load() > 0) return c->load();
  int per_sm = 0;
  with_variant(k, [&](auto v) {
    constexpr int K = decltype(v)::value;
    const auto kernel = kernel_of<__half, K>();
    (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               kShapes[K].smem_bytes());
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kShapes[K].threads(),
                                                      kShapes[K].smem_bytes()) != cudaSuccess) {
      (void)cudaGetLastError();  // a failed query is not the caller's launch error
      per_sm = 0;
    }
  });
  const int n = std::max(per_sm, 1) * detail::device_attr(cudaDevAttrMultiProcessorCount, 132);
  if (c != nullptr) c->store(n);
  return n;
}

int64_t tiles(const Shape& s, const Dense& d) {
  return detail::ceil_div(d.out_features, s.rows()) * detail::ceil_div(d.batch, s.batch());
}

}  // namespace

int count() { return kCount; }

std::string name(int k) {
  return "gemm:" + std::to_string(kShapes[k].rows()) + "x" + std::to_string(kShapes[k].batch());
}

int find(int rows, int batch) {
  for (int k = 0; k < kCount; ++k) {
    if (kShapes[k].rows() == rows && kShapes[k].batch() == batch) return k;
  }
  return -1;
}

bool fits(int k, const Dense& d) {
  const Shape& s = kShapes[k];
  return d.in_features % kStepK == 0 && detail::ceil_div(d.out_features, s.rows()) <= 65535 &&
         detail::ceil_div(d.batch, s.batch()) <= 0x7fffffff &&
         s.smem_bytes() <= detail::device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10);
}

int64_t splits(int k, const Dense& d) {
  const int64_t steps = d.in_features / kStepK;
  const int64_t want = std::min(slots(k) / std::max<int64_t>(tiles(kShapes[k], d), 1),
                                steps / kMinStepsPerSplit);
  if (want <= 1) return 1;
  // Equal splits, none empty.
  return detail::ceil_div(steps, detail::ceil_div(steps, std::min<int64_t>(want, 65535)));
}

int64_t scratch_bytes(int k, const Dense& d) {
  const int64_t n = splits(k, d);
  return n > 1 ? n * d.batch * d.out_features * static_cast<int64_t>(sizeof(float)) : 0;
}

void launch(int k, const Dense& d, const NM& w, cudaStream_t stream) {
  const int64_t n = splits(k, d);
  const int64_t steps = d.in_features / kStepK;
  float* const partial = n > 1 ? static_cast<float*>(w.scratch) : nullptr;
  auto go = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    with_variant(k, [&](auto v) {
      constexpr int K = decltype(v)::value;
      constexpr Shape s = kShapes[K];
      const auto kernel = kernel_of<T, K>();
      // Above 48 KB; set on every launch so that every device gets it (host-side, no stream
      // work). A failure resurfaces as the launch error.
      (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 s.smem_bytes());
      const dim3 grid(static_cast<unsigned>(detail::ceil_div(d.batch, s.batch())),
                      static_cast<unsigned>(detail::ceil_div(d.out_features, s.rows())),
                      static_cast<unsigned>(n));
      kernel<<<grid, s.threads(), s.smem_bytes(), stream>>>(
          static_cast<const T*>(w.values), w.metadata, static_cast<const T*>(d.x),
          static_cast<const T*>(d.bias), static_cast<T*>(d.y), partial, d.batch,
          d.in_features, d.out_features, detail::ceil_div(steps, n));
    });
    if (partial != nullptr) {
      detail::launch_split_sum<T>(partial, n, d.bias, d.y, d.batch * d.out_features,
                                  d.out_features, stream);
    }
  };
  detail::by_half_dtype(d.dtype, go);
}

}  // namespace gemm24
}  // namespace cuda
}  // namespace sparseprune
