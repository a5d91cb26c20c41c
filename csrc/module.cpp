// The Python module sparseprune._C. Loading it registers the ops (csrc/ops.cpp); the
// functions here expose the runtime ISA choice (csrc/cpu/dispatch.cpp).
#include <torch/extension.h>

#include "cpu/dispatch.h"

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
}
