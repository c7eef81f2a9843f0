from .build import build_pixel_decoder
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = ["build_pixel_decoder", "MSDeformAttnPixelDecoder"]
