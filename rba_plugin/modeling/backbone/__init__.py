from .swin import D2SwinTransformer, SwinTransformer

__all__ = ["D2SwinTransformer", "SwinTransformer"]
