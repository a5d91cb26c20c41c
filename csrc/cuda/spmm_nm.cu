// N:M weights. 2:4 in fp16/bf16 runs on the sparse tensor cores (mma.sp m16n8k32), which
// read our packed layout as it is: a row's kept values are the compressed A operand, and
// 32 input columns of a row carry exactly 32 bits of 2-bit in-group indices, which is the
// metadata word of that row for one mma.sp. Three shapes of work:
//   nm24_small  batch <= 8 (32 when in_features % 64 != 0): a CTA owns 16 output rows
//               and 8, 16 or 32 batch columns (no padding to 32); its 8 warps split the
//               input dimension
//               (a strip alone would leave the memory system idle) and sum in shared
//               memory; nm24_small_wide is the same with 16-byte weight loads when
//               in_features % 64 == 0 (wide:u1i, wide:u2i: its warps interleaved;
//               nm24_staged_wide, stage:*, copies each step to shared memory first);
//   nm24_frag   batch 9-128 (and larger batches of small layers), in_features % 64 == 0:
//               the same split, with x first rewritten in mma fragment order so that the
//               activations are one 16-byte load per lane per step; register or cp.async
//               ring weight loads (variants named frag:RxB / ringS:RxB);
//   nm24_tiled  larger batches when in_features % 64 != 0: a CTA owns 64 or 128 rows x 32
//               or 64 batch columns, activations and weights staged through shared memory
//               by cp.async (3 stages) and read by ldmatrix;
//   gemm24      (spmm_nm24_gemm.cu) batch > 16, in_features % 64 == 0: 8 or 16 warps per
//               CTA tile of up to 256 x 128, split over the input when tiles are few.
// nm24_choice picks one (measured on an H200); SPARSEPRUNE_CUDA_NM24 forces one.
// Any other n:m, fp32, or in_features not a multiple of 32 take the CUDA-core row kernels.
#include <algorithm>
#include <string>

#include "nm24_gemm.cuh"
#include "rows.cuh"

namespace sparseprune {
namespace cuda {
namespace {

using detail::kWarp;

template <typename T>
struct NmRows {
  const T* __restrict__ values;
  const uint8_t* __restrict__ metadata;
  int64_t slots, row_bytes, in;
  int n, m, bits;

  __device__ __forceinline__ int64_t begin(int64_t) const { return 0; }
  __device__ __forceinline__ int64_t end(int64_t) const { return slots; }
  __device__ __forceinline__ void get(int64_t r, int64_t e, float& v, int& col) const {
    const uint8_t* meta = metadata + r * row_bytes;
    const int64_t pos = e * bits;
    const int64_t byte = pos >> 3;
    unsigned word = __ldg(meta + byte);
    if (byte + 1 < row_bytes) word |= static_cast<unsigned>(__ldg(meta + byte + 1)) << 8;
    const int idx = static_cast<int>((word >> (pos & 7)) & ((1u << bits) - 1));
    const int64_t c = (e / n) * m + idx;
    v = c < in ? detail::load_float(values + r * slots + e) : 0.f;
    col = static_cast<int>(min(c, in - 1));
  }
};

// Metadata of a row that does not exist: indices (0, 1) in every group, with zero values.
constexpr uint32_t kIdleMeta = 0x44444444u;

// The A operand and metadata of one 16-row x 32-column step for rows r0 + g and r0 + g + 8.
template <typename T>
struct Strip {
  const T* top;
  const T* bottom;
  const uint8_t* meta_top;
  const uint8_t* meta_bottom;
  bool top_ok, bottom_ok;

  __device__ __forceinline__ void init(const T* values, const uint8_t* metadata, int64_t r0,
                                       int64_t out, int64_t in, int lane) {
    const int g = lane >> 2;
    const int64_t rt = r0 + g, rb = r0 + g + 8;
    top_ok = rt < out;
    bottom_ok = rb < out;
    top = values + (top_ok ? rt : 0) * (in / 2);
    bottom = values + (bottom_ok ? rb : 0) * (in / 2);
    meta_top = metadata + (top_ok ? rt : 0) * (in / 8);
    meta_bottom = metadata + (bottom_ok ? rb : 0) * (in / 8);
  }

  __device__ __forceinline__ void load(int64_t kt, int lane, uint32_t (&a)[4],
                                       uint32_t& e) const {
    const int t = lane & 3;
    const int64_t off = kt * 16 + 2 * t;
    a[0] = top_ok ? detail::load_u32(top + off) : 0u;
    a[1] = bottom_ok ? detail::load_u32(bottom + off) : 0u;
    a[2] = top_ok ? detail::load_u32(top + off + 8) : 0u;
    a[3] = bottom_ok ? detail::load_u32(bottom + off + 8) : 0u;
    e = 0u;
    if (t < 2) {
      const int64_t mo = kt * 4 + 2 * t;
      const uint32_t lo = top_ok ? __ldg(reinterpret_cast<const uint16_t*>(meta_top + mo))
                                 : (kIdleMeta & 0xffffu);
      const uint32_t hi = bottom_ok
                              ? __ldg(reinterpret_cast<const uint16_t*>(meta_bottom + mo))
                              : (kIdleMeta & 0xffffu);
      e = lo | (hi << 16);
    }
  }
};

constexpr int kSmallWarps = 8;

// The end of the kernels whose 8 warps split the input: each warp's partial sums of the
// CTA's (16 MF rows) x (8 NF batch columns) tile are added in shared memory `sum` (zeroed at
// the kernel's start), then warp w stores the tiles (i, j) with (i * NF + j) % 8 == w.
// Tiles j >= nj lie past the batch.
template <typename T, int MF, int NF>
__device__ __forceinline__ void reduce_and_store(float (&sum)[MF][NF][4][kWarp],
                                                 const float (&acc)[MF][NF][4],
                                                 const T* __restrict__ bias, T* __restrict__ y,
                                                 int64_t r0, int64_t b0, int64_t out,
                                                 int64_t batch, int nj) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();  // sum is zeroed
#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) atomicAdd(&sum[i][j][q][lane], acc[i][j][q]);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      if ((i * NF + j) % kSmallWarps != warp || j >= nj) continue;
      float c[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) c[q] = sum[i][j][q][lane];
      detail::store_tile(c, bias, y, r0 + 16 * i, b0 + 8 * j, out, batch, lane);
    }
}

// A CTA owns 16 * MF output rows and 8 * NF batch columns; its 8 warps split the input
// dimension into contiguous ranges (consecutive steps of a row read consecutive sectors)
// and sum through shared-memory atomics. U steps are loaded before their mma.sp, so each
// warp keeps U * MF strips of weights in flight: the small-batch product streams weights.
template <typename T, int MF, int NF, int U>
__global__ __launch_bounds__(kSmallWarps * kWarp) void nm24_small(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t batch,
    int64_t in, int64_t out) {
  __shared__ float sum[MF][NF][4][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16 * MF;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * 8 * NF;
  for (int i = threadIdx.x; i < MF * NF * 4 * kWarp; i += kSmallWarps * kWarp) {
    (&sum[0][0][0][0])[i] = 0.f;
  }
  Strip<T> strips[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) strips[i].init(values, metadata, r0 + 16 * i, out, in, lane);

  const T* xrow[NF];
  bool xok[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int64_t b = b0 + 8 * j + g;
    xok[j] = b < batch;
    xrow[j] = x + (xok[j] ? b : 0) * in + 2 * t;
  }

  const int64_t ktiles = in / 32;
  const int64_t kb = ktiles * warp / kSmallWarps, ke = ktiles * (warp + 1) / kSmallWarps;
  float acc[MF][NF][4] = {};
  for (int64_t k0 = kb; k0 < ke; k0 += U) {
    uint32_t a[U][MF][4], e[U][MF];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        if (k0 + u < ke) strips[i].load(k0 + u, lane, a[u][i], e[u][i]);
      }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (k0 + u >= ke) break;
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        uint32_t b[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          b[q] = xok[j] ? detail::load_u32(xrow[j] + (k0 + u) * 32 + 8 * q) : 0u;
        }
#pragma unroll
        for (int i = 0; i < MF; ++i) detail::mma_sp_16832<T>(acc[i][j], a[u][i], b, e[u][i]);
      }
    }
  }

  reduce_and_store<T, MF, NF>(sum, acc, bias, y, r0, b0, out, batch, NF);
}

