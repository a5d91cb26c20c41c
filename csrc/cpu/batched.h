// Kernel bodies vectorized over the batch, shared by the per-ISA files: each includes
// this inside its anonymous namespace after vec_<isa>.h, so every ISA gets its own copy.
//
// Activations come packed by pack_x (xt[chunk][in][width]): a stored weight w at input
// column c contributes w * xt[c][0..width) to the output row, one broadcast and
// width / lanes fused multiply-adds from one contiguous load each. Several independent
// accumulators per row hide the FMA latency.
#pragma once

// Activations of one column tile: small enough to stay in L1 next to the partial sums.
constexpr int64_t kTileBytes = 32 << 10;

// The batched sums of one output row at width 16 or 32 (NV = 2 or 4 256-bit vectors) for
// 8- or 16-bit columns, two chains per vector: each 8 entries' values come from one load
// and are broadcast by in-lane permutes, their columns from one or two 8-byte loads. The
// plain loop loads per entry the value, the column and NV activation vectors, and those
// loads, not the FMAs, bounded it (Zen 3, one thread, benchmarks/csr_loop_roofline.cpp:
// width 32, 8-bit, 50%: 0.36 ns per 8-wide FMA against 0.27-0.29 here, the FMA alone
// 0.173-0.179; width 16: 1.02-1.14x). Same-process A/B on the issue-4 shapes,
// CSR at 50-90%: 1.0-1.30x faster at batch 9-128 but for 4096x4096 at 80-90% and batch
// 32-128 (0.88-1.07x) (benchmarks/RESULTS.md, "AVX2: CSR weights broadcast in registers").
// Within one add(), entry k goes to chain k % C (C = 2, or 4 at width 8) and the last
// k % C ones to chain 0, as in dot_batched with C chains per vector: the same sums, bit
// for bit, wherever that loop had C (width 8, width 16 row by row, width 32
// segment-major).
// Eight column indices from one (8-bit) or two (16-bit) 8-byte loads.
template <typename I>
inline void columns8(const I* p, uint64_t* c) {
  static_assert(sizeof(I) <= 2, "8- or 16-bit columns");
  constexpr int kPer = 8 / sizeof(I), kBits = 8 * sizeof(I);
  constexpr uint64_t kMask = (uint64_t{1} << kBits) - 1;
  for (int h = 0; h < 8 / kPer; ++h) {
    uint64_t q;
    std::memcpy(&q, p + h * kPer, 8);
    for (int j = 0; j < kPer; ++j) c[h * kPer + j] = (q >> (kBits * j)) & kMask;
  }
}

template <int NV, typename I, typename T, int C = 2>
class Bcast8Sums {
  static_assert(C == 2 || C == 4, "2 or 4 chains per vector");

 public:
  explicit Bcast8Sums(const float* init) {
    for (int v = 0; v < NV; ++v) {
      for (int u = 0; u < C; ++u) a_[u][v] = _mm256_setzero_ps();
      if (init) a_[0][v] = _mm256_loadu_ps(init + v * 8);
    }
  }

  // Adds vals[k] * xt[cols[k]][0..8 * NV) for k in [0, count).
  void add(const I* cols, const T* vals, int64_t count, const float* xt) {
    int64_t k = 0;
    for (; k + 8 <= count; k += 8) {
      const __m256 v8 = V256::load8(vals + k);
      const __m256 lo = _mm256_permute2f128_ps(v8, v8, 0x00);
      const __m256 hi = _mm256_permute2f128_ps(v8, v8, 0x11);
      uint64_t c[8];
      columns8(cols + k, c);
      step(0, _mm256_permute_ps(lo, 0x00), xt, c[0]);
      step(1, _mm256_permute_ps(lo, 0x55), xt, c[1]);
      step(2 % C, _mm256_permute_ps(lo, 0xaa), xt, c[2]);
      step(3 % C, _mm256_permute_ps(lo, 0xff), xt, c[3]);
      step(0, _mm256_permute_ps(hi, 0x00), xt, c[4]);
      step(1, _mm256_permute_ps(hi, 0x55), xt, c[5]);
      step(2 % C, _mm256_permute_ps(hi, 0xaa), xt, c[6]);
      step(3 % C, _mm256_permute_ps(hi, 0xff), xt, c[7]);
    }
    for (; k + C <= count; k += C) {
      for (int u = 0; u < C; ++u) step(u, _mm256_set1_ps(load_f32(vals[k + u])), xt, cols[k + u]);
    }
    for (; k < count; ++k) step(0, _mm256_set1_ps(load_f32(vals[k])), xt, cols[k]);
  }

