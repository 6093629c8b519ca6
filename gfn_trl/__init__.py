"""gfn_trl: GFlowNet fine-tuning of language models on Hugging Face TRL (Hu et al., ICLR 2024)."""

from .config import GFlowNetConfig, PPOConfig, RolloutConfig
from .losses import batch_log_z, modified_db_loss, modified_subtb_loss, tb_loss
from .ppo_trainer import PPOTrainer
from .replay import ReplayBuffer
from .rewards import prefix_log_rewards
from .rollout import RolloutTrainer
from .sampling import LatentConstraints
from .trainer import GFlowNetTrainer

__version__ = "0.1.0"

__all__ = [
    "GFlowNetConfig",
    "GFlowNetTrainer",
    "LatentConstraints",
    "PPOConfig",
    "PPOTrainer",
    "ReplayBuffer",
    "RolloutConfig",
    "RolloutTrainer",
    "batch_log_z",
    "modified_db_loss",
    "modified_subtb_loss",
    "prefix_log_rewards",
    "tb_loss",
]
