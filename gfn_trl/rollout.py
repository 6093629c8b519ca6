"""Moved to `gfn_trl.trainers.rollout_trainer`; kept so old imports work."""

from .trainers.rollout_trainer import RolloutTrainer, logger

__all__ = ["RolloutTrainer", "logger"]
