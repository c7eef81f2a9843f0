"""``PixelOODSegmentor``: a per-pixel segmentation network plus a per-pixel OOD method."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import Tensor, nn

from ...config import check_config, declare_key, register_config_group
from ...utils.finite import check_finite_outputs
from ..batching import forward_by_padded_size
from ..freeze import freeze_except
from ..loss_terms import LossTerm, PixelTargets, build_loss_terms, check_term_inputs
from ..ood.scorer import AnomalyScorer
from ..official_keys import OfficialKeyLayout
from .heads import check_pixel_head
from .method_base import ExtraImages, PixelOODMethod, build_pixel_ood_method

__all__ = ["PixelOODSegmentor", "add_pixel_ood_config"]



@register_config_group
def add_pixel_ood_config(cfg: CfgNode) -> None:
    """The per-pixel segmentor: which method, and what it pads and holds out."""
    cfg.MODEL.PIXEL_OOD = CfgNode()
    # A registered method (PIXEL_OOD_METHOD_REGISTRY): "ClosedSet", "RPL", "PEBAL", "RAML", "VCA".
    cfg.MODEL.PIXEL_OOD.METHOD = "ClosedSet"
    # Extra parameter-name prefixes to keep trainable on top of the method's own (rarely needed).
    cfg.MODEL.PIXEL_OOD.EXTRA_TRAINABLE = []
    # Padding multiple of the batched images; -1 = the backbone's own (32 when it has none).
    cfg.MODEL.PIXEL_OOD.SIZE_DIVISIBILITY = -1
    # Train ids treated as void in training (RAML's incremental settings hold classes out:
    # "16+1" = [13], "16+3" = [13, 14, 15]); ids are not compacted.
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = []
    declare_key("MODEL.PIXEL_OOD.SIZE_DIVISIBILITY", check=lambda v, cfg: (
        None if v == -1 or v >= 1 else "must be -1 (the backbone's own) or a positive multiple"))
    declare_key("MODEL.PIXEL_OOD.HELD_OUT_CLASSES", check=lambda v, cfg: (
        None if all(0 <= c < cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES for c in v)
        else f"every class must be a train id in 0..{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES - 1}"))


@META_ARCH_REGISTRY.register()
class PixelOODSegmentor(nn.Module):
    """Per-pixel open-world segmentor: backbone -> head (``decode``) -> method -> loss terms
    (training) or anomaly scores (inference).

    Training: ``model(batched_inputs) -> dict of weighted losses``; each input dict holds
    ``"image"`` (3 x H x W, uint8, cfg.INPUT.FORMAT), ``"sem_seg"`` (H x W long: train ids, 255
    void, ``INPUT.OOD_LABEL`` on pasted outliers) and the method's ``extra_inputs``. Inference:
    one dict per image with ``"sem_seg"`` (C x H x W logits at the original size), ``"ood_score"``
    (H x W, higher = more anomalous; ``MODEL.OOD.SCORES`` or the method's default), with several
    scores ``"ood_scores"``, plus method-specific maps (e.g. VCA's ``"unknown_mask"``). Inputs of
    a batch that pad to different sizes are run as separate batches, so an image's outputs do not
    depend on its batch-mates (:mod:`rba_plugin.modeling.batching`).

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
        loss_terms: Sequence[LossTerm],
        scorer: AnomalyScorer,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        ignore_label: int = 255,
        ood_label: int = 254,
        extra_trainable: Sequence[str] = (),
        held_out_classes: Sequence[int] = (),
    ):
        super().__init__()
        check_pixel_head(sem_seg_head)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.ood_method = ood_method
        self.loss_terms = nn.ModuleList(loss_terms)
        self.scorer = scorer
        self.size_divisibility = size_divisibility
        self.ignore_label = ignore_label
        self.ood_label = ood_label
        self.held_out_classes = tuple(int(c) for c in held_out_classes)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        prefixes = ood_method.trainable_prefixes()
        self.trainable_prefixes = None if prefixes is None else list(prefixes) + list(extra_trainable)
        if self.trainable_prefixes is not None:
            # The method's own flag selects its training outputs (PEBAL's official abstention row
            # lives in the head, leaving the method without parameters): it follows train().
            freeze_except(self, self.trainable_prefixes, follow_mode=("ood_method",))  # the trainer logs it

    @classmethod
    def from_config(cls, cfg):
        check_config(cfg)  # declared rules of every key: enums, list lengths, TEST.AUG.ENABLED
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        check_pixel_head(sem_seg_head)
        method = build_pixel_ood_method(cfg, sem_seg_head)
        size_div = cfg.MODEL.PIXEL_OOD.SIZE_DIVISIBILITY
        if size_div < 0:
            size_div = backbone.size_divisibility or 32
        name = type(method).__name__
        terms = build_loss_terms(cfg, method.loss_term_names(cfg) + list(cfg.MODEL.LOSS_TERMS))
        check_term_inputs(terms, method.training_outputs, f"the per-pixel method {name}")
        scorer = AnomalyScorer(
            cfg, available_inputs=method.score_inputs, default_names=method.default_scores,
            default_smoothing_kernel=method.default_smoothing_kernel, model_name=f"the per-pixel method {name}",
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "ood_method": method,
            "loss_terms": terms,
            "scorer": scorer,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": size_div,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "extra_trainable": cfg.MODEL.PIXEL_OOD.EXTRA_TRAINABLE,
            "held_out_classes": cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def extra_training_inputs(self) -> Tuple[str, ...]:
        """Keys of extra images the training mapper gives every input (the method asks for them)."""
        return tuple(self.ood_method.extra_inputs)

    def lr_factors(self) -> Dict[str, float]:
        """The method's learning-rate factors by parameter-name prefix."""
        return dict(self.ood_method.lr_factors())

    def data_init_batches(self) -> int:
        """Training batches the method asks to see before the first step (0: none)."""
        return self.ood_method.data_init_batches()

    @torch.no_grad()
    def initialize_from_data(self, batched_inputs: Iterable[List[dict]]) -> None:
        """Lets the method initialise itself from training batches
        (:meth:`PixelOODMethod.initialize_from_data`): it receives them as (``head.decode`` of
        the backbone's features, the batch's targets), computed in eval mode without gradients
        (BatchNorm statistics untouched), and may pass over them more than once (each pass runs
        the network again). Called by :class:`rba_plugin.engine.Trainer` before the first step."""
        batches = list(batched_inputs)
        segmentor = self

        class _Encoded:
            def __len__(self) -> int:
                return len(batches)

            def __iter__(self):
                for batch in batches:
                    features = segmentor.backbone(segmentor.preprocess_image(batch).tensor)
                    yield segmentor.sem_seg_head.decode(features), segmentor.targets(batch)

        was_training = self.training
        self.eval()
        try:
            self.ood_method.initialize_from_data(self.sem_seg_head, _Encoded())
        finally:
            self.train(was_training)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Lets a method initialise its new modules from a base checkpoint (RPL's ASPP copy).
        self.ood_method.fill_missing_state(state_dict, prefix + "ood_method.", prefix + "sem_seg_head.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def official_key_layout(self) -> OfficialKeyLayout:
        """Where the official checkpoints of this model's networks keep each of its keys (the
        parts' ``official_key_prefix`` / ``official_key_wrappers``)."""
        return OfficialKeyLayout.of({"backbone": self.backbone, "sem_seg_head": self.sem_seg_head,
                                     "ood_method": self.ood_method})

    def adapt_checkpoint(
        self, state_dict: Dict[str, Tensor], fill_new_modules: bool = True
    ) -> Tuple[Dict[str, Tensor], List[str]]:
        """A checkpoint's state dict in this model's layout, before keys and shapes are compared
        (called by :class:`rba_plugin.engine.SafeCheckpointer` for ``MODEL.WEIGHTS``).

        Official checkpoints (PEBAL's ``branch1.*``, NVIDIA's ``module.*``, RAML's
        ``classifier.*``, ...) are renamed by :meth:`official_key_layout`; with
        ``fill_new_modules`` (initialising a model for training) the method may then add what a
        base checkpoint lacks (``PixelOODMethod.fill_missing_state``: RPL's residual ASPP copied
        from the head's, PEBAL's abstention row).

        Returns:
            (the state dict, notes on what changed, for the log).

        Raises:
            ValueError: if two checkpoint keys load into one key of the model.
        """
        state, notes = self.official_key_layout().apply(state_dict, self.state_dict().keys())
        if fill_new_modules:
            notes += self.ood_method.fill_missing_state(state, "ood_method.", "sem_seg_head.") or []
        return state, notes

    def preprocess_image(self, batched_inputs: List[dict], key: str = "image") -> ImageList:
        """Normalise and pad the images under ``key`` to a multiple of ``size_divisibility``."""
        images = [(x[key].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def _pad_labels(self, batched_inputs: List[dict], key: str) -> Tensor:
        labels = [x[key].to(self.device) for x in batched_inputs]
        return ImageList.from_tensors(labels, self.size_divisibility, pad_value=self.ignore_label).tensor

    def targets(self, batched_inputs: List[dict]) -> PixelTargets:
        """Padded labels (held-out classes void) and the labels of the method's extra images."""
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("PixelOODSegmentor in training mode needs 'sem_seg' in every input dict")
        labels = self._pad_labels(batched_inputs, "sem_seg")
        for cls in self.held_out_classes:  # novel classes of the incremental settings
            labels = labels.masked_fill(labels == cls, self.ignore_label)
        extra = {}
        for key in self._present_extra_inputs(batched_inputs):
            label_key = key.replace("_image", "_sem_seg")
            extra[label_key] = self._pad_labels(batched_inputs, label_key)
        return PixelTargets(labels, ood_label=self.ood_label, ignore_label=self.ignore_label, extra=extra)

    def _present_extra_inputs(self, batched_inputs: List[dict]) -> List[str]:
        """The method's extra inputs the batch carries (all inputs or none: a partial batch is an
        error); a method works without them (e.g. CoroCL then contrasts the batch's own pixels)."""
        present = []
        for key in self.extra_training_inputs:
            count = sum(key in x for x in batched_inputs)
            if 0 < count < len(batched_inputs):
                raise ValueError(
                    f"'{key}' is in {count} of the {len(batched_inputs)} training inputs of the batch; "
                    f"{type(self.ood_method).__name__} needs it in all of them or none"
                )
            if count:
                present.append(key)
        return present

    def _extra_images(self, batched_inputs: List[dict]) -> Dict[str, ExtraImages]:
        extras = {}
        for key in self._present_extra_inputs(batched_inputs):
            images = self.preprocess_image(batched_inputs, key)
            extras[key] = ExtraImages(images, self.backbone(images.tensor))
        return extras

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            # Images that pad to different sizes run as separate batches: convolutions and the
            # ASPP's image pooling see the padding, so a larger batch-mate would change an image's
            # prediction (rba_plugin.modeling.batching).
            return forward_by_padded_size(self._forward, batched_inputs, self.size_divisibility)
        return self._forward(batched_inputs)

    def _forward(self, batched_inputs: List[dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        dec_in = self.sem_seg_head.decode(features)
        if self.training:
            targets = self.targets(batched_inputs)
            extras = self._extra_images(batched_inputs)
            outputs = self.ood_method(self.sem_seg_head, features, dec_in, images, targets=targets, extras=extras)
            check_finite_outputs(outputs, f"the per-pixel method {type(self.ood_method).__name__}")
            losses = {}
            for term in self.loss_terms:
                losses.update({k: v * term.weights.get(k, 1.0) for k, v in term(outputs, targets).items()})
            return losses
        outputs = self.ood_method(self.sem_seg_head, features, dec_in, images)
        return self.postprocess(outputs, images, batched_inputs)

    def postprocess(self, outputs: Dict[str, Tensor], images: ImageList, batched_inputs: List[dict]) -> List[dict]:
        """Crop the padding and resize every map to each input's ``height`` x ``width`` (its
        original size), then compute the anomaly scores from the named score inputs."""
        score_names = self.ood_method.score_inputs
        results = []
        for i, (inp, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            size = (inp.get("height", image_size[0]), inp.get("width", image_size[1]))
            resized: Dict[str, Tensor] = {}
            by_tensor: Dict[int, Tensor] = {}  # outputs that are the same tensor are resized once
            for name, value in outputs.items():
                if id(value) not in by_tensor:
                    if value.dtype == torch.bool:
                        by_tensor[id(value)] = sem_seg_postprocess(value[i][None].float(), image_size, *size)[0] > 0.5
                    else:
                        map_ = value[i] if value.dim() == 4 else value[i][None]
                        by_tensor[id(value)] = sem_seg_postprocess(map_, image_size, *size)
                resized[name] = by_tensor[id(value)]
            out = {"sem_seg": resized["sem_seg"]}
            out.update(self.scorer({name: resized[name] for name in score_names}))
            out.update({k: v for k, v in resized.items() if k != "sem_seg" and k not in score_names})
            results.append(out)
        return results
