"""The trainers layer: config/trainer pairs on one rollout path, and TRL's own trainers set up on the same terms.

* `rollout_config` / `rollout_trainer`: `RolloutConfig` and `RolloutTrainer`, the base that samples latents from the
  constrained policy and scores them with the frozen reward LM (no objective);
* `gflownet_config` / `gflownet_trainer`: `GFlowNetConfig`, `GFlowNetTrainer` (the objectives: `gfn_trl.losses`);
* `ppo_config` / `ppo_trainer`: `PPOConfig`, `PPOTrainer` (the paper's reward-maximising baseline);
* `async_sampling`: `AsyncGFlowNetConfig`, `AsyncGFlowNetTrainer` (sampler processes ahead of the learner, bounded
  staleness);
* `generation`: the seam between a trainer and what generates its latents (`GenerationBackend`, `DecodeLoop`);
* `trl_baselines`: TRL's GRPO, RLOO and SFT trainers on the GFlowNet's reward and latent space;
* `setup`: the one set-up of latent space, policy and reward that all of them (and the recipes) share;
* `batch`: the typed rollout batch passed from `_prepare_inputs` to `compute_loss`;
* `heads`, `checkpoints`, `zero3`, `validation`: the trainers' small parts.

Names are imported on first use (`from gfn_trl.trainers import GFlowNetTrainer`), so that importing one small module
(e.g. `gfn_trl.trainers.checkpoints`) does not load the trainers.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
_EXPORTS = {
    "RolloutConfig": "rollout_config",
    "RolloutTrainer": "rollout_trainer",
    "GFlowNetConfig": "gflownet_config",
    "GFlowNetTrainer": "gflownet_trainer",
    "PPOConfig": "ppo_config",
    "PPOTrainer": "ppo_trainer",
    "AsyncGFlowNetConfig": "async_sampling",
    "AsyncGFlowNetTrainer": "async_sampling",
    "GenerationBackend": "generation",
    "RolloutBatch": "batch",
    "PPOBatch": "batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gfn_trl.trainers' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
