"""Anomaly scores and outlier losses shared by the mask-classification and per-pixel branches."""
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .scores import *  # noqa: F401,F403
from .scores import __all__ as _scores_all

__all__ = list(_scores_all) + list(_losses_all)
