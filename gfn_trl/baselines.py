"""Moved to `gfn_trl.trainers.trl_baselines` (GRPO, RLOO, SFT) and `gfn_trl.evaluation.decoding` (decoding); kept so
old imports work."""

from .models import resolve_peft_config
from .trainers.trl_baselines import (
    LatentLogReward,
    build_grpo_trainer,
    build_rloo_trainer,
    build_sft_trainer,
    completion_to_latent,
    constrained_generation_kwargs,
    latent_constraints,
    sft_dataset,
)

# The decoders are imported on first use: `gfn_trl.evaluation.decoding` may itself import this module.
_DECODING = ("DECODING_METHODS", "beam_search", "decode")


def __getattr__(name: str):
    if name in _DECODING:
        from .evaluation import decoding

        return getattr(decoding, name)
    raise AttributeError(f"module 'gfn_trl.baselines' has no attribute {name!r}")


__all__ = [
    "LatentLogReward",
    "build_grpo_trainer",
    "build_rloo_trainer",
    "build_sft_trainer",
    "completion_to_latent",
    "constrained_generation_kwargs",
    "latent_constraints",
    "resolve_peft_config",
    "sft_dataset",
    *_DECODING,
]
