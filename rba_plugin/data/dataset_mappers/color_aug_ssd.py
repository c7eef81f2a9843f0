"""SSD-style photometric distortion (Liu et al. 2016), as Mask2Former applies it.

Brightness shift, then either (contrast, saturation, hue) or (saturation, hue, contrast); each
step happens with probability 1/2. Unlike Mask2Former's transform, which draws random numbers
inside ``apply_image``, the augmentation draws every parameter in ``get_transform`` and the
returned transform is deterministic (so it can be logged, replayed and applied to several images).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation
from fvcore.transforms.transform import Transform

__all__ = ["ColorAugSSD", "ColorAugSSDTransform"]


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class ColorAugSSDTransform(Transform):
    """Applies fixed distortion parameters; ``None`` skips a step. Labels are untouched."""

    def __init__(
        self,
        img_format: str,
        brightness_beta: Optional[float],
        contrast_alpha: Optional[float],
        saturation_alpha: Optional[float],
        hue_shift: Optional[int],
        contrast_first: bool,
    ):
        super().__init__()
        if img_format not in ("BGR", "RGB"):
            raise ValueError(f"ColorAugSSD: INPUT.FORMAT must be BGR or RGB, got '{img_format}'")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """img: H x W x 3 uint8 in ``img_format``."""
        if img.dtype != np.uint8:
            raise ValueError(f"ColorAugSSD works on uint8 images, got {img.dtype}")
        if self.img_format == "RGB":
            img = img[:, :, ::-1]
        img = np.ascontiguousarray(img)
        if self.brightness_beta is not None:
            img = _convert(img, beta=self.brightness_beta)
        if self.contrast_first:
            img = self._contrast(img)
            img = self._saturation(img)
            img = self._hue(img)
        else:
            img = self._saturation(img)
            img = self._hue(img)
            img = self._contrast(img)
        if self.img_format == "RGB":
            img = np.ascontiguousarray(img[:, :, ::-1])
        return img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        return img if self.contrast_alpha is None else _convert(img, alpha=self.contrast_alpha)

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if self.saturation_alpha is None:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=self.saturation_alpha)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if self.hue_shift is None:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        # OpenCV's 8-bit hue is in [0, 180).
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + self.hue_shift) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        raise NotImplementedError("ColorAugSSD has no inverse")


class ColorAugSSD(Augmentation):
    """Draws :class:`ColorAugSSDTransform` parameters (defaults: Mask2Former's / mmseg's)."""

    def __init__(
        self,
        img_format: str,
        brightness_delta: int = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        def maybe(draw):
            return draw() if np.random.randint(2) else None

        brightness = maybe(lambda: float(np.random.uniform(-self.brightness_delta, self.brightness_delta)))
        contrast_first = bool(np.random.randint(2))
        contrast = maybe(lambda: float(np.random.uniform(self.contrast_low, self.contrast_high)))
        saturation = maybe(lambda: float(np.random.uniform(self.saturation_low, self.saturation_high)))
        hue = maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta + 1)))
        return ColorAugSSDTransform(self.img_format, brightness, contrast, saturation, hue, contrast_first)