// The same work as nm24_small (one 16-row strip, MF = 1) with 16-byte weight loads, for
// in_features a multiple of 64. The k order inside each 64-column span is permuted at group
// granularity (a sum does not care about order): lane t loads kept values 8t..8t+7 of a
// span (groups 4t..4t+3) with one load per row, and those serve as its a0/a2 registers of
// both mma.sp steps of the span. The activations are read at the matching permuted columns
// and the metadata nibbles gathered to match, so the product is unchanged. Logical group L
// of step q (0 or 1) is physical group 4 * (L % 4) + 2 * q + L / 4.
__device__ __forceinline__ int span_group(int q, int logical) {
  return 4 * (logical % 4) + 2 * q + logical / 4;
}

// Metadata nibble j of step q for lane t's 16 columns is physical nibble 4j + 2q + t of the
// span's 64-bit word (the k order of span_group).
__device__ __forceinline__ uint32_t step_meta(uint64_t m, int q, int t) {
  uint32_t e = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    e |= static_cast<uint32_t>((m >> (4 * (4 * j + 2 * q + t))) & 0xf) << (4 * j);
  }
  return e;
}

// Offset (in elements, within a 64-column span) of B register i of step q for lane t:
// logical group 2i + t/2 of the step, pair t % 2 within it (see span_group).
__device__ __forceinline__ int frag_offset(int q, int i, int t) {
  return 4 * span_group(q, 2 * i + t / 2) + 2 * (t % 2);
}

//
// IL: warps take U-span chunks in turn (warp w: chunks w, w + 8, ...) instead of one
// contiguous range each, so that at any time the CTA's 8 warps read one stretch of 8 U
// spans of each of its 16 rows rather than 8 far-apart places of each.
template <typename T, int NF, int U, bool IL = false>
__global__ __launch_bounds__(kSmallWarps * kWarp) void nm24_small_wide(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t batch,
    int64_t in, int64_t out) {
  __shared__ float sum[1][NF][4][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * 8 * NF;
  for (int i = threadIdx.x; i < NF * 4 * kWarp; i += kSmallWarps * kWarp) {
    (&sum[0][0][0][0])[i] = 0.f;
  }
  const int64_t rt = r0 + g, rb = r0 + g + 8;
  const bool top_ok = rt < out, bottom_ok = rb < out;
  const uint4* vtop = reinterpret_cast<const uint4*>(values + (top_ok ? rt : 0) * (in / 2)) + t;
  const uint4* vbot = reinterpret_cast<const uint4*>(values + (bottom_ok ? rb : 0) * (in / 2)) + t;
  const uint64_t* mtop = reinterpret_cast<const uint64_t*>(metadata + (top_ok ? rt : 0) * (in / 8));
  const uint64_t* mbot = reinterpret_cast<const uint64_t*>(metadata + (bottom_ok ? rb : 0) * (in / 8));

  // Activation offsets (in halves, within a span) of b[i] for step q, and whether each
  // batch row exists.
  int xoff[2][4];
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int i = 0; i < 4; ++i) xoff[q][i] = frag_offset(q, i, t);
  const T* xrow[NF];
  bool xok[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int64_t b = b0 + 8 * j + g;
    xok[j] = b < batch;
    xrow[j] = x + (xok[j] ? b : 0) * in;
  }

  const int64_t spans = in / 64;
  const int64_t sb = spans * warp / kSmallWarps, se = spans * (warp + 1) / kSmallWarps;
  const int64_t s_first = IL ? U * warp : sb, s_end = IL ? spans : se;
  constexpr int64_t kStep = IL ? U * kSmallWarps : U;
  float acc[1][NF][4] = {};
  for (int64_t s0 = s_first; s0 < s_end; s0 += kStep) {
    uint4 va[U], vb[U];
    uint64_t ma[U], mb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + u < s_end) {
        va[u] = top_ok ? __ldg(vtop + (s0 + u) * 4) : make_uint4(0, 0, 0, 0);
        vb[u] = bottom_ok ? __ldg(vbot + (s0 + u) * 4) : make_uint4(0, 0, 0, 0);
        ma[u] = t < 2 && top_ok ? __ldg(mtop + s0 + u) : 0x4444444444444444ull;
        mb[u] = t < 2 && bottom_ok ? __ldg(mbot + s0 + u) : 0x4444444444444444ull;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + u >= s_end) break;
      const uint32_t a[2][4] = {{va[u].x, vb[u].x, va[u].y, vb[u].y},
                                {va[u].z, vb[u].z, va[u].w, vb[u].w}};
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const uint32_t e = t < 2 ? step_meta(ma[u], q, t) | (step_meta(mb[u], q, t) << 16) : 0u;
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          uint32_t b[4];
          const T* xs = xrow[j] + (s0 + u) * 64;
#pragma unroll
          for (int i = 0; i < 4; ++i) b[i] = xok[j] ? detail::load_u32(xs + xoff[q][i]) : 0u;
          detail::mma_sp_16832<T>(acc[0][j], a[q], b, e);
        }
      }
    }
  }

  reduce_and_store<T, 1, NF>(sum, acc, bias, y, r0, b0, out, batch, NF);
}

