"""Anomaly scores (one registry and one scorer for both meta-architectures) and the outlier-loss
math the loss terms of :mod:`rba_plugin.modeling.loss_terms` are built on."""
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .scorer import *  # noqa: F401,F403
from .scorer import __all__ as _scorer_all
from .scores import *  # noqa: F401,F403
from .scores import __all__ as _scores_all

__all__ = list(_scores_all) + list(_scorer_all) + list(_losses_all)
