// Kernel core against a dense double-precision product, for every ISA this CPU runs,
// on random matrices of awkward shapes. No torch, no Python.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/dispatch.h"

using namespace sparseprune::cpu;

namespace {

int g_failures = 0;

#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      ++g_failures;                                         \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                    \
      std::fprintf(stderr, "\n");                           \
    }                                                       \
  } while (0)

std::mt19937 rng(1234);

float uniform() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

struct Case {
  int64_t batch, out, in;
  double density;
};

// A dense weight with roughly `density` nonzeros, some rows all zero.
std::vector<float> random_weight(const Case& c) {
  std::vector<float> w(c.out * c.in, 0.f);
  std::bernoulli_distribution keep(c.density);
  for (int64_t r = 0; r < c.out; ++r) {
    if (r % 5 == 3) continue;
    for (int64_t k = 0; k < c.in; ++k) w[r * c.in + k] = keep(rng) ? uniform() : 0.f;
  }
  return w;
}

std::vector<double> reference(const Case& c, const std::vector<float>& w,
                              const std::vector<float>& x, const std::vector<float>& bias) {
  std::vector<double> y(c.batch * c.out);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.out; ++r) {
      double acc = bias[r];
      for (int64_t k = 0; k < c.in; ++k) acc += double(w[r * c.in + k]) * x[b * c.in + k];
      y[b * c.out + r] = acc;
    }
  return y;
}

template <typename T>
T to_storage(float f);
template <>
float to_storage<float>(float f) { return f; }
template <>
uint16_t to_storage<uint16_t>(float f) { return f32_to_bf16(f); }

template <typename T>
float from_storage(T v);
template <>
float from_storage<float>(float v) { return v; }
template <>
float from_storage<uint16_t>(uint16_t v) { return bf16_to_f32(v); }

// Rounds w, x and bias to the storage type so the reference sees exactly what the kernel sees.
template <typename T>
std::vector<T> round_trip(std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = to_storage<T>(v[i]);
    v[i] = from_storage<T>(out[i]);
  }
  return out;
}

template <typename T>
void expect_close(const char* what, Isa isa, const Case& c, const std::vector<T>& y,
                  const std::vector<double>& ref) {
  const double tol = std::is_same_v<T, float> ? 1e-4 : 2e-2;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double got = from_storage<T>(y[i]);
    if (std::fabs(got - ref[i]) > tol * (1.0 + std::fabs(ref[i]))) {
      EXPECT(false, "%s isa=%s batch=%ld out=%ld in=%ld: y[%zu]=%g, want %g", what,
             isa_name(isa), long(c.batch), long(c.out), long(c.in), i, got, ref[i]);
      return;
    }
  }
}

// Activations packed the way the kernel asks (as csrc/ops.cpp does), into buf.
XPacked pack_for(const Dense& d, const XLayout& layout, std::vector<float>& buf,
                 PackFn pack = pack_x) {
  XPacked xp;
  if (layout.lanes == 0 || d.batch == 0) return xp;
  xp.plan = plan_x(d.batch, d.in_features, layout);
  buf.assign(static_cast<size_t>(xp.plan.floats()), -1.f);
  // two column ranges, as two threads would fill them
  pack(d, xp.plan, buf.data(), 0, d.in_features / 2);
  pack(d, xp.plan, buf.data(), d.in_features / 2, d.in_features);
  xp.xt = buf.data();
  return xp;
}