// nm24_staged_wide: nm24_small_wide with each step's weights first copied by cp.async to
// the warp's own shared-memory buffer in row order, then read from there in fragment order.
// A copy instruction reads 32 / (4 U) rows x 64 U contiguous bytes where nm24_small_wide's
// fragment-order loads read 8 rows x 64 bytes: benchmarks/cuda_stream_probe.cu read the
// same bytes at 2.06 vs 2.38 TB/s (11008x4096) and 1.70 vs 2.42 TB/s (4096x11008) on an
// H200 in those two patterns. Chunk c of row r sits at r * 4U + (c ^ 4 (r & 1)), so that
// both the row-order writes and the fragment reads (rows g, g + 1 of a quarter warp) touch
// eight distinct 16-byte bank groups. S stages: the copies of the next S - 1 steps are in
// flight during this step's mma.sp (both halves matter: with one stage, or with short
// 64-byte runs in 3-4 stages, it ran slower than nm24_small_wide). IL as in
// nm24_small_wide; the activations are read as there.
template <typename T, int NF, int U, int S, bool IL>
__global__ __launch_bounds__(kSmallWarps * kWarp) void nm24_staged_wide(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t batch,
    int64_t in, int64_t out) {
  static_assert((U == 2 || U == 4) && S >= 1, "8 or 16 chunks of a row a step");
  constexpr int kC = 4 * U, kRowsPer = kWarp / kC;  // chunks of a row a step; rows a copy
  __shared__ float sum[1][NF][4][kWarp];
  __shared__ uint4 vs[kSmallWarps][S][16 * kC];
  __shared__ uint64_t ms[kSmallWarps][S][16 * U];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * 8 * NF;
  for (int i = threadIdx.x; i < NF * 4 * kWarp; i += kSmallWarps * kWarp) {
    (&sum[0][0][0][0])[i] = 0.f;
  }
  const bool top_ok = r0 + g < out, bottom_ok = r0 + g + 8 < out;
  const int64_t spans = in / 64;
  const int64_t sb = spans * warp / kSmallWarps, se = spans * (warp + 1) / kSmallWarps;
  const int64_t s_first = IL ? U * warp : sb, s_end = IL ? spans : se;
  constexpr int64_t kStep = IL ? U * kSmallWarps : U;

  // Copies spans [s0, min(s0 + U, s_end)) of the strip's existing rows into stage b (no
  // copy when s0 >= s_end; the caller commits the group either way).
  auto copy = [&](int64_t s0, int b) {
    const int c = lane % kC;
#pragma unroll
    for (int i = 0; i < 16 / kRowsPer; ++i) {
      const int r = lane / kC + kRowsPer * i;
      if (r0 + r < out && s0 + c / 4 < s_end) {
        const uint4* row = reinterpret_cast<const uint4*>(values + (r0 + r) * (in / 2));
        detail::cp_async16(&vs[warp][b][r * kC + (c ^ ((r & 1) << 2))], row + s0 * 4 + c, 16);
      }
    }
#pragma unroll
    for (int i = 0; i < (16 * U + kWarp - 1) / kWarp; ++i) {
      const int k = lane + kWarp * i, r = k / U, u = k % U;
      if (k < 16 * U && r0 + r < out && s0 + u < s_end) {
        const uint64_t* row = reinterpret_cast<const uint64_t*>(metadata + (r0 + r) * (in / 8));
        detail::cp_async8(&ms[warp][b][k], row + s0 + u, 8);
      }
    }
  };

  int xoff[2][4];
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int i = 0; i < 4; ++i) xoff[q][i] = frag_offset(q, i, t);
  const T* xrow[NF];
  bool xok[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int64_t b = b0 + 8 * j + g;
    xok[j] = b < batch;
    xrow[j] = x + (xok[j] ? b : 0) * in;
  }

  float acc[1][NF][4] = {};
  // A ring of S stages: S - 1 steps in flight ahead of the one computed (one commit group
  // per step, empty past the end, so that waiting for all but S - 1 groups means this step).
  int64_t s_copy = s_first;
#pragma unroll
  for (int k = 0; k < S - 1; ++k, s_copy += kStep) {
    copy(s_copy, k);
    detail::cp_async_commit();
  }
  int b = 0;
  for (int64_t s0 = s_first; s0 < s_end; s0 += kStep, s_copy += kStep, b = (b + 1) % S) {
    copy(s_copy, (b + S - 1) % S);  // the stage computed in the last iteration
    detail::cp_async_commit();
    detail::cp_async_wait<S - 1>();
    __syncwarp();  // the lanes' copies are visible to the whole warp
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + u >= s_end) break;
      const int ct = (4 * u + t) ^ ((g & 1) << 2);  // rows g and g + 8 share the swizzle
      const uint4 va = top_ok ? vs[warp][b][g * kC + ct] : make_uint4(0, 0, 0, 0);
      const uint4 vb = bottom_ok ? vs[warp][b][(g + 8) * kC + ct] : make_uint4(0, 0, 0, 0);
      const uint64_t ma = t < 2 && top_ok ? ms[warp][b][g * U + u] : 0x4444444444444444ull;
      const uint64_t mb =
          t < 2 && bottom_ok ? ms[warp][b][(g + 8) * U + u] : 0x4444444444444444ull;
      const uint32_t a[2][4] = {{va.x, vb.x, va.y, vb.y}, {va.z, vb.z, va.w, vb.w}};
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const uint32_t e = t < 2 ? step_meta(ma, q, t) | (step_meta(mb, q, t) << 16) : 0u;
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          uint32_t bf[4];
          const T* xs = xrow[j] + (s0 + u) * 64;
#pragma unroll
          for (int i = 0; i < 4; ++i) bf[i] = xok[j] ? detail::load_u32(xs + xoff[q][i]) : 0u;
          detail::mma_sp_16832<T>(acc[0][j], a[q], bf, e);
        }
      }
    }
    __syncwarp();  // every lane is done with stage b before it is copied over
  }
  detail::cp_async_wait<0>();  // no copy outlives the kernel

  reduce_and_store<T, 1, NF>(sum, acc, bias, y, r0, b0, out, batch, NF);
}

// nm24_frag: the nm24_small_wide scheme for batches above kSmallBatch. There, every lane
// read its B registers as four 4-byte loads from four rows of x: eight cache lines per
// load instruction, and the count grew with the batch (b=16 took 1.6x the time of b=1 on
// an H100). Here a pre-pass (nm24_frag_x) writes x once in mma fragment order, so a lane's
// four B registers of one step are one 16-byte load and a warp's 32 lanes read 512
// contiguous bytes. A CTA owns 16 * MF output rows x 8 * NF batch columns; the batch tile
// is the fast grid dimension, so the CTAs that share a row tile run together and its
// weights come from HBM once. Its 8 warps split the input spans and sum in shared memory.

