"""Reading images from disk, the same way for every path that takes users' files."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_rgb_image"]


def read_rgb_image(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB of any image PIL reads: grayscale (8 or 16 bit), palette, RGBA and LA
    images are converted (alpha dropped), EXIF orientation applied. Errors name the file."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bit
                array = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else array.max()
                array = np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(array[:, :, None], 3, axis=2)
            if image.mode == "F":
                raise ValueError("floating-point images are not supported")
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
