"""Moved to `gfn_trl.trainers.ppo_trainer`; kept so old imports work."""

from .trainers.ppo_trainer import PPOTrainer, ValueHead

__all__ = ["PPOTrainer", "ValueHead"]