// xf[((bt * spans + s) * 2 + q) * 32 + lane]: the B registers of lane for step q of span s
// and batch rows 8 bt .. 8 bt + 7 (zeros past the batch).
template <typename T>
__global__ __launch_bounds__(256) void nm24_frag_x(const T* __restrict__ x,
                                                   uint4* __restrict__ xf, int64_t batch,
                                                   int64_t in, int64_t total) {
  const int64_t spans = in / 64;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % kWarp), q = static_cast<int>((i / kWarp) % 2);
    const int64_t s = (i / (2 * kWarp)) % spans, bt = i / (2 * kWarp) / spans;
    const int g = lane >> 2, t = lane & 3;
    const int64_t b = bt * 8 + g;
    uint32_t v[4] = {0u, 0u, 0u, 0u};
    if (b < batch) {
      const T* row = x + b * in + s * 64;
#pragma unroll
      for (int r = 0; r < 4; ++r) v[r] = detail::load_u32(row + frag_offset(q, r, t));
    }
    xf[i] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// Bytes of a CTA's weight ring: per warp, S stages of 2 * MF 16-byte kept-value vectors and
// 2 * MF 8-byte metadata words for each of the 32 lanes.
constexpr int ring_bytes(int mf, int s) { return kSmallWarps * s * 2 * mf * kWarp * (16 + 8); }

// S == 0: each lane loads U spans of weights into registers, then computes them.
// S > 0: each lane streams its weights through a private ring of S spans in shared memory by
// cp.async, so S - 1 spans per warp are in flight while one is computed, without the
// registers (a lane reads back only what it copied itself: no barrier).
template <typename T, int MF, int NF, int U, int S>
__global__ __launch_bounds__(kSmallWarps * kWarp) void nm24_frag(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const uint4* __restrict__ xf, const T* __restrict__ bias, T* __restrict__ y,
    int64_t batch, int64_t in, int64_t out) {
  __shared__ float sum[MF][NF][4][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t tiles = (batch + 7) / 8;
  const int64_t bt0 = static_cast<int64_t>(blockIdx.x) * NF;
  const int nj = static_cast<int>(min(static_cast<int64_t>(NF), tiles - bt0));
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 16 * MF;
  for (int i = threadIdx.x; i < MF * NF * 4 * kWarp; i += kSmallWarps * kWarp) {
    (&sum[0][0][0][0])[i] = 0.f;
  }
  const int64_t spans = in / 64;
  const uint4* vtop[MF];
  const uint4* vbot[MF];
  const uint64_t* mtop[MF];
  const uint64_t* mbot[MF];
  bool top_ok[MF], bottom_ok[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) {
    const int64_t rt = r0 + 16 * i + g, rb = rt + 8;
    top_ok[i] = rt < out;
    bottom_ok[i] = rb < out;
    vtop[i] = reinterpret_cast<const uint4*>(values + (top_ok[i] ? rt : 0) * (in / 2)) + t;
    vbot[i] = reinterpret_cast<const uint4*>(values + (bottom_ok[i] ? rb : 0) * (in / 2)) + t;
    mtop[i] = reinterpret_cast<const uint64_t*>(metadata + (top_ok[i] ? rt : 0) * (in / 8));
    mbot[i] = reinterpret_cast<const uint64_t*>(metadata + (bottom_ok[i] ? rb : 0) * (in / 8));
  }
  const uint4* xb = xf + bt0 * spans * 2 * kWarp + lane;
  float acc[MF][NF][4] = {};
  // The B registers of both steps of span s for the NF batch tiles.
  auto load_b = [&](int64_t s, uint4 (&bx)[2][NF]) {
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        bx[q][j] = j < nj ? __ldg(xb + (j * spans + s) * 2 * kWarp + q * kWarp)
                          : make_uint4(0, 0, 0, 0);
      }
  };
  auto compute = [&](const uint4 (&bx)[2][NF], const uint4 (&va)[MF], const uint4 (&vb)[MF],
                     const uint64_t (&ma)[MF], const uint64_t (&mb)[MF]) {
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        const uint32_t a[4] = {q == 0 ? va[i].x : va[i].z, q == 0 ? vb[i].x : vb[i].z,
                               q == 0 ? va[i].y : va[i].w, q == 0 ? vb[i].y : vb[i].w};
        const uint32_t e = t < 2 ? step_meta(ma[i], q, t) | (step_meta(mb[i], q, t) << 16) : 0u;
#pragma unroll
        for (int j = 0; j < NF; ++j) {
          if (j >= nj) break;
          const uint32_t b[4] = {bx[q][j].x, bx[q][j].y, bx[q][j].z, bx[q][j].w};
          detail::mma_sp_16832<T>(acc[i][j], a, b, e);
        }
      }
  };

  const int64_t sb = spans * warp / kSmallWarps, se = spans * (warp + 1) / kSmallWarps;
  if constexpr (S == 0) {
    for (int64_t s0 = sb; s0 < se; s0 += U) {
      uint4 va[U][MF], vb[U][MF], bx[U][2][NF];
      uint64_t ma[U][MF], mb[U][MF];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (s0 + u >= se) break;
        load_b(s0 + u, bx[u]);
#pragma unroll
        for (int i = 0; i < MF; ++i) {
          va[u][i] = top_ok[i] ? __ldg(vtop[i] + (s0 + u) * 4) : make_uint4(0, 0, 0, 0);
          vb[u][i] = bottom_ok[i] ? __ldg(vbot[i] + (s0 + u) * 4) : make_uint4(0, 0, 0, 0);
          ma[u][i] = t < 2 && top_ok[i] ? __ldg(mtop[i] + s0 + u) : 0x4444444444444444ull;
          mb[u][i] = t < 2 && bottom_ok[i] ? __ldg(mbot[i] + s0 + u) : 0x4444444444444444ull;
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (s0 + u >= se) break;
        compute(bx[u], va[u], vb[u], ma[u], mb[u]);
      }
    }
  } else {
    // ring[warp][stage][2 * MF][lane] vectors, then meta[warp][stage][2 * MF][lane] words:
    // a warp reads 512 (256) contiguous bytes per field, conflict-free.
    extern __shared__ uint4 ring[];
    uint4* rv = ring + warp * S * 2 * MF * kWarp + lane;
    uint64_t* rm = reinterpret_cast<uint64_t*>(ring + kSmallWarps * S * 2 * MF * kWarp) +
                   warp * S * 2 * MF * kWarp + lane;
    auto issue = [&](int64_t s) {
      const int slot = static_cast<int>((s - sb) % S) * 2 * MF;
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        detail::cp_async16(rv + (slot + 2 * i) * kWarp, vtop[i] + s * 4, top_ok[i] ? 16 : 0);
        detail::cp_async16(rv + (slot + 2 * i + 1) * kWarp, vbot[i] + s * 4,
                           bottom_ok[i] ? 16 : 0);
        if (t < 2) {
          detail::cp_async8(rm + (slot + 2 * i) * kWarp, mtop[i] + s, top_ok[i] ? 8 : 0);
          detail::cp_async8(rm + (slot + 2 * i + 1) * kWarp, mbot[i] + s, bottom_ok[i] ? 8 : 0);
        }
      }
    };
