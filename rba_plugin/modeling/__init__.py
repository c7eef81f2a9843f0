"""Models. Importing registers the backbone, heads, decoders and meta-architectures."""
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