  void store(float* out) const {
    for (int v = 0; v < NV; ++v) {
      __m256 s = _mm256_add_ps(a_[0][v], a_[1][v]);
      if constexpr (C == 4) s = _mm256_add_ps(s, _mm256_add_ps(a_[2][v], a_[3][v]));
      _mm256_storeu_ps(out + v * 8, s);
    }
  }

 private:
  void step(int u, __m256 w, const float* xt, uint64_t col) {
    const float* xr = xt + col * (8 * NV);
    for (int v = 0; v < NV; ++v)
      a_[u][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + v * 8), a_[u][v]);
  }

  __m256 a_[C][NV];
};

#ifdef __AVX512F__
// Bcast8Sums for 512-bit vectors (NV = 1 or 2, width 16 or 32): each 4 entries' values go
// to the four 128-bit lanes by one vbroadcastf32x4 (fp32: straight from memory) and to
// every lane by in-lane permutes; chains as in Bcast8Sums. Zen 4, 2 threads, same-process
// A/B against dot_batched on the issue-4 shapes: CSR 50% 1.04-1.15x faster at batch
// 16-128, 70% 1.06-1.15x, 80-90% 0.99-1.20x (within the A/A spread of 1.0-1.14x but for
// none slower) (benchmarks/RESULTS.md, "AVX-512: 8-bit CSR segment-major, weights
// broadcast in registers").
template <int NV, typename I, typename T>
class Bcast8Sums512 {
 public:
  explicit Bcast8Sums512(const float* init) {
    for (int v = 0; v < NV; ++v) {
      a_[0][v] = init ? _mm512_loadu_ps(init + v * 16) : _mm512_setzero_ps();
      a_[1][v] = _mm512_setzero_ps();
    }
  }

  void add(const I* cols, const T* vals, int64_t count, const float* xt) {
    int64_t k = 0;
    for (; k + 8 <= count; k += 8) {
      const __m512 lo = quad(vals + k), hi = quad(vals + k + 4);
      uint64_t c[8];
      columns8(cols + k, c);
      step(0, _mm512_permute_ps(lo, 0x00), xt, c[0]);
      step(1, _mm512_permute_ps(lo, 0x55), xt, c[1]);
      step(0, _mm512_permute_ps(lo, 0xaa), xt, c[2]);
      step(1, _mm512_permute_ps(lo, 0xff), xt, c[3]);
      step(0, _mm512_permute_ps(hi, 0x00), xt, c[4]);
      step(1, _mm512_permute_ps(hi, 0x55), xt, c[5]);
      step(0, _mm512_permute_ps(hi, 0xaa), xt, c[6]);
      step(1, _mm512_permute_ps(hi, 0xff), xt, c[7]);
    }
    for (; k + 2 <= count; k += 2) {
      step(0, _mm512_set1_ps(load_f32(vals[k])), xt, cols[k]);
      step(1, _mm512_set1_ps(load_f32(vals[k + 1])), xt, cols[k + 1]);
    }
    if (k < count) step(0, _mm512_set1_ps(load_f32(vals[k])), xt, cols[k]);
  }

  void store(float* out) const {
    for (int v = 0; v < NV; ++v)
      _mm512_storeu_ps(out + v * 16, _mm512_add_ps(a_[0][v], a_[1][v]));
  }

 private:
  static __m512 quad(const float* p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
  static __m512 quad(const uint16_t* p) {
    const __m128i four = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i wide = _mm_slli_epi32(_mm_cvtepu16_epi32(four), 16);
    return _mm512_broadcast_f32x4(_mm_castsi128_ps(wide));
  }

  void step(int u, __m512 w, const float* xt, uint64_t col) {
    const float* xr = xt + col * (16 * NV);
    for (int v = 0; v < NV; ++v)
      a_[u][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr + v * 16), a_[u][v]);
  }

  __m512 a_[2][NV];
};
#endif

