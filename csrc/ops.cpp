// The one schema list of the sparseprune namespace, and the CPU implementations.
//
// Every op computes y = x W^T + bias for x [..., in] (any leading dims) with W packed in
// one of the formats of sparseprune/formats.py. The glue here checks everything that is
// O(1) to check (dtypes, shapes, sizes, the ends of the offset arrays), splits the work
// by nonzeros and runs the kernel chosen by csrc/cpu/dispatch.cpp on torch's intra-op
// thread pool. Index contents are validated once, when a packed weight is constructed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/dispatch.h"

namespace sparseprune {
namespace {

// Below this many multiply-adds a product runs on one thread: waking the pool costs more.
constexpr int64_t kMinParallelWork = 1 << 15;

cpu::DType dtype_of(const char* op, const at::Tensor& x) {
  const bool f32 = x.scalar_type() == at::kFloat;
  TORCH_CHECK_TYPE(f32 || x.scalar_type() == at::kBFloat16, op,
                   ": x must be float32 or bfloat16 on the CPU (float16 runs on CUDA only), got ",
                   x.scalar_type());
  return f32 ? cpu::DType::f32 : cpu::DType::bf16;
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType dtype, int64_t size) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, op, ": ", name,
                    " must be 1-D with ", size, " elements, got shape ", t.sizes());
  TORCH_CHECK(t.is_cpu(), op, ": ", name, " must be on the CPU");
}

void check_offsets_ends(const char* op, const char* name, const at::Tensor& offsets,
                        int64_t total) {
  const int64_t* p = offsets.data_ptr<int64_t>();
  const int64_t last = p[offsets.numel() - 1];
  TORCH_CHECK_VALUE(p[0] == 0 && last == total, op, ": ", name, " must start at 0 and end at ",
                    total, ", got ", p[0], " .. ", last);
}

// x flattened to [batch, in], the output and the bias, all checked against each other.
struct Problem {
  at::Tensor x2;
  at::Tensor bias;
  at::Tensor y2;
  std::vector<int64_t> out_shape;
  cpu::Dense dense;
};

Problem make_problem(const char* op, const at::Tensor& x, const at::Tensor& weights,
                     const std::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension, got a scalar");
  TORCH_CHECK(x.is_cpu(), op, ": x must be on the CPU");
  const cpu::DType dtype = dtype_of(op, x);
  TORCH_CHECK_TYPE(weights.scalar_type() == x.scalar_type(), op, ": weight values are ",
                   weights.scalar_type(), " but x is ", x.scalar_type(),
                   "; convert one of them");
  TORCH_CHECK(weights.is_cpu(), op, ": weight values must be on the CPU");
  TORCH_CHECK_VALUE(out_features >= 0, op, ": out_features must be >= 0, got ", out_features);

  Problem p;
  const int64_t in = x.size(-1);
  int64_t batch = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) batch *= x.size(d);
  p.x2 = x.reshape({batch, in}).contiguous();
  p.out_shape = x.sizes().vec();
  p.out_shape.back() = out_features;
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias is ", b.scalar_type(),
                     " but x is ", x.scalar_type());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == out_features, op,
                      ": bias must have shape [", out_features, "], got ", b.sizes());
    TORCH_CHECK(b.is_cpu(), op, ": bias must be on the CPU");
    p.bias = b.contiguous();
  }
  p.y2 = at::empty({batch, out_features}, x.options());
  p.dense = cpu::Dense{p.x2.data_ptr(),
                       p.bias.defined() ? p.bias.data_ptr() : nullptr,
                       p.y2.data_ptr(),
                       batch,
                       in,
                       out_features,
                       dtype};
  return p;
}

// Splits rows [0, rows) into `parts` ranges of about equal cost, where row r costs its
// nonzeros plus one (the per-row overhead): the split follows nonzeros, not rows. Row r
// starts at offsets[r * stride] (stride: segments per row of an 8-bit CSR, else 1).
std::vector<int64_t> split_by_nonzeros(const int64_t* offsets, int64_t rows, int64_t parts,
                                       int64_t stride = 1) {
  std::vector<int64_t> bounds(parts + 1, rows);
  bounds[0] = 0;
  const int64_t total = offsets[rows * stride] + rows;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total / parts * p + total % parts * p / parts;
    int64_t lo = bounds[p - 1], hi = rows;  // first r with cost(r) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (offsets[mid * stride] + mid < target) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    bounds[p] = lo;
  }
  return bounds;
}

