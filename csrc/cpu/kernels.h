// Torch-free kernel core: raw pointers in, raw pointers out.
//
// Every sparse product computes y[b, r] = sum_k W[r, k] * x[b, k] + bias[r] for a
// row-major x [batch, in] and y [batch, out]. The core knows nothing about torch so
// that it builds and is tested without Python (CMake + ctest) and under sanitizers.
// The torch glue (csrc/ops.cpp) checks shapes and dtypes, splits the work into
// ranges and runs them in parallel; kernels only ever see one range.
//
// Index contents (column indices, offsets, N:M metadata) are trusted here: they are
// validated once when a packed weight is constructed (sparseprune/formats.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sparseprune {
namespace cpu {

enum class DType : int { f32 = 0, bf16 = 1 };
// u8: 8-bit CSR, the matrix seen as segments of kCsrSegment columns (Csr below).
enum class IndexType : int { u16 = 0, i32 = 1, u8 = 2 };

// Columns per segment of an 8-bit CSR weight.
constexpr int64_t kCsrSegment = 256;

// The helpers below have internal linkage on purpose: the per-ISA translation units are
// compiled with wider instruction sets, and an inline function with external linkage
// would be merged across units, so the linker could hand an AVX-512 copy to code that
// runs on any CPU. For the same reason the per-ISA files use no std:: containers.
namespace {

// bfloat16 <-> float with round-to-nearest-even, matching c10::BFloat16.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Storage types: float for f32, uint16_t bit patterns for bf16.
template <typename T>
inline float load_f32(T v);
template <>
inline float load_f32<float>(float v) { return v; }
template <>
inline float load_f32<uint16_t>(uint16_t v) { return bf16_to_f32(v); }

template <typename T>
inline T store_f32(float f);
template <>
inline float store_f32<float>(float f) { return f; }
template <>
inline uint16_t store_f32<uint16_t>(float f) { return f32_to_bf16(f); }

// A scratch buffer without std:: templates (see above).
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : p_(n > 0 ? new T[static_cast<size_t>(n)] : nullptr) {}
  ~Scratch() { delete[] p_; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }

 private:
  T* p_;
};

}  // namespace

struct Dense {
  const void* x;     // [batch, in], dtype
  const void* bias;  // [out] or nullptr, dtype
  void* y;           // [batch, out], dtype
  int64_t batch;
  int64_t in_features;
  int64_t out_features;
  DType dtype;
};

// CSR: row r holds entries row_offsets[r] .. row_offsets[r + 1]. 8-bit CSR (u8) is the
// CSR of W seen as [out * segments, kCsrSegment]: row r's entries of columns
// s * kCsrSegment + (0 .. kCsrSegment) are row_offsets[r * segments + s] ..
// row_offsets[r * segments + s + 1], each index the column within its segment. One byte
// less per entry than 16-bit indices for 8 bytes per segment: 90% sparse fp32 weights pack
// to 13.3% of dense instead of 15.05%.
struct Csr {
  const int64_t* row_offsets;  // [out * segments + 1]
  const void* col_indices;     // [nnz], uint16, int32 or uint8
  const void* values;          // [nnz], dtype
  IndexType index_type;
  int64_t segments = 1;        // ceil(in / kCsrSegment) for u8, else 1
};

// BSR: dense bh x bw blocks; block row i covers rows i*bh .. min(out, (i+1)*bh), block
// column j covers columns j*bw .. min(in, (j+1)*bw). Entries of a ragged edge block
// that fall outside the matrix are never read.
struct Bsr {
  const int64_t* block_row_offsets;  // [ceil(out / bh) + 1]
  const int32_t* block_col_indices;  // [nnzb], in units of blocks
  const void* blocks;                // [nnzb, bh, bw], dtype
  int64_t bh;
  int64_t bw;
};

