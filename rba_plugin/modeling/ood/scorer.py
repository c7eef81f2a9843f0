"""The anomaly scores a model outputs at inference, read from one config group for every
meta-architecture (``MODEL.OOD``)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable

from .scores import available_scores, gaussian_smooth, get_score

__all__ = ["AnomalyScorer", "scores_for_inputs", "resolve_score_config", "PRIMARY_SCORE", "NAMED_SCORES"]

# Output keys: the first configured score, and (with several) every score by name.
PRIMARY_SCORE = "ood_score"
NAMED_SCORES = "ood_scores"


def scores_for_inputs(available_inputs: Sequence[str]) -> List[str]:
    """The registered scores whose every input is in ``available_inputs``, sorted."""
    return [name for name in available_scores() if set(get_score(name).inputs) <= set(available_inputs)]


def resolve_score_config(cfg) -> Tuple[Optional[List[str]], Optional[int], float, str]:
    """(score names or None = the model's default, smoothing kernel or None = the model's default,
    sigma, the key the names came from) from ``MODEL.OOD`` and its alias keys.

    ``MODEL.MASK_FORMER.OOD_SCORES`` / ``OOD_SCORE_SMOOTHING`` (the keys of RbA-style configs) are
    aliases of ``MODEL.OOD.SCORES`` / ``SMOOTHING_KERNEL``; a config that sets both spellings
    differently is refused, naming both keys.
    """
    ood = cfg.MODEL.OOD
    names, key = list(ood.SCORES), "MODEL.OOD.SCORES"
    alias = list(cfg.MODEL.MASK_FORMER.OOD_SCORES)
    if alias:
        if names and names != alias:
            raise ValueError(
                f"MODEL.OOD.SCORES={names} and its alias MODEL.MASK_FORMER.OOD_SCORES={alias} disagree; set one of them"
            )
        names, key = alias, "MODEL.MASK_FORMER.OOD_SCORES"
    kernel = int(ood.SMOOTHING_KERNEL)
    if cfg.MODEL.MASK_FORMER.OOD_SCORE_SMOOTHING:
        if kernel not in (-1, 7):
            raise ValueError(
                f"MODEL.MASK_FORMER.OOD_SCORE_SMOOTHING=True (a 7x7 blur) and MODEL.OOD.SMOOTHING_KERNEL={kernel} "
                "disagree; set one of them"
            )
        kernel = 7
    if kernel < -1 or (kernel > 0 and kernel % 2 == 0):
        raise ValueError(f"MODEL.OOD.SMOOTHING_KERNEL must be -1 (the model's default), 0 (off) or an odd size, got {kernel}")
    sigma = float(ood.SMOOTHING_SIGMA)
    if sigma <= 0:
        raise ValueError(f"MODEL.OOD.SMOOTHING_SIGMA must be positive, got {sigma}")
    return (names or None), (None if kernel == -1 else kernel), sigma, key


class AnomalyScorer:
    """Computes the configured anomaly scores from a model's named outputs.

    Args:
        names: registered score names (:func:`rba_plugin.modeling.ood.available_scores`); the
            first is the output ``"ood_score"``, and with several ``"ood_scores"`` holds each.
        available_inputs: the named outputs the model produces (e.g. ``("class_scores",)``).
        smoothing_kernel: Gaussian blur of every score map (odd size, 0 = off), sigma
            ``smoothing_sigma``: the RPL / PEBAL test-time smoothing.
        key: the config key the names came from, for error messages.
        model_name: the model, for error messages.

    Raises:
        ValueError: no name, an unknown name, or a score that needs an output the model lacks
            (naming the key, the score, what it needs and what the model produces), at build time.
    """

    @configurable
    def __init__(
        self,
        *,
        names: Sequence[str],
        available_inputs: Sequence[str],
        smoothing_kernel: int = 0,
        smoothing_sigma: float = 1.0,
        key: str = "MODEL.OOD.SCORES",
        model_name: str = "the model",
    ):
        if not names:
            raise ValueError(f"{key} must name at least one anomaly score")
        for name in names:
            try:
                spec = get_score(name)
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
            missing = [i for i in spec.inputs if i not in available_inputs]
            if missing:
                raise ValueError(
                    f"{key}: score '{name}' needs the model output(s) {', '.join(missing)}, which {model_name} does "
                    f"not produce (it produces {', '.join(available_inputs) or 'none'}; scores it supports: "
                    f"{', '.join(scores_for_inputs(available_inputs))})"
                )
        self.names = list(names)
        self.available_inputs = tuple(available_inputs)
        self.smoothing_kernel = int(smoothing_kernel)
        self.smoothing_sigma = float(smoothing_sigma)

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        available_inputs: Sequence[str],
        default_names: Sequence[str],
        default_smoothing_kernel: int = 0,
        model_name: str = "the model",
    ) -> Dict:
        names, kernel, sigma, key = resolve_score_config(cfg)
        return {
            "names": names if names is not None else list(default_names),
            "available_inputs": tuple(available_inputs),
            "smoothing_kernel": default_smoothing_kernel if kernel is None else kernel,
            "smoothing_sigma": sigma,
            "key": key,
            "model_name": model_name,
        }

    def score(self, name: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One score map ``(N x) H x W`` of the named outputs ``inputs``, smoothed if configured."""
        score = get_score(name)(inputs)
        if self.smoothing_kernel > 0:
            score = gaussian_smooth(score, self.smoothing_kernel, self.smoothing_sigma)
        return score

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> Dict[str, object]:
        """``{"ood_score": first score}`` plus, with several, ``{"ood_scores": {name: score}}``."""
        scores = {name: self.score(name, inputs) for name in self.names}
        result: Dict[str, object] = {PRIMARY_SCORE: scores[self.names[0]]}
        if len(scores) > 1:
            result[NAMED_SCORES] = scores
        return result
