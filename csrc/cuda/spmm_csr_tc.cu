// Unstructured (CSR) weights at batch 17-512 on the tensor cores: loaded sparse, multiplied
// dense. y^T [out, batch] = W x^T for 128 weight rows x BATCH columns per CTA, mma.sync
// m16n8k16 with x read from its row-major [batch, in] layout as the B operand.
//
// The CUDA-core row kernels (rows.cuh) read each nonzero's batch slice of x from L2, so
// their traffic is nnz x batch x 2 bytes: a 4096x4096 layer at 95% and batch 64 moves
// 107 MB and ran at 0.23x dense fp16 cuBLAS on an H200. Here the activations under a
// 32-input step are staged once per CTA (cp.async, kStages deep) and shared by its 128
// rows, as in a dense GEMM; each lane owns one weight row and scatters that row's nonzeros
// of the step into a zeroed 32-input tile in shared memory, which its warp then reads with
// ldmatrix. The tile's FLOPs are dense, so this could win only where dense cuBLAS is
// memory-bound, and cannot at large batch.
//
// Measured on an H200 (benchmarks/cuda/csr_sweep_h200_tc1.json): every CTA took ~2.9 us per
// step whether 1 or 3 shared an SM, so a step is one long dependent chain, and the chain is
// the scatter: each lane scans its 8-entry chunk (64-bit offsets, a branch per entry) for
// the ~1.6 entries (95%) a 32-input step holds, then the warp issues only 32 mma. tc:64 is
// still 1.27-1.61x faster than rows_mid at 90% and batch 256-512 (chosen there), but
// 0.06-0.23x dense fp16. Next: scatter once per 128-256 inputs into a wider tile (the mma
// steps under it reuse it) with 32-bit offsets, or a tile-ordered layout built on .to("cuda")
// whose entries a warp scatters 32 at a time.
//
// A lane streams its row's (column, value) pairs 8 at a time from 16-byte-aligned chunks of
// the uint16 column and value arrays, the next chunk loaded while the current one is used.
// Splits of the input dimension (grid.z) give the SMs enough CTAs at small batch; each split
// finds its first nonzero per row by binary search and writes fp32 partial sums, which
// detail::split_sum adds up with the bias.
#include <algorithm>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "csr_tc.cuh"

