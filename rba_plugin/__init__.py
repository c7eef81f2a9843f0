"""rba_plugin: open-world semantic segmentation of driving scenes for Detectron2.

Importing the package registers its components with Detectron2's registries.
"""
import warnings

# detectron2 0.7 decorates helpers with torch.jit.script, which torch 2.14 flags as deprecated at
# import time; the message is about detectron2, not about anything a user of the plugin can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import layers  # noqa: F401
from . import modeling  # noqa: F401
from .config import get_cfg  # noqa: F401

__version__ = "0.1.0"