template <typename T>
void run_case(Isa isa, const Case& c, DType dtype) {
  std::vector<float> wf = random_weight(c), xf(c.batch * c.in), bf(c.out);
  for (auto& v : xf) v = uniform();
  for (auto& v : bf) v = uniform();
  const std::vector<T> x = round_trip<T>(xf), bias = round_trip<T>(bf);
  std::vector<T> w = round_trip<T>(wf);
  const std::vector<double> ref = reference(c, wf, xf, bf);
  const KernelTable& k = kernels_for(isa);
  std::vector<T> y(c.batch * c.out);
  const Dense d{x.data(), bias.data(), y.data(), c.batch, c.in, c.out, dtype};
  std::vector<float> buf;

  // CSR, both index types; rows computed in two ranges, as threads would.
  for (IndexType it : {IndexType::u16, IndexType::i32}) {
    if (it == IndexType::u16 && c.in > 65536) continue;  // uint16 cannot address it
    std::vector<int64_t> offsets{0};
    std::vector<uint16_t> c16;
    std::vector<int32_t> c32;
    std::vector<T> vals;
    for (int64_t r = 0; r < c.out; ++r) {
      for (int64_t j = 0; j < c.in; ++j)
        if (wf[r * c.in + j] != 0.f) {
          c16.push_back(uint16_t(j));
          c32.push_back(int32_t(j));
          vals.push_back(w[r * c.in + j]);
        }
      offsets.push_back(int64_t(vals.size()));
    }
    const Csr csr{offsets.data(),
                  it == IndexType::u16 ? static_cast<const void*>(c16.data()) : c32.data(),
                  vals.data(), it};
    std::fill(y.begin(), y.end(), T{});
    const XPacked xp = pack_for(d, k.csr_x, buf, k.pack);
    k.csr(d, csr, xp, 0, c.out / 2);
    k.csr(d, csr, xp, c.out / 2, c.out);
    expect_close(it == IndexType::u16 ? "csr/u16" : "csr/i32", isa, c, y, ref);
  }

  // 8-bit CSR: offsets per (row, segment of kCsrSegment columns), in-segment indices.
  {
    const int64_t segs = (c.in + kCsrSegment - 1) / kCsrSegment;
    std::vector<int64_t> offsets{0};
    std::vector<uint8_t> c8;
    std::vector<T> vals;
    for (int64_t r = 0; r < c.out; ++r)
      for (int64_t s = 0; s < segs; ++s) {
        for (int64_t j = s * kCsrSegment; j < std::min(c.in, (s + 1) * kCsrSegment); ++j)
          if (wf[r * c.in + j] != 0.f) {
            c8.push_back(uint8_t(j - s * kCsrSegment));
            vals.push_back(w[r * c.in + j]);
          }
        offsets.push_back(int64_t(vals.size()));
      }
    const Csr csr{offsets.data(), c8.data(), vals.data(), IndexType::u8, segs};
    std::fill(y.begin(), y.end(), T{});
    const XPacked xp = pack_for(d, k.csr_x, buf, k.pack);
    k.csr(d, csr, xp, 0, c.out / 2);
    k.csr(d, csr, xp, c.out / 2, c.out);
    expect_close("csr/u8", isa, c, y, ref);
  }

  // The CSR bitmap view (batch 1 per call): values in exact-size storage, so that a read
  // past the last value shows under the sanitizers; x padded to whole bitmap bytes.
  {
    const int64_t row_bytes = csr_bitmap_row_bytes(c.in);
    std::vector<int64_t> starts{0};
    std::vector<uint8_t> bitmap(c.out * row_bytes, 0);
    std::vector<T> vals;
    for (int64_t r = 0; r < c.out; ++r) {
      for (int64_t j = 0; j < c.in; ++j)
        if (wf[r * c.in + j] != 0.f) {
          bitmap[r * row_bytes + j / 8] |= uint8_t(1u << (j % 8));
          vals.push_back(w[r * c.in + j]);
        }
      starts.push_back(int64_t(vals.size()));
    }
    std::unique_ptr<T[]> exact(new T[std::max<size_t>(vals.size(), 1)]);
    std::copy(vals.begin(), vals.end(), exact.get());
    const CsrBitmap view{starts.data(), bitmap.data(), exact.get(), row_bytes};
    std::vector<float> xrow(row_bytes * 8, 0.f);
    std::fill(y.begin(), y.end(), T{});
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t j = 0; j < c.in; ++j) xrow[j] = xf[b * c.in + j];
      Dense row = d;
      row.batch = 1;
      row.y = y.data() + b * c.out;
      k.csr_bitmap(row, view, xrow.data(), 0, c.out / 2);
      k.csr_bitmap(row, view, xrow.data(), c.out / 2, c.out);
    }
    expect_close("csr/bitmap", isa, c, y, ref);
  }

  // BSR, ragged block grids: every block that holds a nonzero is stored.
  const std::vector<std::pair<int64_t, int64_t>> block_shapes{
      {3, 5},   {4, 1},   {8, 1},   {2, 1},   {1, 4},   {1, 2},    {8, 8},
      {16, 16}, {1, 32},  {32, 32}, {24, 8},  {13, 16}, {24, 20}, {48, 16}};
  for (auto [bh, bw] : block_shapes) {
    const int64_t rb = (c.out + bh - 1) / bh, cb = (c.in + bw - 1) / bw;
    std::vector<int64_t> offsets{0};
    std::vector<int32_t> cols;
    std::vector<T> blocks;
    for (int64_t i = 0; i < rb; ++i) {
      for (int64_t j = 0; j < cb; ++j) {
        bool any = false;
        std::vector<T> blk(bh * bw, T{});
        for (int64_t a = 0; a < bh; ++a)
          for (int64_t e = 0; e < bw; ++e) {
            const int64_t r = i * bh + a, col = j * bw + e;
            if (r < c.out && col < c.in && wf[r * c.in + col] != 0.f) {
              blk[a * bw + e] = w[r * c.in + col];
              any = true;
            } else if (r >= c.out || col >= c.in) {
              blk[a * bw + e] = to_storage<T>(1e6f);  // padding: must never be read
            }
          }
        if (any) {
          cols.push_back(int32_t(j));
          blocks.insert(blocks.end(), blk.begin(), blk.end());
        }
      }
      offsets.push_back(int64_t(cols.size()));
    }
    const Bsr bsr{offsets.data(), cols.data(), blocks.data(), bh, bw};
    std::fill(y.begin(), y.end(), T{});
    const XPacked xp = pack_for(d, k.bsr_x, buf, k.pack);
    k.bsr(d, bsr, xp, 0, rb / 2);
    k.bsr(d, bsr, xp, rb / 2, rb);
    expect_close("bsr", isa, c, y, ref);
  }
}

