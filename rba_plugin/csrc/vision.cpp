// Python bindings of rba_plugin._C: device dispatch for the deformable attention op.
// Argument checking with messages that name the argument is done in Python
// (rba_plugin/layers/ms_deform_attn.py) for every path; the checks here only guard memory safety.
#include "ms_deform_attn.h"

namespace rba_plugin {
namespace {

void check_same_device(const at::Tensor& value, const std::vector<at::Tensor>& others) {
  for (const auto& t : others) {
    TORCH_CHECK(t.device() == value.device(), "ms_deform_attn: all tensors must be on ",
                value.device(), ", got one on ", t.device());
  }
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  check_same_device(value, {spatial_shapes, level_start_index, sampling_locations, attention_weights});
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
#else
    TORCH_CHECK(false, "rba_plugin._C was built without CUDA kernels; rebuild with a CUDA toolkit");
#endif
  }
  return ms_deform_attn_cpu_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights,
                                 const at::Tensor& grad_output) {
  check_same_device(value, {spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            grad_output});
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_backward(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, grad_output);
#else
    TORCH_CHECK(false, "rba_plugin._C was built without CUDA kernels; rebuild with a CUDA toolkit");
#endif
  }
  return ms_deform_attn_cpu_backward(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights, grad_output);
}

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace rba_plugin

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &rba_plugin::forward, "multi-scale deformable attention forward");
  m.def("ms_deform_attn_backward", &rba_plugin::backward,
        "multi-scale deformable attention backward: (grad_value, grad_locations, grad_weights)");
  m.def("has_cuda", &rba_plugin::has_cuda, "whether the CUDA kernels were compiled in");
}