// N:M: each group of m consecutive input columns keeps n slots. Row r has
// slots = ceil(in / m) * n values; slot s belongs to group s / n and its in-group index
// is the bits-wide field at bit s * bits of the row's metadata (LSB first).
struct NM {
  const void* values;      // [out, slots], dtype
  const uint8_t* metadata; // [out, meta_row_bytes]
  int64_t n;
  int64_t m;
};

namespace {

// Bits per in-group index: ceil(log2(m)), at least 1.
inline int nm_index_bits(int64_t m) {
  int bits = 1;
  while ((int64_t{1} << bits) < m) ++bits;
  return bits;
}

inline int64_t nm_slots_per_row(int64_t in_features, int64_t n, int64_t m) {
  return (in_features + m - 1) / m * n;
}

inline int64_t nm_meta_row_bytes(int64_t in_features, int64_t n, int64_t m) {
  return (nm_slots_per_row(in_features, n, m) * nm_index_bits(m) + 7) / 8;
}

// The in-group index of slot s; never reads past the row's last byte.
inline int nm_slot_index(const uint8_t* row_meta, int64_t row_bytes, int64_t s, int bits) {
  const int64_t bit = s * bits;
  const int64_t byte = bit >> 3;
  uint32_t word = row_meta[byte];
  if (byte + 1 < row_bytes) word |= static_cast<uint32_t>(row_meta[byte + 1]) << 8;
  return static_cast<int>((word >> (bit & 7)) & ((1u << bits) - 1u));
}

}  // namespace

// Activations in the layout the vectorized kernels read: x [batch, in] transposed into
// column-major chunks of `width` batch rows, xt[chunk][in][width], fp32, with the last
// chunk zero-padded. One weight value is then broadcast against a contiguous run of
// `width` activations (vectorized over the batch), and a chunk [in][width] is small
// enough to stay in L2 while every output row streams past it. Width 1 is plain x
// (converted to fp32 when it is bf16), for the batch-1 gather kernels.
struct XPlan {
  int64_t full_width = 0;  // batch rows per full chunk
  int64_t full_chunks = 0;
  int64_t tail_width = 0;  // 0 if the batch divides evenly
  int64_t tail_rows = 0;   // real batch rows in the tail chunk (<= tail_width)
  int64_t in_features = 0;
  // A part of a batch split between threads (ops.cpp, run_by_batch): kernels keep its rows
  // on the chunk path, so that every output has the summation order of the whole batch's
  // plan (no small-batch kernel for a tail part of 1-4 rows).
  bool split_part = false;

  int64_t chunks() const { return full_chunks + (tail_width ? 1 : 0); }
  int64_t width(int64_t c) const { return c < full_chunks ? full_width : tail_width; }
  int64_t rows(int64_t c) const { return c < full_chunks ? full_width : tail_rows; }
  int64_t first_row(int64_t c) const { return c * full_width; }
  int64_t offset(int64_t c) const { return c * full_width * in_features; }
  int64_t floats() const { return (full_chunks * full_width + tail_width) * in_features; }
};

// How a kernel wants its activations: packed by pack_x into chunks of up to
// lanes * max_vectors batch rows, or (lanes == 0) read from x as is.
struct XLayout {
  int64_t lanes = 0;
  int64_t max_vectors = 0;
  int64_t min_width = 0;     // narrowest chunk (a power of two <= lanes)
  bool plain_batch1 = true;  // batch 1 as plain x (width 1) rather than a padded chunk
};

// Chunks of lanes * max_vectors rows; the tail gets the narrowest power-of-two width,
// at least min_width, that covers it. With plain_batch1, batch 1 gives one chunk of
// width 1 (plain x, for the gather kernels).
XPlan plan_x(int64_t batch, int64_t in_features, const XLayout& layout);

// Fills columns [col_begin, col_end) of every chunk of xt; ranges may run in parallel.
// pack_x is the portable packer, pack_x_avx2 / pack_x_avx512 the same result by register
// transposes; pack_x_chunk does one chunk c.
using PackFn = void (*)(const Dense&, const XPlan&, float* xt, int64_t col_begin,
                        int64_t col_end);
