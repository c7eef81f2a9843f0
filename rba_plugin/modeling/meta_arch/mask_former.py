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

from ...config import check_config
from ...utils.finite import check_finite_outputs
from ..batching import forward_by_padded_size
from ..criterion import build_set_criterion
from ..freeze import freeze_except
from ..ood.scorer import AnomalyScorer

__all__ = ["MaskFormer", "semantic_scores", "rba_trainable_prefixes"]


_PREDICTOR = "sem_seg_head.predictor"
_OOD_PRED = f"{_PREDICTOR}.ood_pred"  # DenseHybrid's outlier head (RbA's key)


def rba_trainable_prefixes(cfg, has_outlier_head: bool) -> Optional[List[str]]:
    """Parameter-name prefixes RbA's MODEL.FREEZE_* keys leave trainable; None when nothing is
    frozen.

    Inside the transformer decoder RbA's precedence holds: EXCEPT_OBJECT_QUERIES (query features
    and embeddings) > EXCEPT_MLP_AND_OOD_PRED (class head, mask MLP, DenseHybrid outlier head) >
    EXCEPT_MLP (class head and mask-embedding MLP: RbA's fine-tuning) > the whole decoder.

    Raises:
        ValueError: when the keys freeze every part of the model.
    """
    m = cfg.MODEL
    decoder_keys = (
        m.FREEZE_TRANSFORMER_DECODER,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_OBJECT_QUERIES,
    )
    if not (m.FREEZE_BACKBONE or m.FREEZE_PIXEL_DECODER or any(decoder_keys)):
        return None
    prefixes = []
    if not m.FREEZE_BACKBONE:
        prefixes.append("backbone")
    if not m.FREEZE_PIXEL_DECODER:
        prefixes.append("sem_seg_head.pixel_decoder")
    if m.FREEZE_TRANSFORMER_DECODER_EXCEPT_OBJECT_QUERIES:
        prefixes += [f"{_PREDICTOR}.query_feat", f"{_PREDICTOR}.query_embed"]
    elif m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED:
        prefixes += [f"{_PREDICTOR}.class_embed", f"{_PREDICTOR}.mask_embed"]
        if has_outlier_head:
            prefixes.append(_OOD_PRED)
    elif m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP:
        prefixes += [f"{_PREDICTOR}.class_embed", f"{_PREDICTOR}.mask_embed"]
    elif not m.FREEZE_TRANSFORMER_DECODER:
        prefixes.append(_PREDICTOR)
        if has_outlier_head:
            prefixes.append(_OOD_PRED)
    if not prefixes:
        raise ValueError("MODEL.FREEZE_*: every part of the model is frozen; nothing would train")
    return prefixes


