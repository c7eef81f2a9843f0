"""Region separation for RAML: Sobel edges, the uncertainty-based region separation (URS, paper
Eq. 2), MCA channel aggregation (appendix Eq. 15), hole filling and connected components."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "sobel_magnitude",
    "grey_image",
    "fill_and_label",
    "uncertainty_region_separation",
    "aggregate_channels",
]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def grey_image(image: Tensor, input_format: str = "RGB") -> Tensor:
    """3 x H x W image (0..255) -> H x W luminance (ITU-R 601 weights, as OpenCV's grey)."""
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT={input_format!r}: RAML's Sobel needs an RGB or BGR image")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
    if input_format == "BGR":
        weights = weights.flip(0)
    return (image * weights[:, None, None]).sum(dim=0)


def sobel_magnitude(grey: Tensor) -> Tensor:
    """H x W -> H x W gradient magnitude sqrt(Gx^2 + Gy^2) of the 3x3 Sobel filters.

    Borders are replicated, so the image frame itself is not an edge.
    """
    kx = _SOBEL_X.to(grey)
    kernels = torch.stack([kx, kx.t()])[:, None]
    padded = F.pad(grey[None, None], (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(padded, kernels)[0]
    return torch.sqrt(g[0] ** 2 + g[1] ** 2)


def fill_and_label(mask: Tensor, min_area: int = 1, structure: Optional[np.ndarray] = None) -> Tensor:
    """Fill the holes of a binary mask, then label its connected components.

    Args:
        mask: H x W bool.
        min_area: components with fewer pixels are dropped (label 0).
        structure: connectivity for the labelling (default 4-connectivity).
    Returns:
        H x W long: 0 = no region, 1..T = regions in scan order.
    """
    filled = ndimage.binary_fill_holes(mask.cpu().numpy())
    labels, num = ndimage.label(filled, structure=structure)
    if min_area > 1 and num > 0:
        areas = np.bincount(labels.ravel(), minlength=num + 1)
        keep = areas >= min_area
        keep[0] = False
        remap = np.zeros(num + 1, dtype=np.int64)
        remap[keep] = np.arange(1, keep.sum() + 1)
        labels = remap[labels]
    return torch.as_tensor(labels.astype(np.int64), device=mask.device)


def uncertainty_region_separation(
    grey: Tensor, logits: Tensor, sobel_thresh: float, msp_thresh: float, min_area: int = 1
) -> Tensor:
    """URS: E = 1[Sobel(X) >= alpha or u >= beta], hole filling, connected components.

    ``u = 1 - max softmax`` is the MSP uncertainty (the paper's "MSP(U)" map, which responds
    at object borders; a confidence >= beta would mark nearly every pixel as edge).

    Args:
        grey: H x W grey image, 0..255.
        logits: C x H x W closed-set logits.
    Returns:
        H x W long region labels (0 = outside every region).
    """
    uncertainty = 1.0 - logits.softmax(dim=0).max(dim=0).values
    edges = (sobel_magnitude(grey) >= sobel_thresh) | (uncertainty >= msp_thresh)
    return fill_and_label(edges, min_area=min_area)


def aggregate_channels(channels: Tensor) -> Tensor:
    """Eq. 15: C_out = 1 - prod_i (1 - c_i) over the K' x H x W candidate channels -> H x W."""
    if channels.shape[0] == 0:
        return torch.zeros(channels.shape[1:], dtype=torch.float32, device=channels.device)
    return 1.0 - torch.prod(1.0 - channels.float(), dim=0)
