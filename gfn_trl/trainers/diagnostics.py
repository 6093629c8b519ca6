"""Training diagnostics of a rollout batch, as pure tensor functions: what the trainers log besides the loss.

What a healthy run looks like in these numbers is in the README ("What a healthy run looks like").

Dimension legend (as in `gfn_trl.losses`):
    B  latents in the batch (prompts × `num_generations`)
    T  longest latent in the batch (tokens; the stop action excluded)
    S  = T + 1 states s_0 .. s_T
    K  window-length bins of the SubTB residual (`window_bins`)

Inputs (natural logs; the policy at temperature 1, under the constraints that are sampled):
    log_pf     (B, T)  log q(z_k | s_{k-1}) of the token taken (0 at a tool's forced tokens and past the latent)
    log_pterm  (B, S)  log q(⊤ | s_i) (0 at the maximum length, where the stop is forced)
    log_r      (B, S)  log R(s_i ⊤) / T_R, the tempered log-reward the loss sees
    lengths    (B,)    n, the latent's length
    z          (B, T)  latent token ids; `group` (B,) the index of each latent's prompt
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import state_potentials


def sequence_log_prob(log_pf: Tensor, log_pterm: Tensor, lengths: Tensor) -> Tensor:
    """(B,) log q(Z ⊤) = Σ_{k<=n} log q(z_k | s_{k-1}) + log q(⊤ | s_n), the policy's log-probability of each whole
    latent with its stop (natural log; 0 contributed by forced tokens and by the forced stop at the maximum length).

    Raises:
        ValueError: if the shapes are not (B, T), (B, T + 1), (B,).
    """
    B, T = log_pf.shape
    if log_pterm.shape != (B, T + 1) or lengths.shape != (B,):
        raise ValueError(f"Shape mismatch: log_pf {tuple(log_pf.shape)} must be (B, T), log_pterm "
                         f"{tuple(log_pterm.shape)} (B, T+1) and lengths {tuple(lengths.shape)} (B,).")
    taken = torch.arange(1, T + 1, device=log_pf.device)[None, :] <= lengths[:, None]  # (B, T)
    return torch.where(taken, log_pf, torch.zeros_like(log_pf)).sum(1) + log_pterm.gather(1, lengths[:, None])[:, 0]


def stop_banned_below(log_pf: Tensor, log_pterm: Tensor, min_length: int) -> tuple[Tensor, Tensor]:
    """The same policy with the stop action removed from the states s_0 .. s_{min_length-1} and the other actions
    renormalised there: ((B, T), (B, S)).  Turns the log-probabilities of a loss that keeps the unconstrained stop
    below the minimum length (`min_length_mode="penalize"`, the authors' construction) into those of the policy that
    is sampled: log q'(z | s) = log q(z | s) - log(1 - q(⊤ | s)), log q'(⊤ | s) = -inf."""
    S = log_pterm.shape[1]
    below = torch.arange(S, device=log_pterm.device) < min_length  # (S,)
    log_keep = torch.log(-torch.expm1(log_pterm.clamp(max=0)))  # (B, S): log(1 - q(⊤ | s))
    log_pf = log_pf - torch.where(below[None, :-1], log_keep[:, :-1], torch.zeros_like(log_keep[:, :-1]))
    log_pterm = torch.where(below[None, :], torch.full_like(log_pterm, float("-inf")), log_pterm)
    return log_pf, log_pterm


def sequence_entropy(log_pf: Tensor, log_pterm: Tensor, lengths: Tensor) -> Tensor:
    """Scalar -mean_b log q(Z_b ⊤), in nats.

    For latents sampled from q itself (on-policy, temperature 1) this is an unbiased Monte-Carlo estimate of the
    entropy of q over whole latents, H(q) = -E_{Z~q}[log q(Z ⊤)] (its standard error is the standard deviation of
    log q(Z ⊤) over sqrt(B)).  For latents from another distribution b (tempered sampling, the replay buffer) it
    estimates the cross-entropy E_{Z~b}[-log q(Z ⊤)] = H(b) + KL(b || q) instead, which is not H(q): the trainers
    log the entropy from on-policy batches only.
    """
    return -sequence_log_prob(log_pf, log_pterm, lengths).mean()


def clipped_ratio(lengths: Tensor, max_length: int) -> Tensor:
    """Scalar share of latents that reached `max_length` tokens, where the stop is forced (TRL's
    `completions/clipped_ratio`): for on-policy samples, an estimate of q(|Z| = max_length)."""
    return (lengths == max_length).float().mean()


def distinct_per_prompt(z: Tensor, lengths: Tensor, group: Tensor) -> Tensor:
    """Scalar mean over prompts of the number of distinct latents among that prompt's samples (1 = every sample of
    a prompt is the same latent: a collapsed policy; `num_generations` = all different).

    For on-policy samples its expectation is Σ_Z 1 - (1 - q(Z))^k for k samples of a prompt."""
    per_prompt: dict[int, set] = {}
    for row, n, g in zip(z.tolist(), lengths.tolist(), group.tolist()):
        per_prompt.setdefault(g, set()).add(tuple(row[:n]))
    if not per_prompt:
        return torch.tensor(float("nan"))
    return torch.tensor(sum(len(s) for s in per_prompt.values()) / len(per_prompt))


def window_bins(max_length: int) -> list[tuple[int, int, str]]:
    """The window-length bins of the SubTB residual: [(lowest, highest, name)] with edges at powers of 4, i.e. lengths
    1 | 2-4 | 5-16 | 17-64 | ..., up to the longest window (`max_length`).

    Why these: length-1 windows are the local (detailed-balance) constraints; a window of length L sums L per-step
    errors, so its squared residual tends to grow with L, and bins that widen geometrically keep the number of curves
    logarithmic in the maximum length (4 bins at the paper's 25 tokens) while separating short from long windows.
    Names are the nominal ranges ("17-64" even when `max_length` is 25), so that runs compare.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    bins, low, high = [(1, 1, "1")], 2, 4
    while low <= max_length:
        bins.append((low, high, f"{low}-{high}"))
        low, high = high + 1, high * 4
    return bins


def subtb_residual_sums(
    log_pf: Tensor,
    log_pterm: Tensor,
    log_r: Tensor,
    lengths: Tensor,
    bins: list[tuple[int, int, str]],
    min_length: int = 0,
    log_z: Tensor | None = None,
    terminable: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-bin sums of squared SubTB residuals and window counts: ((K,), (K,)) float64.

    The residual of a window 0 <= i < j <= n is the bracket of Hu et al. 2024, eq. 3 (the modified SubTB),

        log R(s_i ⊤) + Σ_{k=i+1..j} log q(z_k | s_{k-1}) + log q(⊤ | s_j) - log R(s_j ⊤) - log q(⊤ | s_i),

    over the windows the loss uses (both ends have a flow, j can stop; s_0's flow is `log_z` when it cannot stop:
    `gfn_trl.losses.state_potentials`), unweighted by λ.  It is 0 on every window exactly when q satisfies the
    balance conditions, i.e. samples the posterior q(Z ⊤) ∝ R(Z ⊤).  Bin k holds the windows with
    bins[k][0] <= j - i <= bins[k][1].  Sums and counts (not means) so that they can be added over micro-batches
    and processes; the mean squared residual of a bin is sum / count.

    Raises:
        ValueError: on the shape errors of `gfn_trl.losses.state_potentials`, or when s_0 cannot stop and `log_z`
            is None.
    """
    u, has_flow, terminal = state_potentials(log_pf, log_pterm, log_r, lengths, min_length, log_z, terminable)
    u = u.detach().double()
    if not bins:
        return u.new_zeros(0), u.new_zeros(0)
    S = u.shape[1]
    idx = torch.arange(S, device=u.device)
    width = idx[None, :] - idx[:, None]  # (S, S): j - i of window (i, j)
    valid = (width >= 1)[None] & has_flow[:, :, None] & terminal[:, None, :]  # (B, S, S)
    squared = (u[:, :, None] - u[:, None, :]).pow(2)  # (B, S, S)
    squared = torch.where(valid, squared, torch.zeros_like(squared))
    sums, counts = [], []
    for low, high, _ in bins:
        in_bin = valid & ((width >= low) & (width <= high))[None]  # (B, S, S)
        sums.append((squared * in_bin).sum())
        counts.append(in_bin.sum().double())
    return torch.stack(sums), torch.stack(counts)
