"""PEBAL's loss terms (Tian et al., ECCV 2022): pixel-wise anomaly abstention (PAL, the code's
"Gambler"), the energy hinge, and the smoothness and sparsity regularisers of the energy map.

Each term exists for both branches, in the form the official code computes ("official", the
default) and the paper's ("paper"):

* per-pixel PEBAL (``MODEL.PEBAL``; inputs ``logits``, the C+1 logits whose last channel
  abstains, and ``energy`` = -logsumexp of the first C): official = ``code/losses.py`` with
  ``code/engine/trainer.py``: the abstention loss averaged separately over the clean images and
  over the images with pasted outliers and summed, its penalty Gaussian-blurred, and
  0.1 x (hinge + 5e-4 sparsity + 3e-6 smoothness), the trainer's 0.1 covering all three;
* PEBAL inside Mask2Former (RbA's keys ``GAMBLER_*``, ``PEBAL_OOD_REG``, ``SMOOTHNESS_*``,
  ``SPARSITY_*``, form ``MODEL.MASK_FORMER.PEBAL_FORM``; inputs ``class_scores_and_no_object``
  (L with the no-object column, at the labels' size), ``energy`` and ``class_scores``): official =
  RbA's ``criterion.py`` (``loss_gambler``, ``loss_smoothness``, ``loss_sparsity``; the energy hinge
  is RbA's outlier loss with OUTLIER_LOSS_TARGET "energy"); paper = RbA appendix C.3.

The math is in :mod:`rba_plugin.modeling.ood.losses`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from detectron2.config import configurable

from ..ood import losses as L
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice, register_term_alias

__all__ = [
    "PEBAL_FORM_CONSTANTS",
    "PEBALAbstention",
    "PEBALEnergyHinge",
    "PEBALSmoothness",
    "PEBALSparsity",
    "MaskFormerPEBALAbstention",
    "MaskFormerPEBALEnergyHinge",
    "MaskFormerEnergySmoothness",
    "MaskFormerEnergySparsity",
]

FORMS = ("official", "paper")
# Per-pixel PEBAL's constants where the code and the paper differ (used when the key is None).
# Official (losses.py / trainer.py): 0.1 on the outlier part; 3e-6 smoothness and 5e-4 sparsity
# inside energy_loss. Paper (Sec. 4.2): outlier part weight 1; beta1 = 5e-4 on smoothness,
# beta2 = 3e-6 on sparsity (the code's two constants, swapped).
PEBAL_FORM_CONSTANTS = {
    "official": {"pal_outlier_weight": 0.1, "smooth_weight": 3e-6, "sparsity_weight": 5e-4},
    "paper": {"pal_outlier_weight": 1.0, "smooth_weight": 5e-4, "sparsity_weight": 3e-6},
}


def _pebal_constant(cfg, value: Optional[float], name: str) -> float:
    """``value`` (a MODEL.PEBAL weight key), or the constant ``name`` of MODEL.PEBAL.FORM when None."""
    return PEBAL_FORM_CONSTANTS[cfg.MODEL.PEBAL.FORM][name] if value is None else float(value)


def _form(cfg, key: str, value: str) -> str:
    check_choice(key, value, FORMS)
    return value


@register_term_alias
def maskformer_pebal_terms(cfg) -> List[str]:
    """RbA's GAMBLER_LOSS, SMOOTHNESS_LOSS and SPARSITY_LOSS as term names. In the official form
    the energy hinge is RbA's outlier loss (OUTLIER_SUPERVISION with target "energy"); the paper
    form adds appendix C.3's hinge (PEBAL_M_IN / PEBAL_M_OUT / PEBAL_ENERGY_WEIGHT)."""
    mf = cfg.MODEL.MASK_FORMER
    form = _form(cfg, "MODEL.MASK_FORMER.PEBAL_FORM", mf.PEBAL_FORM)
    names = []
    if mf.GAMBLER_LOSS:
        names.append("MaskFormerPEBALAbstention")
        if form == "paper":
            names.append("MaskFormerPEBALEnergyHinge")
    if mf.SMOOTHNESS_LOSS:
        names.append("MaskFormerEnergySmoothness")
    if mf.SPARSITY_LOSS:
        names.append("MaskFormerEnergySparsity")
    return names