namespace sparseprune {
namespace cuda {
namespace csr_tc {
namespace {

using detail::kWarp;

constexpr int kWarps = 4;  // along the rows; each owns 32 rows x all BATCH columns
constexpr int kRowsPerWarp = kWarp;
constexpr int kRows = kWarps * kRowsPerWarp;
constexpr int kKc = 32;  // inputs per step
constexpr int kStages = 4;
// CTAs per SM the input splits aim for, and the fewest steps a split may have.
constexpr int kCtasPerSm = 2;
constexpr int kMinSteps = 8;
constexpr int kMaxSplits = 16;

// Batch columns of each variant's CTA tile.
constexpr int kBatch[] = {32, 64};
constexpr int kCount = sizeof(kBatch) / sizeof(kBatch[0]);

__host__ __device__ constexpr int smem_bytes(int batch) {
  return kStages * batch * kKc * 2 + kRows * kKc * 2;
}

// Element j (0..7) of 8 packed 16-bit values.
__device__ __forceinline__ uint32_t half_of(const uint4& q, int j) {
  const uint32_t w = j < 2 ? q.x : j < 4 ? q.y : j < 6 ? q.z : q.w;
  return (j & 1) ? (w >> 16) : (w & 0xffffu);
}

// The 8 entries [base, base + 8) of the column and value arrays (base % 8 == 0); past nnz
// (the last chunk of the arrays) element by element, zeros beyond.
template <typename T>
__device__ __forceinline__ void load_chunk(const uint16_t* __restrict__ cols,
                                           const T* __restrict__ vals, int64_t nnz,
                                           int64_t base, uint4& c, uint4& v) {
  if (base + 8 <= nnz) {
    c = __ldg(reinterpret_cast<const uint4*>(cols + base));
    v = __ldg(reinterpret_cast<const uint4*>(vals + base));
    return;
  }
  uint32_t cw[4] = {0, 0, 0, 0}, vw[4] = {0, 0, 0, 0};
  const uint16_t* vb = reinterpret_cast<const uint16_t*>(vals);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (base + j < nnz) {
      cw[j / 2] |= static_cast<uint32_t>(__ldg(cols + base + j)) << (16 * (j & 1));
      vw[j / 2] |= static_cast<uint32_t>(__ldg(vb + base + j)) << (16 * (j & 1));
    }
  }
  c = make_uint4(cw[0], cw[1], cw[2], cw[3]);
  v = make_uint4(vw[0], vw[1], vw[2], vw[3]);
}

template <typename T, int BATCH>
__global__ __launch_bounds__(kWarps * kWarp) void csr_tc(
    const int64_t* __restrict__ row_offsets, const uint16_t* __restrict__ cols,
    const T* __restrict__ vals, int64_t nnz, const T* __restrict__ x,
    const T* __restrict__ bias, T* __restrict__ y, float* __restrict__ partial, int64_t batch,
    int64_t in, int64_t out, int64_t split) {
  constexpr int NT = BATCH / 8, CH = kKc / 8, kXBytes = BATCH * kKc * 2;
  constexpr int kThreads = kWarps * kWarp;
  extern __shared__ uint4 smem[];
  uint8_t* const xbase = reinterpret_cast<uint8_t*>(smem);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  // This warp's 32 weight rows of the step, lane r scattering into row r.
  uint8_t* const wt = xbase + kStages * kXBytes + warp * kRowsPerWarp * kKc * 2;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * BATCH;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows + warp * kRowsPerWarp;
  const int64_t row = row0 + lane;
  const int64_t k_lo = static_cast<int64_t>(blockIdx.z) * split;
  const int64_t k_hi = min(in, k_lo + split);
  const int64_t steps = (k_hi - k_lo + kKc - 1) / kKc;

  // This lane's row: next entry e, end, and the chunk [base, base + 8) holding e.
  int64_t e = 0, end = 0;
  if (row < out) {
    e = min(max(__ldg(row_offsets + row), int64_t{0}), nnz);
    end = max(min(__ldg(row_offsets + row + 1), nnz), e);
    if (k_lo > 0) {  // first entry with column >= k_lo (columns ascend within a row)
      int64_t hi = end;
      while (e < hi) {
        const int64_t mid = e + (hi - e) / 2;
        if (static_cast<int64_t>(__ldg(cols + mid)) < k_lo) {
          e = mid + 1;
        } else {
          hi = mid;
        }
      }
    }
  }
  int64_t base = e & ~int64_t{7};
  int pos = static_cast<int>(e - base);
  uint4 cc = make_uint4(0, 0, 0, 0), cv = cc, nc = cc, nv = cc;
  if (e < end) load_chunk(cols, vals, nnz, base, cc, cv);
  if (base + 8 < end) load_chunk(cols, vals, nnz, base + 8, nc, nv);

  // Activations outside [0, batch) x [k_lo, k_hi) are zero-filled (k_hi is in or a
  // multiple of 32).
  auto load_stage = [&](int64_t s) {
    detail::stage_x_tile<BATCH, kKc, kThreads>(
        xbase + static_cast<int>(s % kStages) * kXBytes, x, in, b0, batch, k_lo + s * kKc,
        k_hi, tid);
  };

#pragma unroll
  for (int p = 0; p < kStages - 1; ++p) {
    if (p < steps) load_stage(p);
    detail::cp_async_commit();
  }
  float acc[2][NT][4] = {};
  uint4* const wrow = reinterpret_cast<uint4*>(wt + lane * kKc * 2);
  for (int64_t s = 0; s < steps; ++s) {
    detail::cp_async_wait<kStages - 2>();
    __syncthreads();  // step s landed for every thread; the buffer of step s - 1 is free
    if (s + kStages - 1 < steps) load_stage(s + kStages - 1);
    detail::cp_async_commit();

    // The row's nonzeros in [kb, ke) into its zeroed 64-byte row (swizzling permutes the
    // row's own chunks, so zeroing all four needs no offsets).
    const int64_t kb = k_lo + s * kKc, ke = min(kb + kKc, k_hi);
#pragma unroll
    for (int c = 0; c < CH; ++c) wrow[c] = make_uint4(0, 0, 0, 0);
    while (e < end) {
      bool more = true;
      int taken = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (more && j >= pos) {
          const int64_t col = half_of(cc, j);
          if (base + j < end && col < ke) {
            if (col >= kb) {  // unsorted (corrupt) columns below the step are dropped
              const int c = static_cast<int>(col - kb);
              *reinterpret_cast<uint16_t*>(wt + detail::tile_off<kKc>(lane, c >> 3) +
                                           (c & 7) * 2) = static_cast<uint16_t>(half_of(cv, j));
            }
            ++taken;
          } else {
            more = false;
          }
        }
      }
      e += taken;
      pos += taken;
      if (!more) break;
      // The chunk is used up and the row goes on: the next one (loaded a chunk ago) moves
      // in, and the one after it is requested.
      base += 8;
      pos = 0;
      cc = nc;
      cv = nv;
      if (base + 8 < end) load_chunk(cols, vals, nnz, base + 8, nc, nv);
    }
    __syncwarp();  // the warp's rows are written

    const uint8_t* const xs = xbase + static_cast<int>(s % kStages) * kXBytes;
    uint32_t bf[NT][4];  // n-tile j: k-tile 0 in bf[j][0..1], k-tile 1 in bf[j][2..3]
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      detail::ldmatrix_x4(bf[j], xs + detail::tile_off<kKc>(8 * j + (lane & 7), lane >> 3));
    }
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        uint32_t a[4];
        const int r = 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8;
        detail::ldmatrix_x4(a, wt + detail::tile_off<kKc>(r, 2 * kk + (lane >> 4)));
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          detail::mma_16816<T>(acc[i][j], a, bf[j][2 * kk], bf[j][2 * kk + 1]);
        }
      }
    }
    __syncwarp();  // the warp has read its rows before the next step zeroes them
  }
  detail::cp_async_wait<0>();

  if (gridDim.z == 1) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
        detail::store_tile(acc[i][j], bias, y, row0 + 16 * i, b0 + 8 * j, out, batch, lane);
    return;
  }
  // Split: fp32 partial sums [split, batch, out], no bias (detail::split_sum adds them).
  float* const part = partial + static_cast<int64_t>(blockIdx.z) * batch * out;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
      detail::store_partial_tile(acc[i][j], part, row0 + 16 * i, b0 + 8 * j, out, batch, lane);
}

