"""Tests of gfn_trl.losses against brute-force references written straight from the paper's terms.

Shapes (as in losses.py):
    log_pf     (B, T)    log q(z_k | s_{k-1}), column k-1 for k = 1..T
    log_pterm  (B, T+1)  log q(⊤ | s_i)
    log_r      (B, T+1)  tempered log R(s_i ⊤)
    lengths    (B,)      n <= T
    log_z      (B,)      flow of s_0 (only used when min_length > 0)

The references below never use the potentials of losses.py: each residual is assembled term by term from
Hu et al. 2024, eq. 3 (with log Z replacing log R(s_0⊤) - log q(⊤|s_0) when s_0 cannot terminate).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfn_trl.losses import batch_log_z, modified_db_loss, modified_subtb_loss, tb_loss

GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30)


# ----------------------------------------------------------------------------------------------------------------
# Brute-force references (pure Python loops over floats)
# ----------------------------------------------------------------------------------------------------------------


def window_residual(log_pf, log_pterm, log_r, b, i, j, min_length=0, log_z=None):
    """Eq. 3 bracket for window (i, j) of trajectory b, written from its terms.

    log R(s_i⊤) + Σ_{k=i+1..j} log q(z_k|s_{k-1}) + log q(⊤|s_j) - log R(s_j⊤) - log q(⊤|s_i),
    with log Z in place of log R(s_0⊤) - log q(⊤|s_0) when min_length > 0 and i == 0.
    """
    if i == 0 and min_length > 0:
        start = float(log_z[b])
    else:
        start = float(log_r[b, i]) - float(log_pterm[b, i])
    path = sum(float(log_pf[b, k - 1]) for k in range(i + 1, j + 1))
    return start + path + float(log_pterm[b, j]) - float(log_r[b, j])


def brute_subtb(log_pf, log_pterm, log_r, lengths, lam=1.0, min_length=0, log_z=None, consecutive=False):
    """Σ λ^(j-i-1) res(i,j)² / Σ λ^(j-i-1) over all valid windows of all trajectories (0 if there are none)."""
    num = den = 0.0
    for b in range(log_pf.shape[0]):
        n = int(lengths[b])
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                if j < min_length:  # s_j cannot terminate
                    continue
                if 0 < i < min_length:  # s_i cannot terminate and has no known flow
                    continue
                # DB: only hops between consecutive states that have a flow: (i, i+1), and (0, min_length)
                if consecutive and j - i > 1 and not (i == 0 and j == min_length):
                    continue
                w = lam ** (j - i - 1)
                num += w * window_residual(log_pf, log_pterm, log_r, b, i, j, min_length, log_z) ** 2
                den += w
    return num / den if den > 0 else 0.0


def brute_tb(log_pf, log_pterm, log_r, lengths, log_z):
    """mean_b (log Z + Σ_{k<=n} log q(z_k|s_{k-1}) + log q(⊤|s_n) - log R(s_n⊤))²."""
    total = 0.0
    B = log_pf.shape[0]
    for b in range(B):
        n = int(lengths[b])
        log_q = sum(float(log_pf[b, k - 1]) for k in range(1, n + 1)) + float(log_pterm[b, n])
        total += (float(log_z[b]) + log_q - float(log_r[b, n])) ** 2
    return total / B


# ----------------------------------------------------------------------------------------------------------------
# Input builders
# ----------------------------------------------------------------------------------------------------------------


def make_batch(lengths, T, seed=0, garbage=None, dtype=torch.float64):
    """Random finite values inside each trajectory; padding (past n) filled with `garbage` if given.

    Returns log_pf (B, T), log_pterm (B, T+1), log_r (B, T+1), lengths (B,) int64.
    """
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    log_pf = -torch.rand(B, T, generator=g, dtype=dtype) * 3  # (B, T)
    log_pterm = -torch.rand(B, T + 1, generator=g, dtype=dtype) * 3  # (B, T+1)
    log_r = torch.randn(B, T + 1, generator=g, dtype=dtype) * 2  # (B, T+1)
    lengths = torch.tensor(lengths, dtype=torch.long)
    if garbage is not None:
        fill_padding(log_pf, log_pterm, log_r, lengths, garbage, seed)
    return log_pf, log_pterm, log_r, lengths


def fill_padding(log_pf, log_pterm, log_r, lengths, garbage, seed=0):
    """In place: put values from `garbage` (cycled) into every position past each trajectory's length."""
    g = torch.Generator().manual_seed(seed + 1)
    T = log_pf.shape[1]
    for b, n in enumerate(lengths.tolist()):
        for k in range(n + 1, T + 1):  # log_pf column k-1 holds z_k, absent when k > n
            log_pf[b, k - 1] = garbage[int(torch.randint(len(garbage), (1,), generator=g))]
        for i in range(n + 1, T + 1):  # states past s_n
            log_pterm[b, i] = garbage[int(torch.randint(len(garbage), (1,), generator=g))]
            log_r[b, i] = garbage[int(torch.randint(len(garbage), (1,), generator=g))]


def clean_copy(log_pf, log_pterm, log_r, lengths):
    """Copies with padding replaced by zeros."""
    out = [t.clone() for t in (log_pf, log_pterm, log_r)]
    fill_padding(*out, lengths, (0.0,))
    return (*out, lengths)


