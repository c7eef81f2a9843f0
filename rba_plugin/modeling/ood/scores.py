"""Anomaly scores, one registry for both meta-architectures. Higher = more anomalous.

A score is a function registered with the named model outputs it reads (its *inputs*). Every
meta-architecture publishes, per image, a dict of such named outputs (see
:data:`SCORE_INPUTS`); :class:`rba_plugin.modeling.ood.AnomalyScorer` checks at build time that the
model produces every input of every configured score and applies them at inference.

Maps follow Detectron2's layout with the channel dimension third from last: ``C x H x W`` or
``N x C x H x W`` in, ``H x W`` or ``N x H x W`` out. ``class_scores`` are the semantic scores
L = sum_q softmax(class_q)[:C] * sigmoid(mask_q) on Mask2Former (so 0 <= L_k <= Q) and the
closed-set logits on per-pixel models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry

__all__ = [
    "OOD_SCORE_REGISTRY",
    "SCORE_INPUTS",
    "ScoreSpec",
    "register_score",
    "available_scores",
    "get_score",
    "get_score_function",
    "compute_ood_score",
    "densehybrid_score",
    "densehybrid_official_score",
    "gaussian_smooth",
    "gaussian_kernel2d",
]

# The named model outputs scores read, with what each holds (per image, channel first).
SCORE_INPUTS: Dict[str, str] = {
    "class_scores": "C x H x W closed-set class scores (Mask2Former's L, or per-pixel logits)",
    "outlier_logits": "2 x H x W logits of a dataset-posterior head (DenseHybrid; channel 1 = outlier)",
    "open_set_logits": "(C+1) x H x W logits whose last channel is the unknown class (VCA)",
    "region_similarity": "1 x H x W similarity P(R) of each pixel's region to the known prototypes (RAML)",
}


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: ``fn(**{input: tensor})`` over the named model outputs ``inputs``."""

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: Tuple[str, ...]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(*(inputs[key] for key in self.inputs))


OOD_SCORE_REGISTRY = Registry("OOD_SCORE")
OOD_SCORE_REGISTRY.__doc__ = """
Anomaly scores (:class:`ScoreSpec`), registered under their config name with
:func:`register_score`. Higher = more anomalous.
"""

_CLASS_DIM = -3


def register_score(name: str, inputs: Sequence[str] = ("class_scores",)) -> Callable:
    """Decorator registering ``fn(*maps) -> score`` as the score ``name`` over the model outputs
    ``inputs`` (passed positionally, in this order). New input names must be published by the
    model that provides them (see :data:`SCORE_INPUTS` for the built-in ones)."""

    def decorator(fn: Callable) -> Callable:
        OOD_SCORE_REGISTRY._do_register(name, ScoreSpec(name, fn, tuple(inputs)))
        return fn

    return decorator


@register_score("rba")
def rba_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Rejected by All (RbA paper Eq. 5): -sum_k tanh(L_k). In [-C, 0]; near 0 where no class
    claims the pixel."""
    return -torch.tanh(class_scores).sum(_CLASS_DIM)


@register_score("maxlogit")
def maxlogit_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-max_k L_k (Hendrycks et al., max logit)."""
    return -class_scores.max(_CLASS_DIM).values


@register_score("msp")
def msp_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-max_k softmax(L)_k (maximum softmax probability), in [-1, -1/C]."""
    return -F.softmax(class_scores, _CLASS_DIM).max(_CLASS_DIM).values


@register_score("entropy")
def entropy_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(L) in nats, in [0, log C]."""
    log_p = F.log_softmax(class_scores, _CLASS_DIM)
    return -(log_p.exp() * log_p).sum(_CLASS_DIM)


