"""The per-pixel branch: ``PixelOODSegmentor``, its heads and its methods (RPL + CoroCL, PEBAL,
DenseHybrid, RAML with MCA, the VCA prototype baseline, and the closed-set model)."""
from .method_base import PIXEL_OOD_METHOD_REGISTRY, ExtraImages, PixelOODMethod, build_pixel_ood_method
from .heads import DeepWV3PlusHead, PixelDeepLabV3PlusHead, RAMLDeepLabV3PlusHead, check_pixel_head
from .segmentor import PixelOODSegmentor
from .closed_set import ClosedSet
from .rpl_blocks import RPL_RESIDUAL_BLOCK_REGISTRY, ResidualAnomalyBlock, ResidualPatternBlock
from .rpl import RPL
from .vca import VCA, PrototypeClassifier
from .raml_mca import RAML_MCA_CONV_REGISTRY, HeadMetaConv, MethodConv
from .raml import RAML
from .pebal_abstention import PEBAL_ABSTENTION_REGISTRY, PredictorRow, SeparateConv
from .pebal import PEBAL
from .densehybrid import DenseHybrid

__all__ = [
    "PIXEL_OOD_METHOD_REGISTRY",
    "PixelOODMethod",
    "ExtraImages",
    "build_pixel_ood_method",
    "PixelDeepLabV3PlusHead",
    "DeepWV3PlusHead",
    "RAMLDeepLabV3PlusHead",
    "check_pixel_head",
    "PixelOODSegmentor",
    "ClosedSet",
    "RPL",
    "RPL_RESIDUAL_BLOCK_REGISTRY",
    "ResidualAnomalyBlock",
    "ResidualPatternBlock",
    "VCA",
    "PrototypeClassifier",
    "RAML",
    "RAML_MCA_CONV_REGISTRY",
    "HeadMetaConv",
    "MethodConv",
    "PEBAL",
    "PEBAL_ABSTENTION_REGISTRY",
    "PredictorRow",
    "SeparateConv",
    "DenseHybrid",
]