// N:M: the weight is made n:m first (keep the first n nonzeros of each group).
template <typename T>
void run_nm_case(Isa isa, const Case& c, int64_t n, int64_t m, DType dtype) {
  std::vector<float> wf = random_weight(c), xf(c.batch * c.in), bf(c.out);
  for (auto& v : xf) v = uniform();
  for (auto& v : bf) v = uniform();
  const int64_t slots = nm_slots_per_row(c.in, n, m), row_bytes = nm_meta_row_bytes(c.in, n, m);
  const int bits = nm_index_bits(m);
  std::vector<uint8_t> meta(c.out * row_bytes, 0);
  std::vector<float> valsf(c.out * slots, 0.f);
  for (int64_t r = 0; r < c.out; ++r) {
    for (int64_t g = 0; g * m < c.in; ++g) {
      int64_t used = 0;
      for (int64_t j = 0; j < m && g * m + j < c.in; ++j) {
        float& v = wf[r * c.in + g * m + j];
        if (v == 0.f) continue;
        if (used == n) {
          v = 0.f;
          continue;
        }
        const int64_t s = g * n + used++;
        valsf[r * slots + s] = v;
        const int64_t bit = s * bits;
        const uint32_t field = uint32_t(j) << (bit & 7);
        meta[r * row_bytes + (bit >> 3)] |= uint8_t(field & 0xff);
        if (field >> 8) meta[r * row_bytes + (bit >> 3) + 1] |= uint8_t(field >> 8);
      }
    }
  }
  const std::vector<T> x = round_trip<T>(xf), bias = round_trip<T>(bf);
  const std::vector<T> vals = round_trip<T>(valsf);
  round_trip<T>(wf);
  const std::vector<double> ref = reference(c, wf, xf, bf);
  std::vector<T> y(c.batch * c.out);
  const Dense d{x.data(), bias.data(), y.data(), c.batch, c.in, c.out, dtype};
  const NM nm{vals.data(), meta.data(), n, m};
  std::vector<float> buf;
  const KernelTable& k = kernels_for(isa);
  const XPacked xp = pack_for(d, k.nm_x, buf, k.pack);
  k.nm(d, nm, xp, 0, c.out);
  expect_close("nm", isa, c, y, ref);
  if (k.nm_tiles != nullptr && nm_tiles_fit(dtype, m, k.nm_tiles_window)) {
    // Row tiles, also with the rows split where two threads would split them.
    std::fill(y.begin(), y.end(), T{});
    k.nm_tiles(d, nm, 0, c.out);
    expect_close("nm tiles", isa, c, y, ref);
    std::fill(y.begin(), y.end(), T{});
    const int64_t tiles = (c.out + k.nm_tiles_window - 1) / k.nm_tiles_window;
    const int64_t mid = tiles / 2 * k.nm_tiles_window;
    k.nm_tiles(d, nm, 0, mid);
    k.nm_tiles(d, nm, mid, c.out);
    expect_close("nm tiles split", isa, c, y, ref);
  }
}