// How the input dimension is split for variant k: the split count and inputs per split
// (a multiple of kKc): about kCtasPerSm CTAs per SM where the tiles alone give fewer, each
// split kMinSteps steps or more.
struct Split {
  int64_t count, inputs;
};

Split split_of(int k, const Dense& d) {
  const int64_t tiles =
      detail::ceil_div(d.out_features, kRows) * detail::ceil_div(d.batch, kBatch[k]);
  const int64_t sms = detail::device_attr(cudaDevAttrMultiProcessorCount, 132);
  const int64_t steps = detail::ceil_div(d.in_features, kKc);
  const int64_t want = std::min<int64_t>(
      {std::max<int64_t>(kCtasPerSm * sms / tiles, 1), std::max<int64_t>(steps / kMinSteps, 1),
       int64_t{kMaxSplits}});
  const int64_t inputs = detail::ceil_div(steps, std::max<int64_t>(want, 1)) * kKc;
  return {detail::ceil_div(d.in_features, inputs), inputs};
}

template <typename T, int BATCH>
void go(int k, const Dense& d, const Csr& w, cudaStream_t stream) {
  constexpr int kSmem = smem_bytes(BATCH);
  static_assert(kSmem <= 48 * 1024, "no opt-in shared memory needed");
  const Split sp = split_of(k, d);
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(d.batch, BATCH)),
                  static_cast<unsigned>(detail::ceil_div(d.out_features, kRows)),
                  static_cast<unsigned>(sp.count));
  float* const partial = sp.count > 1 ? static_cast<float*>(w.scratch) : nullptr;
  csr_tc<T, BATCH><<<grid, kWarps * kWarp, kSmem, stream>>>(
      w.row_offsets, static_cast<const uint16_t*>(w.col_indices),
      static_cast<const T*>(w.values), w.nnz, static_cast<const T*>(d.x),
      static_cast<const T*>(d.bias), static_cast<T*>(d.y), partial, d.batch, d.in_features,
      d.out_features, sp.inputs);
  if (sp.count > 1) {
    detail::launch_split_sum<T>(partial, sp.count, d.bias, d.y, d.batch * d.out_features,
                                d.out_features, stream);
  }
}

}  // namespace

int count() { return kCount; }

std::string name(int k) { return "tc:" + std::to_string(kBatch[k]); }

int find(int batch) {
  for (int k = 0; k < kCount; ++k) {
    if (kBatch[k] == batch) return k;
  }
  return -1;
}

bool fits(int k, const Dense& d, const Csr& w) {
  return k >= 0 && k < kCount && d.dtype != DType::f32 && w.idx16 &&
         d.in_features % 8 == 0 && detail::aligned16(d.x) && detail::aligned16(w.values) &&
         detail::aligned16(w.col_indices) && detail::ceil_div(d.out_features, kRows) <= 65535 &&
         detail::ceil_div(d.batch, kBatch[k]) <= 0x7fffffff;
}

int64_t scratch_bytes(int k, const Dense& d) {
  const Split sp = split_of(k, d);
  return sp.count > 1 ? sp.count * d.batch * d.out_features * 4 : 0;
}

void launch(int k, const Dense& d, const Csr& w, cudaStream_t stream) {
  static_assert(kCount == 2 && kBatch[0] == 32 && kBatch[1] == 64, "launch instantiates these");
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (k == 0) {
      go<T, 32>(k, d, w, stream);
    } else {
      go<T, 64>(k, d, w, stream);
    }
  };
  detail::by_half_dtype(d.dtype, run);
}

}  // namespace csr_tc
}  // namespace cuda
}  // namespace sparseprune
