"""The per-pixel DeepLabV3+ branch: ``PixelOODSegmentor`` and its methods (RPL + CoroCL, PEBAL,
RAML with MCA, the VCA prototype baseline, and the closed-set model)."""
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod, build_pixel_ood_method
from .segmentor import PixelOODSegmentor
from .closed_set import ClosedSet
from .rpl import RPL, ResidualPatternBlock
from .vca import VCA, PrototypeClassifier
from .raml import RAML
from .pebal import PEBAL
from .optim import lr_multipliers_from_config, pixel_param_groups

__all__ = [
    "PIXEL_OOD_METHOD_REGISTRY",
    "PixelOODMethod",
    "build_pixel_ood_method",
    "PixelOODSegmentor",
    "ClosedSet",
    "RPL",
    "ResidualPatternBlock",
    "VCA",
    "PrototypeClassifier",
    "RAML",
    "PEBAL",
    "lr_multipliers_from_config",
    "pixel_param_groups",
]
