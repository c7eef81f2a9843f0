// CUDA kernels of multi-scale deformable attention (forward and backward), float32 and float64.
//
// Forward: one thread per output element (batch, query, head, channel); neighbouring threads
// read neighbouring channels of the same value pixel, so value reads coalesce.
// Backward: one warp per (batch, query, head); lanes stride over channels, the location and
// attention-weight gradients are reduced with warp shuffles, and grad_value is accumulated
// with atomics because queries of one head can sample the same value pixel.
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers that a
// bare nvcc toolkit does not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ms_deform_attn.h"
#include "../ms_deform_attn_sampling.h"

namespace rba_plugin {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts,
                               const scalar_t* __restrict__ locations,
                               const scalar_t* __restrict__ weights, scalar_t* __restrict__ out,
                               int64_t batch, int64_t num_value, int64_t heads, int64_t channels,
                               int64_t queries, int64_t levels, int64_t points) {
  const int64_t total = batch * queries * heads * channels;
  const int64_t row_stride = heads * channels;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ch = index % channels;
    const int64_t m = (index / channels) % heads;
    const int64_t row = index / row_stride;  // n * queries + q
    const int64_t n = row / queries;
    const int64_t sample0 = (row * heads + m) * levels * points;
    scalar_t acc = 0;
    BilinearCorners<scalar_t> c;
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const int64_t base = (n * num_value + starts[l]) * row_stride + m * channels + ch;
      for (int64_t p = 0; p < points; ++p) {
        const int64_t sample = sample0 + l * points + p;
        if (!bilinear_corners(locations[2 * sample], locations[2 * sample + 1], height, width,
                              base, row_stride, c)) {
          continue;
        }
        scalar_t v = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.valid[k]) v += c.weight[k] * value[c.offset[k]];
        }
        acc += weights[sample] * v;
      }
    }
    out[index] = acc;
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts,
                                const scalar_t* __restrict__ locations,
                                const scalar_t* __restrict__ weights,
                                const scalar_t* __restrict__ grad_out,
                                scalar_t* __restrict__ grad_value,
                                scalar_t* __restrict__ grad_locations,
                                scalar_t* __restrict__ grad_weights, int64_t batch,
                                int64_t num_value, int64_t heads, int64_t channels,
                                int64_t queries, int64_t levels, int64_t points) {
  const int64_t warps_total = batch * queries * heads;
  const int64_t warps_per_grid = (static_cast<int64_t>(blockDim.x) * gridDim.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t row_stride = heads * channels;
  // The loop bound is the same for every lane of a warp, so shuffles see full warps.
  for (int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
       warp < warps_total; warp += warps_per_grid) {
    const int64_t m = warp % heads;
    const int64_t row = warp / heads;  // n * queries + q
    const int64_t n = row / queries;
    const scalar_t* gout = grad_out + row * row_stride + m * channels;
    const int64_t sample0 = warp * levels * points;
    BilinearCorners<scalar_t> c;
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      const int64_t base = (n * num_value + starts[l]) * row_stride + m * channels;
      for (int64_t p = 0; p < points; ++p) {
        const int64_t sample = sample0 + l * points + p;
        if (!bilinear_corners(locations[2 * sample], locations[2 * sample + 1], height, width,
                              base, row_stride, c)) {
          continue;  // warp-uniform: every lane reads the same location
        }
        const scalar_t attn = weights[sample];
        const scalar_t dw[4] = {-c.hh, c.hh, -c.lh, c.lh};
        const scalar_t dh[4] = {-c.hw, -c.lw, c.hw, c.lw};
        scalar_t g_attn = 0, g_w = 0, g_h = 0;
        for (int64_t ch = lane; ch < channels; ch += kWarp) {
          const scalar_t g = gout[ch];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (!c.valid[k]) continue;
            const scalar_t dot = g * value[c.offset[k] + ch];
            atomicAdd(grad_value + c.offset[k] + ch, attn * c.weight[k] * g);
            g_attn += c.weight[k] * dot;
            g_w += dw[k] * dot;
            g_h += dh[k] * dot;
          }
        }
        g_attn = warp_sum(g_attn);
        g_w = warp_sum(g_w);
        g_h = warp_sum(g_h);
        if (lane == 0) {
          grad_weights[sample] = g_attn;
          grad_locations[2 * sample] = attn * g_w * static_cast<scalar_t>(width);
          grad_locations[2 * sample + 1] = attn * g_h * static_cast<scalar_t>(height);
        }
      }
    }
  }
}

int blocks_for(int64_t threads_needed) {
  const int64_t blocks = (threads_needed + kThreads - 1) / kThreads;
  // A grid-stride loop covers the rest; cap keeps the grid within launch limits.
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                       const at::Tensor& starts_in, const at::Tensor& locations_in,
                                       const at::Tensor& weights_in) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor shapes = shapes_in.contiguous();
  const at::Tensor starts = starts_in.contiguous();
  const at::Tensor locations = locations_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const int64_t batch = value.size(0), num_value = value.size(1), heads = value.size(2),
                channels = value.size(3);
  const int64_t queries = locations.size(1), levels = locations.size(3),
                points = locations.size(4);
  at::Tensor output = at::empty({batch, queries, heads * channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        locations.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        output.data_ptr<scalar_t>(), batch, num_value, heads, channels, queries, levels, points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& locations_in, const at::Tensor& weights_in, const at::Tensor& grad_out_in) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor shapes = shapes_in.contiguous();
  const at::Tensor starts = starts_in.contiguous();
  const at::Tensor locations = locations_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const int64_t batch = value.size(0), num_value = value.size(1), heads = value.size(2),
                channels = value.size(3);
  const int64_t queries = locations.size(1), levels = locations.size(3),
                points = locations.size(4);
  TORCH_CHECK(grad_out.numel() == batch * queries * heads * channels,
              "ms_deform_attn backward: grad_output has the wrong number of elements");
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_locations = at::zeros_like(locations);
  at::Tensor grad_weights = at::zeros_like(weights);
  const int64_t warps = batch * queries * heads;
  if (warps == 0) {
    return {grad_value, grad_locations, grad_weights};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
    backward_kernel<scalar_t><<<blocks_for(warps * kWarp), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        locations.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        grad_out.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
        grad_locations.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>(), batch, num_value,
        heads, channels, queries, levels, points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace rba_plugin
