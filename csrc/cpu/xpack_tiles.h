// pack_x by register transposes, shared by xpack_avx2.cpp and xpack_avx512.cpp: include
// inside their anonymous namespace, after the ISA's transpose header. P is the ISA's tile:
// reg (kLanes fp32 lanes), load (a row of kLanes floats, or of bf16 bits widened),
// zero, transpose (kLanes rows in place) and store.
#pragma once

// x [rows][in] -> xt [in][width] for columns [col_begin, col_end), kLanes x kLanes tiles;
// rows past `rows` are zeros, columns past the last whole tile go one at a time.
template <class P, typename T>
void pack_tiles(const T* x, int64_t in, int64_t rows, int64_t width, float* xt,
                int64_t col_begin, int64_t col_end) {
  constexpr int L = P::kLanes;
  const int64_t vec_end = col_begin + (col_end - col_begin) / L * L;
  for (int64_t b0 = 0; b0 < width; b0 += L) {
    const int64_t real = std::min<int64_t>(L, std::max<int64_t>(0, rows - b0));
    for (int64_t c0 = col_begin; c0 < vec_end; c0 += L) {
      typename P::reg r[L];
      for (int i = 0; i < L; ++i) r[i] = i < real ? P::load(x + (b0 + i) * in + c0) : P::zero();
      P::transpose(r);
      for (int j = 0; j < L; ++j) P::store(xt + (c0 + j) * width + b0, r[j]);
    }
    for (int64_t c = vec_end; c < col_end; ++c) {
      for (int64_t i = 0; i < L; ++i)
        xt[c * width + b0 + i] = i < real ? load_f32(x[(b0 + i) * in + c]) : 0.f;
    }
  }
}

// pack_x for every chunk of the plan: by tiles where the chunk width is a multiple of
// kLanes, the scalar packer otherwise (plain x at batch 1, AVX-512's 8-lane tails).
template <class P>
void pack_x_tiles(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                  int64_t col_end) {
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    if (plan.width(c) % P::kLanes != 0) {
      pack_x_chunk(d, plan, c, xt, col_begin, col_end);
      continue;
    }
    with_chunk(d, plan, c, xt, [&](const auto* x, int64_t rows, int64_t width, float* dst) {
      pack_tiles<P>(x, d.in_features, rows, width, dst, col_begin, col_end);
    });
  }
}