// Activations in the layout the kernel asked for (see cpu::XLayout); buf owns them.
struct PackedActivations {
  at::Tensor buf;
  cpu::XPacked xp;
};

PackedActivations pack_activations(const cpu::Dense& d, const cpu::XLayout& layout,
                                   cpu::PackFn pack) {
  PackedActivations out;
  if (layout.lanes == 0 || d.batch == 0) return out;
  out.xp.plan = cpu::plan_x(d.batch, d.in_features, layout);
  if (out.xp.plan.full_width == 1 && d.dtype == cpu::DType::f32) {
    out.xp.xt = static_cast<const float*>(d.x);  // batch 1, fp32: x is already the layout
    return out;
  }
  out.buf = at::empty({out.xp.plan.floats()}, at::kFloat);
  float* xt = out.buf.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(256, kMinParallelWork / std::max<int64_t>(1, d.batch));
  at::parallel_for(0, d.in_features, grain, [&](int64_t c0, int64_t c1) {
    pack(d, out.xp.plan, xt, c0, c1);
  });
  out.xp.xt = xt;
  return out;
}

// With at least one full chunk per thread, the batch is split instead of the rows: each
// thread packs one chunk of the batch at a time into its own buffer (cache-resident) and
// runs every row over it, so the packed activations never round-trip through DRAM and no
// thread waits for a shared packing pass. Measured 1.05-1.5x faster than splitting the
// rows from batch 64 to 4096 (benchmarks/bench_split.py). Chunks are whole tasks, so an
// uneven count (3 chunks on 2 threads) would idle a thread: then only from 4 per thread.
// SPARSEPRUNE_SPLIT=rows|batch forces a split (benchmarks only).
constexpr int64_t kUnevenChunksPerThread = 4;

// A benchmark-only override of a path choice: 0 if the variable `name` is unset or empty,
// 1 if it is `first`, 2 if `second`, ValueError otherwise. Read at every call (it costs
// nothing measurable next to the products it guards), so a benchmark can compare both paths
// in one process.
int env_override(const char* name, const char* first, const char* second) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return 0;
  if (std::string(env) == first) return 1;
  if (std::string(env) == second) return 2;
  TORCH_CHECK_VALUE(false, name, " must be '", first, "' or '", second, "', got '", env, "'");
  return 0;
}

// Runs kernel(dense_part, packed_part, 0, rows) over chunks of the batch in parallel when
// the batch is large enough (see above); returns false otherwise.
template <typename Kernel>
bool run_by_batch(const cpu::Dense& d, const cpu::XLayout& layout, cpu::PackFn pack,
                  int64_t rows, const Kernel& kernel) {
  if (layout.lanes == 0 || rows == 0) return false;
  const int64_t width = layout.lanes * layout.max_vectors;
  if (d.batch < 2 * width) return false;
  const int64_t threads = at::get_num_threads();
  const int mode = env_override("SPARSEPRUNE_SPLIT", "rows", "batch");
  if (mode == 1) return false;
  const int64_t tasks = (d.batch + width - 1) / width;
  if (mode == 0 && (threads < 2 || d.batch / width < threads ||
                    (tasks % threads != 0 && tasks < kUnevenChunksPerThread * threads)))
    return false;
  const int64_t elem = d.dtype == cpu::DType::f32 ? 4 : 2;
  // A last part of one batch row goes through a chunk, as it does in the whole batch's plan
  // (not the batch-1 kernel): every output keeps the same summation order whether the
  // threads split the batch or the rows (a batch of 161 = 5 * 32 + 1 differed in the bits).
  cpu::XLayout part_layout = layout;
  part_layout.plain_batch1 = false;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    // torch's allocator aligns to 64 bytes: a chunk row must not straddle cache lines.
    const at::Tensor buf_t = at::empty({width * d.in_features}, at::kFloat);
    float* buf = buf_t.data_ptr<float>();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t first = t * width;
      cpu::Dense part = d;
      part.batch = std::min(width, d.batch - first);
      part.x = static_cast<const char*>(d.x) + first * d.in_features * elem;
      part.y = static_cast<char*>(d.y) + first * d.out_features * elem;
      cpu::XPacked xp;
      xp.plan = cpu::plan_x(part.batch, d.in_features, part_layout);
      xp.plan.split_part = true;
      pack(part, xp.plan, buf, 0, d.in_features);
      xp.xt = buf;
      kernel(part, xp, 0, rows);
    }
  });
  return true;
}

