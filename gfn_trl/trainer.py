"""Moved to `gfn_trl.trainers.gflownet_trainer`; kept so old imports work."""

from .trainers.gflownet_trainer import GFlowNetTrainer, LogZHead

__all__ = ["GFlowNetTrainer", "LogZHead"]