// out[0..NV*lanes) (+)= sum_k value(k) * xt[col(k)][...], over count stored entries;
// with Accumulate the sum is added to what out holds. Chains: independent accumulators (the
// ISA's kChains where the activations are in L1: N:M, CSR segment-major; the 90% CSR rows,
// whose loads come from L2, showed no consistent gain from 8 on Zen 3).
template <class V, int NV, typename I, typename T, bool Accumulate = false, int Chains = 4>
inline void dot_batched(const I* cols, const T* vals, int64_t count, const float* xt,
                        float* out) {
  constexpr int W = NV * V::kLanes;
  if constexpr (NV == 1) {
    // Named chains: as acc[4][1] below, GCC kept three of them on the stack, a load
    // and a store around every FMA (perf, batch 16), and the loop ran ~2x slower. Eight
    // where the ISA asks for them (AVX2 N:M at batch <= 8, Zen 3, same-process A/B: 2:4
    // 0-8% faster on four shapes, 1:4 on 384x1536 10%).
    using R = typename V::reg;
    R a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
    if constexpr (Accumulate) a0 = V::load(out);
    // acc + vals[j] * xt[cols[j]][0..lanes)
    auto step = [&](int64_t j, R acc) {
      return V::fmadd(V::set1(load_f32(vals[j])),
                      V::load(xt + static_cast<int64_t>(cols[j]) * W), acc);
    };
    int64_t k = 0;
    if constexpr (Chains >= 8) {
      R a4 = V::zero(), a5 = V::zero(), a6 = V::zero(), a7 = V::zero();
      for (; k + 8 <= count; k += 8) {
        a0 = step(k, a0);
        a1 = step(k + 1, a1);
        a2 = step(k + 2, a2);
        a3 = step(k + 3, a3);
        a4 = step(k + 4, a4);
        a5 = step(k + 5, a5);
        a6 = step(k + 6, a6);
        a7 = step(k + 7, a7);
      }
      a0 = V::add(a0, a4);
      a1 = V::add(a1, a5);
      a2 = V::add(a2, a6);
      a3 = V::add(a3, a7);
    }
    for (; k + 4 <= count; k += 4) {
      a0 = step(k, a0);
      a1 = step(k + 1, a1);
      a2 = step(k + 2, a2);
      a3 = step(k + 3, a3);
    }
    for (; k < count; ++k) a0 = step(k, a0);
    V::store(out, V::add(V::add(a0, a1), V::add(a2, a3)));
    return;
  }
  constexpr int U = NV >= Chains ? 1 : Chains / NV;  // chains per vector lane group
  typename V::reg acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
  if constexpr (Accumulate) {
    for (int v = 0; v < NV; ++v) acc[0][v] = V::load(out + v * V::kLanes);
  }
  int64_t k = 0;
  for (; k + U <= count; k += U) {
    for (int u = 0; u < U; ++u) {
      const float* xr = xt + static_cast<int64_t>(cols[k + u]) * W;
      const typename V::reg w = V::set1(load_f32(vals[k + u]));
      for (int v = 0; v < NV; ++v) acc[u][v] = V::fmadd(w, V::load(xr + v * V::kLanes), acc[u][v]);
    }
  }
  for (; k < count; ++k) {
    const float* xr = xt + static_cast<int64_t>(cols[k]) * W;
    const typename V::reg w = V::set1(load_f32(vals[k]));
    for (int v = 0; v < NV; ++v) acc[0][v] = V::fmadd(w, V::load(xr + v * V::kLanes), acc[0][v]);
  }
  for (int v = 0; v < NV; ++v) {
    typename V::reg s = acc[0][v];
    for (int u = 1; u < U; ++u) s = V::add(s, acc[u][v]);
    V::store(out + v * V::kLanes, s);
  }
}

