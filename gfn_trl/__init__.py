"""gfn_trl: GFlowNet fine-tuning of language models on Hugging Face TRL (Hu et al., ICLR 2024).

The public names are imported on first use, so that `import gfn_trl.cli` (the `gfn-trl` command and its `--help`)
does not load torch, transformers and TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "GFlowNetConfig": "trainers.gflownet_config",
    "PPOConfig": "trainers.ppo_config",
    "RolloutConfig": "trainers.rollout_config",
    "batch_log_z": "losses",
    "modified_db_loss": "losses",
    "modified_subtb_loss": "losses",
    "tb_loss": "losses",
    "PPOTrainer": "trainers.ppo_trainer",
    "ReplayBuffer": "replay",
    "prefix_log_rewards": "rewards.likelihood",
    "RolloutTrainer": "trainers.rollout_trainer",
    "LatentConstraints": "sampling",
    "GFlowNetTrainer": "trainers.gflownet_trainer",
    "AsyncGFlowNetConfig": "trainers.async_sampling",
    "AsyncGFlowNetTrainer": "trainers.async_sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gfn_trl' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs (the names are in __all__, built from _EXPORTS)
    from .losses import batch_log_z, modified_db_loss, modified_subtb_loss, tb_loss  # noqa: F401
    from .replay import ReplayBuffer  # noqa: F401
    from .rewards.likelihood import prefix_log_rewards  # noqa: F401
    from .sampling import LatentConstraints  # noqa: F401
    from .trainers.async_sampling import AsyncGFlowNetConfig, AsyncGFlowNetTrainer  # noqa: F401
    from .trainers.gflownet_config import GFlowNetConfig  # noqa: F401
    from .trainers.gflownet_trainer import GFlowNetTrainer  # noqa: F401
    from .trainers.ppo_config import PPOConfig  # noqa: F401
    from .trainers.ppo_trainer import PPOTrainer  # noqa: F401
    from .trainers.rollout_config import RolloutConfig  # noqa: F401
    from .trainers.rollout_trainer import RolloutTrainer  # noqa: F401