// Runs fn(r0, r1) over the output rows split between threads in whole tiles of `window`
// rows (each thread transposes or reads only its own tiles).
template <typename Fn>
void run_row_tiles(const cpu::Dense& d, const cpu::NM& w, int64_t window, const Fn& fn) {
  const int64_t tiles = (d.out_features + window - 1) / window;
  const int64_t work = d.batch * d.out_features * d.in_features * w.n / w.m;
  const int64_t parts =
      std::min<int64_t>(tiles, work < kMinParallelWork ? 1 : at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = tiles * p / parts * window;
      const int64_t r1 = std::min(d.out_features, tiles * (p + 1) / parts * window);
      if (r0 < r1) fn(r0, r1);
    }
  });
}

// Runs the row-tile kernel when it applies, the rows split between threads in whole tiles
// (each thread transposes only its own rows); returns false otherwise.
// SPARSEPRUNE_NM=batched|tiles forces the N:M path (benchmarks only).
bool run_nm_tiles(const cpu::Dense& d, const cpu::NM& w, const cpu::KernelTable& kernels) {
  const cpu::NMTilesKernel kernel = kernels.nm_tiles;
  const int64_t window = kernels.nm_tiles_window;
  if (kernel == nullptr || d.batch == 0 || !cpu::nm_tiles_fit(d.dtype, w.m, window))
    return false;
  const int mode = env_override("SPARSEPRUNE_NM", "batched", "tiles");
  // From batch 8 (AVX-512: ahead of the batched body from batch 4 on MiniLM/BERT/4096x4096
  // shapes, except at batch 32 on some, where the batched body's 32-wide chunk is at its
  // best; benchmarks/RESULTS.md) or 128 (AVX2, scalar transposes: slower than the batched
  // body at 8-32, 1.1-1.5x faster at 128, 1.5-2.2x at 1024).
  if (mode == 1 || (mode == 0 && d.batch < kernels.nm_tiles_min_batch)) return false;
  run_row_tiles(d, w, window, [&](int64_t r0, int64_t r1) { kernel(d, w, r0, r1); });
  return true;
}

template <typename Fn>
void run_ranges(const int64_t* offsets, int64_t rows, int64_t work, const Fn& fn,
                int64_t stride = 1) {
  if (rows == 0) return;
  const int64_t threads = work < kMinParallelWork ? 1 : at::get_num_threads();
  const int64_t parts = std::min<int64_t>(rows, threads);
  if (parts <= 1) {
    fn(0, rows);
    return;
  }
  const std::vector<int64_t> bounds = split_by_nonzeros(offsets, rows, parts, stride);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (bounds[p] < bounds[p + 1]) fn(bounds[p], bounds[p + 1]);
    }
  });
}

at::Tensor finish(Problem& p) { return p.y2.view(p.out_shape); }

at::Tensor linear_csr_cpu(const at::Tensor& x, const at::Tensor& row_offsets,
                          const at::Tensor& col_indices, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias, int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_csr";
  Problem p = make_problem(op, x, values, bias, out_features);
  const int64_t nnz = values.numel();
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": values must be 1-D, got shape ", values.sizes());
  const at::ScalarType it = col_indices.scalar_type();
  TORCH_CHECK_TYPE(it == at::kUInt16 || it == at::kInt || it == at::kByte, op,
                   ": col_indices must be uint16, int32 or uint8 (8-bit CSR), got ", it);
  // 8-bit CSR: offsets of every (row, segment of kCsrSegment columns); see cpu::Csr.
  const bool seg8 = it == at::kByte;
  const int64_t segments =
      seg8 ? (p.dense.in_features + cpu::kCsrSegment - 1) / cpu::kCsrSegment : 1;
  check_index_tensor(op, "row_offsets", row_offsets, at::kLong, out_features * segments + 1);
  check_index_tensor(op, "col_indices", col_indices, it, nnz);
  TORCH_CHECK_VALUE(it != at::kUInt16 || p.dense.in_features <= 65536, op,
                    ": uint16 col_indices address at most 65536 columns, x has ",
                    p.dense.in_features);
  const at::Tensor ro = row_offsets.contiguous();
  const at::Tensor ci = col_indices.contiguous();
  const at::Tensor vals = values.contiguous();
  check_offsets_ends(op, "row_offsets", ro, nnz);

  const cpu::Csr w{ro.data_ptr<int64_t>(), ci.data_ptr(), vals.data_ptr(),
                   seg8 ? cpu::IndexType::u8
                        : (it == at::kUInt16 ? cpu::IndexType::u16 : cpu::IndexType::i32),
                   segments};
  const cpu::KernelTable& kernels = cpu::active_kernels();
  const cpu::XLayout layout =
      cpu::csr_layout(kernels, seg8, p.dense.in_features, cpu::l2_bytes());
  if (run_by_batch(p.dense, layout, kernels.pack, out_features,
                   [&](const cpu::Dense& d, const cpu::XPacked& xp, int64_t r0, int64_t r1) {
                     kernels.csr(d, w, xp, r0, r1);
                   }))
    return finish(p);
  const PackedActivations xa = pack_activations(p.dense, layout, kernels.pack);
  run_ranges(w.row_offsets, out_features, nnz * p.dense.batch,
             [&](int64_t r0, int64_t r1) { kernels.csr(p.dense, w, xa.xp, r0, r1); },
             segments);
  return finish(p);
}

