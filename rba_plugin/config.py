"""The plugin's configuration: Detectron2's defaults plus every key rba_plugin reads.

Key names follow Mask2Former (``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``, ``MODEL.SWIN.*``)
and RbA, so the official config files merge unchanged. Each ``add_*_config`` adds one group.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.config import get_cfg as _detectron2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["get_cfg", "add_maskformer2_config", "add_anomaly_data_config", "add_pixel_ood_config"]


def add_maskformer2_config(cfg: CfgNode) -> None:
    """Mask2Former's model, input, solver and test keys (the closed-set model)."""


def add_anomaly_data_config(cfg: CfgNode) -> None:
    """Anomaly datasets, outlier pasting and OOD evaluation keys."""
    # Outlier pasting (names from RbA so its released configs merge).
    cfg.INPUT.OOD_LABEL = 254  # label of pasted outlier pixels; excluded from class masks
    cfg.INPUT.OOD_PROB = 0.1  # p_out: probability that a training image gets an outlier
    cfg.INPUT.COCO_ROOT = "coco"  # outlier pool root, relative to $DETECTRON2_DATASETS
    cfg.INPUT.COCO_PROXY_SIZE = 300  # size of the fixed, seeded proxy subset of the pool


def add_pixel_ood_config(cfg: CfgNode) -> None:
    """The per-pixel DeepLabV3+ branch: method choice and each method's hyper-parameters.

    Defaults follow the papers; where the official code differs, the code's value is an option
    (named in the comment).
    """
    cfg.MODEL.PIXEL_OOD = CfgNode()
    # "ClosedSet" (plain CE training of the base model), "RPL", "PEBAL", "RAML", "VCA".
    cfg.MODEL.PIXEL_OOD.METHOD = "ClosedSet"
    # Score of the closed-set model at inference (a name of rba_plugin.modeling.ood's registry).
    cfg.MODEL.PIXEL_OOD.SCORE = "maxlogit"
    # Gaussian smoothing of the anomaly score (RPL and PEBAL: kernel 7, sigma 1); 0 disables.
    cfg.MODEL.PIXEL_OOD.SMOOTH_KERNEL = 7
    cfg.MODEL.PIXEL_OOD.SMOOTH_SIGMA = 1.0
    # Extra parameter-name prefixes to keep trainable on top of the method's own (rarely needed).
    cfg.MODEL.PIXEL_OOD.EXTRA_TRAINABLE = []
    # Padding multiple of the batched images; -1 = the backbone's own (32 when it has none).
    cfg.MODEL.PIXEL_OOD.SIZE_DIVISIBILITY = -1
    # Train ids treated as void in training (RAML's incremental settings hold classes out:
    # "16+1" = [13], "16+3" = [13, 14, 15]); ids are not compacted.
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = []

    # RPL + CoroCL (Liu et al., ICCV 2023).
    cfg.MODEL.RPL = CfgNode()
    cfg.MODEL.RPL.ENERGY_WEIGHT = 0.05  # alpha of Eq. 4
    cfg.MODEL.RPL.ENTROPY_T = 1.0  # t of the dis-similarity term of Eq. 5
    # Inlier targets of Eq. 5: "pseudo" = argmax of the frozen model (paper and code), "gt".
    cfg.MODEL.RPL.INLIER_TARGET = "pseudo"
    # Initialise the residual ASPP from the head's trained ASPP when a checkpoint lacks it
    # (official code); False keeps the fresh initialisation.
    cfg.MODEL.RPL.INIT_FROM_HEAD_ASPP = True
    cfg.MODEL.RPL.COROCL_WEIGHT = 1.0  # 0 disables CoroCL (plain RPL)
    cfg.MODEL.RPL.COROCL_TAU = 0.1
    cfg.MODEL.RPL.COROCL_MAX_VIEWS = 512  # pixels sampled per set
    cfg.MODEL.RPL.EXPAND_LR_MULT = 10.0  # official code: 10x lr on the expand conv (see optim.py)
    cfg.MODEL.RPL.PROJ_DIM = 304  # projector output width (official: the decoder input width)
    # Raw outlier images for CoroCL's contrastive set come in batched_inputs[i]["outlier_image"]
    # with their mask in ["outlier_sem_seg"] (OOD_LABEL on the object, anything else = context).
    # Official code also uses the raw image's background as "inlier" context: option below.
    cfg.MODEL.RPL.COROCL_OUTLIER_BG_AS_INLIER = True

    # PEBAL (Tian et al., ECCV 2022). Losses from rba_plugin.modeling.ood.losses.
    cfg.MODEL.PEBAL = CfgNode()
    # PAL's outlier-pixel term weight: 1 in the paper's Eq. 2; the official code uses 0.1.
    cfg.MODEL.PEBAL.PAL_OUTLIER_WEIGHT = 1.0
    # Targets of an outlier pixel in PAL: "all" Y+1 labels (paper) or the Y inlier ones (code).
    cfg.MODEL.PEBAL.PAL_OUTLIER_CLASSES = "all"
    # Stop gradients through the penalty a = (-E)^2 (official code lets them flow: False).
    cfg.MODEL.PEBAL.DETACH_PENALTY = False
    cfg.MODEL.PEBAL.ENERGY_WEIGHT = 0.1  # lambda of Eq. 2 on the energy hinge
    cfg.MODEL.PEBAL.M_IN = -12.0
    cfg.MODEL.PEBAL.M_OUT = -6.0
    # Eq. 8: beta1 on smoothness, beta2 on sparsity (paper). The official code swaps them:
    # SMOOTH_WEIGHT = 3e-6 with SMOOTH_NORM "l2", SPARSITY_WEIGHT = 5e-4 with SPARSITY_NORM "l2"
    # on outlier pixels only (SPARSITY_ON "outlier").
    cfg.MODEL.PEBAL.SMOOTH_WEIGHT = 5e-4
    cfg.MODEL.PEBAL.SPARSITY_WEIGHT = 3e-6
    cfg.MODEL.PEBAL.SMOOTH_NORM = "l1"  # paper |E - E_N|; code 0.5 (E - E_N)^2
    cfg.MODEL.PEBAL.SPARSITY_NORM = "l1"  # paper |E|; code ||E||_2
    cfg.MODEL.PEBAL.SPARSITY_ON = "all"  # paper: every pixel; code: "outlier"
    # "sum" over pixels (paper and code); "mean" makes the regularisers resolution-independent.
    cfg.MODEL.PEBAL.REG_REDUCTION = "sum"

    # RAML (Dong et al., IJCAI 2022): anomaly stage and MCA incremental few-shot stage.
    cfg.MODEL.RAML = CfgNode()
    cfg.MODEL.RAML.STAGE = "anomaly"  # "anomaly" (RAML head) or "mca" (MCA fine-tuning)
    cfg.MODEL.RAML.EMBED_DIMS = [256, 128]  # the two FC layers D
    cfg.MODEL.RAML.CIRCLE_MARGIN = 0.25
    cfg.MODEL.RAML.CIRCLE_GAMMA = 8.0
    cfg.MODEL.RAML.REGION_DROP_PROB = 0.3  # random sub-regions of class masks (official DropBlock)
    cfg.MODEL.RAML.REGION_DROP_BLOCK = 3
    cfg.MODEL.RAML.REGIONS_PER_CLASS = 2
    cfg.MODEL.RAML.PROTOTYPE_MOMENTUM = 0.9  # EMA of known-class prototypes during training
    cfg.MODEL.RAML.SOBEL_THRESH = 50.0  # alpha (Lost&Found 50, Road Anomaly 150), on 0..255 grey
    cfg.MODEL.RAML.MSP_THRESH = 0.7  # beta (Lost&Found 0.7, Road Anomaly 0.4)
    cfg.MODEL.RAML.MIN_REGION_AREA = 1
    cfg.MODEL.MCA = CfgNode()
    cfg.MODEL.MCA.NUM_META = 4  # K
    cfg.MODEL.MCA.ACTIVATION = "softmax"  # paper; official code: "sigmoid"
    cfg.MODEL.MCA.ETA = 0.02
    # L_split bound: "min" gives -log(min(x, 1)) (bounded, the official code); "max" is the
    # literal Eq. 8 -log(max(x, 1)).
    cfg.MODEL.MCA.SPLIT_BOUND = "min"
    # x of L_split: "sum" = eta * sum over pixels (paper Eq. 8); "mean" = mean / eta (code).
    cfg.MODEL.MCA.SPLIT_MASS = "sum"
    cfg.MODEL.MCA.INTER_REDUCTION = "sum"  # over channel pairs i < j (paper Eq. 7); code: "mean"
    cfg.MODEL.MCA.HEAD_LR_MULT = 10.0  # label predictor 0.1 vs feature extractor 0.01 (paper)
    cfg.MODEL.MCA.INTER_WEIGHT = 0.1
    cfg.MODEL.MCA.SPLIT_WEIGHT = 0.1
    cfg.MODEL.MCA.REC_WEIGHT = 0.01
    # Known channels of C: "nll" (the first N channels are the in-distribution segmentation,
    # paper) or "dice_bce" (official code).
    cfg.MODEL.MCA.KNOWN_LOSS = "nll"
    cfg.MODEL.MCA.KAPPA = 0.1  # candidate channel threshold (paper); official code 0.15
    cfg.MODEL.MCA.THETA_NOVEL = 0.8
    cfg.MODEL.MCA.CHANNEL_THRESH = 0.5  # binarisation of meta channels
    # Eq. 13 counts a channel's pixels inside the novel mask (official code); False counts all.
    cfg.MODEL.MCA.CANDIDATE_INSIDE_MASK = True
    cfg.MODEL.MCA.MIN_REGION_AREA = 1  # official code: 250 px at stride 4

    # VCA open-set prototype baseline (Siam et al.).
    cfg.MODEL.VCA = CfgNode()
    cfg.MODEL.VCA.EMBED_DIM = 256
    cfg.MODEL.VCA.SQUARED_DISTANCE = False  # official head: Euclidean, not squared
    cfg.MODEL.VCA.SUPCON_WEIGHT = 0.0  # auxiliary supervised contrastive loss (0 = off)
    cfg.MODEL.VCA.SUPCON_TAU = 0.07
    cfg.MODEL.VCA.SUPCON_MAX_VIEWS = 512
    cfg.MODEL.VCA.SUPCON_PROJ_DIM = 128
    # Parts trained with the head (official motion configs freeze backbone and neck).
    cfg.MODEL.VCA.TRAIN_BACKBONE = False


def get_cfg() -> CfgNode:
    """Detectron2's default config with every key of the plugin added."""
    cfg = _detectron2_get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_anomaly_data_config(cfg)
    add_pixel_ood_config(cfg)
    return cfg
