"""The training diagnostics (`gfn_trl.trainers.diagnostics`): checked against brute force, against the loss, and, as
the trainers log them, against the exact values on the exact-posterior toy (every latent enumerated)."""

import itertools
import math

import pytest
import torch
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer, PPOConfig, PPOTrainer
from gfn_trl.losses import modified_subtb_loss
from gfn_trl.rewards import prefix_log_rewards
from gfn_trl.sampling import LatentConstraints, latent_batch, left_pad, policy_log_probs
from gfn_trl.testing import exact_posterior_toy, exact_target_and_policy
from gfn_trl.trainers import diagnostics as D


def _random_batch(seed=0, B=6, T=5, min_length=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, T + 1, (B,), generator=g)
    lengths[0] = T
    log_pf = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    log_pterm = -torch.rand(B, T + 1, generator=g, dtype=torch.float64) * 3
    log_r = -torch.rand(B, T + 1, generator=g, dtype=torch.float64) * 10
    return log_pf, log_pterm, log_r, lengths


def test_window_bins_widen_by_four():
    assert D.window_bins(1) == [(1, 1, "1")]
    assert D.window_bins(3) == [(1, 1, "1"), (2, 4, "2-4")]
    assert D.window_bins(25) == [(1, 1, "1"), (2, 4, "2-4"), (5, 16, "5-16"), (17, 64, "17-64")]
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        D.window_bins(0)


@pytest.mark.parametrize("min_length", [0, 2])
def test_residual_sums_match_a_loop_over_the_windows_and_add_up_to_the_loss(min_length):
    log_pf, log_pterm, log_r, lengths = _random_batch(min_length=min_length)
    log_z = torch.linspace(-3, -1, 6, dtype=torch.float64)
    bins = D.window_bins(5)
    sums, counts = D.subtb_residual_sums(log_pf, log_pterm, log_r, lengths, bins, min_length,
                                         log_z if min_length else None)
    want_sums, want_counts = [0.0] * len(bins), [0] * len(bins)

    def flow(b, i):  # log F(s_i): R/q(stop), or log Z at a non-terminable s_0
        return float(log_z[b]) if i < min_length else float(log_r[b, i] - log_pterm[b, i])

    for b in range(len(lengths)):
        n = int(lengths[b])
        for i, j in itertools.combinations(range(n + 1), 2):
            if j < min_length or (0 < i < min_length):
                continue  # j must be able to stop; i needs a flow (s_0 has log Z)
            r = flow(b, i) + float(log_pf[b, i:j].sum()) - flow(b, j)
            k = next(k for k, (lo, hi, _) in enumerate(bins) if lo <= j - i <= hi)
            want_sums[k] += r * r
            want_counts[k] += 1
    assert counts.tolist() == want_counts
    torch.testing.assert_close(sums, torch.tensor(want_sums, dtype=torch.float64))
    # with λ = 1 the modified SubTB loss is the mean over all these windows
    loss = modified_subtb_loss(log_pf, log_pterm, log_r, lengths, 1.0, min_length, log_z if min_length else None)
    assert float(sums.sum() / counts.sum()) == pytest.approx(float(loss), rel=1e-12)


def test_clipped_ratio_and_distinct_latents_per_prompt():
    z = torch.tensor([[3, 4, 0], [3, 4, 0], [5, 0, 0], [3, 4, 5], [3, 4, 5], [3, 4, 5]])
    lengths = torch.tensor([2, 2, 1, 3, 3, 3])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    assert float(D.clipped_ratio(lengths, 3)) == pytest.approx(0.5)
    assert float(D.distinct_per_prompt(z, lengths, group)) == pytest.approx((2 + 1) / 2)  # (3,4),(5) | (3,4,5)
    # padding past the length does not make two equal latents distinct
    z2 = torch.tensor([[3, 4, 7], [3, 4, 0]])
    assert float(D.distinct_per_prompt(z2, torch.tensor([2, 2]), torch.tensor([0, 0]))) == 1


