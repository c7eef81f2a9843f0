"""``PixelOODSegmentor``: DeepLabV3+ (Detectron2's DeepLab project) plus a per-pixel OOD method."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ASPP
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..freeze import freeze_except
from .method_base import PixelOODMethod, build_pixel_ood_method

__all__ = ["PixelOODSegmentor"]


@META_ARCH_REGISTRY.register()
class PixelOODSegmentor(nn.Module):
    """Per-pixel open-world segmentor.

    Training: ``model(batched_inputs) -> dict of losses``; each input dict holds ``"image"``
    (3 x H x W, uint8, cfg.INPUT.FORMAT) and ``"sem_seg"`` (H x W long: train ids, 255 void,
    ``INPUT.OOD_LABEL`` on pasted outliers). Inference: one dict per image with ``"sem_seg"``
    (C x H x W logits at the original size) and ``"ood_score"`` (H x W, higher = more anomalous),
    plus method-specific maps (e.g. VCA's ``"unknown_mask"``).

    Parts the method does not train are frozen with :func:`freeze_except` (no gradient, eval mode).
    """

    # The method's own modules: a closed-set checkpoint (MODEL.WEIGHTS of a fine-tuning config)
    # cannot hold them, so rba_plugin.engine.SafeCheckpointer lets them start untrained.
    newly_initialized_prefixes = ("ood_method.",)

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        ood_method: PixelOODMethod,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_value: int = 255,
        extra_trainable: Sequence[str] = (),
        held_out_classes: Sequence[int] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.ood_method = ood_method
        self.size_divisibility = size_divisibility
        self.ignore_value = ignore_value
        self.held_out_classes = tuple(int(c) for c in held_out_classes)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        prefixes = ood_method.trainable_prefixes("sem_seg_head")
        self.trainable_names: List[str] = [n for n, _ in self.named_parameters()]
        if prefixes is not None:
            self.trainable_names = freeze_except(self, list(prefixes) + list(extra_trainable))

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        size_div = cfg.MODEL.PIXEL_OOD.SIZE_DIVISIBILITY
        if size_div < 0:
            size_div = backbone.size_divisibility or 32
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "ood_method": build_pixel_ood_method(cfg, sem_seg_head),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": size_div,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "extra_trainable": cfg.MODEL.PIXEL_OOD.EXTRA_TRAINABLE,
            "held_out_classes": cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Lets a method initialise its new modules from a base checkpoint (RPL's ASPP copy).
        self.ood_method.fill_missing_state(state_dict, prefix + "ood_method.", prefix + "sem_seg_head.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def input_size_multiple(self) -> Tuple[int, int]:
        """(h, w) that padded inputs must be multiples of: DeepLab's ASPP pools over fixed windows
        (the training crop at the coarsest stride), so its input must tile them; (1, 1) otherwise."""
        stride = max(shape.stride for shape in self.backbone.output_shape().values())
        multiple = (1, 1)
        for module in self.sem_seg_head.modules():
            if isinstance(module, ASPP) and module.pool_kernel_size is not None:
                multiple = tuple(int(k) * stride for k in module.pool_kernel_size)
        return multiple

    def _check_input_size(self, images: ImageList, batched_inputs: List[dict]) -> None:
        # Without this, a small image fails deep in ASPP with a message naming neither file nor size.
        mh, mw = self.input_size_multiple()
        height, width = images.tensor.shape[-2:]
        if height % mh == 0 and width % mw == 0:
            return
        h, w = images.image_sizes[0]
        name = batched_inputs[0].get("file_name", "the input image")
        problem = (f"smaller than the model's minimum input size {mh}x{mw}" if height < mh or width < mw
                   else f"not a multiple of {mh}x{mw}")
        raise ValueError(
            f"{name}: image of {h}x{w} (HxW; {height}x{width} after padding the batch) is {problem}: the ASPP "
            f"of this model pools over windows of the training crop (INPUT.CROP.SIZE), so inputs must tile "
            f"them. Resize the images (INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST) to such a size."
        )

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[dict]):
        images = self.preprocess_image(batched_inputs)
        self._check_input_size(images, batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("PixelOODSegmentor in training mode needs 'sem_seg' in every input dict")
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
            for cls in self.held_out_classes:  # novel classes of the incremental settings
                targets = targets.masked_fill(targets == cls, self.ignore_value)
            return self.ood_method.losses(self.sem_seg_head, features, images, targets, batched_inputs, self)
        logits, scores, extras = self.ood_method.inference(self.sem_seg_head, features, images)
        return self.postprocess(logits, scores, extras, images, batched_inputs)

    @staticmethod
    def postprocess(
        logits: Tensor, scores: Tensor, extras: Dict[str, Tensor], images: ImageList, batched_inputs: List[dict]
    ) -> List[dict]:
        """Crop the padding and resize to each input's ``height`` x ``width`` (its original size)."""
        results = []
        for i, (inp, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            height = inp.get("height", image_size[0])
            width = inp.get("width", image_size[1])
            out = {
                "sem_seg": sem_seg_postprocess(logits[i], image_size, height, width),
                "ood_score": sem_seg_postprocess(scores[i][None], image_size, height, width)[0],
            }
            for name, value in extras.items():
                resized = sem_seg_postprocess(value[i][None].float(), image_size, height, width)[0]
                out[name] = resized > 0.5 if value.dtype == torch.bool else resized
            results.append(out)
        return results
