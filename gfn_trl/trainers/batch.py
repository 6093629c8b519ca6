"""The typed rollout batch that a trainer's `_prepare_inputs` builds and its `compute_loss` reads.

Dimension legend: B = latents in the micro-batch (prompts × `num_generations`), P = the widest prompt, T = the widest
latent, S = T + 1 states, A = T + 1 actions (PPO).

The HF Trainer passes the batch from `_prepare_inputs` to `compute_loss` untouched (`training_step`); nothing in HF
or TRL iterates it.  Reading by key (`batch["z"]`, `batch.get("z")`) still works, as on the dicts these replace.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass(kw_only=True)
class RolloutBatch:
    """Latents sampled (or replayed) for a micro-batch, with their untempered rewards.

    Attributes:
        prompt_ids: (B, P) left-padded policy prompts; `prompt_mask` (B, P) their attention mask.
        z: (B, T) latent token ids, right-padded with the stop token; `lengths` (B,) their lengths n.
        log_r: (B, S) untempered log R(s_k ⊤) of every prefix (GFlowNet), or the final log R(Z ⊤) at column n and 0
            elsewhere (PPO); float32.
        group: (B,) the index of each latent's prompt within the micro-batch (the per-prompt log Z estimate).
        rows: the B tokenized dataset rows (each prompt's row repeated `num_generations` times).
        behaviour: how the latents were obtained: "on_policy", "tempered" or "replay".
        temperature: the sampling temperature of fresh latents (1.0 for on-policy and replayed ones).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    z: torch.Tensor
    lengths: torch.Tensor
    log_r: torch.Tensor
    group: torch.Tensor
    rows: list[dict]
    behaviour: str = "on_policy"
    temperature: float = 1.0

    # Read access by key, as on the dict this replaces (tests and user code index the batch)
    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (shallow), e.g. to save in a checkpoint loadable with `weights_only=True`."""
        return {name: getattr(self, name) for name in self.keys()}


@dataclass(kw_only=True)
class PPOBatch(RolloutBatch):
    """A PPO rollout, reused for `num_ppo_epochs` optimizer steps (`log_r`: the final reward at column n only).

    Attributes:
        step: the optimizer step that sampled it.
        old_log_probs: (B, A) log q(a_t | s_t) of the actions taken, at sampling time.
        values: (B, A) the value head's V(s_t) at sampling time (0 outside `mask`).
        advantages: (B, A) GAE advantages (whitened with `whiten_advantages`); `returns` (B, A) A_t + V(s_t).
        mask: (B, A) bool, the real actions (t <= n).
        metrics: the rollout's metrics (reward, length, KL), logged at every step that reuses it.
    """

    step: int
    old_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