// The weights of a CSR row broadcast in registers where the ISA asks for it
// (kRegisterBroadcast: Bcast8Sums at width 16 and 32 of 256-bit vectors, Bcast8Sums512 at
// 16 and 32 of 512-bit ones; at width 8 Bcast8Sums with four chains, the sums of
// dot_batched bit for bit, where the caller says so: width8_broadcast, csr_rows.h). Calls
// add(sums) on sums started from init (or zero), stores them to out and returns true; false
// where no broadcast applies (dot_batched then). Not for N:M: its activations come from L1
// column tiles, the FMAs bound it, and the permutes compete with them for the FP pipes
// (Zen 3: 0.65-0.85x at batch 32-128).
template <class V, int NV, typename I, typename T, class Add>
inline bool broadcast_sums(bool width8_broadcast, const float* init, float* out,
                           const Add& add) {
  constexpr bool kNarrow = std::is_same<I, uint8_t>::value || std::is_same<I, uint16_t>::value;
  auto run = [&](auto sums) {
    add(sums);
    sums.store(out);
    return true;
  };
  if constexpr (kRegisterBroadcast && kNarrow && V::kLanes == 8 && (NV == 2 || NV == 4)) {
    return run(Bcast8Sums<NV, I, T>(init));
  }
  if constexpr (kRegisterBroadcast && kNarrow && V::kLanes == 8 && NV == 1) {
    if (width8_broadcast) return run(Bcast8Sums<1, I, T, 4>(init));
  }
#ifdef __AVX512F__
  if constexpr (kRegisterBroadcast && kNarrow && V::kLanes == 16 && (NV == 1 || NV == 2)) {
    return run(Bcast8Sums512<NV, I, T>(init));
  }
#endif
  return false;
}

// dot_batched for CSR rows, the weights broadcast in registers where broadcast_sums says
// so (whatever Chains says).
template <class V, int NV, typename I, typename T, bool Accumulate = false, int Chains = 4>
inline void dot_batched_csr(const I* cols, const T* vals, int64_t count, const float* xt,
                            float* out, bool width8_broadcast = false) {
  if (broadcast_sums<V, NV, I, T>(width8_broadcast, Accumulate ? out : nullptr, out,
                                  [&](auto& sums) { sums.add(cols, vals, count, xt); }))
    return;
  dot_batched<V, NV, I, T, Accumulate, Chains>(cols, vals, count, xt, out);
}

