"""Per-prefix log-rewards by ordinary forward passes: the reference the packed engine is tested against, and the
fallback for LMs on which packing is not exact (`gfn_trl.rewards.capability._packing_obstacle`).

Each function scores left-padded sequences `reward_prompt + z_1..z_k [+ Y]`, which every causal LM masks itself, so
the values are exact for any architecture: one pass per prefix length for a fixed suffix (`suffix_log_rewards_naive`,
n + 1 passes), one pass in all for the stop token (`stop_log_rewards_plain`).  Values are natural-log, untempered.

Dimension legend: B rows, T latent width, S = T + 1 states (prefix lengths k = 0..T), V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sampling import left_pad, position_ids_from_mask


def _token_log_probs(logits: Tensor, targets: Tensor, lse: Tensor | None = None) -> Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax: (..., V), (...) -> (...).

    `lse` (...), the logits' logsumexp, may be passed when several targets are read from the same logits."""
    logits = logits.float()
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets[..., None]).squeeze(-1) - lse


def _mask_states(log_r: Tensor, lengths: Tensor) -> Tensor:
    """States past each row's length get 0 (they are never used)."""
    S = log_r.shape[1]
    past = torch.arange(S, device=log_r.device)[None, :] > lengths[:, None]
    return log_r.masked_fill(past, 0.0)


@torch.no_grad()
def suffix_log_rewards_naive(
    model,
    prompt_ids: list[list[int]],
    z: Tensor,
    lengths: Tensor,
    suffix_ids: list[list[int]],
    pad_token_id: int,
    final_only: bool = False,
) -> Tensor:
    """Reference implementation: one ordinary forward pass per prefix length k (n + 1 passes).

    Args:
        prompt_ids: per row, the reward prompt's token ids.
        z, lengths: (B, T) latents right-padded (any pad), (B,) their lengths n.
        suffix_ids: per row, the suffix Y's token ids (at least one).
        final_only: one pass, for k = n only (the other states are 0).

    Returns:
        (B, S) float32 log p(z_1..z_k Y | prompt), natural log, untempered; 0 past each row's length.
    """
    B, T = z.shape
    out = torch.zeros(B, T + 1, device=z.device)
    for ks in [lengths.tolist()] if final_only else [[k] * B for k in range(T + 1)]:
        rows = [prompt_ids[b] + z[b, :k].tolist() + suffix_ids[b] for b, k in enumerate(ks)]
        ids, mask = left_pad(rows, pad_token_id, z.device)
        scored = [k + len(suffix_ids[b]) for b, k in enumerate(ks)]  # the latent prefix and the suffix, per row
        keep = max(scored) + 1  # left-padded: the scored tokens end every row; logits only where they are read
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=False, logits_to_keep=keep).logits[:, -keep:]
        lp = _token_log_probs(logits[:, :-1], ids[:, 1 - keep:])  # (B, keep-1): log p(token | the ones before)
        for b, k in enumerate(ks):
            out[b, k] = lp[b, keep - 1 - scored[b]:].sum()
    return _mask_states(out, lengths)


@torch.no_grad()
def stop_log_rewards_plain(
    model, prompt_ids: list[list[int]], z: Tensor, lengths: Tensor, stop_token_id: int, pad_token_id: int
) -> Tensor:
    """(B, S) float32 log p(z_1..z_k ⊤ | prompt), natural log, untempered, 0 past each row's length, by one ordinary
    pass over the left-padded [prompt z_1..z_T]: the logits at s_k give log p(⊤ | s_k), and log p(z_1..z_k | prompt)
    is a running sum.  Exact for any causal LM.  `z`, `lengths`: (B, T) right-padded latents, (B,) their lengths."""
    T = z.shape[1]
    ids, mask = left_pad([prompt_ids[b] + z[b].tolist() for b in range(z.shape[0])], pad_token_id, z.device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, logits_to_keep=T + 1).logits[:, -(T + 1):]  # (B, S, V): next-token logits at s_k
    lse = torch.logsumexp(logits.float(), dim=-1)
    log_stop = _token_log_probs(logits, torch.full_like(lse, stop_token_id, dtype=torch.long), lse)  # (B, S)
    log_z = _token_log_probs(logits[:, :-1], z, lse[:, :-1])  # (B, T): log p(z_k | s_{k-1})
    prefix = torch.cat([torch.zeros_like(log_stop[:, :1]), log_z.cumsum(1)], dim=1)  # (B, S)
    return _mask_states(prefix + log_stop, lengths)


def _plain_log_rewards_sets(
    model, prompt_ids: list[list[int]], z: Tensor, lengths: Tensor, stop_token_id: int, pad_token_id: int,
    suffix_sets: list[list[list[int]] | None], final_only: bool = False,
) -> list[Tensor]:
    """Per suffix set (None: the stop token), the (B, S) untempered log-rewards by ordinary passes: the per-prefix
    fallback of `gfn_trl.rewards.likelihood` for LMs the packed layout would get wrong."""
    return [
        stop_log_rewards_plain(model, prompt_ids, z, lengths, stop_token_id, pad_token_id) if suffixes is None
        else suffix_log_rewards_naive(model, prompt_ids, z, lengths, suffixes, pad_token_id, final_only)
        for suffixes in suffix_sets
    ]
