"""The plugin's configuration: Detectron2's defaults plus every key rba_plugin reads.

Key names follow Mask2Former (``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``, ``MODEL.SWIN.*``)
and RbA, so the official config files merge unchanged. Each ``add_*_config`` adds one group; a
component with keys of its own (a per-pixel method, a loss term) adds its group from its own
module with :func:`register_config_group`, and :func:`get_cfg` applies every registered group.
:func:`load_config` is the one way every tool reads a config file plus ``KEY VALUE`` overrides.

Values are validated declaratively, next to the keys: :func:`declare_key` states what a key
accepts (its choices, the lengths of a list, a check of its own), and :func:`check_config`, which
every meta-architecture, the OOD evaluator and :func:`load_config` call, refuses a config with an
error naming each bad key and value. Keys merged only so that other code bases' configs load
(RbA's dumps) are declared with :func:`accept_for_compatibility`; setting one away from its
default logs a warning, since nothing acts on it. ``tests/test_config_keys.py`` checks that every
key of the plugin is read somewhere or declared so.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _detectron2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = [
    "get_cfg",
    "load_config",
    "register_config_group",
    "declare_key",
    "accept_for_compatibility",
    "check_config",
    "key_rules",
    "compatibility_keys",
    "set_anomaly_scores",
    "add_maskformer2_config",
    "add_rba_config",
    "add_anomaly_data_config",
    "add_ood_config",
    "add_checkpoint_config",
]

logger = logging.getLogger(__name__)

# Config groups of components, added by get_cfg() after the plugin's own groups.
_CONFIG_GROUPS: List[Callable[[CfgNode], None]] = []


@dataclass(frozen=True)
class KeyRule:
    """What a config value may be (see :func:`declare_key`)."""

    choices: Optional[Tuple[Any, ...]] = None
    lengths: Optional[Tuple[int, ...]] = None
    meaning: str = ""
    check: Optional[Callable[[Any, CfgNode], Optional[str]]] = None
    ignore_case: bool = False

    def problem(self, value: Any, cfg: CfgNode) -> Optional[str]:
        """Why ``value`` is refused, or None."""
        if self.choices is not None:
            accepted = [str(c).upper() for c in self.choices] if self.ignore_case else list(self.choices)
            if (str(value).upper() if self.ignore_case else value) not in accepted:
                return f"must be one of {', '.join(repr(c) for c in self.choices)}"
        if self.lengths is not None:
            if not isinstance(value, (list, tuple)):
                return f"must be a list of {' or '.join(map(str, self.lengths))} values"
            if len(value) not in self.lengths:
                counts = " or ".join(map(str, self.lengths))
                return f"must hold {counts} values{f' ({self.meaning})' if self.meaning else ''}, got {len(value)}"
        return self.check(value, cfg) if self.check is not None else None


_KEY_RULES: Dict[str, KeyRule] = {}
_COMPATIBILITY_KEYS: Dict[str, str] = {}


def declare_key(
    key: str,
    *,
    choices: Optional[Sequence[Any]] = None,
    lengths: Optional[Sequence[int]] = None,
    meaning: str = "",
    check: Optional[Callable[[Any, CfgNode], Optional[str]]] = None,
    ignore_case: bool = False,
) -> None:
    """Declares what the config key ``key`` accepts; :func:`check_config` enforces it.

    Args:
        choices: the accepted values of an enum-valued key (compared case-insensitively with
            ``ignore_case``).
        lengths: the accepted lengths of a list-valued key; ``meaning`` says what its items are.
        check: ``check(value, cfg) -> None or the problem`` for anything else (ranges, keys that
            depend on each other).

    Declaring a key again replaces its rule (group functions run in every :func:`get_cfg`).
    """
    _KEY_RULES[key] = KeyRule(tuple(choices) if choices is not None else None,
                              tuple(lengths) if lengths is not None else None, meaning, check, ignore_case)


def accept_for_compatibility(*keys: str, reason: str) -> None:
    """Declares ``keys`` as merged for other code bases' configs but not acted on (``reason``);
    a key ending with "." stands for its whole group."""
    for key in keys:
        _COMPATIBILITY_KEYS[key] = reason


def key_rules() -> Dict[str, KeyRule]:
    """Every declared rule by key (those of every registered group: they declare when they run)."""
    get_cfg()
    return dict(_KEY_RULES)


def compatibility_keys() -> Dict[str, str]:
    """Keys (or groups, ending with ".") accepted for compatibility, with the reason."""
    get_cfg()
    return dict(_COMPATIBILITY_KEYS)


def _lookup(cfg: CfgNode, key: str) -> Tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _flat(cfg: CfgNode, prefix: str = "") -> Dict[str, Any]:
    items: Dict[str, Any] = {}
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            items.update(_flat(value, f"{prefix}{name}."))
        else:
            items[f"{prefix}{name}"] = value
    return items


def check_config(cfg: CfgNode, prefix: str = "") -> None:
    """Checks every declared key under ``prefix`` (all when empty) and logs a warning for each key
    accepted only for compatibility that ``cfg`` sets away from its default.

    Raises:
        ValueError: listing every refused key as ``KEY = value: what it must be``.
    """
    defaults = _flat(get_cfg())  # also runs every group, so every rule is declared
    problems = []
    for key, rule in sorted(_KEY_RULES.items()):
        if not key.startswith(prefix):
            continue
        present, value = _lookup(cfg, key)
        if present:
            problem = rule.problem(value, cfg)
            if problem:
                problems.append(f"{key} = {value!r}: {problem}")
    if problems:
        raise ValueError("invalid config value" + ("s" if len(problems) > 1 else "") + ":\n  " + "\n  ".join(problems))
    def inert_key(key: str) -> bool:
        return any(key == c or (c.endswith(".") and key.startswith(c)) for c in _COMPATIBILITY_KEYS)

    inert = [f"{key} = {value!r}" for key, value in _flat(cfg).items()
             if key.startswith(prefix) and inert_key(key) and key in defaults and value != defaults[key]]
    if inert:
        logger.warning("Config keys accepted for compatibility are not acted on: %s", ", ".join(inert))


def _positive_numbers(value: Any, cfg: CfgNode) -> Optional[str]:
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 for v in value):
        return "every value must be a positive finite number"
    return None


def _non_negative_ints(value: Any, cfg: CfgNode) -> Optional[str]:
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
        return "every value must be a non-negative integer"
    return None


def _non_empty(value: Any, cfg: CfgNode) -> Optional[str]:
    return None if len(value) else "must name at least one"


def _same_length_as(other: str, meaning: str) -> Callable[[Any, CfgNode], Optional[str]]:
    def check(value: Any, cfg: CfgNode) -> Optional[str]:
        _, reference = _lookup(cfg, other)
        if len(value) != len(reference):
            return f"must hold as many values as {other} ({len(reference)}, {meaning}), got {len(value)}"
        return None

    return check


def _min_size_train(value: Any, cfg: CfgNode) -> Optional[str]:
    sizes = list(value) if isinstance(value, (list, tuple)) else [value]
    if not sizes:
        return "must hold at least one size"
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) != 2:
        return f"must hold 2 values (min, max) with INPUT.MIN_SIZE_TRAIN_SAMPLING 'range', got {len(sizes)}"
    return None


def _declare_detectron2_keys() -> None:
    """Rules of the Detectron2 keys the plugin reads."""
    declare_key("INPUT.FORMAT", choices=("RGB", "BGR"))
    declare_key("INPUT.RANDOM_FLIP", choices=("none", "horizontal", "vertical"))
    declare_key("INPUT.MIN_SIZE_TRAIN_SAMPLING", choices=("choice", "range"))
    declare_key("INPUT.MIN_SIZE_TRAIN", check=_min_size_train)
    declare_key("INPUT.CROP.TYPE", choices=("relative_range", "relative", "absolute", "absolute_range"))
    declare_key("INPUT.CROP.SIZE", lengths=(2,), meaning="height, width", check=_positive_numbers)
    declare_key("MODEL.PIXEL_MEAN", lengths=(3,), meaning="one per colour channel")
    declare_key("MODEL.PIXEL_STD", lengths=(3,), meaning="one per colour channel", check=_positive_numbers)
    declare_key("MODEL.RESNETS.RES5_MULTI_GRID", lengths=(3,), meaning="dilation factors of res5's three blocks")
    declare_key("MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", lengths=(3,), meaning="the ASPP's three atrous rates")
    declare_key("MODEL.SEM_SEG_HEAD.LOSS_TYPE", choices=("cross_entropy", "hard_pixel_mining"))
    declare_key("SOLVER.LR_SCHEDULER_NAME",
                choices=("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR", "WarmupPolyLR"))
    declare_key("SOLVER.WARMUP_METHOD", choices=("linear", "constant"))
    declare_key("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", choices=("value", "norm", "full_model"))
    # Test-time augmentation is not implemented for either branch: refused in every mode, since
    # evaluation would otherwise silently run without it.
    declare_key("TEST.AUG.ENABLED", check=lambda v, cfg: (
        "test-time augmentation is not implemented (either branch, any mode); set it to False" if v else None))


def register_config_group(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Decorator: ``fn(cfg)`` adds a component's config group in every :func:`get_cfg`. The
    group's keys must not exist yet (two components cannot own one key)."""
    _CONFIG_GROUPS.append(fn)
    return fn


