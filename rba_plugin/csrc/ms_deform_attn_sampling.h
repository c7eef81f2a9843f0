// Bilinear sampling geometry of multi-scale deformable attention, shared by the CPU and CUDA
// kernels so both read a location in exactly the same way.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RBA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RBA_HOST_DEVICE inline
#endif

namespace rba_plugin {

// The four bilinear corners of one sampling point on one level of one head.
// offset[c] is the element offset of corner c inside value (head and batch already applied),
// weight[c] its bilinear weight, or 0 when the corner lies outside the map.
template <typename scalar_t>
struct BilinearCorners {
  int64_t offset[4];
  scalar_t weight[4];
  bool valid[4];
  // Fractions used by the location gradient.
  scalar_t lh, lw, hh, hw;
};

template <typename scalar_t>
RBA_HOST_DEVICE scalar_t floor_value(scalar_t x) {
#if defined(__CUDA_ARCH__)
  return floor(x);
#else
  return std::floor(x);
#endif
}

// Corners of the point (loc_x, loc_y) in [0, 1] on a height x width map whose pixel (0, 0)
// starts at element ``base`` and whose rows of pixels are ``row_stride`` elements apart.
// Returns false when the point is entirely outside the map (the sample is zero): pixel
// coordinates are (x W - 0.5, y H - 0.5), as grid_sample with align_corners=False.
template <typename scalar_t>
RBA_HOST_DEVICE bool bilinear_corners(scalar_t loc_x, scalar_t loc_y, int64_t height, int64_t width,
                                      int64_t base, int64_t row_stride, BilinearCorners<scalar_t>& c) {
  const scalar_t h = loc_y * static_cast<scalar_t>(height) - scalar_t(0.5);
  const scalar_t w = loc_x * static_cast<scalar_t>(width) - scalar_t(0.5);
  if (!(h > scalar_t(-1) && w > scalar_t(-1) && h < static_cast<scalar_t>(height) &&
        w < static_cast<scalar_t>(width))) {
    return false;
  }
  const int64_t h_low = static_cast<int64_t>(floor_value(h));
  const int64_t w_low = static_cast<int64_t>(floor_value(w));
  const int64_t h_high = h_low + 1;
  const int64_t w_high = w_low + 1;
  c.lh = h - static_cast<scalar_t>(h_low);
  c.lw = w - static_cast<scalar_t>(w_low);
  c.hh = scalar_t(1) - c.lh;
  c.hw = scalar_t(1) - c.lw;
  const bool top = h_low >= 0, bottom = h_high <= height - 1;
  const bool left = w_low >= 0, right = w_high <= width - 1;
  c.valid[0] = top && left;
  c.valid[1] = top && right;
  c.valid[2] = bottom && left;
  c.valid[3] = bottom && right;
  c.offset[0] = base + (h_low * width + w_low) * row_stride;
  c.offset[1] = base + (h_low * width + w_high) * row_stride;
  c.offset[2] = base + (h_high * width + w_low) * row_stride;
  c.offset[3] = base + (h_high * width + w_high) * row_stride;
  c.weight[0] = c.valid[0] ? c.hh * c.hw : scalar_t(0);
  c.weight[1] = c.valid[1] ? c.hh * c.lw : scalar_t(0);
  c.weight[2] = c.valid[2] ? c.lh * c.hw : scalar_t(0);
  c.weight[3] = c.valid[3] ? c.lh * c.lw : scalar_t(0);
  return true;
}

}  // namespace rba_plugin
