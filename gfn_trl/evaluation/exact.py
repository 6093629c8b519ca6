"""Exact distributions over short latents, by enumeration: the ground truth for tests and benchmarks.

With a small latent vocabulary and a short maximum length every latent Z can be listed, so the true posterior
p(Z | X[, Y]) ∝ R(Z) and the policy's own q(Z ⊤) can be computed exactly and compared (total variation, KL).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..rewards import prefix_log_rewards
from ..sampling import LatentConstraints, latent_batch, left_pad, policy_log_probs


def enumerate_latents(token_ids: list[int], min_length: int, max_length: int) -> list[list[int]]:
    """Every latent of length min_length..max_length over `token_ids` (the empty one too if min_length == 0)."""
    return [list(z) for n in range(min_length, max_length + 1) for z in itertools.product(token_ids, repeat=n)]


@torch.no_grad()
def exact_log_rewards(model, reward_prompt_ids, latents, stop_id, pad_id, suffix_ids=None) -> torch.Tensor:
    """(N,) float32 untempered log R(Z ⊤) (natural log) of every latent, given as token id lists without the stop,
    after one reward prompt (and one suffix: `suffix_ids`, else the stop-token reward): `prefix_log_rewards` at
    k = n."""
    z, lengths = latent_batch(latents, stop_id, next(model.parameters()).device)
    n = len(latents)
    log_r = prefix_log_rewards(
        model, [reward_prompt_ids] * n, z, lengths, stop_id, pad_id, None if suffix_ids is None else [suffix_ids] * n
    )
    return log_r.gather(1, lengths[:, None]).squeeze(1)


@torch.no_grad()
def exact_policy_log_probs(model, prompt_ids, latents, constraints: LatentConstraints, pad_id) -> torch.Tensor:
    """(N,) log q(Z ⊤) (natural log) of every latent under the constrained policy at temperature 1, after
    one prompt: Σ_k log q(z_k | s_{k-1}) + log q(⊤ | s_n), from `gfn_trl.sampling.policy_log_probs`."""
    device = next(model.parameters()).device
    z, lengths = latent_batch(latents, constraints.stop_token_id, device)
    p_ids, p_mask = left_pad([prompt_ids] * len(latents), pad_id, device)
    log_pf, log_pterm = policy_log_probs(model, p_ids, p_mask, z, lengths, constraints)
    return log_pf.sum(1) + log_pterm.gather(1, lengths[:, None]).squeeze(1)


def tv_and_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    """Total variation and KL(p || q) (nats) between two distributions given by (N,) (possibly unnormalised)
    natural-log masses over the same N outcomes; KL is inf where q misses mass of p."""
    p = torch.softmax(log_p.double(), 0)
    log_q = torch.log_softmax(log_q.double(), 0)
    tv = 0.5 * (p - log_q.exp()).abs().sum().item()
    kl = (p * (p.clamp_min(1e-300).log() - log_q)).sum().item()
    return tv, kl if math.isfinite(kl) else float("inf")