def test_stop_banned_below_gives_the_constrained_policy():
    """`min_length_mode="penalize"` keeps the unconstrained stop in the loss; the sampled policy bans it below the
    minimum.  Renormalising the former must give exactly the latter's log-probabilities."""
    toy = exact_posterior_toy("stop")
    tok, model = toy["tokenizer"], toy["model"].eval()
    latents = toy["latents"][::5]
    z, lengths = latent_batch(latents, 0)
    p_ids, p_mask = left_pad([tok(toy["dataset"][0]["prompt"])["input_ids"]] * len(latents), 0)
    free = LatentConstraints(0, 3, 0, toy["vocab_mask"])
    banned = LatentConstraints(0, 3, 2, toy["vocab_mask"])
    with torch.no_grad():
        pf0, pt0 = policy_log_probs(model, p_ids, p_mask, z, lengths, free)
        pf2, pt2 = policy_log_probs(model, p_ids, p_mask, z, lengths, banned)
    pf, pt = D.stop_banned_below(pf0, pt0, 2)
    taken = torch.arange(1, 4)[None, :] <= lengths[:, None]  # (entries past a latent are meaningless)
    torch.testing.assert_close(pf[taken], pf2[taken], atol=1e-5, rtol=0)
    assert torch.equal(torch.isinf(pt), torch.isinf(pt2))
    torch.testing.assert_close(pt[:, 2:], pt2[:, 2:])
    torch.testing.assert_close(D.sequence_log_prob(pf, pt, lengths), D.sequence_log_prob(pf2, pt2, lengths))


# ------------------------------------------------------------------------------------ the exact-posterior toy
def _exact_posterior_policy(toy):
    """The policy that is exactly the posterior, by enumeration: with F(s) = R(s⊤)·[s may stop] + Σ_a F(sa) (F = R
    at the maximum length), q(a | s) = F(sa) / F(s) and q(⊤ | s) = R(s⊤) / F(s).  Returns, for every latent of the
    toy, (log_pf (N, 3), log_pterm (N, 4), log_r (N, 4), lengths (N,), log Z = log F(s_0)), float64."""
    tok, model = toy["tokenizer"], toy["model"].eval()
    row = toy["dataset"][0]
    prompt = tok(row["prompt"])["input_ids"]
    suffix = tok(row["suffix"], add_special_tokens=False)["input_ids"] if "suffix" in row else None
    alphabet = sorted({t for z in toy["latents"] for t in z})
    full = [list(z) for z in itertools.product(alphabet, repeat=3)]  # every prefix is a prefix of one of these
    z, lengths = latent_batch(full, 0)
    with torch.no_grad():
        per_prefix = prefix_log_rewards(model, [prompt] * len(full), z, lengths, 0, 0,
                                        None if suffix is None else [suffix] * len(full)).double()
    log_r = {tuple(f[:i]): float(per_prefix[b, i]) for b, f in enumerate(full) for i in range(4)}
    min_length = toy["min_length"]
    log_f = {}
    for n in (3, 2, 1, 0):
        for s in {p for p in log_r if len(p) == n}:
            terms = [log_r[s]] if n >= min_length else []
            if n < 3:
                terms += [log_f[s + (a,)] for a in alphabet]
            log_f[s] = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0).item()
    latents = [tuple(z) for z in toy["latents"]]
    log_pf = torch.zeros(len(latents), 3, dtype=torch.float64)
    log_pterm = torch.zeros(len(latents), 4, dtype=torch.float64)
    rewards = torch.zeros(len(latents), 4, dtype=torch.float64)
    for b, lat in enumerate(latents):
        for i in range(len(lat) + 1):
            s = lat[:i]
            rewards[b, i] = log_r[s]
            log_pterm[b, i] = -math.inf if i < min_length else (0.0 if i == 3 else log_r[s] - log_f[s])
            if i:
                log_pf[b, i - 1] = log_f[s] - log_f[lat[: i - 1]]
    return log_pf, log_pterm, rewards, torch.tensor([len(z) for z in latents]), log_f[()]


