"""Backbones: Swin (Mask2Former's D2SwinTransformer), and the trunks of the official per-pixel
networks: WideResNet-38 (PEBAL, RPL, DenseHybrid) and torchvision's ResNet (RAML)."""
from .swin import D2SwinTransformer, SwinTransformer
from .torchvision_resnet import TorchvisionResNet, build_torchvision_resnet_backbone
from .wider_resnet import WiderResNetA2, build_wider_resnet_backbone

__all__ = [
    "D2SwinTransformer",
    "SwinTransformer",
    "TorchvisionResNet",
    "build_torchvision_resnet_backbone",
    "WiderResNetA2",
    "build_wider_resnet_backbone",
]