void pack_x(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin, int64_t col_end);
void pack_x_chunk(const Dense& d, const XPlan& plan, int64_t c, float* xt, int64_t col_begin,
                  int64_t col_end);
void pack_x_avx2(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                 int64_t col_end);
void pack_x_avx512(const Dense& d, const XPlan& plan, float* xt, int64_t col_begin,
                   int64_t col_end);

namespace {  // internal linkage, as above

// Calls pack(x_rows, rows, width, xt_chunk) for chunk c of the plan, x_rows typed by the
// dtype (const float*, or const uint16_t* holding bf16 bits): the part every packer shares.
template <typename Pack>
inline void with_chunk(const Dense& d, const XPlan& plan, int64_t c, float* xt,
                       const Pack& pack) {
  const int64_t first = plan.first_row(c);
  float* dst = xt + plan.offset(c);
  if (d.dtype == DType::f32) {
    pack(static_cast<const float*>(d.x) + first * d.in_features, plan.rows(c), plan.width(c),
         dst);
  } else {
    pack(static_cast<const uint16_t*>(d.x) + first * d.in_features, plan.rows(c),
         plan.width(c), dst);
  }
}

}  // namespace

// Packed activations handed to a kernel; xt is null for kernels that read x directly.
struct XPacked {
  const float* xt = nullptr;
  XPlan plan;
};

// A kernel computes output rows [row_begin, row_end) (block rows for BSR) for the
// whole batch.
using CsrKernel = void (*)(const Dense&, const Csr&, const XPacked&, int64_t row_begin,
                           int64_t row_end);
using BsrKernel = void (*)(const Dense&, const Bsr&, const XPacked&, int64_t block_row_begin,
                           int64_t block_row_end);
using NMKernel = void (*)(const Dense&, const NM&, const XPacked&, int64_t row_begin,
                          int64_t row_end);
// N:M vectorized over a vector of output rows instead of the batch, reading x as is: fp32
// with m dividing the ISA's window (16 columns with AVX-512, 8 with AVX2; nm_tiles_fit), for
// batches large enough to amortize transposing each tile of rows (the caller decides).
using NMTilesKernel = void (*)(const Dense&, const NM&, int64_t row_begin, int64_t row_end);

// A weight's slot-major tile copy, made once (NMTilesPackFn) and reused by every call
// instead of the per-call transpose of NMTilesKernel. W is the ISA's window (16 with AVX-512,
// 8 with AVX2; KernelTable::nm_tiles_window): for tile t (rows W t .. W t + W - 1) and slot
// s, values[(t * tile_slots + s) * W + i] is row W t + i's value and cols[...] its input
// column modulo W. tile_slots = nm_tile_slots(in, n, m, W).
struct NMTileCopy {
  const float* values;
  const uint8_t* cols;
};
inline int64_t nm_tile_slots(int64_t in_features, int64_t n, int64_t m, int64_t window) {
  return ((in_features + window - 1) / window * (window / m * n) + window - 1) / window * window;
}
// Fills the copy of tiles [tile_begin, tile_end).
using NMTilesPackFn = void (*)(const NM&, int64_t in_features, int64_t out_features,
                               int64_t tile_begin, int64_t tile_end, float* values,
                               uint8_t* cols);
// NMTilesKernel reading a copy made by NMTilesPackFn (row_begin a multiple of W).
using NMTilesCachedKernel = void (*)(const Dense&, const NM&, const NMTileCopy&,
                                     int64_t row_begin, int64_t row_end);