at::Tensor linear_bsr_cpu(const at::Tensor& x, const at::Tensor& block_row_offsets,
                          const at::Tensor& block_col_indices, const at::Tensor& blocks,
                          const std::optional<at::Tensor>& bias, int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_bsr";
  Problem p = make_problem(op, x, blocks, bias, out_features);
  TORCH_CHECK_VALUE(blocks.dim() == 3 && blocks.size(1) >= 1 && blocks.size(2) >= 1, op,
                    ": blocks must have shape [nnzb, bh, bw] with bh, bw >= 1, got ",
                    blocks.sizes());
  const int64_t nnzb = blocks.size(0), bh = blocks.size(1), bw = blocks.size(2);
  const int64_t block_rows = (out_features + bh - 1) / bh;
  check_index_tensor(op, "block_row_offsets", block_row_offsets, at::kLong, block_rows + 1);
  check_index_tensor(op, "block_col_indices", block_col_indices, at::kInt, nnzb);
  const at::Tensor bro = block_row_offsets.contiguous();
  const at::Tensor bci = block_col_indices.contiguous();
  const at::Tensor blk = blocks.contiguous();
  check_offsets_ends(op, "block_row_offsets", bro, nnzb);

  const cpu::Bsr w{bro.data_ptr<int64_t>(), bci.data_ptr<int32_t>(), blk.data_ptr(), bh, bw};
  const cpu::KernelTable& kernels = cpu::active_kernels();
  if (run_by_batch(p.dense, kernels.bsr_x, kernels.pack, block_rows,
                   [&](const cpu::Dense& d, const cpu::XPacked& xp, int64_t r0, int64_t r1) {
                     kernels.bsr(d, w, xp, r0, r1);
                   }))
    return finish(p);
  const PackedActivations xa = pack_activations(p.dense, kernels.bsr_x, kernels.pack);
  run_ranges(w.block_row_offsets, block_rows, blk.numel() * p.dense.batch,
             [&](int64_t r0, int64_t r1) { kernels.bsr(p.dense, w, xa.xp, r0, r1); });
  return finish(p);
}