#pragma unroll
    for (int p = 0; p < S - 1; ++p) {
      if (sb + p < se) issue(sb + p);
      detail::cp_async_commit();
    }
    for (int64_t s = sb; s < se; ++s) {
      detail::cp_async_wait<S - 2>();  // this lane's copies of span s have landed
      const int slot = static_cast<int>((s - sb) % S) * 2 * MF;
      uint4 va[MF], vb[MF];
      uint64_t ma[MF], mb[MF];
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        va[i] = rv[(slot + 2 * i) * kWarp];
        vb[i] = rv[(slot + 2 * i + 1) * kWarp];
        ma[i] = t < 2 && top_ok[i] ? rm[(slot + 2 * i) * kWarp] : 0x4444444444444444ull;
        mb[i] = t < 2 && bottom_ok[i] ? rm[(slot + 2 * i + 1) * kWarp] : 0x4444444444444444ull;
      }
      // The slot refilled here is the one read in the previous span, whose values were
      // consumed by its mma.sp already.
      if (s + S - 1 < se) issue(s + S - 1);
      detail::cp_async_commit();
      uint4 bx[2][NF];
      load_b(s, bx);
      compute(bx, va, vb, ma, mb);
    }
    detail::cp_async_wait<0>();
  }

  reduce_and_store<T, MF, NF>(sum, acc, bias, y, r0, bt0 * 8, out, batch, nj);
}

// The fragment kernels' shapes (rows / 16, batch columns / 8, spans per register load
// batch, ring stages or 0), by variant number - 2 (0 is the automatic choice, 1 the kernels
// above): the three the automatic choice uses and two runners-up of the H200 sweeps
// (benchmarks/cuda/nm24_sweep_h200_*.json). Measured there and dropped: register loads at
// 16x32, 64x32, 16x64, 32x64 (>= 1.12x the best everywhere), rings at 32x32 with 8 stages
// (>= 1.1x), 16x16 with 8 stages and 16x8 (best only on 768x3072 at batch 16-32, by < 10%),
// and a row-split kernel sharing a span's activations through shared memory (8 warps x
// 16-32 rows, the whole input per warp: best only on 3072x768 at batch 128-256, by <= 6%;
// 1.3-2.6x slower than frag:32x32 at batch 32-128 on the 4096-wide layers).
struct FragShape {
  int mf, nf, u, s;
};
constexpr FragShape kFragShapes[] = {
    {1, 2, 2, 0}, {2, 4, 1, 0}, {1, 4, 1, 8}, {1, 2, 1, 4}, {2, 4, 1, 4}};
constexpr int kFragVariants = sizeof(kFragShapes) / sizeof(kFragShapes[0]);

// Interleaved nm24_small_wide ("wide:uUi", U spans per load step) for batch <= kTiledFrom,
// in % 64 == 0; the legacy launch is the contiguous one with U = 2 (NF = 1).
constexpr int kWideU[] = {1, 2};
constexpr int kWideVariants = sizeof(kWideU) / sizeof(kWideU[0]);
// nm24_staged_wide ("stage:uU[s2][i]") for batch <= kTiledFrom, in % 64 == 0.
struct StageShape {
  int u, s;
  bool il;
};
// Measured and dropped (nm24_sweep_h200_9.json, _10.json): one stage (U = 2, 4, 4 with
// warps interleaved: 0.93-1.0x of the legacy kernel at batch 1-8), and U = 1 with 3-4
// stages (8 rows x 64 bytes a copy, as the fragment order: 0.7-0.95x; timed from a build
// whose U = 1 reads used the wrong swizzle, so only their speed counts).
constexpr StageShape kStageShapes[] = {{2, 2, false}, {2, 2, true}};
constexpr int kStageVariants = sizeof(kStageShapes) / sizeof(kStageShapes[0]);
constexpr int kLegacy = 1, kFirstFrag = 2, kFirstWide = kFirstFrag + kFragVariants,
              kFirstStage = kFirstWide + kWideVariants,
              kFirstGemm = kFirstStage + kStageVariants;

constexpr int stage_index(int u, int s, bool il) {
  for (int k = 0; k < kStageVariants; ++k) {
    const StageShape& f = kStageShapes[k];
    if (f.u == u && f.s == s && f.il == il) return k;
  }
  return -1;
}

constexpr int frag_index(int mf, int nf, int s) {
  for (int k = 0; k < kFragVariants; ++k) {
    const FragShape& f = kFragShapes[k];
    if (f.mf == mf && f.nf == nf && f.s == s) return k;
  }
  return -1;
}

// Above this batch the tiled kernel (operands staged through shared memory) takes over.
constexpr int64_t kTiledFrom = 32;
constexpr int kTiledWarps = 4;  // stacked along the output rows
constexpr int kStageK = 64;     // input columns per pipeline stage
constexpr int kStages = 3;
constexpr int kXPitch = kStageK + 8;      // halves; 144-byte rows keep ldmatrix conflict-free
constexpr int kAPitch = kStageK / 2 + 8;  // halves of kept values; 80-byte rows, likewise

template <int MF, int NF>
struct TiledShape {
  static constexpr int kRows = kTiledWarps * 16 * MF;
  static constexpr int kBatch = 8 * NF;
  static constexpr int kXHalves = kStages * kBatch * kXPitch;
  static constexpr int kAHalves = kStages * kRows * kAPitch;
  static constexpr int kMetaBytes = kStages * kRows * 8;
  static constexpr int kSmemBytes = 2 * (kXHalves + kAHalves) + kMetaBytes;
};