# --- per-pixel PEBAL (MODEL.PEBAL) -----------------------------------------------------------


@LOSS_TERM_REGISTRY.register()
class PEBALAbstention(LossTerm):
    """The abstention loss on the C+1 ``logits``: ``loss_pebal_pal``.

    Official (``Gambler`` as ``trainer.py`` calls it): the images of the batch without a pasted
    outlier pixel give -mean log(p_y + a) over their non-void pixels, the images with one give
    -[mean_I log(p_y + a) + w mean_{O, c<C} log max(p_c + a, 1e-7)], and the two are summed;
    a = p_abs / G(E^2) with G the 7x7, sigma 1 Gaussian blur; w = 0.1. An image group that is
    empty contributes 0 (the official code: NaN when every image has an outlier).
    Paper (Eq. 3 with a = E^2 of Eq. 5): mean_I -log(p_y + p_abs / a) + w mean_O mean_{c<=C}
    -log(p_c + p_abs / a) over the whole batch; w = 1.
    """

    inputs = ("logits", "energy")

    @configurable
    def __init__(self, *, outlier_weight: float = 0.1, form: str = "official", key: str = "loss_pebal_pal",
                 weight: float = 1.0):
        super().__init__()
        check_choice("MODEL.PEBAL.FORM", form, FORMS)
        self.outlier_weight = outlier_weight
        self.form = form
        self.key = key
        self.weights = {key: weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        form = _form(cfg, "MODEL.PEBAL.FORM", cfg.MODEL.PEBAL.FORM)
        return {"outlier_weight": _pebal_constant(cfg, cfg.MODEL.PEBAL.PAL_OUTLIER_WEIGHT, "pal_outlier_weight"), "form": form}

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """N x (C+1) x H x W class probabilities, the last one abstaining."""
        return outputs["logits"].softmax(dim=1)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        probs, energy, labels = self.probabilities(outputs), outputs["energy"], targets.labels
        if self.form == "paper":
            loss = L.pal_loss(probs, energy, labels, outlier_weight=self.outlier_weight,
                              ood_label=targets.ood_label, ignore_label=targets.ignore_label)
            return {self.key: loss}
        reward = L.gaussian_smooth(energy**2, 7, 1.0)
        return {self.key: self.official(probs, reward, targets)}

    def official(self, probs: torch.Tensor, reward: torch.Tensor, targets: PixelTargets) -> torch.Tensor:
        # PEBAL's trainer: one Gambler call on the clean images, one on those with outliers.
        has_outlier = targets.outlier.flatten(1).any(dim=1)
        loss = probs.sum() * 0.0
        for group, with_outliers in ((~has_outlier, False), (has_outlier, True)):
            if group.any():
                loss = loss + L.gambler_loss(probs[group], reward[group], targets.labels[group],
                                             with_outliers=with_outliers, outlier_weight=self.outlier_weight,
                                             ood_label=targets.ood_label, ignore_label=targets.ignore_label)
        return loss


@LOSS_TERM_REGISTRY.register()
class PEBALEnergyHinge(LossTerm):
    """``weight`` x the energy hinge with margins m_in / m_out: ``loss_pebal_energy``.

    Official (``energy_loss``): mean_I max(0, E - m_in)^2, or 0.5 (that + mean_O max(0, m_out - E)^2)
    on a batch with outlier pixels; paper (Eqs. 6-7): the sum of both means.
    """

    inputs = ("energy",)

    @configurable
    def __init__(self, *, m_in: float, m_out: float, weight: float = 0.1, form: str = "official",
                 key: str = "loss_pebal_energy"):
        super().__init__()
        check_choice("MODEL.PEBAL.FORM", form, FORMS)
        self.m_in = m_in
        self.m_out = m_out
        self.weight = weight
        self.form = form
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PEBAL
        return {"m_in": p.M_IN, "m_out": p.M_OUT, "weight": p.ENERGY_WEIGHT, "form": _form(cfg, "MODEL.PEBAL.FORM", p.FORM)}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        energy = outputs["energy"]
        hinge = L.official_energy_hinge_loss if self.form == "official" else L.energy_hinge_loss
        value = hinge(energy, targets.inlier, targets.outlier, m_in=self.m_in, m_out=self.m_out)
        return {self.key: self.weight * value}


@LOSS_TERM_REGISTRY.register()
class PEBALSmoothness(LossTerm):
    """``weight`` x the smoothness of the energy map: ``loss_pebal_smooth``. Official: 0.5 x the
    sum of squared neighbour differences, weight ENERGY_WEIGHT x SMOOTH_WEIGHT (0.1 x 3e-6);
    paper (Eq. 8, beta_1): mean |E(w) - E(N(w))|, weight SMOOTH_WEIGHT (5e-4)."""

    inputs = ("energy",)

    @configurable
    def __init__(self, *, weight: float, form: str = "official", key: str = "loss_pebal_smooth"):
        super().__init__()
        check_choice("MODEL.PEBAL.FORM", form, FORMS)
        self.weight = weight
        self.form = form
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        form = _form(cfg, "MODEL.PEBAL.FORM", cfg.MODEL.PEBAL.FORM)
        weight = _pebal_constant(cfg, cfg.MODEL.PEBAL.SMOOTH_WEIGHT, "smooth_weight")
        return {"weight": weight * (cfg.MODEL.PEBAL.ENERGY_WEIGHT if form == "official" else 1.0), "form": form}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        if self.form == "official":
            value = L.energy_smoothness_loss(outputs["energy"], norm="l2", reduction="sum")
        else:
            value = L.energy_smoothness_loss(outputs["energy"], norm="l1", reduction="mean")
        return {self.key: self.weight * value}


@LOSS_TERM_REGISTRY.register()
class PEBALSparsity(LossTerm):
    """``weight`` x the sparsity of the energy map: ``loss_pebal_sparsity``. Official: the L2
    norm of the outlier pixels' energies (0 without), weight ENERGY_WEIGHT x SPARSITY_WEIGHT
    (0.1 x 5e-4); paper (Eq. 8, beta_2): mean |E| over every pixel, weight SPARSITY_WEIGHT (3e-6)."""

    inputs = ("energy",)

    @configurable
    def __init__(self, *, weight: float, form: str = "official", key: str = "loss_pebal_sparsity"):
        super().__init__()
        check_choice("MODEL.PEBAL.FORM", form, FORMS)
        self.weight = weight
        self.form = form
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        form = _form(cfg, "MODEL.PEBAL.FORM", cfg.MODEL.PEBAL.FORM)
        weight = _pebal_constant(cfg, cfg.MODEL.PEBAL.SPARSITY_WEIGHT, "sparsity_weight")
        return {"weight": weight * (cfg.MODEL.PEBAL.ENERGY_WEIGHT if form == "official" else 1.0), "form": form}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        energy = outputs["energy"]
        if self.form == "official":
            value = L.energy_sparsity_loss(energy, targets.outlier, norm="l2")
        else:
            value = L.energy_sparsity_loss(energy, None, norm="l1", reduction="mean")
        return {self.key: self.weight * value}


# --- PEBAL inside Mask2Former (RbA's keys) ----------------------------------------------------


@LOSS_TERM_REGISTRY.register()
class MaskFormerPEBALAbstention(PEBALAbstention):
    """PAL on Mask2Former (RbA's GAMBLER_LOSS, weight GAMBLER_WEIGHT, outlier part PEBAL_OOD_REG):
    ``loss_pal``. Official (``loss_gambler``): softmax over the C+1 class-score maps Z (L with the
    no-object column, at the labels' size) as the probabilities, penalty G(logsumexp_{c<C}(Z)^2),
    one Gambler call on the batch with the outlier branch when it holds outlier pixels; paper
    (appendix C.3): Z itself as the probabilities, penalty E^2, the outlier part over all C+1
    columns."""

    inputs = ("class_scores_and_no_object", "energy")
    replaces_mask_losses = True

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {"outlier_weight": mf.PEBAL_OOD_REG, "key": "loss_pal", "weight": mf.GAMBLER_WEIGHT,
                "form": _form(cfg, "MODEL.MASK_FORMER.PEBAL_FORM", mf.PEBAL_FORM)}

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        scores = outputs["class_scores_and_no_object"]
        return scores.softmax(dim=1) if self.form == "official" else scores

    def official(self, probs: torch.Tensor, reward: torch.Tensor, targets: PixelTargets) -> torch.Tensor:
        return L.gambler_loss(probs, reward, targets.labels, with_outliers=bool(targets.outlier.any()),
                              outlier_weight=self.outlier_weight, ood_label=targets.ood_label,
                              ignore_label=targets.ignore_label)


@LOSS_TERM_REGISTRY.register()
class MaskFormerPEBALEnergyHinge(PEBALEnergyHinge):
    """The paper form's energy hinge on Mask2Former (RbA appendix C.3: PEBAL_M_IN / PEBAL_M_OUT,
    weight PEBAL_ENERGY_WEIGHT); in the official form RbA's outlier loss on the energy plays it."""

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {"m_in": mf.PEBAL_M_IN, "m_out": mf.PEBAL_M_OUT, "weight": mf.PEBAL_ENERGY_WEIGHT, "form": "paper"}


def _smoothness_score(cfg) -> str:
    # RbA's SMOOTHNESS_SCORE: "energy" (-logsumexp L), "nls" (-sum L) or "softmax_entropy".
    score = cfg.MODEL.MASK_FORMER.SMOOTHNESS_SCORE
    check_choice("MODEL.MASK_FORMER.SMOOTHNESS_SCORE", score, ("energy", "nls", "softmax_entropy"))
    return {"energy": "energy", "nls": "neg_logit_sum", "softmax_entropy": "entropy"}[score]


@LOSS_TERM_REGISTRY.register()
class MaskFormerEnergySmoothness(LossTerm):
    """Smoothness on Mask2Former (SMOOTHNESS_LOSS, weight SMOOTHNESS_WEIGHT): ``loss_smoothness``.
    Official (``loss_smoothness``): 0.5 x the sum of squared neighbour differences of the
    SMOOTHNESS_SCORE map at mask resolution; paper (C.3): sum |E(w) - E(N(w))| at the labels' size."""

    inputs = ("class_scores", "energy")

    @configurable
    def __init__(self, *, weight: float, score_name: str = "energy", form: str = "official"):
        super().__init__()
        self.score_name = score_name
        self.form = form
        self.weights = {"loss_smoothness": weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {"weight": mf.SMOOTHNESS_WEIGHT, "score_name": _smoothness_score(cfg),
                "form": _form(cfg, "MODEL.MASK_FORMER.PEBAL_FORM", mf.PEBAL_FORM)}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        if self.form == "official":
            score = L.get_score_function(self.score_name)(outputs["class_scores"])
            return {"loss_smoothness": L.energy_smoothness_loss(score, norm="l2", reduction="sum")}
        return {"loss_smoothness": L.energy_smoothness_loss(outputs["energy"], norm="l1", reduction="sum")}


@LOSS_TERM_REGISTRY.register()
class MaskFormerEnergySparsity(LossTerm):
    """Sparsity on Mask2Former (SPARSITY_LOSS, weight SPARSITY_WEIGHT): ``loss_sparsity``.
    Official (``loss_sparsity``): the L2 norm of the energy (computed at mask resolution, upsampled)
    over the outlier pixels, 0 without them, and 0 when OUTLIER_SUPERVISION is off (RbA's targets
    then carry no outlier mask); paper (C.3): sum |E| over every pixel."""

    inputs = ("class_scores", "energy")

    @configurable
    def __init__(self, *, weight: float, form: str = "official", enabled: bool = True):
        super().__init__()
        self.form = form
        self.enabled = enabled
        self.weights = {"loss_sparsity": weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        form = _form(cfg, "MODEL.MASK_FORMER.PEBAL_FORM", mf.PEBAL_FORM)
        return {"weight": mf.SPARSITY_WEIGHT, "form": form,
                "enabled": form == "paper" or mf.OUTLIER_SUPERVISION}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        if self.form == "paper":
            return {"loss_sparsity": L.energy_sparsity_loss(outputs["energy"], None, norm="l1")}
        if not self.enabled:
            return {"loss_sparsity": outputs["class_scores"].sum() * 0.0}
        energy = L.outlier_score_map(outputs["class_scores"], targets.labels, "energy")
        return {"loss_sparsity": L.energy_sparsity_loss(energy, targets.outlier, norm="l2")}
