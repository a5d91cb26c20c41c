// How fast can a 2:4 weight stream be read at batch 1 on this GPU, by access pattern alone?
// A probe for the next step of the small-batch 2:4 kernel (nm24_small_wide, csrc/cuda/
// spmm_nm.cu), which moves ~2.2 TB/s on an H200 where cuBLAS reads a dense weight at ~3.6
// (benchmarks/RESULTS.md, "CUDA: ... 2:4 weight streaming at batch 1-8"). No torch, no mma:
// each kernel reads the kept values of an out x in 2:4 layer (out x in/2 halves) once and
// folds them into one word per thread, so only the reads differ:
//
//   quads   the kernel's pattern: a CTA owns a 16-row strip, its 8 warps split the input
//           into contiguous ranges, lane (g, t) loads 16 bytes of rows g and g + 8 per
//           64-column span (U = 2 spans per step): per load instruction 8 rows x 64 bytes;
//   strip   the same work on a strip-major layout (each strip's span stored as one 1 KB
//           piece, top 8 rows then bottom 8): per load instruction 512 contiguous bytes;
//   rows    a GEMV's pattern: the 8 warps of a CTA take 2 rows each, a lane loads 16 bytes,
//           512 contiguous bytes of one row per instruction.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/cuda_stream_probe.cu -o /tmp/probe && /tmp/probe
//
// Prints GB/s of each kernel (median of 21 timed launches, inputs rotated through copies
// larger than twice the L2) for 4096x4096, 11008x4096 and 4096x11008, beside a device copy.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                 \
  do {                                                                              \
    cudaError_t e_ = (call);                                                        \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

namespace {

constexpr int kWarps = 8, kWarp = 32;

__device__ __forceinline__ uint32_t fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// Spans [sb, se) two per step, as nm24_small_wide (U = 2): span s is a[s * stride] and
// b[s * stride] (uint4 units), folded into one word.
__device__ __forceinline__ uint32_t stream_spans(const uint4* __restrict__ a,
                                                 const uint4* __restrict__ b, int64_t stride,
                                                 int64_t sb, int64_t se) {
  uint32_t acc = 0;
  for (int64_t s = sb; s < se; s += 2) {
    uint4 a0 = __ldg(a + s * stride), b0 = __ldg(b + s * stride), a1{}, b1{};
    if (s + 1 < se) {
      a1 = __ldg(a + (s + 1) * stride);
      b1 = __ldg(b + (s + 1) * stride);
    }
    acc ^= fold(a0) ^ fold(b0) ^ fold(a1) ^ fold(b1);
  }
  return acc;
}

// Row-major kept values (in / 2 halves = in bytes per row); the access of nm24_small_wide.
__global__ __launch_bounds__(kWarps * kWarp) void quads(const uint4* __restrict__ v,
                                                        uint32_t* __restrict__ sink,
                                                        int64_t in, int64_t out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int g = lane >> 2, t = lane & 3;
  const int64_t rt = blockIdx.x * 16 + g, rb = rt + 8;
  const int64_t row16 = in / 16;  // uint4 per row
  const uint4* top = v + (rt < out ? rt : 0) * row16 + t;
  const uint4* bot = v + (rb < out ? rb : 0) * row16 + t;
  const int64_t spans = in / 64, sb = spans * warp / kWarps, se = spans * (warp + 1) / kWarps;
  sink[blockIdx.x * blockDim.x + threadIdx.x] = stream_spans(top, bot, 4, sb, se);
}

// Strip-major: strip k, span s at uint4 offset (k * spans + s) * 64; top rows first.
__global__ __launch_bounds__(kWarps * kWarp) void strip(const uint4* __restrict__ v,
                                                        uint32_t* __restrict__ sink,
                                                        int64_t in, int64_t out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t spans = in / 64, sb = spans * warp / kWarps, se = spans * (warp + 1) / kWarps;
  const uint4* base = v + static_cast<int64_t>(blockIdx.x) * spans * 64 + lane;
  sink[blockIdx.x * blockDim.x + threadIdx.x] = stream_spans(base, base + 32, 64, sb, se);
}

// GEMV-like: warp w of CTA k reads rows 16k + 2w and 16k + 2w + 1 end to end.
__global__ __launch_bounds__(kWarps * kWarp) void rows(const uint4* __restrict__ v,
                                                       uint32_t* __restrict__ sink,
                                                       int64_t in, int64_t out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row16 = in / 16;
  uint32_t acc = 0;
  for (int r = 0; r < 2; ++r) {
    const int64_t row = blockIdx.x * 16 + 2 * warp + r;
    if (row >= out) break;
    const uint4* p = v + row * row16;
    for (int64_t c = lane; c < row16; c += 2 * kWarp) {
      uint4 a = __ldg(p + c), b{};
      if (c + kWarp < row16) b = __ldg(p + c + kWarp);
      acc ^= fold(a) ^ fold(b);
    }
  }
  sink[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

using Kernel = void (*)(const uint4*, uint32_t*, int64_t, int64_t);

float median_us(Kernel k, const std::vector<uint4*>& copies, uint32_t* sink, int64_t in,
                int64_t out) {
  const dim3 grid(static_cast<unsigned>((out + 15) / 16));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (size_t i = 0; i < copies.size(); ++i) k<<<grid, kWarps * kWarp>>>(copies[i], sink, in, out);
  std::vector<float> us;
  for (int rep = 0; rep < 21; ++rep) {
    CHECK(cudaEventRecord(a));
    k<<<grid, kWarps * kWarp>>>(copies[rep % copies.size()], sink, in, out);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1000.f);
  }
  CHECK(cudaGetLastError());
  std::sort(us.begin(), us.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return us[us.size() / 2];
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  const int64_t shapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& s : shapes) {
    const int64_t out = s[0], in = s[1];
    const size_t bytes = static_cast<size_t>(out + 15) / 16 * 16 * in;  // in / 2 halves x 2 B
    const size_t l2 = static_cast<size_t>(prop.l2CacheSize);
    const size_t n_copies = std::max<size_t>(2, 4 * l2 / bytes + 1);
    std::vector<uint4*> copies(n_copies);
    for (auto& c : copies) {
      CHECK(cudaMalloc(&c, bytes));
      CHECK(cudaMemset(c, 1, bytes));
    }
    uint32_t* sink = nullptr;
    CHECK(cudaMalloc(&sink, static_cast<size_t>((out + 15) / 16) * kWarps * kWarp * 4));
    const double payload = static_cast<double>(out) * in;  // bytes of kept values
    const float tq = median_us(quads, copies, sink, in, out);
    const float ts = median_us(strip, copies, sink, in, out);
    const float tr = median_us(rows, copies, sink, in, out);
    // A device-to-device copy of one copy into the next, for the read + write ceiling.
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    std::vector<float> cu;
    for (int rep = 0; rep < 11; ++rep) {
      CHECK(cudaEventRecord(a));
      CHECK(cudaMemcpyAsync(copies[(rep + 1) % n_copies], copies[rep % n_copies], bytes,
                            cudaMemcpyDeviceToDevice));
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      cu.push_back(ms * 1000.f);
    }
    std::sort(cu.begin(), cu.end());
    std::printf("%5lldx%-5lld %6.1f MB  quads %7.2f us %6.0f GB/s | strip %7.2f us %6.0f GB/s"
                " | rows %7.2f us %6.0f GB/s | copy %6.0f GB/s (read + write)\n",
                static_cast<long long>(out), static_cast<long long>(in), payload / 1e6, tq,
                payload / tq / 1e3, ts, payload / ts / 1e3, tr, payload / tr / 1e3,
                2.0 * bytes / cu[cu.size() / 2] / 1e3);
    for (auto* c : copies) CHECK(cudaFree(c));
    CHECK(cudaFree(sink));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
  }
  return 0;
}
