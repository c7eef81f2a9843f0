"""Registered loss terms of both branches (see :mod:`.base` for the interface). Importing this
package registers the built-in terms; the order of the modules is the order of RbA's aliased
terms in Mask2Former's loss dict."""
from .base import (
    LOSS_TERM_REGISTRY,
    LossTerm,
    PixelTargets,
    aliased_term_names,
    build_loss_terms,
    check_choice,
    check_term_inputs,
    register_term_alias,
    resolve_form,
)
from . import outlier, pebal, densehybrid  # noqa: F401,E402  (registration, in RbA's order)
from . import sem_seg, rpl, raml, vca  # noqa: F401,E402  (per-pixel methods' terms)
from .densehybrid import *  # noqa: F401,F403,E402
from .outlier import *  # noqa: F401,F403,E402
from .pebal import *  # noqa: F401,F403,E402
from .raml import *  # noqa: F401,F403,E402
from .rpl import *  # noqa: F401,F403,E402
from .sem_seg import *  # noqa: F401,F403,E402
from .vca import *  # noqa: F401,F403,E402

__all__ = [
    "LOSS_TERM_REGISTRY",
    "LossTerm",
    "PixelTargets",
    "aliased_term_names",
    "build_loss_terms",
    "check_choice",
    "check_term_inputs",
    "register_term_alias",
    "resolve_form",
]