@pytest.mark.parametrize("reward", ["suffix", "stop"])
def test_the_residual_is_zero_for_the_exact_posterior_policy(reward, tmp_path):
    toy = exact_posterior_toy(reward)
    log_pf, log_pterm, log_r, lengths, log_z = _exact_posterior_policy(toy)
    # it is the posterior: q(Z ⊤) = R(Z ⊤) / Z over the 84 latents
    log_q = D.sequence_log_prob(log_pf, log_pterm, lengths)
    final = log_r.gather(1, lengths[:, None])[:, 0]
    torch.testing.assert_close(log_q, final - log_z)
    assert float(log_q.exp().sum()) == pytest.approx(1.0, abs=1e-9)

    bins = D.window_bins(3)
    z_b = torch.full((len(lengths),), log_z, dtype=torch.float64)
    sums, counts = D.subtb_residual_sums(log_pf, log_pterm, log_r, lengths, bins, 1, z_b, log_pterm > -math.inf)
    # every window 0 <= i < j <= n of the 4, 16 and 64 latents of lengths 1, 2, 3: length 1 | lengths 2-3
    assert counts.tolist() == [4 * 1 + 16 * 2 + 64 * 3, 16 * 1 + 64 * 3]
    assert (sums / counts).max() < 1e-20

    # the untrained policy of the toy is far from it
    trainer = _trainer("gflownet", toy, tmp_path, max_steps=1)
    _, log_q_policy = exact_target_and_policy(trainer, toy)
    assert (log_q_policy - log_q).abs().max() > 1


def _trainer(kind, toy, output_dir, **kw):
    common = dict(output_dir=str(output_dir), max_steps=4, learning_rate=0.0, warmup_steps=0,
                  per_device_train_batch_size=1, num_generations=64, max_completion_length=3,
                  min_completion_length=toy["min_length"], logging_steps=4, save_strategy="no", report_to="none",
                  use_cpu=True, disable_tqdm=True, seed=1)
    common.update(kw)
    if kind == "gflownet":
        args = GFlowNetConfig(on_policy_prob=1.0, tempered_prob=0.0, replay_prob=0.0, **common)
        cls = GFlowNetTrainer
    else:
        args, cls = PPOConfig(num_ppo_epochs=1, **common), PPOTrainer
    return cls(toy["model"], args, train_dataset=toy["dataset"], processing_class=toy["tokenizer"],
               peft_config=LoraConfig(r=4), vocab_mask=toy["vocab_mask"])


@pytest.mark.parametrize("kind", ["gflownet", "ppo"])
def test_logged_entropy_clipped_ratio_and_distinct_latents_equal_the_exact_values(tmp_path, kind):
    """A fixed policy (learning rate 0) samples 4 x 64 latents; the logged diagnostics are compared with their exact
    values over the 84 latents, within 4 standard errors."""
    toy = exact_posterior_toy("suffix")
    trainer = _trainer(kind, toy, tmp_path)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "entropy" in h]
    _, log_q = exact_target_and_policy(trainer, toy)
    q, n = log_q.double().exp(), 4 * 64
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)

    entropy = float(-(q * log_q).sum())
    sd = float((q * (-log_q - entropy) ** 2).sum().sqrt())
    print(f"{kind}: entropy {log['entropy']:.4f} (exact {entropy:.4f}, s.e. {sd / n**0.5:.4f})")
    assert abs(log["entropy"] - entropy) < 4 * sd / n**0.5, (log["entropy"], entropy)

    longest = torch.tensor([len(z) == 3 for z in toy["latents"]])
    clipped = float(q[longest].sum())
    print(f"{kind}: clipped {log['completions/clipped_ratio']:.4f} (exact {clipped:.4f}); distinct "
          f"{log['completions/distinct_per_prompt']:.3f} (exact {float((1 - (1 - q) ** 64).sum()):.3f})")
    assert abs(log["completions/clipped_ratio"] - clipped) < 4 * (clipped * (1 - clipped) / n) ** 0.5

    seen = 1 - (1 - q) ** 64  # P(latent Z among a prompt's 64 samples)
    # the distinct count is a sum of negatively correlated indicators: its variance is at most Σ p (1 - p)
    assert abs(log["completions/distinct_per_prompt"] - float(seen.sum())) < 4 * float(
        (seen * (1 - seen)).sum().sqrt()) / 2
