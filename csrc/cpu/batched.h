// Kernel bodies vectorized over the batch, shared by the per-ISA files: each includes
// this inside its anonymous namespace after vec_<isa>.h, so every ISA gets its own copy.
//
// Activations come packed by pack_x (xt[chunk][in][width]): a stored weight w at input
// column c contributes w * xt[c][0..width) to the output row, one broadcast and
// width / lanes fused multiply-adds from one contiguous load each. Several independent
// accumulators per row hide the FMA latency.
#pragma once

// out[0..NV*lanes) = sum_k value(k) * xt[col(k)][...], over count stored entries.
template <int NV, typename I, typename T>
inline void dot_batched(const I* cols, const T* vals, int64_t count, const float* xt,
                        float* out) {
  constexpr int W = NV * Vec::kLanes;
  constexpr int U = NV >= 4 ? 1 : 4 / NV;  // independent chains per vector lane group
  typename Vec::reg acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = Vec::zero();
  int64_t k = 0;
  for (; k + U <= count; k += U) {
    for (int u = 0; u < U; ++u) {
      const float* xr = xt + static_cast<int64_t>(cols[k + u]) * W;
      const typename Vec::reg w = Vec::set1(load_f32(vals[k + u]));
      for (int v = 0; v < NV; ++v) acc[u][v] = Vec::fmadd(w, Vec::load(xr + v * Vec::kLanes), acc[u][v]);
    }
  }
  for (; k < count; ++k) {
    const float* xr = xt + static_cast<int64_t>(cols[k]) * W;
    const typename Vec::reg w = Vec::set1(load_f32(vals[k]));
    for (int v = 0; v < NV; ++v) acc[0][v] = Vec::fmadd(w, Vec::load(xr + v * Vec::kLanes), acc[0][v]);
  }
  for (int v = 0; v < NV; ++v) {
    typename Vec::reg s = acc[0][v];
    for (int u = 1; u < U; ++u) s = Vec::add(s, acc[u][v]);
    Vec::store(out + v * Vec::kLanes, s);
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

// Runs `body<NV>(chunk)` for every chunk of the plan, NV = width / lanes.
template <typename Body>
inline void for_each_chunk(const XPlan& plan, const Body& body) {
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    switch (plan.width(c) / Vec::kLanes) {
      case 1:
        body(std::integral_constant<int, 1>{}, c);
        break;
      case 2:
        body(std::integral_constant<int, 2>{}, c);
        break;
      default:
        body(std::integral_constant<int, 4>{}, c);
        break;
    }
  }
}
