"""Moved to `gfn_trl.trainers` (rollout_config, gflownet_config, ppo_config); kept so old imports work."""

from .trainers.gflownet_config import GFlowNetConfig
from .trainers.ppo_config import PPOConfig
from .trainers.rollout_config import MIN_TEMPERATURE, RolloutConfig, resolve_bf16

__all__ = ["MIN_TEMPERATURE", "GFlowNetConfig", "PPOConfig", "RolloutConfig", "resolve_bf16"]
