from .mask_former import MaskFormer, semantic_scores

__all__ = ["MaskFormer", "semantic_scores"]
