"""The per-pixel branch: ``PixelOODSegmentor``, its heads and its methods (RPL + CoroCL, PEBAL,
RAML with MCA, the VCA prototype baseline, and the closed-set model)."""
from .method_base import PIXEL_OOD_METHOD_REGISTRY, ExtraImages, PixelOODMethod, build_pixel_ood_method
from .heads import PixelDeepLabV3PlusHead, check_pixel_head
from .segmentor import PixelOODSegmentor
from .closed_set import ClosedSet
from .rpl import RPL, ResidualPatternBlock
from .vca import VCA, PrototypeClassifier
from .raml import RAML
from .pebal import PEBAL

__all__ = [
    "PIXEL_OOD_METHOD_REGISTRY",
    "PixelOODMethod",
    "ExtraImages",
    "build_pixel_ood_method",
    "PixelDeepLabV3PlusHead",
    "check_pixel_head",
    "PixelOODSegmentor",
    "ClosedSet",
    "RPL",
    "ResidualPatternBlock",
    "VCA",
    "PrototypeClassifier",
    "RAML",
    "PEBAL",
]
