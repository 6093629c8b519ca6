"""Moved to `gfn_trl.trainers.trl_baselines` (GRPO, RLOO, SFT) and `gfn_trl.evaluation.decoding` (decoding); kept so
old imports work."""

from .evaluation.decoding import DECODING_METHODS, beam_search, decode
from .trainers import trl_baselines
from .trainers.trl_baselines import *  # noqa: F403 (the names of its __all__)

__all__ = [*trl_baselines.__all__, "DECODING_METHODS", "beam_search", "decode"]
