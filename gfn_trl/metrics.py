"""Moved to `gfn_trl.evaluation.text_metrics`; kept so old imports work."""

from .evaluation.text_metrics import *  # noqa: F403 (the public names, as listed in its __all__)
from .evaluation.text_metrics import __all__  # noqa: F401
