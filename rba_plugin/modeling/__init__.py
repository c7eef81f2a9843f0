"""Models: the per-pixel DeepLabV3+ branch (``pixel``), shared OOD scores and losses (``ood``)."""
from . import pixel  # noqa: F401  (registers PixelOODSegmentor and the per-pixel methods)
