// CPU kernels of multi-scale deformable attention (forward and backward), float32 and float64.
//
// Forward parallelises over (batch, query) rows: every row writes its own output slice.
// Backward parallelises over (batch, head) pairs, and over query chunks with private
// grad_value buffers when there are fewer pairs than threads: two queries of the same head can
// sample the same value pixel, so grad_value may only be shared by one thread at a time. That
// keeps the backward free of atomics and deterministic for a fixed thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../ms_deform_attn.h"
#include "../ms_deform_attn_sampling.h"

namespace rba_plugin {
namespace {

// Channel loops with the channel count known at compile time (kChannels > 0) vectorise and
// unroll fully; kChannels == 0 is the generic path for any count.
template <typename scalar_t, int kChannels>
inline void axpy(int64_t channels, scalar_t alpha, const scalar_t* __restrict__ x,
                 scalar_t* __restrict__ y) {
  const int64_t n = kChannels > 0 ? kChannels : channels;
#pragma omp simd
  for (int64_t ch = 0; ch < n; ++ch) y[ch] += alpha * x[ch];
}

// Returns dot(g, v) and adds alpha * g to gv in the same pass.
template <typename scalar_t, int kChannels>
inline scalar_t dot_and_axpy(int64_t channels, const scalar_t* __restrict__ g,
                             const scalar_t* __restrict__ v, scalar_t alpha,
                             scalar_t* __restrict__ gv) {
  const int64_t n = kChannels > 0 ? kChannels : channels;
  scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t ch = 0; ch < n; ++ch) {
    dot += g[ch] * v[ch];
    gv[ch] += alpha * g[ch];
  }
  return dot;
}

struct Dims {
  int64_t batch, num_value, heads, channels, queries, levels, points;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3),
              sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
}

void check_cpu_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "ms_deform_attn: unexpected ranks");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share a dtype");
}

// Forward over the rows [begin, end) of (batch * queries); out is zero-initialised.
template <typename scalar_t, int kChannels>
void forward_rows(const Dims& dims, const int64_t* shape_ptr, const int64_t* start_ptr,
                  const scalar_t* value_ptr, const scalar_t* loc_ptr, const scalar_t* attn_ptr,
                  scalar_t* out_ptr, int64_t begin, int64_t end) {
  // Local copies: the compiler must not reload them after every store through out_ptr.
  const int64_t num_value = dims.num_value, heads = dims.heads, channels = dims.channels;
  const int64_t queries = dims.queries, levels = dims.levels, points = dims.points;
  const int64_t row_stride = heads * channels;  // elements between two value tokens
  BilinearCorners<scalar_t> c;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / queries;
    for (int64_t m = 0; m < heads; ++m) {
      scalar_t* out = out_ptr + row * row_stride + m * channels;
      const int64_t sample0 = (row * heads + m) * levels * points;
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t height = shape_ptr[2 * l], width = shape_ptr[2 * l + 1];
        const int64_t base = (n * num_value + start_ptr[l]) * row_stride + m * channels;
        for (int64_t p = 0; p < points; ++p) {
          const int64_t sample = sample0 + l * points + p;
          if (!bilinear_corners(loc_ptr[2 * sample], loc_ptr[2 * sample + 1], height, width, base,
                                row_stride, c)) {
            continue;
          }
          const scalar_t attn = attn_ptr[sample];
          for (int k = 0; k < 4; ++k) {
            if (c.valid[k]) {
              axpy<scalar_t, kChannels>(channels, attn * c.weight[k], value_ptr + c.offset[k], out);
            }
          }
        }
      }
    }
  }
}

// Backward of the queries [q_begin, q_end) of one (batch n, head m) pair; grad_value goes to
// gval_ptr, which no other thread touches meanwhile.
template <typename scalar_t, int kChannels>
void backward_queries(const Dims& dims, const int64_t* shape_ptr, const int64_t* start_ptr,
                      const scalar_t* value_ptr, const scalar_t* loc_ptr,
                      const scalar_t* attn_ptr, const scalar_t* gout_ptr, scalar_t* gval_ptr,
                      scalar_t* gloc_ptr, scalar_t* gattn_ptr, int64_t n, int64_t m,
                      int64_t q_begin, int64_t q_end) {
  const int64_t num_value = dims.num_value, heads = dims.heads, channels = dims.channels;
  const int64_t queries = dims.queries, levels = dims.levels, points = dims.points;
  const int64_t row_stride = heads * channels;
  BilinearCorners<scalar_t> c;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t row = n * queries + q;
    const scalar_t* gout = gout_ptr + row * row_stride + m * channels;
    const int64_t sample0 = (row * heads + m) * levels * points;
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t height = shape_ptr[2 * l], width = shape_ptr[2 * l + 1];
      const int64_t base = (n * num_value + start_ptr[l]) * row_stride + m * channels;
      for (int64_t p = 0; p < points; ++p) {
        const int64_t sample = sample0 + l * points + p;
        if (!bilinear_corners(loc_ptr[2 * sample], loc_ptr[2 * sample + 1], height, width, base,
                              row_stride, c)) {
          continue;
        }
        const scalar_t attn = attn_ptr[sample];
        // d(sample)/d(lw) and d(sample)/d(lh) per corner, from
        // sample = hh*hw*v0 + hh*lw*v1 + lh*hw*v2 + lh*lw*v3.
        const scalar_t dw[4] = {-c.hh, c.hh, -c.lh, c.lh};
        const scalar_t dh[4] = {-c.hw, -c.lw, c.hw, c.lw};
        scalar_t g_attn = 0, g_w = 0, g_h = 0;
        for (int k = 0; k < 4; ++k) {
          if (!c.valid[k]) continue;
          const scalar_t dot = dot_and_axpy<scalar_t, kChannels>(
              channels, gout, value_ptr + c.offset[k], attn * c.weight[k], gval_ptr + c.offset[k]);
          g_attn += c.weight[k] * dot;
          g_w += dw[k] * dot;
          g_h += dh[k] * dot;
        }
        gattn_ptr[sample] = g_attn;
        gloc_ptr[2 * sample] = attn * g_w * static_cast<scalar_t>(width);
        gloc_ptr[2 * sample + 1] = attn * g_h * static_cast<scalar_t>(height);
      }
    }
  }
}