@register_score("energy")
def energy_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Free energy -logsumexp_k L_k (PEBAL Eq. 4; RPL's score on its residual-path logits)."""
    return -torch.logsumexp(class_scores, _CLASS_DIM)


@register_score("neg_logit_sum")
def neg_logit_sum_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-sum_k L_k (RbA without the tanh; RbA's OUTLIER_LOSS_TARGET "nls" with SCORE_NORM "none")."""
    return -class_scores.sum(_CLASS_DIM)


@register_score("neg_sigmoid_sum")
def neg_sigmoid_sum_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-sum_k sigmoid(L_k) (RbA's OUTLIER_LOSS_TARGET "nls" with SCORE_NORM "sigmoid")."""
    return -torch.sigmoid(class_scores).sum(_CLASS_DIM)


@register_score("densehybrid", inputs=("class_scores", "outlier_logits"))
def densehybrid_score(class_scores: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
    """DenseHybrid's hybrid score log p(outlier | x) - log p_hat(x) = log softmax(outlier
    logits)_1 - logsumexp_k L_k (DenseHybrid ``THKLOODEvaluation.compute_ood_probs``).

    Args:
        class_scores: (N x) C x H x W.
        outlier_logits: (N x) 2 x H x W from the outlier head; channel 1 is "outlier".
    """
    log_p_outlier = F.log_softmax(outlier_logits, _CLASS_DIM).select(_CLASS_DIM, 1)
    return log_p_outlier - torch.logsumexp(class_scores, _CLASS_DIM)


@register_score("densehybrid_official", inputs=("class_scores", "outlier_logits"))
def densehybrid_official_score(class_scores: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
    """DenseHybrid's score exactly as its test code computes it,
    ``-logsumexp(logits, 1) + log(softmax(logits_ood, 1)[:, 1])`` with no epsilon
    (``evaluations/evaluations.py`` ``THKLOODEvaluation.compute_ood_probs``, matejgrcic/DenseHybrid
    @ 742ceab). The same quantity as ``densehybrid``, which takes ``log_softmax`` instead: they
    agree to float rounding, but this one is ``-inf`` where the outlier probability underflows to 0
    (a logit gap above ~100 in float32).

    Args:
        class_scores: (N x) C x H x W closed-set logits.
        outlier_logits: (N x) 2 x H x W dataset-posterior logits; channel 1 is "outlier".
    """
    p_outlier = F.softmax(outlier_logits, _CLASS_DIM).select(_CLASS_DIM, 1)
    return -torch.logsumexp(class_scores, _CLASS_DIM) + p_outlier.log()


@register_score("unknown_probability", inputs=("open_set_logits",))
def unknown_probability_score(open_set_logits: torch.Tensor) -> torch.Tensor:
    """softmax(open-set logits) of the unknown class (the last channel), in [0, 1] (VCA's open-set
    prototype classifier)."""
    return F.softmax(open_set_logits, _CLASS_DIM).select(_CLASS_DIM, open_set_logits.shape[_CLASS_DIM] - 1)


@register_score("raml", inputs=("class_scores", "region_similarity"))
def raml_score(class_scores: torch.Tensor, region_similarity: torch.Tensor) -> torch.Tensor:
    """RAML paper Eq. 5: Q = -max_l U_l * P(R) with P(R) the similarity of the pixel's region to
    the known prototypes (1 outside every region, i.e. the max-logit score there)."""
    return -class_scores.max(_CLASS_DIM).values * region_similarity.select(_CLASS_DIM, 0)


def available_scores() -> List[str]:
    """Names of every registered score, sorted."""
    return sorted(name for name, _ in OOD_SCORE_REGISTRY)


def get_score(name: str) -> ScoreSpec:
    """The registered score ``name``; a ValueError lists the known names otherwise."""
    if name not in OOD_SCORE_REGISTRY:
        raise ValueError(f"unknown anomaly score '{name}'; known scores: {', '.join(available_scores())}")
    return OOD_SCORE_REGISTRY.get(name)


def get_score_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function of a registered score that reads the class scores alone."""
    spec = get_score(name)
    if spec.inputs != ("class_scores",):
        raise ValueError(f"anomaly score '{name}' reads {', '.join(spec.inputs)}, not the class scores alone")
    return spec.fn


def gaussian_kernel2d(kernel_size: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """k x k Gaussian kernel, computed as torchvision's ``gaussian_blur`` computes it."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = pdf / pdf.sum()
    return torch.mm(kernel1d[:, None], kernel1d[None, :])


def gaussian_smooth(score: torch.Tensor, kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of an ``(N x) H x W`` score map with torchvision's ``gaussian_blur``
    arithmetic (its kernel, reflect padding, one convolution), as the official RPL / PEBAL test
    code applies ``transforms.GaussianBlur(7, 1)``. Written out with a one-channel kernel of fixed
    shape so that an exported graph can hold it (torchvision sizes its kernel from the input)."""
    if score.dim() not in (2, 3):
        raise ValueError(f"gaussian_smooth: expected H x W or N x H x W, got shape {tuple(score.shape)}")
    kernel = gaussian_kernel2d(kernel_size, sigma, score.dtype, score.device)[None, None]
    half = kernel_size // 2
    maps = score.reshape(-1, 1, score.shape[-2], score.shape[-1])
    blurred = F.conv2d(F.pad(maps, [half, half, half, half], mode="reflect"), kernel)
    return blurred.reshape(score.shape)


def compute_ood_score(
    name: str,
    class_scores: torch.Tensor,
    smoothing: bool = False,
    kernel_size: int = 7,
    sigma: float = 1.0,
) -> torch.Tensor:
    """The registered class-score score ``name`` of ``class_scores`` ((N x) C x H x W) and,
    optionally, Gaussian smoothing; returns (N x) H x W, higher = more anomalous.

    Raises:
        ValueError: unknown name, a score that needs other inputs, or a wrong shape.
    """
    if class_scores.dim() not in (3, 4):
        raise ValueError(
            f"compute_ood_score: class scores must be C x H x W or N x C x H x W, got {tuple(class_scores.shape)}"
        )
    score = get_score_function(name)(class_scores)
    if smoothing:
        score = gaussian_smooth(score, kernel_size, sigma)
    return score
