"""Dataset mappers: training mappers chosen by ``INPUT.DATASET_MAPPER_NAME``, and the one test
mapper of every evaluation (:func:`build_test_mapper`)."""
from .color_aug_ssd import ColorAugSSD, ColorAugSSDTransform
from .inference import InferenceDatasetMapper, build_test_augmentations, build_test_mapper
from .registry import build_train_mapper, register_train_mapper, registered_train_mappers
from .mask_former_semantic import MaskFormerSemanticDatasetMapper, PasteFunction, build_semantic_train_augmentations
from .mask_former_semantic_outlier import MaskFormerSemanticOutlierDatasetMapper
from .pixel_semantic_outlier import PixelSemanticOutlierMapper

__all__ = [
    "InferenceDatasetMapper",
    "build_test_augmentations",
    "build_test_mapper",
    "register_train_mapper",
    "registered_train_mappers",
    "build_train_mapper",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerSemanticOutlierDatasetMapper",
    "PasteFunction",
    "build_semantic_train_augmentations",
    "PixelSemanticOutlierMapper",
]