// Calls body.template operator()<kChannels>() with the channel count specialised when common.
template <typename Body>
void dispatch_channels(int64_t channels, Body&& body) {
  switch (channels) {
    case 16: body(std::integral_constant<int, 16>()); break;
    case 32: body(std::integral_constant<int, 32>()); break;
    case 64: body(std::integral_constant<int, 64>()); break;
    default: body(std::integral_constant<int, 0>()); break;
  }
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                      const at::Tensor& starts_in, const at::Tensor& locations_in,
                                      const at::Tensor& weights_in) {
  check_cpu_inputs(value_in, shapes_in, starts_in, locations_in, weights_in);
  const at::Tensor value = value_in.contiguous();
  const at::Tensor shapes = shapes_in.contiguous();
  const at::Tensor starts = starts_in.contiguous();
  const at::Tensor locations = locations_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const Dims d = dims_of(value, locations);
  at::Tensor output = at::zeros({d.batch, d.queries, d.heads * d.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const int64_t* shape_ptr = shapes.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    const scalar_t* value_ptr = value.data_ptr<scalar_t>();
    const scalar_t* loc_ptr = locations.data_ptr<scalar_t>();
    const scalar_t* attn_ptr = weights.data_ptr<scalar_t>();
    scalar_t* out_ptr = output.data_ptr<scalar_t>();
    dispatch_channels(d.channels, [&](auto channels_tag) {
      constexpr int kChannels = decltype(channels_tag)::value;
      // Grain: enough rows per task to amortise scheduling, small enough to balance.
      at::parallel_for(0, d.batch * d.queries, 16, [&](int64_t begin, int64_t end) {
        forward_rows<scalar_t, kChannels>(d, shape_ptr, start_ptr, value_ptr, loc_ptr, attn_ptr,
                                          out_ptr, begin, end);
      });
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& locations_in, const at::Tensor& weights_in, const at::Tensor& grad_out_in) {
  check_cpu_inputs(value_in, shapes_in, starts_in, locations_in, weights_in);
  const at::Tensor value = value_in.contiguous();
  const at::Tensor shapes = shapes_in.contiguous();
  const at::Tensor starts = starts_in.contiguous();
  const at::Tensor locations = locations_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const Dims d = dims_of(value, locations);
  TORCH_CHECK(grad_out.numel() == d.batch * d.queries * d.heads * d.channels,
              "ms_deform_attn backward: grad_output has the wrong number of elements");

  at::Tensor grad_locations = at::zeros_like(locations);
  at::Tensor grad_weights = at::zeros_like(weights);
  const int64_t pairs = d.batch * d.heads;
  if (pairs == 0 || d.queries == 0) {
    return {at::zeros_like(value), grad_locations, grad_weights};
  }
  // Split queries into chunks only when (batch, head) pairs cannot keep every thread busy.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks =
      pairs >= threads ? 1 : std::min<int64_t>(d.queries, (threads + pairs - 1) / pairs);
  // chunks x N x S x M x D; chunk c accumulates the gradient of its own queries.
  at::Tensor grad_value_parts =
      at::zeros({chunks, d.batch, d.num_value, d.heads, d.channels}, value.options());
  const int64_t* shape_ptr = shapes.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  const int64_t chunk_len = (d.queries + chunks - 1) / chunks;

  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    const scalar_t* value_ptr = value.data_ptr<scalar_t>();
    const scalar_t* loc_ptr = locations.data_ptr<scalar_t>();
    const scalar_t* attn_ptr = weights.data_ptr<scalar_t>();
    const scalar_t* gout_ptr = grad_out.data_ptr<scalar_t>();
    scalar_t* gval_base = grad_value_parts.data_ptr<scalar_t>();
    scalar_t* gloc_ptr = grad_locations.data_ptr<scalar_t>();
    scalar_t* gattn_ptr = grad_weights.data_ptr<scalar_t>();
    const int64_t part_size = d.batch * d.num_value * d.heads * d.channels;
    dispatch_channels(d.channels, [&](auto channels_tag) {
      constexpr int kChannels = decltype(channels_tag)::value;
      at::parallel_for(0, pairs * chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t chunk = task % chunks;
          const int64_t pair = task / chunks;
          const int64_t q_end = std::min(d.queries, (chunk + 1) * chunk_len);
          backward_queries<scalar_t, kChannels>(
              d, shape_ptr, start_ptr, value_ptr, loc_ptr, attn_ptr, gout_ptr,
              gval_base + chunk * part_size, gloc_ptr, gattn_ptr, pair / d.heads, pair % d.heads,
              chunk * chunk_len, q_end);
        }
      });
    });
  });
  at::Tensor grad_value = chunks == 1 ? grad_value_parts[0] : grad_value_parts.sum(0);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace rba_plugin