// A CTA owns 64 * MF output rows x 8 * NF batch columns. Activations, kept values and
// metadata of a 64-column step are staged in shared memory by cp.async, kStages deep, so
// global latency hides behind the mma.sp of earlier steps; both operands are read with
// ldmatrix.
template <typename T, int MF, int NF>
__global__ __launch_bounds__(kTiledWarps * kWarp) void nm24_tiled(
    const T* __restrict__ values, const uint8_t* __restrict__ metadata,
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t batch,
    int64_t in, int64_t out) {
  using Shape = TiledShape<MF, NF>;
  extern __shared__ uint4 smem[];
  T* xs = reinterpret_cast<T*>(smem);              // [kStages][kBatch][kXPitch]
  T* as = xs + Shape::kXHalves;                    // [kStages][kRows][kAPitch]
  uint8_t* ms = reinterpret_cast<uint8_t*>(as + Shape::kAHalves);  // [kStages][kRows][8]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * Shape::kRows;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * Shape::kBatch;
  const int64_t stages = (in + kStageK - 1) / kStageK;
  const int64_t ktiles = in / 32;
  const int64_t half_in = in / 2, meta_row = in / 8;

  auto load_stage = [&](int64_t s) {
    const int buf = static_cast<int>(s % kStages);
    T* xd = xs + buf * Shape::kBatch * kXPitch;
    for (int c = threadIdx.x; c < Shape::kBatch * (kStageK / 8); c += kTiledWarps * kWarp) {
      const int rb = c / (kStageK / 8), kc = (c % (kStageK / 8)) * 8;
      const int64_t b = b0 + rb, k = s * kStageK + kc;
      const bool ok = b < batch && k < in;
      detail::cp_async16(xd + rb * kXPitch + kc, ok ? x + b * in + k : x, ok ? 16 : 0);
    }
    T* ad = as + buf * Shape::kRows * kAPitch;
    for (int c = threadIdx.x; c < Shape::kRows * (kStageK / 16); c += kTiledWarps * kWarp) {
      const int rr = c / (kStageK / 16), vc = (c % (kStageK / 16)) * 8;
      const int64_t r = r0 + rr, v = s * (kStageK / 2) + vc;
      const bool ok = r < out && v < half_in;
      detail::cp_async16(ad + rr * kAPitch + vc, ok ? values + r * half_in + v : values,
                         ok ? 16 : 0);
    }
    uint8_t* md = ms + buf * Shape::kRows * 8;
    for (int c = threadIdx.x; c < Shape::kRows * 2; c += kTiledWarps * kWarp) {
      const int rr = c / 2, mc = (c % 2) * 4;
      const int64_t r = r0 + rr, mb = s * (kStageK / 8) + mc;
      const bool ok = r < out && mb < meta_row;
      detail::cp_async4(md + rr * 8 + mc, ok ? metadata + r * meta_row + mb : metadata,
                        ok ? 4 : 0);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < stages) load_stage(s);
    detail::cp_async_commit();
  }

  float acc[MF][NF][4] = {};
  const int wr = warp * 16 * MF;  // this warp's first row within the CTA
  for (int64_t s = 0; s < stages; ++s) {
    detail::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage s landed for every thread; stage s - 1 is consumed
    if (s + kStages - 1 < stages) load_stage(s + kStages - 1);
    detail::cp_async_commit();
    const int buf = static_cast<int>(s % kStages);
    const T* xb = xs + buf * Shape::kBatch * kXPitch;
    const T* ab = as + buf * Shape::kRows * kAPitch;
    const uint8_t* mb = ms + buf * Shape::kRows * 8;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      if (s * 2 + kk >= ktiles) break;
      uint32_t a[MF][4], e[MF];
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        const int row = wr + 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8;
        detail::ldmatrix_x4(a[i], ab + row * kAPitch + kk * 16 + (lane >> 4) * 8);
        e[i] = detail::smem_step_meta(mb + (wr + 16 * i) * 8, kk, g, t);
      }
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        uint32_t b[4];
        detail::ldmatrix_x4(b, xb + (8 * j + (lane & 7)) * kXPitch + kk * 32 + 8 * (lane >> 3));
#pragma unroll
        for (int i = 0; i < MF; ++i) detail::mma_sp_16832<T>(acc[i][j], a[i], b, e[i]);
      }
    }
  }
  detail::cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < MF; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      detail::store_tile(acc[i][j], bias, y, r0 + wr + 16 * i, b0 + 8 * j, out, batch, lane);
}

template <typename T, int MF, int NF>
void launch_tiled(const T* values, const uint8_t* metadata, const T* x, const T* bias, T* y,
                  int64_t batch, int64_t in, int64_t out, cudaStream_t stream) {
  using Shape = TiledShape<MF, NF>;
  // Needed above 48 KB; set on every launch so that every device gets it (a host-side call,
  // no stream work). A failure resurfaces as the launch error.
  (void)cudaFuncSetAttribute(nm24_tiled<T, MF, NF>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Shape::kSmemBytes);
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(out, Shape::kRows)),
                  static_cast<unsigned>(detail::ceil_div(batch, Shape::kBatch)));
  nm24_tiled<T, MF, NF><<<grid, kTiledWarps * kWarp, Shape::kSmemBytes, stream>>>(
      values, metadata, x, bias, y, batch, in, out);
}

template <typename T, int MF, int NF, int U, int S>
void launch_frag(const T* values, const uint8_t* metadata, const uint4* xf, const T* bias,
                 T* y, int64_t batch, int64_t in, int64_t out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(detail::ceil_div(batch, 8), NF)),
                  static_cast<unsigned>(detail::ceil_div(out, 16 * MF)));
  const int smem = S == 0 ? 0 : ring_bytes(MF, S);
  // Above 48 KB; set on every launch (see launch_tiled).
  if (S > 0) {
    (void)cudaFuncSetAttribute(nm24_frag<T, MF, NF, U, S>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  }
  nm24_frag<T, MF, NF, U, S><<<grid, kSmallWarps * kWarp, smem, stream>>>(
      values, metadata, xf, bias, y, batch, in, out);
}

// Launches nm24_frag for kFragShapes[k] (instantiated for every entry of the table).
template <typename T, int K = 0>
void launch_frag_variant(int k, const T* values, const uint8_t* metadata, const uint4* xf,
                         const T* bias, T* y, int64_t batch, int64_t in, int64_t out,
                         cudaStream_t stream) {
  if constexpr (K < kFragVariants) {
    constexpr FragShape f = kFragShapes[K];
    if (k == K) {
      launch_frag<T, f.mf, f.nf, f.u, f.s>(values, metadata, xf, bias, y, batch, in, out, stream);
    } else {
      launch_frag_variant<T, K + 1>(k, values, metadata, xf, bias, y, batch, in, out, stream);
    }
  }
}

