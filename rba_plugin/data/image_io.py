"""Reading images and label maps from disk: one reader for each, used by every path.

Dataset registration (:func:`image_size`), the training mappers of both branches, the test mapper
of evaluation, the demo and the outlier pool all read files through these functions, so a file
means the same thing in training, evaluation and the demo:

* :func:`read_image`: any image PIL opens (8- or 16-bit grayscale, palette, RGB, RGBA, LA, CMYK,
  1-bit) as H x W x 3 uint8 in RGB or BGR, EXIF orientation applied. 16-bit samples are scaled
  to 8 bits (65535 -> 255), not clipped; alpha is dropped.
* :func:`read_label`: a label map as H x W integer indices, never colours: a palette ("P") PNG
  gives its indices (what labelme and VOC-style tools save), 8- and 16-bit grayscale their
  values, a 3-channel file only when its three channels are equal (a gray label saved as RGB).
* :func:`image_size`: the (height, width) :func:`read_image` returns, from the file header.

Detectron2's ``detection_utils.read_image`` differs in two ways that matter here: it saturates
16-bit images (``convert("RGB")`` clips every value above 255) and reads labels with whatever
mode the file has.
"""
from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_image", "read_rgb_image", "read_label", "image_size", "IMAGE_FORMATS"]

PathLike = Union[str, os.PathLike]
IMAGE_FORMATS = ("RGB", "BGR")
# EXIF orientations that swap height and width (transpose, rotate 90 / 270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _scaled_to_8_bit(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (or 32-bit integer) grayscale samples scaled to 0..255."""
    array = array.astype(np.float64)
    top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) <= 65535 else float(array.max())
    return np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)


def read_image(path: PathLike, format: str = "RGB") -> np.ndarray:
    """The image at ``path`` as H x W x 3 uint8 in ``format`` ("RGB" or "BGR").

    Grayscale (8 or 16 bit; 16-bit samples scaled to 8 bits), palette, RGBA / LA (alpha dropped),
    CMYK and 1-bit images are converted; EXIF orientation is applied (H x W is the upright size).

    Raises:
        ValueError: naming the file, when it cannot be read or decoded, holds floating-point
            samples, or ``format`` is not "RGB" / "BGR".
    """
    if format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS} (INPUT.FORMAT), got {format!r}")
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                rgb = np.repeat(_scaled_to_8_bit(np.asarray(image), image.mode)[:, :, None], 3, axis=2)
            elif image.mode == "F":
                raise ValueError("floating-point images are not supported")
            else:
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return np.ascontiguousarray(rgb[:, :, ::-1] if format == "BGR" else rgb)


def read_rgb_image(path: PathLike) -> np.ndarray:
    """:func:`read_image` in RGB."""
    return read_image(path, "RGB")


def read_label(path: PathLike) -> np.ndarray:
    """The label map at ``path`` as H x W indices: uint8 for 8-bit files, uint16 for 16-bit ones.

    A palette PNG gives its indices (never the palette's colours); grayscale files their values;
    a 1-bit file 0 / 1; an RGB(A) file is accepted only when its three colour channels are equal
    (a gray label saved as colour), and LA files give their gray channel. EXIF orientation is
    applied as :func:`read_image` does, so a label stays aligned with its image.

    Raises:
        ValueError: naming the file, when it cannot be read, holds colours (channels differ),
            floating-point or negative values, or values above 65535.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as label:
            label = ImageOps.exif_transpose(label)
            mode = label.mode
            if mode in ("P", "L", "1"):
                array = np.asarray(label).astype(np.uint8)
            elif mode == "PA":
                array = np.asarray(label)[:, :, 0].astype(np.uint8)
            elif mode == "LA":
                array = np.asarray(label)[:, :, 0]
            elif mode.startswith("I;16"):
                array = np.asarray(label).astype(np.uint16)
            elif mode == "I":
                array = np.asarray(label)
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise ValueError(f"32-bit label values {int(array.min())}..{int(array.max())} are outside 0..65535")
                array = array.astype(np.uint16 if array.size and array.max() > 255 else np.uint8)
            elif mode in ("RGB", "RGBA", "RGBX"):
                channels = np.asarray(label)[:, :, :3]
                if not ((channels[:, :, 0] == channels[:, :, 1]).all() and (channels[:, :, 1] == channels[:, :, 2]).all()):
                    raise ValueError(
                        f"it is a colour ({mode}) image whose channels differ: label maps hold class indices "
                        "(8- or 16-bit grayscale, or a palette PNG), not colours"
                    )
                array = channels[:, :, 0]
            else:
                raise ValueError(f"image mode {mode!r} cannot hold label indices")
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read label {path}: {error}") from error
    return np.ascontiguousarray(array)


def image_size(path: PathLike) -> Tuple[int, int]:
    """(height, width) of the array :func:`read_image` returns for ``path``, read from the file
    header (EXIF orientations that rotate by 90 degrees swap the two).

    Raises:
        ValueError: naming the file, when it cannot be opened as an image.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _READ_ERRORS as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return (width, height) if orientation in _SWAPPING_ORIENTATIONS else (height, width)
