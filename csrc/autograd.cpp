// Autograd kernels of the linear ops, in C++ so that a call that needs no gradient (grad
// mode off, or no input that requires one: torch.no_grad() inference with the layers'
// nn.Parameter values) goes straight to the device kernel without running Python.
// torch.library.register_autograd's Python kernel cost ~16 us per call under no_grad
// (Zen 3; the CPU op itself ~4.5 us): ~0.6 ms per forward of MiniLM's 36 sparse layers.
//
// A call that needs gradients records a node whose backward calls
// sparseprune::linear_<format>_backward. Those formulas are Python (sparseprune/ops.py),
// registered as CompositeImplicitAutograd, so they run on every device and their own
// gradients (double backward) come from the torch ops they are made of; the Python
// module (sparseprune.ops, imported by the package) must be loaded for them to exist.
// torch.func transforms reject C++ Functions (the Python registration before this file
// was rejected by them too, for want of setup_context).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace sparseprune {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

// linear_csr and linear_bsr: (x, three packed tensors, bias, out_features).
using Linear3 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const OptTensor&, int64_t);
// linear_nm: (x, values, metadata, bias, n, m).
using LinearNM = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const OptTensor&, int64_t, int64_t);

// The ops of one format: Csr and Bsr share a schema shape (Linear3), Nm has its own.
struct Csr {
  static constexpr const char* kOp = "sparseprune::linear_csr";
  static constexpr const char* kBackward = "sparseprune::linear_csr_backward";
};
struct Bsr {
  static constexpr const char* kOp = "sparseprune::linear_bsr";
  static constexpr const char* kBackward = "sparseprune::linear_bsr_backward";
};
struct Nm {
  static constexpr const char* kOp = "sparseprune::linear_nm";
  static constexpr const char* kBackward = "sparseprune::linear_nm_backward";
};

template <class Format, typename Sig>
const c10::TypedOperatorHandle<Sig>& forward_op() {
  static const auto h =
      c10::Dispatcher::singleton().findSchemaOrThrow(Format::kOp, "").template typed<Sig>();
  return h;
}

template <class Format>
const c10::OperatorHandle& backward_op() {
  static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow(Format::kBackward, "");
  return h;
}

bool needs_grad(const at::Tensor& x, const at::Tensor& values, const OptTensor& bias) {
  if (!at::GradMode::is_enabled()) return false;
  return x.requires_grad() || values.requires_grad() ||
         (bias.has_value() && bias->defined() && bias->requires_grad());
}

void save(AutogradContext* ctx, variable_list tensors, const OptTensor& bias, int64_t int_arg) {
  ctx->save_for_backward(std::move(tensors));
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
  ctx->saved_data["int_arg"] = int_arg;
}

// Gradients of x, the packed values and the bias (forward inputs 0, values_at, bias_at) from
// the backward op, whose schema is (grad_y, the saved tensors, int_arg, output_mask) ->
// (grad_x, grad_values, grad_bias); the index tensors and the ints get none.
variable_list run_backward(AutogradContext* ctx, const at::Tensor& grad_y,
                           const c10::OperatorHandle& op, size_t values_at, size_t bias_at) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  const bool gx = ctx->needs_input_grad(0), gv = ctx->needs_input_grad(values_at);
  const bool gb = has_bias && ctx->needs_input_grad(bias_at);
  variable_list out(6);
  if (!gx && !gv && !gb) return out;
  torch::jit::Stack stack;
  stack.emplace_back(grad_y);
  for (const at::Tensor& t : ctx->get_saved_variables()) stack.emplace_back(t);
  stack.emplace_back(ctx->saved_data["int_arg"]);
  stack.emplace_back(c10::List<bool>({gx, gv, gb}));
  op.callBoxed(&stack);
  if (gx) out[0] = stack[0].toTensor();
  if (gv) out[values_at] = stack[1].toTensor();
  if (gb) out[bias_at] = stack[2].toTensor();
  return out;
}

// linear_csr and linear_bsr: (x, three packed tensors, values last, bias, out_features).
template <class Format>
struct Linear3Function : torch::autograd::Function<Linear3Function<Format>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index0,
                            const at::Tensor& index1, const at::Tensor& values,
                            const OptTensor& bias, int64_t out_features) {
    at::AutoDispatchBelowADInplaceOrView guard;
    save(ctx, {x, index0, index1, values}, bias, out_features);
    return forward_op<Format, Linear3>().call(x, index0, index1, values, bias, out_features);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return run_backward(ctx, grads[0], backward_op<Format>(), 3, 4);
  }
};

struct NmFunction : torch::autograd::Function<NmFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& metadata, const OptTensor& bias, int64_t n,
                            int64_t m) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // n and m travel as one int, n * 64 + m (m <= 32), so that every backward schema has
    // the same shape.
    save(ctx, {x, values, metadata}, bias, n * 64 + m);
    return forward_op<Nm, LinearNM>().call(x, values, metadata, bias, n, m);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return run_backward(ctx, grads[0], backward_op<Nm>(), 1, 3);
  }
};

template <class Format>
at::Tensor linear3_autograd(const at::Tensor& x, const at::Tensor& index0,
                            const at::Tensor& index1, const at::Tensor& values,
                            const OptTensor& bias, int64_t out_features) {
  if (needs_grad(x, values, bias))
    return Linear3Function<Format>::apply(x, index0, index1, values, bias, out_features);
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_op<Format, Linear3>().call(x, index0, index1, values, bias, out_features);
}

at::Tensor linear_nm_autograd(const at::Tensor& x, const at::Tensor& values,
                              const at::Tensor& metadata, const OptTensor& bias, int64_t n,
                              int64_t m) {
  if (needs_grad(x, values, bias)) return NmFunction::apply(x, values, metadata, bias, n, m);
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_op<Nm, LinearNM>().call(x, values, metadata, bias, n, m);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseprune, Autograd, m) {
  m.impl("linear_csr", &linear3_autograd<Csr>);
  m.impl("linear_bsr", &linear3_autograd<Bsr>);
  m.impl("linear_nm", &linear_nm_autograd);
}

}  // namespace sparseprune