// Runs fragment variant k (an index of kFragShapes) after the pre-pass into xf.
template <typename T>
void frag_path(int k, const T* values, const uint8_t* metadata, const T* x, uint4* xf,
               const T* bias, T* y, int64_t batch, int64_t in, int64_t out,
               cudaStream_t stream) {
  const int64_t total = detail::ceil_div(batch, 8) * (in / 64) * 2 * kWarp;
  const int64_t blocks = std::min<int64_t>(detail::ceil_div(total, 256), 8192);
  nm24_frag_x<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(x, xf, batch, in, total);
  launch_frag_variant<T>(k, values, metadata, xf, bias, y, batch, in, out, stream);
}

// Whether fragment variant k can run on this problem and device: a grid of at most 65535
// row tiles, and its ring (with the reduction buffer) within the shared memory a block may
// opt in to (227 KB on sm_90, 163 KB on sm_80, 99 KB on sm_86/89).
bool frag_fits(int k, const Dense& d) {
  const FragShape& f = kFragShapes[k];
  const int smem = (f.s == 0 ? 0 : ring_bytes(f.mf, f.s)) + f.mf * f.nf * 4 * kWarp * 4;
  return detail::ceil_div(d.out_features, 16 * f.mf) <= 65535 &&
         smem <= detail::device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 << 10);
}

// Launches kernel_for(NF) with one 16-row strip per CTA and 8 NF batch columns, NF = 1, 2 or
// 4 as the batch needs (8, 16 or 32), over 32-column grid columns of the batch.
template <typename T, typename KernelFor>
void launch_strips(const KernelFor& kernel_for, const T* values, const uint8_t* metadata,
                   const T* x, const T* bias, T* y, int64_t batch, int64_t in, int64_t out,
                   cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(out, 16)),
                  static_cast<unsigned>(detail::ceil_div(batch, 32)));
  auto go = [&](auto nf) {
    kernel_for(nf)<<<grid, kSmallWarps * kWarp, 0, stream>>>(values, metadata, x, bias, y,
                                                             batch, in, out);
  };
  if (batch <= 8) {
    go(std::integral_constant<int, 1>{});
  } else if (batch <= 16) {
    go(std::integral_constant<int, 2>{});
  } else {
    go(std::integral_constant<int, 4>{});
  }
}

// Launches the interleaved nm24_small_wide with U = kWideU[k] (instantiated for every entry
// of the table).
template <typename T, int K = 0>
void launch_wide(int k, const T* values, const uint8_t* metadata, const T* x, const T* bias,
                 T* y, int64_t batch, int64_t in, int64_t out, cudaStream_t stream) {
  if constexpr (K < kWideVariants) {
    constexpr int U = kWideU[K];
    if (k != K) {
      launch_wide<T, K + 1>(k, values, metadata, x, bias, y, batch, in, out, stream);
      return;
    }
    launch_strips<T>([](auto nf) { return nm24_small_wide<T, decltype(nf)::value, U, true>; },
                     values, metadata, x, bias, y, batch, in, out, stream);
  }
}

// Launches nm24_staged_wide of kStageShapes[k].
template <typename T, int K = 0>
void launch_staged(int k, const T* values, const uint8_t* metadata, const T* x, const T* bias,
                   T* y, int64_t batch, int64_t in, int64_t out, cudaStream_t stream) {
  if constexpr (K < kStageVariants) {
    if (k != K) {
      launch_staged<T, K + 1>(k, values, metadata, x, bias, y, batch, in, out, stream);
      return;
    }
    launch_strips<T>(
        [](auto nf) {
          constexpr StageShape f = kStageShapes[K];
          return nm24_staged_wide<T, decltype(nf)::value, f.u, f.s, f.il>;
        },
        values, metadata, x, bias, y, batch, in, out, stream);
  }
}

// The kernel family of a 2:4 tensor-core problem: kLegacy, kFirstFrag + an index of
// kFragShapes or kFirstGemm + a gemm24 variant. variant is 0 (automatic) or a forced one
// (nm24_variant); a variant that does not fit falls back to the legacy kernels.
//
// The automatic choice follows the H200 sweeps (benchmarks/cuda/nm24_sweep_h200_*.json,
// five layer shapes): nm24_staged_wide up to batch 8 (1.02-1.16x faster than the legacy
// nm24_small_wide and 1.0-1.2x than wide:u1i, nm24_sweep_h200_9.json and _10.json), its
// warps interleaved (stage:u2s2i) on layers with out >= 2 in or in >= 8192 (3072x768,
// 4096x11008: 1.02-1.05x faster than stage:u2s2; 11008x4096 the same; 4096x4096 and
// 768x3072 1.02-1.05x slower); frag:16x16 to 16;
// above, the GEMM kernels: 128 x 64 tiles to batch 64 and on layers with fewer than 2048
// rows or inputs (from batch 9 on layers with fewer than 2048 rows), 256 x 128 tiles (split
// over the input when they are few) on the larger layers above batch 64. A GEMM variant
// that does not fit the device's shared memory falls back to the smaller tile, then to
// frag:16x16, then to the legacy kernels.
int nm24_choice(const Dense& d, int variant) {
  const int64_t in = d.in_features, batch = d.batch;
  if (in % 64 != 0 || variant == kLegacy) return kLegacy;
  if (variant >= kFirstGemm) return gemm24::fits(variant - kFirstGemm, d) ? variant : kLegacy;
  if (variant >= kFirstWide) return batch <= kTiledFrom ? variant : kLegacy;  // and stage
  if (variant >= kFirstFrag) return frag_fits(variant - kFirstFrag, d) ? variant : kLegacy;
  if (batch <= kSmallBatch) {
    constexpr int kContiguous = stage_index(2, 2, false), kInterleaved = stage_index(2, 2, true);
    static_assert(kContiguous >= 0 && kInterleaved >= 0, "missing from kStageShapes");
    const bool il = d.out_features >= 2 * in || in >= 8192;
    return kFirstStage + (il ? kInterleaved : kContiguous);
  }
  constexpr int kSmall = frag_index(1, 2, 0);
  static_assert(kSmall >= 0, "missing from kFragShapes");
  const int big = gemm24::find(256, 128), small = gemm24::find(128, 64);
  const bool large = d.out_features >= 2048 && in >= 2048;
  if (batch > 64 && large && big >= 0 && gemm24::fits(big, d)) return kFirstGemm + big;
  if ((batch > 16 || d.out_features < 2048) && small >= 0 && gemm24::fits(small, d)) {
    return kFirstGemm + small;
  }
  return frag_fits(kSmall, d) ? kFirstFrag + kSmall : kLegacy;
}

