#include "cpu/kernels.h"

#include <algorithm>

namespace sparseprune {
namespace cpu {
namespace {

template <typename T>
void pack_chunk(const T* x, int64_t in, int64_t rows, int64_t width, float* xt,
                int64_t col_begin, int64_t col_end) {
  // Column tiles keep the written part of xt in L1 while rows of x are read contiguously.
  constexpr int64_t kTile = 64;
  for (int64_t c0 = col_begin; c0 < col_end; c0 += kTile) {
    const int64_t c1 = std::min(col_end, c0 + kTile);
    for (int64_t b = 0; b < rows; ++b) {
      const T* src = x + b * in;
      for (int64_t c = c0; c < c1; ++c) xt[c * width + b] = load_f32(src[c]);
    }
    for (int64_t b = rows; b < width; ++b) {
      for (int64_t c = c0; c < c1; ++c) xt[c * width + b] = 0.f;
    }
  }
}

}  // namespace

XPlan plan_x(int64_t batch, int64_t in_features, const XLayout& layout) {
  XPlan p;
  p.in_features = in_features;
  if (batch == 1 && layout.plain_batch1) {
    p.full_width = 1;
    p.full_chunks = 1;
    return p;
  }
  p.full_width = layout.lanes * layout.max_vectors;
  p.full_chunks = batch / p.full_width;
  p.tail_rows = batch % p.full_width;
  if (p.tail_rows) {
    // Kernels are instantiated for power-of-two widths only.
    int64_t width = layout.min_width;
    while (width < p.tail_rows) width *= 2;
    p.tail_width = width;
  }
  return p;
}

void pack_x_chunk(const Dense& d, const XPlan& plan, int64_t c, float* xt, int64_t col_begin,
                  int64_t col_end) {
  with_chunk(d, plan, c, xt, [&](const auto* x, int64_t rows, int64_t width, float* dst) {
    pack_chunk(x, d.in_features, rows, width, dst, col_begin, col_end);
  });
}

void pack_x(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin, int64_t col_end) {
  for (int64_t c = 0; c < plan.chunks(); ++c) pack_x_chunk(d, plan, c, xt, col_begin, col_end);
}

}  // namespace cpu
}  // namespace sparseprune