// dot_batched over the segments of an 8-bit CSR row (kernels.h: Csr): entries bounds[s] ..
// bounds[s + 1] index the activations of segment s, kCsrSegment columns after those of
// segment s - 1. The accumulators stay in registers from one segment to the next.
template <class V, int NV, typename T>
inline void dot_batched_segments(const uint8_t* cols, const T* vals, const int64_t* bounds,
                                 int64_t segments, const float* xt, float* out,
                                 bool width8_broadcast = false) {
  constexpr int W = NV * V::kLanes;
  constexpr int64_t kStride = kCsrSegment * W;
  if (broadcast_sums<V, NV, uint8_t, T>(width8_broadcast, nullptr, out, [&](auto& sums) {
        const float* xs = xt;
        for (int64_t s = 0; s < segments; ++s, xs += kStride)
          sums.add(cols + bounds[s], vals + bounds[s], bounds[s + 1] - bounds[s], xs);
      }))
    return;
  int64_t k = bounds[0];
  if constexpr (NV == 1) {
    using R = typename V::reg;  // named chains, as in dot_batched
    R a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
    for (int64_t s = 0; s < segments; ++s, xt += kStride) {
      auto step = [&](int64_t j, R acc) {
        return V::fmadd(V::set1(load_f32(vals[j])),
                        V::load(xt + static_cast<int64_t>(cols[j]) * W), acc);
      };
      const int64_t k1 = bounds[s + 1];
      for (; k + 4 <= k1; k += 4) {
        a0 = step(k, a0);
        a1 = step(k + 1, a1);
        a2 = step(k + 2, a2);
        a3 = step(k + 3, a3);
      }
      for (; k < k1; ++k) a0 = step(k, a0);
    }
    V::store(out, V::add(V::add(a0, a1), V::add(a2, a3)));
    return;
  }
  constexpr int U = NV >= 4 ? 1 : 4 / NV;
  typename V::reg acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
  for (int64_t s = 0; s < segments; ++s, xt += kStride) {
    const int64_t k1 = bounds[s + 1];
    for (; k + U <= k1; k += U) {
      for (int u = 0; u < U; ++u) {
        const float* xr = xt + static_cast<int64_t>(cols[k + u]) * W;
        const typename V::reg w = V::set1(load_f32(vals[k + u]));
        for (int v = 0; v < NV; ++v)
          acc[u][v] = V::fmadd(w, V::load(xr + v * V::kLanes), acc[u][v]);
      }
    }
    for (; k < k1; ++k) {
      const float* xr = xt + static_cast<int64_t>(cols[k]) * W;
      const typename V::reg w = V::set1(load_f32(vals[k]));
      for (int v = 0; v < NV; ++v) acc[0][v] = V::fmadd(w, V::load(xr + v * V::kLanes), acc[0][v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    typename V::reg s = acc[0][v];
    for (int u = 1; u < U; ++u) s = V::add(s, acc[u][v]);
    V::store(out + v * V::kLanes, s);
  }
}

// Writes one output row r for the `rows` real batch rows of a chunk starting at `first`.
template <typename T>
inline void store_column(const Dense& d, const float* acc, int64_t first, int64_t rows,
                         int64_t r) {
  T* y = static_cast<T*>(d.y) + first * d.out_features + r;
  const float b = d.bias ? load_f32(static_cast<const T*>(d.bias)[r]) : 0.f;
  for (int64_t j = 0; j < rows; ++j) y[j * d.out_features] = store_f32<T>(acc[j] + b);
}

// Collects the outputs of consecutive rows for one chunk and writes them to y in runs of
// up to kRows contiguous elements per batch row. Storing each output row straight away
// writes `rows` elements out_features apart: with out_features a multiple of 1024 they
// all fall into one L1 set, and every store misses.
template <typename T, int W>
class ChunkWriter {
 public:
  static constexpr int kRows = 32;

  ChunkWriter(const Dense& d, int64_t first, int64_t rows) : d_(d), first_(first), rows_(rows) {}
  ~ChunkWriter() { flush(); }

  // Buffer for output row r (rows must arrive in increasing order, without gaps).
  float* slot(int64_t r) {
    if (count_ == kRows || (count_ && r != start_ + count_)) flush();
    if (count_ == 0) start_ = r;
    return buf_ + (count_++) * W;
  }

  void flush() {
    if (count_ == 0) return;
    const T* bias = static_cast<const T*>(d_.bias);
    float b[kRows];
    for (int i = 0; i < count_; ++i) b[i] = bias ? load_f32(bias[start_ + i]) : 0.f;
    T* y = static_cast<T*>(d_.y) + first_ * d_.out_features + start_;
    store_transposed(buf_, W, count_, rows_, y, d_.out_features, b);
    count_ = 0;
  }

 private:
  const Dense& d_;
  int64_t first_, rows_;
  int64_t start_ = 0;
  int count_ = 0;
  alignas(64) float buf_[kRows * W];
};

// Asks for [p, p + bytes) in L1. The kernels that walk a block of rows tile by tile ask for
// each row's next tile while on its current one, a pass over the block before the read:
// a few hundred bytes per row, 32 streams, too many for the hardware prefetcher (Zen 3, one
// thread: 2:4 at batch 128 from 16 to 26-30 useful GFLOP/s).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

// Runs body(r0, rows, acc) over [row_begin, row_end) in blocks of Writer::kRows rows,
// acc[i] being the writer's zeroed W-float slot of row r0 + i (the writer flushes once per
// block): for kernels that add a row's entries to its sums in several passes (column tiles).
template <int W, class Writer, class Body>
inline void zeroed_row_blocks(Writer& out, int64_t row_begin, int64_t row_end,
                              const Body& body) {
  constexpr int64_t kBlock = Writer::kRows;
  float* acc[kBlock];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kBlock) {
    const int64_t rows = row_end - r0 < kBlock ? row_end - r0 : kBlock;
    for (int64_t i = 0; i < rows; ++i) {
      acc[i] = out.slot(r0 + i);
      for (int j = 0; j < W; ++j) acc[i][j] = 0.f;
    }
    body(r0, rows, acc);
  }
}

// Runs body(Tag<V>, integral_constant<NV>, chunk) for every chunk of the plan, with the
// vector type and count the ISA uses for that chunk's width (with_width).
template <typename Body>
inline void for_each_chunk(const XPlan& plan, const Body& body) {
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    with_width(plan.width(c), [&](auto v, auto nv) { body(v, nv, c); });
  }
}

// Columns of the block starting at column c0 that lie inside the matrix.
inline int64_t block_cols(const Bsr& w, int64_t in_features, int64_t c0) {
  return in_features - c0 < w.bw ? in_features - c0 : w.bw;
}

// acc[i][v] += R rows of one block (row stride bw, `cols` columns) times the activation
// rows xr[j][v * lanes ..] of its columns, Stride floats apart (a chunk may be computed NV of
// its vectors at a time). For each column j the NV activation vectors are loaded once and
// feed R rows (R broadcasts, R*NV FMAs), so blocks reach a far higher share of FMA peak
// than one-row CSR.
template <class V, int R, int NV, int Stride, typename T>
__attribute__((always_inline)) inline void block_fma(const T* blk, int64_t bw, int64_t cols,
                                                     const float* xr,
                                                     typename V::reg (&acc)[R][NV]) {
  for (int64_t j = 0; j < cols; ++j, xr += Stride) {
    typename V::reg xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = V::load(xr + v * V::kLanes);
    for (int i = 0; i < R; ++i) {
      const typename V::reg wv = V::set1(load_f32(blk[i * bw + j]));
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(wv, xv[v], acc[i][v]);
    }
  }
}

// BSR register passes. A pass computes RR output rows x SUB vectors of a chunk: RR*SUB
// accumulators, SUB activation vectors and one broadcast must fit the register file, or
// GCC keeps accumulators on the stack (AVX2 at 4 rows x 4 vectors and 8 x 2 did: a load
// and a store around FMAs, and x reloaded per row; 16x16 blocks ran at ~45% of dense's FMA
// rate). AVX-512 takes 16 rows with one vector, so a 16-row block is read front to back in
// one pass (two 8-row passes streamed the weights at ~6 GB/s), and 8 rows with two (16 rows
// over the halves of a 32-wide chunk were slower); AVX2 8 / 6, wider chunks in several
// passes of fewer vectors.
template <int NV>
constexpr int bsr_pass_rows() {
  return kRegs >= 32 ? (NV == 1 ? 16 : 8) : (NV == 1 ? 8 : 6);
}
template <int RR, int NV>
constexpr int bsr_pass_vectors() {
  int sub = NV;
  while (sub > 1 && RR * sub + sub + 1 > kRegs) sub /= 2;
  return sub;
}

// Calls f(integral_constant<int, RR>, g) for passes covering rows [0, valid) of a block
// row: R-row passes while they fit, then 16, 8, 4, 2 and 1 rows (padding rows of a ragged
// edge block are skipped, never read).
template <int R, class F>
inline void row_passes(int64_t valid, const F& f) {
  int64_t g = 0;
  auto run = [&](auto rr) {
    for (; g + decltype(rr)::value <= valid; g += decltype(rr)::value) f(rr, g);
  };
  run(std::integral_constant<int, R>{});
  if constexpr (R > 16) run(std::integral_constant<int, 16>{});
  if constexpr (R > 8) run(std::integral_constant<int, 8>{});
  if constexpr (R > 4) run(std::integral_constant<int, 4>{});
  if constexpr (R > 2) run(std::integral_constant<int, 2>{});
  run(std::integral_constant<int, 1>{});
}

// BSR: output rows [i0, i0 + R) of block row `br`, vectors [v0, v0 + NV) of a chunk W
// floats wide (block_fma over the row's blocks, accumulators in registers throughout); out
// is [R][W]. Not inlined: each call covers a whole block row, and inlined into
// bsr_batched the instantiations changed each other's code (an added 16-row case made the
// unchanged 32-wide case 10-20% slower from cold weights).
template <class V, int R, int NV, int W, typename T>
__attribute__((noinline)) void bsr_rows(const Bsr& w, int64_t in_features, int64_t br,
                                        int64_t i0, int v0, const float* xt, float* out) {
  typename V::reg acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  const T* blocks = static_cast<const T*>(w.blocks);
  xt += v0 * V::kLanes;
  for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
    const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
    block_fma<V, R, NV, W>(blocks + (k * w.bh + i0) * w.bw, w.bw,
                           block_cols(w, in_features, c0), xt + c0 * W, acc);
  }
  out += v0 * V::kLanes;
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) V::store(out + i * W + v * V::kLanes, acc[i][v]);
}