at::Tensor linear_nm_cpu(const at::Tensor& x, const at::Tensor& values,
                         const at::Tensor& metadata, const std::optional<at::Tensor>& bias,
                         int64_t n, int64_t m) {
  constexpr const char* op = "sparseprune::linear_nm";
  TORCH_CHECK_VALUE(m >= 2 && m <= 32 && n >= 1 && n < m, op,
                    ": need 1 <= n < m <= 32, got n=", n, " m=", m);
  TORCH_CHECK_VALUE(values.dim() == 2, op, ": values must be 2-D [out, slots], got shape ",
                    values.sizes());
  const int64_t out_features = values.size(0);
  Problem p = make_problem(op, x, values, bias, out_features);
  const int64_t in = p.dense.in_features;
  const int64_t slots = cpu::nm_slots_per_row(in, n, m);
  TORCH_CHECK_VALUE(values.size(1) == slots, op, ": values must have ", slots,
                    " slots per row for in_features=", in, " at ", n, ":", m, ", got ",
                    values.size(1));
  const int64_t row_bytes = cpu::nm_meta_row_bytes(in, n, m);
  TORCH_CHECK_TYPE(metadata.scalar_type() == at::kByte, op, ": metadata must be uint8, got ",
                   metadata.scalar_type());
  TORCH_CHECK_VALUE(metadata.dim() == 2 && metadata.size(0) == out_features &&
                        metadata.size(1) == row_bytes,
                    op, ": metadata must have shape [", out_features, ", ", row_bytes,
                    "], got ", metadata.sizes());
  TORCH_CHECK(metadata.is_cpu(), op, ": metadata must be on the CPU");
  const at::Tensor vals = values.contiguous();
  const at::Tensor meta = metadata.contiguous();

  const cpu::NM w{vals.data_ptr(), meta.data_ptr<uint8_t>(), n, m};
  if (out_features == 0) return finish(p);
  const cpu::KernelTable& kernels = cpu::active_kernels();
  if (run_nm_tiles(p.dense, w, kernels)) return finish(p);
  if (run_by_batch(p.dense, kernels.nm_x, kernels.pack, out_features,
                   [&](const cpu::Dense& d, const cpu::XPacked& xp, int64_t r0, int64_t r1) {
                     kernels.nm(d, w, xp, r0, r1);
                   }))
    return finish(p);
  const PackedActivations xa = pack_activations(p.dense, kernels.nm_x, kernels.pack);
  const int64_t threads =
      slots * out_features * p.dense.batch < kMinParallelWork ? 1 : at::get_num_threads();
  const int64_t grain = std::max<int64_t>(1, out_features / threads);
  at::parallel_for(0, out_features, grain,
                   [&](int64_t r0, int64_t r1) { kernels.nm(p.dense, w, xa.xp, r0, r1); });
  return finish(p);
}

// The row-tile kernel's copy of an fp32 N:M weight, made once (the per-call transpose is
// two thirds of the time at batch 8 with AVX-512): sparseprune.tile_cache keeps it per
// weight. Its layout depends on the active ISA's window (16 or 8 rows per tile).
const cpu::KernelTable& tile_copy_kernels(const char* op, int64_t n, int64_t m) {
  const cpu::KernelTable& kernels = cpu::active_kernels();
  TORCH_CHECK(kernels.nm_tiles_pack != nullptr && kernels.nm_tiles_cached != nullptr, op,
              ": needs the AVX2 or AVX-512 kernels, but the active ISA is ",
              cpu::isa_name(cpu::active_isa()));
  const int64_t window = kernels.nm_tiles_window;
  TORCH_CHECK_VALUE(m >= 2 && m <= window && window % m == 0 && n >= 1 && n < m, op,
                    ": need 1 <= n < m with m dividing ", window, " (the ",
                    cpu::isa_name(cpu::active_isa()), " tile width), got n=", n, " m=", m);
  return kernels;
}

std::tuple<at::Tensor, at::Tensor> nm_tiles_pack_cpu(const at::Tensor& values,
                                                     const at::Tensor& metadata, int64_t n,
                                                     int64_t m, int64_t in_features) {
  constexpr const char* op = "sparseprune::nm_tiles_pack";
  const cpu::KernelTable& kernels = tile_copy_kernels(op, n, m);
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat, op, ": values must be float32, got ",
                   values.scalar_type());
  TORCH_CHECK(values.is_cpu() && metadata.is_cpu(), op, ": values and metadata must be on the CPU");
  TORCH_CHECK_VALUE(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(1) == cpu::nm_slots_per_row(in_features, n, m),
                    op, ": values must be [out, ", cpu::nm_slots_per_row(in_features, n, m),
                    "] for in_features=", in_features, " at ", n, ":", m, ", got ", values.sizes());
  const int64_t out = values.size(0);
  TORCH_CHECK_TYPE(metadata.scalar_type() == at::kByte, op, ": metadata must be uint8, got ",
                   metadata.scalar_type());
  TORCH_CHECK_VALUE(metadata.dim() == 2 && metadata.size(0) == out &&
                        metadata.size(1) == cpu::nm_meta_row_bytes(in_features, n, m),
                    op, ": metadata must be [", out, ", ",
                    cpu::nm_meta_row_bytes(in_features, n, m), "], got ", metadata.sizes());
  const at::Tensor vals = values.contiguous();
  const at::Tensor meta = metadata.contiguous();
  const int64_t W = kernels.nm_tiles_window;
  const int64_t tiles = (out + W - 1) / W, tile_slots = cpu::nm_tile_slots(in_features, n, m, W);
  at::Tensor tv = at::empty({tiles, tile_slots, W}, values.options());
  at::Tensor tc = at::empty({tiles, tile_slots, W}, metadata.options());
  const cpu::NM w{vals.data_ptr(), meta.data_ptr<uint8_t>(), n, m};
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    kernels.nm_tiles_pack(w, in_features, out, t0, t1, tv.data_ptr<float>(),
                          tc.data_ptr<uint8_t>());
  });
  return {tv, tc};
}

