"""PPO for autoregressive latents, as pure tensor functions (the paper's reward-maximising baseline).

A latent of n tokens is an episode of n + 1 actions: the tokens z_1..z_n taken in states s_0..s_{n-1}, then the
stop action ⊤ taken in s_n.  Every per-action tensor below is (B, A) with A = T + 1 columns (T the widest latent
of the batch); column t is the action taken in state s_t, and `mask` marks the columns t <= n of each row.

Dimension legend: B episodes, T longest latent, A = T + 1 actions.

References: Schulman et al. 2017 (clipped surrogate, value clipping), Schulman et al. 2016 (GAE), Ziegler et al.
2019 (per-token KL penalty to a reference policy, adaptive coefficient).
"""

from __future__ import annotations

import torch
from torch import Tensor


def action_mask(lengths: Tensor, num_actions: int) -> Tensor:
    """(B, A) bool: column t is a real action iff t <= n (n tokens, then the stop)."""
    return torch.arange(num_actions, device=lengths.device)[None, :] <= lengths[:, None]


def action_log_probs(log_pf: Tensor, log_pterm: Tensor, lengths: Tensor) -> Tensor:
    """(B, A) log q(a_t | s_t) of the actions taken: the token z_{t+1} for t < n, the stop ⊤ at t = n, 0 after.

    `log_pf` (B, T) and `log_pterm` (B, T + 1) are as returned by `gfn_trl.sampling.policy_log_probs`.
    """
    B, T = log_pf.shape
    t = torch.arange(T + 1, device=log_pf.device)[None, :]
    tokens = torch.cat([log_pf, log_pf.new_zeros(B, 1)], dim=1)
    out = torch.where(t < lengths[:, None], tokens, log_pterm)
    return torch.where(t <= lengths[:, None], out, torch.zeros_like(out))


def kl_penalised_rewards(
    final_reward: Tensor, log_q: Tensor, log_q_ref: Tensor, lengths: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-action rewards r_t = -β (log q(a_t|s_t) - log q_ref(a_t|s_t)), plus the episode's reward at its last action.

    Returns (rewards (B, A), per-sequence KL estimate Σ_t (log q - log q_ref) (B,)).
    """
    mask = action_mask(lengths, log_q.shape[1])
    kl = torch.where(mask, log_q - log_q_ref, torch.zeros_like(log_q))
    rewards = -kl_coef * kl
    rewards = rewards.scatter_add(1, lengths[:, None], final_reward[:, None].to(rewards.dtype))
    return rewards, kl.sum(1)


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over contiguous episodes (masks are prefixes; the episode ends after them).

        δ_t = r_t + γ V(s_{t+1}) - V(s_t)        (V after the last action is 0: the episode has terminated)
        A_t = δ_t + γ λ A_{t+1}                  returns R_t = A_t + V(s_t)

    Returns (advantages, returns), both (B, A) and 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    B, A = rewards.shape
    advantages = torch.zeros_like(values)
    running = values.new_zeros(B)
    for t in reversed(range(A)):
        alive_next = mask[:, t + 1] if t + 1 < A else values.new_zeros(B)
        next_value = values[:, t + 1] * alive_next if t + 1 < A else values.new_zeros(B)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * alive_next * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (0 outside the mask)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return torch.where(mask.bool(), (x - mean) * torch.rsqrt(var + eps), torch.zeros_like(x))


def clipped_surrogate_loss(
    log_q: Tensor, log_q_old: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor]:
    """PPO's policy loss: mean over actions of max(-A ρ, -A clip(ρ, 1-ε, 1+ε)), ρ = q / q_old.

    Returns (loss, fraction of actions where the clipped term was the active one).
    """
    ratio = torch.exp(log_q - log_q_old)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(log_q.dtype), mask)
    return loss, clipfrac


def clipped_value_loss(
    values: Tensor, values_old: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> Tensor:
    """½ mean over actions of max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε_v)."""
    clipped = values_old + (values - values_old).clamp(-cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, num_sequences: int) -> float:
    """Ziegler et al.'s proportional controller: β ← β (1 + clip(KL/target - 1, ±0.2) · n / horizon)."""
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * num_sequences / horizon)