// BSR: the `valid` rows of block row `br` for one chunk, block by block: each block is
// read once front to back in register passes (bsr_pass_*), the partial sums of the block
// row waiting in acc[valid][W] (L1 for blocks of up to 64 rows) between blocks, and the
// block's activation lines stay in L1 across its passes. For blocks taller than one pass:
// by passes over the whole block row, every pass read its rows' lines of every block and
// the activations again from L2 (AVX-512: 32x32@90% / 16x16@80% at batch 32 1.1-1.8x
// slower; AVX2 on Zen 3: 16x16@80% 1.3-1.6x slower at batch 16-128, 2.3x at 8, 32x32@90%
// 1.4-2.2x; RESULTS.md).
template <class V, int NV, typename T>
__attribute__((noinline)) void bsr_block_row(const Bsr& w, int64_t in_features, int64_t br,
                                             int64_t valid, const float* xt, float* acc) {
  constexpr int W = NV * V::kLanes;
  for (int64_t i = 0; i < valid * W; ++i) acc[i] = 0.f;
  const T* blocks = static_cast<const T*>(w.blocks);
  for (int64_t k = w.block_row_offsets[br]; k < w.block_row_offsets[br + 1]; ++k) {
    const int64_t c0 = static_cast<int64_t>(w.block_col_indices[k]) * w.bw;
    const int64_t cols = block_cols(w, in_features, c0);
    row_passes<bsr_pass_rows<NV>()>(valid, [&](auto rr, int64_t g) {
      constexpr int RR = decltype(rr)::value;
      constexpr int SUB = bsr_pass_vectors<RR, NV>();
      for (int v0 = 0; v0 < NV; v0 += SUB) {
        typename V::reg a[RR][SUB];
        float* base = acc + g * W + v0 * V::kLanes;
        for (int i = 0; i < RR; ++i)
          for (int v = 0; v < SUB; ++v) a[i][v] = V::load(base + i * W + v * V::kLanes);
        block_fma<V, RR, SUB, W>(blocks + (k * w.bh + g) * w.bw, w.bw, cols,
                                 xt + c0 * W + v0 * V::kLanes, a);
        for (int i = 0; i < RR; ++i)
          for (int v = 0; v < SUB; ++v) V::store(base + i * W + v * V::kLanes, a[i][v]);
      }
    });
  }
}