template <typename T>
void launch_tc(const Dense& d, const NM& w, cudaStream_t stream) {
  const T* values = static_cast<const T*>(w.values);
  const T* x = static_cast<const T*>(d.x);
  const T* bias = static_cast<const T*>(d.bias);
  T* y = static_cast<T*>(d.y);
  const int64_t out = d.out_features, in = d.in_features, batch = d.batch;
  const int choice = nm24_choice(d, w.variant);
  if (choice >= kFirstGemm) {
    gemm24::launch(choice - kFirstGemm, d, w, stream);
    return;
  }
  if (choice >= kFirstStage) {
    launch_staged<T>(choice - kFirstStage, values, w.metadata, x, bias, y, batch, in, out,
                     stream);
    return;
  }
  if (choice >= kFirstWide) {
    launch_wide<T>(choice - kFirstWide, values, w.metadata, x, bias, y, batch, in, out, stream);
    return;
  }
  if (choice >= kFirstFrag) {
    frag_path<T>(choice - kFirstFrag, values, w.metadata, x, static_cast<uint4*>(w.scratch),
                 bias, y, batch, in, out, stream);
    return;
  }
  if (batch > kTiledFrom) {
    if (batch <= 128) {
      launch_tiled<T, 1, 4>(values, w.metadata, x, bias, y, batch, in, out, stream);
    } else {
      launch_tiled<T, 2, 8>(values, w.metadata, x, bias, y, batch, in, out, stream);
    }
    return;
  }
  auto go = [&](auto mf, auto nf, auto u) {
    constexpr int MF = decltype(mf)::value, NF = decltype(nf)::value, U = decltype(u)::value;
    const dim3 grid(static_cast<unsigned>(detail::ceil_div(out, 16 * MF)),
                    static_cast<unsigned>(detail::ceil_div(batch, 8 * NF)));
    nm24_small<T, MF, NF, U><<<grid, kSmallWarps * kWarp, 0, stream>>>(values, w.metadata, x,
                                                                       bias, y, batch, in, out);
  };
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  using I4 = std::integral_constant<int, 4>;
  // One 16-row strip per CTA gives the most CTAs (taller strips measured slower on an
  // H100). With in % 64 == 0 the 16-byte-load variant streams 1.3-1.4x faster (H100,
  // 4096 and 11008 x 4096, batch 1-8); the U below were the fastest measured there.
  if (in % 64 == 0) {
    launch_strips<T>(
        [](auto nf) {
          constexpr int NF = decltype(nf)::value;
          return nm24_small_wide<T, NF, NF == 1 ? 2 : 1>;
        },
        values, w.metadata, x, bias, y, batch, in, out, stream);
    return;
  }
  if (batch <= 8) {
    go(I1{}, I1{}, std::integral_constant<int, 8>{});
  } else if (batch <= 16) {
    go(I1{}, I2{}, I4{});
  } else {
    go(I1{}, I4{}, I4{});
  }
}

bool tensor_core_ok(DType dtype, int64_t n, int64_t m, int64_t in_features) {
  return dtype != DType::f32 && n == 2 && m == 4 && in_features % 32 == 0;
}

// "frag:ROWSxBATCH" (register loads) or "ringS:ROWSxBATCH" (an S-stage ring); ROWS x BATCH
// is a CTA's tile.
std::string frag_name(const FragShape& f) {
  return (f.s == 0 ? std::string("frag") : "ring" + std::to_string(f.s)) + ":" +
         std::to_string(f.mf * 16) + "x" + std::to_string(f.nf * 8);
}

std::string wide_name(int u) { return "wide:u" + std::to_string(u) + "i"; }

std::string stage_name(const StageShape& f) {
  return "stage:u" + std::to_string(f.u) + (f.s > 1 ? "s" + std::to_string(f.s) : "") +
         (f.il ? "i" : "");
}

}  // namespace

const char* nm_path(DType dtype, int64_t n, int64_t m, int64_t in_features) {
  return tensor_core_ok(dtype, n, m, in_features) ? "tensor_core" : "cuda_core";
}

int nm24_variant(const char* spec) {
  const std::string v = spec == nullptr ? "" : spec;
  if (v.empty() || v == "auto") return 0;
  if (v == "legacy") return kLegacy;
  for (int k = 0; k < kFragVariants; ++k) {
    if (v == frag_name(kFragShapes[k])) return kFirstFrag + k;
  }
  for (int k = 0; k < kWideVariants; ++k) {
    if (v == wide_name(kWideU[k])) return kFirstWide + k;
  }
  for (int k = 0; k < kStageVariants; ++k) {
    if (v == stage_name(kStageShapes[k])) return kFirstStage + k;
  }
  for (int k = 0; k < gemm24::count(); ++k) {
    if (v == gemm24::name(k)) return kFirstGemm + k;
  }
  return -1;
}

std::string nm24_variant_names() {
  std::string names = "auto, legacy";
  for (const FragShape& f : kFragShapes) names += ", " + frag_name(f);
  for (int u : kWideU) names += ", " + wide_name(u);
  for (const StageShape& f : kStageShapes) names += ", " + stage_name(f);
  for (int k = 0; k < gemm24::count(); ++k) names += ", " + gemm24::name(k);
  return names;
}

int64_t nm_scratch_bytes(const Dense& d, const NM& w) {
  if (!tensor_core_ok(d.dtype, w.n, w.m, d.in_features) || d.batch == 0) return 0;
  const int choice = nm24_choice(d, w.variant);
  if (choice >= kFirstGemm) return gemm24::scratch_bytes(choice - kFirstGemm, d);
  if (choice < kFirstFrag || choice >= kFirstWide) return 0;
  return detail::ceil_div(d.batch, 8) * 8 * d.in_features * 2;  // 8 rows of 16-bit values
}

cudaError_t linear_nm(const Dense& d, const void* xt, const NM& w, cudaStream_t stream) {
  return detail::by_dtype(d.dtype, [&](auto* tag) -> cudaError_t {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (!std::is_same_v<T, float>) {
      if (tensor_core_ok(d.dtype, w.n, w.m, d.in_features)) {
        if (w.scratch == nullptr && nm_scratch_bytes(d, w) > 0) return cudaErrorInvalidValue;
        launch_tc<T>(d, w, stream);
        return cudaGetLastError();
      }
    }
    const int bits = w.m <= 2 ? 1 : 32 - __builtin_clz(static_cast<unsigned>(w.m - 1));
    const int64_t groups = detail::ceil_div(d.in_features, w.m);
    const int64_t slots = groups * w.n;
    const NmRows<T> rows{static_cast<const T*>(w.values), w.metadata, slots,
                         detail::ceil_div(slots * bits, 8), d.in_features,
                         static_cast<int>(w.n), static_cast<int>(w.m), bits};
    return detail::launch_rows<T>(d, xt, rows, stream);
  });
}

}  // namespace cuda
}  // namespace sparseprune