at::Tensor linear_nm_tiles_cpu(const at::Tensor& x, const at::Tensor& tile_values,
                               const at::Tensor& tile_cols,
                               const std::optional<at::Tensor>& bias, int64_t n, int64_t m,
                               int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_nm_tiles";
  const cpu::KernelTable& kernels = tile_copy_kernels(op, n, m);
  Problem p = make_problem(op, x, tile_values, bias, out_features);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x.scalar_type());
  const int64_t in = p.dense.in_features;
  const int64_t W = kernels.nm_tiles_window;
  const int64_t tiles = (out_features + W - 1) / W, tile_slots = cpu::nm_tile_slots(in, n, m, W);
  TORCH_CHECK_VALUE(tile_values.dim() == 3 && tile_values.size(0) == tiles &&
                        tile_values.size(1) == tile_slots && tile_values.size(2) == W,
                    op, ": tile_values must be [", tiles, ", ", tile_slots, ", ", W,
                    "] (from nm_tiles_pack for in_features=", in, " under the ",
                    cpu::isa_name(cpu::active_isa()), " kernels), got ", tile_values.sizes());
  TORCH_CHECK_TYPE(tile_cols.scalar_type() == at::kByte, op, ": tile_cols must be uint8, got ",
                   tile_cols.scalar_type());
  TORCH_CHECK_VALUE(tile_cols.sizes() == tile_values.sizes(), op,
                    ": tile_cols must have the shape of tile_values, got ", tile_cols.sizes());
  TORCH_CHECK(tile_cols.is_cpu(), op, ": tile_cols must be on the CPU");
  if (p.dense.batch == 0 || out_features == 0) return finish(p);
  const at::Tensor tv = tile_values.contiguous();
  const at::Tensor tc = tile_cols.contiguous();
  const cpu::NMTileCopy copy{tv.data_ptr<float>(), tc.data_ptr<uint8_t>()};
  const cpu::NM w{nullptr, nullptr, n, m};
  run_row_tiles(p.dense, w, W, [&](int64_t r0, int64_t r1) {
    kernels.nm_tiles_cached(p.dense, w, copy, r0, r1);
  });
  return finish(p);
}