// Every ISA's packer writes exactly what the portable one does (values and zero padding),
// for every chunk width, ragged column ranges and both dtypes.
void test_packers() {
  const XLayout layouts[] = {{16, 2, 8, true}, {8, 4, 8, true}, {16, 2, 8, false}};
  for (Isa isa : supported_isas()) {
    const PackFn pack = kernels_for(isa).pack;
    for (const XLayout& layout : layouts) {
      for (int64_t batch : {1, 5, 16, 31, 32, 40, 77, 130}) {
        for (int64_t in : {1, 15, 16, 17, 70, 300}) {
          std::vector<float> xf(static_cast<size_t>(batch * in));
          for (auto& v : xf) v = uniform();
          std::vector<uint16_t> xb(xf.size());
          for (size_t i = 0; i < xf.size(); ++i) xb[i] = f32_to_bf16(xf[i]);
          for (int dt = 0; dt < 2; ++dt) {
            const Dense d{dt ? static_cast<const void*>(xb.data()) : xf.data(), nullptr,
                          nullptr, batch, in, 1, dt ? DType::bf16 : DType::f32};
            const XPlan plan = plan_x(batch, in, layout);
            std::vector<float> want(static_cast<size_t>(plan.floats()), -1.f), got = want;
            pack_x(d, plan, want.data(), 0, in);
            const int64_t mid = in / 3;  // ranges split where two threads would
            pack(d, plan, got.data(), 0, mid);
            pack(d, plan, got.data(), mid, in);
            EXPECT(want == got, "pack %s batch %lld in %lld dtype %d lanes %lld",
                   isa_name(isa), static_cast<long long>(batch), static_cast<long long>(in),
                   dt, static_cast<long long>(layout.lanes));
          }
        }
      }
    }
  }
}

void test_csr_layout() {
  const KernelTable& avx2 = kernels_for(Isa::avx2);
  const KernelTable& avx512 = kernels_for(Isa::avx512);
  constexpr int64_t kL2 = 512 << 10;
  auto width = [](const XLayout& l) { return l.lanes * l.max_vectors; };
  // 32 lanes x 1536 columns x 4 bytes = 192 KB fits half the L2; 4096 columns do not
  EXPECT(width(csr_layout(avx2, false, 1536, kL2)) == 32, "csr layout 1536");
  EXPECT(width(csr_layout(avx2, false, 4096, kL2)) == 16, "csr layout 4096");
  EXPECT(width(csr_layout(avx2, false, 100000, kL2)) == 16, "never below 16 lanes");
  EXPECT(width(csr_layout(avx512, false, 4096, kL2)) == 16, "avx512 csr layout 4096");
  EXPECT(width(csr_layout(avx512, false, 4096, 2 * kL2)) == 32, "a larger L2 keeps 32");
  EXPECT(width(csr_layout(avx2, true, 4096, kL2)) == 32, "8-bit rows keep the chunk");
  EXPECT(width(csr_layout(avx2, false, 4096, 0)) == 32, "unknown L2 keeps the chunk");
  EXPECT(csr_layout(kernels_for(Isa::ref), false, 4096, kL2).lanes == 0, "ref as is");
}

void test_dispatch() {
  EXPECT(parse_isa("avx2") == Isa::avx2, "parse avx2");
  bool threw = false;
  try {
    parse_isa("sse9");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  EXPECT(threw, "parse_isa accepts an unknown name");
  const auto isas = supported_isas();
  EXPECT(!isas.empty() && isas.front() == Isa::ref, "ref is always supported");
  EXPECT(isas.back() == detected_isa(), "detected ISA is the best supported one");
  for (Isa isa : isas) {
    set_isa(isa);
    EXPECT(active_isa() == isa, "set_isa(%s)", isa_name(isa));
  }
}

}  // namespace

int main() {
  test_dispatch();
  test_csr_layout();
  test_packers();
  // batches cover 1, one partial vector, 1/2/4-vector chunks and ragged tails
  const std::vector<Case> cases{{1, 1, 1, 1.0},     {3, 7, 13, 0.5},    {5, 13, 17, 0.3},
                                {1, 96, 40, 0.1},   {17, 33, 129, 0.2}, {2, 64, 1000, 0.05},
                                {4, 9, 70000, 0.001}, {40, 21, 50, 0.3}, {70, 19, 33, 0.4},
                                {128, 8, 24, 0.5},  {0, 5, 7, 0.5},     {40, 16, 1500, 0.3},
                                {20, 3, 70000, 0.01}, {300, 410, 530, 0.5}};
  for (Isa isa : supported_isas()) {
    for (const Case& c : cases) {
      run_case<float>(isa, c, DType::f32);
      run_case<uint16_t>(isa, c, DType::bf16);
      for (auto [n, m] : std::vector<std::pair<int64_t, int64_t>>{{2, 4}, {1, 4}, {3, 8}, {7, 32}, {1, 2}, {5, 16}}) {
        run_nm_case<float>(isa, c, n, m, DType::f32);
        run_nm_case<uint16_t>(isa, c, n, m, DType::bf16);
      }
    }
    std::printf("isa %s: done\n", isa_name(isa));
  }
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all kernel tests passed\n");
  return 0;
}
