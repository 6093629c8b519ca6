"""The small trainable heads outside the policy: the learned log Z (GFlowNet) and the value function (PPO).

Both are one `ScalarHead`: a linear map of the policy's layer-normalised, detached hidden states, registered with
`RolloutTrainer.register_head` (own learning rate, no weight decay, saved in checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn


class ScalarHead(nn.Module):
    """A scalar per hidden state: linear(LayerNorm(h) / sqrt(H)), zero-initialised.

    The features are layer-normalised (no affine) and scaled by 1/sqrt(H) so that one Adam step moves the output by
    about the learning rate whatever the width H.  The caller detaches the hidden states, so the head's loss does not
    reach the policy.  The `initialized` buffer is for the caller to set the bias from the first batch (log-likelihood
    scales are far from 0).

    Shapes: (..., H) -> (...).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., H) -> (...)
        return self.linear(self.norm(hidden) / hidden.shape[-1] ** 0.5).squeeze(-1)


class LogZHead(ScalarHead):
    """Prompt-conditioned log Z: the head at the hidden state of the last prompt token, (B, H) -> (B,).

    Its bias starts at the first batch's per-prompt estimate (`initialized`)."""


class ValueHead(ScalarHead):
    """V(s_t) at every state, (B, S, H) -> (B, S): a critic on the policy's features (the policy is trained by the
    surrogate alone).  Its bias starts at the first batch's mean return (`initialized`)."""