// A CSR weight's bitmap view for batch 1 (sparseprune/csr_bitmap.py makes it once per
// weight and passes the CSR's own values): bit j of bitmap[r * row_bytes + g] marks column
// 8 * g + j of row r as stored, and row r's values are values[row_starts[r] ..
// row_starts[r + 1]) in column order. row_bytes = csr_bitmap_row_bytes(in); bits past
// in_features are zero. Half-dense weights stream 1/8 byte per weight instead of a 1-byte
// index per entry, and the activations are read contiguously, without gathers.
struct CsrBitmap {
  const int64_t* row_starts;  // [out + 1]
  const uint8_t* bitmap;      // [out, row_bytes]
  const void* values;         // [nnz], dtype
  int64_t row_bytes;
};
inline int64_t csr_bitmap_row_bytes(int64_t in_features) { return (in_features + 15) / 16 * 2; }
// Output rows [row_begin, row_end) of one batch row (d.batch is 1, d.y that row's output)
// from x: fp32, row_bytes * 8 floats, zero past in_features. Whatever the bits say, reads
// no value outside values[row_starts[r] .. row_starts[out_features]) for row r (a bitmap
// with more bits than its row has values is a caller's bug: memory-safe, but the kernels
// may then disagree).
using CsrBitmapKernel = void (*)(const Dense&, const CsrBitmap&, const float* x,
                                 int64_t row_begin, int64_t row_end);

namespace {
inline bool nm_tiles_fit(DType dtype, int64_t m, int64_t window) {
  return dtype == DType::f32 && window % m == 0;
}
}  // namespace

// Scalar references: correct for every shape, dtype and index type; the oracle that the
// vectorized kernels are tested against. Accumulate in double.
void spmm_csr_ref(const Dense&, const Csr&, const XPacked&, int64_t row_begin, int64_t row_end);
void spmm_bsr_ref(const Dense&, const Bsr&, const XPacked&, int64_t block_row_begin,
                  int64_t block_row_end);
void spmm_nm_ref(const Dense&, const NM&, const XPacked&, int64_t row_begin, int64_t row_end);
void spmm_csr_bitmap_ref(const Dense&, const CsrBitmap&, const float* x, int64_t row_begin,
                         int64_t row_end);

// Vectorized kernels, one translation unit per pattern x ISA, each compiled with its own
// flags (csrc/cpu/isa_flags.txt). Only dispatch.cpp decides whether they may run.
void spmm_csr_avx2(const Dense&, const Csr&, const XPacked&, int64_t row_begin, int64_t row_end);
void spmm_nm_avx2(const Dense&, const NM&, const XPacked&, int64_t row_begin, int64_t row_end);
void spmm_nm_avx512(const Dense&, const NM&, const XPacked&, int64_t row_begin, int64_t row_end);
void spmm_bsr_avx2(const Dense&, const Bsr&, const XPacked&, int64_t block_row_begin,
                   int64_t block_row_end);
void spmm_bsr_avx512(const Dense&, const Bsr&, const XPacked&, int64_t block_row_begin,
                     int64_t block_row_end);
void spmm_csr_avx512(const Dense&, const Csr&, const XPacked&, int64_t row_begin,
                     int64_t row_end);
void spmm_nm_tiles_avx512(const Dense&, const NM&, int64_t row_begin, int64_t row_end);
void spmm_nm_tiles_cached_avx512(const Dense&, const NM&, const NMTileCopy&,
                                 int64_t row_begin, int64_t row_end);
void nm_tiles_pack_avx512(const NM&, int64_t in_features, int64_t out_features,
                          int64_t tile_begin, int64_t tile_end, float* values, uint8_t* cols);
void spmm_nm_tiles_avx2(const Dense&, const NM&, int64_t row_begin, int64_t row_end);
void spmm_nm_tiles_cached_avx2(const Dense&, const NM&, const NMTileCopy&, int64_t row_begin,
                               int64_t row_end);
void nm_tiles_pack_avx2(const NM&, int64_t in_features, int64_t out_features,
                        int64_t tile_begin, int64_t tile_end, float* values, uint8_t* cols);
void spmm_csr_bitmap_avx2(const Dense&, const CsrBitmap&, const float* x, int64_t row_begin,
                          int64_t row_end);

}  // namespace cpu
}  // namespace sparseprune