def semantic_scores(mask_cls: torch.Tensor, mask_pred: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """L_k = sum_q softmax(class logits)_q[k] * sigmoid(mask logits)_q, "no object" dropped.

    Args:
        mask_cls: Q x (C+1) class logits.
        mask_pred: Q x H x W mask logits; with ``inplace`` it is overwritten by its sigmoid
            (saves a Q x H x W buffer at full image size).

    Returns:
        C x H x W, each entry in [0, Q].
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid_() if inplace else mask_pred.sigmoid())


def _postprocess(result: torch.Tensor, image_size, height, width) -> torch.Tensor:
    """Detectron2's ``sem_seg_postprocess``, without its copy when crop and resize change nothing
    (a bilinear resize to the same size is exactly the identity); traced, it always runs."""
    if not torch.jit.is_tracing() and tuple(result.shape[-2:]) == tuple(image_size) == (height, width):
        return result
    return sem_seg_postprocess(result, image_size, height, width)


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Backbone -> MaskFormerHead (pixel decoder + transformer decoder) -> set criterion (training)
    or semantic scores (inference).

    Training input: per image {"image": 3 x H x W (0..255, cfg.INPUT.FORMAT), "instances":
    Instances(gt_classes, gt_masks), optionally "sem_seg": H x W long}. Output: weighted loss dict.
    Inference output: per image {"sem_seg": C x height x width, "ood_score": height x width} and,
    when several scores are configured, "ood_scores": {name: height x width}. The scores
    (``MODEL.OOD.SCORES``) read the named outputs ``class_scores`` (= "sem_seg", L) and, with
    the DenseHybrid head, ``outlier_logits``. Inputs of a batch that pad to different sizes are
    run as separate batches (:mod:`rba_plugin.modeling.batching`), so an image's outputs do not
    depend on its batch-mates.

    ``trainable_prefixes`` (RbA's MODEL.FREEZE_* keys) freezes every other parameter, with the
    frozen modules kept in eval mode (:func:`rba_plugin.modeling.freeze.freeze_except`).
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
        ignore_label: int = 255,
        scorer: AnomalyScorer,
        trainable_prefixes: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        # Backbones such as ResNet report 0; the config value pads to what the decoder needs.
        self.size_divisibility = size_divisibility if size_divisibility >= 0 else backbone.size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.ignore_label = ignore_label
        self.scorer = scorer
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.trainable_prefixes = None if trainable_prefixes is None else list(trainable_prefixes)
        if self.trainable_prefixes is not None:
            freeze_except(self, self.trainable_prefixes)  # the trainer logs what trains

    @classmethod
    def from_config(cls, cfg):
        check_config(cfg)  # declared rules of every key: enums, list lengths, TEST.AUG.ENABLED
        mf = cfg.MODEL.MASK_FORMER
        if mf.TEST.INSTANCE_ON or mf.TEST.PANOPTIC_ON or not mf.TEST.SEMANTIC_ON:
            raise ValueError(
                "MODEL.MASK_FORMER.TEST: only semantic inference is implemented "
                f"(SEMANTIC_ON={mf.TEST.SEMANTIC_ON}, INSTANCE_ON={mf.TEST.INSTANCE_ON}, "
                f"PANOPTIC_ON={mf.TEST.PANOPTIC_ON})"
            )
        if mf.MATCHER != "HungarianMatcher":
            raise ValueError(f"MODEL.MASK_FORMER.MATCHER: only 'HungarianMatcher' is implemented, got '{mf.MATCHER}'")
        # RbA's ablations that change the model; nothing here acts on them, so they are refused.
        for key, value in (("MODEL.MASK_FORMER.USE_POINT_REND", mf.USE_POINT_REND),
                           ("SOLVER.FORCE_REGION_PARTITION", cfg.SOLVER.FORCE_REGION_PARTITION)):
            if value:
                raise NotImplementedError(f"{key}=True (an RbA ablation) is not implemented; set it to False")
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        has_outlier_head = getattr(sem_seg_head.predictor, "ood_pred", None) is not None
        extra = ["outlier_logits"] if has_outlier_head else []
        criterion = build_set_criterion(
            cfg, sem_seg_head.num_classes, ["class_scores", "class_scores_and_no_object", "energy"] + extra
        )
        model_name = ("Mask2Former with the DenseHybrid outlier head" if has_outlier_head else
                      "Mask2Former without an outlier head (MODEL.MASK_FORMER.DENSE_HYBRID_LOSS adds DenseHybrid's)")
        scorer = AnomalyScorer(cfg, available_inputs=["class_scores"] + extra, default_names=["rba"], model_name=model_name)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "scorer": scorer,
            "trainable_prefixes": rba_trainable_prefixes(cfg, has_outlier_head),
        }

    @property
    def newly_initialized_prefixes(self) -> Tuple[str, ...]:
        # DenseHybrid's outlier head is added for fine-tuning, so the closed-set checkpoint in
        # MODEL.WEIGHTS cannot hold it (rba_plugin.engine.SafeCheckpointer lets it start untrained).
        return (f"{_OOD_PRED}.",) if getattr(self.sem_seg_head.predictor, "ood_pred", None) is not None else ()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_images(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the batch's images to a multiple of ``size_divisibility``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            # Images that pad to different sizes run as separate batches: the padding is not
            # masked, so a wider batch-mate would change an image's prediction (batching.py).
            return forward_by_padded_size(self._forward, batched_inputs, self.size_divisibility)
        return self._forward(batched_inputs)

    def _forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_images(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)
        if self.training:
            # NaN / inf predictions would reach scipy's Hungarian solver ("invalid numeric entries").
            check_finite_outputs(outputs, "Mask2Former")
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
            score_inputs = {"class_scores": result["sem_seg"]}
            if outlier_logits is not None:
                score_inputs["outlier_logits"] = sem_seg_postprocess(outlier_logits, image_size, *result["sem_seg"].shape[-2:])
            result.update(self.scorer(score_inputs))
            processed_results.append(result)
        return processed_results

    def semantic_scores(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """Q x (C+1), Q x H x W -> C x H x W semantic scores L (see :func:`semantic_scores`)."""
        return semantic_scores(mask_cls, mask_pred, inplace=inplace)

    def inference_single(
        self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, input_per_image: Dict, image_size: Tuple[int, int]
    ) -> Dict[str, torch.Tensor]:
        """Assemble one image's outputs; anomaly scores computed from ``sem_seg`` belong here.

        Args:
            mask_cls: Q x (C+1) class logits.
            mask_pred: Q x H_pad x W_pad mask logits, upsampled to the padded input (a temporary:
                it is overwritten).
            input_per_image: the input dict; "height"/"width" (default: the input size) set the
                output size.
            image_size: (h, w) of the image before padding.

        Returns:
            {"sem_seg": C x height x width}.
        """
        height = input_per_image.get("height", image_size[0])
        width = input_per_image.get("width", image_size[1])
        # mask_pred is the caller's upsampled temporary: its sigmoid may overwrite it.
        if self.sem_seg_postprocess_before_inference:
            mask_pred = _postprocess(mask_pred, image_size, height, width)
            mask_cls = mask_cls.to(mask_pred)
            scores = self.semantic_scores(mask_cls, mask_pred, inplace=True)
        else:
            scores = _postprocess(self.semantic_scores(mask_cls, mask_pred, inplace=True), image_size, height, width)
        return {"sem_seg": scores}

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
                    sem_seg, (0, w_pad - sem_seg.shape[1], 0, h_pad - sem_seg.shape[0]), value=self.ignore_label
                )
            targets.append(target)
        return targets
