"""Models. Importing registers Mask2Former's backbone, heads, decoders and meta-architecture and
the per-pixel DeepLabV3+ branch (``pixel``); ``ood`` holds the scores and losses both share."""
from . import pixel  # noqa: F401  (registers PixelOODSegmentor and the per-pixel methods)
from .backbone import D2SwinTransformer
from .criterion import SetCriterion
from .heads import MaskFormerHead
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer, semantic_scores
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY, MultiScaleMaskedTransformerDecoder

__all__ = [
    "D2SwinTransformer",
    "SetCriterion",
    "MaskFormerHead",
    "HungarianMatcher",
    "MaskFormer",
    "semantic_scores",
    "MSDeformAttnPixelDecoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "MultiScaleMaskedTransformerDecoder",
]
