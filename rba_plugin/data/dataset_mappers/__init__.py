"""Training dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME``."""
from .color_aug_ssd import ColorAugSSD, ColorAugSSDTransform
from .mask_former_semantic import MaskFormerSemanticDatasetMapper, OutlierPaster, build_semantic_train_augmentations

__all__ = [
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "MaskFormerSemanticDatasetMapper",
    "OutlierPaster",
    "build_semantic_train_augmentations",
]
