"""The Mask2Former meta-architecture for semantic segmentation."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..ood import compute_ood_score, densehybrid_score, gaussian_smooth
from ..outlier_criterion import build_set_criterion

__all__ = ["MaskFormer", "semantic_scores"]


def semantic_scores(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """L_k = sum_q softmax(class logits)_q[k] * sigmoid(mask logits)_q, "no object" dropped.

    Args:
        mask_cls: Q x (C+1) class logits.
        mask_pred: Q x H x W mask logits.

    Returns:
        C x H x W, each entry in [0, Q].
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Backbone -> MaskFormerHead (pixel decoder + transformer decoder) -> set criterion (training)
    or semantic scores (inference).

    Training input: per image {"image": 3 x H x W (0..255, cfg.INPUT.FORMAT), "instances":
    Instances(gt_classes, gt_masks), optionally "sem_seg": H x W long}. Output: weighted loss dict.
    Inference output: per image {"sem_seg": C x height x width, "ood_score": height x width} and,
    when several scores are configured, "ood_scores": {name: height x width} (see
    :meth:`inference_single`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        ood_score_names: Sequence[str] = ("rba",),
        ood_score_smoothing: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        # Backbones such as ResNet report 0; the config value pads to what the decoder needs.
        self.size_divisibility = size_divisibility if size_divisibility >= 0 else backbone.size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.ignore_value = ignore_value
        if not ood_score_names:
            raise ValueError("MODEL.MASK_FORMER.OOD_SCORES must name at least one anomaly score")
        if "densehybrid" in ood_score_names and getattr(sem_seg_head, "outlier_head", None) is None:
            raise ValueError("MODEL.MASK_FORMER.OOD_SCORES: 'densehybrid' needs the DenseHybrid outlier head")
        for name in ood_score_names:
            if name != "densehybrid":
                compute_ood_score(name, torch.zeros(1, 1, 1))  # unknown names fail here, at build time
        self.ood_score_names = list(ood_score_names)
        self.ood_score_smoothing = ood_score_smoothing
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        if mf.TEST.INSTANCE_ON or mf.TEST.PANOPTIC_ON or not mf.TEST.SEMANTIC_ON:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST: only semantic inference is implemented "
                f"(SEMANTIC_ON={mf.TEST.SEMANTIC_ON}, INSTANCE_ON={mf.TEST.INSTANCE_ON}, "
                f"PANOPTIC_ON={mf.TEST.PANOPTIC_ON})"
            )
        if mf.MATCHER != "HungarianMatcher":
            raise ValueError(f"MODEL.MASK_FORMER.MATCHER: only 'HungarianMatcher' is implemented, got '{mf.MATCHER}'")
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        criterion = build_set_criterion(cfg, sem_seg_head.num_classes)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "ood_score_names": list(mf.OOD_SCORES),
            "ood_score_smoothing": mf.OOD_SCORE_SMOOTHING,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the batch's images to a multiple of ``size_divisibility``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_images(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            losses = self.criterion(outputs, targets)
            # Unweighted terms without a weight (none today) are dropped, as in Mask2Former.
            return {k: v * self.criterion.weight_dict[k] for k, v in losses.items() if k in self.criterion.weight_dict}

        mask_pred_results = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        outlier_results = [None] * len(batched_inputs)
        if "pred_outlier" in outputs:
            outlier_results = F.interpolate(
                outputs["pred_outlier"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
            )
        processed_results = []
        for mask_cls, mask_pred, outlier_logits, input_per_image, image_size in zip(
            outputs["pred_logits"], mask_pred_results, outlier_results, batched_inputs, images.image_sizes
        ):
            result = self.inference_single(mask_cls, mask_pred, input_per_image, image_size)
            result.update(self.anomaly_scores(result["sem_seg"], outlier_logits, image_size, result["sem_seg"].shape[-2:]))
            processed_results.append(result)
        return processed_results

    def semantic_scores(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """Q x (C+1), Q x H x W -> C x H x W semantic scores L (see :func:`semantic_scores`)."""
        return semantic_scores(mask_cls, mask_pred)

    def inference_single(
        self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, input_per_image: Dict, image_size: Tuple[int, int]
    ) -> Dict[str, torch.Tensor]:
        """Assemble one image's outputs; anomaly scores computed from ``sem_seg`` belong here.

        Args:
            mask_cls: Q x (C+1) class logits.
            mask_pred: Q x H_pad x W_pad mask logits, upsampled to the padded input.
            input_per_image: the input dict; "height"/"width" (default: the input size) set the
                output size.
            image_size: (h, w) of the image before padding.

        Returns:
            {"sem_seg": C x height x width}.
        """
        height = input_per_image.get("height", image_size[0])
        width = input_per_image.get("width", image_size[1])
        if self.sem_seg_postprocess_before_inference:
            mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
            mask_cls = mask_cls.to(mask_pred)
            scores = self.semantic_scores(mask_cls, mask_pred)
        else:
            scores = sem_seg_postprocess(self.semantic_scores(mask_cls, mask_pred), image_size, height, width)
        return {"sem_seg": scores}

    def anomaly_scores(
        self,
        sem_seg: torch.Tensor,
        outlier_logits: Optional[torch.Tensor],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Dict[str, object]:
        """The configured anomaly scores of one image (higher = more anomalous).

        Args:
            sem_seg: C x height x width semantic scores L.
            outlier_logits: 2 x H_pad x W_pad DenseHybrid outlier logits, or None.
            image_size: (h, w) before padding; output_size: (height, width).

        Returns:
            {"ood_score": height x width} (the first configured score) and, with several,
            {"ood_scores": {name: height x width}}.
        """
        scores = {}
        for name in self.ood_score_names:
            if name == "densehybrid":
                logits = sem_seg_postprocess(outlier_logits, image_size, *output_size)
                score = densehybrid_score(sem_seg, logits)
                if self.ood_score_smoothing:
                    score = gaussian_smooth(score)
            else:
                score = compute_ood_score(name, sem_seg, smoothing=self.ood_score_smoothing)
            scores[name] = score
        result: Dict[str, object] = {"ood_score": scores[self.ood_score_names[0]]}
        if len(scores) > 1:
            result["ood_scores"] = scores
        return result

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image {"labels": T, "masks": T x H_pad x W_pad (zero-padded), "sem_seg": H_pad x W_pad
        (padded with the ignore value; present when the input has "sem_seg")}."""
        if "instances" not in batched_inputs[0]:
            raise ValueError("MaskFormer: training inputs need 'instances' (gt_classes, gt_masks) from the dataset mapper")
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            instances = x["instances"].to(self.device)
            gt_masks = instances.gt_masks
            if not isinstance(gt_masks, torch.Tensor):  # BitMasks
                gt_masks = gt_masks.tensor
            padded = gt_masks.new_zeros((gt_masks.shape[0], h_pad, w_pad))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            target = {"labels": instances.gt_classes, "masks": padded}
            if "sem_seg" in x:
                sem_seg = x["sem_seg"].to(self.device)
                target["sem_seg"] = F.pad(
                    sem_seg, (0, w_pad - sem_seg.shape[1], 0, h_pad - sem_seg.shape[0]), value=self.ignore_value
                )
            targets.append(target)
        return targets
