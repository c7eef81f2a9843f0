"""rba_plugin: open-world semantic segmentation of driving scenes for Detectron2.

Importing the package registers its components with Detectron2's registries.
"""
from . import layers  # noqa: F401
from . import modeling  # noqa: F401
from .config import get_cfg  # noqa: F401

__version__ = "0.1.0"
