// The Python module sparseprune._C. Loading it registers the ops (csrc/ops.cpp); the
// functions here expose the runtime ISA choice (csrc/cpu/dispatch.cpp).
#include <torch/extension.h>

#include "cpu/dispatch.h"
#ifdef SPARSEPRUNE_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace {

std::vector<std::string> isa_names(const std::vector<sparseprune::cpu::Isa>& isas) {
  std::vector<std::string> names;
  for (auto isa : isas) names.emplace_back(sparseprune::cpu::isa_name(isa));
  return names;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace cpu = sparseprune::cpu;
  m.def(
      "active_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
      "The ISA the CPU kernels run with now (reads SPARSEPRUNE_ISA on first use).");
  m.def(
      "detected_isa", [] { return std::string(cpu::isa_name(cpu::detected_isa())); },
      "The best ISA this CPU supports.");
  m.def(
      "supported_isas", [] { return isa_names(cpu::supported_isas()); },
      "Every ISA this CPU can run, from 'ref' upwards.");
  m.def(
      "set_isa", [](const std::string& name) { cpu::set_isa(cpu::parse_isa(name)); },
      "Forces the CPU kernels to one ISA; ValueError if unknown or unsupported here.");
  m.def(
      "nm_tile_copy",
      [] {
        const cpu::KernelTable& k = cpu::active_kernels();
        const bool has = k.nm_tiles_pack != nullptr && k.nm_tiles_cached != nullptr;
        return std::make_tuple(has ? k.nm_tiles_window : int64_t{0},
                               has ? k.nm_tiles_cached_min_batch : int64_t{0},
                               has ? k.nm_tiles_cached_max_batch : int64_t{0});
      },
      "(rows per tile, smallest batch, largest batch) of the active ISA's cached N:M row "
      "tiles; (0, 0, 0) where it has none.");
#ifdef SPARSEPRUNE_WITH_CUDA
  m.attr("cuda_built") = true;
  namespace cu = sparseprune::cuda;
  auto dtype = [](const std::string& name) {
    if (name == "float32") return cu::DType::f32;
    if (name == "float16") return cu::DType::f16;
    if (name == "bfloat16") return cu::DType::bf16;
    throw pybind11::value_error("dtype must be float32, float16 or bfloat16, got " + name);
  };
  m.def(
      "cuda_bsr_path",
      [dtype](const std::string& dt, int64_t bh, int64_t bw, int64_t in) {
        return std::string(cu::bsr_path(dtype(dt), bh, bw, in));
      },
      "'tensor_core' or 'cuda_core': the CUDA path of a BSR product.");
  m.def(
      "cuda_nm_path",
      [dtype](const std::string& dt, int64_t n, int64_t mm, int64_t in) {
        return std::string(cu::nm_path(dtype(dt), n, mm, in));
      },
      "'tensor_core' or 'cuda_core': the CUDA path of an N:M product.");
  m.def(
      "cuda_nm24_variants", [] { return cu::nm24_variant_names(); },
      "The values SPARSEPRUNE_CUDA_NM24 accepts (forces one 2:4 tensor-core kernel).");
  m.def(
      "cuda_bsr_variants", [] { return cu::bsr_variant_names(); },
      "The values SPARSEPRUNE_CUDA_BSR accepts (forces one BSR tensor-core kernel).");
  m.def(
      "cuda_csr_variants", [] { return cu::csr_variant_names(); },
      "The values SPARSEPRUNE_CUDA_CSR accepts (forces one CSR kernel).");
#else
  m.attr("cuda_built") = false;
#endif
}