// Batch-1 CSR through the weight's bitmap view (cpu::CsrBitmap; sparseprune/csr_bitmap.py
// makes it once per weight). Every batch row runs on its own; the view pays at batch 1.
at::Tensor linear_csr_bitmap_cpu(const at::Tensor& x, const at::Tensor& row_starts,
                                 const at::Tensor& bitmap, const at::Tensor& values,
                                 const std::optional<at::Tensor>& bias, int64_t out_features) {
  constexpr const char* op = "sparseprune::linear_csr_bitmap";
  Problem p = make_problem(op, x, values, bias, out_features);
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": values must be 1-D, got shape ", values.sizes());
  const int64_t nnz = values.numel(), in = p.dense.in_features;
  const int64_t row_bytes = cpu::csr_bitmap_row_bytes(in);
  check_index_tensor(op, "row_starts", row_starts, at::kLong, out_features + 1);
  TORCH_CHECK_TYPE(bitmap.scalar_type() == at::kByte, op, ": bitmap must be uint8, got ",
                   bitmap.scalar_type());
  TORCH_CHECK_VALUE(bitmap.dim() == 2 && bitmap.size(0) == out_features &&
                        bitmap.size(1) == row_bytes,
                    op, ": bitmap must be [", out_features, ", ", row_bytes,
                    "] for in_features=", in, ", got ", bitmap.sizes());
  TORCH_CHECK(bitmap.is_cpu(), op, ": bitmap must be on the CPU");
  const at::Tensor rs = row_starts.contiguous();
  const at::Tensor bm = bitmap.contiguous();
  const at::Tensor vals = values.contiguous();
  check_offsets_ends(op, "row_starts", rs, nnz);
  // O(out): the kernels read row r's values between its two starts, so these must lie
  // inside the values (monotone from 0 to nnz), whatever the bitmap says.
  const int64_t* starts = rs.data_ptr<int64_t>();
  for (int64_t r = 0; r < out_features; ++r)
    TORCH_CHECK_VALUE(starts[r] <= starts[r + 1], op, ": row_starts must not decrease, got ",
                      starts[r], " then ", starts[r + 1], " at row ", r);
  if (p.dense.batch == 0 || out_features == 0) return finish(p);

  const cpu::CsrBitmap w{starts, bm.data_ptr<uint8_t>(), vals.data_ptr(), row_bytes};
  const cpu::KernelTable& kernels = cpu::active_kernels();
  const bool f32 = p.dense.dtype == cpu::DType::f32;
  // fp32 activations padded with zeros to whole bitmap bytes (x as is where it already is).
  const bool as_is = f32 && in == row_bytes * 8;
  at::Tensor xbuf = as_is ? at::Tensor() : at::zeros({row_bytes * 8}, at::kFloat);
  const int64_t elem = f32 ? 4 : 2;
  for (int64_t b = 0; b < p.dense.batch; ++b) {
    cpu::Dense row = p.dense;
    row.batch = 1;
    row.x = static_cast<const char*>(p.dense.x) + b * in * elem;
    row.y = static_cast<char*>(p.dense.y) + b * out_features * elem;
    const float* xf;
    if (as_is) {
      xf = static_cast<const float*>(row.x);
    } else {
      float* dst = xbuf.data_ptr<float>();
      if (f32) {
        std::copy_n(static_cast<const float*>(row.x), in, dst);
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(row.x);
        for (int64_t i = 0; i < in; ++i) dst[i] = cpu::bf16_to_f32(src[i]);
      }
      xf = dst;
    }
    run_ranges(starts, out_features, nnz,
               [&](int64_t r0, int64_t r1) { kernels.csr_bitmap(row, w, xf, r0, r1); });
  }
  return finish(p);
}

}  // namespace

TORCH_LIBRARY(sparseprune, m) {
  m.def(
      "linear_csr(Tensor x, Tensor row_offsets, Tensor col_indices, Tensor values, "
      "Tensor? bias, int out_features) -> Tensor");
  m.def(
      "linear_bsr(Tensor x, Tensor block_row_offsets, Tensor block_col_indices, "
      "Tensor blocks, Tensor? bias, int out_features) -> Tensor");
  m.def("linear_nm(Tensor x, Tensor values, Tensor metadata, Tensor? bias, int n, int m) -> Tensor");
  m.def(
      "nm_tiles_pack(Tensor values, Tensor metadata, int n, int m, int in_features) -> "
      "(Tensor, Tensor)");
  m.def(
      "linear_nm_tiles(Tensor x, Tensor tile_values, Tensor tile_cols, Tensor? bias, int n, "
      "int m, int out_features) -> Tensor");
  m.def(
      "linear_csr_bitmap(Tensor x, Tensor row_starts, Tensor bitmap, Tensor values, "
      "Tensor? bias, int out_features) -> Tensor");
  // The gradients of the three linear ops (csrc/autograd.cpp calls them; the formulas are
  // Python, sparseprune/ops.py): (grad_x, grad_values, grad_bias), each an empty tensor
  // where output_mask is false. linear_nm_backward's int is n * 64 + m.
  m.def(
      "linear_csr_backward(Tensor grad_y, Tensor x, Tensor row_offsets, Tensor col_indices, "
      "Tensor values, int out_features, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "linear_bsr_backward(Tensor grad_y, Tensor x, Tensor block_row_offsets, "
      "Tensor block_col_indices, Tensor blocks, int out_features, bool[3] output_mask) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "linear_nm_backward(Tensor grad_y, Tensor x, Tensor values, Tensor metadata, int nm, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sparseprune, CPU, m) {
  m.impl("linear_csr", &linear_csr_cpu);
  m.impl("linear_bsr", &linear_bsr_cpu);
  m.impl("linear_nm", &linear_nm_cpu);
  m.impl("nm_tiles_pack", &nm_tiles_pack_cpu);
  m.impl("linear_nm_tiles", &linear_nm_tiles_cpu);
  m.impl("linear_csr_bitmap", &linear_csr_bitmap_cpu);
}

}  // namespace sparseprune
