"""GFlowNet objectives for autoregressive latents, as pure tensor functions, and the registry of objectives.

The objectives (each cited where it is defined):
    "subtb"  modified subtrajectory balance (Hu et al. 2024, eq. 3; SubTB: Madan et al. 2023)
    "tb"     trajectory balance (Malkin et al. 2022)
    "db"     modified detailed balance (Deleu et al. 2022; DB: Bengio et al. 2023)
and the per-prompt batch estimate of log Z (`batch_log_z`; VarGrad: Richter et al. 2020, used for GFlowNets by
Zhang et al. 2023).  `OBJECTIVES` maps a `GFlowNetConfig.loss_type` to its `Objective`: the loss in one signature,
and what it needs (log Z always, never or only when s_0 cannot stop; which windows the batch log Z estimate fits).
A new objective is one function registered with `register_objective` (and its test); the config's choices, its
validation and the trainer's dispatch read the registry.

Dimension legend (used in the shape comments):
    B  trajectories in the batch
    T  longest latent in the batch (number of latent tokens, the stop action excluded)
    S  = T + 1 states s_0 .. s_T, where s_i = z_1..z_i and s_0 is the empty latent

Inputs shared by every loss (all in natural-log space, untempered policy, tempered reward):
    log_pf     (B, T)    log q(z_k | s_{k-1}) of the token actually taken, k = 1..T (column k-1)
    log_pterm  (B, S)    log q(⊤ | s_i), the policy's stop log-probability at every state
    log_r      (B, S)    log R(s_i ⊤) / T_R, the tempered log-reward of stopping at s_i
    lengths    (B,)      n, the number of latent tokens before the stop action (n <= T)
    terminable (B, S)    optional bool: the constrained policy may stop at s_i (False where a tool is writing
                         forced tokens, `gfn_trl.tools`); combined with the `min_length` rule

Entries past a trajectory's length are ignored (they may hold anything finite or not).

Flows.  In the paper's modified SubTB every state can terminate, so the flow through a state is
F(s) = R(s⊤) / q(⊤|s) and no partition function is needed (Hu et al. 2024, eq. 3).  A state that
cannot terminate (shorter than `min_length`, or in the middle of a tool's output) has no such flow.
Two constructions for the states below the minimum length (`GFlowNetConfig.min_length_mode`):
  "ban_stop" (ours, the default): the policy in the loss is the constrained one that is actually sampled (stop
      banned below `min_length` and while a tool writes), the flow of s_0 is log Z (a learned value or a per-prompt
      batch estimate), and windows that start or end at the other non-terminable states are skipped.  With
      `min_length == 0` this is exactly eq. 3.
  "penalize" (the authors' code): the sampler bans the stop below the minimum, but the loss keeps the policy's
      unconstrained stop probability there, gives those states a fixed log-reward (`penalize_short_states`: -99
      before tempering, so -99 / T_R), and uses every window with `min_length = 0` (no log Z).  The stop logit at
      s_0 then absorbs log Z: log q(⊤|s_0) is pushed towards -99 / T_R - log Z, so the first residuals are ~99.
Only the loss inputs differ between the two; the loss functions below are the same.

Every residual below is a difference of a per-state potential
    u_i = log F(s_i) - Σ_{k<=i} log q(z_k | s_{k-1})
because, for i < j,
    log F(s_i) + Σ_{k=i+1..j} log q(z_k|s_{k-1}) - log F(s_j)  =  u_i - u_j,
and with log F(s) = log R(s⊤) - log q(⊤|s) that is the bracket of eq. 3:
    log R(s_i⊤) + Σ_{k=i+1..j} log q(z_k|s_{k-1}) + log q(⊤|s_j) - log R(s_j⊤) - log q(⊤|s_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

# The window sets a batch log Z estimate can fit (`batch_log_z`): those from s_0 of "tb", "subtb" or "db".
LOG_Z_WINDOWS = ("tb", "subtb", "db")
# The constructions for the states below the minimum length (module docstring, `GFlowNetConfig.min_length_mode`).
MIN_LENGTH_MODES = ("ban_stop", "penalize")
# The authors' untempered log-reward of a state shorter than the minimum length (their `score_fast`: -99, then divided
# by the reward temperature like every log-reward).
SHORT_STATE_LOG_REWARD = -99.0


def _check_shapes(log_pf: Tensor, log_pterm: Tensor, log_r: Tensor, lengths: Tensor) -> None:
    B, T = log_pf.shape
    if log_pterm.shape != (B, T + 1) or log_r.shape != (B, T + 1) or lengths.shape != (B,):
        raise ValueError(
            f"Shape mismatch: log_pf {tuple(log_pf.shape)} must be (B, T), log_pterm {tuple(log_pterm.shape)} and "
            f"log_r {tuple(log_r.shape)} must be (B, T+1), lengths {tuple(lengths.shape)} must be (B,)."
        )
    if lengths.numel() and (int(lengths.max()) > T or int(lengths.min()) < 0):
        raise ValueError(
            f"lengths must lie in [0, {T}] (the latent width), got [{int(lengths.min())}, {int(lengths.max())}]."
        )


def penalize_short_states(log_r: Tensor, min_length: int, log_reward: float | None = SHORT_STATE_LOG_REWARD) -> Tensor:
    """The authors' log-reward below the minimum length: `log_r` with every state s_i, i < `min_length`, set to
    `log_reward` (the "penalize" construction of the module docstring).

    Args:
        log_r: (B, S) untempered log R(s_i ⊤) (natural log); the caller divides the result by T_R, so the authors'
            -99 becomes -99 / T_R, as in their code (GFNOrg/gfn-lm-tuning, `score_fast` then `* 1/temperature`).
        min_length: the sampler's minimum number of latent tokens; states s_0 .. s_{min_length - 1} are replaced.
        log_reward: the untempered log-reward of those states (the authors': -99), or None to keep `log_r` as it is
            (the authors' subjectivity E-step, whose reward has no minimum length while its sampler bans the empty
            rationale).
    Returns:
        (B, S) a new tensor (`log_r` is not modified).
    Raises:
        ValueError: `min_length` < 0 or `log_reward` is not finite.
    """
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}.")
    if log_reward is None or min_length == 0:
        return log_r.clone()
    if not math.isfinite(log_reward):
        raise ValueError(f"log_reward must be finite (the authors use -99), got {log_reward}.")
    short = torch.arange(log_r.shape[1], device=log_r.device)[None, :] < min_length  # (1, S)
    return torch.where(short, torch.full_like(log_r, float(log_reward)), log_r)


def state_potentials(
    log_pf: Tensor,
    log_pterm: Tensor,
    log_r: Tensor,
    lengths: Tensor,
    min_length: int = 0,
    log_z: Tensor | None = None,
    terminable: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-state potentials u_i = log F(s_i) - Σ_{k<=i} log q(z_k|s_{k-1}) and which states have a flow.

    Returns:
        u          (B, S)  potentials (0 where the state has no flow)
        has_flow   (B, S)  bool: the state's flow is known (terminable, or s_0 with a log Z)
        terminal   (B, S)  bool: the state can terminate (min_length <= i <= n, and `terminable`)
    """
    _check_shapes(log_pf, log_pterm, log_r, lengths)
    B, S = log_r.shape
    idx = torch.arange(S, device=log_r.device)  # (S,)
    in_traj = idx[None, :] <= lengths[:, None]  # (B, S)
    terminal = in_traj & (idx[None, :] >= min_length)  # (B, S)
    if terminable is not None:
        if terminable.shape != (B, S):
            raise ValueError(f"terminable must have shape {(B, S)} like log_r, got {tuple(terminable.shape)}.")
        terminal = terminal & terminable.bool()
    # S_i = Σ_{k<=i} log q(z_k | s_{k-1}); padding columns are zeroed so they cannot leak NaN/inf.
    pf = torch.where(idx[None, 1:] <= lengths[:, None], log_pf, torch.zeros_like(log_pf))  # (B, T)
    cum_pf = torch.cat([pf.new_zeros(B, 1), pf.cumsum(dim=1)], dim=1)  # (B, S)
    log_flow = torch.where(terminal, log_r - log_pterm, torch.zeros_like(log_r))  # (B, S)
    has_flow = terminal.clone()
    if B and not bool(terminal[:, 0].all()):  # s_0 cannot stop: its flow is log Z
        if log_z is None:
            raise ValueError(
                "min_length > 0 makes s_0 non-terminable, so its flow is log Z: pass log_z (a learned value or a "
                "per-prompt batch estimate), or set min_length=0."
            )
        log_z = torch.as_tensor(log_z, dtype=log_flow.dtype, device=log_flow.device)
        if log_z.ndim > 1 or (log_z.ndim == 1 and log_z.shape[0] not in (1, B)):
            raise ValueError(f"log_z must be a scalar or have shape ({B},), got {tuple(log_z.shape)}.")
        first = torch.where(terminal[:, 0], log_flow[:, 0], log_z.expand(B).reshape(B))
        log_flow = torch.cat([first[:, None], log_flow[:, 1:]], dim=1)
        has_flow[:, 0] = True
    u = torch.where(has_flow, log_flow - cum_pf, torch.zeros_like(log_flow))  # (B, S)
    return u, has_flow, terminal


def modified_subtb_loss(
    log_pf: Tensor,
    log_pterm: Tensor,
    log_r: Tensor,
    lengths: Tensor,
    subtb_lambda: float = 1.0,
    min_length: int = 0,
    log_z: Tensor | None = None,
    consecutive_only: bool = False,
    terminable: Tensor | None = None,
) -> Tensor:
    """Modified subtrajectory balance (Hu et al. 2024, eq. 3), λ-weighted, global mean over valid windows.

    Subtrajectory balance is Madan et al. 2023 ("Learning GFlowNets from partial episodes for improved convergence
    and stability", ICML 2023); "modified": every state can terminate, so F(s) = R(s⊤) / q(⊤|s) (no flow estimator).

    For every trajectory and every window 0 <= i < j <= n whose end points both have a flow (and j can
    terminate), the squared residual (u_i - u_j)² is weighted by λ^(j-i-1).  The loss is
    Σ w·residual² / Σ w over the whole batch (the authors' normalisation: longer trajectories contribute
    more windows).  Each window is counted once (the authors' infilling code double-counts windows ending
    at the terminal state; we do not).  `consecutive_only=True` keeps only windows between consecutive states
    that have a flow, (i, i+1) and, over non-terminable states, e.g. (0, min_length): the modified
    detailed-balance loss.

    Returns a scalar.  log_z: (B,) or scalar flow of s_0, required iff s_0 cannot stop (min_length > 0).
    """
    u, has_flow, terminal = state_potentials(log_pf, log_pterm, log_r, lengths, min_length, log_z, terminable)
    S = u.shape[1]
    idx = torch.arange(S, device=u.device)
    width = idx[None, :] - idx[:, None]  # (S, S): j - i for window (i, j)
    valid = (width >= 1)[None] & has_flow[:, :, None] & terminal[:, None, :]  # (B, S, S) window (i, j)
    if consecutive_only:  # no state with a flow strictly between i and j
        seen = has_flow.long().cumsum(dim=1)  # (B, S): flow states among s_0..s_i
        before_j = torch.cat([seen.new_zeros(seen.shape[0], 1), seen[:, :-1]], dim=1)  # among s_0..s_{j-1}
        valid = valid & (before_j[:, None, :] == seen[:, :, None])
    lambda_pow = float(subtb_lambda) ** (width - 1).clamp(min=0).to(u.dtype)  # (S, S): λ^(j-i-1)
    weight = valid * lambda_pow  # (B, S, S)
    residual = u[:, :, None] - u[:, None, :]  # (B, S, S): u_i - u_j
    total = weight.sum()
    if total == 0:
        return (u * 0).sum()  # no valid window (e.g. only empty latents): zero loss that keeps the graph
    return (weight * residual.pow(2)).sum() / total


def modified_db_loss(
    log_pf, log_pterm, log_r, lengths, min_length: int = 0, log_z: Tensor | None = None,
    terminable: Tensor | None = None,
) -> Tensor:
    """Modified detailed balance: the SubTB windows between consecutive states with a flow, global mean.

    Modified DB is Deleu et al. 2022 ("Bayesian structure learning with generative flow networks", UAI 2022), the
    all-states-terminal form of detailed balance (Bengio et al. 2023, "GFlowNet foundations", JMLR).

    These are the length-1 windows, plus those that jump over non-terminable states: (0, min_length) when
    min_length > 1 (the first tokens are trained through log Z), and over a tool's output."""
    return modified_subtb_loss(log_pf, log_pterm, log_r, lengths, 1.0, min_length, log_z, True, terminable)


def trajectory_log_ratio(log_pf: Tensor, log_pterm: Tensor, log_r: Tensor, lengths: Tensor) -> Tensor:
    """(B,) log R(Z⊤) - log q(Z⊤) for whole trajectories: the quantity TB drives to log Z."""
    _check_shapes(log_pf, log_pterm, log_r, lengths)
    T = log_pf.shape[1]
    take = torch.arange(1, T + 1, device=log_pf.device)[None, :] <= lengths[:, None]  # (B, T)
    log_q = torch.where(take, log_pf, torch.zeros_like(log_pf)).sum(1)  # (B,)
    n = lengths[:, None]
    log_q = log_q + log_pterm.gather(1, n).squeeze(1)
    return log_r.gather(1, n).squeeze(1) - log_q


def tb_loss(log_pf: Tensor, log_pterm: Tensor, log_r: Tensor, lengths: Tensor, log_z: Tensor) -> Tensor:
    """Trajectory balance: mean over trajectories of (log Z + log q(Z⊤) - log R(Z⊤))² (Malkin et al. 2022,
    "Trajectory balance: Improved credit assignment in GFlowNets", NeurIPS 2022; here the backward policy is
    trivial, as every state of a sequence has one parent).

    log_z: (B,) or scalar.  Returns a scalar; 0 (with the graph) for an empty batch.
    """
    residual = log_z - trajectory_log_ratio(log_pf, log_pterm, log_r, lengths)  # (B,)
    if residual.numel() == 0:
        return residual.sum()
    return residual.pow(2).mean()


def group_mean(values: Tensor, group: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of `values` within each group, broadcast back: (B, ...) values, (B,) integer group ids -> (B,).

    With `weight` (same shape as values) it is a weighted mean; used for the per-prompt (VarGrad) batch
    estimate of log Z.
    """
    B = values.shape[0]
    v = values.reshape(B, -1)
    w = torch.ones_like(v) if weight is None else weight.reshape(B, -1).to(v.dtype)
    n_groups = int(group.max()) + 1 if B else 0
    num = v.new_zeros(n_groups).index_add_(0, group, (v * w).sum(1))
    den = v.new_zeros(n_groups).index_add_(0, group, w.sum(1))
    return (num / den.clamp(min=1e-12))[group]


def batch_log_z(
    log_pf: Tensor,
    log_pterm: Tensor,
    log_r: Tensor,
    lengths: Tensor,
    group: Tensor,
    min_length: int = 0,
    windows: str = "subtb",
    subtb_lambda: float = 1.0,
    terminable: Tensor | None = None,
) -> Tensor:
    """Per-prompt batch estimate of log Z (VarGrad), detached, shape (B,).

    The VarGrad estimator (Richter et al. 2020, "VarGrad: A low-variance gradient estimator for variational
    inference", NeurIPS 2020): the log Z that minimises the batch's squared residuals, so the loss becomes their
    variance; used for GFlowNets with a per-condition (here per-prompt) estimate by Zhang et al. 2023 ("Robust
    scheduling with GFlowNets", ICLR 2023).

    log Z is the flow u_0 of s_0, and every window (0, j) of the loss has residual log Z - u_j.  The estimate
    is the value that minimises the loss's own weighted sum of those squares within each prompt's group of
    trajectories, i.e. a weighted group mean of u_j:
        "tb":     j = n only (then u_n = log R(Z⊤) - log q(Z⊤));
        "subtb":  every terminable j, weighted λ^(j-1);
        "db":     the first terminable j >= 1 only (the one window from s_0).
    Trajectories of the same prompt share `group`.
    """
    if windows not in LOG_Z_WINDOWS:
        raise ValueError(f"windows must be 'tb', 'subtb' or 'db', got {windows!r}.")
    with torch.no_grad():
        if windows == "tb":
            return group_mean(trajectory_log_ratio(log_pf, log_pterm, log_r, lengths), group)
        # u_j for terminable j does not depend on log Z; pass a placeholder to get the potentials.
        placeholder = log_r.new_zeros(log_r.shape[0])
        u, _, terminal = state_potentials(log_pf, log_pterm, log_r, lengths, min_length, placeholder, terminable)
        S = u.shape[1]
        j = torch.arange(S, device=u.device, dtype=u.dtype)
        if windows == "subtb":
            weight = terminal * float(subtb_lambda) ** (j - 1).clamp(min=0)  # (B, S)
        else:
            first = torch.where(terminal & (j >= 1), j, torch.full_like(j, S)).min(dim=1, keepdim=True).values
            weight = terminal & (j == first)
        return group_mean(torch.where(terminal, u, torch.zeros_like(u)), group, weight)


# ---------------------------------------------------------------------------------------------------------------------
# The registry of objectives: GFlowNetConfig.loss_type -> what the trainer calls and what it must provide


class ObjectiveLoss(Protocol):
    """The one signature of a registered objective: the shared inputs of the module docstring (log-space,
    untempered policy, tempered reward) plus keyword settings an objective may ignore; returns a scalar loss.

    log_z: (B,) or scalar flow of s_0, or None when the objective's `needs_log_z` is False.
    """

    def __call__(self, log_pf: Tensor, log_pterm: Tensor, log_r: Tensor, lengths: Tensor, *,
                 log_z: Tensor | None, min_length: int, subtb_lambda: float,
                 terminable: Tensor | None) -> Tensor: ...


@dataclass(frozen=True)
class Objective:
    """A registered GFlowNet objective.

    Attributes:
        name: its `GFlowNetConfig.loss_type`.
        loss: the loss, in the `ObjectiveLoss` signature.
        log_z: when it needs log Z, the flow of s_0: "always" (e.g. TB), "min_length" (only when s_0 cannot stop,
            `min_length > 0`; with `min_length == 0` the modified objectives need no partition function) or "never".
        log_z_windows: which windows from s_0 the batch estimate of log Z fits (`batch_log_z(windows=...)`): one of
            `LOG_Z_WINDOWS`, the loss's own windows, so that the estimate minimises the loss.
        summary: a few words for `--help` (e.g. "modified SubTB, paper eq. 3").
    """

    name: str
    loss: ObjectiveLoss
    log_z: str
    log_z_windows: str
    summary: str

    def needs_log_z(self, min_length: int) -> bool:
        """Whether the loss takes a log Z (learned or estimated) for latents of at least `min_length` tokens."""
        return self.log_z == "always" or (self.log_z == "min_length" and min_length > 0)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, *, log_z: str, log_z_windows: str, summary: str) -> Callable:
    """Decorator: register `fn` (an `ObjectiveLoss`) as the objective `name`, selectable as `loss_type=name`.

    Raises:
        ValueError: `name` is taken, or `log_z` / `log_z_windows` is not one of the values `Objective` documents.
    """
    if log_z not in ("always", "min_length", "never"):
        raise ValueError(f"log_z must be 'always', 'min_length' or 'never', got {log_z!r}.")
    if log_z_windows not in LOG_Z_WINDOWS:
        raise ValueError(f"log_z_windows must be one of {LOG_Z_WINDOWS}, got {log_z_windows!r}.")

    def register(fn: ObjectiveLoss) -> ObjectiveLoss:
        if name in OBJECTIVES:
            raise ValueError(f"An objective named {name!r} is already registered.")
        OBJECTIVES[name] = Objective(name, fn, log_z, log_z_windows, summary)
        return fn

    return register


def get_objective(name: str) -> Objective:
    """The registered objective `name`.

    Raises:
        ValueError: no objective of that name, naming the registered ones.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"loss_type must be {objective_names()}, got {name!r}.")
    return OBJECTIVES[name]


def objective_names() -> str:
    """The registered names for a message: "'subtb', 'tb' or 'db'"."""
    names = [repr(n) for n in OBJECTIVES]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@register_objective("subtb", log_z="min_length", log_z_windows="subtb", summary="modified SubTB, paper eq. 3")
def subtb_objective(log_pf, log_pterm, log_r, lengths, *, log_z, min_length, subtb_lambda, terminable):
    """`modified_subtb_loss` (Hu et al. 2024, eq. 3)."""
    return modified_subtb_loss(log_pf, log_pterm, log_r, lengths, subtb_lambda, min_length, log_z,
                               terminable=terminable)


@register_objective("tb", log_z="always", log_z_windows="tb", summary="trajectory balance")
def tb_objective(log_pf, log_pterm, log_r, lengths, *, log_z, min_length, subtb_lambda, terminable):
    """`tb_loss` (Malkin et al. 2022).  Whole trajectories only: `min_length`, λ and `terminable` do not enter."""
    return tb_loss(log_pf, log_pterm, log_r, lengths, log_z)


@register_objective("db", log_z="min_length", log_z_windows="db", summary="modified DB")
def db_objective(log_pf, log_pterm, log_r, lengths, *, log_z, min_length, subtb_lambda, terminable):
    """`modified_db_loss` (Deleu et al. 2022).  λ does not enter (one window length)."""
    return modified_db_loss(log_pf, log_pterm, log_r, lengths, min_length, log_z, terminable)
