"""The plugin's configuration: Detectron2's defaults plus every key rba_plugin reads.

Key names follow Mask2Former (``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``, ``MODEL.SWIN.*``)
and RbA, so the official config files merge unchanged. Each ``add_*_config`` adds one group; a
component with keys of its own (a per-pixel method, a loss term) adds its group from its own
module with :func:`register_config_group`, and :func:`get_cfg` applies every registered group.
:func:`load_config` is the one way every tool reads a config file plus ``KEY VALUE`` overrides.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _detectron2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = [
    "get_cfg",
    "load_config",
    "register_config_group",
    "set_anomaly_scores",
    "add_maskformer2_config",
    "add_rba_config",
    "add_anomaly_data_config",
    "add_ood_config",
    "add_checkpoint_config",
]

# Config groups of components, added by get_cfg() after the plugin's own groups.
_CONFIG_GROUPS: List[Callable[[CfgNode], None]] = []


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

    # --- solver ---
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeds, ...)
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW", "ADAM" or "SGD"
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
    # Per-class squashing of L before "nls": none / sigmoid / tanh (tanh + nls = RbA).
    cfg.MODEL.MASK_FORMER.SCORE_NORM = "none"
    # squared_hinge / binary_cross_entropy / mse / l1 / kl (RbA first sets "max", then this).
    cfg.MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC = "squared_hinge"
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
    # (ours) PEBAL inside Mask2Former: "official" (RbA's loss_gambler / smoothness / sparsity, the
    # hinge through the outlier loss on the energy) or "paper" (appendix C.3, with PEBAL_M_IN /
    # PEBAL_M_OUT / PEBAL_ENERGY_WEIGHT).
    cfg.MODEL.MASK_FORMER.PEBAL_FORM = "official"
    # --- PEBAL / DenseHybrid variants inside Mask2Former (they replace the class/mask losses) ---
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_LOSS = False
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_WEIGHT = 3e-6
    cfg.MODEL.MASK_FORMER.SMOOTHNESS_SCORE = "energy"
    cfg.MODEL.MASK_FORMER.SPARSITY_LOSS = False
    cfg.MODEL.MASK_FORMER.SPARSITY_WEIGHT = 5e-4
    cfg.MODEL.MASK_FORMER.GAMBLER_LOSS = False
    cfg.MODEL.MASK_FORMER.GAMBLER_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.PEBAL_REWARD = 4.5
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
    # --- data (not acted on) ---
    cfg.INPUT.REPEAT_INSTANCE_MASKS = 1
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


def add_anomaly_data_config(cfg: CfgNode) -> None:
    """Anomaly datasets, outlier pasting and OOD evaluation keys."""
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

    # OOD evaluation (rba_plugin.evaluation.OODEvaluator).
    cfg.TEST.OOD = CfgNode()
    cfg.TEST.OOD.WITH_COMPONENTS = True  # sIoU / PPV / mean F1 (needs a second pass over cached maps)
    # Component threshold delta (prediction = score >= delta, "smiyc": score > delta); None = best
    # pixel F1 on the dataset.
    cfg.TEST.OOD.COMPONENT_THRESHOLD = None
    # [min predicted, min ground-truth] component sizes in pixels; [] = the dataset's track.
    cfg.TEST.OOD.COMPONENT_SIZES = []
    cfg.TEST.OOD.CACHE_MEMORY_MB = 2048  # cached score maps beyond this go to a temp directory
    # "exact": metrics of the float32 scores, exactly; "smiyc": the official Segment-Me-If-You-Can
    # code's numbers (float16 scores, per-frame percentile bins). docs/evaluation_protocols.md.
    cfg.TEST.OOD.PROTOCOL = "exact"
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
        KeyError / ValueError: from Detectron2's merge, naming the unknown key or bad value.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        cfg.merge_from_file(config_file)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    cfg.merge_from_list(list(opts))
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