LENGTHS = [0, 4, 1, 2, 4, 3]  # includes n = 0 and n = T
T_FULL = 4


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# 1. modified SubTB == brute force
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subtb_matches_brute_force_min_length_0(lam, seed):
    batch = make_batch(LENGTHS, T_FULL, seed=seed, garbage=GARBAGE)
    got = modified_subtb_loss(*batch, subtb_lambda=lam)
    assert torch.isfinite(got)
    assert got.item() == approx(brute_subtb(*batch, lam=lam))


@pytest.mark.parametrize("lam", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("min_length", [1, 2, 3, 4, 5])
def test_subtb_matches_brute_force_with_min_length_and_log_z(lam, min_length):
    batch = make_batch(LENGTHS, T_FULL, seed=10 + min_length, garbage=GARBAGE)
    log_z = torch.randn(len(LENGTHS), dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # (B,)
    got = modified_subtb_loss(*batch, subtb_lambda=lam, min_length=min_length, log_z=log_z)
    assert torch.isfinite(got)
    assert got.item() == approx(brute_subtb(*batch, lam=lam, min_length=min_length, log_z=log_z))


def test_subtb_brute_force_is_sensitive_to_min_length_and_log_z():
    """Guard against a vacuous reference: min_length and log_z really change the value."""
    batch = make_batch(LENGTHS, T_FULL, seed=4)
    log_z = torch.full((len(LENGTHS),), 0.3, dtype=torch.float64)
    base = modified_subtb_loss(*batch).item()
    with_m = modified_subtb_loss(*batch, min_length=2, log_z=log_z).item()
    with_m_other_z = modified_subtb_loss(*batch, min_length=2, log_z=log_z + 1.0).item()
    assert base != approx(with_m)
    assert with_m != approx(with_m_other_z)


def test_subtb_padding_garbage_does_not_change_value_or_grads():
    dirty = make_batch(LENGTHS, T_FULL, seed=5, garbage=GARBAGE)
    clean = clean_copy(*dirty)
    log_z = torch.tensor([0.1, -0.2, 0.3, 0.0, 1.0, -1.0], dtype=torch.float64)
    for kwargs in ({}, {"subtb_lambda": 0.5}, {"min_length": 2, "log_z": log_z}):
        values, grads = [], []
        for log_pf, log_pterm, log_r, lengths in (dirty, clean):
            log_pf = log_pf.clone().requires_grad_()
            log_pterm = log_pterm.clone().requires_grad_()
            loss = modified_subtb_loss(log_pf, log_pterm, log_r, lengths, **kwargs)
            loss.backward()
            values.append(loss.detach())
            grads.append((log_pf.grad, log_pterm.grad))
        assert torch.isfinite(values[0])
        assert torch.equal(values[0], values[1])
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert torch.isfinite(grads[0][0]).all() and torch.isfinite(grads[0][1]).all()


def test_subtb_log_z_is_ignored_when_min_length_0():
    """With min_length == 0 the loss is exactly eq. 3: s_0's flow comes from R and q(⊤|s_0)."""
    batch = make_batch(LENGTHS, T_FULL, seed=6)
    log_z = torch.full((len(LENGTHS),), 5.0, dtype=torch.float64)
    assert modified_subtb_loss(*batch, log_z=log_z).item() == modified_subtb_loss(*batch).item()


def test_subtb_min_length_without_log_z_raises():
    batch = make_batch(LENGTHS, T_FULL, seed=7)
    with pytest.raises(ValueError, match="log_z"):
        modified_subtb_loss(*batch, min_length=1)
    with pytest.raises(ValueError, match="log_z"):
        modified_db_loss(*batch, min_length=2)


def test_subtb_no_valid_window_gives_zero_with_graph():
    log_pf, log_pterm, log_r, lengths = make_batch([0, 0, 0], 3, seed=8, garbage=GARBAGE)
    log_pterm.requires_grad_()
    loss = modified_subtb_loss(log_pf, log_pterm, log_r, lengths)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(log_pterm.grad, torch.zeros_like(log_pterm))
    # min_length above every length: no terminable state, so no window either.
    batch = make_batch([1, 2], 3, seed=9)
    assert modified_subtb_loss(*batch, min_length=3, log_z=torch.zeros(2, dtype=torch.float64)).item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# 2. Each window counted once
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "log_r_values, n_nonzero",
    [
        ([0.0, 0.0, 0.0, 1.5], 3),  # only s_3 differs: windows (0,3), (1,3), (2,3)
        ([1.5, 0.0, 0.0, 0.0], 3),  # only s_0 differs: windows (0,1), (0,2), (0,3)
        ([0.0, 0.0, 1.5, 1.5], 4),  # cut between s_1 and s_2: (0,2), (0,3), (1,2), (1,3)
    ],
)
def test_each_window_counted_once(log_r_values, n_nonzero):
    """n = 3, min_length = 0: exactly 6 windows (i, j), 0 <= i < j <= 3, each with weight 1.

    Residuals are potential differences (res(i,k) = res(i,j) + res(j,k)), so a single nonzero window is
    impossible; instead every nonzero residual equals ±1.5 and the others are exactly 0, so the loss is
    n_nonzero * 1.5² / 6.  Counting the windows that end at s_n twice (as the authors' infilling code does)
    would give a different value (e.g. 6 * 1.5² / 9 for the first case).
    """
    log_pf = torch.zeros(1, 3, dtype=torch.float64)  # (1, 3)
    log_pterm = torch.full((1, 4), math.log(0.5), dtype=torch.float64)  # (1, 4)
    log_r = torch.tensor([log_r_values], dtype=torch.float64)  # (1, 4)
    lengths = torch.tensor([3])
    residuals = [window_residual(log_pf, log_pterm, log_r, 0, i, j) for i in range(4) for j in range(i + 1, 4)]
    assert len(residuals) == 6
    assert sorted(abs(r) for r in residuals) == [0.0] * (6 - n_nonzero) + [1.5] * n_nonzero
    loss = modified_subtb_loss(log_pf, log_pterm, log_r, lengths, subtb_lambda=1.0)
    assert loss.item() == approx(n_nonzero * 1.5**2 / 6)


def test_single_window_trajectory_loss_is_its_squared_residual():
    log_pf = torch.tensor([[-0.7]], dtype=torch.float64)
    log_pterm = torch.tensor([[-0.2, -1.1]], dtype=torch.float64)
    log_r = torch.tensor([[0.4, -2.0]], dtype=torch.float64)
    expected = (0.4 + -0.7 + -1.1 - -2.0 - -0.2) ** 2
    assert modified_subtb_loss(log_pf, log_pterm, log_r, torch.tensor([1])).item() == approx(expected)


def test_global_mean_weights_trajectories_by_window_count():
    """Batch of an n=1 (1 window) and an n=2 (3 windows) trajectory: the mean is over 4 windows, not 2 trajectories."""
    log_pf = torch.zeros(2, 2, dtype=torch.float64)
    log_pterm = torch.zeros(2, 3, dtype=torch.float64)
    log_r = torch.tensor([[0.0, 2.0, float("nan")], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss = modified_subtb_loss(log_pf, log_pterm, log_r, torch.tensor([1, 2]))
    assert loss.item() == approx(2.0**2 / 4)


# ----------------------------------------------------------------------------------------------------------------
# 3. modified DB == brute force restricted to j = i + 1
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_length", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_db_matches_brute_force(min_length, seed):
    batch = make_batch(LENGTHS, T_FULL, seed=20 + seed, garbage=GARBAGE)
    log_z = torch.linspace(-1, 1, len(LENGTHS), dtype=torch.float64)
    kwargs = {"min_length": min_length, "log_z": log_z if min_length > 0 else None}
    got = modified_db_loss(*batch, **kwargs)
    assert torch.isfinite(got)
    assert got.item() == approx(brute_subtb(*batch, consecutive=True, **kwargs))
    # and it is not just the SubTB value
    assert got.item() != approx(brute_subtb(*batch, **kwargs))


def test_db_with_min_length_2_trains_every_token():
    log_pf, log_pterm, log_r, lengths = make_batch([4, 4], 4, seed=30)
    log_pf.requires_grad_()
    log_z = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    modified_db_loss(log_pf, log_pterm, log_r, lengths, min_length=2, log_z=log_z).backward()
    assert (log_pf.grad != 0).all()


# ----------------------------------------------------------------------------------------------------------------
# 4. TB == brute force
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tb_matches_brute_force(seed):
    batch = make_batch(LENGTHS, T_FULL, seed=40 + seed, garbage=GARBAGE)
    log_z = torch.randn(len(LENGTHS), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = tb_loss(*batch, log_z)
    assert torch.isfinite(got)
    assert got.item() == approx(brute_tb(*batch, log_z))


def test_tb_accepts_scalar_log_z():
    batch = make_batch(LENGTHS, T_FULL, seed=43, garbage=GARBAGE)
    got = tb_loss(*batch, torch.tensor(0.7, dtype=torch.float64))
    assert got.item() == approx(brute_tb(*batch, [0.7] * len(LENGTHS)))


def test_tb_gradients_only_inside_trajectories():
    log_pf, log_pterm, log_r, lengths = make_batch(LENGTHS, T_FULL, seed=44, garbage=GARBAGE)
    log_pf.requires_grad_()
    log_pterm.requires_grad_()
    tb_loss(log_pf, log_pterm, log_r, lengths, torch.zeros(len(LENGTHS), dtype=torch.float64)).backward()
    for b, n in enumerate(LENGTHS):
        assert (log_pf.grad[b, :n] != 0).all() and (log_pf.grad[b, n:] == 0).all()
        expected_nonzero = torch.zeros(T_FULL + 1, dtype=torch.bool)
        expected_nonzero[n] = True  # only q(⊤|s_n) enters TB
        assert torch.equal(log_pterm.grad[b] != 0, expected_nonzero)


# ----------------------------------------------------------------------------------------------------------------
# 5. batch_log_z
# ----------------------------------------------------------------------------------------------------------------

GROUP = torch.tensor([0, 0, 1, 1, 1, 2])  # (B,) prompt ids for LENGTHS


def test_batch_log_z_tb_is_group_mean_of_log_ratio():
    batch = make_batch(LENGTHS, T_FULL, seed=50, garbage=GARBAGE)
    log_pf, log_pterm, log_r, lengths = batch
    ratio = []
    for b, n in enumerate(LENGTHS):
        log_q = sum(float(log_pf[b, k - 1]) for k in range(1, n + 1)) + float(log_pterm[b, n])
        ratio.append(float(log_r[b, n]) - log_q)
    expected = []
    for b in range(len(LENGTHS)):
        members = [ratio[c] for c in range(len(LENGTHS)) if GROUP[c] == GROUP[b]]
        expected.append(sum(members) / len(members))
    got = batch_log_z(*batch, GROUP, windows="tb")
    assert got.shape == (len(LENGTHS),)
    assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # TB loss with a per-group shared log Z is stationary at the estimate
    z = torch.zeros(3, dtype=torch.float64)
    for gid in range(3):
        z[gid] = got[GROUP == gid][0]
    z.requires_grad_()
    tb_loss(*batch, z[GROUP]).backward()
    assert z.grad.abs().max().item() < 1e-10


def _subtb_closed_form(log_pf, log_pterm, log_r, lengths, group, min_length, weight=lambda j: 1.0):
    """Weighted LS value of log Z: mean over the group's windows (0, j), j terminable, of the rest of the residual."""
    out = []
    B = log_pf.shape[0]
    for b in range(B):
        num = den = 0.0
        for c in range(B):
            if group[c] != group[b]:
                continue
            for j in range(max(min_length, 1), int(lengths[c]) + 1):
                # res(0, j) = log_z + rest  =>  least squares log_z = weighted mean of -rest
                rest = window_residual(log_pf, log_pterm, log_r, c, 0, j, min_length, [0.0] * B)
                num += weight(j) * -rest
                den += weight(j)
        out.append(num / den if den else 0.0)
    return out


@pytest.mark.parametrize("min_length", [1, 2, 3])
def test_batch_log_z_subtb_is_least_squares_minimiser(min_length):
    batch = make_batch(LENGTHS, T_FULL, seed=51, garbage=GARBAGE)
    est = batch_log_z(*batch, GROUP, min_length=min_length, windows="subtb")
    assert est.shape == (len(LENGTHS),) and not est.requires_grad
    assert est.tolist() == pytest.approx(_subtb_closed_form(*batch, GROUP, min_length), rel=1e-9, abs=1e-12)
    # Gradient of the loss w.r.t. a per-group shared log Z vanishes at the estimate.
    z = torch.stack([est[GROUP == gid][0] for gid in range(3)]).clone().requires_grad_()  # (3,)
    modified_subtb_loss(*batch, min_length=min_length, log_z=z[GROUP]).backward()
    assert z.grad.abs().max().item() < 1e-10
    # ... and it is not vacuously zero: away from the estimate it is not.
    z2 = (z.detach() + 0.3).requires_grad_()
    modified_subtb_loss(*batch, min_length=min_length, log_z=z2[GROUP]).backward()
    has_windows = [any(LENGTHS[c] >= min_length for c in range(len(LENGTHS)) if GROUP[c] == g) for g in range(3)]
    assert all((z2.grad[g].abs() > 1e-6) == has_windows[g] for g in range(3))


def test_batch_log_z_subtb_perturbation_increases_loss_single_group():
    lengths = [2, 3, 4, 4, 1]
    batch = make_batch(lengths, 4, seed=52, garbage=GARBAGE)
    group = torch.zeros(len(lengths), dtype=torch.long)
    est = batch_log_z(*batch, group, min_length=1, windows="subtb")
    assert torch.all(est == est[0])
    best = modified_subtb_loss(*batch, min_length=1, log_z=est).item()
    for delta in (-1.0, -0.1, -1e-3, 1e-3, 0.1, 1.0):
        assert modified_subtb_loss(*batch, min_length=1, log_z=est + delta).item() > best


def test_batch_log_z_is_detached():
    log_pf, log_pterm, log_r, lengths = make_batch(LENGTHS, T_FULL, seed=53)
    log_pf.requires_grad_()
    log_pterm.requires_grad_()
    for windows in ("tb", "subtb"):
        assert not batch_log_z(log_pf, log_pterm, log_r, lengths, GROUP, min_length=1, windows=windows).requires_grad


def test_batch_log_z_subtb_minimises_lambda_weighted_loss():
    lengths = [4, 4, 3]
    lam = 0.5
    batch = make_batch(lengths, 4, seed=54)
    group = torch.zeros(3, dtype=torch.long)
    est = batch_log_z(*batch, group, min_length=1, windows="subtb", subtb_lambda=lam)
    expected = _subtb_closed_form(*batch, group, 1, weight=lambda j: lam ** (j - 1))
    assert est.tolist() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# 6. Gradients flow only where they should
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", ["subtb", "db"])
def test_gradients_zero_past_length_nonzero_inside(loss_name):
    log_pf, log_pterm, log_r, lengths = make_batch(LENGTHS, T_FULL, seed=60, garbage=GARBAGE)
    log_pf.requires_grad_()
    log_pterm.requires_grad_()
    assert not log_r.requires_grad  # log_r never needs grad
    fn = modified_subtb_loss if loss_name == "subtb" else modified_db_loss
    loss = fn(log_pf, log_pterm, log_r, lengths)
    assert loss.requires_grad
    loss.backward()
    for b, n in enumerate(LENGTHS):
        assert (log_pf.grad[b, n:] == 0).all(), (b, log_pf.grad[b])
        assert (log_pterm.grad[b, n + 1 :] == 0).all(), (b, log_pterm.grad[b])
        if n > 0:  # an empty latent has no window at all
            assert (log_pf.grad[b, :n] != 0).all(), (b, log_pf.grad[b])
            assert (log_pterm.grad[b, : n + 1] != 0).all(), (b, log_pterm.grad[b])
        else:
            assert (log_pterm.grad[b] == 0).all()


@pytest.mark.parametrize("min_length", [1, 2, 3])
def test_gradients_with_min_length(min_length):
    log_pf, log_pterm, log_r, lengths = make_batch(LENGTHS, T_FULL, seed=61, garbage=GARBAGE)
    log_pf.requires_grad_()
    log_pterm.requires_grad_()
    log_z = torch.randn(len(LENGTHS), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_z.requires_grad_()
    modified_subtb_loss(log_pf, log_pterm, log_r, lengths, min_length=min_length, log_z=log_z).backward()
    for b, n in enumerate(LENGTHS):
        # q(⊤|s_0) is replaced by log Z, q(⊤|s_i) for 0 < i < min_length is never used
        assert (log_pterm.grad[b, :min_length] == 0).all(), (b, log_pterm.grad[b])
        assert (log_pterm.grad[b, n + 1 :] == 0).all()
        assert (log_pf.grad[b, n:] == 0).all()
        if n >= max(min_length, 1):
            assert (log_pterm.grad[b, min_length : n + 1] != 0).all(), (b, log_pterm.grad[b])
            assert (log_pf.grad[b, :n] != 0).all(), (b, log_pf.grad[b])  # windows (0, j) cover every token
            assert log_z.grad[b] != 0
        else:  # no terminable state: the trajectory contributes nothing
            assert (log_pterm.grad[b] == 0).all() and (log_pf.grad[b] == 0).all() and log_z.grad[b] == 0


# ----------------------------------------------------------------------------------------------------------------
# 7. Property-based: finite and equal to the brute force
# ----------------------------------------------------------------------------------------------------------------


def _draw_shape(draw):
    """B trajectories of width T, their lengths, a seed and a λ."""
    B = draw(st.integers(1, 5))
    T = draw(st.integers(0, 6))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return B, T, lengths, draw(st.integers(0, 2**31 - 1)), draw(st.floats(0.1, 3.0, exclude_min=True))


@st.composite
def batches(draw):
    B, T, lengths, seed, lam = _draw_shape(draw)
    garbage = draw(st.lists(st.sampled_from(GARBAGE + (0.0, 7.0)), min_size=1, max_size=4))
    min_length = draw(st.integers(0, T + 1))
    return make_batch(lengths, T, seed=seed, garbage=tuple(garbage)), lam, min_length, seed


@settings(max_examples=50, deadline=None)
@given(batches())
def test_property_subtb_db_tb_match_brute_force(case):
    batch, lam, min_length, seed = case
    B = batch[0].shape[0]
    log_z = torch.randn(B, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))  # (B,)
    log_z_arg = log_z if min_length > 0 else None

    log_pf = batch[0].clone().requires_grad_()
    log_pterm = batch[1].clone().requires_grad_()
    rest = batch[2:]
    subtb = modified_subtb_loss(log_pf, log_pterm, *rest, lam, min_length, log_z_arg)
    assert torch.isfinite(subtb)
    assert subtb.item() == pytest.approx(brute_subtb(*batch, lam, min_length, log_z_arg), rel=1e-5, abs=1e-10)
    subtb.backward()
    assert torch.isfinite(log_pf.grad).all() and torch.isfinite(log_pterm.grad).all()

    db = modified_db_loss(*batch, min_length, log_z_arg)
    assert torch.isfinite(db)
    assert db.item() == pytest.approx(brute_subtb(*batch, 1.0, min_length, log_z_arg, True), rel=1e-5, abs=1e-10)

    tb = tb_loss(*batch, log_z)
    assert torch.isfinite(tb)
    assert tb.item() == pytest.approx(brute_tb(*batch, log_z), rel=1e-5, abs=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# 8. Shape validation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn_name", ["subtb", "db", "tb", "batch_log_z"])
@pytest.mark.parametrize(
    "bad, match",
    [
        ("pterm_width", "Shape mismatch"),
        ("r_width", "Shape mismatch"),
        ("r_batch", "Shape mismatch"),
        ("lengths_shape", "Shape mismatch"),
        ("too_long", r"lengths must lie in \[0, 4\]"),
        ("negative", r"lengths must lie in \[0, 4\]"),
    ],
)
def test_shape_validation(fn_name, bad, match):
    log_pf, log_pterm, log_r, lengths = make_batch([1, 2, 4], 4, seed=70)
    if bad == "pterm_width":
        log_pterm = log_pterm[:, :-1]
    elif bad == "r_width":
        log_r = torch.cat([log_r, log_r[:, :1]], dim=1)
    elif bad == "r_batch":
        log_r = log_r[:2]
    elif bad == "lengths_shape":
        lengths = lengths[:, None]
    elif bad == "too_long":
        lengths = torch.tensor([1, 5, 2])
    elif bad == "negative":
        lengths = torch.tensor([1, -1, 2])
    args = (log_pf, log_pterm, log_r, lengths)
    with pytest.raises(ValueError, match=match):
        if fn_name == "subtb":
            modified_subtb_loss(*args)
        elif fn_name == "db":
            modified_db_loss(*args)
        elif fn_name == "tb":
            tb_loss(*args, torch.zeros(3, dtype=torch.float64))
        else:
            batch_log_z(*args, torch.zeros(3, dtype=torch.long), windows="tb")


@pytest.mark.parametrize("windows,min_length", [("db", 1), ("db", 3), ("subtb", 2), ("tb", 1)])
def test_batch_log_z_zeroes_the_log_z_gradient_of_its_own_loss(windows, min_length):
    """Each estimate is the stationary point, in log Z, of the loss it is used with."""
    batch = make_batch([4, 3, 4], 4, seed=77)
    group = torch.zeros(3, dtype=torch.long)
    est = batch_log_z(*batch, group, min_length=min_length, windows=windows, subtb_lambda=0.7)
    log_z = est.clone().requires_grad_()
    if windows == "db":
        loss = modified_db_loss(*batch, min_length, log_z)
    elif windows == "subtb":
        loss = modified_subtb_loss(*batch, 0.7, min_length, log_z)
    else:
        loss = tb_loss(*batch, log_z)
    loss.backward()
    assert abs(log_z.grad.sum().item()) < 1e-9
    shifted = (est + 0.3).requires_grad_()
    again = modified_db_loss(*batch, min_length, shifted) if windows == "db" else (
        modified_subtb_loss(*batch, 0.7, min_length, shifted) if windows == "subtb" else tb_loss(*batch, shifted))
    assert again.item() > loss.item()


def test_subtb_accepts_a_scalar_log_z_and_rejects_wrong_shapes():
    batch = make_batch([3, 2], 3, seed=78)
    scalar = modified_subtb_loss(*batch, 1.0, 1, torch.tensor(0.5, dtype=torch.float64))
    per_row = modified_subtb_loss(*batch, 1.0, 1, torch.full((2,), 0.5, dtype=torch.float64))
    assert scalar.item() == pytest.approx(per_row.item())
    with pytest.raises(ValueError, match="log_z must be a scalar or have shape"):
        modified_subtb_loss(*batch, 1.0, 1, torch.zeros(3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------
# 5. Non-terminable states inside a trajectory (a tool writing forced tokens): the `terminable` mask
# ----------------------------------------------------------------------------------------------------------------


def brute_subtb_blocked(log_pf, log_pterm, log_r, lengths, blocked, lam=1.0, log_z=None, consecutive=False):
    """Like brute_subtb, where blocked[b] is the set of states of trajectory b that cannot stop (s_0 among them:
    its flow is then log Z).  Windows start at a state with a flow and end at a terminable one; DB windows have no
    state with a flow strictly inside."""
    num = den = 0.0
    for b in range(log_pf.shape[0]):
        n = int(lengths[b])

        def has_flow(i, b=b):
            return i not in blocked[b] or i == 0

        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                if j in blocked[b] or not has_flow(i):
                    continue
                if consecutive and any(has_flow(k) for k in range(i + 1, j)):
                    continue
                if i == 0 and 0 in blocked[b]:
                    start = float(log_z[b])
                else:
                    start = float(log_r[b, i]) - float(log_pterm[b, i])
                path = sum(float(log_pf[b, k - 1]) for k in range(i + 1, j + 1))
                res = start + path + float(log_pterm[b, j]) - float(log_r[b, j])
                w = lam ** (j - i - 1)
                num += w * res**2
                den += w
    return num / den if den > 0 else 0.0


# states that cannot stop, per trajectory of LENGTHS = [0, 4, 1, 2, 4, 3] (forced tokens follow them)
BLOCKED = [set(), {1, 2}, set(), {1}, {2}, {0, 2}]


def blocked_batch(seed, with_s0):
    blocked = [set(s) if with_s0 else s - {0} for s in BLOCKED]
    log_pf, log_pterm, log_r, lengths = make_batch(LENGTHS, T_FULL, seed=seed, garbage=GARBAGE)
    terminable = torch.ones(len(LENGTHS), T_FULL + 1, dtype=torch.bool)
    for b, states in enumerate(blocked):
        for i in states:
            terminable[b, i] = False
            log_pterm[b, i] = float("-inf")  # what the constrained policy gives a state that cannot stop
            log_pf[b, i] = 0.0  # the forced token that follows: probability 1
    return (log_pf, log_pterm, log_r, lengths), terminable, blocked


@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("with_s0", [False, True])
def test_subtb_with_non_terminable_states_matches_brute_force(lam, with_s0):
    batch, terminable, blocked = blocked_batch(50, with_s0)
    log_z = torch.linspace(-2, 2, len(LENGTHS), dtype=torch.float64) if with_s0 else None
    got = modified_subtb_loss(*batch, subtb_lambda=lam, log_z=log_z, terminable=terminable)
    assert torch.isfinite(got)
    assert got.item() == approx(brute_subtb_blocked(*batch, blocked, lam=lam, log_z=log_z))
    assert got.item() != approx(brute_subtb_blocked(*batch, [set()] * len(LENGTHS), lam=lam))  # the mask matters


@pytest.mark.parametrize("with_s0", [False, True])
def test_db_jumps_over_non_terminable_states(with_s0):
    batch, terminable, blocked = blocked_batch(51, with_s0)
    log_z = torch.linspace(-2, 2, len(LENGTHS), dtype=torch.float64) if with_s0 else None
    got = modified_db_loss(*batch, log_z=log_z, terminable=terminable)
    assert got.item() == approx(brute_subtb_blocked(*batch, blocked, log_z=log_z, consecutive=True))
    # every taken token of a trajectory with windows is trained, the forced ones included in a jump
    log_pf = batch[0].clone().requires_grad_()
    modified_db_loss(log_pf, *batch[1:], log_z=log_z, terminable=terminable).backward()
    assert (log_pf.grad[1, :4] != 0).all() and (log_pf.grad[4, :4] != 0).all()


def test_subtb_needs_log_z_when_s0_cannot_stop_and_batch_log_z_uses_the_first_terminable_state():
    batch, terminable, _ = blocked_batch(52, with_s0=True)
    with pytest.raises(ValueError, match="log_z"):
        modified_subtb_loss(*batch, terminable=terminable)
    group = torch.zeros(len(LENGTHS), dtype=torch.long)
    log_pf, log_pterm, log_r, lengths = batch
    est = batch_log_z(log_pf, log_pterm, log_r, lengths, group, windows="db", terminable=terminable)
    # trajectory 5 (n = 3, s_0 and s_2 blocked) reaches s_0's flow through s_1:
    # u_1 = log R(s_1) - log q(⊤|s_1) - log q(z_1)
    first_terminable = [(0, 0), (1, 3), (2, 1), (3, 2), (4, 1), (5, 1)]
    u = {b: float(log_r[b, j] - log_pterm[b, j] - log_pf[b, :j].sum()) for b, j in first_terminable}
    assert est[0].item() == approx(sum(u[b] for b in (1, 2, 3, 4, 5)) / 5)  # trajectory 0 (n = 0) has no j >= 1


@st.composite
def blocked_batches(draw):
    """Random batches whose trajectories have random non-terminable states (a tool writing), -inf stop there."""
    B, T, lengths, seed, lam = _draw_shape(draw)
    # states s_1..s_{n-1} may be blocked (s_n is where the latent stopped, so it could)
    blocked = [set(draw(st.lists(st.integers(1, n - 1), max_size=3))) if n > 1 else set() for n in lengths]
    log_pf, log_pterm, log_r, lengths_t = make_batch(lengths, T, seed=seed, garbage=GARBAGE)
    terminable = torch.ones(B, T + 1, dtype=torch.bool)
    for b, states in enumerate(blocked):
        for i in states:
            terminable[b, i] = False
            log_pterm[b, i] = float("-inf")
            log_pf[b, i] = 0.0  # the forced token after s_i
    return (log_pf, log_pterm, log_r, lengths_t), terminable, blocked, lam


@settings(max_examples=50, deadline=None)
@given(blocked_batches())
def test_property_losses_with_non_terminable_states_are_finite_and_match_brute_force(case):
    batch, terminable, blocked, lam = case
    log_pf = batch[0].clone().requires_grad_()
    log_pterm = batch[1].clone().requires_grad_()
    subtb = modified_subtb_loss(log_pf, log_pterm, *batch[2:], lam, terminable=terminable)
    assert torch.isfinite(subtb)
    assert subtb.item() == pytest.approx(brute_subtb_blocked(*batch, blocked, lam=lam), rel=1e-5, abs=1e-10)
    subtb.backward()
    assert torch.isfinite(log_pf.grad).all() and torch.isfinite(log_pterm.grad).all()
    db = modified_db_loss(*batch, terminable=terminable)
    assert db.item() == pytest.approx(brute_subtb_blocked(*batch, blocked, consecutive=True), rel=1e-5, abs=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# The objective registry: what GFlowNetConfig.loss_type selects
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_length", [0, 2])
def test_registered_objectives_are_the_loss_functions(min_length):
    from gfn_trl.losses import OBJECTIVES

    assert list(OBJECTIVES) == ["subtb", "tb", "db"]
    log_pf, log_pterm, log_r, lengths = make_batch([3, 1, 4, 2], 4, seed=3, garbage=GARBAGE)
    log_z = torch.randn(4, dtype=log_pf.dtype)
    want = {
        "subtb": modified_subtb_loss(log_pf, log_pterm, log_r, lengths, 0.9, min_length, log_z),
        "tb": tb_loss(log_pf, log_pterm, log_r, lengths, log_z),
        "db": modified_db_loss(log_pf, log_pterm, log_r, lengths, min_length, log_z),
    }
    for name, objective in OBJECTIVES.items():
        got = objective.loss(log_pf, log_pterm, log_r, lengths, log_z=log_z, min_length=min_length, subtb_lambda=0.9,
                             terminable=None)
        assert torch.equal(got, want[name]), name
        assert objective.log_z_windows == name  # the batch estimate fits the loss's own windows
        assert objective.needs_log_z(min_length) == (name == "tb" or min_length > 0)


def test_a_registered_objective_is_a_loss_type_choice(tmp_path):
    from gfn_trl import GFlowNetConfig
    from gfn_trl.losses import OBJECTIVES, register_objective

    @register_objective("tb_twice", log_z="always", log_z_windows="tb", summary="twice TB")
    def tb_twice(log_pf, log_pterm, log_r, lengths, *, log_z, min_length, subtb_lambda, terminable):
        return 2 * tb_loss(log_pf, log_pterm, log_r, lengths, log_z)

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_objective("tb_twice", log_z="always", log_z_windows="tb", summary="")(tb_twice)
        with pytest.raises(ValueError, match="log_z must be"):
            register_objective("x", log_z="sometimes", log_z_windows="tb", summary="")
        args = GFlowNetConfig(str(tmp_path), loss_type="tb_twice", num_generations=1, log_z="learned")
        assert args.loss_type == "tb_twice"
        with pytest.raises(ValueError, match="num_generations >= 2"):  # needs log Z: the batch estimate needs 2
            GFlowNetConfig(str(tmp_path), loss_type="tb_twice", num_generations=1)
    finally:
        OBJECTIVES.pop("tb_twice")
    with pytest.raises(ValueError, match="loss_type must be 'subtb', 'tb' or 'db', got 'tb_twice'"):
        GFlowNetConfig(str(tmp_path), loss_type="tb_twice")


# ----------------------------------------------------------------------------------------------------------------
# The authors' construction below the minimum length (min_length_mode="penalize")
# ----------------------------------------------------------------------------------------------------------------


def brute_authors_subtb(log_pf, log_pterm, log_r, lengths, min_length, t_r, short=-99.0, lam=1.0):
    """The authors' loss, from their code's definition (GFNOrg/gfn-lm-tuning `score_fast`, then the SubTB loop over
    every window of the trajectory, each counted once): states shorter than `min_length` have log R = short / T_R
    (None: the reward's own value), the stop log-probability everywhere is the unconstrained one (`log_pterm` as
    given), and every window 0 <= i < j <= n is used.  `log_r` is untempered."""
    num = den = 0.0
    for b in range(log_pf.shape[0]):
        n = int(lengths[b])

        def log_reward(i, b=b):
            value = short if (i < min_length and short is not None) else float(log_r[b, i])
            return value / t_r

        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                path = sum(float(log_pf[b, k - 1]) for k in range(i + 1, j + 1))
                res = log_reward(i) + path + float(log_pterm[b, j]) - log_reward(j) - float(log_pterm[b, i])
                w = lam ** (j - i - 1)
                num += w * res**2
                den += w
    return num / den if den > 0 else 0.0


@pytest.mark.parametrize("min_length", [1, 2, 3])
@pytest.mark.parametrize(("t_r", "lam"), [(1.0, 1.0), (0.5, 1.0), (0.85, 0.7)])
def test_penalized_short_states_give_the_authors_loss(min_length, t_r, lam):
    from gfn_trl.losses import penalize_short_states

    lengths = [n for n in LENGTHS if n >= min_length] + [T_FULL]  # the sampler never stops below the minimum
    log_pf, log_pterm, log_r, lengths = make_batch(lengths, T_FULL, seed=min_length, garbage=GARBAGE)
    got = modified_subtb_loss(log_pf, log_pterm, penalize_short_states(log_r, min_length) / t_r, lengths, lam,
                              min_length=0)
    want = brute_authors_subtb(*clean_copy(log_pf, log_pterm, log_r, lengths), min_length, t_r, lam=lam)
    assert float(got) == approx(want)
    assert want > 99**2 / 10  # the -99 residuals dominate: the brute force is not vacuous
    # the reward LM's own value at the short states (the authors' subjectivity E-step), and -99 enters through T_R
    kept = modified_subtb_loss(log_pf, log_pterm, penalize_short_states(log_r, min_length, None) / t_r, lengths, lam,
                               min_length=0)
    assert float(kept) == approx(brute_authors_subtb(*clean_copy(log_pf, log_pterm, log_r, lengths), min_length, t_r,
                                                     short=None, lam=lam))
    assert float(kept) == approx(float(modified_subtb_loss(log_pf, log_pterm, log_r / t_r, lengths, lam, min_length=0)))


def test_penalize_short_states_replaces_only_the_short_states_and_checks_its_inputs():
    from gfn_trl.losses import SHORT_STATE_LOG_REWARD, penalize_short_states

    log_r = torch.randn(3, 5, dtype=torch.float64)
    out = penalize_short_states(log_r, 2)
    assert SHORT_STATE_LOG_REWARD == -99.0
    assert (out[:, :2] == -99.0).all() and torch.equal(out[:, 2:], log_r[:, 2:])
    assert out is not log_r and torch.equal(penalize_short_states(log_r, 0), log_r)
    assert torch.equal(penalize_short_states(log_r, 3, -5.0)[:, :3], torch.full((3, 3), -5.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="min_length must be >= 0"):
        penalize_short_states(log_r, -1)
    with pytest.raises(ValueError, match="finite"):
        penalize_short_states(log_r, 1, float("-inf"))
