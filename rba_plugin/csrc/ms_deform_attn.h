// Multi-scale deformable attention (Deformable-DETR semantics), declarations shared by the
// pybind module, the CPU kernels and the CUDA kernels.
//
// Shapes (N batch, S = sum_l H_l * W_l value tokens, M heads, D channels per head,
//         Q queries, L levels, P points):
//   value               N x S x M x D
//   spatial_shapes      L x 2   (int64, rows are (H_l, W_l))
//   level_start_index   L       (int64, offset of level l inside S)
//   sampling_locations  N x Q x M x L x P x 2   ((x, y) in [0, 1], normalised to level l)
//   attention_weights   N x Q x M x L x P
//   output              N x Q x (M * D)
// Each sample is a bilinear read of level l at pixel (x * W_l - 0.5, y * H_l - 0.5) with zeros
// outside the map (grid_sample with align_corners=False and zero padding).
#pragma once

#include <torch/extension.h>

#include <vector>

namespace rba_plugin {

at::Tensor ms_deform_attn_cpu_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_cuda_forward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);
#endif

}  // namespace rba_plugin