def add_maskformer2_config(cfg: CfgNode) -> None:
    """Mask2Former's model, input, solver and test keys (the closed-set model).

    Names and defaults are Mask2Former's (``mask2former/config.py``), so its config files and the
    configs dumped with its checkpoints merge unchanged.
    """
    # --- data ---
    # Which training mapper ``tools/train_net.py`` builds (see rba_plugin.engine.trainer).
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # SSD-style photometric distortion (brightness, contrast, saturation, hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Probability of the INPUT.RANDOM_FLIP flip in training (Detectron2's RandomFlip(prob=...);
    # Mask2Former and RbA 0.5, PEBAL and RPL 0.8).
    cfg.INPUT.RANDOM_FLIP_PROB = 0.5
    # Random crops are retried until no single category covers more than this fraction
    # (also defined by add_deeplab_config; set here so this function stands alone).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad image and label to this size in the mapper (-1: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jitter keys of the COCO mappers (read by no mapper of this plugin).
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    accept_for_compatibility("INPUT.IMAGE_SIZE", "INPUT.MIN_SCALE", "INPUT.MAX_SCALE",
                             reason="large-scale jitter of Mask2Former's COCO mappers")

    # --- solver ---
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeds, ...)
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW", "ADAM" or "SGD"
    declare_key("SOLVER.OPTIMIZER", choices=("SGD", "ADAM", "ADAMW"), ignore_case=True)
    # (ours) epsilon of ADAM / ADAMW: torch's 1e-8; DenseHybrid's official fine-tuning uses 1e-7.
    cfg.SOLVER.ADAM_EPS = 1e-8
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # LR multiplier of backbone parameters
    cfg.SOLVER.POLY_LR_POWER = 0.9  # WarmupPolyLR (also in add_deeplab_config)
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0

    # --- model: losses ---
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True  # losses on every decoder layer's prediction
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # CE weight of the "no object" class
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Point-sampled mask losses: points per mask, oversampling and the share of uncertain points.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # --- model: transformer decoder ---
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0  # MaskFormer's (v1) transformer encoder; unused here
    accept_for_compatibility("MODEL.MASK_FORMER.ENC_LAYERS", reason="MaskFormer (v1)'s transformer encoder")
    # Number of predictions: DEC_LAYERS - 1 decoder layers plus the query-only prediction.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # What the decoder reads: "multi_scale_pixel_decoder" for Mask2Former.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Backbones like ResNet report size_divisibility 0; images are padded to this instead.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # --- model: inference ---
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    # Instance / panoptic inference are Mask2Former features this plugin does not implement;
    # the MaskFormer meta-architecture refuses a config that turns them on.
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    accept_for_compatibility("MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
                             reason="instance / panoptic inference (refused)")
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # --- model: pixel decoder ---
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Levels the deformable encoder attends over (RbA's models: ["res5"]); the transformer
    # decoder cross-attends to the same number of levels.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    declare_key("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", check=_non_empty)
    # Mask2Former defines it, but its pixel decoder takes MODEL.MASK_FORMER.NHEADS (so does ours).
    accept_for_compatibility("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS",
                             reason="Mask2Former's pixel decoder uses MODEL.MASK_FORMER.NHEADS")

    # --- attention kernels ---
    # Softmax attention (Swin's window attention, the decoder's masked cross-attention and
    # self-attention) through PyTorch's fused scaled_dot_product_attention; False runs the
    # reference implementations' separate matmul / add / softmax steps. Same parameters and
    # checkpoint keys, same outputs to float rounding (tools/benchmark.py model measures both).
    cfg.MODEL.FUSED_ATTENTION = True

    # --- Swin backbone (D2SwinTransformer) ---
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    declare_key("MODEL.SWIN.NUM_HEADS", check=_same_length_as("MODEL.SWIN.DEPTHS", "one per stage"))
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False
    # Swin's Linear layers by oneDNN where no gradient is asked of them on the CPU (inference,
    # frozen backbone): MKL's sgemm, which F.linear calls, runs at less than half oneDNN's rate on
    # CPUs it does not tune for (AMD); same outputs to float rounding (rba_plugin/layers/linear.py).
    cfg.MODEL.SWIN.ONEDNN_LINEAR = True


def add_rba_config(cfg: CfgNode) -> None:
    """The keys RbA (NazirNayal8/RbA, ``mask2former/config.py``) added, with RbA's defaults,
    plus the plugin's anomaly-score keys.

    They exist so RbA's configs and released-model dumps merge and mean the same thing here.
    Acted on: the outlier supervision group (OUTLIER_SUPERVISION, OUTLIER_LOSS_TARGET with
    SCORE_NORM, OUTLIER_LOSS_FUNC, INLIER/OUTLIER thresholds, OUTLIER_WEIGHT), PEBAL inside
    Mask2Former (GAMBLER_*, PEBAL_*, SMOOTHNESS_*, SPARSITY_*), DenseHybrid (DENSE_HYBRID_*), the
    MODEL.FREEZE_* group (rba_plugin/modeling/meta_arch/mask_former.py) and OOD_SCORES /
    OOD_SCORE_SMOOTHING (aliases of MODEL.OOD.SCORES / SMOOTHING_KERNEL).
    Keys marked "(ours)" are the plugin's (forms and options of those losses).
    Refused when set (not implemented): MATCHER = "FixedMatcher", USE_POINT_REND and
    SOLVER.FORCE_REGION_PARTITION. Accepted but not acted on: PEBAL_REWARD (used by RbA's code
    only for empty inputs, which never occur), the open-panoptic keys, REPEAT_INSTANCE_MASKS, the
    WANDB keys (dead in RbA too) and the MVIT / VIT backbone groups. WIDE_RESNET is read by the
    WideResNet-38 backbone of the per-pixel branch (rba_plugin/modeling/backbone/wider_resnet.py).
    """
    # --- outlier supervision (RbA's loss; loss terms of rba_plugin/modeling/loss_terms/) ---
    cfg.MODEL.MASK_FORMER.OUTLIER_SUPERVISION = False  # adds the "outlier" loss
    # Score the loss is applied to: none / nls / energy / softmax_entropy / sum_entropy.
    cfg.MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET = "none"
    declare_key("MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET",
                choices=("none", "nls", "energy", "softmax_entropy", "sum_entropy"))
    # Per-class squashing of L before "nls": none / sigmoid / tanh (tanh + nls = RbA).
    cfg.MODEL.MASK_FORMER.SCORE_NORM = "none"
    declare_key("MODEL.MASK_FORMER.SCORE_NORM", choices=("none", "sigmoid", "tanh"))
    # squared_hinge / binary_cross_entropy / mse / l1 / kl (RbA first sets "max", then this).
    cfg.MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC = "squared_hinge"
    declare_key("MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC",
                choices=("squared_hinge", "binary_cross_entropy", "mse", "l1", "kl", "max"))
    cfg.MODEL.MASK_FORMER.INLIER_UPPER_THRESHOLD = -1.0  # gamma_in of the hinge
    cfg.MODEL.MASK_FORMER.OUTLIER_LOWER_THRESHOLD = -0.1  # gamma_out of the hinge
    cfg.MODEL.MASK_FORMER.OUTLIER_WEIGHT = 1.0
    # (ours) "official": the outlier losses as RbA's criterion.py computes them (batch means, 0.5 on
    # batches with outlier pixels, Table 4's losses as coded); "paper": Eqs. 6, 8-11 (outlier-pixel
    # means, no 0.5). README: "Losses: official code and papers".
    cfg.MODEL.MASK_FORMER.OUTLIER_LOSS_FORM = "official"
    # --- anomaly scores at inference: aliases of MODEL.OOD.SCORES and of MODEL.OOD.SMOOTHING_KERNEL
    # 7 (rba_plugin.modeling.ood.resolve_score_config); empty / False = not set here.
    cfg.MODEL.MASK_FORMER.OOD_SCORES = []
    cfg.MODEL.MASK_FORMER.OOD_SCORE_SMOOTHING = False
    # (ours) PEBAL inside Mask2Former, PEBAL_FORM "paper" only (RbA paper appendix C.3): the energy
    # hinge's margins and weight beta (officially the hinge is the outlier loss on the energy).
    cfg.MODEL.MASK_FORMER.PEBAL_M_IN = -3.5
    cfg.MODEL.MASK_FORMER.PEBAL_M_OUT = -2.5
    cfg.MODEL.MASK_FORMER.PEBAL_ENERGY_WEIGHT = 0.1
    # (ours) DenseHybrid inside Mask2Former: beta1 of the outlier head's CE (DENSE_HYBRID_BETA is
    # beta2); None = 10 x DENSE_HYBRID_BETA, as RbA's code; the paper's appendix states 0.3.
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_HEAD_WEIGHT = None
    # (ours) kernel of the outlier head's conv: 1 (RbA's code, BatchNorm momentum 0.01) or 3 (paper).
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_HEAD_KERNEL = 1
    # (ours) "official" (RbA's loss_densehybrid) or "paper" (appendix C.3: +sg, head CE on non-void).
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_FORM = "official"
    # (ours) DenseHybrid inside Mask2Former: False = RbA's code (its loss replaces Mask2Former's
    # class / mask / dice losses); True keeps those beside it (docs/loss_fidelity.md).
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_KEEP_MASK_LOSSES = False
    # (ours) PEBAL inside Mask2Former: "official" (RbA's loss_gambler / smoothness / sparsity, the
    # hinge through the outlier loss on the energy) or "paper" (appendix C.3, with PEBAL_M_IN /
    # PEBAL_M_OUT / PEBAL_ENERGY_WEIGHT).
    cfg.MODEL.MASK_FORMER.PEBAL_FORM = "official"
    # --- PEBAL / DenseHybrid variants inside Mask2Former (they replace the class/mask losses) ---
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_LOSS = False
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_WEIGHT = 3e-6
    # The map the official smoothness loss differentiates: "energy", "nls" or "softmax_entropy"
    # (checked when SMOOTHNESS_LOSS builds it: RbA's released configs hold "none" with the loss off).
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_SCORE = "energy"
    cfg.MODEL.MASK_FORMER.SPARSITY_LOSS = False
    cfg.MODEL.MASK_FORMER.SPARSITY_WEIGHT = 5e-4
    cfg.MODEL.MASK_FORMER.GAMBLER_LOSS = False
    cfg.MODEL.MASK_FORMER.GAMBLER_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.PEBAL_REWARD = 4.5
    accept_for_compatibility("MODEL.MASK_FORMER.PEBAL_REWARD", reason="used by PEBAL's code only for empty inputs")
    cfg.MODEL.MASK_FORMER.PEBAL_OOD_REG = 0.1
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_LOSS = False
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DENSE_HYBRID_BETA = 0.03
    # "HungarianMatcher" (the only one implemented) or RbA's "FixedMatcher" (not acted on).
    cfg.MODEL.MASK_FORMER.MATCHER = "HungarianMatcher"
    # Ablations (not acted on): per-pixel PointRend head; softmax over queries of the masks.
    cfg.MODEL.MASK_FORMER.USE_POINT_REND = False
    cfg.SOLVER.FORCE_REGION_PARTITION = False
    # --- open-panoptic setting (EOPSN; not acted on) ---
    cfg.MODEL.MASK_FORMER.UNLABELED_REGION = True
    cfg.MODEL.MASK_FORMER.SEM_SEG_UNLABELED_REGION = True
    cfg.MODEL.MASK_FORMER.OPEN_PANOPTIC = True
    cfg.DATASETS.UNSEEN_LABEL_SET = "datasets/unknown/unknown_K20.txt"
    accept_for_compatibility("MODEL.MASK_FORMER.UNLABELED_REGION", "MODEL.MASK_FORMER.SEM_SEG_UNLABELED_REGION",
                             "MODEL.MASK_FORMER.OPEN_PANOPTIC", "DATASETS.UNSEEN_LABEL_SET",
                             reason="RbA's open-panoptic setting (EOPSN)")
    # --- data (not acted on) ---
    cfg.INPUT.REPEAT_INSTANCE_MASKS = 1
    accept_for_compatibility("INPUT.REPEAT_INSTANCE_MASKS", reason="RbA's instance mappers")
    # --- freezing for outlier fine-tuning (rba_plugin/engine/finetune.py). RbA's precedence inside
    # the predictor: EXCEPT_OBJECT_QUERIES > EXCEPT_MLP_AND_OOD_PRED > EXCEPT_MLP > whole decoder.
    cfg.MODEL.FREEZE_BACKBONE = False
    cfg.MODEL.FREEZE_PIXEL_DECODER = False
    cfg.MODEL.FREEZE_TRANSFORMER_DECODER = False
    cfg.MODEL.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP = False
    cfg.MODEL.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED = False
    cfg.MODEL.FREEZE_TRANSFORMER_DECODER_EXCEPT_OBJECT_QUERIES = False
    # --- experiment logging (never read, in RbA either) ---
    cfg.SOLVER.USE_WANDB = False
    cfg.SOLVER.WANDB_PROJECT = "mask2former"
    cfg.SOLVER.WANDB_NAME = ""
    accept_for_compatibility("SOLVER.USE_WANDB", "SOLVER.WANDB_PROJECT", "SOLVER.WANDB_NAME",
                             reason="RbA's experiment logging (never read, in RbA either)")
    # --- RbA's other backbones (MVIT / VIT: keys only; WIDE_RESNET: the per-pixel WideResNet-38) ---
    cfg.MODEL.MVIT = CN()
    cfg.MODEL.MVIT.ACT_LAYER = "GELU"
    cfg.MODEL.MVIT.ADAPTIVE_KV_STRIDE = 4
    cfg.MODEL.MVIT.ADAPTIVE_WINDOW_SIZE = 56
    cfg.MODEL.MVIT.DEPTH = 24
    cfg.MODEL.MVIT.DROP_PATH_RATE = 0.4
    cfg.MODEL.MVIT.EMBED_DIM = 96
    cfg.MODEL.MVIT.IMG_SIZE = 224
    cfg.MODEL.MVIT.IN_CHANS = 3
    cfg.MODEL.MVIT.LAST_BLOCK_INDEXES = [1, 4, 20, 23]
    cfg.MODEL.MVIT.MLP_RATIO = 4.0
    cfg.MODEL.MVIT.NORM_LAYER = "LayerNorm"
    cfg.MODEL.MVIT.NUM_HEADS = 1
    cfg.MODEL.MVIT.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    cfg.MODEL.MVIT.PATCH_KERNEL = [7, 7]
    cfg.MODEL.MVIT.PATCH_PADDING = [3, 3]
    cfg.MODEL.MVIT.PATCH_STRIDE = [4, 4]
    cfg.MODEL.MVIT.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.MVIT.PRETRAIN_USE_CLS_TOKEN = True
    cfg.MODEL.MVIT.QKV_BIAS = True
    cfg.MODEL.MVIT.QKV_POOL_KERNEL = [3, 3]
    cfg.MODEL.MVIT.REL_POS_ZERO_INIT = True
    cfg.MODEL.MVIT.RESIDUAL_POOLING = True
    cfg.MODEL.MVIT.USE_ABS_POS = False
    cfg.MODEL.MVIT.USE_ACT_CHECKPOINT = False
    cfg.MODEL.MVIT.USE_REL_POS = True
    cfg.MODEL.VIT = CN()
    cfg.MODEL.VIT.ACT_LAYER = "GELU"
    cfg.MODEL.VIT.DEPTH = 12
    cfg.MODEL.VIT.DROP_PATH_RATE = 0.1
    cfg.MODEL.VIT.EMBED_DIM = 768
    cfg.MODEL.VIT.IMG_SIZE = 1024
    cfg.MODEL.VIT.IN_CHANS = 3
    cfg.MODEL.VIT.MLP_RATIO = 4.0
    cfg.MODEL.VIT.NORM_LAYER = "LayerNorm"
    cfg.MODEL.VIT.NUM_HEADS = 12
    cfg.MODEL.VIT.OUT_FEATURE = "last_feat"
    cfg.MODEL.VIT.PATCH_SIZE = 16
    cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.VIT.PRETRAIN_USE_CLS_TOKEN = True
    cfg.MODEL.VIT.QKV_BIAS = True
    cfg.MODEL.VIT.REL_POS_ZERO_INIT = True
    cfg.MODEL.VIT.RESIDUAL_BLOCK_INDEXES = []
    cfg.MODEL.VIT.USE_ABS_POS = True
    cfg.MODEL.VIT.USE_ACT_CHECKPOINT = False
    cfg.MODEL.VIT.USE_REL_POS = True
    cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = [[0, 1, 3, 4, 6, 7, 9, 10]]
    cfg.MODEL.VIT.WINDOW_SIZE = 14
    cfg.MODEL.WIDE_RESNET = CN()
    cfg.MODEL.WIDE_RESNET.DILATION = True
    cfg.MODEL.WIDE_RESNET.DIST_BN = False
    cfg.MODEL.WIDE_RESNET.STRUCTURE = [3, 3, 6, 3, 1, 1]
    accept_for_compatibility("MODEL.MVIT.", "MODEL.VIT.",
                             reason="RbA's other backbones, not part of this plugin")
    declare_key("MODEL.WIDE_RESNET.STRUCTURE", lengths=(6,), meaning="blocks per module mod2 ... mod7")


def add_anomaly_data_config(cfg: CfgNode) -> None:
    """Anomaly datasets, outlier pasting and OOD evaluation keys."""
    # Detectron2's test-time resize, which every evaluation path, the demo and the exports use:
    # a negative size would fail deep inside the image library.
    declare_key("INPUT.MIN_SIZE_TEST", check=lambda v, cfg: None if v >= 0 else "must be >= 0 (0: keep the size)")
    declare_key("INPUT.MAX_SIZE_TEST", check=lambda v, cfg: None if v > 0 else "must be > 0")
    # Outlier pasting (names from RbA so its released configs merge).
    cfg.INPUT.OOD_LABEL = 254  # label of pasted outlier pixels; excluded from class masks
    cfg.INPUT.OOD_PROB = 0.1  # p_out: probability that a training image gets an outlier
    cfg.INPUT.COCO_ROOT = "coco"  # outlier pool root, relative to $DETECTRON2_DATASETS
    cfg.INPUT.COCO_PROXY_SIZE = 300  # size of the fixed, seeded proxy subset of the pool
    # Pool dataset name; "coco_outliers" reads $DETECTRON2_DATASETS/<COCO_ROOT> (prepared by
    # tools/prepare_coco_outliers.py), "synthcity_outliers" is the synthetic benchmark's pool.
    cfg.INPUT.OUTLIER_POOL = "coco_outliers"
    cfg.INPUT.OOD_PROXY_SEED = 0  # seed of the proxy subset: the same on every rank and run
    # The defaults below are RbA's recipe (its "COCO mix" mapper); each method's config sets its
    # own (README "Outlier pasting"; PEBAL and RPL: configs/cityscapes/pixel).
    # When the mapper pastes: "before_augmentation" (RbA, PEBAL: on the full-resolution image,
    # then resize, crop, colour jitter and flip act on image and object together, so the object
    # is rescaled and may be cut or cropped out), "after_crop" (RPL: right after the random crop,
    # so the object always lies inside the crop) or "final_crop" (after every augmentation).
    cfg.INPUT.OOD_PASTE_STAGE = "before_augmentation"
    # Object size: "native" (the pool image's own scale, RbA / PEBAL), "factors" (resized by a
    # factor drawn uniformly from OOD_SCALE_FACTORS; repeats weigh, RPL) or "range" (longer side
    # = U(OOD_SCALE_RANGE) x the target image's shorter side).
    cfg.INPUT.OOD_SCALE_MODE = "native"
    cfg.INPUT.OOD_SCALE_FACTORS = [0.25, 0.5, 0.5, 0.75, 0.1, 0.125]  # RPL's ood_train_scale_array
    cfg.INPUT.OOD_SCALE_RANGE = (0.1, 0.5)
    # An object larger than the image it goes into: "skip" (no paste, as RbA) or "shrink" to fit.
    # Placement is always a uniform top-left corner with the object's box inside the image.
    cfg.INPUT.OOD_OVERSIZE = "skip"
    # Proxy subset: "fixed" for the whole run (RbA) or "per_epoch": redrawn, seeded with
    # (OOD_PROXY_SEED, epoch), every OOD_PROXY_EPOCH_LENGTH samples over all processes (PEBAL,
    # RPL; 0 = one pass over DATASETS.TRAIN). Either way every rank draws from the same subset.
    cfg.INPUT.OOD_PROXY_POLICY = "fixed"
    cfg.INPUT.OOD_PROXY_EPOCH_LENGTH = 0
    declare_key("INPUT.OOD_PROB", check=lambda v, cfg: None if 0.0 <= v <= 1.0 else "must lie in [0, 1]")
    declare_key("INPUT.OOD_SCALE_RANGE", lengths=(2,), meaning="low, high",
                check=lambda v, cfg: None if 0 < v[0] <= v[1] <= 1 else "must satisfy 0 < low <= high <= 1")
    declare_key("INPUT.COCO_PROXY_SIZE", check=lambda v, cfg: None if v > 0 else "must be positive")

    # OOD evaluation (rba_plugin.evaluation.OODEvaluator).
    cfg.TEST.OOD = CfgNode()
    cfg.TEST.OOD.WITH_COMPONENTS = True  # sIoU / PPV / mean F1 (needs a second pass over cached maps)
    # Component threshold delta (prediction = score >= delta, "smiyc": score > delta); None = best
    # pixel F1 on the dataset.
    cfg.TEST.OOD.COMPONENT_THRESHOLD = None
    # [min predicted, min ground-truth] component sizes in pixels; [] = the dataset's track.
    cfg.TEST.OOD.COMPONENT_SIZES = []
    declare_key("TEST.OOD.COMPONENT_SIZES", lengths=(0, 2),
                meaning="[min predicted, min ground-truth] component size in pixels, or [] for the dataset's track",
                check=_non_negative_ints)
    cfg.TEST.OOD.CACHE_MEMORY_MB = 2048  # cached score maps beyond this go to a temp directory
    # "exact": metrics of the float32 scores, exactly; "smiyc": the official Segment-Me-If-You-Can
    # code's numbers (float16 scores, per-frame percentile bins). docs/evaluation_protocols.md.
    cfg.TEST.OOD.PROTOCOL = "exact"
    declare_key("TEST.OOD.PROTOCOL", choices=("exact", "smiyc"))
    declare_key("TEST.OOD.CACHE_MEMORY_MB", check=lambda v, cfg: None if v >= 0 else "must not be negative")
    cfg.TEST.OOD.WRITE_CURVES = True  # PR / ROC PNGs and a JSON of the results in OUTPUT_DIR


def add_ood_config(cfg: CfgNode) -> None:
    """What every meta-architecture reads: anomaly scores at inference and extra loss terms."""
    cfg.MODEL.OOD = CfgNode()
    # Registered scores (rba_plugin.modeling.ood.available_scores(): rba, maxlogit, msp, entropy,
    # energy, neg_logit_sum, densehybrid, unknown_probability, raml, ...). The first is the output
    # "ood_score"; with several, "ood_scores" holds each, so one evaluation compares them. A score
    # whose inputs the model does not produce is refused when the model is built.
    # [] = the model's own default (Mask2Former: rba; a per-pixel method: its paper's score).
    cfg.MODEL.OOD.SCORES = []
    # Gaussian smoothing of every score map (odd kernel size; 0 = off; -1 = the model's default:
    # 7 for RPL and PEBAL, as their official test code, 0 otherwise), with this sigma.
    cfg.MODEL.OOD.SMOOTHING_KERNEL = -1
    cfg.MODEL.OOD.SMOOTHING_SIGMA = 1.0
    declare_key("MODEL.OOD.SMOOTHING_KERNEL", check=lambda v, cfg: (
        None if v in (-1, 0) or (v > 0 and v % 2 == 1) else "must be -1 (the model's default), 0 (off) or an odd size"))
    declare_key("MODEL.OOD.SMOOTHING_SIGMA", check=lambda v, cfg: None if v > 0 else "must be positive")
    # Registered loss terms (rba_plugin.modeling.loss_terms.LOSS_TERM_REGISTRY) added to the ones
    # the model trains with (Mask2Former's and RbA's; a per-pixel method's own list).
    cfg.MODEL.LOSS_TERMS = []


def add_checkpoint_config(cfg: CfgNode) -> None:
    """Loading MODEL.WEIGHTS (rba_plugin.engine.SafeCheckpointer)."""
    # Load a checkpoint whose keys or shapes do not fully match the model (the matching part is
    # loaded, the rest logged). Off: a mismatch is an error listing the keys, except for modules
    # the model declares as newly initialised and backbone-only (ImageNet) checkpoints.
    cfg.MODEL.ALLOW_PARTIAL_LOAD = False


def get_cfg() -> CfgNode:
    """Detectron2's default config with every key of the plugin (and of its registered
    components) added."""
    cfg = _detectron2_get_cfg()
    add_deeplab_config(cfg)
    _declare_detectron2_keys()
    add_maskformer2_config(cfg)
    add_rba_config(cfg)
    add_anomaly_data_config(cfg)
    add_ood_config(cfg)
    add_checkpoint_config(cfg)
    for add_group in _CONFIG_GROUPS:
        add_group(cfg)
    return cfg


def load_config(config_file: Optional[str] = None, opts: Sequence[str] = (), *, freeze: bool = True) -> CfgNode:
    """:func:`get_cfg`, merged with ``config_file`` (if given) and the ``KEY VALUE`` list ``opts``.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        KeyError / ValueError: from Detectron2's merge, naming the unknown key or bad value, or
            from :func:`check_config`, naming every value a declared rule refuses.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        cfg.merge_from_file(config_file)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    cfg.merge_from_list(list(opts))
    check_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def set_anomaly_scores(cfg: CfgNode, names: Sequence[str]) -> CfgNode:
    """A frozen copy of ``cfg`` whose model outputs the scores ``names`` (MODEL.OOD.SCORES; the
    alias MODEL.MASK_FORMER.OOD_SCORES is cleared so the two cannot disagree)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.OOD.SCORES = list(names)
    cfg.MODEL.MASK_FORMER.OOD_SCORES = []
    cfg.freeze()
    return cfg