template <typename T>
void bsr_batched(const Dense& d, const Bsr& w, const XPacked& xp, int64_t br_begin,
                 int64_t br_end) {
  for_each_chunk(xp.plan, [&](auto v, auto nv, int64_t c) {
    using V = typename decltype(v)::type;
    constexpr int NV = decltype(nv)::value;
    constexpr int W = NV * V::kLanes;
    constexpr int R = bsr_pass_rows<NV>();
    // Blocks taller than a pass go block by block (bsr_block_row). AVX2: when at least 16
    // wide, as the accumulators' loads and stores per block and pass are amortized over
    // the block's columns (8x8@80% at batch 32: 0.7x the row passes), and for block rows of
    // more than one pass. AVX-512 keeps the rule measured there (heights a multiple of R,
    // full block rows) until an AVX-512 machine compares the two.
    const bool by_block = kRegs >= 32 ? w.bh > R && w.bh % R == 0 : w.bh > R && w.bw >= 16;
    alignas(64) float acc[R * W];
    Scratch<float> rows_acc(by_block ? w.bh * W : 0);
    const float* xt = xp.xt + xp.plan.offset(c);
    ChunkWriter<T, W> out(d, xp.plan.first_row(c), xp.plan.rows(c));
    for (int64_t br = br_begin; br < br_end; ++br) {
      const int64_t r0 = br * w.bh;
      const int64_t valid = d.out_features - r0 < w.bh ? d.out_features - r0 : w.bh;
      // Rows [first, first + n) of this block row, computed into src[n][W], to the writer.
      auto emit = [&](int64_t first, int64_t n, const float* src) {
        for (int64_t i = 0; i < n; ++i) {
          float* dst = out.slot(r0 + first + i);
          for (int j = 0; j < W; ++j) dst[j] = src[i * W + j];
        }
      };
      if (by_block && valid > R && (kRegs < 32 || valid == w.bh)) {
        bsr_block_row<V, NV, T>(w, d.in_features, br, valid, xt, rows_acc.data());
        emit(0, valid, rows_acc.data());
        continue;
      }
      row_passes<R>(valid, [&](auto rr, int64_t i0) {
        constexpr int RR = decltype(rr)::value;
        constexpr int SUB = bsr_pass_vectors<RR, NV>();
        for (int v0 = 0; v0 < NV; v0 += SUB)
          bsr_rows<V, RR, SUB, W, T>(w, d.in_features, br, i0, v0, xt, acc);
        emit(i0, RR, acc);
      });
    }
  });
}
